//! The clinic as a service: `cargo run --example clinic -- serve`.
//!
//! An axum server with
//!
//! - `GET /metrics`: every annals metric in the Prometheus exposition format;
//! - `GET /health/live`: the process is up;
//! - `GET /health/ready`: projection health as JSON, `503` when a projection
//!   is stale (lagging beyond its threshold, or failed) or the store's
//!   horizon is held back too long, with the reasons;
//! - `GET /leads` and `GET /leads/{id}`: the `lead_summaries` read model,
//!   fed by a projection;
//! - `POST /leads/{id}/commands`: a command for the `Lead` aggregate, e.g.
//!   `{"type": "create", "name": "Ana", "treatment": "implant"}`,
//!   `{"type": "score", "score": 82, "confidence": 0.9}`,
//!   `{"type": "qualify", "by": "reception"}`.
//!
//! The read model lives in memory (every instance builds its own copy from
//! the log at start-up), so its checkpoint does too: an
//! `InMemoryProjectionStore`. A read model kept in Postgres would use a
//! `PgProjectionStore` and write through the runner's transaction.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use annals::{CommandError, Envelope, HandlerError, HealthCheck, InMemoryProjectionStore, projection::InMemoryConn, Metadata, Projection, projection::ProjectionHandle, ProjectionRunner, Repository, Shutdown, shutdown::ShutdownTrigger, store::WatchLog};
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::{Deserialize, Serialize};

use super::{Lead, LeadCommand, LeadEvent};

/// The projection's name: its checkpoint, metrics and health entry.
pub(crate) const SUMMARIES: &str = "lead_summaries";

/// One lead as the read model shows it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct LeadSummary {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) treatment: String,
    pub(crate) score: Option<u8>,
    pub(crate) qualified_by: Option<String>,
    pub(crate) version: u64,
}

/// The `lead_summaries` projection: an in-memory map fed by `LeadEvent`s.
#[derive(Debug, Default)]
struct LeadSummaries {
    leads: Mutex<BTreeMap<String, LeadSummary>>,
}

impl LeadSummaries {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, LeadSummary>> {
        self.leads.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Projection for LeadSummaries {
    type Event = LeadEvent;
    type Conn = InMemoryConn;

    fn name(&self) -> &str {
        SUMMARIES
    }

    async fn apply(&self, _: &mut InMemoryConn, e: &Envelope<LeadEvent>) -> Result<(), HandlerError> {
        let id = e
            .stream_id
            .strip_prefix("lead-")
            .unwrap_or(&e.stream_id)
            .to_owned();
        let mut leads = self.lock();
        let lead = leads.entry(id.clone()).or_insert_with(|| LeadSummary {
            id,
            ..LeadSummary::default()
        });
        match &e.payload {
            LeadEvent::Created(c) => {
                lead.name = c.name.clone();
                lead.treatment = c.treatment.clone();
            }
            LeadEvent::Scored(s) => lead.score = Some(s.score),
            LeadEvent::Qualified(q) => lead.qualified_by = Some(q.by.clone()),
        }
        lead.version = e.stream_version;
        Ok(())
    }

    async fn reset(&self, _: &mut InMemoryConn) -> Result<(), HandlerError> {
        self.lock().clear();
        Ok(())
    }
}

/// A command as the HTTP API takes it.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum CommandBody {
    Create { name: String, treatment: String },
    Score { score: u8, confidence: f32 },
    Qualify { by: String },
}

impl From<CommandBody> for LeadCommand {
    fn from(body: CommandBody) -> Self {
        match body {
            CommandBody::Create { name, treatment } => LeadCommand::Create { name, treatment },
            CommandBody::Score { score, confidence } => LeadCommand::Score { score, confidence },
            CommandBody::Qualify { by } => LeadCommand::Qualify { by },
        }
    }
}

struct App<S> {
    repository: Repository<Lead, S>,
    summaries: Arc<LeadSummaries>,
    health: HealthCheck<S, InMemoryProjectionStore>,
    metrics: PrometheusHandle,
}

/// A started service.
pub(crate) struct RunningService {
    /// Where it listens.
    pub(crate) addr: SocketAddr,
    trigger: ShutdownTrigger,
    projection: Option<ProjectionHandle>,
    server: tokio::task::JoinHandle<Result<(), std::io::Error>>,
}

impl RunningService {
    /// Stops the projection runner (the read model stops moving; readiness
    /// turns to 503 once it lags beyond the threshold).
    pub(crate) async fn stop_projection(&mut self) {
        if let Some(p) = self.projection.take() {
            if let Err(e) = p.stop().await {
                tracing::warn!(error = %e, "the projection runner ended with an error");
            }
        }
    }

