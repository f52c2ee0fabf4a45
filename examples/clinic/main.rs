//! The tour of annals: a clinic's leads, recorded as events.
//!
//! ```text
//! cargo run --example clinic                                # in memory (the default)
//! scripts/with-services cargo run --example clinic          # on a throwaway Postgres
//! DATABASE_URL=postgres://... cargo run --example clinic    # on your Postgres
//! cargo run --example clinic -- serve [--port N]            # the clinic as an HTTP service
//! scripts/with-services cargo run --example clinic -- admin status   # the operator's console
//! cargo run --example clinic -- --help
//! ```
//!
//! Each numbered section of the output says what annals did and why it
//! matters; each lives in its own module, generic over the stores, so the
//! in-memory stores and the Postgres stores run exactly the same code:
//!
//! - `events`: sections 1 to 7, the event store on its own;
//! - `aggregate`: sections 8 and 9, commands through a repository, snapshots;
//! - `postgres`: the horizon and the start-up schema guard (Postgres only);
//! - `projections`: a read model, a poison event parked and replayed, a
//!   circuit breaker;
//! - `sagas`: a saga with compensation;
//! - `knowledge`: the knowledge base;
//! - `admin`: annals' admin commands mounted in the clinic's binary.

use std::error::Error as StdError;
use std::process::ExitCode;

use annals::personal::{LocalKeyProvider, PersonalStore};
use annals::postgres::sqlx::PgPool;
use annals::postgres::{
    connect, migrate, PgEventStore, PgProjectionStore, PgSagaStore, PgSnapshotStore,
};
use annals::prelude::*;
use annals::store::LogPosition;
use uuid::Uuid;

mod admin;
mod aggregate;
mod domain;
mod events;
mod knowledge;
mod personal;
mod postgres;
mod projections;
mod sagas;
mod service;

use domain::*;

type BoxError = Box<dyn StdError>;

const HELP: &str = "\
The annals tour: a clinic's leads, recorded as events.

USAGE:
    cargo run --example clinic [-- COMMAND]

COMMANDS:
    (none)           run the tour: in memory, or on Postgres when DATABASE_URL is set
    serve [--port N] run the clinic as an HTTP service (default port 8080)
    admin COMMAND    the operator's console on DATABASE_URL: status, projections,
                     dead-letters, sagas, streams, schemas, migrate (`admin --help`)
    --help, -h       print this help

ENVIRONMENT:
    DATABASE_URL     a Postgres database to run on (it is migrated first);
                     `scripts/with-services cargo run --example clinic` starts a throwaway one
    RUST_LOG         the service's log filter (default: info)
    ANNALS_KEK       the key-encryption key of leads' data keys (32 bytes, base64)
    ANNALS_ADMIN_TOKEN  with `serve` on Postgres: mounts the HTTP admin and its
                     status page at /admin, behind this bearer token
";

#[tokio::main]
async fn main() -> Result<ExitCode, BoxError> {
    let database_url = std::env::var("DATABASE_URL").ok().filter(|u| !u.is_empty());
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        None => match database_url {
            Some(url) => tour_on_postgres(connect(&url).await?).await?,
            None => {
                tour_in_memory().await?;
                println!();
                println!("The tour ran in memory. To run it on Postgres: `scripts/with-services cargo run --example clinic` (or set DATABASE_URL).");
            }
        },
        Some("serve") => serve(database_url.as_deref(), &args[1..]).await?,
        Some("admin") => return admin::run(database_url.as_deref(), &args[1..]).await,
        Some("--help" | "-h" | "help") => print!("{HELP}"),
        Some(other) => return Err(format!("unknown command `{other}`\n\n{HELP}").into()),
    }
    Ok(ExitCode::SUCCESS)
}

/// The whole tour on the in-memory stores.
pub(crate) async fn tour_in_memory() -> Result<(), BoxError> {
    println!("annals tour on the in-memory store");
    println!("==================================");
    let store = InMemoryEventStore::new();
    events::tour(&store, "").await?;
    aggregate::tour(&store, InMemorySnapshotStore::new(), "").await?;
    projections::tour(&store, InMemoryProjectionStore::new(), "", 10).await?;
    sagas::tour(
        &store,
        InMemoryProjectionStore::new(),
        InMemorySagaStore::new(),
        11,
    )
    .await?;
    knowledge::tour(&annals::knowledge::InMemoryKnowledgeBase::new(), "").await?;
    let keys = annals::personal::InMemorySubjectKeys::new(kek()?);
    personal::tour(&store, keys, "").await?;
    Ok(())
}

