//! The knowledge base on a real PostgreSQL with pgvector (DATABASE_URL; the
//! test command `scripts/test` starts one).
// Tests may unwrap; clippy does not see these as tests (the multi-thread
// `tokio::test` expansion).
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use annals_core::knowledge::{
    cosine_similarity, DocumentEvent, Embedder, EmbeddingRefresh, HashingEmbedder, Ingestor,
    KnowledgeBase, KnowledgeEvent, Scope, SearchQuery,
};
use annals_core::testing::knowledge::{chunker, document, CountingEmbedder};
use annals_core::{Envelope, LogPosition, Metadata, Projection};
use annals_postgres::knowledge::{self, PgKnowledgeBase, PgKnowledgeProjection};
use annals_postgres::testing::TestDatabase;
use pgvector::Vector;
use sqlx::PgPool;
use uuid::Uuid;

/// A fresh database with the event-sourcing migrations (from the test
/// template) and then the knowledge base's own.
async fn knowledge_db() -> TestDatabase {
    let db = TestDatabase::new().await;
    if let Err(e) = knowledge::migrate(db.pool()).await {
        panic!("knowledge::migrate: {e} (is pgvector installed? `scripts/test` installs it)");
    }
    db
}

async fn vector_installed(pool: &PgPool) -> bool {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'vector')")
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn table_exists(pool: &PgPool, table: &str) -> bool {
    sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(table)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_knowledge_migrations_install_pgvector_and_their_tables() {
    // the event-sourcing migrations alone leave pgvector out
    let db = TestDatabase::new().await;
    let pool = db.pool();
    assert!(!vector_installed(pool).await);
    assert!(!table_exists(pool, "annals_knowledge_base").await);

    knowledge::migrate(pool).await.unwrap();
    knowledge::migrate(pool).await.unwrap(); // idempotent
    assert!(vector_installed(pool).await);
    for table in [
        "annals_knowledge_base",
        "annals_embedding_refresh_jobs",
        knowledge::MIGRATIONS_TABLE,
    ] {
        assert!(table_exists(pool, table).await, "{table}");
    }
    let applied: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM {} WHERE success",
        knowledge::MIGRATIONS_TABLE
    )))
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(applied, 2);
    // documents say whose personal data they are; the erasure looks them up
    let subject: Option<String> = sqlx::query_scalar(
        "SELECT data_type::text FROM information_schema.columns \
         WHERE table_name = 'annals_knowledge_base' AND column_name = 'subject' AND is_nullable = 'YES'",
    )
    .fetch_optional(pool)
    .await
    .unwrap();
    assert_eq!(subject.as_deref(), Some("text"));
    assert!(table_exists(pool, "annals_knowledge_base_subject").await);
    // recorded apart from the event-sourcing migrations
    let mixed: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM {} WHERE description LIKE '%knowledge%'",
        annals_postgres::MIGRATIONS_TABLE
    )))
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(mixed, 0);

    // down drops the tables, leaves the extension (and the event tables)
    knowledge::migrate_down(pool).await.unwrap();
    assert!(!table_exists(pool, "annals_knowledge_base").await);
    assert!(!table_exists(pool, "annals_embedding_refresh_jobs").await);
    assert!(table_exists(pool, "annals_events").await);
    assert!(vector_installed(pool).await);
    knowledge::migrate(pool).await.unwrap();
    assert!(table_exists(pool, "annals_knowledge_base").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance() {
    let db = knowledge_db().await;
    let pool = db.pool().clone();
    annals_core::testing::knowledge::run(move || {
        let pool = pool.clone();
        async move {
            sqlx::query("TRUNCATE annals_knowledge_base, annals_embedding_refresh_jobs")
                .execute(&pool)
                .await
                .expect("truncate between conformance checks");
            PgKnowledgeBase::new(pool)
        }
    })
    .await;
}

/// A deterministic pseudo-random generator (splitmix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [-1, 1).
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

/// How far points spread around their cluster centre (centres are uniform
/// in [-1, 1) per dimension, the noise uniform in [-NOISE, NOISE)).
const NOISE: f32 = 0.6;

/// `n` vectors of `dims` dimensions around 50 cluster centres (the shape
/// of real embeddings: topics), unit length.
fn clustered(n: usize, dims: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut rng = Rng(seed);
    let centres: Vec<Vec<f32>> = (0..50)
        .map(|_| (0..dims).map(|_| rng.unit()).collect())
        .collect();
    (0..n)
        .map(|i| {
            let c = &centres[i % centres.len()];
            let mut v: Vec<f32> = c.iter().map(|x| x + NOISE * rng.unit()).collect();
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            v.iter_mut().for_each(|x| *x /= norm);
            v
        })
        .collect()
}

/// Loads vectors straight into the table (one multi-row statement per
/// 1,000), for model `model`, tenants `c0`..`c4` in turn.
async fn load(pool: &PgPool, model: &str, vectors: &[Vec<f32>]) -> Vec<Uuid> {
    let mut ids = Vec::new();
    for (batch_no, batch) in vectors.chunks(1_000).enumerate() {
        let base = batch_no * 1_000;
        let batch_ids: Vec<Uuid> = (0..batch.len()).map(|_| Uuid::now_v7()).collect();
        let hashes: Vec<String> = batch_ids.iter().map(|id| id.simple().to_string()).collect();
        let tenants: Vec<String> = (0..batch.len())
            .map(|i| format!("c{}", (base + i) % 5))
            .collect();
        let contents: Vec<String> = (0..batch.len())
            .map(|i| format!("row {}", base + i))
            .collect();
        let vecs: Vec<Vector> = batch.iter().map(|v| Vector::from(v.clone())).collect();
        sqlx::query(
            "INSERT INTO annals_knowledge_base (id, source_type, title, content, content_hash, \
                 embedding, embedding_model, embedded_at, tenant_id, language) \
             SELECT u.id, 'bulk', 'bulk', u.content, u.hash, u.embedding, $6, now(), u.tenant, 'en' \
             FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::vector[], $5::text[]) \
                  AS u(id, hash, content, embedding, tenant)",
        )
        .bind(&batch_ids)
        .bind(&hashes)
        .bind(&contents)
        .bind(&vecs)
        .bind(&tenants)
        .bind(model)
        .execute(pool)
        .await
        .expect("bulk load");
        ids.extend(batch_ids);
    }
    sqlx::query("ANALYZE annals_knowledge_base")
        .execute(pool)
        .await
        .expect("analyze");
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn searches_use_the_hnsw_index_with_and_without_filters() {
    let db = knowledge_db().await;
    let kb = PgKnowledgeBase::new(db.pool().clone());
    let model = "explain-model";
    let vectors = clustered(5_000, 64, 1);
    load(db.pool(), model, &vectors).await;
    kb.ensure_index(model, 64).await.unwrap();
    let index = PgKnowledgeBase::index_name(model, 64);
    for query in [
        SearchQuery::new(Scope::All, 10),
        SearchQuery::new(Scope::Tenant("c1".into()), 10).language("en"),
        SearchQuery::new(Scope::All, 50),
    ] {
        let plan = kb.explain(model, &vectors[7], &query).await.unwrap();
        println!("{query:?}\n{plan}\n");
        assert!(
            plan.contains(&format!("Index Scan using {index}")),
            "the search did not use the HNSW index {index}:\n{plan}"
        );
    }
    // a model without an index: still correct, by a scan
    let plan = kb
        .explain(
            "no-such-model",
            &vectors[7],
            &SearchQuery::new(Scope::All, 10),
        )
        .await
        .unwrap();
    assert!(!plan.contains("annals_kb_hnsw_"), "{plan}");
    // an awkward model name is quoted, not injected
    let odd = "it's a \\ model";
    kb.ensure_index(odd, 64).await.unwrap();
    let hits = kb
        .search(odd, &vectors[0], &SearchQuery::new(Scope::All, 3))
        .await
        .unwrap();
    assert!(hits.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hnsw_recall_at_10_against_exact_search() {
    let db = knowledge_db().await;
    let kb = PgKnowledgeBase::new(db.pool().clone());
    let model = "recall-model";
    let dims = 128;
    // the queries come from the same distribution as the rows (the last
    // 50 points, not stored)
    let mut vectors = clustered(4_050, dims, 2);
    let queries = vectors.split_off(4_000);
    let ids = load(db.pool(), model, &vectors).await;
    kb.ensure_index(model, dims).await.unwrap();
    let tuned = kb.clone().ef_search(100);
    let mut found = [0usize; 3];
    for q in &queries {
        // exact top 10 in Rust, by cosine similarity
        let mut exact: Vec<(f32, usize)> = vectors
            .iter()
            .enumerate()
            .map(|(i, v)| (cosine_similarity(q, v), i))
            .collect();
        exact.sort_by(|a, b| b.0.total_cmp(&a.0));
        let truth: Vec<Uuid> = exact[..10].iter().map(|(_, i)| ids[*i]).collect();
        for (slot, kb) in [&kb, &tuned].into_iter().enumerate() {
            let hits = kb
                .search(model, q, &SearchQuery::new(Scope::All, 10))
                .await
                .unwrap();
            assert_eq!(hits.len(), 10);
            found[slot] += hits.iter().filter(|h| truth.contains(&h.entry.id)).count();
        }
        // filtered: one tenant of five
        let truth: Vec<Uuid> = exact
            .iter()
            .filter(|(_, i)| i % 5 == 2)
            .take(10)
            .map(|(_, i)| ids[*i])
            .collect();
        let hits = kb
            .search(model, q, &SearchQuery::new(Scope::Tenant("c2".into()), 10))
            .await
            .unwrap();
        assert_eq!(hits.len(), 10, "a selective filter left the result short");
        assert!(hits
            .iter()
            .all(|h| h.entry.document.tenant_id.as_deref() == Some("c2")));
        found[2] += hits.iter().filter(|h| truth.contains(&h.entry.id)).count();
    }
    let [default, tuned, filtered] = found.map(|f| f as f64 / (10 * queries.len()) as f64);
    println!(
        "HNSW recall@10 on 4,000 x {dims} (50 queries): {default:.3} with ef_search 40 (the default), \
         {tuned:.3} with ef_search 100, {filtered:.3} with a 1-in-5 tenant filter (ef_search 40, iterative scan)"
    );
    assert!(default >= 0.85, "recall@10 {default:.3} is below 0.85");
    assert!(
        tuned >= 0.95,
        "recall@10 with ef_search 100 {tuned:.3} is below 0.95"
    );
    assert!(
        filtered >= 0.85,
        "filtered recall@10 {filtered:.3} is below 0.85"
    );
}

fn envelope(payload: DocumentEvent) -> Envelope<KnowledgeEvent> {
    Envelope {
        tenant_id: annals_core::TenantId::default(),
        event_id: Uuid::now_v7(),
        stream_id: format!("document-{}", payload.document_id()),
        stream_version: 1,
        log_position: LogPosition::new(1, 1),
        event_type: "document.added".to_owned(),
        schema_version: 2,
        metadata: Metadata::new(),
        recorded_at: chrono::Utc::now(),
        payload: KnowledgeEvent::Document(payload),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_projection_writes_inside_the_callers_transaction() {
    let db = knowledge_db().await;
    let kb = PgKnowledgeBase::new(db.pool().clone());
    let embedder = CountingEmbedder::new(HashingEmbedder::new(32));
    let projection = PgKnowledgeProjection::new(
        "knowledge",
        kb.clone(),
        Ingestor::new(embedder.clone()).with_chunker(chunker()),
    );
    let id = Uuid::now_v7();
    let doc = document(
        id,
        Some("c"),
        "en",
        &[],
        "Hours",
        &[
            "We are open from 8 to 20 on weekdays.",
            "The clinic is closed on Sundays.",
        ],
    );
    // rolled back: nothing stays
    let mut tx = db.pool().begin().await.unwrap();
    projection
        .apply(&mut tx, &envelope(DocumentEvent::Added(doc.clone())))
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    assert!(kb.document(id).await.unwrap().is_empty());
    // committed, then replayed: stored once, embedded once more only
    let mut tx = db.pool().begin().await.unwrap();
    projection
        .apply(&mut tx, &envelope(DocumentEvent::Added(doc.clone())))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    embedder.reset();
    let mut tx = db.pool().begin().await.unwrap();
    projection
        .apply(&mut tx, &envelope(DocumentEvent::Updated(doc)))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(embedder.calls(), 0);
    assert_eq!(kb.document(id).await.unwrap().len(), 2);
    let mut tx = db.pool().begin().await.unwrap();
    projection
        .reset(&mut tx, &annals_core::TenantId::default())
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert!(kb.document(id).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_dropped_mid_run_resumes_after_its_last_batch() {
    let db = knowledge_db().await;
    let kb = PgKnowledgeBase::new(db.pool().clone());
    let old = Ingestor::new(HashingEmbedder::new(32)).with_chunker(chunker());
    for n in 0..30 {
        let p = format!("Document number {n} talks about topic {n} at length.");
        kb.ingest(
            &old,
            &DocumentEvent::Added(document(Uuid::now_v7(), Some("c"), "en", &[], "d", &[&p])),
        )
        .await
        .unwrap();
    }
    let new = CountingEmbedder::new(HashingEmbedder::new(32).with_seed(3));
    let refresh = EmbeddingRefresh::new(new.clone()).batch_size(5);
    // the run crashes once two batches are stored: its progress callback
    // panics, so nothing of a third batch can start (dropping the run from
    // outside instead raced with the third batch's commit)
    let crashed = tokio::spawn({
        let (refresh, kb) = (refresh.clone(), kb.clone());
        async move {
            refresh
                .run(&kb, |p| {
                    if p.done >= 10 {
                        panic!("a simulated crash after two batches (expected by the test)")
                    }
                })
                .await
        }
    })
    .await;
    assert!(
        crashed.as_ref().is_err_and(|e| e.is_panic()),
        "the run should have crashed: {crashed:?}"
    );
    let (status, done, total): (String, i64, i64) =
        sqlx::query_as("SELECT status, done, total FROM annals_embedding_refresh_jobs")
            .fetch_one(db.pool())
            .await
            .unwrap();
    assert_eq!((status.as_str(), done, total), ("running", 10, 30));
    assert_eq!(kb.count_stale(new.model()).await.unwrap(), 20);
    new.reset();
    let outcome = refresh.run(&kb, |_| {}).await.unwrap();
    assert!(outcome.resumed);
    assert_eq!(
        (outcome.refreshed, outcome.done, outcome.total),
        (20, 30, 30)
    );
    assert_eq!(new.texts(), 20, "stored batches were embedded again");
    let (status, finished): (String, bool) =
        sqlx::query_as("SELECT status, finished_at IS NOT NULL FROM annals_embedding_refresh_jobs")
            .fetch_one(db.pool())
            .await
            .unwrap();
    assert_eq!((status.as_str(), finished), ("completed", true));
    // the job created the new model's index
    let index: Option<String> = sqlx::query_scalar("SELECT to_regclass($1)::text")
        .bind(PgKnowledgeBase::index_name(new.model(), 32))
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert!(index.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_projection_runner_feeds_the_knowledge_base_exactly_once() {
    use annals_core::knowledge::DocumentRetired;
    use annals_core::{EventStoreExt, ExpectedVersion, ProjectionRunner};
    use annals_postgres::PgProjectionStore;

    let db = knowledge_db().await;
    let store = db.store().await;
    let kb = PgKnowledgeBase::new(db.pool().clone());
    let counting = CountingEmbedder::new(HashingEmbedder::new(32));
    let projection = Arc::new(PgKnowledgeProjection::new(
        "knowledge",
        kb.clone(),
        Ingestor::new(counting.clone()).with_chunker(chunker()),
    ));
    let runner = ProjectionRunner::new(
        store.clone(),
        PgProjectionStore::new(db.pool().clone()),
        projection,
    );
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    let doc_a = document(
        a,
        Some("c"),
        "en",
        &[],
        "Hours",
        &[
            "We are open from 8 to 20 on weekdays.",
            "The clinic is closed on Sundays.",
        ],
    );
    let doc_b = document(
        b,
        Some("c"),
        "en",
        &[],
        "Parking",
        &["Free parking for patients behind the building."],
    );
    for (stream, event) in [
        (format!("document-{a}"), DocumentEvent::Added(doc_a.clone())),
        (format!("document-{b}"), DocumentEvent::Added(doc_b)),
        (format!("document-{a}"), DocumentEvent::Updated(doc_a)),
        (
            format!("document-{b}"),
            DocumentEvent::Retired(DocumentRetired { document_id: b }),
        ),
    ] {
        store
            .append_events(&stream, ExpectedVersion::Any, &[event], &Metadata::new())
            .await
            .unwrap();
    }
    let done = runner.catch_up().await.unwrap();
    assert_eq!(done.events_applied, 4);
    assert_eq!(counting.texts(), 3, "the unchanged update embedded nothing");
    // caught up: a second catch-up applies nothing
    assert_eq!(runner.catch_up().await.unwrap().events_applied, 0);
    let q = SearchQuery::new(Scope::Tenant("c".into()), 10);
    let hits = kb
        .search_text(&HashingEmbedder::new(32), "parking", &q)
        .await
        .unwrap();
    assert_eq!(hits.len(), 2);
    assert!(hits.iter().all(|h| h.entry.document.title == "Hours"));
    // a rebuild clears the table and replays the log
    let rebuilt = runner.rebuild().await.unwrap();
    assert_eq!(rebuilt.events_applied, 4);
    assert_eq!(kb.document(a).await.unwrap().len(), 2);
    assert!(kb.document(b).await.unwrap().iter().all(|r| !r.is_active));
}

/// Embeds like `inner`, but its second call waits until `resume` is
/// notified (after notifying `paused`): a refresh caught between batches.
#[derive(Clone)]
struct Gated {
    inner: HashingEmbedder,
    calls: Arc<std::sync::atomic::AtomicU32>,
    paused: Arc<tokio::sync::Notify>,
    resume: Arc<tokio::sync::Notify>,
}

impl Embedder for Gated {
    fn model(&self) -> &str {
        self.inner.model()
    }

    fn dimensions(&self) -> usize {
        self.inner.dimensions()
    }

    async fn embed(
        &self,
        texts: &[&str],
    ) -> Result<Vec<Vec<f32>>, annals_core::knowledge::EmbedError> {
        if self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 1 {
            self.paused.notify_one();
            self.resume.notified().await;
        }
        self.inner.embed(texts).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn searches_keep_working_while_a_refresh_runs() {
    let db = knowledge_db().await;
    let kb = PgKnowledgeBase::new(db.pool().clone());
    let old = HashingEmbedder::new(32);
    let ingestor = Ingestor::new(old.clone()).with_chunker(chunker());
    for n in 0..10u128 {
        let text = format!("Opening hours of branch {n}: weekdays from 8 to 20.");
        kb.ingest(
            &ingestor,
            &DocumentEvent::Added(document(
                Uuid::from_u128(500 + n),
                Some("c"),
                "en",
                &[],
                "hours",
                &[&text],
            )),
        )
        .await
        .unwrap();
    }
    let new_model = HashingEmbedder::new(32).with_seed(9);
    let gated = Gated {
        inner: new_model.clone(),
        calls: Arc::default(),
        paused: Arc::default(),
        resume: Arc::default(),
    };
    let refresh = EmbeddingRefresh::new(gated.clone()).batch_size(3);
    let running = {
        let kb = kb.clone();
        tokio::spawn(async move { refresh.run(&kb, |_| {}).await })
    };
    tokio::time::timeout(std::time::Duration::from_secs(30), gated.paused.notified())
        .await
        .expect("the refresh reached its second batch");
    // mid-refresh: 3 rows carry the new model, 7 the old; both searches
    // answer, neither waits for the refresh
    let query = SearchQuery::new(Scope::Tenant("c".into()), 10);
    let search = |embedder: HashingEmbedder| {
        let (kb, query) = (kb.clone(), query.clone());
        async move {
            tokio::time::timeout(
                std::time::Duration::from_secs(5),
                kb.search_text(&embedder, "opening hours", &query),
            )
            .await
            .expect("a search during the refresh does not block")
            .unwrap()
        }
    };
    assert_eq!(search(old.clone()).await.len(), 7);
    assert_eq!(search(new_model.clone()).await.len(), 3);
    // a writer still on the old model adds a document meanwhile: its row
    // lies ahead of the cursor, so this run re-embeds it too
    kb.ingest(
        &ingestor,
        &DocumentEvent::Added(document(
            Uuid::from_u128(600),
            Some("c"),
            "en",
            &[],
            "hours",
            &["Opening hours of the new branch: weekdays from 9 to 18."],
        )),
    )
    .await
    .unwrap();
    gated.resume.notify_one();
    let outcome = running.await.unwrap().unwrap();
    assert_eq!((outcome.refreshed, outcome.total), (11, 10));
    assert_eq!(outcome.stale_left, 0);
    assert!(search(old).await.is_empty());
    assert_eq!(search(new_model).await.len(), 10, "k = 10 of 11");
}

/// Issue 20's end-to-end case for the knowledge base: documents with an
/// empty tenant id and a 10 kB tenant id, among good ones. The good ones
/// are ingested; each bad one is parked with an error naming the field;
/// health shows 2 dead letters and a running projection, nothing behind. A
/// NUL in a tenant id never reaches the log: the append refuses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_tenant_ids_are_parked_and_the_other_documents_are_ingested() {
    use annals_core::dead_letter::{DeadLetterQuery, DeadLetterStore};
    use annals_core::projection::{HealthCheck, ProjectionStatus};
    use annals_core::{EventStoreExt, ExpectedVersion, ProjectionRunner, RetryPolicy};
    use annals_postgres::PgProjectionStore;

    let db = knowledge_db().await;
    let store = db.store().await;
    let kb = PgKnowledgeBase::new(db.pool().clone());
    let projections = PgProjectionStore::new(db.pool().clone());
    let runner = ProjectionRunner::new(
        store.clone(),
        projections.clone(),
        Arc::new(PgKnowledgeProjection::new(
            "knowledge",
            kb.clone(),
            Ingestor::new(HashingEmbedder::new(32)).with_chunker(chunker()),
        )),
    )
    .retry(RetryPolicy::new(2).initial_delay(Duration::from_millis(1)));
    let huge = "t".repeat(10_000);
    let ids: Vec<Uuid> = (0..4).map(|_| Uuid::now_v7()).collect();
    let nul = document(Uuid::now_v7(), Some("bad\0tenant"), "en", &[], "T", &["x"]);
    let refused = store
        .append_events(
            "document-nul",
            ExpectedVersion::Any,
            &[DocumentEvent::Added(nul)],
            &Metadata::new(),
        )
        .await;
    assert!(
        matches!(&refused, Err(annals_core::Error::InvalidInput(i)) if i.field == "payload"),
        "{refused:?}"
    );
    let tenants = [Some("c"), Some(""), Some(huge.as_str()), Some("c")];
    for (id, tenant) in ids.iter().zip(tenants) {
        let doc = document(*id, tenant, "en", &[], "Hours", &["Open from 8 to 20."]);
        store
            .append_events(
                &format!("document-{id}"),
                ExpectedVersion::Any,
                &[DocumentEvent::Added(doc)],
                &Metadata::new(),
            )
            .await
            .unwrap();
    }
    let started = std::time::Instant::now();
    let done = tokio::time::timeout(Duration::from_secs(30), runner.catch_up())
        .await
        .expect("the catch-up ends")
        .unwrap();
    assert_eq!(done.events_applied, 2);
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(kb.document(ids[0]).await.unwrap().len(), 1);
    assert_eq!(kb.document(ids[3]).await.unwrap().len(), 1);
    let letters = projections
        .list_dead_letters(&DeadLetterQuery::pending("knowledge"))
        .await
        .unwrap();
    assert_eq!(letters.len(), 2);
    for letter in &letters {
        assert!(
            letter.error.contains("document tenant id"),
            "{}",
            letter.error
        );
    }
    let health = HealthCheck::new(store.clone(), projections.clone())
        .check("knowledge")
        .await
        .unwrap();
    assert_eq!(health.dead_letters_pending, 2);
    assert_eq!(health.status, Some(ProjectionStatus::Running));
    assert_eq!(health.events_behind, 0);
}
