//! The data key of each subject.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};

use super::{DataKey, KeyProvider, PersonalError, WrappedKey};
use crate::TenantId;

/// Progress of re-wrapping the data keys under a new KEK.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KeyRotation {
    /// Keys re-wrapped by this call.
    pub rewrapped: u64,
    /// Keys still wrapped by an older KEK (0: the rotation is done).
    pub remaining: u64,
}

/// Where each subject's data key lives, wrapped by a KEK. A forgotten
/// subject leaves a tombstone: its key is gone, and no key is created for
/// it again unless the application says so ([`start_again`](Self::start_again)).
pub trait SubjectKeys: Clone + Send + Sync + 'static {
    /// The key to write `subject`'s personal data with, created on first
    /// use. [`PersonalError::Forgotten`] when the subject was forgotten.
    fn key_for_writing(
        &self,
        subject: &str,
    ) -> impl Future<Output = Result<DataKey, PersonalError>> + Send;

    /// The key to read `subject`'s personal data with; `None` when the
    /// subject was forgotten (or never had one): its values read as
    /// forgotten.
    fn key_for_reading(
        &self,
        subject: &str,
    ) -> impl Future<Output = Result<Option<DataKey>, PersonalError>> + Send;

    /// Deletes the subject's key and leaves a tombstone. Returns whether a
    /// key was deleted.
    fn forget(&self, subject: &str) -> impl Future<Output = Result<bool, PersonalError>> + Send;

    /// Lets a forgotten subject have personal data again, under a new key
    /// (what was written before stays unreadable).
    fn start_again(&self, subject: &str) -> impl Future<Output = Result<(), PersonalError>> + Send;

    /// Re-wraps up to `batch` keys still wrapped by an older KEK with the
    /// current one. Resumable: call it until `remaining` is 0; an
    /// interrupted rotation goes on where it stopped.
    ///
    /// A rotation walks the keys of every tenant, whichever tenant the
    /// handle is scoped to: a KEK is the deployment's, not a tenant's.
    fn rewrap(
        &self,
        batch: usize,
    ) -> impl Future<Output = Result<KeyRotation, PersonalError>> + Send;

    /// The tenant whose subjects this handle's keys are (see
    /// [`crate::tenant`]): a subject id names a person within a tenant, so
    /// the same id in two tenants has two keys, and forgetting it in one
    /// leaves the other's.
    fn tenant_id(&self) -> &TenantId;

    /// The same keys scoped to `tenant`.
    fn in_tenant(&self, tenant: TenantId) -> Self;
}

/// The name a tenant's subject key is wrapped under (what the KEK binds
/// the wrapped key to): the subject itself in the default tenant (as
/// before tenants, so existing keys unwrap), `{tenant}/{subject}` in any
/// other, so that a wrapped key copied to another tenant's row does not
/// unwrap there.
pub fn wrapping_name<'a>(tenant: &TenantId, subject: &'a str) -> Cow<'a, str> {
    if tenant.as_str() == TenantId::DEFAULT_NAME {
        Cow::Borrowed(subject)
    } else {
        Cow::Owned(format!("{tenant}/{subject}"))
    }
}

#[derive(Debug, Clone)]
enum Entry {
    Key(WrappedKey),
    Tombstone,
}

#[derive(Debug)]
struct State<P> {
    current: Arc<P>,
    older: Vec<Arc<P>>,
    subjects: BTreeMap<SubjectAt, Entry>,
}

/// A subject of a tenant.
type SubjectAt = (TenantId, String);

/// Subject keys in memory (the embedded default; nothing survives the
/// process). Keys are kept wrapped, as a database keeps them.
#[derive(Debug)]
pub struct InMemorySubjectKeys<P> {
    state: Arc<Mutex<State<P>>>,
    tenant: TenantId,
}

impl<P> Clone for InMemorySubjectKeys<P> {
    fn clone(&self) -> Self {
        InMemorySubjectKeys {
            state: self.state.clone(),
            tenant: self.tenant.clone(),
        }
    }
}

impl<P: KeyProvider> InMemorySubjectKeys<P> {
    /// Keys wrapped by `kek`.
    pub fn new(kek: P) -> Self {
        InMemorySubjectKeys {
            state: Arc::new(Mutex::new(State {
                current: Arc::new(kek),
                older: Vec::new(),
                subjects: BTreeMap::new(),
            })),
            tenant: TenantId::default(),
        }
    }

    /// Makes `kek` the current KEK: new keys are wrapped by it, and
    /// [`rewrap`](SubjectKeys::rewrap) moves the existing ones to it. The
    /// older KEK is kept to unwrap what it wrapped until then.
    pub fn rotate_to(&self, kek: P) {
        let mut state = self.lock();
        let old = std::mem::replace(&mut state.current, Arc::new(kek));
        state.older.push(old);
    }

