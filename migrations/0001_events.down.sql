-- Reverses 0001_events.up.sql, in reverse order. Plain DROP (no IF EXISTS,
-- no CASCADE): if something outside annals depends on these objects (a view,
-- a foreign key), the down migration fails instead of silently dropping it.
-- The identity sequence and the constraints' indexes go with their table.
DROP TRIGGER annals_events_notify ON annals_events;
DROP FUNCTION annals_notify_events();
DROP INDEX annals_events_type;
DROP INDEX annals_events_global_order;
DROP TABLE annals_events;
