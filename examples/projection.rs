//! A projection: a read model fed by the global log through a runner that
//! moves its checkpoint with each batch, retries a failing event, parks it
//! as a dead letter so the others go on, and replays it after a fix.
//!
//! ```text
//! cargo run --example projection
//! ```

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use annals::dead_letter::{DeadLetterQuery, DeadLetterStore};
use annals::prelude::*;
use annals::projection::InMemoryConn;
use annals::RetryPolicy;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, JsonSchema, Debug, PartialEq)]
struct Booked {
    treatment: String,
}

#[derive(Event, Debug, PartialEq)]
enum VisitEvent {
    Booked(Booked),
}

/// Bookings per treatment. Until `fixed`, a treatment it does not know is
/// an error: the poison event of this example.
#[derive(Default)]
struct BookingsPerTreatment {
    counts: Mutex<BTreeMap<String, u64>>,
    fixed: AtomicBool,
}

impl Projection for BookingsPerTreatment {
    type Event = VisitEvent;
    type Conn = InMemoryConn; // on Postgres: `sqlx::PgConnection`, written with the checkpoint
    fn name(&self) -> &str {
        "bookings_per_treatment"
    }

    async fn apply(
        &self,
        _: &mut InMemoryConn,
        e: &Envelope<VisitEvent>,
    ) -> Result<(), HandlerError> {
        let VisitEvent::Booked(booked) = &e.payload;
        if booked.treatment.is_empty() && !self.fixed.load(Ordering::SeqCst) {
            // A bad event, not a dead dependency: retrying will not help.
            return Err(HandlerError::event("a booking without a treatment"));
        }
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        *counts.entry(booked.treatment.clone()).or_default() += 1;
        Ok(())
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let store = InMemoryEventStore::new();
    for (visit, treatment) in [
        ("visit-1", "implant"),
        ("visit-2", ""),
        ("visit-3", "implant"),
    ] {
        let booked = VisitEvent::Booked(Booked {
            treatment: treatment.into(),
        });
        store
            .append_events(
                visit,
                ExpectedVersion::NoStream,
                &[booked],
                &Metadata::new(),
            )
            .await?;
    }

    let projections = InMemoryProjectionStore::new();
    let read_model = Arc::new(BookingsPerTreatment::default());
    let runner = ProjectionRunner::new(store, projections.clone(), read_model.clone())
        .retry(RetryPolicy::new(3).initial_delay(Duration::from_millis(10)));
    let done = runner.catch_up().await?; // or `runner.spawn()` to follow the log live
    println!(
        "read {} events; counts: {:?}",
        done.events_read,
        read_model.counts.lock().unwrap_or_else(|p| p.into_inner())
    );

    for letter in projections
        .list_dead_letters(&DeadLetterQuery::pending(read_model.name()))
        .await?
    {
        println!(
            "parked: {} of `{}`: {}",
            letter.event_type, letter.stream_id, letter.error
        );
    }

    read_model.fixed.store(true, Ordering::SeqCst);
    let replayed = runner.replay_all().await?;
    println!(
        "after the fix, {} dead letter(s) replayed; counts: {:?}",
        replayed.resolved,
        read_model.counts.lock().unwrap_or_else(|p| p.into_inner())
    );
    Ok(())
}
