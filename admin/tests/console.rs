//! The admin commands in process (`Admin::execute`), on a fresh Postgres
//! database per test (`DATABASE_URL` from `scripts/with-services` or
//! `scripts/test`; without it the tests fail and say so). The clinic
//! example's tests run the same commands through a real binary.

use std::sync::Arc;
use std::time::Duration;

use annals::admin::clap::Parser;
use annals::admin::{Admin, AdminArgs, AdminError, Exit};
use annals::dead_letter::{DeadLetterStatus, DeadLetterStore};
use annals::postgres::sqlx::PgConnection;
use annals::postgres::testing::TestDatabase;
use annals::postgres::{PgEventStore, PgProjectionStore};
use annals::ProjectionStore as _;
use annals::{
    Envelope, EventStoreExt, ExpectedVersion, HandlerError, Metadata, Projection, ProjectionRunner,
    RetryPolicy,
};
use serde_json::Value;

#[derive(Debug, Clone, PartialEq, annals::Event)]
enum NoteEvent {
    Written(String),
}

/// Refuses notes that say "poison" (in this test's world: forever).
struct Notes;

impl Projection for Notes {
    type Event = NoteEvent;
    type Conn = PgConnection;

    fn name(&self) -> &str {
        "notes"
    }

    async fn apply(
        &self,
        _: &mut PgConnection,
        e: &Envelope<NoteEvent>,
    ) -> Result<(), HandlerError> {
        let NoteEvent::Written(text) = &e.payload;
        if text == "poison" {
            return Err(HandlerError::event(std::io::Error::other("a poison note")));
        }
        Ok(())
    }
}

async fn setup() -> (TestDatabase, Admin, PgEventStore) {
    let db = TestDatabase::new().await;
    let store = PgEventStore::builder(db.pool().clone())
        .register::<NoteEvent>()
        .build()
        .await
        .expect("an event store");
    let runner = ProjectionRunner::new(
        store.clone(),
        PgProjectionStore::new(db.pool().clone()),
        Arc::new(Notes),
    )
    .retry(RetryPolicy::new(1).initial_delay(Duration::from_millis(1)));
    let admin = Admin::builder(store.clone())
        .projection(runner)
        .events::<NoteEvent>()
        .build();
    (db, admin, store)
}

