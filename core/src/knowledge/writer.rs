//! The write interface of backends: the rows a backend stores and the
//! [`KnowledgeWriter`] the [`Ingestor`](super::Ingestor) writes through.

use std::future::Future;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::document::DocumentMeta;
use super::error::KnowledgeError;
use super::search::KnowledgeEntry;

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
    /// See [`KnowledgeEntry::content_hash`](super::KnowledgeEntry::content_hash).
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

/// The write side of a knowledge base, as the [`Ingestor`](super::Ingestor) uses it: read a
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

    /// Every row of the documents of `subject`
    /// ([`DocumentMeta::subject`]), active or not, without their vectors:
    /// what erasing the subject deletes. A backend with transactions locks
    /// them until its transaction ends.
    fn subject_rows(
        &mut self,
        subject: &str,
    ) -> impl Future<Output = Result<Vec<KnowledgeEntry>, KnowledgeError>> + Send;

    /// Applies `ops` in order. Backends with transactions apply all or
    /// none.
    fn apply(
        &mut self,
        document_id: Uuid,
        ops: Vec<RowOp>,
    ) -> impl Future<Output = Result<(), KnowledgeError>> + Send;
}
