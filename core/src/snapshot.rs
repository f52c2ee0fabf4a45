//! Snapshots: an aggregate's state at a stream version, so that a load
//! replays only the events after it.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use serde_json::value::RawValue;

use crate::store::{EventStore, PayloadRef, Session};
use crate::tenant::TenantId;
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

    /// The aggregate's snapshot in `tenant`'s snapshots, if any.
    fn load(
        &self,
        tenant: &TenantId,
        aggregate_type: &str,
        aggregate_id: &str,
    ) -> impl Future<Output = Result<Option<Snapshot>, Error>> + Send;

    /// Saves a snapshot among `tenant`'s.
    fn save(
        &self,
        tenant: &TenantId,
        snapshot: Snapshot,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// Saves a snapshot over the stored one whatever their versions: what a
    /// repository writes after it found the stored snapshot unusable (one
    /// beyond the end of its stream has a higher version than any fresh
    /// one, and would otherwise stay). The default is [`save`](Self::save).
    fn replace(
        &self,
        tenant: &TenantId,
        snapshot: Snapshot,
    ) -> impl Future<Output = Result<(), Error>> + Send {
        self.save(tenant, snapshot)
    }

    /// Loads the snapshot of the aggregate whose stream is `stream_id` and
    /// folds the stream's events after it into `fold`, on `session`: first
    /// [`SnapshotFold::snapshot`] with the snapshot (which says from which
    /// version to go on), then [`SnapshotFold::event`] for each later event
    /// in version order. Returns how many events were folded.
    ///
    /// A snapshot whose version lies beyond the end of its stream (the
    /// stream was cut, restored from an older backup, or the row was
    /// written by hand) is not handed to [`SnapshotFold::snapshot`]: the
    /// fold is told it is unusable ([`SnapshotFold::snapshot_unusable`],
    /// reason [`BEYOND_STREAM`]) and the stream is folded from its first
    /// event. Trusting it would make the aggregate's version one the stream
    /// never reaches, and every later command a conflict.
    ///
    /// The default loads the snapshot, then folds on the session from the
    /// snapshot's own version (its event proves that the stream reaches
    /// the snapshot, and is skipped): two round trips. The Postgres store
    /// reads both in one statement.
    fn load_and_fold<F>(
        &self,
        session: &mut S::Session,
        tenant: &TenantId,
        aggregate_type: &str,
        stream_id: &str,
        fold: &mut F,
    ) -> impl Future<Output = Result<u64, Error>> + Send
    where
        F: SnapshotFold + Send,
    {
        async move {
            let snapshot = self.load(tenant, aggregate_type, stream_id).await?;
            let Some(snapshot) = snapshot.filter(|s| s.version > 0) else {
                let from = fold.snapshot(None);
                return session
                    .fold_stream_payloads(stream_id, from + 1.., |p| fold.event(p))
                    .await;
            };
            let version = snapshot.version;
            // the snapshot goes to the fold when the event at its version
            // arrives; the events after it are folded only if the fold
            // takes the snapshot
            let mut pending = Some(snapshot);
            let mut from = None;
            let mut folded = 0;
            session
                .fold_stream_payloads(stream_id, version.., |p| {
                    if let Some(s) = pending.take() {
                        from = Some(fold.snapshot(Some(s)));
                        return Ok(());
                    }
                    if from != Some(version) {
                        return Ok(());
                    }
                    folded += 1;
                    fold.event(p)
                })
                .await?;
            match (pending, from) {
                // no event at the snapshot's version: beyond the stream
                (Some(s), _) => {
                    fold.snapshot_unusable(s, BEYOND_STREAM);
                    session
                        .fold_stream_payloads(stream_id, .., |p| fold.event(p))
                        .await
                }
                (None, Some(from)) if from == version => Ok(folded),
                // the fold refused the snapshot: from where it asks
                (None, from) => {
                    let from = from.unwrap_or(0);
                    session
                        .fold_stream_payloads(stream_id, from + 1.., |p| fold.event(p))
                        .await
                }
            }
        }
    }
}

/// The reason a snapshot is unusable when its version lies beyond the end
/// of its stream (see [`SnapshotStore::load_and_fold`]); the `reason`
/// label of the snapshot invalidation metric.
pub const BEYOND_STREAM: &str = "beyond_stream";

/// What [`SnapshotStore::load_and_fold`] feeds: a snapshot, then events.
pub trait SnapshotFold {
    /// Takes the stored snapshot (`None`: there is none) and returns the
    /// stream version it stands for if it is usable, or 0 if it is not (the
    /// stream is then folded from its first event).
    fn snapshot(&mut self, snapshot: Option<Snapshot>) -> u64;

    /// Folds one event after the snapshot.
    fn event(&mut self, payload: PayloadRef<'_>) -> Result<(), Error>;

    /// Told, instead of [`snapshot`](Self::snapshot), that the stored
    /// snapshot cannot be used for a reason only the store can see (e.g.
    /// [`BEYOND_STREAM`]): the stream is then folded from its first event.
    /// The default treats it as no snapshot.
    fn snapshot_unusable(&mut self, snapshot: Snapshot, reason: &'static str) {
        let _ = (snapshot, reason);
        self.snapshot(None);
    }
}

/// No snapshots: every load replays the whole stream.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoSnapshots;

impl<S: EventStore> SnapshotStore<S> for NoSnapshots {
    fn keeps_snapshots(&self) -> bool {
        false
    }

    async fn load(&self, _: &TenantId, _: &str, _: &str) -> Result<Option<Snapshot>, Error> {
        Ok(None)
    }

