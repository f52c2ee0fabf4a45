//! The operator's console of [annals](https://docs.rs/annals): admin
//! commands an application mounts in its own binary, so that rebuilds and
//! dead-letter replays run the application's own handlers.
//!
//! The application registers its projection runners and event types into
//! an [`Admin`], mounts [`AdminArgs`] (a clap command tree) as a
//! subcommand of its command line, and runs it:
//!
//! ```no_run
//! use std::sync::Arc;
//! use annals::admin::Admin;
//! use annals::postgres::{connect, PgEventStore, PgProjectionStore};
//! use annals::ProjectionRunner;
//! # #[derive(Debug, Clone, PartialEq, annals::Event)]
//! # enum LeadEvent { Created(String) }
//! # struct Directory;
//! # impl annals::Projection for Directory {
//! #     type Event = LeadEvent;
//! #     type Conn = annals::postgres::sqlx::PgConnection;
//! #     fn name(&self) -> &str { "lead_directory" }
//! #     async fn apply(&self, _: &mut Self::Conn, _: &annals::Envelope<LeadEvent>) -> Result<(), annals::HandlerError> { Ok(()) }
//! # }
//!
//! # async fn run() -> Result<std::process::ExitCode, annals::Error> {
//! let pool = connect("postgres://app@localhost/clinic").await?;
//! // no `register` here: `admin schemas check` reports a changed schema
//! // instead of the store refusing to start
//! let store = PgEventStore::builder(pool.clone()).build().await?;
//! let projections = PgProjectionStore::new(pool);
//! let admin = Admin::builder(store.clone())
//!     .projection(ProjectionRunner::new(store, projections, Arc::new(Directory)))
//!     .events::<LeadEvent>()
//!     .build();
//! // `myapp admin status`: the arguments after the application's own
//! let args: Vec<String> = std::env::args().skip(2).collect();
//! Ok(admin.run_from(args).await.into())
//! # }
//! ```
//!
//! With the feature `http` (`admin-http` on the `annals` crate),
//! `http::router` serves the same operations as a JSON API and a status
//! page, for an application to mount in its axum service.
//!
//! The commands (`--json` after any of them prints JSON for scripts;
//! [`Exit`] lists the exit codes):
//!
//! | command | what it does |
//! |---------|--------------|
//! | `status` | projections (checkpoint, lag, events behind, health, paused), the horizon, pending dead letters, sagas in flight |
//! | `projections list` | the same per projection |
//! | `projections rebuild NAME` | clears the read model and applies the log again (a progress bar on a terminal) |
//! | `projections pause NAME` / `resume NAME` | stops every runner of the projection until resumed ([`PgProjectionStore::pause`](annals_postgres::PgProjectionStore::pause)) |
//! | `dead-letters list [--handler H] [--status S]` | parked events |
//! | `dead-letters show ID` | one, with its stored event |
//! | `dead-letters replay ID` / `replay --handler H` | through the registered projection again |
//! | `dead-letters discard ID --reason R` | gives up on one |
//! | `sagas list [--type T]` / `show ID` / `retry ID` | unfinished sagas; `retry` makes their undelivered commands due now |
//! | `streams read STREAM` / `tail STREAM` | events as JSON lines, decoded and upcast with the registered types |
//! | `schemas list` / `check` | recorded schemas; the code's checked against them |
//! | `migrate up` / `status` / `down --yes` | annals' migrations |

mod cli;
mod commands;
mod error;
mod exit;
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub mod http;
mod output;
mod progress;
mod registered;

use std::sync::Arc;
use std::time::Duration;

use annals_core::{
    Error, Event, EventStore as _, Projection, ProjectionRunner, ProjectionStore as _,
    SagaStore as _, SchemaRegistry, TenantId,
};
use annals_postgres::sqlx::PgConnection;
use annals_postgres::{PgEventStore, PgProjectionStore, PgSagaStore};

pub use cli::{
    AdminArgs, AdminCommand, DeadLettersCommand, MigrateCommand, ProjectionsCommand, SagasCommand,
    SchemasCommand, StatusFilter, StreamsCommand,
};
pub use error::AdminError;
pub use exit::Exit;

/// The clap version the command tree is built with.
pub use clap;

use registered::{Events, RegisteredEvents, RegisteredProjection};

/// The application's stores, projections and event types, as the admin
/// commands see them. Built with [`Admin::builder`]; cheap to clone.
#[derive(Clone)]
pub struct Admin {
    store: PgEventStore,
    projections: PgProjectionStore,
    sagas: PgSagaStore,
    runners: Vec<Arc<dyn RegisteredProjection>>,
    events: Vec<Arc<dyn RegisteredEvents>>,
    stale_after: Duration,
    horizon_stale_after: Duration,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin")
            .field("projections", &self.projection_names())
            .field("event_types", &self.events.len())
            .finish_non_exhaustive()
    }
}

/// Registers what the admin commands work on (see [`Admin::builder`]).
#[derive(Clone)]
pub struct AdminBuilder {
    admin: Admin,
}

impl std::fmt::Debug for AdminBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.admin.fmt(f)
    }
}

impl Admin {
    /// An admin on `store`'s database: the projection, dead-letter and saga
    /// stores are the Postgres ones on the same pool.
    ///
    /// The admin works on `store`'s tenant (`--tenant` picks another for
    /// one command); runners of several tenants may be registered, and a
    /// command sees those of its tenant.
    pub fn builder(store: PgEventStore) -> AdminBuilder {
        let pool = store.pool().clone();
        let tenant = store.tenant_id().clone();
        AdminBuilder {
            admin: Admin {
                store,
                projections: PgProjectionStore::new(pool.clone()).in_tenant(tenant.clone()),
                sagas: PgSagaStore::new(pool).in_tenant(tenant),
                runners: Vec::new(),
                events: Vec::new(),
                stale_after: Duration::from_secs(300),
                horizon_stale_after: Duration::from_secs(300),
            },
        }
    }

