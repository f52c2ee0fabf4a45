//! Test support.
//!
//! - [`given`] / [`Scenario`]: given/when/then tests of an aggregate's
//!   decisions, with no store involved.
//! - With the `testing` feature: the backend conformance suite
//!   ([`conformance`]; a backend proves it has the semantics of
//!   [`EventStore`](crate::EventStore) by running [`conformance::run`] with
//!   a factory of fresh, empty stores) and the event types it uses.
//! - With the `testing` and `knowledge` features: the knowledge base's
//!   conformance suite ([`knowledge`]).
//! - With the `testing` and `otel` features: the trace check ([`trace`]):
//!   one trace from a request through the log, on any backend.

mod scenario;

pub use scenario::{given, Scenario, ScenarioWhen};

#[cfg(feature = "testing")]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
pub mod conformance;
#[cfg(feature = "testing")]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
pub mod events;
#[cfg(all(feature = "testing", feature = "knowledge"))]
#[cfg_attr(docsrs, doc(cfg(all(feature = "testing", feature = "knowledge"))))]
pub mod knowledge;
#[cfg(all(feature = "testing", feature = "personal"))]
#[cfg_attr(docsrs, doc(cfg(all(feature = "testing", feature = "personal"))))]
pub mod personal;
#[cfg(all(feature = "testing", feature = "otel"))]
#[cfg_attr(docsrs, doc(cfg(all(feature = "testing", feature = "otel"))))]
pub mod trace;
