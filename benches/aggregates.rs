//! Benchmarks of aggregates on Postgres against
//! hand-written sqlx on the same database, in the same run; the ratios are
//! printed to stderr at the end.
//!
//! 1. Load an aggregate of 1k, 10k and 100k events without snapshots
//!    (`Repository::load`) against `SELECT payload ... ORDER BY
//!    stream_version` + serde + the same fold. Target: time <= 1.1x.
//! 2. The same aggregates with `snapshot_every = 100`: a snapshot at the
//!    latest multiple of 100 written by the repository itself, and either 0
//!    or 99 events after it. Target: <= 0.8 ms per load, and flat (largest /
//!    smallest <= 1.5 across the three sizes); a raw-sqlx baseline (snapshot
//!    row + events after it) is printed for reference.
//! 3. Commands (load + decide + append one event) over 1,000 aggregates of 5
//!    events, from one task and from 8, against a hand-written app: select
//!    the payloads, fold, decide, insert the next version. Two baselines: on
//!    a plain copy table (`bench_events`, `LIKE annals_events INCLUDING ALL`:
//!    same columns and indexes, no NOTIFY trigger, no stream table; the
//!    unique (stream_id, stream_version) index is the version check), and on
//!    annals' own tables (stream row bumped with the version check, event
//!    inserted, in one statement). Target: throughput >= 0.9x. The
//!    baselines run each statement on its own pool checkout, as a plain sqlx
//!    app does; annals runs a command's load and append on one
//!    (`EventStore::fold_and_append`), and a diagnostic row compares it with
//!    the same-tables baseline written that way too.
//!
//! Needs a PostgreSQL server in DATABASE_URL:
//! `scripts/with-services --durable cargo bench --features testing --bench aggregates`

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use annals::postgres::sqlx::{self, postgres::PgRow, types::Json, PgPool, Row};
use annals::postgres::testing::TestDatabase;
use annals::postgres::{sql, PgEventStore, PgSnapshotStore};
use annals::{
    snapshot::NoSnapshots, Aggregate, AggregateState, Event, EventStore, EventStoreExt,
    ExpectedVersion, Metadata, Repository, SnapshotStore,
};
use criterion::{Criterion, SamplingMode, Throughput};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::runtime::Runtime;
use uuid::Uuid;

mod common;
use common::{
    print_summary, run_group, runtime, scored, timed, Comparison, LeadEvent, LeadScored, Op, Target,
};

const SAMPLES: usize = 10;
/// Interleaved rounds per (annals, baseline) pair of the slow groups.
const ROUNDS: usize = 16;
/// ... of the sub-millisecond snapshot loads (one call per round is noisy).
const FAST_ROUNDS: usize = 150;
/// ... of the command groups (each round runs 1,000 commands twice).
const CMD_ROUNDS: usize = 8;
const SIZES: [usize; 3] = [1_000, 10_000, 100_000];
const SNAPSHOT_EVERY: u64 = 100;
/// Events after the snapshot in the worst case of `snapshot_every = 100`.
const TAIL: usize = 99;
/// Seeding: events per append.
const CHUNK: usize = 1_000;
const AGGREGATES: usize = 1_000;
/// Events each aggregate of the command benchmarks already has.
const FEW: usize = 5;
const TASKS: usize = 8;
/// The diagnostics of the no-snapshot load run at this size only.
const DIAG_SIZE: usize = 10_000;

// --- the aggregate -------------------------------------------------------------

/// A lead's score history, folded from `lead.scored` events.
#[derive(
    Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema, annals::Aggregate,
)]
#[aggregate(event = LeadEvent, snapshot_every = 100)]
struct Lead {
    name: Option<String>,
    scores: u64,
    total: u64,
    best: u8,
    confidence: f64,
}

/// Record a score.
struct Score(LeadScored);

#[derive(Debug)]
struct Invalid;

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a score is at most 100")
    }
}

impl std::error::Error for Invalid {}

/// The decision, shared by annals and the baselines.
fn decide(state: &Lead, command: &Score) -> Result<LeadScored, Invalid> {
    if command.0.score > 100 || state.scores == u64::MAX {
        return Err(Invalid);
    }
    Ok(command.0.clone())
}

/// The fold, shared by annals and the baselines.
fn fold(state: &mut Lead, s: &LeadScored) {
    state.scores += 1;
    state.total += u64::from(s.score);
    state.best = state.best.max(s.score);
    state.confidence += f64::from(s.confidence);
}

impl Aggregate for Lead {
    type Command = Score;
    type Error = Invalid;

    fn handle(&self, command: &Score) -> Result<Vec<LeadEvent>, Invalid> {
        Ok(vec![LeadEvent::Scored(decide(self, command)?)])
    }

    fn apply(&mut self, event: &LeadEvent) {
        match event {
            LeadEvent::Created(c) => self.name = Some(c.name.clone()),
            LeadEvent::Scored(s) => fold(self, s),
        }
    }
}

type PlainRepo = Repository<Lead, PgEventStore, NoSnapshots>;
type SnapRepo = Repository<Lead, PgEventStore, PgSnapshotStore>;

// --- helpers -------------------------------------------------------------------

/// Prints the wall-clock time (UTC) at the start of a group, to match a run
/// against other activity on the machine.
fn stamp(what: &str) {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    eprintln!(
        "[{:02}:{:02}:{:02} UTC] {what}",
        secs / 3600 % 24,
        secs / 60 % 60,
        secs % 60
    );
}

fn leak(s: String) -> &'static str {
    s.leak()
}

fn size_name(n: usize) -> String {
    if n >= 1_000 {
        format!("{}k", n / 1_000)
    } else {
        n.to_string()
    }
}

/// What the schema keys of the bench's events stand for (the diag reads
/// map them as annals does).
static SCHEMA_KEYS: std::sync::OnceLock<std::collections::HashMap<i64, (String, u32)>> =
    std::sync::OnceLock::new();

/// Every call of every recorded op (seconds), for the absolute targets.
static CALLS: Mutex<BTreeMap<String, Vec<f64>>> = Mutex::new(BTreeMap::new());

fn recorded<'a>(key: String, op: Op<'a>) -> Op<'a> {
    Box::new(move || {
        let d = op();
        CALLS
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key.clone())
            .or_default()
            .push(d.as_secs_f64());
        d
    })
}

