//! The saga engine: pure decisions. Given a stored saga and what happened
//! (an event, a timeout, a command's outcome) it computes the saga's new
//! state and the commands to record; the stores write it, the projection and
//! the worker call it.

use std::marker::PhantomData;

use chrono::Utc;
use serde::Deserialize;
use uuid::Uuid;

use super::{
    CommandOutcome, NamedCommand, OutboxCommand, OutboxEntry, Saga, SagaChange, SagaData,
    SagaError, SagaProgress, SagaRecord, SagaStatus, StepRecord, StepStatus, Target,
};
use crate::Envelope;

/// Why a saga started compensating (the `reason` label of
/// [`SAGA_COMPENSATIONS_TOTAL`](crate::metrics::SAGA_COMPENSATIONS_TOTAL)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FailCause {
    EventReceived,
    Timeout,
    Command,
}

impl FailCause {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            FailCause::EventReceived => "event",
            FailCause::Timeout => "timeout",
            FailCause::Command => "command",
        }
    }
}

/// The pure decisions of saga `S`: what a saga becomes when an event
/// arrives, its timeout fires or one of its commands was delivered or given
/// up. No I/O: [`SagaProjection`](super::SagaProjection) and
/// [`SagaWorker`](super::SagaWorker) call it, [finish](Decision::finish)
/// the [`Decision`] with what the store knows about the saga's commands and
/// hand the resulting [`SagaChange`] to a [`SagaStore`](super::SagaStore). Useful on its own to
/// test a saga without a store, or to build another runner.
///
/// ```
/// # use annals::{Envelope, LogPosition, Metadata, saga::SagaEngine, saga::SagaStatus};
/// # #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
/// # struct Ordered { order: u64 }
/// # #[derive(Debug, Clone, PartialEq, annals::Event)]
/// # enum ShopEvent { Ordered(Ordered), Shipped(Ordered) }
/// # #[derive(Debug, serde::Serialize, serde::Deserialize)]
/// # enum ShopCommand { Ship(u64), CancelShipment(u64) }
/// # #[derive(Default, serde::Serialize, serde::Deserialize)]
/// # struct Order { id: u64 }
/// # impl annals::SagaData for Order {
/// #     type Event = ShopEvent;
/// #     fn apply(&mut self, e: &ShopEvent) { if let ShopEvent::Ordered(o) = e { self.id = o.order } }
/// # }
/// # impl annals::Issue<u64> for Order { fn issue(&self) -> u64 { self.id } }
/// # #[derive(Debug, Clone, Copy, PartialEq, Eq, annals::Saga)]
/// # #[saga(event = ShopEvent, command = ShopCommand, data = Order,
/// #        correlation = u64, correlate = order)]
/// # enum Shipping {
/// #     #[saga(start = Ordered, issue = Ship, compensate = CancelShipment, on(Shipped => Done))]
/// #     Shipping,
/// #     #[saga(terminal)]
/// #     Done,
/// # }
/// let ordered = Envelope {
///     tenant_id: annals::TenantId::default(),
///     event_id: uuid::Uuid::now_v7(),
///     stream_id: "order-42".into(),
///     stream_version: 1,
///     log_position: LogPosition::new(1, 1),
///     event_type: "shop.ordered".into(),
///     schema_version: 1,
///     metadata: Metadata::new(),
///     recorded_at: chrono::Utc::now(),
///     payload: ShopEvent::Ordered(Ordered { order: 42 }),
/// };
/// let decision = SagaEngine::<Shipping>::on_event(None, "42".into(), &ordered)?
///     .expect("`Ordered` starts a saga");
/// // a new saga has no steps attempted yet
/// let change = decision.finish(&[])?;
/// assert_eq!(change.record.state, "Shipping");
/// assert_eq!(change.record.status, SagaStatus::Running);
/// assert_eq!(change.commands[0].command_type, "Ship");
/// assert_eq!(change.commands[0].command, serde_json::json!({ "Ship": 42 }));
/// # Ok::<(), annals::saga::SagaError>(())
/// ```
#[derive(Debug)]
pub struct SagaEngine<S> {
    _saga: PhantomData<fn() -> S>,
}

