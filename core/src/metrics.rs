//! Metric names, recorded through the [`metrics`](https://docs.rs/metrics)
//! facade (the application picks the exporter). Labels are bounded: type
//! names and reasons, never ids.

/// Every metric name annals records (for dashboards, alert rules and the
/// test that checks them).
pub const ALL: &[&str] = &[
    EVENTS_APPENDED_TOTAL,
    APPEND_DURATION_SECONDS,
    APPEND_CONFLICTS_TOTAL,
    APPEND_BATCH_SIZE,
    COMMANDS_TOTAL,
    COMMAND_RETRIES_TOTAL,
    SNAPSHOT_HITS_TOTAL,
    SNAPSHOT_MISSES_TOTAL,
    SNAPSHOT_INVALIDATIONS_TOTAL,
    SNAPSHOT_WRITES_TOTAL,
    SNAPSHOT_WRITE_ERRORS_TOTAL,
    EVENTS_REPLAYED_TOTAL,
    RETRIES_TOTAL,
    PROJECTION_LAG_SECONDS,
    PROJECTION_EVENTS_BEHIND,
    PROJECTION_STALE,
    PROJECTION_FAILED,
    PROJECTION_EVENTS_APPLIED_TOTAL,
    PROJECTION_UNREADABLE_SKIPPED_TOTAL,
    PROJECTION_BATCH_DURATION_SECONDS,
    HORIZON_LAG_SECONDS,
    HORIZON_EVENTS_HELD_BACK,
    DEAD_LETTERS_PENDING,
    DEAD_LETTERS_PARKED_TOTAL,
    DEAD_LETTERS_REPLAYED_TOTAL,
    CIRCUIT_BREAKER_STATE,
    CIRCUIT_BREAKER_TRANSITIONS_TOTAL,
    EMBEDDING_CACHE_HITS_TOTAL,
    EMBEDDING_CACHE_MISSES_TOTAL,
    EMBEDDER_CALLS_TOTAL,
    EMBEDDER_TEXTS_TOTAL,
    EMBEDDER_ERRORS_TOTAL,
    EMBEDDING_REFRESH_ROWS_TOTAL,
    EMBEDDING_REFRESH_PENDING_ROWS,
    KNOWLEDGE_SEARCH_DURATION_SECONDS,
    SAGA_STATUS_CHANGES_TOTAL,
    SAGAS_UNFINISHED,
    SAGA_STEPS_TOTAL,
    SAGA_COMPENSATIONS_TOTAL,
    SAGA_TIMEOUTS_TOTAL,
    SAGA_COMMANDS_DISPATCHED_TOTAL,
    SAGA_COMMAND_FAILURES_TOTAL,
    SAGA_OUTBOX_PENDING,
];

/// Events appended (counter; labels `event_type`, `store` = `memory` |
/// `postgres`). An append inside a caller's transaction is counted when the
/// statement succeeds, even if the caller later rolls back.
pub const EVENTS_APPENDED_TOTAL: &str = "annals_events_appended_total";
/// Duration of append calls, successful or not (histogram, seconds; label
/// `store`).
pub const APPEND_DURATION_SECONDS: &str = "annals_append_duration_seconds";
/// Appends refused by a version conflict (counter; label `store`).
pub const APPEND_CONFLICTS_TOTAL: &str = "annals_append_conflicts_total";

/// Records one append call's outcome: the appended events (by type) on
/// success, the conflict on a version conflict, and the duration either
/// way. Called by the stores.
#[doc(hidden)]
pub fn record_append(
    store: &'static str,
    started: std::time::Instant,
    outcome: &Result<crate::AppendResult, crate::Error>,
) {
    metrics::histogram!(APPEND_DURATION_SECONDS, "store" => store)
        .record(started.elapsed().as_secs_f64());
    match outcome {
        Ok(appended) => {
            for e in &appended.events {
                metrics::counter!(EVENTS_APPENDED_TOTAL, "event_type" => e.event_type.clone(), "store" => store)
                    .increment(1);
            }
        }
        Err(crate::Error::Conflict(_)) => {
            metrics::counter!(APPEND_CONFLICTS_TOTAL, "store" => store).increment(1)
        }
        Err(_) => {}
    }
}

/// Appends written together by one group commit (histogram, appends per
/// statement; label `store`).
pub const APPEND_BATCH_SIZE: &str = "annals_append_batch_size";

