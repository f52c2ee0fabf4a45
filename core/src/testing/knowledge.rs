//! The knowledge base conformance suite: the semantics every
//! [`KnowledgeBase`] must have (dedupe by content hash, filters and tenant
//! isolation, retire and reactivate, the refresh job and its resumption),
//! written once and run by each backend with a factory of empty knowledge
//! bases:
//!
//! ```
//! # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
//! use annals::knowledge::InMemoryKnowledgeBase;
//! annals::testing::knowledge::run(|| async { InMemoryKnowledgeBase::new() }).await;
//! # });
//! ```
//!
//! Also here: [`CountingEmbedder`], which counts the calls an embedder
//! gets and can be told to fail.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use uuid::Uuid;

use crate::knowledge::{
    CacheError, CachedEmbedder, Chunker, Document, DocumentEvent, DocumentMeta, DocumentRetired,
    EmbedError, Embedder, EmbeddingCache, EmbeddingRefresh, HashingEmbedder,
    InMemoryEmbeddingCache, IngestReport, Ingestor, KnowledgeBase, KnowledgeError, Scope,
    SearchHit, SearchQuery, TextHash,
};

/// An embedder that counts calls and texts, and fails every call after
/// the first `fail_after` (if set). Clones share the counters.
#[derive(Debug, Clone)]
pub struct CountingEmbedder<E> {
    inner: E,
    calls: Arc<AtomicUsize>,
    texts: Arc<AtomicUsize>,
    fail_after: Arc<AtomicUsize>,
}

impl<E: Embedder> CountingEmbedder<E> {
    /// Wraps `inner`.
    pub fn new(inner: E) -> Self {
        CountingEmbedder {
            inner,
            calls: Arc::default(),
            texts: Arc::default(),
            fail_after: Arc::new(AtomicUsize::new(usize::MAX)),
        }
    }

    /// Calls so far (failed ones included).
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// Texts embedded so far (by successful calls).
    pub fn texts(&self) -> usize {
        self.texts.load(Ordering::SeqCst)
    }

    /// Resets both counters.
    pub fn reset(&self) {
        self.calls.store(0, Ordering::SeqCst);
        self.texts.store(0, Ordering::SeqCst);
    }

    /// Makes every call after the next `calls` fail (with a transient
    /// timeout error); `usize::MAX` never fails.
    pub fn fail_after(&self, calls: usize) {
        self.fail_after
            .store(self.calls().saturating_add(calls), Ordering::SeqCst);
    }
}

impl<E: Embedder> Embedder for CountingEmbedder<E> {
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
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        let fail = n > self.fail_after.load(Ordering::SeqCst);
        if !fail {
            self.texts.fetch_add(texts.len(), Ordering::SeqCst);
        }
        let inner = self.inner.embed(texts);
        async move {
            if fail {
                return Err(EmbedError::Timeout {
                    timeout: std::time::Duration::from_secs(1),
                    attempts: 1,
                });
            }
            inner.await
        }
    }

    fn forget_cached(
        &self,
        model: &str,
        texts: &[TextHash],
    ) -> impl Future<Output = Result<u64, CacheError>> + Send {
        self.inner.forget_cached(model, texts)
    }
}

/// `doc` as `subject`'s personal data.
pub fn of_subject(mut doc: Document, subject: &str) -> Document {
    doc.meta.subject = Some(subject.to_owned());
    doc
}

/// A document for the suite: `tenant`, `language`, tags, and content made
/// of `paragraphs` (each becomes one chunk with the suite's chunker).
pub fn document(
    id: Uuid,
    tenant: Option<&str>,
    language: &str,
    tags: &[&str],
    title: &str,
    paragraphs: &[&str],
) -> Document {
    Document {
        document_id: id,
        meta: DocumentMeta {
            source_type: "faq".to_owned(),
            title: title.to_owned(),
            tenant_id: tenant.map(str::to_owned),
            language: Some(language.to_owned()),
            tags: tags.iter().map(|t| (*t).to_owned()).collect(),
            metadata: serde_json::Map::new(),
            subject: None,
        },
        content: paragraphs.join("\n\n"),
    }
}