impl<S: Saga> SagaEngine<S> {
    /// An event for the saga with this correlation id (read from the event
    /// by [`Saga::correlation_id`]; `existing` is that saga, if there is
    /// one): starts a saga, moves one, or is ignored (`None`): not a start
    /// event and no saga, a saga that is compensating or finished, an event
    /// at or before the saga's last applied log position (a second
    /// delivery), or an event the saga's state does not handle.
    pub fn on_event(
        existing: Option<SagaRecord>,
        correlation_id: String,
        event: &Envelope<S::Event>,
    ) -> Result<Option<Decision<S>>, SagaError> {
        on_event::<S>(existing, correlation_id, event)
    }

    /// A saga whose deadline passed: moves it to its state's timeout target
    /// (`None`: the saga is no longer running).
    pub fn on_timeout(record: SagaRecord) -> Result<Option<Decision<S>>, SagaError> {
        on_timeout::<S>(record)
    }

    /// A command's delivery ended: a forward command given up makes a
    /// running saga compensate; a compensating command done moves the
    /// compensation on to the next older step once its step has no command
    /// outstanding (`None`: nothing changes).
    pub fn on_outcome(
        record: SagaRecord,
        entry: &OutboxEntry,
        outcome: &CommandOutcome,
        progress: &SagaProgress,
    ) -> Result<Option<Decision<S>>, SagaError> {
        on_outcome::<S>(record, entry, outcome, progress)
    }
}

/// What the engine decided for a saga, one step short of a
/// [`SagaChange`]: when the decision starts compensation, which steps to
/// undo depends on which of their forward commands were ever attempted (a
/// step none of whose commands was attempted did nothing: its commands are
/// cancelled and it is not compensated), and only the store knows that.
/// [`finish`](Self::finish) takes the answer
/// ([`SagaStore::attempted_steps`](super::SagaStore::attempted_steps)).
#[derive(Debug)]
#[must_use = "a decision does nothing until it is finished and saved"]
pub struct Decision<S> {
    change: SagaChange,
    starts_compensation: bool,
    _saga: PhantomData<fn() -> S>,
}

impl<S: Saga> Decision<S> {
    fn new(change: SagaChange, starts_compensation: bool) -> Self {
        Decision {
            change,
            starts_compensation,
            _saga: PhantomData,
        }
    }

    /// Whether the saga starts compensating: then [`finish`](Self::finish)
    /// needs the steps whose forward commands were attempted.
    pub fn starts_compensation(&self) -> bool {
        self.starts_compensation
    }

    /// The change as decided so far (a compensation that starts has no
    /// compensating commands yet).
    pub fn change(&self) -> &SagaChange {
        &self.change
    }

    /// The change to save. `attempted_steps`: the saga's steps that have a
    /// forward command that may have taken effect (delivered, or attempted
    /// and not given up; see
    /// [`SagaStore::attempted_steps`](super::SagaStore::attempted_steps));
    /// read only when the decision [starts
    /// compensation](Self::starts_compensation). The other steps that
    /// issued commands are marked [`StepStatus::Failed`] (they did nothing)
    /// and the newest step left is compensated first.
    pub fn finish(self, attempted_steps: &[u32]) -> Result<SagaChange, SagaError> {
        let mut change = self.change;
        if self.starts_compensation {
            for s in &mut change.record.completed_steps {
                if s.status == StepStatus::Done && !attempted_steps.contains(&s.step) {
                    s.status = StepStatus::Failed;
                }
            }
            let data = data_of::<S>(&change.record)?;
            advance_compensation::<S>(&mut change, &data)?;
        }
        Ok(change)
    }
}