    fn lock(&self) -> MutexGuard<'_, State<P>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn provider_for(&self, kek_id: &str) -> Option<Arc<P>> {
        let state = self.lock();
        std::iter::once(&state.current)
            .chain(state.older.iter().rev())
            .find(|p| p.kek_id() == kek_id)
            .cloned()
    }

    async fn unwrap(
        &self,
        tenant: &TenantId,
        subject: &str,
        wrapped: &WrappedKey,
    ) -> Result<DataKey, PersonalError> {
        let provider =
            self.provider_for(&wrapped.kek_id)
                .ok_or_else(|| PersonalError::WrongKek {
                    subject: subject.to_owned(),
                    kek_id: wrapped.kek_id.clone(),
                })?;
        provider
            .unwrap(&wrapping_name(tenant, subject), wrapped)
            .await
    }

    fn entry(&self, subject: &str) -> Option<Entry> {
        self.lock().subjects.get(&self.key(subject)).cloned()
    }

    fn key(&self, subject: &str) -> SubjectAt {
        (self.tenant.clone(), subject.to_owned())
    }
}

impl<P: KeyProvider> SubjectKeys for InMemorySubjectKeys<P> {
    async fn key_for_writing(&self, subject: &str) -> Result<DataKey, PersonalError> {
        crate::store::limits::check_subject(subject)?;
        let existing = self.entry(subject);
        match existing {
            Some(Entry::Key(wrapped)) => self.unwrap(&self.tenant, subject, &wrapped).await,
            Some(Entry::Tombstone) => Err(PersonalError::Forgotten {
                subject: subject.to_owned(),
            }),
            None => {
                let key = DataKey::generate();
                let current = self.lock().current.clone();
                let wrapped = current
                    .wrap(&wrapping_name(&self.tenant, subject), &key)
                    .await?;
                // another writer may have created it, or a forget may have
                // come, meanwhile: the stored entry wins
                let stored = {
                    let mut state = self.lock();
                    let stored = state.subjects.get(&self.key(subject)).cloned();
                    if stored.is_none() {
                        state
                            .subjects
                            .insert(self.key(subject), Entry::Key(wrapped));
                    }
                    stored
                };
                match stored {
                    Some(Entry::Tombstone) => Err(PersonalError::Forgotten {
                        subject: subject.to_owned(),
                    }),
                    Some(Entry::Key(theirs)) => self.unwrap(&self.tenant, subject, &theirs).await,
                    None => Ok(key),
                }
            }
        }
    }

    async fn key_for_reading(&self, subject: &str) -> Result<Option<DataKey>, PersonalError> {
        let existing = self.entry(subject);
        match existing {
            Some(Entry::Key(wrapped)) => {
                self.unwrap(&self.tenant, subject, &wrapped).await.map(Some)
            }
            Some(Entry::Tombstone) | None => Ok(None),
        }
    }

    async fn forget(&self, subject: &str) -> Result<bool, PersonalError> {
        crate::store::limits::check_subject(subject)?;
        let before = self
            .lock()
            .subjects
            .insert(self.key(subject), Entry::Tombstone);
        Ok(matches!(before, Some(Entry::Key(_))))
    }

    async fn start_again(&self, subject: &str) -> Result<(), PersonalError> {
        let mut state = self.lock();
        let key = self.key(subject);
        if matches!(state.subjects.get(&key), Some(Entry::Tombstone)) {
            state.subjects.remove(&key);
        }
        Ok(())
    }

    async fn rewrap(&self, batch: usize) -> Result<KeyRotation, PersonalError> {
        let (current, old): (Arc<P>, Vec<(SubjectAt, WrappedKey)>) = {
            let state = self.lock();
            let current = state.current.clone();
            let old = state
                .subjects
                .iter()
                .filter_map(|(s, e)| match e {
                    Entry::Key(w) if w.kek_id != current.kek_id() => Some((s.clone(), w.clone())),
                    _ => None,
                })
                .collect();
            (current, old)
        };
        let mut rotation = KeyRotation {
            rewrapped: 0,
            remaining: old.len() as u64,
        };
        for (at, wrapped) in old.into_iter().take(batch) {
            let (tenant, subject) = &at;
            let key = self.unwrap(tenant, subject, &wrapped).await?;
            let rewrapped = current.wrap(&wrapping_name(tenant, subject), &key).await?;
            // a key forgotten meanwhile stays forgotten
            if let Some(Entry::Key(w)) = self.lock().subjects.get_mut(&at) {
                if *w == wrapped {
                    *w = rewrapped;
                }
            }
            rotation.rewrapped += 1;
            rotation.remaining -= 1;
        }
        Ok(rotation)
    }

