//! The knowledge base on Postgres with pgvector: its own migrations
//! ([`migrate`], the only place annals installs the `vector` extension),
//! per-model HNSW indexes, filtered top-k search, the ingest writer, the
//! refresh job's storage and the knowledge base projection. Behind the
//! `knowledge` feature.
//!
//! Each row keeps its document's subject (`subject`, nullable, indexed
//! where set; migration `0002_knowledge_base_subject`).
//! [`PgKnowledgeBase::forget_subject`](annals_core::knowledge::KnowledgeBase::forget_subject)
//! and the projection, on `subject.forgotten`, lock the subject's rows,
//! remove their texts from the embedding caches and delete them, in one
//! transaction (see `annals::knowledge`, "Forgetting a subject").
//!
//! ```no_run
//! use annals::knowledge::{Embedder, HashingEmbedder, Ingestor, KnowledgeBase, Scope, SearchQuery};
//! use annals::postgres::knowledge::{self, PgKnowledgeBase};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let pool = annals::postgres::connect("postgres://app@localhost/app").await?;
//! annals::postgres::migrate(&pool).await?; // the event-sourcing tables
//! knowledge::migrate(&pool).await?; // pgvector and the knowledge base's tables
//! let kb = PgKnowledgeBase::new(pool);
//! let ingestor = Ingestor::new(HashingEmbedder::new(384));
//! kb.ensure_index(ingestor.embedder().model(), 384).await?;
//! let hits = kb
//!     .search_text(ingestor.embedder(), "opening hours", &SearchQuery::new(Scope::Tenant("acme".into()), 5))
//!     .await?;
//! for hit in hits {
//!     println!("{:.2} {}", hit.similarity, hit.entry.document.title);
//! }
//! # Ok(()) }
//! ```

use std::collections::HashSet;
use std::future::Future;
use std::sync::{Arc, Mutex};

use annals_core::knowledge::{
    validate_model_name, BatchCommit, ChunkRow, DocumentEvent, DocumentMeta, Embedder,
    EmbeddingUpdate, ErasureReport, IngestReport, Ingestor, KnowledgeBase, KnowledgeEntry,
    KnowledgeError, KnowledgeEvent, KnowledgeWriter, RefreshJobState, RowOp, Scope, SearchHit,
    SearchQuery, StaleRow, StoredEmbedding,
};
use annals_core::{Envelope, Error, HandlerError, Projection, TenantId};
use chrono::{DateTime, Utc};
use pgvector::Vector;
use sha2::{Digest, Sha256};
use sqlx::migrate::Migrator;
use sqlx::postgres::PgRow;
use sqlx::types::Json;
use sqlx::{AssertSqlSafe, PgConnection, PgPool, Row};
use uuid::Uuid;

use crate::error::is_refused_value;
use crate::migrate::Direction;

/// The table in which the knowledge base records its applied migrations,
/// apart from the event-sourcing ones
/// ([`MIGRATIONS_TABLE`](crate::MIGRATIONS_TABLE)).
pub const MIGRATIONS_TABLE: &str = "annals_knowledge_migrations";

fn migrator() -> Migrator {
    let mut m = sqlx::migrate!("./migrations/knowledge");
    m.dangerous_set_table_name(MIGRATIONS_TABLE);
    m
}

/// Applies every pending migration of the knowledge base: installs the
/// `vector` extension (pgvector) unless it is there, then creates
/// `annals_knowledge_base` and `annals_embedding_refresh_jobs`. Idempotent;
/// safe when several processes call it at once (the migrator holds an
/// advisory lock). Independent of [`crate::migrate`], which never touches
/// pgvector.
///
/// pgvector must be installed on the server, and creating the extension
/// needs a superuser (pgvector is not a trusted extension): where the
/// application's role is not one, have a superuser run
/// `CREATE EXTENSION vector` in the database first; this then finds it
/// installed.
pub async fn migrate(pool: &PgPool) -> Result<(), Error> {
    crate::migrate::run(
        pool,
        &migrator(),
        Direction::Up,
        "applying the knowledge base migrations (they need pgvector on the server, and a superuser to create the `vector` extension unless it exists)",
    )
    .await
}

/// Reverts every knowledge base migration (drops its tables; the `vector`
/// extension stays). Data is lost: meant for tests and for removing the
/// knowledge base from a database.
pub async fn migrate_down(pool: &PgPool) -> Result<(), Error> {
    crate::migrate::run(
        pool,
        &migrator(),
        Direction::Down,
        "reverting the knowledge base migrations",
    )
    .await
}

/// HNSW's default `ef_search`: a search for more than this many rows, or
/// with filters, raises it for its own transaction.
const DEFAULT_EF_SEARCH: usize = 40;

