//! Projections: read models built from the global log.
//!
//! A [`Projection`] names itself, says which events it reads (its
//! [`Event`] type) and applies one event at a time inside the transaction of
//! its backend. A runner reads the global log from the projection's
//! checkpoint in the store's gap-free `(transaction id, position)` order,
//! applies each batch and moves the checkpoint in the same transaction.

use std::future::Future;

use crate::handler::HandlerError;
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
/// `Conn` is what the projection writes through: the connection of the
/// runner's open transaction in the [`ProjectionStore`] that keeps its
/// checkpoint. With the Postgres store it is `sqlx::PgConnection` (inside
/// a transaction that also moves the checkpoint, so every event is applied
/// exactly once); with the in-memory store it is [`InMemoryConn`], and the
/// projection writes wherever it likes.
///
/// Events whose type is not one of `Self::Event`'s are skipped (the
/// checkpoint moves past them); those that are get decoded and upcast to the
/// current version before [`apply`](Projection::apply) sees them.
pub trait Projection: Send + Sync + 'static {
    /// The events the projection reads.
    type Event: Event;
    /// What the projection writes through: the projection store's
    /// [`Conn`](ProjectionStore::Conn).
    type Conn: ?Sized + Send;

    /// The projection's stable name: the key of its checkpoint, its
    /// dead letters and its metrics. Changing it starts a new projection
    /// from the beginning of the log.
    fn name(&self) -> &str;

    /// Applies one event. An error rolls back what the projection wrote
    /// for it; the runner retries, then parks the event or stops, by policy.
    fn apply(
        &self,
        conn: &mut Self::Conn,
        event: &Envelope<Self::Event>,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send;

    /// Applies a batch of events, in log order, in one transaction. The
    /// default calls [`apply`](Projection::apply) for each; override it to
    /// write a batch with fewer round trips (e.g. one multi-row statement).
    /// When it fails, the runner applies the batch's events one by one to
    /// find the failing one.
    fn apply_batch(
        &self,
        conn: &mut Self::Conn,
        events: &[Envelope<Self::Event>],
    ) -> impl Future<Output = Result<(), HandlerError>> + Send {
        async move {
            for event in events {
                self.apply(conn, event).await?;
            }
            Ok(())
        }
    }

    /// Clears `tenant`'s read model before a rebuild of that tenant's
    /// projection (in the same transaction that resets the checkpoint).
    /// The default does nothing.
    ///
    /// Only `tenant`'s rows: a runner runs a projection for one tenant
    /// (its event store's, see [`ProjectionRunner::new`](crate::ProjectionRunner::new)),
    /// and a rebuild of one tenant must leave every other tenant's read
    /// model as it is. A read model of an application with one tenant
    /// ([`TenantId::DEFAULT_NAME`](crate::TenantId::DEFAULT_NAME)) may
    /// simply clear everything.
    fn reset(
        &self,
        conn: &mut Self::Conn,
        tenant: &crate::TenantId,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send {
        let _ = (conn, tenant);
        async { Ok(()) }
    }
}

/// The connection of the [`InMemoryProjectionStore`]'s transactions, what
/// an in-memory projection writes through. It carries nothing: an
/// in-memory projection writes to its own state.
#[derive(Debug, Default)]
pub struct InMemoryConn {
    _private: (),
}

impl InMemoryConn {
    /// A handle (for calling a projection's `apply` by hand, e.g. in tests).
    pub fn new() -> Self {
        InMemoryConn { _private: () }
    }
}
