//! The conformance suite of personal data: what a [`PersonalStore`] over a
//! backend must do, written once and run on every backend with its own
//! subject keys.
//!
//! ```
//! # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
//! use annals::personal::{InMemorySubjectKeys, LocalKeyProvider};
//! use annals::InMemoryEventStore;
//!
//! annals::testing::personal::run(|| async {
//!     let keys = InMemorySubjectKeys::new(LocalKeyProvider::generate("kek-1"));
//!     (InMemoryEventStore::new(), keys)
//! })
//! .await;
//! # });
//! ```
//!
//! Each check panics with a message saying which rule broke.
#![allow(missing_docs)]

use std::future::Future;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::personal::{
    Personal, PersonalError, PersonalStore, SubjectForgotten, SubjectKeys,
    FORGOTTEN_SUBJECTS_STREAM,
};
use crate::store::Session;
use crate::{Error, EventStore, EventStoreExt, ExpectedVersion, LogPosition, Metadata, NewEvent};

/// A patient's contact details: personal as a whole.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Contact {
    pub phone: String,
    pub email: String,
}

/// The current version (2) of `patient.registered`: two personal fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Registered {
    pub patient_id: String,
    pub clinic: String,
    pub name: Personal<String>,
    pub contact: Personal<Contact>,
}

/// Version 1 of `patient.registered` called the name `full_name`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct RegisteredV1 {
    pub patient_id: String,
    pub clinic: String,
    pub full_name: Personal<String>,
    pub contact: Personal<Contact>,
}

impl From<RegisteredV1> for Registered {
    fn from(v: RegisteredV1) -> Self {
        Registered {
            patient_id: v.patient_id,
            clinic: v.clinic,
            name: v.full_name,
            contact: v.contact,
        }
    }
}

/// A note about the patient whose stream it is in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Noted {
    pub text: Personal<String>,
    pub by: String,
}

/// The suite's event enum: a field subject, a stream subject, no subject.
#[derive(Debug, Clone, PartialEq, annals_macros::Event)]
#[event(crate = "crate", prefix = "patient")]
pub enum PatientEvent {
    #[event(version = 2, subject = patient_id, history(1 = RegisteredV1))]
    Registered(Registered),
    #[event(subject = envelope.stream_id)]
    Noted(Noted),
    Moved(String),
}

/// A patient aggregate whose state copies personal data from its events:
/// what its snapshots hold.
#[derive(
    Debug,
    Default,
    Clone,
    PartialEq,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
    annals_macros::Aggregate,
)]
#[aggregate(crate = "crate", event = PatientEvent, snapshot_every = 1)]
pub struct Patient {
    pub name: Option<Personal<String>>,
    pub notes: Vec<Personal<String>>,
}

impl crate::Aggregate for Patient {
    /// The command is the event to record.
    type Command = PatientEvent;
    type Error = std::convert::Infallible;

    fn handle(&self, command: &PatientEvent) -> Result<Vec<PatientEvent>, Self::Error> {
        Ok(vec![command.clone()])
    }

    fn apply(&mut self, event: &PatientEvent) {
        match event {
            PatientEvent::Registered(r) => self.name = Some(r.name.clone()),
            PatientEvent::Noted(n) => self.notes.push(n.text.clone()),
            PatientEvent::Moved(_) => {}
        }
    }
}

/// A registration whose personal fields hold canaries naming `patient`.
pub fn registered(patient: &str) -> PatientEvent {
    PatientEvent::Registered(Registered {
        patient_id: patient.to_owned(),
        clinic: "clinic-7".to_owned(),
        name: Personal::Known(format!("canary-name-{patient}")),
        contact: Personal::Known(Contact {
            phone: format!("canary-phone-{patient}"),
            email: format!("canary-{patient}@example.com"),
        }),
    })
}

