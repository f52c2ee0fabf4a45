//! Traces across the log: spans for appends, for handling an event and for
//! delivering a saga's command, and, with the `otel` feature, the W3C trace
//! context that ties them into one trace.
//!
//! annals always opens `tracing` spans (cheap when no subscriber listens):
//!
//! | span | `otel.kind` | when |
//! |---|---|---|
//! | `append {stream category}` | producer | every append, on every backend |
//! | `process {handler}` | consumer | a projection (or a saga, through its projection) applies one event |
//! | `send {command type}` | producer | a saga worker dispatches one outbox command |
//!
//! Their fields follow OpenTelemetry's messaging conventions
//! (`messaging.system` = `annals`, `messaging.operation.type`,
//! `messaging.destination.name` = the stream or command type,
//! `messaging.consumer.group.name` = the handler, `messaging.message.id`)
//! and name the database where there is one (`db.system.name` =
//! `postgresql`). `tracing-opentelemetry` turns them into OpenTelemetry
//! spans.
//!
//! **With the `otel` feature**, the trace continues across the log: an
//! append stores the W3C trace context of its span in each event's
//! metadata (`traceparent`, and `tracestate` when there is one), unless the
//! event already carries one; the span that handles the event takes it as
//! its parent, even in another process or after a restart. A saga step
//! records its span's context with each command it issues
//! ([`OutboxCommand::trace`](crate::saga::OutboxCommand)), and the worker's
//! `send` span, inside which the [`CommandBus`](crate::CommandBus) runs,
//! takes it as parent: the command the bus executes, and the events that
//! command appends, join the same trace. One request is one trace: HTTP
//! command → append → projection apply → saga step → dispatch → the next
//! command.
//!
//! A `traceparent` read from a row that is not a well-formed W3C value (a
//! row written by hand, another tool's format) is ignored: the handling
//! span starts a trace of its own, and nothing fails.
//!
//! ```
//! use annals::trace::TraceContext;
//! use annals::Metadata;
//!
//! let metadata = Metadata::new()
//!     .with("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
//! let context = TraceContext::from_metadata(&metadata).expect("a W3C traceparent");
//! assert_eq!(context.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
//!
//! // malformed values are ignored, never an error
//! let bad = Metadata::new().with("traceparent", "00-not-a-trace");
//! assert_eq!(TraceContext::from_metadata(&bad), None);
//! ```

use std::future::Future;

use tracing::{Instrument as _, Span};

use crate::event::{Envelope, Metadata, NewEvent};
use crate::store::AppendResult;
use crate::Error;

/// The metadata key of the W3C `traceparent` value.
pub const TRACEPARENT: &str = "traceparent";
/// The metadata key of the W3C `tracestate` value.
pub const TRACESTATE: &str = "tracestate";
/// The longest `tracestate` kept (W3C: at most 32 members; 512 characters
/// is the length the recommendation asks carriers to propagate).
const TRACESTATE_MAX: usize = 512;

/// A W3C trace context (`traceparent` and optional `tracestate`), as stored
/// in an event's metadata and with a saga's outbox command.
///
/// Built only from well-formed values: a `traceparent` of version `00`
/// with a non-zero 32-digit trace id and 16-digit span id in lowercase hex,
/// a `tracestate` of at most 512 printable ASCII characters (a longer or
/// malformed one is dropped, the `traceparent` kept).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    traceparent: String,
    tracestate: Option<String>,
}

impl TraceContext {
    /// A trace context from its two W3C header values; `None` when
    /// `traceparent` is not well formed.
    pub fn new(traceparent: &str, tracestate: Option<&str>) -> Option<Self> {
        if !is_traceparent(traceparent) {
            return None;
        }
        Some(TraceContext {
            traceparent: traceparent.to_owned(),
            tracestate: tracestate.filter(|s| is_tracestate(s)).map(str::to_owned),
        })
    }

