-- Records the schemas not yet stored, then reads back everything recorded
-- for these (type, version) keys, including rows a concurrent process
-- inserted first: the breaking-change guard compares the fingerprints.
-- $1..$5 arrays of event types, versions, fingerprints, schemas, Rust types.
WITH new AS (
    INSERT INTO annals_event_schemas (event_type, version, fingerprint, schema, rust_type)
    SELECT t, v, f, s::jsonb, r
      FROM UNNEST($1::text[], $2::int4[], $3::text[], $4::text[], $5::text[]) AS x(t, v, f, s, r)
    ON CONFLICT (event_type, version) DO NOTHING
    RETURNING event_type, version, fingerprint
)
SELECT e.event_type, e.version, e.fingerprint
  FROM annals_event_schemas e
  JOIN UNNEST($1::text[], $2::int4[]) AS k(t, v) ON e.event_type = k.t AND e.version = k.v
