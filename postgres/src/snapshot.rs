//! Snapshots in the `annals_snapshots` table, beside the events.

use annals_core::snapshot::{Snapshot, SnapshotFold, SnapshotStore, BEYOND_STREAM};
use annals_core::store::{limits, PayloadRef, VersionRange};
use annals_core::{Error, EventStore as _, TenantId};
use serde_json::value::RawValue;
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};

use crate::error::{db, db_error};
use crate::rows::{fold_lean_row, jsonb_text, next};
use crate::store::{int8, PgSession};
use crate::{sql, PgEventStore};

/// Snapshots in the `annals_snapshots` table: one row per aggregate, the
/// newest wins (an older snapshot of the same shape never replaces a newer
/// one; a snapshot of another shape or codec always replaces it).
///
/// Made from the [`PgEventStore`] it keeps snapshots beside, so both are on
/// one database: a [`Repository`](annals_core::Repository) loads the
/// snapshot and the events after it in one statement, on the connection
/// its command appends on.
///
/// ```no_run
/// # #[derive(Debug, Clone, PartialEq, annals::Event)] enum CounterEvent { Added(u32) }
/// # #[derive(Default, serde::Serialize, serde::Deserialize, schemars::JsonSchema, annals::Aggregate)]
/// # #[aggregate(event = CounterEvent, snapshot_every = 100)]
/// # struct Counter { total: u64 }
/// # #[derive(Debug, thiserror::Error)] #[error("never")] struct Never;
/// # impl annals::Aggregate for Counter {
/// #     type Command = u32; type Error = Never;
/// #     fn handle(&self, add: &u32) -> Result<Vec<CounterEvent>, Never> { Ok(vec![CounterEvent::Added(*add)]) }
/// #     fn apply(&mut self, CounterEvent::Added(n): &CounterEvent) { self.total += u64::from(*n) }
/// # }
/// # async fn run(store: annals::postgres::PgEventStore) -> Result<(), Box<dyn std::error::Error>> {
/// use annals::postgres::PgSnapshotStore;
/// use annals::{Metadata, Repository};
///
/// let counters = Repository::of::<Counter>(store.clone())
///     .with_snapshots(PgSnapshotStore::new(&store));
/// counters.execute("c1", &5, &Metadata::new()).await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct PgSnapshotStore {
    pool: PgPool,
}

impl PgSnapshotStore {
    /// The snapshot store beside `events` (on its pool; run
    /// [`migrate`](crate::migrate) first).
    pub fn new(events: &PgEventStore) -> Self {
        PgSnapshotStore {
            pool: events.pool().clone(),
        }
    }
}

