//! Sagas: long-running processes that react to events, keep state, issue
//! commands and undo what they did when a later step fails.
//!
//! A saga is a state machine over events. `#[derive(Saga)]` on an enum of
//! unit variants (its states) declares the machine's shape in attributes and
//! checks it at compile time; the saga's data is a separate type
//! ([`SagaData`]) that folds the events the saga handles, and builds the
//! commands the states issue ([`Issue`]).
//!
//! At run time the pieces are:
//!
//! - [`SagaProjection`]: the event side, a [`Projection`](crate::Projection)
//!   that routes each event of the global log to its saga instance (by
//!   correlation id) and saves the saga's new state and the commands it
//!   issues in the projection runner's transaction: the state, the commands
//!   (a transactional outbox) and the checkpoint commit together.
//! - [`SagaWorker`]: dispatches the outbox through the application's
//!   [`CommandBus`] (at least once, with an idempotency key per command,
//!   retried with [`RetryPolicy`](crate::RetryPolicy) backoff; after the last
//!   attempt the saga compensates), pauses behind a
//!   [`CircuitBreaker`](crate::breaker::CircuitBreaker) while the receiving service
//!   is down (a [`HandlerError::dependency`](crate::HandlerError::dependency)
//!   never makes a saga compensate), and fires timeouts from their
//!   persisted deadlines.
//! - [`SagaStore`]: where sagas and their outbox live: [`InMemorySagaStore`],
//!   or the Postgres backend's `PgSagaStore`.
//!
//! Compensation runs the compensating commands of the steps that did
//! something, in reverse order, one step at a time: the next step's
//! compensation is issued once every command of the previous one was
//! delivered.

mod engine;
mod error;
mod memory;
mod projection;
mod record;
mod store;
mod worker;

use std::fmt;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::event::Envelope;
use crate::Event;

pub use engine::{Decision, SagaEngine};
pub use error::SagaError;
pub use memory::InMemorySagaStore;
pub use projection::SagaProjection;
pub use record::{
    forget_marked, CommandOutcome, OutboxCommand, OutboxEntry, SagaChange, SagaProgress,
    SagaRecord, SagaStatus, StepRecord, StepStatus, MARKED,
};
pub use store::SagaStore;
pub use worker::{CommandBus, Dispatch, SagaWorker, SagaWorkerHandle, WorkerRound};

/// A saga's state machine. Implemented by `#[derive(Saga)]` on an enum of
/// unit variants, one per state; see the `annals` crate docs for the
/// attributes and the checks the derive makes.
///
/// Every method is generated from the declared shape: a saga only moves
/// along the transitions its attributes declare.
pub trait Saga: Copy + Eq + fmt::Debug + Send + Sync + 'static {
    /// The saga type's stable name (`booking`): the `saga_type` of its rows
    /// and the label of its metrics.
    const NAME: &'static str;

    /// The events the saga reads.
    type Event: Event;
    /// The commands the saga issues: an enum with one newtype variant per
    /// command, serialized into the outbox.
    type Command: Serialize + DeserializeOwned + Send + Sync + 'static;
    /// The saga's data: folded from the events it handles, the source of
    /// every command it issues.
    type Data: SagaData<Event = Self::Event>;

    /// The declared shape, for documentation and tooling.
    fn definition() -> &'static SagaDefinition;

    /// The state's name (its variant name), as stored.
    fn state_name(self) -> &'static str;

    /// The state with this stored name, if the code has it.
    fn from_state_name(name: &str) -> Option<Self>;

    /// The correlation id of an event the saga handles: which saga instance
    /// the event belongs to (`None`: the saga does not handle this event,
    /// or the event does not name an instance).
    ///
    /// It receives the whole envelope, so a saga can be correlated by a
    /// field of the payload (`#[saga(correlate = lead_id)]`), by the
    /// envelope (`correlate = envelope.aggregate_id`, `envelope.stream_id`,
    /// `envelope.correlation_id` from the metadata), or by a function
    /// (`correlate = with(path::to::fn)`), for every event or per event.
    fn correlation_id(event: &Envelope<Self::Event>) -> Option<String>;

    /// The state a saga starts in, if `event` starts one.
    fn start(event: &Self::Event) -> Option<Self>;

    /// Where `event` takes a saga in this state (`None`: the state does not
    /// handle it, and the event is ignored).
    fn on(self, event: &Self::Event) -> Option<Target<Self>>;

    /// The state's timeout: how long the saga may stay in it, and where it
    /// goes when the time is up.
    fn timeout(self) -> Option<(Duration, Target<Self>)>;

    /// Whether the saga ends (completed) when it enters this state.
    fn is_terminal(self) -> bool;

    /// The commands the saga issues when it enters this state.
    fn commands(self, data: &Self::Data) -> Vec<NamedCommand<Self::Command>>;

    /// The commands that undo what this state's commands did (none for a
    /// state declared `compensate = none`).
    fn compensation(self, data: &Self::Data) -> Vec<NamedCommand<Self::Command>>;
}