/// The knowledge base on Postgres (`annals_knowledge_base`, pgvector).
///
/// Embeddings of every model share the table's dimensionless `vector`
/// column; each (model, dimensions) gets its own partial HNSW index on
/// `embedding::vector(D)` (cosine), created when the model is first
/// written (or ahead of time with [`ensure_index`](Self::ensure_index)).
/// Searches repeat the index's expression and predicate with the model and
/// dimensions spliced in as literals, so the planner can use it (see
/// `migrations/knowledge/0001_knowledge_base.up.sql`).
///
/// A search with filters (a tenant scope, language, source types, tags),
/// for more than 40 rows, or with [`ef_search`](Self::ef_search) set runs
/// in a short read-only transaction that sets `hnsw.ef_search` (at least
/// `k`) and, with filters on pgvector 0.8 or later, `hnsw.iterative_scan =
/// strict_order`, so rows the filters drop do not leave the result short.
/// Otherwise (`Scope::All`, no filters, `k <= 40`) a search is a single
/// statement.
///
/// Cloning is cheap (the pool and caches are shared).
#[derive(Debug, Clone)]
pub struct PgKnowledgeBase {
    pool: PgPool,
    /// (model, dimensions) whose index is known to exist.
    indexes: Arc<Mutex<HashSet<(String, usize)>>>,
    ef_search: Option<usize>,
    /// Whether the server's pgvector has iterative index scans (0.8+);
    /// found out on first use.
    iterative: Arc<tokio::sync::OnceCell<bool>>,
}

impl PgKnowledgeBase {
    /// A knowledge base on `pool` (migrated with [`migrate`]).
    pub fn new(pool: PgPool) -> Self {
        PgKnowledgeBase {
            pool,
            indexes: Arc::default(),
            ef_search: None,
            iterative: Arc::default(),
        }
    }

    /// Sets `hnsw.ef_search` for every search (at least `k` in any case;
    /// unset, the server's setting, 40 by default, serves searches of up
    /// to 40 rows). Higher finds more of the true nearest rows, slower;
    /// set, every search runs in its own short transaction.
    pub fn ef_search(mut self, ef_search: usize) -> Self {
        self.ef_search = Some(ef_search.max(1));
        self
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The name of the HNSW index of (`model`, `dimensions`):
    /// `annals_kb_hnsw_` and 16 hex digits of a SHA-256 of both.
    pub fn index_name(model: &str, dimensions: usize) -> String {
        let mut h = Sha256::new();
        h.update(model.as_bytes());
        h.update([0]);
        h.update(dimensions.to_string().as_bytes());
        let digest = h.finalize();
        let mut name = String::from("annals_kb_hnsw_");
        for b in &digest[..8] {
            name.push_str(&format!("{b:02x}"));
        }
        name
    }

    /// Creates the HNSW index of (`model`, `dimensions`) unless it exists,
    /// with `CREATE INDEX CONCURRENTLY` (writes go on meanwhile; on a big
    /// table it takes a while). Call it at start-up for the configured
    /// model; the first write of a model creates it otherwise (inside the
    /// writing transaction, not concurrently).
    pub async fn ensure_index(&self, model: &str, dimensions: usize) -> Result<(), KnowledgeError> {
        validate_model_name(model)?;
        if self.index_known(model, dimensions) {
            return Ok(());
        }
        let name = Self::index_name(model, dimensions);
        let mut conn = self.pool.acquire().await.map_err(kb_error("connecting"))?;
        match index_state(&mut conn, &name).await? {
            Some(true) => {}
            state => {
                if state == Some(false) {
                    // a concurrent build that failed leaves an invalid index
                    exec(
                        &mut conn,
                        format!("DROP INDEX CONCURRENTLY IF EXISTS {name}"),
                        "dropping an invalid index",
                        model,
                    )
                    .await?;
                }
                let sql = create_index_sql(&name, model, dimensions, true);
                exec(&mut conn, sql, "creating the HNSW index", model).await?;
            }
        }
        self.remember_index(model, dimensions);
        Ok(())
    }

    fn index_known(&self, model: &str, dimensions: usize) -> bool {
        self.indexes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&(model.to_owned(), dimensions))
    }

    fn remember_index(&self, model: &str, dimensions: usize) {
        self.indexes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((model.to_owned(), dimensions));
    }

    /// Makes sure the index exists, inside the caller's transaction: a
    /// catalog probe, and `CREATE INDEX` (not concurrently) when missing.
    /// Only an index seen committed in the catalog is remembered, so a
    /// rolled-back creation is retried by the next write.
    async fn ensure_index_in(
        &self,
        conn: &mut PgConnection,
        model: &str,
        dimensions: usize,
    ) -> Result<(), KnowledgeError> {
        if self.index_known(model, dimensions) {
            return Ok(());
        }
        let name = Self::index_name(model, dimensions);
        match index_state(conn, &name).await? {
            Some(true) => self.remember_index(model, dimensions),
            Some(false) => {
                return Err(KnowledgeError::backend(
                    "checking the HNSW index",
                    format!("index {name} of model `{model}` is invalid (a failed concurrent build); drop it or call PgKnowledgeBase::ensure_index"),
                ))
            }
            None => {
                exec(conn, create_index_sql(&name, model, dimensions, false), "creating the HNSW index", model).await?;
            }
        }
        Ok(())
    }

    /// A writer over `conn` (which should be inside a transaction) for
    /// [`Ingestor::apply`]: what the projection uses with the runner's
    /// transaction.
    pub fn writer<'c>(&'c self, conn: &'c mut PgConnection) -> PgKnowledgeWriter<'c> {
        PgKnowledgeWriter { kb: self, conn }
    }

