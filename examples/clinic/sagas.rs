//! Tour section: a saga that books an appointment for a qualified lead,
//! reserves a slot and sends a confirmation, and compensates (withdraws the
//! confirmation, releases the slot) when the confirmation fails or times
//! out.

use annals::personal::Personal;
use annals::{EventStore, EventStoreExt, ExpectedVersion, Metadata};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{say, section, why, BoxError};

/// The front desk asks for an appointment for a qualified lead. The name
/// is the lead's personal data (its subject: the lead id).
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, PartialEq)]
struct AppointmentRequested {
    lead_id: Uuid,
    name: Personal<String>,
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
#[derive(annals::Event, Debug, Clone, PartialEq)]
enum BookingEvent {
    #[event(subject = lead_id)]
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
    to: Personal<String>,
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

/// What the saga knows about one booking. It copies the lead's name, so it
/// says whose personal data it holds (`subject`): forgetting the lead
/// erases the name from the saga and its commands (`SagaEraser`).
#[derive(Serialize, Deserialize, Debug)]
struct Booking {
    lead_id: Uuid,
    name: Personal<String>,
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

    fn subject(&self) -> Option<String> {
        Some(self.lead_id.to_string())
    }
}

impl Default for Booking {
    fn default() -> Self {
        Booking {
            lead_id: Uuid::nil(),
            name: Personal::Known(String::new()),
            slot: None,
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
        d: annals::saga::Dispatch<BookingCommand>,
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
                BookingCommand::SendConfirmation(m) if m.to == "Bruno".into() => {
                    Some(BookingEvent::ConfirmationFailed(ConfirmationReport {
                        lead_id: m.lead_id,
                    }))
                }
                BookingCommand::SendConfirmation(m) if m.to == "Carla".into() => None,
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
pub(crate) async fn tour<S, B, St>(
    events: &S,
    projections: B,
    sagas: St,
    n: u32,
) -> Result<(), BoxError>
where
    S: annals::store::WatchLog + Clone + 'static,
    B: annals::ProjectionStore<Conn = St::Conn>,
    St: annals::SagaStore,
{
    use annals::{
        saga::SagaStatus, saga::StepStatus, ProjectionRunner, Saga, SagaProjection, SagaWorker,
    };
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
                    name: Personal::Known((*name).to_owned()),
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

/// Registers the booking saga with the admin commands: its projection
/// runner on Postgres (the saga's dead letters are replayed through it) and
/// its events (decoded by `admin streams read`).
pub(crate) fn register_admin<S: annals::store::WatchLog + Clone + Send + Sync + 'static>(
    admin: annals::admin::AdminBuilder,
    store: S,
    projections: annals::postgres::PgProjectionStore,
    sagas: annals::postgres::PgSagaStore,
) -> annals::admin::AdminBuilder {
    let runner = annals::ProjectionRunner::new(
        store,
        projections,
        std::sync::Arc::new(annals::SagaProjection::<AppointmentBooking, _>::new(sagas)),
    );
    admin.projection(runner).events::<BookingEvent>()
}
