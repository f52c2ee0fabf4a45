//! [`KnowledgeEvent`]: every event the knowledge base projections read.

use serde_json::value::RawValue;

use super::document::DocumentEvent;
#[cfg(feature = "personal")]
use super::personal::PersonalDocumentEvent;
use crate::event::{DecodeError, EventSchema, EventTypeInfo, Subject};
use crate::forgotten::SubjectForgotten;
use crate::Event;

/// Every event the knowledge base projections
/// ([`InMemoryKnowledgeProjection`](super::InMemoryKnowledgeProjection),
/// `PgKnowledgeProjection`) read, in the order of the log:
///
/// - [`DocumentEvent`]s (`document.added`, `document.updated`,
///   `document.retired`), ingested;
/// - with the `personal` feature, `PersonalDocumentEvent`s
///   (`personal_document.added`, `personal_document.updated`), ingested
///   under their subject, or skipped once the subject was forgotten;
/// - [`SubjectForgotten`] (`subject.forgotten`, recorded by
///   `PersonalStore::forget`): the subject's documents are erased
///   ([`Ingestor::forget_subject`](super::Ingestor::forget_subject)).
///   Handled with or without the `personal` feature, so the knowledge base
///   follows a forget recorded by any process of the application.
///
/// Each variant's event types keep their own names and versions (the
/// upcasting of `document.added` v1 included): this type only groups them.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum KnowledgeEvent {
    /// A document added, updated or retired.
    Document(DocumentEvent),
    /// A document that is personal data, added or updated.
    #[cfg(feature = "personal")]
    #[cfg_attr(docsrs, doc(cfg(feature = "personal")))]
    PersonalDocument(PersonalDocumentEvent),
    /// A subject was forgotten: its documents are erased.
    SubjectForgotten(SubjectForgotten),
}

impl From<DocumentEvent> for KnowledgeEvent {
    fn from(e: DocumentEvent) -> Self {
        KnowledgeEvent::Document(e)
    }
}

#[cfg(feature = "personal")]
impl From<PersonalDocumentEvent> for KnowledgeEvent {
    fn from(e: PersonalDocumentEvent) -> Self {
        KnowledgeEvent::PersonalDocument(e)
    }
}

impl From<SubjectForgotten> for KnowledgeEvent {
    fn from(e: SubjectForgotten) -> Self {
        KnowledgeEvent::SubjectForgotten(e)
    }
}

/// The event types of each part, in variant order.
const PARTS: &[&[EventTypeInfo]] = &[
    DocumentEvent::TYPES,
    #[cfg(feature = "personal")]
    PersonalDocumentEvent::TYPES,
    SubjectForgotten::TYPES,
];

const fn count(parts: &[&[EventTypeInfo]]) -> usize {
    let mut n = 0;
    let mut i = 0;
    while i < parts.len() {
        n += parts[i].len();
        i += 1;
    }
    n
}

const fn concat<const N: usize>(parts: &[&[EventTypeInfo]]) -> [EventTypeInfo; N] {
    let mut out = [EventTypeInfo {
        name: "",
        version: 0,
        oldest_version: 0,
    }; N];
    let (mut at, mut i) = (0, 0);
    while i < parts.len() {
        let mut j = 0;
        while j < parts[i].len() {
            out[at] = parts[i][j];
            at += 1;
            j += 1;
        }
        i += 1;
    }
    out
}

/// Every event type of [`KnowledgeEvent`], in variant order.
static ALL_TYPES: [EventTypeInfo; count(PARTS)] = concat(PARTS);

impl Event for KnowledgeEvent {
    const TYPES: &'static [EventTypeInfo] = &ALL_TYPES;

    fn event_type(&self) -> &'static str {
        match self {
            KnowledgeEvent::Document(e) => e.event_type(),
            #[cfg(feature = "personal")]
            KnowledgeEvent::PersonalDocument(e) => e.event_type(),
            KnowledgeEvent::SubjectForgotten(e) => e.event_type(),
        }
    }

    fn schema_version(&self) -> u32 {
        match self {
            KnowledgeEvent::Document(e) => e.schema_version(),
            #[cfg(feature = "personal")]
            KnowledgeEvent::PersonalDocument(e) => e.schema_version(),
            KnowledgeEvent::SubjectForgotten(e) => e.schema_version(),
        }
    }

    fn encode(&self) -> Result<Box<RawValue>, serde_json::Error> {
        match self {
            KnowledgeEvent::Document(e) => e.encode(),
            #[cfg(feature = "personal")]
            KnowledgeEvent::PersonalDocument(e) => e.encode(),
            KnowledgeEvent::SubjectForgotten(e) => e.encode(),
        }
    }

    fn decode(
        event_type: &str,
        schema_version: u32,
        payload: &RawValue,
    ) -> Result<Self, DecodeError> {
        Self::decode_json(event_type, schema_version, payload.get())
    }

    fn decode_json(
        event_type: &str,
        schema_version: u32,
        payload: &str,
    ) -> Result<Self, DecodeError> {
        if DocumentEvent::handles(event_type) {
            return DocumentEvent::decode_json(event_type, schema_version, payload)
                .map(KnowledgeEvent::Document);
        }
        #[cfg(feature = "personal")]
        if PersonalDocumentEvent::handles(event_type) {
            return PersonalDocumentEvent::decode_json(event_type, schema_version, payload)
                .map(KnowledgeEvent::PersonalDocument);
        }
        if SubjectForgotten::handles(event_type) {
            return SubjectForgotten::decode_json(event_type, schema_version, payload)
                .map(KnowledgeEvent::SubjectForgotten);
        }
        Err(crate::event::private::unknown_type(
            event_type,
            <Self as Event>::TYPES,
        ))
    }

    fn schemas() -> Vec<EventSchema> {
        let mut schemas = DocumentEvent::schemas();
        #[cfg(feature = "personal")]
        schemas.extend(PersonalDocumentEvent::schemas());
        schemas.extend(SubjectForgotten::schemas());
        schemas
    }

    fn subject(&self) -> Subject {
        match self {
            KnowledgeEvent::Document(e) => e.subject(),
            #[cfg(feature = "personal")]
            KnowledgeEvent::PersonalDocument(e) => e.subject(),
            KnowledgeEvent::SubjectForgotten(e) => e.subject(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_part_is_listed_once_and_decodes_to_its_variant() {
        let mut names: Vec<&str> = KnowledgeEvent::TYPES.iter().map(|t| t.name).collect();
        assert!(names.iter().all(|n| !n.is_empty()));
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), KnowledgeEvent::TYPES.len());
        for name in ["document.added", "document.retired", "subject.forgotten"] {
            assert!(KnowledgeEvent::handles(name), "{name}");
        }
        assert_eq!(
            cfg!(feature = "personal"),
            KnowledgeEvent::handles("personal_document.added")
        );
        let forgotten = KnowledgeEvent::decode_json("subject.forgotten", 1, r#"{"subject":"a"}"#);
        assert!(matches!(
            forgotten,
            Ok(KnowledgeEvent::SubjectForgotten(SubjectForgotten { subject })) if subject == "a"
        ));
        assert!(matches!(
            KnowledgeEvent::decode_json("lead.created", 1, "{}"),
            Err(DecodeError::UnknownEventType { .. })
        ));
        let schemas = KnowledgeEvent::schemas();
        for t in KnowledgeEvent::TYPES {
            assert!(
                schemas
                    .iter()
                    .any(|s| s.event_type == t.name && s.version == t.version),
                "{}",
                t.name
            );
        }
    }
}
