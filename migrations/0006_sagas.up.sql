-- Saga state and the saga command outbox.
--
-- annals_sagas follows the seed's saga_store, with these changes:
--  * correlation_id is text, not uuid: it is whatever the saga correlates
--    events on (a lead id, an order number), and (saga_type,
--    correlation_id) is UNIQUE, so a saga is found with one index probe and
--    two instances racing to start the same saga cannot both succeed.
--  * state is {"state": "<the state enum's variant>", "data": <the saga's
--    data>}: the state machine's position and what the saga knows.
--  * version: optimistic locking. Every write is
--      UPDATE ... SET ..., version = version + 1
--       WHERE saga_id = $1 AND version = $expected
--    and 0 rows updated means another instance got there first.
--  * deadline_at: the step timeout is persisted, so a restarted process
--    still fires it. NULL = no timeout armed.
--  * completed_steps: the steps taken so far (states whose entry issued
--    commands), as a JSON array in order, each
--      {"step": n, "state": "...", "status": "done" | "failed" |
--       "compensating" | "compensated" | "compensation_failed"}
--    so compensation can run them backwards after a restart.
--  * last_event_tx / last_event_position: the (transaction id, position) of
--    the last event the saga applied. The log is read in that order, so an
--    event at or before it is a second delivery (a replay, a rebuild) and is
--    ignored: an event never moves a saga twice.
--  * NOT NULL and defaults on the counters and timestamps, which the seed
--    left nullable.
CREATE TABLE annals_sagas (
    saga_id         uuid PRIMARY KEY,
    saga_type       text NOT NULL,
    correlation_id  text NOT NULL,
    state           jsonb NOT NULL,
    status          text NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'running', 'completed', 'failed', 'compensating')),
    current_step    integer NOT NULL DEFAULT 0 CHECK (current_step >= 0),
    completed_steps jsonb NOT NULL DEFAULT '[]'::jsonb
                    CHECK (jsonb_typeof(completed_steps) = 'array'),
    version         bigint NOT NULL DEFAULT 0 CHECK (version >= 0),
    deadline_at     timestamptz,
    started_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    -- set when the saga reaches a final status ('completed' or 'failed')
    completed_at    timestamptz,
    error_message   text,
    retry_count     integer NOT NULL DEFAULT 0 CHECK (retry_count >= 0),
    last_event_tx       bigint NOT NULL DEFAULT 0 CHECK (last_event_tx >= 0),
    last_event_position bigint NOT NULL DEFAULT 0 CHECK (last_event_position >= 0),
    CONSTRAINT annals_sagas_type_correlation_key UNIQUE (saga_type, correlation_id),
    CONSTRAINT annals_sagas_completed_at
        CHECK (completed_at IS NULL OR status IN ('completed', 'failed'))
);

-- Resuming after a restart: every unfinished saga, optionally of one type,
-- paged by saga_id. Partial, so the (ever growing) finished sagas are not in
-- it; a query with `WHERE status IN ('pending', 'running', 'compensating')`
-- (the same list) can use it.
CREATE INDEX annals_sagas_unfinished
    ON annals_sagas (saga_type, saga_id)
    WHERE status IN ('pending', 'running', 'compensating');

-- The timeout scanner, per saga type:
--   WHERE saga_type = $1 AND deadline_at IS NOT NULL AND deadline_at <= now()
--   ORDER BY deadline_at ... FOR UPDATE SKIP LOCKED
-- deadline_at is cleared when a saga finishes, compensates or enters a state
-- without a timeout, so this index only holds armed timeouts.
CREATE INDEX annals_sagas_deadline
    ON annals_sagas (saga_type, deadline_at)
    WHERE deadline_at IS NOT NULL;

-- Commands a saga step issues are written here in the same transaction as
-- the saga's new state (transactional outbox), then dispatched by a worker.
-- A crash between the state change and the dispatch therefore loses nothing,
-- and a dispatch that is retried carries the same idempotency_key, so the
-- receiving side can drop duplicates. idempotency_key is UNIQUE so that
-- re-running a step (after a lost optimistic-lock race, say) cannot queue
-- the same command twice: insert with ON CONFLICT (idempotency_key) DO NOTHING.
--
-- A row is pending (dispatched_at and failed_at both NULL), delivered
-- (dispatched_at set) or given up (failed_at set: its last attempt failed,
-- or its saga started compensating before it was ever attempted). A
-- saga's compensating rows are not claimed while one of its forward rows is
-- pending (in flight, or waiting for a retry): a compensation never
-- overtakes what it undoes. A worker
-- claims pending rows with a lease, in a short statement of its own, so no
-- transaction stays open (holding the log's horizon back) while the command
-- bus works:
--   UPDATE ... SET attempts = attempts + 1, next_attempt_at = now() + lease
--    WHERE id IN (SELECT id ... FOR UPDATE SKIP LOCKED)
-- A worker that dies mid-dispatch leaves the row to be claimed again when
-- the lease runs out (at-least-once delivery).
CREATE TABLE annals_saga_outbox (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- a saga's pending commands go when the saga row is deleted
    saga_id         uuid NOT NULL REFERENCES annals_sagas (saga_id) ON DELETE CASCADE,
    -- copied from the saga, so a worker for one saga type claims with one
    -- index range scan
    saga_type       text NOT NULL,
    idempotency_key text NOT NULL UNIQUE,
    command_type    text NOT NULL,
    command         jsonb NOT NULL,
    -- the saga step that issued it, and whether it undoes that step
    step            integer NOT NULL CHECK (step >= 0),
    compensation    boolean NOT NULL DEFAULT false,
    created_at      timestamptz NOT NULL DEFAULT now(),
    -- NULL until dispatched successfully
    dispatched_at   timestamptz,
    -- NULL unless given up
    failed_at       timestamptz,
    attempts        integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    last_error      text,
    -- retry backoff or claim lease: the worker leaves the row alone until then
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT annals_saga_outbox_one_end
        CHECK (dispatched_at IS NULL OR failed_at IS NULL)
);

-- The dispatcher's queue:
--   SELECT ... FROM annals_saga_outbox
--    WHERE saga_type = $1 AND dispatched_at IS NULL AND failed_at IS NULL
--      AND next_attempt_at <= now() AND <no pending forward row of its saga
--      when it is a compensation>
--    ORDER BY next_attempt_at, id LIMIT $n FOR UPDATE SKIP LOCKED
-- Partial, so delivered rows (the vast majority over time) cost nothing.
CREATE INDEX annals_saga_outbox_undispatched
    ON annals_saga_outbox (saga_type, next_attempt_at, id)
    WHERE dispatched_at IS NULL AND failed_at IS NULL;

-- Foreign keys are not indexed automatically in Postgres; without this,
-- deleting a saga would scan the whole outbox for its commands. It also
-- serves "the commands of this saga" (listing, and the worker's count of a
-- saga's outstanding commands while it compensates).
CREATE INDEX annals_saga_outbox_saga ON annals_saga_outbox (saga_id);