/// Records the size of one group commit. Called by the stores.
#[doc(hidden)]
pub fn record_append_batch(store: &'static str, appends: usize) {
    metrics::histogram!(APPEND_BATCH_SIZE, "store" => store).record(appends as f64);
}

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
/// code, or their version lies beyond the end of their stream (counter;
/// labels `aggregate`, `reason` = `fingerprint` | `codec` | `decode` |
/// `beyond_stream`).
pub const SNAPSHOT_INVALIDATIONS_TOTAL: &str = "annals_snapshot_invalidations_total";
/// Snapshots written (counter; label `aggregate`).
pub const SNAPSHOT_WRITES_TOTAL: &str = "annals_snapshot_writes_total";
/// Snapshot writes that failed (counter; label `aggregate`).
pub const SNAPSHOT_WRITE_ERRORS_TOTAL: &str = "annals_snapshot_write_errors_total";
/// Events replayed while loading aggregates (counter; label `aggregate`).
pub const EVENTS_REPLAYED_TOTAL: &str = "annals_events_replayed_total";

/// Retries of a failed operation (counter; label `handler`: the projection,
/// saga or component that retried).
pub const RETRIES_TOTAL: &str = "annals_retries_total";

/// Counts one retry of `handler`.
#[doc(hidden)]
pub fn record_retry(handler: &str) {
    metrics::counter!(RETRIES_TOTAL, "handler" => handler.to_owned()).increment(1);
}

// projections, the horizon, dead letters and circuit breakers

/// Seconds between now and the oldest event a projection has not applied
/// yet; 0 when it is caught up (gauge; label `projection`).
pub const PROJECTION_LAG_SECONDS: &str = "annals_projection_lag_seconds";
/// Committed events past a projection's checkpoint (gauge; label
/// `projection`).
pub const PROJECTION_EVENTS_BEHIND: &str = "annals_projection_events_behind";
/// 1 when a projection is stale (lagging beyond its threshold, or failed),
/// else 0 (gauge; label `projection`).
pub const PROJECTION_STALE: &str = "annals_projection_stale";
/// 1 when a projection stopped on an event it cannot apply, else 0 (gauge;
/// label `projection`).
pub const PROJECTION_FAILED: &str = "annals_projection_failed";
/// Events applied by a projection (counter; label `projection`).
pub const PROJECTION_EVENTS_APPLIED_TOTAL: &str = "annals_projection_events_applied_total";
/// Rows of the log whose envelope cannot be read (a row written by hand, or
/// damaged) that a projection skipped because it does not read their type
/// (counter; label `projection`). A projection that reads the type parks
/// the row instead ([`DEAD_LETTERS_PARKED_TOTAL`]).
pub const PROJECTION_UNREADABLE_SKIPPED_TOTAL: &str = "annals_projection_unreadable_skipped_total";
/// Duration of one projection batch: apply, checkpoint, commit (histogram,
/// seconds; label `projection`).
pub const PROJECTION_BATCH_DURATION_SECONDS: &str = "annals_projection_batch_duration_seconds";
/// Seconds the store's horizon has been held back by the oldest open
/// transaction (gauge).
pub const HORIZON_LAG_SECONDS: &str = "annals_horizon_lag_seconds";
/// Committed events that log readers cannot see yet because an older
/// transaction is still open (gauge).
pub const HORIZON_EVENTS_HELD_BACK: &str = "annals_horizon_events_held_back";
/// Dead letters waiting for a replay or a discard (gauge; label `handler`).
pub const DEAD_LETTERS_PENDING: &str = "annals_dead_letters_pending";
/// Events parked as dead letters (counter; labels `handler`, `reason` =
/// `failed` | `behind`: parked behind an earlier dead letter of its stream).
pub const DEAD_LETTERS_PARKED_TOTAL: &str = "annals_dead_letters_parked_total";
/// Dead-letter replays (counter; labels `handler`, `outcome` = `resolved` |
/// `failed`).
pub const DEAD_LETTERS_REPLAYED_TOTAL: &str = "annals_dead_letters_replayed_total";
/// A circuit breaker's state: 0 closed, 1 half-open, 2 open (gauge; label
/// `breaker`).
pub const CIRCUIT_BREAKER_STATE: &str = "annals_circuit_breaker_state";
/// Circuit breaker state changes (counter; labels `breaker`, `to` =
/// `closed` | `half_open` | `open`).
pub const CIRCUIT_BREAKER_TRANSITIONS_TOTAL: &str = "annals_circuit_breaker_transitions_total";

