-- Saves a snapshot: a newer one of the same shape replaces an older one,
-- and one of another shape or codec version always replaces it.
INSERT INTO annals_snapshots AS s (tenant_id, aggregate_type, aggregate_id, version, state, fingerprint, codec_version)
VALUES ($7, $1, $2, $3, $4::jsonb, $5, $6)
ON CONFLICT (tenant_id, aggregate_type, aggregate_id) DO UPDATE
   SET version = EXCLUDED.version, state = EXCLUDED.state,
       fingerprint = EXCLUDED.fingerprint,
       codec_version = EXCLUDED.codec_version, created_at = now()
 WHERE s.version < EXCLUDED.version
    OR s.fingerprint <> EXCLUDED.fingerprint
    OR s.codec_version <> EXCLUDED.codec_version
