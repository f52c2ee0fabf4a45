//! Schemas: the JSON Schema of every (event type, version), payload
//! validation, and the breaking-change guard (a fingerprint per schema,
//! checked against the database or a lock file committed with the
//! application).

use std::any::TypeId;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::{self, Write as _};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::error::RegistryError;
use crate::{Error, Event, NewEvent};

/// One (event type, version) known to a [`SchemaRegistry`].
pub struct RegisteredSchema {
    /// The event type.
    pub event_type: String,
    /// The schema version.
    pub version: u32,
    /// The JSON Schema.
    pub schema: Value,
    /// The schema's stable fingerprint (see [`fingerprint`]).
    pub fingerprint: String,
    /// The Rust type the schema was generated from.
    pub rust_type: &'static str,
    validator: jsonschema::Validator,
    personal_fields: Vec<String>,
}

impl fmt::Debug for RegisteredSchema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegisteredSchema")
            .field("event_type", &self.event_type)
            .field("version", &self.version)
            .field("fingerprint", &self.fingerprint)
            .field("rust_type", &self.rust_type)
            .finish_non_exhaustive()
    }
}

impl RegisteredSchema {
    /// The JSON pointers of the payload's personal fields, as the schema
    /// marks them (see [`personal_pointers`]); empty for most events.
    pub fn personal_fields(&self) -> &[String] {
        &self.personal_fields
    }

    /// Validates a payload against this schema.
    pub fn validate(&self, payload: &Value) -> Result<(), SchemaViolation> {
        if self.validator.is_valid(payload) {
            return Ok(());
        }
        let errors = self
            .validator
            .iter_errors(payload)
            .map(|e| (e.instance_path().to_string(), e.to_string()))
            .collect();
        Err(SchemaViolation {
            event_type: self.event_type.clone(),
            version: self.version,
            errors,
        })
    }
}

/// A payload that does not match its JSON Schema.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.describe())]
pub struct SchemaViolation {
    /// The event type.
    pub event_type: String,
    /// The schema version the payload was checked against.
    pub version: u32,
    /// Each failure: the JSON pointer into the payload (empty for the root)
    /// and the validator's message.
    pub errors: Vec<(String, String)>,
}

impl SchemaViolation {
    /// The JSON pointer of the first failure.
    pub fn pointer(&self) -> &str {
        self.errors.first().map(|(p, _)| p.as_str()).unwrap_or("")
    }

    fn describe(&self) -> String {
        let mut s = format!(
            "payload of `{}` v{} does not match its JSON Schema",
            self.event_type, self.version
        );
        if let Some((pointer, message)) = self.errors.first() {
            let at = if pointer.is_empty() { "/" } else { pointer };
            let _ = write!(s, " at `{at}`: {message}");
        }
        if self.errors.len() > 1 {
            let _ = write!(s, " (and {} more)", self.errors.len() - 1);
        }
        s
    }
}

/// One (event type, version) whose schema differs from the recorded one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaChange {
    /// The event type.
    pub event_type: String,
    /// The version whose schema changed.
    pub version: u32,
    /// The recorded fingerprint.
    pub recorded: String,
    /// The code's fingerprint.
    pub current: String,
}

/// Schemas that changed without a version bump. Stored events of those
/// versions may no longer decode: give the changed payload a new version and
/// keep the old type in the event's `history(...)`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.describe())]
pub struct SchemaChanges {
    /// Every change found.
    pub changes: Vec<SchemaChange>,
}

impl SchemaChanges {
    fn describe(&self) -> String {
        let mut s = format!(
            "{} event schema(s) changed without a version bump:",
            self.changes.len()
        );
        for c in &self.changes {
            let _ = write!(
                s,
                " `{}` version {} (recorded {}, code has {}): bump its `version` to {} and keep the old payload type in `history({} = ...)`;",
                c.event_type,
                c.version,
                short(&c.recorded),
                short(&c.current),
                c.version + 1,
                c.version
            );
        }
        s.pop();
        s
    }
}

fn short(fingerprint: &str) -> &str {
    fingerprint.get(..19).unwrap_or(fingerprint)
}

