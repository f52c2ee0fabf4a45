-- After a group commit lost its connection: the group's events that are in
-- the log ($1 their event ids). The group was one transaction, so either
-- every append of it that went in is here, or none is.
SELECT tenant_id, stream_id, position, transaction_id::text::int8 AS tx, stream_version, recorded_at
  FROM annals_events
 WHERE (tenant_id, event_id) IN (SELECT * FROM UNNEST($2::text[], $1::uuid[]))
