//! Tenants enforced by Postgres: row-level security, tested as an
//! application role that is neither a superuser nor BYPASSRLS (superusers
//! always bypass it), and annals itself running as that role.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use annals_core::tenant::{TenantRouter, TenantServer};
use annals_core::testing::events::{Created, TestEvent};
use annals_core::{
    Envelope, Error, EventStoreExt, ExpectedVersion, HandlerError, Metadata, Projection,
    ProjectionRunner, TenantId,
};
use annals_postgres::testing::{PgServer, TestDatabase};
use annals_postgres::{PgEventStore, PgProjectionStore, PoolConfig};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection as _, PgConnection};

fn created(name: &str) -> TestEvent {
    TestEvent::Created(Created {
        name: name.to_owned(),
        email: None,
    })
}

/// A login role of its own for one test, with the rights an application
/// role has on annals' tables (no superuser, no BYPASSRLS, not the owner);
/// dropped when the guard goes.
struct AppRole {
    name: String,
    admin: sqlx::PgPool,
}

impl AppRole {
    async fn create(db: &TestDatabase) -> Self {
        let name = format!("annals_app_{}", uuid::Uuid::now_v7().simple());
        let admin = db.pool().clone();
        for statement in [
            format!("CREATE ROLE {name} LOGIN NOSUPERUSER NOBYPASSRLS"),
            format!(
                "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {name}"
            ),
            format!("GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {name}"),
        ] {
            sqlx::query(sqlx::AssertSqlSafe(statement.clone()))
                .execute(&admin)
                .await
                .unwrap_or_else(|e| panic!("{statement}: {e}"));
        }
        AppRole { name, admin }
    }

    fn options(&self, db: &TestDatabase) -> PgConnectOptions {
        db.connect_options().username(&self.name).password("")
    }
}

impl Drop for AppRole {
    fn drop(&mut self) {
        let (admin, name) = (self.admin.clone(), self.name.clone());
        // best effort, on a runtime of its own (Drop cannot await)
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                let _ = sqlx::query(sqlx::AssertSqlSafe(format!("DROP OWNED BY {name}")))
                    .execute(&admin)
                    .await;
                let _ = sqlx::query(sqlx::AssertSqlSafe(format!("DROP ROLE {name}")))
                    .execute(&admin)
                    .await;
            });
            Ok::<_, std::io::Error>(())
        })
        .join();
    }
}

