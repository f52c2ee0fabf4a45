//! Projection runners on the in-memory backends: catch-up, skipping,
//! retries, dead letters with stream order, replays, the circuit breaker,
//! the stop policy, rebuilds, ownership, live following and health.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use annals_core::{
    breaker::BreakerConfig, breaker::BreakerState, breaker::CircuitBreakerRegistry,
    dead_letter::DeadLetterQuery, dead_letter::DeadLetterStatus, dead_letter::DeadLetterStore,
    projection::FailurePolicy, projection::HealthCheck, projection::InMemoryConn,
    projection::ProjectionError, projection::ProjectionStatus, projection::ReplayOutcome, Envelope,
    EventStore, EventStoreExt, ExpectedVersion, HandlerError, InMemoryEventStore,
    InMemoryProjectionStore, LogPosition, Metadata, Projection, ProjectionRunner, ProjectionStore,
    RetryPolicy,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
struct Added {
    n: u32,
}

#[derive(Debug, Clone, PartialEq, annals_macros::Event)]
#[event(crate = "annals_core", prefix = "counter")]
enum CounterEvent {
    Added(Added),
}

/// Another aggregate's events: the projection skips them.
#[derive(Debug, Clone, PartialEq, annals_macros::Event)]
#[event(crate = "annals_core", prefix = "other")]
enum OtherEvent {
    Happened(String),
}

/// Records what it applies; fails on "poison" values and while its
/// dependency is down.
#[derive(Default)]
struct Recorder {
    applied: Mutex<Vec<(String, u64, u32)>>,
    poison: Mutex<HashSet<u32>>,
    dependency_down: AtomicBool,
    calls: AtomicU32,
    poison_calls: AtomicU32,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Boom(String);

impl Recorder {
    fn applied(&self) -> Vec<(String, u64, u32)> {
        self.applied.lock().unwrap().clone()
    }
    fn values(&self) -> Vec<u32> {
        self.applied().into_iter().map(|(_, _, n)| n).collect()
    }
}

impl Projection for Recorder {
    type Event = CounterEvent;
    type Conn = InMemoryConn;

    fn name(&self) -> &str {
        "recorder"
    }

    async fn apply(
        &self,
        _: &mut InMemoryConn,
        e: &Envelope<CounterEvent>,
    ) -> Result<(), HandlerError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let CounterEvent::Added(Added { n }) = &e.payload;
        if self.dependency_down.load(Ordering::SeqCst) {
            return Err(HandlerError::dependency(Boom("mailer unreachable".into())));
        }
        if self.poison.lock().unwrap().contains(n) {
            self.poison_calls.fetch_add(1, Ordering::SeqCst);
            return Err(Boom(format!("cannot apply {n}")).into());
        }
        self.applied
            .lock()
            .unwrap()
            .push((e.stream_id.clone(), e.stream_version, *n));
        Ok(())
    }

    async fn reset(
        &self,
        _: &mut InMemoryConn,
        _: &annals_core::TenantId,
    ) -> Result<(), HandlerError> {
        self.applied.lock().unwrap().clear();
        Ok(())
    }
}

fn added(n: u32) -> CounterEvent {
    CounterEvent::Added(Added { n })
}

async fn append(store: &InMemoryEventStore, stream: &str, values: &[u32]) {
    let events: Vec<CounterEvent> = values.iter().map(|n| added(*n)).collect();
    store
        .append_events(stream, ExpectedVersion::Any, &events, &Metadata::new())
        .await
        .unwrap();
}

fn quick_retry(attempts: u32) -> RetryPolicy {
    RetryPolicy::new(attempts)
        .initial_delay(Duration::from_millis(1))
        .max_delay(Duration::from_millis(5))
}

type Runner = ProjectionRunner<InMemoryEventStore, InMemoryProjectionStore, Recorder>;

fn runner(
    store: &InMemoryEventStore,
    backend: &InMemoryProjectionStore,
    recorder: &Arc<Recorder>,
) -> Runner {
    ProjectionRunner::new(store.clone(), backend.clone(), recorder.clone())
        .batch_size(4)
        .retry(quick_retry(3))
        .poll_interval(Duration::from_millis(50))
        .takeover_interval(Duration::from_millis(50))
}

