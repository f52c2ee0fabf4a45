-- The version of a stream's last event (NULL: no such stream).
SELECT max(stream_version) FROM annals_events WHERE stream_id = $1
