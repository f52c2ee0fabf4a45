//! Group commit: concurrent appends to different streams share one
//! statement, one transaction and one WAL flush.
//!
//! On a durable server a commit waits for its WAL flush, so appends that
//! commit one by one cost a flush each. Here the first append to arrive
//! while no commit is under way becomes the leader: a task that takes every
//! waiting append (up to `max_batch`, one per stream) and writes them with
//! one statement (`sql/append_group.sql`) on the group's own connection.
//! Appends that arrive while that statement runs wait for the next one.
//! When the store is idle an append is written at once, alone: there is no
//! timer and no added wait. Each caller gets exactly its own result: its
//! `AppendResult`, or its own `VersionConflict` when its stream was not
//! where it expected (the other appends of the group go in all the same).
//!
//! Why a connection of its own and not one of the pool: a command holds
//! its session's pool connection while its append waits here; were the
//! leader to need a pool connection too, a pool exhausted by waiting
//! commands would never give it one.
//!
//! Not joined: appends in a caller's transaction (`append_in`), appends
//! with `ExpectedVersion::Any` (they retry a lost race with a fresh read of
//! the stream's version, which one statement for many streams cannot do
//! cheaply) and appends of no events. A second append to a stream already
//! in the group waits for the next group.
//!
//! When the group's statement fails on the database (a duplicate event id,
//! say), nothing of it was written, and each append of the group is
//! written alone, so that only the faulty append gets the error. When the
//! connection fails, each caller gets the error, as a failed append of its
//! own would.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use annals_core::event::NewEvent;
use annals_core::store::{AppendResult, ExpectedVersion};
use annals_core::{Error, TenantId};
use sqlx::postgres::{PgConnectOptions, PgRow};
use sqlx::{Connection as _, PgConnection, Row as _};
use tokio::sync::oneshot;

use super::append::{append_result, conflict, write_alone, Written};
use super::int8;
use super::wake::Wake;
use crate::error::is_transient;
use crate::sql;

/// How many groups may be written at once, each by its own leader on its
/// own connection. One: with two, a group waiting for its WAL flush
/// overlaps the next group's statement, but the groups are half as big
/// and throughput did not gain (benches/durable.rs, "command, 8 tasks":
/// 0.87x and 0.92x the baseline with one leader, 0.82x and 0.71x with two;
/// WAL flushes per command 0.29 against 0.45).
const LEADERS: usize = 1;

/// The default bound on the appends of one group.
pub const DEFAULT_MAX_BATCH: usize = 64;

/// The group commit of one store (shared by its clones).
#[derive(Debug)]
pub(crate) struct GroupCommit {
    queue: Mutex<Queue>,
    max_batch: usize,
    options: PgConnectOptions,
    wake: Arc<Wake>,
}

#[derive(Debug, Default)]
struct Queue {
    waiting: VecDeque<Pending>,
    /// How many leader tasks run (at most `LEADERS`).
    leading: usize,
    /// The group's connections no leader holds now.
    conns: Vec<PgConnection>,
}

/// An append waiting for its group.
#[derive(Debug)]
struct Pending {
    tenant: TenantId,
    stream_id: String,
    expected: ExpectedVersion,
    events: Vec<NewEvent>,
    /// The events' metadata, encoded.
    metas: Vec<String>,
    reply: oneshot::Sender<Result<AppendResult, Error>>,
}

impl Pending {
    fn answer(self, result: Result<AppendResult, Error>) {
        // a caller that stopped waiting does not want its answer
        let _ = self.reply.send(result);
    }
}

