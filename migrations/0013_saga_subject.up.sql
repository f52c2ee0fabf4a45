-- Whose personal data a saga holds (annals' `SagaData::subject`; NULL:
-- nobody's). Forgetting the subject finds its sagas by this column and
-- erases the personal values of their data and outbox commands.
ALTER TABLE annals_sagas ADD COLUMN subject text;
CREATE INDEX annals_sagas_subject_idx ON annals_sagas (subject) WHERE subject IS NOT NULL;
