-- The committed events of every tenant after a checkpoint ($1
-- transaction id as text, $2 position): how many, and the oldest one's
-- time, counted per tenant on its index (see read_log_every.sql).
WITH RECURSIVE tenants AS (
    (SELECT tenant_id FROM annals_events ORDER BY tenant_id LIMIT 1)
    UNION ALL
    SELECT (SELECT e.tenant_id FROM annals_events e
             WHERE e.tenant_id > t.tenant_id ORDER BY e.tenant_id LIMIT 1)
      FROM tenants t
     WHERE t.tenant_id IS NOT NULL
)
SELECT coalesce(sum(b.n), 0)::int8 AS n, min(b.oldest) AS oldest
  FROM tenants t
 CROSS JOIN LATERAL (
       SELECT count(*) AS n, min(recorded_at) AS oldest FROM annals_events x
        WHERE x.tenant_id = t.tenant_id
          AND (x.transaction_id, x.position) > ($1::text::xid8, $2)) b
 WHERE t.tenant_id IS NOT NULL
