//! Personal data: fields that belong to a person (a patient's name, a phone
//! number), encrypted with a key of that person's own, so that deleting the
//! key erases the data everywhere it was copied (crypto-shredding).
//!
//! - [`Personal<T>`]: the type of a personal field. It serializes as the
//!   plain `T`, reads back either a `T` or the marker a forgotten value
//!   leaves ([`Personal::Forgotten`]), and its JSON Schema carries
//!   `"x-annals-personal": true`, so the stored schema says which fields
//!   are personal ([`personal_pointers`]).
//! - `#[event(subject = field)]` or `#[event(subject = envelope.stream_id)]`
//!   on an event type: whose data its personal fields are
//!   ([`Event::subject`](crate::Event::subject)).
//! - [`PersonalStore`]: wraps any event store. On append, personal fields
//!   are validated in plaintext, then sealed with the subject's data key
//!   (AES-256-GCM, a fresh nonce per value, the subject and the
//!   field's place bound to the ciphertext); every read path opens them.
//!   [`forget`](PersonalStore::forget) deletes the subject's key, leaves a
//!   tombstone (new personal data for it is [`PersonalError::Forgotten`])
//!   and records a [`SubjectForgotten`] event for read models.
//! - [`PersonalSnapshots`]: snapshots of aggregates whose streams hold
//!   personal data, sealed so that forgetting any of their subjects makes
//!   them unreadable (the aggregate then loads from its events).
//! - [`DataKey`], [`KeyProvider`] and [`LocalKeyProvider`]: per-subject data
//!   keys, wrapped by a key-encryption key (KEK) when stored. Key material
//!   never appears in `Debug` output or errors. [`SubjectKeys`]:
//!   [`InMemorySubjectKeys`] here, `PgSubjectKeys` on Postgres (a table of
//!   wrapped keys and tombstones), re-wrapped resumably on KEK rotation.
//!
//! **What a read model must do.** A projection that copies personal data
//! into its tables holds plaintext no key protects: it handles
//! [`SubjectForgotten`] (a variant `Forgotten(SubjectForgotten)` named
//! `subject.forgotten` in its event enum) by deleting or blanking the
//! subject's rows. Upcasters of old versions see a forgotten field as the
//! marker `{"$forgotten": true}`, and must pass it through.
//!
//! **Sagas.** A saga's data and commands are not sealed: they are state the
//! saga works with, like a read model. The engine stores their `Personal`
//! values wrapped (`{"$personal": value}`, [`to_marked_value`]), the saga's
//! [`SagaData::subject`](crate::SagaData::subject) says whose they are, and
//! [`SagaEraser`] (a projection of `subject.forgotten`) replaces them with
//! the forgotten marker in the saga's data and in every command it issued
//! ([`SagaStore::forget_subject`](crate::SagaStore::forget_subject)).
//!
//! **The knowledge base** (feature `knowledge`): a document names its
//! subject (`DocumentMeta::subject`); the knowledge base projections
//! handle [`SubjectForgotten`] by deleting the subject's rows and their
//! cached embeddings (memory and Redis), and `PersonalDocumentEvent` keeps
//! such documents sealed in the log. What that leaves is listed in the
//! `annals::knowledge` docs ("Forgetting a subject").
//!
//! **Not covered:** a handler's error text stored with a dead letter is
//! the handler's own (it must not quote personal data). A forgotten key's bytes are
//! overwritten in place, but old row versions stay in the table's files
//! and the WAL until vacuum and WAL recycling (and in backups taken
//! before): sealed data in those backups stays unreadable only once every
//! copy of the key is gone.
//!
//! ```
//! use annals::personal::Personal;
//!
//! #[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema, Debug, PartialEq)]
//! struct LeadCreated {
//!     lead_id: String,
//!     name: Personal<String>,
//! }
//!
//! let lead = LeadCreated { lead_id: "l-1".into(), name: Personal::Known("Ana".into()) };
//! let json = serde_json::to_value(&lead)?;
//! assert_eq!(json, serde_json::json!({"lead_id": "l-1", "name": "Ana"}));
//! // after the subject was forgotten, the field reads back as a typed value
//! let forgotten: LeadCreated =
//!     serde_json::from_value(serde_json::json!({"lead_id": "l-1", "name": {"$forgotten": true}}))?;
//! assert_eq!(forgotten.name, Personal::Forgotten);
//! # Ok::<(), serde_json::Error>(())
//! ```

mod keys;
mod sagas;
mod seal;
mod snapshots;
mod store;
mod subjects;

use std::borrow::Cow;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub use crate::forgotten::SubjectForgotten;
pub use crate::saga::{forget_marked, MARKED};
pub use crate::schema::{personal_pointers, PERSONAL_KEYWORD};
pub use keys::{DataKey, KeyProvider, LocalKeyProvider, WrappedKey};
pub use sagas::SagaEraser;
pub use seal::{open, seal, sealed_subjects, SEALED, SUBJECT};
pub use snapshots::PersonalSnapshots;
pub use store::{PersonalSession, PersonalStore, DEFAULT_KEY_TTL, FORGOTTEN_SUBJECTS_STREAM};
pub use subjects::{wrapping_name, InMemorySubjectKeys, KeyRotation, SubjectKeys};

