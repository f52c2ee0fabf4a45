//! The clinic example's tour, run end to end: on the in-memory stores and
//! on Postgres. Each section checks its own outcome (a poison event parked
//! and replayed, the breaker opening and recovering, every saga ending as
//! scripted, ...) and returns an error when it does not happen.

#[path = "../examples/clinic.rs"]
#[allow(dead_code, unused_imports)]
mod clinic;

use annals::postgres::testing::TestDatabase;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clinic_tour_runs_in_memory() {
    if let Err(e) = clinic::tour_in_memory().await {
        panic!("the in-memory tour failed: {e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clinic_tour_runs_on_postgres() {
    let db = TestDatabase::new().await;
    if let Err(e) = clinic::tour_on_postgres(db.pool().clone()).await {
        panic!("the Postgres tour failed: {e}");
    }
}