fn median_call(key: &str) -> Option<f64> {
    let calls = CALLS.lock().unwrap_or_else(|p| p.into_inner());
    let mut v = calls.get(key)?.clone();
    v.sort_by(f64::total_cmp);
    Some(v[v.len() / 2])
}

fn configure(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    measurement: Duration,
    elements: usize,
) {
    // the sub-millisecond ops need little warm-up
    let warm_up = if measurement < Duration::from_secs(2) {
        Duration::from_millis(500)
    } else {
        Duration::from_secs(1)
    };
    group
        .sample_size(SAMPLES)
        .warm_up_time(warm_up)
        .measurement_time(measurement)
        .sampling_mode(SamplingMode::Flat)
        .throughput(Throughput::Elements(elements as u64));
}

async fn build_store(pool: &PgPool, validate: bool) -> PgEventStore {
    let builder = PgEventStore::builder(pool.clone()).register::<LeadEvent>();
    let builder = if validate {
        builder
    } else {
        builder.without_validation()
    };
    builder.build().await.expect("build the store")
}

/// Baseline load: the payloads in order, decoded by serde (sqlx `Json`), folded.
async fn baseline_load(pool: &PgPool, stream: &str) -> (Lead, u64) {
    let rows: Vec<Json<LeadScored>> = sqlx::query_scalar(
        "SELECT payload FROM annals_events WHERE stream_id = $1 ORDER BY stream_version",
    )
    .bind(stream)
    .fetch_all(pool)
    .await
    .expect("baseline read");
    let mut state = Lead::default();
    for r in &rows {
        fold(&mut state, &r.0);
    }
    (state, rows.len() as u64)
}

/// Baseline load with a snapshot: the snapshot row, then the events after it.
async fn baseline_load_snapshot(pool: &PgPool, stream: &str) -> (Lead, u64) {
    let snap: Option<(i64, Json<Lead>)> = sqlx::query_as(
        "SELECT version, state FROM annals_snapshots WHERE aggregate_type = 'lead' AND aggregate_id = $1",
    )
    .bind(stream)
    .fetch_optional(pool)
    .await
    .expect("baseline snapshot");
    let (mut state, version) = snap.map(|(v, s)| (s.0, v)).unwrap_or_default();
    let rows: Vec<Json<LeadScored>> = sqlx::query_scalar(
        "SELECT payload FROM annals_events WHERE stream_id = $1 AND stream_version > $2 ORDER BY stream_version",
    )
    .bind(stream)
    .bind(version)
    .fetch_all(pool)
    .await
    .expect("baseline read");
    for r in &rows {
        fold(&mut state, &r.0);
    }
    (state, version as u64 + rows.len() as u64)
}

fn borrowed_op<'a>(
    rt: &'a Runtime,
    pool: &'a PgPool,
    stream: &'a str,
    n: usize,
    decode: Decode,
) -> Op<'a> {
    Box::new(move || {
        timed(|| {
            let (state, v) = rt.block_on(borrowed_fold(pool, stream, 1, decode));
            assert_eq!(v, n as u64);
            black_box(state);
        })
    })
}

/// The text of a binary jsonb value (its version byte dropped), as annals'
/// reads borrow it.
fn jsonb_text(value: sqlx::postgres::PgValueRef<'_>) -> Result<&str, sqlx::Error> {
    let bytes = value.as_bytes().map_err(sqlx::Error::Decode)?;
    let text = match bytes.split_first() {
        Some((1, rest)) => rest,
        _ => bytes,
    };
    std::str::from_utf8(text).map_err(|e| sqlx::Error::Decode(Box::new(e)))
}

/// How the diagnostics' reads decode a payload.
#[derive(Clone, Copy)]
enum Decode {
    /// serde straight from the row's jsonb bytes into the payload type (one
    /// parse, as the baseline does).
    Serde,
    /// annals' Event API from the row's bytes: the jsonb text borrowed as
    /// it is (no pre-scan), then `Event::decode_json` by (type, version)
    /// (one parse).
    Event,
}

/// Diagnostic reads of annals' own load query (`sql::READ_PAYLOADS`), decoded as rows
/// arrive (no Vec of rows or of events; no per-row
/// String or Box) and folded at once. With `Decode::Event` this is the
/// recommended shape of `Repository::load`'s read.
async fn borrowed_fold(pool: &PgPool, stream: &str, from: i64, decode: Decode) -> (Lead, u64) {
    let mut state = Lead::default();
    let mut version = 0u64;
    let state_ref = &mut state;
    let version_ref = &mut version;
    sqlx::query(sql::READ_PAYLOADS)
        .bind(stream)
        .bind(from)
        .bind(None::<i64>)
        .try_map(|row: PgRow| {
            let v: i64 = row.try_get(0)?;
            match decode {
                Decode::Serde => {
                    let p: Json<LeadScored> = row.try_get(2)?;
                    fold(state_ref, &p.0);
                }
                Decode::Event => {
                    let key: i64 = row.try_get(1)?;
                    let (t, sv) = SCHEMA_KEYS
                        .get()
                        .and_then(|keys| keys.get(&key))
                        .expect("a known schema key");
                    let p = jsonb_text(row.try_get_raw(2)?)?;
                    let e = LeadEvent::decode_json(t, *sv, p)
                        .map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
                    state_ref.apply(&e);
                }
            }
            *version_ref = v as u64;
            Ok(())
        })
        .fetch_all(pool)
        .await
        .expect("read");
    (state, version)
}

/// The recommended read: annals' load query, `Event::decode`, folded as
/// rows arrive.
async fn lean_borrowed_fold(pool: &PgPool, stream: &str, from: i64) -> (Lead, u64) {
    borrowed_fold(pool, stream, from, Decode::Event).await
}

/// Diagnostic: the snapshot row and the events after it in one round trip,
/// the events decoded as in `lean_borrowed_fold`.
const ONE_ROUND_TRIP: &str = "WITH s AS (
         SELECT version, state, fingerprint, codec_version FROM annals_snapshots
         WHERE aggregate_type = $2 AND aggregate_id = $1)
     SELECT 0 AS kind, version AS v, fingerprint AS t, codec_version AS sv, state AS body FROM s
     UNION ALL
     SELECT 1, stream_version, event_type, schema_version, payload FROM annals_events
      WHERE stream_id = $1 AND stream_version > COALESCE((SELECT version FROM s), 0)
     ORDER BY kind, v";

