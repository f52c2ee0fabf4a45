//! The facade's integration tests, in one binary (one link instead of one
//! per file). Tests that need Postgres read DATABASE_URL (`scripts/test`
//! starts a server) and fail with what to do when it is missing.

mod aggregates;
mod events;
mod hostile_sagas;
mod k8s;
mod metrics;
mod sagas;
mod ui;
