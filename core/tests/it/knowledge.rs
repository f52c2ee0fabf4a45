//! The knowledge base conformance suite on the in-memory backend, and the
//! in-memory projection.
// Tests may unwrap; clippy does not treat `tokio::test` bodies as tests.
#![allow(clippy::unwrap_used)]

use annals_core::knowledge::{
    DocumentEvent, HashingEmbedder, InMemoryKnowledgeBase, InMemoryKnowledgeProjection, Ingestor,
    KnowledgeBase, KnowledgeEvent, Scope, SearchQuery,
};
use annals_core::testing::knowledge::{canaries, chunker, document, of_subject, CountingEmbedder};
use annals_core::{
    handler::FailureKind, projection::InMemoryConn, Envelope, LogPosition, Metadata, Projection,
};

#[tokio::test]
async fn conformance() {
    annals_core::testing::knowledge::run(|| async { InMemoryKnowledgeBase::new() }).await;
}

fn envelope(payload: DocumentEvent, position: u64) -> Envelope<KnowledgeEvent> {
    let stream_id = format!("document-{}", payload.document_id());
    let payload = KnowledgeEvent::Document(payload);
    Envelope {
        tenant_id: annals_core::TenantId::default(),
        event_id: uuid::Uuid::now_v7(),
        stream_id,
        stream_version: 1,
        log_position: LogPosition::new(1, position),
        event_type: "document.added".to_owned(),
        schema_version: 2,
        metadata: Metadata::new(),
        recorded_at: chrono::Utc::now(),
        payload,
    }
}

#[tokio::test]
async fn the_projection_uses_the_ingest_path() {
    let kb = InMemoryKnowledgeBase::new();
    let embedder = CountingEmbedder::new(HashingEmbedder::new(32));
    let projection = InMemoryKnowledgeProjection::new(
        "knowledge",
        kb.clone(),
        Ingestor::new(embedder.clone()).with_chunker(chunker()),
    );
    assert_eq!(projection.name(), "knowledge");
    let id = uuid::Uuid::now_v7();
    let doc = document(
        id,
        Some("c"),
        "en",
        &[],
        "Hours",
        &[
            "We are open from 8 to 20 on weekdays.",
            "The clinic is closed on Sundays.",
        ],
    );
    let mut tx = InMemoryConn::new();
    projection
        .apply(&mut tx, &envelope(DocumentEvent::Added(doc.clone()), 1))
        .await
        .unwrap();
    // replayed (at-least-once delivery): nothing embedded again
    projection
        .apply(&mut tx, &envelope(DocumentEvent::Added(doc.clone()), 1))
        .await
        .unwrap();
    assert_eq!(embedder.calls(), 1);
    let hits = kb
        .search_text(
            &HashingEmbedder::new(32),
            "is the clinic closed on sundays",
            &SearchQuery::new(Scope::Tenant("c".into()), 1),
        )
        .await
        .unwrap();
    assert_eq!(hits[0].entry.content, "The clinic is closed on Sundays.");

    // an empty document is the event's fault; an unreachable embedder is a
    // dependency's
    let empty = document(uuid::Uuid::now_v7(), None, "en", &[], "Empty", &[""]);
    let err = projection
        .apply(&mut tx, &envelope(DocumentEvent::Added(empty), 2))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), FailureKind::Event);
    embedder.fail_after(0);
    let other = document(uuid::Uuid::now_v7(), None, "en", &[], "Other", &["text"]);
    let err = projection
        .apply(&mut tx, &envelope(DocumentEvent::Added(other), 3))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), FailureKind::Dependency, "{err}");

    projection
        .reset(&mut tx, &annals_core::TenantId::default())
        .await
        .unwrap();
    assert!(kb.is_empty());
}

