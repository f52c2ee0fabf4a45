use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize as _;
use tracing::Instrument as _;
use uuid::Uuid;

use super::engine::{self, FailCause};
use super::projection::record_change;
use super::{CommandOutcome, OutboxEntry, Saga, SagaError, SagaStore};
use crate::metrics as m;
use crate::store::limits::stored_error_text;
use crate::{
    breaker::BreakerState, breaker::CircuitBreaker, breaker::CircuitBreakerRegistry,
    handler::FailureKind, shutdown::ShutdownTrigger, HandlerError, RetryPolicy, Shutdown,
};

/// Where a saga's commands go: the application's side of the outbox.
///
/// Delivery is at least once: a command is dispatched again when the
/// process died before its delivery was recorded, or when a dispatch
/// returned an error. Every dispatch of one command carries the same
/// [`idempotency_key`](Dispatch::idempotency_key); a receiver that
/// remembers the keys it applied applies each command once.
///
/// Return `Ok` once the command was accepted (applied, or queued durably).
/// An error ([`HandlerError::event`], or any error through `?`) is retried
/// with the worker's [`RetryPolicy`]; after the last attempt the command is
/// given up and the saga compensates. A [`HandlerError::dependency`] (the
/// receiving service is down) never gives a command up: it counts against
/// the worker's circuit breaker, and while the breaker is open the worker
/// claims no commands, so an outage pauses the sagas instead of
/// compensating them (a saga's own `timeout` bounds how long it waits).
///
/// ```
/// use annals::{CommandBus, saga::Dispatch, HandlerError};
/// # #[derive(Debug, serde::Serialize, serde::Deserialize)] enum ClinicCommand { ReserveSlot(u64) }
/// struct Scheduler;
///
/// impl CommandBus<ClinicCommand> for Scheduler {
///     async fn dispatch(&self, d: Dispatch<ClinicCommand>) -> Result<(), HandlerError> {
///         // call the scheduling service with d.command, passing
///         // d.idempotency_key so that it applies the command once
///         println!("{} {:?}", d.idempotency_key, d.command);
///         Ok(())
///     }
/// }
/// ```
pub trait CommandBus<C>: Send + Sync + 'static {
    /// Delivers one command.
    fn dispatch(
        &self,
        dispatch: Dispatch<C>,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send;
}

/// One delivery attempt of a saga's command.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Dispatch<C> {
    /// The tenant of the saga that issued it: the bus executes the
    /// command in this tenant.
    pub tenant_id: crate::TenantId,
    /// The command.
    pub command: C,
    /// The same for every delivery of this command, unique across commands:
    /// derived from the saga id and the step (`{saga}/{step}/{n}`, and
    /// `{saga}/{step}/undo/{n}` for compensations).
    pub idempotency_key: String,
    /// The command's variant name.
    pub command_type: String,
    /// The saga that issued it.
    pub saga_id: Uuid,
    /// The saga's type.
    pub saga_type: &'static str,
    /// Whether it undoes an earlier step.
    pub compensation: bool,
    /// This attempt's number, from 1.
    pub attempt: u32,
    /// The trace context of the saga step that issued the command (feature
    /// `otel`). The bus runs inside the worker's `send` span, a child of
    /// that step, so the commands it executes in this process join the
    /// trace; to carry the trace to another service, send
    /// `TraceContext::current()` (the `send` span's context) as its
    /// `traceparent` header.
    pub trace: Option<crate::trace::TraceContext>,
}

/// What one [`SagaWorker::run_once`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WorkerRound {
    /// Sagas whose timeout fired.
    pub timeouts: usize,
    /// Commands delivered.
    pub delivered: usize,
    /// Delivery attempts that failed (retried or given up).
    pub failed: usize,
}

impl WorkerRound {
    /// Whether the round found anything to do.
    pub fn is_idle(&self) -> bool {
        self.timeouts == 0 && self.delivered == 0 && self.failed == 0
    }
}

