//! The tour of annals: a clinic's leads, recorded as events.
//!
//! ```text
//! cargo run --example clinic                                # in memory (the default)
//! scripts/with-services cargo run --example clinic          # on a throwaway Postgres
//! DATABASE_URL=postgres://... cargo run --example clinic    # on your Postgres
//! ```
//!
//! Each numbered section of the output says what annals did and why it
//! matters. The tour is one generic function,
//! `tour<S: EventStore, N: SnapshotStore>`, so the in-memory stores and the
//! Postgres stores run exactly the same code.

use std::error::Error as StdError;

use annals::prelude::*;
use annals::{CommandError, LogPosition, NewEvent, schema::SchemaLock, SchemaRegistry, snapshot::Snapshot, SnapshotStore};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

type BoxError = Box<dyn StdError>;

/// `cargo run --example clinic -- serve`: the clinic as an HTTP service.
#[path = "clinic/service.rs"]
pub(crate) mod service;

/// Tour section: projections, dead letters, circuit breakers.
#[path = "clinic/projections.rs"]
mod projections;

/// Tour section: a saga, with compensation.
#[path = "clinic/sagas.rs"]
mod sagas;

// ---------------------------------------------------------------------------
// The application's events
// ---------------------------------------------------------------------------

/// A lead entered the clinic's funnel.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, PartialEq)]
struct LeadCreated {
    name: String,
    treatment: String,
}

/// The scoring model rated a lead. Version 2 added `confidence`.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, PartialEq)]
struct LeadScored {
    /// 0 to 100: the JSON Schema forbids anything above.
    #[schemars(range(max = 100))]
    score: u8,
    /// How sure the model was, 0 to 1.
    #[schemars(range(min = 0.0, max = 1.0))]
    confidence: f32,
}

/// Version 1 of `lead.scored`, as events written last year still store it.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, PartialEq)]
struct LeadScoredV1 {
    #[schemars(range(max = 100))]
    score: u8,
}

/// The upcast from version 1 to version 2, checked by the compiler: the
/// derive below refuses to build without it.
impl From<LeadScoredV1> for LeadScored {
    fn from(v1: LeadScoredV1) -> Self {
        LeadScored {
            score: v1.score,
            confidence: 0.5,
        }
    }
}

/// A receptionist confirmed the lead wants an appointment.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, PartialEq)]
struct LeadQualified {
    by: String,
}

/// Every event of a lead. The derive names each variant (`lead.created`,
/// `lead.scored`, `lead.qualified`), gives it a schema version and generates
/// the decoder that upcasts old versions.
#[derive(Event, Debug, Clone, PartialEq)]
enum LeadEvent {
    Created(LeadCreated),
    #[event(version = 2, history(1 = LeadScoredV1))]
    Scored(LeadScored),
    Qualified(LeadQualified),
}

/// What `lead.scored` v2 would look like if someone added a field without
/// bumping the version: used to show the breaking-change guard.
#[derive(Event, Serialize, Deserialize, JsonSchema, Debug, Clone, PartialEq)]
#[event(name = "lead.scored", version = 2)]
struct ReshapedLeadScored {
    score: u8,
    confidence: f32,
    model: String,
}

// ---------------------------------------------------------------------------
// The Lead aggregate
// ---------------------------------------------------------------------------

/// A lead's state, rebuilt from its `LeadEvent`s. The derive names the
/// aggregate (`lead`: its streams are `lead-{id}`), sets the snapshot policy
/// and generates the snapshot codec, fingerprinted from the state's JSON
/// Schema. Every 3 events is far too often for a real application; it lets
/// the tour show a snapshot after a few commands.
#[derive(Aggregate, Default, Serialize, Deserialize, JsonSchema, Debug, Clone, PartialEq)]
#[aggregate(event = LeadEvent, snapshot_every = 3)]
struct Lead {
    name: Option<String>,
    treatment: Option<String>,
    score: Option<u8>,
    qualified_by: Option<String>,
}

/// What the clinic's staff and systems ask of a lead.
#[derive(Debug)]
enum LeadCommand {
    Create { name: String, treatment: String },
    Score { score: u8, confidence: f32 },
    Qualify { by: String },
}

