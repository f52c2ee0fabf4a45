//! Tenants enforced by Postgres: row-level security, tested as an
//! application role that is neither a superuser nor BYPASSRLS (superusers
//! always bypass it), and annals itself running as that role.

use annals_core::testing::events::{Created, TestEvent};
use annals_core::{EventStoreExt, ExpectedVersion, Metadata};
use annals_postgres::testing::TestDatabase;
use annals_postgres::{PgEventStore, PoolConfig};
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
