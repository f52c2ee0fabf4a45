//! The one ingest code path: chunk, hash, skip what is unchanged, embed
//! the rest, write.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use chrono::Utc;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::cache::{hex, TextHash};
use super::chunk::Chunker;
use super::document::{Document, DocumentEvent};
use super::embedder::{check_vectors, Embedder};
use super::error::{validate_model_name, KnowledgeError};
use super::events::KnowledgeEvent;
use super::writer::{ChunkRow, KnowledgeWriter, RowOp, StoredEmbedding};

/// The content hash of a chunk: SHA-256 (hex) of the document id's 16 bytes
/// followed by the chunk's UTF-8 text.
///
/// The knowledge base stores each hash once, so the same text is stored
/// once per document: a repeated chunk is kept at its first position, and
/// re-ingesting unchanged text writes nothing. The document id is part of
/// the hash on purpose: documents come and go independently (one retired
/// must not take another's text with it) and a tenant's document never
/// shares a row with another tenant's. The same text in two documents is
/// still embedded only once when the embedder is a
/// [`CachedEmbedder`](super::CachedEmbedder), whose key is the text alone.
pub fn chunk_hash(document_id: Uuid, content: &str) -> String {
    let mut h = Sha256::new();
    h.update(document_id.as_bytes());
    h.update(content.as_bytes());
    hex(&h.finalize())
}

/// What one ingest did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct IngestReport {
    /// The document.
    pub document_id: Uuid,
    /// Chunks the content was split into (repeats included).
    pub chunks: usize,
    /// Rows written with a new embedding: new or changed text, or text
    /// whose stored embedding is of another model.
    pub embedded: usize,
    /// Rows left exactly as they were.
    pub unchanged: usize,
    /// Rows whose text was kept but whose other fields (position, title,
    /// tags, ...) were rewritten, without embedding.
    pub updated: usize,
    /// Rows deleted (their text left the document).
    pub deleted: usize,
    /// Rows marked retired.
    pub retired: usize,
    /// Chunks that repeat an earlier chunk of the same document (stored
    /// once).
    pub repeated: usize,
}

impl IngestReport {
    /// Whether the ingest wrote nothing.
    pub fn is_noop(&self) -> bool {
        self.embedded == 0 && self.updated == 0 && self.deleted == 0 && self.retired == 0
    }
}

/// What erasing a subject did
/// ([`KnowledgeBase::forget_subject`](super::KnowledgeBase::forget_subject)).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ErasureReport {
    /// The subject.
    pub subject: String,
    /// The documents whose rows were deleted, in id order.
    pub documents: Vec<Uuid>,
    /// Rows deleted (active or retired).
    pub rows: usize,
    /// Embeddings removed from the embedder's caches (every cache level
    /// counts its own).
    pub cache_entries: u64,
}

impl ErasureReport {
    /// Whether there was nothing of the subject to erase.
    pub fn is_noop(&self) -> bool {
        self.rows == 0 && self.cache_entries == 0
    }
}

/// The ingest code path, shared by every backend and by the projection:
/// chunk the document, hash each chunk, compare with the stored rows, embed
/// only new or changed text (through whatever embedder it holds: wrap it in
/// a [`CachedEmbedder`](super::CachedEmbedder)), write.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
/// use annals::knowledge::*;
///
/// let kb = InMemoryKnowledgeBase::new();
/// let ingestor = Ingestor::new(HashingEmbedder::new(64));
/// let doc = Document {
///     document_id: uuid::Uuid::now_v7(),
///     meta: DocumentMeta {
///         source_type: "faq".into(),
///         title: "Opening hours".into(),
///         tenant_id: Some("tenant-1".into()),
///         language: Some("en".into()),
///         tags: vec![],
///         metadata: Default::default(),
///         subject: None,
///     },
///     content: "We are open Monday to Friday, 8 to 20.".into(),
/// };
/// let first = kb.ingest(&ingestor, &DocumentEvent::Added(doc.clone())).await?;
/// assert_eq!(first.embedded, 1);
/// let again = kb.ingest(&ingestor, &DocumentEvent::Updated(doc)).await?;
/// assert!(again.is_noop()); // unchanged: nothing embedded, nothing written
/// # Ok::<(), KnowledgeError>(())
/// # }).unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct Ingestor<E> {
    embedder: E,
    chunker: Chunker,
}

impl<E: Embedder> Ingestor<E> {
    /// An ingestor with the default [`Chunker`].
    pub fn new(embedder: E) -> Self {
        Ingestor {
            embedder,
            chunker: Chunker::default(),
        }
    }

    /// Uses `chunker` to split documents.
    pub fn with_chunker(mut self, chunker: Chunker) -> Self {
        self.chunker = chunker;
        self
    }

