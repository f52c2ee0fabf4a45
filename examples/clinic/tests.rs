//! The clinic example's tests: the whole tour, in memory and on Postgres
//! (each section checks its own outcome and returns an error when it does
//! not happen), and the service through its router.

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::Request;
use axum::Router;
use tower::ServiceExt;

use super::service;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tour_runs_in_memory() {
    if let Err(e) = super::tour_in_memory().await {
        panic!("the in-memory tour failed: {e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tour_runs_on_postgres() {
    let db = annals::postgres::testing::TestDatabase::new().await;
    if let Err(e) = super::tour_on_postgres(db.pool().clone()).await {
        panic!("the Postgres tour failed: {e}");
    }
}

/// One request through the router; returns (status, body).
async fn call(router: &Router, method: &str, path: &str, body: &str) -> (u16, String) {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json")
        .body(Body::from(body.to_owned()))
        .expect("a valid request");
    let response = router
        .clone()
        .oneshot(request)
        .await
        .expect("the router answers");
    let status = response.status().as_u16();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .expect("read the body");
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

async fn eventually(mut check: impl AsyncFnMut() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The service's store in memory: leads' names sealed with keys of their
/// own.
fn in_memory() -> annals::personal::PersonalStore<
    annals::InMemoryEventStore,
    annals::personal::InMemorySubjectKeys<annals::personal::LocalKeyProvider>,
> {
    let keys = annals::personal::InMemorySubjectKeys::new(
        annals::personal::LocalKeyProvider::generate("test-kek"),
    );
    annals::personal::PersonalStore::new(annals::InMemoryEventStore::new(), keys)
}

/// One trace from an HTTP command to the next command: the clinic's
/// request middleware opens the server span, the handler appends, and the
/// trace check follows it through a projection, a saga step, the outbox
/// dispatch and the command the dispatch runs (`annals::testing::trace`).
// current-thread: the span recorder is this thread's subscriber
#[tokio::test(flavor = "current_thread")]
async fn one_trace_from_an_http_command_to_the_next_command() {
    use annals::testing::trace::{one_trace_from, placed, ORDER_STREAM};
    use annals::{EventStoreExt as _, ExpectedVersion, Metadata};
    one_trace_from(
        annals::InMemoryEventStore::new(),
        annals::InMemoryProjectionStore::new(),
        annals::InMemorySagaStore::new(),
        "POST /orders/{id}",
        |store| async move {
            let place = move || {
                let store = store.clone();
                async move {
                    store
                        .append_events(
                            ORDER_STREAM,
                            ExpectedVersion::NoStream,
                            &[placed()],
                            &Metadata::new(),
                        )
                        .await
                        .map(|_| axum::http::StatusCode::CREATED)
                        .map_err(|e| (axum::http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
                }
            };
            let router = Router::new()
                .route("/orders/{id}", axum::routing::post(place))
                .layer(axum::middleware::from_fn(service::log_request));
            let request = Request::builder()
                .method("POST")
                .uri("/orders/7")
                .body(Body::empty())
                .expect("a valid request");
            let response = router.oneshot(request).await.expect("the router answers");
            assert_eq!(response.status(), 201);
        },
    )
    .await;
}

/// An HTTP command continues the caller's trace: the request's server span
/// takes the `traceparent` header as its parent, and the event the command
/// appends stores the append's context, in the same trace.
// current-thread: the span recorder is this thread's subscriber
#[tokio::test(flavor = "current_thread")]
async fn a_command_continues_the_callers_trace() {
    use annals::testing::trace::{find, SpanRecorder};
    let recorder = SpanRecorder::install();
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .build_recorder()
        .handle();
    let store = in_memory();
    let service = service::start(store.clone(), metrics, Duration::from_secs(300));
    let caller = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let request = Request::builder()
        .method("POST")
        .uri("/leads/tia/commands")
        .header("content-type", "application/json")
        .header("traceparent", caller)
        .body(Body::from(
            r#"{"type":"create","name":"Tia","treatment":"implant"}"#,
        ))
        .expect("a valid request");
    let response = service
        .router()
        .oneshot(request)
        .await
        .expect("the router answers");
    assert_eq!(response.status(), 200);

    let stored = annals::EventStoreExt::read_stream(&store, "lead-tia", ..)
        .await
        .expect("the lead's stream");
    let context = annals::trace::TraceContext::from_metadata(&stored[0].metadata)
        .expect("the event carries a traceparent");
    assert_eq!(context.trace_id(), "0af7651916cd43dd8448eb211c80319c");

    let spans = recorder.spans();
    let server = find(&spans, "POST /leads/{id}/commands", 0);
    assert_eq!(server.parent_span_id.to_string(), "b7ad6b7169203331");
    let append = find(&spans, "append lead", 0);
    assert_eq!(append.span_context.span_id().to_string(), context.span_id());
    assert_eq!(
        append.span_context.trace_id().to_string(),
        "0af7651916cd43dd8448eb211c80319c"
    );
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_forgets_a_lead() {
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .build_recorder()
        .handle();
    let store = in_memory();
    let service = service::start(store.clone(), metrics, Duration::from_secs(300));
    let router = service.router();
    for (lead, name) in [("ana", "Ana Canary"), ("bo", "Bo Canary")] {
        let body = format!(r#"{{"type":"create","name":"{name}","treatment":"implant"}}"#);
        let (status, answer) =
            call(&router, "POST", &format!("/leads/{lead}/commands"), &body).await;
        assert_eq!(status, 200, "{answer}");
    }
    eventually(
        async || {
            call(&router, "GET", "/leads/bo", "")
                .await
                .1
                .contains("Bo Canary")
        },
        "the read model shows both names",
    )
    .await;
    // stored sealed: no name in the log's payloads
    let stored = annals::EventStoreExt::read_stream(store.inner(), "lead-ana", ..)
        .await
        .expect("read the stored events");
    assert!(
        !stored[0].payload.get().contains("Ana Canary"),
        "{}",
        stored[0].payload.get()
    );

    let (status, answer) = call(&router, "DELETE", "/leads/ana/personal-data", "").await;
    assert_eq!(status, 202, "{answer}");
    assert!(answer.contains("lead-ana"), "{answer}");
    eventually(
        async || {
            let (status, body) = call(&router, "GET", "/leads/ana", "").await;
            status == 200 && body.contains("\"name\":null")
        },
        "the read model erases the name",
    )
    .await;
    let (_, body) = call(&router, "GET", "/leads/bo", "").await;
    assert!(
        body.contains("Bo Canary"),
        "another lead keeps its name: {body}"
    );
    // the lead itself goes on: a score is not personal data
    let (status, answer) = call(
        &router,
        "POST",
        "/leads/ana/commands",
        r#"{"type":"score","score":82,"confidence":0.9}"#,
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let lead = annals::Repository::<crate::Lead, _>::new(store.clone())
        .load("ana")
        .await
        .expect("a forgotten lead still loads");
    assert_eq!(lead.state.name, Some(annals::personal::Personal::Forgotten));
    assert_eq!(lead.state.score, Some(82));
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_serves_commands_the_read_model_metrics_and_readiness() {
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .expect("install the Prometheus recorder");
    let mut service = service::start(in_memory(), metrics, Duration::from_millis(300));
    let addr = service.router();

    let (status, body) = call(&addr, "GET", "/health/live", "").await;
    assert_eq!((status, body.as_str()), (200, r#"{"status":"live"}"#));

    let (status, body) = call(
        &addr,
        "POST",
        "/leads/ana/commands",
        r#"{"type":"create","name":"Ana","treatment":"implant"}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("lead.created"), "{body}");
    let (status, body) = call(
        &addr,
        "POST",
        "/leads/ana/commands",
        r#"{"type":"qualify","by":"reception"}"#,
    )
    .await;
    assert_eq!(status, 422, "a rejected command: {body}");
    assert!(body.contains("needs a score of at least"), "{body}");
    let (status, _) = call(
        &addr,
        "POST",
        "/leads/ana/commands",
        r#"{"type":"score","score":82,"confidence":0.9}"#,
    )
    .await;
    assert_eq!(status, 200);

    eventually(
        async || {
            let (status, body) = call(&addr, "GET", "/leads/ana", "").await;
            status == 200 && body.contains("\"score\":82")
        },
        "the read model shows the score",
    )
    .await;
    let (status, body) = call(&addr, "GET", "/leads/nobody", "").await;
    assert_eq!(status, 404, "{body}");

    let (status, body) = call(&addr, "GET", "/health/ready", "").await;
    assert_eq!(status, 200, "{body}");
    let ready: serde_json::Value = serde_json::from_str(&body).expect("readiness is JSON");
    assert_eq!(ready["ready"], true);
    assert_eq!(
        ready["report"]["projections"][0]["name"],
        service::SUMMARIES
    );
    assert_eq!(ready["report"]["projections"][0]["events_behind"], 0);

    let (status, body) = call(&addr, "GET", "/metrics", "").await;
    assert_eq!(status, 200);
    for metric in [
        "annals_events_appended_total",
        "annals_append_duration_seconds",
        "annals_commands_total",
        "annals_projection_events_applied_total",
        "annals_projection_lag_seconds",
        "annals_projection_events_behind",
        "annals_projection_batch_duration_seconds",
        "annals_horizon_lag_seconds",
        "annals_circuit_breaker_state",
        "annals_dead_letters_pending",
    ] {
        assert!(body.contains(metric), "/metrics lacks {metric}:\n{body}");
    }
    assert!(
        body.contains("annals_projection_events_applied_total{projection=\"lead_summaries\",tenant=\"default\"} 2"),
        "{body}"
    );

    // the projection stops; a new event waits; past the threshold the
    // service is not ready, and says which projection and why
    service.stop_projection().await;
    let (status, _) = call(
        &addr,
        "POST",
        "/leads/bo/commands",
        r#"{"type":"create","name":"Bo","treatment":"whitening"}"#,
    )
    .await;
    assert_eq!(status, 200);
    eventually(
        async || call(&addr, "GET", "/health/ready", "").await.0 == 503,
        "readiness turns 503",
    )
    .await;
    let (_, body) = call(&addr, "GET", "/health/ready", "").await;
    let ready: serde_json::Value = serde_json::from_str(&body).expect("readiness is JSON");
    assert_eq!(ready["ready"], false);
    let reason = ready["reasons"][0].as_str().unwrap_or_default();
    assert!(
        reason.contains("`lead_summaries` is") && reason.contains("1 event(s) not applied"),
        "{reason}"
    );
    let (_, body) = call(&addr, "GET", "/metrics", "").await;
    assert!(
        body.contains(
            "annals_projection_stale{projection=\"lead_summaries\",tenant=\"default\"} 1"
        ),
        "{body}"
    );
    service.stop().await;
}

#[tokio::test]
async fn client_errors_are_json_with_a_4xx_status() {
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .build_recorder()
        .handle();
    let service = service::start(in_memory(), metrics, Duration::from_secs(300));
    let router = service.router();
    let json = |body: &str| -> serde_json::Value {
        serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
    };
    for (body, status) in [
        ("{not json", 400),
        (r#"{"type":"fly"}"#, 422),
        (
            r#"{"type":"create","name":"Ana","treatment":"implant"}"#,
            200,
        ),
        // a score above 100 breaks the event's JSON Schema: the client's mistake
        (r#"{"type":"score","score":150,"confidence":0.5}"#, 422),
        (
            r#"{"type":"create","name":"Ana","treatment":"implant"}"#,
            422,
        ),
    ] {
        let (got, answer) = call(&router, "POST", "/leads/ana/commands", body).await;
        assert_eq!(got, status, "{body} -> {answer}");
        if status != 200 {
            assert!(
                json(&answer)["error"]
                    .as_str()
                    .is_some_and(|e| !e.is_empty()),
                "{answer}"
            );
        }
    }
    let (status, answer) = call(&router, "GET", "/no/such/route", "").await;
    assert_eq!(status, 404);
    assert_eq!(json(&answer)["error"], "no such route");
    let (status, answer) = call(&router, "GET", "/leads/nobody", "").await;
    assert_eq!(status, 404);
    assert!(
        json(&answer)["error"]
            .as_str()
            .is_some_and(|e| e.contains("nobody")),
        "{answer}"
    );
    service.stop().await;
}
