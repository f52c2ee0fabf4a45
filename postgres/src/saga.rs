use std::time::Duration;

use annals_core::trace::TraceContext;
use annals_core::{
    saga::forget_marked, saga::CommandOutcome, saga::OutboxEntry, saga::SagaChange,
    saga::SagaError, saga::SagaProgress, saga::SagaRecord, saga::SagaStatus, saga::StepRecord,
    LogPosition, SagaStore, TenantId,
};
use sqlx::postgres::PgRow;

use crate::error::is_refused_value;
use sqlx::types::Json;
use sqlx::{Connection, PgConnection, PgPool, Row};
use uuid::Uuid;

/// Sagas in the `annals_sagas` table and their commands in the
/// `annals_saga_outbox` table (see `migrations/0006_sagas.up.sql`).
///
/// [`load`](SagaStore::load) and [`save`](SagaStore::save) run on the
/// caller's connection (the projection runner's transaction: a saga's new
/// state, its outbox commands and the runner's checkpoint commit together);
/// `load` locks the saga row until that transaction ends. A save is one
/// statement: the row (with its optimistic version check) and the outbox
/// commands together. The worker's operations use the pool, each in one
/// short transaction; commands are claimed with `FOR UPDATE SKIP LOCKED`
/// and a lease, so no transaction stays open while the command bus works
/// (an open transaction would hold the global log's horizon back).
///
/// Cloning is cheap (the pool is shared).
///
/// ```no_run
/// # async fn demo(pool: sqlx::PgPool) {
/// use annals::postgres::PgSagaStore;
/// use annals::SagaStore;
/// let sagas = PgSagaStore::new(pool);
/// let unfinished = sagas.list_unfinished(Some("booking"), None, 100).await;
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct PgSagaStore {
    pool: PgPool,
    /// The tenant whose sagas this handle reads and writes.
    tenant: TenantId,
}

impl PgSagaStore {
    /// A saga store on `pool` (run [`migrate`](crate::migrate) first),
    /// scoped to the default tenant.
    pub fn new(pool: PgPool) -> Self {
        PgSagaStore {
            pool,
            tenant: TenantId::default(),
        }
    }

    /// The connection pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Makes every command of a saga that waits for delivery (neither
    /// delivered nor given up) due now, skipping what is left of its retry
    /// backoff: the next worker poll claims it. A command that a worker has
    /// claimed and is delivering at this moment becomes claimable again
    /// too, so it may be delivered twice; delivery is at least once anyway
    /// and commands carry idempotency keys. Given-up commands stay given up
    /// (the saga has already decided what to do about them). Returns how
    /// many commands were rescheduled.
    pub async fn retry_now(&self, saga_id: Uuid) -> Result<u64, SagaError> {
        let done = sqlx::query(
            "UPDATE annals_saga_outbox SET next_attempt_at = now()
              WHERE tenant_id = $2 AND saga_id = $1 AND dispatched_at IS NULL AND failed_at IS NULL",
        )
        .bind(saga_id)
        .bind(self.tenant.as_str())
        .execute(&self.pool)
        .await
        .map_err(|e| saga_error("rescheduling a saga's commands", e))?;
        Ok(done.rows_affected())
    }
}

macro_rules! saga_columns {
    () => {
        "saga_id, saga_type, correlation_id, state->>'state' AS state_name, state->'data' AS data, \
         status, current_step, completed_steps, version, deadline_at, started_at, updated_at, \
         completed_at, error_message, retry_count, last_event_tx, last_event_position, subject"
    };
}

macro_rules! outbox_columns {
    () => {
        "id, saga_id, saga_type, idempotency_key, command_type, command, step, compensation, \
         attempts, last_error, created_at, dispatched_at, failed_at, next_attempt_at, \
         traceparent, tracestate"
    };
}