/// The snapshot of a snapshot row (the columns of load_snapshot.sql, and
/// of the first row of load_snapshot_and_events.sql). `None`: its state is
/// not JSON, which jsonb cannot hold; treated as no snapshot.
fn snapshot_row(
    row: &PgRow,
    aggregate_type: &str,
    stream_id: &str,
) -> Result<Option<Snapshot>, Error> {
    let read = db("reading a snapshot row");
    let negated_version: i64 = row.try_get(0).map_err(&read)?;
    let state = row.try_get_raw(2).map_err(&read)?;
    let fingerprint: String = row.try_get(3).map_err(&read)?;
    let codec_version: i32 = row.try_get(4).map_err(&read)?;
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

/// save_snapshot.sql without its condition: the row is replaced whatever
/// its version (see [`SnapshotStore::replace`]).
const REPLACE_SNAPSHOT: &str = "INSERT INTO annals_snapshots AS s \
     (tenant_id, aggregate_type, aggregate_id, version, state, fingerprint, codec_version) \
     VALUES ($7, $1, $2, $3, $4::jsonb, $5, $6) \
     ON CONFLICT (tenant_id, aggregate_type, aggregate_id) DO UPDATE \
     SET version = EXCLUDED.version, state = EXCLUDED.state, \
         fingerprint = EXCLUDED.fingerprint, \
         codec_version = EXCLUDED.codec_version, created_at = now()";

impl PgSnapshotStore {
    async fn write(
        &self,
        statement: &'static str,
        tenant: &TenantId,
        snapshot: Snapshot,
    ) -> Result<(), Error> {
        limits::check_stream_id(&snapshot.aggregate_id)?;
        limits::check_snapshot_state(snapshot.state.get())?;
        sqlx::query(statement)
            .bind(&snapshot.aggregate_type)
            .bind(&snapshot.aggregate_id)
            .bind(int8(snapshot.version))
            .bind(snapshot.state.get())
            .bind(&snapshot.fingerprint)
            .bind(snapshot.codec_version.min(i32::MAX as u32) as i32)
            .bind(tenant.as_str())
            .execute(&self.pool)
            .await
            .map_err(db("saving a snapshot"))?;
        Ok(())
    }
}

impl SnapshotStore<PgEventStore> for PgSnapshotStore {
    async fn load(
        &self,
        tenant: &TenantId,
        aggregate_type: &str,
        aggregate_id: &str,
    ) -> Result<Option<Snapshot>, Error> {
        limits::check_stream_id(aggregate_id)?;
        let row = sqlx::query(sql::LOAD_SNAPSHOT)
            .bind(aggregate_type)
            .bind(aggregate_id)
            .bind(tenant.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(db("loading a snapshot"))?;
        match row {
            Some(row) => snapshot_row(&row, aggregate_type, aggregate_id),
            None => Ok(None),
        }
    }

    async fn save(&self, tenant: &TenantId, snapshot: Snapshot) -> Result<(), Error> {
        self.write(sql::SAVE_SNAPSHOT, tenant, snapshot).await
    }

    async fn replace(&self, tenant: &TenantId, snapshot: Snapshot) -> Result<(), Error> {
        self.write(REPLACE_SNAPSHOT, tenant, snapshot).await
    }

    /// The snapshot and the events after it in one statement
    /// (load_snapshot_and_events.sql), folded into `fold` as the rows
    /// arrive, on the session's connection.
    async fn load_and_fold<F>(
        &self,
        session: &mut PgSession,
        tenant: &TenantId,
        aggregate_type: &str,
        stream_id: &str,
        fold: &mut F,
    ) -> Result<u64, Error>
    where
        F: SnapshotFold + Send,
    {
        limits::check_stream_id(stream_id)?;
        let pg = session.store().clone();
        if tenant != pg.tenant_id() {
            return Err(Error::backend(
                "loading a snapshot and its stream",
                format!(
                    "the snapshot's tenant `{tenant}` is not the session's tenant `{}`",
                    pg.tenant_id()
                ),
            ));
        }
        let conn = session.connection();
        let keys = pg.schema_keys();
        let mut rows = sqlx::query(sql::LOAD_SNAPSHOT_AND_EVENTS)
            .bind(aggregate_type)
            .bind(stream_id)
            .bind(tenant.as_str())
            .fetch(&mut *conn);
        // a snapshot waiting for the event at its own version, which
        // proves that the stream reaches it (the statement reads the
        // events from the snapshot's version on)
        let mut pending: Option<Snapshot> = None;
        // the version the fold goes on from, once the snapshot is decided
        let mut from = None;
        let mut folded = 0;
        while let Some(row) = next(&mut rows).await {
            let row = row.map_err(db("loading a snapshot and its stream"))?;
            let version: i64 = row
                .try_get_unchecked(0)
                .map_err(|e| db_error("reading an event's stream version", e))?;
            if version < 0 {
                let snapshot = snapshot_row(&row, aggregate_type, stream_id)?;
                if let Some(s) = snapshot.filter(|s| s.version > 0) {
                    pending = Some(s);
                    continue;
                }
                // unreadable: the fold decides from where to go on
                let accepted = fold.snapshot(None);
                drop(rows);
                let rest = VersionRange::new(accepted + 1..);
                return pg.fold_on(conn, stream_id, rest, |p| fold.event(p)).await;
            }
            if let Some(s) = pending.take() {
                let snapshot_version = s.version;
                if version as u64 != snapshot_version {
                    // not the snapshot's own event (versions have no gaps,
                    // so this cannot be): treat it as beyond the stream
                    pending = Some(s);
                    break;
                }
                let accepted = fold.snapshot(Some(s));
                if accepted != snapshot_version {
                    // unusable: the events after it are not enough; fold the
                    // stream from where the fold asks (rare: the next
                    // command writes a fresh snapshot)
                    drop(rows);
                    let rest = VersionRange::new(accepted + 1..);
                    return pg.fold_on(conn, stream_id, rest, |p| fold.event(p)).await;
                }
                from = Some(accepted);
                // the snapshot's own event is in the snapshot already
                continue;
            }
            let from = *from.get_or_insert_with(|| fold.snapshot(None));
            if version as u64 > from {
                let mut event = |p: PayloadRef<'_>| fold.event(p);
                if let Err(stop) = fold_lean_row(&row, &keys, &mut event) {
                    drop(rows);
                    let rest = VersionRange::new(from + 1..);
                    return pg
                        .stopped(conn, stream_id, rest, *stop, folded, &mut event)
                        .await;
                }
                folded += 1;
            }
        }
        drop(rows);
        if let Some(s) = pending {
            // no event at the snapshot's version: the snapshot lies beyond
            // the end of its stream; replay the stream in full
            fold.snapshot_unusable(s, BEYOND_STREAM);
            return pg
                .fold_on(conn, stream_id, VersionRange::ALL, |p| fold.event(p))
                .await;
        }
        if from.is_none() {
            fold.snapshot(None);
        }
        Ok(folded)
    }
}
