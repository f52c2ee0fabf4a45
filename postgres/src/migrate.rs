use annals_core::Error;
use futures_core::future::BoxFuture;
use sqlx::migrate::Migrator;
use sqlx::pool::PoolConnection;
use sqlx::{Acquire, PgPool, Postgres, Transaction};

/// The table in which annals records its applied migrations (separate from
/// sqlx's default `_sqlx_migrations`, so an application's own sqlx
/// migrations never collide with annals').
pub const MIGRATIONS_TABLE: &str = "annals_migrations";

fn migrator() -> Migrator {
    let mut m = sqlx::migrate!("./migrations");
    m.dangerous_set_table_name(MIGRATIONS_TABLE);
    m
}

/// Applies every pending migration of annals' event-sourcing tables
/// (events, schemas, snapshots, projections, dead letters, sagas).
/// Idempotent; safe when several processes call it at once (the migrator
/// holds an advisory lock).
///
/// It installs no extension and needs no superuser: a role that may create
/// tables in the database's `public` schema (its owner, or one granted
/// `CREATE` on the schema) is enough. The knowledge base's tables have
/// their own migrations, applied by `knowledge::migrate` (feature
/// `knowledge`).
pub async fn migrate(pool: &PgPool) -> Result<(), Error> {
    run(
        pool,
        &migrator(),
        Direction::Up,
        "applying the annals migrations",
    )
    .await
}

/// Reverts every annals migration (drops every annals table). Data is lost:
/// meant for tests and for removing annals from a database.
pub async fn migrate_down(pool: &PgPool) -> Result<(), Error> {
    run(
        pool,
        &migrator(),
        Direction::Down,
        "reverting the annals migrations",
    )
    .await
}

/// One annals migration and whether the database has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationState {
    /// Its version (the number its file name starts with).
    pub version: i64,
    /// What it does (from its file name).
    pub description: String,
    /// When it was applied (`None`: pending).
    pub applied_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// Every annals migration embedded in this crate, in order, with when the
/// database behind `pool` applied it (`None`: pending). Reads the
/// [`MIGRATIONS_TABLE`]; a database that never ran [`migrate`] has every
/// migration pending.
pub async fn migration_status(pool: &PgPool) -> Result<Vec<MigrationState>, Error> {
    let context = "reading the applied annals migrations";
    let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(MIGRATIONS_TABLE)
        .fetch_one(pool)
        .await
        .map_err(|e| Error::backend(context, e))?;
    let applied: Vec<(i64, chrono::DateTime<chrono::Utc>)> = if exists {
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT version, installed_on FROM {MIGRATIONS_TABLE} WHERE success"
        )))
        .fetch_all(pool)
        .await
        .map_err(|e| Error::backend(context, e))?
    } else {
        Vec::new()
    };
    let applied: std::collections::HashMap<i64, _> = applied.into_iter().collect();
    Ok(migrator()
        .iter()
        .filter(|m| m.migration_type.is_up_migration())
        .map(|m| MigrationState {
            version: m.version,
            description: m.description.to_string(),
            applied_at: applied.get(&m.version).copied(),
        })
        .collect())
}

/// Which way [`run`] goes.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Direction {
    /// Apply every pending migration.
    Up,
    /// Revert every applied migration.
    Down,
}

/// Runs `migrator` on a connection taken from `pool` that is closed
/// afterwards instead of going back to the pool.
///
/// Why: sqlx's migrator takes a session-level advisory lock (one per
/// database, shared by every migration set) and, when a migration fails,
/// returns without releasing it. Back in the pool, that connection would
/// make the next migration on the pool (a retry, or the other migration
/// set) wait for the lock forever. Closing the session releases it.
pub(crate) async fn run(
    pool: &PgPool,
    migrator: &Migrator,
    direction: Direction,
    context: &'static str,
) -> Result<(), Error> {
    let mut conn = pool
        .acquire()
        .await
        .map_err(|e| Error::backend(context, e))?;
    conn.close_on_drop();
    let conn = Dedicated(conn);
    match direction {
        Direction::Up => migrator.run(conn).await,
        Direction::Down => migrator.undo(conn, 0).await,
    }
    .map_err(|e| Error::backend(context, e))
}

/// A pooled connection handed to the migrator by value. (A `&mut
/// PgConnection` would do, but its `Acquire` impl is tied to the borrow's
/// lifetime, and the future of `migrate` would then not be `Send` for
/// callers that spawn it: "implementation of `Acquire` is not general
/// enough".)
struct Dedicated(PoolConnection<Postgres>);

impl<'c> Acquire<'c> for Dedicated {
    type Database = Postgres;
    type Connection = PoolConnection<Postgres>;

    fn acquire(self) -> BoxFuture<'c, Result<Self::Connection, sqlx::Error>> {
        Box::pin(std::future::ready(Ok(self.0)))
    }

    /// Not used by the migrator, which only acquires.
    fn begin(self) -> BoxFuture<'c, Result<Transaction<'c, Postgres>, sqlx::Error>> {
        Box::pin(std::future::ready(Err(sqlx::Error::Protocol(
            "annals' migration connection does not begin transactions itself".to_owned(),
        ))))
    }
}

/// A short fingerprint of the embedded migrations (their checksums), used to
/// name test template databases so a migration change gets a new template.
#[cfg(feature = "testing")]
pub(crate) fn migrations_fingerprint() -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for m in migrator().iter() {
        m.version.hash(&mut h);
        m.checksum.hash(&mut h);
    }
    format!("{:016x}", h.finish())
}
