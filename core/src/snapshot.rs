//! Snapshots: an aggregate's state at a stream version, so that a load
//! replays only the events after it.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use serde_json::value::RawValue;

use crate::store::{EventStore, PayloadRef, Session};
use crate::Error;

/// A stored snapshot of an aggregate's state.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The aggregate type.
    pub aggregate_type: String,
    /// The aggregate's stream id.
    pub aggregate_id: String,
    /// The stream version of the last event folded into `state`.
    pub version: u64,
    /// The encoded state.
    pub state: Box<RawValue>,
    /// The fingerprint of the state's shape when it was written.
    pub fingerprint: String,
    /// The codec version when it was written.
    pub codec_version: u32,
}

/// Where snapshots live. One snapshot per aggregate; a save never replaces a
/// newer snapshot of the same shape with an older one.
///
/// `S` is the event store the snapshots are kept beside: a command loads
/// the snapshot and the events after it on one [`Session`] of `S`
/// ([`load_and_fold`](Self::load_and_fold)). The in-memory stores keep
/// snapshots beside any event store; the Postgres snapshot store is made
/// from its `PgEventStore`, so both are always on the same database.
pub trait SnapshotStore<S: EventStore>: Clone + Send + Sync + 'static {
    /// Whether this store keeps snapshots at all ([`NoSnapshots`] keeps
    /// none, so a repository over it neither loads nor encodes one).
    fn keeps_snapshots(&self) -> bool {
        true
    }

    /// The aggregate's snapshot, if any.
    fn load(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
    ) -> impl Future<Output = Result<Option<Snapshot>, Error>> + Send;

    /// Saves a snapshot.
    fn save(&self, snapshot: Snapshot) -> impl Future<Output = Result<(), Error>> + Send;

    /// Loads the snapshot of the aggregate whose stream is `stream_id` and
    /// folds the stream's events after it into `fold`, on `session`: first
    /// [`SnapshotFold::snapshot`] with the snapshot (which says from which
    /// version to go on), then [`SnapshotFold::event`] for each later event
    /// in version order. Returns how many events were folded.
    ///
    /// The default loads the snapshot, then folds on the session: two round
    /// trips. The Postgres store reads both in one statement.
    fn load_and_fold<F>(
        &self,
        session: &mut S::Session,
        aggregate_type: &str,
        stream_id: &str,
        fold: &mut F,
    ) -> impl Future<Output = Result<u64, Error>> + Send
    where
        F: SnapshotFold + Send,
    {
        async move {
            let snapshot = self.load(aggregate_type, stream_id).await?;
            let from = fold.snapshot(snapshot);
            session
                .fold_stream_payloads(stream_id, from + 1.., |p| fold.event(p))
                .await
        }
    }
}

/// What [`SnapshotStore::load_and_fold`] feeds: a snapshot, then events.
pub trait SnapshotFold {
    /// Takes the stored snapshot (`None`: there is none) and returns the
    /// stream version it stands for if it is usable, or 0 if it is not (the
    /// stream is then folded from its first event).
    fn snapshot(&mut self, snapshot: Option<Snapshot>) -> u64;

    /// Folds one event after the snapshot.
    fn event(&mut self, payload: PayloadRef<'_>) -> Result<(), Error>;
}

/// No snapshots: every load replays the whole stream.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoSnapshots;

impl<S: EventStore> SnapshotStore<S> for NoSnapshots {
    fn keeps_snapshots(&self) -> bool {
        false
    }

    async fn load(&self, _: &str, _: &str) -> Result<Option<Snapshot>, Error> {
        Ok(None)
    }

    async fn save(&self, _: Snapshot) -> Result<(), Error> {
        Ok(())
    }
}

/// Snapshots in memory. Cloning shares the store.
#[derive(Debug, Clone, Default)]
pub struct InMemorySnapshotStore {
    inner: Arc<Mutex<HashMap<(String, String), Snapshot>>>,
}

impl InMemorySnapshotStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many snapshots the store holds.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Replaces a snapshot unconditionally (for tests of corrupted or
    /// outdated snapshots).
    pub fn put(&self, snapshot: Snapshot) {
        self.lock().insert(
            (
                snapshot.aggregate_type.clone(),
                snapshot.aggregate_id.clone(),
            ),
            snapshot,
        );
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Snapshot>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl<S: EventStore> SnapshotStore<S> for InMemorySnapshotStore {
    async fn load(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
    ) -> Result<Option<Snapshot>, Error> {
        Ok(self
            .lock()
            .get(&(aggregate_type.to_owned(), aggregate_id.to_owned()))
            .cloned())
    }

    async fn save(&self, snapshot: Snapshot) -> Result<(), Error> {
        let mut map = self.lock();
        let key = (
            snapshot.aggregate_type.clone(),
            snapshot.aggregate_id.clone(),
        );
        let replace = match map.get(&key) {
            None => true,
            Some(old) => {
                old.version < snapshot.version
                    || old.fingerprint != snapshot.fingerprint
                    || old.codec_version != snapshot.codec_version
            }
        };
        if replace {
            map.insert(key, snapshot);
        }
        Ok(())
    }
}
