//! Commits on a durable PostgreSQL (fsync, synchronous_commit and
//! full_page_writes on, as production runs): annals against hand-written
//! sqlx on the same server, in the same run, interleaved.
//!
//! - commands: load an aggregate, decide, append one event; AGGREGATES
//!   aggregates × COMMANDS commands, from 1, 8 and 64 tasks on disjoint
//!   aggregates (annals: `Repository::execute`, group commit on and off;
//!   the baseline: a SELECT of the stream's payloads and a plain INSERT on
//!   a connection each task holds for the whole run);
//! - 100-event appends against one 100-row INSERT (UNNEST);
//! - tenants: the same commands (8 tasks, group commit) spread over 100
//!   tenants against one tenant, and over 100 tenants on two servers
//!   (each a durable server of its own, tenants placed by `TenantRouter`)
//!   against the same on one of them;
//! - wake-up: append committed → live projection's `apply` called, with
//!   the runner on the appending store (same process) and on a second
//!   store with its own pool (shares nothing in memory with the writer:
//!   woken only through the notification, as another process is).
//!
//! Each row prints events/s, the ratio to the baseline, p50/p99 latency
//! per command and WAL flushes per command (`pg_stat_wal.wal_sync` delta
//! over the run / commands). Refuses to run on a server that is not
//! durable.
//!
//! `scripts/with-services --durable cargo bench --features testing --bench durable`

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use annals::postgres::sqlx::{self, types::Json, PgConnection, PgPool, Row};
use annals::postgres::testing::{PgServer, TestDatabase};
use annals::postgres::{PgEventStore, PgProjectionStore};
use annals::tenant::TenantRouter;
use annals::{
    Envelope, EventStore, EventStoreExt, ExpectedVersion, HandlerError, Metadata, NewEvent,
    Projection, ProjectionRunner, Repository,
};
use uuid::Uuid;

mod common;
use common::scores::{decide, fold, Lead, Score};
use common::{runtime, scored, LeadEvent, LeadScored};

const AGGREGATES: usize = 256;
const COMMANDS: usize = 8;
const ROUNDS: usize = 3;
const BIG: usize = 100;
const BIG_APPENDS: usize = 200;
const WAKES: usize = 200;
/// Rounds of the tenant rows (paired: see `report_paired`).
const TENANT_ROUNDS: usize = 7;

// --- measuring -------------------------------------------------------------------

/// One run's figures.
#[derive(Debug, Clone, Copy)]
struct Run {
    per_second: f64,
    p50: Duration,
    p99: Duration,
    wal_syncs_per_op: f64,
    /// CPU time of this process (the bench, its runtime, annals or sqlx)
    /// per operation, in ms.
    client_cpu_ms: f64,
    /// CPU time of the PostgreSQL server's processes per operation, in ms.
    server_cpu_ms: f64,
}

/// CPU seconds (user + system) of the processes whose pid and command name
/// satisfy `wanted`, with the CPU of the children they reaped (the
/// postmaster reaps every backend that ended, so the server's figure
/// counts the run's connections after they closed): clock ticks of 1/100
/// s, the Linux default (`getconf CLK_TCK`). A diagnostic.
fn cpu_seconds(wanted: impl Fn(u32, &str) -> bool) -> f64 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return f64::NAN;
    };
    let mut ticks = 0u64;
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        if !wanted(pid, &stat[open + 1..close]) {
            continue;
        }
        // after the name: state, ppid, ... utime is field 14, stime 15
        let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
        let field = |i: usize| {
            fields
                .get(i - 3)
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0)
        };
        ticks += field(14) + field(15) + field(16) + field(17);
    }
    ticks as f64 / 100.0
}

fn client_cpu() -> f64 {
    let me = std::process::id();
    cpu_seconds(|pid, _| pid == me)
}

fn server_cpu() -> f64 {
    cpu_seconds(|_, name| name == "postgres")
}

