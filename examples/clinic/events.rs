//! Tour sections 1 to 7: event types and versions, appends with metadata,
//! upcasting, schema validation, optimistic concurrency, the global log and
//! the breaking-change guard. Plain event-store calls, no aggregate yet.

use annals::prelude::*;
use annals::schema::SchemaLock;
use annals::store::LogPosition;
use annals::{NewEvent, SchemaRegistry};
use uuid::Uuid;

use super::{at, say, section, why, BoxError};
use super::{LeadCreated, LeadEvent, LeadQualified, LeadScored, ReshapedLeadScored};

/// Runs sections 1 to 7 on `store`. Stream ids start with `run`.
pub(crate) async fn tour<S: EventStore>(store: &S, run: &str) -> Result<(), BoxError> {
    let ana = format!("{run}lead-ana");
    let carla = format!("{run}lead-carla");
    let bruno = format!("{run}lead-bruno");
    // Typed appends register the event enum themselves; the raw append of
    // section 3 needs it registered first.
    store.registry().register::<LeadEvent>()?;

    event_types();
    let (first_position, mut written) = append_and_read(store, &ana).await?;
    written += upcasting(store, &carla).await?;
    schema_violation(store, &bruno).await?;
    written += concurrency(store, &ana).await?;
    global_log(store, run, first_position, written).await?;
    breaking_change_guard(store)
}

/// Section 1: what the derive made of `LeadEvent`.
fn event_types() {
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
}

/// Section 2: a typed append with metadata; returns the first event's log
/// position and how many events were written.
async fn append_and_read<S: EventStore>(
    store: &S,
    ana: &str,
) -> Result<(LogPosition, usize), BoxError> {
    section(2, "Append events with metadata, read them back typed");
    let correlation = Uuid::now_v7();
    let metadata = Metadata::new()
        .with_correlation_id(correlation)
        .with_user("web-form")
        .with("channel", "instagram-ad");
    let appended = store
        .append_events(
            ana,
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
    let written = appended.events.len();
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
    for e in store.read_stream_as::<LeadEvent>(ana, ..).await? {
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

    Ok((first_position, written))
}

/// Section 3: a version 1 payload written raw, read back as version 2.
async fn upcasting<S: EventStore>(store: &S, carla: &str) -> Result<usize, BoxError> {
    section(3, "An old version read as the current one (upcasting)");
    let mut written = 0;
    written += store
        .append_events(
            carla,
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
            carla,
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
    let stored = store.read_stream(carla, 2..=2).await?;
    let stored = stored.first().ok_or("the v1 event was not stored")?;
    say(&format!(
        "Stored earlier: `{}` schema v{} with payload {}",
        stored.event_type,
        stored.schema_version,
        stored.payload.get()
    ));
    let decoded = store.read_stream_as::<LeadEvent>(carla, 2..).await?;
    let decoded = decoded.first().ok_or("the v1 event did not decode")?;
    say(&format!(
        "Read today:    {:?}  (stored as v{}, decoded as v2)",
        decoded.payload, decoded.schema_version
    ));
    say("annals validated the payload against the v1 schema, deserialized it into `LeadScoredV1`");
    say("and converted it with `From<LeadScoredV1> for LeadScored`, which set the default confidence 0.5.");
    why("old events stay as they were written; the code only ever sees the current shape, and the compiler checks every step of the chain.");

    Ok(written)
}

/// Section 4: a batch with one invalid payload is refused as a whole.
async fn schema_violation<S: EventStore>(store: &S, bruno: &str) -> Result<(), BoxError> {
    let metadata = Metadata::new().with_user("web-form");
    section(4, "A payload that breaks its JSON Schema is refused");
    let refused = store
        .append_events(
            bruno,
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
    let bruno_version = store.stream_version(bruno).await?;
    say(&format!(
        "Stream `{bruno}` afterwards: {}; not even the valid `lead.created` was written.",
        bruno_version.map_or_else(|| "does not exist".to_owned(), |v| format!("version {v}"))
    ));
    if bruno_version.is_some() {
        return Err("a refused append wrote events".into());
    }
    why("every append, typed or raw, is checked against the JSON Schema that schemars generated from the Rust type, so a bad payload never reaches the log; and a batch is all-or-nothing.");

    Ok(())
}

/// Section 5: two appends expecting the same version; returns how many
/// events the winner wrote.
async fn concurrency<S: EventStore>(store: &S, ana: &str) -> Result<usize, BoxError> {
    section(5, "Two writers, one stream: optimistic concurrency");
    let loaded = store
        .stream_version(ana)
        .await?
        .ok_or("Ana's stream is missing")?;
    say(&format!(
        "Two receptionists opened Ana's lead at version {loaded}; both qualify her."
    ));
    let marta = store
        .append_events(
            ana,
            ExpectedVersion::Exact(loaded),
            &[LeadEvent::Qualified(LeadQualified { by: "Marta".into() })],
            &Metadata::new().with_user("marta"),
        )
        .await?;
    say(&format!(
        "  Marta's append (expected version {loaded}) won: the stream is at version {}.",
        marta.version
    ));
    let joao = store
        .append_events(
            ana,
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
    let latest = store.read_stream_as::<LeadEvent>(ana, loaded + 1..).await?;
    if let Some(e) = latest.first() {
        say(&format!(
            "  João reloads and sees v{} {:?}: already qualified, nothing to do.",
            e.stream_version, e.payload
        ));
    }
    why("no lock is held while a command thinks; a stale decision is caught at write time, as a typed error, never a silent overwrite.");

    Ok(marta.events.len())
}

/// Section 6: the global log from just before `first_position`, page by page.
async fn global_log<S: EventStore>(
    store: &S,
    run: &str,
    first_position: LogPosition,
    written: usize,
) -> Result<(), BoxError> {
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

    Ok(())
}

/// Section 7: schema fingerprints and a changed schema caught by the lock.
fn breaking_change_guard<S: EventStore>(store: &S) -> Result<(), BoxError> {
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
