//! Why an admin command failed.

use annals_core::dead_letter::DeadLetterStatus;
use annals_core::projection::ProjectionError;
use annals_core::saga::SagaError;
use annals_core::Error;
use uuid::Uuid;

use crate::Exit;

/// Why an admin command failed; [`exit`](AdminError::exit) says with which
/// exit code.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// The projection is not registered with the [`Admin`](crate::Admin).
    #[error("projection `{name}` is not registered with the admin (registered: {registered})")]
    UnknownProjection {
        /// The name given.
        name: String,
        /// The registered projections, comma-separated.
        registered: String,
    },

    /// No dead letter has this id.
    #[error("dead letter {id} does not exist")]
    DeadLetterNotFound {
        /// The id given.
        id: u64,
    },

    /// The dead letter is not pending (already resolved or discarded).
    #[error("dead letter {id} is {status}, not pending: nothing to do")]
    NotPending {
        /// The dead letter.
        id: u64,
        /// Its status.
        status: &'static str,
    },

    /// The dead letter's handler is not registered, so it cannot be replayed.
    #[error("dead letter {id} belongs to handler `{handler}`, whose projection is not registered with the admin; register its runner with `AdminBuilder::projection`")]
    HandlerNotRegistered {
        /// The dead letter.
        id: u64,
        /// Its handler.
        handler: String,
    },

    /// A replay ran the handler and it failed again.
    #[error("replaying dead letter {id} failed again (it stays pending): {error}")]
    ReplayFailed {
        /// The dead letter.
        id: u64,
        /// The handler's error.
        error: String,
    },

    /// No saga has this id.
    #[error("saga {id} does not exist")]
    SagaNotFound {
        /// The id given.
        id: Uuid,
    },

    /// The stream has no events.
    #[error("stream `{stream}` does not exist")]
    StreamNotFound {
        /// The stream given.
        stream: String,
    },

    /// The projection is paused: it must be resumed before it is rebuilt.
    #[error("projection `{name}` is paused; resume it first (`projections resume {name}`), then rebuild it")]
    Paused {
        /// The projection.
        name: String,
    },

    /// A command was run without an argument it needs (when it is run
    /// without clap's parsing, e.g. built by hand).
    #[error("missing argument: {argument}")]
    MissingArgument {
        /// The argument.
        argument: &'static str,
    },

    /// A runner of the application owns the projection, so it cannot be
    /// rebuilt from here.
    #[error("projection `{name}` is owned by a running runner (the application's, in this process or another); stop its runners (or scale the application down), then rebuild")]
    Owned {
        /// The projection.
        name: String,
    },

    /// `migrate down` was asked for without `--yes`.
    #[error(
        "`migrate down` drops every annals table and the events in them; pass --yes to confirm"
    )]
    NotConfirmed,

    /// The event store, the projection store or a check failed.
    #[error(transparent)]
    Store(#[from] Error),

    /// A projection runner failed (owned by another runner, a store error).
    #[error(transparent)]
    Projection(#[from] ProjectionError),

    /// The saga store failed.
    #[error(transparent)]
    Saga(#[from] SagaError),

    /// Writing the output failed.
    #[error("writing the output: {0}")]
    Output(#[from] std::io::Error),
}

impl AdminError {
    /// The exit code the error maps to.
    pub fn exit(&self) -> Exit {
        match self {
            AdminError::UnknownProjection { .. }
            | AdminError::DeadLetterNotFound { .. }
            | AdminError::SagaNotFound { .. }
            | AdminError::StreamNotFound { .. } => Exit::NotFound,
            AdminError::NotConfirmed | AdminError::MissingArgument { .. } => Exit::Usage,
            AdminError::Store(Error::InvalidInput(_)) => Exit::Usage,
            _ => Exit::Failed,
        }
    }

    pub(crate) fn not_pending(id: u64, status: DeadLetterStatus) -> Self {
        AdminError::NotPending {
            id,
            status: status.as_str(),
        }
    }
}
