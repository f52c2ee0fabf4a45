//! The limits of the values annals stores, in one place. Every backend
//! checks them the same way, before anything is written or any SQL runs,
//! and refuses a value out of them with [`Error::InvalidInput`](crate::Error::InvalidInput) naming the
//! field, the limit and the value's length (never the value itself: it may
//! be 10 kB long).
//!
//! | value | limit | checked by |
//! |---|---|---|
//! | stream id | not empty, no NUL, at most [`MAX_STREAM_ID_BYTES`] bytes | [`check_stream_id`] (appends, stream reads, `stream_version`) |
//! | event type | not empty, no NUL, at most [`MAX_EVENT_TYPE_BYTES`] bytes | [`check_event_type`] (appends) |
//! | projection name | not empty, no NUL, at most [`MAX_PROJECTION_NAME_BYTES`] bytes | [`check_projection_name`] (projection stores) |
//! | subject id | not empty, no NUL, at most [`MAX_SUBJECT_BYTES`] bytes | [`check_subject`] (subject keys and `forget`, a knowledge base's `forget_subject`; a document's subject, as `document subject`) |
//! | payload | no `\u0000` in a string, nested at most [`MAX_JSON_DEPTH`] levels | [`check_payload`] (appends) |
//! | metadata | no NUL in a string or key, nested at most [`MAX_JSON_DEPTH`] levels | [`check_metadata`] (appends) |
//!
//! Why these numbers: Postgres keeps stream ids, event types and projection
//! names in btree indexes, whose entries must fit a third of a page
//! (about 2,700 bytes with the default 8 kB page, less with the other
//! columns of a composite key). A longer value is refused by the database
//! with a raw `index row requires … bytes` error, and only on Postgres; the
//! limits stay well under it, so every value the in-memory store accepts
//! Postgres stores too. Postgres text and jsonb cannot hold the NUL
//! character at all (`invalid byte sequence for encoding "UTF8": 0x00`,
//! `unsupported Unicode escape sequence`), so NUL is refused everywhere
//! rather than stored by one backend only. JSON nested deeper than
//! [`MAX_JSON_DEPTH`] cannot be read back by `serde_json` (its recursion
//! limit is 128), so it is refused when written.
//!
//! ```
//! use annals::store::limits;
//!
//! assert!(limits::check_stream_id("lead-1").is_ok());
//! let e = limits::check_stream_id(&"x".repeat(10_000)).unwrap_err();
//! assert_eq!(
//!     e.to_string(),
//!     "invalid stream id: is 10000 bytes long, more than the limit of 1024 bytes"
//! );
//! let e = limits::check_payload(r#"{"name":"a\u0000b"}"#).unwrap_err();
//! assert!(e.to_string().contains("NUL"));
//! ```

use crate::error::InvalidInput;
use crate::{Metadata, NewEvent};

/// The longest stream id, in bytes (UTF-8).
pub const MAX_STREAM_ID_BYTES: usize = 1024;

/// The longest event type, in bytes (UTF-8).
pub const MAX_EVENT_TYPE_BYTES: usize = 255;

/// The longest projection name, in bytes (UTF-8).
pub const MAX_PROJECTION_NAME_BYTES: usize = 255;

/// The longest saga correlation id, in bytes (UTF-8): the saga stores keep
/// it in a unique index.
pub const MAX_CORRELATION_ID_BYTES: usize = 1024;

/// The longest subject id of personal data, in bytes (UTF-8).
pub const MAX_SUBJECT_BYTES: usize = 1024;

/// Checks the id of a subject of personal data: not empty, no NUL, at most
/// [`MAX_SUBJECT_BYTES`].
pub fn check_subject(subject: &str) -> Result<(), InvalidInput> {
    check_name("subject", subject, MAX_SUBJECT_BYTES)
}

/// The longest error text annals stores (a dead letter's error, a failed
/// projection's error, a saga's or a command's last error), in bytes: a
/// longer one is cut (see [`stored_error_text`]).
pub const MAX_ERROR_TEXT_BYTES: usize = 8 * 1024;

