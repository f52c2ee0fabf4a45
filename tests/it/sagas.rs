//! Sagas on Postgres (DATABASE_URL; `scripts/test` starts a server): the
//! happy path, compensation in reverse order, timeouts, retries, crash
//! recovery across 100 sagas, and two runners at once.
//!
//! The command bus is a simulated clinic: it applies each command once per
//! idempotency key (counting duplicate deliveries), and answers with the
//! event its script says, appended to the real event store.
#![allow(clippy::unwrap_used)] // a test that unwraps fails loudly, which is the point

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use annals::postgres::sqlx::{self, PgPool, Row};
use annals::postgres::testing::TestDatabase;
use annals::postgres::{PgEventStore, PgProjectionStore, PgSagaStore};
use annals::{
    saga::Dispatch, saga::SagaEngine, saga::SagaError, saga::SagaRecord, saga::SagaStatus,
    saga::StepStatus, CommandBus, EventStore, EventStoreExt, ExpectedVersion, HandlerError, Issue,
    Metadata, Projection, ProjectionRunner, RetryPolicy, Saga, SagaData, SagaProjection, SagaStore,
    SagaWorker, TenantId,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

// --- the saga -----------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
struct LeadQualified {
    lead_id: Uuid,
    name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
struct SlotReserved {
    lead_id: Uuid,
    slot: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
struct LeadRef {
    lead_id: Uuid,
}

#[derive(Debug, Clone, PartialEq, annals::Event)]
#[event(prefix = "clinic")]
enum ClinicEvent {
    LeadQualified(LeadQualified),
    SlotReserved(SlotReserved),
    SlotUnavailable(LeadRef),
    DepositCharged(LeadRef),
    DepositDeclined(LeadRef),
    ConfirmationSent(LeadRef),
    ConfirmationFailed(LeadRef),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct SlotCommand {
    lead_id: Uuid,
    slot: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum ClinicCommand {
    ReserveSlot(LeadRef),
    ReleaseSlot(SlotCommand),
    ChargeDeposit(LeadRef),
    RefundDeposit(LeadRef),
    SendConfirmation(SlotCommand),
    CancelConfirmation(LeadRef),
}

impl ClinicCommand {
    fn lead(&self) -> Uuid {
        match self {
            ClinicCommand::ReserveSlot(r)
            | ClinicCommand::ChargeDeposit(r)
            | ClinicCommand::RefundDeposit(r)
            | ClinicCommand::CancelConfirmation(r) => r.lead_id,
            ClinicCommand::ReleaseSlot(s) | ClinicCommand::SendConfirmation(s) => s.lead_id,
        }
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Booking {
    lead_id: Uuid,
    slot: Option<u32>,
}

impl SagaData for Booking {
    type Event = ClinicEvent;
    fn apply(&mut self, event: &ClinicEvent) {
        match event {
            ClinicEvent::LeadQualified(e) => self.lead_id = e.lead_id,
            ClinicEvent::SlotReserved(e) => self.slot = Some(e.slot),
            _ => {}
        }
    }
}

impl Issue<LeadRef> for Booking {
    fn issue(&self) -> LeadRef {
        LeadRef {
            lead_id: self.lead_id,
        }
    }
}

impl Issue<SlotCommand> for Booking {
    fn issue(&self) -> SlotCommand {
        SlotCommand {
            lead_id: self.lead_id,
            slot: self.slot,
        }
    }
}

/// Reserve a slot, charge a deposit, send the confirmation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, annals::Saga)]
#[saga(event = ClinicEvent, command = ClinicCommand, data = Booking,
       correlation = Uuid, correlate = lead_id)]
enum BookingSaga {
    #[saga(start = LeadQualified, issue = ReserveSlot, compensate = ReleaseSlot,
           on(SlotReserved => Charging, SlotUnavailable => fail), timeout("5s"))]
    Reserving,
    #[saga(issue = ChargeDeposit, compensate = RefundDeposit,
           on(DepositCharged => Confirming, DepositDeclined => fail), timeout("5s"))]
    Charging,
    #[saga(issue = SendConfirmation, compensate = CancelConfirmation,
           on(ConfirmationSent => Booked, ConfirmationFailed => fail), timeout("3s"))]
    Confirming,
    #[saga(terminal)]
    Booked,
}

// --- the simulated clinic (the command bus) ------------------------------------

/// How the clinic answers one lead's commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Script {
    /// Every step succeeds.
    Books,
    /// The confirmation bounces: compensate all three steps.
    ConfirmationFails,
    /// The confirmation never answers: the timeout compensates.
    ConfirmationSilent,
    /// No slot: nothing to compensate but... the reservation itself.
    NoSlot,
}

#[derive(Default)]
struct ClinicState {
    /// Applied commands by idempotency key.
    applied: HashMap<String, (Uuid, String)>,
    /// Application order, per lead.
    order: HashMap<Uuid, Vec<String>>,
    duplicates: u64,
    scripts: HashMap<Uuid, Script>,
    /// Command types the clinic declines (the service answers no: a failure
    /// of the command, not of the service, so it is retried, then given up).
    down: HashSet<&'static str>,
    attempts: HashMap<String, u32>,
}

