-- One event after version $7, which must exist, as its own transaction.
-- No row is inserted when the stream is not at $7 yet (the caller reads
-- the stream's version for the conflict); a later version already taken
-- is the unique violation on (stream_id, stream_version), also reported as
-- the conflict.
-- $1 stream id, $2 event id, $3 type, $4 schema version, $5 payload,
-- $6 metadata, $7 the expected version.
INSERT INTO annals_events (tenant_id, event_id, stream_id, stream_version, event_type, schema_version, payload, metadata)
SELECT $8, $2, $1, $7 + 1, $3, $4, $5::jsonb, $6::jsonb
 WHERE EXISTS (SELECT 1 FROM annals_events WHERE tenant_id = $8 AND stream_id = $1 AND stream_version = $7)
RETURNING position, transaction_id::text::int8 AS tx, stream_version, recorded_at