async fn count(conn: &mut PgConnection, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_that_forgets_its_tenant_sees_nothing() {
    let db = TestDatabase::new().await;
    let role = AppRole::create(&db).await;
    // annals (here as the superuser) writes for two tenants
    let store = db.store().await;
    for (tenant, n) in [("clinic-a", 3), ("clinic-b", 2)] {
        let scoped = store.tenant(tenant).expect("tenant");
        for i in 0..n {
            scoped
                .append_events(
                    &format!("lead-{i}"),
                    ExpectedVersion::NoStream,
                    &[created(tenant)],
                    &Metadata::new(),
                )
                .await
                .expect("append");
        }
    }
    let mut conn = PgConnection::connect_with(&role.options(&db))
        .await
        .expect("connect as the application role");
    let superuser: bool = sqlx::query_scalar(
        "SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = current_user",
    )
    .fetch_one(&mut conn)
    .await
    .expect("role");
    assert!(
        !superuser,
        "the test role must be subject to row-level security"
    );

    assert_eq!(
        count(&mut conn, "SELECT count(*) FROM annals_events").await,
        0,
        "without the setting a raw SELECT sees no event"
    );
    assert_eq!(
        count(&mut conn, "SELECT count(*) FROM annals_snapshots").await,
        0
    );

    let mut tx = conn.begin().await.expect("begin");
    sqlx::query("SELECT set_config('annals.tenant', 'clinic-a', true)")
        .execute(&mut *tx)
        .await
        .expect("SET LOCAL");
    assert_eq!(
        count(&mut tx, "SELECT count(*) FROM annals_events").await,
        3
    );
    assert_eq!(
        count(
            &mut tx,
            "SELECT count(*) FROM annals_events WHERE tenant_id <> 'clinic-a'"
        )
        .await,
        0,
        "with tenant A only A's rows"
    );
    // writing another tenant's row under A's setting is refused
    let refused = sqlx::query(
        "INSERT INTO annals_events (tenant_id, event_id, stream_id, stream_version, event_type, schema_version, payload)
         VALUES ('clinic-b', gen_random_uuid(), 'forged', 1, 'x', 1, '{}')",
    )
    .execute(&mut *tx)
    .await
    .expect_err("a row of B under A's setting");
    assert!(
        refused.to_string().contains("row-level security"),
        "refused by the policy: {refused}"
    );
    tx.rollback().await.expect("rollback");

    // SET LOCAL ended with its transaction: nothing again
    assert_eq!(
        count(&mut conn, "SELECT count(*) FROM annals_events").await,
        0
    );
    // a session that never sets a tenant cannot write either
    let refused = sqlx::query(
        "INSERT INTO annals_events (event_id, stream_id, stream_version, event_type, schema_version, payload)
         VALUES (gen_random_uuid(), 'forged', 1, 'x', 1, '{}')",
    )
    .execute(&mut conn)
    .await
    .expect_err("a row without a tenant setting");
    assert!(
        refused.to_string().contains("row-level security"),
        "{refused}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn annals_runs_as_an_application_role_under_row_level_security() {
    let db = TestDatabase::new().await;
    let role = AppRole::create(&db).await;

    // a pool of the application's own, without annals' setting: refused
    // at start-up, with what to do, rather than a store that sees nothing
    let plain = PgPoolOptions::new()
        .max_connections(2)
        .connect_with(role.options(&db))
        .await
        .expect("plain pool");
    let refused = PgEventStore::builder(plain)
        .build()
        .await
        .expect_err("a store on a pool held to one tenant");
    let mut says = refused.to_string();
    let mut source = std::error::Error::source(&refused);
    while let Some(s) = source {
        says = format!("{says}: {s}");
        source = s.source();
    }
    assert!(
        says.contains("row-level security") && says.contains("annals.tenant"),
        "{says}"
    );

    // annals' pool: the whole conformance suite, tenants included
    let pool = PoolConfig::from_options(role.options(&db))
        .connect()
        .await
        .expect("annals' pool as the application role");
    let admin = db.pool().clone();
    annals_core::testing::conformance::run(move |validate| {
        let (pool, admin) = (pool.clone(), admin.clone());
        async move {
            sqlx::query("TRUNCATE annals_events")
                .execute(&admin)
                .await
                .expect("truncate between conformance checks");
            let builder = PgEventStore::builder(pool);
            let builder = if validate {
                builder
            } else {
                builder.without_validation()
            };
            builder.build().await.expect("build store")
        }
    })
    .await;
}

/// One server of the router: its event store and projection store.
#[derive(Clone, Debug)]
struct Server {
    events: PgEventStore,
    projections: PgProjectionStore,
}

impl TenantServer for Server {
    type Events = PgEventStore;

    fn events(&self) -> &PgEventStore {
        &self.events
    }
}

/// Counts each tenant's events in `counts`, keyed by the envelope's tenant.
struct Counter;

impl Projection for Counter {
    type Event = TestEvent;
    type Conn = PgConnection;

    fn name(&self) -> &str {
        "counter"
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        e: &Envelope<TestEvent>,
    ) -> Result<(), HandlerError> {
        if matches!(&e.payload, TestEvent::Created(c) if c.name == "poison") {
            return Err(HandlerError::event(format!("cannot count {}", e.stream_id)));
        }
        sqlx::query(
            "INSERT INTO counts (tenant_id, n) VALUES ($1, 1)
             ON CONFLICT (tenant_id) DO UPDATE SET n = counts.n + 1",
        )
        .bind(e.tenant_id.as_str())
        .execute(conn)
        .await?;
        Ok(())
    }

    async fn reset(&self, conn: &mut PgConnection, tenant: &TenantId) -> Result<(), HandlerError> {
        sqlx::query("DELETE FROM counts WHERE tenant_id = $1")
            .bind(tenant.as_str())
            .execute(conn)
            .await?;
        Ok(())
    }
}

async fn server(pg: &PgServer) -> Server {
    server_at(&pg.url(), true).await
}

/// The server at `url` (migrated, with the `counts` read model when
/// `create`: the first process to use it).
async fn server_at(url: &str, create: bool) -> Server {
    let pool = PoolConfig::from_url(url)
        .expect("url")
        .max_connections(4)
        .connect()
        .await
        .expect("connect");
    if create {
        annals_postgres::migrate(&pool).await.expect("migrate");
        counts_table(&pool).await;
    }
    Server {
        events: PgEventStore::builder(pool.clone())
            .build()
            .await
            .expect("store"),
        projections: PgProjectionStore::new(pool),
    }
}

/// The router of the two-server tests: servers `one` and `two` at
/// `urls`, `clinic-pinned` on `two`.
fn router_of(one: Server, two: Server) -> TenantRouter<Server> {
    TenantRouter::builder()
        .server("one", one)
        .server("two", two)
        .place("clinic-pinned", "two")
        .build()
        .expect("router")
}

/// Creates the `counts` read model of [`Counter`].
async fn counts_table(pool: &sqlx::PgPool) {
    sqlx::query("CREATE TABLE counts (tenant_id text PRIMARY KEY, n int NOT NULL)")
        .execute(pool)
        .await
        .expect("the counts table");
}

/// Appends one event to the tenant's `lead-1`, retrying what a restarted
/// server's dead pooled connections answer (retryable errors) for up to
/// 60 s.
async fn append_one(store: &PgEventStore, n: u64) -> Result<(), Error> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let result = store
            .append_events(
                "lead-1",
                ExpectedVersion::Any,
                &[created(&format!("n{n}"))],
                &Metadata::new(),
            )
            .await;
        match result {
            Err(e) if e.is_retryable() && std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => return other.map(drop),
        }
    }
}

