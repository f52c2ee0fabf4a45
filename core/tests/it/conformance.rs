//! The in-memory store passes the backend conformance suite.
use annals_core::InMemoryEventStore;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_memory_store_conforms() {
    annals_core::testing::conformance::run(|validate| async move {
        let store = InMemoryEventStore::new();
        if validate {
            store
        } else {
            store.without_validation()
        }
    })
    .await;
}