/// The lowest score a lead can be qualified with.
const QUALIFYING_SCORE: u8 = 70;

/// Why a lead refuses a command: the application's own error type.
#[derive(Debug, thiserror::Error)]
enum LeadError {
    #[error("the lead already exists")]
    AlreadyExists,
    #[error("there is no such lead")]
    NotFound,
    #[error("a lead needs a score of at least {needed} to qualify; {name}'s is {score}")]
    ScoreTooLow { name: String, score: u8, needed: u8 },
}

/// The domain rules: plain Rust, no I/O, easy to test with
/// `annals::testing::given(events).when(command).then_expect(events)`.
impl Aggregate for Lead {
    type Command = LeadCommand;
    type Error = LeadError;

    fn handle(&self, command: &LeadCommand) -> Result<Vec<LeadEvent>, LeadError> {
        let Some(name) = &self.name else {
            return match command {
                LeadCommand::Create { name, treatment } => {
                    Ok(vec![LeadEvent::Created(LeadCreated {
                        name: name.clone(),
                        treatment: treatment.clone(),
                    })])
                }
                _ => Err(LeadError::NotFound),
            };
        };
        match command {
            LeadCommand::Create { .. } => Err(LeadError::AlreadyExists),
            LeadCommand::Score { score, confidence } => Ok(vec![LeadEvent::Scored(LeadScored {
                score: *score,
                confidence: *confidence,
            })]),
            // Already qualified: nothing to do, no event.
            LeadCommand::Qualify { .. } if self.qualified_by.is_some() => Ok(vec![]),
            LeadCommand::Qualify { by } => match self.score.unwrap_or(0) {
                score if score >= QUALIFYING_SCORE => {
                    Ok(vec![LeadEvent::Qualified(LeadQualified { by: by.clone() })])
                }
                score => Err(LeadError::ScoreTooLow {
                    name: name.clone(),
                    score,
                    needed: QUALIFYING_SCORE,
                }),
            },
        }
    }

    fn apply(&mut self, event: &LeadEvent) {
        match event {
            LeadEvent::Created(e) => {
                self.name = Some(e.name.clone());
                self.treatment = Some(e.treatment.clone());
            }
            LeadEvent::Scored(e) => self.score = Some(e.score),
            LeadEvent::Qualified(e) => self.qualified_by = Some(e.by.clone()),
        }
    }
}

// ---------------------------------------------------------------------------
// Output helpers
// ---------------------------------------------------------------------------

fn section(n: u32, title: &str) {
    println!();
    println!("{n}. {title}");
}

fn say(text: &str) {
    println!("   {text}");
}

fn why(text: &str) {
    println!("   -> why it matters: {text}");
}

fn at(p: LogPosition) -> String {
    format!("(tx {}, pos {})", p.transaction_id, p.position)
}

// ---------------------------------------------------------------------------
// The tour, on any store
// ---------------------------------------------------------------------------

