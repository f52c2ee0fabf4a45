//! An aggregate driven by commands through a repository: the rules as plain
//! functions tested without a store, then run against one with snapshots,
//! a refused command, and a command that needs a service.
//!
//! ```text
//! cargo run --example aggregate
//! ```

use annals::prelude::*;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, JsonSchema, Debug, PartialEq)]
struct Booked {
    patient: String,
    slot: String,
}

#[derive(Serialize, Deserialize, JsonSchema, Debug, PartialEq)]
struct Cancelled {
    reason: String,
}

#[derive(Event, Debug, PartialEq)]
enum AppointmentEvent {
    Booked(Booked),
    Cancelled(Cancelled),
}

/// The state, rebuilt from the events; a snapshot every 50 events.
#[derive(Aggregate, Default, Serialize, Deserialize, JsonSchema, Debug)]
#[aggregate(event = AppointmentEvent, snapshot_every = 50)]
struct Appointment {
    slot: Option<String>,
    cancelled: bool,
}

enum Command {
    /// `slot_free` is what the calendar said: `handle` stays a pure decision,
    /// the caller asks the service first (see `main`).
    Book {
        patient: String,
        slot: String,
        slot_free: bool,
    },
    Cancel {
        reason: String,
    },
}

#[derive(Debug, PartialEq, thiserror::Error)]
enum Refused {
    #[error("the appointment is already booked")]
    AlreadyBooked,
    #[error("slot {0} is taken")]
    SlotTaken(String),
    #[error("only a booked appointment can be cancelled")]
    NotBooked,
}

impl Aggregate for Appointment {
    type Command = Command;
    type Error = Refused;

    fn handle(&self, command: &Command) -> Result<Vec<AppointmentEvent>, Refused> {
        match command {
            Command::Book { .. } if self.slot.is_some() => Err(Refused::AlreadyBooked),
            Command::Book {
                slot,
                slot_free: false,
                ..
            } => Err(Refused::SlotTaken(slot.clone())),
            Command::Book { patient, slot, .. } => Ok(vec![AppointmentEvent::Booked(Booked {
                patient: patient.clone(),
                slot: slot.clone(),
            })]),
            Command::Cancel { .. } if self.slot.is_none() || self.cancelled => {
                Err(Refused::NotBooked)
            }
            Command::Cancel { reason } => Ok(vec![AppointmentEvent::Cancelled(Cancelled {
                reason: reason.clone(),
            })]),
        }
    }

    fn apply(&mut self, event: &AppointmentEvent) {
        match event {
            AppointmentEvent::Booked(e) => self.slot = Some(e.slot.clone()),
            AppointmentEvent::Cancelled(_) => self.cancelled = true,
        }
    }
}

/// A stand-in for the clinic's calendar service.
struct Calendar;

impl Calendar {
    async fn is_free(&self, slot: &str) -> bool {
        !slot.ends_with("12:00") // lunch
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The rules, without a store: given these events, when this command...
    given::<Appointment>([])
        .when(Command::Cancel {
            reason: "ill".into(),
        })
        .then_error(Refused::NotBooked);

    // ...and against one: load, decide, append, retry on a version conflict.
    let appointments = Repository::of::<Appointment>(InMemoryEventStore::new())
        .with_snapshots(InMemorySnapshotStore::new());
    let calendar = Calendar;
    let by_reception = Metadata::new().with_user("reception");

    for (id, slot) in [("a1", "2026-12-08T09:00"), ("a2", "2026-12-08T12:00")] {
        // A command that needs a service: ask first, then let the aggregate
        // decide with the answer in the command.
        let slot_free = calendar.is_free(slot).await;
        let book = Command::Book {
            patient: "ana".into(),
            slot: slot.into(),
            slot_free,
        };
        match appointments.execute(id, &book, &by_reception).await {
            Ok(done) => println!("{id}: booked at version {}", done.version),
            Err(CommandError::Rejected(refused)) => println!("{id}: refused: {refused}"),
            Err(other) => return Err(other.into()),
        }
    }

    let cancel = Command::Cancel {
        reason: "the patient called".into(),
    };
    let done = appointments.execute("a1", &cancel, &by_reception).await?;
    println!("a1: {} -> {:?}", done.events[0].event_type, done.state);

    let loaded = appointments.load("a1").await?;
    println!(
        "a1 loaded at version {} ({} event(s) replayed)",
        loaded.version, loaded.events_replayed
    );
    Ok(())
}
