//! The engine, the in-memory store, the projection and the worker together.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::*;
use crate::{
    projection::InMemoryConn, Envelope, HandlerError, LogPosition, Metadata, Projection,
    RetryPolicy,
};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
struct TripRef {
    trip_id: u64,
}

#[derive(Debug, Clone, PartialEq, annals_macros::Event)]
#[event(crate = "crate", prefix = "trip")]
enum TripEvent {
    Requested(TripRef),
    FlightBooked(TripRef),
    HotelBooked(TripRef),
    CarBooked(TripRef),
    CarUnavailable(TripRef),
    Note(String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum TripCommand {
    BookFlight(u64),
    CancelFlight(u64),
    BookHotel(u64),
    CancelHotel(u64),
    BookCar(u64),
    CancelCar(u64),
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Trip {
    trip_id: u64,
    folded: u32,
}

impl SagaData for Trip {
    type Event = TripEvent;
    fn apply(&mut self, event: &TripEvent) {
        self.folded += 1;
        if let TripEvent::Requested(r) = event {
            self.trip_id = r.trip_id;
        }
    }
}

impl Issue<u64> for Trip {
    fn issue(&self) -> u64 {
        self.trip_id
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, annals_macros::Saga)]
#[saga(crate = "crate", event = TripEvent, command = TripCommand, data = Trip,
       correlation = u64, correlate = trip_id)]
enum TripBooking {
    #[saga(start = Requested, issue = BookFlight, compensate = CancelFlight,
           on(FlightBooked => BookingHotel), timeout("1h"))]
    BookingFlight,
    #[saga(issue = BookHotel, compensate = CancelHotel, on(HotelBooked => BookingCar))]
    BookingHotel,
    #[saga(issue = BookCar, compensate = CancelCar,
           on(CarBooked => Booked, CarUnavailable => fail), timeout("150ms"))]
    BookingCar,
    #[saga(terminal)]
    Booked,
}

/// Records deliveries; refuses the command types in `failing` (the
/// service answers no) and fails every command while `down` (the service
/// is unreachable); counts the calls.
#[derive(Clone, Default)]
struct Bus {
    delivered: Arc<Mutex<Vec<(String, TripCommand)>>>,
    failing: Arc<Mutex<HashSet<&'static str>>>,
    down: Arc<std::sync::atomic::AtomicBool>,
    calls: Arc<std::sync::atomic::AtomicUsize>,
    /// Hang forever in this call (1-based; 0: never), as a worker that
    /// dies in the middle of a batch would.
    hang_at_call: Arc<std::sync::atomic::AtomicUsize>,
}

impl Bus {
    fn delivered(&self) -> Vec<TripCommand> {
        self.delivered
            .lock()
            .unwrap()
            .iter()
            .map(|(_, c)| c.clone())
            .collect()
    }
}

impl CommandBus<TripCommand> for Bus {
    async fn dispatch(&self, d: Dispatch<TripCommand>) -> Result<(), HandlerError> {
        let call = self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        if call == self.hang_at_call.load(std::sync::atomic::Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        if self.down.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(HandlerError::dependency("the booking service is down"));
        }
        if self
            .failing
            .lock()
            .unwrap()
            .contains(d.command_type.as_str())
        {
            return Err(HandlerError::event(format!(
                "the booking service refused {}",
                d.command_type
            )));
        }
        self.delivered
            .lock()
            .unwrap()
            .push((d.idempotency_key, d.command));
        Ok(())
    }
}

struct Harness {
    store: InMemorySagaStore,
    projection: SagaProjection<TripBooking, InMemorySagaStore>,
    worker: SagaWorker<TripBooking, InMemorySagaStore, Bus>,
    bus: Bus,
    position: u64,
}

impl Harness {
    fn new() -> Self {
        let store = InMemorySagaStore::new();
        let bus = Bus::default();
        Harness {
            projection: SagaProjection::new(store.clone()),
            worker: SagaWorker::new(store.clone(), bus.clone()).retry_policy(
                RetryPolicy::new(3)
                    .initial_delay(Duration::from_millis(1))
                    .jitter(0.0),
            ),
            store,
            bus,
            position: 0,
        }
    }

    fn envelope(&mut self, event: TripEvent) -> Envelope<TripEvent> {
        self.position += 1;
        envelope_in("trip", self.position, event)
    }

    async fn apply(&mut self, event: TripEvent) -> Envelope<TripEvent> {
        let e = self.envelope(event);
        self.projection
            .apply(&mut InMemoryConn::new(), &e)
            .await
            .expect("apply");
        e
    }

