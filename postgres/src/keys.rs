//! Schema keys: the `schema_key` column of `annals_events` (migration 0008)
//! mapped back to the (event type, schema version) it names.
//!
//! Lean stream reads fetch `stream_version, schema_key, payload` instead of
//! the type and version columns (one bigint is cheaper for the server to
//! send than a text and an integer). The key is
//! `hashtextextended(event_type, schema_version)`, a generated column, so
//! the store learns which pair a key stands for from Postgres itself: the
//! keys of the registered types at start-up, and any other key the first
//! time a full read (with the type and version columns) meets it. A key it
//! cannot map sends the read to the full statement from that event on.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, PoisonError, RwLock};

/// What a key stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Known {
    /// One (event type, schema version).
    Pair {
        event_type: Box<str>,
        schema_version: u32,
    },
    /// Two pairs share the key (a hash collision): rows with it are always
    /// read with their type and version columns.
    Ambiguous,
}

/// The keys are hashes already: hashing them again would only cost time.
#[derive(Default)]
pub(crate) struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // not used by i64 keys; a plain fold keeps it a valid hasher
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_i64(&mut self, key: i64) {
        self.0 = key as u64;
    }
}

/// The map of keys to what they stand for.
pub(crate) type KeyMap = HashMap<i64, Known, BuildHasherDefault<KeyHasher>>;

/// The keys a store knows, shared by its clones. Readers take the current
/// map once per read ([`snapshot`](Self::snapshot)); learning a key copies
/// the map (rare: once per new (type, version) per process).
#[derive(Debug, Default)]
pub(crate) struct SchemaKeys {
    map: RwLock<Arc<KeyMap>>,
    /// How many reads met a key they could not map (tests check that the
    /// lean path is the one taken).
    misses: std::sync::atomic::AtomicU64,
}

impl SchemaKeys {
    /// The map as it is now.
    pub(crate) fn snapshot(&self) -> Arc<KeyMap> {
        self.map
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Records that a lean read met a key it could not map.
    pub(crate) fn missed(&self) {
        self.misses
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// How many lean reads fell back to the full statement so far.
    #[cfg(all(test, feature = "testing"))]
    pub(crate) fn misses(&self) -> u64 {
        self.misses.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Learns what keys stand for, as Postgres computed them. A negative
    /// schema version is never learned (such a row is corrupted and must
    /// go through the full read, which reports it); a key seen with two
    /// different pairs becomes [`Known::Ambiguous`].
    pub(crate) fn learn<'a>(&self, pairs: impl IntoIterator<Item = (i64, &'a str, i32)>) {
        let current = self.snapshot();
        let new: Vec<(i64, &str, u32)> = pairs
            .into_iter()
            .filter_map(|(key, t, v)| Some((key, t, u32::try_from(v).ok()?)))
            .filter(|&(key, t, v)| !matches!(current.get(&key), Some(k) if is(k, t, v)))
            .collect();
        if new.is_empty() {
            return;
        }
        let mut guard = self.map.write().unwrap_or_else(PoisonError::into_inner);
        let mut map = KeyMap::clone(&guard);
        for (key, event_type, schema_version) in new {
            let known = map.entry(key).or_insert_with(|| Known::Pair {
                event_type: event_type.into(),
                schema_version,
            });
            if !is(known, event_type, schema_version) {
                *known = Known::Ambiguous;
            }
        }
        *guard = Arc::new(map);
    }
}

/// Whether `known` is the pair (or the ambiguous key, which nothing changes).
fn is(known: &Known, event_type: &str, schema_version: u32) -> bool {
    match known {
        Known::Pair {
            event_type: t,
            schema_version: v,
        } => **t == *event_type && *v == schema_version,
        Known::Ambiguous => true,
    }
}

/// The pair a key stands for, if it is known and unambiguous.
pub(crate) fn lookup(map: &KeyMap, key: i64) -> Option<(&str, u32)> {
    match map.get(&key)? {
        Known::Pair {
            event_type,
            schema_version,
        } => Some((event_type, *schema_version)),
        Known::Ambiguous => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learns_pairs_and_marks_collisions_ambiguous() {
        let keys = SchemaKeys::default();
        keys.learn([(7, "LeadCreated", 1), (8, "LeadScored", 2)]);
        let map = keys.snapshot();
        assert_eq!(lookup(&map, 7), Some(("LeadCreated", 1)));
        assert_eq!(lookup(&map, 8), Some(("LeadScored", 2)));
        assert_eq!(lookup(&map, 9), None);

        // learning the same pair again changes nothing (and copies nothing)
        keys.learn([(7, "LeadCreated", 1)]);
        assert!(Arc::ptr_eq(&map, &keys.snapshot()));

        // another pair with a known key: a collision, never mapped again
        keys.learn([(7, "LeadQualified", 1)]);
        let map = keys.snapshot();
        assert_eq!(lookup(&map, 7), None);
        assert_eq!(map.get(&7), Some(&Known::Ambiguous));
        keys.learn([(7, "LeadCreated", 1)]);
        assert_eq!(lookup(&keys.snapshot(), 7), None);
        // a collision within one batch, too
        keys.learn([(10, "A", 1), (10, "A", 2)]);
        assert_eq!(lookup(&keys.snapshot(), 10), None);
    }

    #[test]
    fn never_learns_a_negative_schema_version() {
        let keys = SchemaKeys::default();
        keys.learn([(5, "LeadCreated", -1)]);
        assert_eq!(keys.snapshot().get(&5), None);
    }
}
