-- The event at a global position ($1), whichever tenant's: one probe of
-- the (tenant_id, position) key per tenant (see read_log_every.sql).
WITH RECURSIVE tenants AS (
    (SELECT tenant_id FROM annals_events ORDER BY tenant_id LIMIT 1)
    UNION ALL
    SELECT (SELECT e.tenant_id FROM annals_events e
             WHERE e.tenant_id > t.tenant_id ORDER BY e.tenant_id LIMIT 1)
      FROM tenants t
     WHERE t.tenant_id IS NOT NULL
)
SELECT e.position, e.transaction_id::text::int8 AS tx, e.event_id, e.stream_id, e.stream_version,
       e.event_type, e.schema_version, e.payload, e.metadata, e.recorded_at, e.tenant_id
  FROM tenants t
  JOIN annals_events e ON e.tenant_id = t.tenant_id AND e.position = $1