/// An error text as annals stores it: NUL characters (which Postgres text
/// cannot hold) replaced by U+FFFD, and cut at [`MAX_ERROR_TEXT_BYTES`] (on
/// a character boundary, saying how long it was). Error texts come from
/// handlers, buses and drivers, any of which may echo a hostile value; a
/// text the database refused would make the very write that records the
/// failure fail, and stop the handler. Applied the same on both backends.
///
/// ```
/// use annals::store::limits::stored_error_text;
/// assert_eq!(stored_error_text("bad \0 byte"), "bad \u{fffd} byte");
/// let long = stored_error_text("x".repeat(100_000));
/// assert!(long.len() < 9 * 1024 && long.ends_with("(cut from 100000 bytes)"));
/// ```
pub fn stored_error_text(text: impl Into<String>) -> String {
    let mut text: String = text.into();
    if text.contains('\0') {
        text = text.replace('\0', "\u{fffd}");
    }
    if text.len() > MAX_ERROR_TEXT_BYTES {
        let total = text.len();
        let mut cut = MAX_ERROR_TEXT_BYTES - 64;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push_str(&format!("… (cut from {total} bytes)"));
    }
    text
}

/// Checks the reason an operator gives for discarding a dead letter: not
/// empty (a discard says why), no NUL, at most [`MAX_ERROR_TEXT_BYTES`].
pub fn check_discard_reason(reason: &str) -> Result<(), InvalidInput> {
    check_name("discard reason", reason, MAX_ERROR_TEXT_BYTES)
}

/// The deepest nesting of arrays and objects in a payload or in metadata
/// (serde_json's own recursion limit: deeper JSON could not be read back).
pub const MAX_JSON_DEPTH: usize = 128;

/// A name-like value: not empty, no NUL, at most `max` bytes.
fn check_name(field: &'static str, value: &str, max: usize) -> Result<(), InvalidInput> {
    if value.is_empty() {
        return Err(InvalidInput::new(field, "must not be empty"));
    }
    if value.len() > max {
        return Err(InvalidInput::new(
            field,
            format!(
                "is {} bytes long, more than the limit of {max} bytes",
                value.len()
            ),
        ));
    }
    if let Some(at) = value.bytes().position(|b| b == 0) {
        return Err(InvalidInput::new(
            field,
            format!(
                "contains a NUL character (at byte {at} of {}), which the stores cannot hold",
                value.len()
            ),
        ));
    }
    Ok(())
}

/// Checks a stream id: not empty, no NUL, at most [`MAX_STREAM_ID_BYTES`].
pub fn check_stream_id(stream_id: &str) -> Result<(), InvalidInput> {
    check_name("stream id", stream_id, MAX_STREAM_ID_BYTES)
}

/// Checks an event type: not empty, no NUL, at most [`MAX_EVENT_TYPE_BYTES`].
pub fn check_event_type(event_type: &str) -> Result<(), InvalidInput> {
    check_name("event type", event_type, MAX_EVENT_TYPE_BYTES)
}

/// Checks a saga correlation id: not empty, no NUL, at most
/// [`MAX_CORRELATION_ID_BYTES`].
pub fn check_correlation_id(correlation_id: &str) -> Result<(), InvalidInput> {
    check_name(
        "saga correlation id",
        correlation_id,
        MAX_CORRELATION_ID_BYTES,
    )
}

/// Checks a projection name: not empty, no NUL, at most
/// [`MAX_PROJECTION_NAME_BYTES`].
pub fn check_projection_name(name: &str) -> Result<(), InvalidInput> {
    check_name("projection name", name, MAX_PROJECTION_NAME_BYTES)
}

/// Checks a payload's JSON text: no `\u0000` escape inside a string (jsonb
/// cannot hold NUL), nesting at most [`MAX_JSON_DEPTH`] levels.
///
/// Cheap on the append path: two scans of the text for the common case
/// (a substring search for `\u0000`, a count of `{` and `[`); the exact
/// scan, which tells strings from structure, runs only when one of them
/// finds something.
pub fn check_payload(json: &str) -> Result<(), InvalidInput> {
    check_json_text("payload", json)
}

/// Checks a snapshot's encoded state as [`check_payload`] checks a payload
/// (no NUL in a string, nesting at most [`MAX_JSON_DEPTH`] levels): a state
/// that holds text from an event with a NUL is refused by every snapshot
/// store the same way, before any SQL.
pub fn check_snapshot_state(json: &str) -> Result<(), InvalidInput> {
    check_json_text("snapshot state", json)
}

fn check_json_text(field: &'static str, json: &str) -> Result<(), InvalidInput> {
    let maybe_nul = json.contains("\\u0000");
    let maybe_deep = !maybe_nul
        && json
            .bytes()
            .filter(|b| matches!(b, b'{' | b'['))
            .take(MAX_JSON_DEPTH + 1)
            .count()
            > MAX_JSON_DEPTH;
    if !maybe_nul && !maybe_deep {
        return Ok(());
    }
    scan_json(field, json.as_bytes())
}

