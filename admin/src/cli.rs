//! The command line: a clap command tree an application mounts as a
//! subcommand of its own (`#[command(subcommand)] Admin(AdminArgs)`), or
//! parses from the arguments after its own (`AdminArgs::try_parse_from`).

use clap::{Parser, Subcommand, ValueEnum};
use uuid::Uuid;

use crate::Exit;

/// The admin command line: `[--json] <COMMAND>`.
///
/// ```
/// use annals::admin::{AdminArgs, AdminCommand, ProjectionsCommand};
/// use clap::Parser;
///
/// let args = AdminArgs::try_parse_from(["admin", "projections", "rebuild", "lead_summaries", "--json"])?;
/// assert!(args.json);
/// assert!(matches!(args.command, AdminCommand::Projections(ProjectionsCommand::Rebuild { .. })));
/// # Ok::<(), clap::Error>(())
/// ```
#[derive(Debug, Clone, Parser)]
#[command(
    name = "admin",
    about = "Operate annals: projections, dead letters, sagas, streams, schemas, migrations",
    long_about = None,
    after_help = "Exit codes: 0 done, 1 failed, 2 usage error, 3 not found, 4 a check found a problem."
)]
pub struct AdminArgs {
    /// Print JSON (one document, or one line per event for streams) instead of tables.
    #[arg(long, global = true)]
    pub json: bool,

    /// The tenant to work on (default: the tenant of the store the admin
    /// was built on, `default` for an application with one tenant). Every
    /// command reads and changes that tenant's rows only.
    #[arg(long, global = true, value_name = "TENANT")]
    pub tenant: Option<String>,

    /// What to do.
    #[command(subcommand)]
    pub command: AdminCommand,
}

impl AdminArgs {
    /// Parses the arguments after the application's own (without a
    /// program name: `["status", "--json"]`). On `--help` it prints the
    /// help to stdout and returns `Err(Exit::Ok)`; on a usage error it
    /// prints the error to stderr and returns `Err(Exit::Usage)`. An
    /// application parses first, so that `--help` works before it
    /// connects to the database.
    pub fn from_args<I, T>(args: I) -> Result<AdminArgs, Exit>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let argv = std::iter::once(std::ffi::OsString::from("admin"))
            .chain(args.into_iter().map(Into::into));
        AdminArgs::try_parse_from(argv).map_err(|e| {
            let _ = e.print();
            if e.use_stderr() {
                Exit::Usage
            } else {
                Exit::Ok
            }
        })
    }
}

/// The admin commands.
#[derive(Debug, Clone, Subcommand)]
pub enum AdminCommand {
    /// Projections (checkpoint, lag, events behind, health), the horizon, dead letters, sagas in flight.
    Status,
    /// List, rebuild, pause and resume projections.
    #[command(subcommand)]
    Projections(ProjectionsCommand),
    /// List, show, replay and discard dead letters.
    #[command(subcommand)]
    DeadLetters(DeadLettersCommand),
    /// List, show and retry unfinished sagas.
    #[command(subcommand)]
    Sagas(SagasCommand),
    /// Read and tail streams, decoded with the registered event types.
    #[command(subcommand)]
    Streams(StreamsCommand),
    /// List the recorded event schemas and check the code's against them.
    #[command(subcommand)]
    Schemas(SchemasCommand),
    /// Apply, list or revert annals' migrations.
    #[command(subcommand)]
    Migrate(MigrateCommand),
}

/// `projections …`
#[derive(Debug, Clone, Subcommand)]
pub enum ProjectionsCommand {
    /// Every registered or checkpointed projection, with its checkpoint and health.
    List,
    /// Clears a registered projection's read model and applies the whole log again.
    Rebuild {
        /// The projection.
        name: String,
    },
    /// Stops every runner of the projection (in every process) until it is resumed.
    Pause {
        /// The projection.
        name: String,
    },
    /// Lets a paused projection's runners take it again.
    Resume {
        /// The projection.
        name: String,
    },
}

/// Which dead letters `dead-letters list` shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StatusFilter {
    /// Waiting for a replay or a discard.
    Pending,
    /// Replayed successfully.
    Resolved,
    /// Given up on.
    Discarded,
    /// Any status.
    All,
}

/// `dead-letters …`
#[derive(Debug, Clone, Subcommand)]
pub enum DeadLettersCommand {
    /// Lists dead letters, by id.
    List {
        /// Only this handler's (a projection's or saga's name).
        #[arg(long)]
        handler: Option<String>,
        /// Only entries with this status.
        #[arg(long, value_enum, default_value_t = StatusFilter::Pending)]
        status: StatusFilter,
        /// Only entries with a greater id (the last id of the previous page).
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// One dead letter, with its error and its event.
    Show {
        /// The dead letter's id.
        id: u64,
    },
    /// Runs a pending dead letter (or every pending one of a handler) through its projection again.
    Replay {
        /// The dead letter's id.
        #[arg(required_unless_present = "handler", conflicts_with = "handler")]
        id: Option<u64>,
        /// Every pending dead letter of this handler, stream by stream in log order.
        #[arg(long)]
        handler: Option<String>,
    },
    /// Gives up on a pending dead letter.
    Discard {
        /// The dead letter's id.
        id: u64,
        /// Why (kept with the entry).
        #[arg(long)]
        reason: String,
    },
}

/// `sagas …`
#[derive(Debug, Clone, Subcommand)]
pub enum SagasCommand {
    /// Unfinished sagas (pending, running, compensating), by id.
    List {
        /// Only sagas of this type.
        #[arg(long = "type")]
        saga_type: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// One saga, with its steps and its outbox commands.
    Show {
        /// The saga's id.
        id: Uuid,
    },
    /// Makes the saga's undelivered commands due now (skips their retry backoff).
    Retry {
        /// The saga's id.
        id: Uuid,
    },
}

/// `streams …`
#[derive(Debug, Clone, Subcommand)]
pub enum StreamsCommand {
    /// A stream's events as JSON, one line each, decoded and upcast with the registered event types.
    Read {
        /// The stream.
        stream: String,
        /// The first stream version to read.
        #[arg(long, default_value_t = 1)]
        from: u64,
        /// At most this many events.
        #[arg(long, default_value_t = 100)]
        limit: u64,
    },
    /// A stream's last events, then each new one as it is appended (until interrupted).
    Tail {
        /// The stream.
        stream: String,
        /// How many of the existing events to print first.
        #[arg(long, default_value_t = 10)]
        last: u64,
        /// Stop after printing this many events.
        #[arg(long)]
        max_events: Option<u64>,
        /// How often to look for new events, in milliseconds.
        #[arg(long, default_value_t = 500)]
        interval_ms: u64,
    },
}

/// `schemas …`
#[derive(Debug, Clone, Subcommand)]
pub enum SchemasCommand {
    /// The schemas recorded in the database, and whether the code's match.
    List,
    /// Checks the registered event types' schemas against the recorded ones (exit 4 on a change).
    Check,
}

/// `migrate …`
#[derive(Debug, Clone, Subcommand)]
pub enum MigrateCommand {
    /// Applies every pending annals migration.
    Up,
    /// Each annals migration and whether it is applied (exit 4 when some are pending).
    Status,
    /// Reverts every annals migration: drops the annals tables and their data.
    Down {
        /// Confirms that the data is to be dropped.
        #[arg(long)]
        yes: bool,
    },
}
