//! What the application registers: its projection runners (so that
//! rebuilds and replays run its own handlers) and its event types (so that
//! streams are shown decoded, and schemas checked).

use std::future::Future;
use std::pin::Pin;

use annals_core::projection::{CatchUp, ProjectionError, ReplayOutcome};
use annals_core::store::WatchLog;
use annals_core::{
    Error, Event, EventStoreExt, Projection, ProjectionRunner, RecordedEvent, TenantId,
};
use annals_postgres::sqlx::PgConnection;
use annals_postgres::{PgEventStore, PgProjectionStore};
use serde_json::value::RawValue;

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A projection runner with its types erased: what the admin needs of it.
pub(crate) trait RegisteredProjection: Send + Sync {
    fn tenant(&self) -> &TenantId;
    fn name(&self) -> &str;
    fn rebuild(&self) -> BoxFuture<'_, Result<CatchUp, ProjectionError>>;
    fn replay(&self, id: u64) -> BoxFuture<'_, Result<ReplayOutcome, ProjectionError>>;
}

impl<S, P> RegisteredProjection for ProjectionRunner<S, PgProjectionStore, P>
where
    S: WatchLog + Clone + Send + Sync + 'static,
    P: Projection<Conn = PgConnection>,
    P::Event: Send + Sync,
{
    fn tenant(&self) -> &TenantId {
        ProjectionRunner::tenant_id(self)
    }

    fn name(&self) -> &str {
        ProjectionRunner::name(self)
    }

    fn rebuild(&self) -> BoxFuture<'_, Result<CatchUp, ProjectionError>> {
        Box::pin(ProjectionRunner::rebuild(self))
    }

    fn replay(&self, id: u64) -> BoxFuture<'_, Result<ReplayOutcome, ProjectionError>> {
        Box::pin(ProjectionRunner::replay(self, id))
    }
}

/// An event type with its types erased: decodes (and upcasts) stored
/// events of its types to the current version's JSON.
pub(crate) trait RegisteredEvents: Send + Sync {
    fn reads(&self, event_type: &str) -> bool;
    fn register(&self, registry: &annals_core::SchemaRegistry) -> Result<(), Error>;
    fn decode(&self, store: &PgEventStore, event: RecordedEvent) -> Result<Box<RawValue>, Error>;
}

pub(crate) struct Events<E>(std::marker::PhantomData<fn() -> E>);

impl<E> Events<E> {
    pub(crate) fn new() -> Self {
        Events(std::marker::PhantomData)
    }
}

impl<E: Event> RegisteredEvents for Events<E> {
    fn reads(&self, event_type: &str) -> bool {
        E::TYPES.iter().any(|t| t.name == event_type)
    }

    fn register(&self, registry: &annals_core::SchemaRegistry) -> Result<(), Error> {
        registry.register::<E>()
    }

    fn decode(&self, store: &PgEventStore, event: RecordedEvent) -> Result<Box<RawValue>, Error> {
        let position = event.log_position.position;
        let decoded = store.decode::<E>(event)?;
        decoded.payload.encode().map_err(|e| Error::CorruptedRow {
            position: Some(position),
            message: format!("re-encoding the decoded event as JSON: {e}"),
        })
    }
}