/// An event for the saga with this correlation id: starts a saga, moves
/// one, or is ignored (`None`): not a start event and no saga, a saga that
/// is compensating or finished, a duplicate delivery, or an event the
/// saga's state does not handle.
pub(crate) fn on_event<S: Saga>(
    existing: Option<SagaRecord>,
    correlation_id: String,
    event: &Envelope<S::Event>,
) -> Result<Option<Decision<S>>, SagaError> {
    let Some(record) = existing else {
        let Some(start) = S::start(&event.payload) else {
            return Ok(None);
        };
        let mut data = S::Data::default();
        data.apply_envelope(event);
        let now = Utc::now();
        let record = SagaRecord {
            saga_id: Uuid::now_v7(),
            saga_type: S::NAME.to_owned(),
            correlation_id,
            state: String::new(),
            data: serde_json::Value::Null,
            status: SagaStatus::Running,
            current_step: 0,
            completed_steps: Vec::new(),
            version: 0,
            deadline_at: None,
            started_at: now,
            updated_at: now,
            completed_at: None,
            error_message: None,
            retry_count: 0,
            last_event: event.log_position,
            subject: None,
        };
        let mut change = new_change(record, true);
        enter::<S>(&mut change, start, &data, true)?;
        set_data::<S>(&mut change, &data)?;
        return Ok(Some(Decision::new(change, false)));
    };
    if !matches!(record.status, SagaStatus::Running | SagaStatus::Pending) {
        return Ok(None);
    }
    if event.log_position <= record.last_event {
        return Ok(None); // delivered again: already applied
    }
    let state = state_of::<S>(&record)?;
    let Some(target) = state.on(&event.payload) else {
        return Ok(None);
    };
    let mut data = data_of::<S>(&record)?;
    data.apply_envelope(event);
    let mut change = new_change(record, false);
    change.record.status = SagaStatus::Running;
    change.record.last_event = event.log_position;
    let fails = match target {
        Target::State(next) => {
            enter::<S>(&mut change, next, &data, false)?;
            false
        }
        Target::Fail => {
            start_compensation(
                &mut change,
                format!(
                    "event `{}` failed the saga in state `{}`",
                    event.event_type,
                    state.state_name()
                ),
            );
            true
        }
    };
    set_data::<S>(&mut change, &data)?;
    Ok(Some(Decision::new(change, fails)))
}

/// A saga whose deadline passed: moves it to its state's timeout target.
/// `None` when the saga is no longer running (nothing to do).
pub(crate) fn on_timeout<S: Saga>(record: SagaRecord) -> Result<Option<Decision<S>>, SagaError> {
    if !matches!(record.status, SagaStatus::Running | SagaStatus::Pending) {
        return Ok(None);
    }
    let state = state_of::<S>(&record)?;
    let mut change = new_change(record, false);
    let fails = match state.timeout() {
        // the code has no timeout for this state (any more): disarm it
        None => {
            change.deadline = None;
            false
        }
        Some((_, Target::State(next))) => {
            let data = data_of::<S>(&change.record)?;
            enter::<S>(&mut change, next, &data, false)?;
            false
        }
        Some((after, Target::Fail)) => {
            start_compensation(
                &mut change,
                format!(
                    "timed out in state `{}` after {after:?}",
                    state.state_name()
                ),
            );
            true
        }
    };
    Ok(Some(Decision::new(change, fails)))
}

