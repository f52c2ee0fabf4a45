//! The Postgres event store.

use std::ops::RangeBounds;
use std::sync::Arc;
use std::time::Duration;

use annals_core::event::NewEvent;
use annals_core::store::{
    limits, AppendResult, Backlog, ExpectedVersion, Horizon, LogPosition, PayloadRef, Session,
    VersionRange, Watch, WatchLog,
};
use annals_core::{Envelope, Error, Event, EventStore, RecordedEvent, SchemaRegistry, TenantId};
use chrono::{DateTime, Utc};
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgListener, PgRow};
use sqlx::{PgPool, Postgres, Row};

use crate::error::{db, db_error};
use crate::keys::{KeyMap, SchemaKeys};
use crate::rows::{decode_event_row, next, unreadable_event_row};
use crate::sql;

mod append;
mod group;
mod read;
mod wake;

use group::GroupCommit;
pub use group::DEFAULT_MAX_BATCH;
use wake::Wake;

/// The channel on which stores notify other processes' readers after their
/// appends commit (see [`PgEventStore::watch`]).
pub const EVENTS_CHANNEL: &str = "annals_events";

/// The Postgres event store.
///
/// Cloning is cheap (the pool and registry are shared).
///
/// ```no_run
/// use annals::postgres::{connect, migrate, PgEventStore};
/// use annals::{EventStoreExt, ExpectedVersion, Metadata};
///
/// #[derive(Debug, Clone, PartialEq, annals::Event)]
/// enum LeadEvent { Created(String) }
///
/// # async fn run() -> Result<(), annals::Error> {
/// let pool = connect("postgres://app@localhost/clinic").await?;
/// migrate(&pool).await?;
/// let store = PgEventStore::builder(pool).register::<LeadEvent>().build().await?;
/// store
///     .append_events("lead-1", ExpectedVersion::NoStream, &[LeadEvent::Created("Ana".into())], &Metadata::new())
///     .await?;
/// let events = store.read_stream_as::<LeadEvent>("lead-1", ..).await?;
/// assert_eq!(events.len(), 1);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct PgEventStore {
    pool: PgPool,
    registry: Arc<SchemaRegistry>,
    validate: bool,
    keys: Arc<SchemaKeys>,
    /// Wakes log readers after appends commit.
    wake: Arc<Wake>,
    /// `None`: group commit switched off.
    group: Option<Arc<GroupCommit>>,
    /// The tenant whose rows this handle reads and writes.
    tenant: TenantId,
}

type Registration = Box<dyn FnOnce(&SchemaRegistry) -> Result<(), Error> + Send>;

/// Builds a [`PgEventStore`]: registers event types and records their
/// schemas in the database, refusing to start on a changed schema.
///
/// ```no_run
/// # #[derive(annals::Event)] enum LeadEvent { Created(String) }
/// # #[derive(annals::Event)] enum VisitEvent { Booked(String) }
/// # async fn run(pool: annals::postgres::sqlx::PgPool) -> Result<(), annals::Error> {
/// use annals::postgres::PgEventStore;
///
/// let store = PgEventStore::builder(pool)
///     .register::<LeadEvent>()
///     .register::<VisitEvent>()
///     .build()
///     .await?; // Error::SchemaChanged if a stored schema changed without a version bump
/// # Ok(()) }
/// ```
pub struct PgEventStoreBuilder {
    pool: PgPool,
    registry: Arc<SchemaRegistry>,
    validate: bool,
    /// The bound on a group commit's appends; 0: no group commit.
    max_batch: usize,
    registrations: Vec<Registration>,
}

impl std::fmt::Debug for PgEventStoreBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgEventStoreBuilder")
            .field("validate", &self.validate)
            .field("max_batch", &self.max_batch)
            .field("registrations", &self.registrations.len())
            .finish_non_exhaustive()
    }
}

impl PgEventStoreBuilder {
    /// Registers an event type: its schemas are validated against (and
    /// recorded in) the database's schema registry at [`build`](Self::build).
    pub fn register<E: Event>(mut self) -> Self {
        self.registrations
            .push(Box::new(|registry| registry.register::<E>()));
        self
    }

