//! Benchmarks of the knowledge base, with their baselines
//! in the same run; the summary is printed to stderr at the end.
//!
//! 1. Search latency on 100,000 vectors of 384 dimensions (clustered, unit
//!    length, one model, five clinics), top 10 by cosine similarity through
//!    the HNSW index: `PgKnowledgeBase::search` against the same statement
//!    sent by hand with sqlx (same SQL text, same bind, rows fetched).
//!    Target: time <= 1.1x. Also a clinic-filtered search (1 row in 5)
//!    against the same hand-written transaction (`BEGIN; SET LOCAL
//!    hnsw.ef_search ...; SET LOCAL hnsw.iterative_scan ...`, the query,
//!    `COMMIT`), reported without a target.
//! 2. Recall@10 of those searches against exact search (computed in Rust)
//!    over 100 held-out queries, at ef_search 40 (the default) and 100.
//! 3. Embedder calls saved by the cache when re-ingesting a corpus of 1,000
//!    documents (4 chunks each) where 70% of the documents are unchanged
//!    and 30% have one paragraph edited (the seed claims ~70% fewer calls).
//!    Counted, not timed, on the in-memory knowledge base (the counts do
//!    not depend on the backend).
//!
//! Needs a PostgreSQL server with pgvector in DATABASE_URL:
//! `scripts/with-services --durable cargo bench --features testing,knowledge --bench knowledge`
//! (about 5 minutes on 2 cores, most of it loading and indexing).

use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use annals::knowledge::{
    cosine_similarity, CachedEmbedder, Chunker, Document, DocumentEvent, DocumentMeta,
    HashingEmbedder, InMemoryEmbeddingCache, InMemoryKnowledgeBase, Ingestor, KnowledgeBase, Scope,
    SearchQuery,
};
use annals::postgres::knowledge::{self, quote_literal, PgKnowledgeBase};
use annals::postgres::sqlx::{self, AssertSqlSafe, PgPool, Row};
use annals::postgres::testing::TestDatabase;
use annals::testing::knowledge::CountingEmbedder;
use criterion::{Criterion, SamplingMode};
use pgvector::Vector;
use uuid::Uuid;

mod common;
use common::{print_summary, run_group, runtime, timed, Comparison, Op, Target};

const ROWS: usize = 100_000;
const DIMS: usize = 384;
const QUERIES: usize = 100;
const MODEL: &str = "bench-model";
const SAMPLES: usize = 10;
const ROUNDS: usize = 300;

/// splitmix64.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

/// `n` unit vectors around 500 cluster centres (topics).
fn clustered(n: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut rng = Rng(seed);
    let centres: Vec<Vec<f32>> = (0..500)
        .map(|_| (0..DIMS).map(|_| rng.unit()).collect())
        .collect();
    (0..n)
        .map(|_| {
            let c = &centres[(rng.next() % centres.len() as u64) as usize];
            let mut v: Vec<f32> = c.iter().map(|x| x + 0.6 * rng.unit()).collect();
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            v.iter_mut().for_each(|x| *x /= norm);
            v
        })
        .collect()
}

fn stamp(what: &str) {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    eprintln!(
        "[{:02}:{:02}:{:02} UTC] {what}",
        secs / 3600 % 24,
        secs / 60 % 60,
        secs % 60
    );
}

async fn load(pool: &PgPool, vectors: &[Vec<f32>]) -> Vec<Uuid> {
    let mut ids = Vec::with_capacity(vectors.len());
    for (batch_no, batch) in vectors.chunks(2_000).enumerate() {
        let base = batch_no * 2_000;
        let batch_ids: Vec<Uuid> = (0..batch.len()).map(|_| Uuid::now_v7()).collect();
        let hashes: Vec<String> = batch_ids.iter().map(|id| id.simple().to_string()).collect();
        let tenants: Vec<String> = (0..batch.len())
            .map(|i| format!("clinic-{}", (base + i) % 5))
            .collect();
        let contents: Vec<String> = (0..batch.len())
            .map(|i| format!("chunk {} of the benchmark corpus", base + i))
            .collect();
        let vecs: Vec<Vector> = batch.iter().map(|v| Vector::from(v.clone())).collect();
        sqlx::query(
            "INSERT INTO annals_knowledge_base (id, source_type, title, content, content_hash, \
                 embedding, embedding_model, embedded_at, tenant_id, language) \
             SELECT u.id, 'bench', 'bench', u.content, u.hash, u.embedding, $6, now(), u.tenant, 'en' \
             FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::vector[], $5::text[]) \
                  AS u(id, hash, content, embedding, tenant)",
        )
        .bind(&batch_ids)
        .bind(&hashes)
        .bind(&contents)
        .bind(&vecs)
        .bind(&tenants)
        .bind(MODEL)
        .execute(pool)
        .await
        .expect("bulk load");
        ids.extend(batch_ids);
    }
    ids
}