/// The suite's chunker: chunks of at most 60 characters, no overlap, so
/// each paragraph of 31 to 60 characters is one chunk.
pub fn chunker() -> Chunker {
    Chunker::new(60, 0)
}

fn id(n: u128) -> Uuid {
    Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0000 | n)
}

async fn must<T>(what: &str, fut: impl Future<Output = Result<T, KnowledgeError>>) -> T {
    match fut.await {
        Ok(v) => v,
        Err(e) => panic!("{what}: unexpected error: {e}"),
    }
}

async fn ingest<K: KnowledgeBase, E: Embedder>(
    kb: &K,
    ingestor: &Ingestor<E>,
    event: DocumentEvent,
) -> IngestReport {
    must("ingest", kb.ingest(ingestor, &event)).await
}

fn titles(hits: &[SearchHit]) -> Vec<String> {
    hits.iter()
        .map(|h| h.entry.document.title.clone())
        .collect()
}

/// Runs every check, each on a fresh knowledge base from `make`.
pub async fn run<K, F, Fut>(make: F)
where
    K: KnowledgeBase,
    F: Fn() -> Fut,
    Fut: Future<Output = K>,
{
    dedupe_by_hash(make().await).await;
    anchor_survives_rewrites(make().await).await;
    filters_and_tenant_isolation(make().await).await;
    retire_and_reactivate(make().await).await;
    refresh_reembeds_only_stale_rows_and_resumes(make().await).await;
    bad_input_is_refused(make().await).await;
    forget_subject_erases_only_that_subject(make().await).await;
}

const P1: &str = "The clinic is open Monday to Friday from 8 to 20.";
const P2: &str = "On Saturdays we are open from 9 to 14.";
const P3: &str = "On Sundays and public holidays the clinic is closed.";
const P4: &str = "Emergencies: call the on-duty dentist at any hour.";

/// The same content is stored once; unchanged content is never embedded
/// or written again.
pub async fn dedupe_by_hash<K: KnowledgeBase>(kb: K) {
    let embedder = CountingEmbedder::new(HashingEmbedder::new(64));
    let ingestor = Ingestor::new(embedder.clone()).with_chunker(chunker());
    let doc = id(1);
    // P1 repeated: stored once
    let d = document(doc, Some("c1"), "en", &[], "Hours", &[P1, P2, P1, P3]);
    let r = ingest(&kb, &ingestor, DocumentEvent::Added(d.clone())).await;
    assert_eq!(
        (r.chunks, r.embedded, r.repeated),
        (4, 3, 1),
        "first ingest: {r:?}"
    );
    assert_eq!(embedder.calls(), 1, "one embedder call per document");
    let rows = must("document", kb.document(doc)).await;
    assert_eq!(rows.len(), 3, "a repeated chunk is stored once");
    let mut hashes: Vec<&str> = rows.iter().map(|r| r.content_hash.as_str()).collect();
    hashes.dedup();
    assert_eq!(hashes.len(), 3);
    assert_eq!(
        rows.iter().map(|r| r.chunk_index).collect::<Vec<_>>(),
        vec![0, 1, 3]
    );
    assert!(rows
        .iter()
        .all(|r| r.chunk_total == 4 && r.document_id == doc));
    assert_eq!(rows[0].id, doc, "the first chunk is the document's anchor");
    assert!(rows[1..].iter().all(|r| r.parent_id == Some(doc)));

    // the same event again, and an update with the same content: no-ops
    embedder.reset();
    for event in [
        DocumentEvent::Added(d.clone()),
        DocumentEvent::Updated(d.clone()),
    ] {
        let r = ingest(&kb, &ingestor, event).await;
        assert!(r.is_noop(), "unchanged content wrote something: {r:?}");
        assert_eq!(r.unchanged, 3);
    }
    assert_eq!(embedder.calls(), 0, "unchanged content was embedded");

    // one paragraph changed: only it is embedded
    let d2 = document(doc, Some("c1"), "en", &[], "Hours", &[P1, P2, P1, P4]);
    let r = ingest(&kb, &ingestor, DocumentEvent::Updated(d2.clone())).await;
    assert_eq!((r.embedded, r.unchanged, r.deleted), (1, 2, 1), "{r:?}");
    assert_eq!(embedder.texts(), 1);
    let rows = must("document", kb.document(doc)).await;
    assert_eq!(
        rows.iter().map(|r| r.content.as_str()).collect::<Vec<_>>(),
        vec![P1, P2, P4]
    );
    assert_eq!(rows[2].version, 1, "a new row starts at version 1");

    // only the title changed: rows rewritten, nothing embedded
    embedder.reset();
    let mut d3 = d2.clone();
    d3.meta.title = "Opening hours".to_owned();
    let r = ingest(&kb, &ingestor, DocumentEvent::Updated(d3)).await;
    assert_eq!((r.embedded, r.updated), (0, 3), "{r:?}");
    assert_eq!(embedder.calls(), 0);
    let rows = must("document", kb.document(doc)).await;
    assert!(rows.iter().all(|r| r.document.title == "Opening hours"));
    assert_eq!(rows[0].version, 2);

    // another document with the same text: its own rows (documents live
    // and die independently), its own hashes
    let other = id(2);
    let r = ingest(
        &kb,
        &ingestor,
        DocumentEvent::Added(document(other, Some("c1"), "en", &[], "Copy", &[P1])),
    )
    .await;
    assert_eq!(r.embedded, 1);
    let copy = must("document", kb.document(other)).await;
    assert_eq!(copy.len(), 1);
    assert_ne!(copy[0].content_hash, rows[0].content_hash);
}