/// The data a saga carries from event to event.
///
/// A new saga starts from `Default` and folds the start event; every event
/// that moves the saga (to another state, or to compensation) is folded
/// before the saga enters its next state, so the commands of that state see
/// it. Events that do not move the saga are not folded. The engine folds
/// through [`apply_envelope`](Self::apply_envelope), which passes the
/// payload to [`apply`](Self::apply) unless you implement it to read the
/// envelope as well.
///
/// ```
/// use annals::SagaData;
/// # #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
/// # struct SlotReserved { lead_id: u64, slot: u32 }
/// # #[derive(Debug, Clone, PartialEq, annals::Event)]
/// # enum ClinicEvent { SlotReserved(SlotReserved) }
/// #[derive(Default, serde::Serialize, serde::Deserialize)]
/// struct Booking { lead_id: u64, slot: Option<u32> }
///
/// impl SagaData for Booking {
///     type Event = ClinicEvent;
///     fn apply(&mut self, event: &ClinicEvent) {
///         match event {
///             ClinicEvent::SlotReserved(e) => {
///                 self.lead_id = e.lead_id;
///                 self.slot = Some(e.slot);
///             }
///         }
///     }
/// }
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be a saga's data: it must implement `annals::SagaData`",
    label = "not saga data",
    note = "implement `SagaData` for it (its `apply` folds the saga's events); it must also be `Default`, `Serialize` and `Deserialize`"
)]
pub trait SagaData: Default + Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The events the saga reads (the saga's `event = ...`).
    type Event: Event;

    /// Folds an event that moves the saga. Must not fail: events are facts.
    fn apply(&mut self, event: &Self::Event);

    /// Folds an event with its envelope; the engine calls this. By default
    /// it folds the payload with [`apply`](Self::apply). Implement it to
    /// read the envelope too, e.g. the aggregate id of a saga correlated
    /// with `correlate = envelope.aggregate_id`, whose events need not
    /// carry it:
    ///
    /// ```
    /// # use annals::{Envelope, SagaData};
    /// # #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
    /// # struct Placed { total: u32 }
    /// # #[derive(Debug, Clone, PartialEq, annals::Event)]
    /// # enum OrderEvent { Placed(Placed) }
    /// #[derive(Default, serde::Serialize, serde::Deserialize)]
    /// struct Fulfilment { order_id: String, total: u32 }
    ///
    /// impl SagaData for Fulfilment {
    ///     type Event = OrderEvent;
    ///     fn apply(&mut self, event: &OrderEvent) {
    ///         match event {
    ///             OrderEvent::Placed(e) => self.total = e.total,
    ///         }
    ///     }
    ///     fn apply_envelope(&mut self, event: &Envelope<OrderEvent>) {
    ///         if let OrderEvent::Placed(_) = event.payload {
    ///             self.order_id = event.aggregate_id().to_owned();
    ///         }
    ///         self.apply(&event.payload);
    ///     }
    /// }
    /// ```
    fn apply_envelope(&mut self, event: &Envelope<Self::Event>) {
        self.apply(&event.payload);
    }

    /// Whose personal data the saga holds, if any: its data's and its
    /// commands' `Personal<T>` fields (feature `personal`). The store
    /// records it with the saga; forgetting the subject
    /// ([`SagaStore::forget_subject`], or the `personal::SagaEraser` projection on
    /// `subject.forgotten`) turns those fields into `Personal::Forgotten`
    /// in the saga's data and in every command it issued. `None` (the
    /// default): nobody's.
    fn subject(&self) -> Option<String> {
        None
    }
}

/// How a saga's data builds one command payload `P`: one implementation per
/// payload type of the commands (and compensating commands) the saga
/// issues. Commands whose variants wrap the same payload type (say
/// `ReserveSlot(LeadId)` and `ReleaseSlot(LeadId)`) share its
/// implementation; give a command its own payload type to build it
/// differently.
///
/// ```
/// use annals::Issue;
/// # #[derive(Default)] struct Booking { lead_id: u64 }
/// struct ReserveSlot { lead_id: u64 }
///
/// impl Issue<ReserveSlot> for Booking {
///     fn issue(&self) -> ReserveSlot {
///         ReserveSlot { lead_id: self.lead_id }
///     }
/// }
/// ```
#[diagnostic::on_unimplemented(
    message = "the saga data `{Self}` cannot build `{P}`, the payload of a command the saga issues",
    label = "`{Self}` does not implement `Issue<{P}>`",
    note = "implement `annals::Issue<{P}> for {Self}`: it builds the command's payload from the saga's data"
)]
pub trait Issue<P> {
    /// Builds the command from the saga's data.
    fn issue(&self) -> P;
}

