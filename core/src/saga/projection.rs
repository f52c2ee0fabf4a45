use std::collections::HashMap;
use std::marker::PhantomData;

use super::engine::{self, FailCause};
use super::{Saga, SagaChange, SagaRecord, SagaStatus, SagaStore};
use crate::metrics as m;
use crate::{Envelope, HandlerError, Projection};

/// The event side of a saga: a [`Projection`] that routes each event of the
/// global log to its saga instance and saves the saga's new state and the
/// commands it issues through the [`SagaStore`], in the projection runner's
/// transaction.
///
/// Run it like any projection. With the Postgres backend the saga row, its
/// outbox commands and the runner's checkpoint commit in one transaction;
/// the runner's single owner per projection and its retries apply. An event
/// delivered twice (a replay, a rebuild from zero, an in-memory runner that
/// stopped between applying and saving its checkpoint) never moves a saga
/// twice: each saga remembers the log position of the last event it
/// applied.
///
/// Its name (the checkpoint's key) is `saga:{Saga::NAME}`.
///
/// ```
/// # use annals::{InMemorySagaStore, projection::InMemoryConn, Projection, SagaProjection};
/// # #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
/// # struct Ordered { order: u64 }
/// # #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
/// # struct Shipped { order: u64 }
/// # #[derive(Debug, Clone, PartialEq, annals::Event)]
/// # enum ShopEvent { Ordered(Ordered), Shipped(Shipped) }
/// # #[derive(Debug, serde::Serialize, serde::Deserialize)]
/// # enum ShopCommand { Ship(u64), CancelShipment(u64) }
/// # #[derive(Default, serde::Serialize, serde::Deserialize)]
/// # struct Order { id: u64 }
/// # impl annals::SagaData for Order {
/// #     type Event = ShopEvent;
/// #     fn apply(&mut self, e: &ShopEvent) { if let ShopEvent::Ordered(o) = e { self.id = o.order } }
/// # }
/// # impl annals::Issue<u64> for Order { fn issue(&self) -> u64 { self.id } }
/// #[derive(Debug, Clone, Copy, PartialEq, Eq, annals::Saga)]
/// #[saga(event = ShopEvent, command = ShopCommand, data = Order,
///        correlation = u64, correlate = order)]
/// enum Shipping {
///     #[saga(start = Ordered, issue = Ship, compensate = CancelShipment,
///            on(Shipped => Done), timeout("2d"))]
///     Shipping,
///     #[saga(terminal)]
///     Done,
/// }
///
/// let projection = SagaProjection::<Shipping, _>::new(InMemorySagaStore::new());
/// assert_eq!(projection.name(), "saga:shipping");
/// ```
#[derive(Debug)]
pub struct SagaProjection<S, St> {
    store: St,
    name: String,
    _saga: PhantomData<fn() -> S>,
}

impl<S: Saga, St: SagaStore> SagaProjection<S, St> {
    /// The projection of saga `S` on `store`.
    pub fn new(store: St) -> Self {
        SagaProjection {
            store,
            name: format!("saga:{}", S::NAME),
            _saga: PhantomData,
        }
    }

    /// The saga store.
    pub fn store(&self) -> &St {
        &self.store
    }
}

impl<S: Saga, St: SagaStore> SagaProjection<S, St> {
    /// The change to save for a decision: when it starts compensation, the
    /// store says which steps were attempted (a saga not `stored` yet has
    /// none).
    async fn finish(
        store: &St,
        tx: &mut St::Conn,
        decision: engine::Decision<S>,
        stored: bool,
    ) -> Result<SagaChange, super::SagaError> {
        let attempted = if decision.starts_compensation() && stored {
            store
                .attempted_steps(tx, decision.change().record.saga_id)
                .await?
        } else {
            Vec::new()
        };
        decision.finish(&attempted)
    }
}

impl<S: Saga, St: SagaStore> Projection for SagaProjection<S, St> {
    type Event = S::Event;
    type Conn = St::Conn;

    fn name(&self) -> &str {
        &self.name
    }

    async fn apply(
        &self,
        tx: &mut Self::Conn,
        event: &Envelope<Self::Event>,
    ) -> Result<(), HandlerError> {
        let Some(correlation_id) = S::correlation_id(event) else {
            return Ok(());
        };
        crate::store::limits::check_correlation_id(&correlation_id)
            .map_err(|e| super::SagaError::from(e).into_handler_error())?;
        // the saga is the event's tenant's
        let store = self.store.in_tenant(event.tenant_id.clone());
        let existing = store
            .load(tx, S::NAME, &correlation_id)
            .await
            .map_err(super::SagaError::into_handler_error)?;
        let before = existing.as_ref().map(|s| s.status);
        let Some(decision) = engine::on_event::<S>(existing, correlation_id, event)
            .map_err(super::SagaError::into_handler_error)?
        else {
            return Ok(());
        };
        let change = Self::finish(&store, tx, decision, before.is_some())
            .await
            .map_err(super::SagaError::into_handler_error)?;
        store
            .save(tx, &change)
            .await
            .map_err(super::SagaError::into_handler_error)?;
        record_change(S::NAME, before, &change, FailCause::EventReceived);
        Ok(())
    }