// knowledge base

/// Embedding cache lookups answered from the cache (counter; labels `model`,
/// `cache` = `memory` | `redis` | the cache's own name).
pub const EMBEDDING_CACHE_HITS_TOTAL: &str = "annals_embedding_cache_hits_total";
/// Embedding cache lookups that missed and went to the embedder (counter;
/// labels `model`, `cache`).
pub const EMBEDDING_CACHE_MISSES_TOTAL: &str = "annals_embedding_cache_misses_total";
/// Embedding requests served by an embedder: one per batch, and one per
/// HTTP request for the HTTP embedder, retries included (counter; label
/// `model`).
pub const EMBEDDER_CALLS_TOTAL: &str = "annals_embedder_calls_total";
/// Texts embedded (counter; label `model`).
pub const EMBEDDER_TEXTS_TOTAL: &str = "annals_embedder_texts_total";
/// Failed embedder requests (counter; labels `model`, `kind` =
/// `rate_limited` | `status` | `timeout` | `transport` | `malformed`).
pub const EMBEDDER_ERRORS_TOTAL: &str = "annals_embedder_errors_total";
/// Rows re-embedded by the embedding refresh job (counter; label `model`:
/// the target model).
pub const EMBEDDING_REFRESH_ROWS_TOTAL: &str = "annals_embedding_refresh_rows_total";
/// Rows the running embedding refresh job still has to re-embed (gauge;
/// label `model`).
pub const EMBEDDING_REFRESH_PENDING_ROWS: &str = "annals_embedding_refresh_pending_rows";
/// Duration of knowledge base searches (histogram, seconds; label `store` =
/// `memory` | `postgres`).
pub const KNOWLEDGE_SEARCH_DURATION_SECONDS: &str = "annals_knowledge_search_duration_seconds";

/// Counts one embedder request of `texts` texts.
#[doc(hidden)]
pub fn record_embedder_call(model: &str, texts: usize) {
    metrics::counter!(EMBEDDER_CALLS_TOTAL, "model" => model.to_owned()).increment(1);
    metrics::counter!(EMBEDDER_TEXTS_TOTAL, "model" => model.to_owned()).increment(texts as u64);
}

/// Counts one failed embedder request.
#[doc(hidden)]
pub fn record_embedder_error(model: &str, kind: &'static str) {
    metrics::counter!(EMBEDDER_ERRORS_TOTAL, "model" => model.to_owned(), "kind" => kind)
        .increment(1);
}

/// Counts embedding cache hits and misses of one lookup.
#[doc(hidden)]
pub fn record_embedding_cache(model: &str, cache: &'static str, hits: usize, misses: usize) {
    if hits > 0 {
        metrics::counter!(EMBEDDING_CACHE_HITS_TOTAL, "model" => model.to_owned(), "cache" => cache)
            .increment(hits as u64);
    }
    if misses > 0 {
        metrics::counter!(EMBEDDING_CACHE_MISSES_TOTAL, "model" => model.to_owned(), "cache" => cache)
            .increment(misses as u64);
    }
}

/// Records one knowledge base search's duration.
#[doc(hidden)]
pub fn record_knowledge_search(store: &'static str, started: std::time::Instant) {
    metrics::histogram!(KNOWLEDGE_SEARCH_DURATION_SECONDS, "store" => store)
        .record(started.elapsed().as_secs_f64());
}

/// Records a refresh batch: `rows` re-embedded, `pending` left.
#[doc(hidden)]
pub fn record_refresh_progress(model: &str, rows: u64, pending: u64) {
    metrics::counter!(EMBEDDING_REFRESH_ROWS_TOTAL, "model" => model.to_owned()).increment(rows);
    metrics::gauge!(EMBEDDING_REFRESH_PENDING_ROWS, "model" => model.to_owned())
        .set(pending as f64);
}

// sagas