/// The anchor row (id = document id) survives every rewrite: when its
/// text leaves the document, another chunk takes its place.
pub async fn anchor_survives_rewrites<K: KnowledgeBase>(kb: K) {
    let embedder = CountingEmbedder::new(HashingEmbedder::new(64));
    let ingestor = Ingestor::new(embedder.clone()).with_chunker(chunker());
    let doc = id(10);
    let check = |rows: &[crate::knowledge::KnowledgeEntry], contents: &[&str]| {
        assert_eq!(
            rows.iter().map(|r| r.content.as_str()).collect::<Vec<_>>(),
            contents
        );
        let anchors: Vec<_> = rows.iter().filter(|r| r.id == doc).collect();
        assert_eq!(anchors.len(), 1, "exactly one anchor: {rows:?}");
        assert!(rows.iter().all(|r| r.id == doc || r.parent_id == Some(doc)));
    };
    let add = |paragraphs: &[&str]| {
        DocumentEvent::Updated(document(doc, None, "en", &[], "Doc", paragraphs))
    };
    ingest(&kb, &ingestor, add(&[P1, P2, P3])).await;
    // a paragraph inserted at the start: one embedding, the rest move
    embedder.reset();
    let r = ingest(&kb, &ingestor, add(&[P4, P1, P2, P3])).await;
    assert_eq!((r.embedded, r.updated), (1, 3), "{r:?}");
    check(&must("document", kb.document(doc)).await, &[P4, P1, P2, P3]);
    // the anchor's text (P1) removed, no new text: a kept chunk moves into
    // the anchor without being embedded again
    embedder.reset();
    let r = ingest(&kb, &ingestor, add(&[P4, P2, P3])).await;
    assert_eq!(r.embedded, 0, "{r:?}");
    assert_eq!(embedder.calls(), 0);
    check(&must("document", kb.document(doc)).await, &[P4, P2, P3]);
    // everything replaced
    let r = ingest(&kb, &ingestor, add(&[P1])).await;
    assert_eq!(r.embedded, 1, "{r:?}");
    check(&must("document", kb.document(doc)).await, &[P1]);
    // and grown again
    ingest(&kb, &ingestor, add(&[P3, P1, P2])).await;
    check(&must("document", kb.document(doc)).await, &[P3, P1, P2]);
}

