//! The in-memory projection store: checkpoints, leases and dead letters of
//! one process.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, Utc};

use crate::dead_letter::{
    DeadLetter, DeadLetterQuery, DeadLetterStatus, DeadLetterStore, NewDeadLetter,
};
use crate::projection::store::{Checkpoint, Lease, ProjectionStatus, ProjectionStore};
use crate::store::limits::check_projection_name;
use crate::tenant::PerTenant;
use crate::{projection::InMemoryConn, Error, LogPosition, TenantId};

/// The embedded projection store, with the semantics of the Postgres one:
/// a transaction's checkpoint moves and dead-letter changes apply together
/// at commit or not at all, a checkpoint only moves from where its runner
/// left it, and one lease per projection.
///
/// Cloning is cheap and shares the store. Nothing survives the process.
/// Each tenant's checkpoints, leases and dead letters are apart (see
/// [`ProjectionStore::in_tenant`]).
#[derive(Debug, Clone)]
pub struct InMemoryProjectionStore {
    /// The tenant's state.
    shared: Arc<Mutex<State>>,
    tenant: TenantId,
    /// Every tenant's state, for [`ProjectionStore::in_tenant`].
    tenants: PerTenant<State>,
}

#[derive(Debug, Default)]
struct State {
    checkpoints: BTreeMap<String, Checkpoint>,
    leases: HashSet<String>,
    letters: BTreeMap<u64, DeadLetter>,
    next_id: u64,
}

/// A transaction of the [`InMemoryProjectionStore`]: its changes are staged
/// and applied at commit.
#[derive(Debug, Default)]
pub struct InMemoryTransaction {
    conn: InMemoryConn,
    ops: Vec<Op>,
}

#[derive(Debug)]
enum Op {
    Advance {
        projection: String,
        from: LogPosition,
        to: LogPosition,
        last_event_at: Option<DateTime<Utc>>,
    },
    Reset {
        projection: String,
    },
    Park(u64, NewDeadLetter),
    Resolve(u64),
    DiscardAll {
        handler: String,
        reason: String,
    },
}

/// Ownership of one projection in an [`InMemoryProjectionStore`].
#[derive(Debug)]
pub struct InMemoryLease {
    shared: Arc<Mutex<State>>,
    projection: String,
}

impl Lease for InMemoryLease {
    async fn is_held(&mut self) -> bool {
        true
    }

    async fn release(self) {
        drop(self);
    }
}

impl Drop for InMemoryLease {
    fn drop(&mut self) {
        lock(&self.shared).leases.remove(&self.projection);
    }
}

fn lock(shared: &Mutex<State>) -> MutexGuard<'_, State> {
    // every change below is applied after its checks: a poisoned lock holds
    // consistent state
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

fn fresh_checkpoint(projection: &str) -> Checkpoint {
    Checkpoint {
        projection: projection.to_owned(),
        position: LogPosition::START,
        last_event_at: None,
        updated_at: Utc::now(),
        status: ProjectionStatus::Running,
        error: None,
        error_position: None,
    }
}

impl Default for InMemoryProjectionStore {
    fn default() -> Self {
        Self::new()
    }
}

impl InMemoryProjectionStore {
    /// An empty store, scoped to the default tenant.
    pub fn new() -> Self {
        let tenants = PerTenant::new();
        let tenant = TenantId::default();
        InMemoryProjectionStore {
            shared: tenants.of(&tenant),
            tenant,
            tenants,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.shared)
    }
}

impl State {
    fn park(&mut self, id: u64, letter: NewDeadLetter, now: DateTime<Utc>) -> u64 {
        if let Some(existing) = self
            .letters
            .values_mut()
            .find(|l| l.handler == letter.handler && l.event_id == letter.event_id)
        {
            existing.error = letter.error;
            existing.attempts += letter.attempts;
            existing.last_failed_at = now;
            existing.status = DeadLetterStatus::Pending;
            existing.resolved_at = None;
            existing.discard_reason = None;
            existing.blocked_by = letter.blocked_by;
            return existing.id;
        }
        self.letters.insert(
            id,
            DeadLetter {
                id,
                handler: letter.handler,
                event_position: letter.event_position,
                event_id: letter.event_id,
                stream_id: letter.stream_id,
                event_type: letter.event_type,
                error: letter.error,
                attempts: letter.attempts,
                first_failed_at: now,
                last_failed_at: now,
                status: DeadLetterStatus::Pending,
                resolved_at: None,
                discard_reason: None,
                blocked_by: letter.blocked_by,
            },
        );
        id
    }
}

impl DeadLetterStore for InMemoryProjectionStore {
    async fn list_dead_letters(&self, query: &DeadLetterQuery) -> Result<Vec<DeadLetter>, Error> {
        let state = self.lock();
        Ok(state
            .letters
            .range(query.after_id.saturating_add(1)..)
            .map(|(_, l)| l)
            .filter(|l| query.handler.as_deref().is_none_or(|h| l.handler == h))
            .filter(|l| query.status.is_none_or(|s| l.status == s))
            .take(query.limit)
            .cloned()
            .collect())
    }

