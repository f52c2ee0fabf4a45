use std::future::Future;
use std::time::Duration;

use uuid::Uuid;

use crate::TenantId;

use super::{
    CommandOutcome, OutboxEntry, SagaChange, SagaError, SagaProgress, SagaRecord, SagaStatus,
};

/// Where sagas and their command outbox live.
///
/// Two kinds of methods:
///
/// - [`load`](SagaStore::load) and [`save`](SagaStore::save) run in the
///   caller's transaction (through `Conn`, the projection store's: a
///   `sqlx::PgConnection` inside the projection runner's transaction for
///   Postgres, [`InMemoryConn`](crate::projection::InMemoryConn) in memory), so a saga's new
///   state, its outbox commands and the runner's checkpoint commit together.
/// - Everything else runs on its own: queries, and the worker's operations
///   ([`claim_commands`](SagaStore::claim_commands),
///   [`record_outcome`](SagaStore::record_outcome),
///   [`fire_due_timeouts`](SagaStore::fire_due_timeouts)), each one short
///   transaction. The worker's saga decisions are plain closures the store
///   calls with the saga locked.
///
/// Concurrency: a write of a saga expects the version it was read at (and
/// bumps it); a store also locks a saga it works on (`FOR UPDATE` / `SKIP
/// LOCKED` in Postgres), so several instances never process one saga at
/// once.
pub trait SagaStore: Clone + Send + Sync + 'static {
    /// The transaction handle [`load`](SagaStore::load) and
    /// [`save`](SagaStore::save) run in.
    type Conn: ?Sized + Send;

    /// The tenant whose sagas and commands this handle reads and writes
    /// (see [`crate::tenant`]).
    fn tenant_id(&self) -> &TenantId;

    /// The same store scoped to `tenant`. A
    /// [`SagaProjection`](super::SagaProjection) scopes its store to each
    /// event's tenant itself; a [`SagaWorker`](super::SagaWorker) delivers
    /// the commands of its store's tenant.
    fn in_tenant(&self, tenant: TenantId) -> Self;

    /// The saga of this type for this correlation id, locked until `tx`
    /// ends.
    fn load(
        &self,
        tx: &mut Self::Conn,
        saga_type: &str,
        correlation_id: &str,
    ) -> impl Future<Output = Result<Option<SagaRecord>, SagaError>> + Send;

    /// The sagas of this type for these correlation ids (those that exist),
    /// locked until `tx` ends. The default loads them one by one; a backend
    /// can do it in one query (locking in a fixed order).
    fn load_many(
        &self,
        tx: &mut Self::Conn,
        saga_type: &str,
        correlation_ids: &[String],
    ) -> impl Future<Output = Result<Vec<SagaRecord>, SagaError>> + Send {
        async move {
            let mut out = Vec::with_capacity(correlation_ids.len());
            for id in correlation_ids {
                if let Some(saga) = self.load(tx, saga_type, id).await? {
                    out.push(saga);
                }
            }
            Ok(out)
        }
    }

    /// Writes a saga's change in `tx`: inserts or updates the row (an update
    /// only if the stored version is still `change.record.version`, else
    /// [`SagaError::Conflict`]; an insert for a correlation id that already
    /// has a saga fails with [`SagaError::AlreadyExists`]), sets the
    /// deadline, and records the outbox commands (a command whose
    /// idempotency key is already recorded is skipped).
    fn save(
        &self,
        tx: &mut Self::Conn,
        change: &SagaChange,
    ) -> impl Future<Output = Result<(), SagaError>> + Send;

    /// The steps of a saga that have a forward command that may have taken
    /// effect: delivered, or attempted and not given up (in flight, or
    /// waiting for a retry). A step that is not among them did nothing: when
    /// the saga starts compensating, its commands are cancelled and it is
    /// not undone ([`Decision::finish`](super::Decision::finish)). Runs in
    /// `tx` and keeps the saga's forward commands from being claimed until
    /// `tx` ends, so none is attempted between this answer and the save that
    /// cancels the others.
    fn attempted_steps(
        &self,
        tx: &mut Self::Conn,
        saga_id: Uuid,
    ) -> impl Future<Output = Result<Vec<u32>, SagaError>> + Send;

    /// The saga of this type for this correlation id.
    fn find_by_correlation_id(
        &self,
        saga_type: &str,
        correlation_id: &str,
    ) -> impl Future<Output = Result<Option<SagaRecord>, SagaError>> + Send;

    /// The saga with this id.
    fn get(
        &self,
        saga_id: Uuid,
    ) -> impl Future<Output = Result<Option<SagaRecord>, SagaError>> + Send;

    /// Unfinished sagas (pending, running or compensating), of one type or
    /// all, ordered by id, after `after` (exclusive; `None`: from the
    /// start), at most `limit`.
    fn list_unfinished(
        &self,
        saga_type: Option<&str>,
        after: Option<Uuid>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<SagaRecord>, SagaError>> + Send;

    /// A saga's outbox commands, in the order they were recorded.
    fn commands_of(
        &self,
        saga_id: Uuid,
    ) -> impl Future<Output = Result<Vec<OutboxEntry>, SagaError>> + Send;

    /// How many commands of this saga type wait for delivery.
    fn pending_commands(
        &self,
        saga_type: &str,
    ) -> impl Future<Output = Result<u64, SagaError>> + Send;

    /// How many sagas of this type are unfinished, per status (pending,
    /// running, compensating; finished sagas are not counted: there is no
    /// end to them).
    fn count_unfinished(
        &self,
        saga_type: &str,
    ) -> impl Future<Output = Result<Vec<(SagaStatus, u64)>, SagaError>> + Send;

    /// Claims up to `limit` commands of this saga type that are due for a
    /// delivery attempt: counts the attempt and hides them from other
    /// claims for `lease` (so no transaction stays open while the bus
    /// works). A claim that is not followed by
    /// [`mark_delivered`](SagaStore::mark_delivered) or
    /// [`record_outcome`](SagaStore::record_outcome) within the lease (its
    /// process died) is claimed again: delivery is at least once. A saga's
    /// compensating commands are not claimed while one of its forward
    /// commands is pending. Ordered by id.
    fn claim_commands(
        &self,
        saga_type: &str,
        limit: usize,
        lease: Duration,
    ) -> impl Future<Output = Result<Vec<OutboxEntry>, SagaError>> + Send;

    /// Marks forward (non-compensating) commands delivered. Commands given
    /// up or already marked in the meantime are left alone. The worker
    /// marks each delivery as soon as the bus accepted it, so a crash
    /// delivers again at most the command in flight.
    fn mark_delivered(&self, ids: &[u64]) -> impl Future<Output = Result<(), SagaError>> + Send;

    /// Records one attempt's outcome in one transaction. For
    /// [`CommandOutcome::Retry`]: schedules the next attempt and counts the
    /// retry on the saga. Otherwise: marks the command delivered or given
    /// up, then locks the saga and calls `decide` with it and the outbox's
    /// [`SagaProgress`], and saves the change `decide` returns (if any).
    fn record_outcome<F>(
        &self,
        command: &OutboxEntry,
        outcome: CommandOutcome,
        decide: F,
    ) -> impl Future<Output = Result<(), SagaError>> + Send
    where
        F: FnOnce(SagaRecord, SagaProgress) -> Result<Option<SagaChange>, SagaError> + Send;

    /// Erases `subject`'s personal data from every saga that holds it (its
    /// [`SagaRecord::subject`]): each `Personal` value in the saga's data
    /// and in every command it issued, delivered or not, becomes the
    /// forgotten marker (stored `{"$personal": ...}` wrappers, see
    /// `personal::to_marked_value`). Idempotent;
    /// returns how many sagas it changed. Runs in a transaction of its own.
    fn forget_subject(&self, subject: &str) -> impl Future<Output = Result<u64, SagaError>> + Send;

    /// Locks up to `limit` running sagas of this type whose deadline has
    /// passed (skipping sagas another instance holds), calls `decide` for
    /// each with its [attempted steps](SagaStore::attempted_steps) and
    /// saves the changes, in one transaction. Returns how many sagas
    /// changed.
    fn fire_due_timeouts<F>(
        &self,
        saga_type: &str,
        limit: usize,
        decide: F,
    ) -> impl Future<Output = Result<usize, SagaError>> + Send
    where
        F: FnMut(SagaRecord, &[u32]) -> Result<Option<SagaChange>, SagaError> + Send;
}
