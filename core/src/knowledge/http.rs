//! The OpenAI-compatible HTTP embedder (feature `http-embedder`).

use std::fmt;
use std::future::Future;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::embedder::{check_vectors, EmbedError, Embedder};
use crate::RetryPolicy;

/// An API key: sent as `Authorization: Bearer ...`, never printed (its
/// `Debug` shows `ApiKey(***)`, and it has no `Display` or `Serialize`).
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct ApiKey(String);

impl ApiKey {
    /// A key.
    pub fn new(key: impl Into<String>) -> Self {
        ApiKey(key.into())
    }

    /// The key in the environment variable `var`, if set and not empty.
    pub fn from_env(var: &str) -> Option<Self> {
        std::env::var(var)
            .ok()
            .filter(|k| !k.is_empty())
            .map(ApiKey)
    }

    fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(***)")
    }
}

/// Where and how to reach an OpenAI-compatible embeddings service
/// (OpenAI, Azure-style proxies, vLLM, Ollama, LiteLLM, ...). Deserializes
/// from an application's configuration; durations are in milliseconds.
///
/// ```
/// use annals::knowledge::{ApiKey, HttpEmbedderConfig};
/// let config = HttpEmbedderConfig::new("https://api.openai.com", "text-embedding-3-small", 1536)
///     .api_key(ApiKey::new("sk-..."))
///     .batch_size(256);
/// assert!(!format!("{config:?}").contains("sk-"));
/// ```
#[derive(Debug, Clone, Deserialize)]
#[non_exhaustive]
pub struct HttpEmbedderConfig {
    /// The service's root URL; requests go to `{base_url}/v1/embeddings`
    /// (a base URL that already ends in `/v1` is used as is).
    pub base_url: String,
    /// The model name sent with each request and stored with each vector.
    pub model: String,
    /// The length of the model's vectors; an answer of another length is an
    /// error.
    pub dimensions: usize,
    /// The API key, if the service needs one.
    #[serde(default)]
    pub api_key: Option<ApiKey>,
    /// Texts per request (default 100); longer inputs are split.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Per-request timeout (default 30 s).
    #[serde(default = "default_timeout", with = "millis")]
    pub timeout: Duration,
    /// Whether to send `dimensions` in the request (OpenAI's
    /// `text-embedding-3-*` models can shorten their vectors; many other
    /// services reject the field). Default false.
    #[serde(default)]
    pub send_dimensions: bool,
    /// Retries of rate limits (429), timeouts, unreachable services and
    /// 5xx answers. Other 4xx answers and malformed bodies are not retried.
    /// A 429's `Retry-After` (in seconds) is honoured, up to the policy's
    /// `max_delay`.
    #[serde(default)]
    pub retry: RetryPolicy,
}

fn default_batch_size() -> usize {
    100
}

fn default_timeout() -> Duration {
    Duration::from_secs(30)
}

mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

impl HttpEmbedderConfig {
    /// A configuration with the defaults: no key, 100 texts per request,
    /// 30 s timeout, the default [`RetryPolicy`].
    pub fn new(base_url: impl Into<String>, model: impl Into<String>, dimensions: usize) -> Self {
        HttpEmbedderConfig {
            base_url: base_url.into(),
            model: model.into(),
            dimensions,
            api_key: None,
            batch_size: default_batch_size(),
            timeout: default_timeout(),
            send_dimensions: false,
            retry: RetryPolicy::default(),
        }
    }

    /// Sets the API key.
    pub fn api_key(mut self, key: ApiKey) -> Self {
        self.api_key = Some(key);
        self
    }

    /// Sets the texts per request.
    pub fn batch_size(mut self, texts: usize) -> Self {
        self.batch_size = texts;
        self
    }

    /// Sets the per-request timeout.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets the retry policy.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// Sends `dimensions` with each request.
    pub fn send_dimensions(mut self, send: bool) -> Self {
        self.send_dimensions = send;
        self
    }
}

/// An [`Embedder`] that calls an OpenAI-compatible `POST /v1/embeddings`.
///
/// Each batch of up to `batch_size` texts is one request, retried by the
/// configured [`RetryPolicy`] when the failure is transient (429, 5xx,
/// timeout, connection); after a 429 it waits at least the answer's
/// `Retry-After` (capped at the policy's `max_delay`). Every request is counted in
/// [`EMBEDDER_CALLS_TOTAL`](crate::metrics::EMBEDDER_CALLS_TOTAL), every
/// failure in [`EMBEDDER_ERRORS_TOTAL`](crate::metrics::EMBEDDER_ERRORS_TOTAL),
/// each retry in [`RETRIES_TOTAL`](crate::metrics::RETRIES_TOTAL) (handler
/// `http_embedder`). The API key is never logged or put in an error.
///
/// ```no_run
/// # async fn demo() -> Result<(), annals::knowledge::EmbedError> {
/// use annals::knowledge::{ApiKey, Embedder, HttpEmbedder, HttpEmbedderConfig};
/// let config = HttpEmbedderConfig::new("https://api.openai.com", "text-embedding-3-small", 1536);
/// let config = match ApiKey::from_env("OPENAI_API_KEY") { Some(k) => config.api_key(k), None => config };
/// let embedder = HttpEmbedder::new(config)?;
/// let vectors = embedder.embed(&["When is the clinic open?"]).await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct HttpEmbedder {
    config: HttpEmbedderConfig,
    endpoint: String,
    client: reqwest::Client,
}

#[derive(Serialize)]
struct Request<'a> {
    model: &'a str,
    input: &'a [&'a str],
    encoding_format: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    dimensions: Option<usize>,
}

#[derive(Deserialize)]
struct Response {
    data: Vec<Datum>,
}

