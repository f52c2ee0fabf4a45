use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::event::Subject;
use crate::store::LogPosition;
use crate::tenant::TenantId;

/// Metadata carried by every event: who caused it and why.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Metadata {
    /// Ties together every event and command of one business operation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<Uuid>,
    /// The id of the event or command that directly caused this event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<Uuid>,
    /// The user or system actor on whose behalf the event was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Free-form fields.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Metadata {
    /// Empty metadata.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the correlation id.
    pub fn with_correlation_id(mut self, id: Uuid) -> Self {
        self.correlation_id = Some(id);
        self
    }

    /// Sets the causation id.
    pub fn with_causation_id(mut self, id: Uuid) -> Self {
        self.causation_id = Some(id);
        self
    }

    /// Sets the user.
    pub fn with_user(mut self, user: impl Into<String>) -> Self {
        self.user = Some(user.into());
        self
    }

    /// Adds a free-form field.
    pub fn with(mut self, key: impl Into<String>, value: impl Into<serde_json::Value>) -> Self {
        self.extra.insert(key.into(), value.into());
        self
    }
}

/// An event ready to be appended: already encoded, not yet stored.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// The event's id (UUID v7: time-ordered).
    pub event_id: Uuid,
    /// The stable name of the event type, e.g. `lead.scored`.
    pub event_type: String,
    /// The schema version of `payload`.
    pub schema_version: u32,
    /// The JSON payload.
    pub payload: Box<RawValue>,
    /// Correlation, causation and free-form fields.
    pub metadata: Metadata,
    /// Whose personal data the payload carries (see
    /// [`Event::subject`](crate::Event::subject)): a store that seals
    /// personal fields encrypts them with this subject's key. Not stored.
    pub subject: Subject,
}

impl NewEvent {
    /// A new event with a fresh UUID v7 id.
    pub fn new(
        event_type: impl Into<String>,
        schema_version: u32,
        payload: Box<RawValue>,
        metadata: Metadata,
    ) -> Self {
        NewEvent {
            event_id: Uuid::now_v7(),
            event_type: event_type.into(),
            schema_version,
            payload,
            metadata,
            subject: Subject::None,
        }
    }

    /// The same event, carrying `subject`'s personal data.
    pub fn with_subject(mut self, subject: Subject) -> Self {
        self.subject = subject;
        self
    }
}

/// A stored event with its envelope. `T` is the payload: the raw JSON as
/// stored ([`RecordedEvent`]) or the decoded, upcast application event.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope<T> {
    /// The tenant the event belongs to (see [`crate::tenant`]).
    pub tenant_id: TenantId,
    /// The event's id.
    pub event_id: Uuid,
    /// The stream (usually one aggregate instance) the event belongs to.
    pub stream_id: String,
    /// The event's version within its stream, starting at 1, without gaps.
    pub stream_version: u64,
    /// The event's place in the global log.
    pub log_position: LogPosition,
    /// The stable name of the event type.
    pub event_type: String,
    /// The schema version the payload was *stored* with (before upcasting).
    pub schema_version: u32,
    /// Correlation, causation and free-form fields.
    pub metadata: Metadata,
    /// When the event was recorded.
    pub recorded_at: DateTime<Utc>,
    /// The payload.
    pub payload: T,
}

/// A stored event whose payload is the raw JSON as stored.
pub type RecordedEvent = Envelope<Box<RawValue>>;

impl<T> Envelope<T> {
    /// The event's global position.
    pub fn position(&self) -> u64 {
        self.log_position.position
    }

    /// The type of the aggregate whose stream holds the event: the part of
    /// the stream id before its first `-` (streams of aggregates are named
    /// `{type}-{id}`, see [`AggregateState::stream_id`](crate::AggregateState::stream_id);
    /// KurrentDB calls this part the stream's category). `None` for a
    /// stream id without a `-`.
    ///
    /// ```
    /// # use annals::{Envelope, LogPosition, Metadata};
    /// # let envelope = |stream: &str| Envelope {
    /// #     tenant_id: annals::TenantId::default(),
    /// #     event_id: annals::uuid::Uuid::nil(), stream_id: stream.into(), stream_version: 1,
    /// #     log_position: LogPosition::START, event_type: "appointment.booked".into(),
    /// #     schema_version: 1, metadata: Metadata::new(), recorded_at: annals::chrono::Utc::now(), payload: (),
    /// # };
    /// let e = envelope("appointment-a1-2026");
    /// assert_eq!(e.aggregate_type(), Some("appointment"));
    /// assert_eq!(e.aggregate_id(), "a1-2026");
    /// assert_eq!(envelope("audit").aggregate_id(), "audit");
    /// ```
    pub fn aggregate_type(&self) -> Option<&str> {
        self.stream_id.split_once('-').map(|(t, _)| t)
    }

    /// The id of the aggregate whose stream holds the event: the part of
    /// the stream id after its first `-` (the whole stream id when it has
    /// none). See [`aggregate_type`](Self::aggregate_type).
    pub fn aggregate_id(&self) -> &str {
        self.stream_id
            .split_once('-')
            .map_or(self.stream_id.as_str(), |(_, id)| id)
    }

    /// Replaces the payload, keeping the envelope.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Envelope<U> {
        Envelope {
            tenant_id: self.tenant_id,
            event_id: self.event_id,
            stream_id: self.stream_id,
            stream_version: self.stream_version,
            log_position: self.log_position,
            event_type: self.event_type,
            schema_version: self.schema_version,
            metadata: self.metadata,
            recorded_at: self.recorded_at,
            payload: f(self.payload),
        }
    }

    /// Like [`Envelope::map`] with a fallible function.
    pub fn try_map<U, E>(self, f: impl FnOnce(T) -> Result<U, E>) -> Result<Envelope<U>, E> {
        let Envelope {
            tenant_id,
            event_id,
            stream_id,
            stream_version,
            log_position,
            event_type,
            schema_version,
            metadata,
            recorded_at,
            payload,
        } = self;
        Ok(Envelope {
            payload: f(payload)?,
            tenant_id,
            event_id,
            stream_id,
            stream_version,
            log_position,
            event_type,
            schema_version,
            metadata,
            recorded_at,
        })
    }
}