/// A note whose text is a canary naming `patient`.
pub fn noted(patient: &str, n: usize) -> PatientEvent {
    PatientEvent::Noted(Noted {
        text: Personal::Known(format!("canary-note-{n}-{patient}")),
        by: "dr-who".to_owned(),
    })
}

/// Runs every check, each on a fresh store and fresh subject keys from
/// `make`.
pub async fn run<S, K, F, Fut>(mut make: F)
where
    S: EventStore + Clone,
    K: SubjectKeys,
    F: FnMut() -> Fut,
    Fut: Future<Output = (S, K)>,
{
    let (s, k) = make().await;
    sealed_on_append_open_on_every_read(s, k).await;
    let (s, k) = make().await;
    forgotten_reads_forgotten_and_writes_are_refused(s, k).await;
    let (s, k) = make().await;
    old_versions_open_before_upcasting(s, k).await;
    let (s, k) = make().await;
    a_cold_process_reads_in_order(s, k).await;
    let (s, k) = make().await;
    appends_racing_a_forget_write_nothing_readable(s, k).await;
    let (s, k) = make().await;
    hostile_input_is_refused_with_typed_errors(s, k).await;
    let (s, k) = make().await;
    forgetting_is_per_tenant(s, k).await;
}

async fn append<S: EventStore + Clone, K: SubjectKeys>(
    store: &PersonalStore<S, K>,
    stream: &str,
    events: &[PatientEvent],
) {
    store
        .append_events(stream, ExpectedVersion::Any, events, &Metadata::new())
        .await
        .expect("append personal events");
}

/// Every stored payload, as the wrapped store holds it (`events` of them).
async fn stored_text<S: EventStore>(store: &S, events: usize) -> String {
    let log = super::conformance::read_log_settled(store, LogPosition::START, events).await;
    assert_eq!(log.len(), events, "the log holds every event");
    log.iter()
        .map(|e| e.payload.get())
        .collect::<Vec<_>>()
        .join("\n")
}

fn assert_no_canary_of(text: &str, patient: &str) {
    for canary in [
        format!("canary-name-{patient}"),
        format!("canary-phone-{patient}"),
        format!("canary-{patient}@"),
        format!("-{patient}\""),
    ] {
        assert!(
            !text.contains(&canary),
            "plaintext `{canary}` is stored: {text}"
        );
    }
}

/// The personal fields are stored sealed, and every read path of the
/// store opens them.
pub async fn sealed_on_append_open_on_every_read<S: EventStore + Clone, K: SubjectKeys>(
    inner: S,
    keys: K,
) {
    let store = PersonalStore::new(inner.clone(), keys);
    let a = [registered("patient-a"), noted("patient-a", 1)];
    append(&store, "patient-a", &a).await;
    append(
        &store,
        "patient-a",
        &[PatientEvent::Moved("clinic-8".into())],
    )
    .await;
    let text = stored_text(&inner, 3).await;
    assert_no_canary_of(&text, "patient-a");
    assert!(
        text.contains("clinic-7"),
        "fields that are not personal stay plain"
    );

    let read: Vec<_> = store
        .read_stream_as::<PatientEvent>("patient-a", ..)
        .await
        .expect("read_stream_as")
        .into_iter()
        .map(|e| e.payload)
        .collect();
    assert_eq!(read[..2], a, "read_stream_as opens");
    let lean = store
        .read_stream_payloads_as::<PatientEvent>("patient-a", ..=2)
        .await
        .expect("read_stream_payloads_as");
    assert_eq!(lean.iter().map(|v| v.event.clone()).collect::<Vec<_>>(), a);
    let folded = store
        .fold_stream_as::<PatientEvent, _, _>("patient-a", ..=2, Vec::new(), |mut acc, e| {
            acc.push(e.payload);
            Ok(acc)
        })
        .await
        .expect("fold_stream_as");
    assert_eq!(folded, a, "fold_stream_as opens");
    let mut session = store.session().await.expect("session");
    let mut on_session = Vec::new();
    session
        .fold_stream_payloads("patient-a", ..=2, |p| {
            on_session.push(crate::store::decode_payload::<PatientEvent>(
                store.registry(),
                "patient-a",
                p,
            )?);
            Ok(())
        })
        .await
        .expect("a session's fold");
    assert_eq!(on_session, a, "a session's fold opens");
    let log = super::conformance::read_log_settled(&store, LogPosition::START, 3).await;
    let decoded: Vec<PatientEvent> = log
        .iter()
        .take(2)
        .map(|e| {
            store
                .decode::<PatientEvent>(e.clone())
                .expect("decode")
                .payload
        })
        .collect();
    assert_eq!(decoded, a, "read_log opens");
    let one = store
        .read_event(log[0].log_position.position)
        .await
        .expect("read_event")
        .expect("the event is there");
    assert_eq!(
        store.decode::<PatientEvent>(one).expect("decode").payload,
        a[0],
        "read_event opens"
    );
}

