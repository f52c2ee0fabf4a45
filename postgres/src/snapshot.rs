use std::any::Any;

use annals_core::{
    append_decided, AppendResult, CommandFold, Error, EventStore, PayloadRef, Snapshot,
    SnapshotFold, SnapshotStore,
};
use serde_json::value::RawValue;
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, PgPool, Row};

use crate::store::{fold_lean_row, in_stream_order, jsonb_text};
use crate::PgEventStore;

/// A snapshot and the events after it, in one statement, in the columns of
/// the lean stream read (`stream_version, schema_key, payload`) and two
/// more that only the snapshot row fills (`fingerprint, codec_version`;
/// NULL in event rows, which costs the server no send call). The snapshot
/// row comes first and is told apart by its negated version (events'
/// versions are at least 1, a CHECK constraint holds them to it; snapshots'
/// versions too). Then the events after it, in version order. With no
/// snapshot it is the plain stream read. The events come in index order
/// (see `in_stream_order!`), so the outer `ORDER BY` is a merge of the two
/// parts, not a sort of the stream.
pub(crate) const LOAD_AND_FOLD: &str = concat!(
    "WITH s AS (
        SELECT version, state, fingerprint, codec_version FROM annals_snapshots
         WHERE aggregate_type = $1 AND aggregate_id = $2)
     SELECT -version AS stream_version, NULL::int8 AS schema_key, state AS payload,
            fingerprint, codec_version
       FROM s
     UNION ALL
     (SELECT stream_version, schema_key, payload, NULL, NULL
        FROM annals_events
       WHERE stream_id = $2 AND stream_version > coalesce((SELECT version FROM s), 0)",
    in_stream_order!("NULL"),
    ")
     ORDER BY stream_version"
);

/// Snapshots in the `annals_snapshots` table: one row per aggregate, the
/// newest wins (an older snapshot of the same shape never replaces a newer
/// one; a snapshot of another shape or codec always replaces it).
#[derive(Debug, Clone)]
pub struct PgSnapshotStore {
    pool: PgPool,
}

impl PgSnapshotStore {
    /// A snapshot store on `pool` (run [`migrate`](crate::migrate) first).
    ///
    /// Used by a [`Repository`](annals_core::Repository) whose event store
    /// is a [`PgEventStore`] on the same database, a load reads the snapshot
    /// and the events after it in one statement (one round trip instead of
    /// two).
    pub fn new(pool: PgPool) -> Self {
        PgSnapshotStore { pool }
    }

    /// `events` as a [`PgEventStore`], if it is one on the database this
    /// store's snapshots are in.
    fn beside<'a, S: EventStore>(&self, events: &'a S) -> Option<&'a PgEventStore> {
        let pg = (events as &dyn Any).downcast_ref::<PgEventStore>()?;
        let (a, b) = (pg.pool().connect_options(), self.pool.connect_options());
        let same = a.get_host() == b.get_host()
            && a.get_port() == b.get_port()
            && a.get_socket() == b.get_socket()
            && a.get_database() == b.get_database()
            && a.get_username() == b.get_username();
        same.then_some(pg)
    }
}

/// The snapshot of a snapshot row (columns as in [`LOAD_AND_FOLD`]; also
/// [`PgSnapshotStore::load`]'s). `None`: its state is not JSON, which jsonb
/// cannot hold; treated as no snapshot.
fn snapshot_row(
    row: &PgRow,
    aggregate_type: &str,
    stream_id: &str,
) -> Result<Option<Snapshot>, Error> {
    let read = |e| Error::backend("reading a snapshot row", e);
    let negated_version: i64 = row.try_get(0).map_err(read)?;
    let state = row.try_get_raw(2).map_err(read)?;
    let fingerprint: String = row.try_get(3).map_err(read)?;
    let codec_version: i32 = row.try_get(4).map_err(read)?;
    let Some(state) = jsonb_text(state)
        .ok()
        .and_then(|text| RawValue::from_string(text.to_owned()).ok())
    else {
        return Ok(None);
    };
    Ok(Some(Snapshot {
        aggregate_type: aggregate_type.to_owned(),
        aggregate_id: stream_id.to_owned(),
        version: negated_version.saturating_neg().max(0) as u64,
        state,
        fingerprint,
        codec_version: codec_version.max(0) as u32,
    }))
}

