-- The version of a stream's last event (NULL: no such stream).
SELECT max(stream_version) FROM annals_events WHERE tenant_id = $2 AND stream_id = $1
