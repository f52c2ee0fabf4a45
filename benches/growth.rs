//! Cost growth: the same operations as the events table grows to 100 k,
//! 1 M and 10 M events, on a durable PostgreSQL, annals beside hand-written
//! sqlx at every size. Not run by the test command (filling 10 M events
//! takes minutes).
//!
//! The fill writes streams of 10 events in chunks of 100 k rows, each chunk
//! one transaction, with the 10 events of a stream 10 k rows apart: as in a
//! live system, where a stream's events arrive between other streams'
//! events, each event of a stream sits on its own heap page.
//!
//! At each size:
//! - append: one event to a new stream (`EventStore::append` against a
//!   plain INSERT);
//! - command: load a random 10-event aggregate of the fill, decide, append
//!   (`Repository::execute` against a SELECT + INSERT);
//! - load: a 10 k-event stream (`Repository::load` against a SELECT +
//!   serde + fold);
//! - catch-up: a projection runner over the newest 100 k events of the log
//!   against a hand-written keyset loop with a checkpoint per batch.
//!
//! Prints each figure per size and the growth from the smallest to the
//! largest size (target: ≤ 1.2x for appends and loads).
//!
//! `scripts/with-services --durable cargo bench --features testing --bench growth`
//! (`GROWTH_SIZES=100000,1000000` for a shorter run).

use std::sync::Arc;
use std::time::{Duration, Instant};

use annals::postgres::sqlx::{self, types::Json, PgConnection, PgPool, Row};
use annals::postgres::testing::TestDatabase;
use annals::postgres::{PgEventStore, PgProjectionStore, PoolConfig};
use annals::{
    Envelope, EventStore, EventStoreExt, ExpectedVersion, HandlerError, Metadata, NewEvent,
    Projection, ProjectionRunner, Repository,
};
use uuid::Uuid;

mod common;
use common::scores::{fold, Lead, Score};
use common::{raw, runtime, scored, LeadEvent, LeadScored};

const CHUNK: i64 = 100_000;
const PER_STREAM: i64 = 10;
const APPENDS: usize = 300;
const COMMANDS: usize = 300;
const BIG_STREAM: usize = 10_000;
const LOADS: usize = 20;
const CATCH_UP: i64 = 100_000;
const BATCH: i64 = 500;

/// Counts what it is given (the catch-up's projection).
struct Count;

impl Projection for Count {
    type Event = LeadEvent;
    type Conn = PgConnection;

    fn name(&self) -> &str {
        "growth"
    }

    async fn apply(
        &self,
        _: &mut PgConnection,
        e: &Envelope<LeadEvent>,
    ) -> Result<(), HandlerError> {
        std::hint::black_box(&e.payload);
        Ok(())
    }
}

