-- Projection checkpoints: where each projection is in the global log, and
-- whether it is healthy.
--
-- The checkpoint is the pair (transaction_id, position) of the last event the
-- projection applied, because the global log is ordered by that pair (see
-- 0001_events). The next batch is
--   WHERE (transaction_id, position) > ($tx, $pos)
--     AND transaction_id < pg_snapshot_xmin(pg_current_snapshot())
--   ORDER BY transaction_id, position
-- which is a range scan on annals_events_global_order. The defaults ('0', 0)
-- sort before every real event, so a new row, or a reset for a rebuild,
-- means "from the beginning". A Postgres projection updates its row in the
-- same transaction as its read model, so each event is applied exactly once.
--
-- Health (lag, events behind, staleness) is computed from last_event_at and
-- from counting annals_events past the checkpoint, so no extra columns are
-- needed for it. Ownership among several instances is an advisory lock,
-- not a column: a crashed owner releases it with its session.
CREATE TABLE annals_projection_checkpoints (
    projection_name text PRIMARY KEY CHECK (projection_name <> ''),
    transaction_id  xid8 NOT NULL DEFAULT '0'::xid8,
    position        bigint NOT NULL DEFAULT 0 CHECK (position >= 0),
    -- recorded_at of the last applied event; NULL until the first one
    last_event_at   timestamptz,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    status          text NOT NULL DEFAULT 'running'
                    CHECK (status IN ('running', 'stopped', 'failed')),
    -- the last failure, and the position of the event it happened on
    error           text,
    error_position  bigint,
    -- a failed projection always says why
    CONSTRAINT annals_projection_checkpoints_failed_has_error
        CHECK (status <> 'failed' OR error IS NOT NULL)
);
