//! Forgetting a subject in sagas: the projection that erases it.

use crate::saga::{SagaError, SagaStore};
use crate::{Envelope, HandlerError, Projection};

use super::SubjectForgotten;

/// A projection that erases a forgotten subject's personal data from
/// sagas: on each `subject.forgotten` (recorded by
/// [`PersonalStore::forget`](super::PersonalStore::forget)) it calls
/// [`SagaStore::forget_subject`], so the `Personal` values of the data and
/// commands of every saga whose [`SagaData::subject`](crate::SagaData::subject)
/// is that subject read as [`Personal::Forgotten`](super::Personal::Forgotten)
/// from then on. Run it beside the saga projections, on the same
/// projection store:
///
/// ```
/// # async fn demo() {
/// use std::sync::Arc;
/// use annals::personal::SagaEraser;
/// use annals::{InMemoryEventStore, InMemoryProjectionStore, InMemorySagaStore, ProjectionRunner};
///
/// let sagas = InMemorySagaStore::new();
/// let eraser = ProjectionRunner::new(
///     InMemoryEventStore::new(),
///     InMemoryProjectionStore::new(),
///     Arc::new(SagaEraser::new(sagas)),
/// )
/// .spawn();
/// # eraser.stop().await.unwrap();
/// # }
/// ```
///
/// Erasing is idempotent, and runs in the saga store's own transaction: a
/// replay erases again, harmlessly. A saga store that fails is a failing
/// dependency (retried, never parked); a malformed subject in the event
/// is parked.
#[derive(Debug, Clone)]
pub struct SagaEraser<St> {
    sagas: St,
}

impl<St: SagaStore> SagaEraser<St> {
    /// The eraser of `sagas`.
    pub fn new(sagas: St) -> Self {
        SagaEraser { sagas }
    }
}

impl<St: SagaStore> Projection for SagaEraser<St> {
    type Event = SubjectForgotten;
    type Conn = St::Conn;

    fn name(&self) -> &str {
        "annals.saga-eraser"
    }

    async fn apply(
        &self,
        _: &mut St::Conn,
        event: &Envelope<SubjectForgotten>,
    ) -> Result<(), HandlerError> {
        // the subject is the event's tenant's
        self.sagas
            .in_tenant(event.tenant_id.clone())
            .forget_subject(&event.payload.subject)
            .await
            .map(drop)
            .map_err(SagaError::into_handler_error)
    }
}
