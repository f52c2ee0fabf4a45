use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use chrono::Utc;

use std::ops::RangeBounds;

use crate::store::{
    limits, AppendResult, Backlog, EventStore, ExpectedVersion, LogPosition, PayloadRef, Session,
    VersionRange, Watch, WatchLog,
};
use crate::tenant::TenantId;
use crate::{Envelope, Error, NewEvent, RecordedEvent, SchemaRegistry, VersionConflict};

/// The embedded event store: everything in memory, with exactly the semantics
/// of the Postgres store (the same conformance suite runs against both).
///
/// Cloning is cheap and shares the store; a clone is also its
/// [`Session`].
///
/// ```
/// use annals::{EventStoreExt, ExpectedVersion, InMemoryEventStore, Metadata};
///
/// #[derive(Debug, Clone, PartialEq, annals::Event)]
/// enum CounterEvent { Added(u32) }
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let store = InMemoryEventStore::new();
/// let result = store
///     .append_events("c1", ExpectedVersion::NoStream, &[CounterEvent::Added(2)], &Metadata::new())
///     .await?;
/// assert_eq!(result.version, 1);
/// assert_eq!(store.read_stream_as::<CounterEvent>("c1", ..).await?[0].payload, CounterEvent::Added(2));
/// # Ok::<(), annals::Error>(())
/// # }).unwrap();
/// ```
#[derive(Clone, Debug)]
pub struct InMemoryEventStore {
    shared: Arc<Shared>,
    tenant: TenantId,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    registry: Arc<SchemaRegistry>,
    validate: bool,
    /// The number of events in the log, for watchers.
    appended: tokio::sync::watch::Sender<usize>,
}

#[derive(Debug, Default)]
struct State {
    tenants: HashMap<TenantId, TenantLog>,
    /// Transactions and positions are counted across tenants, as Postgres
    /// counts them across the table.
    next_transaction: u64,
    next_position: u64,
}

/// One tenant's events.
#[derive(Debug, Default)]
struct TenantLog {
    log: Vec<RecordedEvent>,
    streams: HashMap<String, Vec<usize>>,
    event_ids: HashSet<uuid::Uuid>,
}

impl State {
    fn of(&self, tenant: &TenantId) -> Option<&TenantLog> {
        self.tenants.get(tenant)
    }

    /// Every tenant's events after `after`, in log order (an every-tenant
    /// handle's read).
    fn after_in_every_tenant(&self, after: LogPosition) -> Vec<&RecordedEvent> {
        let mut events: Vec<&RecordedEvent> = self
            .tenants
            .values()
            .flat_map(|t| {
                let start = t.log.partition_point(|e| e.log_position <= after);
                &t.log[start..]
            })
            .collect();
        events.sort_by_key(|e| e.log_position);
        events
    }
}

/// A tenant that has no events yet.
static EMPTY: std::sync::LazyLock<TenantLog> = std::sync::LazyLock::new(TenantLog::default);

impl Default for InMemoryEventStore {
    fn default() -> Self {
        Self::new()
    }
}

impl InMemoryEventStore {
    /// An empty store with its own schema registry; validation on.
    pub fn new() -> Self {
        Self::with_registry(Arc::new(SchemaRegistry::new()))
    }