    /// Uses a shared schema registry instead of a new one.
    pub fn registry(mut self, registry: Arc<SchemaRegistry>) -> Self {
        self.registry = registry;
        self
    }

    /// Switches schema validation on append off (it is on by default).
    pub fn without_validation(mut self) -> Self {
        self.validate = false;
        self
    }

    /// Group commit (on by default): concurrent appends to different
    /// streams, from this store and its clones, are written together, up
    /// to `max_batch` of them in one statement and one transaction, so they
    /// share one WAL flush. An append that finds no other waiting is
    /// written at once, alone (no timer, no added wait). Each caller still
    /// gets its own result or its own [`VersionConflict`], and each append
    /// stays all-or-nothing. Appends in a caller's transaction
    /// ([`PgEventStore::append_in`]) and appends with
    /// [`ExpectedVersion::Any`] are never grouped. The store opens one
    /// connection of its own for it, beside the pool. `max_batch` 0 (or
    /// [`without_group_commit`](Self::without_group_commit)) switches it
    /// off: each append then commits alone on a pool connection.
    ///
    /// Measured in `benches/durable.rs` on a durable server; the default
    /// bound is [`DEFAULT_MAX_BATCH`]. The batch sizes are the histogram
    /// [`annals::metrics::APPEND_BATCH_SIZE`](annals_core::metrics::APPEND_BATCH_SIZE).
    ///
    /// [`VersionConflict`]: annals_core::VersionConflict
    pub fn group_commit(mut self, max_batch: usize) -> Self {
        self.max_batch = max_batch;
        self
    }

    /// Switches group commit off (see [`group_commit`](Self::group_commit)).
    pub fn without_group_commit(self) -> Self {
        self.group_commit(0)
    }

    /// Registers the event types, checks their schemas against those recorded
    /// in the database and records the new ones.
    ///
    /// Fails with [`Error::SchemaChanged`] when the code's schema for a stored
    /// (type, version) differs from the recorded one: bump the version.
    pub async fn build(self) -> Result<PgEventStore, Error> {
        for r in self.registrations {
            r(&self.registry)?;
        }
        let options = (*self.pool.connect_options()).clone();
        let wake = Arc::new(Wake::new(options.clone()));
        let group = (self.max_batch > 0)
            .then(|| Arc::new(GroupCommit::new(options, self.max_batch, wake.clone())));
        let store = PgEventStore {
            pool: self.pool,
            registry: self.registry,
            validate: self.validate,
            keys: Arc::default(),
            wake,
            group,
            tenant: TenantId::default(),
        };
        crate::tenancy::check_sees_every_tenant(&store.pool).await?;
        store.sync_schemas().await?;
        Ok(store)
    }
}

impl PgEventStore {
    /// A builder for a store on `pool` (run [`migrate`](crate::migrate) first).
    pub fn builder(pool: PgPool) -> PgEventStoreBuilder {
        PgEventStoreBuilder {
            pool,
            registry: Arc::new(SchemaRegistry::new()),
            validate: true,
            max_batch: DEFAULT_MAX_BATCH,
            registrations: Vec::new(),
        }
    }

    /// The connection pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The schema keys known now (see [`crate::keys`]).
    pub(crate) fn schema_keys(&self) -> Arc<KeyMap> {
        self.keys.snapshot()
    }

    /// The shared schema registry.
    pub fn registry_arc(&self) -> Arc<SchemaRegistry> {
        self.registry.clone()
    }

    /// Registers an event type after start-up and records its schemas,
    /// with the same breaking-change check as the builder.
    pub async fn register<E: Event>(&self) -> Result<(), Error> {
        self.registry.register::<E>()?;
        self.sync_schemas().await
    }