/// Runs `args` in process; returns the exit code (or error) and stdout.
async fn execute(admin: &Admin, args: &[&str]) -> (Result<Exit, AdminError>, String) {
    let args = AdminArgs::try_parse_from(std::iter::once("admin").chain(args.iter().copied()))
        .expect("valid arguments");
    let mut stdout = Vec::new();
    let result = admin.execute(&args, &mut stdout).await;
    (result, String::from_utf8_lossy(&stdout).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discard_and_replay_a_handlers_dead_letters() {
    let (db, admin, store) = setup().await;
    let notes = [
        NoteEvent::Written("poison".into()),
        NoteEvent::Written("fine".into()),
    ];
    store
        .append_events("note-1", ExpectedVersion::Any, &notes, &Metadata::new())
        .await
        .expect("an append");
    store
        .append_events(
            "note-2",
            ExpectedVersion::Any,
            &notes[..1],
            &Metadata::new(),
        )
        .await
        .expect("an append");
    let (result, out) = execute(&admin, &["projections", "rebuild", "notes", "--json"]).await;
    assert_eq!(result.expect("a rebuild"), Exit::Ok);
    let rebuilt: Value = serde_json::from_str(&out).expect("JSON");
    // note-1's second event is parked behind its first, to keep stream order
    assert_eq!(rebuilt["events_parked"], 3, "{out}");

    let projections = PgProjectionStore::new(db.pool().clone());
    let pending = projections
        .list_dead_letters(&annals::dead_letter::DeadLetterQuery::pending("notes"))
        .await
        .expect("a list");
    assert_eq!(pending.len(), 3);
    let note_2 = pending
        .iter()
        .find(|l| l.stream_id == "note-2")
        .expect("note-2's entry");

    // discard one, with a reason
    let (result, out) = execute(
        &admin,
        &[
            "dead-letters",
            "discard",
            &note_2.id.to_string(),
            "--reason",
            "a test note",
        ],
    )
    .await;
    assert_eq!(result.expect("a discard"), Exit::Ok, "{out}");
    let letter = projections
        .dead_letter(note_2.id)
        .await
        .expect("a read")
        .expect("the entry");
    assert_eq!(letter.status, DeadLetterStatus::Discarded);
    assert_eq!(letter.discard_reason.as_deref(), Some("a test note"));
    // not twice
    let (result, _) = execute(
        &admin,
        &[
            "dead-letters",
            "discard",
            &note_2.id.to_string(),
            "--reason",
            "again",
        ],
    )
    .await;
    let error = result.expect_err("a second discard");
    assert!(matches!(error, AdminError::NotPending { .. }), "{error}");
    assert_eq!(error.exit(), Exit::Failed);
    // an empty reason is refused, naming the field
    let (result, _) = execute(&admin, &["dead-letters", "discard", "1", "--reason", ""]).await;
    let error = result.expect_err("an empty reason");
    assert_eq!(error.exit(), Exit::Usage, "{error}");

    // replay the handler's: the poison fails again, the one behind it is skipped
    let (result, out) = execute(
        &admin,
        &["dead-letters", "replay", "--handler", "notes", "--json"],
    )
    .await;
    assert_eq!(result.expect("a replay"), Exit::Failed);
    let summary: Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(
        (
            summary["resolved"].as_u64(),
            summary["failed"].as_u64(),
            summary["skipped"].as_u64()
        ),
        (Some(0), Some(1), Some(1)),
        "{out}"
    );
    assert_eq!(
        projections
            .pending_dead_letters("notes")
            .await
            .expect("a count"),
        2
    );

    // an unknown handler is not found
    let (result, _) = execute(&admin, &["dead-letters", "replay", "--handler", "nobody"]).await;
    assert_eq!(result.expect_err("unknown").exit(), Exit::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_errors_exit_2_and_help_exits_0() {
    let (_db, admin, _) = setup().await;
    assert_eq!(admin.run_from(["no-such-command"]).await, Exit::Usage);
    assert_eq!(
        admin.run_from(["dead-letters", "replay"]).await,
        Exit::Usage
    );
    assert_eq!(
        admin
            .run_from(["dead-letters", "replay", "1", "--handler", "x"])
            .await,
        Exit::Usage
    );
    assert_eq!(
        admin.run_from(["sagas", "show", "not-a-uuid"]).await,
        Exit::Usage
    );
    assert_eq!(admin.run_from(["--help"]).await, Exit::Ok);
    assert_eq!(admin.run_from(["status"]).await, Exit::Ok);
    assert_eq!(
        admin.run_from(["projections", "pause", "nobody"]).await,
        Exit::NotFound
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_exits_4_when_a_projection_is_stale() {
    let (db, _, store) = setup().await;
    let admin = Admin::builder(store.clone())
        .projection(ProjectionRunner::new(
            store.clone(),
            PgProjectionStore::new(db.pool().clone()),
            Arc::new(Notes),
        ))
        .stale_after(Duration::from_millis(1))
        .build();
    let (result, out) = execute(&admin, &["status", "--json"]).await;
    assert_eq!(
        result.expect("a status"),
        Exit::Ok,
        "nothing to be behind on: {out}"
    );
    store
        .append_events(
            "note-1",
            ExpectedVersion::Any,
            &[NoteEvent::Written("hi".into())],
            &Metadata::new(),
        )
        .await
        .expect("an append");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (result, out) = execute(&admin, &["status", "--json"]).await;
    assert_eq!(result.expect("a status"), Exit::Unhealthy, "{out}");
    let status: Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(status["healthy"], false);
    assert_eq!(status["projections"][0]["stale"], true);
    assert_eq!(status["projections"][0]["events_behind"], 1);
    let (result, out) = execute(&admin, &["status"]).await;
    assert_eq!(result.expect("a status"), Exit::Unhealthy);
    assert!(out.contains("stale: projection `notes` is"), "{out}");
}

/// `--tenant` runs a command on one tenant's rows: its projections, dead
/// letters and streams; another tenant's dead letter cannot be discarded
/// through it, and a rebuild of one tenant leaves the other's rows as
/// they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_picks_the_rows_a_command_works_on() {
    let db = TestDatabase::new().await;
    let store = PgEventStore::builder(db.pool().clone())
        .register::<NoteEvent>()
        .build()
        .await
        .expect("an event store");
    let mut builder = Admin::builder(store.clone()).events::<NoteEvent>();
    for tenant in ["clinic-a", "clinic-b"] {
        let scoped = store.tenant(tenant).expect("a tenant");
        scoped
            .append_events(
                "note-1",
                ExpectedVersion::NoStream,
                &[NoteEvent::Written("poison".into())],
                &Metadata::new(),
            )
            .await
            .expect("an append");
        let runner = ProjectionRunner::new(
            scoped,
            PgProjectionStore::new(db.pool().clone()),
            Arc::new(Notes),
        )
        .retry(RetryPolicy::new(1).initial_delay(Duration::from_millis(1)));
        runner.catch_up().await.expect("a catch-up");
        builder = builder.projection(runner);
    }
    let admin = builder.build();
    let b_rows = || async {
        annals::postgres::sqlx::query_scalar::<_, String>(
            "SELECT string_agg(t::text, '|' ORDER BY t::text) FROM (
                 SELECT to_jsonb(d) - 'tenant_id' AS t FROM annals_dead_letters d WHERE tenant_id = 'clinic-b'
                 UNION ALL
                 SELECT to_jsonb(c) - 'tenant_id' FROM annals_projection_checkpoints c WHERE tenant_id = 'clinic-b') x",
        )
        .fetch_one(db.pool())
        .await
        .expect("b's rows")
    };
    let before = b_rows().await;

    // the default tenant has no registered runner and no dead letter
    let (result, _) = execute(&admin, &["projections", "rebuild", "notes"]).await;
    assert!(
        matches!(result, Err(AdminError::UnknownProjection { .. })),
        "{result:?}"
    );
    let (_, out) = execute(&admin, &["dead-letters", "list", "--json"]).await;
    assert_eq!(
        serde_json::from_str::<Value>(&out).expect("JSON"),
        Value::Array(vec![]),
        "the default tenant has no dead letter: {out}"
    );

    let b_letter = PgProjectionStore::new(db.pool().clone())
        .in_tenant(annals::TenantId::new("clinic-b").expect("a tenant"))
        .list_dead_letters(&annals::dead_letter::DeadLetterQuery::pending("notes"))
        .await
        .expect("b's letters")
        .remove(0)
        .id
        .to_string();
    let (result, _) = execute(
        &admin,
        &[
            "dead-letters",
            "discard",
            &b_letter,
            "--reason",
            "x",
            "--tenant",
            "clinic-a",
        ],
    )
    .await;
    assert!(
        matches!(result, Err(AdminError::DeadLetterNotFound { .. })),
        "a's admin does not find b's dead letter: {result:?}"
    );
    let (result, out) = execute(
        &admin,
        &[
            "projections",
            "rebuild",
            "notes",
            "--tenant",
            "clinic-a",
            "--json",
        ],
    )
    .await;
    assert_eq!(result.expect("a's rebuild"), Exit::Ok, "{out}");
    let (_, out) = execute(
        &admin,
        &[
            "streams", "read", "note-1", "--tenant", "clinic-b", "--json",
        ],
    )
    .await;
    assert!(out.contains("poison"), "b's stream, read as b: {out}");
    let (result, _) = execute(&admin, &["status", "--tenant", "clinic 1"]).await;
    assert!(
        matches!(&result, Err(AdminError::Store(annals::Error::InvalidInput(e))) if e.field == "tenant"),
        "{result:?}"
    );
    assert_eq!(b_rows().await, before, "b's rows are as they were");
}