/// After `forget`, the subject's fields read as forgotten on every path,
/// another subject's still read, a `subject.forgotten` event is in the
/// log, and new personal data for the subject is refused until the
/// application starts it again.
pub async fn forgotten_reads_forgotten_and_writes_are_refused<
    S: EventStore + Clone,
    K: SubjectKeys,
>(
    inner: S,
    keys: K,
) {
    let store = PersonalStore::new(inner.clone(), keys.clone());
    append(
        &store,
        "patient-a",
        &[registered("patient-a"), noted("patient-a", 1)],
    )
    .await;
    append(
        &store,
        "patient-b",
        &[registered("patient-b"), noted("patient-b", 1)],
    )
    .await;
    store.forget("patient-a").await.expect("forget");

    let check = |events: Vec<PatientEvent>| {
        let PatientEvent::Registered(r) = &events[0] else {
            panic!("a registration first: {events:?}");
        };
        assert_eq!(r.name, Personal::Forgotten, "the name is forgotten");
        assert_eq!(r.contact, Personal::Forgotten, "the contact is forgotten");
        assert_eq!(r.clinic, "clinic-7", "the rest reads as it was");
        let PatientEvent::Noted(n) = &events[1] else {
            panic!("a note second: {events:?}");
        };
        assert_eq!(n.text, Personal::Forgotten, "the note is forgotten");
    };
    let read = |s: PersonalStore<S, K>| async move {
        s.read_stream_as::<PatientEvent>("patient-a", ..)
            .await
            .expect("a forgotten subject's stream still loads")
            .into_iter()
            .map(|e| e.payload)
            .collect::<Vec<_>>()
    };
    check(read(store.clone()).await);
    // another process, with no key cached: the same
    let cold = PersonalStore::new(inner.clone(), keys.clone());
    check(read(cold.clone()).await);
    let b = cold
        .read_stream_as::<PatientEvent>("patient-b", ..)
        .await
        .expect("read b");
    assert_eq!(
        b[0].payload,
        registered("patient-b"),
        "another subject stays"
    );

    let log = super::conformance::read_log_settled(&store, LogPosition::START, 5).await;
    let forgotten: Vec<_> = log
        .iter()
        .filter(|e| e.event_type == "subject.forgotten")
        .map(|e| {
            store
                .decode::<SubjectForgotten>(e.clone())
                .expect("decode subject.forgotten")
                .payload
        })
        .collect();
    assert_eq!(
        forgotten,
        [SubjectForgotten {
            subject: "patient-a".into()
        }]
    );

    for s in [&store, &cold] {
        let refused = s
            .append_events(
                "patient-a",
                ExpectedVersion::Any,
                &[registered("patient-a")],
                &Metadata::new(),
            )
            .await;
        assert!(
            matches!(&refused, Err(Error::Personal(PersonalError::Forgotten { subject })) if subject == "patient-a"),
            "personal data for a forgotten subject is refused: {refused:?}"
        );
    }
    // events without personal data still append to its stream
    append(
        &store,
        "patient-a",
        &[PatientEvent::Moved("clinic-9".into())],
    )
    .await;

    store.start_again("patient-a").await.expect("start again");
    append(&store, "patient-a", &[noted("patient-a", 2)]).await;
    let again = read(store.clone()).await;
    check(again[..2].to_vec());
    assert_eq!(
        again[3],
        noted("patient-a", 2),
        "new data reads under the new key"
    );
}

