//! Projection runners, dead letters and circuit breakers against a real
//! PostgreSQL (DATABASE_URL; the test command `scripts/test` starts one).
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use annals_core::{
    breaker::BreakerConfig, breaker::BreakerState, breaker::CircuitBreakerRegistry,
    dead_letter::DeadLetterQuery, dead_letter::DeadLetterStatus, dead_letter::DeadLetterStore,
    projection::FailurePolicy, projection::HealthCheck, projection::ProjectionError,
    projection::ProjectionStatus, Envelope, EventStore, EventStoreExt, ExpectedVersion,
    HandlerError, LogPosition, Metadata, Projection, ProjectionRunner, ProjectionStore,
    RetryPolicy,
};
use annals_postgres::testing::TestDatabase;
use annals_postgres::{PgEventStore, PgProjectionStore};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
struct Added {
    n: u32,
}

#[derive(Debug, Clone, PartialEq, annals_macros::Event)]
#[event(crate = "annals_core", prefix = "counter")]
enum CounterEvent {
    Added(Added),
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Boom(String);

/// Writes one row per applied event into `applied` (no unique key, so a
/// double application would show), inside the runner's transaction.
#[derive(Default)]
struct Recorder {
    poison: Mutex<HashSet<u32>>,
    dependency_down: AtomicBool,
    /// The error text of a poisoned value (default "cannot apply {n}").
    poison_message: Option<String>,
    /// Hang forever (a stuck handler) on this value, once reached.
    hang_on: Option<u32>,
    reached_hang: AtomicBool,
    calls: AtomicU32,
}

impl Projection for Recorder {
    type Event = CounterEvent;
    type Conn = PgConnection;

    fn name(&self) -> &str {
        "recorder"
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        e: &Envelope<CounterEvent>,
    ) -> Result<(), HandlerError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let CounterEvent::Added(Added { n }) = &e.payload;
        if self.dependency_down.load(Ordering::SeqCst) {
            return Err(HandlerError::dependency(Boom("sms gateway down".into())));
        }
        if self.poison.lock().unwrap().contains(n) {
            let message =
                (self.poison_message.clone()).unwrap_or_else(|| format!("cannot apply {n}"));
            return Err(Boom(message).into());
        }
        sqlx::query(
            "INSERT INTO applied (position, stream_id, version, n) VALUES ($1, $2, $3, $4)",
        )
        .bind(e.position() as i64)
        .bind(&e.stream_id)
        .bind(e.stream_version as i64)
        .bind(*n as i32)
        .execute(&mut *conn)
        .await?;
        if self.hang_on == Some(*n) {
            self.reached_hang.store(true, Ordering::SeqCst);
            std::future::pending::<()>().await;
        }
        Ok(())
    }

    async fn reset(
        &self,
        conn: &mut PgConnection,
        _: &annals_core::TenantId,
    ) -> Result<(), HandlerError> {
        sqlx::query("TRUNCATE applied").execute(conn).await?;
        Ok(())
    }
}

struct Env {
    db: TestDatabase,
    store: PgEventStore,
    projections: PgProjectionStore,
}

async fn env() -> Env {
    let db = TestDatabase::new().await;
    sqlx::query("CREATE TABLE applied (seq bigint GENERATED ALWAYS AS IDENTITY, position bigint, stream_id text, version bigint, n int)")
        .execute(db.pool())
        .await
        .unwrap();
    let store = PgEventStore::builder(db.pool().clone())
        .register::<CounterEvent>()
        .build()
        .await
        .unwrap();
    let projections = PgProjectionStore::new(db.pool().clone());
    Env {
        db,
        store,
        projections,
    }
}

impl Env {
    fn pool(&self) -> &PgPool {
        self.db.pool()
    }

    async fn append(&self, stream: &str, values: impl IntoIterator<Item = u32>) {
        let events: Vec<CounterEvent> = values
            .into_iter()
            .map(|n| CounterEvent::Added(Added { n }))
            .collect();
        self.store
            .append_events(stream, ExpectedVersion::Any, &events, &Metadata::new())
            .await
            .unwrap();
    }