/// Sagas entering a status (counter; labels `saga` = the saga type,
/// `status` = `running` (started) | `compensating` | `completed` |
/// `failed`). Counted when the write succeeds, even if the projection
/// runner's transaction later rolls back.
pub const SAGA_STATUS_CHANGES_TOTAL: &str = "annals_saga_status_changes_total";
/// Unfinished sagas per status, as the saga worker last counted them in the
/// store (gauge; labels `saga`, `status` = `pending` | `running` |
/// `compensating`).
pub const SAGAS_UNFINISHED: &str = "annals_sagas_unfinished";
/// Saga steps taken: states entered that issued commands (counter; label
/// `saga`).
pub const SAGA_STEPS_TOTAL: &str = "annals_saga_steps_total";
/// Sagas that started compensating (counter; labels `saga`, `reason` =
/// `event` | `timeout` | `command`).
pub const SAGA_COMPENSATIONS_TOTAL: &str = "annals_saga_compensations_total";
/// Saga timeouts fired (counter; label `saga`).
pub const SAGA_TIMEOUTS_TOTAL: &str = "annals_saga_timeouts_total";
/// Saga commands delivered to the command bus (counter; labels `saga`,
/// `command` = the command's variant name).
pub const SAGA_COMMANDS_DISPATCHED_TOTAL: &str = "annals_saga_commands_dispatched_total";
/// Failed deliveries of saga commands (counter; labels `saga`, `command`,
/// `outcome` = `retry` | `abandoned`).
pub const SAGA_COMMAND_FAILURES_TOTAL: &str = "annals_saga_command_failures_total";
/// Saga commands waiting in the outbox, as the saga worker last counted
/// them (gauge; label `saga`).
pub const SAGA_OUTBOX_PENDING: &str = "annals_saga_outbox_pending";

/// Counts a saga entering `status`.
#[doc(hidden)]
pub fn record_saga_status(saga: &'static str, status: crate::saga::SagaStatus) {
    metrics::counter!(SAGA_STATUS_CHANGES_TOTAL, "saga" => saga, "status" => status.as_str())
        .increment(1);
}