/// Search filters, and a tenant never sees another tenant's rows.
pub async fn filters_and_tenant_isolation<K: KnowledgeBase>(kb: K) {
    let embedder = HashingEmbedder::new(64);
    let ingestor = Ingestor::new(embedder.clone()).with_chunker(chunker());
    let docs = [
        document(
            id(20),
            Some("north"),
            "en",
            &["hours"],
            "north hours",
            &[P1],
        ),
        document(
            id(21),
            Some("south"),
            "en",
            &["hours"],
            "south hours",
            &[P1],
        ),
        document(
            id(22),
            Some("north"),
            "ro",
            &["hours", "ro"],
            "north ore",
            &["Clinica este deschisă de luni până vineri, de la 8 la 20."],
        ),
        document(
            id(23),
            None,
            "en",
            &["emergency"],
            "shared emergencies",
            &[P4],
        ),
        document(
            id(24),
            Some("north"),
            "en",
            &["prices", "hours"],
            "north prices",
            &["A check-up costs 150 lei, cleaning 250 lei."],
        ),
    ];
    for d in docs {
        ingest(&kb, &ingestor, DocumentEvent::Added(d)).await;
    }
    let search = |q: SearchQuery| {
        let kb = &kb;
        let embedder = &embedder;
        async move {
            must(
                "search",
                kb.search_text(embedder, "when is the clinic open", &q),
            )
            .await
        }
    };
    let all = |scope| SearchQuery::new(scope, 100);

    let north = search(all(Scope::Tenant("north".into()))).await;
    assert_eq!(north.len(), 3);
    assert!(north
        .iter()
        .all(|h| h.entry.document.tenant_id.as_deref() == Some("north")));
    assert_eq!(
        north[0].entry.document.title,
        "north hours",
        "{:?}",
        titles(&north)
    );
    assert!(north.windows(2).all(|w| w[0].similarity >= w[1].similarity));
    let south = search(all(Scope::Tenant("south".into()))).await;
    assert_eq!(titles(&south), vec!["south hours"]);
    let nobody = search(all(Scope::Tenant("west".into()))).await;
    assert!(
        nobody.is_empty(),
        "an unknown tenant saw rows: {:?}",
        titles(&nobody)
    );
    let with_shared = search(all(Scope::TenantAndShared("south".into()))).await;
    let mut t = titles(&with_shared);
    t.sort();
    assert_eq!(t, vec!["shared emergencies", "south hours"]);
    assert_eq!(
        titles(&search(all(Scope::Shared)).await),
        vec!["shared emergencies"]
    );
    assert_eq!(search(all(Scope::All)).await.len(), 5);

    let ro = search(all(Scope::Tenant("north".into())).language("ro")).await;
    assert_eq!(titles(&ro), vec!["north ore"]);
    let tagged = search(all(Scope::All).tag("hours").tag("prices")).await;
    assert_eq!(
        titles(&tagged),
        vec!["north prices"],
        "every tag must match"
    );
    let tagged = search(all(Scope::Tenant("north".into())).tag("hours")).await;
    assert_eq!(tagged.len(), 3);
    let none = search(all(Scope::All).source_type("protocol")).await;
    assert!(none.is_empty());
    let faq = search(all(Scope::All).source_type("protocol").source_type("faq")).await;
    assert_eq!(faq.len(), 5);
    let top = search(SearchQuery::new(Scope::All, 2)).await;
    assert_eq!(top.len(), 2, "k limits the hits");
    let close = search(all(Scope::All).min_similarity(0.5)).await;
    assert!(
        !close.is_empty() && close.len() < 5,
        "{:?}",
        close.iter().map(|h| h.similarity).collect::<Vec<_>>()
    );
    assert!(close.iter().all(|h| h.similarity >= 0.5));
    // another model's vectors are never compared
    let other = HashingEmbedder::new(64).with_seed(9);
    let hits = must("search", kb.search_text(&other, "clinic", &all(Scope::All))).await;
    assert!(hits.is_empty());
}

/// A retired document disappears from searches; adding it again brings
/// its rows back without embedding them again.
pub async fn retire_and_reactivate<K: KnowledgeBase>(kb: K) {
    let embedder = CountingEmbedder::new(HashingEmbedder::new(64));
    let ingestor = Ingestor::new(embedder.clone()).with_chunker(chunker());
    let doc = id(30);
    let d = document(doc, Some("c"), "en", &[], "Hours", &[P1, P2]);
    ingest(&kb, &ingestor, DocumentEvent::Added(d.clone())).await;
    let q = SearchQuery::new(Scope::Tenant("c".into()), 10);
    let r = ingest(
        &kb,
        &ingestor,
        DocumentEvent::Retired(DocumentRetired { document_id: doc }),
    )
    .await;
    assert_eq!(r.retired, 2);
    let rows = must("document", kb.document(doc)).await;
    assert!(rows.iter().all(|r| !r.is_active), "rows stay, inactive");
    assert!(must("search", kb.search_text(&embedder, "open", &q))
        .await
        .is_empty());
    let again = ingest(
        &kb,
        &ingestor,
        DocumentEvent::Retired(DocumentRetired { document_id: doc }),
    )
    .await;
    assert!(again.is_noop());
    embedder.reset();
    let r = ingest(&kb, &ingestor, DocumentEvent::Added(d)).await;
    assert_eq!((r.updated, r.embedded), (2, 0), "{r:?}");
    assert_eq!(embedder.calls(), 0, "reactivated rows were embedded again");
    assert_eq!(
        must("search", kb.search_text(&embedder, "open", &q))
            .await
            .len(),
        2
    );
}