#[tokio::test]
async fn the_projection_runner_feeds_the_knowledge_base_from_the_log() {
    use std::sync::Arc;

    use annals_core::knowledge::{CachedEmbedder, DocumentRetired, InMemoryEmbeddingCache};
    use annals_core::{
        EventStoreExt, ExpectedVersion, InMemoryEventStore, InMemoryProjectionStore,
        ProjectionRunner,
    };

    let store = InMemoryEventStore::new();
    let kb = InMemoryKnowledgeBase::new();
    let counting = CountingEmbedder::new(HashingEmbedder::new(32));
    let embedder = CachedEmbedder::new(counting.clone(), InMemoryEmbeddingCache::new(1_000));
    let projection = Arc::new(InMemoryKnowledgeProjection::new(
        "knowledge",
        kb.clone(),
        Ingestor::new(embedder).with_chunker(chunker()),
    ));
    let runner = ProjectionRunner::new(store.clone(), InMemoryProjectionStore::new(), projection);
    let (a, b) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
    let doc_a = document(
        a,
        Some("c"),
        "en",
        &[],
        "Hours",
        &[
            "We are open from 8 to 20 on weekdays.",
            "The clinic is closed on Sundays.",
        ],
    );
    let doc_b = document(
        b,
        Some("c"),
        "en",
        &[],
        "Parking",
        &["Free parking for patients behind the building."],
    );
    for (stream, event) in [
        (format!("document-{a}"), DocumentEvent::Added(doc_a.clone())),
        (format!("document-{b}"), DocumentEvent::Added(doc_b)),
        (format!("document-{a}"), DocumentEvent::Updated(doc_a)),
        (
            format!("document-{b}"),
            DocumentEvent::Retired(DocumentRetired { document_id: b }),
        ),
    ] {
        store
            .append_events(&stream, ExpectedVersion::Any, &[event], &Metadata::new())
            .await
            .unwrap();
    }
    let done = runner.catch_up().await.unwrap();
    assert_eq!(done.events_applied, 4);
    assert_eq!(counting.texts(), 3, "the unchanged update embedded nothing");
    let q = SearchQuery::new(Scope::Tenant("c".into()), 10);
    let hits = kb
        .search_text(&HashingEmbedder::new(32), "parking", &q)
        .await
        .unwrap();
    assert!(
        hits.iter().all(|h| h.entry.document.title == "Hours"),
        "the retired document is found"
    );
    assert_eq!(hits.len(), 2);
    // a rebuild replays the log into an empty knowledge base: the cache
    // answers every text
    counting.reset();
    let rebuilt = runner.rebuild().await.unwrap();
    assert_eq!(rebuilt.events_applied, 4);
    assert_eq!(counting.calls(), 0, "the rebuild went to the embedder");
    assert_eq!(
        kb.search_text(&HashingEmbedder::new(32), "parking", &q)
            .await
            .unwrap()
            .len(),
        2
    );
}

/// A `subject.forgotten` event erases the subject's documents whoever
/// recorded it: the projection reads it without the `personal` feature.
#[tokio::test]
async fn a_subject_forgotten_event_erases_the_subjects_documents() {
    use std::sync::Arc;

    use annals_core::knowledge::{
        CachedEmbedder, Embedder, EmbeddingCache, InMemoryEmbeddingCache, SubjectForgotten,
        TextHash,
    };
    use annals_core::{
        EventStoreExt, ExpectedVersion, InMemoryEventStore, InMemoryProjectionStore,
        ProjectionRunner,
    };

    let store = InMemoryEventStore::new();
    let kb = InMemoryKnowledgeBase::new();
    let cache = Arc::new(InMemoryEmbeddingCache::new(1_000));
    let embedder = CachedEmbedder::new(HashingEmbedder::new(32), cache.clone());
    let model = embedder.model().to_owned();
    let projection = Arc::new(InMemoryKnowledgeProjection::new(
        "knowledge",
        kb.clone(),
        Ingestor::new(embedder.clone()).with_chunker(chunker()),
    ));
    let runner = ProjectionRunner::new(store.clone(), InMemoryProjectionStore::new(), projection);
    let (a, b) = (canaries("subject-a"), canaries("subject-b"));
    let (doc_a, doc_b) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
    let events = [
        DocumentEvent::Added(of_subject(
            document(doc_a, Some("c"), "en", &[], "A", &[&a[0], &a[1]]),
            "subject-a",
        )),
        DocumentEvent::Added(of_subject(
            document(doc_b, Some("c"), "en", &[], "B", &[&b[0]]),
            "subject-b",
        )),
    ];
    store
        .append_events("documents", ExpectedVersion::Any, &events, &Metadata::new())
        .await
        .unwrap();
    runner.catch_up().await.unwrap();
    assert_eq!(kb.len(), 3);
    store
        .append_events(
            "forgotten",
            ExpectedVersion::Any,
            &[SubjectForgotten {
                subject: "subject-a".into(),
            }],
            &Metadata::new(),
        )
        .await
        .unwrap();
    let done = runner.catch_up().await.unwrap();
    assert_eq!((done.events_applied, done.events_parked), (1, 0));
    assert!(kb.document(doc_a).await.unwrap().is_empty());
    assert_eq!(kb.document(doc_b).await.unwrap().len(), 1);
    let hashes: Vec<TextHash> = a[..2].iter().map(|t| TextHash::of(t)).collect();
    assert_eq!(
        cache.get_many(&model, &hashes).await.unwrap(),
        vec![None, None]
    );
    let q = SearchQuery::new(Scope::All, 10);
    let hits = kb.search_text(&embedder, &b[0], &q).await.unwrap();
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].entry.content, b[0]);
}

