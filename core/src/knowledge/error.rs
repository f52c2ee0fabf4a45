//! The knowledge base's error type.

use uuid::Uuid;

use super::cache::CacheError;
use super::embedder::EmbedError;

/// Why a knowledge base operation failed. Nothing was written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KnowledgeError {
    /// Embedding failed.
    #[error(transparent)]
    Embed(#[from] EmbedError),

    /// An embedding cache failed while a subject's embeddings were being
    /// removed from it ([`KnowledgeBase::forget_subject`](super::KnowledgeBase::forget_subject));
    /// nothing was deleted, and the erasure can run again.
    #[error("erasing from the embedding cache failed: {0}")]
    Cache(#[from] CacheError),

    /// A document has no text to store.
    #[error("document {document_id} has no content (only whitespace); retire it instead of adding an empty one")]
    EmptyDocument {
        /// The document.
        document_id: Uuid,
    },

    /// A model name cannot be used (it is spliced into SQL as a literal).
    #[error("invalid embedding model name {model:?}: {reason}")]
    InvalidModel {
        /// The name.
        model: String,
        /// Why.
        reason: &'static str,
    },

    /// A vector's length does not match what the knowledge base holds for
    /// its model.
    #[error("a vector of {actual} dimensions does not fit model `{model}`, whose vectors have {expected}; embed with the model's own embedder")]
    Dimensions {
        /// The model.
        model: String,
        /// The model's dimensions in the knowledge base.
        expected: usize,
        /// The vector's length.
        actual: usize,
    },

    /// The document's rows changed while it was being written (a
    /// concurrent ingest of the same document); nothing was written.
    #[error("document {document_id} changed while it was being written; apply the event again")]
    Conflict {
        /// The document.
        document_id: Uuid,
    },

    /// A chunk's position does not fit the table (over 2^31 chunks).
    #[error("document {document_id} has too many chunks ({chunks}); raise the chunker's size")]
    TooManyChunks {
        /// The document.
        document_id: Uuid,
        /// Chunks it was split into.
        chunks: usize,
    },

    /// A document breaks the knowledge base's limits (see
    /// [`Document::check`](super::Document::check)); nothing was written.
    #[error(transparent)]
    InvalidInput(#[from] crate::error::InvalidInput),

    /// The database refused a value (one it cannot hold, one that breaks
    /// a constraint, one too long for an index): writing it again would
    /// fail again, so it is not transient and the event is parked. Unlike
    /// [`Backend`](KnowledgeError::Backend), not a failure of the database.
    #[error("the database refused a knowledge base write while {context}: {source}; the value cannot be stored as it is")]
    Refused {
        /// What the knowledge base was doing.
        context: &'static str,
        /// The driver's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },

    /// The database failed; the operation did not complete.
    #[error("knowledge base database error while {context}: {source}; check that the database is reachable, then retry")]
    Backend {
        /// What the knowledge base was doing.
        context: &'static str,
        /// The driver's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
}

impl KnowledgeError {
    /// Wraps a backend (driver) error with what the knowledge base was
    /// doing.
    pub fn backend(
        context: &'static str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        KnowledgeError::Backend {
            context,
            source: source.into(),
        }
    }

    /// Whether the failure is a dependency's (database, embedding service)
    /// and may pass on retry, as opposed to one of the input.
    pub fn is_transient(&self) -> bool {
        match self {
            KnowledgeError::Embed(e) => e.is_transient(),
            KnowledgeError::Backend { .. }
            | KnowledgeError::Conflict { .. }
            | KnowledgeError::Cache(_) => true,
            _ => false,
        }
    }

    /// The error as a projection returns it: transient failures (database,
    /// embedding service) are [dependency](crate::handler::FailureKind::Dependency)
    /// failures, retried and never parked; the others are failures of the
    /// event. (`?` alone would make every error an event failure.)
    pub fn into_handler_error(self) -> crate::HandlerError {
        if self.is_transient() {
            crate::HandlerError::dependency(self)
        } else {
            crate::HandlerError::event(self)
        }
    }
}

/// Checks that `model` can name an embedding model: not empty, at most 200
/// characters, no NUL or other control characters.
pub fn validate_model_name(model: &str) -> Result<(), KnowledgeError> {
    let reason = if model.is_empty() {
        Some("it is empty")
    } else if model.chars().count() > 200 {
        Some("it is longer than 200 characters")
    } else if model.chars().any(char::is_control) {
        Some("it contains control characters")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(KnowledgeError::InvalidModel {
            model: model.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_names() {
        assert!(validate_model_name("text-embedding-3-small").is_ok());
        for (model, reason) in [
            (String::new(), "empty"),
            ("m".repeat(201), "longer than 200"),
            ("a\0b".to_owned(), "control"),
            ("a\nb".to_owned(), "control"),
        ] {
            match validate_model_name(&model) {
                Err(KnowledgeError::InvalidModel { reason: r, .. }) => {
                    assert!(r.contains(reason), "{r}")
                }
                other => panic!("{model:?}: {other:?}"),
            }
        }
        // refused input is not transient: it is parked, not retried
        let err = validate_model_name("").expect_err("an empty name is refused");
        assert!(!err.is_transient());
    }
}