    /// Runs worker rounds until one finds nothing to do.
    async fn settle(&self) {
        for _ in 0..100 {
            let round = self.worker.run_once().await.expect("worker round");
            if round.is_idle() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        panic!("the worker never settled");
    }

    async fn saga(&self, trip: u64) -> SagaRecord {
        self.store
            .find_by_correlation_id("trip_booking", &trip.to_string())
            .await
            .unwrap()
            .expect("the saga exists")
    }
}

/// `event` stored in `stream` at log position `position`.
fn envelope_in<E: crate::Event>(stream: &str, position: u64, event: E) -> Envelope<E> {
    Envelope {
        tenant_id: crate::TenantId::default(),
        event_id: Uuid::now_v7(),
        stream_id: stream.to_owned(),
        stream_version: position,
        log_position: LogPosition::new(position, position),
        event_type: event.event_type().to_owned(),
        schema_version: 1,
        metadata: Metadata::new(),
        recorded_at: Utc::now(),
        payload: event,
    }
}

fn r(trip_id: u64) -> TripRef {
    TripRef { trip_id }
}

#[tokio::test]
async fn happy_path_issues_each_step_and_completes() {
    let mut h = Harness::new();
    h.apply(TripEvent::Requested(r(7))).await;
    let saga = h.saga(7).await;
    assert_eq!(saga.state, "BookingFlight");
    assert_eq!(saga.status, SagaStatus::Running);
    assert!(saga.deadline_at.is_some(), "the start state has a timeout");
    let commands = h.store.commands_of(saga.saga_id).await.unwrap();
    assert_eq!(commands.len(), 1);
    assert_eq!(commands[0].idempotency_key, format!("{}/0/0", saga.saga_id));
    assert_eq!(commands[0].command_type, "BookFlight");
    h.settle().await;
    assert_eq!(h.bus.delivered(), vec![TripCommand::BookFlight(7)]);

    h.apply(TripEvent::FlightBooked(r(7))).await;
    let saga = h.saga(7).await;
    assert_eq!(saga.state, "BookingHotel");
    assert_eq!(saga.current_step, 1);
    assert_eq!(saga.deadline_at, None, "BookingHotel has no timeout");
    h.apply(TripEvent::HotelBooked(r(7))).await;
    h.apply(TripEvent::CarBooked(r(7))).await;
    h.settle().await;
    let saga = h.saga(7).await;
    assert_eq!(saga.status, SagaStatus::Completed);
    assert_eq!(saga.state, "Booked");
    assert!(saga.completed_at.is_some());
    assert_eq!(saga.deadline_at, None);
    assert_eq!(
        h.bus.delivered(),
        vec![
            TripCommand::BookFlight(7),
            TripCommand::BookHotel(7),
            TripCommand::BookCar(7)
        ]
    );
    let data: Trip = serde_json::from_value(saga.data).unwrap();
    assert_eq!(data.folded, 4, "the start and the three moves were folded");
    assert_eq!(
        saga.completed_steps
            .iter()
            .map(|s| (s.step, s.state.as_str(), s.status))
            .collect::<Vec<_>>(),
        vec![
            (0, "BookingFlight", StepStatus::Done),
            (1, "BookingHotel", StepStatus::Done),
            (2, "BookingCar", StepStatus::Done)
        ]
    );
    assert!(h
        .store
        .list_unfinished(None, None, 10)
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn a_failing_step_compensates_in_reverse_order_one_step_at_a_time() {
    let mut h = Harness::new();
    for e in [
        TripEvent::Requested(r(1)),
        TripEvent::FlightBooked(r(1)),
        TripEvent::HotelBooked(r(1)),
    ] {
        h.apply(e).await;
    }
    h.settle().await;
    h.apply(TripEvent::CarUnavailable(r(1))).await;
    let saga = h.saga(1).await;
    assert_eq!(saga.status, SagaStatus::Compensating);
    assert!(saga
        .error_message
        .as_deref()
        .unwrap()
        .contains("trip.car_unavailable"));
    // only the newest step's compensation is queued until it is delivered
    let queued: Vec<String> = h
        .store
        .commands_of(saga.saga_id)
        .await
        .unwrap()
        .into_iter()
        .filter(|c| c.compensation)
        .map(|c| c.command_type)
        .collect();
    assert_eq!(queued, vec!["CancelCar"]);
    h.settle().await;
    assert_eq!(
        h.bus.delivered()[3..],
        [
            TripCommand::CancelCar(1),
            TripCommand::CancelHotel(1),
            TripCommand::CancelFlight(1)
        ]
    );
    let saga = h.saga(1).await;
    assert_eq!(saga.status, SagaStatus::Failed);
    assert!(saga.completed_at.is_some());
    assert!(saga
        .completed_steps
        .iter()
        .all(|s| s.status == StepStatus::Compensated));
    let keys: Vec<String> = h
        .store
        .commands_of(saga.saga_id)
        .await
        .unwrap()
        .into_iter()
        .filter(|c| c.compensation)
        .map(|c| c.idempotency_key)
        .collect();
    let id = saga.saga_id;
    assert_eq!(
        keys,
        vec![
            format!("{id}/2/undo/0"),
            format!("{id}/1/undo/0"),
            format!("{id}/0/undo/0")
        ]
    );
    // events after the end change nothing
    h.apply(TripEvent::CarBooked(r(1))).await;
    assert_eq!(h.saga(1).await.version, saga.version);
}

#[tokio::test]
async fn an_event_delivered_twice_moves_the_saga_once() {
    let mut h = Harness::new();
    h.apply(TripEvent::Requested(r(3))).await;
    let booked = h.apply(TripEvent::FlightBooked(r(3))).await;
    let after_once = h.saga(3).await;
    h.projection
        .apply(&mut InMemoryConn::new(), &booked)
        .await
        .unwrap();
    let after_twice = h.saga(3).await;
    assert_eq!(after_once, after_twice);
    // the start event again does not start a second saga or move this one
    let again = h.envelope(TripEvent::Requested(r(3)));
    h.projection
        .apply(&mut InMemoryConn::new(), &again)
        .await
        .unwrap();
    assert_eq!(h.saga(3).await, after_twice);
    assert_eq!(
        h.store.commands_of(after_once.saga_id).await.unwrap().len(),
        2
    );
}

#[tokio::test]
async fn events_without_a_saga_or_outside_the_machine_are_ignored() {
    let mut h = Harness::new();
    h.apply(TripEvent::FlightBooked(r(9))).await; // no saga, not a start event
    h.apply(TripEvent::Note("hello".into())).await; // not handled at all
    assert!(h
        .store
        .find_by_correlation_id("trip_booking", "9")
        .await
        .unwrap()
        .is_none());
    h.apply(TripEvent::Requested(r(9))).await;
    let before = h.saga(9).await;
    h.apply(TripEvent::CarBooked(r(9))).await; // not handled in BookingFlight
    assert_eq!(h.saga(9).await, before);
}

#[tokio::test]
async fn a_timeout_compensates_from_its_persisted_deadline() {
    let mut h = Harness::new();
    for e in [
        TripEvent::Requested(r(4)),
        TripEvent::FlightBooked(r(4)),
        TripEvent::HotelBooked(r(4)),
    ] {
        h.apply(e).await;
    }
    h.settle().await;
    assert_eq!(h.worker.fire_timeouts().await.unwrap(), 0, "not due yet");
    tokio::time::sleep(Duration::from_millis(200)).await;
    // a new worker (a restarted process) fires it: the deadline is stored
    let worker = SagaWorker::<TripBooking, _, _>::new(h.store.clone(), h.bus.clone());
    assert_eq!(worker.fire_timeouts().await.unwrap(), 1);
    let saga = h.saga(4).await;
    assert_eq!(saga.status, SagaStatus::Compensating);
    assert!(saga
        .error_message
        .as_deref()
        .unwrap()
        .contains("timed out in state `BookingCar`"));
    h.settle().await;
    assert_eq!(
        h.bus.delivered()[3..],
        [
            TripCommand::CancelCar(4),
            TripCommand::CancelHotel(4),
            TripCommand::CancelFlight(4)
        ]
    );
    assert_eq!(h.saga(4).await.status, SagaStatus::Failed);
}

#[tokio::test]
async fn a_command_that_keeps_failing_is_retried_then_the_saga_compensates() {
    let mut h = Harness::new();
    h.bus.failing.lock().unwrap().insert("BookHotel");
    h.apply(TripEvent::Requested(r(5))).await;
    h.apply(TripEvent::FlightBooked(r(5))).await;
    h.settle().await;
    let saga = h.saga(5).await;
    assert_eq!(saga.status, SagaStatus::Failed);
    assert_eq!(saga.retry_count, 2, "3 attempts: 2 retries");
    let message = saga.error_message.unwrap();
    assert!(
        message.contains("command `BookHotel` of step 1 failed after 3 attempt(s)"),
        "{message}"
    );
    // the hotel step never went through: only the flight is compensated
    assert_eq!(
        h.bus.delivered(),
        vec![TripCommand::BookFlight(5), TripCommand::CancelFlight(5)]
    );
    assert_eq!(
        saga.completed_steps
            .iter()
            .map(|s| s.status)
            .collect::<Vec<_>>(),
        vec![StepStatus::Compensated, StepStatus::Failed]
    );
    let hotel = h
        .store
        .commands_of(saga.saga_id)
        .await
        .unwrap()
        .into_iter()
        .find(|c| c.command_type == "BookHotel")
        .unwrap();
    assert_eq!(hotel.attempts, 3);
    assert!(hotel.failed_at.is_some() && hotel.dispatched_at.is_none());
}

#[tokio::test]
async fn a_failing_compensation_is_recorded_and_the_others_still_run() {
    let mut h = Harness::new();
    h.bus.failing.lock().unwrap().insert("CancelHotel");
    // each step's command is delivered before the next event
    for e in [
        TripEvent::Requested(r(6)),
        TripEvent::FlightBooked(r(6)),
        TripEvent::HotelBooked(r(6)),
        TripEvent::CarUnavailable(r(6)),
    ] {
        h.apply(e).await;
        h.settle().await;
    }
    let saga = h.saga(6).await;
    assert_eq!(saga.status, SagaStatus::Failed);
    assert_eq!(
        h.bus
            .delivered()
            .into_iter()
            .filter(|c| matches!(c, TripCommand::CancelCar(_) | TripCommand::CancelFlight(_)))
            .collect::<Vec<_>>(),
        vec![TripCommand::CancelCar(6), TripCommand::CancelFlight(6)]
    );
    assert_eq!(
        saga.completed_steps
            .iter()
            .map(|s| s.status)
            .collect::<Vec<_>>(),
        vec![
            StepStatus::Compensated,
            StepStatus::CompensationFailed,
            StepStatus::Compensated
        ]
    );
    assert!(saga
        .error_message
        .unwrap()
        .contains("compensating command `CancelHotel` of step 1 failed"));
}

#[tokio::test]
async fn compensation_cancels_commands_never_attempted_and_does_not_undo_them() {
    let mut h = Harness::new();
    // nothing is delivered before the car turns out unavailable
    for e in [
        TripEvent::Requested(r(8)),
        TripEvent::FlightBooked(r(8)),
        TripEvent::HotelBooked(r(8)),
        TripEvent::CarUnavailable(r(8)),
    ] {
        h.apply(e).await;
    }
    let saga = h.saga(8).await;
    let commands = h.store.commands_of(saga.saga_id).await.unwrap();
    for c in commands.iter().filter(|c| !c.compensation) {
        assert!(c.failed_at.is_some(), "{} was cancelled", c.command_type);
        assert!(c.last_error.as_deref().unwrap().starts_with("cancelled"));
    }
    assert!(
        commands.iter().all(|c| !c.compensation),
        "no step did anything, so none is undone: {commands:?}"
    );
    h.settle().await;
    assert_eq!(h.bus.delivered(), []);
    let saga = h.saga(8).await;
    assert_eq!(saga.status, SagaStatus::Failed);
    assert!(
        saga.completed_steps
            .iter()
            .all(|s| s.status == StepStatus::Failed),
        "{:?}",
        saga.completed_steps
    );
}

#[tokio::test]
async fn only_steps_whose_commands_were_attempted_are_compensated() {
    let mut h = Harness::new();
    h.apply(TripEvent::Requested(r(9))).await;
    h.settle().await; // BookFlight is delivered
                      // BookHotel and BookCar are recorded but never attempted
    for e in [
        TripEvent::FlightBooked(r(9)),
        TripEvent::HotelBooked(r(9)),
        TripEvent::CarUnavailable(r(9)),
    ] {
        h.apply(e).await;
    }
    h.settle().await;
    assert_eq!(
        h.bus.delivered(),
        [TripCommand::BookFlight(9), TripCommand::CancelFlight(9)]
    );
    let saga = h.saga(9).await;
    assert_eq!(saga.status, SagaStatus::Failed);
    let steps: Vec<(&str, StepStatus)> = saga
        .completed_steps
        .iter()
        .map(|s| (s.state.as_str(), s.status))
        .collect();
    assert_eq!(
        steps,
        [
            ("BookingFlight", StepStatus::Compensated),
            ("BookingHotel", StepStatus::Failed),
            ("BookingCar", StepStatus::Failed)
        ]
    );
}

#[tokio::test]
async fn a_worker_that_dies_mid_batch_delivers_again_only_the_command_in_flight() {
    let mut h = Harness::new();
    for trip in 1..=5 {
        h.apply(TripEvent::Requested(r(trip))).await;
    }
    // the third delivery of the batch never returns: the worker dies there
    h.bus
        .hang_at_call
        .store(3, std::sync::atomic::Ordering::SeqCst);
    let dying = SagaWorker::<TripBooking, _, _>::new(h.store.clone(), h.bus.clone())
        .lease(Duration::from_millis(50));
    let task = tokio::spawn(async move { dying.dispatch().await });
    while h.bus.calls.load(std::sync::atomic::Ordering::SeqCst) < 3 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    task.abort();
    let _ = task.await;
    let mut marked = 0;
    for trip in 1..=5 {
        let saga = h.saga(trip).await;
        let commands = h.store.commands_of(saga.saga_id).await.unwrap();
        marked += commands
            .iter()
            .filter(|c| c.dispatched_at.is_some())
            .count();
    }
    assert_eq!(marked, 2, "each delivery is marked as it succeeds");
    // after the lease, another worker delivers the rest
    tokio::time::sleep(Duration::from_millis(60)).await;
    h.settle().await;
    let mut delivered = h.bus.delivered();
    delivered.sort_by_key(|c| format!("{c:?}"));
    assert_eq!(
        delivered,
        (1..=5).map(TripCommand::BookFlight).collect::<Vec<_>>(),
        "the two delivered before the crash are not delivered again"
    );
}

#[tokio::test]
async fn a_compensation_waits_for_the_command_it_undoes() {
    let mut h = Harness::new();
    h.bus.failing.lock().unwrap().insert("BookCar");
    for e in [
        TripEvent::Requested(r(10)),
        TripEvent::FlightBooked(r(10)),
        TripEvent::HotelBooked(r(10)),
    ] {
        h.apply(e).await;
    }
    // BookCar fails once and waits a minute for its retry ...
    let worker = SagaWorker::<TripBooking, _, _>::new(h.store.clone(), h.bus.clone())
        .retry_policy(RetryPolicy::new(5).initial_delay(Duration::from_secs(60)));
    worker.run_once().await.unwrap();
    // ... when the car turns out unavailable
    h.apply(TripEvent::CarUnavailable(r(10))).await;
    let saga = h.saga(10).await;
    assert_eq!(saga.status, SagaStatus::Compensating);
    let car = h
        .store
        .commands_of(saga.saga_id)
        .await
        .unwrap()
        .into_iter()
        .find(|c| c.command_type == "BookCar")
        .unwrap();
    assert!(
        car.failed_at.is_none(),
        "an attempted command runs its course"
    );
    // CancelCar is queued, but not handed out while BookCar is unresolved
    let claimed = h
        .store
        .claim_commands("trip_booking", 10, Duration::from_secs(30))
        .await
        .unwrap();
    assert!(claimed.is_empty(), "{claimed:?}");
    // BookCar is given up: now the compensations go, newest first
    h.store
        .record_outcome(
            &car,
            CommandOutcome::Abandoned {
                error: "gave up".into(),
            },
            |saga, progress| {
                SagaEngine::<TripBooking>::on_outcome(
                    saga,
                    &car,
                    &CommandOutcome::Abandoned {
                        error: "gave up".into(),
                    },
                    &progress,
                )?
                .map(|d| d.finish(&progress.attempted_steps))
                .transpose()
            },
        )
        .await
        .unwrap();
    h.bus.failing.lock().unwrap().clear();
    h.settle().await;
    assert_eq!(
        h.bus.delivered()[2..],
        [
            TripCommand::CancelCar(10),
            TripCommand::CancelHotel(10),
            TripCommand::CancelFlight(10)
        ]
    );
    assert_eq!(h.saga(10).await.status, SagaStatus::Failed);
}

#[tokio::test]
async fn a_service_that_is_down_opens_the_breaker_and_pauses_the_sagas() {
    use std::sync::atomic::Ordering;
    let mut h = Harness::new();
    let breakers = crate::breaker::CircuitBreakerRegistry::new();
    let name = SagaWorker::<TripBooking, InMemorySagaStore, Bus>::breaker_name();
    assert_eq!(name, "saga:trip_booking");
    breakers.configure(
        &name,
        crate::breaker::BreakerConfig::default()
            .failure_threshold(3)
            .cool_down(Duration::from_millis(300)),
    );
    // retries as fast and as few as they come: without the breaker, an
    // outage would give BookFlight up after 3 attempts and fail the sagas
    let worker = SagaWorker::<TripBooking, _, _>::new(h.store.clone(), h.bus.clone())
        .retry_policy(
            RetryPolicy::new(3)
                .initial_delay(Duration::from_millis(1))
                .jitter(0.0),
        )
        .breakers(breakers.clone());
    h.bus.down.store(true, Ordering::SeqCst);
    for trip in 20..25 {
        h.apply(TripEvent::Requested(r(trip))).await;
    }
    // rounds until the breaker opens: 3 failed calls
    for _ in 0..10 {
        worker.run_once().await.unwrap();
        if worker.breaker().state() == crate::breaker::BreakerState::Open {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(worker.breaker().state(), crate::breaker::BreakerState::Open);
    let calls = h.bus.calls.load(Ordering::SeqCst);
    assert_eq!(calls, 3, "the breaker opens at its threshold");
    // while it is open: no calls, nothing claimed, nothing given up
    for _ in 0..20 {
        let round = worker.run_once().await.unwrap();
        assert_eq!(round.delivered + round.failed, 0, "{round:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(h.bus.calls.load(Ordering::SeqCst), calls);
    for trip in 20..25 {
        assert_eq!(h.saga(trip).await.status, SagaStatus::Running);
    }
    // after the cool-down, one trial; it fails, the breaker opens again
    tokio::time::sleep(Duration::from_millis(320)).await;
    assert_eq!(
        worker.breaker().state(),
        crate::breaker::BreakerState::HalfOpen
    );
    let round = worker.run_once().await.unwrap();
    assert_eq!(round.failed, 1, "one trial: {round:?}");
    assert_eq!(h.bus.calls.load(Ordering::SeqCst), calls + 1);
    assert_eq!(worker.breaker().state(), crate::breaker::BreakerState::Open);
    // the service comes back: the next trial closes the breaker and every
    // saga goes on, none compensated, though BookFlight had "used up" its
    // attempts on the outage
    h.bus.down.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(320)).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while h.bus.delivered().len() < 5 {
        assert!(
            std::time::Instant::now() < deadline,
            "the sagas never resumed"
        );
        worker.run_once().await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        worker.breaker().state(),
        crate::breaker::BreakerState::Closed
    );
    let mut delivered: Vec<String> = h.bus.delivered().iter().map(|c| format!("{c:?}")).collect();
    delivered.sort();
    let expected: Vec<String> = (20..25).map(|t| format!("BookFlight({t})")).collect();
    assert_eq!(delivered, expected, "each once, in any order across sagas");
    for trip in 20..25 {
        let saga = h.saga(trip).await;
        assert_eq!(saga.status, SagaStatus::Running, "{saga:?}");
        assert!(saga
            .completed_steps
            .iter()
            .all(|s| s.status != StepStatus::Failed));
    }
}

#[tokio::test]
async fn two_workers_never_deliver_one_command_at_once() {
    let mut h = Harness::new();
    for i in 0..50 {
        h.apply(TripEvent::Requested(r(100 + i))).await;
    }
    let a = SagaWorker::<TripBooking, _, _>::new(h.store.clone(), h.bus.clone()).batch_size(7);
    let b = SagaWorker::<TripBooking, _, _>::new(h.store.clone(), h.bus.clone()).batch_size(5);
    let (ra, rb) = tokio::join!(
        async {
            let mut n = 0;
            loop {
                let round = a.dispatch().await.unwrap();
                if round.is_idle() {
                    return n;
                }
                n += round.delivered;
            }
        },
        async {
            let mut n = 0;
            loop {
                let round = b.dispatch().await.unwrap();
                if round.is_idle() {
                    return n;
                }
                n += round.delivered;
            }
        }
    );
    assert_eq!(ra + rb, 50);
    let keys: HashSet<String> = h
        .bus
        .delivered
        .lock()
        .unwrap()
        .iter()
        .map(|(k, _)| k.clone())
        .collect();
    assert_eq!(keys.len(), 50);
    assert_eq!(h.store.pending_commands("trip_booking").await.unwrap(), 0);
}

#[tokio::test]
async fn an_expired_lease_is_claimed_again() {
    let mut h = Harness::new();
    h.apply(TripEvent::Requested(r(11))).await;
    let claimed = h
        .store
        .claim_commands("trip_booking", 10, Duration::from_millis(30))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    // the claimer died: nothing is claimable until the lease runs out
    let none = h
        .store
        .claim_commands("trip_booking", 10, Duration::from_secs(30))
        .await
        .unwrap();
    assert!(none.is_empty());
    tokio::time::sleep(Duration::from_millis(50)).await;
    let again = h
        .store
        .claim_commands("trip_booking", 10, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].attempts, 2);
    assert_eq!(again[0].idempotency_key, claimed[0].idempotency_key);
}

#[tokio::test]
async fn a_stale_version_is_a_conflict() {
    let mut h = Harness::new();
    h.apply(TripEvent::Requested(r(12))).await;
    let saga = h.saga(12).await;
    let e = h.envelope(TripEvent::FlightBooked(r(12)));
    let change = engine::on_event::<TripBooking>(Some(saga.clone()), "12".into(), &e)
        .unwrap()
        .unwrap()
        .finish(&[])
        .unwrap();
    h.store
        .save(&mut InMemoryConn::new(), &change)
        .await
        .unwrap();
    let err = h
        .store
        .save(&mut InMemoryConn::new(), &change)
        .await
        .unwrap_err();
    assert!(matches!(err, SagaError::Conflict { expected, .. } if expected == saga.version));
    let mut dup = change.clone();
    dup.insert = true;
    dup.record.saga_id = Uuid::now_v7();
    let err = h
        .store
        .save(&mut InMemoryConn::new(), &dup)
        .await
        .unwrap_err();
    assert!(matches!(err, SagaError::AlreadyExists { .. }), "{err}");
}

#[test]
fn the_definition_describes_the_shape() {
    let d = TripBooking::definition();
    assert_eq!(d.name, "trip_booking");
    assert_eq!(d.states.len(), 4);
    assert_eq!(d.states[0].start_on, Some("Requested"));
    assert_eq!(
        d.states[2].transitions,
        &[
            ("CarBooked", Target::State("Booked")),
            ("CarUnavailable", Target::Fail)
        ]
    );
    assert_eq!(
        d.states[2].timeout,
        Some((Duration::from_millis(150), Target::Fail))
    );
    let text = d.to_string();
    assert!(
        text.starts_with("BookingFlight (started by Requested): issues BookFlight, compensated by CancelFlight; FlightBooked -> BookingHotel; after 3600s -> fail (compensate)"),
        "{text}"
    );
    assert!(text.ends_with("Booked: terminal"), "{text}");
    assert_eq!(
        TripBooking::from_state_name("BookingCar"),
        Some(TripBooking::BookingCar)
    );
    assert_eq!(TripBooking::from_state_name("Nope"), None);
    assert_eq!(
        TripBooking::correlation_id(&envelope_in("trip", 1, TripEvent::CarBooked(r(3)))),
        Some("3".to_owned())
    );
    assert_eq!(
        TripBooking::correlation_id(&envelope_in("trip", 1, TripEvent::Note("x".into()))),
        None
    );
}

#[test]
fn unknown_stored_state_is_a_typed_error() {
    let record = SagaRecord {
        saga_id: Uuid::now_v7(),
        saga_type: "trip_booking".into(),
        correlation_id: "1".into(),
        state: "Renamed".into(),
        data: serde_json::json!({"trip_id": 1, "folded": 1}),
        status: SagaStatus::Running,
        current_step: 0,
        completed_steps: vec![],
        version: 1,
        deadline_at: None,
        started_at: Utc::now(),
        updated_at: Utc::now(),
        completed_at: None,
        error_message: None,
        retry_count: 0,
        last_event: LogPosition::START,
        subject: None,
    };
    let err = engine::on_timeout::<TripBooking>(record).unwrap_err();
    assert!(err.to_string().contains("state `Renamed`"), "{err}");
}

/// What a saga's outcome looks like, without ids, versions and times.
fn shape(saga: &SagaRecord, commands: &[OutboxEntry]) -> String {
    let steps: Vec<String> = saga
        .completed_steps
        .iter()
        .map(|s| format!("{}:{}:{:?}", s.step, s.state, s.status))
        .collect();
    // commands that will be delivered: one by one, a command a later event
    // of the batch cancels is recorded then cancelled; a batch never records
    // it; either way it is never delivered
    let commands: Vec<String> = commands
        .iter()
        .filter(|c| c.failed_at.is_none())
        .map(|c| {
            let key = c.idempotency_key.replacen(&saga.saga_id.to_string(), "", 1);
            format!("{key} {}", c.command_type)
        })
        .collect();
    format!(
        "{} {} step {} last {:?} deadline {} steps {steps:?} commands {commands:?} data {}",
        saga.status,
        saga.state,
        saga.current_step,
        saga.last_event,
        saga.deadline_at.is_some(),
        saga.data
    )
}

#[tokio::test]
async fn a_batch_moves_sagas_as_its_events_one_by_one_would() {
    let mut h = Harness::new();
    let events: Vec<Envelope<TripEvent>> = [
        TripEvent::Requested(r(1)),
        TripEvent::Requested(r(2)),
        TripEvent::FlightBooked(r(1)),
        TripEvent::Note("not handled".into()),
        TripEvent::Requested(r(3)),
        TripEvent::FlightBooked(r(2)),
        TripEvent::HotelBooked(r(1)),
        TripEvent::CarBooked(r(1)), // saga 1 completes inside the batch
        TripEvent::HotelBooked(r(2)),
        TripEvent::CarUnavailable(r(2)), // saga 2 fails inside the batch
        TripEvent::CarBooked(r(3)),      // not handled in saga 3's state
        TripEvent::FlightBooked(r(9)),   // no saga 9
    ]
    .into_iter()
    .map(|e| h.envelope(e))
    .collect();
    let one_by_one = InMemorySagaStore::new();
    let projection = SagaProjection::<TripBooking, _>::new(one_by_one.clone());
    for e in &events {
        projection.apply(&mut InMemoryConn::new(), e).await.unwrap();
    }
    h.projection
        .apply_batch(&mut InMemoryConn::new(), &events)
        .await
        .unwrap();
    // a second delivery of the whole batch changes nothing
    h.projection
        .apply_batch(&mut InMemoryConn::new(), &events)
        .await
        .unwrap();
    for trip in [1u64, 2, 3] {
        let a = one_by_one
            .find_by_correlation_id("trip_booking", &trip.to_string())
            .await
            .unwrap()
            .unwrap();
        let b = h.saga(trip).await;
        assert_eq!(
            shape(&a, &one_by_one.commands_of(a.saga_id).await.unwrap()),
            shape(&b, &h.store.commands_of(b.saga_id).await.unwrap()),
            "trip {trip}"
        );
    }
    assert_eq!(h.saga(1).await.status, SagaStatus::Completed);
    // none of saga 2's commands was ever attempted: nothing to undo
    let failed = h.saga(2).await;
    assert_eq!(failed.status, SagaStatus::Failed);
    assert!(h
        .store
        .find_by_correlation_id("trip_booking", "9")
        .await
        .unwrap()
        .is_none());
}

// --- a saga correlated by its aggregate, with a fire-and-forget step --------

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
struct Placed {
    total: u32,
}

/// From the warehouse's own stream: names the order in its payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
struct Parcel {
    order: String,
}

#[derive(Debug, Clone, PartialEq, annals_macros::Event)]
#[event(crate = "crate", prefix = "order")]
enum OrderEvent {
    Placed(Placed),
    Paid(Placed),
    Shipped(Parcel),
    Lost(Parcel),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum OrderCommand {
    TakePayment(String),
    RefundPayment(String),
    SendReceipt(String),
}

/// Knows its order id from the envelope: the events of the order's own
/// stream do not carry it.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Order {
    order_id: String,
}

impl SagaData for Order {
    type Event = OrderEvent;
    fn apply(&mut self, _: &OrderEvent) {}
    fn apply_envelope(&mut self, event: &Envelope<OrderEvent>) {
        if let OrderEvent::Placed(_) = event.payload {
            self.order_id = event.aggregate_id().to_owned();
        }
    }
}

impl Issue<String> for Order {
    fn issue(&self) -> String {
        self.order_id.clone()
    }
}

/// The order's own events correlate by the stream they are in
/// (`order-42` → saga `42`); the warehouse's events name the order in
/// their payload. The receipt is fire-and-forget: nothing undoes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, annals_macros::Saga)]
#[saga(crate = "crate", event = OrderEvent, command = OrderCommand, data = Order,
       correlation = String, correlate = envelope.aggregate_id,
       correlate(Shipped = order, Lost = order))]
enum Fulfilment {
    #[saga(start = Placed, issue = TakePayment, compensate = RefundPayment, on(Paid => Shipping))]
    Paying,
    #[saga(issue = SendReceipt, compensate = none, on(Shipped => Done, Lost => fail))]
    Shipping,
    #[saga(terminal)]
    Done,
}

struct OrderHarness {
    store: InMemorySagaStore,
    projection: SagaProjection<Fulfilment, InMemorySagaStore>,
    worker: SagaWorker<Fulfilment, InMemorySagaStore, OrderBus>,
    bus: OrderBus,
    position: u64,
}

#[derive(Clone, Default)]
struct OrderBus(Arc<Mutex<Vec<OrderCommand>>>);

impl CommandBus<OrderCommand> for OrderBus {
    async fn dispatch(&self, d: Dispatch<OrderCommand>) -> Result<(), HandlerError> {
        self.0.lock().unwrap().push(d.command);
        Ok(())
    }
}

impl OrderHarness {
    fn new() -> Self {
        let store = InMemorySagaStore::new();
        let bus = OrderBus::default();
        OrderHarness {
            projection: SagaProjection::new(store.clone()),
            worker: SagaWorker::new(store.clone(), bus.clone()),
            store,
            bus,
            position: 0,
        }
    }

    async fn apply(&mut self, stream: &str, event: OrderEvent) {
        self.position += 1;
        let e = envelope_in(stream, self.position, event);
        self.projection
            .apply(&mut InMemoryConn::new(), &e)
            .await
            .expect("apply");
    }

    async fn settle(&self) {
        for _ in 0..100 {
            if self
                .worker
                .run_once()
                .await
                .expect("worker round")
                .is_idle()
            {
                return;
            }
        }
        panic!("the worker never settled");
    }

    async fn saga(&self, order: &str) -> SagaRecord {
        self.store
            .find_by_correlation_id("fulfilment", order)
            .await
            .unwrap()
            .expect("the saga exists")
    }

    fn delivered(&self) -> Vec<OrderCommand> {
        self.bus.0.lock().unwrap().clone()
    }
}

#[test]
fn correlation_reads_the_envelope_or_the_payload() {
    let placed = envelope_in("order-42", 1, OrderEvent::Placed(Placed { total: 5 }));
    assert_eq!(Fulfilment::correlation_id(&placed), Some("42".to_owned()));
    // an aggregate id is everything after the type's `-`
    let placed = envelope_in("order-a-1", 1, OrderEvent::Paid(Placed { total: 5 }));
    assert_eq!(Fulfilment::correlation_id(&placed), Some("a-1".to_owned()));
    // the warehouse's stream says nothing; its payload names the order
    let shipped = envelope_in(
        "warehouse-7",
        1,
        OrderEvent::Shipped(Parcel { order: "42".into() }),
    );
    assert_eq!(Fulfilment::correlation_id(&shipped), Some("42".to_owned()));
    let d = Fulfilment::definition();
    assert_eq!(d.states[1].issues, ["SendReceipt"]);
    assert!(d.states[1].compensates.is_empty());
    assert!(
        d.to_string()
            .contains("Shipping: issues SendReceipt, not compensated"),
        "{d}"
    );
}

#[tokio::test]
async fn a_saga_correlated_by_aggregate_id_completes() {
    let mut h = OrderHarness::new();
    h.apply("order-42", OrderEvent::Placed(Placed { total: 5 }))
        .await;
    h.apply("order-42", OrderEvent::Paid(Placed { total: 5 }))
        .await;
    h.apply(
        "warehouse-7",
        OrderEvent::Shipped(Parcel { order: "42".into() }),
    )
    .await;
    h.settle().await;
    let saga = h.saga("42").await;
    assert_eq!(saga.status, SagaStatus::Completed);
    assert_eq!(saga.state, "Done");
    assert_eq!(
        h.delivered(),
        [
            OrderCommand::TakePayment("42".into()),
            OrderCommand::SendReceipt("42".into())
        ]
    );
}

#[tokio::test]
async fn a_step_with_compensate_none_is_skipped_when_compensating() {
    let mut h = OrderHarness::new();
    h.apply("order-42", OrderEvent::Placed(Placed { total: 5 }))
        .await;
    h.apply("order-42", OrderEvent::Paid(Placed { total: 5 }))
        .await;
    h.settle().await;
    h.apply(
        "warehouse-7",
        OrderEvent::Lost(Parcel { order: "42".into() }),
    )
    .await;
    h.settle().await;
    let saga = h.saga("42").await;
    assert_eq!(saga.status, SagaStatus::Failed);
    // the receipt is not undone; the payment is refunded
    assert_eq!(
        h.delivered(),
        [
            OrderCommand::TakePayment("42".into()),
            OrderCommand::SendReceipt("42".into()),
            OrderCommand::RefundPayment("42".into())
        ]
    );
    assert_eq!(
        saga.completed_steps
            .iter()
            .map(|s| (s.state.as_str(), s.status))
            .collect::<Vec<_>>(),
        [
            ("Paying", StepStatus::Compensated),
            ("Shipping", StepStatus::Compensated)
        ]
    );
}

// --- correlation by metadata and by a function ------------------------------

#[derive(Debug, Default, Serialize, Deserialize)]
struct Nothing;

impl SagaData for Nothing {
    type Event = OrderEvent;
    fn apply(&mut self, _: &OrderEvent) {}
}

/// The saga of a business operation: every event recorded with the same
/// metadata correlation id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, annals_macros::Saga)]
#[saga(crate = "crate", event = OrderEvent, command = OrderCommand, data = Nothing,
       correlate = envelope.correlation_id)]
enum Operation {
    #[saga(start = Placed, on(Paid => Done))]
    Open,
    #[saga(terminal)]
    Done,
}

/// The order's total, in cents, names the saga (a function can read
/// anything in the envelope).
fn by_total(event: &Envelope<OrderEvent>) -> Option<u64> {
    match &event.payload {
        OrderEvent::Placed(p) | OrderEvent::Paid(p) => Some(u64::from(p.total) * 100),
        _ => None,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, annals_macros::Saga)]
#[saga(crate = "crate", event = OrderEvent, command = OrderCommand, data = Nothing,
       correlation = u64, correlate = with(by_total), correlate(Shipped = envelope.stream_id))]
