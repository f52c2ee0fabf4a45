//! [`PersonalStore`]: an event store that seals personal fields on append
//! and opens them on read.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};
use std::ops::RangeBounds;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::seal::{may_be_sealed, open_all, seal, subjects_in, Lookup};
use super::{DataKey, PersonalError, SubjectKeys};
use crate::event::Subject;
use crate::forgotten::SubjectForgotten;
use crate::store::{
    AppendResult, Backlog, EventStore, EventStoreExt, ExpectedVersion, Horizon, LogPosition,
    PayloadRef, Session, WatchLog,
};
use crate::{Envelope, Error, Metadata, NewEvent, RecordedEvent, SchemaRegistry};

/// The stream [`PersonalStore::forget`] records its
/// [`SubjectForgotten`] events in.
pub const FORGOTTEN_SUBJECTS_STREAM: &str = "annals.forgotten-subjects";

/// How long a process trusts a data key it fetched before asking the key
/// store again (see [`PersonalStore::with_key_ttl`]).
pub const DEFAULT_KEY_TTL: Duration = Duration::from_secs(60);

/// An event store that keeps personal data sealed: on append, the fields
/// an event's schema marks as personal ([`Personal<T>`](super::Personal))
/// are validated in plaintext, then encrypted with the data key of the
/// event's subject ([`Event::subject`](crate::Event::subject)); on every
/// read they are decrypted again, or read as forgotten
/// ([`Personal::Forgotten`](super::Personal::Forgotten)) once
/// [`forget`](Self::forget) deleted the subject's key.
///
/// It wraps any [`EventStore`] (the in-memory one, `PgEventStore`) and is
/// one itself: repositories, projection runners and sagas use it as they
/// use the store it wraps. Events without personal fields pass through
/// untouched (a substring scan on read, nothing on append).
///
/// Data keys are cached in the process for [`DEFAULT_KEY_TTL`] (see
/// [`with_key_ttl`](Self::with_key_ttl)): another process that forgets a
/// subject is seen here at most that long after. What this process writes
/// meanwhile is sealed with the forgotten key, so it is unreadable too;
/// reads in this process may still open the subject's data until the
/// cached key expires.
///
/// ```
/// use annals::personal::{InMemorySubjectKeys, LocalKeyProvider, Personal, PersonalStore};
/// use annals::{EventStoreExt, ExpectedVersion, InMemoryEventStore, Metadata};
///
/// #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
/// #[derive(annals::Event)]
/// #[event(name = "lead.created", version = 1, subject = lead_id)]
/// struct LeadCreated {
///     lead_id: String,
///     name: Personal<String>,
/// }
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let keys = InMemorySubjectKeys::new(LocalKeyProvider::generate("kek-1"));
/// let store = PersonalStore::new(InMemoryEventStore::new(), keys);
/// let lead = LeadCreated { lead_id: "lead-1".into(), name: "Ana".to_owned().into() };
/// store.append_events("lead-1", ExpectedVersion::NoStream, &[lead.clone()], &Metadata::new()).await?;
///
/// // stored sealed, read in plaintext
/// let stored = store.inner().read_stream("lead-1", ..).await?;
/// assert!(!stored[0].payload.get().contains("Ana"));
/// assert_eq!(store.read_stream_as::<LeadCreated>("lead-1", ..).await?[0].payload, lead);
///
/// // forgotten: the name reads as forgotten, the rest as it was
/// store.forget("lead-1").await?;
/// let read = store.read_stream_as::<LeadCreated>("lead-1", ..).await?;
/// assert_eq!(read[0].payload.name, Personal::Forgotten);
/// assert_eq!(read[0].payload.lead_id, "lead-1");
/// # Ok::<(), annals::Error>(())
/// # }).unwrap();
/// ```
#[derive(Debug)]
pub struct PersonalStore<S, K> {
    inner: S,
    shared: Arc<Shared<K>>,
}

