//! Metric names, recorded through the [`metrics`](https://docs.rs/metrics)
//! facade (the application picks the exporter). Labels are bounded: type
//! names and reasons, never ids.

/// Commands executed by a repository (counter; labels `aggregate`,
/// `outcome` = `ok` | `rejected` | `conflict` | `error`).
pub const COMMANDS_TOTAL: &str = "annals_commands_total";
/// Retries after a version conflict (counter; label `aggregate`).
pub const COMMAND_RETRIES_TOTAL: &str = "annals_command_retries_total";
/// Aggregate loads that used a snapshot (counter; label `aggregate`).
pub const SNAPSHOT_HITS_TOTAL: &str = "annals_snapshot_hits_total";
/// Aggregate loads without a snapshot (counter; label `aggregate`).
pub const SNAPSHOT_MISSES_TOTAL: &str = "annals_snapshot_misses_total";
/// Snapshots ignored because their shape, codec or bytes did not match the
/// code (counter; labels `aggregate`, `reason` = `fingerprint` | `codec` |
/// `decode`).
pub const SNAPSHOT_INVALIDATIONS_TOTAL: &str = "annals_snapshot_invalidations_total";
/// Snapshots written (counter; label `aggregate`).
pub const SNAPSHOT_WRITES_TOTAL: &str = "annals_snapshot_writes_total";
/// Snapshot writes that failed (counter; label `aggregate`).
pub const SNAPSHOT_WRITE_ERRORS_TOTAL: &str = "annals_snapshot_write_errors_total";
/// Events replayed while loading aggregates (counter; label `aggregate`).
pub const EVENTS_REPLAYED_TOTAL: &str = "annals_events_replayed_total";