/// Delivers saga `S`'s outbox through a [`CommandBus`] and fires its
/// timeouts.
///
/// Run one or several (in one process or many, on one database): commands
/// are claimed with `FOR UPDATE SKIP LOCKED` and a lease, timeouts with
/// `SKIP LOCKED` on the saga rows, so no command is claimed twice at once
/// and no saga is worked on by two instances at once. After a restart it
/// picks up where the last one stopped: undelivered commands (a claim whose
/// lease ran out is claimed again) and timeouts whose deadline passed while
/// nothing ran.
///
/// ```no_run
/// # async fn demo<S: annals::Saga, B: annals::CommandBus<S::Command>>(bus: B) {
/// use std::time::Duration;
/// use annals::{InMemorySagaStore, RetryPolicy, SagaWorker};
///
/// let worker = SagaWorker::<S, _, _>::new(InMemorySagaStore::new(), bus)
///     .retry_policy(RetryPolicy::new(5).initial_delay(Duration::from_millis(200)))
///     .poll_interval(Duration::from_millis(100));
/// let handle = worker.spawn();
/// // ... on shutdown:
/// handle.stop().await;
/// # }
/// ```
#[derive(Debug)]
pub struct SagaWorker<S, St, B> {
    store: St,
    bus: B,
    retry: RetryPolicy,
    batch_size: usize,
    lease: Duration,
    poll: Duration,
    timeout_scan: Duration,
    breaker: Arc<CircuitBreaker>,
    _saga: PhantomData<fn() -> S>,
}