    async fn dead_letter(&self, id: u64) -> Result<Option<DeadLetter>, Error> {
        Ok(self.lock().letters.get(&id).cloned())
    }

    async fn discard_dead_letter(&self, id: u64, reason: &str) -> Result<bool, Error> {
        crate::store::limits::check_discard_reason(reason)?;
        let mut state = self.lock();
        match state.letters.get_mut(&id) {
            Some(l) if l.status == DeadLetterStatus::Pending => {
                l.status = DeadLetterStatus::Discarded;
                l.resolved_at = Some(Utc::now());
                l.discard_reason = Some(reason.to_owned());
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn pending_dead_letters(&self, handler: &str) -> Result<u64, Error> {
        Ok(self
            .lock()
            .letters
            .values()
            .filter(|l| l.handler == handler && l.status == DeadLetterStatus::Pending)
            .count() as u64)
    }
}

impl ProjectionStore for InMemoryProjectionStore {
    type Transaction = InMemoryTransaction;
    type Conn = InMemoryConn;
    type Lease = InMemoryLease;

    const TRANSACTIONAL: bool = false;

    fn conn(tx: &mut InMemoryTransaction) -> &mut InMemoryConn {
        &mut tx.conn
    }

    fn tenant_id(&self) -> &TenantId {
        &self.tenant
    }

    fn in_tenant(&self, tenant: TenantId) -> Self {
        InMemoryProjectionStore {
            shared: self.tenants.of(&tenant),
            tenant,
            tenants: self.tenants.clone(),
        }
    }

    async fn begin(&self) -> Result<InMemoryTransaction, Error> {
        Ok(InMemoryTransaction::default())
    }

    async fn commit(&self, tx: InMemoryTransaction) -> Result<(), Error> {
        let mut state = self.lock();
        // check every fence before changing anything: all or nothing
        for op in &tx.ops {
            if let Op::Advance {
                projection, from, ..
            } = op
            {
                let at = state
                    .checkpoints
                    .get(projection)
                    .map_or(LogPosition::START, |c| c.position);
                if at != *from {
                    return Err(Error::CheckpointMoved {
                        projection: projection.clone(),
                    });
                }
            }
        }
        let now = Utc::now();
        for op in tx.ops {
            match op {
                Op::Advance {
                    projection,
                    to,
                    last_event_at,
                    ..
                } => {
                    let c = state
                        .checkpoints
                        .entry(projection.clone())
                        .or_insert_with(|| fresh_checkpoint(&projection));
                    c.position = to;
                    if last_event_at.is_some() {
                        c.last_event_at = last_event_at;
                    }
                    c.updated_at = now;
                    c.status = ProjectionStatus::Running;
                    c.error = None;
                    c.error_position = None;
                }
                Op::Reset { projection } => {
                    state
                        .checkpoints
                        .insert(projection.clone(), fresh_checkpoint(&projection));
                }
                Op::Park(id, letter) => {
                    state.park(id, letter, now);
                }
                Op::Resolve(id) => {
                    if let Some(l) = state.letters.get_mut(&id) {
                        l.status = DeadLetterStatus::Resolved;
                        l.resolved_at = Some(now);
                    }
                }
                Op::DiscardAll { handler, reason } => {
                    for l in state
                        .letters
                        .values_mut()
                        .filter(|l| l.handler == handler && l.status == DeadLetterStatus::Pending)
                    {
                        l.status = DeadLetterStatus::Discarded;
                        l.resolved_at = Some(now);
                        l.discard_reason = Some(reason.clone());
                    }
                }
            }
        }
        Ok(())
    }

    async fn try_acquire(&self, projection: &str) -> Result<Option<InMemoryLease>, Error> {
        check_projection_name(projection)?;
        let mut state = self.lock();
        if !state.leases.insert(projection.to_owned()) {
            return Ok(None);
        }
        Ok(Some(InMemoryLease {
            shared: self.shared.clone(),
            projection: projection.to_owned(),
        }))
    }

    async fn checkpoint(&self, projection: &str) -> Result<Option<Checkpoint>, Error> {
        Ok(self.lock().checkpoints.get(projection).cloned())
    }

    async fn checkpoints(&self) -> Result<Vec<Checkpoint>, Error> {
        Ok(self.lock().checkpoints.values().cloned().collect())
    }

    async fn init_checkpoint(&self, projection: &str) -> Result<Checkpoint, Error> {
        check_projection_name(projection)?;
        Ok(self
            .lock()
            .checkpoints
            .entry(projection.to_owned())
            .or_insert_with(|| fresh_checkpoint(projection))
            .clone())
    }

    async fn advance(
        &self,
        tx: &mut InMemoryTransaction,
        // an in-memory lease cannot be lost while its runner holds it
        _lease: &InMemoryLease,
        projection: &str,
        from: LogPosition,
        to: LogPosition,
        last_event_at: Option<DateTime<Utc>>,
    ) -> Result<bool, Error> {
        let at = self
            .lock()
            .checkpoints
            .get(projection)
            .map_or(LogPosition::START, |c| c.position);
        if at != from {
            return Ok(false);
        }
        tx.ops.push(Op::Advance {
            projection: projection.to_owned(),
            from,
            to,
            last_event_at,
        });
        Ok(true)
    }

    async fn reset(&self, tx: &mut InMemoryTransaction, projection: &str) -> Result<(), Error> {
        tx.ops.push(Op::Reset {
            projection: projection.to_owned(),
        });
        Ok(())
    }

    async fn mark_failed(
        &self,
        // an in-memory lease cannot be lost while its runner holds it
        _lease: &InMemoryLease,
        projection: &str,
        error: &str,
        position: u64,
    ) -> Result<(), Error> {
        let mut state = self.lock();
        let c = state
            .checkpoints
            .entry(projection.to_owned())
            .or_insert_with(|| fresh_checkpoint(projection));
        c.status = ProjectionStatus::Failed;
        c.error = Some(error.to_owned());
        c.error_position = Some(position);
        c.updated_at = Utc::now();
        Ok(())
    }

    async fn park(
        &self,
        tx: &mut InMemoryTransaction,
        letter: &NewDeadLetter,
    ) -> Result<u64, Error> {
        let mut state = self.lock();
        let existing = state
            .letters
            .values()
            .find(|l| l.handler == letter.handler && l.event_id == letter.event_id)
            .map(|l| l.id);
        let id = match existing {
            Some(id) => id,
            None => {
                state.next_id += 1;
                state.next_id
            }
        };
        tx.ops.push(Op::Park(id, letter.clone()));
        Ok(id)
    }

    async fn pending_streams(&self, handler: &str) -> Result<HashMap<String, u64>, Error> {
        let state = self.lock();
        let mut streams = HashMap::new();
        for l in state
            .letters
            .values()
            .filter(|l| l.handler == handler && l.status == DeadLetterStatus::Pending)
        {
            let earliest = streams.entry(l.stream_id.clone()).or_insert(u64::MAX);
            *earliest = (*earliest).min(l.event_position);
        }
        Ok(streams)
    }

    async fn lock_dead_letter(
        &self,
        _tx: &mut InMemoryTransaction,
        id: u64,
    ) -> Result<Option<DeadLetter>, Error> {
        Ok(self
            .lock()
            .letters
            .get(&id)
            .filter(|l| l.status == DeadLetterStatus::Pending)
            .cloned())
    }

    async fn resolve_dead_letter(
        &self,
        tx: &mut InMemoryTransaction,
        id: u64,
    ) -> Result<(), Error> {
        tx.ops.push(Op::Resolve(id));
        Ok(())
    }

    async fn record_replay_failure(&self, id: u64, error: &str) -> Result<(), Error> {
        if let Some(l) = self.lock().letters.get_mut(&id) {
            l.attempts += 1;
            l.error = error.to_owned();
            l.last_failed_at = Utc::now();
        }
        Ok(())
    }

    async fn discard_all_dead_letters(
        &self,
        tx: &mut InMemoryTransaction,
        handler: &str,
        reason: &str,
    ) -> Result<u64, Error> {
        let n = self.pending_dead_letters(handler).await?;
        tx.ops.push(Op::DiscardAll {
            handler: handler.to_owned(),
            reason: reason.to_owned(),
        });
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::limits::MAX_PROJECTION_NAME_BYTES;

    /// The same names are refused here as on Postgres (its projection
    /// tests check the same cases).
    #[tokio::test]
    async fn projection_names_are_checked() {
        let store = InMemoryProjectionStore::new();
        let long = "p".repeat(MAX_PROJECTION_NAME_BYTES + 1);
        for (bad, says) in [("", "empty"), ("a\0b", "NUL"), (long.as_str(), "256 bytes")] {
            match store.init_checkpoint(bad).await {
                Err(Error::InvalidInput(e)) => {
                    assert_eq!(e.field, "projection name");
                    assert!(e.problem.contains(says), "{e}");
                }
                other => panic!("init_checkpoint({bad:?}): expected InvalidInput, got {other:?}"),
            }
            assert!(matches!(
                store.try_acquire(bad).await,
                Err(Error::InvalidInput(_))
            ));
        }
        let longest = "p".repeat(MAX_PROJECTION_NAME_BYTES);
        assert!(store.init_checkpoint(&longest).await.is_ok());
    }
}
