-- The newest committed event's place in every tenant's log, visible to
-- readers or not: each tenant's newest, on its index, then the newest of
-- those (see read_log_every.sql).
WITH RECURSIVE tenants AS (
    (SELECT tenant_id FROM annals_events ORDER BY tenant_id LIMIT 1)
    UNION ALL
    SELECT (SELECT e.tenant_id FROM annals_events e
             WHERE e.tenant_id > t.tenant_id ORDER BY e.tenant_id LIMIT 1)
      FROM tenants t
     WHERE t.tenant_id IS NOT NULL
)
SELECT l.transaction_id::text::int8 AS tx, l.position
  FROM tenants t
 CROSS JOIN LATERAL (
       SELECT transaction_id, position FROM annals_events e
        WHERE e.tenant_id = t.tenant_id
        ORDER BY transaction_id DESC, position DESC
        LIMIT 1) l
 WHERE t.tenant_id IS NOT NULL
 ORDER BY l.transaction_id DESC, l.position DESC
 LIMIT 1