/// The refresh job re-embeds exactly the stale active rows, in batches,
/// and a run stopped by a failure resumes without redoing its batches.
pub async fn refresh_reembeds_only_stale_rows_and_resumes<K: KnowledgeBase>(kb: K) {
    let old = HashingEmbedder::new(32);
    let new = CountingEmbedder::new(HashingEmbedder::new(32).with_seed(5));
    let old_ingestor = Ingestor::new(old.clone()).with_chunker(chunker());
    let new_ingestor = Ingestor::new(new.clone()).with_chunker(chunker());
    // 20 rows of the old model, 3 already of the new, 2 retired old ones
    for n in 0..10u128 {
        let p1 = format!("Old document {n}, first paragraph about topic {n}.");
        let p2 = format!("Old document {n}, second paragraph on subject {n}.");
        ingest(
            &kb,
            &old_ingestor,
            DocumentEvent::Added(document(
                id(100 + n),
                Some("c"),
                "en",
                &[],
                "old",
                &[&p1, &p2],
            )),
        )
        .await;
    }
    for n in 0..3u128 {
        let p = format!("New document {n} about a fresh subject.");
        ingest(
            &kb,
            &new_ingestor,
            DocumentEvent::Added(document(id(200 + n), Some("c"), "en", &[], "new", &[&p])),
        )
        .await;
    }
    ingest(
        &kb,
        &old_ingestor,
        DocumentEvent::Added(document(
            id(300),
            Some("c"),
            "en",
            &[],
            "gone",
            &["Retired one.", "Retired two."],
        )),
    )
    .await;
    ingest(
        &kb,
        &old_ingestor,
        DocumentEvent::Retired(DocumentRetired {
            document_id: id(300),
        }),
    )
    .await;
    assert_eq!(must("count_stale", kb.count_stale(new.model())).await, 20);

    new.reset();
    new.fail_after(2);
    let refresh = EmbeddingRefresh::new(new.clone()).batch_size(6);
    let mut seen = Vec::new();
    let failed = refresh.run(&kb, |p| seen.push((p.done, p.total))).await;
    assert!(
        matches!(
            failed,
            Err(KnowledgeError::Embed(EmbedError::Timeout { .. }))
        ),
        "the third batch should fail: {failed:?}"
    );
    assert_eq!(seen, vec![(6, 20), (12, 20)]);
    assert_eq!(new.texts(), 12);
    assert_eq!(must("count_stale", kb.count_stale(new.model())).await, 8);
    // searches work mid-refresh, with either model
    let q = SearchQuery::new(Scope::Tenant("c".into()), 50);
    let by_old = must("search", kb.search_text(&old, "document paragraph", &q)).await;
    let new_plain = HashingEmbedder::new(32).with_seed(5);
    let by_new = must(
        "search",
        kb.search_text(&new_plain, "document paragraph", &q),
    )
    .await;
    assert_eq!(
        (by_old.len(), by_new.len()),
        (8, 15),
        "old: rows not yet refreshed; new: 3 + 12"
    );

    // run again: resumes the job, embeds only the 8 rows left
    new.reset();
    new.fail_after(usize::MAX);
    let mut seen = Vec::new();
    let outcome = must(
        "refresh",
        refresh.run(&kb, |p| seen.push((p.done, p.total))),
    )
    .await;
    assert!(outcome.resumed, "{outcome:?}");
    assert_eq!(
        (outcome.refreshed, outcome.done, outcome.total),
        (8, 20, 20)
    );
    assert_eq!(new.texts(), 8, "finished batches were redone");
    assert_eq!(seen, vec![(18, 20), (20, 20)]);
    assert_eq!(must("count_stale", kb.count_stale(new.model())).await, 0);
    let retired = must("document", kb.document(id(300))).await;
    assert!(
        retired
            .iter()
            .all(|r| r.embedding_model.as_deref() == Some(old.model())),
        "retired rows are not refreshed"
    );
    let rows = must("document", kb.document(id(100))).await;
    assert!(rows
        .iter()
        .all(|r| r.embedding_model.as_deref() == Some(new.model())));
    let by_new = must(
        "search",
        kb.search_text(&new_plain, "document paragraph", &q),
    )
    .await;
    assert_eq!(by_new.len(), 23);
    // the refreshed embedding is the new model's vector of the text
    let first = must(
        "search",
        kb.search(
            new.model(),
            &new_plain.embed_one(&rows[0].content),
            &SearchQuery::new(Scope::All, 1),
        ),
    )
    .await;
    assert_eq!(first[0].entry.id, rows[0].id);
    assert!(first[0].similarity > 0.999);

    // nothing left: a new job with nothing to do
    new.reset();
    let outcome = must("refresh", refresh.run(&kb, |_| {})).await;
    assert!(!outcome.resumed);
    assert_eq!((outcome.refreshed, outcome.total), (0, 0));
    assert_eq!(new.calls(), 0);
}