async fn one_round_trip_load(pool: &PgPool, stream: &str) -> (Lead, u64) {
    let mut state = Lead::default();
    let mut version = 0u64;
    let state_ref = &mut state;
    let version_ref = &mut version;
    sqlx::query(ONE_ROUND_TRIP)
        .bind(stream)
        .bind(Lead::TYPE)
        .try_map(|row: PgRow| {
            let kind: i32 = row.try_get(0)?;
            let v: i64 = row.try_get(1)?;
            let t: &str = row.try_get(2)?;
            let sv: i32 = row.try_get(3)?;
            let body: Json<&RawValue> = row.try_get(4)?;
            if kind == 0 {
                // a real implementation replays in full when this fails
                assert!(t == Lead::state_fingerprint() && sv as u32 == Lead::CODEC_VERSION);
                *state_ref =
                    Lead::decode_state(body.0).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
            } else {
                let e = LeadEvent::decode(t, sv as u32, body.0)
                    .map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
                state_ref.apply(&e);
            }
            *version_ref = v as u64;
            Ok(())
        })
        .fetch_all(pool)
        .await
        .expect("read");
    (state, version)
}

// --- 1 and 2: loads --------------------------------------------------------------

fn loads(c: &mut Criterion, rt: &Runtime, rows: &mut Vec<Comparison>) {
    let db = rt.block_on(TestDatabase::new());
    let pool = db.pool().clone();
    let seeder = rt.block_on(build_store(&pool, false));
    let store = rt.block_on(build_store(&pool, true));
    let plain: PlainRepo = Repository::<Lead, _>::new(store.clone()).snapshot_every(None);
    let snap: SnapRepo = Repository::<Lead, _>::new(store.clone())
        .with_snapshots(PgSnapshotStore::new(&store))
        .snapshot_every(Some(SNAPSHOT_EVERY))
        .inline_snapshots();
    let meta = Metadata::new().with_user("bench");

    // per size: `n{N}` has N events and a snapshot at N (written by the
    // repository's own command path); `t{N}` has the same N events, the same
    // snapshot, and 99 events after it (appended by commands)
    let seeding = Instant::now();
    rt.block_on(async {
        for &n in &SIZES {
            let (id, tail) = (format!("n{n}"), format!("t{n}"));
            let (stream, tail_stream) = (format!("lead-{id}"), format!("lead-{tail}"));
            let events: Vec<LeadEvent> = (0..n - 1).map(|i| LeadEvent::Scored(scored(i))).collect();
            for (k, chunk) in events.chunks(CHUNK).enumerate() {
                seeder
                    .append_events(
                        &stream,
                        ExpectedVersion::from_current(Some((k * CHUNK) as u64)),
                        chunk,
                        &meta,
                    )
                    .await
                    .expect("seed");
            }
            let done = snap
                .execute(&id, &Score(scored(n - 1)), &meta)
                .await
                .expect("the command that crosses the snapshot policy");
            assert_eq!(done.version, n as u64);
            let saved = PgSnapshotStore::new(&store)
                .load(&annals::TenantId::default(), "lead", &stream)
                .await
                .expect("snapshot")
                .expect("the repository wrote a snapshot");
            assert_eq!(saved.version, n as u64);
            // the tail aggregate: a server-side copy of the stream and its
            // snapshot, then 99 commands
            sqlx::query(
                "INSERT INTO annals_events (event_id, stream_id, stream_version, event_type, schema_version, payload, metadata)
                 SELECT gen_random_uuid(), $2, stream_version, event_type, schema_version, payload, metadata
                 FROM annals_events WHERE stream_id = $1 ORDER BY stream_version",
            )
            .bind(&stream)
            .bind(&tail_stream)
            .execute(&pool)
            .await
            .expect("copy the stream");
            sqlx::query(
                "INSERT INTO annals_snapshots (aggregate_type, aggregate_id, version, state, fingerprint, codec_version)
                 SELECT aggregate_type, $2, version, state, fingerprint, codec_version
                 FROM annals_snapshots WHERE aggregate_type = 'lead' AND aggregate_id = $1",
            )
            .bind(&stream)
            .bind(&tail_stream)
            .execute(&pool)
            .await
            .expect("copy the snapshot");
            for k in 0..TAIL {
                snap.execute(&tail, &Score(scored(n + k)), &meta)
                    .await
                    .expect("tail command");
            }
        }
        sqlx::raw_sql("VACUUM (ANALYZE) annals_events, annals_snapshots")
            .execute(&pool)
            .await
            .expect("vacuum");
        let keys: Vec<(i64, String, i32)> = sqlx::query_as(
            "SELECT DISTINCT schema_key, event_type, schema_version FROM annals_events",
        )
        .fetch_all(&pool)
        .await
        .expect("schema keys");
        let keys = keys.into_iter().map(|(k, t, v)| (k, (t, v as u32))).collect();
        SCHEMA_KEYS.set(keys).expect("schema keys set once");
        // annals and the baselines agree, and the shapes are as intended
        for &n in &SIZES {
            let (id, tail) = (format!("n{n}"), format!("t{n}"));
            let full = plain.load(&id).await.expect("load");
            assert_eq!((full.version, full.snapshot_version), (n as u64, None));
            assert_eq!(
                (full.state.clone(), n as u64),
                baseline_load(&pool, &format!("lead-{id}")).await
            );
            let at = snap.load(&id).await.expect("load");
            assert_eq!((at.snapshot_version, at.events_replayed), (Some(n as u64), 0));
            assert_eq!(at.state, full.state);
            let t = snap.load(&tail).await.expect("load");
            assert_eq!(
                (t.version, t.snapshot_version, t.events_replayed),
                ((n + TAIL) as u64, Some(n as u64), TAIL as u64)
            );
            assert_eq!(plain.load(&tail).await.expect("load").state, t.state);
            assert_eq!(
                (t.state.clone(), (n + TAIL) as u64),
                baseline_load_snapshot(&pool, &format!("lead-{tail}")).await
            );
            // and so do the diagnostics' alternative read paths
            assert_eq!(
                (full.state.clone(), n as u64),
                lean_borrowed_fold(&pool, &format!("lead-{id}"), 1).await
            );
            assert_eq!(
                (t.state.clone(), (n + TAIL) as u64),
                one_round_trip_load(&pool, &format!("lead-{tail}")).await
            );
        }
    });
    eprintln!("seeded the load aggregates in {:.1?}", seeding.elapsed());

    // 1: no snapshots
    for &n in &SIZES {
        let group = format!("agg_load_{}_no_snapshot", size_name(n));
        let id = format!("n{n}");
        let stream = format!("lead-{id}");
        let (plain, pool, id, stream) = (&plain, &pool, &id, &stream);
        let mut ops: Vec<(&str, Op<'_>)> = vec![
            (
                "annals_load",
                Box::new(move || {
                    timed(|| {
                        let l = rt.block_on(plain.load(id)).expect("load");
                        assert_eq!(l.version, n as u64);
                        black_box(l);
                    })
                }),
            ),
            (
                "sqlx_baseline",
                Box::new(move || {
                    timed(|| {
                        let (state, v) = rt.block_on(baseline_load(pool, stream));
                        assert_eq!(v, n as u64);
                        black_box(state);
                    })
                }),
            ),
        ];
        let mut pairs = vec![("annals_load", "sqlx_baseline")];
        if n == DIAG_SIZE {
            ops.extend::<[(&str, Op<'_>); 3]>([
                // annals' load query, rows fetched and not decoded
                (
                    "diag_load_sql_rows_only",
                    Box::new(move || {
                        timed(|| {
                            let rows = rt
                                .block_on(
                                    sqlx::query(sql::READ_PAYLOADS)
                                        .bind(stream)
                                        .bind(1i64)
                                        .bind(None::<i64>)
                                        .fetch_all(pool),
                                )
                                .expect("read");
                            assert_eq!(rows.len(), n);
                            black_box(rows);
                        })
                    }),
                ),
                // the same query decoded as rows arrive, serde straight into
                // the payload type (one parse, no copies) ...
                (
                    "diag_lean_cols_serde",
                    borrowed_op(rt, pool, stream, n, Decode::Serde),
                ),
                // ... and through today's Event API (the recommended read)
                (
                    "diag_lean_borrowed_fold",
                    borrowed_op(rt, pool, stream, n, Decode::Event),
                ),
            ]);
            pairs.extend([
                ("annals_load", "diag_lean_borrowed_fold"),
                ("diag_lean_borrowed_fold", "diag_lean_cols_serde"),
                ("diag_lean_cols_serde", "sqlx_baseline"),
                ("diag_load_sql_rows_only", "sqlx_baseline"),
                ("diag_lean_borrowed_fold", "sqlx_baseline"),
            ]);
        } else if n == SIZES[2] {
            ops.push((
                "diag_lean_borrowed_fold",
                borrowed_op(rt, pool, stream, n, Decode::Event),
            ));
            pairs.push(("diag_lean_borrowed_fold", "sqlx_baseline"));
            pairs.push(("annals_load", "diag_lean_borrowed_fold"));
        }
        let measurement = Duration::from_secs(if n >= 100_000 { 5 } else { 3 });
        stamp(&group);
        run_group(
            c,
            &group,
            |g| configure(g, measurement, n),
            &ops,
            &pairs,
            ROUNDS,
        );
        let key = |name: &str| leak(format!("{group}/{name}"));
        rows.push(Comparison {
            label: leak(format!("load {} events, no snapshot", size_name(n))),
            annals: key("annals_load"),
            baseline: key("sqlx_baseline"),
            events: n as u64,
            target: Target::TimeAtMost(1.1),
        });
        let diags: &[(&'static str, &str, &str)] = if n == DIAG_SIZE {
            &[
                (
                    "  diag: load / recommended read (buffering, copies)",
                    "annals_load",
                    "diag_lean_borrowed_fold",
                ),
                (
                    "  diag: recommended / serde once (Event::decode)",
                    "diag_lean_borrowed_fold",
                    "diag_lean_cols_serde",
                ),
                (
                    "  diag: serde once / baseline (5 columns vs 1)",
                    "diag_lean_cols_serde",
                    "sqlx_baseline",
                ),
                (
                    "  diag: load SQL rows only, undecoded / baseline",
                    "diag_load_sql_rows_only",
                    "sqlx_baseline",
                ),
                (
                    "  diag: recommended read / baseline",
                    "diag_lean_borrowed_fold",
                    "sqlx_baseline",
                ),
            ]
        } else if n == SIZES[2] {
            &[
                (
                    "  diag: load / recommended read (buffering, copies)",
                    "annals_load",
                    "diag_lean_borrowed_fold",
                ),
                (
                    "  diag: recommended read / baseline",
                    "diag_lean_borrowed_fold",
                    "sqlx_baseline",
                ),
            ]
        } else {
            &[]
        };
        for (label, a, b) in diags {
            rows.push(Comparison {
                label,
                annals: key(a),
                baseline: key(b),
                events: n as u64,
                target: Target::None,
            });
        }
    }

    // 2: snapshot_every = 100
    let group = "agg_load_snapshot_every_100";
    let (diag_stream, from) = (format!("lead-t{DIAG_SIZE}"), DIAG_SIZE as i64 + 1);
    let snapshots = PgSnapshotStore::new(&store);
    let mut ops: Vec<(&str, Op<'_>)> = Vec::new();
    let mut pairs = Vec::new();
    for &n in &SIZES {
        for (case, id, after) in [
            ("99_after", format!("t{n}"), TAIL),
            ("0_after", format!("n{n}"), 0),
        ] {
            let stream = format!("lead-{id}");
            let expect = (n + after) as u64;
            let a = leak(format!("annals_{}_{case}", size_name(n)));
            let b = leak(format!("sqlx_{}_{case}", size_name(n)));
            let (snap, pool) = (&snap, &pool);
            let id2 = id.clone();
            ops.push((
                a,
                recorded(
                    format!("{group}/{a}"),
                    Box::new(move || {
                        timed(|| {
                            let l = rt.block_on(snap.load(&id2)).expect("load");
                            assert_eq!((l.version, l.events_replayed), (expect, after as u64));
                            black_box(l);
                        })
                    }),
                ),
            ));
            ops.push((
                b,
                Box::new(move || {
                    timed(|| {
                        let (state, v) = rt.block_on(baseline_load_snapshot(pool, &stream));
                        assert_eq!(v, expect);
                        black_box(state);
                    })
                }),
            ));
            pairs.push((a, b));
            rows.push(Comparison {
                label: leak(format!(
                    "load {} + snapshot, {} events after it (ref.)",
                    size_name(n),
                    after
                )),
                annals: leak(format!("{group}/{a}")),
                baseline: leak(format!("{group}/{b}")),
                events: 1,
                target: Target::None,
            });
        }
    }
    // where the 99-events case goes, at 10k: the snapshot row alone, annals'
    // read of the 99 events alone, and the baseline's read of them alone
    let (stream, snapshots, store, pool) = (&diag_stream, &snapshots, &store, &pool);
    ops.extend::<[(&str, Op<'_>); 5]>([
        (
            "diag_10k_one_round_trip",
            recorded(
                format!("{group}/diag_10k_one_round_trip"),
                Box::new(move || {
                    timed(|| {
                        let (state, v) = rt.block_on(one_round_trip_load(pool, stream));
                        assert_eq!(v, (DIAG_SIZE + TAIL) as u64);
                        black_box(state);
                    })
                }),
            ),
        ),
        (
            "diag_10k_lean_borrowed_99",
            recorded(
                format!("{group}/diag_10k_lean_borrowed_99"),
                Box::new(move || {
                    timed(|| {
                        let (state, v) = rt.block_on(lean_borrowed_fold(pool, stream, from));
                        assert_eq!(v, (DIAG_SIZE + TAIL) as u64);
                        black_box(state);
                    })
                }),
            ),
        ),
        (
            "diag_10k_snapshot_row_only",
            recorded(
                format!("{group}/diag_10k_snapshot_row_only"),
                Box::new(move || {
                    timed(|| {
                        let s = rt
                            .block_on(snapshots.load(&annals::TenantId::default(), "lead", stream))
                            .expect("snapshot")
                            .expect("present");
                        black_box(s);
                    })
                }),
            ),
        ),
        (
            "diag_10k_load_read_99",
            recorded(
                format!("{group}/diag_10k_load_read_99"),
                Box::new(move || {
                    timed(|| {
                        // what Repository::load does after the snapshot:
                        // the payloads after it, decoded and folded
                        let mut state = Lead::default();
                        let folded = rt
                            .block_on(store.fold_stream_payloads(stream, from as u64.., |p| {
                                let e = LeadEvent::decode_json(
                                    p.event_type,
                                    p.schema_version,
                                    p.payload,
                                )
                                .expect("decode");
                                state.apply(&e);
                                Ok(())
                            }))
                            .expect("read");
                        assert_eq!(folded, TAIL as u64);
                        black_box(state);
                    })
                }),
            ),
        ),
        (
            "diag_10k_sqlx_payloads_99",
            recorded(
                format!("{group}/diag_10k_sqlx_payloads_99"),
                Box::new(move || {
                    timed(|| {
                        let rows: Vec<Json<LeadScored>> = rt
                            .block_on(
                                sqlx::query_scalar(
                                    "SELECT payload FROM annals_events WHERE stream_id = $1 AND stream_version >= $2 ORDER BY stream_version",
                                )
                                .bind(stream)
                                .bind(from)
                                .fetch_all(pool),
                            )
                            .expect("read");
                        assert_eq!(rows.len(), TAIL);
                        black_box(rows);
                    })
                }),
            ),
        ),
    ]);
    pairs.extend([
        ("diag_10k_load_read_99", "diag_10k_sqlx_payloads_99"),
        ("diag_10k_lean_borrowed_99", "diag_10k_sqlx_payloads_99"),
        ("diag_10k_one_round_trip", "annals_10k_99_after"),
        ("diag_10k_one_round_trip", "sqlx_10k_99_after"),
    ]);
    for (label, a, b) in [
        (
            "  diag 10k: annals' load read of the 99 / baseline's",
            "diag_10k_load_read_99",
            "diag_10k_sqlx_payloads_99",
        ),
        (
            "  diag 10k: lean borrowed read of the 99 / baseline's",
            "diag_10k_lean_borrowed_99",
            "diag_10k_sqlx_payloads_99",
        ),
        (
            "  diag 10k, 99 after: one round trip / annals load",
            "diag_10k_one_round_trip",
            "annals_10k_99_after",
        ),
        (
            "  diag 10k, 99 after: one round trip / sqlx baseline",
            "diag_10k_one_round_trip",
            "sqlx_10k_99_after",
        ),
    ] {
        rows.push(Comparison {
            label,
            annals: leak(format!("{group}/{a}")),
            baseline: leak(format!("{group}/{b}")),
            events: 1,
            target: Target::None,
        });
    }
    stamp(group);
    run_group(
        c,
        group,
        |g| configure(g, Duration::from_millis(1500), 1),
        &ops,
        &pairs,
        FAST_ROUNDS,
    );
    drop(ops);
    drop((plain, snap, seeder));
    drop(db);
}

/// The absolute and flatness targets of the snapshot loads.
fn snapshot_summary() {
    let mut out = String::from(
        "\n=== aggregates: loads with snapshot_every = 100 (median of every call) ===\n",
    );
    for case in ["99_after", "0_after"] {
        let times: Vec<(usize, f64)> = SIZES
            .iter()
            .filter_map(|&n| {
                median_call(&format!(
                    "agg_load_snapshot_every_100/annals_{}_{case}",
                    size_name(n)
                ))
                .map(|t| (n, t))
            })
            .collect();
        if times.is_empty() {
            continue;
        }
        let cells: Vec<String> = times
            .iter()
            .map(|(n, t)| format!("{}: {:.3} ms", size_name(*n), t * 1e3))
            .collect();
        let max = times.iter().map(|t| t.1).fold(0.0, f64::max);
        let min = times.iter().map(|t| t.1).fold(f64::INFINITY, f64::min);
        let flat = max / min;
        out.push_str(&format!(
            "{case:<9} {}  | max {:.3} ms (target <= 0.8 ms: {}) | largest/smallest {:.2} (target <= 1.5: {})\n",
            cells.join(", "),
            max * 1e3,
            if max <= 0.8e-3 { "met" } else { "MISSED" },
            flat,
            if flat <= 1.5 { "met" } else { "MISSED" },
        ));
    }
    let diag = |name: &str| median_call(&format!("agg_load_snapshot_every_100/diag_10k_{name}"));
    for (name, what) in [
        ("snapshot_row_only", "PgSnapshotStore::load alone"),
        (
            "load_read_99",
            "annals' load read (fold_stream_payloads + decode) of the 99 alone",
        ),
        (
            "lean_borrowed_99",
            "lean borrowed read + fold of the 99 alone",
        ),
        ("sqlx_payloads_99", "the baseline's read of the 99 alone"),
        (
            "one_round_trip",
            "snapshot + 99 events in ONE query, lean decode + fold",
        ),
    ] {
        if let Some(t) = diag(name) {
            out.push_str(&format!(
                "  diag 10k, 99 after: {what}: {:.3} ms\n",
                t * 1e3
            ));
        }
    }
    eprint!("{out}");
}

// --- 3: commands -----------------------------------------------------------------

/// The copy table of the first baseline: annals_events' columns, defaults,
/// identity and indexes; not its NOTIFY trigger.
const CREATE_COPY: &str = "CREATE TABLE bench_events (LIKE annals_events INCLUDING ALL)";

/// Every iteration starts from the same state: 1,000 aggregates of FEW
/// events, in annals' tables and in the copy table.
const RESEED: &str = "
TRUNCATE annals_events, annals_snapshots, bench_events;
INSERT INTO annals_events (event_id, stream_id, stream_version, event_type, schema_version, payload, metadata)
SELECT gen_random_uuid(), 'lead-c' || a, v, 'lead.scored', 2,
       jsonb_build_object(
           'lead_id', md5(a::text)::uuid,
           'score', (a * 7 + v) % 101,
           'model', 'gbm-2024-' || lpad(((a + v) % 12 + 1)::text, 2, '0'),
           'reasons', jsonb_build_array('opened 3 emails', 'visited the pricing page'),
           'confidence', ((a + v) % 100) / 100.0),
       '{\"user\": \"bench\"}'::jsonb
FROM generate_series(0, 999) a, generate_series(1, 5) v
ORDER BY a, v;
INSERT INTO bench_events (event_id, stream_id, stream_version, event_type, schema_version, payload, metadata)
SELECT gen_random_uuid(), stream_id, stream_version, event_type, schema_version, payload, metadata
FROM annals_events ORDER BY position;
ANALYZE annals_events, annals_snapshots, bench_events;
";

const COPY_SELECT: &str =
    "SELECT payload FROM bench_events WHERE stream_id = $1 ORDER BY stream_version";
/// The unique (stream_id, stream_version) index is the version check.
const COPY_INSERT: &str = "INSERT INTO bench_events (event_id, stream_id, stream_version, event_type, schema_version, payload, metadata)
     VALUES ($1, $2, $3 + 1, $4, $5, $6::jsonb, $7::jsonb)";
const TABLES_SELECT: &str =
    "SELECT payload FROM annals_events WHERE stream_id = $1 ORDER BY stream_version";
/// annals' guarantee, hand-written on annals' table: the unique
/// (stream_id, stream_version) key is the version check (a conflict inserts
/// nothing), and the NOTIFY trigger fires.
const TABLES_INSERT: &str = "INSERT INTO annals_events (event_id, stream_id, stream_version, event_type, schema_version, payload, metadata)
     VALUES ($1, $2, $3 + 1, $4, $5, $6::jsonb, $7::jsonb)
     ON CONFLICT ON CONSTRAINT annals_events_stream_version_key DO NOTHING";

/// How a hand-written command uses the pool.
#[derive(Clone, Copy)]
enum Checkouts {
    /// Each statement on the pool (a checkout each): the plain sqlx app.
    PerStatement,
    /// Both statements on one checkout, as annals runs a command.
    One,
}

/// The connection for a hand-written command's next statement: the one it
/// holds, or a fresh checkout (the previous one returned first).
async fn statement_conn<'c>(
    pool: &PgPool,
    held: &'c mut Option<sqlx::pool::PoolConnection<sqlx::Postgres>>,
    own: &'c mut Option<sqlx::pool::PoolConnection<sqlx::Postgres>>,
) -> &'c mut sqlx::PgConnection {
    if let Some(conn) = held {
        return conn;
    }
    *own = None;
    own.insert(pool.acquire().await.expect("checkout"))
}

