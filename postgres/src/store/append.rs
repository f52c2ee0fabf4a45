//! Appends: validate, bind, pick the statement for the expectation, and
//! map a lost race to the typed conflict.

use annals_core::event::NewEvent;
use annals_core::store::{limits, AppendResult, ExpectedVersion, LogPosition};
use annals_core::{Envelope, Error, TenantId, VersionConflict};
use chrono::{DateTime, Utc};
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row};

use super::group::AloneTurn;
use super::read::stream_version_on;
use super::{int8, PgEventStore};
use crate::error::{db, db_error};
use crate::sql;

/// How often an `Any` append that lost a race to a concurrent writer is
/// retried before it reports the conflict (only a caller's REPEATABLE READ
/// or SERIALIZABLE transaction, whose snapshot never sees the winner, can
/// use them all up).
const ANY_ATTEMPTS: u32 = 16;

/// An append's events as the statement binds them (arrays for a batch;
/// the first of each for one event).
pub(super) struct Binds<'a> {
    pub(super) ids: Vec<uuid::Uuid>,
    pub(super) types: Vec<&'a str>,
    pub(super) versions: Vec<i32>,
    pub(super) payloads: Vec<&'a str>,
    pub(super) metas: Vec<&'a str>,
}

impl<'a> Binds<'a> {
    /// `events` with their metadata already encoded (`metas`, one each).
    pub(super) fn new(events: &'a [NewEvent], metas: &'a [String]) -> Self {
        Binds {
            ids: events.iter().map(|e| e.event_id).collect(),
            types: events.iter().map(|e| e.event_type.as_str()).collect(),
            versions: events.iter().map(|e| e.schema_version as i32).collect(),
            payloads: events.iter().map(|e| e.payload.get()).collect(),
            metas: metas.iter().map(String::as_str).collect(),
        }
    }
}

