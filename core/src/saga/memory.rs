use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{
    CommandOutcome, OutboxEntry, SagaChange, SagaError, SagaProgress, SagaRecord, SagaStatus,
    SagaStore,
};
use crate::projection::InMemoryConn;
use crate::tenant::PerTenant;
use crate::TenantId;

/// Sagas and their outbox in memory: the embedded default, with the
/// semantics of the Postgres saga store (optimistic versions, one saga per
/// (type, correlation id), idempotency keys recorded once, leases on
/// claimed commands).
///
/// Cloning is cheap and shares the sagas. Its transactional methods run on
/// [`InMemoryConn`], which carries nothing: every write applies at once.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// use annals::{InMemorySagaStore, SagaStore};
/// let store = InMemorySagaStore::new();
/// assert!(store.list_unfinished(None, None, 10).await?.is_empty());
/// # Ok::<(), annals::saga::SagaError>(())
/// # }).unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct InMemorySagaStore {
    /// The tenant's sagas.
    state: Arc<Mutex<State>>,
    tenant: TenantId,
    /// Every tenant's, for [`SagaStore::in_tenant`].
    tenants: PerTenant<State>,
}

impl Default for InMemorySagaStore {
    fn default() -> Self {
        Self::new()
    }
}

#[derive(Debug, Default)]
struct State {
    sagas: HashMap<Uuid, SagaRecord>,
    by_correlation: HashMap<(String, String), Uuid>,
    /// Entry `id` is at index `id - 1`.
    outbox: Vec<OutboxEntry>,
    keys: HashSet<String>,
}

const CANCELLED: &str =
    "cancelled: the saga started compensating before this command was delivered";

fn pending(e: &OutboxEntry) -> bool {
    e.dispatched_at.is_none() && e.failed_at.is_none()
}