async fn counted(server: &Server, tenant: &TenantId) -> i64 {
    sqlx::query_scalar::<_, i32>("SELECT n FROM counts WHERE tenant_id = $1")
        .bind(tenant.as_str())
        .fetch_optional(server.projections.pool())
        .await
        .expect("count")
        .map_or(0, i64::from)
}

/// Tenants on two servers (durable, each started by the test): commands
/// and projections run on the server the router gives each tenant, with
/// that server's rows only; while one server crashes and restarts, the
/// other keeps serving its tenants; afterwards the restarted one serves
/// its tenants again, with nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_across_two_servers_and_one_restarts() {
    let (pg_one, pg_two) = (PgServer::start(), PgServer::start());
    let router = router_of(server(&pg_one).await, server(&pg_two).await);
    let tenants: Vec<TenantId> = (0..8)
        .map(|i| TenantId::new(&format!("clinic-{i}")).expect("tenant"))
        .chain([TenantId::new("clinic-pinned").expect("tenant")])
        .collect();
    let on_one = router.tenants_on("one", &tenants);
    let on_two = router.tenants_on("two", &tenants);
    assert!(
        !on_one.is_empty() && !on_two.is_empty(),
        "tenants on both servers: {on_one:?} / {on_two:?}"
    );
    assert_eq!(router.server_of(&tenants[8]), "two", "the pinned tenant");

    // concurrent commands, 10 per tenant, every tenant at once
    let mut tasks = Vec::new();
    for t in &tenants {
        let store = router.events(t);
        tasks.push(tokio::spawn(async move {
            for n in 0..10 {
                append_one(&store, n).await?;
            }
            Ok::<_, Error>(())
        }));
    }
    for task in tasks {
        task.await.expect("task").expect("commands");
    }
    // each server holds its tenants' events, and only theirs
    for (name, server) in router.servers() {
        let stored: Vec<(String, i64)> = sqlx::query_as(
            "SELECT tenant_id, count(*) FROM annals_events GROUP BY tenant_id ORDER BY tenant_id",
        )
        .fetch_all(server.events.pool())
        .await
        .expect("rows");
        let mut expected: Vec<(String, i64)> = router
            .tenants_on(name, &tenants)
            .iter()
            .map(|t| (t.to_string(), 10))
            .collect();
        expected.sort();
        assert_eq!(stored, expected, "server {name} holds its tenants' events");
    }

    // a projection per tenant, each on its tenant's server
    let catch_up = |t: &TenantId| {
        let (_, server) = router.route(t);
        ProjectionRunner::new(
            router.events(t),
            server.projections.clone(),
            Arc::new(Counter),
        )
    };
    for t in &tenants {
        catch_up(t).catch_up().await.expect("catch up");
        assert_eq!(
            counted(router.route(t).1, t).await,
            10,
            "{t} counted on its server"
        );
    }

    // server one crashes and restarts while server two keeps serving
    let serving = Arc::new(AtomicBool::new(true));
    let served = Arc::new(AtomicU64::new(0));
    let two_store = router.events(on_two[0]);
    let writer = {
        let (serving, served) = (serving.clone(), served.clone());
        tokio::spawn(async move {
            let mut n = 100;
            while serving.load(Ordering::SeqCst) {
                two_store
                    .append_events(
                        "lead-2",
                        ExpectedVersion::Any,
                        &[created(&format!("w{n}"))],
                        &Metadata::new(),
                    )
                    .await?;
                served.fetch_add(1, Ordering::SeqCst);
                n += 1;
            }
            Ok::<_, Error>(())
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = served.load(Ordering::SeqCst);
    let pg_one = tokio::task::spawn_blocking(move || {
        pg_one.crash_and_restart();
        pg_one
    })
    .await
    .expect("restart");
    let during = served.load(Ordering::SeqCst) - before;
    serving.store(false, Ordering::SeqCst);
    writer
        .await
        .expect("writer")
        .expect("server two never failed");
    assert!(during > 0, "server two served while server one restarted");
    // the restarted server serves its tenants again, nothing lost
    for t in &on_one {
        append_one(&router.events(t), 10)
            .await
            .expect("append after the restart");
        catch_up(t)
            .catch_up()
            .await
            .expect("catch up after the restart");
        assert_eq!(counted(router.route(t).1, t).await, 11, "{t}: nothing lost");
    }
    // each server's horizon, on its own
    for (name, horizon) in router.horizons().await {
        horizon.unwrap_or_else(|e| panic!("the horizon of server {name}: {e}"));
    }
    drop((pg_one, pg_two));
}

/// Every row of `tenant` in every annals table (and the read model), as
/// text, in a fixed order: what "byte-identical" compares.
async fn rows_of(pool: &sqlx::PgPool, tenant: &str) -> Vec<String> {
    let mut out = Vec::new();
    for table in [
        "annals_events",
        "annals_snapshots",
        "annals_projection_checkpoints",
        "annals_dead_letters",
        "annals_sagas",
        "annals_saga_outbox",
        "annals_subject_keys",
        "counts",
    ] {
        let rows: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT t::text FROM {table} t WHERE tenant_id = $1 ORDER BY t::text"
        )))
        .bind(tenant)
        .fetch_all(pool)
        .await
        .unwrap_or_else(|e| panic!("{table}: {e}"));
        out.extend(rows.into_iter().map(|r| format!("{table}: {r}")));
    }
    out
}

