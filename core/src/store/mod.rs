//! The event store: appends with optimistic concurrency, reads of one
//! stream, reads of the global log.
//!
//! [`EventStore`] is what a backend implements: a few primitives on stored
//! rows, plus a [`Session`] (one connection) for a command's load and
//! append. [`EventStoreExt`] is the typed layer every store gets: it encodes,
//! validates, decodes and upcasts application events.
//!
//! The read methods follow one naming scheme:
//!
//! | | whole envelopes | payloads only (version, type, payload) |
//! |---|---|---|
//! | collected into a `Vec` | [`read_stream`](EventStoreExt::read_stream), [`read_stream_as`](EventStoreExt::read_stream_as), [`read_stream_with`](EventStore::read_stream_with) | [`read_stream_payloads_as`](EventStoreExt::read_stream_payloads_as) |
//! | folded as they arrive | | [`fold_stream_payloads`](EventStore::fold_stream_payloads) |
//!
//! - `_as::<E>`: decoded into the application's event type `E` (old
//!   versions validated and upcast); without it, the stored JSON.
//! - Stream reads take a range of stream versions, which start at 1:
//!   `..` (the whole stream), `5..`, `5..=9`, `..10`.
//! - Reads of the global log ([`read_log`](EventStore::read_log)) take the
//!   reader's checkpoint (exclusive) and a page size.

use std::fmt;
use std::future::Future;
use std::ops::{Bound, RangeBounds};
use std::time::Duration;

use chrono::{DateTime, Utc};

use serde::{Deserialize, Serialize};

use crate::tenant::TenantId;
use crate::{Envelope, Error, Event, Metadata, NewEvent, RecordedEvent, SchemaRegistry};

pub mod limits;
mod memory;

pub use memory::{InMemoryEventStore, MemoryWatcher};

/// A place in the global log: the id of the transaction that wrote an event
/// and the event's global position.
///
/// Readers of the whole log order events by `(transaction_id, position)`; a
/// checkpoint is the pair of the last event a reader processed. Positions are
/// unique but may have gaps (rolled-back appends); transaction ids order the
/// commits so that a reader resuming from a checkpoint never skips an event
/// that committed late.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct LogPosition {
    /// The id of the transaction that wrote the event (`xid8` in Postgres).
    pub transaction_id: u64,
    /// The event's global position, unique across the store.
    pub position: u64,
}

impl LogPosition {
    /// The position before the first event: reading from here reads the whole log.
    pub const START: LogPosition = LogPosition {
        transaction_id: 0,
        position: 0,
    };

    /// A position from its two parts.
    pub const fn new(transaction_id: u64, position: u64) -> Self {
        LogPosition {
            transaction_id,
            position,
        }
    }
}

/// What an append expects of its stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ExpectedVersion {
    /// Append whatever the stream's version.
    Any,
    /// The stream must not exist yet (no events).
    NoStream,
    /// The stream's last event must have exactly this version.
    Exact(u64),
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpectedVersion::Any => f.write_str("any version"),
            ExpectedVersion::NoStream => f.write_str("no stream"),
            ExpectedVersion::Exact(v) => write!(f, "version {v}"),
        }
    }
}

impl ExpectedVersion {
    /// The expectation that matches a stream currently at `version`
    /// (`None`: the stream does not exist).
    pub fn from_current(version: Option<u64>) -> Self {
        match version {
            None | Some(0) => ExpectedVersion::NoStream,
            Some(v) => ExpectedVersion::Exact(v),
        }
    }

    /// Whether a stream at `actual` satisfies this expectation.
    pub fn matches(&self, actual: Option<u64>) -> bool {
        match (self, actual) {
            (ExpectedVersion::Any, _) => true,
            (ExpectedVersion::NoStream, None) => true,
            (ExpectedVersion::NoStream, Some(_)) => false,
            (ExpectedVersion::Exact(e), Some(a)) => *e == a,
            (ExpectedVersion::Exact(_), None) => false,
        }
    }
}

/// How far a store's snapshot horizon holds readers of the global log back.
///
/// Log readers only see events written by transactions that finished
/// before the oldest still-open one, so that nothing can commit later behind
/// a reader's checkpoint. A long-open transaction therefore delays every
/// reader; this says by how much. Stores without concurrent transactions
/// (the in-memory one) report [`Horizon::CLEAR`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Horizon {
    /// The horizon: every transaction id below it has finished.
    pub xmin: u64,
    /// When the oldest still-open transaction (the one holding the horizon)
    /// started, if any is open.
    pub oldest_open_since: Option<DateTime<Utc>>,
    /// Seconds the horizon has been held back (0 when nothing is open).
    pub lag_seconds: f64,
    /// Committed events not yet visible to log readers because an older
    /// transaction is still open.
    pub events_held_back: u64,
}

