use std::fmt;

use crate::schema::{SchemaChanges, SchemaViolation};
use crate::store::ExpectedVersion;

/// The error type of annals' stores and registries.
///
/// Every variant says what happened and, where there is one, what to do about
/// it. Failures a caller usually handles differently have their own types
/// ([`VersionConflict`], [`DecodeError`], [`SchemaViolation`],
/// [`SchemaChanges`]) wrapped here.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An append's expected version did not match the stream.
    #[error(transparent)]
    Conflict(#[from] VersionConflict),

    /// A stored event could not be turned into the application's event type.
    #[error("cannot decode the event at global position {position} (stream `{stream_id}`, version {stream_version}): {source}")]
    Decode {
        /// The event's global position.
        position: u64,
        /// The event's stream.
        stream_id: String,
        /// The event's version in its stream.
        stream_version: u64,
        /// What went wrong.
        #[source]
        source: DecodeError,
    },

    /// An event could not be serialized to JSON.
    #[error("cannot serialize event `{event_type}` to JSON: {source}")]
    Encode {
        /// The event type.
        event_type: String,
        /// The serializer's error.
        #[source]
        source: serde_json::Error,
    },

    /// A payload does not match its JSON Schema; nothing was written.
    #[error(transparent)]
    SchemaViolation(#[from] SchemaViolation),

    /// Schemas changed without a version bump (the breaking-change guard).
    #[error(transparent)]
    SchemaChanged(#[from] SchemaChanges),

    /// An append named an event type or version that the store's schema
    /// registry does not know, while validation is on.
    #[error("event type `{event_type}` version {version} is not registered with this store's schema registry: register the event enum with `registry().register::<YourEvent>()` (typed appends do this for you) or switch validation off for this store")]
    Unregistered {
        /// The event type.
        event_type: String,
        /// The schema version.
        version: u32,
    },

    /// Two Rust types claim the same (event type, version) with different
    /// schemas, or a schema could not be compiled.
    #[error("schema registry: {0}")]
    Registry(String),

    /// An appended event's id is already stored (an event is appended at most
    /// once); nothing was written.
    #[error("event id {event_id} is already stored; an event can be appended once: give new events new ids (retried appends of the same events can treat this as success)")]
    DuplicateEventId {
        /// The duplicate id.
        event_id: uuid::Uuid,
    },

    /// A stored row is unreadable (bad metadata, impossible values).
    #[error("corrupted row at global position {position}: {message}")]
    CorruptedRow {
        /// The row's global position.
        position: u64,
        /// What is wrong with it.
        message: String,
    },

    /// A projection's checkpoint moved underneath its runner: another runner
    /// took the projection over. Nothing of the runner's transaction was
    /// committed.
    #[error("the checkpoint of projection `{projection}` moved underneath this runner: another runner owns the projection now; this runner's batch was rolled back")]
    CheckpointMoved {
        /// The projection.
        projection: String,
    },

    /// The database failed or went away; the operation did not complete.
    #[error("database error while {context}: {source}; check that the database is reachable, then retry: appends are safe to retry (the expected version and the event ids reject a duplicate)")]
    Backend {
        /// What the store was doing.
        context: &'static str,
        /// The driver's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
}

impl Error {
    /// Wraps a backend (driver) error with what the store was doing.
    pub fn backend(
        context: &'static str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        Error::Backend {
            context,
            source: source.into(),
        }
    }

    /// Fills in the global position of a [`Decode`](Error::Decode) or
    /// [`CorruptedRow`](Error::CorruptedRow) error that does not name one
    /// yet (position 0: positions start at 1). Other errors, and errors
    /// that already name a position, are returned unchanged.
    ///
    /// Stream folds ([`EventStore::fold_stream_payloads`](crate::EventStore::fold_stream_payloads))
    /// see payloads without their positions; the store completes an error
    /// from the fold with this before returning it.
    ///
    /// ```
    /// # use annals_core::{DecodeError, Error};
    /// let e = Error::Decode {
    ///     position: 0,
    ///     stream_id: "lead-1".into(),
    ///     stream_version: 3,
    ///     source: DecodeError::VersionTooNew { event_type: "lead.scored".into(), version: 9, current: 2 },
    /// };
    /// assert!(matches!(e.at_position(42), Error::Decode { position: 42, .. }));
    /// ```
    pub fn at_position(mut self, at: u64) -> Self {
        match &mut self {
            Error::Decode { position, .. } | Error::CorruptedRow { position, .. }
                if *position == 0 =>
            {
                *position = at;
            }
            _ => {}
        }
        self
    }

    /// The conflict, if this error is one.
    pub fn as_conflict(&self) -> Option<&VersionConflict> {
        match self {
            Error::Conflict(c) => Some(c),
            _ => None,
        }
    }
}

/// An append's expected version did not match the stream's actual version.
/// Nothing was written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("version conflict on stream `{stream_id}`: expected {expected}, but the stream is at {}; reload the stream and retry the command", fmt_actual(*.actual))]
pub struct VersionConflict {
    /// The stream.
    pub stream_id: String,
    /// What the append expected.
    pub expected: ExpectedVersion,
    /// The stream's version when the append was refused (`None`: no stream).
    pub actual: Option<u64>,
}

fn fmt_actual(actual: Option<u64>) -> String {
    match actual {
        None => "no stream".to_owned(),
        Some(v) => format!("version {v}"),
    }
}

/// Why a stored (event type, version, payload) could not be decoded into the
/// application's current event type.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The event type is not one this Rust type knows.
    #[error("unknown event type `{event_type}` (this code knows {}); add it to the event enum, or read this stream with the event type that owns it", known.join(", "))]
    UnknownEventType {
        /// The stored event type.
        event_type: String,
        /// The event types the code knows.
        known: Vec<&'static str>,
    },

    /// The stored version is newer than the code: the event was written by a
    /// newer release.
    #[error("event `{event_type}` is stored with version {version}, newer than this code's version {current}; deploy the code that writes version {version} before reading it")]
    VersionTooNew {
        /// The event type.
        event_type: String,
        /// The stored version.
        version: u32,
        /// The newest version this code knows.
        current: u32,
    },

    /// The stored version is older than the oldest version the upcast chain
    /// reaches.
    #[error("event `{event_type}` is stored with version {version}, but the upcast chain starts at version {oldest}; add version {version} to the event's `history(...)`")]
    VersionTooOld {
        /// The event type.
        event_type: String,
        /// The stored version.
        version: u32,
        /// The oldest version the code can upcast from.
        oldest: u32,
    },

    /// The payload does not deserialize into the version's Rust type.
    #[error("payload of `{event_type}` v{version} does not deserialize at `{path}`: {message}")]
    Deserialize {
        /// The event type.
        event_type: String,
        /// The stored version.
        version: u32,
        /// Where in the payload deserialization failed (serde path, `.` for the root).
        path: String,
        /// The deserializer's message.
        message: String,
    },

    /// The payload does not match its version's JSON Schema.
    #[error(transparent)]
    SchemaInvalid(#[from] SchemaViolation),

    /// A JSON-level upcaster refused the payload.
    #[error("upcasting `{event_type}` from version {from_version} failed: {source}")]
    Upcast {
        /// The event type.
        event_type: String,
        /// The version the upcaster starts from.
        from_version: u32,
        /// The upcaster's error.
        #[source]
        source: UpcastError,
    },
}

/// The error a JSON-level upcaster returns when it cannot transform a payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpcastError {
    message: String,
}

impl UpcastError {
    /// An upcast error with a message saying what is wrong with the payload.
    pub fn new(message: impl Into<String>) -> Self {
        UpcastError {
            message: message.into(),
        }
    }
}

impl fmt::Display for UpcastError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for UpcastError {}
