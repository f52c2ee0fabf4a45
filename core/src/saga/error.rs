use uuid::Uuid;

use crate::HandlerError;

/// The error type of sagas: their stores, the engine and the worker.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SagaError {
    /// Another instance changed the saga since it was read (optimistic
    /// locking). Nothing was written; reading it again and retrying is safe.
    #[error("saga {saga_id} was changed by another instance since it was read at version {expected}; nothing was written: reload it and retry")]
    Conflict {
        /// The saga.
        saga_id: Uuid,
        /// The version the write expected.
        expected: u64,
    },

    /// A saga of this type already exists for the correlation id (one
    /// correlation id starts one saga). Nothing was written.
    #[error("a `{saga_type}` saga for correlation id `{correlation_id}` already exists; nothing was written: reload it and retry")]
    AlreadyExists {
        /// The saga type.
        saga_type: String,
        /// The correlation id.
        correlation_id: String,
    },

    /// A stored saga is in a state the code does not have (it was renamed
    /// or removed).
    #[error("saga {saga_id} (`{saga_type}`) is stored in state `{state}`, which this code does not have; deploy code with that state (or a `#[saga]` state of that name) to finish it")]
    UnknownState {
        /// The saga type.
        saga_type: String,
        /// The saga.
        saga_id: Uuid,
        /// The stored state's name.
        state: String,
    },

    /// A saga's data does not serialize, or its stored data does not
    /// deserialize into the code's data type.
    #[error("the data of saga {saga_id} (`{saga_type}`) does not {action}: {source}; make the data type read what is stored (e.g. `#[serde(default)]` on new fields)")]
    Data {
        /// The saga type.
        saga_type: String,
        /// The saga.
        saga_id: Uuid,
        /// `serialize` or `deserialize`.
        action: &'static str,
        /// The serializer's error.
        #[source]
        source: serde_json::Error,
    },

    /// A command does not serialize.
    #[error("command `{command_type}` of saga `{saga_type}` does not serialize: {source}")]
    Command {
        /// The saga type.
        saga_type: String,
        /// The command's variant name.
        command_type: String,
        /// The serializer's error.
        #[source]
        source: serde_json::Error,
    },

    /// A value the saga stores refuses (a correlation id out of the
    /// limits, say): handling the event again would fail again, so the
    /// event is parked, and the saga store is not blamed.
    #[error(transparent)]
    InvalidInput(#[from] crate::error::InvalidInput),

    /// The database refused a value (one it cannot hold, or one too long
    /// for an index): writing it again would fail again. Unlike
    /// [`Backend`](SagaError::Backend), not a failure of the database.
    #[error("the database refused a saga write while {context}: {source}; the value cannot be stored as it is")]
    Refused {
        /// What the store was doing.
        context: &'static str,
        /// The driver's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },

    /// A stored row is unreadable (bad JSON, impossible values).
    #[error("corrupted saga row: {message}")]
    Corrupted {
        /// What is wrong with it.
        message: String,
    },

    /// The database failed or went away; the operation did not complete.
    #[error("database error while {context}: {source}; check that the database is reachable, then retry: saga writes are all-or-nothing and safe to retry")]
    Backend {
        /// What the store was doing.
        context: &'static str,
        /// The driver's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
}

impl SagaError {
    /// Wraps a backend (driver) error with what the store was doing.
    pub fn backend(
        context: &'static str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        SagaError::Backend {
            context,
            source: source.into(),
        }
    }

    /// The error as a handler failure: a database failure is a
    /// [dependency](crate::handler::FailureKind::Dependency) failure (it
    /// counts towards the breaker), anything else, a refused value
    /// included, a failure to handle the event (it is parked).
    pub fn into_handler_error(self) -> HandlerError {
        match self {
            SagaError::Backend { .. } => HandlerError::dependency(self),
            other => HandlerError::event(other),
        }
    }
}
