//! Forgetting a person, end to end on a real Postgres: events, snapshots,
//! a read model kept by an application projection, a saga's data and
//! outbox command, a parked dead letter and the key table hold canaries
//! of two patients; after `forget(A)` a
//! full `pg_dump` of the database holds no canary of A, and B's data still
//! reads back through the API, from this process and from a new one (new
//! pool, stores and key cache, as after a restart).

use annals_core::personal::{LocalKeyProvider, PersonalStore, SagaEraser, SubjectForgotten};
use annals_core::testing::personal::{noted, registered, CareSaga, Patient, PatientEvent};
use annals_core::{
    dead_letter::DeadLetterQuery, dead_letter::DeadLetterStore, Envelope, HandlerError, Metadata,
    Projection, ProjectionRunner, Repository, SagaProjection,
};
use annals_postgres::testing::{database_url, TestDatabase};
use annals_postgres::{PgProjectionStore, PgSagaStore, PgSnapshotStore, PgSubjectKeys};
use sqlx::PgConnection;

const KEK: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

fn kek() -> LocalKeyProvider {
    LocalKeyProvider::from_base64("kek-1", KEK).expect("a KEK")
}

/// The events the read model follows: the patients' own, and
/// `subject.forgotten`.
#[derive(Debug, Clone, PartialEq, annals_macros::Event)]
#[event(crate = "annals_core")]
enum DirectoryEvent {
    #[event(name = "patient.registered", version = 2, history(1 = annals_core::testing::personal::RegisteredV1))]
    Registered(annals_core::testing::personal::Registered),
    #[event(name = "subject.forgotten")]
    Forgotten(SubjectForgotten),
}

#[derive(Debug, thiserror::Error)]
#[error("the directory refuses this registration")]
struct Refused;

/// A read model of patient names, in plaintext (as read models are); it
/// erases a forgotten subject's rows, and refuses (parks) registrations
/// from clinic "clinic-poison".
struct Directory;

impl Projection for Directory {
    type Event = DirectoryEvent;
    type Conn = PgConnection;

    fn name(&self) -> &str {
        "directory"
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        e: &Envelope<DirectoryEvent>,
    ) -> Result<(), HandlerError> {
        match &e.payload {
            DirectoryEvent::Registered(r) if r.clinic == "clinic-poison" => {
                Err(HandlerError::from(Refused))
            }
            DirectoryEvent::Registered(r) => {
                let name = r.name.known().cloned();
                sqlx::query(
                    "INSERT INTO directory (subject, name) VALUES ($1, $2)
                     ON CONFLICT (subject) DO UPDATE SET name = excluded.name",
                )
                .bind(&r.patient_id)
                .bind(name)
                .execute(&mut *conn)
                .await
                .map_err(HandlerError::dependency)?;
                Ok(())
            }
            DirectoryEvent::Forgotten(f) => {
                sqlx::query("DELETE FROM directory WHERE subject = $1")
                    .bind(&f.subject)
                    .execute(&mut *conn)
                    .await
                    .map_err(HandlerError::dependency)?;
                Ok(())
            }
        }
    }
}

