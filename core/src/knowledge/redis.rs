//! The Redis embedding cache (feature `redis`).

use std::future::Future;
use std::time::Duration;

use redis::aio::ConnectionManager;

use super::cache::{CacheError, EmbeddingCache, TextHash, DEFAULT_CACHE_TTL};

/// An embedding cache in Redis, shared by every process that uses the same
/// server and prefix, and kept across restarts.
///
/// Keys are `{prefix}:{model}:{sha256 hex of the text}` (prefix
/// `annals:embedding` by default); values are the vector as little-endian
/// `f32` bytes (4 bytes per dimension), written with `SET ... EX ttl`
/// (default [`DEFAULT_CACHE_TTL`], 7 days). Lookups are one `MGET`, writes
/// one pipeline. [`invalidate_model`](EmbeddingCache::invalidate_model)
/// walks the model's keys with `SCAN` (never `KEYS`) and `UNLINK`s them;
/// [`remove_many`](EmbeddingCache::remove_many) (erasure) `DEL`s the given
/// keys, at most 1,000 per command.
///
/// Erasure removes the keys from the server and its replicas. A Redis
/// that persists (RDB snapshots, an append-only file) keeps the removed
/// values in files written before, until they are rewritten; run the
/// cache without persistence (it is a cache) or mind those files.
///
/// The connection is a [`ConnectionManager`]: it reconnects by itself after
/// Redis restarts.
///
/// ```no_run
/// # async fn demo() -> Result<(), annals::knowledge::CacheError> {
/// use annals::knowledge::{CachedEmbedder, HashingEmbedder, RedisEmbeddingCache};
/// let cache = RedisEmbeddingCache::connect("redis://127.0.0.1:6379/").await?;
/// let embedder = CachedEmbedder::new(HashingEmbedder::new(384), cache);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisEmbeddingCache {
    conn: ConnectionManager,
    prefix: String,
    ttl: Duration,
}

impl std::fmt::Debug for RedisEmbeddingCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisEmbeddingCache")
            .field("prefix", &self.prefix)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

fn backend(context: &'static str, e: redis::RedisError) -> CacheError {
    CacheError::Backend {
        context,
        source: Box::new(e),
    }
}

