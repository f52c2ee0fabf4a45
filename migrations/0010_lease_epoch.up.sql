-- Fencing of projection owners. Ownership is still a session-level advisory
-- lock (0004_projections); this column numbers its holders. A runner that
-- takes the lock increments lease_epoch, and every checkpoint move compares
-- it as well as the position:
--   UPDATE ... WHERE projection_name = $1 AND (transaction_id, position) = ...
--                AND lease_epoch = $epoch
-- So an owner whose lock connection died, and who has not noticed yet, can
-- commit no batch once the next owner has taken the lock: its checkpoint
-- move finds another epoch, and the batch is rolled back. At most the batch
-- it had in flight overlaps with the new owner.
ALTER TABLE annals_projection_checkpoints
    ADD COLUMN lease_epoch bigint NOT NULL DEFAULT 0;
