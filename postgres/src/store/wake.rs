//! Waking log readers after an append commits, without the notify lock in
//! the append's transaction.
//!
//! Postgres delivers a `NOTIFY` at commit and, to keep notifications in
//! commit order, takes a cluster-wide lock in `PreCommit_Notify` that is
//! held until the notifying transaction has ended, WAL flush included. An
//! append that notified (wave 1 did, from a statement trigger) therefore
//! committed one at a time with every other notifying append, and their
//! WAL flushes could not be grouped: on a durable server 8 concurrent
//! command tasks ran at 0.33x hand-written SQL (issue 19).
//!
//! So appends do not notify. After an append of this store has committed,
//! [`Wake::appended`] does two things:
//! - it wakes this process' watchers at once (a `tokio::sync::watch`
//!   counter), with no round trip;
//! - it asks the notifier, a background task on a connection of its own,
//!   to send one `pg_notify('annals_events', '')` for other processes. The
//!   notifier has at most one notification in flight and sends at most one
//!   every 5 ms; appends that commit meanwhile are folded into the next
//!   one, however many they are. Its connection runs with
//!   `synchronous_commit = off`: the notifying transaction (which Postgres
//!   gives a transaction id) then commits without waiting for a WAL flush,
//!   holding the notify lock for microseconds. A notification is only a
//!   hint ("look again"), so losing one in a crash costs nothing a
//!   watcher's poll does not cover.
//!
//! An append inside a caller's transaction ([`PgEventStore::append_in`])
//! commits when the caller commits, which the store does not see: the
//! caller calls [`PgEventStore::notify_appended`] after its commit, or
//! readers find the events at their next poll.
//!
//! [`PgEventStore::append_in`]: crate::PgEventStore::append_in
//! [`PgEventStore::notify_appended`]: crate::PgEventStore::notify_appended

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection as _, PgConnection};
use tokio::sync::{watch, Notify};

use super::EVENTS_CHANNEL;

/// How long the notifier waits before it reconnects after its connection
/// failed (other processes' watchers poll meanwhile).
const RECONNECT_AFTER: Duration = Duration::from_millis(500);

/// The shortest time between two notifications of one store. The first
/// after a quiet spell goes out at once; under load the appends of each
/// interval share one. A notifying transaction takes a transaction id, so
/// one per append would double a busy store's transaction-id consumption
/// (and with it the anti-wraparound vacuums); at most 200 a second is
/// nothing, and keeps other processes' wake-ups within a few milliseconds.
const NOTIFY_INTERVAL: Duration = Duration::from_millis(5);

/// The wake-up state of one store (shared by its clones).
#[derive(Debug)]
pub(crate) struct Wake {
    /// Bumped after every commit: this process' watchers wait on it.
    local: watch::Sender<u64>,
    /// Shared with the notifier task.
    signal: Arc<Signal>,
    /// Whether the notifier task runs (started at the first append).
    started: AtomicBool,
    /// How the notifier connects (the pool's options).
    options: PgConnectOptions,
}

/// What the store and its notifier task share.
#[derive(Debug, Default)]
struct Signal {
    /// A notification is wanted.
    pending: AtomicBool,
    /// Wakes the notifier.
    notify: Notify,
    /// The store is gone: the notifier ends.
    closed: AtomicBool,
    /// The backend process id of the notifier's connection (0: none yet):
    /// this process' watchers, woken directly, skip its notifications.
    pid: AtomicU32,
}

impl Wake {
    pub(crate) fn new(options: PgConnectOptions) -> Self {
        Wake {
            local: watch::channel(0).0,
            signal: Arc::default(),
            started: AtomicBool::new(false),
            options,
        }
    }

    /// Events of this store have committed: wake this process' watchers
    /// now and other processes' through the notifier.
    pub(crate) fn appended(&self) {
        self.local.send_modify(|n| *n = n.wrapping_add(1));
        self.signal.pending.store(true, Ordering::Release);
        if !self.started.swap(true, Ordering::AcqRel) {
            let signal = self.signal.clone();
            let options = self.options.clone();
            tokio::spawn(notifier(signal, options));
        }
        self.signal.notify.notify_one();
    }

    /// A receiver of this process' wake-ups, from now on.
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.local.subscribe()
    }

    /// Whether a notification came from this store's own notifier (whose
    /// appends woke this process' watchers already).
    pub(crate) fn is_own(&self, sender_pid: u32) -> bool {
        sender_pid != 0 && self.signal.pid.load(Ordering::Acquire) == sender_pid
    }
}

impl Drop for Wake {
    fn drop(&mut self) {
        self.signal.closed.store(true, Ordering::Release);
        self.signal.notify.notify_one();
    }
}

/// The notifier task: one `pg_notify` per wake-up, at most one in flight,
/// until the store is dropped.
async fn notifier(signal: Arc<Signal>, options: PgConnectOptions) {
    let options = options.options([("synchronous_commit", "off")]);
    let mut conn: Option<PgConnection> = None;
    let mut last: Option<tokio::time::Instant> = None;
    loop {
        signal.notify.notified().await;
        if signal.closed.load(Ordering::Acquire) {
            break;
        }
        loop {
            if let Some(last) = last {
                // the appends of the rest of the interval share the next one
                tokio::time::sleep_until(last + NOTIFY_INTERVAL).await;
            }
            if !signal.pending.swap(false, Ordering::AcqRel) {
                break;
            }
            last = Some(tokio::time::Instant::now());
            if let Err(e) = send(&mut conn, &options, &signal.pid).await {
                tracing::warn!(
                    error = %e,
                    "could not notify other processes of appended events; \
                     their watchers find the events at their next poll"
                );
                conn = None;
                tokio::time::sleep(RECONNECT_AFTER).await;
            }
        }
    }
    if let Some(conn) = conn {
        let _ = conn.close().await;
    }
}

/// Sends one notification on the notifier's connection, connecting first
/// when it has none.
async fn send(
    conn: &mut Option<PgConnection>,
    options: &PgConnectOptions,
    pid: &AtomicU32,
) -> Result<(), sqlx::Error> {
    let c = match conn {
        Some(c) => c,
        None => {
            let mut c = PgConnection::connect_with(options).await?;
            let backend: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
                .fetch_one(&mut c)
                .await?;
            pid.store(u32::try_from(backend).unwrap_or(0), Ordering::Release);
            conn.insert(c)
        }
    };
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(EVENTS_CHANNEL)
        .execute(c)
        .await?;
    Ok(())
}