/// Runs every section on `store` (and `snapshots`, for the aggregate). Stream
/// and aggregate ids start with `run` so that repeated runs on one database
/// never meet each other's streams.
async fn tour<S: EventStore + Clone, N: SnapshotStore<S>>(
    store: &S,
    snapshots: N,
    run: &str,
) -> Result<(), BoxError> {
    let ana = format!("{run}lead-ana");
    let carla = format!("{run}lead-carla");
    let bruno = format!("{run}lead-bruno");
    // Typed appends register the event enum themselves; the raw appends
    // below need it registered first.
    store.registry().register::<LeadEvent>()?;

    section(1, "Event types");
    say("#[derive(Event)] on `LeadEvent` gave each variant a stable name and a schema version:");
    for t in <LeadEvent as Event>::TYPES {
        let reads = match t.version - t.oldest_version {
            0 => String::new(),
            1 => format!(" (also reads stored v{})", t.oldest_version),
            _ => format!(
                " (also reads stored v{} to v{})",
                t.oldest_version,
                t.version - 1
            ),
        };
        say(&format!("  {:<15} v{}{reads}", t.name, t.version));
    }
    why("the stored name and version, not Rust type names, decide how an event is read back; `#[event(name = \"...\")]` pins a name when a variant is renamed.");

    section(2, "Append events with metadata, read them back typed");
    let correlation = Uuid::now_v7();
    let metadata = Metadata::new()
        .with_correlation_id(correlation)
        .with_user("web-form")
        .with("channel", "instagram-ad");
    let appended = store
        .append_events(
            &ana,
            ExpectedVersion::NoStream,
            &[
                LeadEvent::Created(LeadCreated {
                    name: "Ana".into(),
                    treatment: "whitening".into(),
                }),
                LeadEvent::Scored(LeadScored {
                    score: 82,
                    confidence: 0.9,
                }),
            ],
            &metadata,
        )
        .await?;
    let mut written = appended.events.len();
    let first_position = appended
        .events
        .first()
        .map(|e| e.log_position)
        .ok_or("the append returned no events")?;
    say(&format!(
        "Appended 2 events to stream `{ana}` in one all-or-nothing call (expected: no stream yet); it is now at version {}.",
        appended.version
    ));
    say(&format!(
        "Metadata on both: correlation id {correlation}, user `web-form`, channel `instagram-ad`."
    ));
    say("Read back as `LeadEvent` values:");
    for e in store.read_stream_as::<LeadEvent>(&ana, ..).await? {
        say(&format!(
            "  v{} {:<14} {:?}",
            e.stream_version, e.event_type, e.payload
        ));
        say(&format!(
            "     metadata: user {}, correlation {}, channel {}",
            e.metadata.user.as_deref().unwrap_or("-"),
            e.metadata
                .correlation_id
                .map_or_else(|| "-".to_owned(), |id| id.to_string()),
            e.metadata
                .extra
                .get("channel")
                .and_then(|c| c.as_str())
                .unwrap_or("-"),
        ));
    }
    why("handlers work with plain Rust enums; the envelope keeps who caused each event and which operation it belongs to.");

    section(3, "An old version read as the current one (upcasting)");
    written += store
        .append_events(
            &carla,
            ExpectedVersion::NoStream,
            &[LeadEvent::Created(LeadCreated {
                name: "Carla".into(),
                treatment: "implant".into(),
            })],
            &Metadata::new().with_user("import"),
        )
        .await?
        .events
        .len();
    // As last year's release wrote it: schema version 1, no confidence.
    let v1_payload = serde_json::value::to_raw_value(&serde_json::json!({ "score": 64 }))?;
    written += store
        .append(
            &carla,
            ExpectedVersion::Exact(1),
            vec![NewEvent::new(
                "lead.scored",
                1,
                v1_payload,
                Metadata::new().with_user("import"),
            )],
        )
        .await?
        .events
        .len();
    let stored = store.read_stream(&carla, 2..=2).await?;
    let stored = stored.first().ok_or("the v1 event was not stored")?;
    say(&format!(
        "Stored earlier: `{}` schema v{} with payload {}",
        stored.event_type,
        stored.schema_version,
        stored.payload.get()
    ));
    let decoded = store.read_stream_as::<LeadEvent>(&carla, 2..).await?;
    let decoded = decoded.first().ok_or("the v1 event did not decode")?;
    say(&format!(
        "Read today:    {:?}  (stored as v{}, decoded as v2)",
        decoded.payload, decoded.schema_version
    ));
    say("annals validated the payload against the v1 schema, deserialized it into `LeadScoredV1`");
    say("and converted it with `From<LeadScoredV1> for LeadScored`, which set the default confidence 0.5.");
    why("old events stay as they were written; the code only ever sees the current shape, and the compiler checks every step of the chain.");

    section(4, "A payload that breaks its JSON Schema is refused");
    let refused = store
        .append_events(
            &bruno,
            ExpectedVersion::NoStream,
            &[
                LeadEvent::Created(LeadCreated {
                    name: "Bruno".into(),
                    treatment: "aligners".into(),
                }),
                LeadEvent::Scored(LeadScored {
                    score: 150,
                    confidence: 0.7,
                }),
            ],
            &metadata,
        )
        .await;
    match refused {
        Err(annals::Error::SchemaViolation(violation)) => {
            say("Appending [lead.created, lead.scored with score 150] to a new stream failed with");
            say(&format!("  Error::SchemaViolation: {violation}"));
            say(&format!(
                "  (event type `{}`, version {}, JSON pointer `{}`)",
                violation.event_type,
                violation.version,
                violation.pointer()
            ));
        }
        Err(other) => return Err(other.into()),
        Ok(_) => return Err("an out-of-range score was accepted".into()),
    }
    let bruno_version = store.stream_version(&bruno).await?;
    say(&format!(
        "Stream `{bruno}` afterwards: {}; not even the valid `lead.created` was written.",
        bruno_version.map_or_else(|| "does not exist".to_owned(), |v| format!("version {v}"))
    ));
    if bruno_version.is_some() {
        return Err("a refused append wrote events".into());
    }
    why("every append, typed or raw, is checked against the JSON Schema that schemars generated from the Rust type, so a bad payload never reaches the log; and a batch is all-or-nothing.");

    section(5, "Two writers, one stream: optimistic concurrency");
    let loaded = store
        .stream_version(&ana)
        .await?
        .ok_or("Ana's stream is missing")?;
    say(&format!(
        "Two receptionists opened Ana's lead at version {loaded}; both qualify her."
    ));
    let marta = store
        .append_events(
            &ana,
            ExpectedVersion::Exact(loaded),
            &[LeadEvent::Qualified(LeadQualified { by: "Marta".into() })],
            &Metadata::new().with_user("marta"),
        )
        .await?;
    written += marta.events.len();
    say(&format!(
        "  Marta's append (expected version {loaded}) won: the stream is at version {}.",
        marta.version
    ));
    let joao = store
        .append_events(
            &ana,
            ExpectedVersion::Exact(loaded),
            &[LeadEvent::Qualified(LeadQualified { by: "João".into() })],
            &Metadata::new().with_user("joao"),
        )
        .await;
    match joao {
        Err(annals::Error::Conflict(conflict)) => {
            say(&format!(
                "  João's append (expected version {loaded}) was refused with"
            ));
            say(&format!("    VersionConflict: {conflict}"));
            say(&format!(
                "    (expected: {}, actual: {})",
                conflict.expected,
                conflict
                    .actual
                    .map_or_else(|| "no stream".to_owned(), |v| format!("version {v}"))
            ));
        }
        Err(other) => return Err(other.into()),
        Ok(_) => return Err("both appends expecting the same version succeeded".into()),
    }
    let latest = store.read_stream_as::<LeadEvent>(&ana, loaded + 1..).await?;
    if let Some(e) = latest.first() {
        say(&format!(
            "  João reloads and sees v{} {:?}: already qualified, nothing to do.",
            e.stream_version, e.payload
        ));
    }
    why("no lock is held while a command thinks; a stale decision is caught at write time, as a typed error, never a silent overwrite.");

    section(6, "The global log, read in order with checkpoints");
    // Start just before this tour's first event, so events of earlier runs
    // on the same database don't flood the output.
    let mut checkpoint = LogPosition::new(
        first_position.transaction_id,
        first_position.position.saturating_sub(1),
    );
    say(&format!(
        "A log reader (what projections will build on) reads everything after its checkpoint {}, 3 events at a time:",
        at(checkpoint)
    ));
    let mut seen = 0;
    let width = run.len() + 11; // the longest stream id: `{run}lead-carla`
    loop {
        let page = store.read_log(checkpoint, 3).await?;
        let Some(last) = page.last() else { break };
        let next = last.log_position;
        for recorded in page {
            if !recorded.stream_id.starts_with(run) {
                continue; // another application's event
            }
            let position = recorded.log_position;
            let event = store.decode::<LeadEvent>(recorded)?;
            seen += 1;
            say(&format!(
                "  {} {:<width$} {:<14} {:?}",
                at(position),
                event.stream_id,
                event.event_type,
                event.payload
            ));
        }
        checkpoint = next;
        say(&format!("  checkpoint saved: {}", at(checkpoint)));
    }
    say(&format!(
        "{seen} events in commit order; a restarted reader resumes after its saved checkpoint."
    ));
    if seen < written {
        say(&format!("Fewer than the {written} this tour wrote: a transaction still open elsewhere on the server holds the log's horizon back."));
    }
    why("a reader that resumes from its checkpoint never skips or repeats an event, across all streams, even when transactions commit out of order.");

    section(7, "Schema fingerprints and the breaking-change guard");
    say("Every (event type, version) has a JSON Schema; its fingerprint ignores titles and docs:");
    for s in store.registry().schemas() {
        say(&format!(
            "  {:<14} v{}  {}  ({})",
            s.event_type, s.version, s.fingerprint, s.rust_type
        ));
    }
    let lock = SchemaLock::from_registry(store.registry());
    say("An application commits these as `schemas.lock` and adds one test:");
    say("  SchemaLock::assert_file::<LeadEvent>(\"schemas.lock\");");
    let changed = SchemaRegistry::new();
    changed.register::<ReshapedLeadScored>()?;
    match lock.check(&changed) {
        Err(changes) => {
            say("If `lead.scored` v2 gained a field without a version bump, that test would fail with:");
            say(&format!("  {changes}"));
        }
        Ok(()) => return Err("the breaking-change guard missed a changed schema".into()),
    }
    why("a payload change that would break stored events is caught in CI, before it ships.");

    section(8, "An aggregate decides, the repository records");
    say("#[derive(Aggregate)] on `Lead` named it `lead` (its streams are `lead-{id}`), set a snapshot every 3 events");
    say("and generated its snapshot codec; `impl Aggregate for Lead` holds the rules: `handle` decides events, `apply` folds them.");
    let repo = Repository::<Lead, _, _>::new(store.clone())
        .with_snapshots(snapshots.clone())
        .max_retries(5)
        // Write each snapshot before `execute` returns, so this tour's output
        // is the same every run. Without it (the default), snapshots are
        // written on a background task and add nothing to a command's latency.
        .inline_snapshots();
    let diego = format!("{run}diego");
    let stream = Lead::stream_id(&diego);
    let intake = Uuid::now_v7();
    say(&format!(
        "`repo.execute(\"{diego}\", &command, &metadata)` for five commands (the metadata's user in brackets):"
    ));
    let commands = [
        (
            LeadCommand::Create {
                name: "Diego".into(),
                treatment: "veneers".into(),
            },
            "web-form",
        ),
        (
            LeadCommand::Score {
                score: 45,
                confidence: 0.8,
            },
            "scoring-model",
        ),
        (LeadCommand::Qualify { by: "Marta".into() }, "marta"),
        (
            LeadCommand::Score {
                score: 78,
                confidence: 0.9,
            },
            "scoring-model",
        ),
        (LeadCommand::Qualify { by: "Marta".into() }, "marta"),
    ];
    let mut rejected = 0;
    for (command, user) in &commands {
        let metadata = Metadata::new().with_correlation_id(intake).with_user(*user);
        let outcome = match repo.execute(&diego, command, &metadata).await {
            Ok(done) => done
                .events
                .iter()
                .map(|e| format!("v{} {}", e.stream_version, e.event_type))
                .collect::<Vec<_>>()
                .join(", "),
            Err(CommandError::Rejected(e)) => {
                rejected += 1;
                format!("CommandError::Rejected: {e}")
            }
            Err(other) => return Err(other.into()),
        };
        say(&format!(
            "  {:<46} {:<16} -> {outcome}",
            format!("{command:?}"),
            format!("[{user}]")
        ));
    }
    if rejected != 1 {
        return Err("the low-score qualification was not rejected".into());
    }
    say("Each call loaded the lead, let it decide, and appended with the loaded version as the expected one;");
    say("on a version conflict the repository reloads and decides again (here up to 5 times: `.max_retries(5)`).");
    let recorded = store.read_stream_as::<LeadEvent>(&stream, ..).await?;
    if recorded.len() != 4
        || recorded
            .iter()
            .any(|e| e.metadata.correlation_id != Some(intake))
    {
        return Err("the aggregate's events or their metadata are not as expected".into());
    }
    say(&format!(
        "The rejected command wrote nothing: `{stream}` holds {} events. Read back, each carries its command's user",
        recorded.len()
    ));
    say(&format!(
        "and the correlation id of Diego's intake, {intake}:"
    ));
    for e in &recorded {
        say(&format!(
            "  v{} {:<14} user {}",
            e.stream_version,
            e.event_type,
            e.metadata.user.as_deref().unwrap_or("-"),
        ));
    }
    why("the business rules are one plain function, tested without a database (`given(events).when(command).then_expect(events)`); loading, concurrency, retries and metadata are the repository's job.");

    section(9, "Snapshots: load = newest snapshot + the events after it");
    let loaded = repo.load(&diego).await?;
    say(&format!(
        "`repo.load(\"{diego}\")` -> version {}, from the snapshot at version {} + {} event(s) replayed:",
        loaded.version,
        loaded
            .snapshot_version
            .map_or_else(|| "-".to_owned(), |v| v.to_string()),
        loaded.events_replayed
    ));
    say(&format!("  {:?}", loaded.state));
    let full = Repository::<Lead, _>::new(store.clone())
        .load(&diego)
        .await?;
    if full.state != loaded.state || loaded.snapshot_version != Some(3) {
        return Err("the snapshot did not give the replayed state".into());
    }
    say(&format!(
        "A repository without snapshots replays all {} events and reaches the same state.",
        full.events_replayed
    ));
    // What a build whose `Lead` had other fields would have left behind.
    snapshots
        .save(Snapshot {
            aggregate_type: Lead::TYPE.to_owned(),
            aggregate_id: stream.clone(),
            version: loaded.version,
            state: serde_json::value::to_raw_value(
                &serde_json::json!({ "name": "Diego", "stage": "hot" }),
            )?,
            fingerprint: "sha256:an-older-shape-of-lead".to_owned(),
            codec_version: 1,
        })
        .await?;
    say("Now an older build, whose `Lead` had other fields, left a snapshot at version 4. The next load:");
    let reloaded = repo.load(&diego).await?;
    if !reloaded.snapshot_invalidated || reloaded.state != loaded.state {
        return Err("the outdated snapshot was used".into());
    }
    say(&format!(
        "  ignored it (its shape fingerprint is not the code's), replayed all {} events, same state;",
        reloaded.events_replayed
    ));
    say("  annals emitted a `tracing` warning and counted it in the `annals_snapshot_invalidations_total` metric.");
    repo.execute(
        &diego,
        &LeadCommand::Score {
            score: 85,
            confidence: 0.95,
        },
        &Metadata::new()
            .with_correlation_id(intake)
            .with_user("scoring-model"),
    )
    .await?;
    let healed = repo.load(&diego).await?;
    say(&format!(
        "The next command (a new score, v5) wrote a fresh snapshot: load -> snapshot at version {}, {} event(s) replayed.",
        healed
            .snapshot_version
            .map_or_else(|| "-".to_owned(), |v| v.to_string()),
        healed.events_replayed
    ));
    why("an aggregate with years of events loads in one snapshot read plus a few events; a snapshot from another shape of the state is never fatal and never a wrong state.");

    Ok(())
}