impl Horizon {
    /// Nothing held back.
    pub const CLEAR: Horizon = Horizon {
        xmin: 0,
        oldest_open_since: None,
        lag_seconds: 0.0,
        events_held_back: 0,
    };
}

/// The committed events past a place in the global log: how far behind a
/// reader with that checkpoint is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backlog {
    /// How many events.
    pub events: u64,
    /// When the oldest of them was recorded (`None` when there are none).
    pub oldest_recorded_at: Option<DateTime<Utc>>,
}

/// One stored payload, borrowed from wherever the store holds it while a
/// stream is folded ([`EventStore::fold_stream_payloads`]).
///
/// It has no global position: folding a stream does not need one, and the
/// Postgres store leaves it out of its lean reads. An error raised while
/// folding a payload names no position, and the store fills it in before
/// returning it (see [`Error::at_position`]).
#[derive(Debug, Clone, Copy)]
pub struct PayloadRef<'a> {
    /// The event's version in its stream.
    pub stream_version: u64,
    /// The event type.
    pub event_type: &'a str,
    /// The stored schema version.
    pub schema_version: u32,
    /// The payload's JSON text, as stored (decoders parse it once; a
    /// payload that is not JSON is a decode error, not a panic).
    pub payload: &'a str,
    /// The same payload as an already checked JSON value, when the store
    /// holds one (the in-memory store does; rows from Postgres are text):
    /// [`to_raw_value`](Self::to_raw_value) then copies it without parsing
    /// it again.
    pub raw: Option<&'a serde_json::value::RawValue>,
}

impl PayloadRef<'_> {
    /// The payload as an owned JSON value: a copy of [`raw`](Self::raw)
    /// when there is one, else `payload` parsed (a payload that is not
    /// JSON is [`Error::CorruptedRow`]).
    pub fn to_raw_value(&self) -> Result<Box<serde_json::value::RawValue>, Error> {
        match self.raw {
            Some(raw) => Ok(raw.to_owned()),
            None => {
                serde_json::value::RawValue::from_string(self.payload.to_owned()).map_err(|e| {
                    Error::CorruptedRow {
                        position: None,
                        message: format!("payload is not JSON: {e}"),
                    }
                })
            }
        }
    }
}

/// A decoded event with its version in its stream, without the rest of
/// the envelope: what [`EventStoreExt::read_stream_payloads_as`] returns.
#[derive(Debug, Clone, PartialEq)]
pub struct Versioned<E> {
    /// The event's version in its stream.
    pub stream_version: u64,
    /// The event, decoded and upcast.
    pub event: E,
}

/// A range of stream versions, from any Rust range over `u64`
/// (`..`, `5..`, `5..=9`, `..10`). Versions start at 1: a range that
/// starts at 0 starts at 1.
///
/// Backends turn the range a read was given into this with
/// [`VersionRange::new`].
///
/// ```
/// use annals::store::VersionRange;
///
/// assert_eq!(VersionRange::new(..), VersionRange { first: 1, last: None });
/// assert_eq!(VersionRange::new(5..10), VersionRange { first: 5, last: Some(9) });
/// assert_eq!(VersionRange::new(0..=3).count(), Some(3));
/// assert!(VersionRange::new(4..4).is_empty());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VersionRange {
    /// The first version (inclusive, at least 1).
    pub first: u64,
    /// The last version (inclusive; `None`: to the end of the stream).
    pub last: Option<u64>,
}

impl VersionRange {
    /// The whole stream.
    pub const ALL: VersionRange = VersionRange {
        first: 1,
        last: None,
    };

    /// The range of versions `bounds` covers.
    pub fn new(bounds: impl RangeBounds<u64>) -> Self {
        let first = match bounds.start_bound() {
            Bound::Included(&v) => v,
            Bound::Excluded(&v) => v.saturating_add(1),
            Bound::Unbounded => 1,
        }
        .max(1);
        let last = match bounds.end_bound() {
            Bound::Included(&v) => Some(v),
            // `..0` covers nothing: last 0 is below every first
            Bound::Excluded(&v) => Some(v.saturating_sub(1)),
            Bound::Unbounded => None,
        };
        VersionRange { first, last }
    }

