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
///
/// Version 2 of `document.added` and `document.updated` added
/// [`DocumentMeta::subject`]; stored version 1 payloads
/// ([`DocumentV1`]) read as documents of nobody's.
///
/// These events keep the document's text in plaintext in the event log. A
/// document with personal data is better appended as a
/// `PersonalDocumentEvent` through a `PersonalStore` (feature `personal`),
/// which seals it with its subject's key: a `document.added` event with a
/// subject is erased from the knowledge base when the subject is
/// forgotten, but the event itself keeps its text.
#[derive(Debug, Clone, PartialEq, annals_macros::Event)]
#[event(crate = "crate")]
pub enum DocumentEvent {
    /// A new document.
    #[event(version = 2, history(1 = DocumentV1))]
    Added(Document),
    /// A new version of a document.
    #[event(version = 2, history(1 = DocumentV1))]
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
    /// Whose personal data the document is (a patient's letter, a
    /// customer's contract); `None` for knowledge that is nobody's (a FAQ,
    /// a price list). When the subject is forgotten, every row of its
    /// documents is deleted and their embeddings leave the embedding
    /// caches ([`KnowledgeBase::forget_subject`](super::KnowledgeBase::forget_subject)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
}

/// Version 1 of the `document.added` and `document.updated` payloads,
/// before documents named a subject. Kept to read stored events: it
/// upcasts into a [`Document`] of nobody's (`subject: None`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct DocumentV1 {
    /// The document's id.
    pub document_id: Uuid,
    /// Its fields.
    #[serde(flatten)]
    pub meta: DocumentMetaV1,
    /// The full text.
    pub content: String,
}

/// The fields of a [`DocumentV1`]: [`DocumentMeta`] without the subject.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct DocumentMetaV1 {
    /// What kind of source it is.
    pub source_type: String,
    /// The document's title.
    pub title: String,
    /// The tenant it belongs to.
    #[serde(default)]
    pub tenant_id: Option<String>,
    /// Its language.
    #[serde(default)]
    pub language: Option<String>,
    /// Free tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Anything else.
    #[serde(default)]
    pub metadata: serde_json::Map<String, serde_json::Value>,
}

impl From<DocumentV1> for Document {
    fn from(v1: DocumentV1) -> Self {
        let m = v1.meta;
        Document {
            document_id: v1.document_id,
            meta: DocumentMeta {
                source_type: m.source_type,
                title: m.title,
                tenant_id: m.tenant_id,
                language: m.language,
                tags: m.tags,
                metadata: m.metadata,
                subject: None,
            },
            content: v1.content,
        }
    }
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
    /// at most [`MAX_TAGS`] tags, a subject that is not empty and of at
    /// most [`MAX_SUBJECT_BYTES`](crate::store::limits::MAX_SUBJECT_BYTES)
    /// (the limit of every subject id), no NUL anywhere (Postgres text
    /// cannot hold it). The ingestor checks this before it writes anything; a
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
        if let Some(subject) = &meta.subject {
            check_text(
                "document subject",
                subject,
                crate::store::limits::MAX_SUBJECT_BYTES,
                false,
            )?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Event;

    /// The fingerprints version 1 was stored with (before documents named
    /// a subject): a database that holds them must keep starting.
    const V1_DOCUMENT: &str =
        "sha256:8fe69788b9a7c35086021cf23638dddf111ec37788a052a9a5ec96bd6b48ffae";
    const V1_RETIRED: &str =
        "sha256:09c4ff2e0d06bd9c77ddcebdab1b2948a3c3554976fb3bbf03e3f61efa7f22d3";

    #[test]
    fn version_1_keeps_its_schema_and_reads_as_a_document_of_nobodys() {
        let schemas = DocumentEvent::schemas();
        let fingerprint = |name: &str, version: u32| {
            schemas
                .iter()
                .find(|s| s.event_type == name && s.version == version)
                .map(|s| crate::schema::fingerprint(&s.schema))
        };
        for name in ["document.added", "document.updated"] {
            assert_eq!(fingerprint(name, 1).as_deref(), Some(V1_DOCUMENT), "{name}");
            assert!(fingerprint(name, 2).is_some_and(|f| f != V1_DOCUMENT));
        }
        assert_eq!(
            fingerprint("document.retired", 1).as_deref(),
            Some(V1_RETIRED)
        );
        let id = Uuid::from_u128(7);
        let v1 = serde_json::json!({
            "document_id": id, "source_type": "faq", "title": "Hours",
            "tenant_id": "t", "language": "en", "tags": ["a"], "metadata": {"k": 1},
            "content": "We are open."
        })
        .to_string();
        let read = DocumentEvent::decode_json("document.added", 1, &v1).expect("v1 decodes");
        let DocumentEvent::Added(doc) = read else {
            panic!("{read:?}")
        };
        assert_eq!(doc.meta.subject, None);
        assert_eq!(doc.meta.tags, ["a"]);
        assert_eq!(doc.content, "We are open.");
        // written without a subject, version 2 is version 1's shape
        let encoded = DocumentEvent::Added(doc.clone()).encode().expect("encode");
        assert!(!encoded.get().contains("subject"), "{}", encoded.get());
        let mut personal = doc;
        personal.meta.subject = Some("patient-1".into());
        let encoded = DocumentEvent::Updated(personal.clone())
            .encode()
            .expect("encode");
        let back = DocumentEvent::decode_json("document.updated", 2, encoded.get()).expect("v2");
        assert_eq!(back, DocumentEvent::Updated(personal));
    }

    #[test]
    fn a_subject_out_of_the_limits_is_refused() {
        let doc = |subject: &str| Document {
            document_id: Uuid::from_u128(1),
            meta: DocumentMeta {
                source_type: "faq".into(),
                title: "t".into(),
                tenant_id: None,
                language: None,
                tags: vec![],
                metadata: Default::default(),
                subject: Some(subject.to_owned()),
            },
            content: "text".into(),
        };
        assert!(doc("patient-1").check().is_ok());
        let huge = "s".repeat(crate::store::limits::MAX_SUBJECT_BYTES + 1);
        for (subject, problem) in [
            ("", "must not be empty"),
            ("a\0b", "NUL"),
            (huge.as_str(), "limit of 1024 bytes"),
        ] {
            let e = doc(subject).check().expect_err("refused");
            assert_eq!(e.field, "document subject");
            assert!(e.problem.contains(problem), "{e}");
        }
    }
}
