//! The repository: load aggregates (snapshot + newer events) and execute
//! commands with optimistic concurrency and bounded retries.

use std::marker::PhantomData;

use crate::aggregate::{Aggregate, AggregateState};
use crate::metrics as m;
use crate::snapshot::{NoSnapshots, Snapshot, SnapshotFold, SnapshotStore};
use crate::store::{encode_events, AppendResult, EventStore, ExpectedVersion, PayloadRef, Session};
use crate::{Envelope, Error, Metadata, SchemaRegistry, VersionConflict};

/// How snapshots are written after a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SnapshotWrite {
    /// On a background task: the command returns as soon as its events are
    /// appended, so the snapshot adds no round trip to its latency (needs a
    /// Tokio runtime). A failed write is logged and counted, never fatal.
    #[default]
    Background,
    /// Before the command returns (deterministic; for tests and batch jobs).
    Inline,
}

/// An aggregate loaded from its snapshot and events.
#[derive(Debug, Clone)]
pub struct Loaded<A> {
    /// The state.
    pub state: A,
    /// The stream version the state reflects (0: no events yet).
    pub version: u64,
    /// The version of the snapshot the load started from, if one was used.
    pub snapshot_version: Option<u64>,
    /// How many events were replayed on top of the snapshot.
    pub events_replayed: u64,
    /// Whether a stored snapshot had to be ignored (so a fresh one is due).
    pub snapshot_invalidated: bool,
}

/// A command's outcome.
#[derive(Debug)]
pub struct Executed<A: Aggregate> {
    /// The new events with their envelopes (empty when the command decided
    /// nothing needed to happen).
    pub events: Vec<Envelope<A::Event>>,
    /// The stream version after the command.
    pub version: u64,
    /// The state after the command.
    pub state: A,
    /// How many attempts it took (1 without conflicts).
    pub attempts: u32,
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError<E: std::error::Error + 'static> {
    /// The aggregate rejected the command; nothing was written.
    #[error("command rejected: {0}")]
    Rejected(#[source] E),
    /// Other writers kept changing the aggregate; every retry conflicted.
    #[error("command gave up after {attempts} attempts: {source}; the aggregate is under heavy contention, retry later or raise the repository's max_retries")]
    Conflict {
        /// How many attempts were made.
        attempts: u32,
        /// The last conflict.
        #[source]
        source: VersionConflict,
    },
    /// The store failed (or an event could not be decoded).
    #[error(transparent)]
    Store(#[from] Error),
}

/// Loads aggregates and executes commands against them.
///
/// ```
/// # use annals::{Aggregate, InMemoryEventStore, InMemorySnapshotStore, Metadata, Repository};
/// # #[derive(Debug, Clone, PartialEq, annals::Event)]
/// # enum CounterEvent { Added(u32) }
/// # #[derive(Default, serde::Serialize, serde::Deserialize, schemars::JsonSchema, annals::Aggregate)]
/// # #[aggregate(event = CounterEvent, snapshot_every = 2)]
/// # struct Counter { total: u64 }
/// # #[derive(Debug, thiserror::Error)] #[error("never")] struct Never;
/// # impl Aggregate for Counter {
/// #     type Command = u32; type Error = Never;
/// #     fn handle(&self, add: &u32) -> Result<Vec<CounterEvent>, Never> { Ok(vec![CounterEvent::Added(*add)]) }
/// #     fn apply(&mut self, CounterEvent::Added(n): &CounterEvent) { self.total += u64::from(*n) }
/// # }
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let repo = Repository::<Counter, _, _>::new(InMemoryEventStore::new())
///     .with_snapshots(InMemorySnapshotStore::new())
///     .inline_snapshots();
/// for n in 1..=5 {
///     repo.execute("c1", &n, &Metadata::new()).await?;
/// }
/// let loaded = repo.load("c1").await?;
/// assert_eq!(loaded.state.total, 15);
/// assert_eq!(loaded.snapshot_version, Some(4));
/// assert_eq!(loaded.events_replayed, 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct Repository<A, S, N = NoSnapshots> {
    store: S,
    snapshots: N,
    max_retries: u32,
    snapshot_write: SnapshotWrite,
    snapshot_every: Option<u64>,
    _aggregate: PhantomData<fn() -> A>,
}

impl<A: Aggregate, S: EventStore> Repository<A, S, NoSnapshots> {
    /// A repository of aggregate `A` on `store`, without snapshots,
    /// retrying conflicts 3 times. The aggregate type is usually inferred
    /// from the binding (`let repo: Repository<Lead, _> = …`), or named
    /// with [`Repository::of`].
    pub fn new(store: S) -> Self {
        Repository {
            store,
            snapshots: NoSnapshots,
            max_retries: 3,
            snapshot_write: SnapshotWrite::default(),
            snapshot_every: A::SNAPSHOT_EVERY,
            _aggregate: PhantomData,
        }
    }
}

impl<S: EventStore> Repository<(), S, NoSnapshots> {
    /// A repository of aggregate `A` on `store`: [`Repository::new`] with
    /// the aggregate named, `Repository::of::<Lead>(store)`.
    pub fn of<A: Aggregate>(store: S) -> Repository<A, S, NoSnapshots> {
        Repository::new(store)
    }
}

impl<A: Aggregate, S: EventStore, N: SnapshotStore<S>> Repository<A, S, N> {
    /// Uses a snapshot store (the policy is the aggregate's `snapshot_every`).
    pub fn with_snapshots<N2: SnapshotStore<S>>(self, snapshots: N2) -> Repository<A, S, N2> {
        Repository {
            store: self.store,
            snapshots,
            max_retries: self.max_retries,
            snapshot_write: self.snapshot_write,
            snapshot_every: self.snapshot_every,
            _aggregate: PhantomData,
        }
    }