impl<S: Clone, K> Clone for PersonalStore<S, K> {
    fn clone(&self) -> Self {
        PersonalStore {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

#[derive(Debug)]
pub(super) struct Shared<K> {
    keys: K,
    ttl: Duration,
    cache: Mutex<HashMap<String, Cached>>,
    /// Whose sealed data each stream read or written in this process
    /// holds: what a snapshot of the stream's aggregate is sealed for
    /// ([`PersonalSnapshots`](super::PersonalSnapshots)).
    streams: Mutex<HashMap<String, BTreeSet<String>>>,
}

/// At most this many streams are remembered in [`Shared::streams`]; past
/// it the memory starts over (a snapshot of a stream not remembered is
/// not saved until the stream is read again).
const MAX_STREAMS_REMEMBERED: usize = 100_000;

#[derive(Debug, Clone)]
struct Cached {
    /// `None`: the subject was forgotten (or never had a key).
    key: Option<DataKey>,
    fetched: Instant,
}

impl<S: EventStore + Clone, K: SubjectKeys> PersonalStore<S, K> {
    /// `inner`, sealing personal fields with the data keys in `keys`
    /// (scoped to `inner`'s tenant: a subject's key is its tenant's).
    pub fn new(inner: S, keys: K) -> Self {
        let keys = keys.in_tenant(inner.tenant_id().clone());
        PersonalStore {
            inner,
            shared: Arc::new(Shared {
                keys,
                ttl: DEFAULT_KEY_TTL,
                cache: Mutex::new(HashMap::new()),
                streams: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// How long a fetched data key is trusted before the key store is
    /// asked again (default [`DEFAULT_KEY_TTL`]); `Duration::ZERO` asks
    /// every time.
    pub fn with_key_ttl(self, ttl: Duration) -> Self {
        let shared = Shared {
            keys: self.shared.keys.clone(),
            ttl,
            cache: Mutex::new(HashMap::new()),
            streams: Mutex::new(HashMap::new()),
        };
        PersonalStore {
            inner: self.inner,
            shared: Arc::new(shared),
        }
    }

    pub(super) fn shared(&self) -> &Arc<Shared<K>> {
        &self.shared
    }

    /// The wrapped store: what it holds is sealed.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// The subject keys.
    pub fn keys(&self) -> &K {
        &self.shared.keys
    }

    /// How many subjects' keys this process holds in its cache.
    pub fn cached_keys(&self) -> usize {
        self.shared.lock().len()
    }

    /// Forgets a subject: deletes its data key and leaves a tombstone
    /// ([`SubjectKeys::forget`]), so that everything sealed with it (in
    /// events, and wherever sealed payloads were copied) reads as
    /// forgotten, and no new personal data can be written for it
    /// ([`PersonalError::Forgotten`]) unless the application
    /// [starts it again](Self::start_again). Then records a
    /// [`SubjectForgotten`] event in [`FORGOTTEN_SUBJECTS_STREAM`] for the
    /// projections that keep copies. Calling it again for the same subject
    /// records the event again (a projection's erasure is idempotent).
    pub async fn forget(&self, subject: &str) -> Result<AppendResult, Error> {
        self.shared.keys.forget(subject).await?;
        self.shared.remember(subject, None, Instant::now());
        let event = SubjectForgotten {
            subject: subject.to_owned(),
        };
        self.inner
            .append_events(
                FORGOTTEN_SUBJECTS_STREAM,
                ExpectedVersion::Any,
                &[event],
                &Metadata::new(),
            )
            .await
    }

    /// Lets a forgotten subject have personal data again, under a new key:
    /// what was written before stays unreadable.
    pub async fn start_again(&self, subject: &str) -> Result<(), Error> {
        self.shared.keys.start_again(subject).await?;
        self.shared.lock().remove(subject);
        Ok(())
    }

    /// Opens the sealed fields of stored events (fetching the keys they
    /// need). A sealed value that does not open (damaged) is left sealed:
    /// decoding the event then fails, and a projection parks it.
    async fn open_recorded(&self, events: &mut [RecordedEvent]) -> Result<(), Error> {
        let mut parsed = Vec::new();
        let mut needed = BTreeSet::new();
        for (i, e) in events.iter().enumerate() {
            if !may_be_sealed(e.payload.get()) {
                continue;
            }
            let Ok(mut value) = serde_json::from_str::<Value>(e.payload.get()) else {
                continue;
            };
            needed.extend(subjects_in(&mut value));
            parsed.push((i, value));
        }
        if parsed.is_empty() {
            return Ok(());
        }
        self.shared.fetch(needed).await?;
        for (i, mut value) in parsed {
            let mut key_of = |s: &str| self.shared.lookup(s);
            if open_all(&mut value, &mut key_of).is_ok() {
                if let Ok(raw) = serde_json::value::to_raw_value(&value) {
                    events[i].payload = raw;
                }
            }
        }
        Ok(())
    }
}

impl<K: SubjectKeys> Shared<K> {
    /// Remembers that `stream_id` holds sealed data of `subjects` (none:
    /// it was read, and holds nobody's).
    pub(super) fn note_stream(&self, stream_id: &str, subjects: BTreeSet<String>) {
        let mut streams = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        if streams.len() >= MAX_STREAMS_REMEMBERED && !streams.contains_key(stream_id) {
            streams.clear();
        }
        streams
            .entry(stream_id.to_owned())
            .or_default()
            .extend(subjects);
    }

    /// Whose sealed data `stream_id` holds, if this process read or wrote
    /// it.
    pub(super) fn stream_subjects(&self, stream_id: &str) -> Option<BTreeSet<String>> {
        let streams = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        streams.get(stream_id).cloned()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Cached>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cached key of `subject`: `Some(None)` when it is known to be
    /// forgotten, `None` when it is not cached (or expired).
    pub(super) fn cached(&self, subject: &str) -> Option<Option<DataKey>> {
        let cache = self.lock();
        let entry = cache.get(subject)?;
        (entry.fetched.elapsed() < self.ttl).then(|| entry.key.clone())
    }

    /// Caches what was fetched at `fetched`, unless something newer is
    /// cached already: a key fetched before a `forget` in this process must
    /// not overwrite the forget.
    /// What the cache knows of `subject`'s key.
    fn lookup(&self, subject: &str) -> Lookup {
        match self.cached(subject) {
            Some(Some(key)) => Lookup::Key(key),
            Some(None) => Lookup::Forgotten,
            None => Lookup::Unknown,
        }
    }

    fn remember(&self, subject: &str, key: Option<DataKey>, fetched: Instant) {
        let mut cache = self.lock();
        if cache.get(subject).is_some_and(|c| c.fetched > fetched) {
            return;
        }
        cache.insert(subject.to_owned(), Cached { key, fetched });
    }

    /// Fetches the keys of `subjects` that are not cached.
    pub(super) async fn fetch(&self, subjects: BTreeSet<String>) -> Result<(), PersonalError> {
        for subject in subjects {
            if self.cached(&subject).is_none() {
                let started = Instant::now();
                let key = self.keys.key_for_reading(&subject).await?;
                metrics::counter!("annals_personal_key_fetches_total", "use" => "read")
                    .increment(1);
                self.remember(&subject, key, started);
            }
        }
        Ok(())
    }

    async fn key_for_writing(&self, subject: &str) -> Result<DataKey, PersonalError> {
        if let Some(Some(key)) = self.cached(subject) {
            return Ok(key);
        }
        let started = Instant::now();
        let key = self.keys.key_for_writing(subject).await?;
        metrics::counter!("annals_personal_key_fetches_total", "use" => "write").increment(1);
        self.remember(subject, Some(key.clone()), started);
        Ok(key)
    }

    /// Validates (in plaintext, when `store` validates) and seals the
    /// personal fields of events about to be appended to `stream_id` in
    /// `store`.
    async fn seal_for<S: EventStore>(
        &self,
        store: &S,
        stream_id: &str,
        events: &mut [NewEvent],
    ) -> Result<(), Error> {
        let (registry, validates) = (store.registry(), store.validates_on_append());
        for e in events.iter_mut() {
            let Some(schema) = registry.get(&e.event_type, e.schema_version) else {
                continue;
            };
            let pointers = schema.personal_fields();
            if pointers.is_empty() {
                continue;
            }
            let subject = match &e.subject {
                Subject::Field(s) => s.as_str(),
                Subject::Stream => stream_id,
                Subject::None => {
                    return Err(PersonalError::NoSubject {
                        event_type: e.event_type.clone(),
                    }
                    .into())
                }
            };
            let mut value: Value =
                serde_json::from_str(e.payload.get()).map_err(|source| Error::Encode {
                    event_type: e.event_type.clone(),
                    source,
                })?;
            if validates {
                schema.validate(&value)?;
            }
            let key = self.key_for_writing(subject).await?;
            seal(&mut value, pointers, subject, &key);
            self.note_stream(stream_id, BTreeSet::from([subject.to_owned()]));
            e.payload =
                serde_json::value::to_raw_value(&value).map_err(|source| Error::Encode {
                    event_type: e.event_type.clone(),
                    source,
                })?;
        }
        Ok(())
    }

    /// A payload with its sealed values opened from cached keys:
    /// `Ok(Err(subjects))` when keys are missing from the cache.
    fn open_text<'p>(
        &self,
        payload: &'p str,
        seen: &mut BTreeSet<String>,
    ) -> Result<Result<Cow<'p, str>, BTreeSet<String>>, Error> {
        if !may_be_sealed(payload) {
            return Ok(Ok(Cow::Borrowed(payload)));
        }
        let Ok(mut value) = serde_json::from_str::<Value>(payload) else {
            // not JSON: the decoder reports it
            return Ok(Ok(Cow::Borrowed(payload)));
        };
        // one walk: open with the keys cached, note the subjects whose
        // keys are not
        let mut missing = BTreeSet::new();
        let mut known: Vec<(String, Lookup)> = Vec::new();
        let mut key_of = |subject: &str| {
            if !seen.contains(subject) {
                seen.insert(subject.to_owned());
            }
            if let Some((_, lookup)) = known.iter().find(|(s, _)| s == subject) {
                return lookup.clone();
            }
            let lookup = self.lookup(subject);
            if matches!(lookup, Lookup::Unknown) {
                missing.insert(subject.to_owned());
            }
            known.push((subject.to_owned(), lookup.clone()));
            lookup
        };
        open_all(&mut value, &mut key_of)?;
        if !missing.is_empty() {
            return Ok(Err(missing));
        }
        Ok(Ok(Cow::Owned(value.to_string())))
    }
}

/// A payload kept for later, while the keys it needs are fetched.
struct Held {
    stream_version: u64,
    event_type: String,
    schema_version: u32,
    payload: String,
}

impl Held {
    fn of(p: &PayloadRef<'_>) -> Self {
        Held {
            stream_version: p.stream_version,
            event_type: p.event_type.to_owned(),
            schema_version: p.schema_version,
            payload: p.payload.to_owned(),
        }
    }
}

/// Hands payloads to `f` opened, in order. While a key is missing from the
/// cache, that payload and every one after it are held, so that `f` still
/// sees them in order once [`finish`](Self::finish) fetched the keys: a
/// fold on a cold process reads the stream once.
struct Opener<'s, K, F> {
    shared: &'s Shared<K>,
    stream_id: &'s str,
    f: F,
    held: Vec<Held>,
    missing: BTreeSet<String>,
    /// The subjects whose sealed values the stream holds.
    seen: BTreeSet<String>,
}

impl<'s, K: SubjectKeys, T, F: FnMut(PayloadRef<'_>) -> Result<T, Error>> Opener<'s, K, F> {
    fn new(shared: &'s Shared<K>, stream_id: &'s str, f: F) -> Self {
        Opener {
            shared,
            stream_id,
            f,
            held: Vec::new(),
            missing: BTreeSet::new(),
            seen: BTreeSet::new(),
        }
    }

    /// `Some(output of f)`, or `None` when the payload was held.
    fn accept(&mut self, p: PayloadRef<'_>) -> Result<Option<T>, Error> {
        if self.held.is_empty() {
            match self.shared.open_text(p.payload, &mut self.seen)? {
                Ok(Cow::Borrowed(_)) => return (self.f)(p).map(Some),
                Ok(Cow::Owned(text)) => {
                    return (self.f)(PayloadRef {
                        payload: &text,
                        raw: None,
                        ..p
                    })
                    .map(Some)
                }
                Err(missing) => self.missing.extend(missing),
            }
        } else if may_be_sealed(p.payload) {
            if let Ok(mut value) = serde_json::from_str::<Value>(p.payload) {
                let subjects = subjects_in(&mut value);
                self.missing.extend(subjects.iter().cloned());
                self.seen.extend(subjects);
            }
        }
        self.held.push(Held::of(&p));
        Ok(None)
    }

    /// Fetches the missing keys, then hands the held payloads to `f`.
    async fn finish(mut self) -> Result<Vec<T>, Error> {
        self.shared
            .note_stream(self.stream_id, std::mem::take(&mut self.seen));
        if self.held.is_empty() {
            return Ok(Vec::new());
        }
        self.shared.fetch(std::mem::take(&mut self.missing)).await?;
        let mut out = Vec::with_capacity(self.held.len());
        for held in std::mem::take(&mut self.held) {
            let text = match self.shared.open_text(&held.payload, &mut BTreeSet::new())? {
                Ok(text) => text.into_owned(),
                // expired meanwhile: read it as it is stored
                Err(_) => held.payload.clone(),
            };
            out.push((self.f)(PayloadRef {
                stream_version: held.stream_version,
                event_type: &held.event_type,
                schema_version: held.schema_version,
                payload: &text,
                raw: None,
            })?);
        }
        Ok(out)
    }
}

/// A session of a [`PersonalStore`]: the wrapped store's session, sealing
/// and opening as the store does.
pub struct PersonalSession<S: EventStore, K> {
    inner: S::Session,
    store: S,
    shared: Arc<Shared<K>>,
}

impl<S: EventStore + Clone, K: SubjectKeys> Session for PersonalSession<S, K> {
    async fn fold_stream_payloads<F>(
        &mut self,
        stream_id: &str,
        versions: impl RangeBounds<u64> + Send,
        f: F,
    ) -> Result<u64, Error>
    where
        F: FnMut(PayloadRef<'_>) -> Result<(), Error> + Send,
    {
        let mut opener = Opener::new(&self.shared, stream_id, f);
        let n = self
            .inner
            .fold_stream_payloads(stream_id, versions, |p| opener.accept(p).map(drop))
            .await?;
        opener.finish().await?;
        Ok(n)
    }

    async fn append(
        &mut self,
        stream_id: &str,
        expected: ExpectedVersion,
        mut events: Vec<NewEvent>,
    ) -> Result<AppendResult, Error> {
        self.shared
            .seal_for(&self.store, stream_id, &mut events)
            .await?;
        self.inner.append(stream_id, expected, events).await
    }
}

impl<S: EventStore + Clone, K: SubjectKeys> EventStore for PersonalStore<S, K> {
    type Session = PersonalSession<S, K>;

    fn registry(&self) -> &SchemaRegistry {
        self.inner.registry()
    }

    fn validates_on_append(&self) -> bool {
        self.inner.validates_on_append()
    }

    fn tenant_id(&self) -> &crate::TenantId {
        self.inner.tenant_id()
    }

    /// The same store scoped to `tenant`, with the tenant's subject keys.
    /// The handle has a key cache of its own: keep one handle per tenant
    /// (clones share it) rather than scoping anew for each command.
    fn in_tenant(&self, tenant: crate::TenantId) -> Self {
        PersonalStore {
            shared: Arc::new(Shared {
                keys: self.shared.keys.in_tenant(tenant.clone()),
                ttl: self.shared.ttl,
                cache: Mutex::new(HashMap::new()),
                streams: Mutex::new(HashMap::new()),
            }),
            inner: self.inner.in_tenant(tenant),
        }
    }

    async fn session(&self) -> Result<Self::Session, Error> {
        Ok(PersonalSession {
            inner: self.inner.session().await?,
            store: self.inner.clone(),
            shared: self.shared.clone(),
        })
    }

    async fn append(
        &self,
        stream_id: &str,
        expected: ExpectedVersion,
        mut events: Vec<NewEvent>,
    ) -> Result<AppendResult, Error> {
        self.shared
            .seal_for(&self.inner, stream_id, &mut events)
            .await?;
        self.inner.append(stream_id, expected, events).await
    }

    async fn read_stream_with<T, F>(
        &self,
        stream_id: &str,
        versions: impl RangeBounds<u64> + Send,
        decode: F,
    ) -> Result<Vec<Envelope<T>>, Error>
    where
        T: Send,
        F: FnMut(PayloadRef<'_>) -> Result<T, Error> + Send,
    {
        let mut opener = Opener::new(&self.shared, stream_id, decode);
        let read = self
            .inner
            .read_stream_with(stream_id, versions, |p| opener.accept(p))
            .await?;
        let mut late = opener.finish().await?.into_iter();
        read.into_iter()
            .map(|e| {
                let payload = match e.payload {
                    Some(t) => t,
                    None => late.next().ok_or_else(|| Error::CorruptedRow {
                        position: Some(e.log_position.position),
                        message: "a held payload went missing".to_owned(),
                    })?,
                };
                Ok(Envelope {
                    tenant_id: e.tenant_id,
                    event_id: e.event_id,
                    stream_id: e.stream_id,
                    stream_version: e.stream_version,
                    log_position: e.log_position,
                    event_type: e.event_type,
                    schema_version: e.schema_version,
                    metadata: e.metadata,
                    recorded_at: e.recorded_at,
                    payload,
                })
            })
            .collect()
    }

    async fn read_log(
        &self,
        after: LogPosition,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, Error> {
        let mut events = self.inner.read_log(after, limit).await?;
        self.open_recorded(&mut events).await?;
        Ok(events)
    }

    async fn stream_version(&self, stream_id: &str) -> Result<Option<u64>, Error> {
        self.inner.stream_version(stream_id).await
    }

    async fn read_event(&self, position: u64) -> Result<Option<RecordedEvent>, Error> {
        let Some(event) = self.inner.read_event(position).await? else {
            return Ok(None);
        };
        let mut events = [event];
        self.open_recorded(&mut events).await?;
        let [event] = events;
        Ok(Some(event))
    }

    async fn backlog(&self, after: LogPosition) -> Result<Backlog, Error> {
        self.inner.backlog(after).await
    }

    async fn log_end(&self) -> Result<Option<LogPosition>, Error> {
        self.inner.log_end().await
    }

    async fn horizon(&self) -> Result<Horizon, Error> {
        self.inner.horizon().await
    }
}

impl<S: WatchLog + Clone, K: SubjectKeys> WatchLog for PersonalStore<S, K> {
    type Watcher = S::Watcher;

    async fn watch(&self) -> Result<Self::Watcher, Error> {
        self.inner.watch().await
    }
}