struct TypeEntry {
    current: u32,
    rust_type: &'static str,
    versions: BTreeMap<u32, Arc<RegisteredSchema>>,
}

#[derive(Default)]
struct Inner {
    types: HashMap<String, TypeEntry>,
    registered: HashSet<TypeId>,
}

/// The JSON Schema of every registered (event type, version), with
/// fingerprints and compiled validators.
///
/// Validators are compiled once, at registration. Registering the same Rust
/// type twice is a cheap no-op.
///
/// ```
/// # use annals::{SchemaRegistry, schema::fingerprint};
/// let registry = SchemaRegistry::new();
/// assert!(registry.is_empty());
/// // fingerprints ignore key order and documentation
/// let a = serde_json::json!({"type": "object", "description": "x", "properties": {"a": {"type": "string"}}});
/// let b = serde_json::json!({"properties": {"a": {"type": "string"}}, "type": "object"});
/// assert_eq!(fingerprint(&a), fingerprint(&b));
/// ```
#[derive(Default)]
pub struct SchemaRegistry {
    inner: RwLock<Inner>,
    /// See [`SchemaRegistry::validate_reads`].
    validate_reads: AtomicBool,
}

impl fmt::Debug for SchemaRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SchemaRegistry")
            .field("fingerprints", &self.fingerprints())
            .finish()
    }
}

