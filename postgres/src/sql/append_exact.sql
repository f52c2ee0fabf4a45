-- Events after version $7, which must exist, as their own transaction: one
-- INSERT at $7 + ordinality. No row when the stream is not at $7 yet; a
-- later version already taken is the unique violation on (stream_id,
-- stream_version), which writes nothing; both are reported as the conflict.
-- $1 stream id; $2..$6 arrays of event ids, types, schema versions,
-- payloads and metadata, in stream order; $7 the expected version.
INSERT INTO annals_events (tenant_id, event_id, stream_id, stream_version, event_type, schema_version, payload, metadata)
SELECT $8, e.id, $1, $7 + e.ord, e.t, e.sv, e.p::jsonb, e.m::jsonb
  FROM UNNEST($2::uuid[], $3::text[], $4::int4[], $5::text[], $6::text[])
       WITH ORDINALITY AS e(id, t, sv, p, m, ord)
 WHERE EXISTS (SELECT 1 FROM annals_events WHERE tenant_id = $8 AND stream_id = $1 AND stream_version = $7)
 ORDER BY e.ord
RETURNING position, transaction_id::text::int8 AS tx, stream_version, recorded_at