/// A value a saga can be correlated by: the event field that names the saga
/// instance (a lead id, an order number). Stored as text.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be a saga's correlation id",
    label = "not a correlation id",
    note = "correlation ids are strings, UUIDs or integers; implement `annals::saga::CorrelationId` to use another type"
)]
pub trait CorrelationId {
    /// The id as stored in the saga table.
    fn correlation_id(&self) -> String;
}

impl CorrelationId for String {
    fn correlation_id(&self) -> String {
        self.clone()
    }
}

impl CorrelationId for str {
    fn correlation_id(&self) -> String {
        self.to_owned()
    }
}

impl CorrelationId for uuid::Uuid {
    fn correlation_id(&self) -> String {
        self.to_string()
    }
}

macro_rules! integer_correlation_ids {
    ($($t:ty)*) => {$(
        impl CorrelationId for $t {
            fn correlation_id(&self) -> String {
                self.to_string()
            }
        }
    )*};
}
integer_correlation_ids!(u8 u16 u32 u64 u128 usize i8 i16 i32 i64 i128 isize);

/// Where a transition or a timeout takes a saga.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target<S> {
    /// Into this state.
    State(S),
    /// The saga failed: compensate the steps done so far, in reverse order,
    /// then end as [`SagaStatus::Failed`].
    Fail,
}

/// A command with the name of its variant (the outbox's `command_type`).
#[derive(Debug, Clone, PartialEq)]
pub struct NamedCommand<C> {
    /// The command enum's variant name, e.g. `ReserveSlot`.
    pub command_type: &'static str,
    /// The command.
    pub command: C,
}

/// A saga's declared shape, as `#[derive(Saga)]` read it from the
/// attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SagaDefinition {
    /// The saga type's name.
    pub name: &'static str,
    /// The states, in declaration order.
    pub states: &'static [StateDefinition],
}

/// One state of a [`SagaDefinition`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateDefinition {
    /// The state's name.
    pub name: &'static str,
    /// The event that starts a saga in this state (the start state only).
    pub start_on: Option<&'static str>,
    /// Whether the saga completes when it enters this state.
    pub terminal: bool,
    /// `(event, target)`: the events that move the saga out of this state.
    pub transitions: &'static [(&'static str, Target<&'static str>)],
    /// How long the saga may stay, and where it goes then.
    pub timeout: Option<(Duration, Target<&'static str>)>,
    /// The commands issued on entering the state.
    pub issues: &'static [&'static str],
    /// The commands that undo them (none for `compensate = none`).
    pub compensates: &'static [&'static str],
}

impl fmt::Display for SagaDefinition {
    /// One line per state: `Reserving (start on LeadQualified): issues
    /// ReserveSlot, compensated by ReleaseSlot; SlotReserved -> Confirming;
    /// after 30s -> fail`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn target(t: &Target<&str>) -> String {
            match t {
                Target::State(s) => (*s).to_owned(),
                Target::Fail => "fail (compensate)".to_owned(),
            }
        }
        for (i, s) in self.states.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}", s.name)?;
            if let Some(e) = s.start_on {
                write!(f, " (started by {e})")?;
            }
            if s.terminal {
                write!(f, ": terminal")?;
                continue;
            }
            let mut parts = Vec::new();
            if !s.issues.is_empty() && s.compensates.is_empty() {
                parts.push(format!("issues {}, not compensated", s.issues.join(" + ")));
            } else if !s.issues.is_empty() {
                parts.push(format!(
                    "issues {}, compensated by {}",
                    s.issues.join(" + "),
                    s.compensates.join(" + ")
                ));
            }
            for (event, t) in s.transitions {
                parts.push(format!("{event} -> {}", target(t)));
            }
            if let Some((d, t)) = &s.timeout {
                parts.push(format!("after {d:?} -> {}", target(t)));
            }
            write!(f, ": {}", parts.join("; "))?;
        }
        Ok(())
    }
}

/// A command variant's constructor, which builds its command from the
/// saga's data: how `#[derive(Saga)]` calls [`Issue`]. Implemented for the
/// constructor's fn pointer, so that the payload type is known when the
/// `Issue` bound is checked (and named in its error). Not public API; it
/// lives here rather than in the macros' support module so that compiler
/// messages name it by this path.
#[doc(hidden)]
pub trait BuildCommand<D> {
    /// The command enum.
    type Command;
    /// Builds the payload (`Issue`) and wraps it.
    fn build(self, data: &D) -> Self::Command;
}

impl<P, C, D: Issue<P>> BuildCommand<D> for fn(P) -> C {
    type Command = C;
    fn build(self, data: &D) -> C {
        self(data.issue())
    }
}

/// Helpers for the code `#[derive(Saga)]` generates.
pub(crate) mod private {
    pub use super::{
        BuildCommand, CorrelationId, Issue, NamedCommand, Saga, SagaData, SagaDefinition,
        StateDefinition, Target,
    };
    pub use crate::event::Envelope;
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a test that unwraps fails loudly, which is the point
mod tests;
