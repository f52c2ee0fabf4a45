-- A new stream's events, as their own transaction: versions 1..n in one
-- INSERT. A lost race is the unique violation on (stream_id,
-- stream_version): the statement, its own transaction, writes nothing, and
-- the caller reports the conflict.
-- $1 stream id; $2..$6 arrays of event ids, types, schema versions,
-- payloads and metadata, in stream order.
INSERT INTO annals_events (tenant_id, event_id, stream_id, stream_version, event_type, schema_version, payload, metadata)
SELECT $7, e.id, $1, e.ord, e.t, e.sv, e.p::jsonb, e.m::jsonb
  FROM UNNEST($2::uuid[], $3::text[], $4::int4[], $5::text[], $6::text[])
       WITH ORDINALITY AS e(id, t, sv, p, m, ord)
 ORDER BY e.ord
RETURNING position, transaction_id::text::int8 AS tx, stream_version, recorded_at