/// Inserts the commands of `saga` (a CTE returning `tenant_id, saga_id, saga_type`),
/// skipping keys already recorded. `$13..$19` are the command columns.
macro_rules! insert_commands {
    () => {
        concat!(
            "cmds AS (
                 INSERT INTO annals_saga_outbox (tenant_id, saga_id, saga_type, idempotency_key, command_type, command, step, compensation,
                     traceparent, tracestate)
                 SELECT saga.tenant_id, saga.saga_id, saga.saga_type, c.k, c.t, c.c::jsonb, c.s, c.comp, c.tp, c.ts
                 FROM saga, UNNEST($13::text[], $14::text[], $15::text[], $16::int4[], $17::bool[], $18::text[], $19::text[])
                      WITH ORDINALITY AS c(k, t, c, s, comp, tp, ts, ord)
                 ORDER BY c.ord
                 ON CONFLICT (tenant_id, idempotency_key) DO NOTHING
             )
             SELECT count(*) FROM saga"
        )
    };
}

// $1 id, $2 type, $3 correlation, $4 state, $5 data, $6 status, $7 step,
// $8 steps, $9 deadline (ms from now), $10 error, $11 last tx, $12 last pos,
// $13..$19 commands, $20 subject, $21 tenant
const INSERT_SAGA: &str = concat!(
    "WITH saga AS (
         INSERT INTO annals_sagas (tenant_id, saga_id, saga_type, correlation_id, state, status, current_step,
             completed_steps, version, deadline_at, completed_at, error_message, last_event_tx, last_event_position,
             subject)
         VALUES ($21, $1, $2, $3, jsonb_build_object('state', $4::text, 'data', $5::jsonb), $6, $7, $8::jsonb, 1,
             now() + $9::float8 * interval '1 millisecond',
             CASE WHEN $6 IN ('completed', 'failed') THEN now() END, $10, $11, $12, $20)
         RETURNING tenant_id, saga_id, saga_type
     ), ",
    insert_commands!()
);

// as INSERT_SAGA ($2, $3 unused but bound), plus $22 expected version and
// $23 cancel pending forward commands
const UPDATE_SAGA: &str = concat!(
    "WITH saga AS (
         UPDATE annals_sagas SET
             state = jsonb_build_object('state', $4::text, 'data', $5::jsonb), status = $6,
             current_step = $7, completed_steps = $8::jsonb, version = version + 1,
             deadline_at = now() + $9::float8 * interval '1 millisecond', updated_at = now(),
             completed_at = CASE WHEN $6 IN ('completed', 'failed') THEN coalesce(completed_at, now()) END,
             error_message = $10, last_event_tx = $11, last_event_position = $12, subject = $20
         WHERE tenant_id = $21 AND saga_id = $1 AND version = $22 AND saga_type = $2 AND correlation_id = $3
         RETURNING tenant_id, saga_id, saga_type
     ), cancelled AS (
         UPDATE annals_saga_outbox o
            SET failed_at = now(),
                last_error = 'cancelled: the saga started compensating before this command was attempted'
           FROM saga
          WHERE $23::bool AND o.tenant_id = saga.tenant_id AND o.saga_id = saga.saga_id AND NOT o.compensation AND o.attempts = 0
            AND o.dispatched_at IS NULL AND o.failed_at IS NULL
     ), ",
    insert_commands!()
);

const CLAIM: &str = concat!(
    "UPDATE annals_saga_outbox o
        SET attempts = o.attempts + 1, next_attempt_at = now() + $3::float8 * interval '1 millisecond'
       FROM (SELECT c.id FROM annals_saga_outbox c
              WHERE c.tenant_id = $4 AND c.saga_type = $1 AND c.dispatched_at IS NULL AND c.failed_at IS NULL
                AND c.next_attempt_at <= now()
                -- a saga's compensations wait until its forward commands are resolved
                AND NOT (c.compensation AND EXISTS (
                    SELECT 1 FROM annals_saga_outbox f
                     WHERE f.tenant_id = c.tenant_id AND f.saga_id = c.saga_id AND NOT f.compensation
                       AND f.dispatched_at IS NULL AND f.failed_at IS NULL))
              ORDER BY c.next_attempt_at, c.id
              LIMIT $2
              FOR UPDATE OF c SKIP LOCKED) due
      WHERE o.id = due.id
     RETURNING ",
    "o.id, o.saga_id, o.saga_type, o.idempotency_key, o.command_type, o.command, o.step, o.compensation, \
     o.attempts, o.last_error, o.created_at, o.dispatched_at, o.failed_at, o.next_attempt_at, \
     o.traceparent, o.tracestate"
);

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn corrupted(message: String) -> SagaError {
    SagaError::Corrupted { message }
}

