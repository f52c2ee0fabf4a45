-- Aggregate snapshots: at most one per aggregate, the newest wins.
--
-- Why not keep history (the seed's aggregate_snapshots had one row per
-- (aggregate, version) and an index on (aggregate_id, version DESC))?
-- Loading only ever needs the newest usable snapshot, and a snapshot is
-- derived data that a full replay can always rebuild. One row per aggregate
-- keeps the table as small as the number of aggregates, needs no pruning job,
-- and makes the load a single primary-key probe. Writers upsert and must not
-- let an older snapshot replace a newer one, e.g.
--
--   INSERT INTO annals_snapshots AS s (aggregate_type, aggregate_id, version,
--          state, fingerprint, codec_version)
--   VALUES ($1, $2, $3, $4, $5, $6)
--   ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE
--      SET version = EXCLUDED.version, state = EXCLUDED.state,
--          fingerprint = EXCLUDED.fingerprint,
--          codec_version = EXCLUDED.codec_version, created_at = now()
--    WHERE s.version < EXCLUDED.version
--       OR s.fingerprint <> EXCLUDED.fingerprint
--       OR s.codec_version <> EXCLUDED.codec_version;
--
-- (a snapshot whose shape no longer matches the code is replaced even at the
-- same or a lower version: it is unusable anyway).
--
-- `fingerprint` (hash of the state type's shape) and `codec_version` are
-- compared with the code's on load; a mismatch means "ignore the snapshot,
-- replay everything", never an error. That is why they are plain columns and
-- not part of the key.
--
-- aggregate_id is the aggregate's stream id (text, like
-- annals_events.stream_id). There is no foreign key: a snapshot is a cache,
-- and its write must not contend with appends.
CREATE TABLE annals_snapshots (
    aggregate_type text NOT NULL,
    aggregate_id   text NOT NULL,
    -- the stream version of the last event folded into `state`; a snapshot
    -- of an aggregate without events would be pointless
    version        bigint NOT NULL CHECK (version >= 1),
    state          jsonb NOT NULL,
    fingerprint    text NOT NULL,
    codec_version  integer NOT NULL CHECK (codec_version >= 1),
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (aggregate_type, aggregate_id)
);
