//! Test support: a fresh, migrated database per test.
//!
//! [`TestDatabase::new`] creates a database from a template that has the
//! annals migrations applied (the template is built once per server and
//! migration set), so tests run in parallel without interfering. The
//! database is dropped when the test passes and kept, with its name printed,
//! when the test fails.
//!
//! The server comes from `DATABASE_URL`. Without it, tests fail at once with
//! a message naming the test command (`scripts/test`), which starts a
//! throwaway PostgreSQL with pgvector by itself. They never skip.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};

use crate::PgEventStore;

/// A database created for one test, dropped when the test passes.
#[derive(Debug)]
pub struct TestDatabase {
    pool: PgPool,
    name: String,
    options: PgConnectOptions,
}

/// The `DATABASE_URL` of the server tests use. Panics with instructions when
/// it is not set.
pub fn database_url() -> String {
    match std::env::var("DATABASE_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => panic!(
            "DATABASE_URL is not set: annals' Postgres tests need a PostgreSQL 15+ server with pgvector. \
             Run the test command `scripts/test` (it installs and starts a throwaway server), \
             or run `scripts/with-services cargo test ...`, or point DATABASE_URL at a server you own \
             (the tests create and drop databases on it)."
        ),
    }
}

async fn admin(options: &PgConnectOptions) -> PgConnection {
    match options.connect().await {
        Ok(c) => c,
        Err(e) => panic!(
            "cannot connect to the test server at DATABASE_URL ({e}); is it running? `scripts/test` starts one"
        ),
    }
}

async fn exec(conn: &mut PgConnection, sql: &str) -> Result<(), sqlx::Error> {
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(conn)
        .await
        .map(|_| ())
}

/// Creates the template database (migrated) unless it exists. Serialized
/// across processes by an advisory lock.
async fn ensure_template(conn: &mut PgConnection, options: &PgConnectOptions) -> String {
    let template = format!("annals_tpl_{}", crate::migrate::migrations_fingerprint());
    let lock_key: i64 = 0x616e_6e61_6c73; // "annals"
    let fail = |what: &str, e: &dyn std::fmt::Display| -> ! { panic!("test support: {what}: {e}") };
    if let Err(e) = sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(lock_key)
        .execute(&mut *conn)
        .await
    {
        fail("locking the template", &e);
    }
    let exists: Option<i32> =
        match sqlx::query_scalar("SELECT 1 FROM pg_database WHERE datname = $1")
            .bind(&template)
            .fetch_optional(&mut *conn)
            .await
        {
            Ok(v) => v,
            Err(e) => fail("looking up the template", &e),
        };
    if exists.is_none() {
        // build under a temporary name, then rename: a crash never leaves a
        // half-migrated template behind under the real name
        let building = format!("{template}_building");
        if let Err(e) = exec(
            conn,
            &format!("DROP DATABASE IF EXISTS \"{building}\" WITH (FORCE)"),
        )
        .await
        {
            fail("dropping a stale template", &e);
        }
        if let Err(e) = exec(conn, &format!("CREATE DATABASE \"{building}\"")).await {
            fail("creating the template database", &e);
        }
        let pool = match PgPoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone().database(&building))
            .await
        {
            Ok(p) => p,
            Err(e) => fail("connecting to the template", &e),
        };
        if let Err(e) = crate::migrate(&pool).await {
            fail(
                "migrating the template (annals needs PostgreSQL 15 or newer)",
                &e,
            );
        }
        pool.close().await;
        if let Err(e) = exec(
            conn,
            &format!("ALTER DATABASE \"{building}\" RENAME TO \"{template}\""),
        )
        .await
        {
            fail("renaming the template", &e);
        }
    }
    let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(lock_key)
        .execute(&mut *conn)
        .await;
    template
}

impl TestDatabase {
    /// Creates a fresh database with the annals migrations applied.
    pub async fn new() -> Self {
        Self::create(true).await
    }

    /// Creates a fresh, empty database (no migrations applied).
    pub async fn empty() -> Self {
        Self::create(false).await
    }

