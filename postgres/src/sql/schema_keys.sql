-- The schema keys of (type, version) pairs, computed with the expression
-- of the annals_events.schema_key column.
SELECT t, v, hashtextextended(t, v) FROM UNNEST($1::text[], $2::int4[]) AS k(t, v)
