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

/// Derives [`Saga`] for an enum of states, checking the saga's shape at
/// compile time. See the [crate docs](crate#sagas) for the attributes.
pub use annals_macros::Saga;

/// The Postgres backend: [`connect`](postgres::connect),
/// [`migrate`](postgres::migrate), [`PgEventStore`](postgres::PgEventStore)
/// and the Postgres stores of snapshots, projections and sagas.
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
#[doc(inline)]
pub use annals_postgres as postgres;

/// The operator's console: admin commands (status, projections, dead
/// letters, sagas, streams, schemas, migrations) an application mounts as
/// a subcommand of its own binary ([`Admin`](admin::Admin)); with the
/// feature `admin-http`, the same operations as a JSON API and a status
/// page (`admin::http::router`).
#[cfg(feature = "admin")]
#[cfg_attr(docsrs, doc(cfg(feature = "admin")))]
pub use annals_admin as admin;

/// The knowledge base: vector search over documents fed by events, with
/// embedders, embedding caches, chunking and the embedding refresh job. Its
/// Postgres backend is `annals::postgres::knowledge`
/// (with the `postgres` feature).
#[cfg(feature = "knowledge")]
#[cfg_attr(docsrs, doc(cfg(feature = "knowledge")))]
#[doc(inline)]
pub use annals_core::knowledge;

/// What a command-side application imports: `use annals::prelude::*;`.
///
/// The derives and their traits, the repository and its errors, the store
/// traits with the in-memory stores, projections and their runner, and the
/// pieces of a saga.
pub mod prelude {
    pub use annals_core::testing::given;
    pub use annals_core::{
        Aggregate, AggregateState, CommandError, Envelope, Event, EventStore, EventStoreExt,
        ExpectedVersion, HandlerError, InMemoryEventStore, InMemoryProjectionStore,
        InMemorySnapshotStore, Metadata, Projection, ProjectionRunner, Repository,
    };
    pub use annals_core::{
        CommandBus, InMemorySagaStore, Issue, Saga, SagaData, SagaProjection, SagaWorker,
    };
    pub use annals_macros::{Aggregate, Event, Saga};
}

/// The README's code blocks, compiled and run as doc tests so the quick
/// start never drifts from the API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