    /// Compares every schema in the registry with the recorded ones and
    /// records those not yet stored.
    pub async fn sync_schemas(&self) -> Result<(), Error> {
        let schemas = self.registry.schemas();
        if schemas.is_empty() {
            return Ok(());
        }
        let types: Vec<String> = schemas.iter().map(|s| s.event_type.clone()).collect();
        let versions: Vec<i32> = schemas.iter().map(|s| s.version as i32).collect();
        let fingerprints: Vec<String> = schemas.iter().map(|s| s.fingerprint.clone()).collect();
        let bodies: Vec<String> = schemas.iter().map(|s| s.schema.to_string()).collect();
        let rust_types: Vec<String> = schemas.iter().map(|s| s.rust_type.to_owned()).collect();
        let rows: Vec<(String, i32, String)> = sqlx::query_as(sql::RECORD_SCHEMAS)
            .bind(&types)
            .bind(&versions)
            .bind(&fingerprints)
            .bind(&bodies)
            .bind(&rust_types)
            .fetch_all(&self.pool)
            .await
            .map_err(db("recording event schemas"))?;
        self.registry.check_against(
            rows.iter()
                .map(|(t, v, f)| (t.as_str(), (*v).max(0) as u32, f.as_str())),
        )?;
        self.learn_registered_keys().await
    }

    /// Learns the schema keys of every (type, version) the registry can
    /// decode (every version up to the current one: old ones may have no
    /// schema of their own, only an upcaster), computed by Postgres with the
    /// expression of the `annals_events.schema_key` column, so that lean
    /// reads of them need no fallback.
    async fn learn_registered_keys(&self) -> Result<(), Error> {
        let mut pairs = std::collections::BTreeSet::new();
        for schema in self.registry.schemas() {
            let current = self
                .registry
                .current_version(&schema.event_type)
                .unwrap_or(schema.version);
            for v in 1..=current.max(schema.version).min(i32::MAX as u32) {
                pairs.insert((schema.event_type.clone(), v as i32));
            }
        }
        let (types, versions): (Vec<String>, Vec<i32>) = pairs.into_iter().unzip();
        let rows: Vec<(String, i32, i64)> = sqlx::query_as(sql::SCHEMA_KEYS)
            .bind(&types)
            .bind(&versions)
            .fetch_all(&self.pool)
            .await
            .map_err(db("computing the schema keys of the registered types"))?;
        self.keys
            .learn(rows.iter().map(|(t, v, key)| (*key, t.as_str(), *v)));
        Ok(())
    }