    /// How many times a command is retried after a version conflict.
    pub fn max_retries(mut self, retries: u32) -> Self {
        self.max_retries = retries;
        self
    }

    /// Overrides the aggregate's snapshot policy (`None`: no snapshots).
    pub fn snapshot_every(mut self, every: Option<u64>) -> Self {
        self.snapshot_every = every.filter(|n| *n > 0);
        self
    }

    /// Writes snapshots before commands return (see [`SnapshotWrite`]).
    pub fn inline_snapshots(mut self) -> Self {
        self.snapshot_write = SnapshotWrite::Inline;
        self
    }

    /// The event store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Loads an aggregate: its newest usable snapshot plus the events after
    /// it. A snapshot of another shape or codec version, or one that does
    /// not decode, is ignored with a warning and the stream replayed in full.
    pub async fn load(&self, id: &str) -> Result<Loaded<A>, Error> {
        let stream = A::stream_id(id);
        let mut session = self.store.session().await?;
        let (loaded, _) = self.load_on(&mut session, &stream).await?;
        Ok(loaded)
    }

    /// Whether loads start from snapshots: a policy, and a store that keeps
    /// them.
    fn uses_snapshots(&self) -> bool {
        self.snapshot_every.is_some() && self.snapshots.keeps_snapshots()
    }

    /// Loads the aggregate of `stream` on `session`: only types, versions
    /// and payloads, folded as they arrive (a load needs no envelopes and
    /// never holds the stream in memory). Also returns the registry the
    /// events were decoded with.
    async fn load_on<'s>(
        &'s self,
        session: &mut S::Session,
        stream: &str,
    ) -> Result<(Loaded<A>, &'s SchemaRegistry), Error> {
        let registry = self.store.registry();
        registry.register::<A::Event>()?;
        let mut loaded = Loaded::empty();
        let mut fold = Fold {
            loaded: &mut loaded,
            registry,
            stream,
        };
        let replayed = if self.uses_snapshots() {
            self.snapshots
                .load_and_fold(session, self.store.tenant_id(), A::TYPE, stream, &mut fold)
                .await?
        } else {
            session
                .fold_stream_payloads(stream, .., |p| fold.event(p))
                .await?
        };
        loaded.replayed(replayed);
        Ok((loaded, registry))
    }

