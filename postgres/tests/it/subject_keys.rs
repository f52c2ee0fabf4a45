//! Subject keys on Postgres (issue 21, the foundation): a forgotten subject
//! stays forgotten across store instances, a wrong KEK is a typed error
//! that loses nothing, a KEK rotation is resumable from another process,
//! and concurrent first writes agree on one key.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use annals_core::personal::{LocalKeyProvider, PersonalError, SubjectKeys};
use annals_postgres::testing::TestDatabase;
use annals_postgres::PgSubjectKeys;

const KEK_1: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const KEK_2: &str = "HxwdGhsYGRYXFBUSExAREA4PDAoLCAkGBwQFAgMAAQ8=";

fn kek(id: &str, text: &str) -> LocalKeyProvider {
    LocalKeyProvider::from_base64(id, text).unwrap()
}

fn seal(key: &annals_core::personal::DataKey, text: &str) -> serde_json::Value {
    let mut value = serde_json::json!({ "name": text });
    annals_core::personal::seal(&mut value, &["/name".to_owned()], "s", key);
    value
}

fn open(
    key: Option<annals_core::personal::DataKey>,
    sealed: &serde_json::Value,
) -> serde_json::Value {
    let mut value = sealed.clone();
    let keys = key.map(|k| ("s".to_owned(), k)).into_iter().collect();
    annals_core::personal::open(&mut value, &["/name".to_owned()], &keys).unwrap();
    value["name"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forgotten_subjects_stay_forgotten_across_instances() {
    let db = TestDatabase::new().await;
    let keys = PgSubjectKeys::new(db.pool().clone(), kek("kek-1", KEK_1));
    let key = keys.key_for_writing("s").await.unwrap();
    let sealed = seal(&key, "Ana");
    assert!(!sealed.to_string().contains("Ana"));
    // another process (a restart): the same key, unwrapped by the same KEK
    let again = PgSubjectKeys::new(db.pool().clone(), kek("kek-1", KEK_1));
    assert_eq!(
        open(again.key_for_reading("s").await.unwrap(), &sealed),
        "Ana"
    );
    assert!(again.forget("s").await.unwrap());
    assert!(!again.forget("s").await.unwrap(), "nothing left to delete");
    assert_eq!(
        open(keys.key_for_reading("s").await.unwrap(), &sealed),
        serde_json::json!({"$forgotten": true})
    );
    assert!(matches!(
        keys.key_for_writing("s").await,
        Err(PersonalError::Forgotten { .. })
    ));
    // no key bytes are left in the table
    let (kek_id, bytes): (Option<String>, Option<Vec<u8>>) =
        sqlx::query_as("SELECT kek_id, wrapped_key FROM annals_subject_keys WHERE subject = 's'")
            .fetch_one(db.pool())
            .await
            .unwrap();
    assert_eq!((kek_id, bytes), (None, None));
    keys.start_again("s").await.unwrap();
    let fresh = keys.key_for_writing("s").await.unwrap();
    // a new key does not open the old data: it reads as forgotten (the
    // sealed value names the key it was sealed with)
    assert_eq!(
        open(Some(fresh), &sealed),
        serde_json::json!({"$forgotten": true}),
        "a new key does not open the old data"
    );
    // hostile subject ids (empty, NUL, 10 kB) are refused before any SQL,
    // as in memory
    let huge = "s".repeat(10_000);
    for subject in ["", "a\0b", huge.as_str()] {
        for result in [
            keys.key_for_writing(subject).await.map(|_| ()),
            keys.forget(subject).await.map(|_| ()),
        ] {
            assert!(
                matches!(&result, Err(PersonalError::InvalidInput(i)) if i.field == "subject"),
                "{:?}: {result:?}",
                subject.get(..8)
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_kek_loses_nothing_and_rotation_resumes_elsewhere() {
    let db = TestDatabase::new().await;
    let keys = PgSubjectKeys::new(db.pool().clone(), kek("kek-1", KEK_1));
    let mut sealed = Vec::new();
    for s in 0..5 {
        let key = keys.key_for_writing(&format!("p{s}")).await.unwrap();
        sealed.push(seal(&key, &format!("name {s}")));
    }
    // a process started with the wrong KEK under the right id
    let wrong = PgSubjectKeys::new(db.pool().clone(), kek("kek-1", KEK_2));
    assert!(matches!(
        wrong.key_for_reading("p0").await,
        Err(PersonalError::WrongKek { .. })
    ));
    assert!(
        keys.key_for_reading("p0").await.unwrap().is_some(),
        "nothing lost"
    );
    // rotation: 2 keys, then the process stops; another one resumes
    let rotating = keys.clone().rotate_to(kek("kek-2", KEK_2));
    let first = rotating.rewrap(2).await.unwrap();
    assert_eq!((first.rewrapped, first.remaining), (2, 3));
    let resumed = PgSubjectKeys::new(db.pool().clone(), kek("kek-2", KEK_2))
        .with_older_kek(kek("kek-1", KEK_1));
    let rest = resumed.rewrap(100).await.unwrap();
    assert_eq!((rest.rewrapped, rest.remaining), (3, 0));
    // the new KEK alone reads every key
    let only_new = PgSubjectKeys::new(db.pool().clone(), kek("kek-2", KEK_2));
    for (s, value) in sealed.iter().enumerate() {
        let key = only_new.key_for_reading(&format!("p{s}")).await.unwrap();
        let mut v = value.clone();
        let keys = key.map(|k| ("s".to_owned(), k)).into_iter().collect();
        annals_core::personal::open(&mut v, &["/name".to_owned()], &keys).unwrap();
        assert_eq!(v["name"], format!("name {s}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_writes_agree_on_one_key() {
    let db = TestDatabase::new().await;
    let keys = PgSubjectKeys::new(db.pool().clone(), kek("kek-1", KEK_1));
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let keys = keys.clone();
            tokio::spawn(async move { keys.key_for_writing("shared").await.unwrap() })
        })
        .collect();
    let mut sealed = Vec::new();
    for t in tasks {
        let key = t.await.unwrap();
        sealed.push(seal(&key, "same"));
    }
    let key = keys.key_for_reading("shared").await.unwrap();
    for value in &sealed {
        assert_eq!(
            open(key.clone(), value),
            "same",
            "every writer used the stored key"
        );
    }
}
