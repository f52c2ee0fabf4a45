//! Traces across the log (feature `otel`) on the in-memory backend: the
//! trace check, batches, and traceparents set by the application or
//! malformed.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::sync::Arc;

use annals_core::testing::trace::{find, Count, OrderEvent, OrderRef, SpanRecorder};
use annals_core::{
    projection::InMemoryConn, EventStoreExt, ExpectedVersion, InMemoryEventStore,
    InMemoryProjectionStore, InMemorySagaStore, Metadata, ProjectionRunner,
};
use opentelemetry::trace::SpanId;

#[tokio::test]
async fn one_trace_from_the_request_to_the_next_command() {
    annals_core::testing::trace::one_trace_through_the_log(
        InMemoryEventStore::new(),
        InMemoryProjectionStore::new(),
        InMemorySagaStore::new(),
    )
    .await;
}

#[tokio::test]
async fn batches_keep_each_event_s_trace() {
    annals_core::testing::trace::batches_keep_each_event_s_trace(
        InMemoryEventStore::new(),
        InMemoryProjectionStore::new(),
        InMemorySagaStore::new(),
    )
    .await;
}

#[tokio::test]
async fn an_event_s_own_traceparent_is_kept_and_a_malformed_one_is_ignored() {
    let recorder = SpanRecorder::install();
    let store = InMemoryEventStore::new();
    let upstream = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    for (stream, parent) in [("order-1", upstream), ("order-2", "00-garbage")] {
        store
            .append_events(
                stream,
                ExpectedVersion::NoStream,
                &[OrderEvent::Placed(OrderRef { order_id: 1 })],
                &Metadata::new().with("traceparent", parent),
            )
            .await
            .unwrap();
    }
    // a traceparent the application set (from another service) is kept
    let kept = store.read_stream("order-1", ..).await.unwrap();
    assert_eq!(kept[0].metadata.extra["traceparent"], upstream);

    let count = Arc::new(Count::<InMemoryConn>::new());
    ProjectionRunner::new(store.clone(), InMemoryProjectionStore::new(), count.clone())
        .batch_size(1)
        .catch_up()
        .await
        .unwrap();
    assert_eq!(count.get(), 2, "a malformed traceparent stops nothing");

    let spans = recorder.spans();
    let first = find(&spans, "process order-count", 0);
    assert_eq!(
        first.span_context.trace_id().to_string(),
        "0af7651916cd43dd8448eb211c80319c"
    );
    assert_eq!(first.parent_span_id.to_string(), "b7ad6b7169203331");
    let second = find(&spans, "process order-count", 1);
    assert_eq!(second.parent_span_id, SpanId::INVALID, "a new trace");
}
