//! Subject keys on Postgres (`annals_subject_keys`, migration 0011).

use std::sync::Arc;

use annals_core::personal::{
    wrapping_name, DataKey, KeyProvider, KeyRotation, PersonalError, SubjectKeys, WrappedKey,
};
use annals_core::store::limits::check_subject;
use annals_core::TenantId;
use sqlx::{PgPool, Row as _};

/// Each subject's data key in `annals_subject_keys`, wrapped by the
/// current key-encryption key; forgotten subjects are tombstones. Keys
/// survive restarts; a KEK rotation ([`rotate_to`](Self::rotate_to), then
/// [`rewrap`](SubjectKeys::rewrap) until nothing remains) can stop and go
/// on in another process.
///
/// A [`PersonalStore`](annals_core::personal::PersonalStore) over a
/// `PgEventStore` of the same database seals events with them. A new
/// key's row commits without waiting for its WAL flush (the first durable
/// commit after it, such as the event it seals, flushes it too): a key
/// used to seal data kept *outside* this database should be followed by a
/// durable commit on it before that data is written.
#[derive(Debug)]
pub struct PgSubjectKeys<P> {
    pool: PgPool,
    current: Arc<P>,
    older: Arc<Vec<Arc<P>>>,
    tenant: TenantId,
}

impl<P> Clone for PgSubjectKeys<P> {
    fn clone(&self) -> Self {
        PgSubjectKeys {
            pool: self.pool.clone(),
            current: self.current.clone(),
            older: self.older.clone(),
            tenant: self.tenant.clone(),
        }
    }
}

fn backend(context: &'static str) -> impl Fn(sqlx::Error) -> PersonalError {
    move |e| PersonalError::Backend {
        context,
        source: Box::new(e),
    }
}

enum Stored {
    Key(WrappedKey),
    Tombstone,
}

impl<P: KeyProvider> PgSubjectKeys<P> {
    /// Keys wrapped by `kek`, on `pool` (migrated).
    pub fn new(pool: PgPool, kek: P) -> Self {
        PgSubjectKeys {
            pool,
            current: Arc::new(kek),
            older: Arc::new(Vec::new()),
            tenant: TenantId::default(),
        }
    }

    /// These keys with `kek` as the current KEK, the one before it kept to
    /// unwrap the keys not re-wrapped yet.
    pub fn rotate_to(self, kek: P) -> Self {
        let mut older: Vec<Arc<P>> = self.older.iter().cloned().collect();
        older.push(self.current);
        PgSubjectKeys {
            pool: self.pool,
            current: Arc::new(kek),
            older: Arc::new(older),
            tenant: self.tenant,
        }
    }

    /// An older KEK to unwrap keys with (a process that resumes a rotation
    /// another one started).
    pub fn with_older_kek(self, kek: P) -> Self {
        let mut older: Vec<Arc<P>> = self.older.iter().cloned().collect();
        older.push(Arc::new(kek));
        PgSubjectKeys {
            older: Arc::new(older),
            ..self
        }
    }

    async fn stored(&self, subject: &str) -> Result<Option<Stored>, PersonalError> {
        let row =
            sqlx::query("SELECT kek_id, wrapped_key FROM annals_subject_keys WHERE tenant_id = $2 AND subject = $1")
                .bind(subject)
                .bind(self.tenant.as_str())
                .fetch_optional(&self.pool)
                .await
                .map_err(backend("reading a subject key"))?;
        let Some(row) = row else { return Ok(None) };
        let kek_id: Option<String> = row.try_get(0).map_err(backend("reading a subject key"))?;
        let bytes: Option<Vec<u8>> = row.try_get(1).map_err(backend("reading a subject key"))?;
        Ok(Some(match (kek_id, bytes) {
            (Some(kek_id), Some(bytes)) => Stored::Key(WrappedKey { kek_id, bytes }),
            _ => Stored::Tombstone,
        }))
    }

    async fn unwrap(
        &self,
        tenant: &TenantId,
        subject: &str,
        wrapped: &WrappedKey,
    ) -> Result<DataKey, PersonalError> {
        let provider = std::iter::once(&self.current)
            .chain(self.older.iter().rev())
            .find(|p| p.kek_id() == wrapped.kek_id)
            .ok_or_else(|| PersonalError::WrongKek {
                subject: subject.to_owned(),
                kek_id: wrapped.kek_id.clone(),
            })?;
        provider
            .unwrap(&wrapping_name(tenant, subject), wrapped)
            .await
    }
}

