-- Appends no longer notify from inside their transaction.
--
-- NOTIFY makes Postgres take a cluster-wide lock at commit that is held
-- until the transaction ends, WAL flush included: every append that
-- notified committed one at a time with the others, and concurrent appends'
-- WAL flushes could not be grouped (on a durable server 8 command tasks ran
-- at 0.33x hand-written SQL). The store now wakes its own process' readers
-- directly and notifies channel `annals_events` after the commit, from a
-- connection of its own (see annals-postgres, store/wake.rs). Rows written
-- by hand, without the store, wake nobody: readers find them at their next
-- poll.
DROP TRIGGER annals_events_notify ON annals_events;
DROP FUNCTION annals_notify_events();

-- The index on event_type goes too: no statement of annals reads the log
-- by type (runners filter the types they apply as they read the log in
-- order), and every append paid for it (issue 19: 2-4% of a command's
-- throughput on a durable server). An application that queries events by
-- type creates the index it needs.
DROP INDEX annals_events_type;
