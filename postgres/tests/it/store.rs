//! The Postgres event store against a real PostgreSQL (DATABASE_URL; the
//! test command `scripts/test` starts one).

use std::collections::HashSet;
use std::time::Duration;

use annals_core::testing::conformance::read_log_settled;
use annals_core::testing::events::{Created, TestEvent};
use annals_core::{
    event::DecodeError, Error, Event, EventStore, EventStoreExt, ExpectedVersion, LogPosition,
    Metadata, NewEvent,
};
use annals_postgres::testing::TestDatabase;
use annals_postgres::{migrate, migrate_down, PgEventStore};
use sqlx::Row;

fn created(name: &str) -> TestEvent {
    TestEvent::Created(Created {
        name: name.to_owned(),
        email: None,
    })
}

fn new_event(e: &TestEvent) -> NewEvent {
    NewEvent::new(
        e.event_type(),
        e.schema_version(),
        e.encode().expect("encode"),
        Metadata::new(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance() {
    conformance_with(annals_postgres::DEFAULT_MAX_BATCH).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_without_group_commit() {
    conformance_with(0).await;
}

/// The backend conformance suite on a store whose group commit takes up
/// to `max_batch` appends (0: none).
async fn conformance_with(max_batch: usize) {
    let db = TestDatabase::new().await;
    let pool = db.pool().clone();
    annals_core::testing::conformance::run(move |validate| {
        let pool = pool.clone();
        async move {
            sqlx::query("TRUNCATE annals_events")
                .execute(&pool)
                .await
                .expect("truncate between conformance checks");
            let builder = PgEventStore::builder(pool).group_commit(max_batch);
            let builder = if validate {
                builder
            } else {
                builder.without_validation()
            };
            builder.build().await.expect("build store")
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_go_up_down_and_up_again() {
    let db = TestDatabase::empty().await;
    let pool = db.pool();
    let tables = |pool: sqlx::PgPool| async move {
        let rows: Vec<String> = sqlx::query_scalar(
            "SELECT table_name::text FROM information_schema.tables
             WHERE table_schema = 'public' AND table_name LIKE 'annals\\_%' AND table_name <> 'annals_migrations'
             ORDER BY 1",
        )
        .fetch_all(&pool)
        .await
        .expect("list tables");
        rows
    };
    assert!(tables(pool.clone()).await.is_empty());
    // two processes migrating at once: both succeed, the work happens once
    let (a, b) = tokio::join!(migrate(pool), migrate(pool));
    a.expect("first concurrent migrate");
    b.expect("second concurrent migrate");
    migrate(pool).await.expect("idempotent");
    let up = tables(pool.clone()).await;
    for t in [
        "annals_events",
        "annals_event_schemas",
        "annals_snapshots",
        "annals_projection_checkpoints",
        "annals_dead_letters",
        "annals_sagas",
        "annals_saga_outbox",
    ] {
        assert!(up.iter().any(|x| x == t), "missing table {t}; have {up:?}");
    }
    let vector: Option<String> =
        sqlx::query_scalar("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
            .fetch_optional(pool)
            .await
            .expect("query extension");
    assert!(
        vector.is_none(),
        "migrate leaves pgvector to the knowledge base's own migrations"
    );
    let xid_type: String = sqlx::query_scalar(
        "SELECT data_type::text FROM information_schema.columns WHERE table_name = 'annals_events' AND column_name = 'transaction_id'",
    )
    .fetch_one(pool)
    .await
    .expect("column type");
    assert_eq!(xid_type, "xid8");

    migrate_down(pool).await.expect("down");
    assert!(
        tables(pool.clone()).await.is_empty(),
        "down removes every table"
    );
    migrate(pool).await.expect("up again");
    assert_eq!(tables(pool.clone()).await, up);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_commit_is_not_skipped() {
    let db = TestDatabase::new().await;
    let store = db.store().await;
    store.registry().register::<TestEvent>().expect("register");
    let m = Metadata::new();
    // A takes its position first but commits last
    let mut a = db.pool().begin().await.expect("begin");
    let a_result = store
        .append_in(
            &mut a,
            "a",
            ExpectedVersion::NoStream,
            vec![new_event(&created("early"))],
        )
        .await
        .expect("append in tx A");
    let b_result = store
        .append_events("b", ExpectedVersion::NoStream, &[created("late")], &m)
        .await
        .expect("append B");
    assert!(a_result.events[0].log_position.position < b_result.events[0].log_position.position);

    // while A is open, the reader sees nothing: B is above the horizon
    let seen = store.read_log(LogPosition::START, 100).await.expect("read");
    assert!(
        seen.is_empty(),
        "no event above the horizon is visible: {seen:?}"
    );
    // (other tests' transactions on the same server may hold the horizon too:
    // xids are server-wide)
    let horizon = store.horizon().await.expect("horizon");
    assert!(horizon.events_held_back >= 1, "B is held back by A");
    assert!(horizon.oldest_open_since.is_some());
    assert!(horizon.lag_seconds >= 0.0);

    a.commit().await.expect("commit A");
    let seen = read_log_settled(&store, LogPosition::START, 2).await;
    let streams: Vec<&str> = seen.iter().map(|e| e.stream_id.as_str()).collect();
    assert_eq!(streams, vec!["a", "b"], "A then B, in transaction order");

    // a rolled-back append leaves a harmless gap in positions
    let mut c = db.pool().begin().await.expect("begin");
    store
        .append_in(
            &mut c,
            "c",
            ExpectedVersion::Any,
            vec![new_event(&created("rolled back"))],
        )
        .await
        .expect("append in C");
    c.rollback().await.expect("rollback");
    store
        .append_events("d", ExpectedVersion::Any, &[created("after rollback")], &m)
        .await
        .expect("append D");
    let after = seen[seen.len() - 1].log_position;
    let rest = read_log_settled(&store, after, 1).await;
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].stream_id, "d");
    assert!(
        rest[0].log_position.position > after.position + 1,
        "a gap, skipped harmlessly"
    );
    assert_eq!(
        store.stream_version("c").await.expect("version"),
        None,
        "rollback left nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_sees_every_event_exactly_once_under_random_commit_delays() {
    const WRITERS: usize = 8;
    const PER_WRITER: usize = 25;
    let db = TestDatabase::new().await;
    let store = db.store().await;
    store.registry().register::<TestEvent>().expect("register");
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let store = store.clone();
        let pool = db.pool().clone();
        writers.push(tokio::spawn(async move {
            let mut seed = (w as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            for i in 0..PER_WRITER {
                let mut tx = pool.begin().await.expect("begin");
                store
                    .append_in(
                        &mut tx,
                        &format!("writer-{w}"),
                        ExpectedVersion::Any,
                        vec![new_event(&created(&format!("w{w}-{i}")))],
                    )
                    .await
                    .expect("append");
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                tokio::time::sleep(Duration::from_millis(seed % 15)).await;
                tx.commit().await.expect("commit");
            }
        }));
    }
    let total = WRITERS * PER_WRITER;
    let mut seen = Vec::new();
    let mut ids = HashSet::new();
    let mut after = LogPosition::START;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while seen.len() < total {
        assert!(
            tokio::time::Instant::now() < deadline,
            "reader timed out with {} of {total}",
            seen.len()
        );
        let page = store.read_log(after, 7).await.expect("read page");
        for e in &page {
            assert!(e.log_position > after, "checkpoints only move forward");
            after = e.log_position;
            assert!(ids.insert(e.event_id), "event {} seen twice", e.event_id);
        }
        seen.extend(page);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    for w in writers {
        w.await.expect("writer");
    }
    let tail = store.read_log(after, 100).await.expect("tail");
    assert!(
        tail.is_empty(),
        "nothing left after every event was seen: {}",
        tail.len()
    );
    assert_eq!(ids.len(), total, "every committed event seen exactly once");
    for w in 0..WRITERS {
        let versions: Vec<u64> = seen
            .iter()
            .filter(|e| e.stream_id == format!("writer-{w}"))
            .map(|e| e.stream_version)
            .collect();
        assert_eq!(
            versions,
            (1..=PER_WRITER as u64).collect::<Vec<_>>(),
            "per-stream order holds"
        );
    }
}

async fn insert_row(
    pool: &sqlx::PgPool,
    stream: &str,
    event_type: &str,
    version: i32,
    payload: &str,
    metadata: &str,
) -> u64 {
    let position: i64 = sqlx::query_scalar(
        "INSERT INTO annals_events (event_id, stream_id, stream_version, event_type, schema_version, payload, metadata)
         VALUES ($1, $2, 1, $3, $4, $5::jsonb, $6::jsonb) RETURNING position",
    )
    .bind(uuid::Uuid::now_v7())
    .bind(stream)
    .bind(event_type)
    .bind(version)
    .bind(payload)
    .bind(metadata)
    .fetch_one(pool)
    .await
    .expect("insert row");
    position as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_rows_are_typed_errors_and_other_streams_read_on() {
    let db = TestDatabase::new().await;
    let store = db.store().await;
    let pool = db.pool();
    store
        .append_events(
            "ok",
            ExpectedVersion::NoStream,
            &[created("fine")],
            &Metadata::new(),
        )
        .await
        .expect("append");
    // rows written behind the store's back
    let p_unknown = insert_row(pool, "unknown", "test.gone", 1, "{}", "{}").await;
    let p_new = insert_row(pool, "newer", "test.scored", 7, "{}", "{}").await;
    let p_invalid = insert_row(
        pool,
        "invalid",
        "test.scored",
        2,
        r#"{"score": "high", "confidence": 1}"#,
        "{}",
    )
    .await;
    let p_meta = insert_row(
        pool,
        "meta",
        "test.created",
        1,
        r#"{"name": "x"}"#,
        "[1, 2]",
    )
    .await;

    match store.read_stream_as::<TestEvent>("unknown", ..).await {
        Err(Error::Decode {
            position,
            source: DecodeError::UnknownEventType { .. },
            ..
        }) => assert_eq!(position, Some(p_unknown)),
        other => panic!("unknown type: {other:?}"),
    }
    match store.read_stream_as::<TestEvent>("newer", ..).await {
        Err(Error::Decode {
            position,
            source:
                DecodeError::VersionTooNew {
                    version: 7,
                    current: 3,
                    ..
                },
            ..
        }) => assert_eq!(position, Some(p_new)),
        other => panic!("newer version: {other:?}"),
    }
    match store.read_stream_as::<TestEvent>("invalid", ..).await {
        Err(Error::Decode {
            position,
            source: DecodeError::SchemaInvalid(v),
            ..
        }) => {
            assert_eq!(position, Some(p_invalid));
            assert_eq!(v.pointer(), "/score");
        }
        other => panic!("invalid payload: {other:?}"),
    }
    match store.read_stream("meta", ..).await {
        Err(Error::CorruptedRow { position, message }) => {
            assert_eq!(position, Some(p_meta));
            assert!(message.contains("metadata"), "{message}");
        }
        other => panic!("corrupted metadata: {other:?}"),
    }
    let ok = store
        .read_stream_as::<TestEvent>("ok", ..)
        .await
        .expect("other streams read on");
    assert_eq!(ok.len(), 1);
    // the error messages say what happened and what to do
    let e = store
        .read_stream_as::<TestEvent>("newer", ..)
        .await
        .expect_err("newer");
    // the message names the event; its cause (in the `Debug` report's
    // chain) says what to do
    let msg = format!("{e:?}");
    assert!(
        msg.contains(&format!("global position {p_new}")) && msg.contains("deploy"),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persisted_schema_registry_refuses_changed_schemas() {
    let db = TestDatabase::new().await;
    PgEventStore::builder(db.pool().clone())
        .register::<TestEvent>()
        .build()
        .await
        .expect("first start records schemas");
    let rows = sqlx::query("SELECT event_type, version FROM annals_event_schemas ORDER BY 1, 2")
        .fetch_all(db.pool())
        .await
        .expect("schemas");
    let keys: Vec<(String, i32)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert!(keys.contains(&("test.scored".to_owned(), 1)));
    assert!(keys.contains(&("test.scored".to_owned(), 3)));
    // a second start with the same code is fine
    PgEventStore::builder(db.pool().clone())
        .register::<TestEvent>()
        .build()
        .await
        .expect("restart");
    // someone changed the payload of test.created v1 without a version bump
    sqlx::query(
        "UPDATE annals_event_schemas SET fingerprint = 'sha256:0000' WHERE event_type = 'test.created' AND version = 1",
    )
    .execute(db.pool())
    .await
    .expect("tamper");
    let err = PgEventStore::builder(db.pool().clone())
        .register::<TestEvent>()
        .build()
        .await
        .expect_err("a changed schema refuses to start");
    match &err {
        Error::SchemaChanged(c) => {
            assert_eq!(c.changes.len(), 1);
            assert_eq!(c.changes[0].event_type, "test.created");
            assert_eq!(c.changes[0].version, 1);
        }
        other => panic!("expected SchemaChanged, got {other}"),
    }
    assert!(err.to_string().contains("bump"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_in_a_callers_transaction_is_atomic_with_it() {
    let db = TestDatabase::new().await;
    let store = db.store().await;
    store.registry().register::<TestEvent>().expect("register");
    sqlx::query("CREATE TABLE side (x int)")
        .execute(db.pool())
        .await
        .expect("side table");
    for commit in [false, true] {
        let mut tx = db.pool().begin().await.expect("begin");
        store
            .append_in(
                &mut tx,
                "t",
                ExpectedVersion::NoStream,
                vec![new_event(&created("tx"))],
            )
            .await
            .expect("append");
        sqlx::query("INSERT INTO side VALUES (1)")
            .execute(&mut *tx)
            .await
            .expect("side row");
        if commit {
            tx.commit().await.expect("commit");
        } else {
            tx.rollback().await.expect("rollback");
            assert_eq!(store.stream_version("t").await.expect("v"), None);
        }
    }
    assert_eq!(store.stream_version("t").await.expect("v"), Some(1));
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM side")
        .fetch_one(db.pool())
        .await
        .expect("count");
    assert_eq!(n, 1);

    // a conflict inside the caller's transaction is a typed error and
    // leaves that transaction usable (no statement failed)
    let mut tx = db.pool().begin().await.expect("begin");
    for expected in [ExpectedVersion::NoStream, ExpectedVersion::Exact(7)] {
        let err = store
            .append_in(
                &mut tx,
                "t",
                expected,
                vec![new_event(&created("a")), new_event(&created("b"))],
            )
            .await
            .expect_err("conflict");
        let conflict = err.as_conflict().expect("a version conflict");
        assert_eq!(conflict.actual, Some(1));
    }
    sqlx::query("INSERT INTO side VALUES (2)")
        .execute(&mut *tx)
        .await
        .expect("the transaction is still usable after a conflict");
    store
        .append_in(
            &mut tx,
            "t",
            ExpectedVersion::Exact(1),
            vec![new_event(&created("c"))],
        )
        .await
        .expect("append after the conflict");
    tx.commit().await.expect("commit");
    assert_eq!(store.stream_version("t").await.expect("v"), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_appends_keep_versions_contiguous() {
    let db = TestDatabase::new().await;
    let store = db.store().await;
    store.registry().register::<TestEvent>().expect("register");
    // `Any` appends never conflict: losers of a race retry after the winner
    let mut tasks = Vec::new();
    for w in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..10 {
                let events = (0..1 + (w + i) % 3)
                    .map(|k| new_event(&created(&format!("w{w}-{i}-{k}"))))
                    .collect();
                store
                    .append("any", ExpectedVersion::Any, events)
                    .await
                    .expect("an Any append never conflicts");
            }
        }));
    }
    // `Exact` appends racing for the same version: exactly one wins each round
    let mut exact = Vec::new();
    for _ in 0..8 {
        let store = store.clone();
        exact.push(tokio::spawn(async move {
            let mut won = 0;
            for round in 0..10u64 {
                let at = store.stream_version("exact").await.expect("version");
                let expected = ExpectedVersion::from_current(at);
                match store
                    .append(
                        "exact",
                        expected,
                        vec![
                            new_event(&created(&format!("r{round}a"))),
                            new_event(&created(&format!("r{round}b"))),
                        ],
                    )
                    .await
                {
                    Ok(_) => won += 1,
                    Err(Error::Conflict(_)) => {}
                    Err(e) => panic!("unexpected error: {e}"),
                }
            }
            won
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let mut won = 0;
    for t in exact {
        won += t.await.expect("task");
    }
    for (stream, expected_len) in [("any", None), ("exact", Some(won * 2))] {
        let events = store.read_stream(stream, ..).await.expect("read");
        let versions: Vec<u64> = events.iter().map(|e| e.stream_version).collect();
        let contiguous: Vec<u64> = (1..=events.len() as u64).collect();
        assert_eq!(versions, contiguous, "{stream}: versions have no gaps");
        if let Some(n) = expected_len {
            assert_eq!(events.len() as u64, n, "{stream}: every win, in full");
            // the two events of each win are adjacent: no batch interleaves
            assert!(n > 0, "some Exact append won");
            let name = |e: &annals_core::RecordedEvent| -> String {
                let v: serde_json::Value = serde_json::from_str(e.payload.get()).expect("json");
                v["name"].as_str().expect("a name").to_owned()
            };
            for pair in events.chunks(2) {
                let (a, b) = (name(&pair[0]), name(&pair[1]));
                let round = a
                    .strip_suffix('a')
                    .expect("a batch starts with its `a` event");
                assert_eq!(b, format!("{round}b"), "the batch's `b` event follows it");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_wake_on_append() {
    let db = TestDatabase::new().await;
    let store = db.store().await;
    let mut watcher = store.watch().await.expect("watch");
    use annals_core::store::Watch;
    woken_by_an_append(&mut watcher, &store, "w").await;
    assert!(
        !watcher.wait(Duration::from_millis(50)).await,
        "no append, the poll times out"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_event_ids_are_refused() {
    let db = TestDatabase::new().await;
    let store = db.store().await;
    store.registry().register::<TestEvent>().expect("register");
    let e = new_event(&created("once"));
    let id = e.event_id;
    store
        .append("x", ExpectedVersion::Any, vec![e.clone()])
        .await
        .expect("first");
    match store.append("y", ExpectedVersion::Any, vec![e]).await {
        Err(Error::DuplicateEventId { event_id }) => assert_eq!(event_id, id),
        other => panic!("expected DuplicateEventId, got {other:?}"),
    }
    assert_eq!(
        store.stream_version("y").await.expect("v"),
        None,
        "nothing written"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_goes_away_gives_typed_errors_and_loses_nothing() {
    let db = TestDatabase::new().await;
    let store = db.store().await;
    store.registry().register::<TestEvent>().expect("register");
    let m = Metadata::new();
    store
        .append_events("g", ExpectedVersion::NoStream, &[created("before")], &m)
        .await
        .expect("append");
    // kill every connection of the store's pool mid-flight: an open
    // transaction holding an append dies with its connection
    let mut tx = db.pool().begin().await.expect("begin");
    store
        .append_in(
            &mut tx,
            "g",
            ExpectedVersion::Exact(1),
            vec![new_event(&created("in flight"))],
        )
        .await
        .expect("append in tx");
    let killer = sqlx::PgPool::connect_with(db.connect_options())
        .await
        .expect("second pool");
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .execute(&killer)
    .await
    .expect("terminate");
    let err = tx.commit().await.expect_err("the connection is gone");
    let _ = err;
    // the pool notices the dead connections and reconnects; the failed
    // transaction left nothing, the earlier event is intact
    let mut ok = false;
    for _ in 0..20 {
        match store.stream_version("g").await {
            Ok(v) => {
                assert_eq!(v, Some(1), "the in-flight append was rolled back");
                ok = true;
                break;
            }
            Err(e) => {
                assert!(
                    matches!(e, Error::Backend { .. }),
                    "a lost connection is a typed backend error: {e}"
                );
                assert!(e.to_string().contains("retry"), "{e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    assert!(ok, "the store recovers once the database is back");
    store
        .append_events("g", ExpectedVersion::Exact(1), &[created("after")], &m)
        .await
        .expect("appends work again");

    // an unreachable server: a typed error naming what the store was doing
    let unreachable = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(Duration::from_millis(500))
        .connect_lazy_with(annals_postgres::tenancy::every_tenant(
            db.connect_options().port(1),
        ));
    let dead = PgEventStore::builder(unreachable)
        .without_validation()
        .build()
        .await
        .expect("no schemas to sync, annals' tenant setting: builds without touching the database");
    match dead.read_stream("g", ..).await {
        Err(Error::Backend { context, .. }) => assert_eq!(context, "reading a stream"),
        other => panic!("expected a backend error, got {other:?}"),
    }
}

/// A schema-violating event on the pool path: validated while the checkout
/// runs, refused before anything is sent, and the connection goes back to
/// the pool; the violation comes first even when no connection can be had.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_append_is_refused_and_its_connection_returned() {
    let db = TestDatabase::new().await;
    // one connection, and a short wait for it: a connection the refused
    // append kept would time the next append out
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(2))
        .connect_with(db.connect_options())
        .await
        .expect("one-connection pool");
    let store = PgEventStore::builder(pool.clone())
        .register::<TestEvent>()
        .build()
        .await
        .expect("store");
    let invalid = || {
        let payload = serde_json::json!({"score": 101, "confidence": 0.1, "model": "m"});
        NewEvent::new(
            "test.scored",
            3,
            serde_json::value::to_raw_value(&payload).expect("raw"),
            Metadata::new(),
        )
    };
    for _ in 0..3 {
        match store
            .append("v", ExpectedVersion::NoStream, vec![invalid()])
            .await
        {
            Err(Error::SchemaViolation(v)) => assert_eq!(v.pointer(), "/score"),
            other => panic!("expected a schema violation, got {other:?}"),
        }
    }
    assert_eq!(store.stream_version("v").await.expect("version"), None);
    let m = Metadata::new();
    let done = store
        .append_events("v", ExpectedVersion::NoStream, &[created("valid")], &m)
        .await
        .expect("the refused appends gave their connection back");
    assert_eq!(done.version, 1);
    assert_eq!(done.events[0].stream_version, 1);
    assert!(done.events[0].log_position.position > 0);

    pool.close().await;
    match store
        .append("w", ExpectedVersion::NoStream, vec![invalid()])
        .await
    {
        Err(Error::SchemaViolation(_)) => {}
        other => panic!("a violation is reported whatever the database's state: {other:?}"),
    }
    match store
        .append_events("w", ExpectedVersion::NoStream, &[created("late")], &m)
        .await
    {
        Err(Error::Backend { context, .. }) => {
            assert_eq!(context, "acquiring a connection to append")
        }
        other => panic!("expected a backend error, got {other:?}"),
    }
}

/// `connect` fails within seconds on a port nobody listens on, naming the
/// host and port and saying the connection was refused (a retryable
/// error); a URL that is not one is an invalid input; the test server's
/// URL connects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_names_where_it_failed_and_fails_fast() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        listener.local_addr().expect("its address").port()
    };
    let started = std::time::Instant::now();
    let err = annals_postgres::connect(&format!("postgres://annals@127.0.0.1:{port}/nowhere"))
        .await
        .expect_err("nobody listens there");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(6),
        "took {:?}",
        started.elapsed()
    );
    let report = format!("{err:?}");
    assert!(
        report.contains(&format!("127.0.0.1:{port}")) && report.contains("connection refused"),
        "{report}"
    );
    assert!(err.is_retryable(), "a refused connection may work later");

    let err = annals_postgres::connect("mysql://not-postgres")
        .await
        .expect_err("not a Postgres URL");
    assert!(
        matches!(&err, Error::InvalidInput(i) if i.field == "database url"),
        "{err:?}"
    );

    let pool = annals_postgres::connect(&annals_postgres::testing::database_url())
        .await
        .expect("the test server");
    let one: i32 = annals_postgres::sqlx::query_scalar("SELECT 1")
        .fetch_one(&pool)
        .await
        .expect("a query");
    assert_eq!(one, 1);
}

/// Projection names out of the limits are refused with the typed error
/// before any SQL, as the in-memory projection store refuses them (before,
/// a NUL or a 300-byte name reached Postgres; an empty one was refused
/// here only).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projection_names_out_of_the_limits_are_invalid_input() {
    use annals_core::store::limits::MAX_PROJECTION_NAME_BYTES;
    use annals_core::ProjectionStore;
    use annals_postgres::PgProjectionStore;
    let db = TestDatabase::new().await;
    let store = PgProjectionStore::new(db.pool().clone());
    let long = "p".repeat(MAX_PROJECTION_NAME_BYTES + 1);
    let huge = "p".repeat(10_000);
    for (bad, says) in [
        ("", "empty"),
        ("a\0b", "NUL"),
        (long.as_str(), "256 bytes"),
        (huge.as_str(), "10000 bytes"),
    ] {
        match store.init_checkpoint(bad).await {
            Err(Error::InvalidInput(e)) => {
                assert_eq!(e.field, "projection name");
                assert!(e.problem.contains(says), "{e}");
                assert!(
                    !e.to_string().contains("pppppppp"),
                    "the name is not echoed"
                );
            }
            other => panic!("init_checkpoint: expected InvalidInput, got {other:?}"),
        }
        assert!(matches!(
            store.try_acquire(bad).await,
            Err(Error::InvalidInput(_))
        ));
    }
    let longest = "p".repeat(MAX_PROJECTION_NAME_BYTES);
    store
        .init_checkpoint(&longest)
        .await
        .expect("the longest name is stored");
}

/// 32 tasks append to 32 streams of their own and 4 tasks to one shared
/// stream, all through the group commit, while a reader follows the log:
/// each caller gets its own results, conflicts happen only on the shared
/// stream (and only when another writer really got there first), every
/// event is in the log once, in stream order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_commit_keeps_every_callers_result_apart() {
    const OWN: usize = 32;
    const SHARED: usize = 4;
    const ROUNDS: u64 = 12;
    let db = TestDatabase::new().await;
    let store = db.store().await;
    store.registry().register::<TestEvent>().expect("register");

    let mut tasks = Vec::new();
    for t in 0..OWN {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let stream = format!("own-{t}");
            let mut version = 0;
            for round in 0..ROUNDS {
                // 1 to 3 events per append: atomic per append
                let n = 1 + (t as u64 + round) % 3;
                let events: Vec<TestEvent> = (0..n)
                    .map(|i| created(&format!("{stream}/{round}/{i}")))
                    .collect();
                let expected = if version == 0 {
                    ExpectedVersion::NoStream
                } else {
                    ExpectedVersion::Exact(version)
                };
                let done = store
                    .append_events(&stream, expected, &events, &Metadata::new())
                    .await
                    .unwrap_or_else(|e| panic!("{stream} round {round}: {e}"));
                assert_eq!(done.version, version + n, "{stream}: its own result");
                assert_eq!(done.events.len() as u64, n);
                for (i, e) in done.events.iter().enumerate() {
                    assert_eq!(e.stream_id, stream);
                    assert_eq!(e.stream_version, version + 1 + i as u64);
                }
                version = done.version;
            }
            (version, 0u64)
        }));
    }
    for t in 0..SHARED {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut written = 0;
            let mut conflicts = 0;
            while written < ROUNDS {
                let version = store.stream_version("shared").await.expect("version");
                let expected = match version {
                    None => ExpectedVersion::NoStream,
                    Some(v) => ExpectedVersion::Exact(v),
                };
                let e = created(&format!("shared/{t}/{written}"));
                match store
                    .append_events("shared", expected, &[e], &Metadata::new())
                    .await
                {
                    Ok(done) => {
                        assert_eq!(done.version, version.unwrap_or(0) + 1);
                        written += 1;
                    }
                    Err(Error::Conflict(c)) => {
                        assert_eq!(c.stream_id, "shared");
                        let actual = c.actual.expect("someone else wrote the stream");
                        assert!(actual > version.unwrap_or(0), "a real conflict: {c:?}");
                        conflicts += 1;
                    }
                    Err(e) => panic!("shared: {e}"),
                }
            }
            (written, conflicts)
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.expect("task").0;
    }
    let own_events: u64 = (0..OWN as u64)
        .map(|t| (0..ROUNDS).map(|r| 1 + (t + r) % 3).sum::<u64>())
        .sum();
    assert_eq!(total, own_events + SHARED as u64 * ROUNDS);

    // the log: every event once, each stream in order
    let log = read_log_settled(&store, LogPosition::START, 10_000).await;
    assert_eq!(log.len() as u64, total, "every event once");
    let ids: HashSet<_> = log.iter().map(|e| e.event_id).collect();
    assert_eq!(ids.len(), log.len(), "no event twice");
    let mut next = std::collections::HashMap::new();
    for e in &log {
        let want = next.entry(e.stream_id.clone()).or_insert(1u64);
        assert_eq!(e.stream_version, *want, "{} in stream order", e.stream_id);
        *want += 1;
    }
    // and the appends were grouped: one transaction holds several streams
    let mut streams_per_tx: std::collections::HashMap<u64, HashSet<&str>> = Default::default();
    for e in &log {
        streams_per_tx
            .entry(e.log_position.transaction_id)
            .or_default()
            .insert(&e.stream_id);
    }
    assert!(
        streams_per_tx.values().any(|s| s.len() > 1),
        "some group commit wrote several streams in one transaction"
    );
}

/// A duplicate event id in a group fails its own append only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_faulty_append_in_a_group_fails_alone() {
    let db = TestDatabase::new().await;
    let store = db.store().await;
    store.registry().register::<TestEvent>().expect("register");
    let taken = new_event(&created("first"));
    store
        .append("taken", ExpectedVersion::NoStream, vec![taken.clone()])
        .await
        .expect("first");
    for round in 0..5 {
        let mut tasks = Vec::new();
        for t in 0..16 {
            let store = store.clone();
            let event = if t == 7 {
                taken.clone()
            } else {
                new_event(&created("fresh"))
            };
            tasks.push(tokio::spawn(async move {
                store
                    .append(
                        &format!("g{round}-{t}"),
                        ExpectedVersion::NoStream,
                        vec![event],
                    )
                    .await
            }));
        }
        for (t, task) in tasks.into_iter().enumerate() {
            match (t, task.await.expect("task")) {
                (7, Err(Error::DuplicateEventId { event_id })) => {
                    assert_eq!(event_id, taken.event_id)
                }
                (7, other) => panic!("the duplicate: {other:?}"),
                (_, Ok(done)) => assert_eq!(done.version, 1),
                (t, Err(e)) => panic!("append {t} failed with the duplicate's group: {e}"),
            }
        }
    }
}

/// Another process' store (here: another store on the same database, which
/// shares nothing in memory) is woken by the notification sent after the
/// commit, and an `append_in` wakes readers once the caller commits and
/// calls `notify_appended`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_of_another_store_wake_after_the_commit() {
    use annals_core::store::Watch;
    let db = TestDatabase::new().await;
    let writer = db.store().await;
    let other_pool = sqlx::PgPool::connect_with(db.connect_options())
        .await
        .expect("second pool");
    let reader = PgEventStore::builder(other_pool)
        .build()
        .await
        .expect("second store");
    let mut watcher = reader.watch().await.expect("watch");
    for round in 0..3 {
        woken_by_an_append(&mut watcher, &writer, &format!("far-{round}")).await;
        // the notification may come after the local store's; settle
        while watcher.wait(Duration::from_millis(200)).await {}
    }

    // append_in: nothing wakes until the caller has committed and says so
    let mut local = writer.watch().await.expect("watch");
    let mut tx = writer.pool().begin().await.expect("begin");
    writer
        .append_in(
            &mut tx,
            "inside",
            ExpectedVersion::NoStream,
            vec![new_event(&created("inside"))],
        )
        .await
        .expect("append_in");
    assert!(
        !local.wait(Duration::from_millis(200)).await,
        "an uncommitted append_in wakes nobody"
    );
    tx.commit().await.expect("commit");
    writer.notify_appended();
    assert!(local.wait(Duration::from_secs(5)).await, "woken in process");
    assert!(
        watcher.wait(Duration::from_secs(5)).await,
        "woken in the other store"
    );
}

/// Appends one event to `stream` through `writer` a moment from now and
/// checks that `watcher` wakes for it, well before its poll timeout.
async fn woken_by_an_append(
    watcher: &mut annals_postgres::LogWatcher,
    writer: &PgEventStore,
    stream: &str,
) {
    use annals_core::store::Watch;
    let (w, stream) = (writer.clone(), stream.to_owned());
    let append = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        w.append_events(
            &stream,
            ExpectedVersion::Any,
            &[created("wake")],
            &Metadata::new(),
        )
        .await
        .expect("append");
    });
    let started = std::time::Instant::now();
    assert!(
        watcher.wait(Duration::from_secs(10)).await,
        "woken by the append, not by the poll timeout"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    append.await.expect("append task");
}
