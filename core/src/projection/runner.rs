//! The projection runner: reads the global log from a checkpoint, applies
//! events in batches inside the projection store's transaction, retries, parks dead
//! letters, pauses on an open circuit breaker, follows the log live, and
//! hands ownership over between instances.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tracing::Instrument as _;

use crate::dead_letter::{DeadLetterQuery, NewDeadLetter};
use crate::metrics as m;
use crate::projection::store::{Lease, ProjectionStore};
use crate::{
    breaker::BreakerOpen, breaker::CircuitBreaker, breaker::CircuitBreakerRegistry,
    handler::FailureKind, store::Watch, store::WatchLog, Envelope, Error, Event, HandlerError,
    LogPosition, Projection, RecordedEvent, RetryPolicy, Shutdown,
};

/// What a runner does with an event that still fails after its last retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailurePolicy {
    /// Park it as a dead letter and go on with the next event (later events
    /// of its stream are parked behind it, to keep stream order).
    #[default]
    Park,
    /// Stop the projection at the event, mark it failed with the error and
    /// the event's position, and do not move past it: for read models that
    /// must not skip an event. A restarted runner tries the event again.
    Stop,
}

/// Why a runner stopped or an operation on it failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProjectionError {
    /// Another runner owns the projection.
    #[error("projection `{projection}` is owned by another runner (in this process or another); stop that one first, or let this runner stand by with `run`")]
    NotOwner {
        /// The projection.
        projection: String,
    },

    /// The runner lost its ownership lease (its connection died) and stopped
    /// applying events; `run` goes back to standing by.
    #[error("projection `{projection}` lost its ownership lease; another runner may take over")]
    LostOwnership {
        /// The projection.
        projection: String,
    },

    /// The projection stopped at an event it cannot apply (its failure
    /// policy is [`FailurePolicy::Stop`]).
    #[error("projection `{projection}` stopped at the event at global position {position} (stream `{stream_id}`, type `{event_type}`) after {attempts} attempt(s): {error}; fix the handler or the data and restart the runner: it resumes at this event")]
    Stopped {
        /// The projection.
        projection: String,
        /// The event's global position.
        position: u64,
        /// The event's stream.
        stream_id: String,
        /// The event's type.
        event_type: String,
        /// Attempts made.
        attempts: u32,
        /// The last error.
        error: String,
    },

    /// A dead-letter replay was refused because the handler's circuit
    /// breaker is open.
    #[error("cannot replay now: {0}")]
    BreakerOpen(#[from] BreakerOpen),

    /// A dead letter cannot be replayed before an earlier one of its stream.
    #[error("dead letter {id} (global position {position}) has an earlier pending dead letter in stream `{stream_id}` (global position {earlier}); replay that one first, or use replay_all")]
    OutOfOrder {
        /// The dead letter.
        id: u64,
        /// Its event's position.
        position: u64,
        /// The stream.
        stream_id: String,
        /// The earlier pending entry's event position.
        earlier: u64,
    },

    /// A dead letter's event is no longer in the store.
    #[error("dead letter {id}: its event at global position {position} is no longer in the event store; discard the entry")]
    EventMissing {
        /// The dead letter.
        id: u64,
        /// The event's position.
        position: u64,
    },

    /// Shutdown was asked for in the middle of an operation; nothing was
    /// left half-done.
    #[error("projection `{projection}`: interrupted by shutdown")]
    Interrupted {
        /// The projection.
        projection: String,
    },

    /// The event store or the projection store failed.
    #[error(transparent)]
    Store(#[from] Error),
}

/// What a catch-up (or rebuild) did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CatchUp {
    /// Events read from the log (including those of other types, skipped).
    pub events_read: u64,
    /// Events applied by the projection.
    pub events_applied: u64,
    /// Events parked as dead letters (failed, or behind a failed one).
    pub events_parked: u64,
    /// The checkpoint at the end.
    pub position: LogPosition,
}

/// The outcome of replaying one dead letter.
#[derive(Debug)]
#[non_exhaustive]
pub enum ReplayOutcome {
    /// Applied; the entry is resolved.
    Resolved,
    /// Failed again; the entry stays pending with one more attempt and the
    /// new error.
    Failed(HandlerError),
    /// The entry is not pending (already resolved or discarded, or unknown).
    NotPending,
}

/// What [`ProjectionRunner::replay_all`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReplaySummary {
    /// Entries resolved.
    pub resolved: u64,
    /// Entries that failed again.
    pub failed: u64,
    /// Entries left alone because an earlier entry of their stream failed.
    pub skipped: u64,
}

