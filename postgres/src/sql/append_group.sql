-- The appends of a group commit (see store/group.rs): several callers'
-- appends to different streams in one statement, its own transaction, so
-- they share one commit and one WAL flush. Each append stays atomic and
-- checked on its own, exactly as append_in_exact.sql / append_in_new_stream.sql
-- check one: its first event goes in at the version after the expected one
-- with ON CONFLICT DO NOTHING on (stream_id, stream_version), and only when
-- the expected version exists (no check for a new stream); its other events
-- follow the first event that went in, and no other writer can get past that
-- uncommitted first event, so they never collide. An append whose stream was
-- not where it expected returns no row (the caller reports the conflict);
-- the others go in all the same.
-- Appends, one element each: $1 the append's number, $2 its stream id
-- (distinct within a group with its tenant $11), $3 the expected version (NULL: a new stream).
-- Events, one element each: $4 the append's number, $5 the event's place in
-- its append (1-based), $6..$10 event ids, types, schema versions, payloads
-- and metadata.
WITH a AS (SELECT * FROM UNNEST($1::int4[], $11::text[], $2::text[], $3::int8[]) AS a(k, tenant_id, stream_id, v)),
     ok AS (SELECT a.k, a.tenant_id, a.stream_id, coalesce(a.v, 0) AS v FROM a
             WHERE a.v IS NULL
                OR EXISTS (SELECT 1 FROM annals_events x WHERE x.tenant_id = a.tenant_id AND x.stream_id = a.stream_id AND x.stream_version = a.v)),
     e AS (SELECT * FROM UNNEST($4::int4[], $5::int4[], $6::uuid[], $7::text[], $8::int4[], $9::text[], $10::text[])
           AS e(k, i, id, t, sv, p, m)),
     first AS (
         INSERT INTO annals_events (tenant_id, event_id, stream_id, stream_version, event_type, schema_version, payload, metadata)
         SELECT ok.tenant_id, e.id, ok.stream_id, ok.v + 1, e.t, e.sv, e.p::jsonb, e.m::jsonb
           FROM ok JOIN e ON e.k = ok.k AND e.i = 1
          ORDER BY ok.k
         ON CONFLICT ON CONSTRAINT annals_events_stream_version_key DO NOTHING
         RETURNING position, transaction_id, tenant_id, stream_id, stream_version, recorded_at
     ),
     rest AS (
         INSERT INTO annals_events (tenant_id, event_id, stream_id, stream_version, event_type, schema_version, payload, metadata)
         SELECT first.tenant_id, e.id, first.stream_id, first.stream_version - 1 + e.i, e.t, e.sv, e.p::jsonb, e.m::jsonb
           FROM first JOIN ok ON ok.tenant_id = first.tenant_id AND ok.stream_id = first.stream_id JOIN e ON e.k = ok.k AND e.i > 1
          ORDER BY ok.k, e.i
         RETURNING position, transaction_id, tenant_id, stream_id, stream_version, recorded_at
     )
SELECT tenant_id, stream_id, position, transaction_id::text::int8 AS tx, stream_version, recorded_at FROM first
UNION ALL
SELECT tenant_id, stream_id, position, transaction_id::text::int8 AS tx, stream_version, recorded_at FROM rest