    async fn iterative_scans(&self) -> bool {
        *self
            .iterative
            .get_or_init(|| async {
                let version: Option<String> = sqlx::query_scalar(
                    "SELECT extversion FROM pg_extension WHERE extname = 'vector'",
                )
                .fetch_optional(&self.pool)
                .await
                .ok()
                .flatten();
                version.is_some_and(|v| {
                    let mut parts = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
                    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
                    (major, minor) >= (0, 8)
                })
            })
            .await
    }

    /// The plan Postgres chooses for [`search`](KnowledgeBase::search) with
    /// these arguments (`EXPLAIN`, same statement, same settings): to check
    /// that a search uses the model's HNSW index.
    pub async fn explain(
        &self,
        model: &str,
        vector: &[f32],
        query: &SearchQuery,
    ) -> Result<String, KnowledgeError> {
        let rows = self.run_search(model, vector, query, true).await?;
        rows.iter()
            .map(|r| r.try_get::<String, _>(0))
            .collect::<Result<Vec<_>, _>>()
            .map(|lines| lines.join("\n"))
            .map_err(kb_error("reading the plan"))
    }

    async fn run_search(
        &self,
        model: &str,
        vector: &[f32],
        query: &SearchQuery,
        explain: bool,
    ) -> Result<Vec<PgRow>, KnowledgeError> {
        validate_model_name(model)?;
        let (scope, tenant) = match &query.scope {
            Scope::All => (0i32, None),
            Scope::Tenant(t) => (1, Some(t.as_str())),
            Scope::TenantAndShared(t) => (2, Some(t.as_str())),
            Scope::Shared => (3, None),
            // a scope this backend does not know sees nothing
            _ => return Ok(Vec::new()),
        };
        let filtered = scope != 0
            || query.language.is_some()
            || !query.source_types.is_empty()
            || !query.tags.is_empty();
        let mut sql = search_sql(model, vector.len(), filtered);
        if explain {
            sql.insert_str(0, "EXPLAIN ");
        }
        let k = i64::try_from(query.k).unwrap_or(i64::MAX);
        let q = sqlx::query(AssertSqlSafe(sql)).bind(Vector::from(vector.to_vec()));
        let q = if filtered {
            q.bind(scope)
                .bind(tenant)
                .bind(query.language.as_deref())
                .bind(&query.source_types)
                .bind(&query.tags)
                .bind(k)
        } else {
            q.bind(k)
        };
        if !filtered && query.k <= DEFAULT_EF_SEARCH && self.ef_search.is_none() {
            return q
                .fetch_all(&self.pool)
                .await
                .map_err(|e| map_dimensions(e, "searching", model, true));
        }
        let ef = self
            .ef_search
            .unwrap_or(DEFAULT_EF_SEARCH)
            .max(query.k)
            .min(1000);
        let mut begin = format!("BEGIN READ ONLY; SET LOCAL hnsw.ef_search = {ef}");
        if filtered && self.iterative_scans().await {
            begin.push_str("; SET LOCAL hnsw.iterative_scan = strict_order");
        }
        let mut tx = self
            .pool
            .begin_with(AssertSqlSafe(begin))
            .await
            .map_err(kb_error("starting a search"))?;
        let rows = q
            .fetch_all(&mut *tx)
            .await
            .map_err(|e| map_dimensions(e, "searching", model, true))?;
        tx.commit().await.map_err(kb_error("ending a search"))?;
        Ok(rows)
    }

    async fn search_rows(
        &self,
        model: &str,
        vector: &[f32],
        query: &SearchQuery,
    ) -> Result<Vec<SearchHit>, KnowledgeError> {
        if vector.is_empty() || query.k == 0 {
            validate_model_name(model)?;
            return Ok(Vec::new());
        }
        let rows = self.run_search(model, vector, query, false).await?;
        let mut hits = Vec::with_capacity(rows.len());
        for row in &rows {
            let distance: f64 = get(row, "distance")?;
            let similarity = (1.0 - distance) as f32;
            if query.min_similarity.is_some_and(|m| similarity < m) {
                break; // ordered by distance: the rest are further
            }
            hits.push(SearchHit {
                entry: entry(row)?,
                similarity,
            });
        }
        Ok(hits)
    }
}

/// `Some(valid)` when the index exists.
async fn index_state(conn: &mut PgConnection, name: &str) -> Result<Option<bool>, KnowledgeError> {
    sqlx::query_scalar("SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass($1)")
        .bind(name)
        .fetch_optional(conn)
        .await
        .map_err(kb_error("looking up the HNSW index"))
}

/// Runs a DDL statement (the model's index), mapping a dimension mismatch
/// of rows already stored to its typed error.
async fn exec(
    conn: &mut PgConnection,
    sql: String,
    context: &'static str,
    model: &str,
) -> Result<(), KnowledgeError> {
    sqlx::raw_sql(AssertSqlSafe(sql))
        .execute(conn)
        .await
        .map(drop)
        .map_err(|e| map_dimensions(e, context, model, true))
}