/// The operations an operator runs on one tenant (a rebuild, a replay and
/// a discard of dead letters, a pause and a resume) leave every row of
/// another tenant byte-identical, and a handle of one tenant cannot touch
/// the other's dead letters by id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_on_one_tenant_leave_another_s_rows_byte_identical() {
    use annals_core::dead_letter::{DeadLetterQuery, DeadLetterStore as _};
    use annals_core::projection::ReplayOutcome;
    use annals_core::ProjectionStore as _;

    let db = TestDatabase::new().await;
    counts_table(db.pool()).await;
    let store = db.store().await;
    let projections = PgProjectionStore::new(db.pool().clone());
    let runner = |t: &str| {
        ProjectionRunner::new(
            store.tenant(t).expect("tenant"),
            projections.clone(),
            Arc::new(Counter),
        )
    };
    for t in ["clinic-a", "clinic-b"] {
        let scoped = store.tenant(t).expect("tenant");
        for (stream, name) in [("lead-1", "ana"), ("lead-2", "poison"), ("lead-3", "bo")] {
            scoped
                .append_events(
                    stream,
                    ExpectedVersion::NoStream,
                    &[created(name)],
                    &Metadata::new(),
                )
                .await
                .expect("append");
        }
        runner(t).catch_up().await.expect("catch up");
    }
    let b_before = rows_of(db.pool(), "clinic-b").await;
    assert!(
        b_before
            .iter()
            .any(|r| r.starts_with("annals_dead_letters")),
        "b has a dead letter"
    );
    assert!(
        b_before.iter().any(|r| r.starts_with("counts")),
        "b has a read model row"
    );

    let a = projections.in_tenant(TenantId::new("clinic-a").expect("tenant"));
    let b = projections.in_tenant(TenantId::new("clinic-b").expect("tenant"));
    let letter_of = |p: &PgProjectionStore| {
        let p = p.clone();
        async move {
            p.list_dead_letters(&DeadLetterQuery::pending("counter"))
                .await
                .expect("list")
                .remove(0)
                .id
        }
    };
    let (a_letter, b_letter) = (letter_of(&a).await, letter_of(&b).await);
    // a's handle does not see, replay or discard b's dead letter
    assert!(a.dead_letter(b_letter).await.expect("read").is_none());
    assert!(!a
        .discard_dead_letter(b_letter, "not mine")
        .await
        .expect("discard"));
    assert!(
        matches!(
            runner("clinic-a").replay(b_letter).await.expect("replay"),
            ReplayOutcome::NotPending
        ),
        "a's runner does not replay b's letter"
    );
    // a's operations on a's rows
    assert!(matches!(
        runner("clinic-a").replay(a_letter).await.expect("replay"),
        ReplayOutcome::Failed(_)
    ));
    assert!(a
        .discard_dead_letter(a_letter, "poison")
        .await
        .expect("discard"));
    assert!(a.pause("counter").await.expect("pause"));
    assert!(a.resume("counter").await.expect("resume"));
    runner("clinic-a").rebuild().await.expect("rebuild a");

    assert_eq!(
        rows_of(db.pool(), "clinic-b").await,
        b_before,
        "b's rows are byte-identical"
    );
    assert!(b.dead_letter(b_letter).await.expect("read").is_some());
}

