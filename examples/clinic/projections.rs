//! Tour section: a projection that sends appointment confirmations, with a
//! poison event parked and replayed, and a flaky SMS gateway behind a
//! circuit breaker.

use std::collections::BTreeSet;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use annals::{
    breaker::BreakerConfig, breaker::BreakerState, breaker::CircuitBreakerRegistry,
    dead_letter::DeadLetterQuery, store::WatchLog, Envelope, EventStoreExt, ExpectedVersion,
    HandlerError, Metadata, Projection, ProjectionRunner, ProjectionStore, RetryPolicy,
};

use super::{at, say, section, why, BoxError, LeadCreated, LeadEvent, LeadQualified};

/// The clinic's SMS provider, as the tour simulates it: it can be down, and
/// it refuses a confirmation without a sender. It de-duplicates by event id,
/// as real providers do by idempotency key.
#[derive(Default)]
struct SmsGateway {
    down: AtomicBool,
    accepts_empty_sender: AtomicBool,
    calls: AtomicU32,
    sent: Mutex<BTreeSet<uuid::Uuid>>,
}

#[derive(Debug, thiserror::Error)]
enum SmsError {
    #[error("the SMS gateway does not answer (HTTP 503)")]
    Unavailable,
    #[error("the confirmation template needs a sender, and `qualified_by` is empty")]
    NoSender,
}

/// Sends a confirmation for every qualified lead. An outbound call cannot
/// join a database transaction, so it is at-least-once; the gateway drops
/// duplicates by event id. `T` is the projection store's connection type:
/// this projection writes nothing there.
struct Confirmations<T: ?Sized> {
    name: String,
    gateway: Arc<SmsGateway>,
    _tx: PhantomData<fn(&mut T)>,
}

impl<T: ?Sized + Send + 'static> Projection for Confirmations<T> {
    type Event = LeadEvent;
    type Conn = T;

    fn name(&self) -> &str {
        &self.name
    }

    async fn apply(&self, _: &mut T, e: &Envelope<LeadEvent>) -> Result<(), HandlerError> {
        let LeadEvent::Qualified(q) = &e.payload else {
            return Ok(());
        };
        self.gateway.calls.fetch_add(1, Ordering::SeqCst);
        if self.gateway.down.load(Ordering::SeqCst) {
            // the dependency failed: counted by the breaker, never parked
            return Err(HandlerError::dependency(SmsError::Unavailable));
        }
        if q.by.is_empty() && !self.gateway.accepts_empty_sender.load(Ordering::SeqCst) {
            // this event cannot be handled: retried, then parked
            return Err(SmsError::NoSender.into());
        }
        self.gateway
            .sent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(e.event_id);
        Ok(())
    }
}

async fn append<S: EventStoreExt>(
    store: &S,
    stream: &str,
    events: &[LeadEvent],
) -> Result<(), BoxError> {
    store
        .append_events(stream, ExpectedVersion::Any, events, &Metadata::new())
        .await?;
    Ok(())
}

fn created(name: &str) -> LeadEvent {
    LeadEvent::Created(LeadCreated {
        name: name.into(),
        treatment: "implant".into(),
    })
}

fn qualified(by: &str) -> LeadEvent {
    LeadEvent::Qualified(LeadQualified { by: by.into() })
}

