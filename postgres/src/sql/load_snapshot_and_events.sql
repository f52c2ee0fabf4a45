-- A snapshot and the events after it, in one statement, in the columns of
-- read_payloads.sql (stream_version, schema_key, payload) and two more that
-- only the snapshot row fills (fingerprint, codec_version; NULL in event
-- rows, which costs the server no send call). The snapshot row comes first
-- and is told apart by its negated version (events' versions are at least
-- 1, a CHECK constraint holds them to it; snapshots' versions too). Then
-- the events from the snapshot's own version on, in version order: the
-- event at its version proves that the stream reaches the snapshot (one
-- beyond the end of its stream is not trusted), and is skipped. With no
-- snapshot it is the plain stream read. The events come in index order (see read_stream.sql for the
-- LIMIT), so the outer ORDER BY merges the two parts instead of sorting
-- the stream.
-- $1 aggregate type, $2 stream id.
WITH s AS (
    SELECT version, state, fingerprint, codec_version FROM annals_snapshots
     WHERE tenant_id = $3 AND aggregate_type = $1 AND aggregate_id = $2)
SELECT -version AS stream_version, NULL::int8 AS schema_key, state AS payload,
       fingerprint, codec_version
  FROM s
UNION ALL
(SELECT stream_version, schema_key, payload, NULL, NULL
   FROM annals_events
  WHERE tenant_id = $3 AND stream_id = $2 AND stream_version >= coalesce((SELECT version FROM s), 0)
  ORDER BY stream_version
  LIMIT (SELECT NULL::int8))
ORDER BY stream_version