/// The whole tour on the database behind `pool` (migrated first).
pub(crate) async fn tour_on_postgres(pool: PgPool) -> Result<(), BoxError> {
    migrate(&pool).await?;
    let store = PgEventStore::builder(pool.clone())
        .register::<LeadEvent>()
        .build()
        .await?;
    let id = Uuid::now_v7().simple().to_string();
    let run = format!("run-{}/", &id[id.len() - 8..]);

    println!("annals tour on Postgres (DATABASE_URL)");
    println!("======================================");
    say("`annals::postgres::migrate(&pool)` created the annals tables (or found them up to date);");
    say("`PgEventStore::builder(pool).register::<LeadEvent>().build()` recorded LeadEvent's schemas in the database.");
    say("`PgSnapshotStore::new(&store)` keeps the aggregate's snapshots in the `annals_snapshots` table.");
    say(&format!(
        "This run's stream and aggregate ids start with `{run}`, so runs never collide."
    ));
    events::tour(&store, &run).await?;
    aggregate::tour(&store, PgSnapshotStore::new(&store), &run).await?;
    postgres::tour(&store, &pool).await?;
    projections::tour(&store, PgProjectionStore::new(pool.clone()), &run, 11).await?;
    sagas::tour(
        &store,
        PgProjectionStore::new(pool.clone()),
        PgSagaStore::new(pool.clone()),
        12,
    )
    .await?;
    annals::postgres::knowledge::migrate(&pool).await?;
    say("`annals::postgres::knowledge::migrate(&pool)` installed pgvector and the knowledge base's tables.");
    knowledge::tour(
        &annals::postgres::knowledge::PgKnowledgeBase::new(pool.clone()),
        &run,
    )
    .await?;
    let keys = annals::postgres::PgSubjectKeys::new(pool, kek()?);
    personal::tour(&store, keys, &run).await?;
    Ok(())
}

/// Runs the clinic as a service until Ctrl-C: `serve [--port N]` (default
/// 8080), on Postgres when `DATABASE_URL` is set, in memory otherwise.
async fn serve(database_url: Option<&str>, args: &[String]) -> Result<(), BoxError> {
    let port: u16 = match args {
        [] => 8080,
        [flag, port] if flag == "--port" => port
            .parse()
            .map_err(|e| format!("--port {port}: not a port number ({e})"))?,
        _ => {
            return Err(
                format!("usage: cargo run --example clinic -- serve [--port N]\n\n{HELP}").into(),
            )
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets(&[
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ])?
        .install_recorder()?;
    // `# HELP` and units for every annals metric in `/metrics`
    annals::metrics::describe();
    let listener = tokio::net::TcpListener::bind(("0.0.0.0", port)).await?;
    let stale_after = std::time::Duration::from_secs(300);
    let mut admin_http = None;
    let service = match database_url {
        Some(url) => {
            let pool = connect(url).await?;
            migrate(&pool).await?;
            let store = PgEventStore::builder(pool.clone())
                .register::<LeadEvent>()
                .build()
                .await?;
            // the operator's status page and JSON API under /admin, behind
            // a bearer token (ANNALS_ADMIN_TOKEN, 16 characters or more)
            if let Ok(token) = std::env::var("ANNALS_ADMIN_TOKEN") {
                admin::create_tables(&pool).await?;
                let auth = annals::admin::http::Auth::bearer(&token)?;
                admin_http = Some(annals::admin::http::router(
                    admin::admin(pool.clone()).await?,
                    auth,
                ));
            }
            let keys = annals::postgres::PgSubjectKeys::new(pool, kek()?);
            service::start(PersonalStore::new(store, keys), metrics, stale_after)
        }
        None => {
            let keys = annals::personal::InMemorySubjectKeys::new(kek()?);
            service::start(
                PersonalStore::new(InMemoryEventStore::new(), keys),
                metrics,
                stale_after,
            )
        }
    };
    tracing::info!(
        addr = %listener.local_addr()?,
        store = if database_url.is_some() { "postgres" } else { "memory" },
        "clinic service listening"
    );
    println!(
        "  curl -X POST localhost:{port}/leads/ana/commands -H 'content-type: application/json' \\\n       -d '{{\"type\":\"create\",\"name\":\"Ana\",\"treatment\":\"implant\"}}'"
    );
    println!("  curl localhost:{port}/leads/ana   curl localhost:{port}/health/ready   curl localhost:{port}/metrics");
    let router = match admin_http {
        Some(admin) => {
            println!("  the operator's status page: http://localhost:{port}/admin");
            service.router().nest("/admin", admin)
        }
        None => service.router(),
    };
    axum::serve(listener, router)
        .with_graceful_shutdown(async {
            // If Ctrl-C cannot be watched, serve until killed.
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
        })
        .await?;
    tracing::info!("stopping");
    service.stop().await;
    Ok(())
}

/// The key-encryption key that wraps every lead's data key: `ANNALS_KEK`
/// (32 bytes in base64, e.g. from `openssl rand -base64 32`), from a
/// secret store in production. Without it the example uses a fixed demo
/// key and says so: fine for a tour, never for real data.
fn kek() -> Result<LocalKeyProvider, BoxError> {
    if std::env::var_os("ANNALS_KEK").is_some() {
        return Ok(LocalKeyProvider::from_env("clinic-kek-1", "ANNALS_KEK")?);
    }
    tracing::warn!("ANNALS_KEK is not set: using the example's fixed demo key-encryption key");
    Ok(LocalKeyProvider::from_base64(
        "clinic-demo-kek",
        "Y2xpbmljLWRlbW8ta2V5LW5vdC1mb3ItcmVhbC1kYXQ=",
    )?)
}

// Output helpers shared by the sections.

fn section(n: u32, title: &str) {
    println!();
    println!("{n}. {title}");
}

fn say(text: &str) {
    println!("   {text}");
}

fn why(text: &str) {
    println!("   -> why it matters: {text}");
}

fn at(p: LogPosition) -> String {
    format!("(tx {}, pos {})", p.transaction_id, p.position)
}

#[cfg(test)]
mod admin_tests;
#[cfg(test)]
mod tests;