/// Describes every annals metric to the installed recorder: its help text
/// and unit, so that an exporter can show them (the Prometheus exporter's
/// `# HELP` lines). Call it once, after installing the recorder; metrics
/// recorded before or after are described alike.
///
/// ```
/// // e.g. after metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder()
/// annals::metrics::describe();
/// ```
pub fn describe() {
    use metrics::Unit;
    metrics::describe_counter!(
        EVENTS_APPENDED_TOTAL,
        Unit::Count,
        "Events appended, by event type and store."
    );
    metrics::describe_histogram!(
        APPEND_DURATION_SECONDS,
        Unit::Seconds,
        "Duration of append calls, successful or not, by store."
    );
    metrics::describe_counter!(
        APPEND_CONFLICTS_TOTAL,
        Unit::Count,
        "Appends refused by a version conflict, by store."
    );
    metrics::describe_histogram!(
        APPEND_BATCH_SIZE,
        Unit::Count,
        "Appends written together by one group commit (appends per statement), by store."
    );
    metrics::describe_counter!(COMMANDS_TOTAL, Unit::Count, "Commands executed by a repository, by aggregate and outcome (ok, rejected, conflict, error).");
    metrics::describe_counter!(
        COMMAND_RETRIES_TOTAL,
        Unit::Count,
        "Command retries after a version conflict, by aggregate."
    );
    metrics::describe_counter!(
        SNAPSHOT_HITS_TOTAL,
        Unit::Count,
        "Aggregate loads that used a snapshot, by aggregate."
    );
    metrics::describe_counter!(
        SNAPSHOT_MISSES_TOTAL,
        Unit::Count,
        "Aggregate loads without a snapshot, by aggregate."
    );
    metrics::describe_counter!(SNAPSHOT_INVALIDATIONS_TOTAL, Unit::Count, "Snapshots ignored because they no longer match the code or the stream, by aggregate and reason.");
    metrics::describe_counter!(
        SNAPSHOT_WRITES_TOTAL,
        Unit::Count,
        "Snapshots written, by aggregate."
    );
    metrics::describe_counter!(
        SNAPSHOT_WRITE_ERRORS_TOTAL,
        Unit::Count,
        "Snapshot writes that failed, by aggregate."
    );
    metrics::describe_counter!(
        EVENTS_REPLAYED_TOTAL,
        Unit::Count,
        "Events replayed while loading aggregates, by aggregate."
    );
    metrics::describe_counter!(
        RETRIES_TOTAL,
        Unit::Count,
        "Retries of a failed operation, by handler (projection, saga or component)."
    );
    metrics::describe_gauge!(
        PROJECTION_LAG_SECONDS,
        Unit::Seconds,
        "Age of the oldest event a projection has not applied yet; 0 when caught up."
    );
    metrics::describe_gauge!(
        PROJECTION_EVENTS_BEHIND,
        Unit::Count,
        "Committed events past a projection's checkpoint."
    );
    metrics::describe_gauge!(
        PROJECTION_STALE,
        "1 when a projection is stale (lagging beyond its threshold, or failed), else 0."
    );
    metrics::describe_gauge!(
        PROJECTION_FAILED,
        "1 when a projection stopped on an event it cannot apply, else 0."
    );
    metrics::describe_counter!(
        PROJECTION_EVENTS_APPLIED_TOTAL,
        Unit::Count,
        "Events applied by a projection."
    );
    metrics::describe_counter!(
        PROJECTION_UNREADABLE_SKIPPED_TOTAL,
        Unit::Count,
        "Unreadable log rows a projection skipped because it does not read their type."
    );
    metrics::describe_histogram!(
        PROJECTION_BATCH_DURATION_SECONDS,
        Unit::Seconds,
        "Duration of one projection batch: apply, checkpoint, commit."
    );
    metrics::describe_gauge!(
        HORIZON_LAG_SECONDS,
        Unit::Seconds,
        "How long the oldest open transaction has held the log's horizon back."
    );
    metrics::describe_gauge!(
        HORIZON_EVENTS_HELD_BACK,
        Unit::Count,
        "Committed events log readers cannot see yet because an older transaction is still open."
    );
    metrics::describe_gauge!(
        DEAD_LETTERS_PENDING,
        Unit::Count,
        "Dead letters waiting for a replay or a discard, by handler."
    );
    metrics::describe_counter!(
        DEAD_LETTERS_PARKED_TOTAL,
        Unit::Count,
        "Events parked as dead letters, by handler and reason (failed, behind)."
    );
    metrics::describe_counter!(
        DEAD_LETTERS_REPLAYED_TOTAL,
        Unit::Count,
        "Dead-letter replays, by handler and outcome (resolved, failed)."
    );
    metrics::describe_gauge!(
        CIRCUIT_BREAKER_STATE,
        "A circuit breaker's state: 0 closed, 1 half-open, 2 open."
    );
    metrics::describe_counter!(
        CIRCUIT_BREAKER_TRANSITIONS_TOTAL,
        Unit::Count,
        "Circuit breaker state changes, by breaker and new state."
    );
    metrics::describe_counter!(
        EMBEDDING_CACHE_HITS_TOTAL,
        Unit::Count,
        "Embedding cache lookups answered from the cache, by model and cache."
    );
    metrics::describe_counter!(
        EMBEDDING_CACHE_MISSES_TOTAL,
        Unit::Count,
        "Embedding cache lookups that went to the embedder, by model and cache."
    );
    metrics::describe_counter!(
        EMBEDDER_CALLS_TOTAL,
        Unit::Count,
        "Embedding requests served by an embedder, retries included, by model."
    );
    metrics::describe_counter!(
        EMBEDDER_TEXTS_TOTAL,
        Unit::Count,
        "Texts embedded, by model."
    );
    metrics::describe_counter!(
        EMBEDDER_ERRORS_TOTAL,
        Unit::Count,
        "Failed embedder requests, by model and kind."
    );
    metrics::describe_counter!(
        EMBEDDING_REFRESH_ROWS_TOTAL,
        Unit::Count,
        "Rows re-embedded by the embedding refresh job, by target model."
    );
    metrics::describe_gauge!(
        EMBEDDING_REFRESH_PENDING_ROWS,
        Unit::Count,
        "Rows the running embedding refresh job still has to re-embed, by model."
    );
    metrics::describe_histogram!(
        KNOWLEDGE_SEARCH_DURATION_SECONDS,
        Unit::Seconds,
        "Duration of knowledge base searches, by store."
    );
    metrics::describe_counter!(
        SAGA_STATUS_CHANGES_TOTAL,
        Unit::Count,
        "Sagas entering a status (running, compensating, completed, failed), by saga type."
    );
    metrics::describe_gauge!(
        SAGAS_UNFINISHED,
        Unit::Count,
        "Unfinished sagas per status, as the saga worker last counted them, by saga type."
    );
    metrics::describe_counter!(
        SAGA_STEPS_TOTAL,
        Unit::Count,
        "Saga steps taken (states entered that issued commands), by saga type."
    );
    metrics::describe_counter!(
        SAGA_COMPENSATIONS_TOTAL,
        Unit::Count,
        "Sagas that started compensating, by saga type and reason (event, timeout, command)."
    );
    metrics::describe_counter!(
        SAGA_TIMEOUTS_TOTAL,
        Unit::Count,
        "Saga timeouts fired, by saga type."
    );
    metrics::describe_counter!(
        SAGA_COMMANDS_DISPATCHED_TOTAL,
        Unit::Count,
        "Saga commands delivered to the command bus, by saga type and command."
    );
    metrics::describe_counter!(
        SAGA_COMMAND_FAILURES_TOTAL,
        Unit::Count,
        "Failed deliveries of saga commands, by saga type, command and outcome (retry, abandoned)."
    );
    metrics::describe_gauge!(
        SAGA_OUTBOX_PENDING,
        Unit::Count,
        "Saga commands waiting in the outbox, as the saga worker last counted them, by saga type."
    );
}

