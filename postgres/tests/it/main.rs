//! annals-postgres' integration tests, in one binary (one link instead of
//! one per file). They need a PostgreSQL server in DATABASE_URL
//! (`scripts/test` starts one) and fail with what to do when it is missing.

#[cfg(all(feature = "personal", feature = "testing"))]
mod erasure;
#[cfg(feature = "knowledge")]
mod knowledge;
mod migrate;
#[cfg(all(feature = "personal", feature = "testing"))]
mod personal;
mod projections;
mod store;
#[cfg(feature = "personal")]
mod subject_keys;
mod tenancy;
#[cfg(all(feature = "otel", feature = "testing"))]
mod trace;
