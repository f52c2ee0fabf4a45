//! Vector search over a knowledge base (RAG): embedders, the embedding
//! cache, chunking, the knowledge base fed by document events, and the
//! embedding refresh job.
//!
//! The flow:
//!
//! 1. Documents enter as [`DocumentEvent`]s (added, updated, retired).
//! 2. The [`Ingestor`] (called by the knowledge base projection, or
//!    directly through [`KnowledgeBase::ingest`]) splits each document with
//!    a [`Chunker`], hashes each chunk ([`chunk_hash`]), skips the chunks
//!    whose rows are unchanged, embeds the rest with an [`Embedder`] and
//!    writes the rows.
//! 3. [`KnowledgeBase::search`] finds the top-k rows by cosine similarity,
//!    filtered by [`Scope`] (a clinic never sees another clinic's rows),
//!    language, source type and tags.
//! 4. When the configured model changes, [`EmbeddingRefresh`] re-embeds the
//!    stale rows in batches, resumably, reporting progress.
//!
//! Embedders: [`HashingEmbedder`] (local, deterministic, offline),
//! `HttpEmbedder` (OpenAI-compatible, feature `http-embedder`), and
//! [`CachedEmbedder`] over an [`EmbeddingCache`]: [`InMemoryEmbeddingCache`]
//! or `RedisEmbeddingCache` (feature `redis`).
//!
//! Backends: [`InMemoryKnowledgeBase`] here, `PgKnowledgeBase` (pgvector,
//! HNSW) in `annals-postgres`.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
//! use annals::rag::*;
//!
//! let embedder = CachedEmbedder::new(HashingEmbedder::new(384), InMemoryEmbeddingCache::new(10_000));
//! let ingestor = Ingestor::new(embedder);
//! let kb = InMemoryKnowledgeBase::new();
//! let meta = |title: &str| DocumentMeta {
//!     source_type: "faq".into(),
//!     title: title.into(),
//!     clinic_id: Some("clinic-1".into()),
//!     language: Some("en".into()),
//!     tags: vec![],
//!     metadata: Default::default(),
//! };
//! for (title, content) in [
//!     ("Opening hours", "The clinic is open Monday to Friday from 8 to 20."),
//!     ("Parking", "Free parking for patients behind the building."),
//! ] {
//!     let doc = Document { document_id: uuid::Uuid::now_v7(), meta: meta(title), content: content.into() };
//!     kb.ingest(&ingestor, &DocumentEvent::Added(doc)).await?;
//! }
//! let query = SearchQuery::new(Scope::Clinic("clinic-1".into()), 1);
//! let hits = kb.search_text(ingestor.embedder(), "when is the clinic open?", &query).await?;
//! assert_eq!(hits[0].entry.document.title, "Opening hours");
//! # Ok::<(), KnowledgeError>(())
//! # }).unwrap();
//! ```

mod cache;
mod chunk;
mod embedder;
mod hashing;
#[cfg(feature = "http-embedder")]
mod http;
mod ingest;
mod knowledge;
mod memory;
#[cfg(feature = "redis")]
mod redis;
mod refresh;

pub use cache::{
    CacheError, CachedEmbedder, EmbeddingCache, InMemoryEmbeddingCache, TextHash, DEFAULT_CACHE_TTL,
};
pub use chunk::Chunker;
pub use embedder::{EmbedError, Embedder};
pub use hashing::{cosine_similarity, HashingEmbedder};
#[cfg(feature = "http-embedder")]
#[cfg_attr(docsrs, doc(cfg(feature = "http-embedder")))]
pub use http::{ApiKey, HttpEmbedder, HttpEmbedderConfig};
pub use ingest::{chunk_hash, Document, DocumentEvent, DocumentRetired, IngestReport, Ingestor};
pub use knowledge::{
    validate_model_name, BatchCommit, ChunkRow, DocumentMeta, EmbeddingUpdate, KnowledgeBase,
    KnowledgeEntry, KnowledgeError, KnowledgeWriter, RefreshJobState, RowOp, Scope, SearchHit,
    SearchQuery, StaleRow, StoredEmbedding,
};
pub use memory::{InMemoryKnowledgeBase, InMemoryKnowledgeProjection, InMemoryKnowledgeWriter};
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use redis::RedisEmbeddingCache;
pub use refresh::{
    EmbeddingRefresh, RefreshOutcome, RefreshProgress, Schedule, ScheduleError,
    DEFAULT_REFRESH_BATCH,
};