fn decode_saga(row: &PgRow) -> Result<SagaRecord, SagaError> {
    let get = |e: sqlx::Error| saga_error("reading a saga row", e);
    let saga_id: Uuid = row.try_get("saga_id").map_err(get)?;
    let bad = |what: &str| corrupted(format!("saga {saga_id}: {what}"));
    let state: Option<String> = row.try_get("state_name").map_err(get)?;
    let state = state.ok_or_else(|| bad("`state` has no \"state\" key"))?;
    let data: Option<Json<serde_json::Value>> = row.try_get("data").map_err(get)?;
    let status: String = row.try_get("status").map_err(get)?;
    let status =
        SagaStatus::parse(&status).ok_or_else(|| bad(&format!("unknown status `{status}`")))?;
    let steps: Json<Vec<StepRecord>> = row
        .try_get("completed_steps")
        .map_err(|e| bad(&format!("`completed_steps` is not a list of steps: {e}")))?;
    let current_step: i32 = row.try_get("current_step").map_err(get)?;
    let version: i64 = row.try_get("version").map_err(get)?;
    let retry_count: i32 = row.try_get("retry_count").map_err(get)?;
    let last_tx: i64 = row.try_get("last_event_tx").map_err(get)?;
    let last_position: i64 = row.try_get("last_event_position").map_err(get)?;
    Ok(SagaRecord {
        saga_id,
        saga_type: row.try_get("saga_type").map_err(get)?,
        correlation_id: row.try_get("correlation_id").map_err(get)?,
        state,
        data: data.map_or(serde_json::Value::Null, |d| d.0),
        status,
        current_step: current_step.max(0) as u32,
        completed_steps: steps.0,
        version: version.max(0) as u64,
        deadline_at: row.try_get("deadline_at").map_err(get)?,
        started_at: row.try_get("started_at").map_err(get)?,
        updated_at: row.try_get("updated_at").map_err(get)?,
        completed_at: row.try_get("completed_at").map_err(get)?,
        error_message: row.try_get("error_message").map_err(get)?,
        retry_count: retry_count.max(0) as u32,
        last_event: LogPosition::new(last_tx.max(0) as u64, last_position.max(0) as u64),
        subject: row.try_get("subject").map_err(get)?,
    })
}

fn decode_entry(row: &PgRow) -> Result<OutboxEntry, SagaError> {
    let get = |e: sqlx::Error| saga_error("reading an outbox row", e);
    let id: i64 = row.try_get("id").map_err(get)?;
    let command: Json<serde_json::Value> = row.try_get("command").map_err(get)?;
    let step: i32 = row.try_get("step").map_err(get)?;
    let attempts: i32 = row.try_get("attempts").map_err(get)?;
    Ok(OutboxEntry {
        id: id.max(0) as u64,
        saga_id: row.try_get("saga_id").map_err(get)?,
        saga_type: row.try_get("saga_type").map_err(get)?,
        idempotency_key: row.try_get("idempotency_key").map_err(get)?,
        command_type: row.try_get("command_type").map_err(get)?,
        command: command.0,
        step: step.max(0) as u32,
        compensation: row.try_get("compensation").map_err(get)?,
        trace: TraceContext::new(
            row.try_get::<Option<&str>, _>("traceparent")
                .map_err(get)?
                .unwrap_or_default(),
            row.try_get("tracestate").map_err(get)?,
        ),
        attempts: attempts.max(0) as u32,
        last_error: row.try_get("last_error").map_err(get)?,
        created_at: row.try_get("created_at").map_err(get)?,
        dispatched_at: row.try_get("dispatched_at").map_err(get)?,
        failed_at: row.try_get("failed_at").map_err(get)?,
        next_attempt_at: row.try_get("next_attempt_at").map_err(get)?,
    })
}

