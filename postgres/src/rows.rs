//! Decoding the rows of annals' statements, shared by the event store and
//! the snapshot store.
//!
//! Columns are read by index and without sqlx's per-value type check
//! (`try_get_unchecked`): about 6% of a typed stream read (benches/postgres.rs,
//! "read 10k typed"). The migrations fix the columns' types, and every
//! decoder still checks what it reads (lengths, UTF-8, JSON), so a column
//! altered to another type decodes to an error (or, between integer widths,
//! the same number), never a panic.

use annals_core::event::Metadata;
use annals_core::store::{LogPosition, PayloadRef};
use annals_core::{Envelope, Error, TenantId};
use futures_core::Stream;
use sqlx::postgres::{PgRow, PgValueFormat, PgValueRef};
use sqlx::types::Json;
use sqlx::{PgConnection, Row, TypeInfo as _, ValueRef as _};

use crate::error::db_error;
use crate::keys::{lookup, KeyMap};
use crate::sql;

/// The next row of a row stream (without a dependency on futures-util).
pub(crate) async fn next<S, T>(rows: &mut std::pin::Pin<Box<S>>) -> Option<T>
where
    S: Stream<Item = T> + ?Sized,
{
    std::future::poll_fn(|cx| rows.as_mut().poll_next(cx)).await
}

/// What the store was reading when a column of an event row failed, by
/// column index (the columns of read_stream.sql).
pub(crate) const COLUMN_NAMES: [&str; 10] = [
    "reading an event's position",
    "reading an event's transaction id",
    "reading an event's id",
    "reading an event's stream id",
    "reading an event's stream version",
    "reading an event's type",
    "reading an event's schema version",
    "reading an event's payload",
    "reading an event's metadata",
    "reading an event's recorded time",
];

fn corrupted(message: String) -> Error {
    Error::CorruptedRow {
        position: None,
        message,
    }
}

/// An event row whose envelope did not decode (`problem`), as far as it
/// can be read: the [`Error::UnreadableEvent`] a log read reports for it.
/// The columns that identify it (position, transaction, id, stream,
/// version, type, time) are typed `NOT NULL` columns and always read; the
/// others get stand-ins (schema version 0, empty metadata, payload `null`)
/// when they do not. When even the identifying columns fail (a column
/// altered to another type) it is `problem` as it is.
pub(crate) fn unreadable_event_row(row: &PgRow, tenant: &TenantId, problem: Error) -> Error {
    let identity = || -> Result<_, sqlx::Error> {
        Ok((
            row.try_get::<i64, _>(0)?,
            row.try_get::<i64, _>(1)?,
            row.try_get::<uuid::Uuid, _>(2)?,
            row.try_get::<String, _>(3)?,
            row.try_get::<i64, _>(4)?,
            row.try_get::<String, _>(5)?,
            row.try_get::<chrono::DateTime<chrono::Utc>, _>(9)?,
        ))
    };
    let Ok((position, tx, event_id, stream_id, stream_version, event_type, recorded_at)) =
        identity()
    else {
        return problem;
    };
    let schema_version = row
        .try_get::<i32, _>(6)
        .ok()
        .and_then(|v| schema_version_of(v).ok())
        .unwrap_or(0);
    let payload = row
        .try_get_raw(7)
        .ok()
        .and_then(|value| jsonb_text(value).ok())
        .and_then(|text| serde_json::value::RawValue::from_string(text.to_owned()).ok())
        .unwrap_or_else(|| serde_json::value::RawValue::NULL.to_owned());
    let metadata = row
        .try_get::<Json<Metadata>, _>(8)
        .map(|m| m.0)
        .unwrap_or_default();
    let message = match problem {
        Error::CorruptedRow { message, .. } => message,
        other => other.to_string(),
    };
    Error::UnreadableEvent {
        event: Box::new(Envelope {
            tenant_id: tenant.clone(),
            event_id,
            stream_id,
            stream_version: stream_version.max(0) as u64,
            log_position: LogPosition::new(tx as u64, position.max(0) as u64),
            event_type,
            schema_version,
            metadata,
            recorded_at,
            payload,
        }),
        message,
    }
}