/// The statement `PgKnowledgeBase::search` sends for `Scope::All` and k <=
/// 40 (postgres/src/knowledge.rs, `search_sql`), written out by hand.
fn raw_sql() -> String {
    format!(
        "SELECT id, parent_id, source_type, title, content, content_hash, chunk_index, chunk_total, \
         tenant_id, language, tags, metadata, version, is_active, embedding_model, embedded_at, \
         embedding::vector({DIMS}) <=> $1::vector({DIMS}) AS distance \
         FROM annals_knowledge_base \
         WHERE embedding_model = {} AND is_active \
         ORDER BY embedding::vector({DIMS}) <=> $1::vector({DIMS}) LIMIT $2",
        quote_literal(MODEL)
    )
}

/// A hand-written clinic-filtered search with the settings annals uses.
fn raw_filtered_sql() -> String {
    format!(
        "SELECT id, parent_id, source_type, title, content, content_hash, chunk_index, chunk_total, \
         tenant_id, language, tags, metadata, version, is_active, embedding_model, embedded_at, \
         embedding::vector({DIMS}) <=> $1::vector({DIMS}) AS distance \
         FROM annals_knowledge_base \
         WHERE embedding_model = {} AND is_active AND tenant_id = $2 \
         ORDER BY embedding::vector({DIMS}) <=> $1::vector({DIMS}) LIMIT $3",
        quote_literal(MODEL)
    )
}

/// Exact top 10 (row indexes) by cosine similarity.
fn exact_top10(vectors: &[Vec<f32>], q: &[f32], keep: impl Fn(usize) -> bool) -> Vec<usize> {
    let mut best: Vec<(f32, usize)> = Vec::with_capacity(11);
    for (i, v) in vectors.iter().enumerate() {
        if !keep(i) {
            continue;
        }
        let s = cosine_similarity(q, v);
        if best.len() < 10 || s > best[best.len() - 1].0 {
            best.push((s, i));
            best.sort_by(|a, b| b.0.total_cmp(&a.0));
            best.truncate(10);
        }
    }
    best.into_iter().map(|(_, i)| i).collect()
}

