#![doc = include_str!("docs/crate.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub use annals_core::*;

/// Derives [`Event`] for an enum (one newtype variant per event type) or a
/// struct (one event type). See the [crate docs](crate#events) for the
/// attributes.
pub use annals_macros::Event;

/// Derives [`AggregateState`] for an aggregate's state: its type name, event
/// type, snapshot policy and snapshot codec. See the [crate docs](crate#aggregates).
pub use annals_macros::Aggregate;

/// The Postgres backend (`annals-postgres`).
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use annals_postgres as postgres;

/// The most used items: `use annals::prelude::*;`.
pub mod prelude {
    pub use annals_core::{
        given, Aggregate, AggregateState, Envelope, Event, EventStore, EventStoreExt,
        ExpectedVersion, InMemoryEventStore, InMemorySnapshotStore, Metadata, Projection,
        Repository,
    };
    pub use annals_macros::{Aggregate, Event};
}

/// The README's code blocks, compiled and run as doc tests so the quick
/// start never drifts from the API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
