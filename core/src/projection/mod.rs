//! Projections: read models built from the global log.
//!
//! A [`Projection`] names itself, says which events it reads (its
//! [`Event`] type) and applies one event at a time inside the transaction of
//! its backend. A runner reads the global log from the projection's
//! checkpoint in the store's gap-free `(transaction id, position)` order,
//! applies each batch and moves the checkpoint in the same transaction.

use std::fmt;
use std::future::Future;

use crate::{Envelope, Event};

mod health;
mod memory;
mod runner;
mod store;

pub use health::{HealthCheck, HealthReport, ProjectionHealth, Readiness};
pub use memory::{InMemoryLease, InMemoryProjectionStore, InMemoryTransaction};
pub use runner::{
    CatchUp, FailurePolicy, ProjectionError, ProjectionHandle, ProjectionRunner, ReplayOutcome,
    ReplaySummary,
};
pub use store::{Checkpoint, Lease, ProjectionStatus, ProjectionStore};

/// A read model fed by the global log.
///
/// `Tx` is where the projection writes: the runner's open transaction on
/// the backend that stores the checkpoint. With the Postgres backend it is
/// `sqlx::PgConnection` (inside a transaction that also moves the
/// checkpoint, so every event is applied exactly once); with the in-memory
/// backend it is [`MemoryTx`], and the projection writes wherever it likes.
///
/// Events whose type is not one of `Self::Event`'s are skipped (the
/// checkpoint moves past them); those that are get decoded and upcast to the
/// current version before [`apply`](Projection::apply) sees them.
pub trait Projection: Send + Sync + 'static {
    /// The events the projection reads.
    type Event: Event;
    /// The backend's transaction handle the projection writes through.
    type Tx: ?Sized + Send;

    /// The projection's stable name: the key of its checkpoint, its
    /// dead letters and its metrics. Changing it starts a new projection
    /// from the beginning of the log.
    fn name(&self) -> &str;

    /// Applies one event. An error rolls back what the projection wrote
    /// for it; the runner retries, then parks the event or stops, by policy.
    fn apply(
        &self,
        tx: &mut Self::Tx,
        event: &Envelope<Self::Event>,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send;

    /// Applies a batch of events, in log order, in one transaction. The
    /// default calls [`apply`](Projection::apply) for each; override it to
    /// write a batch with fewer round trips (e.g. one multi-row statement).
    /// When it fails, the runner applies the batch's events one by one to
    /// find the failing one.
    fn apply_batch(
        &self,
        tx: &mut Self::Tx,
        events: &[Envelope<Self::Event>],
    ) -> impl Future<Output = Result<(), HandlerError>> + Send {
        async move {
            for event in events {
                self.apply(tx, event).await?;
            }
            Ok(())
        }
    }

    /// Clears the read model before a rebuild (in the same transaction that
    /// resets the checkpoint). The default does nothing.
    fn reset(&self, tx: &mut Self::Tx) -> impl Future<Output = Result<(), HandlerError>> + Send {
        let _ = tx;
        async { Ok(()) }
    }
}

/// The transaction handle of the in-memory backend. It carries nothing: an
/// in-memory projection writes to its own state.
#[derive(Debug, Default)]
pub struct MemoryTx {
    _private: (),
}

impl MemoryTx {
    /// A handle (for calling a projection's `apply` by hand, e.g. in tests).
    pub fn new() -> Self {
        MemoryTx { _private: () }
    }
}

/// What kind of failure a handler reports, which decides what the runner
/// does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FailureKind {
    /// Handling this event failed (bad data, a bug, a rejected write).
    /// Retried per the handler's [`RetryPolicy`](crate::RetryPolicy); after
    /// the last attempt the event is parked as a dead letter, or the handler
    /// stops, by its policy. Does not count against the circuit breaker.
    Event,
    /// A dependency failed (a service that is down, a timeout). Retried
    /// with backoff and counted by the handler's circuit breaker; while the
    /// breaker is open the handler pauses. Never parks the event: the event
    /// is not at fault.
    Dependency,
}

/// The error a handler (projection, saga step, outbound call) returns.
///
/// Any error converts into one of kind [`FailureKind::Event`] with `?`;
/// [`HandlerError::dependency`] marks a failure of something the handler
/// depends on.
pub struct HandlerError {
    kind: FailureKind,
    source: Box<dyn std::error::Error + Send + Sync + 'static>,
}

impl HandlerError {
    /// A failure to handle the event itself ([`FailureKind::Event`]).
    pub fn event(source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>) -> Self {
        HandlerError {
            kind: FailureKind::Event,
            source: source.into(),
        }
    }

    /// A failure of a dependency ([`FailureKind::Dependency`]).
    pub fn dependency(
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        HandlerError {
            kind: FailureKind::Dependency,
            source: source.into(),
        }
    }

    /// The kind of failure.
    pub fn kind(&self) -> FailureKind {
        self.kind
    }

    /// The underlying error.
    pub fn source(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.source
    }

    /// The underlying error, owned.
    pub fn into_source(self) -> Box<dyn std::error::Error + Send + Sync + 'static> {
        self.source
    }
}

impl<E: Into<Box<dyn std::error::Error + Send + Sync + 'static>>> From<E> for HandlerError {
    fn from(e: E) -> Self {
        HandlerError::event(e)
    }
}

impl fmt::Debug for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerError")
            .field("kind", &self.kind)
            .field("source", &self.source)
            .finish()
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            FailureKind::Event => fmt::Display::fmt(&self.source, f),
            FailureKind::Dependency => write!(f, "dependency failed: {}", self.source),
        }
    }
}