/// Decodes an event row (the columns of read_stream.sql), the payload
/// decoded by `decode` from the jsonb text where it lies in the row
/// (borrowed, not copied first); an error names the row's position. jsonb
/// arrives in binary: the metadata is decoded from it without an
/// intermediate string.
pub(crate) fn decode_event_row<T>(
    row: &PgRow,
    tenant: &TenantId,
    decode: impl FnOnce(PayloadRef<'_>) -> Result<T, Error>,
) -> Result<Envelope<T>, Error> {
    let at = |i: usize| move |e| db_error(COLUMN_NAMES[i], e);
    let position: i64 = row.try_get_unchecked(0).map_err(at(0))?;
    let position = position as u64;
    let located = |e: Error| e.at_position(position);
    let tx: i64 = row.try_get_unchecked(1).map_err(at(1))?;
    let stream_version: i64 = row.try_get_unchecked(4).map_err(at(4))?;
    let event_type: String = row.try_get_unchecked(5).map_err(at(5))?;
    let schema_version: i32 = row.try_get_unchecked(6).map_err(at(6))?;
    let schema_version = schema_version_of(schema_version).map_err(located)?;
    let text = row
        .try_get_raw(7)
        .map_err(at(7))
        .and_then(|value| jsonb_text(value).map_err(corrupted))
        .map_err(located)?;
    let payload = decode(PayloadRef {
        stream_version: stream_version as u64,
        event_type: &event_type,
        schema_version,
        payload: text,
        raw: None,
    })
    .map_err(located)?;
    let metadata: Json<Metadata> = row.try_get_unchecked(8).map_err(|e| {
        located(corrupted(format!(
            "metadata is not an annals metadata object: {e}"
        )))
    })?;
    Ok(Envelope {
        tenant_id: tenant.clone(),
        event_id: row.try_get_unchecked(2).map_err(at(2))?,
        stream_id: row.try_get_unchecked(3).map_err(at(3))?,
        stream_version: stream_version as u64,
        log_position: LogPosition::new(tx as u64, position),
        event_type,
        schema_version,
        metadata: metadata.0,
        recorded_at: row.try_get_unchecked(9).map_err(at(9))?,
        payload,
    })
}

/// A stored schema version, which the column allows to be negative.
fn schema_version_of(stored: i32) -> Result<u32, Error> {
    u32::try_from(stored).map_err(|_| corrupted(format!("negative schema version {stored}")))
}

/// Decodes a row of read_full_payloads.sql, borrowing from it. An error
/// names no position; the fold ([`locate`]) fills it in.
fn payload_row(row: &PgRow) -> Result<PayloadRef<'_>, Error> {
    let stream_version: i64 = row
        .try_get_unchecked(0)
        .map_err(|e| db_error(COLUMN_NAMES[4], e))?;
    let event_type: &str = row
        .try_get_unchecked(1)
        .map_err(|e| db_error(COLUMN_NAMES[5], e))?;
    let schema_version: i32 = row
        .try_get_unchecked(2)
        .map_err(|e| db_error(COLUMN_NAMES[6], e))?;
    let payload = row
        .try_get_raw(3)
        .map_err(|e| db_error(COLUMN_NAMES[7], e))
        .and_then(|value| jsonb_text(value).map_err(corrupted))?;
    Ok(PayloadRef {
        stream_version: stream_version as u64,
        event_type,
        schema_version: schema_version_of(schema_version)?,
        payload,
        raw: None,
    })
}

/// Why a payload fold stopped before the end of the stream.
pub(crate) enum Stop {
    /// The row's schema key is not known (or ambiguous): the read goes on
    /// from this version with read_full_payloads.sql.
    Unmapped(i64),
    /// Reading or folding the row failed (its version when it could be
    /// read, for [`locate`]).
    Failed(Option<i64>, Error),
}

