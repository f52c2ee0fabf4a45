//! The knowledge base: entries, search queries, the [`KnowledgeBase`] trait
//! and the write interface backends implement.

use std::future::Future;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::embedder::{EmbedError, Embedder};
use super::ingest::{DocumentEvent, IngestReport, Ingestor};

/// One stored chunk of a document, as a search returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KnowledgeEntry {
    /// The row's id. The document's anchor chunk has the document's id.
    pub id: Uuid,
    /// The document the chunk belongs to.
    pub document_id: Uuid,
    /// The anchor row of the document (`None` for the anchor itself).
    pub parent_id: Option<Uuid>,
    /// The document's fields shared by all its chunks.
    pub document: DocumentMeta,
    /// The chunk's text.
    pub content: String,
    /// SHA-256 (hex) of the document id and the chunk's text: the row's
    /// identity within its document (see [`chunk_hash`](super::chunk_hash)).
    pub content_hash: String,
    /// Position of the chunk in the document, from 0.
    pub chunk_index: u32,
    /// Chunks the document was split into.
    pub chunk_total: u32,
    /// Bumped on every change of the row.
    pub version: u32,
    /// False once the document is retired.
    pub is_active: bool,
    /// The model that produced the stored embedding.
    pub embedding_model: Option<String>,
    /// When the embedding was made.
    pub embedded_at: Option<DateTime<Utc>>,
}

/// The fields of a document that every chunk of it carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct DocumentMeta {
    /// What kind of source it is (`faq`, `price_list`, `protocol`, ...).
    pub source_type: String,
    /// The document's title.
    pub title: String,
    /// The clinic it belongs to; `None` for knowledge shared by all clinics.
    #[serde(default)]
    pub clinic_id: Option<String>,
    /// Its language (`en`, `ro`, ...).
    #[serde(default)]
    pub language: Option<String>,
    /// Free tags (search can require some).
    #[serde(default)]
    pub tags: Vec<String>,
    /// Anything else, as a JSON object.
    #[serde(default)]
    pub metadata: serde_json::Map<String, serde_json::Value>,
}

/// Whose rows a search may see. Every search names one: a clinic never
/// sees another clinic's rows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Scope {
    /// Only this clinic's rows.
    Clinic(String),
    /// This clinic's rows and the shared ones (no clinic).
    ClinicAndShared(String),
    /// Only the shared rows.
    Shared,
    /// Every row: for administration tools, never for a clinic's users.
    All,
}

/// A top-k similarity search with filters.
///
/// ```
/// use annals::rag::{Scope, SearchQuery};
/// let q = SearchQuery::new(Scope::ClinicAndShared("clinic-7".into()), 5)
///     .language("ro")
///     .source_type("faq")
///     .tag("prices");
/// assert_eq!(q.k, 5);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SearchQuery {
    /// Whose rows to search.
    pub scope: Scope,
    /// How many hits at most.
    pub k: usize,
    /// Only rows in this language.
    pub language: Option<String>,
    /// Only rows of one of these source types (empty: any).
    pub source_types: Vec<String>,
    /// Only rows that carry every one of these tags.
    pub tags: Vec<String>,
    /// Only hits at least this similar (cosine similarity, -1 to 1).
    pub min_similarity: Option<f32>,
}

impl SearchQuery {
    /// The `k` nearest rows in `scope`, no other filter.
    pub fn new(scope: Scope, k: usize) -> Self {
        SearchQuery {
            scope,
            k,
            language: None,
            source_types: Vec::new(),
            tags: Vec::new(),
            min_similarity: None,
        }
    }

    /// Only rows in `language`.
    pub fn language(mut self, language: impl Into<String>) -> Self {
        self.language = Some(language.into());
        self
    }

    /// Also allows rows of `source_type` (the first call restricts to it).
    pub fn source_type(mut self, source_type: impl Into<String>) -> Self {
        self.source_types.push(source_type.into());
        self
    }

