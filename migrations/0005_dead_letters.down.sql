-- Reverses 0005_dead_letters.up.sql, in reverse order.
DROP INDEX annals_dead_letters_pending_stream;
DROP INDEX annals_dead_letters_pending;
DROP TABLE annals_dead_letters;
