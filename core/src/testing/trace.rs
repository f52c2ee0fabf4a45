//! The trace conformance check (features `testing` and `otel`): one trace
//! goes from a request's span through an append, a projection's apply, a
//! saga's step, the outbox dispatch and the command it leads to, on any
//! backend, recorded by an in-memory OpenTelemetry exporter
//! ([`SpanRecorder`]).
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use annals::{InMemoryEventStore, InMemoryProjectionStore, InMemorySagaStore};
//!
//! annals::testing::trace::one_trace_through_the_log(
//!     InMemoryEventStore::new(),
//!     InMemoryProjectionStore::new(),
//!     InMemorySagaStore::new(),
//! )
//! .await;
//! # });
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test suite: a panic is the failure report

use std::sync::{Arc, Mutex};

use opentelemetry::trace::{SpanId, SpanKind, TracerProvider as _};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use serde::{Deserialize, Serialize};
use tracing::Instrument as _;
use tracing_subscriber::layer::SubscriberExt as _;

use crate::projection::ProjectionStore;
use crate::saga::{Dispatch, SagaStore};
use crate::store::WatchLog;
use crate::trace::TraceContext;
use crate::{
    CommandBus, Envelope, EventStore, EventStoreExt, ExpectedVersion, HandlerError, Issue,
    Metadata, Projection, ProjectionRunner, SagaData, SagaProjection, SagaWorker,
};

/// Records the spans finished on this thread while it is alive, as
/// OpenTelemetry exports them. Run the code under test on a current-thread
/// runtime: the recorder is this thread's default subscriber.
#[derive(Debug)]
pub struct SpanRecorder {
    provider: SdkTracerProvider,
    spans: Arc<Mutex<Vec<SpanData>>>,
    _guard: tracing::subscriber::DefaultGuard,
    /// Dropped last, after the subscriber: one recorder at a time.
    _serial: std::sync::MutexGuard<'static, ()>,
}

/// One recorder at a time in a process: a test that records takes its
/// turn; other tests run on.
static RECORDING: Mutex<()> = Mutex::new(());

/// The process' global subscriber while recorders are in use: it records
/// nothing, but answers "sometimes" for every callsite. `tracing` caches
/// each callsite's interest over the subscribers that exist when the
/// callsite is first hit; a test thread that hit a callsite (a `process`
/// span, say) while the recorder of another thread was being installed
/// could cache "never" for it, and the recorder then missed that span:
/// the likely cause of a trace test that lost a span in two CI runs of
/// three, and once in three full runs under CPU load here. With this
/// subscriber always there, no callsite is ever cached as "never": each
/// span asks the current thread's subscriber.
struct Undecided;

impl tracing::Subscriber for Undecided {
    fn register_callsite(
        &self,
        _: &'static tracing::Metadata<'static>,
    ) -> tracing::subscriber::Interest {
        tracing::subscriber::Interest::sometimes()
    }

    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        false
    }

    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }

    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}

    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}

    fn event(&self, _: &tracing::Event<'_>) {}

    fn enter(&self, _: &tracing::span::Id) {}

    fn exit(&self, _: &tracing::span::Id) {}
}

static UNDECIDED: std::sync::Once = std::sync::Once::new();

#[derive(Debug, Clone)]
struct Exporter(Arc<Mutex<Vec<SpanData>>>);

impl SpanExporter for Exporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        self.0.lock().unwrap().extend(batch);
        Ok(())
    }
}

impl SpanRecorder {
    /// Starts recording (a `tracing-opentelemetry` layer over an in-memory
    /// exporter, the default subscriber of this thread).
    pub fn install() -> Self {
        // a test that panicked while recording poisons it; the lock
        // guards nothing but the turn
        let serial = RECORDING.lock().unwrap_or_else(|p| p.into_inner());
        UNDECIDED.call_once(|| {
            // an application's own global subscriber, if it set one first,
            // stays (and then decides the interest itself)
            if tracing::subscriber::set_global_default(Undecided).is_ok() {
                tracing::callsite::rebuild_interest_cache();
            }
        });
        let spans = Arc::new(Mutex::new(Vec::new()));
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(Exporter(spans.clone()))
            .build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("annals-test")));
        SpanRecorder {
            provider,
            spans,
            _guard: tracing::subscriber::set_default(subscriber),
            _serial: serial,
        }
    }

    /// The spans finished so far, in the order they finished.
    pub fn spans(&self) -> Vec<SpanData> {
        self.provider.force_flush().unwrap();
        self.spans.lock().unwrap().clone()
    }
}

