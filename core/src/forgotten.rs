//! [`SubjectForgotten`], the event that tells read models to erase a
//! subject's data. Shared by `personal` (which records it) and `knowledge`
//! (whose projections handle it), so that a knowledge base projection
//! erases a forgotten subject's documents even in a build without the
//! `personal` feature (another process of the application may forget).

/// Recorded when a subject is forgotten (`PersonalStore::forget`, feature
/// `personal`), so that projections can erase what they copied of the
/// subject's personal data: read models keep plaintext that no key
/// protects.
///
/// A projection that stores personal data handles it by deleting (or
/// blanking) the subject's rows: add a variant
/// `Forgotten(SubjectForgotten)` named `subject.forgotten` to its event
/// enum. The knowledge base's projections handle it already (see
/// `KnowledgeEvent`, feature `knowledge`).
#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    schemars::JsonSchema,
    annals_macros::Event,
)]
#[event(crate = "crate", name = "subject.forgotten", version = 1)]
pub struct SubjectForgotten {
    /// The subject that was forgotten.
    pub subject: String,
}
