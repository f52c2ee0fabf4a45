//! The Postgres projection store: checkpoints, ownership leases (advisory
//! locks) and the dead-letter queue.

use std::collections::HashMap;
use std::time::Duration;

use annals_core::store::limits::check_projection_name;
use annals_core::{
    dead_letter::DeadLetter, dead_letter::DeadLetterQuery, dead_letter::DeadLetterStatus,
    dead_letter::DeadLetterStore, dead_letter::NewDeadLetter, projection::Checkpoint,
    projection::Lease, projection::ProjectionStatus, Error, LogPosition, ProjectionStore, TenantId,
};
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, PgPool, Postgres, Row};

use crate::error::db;

/// Checkpoints, ownership and dead letters of projection runners, on the
/// tables `annals_projection_checkpoints` and `annals_dead_letters`.
///
/// A runner's batch writes the projection's read model, its checkpoint and
/// any dead letters in one Postgres transaction, so each event is applied
/// exactly once, also across crashes. Ownership is a session-level advisory
/// lock held on a dedicated connection: when the owning process dies, or its
/// connection does, Postgres releases the lock and a standby takes over.
///
/// ```no_run
/// # async fn demo(pool: sqlx::PgPool, store: annals::postgres::PgEventStore) {
/// use annals::postgres::PgProjectionStore;
/// let projections = PgProjectionStore::new(pool);
/// // ProjectionRunner::new(store, projections, Arc::new(MyProjection)).spawn();
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct PgProjectionStore {
    pool: PgPool,
    /// The tenant whose rows this handle reads and writes.
    tenant: TenantId,
}

/// Ownership of one projection: a session-level advisory lock on a
/// connection of its own, released when this is dropped or the connection
/// dies, and the lease epoch its holder wrote into the checkpoint row when
/// it took the lock (see [`ProjectionStore::advance`]: a checkpoint moves
/// only under the current epoch, which fences off an owner that lost its
/// lock without noticing).
#[derive(Debug)]
pub struct PgLease {
    conn: Option<PgConnection>,
    key: i64,
    tenant: TenantId,
    projection: String,
    epoch: i64,
}

impl Lease for PgLease {
    async fn is_held(&mut self) -> bool {
        let Some(conn) = self.conn.as_mut() else {
            return false;
        };
        let epoch = tokio::time::timeout(
            Duration::from_secs(10),
            sqlx::query_scalar::<_, i64>(
                "SELECT lease_epoch FROM annals_projection_checkpoints
                  WHERE tenant_id = $2 AND projection_name = $1",
            )
            .bind(&self.projection)
            .bind(self.tenant.as_str())
            .fetch_optional(&mut *conn),
        )
        .await;
        match epoch {
            Ok(Ok(epoch)) => epoch == Some(self.epoch),
            _ => {
                // the connection is gone (and with it the lock): forget it
                self.conn = None;
                false
            }
        }
    }

    async fn release(mut self) {
        if let Some(mut conn) = self.conn.take() {
            let unlocked = sqlx::query("SELECT pg_advisory_unlock($1)")
                .bind(self.key)
                .execute(&mut conn)
                .await;
            if let Err(e) = unlocked {
                tracing::debug!(error = %e, "unlocking a projection lease failed; closing its connection releases it");
            }
            let _ = sqlx::Connection::close(conn).await;
        }
    }
}

