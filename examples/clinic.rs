//! The tour of annals: a clinic's leads, recorded as events.
//!
//! ```text
//! cargo run --example clinic                                # in memory (the default)
//! scripts/with-services cargo run --example clinic          # on a throwaway Postgres
//! DATABASE_URL=postgres://... cargo run --example clinic    # on your Postgres
//! ```
//!
//! Each numbered section of the output says what annals did and why it
//! matters. The tour is one generic function, `tour<S: EventStore>`, so the
//! in-memory store and the Postgres store run exactly the same code.

use std::error::Error as StdError;

use annals::prelude::*;
use annals::{LogPosition, NewEvent, SchemaLock, SchemaRegistry};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

type BoxError = Box<dyn StdError>;

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

/// Runs every section on `store`. Stream ids start with `run` so that
/// repeated runs on one database never meet each other's streams.
async fn tour<S: EventStore>(store: &S, run: &str) -> Result<(), BoxError> {
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
    for e in store.read_stream_as::<LeadEvent>(&ana, 1).await? {
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
    let stored = store.read_stream(&carla, 2, 1).await?;
    let stored = stored.first().ok_or("the v1 event was not stored")?;
    say(&format!(
        "Stored earlier: `{}` schema v{} with payload {}",
        stored.event_type,
        stored.schema_version,
        stored.payload.get()
    ));
    let decoded = store.read_stream_as::<LeadEvent>(&carla, 2).await?;
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
    let latest = store.read_stream_as::<LeadEvent>(&ana, loaded + 1).await?;
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
        let page = store.read_all(checkpoint, 3).await?;
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

    Ok(())
}

// ---------------------------------------------------------------------------
// Postgres
// ---------------------------------------------------------------------------

#[cfg(feature = "postgres")]
async fn on_postgres(url: &str) -> Result<(), BoxError> {
    use annals::postgres::sqlx::postgres::PgPoolOptions;
    use annals::postgres::{migrate, PgEventStore};

    let pool = PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(std::time::Duration::from_secs(10))
        .connect(url)
        .await
        .map_err(|e| format!("cannot connect to the database in DATABASE_URL: {e}"))?;
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
    say(&format!(
        "This run's streams start with `{run}`, so runs never collide."
    ));
    tour(&store, &run).await?;

    section(8, "Postgres only: the horizon and the start-up guard");
    let horizon = store.horizon().await?;
    say(&format!(
        "Horizon: transaction {}; lag {:.1} s; {} committed event(s) held back.",
        horizon.xmin, horizon.lag_seconds, horizon.events_held_back
    ));
    say("Log readers only read below it: every transaction there has finished, so none can commit later behind a checkpoint.");
    say("xids are server-wide: a long-open transaction in any database of this server holds readers back;");
    say("`PgEventStore::horizon()` shows by how much, for health checks and alerts.");
    match PgEventStore::builder(pool)
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
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let database_url = std::env::var("DATABASE_URL").ok().filter(|u| !u.is_empty());
    match database_url {
        #[cfg(feature = "postgres")]
        Some(url) => on_postgres(&url).await?,
        #[cfg(not(feature = "postgres"))]
        Some(_) => {
            return Err("DATABASE_URL is set, but this build has no `postgres` feature".into());
        }
        None => {
            println!("annals tour on the in-memory store");
            println!("==================================");
            let store = InMemoryEventStore::new();
            tour(&store, "").await?;
            println!();
            println!("The tour ran in memory. To run it on Postgres: `scripts/with-services cargo run --example clinic` (or set DATABASE_URL).");
        }
    }
    Ok(())
}