/// A stored old version is sealed by its own schema's personal fields and
/// opened before it is upcast; forgotten values go through the upcast.
pub async fn old_versions_open_before_upcasting<S: EventStore + Clone, K: SubjectKeys>(
    inner: S,
    keys: K,
) {
    let store = PersonalStore::new(inner.clone(), keys);
    store
        .registry()
        .register::<PatientEvent>()
        .expect("register");
    let v1 = json!({
        "patient_id": "patient-c",
        "clinic": "clinic-7",
        "full_name": "canary-name-patient-c",
        "contact": {"phone": "canary-phone-patient-c", "email": "canary-patient-c@example.com"}
    });
    let event = NewEvent::new(
        "patient.registered",
        1,
        serde_json::value::to_raw_value(&v1).expect("raw"),
        Metadata::new(),
    )
    .with_subject(crate::event::Subject::Field("patient-c".into()));
    store
        .append("patient-c", ExpectedVersion::NoStream, vec![event])
        .await
        .expect("append v1");
    assert_no_canary_of(&stored_text(&inner, 1).await, "patient-c");
    let read = store
        .read_stream_as::<PatientEvent>("patient-c", ..)
        .await
        .expect("read v1");
    assert_eq!(
        read[0].payload,
        registered("patient-c"),
        "opened, then upcast"
    );
    store.forget("patient-c").await.expect("forget");
    let read = store
        .read_stream_as::<PatientEvent>("patient-c", ..)
        .await
        .expect("a forgotten v1 still upcasts");
    let PatientEvent::Registered(r) = &read[0].payload else {
        panic!("a registration: {read:?}");
    };
    assert!(r.name.is_forgotten() && r.contact.is_forgotten());
}

/// A process with no key cached reads a stream whose personal events come
/// after others in one pass, in version order.
pub async fn a_cold_process_reads_in_order<S: EventStore + Clone, K: SubjectKeys>(
    inner: S,
    keys: K,
) {
    let writer = PersonalStore::new(inner.clone(), keys.clone());
    let events = [
        PatientEvent::Moved("clinic-1".into()),
        registered("patient-e"),
        PatientEvent::Moved("clinic-2".into()),
        noted("patient-e", 1),
        noted("patient-e", 2),
    ];
    append(&writer, "patient-e", &events).await;
    let reader = PersonalStore::new(inner.clone(), keys.clone());
    assert_eq!(reader.cached_keys(), 0);
    let mut session = reader.session().await.expect("session");
    let mut seen = Vec::new();
    let n = session
        .fold_stream_payloads("patient-e", .., |p| {
            seen.push((
                p.stream_version,
                crate::store::decode_payload::<PatientEvent>(reader.registry(), "patient-e", p)?,
            ));
            Ok(())
        })
        .await
        .expect("a cold fold");
    assert_eq!(n, 5);
    let expected: Vec<_> = (1..).zip(events.iter().cloned()).collect();
    assert_eq!(seen, expected, "every event once, in version order");
    assert_eq!(reader.cached_keys(), 1, "the subject's key is cached now");
    let cold = PersonalStore::new(inner, keys);
    let read = cold
        .read_stream_as::<PatientEvent>("patient-e", ..)
        .await
        .expect("a cold read_stream_as");
    let versions: Vec<_> = read.iter().map(|e| e.stream_version).collect();
    assert_eq!(versions, [1, 2, 3, 4, 5]);
    assert_eq!(
        read.into_iter().map(|e| e.payload).collect::<Vec<_>>(),
        events
    );
}

