-- The committed events after a checkpoint ($1 transaction id as text, $2
-- position), also those still above the horizon: they are committed, the
-- reader just cannot see them yet.
SELECT count(*) AS n, min(recorded_at) AS oldest
  FROM annals_events
 WHERE tenant_id = $3 AND (transaction_id, position) > ($1::text::xid8, $2)