#[derive(Clone)]
enum Runner {
    Annals(Arc<PlainRepo>),
    AnnalsSnapshots(Arc<SnapRepo>),
    /// (select, insert, how they use the pool)
    Sql(&'static str, &'static str, Checkouts),
    /// Diagnostic: annals' own read and append statements, bound by hand.
    AnnalsSql,
    /// Diagnostic: the command's load alone, through the repository.
    LoadAnnals(Arc<PlainRepo>),
    /// Diagnostic: the command's load alone, with a `PgSnapshotStore`
    /// (no snapshot is due at `FEW` events: the statement reads none).
    LoadAnnalsSnapshots(Arc<SnapRepo>),
    /// Diagnostic: the baseline's load alone (select + fold).
    LoadSql,
}

async fn command(
    runner: &Runner,
    pool: &PgPool,
    id: &str,
    stream: &str,
    cmd: &Score,
    meta: &Metadata,
) {
    let expect = FEW as u64 + 1;
    match runner {
        Runner::LoadAnnals(repo) => {
            let l = repo.load(id).await.expect("load");
            assert_eq!(l.version, FEW as u64);
            black_box(l);
        }
        Runner::LoadAnnalsSnapshots(repo) => {
            let l = repo.load(id).await.expect("load");
            assert_eq!(l.version, FEW as u64);
            black_box(l);
        }
        Runner::LoadSql => {
            let rows: Vec<Json<LeadScored>> = sqlx::query_scalar(TABLES_SELECT)
                .bind(stream)
                .fetch_all(pool)
                .await
                .expect("baseline read");
            let mut state = Lead::default();
            for r in &rows {
                fold(&mut state, &r.0);
            }
            assert_eq!(state.scores, FEW as u64);
            black_box(state);
        }
        Runner::Annals(repo) => {
            let done = repo.execute(id, cmd, meta).await.expect("execute");
            assert_eq!((done.version, done.attempts), (expect, 1));
            black_box(done);
        }
        Runner::AnnalsSnapshots(repo) => {
            let done = repo.execute(id, cmd, meta).await.expect("execute");
            assert_eq!((done.version, done.attempts), (expect, 1));
            black_box(done);
        }
        Runner::Sql(select, insert, checkouts) => {
            let mut held = match checkouts {
                Checkouts::One => Some(pool.acquire().await.expect("checkout")),
                Checkouts::PerStatement => None,
            };
            let mut own = None;
            let rows: Vec<Json<LeadScored>> = sqlx::query_scalar(*select)
                .bind(stream)
                .fetch_all(statement_conn(pool, &mut held, &mut own).await)
                .await
                .expect("baseline read");
            let mut state = Lead::default();
            for r in &rows {
                fold(&mut state, &r.0);
            }
            let version = rows.len() as i64;
            let event = decide(&state, cmd).expect("decide");
            let done = sqlx::query(*insert)
                .bind(Uuid::now_v7())
                .bind(stream)
                .bind(version)
                .bind("lead.scored")
                .bind(2i32)
                .bind(serde_json::to_string(&event).expect("encode"))
                .bind(serde_json::to_string(meta).expect("encode metadata"))
                .execute(statement_conn(pool, &mut held, &mut own).await)
                .await
                .expect("baseline insert");
            assert_eq!(done.rows_affected(), 1, "version conflict");
            fold(&mut state, &event);
            assert_eq!(state.scores, expect);
            black_box(state);
        }
        Runner::AnnalsSql => {
            // the load's query (READ_PAYLOADS) and the one-event append,
            // bound by hand on one checkout (as annals runs a command),
            // payloads decoded by serde from the rows
            let mut conn = pool.acquire().await.expect("checkout");
            let rows = sqlx::query(sql::READ_PAYLOADS)
                .bind(stream)
                .bind(1i64)
                .bind(None::<i64>)
                .fetch_all(&mut *conn)
                .await
                .expect("read");
            let mut state = Lead::default();
            for r in &rows {
                let p: Json<LeadScored> = r.get(2);
                fold(&mut state, &p.0);
            }
            let version = rows.len() as i64;
            let event = decide(&state, cmd).expect("decide");
            let out = sqlx::query(sql::APPEND_ONE_EXACT)
                .bind(stream)
                .bind(Uuid::now_v7())
                .bind("lead.scored")
                .bind(2i32)
                .bind(serde_json::to_string(&event).expect("encode"))
                .bind(serde_json::to_string(meta).expect("encode metadata"))
                .bind(version)
                .fetch_all(&mut *conn)
                .await
                .expect("annals sql append");
            assert_eq!(out.len(), 1, "version conflict");
            fold(&mut state, &event);
            assert_eq!(state.scores, expect);
            black_box((state, out));
        }
    }
}