    /// Whether the range covers no version.
    pub fn is_empty(&self) -> bool {
        self.last.is_some_and(|last| last < self.first)
    }

    /// How many versions the range covers (`None`: to the end of the stream).
    pub fn count(&self) -> Option<u64> {
        self.last
            .map(|last| last.saturating_sub(self.first).saturating_add(1))
            .map(|n| if self.is_empty() { 0 } else { n })
    }

    /// Whether `version` is in the range.
    pub fn contains(&self, version: u64) -> bool {
        version >= self.first && self.last.is_none_or(|last| version <= last)
    }
}

/// The outcome of a successful append.
#[derive(Debug, Clone)]
pub struct AppendResult {
    /// The stream's version after the append (its last event's version).
    pub version: u64,
    /// The appended events with their envelopes (positions, times).
    pub events: Vec<RecordedEvent>,
}

/// How many events [`EventStoreExt::fold_stream_as`] reads per page.
pub const STREAM_PAGE: u64 = 1_000;

/// An event store at the level of stored rows: appends with optimistic
/// concurrency, reads of one stream, and reads of the global log.
///
/// Every backend has the same semantics, pinned by the conformance suite
/// (`annals::testing::conformance`, feature `testing`):
///
/// - stream versions start at 1 and have no gaps;
/// - an append of several events is all-or-nothing;
/// - a stream at another version than expected refuses the append with
///   [`Error::Conflict`] and writes nothing;
/// - with validation on (the default), every payload is checked against its
///   (type, version) schema before anything is written;
/// - the global log is read in `(transaction_id, position)` order, and a
///   reader that resumes after its last [`LogPosition`] never skips an event.
///
/// A backend implements the reads, [`session`](Self::session) and the
/// [`Session`] it returns; [`append`](Self::append) and
/// [`fold_stream_payloads`](Self::fold_stream_payloads) default to a
/// session of their own.
pub trait EventStore: Send + Sync + 'static {
    /// One connection of the store, for a load and an append in a row
    /// (a command): see [`Session`].
    type Session: Session;

    /// The schema registry used to validate and decode.
    fn registry(&self) -> &SchemaRegistry;

    /// Whether appends validate payloads against their schemas.
    fn validates_on_append(&self) -> bool;

    /// The tenant this handle reads and writes (see [`crate::tenant`]).
    fn tenant_id(&self) -> &TenantId;

    /// The same store scoped to `tenant`: the same storage, only that
    /// tenant's streams and log. [`EventStoreExt::tenant`] checks an id
    /// given as text.
    fn in_tenant(&self, tenant: TenantId) -> Self
    where
        Self: Sized;

    /// A session: one connection of the store until it is dropped.
    fn session(&self) -> impl Future<Output = Result<Self::Session, Error>> + Send;

    /// Appends events to a stream if it is at the expected version. The
    /// default appends on a session of its own.
    fn append(
        &self,
        stream_id: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> impl Future<Output = Result<AppendResult, Error>> + Send {
        async move {
            let mut session = self.session().await?;
            session.append(stream_id, expected, events).await
        }
    }

    /// Reads the events of a stream in `versions`, in version order, with
    /// every envelope field, each payload turned into a `T` by `decode`
    /// from the stored JSON text (where it arrives, without copying it
    /// first). An error from `decode` stops the read and is returned with
    /// the event's global position filled in ([`Error::at_position`]).
    ///
    /// ```
    /// use annals::{EventStore, EventStoreExt, ExpectedVersion, InMemoryEventStore, Metadata};
    ///
    /// #[derive(Debug, Clone, PartialEq, annals::Event)]
    /// enum CounterEvent { Added(u32) }
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let store = InMemoryEventStore::new();
    /// let events = [CounterEvent::Added(2), CounterEvent::Added(3)];
    /// store.append_events("c1", ExpectedVersion::NoStream, &events, &Metadata::new()).await?;
    /// // each event's stored JSON, with its envelope
    /// let read = store.read_stream_with("c1", .., |p| Ok(p.payload.len())).await?;
    /// assert_eq!(read.len(), 2);
    /// assert_eq!((read[1].stream_version, read[1].payload), (2, 1));
    /// # Ok::<(), annals::Error>(())
    /// # }).unwrap();
    /// ```
    fn read_stream_with<T, F>(
        &self,
        stream_id: &str,
        versions: impl RangeBounds<u64> + Send,
        decode: F,
    ) -> impl Future<Output = Result<Vec<Envelope<T>>, Error>> + Send
    where
        T: Send,
        F: FnMut(PayloadRef<'_>) -> Result<T, Error> + Send;

    /// Calls `f` with the payload of each event of a stream in `versions`,
    /// in version order, as the rows arrive; returns how many there were.
    /// Loading an aggregate folds its events this way without holding the
    /// stream in memory. An error from `f` stops the fold and is returned,
    /// with the failing event's global position filled in
    /// ([`Error::at_position`]). The default folds on a session of its own.
    fn fold_stream_payloads<F>(
        &self,
        stream_id: &str,
        versions: impl RangeBounds<u64> + Send,
        f: F,
    ) -> impl Future<Output = Result<u64, Error>> + Send
    where
        F: FnMut(PayloadRef<'_>) -> Result<(), Error> + Send,
    {
        async move {
            let mut session = self.session().await?;
            session.fold_stream_payloads(stream_id, versions, f).await
        }
    }

    /// Reads up to `limit` events of the global log after `after` (the
    /// reader's checkpoint, exclusive), in `(transaction_id, position)` order.
    ///
    /// An event whose envelope cannot be read (a row written by hand, or
    /// damaged) ends the page early: the events before it are returned,
    /// and a read from the last of them fails with
    /// [`Error::UnreadableEvent`], which names the event (its position,
    /// stream, type) so the reader can park or skip it and read on after
    /// it, as a projection runner does.
    fn read_log(
        &self,
        after: LogPosition,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<RecordedEvent>, Error>> + Send;

    /// The version of a stream's last event (`None`: no such stream).
    fn stream_version(
        &self,
        stream_id: &str,
    ) -> impl Future<Output = Result<Option<u64>, Error>> + Send;

    /// The event at a global position (`None`: no event there, e.g. a gap
    /// left by a rolled-back append). Used to replay dead letters.
    fn read_event(
        &self,
        position: u64,
    ) -> impl Future<Output = Result<Option<RecordedEvent>, Error>> + Send;

    /// The committed events after `after` in log order: how far behind a
    /// reader at that checkpoint is. The default pages through
    /// [`read_log`](Self::read_log); backends override it with a count.
    fn backlog(&self, after: LogPosition) -> impl Future<Output = Result<Backlog, Error>> + Send {
        async move {
            let mut backlog = Backlog {
                events: 0,
                oldest_recorded_at: None,
            };
            let mut from = after;
            loop {
                let page = self.read_log(from, 1000).await?;
                let Some(last) = page.last() else {
                    return Ok(backlog);
                };
                from = last.log_position;
                backlog.events += page.len() as u64;
                for e in &page {
                    backlog.oldest_recorded_at = Some(match backlog.oldest_recorded_at {
                        Some(t) => t.min(e.recorded_at),
                        None => e.recorded_at,
                    });
                }
            }
        }
    }

    /// The log position of the newest committed event, whether or not log
    /// readers can see it yet (`None`: an empty log, or a store where every
    /// committed event is visible at once, which is the default). A
    /// [`catch_up`](crate::ProjectionRunner::catch_up) waits until it has
    /// read this far, so events committed before it started are applied
    /// even while an open transaction holds the horizon back for a moment.
    fn log_end(&self) -> impl Future<Output = Result<Option<LogPosition>, Error>> + Send {
        async { Ok(None) }
    }

    /// How far the snapshot horizon holds log readers back. The default
    /// (for stores without concurrent transactions) is [`Horizon::CLEAR`].
    fn horizon(&self) -> impl Future<Output = Result<Horizon, Error>> + Send {
        async { Ok(Horizon::CLEAR) }
    }
}

/// One connection of an [`EventStore`], held until it is dropped: a
/// command loads its aggregate and appends its decision on the same one
/// (the Postgres store checks a connection out of its pool once per
/// command instead of twice), and a snapshot store beside the event store
/// reads on it too ([`SnapshotStore::load_and_fold`](crate::SnapshotStore::load_and_fold)).
///
/// A session is not a transaction: each append is atomic on its own, and
/// the load before it is checked by the append's expected version.
///
/// ```
/// use annals::store::Session;
/// use annals::{EventStore, EventStoreExt, ExpectedVersion, InMemoryEventStore, Metadata};
///
/// #[derive(Debug, Clone, PartialEq, annals::Event)]
/// enum NoteEvent { Noted(String) }
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let store = InMemoryEventStore::new();
/// let note = NoteEvent::Noted("hi".into());
/// for _ in 0..5 {
///     // append a note unless the stream already has three
///     let mut session = store.session().await?;
///     let seen = session.fold_stream_payloads("notes-1", .., |_| Ok(())).await?;
///     if seen < 3 {
///         let events = store.encode_events(&[note.clone()], &Metadata::new())?;
///         let expected = ExpectedVersion::from_current(Some(seen));
///         session.append("notes-1", expected, events).await?;
///     }
/// }
/// assert_eq!(store.stream_version("notes-1").await?, Some(3));
/// # Ok::<(), annals::Error>(())
/// # }).unwrap();
/// ```
pub trait Session: Send {
    /// [`EventStore::fold_stream_payloads`] on this session's connection.
    fn fold_stream_payloads<F>(
        &mut self,
        stream_id: &str,
        versions: impl RangeBounds<u64> + Send,
        f: F,
    ) -> impl Future<Output = Result<u64, Error>> + Send
    where
        F: FnMut(PayloadRef<'_>) -> Result<(), Error> + Send;

    /// [`EventStore::append`] on this session's connection (its own
    /// transaction: all of the events or none).
    fn append(
        &mut self,
        stream_id: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> impl Future<Output = Result<AppendResult, Error>> + Send;
}

/// Waits for new events in the global log.
pub trait Watch: Send {
    /// Waits until events may have been appended, or `timeout` elapses,
    /// whichever is first. Returns `true` when woken by an append. Wake-ups
    /// are hints: a reader always reads from its own checkpoint afterwards.
    fn wait(&mut self, timeout: Duration) -> impl Future<Output = bool> + Send;
}

/// A store whose appends can wake readers of the global log (runners use
/// it to follow the log live instead of polling only).
pub trait WatchLog: EventStore {
    /// The watcher type.
    type Watcher: Watch + 'static;

    /// A new watcher, woken by appends that commit after this call.
    fn watch(&self) -> impl Future<Output = Result<Self::Watcher, Error>> + Send;
}

/// The typed layer over any [`EventStore`]: encodes application events,
/// validates, decodes and upcasts. Implemented for every store.
pub trait EventStoreExt: EventStore {
    /// The same store scoped to the tenant `id`: a handle from which no
    /// other tenant's streams can be read or written. An id out of
    /// [`TenantId`]'s limits is [`Error::InvalidInput`] naming `tenant`.
    fn tenant(&self, id: &str) -> Result<Self, Error>
    where
        Self: Sized,
    {
        Ok(self.in_tenant(TenantId::new(id)?))
    }

    /// The same store on every tenant at once, to read the whole log: a
    /// projection (or saga) runner on it follows every tenant's events in
    /// the log's order, each envelope carrying its own tenant, with one
    /// checkpoint (under the tenant `*`). Appends and stream reads through
    /// it are [`Error::InvalidInput`] naming `tenant`: they need one.
    fn every_tenant(&self) -> Self
    where
        Self: Sized,
    {
        self.in_tenant(TenantId::every())
    }

    /// Encodes application events into [`NewEvent`]s with shared metadata
    /// (registering `E` with the store's registry): what
    /// [`append_events`](Self::append_events) appends.
    fn encode_events<E: Event>(
        &self,
        events: &[E],
        metadata: &Metadata,
    ) -> Result<Vec<NewEvent>, Error> {
        encode_events(self.registry(), events, metadata)
    }

    /// Encodes and appends application events with shared metadata.
    fn append_events<E: Event>(
        &self,
        stream_id: &str,
        expected: ExpectedVersion,
        events: &[E],
        metadata: &Metadata,
    ) -> impl Future<Output = Result<AppendResult, Error>> + Send {
        let encoded = self.encode_events(events, metadata);
        async move { self.append(stream_id, expected, encoded?).await }
    }

    /// Reads the events of a stream in `versions` with their envelopes, as
    /// stored (not decoded).
    ///
    /// ```
    /// use annals::{EventStore, EventStoreExt, ExpectedVersion, InMemoryEventStore, Metadata, NewEvent};
    ///
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let store = InMemoryEventStore::new().without_validation();
    /// let payload = serde_json::value::to_raw_value(&serde_json::json!({"name": "Ana"}))?;
    /// let event = NewEvent::new("lead.created", 1, payload, Metadata::new());
    /// let result = store.append("lead-1", ExpectedVersion::NoStream, vec![event]).await?;
    /// assert_eq!(result.version, 1);
    /// let read = store.read_stream("lead-1", ..).await?;
    /// assert_eq!(read[0].payload.get(), r#"{"name":"Ana"}"#);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # }).unwrap();
    /// ```
    fn read_stream(
        &self,
        stream_id: &str,
        versions: impl RangeBounds<u64> + Send,
    ) -> impl Future<Output = Result<Vec<RecordedEvent>, Error>> + Send {
        self.read_stream_with(stream_id, versions, |p| p.to_raw_value())
    }

    /// Reads the events of a stream in `versions` with their envelopes,
    /// decoded into `E` (old versions validated and upcast). Holds the
    /// whole range in memory: for a long stream, fold it a page at a time
    /// with [`fold_stream_as`](Self::fold_stream_as).
    fn read_stream_as<E: Event>(
        &self,
        stream_id: &str,
        versions: impl RangeBounds<u64> + Send,
    ) -> impl Future<Output = Result<Vec<Envelope<E>>, Error>> + Send {
        async move {
            self.registry().register::<E>()?;
            let registry = self.registry();
            self.read_stream_with(stream_id, versions, |p| {
                decode_payload::<E>(registry, stream_id, p)
            })
            .await
        }
    }

    /// Folds the events of a stream in `versions`, with their envelopes,
    /// decoded into `E` (old versions validated and upcast), reading
    /// [`STREAM_PAGE`] events at a time: memory stays bounded by a page
    /// however long the stream, where
    /// [`read_stream_as`](Self::read_stream_as) holds the whole range.
    /// Events appended while the fold runs are folded too if they fall in
    /// `versions`. An error from `f` stops the fold and is returned.
    ///
    /// ```
    /// use annals::{EventStoreExt, ExpectedVersion, InMemoryEventStore, Metadata};
    ///
    /// #[derive(Debug, Clone, PartialEq, annals::Event)]
    /// enum CounterEvent { Added(u32) }
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let store = InMemoryEventStore::new();
    /// let events: Vec<_> = (1..=2_500).map(CounterEvent::Added).collect();
    /// store.append_events("c1", ExpectedVersion::NoStream, &events, &Metadata::new()).await?;
    /// // three pages, never more than one in memory
    /// let sum = store
    ///     .fold_stream_as::<CounterEvent, _, _>("c1", .., 0u64, |sum, e| {
    ///         let CounterEvent::Added(n) = e.payload;
    ///         Ok(sum + u64::from(n))
    ///     })
    ///     .await?;
    /// assert_eq!(sum, 2_500 * 2_501 / 2);
    /// # Ok::<(), annals::Error>(())
    /// # }).unwrap();
    /// ```
    fn fold_stream_as<E, A, F>(
        &self,
        stream_id: &str,
        versions: impl RangeBounds<u64> + Send,
        init: A,
        mut f: F,
    ) -> impl Future<Output = Result<A, Error>> + Send
    where
        E: Event,
        A: Send,
        F: FnMut(A, Envelope<E>) -> Result<A, Error> + Send,
    {
        let range = VersionRange::new(versions);
        async move {
            let mut acc = init;
            let mut from = range.first;
            while range.last.is_none_or(|last| from <= last) {
                let to = from.saturating_add(STREAM_PAGE - 1);
                let to = range.last.map_or(to, |last| last.min(to));
                let page = self.read_stream_as::<E>(stream_id, from..=to).await?;
                // versions have no gaps: a short page is the stream's end
                let full = page.len() as u64 == to - from + 1;
                for event in page {
                    acc = f(acc, event)?;
                }
                if !full || to == u64::MAX {
                    break;
                }
                from = to + 1;
            }
            Ok(acc)
        }
    }

    /// Reads the events of a stream in `versions` decoded into `E`, with
    /// their stream versions but without the rest of the envelope: the
    /// lean read for code that needs only the events themselves (ids,
    /// times and metadata are not fetched). Old versions are validated and
    /// upcast as on every other read.
    ///
    /// ```
    /// use annals::store::Versioned;
    /// use annals::{EventStoreExt, ExpectedVersion, InMemoryEventStore, Metadata};
    ///
    /// #[derive(Debug, Clone, PartialEq, annals::Event)]
    /// enum CounterEvent { Added(u32) }
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let store = InMemoryEventStore::new();
    /// let events = [CounterEvent::Added(2), CounterEvent::Added(3)];
    /// store.append_events("c1", ExpectedVersion::NoStream, &events, &Metadata::new()).await?;
    /// let read = store.read_stream_payloads_as::<CounterEvent>("c1", 2..).await?;
    /// assert_eq!(read, vec![Versioned { stream_version: 2, event: CounterEvent::Added(3) }]);
    /// # Ok::<(), annals::Error>(())
    /// # }).unwrap();
    /// ```
    fn read_stream_payloads_as<E: Event>(
        &self,
        stream_id: &str,
        versions: impl RangeBounds<u64> + Send,
    ) -> impl Future<Output = Result<Vec<Versioned<E>>, Error>> + Send {
        async move {
            let registry = self.registry();
            registry.register::<E>()?;
            let mut events = Vec::new();
            self.fold_stream_payloads(stream_id, versions, |p| {
                events.push(Versioned {
                    stream_version: p.stream_version,
                    event: decode_payload::<E>(registry, stream_id, p)?,
                });
                Ok(())
            })
            .await?;
            Ok(events)
        }
    }

    /// Decodes one stored event into `E`, validating an old-version payload
    /// against its schema before upcasting.
    fn decode<E: Event>(&self, recorded: RecordedEvent) -> Result<Envelope<E>, Error> {
        self.registry().register::<E>()?;
        decode_registered(self.registry(), recorded)
    }
}

impl<S: EventStore + ?Sized> EventStoreExt for S {}

/// Encodes application events into [`NewEvent`]s (registering `E`).
pub(crate) fn encode_events<E: Event>(
    registry: &SchemaRegistry,
    events: &[E],
    metadata: &Metadata,
) -> Result<Vec<NewEvent>, Error> {
    registry.register::<E>()?;
    events
        .iter()
        .map(|e| {
            let payload =
                e.encode()
                    .map_err(|source| match limits::depth_error("payload", &source) {
                        Some(too_deep) => Error::InvalidInput(too_deep),
                        None => Error::Encode {
                            event_type: e.event_type().to_owned(),
                            source,
                        },
                    })?;
            Ok(NewEvent::new(
                e.event_type(),
                e.schema_version(),
                payload,
                metadata.clone(),
            )
            .with_subject(e.subject()))
        })
        .collect()
}

/// Decodes a stored event; `E` must already be registered.
fn decode_registered<E: Event>(
    registry: &SchemaRegistry,
    recorded: RecordedEvent,
) -> Result<Envelope<E>, Error> {
    let event = decode_parts::<E>(
        registry,
        &recorded.event_type,
        recorded.schema_version,
        recorded.payload.get(),
    )
    .map_err(|source| Error::Decode {
        position: Some(recorded.log_position.position),
        stream_id: recorded.stream_id.clone(),
        stream_version: recorded.stream_version,
        source,
    })?;
    Ok(recorded.map(|_| event))
}

/// Decodes one stored payload of a stream; `E` must already be registered.
/// An error names no position: the store fills it in.
pub(crate) fn decode_payload<E: Event>(
    registry: &SchemaRegistry,
    stream_id: &str,
    p: PayloadRef<'_>,
) -> Result<E, Error> {
    decode_parts::<E>(registry, p.event_type, p.schema_version, p.payload).map_err(|source| {
        Error::Decode {
            position: None,
            stream_id: stream_id.to_owned(),
            stream_version: p.stream_version,
            source,
        }
    })
}

/// Validates an old-version payload against its own schema (every payload,
/// when the registry [validates reads](SchemaRegistry::validate_reads)),
/// then decodes and upcasts.
pub(crate) fn decode_parts<E: Event>(
    registry: &SchemaRegistry,
    event_type: &str,
    schema_version: u32,
    payload: &str,
) -> Result<E, crate::event::DecodeError> {
    if let Some(info) = E::type_info(event_type) {
        if schema_version < info.version || registry.validates_reads() {
            if let Some(schema) = registry.get(event_type, schema_version) {
                let value =
                    crate::event::private::parse_value(event_type, schema_version, payload)?;
                schema.validate(&value)?;
            }
        }
    }
    E::decode_json(event_type, schema_version, payload)
}
