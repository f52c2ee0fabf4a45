//! annals' SQL: one statement per file in `sql/`, included whole, so a
//! reader sees each statement as Postgres runs it. Not public API (the
//! benchmarks run these same statements by hand to compare).

macro_rules! statements {
    ($($(#[$doc:meta])* $name:ident = $file:literal;)*) => {
        $($(#[$doc])* pub const $name: &str = include_str!(concat!("sql/", $file));)*

        /// Every statement with its file name.
        pub const ALL: &[(&str, &str)] = &[$(($file, $name)),*];
    };
}

statements! {
    /// The first event of a new stream, as its own transaction.
    APPEND_ONE_NEW_STREAM = "append_one_new_stream.sql";
    /// One event after an expected version, as its own transaction.
    APPEND_ONE_EXACT = "append_one_exact.sql";
    /// A new stream's events, as their own transaction.
    APPEND_NEW_STREAM = "append_new_stream.sql";
    /// Events after an expected version, as their own transaction.
    APPEND_EXACT = "append_exact.sql";
    /// A new stream's events, in a transaction that goes on after a conflict.
    APPEND_IN_NEW_STREAM = "append_in_new_stream.sql";
    /// Events after an expected version, in a transaction that goes on after a conflict.
    APPEND_IN_EXACT = "append_in_exact.sql";
    /// Events after the stream's last version, in a transaction that goes on after a conflict.
    APPEND_IN_ANY = "append_in_any.sql";
    /// The appends of a group commit: several streams in one statement.
    APPEND_GROUP = "append_group.sql";
    /// After a group commit lost its connection: which of its events are in.
    APPEND_GROUP_FIND = "append_group_find.sql";
    /// A range of a stream, every envelope column.
    READ_STREAM = "read_stream.sql";
    /// A range of a stream: version, schema key, payload.
    READ_PAYLOADS = "read_payloads.sql";
    /// A range of a stream: version, type, schema version, payload, key.
    READ_FULL_PAYLOADS = "read_full_payloads.sql";
    /// The global position of a stream's event.
    LOCATE = "locate.sql";
    /// The event at a global position.
    READ_EVENT = "read_event.sql";
    /// A page of the global log below the horizon.
    READ_LOG = "read_log.sql";
    /// A page of every tenant's log below the horizon, each event with its tenant.
    READ_LOG_EVERY = "read_log_every.sql";
    /// The event at a global position, whichever tenant's.
    READ_EVENT_EVERY = "read_event_every.sql";
    /// Every tenant's committed events after a checkpoint.
    BACKLOG_EVERY = "backlog_every.sql";
    /// The newest committed event's place in every tenant's log.
    LOG_END_EVERY = "log_end_every.sql";
    /// A stream's version.
    STREAM_VERSION = "stream_version.sql";
    /// The committed events after a checkpoint.
    BACKLOG = "backlog.sql";
    /// The newest committed event's place in the log.
    LOG_END = "log_end.sql";
    /// How far the horizon holds readers back.
    HORIZON = "horizon.sql";
    /// How far the horizon holds every tenant's readers back.
    HORIZON_EVERY = "horizon_every.sql";
    /// Records event schemas and reads back what is recorded.
    RECORD_SCHEMAS = "record_schemas.sql";
    /// The schema keys of (type, version) pairs.
    SCHEMA_KEYS = "schema_keys.sql";
    /// A snapshot and the events after it.
    LOAD_SNAPSHOT_AND_EVENTS = "load_snapshot_and_events.sql";
    /// A snapshot.
    LOAD_SNAPSHOT = "load_snapshot.sql";
    /// Saves a snapshot.
    SAVE_SNAPSHOT = "save_snapshot.sql";
}
