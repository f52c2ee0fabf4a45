//! The event store on its own: typed appends with metadata and optimistic
//! concurrency, a stream read back, a stored version 1 event upcast to
//! version 2, and the global log read page by page from a checkpoint.
//!
//! ```text
//! cargo run --example event_store
//! ```

use annals::prelude::*;
use annals::store::LogPosition;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, JsonSchema, Debug, PartialEq)]
struct PatientRegistered {
    name: String,
}

#[derive(Serialize, Deserialize, JsonSchema, Debug, PartialEq)]
struct AllergyRecorded {
    substance: String,
    severity: String,
}

/// Version 1 of `patient.allergy_recorded` had no severity.
#[derive(Serialize, Deserialize, JsonSchema)]
struct AllergyRecordedV1 {
    substance: String,
}

impl From<AllergyRecordedV1> for AllergyRecorded {
    fn from(v1: AllergyRecordedV1) -> Self {
        AllergyRecorded {
            substance: v1.substance,
            severity: "unknown".into(),
        }
    }
}

#[derive(Event, Debug, PartialEq)]
enum PatientEvent {
    Registered(PatientRegistered), // "patient.registered", version 1
    #[event(version = 2, history(1 = AllergyRecordedV1))]
    AllergyRecorded(AllergyRecorded), // "patient.allergy_recorded", version 2
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let store = InMemoryEventStore::new();
    let by_reception = Metadata::new().with_user("reception");

    // A typed append: all or nothing, with the expected version checked.
    let appended = store
        .append_events(
            "patient-ana",
            ExpectedVersion::NoStream,
            &[PatientEvent::Registered(PatientRegistered {
                name: "Ana".into(),
            })],
            &by_reception,
        )
        .await?;
    println!("appended; `patient-ana` is at version {}", appended.version);

    // A second writer that loaded the stream before it existed loses.
    let stale = store
        .append_events(
            "patient-ana",
            ExpectedVersion::NoStream,
            &[PatientEvent::Registered(PatientRegistered {
                name: "Ana".into(),
            })],
            &by_reception,
        )
        .await;
    match stale {
        Err(annals::Error::Conflict(conflict)) => println!("a stale writer is refused: {conflict}"),
        other => panic!("expected a version conflict, got {other:?}"),
    }

    // An event as last year's release wrote it: version 1, raw JSON.
    let v1 = serde_json::value::to_raw_value(&serde_json::json!({ "substance": "penicillin" }))?;
    store
        .append(
            "patient-ana",
            ExpectedVersion::Exact(1),
            vec![annals::NewEvent::new(
                "patient.allergy_recorded",
                1,
                v1,
                by_reception.clone(),
            )],
        )
        .await?;

    // Read back typed: the version 1 payload arrives as today's type.
    for e in store
        .read_stream_as::<PatientEvent>("patient-ana", ..)
        .await?
    {
        println!(
            "v{} {} (stored as schema v{}) by {}: {:?}",
            e.stream_version,
            e.event_type,
            e.schema_version,
            e.metadata.user.as_deref().unwrap_or("-"),
            e.payload
        );
    }

    // The global log, across streams, three events at a time from a
    // checkpoint: what projections build on.
    store
        .append_events(
            "patient-bo",
            ExpectedVersion::NoStream,
            &[PatientEvent::Registered(PatientRegistered {
                name: "Bo".into(),
            })],
            &by_reception,
        )
        .await?;
    let mut checkpoint = LogPosition::START;
    loop {
        let page = store.read_log(checkpoint, 3).await?;
        let Some(last) = page.last() else { break };
        checkpoint = last.log_position;
        for e in &page {
            println!(
                "log position {}: {} {}",
                e.log_position.position, e.stream_id, e.event_type
            );
        }
    }
    Ok(())
}