    /// Stops everything and waits for the server to finish.
    pub(crate) async fn stop(mut self) -> Result<(), std::io::Error> {
        self.stop_projection().await;
        self.trigger.trigger();
        match self.server.await {
            Ok(r) => r,
            Err(e) => Err(std::io::Error::other(e)),
        }
    }
}

/// Starts the service on `listener`: the projection runner, a health
/// monitor that keeps the health gauges current, and the HTTP server.
/// `stale_after` is the projection's staleness threshold.
pub(crate) fn start<S>(
    store: S,
    listener: tokio::net::TcpListener,
    metrics: PrometheusHandle,
    stale_after: Duration,
) -> std::io::Result<RunningService>
where
    S: WatchLog + Clone + Send + Sync + 'static,
{
    let addr = listener.local_addr()?;
    let projections = InMemoryProjectionStore::new();
    let summaries = Arc::new(LeadSummaries::default());
    let projection = ProjectionRunner::new(store.clone(), projections.clone(), summaries.clone())
        .poll_interval(Duration::from_millis(500))
        .spawn();
    let health = HealthCheck::new(store.clone(), projections)
        .stale_after(stale_after)
        .expect(SUMMARIES);
    let (trigger, shutdown) = Shutdown::new();
    let monitor = health.clone();
    let monitor_shutdown = trigger.subscribe();
    tokio::spawn(async move {
        monitor
            .monitor(Duration::from_secs(5), monitor_shutdown)
            .await
    });
    let app = Arc::new(App {
        repository: Repository::new(store),
        summaries,
        health,
        metrics,
    });
    let router = Router::new()
        .route("/metrics", get(metrics_route::<S>))
        .route("/health/live", get(live))
        .route("/health/ready", get(ready::<S>))
        .route("/leads", get(list_leads::<S>))
        .route("/leads/{id}", get(get_lead::<S>))
        .route("/leads/{id}/commands", post(command::<S>))
        .with_state(app);
    let mut stop = shutdown;
    let server = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move { stop.triggered().await })
            .await
    });
    Ok(RunningService {
        addr,
        trigger,
        projection: Some(projection),
        server,
    })
}

async fn metrics_route<S: WatchLog + Clone + Send + Sync + 'static>(
    State(app): State<Arc<App<S>>>,
) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics.render(),
    )
        .into_response()
}

async fn live() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "live" }))
}

async fn ready<S: WatchLog + Clone + Send + Sync + 'static>(
    State(app): State<Arc<App<S>>>,
) -> Response {
    let readiness = app.health.readiness().await;
    let status = if readiness.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(readiness)).into_response()
}

async fn list_leads<S: WatchLog + Clone + Send + Sync + 'static>(
    State(app): State<Arc<App<S>>>,
) -> Json<Vec<LeadSummary>> {
    Json(app.summaries.lock().values().cloned().collect())
}

async fn get_lead<S: WatchLog + Clone + Send + Sync + 'static>(
    State(app): State<Arc<App<S>>>,
    Path(id): Path<String>,
) -> Response {
    match app.summaries.lock().get(&id) {
        Some(lead) => Json(lead.clone()).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            format!("no lead `{id}` in the read model (yet)"),
        ),
    }
}

async fn command<S: WatchLog + Clone + Send + Sync + 'static>(
    State(app): State<Arc<App<S>>>,
    Path(id): Path<String>,
    Json(body): Json<CommandBody>,
) -> Response {
    let command = LeadCommand::from(body);
    let metadata = Metadata::new()
        .with_correlation_id(uuid::Uuid::now_v7())
        .with_user("http");
    match app.repository.execute(&id, &command, &metadata).await {
        Ok(done) => Json(serde_json::json!({
            "version": done.version,
            "events": done.events.iter().map(|e| e.event_type.as_str()).collect::<Vec<_>>(),
        }))
        .into_response(),
        Err(CommandError::Rejected(e)) => error(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
        Err(e @ CommandError::Conflict { .. }) => error(StatusCode::CONFLICT, e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

fn error(status: StatusCode, message: String) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}
