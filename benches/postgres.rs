//! Benchmarks of the Postgres event store against raw sqlx on the same
//! database, in the same run. The baselines write plain SQL into the same
//! `annals_events` table (same columns, indexes and NOTIFY trigger) and read
//! from it; the ratios are printed to stderr at the end.
//!
//! Needs a PostgreSQL server in DATABASE_URL; each group gets a fresh
//! migrated database (`annals_postgres::testing::TestDatabase`):
//! `scripts/with-services --durable cargo bench --features testing --bench postgres`

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use annals::postgres::sqlx::types::chrono::{DateTime, Utc};
use annals::postgres::sqlx::{self, types::Json, PgPool, Row};
use annals::postgres::testing::TestDatabase;
use annals::postgres::{sql, PgEventStore};
use annals::{Event, EventStore, EventStoreExt, ExpectedVersion, LogPosition, Metadata};
use criterion::{Criterion, SamplingMode, Throughput};
use serde_json::value::RawValue;
use tokio::runtime::Runtime;
use uuid::Uuid;

mod common;
use common::{
    print_summary, run_group, runtime, scored, timed, Comparison, LeadEvent, LeadScored, Op, Target,
};

const SAMPLES: usize = 10;
/// Interleaved rounds per (annals, baseline) pair.
const ROUNDS: usize = 8;
/// ... of the 10k-event stream read (each round takes 20-90 ms; its target
/// is within a few points, so more rounds narrow the quartiles).
const READ_ROUNDS: usize = 24;
/// ... of the appends (each round takes 50-250 ms; the one-event rows sit
/// a few points above their target, within the machine's drift between
/// rounds, so their median needs more rounds to settle).
const APPEND_ROUNDS: usize = 24;
/// Events per iteration of the one-event-per-call appends.
const SINGLE: usize = 1_000;
const TASKS: usize = 8;
/// The batched appends: BATCHES calls of BATCH events per iteration.
const BATCH: usize = 100;
const BATCHES: usize = 20;
const STREAM_EVENTS: usize = 10_000;
const LOG_EVENTS: usize = 100_000;
const PAGE: usize = 1_000;

/// The baseline's one-row insert: the same table and columns as an annals
/// append, the stream version supplied by the client, no stream row.
const INSERT_ONE: &str = "INSERT INTO annals_events (event_id, stream_id, stream_version, event_type, schema_version, payload, metadata)
     VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7::jsonb)";

fn configure(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    events: usize,
) {
    group
        .sample_size(SAMPLES)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .sampling_mode(SamplingMode::Flat)
        .throughput(Throughput::Elements(events as u64));
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

async fn truncate(pool: &PgPool) {
    sqlx::query("TRUNCATE annals_events")
        .execute(pool)
        .await
        .expect("truncate");
}

/// Unique stream names across every call of a bench.
static RUN: AtomicU64 = AtomicU64::new(0);

fn stream_names(prefix: &str, n: usize) -> Vec<String> {
    let run = RUN.fetch_add(1, Ordering::Relaxed);
    (0..n).map(|i| format!("{prefix}-{run}-{i}")).collect()
}

/// What the baseline binds for one event: what a hand-written store would
/// compute (a fresh id, the payload and metadata as JSON text).
fn baseline_row(e: &LeadEvent, meta: &Metadata) -> (Uuid, String, String) {
    let LeadEvent::Scored(p) = e else {
        unreachable!("only scores are appended")
    };
    (
        Uuid::now_v7(),
        serde_json::to_string(p).expect("encode"),
        serde_json::to_string(meta).expect("encode metadata"),
    )
}

/// Diagnostic: the baseline's INSERT returning what an `AppendResult` needs:
/// the floor of a design that checks expected versions with the
/// (stream_id, stream_version) unique key instead of a stream row.
const INSERT_ONE_RETURNING: &str = "INSERT INTO annals_events (event_id, stream_id, stream_version, event_type, schema_version, payload, metadata)
     VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7::jsonb)
     RETURNING position, transaction_id::text::int8 AS tx, stream_version, recorded_at";

/// The envelope a hand-written store would read (diagnostic).
#[allow(dead_code)] // read only through black_box
struct HandEnvelope {
    position: i64,
    tx: i64,
    event_id: Uuid,
    stream_id: String,
    stream_version: i64,
    event_type: String,
    schema_version: i32,
    payload: LeadScored,
    metadata: Metadata,
    recorded_at: DateTime<Utc>,
}

/// Who writes in the append benchmarks.
#[derive(Clone)]
enum Writer {
    /// `EventStoreExt::append_events`.
    Annals(PgEventStore),
    /// The baseline: one plain INSERT into annals_events.
    PlainInsert,
    /// Diagnostic: annals' batch statement, bound by hand.
    AnnalsSql,
    /// Diagnostic: the plain INSERT, returning position, transaction and time.
    PlainReturning,
}