#[derive(Deserialize)]
struct Datum {
    embedding: Vec<f32>,
    index: usize,
}

impl HttpEmbedder {
    /// An embedder for `config`; fails on an unusable configuration (no
    /// model, zero dimensions or batch size, a base URL that is not
    /// `http(s)://...`).
    pub fn new(config: HttpEmbedderConfig) -> Result<Self, EmbedError> {
        if config.model.trim().is_empty() {
            return Err(EmbedError::Config("the model name is empty".to_owned()));
        }
        if config.dimensions == 0 {
            return Err(EmbedError::Config(
                "dimensions must be at least 1".to_owned(),
            ));
        }
        if config.batch_size == 0 {
            return Err(EmbedError::Config(
                "batch_size must be at least 1".to_owned(),
            ));
        }
        let base = config.base_url.trim_end_matches('/');
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(EmbedError::Config(format!(
                "base_url {:?} must start with http:// or https://",
                config.base_url
            )));
        }
        let endpoint = if base.ends_with("/v1") {
            format!("{base}/embeddings")
        } else {
            format!("{base}/v1/embeddings")
        };
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .build()
            .map_err(|e| EmbedError::Config(format!("cannot build the HTTP client: {e}")))?;
        Ok(HttpEmbedder {
            config,
            endpoint,
            client,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &HttpEmbedderConfig {
        &self.config
    }

    /// The URL requests go to.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    async fn embed_all(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let mut out = Vec::with_capacity(texts.len());
        for batch in texts.chunks(self.config.batch_size.max(1)) {
            let vectors = self
                .config
                .retry
                .run_with_hints(
                    "http_embedder",
                    |_| self.attempt(batch),
                    EmbedError::is_transient,
                    |e| match e {
                        EmbedError::RateLimited { retry_after, .. } => *retry_after,
                        _ => None,
                    },
                )
                .await
                .map_err(|e| with_attempts(e.last, e.attempts))?;
            out.extend(vectors);
        }
        Ok(out)
    }

    async fn attempt(&self, batch: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let model = self.config.model.as_str();
        crate::metrics::record_embedder_call(model, batch.len());
        let result = self.send(batch).await;
        if let Err(e) = &result {
            let kind = match e {
                EmbedError::RateLimited { .. } => "rate_limited",
                EmbedError::Status { .. } => "status",
                EmbedError::Timeout { .. } => "timeout",
                EmbedError::Transport { .. } => "transport",
                _ => "malformed",
            };
            crate::metrics::record_embedder_error(model, kind);
            tracing::debug!(model, error = %e, "embedding request failed");
        }
        result
    }

    async fn send(&self, batch: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let timeout = self.config.timeout;
        let transport = |e: reqwest::Error| {
            if e.is_timeout() {
                EmbedError::Timeout {
                    timeout,
                    attempts: 1,
                }
            } else {
                // without the URL: it is ours, and keeps errors short
                EmbedError::Transport {
                    attempts: 1,
                    source: Box::new(e.without_url()),
                }
            }
        };
        let body = Request {
            model: &self.config.model,
            input: batch,
            encoding_format: "float",
            dimensions: self
                .config
                .send_dimensions
                .then_some(self.config.dimensions),
        };
        let mut request = self.client.post(&self.endpoint).json(&body);
        if let Some(key) = &self.config.api_key {
            request = request.bearer_auth(key.expose());
        }
        let response = request.send().await.map_err(transport)?;
        let status = response.status();
        if status.as_u16() == 429 {
            let retry_after = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            return Err(EmbedError::RateLimited {
                attempts: 1,
                retry_after,
            });
        }
        let bytes = response.bytes().await.map_err(transport)?;
        if !status.is_success() {
            let text = String::from_utf8_lossy(&bytes);
            let body: String = text.chars().take(500).collect();
            return Err(EmbedError::Status {
                status: status.as_u16(),
                body,
                attempts: 1,
            });
        }
        let parsed: Response =
            serde_json::from_slice(&bytes).map_err(|e| EmbedError::MalformedResponse {
                message: format!("not an embeddings response ({e})"),
            })?;
        let mut data = parsed.data;
        data.sort_by_key(|d| d.index);
        if data.iter().enumerate().any(|(i, d)| d.index != i) {
            return Err(EmbedError::MalformedResponse {
                message: format!(
                    "the vectors' indexes are not 0 to {}",
                    batch.len().saturating_sub(1)
                ),
            });
        }
        let vectors: Vec<Vec<f32>> = data.into_iter().map(|d| d.embedding).collect();
        check_vectors(
            &self.config.model,
            self.config.dimensions,
            batch.len(),
            &vectors,
        )?;
        Ok(vectors)
    }
}

/// Puts the number of attempts made into the error.
fn with_attempts(e: EmbedError, n: u32) -> EmbedError {
    match e {
        EmbedError::RateLimited { retry_after, .. } => EmbedError::RateLimited {
            attempts: n,
            retry_after,
        },
        EmbedError::Status { status, body, .. } => EmbedError::Status {
            status,
            body,
            attempts: n,
        },
        EmbedError::Timeout { timeout, .. } => EmbedError::Timeout {
            timeout,
            attempts: n,
        },
        EmbedError::Transport { source, .. } => EmbedError::Transport {
            attempts: n,
            source,
        },
        other => other,
    }
}

impl Embedder for HttpEmbedder {
    fn model(&self) -> &str {
        &self.config.model
    }

    fn dimensions(&self) -> usize {
        self.config.dimensions
    }

    fn embed(
        &self,
        texts: &[&str],
    ) -> impl Future<Output = Result<Vec<Vec<f32>>, EmbedError>> + Send {
        self.embed_all(texts)
    }
}
