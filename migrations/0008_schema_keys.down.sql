-- Reverses 0008_schema_keys.up.sql.
ALTER TABLE annals_events DROP COLUMN schema_key;