impl<S, St, B> SagaWorker<S, St, B>
where
    S: Saga,
    St: SagaStore,
    B: CommandBus<S::Command>,
{
    /// A worker for saga `S` on `store`, delivering through `bus`, with the
    /// default [`RetryPolicy`], batches of 64, a 30 s lease, a 250 ms poll
    /// interval, a timeout scan every second, and a circuit breaker named
    /// [`breaker_name`](Self::breaker_name) in a registry of its own.
    pub fn new(store: St, bus: B) -> Self {
        SagaWorker {
            breaker: CircuitBreakerRegistry::new().get(&Self::breaker_name()),
            store,
            bus,
            retry: RetryPolicy::default(),
            batch_size: 64,
            lease: Duration::from_secs(30),
            poll: Duration::from_millis(250),
            timeout_scan: Duration::from_secs(1),
            _saga: PhantomData,
        }
    }

    /// How deliveries are retried: attempts in all, and the backoff between
    /// them (kept in the outbox's `next_attempt_at`, so it survives a
    /// restart).
    pub fn retry_policy(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// Commands claimed (and timeouts fired) per round (at least 1).
    pub fn batch_size(mut self, n: usize) -> Self {
        self.batch_size = n.max(1);
        self
    }

    /// How long a claimed command is hidden from other claims: longer than
    /// a dispatch takes, or a slow dispatch is delivered twice.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// How long [`run`](Self::run) sleeps after a round with nothing to do.
    pub fn poll_interval(mut self, poll: Duration) -> Self {
        self.poll = poll;
        self
    }

    /// How often [`run`](Self::run) looks for timeouts that are due: a
    /// timeout fires up to this late. Deadlines are stored, so this only
    /// trades precision for queries.
    pub fn timeout_scan_interval(mut self, interval: Duration) -> Self {
        self.timeout_scan = interval;
        self
    }

    /// Uses a shared circuit-breaker registry; the worker's breaker is the
    /// one named [`breaker_name`](Self::breaker_name) (configure it there).
    pub fn breakers(mut self, registry: CircuitBreakerRegistry) -> Self {
        self.breaker = registry.get(&Self::breaker_name());
        self
    }

    /// The name of the breaker that guards the command bus:
    /// `saga:{saga name}`.
    pub fn breaker_name() -> String {
        format!("saga:{}", S::NAME)
    }

    /// The circuit breaker that guards the command bus.
    pub fn breaker(&self) -> &Arc<CircuitBreaker> {
        &self.breaker
    }

    /// The store.
    pub fn store(&self) -> &St {
        &self.store
    }

    /// The command bus.
    pub fn bus(&self) -> &B {
        &self.bus
    }

    /// Fires the timeouts that are due (one batch). Returns how many sagas
    /// moved.
    pub async fn fire_timeouts(&self) -> Result<usize, SagaError> {
        let fired = self
            .store
            .fire_due_timeouts(S::NAME, self.batch_size, |saga, attempted| {
                let before = saga.status;
                let change = engine::on_timeout::<S>(saga)?
                    .map(|d| d.finish(attempted))
                    .transpose()?;
                if let Some(change) = &change {
                    metrics::counter!(m::SAGA_TIMEOUTS_TOTAL, "saga" => S::NAME).increment(1);
                    record_change(S::NAME, Some(before), change, FailCause::Timeout);
                }
                Ok(change)
            })
            .await?;
        Ok(fired)
    }

    /// Claims one batch of due commands and delivers them. Returns the
    /// delivered and failed counts. While the breaker is open nothing is
    /// claimed; when half-open, one command is claimed as the trial.
    pub async fn dispatch(&self) -> Result<WorkerRound, SagaError> {
        let limit = match self.breaker.state() {
            BreakerState::Closed => self.batch_size,
            BreakerState::HalfOpen => 1,
            BreakerState::Open => return Ok(WorkerRound::default()),
        };
        let claimed = self
            .store
            .claim_commands(S::NAME, limit, self.lease)
            .await?;
        let mut round = WorkerRound::default();
        for entry in claimed {
            let outcome = self.deliver(&entry).await;
            match &outcome {
                CommandOutcome::Delivered => {
                    round.delivered += 1;
                    metrics::counter!(m::SAGA_COMMANDS_DISPATCHED_TOTAL, "saga" => S::NAME, "command" => entry.command_type.clone())
                        .increment(1);
                    if !entry.compensation {
                        // a forward delivery changes no saga: mark it at
                        // once, so a crash later in the batch does not
                        // deliver it again
                        self.store.mark_delivered(&[entry.id]).await?;
                        continue;
                    }
                }
                CommandOutcome::Retry { .. } => {
                    round.failed += 1;
                    m::record_retry(S::NAME);
                    metrics::counter!(m::SAGA_COMMAND_FAILURES_TOTAL, "saga" => S::NAME, "command" => entry.command_type.clone(), "outcome" => "retry")
                        .increment(1);
                }
                CommandOutcome::Abandoned { error } => {
                    round.failed += 1;
                    tracing::warn!(saga = S::NAME, saga_id = %entry.saga_id, command = %entry.command_type, attempts = entry.attempts, %error, "saga command given up");
                    metrics::counter!(m::SAGA_COMMAND_FAILURES_TOTAL, "saga" => S::NAME, "command" => entry.command_type.clone(), "outcome" => "abandoned")
                        .increment(1);
                }
            }
            self.record(&entry, outcome).await?;
        }
        Ok(round)
    }

    /// One attempt at one command.
    async fn deliver(&self, entry: &OutboxEntry) -> CommandOutcome {
        let command = match S::Command::deserialize(&entry.command) {
            Ok(c) => c,
            Err(e) => {
                return CommandOutcome::Abandoned {
                    error: format!(
                        "the stored command does not deserialize into `{}`: {e}",
                        std::any::type_name::<S::Command>()
                    ),
                }
            }
        };
        if let Err(open) = self.breaker.try_acquire() {
            // the breaker opened during this batch: leave the command for
            // the trial, without counting it as the command's failure
            return CommandOutcome::Retry {
                error: open.to_string(),
                after: open.retry_after,
            };
        }
        let dispatch = Dispatch {
            tenant_id: self.store.tenant_id().clone(),
            command,
            idempotency_key: entry.idempotency_key.clone(),
            command_type: entry.command_type.clone(),
            saga_id: entry.saga_id,
            saga_type: S::NAME,
            compensation: entry.compensation,
            attempt: entry.attempts,
            trace: entry.trace.clone(),
        };
        let span = crate::trace::dispatch_span(
            S::NAME,
            &entry.command_type,
            &entry.idempotency_key,
            entry.trace.as_ref(),
        );
        match self.bus.dispatch(dispatch).instrument(span).await {
            Ok(()) => {
                self.breaker.record_success();
                CommandOutcome::Delivered
            }
            Err(e) if e.kind() == FailureKind::Dependency => {
                // the service is down, not the command wrong: never given
                // up for it; the breaker paces the attempts
                self.breaker.record_failure();
                CommandOutcome::Retry {
                    error: e.to_string(),
                    after: self
                        .retry
                        .delay_after(entry.attempts.max(1))
                        .max(self.breaker.retry_after()),
                }
            }
            Err(e) => {
                // the service answered: it is up
                self.breaker.record_success();
                if self.retry.allows_retry_after(entry.attempts) {
                    CommandOutcome::Retry {
                        error: e.to_string(),
                        after: self.retry.delay_after(entry.attempts.max(1)),
                    }
                } else {
                    CommandOutcome::Abandoned {
                        error: e.to_string(),
                    }
                }
            }
        }
    }

    async fn record(&self, entry: &OutboxEntry, outcome: CommandOutcome) -> Result<(), SagaError> {
        // the bus's error text is stored: no NUL, bounded
        let outcome = match outcome {
            CommandOutcome::Retry { error, after } => CommandOutcome::Retry {
                error: stored_error_text(error),
                after,
            },
            CommandOutcome::Abandoned { error } => CommandOutcome::Abandoned {
                error: stored_error_text(error),
            },
            delivered => delivered,
        };
        let decided = outcome.clone();
        self.store
            .record_outcome(entry, outcome, move |saga, progress| {
                let before = saga.status;
                let change = engine::on_outcome::<S>(saga, entry, &decided, &progress)?
                    .map(|d| d.finish(&progress.attempted_steps))
                    .transpose()?;
                if let Some(change) = &change {
                    record_change(S::NAME, Some(before), change, FailCause::Command);
                }
                Ok(change)
            })
            .await
    }

    /// Refreshes the gauges: commands waiting for delivery, unfinished
    /// sagas per status.
    pub async fn update_gauges(&self) -> Result<(), SagaError> {
        let pending = self.store.pending_commands(S::NAME).await?;
        metrics::gauge!(m::SAGA_OUTBOX_PENDING, "saga" => S::NAME).set(pending as f64);
        let counts = self.store.count_unfinished(S::NAME).await?;
        for status in super::SagaStatus::ALL
            .into_iter()
            .filter(|s| !s.is_finished())
        {
            let n = counts
                .iter()
                .find(|(s, _)| *s == status)
                .map_or(0, |(_, n)| *n);
            metrics::gauge!(m::SAGAS_UNFINISHED, "saga" => S::NAME, "status" => status.as_str())
                .set(n as f64);
        }
        Ok(())
    }

    /// Fires due timeouts, then delivers one batch of commands.
    pub async fn run_once(&self) -> Result<WorkerRound, SagaError> {
        let timeouts = self.fire_timeouts().await?;
        let mut round = self.dispatch().await?;
        round.timeouts = timeouts;
        Ok(round)
    }

    /// Runs rounds until `shutdown` is triggered: back to back while there
    /// is work, one poll interval apart when there is none; timeouts are
    /// looked for every [timeout scan
    /// interval](Self::timeout_scan_interval). Errors (a
    /// database that went away) are logged and retried after the poll
    /// interval; the gauges are refreshed about every 5 s. A round in
    /// progress finishes before it returns.
    pub async fn run(&self, mut shutdown: Shutdown) {
        let mut last_gauges: Option<std::time::Instant> = None;
        let mut last_scan: Option<std::time::Instant> = None;
        while !shutdown.is_triggered() {
            let scan = last_scan.is_none_or(|t| t.elapsed() >= self.timeout_scan);
            let round = if scan {
                last_scan = Some(std::time::Instant::now());
                self.run_once().await
            } else {
                self.dispatch().await
            };
            let idle = match round {
                Ok(round) => round.is_idle(),
                Err(e) => {
                    tracing::warn!(saga = S::NAME, error = %e, "saga worker round failed; retrying");
                    true
                }
            };
            if last_gauges.is_none_or(|t| t.elapsed() >= Duration::from_secs(5)) {
                if let Err(e) = self.update_gauges().await {
                    tracing::debug!(saga = S::NAME, error = %e, "saga gauges not refreshed");
                }
                last_gauges = Some(std::time::Instant::now());
            }
            if idle {
                if shutdown.sleep(self.poll).await {
                    return;
                }
            } else {
                // let the rest of the runtime in between busy rounds
                tokio::task::yield_now().await;
            }
        }
    }

    /// Starts [`run`](Self::run) on a Tokio task.
    pub fn spawn(self) -> SagaWorkerHandle
    where
        St: Send + Sync,
    {
        let (trigger, shutdown) = Shutdown::new();
        let task = tokio::spawn(async move { self.run(shutdown).await });
        SagaWorkerHandle {
            saga: S::NAME,
            trigger,
            task,
        }
    }
}

/// A [`SagaWorker`] running on a Tokio task.
#[derive(Debug)]
pub struct SagaWorkerHandle {
    saga: &'static str,
    trigger: ShutdownTrigger,
    task: tokio::task::JoinHandle<()>,
}

impl SagaWorkerHandle {
    /// The saga type the worker serves.
    pub fn saga(&self) -> &'static str {
        self.saga
    }

    /// Whether the worker has ended.
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Asks the worker to stop after its current round and waits for it.
    pub async fn stop(self) {
        self.trigger.trigger();
        if let Err(e) = self.task.await {
            tracing::warn!(saga = self.saga, error = %e, "saga worker task failed");
        }
    }

    /// Kills the worker's task at once, as a crash would: a claimed command
    /// is claimed again when its lease runs out, an uncommitted outcome is
    /// rolled back.
    pub fn abort(&self) {
        self.task.abort();
    }
}
