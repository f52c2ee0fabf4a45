//! Vector search over a knowledge base (RAG): embedders, the embedding
//! cache, chunking, the knowledge base fed by document events, and the
//! embedding refresh job. Behind the `knowledge` feature (off by default).
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
//!    filtered by [`Scope`] (a tenant never sees another tenant's rows),
//!    language, source type and tags.
//! 4. When the configured model changes, [`EmbeddingRefresh`] re-embeds the
//!    stale rows in batches, resumably, reporting progress.
//!
//! 5. A document can be a person's personal data
//!    ([`DocumentMeta::subject`]): forgetting the subject erases its
//!    documents (see [Forgetting a subject](#forgetting-a-subject)).
//!
//! Embedders: [`HashingEmbedder`] (local, deterministic, offline),
//! `HttpEmbedder` (OpenAI-compatible, feature `http-embedder`), and
//! [`CachedEmbedder`] over an [`EmbeddingCache`]: [`InMemoryEmbeddingCache`]
//! or `RedisEmbeddingCache` (feature `redis`).
//!
//! Backends: [`InMemoryKnowledgeBase`] here, and with the `postgres`
//! feature `annals::postgres::knowledge::PgKnowledgeBase` (pgvector, HNSW),
//! whose tables come from their own migrations,
//! `annals::postgres::knowledge::migrate(&pool)`: the only place annals
//! installs the `vector` extension.
//!
//! # Features
//!
//! | feature | what it adds |
//! | --- | --- |
//! | `knowledge` | this module; with `postgres`, `annals::postgres::knowledge` |
//! | `redis` | `RedisEmbeddingCache` (implies `knowledge`) |
//! | `http-embedder` | `HttpEmbedder` (implies `knowledge`) |
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
//! use annals::knowledge::*;
//!
//! let embedder = CachedEmbedder::new(HashingEmbedder::new(384), InMemoryEmbeddingCache::new(10_000));
//! let ingestor = Ingestor::new(embedder);
//! let kb = InMemoryKnowledgeBase::new();
//! let meta = |title: &str| DocumentMeta {
//!     source_type: "faq".into(),
//!     title: title.into(),
//!     tenant_id: Some("tenant-1".into()),
//!     language: Some("en".into()),
//!     tags: vec![],
//!     metadata: Default::default(),
//!     subject: None,
//! };
//! for (title, content) in [
//!     ("Opening hours", "The shop is open Monday to Friday from 8 to 20."),
//!     ("Parking", "Free parking for customers behind the building."),
//! ] {
//!     let doc = Document { document_id: uuid::Uuid::now_v7(), meta: meta(title), content: content.into() };
//!     kb.ingest(&ingestor, &DocumentEvent::Added(doc)).await?;
//! }
//! let query = SearchQuery::new(Scope::Tenant("tenant-1".into()), 1);
//! let hits = kb.search_text(ingestor.embedder(), "when is the shop open?", &query).await?;
//! assert_eq!(hits[0].entry.document.title, "Opening hours");
//! # Ok::<(), KnowledgeError>(())
//! # }).unwrap();
//! ```
//!
//! # Forgetting a subject
//!
//! [`DocumentMeta::subject`] names whose personal data a document is (a
//! subject id, as `annals::personal` uses them; `None` for knowledge that
//! is nobody's). Every row of the document carries it.
//! [`KnowledgeBase::forget_subject`] erases a subject on either backend:
//!
//! - it deletes every row of the subject's documents, active or retired,
//!   with their text and vectors. Deleted, not redacted: a search never
//!   finds them again and no row is left to re-embed;
//! - before that, it removes their texts' embeddings from the embedder's
//!   caches ([`Embedder::forget_cached`], [`EmbeddingCache::remove_many`]:
//!   the in-memory LRU, and Redis with `DEL`), under each row's model and
//!   the embedder's own. A cache that fails fails the erasure
//!   ([`KnowledgeError::Cache`], transient) before any row is deleted, so
//!   it can simply run again.
//!
//! Subjects are checked like every subject id
//! ([`check_subject`](crate::store::limits::check_subject)); the other
//! subjects' documents and the documents of nobody's are untouched.
//!
//! The knowledge base projections read [`KnowledgeEvent`]s, which include
//! [`SubjectForgotten`] (`subject.forgotten`): with a projection running,
//! `PersonalStore::forget(subject)` (feature `personal`) erases the
//! knowledge base by itself once the projection reaches the event (on
//! Postgres, in the projection's transaction). The projections read that
//! event with or without the `personal` feature.
//!
//! **The event log.** A JSON Schema marks a field personal for every event
//! of its type, and a `PersonalStore` refuses an event with personal
//! fields but no subject, so `document.added` cannot have its `content`
//! personal only when the document names a subject. Documents with a
//! subject have event types of their own instead:
//! `PersonalDocumentEvent` (features `knowledge` and `personal`), whose
//! whole document is one `Personal` value, sealed with the subject's key
//! when appended through a `PersonalStore` (run the projection on that
//! store, so it reads them opened). After a forget they read as
//! forgotten, and a rebuild of the projection skips them.
//!
//! **What a forget leaves** (know it before you promise an erasure):
//!
//! - the text of a document with a subject appended as a plain
//!   [`DocumentEvent`] stays in the event log (its rows are erased; a
//!   rebuild writes them again until it replays the `subject.forgotten`);
//! - search queries: a [`CachedEmbedder`] also caches the vector of every
//!   query it embeds, keyed by the hash of the query's text. A query that
//!   quoted the subject's data stays cached until its TTL. If queries may
//!   hold personal data, search with an embedder without a cache (or with
//!   a cache of its own and a short TTL);
//! - deleted rows stay in Postgres's table files and WAL until vacuum and
//!   WAL recycling (and in backups); Redis keeps deleted keys in RDB and
//!   AOF files written before, until they are rewritten.
//!
//! A cached text shared with another document (the cache key is the text
//! alone) leaves the cache too: at worst one more embedding call later.
//! A text that leaves a subject's document in an update is no longer in
//! the knowledge base for the erasure to find: the ingest removes it from
//! the caches right away, best effort (a cache that fails then is logged,
//! and the entry lives until its TTL).
//!
//! # Scheduling the refresh
//!
//! annals does not schedule jobs. [`EmbeddingRefresh::run`] is resumable
//! and writes no embedding when no row is stale, so run it where your deployment already
//! runs periodic work: once after rolling out a new model, from the
//! platform's scheduler (a Kubernetes `CronJob` with `schedule: "0 3 * * 0"`,
//! a systemd timer), or on a task of the service itself. A cluster scheduler
//! runs it once per period however many replicas the service has, which an
//! in-process timer cannot promise (concurrent runs are safe, each batch is
//! committed once, but they pay for the same embeddings twice).
//!
//! On a task of the service, until shutdown:
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
//! use std::time::Duration;
//!
//! use annals::knowledge::{EmbeddingRefresh, HashingEmbedder, InMemoryKnowledgeBase};
//! use annals::Shutdown;
//!
//! let kb = InMemoryKnowledgeBase::new();
//! let refresh = EmbeddingRefresh::new(HashingEmbedder::new(384));
//! let (stop, mut shutdown) = Shutdown::new();
//! let job = tokio::spawn(async move {
//!     loop {
//!         match refresh.run(&kb, |_| {}).await {
//!             Ok(outcome) => println!("re-embedded {} row(s)", outcome.refreshed),
//!             Err(e) => eprintln!("embedding refresh failed, resumes next time: {e}"),
//!         }
//!         // true once shutdown is triggered
//!         if shutdown.sleep(Duration::from_secs(24 * 60 * 60)).await {
//!             break;
//!         }
//!     }
//! });
//! // ... at shutdown:
//! stop.trigger();
//! job.await.unwrap();
//! # });
//! ```
//!
//! For calendar times (Sundays at 03:00), compute the next time with a cron
//! crate such as `croner` or `cron` and sleep until then.