/// A Postgres string literal of `s`, as `quote_literal` writes it: quotes
/// doubled, and backslashes doubled in an `E''` literal when there are any,
/// so it reads the same whatever `standard_conforming_strings` says.
/// (Model names never contain NUL: [`validate_model_name`] refuses control
/// characters.)
///
pub fn quote_literal(s: &str) -> String {
    let escaped = s.replace('\'', "''");
    if s.contains('\\') {
        format!("E'{}'", escaped.replace('\\', "\\\\"))
    } else {
        format!("'{escaped}'")
    }
}

fn create_index_sql(name: &str, model: &str, dimensions: usize, concurrently: bool) -> String {
    format!(
        "CREATE INDEX {}IF NOT EXISTS {name} ON annals_knowledge_base \
         USING hnsw ((embedding::vector({dimensions})) vector_cosine_ops) \
         WHERE embedding_model = {}",
        if concurrently { "CONCURRENTLY " } else { "" },
        quote_literal(model)
    )
}

const ENTRY_COLUMNS: &str =
    "id, parent_id, source_type, title, content, content_hash, chunk_index, chunk_total, \
     tenant_id, language, tags, metadata, subject, version, is_active, embedding_model, embedded_at";

/// The search statement of one (model, dimensions): the model and the
/// dimensions are literals (the partial index's predicate and expression),
/// everything else is bound. Unfiltered: `$1` vector, `$2` k. Filtered:
/// `$1` vector, `$2` scope (1 tenant, 2 tenant and shared, 3 shared), `$3`
/// tenant, `$4` language, `$5` source types, `$6` tags, `$7` k.
pub(crate) fn search_sql(model: &str, dimensions: usize, filtered: bool) -> String {
    let filters = if filtered {
        "AND ($2 IN (1, 2) AND tenant_id = $3 OR $2 IN (2, 3) AND tenant_id IS NULL OR $2 = 0) \
         AND ($4::text IS NULL OR language = $4) \
         AND (cardinality($5::text[]) = 0 OR source_type = ANY($5)) \
         AND tags @> $6::text[] "
    } else {
        ""
    };
    let limit = if filtered { "$7" } else { "$2" };
    format!(
        "SELECT {ENTRY_COLUMNS}, embedding::vector({dimensions}) <=> $1::vector({dimensions}) AS distance \
         FROM annals_knowledge_base \
         WHERE embedding_model = {} AND is_active {filters}\
         ORDER BY embedding::vector({dimensions}) <=> $1::vector({dimensions}) \
         LIMIT {limit}",
        quote_literal(model)
    )
}

fn get<'r, T>(row: &'r PgRow, column: &str) -> Result<T, KnowledgeError>
where
    T: sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
{
    row.try_get(column)
        .map_err(kb_error("reading a knowledge base row"))
}

fn to_u32(v: i32, column: &str) -> Result<u32, KnowledgeError> {
    u32::try_from(v).map_err(|_| {
        KnowledgeError::backend(
            "reading a knowledge base row",
            format!("column {column} holds {v}, outside 0..2^31"),
        )
    })
}

fn meta(row: &PgRow) -> Result<DocumentMeta, KnowledgeError> {
    let Json(metadata): Json<serde_json::Map<String, serde_json::Value>> = get(row, "metadata")?;
    Ok(DocumentMeta {
        source_type: get(row, "source_type")?,
        title: get(row, "title")?,
        tenant_id: get(row, "tenant_id")?,
        language: get(row, "language")?,
        tags: get(row, "tags")?,
        metadata,
        subject: get(row, "subject")?,
    })
}

fn entry(row: &PgRow) -> Result<KnowledgeEntry, KnowledgeError> {
    let id: Uuid = get(row, "id")?;
    let parent_id: Option<Uuid> = get(row, "parent_id")?;
    Ok(KnowledgeEntry {
        id,
        document_id: parent_id.unwrap_or(id),
        parent_id,
        document: meta(row)?,
        content: get(row, "content")?,
        content_hash: get(row, "content_hash")?,
        chunk_index: to_u32(get(row, "chunk_index")?, "chunk_index")?,
        chunk_total: to_u32(get(row, "chunk_total")?, "chunk_total")?,
        version: to_u32(get(row, "version")?, "version")?,
        is_active: get(row, "is_active")?,
        embedding_model: get(row, "embedding_model")?,
        embedded_at: get(row, "embedded_at")?,
    })
}

fn chunk_row(row: &PgRow) -> Result<ChunkRow, KnowledgeError> {
    let model: Option<String> = get(row, "embedding_model")?;
    let vector: Option<Vector> = get(row, "embedding")?;
    let at: Option<DateTime<Utc>> = get(row, "embedded_at")?;
    let embedding = match (model, vector, at) {
        (Some(model), Some(vector), Some(embedded_at)) => Some(StoredEmbedding {
            model,
            vector: vector.to_vec(),
            embedded_at,
        }),
        _ => None,
    };
    Ok(ChunkRow {
        id: get(row, "id")?,
        parent_id: get(row, "parent_id")?,
        document: meta(row)?,
        content: get(row, "content")?,
        content_hash: get(row, "content_hash")?,
        chunk_index: to_u32(get(row, "chunk_index")?, "chunk_index")?,
        chunk_total: to_u32(get(row, "chunk_total")?, "chunk_total")?,
        version: to_u32(get(row, "version")?, "version")?,
        is_active: get(row, "is_active")?,
        embedding,
    })
}

