//! The embedding cache: a trait, the in-memory LRU implementation, and the
//! embedder that goes through a cache.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::time::Instant;

use super::embedder::{check_vectors, EmbedError, Embedder};

/// How long a cached embedding lives by default: 7 days.
pub const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// The SHA-256 of a text: with the model name, the key of a cached
/// embedding.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TextHash([u8; 32]);

impl TextHash {
    /// The SHA-256 of `text` (its UTF-8 bytes).
    pub fn of(text: &str) -> Self {
        TextHash(Sha256::digest(text.as_bytes()).into())
    }

    /// The raw digest.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The digest in lower-case hex (64 characters).
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

impl fmt::Display for TextHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for TextHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TextHash({})", self.to_hex())
    }
}

/// Why an embedding cache operation failed. A [`CachedEmbedder`] never fails
/// because of its cache: it logs the error and goes to the embedder.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CacheError {
    /// The cache's backend (Redis) failed or is unreachable.
    #[error("embedding cache backend failed while {context}: {source}; check that it is reachable (embeddings are computed without the cache meanwhile)")]
    Backend {
        /// What the cache was doing.
        context: &'static str,
        /// The client's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
    /// A cached value is not a vector (written by something else).
    #[error("cached embedding `{key}` is corrupt ({message}); it is ignored, and the next write replaces it")]
    Corrupt {
        /// The cache key.
        key: String,
        /// What is wrong with it.
        message: String,
    },
}

/// Stores embeddings by (model, [`TextHash`] of the text), each for a
/// time-to-live.
///
/// Implementations: [`InMemoryEmbeddingCache`] (bounded, least recently
/// used out first) and `RedisEmbeddingCache` (feature `redis`). Wrap an
/// embedder with [`CachedEmbedder`] to use one.
pub trait EmbeddingCache: Send + Sync {
    /// A short name for metrics labels (`memory`, `redis`).
    fn name(&self) -> &'static str;

    /// Looks up each key: one slot per key, in order, `None` for a miss.
    fn get_many(
        &self,
        model: &str,
        keys: &[TextHash],
    ) -> impl Future<Output = Result<Vec<Option<Vec<f32>>>, CacheError>> + Send;

    /// Stores embeddings under `model`, each for the cache's time-to-live.
    fn put_many(
        &self,
        model: &str,
        entries: &[(TextHash, &[f32])],
    ) -> impl Future<Output = Result<(), CacheError>> + Send;

    /// Removes every embedding of `model`; returns how many there were.
    fn invalidate_model(&self, model: &str)
        -> impl Future<Output = Result<u64, CacheError>> + Send;

    /// Removes the embeddings of `keys` under `model` (those there are);
    /// returns how many were removed. What erasure calls
    /// ([`KnowledgeBase::forget_subject`](super::KnowledgeBase::forget_subject)):
    /// once it returns `Ok`, the cache holds none of them.
    fn remove_many(
        &self,
        model: &str,
        keys: &[TextHash],
    ) -> impl Future<Output = Result<u64, CacheError>> + Send;
}

impl<C: EmbeddingCache + ?Sized> EmbeddingCache for Arc<C> {
    fn name(&self) -> &'static str {
        (**self).name()
    }
    fn get_many(
        &self,
        model: &str,
        keys: &[TextHash],
    ) -> impl Future<Output = Result<Vec<Option<Vec<f32>>>, CacheError>> + Send {
        (**self).get_many(model, keys)
    }
    fn put_many(
        &self,
        model: &str,
        entries: &[(TextHash, &[f32])],
    ) -> impl Future<Output = Result<(), CacheError>> + Send {
        (**self).put_many(model, entries)
    }
    fn invalidate_model(
        &self,
        model: &str,
    ) -> impl Future<Output = Result<u64, CacheError>> + Send {
        (**self).invalidate_model(model)
    }
    fn remove_many(
        &self,
        model: &str,
        keys: &[TextHash],
    ) -> impl Future<Output = Result<u64, CacheError>> + Send {
        (**self).remove_many(model, keys)
    }
}

// ---------------------------------------------------------------------------
// In memory
// ---------------------------------------------------------------------------

