//! The clinic as a service: `cargo run --example clinic -- serve`.
//!
//! Errors are JSON, `{"error": "..."}`, with a status that says whose
//! mistake it was: 400 for a malformed request, 404 for an unknown lead or
//! route, 409 for a conflict, 422 for a command the aggregate refuses or a
//! payload its event schema refuses, 503 when the store is unavailable and a
//! retry may succeed, 500 otherwise (logged with its cause). Every request is
//! logged (`RUST_LOG=info`, the default).
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
//!   `{"type": "qualify", "by": "reception"}`;
//! - `DELETE /leads/{id}/personal-data`: forgets the lead (the right to
//!   erasure): its key is deleted, so its name reads as forgotten in the
//!   log, in snapshots and in every copy sealed with it, and the read model
//!   erases its own copy when the `subject.forgotten` event reaches it.
//!   `202 Accepted`: the read model follows within moments.
//!
//! The store is a `PersonalStore`: the lead's name is sealed with the
//! lead's own key before it is stored.
//!
//! The read model lives in memory (every instance builds its own copy from
//! the log at start-up), so its checkpoint does too: an
//! `InMemoryProjectionStore`. A read model kept in Postgres would use a
//! `PgProjectionStore` and write through the runner's transaction.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use annals::personal::{PersonalStore, SubjectForgotten, SubjectKeys};

use annals::projection::{InMemoryConn, ProjectionHandle};
use annals::shutdown::ShutdownTrigger;
use annals::store::WatchLog;
use annals::{
    projection::HealthCheck, CommandError, Envelope, HandlerError, InMemoryProjectionStore,
    Metadata, Projection, ProjectionRunner, Repository, Shutdown, TenantId,
};
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::{Deserialize, Serialize};

use super::{Lead, LeadCommand, LeadEvent};
use annals::AggregateState as _;

/// The projection's name: its checkpoint, metrics and health entry.
pub(crate) const SUMMARIES: &str = "lead_summaries";

/// One lead as the read model shows it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct LeadSummary {
    pub(crate) id: String,
    /// `None` once the lead was forgotten.
    pub(crate) name: Option<String>,
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

    async fn apply(
        &self,
        _: &mut InMemoryConn,
        e: &Envelope<LeadEvent>,
    ) -> Result<(), HandlerError> {
        let id = e.aggregate_id().to_owned();
        let mut leads = self.lock();
        let lead = leads.entry(id.clone()).or_insert_with(|| LeadSummary {
            id,
            ..LeadSummary::default()
        });
        match &e.payload {
            LeadEvent::Created(c) => {
                lead.name = c.name.known().cloned();
                lead.treatment = c.treatment.clone();
            }
            LeadEvent::Scored(s) => lead.score = Some(s.score),
            LeadEvent::Qualified(q) => lead.qualified_by = Some(q.by.clone()),
        }
        lead.version = e.stream_version;
        Ok(())
    }

    async fn reset(&self, _: &mut InMemoryConn, _: &TenantId) -> Result<(), HandlerError> {
        self.lock().clear();
        Ok(())
    }
}

/// The read model's erasure: a projection of `subject.forgotten` events
/// that blanks the forgotten lead's name in the same map.
struct ForgottenLeads {
    summaries: Arc<LeadSummaries>,
}

/// The erasure projection's name.
const ERASURE: &str = "lead_summaries_erasure";

impl Projection for ForgottenLeads {
    type Event = SubjectForgotten;
    type Conn = InMemoryConn;

    fn name(&self) -> &str {
        ERASURE
    }

