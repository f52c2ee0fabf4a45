//! The Postgres backend of [annals](https://docs.rs/annals), on sqlx.
//!
//! - [`connect`](fn@crate::connect) opens a pool with annals' defaults ([`PoolConfig`]).
//! - [`migrate`](fn@crate::migrate) creates (and [`migrate_down`](fn@crate::migrate_down)
//!   removes) the event-sourcing tables, from migrations embedded in this
//!   crate. They need no extension and no superuser: a role that may create
//!   tables in the database is enough.
//! - [`PgEventStore`] is the event store: one-round-trip appends with
//!   optimistic concurrency, stream reads, and reads of the global log in
//!   gap-free `(transaction id, position)` order below the snapshot horizon.
//!   Its builder ([`PgEventStoreBuilder::register`]) records the event
//!   types' schemas and refuses to start when the code's schema for a
//!   stored (type, version) changed.
//! - [`PgSnapshotStore`] keeps aggregates' snapshots beside the events.
//! - [`PgProjectionStore`] keeps projections' checkpoints, ownership and
//!   dead letters; projections write their read models in its transaction.
//! - [`PgSagaStore`] keeps sagas and their command outbox.
//! - `knowledge` (feature `knowledge`): the knowledge base on pgvector,
//!   with its own migrations (`knowledge::migrate`, the only place annals
//!   installs the `vector` extension).
//!
//! ```no_run
//! use annals::postgres::{connect, migrate, PgEventStore};
//!
//! #[derive(Debug, Clone, PartialEq, annals::Event)]
//! enum LeadEvent { Created(String) }
//!
//! # async fn run() -> Result<(), annals::Error> {
//! let pool = connect("postgres://app@localhost/clinic").await?;
//! migrate(&pool).await?;
//! let store = PgEventStore::builder(pool).register::<LeadEvent>().build().await?;
//! # Ok(()) }
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]

mod connect;
mod error;
mod keys;
#[cfg(feature = "knowledge")]
#[cfg_attr(docsrs, doc(cfg(feature = "knowledge")))]
pub mod knowledge;
mod migrate;
mod projection;
mod rows;
mod saga;
mod snapshot;
#[doc(hidden)]
pub mod sql;
mod store;
#[cfg(feature = "personal")]
mod subject_keys;
pub mod tenancy;

#[cfg(feature = "testing")]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
pub mod testing;

pub use connect::{connect, PoolConfig};
pub use migrate::{migrate, migrate_down, migration_status, MigrationState, MIGRATIONS_TABLE};
pub use projection::{PgLease, PgProjectionStore};
pub use saga::PgSagaStore;
pub use snapshot::PgSnapshotStore;
pub use store::{
    LogWatcher, PgEventStore, PgEventStoreBuilder, PgSession, DEFAULT_MAX_BATCH, EVENTS_CHANNEL,
};
#[cfg(feature = "personal")]
#[cfg_attr(docsrs, doc(cfg(feature = "personal")))]
pub use subject_keys::PgSubjectKeys;

pub use sqlx;