/// Tasks appending a subject's personal data while it is forgotten: once
/// `forget` returns, every append of its personal data is refused, and
/// nothing any of them wrote reads back (what raced the forget is sealed
/// with the deleted key).
pub async fn appends_racing_a_forget_write_nothing_readable<
    S: EventStore + Clone,
    K: SubjectKeys,
>(
    inner: S,
    keys: K,
) {
    let store = PersonalStore::new(inner.clone(), keys.clone());
    append(&store, "patient-d", &[registered("patient-d")]).await;
    let started = Arc::new(tokio::sync::Barrier::new(9));
    let mut tasks = Vec::new();
    for t in 0..8 {
        let store = store.clone();
        let started = started.clone();
        tasks.push(tokio::spawn(async move {
            started.wait().await;
            let mut written = 0;
            for n in 0.. {
                let r = store
                    .append_events(
                        "patient-d",
                        ExpectedVersion::Any,
                        &[noted("patient-d", t * 100_000 + n)],
                        &Metadata::new(),
                    )
                    .await;
                match r {
                    Ok(_) => written += 1,
                    Err(Error::Personal(PersonalError::Forgotten { .. })) => return written,
                    Err(e) => panic!("an append failed otherwise: {e}"),
                }
                tokio::task::yield_now().await;
            }
            written
        }));
    }
    started.wait().await;
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    store.forget("patient-d").await.expect("forget");
    let mut written = 0;
    for task in tasks {
        written += task.await.expect("an appending task");
    }
    assert!(written > 0, "the tasks appended before the forget");
    assert_no_canary_of(&stored_text(&inner, written + 2).await, "patient-d");
    for s in [
        store.clone(),
        PersonalStore::new(inner.clone(), keys.clone()),
    ] {
        let read = s
            .read_stream_as::<PatientEvent>("patient-d", ..)
            .await
            .expect("read");
        assert_eq!(read.len(), written + 1);
        for e in read {
            match e.payload {
                PatientEvent::Registered(r) => assert!(r.name.is_forgotten()),
                PatientEvent::Noted(n) => assert!(n.text.is_forgotten(), "{n:?}"),
                other => panic!("unexpected {other:?}"),
            }
        }
    }
}

/// Hostile input: an empty, NUL or 10 kB subject, a payload that breaks its
/// schema, an event with personal fields and no subject. Each is a typed
/// error and nothing is written.
pub async fn hostile_input_is_refused_with_typed_errors<S: EventStore + Clone, K: SubjectKeys>(
    inner: S,
    keys: K,
) {
    let store = PersonalStore::new(inner.clone(), keys);
    let huge = "s".repeat(10_000);
    for subject in ["", "a\0b", huge.as_str()] {
        let r = store
            .append_events(
                "patient-x",
                ExpectedVersion::Any,
                &[registered(subject)],
                &Metadata::new(),
            )
            .await;
        assert!(
            matches!(&r, Err(Error::Personal(PersonalError::InvalidInput(i))) if i.field == "subject"),
            "{r:?}"
        );
    }
    store
        .registry()
        .register::<PatientEvent>()
        .expect("register");
    let raw = |payload: serde_json::Value| {
        NewEvent::new(
            "patient.registered",
            2,
            serde_json::value::to_raw_value(&payload).expect("raw"),
            Metadata::new(),
        )
    };
    let valid = json!({
        "patient_id": "patient-x", "clinic": "c", "name": "canary-name-patient-x",
        "contact": {"phone": "1", "email": "e"}
    });
    let r = store
        .append("patient-x", ExpectedVersion::Any, vec![raw(valid.clone())])
        .await;
    assert!(
        matches!(&r, Err(Error::Personal(PersonalError::NoSubject { event_type })) if event_type == "patient.registered"),
        "{r:?}"
    );
    let broken =
        json!({"patient_id": "patient-x", "clinic": "c", "name": 7, "contact": {"phone": "1"}});
    let r = store
        .append(
            "patient-x",
            ExpectedVersion::Any,
            vec![raw(broken).with_subject(crate::event::Subject::Stream)],
        )
        .await;
    if store.validates_on_append() {
        assert!(
            matches!(&r, Err(Error::SchemaViolation(_))),
            "validated in plaintext: {r:?}"
        );
        assert_eq!(
            inner.stream_version("patient-x").await.expect("version"),
            None,
            "nothing was written"
        );
    } else {
        assert!(r.is_ok(), "a store that does not validate writes it: {r:?}");
        assert_no_canary_of(&stored_text(&inner, 1).await, "patient-x");
    }
}