fn search_benchmarks(c: &mut Criterion, rows: &mut Vec<Comparison>) {
    let rt = runtime();
    let db = rt.block_on(TestDatabase::new());
    rt.block_on(knowledge::migrate(db.pool()))
        .expect("knowledge::migrate (is pgvector installed?)");
    let pool = db.pool().clone();
    stamp("generating 100,000 x 384 vectors");
    let mut vectors = clustered(ROWS + QUERIES, 42);
    let queries = vectors.split_off(ROWS);
    stamp("loading");
    let started = Instant::now();
    let ids = rt.block_on(load(&pool, &vectors));
    eprintln!("loaded {ROWS} rows in {:.1?}", started.elapsed());
    stamp("building the HNSW index");
    let started = Instant::now();
    rt.block_on(async {
        let mut conn = pool.acquire().await.expect("a connection");
        let sql = format!(
            "SET maintenance_work_mem = '2GB'; SET max_parallel_maintenance_workers = 1; \
             CREATE INDEX {} ON annals_knowledge_base \
             USING hnsw ((embedding::vector({DIMS})) vector_cosine_ops) \
             WHERE embedding_model = {}; ANALYZE annals_knowledge_base",
            PgKnowledgeBase::index_name(MODEL, DIMS),
            quote_literal(MODEL)
        );
        sqlx::raw_sql(AssertSqlSafe(sql))
            .execute(&mut *conn)
            .await
            .expect("index build");
    });
    eprintln!("built the index in {:.1?}", started.elapsed());
    let kb = PgKnowledgeBase::new(pool.clone());
    rt.block_on(kb.ensure_index(MODEL, DIMS))
        .expect("the index exists");
    let plan = rt
        .block_on(kb.explain(MODEL, &queries[0], &SearchQuery::new(Scope::All, 10)))
        .expect("explain");
    assert!(
        plan.contains("Index Scan using annals_kb_hnsw_"),
        "the search does not use the index:\n{plan}"
    );

    // recall@10
    stamp("recall@10");
    let tuned = kb.clone().ef_search(100);
    let mut found = [0usize; 3];
    for q in &queries {
        let truth: Vec<Uuid> = exact_top10(&vectors, q, |_| true)
            .into_iter()
            .map(|i| ids[i])
            .collect();
        for (slot, kb) in [&kb, &tuned].into_iter().enumerate() {
            let hits = rt
                .block_on(kb.search(MODEL, q, &SearchQuery::new(Scope::All, 10)))
                .expect("search");
            found[slot] += hits.iter().filter(|h| truth.contains(&h.entry.id)).count();
        }
        let truth: Vec<Uuid> = exact_top10(&vectors, q, |i| i % 5 == 2)
            .into_iter()
            .map(|i| ids[i])
            .collect();
        let hits = rt
            .block_on(kb.search(
                MODEL,
                q,
                &SearchQuery::new(Scope::Tenant("clinic-2".into()), 10),
            ))
            .expect("search");
        found[2] += hits.iter().filter(|h| truth.contains(&h.entry.id)).count();
    }
    let [default, ef100, filtered] = found.map(|f| f as f64 / (10 * QUERIES) as f64);

    // latency
    stamp("search latency");
    let next = AtomicUsize::new(0);
    let query = || &queries[next.fetch_add(1, Ordering::Relaxed) % queries.len()];
    let raw = raw_sql();
    let raw_filtered = raw_filtered_sql();
    let ops: Vec<(&str, Op<'_>)> = vec![
        (
            "annals",
            Box::new(|| {
                let q = query();
                timed(|| {
                    let hits = rt
                        .block_on(kb.search(MODEL, q, &SearchQuery::new(Scope::All, 10)))
                        .expect("search");
                    assert_eq!(hits.len(), 10);
                    black_box(hits);
                })
            }),
        ),
        (
            "raw",
            Box::new(|| {
                let q = query();
                timed(|| {
                    let rows = rt
                        .block_on(
                            sqlx::query(AssertSqlSafe(raw.clone()))
                                .bind(Vector::from(q.clone()))
                                .bind(10i64)
                                .fetch_all(&pool),
                        )
                        .expect("raw search");
                    assert_eq!(rows.len(), 10);
                    let hits: Vec<(Uuid, String, f64)> = rows
                        .iter()
                        .map(|r| (r.get("id"), r.get("content"), r.get("distance")))
                        .collect();
                    black_box(hits);
                })
            }),
        ),
        (
            "annals filtered",
            Box::new(|| {
                let q = query();
                timed(|| {
                    let hits = rt
                        .block_on(kb.search(
                            MODEL,
                            q,
                            &SearchQuery::new(Scope::Tenant("clinic-2".into()), 10),
                        ))
                        .expect("search");
                    assert_eq!(hits.len(), 10);
                    black_box(hits);
                })
            }),
        ),
        (
            "raw filtered",
            Box::new(|| {
                let q = query();
                timed(|| {
                    let rows = rt.block_on(async {
                        let mut tx = pool
                            .begin_with(
                                "BEGIN READ ONLY; SET LOCAL hnsw.ef_search = 40; \
                                 SET LOCAL hnsw.iterative_scan = strict_order",
                            )
                            .await
                            .expect("begin");
                        let rows = sqlx::query(AssertSqlSafe(raw_filtered.clone()))
                            .bind(Vector::from(q.clone()))
                            .bind("clinic-2")
                            .bind(10i64)
                            .fetch_all(&mut *tx)
                            .await
                            .expect("raw filtered search");
                        tx.commit().await.expect("commit");
                        rows
                    });
                    assert_eq!(rows.len(), 10);
                    let hits: Vec<(Uuid, String, f64)> = rows
                        .iter()
                        .map(|r| (r.get("id"), r.get("content"), r.get("distance")))
                        .collect();
                    black_box(hits);
                })
            }),
        ),
    ];
    run_group(
        c,
        "knowledge_search",
        |g| {
            g.sample_size(SAMPLES)
                .warm_up_time(Duration::from_secs(1))
                .measurement_time(Duration::from_secs(5))
                .sampling_mode(SamplingMode::Flat);
        },
        &ops,
        &[("annals", "raw"), ("annals filtered", "raw filtered")],
        ROUNDS,
    );
    rows.push(Comparison {
        label: "search top 10 of 100k x 384 (HNSW, all rows)",
        annals: "knowledge_search/annals",
        baseline: "knowledge_search/raw",
        events: 1,
        target: Target::TimeAtMost(1.1),
    });
    rows.push(Comparison {
        label: "search top 10, one clinic of five (iterative scan)",
        annals: "knowledge_search/annals filtered",
        baseline: "knowledge_search/raw filtered",
        events: 1,
        target: Target::None,
    });
    eprintln!(
        "\nrecall@10 against exact search, {QUERIES} held-out queries, 100,000 x {DIMS}: \
         {default:.3} at ef_search 40 (default), {ef100:.3} at ef_search 100, \
         {filtered:.3} with a one-in-five clinic filter (ef_search 40, iterative scan)"
    );
}

