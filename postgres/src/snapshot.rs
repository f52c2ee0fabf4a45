use annals_core::{Error, Snapshot, SnapshotStore};
use serde_json::value::RawValue;
use sqlx::{PgPool, Row};

/// Snapshots in the `annals_snapshots` table: one row per aggregate, the
/// newest wins (an older snapshot of the same shape never replaces a newer
/// one; a snapshot of another shape or codec always replaces it).
#[derive(Debug, Clone)]
pub struct PgSnapshotStore {
    pool: PgPool,
}

impl PgSnapshotStore {
    /// A snapshot store on `pool` (run [`migrate`](crate::migrate) first).
    pub fn new(pool: PgPool) -> Self {
        PgSnapshotStore { pool }
    }
}

impl SnapshotStore for PgSnapshotStore {
    async fn load(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
    ) -> Result<Option<Snapshot>, Error> {
        let row = sqlx::query(
            "SELECT version, state::text AS state, fingerprint, codec_version
             FROM annals_snapshots WHERE aggregate_type = $1 AND aggregate_id = $2",
        )
        .bind(aggregate_type)
        .bind(aggregate_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| Error::backend("loading a snapshot", e))?;
        let Some(row) = row else {
            return Ok(None);
        };
        let read = |e| Error::backend("reading a snapshot row", e);
        let version: i64 = row.try_get("version").map_err(read)?;
        let state: String = row.try_get("state").map_err(read)?;
        let fingerprint: String = row.try_get("fingerprint").map_err(read)?;
        let codec_version: i32 = row.try_get("codec_version").map_err(read)?;
        let Ok(state) = RawValue::from_string(state) else {
            // jsonb always renders valid JSON; treat anything else as absent
            return Ok(None);
        };
        Ok(Some(Snapshot {
            aggregate_type: aggregate_type.to_owned(),
            aggregate_id: aggregate_id.to_owned(),
            version: version.max(0) as u64,
            state,
            fingerprint,
            codec_version: codec_version.max(0) as u32,
        }))
    }

    async fn save(&self, snapshot: Snapshot) -> Result<(), Error> {
        sqlx::query(
            "INSERT INTO annals_snapshots AS s (aggregate_type, aggregate_id, version, state, fingerprint, codec_version)
             VALUES ($1, $2, $3, $4::jsonb, $5, $6)
             ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE
                SET version = EXCLUDED.version, state = EXCLUDED.state,
                    fingerprint = EXCLUDED.fingerprint,
                    codec_version = EXCLUDED.codec_version, created_at = now()
              WHERE s.version < EXCLUDED.version
                 OR s.fingerprint <> EXCLUDED.fingerprint
                 OR s.codec_version <> EXCLUDED.codec_version",
        )
        .bind(&snapshot.aggregate_type)
        .bind(&snapshot.aggregate_id)
        .bind(snapshot.version.min(i64::MAX as u64) as i64)
        .bind(snapshot.state.get())
        .bind(&snapshot.fingerprint)
        .bind(snapshot.codec_version.min(i32::MAX as u32) as i32)
        .execute(&self.pool)
        .await
        .map_err(|e| Error::backend("saving a snapshot", e))?;
        Ok(())
    }
}