/// An in-process embedding cache: at most `capacity` embeddings, the least
/// recently used evicted first, each expiring after the TTL (default
/// [`DEFAULT_CACHE_TTL`]). Time is Tokio's clock, so tests can pause it.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
/// use annals::knowledge::{CachedEmbedder, Embedder, HashingEmbedder, InMemoryEmbeddingCache};
///
/// let embedder = CachedEmbedder::new(HashingEmbedder::new(64), InMemoryEmbeddingCache::new(10_000));
/// embedder.embed(&["opening hours"]).await?; // computed, then cached
/// embedder.embed(&["opening hours"]).await?; // from the cache
/// assert_eq!(embedder.cache().len(), 1);
/// # Ok::<(), annals::knowledge::EmbedError>(())
/// # }).unwrap();
/// ```
pub struct InMemoryEmbeddingCache {
    ttl: Duration,
    capacity: usize,
    state: Mutex<Lru>,
}

#[derive(Default)]
struct Lru {
    /// model -> text hash -> slot
    models: HashMap<Arc<str>, HashMap<TextHash, Slot>>,
    /// use tick -> key; the first entry is the least recently used
    order: BTreeMap<u64, (Arc<str>, TextHash)>,
    tick: u64,
    len: usize,
}

struct Slot {
    vector: Arc<[f32]>,
    expires: Instant,
    tick: u64,
}

impl Lru {
    fn next_tick(&mut self) -> u64 {
        self.tick += 1;
        self.tick
    }

    /// Removes one entry; returns whether there was one.
    fn remove(&mut self, model: &str, key: &TextHash) -> bool {
        let mut removed = false;
        if let Some(map) = self.models.get_mut(model) {
            if let Some(slot) = map.remove(key) {
                self.order.remove(&slot.tick);
                self.len -= 1;
                removed = true;
            }
            if map.is_empty() {
                self.models.remove(model);
            }
        }
        removed
    }
}

impl fmt::Debug for InMemoryEmbeddingCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InMemoryEmbeddingCache")
            .field("ttl", &self.ttl)
            .field("capacity", &self.capacity)
            .field("len", &self.len())
            .finish()
    }
}

impl InMemoryEmbeddingCache {
    /// A cache of at most `capacity` embeddings (at least 1), with the
    /// default TTL.
    pub fn new(capacity: usize) -> Self {
        InMemoryEmbeddingCache {
            ttl: DEFAULT_CACHE_TTL,
            capacity: capacity.max(1),
            state: Mutex::new(Lru::default()),
        }
    }

    /// Sets the time-to-live of new entries.
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Embeddings held now (expired ones included until they are looked up
    /// or evicted).
    pub fn len(&self) -> usize {
        self.lock().len
    }

    /// Whether the cache holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Lru> {
        // the state stays consistent between statements: a panic elsewhere
        // cannot leave it half-updated
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get_sync(&self, model: &str, keys: &[TextHash]) -> Vec<Option<Vec<f32>>> {
        let now = Instant::now();
        let mut lru = self.lock();
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            let state = lru
                .models
                .get(model)
                .and_then(|m| m.get(key))
                .map(|slot| (slot.expires > now, slot.tick));
            match state {
                Some((true, old)) => {
                    let tick = lru.next_tick();
                    let lru = &mut *lru;
                    if let Some(entry) = lru.order.remove(&old) {
                        lru.order.insert(tick, entry);
                    }
                    let slot = lru.models.get_mut(model).and_then(|m| m.get_mut(key));
                    out.push(slot.map(|slot| {
                        slot.tick = tick;
                        slot.vector.to_vec()
                    }));
                }
                Some((false, _)) => {
                    lru.remove(model, key);
                    out.push(None);
                }
                None => out.push(None),
            }
        }
        out
    }

    fn put_sync(&self, model: &str, entries: &[(TextHash, &[f32])]) {
        let expires = Instant::now() + self.ttl;
        let mut guard = self.lock();
        let lru = &mut *guard;
        for (key, vector) in entries {
            lru.remove(model, key);
            while lru.len >= self.capacity {
                let Some((_, (m, k))) = lru.order.pop_first() else {
                    break;
                };
                if let Some(map) = lru.models.get_mut(&m) {
                    if map.remove(&k).is_some() {
                        lru.len -= 1;
                    }
                    if map.is_empty() {
                        lru.models.remove(&m);
                    }
                }
            }
            let tick = lru.next_tick();
            let model: Arc<str> = match lru.models.get_key_value(model) {
                Some((m, _)) => m.clone(),
                None => Arc::from(model),
            };
            lru.order.insert(tick, (model.clone(), *key));
            lru.models.entry(model).or_default().insert(
                *key,
                Slot {
                    vector: Arc::from(*vector),
                    expires,
                    tick,
                },
            );
            lru.len += 1;
        }
    }

