-- read_payloads.sql with the type and schema version themselves, for a
-- read that met a schema key it cannot map (and learns it from this one).
-- $1 stream id, $2 first version, $3 how many (NULL: to the end).
SELECT stream_version, event_type, schema_version, payload, schema_key
  FROM annals_events
 WHERE tenant_id = $4 AND stream_id = $1 AND stream_version >= $2
 ORDER BY stream_version
 LIMIT (SELECT $3::int8)