/// Snapshots through [`PersonalSnapshots`](crate::personal::PersonalSnapshots)
/// are stored sealed, load in a cold process, and become unreadable when
/// a subject whose data they hold is forgotten: the aggregate then loads
/// from its events, with the subject's fields forgotten.
pub async fn snapshots_are_sealed_and_forgotten<S, K, N>(inner: S, keys: K, snapshots: N)
where
    S: EventStore + Clone,
    K: SubjectKeys,
    N: crate::SnapshotStore<S>,
{
    use crate::aggregate::AggregateState as _;
    use crate::Repository;

    let store = PersonalStore::new(inner.clone(), keys.clone());
    let repo = Repository::<Patient, _>::new(store.clone())
        .with_snapshots(store.snapshots(snapshots.clone()))
        .inline_snapshots();
    let stream = "patient-s";
    for command in [registered(stream), noted(stream, 1), noted(stream, 2)] {
        repo.execute("s", &command, &Metadata::new())
            .await
            .expect("execute");
    }
    let stream_id = Patient::stream_id("s");
    assert_eq!(stream_id, stream, "the subject is the stream");
    let stored = snapshots
        .load(inner.tenant_id(), Patient::TYPE, &stream_id)
        .await
        .expect("load the stored snapshot")
        .expect("a snapshot was written");
    assert_eq!(stored.version, 3);
    assert_no_canary_of(stored.state.get(), stream);

    let expected = Patient {
        name: Some(Personal::Known(format!("canary-name-{stream}"))),
        notes: vec![
            Personal::Known(format!("canary-note-1-{stream}")),
            Personal::Known(format!("canary-note-2-{stream}")),
        ],
    };
    let loaded = repo.load("s").await.expect("load");
    assert_eq!(
        (loaded.state, loaded.events_replayed),
        (expected.clone(), 0)
    );
    // a cold process opens the snapshot (no event replayed)
    let cold = PersonalStore::new(inner.clone(), keys.clone());
    let cold_repo = Repository::<Patient, _>::new(cold.clone())
        .with_snapshots(cold.snapshots(snapshots.clone()));
    let loaded = cold_repo.load("s").await.expect("cold load");
    assert_eq!((loaded.state, loaded.events_replayed), (expected, 0));

    store.forget(stream).await.expect("forget");
    // the process that forgot, and one started after (`cold` still trusts
    // the key it cached, for its key TTL)
    let later = PersonalStore::new(inner.clone(), keys.clone());
    let later_repo = Repository::<Patient, _>::new(later.clone())
        .with_snapshots(later.snapshots(snapshots.clone()));
    for r in [&repo, &later_repo] {
        let loaded = r
            .load("s")
            .await
            .expect("a forgotten aggregate still loads");
        assert_eq!(loaded.version, 3);
        assert_eq!(
            loaded.events_replayed, 3,
            "from its events, not the snapshot"
        );
        assert_eq!(loaded.state.name, Some(Personal::Forgotten));
        assert_eq!(
            loaded.state.notes,
            [Personal::Forgotten, Personal::Forgotten]
        );
    }
}