#[tokio::test]
async fn catch_up_applies_every_event_once_skips_other_types_and_moves_the_checkpoint() {
    let store = InMemoryEventStore::new();
    let backend = InMemoryProjectionStore::new();
    let recorder = Arc::new(Recorder::default());
    append(&store, "c-1", &[1, 2, 3]).await;
    store
        .append_events(
            "o-1",
            ExpectedVersion::Any,
            &[OtherEvent::Happened("x".into())],
            &Metadata::new(),
        )
        .await
        .unwrap();
    append(&store, "c-2", &[4, 5, 6, 7, 8]).await;
    store
        .append_events(
            "o-1",
            ExpectedVersion::Any,
            &[OtherEvent::Happened("y".into())],
            &Metadata::new(),
        )
        .await
        .unwrap();

    let r = runner(&store, &backend, &recorder);
    let done = r.catch_up().await.unwrap();
    assert_eq!(done.events_read, 10);
    assert_eq!(done.events_applied, 8);
    assert_eq!(recorder.values(), vec![1, 2, 3, 4, 5, 6, 7, 8]);
    let last = store.read_log(LogPosition::START, 100).await.unwrap();
    let checkpoint = backend.checkpoint("recorder").await.unwrap().unwrap();
    assert_eq!(
        checkpoint.position,
        last.last().unwrap().log_position,
        "the checkpoint moves past trailing events of other types"
    );
    assert_eq!(checkpoint.status, ProjectionStatus::Running);

    // nothing new: nothing applied again
    let again = r.catch_up().await.unwrap();
    assert_eq!(again.events_read, 0);
    assert_eq!(recorder.values().len(), 8);
}

#[tokio::test]
async fn a_poison_event_is_parked_after_its_attempts_and_its_stream_waits_behind_it() {
    let store = InMemoryEventStore::new();
    let backend = InMemoryProjectionStore::new();
    let recorder = Arc::new(Recorder::default());
    recorder.poison.lock().unwrap().insert(2);
    append(&store, "c-1", &[1, 2, 3]).await;
    append(&store, "c-2", &[10, 11]).await;
    append(&store, "c-1", &[4]).await;

    let r = runner(&store, &backend, &recorder);
    let done = r.catch_up().await.unwrap();
    assert_eq!(
        recorder.poison_calls.load(Ordering::SeqCst),
        3,
        "the poison event is tried max_attempts times"
    );
    assert_eq!(
        recorder.values(),
        vec![1, 10, 11],
        "other streams go on; 3 and 4 wait behind 2"
    );
    assert_eq!(done.events_parked, 3);
    let letters = backend
        .list_dead_letters(&DeadLetterQuery::pending("recorder"))
        .await
        .unwrap();
    assert_eq!(letters.len(), 3);
    let failed = &letters[0];
    assert_eq!(failed.stream_id, "c-1");
    assert_eq!(failed.attempts, 3);
    assert_eq!(failed.blocked_by, None);
    assert!(failed.error.contains("cannot apply 2"), "{}", failed.error);
    assert_eq!(failed.event_type, "counter.added");
    for behind in &letters[1..] {
        assert_eq!(behind.blocked_by, Some(failed.event_position));
        assert_eq!(behind.attempts, 0, "parked behind without being tried");
    }
    assert_eq!(backend.pending_dead_letters("recorder").await.unwrap(), 3);

    // a single replay out of order is refused
    let err = r.replay(letters[1].id).await.unwrap_err();
    assert!(matches!(err, ProjectionError::OutOfOrder { .. }), "{err}");

    // replay before the fix fails again and keeps the entry
    match r.replay(failed.id).await.unwrap() {
        ReplayOutcome::Failed(e) => assert!(e.to_string().contains("cannot apply 2")),
        other => panic!("expected a failed replay, got {other:?}"),
    }
    assert_eq!(
        backend
            .dead_letter(failed.id)
            .await
            .unwrap()
            .unwrap()
            .attempts,
        4,
        "a failed replay counts as an attempt"
    );

    // after the fix, replaying everything resolves them in stream order
    recorder.poison.lock().unwrap().clear();
    let summary = r.replay_all().await.unwrap();
    assert_eq!(summary.resolved, 3);
    assert_eq!(summary.failed, 0);
    assert_eq!(recorder.values(), vec![1, 10, 11, 2, 3, 4]);
    let c1: Vec<u64> = recorder
        .applied()
        .into_iter()
        .filter(|(s, _, _)| s == "c-1")
        .map(|(_, v, _)| v)
        .collect();
    assert_eq!(c1, vec![1, 2, 3, 4], "stream c-1 was applied in order");
    assert_eq!(backend.pending_dead_letters("recorder").await.unwrap(), 0);
    let resolved = backend.dead_letter(failed.id).await.unwrap().unwrap();
    assert_eq!(resolved.status, DeadLetterStatus::Resolved);
    assert!(resolved.resolved_at.is_some());

    // the stream is unblocked: new events apply directly
    append(&store, "c-1", &[5]).await;
    r.catch_up().await.unwrap();
    assert_eq!(recorder.values().last(), Some(&5));
    assert!(
        matches!(
            r.replay(failed.id).await.unwrap(),
            ReplayOutcome::NotPending
        ),
        "a resolved entry is not replayed again"
    );
}

