//! Aggregates, the repository and snapshots, on the in-memory backend and on
//! Postgres (DATABASE_URL; `scripts/test` starts a server).

use annals::postgres::testing::TestDatabase;
use annals::postgres::{PgEventStore, PgSnapshotStore};
use annals::{
    snapshot::Snapshot, testing::given, Aggregate, AggregateState, CommandError, EventStore,
    EventStoreExt as _, InMemoryEventStore, InMemorySnapshotStore, Metadata, Repository,
    SnapshotStore,
};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
struct Created {
    name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
struct Scored {
    score: u8,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
struct Qualified {
    reason: String,
}

#[derive(Debug, Clone, PartialEq, annals::Event)]
enum LeadEvent {
    Created(Created),
    Scored(Scored),
    Qualified(Qualified),
    Noted(String),
}

#[derive(
    Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema, annals::Aggregate,
)]
#[aggregate(event = LeadEvent, snapshot_every = 5)]
struct Lead {
    name: Option<String>,
    scores: Vec<u8>,
    qualified: bool,
    notes: u32,
}

#[derive(Debug, Clone)]
enum LeadCommand {
    Create(String),
    Score(u8),
    Qualify(String),
    Note(String),
}

#[derive(Debug, PartialEq, thiserror::Error)]
enum LeadError {
    #[error("the lead does not exist")]
    Missing,
    #[error("the lead already exists")]
    Exists,
    #[error("a lead needs a score of 50 or more to qualify, it has {0}")]
    ScoreTooLow(u8),
}

impl Aggregate for Lead {
    type Command = LeadCommand;
    type Error = LeadError;

    fn handle(&self, command: &LeadCommand) -> Result<Vec<LeadEvent>, LeadError> {
        match command {
            LeadCommand::Create(name) => match self.name {
                Some(_) => Err(LeadError::Exists),
                None => Ok(vec![LeadEvent::Created(Created { name: name.clone() })]),
            },
            _ if self.name.is_none() => Err(LeadError::Missing),
            LeadCommand::Score(score) => Ok(vec![LeadEvent::Scored(Scored { score: *score })]),
            LeadCommand::Qualify(reason) => {
                let best = self.scores.iter().copied().max().unwrap_or(0);
                if self.qualified {
                    Ok(vec![])
                } else if best < 50 {
                    Err(LeadError::ScoreTooLow(best))
                } else {
                    Ok(vec![LeadEvent::Qualified(Qualified {
                        reason: reason.clone(),
                    })])
                }
            }
            LeadCommand::Note(text) => Ok(vec![LeadEvent::Noted(text.clone())]),
        }
    }

    fn apply(&mut self, event: &LeadEvent) {
        match event {
            LeadEvent::Created(c) => self.name = Some(c.name.clone()),
            LeadEvent::Scored(s) => self.scores.push(s.score),
            LeadEvent::Qualified(_) => self.qualified = true,
            LeadEvent::Noted(_) => self.notes += 1,
        }
    }
}

/// A Postgres event store on `pool` that knows `LeadEvent`.
async fn lead_store(pool: &annals::postgres::sqlx::PgPool) -> PgEventStore {
    PgEventStore::builder(pool.clone())
        .register::<LeadEvent>()
        .build()
        .await
        .expect("store")
}

#[test]
fn derive_supplies_name_policy_and_codec() {
    assert_eq!(Lead::TYPE, "lead");
    assert_eq!(Lead::SNAPSHOT_EVERY, Some(5));
    assert_eq!(Lead::CODEC_VERSION, 1);
    assert!(Lead::state_fingerprint().starts_with("sha256:"));
    assert_eq!(Lead::stream_id("42"), "lead-42");
}

