//! Where runners keep their checkpoints, ownership and dead letters.

use std::collections::HashMap;
use std::future::Future;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::dead_letter::{DeadLetter, DeadLetterStore, NewDeadLetter};
use crate::{Error, LogPosition, TenantId};

/// What a projection's checkpoint row says about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProjectionStatus {
    /// Applying events (or waiting for new ones).
    Running,
    /// Stopped on purpose.
    Stopped,
    /// Stopped on an event it could not apply (its
    /// [`FailurePolicy`](crate::projection::FailurePolicy) is `Stop`); see the error.
    Failed,
}

impl ProjectionStatus {
    /// The status as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            ProjectionStatus::Running => "running",
            ProjectionStatus::Stopped => "stopped",
            ProjectionStatus::Failed => "failed",
        }
    }

    /// Parses a stored status.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "running" => Some(ProjectionStatus::Running),
            "stopped" => Some(ProjectionStatus::Stopped),
            "failed" => Some(ProjectionStatus::Failed),
            _ => None,
        }
    }
}

/// A projection's checkpoint: the last event it applied, and its status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The projection's name.
    pub projection: String,
    /// The place in the global log of the last event it applied (or skipped).
    pub position: LogPosition,
    /// When that event was recorded (`None` before the first one).
    pub last_event_at: Option<DateTime<Utc>>,
    /// When the checkpoint last changed.
    pub updated_at: DateTime<Utc>,
    /// Its status.
    pub status: ProjectionStatus,
    /// The last failure, when `status` is `Failed`.
    pub error: Option<String>,
    /// The global position of the event the failure happened on.
    pub error_position: Option<u64>,
}

/// Ownership of a projection: while a runner holds its lease, no other
/// runner (in this process or another) applies its events. Dropping the
/// lease releases it; so does the death of the process or connection that
/// holds it.
pub trait Lease: Send + Sized + 'static {
    /// Whether the lease is still held (e.g. its connection is alive).
    fn is_held(&mut self) -> impl Future<Output = bool> + Send;

    /// Gives the lease up now, so another runner can take over at once
    /// (dropping it releases it too, but maybe only when the backend
    /// notices: a Postgres session ends a moment after its socket closes).
    fn release(self) -> impl Future<Output = ()> + Send;
}