    /// The trace context stored in `metadata`, if it holds a well-formed
    /// one.
    pub fn from_metadata(metadata: &Metadata) -> Option<Self> {
        let parent = metadata.extra.get(TRACEPARENT)?.as_str()?;
        let state = metadata.extra.get(TRACESTATE).and_then(|s| s.as_str());
        Self::new(parent, state)
    }

    /// Writes the context into `metadata` (`traceparent`, `tracestate`).
    pub fn write_to(&self, metadata: &mut Metadata) {
        metadata
            .extra
            .insert(TRACEPARENT.to_owned(), self.traceparent.clone().into());
        if let Some(state) = &self.tracestate {
            metadata
                .extra
                .insert(TRACESTATE.to_owned(), state.clone().into());
        }
    }

    /// The `traceparent` value (`00-{trace id}-{span id}-{flags}`).
    pub fn traceparent(&self) -> &str {
        &self.traceparent
    }

    /// The `tracestate` value, if any.
    pub fn tracestate(&self) -> Option<&str> {
        self.tracestate.as_deref()
    }

    /// The trace id: 32 lowercase hex digits.
    pub fn trace_id(&self) -> &str {
        &self.traceparent[3..35]
    }

    /// The id of the span that recorded it: 16 lowercase hex digits.
    pub fn span_id(&self) -> &str {
        &self.traceparent[36..52]
    }

    /// The context of the current `tracing` span, if an OpenTelemetry layer
    /// records it and it belongs to a sampled or unsampled valid trace.
    #[cfg(feature = "otel")]
    #[cfg_attr(docsrs, doc(cfg(feature = "otel")))]
    pub fn current() -> Option<Self> {
        Self::of(&Span::current())
    }

    /// The context of `span`, if an OpenTelemetry layer records it.
    #[cfg(feature = "otel")]
    #[cfg_attr(docsrs, doc(cfg(feature = "otel")))]
    pub fn of(span: &Span) -> Option<Self> {
        use opentelemetry::trace::TraceContextExt as _;
        use tracing_opentelemetry::OpenTelemetrySpanExt as _;

        let context = span.context();
        let otel = context.span();
        let sc = otel.span_context();
        if !sc.is_valid() {
            return None;
        }
        let state = sc.trace_state().header();
        Some(TraceContext {
            traceparent: format!(
                "00-{}-{}-{:02x}",
                sc.trace_id(),
                sc.span_id(),
                sc.trace_flags().to_u8()
            ),
            tracestate: (!state.is_empty() && is_tracestate(&state)).then_some(state),
        })
    }

    /// Makes this context the parent of `span` (which must not have been
    /// entered yet). Nothing happens when no OpenTelemetry layer records
    /// `span`.
    #[cfg(feature = "otel")]
    #[cfg_attr(docsrs, doc(cfg(feature = "otel")))]
    pub fn set_as_parent_of(&self, span: &Span) {
        use opentelemetry::trace::TraceContextExt as _;
        use tracing_opentelemetry::OpenTelemetrySpanExt as _;

        if let Some(remote) = self.span_context() {
            // an error means no OpenTelemetry layer records `span`: nothing
            // to link, and nothing the caller could do about it
            let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
        }
    }

    /// Links `span` (not entered yet) to this context: for a span that
    /// handles many events at once and so has no single parent.
    #[cfg(feature = "otel")]
    #[cfg_attr(docsrs, doc(cfg(feature = "otel")))]
    pub fn link_from(&self, span: &Span) {
        use tracing_opentelemetry::OpenTelemetrySpanExt as _;

        if let Some(remote) = self.span_context() {
            span.add_link(remote);
        }
    }

    #[cfg(feature = "otel")]
    fn span_context(&self) -> Option<opentelemetry::trace::SpanContext> {
        use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};

        let (Ok(trace_id), Ok(span_id), Ok(flags)) = (
            TraceId::from_hex(self.trace_id()),
            SpanId::from_hex(self.span_id()),
            u8::from_str_radix(&self.traceparent[53..55], 16),
        ) else {
            return None;
        };
        let state = self
            .tracestate
            .as_deref()
            .and_then(|s| s.parse::<TraceState>().ok())
            .unwrap_or_default();
        Some(SpanContext::new(
            trace_id,
            span_id,
            TraceFlags::new(flags),
            true,
            state,
        ))
    }
}