/// Empty documents and vectors of the wrong length are refused, writing
/// nothing.
pub async fn bad_input_is_refused<K: KnowledgeBase>(kb: K) {
    let ingestor = Ingestor::new(HashingEmbedder::new(16)).with_chunker(chunker());
    let doc = id(40);
    let empty = ingest_err(
        &kb,
        &ingestor,
        DocumentEvent::Added(document(doc, None, "en", &[], "Empty", &["  "])),
    )
    .await;
    assert!(
        matches!(empty, KnowledgeError::EmptyDocument { document_id } if document_id == doc),
        "{empty}"
    );
    assert!(empty.to_string().contains("no content"), "{empty}");
    assert!(must("document", kb.document(doc)).await.is_empty());
    // hostile values: the same typed error on every backend, before any
    // write, and a bad event (parked), not a failing store
    let huge = "t".repeat(10_000);
    for (doc, field) in [
        (
            document(id(42), Some(huge.as_str()), "en", &[], "Doc", &[P1]),
            "document tenant id",
        ),
        (
            document(id(43), None, "en", &["a\0b"], "Doc", &[P1]),
            "document tag",
        ),
        (
            document(id(44), None, "en", &[], &huge, &[P1]),
            "document title",
        ),
        (
            document(id(45), None, "en", &[], "Doc", &["nul \0 inside"]),
            "document content",
        ),
        (
            document(id(46), Some(""), "en", &[], "Doc", &[P1]),
            "document tenant id",
        ),
        (
            document(id(47), None, "e\0n", &[], "Doc", &[P1]),
            "document language",
        ),
        (
            of_subject(document(id(48), None, "en", &[], "Doc", &[P1]), ""),
            "document subject",
        ),
        (
            of_subject(document(id(49), None, "en", &[], "Doc", &[P1]), "a\0b"),
            "document subject",
        ),
        (
            of_subject(document(id(50), None, "en", &[], "Doc", &[P1]), &huge),
            "document subject",
        ),
    ] {
        let document_id = doc.document_id;
        let err = ingest_err(&kb, &ingestor, DocumentEvent::Added(doc)).await;
        match &err {
            KnowledgeError::InvalidInput(e) => assert_eq!(e.field, field, "{err}"),
            other => panic!("{field}: expected InvalidInput, got {other}"),
        }
        assert!(!err.is_transient(), "{err}");
        assert_eq!(
            err.into_handler_error().kind(),
            crate::handler::FailureKind::Event
        );
        assert!(must("document", kb.document(document_id)).await.is_empty());
    }
    ingest(
        &kb,
        &ingestor,
        DocumentEvent::Added(document(doc, None, "en", &[], "Doc", &[P1])),
    )
    .await;
    // an embedder claiming the same model name with other dimensions
    let liar = Ingestor::new(Renamed {
        inner: HashingEmbedder::new(8),
        model: HashingEmbedder::new(16).model().to_owned(),
    })
    .with_chunker(chunker());
    let err = ingest_err(
        &kb,
        &liar,
        DocumentEvent::Added(document(id(41), None, "en", &[], "Doc", &[P2])),
    )
    .await;
    assert!(
        matches!(
            err,
            KnowledgeError::Dimensions {
                expected: 16,
                actual: 8,
                ..
            }
        ),
        "{err}"
    );
    assert!(must("document", kb.document(id(41))).await.is_empty());
    let q = SearchQuery::new(Scope::All, 3);
    let err = match kb
        .search(HashingEmbedder::new(16).model(), &[0.5; 4], &q)
        .await
    {
        Err(e) => e,
        Ok(hits) => panic!("a 4-dimension query of a 16-dimension model returned {hits:?}"),
    };
    assert!(matches!(err, KnowledgeError::Dimensions { .. }), "{err}");
}

