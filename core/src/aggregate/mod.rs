//! Aggregates: state rebuilt from events, commands decided against it, and
//! the [`Repository`] that loads them and runs their commands.

use serde_json::value::RawValue;

use crate::Event;

mod repository;

pub use repository::{CommandError, Executed, Loaded, Repository, SnapshotWrite};

/// What `#[derive(Aggregate)]` supplies: the aggregate's type name, its
/// event type, the snapshot policy and the snapshot codec.
///
/// The codec is the state's serde representation, tagged with a fingerprint
/// of the state's shape (from its JSON Schema) and an explicit codec version.
/// A stored snapshot whose fingerprint or codec version differs from the
/// code's is ignored (the aggregate is replayed in full and a fresh snapshot
/// written), so changing the state's fields never loads a wrong state.
pub trait AggregateState: Default + Send + Sync + Sized + 'static {
    /// The aggregate type's name (`lead`); streams are named `{TYPE}-{id}`.
    const TYPE: &'static str;
    /// Snapshot every this many events (`None`: no snapshots).
    const SNAPSHOT_EVERY: Option<u64>;
    /// The snapshot codec version; bump it to invalidate every stored
    /// snapshot when the meaning (not the shape) of the state changed.
    const CODEC_VERSION: u32;

    /// The aggregate's events.
    type Event: Event;

    /// The fingerprint of the state's shape.
    fn state_fingerprint() -> &'static str;

    /// Serializes the state for a snapshot.
    fn encode_state(&self) -> Result<Box<RawValue>, serde_json::Error>;

    /// Deserializes a snapshot's state.
    fn decode_state(state: &RawValue) -> Result<Self, serde_json::Error>;

    /// The stream that holds an aggregate's events.
    fn stream_id(id: &str) -> String {
        format!("{}-{id}", Self::TYPE)
    }
}

/// An event-sourced aggregate: decides events from its state and a command,
/// and folds events into its state.
///
/// ```
/// use annals::{Aggregate, AggregateState};
/// # #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
/// # struct Opened { by: String }
/// # #[derive(Debug, Clone, PartialEq, annals::Event)]
/// # enum CounterEvent { Opened(Opened), Added(u32) }
/// #[derive(Default, serde::Serialize, serde::Deserialize, schemars::JsonSchema, annals::Aggregate)]
/// #[aggregate(event = CounterEvent, snapshot_every = 100)]
/// struct Counter { open: bool, total: u64 }
///
/// #[derive(Debug, thiserror::Error)]
/// #[error("the counter is closed")]
/// struct Closed;
///
/// impl Aggregate for Counter {
///     type Command = u32;
///     type Error = Closed;
///     fn handle(&self, add: &u32) -> Result<Vec<CounterEvent>, Closed> {
///         if !self.open { return Err(Closed) }
///         Ok(vec![CounterEvent::Added(*add)])
///     }
///     fn apply(&mut self, event: &CounterEvent) {
///         match event {
///             CounterEvent::Opened(_) => self.open = true,
///             CounterEvent::Added(n) => self.total += u64::from(*n),
///         }
///     }
/// }
/// assert_eq!(Counter::TYPE, "counter");
/// assert_eq!(Counter::SNAPSHOT_EVERY, Some(100));
/// ```
pub trait Aggregate: AggregateState {
    /// The commands the aggregate handles.
    type Command: Send + Sync;
    /// The domain error a command can be rejected with.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Decides the events a command produces (none: nothing to do).
    fn handle(&self, command: &Self::Command) -> Result<Vec<Self::Event>, Self::Error>;

    /// Folds one event into the state. Must not fail: events are facts.
    fn apply(&mut self, event: &Self::Event);
}

// Named here, not only through `__private`, so that compiler messages about
// a state that cannot be snapshotted name `annals::aggregate::StateCodec`.
#[doc(hidden)]
pub use private::{state_codec, StateCodec};

/// Helpers for the code `#[derive(Aggregate)]` generates.
pub(crate) mod private {
    use serde::de::DeserializeOwned;
    use serde::Serialize;
    use serde_json::value::RawValue;

    /// What a snapshotted state needs.
    #[diagnostic::on_unimplemented(
        message = "`{Self}` cannot be an aggregate state: it must implement `Serialize`, `Deserialize` and `JsonSchema` (for its snapshot codec)",
        label = "not snapshot-encodable",
        note = "derive them: `#[derive(Default, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]`"
    )]
    pub trait StateCodec: Sized {
        /// The fingerprint of the state's shape.
        fn shape_fingerprint() -> String;
        /// Serializes the state.
        fn encode_state_payload(&self) -> Result<Box<RawValue>, serde_json::Error>;
        /// Deserializes the state.
        fn decode_state_payload(state: &RawValue) -> Result<Self, serde_json::Error>;
    }

    /// The codec's functions, obtained through one bound so that a state
    /// without serde/schemars gets exactly one error.
    #[allow(missing_debug_implementations)]
    pub struct StateCodecFns<T> {
        /// The shape fingerprint.
        pub fingerprint: fn() -> String,
        /// Serializes.
        pub encode: fn(&T) -> Result<Box<RawValue>, serde_json::Error>,
        /// Deserializes.
        pub decode: fn(&RawValue) -> Result<T, serde_json::Error>,
    }

    /// The codec of `T`.
    pub fn state_codec<T: StateCodec>() -> StateCodecFns<T> {
        StateCodecFns {
            fingerprint: T::shape_fingerprint,
            encode: T::encode_state_payload,
            decode: T::decode_state_payload,
        }
    }

    #[diagnostic::do_not_recommend]
    impl<T: Serialize + DeserializeOwned + schemars::JsonSchema> StateCodec for T {
        fn shape_fingerprint() -> String {
            crate::schema::fingerprint(&crate::__private::schema_of::<T>())
        }
        fn encode_state_payload(&self) -> Result<Box<RawValue>, serde_json::Error> {
            serde_json::value::to_raw_value(self)
        }
        fn decode_state_payload(state: &RawValue) -> Result<Self, serde_json::Error> {
            serde_json::from_str(state.get())
        }
    }
}
