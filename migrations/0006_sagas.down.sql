-- Reverses 0006_sagas.up.sql, in reverse order (the outbox references the
-- saga table, so it goes first).
DROP INDEX annals_saga_outbox_saga;
DROP INDEX annals_saga_outbox_undispatched;
DROP TABLE annals_saga_outbox;
DROP INDEX annals_sagas_deadline;
DROP INDEX annals_sagas_unfinished;
DROP TABLE annals_sagas;