impl PgEventStore {
    /// Appends on `conn`. `owned`: the statement is its own transaction
    /// (autocommit, no caller's transaction around it), so a lost race may
    /// abort it; otherwise a conflict must leave the caller's transaction
    /// usable. Wakes nobody: the caller knows when the events commit.
    pub(crate) async fn append_on(
        &self,
        conn: &mut PgConnection,
        owned: bool,
        stream_id: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, Error> {
        self.tenant.require_one("an append")?;
        limits::check_append(stream_id, &events)?;
        if events.is_empty() {
            return check_empty_append(conn, &self.tenant, stream_id, expected).await;
        }
        let metas = self.prepare(&events)?;
        let rows = insert(
            conn,
            owned,
            &self.tenant,
            stream_id,
            expected,
            Binds::new(&events, &metas),
        )
        .await?;
        appended(&self.tenant, stream_id, &rows, events)
    }

    /// Appends as its own transaction, through the group commit when the
    /// store has one and the append can join it, else on `conn` (or a
    /// connection of the pool when `conn` is `None`); wakes log readers
    /// once the events are committed. The events are validated first: a
    /// refused append never waits for (or holds) a connection.
    pub(crate) async fn append_committed(
        &self,
        conn: Option<&mut PgConnection>,
        stream_id: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, Error> {
        const CONTEXT: &str = "acquiring a connection to append";
        self.tenant.require_one("an append")?;
        limits::check_append(stream_id, &events)?;
        let metas = if events.is_empty() {
            Vec::new()
        } else {
            self.prepare(&events)?
        };
        if let Some(group) = &self.group {
            if !events.is_empty() && expected != ExpectedVersion::Any {
                if self.pool.is_closed() {
                    // the group's connection is not the pool's, but a
                    // closed pool means a store that was shut down
                    return Err(db_error(CONTEXT, sqlx::Error::PoolClosed));
                }
                // alone when nothing else is being written, else with the
                // next group; either way on the group's connection
                let Some(mut turn) = group.alone() else {
                    return group
                        .append(&self.tenant, stream_id, expected, events, metas)
                        .await;
                };
                let mut written = alone(
                    &mut turn,
                    &self.tenant,
                    stream_id,
                    expected,
                    &events,
                    &metas,
                )
                .await;
                if matches!(&written, Err(e) if e.is_retryable()) {
                    // the connection may be gone, perhaps after the commit:
                    // find out on a new one, and try once more if nothing
                    // was written
                    match turn.committed(&self.tenant, &events).await {
                        Ok(Some(rows)) => written = Ok(rows),
                        Ok(None) => {
                            written = alone(
                                &mut turn,
                                &self.tenant,
                                stream_id,
                                expected,
                                &events,
                                &metas,
                            )
                            .await
                        }
                        Err(_) => {}
                    }
                }
                // a retryable failure may have broken the connection
                turn.finish(!matches!(&written, Err(e) if e.is_retryable()));
                // the turn ends before the wake-up: appends queued
                // meanwhile need not wait for it
                drop(turn);
                let written = written?;
                self.wake.appended();
                return append_result(&self.tenant, stream_id, &written, events);
            }
        }
        let mut pooled = None;
        let conn = match conn {
            Some(conn) => conn,
            None => &mut **pooled.insert(self.checkout(CONTEXT).await?),
        };
        if events.is_empty() {
            return check_empty_append(conn, &self.tenant, stream_id, expected).await;
        }
        let rows = insert(
            conn,
            true,
            &self.tenant,
            stream_id,
            expected,
            Binds::new(&events, &metas),
        )
        .await?;
        self.wake.appended();
        appended(&self.tenant, stream_id, &rows, events)
    }

    /// Validates `events` (when the store validates) and encodes their
    /// metadata, one string each.
    fn prepare(&self, events: &[NewEvent]) -> Result<Vec<String>, Error> {
        if self.validate {
            self.registry.validate_new(events)?;
        }
        events
            .iter()
            .map(|e| {
                serde_json::to_string(&e.metadata).map_err(|source| Error::Encode {
                    event_type: e.event_type.clone(),
                    source,
                })
            })
            .collect()
    }
}

/// Writes an append alone on the group's connection.
async fn alone(
    turn: &mut AloneTurn,
    tenant: &TenantId,
    stream_id: &str,
    expected: ExpectedVersion,
    events: &[NewEvent],
    metas: &[String],
) -> Result<Vec<Written>, Error> {
    let conn = turn.connection().await?;
    write_alone(conn, tenant, stream_id, expected, events, metas).await
}

/// Writes one append as its own transaction on `conn`: what the database
/// gave each event.
pub(super) async fn write_alone(
    conn: &mut PgConnection,
    tenant: &TenantId,
    stream_id: &str,
    expected: ExpectedVersion,
    events: &[NewEvent],
    metas: &[String],
) -> Result<Vec<Written>, Error> {
    let rows = insert(
        conn,
        true,
        tenant,
        stream_id,
        expected,
        Binds::new(events, metas),
    )
    .await?;
    rows.iter().map(|row| Written::read(row, 0)).collect()
}

/// The statement for an append. A statement that is its own transaction
/// may fail on the unique key (the lost race is the unique violation, which
/// writes nothing); one inside a transaction that goes on (a caller's, or
/// an `Any` append that retries) inserts nothing instead. A one-event
/// append that is its own transaction binds scalars, not arrays: cheaper on
/// the server for a single row. Its gain is not measured yet (a pgbench
/// comparison on a busy 2-core machine was within noise): it stays only if
/// benches/postgres.rs "append 1 event" shows more than 5% on a durable
/// server.
fn statement(owned: bool, one: bool, expected: ExpectedVersion) -> &'static str {
    match (expected, owned, one) {
        (ExpectedVersion::NoStream, true, true) => sql::APPEND_ONE_NEW_STREAM,
        (ExpectedVersion::Exact(_), true, true) => sql::APPEND_ONE_EXACT,
        (ExpectedVersion::NoStream, true, false) => sql::APPEND_NEW_STREAM,
        (ExpectedVersion::Exact(_), true, false) => sql::APPEND_EXACT,
        (ExpectedVersion::NoStream, false, _) => sql::APPEND_IN_NEW_STREAM,
        (ExpectedVersion::Exact(_), false, _) => sql::APPEND_IN_EXACT,
        (ExpectedVersion::Any, _, _) => sql::APPEND_IN_ANY,
    }
}

/// Runs the append statement for `binds` (at least one event) on `conn`:
/// the rows it returned, one per event in stream order, or the typed
/// conflict when the stream was not where `expected` says.
pub(super) async fn insert(
    conn: &mut PgConnection,
    owned: bool,
    tenant: &TenantId,
    stream_id: &str,
    expected: ExpectedVersion,
    binds: Binds<'_>,
) -> Result<Vec<PgRow>, Error> {
    let sql = statement(owned, binds.ids.len() == 1, expected);
    let scalars = matches!(sql, sql::APPEND_ONE_NEW_STREAM | sql::APPEND_ONE_EXACT);
    let mut attempt = 0;
    let rows = loop {
        attempt += 1;
        let q = sqlx::query(sql).bind(stream_id);
        let mut q = if scalars {
            q.bind(binds.ids[0])
                .bind(binds.types[0])
                .bind(binds.versions[0])
                .bind(binds.payloads[0])
                .bind(binds.metas[0])
        } else {
            q.bind(&binds.ids)
                .bind(&binds.types)
                .bind(&binds.versions)
                .bind(&binds.payloads)
                .bind(&binds.metas)
        };
        if let ExpectedVersion::Exact(v) = expected {
            q = q.bind(int8(v));
        }
        let rows = match q.bind(tenant.as_str()).fetch_all(&mut *conn).await {
            Ok(rows) => rows,
            Err(e) => return Err(append_error(conn, tenant, stream_id, expected, e).await),
        };
        if !rows.is_empty() || expected != ExpectedVersion::Any || attempt >= ANY_ATTEMPTS {
            break rows;
        }
        // an `Any` append lost a race for the next version: try again
        // after the winner (a new statement sees it committed)
    };
    if rows.is_empty() {
        // the stream was not at the expected version: nothing was written
        return Err(conflict(conn, tenant, stream_id, expected).await);
    }
    Ok(rows)
}

/// The conflict of an append that found its stream elsewhere than
/// expected, with the stream's version now.
pub(super) async fn conflict(
    conn: &mut PgConnection,
    tenant: &TenantId,
    stream_id: &str,
    expected: ExpectedVersion,
) -> Error {
    match stream_version_on(conn, tenant, stream_id).await {
        Ok(actual) => VersionConflict {
            stream_id: stream_id.to_owned(),
            expected,
            actual,
        }
        .into(),
        Err(e) => e,
    }
}

/// A failed append statement: a duplicate event id or a lost race on the
/// stream's next version as their typed errors, anything else as the
/// database error it is.
async fn append_error(
    conn: &mut PgConnection,
    tenant: &TenantId,
    stream_id: &str,
    expected: ExpectedVersion,
    e: sqlx::Error,
) -> Error {
    if let Some(database) = e.as_database_error() {
        match database.constraint() {
            Some("annals_events_event_id_key") => {
                // detail: `Key (event_id)=(0192...) already exists.`
                if let Some(event_id) = crate::error::duplicate_uuid(database) {
                    return Error::DuplicateEventId { event_id };
                }
            }
            // a concurrent writer won the race for a version
            Some("annals_events_stream_version_key") => {
                return conflict(conn, tenant, stream_id, expected).await
            }
            _ => {}
        }
    }
    db_error("appending events", e)
}

/// An append of no events: nothing to write, but the expectation is still
/// checked (the typed conflict when the stream is not where it says).
async fn check_empty_append(
    conn: &mut PgConnection,
    tenant: &TenantId,
    stream_id: &str,
    expected: ExpectedVersion,
) -> Result<AppendResult, Error> {
    let actual = stream_version_on(conn, tenant, stream_id).await?;
    if !expected.matches(actual) {
        return Err(VersionConflict {
            stream_id: stream_id.to_owned(),
            expected,
            actual,
        }
        .into());
    }
    Ok(AppendResult {
        version: actual.unwrap_or(0),
        events: Vec::new(),
    })
}

/// What the database gave one appended event.
#[derive(Debug, Clone, Copy)]
pub(super) struct Written {
    position: i64,
    tx: i64,
    stream_version: i64,
    recorded_at: DateTime<Utc>,
}

impl Written {
    /// Reads the columns `position, tx, stream_version, recorded_at` of an
    /// append statement's row, starting at column `from`.
    pub(super) fn read(row: &PgRow, from: usize) -> Result<Self, Error> {
        Self::get(row, from).map_err(db("reading an appended row"))
    }

