-- A page of every tenant's log after a reader's checkpoint ($1 transaction
-- id as text, $2 position), in (transaction id, position) order, at most
-- $3 events, below the horizon (as read_log.sql), each with its tenant.
-- No index serves the order across tenants (one would cost every append):
-- the tenants are found by a loose index scan of the tenant-led index
-- (one probe per tenant), each tenant's next page is read on its
-- (tenant_id, transaction_id, position) index, and the pages are merged.
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
 CROSS JOIN LATERAL (
       SELECT * FROM annals_events x
        WHERE x.tenant_id = t.tenant_id
          AND (x.transaction_id, x.position) > ($1::text::xid8, $2)
          AND x.transaction_id < pg_snapshot_xmin(pg_current_snapshot())
        ORDER BY x.transaction_id, x.position
        LIMIT $3) e
 WHERE t.tenant_id IS NOT NULL
 ORDER BY e.transaction_id, e.position
 LIMIT $3
