-- The event at a global position, with every envelope column.
SELECT position, transaction_id::text::int8 AS tx, event_id, stream_id, stream_version,
       event_type, schema_version, payload, metadata, recorded_at
  FROM annals_events
 WHERE tenant_id = $2 AND position = $1
