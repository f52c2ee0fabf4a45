//! The knowledge base conformance suite on the in-memory backend, and the
//! in-memory projection.
// Tests may unwrap; clippy does not treat `tokio::test` bodies as tests.
#![allow(clippy::unwrap_used)]

use annals_core::knowledge::{
    DocumentEvent, HashingEmbedder, InMemoryKnowledgeBase, InMemoryKnowledgeProjection, Ingestor,
    KnowledgeBase, Scope, SearchQuery,
};
use annals_core::testing::knowledge::{chunker, document, CountingEmbedder};
use annals_core::{
    handler::FailureKind, projection::InMemoryConn, Envelope, LogPosition, Metadata, Projection,
};

#[tokio::test]
async fn conformance() {
    annals_core::testing::knowledge::run(|| async { InMemoryKnowledgeBase::new() }).await;
}

fn envelope(payload: DocumentEvent, position: u64) -> Envelope<DocumentEvent> {
    Envelope {
        event_id: uuid::Uuid::now_v7(),
        stream_id: format!("document-{}", payload.document_id()),
        stream_version: 1,
        log_position: LogPosition::new(1, position),
        event_type: "document.added".to_owned(),
        schema_version: 1,
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

    projection.reset(&mut tx).await.unwrap();
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