async fn write_one(writer: &Writer, pool: &PgPool, stream: &str, e: &LeadEvent, meta: &Metadata) {
    let sql = match writer {
        Writer::Annals(store) => {
            black_box(
                store
                    .append_events(
                        stream,
                        ExpectedVersion::NoStream,
                        std::slice::from_ref(e),
                        meta,
                    )
                    .await
                    .expect("append"),
            );
            return;
        }
        Writer::AnnalsSql => {
            let (id, payload, metadata) = baseline_row(e, meta);
            let rows = sqlx::query(sql::APPEND_NEW_STREAM)
                .bind(stream)
                .bind(vec![id])
                .bind(vec!["lead.scored"])
                .bind(vec![2i32])
                .bind(vec![payload])
                .bind(vec![metadata])
                .fetch_all(pool)
                .await
                .expect("annals sql");
            assert_eq!(rows.len(), 1);
            return;
        }
        Writer::PlainReturning => {
            let (id, payload, metadata) = baseline_row(e, meta);
            let row = sqlx::query(INSERT_ONE_RETURNING)
                .bind(id)
                .bind(stream)
                .bind(1i64)
                .bind("lead.scored")
                .bind(2i32)
                .bind(payload)
                .bind(metadata)
                .fetch_one(pool)
                .await
                .expect("plain insert returning");
            black_box((
                row.get::<i64, _>(0),
                row.get::<i64, _>(1),
                row.get::<i64, _>(2),
                row.get::<DateTime<Utc>, _>(3),
            ));
            return;
        }
        Writer::PlainInsert => INSERT_ONE,
    };
    let (id, payload, metadata) = baseline_row(e, meta);
    let done = sqlx::query(sql)
        .bind(id)
        .bind(stream)
        .bind(1i64)
        .bind("lead.scored")
        .bind(2i32)
        .bind(payload)
        .bind(metadata)
        .execute(pool)
        .await
        .expect("baseline insert");
    assert_eq!(done.rows_affected(), 1);
}

/// One event per call to SINGLE fresh streams, sequentially and from TASKS
/// concurrent tasks.
fn append_single(c: &mut Criterion, rt: &Runtime) {
    let db = rt.block_on(TestDatabase::new());
    let pool = db.pool().clone();
    let validated = rt.block_on(build_store(&pool, true));
    let unvalidated = rt.block_on(build_store(&pool, false));
    let events: Arc<Vec<LeadEvent>> =
        Arc::new((0..SINGLE).map(|i| LeadEvent::Scored(scored(i))).collect());
    let meta = Metadata::new().with_user("bench");

    // SINGLE appends of one event to fresh streams, from `concurrency` tasks
    let op = |writer: Writer, concurrency: usize| -> Op<'_> {
        let (rt, pool, events, meta) = (rt, pool.clone(), events.clone(), meta.clone());
        Box::new(move || {
            rt.block_on(truncate(&pool));
            let streams = Arc::new(stream_names("s", SINGLE));
            timed(|| {
                rt.block_on(async {
                    let mut tasks = Vec::new();
                    for t in 0..concurrency {
                        let (writer, pool, streams, events, meta) = (
                            writer.clone(),
                            pool.clone(),
                            streams.clone(),
                            events.clone(),
                            meta.clone(),
                        );
                        tasks.push(tokio::spawn(async move {
                            for i in (t..SINGLE).step_by(concurrency) {
                                write_one(&writer, &pool, &streams[i], &events[i], &meta).await;
                            }
                        }));
                    }
                    for t in tasks {
                        t.await.expect("append task");
                    }
                })
            })
        })
    };
    for (group, concurrency) in [
        ("pg_append_1_per_call_seq", 1),
        ("pg_append_1_per_call_8_tasks", TASKS),
    ] {
        run_group(
            c,
            group,
            |g| configure(g, SINGLE),
            &[
                (
                    "annals_validated",
                    op(Writer::Annals(validated.clone()), concurrency),
                ),
                (
                    "annals_unvalidated",
                    op(Writer::Annals(unvalidated.clone()), concurrency),
                ),
                ("sqlx_baseline", op(Writer::PlainInsert, concurrency)),
                (
                    "diag_annals_sql_via_sqlx",
                    op(Writer::AnnalsSql, concurrency),
                ),
                (
                    "diag_plain_insert_returning",
                    op(Writer::PlainReturning, concurrency),
                ),
            ],
            &[
                ("annals_validated", "sqlx_baseline"),
                ("annals_unvalidated", "sqlx_baseline"),
                ("annals_unvalidated", "diag_annals_sql_via_sqlx"),
                ("diag_plain_insert_returning", "sqlx_baseline"),
            ],
            APPEND_ROUNDS,
        );
    }
    drop((validated, unvalidated, pool));
    drop(db);
}

