//! The Postgres backend of [annals](https://docs.rs/annals), on sqlx.
//!
//! - [`migrate`] creates (and [`migrate_down`] removes) every table the
//!   framework uses, from migrations embedded in this crate.
//! - [`PgEventStore`] is the event store: one-round-trip appends with
//!   optimistic concurrency, stream reads, and reads of the global log in
//!   gap-free `(transaction id, position)` order below the snapshot horizon.
//! - [`PgSagaStore`] keeps sagas and their command outbox; its transactional
//!   methods run in the projection runner's transaction.
//! - The persisted schema registry ([`PgEventStoreBuilder::register`]) refuses
//!   to start when the code's schema for a stored (type, version) changed.
//!
//! ```no_run
//! # async fn demo() -> Result<(), annals_core::Error> {
//! use annals_postgres::{migrate, PgEventStore};
//! let pool = sqlx::PgPool::connect("postgres://localhost/app").await
//!     .map_err(|e| annals_core::Error::backend("connecting", e))?;
//! migrate(&pool).await?;
//! # #[derive(annals_macros::Event)] #[event(crate = "annals_core")] enum LeadEvent { A(u8) }
//! let store = PgEventStore::builder(pool).register::<LeadEvent>().build().await?;
//! # Ok(()) }
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]

mod keys;
mod knowledge;
mod migrate;
mod projection;
mod saga;
mod snapshot;
mod store;

#[cfg(feature = "testing")]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
pub mod testing;

pub use annals_core::Horizon;
pub use knowledge::{quote_literal, PgKnowledgeBase, PgKnowledgeProjection, PgKnowledgeWriter};
pub use migrate::{migrate, migrate_down, MIGRATIONS_TABLE};
pub use projection::{PgLease, PgProjectionStore};
pub use saga::PgSagaStore;
pub use snapshot::PgSnapshotStore;
pub use store::{LogWatcher, PgEventStore, PgEventStoreBuilder, EVENTS_CHANNEL};

pub use sqlx;
