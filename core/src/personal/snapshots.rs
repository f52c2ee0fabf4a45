//! [`PersonalSnapshots`]: snapshots sealed for the subjects whose data
//! their aggregate's stream holds.

use std::collections::BTreeSet;
use std::sync::Arc;

use base64::Engine as _;
use serde_json::Value;

use super::keys::KEY_ID_BYTES;
use super::store::Shared;
use super::{DataKey, PersonalStore, SubjectKeys, SEALED};
use crate::snapshot::{Snapshot, SnapshotStore};
use crate::store::EventStore;
use crate::Error;

/// The key of the subjects a sealed snapshot was sealed for.
const SUBJECTS: &str = "$subjects";

/// A snapshot store beside a [`PersonalStore`]: a snapshot of an aggregate
/// whose stream holds personal data is sealed whole, with a key made from
/// the data keys of every subject whose data the stream holds, so that
/// forgetting any one of them makes the snapshot unreadable. An unreadable
/// snapshot reads as none: the aggregate is folded from its events (whose
/// personal fields read as forgotten) and snapshotted again.
///
/// A snapshot of a stream with no personal data is stored as it is. A
/// snapshot of a stream this process has neither read nor written through
/// the [`PersonalStore`] is not saved (whose data it holds is not known);
/// repositories always load before they save, so in practice every
/// snapshot is saved.
///
/// Made by [`PersonalStore::snapshots`]. Snapshots are read in two round
/// trips (the snapshot, then the events after it), not in the single
/// statement the Postgres snapshot store uses on its own.
#[derive(Debug)]
pub struct PersonalSnapshots<N, K> {
    inner: N,
    shared: Arc<Shared<K>>,
}

impl<N: Clone, K> Clone for PersonalSnapshots<N, K> {
    fn clone(&self) -> Self {
        PersonalSnapshots {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: EventStore + Clone, K: SubjectKeys> PersonalStore<S, K> {
    /// `inner` (a snapshot store of the wrapped store, such as
    /// `PgSnapshotStore`) sealing snapshots for this store's subjects.
    pub fn snapshots<N: SnapshotStore<S>>(&self, inner: N) -> PersonalSnapshots<N, K> {
        PersonalSnapshots {
            inner,
            shared: self.shared().clone(),
        }
    }
}

fn aad(snapshot: &Snapshot) -> String {
    format!("{}\u{0}{}", snapshot.aggregate_type, snapshot.aggregate_id)
}

impl<N, K: SubjectKeys> PersonalSnapshots<N, K> {
    /// The combined key of `subjects`, or `None` when one was forgotten.
    async fn key_of(&self, subjects: &BTreeSet<String>) -> Result<Option<DataKey>, Error> {
        self.shared.fetch(subjects.clone()).await?;
        let mut keys = Vec::with_capacity(subjects.len());
        for subject in subjects {
            match self.shared.cached(subject).flatten() {
                Some(key) => keys.push(key),
                None => return Ok(None),
            }
        }
        Ok(Some(DataKey::combine(&keys)))
    }

    /// The snapshot's state sealed, or `None` when it cannot be (a subject
    /// was forgotten, or this process does not know whose data it holds).
    async fn seal(&self, mut snapshot: Snapshot) -> Result<Option<Snapshot>, Error> {
        let Some(subjects) = self.shared.stream_subjects(&snapshot.aggregate_id) else {
            tracing::debug!(
                stream_id = %snapshot.aggregate_id,
                "snapshot not saved: the stream was not read through the personal store"
            );
            return Ok(None);
        };
        if subjects.is_empty() {
            return Ok(Some(snapshot));
        }
        let Some(key) = self.key_of(&subjects).await? else {
            return Ok(None);
        };
        let mut sealed = key.id().to_vec();
        sealed.extend(key.encrypt(snapshot.state.get().as_bytes(), aad(&snapshot).as_bytes()));
        let state = serde_json::json!({
            SEALED: base64::engine::general_purpose::STANDARD.encode(sealed),
            SUBJECTS: subjects,
        });
        snapshot.state = serde_json::value::to_raw_value(&state).map_err(|e| Error::Encode {
            event_type: snapshot.aggregate_type.clone(),
            source: e,
        })?;
        Ok(Some(snapshot))
    }

    /// The snapshot opened, or `None` when it does not open (a subject was
    /// forgotten, or it is damaged): the aggregate is then folded from its
    /// events.
    async fn open(&self, mut snapshot: Snapshot) -> Result<Option<Snapshot>, Error> {
        let state = snapshot.state.get();
        if !state.starts_with('{') || !state.contains(SUBJECTS) {
            return Ok(Some(snapshot));
        }
        let Ok(Value::Object(map)) = serde_json::from_str::<Value>(state) else {
            return Ok(Some(snapshot));
        };
        let (Some(Value::String(sealed)), Some(Value::Array(subjects)), 2) =
            (map.get(SEALED), map.get(SUBJECTS), map.len())
        else {
            return Ok(Some(snapshot));
        };
        let subjects: BTreeSet<String> = subjects
            .iter()
            .filter_map(|s| s.as_str().map(str::to_owned))
            .collect();
        self.shared
            .note_stream(&snapshot.aggregate_id, subjects.clone());
        let Some(key) = self.key_of(&subjects).await? else {
            return Ok(None);
        };
        let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(sealed) else {
            return Ok(None);
        };
        let Some((id, bytes)) = bytes.split_at_checked(KEY_ID_BYTES) else {
            return Ok(None);
        };
        if id != key.id() {
            return Ok(None);
        }
        let Some(plain) = key.decrypt(bytes, aad(&snapshot).as_bytes()) else {
            return Ok(None);
        };
        let Ok(text) = String::from_utf8(plain.to_vec()) else {
            return Ok(None);
        };
        let Ok(raw) = serde_json::value::RawValue::from_string(text) else {
            return Ok(None);
        };
        snapshot.state = raw;
        Ok(Some(snapshot))
    }
}

impl<S, K, N> SnapshotStore<PersonalStore<S, K>> for PersonalSnapshots<N, K>
where
    S: EventStore + Clone,
    K: SubjectKeys,
    N: SnapshotStore<S>,
{
    fn keeps_snapshots(&self) -> bool {
        self.inner.keeps_snapshots()
    }

    async fn load(
        &self,
        tenant: &crate::TenantId,
        aggregate_type: &str,
        aggregate_id: &str,
    ) -> Result<Option<Snapshot>, Error> {
        match self
            .inner
            .load(tenant, aggregate_type, aggregate_id)
            .await?
        {
            Some(snapshot) => self.open(snapshot).await,
            None => Ok(None),
        }
    }

    async fn save(&self, tenant: &crate::TenantId, snapshot: Snapshot) -> Result<(), Error> {
        match self.seal(snapshot).await? {
            Some(sealed) => self.inner.save(tenant, sealed).await,
            None => Ok(()),
        }
    }

    async fn replace(&self, tenant: &crate::TenantId, snapshot: Snapshot) -> Result<(), Error> {
        match self.seal(snapshot).await? {
            Some(sealed) => self.inner.replace(tenant, sealed).await,
            None => Ok(()),
        }
    }
}