/// Forgetting through the `PersonalStore` with a knowledge projection
/// running: personal documents are sealed in the log, the projection
/// erases the subject's rows and cached embeddings when the forget reaches
/// it, and a rebuild does not bring them back.
#[cfg(feature = "personal")]
#[tokio::test]
async fn forgetting_through_the_personal_store_erases_the_knowledge_base() {
    use std::sync::Arc;

    use annals_core::knowledge::{
        CachedEmbedder, Embedder, EmbeddingCache, InMemoryEmbeddingCache, PersonalDocument,
        PersonalDocumentEvent, TextHash,
    };
    use annals_core::personal::{InMemorySubjectKeys, LocalKeyProvider, PersonalStore};
    use annals_core::{
        EventStore, EventStoreExt, ExpectedVersion, InMemoryEventStore, InMemoryProjectionStore,
        LogPosition, ProjectionRunner,
    };

    let keys = InMemorySubjectKeys::new(LocalKeyProvider::generate("kek-1"));
    let store = PersonalStore::new(InMemoryEventStore::new(), keys);
    let kb = InMemoryKnowledgeBase::new();
    let cache = Arc::new(InMemoryEmbeddingCache::new(1_000));
    let embedder = CachedEmbedder::new(HashingEmbedder::new(32), cache.clone());
    let model = embedder.model().to_owned();
    let projection = Arc::new(InMemoryKnowledgeProjection::new(
        "knowledge",
        kb.clone(),
        Ingestor::new(embedder.clone()).with_chunker(chunker()),
    ));
    let runner = ProjectionRunner::new(store.clone(), InMemoryProjectionStore::new(), projection);
    let (a, b) = (canaries("patient-a"), canaries("patient-b"));
    let ids: Vec<uuid::Uuid> = (0..4).map(|_| uuid::Uuid::now_v7()).collect();
    let personal = [
        (ids[0], "patient-a", vec![&a[0], &a[1]]),
        (ids[1], "patient-a", vec![&a[2]]),
        (ids[2], "patient-b", vec![&b[0], &b[1]]),
    ];
    for (id, subject, paragraphs) in &personal {
        let paragraphs: Vec<&str> = paragraphs.iter().map(|p| p.as_str()).collect();
        let doc = document(*id, Some("c"), "en", &[], "Letter", &paragraphs);
        let event = PersonalDocumentEvent::Added(PersonalDocument::new(*subject, doc));
        store
            .append_events(
                &format!("letters-{subject}"),
                ExpectedVersion::Any,
                &[event],
                &Metadata::new(),
            )
            .await
            .unwrap();
    }
    let shared = document(
        ids[3],
        Some("c"),
        "en",
        &[],
        "Hours",
        &["We are open weekdays from 8 to 20."],
    );
    store
        .append_events(
            "documents",
            ExpectedVersion::Any,
            &[DocumentEvent::Added(shared)],
            &Metadata::new(),
        )
        .await
        .unwrap();
    // sealed in the log: no canary of either patient in what is stored
    let stored = store
        .inner()
        .read_log(LogPosition::START, 100)
        .await
        .unwrap();
    assert_eq!(stored.len(), 4);
    for e in &stored {
        for canary in a.iter().chain(&b) {
            assert!(
                !e.payload.get().contains(canary.as_str()),
                "{canary} stored in plaintext"
            );
        }
    }
    runner.catch_up().await.unwrap();
    assert_eq!(kb.len(), 6);
    let q = SearchQuery::new(Scope::Tenant("c".into()), 10);
    let hits = kb
        .search_text(&HashingEmbedder::new(32), &a[0], &q)
        .await
        .unwrap();
    assert_eq!(hits[0].entry.content, a[0]);
    assert_eq!(hits[0].entry.document.subject.as_deref(), Some("patient-a"));

    store.forget("patient-a").await.unwrap();
    let done = runner.catch_up().await.unwrap();
    assert_eq!((done.events_applied, done.events_parked), (1, 0));
    // searches through a cacheless embedder of the same model: a query
    // embedded through the cache would put A's text back in it
    let check = |when: &'static str| {
        let kb = kb.clone();
        let embedder = HashingEmbedder::new(32);
        let (a, b, q, ids) = (a.clone(), b.clone(), q.clone(), ids.clone());
        async move {
            for id in &ids[..2] {
                assert!(
                    kb.document(*id).await.unwrap().is_empty(),
                    "{when}: A's rows"
                );
            }
            for canary in &a {
                let hits = kb.search_text(&embedder, canary, &q).await.unwrap();
                assert!(
                    hits.iter().all(|h| !h.entry.content.contains("patient-a")),
                    "{when}: A is found"
                );
            }
            let hits = kb.search_text(&embedder, &b[1], &q).await.unwrap();
            assert_eq!(hits[0].entry.content, b[1], "{when}: B is not found");
            assert_eq!(kb.document(ids[3]).await.unwrap().len(), 1);
            assert_eq!(kb.len(), 3, "{when}");
        }
    };
    check("after the forget").await;
    let hashes: Vec<TextHash> = a.iter().map(|t| TextHash::of(t)).collect();
    assert_eq!(
        cache.get_many(&model, &hashes).await.unwrap(),
        vec![None, None, None],
        "A's embeddings stay cached"
    );
    // a rebuild replays the log: A's documents read as forgotten and are
    // skipped, the forget erases nothing more
    let rebuilt = runner.rebuild().await.unwrap();
    assert_eq!((rebuilt.events_applied, rebuilt.events_parked), (5, 0));
    check("after a rebuild").await;
    assert_eq!(
        cache.get_many(&model, &hashes).await.unwrap(),
        vec![None, None, None],
        "the rebuild cached A's embeddings again"
    );
}

