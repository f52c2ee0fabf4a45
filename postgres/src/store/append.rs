//! Appends: validate, bind, pick the statement for the expectation, and
//! map a lost race to the typed conflict.

use annals_core::event::NewEvent;
use annals_core::store::{limits, AppendResult, ExpectedVersion, LogPosition};
use annals_core::{Envelope, Error, VersionConflict};
use chrono::{DateTime, Utc};
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row};

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
struct Binds<'a> {
    ids: Vec<uuid::Uuid>,
    types: Vec<&'a str>,
    versions: Vec<i32>,
    payloads: Vec<&'a str>,
    metas: Vec<String>,
}

impl PgEventStore {
    /// Appends on `conn`. `owned`: the statement is its own transaction
    /// (autocommit, no caller's transaction around it), so a lost race may
    /// abort it; otherwise a conflict must leave the caller's transaction
    /// usable.
    pub(crate) async fn append_on(
        &self,
        conn: &mut PgConnection,
        owned: bool,
        stream_id: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, Error> {
        limits::check_append(stream_id, &events)?;
        if events.is_empty() {
            return check_empty_append(conn, stream_id, expected).await;
        }
        let binds = self.bind_events(&events)?;
        let rows = insert(conn, owned, stream_id, expected, binds).await?;
        appended(stream_id, &rows, events)
    }

    /// Appends on a connection of the pool, as its own transaction. The
    /// events are validated before the checkout: a refused append never
    /// waits for (or holds) a connection.
    pub(crate) async fn append_pooled(
        &self,
        stream_id: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, Error> {
        const CONTEXT: &str = "acquiring a connection to append";
        limits::check_append(stream_id, &events)?;
        if events.is_empty() {
            let mut conn = self.checkout(CONTEXT).await?;
            return check_empty_append(&mut conn, stream_id, expected).await;
        }
        let binds = self.bind_events(&events)?;
        let mut conn = self.checkout(CONTEXT).await?;
        let rows = insert(&mut conn, true, stream_id, expected, binds).await?;
        appended(stream_id, &rows, events)
    }

    /// The events validated (when the store validates) and bound for the
    /// statement.
    fn bind_events<'a>(&self, events: &'a [NewEvent]) -> Result<Binds<'a>, Error> {
        if self.validate {
            self.registry.validate_new(events)?;
        }
        let mut binds = Binds {
            ids: Vec::with_capacity(events.len()),
            types: Vec::with_capacity(events.len()),
            versions: Vec::with_capacity(events.len()),
            payloads: Vec::with_capacity(events.len()),
            metas: Vec::with_capacity(events.len()),
        };
        for e in events {
            binds.ids.push(e.event_id);
            binds.types.push(e.event_type.as_str());
            binds.versions.push(e.schema_version as i32);
            binds.payloads.push(e.payload.get());
            binds
                .metas
                .push(
                    serde_json::to_string(&e.metadata).map_err(|source| Error::Encode {
                        event_type: e.event_type.clone(),
                        source,
                    })?,
                );
        }
        Ok(binds)
    }
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
async fn insert(
    conn: &mut PgConnection,
    owned: bool,
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
                .bind(&binds.metas[0])
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
        let rows = match q.fetch_all(&mut *conn).await {
            Ok(rows) => rows,
            Err(e) => return Err(append_error(conn, stream_id, expected, e).await),
        };
        if !rows.is_empty() || expected != ExpectedVersion::Any || attempt >= ANY_ATTEMPTS {
            break rows;
        }
        // an `Any` append lost a race for the next version: try again
        // after the winner (a new statement sees it committed)
    };
    if rows.is_empty() {
        // the stream was not at the expected version: nothing was written
        return Err(conflict(conn, stream_id, expected).await);
    }
    Ok(rows)
}

/// The conflict of an append that found its stream elsewhere than
/// expected, with the stream's version now.
async fn conflict(conn: &mut PgConnection, stream_id: &str, expected: ExpectedVersion) -> Error {
    match stream_version_on(conn, stream_id).await {
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
                return conflict(conn, stream_id, expected).await
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
    stream_id: &str,
    expected: ExpectedVersion,
) -> Result<AppendResult, Error> {
    let actual = stream_version_on(conn, stream_id).await?;
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

/// The result of an append: `events` with what the statement returned for
/// each (position, transaction, stream version, time), in this order.
fn appended(stream_id: &str, rows: &[PgRow], events: Vec<NewEvent>) -> Result<AppendResult, Error> {
    let mut out = Vec::with_capacity(events.len());
    let mut last = 0;
    let column = db("reading an appended row");
    for (row, e) in rows.iter().zip(events) {
        let position: i64 = row.try_get(0).map_err(&column)?;
        let tx: i64 = row.try_get(1).map_err(&column)?;
        let stream_version: i64 = row.try_get(2).map_err(&column)?;
        let recorded_at: DateTime<Utc> = row.try_get(3).map_err(&column)?;
        last = stream_version as u64;
        out.push(Envelope {
            event_id: e.event_id,
            stream_id: stream_id.to_owned(),
            stream_version: stream_version as u64,
            log_position: LogPosition::new(tx as u64, position as u64),
            event_type: e.event_type,
            schema_version: e.schema_version,
            metadata: e.metadata,
            recorded_at,
            payload: e.payload,
        });
    }
    Ok(AppendResult {
        version: last,
        events: out,
    })
}
