//! The in-memory knowledge base: exact search, the embedded default.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::base::{BatchCommit, EmbeddingUpdate, KnowledgeBase, RefreshJobState, StaleRow};
use super::document::DocumentEvent;
use super::embedder::Embedder;
use super::error::KnowledgeError;
use super::events::KnowledgeEvent;
use super::hashing::cosine_similarity;
use super::ingest::{ErasureReport, IngestReport, Ingestor};
use super::search::{KnowledgeEntry, SearchHit, SearchQuery};
use super::writer::{ChunkRow, KnowledgeWriter, RowOp, StoredEmbedding};

/// A knowledge base in memory, with exact (brute-force) cosine search and
/// the same semantics as the Postgres one: for examples, tests and small
/// corpora. Cloning shares the data.
#[derive(Debug, Clone, Default)]
pub struct InMemoryKnowledgeBase {
    state: Arc<Mutex<State>>,
}

#[derive(Debug, Default)]
struct State {
    /// Ordered by id, as the refresh job walks them.
    rows: BTreeMap<Uuid, Stored>,
    hashes: HashMap<String, Uuid>,
    jobs: HashMap<Uuid, Job>,
}

#[derive(Debug, Clone)]
struct Stored {
    row: ChunkRow,
    created_at: DateTime<Utc>,
}

#[derive(Debug, Clone)]
struct Job {
    target_model: String,
    total: u64,
    done: u64,
    cursor: Option<Uuid>,
    running: bool,
    error: Option<String>,
}

impl InMemoryKnowledgeBase {
    /// An empty knowledge base.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // every mutation below validates first and then changes the state
        // without a possible panic in between
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Rows stored (active or not).
    pub fn len(&self) -> usize {
        self.lock().rows.len()
    }

    /// Whether nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A writer for [`Ingestor::apply`] (what the in-memory projection
    /// uses).
    pub fn writer(&self) -> InMemoryKnowledgeWriter<'_> {
        InMemoryKnowledgeWriter { kb: self }
    }

    /// The last error recorded on the running refresh job of `model`.
    pub fn refresh_error(&self, model: &str) -> Option<String> {
        self.lock()
            .jobs
            .values()
            .find(|j| j.running && j.target_model == model)
            .and_then(|j| j.error.clone())
    }

    fn apply_ops(&self, document_id: Uuid, ops: Vec<RowOp>) -> Result<(), KnowledgeError> {
        let mut state = self.lock();
        // stage the changes over the stored rows, validate each, then commit
        // them all at once
        let mut hashes = state.hashes.clone();
        let mut staged: HashMap<Uuid, Option<Stored>> = HashMap::new();
        let now = Utc::now();
        for op in ops {
            match op {
                RowOp::Delete(id) => {
                    // children go with their anchor, as in Postgres
                    let mut doomed = vec![id];
                    doomed.extend(
                        state
                            .rows
                            .keys()
                            .chain(staged.keys())
                            .filter(|c| {
                                current(&staged, &state, **c)
                                    .is_some_and(|s| s.row.parent_id == Some(id))
                            })
                            .copied(),
                    );
                    for d in doomed {
                        if let Some(s) = current(&staged, &state, d) {
                            if hashes.get(&s.row.content_hash) == Some(&d) {
                                hashes.remove(&s.row.content_hash);
                            }
                        }
                        staged.insert(d, None);
                    }
                }
                RowOp::Upsert(row) => {
                    if let Some(parent) = row.parent_id {
                        if current(&staged, &state, parent).is_none() {
                            return Err(KnowledgeError::Conflict { document_id });
                        }
                    }
                    let previous = current(&staged, &state, row.id);
                    if let Some(p) = &previous {
                        if hashes.get(&p.row.content_hash) == Some(&row.id) {
                            hashes.remove(&p.row.content_hash);
                        }
                    }
                    if hashes
                        .get(&row.content_hash)
                        .is_some_and(|owner| *owner != row.id)
                    {
                        return Err(KnowledgeError::Conflict { document_id });
                    }
                    if let Some(e) = &row.embedding {
                        check_dimensions(&state, &e.model, e.vector.len(), row.id)?;
                    }
                    hashes.insert(row.content_hash.clone(), row.id);
                    let created_at = previous.map_or(now, |p| p.created_at);
                    staged.insert(
                        row.id,
                        Some(Stored {
                            row: *row,
                            created_at,
                        }),
                    );
                }
                RowOp::Deactivate(id) => {
                    if let Some(mut s) = current(&staged, &state, id) {
                        s.row.is_active = false;
                        s.row.version += 1;
                        staged.insert(id, Some(s));
                    }
                }
            }
        }
        for (id, row) in staged {
            match row {
                Some(r) => {
                    state.rows.insert(id, r);
                }
                None => {
                    state.rows.remove(&id);
                }
            }
        }
        state.hashes = hashes;
        Ok(())
    }
}

