//! Personal data on Postgres: the personal-data conformance suite over
//! `PgEventStore` with `PgSubjectKeys`, and a wrong KEK on a real key table.

use annals_core::personal::{LocalKeyProvider, PersonalError, PersonalStore};
use annals_core::testing::personal::{registered, PatientEvent};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use annals_core::dead_letter::{DeadLetterQuery, DeadLetterStore as _};
use annals_core::{
    Envelope, Error, EventStoreExt, ExpectedVersion, HandlerError, Metadata, Projection,
    ProjectionRunner,
};
use annals_postgres::testing::TestDatabase;
use annals_postgres::PgSubjectKeys;

const KEK: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

fn kek() -> LocalKeyProvider {
    LocalKeyProvider::from_base64("kek-1", KEK).expect("a 32-byte base64 KEK")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_store_seals_and_forgets() {
    let db = TestDatabase::new().await;
    let pool = db.pool().clone();
    annals_core::testing::personal::run(move || {
        let pool = pool.clone();
        async move {
            sqlx::query("TRUNCATE annals_events, annals_subject_keys")
                .execute(&pool)
                .await
                .expect("truncate between checks");
            let store = annals_postgres::PgEventStore::builder(pool.clone())
                .build()
                .await
                .expect("store");
            (store, PgSubjectKeys::new(pool, kek()))
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_kek_decrypts_nothing_and_loses_nothing() {
    let db = TestDatabase::new().await;
    let store = db.store().await;
    let keys = PgSubjectKeys::new(db.pool().clone(), kek());
    let right = PersonalStore::new(store.clone(), keys);
    right
        .append_events(
            "patient-a",
            ExpectedVersion::NoStream,
            &[registered("patient-a")],
            &Metadata::new(),
        )
        .await
        .expect("append");
    // a process started with another KEK under the same id
    let wrong_kek =
        LocalKeyProvider::from_base64("kek-1", "HxwdGhsYGRYXFBUSExAREA4PDAoLCAkGBwQFAgMAAQ8=")
            .expect("a KEK");
    let wrong = PersonalStore::new(
        store.clone(),
        PgSubjectKeys::new(db.pool().clone(), wrong_kek),
    );
    let read = wrong.read_stream_as::<PatientEvent>("patient-a", ..).await;
    assert!(
        matches!(&read, Err(Error::Personal(PersonalError::WrongKek { subject, .. })) if subject == "patient-a"),
        "a typed error, nothing decrypted: {read:?}"
    );
    let write = wrong
        .append_events(
            "patient-a",
            ExpectedVersion::Any,
            &[registered("patient-a")],
            &Metadata::new(),
        )
        .await;
    assert!(
        matches!(&write, Err(Error::Personal(PersonalError::WrongKek { .. }))),
        "{write:?}"
    );
    // a projection over the wrong KEK fails its read: nothing applied,
    // nothing parked (the event is not at fault), the checkpoint stays
    let projections = annals_postgres::PgProjectionStore::new(db.pool().clone());
    let applied = Arc::new(AtomicU32::new(0));
    let runner = |store| {
        ProjectionRunner::new(
            store,
            projections.clone(),
            Arc::new(Counting(applied.clone())),
        )
    };
    let failed = runner(wrong).catch_up().await;
    assert!(
        failed
            .as_ref()
            .is_err_and(|e| e.to_string().contains("does not unwrap")),
        "the read fails with the KEK error: {failed:?}"
    );
    assert_eq!(applied.load(Ordering::SeqCst), 0);
    let parked = projections
        .list_dead_letters(&DeadLetterQuery::pending("counting"))
        .await
        .expect("dead letters");
    assert!(parked.is_empty(), "nothing parked: {parked:?}");
    // nothing lost: the right KEK still reads it, and the projection goes on
    let again = PersonalStore::new(store, PgSubjectKeys::new(db.pool().clone(), kek()));
    let read = again
        .read_stream_as::<PatientEvent>("patient-a", ..)
        .await
        .expect("the right KEK reads");
    assert_eq!(read.len(), 1);
    assert_eq!(read[0].payload, registered("patient-a"));
    runner(again)
        .catch_up()
        .await
        .expect("catch up with the right KEK");
    assert_eq!(applied.load(Ordering::SeqCst), 1);
}

/// Counts the patient events it applies.
struct Counting(Arc<AtomicU32>);

impl Projection for Counting {
    type Event = PatientEvent;
    type Conn = sqlx::PgConnection;
    fn name(&self) -> &str {
        "counting"
    }
    async fn apply(
        &self,
        _: &mut sqlx::PgConnection,
        _: &Envelope<PatientEvent>,
    ) -> Result<(), HandlerError> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_snapshots_are_sealed_and_forgotten() {
    let db = TestDatabase::new().await;
    let store = db.store().await;
    let snapshots = annals_postgres::PgSnapshotStore::new(&store);
    let keys = PgSubjectKeys::new(db.pool().clone(), kek());
    annals_core::testing::personal::snapshots_are_sealed_and_forgotten(store, keys, snapshots)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_sagas_forget_their_subject() {
    let db = TestDatabase::new().await;
    let pool = db.pool().clone();
    annals_core::testing::personal::sagas_forget_their_subject(
        db.store().await,
        PgSubjectKeys::new(pool.clone(), kek()),
        annals_postgres::PgProjectionStore::new(pool.clone()),
        annals_postgres::PgSagaStore::new(pool),
    )
    .await;
}

/// Through a crash of the database server (an immediate stop: no shutdown
/// checkpoint, WAL replay at start): a subject's key survives, even though
/// its row committed without waiting for the flush (the events sealed with
/// it flushed it), and a forgotten subject stays forgotten.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_survive_a_server_crash_and_forgotten_stays_forgotten() {
    let server = annals_postgres::testing::PgServer::start();
    let connect = || async {
        let pool = sqlx::PgPool::connect(&server.url())
            .await
            .expect("connect to the test's own server");
        let store = annals_postgres::PgEventStore::builder(pool.clone())
            .build()
            .await
            .expect("a store");
        PersonalStore::new(store, PgSubjectKeys::new(pool, kek()))
    };
    {
        let pool = sqlx::PgPool::connect(&server.url()).await.expect("connect");
        annals_postgres::migrate(&pool).await.expect("migrate");
    }
    let before = connect().await;
    for patient in ["patient-a", "patient-b"] {
        before
            .append_events(
                patient,
                ExpectedVersion::NoStream,
                &[registered(patient)],
                &Metadata::new(),
            )
            .await
            .expect("append");
    }
    before.forget("patient-a").await.expect("forget");

    server.crash_and_restart();

    let after = connect().await;
    let b = after
        .read_stream_as::<PatientEvent>("patient-b", ..)
        .await
        .expect("B's key survived the crash");
    assert_eq!(b[0].payload, registered("patient-b"));
    let a = after
        .read_stream_as::<PatientEvent>("patient-a", ..)
        .await
        .expect("A reads, as forgotten");
    let PatientEvent::Registered(r) = &a[0].payload else {
        panic!("a registration: {:?}", a[0].payload)
    };
    assert!(r.name.is_forgotten() && r.contact.is_forgotten(), "{r:?}");
    let write = after
        .append_events(
            "patient-a",
            ExpectedVersion::Any,
            &[registered("patient-a")],
            &Metadata::new(),
        )
        .await;
    assert!(
        matches!(
            &write,
            Err(Error::Personal(PersonalError::Forgotten { .. }))
        ),
        "the tombstone survived the crash: {write:?}"
    );
}