enum ByTotal {
    #[saga(start = Placed, on(Paid => Shipping))]
    Open,
    #[saga(on(Shipped => Done))]
    Shipping,
    #[saga(terminal)]
    Done,
}

#[test]
fn correlation_by_metadata_and_by_function() {
    let id = Uuid::now_v7();
    let mut placed = envelope_in("order-1", 1, OrderEvent::Placed(Placed { total: 5 }));
    assert_eq!(
        Operation::correlation_id(&placed),
        None,
        "no correlation id"
    );
    placed.metadata = Metadata::new().with_correlation_id(id);
    assert_eq!(Operation::correlation_id(&placed), Some(id.to_string()));

    assert_eq!(ByTotal::correlation_id(&placed), Some("500".to_owned()));
    let shipped = envelope_in(
        "warehouse-7",
        2,
        OrderEvent::Shipped(Parcel { order: "1".into() }),
    );
    assert_eq!(
        ByTotal::correlation_id(&shipped),
        Some("warehouse-7".to_owned())
    );
    let lost = envelope_in("order-1", 3, OrderEvent::Lost(Parcel { order: "1".into() }));
    assert_eq!(ByTotal::correlation_id(&lost), None, "not handled");
}

/// Saga data or a command no store can hold (a NUL in a string) is refused
/// by the engine, before any store: the same typed error on every backend,
/// an event failure (parked), never a failing store.
#[test]
fn saga_values_no_store_can_hold_are_refused_by_the_engine() {
    let placed = envelope_in("order-a\u{0}b", 1, OrderEvent::Placed(Placed { total: 1 }));
    let err = engine::on_event::<Fulfilment>(None, "a\u{0}b".into(), &placed).unwrap_err();
    match &err {
        SagaError::InvalidInput(i) => {
            // the step's command carries the order id, and is built first
            assert_eq!(i.field, "saga command");
            assert!(i.problem.contains("NUL"), "{i}");
        }
        other => panic!("expected InvalidInput, got {other:?}"),
    }
    assert_eq!(
        err.into_handler_error().kind(),
        crate::handler::FailureKind::Event
    );
}

