//! The core of [annals](https://docs.rs/annals): events and their versions, the
//! schema registry, the event-store traits and the in-memory backend,
//! aggregates, snapshots, projections, sagas, dead letters, circuit breakers.
//!
//! Applications depend on the `annals` facade crate, which re-exports
//! everything here together with the derive macros and the Postgres backend;
//! every example in these docs is written against it.
//!
//! The modules, by concept:
//!
//! - [`event`]: the [`Event`] trait, the [`Envelope`] of stored events.
//! - [`schema`]: the [`SchemaRegistry`] of every (event type, version).
//! - [`store`]: the [`EventStore`] traits and the [`InMemoryEventStore`].
//! - [`aggregate`]: [`Aggregate`]s and the [`Repository`] that runs commands.
//! - [`snapshot`]: snapshot stores.
//! - [`projection`]: read models fed by the global log, their runners and
//!   health.
//! - [`saga`]: long-running processes with compensation.
//! - [`dead_letter`], [`handler`], [`retry`], [`breaker`]: what happens when
//!   a handler fails.
//! - [`metrics`], [`trace`], [`shutdown`], [`testing`].
//! - `knowledge` (feature `knowledge`): vector search over a knowledge base
//!   fed by document events.
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod aggregate;
pub mod breaker;
pub mod dead_letter;
pub mod error;
pub mod event;
#[cfg(any(feature = "knowledge", feature = "personal"))]
mod forgotten;
pub mod handler;
#[cfg(feature = "knowledge")]
#[cfg_attr(docsrs, doc(cfg(feature = "knowledge")))]
pub mod knowledge;
pub mod metrics;
#[cfg(feature = "personal")]
#[cfg_attr(docsrs, doc(cfg(feature = "personal")))]
pub mod personal;
pub mod projection;
pub mod retry;
pub mod saga;
pub mod schema;
pub mod shutdown;
pub mod snapshot;
pub mod store;
pub mod tenant;
pub mod testing;
pub mod trace;

pub use aggregate::{Aggregate, AggregateState, CommandError, Repository};
pub use error::{Error, VersionConflict};
pub use event::{Envelope, Event, Metadata, NewEvent, RecordedEvent};
pub use handler::HandlerError;
pub use projection::{InMemoryProjectionStore, Projection, ProjectionRunner, ProjectionStore};
pub use retry::RetryPolicy;
pub use saga::{
    CommandBus, InMemorySagaStore, Issue, Saga, SagaData, SagaProjection, SagaStore, SagaWorker,
};
pub use schema::SchemaRegistry;
pub use shutdown::Shutdown;
pub use snapshot::{InMemorySnapshotStore, SnapshotStore};
pub use store::{
    AppendResult, EventStore, EventStoreExt, ExpectedVersion, InMemoryEventStore, LogPosition,
};
pub use tenant::TenantId;

pub use chrono;
pub use serde_json;
pub use uuid;

/// Support code for the derive macros. Not public API: it may change in any
/// release.
#[doc(hidden)]
pub mod __private {
    pub use crate::aggregate::private::*;
    pub use crate::event::private::*;
    pub use crate::event::{DecodeError, EventSchema, EventTypeInfo, Subject, UpcastError};
    pub use crate::saga::private::*;
    pub use crate::{AggregateState, Event};
    pub use schemars;
    pub use serde;
    pub use serde_json;
}