/// `pg_dump` of the whole test database, as text.
fn pg_dump(db: &TestDatabase) -> String {
    let url = database_url();
    let base = url.rsplit_once('/').map_or(url.as_str(), |(b, _)| b);
    let out = std::process::Command::new("pg_dump")
        .arg("--no-owner")
        .arg(format!("--dbname={base}/{}", db.name()))
        .output()
        .expect("pg_dump runs (it comes with the PostgreSQL client: scripts/provision)");
    assert!(
        out.status.success(),
        "pg_dump failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn canaries(patient: &str) -> Vec<String> {
    vec![
        format!("canary-name-{patient}"),
        format!("canary-phone-{patient}"),
        format!("canary-{patient}@example.com"),
        format!("canary-note-1-{patient}"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forget_leaves_no_plaintext_in_a_full_dump() {
    let db = TestDatabase::new().await;
    sqlx::query("CREATE TABLE directory (subject text PRIMARY KEY, name text)")
        .execute(db.pool())
        .await
        .expect("read model table");
    let inner = db.store().await;
    let store = PersonalStore::new(inner.clone(), PgSubjectKeys::new(db.pool().clone(), kek()));
    let repo = Repository::<Patient, _>::new(store.clone())
        .with_snapshots(store.snapshots(PgSnapshotStore::new(&inner)))
        .inline_snapshots();
    for patient in ["a", "b"] {
        let subject = format!("patient-{patient}");
        for command in [registered(&subject), noted(&subject, 1)] {
            repo.execute(patient, &command, &Metadata::new())
                .await
                .expect("a command");
        }
    }
    // a registration the read model refuses: parked, for patient A
    let mut poison = registered("patient-a");
    if let PatientEvent::Registered(r) = &mut poison {
        r.clinic = "clinic-poison".into();
    }
    repo.execute("a", &poison, &Metadata::new())
        .await
        .expect("the poison command");
    let projections = PgProjectionStore::new(db.pool().clone());
    let runner = ProjectionRunner::new(
        store.clone(),
        projections.clone(),
        std::sync::Arc::new(Directory),
    );
    runner.catch_up().await.expect("catch up");
    // a saga per patient copies the name into its data and its command
    let sagas = PgSagaStore::new(db.pool().clone());
    ProjectionRunner::new(
        store.clone(),
        projections.clone(),
        std::sync::Arc::new(SagaProjection::<CareSaga, _>::new(sagas.clone())),
    )
    .catch_up()
    .await
    .expect("the care sagas start");
    let eraser = ProjectionRunner::new(
        store.clone(),
        projections.clone(),
        std::sync::Arc::new(SagaEraser::new(sagas)),
    );
    let parked = projections
        .list_dead_letters(&DeadLetterQuery::pending("directory"))
        .await
        .expect("dead letters");
    assert_eq!(parked.len(), 1, "the poison registration is parked");
    let before = pg_dump(&db);
    for canary in canaries("patient-a") {
        // sealed in events and snapshots; in the read model, the saga's
        // data and its command the name is plaintext, as read models are
        assert_eq!(
            before.matches(&canary).count(),
            if canary.starts_with("canary-name") {
                3
            } else {
                0
            },
            "{canary} before forget"
        );
    }

    store.forget("patient-a").await.expect("forget");
    runner.catch_up().await.expect("catch up the forget");
    eraser.catch_up().await.expect("the sagas forget");

    let dump = pg_dump(&db);
    for canary in canaries("patient-a") {
        assert!(
            !dump.contains(&canary),
            "{canary} is in the dump after forget"
        );
    }
    for canary in canaries("patient-b") {
        assert!(
            !dump.contains(&canary) || canary.starts_with("canary-name"),
            "{canary} stays sealed"
        );
    }
    // B reads back through the API, here and from a new process
    let fresh_pool = sqlx::PgPool::connect_with(db.connect_options())
        .await
        .expect("a new pool");
    let fresh_inner = annals_postgres::PgEventStore::builder(fresh_pool.clone())
        .build()
        .await
        .expect("a new store");
    let fresh = PersonalStore::new(fresh_inner.clone(), PgSubjectKeys::new(fresh_pool, kek()));
    let fresh_repo = Repository::<Patient, _>::new(fresh.clone())
        .with_snapshots(fresh.snapshots(PgSnapshotStore::new(&fresh_inner)));
    for r in [&repo, &fresh_repo] {
        let b = r.load("b").await.expect("load b");
        assert_eq!(
            b.state.name.and_then(|n| n.known().cloned()).as_deref(),
            Some("canary-name-patient-b")
        );
        let a = r.load("a").await.expect("a forgotten patient still loads");
        assert!(a.state.name.is_some_and(|n| n.is_forgotten()));
        assert!(a.state.notes.iter().all(|n| n.is_forgotten()));
    }
    let names = || async {
        sqlx::query_as::<_, (String, Option<String>)>(
            "SELECT subject, name FROM directory ORDER BY subject",
        )
        .fetch_all(db.pool())
        .await
        .expect("the read model")
    };
    let expected = [(
        "patient-b".to_owned(),
        Some("canary-name-patient-b".to_owned()),
    )];
    assert_eq!(
        names().await,
        expected,
        "the read model erased A and kept B"
    );
    // a rebuild after the forget reads A's events as forgotten and erases
    // A again at `subject.forgotten`: no canary comes back
    runner.rebuild().await.expect("rebuild after forget");
    assert_eq!(names().await, expected, "the rebuilt read model");
    let dump = pg_dump(&db);
    for canary in canaries("patient-a") {
        assert!(!dump.contains(&canary), "{canary} is back after a rebuild");
    }
}