/// The advisory-lock key of a projection of a tenant: 64 bits of a hash of
/// its names, in a namespace of annals' own. The default tenant's keys are
/// those of the releases before tenants (`annals.projection:{name}`), so a
/// process of an older release and one of this one never own a projection
/// at once; another tenant's are `annals.projection:{tenant}/{name}` (a
/// tenant id holds no `/`, so two pairs never share a text).
fn lock_key(tenant: &TenantId, projection: &str) -> i64 {
    let text = if tenant.as_str() == TenantId::DEFAULT_NAME {
        format!("annals.projection:{projection}")
    } else {
        format!("annals.projection:{tenant}/{projection}")
    };
    let digest = Sha256::digest(text.as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(bytes)
}

const CHECKPOINT_COLUMNS: &str = "projection_name, transaction_id::text::int8 AS tx, position, last_event_at, updated_at, status, error, error_position";
const DEAD_LETTER_COLUMNS: &str = "id, handler, event_position, event_id, stream_id, event_type, error, attempts, first_failed_at, last_failed_at, status, resolved_at, discard_reason, blocked_by";

fn decode_checkpoint(row: &PgRow) -> Result<Checkpoint, Error> {
    let err = db("reading a projection checkpoint");
    let projection: String = row.try_get(0).map_err(&err)?;
    let status: String = row.try_get(5).map_err(&err)?;
    let tx: i64 = row.try_get(1).map_err(&err)?;
    let position: i64 = row.try_get(2).map_err(&err)?;
    let error_position: Option<i64> = row.try_get(7).map_err(&err)?;
    Ok(Checkpoint {
        status: ProjectionStatus::parse(&status).ok_or_else(|| Error::CorruptedRow {
            position: None,
            message: format!("projection `{projection}` has an unknown status `{status}`"),
        })?,
        projection,
        position: LogPosition::new(tx.max(0) as u64, position.max(0) as u64),
        last_event_at: row.try_get(3).map_err(&err)?,
        updated_at: row.try_get(4).map_err(&err)?,
        error: row.try_get(6).map_err(&err)?,
        error_position: error_position.map(|p| p.max(0) as u64),
    })
}

fn decode_dead_letter(row: &PgRow) -> Result<DeadLetter, Error> {
    let err = db("reading a dead letter");
    let id: i64 = row.try_get(0).map_err(&err)?;
    let status: String = row.try_get(10).map_err(&err)?;
    let position: i64 = row.try_get(2).map_err(&err)?;
    let attempts: i32 = row.try_get(7).map_err(&err)?;
    let blocked_by: Option<i64> = row.try_get(13).map_err(&err)?;
    Ok(DeadLetter {
        id: id.max(0) as u64,
        handler: row.try_get(1).map_err(&err)?,
        event_position: position.max(0) as u64,
        event_id: row.try_get(3).map_err(&err)?,
        stream_id: row.try_get(4).map_err(&err)?,
        event_type: row.try_get(5).map_err(&err)?,
        error: row.try_get(6).map_err(&err)?,
        attempts: attempts.max(0) as u32,
        first_failed_at: row.try_get(8).map_err(&err)?,
        last_failed_at: row.try_get(9).map_err(&err)?,
        status: DeadLetterStatus::parse(&status).ok_or_else(|| Error::CorruptedRow {
            position: Some(position.max(0) as u64),
            message: format!("dead letter {id} has an unknown status `{status}`"),
        })?,
        resolved_at: row.try_get(11).map_err(&err)?,
        discard_reason: row.try_get(12).map_err(&err)?,
        blocked_by: blocked_by.map(|p| p.max(0) as u64),
    })
}

fn int8(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl PgProjectionStore {
    /// A projection store on `pool` (run [`migrate`](crate::migrate) first).
    pub fn new(pool: PgPool) -> Self {
        PgProjectionStore {
            pool,
            tenant: TenantId::default(),
        }
    }

    /// The connection pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Pauses a projection: marks it `stopped` and fences off its owner.
    ///
    /// The lease epoch moves on, so the runner that owns the projection
    /// commits no further batch (its checkpoint move fails, as for an owner
    /// that lost its lock) and lets go at its next lease check; no runner
    /// (in any process) takes a paused projection until
    /// [`resume`](Self::resume): `try_acquire` answers as if another runner
    /// owned it, so `run` stands by and `catch_up` / `rebuild` fail with
    /// `NotOwner`. Returns `false` when the projection has no checkpoint or
    /// is already paused.
    pub async fn pause(&self, projection: &str) -> Result<bool, Error> {
        check_projection_name(projection)?;
        let done = sqlx::query(
            "UPDATE annals_projection_checkpoints
                SET status = 'stopped', lease_epoch = lease_epoch + 1, updated_at = now()
              WHERE tenant_id = $2 AND projection_name = $1 AND status <> 'stopped'",
        )
        .bind(projection)
        .bind(self.tenant.as_str())
        .execute(&self.pool)
        .await
        .map_err(db("pausing a projection"))?;
        Ok(done.rows_affected() == 1)
    }

    /// Resumes a paused projection: marks it `running` again, so a runner
    /// standing by takes it over at its next attempt. Returns `false` when
    /// it is not paused.
    pub async fn resume(&self, projection: &str) -> Result<bool, Error> {
        check_projection_name(projection)?;
        let done = sqlx::query(
            "UPDATE annals_projection_checkpoints
                SET status = 'running', error = NULL, error_position = NULL, updated_at = now()
              WHERE tenant_id = $2 AND projection_name = $1 AND status = 'stopped'",
        )
        .bind(projection)
        .bind(self.tenant.as_str())
        .execute(&self.pool)
        .await
        .map_err(db("resuming a projection"))?;
        Ok(done.rows_affected() == 1)
    }
}

impl DeadLetterStore for PgProjectionStore {
    async fn list_dead_letters(&self, query: &DeadLetterQuery) -> Result<Vec<DeadLetter>, Error> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {DEAD_LETTER_COLUMNS} FROM annals_dead_letters
             WHERE tenant_id = $5
               AND ($1::text IS NULL OR handler = $1)
               AND ($2::text IS NULL OR status = $2)
               AND id > $3
             ORDER BY id LIMIT $4"
        )))
        .bind(query.handler.as_deref())
        .bind(query.status.map(|s| s.as_str()))
        .bind(int8(query.after_id))
        .bind(int8(query.limit as u64))
        .bind(self.tenant.as_str())
        .fetch_all(&self.pool)
        .await
        .map_err(db("listing dead letters"))?;
        rows.iter().map(decode_dead_letter).collect()
    }

    async fn dead_letter(&self, id: u64) -> Result<Option<DeadLetter>, Error> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {DEAD_LETTER_COLUMNS} FROM annals_dead_letters WHERE tenant_id = $2 AND id = $1"
        )))
        .bind(int8(id))
        .bind(self.tenant.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(db("reading a dead letter"))?;
        row.as_ref().map(decode_dead_letter).transpose()
    }

    async fn discard_dead_letter(&self, id: u64, reason: &str) -> Result<bool, Error> {
        annals_core::store::limits::check_discard_reason(reason)?;
        let done = sqlx::query(
            "UPDATE annals_dead_letters
                SET status = 'discarded', resolved_at = now(), discard_reason = $2
              WHERE tenant_id = $3 AND id = $1 AND status = 'pending'",
        )
        .bind(int8(id))
        .bind(reason)
        .bind(self.tenant.as_str())
        .execute(&self.pool)
        .await
        .map_err(db("discarding a dead letter"))?;
        Ok(done.rows_affected() == 1)
    }

    async fn pending_dead_letters(&self, handler: &str) -> Result<u64, Error> {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM annals_dead_letters
              WHERE tenant_id = $2 AND handler = $1 AND status = 'pending'",
        )
        .bind(handler)
        .bind(self.tenant.as_str())
        .fetch_one(&self.pool)
        .await
        .map_err(db("counting pending dead letters"))?;
        Ok(n.max(0) as u64)
    }
}