impl GroupCommit {
    pub(crate) fn new(options: PgConnectOptions, max_batch: usize, wake: Arc<Wake>) -> Self {
        GroupCommit {
            queue: Mutex::default(),
            max_batch: max_batch.max(1),
            // The group's statement is planned once, not at each run:
            // Postgres keeps planning a prepared statement anew while its
            // generic plan looks dearer than a custom one, which it does
            // for array parameters, and planning this statement costs more
            // than running it for a few appends (0.3 ms of a 1.4 ms
            // command; benches/durable.rs "command, 1 task": 0.43x -> 0.7x
            // of the baseline).
            options: options.options([("plan_cache_mode", "force_generic_plan")]),
            wake,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        // the queue holds no invariant a panic could break halfway
        self.queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// When no group is being written and none waits: the caller may write
    /// its append alone, at once, on the group's connection (no hop to a
    /// leader task, and the lone append's cheaper statement). While the
    /// returned turn lives, other appends queue; dropping it (after the
    /// write, or when the caller gives up) hands them to a leader.
    /// (benches/durable.rs, "command, 1 task": 0.62 ms p50 through the
    /// leader, 0.50 ms without group commit.)
    pub(crate) fn alone(self: &Arc<Self>) -> Option<AloneTurn> {
        let mut queue = self.lock();
        if queue.leading > 0 || !queue.waiting.is_empty() {
            return None;
        }
        queue.leading += 1;
        Some(AloneTurn {
            group: self.clone(),
            conn: queue.conns.pop(),
            healthy: false,
        })
    }

    /// Appends validated events (`expected` is `NoStream` or `Exact`) with
    /// the next group.
    pub(crate) async fn append(
        self: &Arc<Self>,
        tenant: &TenantId,
        stream_id: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        metas: Vec<String>,
    ) -> Result<AppendResult, Error> {
        let (reply, answer) = oneshot::channel();
        let lead = {
            let mut queue = self.lock();
            queue.waiting.push_back(Pending {
                tenant: tenant.clone(),
                stream_id: stream_id.to_owned(),
                expected,
                events,
                metas,
                reply,
            });
            let lead = queue.leading < LEADERS;
            if lead {
                queue.leading += 1;
            }
            lead
        };
        if lead {
            tokio::spawn(self.clone().lead());
        }
        answer.await.unwrap_or_else(|_| {
            Err(Error::backend(
                "appending events",
                "the group commit stopped before it answered",
            ))
        })
    }

    /// The leader: writes groups until none is waiting.
    async fn lead(self: Arc<Self>) {
        let mut guard = Leading {
            group: &self,
            conn: None,
        };
        guard.conn = self.lock().conns.pop();
        loop {
            let batch = {
                let mut queue = self.lock();
                let batch = take_batch(&mut queue.waiting, self.max_batch);
                if batch.is_empty() {
                    queue.leading -= 1;
                    queue.conns.extend(guard.conn.take());
                    std::mem::forget(guard);
                    return;
                }
                batch
            };
            annals_core::metrics::record_append_batch("postgres", batch.len());
            self.commit(&mut guard.conn, batch).await;
        }
    }

    /// Writes one group and answers its callers.
    async fn commit(&self, conn: &mut Option<PgConnection>, batch: Vec<Pending>) {
        let c = match conn {
            Some(c) => c,
            None => match PgConnection::connect_with(&self.options).await {
                Ok(c) => conn.insert(c),
                Err(e) => return fail_all(batch, "connecting for a group commit", &e),
            },
        };
        match write(c, &batch).await {
            Ok(written) => self.answer(c, batch, written).await,
            Err(e) if !ends_session(&e) => {
                // the statement failed, so nothing of the group was
                // written: each append alone, so only the one at fault
                // gets the error
                self.one_by_one(c, batch).await;
            }
            Err(e) => {
                // the connection is gone, perhaps after the commit
                *conn = None;
                self.recover(conn, batch, &e).await;
            }
        }
    }

    /// Answers each caller of a written group, and wakes readers.
    async fn answer(
        &self,
        conn: &mut PgConnection,
        batch: Vec<Pending>,
        written: HashMap<StreamKey, Vec<Written>>,
    ) {
        if !written.is_empty() {
            self.wake.appended();
        }
        answer(conn, batch, written).await;
    }

    /// After the connection was lost during a group's statement: on a new
    /// connection, finds out whether the group committed (its events' ids
    /// are unique, and the group was one transaction: all of it or none)
    /// and answers from what is there, or writes the group again. Either
    /// way each caller learns what really happened to its append, which a
    /// caller of a lone append that lost its connection cannot.
    async fn recover(
        &self,
        conn: &mut Option<PgConnection>,
        batch: Vec<Pending>,
        lost: &sqlx::Error,
    ) {
        const CONTEXT: &str = "appending events (group commit)";
        let c = match PgConnection::connect_with(&self.options).await {
            Ok(c) => conn.insert(c),
            Err(_) => return fail_all(batch, CONTEXT, lost),
        };
        let (tenants, ids): (Vec<&str>, Vec<uuid::Uuid>) = batch
            .iter()
            .flat_map(|p| p.events.iter().map(|e| (p.tenant.as_str(), e.event_id)))
            .unzip();
        match committed_rows(c, &tenants, &ids).await {
            Ok(Some(found)) => return self.answer(c, batch, found).await,
            Ok(None) => {}
            Err(e) => {
                *conn = None;
                return fail_all(batch, CONTEXT, &e);
            }
        }
        match write(c, &batch).await {
            Ok(written) => self.answer(c, batch, written).await,
            Err(e) if !ends_session(&e) => self.one_by_one(c, batch).await,
            Err(e) => {
                *conn = None;
                fail_all(batch, CONTEXT, &e);
            }
        }
    }

    /// Writes each append of `batch` as its own transaction.
    async fn one_by_one(&self, conn: &mut PgConnection, batch: Vec<Pending>) {
        let mut any = false;
        for p in batch {
            let result = write_alone(
                conn,
                &p.tenant,
                &p.stream_id,
                p.expected,
                &p.events,
                &p.metas,
            )
            .await;
            let Pending {
                tenant,
                stream_id,
                events,
                reply,
                ..
            } = p;
            let result =
                result.and_then(|written| append_result(&tenant, &stream_id, &written, events));
            any |= result.is_ok();
            let _ = reply.send(result);
        }
        if any {
            self.wake.appended();
        }
    }
}

/// A caller's turn to write its append alone, on the group's connection
/// (see [`GroupCommit::alone`]).
#[derive(Debug)]
pub(crate) struct AloneTurn {
    group: Arc<GroupCommit>,
    conn: Option<PgConnection>,
    /// The connection finished its statement and may be used again (a
    /// caller that gave up halfway leaves it in an unknown state).
    healthy: bool,
}

impl AloneTurn {
    /// The group's connection, connected first if need be.
    pub(crate) async fn connection(&mut self) -> Result<&mut PgConnection, Error> {
        if self.conn.is_none() {
            let conn = PgConnection::connect_with(&self.group.options)
                .await
                .map_err(|e| crate::error::db_error("connecting for an append", e))?;
            self.conn = Some(conn);
        }
        self.conn
            .as_mut()
            .ok_or_else(|| Error::backend("connecting for an append", "the connection went away"))
    }

    /// The statement is done; `healthy`: the connection may be used again.
    pub(crate) fn finish(&mut self, healthy: bool) {
        self.healthy = healthy;
    }

    /// After the append failed in a way that may have lost the connection
    /// (perhaps after its commit): on a new connection, what of `events`
    /// is in the log. `Some`: the append committed, these are its rows;
    /// `None`: nothing of it was written, and the new connection is ready
    /// for another try.
    pub(crate) async fn committed(
        &mut self,
        tenant: &TenantId,
        events: &[NewEvent],
    ) -> Result<Option<Vec<Written>>, Error> {
        self.conn = None;
        let ids: Vec<uuid::Uuid> = events.iter().map(|e| e.event_id).collect();
        let tenants = vec![tenant.as_str(); ids.len()];
        let conn = self.connection().await?;
        let found = committed_rows(conn, &tenants, &ids)
            .await
            .map_err(|e| crate::error::db_error("checking whether an append committed", e))?;
        let written: Option<Vec<Written>> = found.map(|rows| {
            let mut written: Vec<Written> = rows.into_values().flatten().collect();
            written.sort_by_key(Written::stream_version);
            written
        });
        // the append's rows are all of its events
        Ok(written.filter(|w| w.len() == events.len()))
    }
}

impl Drop for AloneTurn {
    fn drop(&mut self) {
        let group = &self.group;
        let lead = {
            let mut queue = group.lock();
            if self.healthy {
                queue.conns.extend(self.conn.take());
            }
            // the turn counted as a leader; appends that queued meanwhile
            // get a leader of their own
            if queue.waiting.is_empty() {
                queue.leading -= 1;
                false
            } else {
                true
            }
        };
        if lead {
            tokio::spawn(group.clone().lead());
        }
    }
}

/// Clears `leading` if a leader task ends without doing so itself (it
/// panicked, or the runtime dropped it): the appends it left waiting are
/// dropped, so their callers get an error instead of waiting forever, and
/// the next append starts a new leader.
struct Leading<'a> {
    group: &'a GroupCommit,
    conn: Option<PgConnection>,
}

impl Drop for Leading<'_> {
    fn drop(&mut self) {
        let mut queue = self.group.lock();
        queue.leading -= 1;
        if queue.leading == 0 {
            queue.waiting.clear();
        }
    }
}

