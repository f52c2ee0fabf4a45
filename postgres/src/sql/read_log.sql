-- A page of the global log after a reader's checkpoint ($1 transaction id
-- as text, $2 position), in (transaction id, position) order, at most $3
-- events. Only below the horizon: every transaction there has finished,
-- so a reader resuming after its checkpoint can never skip a late commit.
SELECT position, transaction_id::text::int8 AS tx, event_id, stream_id, stream_version,
       event_type, schema_version, payload, metadata, recorded_at
  FROM annals_events
 WHERE tenant_id = $4 AND (transaction_id, position) > ($1::text::xid8, $2)
   AND transaction_id < pg_snapshot_xmin(pg_current_snapshot())
 ORDER BY transaction_id, position
 LIMIT $3