// ---------------------------------------------------------------------------
// The knowledge base (RAG): documents in, similarity search out
// ---------------------------------------------------------------------------

/// A clinic FAQ document as the CMS would publish it (a `document.added`
/// event in a real application, applied by `InMemoryKnowledgeProjection`
/// or `PgKnowledgeProjection`; here through the same ingest path directly).
fn faq(
    clinic: &str,
    language: &str,
    tags: &[&str],
    title: &str,
    content: &str,
) -> annals::rag::Document {
    annals::rag::Document {
        document_id: Uuid::now_v7(),
        meta: annals::rag::DocumentMeta {
            source_type: "faq".into(),
            title: title.into(),
            clinic_id: Some(clinic.into()),
            language: Some(language.into()),
            tags: tags.iter().map(|t| (*t).to_owned()).collect(),
            metadata: Default::default(),
        },
        content: content.into(),
    }
}

/// The knowledge base tour, on any backend: ingest FAQ documents in English
/// and Romanian, search them per clinic, and re-embed them with a new model
/// (the weekly refresh job). Clinic ids start with `run`.
async fn knowledge_tour<K: annals::rag::KnowledgeBase>(kb: &K, run: &str) -> Result<(), BoxError> {
    use annals::rag::{
        CachedEmbedder, DocumentEvent, Embedder, EmbeddingRefresh, HashingEmbedder,
        InMemoryEmbeddingCache, Ingestor, Schedule, Scope, SearchQuery,
    };
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
        let query = SearchQuery::new(Scope::Clinic(cluj.clone()), 2)
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
            &SearchQuery::new(Scope::Clinic(iasi.clone()), 10),
        )
        .await?;
    if iasi_hits
        .iter()
        .any(|h| h.entry.document.clinic_id.as_deref() != Some(iasi.as_str()))
    {
        return Err("a clinic saw another clinic's rows".into());
    }
    say(&format!("clinic-iasi asking for opening hours gets {} hit(s), all its own: a scope is part of every query.", iasi_hits.len()));

    let schedule: Schedule = "0 3 * * 0".parse()?;
    let new_model = HashingEmbedder::new(384).with_seed(2);
    say(&format!(
        "The configured model changes to `{}`. The refresh job is scheduled `{schedule}` (Sundays 03:00 UTC; next: {});",
        new_model.model(),
        schedule.next_after(chrono::Utc::now()).format("%a %Y-%m-%d %H:%M")
    ));
    say("A service runs it on a task until shutdown: `schedule.run_until(shutdown, || refresh.run(&kb, |_| {}), |outcome| ...)`;");
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
            &SearchQuery::new(Scope::Clinic(cluj.clone()), 1),
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