/// BATCH events per call, BATCHES calls (fresh streams) per iteration.
fn append_batch(c: &mut Criterion, rt: &Runtime) {
    let db = rt.block_on(TestDatabase::new());
    let pool = db.pool().clone();
    let validated = rt.block_on(build_store(&pool, true));
    let unvalidated = rt.block_on(build_store(&pool, false));
    let events: Vec<LeadEvent> = (0..BATCH).map(|i| LeadEvent::Scored(scored(i))).collect();
    let meta = Metadata::new().with_user("bench");
    // the baseline's multi-row INSERT: BATCH rows of 7 parameters
    let mut sql = String::from(
        "INSERT INTO annals_events (event_id, stream_id, stream_version, event_type, schema_version, payload, metadata) VALUES ",
    );
    for r in 0..BATCH {
        let p = r * 7;
        if r > 0 {
            sql.push_str(", ");
        }
        sql.push_str(&format!(
            "(${}, ${}, ${}, ${}, ${}, ${}::jsonb, ${}::jsonb)",
            p + 1,
            p + 2,
            p + 3,
            p + 4,
            p + 5,
            p + 6,
            p + 7
        ));
    }
    let sql: Arc<str> = sql.into();

    // BATCHES appends of BATCH events, each to a fresh stream
    let op = |store: Option<&PgEventStore>| -> Op<'_> {
        let store = store.cloned();
        let (pool, events, meta, sql) = (&pool, &events, &meta, &sql);
        Box::new(move || {
            rt.block_on(truncate(pool));
            let streams = stream_names("s", BATCHES);
            timed(|| {
                rt.block_on(async {
                    for stream in &streams {
                        match &store {
                            Some(store) => {
                                black_box(
                                    store
                                        .append_events(
                                            stream,
                                            ExpectedVersion::NoStream,
                                            events,
                                            meta,
                                        )
                                        .await
                                        .expect("append"),
                                );
                            }
                            None => {
                                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.clone()));
                                for (v, e) in events.iter().enumerate() {
                                    let (id, payload, metadata) = baseline_row(e, meta);
                                    q = q
                                        .bind(id)
                                        .bind(stream.as_str())
                                        .bind(v as i64 + 1)
                                        .bind("lead.scored")
                                        .bind(2i32)
                                        .bind(payload)
                                        .bind(metadata);
                                }
                                q.execute(pool).await.expect("baseline insert");
                            }
                        }
                    }
                })
            })
        })
    };
    run_group(
        c,
        "pg_append_100_per_call",
        |g| configure(g, BATCH * BATCHES),
        &[
            ("annals_validated", op(Some(&validated))),
            ("annals_unvalidated", op(Some(&unvalidated))),
            ("sqlx_baseline", op(None)),
        ],
        &[
            ("annals_validated", "sqlx_baseline"),
            ("annals_unvalidated", "sqlx_baseline"),
        ],
        APPEND_ROUNDS,
    );
    drop((validated, unvalidated, pool));
    drop(db);
}

