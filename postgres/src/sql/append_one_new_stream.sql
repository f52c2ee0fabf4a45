-- The first event of a new stream, as its own transaction: version 1 by a
-- plain INSERT (the unique key (stream_id, stream_version) is the check; a
-- lost race is the unique violation, reported as the version conflict).
-- $1 stream id, $2 event id, $3 type, $4 schema version, $5 payload, $6 metadata.
INSERT INTO annals_events (tenant_id, event_id, stream_id, stream_version, event_type, schema_version, payload, metadata)
VALUES ($7, $2, $1, 1, $3, $4, $5::jsonb, $6::jsonb)
RETURNING position, transaction_id::text::int8 AS tx, stream_version, recorded_at
