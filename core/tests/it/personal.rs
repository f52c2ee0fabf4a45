//! Personal data on the in-memory store: the personal-data conformance
//! suite, with and without validation.
use annals_core::personal::{InMemorySubjectKeys, LocalKeyProvider};
use annals_core::InMemoryEventStore;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_memory_store_seals_and_forgets() {
    annals_core::testing::personal::run(|| async {
        let keys = InMemorySubjectKeys::new(LocalKeyProvider::generate("kek-1"));
        (InMemoryEventStore::new(), keys)
    })
    .await;
    annals_core::testing::personal::run(|| async {
        let keys = InMemorySubjectKeys::new(LocalKeyProvider::generate("kek-1"));
        (InMemoryEventStore::new().without_validation(), keys)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_memory_snapshots_are_sealed_and_forgotten() {
    let keys = InMemorySubjectKeys::new(LocalKeyProvider::generate("kek-1"));
    annals_core::testing::personal::snapshots_are_sealed_and_forgotten(
        InMemoryEventStore::new(),
        keys,
        annals_core::InMemorySnapshotStore::new(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_memory_sagas_forget_their_subject() {
    let keys = InMemorySubjectKeys::new(LocalKeyProvider::generate("kek-1"));
    annals_core::testing::personal::sagas_forget_their_subject(
        InMemoryEventStore::new(),
        keys,
        annals_core::InMemoryProjectionStore::new(),
        annals_core::InMemorySagaStore::new(),
    )
    .await;
}