impl SnapshotStore for PgSnapshotStore {
    async fn load(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
    ) -> Result<Option<Snapshot>, Error> {
        // the columns of a snapshot row of LOAD_AND_FOLD, so one decoder
        // reads both
        let row = sqlx::query(
            "SELECT -version, NULL::int8, state, fingerprint, codec_version
             FROM annals_snapshots WHERE aggregate_type = $1 AND aggregate_id = $2",
        )
        .bind(aggregate_type)
        .bind(aggregate_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| Error::backend("loading a snapshot", e))?;
        match row {
            Some(row) => snapshot_row(&row, aggregate_type, aggregate_id),
            None => Ok(None),
        }
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

    async fn load_and_fold<S, F>(
        &self,
        events: &S,
        aggregate_type: &str,
        stream_id: &str,
        fold: &mut F,
    ) -> Result<u64, Error>
    where
        S: EventStore,
        F: SnapshotFold + Send,
    {
        let Some(pg) = self.beside(events) else {
            let snapshot = self.load(aggregate_type, stream_id).await?;
            let from = fold.snapshot(snapshot);
            return events
                .fold_stream_payloads(stream_id, from + 1, |p| fold.event(p))
                .await;
        };
        let mut conn = pg
            .checkout("acquiring a connection to load an aggregate")
            .await?;
        load_and_fold_on(pg, &mut conn, aggregate_type, stream_id, fold).await
    }

    async fn load_fold_and_append<S, C>(
        &self,
        events: &S,
        aggregate_type: &str,
        stream_id: &str,
        command: &mut C,
    ) -> Result<(u64, Option<AppendResult>), Error>
    where
        S: EventStore,
        C: SnapshotFold + CommandFold,
    {
        let Some(pg) = self.beside(events) else {
            let folded = self
                .load_and_fold(events, aggregate_type, stream_id, command)
                .await?;
            return append_decided(events, stream_id, folded, command).await;
        };
        // one connection for the load and the append (see
        // `EventStore::fold_and_append`)
        let mut conn = pg
            .checkout("acquiring a connection to run a command")
            .await?;
        let folded = load_and_fold_on(pg, &mut conn, aggregate_type, stream_id, command).await?;
        pg.append_decided_on(&mut conn, stream_id, folded, command)
            .await
    }
}

/// [`LOAD_AND_FOLD`] on `conn`, folded into `fold` as the rows arrive.
async fn load_and_fold_on<F>(
    pg: &PgEventStore,
    conn: &mut PgConnection,
    aggregate_type: &str,
    stream_id: &str,
    fold: &mut F,
) -> Result<u64, Error>
where
    F: SnapshotFold + Send,
{
    let keys = pg.schema_keys();
    let mut rows = sqlx::query(LOAD_AND_FOLD)
        .bind(aggregate_type)
        .bind(stream_id)
        .fetch(&mut *conn);
    // the version the fold goes on from, once the snapshot is decided
    let mut from = None;
    let mut folded = 0;
    while let Some(row) = std::future::poll_fn(|cx| rows.as_mut().poll_next(cx)).await {
        let row = row.map_err(|e| Error::backend("loading a snapshot and its stream", e))?;
        // unchecked like every event column (see `decode_row`)
        let version: i64 = row
            .try_get_unchecked(0)
            .map_err(|e| Error::backend("reading an event's stream version", e))?;
        if version < 0 {
            let snapshot = snapshot_row(&row, aggregate_type, stream_id)?;
            let version = snapshot.as_ref().map(|s| s.version);
            let accepted = fold.snapshot(snapshot);
            if Some(accepted) != version {
                // unusable: the events after it are not enough; fold the
                // stream from where the fold asks (rare: the next
                // command writes a fresh snapshot)
                drop(rows);
                return pg
                    .fold_on(conn, stream_id, accepted + 1, |p| fold.event(p))
                    .await;
            }
            from = Some(accepted);
            continue;
        }
        let from = *from.get_or_insert_with(|| fold.snapshot(None));
        if version as u64 > from {
            let mut event = |p: PayloadRef<'_>| fold.event(p);
            if let Err(stop) = fold_lean_row(&row, &keys, &mut event) {
                drop(rows);
                return pg
                    .lean_stopped(conn, stream_id, *stop, folded, &mut event)
                    .await;
            }
            folded += 1;
        }
    }
    if from.is_none() {
        fold.snapshot(None);
    }
    Ok(folded)
}

#[cfg(test)]
mod tests {
    use annals_core::InMemoryEventStore;
    use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

    use super::*;

    fn lazy(database: &str) -> PgPool {
        // never connects: only the options are compared
        PgPoolOptions::new().connect_lazy_with(
            PgConnectOptions::new()
                .host("db.example")
                .port(5432)
                .username("annals")
                .database(database),
        )
    }

    #[tokio::test]
    async fn one_statement_only_beside_a_pg_store_on_the_same_database() {
        let snapshots = PgSnapshotStore::new(lazy("clinic"));
        let same = PgEventStore::unregistered(lazy("clinic"));
        let other = PgEventStore::unregistered(lazy("billing"));
        assert!(snapshots.beside(&same).is_some());
        assert!(snapshots.beside(&other).is_none());
        assert!(snapshots.beside(&InMemoryEventStore::new()).is_none());
    }
}