    async fn create(migrated: bool) -> Self {
        let url = database_url();
        let options = match PgConnectOptions::from_str(&url) {
            Ok(o) => o.log_statements(tracing::log::LevelFilter::Off),
            Err(e) => panic!("DATABASE_URL is not a valid Postgres URL: {e}"),
        };
        let mut conn = admin(&options).await;
        let template = if migrated {
            ensure_template(&mut conn, &options).await
        } else {
            "template0".to_owned()
        };
        let name = format!("annals_test_{}", uuid::Uuid::now_v7().simple());
        let mut attempt = 0;
        loop {
            match exec(
                &mut conn,
                &format!("CREATE DATABASE \"{name}\" TEMPLATE \"{template}\""),
            )
            .await
            {
                Ok(()) => break,
                // the template is briefly in use by a concurrent CREATE DATABASE
                Err(e) if attempt < 50 => {
                    attempt += 1;
                    tracing::debug!(error = %e, "retrying test database creation");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("test support: creating database {name}: {e}"),
            }
        }
        let _ = conn.close().await;
        let db_options = options.clone().database(&name);
        let pool = match PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(db_options)
            .await
        {
            Ok(p) => p,
            Err(e) => panic!("test support: connecting to {name}: {e}"),
        };
        TestDatabase {
            pool,
            name,
            options,
        }
    }

    /// A pool on the test database.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The test database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Connection options for the test database (for extra pools).
    pub fn connect_options(&self) -> PgConnectOptions {
        self.options.clone().database(&self.name)
    }

    /// An event store on the test database, validating on append.
    pub async fn store(&self) -> PgEventStore {
        match PgEventStore::builder(self.pool.clone()).build().await {
            Ok(s) => s,
            Err(e) => panic!("test support: building the store: {e}"),
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "test failed: keeping its database `{}` for inspection (drop it by hand when done)",
                self.name
            );
            return;
        }
        let options = self.options.clone();
        let name = self.name.clone();
        let pool = self.pool.clone();
        // Drop is synchronous: drop the database on a helper thread with its
        // own runtime, and wait for it
        let handle = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                drop(pool);
                if let Ok(mut conn) = options.connect().await {
                    let _ = exec(
                        &mut conn,
                        &format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"),
                    )
                    .await;
                    let _ = conn.close().await;
                }
            });
        });
        let _ = handle.join();
    }
}

/// A PostgreSQL server of a test's own: a fresh data directory and a free
/// port on 127.0.0.1, for tests that restart a server or need several.
/// Durable (`fsync`, `synchronous_commit` on), so a restart after an
/// immediate stop recovers exactly what committed. Stopped and removed on
/// drop.
///
/// The binaries come from `ANNALS_PG_BIN` (`scripts/with-services` and
/// `scripts/test` set it); without it, [`start`](Self::start) panics with
/// what to do. As root, the server runs as the `postgres` OS user
/// (`scripts/provision` makes sure there is one).
#[derive(Debug)]
pub struct PgServer {
    bin: std::path::PathBuf,
    dir: std::path::PathBuf,
    port: u16,
}

impl PgServer {
    /// Initializes a data directory and starts the server.
    pub fn start() -> Self {
        let bin = match std::env::var("ANNALS_PG_BIN") {
            Ok(b) if !b.is_empty() => std::path::PathBuf::from(b),
            _ => panic!(
                "ANNALS_PG_BIN is not set: this test starts PostgreSQL servers of its own and needs \
                 the directory of initdb and pg_ctl. Run the test command `scripts/test`, or \
                 `scripts/with-services cargo test ...`, which set it"
            ),
        };
        let dir = std::env::temp_dir().join(format!("annals-pg-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).expect("create the server's directory");
        if is_root() {
            run(std::process::Command::new("chown")
                .arg("postgres:")
                .arg(&dir));
        }
        let data = dir.join("data");
        run(as_pg(&bin.join("initdb")).arg("-D").arg(&data).args([
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
            "-E",
            "UTF8",
        ]));
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            let server = PgServer {
                bin: bin.clone(),
                dir: dir.clone(),
                port,
            };
            if server.pg_ctl("start").status().is_ok_and(|s| s.success()) {
                return server;
            }
            // the port was taken between the probe and the bind: another
            std::mem::forget(server);
        }
        panic!(
            "PostgreSQL did not start; see {}",
            dir.join("server.log").display()
        );
    }

    /// The server's URL (database `postgres`, user `postgres`).
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Stops the server as a crash would (`pg_ctl stop -m immediate`: no
    /// shutdown checkpoint, WAL replay at the next start) and starts it
    /// again on the same port. Connections to it break.
    pub fn crash_and_restart(&self) {
        run(&mut self.pg_ctl("stop"));
        run(&mut self.pg_ctl("start"));
    }

    fn pg_ctl(&self, action: &str) -> std::process::Command {
        let mut command = as_pg(&self.bin.join("pg_ctl"));
        command
            .arg("-D")
            .arg(self.dir.join("data"))
            .arg("-w")
            .args(["-t", "60"]);
        match action {
            "start" => {
                command.arg("-l").arg(self.dir.join("server.log")).args([
                    "start",
                    "-o",
                    &format!(
                        "-c listen_addresses=127.0.0.1 -p {} -c unix_socket_directories={} \
                         -c fsync=on -c synchronous_commit=on -c full_page_writes=on",
                        self.port,
                        self.dir.display()
                    ),
                ]);
            }
            _ => {
                command.args(["stop", "-m", "immediate"]);
            }
        }
        command
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let _ = self.pg_ctl("stop").output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

/// `program`, run as the `postgres` OS user when we are root (initdb and
/// postgres refuse to run as root).
fn as_pg(program: &std::path::Path) -> std::process::Command {
    if is_root() {
        let mut command = std::process::Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        std::process::Command::new(program)
    }
}

fn run(command: &mut std::process::Command) {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
