//! What a handler (a projection, a saga step, an outbound call) returns
//! when it fails, and how annals tells a bad event from a failing
//! dependency: the first is retried a little and parked as a dead letter,
//! the second is retried with backoff behind a circuit breaker and never
//! parked.

use std::fmt;

/// What kind of failure a handler reports, which decides what the runner
/// does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FailureKind {
    /// Handling this event failed (bad data, a bug, a rejected write).
    /// Retried per the handler's [`RetryPolicy`](crate::RetryPolicy); after
    /// the last attempt the event is parked as a dead letter, or the handler
    /// stops, by its policy. Does not count against the circuit breaker.
    Event,
    /// A dependency failed (a service that is down, a timeout). Retried
    /// with backoff and counted by the handler's circuit breaker; while the
    /// breaker is open the handler pauses. Never parks the event: the event
    /// is not at fault.
    Dependency,
}

/// The error a handler (projection, saga step, outbound call) returns.
///
/// Any error converts into one of kind [`FailureKind::Event`] with `?`;
/// [`HandlerError::dependency`] marks a failure of something the handler
/// depends on.
pub struct HandlerError {
    kind: FailureKind,
    source: Box<dyn std::error::Error + Send + Sync + 'static>,
}

impl HandlerError {
    /// A failure to handle the event itself ([`FailureKind::Event`]).
    pub fn event(source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>) -> Self {
        HandlerError {
            kind: FailureKind::Event,
            source: source.into(),
        }
    }

    /// A failure of a dependency ([`FailureKind::Dependency`]).
    pub fn dependency(
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        HandlerError {
            kind: FailureKind::Dependency,
            source: source.into(),
        }
    }

    /// The kind of failure.
    pub fn kind(&self) -> FailureKind {
        self.kind
    }

    /// The underlying error.
    pub fn source(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.source
    }

    /// The underlying error, owned.
    pub fn into_source(self) -> Box<dyn std::error::Error + Send + Sync + 'static> {
        self.source
    }
}

impl<E: Into<Box<dyn std::error::Error + Send + Sync + 'static>>> From<E> for HandlerError {
    fn from(e: E) -> Self {
        HandlerError::event(e)
    }
}

impl fmt::Debug for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerError")
            .field("kind", &self.kind)
            .field("source", &self.source)
            .finish()
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            FailureKind::Event => fmt::Display::fmt(&self.source, f),
            FailureKind::Dependency => write!(f, "dependency failed: {}", self.source),
        }
    }
}
