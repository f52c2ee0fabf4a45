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
use annals::{
    CommandError, LogPosition, NewEvent, SchemaLock, SchemaRegistry, Snapshot, SnapshotStore,
};
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
/// `annals::given(events).when(command).then_expect(events)`.
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
async fn tour<S: EventStore + Clone, N: SnapshotStore>(
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
    let recorded = store.read_stream_as::<LeadEvent>(&stream, 1).await?;
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
// The booking saga (the saga tour: `saga_tour`, called from the main flow)
// ---------------------------------------------------------------------------

/// The front desk asks for an appointment for a qualified lead.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, PartialEq)]
struct AppointmentRequested {
    lead_id: Uuid,
    name: String,
}

/// The scheduler held a slot for the lead.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, PartialEq)]
struct SlotReserved {
    lead_id: Uuid,
    slot: String,
}

/// The messenger's report on a confirmation.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, PartialEq)]
struct ConfirmationReport {
    lead_id: Uuid,
}

/// The events the booking saga reads: `booking.appointment_requested`, ...
#[derive(Event, Debug, Clone, PartialEq)]
enum BookingEvent {
    AppointmentRequested(AppointmentRequested),
    SlotReserved(SlotReserved),
    ConfirmationSent(ConfirmationReport),
    ConfirmationFailed(ConfirmationReport),
}

/// A slot, for the scheduler.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct SlotRequest {
    lead_id: Uuid,
    slot: Option<String>,
}

/// A message, for the messenger.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct Message {
    lead_id: Uuid,
    to: String,
    slot: Option<String>,
}

/// The commands the saga issues to the clinic's services.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
enum BookingCommand {
    ReserveSlot(SlotRequest),
    ReleaseSlot(SlotRequest),
    SendConfirmation(Message),
    WithdrawConfirmation(Message),
}

/// What the saga knows about one booking.
#[derive(Serialize, Deserialize, Debug, Default)]
struct Booking {
    lead_id: Uuid,
    name: String,
    slot: Option<String>,
}

impl annals::SagaData for Booking {
    type Event = BookingEvent;
    fn apply(&mut self, event: &BookingEvent) {
        match event {
            BookingEvent::AppointmentRequested(e) => {
                self.lead_id = e.lead_id;
                self.name = e.name.clone();
            }
            BookingEvent::SlotReserved(e) => self.slot = Some(e.slot.clone()),
            BookingEvent::ConfirmationSent(_) | BookingEvent::ConfirmationFailed(_) => {}
        }
    }
}

impl annals::Issue<SlotRequest> for Booking {
    fn issue(&self) -> SlotRequest {
        SlotRequest {
            lead_id: self.lead_id,
            slot: self.slot.clone(),
        }
    }
}

impl annals::Issue<Message> for Booking {
    fn issue(&self) -> Message {
        Message {
            lead_id: self.lead_id,
            to: self.name.clone(),
            slot: self.slot.clone(),
        }
    }
}

/// A qualified lead → reserve a slot → send the confirmation → booked. If
/// the confirmation fails or times out, the saga compensates: it withdraws
/// the confirmation and releases the slot, newest step first. A misspelt
/// state, a state with no way out or a step without compensation would not
/// compile. (A real clinic would give the confirmation a day, not 1.5 s.)
#[derive(annals::Saga, Debug, Clone, Copy, PartialEq, Eq)]
#[saga(event = BookingEvent, command = BookingCommand, data = Booking,
       correlation = Uuid, correlate = lead_id)]
enum AppointmentBooking {
    #[saga(start = AppointmentRequested, issue = ReserveSlot, compensate = ReleaseSlot,
           on(SlotReserved => Confirming), timeout("1m"))]
    Reserving,
    #[saga(issue = SendConfirmation, compensate = WithdrawConfirmation,
           on(ConfirmationSent => Booked, ConfirmationFailed => fail), timeout("1500ms"))]
    Confirming,
    #[saga(terminal)]
    Booked,
}

/// The clinic's scheduler and messenger, behind the saga's command bus.
/// They apply each command once per idempotency key, and report back with
/// events: Bruno's phone bounces the confirmation, Carla's never answers.
#[derive(Clone)]
struct ClinicServices<S> {
    events: S,
    applied: std::sync::Arc<std::sync::Mutex<Vec<(String, BookingCommand)>>>,
}