    fn remove_sync(&self, model: &str, keys: &[TextHash]) -> u64 {
        let mut lru = self.lock();
        keys.iter().filter(|key| lru.remove(model, key)).count() as u64
    }

    fn invalidate_sync(&self, model: &str) -> u64 {
        let mut lru = self.lock();
        let Some(map) = lru.models.remove(model) else {
            return 0;
        };
        for slot in map.values() {
            lru.order.remove(&slot.tick);
        }
        lru.len -= map.len();
        map.len() as u64
    }
}

impl EmbeddingCache for InMemoryEmbeddingCache {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn get_many(
        &self,
        model: &str,
        keys: &[TextHash],
    ) -> impl Future<Output = Result<Vec<Option<Vec<f32>>>, CacheError>> + Send {
        std::future::ready(Ok(self.get_sync(model, keys)))
    }

    fn put_many(
        &self,
        model: &str,
        entries: &[(TextHash, &[f32])],
    ) -> impl Future<Output = Result<(), CacheError>> + Send {
        self.put_sync(model, entries);
        std::future::ready(Ok(()))
    }

    fn invalidate_model(
        &self,
        model: &str,
    ) -> impl Future<Output = Result<u64, CacheError>> + Send {
        std::future::ready(Ok(self.invalidate_sync(model)))
    }

    fn remove_many(
        &self,
        model: &str,
        keys: &[TextHash],
    ) -> impl Future<Output = Result<u64, CacheError>> + Send {
        std::future::ready(Ok(self.remove_sync(model, keys)))
    }
}

// ---------------------------------------------------------------------------
// The cached embedder
// ---------------------------------------------------------------------------

/// An [`Embedder`] that answers from an [`EmbeddingCache`] and sends only
/// the misses to the wrapped embedder (each distinct text once), then
/// caches what it got. Hits and misses are counted in
/// [`EMBEDDING_CACHE_HITS_TOTAL`](crate::metrics::EMBEDDING_CACHE_HITS_TOTAL)
/// and [`EMBEDDING_CACHE_MISSES_TOTAL`](crate::metrics::EMBEDDING_CACHE_MISSES_TOTAL).
///
/// A failing cache never fails an embedding: a lookup error counts every
/// text as a miss, a write error is logged, both with `tracing::warn!`.
#[derive(Debug, Clone)]
pub struct CachedEmbedder<E, C> {
    inner: E,
    cache: C,
}

impl<E: Embedder, C: EmbeddingCache> CachedEmbedder<E, C> {
    /// Wraps `inner` with `cache`.
    pub fn new(inner: E, cache: C) -> Self {
        CachedEmbedder { inner, cache }
    }

    /// The wrapped embedder.
    pub fn inner(&self) -> &E {
        &self.inner
    }

    /// The cache.
    pub fn cache(&self) -> &C {
        &self.cache
    }