    /// One attempt of a command: load, decide and append on one session
    /// (one connection on Postgres).
    async fn attempt(
        &self,
        stream: &str,
        command: &A::Command,
        metadata: &Metadata,
    ) -> Result<Attempt<A>, Error> {
        let mut session = self.store.session().await?;
        let (loaded, registry) = self.load_on(&mut session, stream).await?;
        let events = match loaded.state.handle(command) {
            Ok(events) => events,
            Err(e) => return Ok(Attempt::Rejected(e)),
        };
        let result = if events.is_empty() {
            None
        } else {
            let encoded = encode_events(registry, &events, metadata)?;
            let expected = ExpectedVersion::from_current(Some(loaded.version));
            Some(session.append(stream, expected, encoded).await?)
        };
        Ok(Attempt::Decided {
            loaded,
            events,
            result,
        })
    }

    /// Executes a command: load, decide, append with the loaded version as
    /// the expected one; on a conflict, reload and decide again, up to
    /// `max_retries` times. The metadata (correlation and causation ids,
    /// user) goes on every event.
    pub async fn execute(
        &self,
        id: &str,
        command: &A::Command,
        metadata: &Metadata,
    ) -> Result<Executed<A>, CommandError<A::Error>> {
        let stream = A::stream_id(id);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let outcome = |o: &'static str| {
                metrics::counter!(m::COMMANDS_TOTAL, "aggregate" => A::TYPE, "outcome" => o)
                    .increment(1);
            };
            match self.attempt(&stream, command, metadata).await {
                Ok(Attempt::Rejected(e)) => {
                    outcome("rejected");
                    return Err(CommandError::Rejected(e));
                }
                Ok(Attempt::Decided {
                    loaded,
                    events: _,
                    result: None,
                }) => {
                    outcome("ok");
                    return Ok(Executed {
                        events: Vec::new(),
                        version: loaded.version,
                        state: loaded.state,
                        attempts: attempt,
                    });
                }
                Ok(Attempt::Decided {
                    mut loaded,
                    events,
                    result: Some(result),
                }) => {
                    for e in &events {
                        loaded.state.apply(e);
                    }
                    let envelopes: Vec<Envelope<A::Event>> = result
                        .events
                        .into_iter()
                        .zip(events)
                        .map(|(r, e)| r.map(|_| e))
                        .collect();
                    outcome("ok");
                    if self.snapshot_due(&loaded, result.version) {
                        let replace = loaded.snapshot_invalidated;
                        self.write_snapshot(&stream, &loaded.state, result.version, replace)
                            .await;
                    }
                    return Ok(Executed {
                        events: envelopes,
                        version: result.version,
                        state: loaded.state,
                        attempts: attempt,
                    });
                }
                Err(Error::Conflict(c)) => {
                    if attempt > self.max_retries {
                        outcome("conflict");
                        return Err(CommandError::Conflict {
                            attempts: attempt,
                            source: c,
                        });
                    }
                    metrics::counter!(m::COMMAND_RETRIES_TOTAL, "aggregate" => A::TYPE)
                        .increment(1);
                    tracing::debug!(aggregate = A::TYPE, stream = %stream, attempt, "version conflict; reloading and retrying");
                }
                Err(e) => {
                    outcome("error");
                    return Err(CommandError::Store(e));
                }
            }
        }
    }

    /// Whether the append that moved the stream from `loaded.version` to
    /// `new_version` crossed a multiple of the policy (or the stored
    /// snapshot was unusable and the stream is long enough to deserve one).
    fn snapshot_due(&self, loaded: &Loaded<A>, new_version: u64) -> bool {
        let Some(every) = self.snapshot_every.filter(|_| self.uses_snapshots()) else {
            return false;
        };
        new_version / every > loaded.version / every
            || (loaded.snapshot_invalidated && new_version >= every)
    }

    /// Writes a snapshot; `replace`: over the stored one whatever its
    /// version (it was unusable: one beyond the end of its stream has a
    /// higher version than any fresh one).
    async fn write_snapshot(&self, stream: &str, state: &A, version: u64, replace: bool) {
        let encoded = match state.encode_state() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(aggregate = A::TYPE, stream, error = %e, "cannot encode a snapshot");
                metrics::counter!(m::SNAPSHOT_WRITE_ERRORS_TOTAL, "aggregate" => A::TYPE)
                    .increment(1);
                return;
            }
        };
        let snapshot = Snapshot {
            aggregate_type: A::TYPE.to_owned(),
            aggregate_id: stream.to_owned(),
            version,
            state: encoded,
            fingerprint: A::state_fingerprint().to_owned(),
            codec_version: A::CODEC_VERSION,
        };
        let store = self.snapshots.clone();
        let tenant = self.store.tenant_id().clone();
        let save = async move {
            let saved = if replace {
                store.replace(&tenant, snapshot).await
            } else {
                store.save(&tenant, snapshot).await
            };
            match saved {
                Ok(()) => {
                    metrics::counter!(m::SNAPSHOT_WRITES_TOTAL, "aggregate" => A::TYPE).increment(1)
                }
                Err(e) => {
                    tracing::warn!(aggregate = A::TYPE, error = %e, "snapshot write failed; the next load replays more events");
                    metrics::counter!(m::SNAPSHOT_WRITE_ERRORS_TOTAL, "aggregate" => A::TYPE)
                        .increment(1);
                }
            }
        };
        match (self.snapshot_write, tokio::runtime::Handle::try_current()) {
            (SnapshotWrite::Background, Ok(handle)) => {
                handle.spawn(save);
            }
            _ => save.await,
        }
    }
}

