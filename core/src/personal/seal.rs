//! Sealing and opening the personal fields of a JSON payload.

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine as _;
use serde_json::{Map, Value};

use super::keys::KEY_ID_BYTES;
use super::{forgotten_marker, is_forgotten_marker, DataKey, PersonalError};

/// The key of a sealed value's ciphertext: `{"$sealed": "<base64>",
/// "$subject": "<subject>"}`.
pub const SEALED: &str = "$sealed";
/// The key of a sealed value's subject.
pub const SUBJECT: &str = "$subject";

/// Calls `f` on every value `pointer` names in `value` (`*` for each item
/// of an array). Missing fields are skipped.
fn each_at(
    value: &mut Value,
    pointer: &str,
    f: &mut dyn FnMut(&mut Value, &str) -> Result<(), PersonalError>,
) -> Result<(), PersonalError> {
    fn go(
        value: &mut Value,
        parts: &[&str],
        at: &mut String,
        f: &mut dyn FnMut(&mut Value, &str) -> Result<(), PersonalError>,
    ) -> Result<(), PersonalError> {
        let Some((first, rest)) = parts.split_first() else {
            return f(value, at);
        };
        let len = at.len();
        let result = match (value, *first) {
            (Value::Array(items), "*") => {
                let mut r = Ok(());
                for (i, item) in items.iter_mut().enumerate() {
                    at.push_str(&format!("/{i}"));
                    r = go(item, rest, at, f);
                    at.truncate(len);
                    if r.is_err() {
                        break;
                    }
                }
                r
            }
            (Value::Object(map), key) => {
                let key = key.replace("~1", "/").replace("~0", "~");
                match map.get_mut(&key) {
                    Some(v) => {
                        at.push('/');
                        at.push_str(first);
                        let r = go(v, rest, at, f);
                        at.truncate(len);
                        r
                    }
                    None => Ok(()),
                }
            }
            _ => Ok(()),
        };
        result
    }
    let parts: Vec<&str> = pointer.split('/').skip(1).collect();
    go(value, &parts, &mut String::new(), f)
}

fn sealed_parts(value: &Value) -> Option<(&str, &str)> {
    let obj = value.as_object()?;
    if obj.len() != 2 {
        return None;
    }
    Some((obj.get(SEALED)?.as_str()?, obj.get(SUBJECT)?.as_str()?))
}

/// Encrypts the values at `pointers` in `value` with `subject`'s `key`:
/// each becomes `{"$sealed": …, "$subject": …}` (a fresh nonce per value;
/// the subject and the field's place are bound to the ciphertext, so a
/// sealed value copied elsewhere does not open). Values already sealed or
/// forgotten are left as they are.
pub fn seal(value: &mut Value, pointers: &[String], subject: &str, key: &DataKey) {
    for pointer in pointers {
        // sealing cannot fail; the closure's error type is for `open`
        let _ = each_at(value, pointer, &mut |v, at| {
            if is_forgotten_marker(v) || sealed_parts(v).is_some() {
                return Ok(());
            }
            let plain = zeroize::Zeroizing::new(v.to_string().into_bytes());
            // the key's id, then nonce, ciphertext and tag
            let mut sealed = key.id().to_vec();
            sealed.extend(key.encrypt(&plain, aad(subject, at).as_bytes()));
            let mut obj = Map::new();
            obj.insert(
                SEALED.to_owned(),
                Value::String(base64::engine::general_purpose::STANDARD.encode(sealed)),
            );
            obj.insert(SUBJECT.to_owned(), Value::String(subject.to_owned()));
            *v = Value::Object(obj);
            Ok(())
        });
    }
}

fn aad(subject: &str, at: &str) -> String {
    format!("{subject}\u{0}{at}")
}

/// The subjects whose keys [`open`] needs for `value`.
pub fn sealed_subjects(value: &mut Value, pointers: &[String]) -> BTreeSet<String> {
    let mut subjects = BTreeSet::new();
    for pointer in pointers {
        let _ = each_at(value, pointer, &mut |v, _| {
            if let Some((_, subject)) = sealed_parts(v) {
                subjects.insert(subject.to_owned());
            }
            Ok(())
        });
    }
    subjects
}

/// Decrypts the sealed values at `pointers` in `value` with the keys in
/// `keys` (by subject). A value whose subject has no key (forgotten)
/// becomes the forgotten marker, which [`Personal`](super::Personal) reads
/// as [`Personal::Forgotten`](super::Personal::Forgotten); one that does
/// not decrypt with its key is [`PersonalError::Damaged`].
pub fn open(
    value: &mut Value,
    pointers: &[String],
    keys: &BTreeMap<String, DataKey>,
) -> Result<(), PersonalError> {
    for pointer in pointers {
        each_at(value, pointer, &mut |v, at| {
            let Some((sealed, subject)) = sealed_parts(v) else {
                return Ok(());
            };
            let Some(key) = keys.get(subject) else {
                *v = forgotten_marker();
                return Ok(());
            };
            *v = open_one(sealed, subject, at, key)?;
            Ok(())
        })?;
    }
    Ok(())
}

/// Whether a payload's text may hold sealed values: a cheap scan that lets
/// payloads without personal data pass without being parsed.
pub(crate) fn may_be_sealed(text: &str) -> bool {
    text.contains("\"$sealed\"")
}

