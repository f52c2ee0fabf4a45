//! Documents as events: what feeds the knowledge base.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::InvalidInput;

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

/// The longest tenant id, source type, language and tag, in bytes (UTF-8).
pub const MAX_DOCUMENT_NAME_BYTES: usize = 255;
/// The longest title, in bytes (UTF-8).
pub const MAX_TITLE_BYTES: usize = 1024;
/// The most tags a document may have.
pub const MAX_TAGS: usize = 64;

impl Document {
    /// Checks the document against the knowledge base's limits, the same on
    /// every backend: a tenant id, source type, language or tag of at most
    /// [`MAX_DOCUMENT_NAME_BYTES`], a title of at most [`MAX_TITLE_BYTES`],
    /// at most [`MAX_TAGS`] tags, no NUL anywhere (Postgres text cannot
    /// hold it). The ingestor checks this before it writes anything; a
    /// document that breaks it is a bad event (parked by the knowledge
    /// projection), not a failing store.
    pub fn check(&self) -> Result<(), InvalidInput> {
        let meta = &self.meta;
        check_text("document title", &meta.title, MAX_TITLE_BYTES, true)?;
        check_text(
            "document source type",
            &meta.source_type,
            MAX_DOCUMENT_NAME_BYTES,
            true,
        )?;
        if let Some(tenant) = &meta.tenant_id {
            check_text("document tenant id", tenant, MAX_DOCUMENT_NAME_BYTES, false)?;
        }
        if let Some(language) = &meta.language {
            check_text(
                "document language",
                language,
                MAX_DOCUMENT_NAME_BYTES,
                false,
            )?;
        }
        if meta.tags.len() > MAX_TAGS {
            return Err(InvalidInput::new(
                "document tags",
                format!("are {}, more than the limit of {MAX_TAGS}", meta.tags.len()),
            ));
        }
        for tag in &meta.tags {
            check_text("document tag", tag, MAX_DOCUMENT_NAME_BYTES, false)?;
        }
        if let Some(at) = self.content.find('\0') {
            return Err(InvalidInput::new(
                "document content",
                format!("contains a NUL character (at byte {at}), which the stores cannot hold"),
            ));
        }
        Ok(())
    }
}

/// A text field: at most `max` bytes, no NUL; `may_be_empty`: empty is
/// fine.
fn check_text(
    field: &'static str,
    value: &str,
    max: usize,
    may_be_empty: bool,
) -> Result<(), InvalidInput> {
    if value.is_empty() && !may_be_empty {
        return Err(InvalidInput::new(field, "must not be empty"));
    }
    if value.len() > max {
        return Err(InvalidInput::new(
            field,
            format!(
                "is {} bytes long, more than the limit of {max} bytes",
                value.len()
            ),
        ));
    }
    if let Some(at) = value.find('\0') {
        return Err(InvalidInput::new(
            field,
            format!("contains a NUL character (at byte {at}), which the stores cannot hold"),
        ));
    }
    Ok(())
}
