//! Sagas and outbox commands as stored: what a [`SagaStore`](super::SagaStore)
//! reads and writes.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::LogPosition;

/// Where a saga is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SagaStatus {
    /// Recorded but not started. annals starts sagas directly in
    /// [`Running`](SagaStatus::Running); the status exists because the saga
    /// table allows it, for rows written by other tools.
    Pending,
    /// Moving through its states.
    Running,
    /// A step failed or timed out: the compensations of the steps done so
    /// far are being issued, in reverse order.
    Compensating,
    /// Reached a terminal state.
    Completed,
    /// Failed, and every step that did something was compensated (or its
    /// compensation failed too: see the saga's error message).
    Failed,
}

impl SagaStatus {
    /// Every status.
    pub const ALL: [SagaStatus; 5] = [
        SagaStatus::Pending,
        SagaStatus::Running,
        SagaStatus::Compensating,
        SagaStatus::Completed,
        SagaStatus::Failed,
    ];

    /// The stored name (`running`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            SagaStatus::Pending => "pending",
            SagaStatus::Running => "running",
            SagaStatus::Compensating => "compensating",
            SagaStatus::Completed => "completed",
            SagaStatus::Failed => "failed",
        }
    }

    /// The status with this stored name.
    pub fn parse(name: &str) -> Option<SagaStatus> {
        SagaStatus::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// Whether the saga has ended (completed or failed).
    pub fn is_finished(self) -> bool {
        matches!(self, SagaStatus::Completed | SagaStatus::Failed)
    }
}

impl fmt::Display for SagaStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What became of one step (a state whose entry issued commands).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    /// Its commands were issued; on failure it will be compensated.
    Done,
    /// Every delivery of its commands failed: it did nothing, so it is not
    /// compensated.
    Failed,
    /// Its compensating commands are being delivered.
    Compensating,
    /// Its compensating commands were delivered.
    Compensated,
    /// A compensating command could not be delivered after its last
    /// attempt (see the saga's error message).
    CompensationFailed,
}

/// One step of a saga, in the order the steps were taken.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRecord {
    /// The step number: the saga's `current_step` when it entered the state.
    pub step: u32,
    /// The state whose entry issued the step's commands.
    pub state: String,
    /// What became of the step.
    pub status: StepStatus,
}

/// The key of the wrapper a personal value is stored in where no schema
/// says which fields are personal (saga data, saga commands):
/// `{"$personal": value}`. With the `personal` feature the saga engine
/// writes `Personal<T>` values so (`personal::to_marked_value`), and
/// [`forget_marked`] finds them by it.
pub const MARKED: &str = "$personal";

/// Replaces every `{"$personal": value}` inside `value` with the forgotten
/// marker `{"$forgotten": true}`; returns how many it replaced. Saga
/// stores call it to forget a subject
/// ([`SagaStore::forget_subject`](super::SagaStore::forget_subject)).
pub fn forget_marked(value: &mut serde_json::Value) -> usize {
    match value {
        serde_json::Value::Object(map) if map.len() == 1 && map.contains_key(MARKED) => {
            *value = serde_json::json!({ "$forgotten": true });
            1
        }
        serde_json::Value::Object(map) => map.values_mut().map(forget_marked).sum(),
        serde_json::Value::Array(items) => items.iter_mut().map(forget_marked).sum(),
        _ => 0,
    }
}

/// A saga instance as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct SagaRecord {
    /// The instance's id.
    pub saga_id: Uuid,
    /// The saga type's name ([`Saga::NAME`](super::Saga::NAME)).
    pub saga_type: String,
    /// The value the saga's events are correlated by.
    pub correlation_id: String,
    /// The current state's name.
    pub state: String,
    /// The saga's data, as JSON.
    pub data: serde_json::Value,
    /// Where the saga is in its life.
    pub status: SagaStatus,
    /// The number of the current step: 0 in the start state, one more for
    /// every state entered since.
    pub current_step: u32,
    /// The steps that issued commands, in the order they were taken.
    pub completed_steps: Vec<StepRecord>,
    /// The optimistic-locking version: every write expects it and bumps it.
    pub version: u64,
    /// When the current state's timeout fires (`None`: no timeout armed).
    pub deadline_at: Option<DateTime<Utc>>,
    /// When the saga started.
    pub started_at: DateTime<Utc>,
    /// When the saga was last written.
    pub updated_at: DateTime<Utc>,
    /// When the saga ended (completed or failed).
    pub completed_at: Option<DateTime<Utc>>,
    /// Why the saga is compensating or failed, or the last failed delivery.
    pub error_message: Option<String>,
    /// Failed command deliveries that were retried.
    pub retry_count: u32,
    /// The last event the saga applied: an event at or before it is a
    /// duplicate delivery and is ignored.
    pub last_event: LogPosition,
    /// Whose personal data the saga holds
    /// ([`SagaData::subject`](super::SagaData::subject)): forgetting the
    /// subject erases it from the saga's data and commands
    /// ([`SagaStore::forget_subject`](super::SagaStore::forget_subject)).
    pub subject: Option<String>,
}

