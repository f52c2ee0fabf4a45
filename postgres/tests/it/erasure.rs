//! Forgetting a person, end to end on a real Postgres: events, snapshots,
//! a read model kept by an application projection, a saga's data and
//! outbox command, a parked dead letter and the key table hold canaries
//! of two patients; after `forget(A)` a
//! full `pg_dump` of the database holds no canary of A, and B's data still
//! reads back through the API, from this process and from a new one (new
//! pool, stores and key cache, as after a restart). With the `knowledge`
//! feature, the same for the knowledge base on pgvector, fed by its
//! projection.

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

/// The knowledge base on pgvector, fed by its projection from personal
/// documents sealed in the log: after `forget(A)` and the projection's
/// catch-up, a full `pg_dump` holds no canary of A (rows, events), no row
/// holds A's vectors, the embedding cache none of A's texts, and B's
/// documents still read back through search; a rebuild of the projection
/// does not bring A back.
#[cfg(feature = "knowledge")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forget_erases_the_knowledge_base_in_a_full_dump() {
    use std::sync::Arc;

    use annals_core::knowledge::{
        CachedEmbedder, DocumentEvent, Embedder, EmbeddingCache, HashingEmbedder,
        InMemoryEmbeddingCache, Ingestor, KnowledgeBase, PersonalDocument, PersonalDocumentEvent,
        Scope, SearchQuery, TextHash,
    };
    use annals_core::testing::knowledge::{canaries, chunker, document};
    use annals_core::{EventStoreExt, ExpectedVersion};
    use annals_postgres::knowledge::{self, PgKnowledgeBase, PgKnowledgeProjection};

    let db = TestDatabase::new().await;
    if let Err(e) = knowledge::migrate(db.pool()).await {
        panic!("knowledge::migrate: {e} (is pgvector installed? `scripts/test` installs it)");
    }
    let store = PersonalStore::new(
        db.store().await,
        PgSubjectKeys::new(db.pool().clone(), kek()),
    );
    let kb = PgKnowledgeBase::new(db.pool().clone());
    let cache = Arc::new(InMemoryEmbeddingCache::new(1_000));
    let embedder = CachedEmbedder::new(HashingEmbedder::new(32), cache.clone());
    let model = embedder.model().to_owned();
    let runner = ProjectionRunner::new(
        store.clone(),
        PgProjectionStore::new(db.pool().clone()),
        Arc::new(PgKnowledgeProjection::new(
            "knowledge",
            kb.clone(),
            Ingestor::new(embedder).with_chunker(chunker()),
        )),
    );
    let (a, b) = (canaries("patient-a"), canaries("patient-b"));
    let title = |p: &str| format!("Discharge letter canary-title-{p}");
    let letters = [
        ("patient-a", vec![a[0].as_str(), a[1].as_str()]),
        ("patient-a", vec![a[2].as_str()]),
        (
            "patient-b",
            vec![b[0].as_str(), b[1].as_str(), b[2].as_str()],
        ),
    ];
    for (subject, paragraphs) in &letters {
        let doc = document(
            uuid::Uuid::now_v7(),
            Some("clinic-1"),
            "en",
            &[],
            &title(subject),
            paragraphs,
        );
        let event = PersonalDocumentEvent::Added(PersonalDocument::new(*subject, doc));
        store
            .append_events(
                &format!("letters-{subject}"),
                ExpectedVersion::Any,
                &[event],
                &Metadata::new(),
            )
            .await
            .expect("append a letter");
    }
    let faq = document(
        uuid::Uuid::now_v7(),
        Some("clinic-1"),
        "en",
        &[],
        "Opening hours",
        &["The clinic is open Monday to Friday from 8 to 20."],
    );
    store
        .append_events(
            "faq",
            ExpectedVersion::Any,
            &[DocumentEvent::Added(faq)],
            &Metadata::new(),
        )
        .await
        .expect("append the FAQ");
    runner.catch_up().await.expect("catch up");

    // before: each canary once, in the knowledge base's rows (plaintext,
    // as read models are); the events hold them sealed
    let before = pg_dump(&db);
    for canary in a.iter().chain(&b) {
        assert_eq!(
            before.matches(canary.as_str()).count(),
            1,
            "{canary} before forget"
        );
    }
    assert!(before.contains(&title("patient-a")));

    store.forget("patient-a").await.expect("forget");
    let done = runner.catch_up().await.expect("catch up the forget");
    assert_eq!((done.events_applied, done.events_parked), (1, 0));

    let plain = HashingEmbedder::new(32);
    let check = |when: &'static str| {
        let (db, kb, cache, plain) = (&db, &kb, &cache, &plain);
        let (a, b, model) = (&a, &b, &model);
        async move {
            let dump = pg_dump(db);
            for canary in a {
                assert!(
                    !dump.contains(canary.as_str()),
                    "{when}: {canary} is in the dump"
                );
            }
            assert!(
                !dump.contains(&title("patient-a")),
                "{when}: A's title is in the dump"
            );
            for canary in b {
                assert_eq!(dump.matches(canary.as_str()).count(), 1, "{when}: {canary}");
            }
            for text in a {
                let vector = pgvector::Vector::from(plain.embed_one(text));
                let rows: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM annals_knowledge_base WHERE embedding = $1",
                )
                .bind(vector)
                .fetch_one(db.pool())
                .await
                .expect("count A's vectors");
                assert_eq!(rows, 0, "{when}: a row holds the vector of {text}");
            }
            let hashes: Vec<TextHash> = a.iter().map(|t| TextHash::of(t)).collect();
            let cached = cache.get_many(model, &hashes).await.expect("the cache");
            assert!(
                cached.iter().all(Option::is_none),
                "{when}: A's vectors are cached"
            );
            // B reads back through search (a cacheless embedder of the same
            // model: a cached query would be a copy of its own)
            let q = SearchQuery::new(Scope::Tenant("clinic-1".into()), 10);
            for canary in b {
                let hits = kb.search_text(plain, canary, &q).await.expect("search");
                assert_eq!(&hits[0].entry.content, canary, "{when}");
                assert_eq!(hits[0].entry.document.subject.as_deref(), Some("patient-b"));
                assert!(hits
                    .iter()
                    .all(|h| h.entry.document.subject.as_deref() != Some("patient-a")));
            }
        }
    };
    check("after the forget").await;
    // a rebuild replays the sealed letters: A's read as forgotten
    let rebuilt = runner.rebuild().await.expect("rebuild");
    assert_eq!((rebuilt.events_applied, rebuilt.events_parked), (5, 0));
    check("after a rebuild").await;
}
