-- How far the snapshot horizon holds log readers back: the horizon, when
-- the oldest open transaction (or prepared one) started, the server's
-- clock, and the committed events readers cannot see yet. Seeing other
-- sessions' start times needs the pg_read_all_stats role (or superuser).
SELECT pg_snapshot_xmin(pg_current_snapshot())::text::int8 AS xmin,
       LEAST(
         (SELECT min(xact_start) FROM pg_stat_activity
           WHERE backend_xid IS NOT NULL AND pid <> pg_backend_pid()),
         (SELECT min(prepared) FROM pg_prepared_xacts)) AS oldest,
       now() AS now,
       (SELECT count(*) FROM annals_events
         WHERE tenant_id = $1 AND transaction_id >= pg_snapshot_xmin(pg_current_snapshot())) AS held
