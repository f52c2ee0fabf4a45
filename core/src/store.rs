use std::fmt;
use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};

use serde::{Deserialize, Serialize};

use crate::{
    Envelope, Error, Event, LogPosition, Metadata, NewEvent, RecordedEvent, SchemaRegistry,
};

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

/// The part of a stored event that rebuilding state needs: its type,
/// version and payload (plus its position, for error messages). Reading
/// these instead of whole envelopes skips the ids, times and metadata.
#[derive(Debug, Clone)]
pub struct StoredPayload {
    /// The event's global position.
    pub position: u64,
    /// The event's version in its stream.
    pub stream_version: u64,
    /// The event type.
    pub event_type: String,
    /// The stored schema version.
    pub schema_version: u32,
    /// The JSON payload.
    pub payload: Box<serde_json::value::RawValue>,
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
/// Postgres store leaves it out of its lean reads (one column less per
/// row). An error raised while folding a payload names position 0 (not
/// known yet), and the store fills the real one in before returning it
/// (see [`Error::at_position`]).
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
}

/// One command attempt for [`EventStore::fold_and_append`]: the stream's
/// events are folded into it, then it decides what to append.
///
/// ```
/// use annals_core::{
///     CommandFold, Error, EventStore, ExpectedVersion, InMemoryEventStore, Metadata, NewEvent,
///     PayloadRef,
/// };
///
/// /// Appends a `note` event unless the stream already has three events.
/// struct AtMostThree {
///     seen: u64,
/// }
///
/// impl CommandFold for AtMostThree {
///     fn event(&mut self, p: PayloadRef<'_>) -> Result<(), Error> {
///         self.seen = p.stream_version;
///         Ok(())
///     }
///
///     fn decide(&mut self) -> Result<Option<(ExpectedVersion, Vec<NewEvent>)>, Error> {
///         if self.seen >= 3 {
///             return Ok(None);
///         }
///         let payload = serde_json::value::RawValue::from_string("\"hi\"".to_owned())
///             .map_err(|e| Error::backend("encoding", e))?;
///         let note = NewEvent::new("note", 1, payload, Metadata::new());
///         Ok(Some((ExpectedVersion::from_current(Some(self.seen)), vec![note])))
///     }
/// }
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let store = InMemoryEventStore::new().without_validation();
/// for _ in 0..5 {
///     store.fold_and_append("notes-1", &mut AtMostThree { seen: 0 }).await?;
/// }
/// assert_eq!(store.stream_version("notes-1").await?, Some(3));
/// # Ok::<(), Error>(())
/// # }).unwrap();
/// ```
pub trait CommandFold: Send {
    /// Folds one stored event, in version order (as the callback of
    /// [`EventStore::fold_stream_payloads`]).
    fn event(&mut self, payload: PayloadRef<'_>) -> Result<(), Error>;

    /// After the fold: the events to append and the version the stream
    /// must be at (`None`: append nothing). An error stops the attempt and
    /// is returned as it is.
    fn decide(&mut self) -> Result<Option<(ExpectedVersion, Vec<NewEvent>)>, Error>;
}

/// The outcome of a successful append.
#[derive(Debug, Clone)]
pub struct AppendResult {
    /// The stream's version after the append (its last event's version).
    pub version: u64,
    /// The appended events with their envelopes (positions, times).
    pub events: Vec<RecordedEvent>,
}

/// An event store at the level of stored rows: appends with optimistic
/// concurrency, reads of one stream, and reads of the global log.
///
/// Every backend has the same semantics, pinned by the conformance suite
/// (`annals_core::testing::conformance`, feature `testing`):
///
/// - stream versions start at 1 and have no gaps;
/// - an append of several events is all-or-nothing;
/// - a stream at another version than expected refuses the append with
///   [`Error::Conflict`] and writes nothing;
/// - with validation on (the default), every payload is checked against its
///   (type, version) schema before anything is written;
/// - the global log is read in `(transaction_id, position)` order, and a
///   reader that resumes after its last [`LogPosition`] never skips an event.
pub trait EventStore: Send + Sync + 'static {
    /// The schema registry used to validate and decode.
    fn registry(&self) -> &SchemaRegistry;

    /// Whether appends validate payloads against their schemas.
    fn validates_on_append(&self) -> bool;