/// The exact scan: tracks strings and escapes, so that `"\\u0000"` (a
/// backslash, then `u0000`) and brackets inside strings are not mistaken.
fn scan_json(field: &'static str, bytes: &[u8]) -> Result<(), InvalidInput> {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if in_string {
            match b {
                b'\\' => {
                    if bytes.get(i + 1) == Some(&b'u') && bytes.get(i + 2..i + 6) == Some(b"0000") {
                        return Err(nul_in_json(field, bytes.len()));
                    }
                    i += 2;
                    continue;
                }
                b'"' => in_string = false,
                _ => {}
            }
        } else {
            match b {
                b'"' => in_string = true,
                b'{' | b'[' => {
                    depth += 1;
                    if depth > MAX_JSON_DEPTH {
                        return Err(too_deep(field));
                    }
                }
                b'}' | b']' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        i += 1;
    }
    Ok(())
}

fn nul_in_json(field: &'static str, len: usize) -> InvalidInput {
    InvalidInput::new(
        field,
        format!(
            "contains the NUL character (`\\u0000`) in a string ({len} bytes of JSON); \
             Postgres jsonb cannot hold NUL, so no store accepts it: remove or replace it"
        ),
    )
}

fn too_deep(field: &'static str) -> InvalidInput {
    InvalidInput::new(
        field,
        format!("is nested too deeply: more than {MAX_JSON_DEPTH} levels of arrays and objects"),
    )
}

/// Checks an event's metadata: no NUL in its user, its keys or its
/// strings, nesting at most [`MAX_JSON_DEPTH`] levels. Walks the values
/// (empty metadata costs nothing).
pub fn check_metadata(metadata: &Metadata) -> Result<(), InvalidInput> {
    const FIELD: &str = "metadata";
    if metadata.user.as_deref().is_some_and(|u| u.contains('\0')) {
        return Err(nul_in_value(FIELD));
    }
    for (k, v) in &metadata.extra {
        if k.contains('\0') {
            return Err(nul_in_value(FIELD));
        }
        // the metadata object itself is the first level
        walk_json(FIELD, v, 1)?;
    }
    Ok(())
}

/// Checks a JSON value annals stores (a saga's data, a saga command): no
/// NUL in a key or a string, nesting at most [`MAX_JSON_DEPTH`] levels.
/// `field` names it in the error.
pub fn check_json_value(
    field: &'static str,
    value: &serde_json::Value,
) -> Result<(), InvalidInput> {
    walk_json(field, value, 0)
}

fn walk_json(
    field: &'static str,
    value: &serde_json::Value,
    depth: usize,
) -> Result<(), InvalidInput> {
    use serde_json::Value;
    match value {
        Value::String(s) if s.contains('\0') => Err(nul_in_value(field)),
        Value::Array(items) => {
            if depth + 1 > MAX_JSON_DEPTH {
                return Err(too_deep(field));
            }
            items
                .iter()
                .try_for_each(|v| walk_json(field, v, depth + 1))
        }
        Value::Object(map) => {
            if depth + 1 > MAX_JSON_DEPTH {
                return Err(too_deep(field));
            }
            map.iter().try_for_each(|(k, v)| {
                if k.contains('\0') {
                    return Err(nul_in_value(field));
                }
                walk_json(field, v, depth + 1)
            })
        }
        _ => Ok(()),
    }
}

fn nul_in_value(field: &'static str) -> InvalidInput {
    InvalidInput::new(
        field,
        "contains the NUL character in a string; Postgres jsonb cannot hold NUL, \
         so no store accepts it: remove or replace it",
    )
}

/// Checks an append: its stream id, and each event's type, payload and
/// metadata. What every store runs first.
pub fn check_append(stream_id: &str, events: &[NewEvent]) -> Result<(), InvalidInput> {
    check_stream_id(stream_id)?;
    for e in events {
        check_event_type(&e.event_type)?;
        check_payload(e.payload.get())?;
        check_metadata(&e.metadata)?;
    }
    Ok(())
}