/// The two numbers of pgvector's "expected 16 dimensions, not 8".
fn dimension_mismatch(e: &sqlx::Error) -> Option<(usize, usize)> {
    let message = e.as_database_error()?.message();
    let rest = message.strip_prefix("expected ")?;
    let mut numbers = rest
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .filter_map(|s| s.parse::<usize>().ok());
    Some((numbers.next()?, numbers.next()?))
}

/// Turns pgvector's dimension check (of a stored row against an index or
/// a query vector cast), unique and foreign-key violations into their
/// typed errors. `query_side`: the cast that failed was of the new vector's
/// length (an index build, a query), so pgvector's "expected" is the new
/// length and its "not" the stored one.
fn map_dimensions(
    e: sqlx::Error,
    context: &'static str,
    model: &str,
    query_side: bool,
) -> KnowledgeError {
    match dimension_mismatch(&e) {
        Some((a, b)) => {
            let (expected, actual) = if query_side { (b, a) } else { (a, b) };
            KnowledgeError::Dimensions {
                model: model.to_owned(),
                expected,
                actual,
            }
        }
        None => map_error(e, context, None),
    }
}

/// Turns unique and foreign-key violations on a document into conflicts
/// (another writer got there first: transient), other values the database
/// refuses into [`KnowledgeError::Refused`] (permanent, see
/// [`is_refused_value`]), and the rest into backend failures.
fn map_error(e: sqlx::Error, context: &'static str, document_id: Option<Uuid>) -> KnowledgeError {
    if let Some(db) = e.as_database_error() {
        if let Some(document_id) = document_id {
            if db.is_unique_violation() || db.is_foreign_key_violation() {
                return KnowledgeError::Conflict { document_id };
            }
        }
    }
    if is_refused_value(&e) {
        return KnowledgeError::Refused {
            context,
            source: Box::new(e),
        };
    }
    KnowledgeError::backend(context, e)
}

/// [`map_error`] for statements about no particular document.
fn kb_error(context: &'static str) -> impl Fn(sqlx::Error) -> KnowledgeError + Copy {
    move |e| map_error(e, context, None)
}

/// The [`KnowledgeWriter`] of Postgres, over a connection the caller keeps
/// in a transaction. Reading a document's rows takes a transaction-scoped
/// advisory lock on the document, so concurrent ingests of one document
/// queue up instead of racing.
#[derive(Debug)]
pub struct PgKnowledgeWriter<'c> {
    kb: &'c PgKnowledgeBase,
    conn: &'c mut PgConnection,
}