/// A call to make to a patient: the command carries the patient's name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallPatient {
    pub patient_id: String,
    pub name: Personal<String>,
}

/// The care saga's commands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CareCommand {
    Call(CallPatient),
}

/// The care saga's data: it copies the patient's name, and says whose
/// personal data it holds.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Care {
    pub patient_id: String,
    pub name: Option<Personal<String>>,
}

impl crate::SagaData for Care {
    type Event = PatientEvent;
    fn apply(&mut self, event: &PatientEvent) {
        if let PatientEvent::Registered(r) = event {
            self.patient_id = r.patient_id.clone();
            self.name = Some(r.name.clone());
        }
    }
    fn subject(&self) -> Option<String> {
        Some(self.patient_id.clone())
    }
}

impl crate::Issue<CallPatient> for Care {
    fn issue(&self) -> CallPatient {
        CallPatient {
            patient_id: self.patient_id.clone(),
            name: self.name.clone().unwrap_or(Personal::Forgotten),
        }
    }
}

/// Registered → call the patient (with their name) → registered again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, annals_macros::Saga)]
#[saga(crate = "crate", event = PatientEvent, command = CareCommand, data = Care,
       correlation = String, correlate = patient_id)]
pub enum CareSaga {
    #[saga(start = Registered, issue = Call, compensate = none, on(Registered => Done))]
    Calling,
    #[saga(terminal)]
    Done,
}

/// Sagas forget their subject: two patients' registrations start a care
/// saga each, whose data and outbox command hold the patient's name in
/// plaintext (as a saga's state is, while its subject is known). After
/// `forget(A)` and a [`SagaEraser`](crate::personal::SagaEraser) catching
/// up, A's saga data and command hold no canary and read `Forgotten`; B's
/// keep theirs; a second erase changes nothing; a hostile subject is a
/// typed error.
pub async fn sagas_forget_their_subject<S, K, B, St>(inner: S, keys: K, projections: B, sagas: St)
where
    S: crate::store::WatchLog + Clone + 'static,
    K: SubjectKeys,
    B: crate::ProjectionStore<Conn = St::Conn> + Clone,
    St: crate::SagaStore + Clone,
{
    use crate::personal::SagaEraser;
    use crate::saga::SagaError;
    use crate::{ProjectionRunner, Saga as _, SagaProjection};

    let store = PersonalStore::new(inner, keys);
    for patient in ["patient-sa", "patient-sb"] {
        append(&store, patient, &[registered(patient)]).await;
    }
    ProjectionRunner::new(
        store.clone(),
        projections.clone(),
        Arc::new(SagaProjection::<CareSaga, _>::new(sagas.clone())),
    )
    .catch_up()
    .await
    .expect("the care sagas start");
    let stored = |patient: &'static str| {
        let sagas = sagas.clone();
        async move {
            let saga = sagas
                .find_by_correlation_id(CareSaga::NAME, patient)
                .await
                .expect("find the saga")
                .unwrap_or_else(|| panic!("no care saga for {patient}"));
            let commands = sagas.commands_of(saga.saga_id).await.expect("commands");
            assert_eq!(commands.len(), 1, "one call command");
            (saga, commands[0].command.clone())
        }
    };
    let (a, command) = stored("patient-sa").await;
    assert_eq!(a.subject.as_deref(), Some("patient-sa"));
    for json in [&a.data, &command] {
        assert!(
            json.to_string().contains("canary-name-patient-sa"),
            "plaintext while the subject is known: {json}"
        );
    }

    store.forget("patient-sa").await.expect("forget");
    ProjectionRunner::new(
        store.clone(),
        projections,
        Arc::new(SagaEraser::new(sagas.clone())),
    )
    .catch_up()
    .await
    .expect("the eraser catches up");

    let (a, command) = stored("patient-sa").await;
    for json in [&a.data, &command] {
        assert_no_canary_of(&json.to_string(), "patient-sa");
    }
    let data: Care = serde_json::from_value(a.data.clone()).expect("the data still reads");
    assert_eq!(data.name, Some(Personal::Forgotten));
    assert_eq!(data.patient_id, "patient-sa", "what is not personal stays");
    let command: CareCommand = serde_json::from_value(command).expect("the command still reads");
    let CareCommand::Call(call) = command;
    assert_eq!(call.name, Personal::Forgotten);

    let (b, command) = stored("patient-sb").await;
    let data: Care = serde_json::from_value(b.data).expect("B's data");
    assert_eq!(
        data.name,
        Some(Personal::Known("canary-name-patient-sb".into()))
    );
    assert!(command.to_string().contains("canary-name-patient-sb"));

    assert_eq!(
        sagas.forget_subject("patient-sa").await.expect("again"),
        0,
        "a second erase changes nothing"
    );
    for hostile in [String::new(), "nul\0".to_owned(), "x".repeat(1025)] {
        let err = sagas
            .forget_subject(&hostile)
            .await
            .expect_err("a hostile subject is refused");
        assert!(
            matches!(err, SagaError::InvalidInput(_)),
            "{hostile:?}: {err}"
        );
    }
}

