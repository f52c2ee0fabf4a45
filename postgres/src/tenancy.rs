//! Tenants on Postgres: the `tenant_id` column, and row-level security.
//!
//! Every event and snapshot row has a `tenant_id` (migration 0014), first
//! in every key: stream names, event ids and snapshots are unique per
//! tenant. A [`PgEventStore`](crate::PgEventStore) handle is scoped to one
//! tenant (`store.tenant("clinic-7")?`, see
//! [`annals::tenant`](annals_core::tenant)) and every statement it runs
//! names that tenant.
//!
//! Row-level security guards every other query. A role that is not a
//! superuser and has no `BYPASSRLS` (the role an application's own queries
//! and reports should use) sees and writes only the rows of the tenant its
//! transaction names in the setting [`TENANT_SETTING`]; without it, no row:
//!
//! ```sql
//! BEGIN;
//! SELECT set_config('annals.tenant', 'clinic-7', true);  -- SET LOCAL
//! SELECT count(*) FROM annals_events;                     -- clinic-7's only
//! COMMIT;
//! ```
//!
//! annals' own connections see every tenant: the pools of
//! [`connect`](crate::connect) and [`PoolConfig`](crate::PoolConfig) set
//! [`TENANT_SETTING`] to [`EVERY_TENANT`] for the session, and the store's
//! statements filter by their handle's tenant themselves. A store built on
//! a pool of the application's own checks at start-up that it can see
//! every tenant (the setting, a superuser, or `BYPASSRLS`), and refuses to
//! start otherwise: it would see no row at all.
//!
//! The setting is a guard against a query that forgets its tenant, not a
//! wall against a role that may run any SQL: such a role can set any
//! tenant, as it could put any tenant in a `WHERE`.

use annals_core::Error;
use sqlx::postgres::PgConnectOptions;
use sqlx::PgPool;

use crate::error::db;

/// The setting row-level security reads the tenant from.
pub const TENANT_SETTING: &str = "annals.tenant";

/// The value of [`TENANT_SETTING`] with which a connection sees every
/// tenant: what annals' own connections use.
pub const EVERY_TENANT: &str = "*";

/// `options` with [`TENANT_SETTING`] set to [`EVERY_TENANT`] for the
/// session (what annals' pools connect with).
pub fn every_tenant(options: PgConnectOptions) -> PgConnectOptions {
    options.options([(TENANT_SETTING, EVERY_TENANT)])
}

/// Checks that `pool`'s connections see every tenant's rows, as annals'
/// statements need.
/// Connections whose options set it (the pools of [`crate::connect`]) are
/// not asked: a store on them builds while the database is away.
pub(crate) async fn check_sees_every_tenant(pool: &PgPool) -> Result<(), Error> {
    let options = pool.connect_options();
    let set = format!("-c {TENANT_SETTING}={EVERY_TENANT}");
    if options.get_options().is_some_and(|o| o.contains(&set)) {
        return Ok(());
    }
    let sees: Option<bool> = sqlx::query_scalar(
        "SELECT coalesce(current_setting('annals.tenant', true) = '*', false)
                OR r.rolsuper OR r.rolbypassrls
           FROM pg_roles r WHERE r.rolname = current_user",
    )
    .fetch_optional(pool)
    .await
    .map_err(db("checking the connection's tenant setting"))?;
    if sees == Some(true) {
        return Ok(());
    }
    Err(Error::backend(
        "starting the event store",
        format!(
            "the pool's connections are held to one tenant by row-level security: open the pool \
             with annals::postgres::connect or PoolConfig, or set `{TENANT_SETTING}` to \
             `{EVERY_TENANT}` in its connect options (annals::postgres::tenancy::every_tenant), \
             or `ALTER ROLE ... SET {TENANT_SETTING} = '{EVERY_TENANT}'` for annals' role"
        ),
    ))
}