/// A corpus document: 4 paragraphs of about 150 characters.
fn corpus_doc(id: Uuid, n: usize, edit: Option<usize>) -> Document {
    let paragraphs: Vec<String> = (0..4)
        .map(|p| {
            let base = format!(
                "Document {n}, paragraph {p}: the clinic's guidance on topic {} for patients, \
                 with the details that staff repeat every day at the front desk.",
                (n * 7 + p) % 97
            );
            if edit == Some(p) {
                format!("{base} (Revised.)")
            } else {
                base
            }
        })
        .collect();
    Document {
        document_id: id,
        meta: DocumentMeta {
            source_type: "faq".into(),
            title: format!("Document {n}"),
            tenant_id: Some("clinic".into()),
            language: Some("en".into()),
            tags: vec![],
            metadata: Default::default(),
            subject: None,
        },
        content: paragraphs.join("\n\n"),
    }
}

/// Re-ingesting a corpus with 70% of its documents unchanged.
fn cache_savings() {
    const DOCS: usize = 1_000;
    let rt = runtime();
    let chunker = Chunker::new(200, 0);
    let ids: Vec<Uuid> = (0..DOCS).map(|_| Uuid::now_v7()).collect();
    let v1: Vec<Document> = (0..DOCS).map(|n| corpus_doc(ids[n], n, None)).collect();
    // 30% of the documents get one paragraph edited
    let v2: Vec<Document> = (0..DOCS)
        .map(|n| corpus_doc(ids[n], n, (n % 10 < 3).then_some(n % 4)))
        .collect();
    fn ingest_all<E: annals::knowledge::Embedder>(
        rt: &tokio::runtime::Runtime,
        kb: &InMemoryKnowledgeBase,
        ingestor: &Ingestor<E>,
        docs: &[Document],
    ) {
        for d in docs {
            rt.block_on(kb.ingest(ingestor, &DocumentEvent::Updated(d.clone())))
                .expect("ingest");
        }
    }
    // without a cache, into an empty knowledge base (what a naive
    // re-ingest or a rebuild without a cache costs)
    let plain = CountingEmbedder::new(HashingEmbedder::new(DIMS));
    ingest_all(
        &rt,
        &InMemoryKnowledgeBase::new(),
        &Ingestor::new(plain.clone()).with_chunker(chunker),
        &v2,
    );
    // with the cache warm from v1, into an empty knowledge base (the
    // seed's case: every text goes through the cache)
    let counted = CountingEmbedder::new(HashingEmbedder::new(DIMS));
    let cached = Ingestor::new(CachedEmbedder::new(
        counted.clone(),
        InMemoryEmbeddingCache::new(100_000),
    ))
    .with_chunker(chunker);
    ingest_all(&rt, &InMemoryKnowledgeBase::new(), &cached, &v1);
    counted.reset();
    ingest_all(&rt, &InMemoryKnowledgeBase::new(), &cached, &v2);
    let (cache_calls, cache_texts) = (counted.calls(), counted.texts());
    // into the same knowledge base, no cache (the content hashes skip the
    // unchanged chunks)
    let live = CountingEmbedder::new(HashingEmbedder::new(DIMS));
    let kb = InMemoryKnowledgeBase::new();
    let live_ingestor = Ingestor::new(live.clone()).with_chunker(chunker);
    ingest_all(&rt, &kb, &live_ingestor, &v1);
    live.reset();
    ingest_all(&rt, &kb, &live_ingestor, &v2);
    let saved = |calls: usize, base: usize| 100.0 * (1.0 - calls as f64 / base as f64);
    eprintln!(
        "\n=== embedder calls when re-ingesting {DOCS} documents (4 chunks each), 70% unchanged, 30% with one paragraph edited ===\n\
         {:<62} {:>6} {:>7} {:>12} {:>12}\n\
         {:<62} {:>6} {:>7} {:>12} {:>12}\n\
         {:<62} {:>6} {:>7} {:>11.1}% {:>11.1}%\n\
         {:<62} {:>6} {:>7} {:>11.1}% {:>11.1}%\n\
         (a call is one embedding request: one per document that has anything to embed)",
        "", "calls", "texts", "calls saved", "texts saved",
        "no cache, empty knowledge base (baseline)", plain.calls(), plain.texts(), "-", "-",
        "cache warm from the first ingest, empty knowledge base", cache_calls, cache_texts,
        saved(cache_calls, plain.calls()), saved(cache_texts, plain.texts()),
        "no cache, same knowledge base (unchanged chunks skipped by hash)", live.calls(), live.texts(),
        saved(live.calls(), plain.calls()), saved(live.texts(), plain.texts()),
    );
}

fn main() {
    common::require_durable("knowledge");
    let start = Instant::now();
    let mut c = Criterion::default().configure_from_args();
    let mut rows = Vec::new();
    search_benchmarks(&mut c, &mut rows);
    cache_savings();
    stamp("done");
    print_summary("knowledge", SAMPLES, &rows);
    eprintln!("(columns annals/s and base/s: searches/s)");
    eprintln!("whole run: {:.1?}", start.elapsed());
}