/// The canaries of subject `who`'s documents: text that must not be
/// found anywhere once `who` is forgotten. Each is one chunk with the
/// suite's [`chunker`] for a `who` of up to 12 characters.
pub fn canaries(who: &str) -> [String; 3] {
    [
        format!("Canary {who}: fractured molar, third visit."),
        format!("Canary {who}: allergic to penicillin (rash)."),
        format!("Canary {who}: phone 0721 555 019, after six."),
    ]
}

/// Forgetting a subject deletes every row of its documents (active and
/// retired) and their embeddings in the embedder's cache; other subjects'
/// documents and documents of nobody's are untouched and still found.
/// Hostile subject ids are refused with a typed error before anything is
/// read.
pub async fn forget_subject_erases_only_that_subject<K: KnowledgeBase>(kb: K) {
    let counting = CountingEmbedder::new(HashingEmbedder::new(64));
    let cache = Arc::new(InMemoryEmbeddingCache::new(1_000));
    let ingestor =
        Ingestor::new(CachedEmbedder::new(counting.clone(), cache.clone())).with_chunker(chunker());
    let model = ingestor.embedder().model().to_owned();
    let [a1, a2, a3] = canaries("subject-a");
    let [b1, b2, _] = canaries("subject-b");
    let early = "Canary subject-a: an early note, removed later.";
    let docs = [
        of_subject(
            document(id(60), Some("c"), "en", &[], "Letter A", &[early, &a1, &a2]),
            "subject-a",
        ),
        of_subject(
            document(id(61), Some("c"), "en", &[], "Notes A", &[&a3, P1]),
            "subject-a",
        ),
        of_subject(
            document(id(62), Some("c"), "en", &[], "Letter B", &[&b1, &b2]),
            "subject-b",
        ),
        document(id(63), Some("c"), "en", &[], "Hours", &[P1, P2]),
    ];
    for d in docs {
        ingest(&kb, &ingestor, DocumentEvent::Added(d)).await;
    }
    // a text that leaves one of A's documents leaves the cache with its
    // row (the erasure could not find it later): here the anchor's text
    let early_cached = || async {
        must("cache", async {
            cache
                .get_many(&model, &[TextHash::of(early)])
                .await
                .map_err(KnowledgeError::from)
        })
        .await
    };
    assert!(early_cached().await[0].is_some());
    let r = ingest(
        &kb,
        &ingestor,
        DocumentEvent::Updated(of_subject(
            document(id(60), Some("c"), "en", &[], "Letter A", &[&a1, &a2]),
            "subject-a",
        )),
    )
    .await;
    assert_eq!(r.embedded, 0, "{r:?}");
    assert_eq!(
        early_cached().await,
        vec![None],
        "a text that left stays cached"
    );
    // one of A's documents retired: its rows stay until A is forgotten
    ingest(
        &kb,
        &ingestor,
        DocumentEvent::Retired(DocumentRetired {
            document_id: id(61),
        }),
    )
    .await;
    let rows = must("document", kb.document(id(60))).await;
    assert!(rows
        .iter()
        .all(|r| r.document.subject.as_deref() == Some("subject-a")));
    let q = SearchQuery::new(Scope::All, 100);
    let a_hashes: Vec<TextHash> = [&a1, &a2, &a3].iter().map(|t| TextHash::of(t)).collect();
    let cached = must("cache", async {
        cache
            .get_many(&model, &a_hashes)
            .await
            .map_err(KnowledgeError::from)
    })
    .await;
    assert!(cached.iter().all(Option::is_some), "A's texts were cached");

    let report = must("forget_subject", kb.forget_subject(&ingestor, "subject-a")).await;
    assert_eq!(report.subject, "subject-a");
    assert_eq!(report.documents, vec![id(60), id(61)]);
    assert_eq!(report.rows, 4, "{report:?}");
    assert!(report.cache_entries >= 3, "{report:?}");
    // checked before any search: a search embeds its query through the
    // cache too, and A's own text as a query would be cached again
    let cached = must("cache", async {
        cache
            .get_many(&model, &a_hashes)
            .await
            .map_err(KnowledgeError::from)
    })
    .await;
    assert_eq!(cached, vec![None, None, None], "A's embeddings stay cached");
    for doc in [id(60), id(61)] {
        assert!(must("document", kb.document(doc)).await.is_empty());
    }
    let plain = HashingEmbedder::new(64);
    for text in [&a1, &a2, &a3] {
        let hits = must("search", kb.search_text(&plain, text, &q)).await;
        assert!(
            hits.iter().all(|h| !h.entry.content.contains("subject-a")
                && h.entry.document.subject.as_deref() != Some("subject-a")),
            "A is still found: {:?}",
            titles(&hits)
        );
    }
    // B and the shared document are untouched, and still found
    let hits = must("search", kb.search_text(&plain, &b1, &q)).await;
    assert_eq!(hits[0].entry.content, b1);
    assert_eq!(hits[0].entry.document.subject.as_deref(), Some("subject-b"));
    assert_eq!(must("document", kb.document(id(62))).await.len(), 2);
    assert_eq!(must("document", kb.document(id(63))).await.len(), 2);
    let b_cached = must("cache", async {
        cache
            .get_many(&model, &[TextHash::of(&b1)])
            .await
            .map_err(KnowledgeError::from)
    })
    .await;
    assert!(b_cached[0].is_some(), "B's embedding left the cache");

    // again: nothing left to erase
    let again = must("forget_subject", kb.forget_subject(&ingestor, "subject-a")).await;
    assert!(again.is_noop() && again.documents.is_empty(), "{again:?}");
    // hostile subject ids: a typed error naming the field and the limit
    let huge = "s".repeat(10_000);
    for (subject, problem) in [
        ("", "must not be empty"),
        ("a\0b", "NUL"),
        (huge.as_str(), "limit of 1024 bytes"),
    ] {
        match kb.forget_subject(&ingestor, subject).await {
            Err(KnowledgeError::InvalidInput(e)) => {
                assert_eq!(e.field, "subject");
                assert!(e.problem.contains(problem), "{e}");
            }
            other => panic!("forget_subject({} bytes): {other:?}", subject.len()),
        }
    }
    assert_eq!(must("document", kb.document(id(62))).await.len(), 2);
    // a forgotten subject can have documents again (a new document of it)
    let r = ingest(
        &kb,
        &ingestor,
        DocumentEvent::Added(of_subject(
            document(id(64), Some("c"), "en", &[], "New A", &[P3]),
            "subject-a",
        )),
    )
    .await;
    assert_eq!(r.embedded, 1);
}

async fn ingest_err<K: KnowledgeBase, E: Embedder>(
    kb: &K,
    ingestor: &Ingestor<E>,
    event: DocumentEvent,
) -> KnowledgeError {
    match kb.ingest(ingestor, &event).await {
        Err(e) => e,
        Ok(r) => panic!("ingest should have failed: {r:?}"),
    }
}

/// An embedder under another model name.
struct Renamed<E> {
    inner: E,
    model: String,
}

impl<E: Embedder> Embedder for Renamed<E> {
    fn model(&self) -> &str {
        &self.model
    }
    fn dimensions(&self) -> usize {
        self.inner.dimensions()
    }
    fn embed(
        &self,
        texts: &[&str],
    ) -> impl Future<Output = Result<Vec<Vec<f32>>, EmbedError>> + Send {
        self.inner.embed(texts)
    }
}