    async fn apply(
        &self,
        _: &mut InMemoryConn,
        e: &Envelope<SubjectForgotten>,
    ) -> Result<(), HandlerError> {
        // a lead's subject is its stream, `lead-{id}`
        if let Some(id) = e.payload.subject.strip_prefix("lead-") {
            if let Some(lead) = self.summaries.lock().get_mut(id) {
                lead.name = None;
            }
        }
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

/// Forgets a subject (the store's `forget`, behind the store's key type).
type Forget = Arc<
    dyn Fn(String) -> Pin<Box<dyn Future<Output = Result<(), annals::Error>> + Send>> + Send + Sync,
>;

struct App<S> {
    repository: Repository<Lead, S>,
    forget: Forget,
    summaries: Arc<LeadSummaries>,
    health: HealthCheck<S, InMemoryProjectionStore>,
    metrics: PrometheusHandle,
}

/// A started service: its projection runner and health monitor run on
/// tasks; [`router`](Self::router) answers the HTTP API.
pub(crate) struct RunningService {
    router: Router,
    trigger: ShutdownTrigger,
    projections: Vec<ProjectionHandle>,
}

impl RunningService {
    /// The HTTP API, to serve on a listener or to call in tests.
    pub(crate) fn router(&self) -> Router {
        self.router.clone()
    }

    /// Stops the projection runners (the read model stops moving; readiness
    /// turns to 503 once it lags beyond the threshold).
    pub(crate) async fn stop_projection(&mut self) {
        for p in self.projections.drain(..) {
            if let Err(e) = p.stop().await {
                tracing::warn!(error = %e, "a projection runner ended with an error");
            }
        }
    }

    /// Stops the projection runner and the health monitor.
    pub(crate) async fn stop(mut self) {
        self.stop_projection().await;
        self.trigger.trigger();
    }
}

/// Starts the service's background work on `store` (the projection runner
/// and a health monitor that keeps the health gauges current) and builds its
/// router. `stale_after` is the projection's staleness threshold.
pub(crate) fn start<I, K>(
    store: PersonalStore<I, K>,
    metrics: PrometheusHandle,
    stale_after: Duration,
) -> RunningService
where
    I: WatchLog + Clone + Send + Sync + 'static,
    K: SubjectKeys,
{
    let projections = InMemoryProjectionStore::new();
    let summaries = Arc::new(LeadSummaries::default());
    let projection = ProjectionRunner::new(store.clone(), projections.clone(), summaries.clone())
        .poll_interval(Duration::from_millis(500))
        .spawn();
    let erasure = ProjectionRunner::new(
        store.clone(),
        projections.clone(),
        Arc::new(ForgottenLeads {
            summaries: summaries.clone(),
        }),
    )
    .poll_interval(Duration::from_millis(500))
    .spawn();
    let forgetting = store.clone();
    let forget: Forget = Arc::new(move |subject| {
        let store = forgetting.clone();
        Box::pin(async move { store.forget(&subject).await.map(drop) })
    });
    let health = HealthCheck::new(store.clone(), projections)
        .stale_after(stale_after)
        .expect(SUMMARIES);
    let (trigger, shutdown) = Shutdown::new();
    let monitor = health.clone();
    tokio::spawn(async move { monitor.monitor(Duration::from_secs(5), shutdown).await });
    let app = Arc::new(App {
        repository: Repository::of::<Lead>(store),
        forget,
        summaries,
        health,
        metrics,
    });
    let router = Router::new()
        .route("/metrics", get(metrics_route::<PersonalStore<I, K>>))
        .route("/health/live", get(live))
        .route("/health/ready", get(ready::<PersonalStore<I, K>>))
        .route("/leads", get(list_leads::<PersonalStore<I, K>>))
        .route("/leads/{id}", get(get_lead::<PersonalStore<I, K>>))
        .route("/leads/{id}/commands", post(command::<PersonalStore<I, K>>))
        .route(
            "/leads/{id}/personal-data",
            delete(forget_lead::<PersonalStore<I, K>>),
        )
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such route".to_owned()) })
        .layer(middleware::from_fn(log_request))
        .with_state(app);
    RunningService {
        router,
        trigger,
        projections: vec![projection, erasure],
    }
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
    body: Result<Json<CommandBody>, JsonRejection>,
) -> Response {
    // axum answers a malformed body in plain text; this API answers JSON.
    let command = match body {
        Ok(Json(body)) => LeadCommand::from(body),
        Err(rejection) => return error(rejection.status(), rejection.body_text()),
    };
    let metadata = Metadata::new()
        .with_correlation_id(uuid::Uuid::now_v7())
        .with_user("http");
    match app.repository.execute(&id, &command, &metadata).await {
        Ok(done) => Json(serde_json::json!({
            "version": done.version,
            "events": done.events.iter().map(|e| e.event_type.as_str()).collect::<Vec<_>>(),
        }))
        .into_response(),
        Err(e) => {
            let status = command_error_status(&e);
            if status.is_server_error() {
                tracing::error!(lead = %id, error = ?e, "command failed");
            }
            error(status, e.to_string())
        }
    }
}

/// Forgets a lead: `202 Accepted` with the subject that was forgotten.
async fn forget_lead<S: WatchLog + Clone + Send + Sync + 'static>(
    State(app): State<Arc<App<S>>>,
    Path(id): Path<String>,
) -> Response {
    let subject = Lead::stream_id(&id);
    match (app.forget)(subject.clone()).await {
        Ok(()) => (
            StatusCode::ACCEPTED,
            Json(serde_json::json!({ "forgotten": subject })),
        )
            .into_response(),
        Err(annals::Error::Personal(annals::personal::PersonalError::InvalidInput(e))) => {
            error(StatusCode::BAD_REQUEST, e.to_string())
        }
        Err(e) => {
            tracing::error!(lead = %id, error = ?e, "forgetting a lead failed");
            error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
        }
    }
}

/// What a failed command means for the client: its own mistake (4xx), or
/// ours (5xx, logged). A payload that breaks the event's JSON Schema, like a
/// command the aggregate refuses, is a 422: the request was well-formed but
/// its content is not acceptable.
fn command_error_status<E: std::error::Error>(e: &CommandError<E>) -> StatusCode {
    match e {
        CommandError::Rejected(_) => StatusCode::UNPROCESSABLE_ENTITY,
        CommandError::Conflict { .. } => StatusCode::CONFLICT,
        CommandError::Store(annals::Error::SchemaViolation(_)) => StatusCode::UNPROCESSABLE_ENTITY,
        CommandError::Store(annals::Error::InvalidInput(_)) => StatusCode::BAD_REQUEST,
        CommandError::Store(annals::Error::Conflict(_)) => StatusCode::CONFLICT,
        CommandError::Store(e) if e.is_retryable() => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// Every error this API answers: `{"error": "..."}` with its status.
fn error(status: StatusCode, message: String) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

/// Logs each request with its status and duration (`RUST_LOG` filters).
/// Logs every request, inside a server span (`{method} {route}`) that
/// continues the caller's trace when it sends a W3C `traceparent` header:
/// the events a command appends carry that trace to the projections and
/// sagas that handle them (`annals::trace`).
pub(crate) async fn log_request(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_owned();
    let span = tracing::info_span!(
        "request",
        otel.name = format!("{method} {route}"),
        otel.kind = "server",
        http.request.method = %method,
        http.route = %route,
    );
    let headers = request.headers();
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(parent) = header("traceparent")
        .and_then(|p| annals::trace::TraceContext::new(p, header("tracestate")))
    {
        parent.set_as_parent_of(&span);
    }
    let started = std::time::Instant::now();
    let response = tracing::Instrument::instrument(next.run(request), span).await;
    let status = response.status().as_u16();
    let ms = started.elapsed().as_secs_f64() * 1e3;
    if response.status().is_server_error() {
        tracing::error!(%method, %path, status, ms, "request failed");
    } else {
        tracing::info!(%method, %path, status, ms, "request");
    }
    response
}
