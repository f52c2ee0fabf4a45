-- A stream's events in a range of versions, with every envelope column.
-- $1 stream id, $2 first version, $3 how many (NULL: to the end).
--
-- The LIMIT keeps every stream read on the (stream_id, stream_version)
-- index: its value is a sub-select the planner cannot see through, so it
-- plans for a fraction of the rows and takes the ordered index scan, which
-- returns rows as it goes. Without it Postgres may plan a bitmap scan and a
-- sort of the whole stream (in a custom plan when the version condition is
-- not a constant, and in the generic plan a prepared statement switches to
-- after five executions when a few streams are big), which spills to disk
-- past work_mem: measured on a 100k-event stream, 79-90 ms instead of
-- 25-37 ms. The test `reads_keep_their_index_plans` pins the plans of
-- every stream read.
SELECT position, transaction_id::text::int8 AS tx, event_id, stream_id, stream_version,
       event_type, schema_version, payload, metadata, recorded_at
  FROM annals_events
 WHERE tenant_id = $4 AND stream_id = $1 AND stream_version >= $2
 ORDER BY stream_version
 LIMIT (SELECT $3::int8)
