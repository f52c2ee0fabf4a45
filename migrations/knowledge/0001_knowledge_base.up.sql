-- Vector search (RAG): the knowledge base and the embedding refresh jobs.
--
-- These migrations are the knowledge base's own, applied by
-- annals_postgres::knowledge::migrate() and recorded in their own table
-- (annals_knowledge_migrations); annals' event-sourcing migrations never
-- touch pgvector.
--
-- pgvector. This is the only place annals runs CREATE EXTENSION. IF NOT
-- EXISTS because the extension is database-wide and may already be
-- installed (by a DBA, or for another application). The down migration
-- deliberately leaves it installed: other objects may use the `vector`
-- type, and dropping it is not annals' call. pgvector's control file does
-- not mark it trusted, so creating it needs a superuser: where the
-- migrating role is not one, have a superuser run
-- `CREATE EXTENSION vector` in the database beforehand, and this statement
-- is then a no-op.
CREATE EXTENSION IF NOT EXISTS vector;

-- One row per chunk of content. Columns follow the seed's knowledge_base,
-- with these changes:
--  * embedding is `vector` WITHOUT a dimension. Switching the embedding
--    model (and so, often, the dimension) must not need a schema migration;
--    rows of the old and new model coexist while the refresh job runs.
--  * embedding_model names the model that produced `embedding`; it is what
--    the refresh job compares with the configured model, and what every
--    search filters on (distances between vectors of different models are
--    meaningless). embedded_at records when.
--  * text instead of varchar(n), NOT NULL with defaults where the seed left
--    columns nullable, and no default language (the seed's 'ro' was the
--    clinic's, not a framework's).
--  * tenant_id instead of the seed's clinic_id: a tenant is whatever the
--    application isolates (a clinic, a customer, ...); NULL is shared.
--
-- Why no HNSW index here: pgvector can only build an index on a column whose
-- dimension is known, and this one has none. The application creates one
-- partial *expression* index per (model, dimension) at run time, when it
-- first sees a model, e.g. for a 384-dimension model:
--
--   CREATE INDEX IF NOT EXISTS annals_kb_hnsw_<hash of model name>
--       ON annals_knowledge_base
--    USING hnsw ((embedding::vector(384)) vector_cosine_ops)
--    WHERE embedding_model = '<model>';
--
-- and searches with the same expression and predicate, so the planner can
-- match the index:
--
--   SELECT ... FROM annals_knowledge_base
--    WHERE embedding_model = '<model>' AND is_active
--    ORDER BY embedding::vector(384) <=> $1::vector(384)
--    LIMIT $k;
--
-- Both the dimension and the model name are literals in the query text, the
-- query vector is a bind parameter. The ORDER BY must repeat the index's
-- cast (plain `embedding <=> $1` cannot use it), and the model must be a
-- literal equal to the partial index's predicate: with `embedding_model =
-- $2`, a generic prepared plan cannot prove the predicate and falls back to
-- scan + sort (verified on PostgreSQL 15 + pgvector 0.8.0; custom plans,
-- which PostgreSQL usually keeps choosing here, do use the index, but
-- plan_cache_mode = force_generic_plan would silently lose it). Since the
-- dimension has to be spliced into the text anyway, splice the model name
-- too, as a properly quoted literal.
--
-- Extra filters (is_active, tenant_id, tags, ...) are applied to the rows
-- the index scan returns, and an HNSW scan returns at most hnsw.ef_search
-- (default 40) candidates: with selective filters, raise ef_search or, on
-- pgvector >= 0.8, SET hnsw.iterative_scan = strict_order (what
-- PgKnowledgeBase does) so the LIMIT is still filled, in distance order.
--
-- Useful side effect: once a model's index exists, a row of that model whose
-- embedding has another dimension fails to insert ("expected 384 dimensions,
-- not 3"), because the index expression's cast rejects it. (Conversely, the
-- index build fails if such rows already exist.)
--
-- The run-time indexes belong to this table and are dropped with it, so the
-- down migration needs no list of them. They are best built with CREATE
-- INDEX CONCURRENTLY, which cannot run inside a transaction such as this
-- migration's: one more reason to leave them to the application.
CREATE TABLE annals_knowledge_base (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    source_type     text NOT NULL,
    title           text NOT NULL,
    content         text NOT NULL,
    -- hash of the content (e.g. SHA-256 hex): the same text is stored once
    content_hash    text NOT NULL,
    chunk_index     integer NOT NULL DEFAULT 0 CHECK (chunk_index >= 0),
    chunk_total     integer NOT NULL DEFAULT 1 CHECK (chunk_total >= 1),
    -- the document (or first chunk) this chunk belongs to; its chunks go
    -- with it when it is deleted (soft deletion is is_active = false)
    parent_id       uuid REFERENCES annals_knowledge_base (id) ON DELETE CASCADE,
    embedding       vector,
    embedding_model text,
    embedded_at     timestamptz,
    tenant_id       text,
    language        text,
    tags            text[] NOT NULL DEFAULT '{}',
    metadata        jsonb NOT NULL DEFAULT '{}'::jsonb
                    CHECK (jsonb_typeof(metadata) = 'object'),
    version         integer NOT NULL DEFAULT 1 CHECK (version >= 1),
    is_active       boolean NOT NULL DEFAULT true,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT annals_knowledge_base_content_hash_key UNIQUE (content_hash),
    CONSTRAINT annals_knowledge_base_chunk_in_range CHECK (chunk_index < chunk_total),
    CONSTRAINT annals_knowledge_base_not_own_parent CHECK (parent_id <> id),
    -- an embedding always says which model made it and when; a row is
    -- either not embedded yet (all three NULL) or fully embedded
    CONSTRAINT annals_knowledge_base_embedding_complete CHECK (
        (embedding IS NULL) = (embedding_model IS NULL)
        AND (embedding IS NULL) = (embedded_at IS NULL)
    )
);

-- Filtered search, as in the seed. Partial on is_active: searches only ever
-- look at active rows.
CREATE INDEX annals_knowledge_base_source_type
    ON annals_knowledge_base (source_type)
    WHERE is_active;
CREATE INDEX annals_knowledge_base_tenant_language
    ON annals_knowledge_base (tenant_id, language)
    WHERE is_active;
-- tags @> ARRAY['x'] / tags && ARRAY[...]
CREATE INDEX annals_knowledge_base_tags
    ON annals_knowledge_base USING gin (tags);
-- The chunks of a document in order; also indexes the self-referencing
-- foreign key, which deleting a parent row would otherwise check by a scan.
CREATE INDEX annals_knowledge_base_parent
    ON annals_knowledge_base (parent_id, chunk_index)
    WHERE parent_id IS NOT NULL;

-- Resumable re-embedding after a model change. The job walks the knowledge
-- base in primary-key order in batches:
--   WHERE id > $last_processed_id
--     AND embedding_model IS DISTINCT FROM $target_model
--   ORDER BY id LIMIT $batch
-- and after each batch stores its cursor and progress here, in the same
-- transaction as the batch's updates, so a crash resumes after the last
-- committed batch. Rows added while the job runs are embedded with the new
-- model on insert, so missing those behind the cursor loses nothing.
CREATE TABLE annals_embedding_refresh_jobs (
    job_id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    target_model      text NOT NULL,
    status            text NOT NULL DEFAULT 'running'
                      CHECK (status IN ('running', 'completed', 'failed', 'cancelled')),
    -- rows to re-embed, counted when the job started; `done` may end up
    -- different (rows changed meanwhile), so there is no done <= total check
    total             bigint NOT NULL DEFAULT 0 CHECK (total >= 0),
    done              bigint NOT NULL DEFAULT 0 CHECK (done >= 0),
    -- the cursor: id of the last row processed; NULL = not started
    last_processed_id uuid,
    error             text,
    started_at        timestamptz NOT NULL DEFAULT now(),
    -- progress heartbeat: a 'running' job whose updated_at is old has lost
    -- its worker and may be resumed by another
    updated_at        timestamptz NOT NULL DEFAULT now(),
    finished_at       timestamptz,
    CONSTRAINT annals_embedding_refresh_jobs_finished_at
        CHECK ((status = 'running') = (finished_at IS NULL))
);

-- At most one running job per target model; also the lookup "is there a job
-- to resume for this model?" is one probe of this index.
CREATE UNIQUE INDEX annals_embedding_refresh_jobs_running
    ON annals_embedding_refresh_jobs (target_model)
    WHERE status = 'running';