/// Runs one [`Projection`]: reads the global log from its checkpoint,
/// applies batches in the projection store's transactions, retries failing
/// events, parks them as dead letters (or stops, by [`FailurePolicy`]),
/// pauses while the handler's circuit breaker is open, follows the log live
/// (woken by appends, polling as the fallback), and holds an ownership lease
/// so that one runner among many instances applies the projection.
///
/// ```
/// use annals::projection::InMemoryConn;
/// use annals::{
///     Envelope, EventStoreExt, ExpectedVersion, HandlerError, InMemoryEventStore,
///     InMemoryProjectionStore, Metadata, Projection, ProjectionRunner,
/// };
/// use std::sync::{Arc, Mutex};
///
/// #[derive(Debug, Clone, PartialEq, annals::Event)]
/// enum CounterEvent { Added(u32) }
///
/// #[derive(Default)]
/// struct Total(Mutex<u64>);
///
/// impl Projection for Total {
///     type Event = CounterEvent;
///     type Conn = InMemoryConn;
///     fn name(&self) -> &str { "total" }
///     async fn apply(&self, _: &mut InMemoryConn, e: &Envelope<CounterEvent>) -> Result<(), HandlerError> {
///         let CounterEvent::Added(n) = e.payload;
///         *self.0.lock().unwrap() += u64::from(n);
///         Ok(())
///     }
/// }
///
/// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
/// let store = InMemoryEventStore::new();
/// store.append_events("c-1", ExpectedVersion::Any, &[CounterEvent::Added(2), CounterEvent::Added(3)], &Metadata::new()).await?;
/// let total = Arc::new(Total::default());
/// let runner = ProjectionRunner::new(store, InMemoryProjectionStore::new(), total.clone());
/// let done = runner.catch_up().await?;
/// assert_eq!(done.events_applied, 2);
/// assert_eq!(*total.0.lock().unwrap(), 5);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
#[derive(Debug)]
pub struct ProjectionRunner<S, B, P> {
    store: S,
    projection_store: B,
    projection: Arc<P>,
    batch_size: usize,
    poll_interval: Duration,
    takeover_interval: Duration,
    lease_check_interval: Duration,
    settle_timeout: Duration,
    retry: RetryPolicy,
    on_failure: FailurePolicy,
    breakers: CircuitBreakerRegistry,
    breaker: Arc<CircuitBreaker>,
}

impl<S: Clone, B: Clone, P> Clone for ProjectionRunner<S, B, P> {
    fn clone(&self) -> Self {
        ProjectionRunner {
            store: self.store.clone(),
            projection_store: self.projection_store.clone(),
            projection: self.projection.clone(),
            batch_size: self.batch_size,
            poll_interval: self.poll_interval,
            takeover_interval: self.takeover_interval,
            lease_check_interval: self.lease_check_interval,
            settle_timeout: self.settle_timeout,
            retry: self.retry.clone(),
            on_failure: self.on_failure,
            breakers: self.breakers.clone(),
            breaker: self.breaker.clone(),
        }
    }
}

/// The first look again after events were known to exist but none was
/// visible yet; later looks back off, doubling.
const RECHECK_FIRST: Duration = Duration::from_millis(10);

/// A failure inside a batch.
enum Failure {
    Handler(HandlerError),
    /// The stored event cannot be decoded (the message): retrying cannot help.
    Undecodable(String),
}

/// One event of a batch.
enum Item<E> {
    /// Not one of the projection's event types.
    Skip(LogPosition, DateTime<Utc>),
    Event(Envelope<E>),
    Undecodable(RecordedEvent, Error),
}

impl<E> Item<E> {
    fn position(&self) -> LogPosition {
        match self {
            Item::Skip(p, _) => *p,
            Item::Event(e) => e.log_position,
            Item::Undecodable(r, _) => r.log_position,
        }
    }

    fn recorded_at(&self) -> DateTime<Utc> {
        match self {
            Item::Skip(_, t) => *t,
            Item::Event(e) => e.recorded_at,
            Item::Undecodable(r, _) => r.recorded_at,
        }
    }

    fn stream_id(&self) -> Option<&str> {
        match self {
            Item::Skip(..) => None,
            Item::Event(e) => Some(&e.stream_id),
            Item::Undecodable(r, _) => Some(&r.stream_id),
        }
    }

    fn dead_letter(&self, handler: &str, error: &str, attempts: u32) -> Option<NewDeadLetter> {
        match self {
            Item::Skip(..) => None,
            Item::Event(e) => Some(NewDeadLetter::failed(handler, e, error, attempts)),
            Item::Undecodable(r, _) => Some(NewDeadLetter::failed(handler, r, error, attempts)),
        }
    }

    fn behind(&self, handler: &str, blocked_by: u64) -> Option<NewDeadLetter> {
        match self {
            Item::Skip(..) => None,
            Item::Event(e) => Some(NewDeadLetter::behind(handler, e, blocked_by)),
            Item::Undecodable(r, _) => Some(NewDeadLetter::behind(handler, r, blocked_by)),
        }
    }

    fn event_type(&self) -> &str {
        match self {
            Item::Skip(..) => "",
            Item::Event(e) => &e.event_type,
            Item::Undecodable(r, _) => &r.event_type,
        }
    }
}

/// The state of a runner while it owns its projection.
struct Ownership<L> {
    lease: L,
    position: LogPosition,
    /// Streams with pending dead letters, and the earliest one's position.
    pending: HashMap<String, u64>,
    lease_checked: Instant,
    summary: CatchUp,
    /// The batch after the last one, read while that one was applied: the
    /// position it was read after, and its events.
    prefetched: Option<(LogPosition, Vec<RecordedEvent>)>,
}