impl State {
    /// Removes the rows of the knowledge-base tenant `tenant` (a tenant's
    /// rebuild of the knowledge projection).
    fn remove_tenant(&mut self, tenant: &str) {
        let doomed: Vec<Uuid> = self
            .rows
            .iter()
            .filter(|(_, s)| s.row.document.tenant_id.as_deref() == Some(tenant))
            .map(|(id, _)| *id)
            .collect();
        for id in doomed {
            if let Some(s) = self.rows.remove(&id) {
                if self.hashes.get(&s.row.content_hash) == Some(&id) {
                    self.hashes.remove(&s.row.content_hash);
                }
            }
        }
    }
}

/// A row as staged so far, else as stored.
fn current(staged: &HashMap<Uuid, Option<Stored>>, state: &State, id: Uuid) -> Option<Stored> {
    match staged.get(&id) {
        Some(s) => s.clone(),
        None => state.rows.get(&id).cloned(),
    }
}

/// Vectors of one model all have the same length (what pgvector's
/// per-model index enforces in Postgres).
fn check_dimensions(
    state: &State,
    model: &str,
    len: usize,
    except: Uuid,
) -> Result<(), KnowledgeError> {
    let other = state.rows.values().find_map(|s| {
        s.row
            .embedding
            .as_ref()
            .filter(|e| e.model == model && s.row.id != except)
            .map(|e| e.vector.len())
    });
    match other {
        Some(expected) if expected != len => Err(KnowledgeError::Dimensions {
            model: model.to_owned(),
            expected,
            actual: len,
        }),
        _ => Ok(()),
    }
}

fn entry(s: &Stored) -> KnowledgeEntry {
    let r = &s.row;
    KnowledgeEntry {
        id: r.id,
        document_id: r.document_id(),
        parent_id: r.parent_id,
        document: r.document.clone(),
        content: r.content.clone(),
        content_hash: r.content_hash.clone(),
        chunk_index: r.chunk_index,
        chunk_total: r.chunk_total,
        version: r.version,
        is_active: r.is_active,
        embedding_model: r.embedding.as_ref().map(|e| e.model.clone()),
        embedded_at: r.embedding.as_ref().map(|e| e.embedded_at),
    }
}

/// The [`KnowledgeWriter`] of the in-memory knowledge base: each
/// [`apply`](KnowledgeWriter::apply) is atomic.
#[derive(Debug)]
pub struct InMemoryKnowledgeWriter<'a> {
    kb: &'a InMemoryKnowledgeBase,
}

impl KnowledgeWriter for InMemoryKnowledgeWriter<'_> {
    fn document_rows(
        &mut self,
        document_id: Uuid,
    ) -> impl Future<Output = Result<Vec<ChunkRow>, KnowledgeError>> + Send {
        let rows = self
            .kb
            .lock()
            .rows
            .values()
            .filter(|s| s.row.document_id() == document_id)
            .map(|s| s.row.clone())
            .collect();
        std::future::ready(Ok(rows))
    }

    fn subject_rows(
        &mut self,
        subject: &str,
    ) -> impl Future<Output = Result<Vec<KnowledgeEntry>, KnowledgeError>> + Send {
        let rows = self
            .kb
            .lock()
            .rows
            .values()
            .filter(|s| s.row.document.subject.as_deref() == Some(subject))
            .map(entry)
            .collect();
        std::future::ready(Ok(rows))
    }

    fn apply(
        &mut self,
        document_id: Uuid,
        ops: Vec<RowOp>,
    ) -> impl Future<Output = Result<(), KnowledgeError>> + Send {
        std::future::ready(self.kb.apply_ops(document_id, ops))
    }
}

impl KnowledgeBase for InMemoryKnowledgeBase {
    async fn ingest<E: Embedder>(
        &self,
        ingestor: &Ingestor<E>,
        event: &DocumentEvent,
    ) -> Result<IngestReport, KnowledgeError> {
        ingestor.apply(&mut self.writer(), event).await
    }

