//! annals-core's integration tests, in one binary (one link instead of one
//! per file); each module is built when the features it needs are on.

#[cfg(feature = "testing")]
mod conformance;
#[cfg(feature = "http-embedder")]
mod http_embedder;
#[cfg(all(feature = "testing", feature = "knowledge"))]
mod knowledge;
#[cfg(all(feature = "testing", feature = "personal"))]
mod personal;
mod projections;
#[cfg(all(feature = "testing", feature = "redis"))]
mod redis_cache;
#[cfg(feature = "otel")]
mod trace;
