use annals_core::Error;
use sqlx::migrate::Migrator;
use sqlx::PgPool;

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
    migrator()
        .run(pool)
        .await
        .map_err(|e| Error::backend("applying the annals migrations", e))
}

/// Reverts every annals migration (drops every annals table). Data is lost:
/// meant for tests and for removing annals from a database.
pub async fn migrate_down(pool: &PgPool) -> Result<(), Error> {
    migrator()
        .undo(pool, 0)
        .await
        .map_err(|e| Error::backend("reverting the annals migrations", e))
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