impl PgKnowledgeWriter<'_> {
    async fn rows(&mut self, document_id: Uuid) -> Result<Vec<ChunkRow>, KnowledgeError> {
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1::text, 7367))")
            .bind(document_id)
            .execute(&mut *self.conn)
            .await
            .map_err(kb_error("locking the document"))?;
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {ENTRY_COLUMNS}, embedding FROM annals_knowledge_base \
             WHERE id = $1 OR parent_id = $1 ORDER BY chunk_index"
        )))
        .bind(document_id)
        .fetch_all(&mut *self.conn)
        .await
        .map_err(kb_error("reading the document's rows"))?;
        rows.iter().map(chunk_row).collect()
    }

    async fn subject_rows(&mut self, subject: &str) -> Result<Vec<KnowledgeEntry>, KnowledgeError> {
        // locked until the transaction ends: the rows deleted are the rows
        // whose texts left the caches
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {ENTRY_COLUMNS} FROM annals_knowledge_base \
             WHERE subject = $1 ORDER BY id FOR UPDATE"
        )))
        .bind(subject)
        .fetch_all(&mut *self.conn)
        .await
        .map_err(kb_error("reading the subject's rows"))?;
        rows.iter().map(entry).collect()
    }

    async fn write(&mut self, document_id: Uuid, ops: Vec<RowOp>) -> Result<(), KnowledgeError> {
        for op in ops {
            match op {
                RowOp::Delete(id) => {
                    sqlx::query("DELETE FROM annals_knowledge_base WHERE id = $1")
                        .bind(id)
                        .execute(&mut *self.conn)
                        .await
                        .map_err(|e| map_error(e, "deleting a row", Some(document_id)))?;
                }
                RowOp::Deactivate(id) => {
                    sqlx::query(
                        "UPDATE annals_knowledge_base \
                         SET is_active = false, version = version + 1, updated_at = now() \
                         WHERE id = $1 AND is_active",
                    )
                    .bind(id)
                    .execute(&mut *self.conn)
                    .await
                    .map_err(|e| map_error(e, "retiring a row", Some(document_id)))?;
                }
                RowOp::Upsert(row) => {
                    let row = *row;
                    if let Some(e) = &row.embedding {
                        self.kb
                            .ensure_index_in(self.conn, &e.model, e.vector.len())
                            .await?;
                    }
                    let model = row.embedding.as_ref().map(|e| e.model.clone());
                    let (vector, at) = match row.embedding {
                        Some(e) => (Some(Vector::from(e.vector)), Some(e.embedded_at)),
                        None => (None, None),
                    };
                    let index = i32::try_from(row.chunk_index).unwrap_or(i32::MAX);
                    let total = i32::try_from(row.chunk_total).unwrap_or(i32::MAX);
                    let version = i32::try_from(row.version).unwrap_or(i32::MAX);
                    sqlx::query(
                        "INSERT INTO annals_knowledge_base (id, parent_id, source_type, title, content, \
                             content_hash, chunk_index, chunk_total, embedding, embedding_model, embedded_at, \
                             tenant_id, language, tags, metadata, version, is_active, subject) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18) \
                         ON CONFLICT (id) DO UPDATE SET parent_id = EXCLUDED.parent_id, \
                             source_type = EXCLUDED.source_type, title = EXCLUDED.title, \
                             content = EXCLUDED.content, content_hash = EXCLUDED.content_hash, \
                             chunk_index = EXCLUDED.chunk_index, chunk_total = EXCLUDED.chunk_total, \
                             embedding = EXCLUDED.embedding, embedding_model = EXCLUDED.embedding_model, \
                             embedded_at = EXCLUDED.embedded_at, tenant_id = EXCLUDED.tenant_id, \
                             language = EXCLUDED.language, tags = EXCLUDED.tags, \
                             metadata = EXCLUDED.metadata, version = EXCLUDED.version, \
                             is_active = EXCLUDED.is_active, subject = EXCLUDED.subject, updated_at = now()",
                    )
                    .bind(row.id)
                    .bind(row.parent_id)
                    .bind(&row.document.source_type)
                    .bind(&row.document.title)
                    .bind(&row.content)
                    .bind(&row.content_hash)
                    .bind(index)
                    .bind(total)
                    .bind(vector)
                    .bind(model.as_deref())
                    .bind(at)
                    .bind(row.document.tenant_id.as_deref())
                    .bind(row.document.language.as_deref())
                    .bind(&row.document.tags)
                    .bind(Json(&row.document.metadata))
                    .bind(version)
                    .bind(row.is_active)
                    .bind(row.document.subject.as_deref())
                    .execute(&mut *self.conn)
                    .await
                    .map_err(|e| {
                        if dimension_mismatch(&e).is_some() {
                            map_dimensions(e, "writing a row", model.as_deref().unwrap_or(""), false)
                        } else {
                            map_error(e, "writing a row", Some(document_id))
                        }
                    })?;
                }
                other => {
                    return Err(KnowledgeError::backend(
                        "writing a row",
                        format!("unsupported row operation {other:?}"),
                    ))
                }
            }
        }
        Ok(())
    }
}

impl KnowledgeWriter for PgKnowledgeWriter<'_> {
    fn document_rows(
        &mut self,
        document_id: Uuid,
    ) -> impl Future<Output = Result<Vec<ChunkRow>, KnowledgeError>> + Send {
        self.rows(document_id)
    }

    fn subject_rows(
        &mut self,
        subject: &str,
    ) -> impl Future<Output = Result<Vec<KnowledgeEntry>, KnowledgeError>> + Send {
        PgKnowledgeWriter::subject_rows(self, subject)
    }

    fn apply(
        &mut self,
        document_id: Uuid,
        ops: Vec<RowOp>,
    ) -> impl Future<Output = Result<(), KnowledgeError>> + Send {
        self.write(document_id, ops)
    }
}