    /// Requires `tag` (every tag given must be on a row).
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.tags.push(tag.into());
        self
    }

    /// Drops hits less similar than `min`.
    pub fn min_similarity(mut self, min: f32) -> Self {
        self.min_similarity = Some(min);
        self
    }

    /// Whether a row with these fields passes the filters (what every
    /// backend applies).
    pub fn admits(&self, meta: &DocumentMeta) -> bool {
        let clinic = meta.clinic_id.as_deref();
        let in_scope = match &self.scope {
            Scope::Clinic(c) => clinic == Some(c.as_str()),
            Scope::ClinicAndShared(c) => clinic.is_none() || clinic == Some(c.as_str()),
            Scope::Shared => clinic.is_none(),
            Scope::All => true,
        };
        in_scope
            && self
                .language
                .as_ref()
                .is_none_or(|l| meta.language.as_ref() == Some(l))
            && (self.source_types.is_empty() || self.source_types.contains(&meta.source_type))
            && self.tags.iter().all(|t| meta.tags.contains(t))
    }
}

/// One search result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchHit {
    /// The matching chunk.
    pub entry: KnowledgeEntry,
    /// Cosine similarity to the query (1 is identical direction).
    pub similarity: f32,
}

/// Why a knowledge base operation failed. Nothing was written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KnowledgeError {
    /// Embedding failed.
    #[error(transparent)]
    Embed(#[from] EmbedError),

    /// A document has no text to store.
    #[error("document {document_id} has no content (only whitespace); retire it instead of adding an empty one")]
    EmptyDocument {
        /// The document.
        document_id: Uuid,
    },

    /// A model name cannot be used (it is spliced into SQL as a literal).
    #[error("invalid embedding model name {model:?}: {reason}")]
    InvalidModel {
        /// The name.
        model: String,
        /// Why.
        reason: &'static str,
    },

    /// A vector's length does not match what the knowledge base holds for
    /// its model.
    #[error("a vector of {actual} dimensions does not fit model `{model}`, whose vectors have {expected}; embed with the model's own embedder")]
    Dimensions {
        /// The model.
        model: String,
        /// The model's dimensions in the knowledge base.
        expected: usize,
        /// The vector's length.
        actual: usize,
    },

    /// The document's rows changed while it was being written (a
    /// concurrent ingest of the same document); nothing was written.
    #[error("document {document_id} changed while it was being written; apply the event again")]
    Conflict {
        /// The document.
        document_id: Uuid,
    },

    /// A chunk's position does not fit the table (over 2^31 chunks).
    #[error("document {document_id} has too many chunks ({chunks}); raise the chunker's size")]
    TooManyChunks {
        /// The document.
        document_id: Uuid,
        /// Chunks it was split into.
        chunks: usize,
    },

    /// The database failed; the operation did not complete.
    #[error("knowledge base database error while {context}: {source}; check that the database is reachable, then retry")]
    Backend {
        /// What the knowledge base was doing.
        context: &'static str,
        /// The driver's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
}

impl KnowledgeError {
    /// Wraps a backend (driver) error with what the knowledge base was
    /// doing.
    pub fn backend(
        context: &'static str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        KnowledgeError::Backend {
            context,
            source: source.into(),
        }
    }

    /// Whether the failure is a dependency's (database, embedding service)
    /// and may pass on retry, as opposed to one of the input.
    pub fn is_transient(&self) -> bool {
        match self {
            KnowledgeError::Embed(e) => e.is_transient(),
            KnowledgeError::Backend { .. } | KnowledgeError::Conflict { .. } => true,
            _ => false,
        }
    }

    /// The error as a projection returns it: transient failures (database,
    /// embedding service) are [dependency](crate::handler::FailureKind::Dependency)
    /// failures, retried and never parked; the others are failures of the
    /// event. (`?` alone would make every error an event failure.)
    pub fn into_handler_error(self) -> crate::HandlerError {
        if self.is_transient() {
            crate::HandlerError::dependency(self)
        } else {
            crate::HandlerError::event(self)
        }
    }
}

