//! `streams read|tail`: events as JSON lines, decoded and upcast with the
//! registered event types.

use std::time::Duration;

use annals_core::{EventStore, EventStoreExt, LogPosition, Metadata, RecordedEvent};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::cli::StreamsCommand;
use crate::output::Out;
use crate::{Admin, AdminError, Exit};

/// An event as the admin prints it.
#[derive(Debug, Serialize)]
pub(crate) struct DecodedEvent {
    stream_id: String,
    stream_version: u64,
    log_position: LogPosition,
    event_id: Uuid,
    event_type: String,
    /// The version the payload was stored with.
    schema_version: u32,
    recorded_at: DateTime<Utc>,
    metadata: Metadata,
    /// Whether `payload` was decoded (and upcast to the current version)
    /// with a registered event type; `false`: it is the stored JSON.
    decoded: bool,
    /// Why decoding failed, if it did (`payload` is then the stored JSON).
    #[serde(skip_serializing_if = "Option::is_none")]
    decode_error: Option<String>,
    payload: Box<RawValue>,
}

/// `event` decoded with the registered type that reads it, if any.
pub(crate) fn decoded(admin: &Admin, event: RecordedEvent) -> DecodedEvent {
    let stored = event.payload.clone();
    let (decoded, decode_error, payload) =
        match admin.events.iter().find(|e| e.reads(&event.event_type)) {
            None => (false, None, stored),
            Some(events) => match events.decode(&admin.store, event.clone()) {
                Ok(payload) => (true, None, payload),
                Err(e) => (false, Some(e.to_string()), stored),
            },
        };
    DecodedEvent {
        stream_id: event.stream_id,
        stream_version: event.stream_version,
        log_position: event.log_position,
        event_id: event.event_id,
        event_type: event.event_type,
        schema_version: event.schema_version,
        recorded_at: event.recorded_at,
        metadata: event.metadata,
        decoded,
        decode_error,
        payload,
    }
}

/// At most `limit` events of `stream` from version `from`, decoded.
pub(crate) async fn read(
    admin: &Admin,
    stream: &str,
    from: u64,
    limit: u64,
) -> Result<Vec<DecodedEvent>, AdminError> {
    if admin.store.stream_version(stream).await?.is_none() {
        return Err(AdminError::StreamNotFound {
            stream: stream.to_owned(),
        });
    }
    let first = from.max(1);
    let last = first.saturating_add(limit.saturating_sub(1));
    if limit == 0 {
        return Ok(Vec::new());
    }
    let events = admin.store.read_stream(stream, first..=last).await?;
    Ok(events.into_iter().map(|e| decoded(admin, e)).collect())
}

pub(crate) async fn run(
    admin: &Admin,
    command: &StreamsCommand,
    out: &mut Out<'_>,
) -> Result<Exit, AdminError> {
    match command {
        StreamsCommand::Read {
            stream,
            from,
            limit,
        } => {
            for event in read(admin, stream, *from, *limit).await? {
                out.line(&event)?;
            }
            Ok(Exit::Ok)
        }
        StreamsCommand::Tail {
            stream,
            last,
            max_events,
            interval_ms,
        } => {
            let version = admin.store.stream_version(stream).await?.unwrap_or(0);
            let mut next = version.saturating_sub(*last) + 1;
            let mut printed = 0u64;
            let interval = Duration::from_millis((*interval_ms).max(10));
            loop {
                for event in admin.store.read_stream(stream, next..).await? {
                    if max_events.is_some_and(|max| printed >= max) {
                        break;
                    }
                    next = event.stream_version + 1;
                    out.line(&decoded(admin, event))?;
                    printed += 1;
                }
                if max_events.is_some_and(|max| printed >= max) {
                    return Ok(Exit::Ok);
                }
                tokio::time::sleep(interval).await;
            }
        }
    }
}