impl<S, B, P> ProjectionRunner<S, B, P>
where
    S: WatchLog + Clone + 'static,
    B: ProjectionStore,
    P: Projection<Conn = B::Conn>,
{
    /// A runner with the defaults: batches of 500 events, polling every
    /// second when no notification arrives, takeover checks every second,
    /// [`RetryPolicy::default`], [`FailurePolicy::Park`], and a circuit
    /// breaker named after the projection in a registry of its own.
    ///
    /// The projection runs for the event store's tenant: the projection
    /// store is scoped to it, so the checkpoint, the lease and the dead
    /// letters are that tenant's. A runner per tenant, each on
    /// `store.tenant(..)`, runs a projection per tenant.
    pub fn new(store: S, projection_store: B, projection: Arc<P>) -> Self {
        let breakers = CircuitBreakerRegistry::new();
        let breaker = breakers.get(projection.name());
        let projection_store = projection_store.in_tenant(store.tenant_id().clone());
        ProjectionRunner {
            store,
            projection_store,
            projection,
            batch_size: 500,
            poll_interval: Duration::from_secs(1),
            takeover_interval: Duration::from_secs(1),
            lease_check_interval: Duration::from_secs(5),
            settle_timeout: Duration::from_secs(10),
            retry: RetryPolicy::default(),
            on_failure: FailurePolicy::Park,
            breakers,
            breaker,
        }
    }

    /// Events read (and applied in one transaction) per batch (at least 1).
    /// While catching up, the next batch is read while a full one is being
    /// applied, so reads and writes overlap.
    pub fn batch_size(mut self, n: usize) -> Self {
        self.batch_size = n.max(1);
        self
    }

    /// How long to wait for a notification before reading again.
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// How often a standing-by runner tries to take ownership over (and so
    /// the longest a dead owner goes unreplaced, plus the time its database
    /// session takes to end).
    pub fn takeover_interval(mut self, interval: Duration) -> Self {
        self.takeover_interval = interval;
        self
    }

    /// How often an owner checks that it still holds its lease.
    pub fn lease_check_interval(mut self, interval: Duration) -> Self {
        self.lease_check_interval = interval;
        self
    }

    /// How long [`catch_up`](Self::catch_up) waits for events that were
    /// committed before it started but that an open transaction still hides
    /// from log readers (default 10 s).
    pub fn settle_timeout(mut self, timeout: Duration) -> Self {
        self.settle_timeout = timeout;
        self
    }

    /// How failing events are retried.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// What happens after the last retry.
    pub fn on_failure(mut self, policy: FailurePolicy) -> Self {
        self.on_failure = policy;
        self
    }

    /// Uses a shared circuit-breaker registry (the runner's breaker is the
    /// one named after the projection; configure it there).
    pub fn breakers(mut self, registry: CircuitBreakerRegistry) -> Self {
        self.breaker = registry.get(self.projection.name());
        self.breakers = registry;
        self
    }

    /// The `tenant` label of the runner's metrics: its event store's
    /// tenant (a projection runs per tenant, so each tenant's runner has
    /// series of its own).
    fn tenant_label(&self) -> String {
        self.store.tenant_id().to_string()
    }

    /// The tenant the runner runs the projection for (its event store's).
    pub fn tenant_id(&self) -> &crate::TenantId {
        self.store.tenant_id()
    }

    /// The projection's name.
    pub fn name(&self) -> &str {
        self.projection.name()
    }

    /// The projection.
    pub fn projection(&self) -> &Arc<P> {
        &self.projection
    }

    /// The projection store.
    pub fn projection_store(&self) -> &B {
        &self.projection_store
    }

    /// The handler's circuit breaker.
    pub fn breaker(&self) -> &Arc<CircuitBreaker> {
        &self.breaker
    }

    /// Runs until `shutdown` is triggered: stands by while another runner
    /// owns the projection, takes over when it can, catches up in batches
    /// and then follows the log live. Failures of the stores are logged and
    /// retried with backoff; the runner returns an error only when the
    /// projection stops by policy ([`ProjectionError::Stopped`]).
    pub async fn run(&self, mut shutdown: Shutdown) -> Result<(), ProjectionError> {
        self.store.registry().register::<P::Event>()?;
        let mut failures = 0u32;
        loop {
            if shutdown.is_triggered() {
                return Ok(());
            }
            match self.projection_store.try_acquire(self.name()).await {
                Ok(Some(lease)) => {
                    tracing::info!(projection = self.name(), "took ownership of the projection");
                    match self.owned(lease, &mut shutdown, true).await {
                        Ok(_) | Err(ProjectionError::Interrupted { .. }) => return Ok(()),
                        Err(e @ ProjectionError::Stopped { .. }) => return Err(e),
                        Err(e) => {
                            tracing::warn!(projection = self.name(), error = %e, "projection runner lost its session; standing by");
                            failures = failures.saturating_add(1);
                            if shutdown.sleep(self.retry.delay_after(failures)).await {
                                return Ok(());
                            }
                        }
                    }
                }
                Ok(None) => {
                    failures = 0;
                    tracing::debug!(
                        projection = self.name(),
                        "another runner owns the projection; standing by"
                    );
                    if shutdown.sleep(self.takeover_interval).await {
                        return Ok(());
                    }
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    tracing::warn!(projection = self.name(), error = %e, "cannot take ownership of the projection; retrying");
                    if shutdown
                        .sleep(self.retry.delay_after(failures).max(self.takeover_interval))
                        .await
                    {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Starts [`run`](Self::run) on a Tokio task.
    pub fn spawn(self) -> ProjectionHandle
    where
        S: Send + Sync,
        P::Event: Send + Sync,
    {
        let (trigger, shutdown) = Shutdown::new();
        let name = self.name().to_owned();
        let task = tokio::spawn(async move { self.run(shutdown).await });
        ProjectionHandle {
            name,
            trigger,
            task,
        }
    }

    /// Applies every event committed before the call and returns. Events an
    /// open transaction still hides from log readers (see
    /// [`EventStore::log_end`](crate::EventStore::log_end)) are waited for up to the
    /// [settle timeout](Self::settle_timeout); events appended meanwhile
    /// may be applied too. Fails with [`ProjectionError::NotOwner`] while
    /// another runner owns the projection.
    pub async fn catch_up(&self) -> Result<CatchUp, ProjectionError> {
        self.store.registry().register::<P::Event>()?;
        let lease = self.acquire_now().await?;
        self.owned(lease, &mut Shutdown::never(), false).await
    }

    /// Rebuilds the read model: in one transaction, clears it
    /// ([`Projection::reset`]), puts the checkpoint back at the start and
    /// discards the projection's pending dead letters (their events are read
    /// again); then catches up from the start. Needs ownership, like
    /// [`catch_up`](Self::catch_up).
    pub async fn rebuild(&self) -> Result<CatchUp, ProjectionError> {
        self.store.registry().register::<P::Event>()?;
        let lease = self.acquire_now().await?;
        self.projection_store.init_checkpoint(self.name()).await?;
        let mut tx = self.projection_store.begin().await?;
        let tenant = self.store.tenant_id();
        self.projection
            .reset(B::conn(&mut tx), tenant)
            .await
            .map_err(|e| {
                Error::backend("resetting the read model for a rebuild", e.into_source())
            })?;
        self.projection_store.reset(&mut tx, self.name()).await?;
        let discarded = self
            .projection_store
            .discard_all_dead_letters(&mut tx, self.name(), "rebuild: the event is read again")
            .await?;
        self.projection_store.commit(tx).await?;
        tracing::info!(
            projection = self.name(),
            discarded_dead_letters = discarded,
            "rebuilding the projection from the start of the log"
        );
        self.export_pending().await;
        self.owned(lease, &mut Shutdown::never(), false).await
    }

    async fn acquire_now(&self) -> Result<B::Lease, ProjectionError> {
        self.projection_store
            .try_acquire(self.name())
            .await?
            .ok_or_else(|| ProjectionError::NotOwner {
                projection: self.name().to_owned(),
            })
    }

    /// Works while owning the projection: until the end of the log
    /// (`follow = false`) or until shutdown (`follow = true`).
    async fn owned(
        &self,
        lease: B::Lease,
        shutdown: &mut Shutdown,
        follow: bool,
    ) -> Result<CatchUp, ProjectionError> {
        let mut s = Ownership {
            lease,
            position: LogPosition::START,
            pending: HashMap::new(),
            lease_checked: Instant::now(),
            summary: CatchUp::default(),
            prefetched: None,
        };
        let result = self.work(&mut s, shutdown, follow).await;
        // hand over at once: a standby (or the next catch_up) need not
        // wait for the backend to notice a dropped lease
        s.lease.release().await;
        result
    }

    async fn work(
        &self,
        s: &mut Ownership<B::Lease>,
        shutdown: &mut Shutdown,
        follow: bool,
    ) -> Result<CatchUp, ProjectionError> {
        self.resync(s).await?;
        s.summary.position = s.position;
        // subscribe before the first read, so no append goes unnoticed
        let mut watcher = if follow {
            Some(self.store.watch().await?)
        } else {
            None
        };
        // the log's end once we listen, visible or not: a catch-up reads at
        // least this far, and a live runner short of it looks again soon
        // instead of waiting for a notification that came before it listened
        let target = self.store.log_end().await?;
        let started = Instant::now();
        let mut failures = 0u32;
        // when events are known to exist but nothing was visible (a
        // catch-up short of its target, or a wake-up whose append is still
        // above the horizon, held back by an older open transaction): look
        // again soon, backing off towards the poll interval
        let mut recheck: Option<Duration> = None;
        loop {
            if shutdown.is_triggered() {
                return Ok(s.summary);
            }
            if s.lease_checked.elapsed() >= self.lease_check_interval {
                if !s.lease.is_held().await {
                    return Err(ProjectionError::LostOwnership {
                        projection: self.name().to_owned(),
                    });
                }
                s.lease_checked = Instant::now();
            }
            match self.step(s, shutdown).await {
                Ok(0) => {
                    failures = 0;
                    self.export_caught_up();
                    s.summary.position = s.position;
                    let Some(watcher) = watcher.as_mut() else {
                        if target.is_some_and(|t| s.position < t)
                            && started.elapsed() < self.settle_timeout
                        {
                            // committed, but above the horizon for now
                            let wait = recheck.unwrap_or(RECHECK_FIRST);
                            recheck = Some((wait * 2).min(self.poll_interval));
                            if shutdown.sleep(wait).await {
                                return Ok(s.summary);
                            }
                            continue;
                        }
                        return Ok(s.summary);
                    };
                    if recheck.is_none() && target.is_some_and(|t| s.position < t) {
                        recheck = Some(RECHECK_FIRST);
                    }
                    let timeout = recheck.map_or(self.poll_interval, |d| d.min(self.poll_interval));
                    tokio::select! {
                        woken = watcher.wait(timeout) => {
                            recheck = if woken {
                                Some(RECHECK_FIRST)
                            } else {
                                recheck
                                    .map(|d| d * 2)
                                    .filter(|d| *d < self.poll_interval)
                            };
                        }
                        _ = shutdown.triggered() => return Ok(s.summary),
                    }
                }
                Ok(_) => {
                    failures = 0;
                    recheck = None;
                    s.summary.position = s.position;
                }
                Err(ProjectionError::Store(e)) => {
                    // the batch was rolled back, or its commit's outcome is
                    // unknown: start again from the stored checkpoint
                    failures = failures.saturating_add(1);
                    let moved = matches!(e, Error::CheckpointMoved { .. });
                    tracing::warn!(projection = self.name(), error = %e, attempt = failures, "projection batch failed; retrying from the stored checkpoint");
                    if !follow && !moved && !self.retry.allows_retry_after(failures) {
                        return Err(ProjectionError::Store(e));
                    }
                    if !moved && shutdown.sleep(self.retry.delay_after(failures)).await {
                        return Ok(s.summary);
                    }
                    if moved && !s.lease.is_held().await {
                        return Err(ProjectionError::LostOwnership {
                            projection: self.name().to_owned(),
                        });
                    }
                    if let Err(e) = self.resync(s).await {
                        tracing::warn!(projection = self.name(), error = %e, "cannot reload the checkpoint");
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn resync(&self, s: &mut Ownership<B::Lease>) -> Result<(), Error> {
        let checkpoint = self.projection_store.init_checkpoint(self.name()).await?;
        s.position = checkpoint.position;
        s.pending = self.projection_store.pending_streams(self.name()).await?;
        Ok(())
    }

    /// Reads one batch and processes it; returns how many events it read.
    async fn step(
        &self,
        s: &mut Ownership<B::Lease>,
        shutdown: &mut Shutdown,
    ) -> Result<usize, ProjectionError> {
        if !s.pending.is_empty() {
            // replays (maybe by another process) only ever remove entries
            s.pending = self.projection_store.pending_streams(self.name()).await?;
        }
        let batch = match s.prefetched.take() {
            Some((after, batch)) if after == s.position => Ok(batch),
            _ => self.store.read_log(s.position, self.batch_size).await,
        };
        let items: Vec<Item<P::Event>> = match batch {
            Ok(batch) => batch.into_iter().map(|r| self.classify(r)).collect(),
            // a row whose envelope cannot be read (the log returned the
            // events before it already): parked, or skipped when the
            // projection does not read its type, like an event whose
            // payload does not decode; the log goes on after it
            Err(Error::UnreadableEvent { event, message }) => {
                vec![if self.reads(&event.event_type) {
                    let position = Some(event.log_position.position);
                    Item::Undecodable(*event, Error::CorruptedRow { position, message })
                } else {
                    tracing::warn!(projection = self.name(), position = event.log_position.position, event_type = %event.event_type, %message, "skipping an unreadable row of a type this projection does not read");
                    metrics::counter!(m::PROJECTION_UNREADABLE_SKIPPED_TOTAL, "projection" => self.name().to_owned(), "tenant" => self.tenant_label())
                        .increment(1);
                    Item::Skip(event.log_position, event.recorded_at)
                }]
            }
            Err(e) => return Err(e.into()),
        };
        let Some(last) = items.last() else {
            return Ok(0);
        };
        let (last, last_at) = (last.position(), last.recorded_at());
        let n = items.len();
        let started = Instant::now();
        let parked_before = s.summary.events_parked;
        if n < self.batch_size {
            // the end of the log is near: nothing worth reading ahead
            self.process_batch(s, items, (last, last_at), shutdown)
                .await?;
        } else {
            // catching up: read the next batch while this one is applied,
            // so the read's round trip overlaps the write's
            let (processed, next) = tokio::join!(
                self.process_batch(s, items, (last, last_at), shutdown),
                self.store.read_log(last, self.batch_size)
            );
            processed?;
            // a failed read ahead is read again (and reported) next step
            if let (Ok(next), true) = (next, s.position == last) {
                s.prefetched = Some((last, next));
            }
        }
        if s.summary.events_parked != parked_before {
            // events parked behind a dead letter count as pending too
            self.export_pending().await;
        }
        s.summary.events_read += n as u64;
        metrics::histogram!(m::PROJECTION_BATCH_DURATION_SECONDS, "projection" => self.name().to_owned(), "tenant" => self.tenant_label())
            .record(started.elapsed().as_secs_f64());
        let lag = (Utc::now() - last_at).num_milliseconds().max(0) as f64 / 1000.0;
        metrics::gauge!(m::PROJECTION_LAG_SECONDS, "projection" => self.name().to_owned(), "tenant" => self.tenant_label()).set(lag);
        Ok(n)
    }

    /// Whether the projection reads events of `event_type`.
    fn reads(&self, event_type: &str) -> bool {
        <P::Event as Event>::TYPES
            .iter()
            .any(|t| t.name == event_type)
    }

    fn classify(&self, recorded: RecordedEvent) -> Item<P::Event> {
        if !self.reads(&recorded.event_type) {
            return Item::Skip(recorded.log_position, recorded.recorded_at);
        }
        match crate::store::decode_parts::<P::Event>(
            self.store.registry(),
            &recorded.event_type,
            recorded.schema_version,
            recorded.payload.get(),
        ) {
            Ok(event) => Item::Event(recorded.map(|_| event)),
            Err(source) => {
                let error = Error::Decode {
                    position: Some(recorded.log_position.position),
                    stream_id: recorded.stream_id.clone(),
                    stream_version: recorded.stream_version,
                    source,
                };
                Item::Undecodable(recorded, error)
            }
        }
    }

    /// Applies one event inside its `process` span (see [`crate::trace`]).
    async fn apply_one(
        &self,
        conn: &mut P::Conn,
        event: &Envelope<P::Event>,
    ) -> Result<(), HandlerError> {
        self.projection
            .apply(conn, event)
            .instrument(crate::trace::process_span(self.name(), event))
            .await
    }

    async fn process_batch(
        &self,
        s: &mut Ownership<B::Lease>,
        mut items: Vec<Item<P::Event>>,
        last: (LogPosition, DateTime<Utc>),
        shutdown: &mut Shutdown,
    ) -> Result<(), ProjectionError> {
        let fast = B::TRANSACTIONAL
            && items.iter().all(|i| match i {
                Item::Skip(..) => true,
                Item::Event(e) => !s.pending.contains_key(&e.stream_id),
                Item::Undecodable(..) => false,
            });
        if fast {
            let events: Vec<Envelope<P::Event>> = items
                .into_iter()
                .filter_map(|i| match i {
                    Item::Event(e) => Some(e),
                    _ => None,
                })
                .collect();
            self.await_breaker(shutdown).await?;
            let mut tx = self.projection_store.begin().await?;
            let applied = if events.is_empty() {
                Ok(())
            } else {
                self.projection
                    .apply_batch(B::conn(&mut tx), &events)
                    .instrument(crate::trace::batch_span(self.name(), &events))
                    .await
            };
            match applied {
                Ok(()) => {
                    self.breaker.record_success();
                    self.commit_at(tx, s, last.0, last.1).await?;
                    self.count_applied(s, events.len() as u64);
                    return Ok(());
                }
                Err(e) => {
                    drop(tx);
                    if e.kind() == FailureKind::Dependency {
                        // the dependency failed for the whole batch: count it
                        self.breaker.record_failure();
                    } else {
                        self.breaker.release();
                    }
                    tracing::debug!(projection = self.name(), error = %e, "batch failed; applying its events one by one to find the failing one");
                    items = events.into_iter().map(Item::Event).collect();
                }
            }
        }
        self.process_one_by_one(s, &items, shutdown).await?;
        if s.position != last.0 {
            // the batch ended with events of other types
            let tx = self.projection_store.begin().await?;
            self.commit_at(tx, s, last.0, last.1).await?;
        }
        Ok(())
    }

    /// The slow path: the longest prefix that applies goes in one
    /// transaction; the first failing event is retried alone, then parked
    /// (or the projection stops).
    async fn process_one_by_one(
        &self,
        s: &mut Ownership<B::Lease>,
        items: &[Item<P::Event>],
        shutdown: &mut Shutdown,
    ) -> Result<(), ProjectionError> {
        let mut i = 0;
        while i < items.len() {
            let mut end = items.len();
            // the failure found at `end` while a longer slice was tried
            let mut carried: Option<Failure> = None;
            loop {
                self.await_breaker(shutdown).await?;
                let mut tx = self.projection_store.begin().await?;
                match self.try_each(&mut tx, &s.pending, &items[i..end]).await? {
                    Ok((applied, parked)) => {
                        self.breaker.record_success();
                        let last = &items[end - 1];
                        self.commit_at(tx, s, last.position(), last.recorded_at())
                            .await?;
                        self.count_applied(s, applied);
                        self.count_parked(s, parked, "behind");
                        i = end;
                        if let Some(failure) = carried.take() {
                            self.handle_failure(s, &items[i], failure, shutdown).await?;
                            i += 1;
                        }
                        break;
                    }
                    Err((0, _, failure)) => {
                        drop(tx);
                        self.breaker.release();
                        self.handle_failure(s, &items[i], failure, shutdown).await?;
                        i += 1;
                        break;
                    }
                    Err((k, (applied, parked), failure)) if !B::TRANSACTIONAL => {
                        // what applied before the failing event stays
                        // applied: move the checkpoint past it (never apply
                        // it twice), then handle the failing event
                        self.breaker.release();
                        let last = &items[i + k - 1];
                        self.commit_at(tx, s, last.position(), last.recorded_at())
                            .await?;
                        self.count_applied(s, applied);
                        self.count_parked(s, parked, "behind");
                        i += k;
                        self.handle_failure(s, &items[i], failure, shutdown).await?;
                        i += 1;
                        break;
                    }
                    Err((k, _, failure)) => {
                        // roll back, apply and commit what came before the
                        // failing event, then handle it alone
                        drop(tx);
                        self.breaker.release();
                        end = i + k;
                        carried = Some(failure);
                    }
                }
            }
        }
        Ok(())
    }

    /// Applies items one by one inside `tx`; counts (applied, parked).
    /// `Ok(Err((k, counts, f)))`: item `k` failed, after `counts` (the
    /// caller rolls back, or keeps the prefix on a non-transactional
    /// backend).
    #[allow(clippy::type_complexity)]
    async fn try_each(
        &self,
        tx: &mut B::Transaction,
        pending: &HashMap<String, u64>,
        items: &[Item<P::Event>],
    ) -> Result<Result<(u64, u64), (usize, (u64, u64), Failure)>, ProjectionError> {
        let (mut applied, mut parked) = (0, 0);
        for (k, item) in items.iter().enumerate() {
            if let Some(&first) = item.stream_id().and_then(|id| pending.get(id)) {
                if let Some(letter) = item.behind(self.name(), first) {
                    self.projection_store.park(tx, &letter).await?;
                    parked += 1;
                }
                continue;
            }
            match item {
                Item::Skip(..) => {}
                Item::Undecodable(_, e) => {
                    return Ok(Err((
                        k,
                        (applied, parked),
                        Failure::Undecodable(e.to_string()),
                    )))
                }
                Item::Event(e) => match self.apply_one(B::conn(tx), e).await {
                    Ok(()) => applied += 1,
                    Err(err) => return Ok(Err((k, (applied, parked), Failure::Handler(err)))),
                },
            }
        }
        Ok(Ok((applied, parked)))
    }

    /// Retries one failing event; parks it (or stops) after the last attempt.
    async fn handle_failure(
        &self,
        s: &mut Ownership<B::Lease>,
        item: &Item<P::Event>,
        failure: Failure,
        shutdown: &mut Shutdown,
    ) -> Result<(), ProjectionError> {
        let mut error = match failure {
            Failure::Undecodable(message) => return self.give_up(s, item, message, 1).await,
            Failure::Handler(e) => e,
        };
        let Item::Event(event) = item else {
            return self.give_up(s, item, error.to_string(), 1).await;
        };
        let (mut event_failures, mut dependency_failures) = (0u32, 0u32);
        loop {
            match error.kind() {
                FailureKind::Event => {
                    event_failures += 1;
                    if !self.retry.allows_retry_after(event_failures) {
                        return self
                            .give_up(s, item, error.to_string(), event_failures)
                            .await;
                    }
                    tracing::warn!(projection = self.name(), position = event.position(), attempt = event_failures, error = %error, "event failed; retrying");
                    m::record_retry(self.name());
                    if shutdown.sleep(self.retry.delay_after(event_failures)).await {
                        return Err(self.interrupted());
                    }
                }
                FailureKind::Dependency => {
                    // a dependency is down: never the event's fault, so it
                    // is never parked for it; the breaker paces the retries
                    dependency_failures += 1;
                    self.breaker.record_failure();
                    tracing::warn!(projection = self.name(), position = event.position(), attempt = dependency_failures, error = %error, "a dependency of the projection failed; retrying");
                    m::record_retry(self.name());
                    if shutdown
                        .sleep(self.retry.delay_after(dependency_failures))
                        .await
                    {
                        return Err(self.interrupted());
                    }
                }
            }
            self.await_breaker(shutdown).await?;
            let mut tx = self.projection_store.begin().await?;
            match self.apply_one(B::conn(&mut tx), event).await {
                Ok(()) => {
                    self.breaker.record_success();
                    self.commit_at(tx, s, event.log_position, event.recorded_at)
                        .await?;
                    self.count_applied(s, 1);
                    return Ok(());
                }
                Err(e) => {
                    drop(tx);
                    if e.kind() == FailureKind::Event {
                        self.breaker.release();
                    }
                    error = e;
                }
            }
        }
    }

    async fn give_up(
        &self,
        s: &mut Ownership<B::Lease>,
        item: &Item<P::Event>,
        error: String,
        attempts: u32,
    ) -> Result<(), ProjectionError> {
        let position = item.position();
        match self.on_failure {
            FailurePolicy::Park => {
                let Some(letter) = item.dead_letter(self.name(), &error, attempts) else {
                    return Ok(());
                };
                let mut tx = self.projection_store.begin().await?;
                let id = self.projection_store.park(&mut tx, &letter).await?;
                self.commit_at(tx, s, position, item.recorded_at()).await?;
                s.pending
                    .entry(letter.stream_id.clone())
                    .or_insert(letter.event_position);
                self.count_parked(s, 1, "failed");
                tracing::error!(
                    projection = self.name(),
                    dead_letter = id,
                    position = letter.event_position,
                    stream = %letter.stream_id,
                    event_type = %letter.event_type,
                    attempts,
                    error = %error,
                    "event parked as a dead letter; later events of its stream wait behind it"
                );
                self.export_pending().await;
                Ok(())
            }
            FailurePolicy::Stop => {
                self.projection_store
                    .mark_failed(
                        &s.lease,
                        self.name(),
                        &crate::store::limits::stored_error_text(error.as_str()),
                        position.position,
                    )
                    .await?;
                metrics::gauge!(m::PROJECTION_FAILED, "projection" => self.name().to_owned(), "tenant" => self.tenant_label())
                    .set(1.0);
                let stopped = ProjectionError::Stopped {
                    projection: self.name().to_owned(),
                    position: position.position,
                    stream_id: item.stream_id().unwrap_or_default().to_owned(),
                    event_type: item.event_type().to_owned(),
                    attempts,
                    error,
                };
                tracing::error!(projection = self.name(), error = %stopped, "projection stopped");
                Err(stopped)
            }
        }
    }

    async fn commit_at(
        &self,
        mut tx: B::Transaction,
        s: &mut Ownership<B::Lease>,
        to: LogPosition,
        at: DateTime<Utc>,
    ) -> Result<(), ProjectionError> {
        if !self
            .projection_store
            .advance(&mut tx, &s.lease, self.name(), s.position, to, Some(at))
            .await?
        {
            return Err(Error::CheckpointMoved {
                projection: self.name().to_owned(),
            }
            .into());
        }
        self.projection_store.commit(tx).await?;
        s.position = to;
        metrics::gauge!(m::PROJECTION_FAILED, "projection" => self.name().to_owned(), "tenant" => self.tenant_label()).set(0.0);
        Ok(())
    }

    /// Waits while the breaker is open.
    async fn await_breaker(&self, shutdown: &mut Shutdown) -> Result<(), ProjectionError> {
        loop {
            match self.breaker.try_acquire() {
                Ok(()) => return Ok(()),
                Err(open) => {
                    tracing::info!(
                        projection = self.name(),
                        retry_after_s = open.retry_after.as_secs_f64(),
                        "circuit breaker open; pausing the projection"
                    );
                    if shutdown
                        .sleep(open.retry_after.max(Duration::from_millis(10)))
                        .await
                    {
                        return Err(self.interrupted());
                    }
                }
            }
        }
    }

    fn interrupted(&self) -> ProjectionError {
        ProjectionError::Interrupted {
            projection: self.name().to_owned(),
        }
    }

    fn count_applied(&self, s: &mut Ownership<B::Lease>, n: u64) {
        s.summary.events_applied += n;
        if n > 0 {
            metrics::counter!(m::PROJECTION_EVENTS_APPLIED_TOTAL, "projection" => self.name().to_owned(), "tenant" => self.tenant_label())
                .increment(n);
        }
    }

    fn count_parked(&self, s: &mut Ownership<B::Lease>, n: u64, reason: &'static str) {
        s.summary.events_parked += n;
        if n > 0 {
            metrics::counter!(m::DEAD_LETTERS_PARKED_TOTAL, "handler" => self.name().to_owned(), "tenant" => self.tenant_label(), "reason" => reason)
                .increment(n);
        }
    }

    fn export_caught_up(&self) {
        metrics::gauge!(m::PROJECTION_LAG_SECONDS, "projection" => self.name().to_owned(), "tenant" => self.tenant_label()).set(0.0);
        metrics::gauge!(m::PROJECTION_EVENTS_BEHIND, "projection" => self.name().to_owned(), "tenant" => self.tenant_label())
            .set(0.0);
    }

    async fn export_pending(&self) {
        if let Ok(n) = self
            .projection_store
            .pending_dead_letters(self.name())
            .await
        {
            metrics::gauge!(m::DEAD_LETTERS_PENDING, "handler" => self.name().to_owned(), "tenant" => self.tenant_label())
                .set(n as f64);
        }
    }

    /// Replays one dead letter through the projection (and its circuit
    /// breaker): on success the entry is resolved in the same transaction.
    /// An entry with an earlier pending entry in its stream is refused
    /// ([`ProjectionError::OutOfOrder`]). Concurrent replays of one entry
    /// apply it once.
    pub async fn replay(&self, id: u64) -> Result<ReplayOutcome, ProjectionError> {
        self.store.registry().register::<P::Event>()?;
        self.breaker.try_acquire()?;
        let outcome = self.replay_acquired(id).await;
        match &outcome {
            Ok(ReplayOutcome::Resolved) => self.breaker.record_success(),
            Ok(ReplayOutcome::Failed(e)) if e.kind() == FailureKind::Dependency => {
                self.breaker.record_failure()
            }
            _ => self.breaker.release(),
        }
        self.export_pending().await;
        outcome
    }

    async fn replay_acquired(&self, id: u64) -> Result<ReplayOutcome, ProjectionError> {
        let mut tx = self.projection_store.begin().await?;
        let Some(letter) = self.projection_store.lock_dead_letter(&mut tx, id).await? else {
            return Ok(ReplayOutcome::NotPending);
        };
        if letter.handler != self.name() {
            return Ok(ReplayOutcome::NotPending);
        }
        let earliest = self
            .projection_store
            .pending_streams(self.name())
            .await?
            .get(&letter.stream_id)
            .copied();
        if let Some(earlier) = earliest.filter(|p| *p < letter.event_position) {
            return Err(ProjectionError::OutOfOrder {
                id,
                position: letter.event_position,
                stream_id: letter.stream_id,
                earlier,
            });
        }
        let Some(recorded) = self.store.read_event(letter.event_position).await? else {
            return Err(ProjectionError::EventMissing {
                id,
                position: letter.event_position,
            });
        };
        let error = match self.classify(recorded) {
            Item::Skip(..) => {
                return Err(Error::CorruptedRow {
                    position: Some(letter.event_position),
                    message: format!(
                        "dead letter {id} names an event of type `{}` that projection `{}` does not read",
                        letter.event_type,
                        self.name()
                    ),
                }
                .into())
            }
            Item::Undecodable(_, e) => HandlerError::event(e),
            Item::Event(event) => match self.apply_one(B::conn(&mut tx), &event).await {
                Ok(()) => {
                    self.projection_store.resolve_dead_letter(&mut tx, id).await?;
                    self.projection_store.commit(tx).await?;
                    metrics::counter!(m::DEAD_LETTERS_REPLAYED_TOTAL, "handler" => self.name().to_owned(), "tenant" => self.tenant_label(), "outcome" => "resolved")
                        .increment(1);
                    tracing::info!(
                        projection = self.name(),
                        dead_letter = id,
                        position = letter.event_position,
                        "dead letter replayed and resolved"
                    );
                    return Ok(ReplayOutcome::Resolved);
                }
                Err(e) => e,
            },
        };
        drop(tx);
        self.projection_store
            .record_replay_failure(
                id,
                &crate::store::limits::stored_error_text(error.to_string()),
            )
            .await?;
        metrics::counter!(m::DEAD_LETTERS_REPLAYED_TOTAL, "handler" => self.name().to_owned(), "tenant" => self.tenant_label(), "outcome" => "failed")
            .increment(1);
        tracing::warn!(projection = self.name(), dead_letter = id, error = %error, "dead letter replay failed");
        Ok(ReplayOutcome::Failed(error))
    }

    /// Replays every pending dead letter of the projection, stream by
    /// stream in log order; within a stream it stops at the first entry
    /// that fails again (the later ones stay parked behind it). Stops early
    /// with [`ProjectionError::BreakerOpen`] when the breaker opens.
    pub async fn replay_all(&self) -> Result<ReplaySummary, ProjectionError> {
        let mut pending = Vec::new();
        let mut query = DeadLetterQuery::pending(self.name()).limit(500);
        loop {
            let page = self.projection_store.list_dead_letters(&query).await?;
            let Some(last) = page.last() else { break };
            query = query.after(last.id);
            pending.extend(page);
        }
        pending.sort_by_key(|l| l.event_position);
        let mut summary = ReplaySummary::default();
        let mut failed_streams = std::collections::HashSet::new();
        for letter in pending {
            if failed_streams.contains(&letter.stream_id) {
                summary.skipped += 1;
                continue;
            }
            match self.replay(letter.id).await? {
                ReplayOutcome::Resolved => summary.resolved += 1,
                ReplayOutcome::Failed(_) => {
                    summary.failed += 1;
                    failed_streams.insert(letter.stream_id);
                }
                ReplayOutcome::NotPending => {}
            }
        }
        Ok(summary)
    }
}

/// A runner started with [`ProjectionRunner::spawn`].
#[derive(Debug)]
pub struct ProjectionHandle {
    name: String,
    trigger: crate::shutdown::ShutdownTrigger,
    task: tokio::task::JoinHandle<Result<(), ProjectionError>>,
}

impl ProjectionHandle {
    /// The projection's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the runner has ended (stopped, or failed by policy).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Asks the runner to stop after its current batch and waits for it.
    pub async fn stop(self) -> Result<(), ProjectionError> {
        self.trigger.trigger();
        self.join().await
    }

    /// Waits for the runner to end on its own.
    pub async fn join(self) -> Result<(), ProjectionError> {
        match self.task.await {
            Ok(r) => r,
            Err(e) => Err(ProjectionError::Store(Error::backend(
                "running the projection task",
                e,
            ))),
        }
    }

    /// Kills the runner's task at once, as a crash would (what it had not
    /// committed is rolled back).
    pub fn abort(&self) {
        self.task.abort();
    }
}