impl KnowledgeBase for PgKnowledgeBase {
    async fn ingest<E: Embedder>(
        &self,
        ingestor: &Ingestor<E>,
        event: &DocumentEvent,
    ) -> Result<IngestReport, KnowledgeError> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(kb_error("starting an ingest"))?;
        let report = ingestor.apply(&mut self.writer(&mut tx), event).await?;
        tx.commit()
            .await
            .map_err(|e| map_error(e, "committing an ingest", Some(event.document_id())))?;
        Ok(report)
    }

    async fn forget_subject<E: Embedder>(
        &self,
        ingestor: &Ingestor<E>,
        subject: &str,
    ) -> Result<ErasureReport, KnowledgeError> {
        annals_core::store::limits::check_subject(subject)?;
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(kb_error("starting an erasure"))?;
        let report = ingestor
            .forget_subject(&mut self.writer(&mut tx), subject)
            .await?;
        tx.commit()
            .await
            .map_err(kb_error("committing an erasure"))?;
        Ok(report)
    }

    async fn search(
        &self,
        model: &str,
        vector: &[f32],
        query: &SearchQuery,
    ) -> Result<Vec<SearchHit>, KnowledgeError> {
        let started = std::time::Instant::now();
        let result = self.search_rows(model, vector, query).await;
        annals_core::metrics::record_knowledge_search("postgres", started);
        result
    }

    async fn document(&self, document_id: Uuid) -> Result<Vec<KnowledgeEntry>, KnowledgeError> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {ENTRY_COLUMNS} FROM annals_knowledge_base \
             WHERE id = $1 OR parent_id = $1 ORDER BY chunk_index"
        )))
        .bind(document_id)
        .fetch_all(&self.pool)
        .await
        .map_err(kb_error("reading a document"))?;
        rows.iter().map(entry).collect()
    }

    async fn count_stale(&self, model: &str) -> Result<u64, KnowledgeError> {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM annals_knowledge_base \
             WHERE is_active AND embedding_model IS DISTINCT FROM $1",
        )
        .bind(model)
        .fetch_one(&self.pool)
        .await
        .map_err(kb_error("counting stale rows"))?;
        Ok(n.max(0) as u64)
    }

    async fn refresh_start(&self, target_model: &str) -> Result<RefreshJobState, KnowledgeError> {
        let running = || {
            sqlx::query(
                "SELECT job_id, total, done, last_processed_id FROM annals_embedding_refresh_jobs \
                 WHERE target_model = $1 AND status = 'running'",
            )
            .bind(target_model)
            .fetch_optional(&self.pool)
        };
        let job = |row: &PgRow, resumed: bool| -> Result<RefreshJobState, KnowledgeError> {
            let total: i64 = get(row, "total")?;
            let done: i64 = get(row, "done")?;
            Ok(RefreshJobState::new(
                get(row, "job_id")?,
                target_model.to_owned(),
                total.max(0) as u64,
                done.max(0) as u64,
                get(row, "last_processed_id")?,
                resumed,
            ))
        };
        let err = kb_error("starting the refresh job");
        if let Some(row) = running().await.map_err(err)? {
            return job(&row, true);
        }
        let started = sqlx::query(
            "INSERT INTO annals_embedding_refresh_jobs (target_model, total) \
             SELECT $1, count(*) FROM annals_knowledge_base \
              WHERE is_active AND embedding_model IS DISTINCT FROM $1 \
             ON CONFLICT (target_model) WHERE status = 'running' DO NOTHING \
             RETURNING job_id, total, done, last_processed_id",
        )
        .bind(target_model)
        .fetch_optional(&self.pool)
        .await
        .map_err(err)?;
        match started {
            Some(row) => job(&row, false),
            // another worker started it just now
            None => match running().await.map_err(err)? {
                Some(row) => job(&row, true),
                None => Err(KnowledgeError::backend(
                    "starting the refresh job",
                    "the running job vanished while starting; run again",
                )),
            },
        }
    }

    async fn refresh_batch(
        &self,
        target_model: &str,
        cursor: Option<Uuid>,
        limit: usize,
    ) -> Result<Vec<StaleRow>, KnowledgeError> {
        let rows = sqlx::query(
            "SELECT id, content, content_hash FROM annals_knowledge_base \
             WHERE is_active AND embedding_model IS DISTINCT FROM $1 \
               AND ($2::uuid IS NULL OR id > $2) \
             ORDER BY id LIMIT $3",
        )
        .bind(target_model)
        .bind(cursor)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(kb_error("reading a refresh batch"))?;
        rows.iter()
            .map(|r| {
                Ok(StaleRow {
                    id: get(r, "id")?,
                    content: get(r, "content")?,
                    content_hash: get(r, "content_hash")?,
                })
            })
            .collect()
    }

    async fn refresh_commit(
        &self,
        job: &RefreshJobState,
        from: Option<Uuid>,
        to: Uuid,
        updates: &[EmbeddingUpdate],
    ) -> Result<BatchCommit, KnowledgeError> {
        let err = |e| map_error(e, "storing a refresh batch", None);
        let mut tx = self.pool.begin().await.map_err(err)?;
        let model = &job.target_model;
        if let Some(first) = updates.first() {
            self.ensure_index_in(&mut tx, model, first.vector.len())
                .await?;
        }
        let ids: Vec<Uuid> = updates.iter().map(|u| u.id).collect();
        let hashes: Vec<&str> = updates.iter().map(|u| u.content_hash.as_str()).collect();
        let vectors: Vec<Vector> = updates
            .iter()
            .map(|u| Vector::from(u.vector.clone()))
            .collect();
        let updated = sqlx::query(
            "UPDATE annals_knowledge_base kb \
             SET embedding = u.embedding, embedding_model = $4, embedded_at = now(), updated_at = now() \
             FROM UNNEST($1::uuid[], $2::text[], $3::vector[]) AS u(id, hash, embedding) \
             WHERE kb.id = u.id AND kb.content_hash = u.hash AND kb.is_active \
               AND kb.embedding_model IS DISTINCT FROM $4",
        )
        .bind(&ids)
        .bind(&hashes)
        .bind(&vectors)
        .bind(model)
        .execute(&mut *tx)
        .await
        .map_err(|e| map_dimensions(e, "storing a refresh batch", model, false))?
        .rows_affected();
        let done: Option<i64> = sqlx::query_scalar(
            "UPDATE annals_embedding_refresh_jobs \
             SET last_processed_id = $3, done = done + $4, updated_at = now(), error = NULL \
             WHERE job_id = $1 AND status = 'running' \
               AND last_processed_id IS NOT DISTINCT FROM $2 \
             RETURNING done",
        )
        .bind(job.job_id)
        .bind(from)
        .bind(to)
        .bind(i64::try_from(updated).unwrap_or(i64::MAX))
        .fetch_optional(&mut *tx)
        .await
        .map_err(err)?;
        match done {
            Some(done) => {
                tx.commit().await.map_err(err)?;
                Ok(BatchCommit::Committed {
                    updated,
                    done: done.max(0) as u64,
                })
            }
            None => {
                tx.rollback().await.map_err(err)?;
                let now = sqlx::query(
                    "SELECT last_processed_id, done FROM annals_embedding_refresh_jobs WHERE job_id = $1",
                )
                .bind(job.job_id)
                .fetch_optional(&self.pool)
                .await
                .map_err(err)?;
                let (cursor, done) = match now {
                    Some(row) => (get(&row, "last_processed_id")?, get::<i64>(&row, "done")?),
                    None => (job.cursor, i64::try_from(job.done).unwrap_or(i64::MAX)),
                };
                Ok(BatchCommit::Superseded {
                    cursor,
                    done: done.max(0) as u64,
                })
            }
        }
    }

    async fn refresh_finish(&self, job: &RefreshJobState) -> Result<(), KnowledgeError> {
        sqlx::query(
            "UPDATE annals_embedding_refresh_jobs \
             SET status = 'completed', finished_at = now(), updated_at = now() \
             WHERE job_id = $1 AND status = 'running'",
        )
        .bind(job.job_id)
        .execute(&self.pool)
        .await
        .map(drop)
        .map_err(kb_error("completing the refresh job"))
    }

    async fn refresh_failed(
        &self,
        job: &RefreshJobState,
        error: &str,
    ) -> Result<(), KnowledgeError> {
        sqlx::query(
            "UPDATE annals_embedding_refresh_jobs SET error = $2, updated_at = now() \
             WHERE job_id = $1 AND status = 'running'",
        )
        .bind(job.job_id)
        .bind(error)
        .execute(&self.pool)
        .await
        .map(drop)
        .map_err(kb_error("recording a refresh failure"))
    }
}

