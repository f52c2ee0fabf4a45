-- Reverses 0004_projections.up.sql.
DROP TABLE annals_projection_checkpoints;