impl SchemaRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether reads validate every payload against its schema, or only
    /// old-version payloads before they are upcast (the default). Serde
    /// already refuses a current-version payload whose shape does not fit
    /// the Rust type; turning this on also checks what only the schema
    /// says (ranges, lengths, formats, patterns), for rows that may have
    /// been written around annals. It costs a parse into a JSON value and a
    /// validation per event: about 2x the time of a 10k-event typed read
    /// in memory (`cargo bench --bench events`, row "mem read 10k typed,
    /// validating reads"), which is why it is off by default. It holds for
    /// every store that shares this registry.
    ///
    /// ```
    /// use annals::{EventStore, InMemoryEventStore};
    /// let store = InMemoryEventStore::new();
    /// store.registry().validate_reads(true);
    /// assert!(store.registry().validates_reads());
    /// ```
    pub fn validate_reads(&self, on: bool) {
        self.validate_reads.store(on, Ordering::Relaxed);
    }

    /// Whether reads validate current-version payloads too (see
    /// [`validate_reads`](Self::validate_reads)).
    pub fn validates_reads(&self) -> bool {
        self.validate_reads.load(Ordering::Relaxed)
    }

    /// Whether nothing is registered.
    pub fn is_empty(&self) -> bool {
        self.read().types.is_empty()
    }

    /// Whether the Rust event type `E` is registered.
    pub fn is_registered<E: Event>(&self) -> bool {
        self.read().registered.contains(&TypeId::of::<E>())
    }

    /// Registers every (type, version) schema of `E`, compiling validators.
    ///
    /// Fails when another Rust type already registered one of `E`'s event
    /// types with a different schema or current version, or when a schema
    /// does not compile.
    pub fn register<E: Event>(&self) -> Result<(), Error> {
        if self.is_registered::<E>() {
            return Ok(());
        }
        let mut compiled = Vec::new();
        for s in E::schemas() {
            let validator = jsonschema::options()
                .should_validate_formats(true)
                .build(&s.schema)
                .map_err(|e| RegistryError::SchemaDoesNotCompile {
                    event_type: s.event_type.to_owned(),
                    version: s.version,
                    rust_type: s.rust_type,
                    source: e.to_string().into(),
                })?;
            compiled.push(RegisteredSchema {
                event_type: s.event_type.to_owned(),
                version: s.version,
                personal_fields: personal_pointers(&s.schema),
                fingerprint: fingerprint(&s.schema),
                schema: s.schema,
                rust_type: s.rust_type,
                validator,
            });
        }
        let mut inner = self.write();
        // check everything before changing anything
        for info in E::TYPES {
            if let Some(existing) = inner.types.get(info.name) {
                if existing.current != info.version {
                    return Err(RegistryError::CurrentVersionDiffers {
                        event_type: info.name.to_owned(),
                        registered_by: existing.rust_type,
                        registered_version: existing.current,
                        rust_type: std::any::type_name::<E>(),
                        version: info.version,
                    }
                    .into());
                }
            }
        }
        for s in &compiled {
            if let Some(prev) = inner
                .types
                .get(&s.event_type)
                .and_then(|t| t.versions.get(&s.version))
            {
                if prev.fingerprint != s.fingerprint {
                    return Err(RegistryError::SchemaDiffers {
                        event_type: s.event_type.clone(),
                        version: s.version,
                        registered_by: prev.rust_type,
                        rust_type: s.rust_type,
                    }
                    .into());
                }
            }
        }
        for info in E::TYPES {
            inner
                .types
                .entry(info.name.to_owned())
                .or_insert_with(|| TypeEntry {
                    current: info.version,
                    rust_type: std::any::type_name::<E>(),
                    versions: BTreeMap::new(),
                });
        }
        for s in compiled {
            if let Some(t) = inner.types.get_mut(&s.event_type) {
                t.versions.entry(s.version).or_insert_with(|| Arc::new(s));
            }
        }
        inner.registered.insert(TypeId::of::<E>());
        Ok(())
    }

    /// The schema of one (event type, version).
    pub fn get(&self, event_type: &str, version: u32) -> Option<Arc<RegisteredSchema>> {
        self.read()
            .types
            .get(event_type)
            .and_then(|t| t.versions.get(&version))
            .cloned()
    }

    /// The current version of an event type.
    pub fn current_version(&self, event_type: &str) -> Option<u32> {
        self.read().types.get(event_type).map(|t| t.current)
    }

    /// Every registered schema, ordered by (event type, version).
    pub fn schemas(&self) -> Vec<Arc<RegisteredSchema>> {
        let inner = self.read();
        let mut all: Vec<_> = inner
            .types
            .values()
            .flat_map(|t| t.versions.values().cloned())
            .collect();
        all.sort_by(|a, b| (&a.event_type, a.version).cmp(&(&b.event_type, b.version)));
        all
    }

    /// Every fingerprint, keyed by (event type, version).
    pub fn fingerprints(&self) -> BTreeMap<(String, u32), String> {
        self.schemas()
            .into_iter()
            .map(|s| ((s.event_type.clone(), s.version), s.fingerprint.clone()))
            .collect()
    }

    /// Validates a payload against the schema of its (event type, version).
    pub fn validate(&self, event_type: &str, version: u32, payload: &Value) -> Result<(), Error> {
        match self.get(event_type, version) {
            Some(schema) => Ok(schema.validate(payload)?),
            None => Err(Error::Unregistered {
                event_type: event_type.to_owned(),
                version,
            }),
        }
    }

    /// Validates events about to be appended. Nothing is written when one fails.
    pub fn validate_new(&self, events: &[NewEvent]) -> Result<(), Error> {
        // one read lock for the batch, and no reference count to touch per
        // event: this runs on every append
        let inner = self.read();
        for e in events {
            let schema = inner
                .types
                .get(e.event_type.as_str())
                .and_then(|t| t.versions.get(&e.schema_version))
                .ok_or_else(|| Error::Unregistered {
                    event_type: e.event_type.clone(),
                    version: e.schema_version,
                })?;
            let value: Value =
                serde_json::from_str(e.payload.get()).map_err(|source| Error::Encode {
                    event_type: e.event_type.clone(),
                    source,
                })?;
            schema.validate(&value)?;
        }
        Ok(())
    }

    /// The breaking-change guard: compares the code's fingerprints with the
    /// recorded ones (from the database or a lock file). Every (type, version)
    /// present in both with a different fingerprint is reported; versions only
    /// in one of them are not changes.
    pub fn check_against<'a>(
        &self,
        recorded: impl IntoIterator<Item = (&'a str, u32, &'a str)>,
    ) -> Result<(), SchemaChanges> {
        let mut changes = Vec::new();
        for (event_type, version, fp) in recorded {
            if let Some(s) = self.get(event_type, version) {
                if s.fingerprint != fp {
                    changes.push(SchemaChange {
                        event_type: event_type.to_owned(),
                        version,
                        recorded: fp.to_owned(),
                        current: s.fingerprint.clone(),
                    });
                }
            }
        }
        if changes.is_empty() {
            Ok(())
        } else {
            changes.sort_by(|a, b| (&a.event_type, a.version).cmp(&(&b.event_type, b.version)));
            Err(SchemaChanges { changes })
        }
    }
}

