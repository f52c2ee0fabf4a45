//! The metrics of the failure paths, as Prometheus sees them: dead letters
//! parked, pending and replayed, retries, and a circuit breaker's state and
//! transitions (recorded into a local Prometheus recorder and rendered).

use std::collections::HashSet;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use annals::{
    breaker::BreakerConfig, breaker::BreakerState, breaker::CircuitBreakerRegistry,
    projection::InMemoryConn, Envelope, EventStoreExt, ExpectedVersion, HandlerError,
    InMemoryEventStore, InMemoryProjectionStore, Metadata, Projection, ProjectionRunner,
    RetryPolicy,
};
use metrics_exporter_prometheus::PrometheusBuilder;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
struct Added {
    n: u32,
}

#[derive(Debug, Clone, PartialEq, annals::Event)]
#[event(prefix = "counter")]
enum CounterEvent {
    Added(Added),
}

/// Fails on the values in `poison`.
#[derive(Default)]
struct Mailer {
    poison: Mutex<HashSet<u32>>,
    calls: AtomicU32,
}

#[derive(Debug, thiserror::Error)]
#[error("template error for {0}")]
struct TemplateError(u32);

impl Projection for Mailer {
    type Event = CounterEvent;
    type Conn = InMemoryConn;

    fn name(&self) -> &str {
        "mailer"
    }

    async fn apply(
        &self,
        _: &mut InMemoryConn,
        e: &Envelope<CounterEvent>,
    ) -> Result<(), HandlerError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let CounterEvent::Added(Added { n }) = &e.payload;
        if self
            .poison
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(n)
        {
            return Err(TemplateError(*n).into());
        }
        Ok(())
    }
}