    /// An empty store sharing a schema registry.
    pub fn with_registry(registry: Arc<SchemaRegistry>) -> Self {
        InMemoryEventStore {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                registry,
                validate: true,
                appended: tokio::sync::watch::channel(0).0,
            }),
            tenant: TenantId::default(),
        }
    }

    /// The same store configuration without schema validation on append
    /// (call before appending: the returned store is a new, empty one).
    pub fn without_validation(self) -> Self {
        InMemoryEventStore {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                registry: self.shared.registry.clone(),
                validate: false,
                appended: tokio::sync::watch::channel(0).0,
            }),
            tenant: TenantId::default(),
        }
    }

    /// The shared schema registry.
    pub fn registry_arc(&self) -> Arc<SchemaRegistry> {
        self.shared.registry.clone()
    }

    /// How many events the store holds for its tenant.
    pub fn len(&self) -> usize {
        self.lock().of(&self.tenant).map_or(0, |t| t.log.len())
    }

    /// Whether the store holds no events for its tenant.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // a panic while holding the lock leaves the state consistent: every
        // mutation below happens after all checks
        self.shared.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn append_sync(
        &self,
        stream_id: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, Error> {
        self.tenant.require_one("an append")?;
        limits::check_append(stream_id, &events)?;
        if self.shared.validate {
            self.shared.registry.validate_new(&events)?;
        }
        let mut guard = self.lock();
        let state = &mut *guard;
        let tenant = state.tenants.entry(self.tenant.clone()).or_default();
        let current = tenant
            .streams
            .get(stream_id)
            .and_then(|s| s.last())
            .map(|&i| tenant.log[i].stream_version);
        if !expected.matches(current) {
            return Err(VersionConflict {
                stream_id: stream_id.to_owned(),
                expected,
                actual: current,
            }
            .into());
        }
        let mut batch = HashSet::with_capacity(events.len());
        for e in &events {
            if tenant.event_ids.contains(&e.event_id) || !batch.insert(e.event_id) {
                return Err(Error::DuplicateEventId {
                    event_id: e.event_id,
                });
            }
        }
        let base = current.unwrap_or(0);
        if events.is_empty() {
            return Ok(AppendResult {
                version: base,
                events: Vec::new(),
            });
        }
        state.next_transaction += 1;
        let tx = state.next_transaction;
        let now = Utc::now();
        let mut appended = Vec::with_capacity(events.len());
        for (i, e) in events.into_iter().enumerate() {
            state.next_position += 1;
            let record = Envelope {
                tenant_id: self.tenant.clone(),
                event_id: e.event_id,
                stream_id: stream_id.to_owned(),
                stream_version: base + i as u64 + 1,
                log_position: LogPosition::new(tx, state.next_position),
                event_type: e.event_type,
                schema_version: e.schema_version,
                metadata: e.metadata,
                recorded_at: now,
                payload: e.payload,
            };
            tenant.event_ids.insert(record.event_id);
            let index = tenant.log.len();
            tenant.log.push(record.clone());
            tenant
                .streams
                .entry(stream_id.to_owned())
                .or_default()
                .push(index);
            appended.push(record);
        }
        self.shared.appended.send_modify(|n| *n += 1);
        Ok(AppendResult {
            version: base + appended.len() as u64,
            events: appended,
        })
    }
}

impl InMemoryEventStore {
    /// The events of a stream in `versions` (cloned out of the lock: a
    /// decoder may take its time without blocking appends).
    fn stream_range(&self, stream_id: &str, versions: VersionRange) -> Vec<RecordedEvent> {
        let state = self.lock();
        let state = state.of(&self.tenant).unwrap_or(&EMPTY);
        let Some(indices) = state.streams.get(stream_id) else {
            return Vec::new();
        };
        let skip = usize::try_from(versions.first - 1).unwrap_or(usize::MAX);
        let take = versions
            .count()
            .map_or(usize::MAX, |n| usize::try_from(n).unwrap_or(usize::MAX));
        indices
            .iter()
            .skip(skip)
            .take(take)
            .map(|&i| state.log[i].clone())
            .collect()
    }
}

impl EventStore for InMemoryEventStore {
    type Session = InMemoryEventStore;

    fn registry(&self) -> &SchemaRegistry {
        &self.shared.registry
    }

    fn validates_on_append(&self) -> bool {
        self.shared.validate
    }

    fn tenant_id(&self) -> &TenantId {
        &self.tenant
    }

    fn in_tenant(&self, tenant: TenantId) -> Self {
        InMemoryEventStore {
            shared: self.shared.clone(),
            tenant,
        }
    }

    async fn session(&self) -> Result<InMemoryEventStore, Error> {
        Ok(self.clone())
    }

