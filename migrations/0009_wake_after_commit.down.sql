-- Reverses 0009_wake_after_commit.up.sql: the statement trigger that
-- notified from inside every append, and the index on event_type.
CREATE INDEX annals_events_type ON annals_events (event_type);

CREATE FUNCTION annals_notify_events() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('annals_events', '');
    RETURN NULL;
END;
$$;

CREATE TRIGGER annals_events_notify
    AFTER INSERT ON annals_events
    FOR EACH STATEMENT
    EXECUTE FUNCTION annals_notify_events();