/// A command's delivery ended (delivered or given up): a forward command
/// given up makes a running saga compensate; a compensating command done
/// moves compensation on to the next older step once its step has no
/// command outstanding. `None`: nothing changes.
pub(crate) fn on_outcome<S: Saga>(
    record: SagaRecord,
    entry: &OutboxEntry,
    outcome: &CommandOutcome,
    progress: &SagaProgress,
) -> Result<Option<Decision<S>>, SagaError> {
    let error = match outcome {
        CommandOutcome::Retry { .. } => return Ok(None),
        CommandOutcome::Delivered => None,
        CommandOutcome::Abandoned { error } => Some(error.as_str()),
    };
    if !entry.compensation {
        let Some(error) = error else {
            return Ok(None);
        };
        if !matches!(record.status, SagaStatus::Running | SagaStatus::Pending) {
            return Ok(None);
        }
        let mut change = new_change(record, false);
        if progress.step_delivered == 0 {
            // no command of the step got through: it did nothing to undo
            for s in &mut change.record.completed_steps {
                if s.step == entry.step && s.status == StepStatus::Done {
                    s.status = StepStatus::Failed;
                }
            }
        }
        start_compensation(
            &mut change,
            format!(
                "command `{}` of step {} failed after {} attempt(s): {error}",
                entry.command_type, entry.step, entry.attempts
            ),
        );
        return Ok(Some(Decision::new(change, true)));
    }
    if record.status != SagaStatus::Compensating {
        return Ok(None);
    }
    let mut change = new_change(record, false);
    let mut changed = false;
    if let Some(error) = error {
        for s in &mut change.record.completed_steps {
            if s.step == entry.step {
                s.status = StepStatus::CompensationFailed;
            }
        }
        let note = format!(
            "compensating command `{}` of step {} failed after {} attempt(s): {error}",
            entry.command_type, entry.step, entry.attempts
        );
        change.record.error_message = Some(crate::store::limits::stored_error_text(
            match change.record.error_message.take() {
                Some(before) => format!("{before}; {note}"),
                None => note,
            },
        ));
        changed = true;
    }
    if progress.outstanding == 0 {
        for s in &mut change.record.completed_steps {
            if s.step == entry.step && s.status == StepStatus::Compensating {
                s.status = StepStatus::Compensated;
            }
        }
        let busy = change
            .record
            .completed_steps
            .iter()
            .any(|s| s.status == StepStatus::Compensating);
        if !busy {
            let data = data_of::<S>(&change.record)?;
            advance_compensation::<S>(&mut change, &data)?;
        }
        changed = true;
    }
    Ok(changed.then(|| Decision::new(change, false)))
}

fn new_change(record: SagaRecord, insert: bool) -> SagaChange {
    SagaChange {
        record,
        insert,
        deadline: None,
        commands: Vec::new(),
        cancel_pending: false,
    }
}

fn state_of<S: Saga>(record: &SagaRecord) -> Result<S, SagaError> {
    S::from_state_name(&record.state).ok_or_else(|| SagaError::UnknownState {
        saga_type: record.saga_type.clone(),
        saga_id: record.saga_id,
        state: record.state.clone(),
    })
}

/// Saga data and commands as stored: with the `personal` feature, personal
/// values wrapped so that forgetting their subject can find them
/// ([`to_marked_value`](crate::personal::to_marked_value)).
fn to_stored_value<T: serde::Serialize>(value: &T) -> serde_json::Result<serde_json::Value> {
    #[cfg(feature = "personal")]
    return crate::personal::to_marked_value(value);
    #[cfg(not(feature = "personal"))]
    serde_json::to_value(value)
}

fn data_of<S: Saga>(record: &SagaRecord) -> Result<S::Data, SagaError> {
    S::Data::deserialize(&record.data).map_err(|source| SagaError::Data {
        saga_type: record.saga_type.clone(),
        saga_id: record.saga_id,
        action: "deserialize",
        source,
    })
}

fn set_data<S: Saga>(change: &mut SagaChange, data: &S::Data) -> Result<(), SagaError> {
    change.record.subject = data.subject();
    if let Some(subject) = &change.record.subject {
        // the subject comes from the application's data: refused before
        // any store sees it (Postgres text cannot hold a NUL), the same on
        // every backend, and the event that led here is parked
        crate::store::limits::check_subject(subject).map_err(|mut e| {
            e.field = "saga subject";
            e
        })?;
    }
    change.record.data = to_stored_value(data).map_err(|source| SagaError::Data {
        saga_type: change.record.saga_type.clone(),
        saga_id: change.record.saga_id,
        action: "serialize",
        source,
    })?;
    // what no store can hold is refused the same on every backend (an
    // event failure: the event is parked)
    crate::store::limits::check_json_value("saga data", &change.record.data)?;
    Ok(())
}