/// The `nth` finished span named `name`; panics with every name when
/// there is none.
pub fn find<'a>(spans: &'a [SpanData], name: &str, nth: usize) -> &'a SpanData {
    spans
        .iter()
        .filter(|s| s.name == name)
        .nth(nth)
        .unwrap_or_else(|| {
            let names: Vec<_> = spans.iter().map(|s| s.name.to_string()).collect();
            panic!("no span #{nth} named {name:?}; spans: {names:?}")
        })
}

/// Every span's name, ids, parent and links, for a failure message.
fn dump(spans: &[SpanData]) -> String {
    spans
        .iter()
        .map(|s| {
            let links: Vec<String> = s
                .links
                .iter()
                .map(|l| format!("{:?}", l.span_context.span_id()))
                .collect();
            format!(
                "\n  {} {:?} (trace {:?}) parent {:?} links {links:?}",
                s.name,
                s.span_context.span_id(),
                s.span_context.trace_id(),
                s.parent_span_id
            )
        })
        .collect()
}

fn assert_parent(child: &SpanData, parent: &SpanData) {
    assert_eq!(
        child.parent_span_id,
        parent.span_context.span_id(),
        "{} should be a child of {}",
        child.name,
        parent.name
    );
}

fn attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.to_string())
}

/// An order: the payload of the check's events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct OrderRef {
    /// The order.
    pub order_id: u64,
}

/// The check's events: `order.placed`, `order.confirmed`.
#[derive(Debug, Clone, PartialEq, annals_macros::Event)]
#[event(crate = "crate", prefix = "order")]
pub enum OrderEvent {
    /// An order was placed: starts a fulfilment saga.
    Placed(OrderRef),
    /// The order was confirmed: ends it.
    Confirmed(OrderRef),
}

/// The fulfilment saga's one command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum OrderCommand {
    /// Confirm the order.
    Confirm(u64),
}

/// The fulfilment saga's data.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Fulfilment {
    order_id: u64,
}

impl SagaData for Fulfilment {
    type Event = OrderEvent;
    fn apply(&mut self, event: &OrderEvent) {
        if let OrderEvent::Placed(o) = event {
            self.order_id = o.order_id;
        }
    }
}

impl Issue<u64> for Fulfilment {
    fn issue(&self) -> u64 {
        self.order_id
    }
}

/// Placed → confirm the order → confirmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, annals_macros::Saga)]
#[saga(crate = "crate", event = OrderEvent, command = OrderCommand, data = Fulfilment,
       correlation = u64, correlate = order_id)]
pub enum Fulfil {
    /// Waiting for the confirmation.
    #[saga(start = Placed, issue = Confirm, compensate = none, on(Confirmed => Done))]
    Confirming,
    /// Done.
    #[saga(terminal)]
    Done,
}

/// The "next command": confirming an order appends `order.confirmed`.
struct Orders<S>(S);

impl<S: EventStore + 'static> CommandBus<OrderCommand> for Orders<S> {
    async fn dispatch(&self, d: Dispatch<OrderCommand>) -> Result<(), HandlerError> {
        let OrderCommand::Confirm(id) = d.command;
        self.0
            .append_events(
                &format!("order-{id}"),
                ExpectedVersion::Any,
                &[OrderEvent::Confirmed(OrderRef { order_id: id })],
                &Metadata::new(),
            )
            .await
            .map_err(HandlerError::dependency)?;
        Ok(())
    }
}

/// A read model that counts what it applies.
pub struct Count<C: ?Sized>(Mutex<u32>, std::marker::PhantomData<fn() -> Box<C>>);

impl<C: ?Sized> Count<C> {
    /// A count of zero.
    pub fn new() -> Self {
        Count(Mutex::new(0), std::marker::PhantomData)
    }

    /// Events applied so far.
    pub fn get(&self) -> u32 {
        *self.0.lock().unwrap()
    }
}

