-- Reverses 0003_snapshots.up.sql.
DROP TABLE annals_snapshots;
