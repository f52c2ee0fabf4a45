//! The knowledge base conformance suite on the in-memory backend, and the
//! in-memory projection.

use annals_core::rag::{
    DocumentEvent, HashingEmbedder, InMemoryKnowledgeBase, InMemoryKnowledgeProjection, Ingestor,
    KnowledgeBase, Scope, SearchQuery,
};
use annals_core::testing::knowledge::{chunker, document, CountingEmbedder};
use annals_core::{Envelope, FailureKind, LogPosition, MemoryTx, Metadata, Projection};

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
    let doc = document(id, Some("c"), "en", &[], "Hours", &["We are open from 8 to 20 on weekdays.", "The clinic is closed on Sundays."]);
    let mut tx = MemoryTx::new();
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
            &SearchQuery::new(Scope::Clinic("c".into()), 1),
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