    /// The embedder.
    pub fn embedder(&self) -> &E {
        &self.embedder
    }

    /// The chunker.
    pub fn chunker(&self) -> &Chunker {
        &self.chunker
    }

    /// Applies one event through `writer`: what a projection calls per
    /// event, inside its transaction.
    pub async fn apply<W: KnowledgeWriter>(
        &self,
        writer: &mut W,
        event: &DocumentEvent,
    ) -> Result<IngestReport, KnowledgeError> {
        match event {
            DocumentEvent::Added(doc) | DocumentEvent::Updated(doc) => {
                self.upsert(writer, doc).await
            }
            DocumentEvent::Retired(r) => {
                let rows = writer.document_rows(r.document_id).await?;
                let ops: Vec<RowOp> = rows
                    .iter()
                    .filter(|row| row.is_active)
                    .map(|row| RowOp::Deactivate(row.id))
                    .collect();
                let report = IngestReport {
                    document_id: r.document_id,
                    retired: ops.len(),
                    unchanged: rows.len() - ops.len(),
                    ..IngestReport::default()
                };
                if !ops.is_empty() {
                    writer.apply(r.document_id, ops).await?;
                }
                Ok(report)
            }
        }
    }

    /// Applies one event of the knowledge base projections, through
    /// `writer`: a document event is [applied](Self::apply) (a personal
    /// document under its subject, or skipped when it reads as forgotten),
    /// a `subject.forgotten` [erases the subject](Self::forget_subject).
    ///
    /// The event is the default tenant's: see [`handle_in`](Self::handle_in).
    pub async fn handle<W: KnowledgeWriter>(
        &self,
        writer: &mut W,
        event: &KnowledgeEvent,
    ) -> Result<(), KnowledgeError> {
        self.handle_in(writer, event, &crate::TenantId::default())
            .await
    }

    /// [`handle`](Self::handle) for an event of `tenant`'s log (what the
    /// knowledge base projections call, with the envelope's tenant). A
    /// `subject.forgotten` of a tenant other than the default erases the
    /// subject's documents of that tenant (`DocumentMeta::tenant_id`) only:
    /// the same subject id in another tenant is another person. The
    /// default tenant's erases every document of the subject, as before
    /// tenants.
    pub async fn handle_in<W: KnowledgeWriter>(
        &self,
        writer: &mut W,
        event: &KnowledgeEvent,
        tenant: &crate::TenantId,
    ) -> Result<(), KnowledgeError> {
        match event {
            KnowledgeEvent::Document(e) => self.apply(writer, e).await.map(drop),
            #[cfg(feature = "personal")]
            KnowledgeEvent::PersonalDocument(e) => match e.document_event() {
                Some(e) => self.apply(writer, &e).await.map(drop),
                // forgotten: its rows went (or go) with the subject
                None => Ok(()),
            },
            KnowledgeEvent::SubjectForgotten(f) => {
                let only = (tenant.as_str() != crate::TenantId::DEFAULT_NAME).then_some(tenant);
                self.forget_subject_of(writer, &f.subject, only)
                    .await
                    .map(drop)
            }
        }
    }

    /// Erases `subject` through `writer`: deletes every row of its
    /// documents (active and retired) and removes their texts' embeddings
    /// from the embedder's caches ([`Embedder::forget_cached`]), under
    /// the model of each row and the embedder's own.
    ///
    /// The caches go first: if one fails
    /// ([`KnowledgeError::Cache`], transient), no row was deleted yet, and
    /// the erasure can simply run again. A subject with nothing stored is
    /// a no-op. `subject` is checked like every subject id
    /// ([`check_subject`](crate::store::limits::check_subject)) before
    /// anything is read.
    pub async fn forget_subject<W: KnowledgeWriter>(
        &self,
        writer: &mut W,
        subject: &str,
    ) -> Result<ErasureReport, KnowledgeError> {
        self.forget_subject_of(writer, subject, None).await
    }

