//! `annals::postgres::migrate` as an application's ordinary role: no
//! superuser, on a fresh database without the `vector` extension.
//!
//! As the superuser of `DATABASE_URL`, each test creates a database (from
//! `template0`, so nothing a template carries leaks in) and a role with
//! LOGIN and nothing else, granted what a DBA grants an application:
//! CONNECT on the database, USAGE and CREATE on its `public` schema. It
//! then migrates as that role, and drops both afterwards, pass or fail.
#![allow(clippy::unwrap_used)] // tests may unwrap

use std::future::Future;
use std::str::FromStr;

use annals_postgres::testing::database_url;
use annals_postgres::PgEventStore;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{AssertSqlSafe, ConnectOptions, Connection, PgConnection, PgPool};

/// The tables `migrate` creates (and nothing else).
const EVENT_SOURCING_TABLES: &[&str] = &[
    "annals_dead_letters",
    "annals_event_schemas",
    "annals_events",
    "annals_migrations",
    "annals_projection_checkpoints",
    "annals_saga_outbox",
    "annals_sagas",
    "annals_snapshots",
    "annals_subject_keys",
];

fn admin_options() -> PgConnectOptions {
    let url = database_url();
    PgConnectOptions::from_str(&url)
        .unwrap_or_else(|e| panic!("DATABASE_URL is not a valid Postgres URL: {e}"))
        .log_statements(tracing::log::LevelFilter::Off)
}

async fn admin() -> PgConnection {
    let options = admin_options();
    let mut conn = options.connect().await.unwrap_or_else(|e| {
        panic!(
            "cannot connect to the server at DATABASE_URL ({e}): is it running? \
             Run these tests through `scripts/test` or `scripts/with-services cargo test ...`, \
             which start a throwaway PostgreSQL"
        )
    });
    let superuser: bool =
        sqlx::query_scalar("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert!(
        superuser,
        "DATABASE_URL must name a superuser: these tests create a database and a role on it \
         (`scripts/with-services` starts a server whose `postgres` user is one)"
    );
    conn
}

async fn exec(conn: &mut PgConnection, sql: String) {
    if let Err(e) = sqlx::raw_sql(AssertSqlSafe(sql.clone()))
        .execute(conn)
        .await
    {
        panic!("`{sql}` failed: {e}");
    }
}

/// A fresh database and a fresh non-superuser role allowed to create
/// tables in its `public` schema.
struct Sandbox {
    database: String,
    role: String,
    password: String,
}

impl Sandbox {
    async fn create(admin: &mut PgConnection) -> Self {
        let id = uuid::Uuid::now_v7().simple().to_string();
        let sandbox = Sandbox {
            database: format!("annals_migrate_{id}"),
            role: format!("annals_app_{id}"),
            password: uuid::Uuid::now_v7().simple().to_string(),
        };
        let (db, role) = (&sandbox.database, &sandbox.role);
        exec(
            admin,
            format!(
                "CREATE ROLE \"{role}\" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE \
                 NOREPLICATION NOBYPASSRLS PASSWORD '{}'",
                sandbox.password
            ),
        )
        .await;
        exec(
            admin,
            format!("CREATE DATABASE \"{db}\" TEMPLATE template0"),
        )
        .await;
        exec(
            admin,
            format!("GRANT CONNECT ON DATABASE \"{db}\" TO \"{role}\""),
        )
        .await;
        // the schema's grants live in the new database
        let mut in_db = admin_options().database(db).connect().await.unwrap();
        exec(
            &mut in_db,
            format!("GRANT USAGE, CREATE ON SCHEMA public TO \"{role}\""),
        )
        .await;
        in_db.close().await.unwrap();
        sandbox
    }

    /// A pool on the sandbox database, as its role.
    async fn pool(&self) -> PgPool {
        let options = admin_options()
            .database(&self.database)
            .username(&self.role)
            .password(&self.password);
        // annals' connections see every tenant (row-level security holds
        // the tables' owner too: see annals_postgres::tenancy)
        let options = annals_postgres::tenancy::every_tenant(options);
        PgPoolOptions::new()
            .max_connections(2)
            .connect_with(options)
            .await
            .unwrap_or_else(|e| panic!("connecting as {}: {e}", self.role))
    }