    /// A batch in one go: every saga the batch touches is loaded with one
    /// [`load_many`](SagaStore::load_many), the events move them in memory
    /// in log order, and each changed saga is saved once with the commands
    /// of all its moves: two round trips per batch plus one per saga
    /// instead of two per event.
    async fn apply_batch(
        &self,
        tx: &mut Self::Conn,
        events: &[Envelope<Self::Event>],
    ) -> Result<(), HandlerError> {
        let Some(first) = events.first() else {
            return Ok(());
        };
        if events.len() == 1 || events.iter().any(|e| e.tenant_id != first.tenant_id) {
            // one event, or several tenants' (each saga is its event's
            // tenant's): one by one
            for event in events {
                self.apply(tx, event).await?;
            }
            return Ok(());
        }
        let store = self.store.in_tenant(first.tenant_id.clone());
        let ids: Vec<Option<String>> = events.iter().map(S::correlation_id).collect();
        for id in ids.iter().flatten() {
            // one bad id fails the batch; the runner then applies its
            // events one by one and parks the event that carries it
            crate::store::limits::check_correlation_id(id)
                .map_err(|e| super::SagaError::from(e).into_handler_error())?;
        }
        let mut wanted: Vec<String> = ids.iter().flatten().cloned().collect();
        wanted.sort_unstable();
        wanted.dedup();
        if wanted.is_empty() {
            return Ok(());
        }
        let loaded = store
            .load_many(tx, S::NAME, &wanted)
            .await
            .map_err(super::SagaError::into_handler_error)?;
        let mut sagas: HashMap<String, Pending> = loaded
            .into_iter()
            .map(|s| {
                (
                    s.correlation_id.clone(),
                    Pending {
                        before: Some(s.status),
                        current: Some(s),
                        change: None,
                    },
                )
            })
            .collect();
        let mut order: Vec<String> = Vec::new();
        for (event, id) in events.iter().zip(ids) {
            let Some(id) = id else { continue };
            let pending = sagas.entry(id.clone()).or_insert(Pending {
                before: None,
                current: None,
                change: None,
            });
            // each event's step in its own `process` span, a child of the
            // event's append: the commands it issues record that span
            let decision = crate::trace::process_span(Projection::name(self), event)
                .in_scope(|| engine::on_event::<S>(pending.current.clone(), id.clone(), event))
                .map_err(super::SagaError::into_handler_error)?;
            let Some(decision) = decision else {
                continue;
            };
            // a saga new in this batch has no command in the store yet
            let next = Self::finish(&store, tx, decision, pending.before.is_some())
                .await
                .map_err(super::SagaError::into_handler_error)?;
            pending.current = Some(next.record.clone());
            if pending.change.is_none() {
                order.push(id);
            }
            pending.change = Some(match pending.change.take() {
                None => next,
                Some(earlier) => merge(earlier, next),
            });
        }
        for id in order {
            let Some(pending) = sagas.get(&id) else {
                continue;
            };
            let Some(change) = &pending.change else {
                continue;
            };
            store
                .save(tx, change)
                .await
                .map_err(super::SagaError::into_handler_error)?;
            record_change(S::NAME, pending.before, change, FailCause::EventReceived);
        }
        Ok(())
    }
}

/// A saga while a batch moves it.
struct Pending {
    /// Its status when loaded (`None`: new in this batch).
    before: Option<SagaStatus>,
    /// As the batch's events left it so far.
    current: Option<SagaRecord>,
    /// What to save: its changes so far, merged.
    change: Option<SagaChange>,
}

/// Two successive changes of one saga as one: the later state, every
/// command. When the later change starts compensation, the forward
/// commands of the earlier one were never recorded, let alone attempted:
/// they are dropped, as a store cancels such commands.
fn merge(mut earlier: SagaChange, later: SagaChange) -> SagaChange {
    if later.cancel_pending {
        earlier.commands.retain(|c| c.compensation);
        earlier.cancel_pending = true;
    }
    earlier.record = later.record;
    earlier.deadline = later.deadline;
    earlier.commands.extend(later.commands);
    earlier
}

/// Counts a saved change in the saga metrics.
pub(crate) fn record_change(
    saga: &'static str,
    before: Option<SagaStatus>,
    change: &SagaChange,
    cause: FailCause,
) {
    let after = change.record.status;
    if before != Some(after) {
        m::record_saga_status(saga, after);
        if after == SagaStatus::Compensating {
            metrics::counter!(m::SAGA_COMPENSATIONS_TOTAL, "saga" => saga, "reason" => cause.as_str())
                .increment(1);
        }
    }
    if change.commands.iter().any(|c| !c.compensation) {
        metrics::counter!(m::SAGA_STEPS_TOTAL, "saga" => saga).increment(1);
    }
}
