//! Test support: the backend conformance suite and the event types it uses.
//!
//! A backend proves it has the semantics of [`EventStore`](crate::EventStore)
//! by running [`conformance::run`] with a factory of fresh, empty stores.

pub mod conformance;
pub mod events;
pub mod knowledge;