/// The schema keyword that marks a personal field
/// (`annals::personal::Personal` writes it).
pub const PERSONAL_KEYWORD: &str = "x-annals-personal";

/// The JSON pointers of the personal fields a JSON Schema marks (see
/// `annals::personal::Personal`, feature `personal`), with `*` for every item of an array:
/// `/name`, `/contact/phone`, `/notes/*`. Follows `$ref`s into `$defs`
/// (each definition once on a path, so recursive types end).
pub fn personal_pointers(schema: &Value) -> Vec<String> {
    let mut out = Vec::new();
    walk(schema, schema, String::new(), &mut HashSet::new(), &mut out);
    out.sort();
    out.dedup();
    out
}

fn walk(
    root: &Value,
    schema: &Value,
    at: String,
    seen: &mut HashSet<String>,
    out: &mut Vec<String>,
) {
    let Some(obj) = schema.as_object() else {
        return;
    };
    if obj.get(PERSONAL_KEYWORD) == Some(&Value::Bool(true)) {
        out.push(at);
        return;
    }
    if let Some(Value::String(reference)) = obj.get("$ref") {
        if let Some(target) = reference.strip_prefix('#').and_then(|p| root.pointer(p)) {
            if seen.insert(reference.clone()) {
                walk(root, target, at.clone(), seen, out);
                seen.remove(reference);
            }
        }
    }
    if let Some(Value::Object(props)) = obj.get("properties") {
        for (name, sub) in props {
            let escaped = name.replace('~', "~0").replace('/', "~1");
            walk(root, sub, format!("{at}/{escaped}"), seen, out);
        }
    }
    if let Some(items) = obj.get("items") {
        walk(root, items, format!("{at}/*"), seen, out);
    }
    for key in ["anyOf", "oneOf", "allOf"] {
        if let Some(Value::Array(subs)) = obj.get(key) {
            for sub in subs {
                walk(root, sub, at.clone(), seen, out);
            }
        }
    }
}

/// The stable fingerprint of a JSON Schema: `sha256:` and the hex SHA-256 of
/// its canonical form (object keys sorted; annotations that do not change
/// which payloads are valid — `title`, `description`, `examples`,
/// `$comment`, `$schema` — removed).
pub fn fingerprint(schema: &Value) -> String {
    let mut canonical = String::new();
    write_canonical(schema, true, &mut canonical);
    let digest = Sha256::digest(canonical.as_bytes());
    let mut out = String::with_capacity(71);
    out.push_str("sha256:");
    for b in digest {
        let _ = write!(out, "{b:02x}");
    }
    out
}

const ANNOTATIONS: &[&str] = &["title", "description", "examples", "$comment", "$schema"];
const SCHEMA_MAPS: &[&str] = &[
    "properties",
    "patternProperties",
    "$defs",
    "definitions",
    "dependentSchemas",
];
const DATA_KEYWORDS: &[&str] = &["enum", "const", "default", "required"];

