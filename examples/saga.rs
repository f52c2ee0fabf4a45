//! A saga: reserve a slot, send a confirmation, and undo both (newest step
//! first) when the confirmation fails. The saga's shape is checked when the
//! crate compiles; its state, outbox and timeouts are persisted by a saga
//! store (in memory here, `annals::postgres::PgSagaStore` on Postgres).
//!
//! ```text
//! cargo run --example saga
//! ```

use annals::prelude::*;
use annals::{
    saga::Dispatch, saga::SagaStatus, HandlerError, InMemoryProjectionStore, InMemorySagaStore,
    ProjectionRunner, SagaStore,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};

#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, PartialEq)]
struct Lead {
    lead_id: u64,
}

#[derive(Event, Debug, Clone, PartialEq)]
enum ClinicEvent {
    Qualified(Lead),
    SlotReserved(Lead),
    ConfirmationSent(Lead),
    ConfirmationFailed(Lead),
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
enum ClinicCommand {
    ReserveSlot(u64),
    ReleaseSlot(u64),
    SendConfirmation(u64),
    SendApology(u64),
}

/// What the saga knows.
#[derive(Default, Serialize, Deserialize)]
struct Booking {
    lead_id: u64,
}

impl SagaData for Booking {
    type Event = ClinicEvent;
    fn apply(&mut self, event: &ClinicEvent) {
        if let ClinicEvent::Qualified(e) = event {
            self.lead_id = e.lead_id
        }
    }
}

/// Every command here carries the lead id.
impl Issue<u64> for Booking {
    fn issue(&self) -> u64 {
        self.lead_id
    }
}

/// Reserve a slot, confirm it; release the slot if the confirmation fails
/// or takes longer than a day.
#[derive(Saga, Debug, Clone, Copy, PartialEq, Eq)]
#[saga(event = ClinicEvent, command = ClinicCommand, data = Booking,
       correlation = u64, correlate = lead_id)]
enum BookingSaga {
    #[saga(start = Qualified, issue = ReserveSlot, compensate = ReleaseSlot,
           on(SlotReserved => Confirming), timeout("1h"))]
    Reserving,
    #[saga(issue = SendConfirmation, compensate = SendApology,
           on(ConfirmationSent => Booked, ConfirmationFailed => fail), timeout("1d"))]
    Confirming,
    #[saga(terminal)]
    Booked,
}

/// The application's side: here it records the commands.
#[derive(Clone, Default)]
struct Clinic(Arc<Mutex<Vec<ClinicCommand>>>);

impl CommandBus<ClinicCommand> for Clinic {
    async fn dispatch(&self, d: Dispatch<ClinicCommand>) -> Result<(), HandlerError> {
        // a real bus passes d.idempotency_key on, so its receiver applies d.command once
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(d.command);
        Ok(())
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let events = InMemoryEventStore::new();
    let sagas = InMemorySagaStore::new();
    let clinic = Clinic::default();
    // the event side: a projection, run by the projection runner
    let runner = ProjectionRunner::new(
        events.clone(),
        InMemoryProjectionStore::new(),
        Arc::new(SagaProjection::<BookingSaga, _>::new(sagas.clone())),
    );
    // the command side: delivers the outbox, fires timeouts
    let worker = SagaWorker::<BookingSaga, _, _>::new(sagas.clone(), clinic.clone());

    let meta = Metadata::new();
    events
        .append_events(
            "lead-7",
            ExpectedVersion::Any,
            &[ClinicEvent::Qualified(Lead { lead_id: 7 })],
            &meta,
        )
        .await?;
    runner.catch_up().await?; // the saga starts and records ReserveSlot(7)
    worker.run_once().await?; // ... which is delivered
                              // the clinic's services answer with events
    events
        .append_events(
            "slot-7",
            ExpectedVersion::Any,
            &[ClinicEvent::SlotReserved(Lead { lead_id: 7 })],
            &meta,
        )
        .await?;
    runner.catch_up().await?; // Confirming: SendConfirmation(7) recorded
    worker.run_once().await?; // ... and delivered
    events
        .append_events(
            "mail-7",
            ExpectedVersion::Any,
            &[ClinicEvent::ConfirmationFailed(Lead { lead_id: 7 })],
            &meta,
        )
        .await?;
    runner.catch_up().await?; // the confirmation failed: compensate
    worker.run_once().await?; // SendApology(7), then
    worker.run_once().await?; // ReleaseSlot(7)

    let saga = sagas
        .find_by_correlation_id("booking_saga", "7")
        .await?
        .ok_or("the saga was not found")?;
    assert_eq!(saga.status, SagaStatus::Failed);
    assert_eq!(
        *clinic.0.lock().unwrap_or_else(|p| p.into_inner()),
        [
            ClinicCommand::ReserveSlot(7),
            ClinicCommand::SendConfirmation(7),
            ClinicCommand::SendApology(7), // compensations, newest step first
            ClinicCommand::ReleaseSlot(7),
        ]
    );
    println!(
        "the saga ended {:?}; commands sent: {:?}",
        saga.status,
        clinic.0.lock().unwrap_or_else(|p| p.into_inner())
    );
    Ok(())
}