    async fn embed_cached(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let model = self.inner.model();
        let dimensions = self.inner.dimensions();
        let keys: Vec<TextHash> = texts.iter().map(|t| TextHash::of(t)).collect();
        let mut slots = match self.cache.get_many(model, &keys).await {
            Ok(found) if found.len() == keys.len() => found,
            Ok(found) => {
                tracing::warn!(
                    cache = self.cache.name(),
                    model,
                    expected = keys.len(),
                    got = found.len(),
                    "embedding cache answered the wrong number of slots; treating all as misses"
                );
                vec![None; keys.len()]
            }
            Err(error) => {
                tracing::warn!(cache = self.cache.name(), model, %error, "embedding cache lookup failed; embedding without it");
                vec![None; keys.len()]
            }
        };
        // a cached vector of another length (the model's dimensions were
        // reconfigured) is a miss
        for slot in &mut slots {
            if slot.as_ref().is_some_and(|v| v.len() != dimensions) {
                *slot = None;
            }
        }
        // the distinct missing texts, in first-seen order
        let mut missing: Vec<usize> = Vec::new();
        let mut first_of: HashMap<TextHash, usize> = HashMap::new();
        for (i, slot) in slots.iter().enumerate() {
            if slot.is_none() {
                first_of.entry(keys[i]).or_insert_with(|| {
                    missing.push(i);
                    missing.len() - 1
                });
            }
        }
        let misses = slots.iter().filter(|s| s.is_none()).count();
        crate::metrics::record_embedding_cache(
            model,
            self.cache.name(),
            keys.len() - misses,
            misses,
        );
        if missing.is_empty() {
            return Ok(slots.into_iter().flatten().collect());
        }
        let to_embed: Vec<&str> = missing.iter().map(|&i| texts[i]).collect();
        let vectors = self.inner.embed(&to_embed).await?;
        check_vectors(model, dimensions, to_embed.len(), &vectors)?;
        let entries: Vec<(TextHash, &[f32])> = missing
            .iter()
            .zip(&vectors)
            .map(|(&i, v)| (keys[i], v.as_slice()))
            .collect();
        if let Err(error) = self.cache.put_many(model, &entries).await {
            tracing::warn!(cache = self.cache.name(), model, %error, "embedding cache write failed");
        }
        let out = slots
            .into_iter()
            .zip(&keys)
            .map(|(slot, key)| match slot {
                Some(v) => v,
                // every missing key has an entry in first_of
                None => first_of
                    .get(key)
                    .map(|&j| vectors[j].clone())
                    .unwrap_or_default(),
            })
            .collect();
        Ok(out)
    }
}

impl<E: Embedder, C: EmbeddingCache> Embedder for CachedEmbedder<E, C> {
    fn model(&self) -> &str {
        self.inner.model()
    }

    fn dimensions(&self) -> usize {
        self.inner.dimensions()
    }

    fn embed(
        &self,
        texts: &[&str],
    ) -> impl Future<Output = Result<Vec<Vec<f32>>, EmbedError>> + Send {
        self.embed_cached(texts)
    }

