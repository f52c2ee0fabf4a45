//! The knowledge base: a document ingested through the one ingest path
//! (chunk, hash, skip unchanged text, embed, write) and searched within one
//! tenant's scope. A local, deterministic embedder behind a cache; in
//! production an OpenAI-compatible `HttpEmbedder` and a Redis cache.
//!
//! ```text
//! cargo run --example knowledge
//! ```

use annals::knowledge::*;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), KnowledgeError> {
    let ingestor = Ingestor::new(CachedEmbedder::new(
        HashingEmbedder::new(384),
        InMemoryEmbeddingCache::new(10_000),
    ));
    let kb = InMemoryKnowledgeBase::new();
    let doc = Document {
        document_id: uuid::Uuid::now_v7(),
        meta: DocumentMeta {
            source_type: "faq".into(),
            title: "Program".into(),
            tenant_id: Some("clinic-cluj".into()),
            language: Some("ro".into()),
            tags: vec!["hours".into()],
            metadata: Default::default(),
            subject: None,
        },
        content: "Clinica este deschisă de luni până vineri, între 8 și 20.".into(),
    };
    kb.ingest(&ingestor, &DocumentEvent::Added(doc)).await?;
    let query = SearchQuery::new(Scope::Tenant("clinic-cluj".into()), 3).language("ro");
    let hits = kb
        .search_text(ingestor.embedder(), "când este deschisă clinica?", &query)
        .await?;
    for hit in &hits {
        println!(
            "{:.2} {}: {}",
            hit.similarity, hit.entry.document.title, hit.entry.content
        );
    }
    Ok(())
}