/// A subject id names a person within a tenant: the same id in two
/// tenants has two keys, forgetting it in one leaves the other's data
/// readable and writable, and each tenant's `subject.forgotten` event is
/// in that tenant's log only.
pub async fn forgetting_is_per_tenant<S: EventStore + Clone, K: SubjectKeys>(inner: S, keys: K) {
    let store = PersonalStore::new(inner.clone(), keys);
    let a = store.tenant("clinic-a").expect("tenant a");
    let b = store.tenant("clinic-b").expect("tenant b");
    for tenant in [&a, &b] {
        append(tenant, "patient-x", &[registered("patient-x")]).await;
    }
    a.forget("patient-x").await.expect("forget in a");

    let first = |s: PersonalStore<S, K>| async move {
        s.read_stream_as::<PatientEvent>("patient-x", ..)
            .await
            .expect("read")
            .remove(0)
            .payload
    };
    let PatientEvent::Registered(in_a) = first(a.clone()).await else {
        panic!("a registration");
    };
    assert_eq!(in_a.name, Personal::Forgotten, "forgotten in a");
    assert_eq!(
        first(b.clone()).await,
        registered("patient-x"),
        "the same subject id in b is another person, still known"
    );
    // a cold handle of b (no key cached) reads it too
    let cold_b = PersonalStore::new(inner.clone(), b.keys().clone())
        .tenant("clinic-b")
        .expect("b");
    assert_eq!(first(cold_b).await, registered("patient-x"));
    append(&b, "patient-x", &[noted("patient-x", 1)]).await;
    let refused = a
        .append_events(
            "patient-x",
            ExpectedVersion::Any,
            &[noted("patient-x", 2)],
            &Metadata::new(),
        )
        .await;
    assert!(refused.is_err(), "a's subject stays forgotten: {refused:?}");
    assert!(
        b.keys()
            .key_for_reading("patient-x")
            .await
            .expect("b's key")
            .is_some(),
        "b's key is kept"
    );
    assert!(a
        .keys()
        .key_for_reading("patient-x")
        .await
        .expect("a's key")
        .is_none());
    let forgotten_in = |s: PersonalStore<S, K>| async move {
        s.inner()
            .read_stream(FORGOTTEN_SUBJECTS_STREAM, ..)
            .await
            .expect("read the forgotten subjects")
            .len()
    };
    assert_eq!(
        forgotten_in(a.clone()).await,
        1,
        "a's log records a's forget"
    );
    assert_eq!(forgotten_in(b.clone()).await, 0, "b's log records none");
}
