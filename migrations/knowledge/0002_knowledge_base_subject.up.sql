-- Whose personal data a row's document is (DocumentMeta::subject): a
-- subject id of annals::personal, or NULL for knowledge that is nobody's (a
-- FAQ, a price list). Every row of a document carries its document's
-- subject, as it carries its tenant.
--
-- Forgetting a subject deletes its rows:
--
--   SELECT ... FROM annals_knowledge_base WHERE subject = $1 FOR UPDATE;
--   (the rows' texts leave the embedding caches)
--   DELETE FROM annals_knowledge_base WHERE id = $1;   -- per row
--
-- Nullable, without a default: adding the column rewrites nothing, and
-- the rows already stored are nobody's, as the documents that wrote them
-- (document.added version 1 had no subject).
ALTER TABLE annals_knowledge_base ADD COLUMN subject text;

-- The erasure's lookup. Partial: most rows (shared knowledge) have no
-- subject, and searches never filter on it. Built inside the migration's
-- transaction (not CONCURRENTLY), so it blocks writes to the table while
-- it is built: on a large knowledge base that is the length of one scan.
CREATE INDEX annals_knowledge_base_subject
    ON annals_knowledge_base (subject)
    WHERE subject IS NOT NULL;
