//! The embedding refresh job: re-embed the rows of an old model, in
//! batches, resumably.
//!
//! When to run it is the application's call, not the framework's: see
//! [Scheduling the refresh](super#scheduling-the-refresh).

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::base::{BatchCommit, EmbeddingUpdate, KnowledgeBase};
use super::embedder::{check_vectors, Embedder};
use super::error::{validate_model_name, KnowledgeError};

/// Progress of a refresh, after each batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RefreshProgress {
    /// The job.
    pub job_id: Uuid,
    /// The model rows are re-embedded with.
    pub model: String,
    /// Rows re-embedded by the job so far (earlier runs included).
    pub done: u64,
    /// Rows the job had to re-embed when it started.
    pub total: u64,
    /// Rows re-embedded by this run.
    pub refreshed: u64,
    /// Batches committed by this run.
    pub batches: u64,
}

/// What a refresh run did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RefreshOutcome {
    /// The job.
    pub job_id: Uuid,
    /// Rows re-embedded by this run.
    pub refreshed: u64,
    /// Rows the job had to re-embed when it started.
    pub total: u64,
    /// Rows the job re-embedded in all its runs.
    pub done: u64,
    /// Whether this run resumed a job an earlier run left unfinished.
    pub resumed: bool,
    /// Active rows still embedded by another model when the job finished:
    /// written during the run by an ingestor still on the old model. Zero
    /// once every writer uses the new model; otherwise run the job again.
    pub stale_left: u64,
}

/// Re-embeds every active row whose embedding is not of the embedder's
/// model, `batch_size` rows at a time (default 100).
///
/// Each batch is read in id order after the job's cursor, embedded, and
/// stored together with the moved cursor and progress in one atomic step,
/// so a run that crashes or is dropped resumes after its last stored batch:
/// run it again and it picks the job up (`resumed` in the outcome). A row
/// that is refreshed is no longer stale, so even a new job never redoes it.
/// Searches keep working throughout: each batch is a short write; rows not
/// yet refreshed are found by searches with the old model, refreshed ones
/// by searches with the new one.
///
/// Progress goes to the callback and to `tracing` (info) after every batch,
/// and to the [`EMBEDDING_REFRESH_ROWS_TOTAL`](crate::metrics::EMBEDDING_REFRESH_ROWS_TOTAL)
/// and [`EMBEDDING_REFRESH_PENDING_ROWS`](crate::metrics::EMBEDDING_REFRESH_PENDING_ROWS)
/// metrics.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
/// use annals::knowledge::*;
///
/// let kb = InMemoryKnowledgeBase::new();
/// let old = Ingestor::new(HashingEmbedder::new(64));
/// # let meta = DocumentMeta { source_type: "faq".into(), title: "t".into(), tenant_id: None, language: None, tags: vec![], metadata: Default::default(), subject: None };
/// # kb.ingest(&old, &DocumentEvent::Added(Document { document_id: uuid::Uuid::now_v7(), meta, content: "hello".into() })).await?;
/// // the configured model changes
/// let refresh = EmbeddingRefresh::new(HashingEmbedder::new(64).with_seed(2)).batch_size(100);
/// let outcome = refresh.run(&kb, |p| println!("{}/{}", p.done, p.total)).await?;
/// assert_eq!((outcome.refreshed, outcome.total), (1, 1));
/// # Ok::<(), KnowledgeError>(())
/// # }).unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct EmbeddingRefresh<E> {
    embedder: E,
    batch_size: usize,
}

/// Rows per batch by default.
pub const DEFAULT_REFRESH_BATCH: usize = 100;

impl<E: Embedder> EmbeddingRefresh<E> {
    /// A refresh to `embedder`'s model.
    pub fn new(embedder: E) -> Self {
        EmbeddingRefresh {
            embedder,
            batch_size: DEFAULT_REFRESH_BATCH,
        }
    }

    /// Rows per batch (at least 1).
    pub fn batch_size(mut self, rows: usize) -> Self {
        self.batch_size = rows.max(1);
        self
    }

    /// The embedder.
    pub fn embedder(&self) -> &E {
        &self.embedder
    }

    /// Runs (or resumes) the job to the end. An embedding or database error
    /// stops the run and is returned; the job stays resumable.
    pub async fn run<K: KnowledgeBase>(
        &self,
        kb: &K,
        mut on_progress: impl FnMut(&RefreshProgress) + Send,
    ) -> Result<RefreshOutcome, KnowledgeError> {
        let model = self.embedder.model();
        validate_model_name(model)?;
        let mut job = kb.refresh_start(model).await?;
        tracing::info!(job_id = %job.job_id, model, total = job.total, done = job.done, resumed = job.resumed, "embedding refresh started");
        let mut refreshed = 0u64;
        let mut batches = 0u64;
        loop {
            let rows = kb.refresh_batch(model, job.cursor, self.batch_size).await?;
            let Some(last) = rows.last().map(|r| r.id) else {
                break;
            };
            let texts: Vec<&str> = rows.iter().map(|r| r.content.as_str()).collect();
            let vectors = match self.embedder.embed(&texts).await.and_then(|v| {
                check_vectors(model, self.embedder.dimensions(), texts.len(), &v).map(|()| v)
            }) {
                Ok(v) => v,
                Err(e) => {
                    let _ = kb.refresh_failed(&job, &e.to_string()).await;
                    tracing::warn!(job_id = %job.job_id, model, error = %e, "embedding refresh stopped; run it again to resume");
                    return Err(e.into());
                }
            };
            let updates: Vec<EmbeddingUpdate> = rows
                .into_iter()
                .zip(vectors)
                .map(|(r, vector)| EmbeddingUpdate {
                    id: r.id,
                    content_hash: r.content_hash,
                    vector,
                })
                .collect();
            match kb.refresh_commit(&job, job.cursor, last, &updates).await? {
                BatchCommit::Committed { updated, done } => {
                    refreshed += updated;
                    batches += 1;
                    job.cursor = Some(last);
                    job.done = done;
                    crate::metrics::record_refresh_progress(
                        model,
                        updated,
                        job.total.saturating_sub(done),
                    );
                }
                BatchCommit::Superseded { cursor, done } => {
                    // another worker stored this batch first
                    job.cursor = cursor;
                    job.done = done;
                }
            }
            let progress = RefreshProgress {
                job_id: job.job_id,
                model: model.to_owned(),
                done: job.done,
                total: job.total,
                refreshed,
                batches,
            };
            tracing::info!(job_id = %job.job_id, model, done = job.done, total = job.total, "embedding refresh progress");
            on_progress(&progress);
        }
        kb.refresh_finish(&job).await?;
        let stale_left = kb.count_stale(model).await?;
        crate::metrics::record_refresh_progress(model, 0, stale_left);
        if stale_left > 0 {
            tracing::warn!(job_id = %job.job_id, model, stale_left, "embedding refresh completed, but rows of another model were written meanwhile; switch every ingestor to the new model and run the refresh again");
        } else {
            tracing::info!(job_id = %job.job_id, model, refreshed, done = job.done, total = job.total, "embedding refresh completed");
        }
        Ok(RefreshOutcome {
            job_id: job.job_id,
            refreshed,
            total: job.total,
            done: job.done,
            resumed: job.resumed,
            stale_left,
        })
    }
}