/// Reads: one STREAM_EVENTS-event stream, typed; the whole LOG_EVENTS-event
/// log in pages of PAGE.
fn reads(c: &mut Criterion, rt: &Runtime) {
    let db = rt.block_on(TestDatabase::new());
    let pool = db.pool().clone();
    let store = rt.block_on(build_store(&pool, false));
    let meta = Metadata::new().with_user("bench");
    // the big stream, then other streams of 100 up to LOG_EVENTS events in all
    rt.block_on(async {
        let events: Vec<LeadEvent> = (0..STREAM_EVENTS)
            .map(|i| LeadEvent::Scored(scored(i)))
            .collect();
        for (k, chunk) in events.chunks(100).enumerate() {
            store
                .append_events(
                    "big",
                    ExpectedVersion::from_current(Some(k as u64 * 100)),
                    chunk,
                    &meta,
                )
                .await
                .expect("append the big stream");
        }
        for s in 0..(LOG_EVENTS - STREAM_EVENTS) / 100 {
            let chunk: Vec<LeadEvent> = (0..100)
                .map(|i| LeadEvent::Scored(scored(s * 100 + i)))
                .collect();
            store
                .append_events(&format!("s-{s}"), ExpectedVersion::NoStream, &chunk, &meta)
                .await
                .expect("append a stream");
        }
        sqlx::query("VACUUM (ANALYZE) annals_events")
            .execute(&pool)
            .await
            .expect("vacuum");
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM annals_events")
            .fetch_one(&pool)
            .await
            .expect("count");
        assert_eq!(n as usize, LOG_EVENTS);
    });

    run_group(
        c,
        "pg_read_stream_10k",
        |g| configure(g, STREAM_EVENTS),
        &[
            (
                "annals_read_stream_as",
                Box::new(|| {
                    timed(|| {
                        let events = rt
                            .block_on(store.read_stream_as::<LeadEvent>("big", ..))
                            .expect("read");
                        assert_eq!(events.len(), STREAM_EVENTS);
                        black_box(events);
                    })
                }),
            ),
            (
                "annals_read_stream_events",
                Box::new(|| {
                    timed(|| {
                        let events = rt
                            .block_on(store.read_stream_payloads_as::<LeadEvent>("big", ..))
                            .expect("read");
                        assert_eq!(events.len(), STREAM_EVENTS);
                        black_box(events);
                    })
                }),
            ),
            (
                "sqlx_baseline",
                Box::new(|| {
                    timed(|| {
                        let events: Vec<Json<LeadScored>> = rt
                            .block_on(
                                sqlx::query_scalar(
                                    "SELECT payload FROM annals_events WHERE stream_id = $1 ORDER BY stream_version",
                                )
                                .bind("big")
                                .fetch_all(&pool),
                            )
                            .expect("read");
                        assert_eq!(events.len(), STREAM_EVENTS);
                        black_box(events);
                    })
                }),
            ),
            // where the typed read's difference goes: annals' lean query
            // (READ_PAYLOADS: version, schema key, payload) decoded by
            // hand ...
            (
                "diag_lean_sql_by_hand",
                Box::new(|| {
                    timed(|| {
                        let events: Vec<(i64, LeadScored)> = rt
                            .block_on(
                                sqlx::query(sql::READ_PAYLOADS)
                                    .bind("big")
                                    .bind(1i64)
                                    .bind(None::<i64>)
                                    .try_map(|r: sqlx::postgres::PgRow| {
                                        let _key: i64 = r.try_get(1)?;
                                        let p: Json<LeadScored> = r.try_get(2)?;
                                        Ok((r.try_get(0)?, p.0))
                                    })
                                    .fetch_all(&pool),
                            )
                            .expect("read");
                        assert_eq!(events.len(), STREAM_EVENTS);
                        black_box(events);
                    })
                }),
            ),
            // ... and the baseline with one more column: the version (an
            // int8), or the event type (text)
            (
                "diag_baseline_plus_version",
                Box::new(|| {
                    timed(|| {
                        let events: Vec<(i64, Json<LeadScored>)> = rt
                            .block_on(
                                sqlx::query_as(
                                    "SELECT stream_version, payload FROM annals_events WHERE stream_id = $1 ORDER BY stream_version",
                                )
                                .bind("big")
                                .fetch_all(&pool),
                            )
                            .expect("read");
                        assert_eq!(events.len(), STREAM_EVENTS);
                        black_box(events);
                    })
                }),
            ),
            (
                "diag_baseline_plus_type",
                Box::new(|| {
                    timed(|| {
                        let events: Vec<(String, Json<LeadScored>)> = rt
                            .block_on(
                                sqlx::query_as(
                                    "SELECT event_type, payload FROM annals_events WHERE stream_id = $1 ORDER BY stream_version",
                                )
                                .bind("big")
                                .fetch_all(&pool),
                            )
                            .expect("read");
                        assert_eq!(events.len(), STREAM_EVENTS);
                        black_box(events);
                    })
                }),
            ),
            // where the full envelope's difference goes: annals' untyped read ...
            (
                "diag_annals_read_stream_untyped",
                Box::new(|| {
                    timed(|| {
                        let n = rt.block_on(async {
                            let mut n = 0;
                            loop {
                                let page = store
                                    .read_stream("big", n as u64 + 1..=n as u64 + PAGE as u64)
                                    .await
                                    .expect("read");
                                n += page.len();
                                if page.len() < PAGE {
                                    break n;
                                }
                            }
                        });
                        assert_eq!(n, STREAM_EVENTS);
                    })
                }),
            ),
            // ... its statement, in the same pages, rows not decoded ...
            (
                "diag_annals_sql_paged_rows_only",
                Box::new(|| {
                    timed(|| {
                        let n = rt.block_on(async {
                            let mut n = 0;
                            loop {
                                let rows = sqlx::query(sql::READ_STREAM)
                                    .bind("big")
                                    .bind(n as i64 + 1)
                                    .bind(PAGE as i64)
                                    .fetch_all(&pool)
                                    .await
                                    .expect("read");
                                n += rows.len();
                                if rows.len() < PAGE {
                                    break n;
                                }
                                black_box(rows);
                            }
                        });
                        assert_eq!(n, STREAM_EVENTS);
                    })
                }),
            ),
            // ... in one query ...
            (
                "diag_annals_sql_one_query_rows_only",
                Box::new(|| {
                    timed(|| {
                        let rows = rt
                            .block_on(
                                sqlx::query(sql::READ_STREAM)
                                    .bind("big")
                                    .bind(1i64)
                                    .bind(STREAM_EVENTS as i64)
                                    .fetch_all(&pool),
                            )
                            .expect("read");
                        assert_eq!(rows.len(), STREAM_EVENTS);
                        black_box(rows);
                    })
                }),
            ),
            // ... a hand-written read of the same envelope (every column annals
            // returns, jsonb in binary, by index, one query) ...
            (
                "diag_sqlx_full_envelope",
                Box::new(|| {
                    timed(|| {
                        let rows = rt
                            .block_on(
                                sqlx::query(
                                    "SELECT position, transaction_id::text::int8 AS tx, event_id, stream_id, stream_version, event_type, schema_version, payload, metadata, recorded_at
                                     FROM annals_events WHERE stream_id = $1 ORDER BY stream_version",
                                )
                                .bind("big")
                                .fetch_all(&pool),
                            )
                            .expect("read");
                        let events: Vec<HandEnvelope> = rows
                            .iter()
                            .map(|r| HandEnvelope {
                                position: r.get(0),
                                tx: r.get(1),
                                event_id: r.get(2),
                                stream_id: r.get(3),
                                stream_version: r.get(4),
                                event_type: r.get(5),
                                schema_version: r.get(6),
                                payload: r.get::<Json<LeadScored>, _>(7).0,
                                metadata: r.get::<Json<Metadata>, _>(8).0,
                                recorded_at: r.get(9),
                            })
                            .collect();
                        assert_eq!(events.len(), STREAM_EVENTS);
                        black_box(events);
                    })
                }),
            ),
            // ... and the baseline's query with the payload as text, decoded
            // with serde_json (as annals does) instead of sqlx's Json
            (
                "diag_payload_text_then_serde",
                Box::new(|| {
                    timed(|| {
                        let texts: Vec<String> = rt
                            .block_on(
                                sqlx::query_scalar(
                                    "SELECT payload::text FROM annals_events WHERE stream_id = $1 ORDER BY stream_version",
                                )
                                .bind("big")
                                .fetch_all(&pool),
                            )
                            .expect("read");
                        let events: Vec<LeadScored> = texts
                            .iter()
                            .map(|t| serde_json::from_str(t).expect("decode"))
                            .collect();
                        assert_eq!(events.len(), STREAM_EVENTS);
                        black_box(events);
                    })
                }),
            ),
        ],
        &[
            ("annals_read_stream_events", "sqlx_baseline"),
            ("annals_read_stream_events", "diag_lean_sql_by_hand"),
            ("diag_lean_sql_by_hand", "sqlx_baseline"),
            ("diag_baseline_plus_version", "sqlx_baseline"),
            ("diag_baseline_plus_type", "sqlx_baseline"),
            ("annals_read_stream_as", "sqlx_baseline"),
            ("annals_read_stream_as", "diag_annals_read_stream_untyped"),
            (
                "diag_annals_read_stream_untyped",
                "diag_annals_sql_paged_rows_only",
            ),
            (
                "diag_annals_sql_paged_rows_only",
                "diag_annals_sql_one_query_rows_only",
            ),
            ("diag_annals_sql_one_query_rows_only", "sqlx_baseline"),
            ("diag_payload_text_then_serde", "sqlx_baseline"),
            ("annals_read_stream_as", "diag_sqlx_full_envelope"),
            ("diag_sqlx_full_envelope", "sqlx_baseline"),
        ],
        READ_ROUNDS,
    );

    // the client-side work of annals' stream read, per 10k rows, on the
    // stored text of the big stream
    let (payloads, metadatas): (Vec<String>, Vec<String>) = rt
        .block_on(
            sqlx::query("SELECT payload::text AS p, metadata::text AS m FROM annals_events WHERE stream_id = 'big' ORDER BY stream_version")
                .fetch_all(&pool),
        )
        .expect("read texts")
        .iter()
        .map(|r| (r.get::<String, _>("p"), r.get::<String, _>("m")))
        .unzip();
    let raws: Vec<Box<RawValue>> = payloads
        .iter()
        .map(|p| RawValue::from_string(p.clone()).expect("json"))
        .collect();
    run_group(
        c,
        "pg_read_stream_client_cpu_10k",
        |g| configure(g, STREAM_EVENTS),
        &[
            (
                "metadata_from_str",
                Box::new(|| {
                    timed(|| {
                        for m in &metadatas {
                            black_box(serde_json::from_str::<Metadata>(m).expect("metadata"));
                        }
                    })
                }),
            ),
            (
                "raw_value_from_string",
                Box::new(|| {
                    let owned = payloads.clone();
                    timed(|| {
                        for p in owned {
                            black_box(RawValue::from_string(p).expect("json"));
                        }
                    })
                }),
            ),
            (
                "event_decode",
                Box::new(|| {
                    timed(|| {
                        for p in &raws {
                            black_box(LeadEvent::decode("lead.scored", 2, p).expect("decode"));
                        }
                    })
                }),
            ),
            (
                "serde_decode",
                Box::new(|| {
                    timed(|| {
                        for p in &payloads {
                            black_box(serde_json::from_str::<LeadScored>(p).expect("decode"));
                        }
                    })
                }),
            ),
        ],
        &[],
        ROUNDS,
    );

    run_group(
        c,
        "pg_read_all_100k",
        |g| configure(g, LOG_EVENTS),
        &[
            (
                "annals_read_all",
                Box::new(|| {
                    timed(|| {
                        let n = rt.block_on(async {
                            let mut after = LogPosition::START;
                            let mut n = 0;
                            loop {
                                let page = store.read_log(after, PAGE).await.expect("read");
                                let Some(last) = page.last() else { break };
                                after = last.log_position;
                                n += page.len();
                                black_box(page);
                            }
                            n
                        });
                        assert_eq!(n, LOG_EVENTS);
                    })
                }),
            ),
            (
                "sqlx_baseline",
                Box::new(|| {
                    timed(|| {
                        let n = rt.block_on(async {
                            let mut after = 0i64;
                            let mut n = 0;
                            loop {
                                let rows = sqlx::query(
                                    "SELECT position, event_id, stream_id, stream_version, event_type, schema_version,
                                            payload::text AS payload, metadata::text AS metadata, recorded_at
                                     FROM annals_events WHERE position > $1 ORDER BY position LIMIT $2",
                                )
                                .bind(after)
                                .bind(PAGE as i64)
                                .fetch_all(&pool)
                                .await
                                .expect("read");
                                let Some(last) = rows.last() else { break };
                                after = last.get("position");
                                n += rows.len();
                                black_box(rows);
                            }
                            n
                        });
                        assert_eq!(n, LOG_EVENTS);
                    })
                }),
            ),
            // annals' statement, rows not decoded: the SQL's share
            (
                "diag_annals_sql_rows_only",
                Box::new(|| {
                    timed(|| {
                        let n = rt.block_on(async {
                            let (mut tx, mut position) = (0i64, 0i64);
                            let mut n = 0;
                            loop {
                                let rows = sqlx::query(sql::READ_LOG)
                                    .bind(tx.to_string())
                                    .bind(position)
                                    .bind(PAGE as i64)
                                    .fetch_all(&pool)
                                    .await
                                    .expect("read");
                                let Some(last) = rows.last() else { break };
                                (tx, position) = (last.get("tx"), last.get("position"));
                                n += rows.len();
                                black_box(rows);
                            }
                            n
                        });
                        assert_eq!(n, LOG_EVENTS);
                    })
                }),
            ),
            // annals' statement, every column taken by name as decode_row
            // does, but no JSON parsing: the column-access share
            (
                "diag_annals_sql_columns_by_name",
                Box::new(|| {
                    timed(|| {
                        let n = rt.block_on(async {
                            let (mut tx, mut position) = (0i64, 0i64);
                            let mut n = 0;
                            loop {
                                let rows = sqlx::query(sql::READ_LOG)
                                    .bind(tx.to_string())
                                    .bind(position)
                                    .bind(PAGE as i64)
                                    .fetch_all(&pool)
                                    .await
                                    .expect("read");
                                let Some(last) = rows.last() else { break };
                                (tx, position) = (last.get("tx"), last.get("position"));
                                n += rows.len();
                                let columns: Vec<_> = rows
                                    .iter()
                                    .map(|r| {
                                        (
                                            r.get::<i64, _>("position"),
                                            r.get::<i64, _>("tx"),
                                            r.get::<i32, _>("schema_version"),
                                            r.get::<i64, _>("stream_version"),
                                            // jsonb columns (READ_LOG sends them as jsonb)
                                            r.get::<Json<Box<RawValue>>, _>("payload"),
                                            r.get::<Json<Box<RawValue>>, _>("metadata"),
                                            r.get::<Uuid, _>("event_id"),
                                            r.get::<String, _>("stream_id"),
                                            r.get::<String, _>("event_type"),
                                            r.get::<DateTime<Utc>, _>("recorded_at"),
                                        )
                                    })
                                    .collect();
                                black_box(columns);
                            }
                            n
                        });
                        assert_eq!(n, LOG_EVENTS);
                    })
                }),
            ),
            // the same by index: the by-name lookups' share
            (
                "diag_annals_sql_columns_by_index",
                Box::new(|| {
                    timed(|| {
                        let n = rt.block_on(async {
                            let (mut tx, mut position) = (0i64, 0i64);
                            let mut n = 0;
                            loop {
                                let rows = sqlx::query(sql::READ_LOG)
                                    .bind(tx.to_string())
                                    .bind(position)
                                    .bind(PAGE as i64)
                                    .fetch_all(&pool)
                                    .await
                                    .expect("read");
                                let Some(last) = rows.last() else { break };
                                (tx, position) = (last.get("tx"), last.get("position"));
                                n += rows.len();
                                let columns: Vec<_> = rows
                                    .iter()
                                    .map(|r| {
                                        (
                                            r.get::<i64, _>(0),
                                            r.get::<i64, _>(1),
                                            r.get::<i32, _>(6),
                                            r.get::<i64, _>(4),
                                            r.get::<Json<Box<RawValue>>, _>(7),
                                            r.get::<Json<Box<RawValue>>, _>(8),
                                            r.get::<Uuid, _>(2),
                                            r.get::<String, _>(3),
                                            r.get::<String, _>(5),
                                            r.get::<DateTime<Utc>, _>(9),
                                        )
                                    })
                                    .collect();
                                black_box(columns);
                            }
                            n
                        });
                        assert_eq!(n, LOG_EVENTS);
                    })
                }),
            ),
        ],
        &[
            ("annals_read_all", "diag_annals_sql_columns_by_name"),
            (
                "diag_annals_sql_columns_by_name",
                "diag_annals_sql_columns_by_index",
            ),
            (
                "diag_annals_sql_columns_by_name",
                "diag_annals_sql_rows_only",
            ),
            ("annals_read_all", "sqlx_baseline"),
            ("annals_read_all", "diag_annals_sql_rows_only"),
            ("diag_annals_sql_rows_only", "sqlx_baseline"),
        ],
        ROUNDS,
    );
    drop((store, pool));
    drop(db);
}

