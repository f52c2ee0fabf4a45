-- The global position of a stream's event, to name it in an error from a
-- fold (folds do not fetch positions).
SELECT position FROM annals_events WHERE tenant_id = $3 AND stream_id = $1 AND stream_version = $2