#[cfg(test)]
mod tests {
    /// `ALL` lists every `pub const` metric name of this file.
    #[test]
    fn all_lists_every_metric() {
        let source = include_str!("metrics.rs");
        let declared: Vec<&str> = source
            .lines()
            .filter_map(|l| l.strip_prefix("pub const "))
            .filter_map(|l| l.split_once(": &str = \""))
            .map(|(_, rest)| rest.trim_end_matches("\";"))
            .collect();
        assert!(declared.len() > 10, "{declared:?}");
        for name in &declared {
            assert!(super::ALL.contains(name), "metrics::ALL lacks {name}");
            assert!(name.starts_with("annals_"), "{name}");
        }
        assert_eq!(declared.len(), super::ALL.len(), "ALL has a name twice");
    }

    /// One `describe_*` call: name, kind, unit, help.
    type Description = (String, &'static str, Option<metrics::Unit>, String);

    /// Records which metrics were described, with which unit.
    #[derive(Default)]
    struct Descriptions(std::sync::Mutex<Vec<Description>>);

    impl Descriptions {
        fn push(
            &self,
            kind: &'static str,
            key: metrics::KeyName,
            unit: Option<metrics::Unit>,
            help: metrics::SharedString,
        ) {
            self.0.lock().unwrap_or_else(|p| p.into_inner()).push((
                key.as_str().to_owned(),
                kind,
                unit,
                help.to_string(),
            ));
        }
    }

    impl metrics::Recorder for Descriptions {
        fn describe_counter(
            &self,
            key: metrics::KeyName,
            unit: Option<metrics::Unit>,
            help: metrics::SharedString,
        ) {
            self.push("counter", key, unit, help);
        }
        fn describe_gauge(
            &self,
            key: metrics::KeyName,
            unit: Option<metrics::Unit>,
            help: metrics::SharedString,
        ) {
            self.push("gauge", key, unit, help);
        }
        fn describe_histogram(
            &self,
            key: metrics::KeyName,
            unit: Option<metrics::Unit>,
            help: metrics::SharedString,
        ) {
            self.push("histogram", key, unit, help);
        }
        fn register_counter(
            &self,
            _: &metrics::Key,
            _: &metrics::Metadata<'_>,
        ) -> metrics::Counter {
            metrics::Counter::noop()
        }
        fn register_gauge(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
            metrics::Gauge::noop()
        }
        fn register_histogram(
            &self,
            _: &metrics::Key,
            _: &metrics::Metadata<'_>,
        ) -> metrics::Histogram {
            metrics::Histogram::noop()
        }
    }

    /// `describe` gives every metric a help text, once, with a unit that
    /// matches its name (`_seconds` in seconds, `_total` counted).
    #[test]
    fn describe_covers_every_metric() {
        let recorder = Descriptions::default();
        metrics::with_local_recorder(&recorder, super::describe);
        let described = recorder.0.into_inner().unwrap_or_else(|p| p.into_inner());
        for name in super::ALL {
            let found: Vec<_> = described.iter().filter(|d| d.0 == *name).collect();
            assert_eq!(found.len(), 1, "{name} is described {} times", found.len());
            let (_, kind, unit, help) = found[0];
            assert!(!help.is_empty(), "{name} has no help text");
            if name.ends_with("_seconds") {
                assert_eq!(*unit, Some(metrics::Unit::Seconds), "{name}");
            }
            if name.ends_with("_total") {
                assert_eq!(
                    (*kind, *unit),
                    ("counter", Some(metrics::Unit::Count)),
                    "{name}"
                );
            }
        }
        assert_eq!(
            described.len(),
            super::ALL.len(),
            "a description for a metric not in ALL"
        );
    }
}