impl<C: ?Sized> Default for Count<C> {
    fn default() -> Self {
        Self::new()
    }
}

impl<C: ?Sized + Send + 'static> Projection for Count<C> {
    type Event = OrderEvent;
    type Conn = C;
    fn name(&self) -> &str {
        "order-count"
    }
    async fn apply(&self, _: &mut C, _: &Envelope<OrderEvent>) -> Result<(), HandlerError> {
        *self.0.lock().unwrap() += 1;
        Ok(())
    }
}

/// The check. Give it an empty event store, a projection store and a saga
/// store of one backend; run it on a current-thread runtime (it installs a
/// [`SpanRecorder`]).
///
/// A request's span appends `order.placed`; a counting projection and the
/// fulfilment saga's projection catch up; the saga worker dispatches
/// `Confirm`, whose bus appends `order.confirmed`; both runners catch up
/// again. Every span is in the request's trace: the append is the
/// request's child, each apply and saga step the append's, the dispatch
/// the step's, the next append the dispatch's; and the spans carry the
/// OpenTelemetry messaging attributes.
pub async fn one_trace_through_the_log<S, B, St>(store: S, projections: B, sagas: St)
where
    S: WatchLog + Clone + 'static,
    B: ProjectionStore<Conn = St::Conn> + Clone,
    St: SagaStore + Clone,
{
    one_trace_from(
        store,
        projections,
        sagas,
        "POST /orders",
        |store| async move {
            store
                .append_events(
                    ORDER_STREAM,
                    ExpectedVersion::NoStream,
                    &[placed()],
                    &Metadata::new(),
                )
                .instrument(tracing::info_span!("POST /orders", otel.kind = "server"))
                .await
                .unwrap();
        },
    )
    .await;
}

/// The stream the check's order lives in.
pub const ORDER_STREAM: &str = "order-7";

/// The event that starts the check: order 7 placed (append it to
/// [`ORDER_STREAM`]).
pub fn placed() -> OrderEvent {
    OrderEvent::Placed(OrderRef { order_id: 7 })
}

/// The check from a request of the caller's: `request` must append
/// [`placed`] to [`ORDER_STREAM`] on `store`, under a root span named
/// `root` (an HTTP server's, say), which the check asserts is the root of
/// the whole trace. See [`one_trace_through_the_log`].
pub async fn one_trace_from<S, B, St, F, Fut>(
    store: S,
    projections: B,
    sagas: St,
    root: &str,
    request: F,
) where
    S: WatchLog + Clone + 'static,
    B: ProjectionStore<Conn = St::Conn> + Clone,
    St: SagaStore + Clone,
    F: FnOnce(S) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let recorder = SpanRecorder::install();
    let count = Arc::new(Count::<B::Conn>::new());
    let read_model = ProjectionRunner::new(store.clone(), projections.clone(), count.clone());
    let saga_runner = ProjectionRunner::new(
        store.clone(),
        projections,
        Arc::new(SagaProjection::<Fulfil, _>::new(sagas.clone())),
    );
    let worker = SagaWorker::<Fulfil, _, _>::new(sagas, Orders(store.clone()));

    request(store.clone()).await;
    let placed = store.read_stream(ORDER_STREAM, ..).await.unwrap();
    let stored = TraceContext::from_metadata(&placed[0].metadata)
        .expect("the stored event carries its append's traceparent");

    read_model.catch_up().await.unwrap();
    saga_runner.catch_up().await.unwrap();
    let round = worker.run_once().await.unwrap();
    assert_eq!(round.delivered, 1, "{round:?}");
    read_model.catch_up().await.unwrap();
    saga_runner.catch_up().await.unwrap();
    assert_eq!(count.get(), 2);

    let spans = recorder.spans();
    let request = find(&spans, root, 0);
    let append_placed = find(&spans, "append order", 0);
    let apply_placed = find(&spans, "process order-count", 0);
    let step = find(&spans, "process saga:fulfil", 0);
    let send = find(&spans, "send Confirm", 0);
    let append_confirmed = find(&spans, "append order", 1);
    let apply_confirmed = find(&spans, "process order-count", 1);
    let step_confirmed = find(&spans, "process saga:fulfil", 1);

    let trace_id = request.span_context.trace_id();
    for span in [
        append_placed,
        apply_placed,
        step,
        send,
        append_confirmed,
        apply_confirmed,
        step_confirmed,
    ] {
        assert_eq!(
            span.span_context.trace_id(),
            trace_id,
            "{} left the trace",
            span.name
        );
    }
    assert_eq!(
        request.parent_span_id,
        SpanId::INVALID,
        "the request is the root"
    );
    assert_parent(append_placed, request);
    assert_eq!(
        stored.span_id(),
        append_placed.span_context.span_id().to_string()
    );
    assert_parent(apply_placed, append_placed);
    assert_parent(step, append_placed);
    assert_parent(send, step);
    assert_parent(append_confirmed, send);
    assert_parent(apply_confirmed, append_confirmed);
    assert_parent(step_confirmed, append_confirmed);

    assert_eq!(
        attribute(append_placed, "messaging.system").as_deref(),
        Some("annals")
    );
    assert_eq!(
        attribute(append_placed, "messaging.destination.name").as_deref(),
        Some("order-7")
    );
    assert_eq!(
        attribute(apply_placed, "messaging.consumer.group.name").as_deref(),
        Some("order-count")
    );
    assert_eq!(
        attribute(apply_placed, "messaging.message.id"),
        Some(placed[0].event_id.to_string())
    );
    assert_eq!(
        attribute(send, "messaging.operation.type").as_deref(),
        Some("send")
    );
    assert_eq!(append_placed.span_kind, SpanKind::Producer);
    assert_eq!(apply_placed.span_kind, SpanKind::Consumer);
    assert_eq!(send.span_kind, SpanKind::Producer);
}