/// An embedding cache whose removals fail while `down` is set.
struct FlakyCache {
    inner: annals_core::knowledge::InMemoryEmbeddingCache,
    down: std::sync::atomic::AtomicBool,
}

impl annals_core::knowledge::EmbeddingCache for FlakyCache {
    fn name(&self) -> &'static str {
        "flaky"
    }
    async fn get_many(
        &self,
        model: &str,
        keys: &[annals_core::knowledge::TextHash],
    ) -> Result<Vec<Option<Vec<f32>>>, annals_core::knowledge::CacheError> {
        self.inner.get_many(model, keys).await
    }
    async fn put_many(
        &self,
        model: &str,
        entries: &[(annals_core::knowledge::TextHash, &[f32])],
    ) -> Result<(), annals_core::knowledge::CacheError> {
        self.inner.put_many(model, entries).await
    }
    async fn invalidate_model(
        &self,
        model: &str,
    ) -> Result<u64, annals_core::knowledge::CacheError> {
        self.inner.invalidate_model(model).await
    }
    async fn remove_many(
        &self,
        model: &str,
        keys: &[annals_core::knowledge::TextHash],
    ) -> Result<u64, annals_core::knowledge::CacheError> {
        if self.down.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(annals_core::knowledge::CacheError::Backend {
                context: "removing embeddings",
                source: "the cache is down (simulated)".into(),
            });
        }
        self.inner.remove_many(model, keys).await
    }
}

