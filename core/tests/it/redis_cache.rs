//! The Redis embedding cache against a real Redis (REDIS_URL; the test
//! command `scripts/test` starts one).
// Tests may unwrap; clippy does not treat `tokio::test` bodies as tests.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use annals_core::knowledge::{
    CacheError, CachedEmbedder, Embedder, EmbeddingCache, HashingEmbedder, RedisEmbeddingCache,
    TextHash,
};
use annals_core::testing::knowledge::CountingEmbedder;

fn redis_url() -> String {
    match std::env::var("REDIS_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => panic!(
            "REDIS_URL is not set: the Redis cache tests need a Redis server. Run the test command \
             `scripts/test` (it starts a throwaway one), or `scripts/with-services cargo test ...`."
        ),
    }
}

/// A cache with a prefix of its own, so tests do not see each other's keys.
async fn cache(prefix: &str) -> RedisEmbeddingCache {
    RedisEmbeddingCache::connect(&redis_url())
        .await
        .unwrap_or_else(|e| {
            panic!("cannot connect to REDIS_URL ({e}); is it running? `scripts/test` starts one")
        })
        .with_prefix(prefix)
}

fn prefix() -> String {
    format!("annals-test:{}", uuid::Uuid::now_v7().simple())
}

const CHILD: &str = "ANNALS_REDIS_CHILD_PREFIX";

/// Run by `survives_a_process_restart` in a child process: caches one
/// embedding under the prefix it is given, then exits.
#[tokio::test]
#[ignore = "a helper: survives_a_process_restart runs it in a child process"]
async fn child_writes_an_embedding() {
    let prefix = std::env::var(CHILD).expect("run by survives_a_process_restart");
    let embedder = CachedEmbedder::new(HashingEmbedder::new(16), cache(&prefix).await);
    embedder
        .embed(&["written by another process"])
        .await
        .unwrap();
}

#[tokio::test]
async fn survives_a_process_restart() {
    let prefix = prefix();
    let child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "redis_cache::child_writes_an_embedding",
            "--test-threads=1",
        ])
        .env(CHILD, &prefix)
        .output()
        .unwrap();
    assert!(
        child.status.success(),
        "the child process failed:\n{}{}",
        String::from_utf8_lossy(&child.stdout),
        String::from_utf8_lossy(&child.stderr)
    );
    assert!(
        String::from_utf8_lossy(&child.stdout).contains("1 passed"),
        "the child ran no test"
    );
    // this process never embedded it: the hit comes from Redis
    let counting = CountingEmbedder::new(HashingEmbedder::new(16));
    let embedder = CachedEmbedder::new(counting.clone(), cache(&prefix).await);
    let v = embedder
        .embed(&["written by another process"])
        .await
        .unwrap();
    assert_eq!(
        counting.calls(),
        0,
        "the other process's embedding was not found"
    );
    assert_eq!(
        v[0],
        HashingEmbedder::new(16).embed_one("written by another process")
    );
    embedder
        .cache()
        .invalidate_model(counting.model())
        .await
        .unwrap();
}

#[tokio::test]
async fn hits_skip_the_embedder_and_entries_expire_by_ttl() {
    let cache = cache(&prefix()).await.with_ttl(Duration::from_secs(1));
    let counting = CountingEmbedder::new(HashingEmbedder::new(16));
    let embedder = CachedEmbedder::new(counting.clone(), cache.clone());
    let first = embedder.embed(&["a", "b", "a"]).await.unwrap();
    assert_eq!((counting.calls(), counting.texts()), (1, 2));
    let again = embedder.embed(&["b", "a"]).await.unwrap();
    assert_eq!(counting.calls(), 1, "hits made an embedder call");
    assert_eq!(again, vec![first[1].clone(), first[0].clone()]);
    // the key carries the TTL
    let mut conn = redis::Client::open(redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let ttl: i64 = redis::cmd("PTTL")
        .arg(cache.key(counting.model(), &TextHash::of("a")))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!((1..=1000).contains(&ttl), "ttl {ttl} ms");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let found = cache
        .get_many(counting.model(), &[TextHash::of("a"), TextHash::of("b")])
        .await
        .unwrap();
    assert_eq!(found, vec![None, None], "entries outlived their TTL");
    embedder.embed(&["a"]).await.unwrap();
    assert_eq!(counting.calls(), 2);
}

#[tokio::test]
async fn invalidate_removes_exactly_one_models_keys() {
    let cache = cache(&prefix()).await;
    let k = TextHash::of("x");
    for model in ["m", "m*[x]", "m:longer", "other"] {
        cache.put_many(model, &[(k, &[1.0, 2.0])]).await.unwrap();
    }
    assert_eq!(cache.invalidate_model("m").await.unwrap(), 1);
    assert_eq!(cache.get_many("m", &[k]).await.unwrap(), vec![None]);
    for model in ["m*[x]", "m:longer", "other"] {
        assert_eq!(
            cache.get_many(model, &[k]).await.unwrap(),
            vec![Some(vec![1.0, 2.0])],
            "invalidating `m` removed `{model}`"
        );
    }
    assert_eq!(cache.invalidate_model("m*[x]").await.unwrap(), 1);
    assert_eq!(cache.invalidate_model("m:longer").await.unwrap(), 1);
    assert_eq!(cache.invalidate_model("other").await.unwrap(), 1);
    // many keys: SCAN walks them all
    let keys: Vec<TextHash> = (0..2_500).map(|i| TextHash::of(&i.to_string())).collect();
    let entries: Vec<(TextHash, &[f32])> = keys.iter().map(|k| (*k, &[0.5f32][..])).collect();
    cache.put_many("bulk", &entries).await.unwrap();
    assert_eq!(cache.invalidate_model("bulk").await.unwrap(), 2_500);
}

#[tokio::test]
async fn a_corrupt_value_is_a_miss() {
    let cache = cache(&prefix()).await;
    let k = TextHash::of("corrupt");
    let mut conn = redis::Client::open(redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg(cache.key("m", &k))
        .arg("abc")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(cache.get_many("m", &[k]).await.unwrap(), vec![None]);
    cache.invalidate_model("m").await.unwrap();
}

#[tokio::test]
async fn an_unreachable_redis_is_a_typed_error() {
    // a port nothing listens on (bound, then released)
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = RedisEmbeddingCache::connect(&format!("redis://127.0.0.1:{port}/"))
        .await
        .unwrap_err();
    assert!(matches!(err, CacheError::Backend { .. }), "{err}");
    assert!(err.to_string().contains("connecting to Redis"), "{err}");
}

/// Every key of the server with its value, read with `SCAN` and `GET` (a
/// key of another type has its type as its value): what a dump of the
/// Redis holds.
async fn dump_all(conn: &mut redis::aio::MultiplexedConnection) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await
            .unwrap();
        for key in keys {
            let kind: String = redis::cmd("TYPE")
                .arg(&key)
                .query_async(conn)
                .await
                .unwrap();
            let value: Option<Vec<u8>> = if kind == "string" {
                redis::cmd("GET").arg(&key).query_async(conn).await.unwrap()
            } else {
                Some(kind.into_bytes())
            };
            // gone meanwhile (another test's key expired): nothing held
            if let Some(value) = value {
                out.push((key, value));
            }
        }
        if next == 0 {
            return out;
        }
        cursor = next;
    }
}