/// A knowledge base: documents in, similarity search out.
///
/// Backends: [`InMemoryKnowledgeBase`](super::InMemoryKnowledgeBase) (exact
/// search, the embedded default) and `annals::postgres::PgKnowledgeBase`
/// (pgvector, HNSW).
pub trait KnowledgeBase: Send + Sync {
    /// Applies one document event through `ingestor` (chunk, hash, skip
    /// unchanged, embed, write), atomically.
    fn ingest<E: Embedder>(
        &self,
        ingestor: &Ingestor<E>,
        event: &DocumentEvent,
    ) -> impl Future<Output = Result<IngestReport, KnowledgeError>> + Send;

    /// The `query.k` active rows embedded by `model` nearest to `vector`
    /// that pass the query's filters, most similar first.
    fn search(
        &self,
        model: &str,
        vector: &[f32],
        query: &SearchQuery,
    ) -> impl Future<Output = Result<Vec<SearchHit>, KnowledgeError>> + Send;

    /// Embeds `text` with `embedder` and searches with its model.
    fn search_text<E: Embedder>(
        &self,
        embedder: &E,
        text: &str,
        query: &SearchQuery,
    ) -> impl Future<Output = Result<Vec<SearchHit>, KnowledgeError>> + Send {
        async move {
            let vectors = embedder.embed(&[text]).await?;
            let vector = vectors.into_iter().next().ok_or(EmbedError::Count {
                sent: 1,
                received: 0,
            })?;
            self.search(embedder.model(), &vector, query).await
        }
    }

    /// Every stored chunk of a document (active or not), in chunk order.
    fn document(
        &self,
        document_id: Uuid,
    ) -> impl Future<Output = Result<Vec<KnowledgeEntry>, KnowledgeError>> + Send;

    /// Active rows whose embedding was not made by `model`.
    fn count_stale(&self, model: &str) -> impl Future<Output = Result<u64, KnowledgeError>> + Send;

    /// Starts the refresh job for `target_model`, or resumes the one that
    /// is running (one per model at a time).
    fn refresh_start(
        &self,
        target_model: &str,
    ) -> impl Future<Output = Result<RefreshJobState, KnowledgeError>> + Send;

    /// The next `limit` active rows not embedded by `target_model`, after
    /// `cursor` in id order.
    fn refresh_batch(
        &self,
        target_model: &str,
        cursor: Option<Uuid>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<StaleRow>, KnowledgeError>> + Send;

    /// Stores a batch's new embeddings and moves the job's cursor from
    /// `from` to `to`, atomically; rows whose content changed since the
    /// batch was read are left alone. If the cursor is no longer at `from`
    /// (another worker committed this batch), writes nothing.
    fn refresh_commit(
        &self,
        job: &RefreshJobState,
        from: Option<Uuid>,
        to: Uuid,
        updates: &[EmbeddingUpdate],
    ) -> impl Future<Output = Result<BatchCommit, KnowledgeError>> + Send;

    /// Marks the job completed.
    fn refresh_finish(
        &self,
        job: &RefreshJobState,
    ) -> impl Future<Output = Result<(), KnowledgeError>> + Send;

    /// Records a failure on the running job (it stays resumable).
    fn refresh_failed(
        &self,
        job: &RefreshJobState,
        error: &str,
    ) -> impl Future<Output = Result<(), KnowledgeError>> + Send;
}

/// A running embedding refresh job, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RefreshJobState {
    /// The job's id.
    pub job_id: Uuid,
    /// The model rows are re-embedded with.
    pub target_model: String,
    /// Rows to re-embed, counted when the job started.
    pub total: u64,
    /// Rows re-embedded so far.
    pub done: u64,
    /// The id of the last row processed (`None`: not started).
    pub cursor: Option<Uuid>,
    /// Whether the job was already running (resumed rather than started).
    pub resumed: bool,
}

impl RefreshJobState {
    /// A job state (for backends).
    pub fn new(
        job_id: Uuid,
        target_model: String,
        total: u64,
        done: u64,
        cursor: Option<Uuid>,
        resumed: bool,
    ) -> Self {
        RefreshJobState {
            job_id,
            target_model,
            total,
            done,
            cursor,
            resumed,
        }
    }
}