/// The knowledge base projection on Postgres: applies the
/// [`KnowledgeEvent`]s of the log (documents, and `subject.forgotten`,
/// which erases the subject as [`PgKnowledgeBase::forget_subject`] does)
/// through the same [`Ingestor`] path as [`PgKnowledgeBase::ingest`],
/// inside the runner's transaction, so the rows and the projection's
/// checkpoint commit together.
///
/// Transient failures (the embedding service, the database) are reported
/// as [dependency](annals_core::handler::FailureKind::Dependency) failures, so the
/// runner retries them and never parks the event. Note that the embedding
/// call happens inside the runner's transaction.
#[derive(Debug)]
pub struct PgKnowledgeProjection<E> {
    name: String,
    kb: PgKnowledgeBase,
    ingestor: Ingestor<E>,
}

impl<E: Embedder> PgKnowledgeProjection<E> {
    /// A projection named `name` writing to `kb` through `ingestor`.
    pub fn new(name: impl Into<String>, kb: PgKnowledgeBase, ingestor: Ingestor<E>) -> Self {
        PgKnowledgeProjection {
            name: name.into(),
            kb,
            ingestor,
        }
    }

    /// The knowledge base it writes.
    pub fn knowledge_base(&self) -> &PgKnowledgeBase {
        &self.kb
    }
}

impl<E: Embedder + 'static> Projection for PgKnowledgeProjection<E> {
    type Event = KnowledgeEvent;
    type Conn = PgConnection;

    fn name(&self) -> &str {
        &self.name
    }

    async fn apply(
        &self,
        tx: &mut PgConnection,
        event: &Envelope<KnowledgeEvent>,
    ) -> Result<(), HandlerError> {
        self.ingestor
            .handle_in(&mut self.kb.writer(tx), &event.payload, &event.tenant_id)
            .await
            .map_err(KnowledgeError::into_handler_error)
    }

    /// The default tenant's rebuild clears the whole knowledge base (as
    /// before tenants); another tenant's removes the documents of that
    /// tenant (`tenant_id`) only.
    async fn reset(&self, tx: &mut PgConnection, tenant: &TenantId) -> Result<(), HandlerError> {
        let all = tenant.as_str() == TenantId::DEFAULT_NAME;
        sqlx::query("DELETE FROM annals_knowledge_base WHERE $1 OR tenant_id = $2")
            .bind(all)
            .bind(tenant.as_str())
            .execute(tx)
            .await
            .map(drop)
            .map_err(|e| {
                KnowledgeError::backend("clearing the knowledge base", e).into_handler_error()
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_are_quoted_like_postgres_quote_literal() {
        assert_eq!(
            quote_literal("text-embedding-3-small"),
            "'text-embedding-3-small'"
        );
        assert_eq!(quote_literal("o'brien"), "'o''brien'");
        assert_eq!(quote_literal(r"a\b'c"), r"E'a\\b''c'");
    }

    #[test]
    fn index_names_are_stable_and_differ_by_dimension() {
        let a = PgKnowledgeBase::index_name("m", 384);
        assert_eq!(a, PgKnowledgeBase::index_name("m", 384));
        assert_ne!(a, PgKnowledgeBase::index_name("m", 385));
        assert!(a.starts_with("annals_kb_hnsw_") && a.len() == 15 + 16);
    }
}