impl ProjectionStore for PgProjectionStore {
    type Transaction = sqlx::Transaction<'static, Postgres>;
    type Conn = PgConnection;
    type Lease = PgLease;

    const TRANSACTIONAL: bool = true;

    fn conn(tx: &mut Self::Transaction) -> &mut PgConnection {
        tx
    }

    fn tenant_id(&self) -> &TenantId {
        &self.tenant
    }

    fn in_tenant(&self, tenant: TenantId) -> Self {
        PgProjectionStore {
            pool: self.pool.clone(),
            tenant,
        }
    }

    async fn begin(&self) -> Result<Self::Transaction, Error> {
        self.pool
            .begin()
            .await
            .map_err(db("opening a projection transaction"))
    }

    async fn commit(&self, tx: Self::Transaction) -> Result<(), Error> {
        tx.commit()
            .await
            .map_err(db("committing a projection transaction"))
    }

    async fn try_acquire(&self, projection: &str) -> Result<Option<PgLease>, Error> {
        check_projection_name(projection)?;
        // a connection of its own, outside the pool: the lock lives as long
        // as this session, and must never go back to the pool with it
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(db("connecting for a projection lease"))?
            .detach();
        let key = lock_key(&self.tenant, projection);
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(key)
            .fetch_one(&mut conn)
            .await
            .map_err(db("taking a projection's advisory lock"))?;
        if locked {
            // a new epoch: from now on the previous owner's checkpoint moves
            // fail (it waits for that owner's batch in flight, if that batch
            // already moved the checkpoint, because it locks the same row).
            // A paused projection (status `stopped`, see `pause`) is not
            // taken: no row comes back, and the lock is given up below.
            let epoch = sqlx::query_scalar::<_, i64>(
                "INSERT INTO annals_projection_checkpoints (tenant_id, projection_name, lease_epoch)
                 VALUES ($2, $1, 1)
                 ON CONFLICT (tenant_id, projection_name)
                 DO UPDATE SET lease_epoch = annals_projection_checkpoints.lease_epoch + 1
                    WHERE annals_projection_checkpoints.status <> 'stopped'
                 RETURNING lease_epoch",
            )
            .bind(projection)
            .bind(self.tenant.as_str())
            .fetch_optional(&mut conn)
            .await
            .map_err(db("starting a projection lease"));
            match epoch {
                Ok(None) => {
                    let _ = sqlx::Connection::close(conn).await;
                    Ok(None)
                }
                Ok(Some(epoch)) => Ok(Some(PgLease {
                    conn: Some(conn),
                    key,
                    tenant: self.tenant.clone(),
                    projection: projection.to_owned(),
                    epoch,
                })),
                Err(e) => {
                    let _ = sqlx::Connection::close(conn).await;
                    Err(e)
                }
            }
        } else {
            let _ = sqlx::Connection::close(conn).await;
            Ok(None)
        }
    }

