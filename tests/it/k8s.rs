//! The Kubernetes manifests of the clinic example parse, wire the probes and
//! the scrape to the service's routes, and alert only on metrics annals
//! emits; the Grafana dashboard charts only metrics annals emits.

use serde_json::Value;

fn documents() -> Vec<Value> {
    let text = include_str!("../../examples/k8s/clinic.yaml");
    serde_norway::Deserializer::from_str(text)
        .map(|doc| {
            <Value as serde::Deserialize>::deserialize(doc)
                .unwrap_or_else(|e| panic!("examples/k8s/clinic.yaml does not parse: {e}"))
        })
        .collect()
}

fn kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in examples/k8s/clinic.yaml"))
}

/// The annals metric names an expression uses.
fn metrics_in(expr: &str) -> Vec<String> {
    let mut used = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("annals_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        used.push(name);
    }
    used
}

/// Whether annals emits `name` (a histogram's `_bucket`, `_sum` and
/// `_count` series included).
fn emitted(name: &str) -> bool {
    let base = ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|s| name.strip_suffix(s))
        .filter(|b| annals::metrics::ALL.contains(b))
        .unwrap_or(name);
    annals::metrics::ALL.contains(&base)
}

#[test]
fn probes_and_scrape_use_the_service_routes() {
    let docs = documents();
    assert_eq!(docs.len(), 4);
    let container = &kind(&docs, "Deployment")["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        container["readinessProbe"]["httpGet"]["path"],
        "/health/ready"
    );
    assert_eq!(
        container["livenessProbe"]["httpGet"]["path"],
        "/health/live"
    );
    assert_eq!(container["ports"][0]["name"], "http");
    assert_eq!(container["args"][0], "serve");
    let service = kind(&docs, "Service");
    let monitor = kind(&docs, "ServiceMonitor");
    assert_eq!(monitor["spec"]["endpoints"][0]["path"], "/metrics");
    assert_eq!(
        monitor["spec"]["endpoints"][0]["port"],
        service["spec"]["ports"][0]["name"]
    );
    assert_eq!(
        monitor["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"],
        service["metadata"]["labels"]["app.kubernetes.io/name"]
    );
}

#[test]
fn every_metric_an_alert_uses_is_one_annals_emits() {
    let docs = documents();
    let rules = kind(&docs, "PrometheusRule")["spec"]["groups"][0]["rules"]
        .as_array()
        .expect("rules");
    let mut alerts = Vec::new();
    for rule in rules {
        let expr = rule["expr"].as_str().expect("every rule has an expr");
        let used = metrics_in(expr);
        assert!(
            !used.is_empty(),
            "alert {} uses no annals metric",
            rule["alert"]
        );
        for name in used {
            assert!(
                emitted(&name),
                "alert {} uses {name}, which annals does not emit",
                rule["alert"]
            );
        }
        alerts.push(rule["alert"].as_str().unwrap_or_default().to_owned());
    }
    for needed in [
        "AnnalsProjectionStale",
        "AnnalsHorizonHeldBack",
        "AnnalsDeadLettersGrowing",
        "AnnalsCircuitBreakerOpen",
    ] {
        assert!(alerts.iter().any(|a| a == needed), "no {needed} alert");
    }
}

#[test]
fn every_metric_the_dashboard_charts_is_one_annals_emits() {
    let text = include_str!("../../examples/k8s/grafana-dashboard.json");
    let dashboard: Value = serde_json::from_str(text)
        .unwrap_or_else(|e| panic!("examples/k8s/grafana-dashboard.json does not parse: {e}"));
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut charted = Vec::new();
    for panel in panels {
        let targets = panel["targets"]
            .as_array()
            .expect("every panel has targets");
        for target in targets {
            let expr = target["expr"].as_str().expect("every target has an expr");
            let used = metrics_in(expr);
            assert!(
                !used.is_empty(),
                "panel {} charts no annals metric",
                panel["title"]
            );
            for name in used {
                assert!(
                    emitted(&name),
                    "panel {} charts {name}, which annals does not emit",
                    panel["title"]
                );
                charted.push(name);
            }
        }
    }
    // the panels an operator needs first
    for needed in [
        "annals_projection_lag_seconds",
        "annals_projection_events_behind",
        "annals_dead_letters_pending",
        "annals_circuit_breaker_state",
        "annals_events_appended_total",
        "annals_append_duration_seconds_bucket",
        "annals_append_batch_size_bucket",
        "annals_saga_status_changes_total",
    ] {
        assert!(
            charted.iter().any(|c| c == needed),
            "the dashboard does not chart {needed}"
        );
    }
}
