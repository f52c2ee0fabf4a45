//! Dead letters: events a handler kept failing on, parked so that it can
//! move on, to be listed, inspected, replayed or discarded later.
//!
//! A handler run by annals (a projection, a saga) retries a failing event
//! per its [`RetryPolicy`](crate::RetryPolicy); after the last attempt the
//! event is parked here with the handler's name, the event's position and
//! id, the error, the attempt count and timestamps, and the handler moves on
//! (or stops, if its [`FailurePolicy`](crate::projection::FailurePolicy) says so).
//!
//! **Order within a stream is kept.** Once an event of a stream is parked
//! for a handler, the handler parks every later event of that stream behind
//! it (with [`DeadLetter::blocked_by`] set) instead of applying it out of
//! order. A replay goes through the entries of a stream in log order and
//! stops at the first one that fails again.

use std::future::Future;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{Envelope, Error};

/// Where a dead letter stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeadLetterStatus {
    /// Parked, waiting for a replay or a discard.
    Pending,
    /// Replayed successfully.
    Resolved,
    /// Given up on, with a reason.
    Discarded,
}

impl DeadLetterStatus {
    /// The status as stored (`pending`, `resolved`, `discarded`).
    pub fn as_str(self) -> &'static str {
        match self {
            DeadLetterStatus::Pending => "pending",
            DeadLetterStatus::Resolved => "resolved",
            DeadLetterStatus::Discarded => "discarded",
        }
    }

    /// Parses a stored status.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(DeadLetterStatus::Pending),
            "resolved" => Some(DeadLetterStatus::Resolved),
            "discarded" => Some(DeadLetterStatus::Discarded),
            _ => None,
        }
    }
}

/// A parked event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The entry's id (increasing in parking order).
    pub id: u64,
    /// The handler that failed (a projection's or saga's name).
    pub handler: String,
    /// The event's global position.
    pub event_position: u64,
    /// The event's id.
    pub event_id: Uuid,
    /// The event's stream.
    pub stream_id: String,
    /// The event's type.
    pub event_type: String,
    /// The last error.
    pub error: String,
    /// Failed attempts, replays included (0 for an event parked behind an
    /// earlier dead letter of its stream without being tried).
    pub attempts: u32,
    /// When it first failed (or was parked).
    pub first_failed_at: DateTime<Utc>,
    /// When it last failed.
    pub last_failed_at: DateTime<Utc>,
    /// Where it stands.
    pub status: DeadLetterStatus,
    /// When it left `pending`.
    pub resolved_at: Option<DateTime<Utc>>,
    /// Why it was discarded.
    pub discard_reason: Option<String>,
    /// The position of the earlier dead letter of the same stream this
    /// event was parked behind, if it was parked only to keep stream order.
    pub blocked_by: Option<u64>,
}

/// An event to park.
#[derive(Debug, Clone, PartialEq)]
pub struct NewDeadLetter {
    /// The handler.
    pub handler: String,
    /// The event's global position.
    pub event_position: u64,
    /// The event's id.
    pub event_id: Uuid,
    /// The event's stream.
    pub stream_id: String,
    /// The event's type.
    pub event_type: String,
    /// The last error.
    pub error: String,
    /// Failed attempts (0 when parked behind an earlier dead letter).
    pub attempts: u32,
    /// See [`DeadLetter::blocked_by`].
    pub blocked_by: Option<u64>,
}

impl NewDeadLetter {
    /// An event that failed `attempts` times with `error` (stored as
    /// [`stored_error_text`](crate::store::limits::stored_error_text) makes
    /// it: no NUL, at most 8 kB).
    pub fn failed<T>(
        handler: &str,
        event: &Envelope<T>,
        error: impl Into<String>,
        attempts: u32,
    ) -> Self {
        NewDeadLetter {
            handler: handler.to_owned(),
            event_position: event.log_position.position,
            event_id: event.event_id,
            stream_id: event.stream_id.clone(),
            event_type: event.event_type.clone(),
            error: crate::store::limits::stored_error_text(error),
            attempts,
            blocked_by: None,
        }
    }

    /// An event parked behind the earlier dead letter at `blocked_by` of its
    /// stream, without being tried.
    pub fn behind<T>(handler: &str, event: &Envelope<T>, blocked_by: u64) -> Self {
        NewDeadLetter {
            error: format!(
                "not applied: an earlier event of stream `{}` (global position {blocked_by}) is a dead letter of this handler; replaying it replays this one after it",
                event.stream_id
            ),
            attempts: 0,
            blocked_by: Some(blocked_by),
            ..Self::failed(handler, event, String::new(), 0)
        }
    }
}

/// Which dead letters to list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterQuery {
    /// Only this handler's (`None`: every handler's).
    pub handler: Option<String>,
    /// Only entries with this status (`None`: any).
    pub status: Option<DeadLetterStatus>,
    /// Only entries with an id greater than this (paging cursor: the last id
    /// of the previous page).
    pub after_id: u64,
    /// Page size.
    pub limit: usize,
}

impl DeadLetterQuery {
    /// The first page (100 entries) of a handler's pending dead letters.
    pub fn pending(handler: &str) -> Self {
        DeadLetterQuery {
            handler: Some(handler.to_owned()),
            status: Some(DeadLetterStatus::Pending),
            after_id: 0,
            limit: 100,
        }
    }

    /// Every entry, any handler and status, in pages of 100.
    pub fn all() -> Self {
        DeadLetterQuery {
            handler: None,
            status: None,
            after_id: 0,
            limit: 100,
        }
    }

    /// The page after the entry with id `id`.
    pub fn after(mut self, id: u64) -> Self {
        self.after_id = id;
        self
    }

    /// Sets the page size.
    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = limit;
        self
    }
}

/// The operator's view of the dead-letter queue: list, inspect, discard.
/// Parking and resolving happen inside a runner's transaction (see
/// [`ProjectionStore`](crate::ProjectionStore)); replays go through the
/// handler, so they are offered by the runners
/// ([`ProjectionRunner::replay`](crate::ProjectionRunner::replay)).
pub trait DeadLetterStore: Send + Sync {
    /// A page of dead letters, by id.
    fn list_dead_letters(
        &self,
        query: &DeadLetterQuery,
    ) -> impl Future<Output = Result<Vec<DeadLetter>, Error>> + Send;

    /// One dead letter.
    fn dead_letter(
        &self,
        id: u64,
    ) -> impl Future<Output = Result<Option<DeadLetter>, Error>> + Send;

    /// Gives up on a pending dead letter, with a reason. Returns `false`
    /// when it is not pending (already resolved or discarded, or unknown).
    /// Discarding an entry that later entries of its stream are parked
    /// behind unblocks them: replay or discard them next.
    fn discard_dead_letter(
        &self,
        id: u64,
        reason: &str,
    ) -> impl Future<Output = Result<bool, Error>> + Send;

    /// How many dead letters of a handler are pending.
    fn pending_dead_letters(
        &self,
        handler: &str,
    ) -> impl Future<Output = Result<u64, Error>> + Send;
}