    async fn append(
        &self,
        stream_id: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, Error> {
        crate::trace::observed_append("memory", stream_id, events, |events| async move {
            self.append_sync(stream_id, expected, events)
        })
        .await
    }

    async fn read_stream_with<T, F>(
        &self,
        stream_id: &str,
        versions: impl RangeBounds<u64> + Send,
        mut decode: F,
    ) -> Result<Vec<Envelope<T>>, Error>
    where
        T: Send,
        F: FnMut(PayloadRef<'_>) -> Result<T, Error> + Send,
    {
        limits::check_stream_id(stream_id)?;
        self.tenant.require_one("a stream read")?;
        self.stream_range(stream_id, VersionRange::new(versions))
            .into_iter()
            .map(|r| {
                let value = decode(payload_ref(&r)).map_err(|e| e.at_position(r.position()))?;
                Ok(r.map(|_| value))
            })
            .collect()
    }

    async fn fold_stream_payloads<F>(
        &self,
        stream_id: &str,
        versions: impl RangeBounds<u64> + Send,
        mut f: F,
    ) -> Result<u64, Error>
    where
        F: FnMut(PayloadRef<'_>) -> Result<(), Error> + Send,
    {
        limits::check_stream_id(stream_id)?;
        self.tenant.require_one("a stream read")?;
        let events = self.stream_range(stream_id, VersionRange::new(versions));
        for r in &events {
            f(payload_ref(r)).map_err(|e| e.at_position(r.position()))?;
        }
        Ok(events.len() as u64)
    }

    async fn read_log(
        &self,
        after: LogPosition,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, Error> {
        let state = self.lock();
        if self.tenant.is_every() {
            return Ok(state
                .after_in_every_tenant(after)
                .into_iter()
                .take(limit)
                .cloned()
                .collect());
        }
        let state = state.of(&self.tenant).unwrap_or(&EMPTY);
        // appends are serialized, so the log is already in (transaction, position) order
        let start = state.log.partition_point(|e| e.log_position <= after);
        Ok(state.log[start..].iter().take(limit).cloned().collect())
    }

    async fn stream_version(&self, stream_id: &str) -> Result<Option<u64>, Error> {
        limits::check_stream_id(stream_id)?;
        self.tenant.require_one("a stream read")?;
        let state = self.lock();
        let state = state.of(&self.tenant).unwrap_or(&EMPTY);
        Ok(state
            .streams
            .get(stream_id)
            .and_then(|s| s.last())
            .map(|&i| state.log[i].stream_version))
    }

    async fn read_event(&self, position: u64) -> Result<Option<RecordedEvent>, Error> {
        let state = self.lock();
        let found = |log: &TenantLog| {
            // positions grow with the log
            log.log
                .binary_search_by_key(&position, |e| e.log_position.position)
                .ok()
                .map(|i| log.log[i].clone())
        };
        if self.tenant.is_every() {
            return Ok(state.tenants.values().find_map(found));
        }
        Ok(found(state.of(&self.tenant).unwrap_or(&EMPTY)))
    }

    async fn backlog(&self, after: LogPosition) -> Result<Backlog, Error> {
        let state = self.lock();
        let rest: Vec<&RecordedEvent> = if self.tenant.is_every() {
            state.after_in_every_tenant(after)
        } else {
            let log = &state.of(&self.tenant).unwrap_or(&EMPTY).log;
            let start = log.partition_point(|e| e.log_position <= after);
            log[start..].iter().collect()
        };
        Ok(Backlog {
            events: rest.len() as u64,
            oldest_recorded_at: rest.iter().map(|e| e.recorded_at).min(),
        })
    }
}

impl Session for InMemoryEventStore {
    async fn fold_stream_payloads<F>(
        &mut self,
        stream_id: &str,
        versions: impl RangeBounds<u64> + Send,
        f: F,
    ) -> Result<u64, Error>
    where
        F: FnMut(PayloadRef<'_>) -> Result<(), Error> + Send,
    {
        EventStore::fold_stream_payloads(&*self, stream_id, versions, f).await
    }

    async fn append(
        &mut self,
        stream_id: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, Error> {
        EventStore::append(&*self, stream_id, expected, events).await
    }
}

fn payload_ref(r: &RecordedEvent) -> PayloadRef<'_> {
    PayloadRef {
        stream_version: r.stream_version,
        event_type: &r.event_type,
        schema_version: r.schema_version,
        payload: r.payload.get(),
        raw: Some(&r.payload),
    }
}

/// Wakes readers of an [`InMemoryEventStore`] when events are appended.
#[derive(Debug)]
pub struct MemoryWatcher {
    receiver: tokio::sync::watch::Receiver<usize>,
}

impl Watch for MemoryWatcher {
    async fn wait(&mut self, timeout: std::time::Duration) -> bool {
        match tokio::time::timeout(timeout, self.receiver.changed()).await {
            Ok(Ok(())) => true,
            // the store is gone: nothing will ever be appended
            Ok(Err(_)) => {
                tokio::time::sleep(timeout).await;
                false
            }
            Err(_) => false,
        }
    }
}

impl WatchLog for InMemoryEventStore {
    type Watcher = MemoryWatcher;

    async fn watch(&self) -> Result<MemoryWatcher, Error> {
        let mut receiver = self.shared.appended.subscribe();
        receiver.mark_unchanged();
        Ok(MemoryWatcher { receiver })
    }
}