impl<P: KeyProvider> SubjectKeys for PgSubjectKeys<P> {
    async fn key_for_writing(&self, subject: &str) -> Result<DataKey, PersonalError> {
        check_subject(subject)?;
        match self.stored(subject).await? {
            Some(Stored::Key(wrapped)) => {
                return self.unwrap(&self.tenant, subject, &wrapped).await
            }
            Some(Stored::Tombstone) => {
                return Err(PersonalError::Forgotten {
                    subject: subject.to_owned(),
                })
            }
            None => {}
        }
        let key = DataKey::generate();
        let wrapped = self
            .current
            .wrap(&wrapping_name(&self.tenant, subject), &key)
            .await?;
        // A new key's row commits without waiting for its WAL flush: the
        // events it seals commit after it on the same server, durably, and
        // their flush carries the key's commit record with it (the WAL is
        // written in order). A crash before then loses only a key nothing
        // durable was sealed with. Waiting cost a second durable commit per
        // new subject (benches/personal.rs, "append, new subject").
        let inserted = sqlx::query(
            "INSERT INTO annals_subject_keys (tenant_id, subject, kek_id, wrapped_key)
             SELECT $4, $1, $2, $3 FROM (SELECT set_config('synchronous_commit', 'off', true)) AS lazy
             ON CONFLICT (tenant_id, subject) DO NOTHING",
        )
        .bind(subject)
        .bind(&wrapped.kek_id)
        .bind(&wrapped.bytes)
        .bind(self.tenant.as_str())
        .execute(&self.pool)
        .await
        .map_err(backend("creating a subject key"))?;
        if inserted.rows_affected() == 1 {
            return Ok(key);
        }
        // another writer created it (or a forget came) first: theirs wins
        match self.stored(subject).await? {
            Some(Stored::Key(theirs)) => self.unwrap(&self.tenant, subject, &theirs).await,
            _ => Err(PersonalError::Forgotten {
                subject: subject.to_owned(),
            }),
        }
    }

    async fn key_for_reading(&self, subject: &str) -> Result<Option<DataKey>, PersonalError> {
        match self.stored(subject).await? {
            Some(Stored::Key(wrapped)) => {
                self.unwrap(&self.tenant, subject, &wrapped).await.map(Some)
            }
            Some(Stored::Tombstone) | None => Ok(None),
        }
    }

    async fn forget(&self, subject: &str) -> Result<bool, PersonalError> {
        check_subject(subject)?;
        // the key's bytes are overwritten in place, and the row stays as
        // the tombstone
        let had: Option<bool> = sqlx::query_scalar(
            "WITH before AS (
                 SELECT wrapped_key IS NOT NULL AS had FROM annals_subject_keys
                  WHERE tenant_id = $2 AND subject = $1 FOR UPDATE
             ), tombstone AS (
                 INSERT INTO annals_subject_keys (tenant_id, subject, kek_id, wrapped_key, forgotten_at)
                 VALUES ($2, $1, NULL, NULL, now())
                 ON CONFLICT (tenant_id, subject) DO UPDATE
                    SET kek_id = NULL, wrapped_key = NULL,
                        forgotten_at = COALESCE(annals_subject_keys.forgotten_at, now())
             )
             SELECT had FROM before",
        )
        .bind(subject)
        .bind(self.tenant.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(backend("forgetting a subject"))?;
        Ok(had.unwrap_or(false))
    }

    async fn start_again(&self, subject: &str) -> Result<(), PersonalError> {
        sqlx::query(
            "DELETE FROM annals_subject_keys
              WHERE tenant_id = $2 AND subject = $1 AND forgotten_at IS NOT NULL",
        )
        .bind(subject)
        .bind(self.tenant.as_str())
        .execute(&self.pool)
        .await
        .map_err(backend("starting a subject again"))?;
        Ok(())
    }

    async fn rewrap(&self, batch: usize) -> Result<KeyRotation, PersonalError> {
        let current = self.current.kek_id();
        let rows = sqlx::query(
            "SELECT subject, kek_id, wrapped_key, tenant_id FROM annals_subject_keys
              WHERE wrapped_key IS NOT NULL AND kek_id <> $1
              ORDER BY tenant_id, subject LIMIT $2",
        )
        .bind(current)
        .bind(i64::try_from(batch).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(backend("reading keys to re-wrap"))?;
        let mut rewrapped = 0;
        for row in rows {
            let read = backend("reading keys to re-wrap");
            let subject: String = row.try_get(0).map_err(&read)?;
            let old = WrappedKey {
                kek_id: row.try_get(1).map_err(&read)?,
                bytes: row.try_get(2).map_err(&read)?,
            };
            let tenant: String = row.try_get(3).map_err(&read)?;
            // a tenant id a hand-written row made invalid: re-wrapped under
            // the default tenant's name, as it was wrapped
            let tenant = TenantId::new(&tenant).unwrap_or_default();
            let key = self.unwrap(&tenant, &subject, &old).await?;
            let new = self
                .current
                .wrap(&wrapping_name(&tenant, &subject), &key)
                .await?;
            // only if the row is still what was read (not forgotten since)
            let done = sqlx::query(
                "UPDATE annals_subject_keys SET kek_id = $2, wrapped_key = $3
                  WHERE tenant_id = $6 AND subject = $1 AND kek_id = $4 AND wrapped_key = $5",
            )
            .bind(&subject)
            .bind(&new.kek_id)
            .bind(&new.bytes)
            .bind(&old.kek_id)
            .bind(&old.bytes)
            .bind(tenant.as_str())
            .execute(&self.pool)
            .await
            .map_err(backend("re-wrapping a key"))?;
            rewrapped += done.rows_affected();
        }
        let remaining: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM annals_subject_keys WHERE wrapped_key IS NOT NULL AND kek_id <> $1",
        )
        .bind(current)
        .fetch_one(&self.pool)
        .await
        .map_err(backend("counting keys to re-wrap"))?;
        Ok(KeyRotation {
            rewrapped,
            remaining: remaining.max(0) as u64,
        })
    }

    fn tenant_id(&self) -> &TenantId {
        &self.tenant
    }

    fn in_tenant(&self, tenant: TenantId) -> Self {
        PgSubjectKeys {
            tenant,
            ..self.clone()
        }
    }
}