impl RedisEmbeddingCache {
    /// Connects to the Redis at `url` (`redis://host:port/db`).
    ///
    /// A cache must never hold embedding up: connecting gives up after 2 s
    /// and 2 retries, and each command after 2 s (a [`CachedEmbedder`]
    /// then embeds without the cache). For other settings, build the
    /// [`ConnectionManager`] yourself and use [`new`](Self::new).
    ///
    /// [`CachedEmbedder`]: super::CachedEmbedder
    pub async fn connect(url: &str) -> Result<Self, CacheError> {
        let client = redis::Client::open(url).map_err(|e| backend("parsing the Redis URL", e))?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Duration::from_secs(2))
            .set_response_timeout(Duration::from_secs(2))
            .set_number_of_retries(2)
            .set_max_delay(1_000);
        let conn = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(|e| backend("connecting to Redis", e))?;
        Ok(Self::new(conn))
    }

    /// A cache on an existing connection.
    pub fn new(conn: ConnectionManager) -> Self {
        RedisEmbeddingCache {
            conn,
            prefix: "annals:embedding".to_owned(),
            ttl: DEFAULT_CACHE_TTL,
        }
    }

    /// Sets the key prefix (to separate applications sharing a server).
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Sets the time-to-live of new entries (whole seconds, at least 1).
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// The key of an embedding.
    pub fn key(&self, model: &str, hash: &TextHash) -> String {
        format!("{}:{model}:{}", self.prefix, hash.to_hex())
    }

    async fn get(
        &self,
        model: &str,
        keys: &[TextHash],
    ) -> Result<Vec<Option<Vec<f32>>>, CacheError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let names: Vec<String> = keys.iter().map(|k| self.key(model, k)).collect();
        let mut conn = self.conn.clone();
        let values: Vec<Option<Vec<u8>>> = redis::cmd("MGET")
            .arg(&names)
            .query_async(&mut conn)
            .await
            .map_err(|e| backend("reading embeddings", e))?;
        Ok(values
            .into_iter()
            .zip(&names)
            .map(|(value, name)| {
                let bytes = value?;
                match decode(&bytes) {
                    Ok(v) => Some(v),
                    Err(message) => {
                        let error = CacheError::Corrupt {
                            key: name.clone(),
                            message,
                        };
                        tracing::warn!(%error, "ignoring a corrupt cached embedding");
                        None
                    }
                }
            })
            .collect())
    }

    async fn put(&self, model: &str, entries: &[(TextHash, &[f32])]) -> Result<(), CacheError> {
        if entries.is_empty() {
            return Ok(());
        }
        let ttl = self.ttl.as_secs().max(1);
        let mut pipe = redis::pipe();
        for (key, vector) in entries {
            pipe.cmd("SET")
                .arg(self.key(model, key))
                .arg(encode(vector))
                .arg("EX")
                .arg(ttl)
                .ignore();
        }
        let mut conn = self.conn.clone();
        pipe.query_async::<()>(&mut conn)
            .await
            .map_err(|e| backend("writing embeddings", e))
    }

    async fn remove(&self, model: &str, keys: &[TextHash]) -> Result<u64, CacheError> {
        let mut conn = self.conn.clone();
        let mut removed = 0u64;
        for batch in keys.chunks(1000) {
            let names: Vec<String> = batch.iter().map(|k| self.key(model, k)).collect();
            let n: u64 = redis::cmd("DEL")
                .arg(&names)
                .query_async(&mut conn)
                .await
                .map_err(|e| backend("removing embeddings", e))?;
            removed += n;
        }
        Ok(removed)
    }

    async fn invalidate(&self, model: &str) -> Result<u64, CacheError> {
        // exactly this model's keys: the hash part is 64 characters, so a
        // model whose name extends this one (`m:x`) does not match
        let pattern = format!(
            "{}:{}:{}",
            glob_escape(&self.prefix),
            glob_escape(model),
            "?".repeat(64)
        );
        let mut conn = self.conn.clone();
        let mut cursor: u64 = 0;
        let mut removed = 0u64;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await
                .map_err(|e| backend("listing a model's embeddings", e))?;
            if !keys.is_empty() {
                let n: u64 = redis::cmd("UNLINK")
                    .arg(&keys)
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| backend("removing a model's embeddings", e))?;
                removed += n;
            }
            if next == 0 {
                return Ok(removed);
            }
            cursor = next;
        }
    }
}

/// Escapes Redis glob characters (`* ? [ ] \`).
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn encode(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn decode(bytes: &[u8]) -> Result<Vec<f32>, String> {
    if bytes.is_empty() || bytes.len() % 4 != 0 {
        return Err(format!(
            "{} bytes is not a whole number of 4-byte floats",
            bytes.len()
        ));
    }
    Ok(bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

impl EmbeddingCache for RedisEmbeddingCache {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn get_many(
        &self,
        model: &str,
        keys: &[TextHash],
    ) -> impl Future<Output = Result<Vec<Option<Vec<f32>>>, CacheError>> + Send {
        self.get(model, keys)
    }

    fn put_many(
        &self,
        model: &str,
        entries: &[(TextHash, &[f32])],
    ) -> impl Future<Output = Result<(), CacheError>> + Send {
        self.put(model, entries)
    }

    fn invalidate_model(
        &self,
        model: &str,
    ) -> impl Future<Output = Result<u64, CacheError>> + Send {
        self.invalidate(model)
    }

    fn remove_many(
        &self,
        model: &str,
        keys: &[TextHash],
    ) -> impl Future<Output = Result<u64, CacheError>> + Send {
        self.remove(model, keys)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    #[test]
    fn vectors_round_trip_and_garbage_is_refused() {
        let v = vec![0.25f32, -1.5, 3.0e-7];
        assert_eq!(decode(&encode(&v)).unwrap(), v);
        assert!(decode(b"abc").is_err());
        assert!(decode(b"").is_err());
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }
}