    async fn forget_subject<E: Embedder>(
        &self,
        ingestor: &Ingestor<E>,
        subject: &str,
    ) -> Result<ErasureReport, KnowledgeError> {
        ingestor.forget_subject(&mut self.writer(), subject).await
    }

    fn search(
        &self,
        model: &str,
        vector: &[f32],
        query: &SearchQuery,
    ) -> impl Future<Output = Result<Vec<SearchHit>, KnowledgeError>> + Send {
        let started = std::time::Instant::now();
        let result = (|| {
            let state = self.lock();
            let mut hits = Vec::new();
            for s in state.rows.values() {
                let Some(e) = s.row.embedding.as_ref().filter(|e| e.model == model) else {
                    continue;
                };
                if !s.row.is_active || !query.admits(&s.row.document) {
                    continue;
                }
                if e.vector.len() != vector.len() {
                    return Err(KnowledgeError::Dimensions {
                        model: model.to_owned(),
                        expected: e.vector.len(),
                        actual: vector.len(),
                    });
                }
                let similarity = cosine_similarity(&e.vector, vector);
                if query.min_similarity.is_some_and(|m| similarity < m) {
                    continue;
                }
                hits.push((similarity, s));
            }
            hits.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.row.id.cmp(&b.1.row.id)));
            Ok(hits
                .into_iter()
                .take(query.k)
                .map(|(similarity, s)| SearchHit {
                    entry: entry(s),
                    similarity,
                })
                .collect())
        })();
        crate::metrics::record_knowledge_search("memory", started);
        std::future::ready(result)
    }

    fn document(
        &self,
        document_id: Uuid,
    ) -> impl Future<Output = Result<Vec<KnowledgeEntry>, KnowledgeError>> + Send {
        let mut entries: Vec<KnowledgeEntry> = self
            .lock()
            .rows
            .values()
            .filter(|s| s.row.document_id() == document_id)
            .map(entry)
            .collect();
        entries.sort_by_key(|e| e.chunk_index);
        std::future::ready(Ok(entries))
    }

    fn count_stale(&self, model: &str) -> impl Future<Output = Result<u64, KnowledgeError>> + Send {
        let n = self
            .lock()
            .rows
            .values()
            .filter(|s| s.row.is_active && !is_of(&s.row, model))
            .count();
        std::future::ready(Ok(n as u64))
    }

    fn refresh_start(
        &self,
        target_model: &str,
    ) -> impl Future<Output = Result<RefreshJobState, KnowledgeError>> + Send {
        let mut state = self.lock();
        let running = state
            .jobs
            .iter()
            .find(|(_, j)| j.running && j.target_model == target_model)
            .map(|(id, j)| {
                RefreshJobState::new(*id, j.target_model.clone(), j.total, j.done, j.cursor, true)
            });
        let job = match running {
            Some(job) => job,
            None => {
                let total = state
                    .rows
                    .values()
                    .filter(|s| s.row.is_active && !is_of(&s.row, target_model))
                    .count() as u64;
                let id = Uuid::now_v7();
                state.jobs.insert(
                    id,
                    Job {
                        target_model: target_model.to_owned(),
                        total,
                        done: 0,
                        cursor: None,
                        running: true,
                        error: None,
                    },
                );
                RefreshJobState::new(id, target_model.to_owned(), total, 0, None, false)
            }
        };
        std::future::ready(Ok(job))
    }

    fn refresh_batch(
        &self,
        target_model: &str,
        cursor: Option<Uuid>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<StaleRow>, KnowledgeError>> + Send {
        let state = self.lock();
        let range = match cursor {
            Some(c) => state
                .rows
                .range((std::ops::Bound::Excluded(c), std::ops::Bound::Unbounded)),
            None => state.rows.range(..),
        };
        let rows = range
            .map(|(_, s)| &s.row)
            .filter(|r| r.is_active && !is_of(r, target_model))
            .take(limit)
            .map(|r| StaleRow {
                id: r.id,
                content: r.content.clone(),
                content_hash: r.content_hash.clone(),
            })
            .collect();
        std::future::ready(Ok(rows))
    }

    fn refresh_commit(
        &self,
        job: &RefreshJobState,
        from: Option<Uuid>,
        to: Uuid,
        updates: &[EmbeddingUpdate],
    ) -> impl Future<Output = Result<BatchCommit, KnowledgeError>> + Send {
        let result = (|| {
            let mut state = self.lock();
            let Some(stored) = state.jobs.get(&job.job_id).filter(|j| j.running).cloned() else {
                return Ok(BatchCommit::Superseded {
                    cursor: job.cursor,
                    done: job.done,
                });
            };
            if stored.cursor != from {
                return Ok(BatchCommit::Superseded {
                    cursor: stored.cursor,
                    done: stored.done,
                });
            }
            if let Some(u) = updates.first() {
                check_dimensions(&state, &job.target_model, u.vector.len(), u.id)?;
            }
            let now = Utc::now();
            let mut updated = 0;
            for u in updates {
                if let Some(s) = state.rows.get_mut(&u.id) {
                    if s.row.content_hash == u.content_hash && !is_of(&s.row, &job.target_model) {
                        s.row.embedding = Some(StoredEmbedding {
                            model: job.target_model.clone(),
                            vector: u.vector.clone(),
                            embedded_at: now,
                        });
                        updated += 1;
                    }
                }
            }
            let j = state
                .jobs
                .get_mut(&job.job_id)
                .ok_or(KnowledgeError::Conflict {
                    document_id: job.job_id,
                })?;
            j.cursor = Some(to);
            j.done += updated;
            Ok(BatchCommit::Committed {
                updated,
                done: j.done,
            })
        })();
        std::future::ready(result)
    }

    fn refresh_finish(
        &self,
        job: &RefreshJobState,
    ) -> impl Future<Output = Result<(), KnowledgeError>> + Send {
        if let Some(j) = self.lock().jobs.get_mut(&job.job_id) {
            j.running = false;
        }
        std::future::ready(Ok(()))
    }

    fn refresh_failed(
        &self,
        job: &RefreshJobState,
        error: &str,
    ) -> impl Future<Output = Result<(), KnowledgeError>> + Send {
        if let Some(j) = self.lock().jobs.get_mut(&job.job_id) {
            j.error = Some(error.to_owned());
        }
        std::future::ready(Ok(()))
    }
}

