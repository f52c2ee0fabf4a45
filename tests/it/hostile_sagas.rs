//! A hostile value in an event a saga reads (issue 20): an order id of
//! 10 kB, or an empty one, is a bad event, parked as a dead letter, and
//! never a failing saga store: the breaker stays closed and the next
//! order's saga starts. The same on Postgres and in memory.
#![allow(clippy::unwrap_used)] // a test that unwraps fails loudly, which is the point

use std::sync::Arc;

use annals::breaker::BreakerState;
use annals::dead_letter::{DeadLetterQuery, DeadLetterStore};
use annals::postgres::testing::TestDatabase;
use annals::postgres::{PgProjectionStore, PgSagaStore};
use annals::{
    EventStoreExt, ExpectedVersion, Issue, Metadata, ProjectionRunner, ProjectionStore, Saga,
    SagaData, SagaProjection, SagaStore,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
struct Order {
    order_id: String,
}

#[derive(Debug, Clone, PartialEq, annals::Event)]
#[event(prefix = "shop")]
enum ShopEvent {
    OrderPlaced(Order),
    OrderShipped(Order),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum ShopCommand {
    Ship(String),
}

#[derive(Default, Serialize, Deserialize)]
struct Shipping {
    order_id: String,
}

impl SagaData for Shipping {
    type Event = ShopEvent;
    fn apply(&mut self, event: &ShopEvent) {
        if let ShopEvent::OrderPlaced(o) = event {
            self.order_id = o.order_id.clone();
        }
    }
}

impl Issue<String> for Shipping {
    fn issue(&self) -> String {
        self.order_id.clone()
    }
}

#[derive(annals::Saga, Debug, Clone, Copy, PartialEq, Eq)]
#[saga(event = ShopEvent, command = ShopCommand, data = Shipping,
       correlation = String, correlate = order_id)]
enum ShippingSaga {
    #[saga(start = OrderPlaced, issue = Ship, compensate = none, on(OrderShipped => Done))]
    Shipping,
    #[saga(terminal)]
    Done,
}

/// Places a hostile order, an order without an id and a good one, runs the saga
/// projection, and checks what happened; returns the dead letters' errors.
async fn scenario<E, P, St>(events: E, projections: P, sagas: St) -> Vec<String>
where
    E: annals::store::WatchLog + Clone + Send + Sync + 'static,
    P: ProjectionStore + DeadLetterStore + Clone + Send + Sync + 'static,
    St: SagaStore<Conn = P::Conn> + Clone + Send + Sync + 'static,
    P::Conn: Send,
{
    let huge = "o".repeat(10_000);
    for (stream, id) in [("o-1", huge.as_str()), ("o-2", ""), ("o-3", "order-3")] {
        events
            .append_events(
                stream,
                ExpectedVersion::NoStream,
                &[ShopEvent::OrderPlaced(Order {
                    order_id: id.to_owned(),
                })],
                &Metadata::new(),
            )
            .await
            .unwrap();
    }
    let runner = ProjectionRunner::new(
        events.clone(),
        projections.clone(),
        Arc::new(SagaProjection::<ShippingSaga, _>::new(sagas.clone())),
    );
    let done = runner.catch_up().await.unwrap();
    assert_eq!(done.events_parked, 2, "{done:?}");
    assert_eq!(runner.breaker().state(), BreakerState::Closed);
    let saga = sagas
        .find_by_correlation_id(ShippingSaga::NAME, "order-3")
        .await
        .unwrap();
    assert!(saga.is_some(), "the next order's saga started");
    let letters = projections
        .list_dead_letters(&DeadLetterQuery::pending(runner.name()))
        .await
        .unwrap();
    assert_eq!(letters.len(), 2);
    assert_eq!(letters[0].stream_id, "o-1");
    assert_eq!(letters[1].stream_id, "o-2");
    letters.into_iter().map(|l| l.error).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_correlation_id_parks_its_event_on_both_backends() {
    let db = TestDatabase::new().await;
    let events = annals::postgres::PgEventStore::builder(db.pool().clone())
        .register::<ShopEvent>()
        .build()
        .await
        .unwrap();
    let on_postgres = scenario(
        events,
        PgProjectionStore::new(db.pool().clone()),
        PgSagaStore::new(db.pool().clone()),
    )
    .await;
    let in_memory = scenario(
        annals::InMemoryEventStore::new(),
        annals::InMemoryProjectionStore::new(),
        annals::InMemorySagaStore::new(),
    )
    .await;
    assert_eq!(on_postgres, in_memory, "the same errors on both backends");
    assert!(
        on_postgres[0].contains("saga correlation id") && on_postgres[0].contains("1024 bytes"),
        "{}",
        on_postgres[0]
    );
    assert!(
        on_postgres[1].contains("must not be empty"),
        "{}",
        on_postgres[1]
    );
}

/// Values Postgres refuses behind the boundary checks are classified once
/// (`is_refused_value`: SQLSTATE classes 22, 23, 54): a saga type too long
/// for its index is `SagaError::Refused`, a failure of the event (parked),
/// not `SagaError::Backend` (a failing database, counted by the breaker).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_postgres_refuses_is_a_refused_event_not_a_failing_store() {
    use annals::handler::FailureKind;
    use annals::saga::{SagaEngine, SagaError};
    use annals::{Envelope, LogPosition};
    let db = TestDatabase::new().await;
    let sagas = PgSagaStore::new(db.pool().clone());
    let placed = Envelope {
        tenant_id: annals::TenantId::default(),
        event_id: uuid::Uuid::now_v7(),
        stream_id: "order-1".into(),
        stream_version: 1,
        log_position: LogPosition::new(1, 1),
        event_type: "shop.order_placed".into(),
        schema_version: 1,
        metadata: Metadata::new(),
        recorded_at: chrono::Utc::now(),
        payload: ShopEvent::OrderPlaced(Order {
            order_id: "1".into(),
        }),
    };
    let mut change = SagaEngine::<ShippingSaga>::on_event(None, "1".into(), &placed)
        .unwrap()
        .unwrap()
        .finish(&[])
        .unwrap();
    // longer than a btree index row can hold (SQLSTATE 54000), even
    // compressed: 30 kB of random hex
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    change.record.saga_type = (0..30_000)
        .map(|_| {
            // xorshift: bytes no compressor can shrink
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(b'a' + (x % 26) as u8)
        })
        .collect();
    let mut tx = db.pool().begin().await.unwrap();
    let err = sagas.save(&mut tx, &change).await.unwrap_err();
    assert!(matches!(err, SagaError::Refused { .. }), "{err:?}");
    assert_eq!(err.into_handler_error().kind(), FailureKind::Event);
}
