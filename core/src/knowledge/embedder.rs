//! The [`Embedder`] trait and its error type.

use std::future::Future;
use std::time::Duration;

use super::cache::{CacheError, TextHash};

/// Turns texts into vectors: one call embeds a batch.
///
/// Implementations: [`HashingEmbedder`](super::HashingEmbedder) (local,
/// deterministic, no network), `HttpEmbedder` (an OpenAI-compatible
/// `/v1/embeddings` service, feature `http-embedder`), and
/// [`CachedEmbedder`](super::CachedEmbedder), which wraps any of them with an
/// [`EmbeddingCache`](super::EmbeddingCache).
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// use annals::knowledge::{Embedder, HashingEmbedder};
///
/// let embedder = HashingEmbedder::new(64);
/// let vectors = embedder.embed(&["opening hours", "parking"]).await?;
/// assert_eq!(vectors.len(), 2);
/// assert_eq!(vectors[0].len(), embedder.dimensions());
/// # Ok::<(), annals::knowledge::EmbedError>(())
/// # }).unwrap();
/// ```
pub trait Embedder: Send + Sync {
    /// The model's name, stored with every embedding it produced: vectors of
    /// different models are never compared.
    fn model(&self) -> &str;

    /// The length of every vector this embedder returns.
    fn dimensions(&self) -> usize;

    /// Embeds `texts`, returning one vector of [`dimensions`](Self::dimensions)
    /// per text, in order. An empty batch returns an empty vector without a
    /// call.
    fn embed(
        &self,
        texts: &[&str],
    ) -> impl Future<Output = Result<Vec<Vec<f32>>, EmbedError>> + Send;

    /// Removes whatever this embedder keeps of the texts with these hashes
    /// under `model` (the entries of an
    /// [`EmbeddingCache`](super::EmbeddingCache)); returns how many entries
    /// it removed. Erasing a subject's documents calls it
    /// ([`KnowledgeBase::forget_subject`](super::KnowledgeBase::forget_subject)).
    ///
    /// The default keeps nothing and removes nothing. An embedder that
    /// caches, or wraps one that does, must override it (and pass it on to
    /// what it wraps), or erased text stays in its cache.
    fn forget_cached(
        &self,
        model: &str,
        texts: &[TextHash],
    ) -> impl Future<Output = Result<u64, CacheError>> + Send {
        let _ = (model, texts);
        std::future::ready(Ok(0))
    }
}

impl<E: Embedder + ?Sized> Embedder for std::sync::Arc<E> {
    fn model(&self) -> &str {
        (**self).model()
    }
    fn dimensions(&self) -> usize {
        (**self).dimensions()
    }
    fn embed(
        &self,
        texts: &[&str],
    ) -> impl Future<Output = Result<Vec<Vec<f32>>, EmbedError>> + Send {
        (**self).embed(texts)
    }
    fn forget_cached(
        &self,
        model: &str,
        texts: &[TextHash],
    ) -> impl Future<Output = Result<u64, CacheError>> + Send {
        (**self).forget_cached(model, texts)
    }
}

impl<E: Embedder + ?Sized> Embedder for &E {
    fn model(&self) -> &str {
        (**self).model()
    }
    fn dimensions(&self) -> usize {
        (**self).dimensions()
    }
    fn embed(
        &self,
        texts: &[&str],
    ) -> impl Future<Output = Result<Vec<Vec<f32>>, EmbedError>> + Send {
        (**self).embed(texts)
    }
    fn forget_cached(
        &self,
        model: &str,
        texts: &[TextHash],
    ) -> impl Future<Output = Result<u64, CacheError>> + Send {
        (**self).forget_cached(model, texts)
    }
}

/// Why an embedding call failed. Nothing was stored.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EmbedError {
    /// The service kept answering 429 Too Many Requests.
    #[error("the embedding service rate-limited every attempt ({attempts} attempt(s)); slow the caller down or give the retry policy more attempts")]
    RateLimited {
        /// Attempts made.
        attempts: u32,
        /// The last `Retry-After` the service sent, if any.
        retry_after: Option<Duration>,
    },

    /// The service answered with an error status (other than 429).
    #[error("the embedding service answered HTTP {status} ({attempts} attempt(s)): {body}")]
    Status {
        /// The HTTP status code.
        status: u16,
        /// The start of the response body (the service's explanation).
        body: String,
        /// Attempts made (4xx statuses are not retried).
        attempts: u32,
    },

    /// No answer within the configured timeout.
    #[error("the embedding service did not answer within {timeout:?} ({attempts} attempt(s)); check that it is up, or raise the timeout")]
    Timeout {
        /// The per-request timeout.
        timeout: Duration,
        /// Attempts made.
        attempts: u32,
    },

    /// The service could not be reached (connection refused, DNS, TLS).
    #[error("cannot reach the embedding service ({attempts} attempt(s)): {source}")]
    Transport {
        /// Attempts made.
        attempts: u32,
        /// The client's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },

    /// The service answered 2xx with a body that is not an embeddings
    /// response.
    #[error("the embedding service sent a malformed response: {message}")]
    MalformedResponse {
        /// What is wrong with it.
        message: String,
    },

    /// A vector has the wrong length for the model.
    #[error("model `{model}` returned a vector of {actual} dimensions, but it is configured for {expected}; fix the configured dimensions")]
    Dimensions {
        /// The model.
        model: String,
        /// The configured dimensions.
        expected: usize,
        /// The returned vector's length.
        actual: usize,
    },

    /// The service returned a different number of vectors than texts sent.
    #[error("sent {sent} text(s) to the embedding service but got {received} vector(s) back")]
    Count {
        /// Texts sent.
        sent: usize,
        /// Vectors received.
        received: usize,
    },

    /// The embedder's configuration is unusable.
    #[error("invalid embedder configuration: {0}")]
    Config(String),

    /// Any other failure of a user-implemented embedder.
    #[error("the embedder failed: {0}")]
    Other(#[source] Box<dyn std::error::Error + Send + Sync + 'static>),
}

impl EmbedError {
    /// Whether trying again later may succeed (rate limits, timeouts,
    /// unreachable services and 5xx answers): the projection runner treats
    /// these as failures of a dependency, not of the event.
    pub fn is_transient(&self) -> bool {
        match self {
            EmbedError::RateLimited { .. }
            | EmbedError::Timeout { .. }
            | EmbedError::Transport { .. } => true,
            EmbedError::Status { status, .. } => *status >= 500,
            _ => false,
        }
    }
}

/// Checks an embedder's answer: one vector per text, each of the expected
/// length.
pub(crate) fn check_vectors(
    model: &str,
    dimensions: usize,
    sent: usize,
    vectors: &[Vec<f32>],
) -> Result<(), EmbedError> {
    if vectors.len() != sent {
        return Err(EmbedError::Count {
            sent,
            received: vectors.len(),
        });
    }
    if let Some(v) = vectors.iter().find(|v| v.len() != dimensions) {
        return Err(EmbedError::Dimensions {
            model: model.to_owned(),
            expected: dimensions,
            actual: v.len(),
        });
    }
    Ok(())
}
