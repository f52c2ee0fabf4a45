-- The persisted schema registry: one row per (event type, schema version).
--
-- `fingerprint` is a hash of the canonical JSON Schema. At start-up the
-- registry compares the code's fingerprint for every (type, version) already
-- stored here and refuses to start when one differs: a payload change needs
-- a version bump, because events stored under the old shape still carry the
-- old version number. `schema` keeps the full document so a mismatch can be
-- diffed and old versions remain inspectable after their Rust type is gone;
-- `rust_type` names the type that registered it (diagnostics only).
--
-- The primary key doubles as the index for "all versions of a type".
CREATE TABLE annals_event_schemas (
    event_type  text NOT NULL,
    version     integer NOT NULL CHECK (version >= 1),
    fingerprint text NOT NULL,
    schema      jsonb NOT NULL,
    rust_type   text NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (event_type, version)
);