    fn tenant_id(&self) -> &TenantId {
        &self.tenant
    }

    fn in_tenant(&self, tenant: TenantId) -> Self {
        InMemorySubjectKeys {
            state: self.state.clone(),
            tenant,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::personal::LocalKeyProvider;

    #[tokio::test]
    async fn a_forgotten_subject_stays_forgotten_until_started_again() {
        let keys = InMemorySubjectKeys::new(LocalKeyProvider::generate("kek-1"));
        let a = keys.key_for_writing("a").await.expect("created");
        let sealed = a.encrypt(b"Ana", b"");
        let again = keys
            .key_for_reading("a")
            .await
            .expect("read")
            .expect("a key");
        assert!(again.decrypt(&sealed, b"").is_some(), "the same key");
        assert!(keys.forget("a").await.expect("forget"));
        assert!(keys.key_for_reading("a").await.expect("read").is_none());
        assert!(matches!(
            keys.key_for_writing("a").await,
            Err(PersonalError::Forgotten { subject }) if subject == "a"
        ));
        assert!(
            !keys.forget("a").await.expect("forget twice"),
            "nothing left to delete"
        );
        keys.start_again("a").await.expect("start again");
        let fresh = keys.key_for_writing("a").await.expect("a new key");
        assert!(
            fresh.decrypt(&sealed, b"").is_none(),
            "old data stays unreadable"
        );
        assert!(keys.key_for_reading("never").await.expect("read").is_none());
    }

    #[tokio::test]
    async fn hostile_subject_ids_are_refused() {
        let keys = InMemorySubjectKeys::new(LocalKeyProvider::generate("kek-1"));
        let huge = "s".repeat(10_000);
        for subject in ["", "a\0b", huge.as_str()] {
            for result in [
                keys.key_for_writing(subject).await.map(|_| ()),
                keys.forget(subject).await.map(|_| ()),
            ] {
                assert!(
                    matches!(&result, Err(PersonalError::InvalidInput(i)) if i.field == "subject"),
                    "{result:?}"
                );
            }
        }
    }

    #[tokio::test]
    async fn rotation_rewraps_every_key_resumably() {
        let keys = InMemorySubjectKeys::new(LocalKeyProvider::generate("kek-1"));
        let mut sealed = Vec::new();
        for s in 0..5 {
            let key = keys.key_for_writing(&s.to_string()).await.expect("key");
            sealed.push(key.encrypt(s.to_string().as_bytes(), b""));
        }
        keys.forget("4").await.expect("forget");
        keys.rotate_to(LocalKeyProvider::generate("kek-2"));
        // interrupted after 2, then resumed
        let first = keys.rewrap(2).await.expect("rewrap");
        assert_eq!(
            first,
            KeyRotation {
                rewrapped: 2,
                remaining: 2
            }
        );
        let rest = keys.rewrap(100).await.expect("rewrap");
        assert_eq!(
            rest,
            KeyRotation {
                rewrapped: 2,
                remaining: 0
            }
        );
        assert_eq!(
            keys.rewrap(100).await.expect("done"),
            KeyRotation::default()
        );
        // every key reads with the new KEK alone
        let (current, subjects) = {
            let state = keys.lock();
            (state.current.clone(), state.subjects.clone())
        };
        let only_new = InMemorySubjectKeys {
            state: Arc::new(Mutex::new(State {
                current,
                older: Vec::new(),
                subjects,
            })),
            tenant: TenantId::default(),
        };
        for (s, data) in sealed.iter().enumerate().take(4) {
            let key = only_new
                .key_for_reading(&s.to_string())
                .await
                .expect("unwraps with the new KEK")
                .expect("a key");
            assert!(key.decrypt(data, b"").is_some());
        }
        assert!(only_new.key_for_reading("4").await.expect("read").is_none());
    }

    #[tokio::test]
    async fn a_wrong_kek_is_a_typed_error_and_loses_nothing() {
        let keys = InMemorySubjectKeys::new(LocalKeyProvider::generate("kek-1"));
        keys.key_for_writing("a").await.expect("key");
        let stored = keys.lock().subjects.clone();
        let wrong = InMemorySubjectKeys {
            state: Arc::new(Mutex::new(State {
                current: Arc::new(LocalKeyProvider::generate("kek-1")),
                older: Vec::new(),
                subjects: stored.clone(),
            })),
            tenant: TenantId::default(),
        };
        assert!(matches!(
            wrong.key_for_reading("a").await,
            Err(PersonalError::WrongKek { .. })
        ));
        assert!(matches!(
            wrong.key_for_writing("a").await,
            Err(PersonalError::WrongKek { .. })
        ));
        assert!(
            keys.key_for_reading("a").await.expect("read").is_some(),
            "nothing lost"
        );
    }
}
