//! The core of [annals](https://docs.rs/annals): events and their versions, the
//! schema registry, the event-store traits and the in-memory backend.
//!
//! Applications normally depend on the `annals` facade crate, which re-exports
//! everything here together with the derive macros and the Postgres backend.
//!
//! The pieces:
//!
//! - [`Event`]: implemented by `#[derive(Event)]`; names every event type,
//!   gives its current schema version, encodes it and decodes any stored
//!   version by walking the upcast chain.
//! - [`SchemaRegistry`]: the JSON Schema of every (event type, version), a
//!   stable fingerprint of each, payload validation and the breaking-change
//!   guard ([`SchemaLock`]).
//! - [`EventStore`]: append with an [`ExpectedVersion`], read a stream, read
//!   the global log from a [`LogPosition`]; [`EventStoreExt`] adds the typed
//!   layer (encode, validate, decode, upcast).
//! - [`InMemoryEventStore`]: the embedded default, with exactly the semantics
//!   of the Postgres store (pinned by the conformance suite in `testing`).
//! - [`Saga`]: implemented by `#[derive(Saga)]`; a state machine over events
//!   whose state lives in a [`SagaStore`], fed by a [`SagaProjection`], with
//!   its commands delivered and its timeouts fired by a [`SagaWorker`].
#![cfg_attr(docsrs, feature(doc_cfg))]

mod aggregate;
mod breaker;
mod dead_letter;
mod envelope;
mod error;
mod event;
mod memory;
pub mod metrics;
mod projection;
pub mod rag;
mod repository;
mod retry;
mod saga;
mod scenario;
mod schema;
mod shutdown;
mod snapshot;
mod store;

#[cfg(feature = "testing")]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
pub mod testing;

pub use aggregate::{Aggregate, AggregateState};
pub use breaker::{
    BreakerConfig, BreakerError, BreakerOpen, BreakerState, CircuitBreaker, CircuitBreakerRegistry,
};
pub use dead_letter::{
    DeadLetter, DeadLetterQuery, DeadLetterStatus, DeadLetterStore, NewDeadLetter,
};
pub use envelope::{Envelope, LogPosition, Metadata, NewEvent, RecordedEvent};
pub use error::{DecodeError, Error, UpcastError, VersionConflict};
pub use event::{Event, EventSchema, EventTypeInfo};
pub use memory::{InMemoryEventStore, MemoryWatcher};
pub use projection::{
    CatchUp, Checkpoint, FailureKind, FailurePolicy, HandlerError, HealthCheck, HealthReport,
    InMemoryLease, InMemoryProjectionStore, InMemoryTransaction, Lease, MemoryTx, Projection,
    ProjectionError, ProjectionHandle, ProjectionHealth, ProjectionRunner, ProjectionStatus,
    ProjectionStore, Readiness, ReplayOutcome, ReplaySummary,
};
pub use repository::{CommandError, Executed, Loaded, Repository, SnapshotWrite};
pub use retry::{RetryError, RetryPolicy};
pub use saga::{
    CommandBus, CommandOutcome, CorrelationId, Dispatch, InMemorySagaStore, Issue, NamedCommand,
    OutboxCommand, OutboxEntry, Saga, SagaChange, SagaData, SagaDefinition, SagaEngine, SagaError,
    SagaProgress, SagaProjection, SagaRecord, SagaStatus, SagaStore, SagaWorker, SagaWorkerHandle,
    StateDefinition, StepRecord, StepStatus, Target, WorkerRound,
};
pub use scenario::{given, Scenario, ScenarioWhen};
pub use schema::{
    fingerprint, RegisteredSchema, SchemaChange, SchemaChanges, SchemaLock, SchemaRegistry,
    SchemaViolation,
};
pub use shutdown::{Shutdown, ShutdownTrigger};
pub use snapshot::{
    append_decided, InMemorySnapshotStore, NoSnapshots, Snapshot, SnapshotFold, SnapshotStore,
};
pub use store::{
    AppendResult, Backlog, CommandFold, EventStore, EventStoreExt, ExpectedVersion, Horizon,
    PayloadRef, StoredPayload, Watch, WatchLog,
};

/// Support code for the derive macros. Not public API: it may change in any
/// release.
#[doc(hidden)]
pub mod __private {
    pub use crate::aggregate::private::*;
    pub use crate::event::private::*;
    pub use crate::saga::private::*;
    pub use crate::{AggregateState, DecodeError, Event, EventSchema, EventTypeInfo, UpcastError};
    pub use schemars;
    pub use serde;
    pub use serde_json;
}