    /// Appends events to a stream if it is at the expected version.
    fn append(
        &self,
        stream_id: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> impl Future<Output = Result<AppendResult, Error>> + Send;

    /// Reads up to `max_count` events of a stream, from `from_version`
    /// (inclusive; 0 and 1 both mean the start), in version order.
    fn read_stream(
        &self,
        stream_id: &str,
        from_version: u64,
        max_count: usize,
    ) -> impl Future<Output = Result<Vec<RecordedEvent>, Error>> + Send;

    /// Reads up to `max_count` events of the global log after `after`
    /// (exclusive), in `(transaction_id, position)` order.
    fn read_all(
        &self,
        after: LogPosition,
        max_count: usize,
    ) -> impl Future<Output = Result<Vec<RecordedEvent>, Error>> + Send;

    /// Reads the payloads of a stream from `from_version` (inclusive), in
    /// version order: what loading an aggregate needs. Backends may
    /// override it with a leaner query; the default reads whole envelopes.
    fn read_stream_payloads(
        &self,
        stream_id: &str,
        from_version: u64,
    ) -> impl Future<Output = Result<Vec<StoredPayload>, Error>> + Send {
        async move {
            Ok(self
                .read_stream(stream_id, from_version, usize::MAX)
                .await?
                .into_iter()
                .map(|r| StoredPayload {
                    position: r.log_position.position,
                    stream_version: r.stream_version,
                    event_type: r.event_type,
                    schema_version: r.schema_version,
                    payload: r.payload,
                })
                .collect())
        }
    }

    /// Calls `f` with each payload of a stream from `from_version`
    /// (inclusive), in version order, as the rows arrive; returns how many
    /// there were. Loading an aggregate folds its events this way without
    /// holding the stream in memory. An error from `f` stops the fold and is
    /// returned, with the failing event's global position filled in
    /// ([`Error::at_position`]; a backend that overrides this method must do
    /// the same). The default reads [`read_stream_payloads`](Self::read_stream_payloads)
    /// first; backends override it to decode rows as they stream in.
    fn fold_stream_payloads<F>(
        &self,
        stream_id: &str,
        from_version: u64,
        mut f: F,
    ) -> impl Future<Output = Result<u64, Error>> + Send
    where
        F: FnMut(PayloadRef<'_>) -> Result<(), Error> + Send,
    {
        async move {
            let stored = self.read_stream_payloads(stream_id, from_version).await?;
            for p in &stored {
                f(PayloadRef {
                    stream_version: p.stream_version,
                    event_type: &p.event_type,
                    schema_version: p.schema_version,
                    payload: p.payload.get(),
                })
                .map_err(|e| e.at_position(p.position))?;
            }
            Ok(stored.len() as u64)
        }
    }

    /// Reads a whole stream from `from_version` (inclusive) with every
    /// envelope field, each payload turned into a `T` by `decode` from the
    /// stored JSON text: what [`EventStoreExt::read_stream_as`] is built
    /// on. An error from `decode` stops the read and is returned with the
    /// event's global position filled in ([`Error::at_position`]; a backend
    /// that overrides this method must do the same).
    ///
    /// The default reads [`read_stream`](Self::read_stream) and decodes
    /// each payload from its copy; the Postgres store decodes each row's
    /// payload where it arrives, without copying it first.
    ///
    /// ```
    /// # use annals_core as annals;
    /// # use annals::{EventStore, EventStoreExt, ExpectedVersion, InMemoryEventStore, Metadata};
    /// #[derive(Debug, Clone, PartialEq, annals_macros::Event)]
    /// #[event(crate = "annals_core")]
    /// enum CounterEvent { Added(u32) }
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let store = InMemoryEventStore::new();
    /// let events = [CounterEvent::Added(2), CounterEvent::Added(3)];
    /// store.append_events("c1", ExpectedVersion::NoStream, &events, &Metadata::new()).await?;
    /// // each event's stored JSON, with its envelope
    /// let read = store
    ///     .read_stream_with("c1", 1, |p| Ok(p.payload.len()))
    ///     .await?;
    /// assert_eq!(read.len(), 2);
    /// assert_eq!((read[1].stream_version, read[1].payload), (2, 1));
    /// # Ok::<(), annals::Error>(())
    /// # }).unwrap();
    /// ```
    fn read_stream_with<T, F>(
        &self,
        stream_id: &str,
        from_version: u64,
        mut decode: F,
    ) -> impl Future<Output = Result<Vec<Envelope<T>>, Error>> + Send
    where
        T: Send,
        F: FnMut(PayloadRef<'_>) -> Result<T, Error> + Send,
    {
        async move {
            // one read: paging a stream costs a round trip per page, and the
            // decoded events are all held in memory anyway
            let page = self
                .read_stream(stream_id, from_version.max(1), usize::MAX)
                .await?;
            page.into_iter()
                .map(|r| {
                    let value = decode(PayloadRef {
                        stream_version: r.stream_version,
                        event_type: &r.event_type,
                        schema_version: r.schema_version,
                        payload: r.payload.get(),
                    })
                    .map_err(|e| e.at_position(r.log_position.position))?;
                    Ok(r.map(|_| value))
                })
                .collect()
        }
    }

    /// Folds a whole stream into `command`, then appends the events it
    /// decides: the load, decision and append of one command attempt.
    /// Returns how many events were folded and the append's outcome
    /// (`None`: the command decided to append nothing). A conflict is
    /// [`Error::Conflict`], as from [`append`](Self::append), and nothing
    /// is written.
    ///
    /// The default is [`fold_stream_payloads`](Self::fold_stream_payloads)
    /// from version 1, then [`append`](Self::append). A backend may run both
    /// on one connection: the Postgres store checks one out of its pool per
    /// command instead of two (measured: a command takes 0.83x the time of
    /// the same two statements each on its own checkout, whose pool pings
    /// the connection on every checkout and return).
    fn fold_and_append<C>(
        &self,
        stream_id: &str,
        command: &mut C,
    ) -> impl Future<Output = Result<(u64, Option<AppendResult>), Error>> + Send
    where
        C: CommandFold,
    {
        async move {
            let folded = self
                .fold_stream_payloads(stream_id, 1, |p| command.event(p))
                .await?;
            crate::snapshot::append_decided(self, stream_id, folded, command).await
        }
    }

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
    /// [`read_all`](Self::read_all); backends override it with a count.
    fn backlog(&self, after: LogPosition) -> impl Future<Output = Result<Backlog, Error>> + Send {
        async move {
            let mut backlog = Backlog {
                events: 0,
                oldest_recorded_at: None,
            };
            let mut from = after;
            loop {
                let page = self.read_all(from, 1000).await?;
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
    /// Encodes and appends application events with shared metadata.
    fn append_events<E: Event>(
        &self,
        stream_id: &str,
        expected: ExpectedVersion,
        events: &[E],
        metadata: &Metadata,
    ) -> impl Future<Output = Result<AppendResult, Error>> + Send {
        let encoded = encode_events(self.registry(), events, metadata);
        async move { self.append(stream_id, expected, encoded?).await }
    }

    /// Reads and decodes a whole stream from `from_version`.
    fn read_stream_as<E: Event>(
        &self,
        stream_id: &str,
        from_version: u64,
    ) -> impl Future<Output = Result<Vec<Envelope<E>>, Error>> + Send {
        async move {
            self.registry().register::<E>()?;
            let registry = self.registry();
            self.read_stream_with(stream_id, from_version, |p| {
                decode_payload::<E>(registry, stream_id, p)
            })
            .await
        }
    }

    /// Reads and decodes the events of a stream from `from_version`, with
    /// their stream versions but without the rest of the envelope: the
    /// lean read for code that needs only the events themselves (ids,
    /// times and metadata are not fetched). Old versions are validated and
    /// upcast as on every other read.
    ///
    /// ```
    /// # use annals_core as annals;
    /// # use annals::{EventStoreExt, ExpectedVersion, InMemoryEventStore, Metadata};
    /// #[derive(Debug, Clone, PartialEq, annals_macros::Event)]
    /// #[event(crate = "annals_core")]
    /// enum CounterEvent { Added(u32) }
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let store = InMemoryEventStore::new();
    /// let events = [CounterEvent::Added(2), CounterEvent::Added(3)];
    /// store.append_events("c1", ExpectedVersion::NoStream, &events, &Metadata::new()).await?;
    /// let read = store.read_stream_events::<CounterEvent>("c1", 2).await?;
    /// assert_eq!(read, vec![(2, CounterEvent::Added(3))]);
    /// # Ok::<(), annals::Error>(())
    /// # }).unwrap();
    /// ```
    fn read_stream_events<E: Event>(
        &self,
        stream_id: &str,
        from_version: u64,
    ) -> impl Future<Output = Result<Vec<(u64, E)>, Error>> + Send {
        async move {
            let registry = self.registry();
            registry.register::<E>()?;
            let mut events = Vec::new();
            self.fold_stream_payloads(stream_id, from_version.max(1), |p| {
                events.push((
                    p.stream_version,
                    decode_payload::<E>(registry, stream_id, p)?,
                ));
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
            let payload = e.encode().map_err(|source| Error::Encode {
                event_type: e.event_type().to_owned(),
                source,
            })?;
            Ok(NewEvent::new(
                e.event_type(),
                e.schema_version(),
                payload,
                metadata.clone(),
            ))
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
        position: recorded.log_position.position,
        stream_id: recorded.stream_id.clone(),
        stream_version: recorded.stream_version,
        source,
    })?;
    Ok(recorded.map(|_| event))
}

/// Decodes one stored payload of a stream; `E` must already be registered.
/// An error names position 0: the store fills the real one in.
pub(crate) fn decode_payload<E: Event>(
    registry: &SchemaRegistry,
    stream_id: &str,
    p: PayloadRef<'_>,
) -> Result<E, Error> {
    decode_parts::<E>(registry, p.event_type, p.schema_version, p.payload).map_err(|source| {
        Error::Decode {
            position: 0,
            stream_id: stream_id.to_owned(),
            stream_version: p.stream_version,
            source,
        }
    })
}

/// Validates an old-version payload against its own schema, then decodes
/// and upcasts.
pub(crate) fn decode_parts<E: Event>(
    registry: &SchemaRegistry,
    event_type: &str,
    schema_version: u32,
    payload: &str,
) -> Result<E, crate::DecodeError> {
    if let Some(info) = E::type_info(event_type) {
        if schema_version < info.version {
            if let Some(schema) = registry.get(event_type, schema_version) {
                let value = crate::__private::parse_value(event_type, schema_version, payload)?;
                schema.validate(&value)?;
            }
        }
    }
    E::decode_json(event_type, schema_version, payload)
}
