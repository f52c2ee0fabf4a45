-- Tenants (issue 22): every event, snapshot, projection checkpoint, dead
-- letter, saga, outbox command and subject key belongs to a tenant, the
-- tenant leads every key, and row-level security keeps every query to the
-- tenant its transaction names.
--
-- Existing rows belong to the tenant 'default', the tenant of applications
-- that have one. annals names the tenant in every statement; the column
-- keeps 'default' as its default only so that rows written by hand (a
-- fixture, a repair) land in the single tenant, as they did before.
--
-- Row-level security: a role that is not a superuser and has no BYPASSRLS
-- sees and writes only the rows of the tenant in the setting
-- `annals.tenant`, set per transaction:
--     SELECT set_config('annals.tenant', 'clinic-7', true);  -- = SET LOCAL
-- Without the setting (NULL, or '' once a session has used SET LOCAL) no
-- row matches. annals' own connections set `annals.tenant` to '*' for the
-- whole session (every tenant): each of annals' statements names its
-- tenant itself, which its conformance suite checks. FORCE applies the
-- policies to the tables' owner too.

ALTER TABLE annals_events
    ADD COLUMN tenant_id text NOT NULL DEFAULT 'default'
    CONSTRAINT annals_events_tenant_id_check CHECK (tenant_id <> '');
ALTER TABLE annals_events
    DROP CONSTRAINT annals_events_stream_version_key,
    ADD CONSTRAINT annals_events_stream_version_key UNIQUE (tenant_id, stream_id, stream_version),
    DROP CONSTRAINT annals_events_event_id_key,
    ADD CONSTRAINT annals_events_event_id_key UNIQUE (tenant_id, event_id),
    DROP CONSTRAINT annals_events_pkey,
    ADD CONSTRAINT annals_events_pkey PRIMARY KEY (tenant_id, position);
DROP INDEX annals_events_global_order;
CREATE INDEX annals_events_global_order ON annals_events (tenant_id, transaction_id, position);

ALTER TABLE annals_snapshots
    ADD COLUMN tenant_id text NOT NULL DEFAULT 'default'
    CONSTRAINT annals_snapshots_tenant_id_check CHECK (tenant_id <> '');
ALTER TABLE annals_snapshots
    DROP CONSTRAINT annals_snapshots_pkey,
    ADD CONSTRAINT annals_snapshots_pkey PRIMARY KEY (tenant_id, aggregate_type, aggregate_id);

ALTER TABLE annals_projection_checkpoints
    ADD COLUMN tenant_id text NOT NULL DEFAULT 'default'
    CONSTRAINT annals_projection_checkpoints_tenant_id_check CHECK (tenant_id <> '');
ALTER TABLE annals_projection_checkpoints
    DROP CONSTRAINT annals_projection_checkpoints_pkey,
    ADD CONSTRAINT annals_projection_checkpoints_pkey PRIMARY KEY (tenant_id, projection_name);

ALTER TABLE annals_dead_letters
    ADD COLUMN tenant_id text NOT NULL DEFAULT 'default'
    CONSTRAINT annals_dead_letters_tenant_id_check CHECK (tenant_id <> '');
ALTER TABLE annals_dead_letters
    DROP CONSTRAINT annals_dead_letters_handler_event_key,
    ADD CONSTRAINT annals_dead_letters_handler_event_key UNIQUE (tenant_id, handler, event_id),
    DROP CONSTRAINT annals_dead_letters_pkey,
    ADD CONSTRAINT annals_dead_letters_pkey PRIMARY KEY (tenant_id, id);
DROP INDEX annals_dead_letters_pending;
CREATE INDEX annals_dead_letters_pending
    ON annals_dead_letters (tenant_id, handler, id)
    WHERE status = 'pending';
DROP INDEX annals_dead_letters_pending_stream;
CREATE INDEX annals_dead_letters_pending_stream
    ON annals_dead_letters (tenant_id, handler, stream_id)
    WHERE status = 'pending';

ALTER TABLE annals_subject_keys
    ADD COLUMN tenant_id text NOT NULL DEFAULT 'default'
    CONSTRAINT annals_subject_keys_tenant_id_check CHECK (tenant_id <> '');
ALTER TABLE annals_subject_keys
    DROP CONSTRAINT annals_subject_keys_pkey,
    ADD CONSTRAINT annals_subject_keys_pkey PRIMARY KEY (tenant_id, subject);

ALTER TABLE annals_sagas
    ADD COLUMN tenant_id text NOT NULL DEFAULT 'default'
    CONSTRAINT annals_sagas_tenant_id_check CHECK (tenant_id <> '');
ALTER TABLE annals_saga_outbox
    ADD COLUMN tenant_id text NOT NULL DEFAULT 'default'
    CONSTRAINT annals_saga_outbox_tenant_id_check CHECK (tenant_id <> '');
ALTER TABLE annals_saga_outbox
    DROP CONSTRAINT annals_saga_outbox_saga_id_fkey;
ALTER TABLE annals_sagas
    DROP CONSTRAINT annals_sagas_type_correlation_key,
    ADD CONSTRAINT annals_sagas_type_correlation_key UNIQUE (tenant_id, saga_type, correlation_id),
    DROP CONSTRAINT annals_sagas_pkey,
    ADD CONSTRAINT annals_sagas_pkey PRIMARY KEY (tenant_id, saga_id);
ALTER TABLE annals_saga_outbox
    DROP CONSTRAINT annals_saga_outbox_idempotency_key_key,
    ADD CONSTRAINT annals_saga_outbox_idempotency_key_key UNIQUE (tenant_id, idempotency_key),
    DROP CONSTRAINT annals_saga_outbox_pkey,
    ADD CONSTRAINT annals_saga_outbox_pkey PRIMARY KEY (tenant_id, id),
    ADD CONSTRAINT annals_saga_outbox_saga_id_fkey FOREIGN KEY (tenant_id, saga_id)
        REFERENCES annals_sagas (tenant_id, saga_id) ON DELETE CASCADE;
DROP INDEX annals_sagas_unfinished;
CREATE INDEX annals_sagas_unfinished
    ON annals_sagas (tenant_id, saga_type, saga_id)
    WHERE status IN ('pending', 'running', 'compensating');
DROP INDEX annals_sagas_deadline;
CREATE INDEX annals_sagas_deadline
    ON annals_sagas (tenant_id, saga_type, deadline_at)
    WHERE deadline_at IS NOT NULL;
DROP INDEX annals_sagas_subject_idx;
CREATE INDEX annals_sagas_subject_idx ON annals_sagas (tenant_id, subject) WHERE subject IS NOT NULL;
DROP INDEX annals_saga_outbox_undispatched;
CREATE INDEX annals_saga_outbox_undispatched
    ON annals_saga_outbox (tenant_id, saga_type, next_attempt_at, id)
    WHERE dispatched_at IS NULL AND failed_at IS NULL;
DROP INDEX annals_saga_outbox_saga;
CREATE INDEX annals_saga_outbox_saga ON annals_saga_outbox (tenant_id, saga_id);

-- The same policy on every tenant table.
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['annals_events', 'annals_snapshots', 'annals_projection_checkpoints', 'annals_dead_letters', 'annals_subject_keys', 'annals_sagas', 'annals_saga_outbox'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format(
            $policy$CREATE POLICY annals_tenant ON %I
                USING (tenant_id = current_setting('annals.tenant', true)
                       OR current_setting('annals.tenant', true) = '*')
                WITH CHECK (tenant_id = current_setting('annals.tenant', true)
                            OR current_setting('annals.tenant', true) = '*')$policy$,
            t);
    END LOOP;
END
$$;
