//! Traces across the log on Postgres: the trace check (the trace context
//! stored in `annals_events.metadata` and `annals_saga_outbox`), and
//! batches applied in one transaction.

use annals_postgres::testing::TestDatabase;
use annals_postgres::{PgProjectionStore, PgSagaStore};

// current-thread: the span recorder is this thread's subscriber
#[tokio::test(flavor = "current_thread")]
async fn one_trace_from_the_request_to_the_next_command() {
    let db = TestDatabase::new().await;
    let pool = db.pool().clone();
    annals_core::testing::trace::one_trace_through_the_log(
        db.store().await,
        PgProjectionStore::new(pool.clone()),
        PgSagaStore::new(pool),
    )
    .await;
}

#[tokio::test(flavor = "current_thread")]
async fn batches_keep_each_event_s_trace() {
    let db = TestDatabase::new().await;
    let pool = db.pool().clone();
    annals_core::testing::trace::batches_keep_each_event_s_trace(
        db.store().await,
        PgProjectionStore::new(pool.clone()),
        PgSagaStore::new(pool),
    )
    .await;
}