/// Writes `value` canonically. `schema` says whether `value` sits where a
/// schema is expected (so annotation keywords are dropped).
fn write_canonical(value: &Value, schema: bool, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            let mut first = true;
            for k in keys {
                if schema && ANNOTATIONS.contains(&k.as_str()) {
                    continue;
                }
                if !first {
                    out.push(',');
                }
                first = false;
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                let v = &map[k];
                if schema && SCHEMA_MAPS.contains(&k.as_str()) {
                    // a map from names to schemas
                    if let Value::Object(inner) = v {
                        let mut names: Vec<&String> = inner.keys().collect();
                        names.sort();
                        out.push('{');
                        for (i, n) in names.into_iter().enumerate() {
                            if i > 0 {
                                out.push(',');
                            }
                            out.push_str(&Value::String(n.clone()).to_string());
                            out.push(':');
                            write_canonical(&inner[n], true, out);
                        }
                        out.push('}');
                    } else {
                        write_canonical(v, false, out);
                    }
                } else {
                    let child_is_schema = schema && !DATA_KEYWORDS.contains(&k.as_str());
                    write_canonical(v, child_is_schema, out);
                }
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(v, schema, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// The fingerprints an application has committed, one line per
/// (event type, version): the breaking-change guard for unit tests.
///
/// The file format is plain text, sorted, one `event_type version fingerprint`
/// per line; lines starting with `#` are comments.
///
/// ```no_run
/// # use annals::{Event, schema::SchemaLock};
/// # fn check<LeadEvent: Event>() {
/// // in the application's tests:
/// SchemaLock::assert_file::<LeadEvent>("schemas.lock");
/// # }
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SchemaLock {
    entries: BTreeMap<(String, u32), String>,
}

impl SchemaLock {
    /// The lock of everything in a registry.
    pub fn from_registry(registry: &SchemaRegistry) -> Self {
        SchemaLock {
            entries: registry.fingerprints(),
        }
    }

    /// Parses a lock file's text.
    pub fn parse(text: &str) -> Result<Self, Error> {
        let mut entries = BTreeMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut parts = line.split_whitespace();
            let (Some(t), Some(v), Some(fp), None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return Err(RegistryError::LockFile {
                    line: n + 1,
                    message: format!("expected `event_type version fingerprint`, found `{line}`"),
                }
                .into());
            };
            let v: u32 = v.parse().map_err(|_| RegistryError::LockFile {
                line: n + 1,
                message: format!("`{v}` is not a version number"),
            })?;
            entries.insert((t.to_owned(), v), fp.to_owned());
        }
        Ok(SchemaLock { entries })
    }

    /// The lock file's text.
    pub fn render(&self) -> String {
        let mut s = String::from(
            "# annals schema lock: one line per (event type, version).\n# A changed fingerprint means a payload changed without a version bump.\n",
        );
        for ((t, v), fp) in &self.entries {
            let _ = writeln!(s, "{t} {v} {fp}");
        }
        s
    }

    /// The recorded entries.
    pub fn entries(&self) -> impl Iterator<Item = (&str, u32, &str)> {
        self.entries
            .iter()
            .map(|((t, v), fp)| (t.as_str(), *v, fp.as_str()))
    }

    /// Checks a registry against this lock.
    pub fn check(&self, registry: &SchemaRegistry) -> Result<(), SchemaChanges> {
        registry.check_against(self.entries())
    }

    /// One-line test helper: registers `E` and checks it against the lock file
    /// at `path` (relative paths are relative to the crate being tested).
    ///
    /// Panics with the list of changed schemas when a recorded fingerprint
    /// differs. New (type, version) entries are added to the file, except
    /// under CI (`CI` set), where a missing entry fails so that the lock file
    /// is always committed.
    #[track_caller]
    pub fn assert_file<E: Event>(path: impl AsRef<Path>) {
        let registry = SchemaRegistry::new();
        if let Err(e) = registry.register::<E>() {
            panic!("{e}");
        }
        Self::assert_registry(&registry, path);
    }

    /// Like [`SchemaLock::assert_file`] for every event type in a registry.
    #[track_caller]
    pub fn assert_registry(registry: &SchemaRegistry, path: impl AsRef<Path>) {
        let path = path.as_ref();
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => panic!("cannot read schema lock {}: {e}", path.display()),
        };
        let lock = match Self::parse(&text) {
            Ok(l) => l,
            Err(e) => panic!("{}: {e}", path.display()),
        };
        if let Err(changes) = lock.check(registry) {
            panic!("{}: {changes}", path.display());
        }
        let mut merged = lock.clone();
        for (k, fp) in registry.fingerprints() {
            merged.entries.entry(k).or_insert(fp);
        }
        if merged != lock {
            if std::env::var_os("CI").is_some() {
                panic!(
                    "{} is missing event schemas the code has; run the tests locally and commit the updated lock file",
                    path.display()
                );
            }
            if let Err(e) = std::fs::write(path, merged.render()) {
                panic!("cannot write schema lock {}: {e}", path.display());
            }
        }
    }
}