#[test]
fn given_when_then() {
    let created = LeadEvent::Created(Created { name: "Ana".into() });
    given::<Lead>([])
        .when(LeadCommand::Create("Ana".into()))
        .then_expect([created.clone()]);
    given::<Lead>([created.clone()])
        .when(LeadCommand::Create("Ana".into()))
        .then_error(LeadError::Exists);
    given::<Lead>([created.clone(), LeadEvent::Scored(Scored { score: 30 })])
        .when(LeadCommand::Qualify("budget".into()))
        .then_error(LeadError::ScoreTooLow(30));
    let state = given::<Lead>([created, LeadEvent::Scored(Scored { score: 70 })])
        .when(LeadCommand::Qualify("budget".into()))
        .then_expect([LeadEvent::Qualified(Qualified {
            reason: "budget".into(),
        })]);
    assert!(state.qualified);
    given::<Lead>([])
        .when(LeadCommand::Score(1))
        .then_error_matches(|e| matches!(e, LeadError::Missing));
}

fn arb_commands() -> impl Strategy<Value = Vec<LeadCommand>> {
    prop::collection::vec(
        prop_oneof![
            any::<u8>().prop_map(LeadCommand::Score),
            "[a-z]{0,8}".prop_map(LeadCommand::Note),
            "[a-z]{1,8}".prop_map(LeadCommand::Qualify),
        ],
        0..40,
    )
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Runs `commands` on aggregate `id` through a repository with snapshots
/// every `every` events, then checks that its load equals a full replay (and
/// the states the commands returned along the way).
async fn snapshot_loads_equal_replays<S: EventStore + Clone, N: SnapshotStore<S>>(
    store: S,
    snapshots: N,
    id: &str,
    commands: &[LeadCommand],
    every: u64,
) -> Result<(), TestCaseError> {
    let with = Repository::of::<Lead>(store.clone())
        .with_snapshots(snapshots)
        .snapshot_every(Some(every))
        .inline_snapshots();
    let without = Repository::<Lead, _>::new(store);
    let m = Metadata::new();
    with.execute(id, &LeadCommand::Create("P".into()), &m)
        .await
        .expect("create");
    let mut expected = given::<Lead>([LeadEvent::Created(Created { name: "P".into() })])
        .state()
        .clone();
    for c in commands {
        match with.execute(id, c, &m).await {
            Ok(done) => {
                for e in &done.events {
                    expected.apply(&e.payload);
                }
                prop_assert_eq!(&done.state, &expected);
            }
            Err(CommandError::Rejected(_)) => {}
            Err(e) => panic!("unexpected: {e}"),
        }
    }
    let a = with.load(id).await.expect("load with snapshots");
    let b = without.load(id).await.expect("load without");
    prop_assert_eq!(&a.state, &b.state);
    prop_assert_eq!(&a.state, &expected);
    prop_assert_eq!(a.version, b.version);
    prop_assert!(!a.snapshot_invalidated);
    prop_assert!(
        a.events_replayed < every,
        "at most every-1 events after the snapshot"
    );
    if b.version >= every {
        prop_assert!(
            a.snapshot_version.is_some(),
            "a snapshot was written and used"
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn load_with_and_without_snapshots_is_identical(commands in arb_commands(), every in 1u64..7) {
        runtime().block_on(snapshot_loads_equal_replays(
            InMemoryEventStore::new(),
            InMemorySnapshotStore::new(),
            "p",
            &commands,
            every,
        ))?;
    }
}

/// The same property on Postgres, where a repository with a
/// `PgSnapshotStore` beside the `PgEventStore` loads the snapshot and the
/// events after it in one statement: its loads equal full replays. Every
/// other case runs on a fresh store that registered no types, so its first
/// loads meet schema keys it does not know yet and go on with the full
/// read (after the snapshot row, in the one-statement load) before it
/// learns them.
#[test]
fn postgres_load_with_and_without_snapshots_is_identical() {
    use proptest::test_runner::{Config, TestRunner};
    use std::sync::atomic::{AtomicUsize, Ordering};

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let db = rt.block_on(TestDatabase::new());
    let store = rt.block_on(lead_store(db.pool()));
    let snapshots = PgSnapshotStore::new(&store);
    let case = AtomicUsize::new(0);
    let mut runner = TestRunner::new(Config::with_cases(24));
    runner
        .run(&(arb_commands(), 1u64..7), |(commands, every)| {
            let n = case.fetch_add(1, Ordering::Relaxed);
            let id = format!("p{n}");
            let store = if n % 2 == 0 {
                store.clone()
            } else {
                rt.block_on(PgEventStore::builder(db.pool().clone()).build())
                    .expect("a store without types")
            };
            rt.block_on(snapshot_loads_equal_replays(
                store,
                snapshots.clone(),
                &id,
                &commands,
                every,
            ))
        })
        .unwrap_or_else(|e| panic!("{e}"));
}

async fn outdated_and_corrupted_snapshots_are_ignored<
    S: EventStore + Clone,
    N: SnapshotStore<S>,
>(
    store: S,
    snapshots: N,
    put: impl Fn(Snapshot) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
) {
    let repo = Repository::of::<Lead>(store)
        .with_snapshots(snapshots.clone())
        .inline_snapshots();
    let m = Metadata::new();
    repo.execute("s", &LeadCommand::Create("S".into()), &m)
        .await
        .expect("create");
    for i in 0..11 {
        repo.execute("s", &LeadCommand::Score(i), &m)
            .await
            .expect("score");
    }
    let fresh = repo.load("s").await.expect("load");
    assert_eq!(fresh.snapshot_version, Some(10));
    assert_eq!(fresh.events_replayed, 2);
    let truth = fresh.state.clone();

    let bad = |state: &str, fingerprint: &str, codec: u32| Snapshot {
        aggregate_type: "lead".into(),
        aggregate_id: "lead-s".into(),
        version: 12,
        state: serde_json::value::RawValue::from_string(state.to_owned()).expect("raw"),
        fingerprint: fingerprint.to_owned(),
        codec_version: codec,
    };
    // written by an older shape of the state: a different fingerprint
    put(bad(
        r#"{"name": "S", "score_total": 55}"#,
        "sha256:older-shape",
        1,
    ))
    .await;
    let loaded = repo.load("s").await.expect("load ignores the old shape");
    assert!(loaded.snapshot_invalidated);
    assert_eq!(loaded.snapshot_version, None);
    assert_eq!(loaded.events_replayed, 12, "replayed in full");
    assert_eq!(loaded.state, truth, "never a wrong state");
    // the next command writes a fresh snapshot of the current shape
    repo.execute("s", &LeadCommand::Note("n".into()), &m)
        .await
        .expect("note");
    let replaced = snapshots
        .load(&annals::TenantId::default(), "lead", "lead-s")
        .await
        .expect("load snapshot")
        .expect("a snapshot");
    assert_eq!(replaced.fingerprint, Lead::state_fingerprint());
    assert_eq!(replaced.version, 13);
    assert_eq!(
        repo.load("s").await.expect("load").snapshot_version,
        Some(13)
    );

    // a corrupted row with the right fingerprint: does not decode, ignored
    put(bad(r#"{"name": 17}"#, Lead::state_fingerprint(), 1)).await;
    let loaded = repo
        .load("s")
        .await
        .expect("load ignores the corrupted snapshot");
    assert!(loaded.snapshot_invalidated);
    assert_eq!(loaded.events_replayed, 13);
    assert_eq!(loaded.state.notes, 1);
    // another codec version: ignored too
    put(bad(
        &serde_json::to_string(&loaded.state).expect("json"),
        Lead::state_fingerprint(),
        7,
    ))
    .await;
    assert!(repo.load("s").await.expect("load").snapshot_invalidated);
}

/// A snapshot whose version lies beyond the end of its stream (a cut
/// stream, an old backup, a hand-written row) is ignored like an unusable
/// one: the stream is replayed, and commands go on (trusting it made every
/// later command a conflict). A snapshot exactly at the stream's end is
/// still used.
async fn snapshots_beyond_the_stream_are_ignored<S: EventStore + Clone, N: SnapshotStore<S>>(
    store: S,
    snapshots: N,
    put: impl Fn(Snapshot) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
) {
    let repo = Repository::of::<Lead>(store)
        .with_snapshots(snapshots.clone())
        .inline_snapshots()
        .max_retries(2);
    let m = Metadata::new();
    repo.execute("b", &LeadCommand::Create("B".into()), &m)
        .await
        .expect("create");
    for i in 0..6 {
        repo.execute("b", &LeadCommand::Score(i), &m)
            .await
            .expect("score");
    }
    let fresh = repo.load("b").await.expect("load");
    assert_eq!((fresh.version, fresh.snapshot_version), (7, Some(5)));
    let truth = fresh.state.clone();
    let at = |version: u64| Snapshot {
        aggregate_type: "lead".into(),
        aggregate_id: "lead-b".into(),
        version,
        state: serde_json::value::to_raw_value(&truth).expect("raw"),
        fingerprint: Lead::state_fingerprint().to_owned(),
        codec_version: Lead::CODEC_VERSION,
    };
    // exactly at the end of the stream: used, nothing replayed
    put(at(7)).await;
    let loaded = repo.load("b").await.expect("load at the end");
    assert_eq!(loaded.snapshot_version, Some(7));
    assert_eq!(loaded.events_replayed, 0);
    assert!(!loaded.snapshot_invalidated);
    // beyond it: ignored, the stream replayed in full
    put(at(20)).await;
    let loaded = repo.load("b").await.expect("load ignores it");
    assert!(
        loaded.snapshot_invalidated,
        "a snapshot beyond the stream is unusable"
    );
    assert_eq!(loaded.snapshot_version, None);
    assert_eq!(loaded.version, 7, "the version is the stream's");
    assert_eq!(loaded.events_replayed, 7, "replayed in full");
    assert_eq!(loaded.state, truth);
    // and commands go on instead of conflicting forever
    let done = repo
        .execute("b", &LeadCommand::Note("n".into()), &m)
        .await
        .expect("a command after a snapshot beyond the stream succeeds");
    assert_eq!((done.version, done.attempts), (8, 1));
    // the fresh snapshot replaces the one beyond the stream (a save alone
    // keeps the higher version), so loads start from it again
    let stored = snapshots
        .load(&annals::TenantId::default(), "lead", "lead-b")
        .await
        .expect("load snapshot")
        .expect("a snapshot");
    assert_eq!(stored.version, 8);
    let loaded = repo.load("b").await.expect("load");
    assert_eq!(loaded.snapshot_version, Some(8));
    assert!(!loaded.snapshot_invalidated);
    assert_eq!(loaded.state, done.state);
}

/// A snapshot state with a NUL in a string, or nested too deeply, is
/// refused the same way by every snapshot store: a typed error naming the
/// field, before any SQL; nothing is stored.
async fn hostile_snapshot_states_are_refused<S: EventStore, N: SnapshotStore<S>>(snapshots: N) {
    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    for (case, state) in [("NUL", r#"{"name":"a\u0000b"}"#.to_owned()), ("deep", deep)] {
        let snapshot = Snapshot {
            aggregate_type: "lead".into(),
            aggregate_id: "lead-hostile".into(),
            version: 1,
            state: serde_json::value::RawValue::from_string(state).expect("valid JSON"),
            fingerprint: Lead::state_fingerprint().to_owned(),
            codec_version: Lead::CODEC_VERSION,
        };
        for replace in [false, true] {
            let result = if replace {
                snapshots
                    .replace(&annals::TenantId::default(), snapshot.clone())
                    .await
            } else {
                snapshots
                    .save(&annals::TenantId::default(), snapshot.clone())
                    .await
            };
            match result {
                Err(annals::Error::InvalidInput(i)) => {
                    assert_eq!(i.field, "snapshot state", "{case}")
                }
                other => panic!("{case}: expected InvalidInput, got {other:?}"),
            }
        }
    }
    assert!(snapshots
        .load(&annals::TenantId::default(), "lead", "lead-hostile")
        .await
        .expect("load")
        .is_none());
}

#[tokio::test]
async fn in_memory_hostile_snapshot_states_are_refused() {
    hostile_snapshot_states_are_refused::<InMemoryEventStore, _>(InMemorySnapshotStore::new())
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_hostile_snapshot_states_are_refused() {
    let db = TestDatabase::new().await;
    let store = lead_store(db.pool()).await;
    hostile_snapshot_states_are_refused(PgSnapshotStore::new(&store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_memory_snapshots_beyond_the_stream_are_ignored() {
    let snapshots = InMemorySnapshotStore::new();
    let s2 = snapshots.clone();
    snapshots_beyond_the_stream_are_ignored(InMemoryEventStore::new(), snapshots, move |s| {
        s2.put(s);
        Box::pin(async {})
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_snapshots_beyond_the_stream_are_ignored() {
    let db = TestDatabase::new().await;
    let store = lead_store(db.pool()).await;
    let pool = db.pool().clone();
    let snapshots = PgSnapshotStore::new(&store);
    snapshots_beyond_the_stream_are_ignored(store, snapshots, move |s| {
        let pool = pool.clone();
        Box::pin(async move {
            sqlx_put(&pool, s).await;
        })
    })
    .await;
}

async fn concurrent_commands_all_succeed<S: EventStore + Clone + 'static>(store: S) {
    let repo = Repository::<Lead, _>::new(store).max_retries(100);
    let m = Metadata::new();
    repo.execute("hot", &LeadCommand::Create("H".into()), &m)
        .await
        .expect("create");
    let mut tasks = Vec::new();
    for t in 0..8 {
        let repo = repo.clone();
        tasks.push(tokio::spawn(async move {
            let mut retries = 0;
            for i in 0..10 {
                let done = repo
                    .execute(
                        "hot",
                        &LeadCommand::Note(format!("{t}-{i}")),
                        &Metadata::new(),
                    )
                    .await
                    .expect("every command succeeds through retries");
                retries += done.attempts - 1;
            }
            retries
        }));
    }
    let mut retries = 0;
    for t in tasks {
        retries += t.await.expect("task");
    }
    let loaded = repo.load("hot").await.expect("load");
    assert_eq!(loaded.state.notes, 80, "every command applied exactly once");
    assert_eq!(loaded.version, 81);
    eprintln!("8 tasks x 10 commands on one aggregate: {retries} retries");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_memory_snapshots_self_invalidate() {
    let snapshots = InMemorySnapshotStore::new();
    let s2 = snapshots.clone();
    outdated_and_corrupted_snapshots_are_ignored(InMemoryEventStore::new(), snapshots, move |s| {
        s2.put(s);
        Box::pin(async {})
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_memory_concurrent_commands() {
    concurrent_commands_all_succeed(InMemoryEventStore::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_snapshots_self_invalidate() {
    let db = TestDatabase::new().await;
    let store = lead_store(db.pool()).await;
    let pool = db.pool().clone();
    let snapshots = PgSnapshotStore::new(&store);
    outdated_and_corrupted_snapshots_are_ignored(store, snapshots, move |s| {
        let pool = pool.clone();
        Box::pin(async move {
            sqlx_put(&pool, s).await;
        })
    })
    .await;
}

/// Overwrites a snapshot row unconditionally, as a corrupting writer would.
async fn sqlx_put(pool: &annals::postgres::sqlx::PgPool, s: Snapshot) {
    annals::postgres::sqlx::query(
        "UPDATE annals_snapshots SET state = $3::jsonb, fingerprint = $4, codec_version = $5, version = $6
         WHERE aggregate_type = $1 AND aggregate_id = $2",
    )
    .bind(&s.aggregate_type)
    .bind(&s.aggregate_id)
    .bind(s.state.get())
    .bind(&s.fingerprint)
    .bind(s.codec_version as i32)
    .bind(s.version as i64)
    .execute(pool)
    .await
    .expect("overwrite snapshot");
}

/// The lean reads do not fetch global positions; their errors still name
/// the failing event's, on every path: the one-statement snapshot load, a
/// load without snapshots, and `read_stream_payloads_as`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_load_errors_name_the_events_position() {
    use annals::postgres::sqlx;
    use annals::{event::DecodeError, Error, EventStoreExt};
    let db = TestDatabase::new().await;
    let store = lead_store(db.pool()).await;
    let with_snapshots = Repository::of::<Lead>(store.clone())
        .with_snapshots(PgSnapshotStore::new(&store))
        .inline_snapshots();
    let without = Repository::<Lead, _>::new(store.clone());
    let m = Metadata::new();
    with_snapshots
        .execute("b", &LeadCommand::Create("B".into()), &m)
        .await
        .expect("create");
    for i in 0..6 {
        with_snapshots
            .execute("b", &LeadCommand::Score(i), &m)
            .await
            .expect("score");
    }
    let loaded = with_snapshots.load("b").await.expect("load");
    assert_eq!(
        (loaded.snapshot_version, loaded.events_replayed),
        (Some(5), 2),
        "the load goes through a snapshot"
    );
    // a row written behind the store's back, after the snapshot: version 8,
    // a type this code does not know
    let position: i64 = sqlx::query_scalar(
        "INSERT INTO annals_events (event_id, stream_id, stream_version, event_type, schema_version, payload)
         VALUES ($1, 'lead-b', 8, 'lead.gone', 1, '{}') RETURNING position",
    )
    .bind(uuid::Uuid::now_v7())
    .fetch_one(db.pool())
    .await
    .expect("insert a row");
    let position = position as u64;
    let results = |_: ()| async {
        [
            ("with snapshots", with_snapshots.load("b").await.map(|_| ())),
            ("without snapshots", without.load("b").await.map(|_| ())),
            (
                "read_stream_events",
                store
                    .read_stream_payloads_as::<LeadEvent>("lead-b", ..)
                    .await
                    .map(|_| ()),
            ),
        ]
    };
    for (path, result) in results(()).await {
        match result {
            Err(Error::Decode {
                position: p,
                stream_id,
                stream_version: 8,
                source: DecodeError::UnknownEventType { .. },
            }) => assert_eq!(
                (p, stream_id.as_str()),
                (Some(position), "lead-b"),
                "{path}"
            ),
            other => panic!("{path}: expected an unknown-type error, got {other:?}"),
        }
    }
    // a corrupted row (a negative schema version) is a typed error naming it
    sqlx::query(
        "UPDATE annals_events SET event_type = 'lead.scored', schema_version = -1 WHERE position = $1",
    )
    .bind(position as i64)
    .execute(db.pool())
    .await
    .expect("corrupt the row");
    for (path, result) in results(()).await {
        match result {
            Err(Error::CorruptedRow {
                position: p,
                message,
            }) => {
                assert_eq!(p, Some(position), "{path}");
                assert!(
                    message.contains("negative schema version"),
                    "{path}: {message}"
                );
            }
            other => panic!("{path}: expected a corrupted-row error, got {other:?}"),
        }
    }
}

/// The error path's position lookup needs a connection while the fold's
/// own may still be mid-result: with a pool of one connection it must not
/// wait for itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_fold_errors_are_located_with_a_one_connection_pool() {
    use annals::postgres::sqlx;
    use annals::{event::DecodeError, Error, EventStoreExt, ExpectedVersion};
    let db = TestDatabase::new().await;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(std::time::Duration::from_secs(5))
        .connect_with(db.connect_options())
        .await
        .expect("a one-connection pool");
    let store = lead_store(&pool).await;
    // enough rows that the bad one is far from the end of the result
    let notes: Vec<LeadEvent> = (0..3000)
        .map(|i| LeadEvent::Noted(format!("note {i}")))
        .collect();
    store
        .append_events(
            "lead-one",
            ExpectedVersion::NoStream,
            &notes,
            &Metadata::new(),
        )
        .await
        .expect("append");
    let position: i64 = sqlx::query_scalar(
        "UPDATE annals_events SET event_type = 'lead.gone' WHERE stream_id = 'lead-one' AND stream_version = 10 RETURNING position",
    )
    .fetch_one(&pool)
    .await
    .expect("break one row");
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        store.read_stream_payloads_as::<LeadEvent>("lead-one", ..),
    )
    .await
    .expect("the read returns (it does not wait for its own connection)");
    match read {
        Err(Error::Decode {
            position: p,
            stream_version: 10,
            source: DecodeError::UnknownEventType { .. },
            ..
        }) => assert_eq!(p, Some(position as u64)),
        other => panic!("expected an unknown-type error at version 10, got {other:?}"),
    }
    // the connection is usable afterwards
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM annals_events")
        .fetch_one(&pool)
        .await
        .expect("the pool's connection still works");
    assert_eq!(n, 3000);
}

/// A command without snapshots is one `fold_and_append`: its load and its
/// append share one pool checkout (a checkout pings the connection, and so
/// does its return), counted by the pool's `before_acquire` hook.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_commands_check_out_one_connection_each() {
    use annals::postgres::sqlx;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let db = TestDatabase::new().await;
    let checkouts = Arc::new(AtomicUsize::new(0));
    let counter = checkouts.clone();
    let pool = sqlx::postgres::PgPoolOptions::new()
        // one connection: every checkout after the first takes the idle
        // one (a second connection, which the hook would not see, cannot
        // be opened while the last one is still being returned)
        .max_connections(1)
        .acquire_timeout(std::time::Duration::from_secs(5))
        .before_acquire(move |_, _| {
            let counter = counter.clone();
            Box::pin(async move {
                counter.fetch_add(1, Ordering::SeqCst);
                Ok(true)
            })
        })
        .connect_with(db.connect_options())
        .await
        .expect("a counted pool");
    let count = || checkouts.load(Ordering::SeqCst);

    let repo = Repository::<Lead, _>::new(lead_store(&pool).await);
    assert_eq!(
        ten_scores(&repo, "one", count).await,
        10,
        "one checkout per command (load and append on one connection)"
    );
    let loaded = repo.load("one").await.expect("load");
    assert_eq!(loaded.version, 11);
    assert_eq!(loaded.state.scores.len(), 10);

    // with a PgSnapshotStore on the same database: one checkout per command
    // too (snapshot, events and append), plus one per snapshot written
    // (inline here, every 5 events: at versions 5 and 10)
    let store = lead_store(&pool).await;
    let snapshots = PgSnapshotStore::new(&store);
    let repo = Repository::of::<Lead>(store)
        .with_snapshots(snapshots)
        .inline_snapshots();
    assert_eq!(
        ten_scores(&repo, "two", count).await,
        12,
        "one checkout per command and one per snapshot"
    );
    let loaded = repo.load("two").await.expect("load");
    assert_eq!((loaded.version, loaded.snapshot_version), (11, Some(10)));
    assert_eq!(loaded.state.scores.len(), 10);
}

/// Creates lead `id`, then scores it ten times; returns how many checkouts
/// (`count` before and after) the ten scores took.
async fn ten_scores<N: SnapshotStore<PgEventStore>>(
    repo: &Repository<Lead, PgEventStore, N>,
    id: &str,
    count: impl Fn() -> usize,
) -> usize {
    let m = Metadata::new();
    repo.execute(id, &LeadCommand::Create(id.into()), &m)
        .await
        .expect("create");
    let before = count();
    for score in 1..=10 {
        let done = repo
            .execute(id, &LeadCommand::Score(score), &m)
            .await
            .expect("score");
        assert_eq!(done.version, u64::from(score) + 1);
    }
    count() - before
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_concurrent_commands() {
    let db = TestDatabase::new().await;
    concurrent_commands_all_succeed(db.store().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_metadata_flows_into_events() {
    let repo = Repository::<Lead, _>::new(InMemoryEventStore::new());
    let correlation = uuid::Uuid::now_v7();
    let m = Metadata::new()
        .with_correlation_id(correlation)
        .with_user("dr-popescu");
    let done = repo
        .execute("m", &LeadCommand::Create("M".into()), &m)
        .await
        .expect("create");
    assert_eq!(done.events[0].metadata.correlation_id, Some(correlation));
    assert_eq!(done.events[0].metadata.user.as_deref(), Some("dr-popescu"));
    assert_eq!(done.events[0].stream_id, "lead-m");
    match repo
        .execute("m", &LeadCommand::Create("M".into()), &m)
        .await
    {
        Err(CommandError::Rejected(LeadError::Exists)) => {}
        other => panic!("expected a rejection, got {other:?}"),
    }
    let done = repo
        .execute("m", &LeadCommand::Qualify("x".into()), &m)
        .await;
    assert!(matches!(
        done,
        Err(CommandError::Rejected(LeadError::ScoreTooLow(0)))
    ));
}

/// Snapshots belong to the tenant of the repository's store: the same
/// aggregate id in two tenants has two snapshots, and each tenant loads
/// from its own (and never from the other's, which is at another version).
async fn snapshots_are_kept_per_tenant<S, N>(store: S, snapshots: N)
where
    S: EventStore + Clone,
    N: SnapshotStore<S>,
{
    for (tenant, notes) in [("clinic-a", 3u64), ("clinic-b", 5)] {
        let scoped = store.tenant(tenant).expect("tenant");
        let repo = Repository::<Lead, _>::new(scoped)
            .with_snapshots(snapshots.clone())
            .snapshot_every(Some(1))
            .inline_snapshots();
        repo.execute(
            "same",
            &LeadCommand::Create(tenant.to_owned()),
            &Metadata::new(),
        )
        .await
        .expect("create");
        for i in 0..notes {
            repo.execute("same", &LeadCommand::Note(i.to_string()), &Metadata::new())
                .await
                .expect("note");
        }
    }
    for (tenant, version) in [("clinic-a", 4), ("clinic-b", 6)] {
        let scoped = store.tenant(tenant).expect("tenant");
        let stored = snapshots
            .load(scoped.tenant_id(), "lead", "lead-same")
            .await
            .expect("load the snapshot")
            .expect("a snapshot");
        assert_eq!(stored.version, version, "{tenant}'s own snapshot");
        let loaded = Repository::<Lead, _>::new(scoped)
            .with_snapshots(snapshots.clone())
            .snapshot_every(Some(1))
            .load("same")
            .await
            .expect("load");
        assert_eq!(loaded.version, version);
        assert_eq!(
            loaded.snapshot_version,
            Some(version),
            "{tenant} loads from its snapshot"
        );
        assert_eq!(loaded.state.name.as_deref(), Some(tenant));
    }
    assert!(
        snapshots
            .load(store.tenant_id(), "lead", "lead-same")
            .await
            .expect("load")
            .is_none(),
        "the default tenant has no snapshot of lead-same"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_memory_snapshots_are_kept_per_tenant() {
    snapshots_are_kept_per_tenant(InMemoryEventStore::new(), InMemorySnapshotStore::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_snapshots_are_kept_per_tenant() {
    let db = TestDatabase::new().await;
    let store = lead_store(db.pool()).await;
    let snapshots = PgSnapshotStore::new(&store);
    snapshots_are_kept_per_tenant(store, snapshots).await;
}
