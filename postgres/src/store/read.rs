//! Stream folds: the lean read (version, schema key, payload), and the
//! full one it falls back to for a key it cannot map.

use annals_core::store::{limits, PayloadRef, VersionRange};
use annals_core::{Error, TenantId};
use sqlx::PgConnection;

use super::{int8, limit_of, PgEventStore};
use crate::error::db;
use crate::keys::lookup;
use crate::rows::{fold_full_row, fold_lean_row, locate, next, Stop};
use crate::sql;

impl PgEventStore {
    /// Folds the payloads of a stream in `range` on `conn`, each row as it
    /// arrives: the lean read; from an event whose schema key is not known
    /// on, the full read.
    pub(crate) async fn fold_on<F>(
        &self,
        conn: &mut PgConnection,
        stream_id: &str,
        range: VersionRange,
        mut f: F,
    ) -> Result<u64, Error>
    where
        F: FnMut(PayloadRef<'_>) -> Result<(), Error> + Send,
    {
        limits::check_stream_id(stream_id)?;
        self.tenant.require_one("a stream read")?;
        if range.is_empty() {
            return Ok(0);
        }
        let keys = self.keys.snapshot();
        let mut rows = sqlx::query(sql::READ_PAYLOADS)
            .bind(stream_id)
            .bind(int8(range.first))
            .bind(limit_of(range))
            .bind(self.tenant.as_str())
            .fetch(&mut *conn);
        let mut n = 0;
        while let Some(row) = next(&mut rows).await {
            let row = row.map_err(db("reading a stream"))?;
            if let Err(stop) = fold_lean_row(&row, &keys, &mut f) {
                drop(rows);
                return self.stopped(conn, stream_id, range, *stop, n, &mut f).await;
            }
            n += 1;
        }
        Ok(n)
    }

    /// Goes on after a lean fold stopped, `folded` events into `range`:
    /// from the unmapped event with the full statement, or with the
    /// failure located.
    pub(crate) async fn stopped<F>(
        &self,
        conn: &mut PgConnection,
        stream_id: &str,
        range: VersionRange,
        stop: Stop,
        folded: u64,
        f: &mut F,
    ) -> Result<u64, Error>
    where
        F: FnMut(PayloadRef<'_>) -> Result<(), Error> + Send,
    {
        match stop {
            Stop::Unmapped(version) => {
                let rest = VersionRange {
                    first: version.max(1) as u64,
                    last: range.last,
                };
                Ok(folded + self.fold_full(conn, stream_id, rest, f).await?)
            }
            Stop::Failed(version, e) => {
                Err(locate(conn, &self.tenant, stream_id, version, e).await)
            }
        }
    }

    /// Folds the payloads of a stream in `range` with read_full_payloads.sql
    /// (type and schema version read from their columns), and learns the
    /// schema keys it meets, so that the next lean read maps them.
    async fn fold_full<F>(
        &self,
        conn: &mut PgConnection,
        stream_id: &str,
        range: VersionRange,
        f: &mut F,
    ) -> Result<u64, Error>
    where
        F: FnMut(PayloadRef<'_>) -> Result<(), Error> + Send,
    {
        self.keys.missed();
        let known = self.keys.snapshot();
        let mut learned: Vec<(i64, String, i32)> = Vec::new();
        let mut rows = sqlx::query(sql::READ_FULL_PAYLOADS)
            .bind(stream_id)
            .bind(int8(range.first))
            .bind(limit_of(range))
            .bind(self.tenant.as_str())
            .fetch(&mut *conn);
        let mut n = 0;
        let mut failure = None;
        while let Some(row) = next(&mut rows).await {
            let row = match row {
                Ok(row) => row,
                Err(e) => {
                    failure = Some(Stop::Failed(None, db("reading a stream")(e)));
                    break;
                }
            };
            if let (Ok(t), Ok(v), Ok(key)) = (
                sqlx::Row::try_get_unchecked::<&str, _>(&row, 1),
                sqlx::Row::try_get_unchecked::<i32, _>(&row, 2),
                sqlx::Row::try_get_unchecked::<i64, _>(&row, 4),
            ) {
                let mapped = u32::try_from(v).is_ok_and(|v| lookup(&known, key) == Some((t, v)));
                if !mapped && !learned.iter().any(|l| l.0 == key && l.1 == t && l.2 == v) {
                    learned.push((key, t.to_owned(), v));
                }
            }
            if let Err(stop) = fold_full_row(&row, f) {
                failure = Some(*stop);
                break;
            }
            n += 1;
        }
        drop(rows);
        self.keys
            .learn(learned.iter().map(|(key, t, v)| (*key, t.as_str(), *v)));
        match failure {
            None => Ok(n),
            Some(Stop::Failed(version, e)) => {
                Err(locate(conn, &self.tenant, stream_id, version, e).await)
            }
            // the full read maps every row by its own columns
            Some(Stop::Unmapped(_)) => Ok(n),
        }
    }
}

/// The version of a stream's last event on `conn` (`None`: no such stream).
pub(crate) async fn stream_version_on(
    conn: &mut PgConnection,
    tenant: &TenantId,
    stream_id: &str,
) -> Result<Option<u64>, Error> {
    let v: Option<i64> = sqlx::query_scalar(sql::STREAM_VERSION)
        .bind(stream_id)
        .bind(tenant.as_str())
        .fetch_one(conn)
        .await
        .map_err(db("reading a stream's version"))?;
    Ok(v.filter(|v| *v > 0).map(|v| v as u64))
}
