DROP POLICY annals_tenant ON annals_snapshots;
ALTER TABLE annals_snapshots NO FORCE ROW LEVEL SECURITY;
ALTER TABLE annals_snapshots DISABLE ROW LEVEL SECURITY;
DROP POLICY annals_tenant ON annals_events;
ALTER TABLE annals_events NO FORCE ROW LEVEL SECURITY;
ALTER TABLE annals_events DISABLE ROW LEVEL SECURITY;

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