/// Writes a saga's change on `conn` (one statement).
async fn save_on(
    conn: &mut PgConnection,
    tenant: &TenantId,
    change: &SagaChange,
) -> Result<(), SagaError> {
    let r = &change.record;
    let steps = serde_json::to_string(&r.completed_steps)
        .map_err(|e| corrupted(format!("saga {}: steps do not serialize: {e}", r.saga_id)))?;
    let mut keys = Vec::with_capacity(change.commands.len());
    let mut types = Vec::with_capacity(change.commands.len());
    let mut bodies = Vec::with_capacity(change.commands.len());
    let mut step_numbers = Vec::with_capacity(change.commands.len());
    let mut compensations = Vec::with_capacity(change.commands.len());
    let mut parents = Vec::with_capacity(change.commands.len());
    let mut states = Vec::with_capacity(change.commands.len());
    for c in &change.commands {
        keys.push(c.idempotency_key.as_str());
        types.push(c.command_type.as_str());
        bodies.push(c.command.to_string());
        step_numbers.push(i32::try_from(c.step).unwrap_or(i32::MAX));
        compensations.push(c.compensation);
        parents.push(c.trace.as_ref().map(|t| t.traceparent()));
        states.push(c.trace.as_ref().and_then(|t| t.tracestate()));
    }
    let sql = if change.insert {
        INSERT_SAGA
    } else {
        UPDATE_SAGA
    };
    let mut q = sqlx::query(sql)
        .bind(r.saga_id)
        .bind(&r.saga_type)
        .bind(&r.correlation_id)
        .bind(&r.state)
        .bind(Json(&r.data))
        .bind(r.status.as_str())
        .bind(i32::try_from(r.current_step).unwrap_or(i32::MAX))
        .bind(&steps)
        .bind(change.deadline.map(ms))
        .bind(r.error_message.as_deref())
        .bind(to_i64(r.last_event.transaction_id))
        .bind(to_i64(r.last_event.position))
        .bind(&keys)
        .bind(&types)
        .bind(&bodies)
        .bind(&step_numbers)
        .bind(&compensations)
        .bind(&parents)
        .bind(&states)
        .bind(r.subject.as_deref())
        .bind(tenant.as_str());
    if !change.insert {
        q = q.bind(to_i64(r.version)).bind(change.cancel_pending);
    }
    let written: i64 = match q.fetch_one(&mut *conn).await {
        Ok(row) => row.try_get(0).map_err(|e| saga_error("saving a saga", e))?,
        Err(e) => {
            let unique = e
                .as_database_error()
                .and_then(|d| d.constraint())
                .is_some_and(|c| {
                    c == "annals_sagas_type_correlation_key" || c == "annals_sagas_pkey"
                });
            return Err(if unique {
                SagaError::AlreadyExists {
                    saga_type: r.saga_type.clone(),
                    correlation_id: r.correlation_id.clone(),
                }
            } else {
                saga_error("saving a saga", e)
            });
        }
    };
    if written == 0 {
        return Err(SagaError::Conflict {
            saga_id: r.saga_id,
            expected: r.version,
        });
    }
    Ok(())
}

/// See [`SagaStore::attempted_steps`]. `FOR UPDATE` keeps the saga's
/// forward commands from being claimed (claims skip locked rows) until the
/// transaction ends; a claim in progress is waited for and then seen.
async fn attempted_steps_on(
    conn: &mut PgConnection,
    tenant: &TenantId,
    saga_id: uuid::Uuid,
) -> Result<Vec<u32>, SagaError> {
    let rows: Vec<(i32, bool)> = sqlx::query_as(
        "SELECT step, dispatched_at IS NOT NULL OR (failed_at IS NULL AND attempts > 0)
           FROM annals_saga_outbox
          WHERE tenant_id = $2 AND saga_id = $1 AND NOT compensation
            FOR UPDATE",
    )
    .bind(saga_id)
    .bind(tenant.as_str())
    .fetch_all(&mut *conn)
    .await
    .map_err(|e| saga_error("reading which saga steps were attempted", e))?;
    let mut steps: Vec<u32> = rows
        .into_iter()
        .filter(|(_, attempted)| *attempted)
        .filter_map(|(step, _)| u32::try_from(step).ok())
        .collect();
    steps.sort_unstable();
    steps.dedup();
    Ok(steps)
}