    async fn checkpoint(&self, projection: &str) -> Result<Option<Checkpoint>, Error> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {CHECKPOINT_COLUMNS} FROM annals_projection_checkpoints
              WHERE tenant_id = $2 AND projection_name = $1"
        )))
        .bind(projection)
        .bind(self.tenant.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(db("reading a projection checkpoint"))?;
        row.as_ref().map(decode_checkpoint).transpose()
    }

    async fn checkpoints(&self) -> Result<Vec<Checkpoint>, Error> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {CHECKPOINT_COLUMNS} FROM annals_projection_checkpoints
              WHERE tenant_id = $1 ORDER BY projection_name"
        )))
        .bind(self.tenant.as_str())
        .fetch_all(&self.pool)
        .await
        .map_err(db("reading projection checkpoints"))?;
        rows.iter().map(decode_checkpoint).collect()
    }

    async fn init_checkpoint(&self, projection: &str) -> Result<Checkpoint, Error> {
        check_projection_name(projection)?;
        sqlx::query(
            "INSERT INTO annals_projection_checkpoints (tenant_id, projection_name) VALUES ($2, $1)
             ON CONFLICT (tenant_id, projection_name) DO NOTHING",
        )
        .bind(projection)
        .bind(self.tenant.as_str())
        .execute(&self.pool)
        .await
        .map_err(db("creating a projection checkpoint"))?;
        self.checkpoint(projection)
            .await?
            .ok_or_else(|| Error::CorruptedRow {
                position: None,
                message: format!("the checkpoint of projection `{projection}` vanished right after it was created"),
            })
    }

    async fn advance(
        &self,
        tx: &mut Self::Transaction,
        lease: &PgLease,
        projection: &str,
        from: LogPosition,
        to: LogPosition,
        last_event_at: Option<DateTime<Utc>>,
    ) -> Result<bool, Error> {
        let done = sqlx::query(
            "UPDATE annals_projection_checkpoints
                SET transaction_id = $4::text::xid8, position = $5,
                    last_event_at = COALESCE($6, last_event_at), updated_at = now(),
                    status = 'running', error = NULL, error_position = NULL
              WHERE tenant_id = $8 AND projection_name = $1
                AND transaction_id = $2::text::xid8 AND position = $3
                AND lease_epoch = $7",
        )
        .bind(projection)
        .bind(from.transaction_id.to_string())
        .bind(int8(from.position))
        .bind(to.transaction_id.to_string())
        .bind(int8(to.position))
        .bind(last_event_at)
        .bind(lease.epoch)
        .bind(self.tenant.as_str())
        .execute(&mut **tx)
        .await
        .map_err(db("moving a projection checkpoint"))?;
        Ok(done.rows_affected() == 1)
    }

    async fn reset(&self, tx: &mut Self::Transaction, projection: &str) -> Result<(), Error> {
        // a pause that came in since the rebuild took its lease stays
        sqlx::query(
            "UPDATE annals_projection_checkpoints
                SET transaction_id = '0', position = 0, last_event_at = NULL, updated_at = now(),
                    status = CASE status WHEN 'stopped' THEN 'stopped' ELSE 'running' END,
                    error = NULL, error_position = NULL
              WHERE tenant_id = $2 AND projection_name = $1",
        )
        .bind(projection)
        .bind(self.tenant.as_str())
        .execute(&mut **tx)
        .await
        .map_err(db("resetting a projection checkpoint"))?;
        Ok(())
    }

    async fn mark_failed(
        &self,
        lease: &PgLease,
        projection: &str,
        error: &str,
        position: u64,
    ) -> Result<(), Error> {
        // the row exists: taking the lease wrote its epoch
        sqlx::query(
            "UPDATE annals_projection_checkpoints
                SET status = 'failed', error = $2, error_position = $3, updated_at = now()
              WHERE tenant_id = $5 AND projection_name = $1 AND lease_epoch = $4",
        )
        .bind(projection)
        .bind(error)
        .bind(int8(position))
        .bind(lease.epoch)
        .bind(self.tenant.as_str())
        .execute(&self.pool)
        .await
        .map_err(db("marking a projection failed"))?;
        Ok(())
    }

    async fn park(&self, tx: &mut Self::Transaction, letter: &NewDeadLetter) -> Result<u64, Error> {
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO annals_dead_letters AS d
                 (tenant_id, handler, event_position, event_id, stream_id, event_type, error, attempts, blocked_by)
             VALUES ($9, $1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (tenant_id, handler, event_id) DO UPDATE
                SET error = EXCLUDED.error, attempts = d.attempts + EXCLUDED.attempts,
                    last_failed_at = now(), status = 'pending', resolved_at = NULL,
                    discard_reason = NULL, blocked_by = EXCLUDED.blocked_by
             RETURNING id",
        )
        .bind(&letter.handler)
        .bind(int8(letter.event_position))
        .bind(letter.event_id)
        .bind(&letter.stream_id)
        .bind(&letter.event_type)
        .bind(&letter.error)
        .bind(i32::try_from(letter.attempts).unwrap_or(i32::MAX))
        .bind(letter.blocked_by.map(int8))
        .bind(self.tenant.as_str())
        .fetch_one(&mut **tx)
        .await
        .map_err(db("parking a dead letter"))?;
        Ok(id.max(0) as u64)
    }

    async fn pending_streams(&self, handler: &str) -> Result<HashMap<String, u64>, Error> {
        let rows = sqlx::query(
            "SELECT stream_id, min(event_position) FROM annals_dead_letters
              WHERE tenant_id = $2 AND handler = $1 AND status = 'pending' GROUP BY stream_id",
        )
        .bind(handler)
        .bind(self.tenant.as_str())
        .fetch_all(&self.pool)
        .await
        .map_err(db("reading the streams with dead letters"))?;
        rows.iter()
            .map(|row| {
                let stream: String = row.try_get(0).map_err(db("reading a dead letter"))?;
                let first: i64 = row.try_get(1).map_err(db("reading a dead letter"))?;
                Ok((stream, first.max(0) as u64))
            })
            .collect()
    }

    async fn lock_dead_letter(
        &self,
        tx: &mut Self::Transaction,
        id: u64,
    ) -> Result<Option<DeadLetter>, Error> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {DEAD_LETTER_COLUMNS} FROM annals_dead_letters
              WHERE tenant_id = $2 AND id = $1 AND status = 'pending' FOR UPDATE"
        )))
        .bind(int8(id))
        .bind(self.tenant.as_str())
        .fetch_optional(&mut **tx)
        .await
        .map_err(db("locking a dead letter"))?;
        row.as_ref().map(decode_dead_letter).transpose()
    }

    async fn resolve_dead_letter(&self, tx: &mut Self::Transaction, id: u64) -> Result<(), Error> {
        sqlx::query(
            "UPDATE annals_dead_letters SET status = 'resolved', resolved_at = now()
              WHERE tenant_id = $2 AND id = $1 AND status = 'pending'",
        )
        .bind(int8(id))
        .bind(self.tenant.as_str())
        .execute(&mut **tx)
        .await
        .map_err(db("resolving a dead letter"))?;
        Ok(())
    }

    async fn record_replay_failure(&self, id: u64, error: &str) -> Result<(), Error> {
        sqlx::query(
            "UPDATE annals_dead_letters
                SET attempts = attempts + 1, error = $2, last_failed_at = now()
              WHERE tenant_id = $3 AND id = $1",
        )
        .bind(int8(id))
        .bind(error)
        .bind(self.tenant.as_str())
        .execute(&self.pool)
        .await
        .map_err(db("recording a failed replay"))?;
        Ok(())
    }

    async fn discard_all_dead_letters(
        &self,
        tx: &mut Self::Transaction,
        handler: &str,
        reason: &str,
    ) -> Result<u64, Error> {
        let done = sqlx::query(
            "UPDATE annals_dead_letters
                SET status = 'discarded', resolved_at = now(), discard_reason = $2
              WHERE tenant_id = $3 AND handler = $1 AND status = 'pending'",
        )
        .bind(handler)
        .bind(reason)
        .bind(self.tenant.as_str())
        .execute(&mut **tx)
        .await
        .map_err(db("discarding dead letters"))?;
        Ok(done.rows_affected())
    }
}