/// The key of the marker object a forgotten value reads as:
/// `{"$forgotten": true}`.
pub const FORGOTTEN: &str = "$forgotten";

/// A personal field: its value, or the fact that it was forgotten.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Personal<T> {
    /// The value.
    Known(T),
    /// The subject was forgotten: its key is gone, and with it the value.
    Forgotten,
}

impl<T> Personal<T> {
    /// The value, if it is still known.
    pub fn known(&self) -> Option<&T> {
        match self {
            Personal::Known(v) => Some(v),
            Personal::Forgotten => None,
        }
    }

    /// Whether the value was forgotten.
    pub fn is_forgotten(&self) -> bool {
        matches!(self, Personal::Forgotten)
    }
}

impl<T> From<T> for Personal<T> {
    fn from(value: T) -> Self {
        Personal::Known(value)
    }
}

impl From<&str> for Personal<String> {
    fn from(value: &str) -> Self {
        Personal::Known(value.to_owned())
    }
}

impl<T: std::fmt::Display> std::fmt::Display for Personal<T> {
    /// The value, or `(forgotten)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Personal::Known(v) => v.fmt(f),
            Personal::Forgotten => f.write_str("(forgotten)"),
        }
    }
}

/// The marker a forgotten value is stored (and read) as.
pub fn forgotten_marker() -> serde_json::Value {
    serde_json::json!({ FORGOTTEN: true })
}

fn is_forgotten_marker(value: &serde_json::Value) -> bool {
    value
        .as_object()
        .is_some_and(|o| o.len() == 1 && o.get(FORGOTTEN) == Some(&serde_json::Value::Bool(true)))
}

thread_local! {
    /// Set while [`to_marked_value`] serializes on this thread.
    static MARKING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Serializes `value` to JSON with every known [`Personal`] value inside
/// wrapped as `{"$personal": value}`, so that a store without schemas can
/// find them and erase them when their subject is forgotten
/// ([`forget_marked`]). The saga engine writes saga data and commands this
/// way; `Personal` reads both forms back.
///
/// (serde passes no context to `Serialize`: a flag of this thread, set for
/// the call's duration, tells `Personal` to wrap itself.)
///
/// ```
/// use annals::personal::{forget_marked, to_marked_value, Personal};
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Booking { lead_id: u64, name: Personal<String> }
///
/// let booking = Booking { lead_id: 7, name: "Ana".into() };
/// let mut stored = to_marked_value(&booking)?;
/// assert_eq!(stored, serde_json::json!({"lead_id": 7, "name": {"$personal": "Ana"}}));
/// assert_eq!(serde_json::from_value::<Booking>(stored.clone())?.name, Personal::Known("Ana".into()));
///
/// assert_eq!(forget_marked(&mut stored), 1);
/// assert_eq!(serde_json::from_value::<Booking>(stored)?.name, Personal::Forgotten);
/// # Ok::<(), serde_json::Error>(())
/// ```
pub fn to_marked_value<T: Serialize + ?Sized>(value: &T) -> serde_json::Result<serde_json::Value> {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            MARKING.with(|m| m.set(self.0));
        }
    }
    let _restore = Restore(MARKING.with(|m| m.replace(true)));
    serde_json::to_value(value)
}

impl<T: Serialize> Serialize for Personal<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Personal::Known(v) if MARKING.with(|m| m.get()) => {
                use serde::ser::SerializeMap as _;
                let mut map = serializer.serialize_map(Some(1))?;
                map.serialize_entry(MARKED, v)?;
                map.end()
            }
            Personal::Known(v) => v.serialize(serializer),
            Personal::Forgotten => forgotten_marker().serialize(serializer),
        }
    }
}

impl<'de, T: serde::de::DeserializeOwned> Deserialize<'de> for Personal<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // through a JSON value: the marker and a `T` that is itself an
        // object cannot be told apart before looking
        let mut value = serde_json::Value::deserialize(deserializer)?;
        if is_forgotten_marker(&value) {
            return Ok(Personal::Forgotten);
        }
        if let Some(map) = value.as_object_mut().filter(|m| m.len() == 1) {
            if let Some(marked) = map.remove(MARKED) {
                value = marked;
            }
        }
        T::deserialize(value)
            .map(Personal::Known)
            .map_err(serde::de::Error::custom)
    }
}

impl<T: schemars::JsonSchema> schemars::JsonSchema for Personal<T> {
    fn inline_schema() -> bool {
        // inline, so the marker sits on the field's own schema
        true
    }