    fn runner(
        &self,
        recorder: &Arc<Recorder>,
    ) -> ProjectionRunner<PgEventStore, PgProjectionStore, Recorder> {
        ProjectionRunner::new(
            self.store.clone(),
            self.projections.clone(),
            recorder.clone(),
        )
        .batch_size(50)
        .retry(
            RetryPolicy::new(3)
                .initial_delay(Duration::from_millis(2))
                .max_delay(Duration::from_millis(20)),
        )
        .poll_interval(Duration::from_millis(200))
        .takeover_interval(Duration::from_millis(100))
        .lease_check_interval(Duration::from_millis(200))
    }

    /// (rows, distinct positions) in the read model.
    async fn applied(&self) -> (i64, i64) {
        sqlx::query_as("SELECT count(*), count(DISTINCT position) FROM applied")
            .fetch_one(self.pool())
            .await
            .unwrap()
    }

    /// The values applied to a stream, in the order they were applied.
    async fn values_of(&self, stream: &str) -> Vec<i32> {
        sqlx::query_scalar("SELECT n FROM applied WHERE stream_id = $1 ORDER BY seq")
            .bind(stream)
            .fetch_all(self.pool())
            .await
            .unwrap()
    }

    async fn wait_applied(&self, rows: i64) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (n, _) = self.applied().await;
            if n >= rows {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out: {n} of {rows} rows applied"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_across_a_crash_in_the_middle_of_a_batch() {
    let env = env().await;
    env.append("c-1", 0..60).await;
    env.append("c-2", 60..100).await;
    // batch boundaries matter here: wait until no other test's open
    // transaction (xids are server-wide) hides part of the log
    annals_core::testing::conformance::read_log_settled(&env.store, LogPosition::START, 100).await;
    let stuck = Arc::new(Recorder {
        hang_on: Some(75),
        ..Recorder::default()
    });
    let handle = env.runner(&stuck).spawn();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !stuck.reached_hang.load(Ordering::SeqCst) {
        assert!(
            Instant::now() < deadline,
            "the runner never reached event 75"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // the second batch (50..100) has written 26 rows in its open transaction
    handle.abort();
    let _ = handle.join().await;
    assert_eq!(
        env.applied().await,
        (50, 50),
        "only the first, committed batch is in the read model"
    );
    assert_eq!(
        env.projections
            .checkpoint("recorder")
            .await
            .unwrap()
            .unwrap()
            .position
            .position,
        50,
        "the checkpoint is the first batch's last event"
    );

    let recorder = Arc::new(Recorder::default());
    let done = env.runner(&recorder).catch_up().await.unwrap();
    assert_eq!(done.events_applied, 50);
    assert_eq!(env.applied().await, (100, 100), "every event exactly once");
    assert_eq!(env.values_of("c-1").await, (0..60).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuild_gives_the_same_read_model() {
    let env = env().await;
    for i in 0..5 {
        env.append(&format!("c-{i}"), (i * 20)..(i * 20 + 20)).await;
    }
    let recorder = Arc::new(Recorder::default());
    let runner = env.runner(&recorder);
    runner.catch_up().await.unwrap();
    for _ in 0..5 {
        // each run gives its lease back at once: the next one can take it
        runner.catch_up().await.expect("the lease was released");
    }
    let snapshot = |pool: PgPool| async move {
        sqlx::query_as::<_, (i64, String, i64, i32)>(
            "SELECT position, stream_id, version, n FROM applied ORDER BY position",
        )
        .fetch_all(&pool)
        .await
        .unwrap()
    };
    let before = snapshot(env.pool().clone()).await;
    assert_eq!(before.len(), 100);
    let done = runner.rebuild().await.unwrap();
    assert_eq!(done.events_applied, 100);
    assert_eq!(snapshot(env.pool().clone()).await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_runners_one_owner_and_takeover_after_the_owner_dies() {
    let env = env().await;
    let recorder = Arc::new(Recorder::default());
    let first = env.runner(&recorder).spawn();
    // let the first runner take the lease
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second_runner = env.runner(&recorder);
    assert!(
        matches!(
            second_runner.catch_up().await,
            Err(ProjectionError::NotOwner { .. })
        ),
        "catch_up refuses while another runner owns the projection"
    );
    let second = second_runner.spawn();
    for i in 0..10 {
        env.append(&format!("c-{}", i % 3), [i]).await;
    }
    env.wait_applied(10).await;

    // the owner dies (its task aborted, its lease connection dropped)
    first.abort();
    let died = Instant::now();
    env.append("c-9", 10..20).await;
    env.wait_applied(20).await;
    let takeover = died.elapsed();
    assert!(
        takeover < Duration::from_secs(10),
        "the standby took over in {takeover:?}"
    );
    eprintln!("takeover after the owner died: {takeover:?}");
    assert_eq!(env.applied().await, (20, 20), "each event applied once");
    second.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_event_is_parked_the_handler_goes_on_and_a_replay_resolves_it() {
    let env = env().await;
    let recorder = Arc::new(Recorder::default());
    recorder.poison.lock().unwrap().insert(2);
    env.append("c-1", [1, 2, 3]).await;
    env.append("c-2", [10, 11]).await;
    env.append("c-1", [4]).await;
    let runner = env.runner(&recorder);
    let done = runner.catch_up().await.unwrap();
    assert_eq!(done.events_parked, 3, "2 failed; 3 and 4 wait behind it");
    assert_eq!(env.values_of("c-1").await, vec![1]);
    assert_eq!(
        env.values_of("c-2").await,
        vec![10, 11],
        "other streams go on"
    );
    let letters = env
        .projections
        .list_dead_letters(&DeadLetterQuery::pending("recorder"))
        .await
        .unwrap();
    assert_eq!(letters.len(), 3);
    assert_eq!(letters[0].attempts, 3, "parked after 3 attempts");
    assert!(letters[0].error.contains("cannot apply 2"));
    assert!(letters[1..]
        .iter()
        .all(|l| l.blocked_by == Some(letters[0].event_position) && l.attempts == 0));
    // the checkpoint moved past everything
    let checkpoint = env
        .projections
        .checkpoint("recorder")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(checkpoint.position.position, letters[2].event_position);

    // a restart (new runner, new connections) keeps the parked entries,
    // and the breaker starts closed even though the old one was open
    for _ in 0..20 {
        runner.breaker().record_failure();
    }
    assert_eq!(runner.breaker().state(), BreakerState::Open);
    drop(runner);
    let fresh_pool = PgPool::connect_with(env.db.connect_options())
        .await
        .unwrap();
    let restarted = ProjectionRunner::new(
        env.store.clone(),
        PgProjectionStore::new(fresh_pool),
        recorder.clone(),
    );
    assert_eq!(restarted.breaker().state(), BreakerState::Closed);
    assert_eq!(
        restarted
            .projection_store()
            .pending_dead_letters("recorder")
            .await
            .unwrap(),
        3
    );

    // fixed: replay resolves all three, in stream order
    recorder.poison.lock().unwrap().clear();
    let summary = restarted.replay_all().await.unwrap();
    assert_eq!((summary.resolved, summary.failed), (3, 0));
    assert_eq!(env.values_of("c-1").await, vec![1, 2, 3, 4]);
    let resolved = env
        .projections
        .dead_letter(letters[0].id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resolved.status, DeadLetterStatus::Resolved);
    assert_eq!(env.applied().await, (6, 6));

    // concurrent replays of one entry apply it once
    recorder.poison.lock().unwrap().insert(5);
    env.append("c-3", [5]).await;
    restarted.catch_up().await.unwrap();
    let letter = env
        .projections
        .list_dead_letters(&DeadLetterQuery::pending("recorder"))
        .await
        .unwrap()
        .remove(0);
    recorder.poison.lock().unwrap().clear();
    let (a, b) = tokio::join!(restarted.replay(letter.id), restarted.replay(letter.id));
    let outcomes = [a.unwrap(), b.unwrap()];
    assert_eq!(
        outcomes
            .iter()
            .filter(|o| matches!(o, annals_core::projection::ReplayOutcome::Resolved))
            .count(),
        1,
        "{outcomes:?}"
    );
    assert_eq!(env.applied().await, (7, 7));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stop_policy_marks_the_projection_failed_at_the_event() {
    let env = env().await;
    let recorder = Arc::new(Recorder::default());
    recorder.poison.lock().unwrap().insert(3);
    env.append("c-1", 1..=5).await;
    let handle = env
        .runner(&recorder)
        .on_failure(FailurePolicy::Stop)
        .spawn();
    let err = tokio::time::timeout(Duration::from_secs(30), handle.join())
        .await
        .expect("the runner stops by itself")
        .unwrap_err();
    let ProjectionError::Stopped { position, .. } = err else {
        panic!("expected Stopped, got {err}");
    };
    assert_eq!(env.values_of("c-1").await, vec![1, 2]);
    let checkpoint = env
        .projections
        .checkpoint("recorder")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(checkpoint.status, ProjectionStatus::Failed);
    assert_eq!(checkpoint.error_position, Some(position));
    assert!(checkpoint
        .error
        .as_deref()
        .unwrap_or_default()
        .contains("cannot apply 3"));
    assert!(checkpoint.position.position < position);

    let health = HealthCheck::new(env.store.clone(), env.projections.clone());
    let ready = health.readiness().await;
    assert!(!ready.ready);
    assert!(
        ready.reasons[0].contains(&format!("failed at global position {position}")),
        "{:?}",
        ready.reasons
    );

    recorder.poison.lock().unwrap().clear();
    env.runner(&recorder).catch_up().await.unwrap();
    assert_eq!(env.values_of("c-1").await, vec![1, 2, 3, 4, 5]);
    assert!(health.readiness().await.ready);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_dependency_opens_the_breaker_and_the_handler_stops_calling_it() {
    let env = env().await;
    let recorder = Arc::new(Recorder::default());
    recorder.dependency_down.store(true, Ordering::SeqCst);
    env.append("c-1", 1..=5).await;
    let breakers = CircuitBreakerRegistry::new();
    breakers.configure(
        "recorder",
        BreakerConfig::default()
            .failure_threshold(4)
            .cool_down(Duration::from_millis(800)),
    );
    let handle = env.runner(&recorder).breakers(breakers.clone()).spawn();
    let deadline = Instant::now() + Duration::from_secs(30);
    while breakers.get("recorder").state() != BreakerState::Open {
        assert!(Instant::now() < deadline, "the breaker never opened");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let calls = recorder.calls.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        recorder.calls.load(Ordering::SeqCst),
        calls,
        "no calls while open"
    );
    // still down at the half-open trial: one call, and open again
    let deadline = Instant::now() + Duration::from_secs(30);
    while recorder.calls.load(Ordering::SeqCst) == calls {
        assert!(
            Instant::now() < deadline,
            "no trial call after the cool-down"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        recorder.calls.load(Ordering::SeqCst),
        calls + 1,
        "one trial call"
    );
    assert_eq!(breakers.get("recorder").state(), BreakerState::Open);
    assert_eq!(
        env.projections
            .pending_dead_letters("recorder")
            .await
            .unwrap(),
        0,
        "nothing burned into the dead-letter queue"
    );
    eprintln!(
        "calls to the failing dependency before the breaker opened: {calls}, then one trial per cool-down"
    );

    recorder.dependency_down.store(false, Ordering::SeqCst);
    env.wait_applied(5).await;
    assert_eq!(breakers.get("recorder").state(), BreakerState::Closed);
    assert_eq!(env.values_of("c-1").await, vec![1, 2, 3, 4, 5]);
    handle.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_turns_stale_when_the_projection_stops_and_recovers_when_it_resumes() {
    let env = env().await;
    let recorder = Arc::new(Recorder::default());
    let health = HealthCheck::new(env.store.clone(), env.projections.clone())
        .stale_after(Duration::from_millis(500))
        .expect("recorder");
    env.append("c-1", [1, 2]).await;
    let handle = env.runner(&recorder).spawn();
    env.wait_applied(2).await;
    let h = health.check("recorder").await.unwrap();
    assert_eq!((h.events_behind, h.stale), (0, false));
    handle.stop().await.unwrap();

    env.append("c-1", [3, 4, 5]).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let report = health.check_all().await.unwrap();
    let h = &report.projections[0];
    assert_eq!(h.name, "recorder");
    assert_eq!(h.events_behind, 3);
    assert!(h.stale, "{h:?}");
    assert!(h.lag_seconds >= 0.7, "{}", h.lag_seconds);
    assert!(!health.readiness().await.ready);

    let handle = env.runner(&recorder).spawn();
    env.wait_applied(5).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let h = health.check("recorder").await.unwrap();
        if !h.stale && h.events_behind == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "never recovered: {h:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(health.readiness().await.ready);
    handle.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catch_up_waits_for_events_an_open_transaction_hides() {
    let env = env().await;
    let recorder = Arc::new(Recorder::default());
    // a transaction that took a transaction id first and stays open (held
    // short: the horizon is server-wide, and other tests share the server)
    let mut open = env.pool().begin().await.unwrap();
    sqlx::query("SELECT pg_current_xact_id()")
        .execute(&mut *open)
        .await
        .unwrap();
    // committed after it: invisible to log readers until it ends
    env.append("c-1", [1, 2]).await;
    assert!(env.store.horizon().await.unwrap().events_held_back >= 2);
    let ends = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        open.rollback().await.unwrap();
    });
    let started = Instant::now();
    let done = env.runner(&recorder).catch_up().await.unwrap();
    assert_eq!(
        done.events_applied, 2,
        "catch_up returned before the events it was called after"
    );
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert_eq!(env.values_of("c-1").await, [1, 2]);
    ends.await.unwrap();

    // the wait is bounded: with a transaction that never ends, catch_up
    // returns after its settle timeout with what it could read
    let mut open = env.pool().begin().await.unwrap();
    sqlx::query("SELECT pg_current_xact_id()")
        .execute(&mut *open)
        .await
        .unwrap();
    env.append("c-1", [3]).await;
    let started = Instant::now();
    let done = env
        .runner(&recorder)
        .settle_timeout(Duration::from_millis(200))
        .catch_up()
        .await
        .unwrap();
    let waited = started.elapsed();
    open.rollback().await.unwrap();
    assert_eq!(done.events_applied, 0);
    assert!(
        waited >= Duration::from_millis(200) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_runner_is_woken_by_notify_not_by_polling() {
    let env = env().await;
    let recorder = Arc::new(Recorder::default());
    // polling once a minute: only a notification can wake it in time
    let handle = env
        .runner(&recorder)
        .poll_interval(Duration::from_secs(60))
        .spawn();
    env.append("c-1", [1]).await;
    env.wait_applied(1).await;
    for n in 2..=4 {
        let started = Instant::now();
        env.append("c-1", [n]).await;
        env.wait_applied(i64::from(n)).await;
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "woken after {:?}",
            started.elapsed()
        );
    }
    assert_eq!(env.values_of("c-1").await, [1, 2, 3, 4]);
    handle.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_survives_the_database_dropping_its_connections() {
    let env = env().await;
    let recorder = Arc::new(Recorder::default());
    let handle = env.runner(&recorder).spawn();
    env.append("c-1", [1]).await;
    env.wait_applied(1).await;
    // kill every other session of this database: the runner's pool
    // connections and its lease
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
          WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .execute(env.pool())
    .await
    .unwrap();
    // appends may hit a dead pooled connection once: retry them
    let mut appended = false;
    for _ in 0..5 {
        if env
            .store
            .append_events(
                "c-1",
                ExpectedVersion::Any,
                &[CounterEvent::Added(Added { n: 2 })],
                &Metadata::new(),
            )
            .await
            .is_ok()
        {
            appended = true;
            break;
        }
    }
    assert!(appended);
    env.wait_applied(2).await;
    assert_eq!(env.applied().await, (2, 2));
    handle.stop().await.unwrap();
}

/// Rows written by hand whose envelope cannot be read (a correlation id that
/// is no UUID, a schema version of -1) stop nothing: a projection that reads
/// their type parks each as a dead letter naming what is wrong and applies
/// what follows; a row of a type it does not read is skipped. Nothing is
/// retried, the projection keeps running and its breaker stays closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_rows_are_parked_and_the_log_goes_on() {
    let env = env().await;
    env.append("c-1", [1]).await;
    let by_hand = |stream: &'static str,
                   event_type: &'static str,
                   version: i32,
                   metadata: &'static str| {
        let pool = env.pool().clone();
        async move {
            let position: i64 = sqlx::query_scalar(
                "INSERT INTO annals_events (event_id, stream_id, stream_version, event_type, schema_version, payload, metadata)
                 VALUES ($1, $2, 1, $3, $4, '{\"n\": 99}'::jsonb, $5::jsonb) RETURNING position",
            )
            .bind(uuid::Uuid::now_v7())
            .bind(stream)
            .bind(event_type)
            .bind(version)
            .bind(metadata)
            .fetch_one(&pool)
            .await
            .unwrap();
            position as u64
        }
    };
    let bad_meta = by_hand(
        "c-bad-1",
        "counter.added",
        1,
        r#"{"correlation_id": "not-a-uuid"}"#,
    )
    .await;
    let bad_version = by_hand("c-bad-2", "counter.added", -1, "{}").await;
    let not_ours = by_hand("o-1", "other.thing", -1, "{}").await;
    env.append("c-1", [4]).await;
    env.append("c-2", [5]).await;

    let recorder = Arc::new(Recorder::default());
    let runner = env.runner(&recorder);
    let done = runner.catch_up().await.unwrap();
    assert_eq!(env.values_of("c-1").await, vec![1, 4], "the log went on");
    assert_eq!(env.values_of("c-2").await, vec![5]);
    assert_eq!(done.events_parked, 2, "{done:?}");
    let letters = env
        .projections
        .list_dead_letters(&DeadLetterQuery::pending("recorder"))
        .await
        .unwrap();
    let positions: Vec<u64> = letters.iter().map(|l| l.event_position).collect();
    assert_eq!(
        positions,
        vec![bad_meta, bad_version],
        "the row of another type is skipped"
    );
    assert!(
        letters[0].error.contains("metadata"),
        "{}",
        letters[0].error
    );
    assert!(
        letters[1].error.contains("schema version"),
        "{}",
        letters[1].error
    );
    assert_eq!(letters[0].stream_id, "c-bad-1");
    assert!(not_ours > bad_version);
    let checkpoint = env
        .projections
        .checkpoint("recorder")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(checkpoint.status, ProjectionStatus::Running);
    assert!(checkpoint.error.is_none(), "{checkpoint:?}");
    assert_eq!(runner.breaker().state(), BreakerState::Closed);
    let end = env.store.log_end().await.unwrap().unwrap();
    assert_eq!(
        checkpoint.position, end,
        "the checkpoint is at the end of the log"
    );
}

/// A projection with side effects outside the runner's transaction: each
/// call of `apply` is logged in memory (as a sent e-mail would be), and the
/// read model row records which runner committed it.
struct Fenced {
    runner: &'static str,
    side_effects: Arc<Mutex<Vec<(&'static str, u64)>>>,
}

impl Projection for Fenced {
    type Event = CounterEvent;
    type Conn = PgConnection;

    fn name(&self) -> &str {
        "fenced"
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        e: &Envelope<CounterEvent>,
    ) -> Result<(), HandlerError> {
        self.side_effects
            .lock()
            .unwrap()
            .push((self.runner, e.position()));
        tokio::time::sleep(Duration::from_millis(2)).await;
        sqlx::query("INSERT INTO fenced (position, runner) VALUES ($1, $2)")
            .bind(e.position() as i64)
            .bind(self.runner)
            .execute(&mut *conn)
            .await?;
        Ok(())
    }

    async fn reset(
        &self,
        conn: &mut PgConnection,
        _: &annals_core::TenantId,
    ) -> Result<(), HandlerError> {
        sqlx::query("TRUNCATE fenced").execute(conn).await?;
        Ok(())
    }
}

/// An owner whose lock connection dies does not notice until its next lease
/// check (a minute here). The new owner's lease epoch fences it off: the
/// old owner's batch in flight is rolled back, it commits nothing after the
/// new owner took over, and `apply`'s side effects outside the transaction
/// are repeated for at most that one batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_that_lost_its_lock_commits_nothing_after_the_takeover() {
    const EVENTS: i64 = 600;
    const BATCH: usize = 20;
    let env = env().await;
    sqlx::query("CREATE TABLE fenced (position bigint, runner text)")
        .execute(env.pool())
        .await
        .unwrap();
    for i in 0..6u32 {
        env.append(&format!("c-{i}"), (i * 100)..(i * 100 + 100))
            .await;
    }
    let side_effects = Arc::new(Mutex::new(Vec::new()));
    let runner = |name: &'static str| {
        ProjectionRunner::new(
            env.store.clone(),
            env.projections.clone(),
            Arc::new(Fenced {
                runner: name,
                side_effects: side_effects.clone(),
            }),
        )
        .batch_size(BATCH)
        .takeover_interval(Duration::from_millis(50))
        .lease_check_interval(Duration::from_secs(60))
        .spawn()
    };
    let committed = |pool: PgPool| async move {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM fenced")
            .fetch_one(&pool)
            .await
            .unwrap()
    };

    let old = runner("old");
    let deadline = Instant::now() + Duration::from_secs(30);
    while committed(env.pool().clone()).await < 3 * BATCH as i64 {
        assert!(Instant::now() < deadline, "the first owner applied nothing");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // the old owner's lock connection dies; the old owner goes on working
    let killed: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_locks
          WHERE locktype = 'advisory' AND granted
            AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .fetch_all(env.pool())
    .await
    .unwrap();
    assert_eq!(killed, [true], "one advisory lock, the old owner's");
    let new = runner("new");

    let deadline = Instant::now() + Duration::from_secs(60);
    while committed(env.pool().clone()).await < EVENTS {
        assert!(Instant::now() < deadline, "the new owner did not finish");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    new.stop().await.unwrap();
    old.stop().await.unwrap();

    let (rows, distinct): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT position) FROM fenced")
            .fetch_one(env.pool())
            .await
            .unwrap();
    assert_eq!((rows, distinct), (EVENTS, EVENTS), "each event once");
    let (old_last, new_first): (Option<i64>, Option<i64>) = sqlx::query_as(
        "SELECT max(position) FILTER (WHERE runner = 'old'),
                min(position) FILTER (WHERE runner = 'new') FROM fenced",
    )
    .fetch_one(env.pool())
    .await
    .unwrap();
    let old_last = old_last.expect("the old owner committed its first batches");
    let new_first = new_first.expect(
        "the new owner committed nothing: the old owner kept committing after the takeover",
    );
    assert!(
        old_last < new_first,
        "the old owner committed event {old_last} after the new owner committed from {new_first}"
    );
    let effects = side_effects.lock().unwrap().clone();
    let by = |who: &str| -> HashSet<u64> {
        effects
            .iter()
            .filter(|(r, _)| *r == who)
            .map(|(_, p)| *p)
            .collect()
    };
    let repeated = by("old").intersection(&by("new")).count();
    eprintln!("side effects repeated after the takeover: {repeated}");
    assert!(
        repeated <= BATCH,
        "{repeated} side effects ran under both owners; at most one batch ({BATCH}) may"
    );
}

/// An error text with a NUL (which Postgres text cannot hold) and 100 kB
/// does not stop the projection: the event is parked with the text made
/// storable (NUL replaced, cut at 8 kB), the events after it are applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_error_text_is_parked_storably() {
    let env = env().await;
    env.append("c-1", [1, 2]).await;
    env.append("c-2", [3]).await;
    // the handler's error echoes a hostile value: a NUL and 100 kB
    let recorder = Arc::new(Recorder {
        poison: Mutex::new(HashSet::from([2])),
        poison_message: Some(format!("refused \u{0} {}", "x".repeat(100_000))),
        ..Recorder::default()
    });
    let done = tokio::time::timeout(Duration::from_secs(30), env.runner(&recorder).catch_up())
        .await
        .expect("the catch-up ends")
        .unwrap();
    assert_eq!(done.events_applied, 2, "1 and 3 applied, 2 parked");
    let letters = env
        .projections
        .list_dead_letters(&DeadLetterQuery::pending("recorder"))
        .await
        .unwrap();
    assert_eq!(letters.len(), 1);
    let error = &letters[0].error;
    assert!(!error.contains('\0'), "NUL replaced");
    assert!(error.contains("refused \u{fffd} xxx"), "{}", &error[..40]);
    assert!(
        error.len() <= annals_core::store::limits::MAX_ERROR_TEXT_BYTES,
        "{} bytes",
        error.len()
    );
}

/// A discard reason is checked before any SQL, as in memory: not empty, no
/// NUL, at most 8 kB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_discard_reasons_are_refused_before_any_sql() {
    let env = env().await;
    let huge = "r".repeat(annals_core::store::limits::MAX_ERROR_TEXT_BYTES + 1);
    for reason in ["", "a\u{0}b", huge.as_str()] {
        match env.projections.discard_dead_letter(1, reason).await {
            Err(annals_core::Error::InvalidInput(i)) => assert_eq!(i.field, "discard reason"),
            other => panic!("expected InvalidInput, got {other:?}"),
        }
    }
    assert!(!env
        .projections
        .discard_dead_letter(1, "fine")
        .await
        .unwrap());
}

/// `pause` fences the current owner (its checkpoint move fails, its lease
/// reads as lost) and keeps every runner out, a rebuild's reset included,
/// until `resume`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_projection_is_fenced_and_taken_by_nobody_until_resumed() {
    use annals_core::projection::Lease;
    let db = TestDatabase::new().await;
    let projections = PgProjectionStore::new(db.pool().clone());
    let name = "paused";
    assert!(!projections.pause(name).await.unwrap(), "no checkpoint yet");
    let mut owner = projections.try_acquire(name).await.unwrap().unwrap();
    assert!(owner.is_held().await);

    assert!(projections.pause(name).await.unwrap());
    assert!(!projections.pause(name).await.unwrap(), "already paused");
    let checkpoint = projections.checkpoint(name).await.unwrap().unwrap();
    assert_eq!(checkpoint.status, ProjectionStatus::Stopped);
    // the owner is fenced: its lease reads as lost, its batch cannot commit
    assert!(!owner.is_held().await);
    let mut tx = projections.begin().await.unwrap();
    let to = LogPosition::new(1, 1);
    assert!(!projections
        .advance(&mut tx, &owner, name, LogPosition::START, to, None)
        .await
        .unwrap());
    drop(tx);
    owner.release().await;
    // nobody takes it, and a reset (a rebuild) leaves it paused
    assert!(projections.try_acquire(name).await.unwrap().is_none());
    let mut tx = projections.begin().await.unwrap();
    projections.reset(&mut tx, name).await.unwrap();
    projections.commit(tx).await.unwrap();
    let checkpoint = projections.checkpoint(name).await.unwrap().unwrap();
    assert_eq!(checkpoint.status, ProjectionStatus::Stopped);

    assert!(projections.resume(name).await.unwrap());
    assert!(!projections.resume(name).await.unwrap(), "not paused");
    let lease = projections.try_acquire(name).await.unwrap().unwrap();
    let mut tx = projections.begin().await.unwrap();
    assert!(projections
        .advance(&mut tx, &lease, name, LogPosition::START, to, None)
        .await
        .unwrap());
    projections.commit(tx).await.unwrap();
    lease.release().await;
    let checkpoint = projections.checkpoint(name).await.unwrap().unwrap();
    assert_eq!(
        (checkpoint.status, checkpoint.position),
        (ProjectionStatus::Running, to)
    );
}
