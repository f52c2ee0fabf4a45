-- Reverses 0001_knowledge_base.up.sql, in reverse order.
--
-- The per-model HNSW indexes that the application created at run time are
-- indexes of annals_knowledge_base and go with the table.
--
-- The `vector` extension stays installed on purpose: it is database-wide,
-- may have existed before (the up migration used IF NOT EXISTS), and other
-- objects may depend on it.
DROP INDEX annals_embedding_refresh_jobs_running;
DROP TABLE annals_embedding_refresh_jobs;
DROP INDEX annals_knowledge_base_parent;
DROP INDEX annals_knowledge_base_tags;
DROP INDEX annals_knowledge_base_tenant_language;
DROP INDEX annals_knowledge_base_source_type;
DROP TABLE annals_knowledge_base;