    async fn save(&self, _: &TenantId, _: Snapshot) -> Result<(), Error> {
        Ok(())
    }
}

/// Snapshots in memory, by tenant. Cloning shares the store.
#[derive(Debug, Clone, Default)]
pub struct InMemorySnapshotStore {
    inner: Arc<Mutex<HashMap<SnapshotKey, Snapshot>>>,
}

/// A snapshot's tenant, aggregate type and aggregate id.
type SnapshotKey = (TenantId, String, String);

fn key(tenant: &TenantId, snapshot: &Snapshot) -> SnapshotKey {
    (
        tenant.clone(),
        snapshot.aggregate_type.clone(),
        snapshot.aggregate_id.clone(),
    )
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

    /// Replaces a snapshot of the default tenant unconditionally (for
    /// tests of corrupted or outdated snapshots).
    pub fn put(&self, snapshot: Snapshot) {
        self.put_in(&TenantId::default(), snapshot);
    }

    /// Replaces a snapshot of `tenant` unconditionally.
    pub fn put_in(&self, tenant: &TenantId, snapshot: Snapshot) {
        self.lock().insert(key(tenant, &snapshot), snapshot);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SnapshotKey, Snapshot>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl<S: EventStore> SnapshotStore<S> for InMemorySnapshotStore {
    async fn load(
        &self,
        tenant: &TenantId,
        aggregate_type: &str,
        aggregate_id: &str,
    ) -> Result<Option<Snapshot>, Error> {
        crate::store::limits::check_stream_id(aggregate_id)?;
        Ok(self
            .lock()
            .get(&(
                tenant.clone(),
                aggregate_type.to_owned(),
                aggregate_id.to_owned(),
            ))
            .cloned())
    }

    async fn replace(&self, tenant: &TenantId, snapshot: Snapshot) -> Result<(), Error> {
        crate::store::limits::check_stream_id(&snapshot.aggregate_id)?;
        crate::store::limits::check_snapshot_state(snapshot.state.get())?;
        self.put_in(tenant, snapshot);
        Ok(())
    }

    async fn save(&self, tenant: &TenantId, snapshot: Snapshot) -> Result<(), Error> {
        crate::store::limits::check_stream_id(&snapshot.aggregate_id)?;
        crate::store::limits::check_snapshot_state(snapshot.state.get())?;
        let mut map = self.lock();
        let key = key(tenant, &snapshot);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{EventStore, ExpectedVersion, InMemoryEventStore, Metadata, NewEvent};

    /// Records what the store feeds it; takes a snapshot when `accept`.
    #[derive(Default)]
    struct Recorder {
        accept: bool,
        snapshot: Option<Option<u64>>,
        unusable: Vec<&'static str>,
        events: Vec<u64>,
    }

    impl SnapshotFold for Recorder {
        fn snapshot(&mut self, snapshot: Option<Snapshot>) -> u64 {
            self.snapshot = Some(snapshot.as_ref().map(|s| s.version));
            match snapshot {
                Some(s) if self.accept => s.version,
                _ => 0,
            }
        }

        fn event(&mut self, payload: PayloadRef<'_>) -> Result<(), Error> {
            self.events.push(payload.stream_version);
            Ok(())
        }

        fn snapshot_unusable(&mut self, _: Snapshot, reason: &'static str) {
            self.unusable.push(reason);
        }
    }

    fn at(version: u64) -> Snapshot {
        Snapshot {
            aggregate_type: "t".into(),
            aggregate_id: "s".into(),
            version,
            state: serde_json::value::to_raw_value(&0).unwrap_or_else(|e| panic!("{e}")),
            fingerprint: "f".into(),
            codec_version: 1,
        }
    }

    async fn fold(snapshot: Option<u64>, accept: bool) -> (Recorder, u64) {
        let store = InMemoryEventStore::new().without_validation();
        let payload = serde_json::value::to_raw_value(&1).unwrap_or_else(|e| panic!("{e}"));
        let events = (0..3)
            .map(|_| NewEvent::new("t.e", 1, payload.clone(), Metadata::new()))
            .collect();
        store
            .append("s", ExpectedVersion::NoStream, events)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let snapshots = InMemorySnapshotStore::new();
        if let Some(v) = snapshot {
            snapshots.put(at(v));
        }
        let mut session = store.session().await.unwrap_or_else(|e| panic!("{e}"));
        let mut recorder = Recorder {
            accept,
            ..Recorder::default()
        };
        let n = SnapshotStore::<InMemoryEventStore>::load_and_fold(
            &snapshots,
            &mut session,
            &TenantId::default(),
            "t",
            "s",
            &mut recorder,
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        (recorder, n)
    }

    #[tokio::test]
    async fn the_default_load_checks_that_the_stream_reaches_the_snapshot() {
        let (r, n) = fold(None, true).await;
        assert_eq!((r.snapshot, r.events, n), (Some(None), vec![1, 2, 3], 3));
        let (r, n) = fold(Some(2), true).await;
        assert_eq!((r.snapshot, r.events, n), (Some(Some(2)), vec![3], 1));
        let (r, n) = fold(Some(3), true).await;
        assert_eq!((r.snapshot, r.events, n), (Some(Some(3)), vec![], 0));
        // refused by the fold: from the start
        let (r, n) = fold(Some(2), false).await;
        assert_eq!((r.snapshot, r.events, n), (Some(Some(2)), vec![1, 2, 3], 3));
        // beyond the stream: never handed to the fold as usable
        let (r, n) = fold(Some(9), true).await;
        assert_eq!(r.snapshot, None);
        assert_eq!(r.unusable, vec![BEYOND_STREAM]);
        assert_eq!((r.events, n), (vec![1, 2, 3], 3));
    }
}