    /// [`forget_subject`](Self::forget_subject), limited to the documents
    /// of the knowledge-base tenant `only` when it is given.
    async fn forget_subject_of<W: KnowledgeWriter>(
        &self,
        writer: &mut W,
        subject: &str,
        only: Option<&crate::TenantId>,
    ) -> Result<ErasureReport, KnowledgeError> {
        crate::store::limits::check_subject(subject)?;
        let mut rows = writer.subject_rows(subject).await?;
        if let Some(tenant) = only {
            rows.retain(|r| r.document.tenant_id.as_deref() == Some(tenant.as_str()));
        }
        let own = self.embedder.model();
        let mut cached: BTreeMap<&str, BTreeSet<TextHash>> = BTreeMap::new();
        let mut documents: BTreeMap<Uuid, Vec<Uuid>> = BTreeMap::new();
        for row in &rows {
            let hash = TextHash::of(&row.content);
            cached.entry(own).or_default().insert(hash);
            if let Some(model) = row.embedding_model.as_deref() {
                cached.entry(model).or_default().insert(hash);
            }
            documents.entry(row.document_id).or_default().push(row.id);
        }
        let mut cache_entries = 0;
        if !rows.is_empty() {
            for (model, hashes) in cached {
                let hashes: Vec<TextHash> = hashes.into_iter().collect();
                cache_entries += self.embedder.forget_cached(model, &hashes).await?;
            }
        }
        for (document_id, ids) in &documents {
            // the anchor last: the other rows point at it
            let mut ops: Vec<RowOp> = ids
                .iter()
                .filter(|id| *id != document_id)
                .map(|id| RowOp::Delete(*id))
                .collect();
            if ids.contains(document_id) {
                ops.push(RowOp::Delete(*document_id));
            }
            writer.apply(*document_id, ops).await?;
        }
        Ok(ErasureReport {
            subject: subject.to_owned(),
            documents: documents.into_keys().collect(),
            rows: rows.len(),
            cache_entries,
        })
    }

    async fn upsert<W: KnowledgeWriter>(
        &self,
        writer: &mut W,
        doc: &Document,
    ) -> Result<IngestReport, KnowledgeError> {
        let model = self.embedder.model();
        validate_model_name(model)?;
        doc.check()?;
        let chunks = self.chunker.chunk(&doc.content);
        if chunks.is_empty() {
            return Err(KnowledgeError::EmptyDocument {
                document_id: doc.document_id,
            });
        }
        let total = u32::try_from(chunks.len())
            .ok()
            .filter(|t| i32::try_from(*t).is_ok())
            .ok_or(KnowledgeError::TooManyChunks {
                document_id: doc.document_id,
                chunks: chunks.len(),
            })?;
        let existing = writer.document_rows(doc.document_id).await?;
        let mut plan = plan(doc, &chunks, total, &existing, model);
        let texts: Vec<&str> = plan
            .to_embed
            .iter()
            .map(|&i| plan.rows[i].content.as_str())
            .collect();
        if !texts.is_empty() {
            let vectors = self.embedder.embed(&texts).await?;
            check_vectors(model, self.embedder.dimensions(), texts.len(), &vectors)?;
            let embedded_at = Utc::now();
            for (&i, vector) in plan.to_embed.iter().zip(vectors) {
                plan.rows[i].embedding = Some(StoredEmbedding {
                    model: model.to_owned(),
                    vector,
                    embedded_at,
                });
            }
        }
        let left = left_texts(&existing, &plan);
        let mut ops: Vec<RowOp> = plan.deletes.into_iter().map(RowOp::Delete).collect();
        ops.extend(plan.rows.into_iter().map(|r| RowOp::Upsert(Box::new(r))));
        if !ops.is_empty() {
            writer.apply(doc.document_id, ops).await?;
        }
        self.uncache_left(doc, left).await;
        Ok(plan.report)
    }

    /// Removes from the embedder's caches the texts that left a subject's
    /// document: the knowledge base no longer holds them, so erasing the
    /// subject later could not find them. Best effort, after the write: a
    /// cache that fails is logged (the entries then expire with their
    /// TTL), and the ingest still succeeds.
    async fn uncache_left(&self, doc: &Document, left: BTreeMap<String, Vec<TextHash>>) {
        for (model, hashes) in left {
            if let Err(error) = self.embedder.forget_cached(&model, &hashes).await {
                tracing::warn!(
                    document_id = %doc.document_id,
                    model,
                    %error,
                    "could not remove texts that left a personal document from the embedding cache; they expire with their TTL"
                );
            }
        }
    }
}

/// The texts of a document's stored rows that are personal data
/// ([`DocumentMeta::subject`](super::DocumentMeta::subject) set) and that
/// the planned write drops from the document, with the models they may be
/// cached under (the embedder's and the row's own).
fn left_texts(existing: &[ChunkRow], plan: &Plan) -> BTreeMap<String, Vec<TextHash>> {
    let mut left: BTreeMap<String, BTreeSet<TextHash>> = BTreeMap::new();
    for row in existing {
        // a text leaves with its row, or when the anchor row takes another
        if row.document.subject.is_none() || plan.hashes.contains(&row.content_hash) {
            continue;
        }
        let hash = TextHash::of(&row.content);
        for model in [
            Some(plan.model.as_str()),
            row.embedding.as_ref().map(|e| e.model.as_str()),
        ]
        .into_iter()
        .flatten()
        {
            left.entry(model.to_owned()).or_default().insert(hash);
        }
    }
    left.into_iter()
        .map(|(model, hashes)| (model, hashes.into_iter().collect()))
        .collect()
}

