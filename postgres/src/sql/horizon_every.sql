-- horizon.sql for every tenant: the held events counted per tenant on its
-- index (see read_log_every.sql).
WITH RECURSIVE tenants AS (
    (SELECT tenant_id FROM annals_events ORDER BY tenant_id LIMIT 1)
    UNION ALL
    SELECT (SELECT e.tenant_id FROM annals_events e
             WHERE e.tenant_id > t.tenant_id ORDER BY e.tenant_id LIMIT 1)
      FROM tenants t
     WHERE t.tenant_id IS NOT NULL
)
SELECT pg_snapshot_xmin(pg_current_snapshot())::text::int8 AS xmin,
       LEAST(
         (SELECT min(xact_start) FROM pg_stat_activity
           WHERE backend_xid IS NOT NULL AND pid <> pg_backend_pid()),
         (SELECT min(prepared) FROM pg_prepared_xacts)) AS oldest,
       now() AS now,
       (SELECT coalesce(sum(h.n), 0)::int8
          FROM tenants t
         CROSS JOIN LATERAL (
               SELECT count(*) AS n FROM annals_events x
                WHERE x.tenant_id = t.tenant_id
                  AND x.transaction_id >= pg_snapshot_xmin(pg_current_snapshot())) h
         WHERE t.tenant_id IS NOT NULL) AS held
