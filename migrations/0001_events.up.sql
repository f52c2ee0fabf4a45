-- annals event store: the global, append-only event log.
--
-- The column layout is fixed by annals-postgres' store code; change it only
-- together with that code.

-- The global log.
--
-- `position` comes from an identity sequence: positions are unique and
-- increase in *allocation* order, not in commit order, and a rolled-back
-- transaction leaves a gap. So a reader of the whole log cannot simply
-- resume at "position > last": a transaction that allocated a lower
-- position may still commit after the reader passed it. Instead every row
-- records the id of the transaction that wrote it (`transaction_id`, xid8,
-- which never wraps around), readers order by (transaction_id, position)
-- and only read rows with transaction_id below the horizon
-- pg_snapshot_xmin(pg_current_snapshot()): every transaction below it has
-- finished, so nothing can appear later behind a reader's checkpoint.
--
-- There is no stream table. The unique key (stream_id, stream_version) is
-- the optimistic-concurrency control: an append inserts its first event at
-- the version after the one it expects, `ON CONFLICT ... DO NOTHING`, so of
-- two writers racing for a version exactly one inserts and the other gets no
-- row (a conflict, without an error that would abort a caller's
-- transaction); the rest of a batch follows the first event, which no other
-- writer can get past while it is uncommitted. A stream's version is
-- max(stream_version), one backward probe of the same index. Measured: one
-- table instead of a stream row plus the events makes a one-event append
-- 1.14-1.23x cheaper.
CREATE TABLE annals_events (
    position       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    transaction_id xid8 NOT NULL DEFAULT pg_current_xact_id(),
    event_id       uuid NOT NULL UNIQUE,
    stream_id      text NOT NULL,
    stream_version bigint NOT NULL CHECK (stream_version >= 1),
    event_type     text NOT NULL,
    schema_version integer NOT NULL,
    payload        jsonb NOT NULL,
    metadata       jsonb NOT NULL DEFAULT '{}'::jsonb,
    recorded_at    timestamptz NOT NULL DEFAULT now(),
    -- Also the index for reading one stream in order
    -- (WHERE stream_id = $1 AND stream_version > $2 ORDER BY stream_version)
    -- and for a stream's version (max(stream_version)).
    CONSTRAINT annals_events_stream_version_key UNIQUE (stream_id, stream_version)
);

-- Reading the global log: WHERE (transaction_id, position) > ($1, $2)
-- AND transaction_id < pg_snapshot_xmin(pg_current_snapshot())
-- ORDER BY transaction_id, position. The row comparison is an index range
-- scan on this index; it also serves "events behind" counts for health.
CREATE INDEX annals_events_global_order ON annals_events (transaction_id, position);

-- Filtering by event type (projections and tools that read one type).
CREATE INDEX annals_events_type ON annals_events (event_type);

-- Wake-up for live readers, which LISTEN on channel `annals_events`.
--
-- Statement level, not row level: an append of N events is one INSERT
-- statement and costs one pg_notify, not N. The payload is empty on purpose:
-- a notification only says "look again"; readers then query from their own
-- checkpoint, below the horizon, so no event data travels through NOTIFY
-- (whose payload is limited to 8000 bytes). Notifications are delivered at
-- commit and never for a rolled-back transaction, and Postgres folds
-- identical (channel, payload) pairs within one transaction into one, so a
-- transaction with several appends also wakes readers once. An INSERT that
-- inserts no row still fires the trigger; the spurious wake-up is harmless.
CREATE FUNCTION annals_notify_events() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('annals_events', '');
    RETURN NULL; -- the return value of an AFTER STATEMENT trigger is ignored
END;
$$;

CREATE TRIGGER annals_events_notify
    AFTER INSERT ON annals_events
    FOR EACH STATEMENT
    EXECUTE FUNCTION annals_notify_events();
