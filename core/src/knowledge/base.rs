//! The [`KnowledgeBase`] trait every backend implements, and the state of
//! its embedding refresh jobs.

use std::future::Future;

use uuid::Uuid;

use super::document::DocumentEvent;
use super::embedder::{EmbedError, Embedder};
use super::error::KnowledgeError;
use super::ingest::{ErasureReport, IngestReport, Ingestor};
use super::search::{KnowledgeEntry, SearchHit, SearchQuery};

/// A knowledge base: documents in, similarity search out.
///
/// Backends: [`InMemoryKnowledgeBase`](super::InMemoryKnowledgeBase) (exact
/// search, the embedded default) and `annals::postgres::knowledge::PgKnowledgeBase`
/// (pgvector, HNSW).
pub trait KnowledgeBase: Send + Sync {
    /// Applies one document event through `ingestor` (chunk, hash, skip
    /// unchanged, embed, write), atomically.
    fn ingest<E: Embedder>(
        &self,
        ingestor: &Ingestor<E>,
        event: &DocumentEvent,
    ) -> impl Future<Output = Result<IngestReport, KnowledgeError>> + Send;

    /// Erases a subject ([`DocumentMeta::subject`](super::DocumentMeta::subject)):
    /// deletes every row (active or retired) of its documents, and removes
    /// their texts' embeddings from the caches of `ingestor`'s embedder
    /// (see [`Ingestor::forget_subject`]); on Postgres in one transaction,
    /// in memory document by document. Afterwards no search
    /// finds them and no row holds their text or vectors; other subjects'
    /// documents, and documents of nobody's, are untouched.
    ///
    /// The knowledge base projections call it when a `subject.forgotten`
    /// event reaches them (`PersonalStore::forget` records one), so an
    /// application that runs one need not call it itself. A subject id out
    /// of the limits (empty, NUL, longer than
    /// [`MAX_SUBJECT_BYTES`](crate::store::limits::MAX_SUBJECT_BYTES)) is
    /// [`KnowledgeError::InvalidInput`] naming the field `subject`.
    fn forget_subject<E: Embedder>(
        &self,
        ingestor: &Ingestor<E>,
        subject: &str,
    ) -> impl Future<Output = Result<ErasureReport, KnowledgeError>> + Send;

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
