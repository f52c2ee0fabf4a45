//! What the HTTP tests share: a projection that can be broken and fixed, on
//! a fresh Postgres database, and an admin with it registered.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use annals::admin::http::{router, Auth};
use annals::admin::Admin;
use annals::dead_letter::{DeadLetterQuery, DeadLetterStore};
use annals::postgres::sqlx::PgConnection;
use annals::postgres::testing::TestDatabase;
use annals::postgres::{PgEventStore, PgProjectionStore};
use annals::{
    Envelope, EventStoreExt, ExpectedVersion, HandlerError, Metadata, Projection, ProjectionRunner,
    RetryPolicy,
};

/// The admin token of the tests.
pub(crate) const TOKEN: &str = "test-admin-token-0123456789";

#[derive(Debug, Clone, PartialEq, annals::Event)]
pub(crate) enum NoteEvent {
    Written(String),
}

/// Refuses every note while broken, naming the note in its error.
pub(crate) struct Notes {
    pub(crate) broken: AtomicBool,
}

impl Projection for Notes {
    type Event = NoteEvent;
    type Conn = PgConnection;

    fn name(&self) -> &str {
        "notes"
    }

    async fn apply(
        &self,
        _: &mut PgConnection,
        e: &Envelope<NoteEvent>,
    ) -> Result<(), HandlerError> {
        let NoteEvent::Written(text) = &e.payload;
        if self.broken.load(Ordering::SeqCst) {
            return Err(HandlerError::event(std::io::Error::other(format!(
                "cannot file the note {text}"
            ))));
        }
        Ok(())
    }
}

pub(crate) struct World {
    pub(crate) db: TestDatabase,
    pub(crate) store: PgEventStore,
    pub(crate) admin: Admin,
    pub(crate) notes: Arc<Notes>,
    /// The application's own runner (the admin has another).
    pub(crate) runner: ProjectionRunner<PgEventStore, PgProjectionStore, Notes>,
}

impl World {
    pub(crate) async fn new() -> World {
        let db = TestDatabase::new().await;
        let store = PgEventStore::builder(db.pool().clone())
            .register::<NoteEvent>()
            .build()
            .await
            .expect("an event store");
        let notes = Arc::new(Notes {
            broken: AtomicBool::new(false),
        });
        let runner = || {
            ProjectionRunner::new(
                store.clone(),
                PgProjectionStore::new(db.pool().clone()),
                notes.clone(),
            )
            .retry(RetryPolicy::new(1).initial_delay(Duration::from_millis(1)))
        };
        let admin = Admin::builder(store.clone())
            .projection(runner())
            .events::<NoteEvent>()
            .build();
        World {
            runner: runner(),
            db,
            store,
            admin,
            notes,
        }
    }

    /// The admin's routes, nested at `/admin` as an application mounts them.
    pub(crate) fn app(&self) -> axum::Router {
        let auth = Auth::bearer(TOKEN).expect("a long enough token");
        axum::Router::new().nest("/admin", router(self.admin.clone(), auth))
    }

    /// Appends a note to `stream` while the projection is broken, so that
    /// it is parked; then fixes the projection. Returns the dead letter's id.
    pub(crate) async fn park(&self, stream: &str, text: &str) -> u64 {
        self.notes.broken.store(true, Ordering::SeqCst);
        self.store
            .append_events(
                stream,
                ExpectedVersion::Any,
                &[NoteEvent::Written(text.to_owned())],
                &Metadata::new(),
            )
            .await
            .expect("an append");
        let caught_up = self.runner.catch_up().await.expect("a catch-up");
        assert_eq!(caught_up.events_parked, 1, "the note is parked");
        self.notes.broken.store(false, Ordering::SeqCst);
        let pending = PgProjectionStore::new(self.db.pool().clone())
            .list_dead_letters(&DeadLetterQuery::pending("notes"))
            .await
            .expect("a list");
        pending
            .iter()
            .find(|l| l.stream_id == stream)
            .map(|l| l.id)
            .expect("the parked note's dead letter")
    }
}