/// The writes that bring a document's stored rows to its new content.
struct Plan {
    /// The model new embeddings are made with.
    model: String,
    /// The content hash of every chunk of the new content.
    hashes: HashSet<String>,
    /// Rows to delete, first.
    deletes: Vec<Uuid>,
    /// Rows to upsert, after.
    rows: Vec<ChunkRow>,
    /// Indexes into `rows` that need a new embedding.
    to_embed: Vec<usize>,
    report: IngestReport,
}

/// Matches the new chunks to the stored rows by content hash.
///
/// The anchor row (id = document id) must survive as long as the document
/// has rows, since the others point at it: when its text leaves the
/// document, it takes the text of a new chunk, or else of a kept one (whose
/// own row is deleted first).
fn plan(doc: &Document, chunks: &[String], total: u32, existing: &[ChunkRow], model: &str) -> Plan {
    let id = doc.document_id;
    let mut report = IngestReport {
        document_id: id,
        chunks: chunks.len(),
        ..IngestReport::default()
    };
    // the distinct chunks, at their first position
    let mut seen = HashSet::new();
    let mut new: Vec<(u32, &str, String)> = Vec::new();
    for (i, content) in chunks.iter().enumerate() {
        let hash = chunk_hash(id, content);
        if seen.insert(hash.clone()) {
            new.push((i as u32, content.as_str(), hash));
        } else {
            report.repeated += 1;
        }
    }
    let by_hash: HashMap<&str, &ChunkRow> = existing
        .iter()
        .map(|r| (r.content_hash.as_str(), r))
        .collect();
    let anchor = existing.iter().find(|r| r.id == id);
    let anchor_kept = anchor.is_some_and(|a| seen.contains(&a.content_hash));

    let mut deletes: Vec<Uuid> = existing
        .iter()
        .filter(|r| r.id != id && !seen.contains(&r.content_hash))
        .map(|r| r.id)
        .collect();
    let mut rows = Vec::new();
    let mut to_embed = Vec::new();
    // who takes the anchor's id when its own text is gone
    let mut anchor_free = anchor.is_none() || !anchor_kept;
    let anchor_version = anchor.map_or(0, |a| a.version);
    // a kept row that moves into the anchor, when no new text does
    let mover = if anchor.is_some()
        && !anchor_kept
        && new.iter().all(|(_, _, h)| by_hash.contains_key(h.as_str()))
    {
        new.iter()
            .filter_map(|(_, _, h)| by_hash.get(h.as_str()).copied())
            .find(|r| r.id != id)
            .map(|r| r.id)
    } else {
        None
    };
    if let Some(m) = mover {
        deletes.push(m);
    }
    for (index, content, hash) in &new {
        let stored = by_hash.get(hash.as_str()).copied();
        let moving = stored.is_some_and(|r| Some(r.id) == mover);
        let (row_id, parent, version) = match stored {
            Some(r) if !moving => (r.id, r.parent_id, r.version),
            _ if anchor_free => {
                anchor_free = false;
                (id, None, anchor_version)
            }
            _ => (Uuid::now_v7(), Some(id), 0),
        };
        let mut row = ChunkRow {
            id: row_id,
            parent_id: parent,
            document: doc.meta.clone(),
            content: (*content).to_owned(),
            content_hash: hash.clone(),
            chunk_index: *index,
            chunk_total: total,
            version: version + 1,
            is_active: true,
            embedding: stored.and_then(|r| r.embedding.clone()),
        };
        let current = row.embedding.as_ref().is_some_and(|e| e.model == model);
        match stored {
            Some(r) if current && !moving => {
                let same = r.document == row.document
                    && r.chunk_index == row.chunk_index
                    && r.chunk_total == row.chunk_total
                    && r.is_active
                    && r.content == row.content;
                if same {
                    report.unchanged += 1;
                    continue;
                }
                report.updated += 1;
            }
            Some(_) if current => report.updated += 1, // moved into the anchor
            _ => {
                row.embedding = None;
                to_embed.push(rows.len());
                report.embedded += 1;
            }
        }
        rows.push(row);
    }
    // content is never empty, so some chunk always took the anchor's id
    debug_assert!(anchor.is_none() || !anchor_free);
    report.deleted = deletes.len() - usize::from(mover.is_some());
    Plan {
        model: model.to_owned(),
        hashes: seen,
        deletes,
        rows,
        to_embed,
        report,
    }
}