impl SagaRecord {
    /// The steps, newest first: the order their compensations run in.
    pub fn steps_newest_first(&self) -> impl Iterator<Item = &StepRecord> {
        self.completed_steps.iter().rev()
    }
}

/// A command to record in the outbox with a saga's change.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct OutboxCommand {
    /// Unique per command: derived from the saga id, the step and the
    /// command's place in it. A receiver that remembers the keys it applied
    /// applies each command once, however often it is delivered.
    pub idempotency_key: String,
    /// The command's variant name.
    pub command_type: String,
    /// The serialized command.
    pub command: serde_json::Value,
    /// The step that issued it.
    pub step: u32,
    /// Whether it is a compensating command.
    pub compensation: bool,
    /// The trace context of the saga step that issued it (feature `otel`;
    /// see [`crate::trace`]): the worker's dispatch continues that trace.
    pub trace: Option<crate::trace::TraceContext>,
}

/// A saga's new state, decided by the saga engine, for a store to write in
/// one transaction: the row (with an optimistic version check), the deadline
/// and the outbox commands.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct SagaChange {
    /// The saga as it is to be stored. `version` is the version it was read
    /// at (0 for a new saga); the store writes only if the stored version is
    /// still that one, and bumps it.
    pub record: SagaRecord,
    /// Whether the saga is new (insert) rather than read (update).
    pub insert: bool,
    /// The new deadline, from now (`None`: no timeout armed).
    pub deadline: Option<Duration>,
    /// Commands to record in the outbox.
    pub commands: Vec<OutboxCommand>,
    /// Whether the saga started compensating: its forward commands that
    /// were never attempted are cancelled (they did nothing). Those already
    /// attempted (in flight, or waiting for a retry) run their course, and
    /// stores do not hand out a saga's compensating commands while it has
    /// such a forward command unresolved, so a compensation never overtakes
    /// what it undoes.
    pub cancel_pending: bool,
}

/// A command in the outbox (built by stores from their rows).
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxEntry {
    /// The outbox row's id (increasing in insertion order).
    pub id: u64,
    /// The saga that issued it.
    pub saga_id: Uuid,
    /// The saga's type.
    pub saga_type: String,
    /// See [`OutboxCommand::idempotency_key`].
    pub idempotency_key: String,
    /// The command's variant name.
    pub command_type: String,
    /// The serialized command.
    pub command: serde_json::Value,
    /// The step that issued it.
    pub step: u32,
    /// Whether it is a compensating command.
    pub compensation: bool,
    /// See [`OutboxCommand::trace`].
    pub trace: Option<crate::trace::TraceContext>,
    /// Delivery attempts started so far (a claimed entry counts the attempt
    /// it was claimed for).
    pub attempts: u32,
    /// The last failed attempt's error.
    pub last_error: Option<String>,
    /// When it was recorded.
    pub created_at: DateTime<Utc>,
    /// When it was delivered (`None`: not yet).
    pub dispatched_at: Option<DateTime<Utc>>,
    /// When it was given up: its last attempt failed, or it was cancelled
    /// because its saga started compensating before it was ever attempted.
    pub failed_at: Option<DateTime<Utc>>,
    /// The earliest time of its next attempt.
    pub next_attempt_at: DateTime<Utc>,
}

/// What happened to one delivery attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum CommandOutcome {
    /// The command bus accepted the command.
    Delivered,
    /// The attempt failed; try again after the delay.
    Retry {
        /// The bus's error.
        error: String,
        /// The backoff before the next attempt.
        after: Duration,
    },
    /// The last attempt failed, or the command cannot be delivered at all:
    /// give it up.
    Abandoned {
        /// The bus's (or decoder's) error.
        error: String,
    },
}

/// The outbox as a saga's engine needs to see it after a command's outcome
/// was recorded.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SagaProgress {
    /// The saga's commands neither delivered nor given up.
    pub outstanding: u64,
    /// The delivered commands of the outcome's step (forward or
    /// compensating, as the command was).
    pub step_delivered: u64,
    /// The steps with a forward command that may have taken effect, as
    /// [`SagaStore::attempted_steps`](super::SagaStore::attempted_steps)
    /// gives them (for [`Decision::finish`](super::Decision::finish)
    /// when a forward command given up starts compensation).
    pub attempted_steps: Vec<u32>,
}