impl<S: EventStore + Clone + 'static> annals::CommandBus<BookingCommand> for ClinicServices<S> {
    async fn dispatch(
        &self,
        d: annals::Dispatch<BookingCommand>,
    ) -> Result<(), annals::HandlerError> {
        let reply = {
            let mut applied = self.applied.lock().unwrap_or_else(|p| p.into_inner());
            if applied.iter().any(|(key, _)| *key == d.idempotency_key) {
                return Ok(()); // delivered again: already applied
            }
            applied.push((d.idempotency_key.clone(), d.command.clone()));
            match &d.command {
                BookingCommand::ReserveSlot(r) => Some(BookingEvent::SlotReserved(SlotReserved {
                    lead_id: r.lead_id,
                    slot: format!("Tue 10:{:02}", r.lead_id.as_u128() % 60),
                })),
                BookingCommand::SendConfirmation(m) if m.to == "Bruno" => {
                    Some(BookingEvent::ConfirmationFailed(ConfirmationReport {
                        lead_id: m.lead_id,
                    }))
                }
                BookingCommand::SendConfirmation(m) if m.to == "Carla" => None,
                BookingCommand::SendConfirmation(m) => {
                    Some(BookingEvent::ConfirmationSent(ConfirmationReport {
                        lead_id: m.lead_id,
                    }))
                }
                BookingCommand::ReleaseSlot(_) | BookingCommand::WithdrawConfirmation(_) => None,
            }
        };
        if let Some(event) = reply {
            let lead = match &event {
                BookingEvent::SlotReserved(e) => e.lead_id,
                BookingEvent::ConfirmationSent(e) | BookingEvent::ConfirmationFailed(e) => {
                    e.lead_id
                }
                BookingEvent::AppointmentRequested(e) => e.lead_id,
            };
            self.events
                .append_events(
                    &format!("booking-{lead}"),
                    ExpectedVersion::Any,
                    &[event],
                    &Metadata::new().with_causation_id(d.saga_id),
                )
                .await
                .map_err(annals::HandlerError::dependency)?;
        }
        Ok(())
    }
}

