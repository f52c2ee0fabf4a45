//! The clinic example as a service, over real HTTP on a free port:
//! commands, the projection-fed read model, `/metrics` and `/health/ready`
//! (503 with the stale projection named once it lags).

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[path = "../examples/clinic.rs"]
#[allow(dead_code, unused_imports)]
mod clinic;

/// One HTTP/1.1 request with `Connection: close`; returns (status, body).
async fn http(addr: std::net::SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("read the response");
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

async fn eventually(mut check: impl AsyncFnMut() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clinic_service_serves_commands_the_read_model_metrics_and_readiness() {
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .expect("install the Prometheus recorder");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a free port");
    let mut service = clinic::service::start(
        annals::InMemoryEventStore::new(),
        listener,
        metrics,
        Duration::from_millis(300),
    )
    .expect("start the service");
    let addr = service.addr;

    let (status, body) = http(addr, "GET", "/health/live", "").await;
    assert_eq!((status, body.as_str()), (200, r#"{"status":"live"}"#));

    let (status, body) = http(
        addr,
        "POST",
        "/leads/ana/commands",
        r#"{"type":"create","name":"Ana","treatment":"implant"}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("lead.created"), "{body}");
    let (status, body) = http(
        addr,
        "POST",
        "/leads/ana/commands",
        r#"{"type":"qualify","by":"reception"}"#,
    )
    .await;
    assert_eq!(status, 422, "a rejected command: {body}");
    assert!(body.contains("needs a score of at least"), "{body}");
    let (status, _) = http(
        addr,
        "POST",
        "/leads/ana/commands",
        r#"{"type":"score","score":82,"confidence":0.9}"#,
    )
    .await;
    assert_eq!(status, 200);

    eventually(
        async || {
            let (status, body) = http(addr, "GET", "/leads/ana", "").await;
            status == 200 && body.contains("\"score\":82")
        },
        "the read model shows the score",
    )
    .await;
    let (status, body) = http(addr, "GET", "/leads/nobody", "").await;
    assert_eq!(status, 404, "{body}");

    let (status, body) = http(addr, "GET", "/health/ready", "").await;
    assert_eq!(status, 200, "{body}");
    let ready: serde_json::Value = serde_json::from_str(&body).expect("readiness is JSON");
    assert_eq!(ready["ready"], true);
    assert_eq!(
        ready["report"]["projections"][0]["name"],
        clinic::service::SUMMARIES
    );
    assert_eq!(ready["report"]["projections"][0]["events_behind"], 0);

    let (status, body) = http(addr, "GET", "/metrics", "").await;
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
        body.contains("annals_projection_events_applied_total{projection=\"lead_summaries\"} 2"),
        "{body}"
    );

    // the projection stops; a new event waits; past the threshold the
    // service is not ready, and says which projection and why
    service.stop_projection().await;
    let (status, _) = http(
        addr,
        "POST",
        "/leads/bo/commands",
        r#"{"type":"create","name":"Bo","treatment":"whitening"}"#,
    )
    .await;
    assert_eq!(status, 200);
    eventually(
        async || http(addr, "GET", "/health/ready", "").await.0 == 503,
        "readiness turns 503",
    )
    .await;
    let (_, body) = http(addr, "GET", "/health/ready", "").await;
    let ready: serde_json::Value = serde_json::from_str(&body).expect("readiness is JSON");
    assert_eq!(ready["ready"], false);
    let reason = ready["reasons"][0].as_str().unwrap_or_default();
    assert!(
        reason.contains("`lead_summaries` is") && reason.contains("1 event(s) not applied"),
        "{reason}"
    );
    let (_, body) = http(addr, "GET", "/metrics", "").await;
    assert!(
        body.contains("annals_projection_stale{projection=\"lead_summaries\"} 1"),
        "{body}"
    );
    service.stop().await.expect("stop the service");
}