/// Folds a row of read_full_payloads.sql into `f`. On an error, returns it
/// with the row's stream version (when it could be read), for [`locate`].
/// (Boxed: the error path is rare and `Error` is large.)
pub(crate) fn fold_full_row<F>(row: &PgRow, f: &mut F) -> Result<(), Box<Stop>>
where
    F: FnMut(PayloadRef<'_>) -> Result<(), Error>,
{
    payload_row(row)
        .and_then(f)
        .map_err(|e| Box::new(Stop::Failed(row.try_get_unchecked(0).ok(), e)))
}

/// Folds a row of read_payloads.sql (or an event row of
/// load_snapshot_and_events.sql: version, schema key, payload) into `f`,
/// with the type and schema version that `keys` maps its key to. (Boxed:
/// the stop is rare and `Error` is large.)
pub(crate) fn fold_lean_row<F>(row: &PgRow, keys: &KeyMap, f: &mut F) -> Result<(), Box<Stop>>
where
    F: FnMut(PayloadRef<'_>) -> Result<(), Error>,
{
    let failed = |version, e| Box::new(Stop::Failed(version, e));
    let stream_version: i64 = row
        .try_get_unchecked(0)
        .map_err(|e| failed(None, db_error(COLUMN_NAMES[4], e)))?;
    let key: i64 = row.try_get_unchecked(1).map_err(|e| {
        failed(
            Some(stream_version),
            db_error("reading an event's schema key", e),
        )
    })?;
    let Some((event_type, schema_version)) = lookup(keys, key) else {
        return Err(Box::new(Stop::Unmapped(stream_version)));
    };
    let payload = row
        .try_get_raw(2)
        .map_err(|e| db_error(COLUMN_NAMES[7], e))
        .and_then(|value| jsonb_text(value).map_err(corrupted))
        .map_err(|e| failed(Some(stream_version), e))?;
    f(PayloadRef {
        stream_version: stream_version as u64,
        event_type,
        schema_version,
        payload,
        raw: None,
    })
    .map_err(|e| failed(Some(stream_version), e))
}

/// Completes an error from folding the event at `stream_version` of
/// `stream_id` with the event's global position (folds do not fetch it):
/// one more query, on the error path only. An event deleted in the
/// meantime keeps no position; a failed lookup is reported as the database
/// error it is, naming the original error's event.
pub(crate) async fn locate(
    conn: &mut PgConnection,
    tenant: &TenantId,
    stream_id: &str,
    stream_version: Option<i64>,
    error: Error,
) -> Error {
    let unlocated = matches!(
        error,
        Error::Decode { position: None, .. } | Error::CorruptedRow { position: None, .. }
    );
    let Some(version) = stream_version.filter(|_| unlocated) else {
        return error;
    };
    match sqlx::query_scalar::<_, i64>(sql::LOCATE)
        .bind(stream_id)
        .bind(version)
        .bind(tenant.as_str())
        .fetch_optional(conn)
        .await
    {
        Ok(Some(position)) => error.at_position(position.max(0) as u64),
        Ok(None) => error,
        Err(e) => Error::backend(
            "reading the global position of an event that could not be read",
            format!("{e} (the event, version {version} of stream `{stream_id}`: {error})"),
        ),
    }
}

/// The JSON text of a jsonb value, borrowed from the row. Postgres only
/// stores valid JSON in jsonb, so the text is handed to the event's decoder
/// as it is: one parse per event, like a plain `serde_json::from_slice`.
pub(crate) fn jsonb_text(value: PgValueRef<'_>) -> Result<&str, String> {
    if value.is_null() {
        return Err("payload is NULL".to_owned());
    }
    let binary = value.format() == PgValueFormat::Binary;
    let jsonb = value.type_info().name() == "JSONB";
    let bytes = value
        .as_bytes()
        .map_err(|e| format!("payload could not be read: {e}"))?;
    let text = match bytes.split_first() {
        // binary jsonb: a format version byte, then the text
        Some((1, rest)) if binary && jsonb => rest,
        Some((v, _)) if binary && jsonb => {
            return Err(format!("payload has jsonb format version {v}, expected 1"))
        }
        _ => bytes,
    };
    std::str::from_utf8(text).map_err(|e| format!("payload is not UTF-8: {e}"))
}