/// `00-` + 32 hex + `-` + 16 hex + `-` + 2 hex, lowercase, ids not all
/// zero (W3C Trace Context, version 00).
fn is_traceparent(value: &str) -> bool {
    let b = value.as_bytes();
    let hex = |s: &[u8]| {
        s.iter()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
    };
    b.len() == 55
        && &b[..3] == b"00-"
        && b[35] == b'-'
        && b[52] == b'-'
        && hex(&b[3..35])
        && hex(&b[36..52])
        && hex(&b[53..55])
        && b[3..35].iter().any(|&c| c != b'0')
        && b[36..52].iter().any(|&c| c != b'0')
}

fn is_tracestate(value: &str) -> bool {
    value.len() <= TRACESTATE_MAX && value.bytes().all(|c| (0x20..0x7f).contains(&c))
}

/// Runs one append inside its `append` span: writes the span's trace
/// context into each event's metadata (feature `otel`), times the append
/// and records its metrics. Backends call this around every append, so
/// every backend traces and counts alike.
pub async fn observed_append<F, Fut>(
    backend: &'static str,
    stream_id: &str,
    events: Vec<NewEvent>,
    append: F,
) -> Result<AppendResult, Error>
where
    F: FnOnce(Vec<NewEvent>) -> Fut,
    Fut: Future<Output = Result<AppendResult, Error>>,
{
    let span = tracing::info_span!(
        "append",
        otel.name = format!("append {}", category(stream_id)),
        otel.kind = "producer",
        otel.status_code = tracing::field::Empty,
        messaging.system = "annals",
        "messaging.operation.type" = "send",
        messaging.operation.name = "append",
        messaging.destination.name = stream_id,
        messaging.batch.message_count = events.len(),
        db.system.name = backend_system(backend),
    );
    #[cfg(feature = "otel")]
    let events = with_context_of(&span, events);
    let started = std::time::Instant::now();
    let result = append(events).instrument(span.clone()).await;
    crate::metrics::record_append(backend, started, &result);
    if result.is_err() {
        span.record("otel.status_code", "ERROR");
    }
    result
}

