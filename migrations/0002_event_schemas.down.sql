-- Reverses 0002_event_schemas.up.sql.
DROP TABLE annals_event_schemas;