// ---------------------------------------------------------------------------
// Postgres
// ---------------------------------------------------------------------------

#[cfg(feature = "postgres")]
async fn on_postgres(url: &str) -> Result<(), BoxError> {
    use annals::postgres::sqlx::postgres::PgPoolOptions;

    let pool = PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(std::time::Duration::from_secs(10))
        .connect(url)
        .await
        .map_err(|e| format!("cannot connect to the database in DATABASE_URL: {e}"))?;
    tour_on_postgres(pool).await
}

/// The whole tour on the database behind `pool` (migrated first).
#[cfg(feature = "postgres")]
pub(crate) async fn tour_on_postgres(pool: annals::postgres::sqlx::PgPool) -> Result<(), BoxError> {
    use annals::postgres::{migrate, PgEventStore, PgSnapshotStore};

    migrate(&pool).await?;
    let store = PgEventStore::builder(pool.clone())
        .register::<LeadEvent>()
        .build()
        .await?;
    let id = Uuid::now_v7().simple().to_string();
    let run = format!("run-{}/", &id[id.len() - 8..]);

    println!("annals tour on Postgres (DATABASE_URL)");
    println!("======================================");
    say("`annals::postgres::migrate(&pool)` created the annals tables (or found them up to date);");
    say("`PgEventStore::builder(pool).register::<LeadEvent>().build()` recorded LeadEvent's schemas in the database.");
    say("`PgSnapshotStore::new(&store)` keeps the aggregate's snapshots in the `annals_snapshots` table.");
    say(&format!(
        "This run's stream and aggregate ids start with `{run}`, so runs never collide."
    ));
    tour(&store, PgSnapshotStore::new(&store), &run).await?;

    section(10, "Postgres only: the horizon and the start-up guard");
    let horizon = store.horizon().await?;
    say(&format!(
        "Horizon: transaction {}; lag {:.1} s; {} committed event(s) held back.",
        horizon.xmin, horizon.lag_seconds, horizon.events_held_back
    ));
    say("Log readers only read below it: every transaction there has finished, so none can commit later behind a checkpoint.");
    say("xids are server-wide: a long-open transaction in any database of this server holds readers back;");
    say("`PgEventStore::horizon()` shows by how much, for health checks and alerts.");
    match PgEventStore::builder(pool.clone())
        .register::<ReshapedLeadScored>()
        .build()
        .await
    {
        Err(annals::Error::SchemaChanged(changes)) => {
            say("Building a store whose `lead.scored` v2 changed shape without a version bump fails at start-up:");
            say(&format!("  Error::SchemaChanged: {changes}"));
        }
        Err(other) => return Err(other.into()),
        Ok(_) => return Err("the database accepted a changed schema".into()),
    }
    why("the database remembers every schema it stored events with, so a deployment with a silently changed payload refuses to start.");
    projections::tour(
        &store,
        annals::postgres::PgProjectionStore::new(pool.clone()),
        &run,
        11,
    )
    .await?;
    sagas::tour(
        &store,
        annals::postgres::PgProjectionStore::new(pool.clone()),
        annals::postgres::PgSagaStore::new(pool.clone()),
        12,
    )
    .await?;
    knowledge_tour(&annals::postgres::PgKnowledgeBase::new(pool), &run).await?;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let database_url = std::env::var("DATABASE_URL").ok().filter(|u| !u.is_empty());
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("serve") {
        return serve(database_url.as_deref(), &args[1..]).await;
    }
    match database_url {
        #[cfg(feature = "postgres")]
        Some(url) => on_postgres(&url).await?,
        #[cfg(not(feature = "postgres"))]
        Some(_) => {
            return Err("DATABASE_URL is set, but this build has no `postgres` feature".into());
        }
        None => {
            tour_in_memory().await?;
            println!();
            println!("The tour ran in memory. To run it on Postgres: `scripts/with-services cargo run --example clinic` (or set DATABASE_URL).");
        }
    }
    Ok(())
}