fn is_of(row: &ChunkRow, model: &str) -> bool {
    row.embedding.as_ref().is_some_and(|e| e.model == model)
}

/// The knowledge base projection on the in-memory backend: feeds an
/// [`InMemoryKnowledgeBase`] from the [`KnowledgeEvent`]s in the log
/// (documents, and `subject.forgotten`, which erases the subject), through
/// the same [`Ingestor`] path as a direct ingest.
///
/// Transient failures (the embedding service, the database) are reported
/// as [dependency](crate::handler::FailureKind::Dependency) failures, so the runner
/// retries them and never parks the event; the others (an empty document)
/// as failures of the event.
#[derive(Debug)]
pub struct InMemoryKnowledgeProjection<E> {
    name: String,
    kb: InMemoryKnowledgeBase,
    ingestor: Ingestor<E>,
}

impl<E: Embedder> InMemoryKnowledgeProjection<E> {
    /// A projection named `name` writing to `kb` through `ingestor`.
    pub fn new(name: impl Into<String>, kb: InMemoryKnowledgeBase, ingestor: Ingestor<E>) -> Self {
        InMemoryKnowledgeProjection {
            name: name.into(),
            kb,
            ingestor,
        }
    }

    /// The knowledge base it writes.
    pub fn knowledge_base(&self) -> &InMemoryKnowledgeBase {
        &self.kb
    }
}

impl<E: Embedder + 'static> crate::Projection for InMemoryKnowledgeProjection<E> {
    type Event = KnowledgeEvent;
    type Conn = crate::projection::InMemoryConn;

    fn name(&self) -> &str {
        &self.name
    }

    async fn apply(
        &self,
        _tx: &mut crate::projection::InMemoryConn,
        event: &crate::Envelope<KnowledgeEvent>,
    ) -> Result<(), crate::HandlerError> {
        self.ingestor
            .handle_in(&mut self.kb.writer(), &event.payload, &event.tenant_id)
            .await
            .map_err(KnowledgeError::into_handler_error)
    }

    /// The default tenant's rebuild clears the whole knowledge base (as
    /// before tenants); another tenant's removes the documents of that
    /// tenant (`DocumentMeta::tenant_id`) only.
    fn reset(
        &self,
        _tx: &mut crate::projection::InMemoryConn,
        tenant: &crate::TenantId,
    ) -> impl Future<Output = Result<(), crate::HandlerError>> + Send {
        let mut state = self.kb.lock();
        if tenant.as_str() == crate::TenantId::DEFAULT_NAME {
            state.rows.clear();
            state.hashes.clear();
        } else {
            state.remove_tenant(tenant.as_str());
        }
        drop(state);
        std::future::ready(Ok(()))
    }
}