/// The check for batches. Three requests each append an order; a counting
/// projection and the fulfilment saga's projection then catch up in one
/// batch (a transactional backend applies it in one transaction). Every
/// append is reached from the projection's spans, as the parent of its
/// own `process` span or as a link of the batch's, and every saga step
/// is a `process` span whose parent is its own event's append (the
/// commands it issues continue that trace). Run it on a current-thread
/// runtime.
pub async fn batches_keep_each_event_s_trace<S, B, St>(store: S, projections: B, sagas: St)
where
    S: WatchLog + Clone + 'static,
    B: ProjectionStore<Conn = St::Conn> + Clone,
    St: SagaStore + Clone,
{
    let recorder = SpanRecorder::install();
    for id in 1..=3u64 {
        store
            .append_events(
                &format!("order-{id}"),
                ExpectedVersion::NoStream,
                &[OrderEvent::Placed(OrderRef { order_id: id })],
                &Metadata::new(),
            )
            .instrument(tracing::info_span!("request", id))
            .await
            .unwrap();
    }
    let count = Arc::new(Count::<B::Conn>::new());
    ProjectionRunner::new(store.clone(), projections.clone(), count.clone())
        .catch_up()
        .await
        .unwrap();
    assert_eq!(count.get(), 3);
    ProjectionRunner::new(
        store,
        projections,
        Arc::new(SagaProjection::<Fulfil, _>::new(sagas)),
    )
    .catch_up()
    .await
    .unwrap();

    let spans = recorder.spans();
    for i in 0..3 {
        let append = find(&spans, "append order", i).span_context.clone();
        let reached = spans.iter().any(|s| {
            s.name == "process order-count"
                && (s.parent_span_id == append.span_id()
                    || s.links.iter().any(|l| {
                        // (the link is to a remote context: compare the ids)
                        l.span_context.span_id() == append.span_id()
                            && l.span_context.trace_id() == append.trace_id()
                    }))
        });
        assert!(
            reached,
            "no projection span reaches append #{i} ({:?}); spans: {}",
            append.span_id(),
            dump(&spans)
        );
        let step = spans
            .iter()
            .find(|s| s.name == "process saga:fulfil" && s.parent_span_id == append.span_id());
        let step = step.unwrap_or_else(|| {
            panic!(
                "no saga step under append #{i} ({:?}); spans: {}",
                append.span_id(),
                dump(&spans)
            )
        });
        assert_eq!(step.span_context.trace_id(), append.trace_id());
    }
}