mod base;
mod cache;
mod chunk;
mod document;
mod embedder;
mod error;
mod events;
mod hashing;
#[cfg(feature = "http-embedder")]
mod http;
mod ingest;
mod memory;
#[cfg(feature = "personal")]
mod personal;
#[cfg(feature = "redis")]
mod redis;
mod refresh;
mod search;
mod writer;

pub use crate::forgotten::SubjectForgotten;
pub use base::{BatchCommit, EmbeddingUpdate, KnowledgeBase, RefreshJobState, StaleRow};
pub use cache::{
    CacheError, CachedEmbedder, EmbeddingCache, InMemoryEmbeddingCache, TextHash, DEFAULT_CACHE_TTL,
};
pub use chunk::Chunker;
pub use document::{
    Document, DocumentEvent, DocumentMeta, DocumentMetaV1, DocumentRetired, DocumentV1,
    MAX_DOCUMENT_NAME_BYTES, MAX_TAGS, MAX_TITLE_BYTES,
};
pub use embedder::{EmbedError, Embedder};
pub use error::{validate_model_name, KnowledgeError};
pub use events::KnowledgeEvent;
pub use hashing::{cosine_similarity, HashingEmbedder};
#[cfg(feature = "http-embedder")]
#[cfg_attr(docsrs, doc(cfg(feature = "http-embedder")))]
pub use http::{ApiKey, HttpEmbedder, HttpEmbedderConfig};
pub use ingest::{chunk_hash, ErasureReport, IngestReport, Ingestor};
pub use memory::{InMemoryKnowledgeBase, InMemoryKnowledgeProjection, InMemoryKnowledgeWriter};
#[cfg(feature = "personal")]
#[cfg_attr(docsrs, doc(cfg(feature = "personal")))]
pub use personal::{PersonalDocument, PersonalDocumentEvent};
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use redis::RedisEmbeddingCache;
pub use refresh::{EmbeddingRefresh, RefreshOutcome, RefreshProgress, DEFAULT_REFRESH_BATCH};
pub use search::{KnowledgeEntry, Scope, SearchHit, SearchQuery};
pub use writer::{ChunkRow, KnowledgeWriter, RowOp, StoredEmbedding};