fn le_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Forgetting a subject in a knowledge base whose embedder caches in
/// Redis: afterwards no key of the server holds one of the subject's
/// embeddings (by key or by value), and the other subject's are still
/// there and still answer.
#[tokio::test]
async fn forget_subject_leaves_none_of_its_embeddings_in_redis() {
    use annals_core::knowledge::{DocumentEvent, InMemoryKnowledgeBase, Ingestor, KnowledgeBase};
    use annals_core::testing::knowledge::{canaries, chunker, document, of_subject};

    let prefix = prefix();
    let counting = CountingEmbedder::new(HashingEmbedder::new(16));
    let embedder = CachedEmbedder::new(counting.clone(), cache(&prefix).await);
    let ingestor = Ingestor::new(embedder.clone()).with_chunker(chunker());
    let kb = InMemoryKnowledgeBase::new();
    let (a, b) = (canaries("redis-a"), canaries("redis-b"));
    for (subject, paragraphs) in [
        ("redis-a", vec![a[0].as_str(), a[1].as_str()]),
        ("redis-a", vec![a[2].as_str()]),
        ("redis-b", vec![b[0].as_str(), b[1].as_str()]),
    ] {
        let doc = document(uuid::Uuid::now_v7(), None, "en", &[], "Letter", &paragraphs);
        kb.ingest(&ingestor, &DocumentEvent::Added(of_subject(doc, subject)))
            .await
            .unwrap();
    }
    let model = counting.model().to_owned();
    let plain = HashingEmbedder::new(16);
    let entry = |text: &str| {
        (
            embedder.cache().key(&model, &TextHash::of(text)),
            le_bytes(&plain.embed_one(text)),
        )
    };
    let mut conn = redis::Client::open(redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let before = dump_all(&mut conn).await;
    for text in a.iter().chain(&b[..2]) {
        assert!(before.contains(&entry(text)), "{text} was not cached");
    }

    let report = kb.forget_subject(&ingestor, "redis-a").await.unwrap();
    assert_eq!((report.documents.len(), report.rows), (2, 3));
    assert_eq!(report.cache_entries, 3, "{report:?}");

    let after = dump_all(&mut conn).await;
    for text in &a {
        let (key, value) = entry(text);
        let hash = TextHash::of(text).to_hex();
        assert!(
            after.iter().all(|(k, v)| !k.contains(&hash) && *v != value),
            "{key}: A's embedding is still in Redis"
        );
    }
    for text in &b[..2] {
        assert!(after.contains(&entry(text)), "B's {text} left Redis");
    }
    // B's embeddings still answer: no embedder call
    counting.reset();
    embedder
        .embed(&[b[0].as_str(), b[1].as_str()])
        .await
        .unwrap();
    assert_eq!(counting.calls(), 0);
    // nothing left of A: a second erasure removes nothing
    let again = kb.forget_subject(&ingestor, "redis-a").await.unwrap();
    assert!(again.is_noop(), "{again:?}");
    assert_eq!(
        embedder
            .cache()
            .remove_many(&model, &[TextHash::of(&a[0])])
            .await
            .unwrap(),
        0
    );
    embedder.cache().invalidate_model(&model).await.unwrap();
}