fn after(now: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| now.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

impl InMemorySagaStore {
    /// An empty store, scoped to the default tenant.
    pub fn new() -> Self {
        let tenants = PerTenant::new();
        let tenant = TenantId::default();
        InMemorySagaStore {
            state: tenants.of(&tenant),
            tenant,
            tenants,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // a panic elsewhere cannot leave the maps half-written: every
        // operation validates before it writes
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl State {
    /// See [`SagaStore::attempted_steps`].
    fn attempted_steps(&self, saga_id: Uuid) -> Vec<u32> {
        let mut steps: Vec<u32> = self
            .outbox
            .iter()
            .filter(|e| e.saga_id == saga_id && !e.compensation)
            .filter(|e| e.dispatched_at.is_some() || (e.failed_at.is_none() && e.attempts > 0))
            .map(|e| e.step)
            .collect();
        steps.sort_unstable();
        steps.dedup();
        steps
    }

    fn apply(&mut self, change: &SagaChange, now: DateTime<Utc>) -> Result<(), SagaError> {
        let new = &change.record;
        let key = (new.saga_type.clone(), new.correlation_id.clone());
        let mut row = new.clone();
        if change.insert {
            if self.by_correlation.contains_key(&key) || self.sagas.contains_key(&new.saga_id) {
                return Err(SagaError::AlreadyExists {
                    saga_type: new.saga_type.clone(),
                    correlation_id: new.correlation_id.clone(),
                });
            }
            row.version = 1;
            row.started_at = now;
            row.retry_count = 0;
            row.completed_at = None;
        } else {
            let Some(stored) = self.sagas.get(&new.saga_id) else {
                return Err(SagaError::Conflict {
                    saga_id: new.saga_id,
                    expected: new.version,
                });
            };
            if stored.version != new.version {
                return Err(SagaError::Conflict {
                    saga_id: new.saga_id,
                    expected: new.version,
                });
            }
            row.version = stored.version + 1;
            row.started_at = stored.started_at;
            row.retry_count = stored.retry_count;
            row.completed_at = stored.completed_at;
        }
        row.updated_at = now;
        row.deadline_at = change.deadline.map(|d| after(now, d));
        if row.status.is_finished() {
            row.completed_at.get_or_insert(now);
        } else {
            row.completed_at = None;
        }
        if change.cancel_pending {
            for e in &mut self.outbox {
                if e.saga_id == row.saga_id && !e.compensation && e.attempts == 0 && pending(e) {
                    e.failed_at = Some(now);
                    e.last_error = Some(CANCELLED.to_owned());
                }
            }
        }
        for c in &change.commands {
            if !self.keys.insert(c.idempotency_key.clone()) {
                continue;
            }
            let id = self.outbox.len() as u64 + 1;
            self.outbox.push(OutboxEntry {
                id,
                saga_id: row.saga_id,
                saga_type: row.saga_type.clone(),
                idempotency_key: c.idempotency_key.clone(),
                command_type: c.command_type.clone(),
                command: c.command.clone(),
                step: c.step,
                compensation: c.compensation,
                trace: c.trace.clone(),
                attempts: 0,
                last_error: None,
                created_at: now,
                dispatched_at: None,
                failed_at: None,
                next_attempt_at: now,
            });
        }
        self.by_correlation.insert(key, row.saga_id);
        self.sagas.insert(row.saga_id, row);
        Ok(())
    }
}

impl SagaStore for InMemorySagaStore {
    type Conn = InMemoryConn;

    fn tenant_id(&self) -> &TenantId {
        &self.tenant
    }

    fn in_tenant(&self, tenant: TenantId) -> Self {
        InMemorySagaStore {
            state: self.tenants.of(&tenant),
            tenant,
            tenants: self.tenants.clone(),
        }
    }

    async fn forget_subject(&self, subject: &str) -> Result<u64, SagaError> {
        use super::forget_marked;
        crate::store::limits::check_subject(subject)?;
        let mut state = self.lock();
        let State { sagas, outbox, .. } = &mut *state;
        let mut changed = 0;
        for saga in sagas
            .values_mut()
            .filter(|s| s.subject.as_deref() == Some(subject))
        {
            let mut erased = forget_marked(&mut saga.data);
            for entry in outbox.iter_mut().filter(|e| e.saga_id == saga.saga_id) {
                erased += forget_marked(&mut entry.command);
            }
            if erased > 0 {
                changed += 1;
            }
        }
        Ok(changed)
    }

    async fn load(
        &self,
        _tx: &mut InMemoryConn,
        saga_type: &str,
        correlation_id: &str,
    ) -> Result<Option<SagaRecord>, SagaError> {
        self.find_by_correlation_id(saga_type, correlation_id).await
    }

    async fn save(&self, _tx: &mut InMemoryConn, change: &SagaChange) -> Result<(), SagaError> {
        self.lock().apply(change, Utc::now())
    }

    async fn attempted_steps(
        &self,
        _tx: &mut InMemoryConn,
        saga_id: Uuid,
    ) -> Result<Vec<u32>, SagaError> {
        Ok(self.lock().attempted_steps(saga_id))
    }

    async fn find_by_correlation_id(
        &self,
        saga_type: &str,
        correlation_id: &str,
    ) -> Result<Option<SagaRecord>, SagaError> {
        let state = self.lock();
        Ok(state
            .by_correlation
            .get(&(saga_type.to_owned(), correlation_id.to_owned()))
            .and_then(|id| state.sagas.get(id))
            .cloned())
    }

    async fn get(&self, saga_id: Uuid) -> Result<Option<SagaRecord>, SagaError> {
        Ok(self.lock().sagas.get(&saga_id).cloned())
    }

    async fn list_unfinished(
        &self,
        saga_type: Option<&str>,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<Vec<SagaRecord>, SagaError> {
        let state = self.lock();
        let mut out: Vec<SagaRecord> = state
            .sagas
            .values()
            .filter(|s| !s.status.is_finished())
            .filter(|s| saga_type.is_none_or(|t| s.saga_type == t))
            .filter(|s| after.is_none_or(|a| s.saga_id > a))
            .cloned()
            .collect();
        out.sort_by_key(|s| s.saga_id);
        out.truncate(limit);
        Ok(out)
    }

    async fn commands_of(&self, saga_id: Uuid) -> Result<Vec<OutboxEntry>, SagaError> {
        Ok(self
            .lock()
            .outbox
            .iter()
            .filter(|e| e.saga_id == saga_id)
            .cloned()
            .collect())
    }

    async fn pending_commands(&self, saga_type: &str) -> Result<u64, SagaError> {
        Ok(self
            .lock()
            .outbox
            .iter()
            .filter(|e| e.saga_type == saga_type && pending(e))
            .count() as u64)
    }

    async fn count_unfinished(&self, saga_type: &str) -> Result<Vec<(SagaStatus, u64)>, SagaError> {
        let state = self.lock();
        let mut counts: Vec<(SagaStatus, u64)> = Vec::new();
        for s in state.sagas.values() {
            if s.saga_type != saga_type || s.status.is_finished() {
                continue;
            }
            match counts.iter_mut().find(|(status, _)| *status == s.status) {
                Some((_, n)) => *n += 1,
                None => counts.push((s.status, 1)),
            }
        }
        counts.sort_by_key(|(s, _)| s.as_str());
        Ok(counts)
    }

    async fn claim_commands(
        &self,
        saga_type: &str,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<OutboxEntry>, SagaError> {
        let now = Utc::now();
        let mut state = self.lock();
        // a saga's compensations wait until its forward commands are resolved
        let unresolved: HashSet<Uuid> = state
            .outbox
            .iter()
            .filter(|e| !e.compensation && pending(e))
            .map(|e| e.saga_id)
            .collect();
        let mut due: Vec<usize> = state
            .outbox
            .iter()
            .enumerate()
            .filter(|(_, e)| e.saga_type == saga_type && pending(e) && e.next_attempt_at <= now)
            .filter(|(_, e)| !(e.compensation && unresolved.contains(&e.saga_id)))
            .map(|(i, _)| i)
            .collect();
        due.sort_by_key(|&i| (state.outbox[i].next_attempt_at, i));
        due.truncate(limit);
        due.sort_unstable();
        let until = after(now, lease);
        Ok(due
            .into_iter()
            .map(|i| {
                let e = &mut state.outbox[i];
                e.attempts = e.attempts.saturating_add(1);
                e.next_attempt_at = until;
                e.clone()
            })
            .collect())
    }

    async fn mark_delivered(&self, ids: &[u64]) -> Result<(), SagaError> {
        let now = Utc::now();
        let mut state = self.lock();
        for &id in ids {
            if let Some(e) = state.outbox.get_mut((id as usize).wrapping_sub(1)) {
                if pending(e) && !e.compensation {
                    e.dispatched_at = Some(now);
                }
            }
        }
        Ok(())
    }

    async fn record_outcome<F>(
        &self,
        command: &OutboxEntry,
        outcome: CommandOutcome,
        decide: F,
    ) -> Result<(), SagaError>
    where
        F: FnOnce(SagaRecord, SagaProgress) -> Result<Option<SagaChange>, SagaError> + Send,
    {
        let now = Utc::now();
        let mut state = self.lock();
        let index = (command.id as usize).wrapping_sub(1);
        let Some(entry) = state.outbox.get_mut(index) else {
            return Err(SagaError::Corrupted {
                message: format!("no outbox command with id {}", command.id),
            });
        };
        let still_pending = pending(entry);
        match &outcome {
            CommandOutcome::Retry {
                error,
                after: delay,
            } => {
                if still_pending {
                    entry.last_error = Some(error.clone());
                    entry.next_attempt_at = after(now, *delay);
                }
                if let Some(saga) = state.sagas.get_mut(&command.saga_id) {
                    saga.retry_count = saga.retry_count.saturating_add(1);
                    saga.error_message = Some(format!(
                        "command `{}` attempt {} failed: {error}",
                        command.command_type, command.attempts
                    ));
                    saga.updated_at = now;
                }
                return Ok(());
            }
            CommandOutcome::Delivered => {
                if still_pending {
                    entry.dispatched_at = Some(now);
                }
            }
            CommandOutcome::Abandoned { error } => {
                if still_pending {
                    entry.failed_at = Some(now);
                    entry.last_error = Some(error.clone());
                }
            }
        }
        let Some(saga) = state.sagas.get(&command.saga_id).cloned() else {
            return Ok(());
        };
        let progress = SagaProgress {
            outstanding: state
                .outbox
                .iter()
                .filter(|e| e.saga_id == command.saga_id && pending(e))
                .count() as u64,
            step_delivered: state
                .outbox
                .iter()
                .filter(|e| {
                    e.saga_id == command.saga_id
                        && e.step == command.step
                        && e.compensation == command.compensation
                        && e.dispatched_at.is_some()
                })
                .count() as u64,
            attempted_steps: state.attempted_steps(command.saga_id),
        };
        if let Some(change) = decide(saga, progress)? {
            state.apply(&change, now)?;
        }
        Ok(())
    }

    async fn fire_due_timeouts<F>(
        &self,
        saga_type: &str,
        limit: usize,
        mut decide: F,
    ) -> Result<usize, SagaError>
    where
        F: FnMut(SagaRecord, &[u32]) -> Result<Option<SagaChange>, SagaError> + Send,
    {
        let now = Utc::now();
        let mut state = self.lock();
        let mut due: Vec<SagaRecord> = state
            .sagas
            .values()
            .filter(|s| {
                s.saga_type == saga_type
                    && s.status == SagaStatus::Running
                    && s.deadline_at.is_some_and(|d| d <= now)
            })
            .cloned()
            .collect();
        due.sort_by_key(|s| (s.deadline_at, s.saga_id));
        due.truncate(limit);
        // decide everything first: a failure leaves the store untouched, as
        // a rolled-back transaction would
        let mut changes = Vec::with_capacity(due.len());
        for saga in due {
            let attempted = state.attempted_steps(saga.saga_id);
            if let Some(change) = decide(saga, &attempted)? {
                changes.push(change);
            }
        }
        for change in &changes {
            state.apply(change, now)?;
        }
        Ok(changes.len())
    }
}