/// Calls `f` on every sealed value anywhere in `value`, with its JSON
/// pointer (where [`seal`] put it, which its ciphertext is bound to).
fn each_sealed(
    value: &mut Value,
    at: &mut String,
    f: &mut dyn FnMut(&mut Value, &str) -> Result<(), PersonalError>,
) -> Result<(), PersonalError> {
    if sealed_parts(value).is_some() {
        return f(value, at);
    }
    let len = at.len();
    match value {
        Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                at.push('/');
                if key.contains(['~', '/']) {
                    at.push_str(&key.replace('~', "~0").replace('/', "~1"));
                } else {
                    at.push_str(key);
                }
                let r = each_sealed(v, at, f);
                at.truncate(len);
                r?;
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter_mut().enumerate() {
                use std::fmt::Write as _;
                let _ = write!(at, "/{i}");
                let r = each_sealed(v, at, f);
                at.truncate(len);
                r?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// The subjects of every sealed value anywhere in `value`: whose keys
/// [`open_all`] needs.
pub(crate) fn subjects_in(value: &mut Value) -> BTreeSet<String> {
    let mut subjects = BTreeSet::new();
    let _ = each_sealed(value, &mut String::new(), &mut |v, _| {
        if let Some((_, subject)) = sealed_parts(v) {
            subjects.insert(subject.to_owned());
        }
        Ok(())
    });
    subjects
}

/// Opens every sealed value anywhere in `value` with `key_of(subject)`
/// (`None`: the subject was forgotten, and the value becomes the forgotten
/// marker). Needs no schema: a sealed value says whose it is, and its
/// place is bound to its ciphertext.
pub(crate) fn open_all(
    value: &mut Value,
    key_of: &mut dyn FnMut(&str) -> Lookup,
) -> Result<(), PersonalError> {
    each_sealed(value, &mut String::new(), &mut |v, at| {
        let Some((sealed, subject)) = sealed_parts(v) else {
            return Ok(());
        };
        match key_of(subject) {
            Lookup::Key(key) => *v = open_one(sealed, subject, at, &key)?,
            Lookup::Forgotten => *v = forgotten_marker(),
            // left sealed: the caller fetches the key and opens again
            Lookup::Unknown => {}
        }
        Ok(())
    })
}

/// What [`open_all`] learns of a subject's key.
#[derive(Clone)]
pub(crate) enum Lookup {
    /// The key.
    Key(DataKey),
    /// The subject was forgotten: its values read as forgotten.
    Forgotten,
    /// Not known yet (not cached): its values stay sealed.
    Unknown,
}

fn open_one(sealed: &str, subject: &str, at: &str, key: &DataKey) -> Result<Value, PersonalError> {
    let damaged = || PersonalError::Damaged {
        subject: subject.to_owned(),
        pointer: at.to_owned(),
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(sealed)
        .map_err(|_| damaged())?;
    let Some((id, bytes)) = bytes.split_at_checked(KEY_ID_BYTES) else {
        return Err(damaged());
    };
    if id != key.id() {
        // sealed by an earlier key of this subject, forgotten since (the
        // subject was started again)
        return Ok(forgotten_marker());
    }
    let plain = key
        .decrypt(bytes, aad(subject, at).as_bytes())
        .ok_or_else(damaged)?;
    serde_json::from_slice(&plain).map_err(|_| damaged())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pointers() -> Vec<String> {
        vec!["/name".into(), "/contact".into(), "/notes/*".into()]
    }

    #[test]
    fn sealed_fields_open_with_their_key_and_read_forgotten_without() {
        let original = serde_json::json!({
            "id": "l-1", "name": "Ana", "contact": {"phone": "555-0100"}, "notes": ["allergic", "calls late"]
        });
        let key = DataKey::generate();
        let mut value = original.clone();
        seal(&mut value, &pointers(), "patient-1", &key);
        let text = value.to_string();
        for canary in ["Ana", "555-0100", "allergic", "calls late"] {
            assert!(!text.contains(canary), "{canary} in {text}");
        }
        assert_eq!(value["id"], "l-1", "other fields stay plain");
        assert_eq!(
            sealed_subjects(&mut value, &pointers()),
            BTreeSet::from(["patient-1".to_owned()])
        );
        let keys = BTreeMap::from([("patient-1".to_owned(), key.clone())]);
        let mut opened = value.clone();
        open(&mut opened, &pointers(), &keys).expect("opens");
        assert_eq!(opened, original);
        // forgotten: no key, every personal field reads as the marker
        let mut gone = value.clone();
        open(&mut gone, &pointers(), &BTreeMap::new()).expect("opens as forgotten");
        assert_eq!(
            gone,
            serde_json::json!({
                "id": "l-1", "name": {"$forgotten": true}, "contact": {"$forgotten": true},
                "notes": [{"$forgotten": true}, {"$forgotten": true}]
            })
        );
        // a sealed value moved to another field does not open
        let mut moved = value.clone();
        moved["name"] = value["notes"][0].clone();
        assert!(matches!(
            open(&mut moved, &pointers(), &keys),
            Err(PersonalError::Damaged { pointer, .. }) if pointer == "/name"
        ));
    }
}