/// `postgresql` for the Postgres backend (OpenTelemetry's `db.system.name`),
/// the backend's own name otherwise.
fn backend_system(backend: &'static str) -> &'static str {
    match backend {
        "postgres" => "postgresql",
        other => other,
    }
}

/// The stream's category: the part before the first `-` (`lead-7` →
/// `lead`), the whole id when there is none. Span names stay few.
fn category(stream_id: &str) -> &str {
    stream_id.split_once('-').map_or(stream_id, |(c, _)| c)
}

#[cfg(feature = "otel")]
fn with_context_of(span: &Span, mut events: Vec<NewEvent>) -> Vec<NewEvent> {
    if let Some(context) = TraceContext::of(span) {
        for event in &mut events {
            if !event.metadata.extra.contains_key(TRACEPARENT) {
                context.write_to(&mut event.metadata);
            }
        }
    }
    events
}

/// The span in which handler `handler` (a projection, or a saga through
/// its projection) applies `event`; with `otel`, a child of the span that
/// appended it.
pub(crate) fn process_span<T>(handler: &str, event: &Envelope<T>) -> Span {
    let span = tracing::info_span!(
        "process",
        otel.name = format!("process {handler}"),
        otel.kind = "consumer",
        messaging.system = "annals",
        "messaging.operation.type" = "process",
        messaging.consumer.group.name = handler,
        messaging.destination.name = %event.stream_id,
        messaging.message.id = %event.event_id,
        annals.event_type = %event.event_type,
        annals.log_position = event.log_position.position,
    );
    #[cfg(feature = "otel")]
    if let Some(parent) = TraceContext::from_metadata(&event.metadata) {
        parent.set_as_parent_of(&span);
    }
    span
}

/// The most links a batch's span carries (OpenTelemetry's default limit).
#[cfg(feature = "otel")]
const BATCH_LINKS_MAX: usize = 128;

/// The span in which `handler` applies a batch of events in one
/// transaction: for one event, that event's `process` span; for several, a
/// `process` span linked (feature `otel`) to the span that appended each
/// of the first 128 (a span has one parent; the OpenTelemetry messaging
/// conventions link a batch to its messages).
pub(crate) fn batch_span<T>(handler: &str, events: &[Envelope<T>]) -> Span {
    if let [event] = events {
        return process_span(handler, event);
    }
    let span = tracing::info_span!(
        "process",
        otel.name = format!("process {handler}"),
        otel.kind = "consumer",
        messaging.system = "annals",
        "messaging.operation.type" = "process",
        messaging.consumer.group.name = handler,
        messaging.batch.message_count = events.len(),
    );
    #[cfg(feature = "otel")]
    for event in events.iter().take(BATCH_LINKS_MAX) {
        if let Some(context) = TraceContext::from_metadata(&event.metadata) {
            context.link_from(&span);
        }
    }
    span
}

/// The span in which a saga worker dispatches one outbox command; with
/// `otel`, a child of the saga step that issued it.
pub(crate) fn dispatch_span(
    saga_type: &str,
    command_type: &str,
    idempotency_key: &str,
    trace: Option<&TraceContext>,
) -> Span {
    let span = tracing::info_span!(
        "send",
        otel.name = format!("send {command_type}"),
        otel.kind = "producer",
        otel.status_code = tracing::field::Empty,
        messaging.system = "annals",
        "messaging.operation.type" = "send",
        messaging.destination.name = command_type,
        messaging.message.id = idempotency_key,
        annals.saga_type = saga_type,
    );
    #[cfg(feature = "otel")]
    if let Some(parent) = trace {
        parent.set_as_parent_of(&span);
    }
    #[cfg(not(feature = "otel"))]
    let _ = trace;
    span
}

/// The trace context to record with a saga's commands: the current span's
/// (feature `otel`), else none.
pub(crate) fn current() -> Option<TraceContext> {
    #[cfg(feature = "otel")]
    return TraceContext::current();
    #[cfg(not(feature = "otel"))]
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn well_formed_values_are_kept_and_others_dropped() {
        let ok = TraceContext::new(PARENT, Some("congo=t61rcWkgMzE")).expect("well formed");
        assert_eq!(ok.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(ok.span_id(), "00f067aa0ba902b7");
        assert_eq!(ok.tracestate(), Some("congo=t61rcWkgMzE"));
        for bad in [
            "",
            "00",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e4736\u{0}00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473é-00f067aa0ba902b-01",
        ] {
            assert_eq!(TraceContext::new(bad, None), None, "{bad:?}");
        }
        let huge = "a=".to_owned() + &"b".repeat(600);
        for state in ["with\0nul", "tab\there", huge.as_str()] {
            let kept = TraceContext::new(PARENT, Some(state)).expect("the parent is kept");
            assert_eq!(kept.tracestate(), None, "{state:?}");
        }
    }

    #[test]
    fn metadata_round_trips_and_ignores_non_strings() {
        let context = TraceContext::new(PARENT, Some("a=b")).expect("well formed");
        let mut metadata = Metadata::new();
        context.write_to(&mut metadata);
        assert_eq!(TraceContext::from_metadata(&metadata), Some(context));
        let numeric = Metadata::new().with(TRACEPARENT, 7);
        assert_eq!(TraceContext::from_metadata(&numeric), None);
        assert_eq!(TraceContext::from_metadata(&Metadata::new()), None);
    }

    #[test]
    fn categories_name_spans() {
        assert_eq!(category("lead-7"), "lead");
        assert_eq!(category("orders"), "orders");
        assert_eq!(category(""), "");
    }
}