/// Up to `max` waiting appends, one per stream (of a tenant), oldest first; the others
/// stay in order. Appends whose caller stopped waiting are dropped.
fn take_batch(waiting: &mut VecDeque<Pending>, max: usize) -> Vec<Pending> {
    let mut batch = Vec::new();
    let mut later = VecDeque::new();
    let mut streams = HashSet::new();
    while let Some(p) = waiting.pop_front() {
        if p.reply.is_closed() {
            continue;
        }
        if batch.len() < max && streams.insert((p.tenant.clone(), p.stream_id.clone())) {
            batch.push(p);
        } else {
            later.push_back(p);
        }
    }
    *waiting = later;
    batch
}

/// Runs the group's statement: what was written, by stream.
async fn write(
    conn: &mut PgConnection,
    batch: &[Pending],
) -> Result<HashMap<StreamKey, Vec<Written>>, sqlx::Error> {
    let mut ks = Vec::with_capacity(batch.len());
    let mut tenants = Vec::with_capacity(batch.len());
    let mut streams = Vec::with_capacity(batch.len());
    let mut expected = Vec::with_capacity(batch.len());
    let events: usize = batch.iter().map(|p| p.events.len()).sum();
    let (mut eks, mut places) = (Vec::with_capacity(events), Vec::with_capacity(events));
    let (mut ids, mut types, mut versions, mut payloads, mut metas) = (
        Vec::with_capacity(events),
        Vec::with_capacity(events),
        Vec::with_capacity(events),
        Vec::with_capacity(events),
        Vec::with_capacity(events),
    );
    for (k, p) in batch.iter().enumerate() {
        let k = k as i32;
        ks.push(k);
        tenants.push(p.tenant.as_str());
        streams.push(p.stream_id.as_str());
        expected.push(match p.expected {
            ExpectedVersion::Exact(v) => Some(int8(v)),
            _ => None,
        });
        for (i, (e, m)) in p.events.iter().zip(&p.metas).enumerate() {
            eks.push(k);
            places.push(i as i32 + 1);
            ids.push(e.event_id);
            types.push(e.event_type.as_str());
            versions.push(e.schema_version as i32);
            payloads.push(e.payload.get());
            metas.push(m.as_str());
        }
    }
    let rows = sqlx::query(sql::APPEND_GROUP)
        .bind(ks)
        .bind(streams)
        .bind(expected)
        .bind(eks)
        .bind(places)
        .bind(ids)
        .bind(types)
        .bind(versions)
        .bind(payloads)
        .bind(metas)
        .bind(tenants)
        .fetch_all(&mut *conn)
        .await?;
    by_stream(&rows)
}

