//! Personal data on Postgres: the personal-data conformance suite over
//! `PgEventStore` with `PgSubjectKeys`, and a wrong KEK on a real key table.

use annals_core::personal::{LocalKeyProvider, PersonalError, PersonalStore};
use annals_core::testing::personal::{registered, PatientEvent};
use annals_core::{Error, EventStoreExt, ExpectedVersion, Metadata};
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
    // nothing lost: the right KEK still reads it
    let again = PersonalStore::new(store, PgSubjectKeys::new(db.pool().clone(), kek()));
    let read = again
        .read_stream_as::<PatientEvent>("patient-a", ..)
        .await
        .expect("the right KEK reads");
    assert_eq!(read.len(), 1);
    assert_eq!(read[0].payload, registered("patient-a"));
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