/// The storage side of projection runners: transactions, checkpoints,
/// ownership leases and the dead-letter queue. Implemented by
/// `annals::postgres::PgProjectionStore` and [`InMemoryProjectionStore`](crate::InMemoryProjectionStore).
///
/// A runner applies a batch of events and moves the checkpoint in one
/// transaction ([`begin`](Self::begin) … [`commit`](Self::commit); dropping
/// the transaction rolls it back). [`advance`](Self::advance) only moves a
/// checkpoint that is still where the runner left it, under the runner's
/// lease, so a runner that lost its lease without noticing can never apply
/// a batch twice, and commits nothing once the next owner has taken over.
pub trait ProjectionStore: DeadLetterStore + Clone + Send + Sync + 'static {
    /// An open transaction (rolled back when dropped).
    type Transaction: Send;
    /// What projections write through (see [`Projection::Conn`](crate::Projection::Conn)).
    type Conn: ?Sized + Send;
    /// Ownership of one projection.
    type Lease: Lease;

    /// Whether rolling a transaction back also undoes what the projection
    /// wrote through [`Conn`](Self::Conn). When it does (Postgres), a
    /// runner applies a whole batch in one transaction and, if an event
    /// fails, rolls back and applies the events before it again; when it
    /// does not (in memory), it applies events one at a time and never
    /// applies an event twice.
    const TRANSACTIONAL: bool;

    /// The connection inside a transaction.
    fn conn(tx: &mut Self::Transaction) -> &mut Self::Conn;

    /// The tenant whose checkpoints, leases and dead letters this handle
    /// reads and writes (see [`crate::tenant`]).
    fn tenant_id(&self) -> &TenantId;

    /// The same store scoped to `tenant`. A
    /// [`ProjectionRunner`](crate::ProjectionRunner) scopes its projection
    /// store to its event store's tenant itself: a projection runs per
    /// tenant, with its own checkpoint, lease and dead letters.
    fn in_tenant(&self, tenant: TenantId) -> Self
    where
        Self: Sized;

    /// Opens a transaction.
    fn begin(&self) -> impl Future<Output = Result<Self::Transaction, Error>> + Send;

    /// Commits a transaction.
    fn commit(&self, tx: Self::Transaction) -> impl Future<Output = Result<(), Error>> + Send;

    /// Takes ownership of a projection if nobody holds it (`None`: another
    /// runner does).
    fn try_acquire(
        &self,
        projection: &str,
    ) -> impl Future<Output = Result<Option<Self::Lease>, Error>> + Send;

    /// A projection's checkpoint (`None`: it never ran).
    fn checkpoint(
        &self,
        projection: &str,
    ) -> impl Future<Output = Result<Option<Checkpoint>, Error>> + Send;

    /// Every checkpoint, by projection name.
    fn checkpoints(&self) -> impl Future<Output = Result<Vec<Checkpoint>, Error>> + Send;

    /// A projection's checkpoint, created at the start of the log if it
    /// does not exist yet.
    fn init_checkpoint(
        &self,
        projection: &str,
    ) -> impl Future<Output = Result<Checkpoint, Error>> + Send;

    /// Moves the checkpoint from `from` to `to` inside `tx` and marks the
    /// projection running. Returns `false`, changing nothing, when the
    /// checkpoint is no longer at `from` (another runner moved it) or when
    /// `lease` is no longer the current one (another runner took the
    /// projection over since, e.g. after this one's lock connection died:
    /// the fence that keeps a stale owner from committing).
    fn advance(
        &self,
        tx: &mut Self::Transaction,
        lease: &Self::Lease,
        projection: &str,
        from: LogPosition,
        to: LogPosition,
        last_event_at: Option<DateTime<Utc>>,
    ) -> impl Future<Output = Result<bool, Error>> + Send;

    /// Puts the checkpoint back at the start of the log (a rebuild),
    /// inside `tx`.
    fn reset(
        &self,
        tx: &mut Self::Transaction,
        projection: &str,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// Marks a projection failed on the event at `position`, with the
    /// error; does nothing when `lease` is no longer the current one (see
    /// [`advance`](Self::advance)).
    fn mark_failed(
        &self,
        lease: &Self::Lease,
        projection: &str,
        error: &str,
        position: u64,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// Parks an event inside `tx`; returns the entry's id. Parking the same
    /// event for the same handler again updates the existing entry (its
    /// error, attempts and times) and makes it pending again.
    fn park(
        &self,
        tx: &mut Self::Transaction,
        letter: &NewDeadLetter,
    ) -> impl Future<Output = Result<u64, Error>> + Send;

    /// The streams that have pending dead letters for a handler, each with
    /// the global position of its earliest one.
    fn pending_streams(
        &self,
        handler: &str,
    ) -> impl Future<Output = Result<HashMap<String, u64>, Error>> + Send;

    /// A pending dead letter, locked inside `tx` against concurrent replays
    /// (`None`: not pending, or unknown).
    fn lock_dead_letter(
        &self,
        tx: &mut Self::Transaction,
        id: u64,
    ) -> impl Future<Output = Result<Option<DeadLetter>, Error>> + Send;

    /// Marks a dead letter resolved inside `tx` (after a successful replay).
    fn resolve_dead_letter(
        &self,
        tx: &mut Self::Transaction,
        id: u64,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// Records a failed replay: one more attempt, the new error.
    fn record_replay_failure(
        &self,
        id: u64,
        error: &str,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// Discards every pending dead letter of a handler inside `tx` (a
    /// rebuild re-reads their events); returns how many.
    fn discard_all_dead_letters(
        &self,
        tx: &mut Self::Transaction,
        handler: &str,
        reason: &str,
    ) -> impl Future<Output = Result<u64, Error>> + Send;
}