fn commands(c: &mut Criterion, rt: &Runtime, rows: &mut Vec<Comparison>) {
    let db = rt.block_on(TestDatabase::new());
    let pool = db.pool().clone();
    let validated = rt.block_on(build_store(&pool, true));
    let unvalidated = rt.block_on(build_store(&pool, false));
    rt.block_on(async {
        sqlx::query(CREATE_COPY)
            .execute(&pool)
            .await
            .expect("copy table");
        sqlx::raw_sql(RESEED).execute(&pool).await.expect("seed");
    });
    let annals = Runner::Annals(Arc::new(Repository::<Lead, _>::new(validated.clone())));
    let annals_unvalidated =
        Runner::Annals(Arc::new(Repository::<Lead, _>::new(unvalidated.clone())));
    let annals_snapshots = Runner::AnnalsSnapshots(Arc::new(
        Repository::<Lead, _>::new(validated.clone())
            .with_snapshots(PgSnapshotStore::new(&validated))
            .snapshot_every(Some(SNAPSHOT_EVERY)),
    ));
    let ids: Arc<Vec<String>> = Arc::new((0..AGGREGATES).map(|a| format!("c{a}")).collect());
    let streams: Arc<Vec<String>> = Arc::new(ids.iter().map(|id| format!("lead-{id}")).collect());
    let cmds: Arc<Vec<Score>> = Arc::new((0..AGGREGATES).map(|i| Score(scored(i))).collect());
    let meta = Metadata::new().with_user("bench");
    assert_eq!(LeadEvent::Scored(scored(0)).event_type(), "lead.scored");
    assert_eq!(LeadEvent::Scored(scored(0)).schema_version(), 2);
    // the seeded payloads decode in annals and agree with the baseline
    rt.block_on(async {
        let Runner::Annals(repo) = &annals else {
            unreachable!()
        };
        let l = repo.load("c7").await.expect("load");
        let mut state = Lead::default();
        let rows: Vec<Json<LeadScored>> = sqlx::query_scalar(COPY_SELECT)
            .bind("lead-c7")
            .fetch_all(&pool)
            .await
            .expect("read");
        rows.iter().for_each(|r| fold(&mut state, &r.0));
        assert_eq!((l.version, l.state), (FEW as u64, state));
    });

    let op = |runner: Runner, concurrency: usize| -> Op<'_> {
        let (pool, ids, streams, cmds, meta) = (
            pool.clone(),
            ids.clone(),
            streams.clone(),
            cmds.clone(),
            meta.clone(),
        );
        Box::new(move || {
            rt.block_on(sqlx::raw_sql(RESEED).execute(&pool))
                .expect("reseed");
            timed(|| {
                rt.block_on(async {
                    let tasks: Vec<_> = (0..concurrency)
                        .map(|t| {
                            let (runner, pool, ids, streams, cmds, meta) = (
                                runner.clone(),
                                pool.clone(),
                                ids.clone(),
                                streams.clone(),
                                cmds.clone(),
                                meta.clone(),
                            );
                            tokio::spawn(async move {
                                for i in (t..AGGREGATES).step_by(concurrency) {
                                    command(&runner, &pool, &ids[i], &streams[i], &cmds[i], &meta)
                                        .await;
                                }
                            })
                        })
                        .collect();
                    for t in tasks {
                        t.await.expect("command task");
                    }
                })
            })
        })
    };
    for (group, what, concurrency) in [
        ("agg_command_1_task", "1 task", 1),
        ("agg_command_8_tasks", "8 tasks", TASKS),
    ] {
        stamp(group);
        let mut ops: Vec<(&str, Op<'_>)> = vec![
            ("annals_validated", op(annals.clone(), concurrency)),
            (
                "annals_unvalidated",
                op(annals_unvalidated.clone(), concurrency),
            ),
            (
                "annals_with_pg_snapshots",
                op(annals_snapshots.clone(), concurrency),
            ),
            (
                "sqlx_copy_table",
                op(
                    Runner::Sql(COPY_SELECT, COPY_INSERT, Checkouts::PerStatement),
                    concurrency,
                ),
            ),
            (
                "sqlx_annals_tables",
                op(
                    Runner::Sql(TABLES_SELECT, TABLES_INSERT, Checkouts::PerStatement),
                    concurrency,
                ),
            ),
            (
                "diag_sqlx_tables_one_checkout",
                op(
                    Runner::Sql(TABLES_SELECT, TABLES_INSERT, Checkouts::One),
                    concurrency,
                ),
            ),
            (
                "diag_annals_sql_by_hand",
                op(Runner::AnnalsSql, concurrency),
            ),
        ];
        let mut pairs = vec![
            ("annals_validated", "sqlx_copy_table"),
            ("annals_validated", "sqlx_annals_tables"),
            ("annals_validated", "diag_sqlx_tables_one_checkout"),
            ("annals_unvalidated", "diag_annals_sql_by_hand"),
            ("annals_validated", "annals_unvalidated"),
            ("annals_with_pg_snapshots", "annals_validated"),
        ];
        if concurrency == 1 {
            // where the time goes, from one task: the loads alone, and the
            // baseline's INSERT into annals_events (trigger, no stream row)
            let Runner::Annals(repo) = &annals else {
                unreachable!()
            };
            let Runner::AnnalsSnapshots(snap_repo) = &annals_snapshots else {
                unreachable!()
            };
            ops.extend::<[(&str, Op<'_>); 3]>([
                (
                    "diag_load_only_annals",
                    op(Runner::LoadAnnals(repo.clone()), 1),
                ),
                (
                    "diag_load_only_pg_snapshots",
                    op(Runner::LoadAnnalsSnapshots(snap_repo.clone()), 1),
                ),
                ("diag_load_only_sqlx", op(Runner::LoadSql, 1)),
            ]);
            pairs.extend([
                ("diag_load_only_annals", "diag_load_only_sqlx"),
                ("diag_load_only_pg_snapshots", "diag_load_only_annals"),
                ("sqlx_annals_tables", "sqlx_copy_table"),
            ]);
        }
        run_group(
            c,
            group,
            |g| configure(g, Duration::from_secs(4), AGGREGATES),
            &ops,
            &pairs,
            CMD_ROUNDS,
        );
        drop(ops);
        let key = |name: &str| leak(format!("{group}/{name}"));
        for (label, a, b, target) in [
            (
                "annals (validating store) / copy-table baseline",
                "annals_validated",
                "sqlx_copy_table",
                Target::ThroughputAtLeast(0.9),
            ),
            (
                "annals (validating store) / same-tables baseline",
                "annals_validated",
                "sqlx_annals_tables",
                Target::ThroughputAtLeast(0.9),
            ),
            (
                "annals (no validation) / copy-table baseline",
                "annals_unvalidated",
                "sqlx_copy_table",
                Target::ThroughputAtLeast(0.9),
            ),
            (
                "annals (no validation) / same-tables baseline",
                "annals_unvalidated",
                "sqlx_annals_tables",
                Target::ThroughputAtLeast(0.9),
            ),
            (
                "annals + PgSnapshotStore / same-tables baseline",
                "annals_with_pg_snapshots",
                "sqlx_annals_tables",
                Target::ThroughputAtLeast(0.9),
            ),
            (
                "  diag: annals (validating) / same-tables baseline on one checkout",
                "annals_validated",
                "diag_sqlx_tables_one_checkout",
                Target::None,
            ),
            (
                "  diag: validated / unvalidated annals",
                "annals_validated",
                "annals_unvalidated",
                Target::None,
            ),
            (
                "  diag: same-tables / copy-table baseline",
                "sqlx_annals_tables",
                "sqlx_copy_table",
                Target::None,
            ),
            (
                "  diag: annals (no validation) / its SQL by hand",
                "annals_unvalidated",
                "diag_annals_sql_by_hand",
                Target::None,
            ),
            (
                "  diag: its SQL by hand / same-tables baseline",
                "diag_annals_sql_by_hand",
                "sqlx_annals_tables",
                Target::None,
            ),
            (
                "  diag: + PgSnapshotStore / validated annals",
                "annals_with_pg_snapshots",
                "annals_validated",
                Target::None,
            ),
            (
                "  diag: load alone, annals / sqlx",
                "diag_load_only_annals",
                "diag_load_only_sqlx",
                Target::None,
            ),
            (
                "  diag: load alone, + PgSnapshotStore / annals",
                "diag_load_only_pg_snapshots",
                "diag_load_only_annals",
                Target::None,
            ),
            (
                "  diag: same-tables baseline / copy table (trigger, ON CONFLICT)",
                "sqlx_annals_tables",
                "sqlx_copy_table",
                Target::None,
            ),
        ] {
            rows.push(Comparison {
                label: leak(format!("cmd x1000, {what}: {label}")),
                annals: key(a),
                baseline: key(b),
                events: AGGREGATES as u64,
                target,
            });
        }
    }
    drop((
        annals,
        annals_unvalidated,
        annals_snapshots,
        validated,
        unvalidated,
        pool,
    ));
    drop(db);
}

fn main() {
    common::require_durable("aggregates");
    let rt = runtime();
    let mut c = Criterion::default().configure_from_args();
    let mut rows = Vec::new();
    let start = Instant::now();
    stamp("seeding");
    // ANNALS_BENCH_ONLY=loads or =commands runs one half
    let only = std::env::var("ANNALS_BENCH_ONLY").unwrap_or_default();
    if only != "commands" {
        loads(&mut c, &rt, &mut rows);
    }
    if only != "loads" {
        commands(&mut c, &rt, &mut rows);
    }
    stamp("done");
    c.final_summary();
    print_summary("aggregates", SAMPLES, &rows);
    snapshot_summary();
    eprintln!("(columns annals/s and base/s: events/s for loads, loads/s for snapshot loads, commands/s for commands)");
    eprintln!("whole run: {:.1?}", start.elapsed());
}