    fn schema_name() -> Cow<'static, str> {
        format!("Personal_{}", T::schema_name()).into()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let value = generator.subschema_for::<T>();
        let mut schema = schemars::json_schema!({
            "anyOf": [
                value,
                {
                    "type": "object",
                    "properties": { FORGOTTEN: { "const": true } },
                    "required": [FORGOTTEN],
                    "additionalProperties": false
                },
                {
                    "type": "object",
                    "properties": {
                        SEALED: { "type": "string" },
                        SUBJECT: { "type": "string" }
                    },
                    "required": [SEALED, SUBJECT],
                    "additionalProperties": false
                }
            ]
        });
        schema.insert(PERSONAL_KEYWORD.to_owned(), serde_json::Value::Bool(true));
        schema
    }
}

/// What can go wrong with personal data.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PersonalError {
    /// The subject was forgotten: no new personal data may be written for
    /// it unless the application starts a new subject
    /// ([`SubjectKeys::start_again`]).
    #[error("subject `{subject}` was forgotten: its personal data cannot be written again unless the application starts it as a new subject")]
    Forgotten {
        /// The subject.
        subject: String,
    },
    /// A wrapped data key did not unwrap with this key-encryption key (the
    /// wrong KEK, or a damaged key row). Nothing was decrypted.
    #[error("the data key of subject `{subject}` does not unwrap with key-encryption key `{kek_id}` (a wrong KEK, or a damaged key)")]
    WrongKek {
        /// The subject.
        subject: String,
        /// The KEK that was tried.
        kek_id: String,
    },
    /// A key-encryption key could not be read (a missing variable, a file
    /// that is not 32 bytes of base64).
    #[error("cannot read the key-encryption key: {0}")]
    Kek(String),
    /// A sealed value did not decrypt with its subject's key (damaged).
    #[error(
        "a sealed value of subject `{subject}` at `{pointer}` does not decrypt: it is damaged"
    )]
    Damaged {
        /// The subject.
        subject: String,
        /// Where in the payload.
        pointer: String,
    },
    /// An event type with personal fields was appended without a subject:
    /// its type names none (`#[event(subject = field)]`, or `subject =
    /// envelope.stream_id`), or a hand-made [`NewEvent`](crate::NewEvent)
    /// carries none.
    #[error("event type `{event_type}` has personal fields but names no subject whose key seals them: add `#[event(subject = <field>)]` or `#[event(subject = envelope.stream_id)]` to its type")]
    NoSubject {
        /// The event type.
        event_type: String,
    },
    /// A subject id out of the limits (empty, NUL, longer than 1024 bytes).
    #[error(transparent)]
    InvalidInput(#[from] crate::error::InvalidInput),
    /// The key store failed.
    #[error("the subject key store failed while {context}: {source}")]
    Backend {
        /// What it was doing.
        context: &'static str,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize, Deserialize, schemars::JsonSchema, Debug, PartialEq)]
    struct Contact {
        phone: String,
    }

    #[derive(Serialize, Deserialize, schemars::JsonSchema, Debug, PartialEq)]
    struct Lead {
        id: String,
        name: Personal<String>,
        contact: Personal<Contact>,
        notes: Vec<Personal<String>>,
    }

    #[test]
    fn round_trips_and_reads_the_forgotten_marker() {
        let lead = Lead {
            id: "l".into(),
            name: "Ana".to_owned().into(),
            contact: Personal::Known(Contact {
                phone: "555".into(),
            }),
            notes: vec!["first".to_owned().into()],
        };
        let json = serde_json::to_value(&lead).unwrap_or_default();
        assert_eq!(
            json,
            serde_json::json!({"id": "l", "name": "Ana", "contact": {"phone": "555"}, "notes": ["first"]})
        );
        let back: Lead = serde_json::from_value(json).expect("round trip");
        assert_eq!(back, lead);
        let gone = serde_json::json!({
            "id": "l", "name": {"$forgotten": true}, "contact": {"$forgotten": true},
            "notes": [{"$forgotten": true}]
        });
        let read: Lead = serde_json::from_value(gone).expect("forgotten fields read");
        assert!(read.name.is_forgotten() && read.contact.is_forgotten());
        assert_eq!(read.notes, [Personal::Forgotten]);
        // a value of the wrong shape is still an error
        assert!(serde_json::from_value::<Lead>(serde_json::json!({
            "id": "l", "name": 3, "contact": {"phone": "1"}, "notes": []
        }))
        .is_err());
    }

    #[test]
    fn the_schema_marks_personal_fields_and_accepts_the_marker() {
        let schema = serde_json::to_value(schemars::schema_for!(Lead)).unwrap_or_default();
        let mut pointers = personal_pointers(&schema);
        pointers.sort();
        assert_eq!(pointers, ["/contact", "/name", "/notes/*"]);
        let validator = jsonschema::validator_for(&schema).expect("schema compiles");
        let gone = serde_json::json!({
            "id": "l", "name": {"$forgotten": true}, "contact": {"$forgotten": true}, "notes": []
        });
        assert!(validator.is_valid(&gone));
        assert!(validator.is_valid(&serde_json::json!({
            "id": "l", "name": "Ana", "contact": {"phone": "1"}, "notes": ["x"]
        })));
        assert!(!validator.is_valid(&serde_json::json!({
            "id": "l", "name": 1, "contact": {"phone": "1"}, "notes": []
        })));
    }
}