    /// A connection on the sandbox database as the superuser.
    async fn admin_in_db(&self) -> PgConnection {
        admin_options()
            .database(&self.database)
            .connect()
            .await
            .unwrap()
    }

    async fn drop_all(&self, admin: &mut PgConnection) {
        let (db, role) = (&self.database, &self.role);
        exec(
            admin,
            format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"),
        )
        .await;
        exec(admin, format!("DROP ROLE IF EXISTS \"{role}\"")).await;
    }
}

/// Runs `test` in a fresh sandbox, then drops the sandbox whether the test
/// passed or panicked, and passes the panic on.
async fn in_sandbox<F, Fut>(test: F)
where
    F: FnOnce(Sandbox) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut admin = admin().await;
    let sandbox = Sandbox::create(&mut admin).await;
    let names = Sandbox {
        database: sandbox.database.clone(),
        role: sandbox.role.clone(),
        password: String::new(),
    };
    let outcome = tokio::spawn(test(sandbox)).await;
    names.drop_all(&mut admin).await;
    admin.close().await.unwrap();
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

async fn public_tables(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables \
         WHERE table_schema = 'public' ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

async fn vector_installed(pool: &PgPool) -> bool {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'vector')")
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn migrate_runs_as_a_non_superuser_on_a_database_without_pgvector() {
    in_sandbox(|sandbox| async move {
        let pool = sandbox.pool().await;
        let (who, superuser): (String, bool) = sqlx::query_as(
            "SELECT current_user::text, rolsuper FROM pg_roles WHERE rolname = current_user",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(who, sandbox.role);
        assert!(!superuser, "the test role must not be a superuser");
        assert!(!vector_installed(&pool).await);

        annals_postgres::migrate(&pool)
            .await
            .unwrap_or_else(|e| panic!("migrate as a non-superuser: {e}"));
        // idempotent: a second run finds everything applied
        annals_postgres::migrate(&pool)
            .await
            .unwrap_or_else(|e| panic!("migrate a second time: {e}"));

        assert_eq!(public_tables(&pool).await, EVENT_SOURCING_TABLES);
        assert!(
            !vector_installed(&pool).await,
            "migrate installed the vector extension; only the knowledge base's migrations may"
        );
        // the tables are usable by the role that made them
        let store = PgEventStore::builder(pool.clone()).build().await;
        assert!(store.is_ok(), "building a store: {:?}", store.err());
        pool.close().await;
    })
    .await;
}

/// The knowledge base's migrations need the `vector` extension, which only
/// a superuser can create; once one has, the application's role migrates.
#[cfg(feature = "knowledge")]
#[tokio::test]
async fn the_knowledge_migrations_run_as_a_non_superuser_once_a_superuser_created_the_extension() {
    in_sandbox(|sandbox| async move {
        let pool = sandbox.pool().await;
        annals_postgres::migrate(&pool).await.unwrap();

        let refused = annals_postgres::knowledge::migrate(&pool).await;
        let e = refused.expect_err("a non-superuser cannot create the vector extension");
        assert!(
            e.to_string().contains("superuser"),
            "the error says what to do: {e}"
        );
        assert!(!vector_installed(&pool).await);

        let mut admin = sandbox.admin_in_db().await;
        exec(&mut admin, "CREATE EXTENSION vector".to_owned()).await;
        admin.close().await.unwrap();

        annals_postgres::knowledge::migrate(&pool)
            .await
            .unwrap_or_else(|e| panic!("knowledge::migrate with the extension in place: {e}"));
        annals_postgres::knowledge::migrate(&pool).await.unwrap();
        let tables = public_tables(&pool).await;
        for table in [
            "annals_embedding_refresh_jobs",
            "annals_knowledge_base",
            "annals_knowledge_migrations",
        ] {
            assert!(tables.iter().any(|t| t == table), "{table} in {tables:?}");
        }
        pool.close().await;
    })
    .await;
}
