-- Dead letters: events a handler (projection, saga step, outbound call) kept
-- failing on after its retries, parked so the handler can move on, and
-- listed / replayed / discarded later.
--
-- The event is identified both by its global position (to re-read it from
-- annals_events for a replay) and by its event_id (stable, and the key of
-- the uniqueness rule below); stream_id and event_type are copied so that
-- listings and the per-stream ordering check need no join. There is no
-- foreign key to annals_events on purpose: parking a failure must not fail
-- on an unrelated constraint, and parked entries must not block archiving
-- or erasing events.
CREATE TABLE annals_dead_letters (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    handler         text NOT NULL,
    event_position  bigint NOT NULL CHECK (event_position >= 1),
    event_id        uuid NOT NULL,
    stream_id       text NOT NULL,
    event_type      text NOT NULL,
    -- the last error; `attempts` counts every failed try, replays included
    -- (0 for an event parked behind an earlier dead letter of its stream
    -- without being tried: see blocked_by)
    error           text NOT NULL,
    attempts        integer NOT NULL DEFAULT 1 CHECK (attempts >= 0),
    -- set when the event was parked only to keep stream order: the global
    -- position of the earlier dead letter of the same stream it waits behind
    blocked_by      bigint,
    first_failed_at timestamptz NOT NULL DEFAULT now(),
    last_failed_at  timestamptz NOT NULL DEFAULT now(),
    status          text NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'resolved', 'discarded')),
    -- when the entry left 'pending' (replayed successfully, or discarded)
    resolved_at     timestamptz,
    discard_reason  text,
    -- One entry per (handler, event): parking the same event again (e.g. a
    -- failed replay) updates the existing row (ON CONFLICT ... DO UPDATE)
    -- instead of piling up duplicates.
    CONSTRAINT annals_dead_letters_handler_event_key UNIQUE (handler, event_id),
    CONSTRAINT annals_dead_letters_failed_order
        CHECK (last_failed_at >= first_failed_at),
    -- resolved_at is set exactly when the entry is no longer pending
    CONSTRAINT annals_dead_letters_resolved_at
        CHECK ((status = 'pending') = (resolved_at IS NULL)),
    CONSTRAINT annals_dead_letters_discard_reason
        CHECK (discard_reason IS NULL OR status = 'discarded')
);

-- "List the pending entries of a handler, paged by id":
--   WHERE handler = $1 AND status = 'pending' AND id > $cursor
--   ORDER BY id LIMIT $n
-- Partial, so resolved and discarded history does not bloat the index that
-- the hot paths use; it also serves the pending-count metric per handler.
CREATE INDEX annals_dead_letters_pending
    ON annals_dead_letters (handler, id)
    WHERE status = 'pending';

-- Per-stream ordering: before handling an event, a handler that keeps stream
-- order checks whether an earlier event of the same stream is still parked
-- (and if so parks this one too rather than apply it out of order):
--   SELECT EXISTS (SELECT 1 FROM annals_dead_letters
--                   WHERE handler = $1 AND stream_id = $2
--                     AND status = 'pending')
-- This runs for every event, so it must be one probe of a small index.
CREATE INDEX annals_dead_letters_pending_stream
    ON annals_dead_letters (handler, stream_id)
    WHERE status = 'pending';