/// The value of the sample of `name` whose labels contain `label`.
fn sample(rendered: &str, name: &str, label: &str) -> Option<f64> {
    rendered
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .find(|l| l.contains(label))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn failure_paths_export_their_metrics() {
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let _guard = metrics::set_default_local_recorder(&recorder);

    let store = InMemoryEventStore::new();
    let append = |stream: &'static str, values: Vec<u32>| {
        let store = store.clone();
        async move {
            let events: Vec<CounterEvent> = values
                .into_iter()
                .map(|n| CounterEvent::Added(Added { n }))
                .collect();
            store
                .append_events(stream, ExpectedVersion::Any, &events, &Metadata::new())
                .await
                .expect("append");
        }
    };
    append("a", vec![1, 2, 3]).await;
    append("b", vec![4]).await;
    let mailer = Arc::new(Mailer::default());
    mailer
        .poison
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(2);
    let projections = InMemoryProjectionStore::new();
    let runner = ProjectionRunner::new(store.clone(), projections.clone(), mailer.clone()).retry(
        RetryPolicy::new(3)
            .initial_delay(Duration::from_millis(1))
            .jitter(0.0),
    );

    // 2 is parked after 3 attempts (2 retries), 3 parked behind it
    runner.catch_up().await.expect("catch up");
    let rendered = handle.render();
    let label = "projection=\"mailer\"";
    assert_eq!(
        sample(
            &rendered,
            "annals_dead_letters_parked_total",
            "reason=\"failed\""
        ),
        Some(1.0),
        "{rendered}"
    );
    assert_eq!(
        sample(
            &rendered,
            "annals_dead_letters_parked_total",
            "reason=\"behind\""
        ),
        Some(1.0),
        "{rendered}"
    );
    assert_eq!(
        sample(&rendered, "annals_dead_letters_pending", "mailer"),
        Some(2.0),
        "{rendered}"
    );
    assert_eq!(
        sample(&rendered, "annals_retries_total", "mailer"),
        Some(2.0),
        "{rendered}"
    );
    // 1 (before the poison event) and 4 (another stream)
    assert_eq!(
        sample(&rendered, "annals_projection_events_applied_total", label),
        Some(2.0),
        "{rendered}"
    );

    // fixed: the replay resolves both
    mailer
        .poison
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clear();
    runner.replay_all().await.expect("replay");
    let rendered = handle.render();
    assert_eq!(
        sample(&rendered, "annals_dead_letters_replayed_total", "mailer"),
        Some(2.0),
        "{rendered}"
    );
    assert_eq!(
        sample(&rendered, "annals_dead_letters_pending", "mailer"),
        Some(0.0),
        "{rendered}"
    );

    // a breaker: closed (0) -> open (2) -> half-open (1) -> closed (0)
    let breakers = CircuitBreakerRegistry::with_default(
        BreakerConfig::default()
            .failure_threshold(2)
            .cool_down(Duration::from_millis(20)),
    );
    let sms = breakers.get("sms");
    let state = |h: &metrics_exporter_prometheus::PrometheusHandle| {
        sample(&h.render(), "annals_circuit_breaker_state", "sms")
    };
    assert_eq!(state(&handle), Some(0.0));
    sms.record_failure();
    sms.record_failure();
    assert_eq!(sms.state(), BreakerState::Open);
    assert_eq!(state(&handle), Some(2.0));
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert_eq!(sms.state(), BreakerState::HalfOpen);
    assert_eq!(state(&handle), Some(1.0));
    sms.try_acquire().expect("the trial");
    sms.record_success();
    assert_eq!(state(&handle), Some(0.0));
    let rendered = handle.render();
    let transitions: f64 = rendered
        .lines()
        .filter(|l| l.starts_with("annals_circuit_breaker_transitions_total{") && l.contains("sms"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(transitions, 3.0, "{rendered}");
}

/// Reads nothing: only its skips matter here.
struct Quiet;

impl Projection for Quiet {
    type Event = CounterEvent;
    type Conn = annals::postgres::sqlx::PgConnection;

    fn name(&self) -> &str {
        "quiet"
    }

    async fn apply(
        &self,
        _: &mut annals::postgres::sqlx::PgConnection,
        _: &Envelope<CounterEvent>,
    ) -> Result<(), HandlerError> {
        Ok(())
    }
}

/// A row of the log whose envelope cannot be read (written by hand), of a
/// type the projection does not read, is skipped, and the skip is counted
/// in `annals_projection_unreadable_skipped_total`; the events around it
/// are applied.
#[tokio::test]
async fn an_unreadable_row_of_another_type_is_skipped_and_counted() {
    use annals::postgres::{sqlx, testing::TestDatabase, PgEventStore, PgProjectionStore};
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let db = TestDatabase::new().await;
    let store = PgEventStore::builder(db.pool().clone())
        .register::<CounterEvent>()
        .build()
        .await
        .expect("store");
    let append = |n: u32| {
        let store = store.clone();
        async move {
            store
                .append_events(
                    "a",
                    ExpectedVersion::Any,
                    &[CounterEvent::Added(Added { n })],
                    &Metadata::new(),
                )
                .await
                .expect("append");
        }
    };
    append(1).await;
    sqlx::query(
        "INSERT INTO annals_events (event_id, stream_id, stream_version, event_type, schema_version, payload, metadata)
         VALUES ($1, 'other-1', 1, 'other.thing', -1, '{}'::jsonb, '{}'::jsonb)",
    )
    .bind(uuid::Uuid::now_v7())
    .execute(db.pool())
    .await
    .expect("a row written by hand");
    append(2).await;
    let done = ProjectionRunner::new(
        store.clone(),
        PgProjectionStore::new(db.pool().clone()),
        Arc::new(Quiet),
    )
    .catch_up()
    .await
    .expect("catch up");
    assert_eq!(done.events_applied, 2);
    let rendered = handle.render();
    assert_eq!(
        sample(
            &rendered,
            "annals_projection_unreadable_skipped_total",
            "projection=\"quiet\""
        ),
        Some(1.0),
        "{rendered}"
    );
}

/// `annals::metrics::describe` gives the Prometheus exposition a `# HELP`
/// line (and the unit in it) for the metrics that have values.
#[test]
fn described_metrics_have_help_in_the_exposition() {
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, || {
        annals::metrics::describe();
        metrics::gauge!(annals::metrics::PROJECTION_LAG_SECONDS, "projection" => "leads").set(1.5);
        metrics::counter!(annals::metrics::DEAD_LETTERS_PARKED_TOTAL, "handler" => "leads", "reason" => "failed")
            .increment(1);
    });
    let rendered = handle.render();
    for name in [
        annals::metrics::PROJECTION_LAG_SECONDS,
        annals::metrics::DEAD_LETTERS_PARKED_TOTAL,
    ] {
        assert!(
            rendered
                .lines()
                .any(|l| l.starts_with(&format!("# HELP {name} "))),
            "no HELP for {name} in:\n{rendered}"
        );
    }
}

/// A health check's gauges carry its tenant, and the horizon's its server
/// when it names one: per-tenant (and per-server) checks never overwrite
/// each other's series.
#[tokio::test]
async fn health_gauges_carry_the_tenant_and_the_server() {
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let _guard = metrics::set_default_local_recorder(&recorder);

    let store = InMemoryEventStore::new();
    let projections = InMemoryProjectionStore::new();
    for tenant in ["clinic-a", "clinic-b"] {
        annals::projection::HealthCheck::new(
            store.tenant(tenant).expect("a tenant"),
            projections.clone(),
        )
        .server("eu-1")
        .expect("mailer")
        .check_all()
        .await
        .expect("a health check");
    }
    let rendered = handle.render();
    for tenant in ["clinic-a", "clinic-b"] {
        assert_eq!(
            sample(
                &rendered,
                "annals_horizon_events_held_back",
                &format!("server=\"eu-1\",tenant=\"{tenant}\"")
            )
            .or_else(|| sample(
                &rendered,
                "annals_horizon_events_held_back",
                &format!("tenant=\"{tenant}\",server=\"eu-1\"")
            )),
            Some(0.0),
            "{rendered}"
        );
        assert!(
            rendered.contains(&format!("projection=\"mailer\",tenant=\"{tenant}\"")),
            "{rendered}"
        );
    }
}