    /// [`read`](Self::read), with the driver's error.
    pub(super) fn get(row: &PgRow, from: usize) -> Result<Self, sqlx::Error> {
        Ok(Written {
            position: row.try_get(from)?,
            tx: row.try_get(from + 1)?,
            stream_version: row.try_get(from + 2)?,
            recorded_at: row.try_get(from + 3)?,
        })
    }

    pub(super) fn stream_version(&self) -> i64 {
        self.stream_version
    }

    pub(super) fn transaction(&self) -> i64 {
        self.tx
    }
}

/// The result of an append statement's rows (one per event, in stream
/// order).
fn appended(
    tenant: &TenantId,
    stream_id: &str,
    rows: &[PgRow],
    events: Vec<NewEvent>,
) -> Result<AppendResult, Error> {
    let written = rows
        .iter()
        .map(|row| Written::read(row, 0))
        .collect::<Result<Vec<_>, _>>()?;
    append_result(tenant, stream_id, &written, events)
}

/// The result of an append: `events` with what the database gave each
/// (position, transaction, stream version, time), in this order.
pub(super) fn append_result(
    tenant: &TenantId,
    stream_id: &str,
    written: &[Written],
    events: Vec<NewEvent>,
) -> Result<AppendResult, Error> {
    if written.len() != events.len() {
        return Err(Error::backend(
            "appending events",
            format!(
                "the database returned {} rows for an append of {} events",
                written.len(),
                events.len()
            ),
        ));
    }
    let mut out = Vec::with_capacity(events.len());
    let mut last = 0;
    for (w, e) in written.iter().zip(events) {
        last = w.stream_version as u64;
        out.push(Envelope {
            tenant_id: tenant.clone(),
            event_id: e.event_id,
            stream_id: stream_id.to_owned(),
            stream_version: w.stream_version as u64,
            log_position: LogPosition::new(w.tx as u64, w.position as u64),
            event_type: e.event_type,
            schema_version: e.schema_version,
            metadata: e.metadata,
            recorded_at: w.recorded_at,
            payload: e.payload,
        });
    }
    Ok(AppendResult {
        version: last,
        events: out,
    })
}
