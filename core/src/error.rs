//! The error types of annals' stores and registries.

use std::fmt;

use crate::schema::{SchemaChanges, SchemaViolation};
use crate::store::ExpectedVersion;

/// The error type of annals' stores and registries.
///
/// Failures a caller usually handles differently have their own types
/// ([`VersionConflict`], [`DecodeError`], [`SchemaViolation`],
/// [`SchemaChanges`], [`RegistryError`], [`InvalidInput`]) wrapped here.
/// [`is_retryable`](Error::is_retryable) says whether trying the same
/// operation again can succeed.
///
/// The `Display` text is this error's own message; its cause is its
/// [`source`](std::error::Error::source). The `Debug` text is the message
/// followed by every cause, so `main() -> Result<(), annals::Error>` prints
/// a readable report:
///
/// ```
/// use annals::{Error, VersionConflict, ExpectedVersion};
///
/// let e = Error::from(VersionConflict {
///     stream_id: "lead-1".into(),
///     expected: ExpectedVersion::NoStream,
///     actual: Some(3),
/// });
/// assert_eq!(
///     format!("{e:?}"),
///     "version conflict on stream `lead-1`: expected no stream, but the stream is at version 3; \
///      reload the stream and retry the command"
/// );
/// assert!(!e.is_retryable()); // reload and decide again instead
/// ```
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An append's expected version did not match the stream.
    #[error(transparent)]
    Conflict(#[from] VersionConflict),

    /// A stored event could not be turned into the application's event type.
    #[error("cannot decode the event {} (stream `{stream_id}`, version {stream_version})", fmt_position(*.position))]
    Decode {
        /// The event's global position (`None`: not known where the error
        /// was raised; the store fills it in before returning it).
        position: Option<u64>,
        /// The event's stream.
        stream_id: String,
        /// The event's version in its stream.
        stream_version: u64,
        /// What went wrong.
        #[source]
        source: DecodeError,
    },

    /// An event could not be serialized to JSON.
    #[error("cannot serialize event `{event_type}` to JSON")]
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

    /// The schema registry refused a registration or a lock file.
    #[error(transparent)]
    Registry(#[from] RegistryError),

    /// A value given to annals is out of its documented limits; nothing
    /// was written.
    #[error(transparent)]
    InvalidInput(#[from] InvalidInput),

    /// An appended event's id is already stored (an event is appended at most
    /// once); nothing was written.
    #[error("event id {event_id} is already stored; an event can be appended once: give new events new ids (retried appends of the same events can treat this as success)")]
    DuplicateEventId {
        /// The duplicate id.
        event_id: uuid::Uuid,
    },

    /// A stored row is unreadable (bad metadata, impossible values).
    #[error("corrupted row {}: {message}", fmt_position(*.position))]
    CorruptedRow {
        /// The row's global position (`None`: not known where the error was
        /// raised; the store fills it in before returning it).
        position: Option<u64>,
        /// What is wrong with it.
        message: String,
    },

    /// An event of the global log whose envelope cannot be read: a schema
    /// version below 1, metadata that is not an annals metadata object, a
    /// payload that is not JSON (a row written by hand, or damaged). A log
    /// read returns the events before it first, then this error for it
    /// alone; a [`ProjectionRunner`](crate::ProjectionRunner) parks it as a
    /// dead letter of each projection that reads its type (skips it in the
    /// others) and reads on, so one bad row stops nothing.
    #[error("unreadable event at {} (stream `{}` version {}, type `{}`): {message}", .event.log_position.position, .event.stream_id, .event.stream_version, .event.event_type)]
    UnreadableEvent {
        /// The event as far as it could be read. What could not be read
        /// holds a stand-in: schema version 0, empty metadata, payload
        /// `null`; `message` says what was wrong.
        event: Box<crate::RecordedEvent>,
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

    /// Personal data could not be sealed or opened: the subject was
    /// forgotten, its key does not unwrap with the key-encryption key, the
    /// key store failed, or an event with personal fields names no subject.
    #[cfg(feature = "personal")]
    #[error(transparent)]
    Personal(#[from] crate::personal::PersonalError),

    /// The database (or another backend) failed; the operation did not
    /// complete. [`is_retryable`](Error::is_retryable) tells a passing
    /// failure (connection, timeout, serialization failure) from one that
    /// will happen again.
    #[error("{} while {context}", if *.retryable { "database unavailable" } else { "database error" })]
    Backend {
        /// What the store was doing.
        context: &'static str,
        /// Whether the same operation can succeed when tried again.
        retryable: bool,
        /// The driver's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
}

fn fmt_position(position: Option<u64>) -> String {
    match position {
        Some(p) => format!("at global position {p}"),
        None => "at an unknown global position".to_owned(),
    }
}

impl fmt::Debug for Error {
    /// The message and every cause, one per line: readable when `main`
    /// returns the error.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")?;
        let mut source = std::error::Error::source(self);
        if source.is_some() {
            f.write_str("\n\nCaused by:")?;
        }
        let mut n = 0;
        while let Some(cause) = source {
            write!(f, "\n    {n}: {cause}")?;
            n += 1;
            source = cause.source();
        }
        Ok(())
    }
}

impl Error {
    /// A backend (driver) error that will happen again if the operation is
    /// retried as it is, with what the store was doing.
    pub fn backend(
        context: &'static str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        Error::Backend {
            context,
            retryable: false,
            source: source.into(),
        }
    }

    /// A passing backend failure (a lost connection, a timeout, a
    /// serialization failure): the same operation can succeed when retried.
    pub fn transient(
        context: &'static str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        Error::Backend {
            context,
            retryable: true,
            source: source.into(),
        }
    }

    /// Whether trying the same call again can succeed: a passing backend
    /// failure (a lost connection, a timeout, a serialization failure).
    /// Appends are safe to retry: the expected version and the event ids
    /// refuse a duplicate. A [`Conflict`](Error::Conflict) is not: the
    /// same append would conflict again; reload the stream and decide again
    /// (a [`Repository`](crate::Repository) does that by itself).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Backend { retryable, .. } => *retryable,
            _ => false,
        }
    }

    /// Fills in the global position of a [`Decode`](Error::Decode) or
    /// [`CorruptedRow`](Error::CorruptedRow) error that does not name one
    /// yet. Other errors, and errors that already name a position, are
    /// returned unchanged.
    ///
    /// Stream folds ([`EventStore::fold_stream_payloads`](crate::EventStore::fold_stream_payloads))
    /// see payloads without their positions; the store completes an error
    /// from the fold with this before returning it.
    ///
    /// ```
    /// use annals::event::DecodeError;
    /// use annals::Error;
    ///
    /// let e = Error::Decode {
    ///     position: None,
    ///     stream_id: "lead-1".into(),
    ///     stream_version: 3,
    ///     source: DecodeError::VersionTooNew { event_type: "lead.scored".into(), version: 9, current: 2 },
    /// };
    /// assert!(matches!(e.at_position(42), Error::Decode { position: Some(42), .. }));
    /// ```
    pub fn at_position(mut self, at: u64) -> Self {
        match &mut self {
            Error::Decode { position, .. } | Error::CorruptedRow { position, .. }
                if position.is_none() =>
            {
                *position = Some(at);
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

/// Why the schema registry refused a registration or a lock file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// A generated JSON Schema does not compile into a validator.
    #[error("the JSON Schema of `{event_type}` v{version} (from `{rust_type}`) does not compile")]
    SchemaDoesNotCompile {
        /// The event type.
        event_type: String,
        /// The schema version.
        version: u32,
        /// The Rust type the schema was generated from.
        rust_type: &'static str,
        /// The validator's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },

    /// Two Rust types give one event type different current versions.
    #[error("event type `{event_type}` is registered by `{registered_by}` at version {registered_version} and by `{rust_type}` at version {version}; one event type must have one current version")]
    CurrentVersionDiffers {
        /// The event type.
        event_type: String,
        /// The Rust type registered first.
        registered_by: &'static str,
        /// Its current version.
        registered_version: u32,
        /// The Rust type registered now.
        rust_type: &'static str,
        /// Its current version.
        version: u32,
    },

    /// Two Rust types give one (event type, version) different schemas.
    #[error("event type `{event_type}` version {version} is registered by `{registered_by}` and by `{rust_type}` with different schemas; give each payload shape its own event type or version")]
    SchemaDiffers {
        /// The event type.
        event_type: String,
        /// The schema version.
        version: u32,
        /// The Rust type registered first.
        registered_by: &'static str,
        /// The Rust type registered now.
        rust_type: &'static str,
    },

    /// A schema lock file has a line that is not `event_type version fingerprint`.
    #[error("schema lock line {line}: {message}")]
    LockFile {
        /// The line number, from 1.
        line: usize,
        /// What is wrong with it.
        message: String,
    },
}

/// A value given to annals is out of its documented limits (empty, too
/// long, containing NUL, malformed). Nothing was written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {problem}")]
pub struct InvalidInput {
    /// What the value is (`stream id`, `projection name`, …).
    pub field: &'static str,
    /// What is wrong with it, with the limit it breaks.
    pub problem: String,
}

impl InvalidInput {
    /// An invalid `field`, with what is wrong with it.
    pub fn new(field: &'static str, problem: impl Into<String>) -> Self {
        InvalidInput {
            field,
            problem: problem.into(),
        }
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
    #[error("upcasting `{event_type}` from version {from_version} failed")]
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
