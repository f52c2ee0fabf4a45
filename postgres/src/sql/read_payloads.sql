-- What rebuilding state needs of a stream: version, schema key (the event
-- type and schema version in one bigint, see migration 0008 and keys.rs),
-- payload. Every column costs the server a send call per row, a text
-- column the most: on a 10k-event fold the type and schema-version columns
-- cost 10-12%, the key 2-3% (benches/postgres.rs, "read 10k typed").
-- No global position either: a fold needs it only to name a failing event,
-- which locate.sql looks up.
-- $1 stream id, $2 first version, $3 how many (NULL: to the end); the
-- LIMIT keeps the index plan (see read_stream.sql).
SELECT stream_version, schema_key, payload
  FROM annals_events
 WHERE tenant_id = $4 AND stream_id = $1 AND stream_version >= $2
 ORDER BY stream_version
 LIMIT (SELECT $3::int8)