    /// Appends inside the caller's transaction (or on any connection), so a
    /// command can append and write other rows atomically. Same semantics as
    /// [`EventStore::append`]; nothing is visible before the caller commits.
    ///
    /// The store does not see that commit, so it wakes no reader: call
    /// [`notify_appended`](Self::notify_appended) after committing, or live
    /// readers find the events at their next poll. Never part of a group
    /// commit.
    pub async fn append_in(
        &self,
        conn: &mut sqlx::PgConnection,
        stream_id: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, Error> {
        annals_core::trace::observed_append("postgres", stream_id, events, |events| {
            self.append_on(conn, false, stream_id, expected, events)
        })
        .await
    }

    /// The tenant of an event row: the handle's, or for an every-tenant
    /// handle the row's own (the column after the envelope's).
    fn tenant_of(&self, row: &PgRow) -> Result<TenantId, Error> {
        if !self.tenant.is_every() {
            return Ok(self.tenant.clone());
        }
        let stored: &str = get(row, "tenant_id")?;
        TenantId::new(stored).map_err(|e| Error::CorruptedRow {
            position: get::<i64>(row, "position").ok().map(|p| p.max(0) as u64),
            message: format!("the event's tenant_id is not a tenant id: {e}"),
        })
    }

    /// A connection from the pool; `context` names the wait in the error.
    pub(crate) async fn checkout(
        &self,
        context: &'static str,
    ) -> Result<PoolConnection<Postgres>, Error> {
        self.pool.acquire().await.map_err(db(context))
    }

    /// How far the snapshot horizon holds log readers back. Seeing other
    /// sessions' transaction start times needs the `pg_read_all_stats` role
    /// (or superuser); without it `oldest_open_since` may be `None`.
    pub async fn horizon(&self) -> Result<Horizon, Error> {
        let q = if self.tenant.is_every() {
            sqlx::query(sql::HORIZON_EVERY)
        } else {
            sqlx::query(sql::HORIZON).bind(self.tenant.as_str())
        };
        let row = q
            .fetch_one(&self.pool)
            .await
            .map_err(db("reading the snapshot horizon"))?;
        let xmin: i64 = get(&row, "xmin")?;
        let oldest: Option<DateTime<Utc>> = get(&row, "oldest")?;
        let now: DateTime<Utc> = get(&row, "now")?;
        let held: i64 = get(&row, "held")?;
        let lag_seconds = oldest
            .map(|o| ((now - o).num_milliseconds().max(0) as f64) / 1000.0)
            .unwrap_or(0.0);
        Ok(Horizon {
            xmin: xmin as u64,
            oldest_open_since: oldest,
            lag_seconds,
            events_held_back: held.max(0) as u64,
        })
    }

    /// Wakes log readers as an append of this store does once it has
    /// committed: this process' watchers at once, other processes' through
    /// a notification on [`EVENTS_CHANNEL`]. For events appended with
    /// [`append_in`](Self::append_in), after the caller's commit.
    pub fn notify_appended(&self) {
        self.wake.appended();
    }

    /// A watcher that wakes after events are appended: at once for appends
    /// of this store (and its clones), through LISTEN on [`EVENTS_CHANNEL`]
    /// for other processes' appends, which their store notifies after the
    /// commit; polling is the fallback (for rows written without a store).
    pub async fn watch(&self) -> Result<LogWatcher, Error> {
        let local = self.wake.subscribe();
        let mut listener = PgListener::connect_with(&self.pool)
            .await
            .map_err(db("connecting the event listener"))?;
        listener
            .listen(EVENTS_CHANNEL)
            .await
            .map_err(db("listening for appended events"))?;
        Ok(LogWatcher {
            listener,
            local: Some(local),
            wake: self.wake.clone(),
        })
    }
}

/// A session of the [`PgEventStore`]: one connection checked out of its
/// pool until the session is dropped. A command loads and appends on it
/// (one checkout per command: a checkout pings the connection, and so does
/// its return).
#[derive(Debug)]
pub struct PgSession {
    store: PgEventStore,
    conn: PoolConnection<Postgres>,
}

impl PgSession {
    /// The store the session belongs to.
    pub fn store(&self) -> &PgEventStore {
        &self.store
    }

