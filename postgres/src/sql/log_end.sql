-- The newest committed event's place in the log, visible to readers or not.
SELECT transaction_id::text::int8 AS tx, position
  FROM annals_events
 WHERE tenant_id = $1
 ORDER BY transaction_id DESC, position DESC
 LIMIT 1