/// The error for a value that `serde_json` refused to serialize or parse
/// for its depth (its recursion limit), if `e` is that error.
pub(crate) fn depth_error(field: &'static str, e: &serde_json::Error) -> Option<InvalidInput> {
    e.to_string()
        .contains("recursion limit")
        .then(|| too_deep(field))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(check_stream_id("a").is_ok());
        assert!(check_stream_id(&"a".repeat(MAX_STREAM_ID_BYTES)).is_ok());
        let e = check_stream_id(&"a".repeat(MAX_STREAM_ID_BYTES + 1)).unwrap_err();
        assert_eq!(e.field, "stream id");
        assert!(e.problem.contains("1025 bytes") && e.problem.contains("1024"));
        assert!(check_stream_id("").unwrap_err().problem.contains("empty"));
        assert!(check_event_type("a\0b")
            .unwrap_err()
            .problem
            .contains("NUL"));
        assert!(check_projection_name(&"p".repeat(256)).is_err());
        // saga correlation ids: empty, huge, NUL
        assert!(check_correlation_id(&"c".repeat(MAX_CORRELATION_ID_BYTES)).is_ok());
        let e = check_correlation_id(&"c".repeat(10_000)).unwrap_err();
        assert_eq!(e.field, "saga correlation id");
        assert!(e.problem.contains("1024 bytes"), "{e}");
        assert!(check_correlation_id("")
            .unwrap_err()
            .problem
            .contains("empty"));
        assert!(check_correlation_id("order\0-7")
            .unwrap_err()
            .problem
            .contains("NUL"));
        // the value is never echoed
        let e = check_stream_id(&"secret".repeat(1000)).unwrap_err();
        assert!(!e.to_string().contains("secret"));
    }

    #[test]
    fn payloads() {
        assert!(check_payload(r#"{"a":"b"}"#).is_ok());
        assert!(check_payload(r#"{"a":"\u0000"}"#).is_err());
        assert!(check_payload(r#"{"a\u0000":1}"#).is_err());
        // an escaped backslash followed by u0000 is not NUL
        assert!(check_payload(r#"{"a":"\\u0000"}"#).is_ok());
        assert!(check_payload(r#"{"a":"\u00001"}"#).is_err());
        let deep = format!("{}{}", "[".repeat(129), "]".repeat(129));
        assert!(check_payload(&deep)
            .unwrap_err()
            .problem
            .contains("nested too deeply"));
        let ok = format!("{}{}", "[".repeat(128), "]".repeat(128));
        assert!(check_payload(&ok).is_ok());
        // many brackets side by side, or inside strings, are not depth
        let wide = format!("[{}]", vec!["[]"; 500].join(","));
        assert!(check_payload(&wide).is_ok());
        let stringy = format!("[\"{}\"]", "[".repeat(500));
        assert!(check_payload(&stringy).is_ok());
    }

    #[test]
    fn metadata() {
        assert!(check_metadata(&Metadata::new()).is_ok());
        let mut m = Metadata::new();
        m.user = Some("a\0".into());
        assert!(check_metadata(&m).is_err());
        let mut m = Metadata::new();
        m.extra
            .insert("k".into(), serde_json::json!({"x": ["a\u{0}"]}));
        assert!(check_metadata(&m).unwrap_err().problem.contains("NUL"));
        let mut v = serde_json::json!(1);
        for _ in 0..200 {
            v = serde_json::Value::Array(vec![v]);
        }
        let mut m = Metadata::new();
        m.extra.insert("deep".into(), v);
        assert!(check_metadata(&m)
            .unwrap_err()
            .problem
            .contains("nested too deeply"));
    }

    #[test]
    fn json_values() {
        let ok = serde_json::json!({"order": "a", "items": [1, {"k": "v"}]});
        assert!(check_json_value("saga data", &ok).is_ok());
        let nul = serde_json::json!({"order": "a\u{0}b"});
        let e = check_json_value("saga data", &nul).unwrap_err();
        assert_eq!(e.field, "saga data");
        assert!(e.problem.contains("NUL"));
        let key = serde_json::json!({"a\u{0}": 1});
        assert!(check_json_value("saga command", &key).is_err());
        let mut deep = serde_json::json!(1);
        for _ in 0..=MAX_JSON_DEPTH {
            deep = serde_json::Value::Array(vec![deep]);
        }
        assert!(check_json_value("saga data", &deep)
            .unwrap_err()
            .problem
            .contains("nested too deeply"));
        let mut at_limit = serde_json::json!(1);
        for _ in 0..MAX_JSON_DEPTH {
            at_limit = serde_json::Value::Array(vec![at_limit]);
        }
        assert!(check_json_value("saga data", &at_limit).is_ok());
    }

    #[test]
    fn error_texts() {
        assert_eq!(stored_error_text("a\u{0}b"), "a\u{fffd}b");
        let long = stored_error_text("é".repeat(10_000));
        assert!(long.len() <= MAX_ERROR_TEXT_BYTES);
        assert!(
            long.ends_with("(cut from 20000 bytes)"),
            "{}",
            &long[long.len() - 40..]
        );
        assert_eq!(stored_error_text("short"), "short");
    }
}