/// The saga enters `state`: completes on a terminal state, else issues the
/// state's commands (a new step) and arms its timeout.
fn enter<S: Saga>(
    change: &mut SagaChange,
    state: S,
    data: &S::Data,
    first: bool,
) -> Result<(), SagaError> {
    let record = &mut change.record;
    if !first {
        record.current_step += 1;
    }
    record.state = state.state_name().to_owned();
    change.deadline = None;
    if state.is_terminal() {
        record.status = SagaStatus::Completed;
        return Ok(());
    }
    let step = record.current_step;
    let commands = state.commands(data);
    if !commands.is_empty() {
        for (index, command) in commands.into_iter().enumerate() {
            change
                .commands
                .push(outbox::<S>(record.saga_id, step, index, false, command)?);
        }
        record.completed_steps.push(StepRecord {
            step,
            state: state.state_name().to_owned(),
            status: StepStatus::Done,
        });
    }
    change.deadline = state.timeout().map(|(after, _)| after);
    Ok(())
}

/// The saga starts compensating: its forward commands never attempted are
/// cancelled with the save; which steps it undoes is decided by
/// [`Decision::finish`], once the store said which steps were attempted.
fn start_compensation(change: &mut SagaChange, reason: String) {
    change.record.status = SagaStatus::Compensating;
    change.record.error_message = Some(crate::store::limits::stored_error_text(reason));
    change.deadline = None;
    change.cancel_pending = true;
}

/// Issues the compensation of the newest step not yet compensated, or ends
/// the saga as failed when there is none left.
fn advance_compensation<S: Saga>(change: &mut SagaChange, data: &S::Data) -> Result<(), SagaError> {
    change.deadline = None;
    loop {
        let record = &mut change.record;
        let Some(index) = record
            .completed_steps
            .iter()
            .rposition(|s| s.status == StepStatus::Done)
        else {
            record.status = SagaStatus::Failed;
            return Ok(());
        };
        let state = S::from_state_name(&record.completed_steps[index].state).ok_or_else(|| {
            SagaError::UnknownState {
                saga_type: record.saga_type.clone(),
                saga_id: record.saga_id,
                state: record.completed_steps[index].state.clone(),
            }
        })?;
        let step = record.completed_steps[index].step;
        let commands = state.compensation(data);
        if commands.is_empty() {
            record.completed_steps[index].status = StepStatus::Compensated;
            continue;
        }
        record.completed_steps[index].status = StepStatus::Compensating;
        let saga_id = record.saga_id;
        for (i, command) in commands.into_iter().enumerate() {
            change
                .commands
                .push(outbox::<S>(saga_id, step, i, true, command)?);
        }
        return Ok(());
    }
}

fn outbox<S: Saga>(
    saga_id: Uuid,
    step: u32,
    index: usize,
    compensation: bool,
    command: NamedCommand<S::Command>,
) -> Result<OutboxCommand, SagaError> {
    let value = to_stored_value(&command.command).map_err(|source| SagaError::Command {
        saga_type: S::NAME.to_owned(),
        command_type: command.command_type.to_owned(),
        source,
    })?;
    crate::store::limits::check_json_value("saga command", &value)?;
    Ok(OutboxCommand {
        idempotency_key: idempotency_key(saga_id, step, index, compensation),
        command_type: command.command_type.to_owned(),
        command: value,
        step,
        compensation,
        trace: crate::trace::current(),
    })
}

/// `{saga}/{step}/{index}` for a step's commands, `{saga}/{step}/undo/{index}`
/// for its compensation: stable across retries, restarts and instances.
pub(crate) fn idempotency_key(
    saga_id: Uuid,
    step: u32,
    index: usize,
    compensation: bool,
) -> String {
    if compensation {
        format!("{saga_id}/{step}/undo/{index}")
    } else {
        format!("{saga_id}/{step}/{index}")
    }
}
