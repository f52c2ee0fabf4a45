//! What a search asks for and what it returns: [`SearchQuery`] with its
//! [`Scope`], [`SearchHit`]s of [`KnowledgeEntry`]s.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::document::DocumentMeta;

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

/// Whose rows a search may see. Every search names one: a tenant never
/// sees another tenant's rows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Scope {
    /// Only this tenant's rows.
    Tenant(String),
    /// This tenant's rows and the shared ones (no tenant).
    TenantAndShared(String),
    /// Only the shared rows.
    Shared,
    /// Every row: for administration tools, never for a tenant's users.
    All,
}

/// A top-k similarity search with filters.
///
/// ```
/// use annals::knowledge::{Scope, SearchQuery};
/// let q = SearchQuery::new(Scope::TenantAndShared("tenant-7".into()), 5)
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
        let tenant = meta.tenant_id.as_deref();
        let in_scope = match &self.scope {
            Scope::Tenant(t) => tenant == Some(t.as_str()),
            Scope::TenantAndShared(t) => tenant.is_none() || tenant == Some(t.as_str()),
            Scope::Shared => tenant.is_none(),
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