/// A cache that fails while a subject is erased fails the erasure before
/// any row is deleted (a dependency failure: the projection retries it),
/// and the erasure run again completes.
#[tokio::test]
async fn a_failing_cache_fails_the_erasure_and_deletes_nothing() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use annals_core::knowledge::{
        CachedEmbedder, InMemoryEmbeddingCache, KnowledgeError, SubjectForgotten,
    };

    let cache = Arc::new(FlakyCache {
        inner: InMemoryEmbeddingCache::new(100),
        down: AtomicBool::new(false),
    });
    let ingestor = Ingestor::new(CachedEmbedder::new(HashingEmbedder::new(32), cache.clone()))
        .with_chunker(chunker());
    let kb = InMemoryKnowledgeBase::new();
    let a = canaries("subject-a");
    let id = uuid::Uuid::now_v7();
    let doc = of_subject(
        document(id, None, "en", &[], "A", &[&a[0], &a[1]]),
        "subject-a",
    );
    kb.ingest(&ingestor, &DocumentEvent::Added(doc))
        .await
        .unwrap();
    cache.down.store(true, Ordering::SeqCst);
    let err = kb.forget_subject(&ingestor, "subject-a").await.unwrap_err();
    assert!(matches!(err, KnowledgeError::Cache(_)), "{err}");
    assert_eq!(kb.document(id).await.unwrap().len(), 2, "rows deleted");
    // through the projection: a dependency failure, retried, never parked
    let projection = InMemoryKnowledgeProjection::new("knowledge", kb.clone(), ingestor.clone());
    let forgotten = Envelope {
        tenant_id: annals_core::TenantId::default(),
        payload: KnowledgeEvent::SubjectForgotten(SubjectForgotten {
            subject: "subject-a".into(),
        }),
        ..envelope(
            DocumentEvent::Added(document(id, None, "en", &[], "x", &["x"])),
            9,
        )
    };
    let err = projection
        .apply(&mut InMemoryConn::new(), &forgotten)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), FailureKind::Dependency, "{err}");
    cache.down.store(false, Ordering::SeqCst);
    projection
        .apply(&mut InMemoryConn::new(), &forgotten)
        .await
        .unwrap();
    assert!(kb.is_empty());
    assert!(cache.inner.is_empty(), "A's embeddings stay cached");
}

/// A `subject.forgotten` of one tenant's log erases that tenant's
/// documents of the subject only: the same subject id in another tenant
/// is another person, whose documents stay. The default tenant's erases
/// every document of the subject, as before tenants.
#[tokio::test]
async fn a_tenant_s_forget_erases_that_tenant_s_documents_only() {
    use annals_core::knowledge::SubjectForgotten;

    let ingestor = Ingestor::new(HashingEmbedder::new(32)).with_chunker(chunker());
    let kb = InMemoryKnowledgeBase::new();
    let (in_a, in_b) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
    for (id, tenant) in [(in_a, "clinic-a"), (in_b, "clinic-b")] {
        let doc = of_subject(
            document(
                id,
                Some(tenant),
                "en",
                &[],
                "letter",
                &[&format!("a letter in {tenant}")],
            ),
            "patient-1",
        );
        kb.ingest(&ingestor, &DocumentEvent::Added(doc))
            .await
            .unwrap();
    }
    let projection = InMemoryKnowledgeProjection::new("knowledge", kb.clone(), ingestor.clone());
    let forgotten = |tenant: &str| Envelope {
        tenant_id: annals_core::TenantId::new(tenant).unwrap(),
        payload: KnowledgeEvent::SubjectForgotten(SubjectForgotten {
            subject: "patient-1".into(),
        }),
        ..envelope(
            DocumentEvent::Added(document(in_a, None, "en", &[], "x", &["x"])),
            9,
        )
    };
    projection
        .apply(&mut InMemoryConn::new(), &forgotten("clinic-a"))
        .await
        .unwrap();
    assert!(
        kb.document(in_a).await.unwrap().is_empty(),
        "a's letter is erased"
    );
    assert_eq!(
        kb.document(in_b).await.unwrap().len(),
        1,
        "b's patient-1 is another person"
    );
    projection
        .apply(&mut InMemoryConn::new(), &forgotten("default"))
        .await
        .unwrap();
    assert!(
        kb.is_empty(),
        "the default tenant's forget erases every document of the subject"
    );
}