/// Fills the table from `*filled` up to `target` fill events.
async fn fill(pool: &PgPool, filled: &mut i64, target: i64) {
    let started = Instant::now();
    while *filled < target {
        let chunk = *filled / CHUNK;
        // row g of the chunk: stream g % streams, version g / streams + 1
        sqlx::query(
            "INSERT INTO annals_events (event_id, stream_id, stream_version, event_type, schema_version, payload, metadata)
             SELECT gen_random_uuid(), 'lead-fill-' || $1 || '-' || (g % $2), g / $2 + 1, 'lead.scored', 2,
                    jsonb_build_object('lead_id', gen_random_uuid(), 'score', g % 100, 'model', 'growth',
                                       'reasons', jsonb_build_array('fill'), 'confidence', 0.5),
                    '{}'::jsonb
               FROM generate_series(0, $3 - 1) AS g",
        )
        .bind(chunk)
        .bind(CHUNK / PER_STREAM)
        .bind(CHUNK)
        .execute(pool)
        .await
        .expect("fill");
        *filled += CHUNK;
    }
    sqlx::query("VACUUM ANALYZE annals_events")
        .execute(pool)
        .await
        .expect("vacuum");
    println!(
        "filled to {filled} events in {:.0} s",
        started.elapsed().as_secs_f64()
    );
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// p50 and p99 in milliseconds.
fn p50_p99(mut l: Vec<Duration>) -> (f64, f64) {
    l.sort();
    (
        percentile(&l, 0.5).as_secs_f64() * 1e3,
        percentile(&l, 0.99).as_secs_f64() * 1e3,
    )
}

/// One size's figures: (name, annals p50 ms or rate, baseline).
type Figures = Vec<(&'static str, f64, f64)>;

async fn measure(db: &TestDatabase, size: i64, round: usize) -> Figures {
    let pool = PoolConfig::from_options(db.connect_options())
        .max_connections(4)
        .connect()
        .await
        .expect("pool");
    let store = PgEventStore::builder(pool.clone())
        .register::<LeadEvent>()
        .build()
        .await
        .expect("store");
    let repo = Repository::<Lead, _>::new(store.clone());
    let meta = Metadata::new().with_user("bench");
    let meta_json = serde_json::to_string(&meta).expect("metadata");
    let mut conn = pool.acquire().await.expect("checkout");
    let mut out = Figures::new();

    // one-event appends to new streams
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for i in 0..APPENDS {
        let e = NewEvent::new("lead.scored", 2, raw(&scored(i)), meta.clone());
        let started = Instant::now();
        store
            .append(
                &format!("new-{size}-a-{i}"),
                ExpectedVersion::NoStream,
                vec![e],
            )
            .await
            .expect("append");
        a.push(started.elapsed());
        let started = Instant::now();
        sqlx::query(
            "INSERT INTO annals_events (event_id, stream_id, stream_version, event_type, schema_version, payload, metadata)
             VALUES ($1, $2, 1, 'lead.scored', 2, $3::jsonb, $4::jsonb)",
        )
        .bind(Uuid::now_v7())
        .bind(format!("new-{size}-b-{i}"))
        .bind(serde_json::to_string(&scored(i)).expect("encode"))
        .bind(&meta_json)
        .execute(&mut *conn)
        .await
        .expect("insert");
        b.push(started.elapsed());
    }
    let (ap50, _) = p50_p99(a);
    let (bp50, _) = p50_p99(b);
    out.push(("append 1 event, p50 ms", ap50, bp50));

    // commands on random 10-event aggregates of the fill (each once)
    let streams = size / PER_STREAM;
    let pick = |i: usize, side: usize| {
        // spread over the whole fill, different streams for each side and
        // each size
        let n = (round * COMMANDS * 2 + i * 2 + side) as i64;
        let s = (n * 7_919_993) % streams;
        let chunk = s / (CHUNK / PER_STREAM);
        format!("fill-{chunk}-{}", s % (CHUNK / PER_STREAM))
    };
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for i in 0..COMMANDS {
        let id = pick(i, 0);
        let started = Instant::now();
        let done = repo
            .execute(&id, &Score(scored(i)), &meta)
            .await
            .expect("execute");
        a.push(started.elapsed());
        assert_eq!(done.version, PER_STREAM as u64 + 1, "{id}");
        let stream = format!("lead-{}", pick(i, 1));
        let started = Instant::now();
        let rows: Vec<Json<LeadScored>> = sqlx::query_scalar(
            "SELECT payload FROM annals_events WHERE stream_id = $1 ORDER BY stream_version",
        )
        .bind(&stream)
        .fetch_all(&mut *conn)
        .await
        .expect("select");
        let mut state = Lead::default();
        rows.iter().for_each(|r| fold(&mut state, &r.0));
        sqlx::query(
            "INSERT INTO annals_events (event_id, stream_id, stream_version, event_type, schema_version, payload, metadata)
             VALUES ($1, $2, $3, 'lead.scored', 2, $4::jsonb, $5::jsonb)",
        )
        .bind(Uuid::now_v7())
        .bind(&stream)
        .bind(rows.len() as i64 + 1)
        .bind(serde_json::to_string(&scored(i)).expect("encode"))
        .bind(&meta_json)
        .execute(&mut *conn)
        .await
        .expect("insert");
        b.push(started.elapsed());
    }
    let (ap50, _) = p50_p99(a);
    let (bp50, _) = p50_p99(b);
    out.push(("command on a 10-event aggregate, p50 ms", ap50, bp50));

    // loads of the 10 k-event stream
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..LOADS {
        let started = Instant::now();
        let loaded = repo.load("big").await.expect("load");
        a.push(started.elapsed());
        assert_eq!(loaded.version, BIG_STREAM as u64);
        let started = Instant::now();
        let rows: Vec<Json<LeadScored>> = sqlx::query_scalar(
            "SELECT payload FROM annals_events WHERE stream_id = $1 ORDER BY stream_version",
        )
        .bind("lead-big")
        .fetch_all(&mut *conn)
        .await
        .expect("select");
        let mut state = Lead::default();
        rows.iter().for_each(|r| fold(&mut state, &r.0));
        b.push(started.elapsed());
        assert_eq!(state.scores, BIG_STREAM as u64);
    }
    let (ap50, _) = p50_p99(a);
    let (bp50, _) = p50_p99(b);
    out.push(("load a 10k-event stream, p50 ms", ap50, bp50));

    // catch-up over the newest CATCH_UP events
    let start: (i64, i64) = sqlx::query_as(
        "SELECT transaction_id::text::int8, position FROM annals_events
          ORDER BY transaction_id DESC, position DESC OFFSET $1 LIMIT 1",
    )
    .bind(CATCH_UP)
    .fetch_one(&pool)
    .await
    .expect("start of the catch-up");
    sqlx::query("DELETE FROM annals_projection_checkpoints WHERE projection_name = 'growth'")
        .execute(&pool)
        .await
        .expect("reset");
    sqlx::query(
        "INSERT INTO annals_projection_checkpoints (projection_name, transaction_id, position)
         VALUES ('growth', $1::text::xid8, $2)",
    )
    .bind(start.0.to_string())
    .bind(start.1)
    .execute(&pool)
    .await
    .expect("checkpoint");
    let runner = ProjectionRunner::new(
        store.clone(),
        PgProjectionStore::new(pool.clone()),
        Arc::new(Count),
    )
    .batch_size(BATCH as usize);
    let started = Instant::now();
    let caught = runner.catch_up().await.expect("catch up");
    let annals_rate = caught.events_read as f64 / started.elapsed().as_secs_f64();
    assert!(caught.events_read >= CATCH_UP as u64, "{caught:?}");

    let started = Instant::now();
    let (mut reading, mut checkpointing) = (Duration::ZERO, Duration::ZERO);
    let mut at = start;
    let mut seen = 0i64;
    while seen < CATCH_UP {
        let t = Instant::now();
        let rows = sqlx::query(
            // (aliased: an output column named `transaction_id` would make
            // the ORDER BY sort by the cast, not walk the index)
            "SELECT transaction_id::text::int8 AS tx, position, payload FROM annals_events
              WHERE (transaction_id, position) > ($1::text::xid8, $2)
                AND transaction_id < pg_snapshot_xmin(pg_current_snapshot())
              ORDER BY transaction_id, position LIMIT $3",
        )
        .bind(at.0.to_string())
        .bind(at.1)
        .bind(BATCH)
        .fetch_all(&mut *conn)
        .await
        .expect("keyset read");
        reading += t.elapsed();
        if rows.is_empty() {
            break;
        }
        for r in &rows {
            let p: Json<LeadScored> = r.get(2);
            std::hint::black_box(p);
        }
        let last = &rows[rows.len() - 1];
        at = (last.get(0), last.get(1));
        seen += rows.len() as i64;
        let t = Instant::now();
        sqlx::query(
            "INSERT INTO annals_projection_checkpoints (projection_name, transaction_id, position)
             VALUES ('growth_baseline', $1::text::xid8, $2)
             ON CONFLICT (projection_name) DO UPDATE SET transaction_id = EXCLUDED.transaction_id, position = EXCLUDED.position",
        )
        .bind(at.0.to_string())
        .bind(at.1)
        .execute(&mut *conn)
        .await
        .expect("baseline checkpoint");
        checkpointing += t.elapsed();
    }
    println!(
        "  (baseline catch-up: {seen} events, reading {:.2} s, checkpoints {:.2} s)",
        reading.as_secs_f64(),
        checkpointing.as_secs_f64()
    );
    let baseline_rate = seen as f64 / started.elapsed().as_secs_f64();
    out.push((
        "catch-up, newest 100k events, events/s",
        annals_rate,
        baseline_rate,
    ));
    drop(conn);
    pool.close().await;
    out
}

fn main() {
    let sizes: Vec<i64> = std::env::var("GROWTH_SIZES")
        .unwrap_or_else(|_| "100000,1000000,10000000".to_owned())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let rt = runtime();
    rt.block_on(async {
        let db = TestDatabase::new().await;
        let admin = db.pool().clone();
        let durable: bool = sqlx::query_scalar(
            "SELECT bool_and(setting = 'on') FROM pg_settings WHERE name IN ('fsync', 'synchronous_commit', 'full_page_writes')",
        )
        .fetch_one(&admin)
        .await
        .expect("settings");
        assert!(
            durable,
            "run on a durable server: `scripts/with-services --durable cargo bench --features testing --bench growth`"
        );
        let shared_buffers: String = sqlx::query_scalar("SHOW shared_buffers")
            .fetch_one(&admin)
            .await
            .expect("shared_buffers");
        println!("server: durable, shared_buffers {shared_buffers}");
        // the 10 k-event stream, written first (its events are adjacent)
        let store = PgEventStore::builder(admin.clone())
            .register::<LeadEvent>()
            .build()
            .await
            .expect("store");
        let events: Vec<LeadEvent> = (0..BIG_STREAM).map(|i| LeadEvent::Scored(scored(i))).collect();
        for (k, chunk) in events.chunks(1_000).enumerate() {
            let expected = if k == 0 {
                ExpectedVersion::NoStream
            } else {
                ExpectedVersion::Exact(k as u64 * 1_000)
            };
            store
                .append_events("lead-big", expected, chunk, &Metadata::new())
                .await
                .expect("big stream");
        }
        let mut table: Vec<(i64, Figures)> = Vec::new();
        let mut filled = 0;
        for (round, &size) in sizes.iter().enumerate() {
            fill(&admin, &mut filled, size).await;
            let figures = measure(&db, size, round).await;
            for (name, a, b) in &figures {
                println!("{size:>10} events: {name:<44} annals {a:>10.2}  sqlx {b:>10.2}  ({:.2}x)", a / b);
            }
            table.push((size, figures));
        }
        if let (Some((small, first)), Some((large, last))) = (table.first(), table.last()) {
            println!("growth from {small} to {large} events (annals; sqlx):");
            for ((name, a0, b0), (_, a1, b1)) in first.iter().zip(last) {
                println!("  {name:<44} {:.2}x; {:.2}x", a1 / a0, b1 / b0);
            }
        }
    });
}