/// What one attempt of a command came to.
enum Attempt<A: Aggregate> {
    /// The aggregate rejected the command.
    Rejected(A::Error),
    /// The command decided `events` on the `loaded` state; `result` is
    /// their append (`None`: no events).
    Decided {
        loaded: Loaded<A>,
        events: Vec<A::Event>,
        result: Option<AppendResult>,
    },
}

impl<A> Loaded<A>
where
    A: Default,
{
    /// Nothing loaded yet.
    fn empty() -> Self {
        Loaded {
            state: A::default(),
            version: 0,
            snapshot_version: None,
            events_replayed: 0,
            snapshot_invalidated: false,
        }
    }
}

impl<A: AggregateState> Loaded<A> {
    /// Records that the load replayed `n` events (and counts them).
    fn replayed(&mut self, n: u64) {
        self.events_replayed = n;
        metrics::counter!(m::EVENTS_REPLAYED_TOTAL, "aggregate" => A::TYPE).increment(n);
    }
}

/// Folds a snapshot and the events after it into a [`Loaded`].
struct Fold<'a, A> {
    loaded: &'a mut Loaded<A>,
    registry: &'a SchemaRegistry,
    stream: &'a str,
}

impl<A: Aggregate> SnapshotFold for Fold<'_, A> {
    fn snapshot(&mut self, snapshot: Option<Snapshot>) -> u64 {
        let Some(s) = snapshot else {
            metrics::counter!(m::SNAPSHOT_MISSES_TOTAL, "aggregate" => A::TYPE).increment(1);
            return 0;
        };
        match usable::<A>(&s) {
            Ok(state) => {
                metrics::counter!(m::SNAPSHOT_HITS_TOTAL, "aggregate" => A::TYPE).increment(1);
                self.loaded.state = state;
                self.loaded.version = s.version;
                self.loaded.snapshot_version = Some(s.version);
                s.version
            }
            Err(reason) => {
                self.snapshot_unusable(s, reason);
                0
            }
        }
    }

    fn snapshot_unusable(&mut self, s: Snapshot, reason: &'static str) {
        tracing::warn!(
            aggregate = A::TYPE,
            stream = %self.stream,
            snapshot_version = s.version,
            reason,
            "ignoring an unusable snapshot; replaying the stream in full"
        );
        metrics::counter!(m::SNAPSHOT_INVALIDATIONS_TOTAL, "aggregate" => A::TYPE, "reason" => reason)
            .increment(1);
        self.loaded.snapshot_invalidated = true;
    }

    fn event(&mut self, p: PayloadRef<'_>) -> Result<(), Error> {
        let event = crate::store::decode_payload::<A::Event>(self.registry, self.stream, p)?;
        self.loaded.state.apply(&event);
        self.loaded.version = p.stream_version;
        Ok(())
    }
}

/// The snapshot's state, or why it cannot be used.
fn usable<A: AggregateState>(s: &Snapshot) -> Result<A, &'static str> {
    if s.fingerprint != A::state_fingerprint() {
        return Err("fingerprint");
    }
    if s.codec_version != A::CODEC_VERSION {
        return Err("codec");
    }
    A::decode_state(&s.state).map_err(|_| "decode")
}
