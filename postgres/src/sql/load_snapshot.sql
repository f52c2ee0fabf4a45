-- An aggregate's snapshot, in the columns of a snapshot row of
-- load_snapshot_and_events.sql (one decoder reads both).
SELECT -version, NULL::int8, state, fingerprint, codec_version
  FROM annals_snapshots
 WHERE tenant_id = $3 AND aggregate_type = $1 AND aggregate_id = $2