/// The child processes' instructions: the two servers' URLs, the
/// tenants, and the file whose existence tells them to stop.
const CHILD: &str = "ANNALS_TENANCY_CHILD";

/// Run by `several_processes_per_server_apply_each_event_once` in child
/// processes: runs the counter projection of every tenant, each on its
/// tenant's server, until the stop file appears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a helper: several_processes_per_server_apply_each_event_once runs it in child processes"]
async fn child_runs_every_tenant_s_projection() {
    let spec =
        std::env::var(CHILD).expect("run by several_processes_per_server_apply_each_event_once");
    let parts: Vec<&str> = spec.split(' ').collect();
    let [one, two, tenants, stop] = parts[..] else {
        panic!("{CHILD} is `one-url two-url tenants stop-file`: {spec}");
    };
    let router = router_of(server_at(one, false).await, server_at(two, false).await);
    let mut handles = Vec::new();
    for t in tenants.split(',') {
        let t = TenantId::new(t).expect("tenant");
        let runner = ProjectionRunner::new(
            router.events(&t),
            router.route(&t).1.projections.clone(),
            Arc::new(Counter),
        )
        .poll_interval(Duration::from_millis(50))
        .takeover_interval(Duration::from_millis(50));
        handles.push(runner.spawn());
    }
    while !std::path::Path::new(stop).exists() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for h in handles {
        h.stop().await.expect("a runner stopped cleanly");
    }
}