impl SagaStore for PgSagaStore {
    async fn forget_subject(&self, subject: &str) -> Result<u64, SagaError> {
        annals_core::store::limits::check_subject(subject)?;
        let err = |e| saga_error("forgetting a subject's personal data in sagas", e);
        let mut tx = self.pool.begin().await.map_err(err)?;
        let sagas = sqlx::query(
            "SELECT saga_id, state->'data' AS data FROM annals_sagas
              WHERE tenant_id = $2 AND subject = $1 ORDER BY saga_id FOR UPDATE",
        )
        .bind(subject)
        .bind(self.tenant.as_str())
        .fetch_all(&mut *tx)
        .await
        .map_err(err)?;
        let mut changed = 0;
        for saga in sagas {
            let saga_id: Uuid = saga.try_get("saga_id").map_err(err)?;
            let Json(mut data): Json<serde_json::Value> = saga.try_get("data").map_err(err)?;
            let mut erased = forget_marked(&mut data);
            if erased > 0 {
                sqlx::query(
                    "UPDATE annals_sagas SET state = jsonb_set(state, '{data}', $2)
                      WHERE tenant_id = $3 AND saga_id = $1",
                )
                .bind(saga_id)
                .bind(Json(&data))
                .bind(self.tenant.as_str())
                .execute(&mut *tx)
                .await
                .map_err(err)?;
            }
            let commands = sqlx::query(
                "SELECT id, command FROM annals_saga_outbox
                  WHERE tenant_id = $2 AND saga_id = $1 ORDER BY id FOR UPDATE",
            )
            .bind(saga_id)
            .bind(self.tenant.as_str())
            .fetch_all(&mut *tx)
            .await
            .map_err(err)?;
            for command in commands {
                let id: i64 = command.try_get("id").map_err(err)?;
                let Json(mut body): Json<serde_json::Value> =
                    command.try_get("command").map_err(err)?;
                if forget_marked(&mut body) > 0 {
                    erased += 1;
                    sqlx::query(
                        "UPDATE annals_saga_outbox SET command = $2 WHERE tenant_id = $3 AND id = $1",
                    )
                    .bind(id)
                    .bind(Json(&body))
                    .bind(self.tenant.as_str())
                        .execute(&mut *tx)
                        .await
                        .map_err(err)?;
                }
            }
            if erased > 0 {
                changed += 1;
            }
        }
        tx.commit().await.map_err(err)?;
        Ok(changed)
    }

    type Conn = PgConnection;

    fn tenant_id(&self) -> &TenantId {
        &self.tenant
    }

    fn in_tenant(&self, tenant: TenantId) -> Self {
        PgSagaStore {
            pool: self.pool.clone(),
            tenant,
        }
    }

    async fn attempted_steps(
        &self,
        tx: &mut PgConnection,
        saga_id: uuid::Uuid,
    ) -> Result<Vec<u32>, SagaError> {
        attempted_steps_on(tx, &self.tenant, saga_id).await
    }

