-- Reverses 0002_knowledge_base_subject.up.sql, in reverse order. Rows keep
-- their documents but no longer say whose they are.
DROP INDEX annals_knowledge_base_subject;
ALTER TABLE annals_knowledge_base DROP COLUMN subject;