fn main() {
    common::require_durable("postgres");
    let rt = runtime();
    let mut c = Criterion::default().configure_from_args();
    // ANNALS_BENCH_ONLY=appends or =reads runs one part
    let only = std::env::var("ANNALS_BENCH_ONLY").unwrap_or_default();
    if only != "reads" {
        append_single(&mut c, &rt);
        append_batch(&mut c, &rt);
    }
    if only != "appends" {
        reads(&mut c, &rt);
    }
    c.final_summary();

    let row = |label, annals, baseline, events: usize, target| Comparison {
        label,
        annals,
        baseline,
        events: events as u64,
        target,
    };
    let mut rows = Vec::new();
    for (group, what) in [
        ("pg_append_1_per_call_seq", "sequential"),
        ("pg_append_1_per_call_8_tasks", "8 tasks"),
    ] {
        let key = |name: &str| -> &'static str { format!("{group}/{name}").leak() };
        let label = |s: String| -> &'static str { s.leak() };
        rows.extend([
            row(
                label(format!("append 1/call x1000, {what}, validated")),
                key("annals_validated"),
                key("sqlx_baseline"),
                SINGLE,
                Target::ThroughputAtLeast(0.9),
            ),
            row(
                label(format!("append 1/call x1000, {what}, unvalidated")),
                key("annals_unvalidated"),
                key("sqlx_baseline"),
                SINGLE,
                Target::ThroughputAtLeast(0.9),
            ),
            row(
                label(format!(
                    "  diag {what}: annals unvalidated / its batch SQL via sqlx"
                )),
                key("annals_unvalidated"),
                key("diag_annals_sql_via_sqlx"),
                SINGLE,
                Target::None,
            ),
            row(
                label(format!(
                    "  diag {what}: plain INSERT+RETURNING / plain INSERT"
                )),
                key("diag_plain_insert_returning"),
                key("sqlx_baseline"),
                SINGLE,
                Target::ThroughputAtLeast(0.9),
            ),
        ]);
    }
    let (batch, stream, log) = (BATCH * BATCHES, STREAM_EVENTS, LOG_EVENTS);
    rows.extend([
        row(
            "append 100/call x20, validated",
            "pg_append_100_per_call/annals_validated",
            "pg_append_100_per_call/sqlx_baseline",
            batch,
            Target::ThroughputAtLeast(0.8),
        ),
        row(
            "append 100/call x20, unvalidated",
            "pg_append_100_per_call/annals_unvalidated",
            "pg_append_100_per_call/sqlx_baseline",
            batch,
            Target::ThroughputAtLeast(0.8),
        ),
        row(
            "read 10k-event stream typed (read_stream_events)",
            "pg_read_stream_10k/annals_read_stream_events",
            "pg_read_stream_10k/sqlx_baseline",
            stream,
            Target::TimeAtMost(1.1),
        ),
        row(
            "  diag: read_stream_events / its SQL decoded by hand",
            "pg_read_stream_10k/annals_read_stream_events",
            "pg_read_stream_10k/diag_lean_sql_by_hand",
            stream,
            Target::None,
        ),
        row(
            "  diag: its SQL by hand (version, key, payload) / baseline (payload)",
            "pg_read_stream_10k/diag_lean_sql_by_hand",
            "pg_read_stream_10k/sqlx_baseline",
            stream,
            Target::None,
        ),
        row(
            "  diag: baseline + version column / baseline",
            "pg_read_stream_10k/diag_baseline_plus_version",
            "pg_read_stream_10k/sqlx_baseline",
            stream,
            Target::None,
        ),
        row(
            "  diag: baseline + type column / baseline",
            "pg_read_stream_10k/diag_baseline_plus_type",
            "pg_read_stream_10k/sqlx_baseline",
            stream,
            Target::None,
        ),
        row(
            "  diag: full envelopes (read_stream_as) / baseline",
            "pg_read_stream_10k/annals_read_stream_as",
            "pg_read_stream_10k/sqlx_baseline",
            stream,
            Target::None,
        ),
        row(
            "  diag: read_stream_as / untyped read_stream",
            "pg_read_stream_10k/annals_read_stream_as",
            "pg_read_stream_10k/diag_annals_read_stream_untyped",
            stream,
            Target::None,
        ),
        row(
            "  diag: untyped read_stream / its SQL, rows only",
            "pg_read_stream_10k/diag_annals_read_stream_untyped",
            "pg_read_stream_10k/diag_annals_sql_paged_rows_only",
            stream,
            Target::None,
        ),
        row(
            "  diag: its SQL 10 pages / 1 query, rows only",
            "pg_read_stream_10k/diag_annals_sql_paged_rows_only",
            "pg_read_stream_10k/diag_annals_sql_one_query_rows_only",
            stream,
            Target::None,
        ),
        row(
            "  diag: its SQL 1 query rows only / baseline",
            "pg_read_stream_10k/diag_annals_sql_one_query_rows_only",
            "pg_read_stream_10k/sqlx_baseline",
            stream,
            Target::None,
        ),
        row(
            "  diag: payload::text + serde / baseline",
            "pg_read_stream_10k/diag_payload_text_then_serde",
            "pg_read_stream_10k/sqlx_baseline",
            stream,
            Target::None,
        ),
        row(
            "  read_stream_as / hand-written full envelope",
            "pg_read_stream_10k/annals_read_stream_as",
            "pg_read_stream_10k/diag_sqlx_full_envelope",
            stream,
            Target::TimeAtMost(1.1),
        ),
        row(
            "  diag: hand-written full envelope / baseline",
            "pg_read_stream_10k/diag_sqlx_full_envelope",
            "pg_read_stream_10k/sqlx_baseline",
            stream,
            Target::None,
        ),
        row(
            "  diag: Metadata from_str x10k / baseline",
            "pg_read_stream_client_cpu_10k/metadata_from_str",
            "pg_read_stream_10k/sqlx_baseline",
            stream,
            Target::None,
        ),
        row(
            "  diag: RawValue::from_string x10k / baseline",
            "pg_read_stream_client_cpu_10k/raw_value_from_string",
            "pg_read_stream_10k/sqlx_baseline",
            stream,
            Target::None,
        ),
        row(
            "  diag: Event::decode x10k / baseline",
            "pg_read_stream_client_cpu_10k/event_decode",
            "pg_read_stream_10k/sqlx_baseline",
            stream,
            Target::None,
        ),
        row(
            "  diag: serde decode x10k / baseline",
            "pg_read_stream_client_cpu_10k/serde_decode",
            "pg_read_stream_10k/sqlx_baseline",
            stream,
            Target::None,
        ),
        row(
            "read_all 100k in pages of 1000",
            "pg_read_all_100k/annals_read_all",
            "pg_read_all_100k/sqlx_baseline",
            log,
            Target::None,
        ),
        row(
            "  diag: read_all / its SQL + columns by name",
            "pg_read_all_100k/annals_read_all",
            "pg_read_all_100k/diag_annals_sql_columns_by_name",
            log,
            Target::None,
        ),
        row(
            "  diag: its SQL + columns by name / rows only",
            "pg_read_all_100k/diag_annals_sql_columns_by_name",
            "pg_read_all_100k/diag_annals_sql_rows_only",
            log,
            Target::None,
        ),
        row(
            "  diag: columns by name / columns by index",
            "pg_read_all_100k/diag_annals_sql_columns_by_name",
            "pg_read_all_100k/diag_annals_sql_columns_by_index",
            log,
            Target::None,
        ),
        row(
            "  diag: read_all / its SQL, rows only",
            "pg_read_all_100k/annals_read_all",
            "pg_read_all_100k/diag_annals_sql_rows_only",
            log,
            Target::None,
        ),
        row(
            "  diag: its SQL rows only / baseline keyset",
            "pg_read_all_100k/diag_annals_sql_rows_only",
            "pg_read_all_100k/sqlx_baseline",
            log,
            Target::None,
        ),
    ]);
    print_summary("postgres", SAMPLES, &rows);
}