    /// Removes the texts from this cache, then from whatever the wrapped
    /// embedder keeps (a second cache level). Unlike a lookup, a failing
    /// cache fails this: an erasure must not report success while a copy
    /// remains.
    async fn forget_cached(&self, model: &str, texts: &[TextHash]) -> Result<u64, CacheError> {
        let here = self.cache.remove_many(model, texts).await?;
        Ok(here + self.inner.forget_cached(model, texts).await?)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap; `tokio::test` bodies are not seen as tests
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::knowledge::HashingEmbedder;

    /// Counts calls and texts of the wrapped embedder.
    struct Counting {
        inner: HashingEmbedder,
        calls: AtomicUsize,
        texts: AtomicUsize,
    }

    impl Embedder for Counting {
        fn model(&self) -> &str {
            self.inner.model()
        }
        fn dimensions(&self) -> usize {
            self.inner.dimensions()
        }
        fn embed(
            &self,
            texts: &[&str],
        ) -> impl Future<Output = Result<Vec<Vec<f32>>, EmbedError>> + Send {
            self.calls.fetch_add(1, Ordering::SeqCst);
            self.texts.fetch_add(texts.len(), Ordering::SeqCst);
            self.inner.embed(texts)
        }
    }

    fn counting() -> Counting {
        Counting {
            inner: HashingEmbedder::new(32),
            calls: AtomicUsize::new(0),
            texts: AtomicUsize::new(0),
        }
    }

    #[tokio::test]
    async fn hits_make_no_embedder_call() {
        let e = CachedEmbedder::new(counting(), InMemoryEmbeddingCache::new(100));
        let first = e.embed(&["a b", "c d", "a b"]).await.unwrap();
        assert_eq!(e.inner().calls.load(Ordering::SeqCst), 1);
        assert_eq!(
            e.inner().texts.load(Ordering::SeqCst),
            2,
            "duplicates embedded once"
        );
        assert_eq!(first[0], first[2]);
        let again = e.embed(&["c d", "a b"]).await.unwrap();
        assert_eq!(
            e.inner().calls.load(Ordering::SeqCst),
            1,
            "all hits: no call"
        );
        assert_eq!(again, vec![first[1].clone(), first[0].clone()]);
        let mixed = e.embed(&["a b", "new text"]).await.unwrap();
        assert_eq!(e.inner().calls.load(Ordering::SeqCst), 2);
        assert_eq!(e.inner().texts.load(Ordering::SeqCst), 3, "only the miss");
        assert_eq!(mixed[1], e.inner().inner.embed_one("new text"));
    }

    #[tokio::test(start_paused = true)]
    async fn entries_expire_and_the_least_recently_used_goes_first() {
        let cache = InMemoryEmbeddingCache::new(2).with_ttl(Duration::from_secs(60));
        let (a, b, c) = (TextHash::of("a"), TextHash::of("b"), TextHash::of("c"));
        cache
            .put_many("m", &[(a, &[1.0]), (b, &[2.0])])
            .await
            .unwrap();
        // touch a: b is now the least recently used
        assert_eq!(
            cache.get_many("m", &[a]).await.unwrap(),
            vec![Some(vec![1.0])]
        );
        cache.put_many("m", &[(c, &[3.0])]).await.unwrap();
        assert_eq!(cache.len(), 2);
        assert_eq!(
            cache.get_many("m", &[a, b, c]).await.unwrap(),
            vec![Some(vec![1.0]), None, Some(vec![3.0])]
        );
        tokio::time::advance(Duration::from_secs(61)).await;
        assert_eq!(
            cache.get_many("m", &[a, c]).await.unwrap(),
            vec![None, None]
        );
        assert!(cache.is_empty());
    }

    #[tokio::test]
    async fn invalidate_by_model() {
        let cache = InMemoryEmbeddingCache::new(10);
        let k = TextHash::of("x");
        cache.put_many("m1", &[(k, &[1.0])]).await.unwrap();
        cache.put_many("m2", &[(k, &[2.0])]).await.unwrap();
        assert_eq!(cache.invalidate_model("m1").await.unwrap(), 1);
        assert_eq!(cache.invalidate_model("m1").await.unwrap(), 0);
        assert_eq!(cache.get_many("m1", &[k]).await.unwrap(), vec![None]);
        assert_eq!(
            cache.get_many("m2", &[k]).await.unwrap(),
            vec![Some(vec![2.0])]
        );
        assert_eq!(cache.len(), 1);
        // the LRU order forgot m1's entry: filling up evicts nothing wrongly
        for i in 0..9 {
            let key = TextHash::of(&i.to_string());
            cache.put_many("m3", &[(key, &[0.0])]).await.unwrap();
        }
        assert_eq!(cache.len(), 10);
        assert_eq!(
            cache.get_many("m2", &[k]).await.unwrap(),
            vec![Some(vec![2.0])]
        );
    }

    #[tokio::test]
    async fn remove_many_removes_exactly_those_keys_of_that_model() {
        let cache = InMemoryEmbeddingCache::new(10);
        let (a, b, c) = (TextHash::of("a"), TextHash::of("b"), TextHash::of("c"));
        cache
            .put_many("m", &[(a, &[1.0]), (b, &[2.0]), (c, &[3.0])])
            .await
            .unwrap();
        cache.put_many("n", &[(a, &[4.0])]).await.unwrap();
        assert_eq!(cache.remove_many("m", &[a, c, a]).await.unwrap(), 2);
        assert_eq!(cache.remove_many("m", &[a]).await.unwrap(), 0);
        assert_eq!(
            cache.get_many("m", &[a, b, c]).await.unwrap(),
            vec![None, Some(vec![2.0]), None]
        );
        assert_eq!(
            cache.get_many("n", &[a]).await.unwrap(),
            vec![Some(vec![4.0])]
        );
        assert_eq!(cache.len(), 2);
        // two levels: the cached embedder forgets in both
        let inner = CachedEmbedder::new(HashingEmbedder::new(8), InMemoryEmbeddingCache::new(10));
        let outer = CachedEmbedder::new(inner, InMemoryEmbeddingCache::new(10));
        outer.embed(&["x", "y"]).await.unwrap();
        let model = outer.model().to_owned();
        let x = TextHash::of("x");
        assert_eq!(outer.forget_cached(&model, &[x]).await.unwrap(), 2);
        assert_eq!((outer.cache().len(), outer.inner().cache().len()), (1, 1));
    }

    #[test]
    fn text_hash_is_sha256() {
        assert_eq!(
            TextHash::of("abc").to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