/// Two servers, three OS processes each running every tenant's
/// projection (so each projection of each tenant has three candidate
/// owners across processes, one of them killed halfway): every event of
/// every tenant is applied exactly once, on its tenant's server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_processes_per_server_apply_each_event_once() {
    const EVENTS: u64 = 20;
    let (pg_one, pg_two) = (PgServer::start(), PgServer::start());
    let router = router_of(server(&pg_one).await, server(&pg_two).await);
    let tenants: Vec<TenantId> = (0..6)
        .map(|i| TenantId::new(&format!("clinic-{i}")).expect("tenant"))
        .chain([TenantId::new("clinic-pinned").expect("tenant")])
        .collect();
    let names: Vec<String> = tenants.iter().map(|t| t.to_string()).collect();
    let stop = std::env::temp_dir().join(format!("annals-tenancy-stop-{}", uuid::Uuid::now_v7()));
    let spec = format!(
        "{} {} {} {}",
        pg_one.url(),
        pg_two.url(),
        names.join(","),
        stop.display()
    );
    let mut children: Vec<std::process::Child> = (0..3)
        .map(|_| {
            std::process::Command::new(std::env::current_exe().expect("the test binary"))
                .args([
                    "--ignored",
                    "--exact",
                    "tenancy::child_runs_every_tenant_s_projection",
                    "--test-threads=1",
                ])
                .env(CHILD, &spec)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("a child process")
        })
        .collect();
    // every tenant's commands, concurrently; the first child dies halfway
    let mut tasks = Vec::new();
    for t in &tenants {
        let store = router.events(t);
        tasks.push(tokio::spawn(async move {
            for n in 0..EVENTS {
                append_one(&store, n).await?;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Ok::<_, Error>(())
        }));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    children[0].kill().expect("kill a child");
    for task in tasks {
        task.await.expect("task").expect("commands");
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    for t in &tenants {
        loop {
            let n = counted(router.route(t).1, t).await;
            assert!(
                n <= EVENTS as i64,
                "{t}: {n} applications of {EVENTS} events"
            );
            if n == EVENTS as i64 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{t}: {n} of {EVENTS} events applied after 60 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    std::fs::write(&stop, b"stop").expect("the stop file");
    for (i, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output().expect("a child's end");
        if i > 0 {
            assert!(
                out.status.success(),
                "child {i} failed:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    let _ = std::fs::remove_file(&stop);
    // exactly once: no tenant's count moved past its events
    for t in &tenants {
        assert_eq!(counted(router.route(t).1, t).await, EVENTS as i64, "{t}");
    }
    drop((pg_one, pg_two));
}

/// Forgetting a subject in one tenant leaves every row of another tenant
/// that has a subject of the same id byte-identical (its events, its key).
#[cfg(feature = "personal")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forget_in_one_tenant_leaves_another_s_rows_byte_identical() {
    use annals_core::personal::{LocalKeyProvider, PersonalStore};
    use annals_core::testing::personal::registered;

    let db = TestDatabase::new().await;
    counts_table(db.pool()).await;
    let keys =
        annals_postgres::PgSubjectKeys::new(db.pool().clone(), LocalKeyProvider::generate("kek-1"));
    let store = PersonalStore::new(db.store().await, keys);
    let (a, b) = (
        store.tenant("clinic-a").expect("tenant"),
        store.tenant("clinic-b").expect("tenant"),
    );
    for tenant in [&a, &b] {
        tenant
            .append_events(
                "patient-x",
                ExpectedVersion::NoStream,
                &[registered("patient-x")],
                &Metadata::new(),
            )
            .await
            .expect("append");
    }
    let (a_before, b_before) = (
        rows_of(db.pool(), "clinic-a").await,
        rows_of(db.pool(), "clinic-b").await,
    );
    a.forget("patient-x").await.expect("forget in a");
    assert_ne!(
        rows_of(db.pool(), "clinic-a").await,
        a_before,
        "a's key became a tombstone"
    );
    assert_eq!(
        rows_of(db.pool(), "clinic-b").await,
        b_before,
        "b's rows are byte-identical"
    );
}

/// A runner on every tenant follows the whole log: each event reaches the
/// projection with its own tenant, the checkpoint is one (under `*`), and
/// later events of any tenant are applied by the next catch-up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_on_every_tenant_follows_the_whole_log() {
    let db = TestDatabase::new().await;
    counts_table(db.pool()).await;
    let store = db.store().await;
    for (tenant, n) in [("clinic-a", 1), ("clinic-b", 2), ("clinic-c", 3)] {
        let scoped = store.tenant(tenant).expect("tenant");
        for i in 0..n {
            append_one(&scoped, i).await.expect("append");
        }
    }
    let runner = ProjectionRunner::new(
        store.every_tenant(),
        PgProjectionStore::new(db.pool().clone()),
        Arc::new(Counter),
    );
    let counts = || async {
        sqlx::query_as::<_, (String, i32)>("SELECT tenant_id, n FROM counts ORDER BY tenant_id")
            .fetch_all(db.pool())
            .await
            .expect("counts")
    };
    assert_eq!(runner.catch_up().await.expect("catch up").events_applied, 6);
    assert_eq!(
        counts().await,
        [
            ("clinic-a".to_owned(), 1),
            ("clinic-b".to_owned(), 2),
            ("clinic-c".to_owned(), 3)
        ]
    );
    let checkpoints: Vec<String> =
        sqlx::query_scalar("SELECT tenant_id FROM annals_projection_checkpoints")
            .fetch_all(db.pool())
            .await
            .expect("checkpoints");
    assert_eq!(checkpoints, ["*"], "one checkpoint for every tenant");
    append_one(&store.tenant("clinic-b").expect("tenant"), 9)
        .await
        .expect("append");
    assert_eq!(runner.catch_up().await.expect("catch up").events_applied, 1);
    assert_eq!(counts().await[1], ("clinic-b".to_owned(), 3));
}