    /// Parses `args` (the arguments after the application's own, without
    /// a program name: `["status", "--json"]`) and runs the command. Help
    /// goes to stdout (exit 0), a usage error to stderr (exit 2).
    pub async fn run_from<I, T>(&self, args: I) -> Exit
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        match AdminArgs::from_args(args) {
            Ok(args) => self.run(&args).await,
            Err(exit) => exit,
        }
    }

    /// Runs a parsed command, writing its output to stdout and an error to
    /// stderr; returns the exit code.
    pub async fn run(&self, args: &AdminArgs) -> Exit {
        let mut stdout = std::io::stdout();
        match self.execute(args, &mut stdout).await {
            Ok(exit) => exit,
            // the reader went away (`| head`): nothing to say to it
            Err(AdminError::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                Exit::Failed
            }
            Err(e) => {
                eprintln!("error: {e}");
                e.exit()
            }
        }
    }

    /// Runs a parsed command, writing its output to `stdout`; returns the
    /// exit code of a command that ran (a check that found a problem is
    /// [`Exit::Unhealthy`]) or the error of one that failed.
    pub async fn execute(
        &self,
        args: &AdminArgs,
        stdout: &mut (dyn std::io::Write + Send),
    ) -> Result<Exit, AdminError> {
        let mut out = output::Out {
            json: args.json,
            stdout,
        };
        match &args.tenant {
            Some(tenant) => {
                let scoped = self.in_tenant(TenantId::new(tenant).map_err(Error::from)?);
                commands::run(&scoped, &args.command, &mut out).await
            }
            None => commands::run(self, &args.command, &mut out).await,
        }
    }

    /// The same admin working on `tenant`'s rows.
    pub fn in_tenant(&self, tenant: TenantId) -> Admin {
        Admin {
            store: self.store.in_tenant(tenant.clone()),
            projections: self.projections.in_tenant(tenant.clone()),
            sagas: self.sagas.in_tenant(tenant),
            ..self.clone()
        }
    }

    /// The registered runners of the admin's tenant.
    fn tenant_runners(&self) -> impl Iterator<Item = &Arc<dyn RegisteredProjection>> {
        let tenant = self.store.tenant_id();
        self.runners.iter().filter(move |r| r.tenant() == tenant)
    }

    fn projection_names(&self) -> Vec<&str> {
        self.tenant_runners().map(|r| r.name()).collect()
    }

    fn runner(&self, name: &str) -> Option<&Arc<dyn RegisteredProjection>> {
        self.tenant_runners().find(|r| r.name() == name)
    }

    fn require_runner(&self, name: &str) -> Result<&Arc<dyn RegisteredProjection>, AdminError> {
        self.runner(name)
            .ok_or_else(|| AdminError::UnknownProjection {
                name: name.to_owned(),
                registered: match self.projection_names().join(", ") {
                    s if s.is_empty() => "none".to_owned(),
                    s => s,
                },
            })
    }

    /// A registry with the registered event types (for schema checks).
    fn code_registry(&self) -> Result<SchemaRegistry, annals_core::Error> {
        let registry = SchemaRegistry::new();
        for events in &self.events {
            events.register(&registry)?;
        }
        Ok(registry)
    }
}

impl AdminBuilder {
    /// Registers a projection runner: `projections rebuild` and
    /// `dead-letters replay` run it (its projection, retry and failure
    /// policies, breaker), and `status` reports the projection even before
    /// its first run. A saga's [`SagaProjection`](annals_core::saga::SagaProjection)
    /// runner is registered the same way (its dead letters are the saga's).
    ///
    /// The runner may read through any store over this database: a
    /// `PersonalStore` wrapping the `PgEventStore`, say, so that a rebuild
    /// or a replay opens the events' personal fields as the application's
    /// own runner does (through the bare `PgEventStore` they stay sealed
    /// and do not decode).
    pub fn projection<S, P>(mut self, runner: ProjectionRunner<S, PgProjectionStore, P>) -> Self
    where
        S: annals_core::store::WatchLog + Clone + Send + Sync + 'static,
        P: Projection<Conn = PgConnection>,
        P::Event: Send + Sync,
    {
        self.admin.runners.push(Arc::new(runner));
        self
    }

    /// Registers an event type: `streams read` and `tail` show its events
    /// decoded and upcast to the current version, and `schemas check`
    /// checks its schemas against the recorded ones.
    pub fn events<E: Event>(mut self) -> Self {
        self.admin.events.push(Arc::new(Events::<E>::new()));
        self
    }

    /// How far behind a projection may be before `status` calls it stale
    /// (and exits with [`Exit::Unhealthy`]); default 5 minutes, as
    /// [`HealthCheck`](annals_core::projection::HealthCheck). Use the
    /// application's own readiness threshold.
    pub fn stale_after(mut self, threshold: Duration) -> Self {
        self.admin.stale_after = threshold;
        self
    }

    /// How long the horizon may be held back before `status` calls it
    /// stale; default 5 minutes.
    pub fn horizon_stale_after(mut self, threshold: Duration) -> Self {
        self.admin.horizon_stale_after = threshold;
        self
    }

    /// The admin.
    pub fn build(self) -> Admin {
        self.admin
    }
}