#[tokio::test]
async fn discarding_a_dead_letter_records_the_reason() {
    let store = InMemoryEventStore::new();
    let backend = InMemoryProjectionStore::new();
    let recorder = Arc::new(Recorder::default());
    recorder.poison.lock().unwrap().insert(1);
    append(&store, "c-1", &[1]).await;
    runner(&store, &backend, &recorder)
        .catch_up()
        .await
        .unwrap();
    let letter = backend
        .list_dead_letters(&DeadLetterQuery::pending("recorder"))
        .await
        .unwrap()
        .remove(0);
    for hostile in ["", "a\u{0}b"] {
        match backend.discard_dead_letter(letter.id, hostile).await {
            Err(annals_core::Error::InvalidInput(i)) => assert_eq!(i.field, "discard reason"),
            other => panic!("{hostile:?}: expected InvalidInput, got {other:?}"),
        }
    }
    assert!(backend
        .discard_dead_letter(letter.id, "bad import, fixed by hand")
        .await
        .unwrap());
    assert!(
        !backend
            .discard_dead_letter(letter.id, "again")
            .await
            .unwrap(),
        "only pending entries can be discarded"
    );
    let discarded = backend.dead_letter(letter.id).await.unwrap().unwrap();
    assert_eq!(discarded.status, DeadLetterStatus::Discarded);
    assert_eq!(
        discarded.discard_reason.as_deref(),
        Some("bad import, fixed by hand")
    );
    assert!(backend
        .list_dead_letters(&DeadLetterQuery::pending("recorder"))
        .await
        .unwrap()
        .is_empty());
    let all = backend
        .list_dead_letters(&DeadLetterQuery::all())
        .await
        .unwrap();
    assert_eq!(all.len(), 1, "history is kept");
}

#[tokio::test]
async fn the_stop_policy_stops_at_the_event_and_resumes_there_after_a_fix() {
    let store = InMemoryEventStore::new();
    let backend = InMemoryProjectionStore::new();
    let recorder = Arc::new(Recorder::default());
    recorder.poison.lock().unwrap().insert(3);
    append(&store, "c-1", &[1, 2, 3, 4, 5]).await;
    let r = runner(&store, &backend, &recorder).on_failure(FailurePolicy::Stop);
    let err = r.catch_up().await.unwrap_err();
    let ProjectionError::Stopped {
        position,
        attempts,
        ref error,
        ..
    } = err
    else {
        panic!("expected Stopped, got {err}");
    };
    assert_eq!(attempts, 3);
    assert!(error.contains("cannot apply 3"));
    assert_eq!(recorder.values(), vec![1, 2]);
    let checkpoint = backend.checkpoint("recorder").await.unwrap().unwrap();
    assert_eq!(checkpoint.status, ProjectionStatus::Failed);
    assert_eq!(checkpoint.error_position, Some(position));
    assert!(
        checkpoint.position.position < position,
        "it did not move past the event"
    );
    assert_eq!(backend.pending_dead_letters("recorder").await.unwrap(), 0);

    let health = HealthCheck::new(store.clone(), backend.clone());
    let h = health.check("recorder").await.unwrap();
    assert!(h.stale, "a failed projection is stale");
    assert_eq!(h.error_position, Some(position));
    let ready = health.readiness().await;
    assert!(!ready.ready);
    assert!(
        ready.reasons[0].contains("failed at global position"),
        "{:?}",
        ready.reasons
    );

    recorder.poison.lock().unwrap().clear();
    r.catch_up().await.unwrap();
    assert_eq!(recorder.values(), vec![1, 2, 3, 4, 5]);
    assert_eq!(
        backend
            .checkpoint("recorder")
            .await
            .unwrap()
            .unwrap()
            .status,
        ProjectionStatus::Running
    );
    assert!(health.readiness().await.ready);
}