/// The WAL flushes the server has done so far. Backends report their WAL
/// statistics when they end or within a second of going idle: callers
/// close their connections and wait before reading the end figure.
async fn wal_syncs(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT wal_sync FROM pg_stat_wal")
        .fetch_one(pool)
        .await
        .expect("pg_stat_wal")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Runs `work` (which returns each operation's latency) and measures it.
async fn measure<F, Fut>(admin: &PgPool, ops_per_unit: f64, work: F) -> Run
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Vec<Duration>>,
{
    let before = wal_syncs(admin).await;
    let (client_before, server_before) = (client_cpu(), server_cpu());
    let started = Instant::now();
    let mut latencies = work().await;
    let elapsed = started.elapsed();
    let (client_after, server_after) = (client_cpu(), server_cpu());
    // let every backend of the run report its WAL statistics
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let after = wal_syncs(admin).await;
    latencies.sort();
    let ops = latencies.len() as f64;
    Run {
        per_second: ops * ops_per_unit / elapsed.as_secs_f64(),
        p50: percentile(&latencies, 0.50),
        p99: percentile(&latencies, 0.99),
        wal_syncs_per_op: (after - before) as f64 / ops,
        client_cpu_ms: (client_after - client_before) * 1e3 / ops,
        server_cpu_ms: (server_after - server_before) * 1e3 / ops,
    }
}

fn median(runs: &[Run], f: impl Fn(&Run) -> f64) -> f64 {
    let mut v: Vec<f64> = runs.iter().map(f).collect();
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Prints one comparison: medians over the rounds.
fn report(name: &str, unit: &str, subject: &[Run], baseline: &[Run], target: Option<f64>) {
    let s = median(subject, |r| r.per_second);
    let b = median(baseline, |r| r.per_second);
    let ratio = s / b;
    let verdict = match target {
        Some(t) if ratio >= t => format!("target ≥ {t:.2}x: met"),
        Some(t) => format!("target ≥ {t:.2}x: NOT met"),
        None => "no target".to_owned(),
    };
    println!(
        "{name:<44} {s:>9.0} {unit}/s vs {b:>9.0} ({ratio:.2}x, {verdict}); p50 {:.2} / p99 {:.2} ms vs {:.2} / {:.2} ms; WAL flushes/op {:.2} vs {:.2}; CPU ms/op client {:.3} vs {:.3}, server {:.3} vs {:.3}",
        median(subject, |r| ms(r.p50)),
        median(subject, |r| ms(r.p99)),
        median(baseline, |r| ms(r.p50)),
        median(baseline, |r| ms(r.p99)),
        median(subject, |r| r.wal_syncs_per_op),
        median(baseline, |r| r.wal_syncs_per_op),
        median(subject, |r| r.client_cpu_ms),
        median(baseline, |r| r.client_cpu_ms),
        median(subject, |r| r.server_cpu_ms),
        median(baseline, |r| r.server_cpu_ms),
    );
}

/// For rows whose two sides run in the same rounds: the median and the
/// range of the per-round throughput ratios (this VM's throughput drifts by
/// 2x between minutes, so a ratio of medians taken minutes apart says
/// little; a round's two runs are seconds apart).
fn report_paired(name: &str, subject: &[Run], baseline: &[Run], target: f64) {
    let mut ratios: Vec<f64> = subject
        .iter()
        .zip(baseline)
        .map(|(s, b)| s.per_second / b.per_second)
        .collect();
    ratios.sort_by(|a, b| a.total_cmp(b));
    let median = ratios[ratios.len() / 2];
    println!(
        "{name:<44} paired ratio: median {median:.2}x (rounds {:.2}x .. {:.2}x, {} rounds; target ≥ {target:.2}x: {})",
        ratios[0],
        ratios[ratios.len() - 1],
        ratios.len(),
        if median >= target { "met" } else { "NOT met" }
    );
}

// --- commands --------------------------------------------------------------------

const SELECT_PAYLOADS: &str =
    "SELECT payload FROM annals_events WHERE stream_id = $1 ORDER BY stream_version";
const INSERT_ONE: &str = "INSERT INTO annals_events (event_id, stream_id, stream_version, event_type, schema_version, payload, metadata)
     VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7::jsonb)";

#[derive(Clone, Copy, Debug)]
enum Side {
    /// `Repository::execute` on a pool with annals' settings (`PoolConfig`).
    Annals {
        /// Group commit on.
        group: bool,
        /// The pool pings a connection before handing it out.
        ping: bool,
        /// Payloads are validated against their JSON Schema on append.
        validate: bool,
    },
    /// Hand-written sqlx on a held connection.
    Sqlx,
}

/// One run of the command workload from `tasks` tasks; returns each
/// command's latency.
async fn commands(db: &TestDatabase, side: Side, tasks: usize, run: usize) -> Vec<Duration> {
    let pool = match side {
        Side::Annals { ping, .. } => {
            annals::postgres::PoolConfig::from_options(db.connect_options())
                .max_connections(tasks as u32)
                .test_before_acquire(ping)
                .connect()
                .await
                .expect("pool")
        }
        Side::Sqlx => sqlx::postgres::PgPoolOptions::new()
            .max_connections(tasks as u32)
            .connect_with(db.connect_options())
            .await
            .expect("pool"),
    };
    let repo = match side {
        Side::Annals {
            group, validate, ..
        } => {
            let builder = PgEventStore::builder(pool.clone()).register::<LeadEvent>();
            let builder = if validate {
                builder
            } else {
                builder.without_validation()
            };
            let builder = if group {
                builder
            } else {
                builder.without_group_commit()
            };
            Some(Arc::new(Repository::<Lead, _>::new(
                builder.build().await.expect("store"),
            )))
        }
        Side::Sqlx => None,
    };
    let meta = Metadata::new().with_user("bench");
    let mut handles = Vec::new();
    for t in 0..tasks {
        let (pool, repo, meta) = (pool.clone(), repo.clone(), meta.clone());
        handles.push(tokio::spawn(async move {
            let mut held = match side {
                Side::Sqlx => Some(pool.acquire().await.expect("checkout")),
                Side::Annals { .. } => None,
            };
            let mine: Vec<usize> = (t..AGGREGATES).step_by(tasks).collect();
            let mut latencies = Vec::with_capacity(mine.len() * COMMANDS);
            for c in 0..COMMANDS {
                for &a in &mine {
                    let id = format!("r{run}-{a}");
                    let cmd = Score(scored(a + c));
                    let started = Instant::now();
                    match (&repo, &mut held) {
                        (Some(repo), _) => {
                            let done = repo.execute(&id, &cmd, &meta).await.expect("execute");
                            assert_eq!(done.version, c as u64 + 1);
                        }
                        (None, Some(conn)) => {
                            let stream = format!("lead-{id}");
                            let rows: Vec<Json<LeadScored>> = sqlx::query_scalar(SELECT_PAYLOADS)
                                .bind(&stream)
                                .fetch_all(&mut **conn)
                                .await
                                .expect("select");
                            let mut state = Lead::default();
                            rows.iter().for_each(|r| fold(&mut state, &r.0));
                            let event = decide(&state, &cmd).expect("decide");
                            let done = sqlx::query(INSERT_ONE)
                                .bind(Uuid::now_v7())
                                .bind(&stream)
                                .bind(rows.len() as i64 + 1)
                                .bind("lead.scored")
                                .bind(2i32)
                                .bind(serde_json::to_string(&event).expect("encode"))
                                .bind(serde_json::to_string(&meta).expect("metadata"))
                                .execute(&mut **conn)
                                .await
                                .expect("insert");
                            assert_eq!(done.rows_affected(), 1);
                        }
                        (None, None) => unreachable!("the baseline holds a connection"),
                    }
                    latencies.push(started.elapsed());
                }
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await.expect("task"));
    }
    drop(repo);
    pool.close().await;
    all
}

// --- tenants ------------------------------------------------------------------------

/// A tenant's id in the tenant rows (`default` when there is one tenant).
fn tenant_name(tenants: usize, t: usize) -> String {
    if tenants == 1 {
        "default".to_owned()
    } else {
        format!("clinic-{t}")
    }
}

/// An event store on `options` for the tenant rows (group commit on, a
/// pool of `tasks` connections).
async fn tenant_server(options: sqlx::postgres::PgConnectOptions, tasks: usize) -> PgEventStore {
    let pool = annals::postgres::PoolConfig::from_options(options)
        .max_connections(tasks as u32)
        .connect()
        .await
        .expect("pool");
    annals::postgres::migrate(&pool).await.expect("migrate");
    PgEventStore::builder(pool)
        .register::<LeadEvent>()
        .build()
        .await
        .expect("store")
}

/// The command workload from `tasks` tasks, aggregate `a` in tenant
/// `a % tenants`, each tenant on the server `router` gives it.
async fn tenant_commands(
    router: &TenantRouter<PgEventStore>,
    tenants: usize,
    tasks: usize,
    run: usize,
) -> Vec<Duration> {
    let repos: Arc<Vec<Repository<Lead, PgEventStore>>> = Arc::new(
        (0..tenants)
            .map(|t| {
                let store = router.tenant(&tenant_name(tenants, t)).expect("tenant");
                Repository::<Lead, _>::new(store)
            })
            .collect(),
    );
    let meta = Metadata::new().with_user("bench");
    let mut handles = Vec::new();
    for t in 0..tasks {
        let (repos, meta) = (repos.clone(), meta.clone());
        handles.push(tokio::spawn(async move {
            let mine: Vec<usize> = (t..AGGREGATES).step_by(tasks).collect();
            let mut latencies = Vec::with_capacity(mine.len() * COMMANDS);
            for c in 0..COMMANDS {
                for &a in &mine {
                    let started = Instant::now();
                    let done = repos[a % tenants]
                        .execute(&format!("r{run}-{a}"), &Score(scored(a + c)), &meta)
                        .await
                        .expect("execute");
                    assert_eq!(done.version, c as u64 + 1);
                    latencies.push(started.elapsed());
                }
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await.expect("task"));
    }
    all
}

/// The tenant rows: 100 tenants against one on the bench's server; then
/// 100 tenants on two servers against the same on one of them.
async fn tenant_rows(db: &TestDatabase) {
    const TASKS: usize = 8;
    const TENANTS: usize = 100;
    let admin = db.pool().clone();
    let one = TenantRouter::builder()
        .server("bench", tenant_server(db.connect_options(), TASKS).await)
        .build()
        .expect("router");
    let (mut many, mut single) = (Vec::new(), Vec::new());
    // the order alternates: the later run of a round finds a bigger table
    for round in 0..TENANT_ROUNDS {
        let run = 50_000 + round * 10;
        let single_run = || tenant_commands(&one, 1, TASKS, run);
        let many_run = || tenant_commands(&one, TENANTS, TASKS, run + 1);
        if round % 2 == 1 {
            many.push(measure(&admin, 1.0, many_run).await);
        }
        single.push(measure(&admin, 1.0, single_run).await);
        if round % 2 == 0 {
            many.push(measure(&admin, 1.0, many_run).await);
        }
    }
    // ≤ 1.1x the time: ≥ 1/1.1 of the throughput
    report(
        "command, 8 tasks, 100 tenants vs one tenant",
        "cmd",
        &many,
        &single,
        None,
    );
    report_paired(
        "command, 8 tasks, 100 tenants vs one tenant",
        &many,
        &single,
        1.0 / 1.1,
    );

    let (pg_a, pg_b) = (PgServer::start(), PgServer::start());
    let options = |pg: &PgServer| {
        <sqlx::postgres::PgConnectOptions as std::str::FromStr>::from_str(&pg.url()).expect("url")
    };
    let (a, b) = (
        tenant_server(options(&pg_a), TASKS).await,
        tenant_server(options(&pg_b), TASKS).await,
    );
    let single_server = TenantRouter::builder()
        .server("a", a.clone())
        .build()
        .expect("router");
    let both = TenantRouter::builder()
        .server("a", a.clone())
        .server("b", b)
        .build()
        .expect("router");
    let on_a = (0..TENANTS)
        .filter(|t| {
            let t = annals::TenantId::new(&tenant_name(TENANTS, *t)).expect("tenant");
            both.server_of(&t) == "a"
        })
        .count();
    println!("two servers: {on_a} of {TENANTS} tenants on server a");
    // WAL flushes are counted on server a only here: read them per server
    let a_pool = a.pool().clone();
    let (mut two, mut one_of_two) = (Vec::new(), Vec::new());
    for round in 0..TENANT_ROUNDS {
        let run = 60_000 + round * 10;
        let one_run = || tenant_commands(&single_server, TENANTS, TASKS, run);
        let two_run = || tenant_commands(&both, TENANTS, TASKS, run + 1);
        if round % 2 == 1 {
            two.push(measure(&a_pool, 1.0, two_run).await);
        }
        one_of_two.push(measure(&a_pool, 1.0, one_run).await);
        if round % 2 == 0 {
            two.push(measure(&a_pool, 1.0, two_run).await);
        }
    }
    report(
        "command, 8 tasks, 100 tenants, 2 servers vs 1",
        "cmd",
        &two,
        &one_of_two,
        None,
    );
    report_paired(
        "command, 8 tasks, 100 tenants, 2 servers vs 1",
        &two,
        &one_of_two,
        1.7,
    );
    drop((pg_a, pg_b));
}

// --- 100-event appends -----------------------------------------------------------

const INSERT_MANY: &str = "INSERT INTO annals_events (event_id, stream_id, stream_version, event_type, schema_version, payload, metadata)
     SELECT e.id, $1, e.ord, 'lead.scored', 2, e.p::jsonb, $4::jsonb
       FROM UNNEST($2::uuid[], $3::text[]) WITH ORDINALITY AS e(id, p, ord)";

/// `annals`: `None` for the baseline, `Some(validate)` for annals with or
/// without JSON Schema validation.
async fn big_appends(db: &TestDatabase, annals: Option<bool>, run: usize) -> Vec<Duration> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect_with(db.connect_options())
        .await
        .expect("pool");
    let builder = PgEventStore::builder(pool.clone()).register::<LeadEvent>();
    let builder = if annals == Some(false) {
        builder.without_validation()
    } else {
        builder
    };
    let store = builder.build().await.expect("store");
    let meta = Metadata::new().with_user("bench");
    let events: Vec<LeadEvent> = (0..BIG).map(|i| LeadEvent::Scored(scored(i))).collect();
    let mut conn = pool.acquire().await.expect("checkout");
    let mut latencies = Vec::with_capacity(BIG_APPENDS);
    for i in 0..BIG_APPENDS {
        let stream = format!("big-{run}-{annals:?}-{i}");
        let started = Instant::now();
        if annals.is_some() {
            let done = store
                .append_events(&stream, ExpectedVersion::NoStream, &events, &meta)
                .await
                .expect("append");
            assert_eq!(done.version, BIG as u64);
        } else {
            let ids: Vec<Uuid> = (0..BIG).map(|_| Uuid::now_v7()).collect();
            let payloads: Vec<String> = events
                .iter()
                .map(|e| match e {
                    LeadEvent::Scored(s) => serde_json::to_string(s).expect("encode"),
                    LeadEvent::Created(c) => serde_json::to_string(c).expect("encode"),
                })
                .collect();
            let done = sqlx::query(INSERT_MANY)
                .bind(&stream)
                .bind(ids)
                .bind(payloads)
                .bind(serde_json::to_string(&meta).expect("metadata"))
                .execute(&mut *conn)
                .await
                .expect("insert");
            assert_eq!(done.rows_affected(), BIG as u64);
        }
        latencies.push(started.elapsed());
    }
    drop(conn);
    drop(store);
    pool.close().await;
    latencies
}

// --- wake-up ---------------------------------------------------------------------

/// Records when each event reached `apply`.
struct Arrivals(&'static str, Arc<Mutex<HashMap<Uuid, Instant>>>);

impl Projection for Arrivals {
    type Event = LeadEvent;
    type Conn = PgConnection;

    fn name(&self) -> &str {
        self.0
    }

    async fn apply(
        &self,
        _: &mut PgConnection,
        e: &Envelope<LeadEvent>,
    ) -> Result<(), HandlerError> {
        let now = Instant::now();
        self.1
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(e.event_id, now);
        Ok(())
    }
}

/// Append-commit → `apply` latencies of WAKES one-event appends, spaced
/// out, with the runner on `reader`'s store.
async fn wake_ups(
    name: &'static str,
    writer: &PgEventStore,
    reader: &PgEventStore,
) -> Vec<Duration> {
    let arrivals = Arc::new(Mutex::new(HashMap::new()));
    let runner = ProjectionRunner::new(
        reader.clone(),
        PgProjectionStore::new(reader.pool().clone()),
        Arc::new(Arrivals(name, arrivals.clone())),
    )
    // a poll this slow cannot hide a missed wake-up in the p99
    .poll_interval(Duration::from_secs(2))
    .spawn();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let meta = Metadata::new();
    let mut committed = Vec::with_capacity(WAKES);
    for i in 0..WAKES {
        let e = NewEvent::new("lead.scored", 2, common::raw(&scored(i)), meta.clone());
        let id = e.event_id;
        writer
            .append(
                &format!("wake-{}", Uuid::now_v7()),
                ExpectedVersion::NoStream,
                vec![e],
            )
            .await
            .expect("append");
        committed.push((id, Instant::now()));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let arrived = |id: &Uuid| {
        arrivals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(id)
    };
    while !committed.iter().all(|(id, _)| arrived(id)) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    runner.stop().await.expect("stop");
    let arrivals = arrivals.lock().unwrap_or_else(|p| p.into_inner());
    committed
        .iter()
        .map(|(id, at)| match arrivals.get(id) {
            Some(applied) => applied.saturating_duration_since(*at),
            None => Duration::from_secs(10),
        })
        .collect()
}

// --- main ------------------------------------------------------------------------

fn main() {
    let rt = runtime();
    rt.block_on(async {
        let db = TestDatabase::new().await;
        let admin = db.pool().clone();
        let settings: Vec<(String, String)> = sqlx::query(
            "SELECT name, setting FROM pg_settings WHERE name IN ('fsync', 'synchronous_commit', 'full_page_writes') ORDER BY name",
        )
        .fetch_all(&admin)
        .await
        .expect("settings")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
        println!("server: {settings:?}");
        assert!(
            settings.iter().all(|(_, v)| v == "on"),
            "this benchmark measures commits: run it on a durable server, \
             `scripts/with-services --durable cargo bench --features testing --bench durable`"
        );

        // BENCH_TASKS=1,8 runs those command rows only; BENCH_SKIP=big,wake
        // skips the 100-event and wake-up rows
        let tasks_list: Vec<usize> = std::env::var("BENCH_TASKS")
            .unwrap_or_else(|_| "1,8,64".to_owned())
            .split(',')
            .filter_map(|t| t.trim().parse().ok())
            .collect();
        let skip = std::env::var("BENCH_SKIP").unwrap_or_default();
        for tasks in tasks_list {
            let sides = [
                ("group commit", Side::Annals { group: true, ping: false, validate: true }),
                ("no group commit", Side::Annals { group: false, ping: false, validate: true }),
                ("diag: checkout ping", Side::Annals { group: true, ping: true, validate: true }),
                ("diag: no validation", Side::Annals { group: true, ping: false, validate: false }),
            ];
            let mut runs: Vec<Vec<Run>> = vec![Vec::new(); sides.len()];
            let mut baseline = Vec::new();
            for round in 0..ROUNDS {
                let run = round * 10 + tasks;
                baseline.push(measure(&admin, 1.0, || commands(&db, Side::Sqlx, tasks, run)).await);
                for (i, (_, side)) in sides.iter().enumerate() {
                    let run = run + 1_000 * (i + 1);
                    runs[i].push(measure(&admin, 1.0, || commands(&db, *side, tasks, run)).await);
                }
            }
            let target = match tasks {
                1 => 0.9,
                8 => 1.5,
                _ => 2.0,
            };
            for (i, (name, _)) in sides.iter().enumerate() {
                report(
                    &format!("command, {tasks} task(s), {name}"),
                    "cmd",
                    &runs[i],
                    &baseline,
                    (i == 0).then_some(target),
                );
            }
        }

        if !skip.contains("tenants") {
            tenant_rows(&db).await;
        }

        if !skip.contains("big") {
            let (mut annals, mut unvalidated, mut baseline) = (Vec::new(), Vec::new(), Vec::new());
            for round in 0..ROUNDS {
                baseline.push(measure(&admin, BIG as f64, || big_appends(&db, None, round)).await);
                annals.push(
                    measure(&admin, BIG as f64, || big_appends(&db, Some(true), round)).await,
                );
                unvalidated.push(
                    measure(&admin, BIG as f64, || big_appends(&db, Some(false), round)).await,
                );
            }
            report("append 100 events, 1 task", "ev", &annals, &baseline, Some(0.9));
            report(
                "append 100 events, diag: no validation",
                "ev",
                &unvalidated,
                &baseline,
                None,
            );
        }
        if skip.contains("wake") {
            return;
        }

        // the wake-up runs on a database of its own: the runners start at
        // the end of an empty log
        drop(db);
        let db = TestDatabase::new().await;
        let writer = PgEventStore::builder(db.pool().clone())
            .register::<LeadEvent>()
            .build()
            .await
            .expect("writer");
        let other_pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(4)
            .connect_with(db.connect_options())
            .await
            .expect("second pool");
        let other = PgEventStore::builder(other_pool)
            .register::<LeadEvent>()
            .build()
            .await
            .expect("second store");
        for (name, projection, reader) in [
            ("same store", "arrivals_same", &writer),
            ("another store (no shared memory)", "arrivals_other", &other),
        ] {
            let mut l = wake_ups(projection, &writer, reader).await;
            l.sort();
            let p99 = percentile(&l, 0.99);
            println!(
                "wake-up, {name:<34} p50 {:.2} ms, p99 {:.2} ms (target p99 ≤ 50 ms: {})",
                ms(percentile(&l, 0.50)),
                ms(p99),
                if p99 <= Duration::from_millis(50) { "met" } else { "NOT met" }
            );
        }
    });
}