#[derive(Clone)]
struct Clinic {
    events: PgEventStore,
    state: Arc<Mutex<ClinicState>>,
}

impl Clinic {
    fn new(events: PgEventStore) -> Self {
        Clinic {
            events,
            state: Arc::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ClinicState> {
        self.state.lock().unwrap()
    }

    fn order(&self, lead: Uuid) -> Vec<String> {
        self.lock().order.get(&lead).cloned().unwrap_or_default()
    }

    fn duplicates(&self) -> u64 {
        self.lock().duplicates
    }
}

impl CommandBus<ClinicCommand> for Clinic {
    async fn dispatch(&self, d: Dispatch<ClinicCommand>) -> Result<(), HandlerError> {
        let lead = d.command.lead();
        let reply = {
            let mut s = self.lock();
            *s.attempts.entry(d.command_type.clone()).or_default() += 1;
            if s.down.contains(d.command_type.as_str()) {
                return Err(HandlerError::event(format!(
                    "{} declined by the clinic",
                    d.command_type
                )));
            }
            if s.applied.contains_key(&d.idempotency_key) {
                s.duplicates += 1;
                return Ok(());
            }
            s.applied
                .insert(d.idempotency_key.clone(), (lead, d.command_type.clone()));
            s.order
                .entry(lead)
                .or_default()
                .push(d.command_type.clone());
            let script = s.scripts.get(&lead).copied().unwrap_or(Script::Books);
            let r = LeadRef { lead_id: lead };
            match (&d.command, script) {
                (ClinicCommand::ReserveSlot(_), Script::NoSlot) => {
                    Some(ClinicEvent::SlotUnavailable(r))
                }
                (ClinicCommand::ReserveSlot(_), _) => {
                    Some(ClinicEvent::SlotReserved(SlotReserved {
                        lead_id: lead,
                        slot: (lead.as_u128() % 1000) as u32,
                    }))
                }
                (ClinicCommand::ChargeDeposit(_), _) => Some(ClinicEvent::DepositCharged(r)),
                (ClinicCommand::SendConfirmation(_), Script::ConfirmationFails) => {
                    Some(ClinicEvent::ConfirmationFailed(r))
                }
                (ClinicCommand::SendConfirmation(_), Script::ConfirmationSilent) => None,
                (ClinicCommand::SendConfirmation(_), _) => Some(ClinicEvent::ConfirmationSent(r)),
                _ => None, // compensations answer nothing
            }
        };
        if let Some(event) = reply {
            // the command runs in the tenant of the saga that issued it
            self.events
                .in_tenant(d.tenant_id.clone())
                .append_events(
                    &format!("clinic-{lead}"),
                    ExpectedVersion::Any,
                    &[event],
                    &Metadata::new().with_causation_id(d.saga_id),
                )
                .await
                .map_err(HandlerError::dependency)?;
        }
        Ok(())
    }
}

// --- the runner ------------------------------------------------------------------

type Runner =
    ProjectionRunner<PgEventStore, PgProjectionStore, SagaProjection<BookingSaga, PgSagaStore>>;

/// The saga's event side: the projection runner with the saga projection,
/// quick to take over after a kill.
fn runner(pool: &PgPool, events: &PgEventStore, sagas: &PgSagaStore) -> Runner {
    ProjectionRunner::new(
        events.clone(),
        PgProjectionStore::new(pool.clone()),
        Arc::new(SagaProjection::new(sagas.clone())),
    )
    .batch_size(100)
    .poll_interval(Duration::from_millis(100))
    .takeover_interval(Duration::from_millis(20))
    .retry(
        RetryPolicy::new(5)
            .initial_delay(Duration::from_millis(5))
            .max_delay(Duration::from_millis(50)),
    )
}

// --- helpers ---------------------------------------------------------------------

struct Setup {
    db: TestDatabase,
    events: PgEventStore,
    sagas: PgSagaStore,
    clinic: Clinic,
}

async fn setup() -> Setup {
    let db = TestDatabase::new().await;
    let events = PgEventStore::builder(db.pool().clone())
        .register::<ClinicEvent>()
        .build()
        .await
        .expect("store");
    let sagas = PgSagaStore::new(db.pool().clone());
    let clinic = Clinic::new(events.clone());
    Setup {
        db,
        events,
        sagas,
        clinic,
    }
}

impl Setup {
    fn worker(&self) -> SagaWorker<BookingSaga, PgSagaStore, Clinic> {
        SagaWorker::new(self.sagas.clone(), self.clinic.clone())
            .retry_policy(
                RetryPolicy::new(3)
                    .initial_delay(Duration::from_millis(20))
                    .jitter(0.0),
            )
            .poll_interval(Duration::from_millis(10))
    }

    async fn qualify(&self, lead: Uuid, script: Script) {
        self.clinic.lock().scripts.insert(lead, script);
        self.events
            .append_events(
                &format!("lead-{lead}"),
                ExpectedVersion::NoStream,
                &[ClinicEvent::LeadQualified(LeadQualified {
                    lead_id: lead,
                    name: "Ana".into(),
                })],
                &Metadata::new(),
            )
            .await
            .expect("append LeadQualified");
    }

    async fn saga(&self, lead: Uuid) -> Option<SagaRecord> {
        self.sagas
            .find_by_correlation_id(BookingSaga::NAME, &lead.to_string())
            .await
            .expect("find saga")
    }

    /// Runs the projection and one worker until every lead's saga has
    /// finished (or panics after `limit`).
    async fn run_until_finished(&self, leads: &[Uuid], limit: Duration) {
        let runner = runner(self.db.pool(), &self.events, &self.sagas).spawn();
        let worker = self.worker().spawn();
        let result = self.wait_finished(leads, limit).await;
        if let Err(e) = runner.stop().await {
            panic!("the runner did not stop cleanly: {e}");
        }
        worker.stop().await;
        if let Err(left) = result {
            self.dump(leads).await;
            panic!("{left} saga(s) did not finish in {limit:?}");
        }
    }

    /// Prints the unfinished sagas and their commands (for a failed test).
    async fn dump(&self, leads: &[Uuid]) {
        for lead in leads {
            let Some(saga) = self.saga(*lead).await else {
                eprintln!("lead {lead}: no saga");
                continue;
            };
            if saga.status.is_finished() {
                continue;
            }
            eprintln!("unfinished: {saga:#?}");
            for c in self.sagas.commands_of(saga.saga_id).await.unwrap() {
                eprintln!("  command: {c:?}");
            }
            eprintln!("  clinic applied: {:?}", self.clinic.order(*lead));
        }
        let checkpoints = sqlx::query(
            "SELECT projection_name, position, status, error FROM annals_projection_checkpoints",
        )
        .fetch_all(self.db.pool())
        .await
        .unwrap();
        for c in checkpoints {
            eprintln!(
                "checkpoint {}: position {}, {} {:?}",
                c.get::<String, _>(0),
                c.get::<i64, _>(1),
                c.get::<String, _>(2),
                c.get::<Option<String>, _>(3)
            );
        }
        let letters = sqlx::query("SELECT handler, event_type, error FROM annals_dead_letters")
            .fetch_all(self.db.pool())
            .await
            .unwrap();
        for l in letters {
            eprintln!(
                "dead letter: {} {} {}",
                l.get::<String, _>(0),
                l.get::<String, _>(1),
                l.get::<String, _>(2)
            );
        }
    }

    async fn wait_finished(&self, leads: &[Uuid], limit: Duration) -> Result<(), usize> {
        let deadline = Instant::now() + limit;
        loop {
            let mut left = 0;
            for lead in leads {
                match self.saga(*lead).await {
                    Some(s) if s.status.is_finished() => {}
                    _ => left += 1,
                }
            }
            if left == 0 {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(left);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn steps(saga: &SagaRecord) -> Vec<(&str, StepStatus)> {
    saga.completed_steps
        .iter()
        .map(|s| (s.state.as_str(), s.status))
        .collect()
}

// --- tests -------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn happy_path_books_the_appointment() {
    let s = setup().await;
    let lead = Uuid::now_v7();
    s.qualify(lead, Script::Books).await;
    s.run_until_finished(&[lead], Duration::from_secs(30)).await;
    let saga = s.saga(lead).await.unwrap();
    assert_eq!(saga.status, SagaStatus::Completed);
    assert_eq!(saga.state, "Booked");
    assert_eq!(
        saga.version, 4,
        "start + one move per reply: each event applied once"
    );
    assert_eq!(saga.current_step, 3);
    assert!(saga.completed_at.is_some() && saga.deadline_at.is_none());
    assert_eq!(saga.error_message, None);
    assert_eq!(
        s.clinic.order(lead),
        ["ReserveSlot", "ChargeDeposit", "SendConfirmation"]
    );
    let data: Booking = serde_json::from_value(saga.data.clone()).unwrap();
    assert_eq!(data.slot, Some((lead.as_u128() % 1000) as u32));
    // the slot reached the confirmation command through the saga's data
    let commands = s.sagas.commands_of(saga.saga_id).await.unwrap();
    assert_eq!(commands.len(), 3);
    assert!(commands
        .iter()
        .all(|c| c.dispatched_at.is_some() && c.attempts == 1));
    assert_eq!(
        commands[2].command,
        serde_json::json!({"SendConfirmation": {"lead_id": lead, "slot": data.slot}})
    );
    assert_eq!(commands[2].idempotency_key, format!("{}/2/0", saga.saga_id));
    assert_eq!(
        steps(&saga),
        [
            ("Reserving", StepStatus::Done),
            ("Charging", StepStatus::Done),
            ("Confirming", StepStatus::Done)
        ]
    );
    assert!(s
        .sagas
        .list_unfinished(None, None, 10)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        s.sagas.pending_commands(BookingSaga::NAME).await.unwrap(),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_step_compensates_in_reverse_order() {
    let s = setup().await;
    let (bounce, no_slot) = (Uuid::now_v7(), Uuid::now_v7());
    s.qualify(bounce, Script::ConfirmationFails).await;
    s.qualify(no_slot, Script::NoSlot).await;
    s.run_until_finished(&[bounce, no_slot], Duration::from_secs(30))
        .await;

    let saga = s.saga(bounce).await.unwrap();
    assert_eq!(saga.status, SagaStatus::Failed);
    assert!(saga.completed_at.is_some());
    assert!(
        saga.error_message
            .as_deref()
            .unwrap()
            .contains("event `clinic.confirmation_failed` failed the saga in state `Confirming`"),
        "{:?}",
        saga.error_message
    );
    assert_eq!(
        s.clinic.order(bounce),
        [
            "ReserveSlot",
            "ChargeDeposit",
            "SendConfirmation",
            "CancelConfirmation",
            "RefundDeposit",
            "ReleaseSlot"
        ]
    );
    assert_eq!(
        steps(&saga),
        [
            ("Reserving", StepStatus::Compensated),
            ("Charging", StepStatus::Compensated),
            ("Confirming", StepStatus::Compensated)
        ]
    );
    let release = s
        .sagas
        .commands_of(saga.saga_id)
        .await
        .unwrap()
        .into_iter()
        .find(|c| c.command_type == "ReleaseSlot")
        .unwrap();
    assert!(release.compensation);
    assert_eq!(
        release.idempotency_key,
        format!("{}/0/undo/0", saga.saga_id)
    );
    assert_eq!(
        release.command["ReleaseSlot"]["slot"],
        serde_json::json!((bounce.as_u128() % 1000) as u32),
        "the compensation is built from what the saga learned"
    );

    // no slot: only the reservation step is undone
    let saga = s.saga(no_slot).await.unwrap();
    assert_eq!(saga.status, SagaStatus::Failed);
    assert_eq!(s.clinic.order(no_slot), ["ReserveSlot", "ReleaseSlot"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_compensates_even_after_a_restart() {
    let s = setup().await;
    let lead = Uuid::now_v7();
    s.qualify(lead, Script::ConfirmationSilent).await;
    // run until the saga waits for the confirmation that never comes ...
    let runner = runner(s.db.pool(), &s.events, &s.sagas).spawn();
    let worker = s.worker().spawn();
    let deadline = Instant::now() + Duration::from_secs(30);
    while s.saga(lead).await.map(|x| x.state) != Some("Confirming".into())
        || s.sagas.pending_commands(BookingSaga::NAME).await.unwrap() > 0
    {
        assert!(
            Instant::now() < deadline,
            "the saga never reached Confirming"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // ... then the process dies
    runner.abort();
    worker.abort();
    assert!(runner.join().await.is_err(), "the runner was killed");
    let waiting = s.saga(lead).await.unwrap();
    assert_eq!(waiting.status, SagaStatus::Running);
    assert!(waiting.deadline_at.is_some(), "the deadline is stored");
    tokio::time::sleep(Duration::from_millis(3100)).await;
    // a new process: its worker finds the deadline passed
    s.run_until_finished(&[lead], Duration::from_secs(30)).await;
    let saga = s.saga(lead).await.unwrap();
    assert_eq!(saga.status, SagaStatus::Failed);
    assert!(
        saga.error_message
            .as_deref()
            .unwrap()
            .contains("timed out in state `Confirming` after 3s"),
        "{:?}",
        saga.error_message
    );
    assert_eq!(
        s.clinic.order(lead)[3..],
        ["CancelConfirmation", "RefundDeposit", "ReleaseSlot"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_command_is_retried_with_backoff_then_the_saga_compensates() {
    let s = setup().await;
    let lead = Uuid::now_v7();
    s.clinic.lock().down.insert("ChargeDeposit");
    s.qualify(lead, Script::Books).await;
    let started = Instant::now();
    s.run_until_finished(&[lead], Duration::from_secs(30)).await;
    let saga = s.saga(lead).await.unwrap();
    assert_eq!(saga.status, SagaStatus::Failed);
    assert_eq!(saga.retry_count, 2);
    assert_eq!(s.clinic.lock().attempts["ChargeDeposit"], 3);
    // backoff: 20 ms, then 40 ms
    assert!(started.elapsed() >= Duration::from_millis(60));
    assert!(saga
        .error_message
        .as_deref()
        .unwrap()
        .contains("command `ChargeDeposit` of step 1 failed after 3 attempt(s): ChargeDeposit declined by the clinic"));
    // the charge never went through, so only the reservation is undone
    assert_eq!(s.clinic.order(lead), ["ReserveSlot", "ReleaseSlot"]);
    assert_eq!(
        steps(&saga),
        [
            ("Reserving", StepStatus::Compensated),
            ("Charging", StepStatus::Failed)
        ]
    );
    let charge = s
        .sagas
        .commands_of(saga.saga_id)
        .await
        .unwrap()
        .into_iter()
        .find(|c| c.command_type == "ChargeDeposit")
        .unwrap();
    assert_eq!(charge.attempts, 3);
    assert!(charge.failed_at.is_some());
    assert!(charge
        .last_error
        .unwrap()
        .contains("declined by the clinic"));
}

/// What the clinic did for every saga, checked against the sagas' final
/// rows: each saga completed or compensated, no effect applied twice.
async fn check_outcomes(s: &Setup, leads: &[Uuid]) -> (usize, usize) {
    let (mut completed, mut compensated) = (0, 0);
    let undo = |c: &str| match c {
        "ReserveSlot" => "ReleaseSlot",
        "ChargeDeposit" => "RefundDeposit",
        "SendConfirmation" => "CancelConfirmation",
        other => panic!("unexpected forward command {other}"),
    };
    for lead in leads {
        let saga = s.saga(*lead).await.expect("every lead has a saga");
        let order = s.clinic.order(*lead);
        let unique: HashSet<&String> = order.iter().collect();
        assert_eq!(
            unique.len(),
            order.len(),
            "an effect applied twice: {order:?}"
        );
        match saga.status {
            SagaStatus::Completed => {
                completed += 1;
                assert_eq!(order, ["ReserveSlot", "ChargeDeposit", "SendConfirmation"]);
            }
            SagaStatus::Failed => {
                compensated += 1;
                // every forward effect is undone, in reverse order
                let forward: Vec<&str> = order
                    .iter()
                    .map(String::as_str)
                    .filter(|c| {
                        !c.starts_with("Release")
                            && !c.starts_with("Refund")
                            && !c.starts_with("Cancel")
                    })
                    .collect();
                let undone: Vec<&str> = order
                    .iter()
                    .map(String::as_str)
                    .filter(|c| {
                        c.starts_with("Release")
                            || c.starts_with("Refund")
                            || c.starts_with("Cancel")
                    })
                    .collect();
                for f in &forward {
                    assert!(undone.contains(&undo(f)), "{f} not compensated: {order:?}");
                }
                let mut sorted = undone.clone();
                sorted.sort_by_key(|c| {
                    ["CancelConfirmation", "RefundDeposit", "ReleaseSlot"]
                        .iter()
                        .position(|x| x == c)
                });
                assert_eq!(undone, sorted, "compensations out of order: {order:?}");
                assert!(saga
                    .completed_steps
                    .iter()
                    .all(|st| matches!(st.status, StepStatus::Compensated | StepStatus::Failed)));
            }
            other => panic!("saga of {lead} ended {other}"),
        }
    }
    (completed, compensated)
}

/// A tiny deterministic generator (xorshift), so a failing run can be
/// repeated with its printed seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_recovery_across_100_sagas() {
    let s = setup().await;
    let seed = std::env::var("SAGA_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("crash recovery seed: {seed} (SAGA_CRASH_SEED={seed} repeats the kill points)");
    let mut rng = Rng(seed);
    let mut leads = Vec::new();
    for i in 0..100 {
        let lead = Uuid::now_v7();
        let script = match i % 10 {
            0 => Script::ConfirmationFails,
            1 => Script::NoSlot,
            2 => Script::ConfirmationSilent,
            _ => Script::Books,
        };
        s.qualify(lead, script).await;
        leads.push(lead);
    }
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut kills = 0;
    loop {
        // a runner: the projection and the worker, each on its own pool
        // connection, killed (aborted) after a random time
        let runner = runner(s.db.pool(), &s.events, &s.sagas)
            .batch_size(1 + rng.below(40) as usize)
            .spawn();
        let worker = s.worker().batch_size(1 + rng.below(16) as usize).spawn();
        let life = Duration::from_millis(5 + rng.below(250));
        let finished = s.wait_finished(&leads, life).await.is_ok();
        runner.abort();
        worker.abort();
        let _ = runner.join().await;
        if finished {
            break;
        }
        kills += 1;
        assert!(
            Instant::now() < deadline,
            "sagas still unfinished after {kills} kills (seed {seed})"
        );
    }
    let (completed, compensated) = check_outcomes(&s, &leads).await;
    let duplicates = s.clinic.duplicates();
    eprintln!(
        "crash recovery: {kills} kills; {completed} completed, {compensated} compensated; \
         {duplicates} duplicate deliveries dropped by the receiver's idempotency keys"
    );
    assert_eq!(completed + compensated, 100);
    assert!(kills > 0, "the runner was never killed");
    // the script's ConfirmationFails / NoSlot / silent leads cannot complete
    assert!(compensated >= 30, "{compensated}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_runners_at_once_process_each_saga_once() {
    let s = setup().await;
    let mut leads = Vec::new();
    for i in 0..40 {
        let lead = Uuid::now_v7();
        s.qualify(
            lead,
            if i % 4 == 0 {
                Script::ConfirmationFails
            } else {
                Script::Books
            },
        )
        .await;
        leads.push(lead);
    }
    // two instances: separate pools, each with a projection runner (one owns
    // the saga projection, the other stands by) and a worker (both deliver)
    let (mut runners, mut workers) = (Vec::new(), Vec::new());
    for _ in 0..2 {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(4)
            .connect_with(s.db.connect_options())
            .await
            .unwrap();
        let events = PgEventStore::builder(pool.clone())
            .register::<ClinicEvent>()
            .build()
            .await
            .unwrap();
        let sagas = PgSagaStore::new(pool.clone());
        runners.push(runner(&pool, &events, &sagas).batch_size(5).spawn());
        workers.push(
            SagaWorker::<BookingSaga, _, _>::new(sagas, s.clinic.clone())
                .batch_size(4)
                .poll_interval(Duration::from_millis(5))
                .spawn(),
        );
    }
    let result = s.wait_finished(&leads, Duration::from_secs(60)).await;
    for r in runners {
        r.stop().await.expect("runner stops");
    }
    for w in workers {
        w.stop().await;
    }
    result.unwrap_or_else(|left| panic!("{left} sagas unfinished"));
    let (completed, compensated) = check_outcomes(&s, &leads).await;
    // on a loaded machine a confirmation can miss its 3 s timeout: then the
    // saga compensates by timeout, which is right; any other failure is not
    let mut timed_out = 0;
    for (i, lead) in leads.iter().enumerate() {
        let saga = s.saga(*lead).await.unwrap();
        if i % 4 == 0 {
            assert_eq!(saga.status, SagaStatus::Failed);
        } else if saga.status == SagaStatus::Failed {
            let why = saga.error_message.unwrap_or_default();
            assert!(why.contains("timed out"), "{why}");
            timed_out += 1;
        }
    }
    eprintln!(
        "two runners: {completed} completed, {compensated} compensated ({timed_out} by timeout)"
    );
    assert_eq!(completed + compensated, 40);
    assert_eq!(s.clinic.duplicates(), 0, "no command was delivered twice");
    for lead in &leads {
        let saga = s.saga(*lead).await.unwrap();
        if saga.status == SagaStatus::Completed {
            // insert + three moves: no event moved it twice
            assert_eq!(saga.version, 4);
        }
    }
    let row = sqlx::query("SELECT count(*) AS n FROM annals_saga_outbox WHERE attempts <> 1")
        .fetch_one(s.db.pool())
        .await
        .unwrap();
    assert_eq!(
        row.get::<i64, _>("n"),
        0,
        "every command was attempted once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saga_queries_and_the_optimistic_version() {
    let s = setup().await;
    let lead = Uuid::now_v7();
    s.qualify(lead, Script::Books).await;
    let runner = runner(s.db.pool(), &s.events, &s.sagas);
    // the log is read below the horizon: wait until the append is visible
    while runner.catch_up().await.unwrap().events_applied == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let projection = runner.projection();
    let saga = s.saga(lead).await.unwrap();
    assert_eq!(
        (saga.status, saga.state.as_str(), saga.version),
        (SagaStatus::Running, "Reserving", 1)
    );
    assert_eq!(
        s.sagas.get(saga.saga_id).await.unwrap().as_ref(),
        Some(&saga)
    );
    let unfinished = s
        .sagas
        .list_unfinished(Some(BookingSaga::NAME), None, 10)
        .await
        .unwrap();
    assert_eq!(unfinished, vec![saga.clone()]);
    assert!(s
        .sagas
        .list_unfinished(Some("other"), None, 10)
        .await
        .unwrap()
        .is_empty());
    assert!(s
        .sagas
        .list_unfinished(None, Some(saga.saga_id), 10)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        s.sagas.count_unfinished(BookingSaga::NAME).await.unwrap(),
        vec![(SagaStatus::Running, 1)]
    );
    assert_eq!(
        s.sagas.pending_commands(BookingSaga::NAME).await.unwrap(),
        1
    );

    // two instances read the saga at version 1; the first write wins, the
    // second is refused and writes nothing (not even its commands)
    let slot = s
        .events
        .append_events(
            &format!("clinic-{lead}"),
            ExpectedVersion::Any,
            &[ClinicEvent::SlotReserved(SlotReserved {
                lead_id: lead,
                slot: 7,
            })],
            &Metadata::new(),
        )
        .await
        .unwrap();
    let event = s
        .events
        .decode::<ClinicEvent>(slot.events.into_iter().next().unwrap())
        .unwrap();
    let change = SagaEngine::<BookingSaga>::on_event(Some(saga.clone()), lead.to_string(), &event)
        .unwrap()
        .expect("SlotReserved moves the saga")
        .finish(&[])
        .unwrap();
    assert_eq!(change.commands.len(), 1);
    let mut a = s.db.pool().begin().await.unwrap();
    s.sagas.save(&mut a, &change).await.unwrap();
    a.commit().await.unwrap();
    let mut b = s.db.pool().begin().await.unwrap();
    let err = s.sagas.save(&mut b, &change).await.unwrap_err();
    assert!(
        matches!(err, SagaError::Conflict { saga_id, expected: 1 } if saga_id == saga.saga_id),
        "{err}"
    );
    b.rollback().await.unwrap();
    let saved = s.saga(lead).await.unwrap();
    assert_eq!((saved.version, saved.state.as_str()), (2, "Charging"));
    assert_eq!(saved.last_event, event.log_position);
    assert_eq!(s.sagas.commands_of(saga.saga_id).await.unwrap().len(), 2);

    // a second saga for the same correlation id is refused
    let start = s
        .events
        .read_stream_as::<ClinicEvent>(&format!("lead-{lead}"), ..)
        .await
        .unwrap()
        .remove(0);
    let again = SagaEngine::<BookingSaga>::on_event(None, lead.to_string(), &start)
        .unwrap()
        .unwrap()
        .finish(&[])
        .unwrap();
    let mut c = s.db.pool().begin().await.unwrap();
    let err = s.sagas.save(&mut c, &again).await.unwrap_err();
    assert!(matches!(err, SagaError::AlreadyExists { .. }), "{err}");
    c.rollback().await.unwrap();

    // an event delivered again (a replay) does not move the saga
    let mut d = s.db.pool().begin().await.unwrap();
    projection.apply(&mut d, &event).await.unwrap();
    d.commit().await.unwrap();
    assert_eq!(s.saga(lead).await.unwrap(), saved);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compensation_waits_for_the_delivery_it_undoes() {
    let s = setup().await;
    let lead = Uuid::now_v7();
    s.qualify(lead, Script::NoSlot).await;
    let runner = runner(s.db.pool(), &s.events, &s.sagas);
    while runner.catch_up().await.unwrap().events_applied == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // a worker claims ReserveSlot; the clinic answers before the worker has
    // recorded the delivery (the bus appends the reply inside dispatch)
    let claimed = s
        .sagas
        .claim_commands(BookingSaga::NAME, 10, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    s.events
        .append_events(
            &format!("clinic-{lead}"),
            ExpectedVersion::Any,
            &[ClinicEvent::SlotUnavailable(LeadRef { lead_id: lead })],
            &Metadata::new(),
        )
        .await
        .unwrap();
    while runner.catch_up().await.unwrap().events_applied == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let saga = s.saga(lead).await.unwrap();
    assert_eq!(saga.status, SagaStatus::Compensating);
    // the in-flight ReserveSlot is not cancelled, and ReleaseSlot is not
    // handed out before it is resolved
    let commands = s.sagas.commands_of(saga.saga_id).await.unwrap();
    assert!(commands[0].failed_at.is_none());
    assert!(s
        .sagas
        .claim_commands(BookingSaga::NAME, 10, Duration::from_secs(30))
        .await
        .unwrap()
        .is_empty());
    s.sagas.mark_delivered(&[claimed[0].id]).await.unwrap();
    let next = s
        .sagas
        .claim_commands(BookingSaga::NAME, 10, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].command_type, "ReleaseSlot");
    assert!(next[0].compensation);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_written_log_caught_up_in_batches() {
    // the whole story of 20 sagas is in the log before the runner starts
    // (a new saga deployed over old events, or a runner that was down):
    // each batch loads its sagas in one query and saves each once
    let s = setup().await;
    let mut leads = Vec::new();
    for i in 0..20 {
        let lead = Uuid::now_v7();
        s.qualify(lead, Script::Books).await;
        let r = || LeadRef { lead_id: lead };
        let mut story = vec![ClinicEvent::SlotReserved(SlotReserved {
            lead_id: lead,
            slot: 3,
        })];
        story.push(ClinicEvent::DepositCharged(r()));
        story.push(if i % 5 == 0 {
            ClinicEvent::ConfirmationFailed(r())
        } else {
            ClinicEvent::ConfirmationSent(r())
        });
        for e in story {
            s.events
                .append_events(
                    &format!("clinic-{lead}"),
                    ExpectedVersion::Any,
                    &[e],
                    &Metadata::new(),
                )
                .await
                .unwrap();
        }
        leads.push(lead);
    }
    // every story below the log's horizon first: a transaction open
    // elsewhere on the server (another test) must not split a story
    // between two catch-ups, which would queue its forward commands
    annals::testing::conformance::read_log_settled(&s.events, annals::LogPosition::START, 80).await;
    let runner = runner(s.db.pool(), &s.events, &s.sagas).batch_size(50);
    let mut applied = 0;
    while applied < 80 {
        applied += runner.catch_up().await.unwrap().events_applied;
    }
    for (i, lead) in leads.iter().enumerate() {
        let saga = s.saga(*lead).await.unwrap();
        // `fail` enters no state: a saga failed by its last event stays at step 2
        let steps = if i % 5 == 0 { 2 } else { 3 };
        assert_eq!(saga.current_step, steps, "{saga:?}");
        // one write per batch the saga's story falls in (batches of 50 over
        // stories of 4 events: one, or two at a batch boundary)
        assert!(saga.version <= 2, "{saga:?}");
        let commands = s.sagas.commands_of(saga.saga_id).await.unwrap();
        let types: Vec<&str> = commands.iter().map(|c| c.command_type.as_str()).collect();
        if i % 5 == 0 {
            // failed at the last step before any forward command was
            // attempted: those commands were never recorded (or are
            // cancelled), no step did anything, so nothing is undone
            assert_eq!(saga.status, SagaStatus::Failed);
            assert!(types.is_empty(), "{types:?}");
            assert!(
                saga.completed_steps
                    .iter()
                    .all(|st| st.status == StepStatus::Failed),
                "{saga:?}"
            );
        } else {
            assert_eq!(saga.status, SagaStatus::Completed);
            assert_eq!(types, ["ReserveSlot", "ChargeDeposit", "SendConfirmation"]);
        }
    }
    // the worker then delivers what was recorded; the failed sagas end
    // compensated (the clinic's replies to those deliveries are ignored:
    // the sagas have moved on)
    s.run_until_finished(&leads, Duration::from_secs(30)).await;
    for (i, lead) in leads.iter().enumerate() {
        let saga = s.saga(*lead).await.unwrap();
        let expected = if i % 5 == 0 {
            SagaStatus::Failed
        } else {
            SagaStatus::Completed
        };
        assert_eq!(saga.status, expected);
    }
    // a rebuild reads the whole log again: nothing moves twice
    let before: Vec<SagaRecord> = {
        let mut v = Vec::new();
        for lead in &leads {
            v.push(s.saga(*lead).await.unwrap());
        }
        v
    };
    runner.rebuild().await.unwrap();
    for (lead, was) in leads.iter().zip(before) {
        assert_eq!(s.saga(*lead).await.unwrap(), was);
    }
}

/// Two tenants, one lead id: each tenant's saga (same correlation id, same
/// stream names) runs on its own, its commands are delivered with its
/// tenant and their answers land in its log, and no handle of one tenant
/// sees the other's saga or commands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_tenant_runs_its_own_saga_for_the_same_lead() {
    let s = setup().await;
    let lead = Uuid::now_v7();
    s.clinic.lock().scripts.insert(lead, Script::Books);
    let tenants = ["clinic-a", "clinic-b"];
    let mut running = Vec::new();
    for t in tenants {
        let events = s.events.tenant(t).unwrap();
        events
            .append_events(
                &format!("lead-{lead}"),
                ExpectedVersion::NoStream,
                &[ClinicEvent::LeadQualified(LeadQualified {
                    lead_id: lead,
                    name: t.into(),
                })],
                &Metadata::new(),
            )
            .await
            .unwrap();
        // the projection's saga store is the default tenant's: it follows
        // each event's tenant by itself
        let runner = runner(s.db.pool(), &events, &s.sagas).spawn();
        let tenant = TenantId::new(t).unwrap();
        let worker =
            SagaWorker::<BookingSaga, _, _>::new(s.sagas.in_tenant(tenant), s.clinic.clone())
                .poll_interval(Duration::from_millis(10))
                .spawn();
        running.push((runner, worker));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut finished = Vec::new();
    for t in tenants {
        let sagas = s.sagas.in_tenant(TenantId::new(t).unwrap());
        loop {
            let saga = sagas
                .find_by_correlation_id(BookingSaga::NAME, &lead.to_string())
                .await
                .unwrap();
            if let Some(saga) = saga.filter(|s| s.status.is_finished()) {
                assert_eq!(saga.status, SagaStatus::Completed, "{t}: {saga:?}");
                finished.push(saga);
                break;
            }
            assert!(Instant::now() < deadline, "{t}'s saga did not finish");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    for (runner, worker) in running {
        runner.stop().await.unwrap();
        worker.stop().await;
    }
    assert_ne!(finished[0].saga_id, finished[1].saga_id, "two sagas");
    let a = s.sagas.in_tenant(TenantId::new("clinic-a").unwrap());
    assert!(
        a.get(finished[1].saga_id).await.unwrap().is_none(),
        "a does not see b's saga"
    );
    assert!(
        a.commands_of(finished[1].saga_id).await.unwrap().is_empty(),
        "nor its commands"
    );
    assert_eq!(a.commands_of(finished[0].saga_id).await.unwrap().len(), 3);
    assert!(
        s.sagas
            .find_by_correlation_id(BookingSaga::NAME, &lead.to_string())
            .await
            .unwrap()
            .is_none(),
        "the default tenant has no saga"
    );
    for t in tenants {
        let answers = s
            .events
            .tenant(t)
            .unwrap()
            .read_stream(&format!("clinic-{lead}"), ..)
            .await
            .unwrap();
        assert_eq!(answers.len(), 3, "{t}'s answers are in {t}'s log");
    }
    assert!(s
        .events
        .read_stream(&format!("clinic-{lead}"), ..)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(s.clinic.duplicates(), 0);
    assert_eq!(s.clinic.order(lead).len(), 6, "three commands per tenant");
}
