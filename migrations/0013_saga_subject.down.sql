DROP INDEX annals_sagas_subject_idx;
ALTER TABLE annals_sagas DROP COLUMN subject;