/// The saga tour: three bookings through the projection runner and the
/// saga worker, on the same stores as the rest of the tour.
async fn saga_tour<S, B, St>(events: &S, projections: B, sagas: St, n: u32) -> Result<(), BoxError>
where
    S: annals::WatchLog + Clone + 'static,
    B: annals::ProjectionStore<Conn = St::Tx>,
    St: annals::SagaStore,
{
    use annals::{ProjectionRunner, Saga, SagaProjection, SagaStatus, SagaWorker, StepStatus};
    use std::time::{Duration, Instant};

    section(
        n,
        "A saga: book an appointment, compensate when a step fails",
    );
    say("#[derive(Saga)] on `AppointmentBooking` checked this shape when the example compiled:");
    for line in AppointmentBooking::definition().to_string().lines() {
        say(&format!("  {line}"));
    }
    let services = ClinicServices {
        events: events.clone(),
        applied: Default::default(),
    };
    let runner = ProjectionRunner::new(
        events.clone(),
        projections,
        std::sync::Arc::new(SagaProjection::<AppointmentBooking, _>::new(sagas.clone())),
    )
    .poll_interval(Duration::from_millis(100))
    .spawn();
    let worker = SagaWorker::<AppointmentBooking, _, _>::new(sagas.clone(), services.clone())
        .poll_interval(Duration::from_millis(50))
        .spawn();
    let leads: Vec<(Uuid, &str)> = ["Ana", "Bruno", "Carla"]
        .into_iter()
        .map(|name| (Uuid::now_v7(), name))
        .collect();
    for (lead, name) in &leads {
        events
            .append_events(
                &format!("booking-{lead}"),
                ExpectedVersion::Any,
                &[BookingEvent::AppointmentRequested(AppointmentRequested {
                    lead_id: *lead,
                    name: (*name).to_owned(),
                })],
                &Metadata::new().with_user("front-desk"),
            )
            .await?;
    }
    say("The front desk asked for appointments for Ana, Bruno and Carla. `SagaProjection` (run by the");
    say("`ProjectionRunner`) started a saga per lead; `SagaWorker` delivered the commands to the clinic's services.");
    let started = Instant::now();
    let mut finished = Vec::new();
    while finished.len() < leads.len() {
        if started.elapsed() > Duration::from_secs(30) {
            return Err("the booking sagas did not finish within 30 s".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        finished.clear();
        for (lead, name) in &leads {
            if let Some(saga) = sagas
                .find_by_correlation_id(AppointmentBooking::NAME, &lead.to_string())
                .await?
                .filter(|s| s.status.is_finished())
            {
                finished.push((*name, saga));
            }
        }
    }
    runner.stop().await?;
    worker.stop().await;
    let applied = services
        .applied
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    for (name, saga) in &finished {
        say(&format!(
            "  {name}: {} in state `{}` after {} step(s){}",
            saga.status,
            saga.state,
            saga.completed_steps.len(),
            saga.error_message
                .as_deref()
                .map_or_else(String::new, |e| format!(": {e}"))
        ));
        let prefix = saga.saga_id.to_string();
        for (key, command) in applied.iter().filter(|(k, _)| k.starts_with(&prefix)) {
            let key = key.replacen(&prefix, "{saga}", 1);
            let what = match command {
                BookingCommand::ReserveSlot(_) => "ReserveSlot".to_owned(),
                BookingCommand::ReleaseSlot(r) => {
                    format!("ReleaseSlot {}", r.slot.as_deref().unwrap_or("(none held)"))
                }
                BookingCommand::SendConfirmation(m) | BookingCommand::WithdrawConfirmation(m) => {
                    let verb = match command {
                        BookingCommand::SendConfirmation(_) => "SendConfirmation",
                        _ => "WithdrawConfirmation",
                    };
                    format!(
                        "{verb} to {} for {}",
                        m.to,
                        m.slot.as_deref().unwrap_or("?")
                    )
                }
            };
            say(&format!("      {key:<16} {what}"));
        }
    }
    let statuses: Vec<SagaStatus> = finished.iter().map(|(_, s)| s.status).collect();
    if statuses
        != [
            SagaStatus::Completed,
            SagaStatus::Failed,
            SagaStatus::Failed,
        ]
        || finished[1..].iter().any(|(_, s)| {
            s.completed_steps
                .iter()
                .any(|st| st.status != StepStatus::Compensated)
        })
    {
        return Err("the booking sagas did not end as the clinic's services scripted".into());
    }
    say("Each command carries an idempotency key derived from the saga and the step (`{saga}/{step}/{n}`,");
    say("compensations `{saga}/{step}/undo/{n}`): a service that remembers the keys applies a redelivered command once.");
    why("the saga's state, its commands (an outbox) and the runner's checkpoint commit together; after a crash the worker delivers what was recorded, timeouts fire from stored deadlines, and a failure undoes the steps that were done, newest first.");
    Ok(())
}

// ---------------------------------------------------------------------------
// Postgres
// ---------------------------------------------------------------------------

#[cfg(feature = "postgres")]
async fn on_postgres(url: &str) -> Result<(), BoxError> {
    use annals::postgres::sqlx::postgres::PgPoolOptions;
    use annals::postgres::{migrate, PgEventStore, PgSnapshotStore};

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
    say("`PgSnapshotStore::new(pool)` keeps the aggregate's snapshots in the `annals_snapshots` table.");
    say(&format!(
        "This run's stream and aggregate ids start with `{run}`, so runs never collide."
    ));
    tour(&store, PgSnapshotStore::new(pool.clone()), &run).await?;

    section(10, "Postgres only: the horizon and the start-up guard");
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
    let pool = store.pool().clone();
    saga_tour(
        &store,
        annals::postgres::PgProjectionStore::new(pool.clone()),
        annals::postgres::PgSagaStore::new(pool),
        11,
    )
    .await?;
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
            tour(&store, InMemorySnapshotStore::new(), "").await?;
            saga_tour(
                &store,
                annals::InMemoryProjectionStore::new(),
                annals::InMemorySagaStore::new(),
                10,
            )
            .await?;
            println!();
            println!("The tour ran in memory. To run it on Postgres: `scripts/with-services cargo run --example clinic` (or set DATABASE_URL).");
        }
    }
    Ok(())
}