#[tokio::test]
async fn an_open_breaker_pauses_the_projection_instead_of_parking_events() {
    let store = InMemoryEventStore::new();
    let backend = InMemoryProjectionStore::new();
    let recorder = Arc::new(Recorder::default());
    recorder.dependency_down.store(true, Ordering::SeqCst);
    append(&store, "c-1", &[1, 2, 3]).await;
    let breakers = CircuitBreakerRegistry::new();
    breakers.configure(
        "recorder",
        BreakerConfig::default()
            .failure_threshold(3)
            .cool_down(Duration::from_millis(400)),
    );
    let handle = runner(&store, &backend, &recorder)
        .breakers(breakers.clone())
        .retry(quick_retry(2))
        .spawn();

    // wait for the breaker to open
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while breakers.get("recorder").state() != BreakerState::Open {
        assert!(
            std::time::Instant::now() < deadline,
            "the breaker never opened"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let calls_when_opened = recorder.calls.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(
        recorder.calls.load(Ordering::SeqCst),
        calls_when_opened,
        "no calls while the breaker is open"
    );
    assert_eq!(
        backend.pending_dead_letters("recorder").await.unwrap(),
        0,
        "a dependency failure never parks the event"
    );

    // the dependency recovers: the half-open trial succeeds and closes it
    recorder.dependency_down.store(false, Ordering::SeqCst);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while recorder.values().len() < 3 {
        assert!(std::time::Instant::now() < deadline, "never recovered");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(breakers.get("recorder").state(), BreakerState::Closed);
    assert_eq!(recorder.values(), vec![1, 2, 3]);
    handle.stop().await.unwrap();
}

#[tokio::test]
async fn rebuild_gives_the_same_read_model_and_discards_dead_letters() {
    let store = InMemoryEventStore::new();
    let backend = InMemoryProjectionStore::new();
    let recorder = Arc::new(Recorder::default());
    append(&store, "c-1", &[1, 2, 3]).await;
    append(&store, "c-2", &[4, 5]).await;
    let r = runner(&store, &backend, &recorder);
    r.catch_up().await.unwrap();
    let before = recorder.applied();
    let done = r.rebuild().await.unwrap();
    assert_eq!(done.events_applied, 5);
    assert_eq!(recorder.applied(), before);
}

#[tokio::test]
async fn two_runners_one_owner_and_a_standby_takes_over() {
    let store = InMemoryEventStore::new();
    let backend = InMemoryProjectionStore::new();
    let recorder = Arc::new(Recorder::default());
    let first = runner(&store, &backend, &recorder).spawn();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let second_runner = runner(&store, &backend, &recorder);
    assert!(
        matches!(
            second_runner.catch_up().await,
            Err(ProjectionError::NotOwner { .. })
        ),
        "catch_up refuses while another runner owns the projection"
    );
    let second = second_runner.spawn();
    for i in 0..20 {
        append(&store, &format!("c-{}", i % 3), &[i]).await;
    }
    wait_for(|| recorder.values().len() == 20).await;
    first.stop().await.unwrap();
    for i in 20..30 {
        append(&store, "c-9", &[i]).await;
    }
    wait_for(|| recorder.values().len() == 30).await;
    let mut values = recorder.values();
    values.sort_unstable();
    assert_eq!(
        values,
        (0..30).collect::<Vec<_>>(),
        "each event applied once"
    );
    second.stop().await.unwrap();
}

#[tokio::test]
async fn a_running_projection_follows_appends_when_woken() {
    let store = InMemoryEventStore::new();
    let backend = InMemoryProjectionStore::new();
    let recorder = Arc::new(Recorder::default());
    // a poll interval far longer than the test: only the wake-up can deliver
    let handle = runner(&store, &backend, &recorder)
        .poll_interval(Duration::from_secs(3600))
        .spawn();
    tokio::time::sleep(Duration::from_millis(50)).await;
    append(&store, "c-1", &[7]).await;
    wait_for(|| recorder.values() == vec![7]).await;
    handle.stop().await.unwrap();
}

#[tokio::test]
async fn health_turns_stale_when_the_projection_stops_and_recovers_when_it_resumes() {
    let store = InMemoryEventStore::new();
    let backend = InMemoryProjectionStore::new();
    let recorder = Arc::new(Recorder::default());
    let health = HealthCheck::new(store.clone(), backend.clone())
        .stale_after(Duration::from_millis(200))
        .expect("recorder");
    append(&store, "c-1", &[1]).await;
    let before = health.check("recorder").await.unwrap();
    assert_eq!(before.events_behind, 1, "never ran: behind everything");
    assert_eq!(before.status, None);

    let r = runner(&store, &backend, &recorder);
    r.catch_up().await.unwrap();
    let h = health.check("recorder").await.unwrap();
    assert_eq!((h.events_behind, h.lag_seconds, h.stale), (0, 0.0, false));
    assert!(h.last_event_at.is_some());

    // stopped: new events wait, and after the threshold it is stale
    append(&store, "c-1", &[2, 3]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let h = health.check("recorder").await.unwrap();
    assert_eq!(h.events_behind, 2);
    assert!(h.lag_seconds >= 0.3, "{}", h.lag_seconds);
    assert!(h.stale);
    let ready = health.readiness().await;
    assert!(!ready.ready);
    assert!(
        ready.reasons[0].contains("`recorder` is") && ready.reasons[0].contains("behind"),
        "{:?}",
        ready.reasons
    );

    r.catch_up().await.unwrap();
    let h = health.check("recorder").await.unwrap();
    assert!(!h.stale);
    assert!(health.readiness().await.ready);
}

async fn wait_for(mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for the projection"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
