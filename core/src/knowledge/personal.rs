//! Documents that are one subject's personal data, sealed in the event log
//! (features `knowledge` and `personal`).

use serde::{Deserialize, Serialize};

use super::document::{Document, DocumentEvent};
use crate::personal::Personal;

/// A document that is one subject's personal data, as
/// `personal_document.added` and `personal_document.updated` carry it.
///
/// The whole document (its id, fields and text) is one
/// [`Personal`] value: appended through a
/// [`PersonalStore`](crate::personal::PersonalStore), it is validated in
/// plaintext and then sealed with the subject's data key, so the event log
/// holds no readable copy once the subject is forgotten. Only the subject
/// id stays in plaintext (it picks the key).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct PersonalDocument {
    /// Whose personal data the document is: whose key seals it. The
    /// knowledge base stores the document under this subject, whatever its
    /// own [`DocumentMeta::subject`](super::DocumentMeta::subject) says.
    pub subject: String,
    /// The document, or [`Personal::Forgotten`] once the subject was
    /// forgotten.
    pub document: Personal<Document>,
}

impl PersonalDocument {
    /// `document` as `subject`'s personal data (its
    /// [`meta.subject`](super::DocumentMeta::subject) is set to `subject`).
    pub fn new(subject: impl Into<String>, mut document: Document) -> Self {
        let subject = subject.into();
        document.meta.subject = Some(subject.clone());
        PersonalDocument {
            subject,
            document: Personal::Known(document),
        }
    }

    /// The document as the knowledge base ingests it (under
    /// [`subject`](Self::subject)); `None` once the subject was forgotten.
    pub fn known(&self) -> Option<Document> {
        let mut document = self.document.known()?.clone();
        document.meta.subject = Some(self.subject.clone());
        Some(document)
    }
}

/// The events that feed the knowledge base with documents that are
/// personal data: `personal_document.added` and
/// `personal_document.updated`, each naming its subject
/// (`#[event(subject = subject)]`), so a
/// [`PersonalStore`](crate::personal::PersonalStore) seals the document
/// with that subject's key.
///
/// The knowledge base projections read them as they read
/// [`DocumentEvent`]s (see [`KnowledgeEvent`](super::KnowledgeEvent)); one
/// whose document reads as forgotten is skipped, so a rebuild after a
/// forget does not bring the document back. Retire such a document with
/// [`DocumentEvent::Retired`] (its id is not personal data).
///
/// ```
/// use annals::knowledge::{Document, DocumentMeta, PersonalDocument, PersonalDocumentEvent};
/// use annals::personal::{InMemorySubjectKeys, LocalKeyProvider, Personal, PersonalStore};
/// use annals::{EventStoreExt, ExpectedVersion, InMemoryEventStore, Metadata};
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let keys = InMemorySubjectKeys::new(LocalKeyProvider::generate("kek-1"));
/// let store = PersonalStore::new(InMemoryEventStore::new(), keys);
/// let letter = Document {
///     document_id: uuid::Uuid::now_v7(),
///     meta: DocumentMeta {
///         source_type: "letter".into(),
///         title: "Discharge letter".into(),
///         tenant_id: Some("clinic-1".into()),
///         language: Some("en".into()),
///         tags: vec![],
///         metadata: Default::default(),
///         subject: None,
///     },
///     content: "Ana was treated for a fractured molar.".into(),
/// };
/// let event = PersonalDocumentEvent::Added(PersonalDocument::new("patient-ana", letter));
/// store.append_events("letters-ana", ExpectedVersion::Any, &[event], &Metadata::new()).await?;
///
/// // sealed in the log
/// let stored = store.inner().read_stream("letters-ana", ..).await?;
/// assert!(!stored[0].payload.get().contains("molar"));
/// // once forgotten, the document reads as forgotten
/// store.forget("patient-ana").await?;
/// let read = store.read_stream_as::<PersonalDocumentEvent>("letters-ana", ..).await?;
/// let PersonalDocumentEvent::Added(doc) = &read[0].payload else { unreachable!() };
/// assert_eq!(doc.document, Personal::Forgotten);
/// assert!(read[0].payload.document_event().is_none());
/// # Ok::<(), annals::Error>(())
/// # }).unwrap();
/// ```
#[derive(Debug, Clone, PartialEq, annals_macros::Event)]
#[event(crate = "crate")]
pub enum PersonalDocumentEvent {
    /// A new document.
    #[event(subject = subject)]
    Added(PersonalDocument),
    /// A new version of a document.
    #[event(subject = subject)]
    Updated(PersonalDocument),
}

impl PersonalDocumentEvent {
    /// The personal document the event carries.
    pub fn personal_document(&self) -> &PersonalDocument {
        match self {
            PersonalDocumentEvent::Added(d) | PersonalDocumentEvent::Updated(d) => d,
        }
    }

    /// The event as the ingest path applies it (the document under its
    /// subject); `None` once the subject was forgotten.
    pub fn document_event(&self) -> Option<DocumentEvent> {
        match self {
            PersonalDocumentEvent::Added(d) => d.known().map(DocumentEvent::Added),
            PersonalDocumentEvent::Updated(d) => d.known().map(DocumentEvent::Updated),
        }
    }
}