/// The whole tour on the in-memory stores.
pub(crate) async fn tour_in_memory() -> Result<(), BoxError> {
    println!("annals tour on the in-memory store");
    println!("==================================");
    let store = InMemoryEventStore::new();
    tour(&store, InMemorySnapshotStore::new(), "").await?;
    projections::tour(&store, annals::InMemoryProjectionStore::new(), "", 10).await?;
    sagas::tour(
        &store,
        annals::InMemoryProjectionStore::new(),
        annals::InMemorySagaStore::new(),
        11,
    )
    .await?;
    knowledge_tour(&annals::rag::InMemoryKnowledgeBase::new(), "").await?;
    Ok(())
}

/// Runs the clinic as a service until Ctrl-C: `serve [--port N]` (default
/// 8080), on Postgres when `DATABASE_URL` is set, in memory otherwise.
async fn serve(database_url: Option<&str>, args: &[String]) -> Result<(), BoxError> {
    let port: u16 = match args {
        [] => 8080,
        [flag, port] if flag == "--port" => port
            .parse()
            .map_err(|e| format!("--port {port}: not a port number ({e})"))?,
        _ => return Err("usage: cargo run --example clinic -- serve [--port N]".into()),
    };
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets(&[
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ])?
        .install_recorder()?;
    let listener = tokio::net::TcpListener::bind(("0.0.0.0", port)).await?;
    let stale_after = std::time::Duration::from_secs(300);
    let service = match database_url {
        #[cfg(feature = "postgres")]
        Some(url) => {
            use annals::postgres::{migrate, sqlx::PgPool, PgEventStore};
            let pool = PgPool::connect(url).await?;
            migrate(&pool).await?;
            let store = PgEventStore::builder(pool)
                .register::<LeadEvent>()
                .build()
                .await?;
            service::start(store, listener, metrics, stale_after)?
        }
        #[cfg(not(feature = "postgres"))]
        Some(_) => {
            return Err("DATABASE_URL is set, but this build has no `postgres` feature".into())
        }
        None => service::start(InMemoryEventStore::new(), listener, metrics, stale_after)?,
    };
    println!(
        "clinic service on http://{} (store: {}); try:",
        service.addr,
        if database_url.is_some() {
            "Postgres"
        } else {
            "in memory"
        }
    );
    println!(
        "  curl -X POST localhost:{port}/leads/ana/commands -H 'content-type: application/json' \\\n       -d '{{\"type\":\"create\",\"name\":\"Ana\",\"treatment\":\"implant\"}}'"
    );
    println!("  curl localhost:{port}/leads/ana   curl localhost:{port}/health/ready   curl localhost:{port}/metrics");
    tokio::signal::ctrl_c().await?;
    println!("stopping");
    service.stop().await?;
    Ok(())
}
