//! Documents as events: what feeds the knowledge base.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A document of the knowledge base, as an event carries it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Document {
    /// The document's id: its anchor row's id in the knowledge base.
    pub document_id: Uuid,
    /// Its fields (title, tenant, language, source type, tags, metadata).
    #[serde(flatten)]
    pub meta: DocumentMeta,
    /// The full text; the ingestor chunks it.
    pub content: String,
}

/// A document taken out of the knowledge base.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct DocumentRetired {
    /// The document.
    pub document_id: Uuid,
}

/// The events that feed the knowledge base: `document.added`,
/// `document.updated` and `document.retired`.
///
/// Append them to any stream (say `document-{id}`); the knowledge base
/// projection, or [`KnowledgeBase::ingest`](super::KnowledgeBase::ingest)
/// called directly, applies them. Added and updated are handled alike (an
/// upsert), so replaying either is harmless.
#[derive(Debug, Clone, PartialEq, annals_macros::Event)]
#[event(crate = "crate")]
pub enum DocumentEvent {
    /// A new document.
    Added(Document),
    /// A new version of a document.
    Updated(Document),
    /// The document is withdrawn: its rows stay, inactive, and searches no
    /// longer see them.
    Retired(DocumentRetired),
}

impl DocumentEvent {
    /// The document the event is about.
    pub fn document_id(&self) -> Uuid {
        match self {
            DocumentEvent::Added(d) | DocumentEvent::Updated(d) => d.document_id,
            DocumentEvent::Retired(r) => r.document_id,
        }
    }
}

/// The fields of a document that every chunk of it carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct DocumentMeta {
    /// What kind of source it is (`faq`, `price_list`, `protocol`, ...).
    pub source_type: String,
    /// The document's title.
    pub title: String,
    /// The tenant it belongs to; `None` for knowledge shared by all tenants.
    #[serde(default)]
    pub tenant_id: Option<String>,
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
