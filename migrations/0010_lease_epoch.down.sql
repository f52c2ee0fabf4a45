ALTER TABLE annals_projection_checkpoints DROP COLUMN lease_epoch;