/// A row the refresh job has to re-embed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaleRow {
    /// The row.
    pub id: Uuid,
    /// Its text.
    pub content: String,
    /// Its content hash when read (the update is skipped if it changed).
    pub content_hash: String,
}

/// A new embedding for a row.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddingUpdate {
    /// The row.
    pub id: Uuid,
    /// The content hash the embedding was computed from.
    pub content_hash: String,
    /// The vector.
    pub vector: Vec<f32>,
}

/// What [`KnowledgeBase::refresh_commit`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BatchCommit {
    /// The batch is stored.
    Committed {
        /// Rows updated (rows changed meanwhile are skipped).
        updated: u64,
        /// The job's `done` afterwards.
        done: u64,
    },
    /// Another worker had moved the cursor; nothing was written.
    Superseded {
        /// The job's cursor now.
        cursor: Option<Uuid>,
        /// The job's `done` now.
        done: u64,
    },
}

// ---------------------------------------------------------------------------
// The write interface of backends
// ---------------------------------------------------------------------------

/// A stored embedding.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEmbedding {
    /// The model that made it.
    pub model: String,
    /// The vector.
    pub vector: Vec<f32>,
    /// When.
    pub embedded_at: DateTime<Utc>,
}

/// A row as a backend stores it (what [`KnowledgeWriter`] reads and
/// writes).
#[derive(Debug, Clone, PartialEq)]
pub struct ChunkRow {
    /// The row's id.
    pub id: Uuid,
    /// The document's anchor row, `None` for the anchor.
    pub parent_id: Option<Uuid>,
    /// The document's fields.
    pub document: DocumentMeta,
    /// The chunk's text.
    pub content: String,
    /// See [`KnowledgeEntry::content_hash`].
    pub content_hash: String,
    /// Position in the document.
    pub chunk_index: u32,
    /// Chunks in the document.
    pub chunk_total: u32,
    /// Row version.
    pub version: u32,
    /// Active or retired.
    pub is_active: bool,
    /// The embedding.
    pub embedding: Option<StoredEmbedding>,
}

impl ChunkRow {
    /// The document this row belongs to.
    pub fn document_id(&self) -> Uuid {
        self.parent_id.unwrap_or(self.id)
    }
}

/// One write of an ingest, applied in order.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum RowOp {
    /// Delete a row (its content left the document).
    Delete(Uuid),
    /// Insert the row, or replace every column of the row with its id.
    Upsert(Box<ChunkRow>),
    /// Mark a row retired (`is_active = false`, version + 1).
    Deactivate(Uuid),
}

/// The write side of a knowledge base, as the [`Ingestor`] uses it: read a
/// document's rows, then apply row operations. Implemented by each backend
/// over whatever makes its writes atomic (the Postgres one over a
/// connection inside a transaction, so a projection's writes commit with
/// its checkpoint).
pub trait KnowledgeWriter: Send {
    /// Every row of `document_id` (its anchor and the rows whose parent it
    /// is), with their embeddings.
    fn document_rows(
        &mut self,
        document_id: Uuid,
    ) -> impl Future<Output = Result<Vec<ChunkRow>, KnowledgeError>> + Send;

    /// Applies `ops` in order. Backends with transactions apply all or
    /// none.
    fn apply(
        &mut self,
        document_id: Uuid,
        ops: Vec<RowOp>,
    ) -> impl Future<Output = Result<(), KnowledgeError>> + Send;
}

/// Checks that `model` can name an embedding model: not empty, at most 200
/// characters, no NUL or other control characters.
pub fn validate_model_name(model: &str) -> Result<(), KnowledgeError> {
    let reason = if model.is_empty() {
        Some("it is empty")
    } else if model.chars().count() > 200 {
        Some("it is longer than 200 characters")
    } else if model.chars().any(char::is_control) {
        Some("it contains control characters")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(KnowledgeError::InvalidModel {
            model: model.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}