/// Trip data that names an owner as its subject: the owner comes from the
/// trip id, hostile for some.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Owned {
    trip_id: u64,
}

impl SagaData for Owned {
    type Event = TripEvent;
    fn apply(&mut self, event: &TripEvent) {
        if let TripEvent::Requested(r) = event {
            self.trip_id = r.trip_id;
        }
    }
    fn subject(&self) -> Option<String> {
        Some(match self.trip_id {
            1 => String::new(),
            2 => "x".repeat(1025),
            3 => "nul\0".to_owned(),
            n => format!("traveller-{n}"),
        })
    }
}

impl Issue<u64> for Owned {
    fn issue(&self) -> u64 {
        self.trip_id
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, annals_macros::Saga)]
#[saga(crate = "crate", event = TripEvent, command = TripCommand, data = Owned,
       correlation = u64, correlate = trip_id)]
enum OwnedTrip {
    #[saga(start = Requested, issue = BookFlight, compensate = none, on(FlightBooked => Done))]
    Booking,
    #[saga(terminal)]
    Done,
}

/// A saga's subject comes from the application's data: an empty, huge or
/// NUL-holding one is refused by the engine, before any store (the same on
/// every backend), as an event failure (parked); a good one is recorded.
#[test]
fn a_hostile_saga_subject_is_refused_by_the_engine() {
    for trip in 1..=3 {
        let requested = envelope_in("trip-x", trip, TripEvent::Requested(r(trip)));
        let err = engine::on_event::<OwnedTrip>(None, trip.to_string(), &requested)
            .expect_err("a hostile subject is refused");
        match &err {
            SagaError::InvalidInput(i) => assert_eq!(i.field, "saga subject", "{i}"),
            other => panic!("trip {trip}: expected InvalidInput, got {other:?}"),
        }
        assert_eq!(
            err.into_handler_error().kind(),
            crate::handler::FailureKind::Event
        );
    }
    let requested = envelope_in("trip-x", 4, TripEvent::Requested(r(4)));
    let decision = engine::on_event::<OwnedTrip>(None, "4".into(), &requested)
        .expect("a good subject")
        .expect("the saga starts");
    assert_eq!(
        decision.change().record.subject.as_deref(),
        Some("traveller-4")
    );
}