/// Runs the section on any event store and projection store (in memory, or
/// Postgres with its checkpoints and dead letters in tables).
pub(crate) async fn tour<S, B>(store: &S, projections: B, run: &str, n: u32) -> Result<(), BoxError>
where
    S: WatchLog + Clone + Send + Sync + 'static,
    B: ProjectionStore,
{
    section(n, "Projections: dead letters and a circuit breaker");
    let gateway = Arc::new(SmsGateway::default());
    let projection = Arc::new(Confirmations::<B::Conn> {
        name: format!("{run}confirmations"),
        gateway: gateway.clone(),
        _tx: PhantomData,
    });
    let breakers = CircuitBreakerRegistry::new();
    breakers.configure(
        projection.name(),
        BreakerConfig::default()
            .failure_threshold(3)
            .cool_down(Duration::from_millis(300)),
    );
    let runner = ProjectionRunner::new(store.clone(), projections.clone(), projection.clone())
        .retry(
            RetryPolicy::new(3)
                .initial_delay(Duration::from_millis(20))
                .max_delay(Duration::from_millis(100)),
        )
        .breakers(breakers.clone())
        .poll_interval(Duration::from_millis(100));

    let (dora, emil) = (format!("{run}lead-dora"), format!("{run}lead-emil"));
    append(store, &dora, &[created("Dora"), qualified("reception")]).await?;
    // a qualification imported without a sender: the SMS template fails on it
    append(store, &emil, &[created("Emil"), qualified("")]).await?;
    append(store, &emil, &[qualified("dr-ionescu")]).await?;
    let done = runner.catch_up().await?;
    say(&format!(
        "The `{}` projection read {} event(s) from the global log and sent {} confirmation(s).",
        projection.name(),
        done.events_read,
        gateway.sent.lock().unwrap_or_else(|p| p.into_inner()).len()
    ));
    let parked = projections
        .list_dead_letters(&DeadLetterQuery::pending(projection.name()))
        .await?;
    for letter in &parked {
        let why_parked = match letter.blocked_by {
            Some(position) => format!("waits behind the dead letter at global position {position}"),
            None => format!("failed {} time(s): {}", letter.attempts, letter.error),
        };
        say(&format!(
            "  dead letter {}: {} of stream `{}` {why_parked}",
            letter.id, letter.event_type, letter.stream_id
        ));
    }
    if parked.len() != 2 {
        return Err(format!(
            "expected the poison event and the one behind it parked, found {} dead letter(s)",
            parked.len()
        )
        .into());
    }
    why("a poison event is retried with backoff, then parked so the projection moves on; Emil's next event waits behind it, so his stream is never applied out of order.");

    gateway.accepts_empty_sender.store(true, Ordering::SeqCst);
    let replayed = runner.replay_all().await?;
    let pending = projections.pending_dead_letters(projection.name()).await?;
    say(&format!(
        "After the template fix, `replay_all` resolved {} dead letter(s) in stream order ({pending} left pending).",
        replayed.resolved,
    ));
    if replayed.resolved != 2 || pending != 0 {
        return Err("the replay did not resolve both dead letters".into());
    }

    gateway.down.store(true, Ordering::SeqCst);
    let handle = runner.clone().spawn();
    let filip = format!("{run}lead-filip");
    append(store, &filip, &[created("Filip"), qualified("reception")]).await?;
    let breaker = breakers.get(projection.name());
    let deadline = Instant::now() + Duration::from_secs(20);
    while breaker.state() != BreakerState::Open && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if breaker.state() != BreakerState::Open {
        return Err("the breaker did not open while the gateway was down".into());
    }
    let calls = gateway.calls.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let calls_while_open = gateway.calls.load(Ordering::SeqCst) - calls;
    say(&format!(
        "The gateway went down: after 3 failures the breaker is {:?}; calls while open: {calls_while_open}.",
        breaker.state(),
    ));
    if calls_while_open != 0 {
        return Err(format!(
            "the gateway was called {calls_while_open} time(s) while the breaker was open"
        )
        .into());
    }
    gateway.down.store(false, Ordering::SeqCst);
    let sent_before = gateway.sent.lock().unwrap_or_else(|p| p.into_inner()).len();
    while gateway.sent.lock().unwrap_or_else(|p| p.into_inner()).len() == sent_before
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let pending = projections.pending_dead_letters(projection.name()).await?;
    say(&format!(
        "It came back: the half-open trial call succeeded, the breaker is {:?}, Filip's confirmation went out, nothing was parked ({pending} pending).",
        breaker.state(),
    ));
    let sent = gateway.sent.lock().unwrap_or_else(|p| p.into_inner()).len();
    if sent == sent_before || pending != 0 || breaker.state() != BreakerState::Closed {
        return Err("the projection did not recover through the half-open trial".into());
    }
    handle.stop().await?;
    let checkpoint = projections.checkpoint(projection.name()).await?;
    if let Some(c) = checkpoint {
        say(&format!("Its checkpoint: {}.", at(c.position)));
    }
    why("an open breaker pauses the handler instead of burning every event into the dead-letter queue while a dependency is down.");
    Ok(())
}
