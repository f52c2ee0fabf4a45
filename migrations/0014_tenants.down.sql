DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['annals_saga_outbox', 'annals_sagas', 'annals_subject_keys', 'annals_dead_letters', 'annals_projection_checkpoints', 'annals_snapshots', 'annals_events'] LOOP
        EXECUTE format('DROP POLICY annals_tenant ON %I', t);
        EXECUTE format('ALTER TABLE %I NO FORCE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I DISABLE ROW LEVEL SECURITY', t);
    END LOOP;
END
$$;
-- fails while two tenants have a saga of the same type and correlation
-- id, or a command of the same idempotency key
DROP INDEX annals_saga_outbox_saga;
CREATE INDEX annals_saga_outbox_saga ON annals_saga_outbox (saga_id);
DROP INDEX annals_saga_outbox_undispatched;
CREATE INDEX annals_saga_outbox_undispatched
    ON annals_saga_outbox (saga_type, next_attempt_at, id)
    WHERE dispatched_at IS NULL AND failed_at IS NULL;
DROP INDEX annals_sagas_subject_idx;
CREATE INDEX annals_sagas_subject_idx ON annals_sagas (subject) WHERE subject IS NOT NULL;
DROP INDEX annals_sagas_deadline;
CREATE INDEX annals_sagas_deadline
    ON annals_sagas (saga_type, deadline_at)
    WHERE deadline_at IS NOT NULL;
DROP INDEX annals_sagas_unfinished;
CREATE INDEX annals_sagas_unfinished
    ON annals_sagas (saga_type, saga_id)
    WHERE status IN ('pending', 'running', 'compensating');
ALTER TABLE annals_saga_outbox
    DROP CONSTRAINT annals_saga_outbox_saga_id_fkey,
    DROP CONSTRAINT annals_saga_outbox_pkey,
    ADD CONSTRAINT annals_saga_outbox_pkey PRIMARY KEY (id),
    DROP CONSTRAINT annals_saga_outbox_idempotency_key_key,
    ADD CONSTRAINT annals_saga_outbox_idempotency_key_key UNIQUE (idempotency_key);
ALTER TABLE annals_sagas
    DROP CONSTRAINT annals_sagas_pkey,
    ADD CONSTRAINT annals_sagas_pkey PRIMARY KEY (saga_id),
    DROP CONSTRAINT annals_sagas_type_correlation_key,
    ADD CONSTRAINT annals_sagas_type_correlation_key UNIQUE (saga_type, correlation_id);
ALTER TABLE annals_saga_outbox
    ADD CONSTRAINT annals_saga_outbox_saga_id_fkey FOREIGN KEY (saga_id)
        REFERENCES annals_sagas (saga_id) ON DELETE CASCADE;
ALTER TABLE annals_saga_outbox DROP COLUMN tenant_id;
ALTER TABLE annals_sagas DROP COLUMN tenant_id;

-- fails while two tenants have a subject of the same id
ALTER TABLE annals_subject_keys
    DROP CONSTRAINT annals_subject_keys_pkey,
    ADD CONSTRAINT annals_subject_keys_pkey PRIMARY KEY (subject);
ALTER TABLE annals_subject_keys DROP COLUMN tenant_id;

-- fails while two tenants have a projection of the same name, or a dead
-- letter of the same handler and event
DROP INDEX annals_dead_letters_pending_stream;
CREATE INDEX annals_dead_letters_pending_stream
    ON annals_dead_letters (handler, stream_id)
    WHERE status = 'pending';
DROP INDEX annals_dead_letters_pending;
CREATE INDEX annals_dead_letters_pending
    ON annals_dead_letters (handler, id)
    WHERE status = 'pending';
ALTER TABLE annals_dead_letters
    DROP CONSTRAINT annals_dead_letters_pkey,
    ADD CONSTRAINT annals_dead_letters_pkey PRIMARY KEY (id),
    DROP CONSTRAINT annals_dead_letters_handler_event_key,
    ADD CONSTRAINT annals_dead_letters_handler_event_key UNIQUE (handler, event_id);
ALTER TABLE annals_dead_letters DROP COLUMN tenant_id;
ALTER TABLE annals_projection_checkpoints
    DROP CONSTRAINT annals_projection_checkpoints_pkey,
    ADD CONSTRAINT annals_projection_checkpoints_pkey PRIMARY KEY (projection_name);
ALTER TABLE annals_projection_checkpoints DROP COLUMN tenant_id;

-- fails while two tenants have a stream (or snapshot, or event id) of the same name
ALTER TABLE annals_snapshots
    DROP CONSTRAINT annals_snapshots_pkey,
    ADD CONSTRAINT annals_snapshots_pkey PRIMARY KEY (aggregate_type, aggregate_id);
ALTER TABLE annals_snapshots DROP COLUMN tenant_id;

DROP INDEX annals_events_global_order;
ALTER TABLE annals_events
    DROP CONSTRAINT annals_events_pkey,
    ADD CONSTRAINT annals_events_pkey PRIMARY KEY (position),
    DROP CONSTRAINT annals_events_event_id_key,
    ADD CONSTRAINT annals_events_event_id_key UNIQUE (event_id),
    DROP CONSTRAINT annals_events_stream_version_key,
    ADD CONSTRAINT annals_events_stream_version_key UNIQUE (stream_id, stream_version);
ALTER TABLE annals_events DROP COLUMN tenant_id;
CREATE INDEX annals_events_global_order ON annals_events (transaction_id, position);
