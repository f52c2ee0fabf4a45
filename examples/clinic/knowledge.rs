//! Tour section K: the knowledge base. FAQ documents in two languages and
//! two clinics are ingested (unchanged text is never embedded twice),
//! searched per clinic, and re-embedded with a new model by the resumable
//! refresh job.

use annals::knowledge::{
    CachedEmbedder, DocumentEvent, Embedder, EmbeddingRefresh, HashingEmbedder,
    InMemoryEmbeddingCache, Ingestor, Scope, SearchQuery,
};
use uuid::Uuid;

use super::{say, why, BoxError};

/// A clinic FAQ document as the CMS would publish it (a `document.added`
/// event in a real application, applied by `InMemoryKnowledgeProjection`
/// or `PgKnowledgeProjection`; here through the same ingest path directly).
/// Each clinic is a tenant of the knowledge base.
fn faq(
    clinic: &str,
    language: &str,
    tags: &[&str],
    title: &str,
    content: &str,
) -> annals::knowledge::Document {
    annals::knowledge::Document {
        document_id: Uuid::now_v7(),
        meta: annals::knowledge::DocumentMeta {
            source_type: "faq".into(),
            title: title.into(),
            tenant_id: Some(clinic.into()),
            language: Some(language.into()),
            tags: tags.iter().map(|t| (*t).to_owned()).collect(),
            metadata: Default::default(),
            subject: None,
        },
        content: content.into(),
    }
}

/// The knowledge base tour, on any backend: ingest FAQ documents in English
/// and Romanian, search them per clinic, and re-embed them with a new model
/// (the weekly refresh job). Clinic ids start with `run`.
pub(crate) async fn tour<K: annals::knowledge::KnowledgeBase>(
    kb: &K,
    run: &str,
) -> Result<(), BoxError> {
    println!();
    println!("K. The knowledge base (RAG): documents in, similarity search out");
    let cluj = format!("{run}clinic-cluj");
    let iasi = format!("{run}clinic-iasi");
    // A deterministic local embedder (hashed words and character trigrams,
    // 384 dimensions), behind a cache. In production: `HttpEmbedder` (any
    // OpenAI-compatible /v1/embeddings) and `RedisEmbeddingCache`.
    let embedder = CachedEmbedder::new(
        HashingEmbedder::new(384),
        InMemoryEmbeddingCache::new(10_000),
    );
    let ingestor = Ingestor::new(embedder);
    let docs = [
        faq(&cluj, "en", &["hours"], "Opening hours", "The clinic is open Monday to Friday from 8:00 to 20:00 and on Saturday from 9:00 to 14:00. On Sundays the clinic is closed."),
        faq(&cluj, "ro", &["hours"], "Program", "Clinica este deschisă de luni până vineri între 8:00 și 20:00, iar sâmbăta între 9:00 și 14:00. Duminica clinica este închisă."),
        faq(&cluj, "ro", &["prices"], "Prețuri", "O consultație costă 150 de lei. Detartrajul costă 250 de lei, iar albirea profesională 1200 de lei."),
        faq(&cluj, "en", &["parking"], "Parking", "Patients park for free in the courtyard behind the clinic; the entrance is from the side street."),
        faq(&iasi, "en", &["hours"], "Opening hours", "Our Iasi clinic is open every day from 10:00 to 18:00, Sundays included."),
    ];
    let mut chunks = 0;
    for doc in &docs {
        chunks += kb
            .ingest(&ingestor, &DocumentEvent::Added(doc.clone()))
            .await?
            .embedded;
    }
    say(&format!("Ingested {} FAQ documents (English and Romanian, two clinics): {chunks} chunk(s) embedded by `{}`.", docs.len(), ingestor.embedder().model()));
    let again = kb
        .ingest(&ingestor, &DocumentEvent::Updated(docs[1].clone()))
        .await?;
    say(&format!("Publishing the Romanian hours again unchanged: {} chunk(s) unchanged, {} embedded, nothing written.", again.unchanged, again.embedded));
    say(&format!(
        "The embedding cache holds {} vectors, keyed by (model, SHA-256 of the text).",
        ingestor.embedder().cache().len()
    ));

    for (question, language) in [
        ("When is the clinic open on Saturday?", "en"),
        ("Cât costă o consultație?", "ro"),
    ] {
        let query = SearchQuery::new(Scope::Tenant(cluj.clone()), 2)
            .language(language)
            .min_similarity(0.2);
        say(&format!(
            "Search `{question}` for clinic-cluj, language {language}, similarity >= 0.2:"
        ));
        for hit in kb
            .search_text(ingestor.embedder(), question, &query)
            .await?
        {
            let preview: String = hit.entry.content.chars().take(60).collect();
            say(&format!(
                "  {:.2}  {:<14} {preview}...",
                hit.similarity, hit.entry.document.title
            ));
        }
    }
    let iasi_hits = kb
        .search_text(
            ingestor.embedder(),
            "opening hours",
            &SearchQuery::new(Scope::Tenant(iasi.clone()), 10),
        )
        .await?;
    if iasi_hits
        .iter()
        .any(|h| h.entry.document.tenant_id.as_deref() != Some(iasi.as_str()))
    {
        return Err("a clinic saw another clinic's rows".into());
    }
    say(&format!("clinic-iasi asking for opening hours gets {} hit(s), all its own: a scope is part of every query.", iasi_hits.len()));

    let new_model = HashingEmbedder::new(384).with_seed(2);
    say(&format!(
        "The configured model changes to `{}`. The refresh job re-embeds the rows of the old one;",
        new_model.model()
    ));
    say("annals does not schedule it: run it after a model roll-out, or weekly from the platform's scheduler (a Kubernetes CronJob `0 3 * * 0`);");
    say("here it runs now, in batches of 2 (default 100), with a progress bar:");
    let refresh = EmbeddingRefresh::new(new_model.clone()).batch_size(2);
    let outcome = refresh
        .run(kb, |p| {
            let width = 20;
            let filled = (p.done * width).checked_div(p.total).unwrap_or(width) as usize;
            say(&format!(
                "  [{}{}] {}/{}",
                "#".repeat(filled),
                ".".repeat(width as usize - filled),
                p.done,
                p.total
            ));
        })
        .await?;
    say(&format!(
        "Refreshed {} of {} stale row(s){}. A crashed run resumes after its last stored batch.",
        outcome.refreshed,
        outcome.total,
        if outcome.resumed {
            " (resumed an unfinished job)"
        } else {
            ""
        }
    ));
    let hits = kb
        .search_text(
            &new_model,
            "When is the clinic open on Saturday?",
            &SearchQuery::new(Scope::Tenant(cluj.clone()), 1),
        )
        .await?;
    if let Some(hit) = hits.first() {
        say(&format!(
            "Searching with the new model: {:.2} {}.",
            hit.similarity, hit.entry.document.title
        ));
    }
    why("retrieval for the clinic's assistant: documents arrive as events, unchanged text is never embedded twice, every query is confined to one clinic, and a model change is a resumable background job.");
    Ok(())
}
