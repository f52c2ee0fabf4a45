-- Events after the stream's last version, whatever it is, in a transaction that may
-- do more (a caller's, or an `Any` append that retries a lost race): a
-- conflict must insert nothing and leave the transaction usable, so the
-- first event is inserted with ON CONFLICT DO NOTHING on the unique key
-- (stream_id, stream_version). No row returned: the stream was not where
-- the append expected it. The other events follow the first: holding
-- version base + 1, uncommitted, no other writer can append after it, so
-- they never collide.
-- $1 stream id; $2..$6 arrays of event ids, types, schema versions,
-- payloads and metadata, in stream order.
WITH base AS (SELECT coalesce(max(stream_version), 0) AS v FROM annals_events WHERE tenant_id = $7 AND stream_id = $1),
     e AS (SELECT * FROM UNNEST($2::uuid[], $3::text[], $4::int4[], $5::text[], $6::text[])
           WITH ORDINALITY AS e(id, t, sv, p, m, ord)),
     first AS (
         INSERT INTO annals_events (tenant_id, event_id, stream_id, stream_version, event_type, schema_version, payload, metadata)
         SELECT $7, e.id, $1, base.v + 1, e.t, e.sv, e.p::jsonb, e.m::jsonb FROM base, e WHERE e.ord = 1
         ON CONFLICT ON CONSTRAINT annals_events_stream_version_key DO NOTHING
         RETURNING position, transaction_id, stream_version, recorded_at
     ),
     rest AS (
         INSERT INTO annals_events (tenant_id, event_id, stream_id, stream_version, event_type, schema_version, payload, metadata)
         SELECT $7, e.id, $1, first.stream_version - 1 + e.ord, e.t, e.sv, e.p::jsonb, e.m::jsonb
           FROM first, e WHERE e.ord > 1 ORDER BY e.ord
         RETURNING position, transaction_id, stream_version, recorded_at
     )
SELECT position, transaction_id::text::int8 AS tx, stream_version, recorded_at FROM first
UNION ALL
SELECT position, transaction_id::text::int8 AS tx, stream_version, recorded_at FROM rest
ORDER BY stream_version
