//! End-to-end tests of `clinic admin ...`: the real clinic binary, run as
//! an operator runs it, against a fresh Postgres database per test
//! (`DATABASE_URL`, from `scripts/with-services` or `scripts/test`; without
//! it the tests fail and say so). Each checks the output (table and
//! `--json`), the exit code and the effect in the database.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use annals::postgres::sqlx;
use annals::postgres::testing::{database_url, TestDatabase};
use annals::postgres::{PgEventStore, PgProjectionStore};
use annals::projection::{ProjectionError, ProjectionStatus};
use annals::{
    dead_letter::DeadLetterStatus, dead_letter::DeadLetterStore, EventStore, EventStoreExt,
    ExpectedVersion, Metadata, NewEvent, ProjectionRunner, ProjectionStore,
};
use serde_json::Value;

use super::admin::{LeadDirectory, LEAD_DIRECTORY};
use super::{LeadCreated, LeadEvent, LeadScored};

/// The clinic binary (`cargo build --example clinic`), built once per test
/// run into the target directory this test binary runs from.
fn clinic() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let exe = std::env::current_exe().expect("the test binary's path");
        // <target>/<profile>/examples/clinic-<hash>
        let examples = exe.parent().expect("the examples directory");
        let profile = examples.parent().expect("the profile directory");
        let target = profile.parent().expect("the target directory");
        let mut build = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        build
            .args([
                "build",
                "--quiet",
                "-p",
                "annals-examples",
                "--example",
                "clinic",
            ])
            .arg("--target-dir")
            .arg(target)
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        if profile.file_name().is_some_and(|p| p == "release") {
            build.arg("--release");
        }
        let status = build
            .status()
            .expect("running cargo build --example clinic");
        assert!(status.success(), "cargo build --example clinic failed");
        examples.join(format!("clinic{}", std::env::consts::EXE_SUFFIX))
    })
}

/// The URL of the test database `name` on the `DATABASE_URL` server.
fn url_of(name: &str) -> String {
    let url = database_url();
    let (scheme, rest) = url.split_once("://").expect("DATABASE_URL has a scheme");
    let (rest, query) = match rest.split_once('?') {
        Some((rest, query)) => (rest, format!("?{query}")),
        None => (rest, String::new()),
    };
    let host = rest.split_once('/').map_or(rest, |(host, _)| host);
    format!("{scheme}://{host}/{name}{query}")
}

