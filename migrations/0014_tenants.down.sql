DROP POLICY annals_tenant ON annals_subject_keys;
ALTER TABLE annals_subject_keys NO FORCE ROW LEVEL SECURITY;
ALTER TABLE annals_subject_keys DISABLE ROW LEVEL SECURITY;
DROP POLICY annals_tenant ON annals_dead_letters;
ALTER TABLE annals_dead_letters NO FORCE ROW LEVEL SECURITY;
ALTER TABLE annals_dead_letters DISABLE ROW LEVEL SECURITY;
DROP POLICY annals_tenant ON annals_projection_checkpoints;
ALTER TABLE annals_projection_checkpoints NO FORCE ROW LEVEL SECURITY;
ALTER TABLE annals_projection_checkpoints DISABLE ROW LEVEL SECURITY;
DROP POLICY annals_tenant ON annals_snapshots;
ALTER TABLE annals_snapshots NO FORCE ROW LEVEL SECURITY;
ALTER TABLE annals_snapshots DISABLE ROW LEVEL SECURITY;
DROP POLICY annals_tenant ON annals_events;
ALTER TABLE annals_events NO FORCE ROW LEVEL SECURITY;
ALTER TABLE annals_events DISABLE ROW LEVEL SECURITY;

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