/// A stream of a tenant: (tenant id, stream id).
type StreamKey = (String, String);

/// Rows of `tenant_id, stream_id, position, tx, stream_version,
/// recorded_at` by stream, each stream's in version order.
fn by_stream(rows: &[PgRow]) -> Result<HashMap<StreamKey, Vec<Written>>, sqlx::Error> {
    let mut written: HashMap<StreamKey, Vec<Written>> = HashMap::new();
    for row in rows {
        let tenant: String = row.try_get(0)?;
        let stream: String = row.try_get(1)?;
        let w = Written::get(row, 2)?;
        written.entry((tenant, stream)).or_default().push(w);
    }
    for ws in written.values_mut() {
        ws.sort_by_key(Written::stream_version);
    }
    Ok(written)
}

/// After a lost connection: the rows of the events `ids` that are in the
/// log, by stream, when they are one transaction's (an append, or a
/// group, is one transaction: all of it or none); `None` when nothing of
/// it is there (rows of another transaction are events that existed
/// before, with an id a caller reused: the write then failed on them and
/// wrote nothing).
async fn committed_rows(
    conn: &mut PgConnection,
    tenants: &[&str],
    ids: &[uuid::Uuid],
) -> Result<Option<HashMap<StreamKey, Vec<Written>>>, sqlx::Error> {
    let rows = sqlx::query(sql::APPEND_GROUP_FIND)
        .bind(ids)
        .bind(tenants)
        .fetch_all(conn)
        .await?;
    let found = by_stream(&rows)?;
    let transactions: HashSet<i64> = found.values().flatten().map(Written::transaction).collect();
    Ok((transactions.len() == 1).then_some(found))
}

/// Whether `e` means the connection is gone (the server ended the session,
/// or the socket failed) rather than that the statement failed on it.
fn ends_session(e: &sqlx::Error) -> bool {
    match e.as_database_error() {
        // class 08: connection exception; 57P: the server shut the
        // session down (admin_shutdown, crash_shutdown, cannot_connect_now)
        Some(db) => db
            .code()
            .is_some_and(|code| code.starts_with("08") || code.starts_with("57P")),
        None => true,
    }
}

/// Answers each caller of a written group: its result, or its conflict.
async fn answer(
    conn: &mut PgConnection,
    batch: Vec<Pending>,
    mut written: HashMap<StreamKey, Vec<Written>>,
) {
    for p in batch {
        let Pending {
            tenant,
            stream_id,
            expected,
            events,
            reply,
            ..
        } = p;
        let result = match written.remove(&(tenant.as_str().to_owned(), stream_id.clone())) {
            Some(ws) => append_result(&tenant, &stream_id, &ws, events),
            None => Err(conflict(conn, &tenant, &stream_id, expected).await),
        };
        // a caller that stopped waiting does not want its answer
        let _ = reply.send(result);
    }
}

/// Answers every caller of `batch` with the same failure.
fn fail_all(batch: Vec<Pending>, context: &'static str, e: &sqlx::Error) {
    let message = e.to_string();
    let transient = is_transient(e);
    for p in batch {
        p.answer(Err(if transient {
            Error::transient(context, message.clone())
        } else {
            Error::backend(context, message.clone())
        }));
    }
}