    /// The session's connection (for statements of the application's own
    /// beside a command's).
    pub fn connection(&mut self) -> &mut sqlx::PgConnection {
        &mut self.conn
    }
}

impl Session for PgSession {
    async fn fold_stream_payloads<F>(
        &mut self,
        stream_id: &str,
        versions: impl RangeBounds<u64> + Send,
        f: F,
    ) -> Result<u64, Error>
    where
        F: FnMut(PayloadRef<'_>) -> Result<(), Error> + Send,
    {
        self.store
            .fold_on(&mut self.conn, stream_id, VersionRange::new(versions), f)
            .await
    }

    async fn append(
        &mut self,
        stream_id: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, Error> {
        annals_core::trace::observed_append("postgres", stream_id, events, |events| {
            self.store
                .append_committed(Some(&mut self.conn), stream_id, expected, events)
        })
        .await
    }
}

/// Wakes log readers when events are appended.
#[derive(Debug)]
pub struct LogWatcher {
    listener: PgListener,
    /// This process' wake-ups (`None` once the store is gone).
    local: Option<tokio::sync::watch::Receiver<u64>>,
    /// To tell the store's own notifications from other processes'.
    wake: Arc<Wake>,
}

impl Watch for LogWatcher {
    /// Waits until an append commits or `poll` elapses, whichever is first.
    /// Returns `true` when woken by an append (of this process, or notified
    /// by another). A lost connection is re-established by the listener;
    /// waiting for other processes then falls back to polling.
    async fn wait(&mut self, poll: Duration) -> bool {
        let (local, listener, wake) = (&mut self.local, &mut self.listener, &self.wake);
        let woken = tokio::time::timeout(poll, async {
            loop {
                let changed = async {
                    match local.as_mut() {
                        Some(local) => local.changed().await.is_ok(),
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    alive = changed => return Wakeup::Local { alive },
                    notified = listener.recv() => match notified {
                        // the store's own notifier: its append woke this
                        // watcher already
                        Ok(n) if wake.is_own(n.process_id()) => continue,
                        Ok(_) => return Wakeup::Notified(Ok(())),
                        Err(e) => return Wakeup::Notified(Err(e)),
                    },
                }
            }
        })
        .await;
        match woken {
            Ok(Wakeup::Local { alive: true }) => true,
            Ok(Wakeup::Local { alive: false }) => {
                // the store was dropped: only notifications wake from now on
                self.local = None;
                false
            }
            Ok(Wakeup::Notified(Ok(()))) => {
                // drain notifications that arrived together
                while self.listener.next_buffered().is_some() {}
                true
            }
            Ok(Wakeup::Notified(Err(e))) => {
                tracing::warn!(error = %e, "event listener failed; falling back to polling");
                tokio::time::sleep(poll).await;
                false
            }
            Err(_) => false,
        }
    }
}

/// What ended a [`LogWatcher`]'s wait.
enum Wakeup {
    /// An append of this process (`alive`: the store still exists).
    Local { alive: bool },
    /// A notification from another process, or the listener's failure.
    Notified(Result<(), sqlx::Error>),
}

fn get<'r, T>(row: &'r PgRow, column: &str) -> Result<T, Error>
where
    T: sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
{
    row.try_get(column)
        .map_err(|e| db_error("reading a row", e))
}

/// A count or a version as Postgres' `int8`.
pub(crate) fn int8(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The `LIMIT` of a stream read: how many versions `range` covers (`None`:
/// no limit).
pub(crate) fn limit_of(range: VersionRange) -> Option<i64> {
    range.count().map(int8)
}

impl EventStore for PgEventStore {
    type Session = PgSession;

    fn registry(&self) -> &SchemaRegistry {
        &self.registry
    }

    fn validates_on_append(&self) -> bool {
        self.validate
    }

    fn tenant_id(&self) -> &TenantId {
        &self.tenant
    }

    fn in_tenant(&self, tenant: TenantId) -> Self {
        PgEventStore {
            tenant,
            ..self.clone()
        }
    }

    async fn session(&self) -> Result<PgSession, Error> {
        Ok(PgSession {
            store: self.clone(),
            conn: self.checkout("acquiring a connection").await?,
        })
    }

    async fn append(
        &self,
        stream_id: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, Error> {
        // timed with the checkout: a starved pool shows in the metric
        annals_core::trace::observed_append("postgres", stream_id, events, |events| {
            self.append_committed(None, stream_id, expected, events)
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
        let range = VersionRange::new(versions);
        if range.is_empty() {
            return Ok(Vec::new());
        }
        let mut rows = sqlx::query(sql::READ_STREAM)
            .bind(stream_id)
            .bind(int8(range.first))
            .bind(limit_of(range))
            .bind(self.tenant.as_str())
            .fetch(&self.pool);
        let mut out = Vec::new();
        while let Some(row) = next(&mut rows).await {
            let row = row.map_err(db("reading a stream"))?;
            out.push(decode_event_row(&row, &self.tenant, &mut decode)?);
        }
        Ok(out)
    }

    async fn fold_stream_payloads<F>(
        &self,
        stream_id: &str,
        versions: impl RangeBounds<u64> + Send,
        f: F,
    ) -> Result<u64, Error>
    where
        F: FnMut(PayloadRef<'_>) -> Result<(), Error> + Send,
    {
        let mut conn = self
            .checkout("acquiring a connection to read a stream")
            .await?;
        self.fold_on(&mut conn, stream_id, VersionRange::new(versions), f)
            .await
    }

    async fn read_log(
        &self,
        after: LogPosition,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, Error> {
        let every = self.tenant.is_every();
        let q = sqlx::query(if every {
            sql::READ_LOG_EVERY
        } else {
            sql::READ_LOG
        })
        .bind(after.transaction_id.to_string())
        .bind(int8(after.position))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX));
        let q = if every {
            q
        } else {
            q.bind(self.tenant.as_str())
        };
        let rows = q
            .fetch_all(&self.pool)
            .await
            .map_err(db("reading the global log"))?;
        let mut events = Vec::with_capacity(rows.len());
        for row in &rows {
            let decoded = self
                .tenant_of(row)
                .and_then(|tenant| decode_event_row(row, &tenant, raw_payload));
            match decoded {
                Ok(event) => events.push(event),
                // the events before an unreadable one first; then, read
                // from there, the unreadable one alone, as its error
                Err(_) if !events.is_empty() => break,
                Err(problem) => {
                    let tenant = self.tenant_of(row).unwrap_or_default();
                    return Err(unreadable_event_row(row, &tenant, problem));
                }
            }
        }
        Ok(events)
    }

    async fn stream_version(&self, stream_id: &str) -> Result<Option<u64>, Error> {
        limits::check_stream_id(stream_id)?;
        self.tenant.require_one("a stream read")?;
        let mut conn = self.checkout("acquiring a connection").await?;
        read::stream_version_on(&mut conn, &self.tenant, stream_id).await
    }

    async fn read_event(&self, position: u64) -> Result<Option<RecordedEvent>, Error> {
        let q = if self.tenant.is_every() {
            sqlx::query(sql::READ_EVENT_EVERY).bind(int8(position))
        } else {
            sqlx::query(sql::READ_EVENT)
                .bind(int8(position))
                .bind(self.tenant.as_str())
        };
        let row = q
            .fetch_optional(&self.pool)
            .await
            .map_err(db("reading an event by position"))?;
        row.as_ref()
            .map(|row| decode_event_row(row, &self.tenant_of(row)?, raw_payload))
            .transpose()
    }

    async fn backlog(&self, after: LogPosition) -> Result<Backlog, Error> {
        let every = self.tenant.is_every();
        let q = sqlx::query(if every {
            sql::BACKLOG_EVERY
        } else {
            sql::BACKLOG
        })
        .bind(after.transaction_id.to_string())
        .bind(int8(after.position));
        let q = if every {
            q
        } else {
            q.bind(self.tenant.as_str())
        };
        let row = q
            .fetch_one(&self.pool)
            .await
            .map_err(db("counting events behind a checkpoint"))?;
        let n: i64 = get(&row, "n")?;
        Ok(Backlog {
            events: n.max(0) as u64,
            oldest_recorded_at: get(&row, "oldest")?,
        })
    }

    async fn horizon(&self) -> Result<Horizon, Error> {
        PgEventStore::horizon(self).await
    }

    async fn log_end(&self) -> Result<Option<LogPosition>, Error> {
        let q = if self.tenant.is_every() {
            sqlx::query_as(sql::LOG_END_EVERY)
        } else {
            sqlx::query_as(sql::LOG_END).bind(self.tenant.as_str())
        };
        let row: Option<(i64, i64)> = q
            .fetch_optional(&self.pool)
            .await
            .map_err(db("reading the end of the global log"))?;
        Ok(row.map(|(tx, position)| LogPosition::new(tx as u64, position as u64)))
    }
}

/// A payload as stored: the jsonb text copied into a `RawValue` (checked:
/// a `RawValue` can only be made by parsing).
fn raw_payload(p: PayloadRef<'_>) -> Result<Box<serde_json::value::RawValue>, Error> {
    p.to_raw_value()
}

impl WatchLog for PgEventStore {
    type Watcher = LogWatcher;

    async fn watch(&self) -> Result<LogWatcher, Error> {
        PgEventStore::watch(self).await
    }
}

#[cfg(all(test, feature = "testing"))]
mod tests;