    async fn load(
        &self,
        tx: &mut PgConnection,
        saga_type: &str,
        correlation_id: &str,
    ) -> Result<Option<SagaRecord>, SagaError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            saga_columns!(),
            " FROM annals_sagas WHERE tenant_id = $3 AND saga_type = $1 AND correlation_id = $2 FOR UPDATE"
        ))
        .bind(saga_type)
        .bind(correlation_id)
        .bind(self.tenant.as_str())
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| saga_error("loading a saga", e))?;
        row.as_ref().map(decode_saga).transpose()
    }

    async fn load_many(
        &self,
        tx: &mut PgConnection,
        saga_type: &str,
        correlation_ids: &[String],
    ) -> Result<Vec<SagaRecord>, SagaError> {
        // locked in saga_id order: two transactions locking overlapping sets
        // cannot deadlock
        let rows = sqlx::query(concat!(
            "SELECT ",
            saga_columns!(),
            " FROM annals_sagas WHERE tenant_id = $3 AND saga_type = $1 AND correlation_id = ANY($2)
              ORDER BY saga_id FOR UPDATE"
        ))
        .bind(saga_type)
        .bind(correlation_ids)
        .bind(self.tenant.as_str())
        .fetch_all(&mut *tx)
        .await
        .map_err(|e| saga_error("loading sagas", e))?;
        rows.iter().map(decode_saga).collect()
    }

    async fn save(&self, tx: &mut PgConnection, change: &SagaChange) -> Result<(), SagaError> {
        save_on(tx, &self.tenant, change).await
    }

    async fn find_by_correlation_id(
        &self,
        saga_type: &str,
        correlation_id: &str,
    ) -> Result<Option<SagaRecord>, SagaError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            saga_columns!(),
            " FROM annals_sagas WHERE tenant_id = $3 AND saga_type = $1 AND correlation_id = $2"
        ))
        .bind(saga_type)
        .bind(correlation_id)
        .bind(self.tenant.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| saga_error("finding a saga by correlation id", e))?;
        row.as_ref().map(decode_saga).transpose()
    }

    async fn get(&self, saga_id: Uuid) -> Result<Option<SagaRecord>, SagaError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            saga_columns!(),
            " FROM annals_sagas WHERE tenant_id = $2 AND saga_id = $1"
        ))
        .bind(saga_id)
        .bind(self.tenant.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| saga_error("reading a saga", e))?;
        row.as_ref().map(decode_saga).transpose()
    }

    async fn list_unfinished(
        &self,
        saga_type: Option<&str>,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<Vec<SagaRecord>, SagaError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            saga_columns!(),
            " FROM annals_sagas
             WHERE tenant_id = $4 AND status IN ('pending', 'running', 'compensating')
               AND ($1::text IS NULL OR saga_type = $1)
               AND ($2::uuid IS NULL OR saga_id > $2)
             ORDER BY saga_id LIMIT $3"
        ))
        .bind(saga_type)
        .bind(after)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .bind(self.tenant.as_str())
        .fetch_all(&self.pool)
        .await
        .map_err(|e| saga_error("listing unfinished sagas", e))?;
        rows.iter().map(decode_saga).collect()
    }

    async fn commands_of(&self, saga_id: Uuid) -> Result<Vec<OutboxEntry>, SagaError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            outbox_columns!(),
            " FROM annals_saga_outbox WHERE tenant_id = $2 AND saga_id = $1 ORDER BY id"
        ))
        .bind(saga_id)
        .bind(self.tenant.as_str())
        .fetch_all(&self.pool)
        .await
        .map_err(|e| saga_error("listing a saga's commands", e))?;
        rows.iter().map(decode_entry).collect()
    }

    async fn pending_commands(&self, saga_type: &str) -> Result<u64, SagaError> {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM annals_saga_outbox
             WHERE tenant_id = $2 AND saga_type = $1 AND dispatched_at IS NULL AND failed_at IS NULL",
        )
        .bind(saga_type)
        .bind(self.tenant.as_str())
        .fetch_one(&self.pool)
        .await
        .map_err(|e| saga_error("counting pending saga commands", e))?;
        Ok(n.max(0) as u64)
    }

    async fn count_unfinished(&self, saga_type: &str) -> Result<Vec<(SagaStatus, u64)>, SagaError> {
        let rows = sqlx::query(
            "SELECT status, count(*) AS n FROM annals_sagas
             WHERE tenant_id = $2 AND saga_type = $1 AND status IN ('pending', 'running', 'compensating')
             GROUP BY status ORDER BY status",
        )
        .bind(saga_type)
        .bind(self.tenant.as_str())
        .fetch_all(&self.pool)
        .await
        .map_err(|e| saga_error("counting unfinished sagas", e))?;
        rows.iter()
            .map(|row| {
                let get = |e| saga_error("reading saga counts", e);
                let status: String = row.try_get("status").map_err(get)?;
                let n: i64 = row.try_get("n").map_err(get)?;
                let status = SagaStatus::parse(&status)
                    .ok_or_else(|| corrupted(format!("unknown saga status `{status}`")))?;
                Ok((status, n.max(0) as u64))
            })
            .collect()
    }

    async fn claim_commands(
        &self,
        saga_type: &str,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<OutboxEntry>, SagaError> {
        let rows = sqlx::query(CLAIM)
            .bind(saga_type)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .bind(ms(lease))
            .bind(self.tenant.as_str())
            .fetch_all(&self.pool)
            .await
            .map_err(|e| saga_error("claiming saga commands", e))?;
        let mut entries = rows
            .iter()
            .map(decode_entry)
            .collect::<Result<Vec<_>, _>>()?;
        entries.sort_by_key(|e| e.id);
        Ok(entries)
    }

    async fn mark_delivered(&self, ids: &[u64]) -> Result<(), SagaError> {
        if ids.is_empty() {
            return Ok(());
        }
        // The worker marks each delivery as it succeeds. A mark that waits
        // for its WAL flush cost a durable commit per command (benches/
        // sagas.rs on a durable server: the worker part 368 ms for 600
        // commands); a lost mark only means one more delivery (at least
        // once, idempotency keys), and only a server crash can lose it, not
        // a worker's. So the statement's own transaction commits without
        // waiting for the flush (`set_config(…, true)` lasts until its end).
        let ids: Vec<i64> = ids.iter().map(|&i| to_i64(i)).collect();
        sqlx::query(
            "WITH lazy AS (SELECT set_config('synchronous_commit', 'off', true))
             UPDATE annals_saga_outbox SET dispatched_at = now()
               FROM lazy
              WHERE tenant_id = $2 AND id = ANY($1)
                AND dispatched_at IS NULL AND failed_at IS NULL AND NOT compensation",
        )
        .bind(&ids)
        .bind(self.tenant.as_str())
        .execute(&self.pool)
        .await
        .map_err(|e| saga_error("marking saga commands delivered", e))?;
        Ok(())
    }

    async fn record_outcome<F>(
        &self,
        command: &OutboxEntry,
        outcome: CommandOutcome,
        decide: F,
    ) -> Result<(), SagaError>
    where
        F: FnOnce(SagaRecord, SagaProgress) -> Result<Option<SagaChange>, SagaError> + Send,
    {
        let id = to_i64(command.id);
        if let CommandOutcome::Retry { error, after } = &outcome {
            sqlx::query(
                "WITH o AS (
                     UPDATE annals_saga_outbox SET last_error = $2,
                            next_attempt_at = now() + $3::float8 * interval '1 millisecond'
                      WHERE tenant_id = $6 AND id = $1 AND dispatched_at IS NULL AND failed_at IS NULL
                 )
                 UPDATE annals_sagas SET retry_count = retry_count + 1, error_message = $4, updated_at = now()
                  WHERE tenant_id = $6 AND saga_id = $5",
            )
            .bind(id)
            .bind(error)
            .bind(ms(*after))
            .bind(format!(
                "command `{}` attempt {} failed: {error}",
                command.command_type, command.attempts
            ))
            .bind(command.saga_id)
            .bind(self.tenant.as_str())
            .execute(&self.pool)
            .await
            .map_err(|e| saga_error("scheduling a saga command's retry", e))?;
            return Ok(());
        }
        let fail = |e| saga_error("recording a saga command's outcome", e);
        let mut conn = self.pool.acquire().await.map_err(fail)?;
        let mut tx = conn.begin().await.map_err(fail)?;
        // the saga first, as the projection does: one lock order
        let saga = sqlx::query(concat!(
            "SELECT ",
            saga_columns!(),
            " FROM annals_sagas WHERE tenant_id = $2 AND saga_id = $1 FOR UPDATE"
        ))
        .bind(command.saga_id)
        .bind(self.tenant.as_str())
        .fetch_optional(&mut *tx)
        .await
        .map_err(fail)?;
        match &outcome {
            CommandOutcome::Delivered => sqlx::query(
                "UPDATE annals_saga_outbox SET dispatched_at = now()
                 WHERE tenant_id = $2 AND id = $1 AND dispatched_at IS NULL AND failed_at IS NULL",
            )
            .bind(id)
            .bind(self.tenant.as_str()),
            CommandOutcome::Abandoned { error } => sqlx::query(
                "UPDATE annals_saga_outbox SET failed_at = now(), last_error = $2
                 WHERE tenant_id = $3 AND id = $1 AND dispatched_at IS NULL AND failed_at IS NULL",
            )
            .bind(id)
            .bind(error)
            .bind(self.tenant.as_str()),
            CommandOutcome::Retry { .. } => return Ok(()),
        }
        .execute(&mut *tx)
        .await
        .map_err(fail)?;
        if let Some(saga) = saga {
            let saga = decode_saga(&saga)?;
            let row = sqlx::query(
                "SELECT count(*) FILTER (WHERE dispatched_at IS NULL AND failed_at IS NULL) AS outstanding,
                        count(*) FILTER (WHERE step = $2 AND compensation = $3 AND dispatched_at IS NOT NULL) AS delivered
                   FROM annals_saga_outbox WHERE tenant_id = $4 AND saga_id = $1",
            )
            .bind(command.saga_id)
            .bind(i32::try_from(command.step).unwrap_or(i32::MAX))
            .bind(command.compensation)
            .bind(self.tenant.as_str())
            .fetch_one(&mut *tx)
            .await
            .map_err(fail)?;
            let outstanding: i64 = row.try_get("outstanding").map_err(fail)?;
            let delivered: i64 = row.try_get("delivered").map_err(fail)?;
            let progress = SagaProgress {
                outstanding: outstanding.max(0) as u64,
                step_delivered: delivered.max(0) as u64,
                attempted_steps: attempted_steps_on(&mut tx, &self.tenant, command.saga_id).await?,
            };
            if let Some(change) = decide(saga, progress)? {
                save_on(&mut tx, &self.tenant, &change).await?;
            }
        }
        tx.commit().await.map_err(fail)?;
        Ok(())
    }

    async fn fire_due_timeouts<F>(
        &self,
        saga_type: &str,
        limit: usize,
        mut decide: F,
    ) -> Result<usize, SagaError>
    where
        F: FnMut(SagaRecord, &[u32]) -> Result<Option<SagaChange>, SagaError> + Send,
    {
        let fail = |e| saga_error("firing saga timeouts", e);
        // one cheap probe first: most scans find nothing due, and then need
        // no transaction
        let due: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM annals_sagas
                             WHERE tenant_id = $2 AND saga_type = $1
                               AND deadline_at IS NOT NULL AND deadline_at <= now()
                               AND status IN ('pending', 'running'))",
        )
        .bind(saga_type)
        .bind(self.tenant.as_str())
        .fetch_one(&self.pool)
        .await
        .map_err(fail)?;
        if !due {
            return Ok(0);
        }
        let mut conn = self.pool.acquire().await.map_err(fail)?;
        let mut tx = conn.begin().await.map_err(fail)?;
        let rows = sqlx::query(concat!(
            "SELECT ",
            saga_columns!(),
            " FROM annals_sagas
             WHERE tenant_id = $3 AND saga_type = $1 AND deadline_at IS NOT NULL AND deadline_at <= now()
               AND status IN ('pending', 'running')
             ORDER BY deadline_at
             LIMIT $2
             FOR UPDATE SKIP LOCKED"
        ))
        .bind(saga_type)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .bind(self.tenant.as_str())
        .fetch_all(&mut *tx)
        .await
        .map_err(fail)?;
        let mut changed = 0;
        for row in &rows {
            let saga = decode_saga(row)?;
            let attempted = attempted_steps_on(&mut tx, &self.tenant, saga.saga_id).await?;
            if let Some(change) = decide(saga, &attempted)? {
                save_on(&mut tx, &self.tenant, &change).await?;
                changed += 1;
            }
        }
        tx.commit().await.map_err(fail)?;
        Ok(changed)
    }
}

/// A failed saga statement as its typed error: a value the database
/// refuses ([`is_refused_value`]: a data exception such as NUL in text, a
/// constraint violation, an index row too long) is [`SagaError::Refused`],
/// which parks the event that carried it; anything else is
/// [`SagaError::Backend`], a failure of the database, which the breaker
/// counts.
fn saga_error(context: &'static str, e: sqlx::Error) -> SagaError {
    if is_refused_value(&e) {
        SagaError::Refused {
            context,
            source: Box::new(e),
        }
    } else {
        SagaError::backend(context, e)
    }
}