/// What one run of the binary did.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}\nstderr: {}", self.stdout, self.stderr))
    }

    fn expect(self, code: i32) -> Self {
        assert_eq!(
            self.code, code,
            "exit code\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }
}

fn output(out: Output) -> Run {
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `clinic admin ARGS` on the database `db` (run on a blocking thread, so
/// the test's runtime keeps going).
async fn admin(db: &TestDatabase, args: &[&str]) -> Run {
    let mut command = Command::new(clinic());
    command
        .arg("admin")
        .args(args)
        .env("DATABASE_URL", url_of(db.name()))
        .stdin(Stdio::null());
    let out = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("the blocking task")
        .expect("running the clinic binary");
    output(out)
}

async fn store(db: &TestDatabase) -> PgEventStore {
    PgEventStore::builder(db.pool().clone())
        .register::<LeadEvent>()
        .build()
        .await
        .expect("an event store")
}

fn created(name: &str, treatment: &str) -> LeadEvent {
    LeadEvent::Created(LeadCreated {
        name: name.into(),
        treatment: treatment.into(),
    })
}

async fn append(store: &PgEventStore, stream: &str, events: &[LeadEvent]) {
    store
        .append_events(stream, ExpectedVersion::Any, events, &Metadata::new())
        .await
        .expect("an append");
}

async fn directory_has(db: &TestDatabase, lead: &str) -> bool {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM clinic_lead_directory WHERE lead_id = $1)")
        .bind(lead)
        .fetch_one(db.pool())
        .await
        .expect("reading the directory")
}

fn projection<'a>(list: &'a Value, name: &str) -> &'a Value {
    list.as_array()
        .and_then(|l| l.iter().find(|p| p["name"] == name))
        .unwrap_or_else(|| panic!("no projection {name} in {list}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuild_park_replay_and_status() {
    let db = TestDatabase::new().await;
    let store = store(&db).await;
    append(
        &store,
        "lead-ana",
        &[
            created("Ana", "implant"),
            LeadEvent::Scored(LeadScored {
                score: 80,
                confidence: 0.9,
            }),
        ],
    )
    .await;
    // the clinic does not offer veneers (yet): the directory's foreign key refuses the lead
    append(&store, "lead-bo", &[created("Bo", "veneers")]).await;

    let run = admin(&db, &["projections", "rebuild", "lead_directory"])
        .await
        .expect(0);
    assert!(
        run.stdout.contains("3 event(s) read, 2 applied, 1 parked"),
        "{}",
        run.stdout
    );
    let projections = PgProjectionStore::new(db.pool().clone());
    let checkpoint = projections
        .checkpoint(LEAD_DIRECTORY)
        .await
        .expect("a checkpoint")
        .expect("the rebuilt projection's checkpoint");
    let end = store
        .log_end()
        .await
        .expect("the log's end")
        .expect("events");
    assert_eq!(checkpoint.position, end, "the rebuild read the whole log");
    assert!(directory_has(&db, "ana").await);
    assert!(!directory_has(&db, "bo").await);

    // status: the table, then JSON with the numbers
    let run = admin(&db, &["status"]).await.expect(0);
    assert!(run.stdout.contains("PROJECTION"), "{}", run.stdout);
    assert!(run.stdout.contains("lead_directory"), "{}", run.stdout);
    assert!(
        run.stdout.contains("dead letters pending: 1"),
        "{}",
        run.stdout
    );
    let status = admin(&db, &["status", "--json"]).await.expect(0).json();
    let directory = projection(&status["projections"], LEAD_DIRECTORY);
    assert_eq!(directory["dead_letters_pending"], 1);
    assert_eq!(directory["events_behind"], 0);
    assert_eq!(directory["status"], "running");
    assert_eq!(directory["paused"], false);
    assert_eq!(status["dead_letters_pending"], 1);
    assert!(status["horizon"]["xmin"].is_u64());

    // the parked event
    let letters = admin(&db, &["dead-letters", "list", "--json"])
        .await
        .expect(0)
        .json();
    let letters = letters.as_array().expect("a list");
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0]["handler"], LEAD_DIRECTORY);
    assert_eq!(letters[0]["stream_id"], "lead-bo");
    let id = letters[0]["id"].as_u64().expect("an id");
    let table = admin(&db, &["dead-letters", "list"]).await.expect(0);
    assert!(table.stdout.contains("lead-bo"), "{}", table.stdout);
    let shown = admin(&db, &["dead-letters", "show", &id.to_string()])
        .await
        .expect(0);
    assert!(shown.stdout.contains("veneers"), "{}", shown.stdout);
    assert!(shown.stdout.contains("foreign key"), "{}", shown.stdout);

    // replayed before the fix: fails again, stays parked
    let run = admin(&db, &["dead-letters", "replay", &id.to_string()])
        .await
        .expect(1);
    assert!(run.stderr.contains("failed again"), "{}", run.stderr);
    let letter = projections
        .dead_letter(id)
        .await
        .expect("a read")
        .expect("the entry");
    assert_eq!(letter.status, DeadLetterStatus::Pending);
    assert_eq!(letter.attempts, 3);

    // the fix (the clinic offers veneers now), then the replay
    sqlx::query("INSERT INTO clinic_treatments (name) VALUES ('veneers')")
        .execute(db.pool())
        .await
        .expect("adding a treatment");
    let run = admin(&db, &["dead-letters", "replay", &id.to_string(), "--json"])
        .await
        .expect(0);
    assert_eq!(run.json()["outcome"], "resolved");
    let letter = projections
        .dead_letter(id)
        .await
        .expect("a read")
        .expect("the entry");
    assert_eq!(letter.status, DeadLetterStatus::Resolved);
    assert!(directory_has(&db, "bo").await);
    let pending = admin(&db, &["dead-letters", "list", "--json"])
        .await
        .expect(0)
        .json();
    assert_eq!(
        pending,
        serde_json::json!([]),
        "the replayed entry is gone from the pending list"
    );
    // a second replay has nothing to do
    admin(&db, &["dead-letters", "replay", &id.to_string()])
        .await
        .expect(1);

    // errors: not found (3), usage (2)
    let run = admin(&db, &["projections", "rebuild", "nope"])
        .await
        .expect(3);
    assert!(
        run.stderr.contains("lead_directory"),
        "names the registered ones: {}",
        run.stderr
    );
    admin(&db, &["dead-letters", "show", "999999"])
        .await
        .expect(3);
    admin(&db, &["dead-letters", "discard", "1"])
        .await
        .expect(2);
    admin(&db, &["no-such-command"]).await.expect(2);
    admin(&db, &["--help"]).await.expect(0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_stops_a_live_runner_until_resumed() {
    let db = TestDatabase::new().await;
    let store = store(&db).await;
    append(&store, "lead-ana", &[created("Ana", "implant")]).await;
    admin(&db, &["projections", "list"]).await.expect(0); // creates the clinic's tables
    let projections = PgProjectionStore::new(db.pool().clone());
    let runner = ProjectionRunner::new(store.clone(), projections.clone(), Arc::new(LeadDirectory))
        .poll_interval(Duration::from_millis(50))
        .takeover_interval(Duration::from_millis(50))
        .lease_check_interval(Duration::from_millis(50));
    let live = runner.clone().spawn();
    wait_for(
        || directory_has(&db, "ana"),
        "the live runner applies the first lead",
    )
    .await;

    let run = admin(&db, &["projections", "pause", LEAD_DIRECTORY])
        .await
        .expect(0);
    assert!(run.stdout.contains("paused"), "{}", run.stdout);
    let checkpoint = projections
        .checkpoint(LEAD_DIRECTORY)
        .await
        .expect("a read")
        .expect("a checkpoint");
    assert_eq!(checkpoint.status, ProjectionStatus::Stopped);
    let list = admin(&db, &["projections", "list", "--json"])
        .await
        .expect(0)
        .json();
    assert_eq!(projection(&list, LEAD_DIRECTORY)["paused"], true);
    let table = admin(&db, &["status"]).await;
    assert!(table.stdout.contains("paused"), "{}", table.stdout);
    // pausing twice is fine; a paused projection is not rebuilt
    let again = admin(&db, &["projections", "pause", LEAD_DIRECTORY, "--json"])
        .await
        .expect(0);
    assert_eq!(again.json()["changed"], false);
    let run = admin(&db, &["projections", "rebuild", LEAD_DIRECTORY])
        .await
        .expect(1);
    assert!(run.stderr.contains("paused"), "{}", run.stderr);

    // paused: nothing is applied, by the live runner or any other
    append(&store, "lead-cy", &[created("Cy", "cleaning")]).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        !directory_has(&db, "cy").await,
        "a paused projection applied an event"
    );
    assert!(matches!(
        runner.catch_up().await,
        Err(ProjectionError::NotOwner { .. })
    ));

    admin(&db, &["projections", "resume", LEAD_DIRECTORY])
        .await
        .expect(0);
    // the live runner owns it again: a rebuild from here says so
    wait_for(
        || async { runner.catch_up().await.is_err() },
        "the live runner takes the projection",
    )
    .await;
    let run = admin(&db, &["projections", "rebuild", LEAD_DIRECTORY])
        .await
        .expect(1);
    assert!(run.stderr.contains("stop its runners"), "{}", run.stderr);
    wait_for(
        || directory_has(&db, "cy"),
        "the live runner takes the resumed projection again",
    )
    .await;
    let checkpoint = projections
        .checkpoint(LEAD_DIRECTORY)
        .await
        .expect("a read")
        .expect("a checkpoint");
    assert_eq!(checkpoint.status, ProjectionStatus::Running);
    live.stop().await.expect("the runner stops");
}

async fn wait_for<F, Fut>(mut check: F, what: &str)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "timed out: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_are_decoded_and_upcast() {
    let db = TestDatabase::new().await;
    let store = store(&db).await;
    append(&store, "lead-ana", &[created("Ana", "implant")]).await;
    // a version-1 `lead.scored`, as last year's code stored it
    let v1 = serde_json::value::to_raw_value(&serde_json::json!({ "score": 70 })).expect("JSON");
    store
        .append(
            "lead-ana",
            ExpectedVersion::Any,
            vec![NewEvent::new("lead.scored", 1, v1, Metadata::new())],
        )
        .await
        .expect("an append");

    let run = admin(&db, &["streams", "read", "lead-ana"]).await.expect(0);
    let lines: Vec<Value> = run
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert_eq!(lines.len(), 2, "{}", run.stdout);
    assert_eq!(lines[0]["event_type"], "lead.created");
    assert_eq!(lines[0]["payload"]["name"], "Ana");
    assert_eq!(lines[1]["schema_version"], 1, "the stored version");
    assert_eq!(lines[1]["decoded"], true);
    assert_eq!(
        lines[1]["payload"]["confidence"], 0.5,
        "upcast to version 2"
    );
    let run = admin(
        &db,
        &["streams", "read", "lead-ana", "--from", "2", "--json"],
    )
    .await
    .expect(0);
    assert_eq!(run.stdout.lines().count(), 1);
    admin(&db, &["streams", "read", "lead-nobody"])
        .await
        .expect(3);

    // tail: the last event, then one appended while it waits
    let mut tail = Command::new(clinic());
    tail.args([
        "admin",
        "streams",
        "tail",
        "lead-ana",
        "--last",
        "1",
        "--max-events",
        "2",
        "--interval-ms",
        "50",
    ])
    .env("DATABASE_URL", url_of(db.name()))
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit());
    let mut child = tail.spawn().expect("starting tail");
    let stdout = child.stdout.take().expect("tail's stdout");
    // the first line says tail has printed the existing event and waits
    let first = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::task::spawn_blocking(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            reader.read_line(&mut line).map(|_| (reader, line))
        }),
    )
    .await;
    let Ok(Ok(Ok((mut reader, first)))) = first else {
        let _ = child.kill();
        panic!("tail printed nothing within 60 s");
    };
    append(&store, "lead-ana", &[created("Ana B.", "implant")]).await;
    let rest = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::task::spawn_blocking(move || {
            let mut rest = String::new();
            reader.read_to_string(&mut rest).map(|_| rest)
        }),
    )
    .await;
    let Ok(Ok(Ok(rest))) = rest else {
        let _ = child.kill();
        panic!("tail did not print the appended event within 60 s");
    };
    let status = child.wait().expect("tail's exit");
    assert_eq!(status.code(), Some(0));
    let run = format!("{first}{rest}");
    let lines: Vec<Value> = run
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON"))
        .collect();
    assert_eq!(lines.len(), 2, "{run}");
    assert_eq!(lines[0]["stream_version"], 2);
    assert_eq!(lines[1]["payload"]["name"], "Ana B.");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemas_and_migrations() {
    let db = TestDatabase::new().await;
    let _store = store(&db).await; // records LeadEvent's schemas
    let run = admin(&db, &["schemas", "check"]).await.expect(0);
    assert!(run.stdout.starts_with("ok"), "{}", run.stdout);
    let list = admin(&db, &["schemas", "list", "--json"])
        .await
        .expect(0)
        .json();
    let created = list
        .as_array()
        .and_then(|l| l.iter().find(|s| s["event_type"] == "lead.created"))
        .expect("lead.created is listed");
    assert_eq!(created["state"], "matches");

    // a schema changed without a version bump (as a deployment would see it)
    sqlx::query("UPDATE annals_event_schemas SET fingerprint = 'sha256:recorded-elsewhere' WHERE event_type = 'lead.created'")
        .execute(db.pool())
        .await
        .expect("an update");
    let run = admin(&db, &["schemas", "check"]).await.expect(4);
    assert!(run.stdout.contains("lead.created v1"), "{}", run.stdout);
    let changed = admin(&db, &["schemas", "check", "--json"])
        .await
        .expect(4)
        .json();
    assert_eq!(changed.as_array().map(Vec::len), Some(1));

    // migrations: all applied on a migrated database
    let run = admin(&db, &["migrate", "status", "--json"]).await.expect(0);
    let migrations = run.json();
    assert!(migrations
        .as_array()
        .is_some_and(|m| !m.is_empty() && m.iter().all(|m| !m["applied_at"].is_null())));
    admin(&db, &["migrate", "down"]).await.expect(2);

    // and on an empty one: pending (exit 4), then applied
    let empty = TestDatabase::empty().await;
    let run = admin(&empty, &["migrate", "status"]).await.expect(4);
    assert!(run.stdout.contains("pending"), "{}", run.stdout);
    admin(&empty, &["migrate", "up"]).await.expect(0);
    admin(&empty, &["migrate", "status"]).await.expect(0);
    let tables: bool = sqlx::query_scalar("SELECT to_regclass('annals_events') IS NOT NULL")
        .fetch_one(empty.pool())
        .await
        .expect("a query");
    assert!(tables);
    admin(&empty, &["migrate", "down", "--yes"]).await.expect(0);
    admin(&empty, &["migrate", "status"]).await.expect(4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sagas_in_flight_are_listed_shown_and_retried() {
    let db = TestDatabase::new().await;
    // the booking saga's events are the clinic's own (private) types: the
    // test writes their JSON, without the store's schema validation
    let store = PgEventStore::builder(db.pool().clone())
        .without_validation()
        .build()
        .await
        .expect("an event store");
    // the front desk asks for an appointment; no saga worker runs, so the
    // saga waits with its first command in the outbox
    let lead = uuid::Uuid::now_v7();
    let payload =
        serde_json::value::to_raw_value(&serde_json::json!({ "lead_id": lead, "name": "Ana" }))
            .expect("JSON");
    store
        .append(
            &format!("booking-{lead}"),
            ExpectedVersion::Any,
            vec![NewEvent::new(
                "booking.appointment_requested",
                1,
                payload,
                Metadata::new(),
            )],
        )
        .await
        .expect("an append");
    let run = admin(&db, &["projections", "rebuild", "saga:appointment_booking"])
        .await
        .expect(0);
    assert!(run.stdout.contains("1 applied"), "{}", run.stdout);

    let sagas = admin(&db, &["sagas", "list", "--json"])
        .await
        .expect(0)
        .json();
    let sagas = sagas.as_array().expect("a list");
    assert_eq!(sagas.len(), 1, "{sagas:?}");
    assert_eq!(sagas[0]["correlation_id"], lead.to_string());
    let id = sagas[0]["saga_id"].as_str().expect("an id").to_owned();
    let table = admin(&db, &["sagas", "list"]).await.expect(0);
    assert!(table.stdout.contains(&id), "{}", table.stdout);
    let shown = admin(&db, &["sagas", "show", &id]).await.expect(0);
    assert!(shown.stdout.contains("ReserveSlot"), "{}", shown.stdout);
    assert!(shown.stdout.contains("waiting"), "{}", shown.stdout);
    let status = admin(&db, &["status"]).await;
    assert!(
        status.stdout.contains("sagas in flight: 1"),
        "{}",
        status.stdout
    );

    // a command waiting for a retry far ahead is made due now
    sqlx::query("UPDATE annals_saga_outbox SET next_attempt_at = now() + interval '1 hour'")
        .execute(db.pool())
        .await
        .expect("an update");
    let run = admin(&db, &["sagas", "retry", &id, "--json"])
        .await
        .expect(0);
    assert_eq!(run.json()["commands_rescheduled"], 1);
    let due: bool =
        sqlx::query_scalar("SELECT bool_and(next_attempt_at <= now()) FROM annals_saga_outbox")
            .fetch_one(db.pool())
            .await
            .expect("a query");
    assert!(due, "the command is due now");
    admin(&db, &["sagas", "show", &uuid::Uuid::now_v7().to_string()])
        .await
        .expect(3);
    admin(&db, &["sagas", "show", "not-a-uuid"]).await.expect(2);
}

/// The admin's runners read through the clinic's `PersonalStore`: a
/// rebuild opens the sealed names, and after a forget reads them as
/// forgotten (NULL in the directory), never as undecodable events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_opens_sealed_names_and_reads_forgotten_ones() {
    let db = TestDatabase::new().await;
    let keys =
        annals::postgres::PgSubjectKeys::new(db.pool().clone(), super::kek().expect("the KEK"));
    let personal = annals::personal::PersonalStore::new(store(&db).await, keys);
    for (lead, name) in [("ana", "Ana Sealed"), ("bo", "Bo Sealed")] {
        personal
            .append_events(
                &format!("lead-{lead}"),
                ExpectedVersion::NoStream,
                &[created(name, "implant")],
                &Metadata::new(),
            )
            .await
            .expect("a sealed append");
    }
    let names = || async {
        sqlx::query_as::<_, (String, Option<String>)>(
            "SELECT lead_id, name FROM clinic_lead_directory ORDER BY lead_id",
        )
        .fetch_all(db.pool())
        .await
        .expect("reading the directory")
    };
    let run = admin(&db, &["projections", "rebuild", "lead_directory"])
        .await
        .expect(0);
    assert!(run.stdout.contains("2 applied, 0 parked"), "{}", run.stdout);
    assert_eq!(
        names().await,
        [
            ("ana".to_owned(), Some("Ana Sealed".to_owned())),
            ("bo".to_owned(), Some("Bo Sealed".to_owned()))
        ]
    );

    personal.forget("lead-ana").await.expect("forget");
    let run = admin(&db, &["projections", "rebuild", "lead_directory"])
        .await
        .expect(0);
    assert!(run.stdout.contains("0 parked"), "{}", run.stdout);
    assert_eq!(
        names().await,
        [
            ("ana".to_owned(), None),
            ("bo".to_owned(), Some("Bo Sealed".to_owned()))
        ]
    );
}
