use std::future::Future as _;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use annals_core::{
    AppendResult, Backlog, CommandFold, Envelope, Error, Event, EventStore, ExpectedVersion,
    Horizon, LogPosition, Metadata, NewEvent, PayloadRef, RecordedEvent, SchemaRegistry,
    StoredPayload, VersionConflict, Watch, WatchLog,
};
use chrono::{DateTime, Utc};
use serde_json::value::RawValue;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgListener, PgRow, PgValueFormat, PgValueRef};
use sqlx::types::Json;
use sqlx::{PgConnection, PgPool, Postgres, Row, TypeInfo as _, ValueRef as _};

use crate::keys::{lookup, KeyMap, SchemaKeys};

/// The channel on which every append notifies readers (at commit).
pub const EVENTS_CHANNEL: &str = "annals_events";

/// The Postgres event store.
///
/// Cloning is cheap (the pool and registry are shared).
#[derive(Clone, Debug)]
pub struct PgEventStore {
    pool: PgPool,
    registry: Arc<SchemaRegistry>,
    validate: bool,
    keys: Arc<SchemaKeys>,
}

type Registration = Box<dyn FnOnce(&SchemaRegistry) -> Result<(), Error> + Send>;

/// Builds a [`PgEventStore`]: registers event types and records their
/// schemas in the database, refusing to start on a changed schema.
pub struct PgEventStoreBuilder {
    pool: PgPool,
    registry: Arc<SchemaRegistry>,
    validate: bool,
    registrations: Vec<Registration>,
}

impl std::fmt::Debug for PgEventStoreBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgEventStoreBuilder")
            .field("validate", &self.validate)
            .field("registrations", &self.registrations.len())
            .finish_non_exhaustive()
    }
}

impl PgEventStoreBuilder {
    /// Registers an event type: its schemas are validated against (and
    /// recorded in) the database's schema registry at [`build`](Self::build).
    pub fn register<E: Event>(mut self) -> Self {
        self.registrations
            .push(Box::new(|registry| registry.register::<E>()));
        self
    }

    /// Uses a shared schema registry instead of a new one.
    pub fn registry(mut self, registry: Arc<SchemaRegistry>) -> Self {
        self.registry = registry;
        self
    }

    /// Switches schema validation on append off (it is on by default).
    pub fn without_validation(mut self) -> Self {
        self.validate = false;
        self
    }

    /// Registers the event types, checks their schemas against those recorded
    /// in the database and records the new ones.
    ///
    /// Fails with [`Error::SchemaChanged`] when the code's schema for a stored
    /// (type, version) differs from the recorded one: bump the version.
    pub async fn build(self) -> Result<PgEventStore, Error> {
        for r in self.registrations {
            r(&self.registry)?;
        }
        let store = PgEventStore {
            pool: self.pool,
            registry: self.registry,
            validate: self.validate,
            keys: Arc::default(),
        };
        store.sync_schemas().await?;
        Ok(store)
    }
}

macro_rules! columns {
    () => {
        "position, transaction_id::text::int8 AS tx, event_id, stream_id, stream_version, event_type, schema_version, payload, metadata, recorded_at"
    };
}

/// A lost race inserts nothing and leaves the transaction usable.
macro_rules! skip_conflict {
    () => {
        "ON CONFLICT ON CONSTRAINT annals_events_stream_version_key DO NOTHING"
    };
}

/// The append statements. There is no stream table: the unique key
/// `annals_events (stream_id, stream_version)` is the concurrency control.
/// The `base` CTE decides the concurrency rule (the version the append
/// starts after, or no row when the stream is not where the append
/// expects it); the first event is inserted with `ON CONFLICT DO NOTHING`
/// on that key, so an append that lost a race inserts nothing and returns
/// no row (a conflict that leaves the caller's transaction usable). The
/// other events of a batch are inserted only after the first one: holding
/// version `base + 1`, uncommitted, no other writer can append after it,
/// so they never collide.
///
/// Binds: `$1` stream id, `$2..$6` event ids, types, schema versions,
/// payloads and metadata (scalars for one event, arrays for a batch), `$7`
/// the expected version of `Exact`.
macro_rules! append_sql {
    ($($base:tt)*) => {
        concat!(
            "WITH base AS (", $($base)*, "),
             e AS (SELECT * FROM UNNEST($2::uuid[], $3::text[], $4::int4[], $5::text[], $6::text[])
                   WITH ORDINALITY AS e(id, t, sv, p, m, ord)),
             first AS (
                 INSERT INTO annals_events (event_id, stream_id, stream_version, event_type, schema_version, payload, metadata)
                 SELECT e.id, $1, base.v + 1, e.t, e.sv, e.p::jsonb, e.m::jsonb FROM base, e WHERE e.ord = 1 ",
            skip_conflict!(),
            " RETURNING position, transaction_id, stream_version, recorded_at
             ),
             rest AS (
                 INSERT INTO annals_events (event_id, stream_id, stream_version, event_type, schema_version, payload, metadata)
                 SELECT e.id, $1, first.stream_version - 1 + e.ord, e.t, e.sv, e.p::jsonb, e.m::jsonb
                 FROM first, e WHERE e.ord > 1 ORDER BY e.ord
                 RETURNING position, transaction_id, stream_version, recorded_at
             )
             SELECT position, transaction_id::text::int8 AS tx, stream_version, recorded_at FROM first
             UNION ALL
             SELECT position, transaction_id::text::int8 AS tx, stream_version, recorded_at FROM rest
             ORDER BY stream_version"
        )
    };
}

/// A batch append that is its own transaction (no caller's transaction):
/// one `INSERT` of every event at `base + ordinality`, no conflict clause.
/// The unique key is the check: a lost race is a unique violation, which
/// aborts this statement (so nothing of the batch is written) and is mapped
/// to the conflict; it cannot abort anything else. Not for `Any`, whose
/// lost race is retried: that needs the statement to insert nothing
/// instead of failing ([`append_sql!`]).
macro_rules! append_owned_sql {
    ($($base:tt)*) => {
        concat!(
            "WITH base AS (", $($base)*, "),
             ins AS (
                 INSERT INTO annals_events (event_id, stream_id, stream_version, event_type, schema_version, payload, metadata)
                 SELECT e.id, $1, base.v + e.ord, e.t, e.sv, e.p::jsonb, e.m::jsonb
                 FROM base, UNNEST($2::uuid[], $3::text[], $4::int4[], $5::text[], $6::text[])
                      WITH ORDINALITY AS e(id, t, sv, p, m, ord)
                 ORDER BY e.ord
                 RETURNING position, transaction_id, stream_version, recorded_at
             )
             SELECT position, transaction_id::text::int8 AS tx, stream_version, recorded_at
             FROM ins ORDER BY stream_version"
        )
    };
}

/// The one-event append: the same rule as [`append_sql!`] with scalar
/// binds and no UNNEST (cheaper on the server for a single row), and the
/// conflict clause given first: `skip_conflict!()` inside a caller's
/// transaction, nothing when the statement is its own transaction (a
/// speculative insertion costs an extra index probe; a lost race is then a
/// unique violation, mapped to the conflict, that can only abort the
/// statement's own transaction).
macro_rules! append_one_sql {
    ($conflict:expr; $($base:tt)*) => {
        concat!(
            "WITH base AS (", $($base)*, ")
             INSERT INTO annals_events (event_id, stream_id, stream_version, event_type, schema_version, payload, metadata)
             SELECT $2, $1, base.v + 1, $3, $4, $5::jsonb, $6::jsonb FROM base ",
            $conflict,
            " RETURNING position, transaction_id::text::int8 AS tx, stream_version, recorded_at"
        )
    };
}

// The three concurrency rules, as the `base` CTE of either statement.
/// No stream yet: start after version 0 (version 1 taken = conflict).
macro_rules! base_no_stream {
    () => {
        "SELECT 0::int8 AS v"
    };
}
/// Wherever the stream is (a lost race inserts nothing and is retried).
macro_rules! base_any {
    () => {
        "SELECT coalesce(max(stream_version), 0) AS v FROM annals_events WHERE stream_id = $1"
    };
}
/// Exactly after version `$7`, which must exist (a later version already
/// taken = conflict).
macro_rules! base_exact {
    () => {
        "SELECT $7::int8 AS v WHERE EXISTS (SELECT 1 FROM annals_events WHERE stream_id = $1 AND stream_version = $7)"
    };
}

const APPEND_ONE_NO_STREAM: &str = append_one_sql!(skip_conflict!(); base_no_stream!());
const APPEND_ONE_ANY: &str = append_one_sql!(skip_conflict!(); base_any!());
const APPEND_ONE_EXACT: &str = append_one_sql!(skip_conflict!(); base_exact!());
/// A new stream's first event as its own transaction: version 1 by a plain
/// `INSERT … VALUES` (no rule to evaluate: the unique key is the check, and
/// a lost race is the unique violation, mapped to the conflict).
const APPEND_ONE_OWNED_NO_STREAM: &str =
    "INSERT INTO annals_events (event_id, stream_id, stream_version, event_type, schema_version, payload, metadata)
     VALUES ($2, $1, 1, $3, $4, $5::jsonb, $6::jsonb)
     RETURNING position, transaction_id::text::int8 AS tx, stream_version, recorded_at";
const APPEND_ONE_OWNED_EXACT: &str = append_one_sql!(""; base_exact!());
const APPEND_NO_STREAM: &str = append_sql!(base_no_stream!());
const APPEND_OWNED_NO_STREAM: &str = append_owned_sql!(base_no_stream!());
const APPEND_OWNED_EXACT: &str = append_owned_sql!(base_exact!());
const APPEND_ANY: &str = append_sql!(base_any!());
const APPEND_EXACT: &str = append_sql!(base_exact!());
/// How often an `Any` append that lost a race to a concurrent writer is
/// retried before it reports the conflict (only a caller's REPEATABLE READ
/// or SERIALIZABLE transaction, whose snapshot never sees the winner, can
/// use them all up).
const ANY_ATTEMPTS: u32 = 16;

/// The end of every stream read: in version order, through the
/// `(stream_id, stream_version)` index.
///
/// The `LIMIT` is what keeps it on the index. Its value is a sub-select the
/// planner cannot see through (NULL, or the caller's count, at run time),
/// so it plans for a fraction of the rows and takes the ordered index scan,
/// which returns rows as it goes. Without it Postgres may plan a bitmap scan
/// and a sort of the whole stream: in a custom plan whenever the condition
/// on the version is not a constant (the snapshot load), and in the generic
/// plan that a prepared statement switches to after five executions when a
/// few streams are big. That sort spills to disk past `work_mem`: measured
/// on a 100k-event stream, 79-90 ms instead of 25-37 ms. The test
/// `reads_keep_their_index_plans` pins the plans of every stream read.
macro_rules! in_stream_order {
    ($limit:expr) => {
        concat!(" ORDER BY stream_version LIMIT (SELECT ", $limit, "::int8)")
    };
}
pub(crate) use in_stream_order;

/// What rebuilding state needs of a stream: version, schema key (the
/// event's type and schema version in one bigint, see [`crate::keys`]),
/// payload. Every column costs the server a send call per row, a text
/// column the most: measured on a 10k-event fold, the type and schema
/// version columns cost 10-12%, the key 2-3%. No global position either: a
/// fold needs it only to name a failing event, which [`locate`] looks up.
const READ_PAYLOADS: &str = concat!(
    "SELECT stream_version, schema_key, payload
     FROM annals_events WHERE stream_id = $1 AND stream_version >= $2",
    in_stream_order!("NULL")
);
/// [`READ_PAYLOADS`] from the start: without the condition on the version,
/// which the index would check on every entry (about 1% of a 10k-event
/// read, measured).
const READ_WHOLE_PAYLOADS: &str = concat!(
    "SELECT stream_version, schema_key, payload
     FROM annals_events WHERE stream_id = $1",
    in_stream_order!("NULL")
);
/// [`READ_PAYLOADS`] with the type and schema version themselves, for a
/// read that met a key it cannot map (and learns it from this one).
const READ_FULL_PAYLOADS: &str = concat!(
    "SELECT stream_version, event_type, schema_version, payload, schema_key
     FROM annals_events WHERE stream_id = $1 AND stream_version >= $2",
    in_stream_order!("NULL")
);
/// [`READ_FULL_PAYLOADS`] with the global position as the fifth column.
const READ_STORED_PAYLOADS: &str = concat!(
    "SELECT stream_version, event_type, schema_version, payload, position
     FROM annals_events WHERE stream_id = $1 AND stream_version >= $2",
    in_stream_order!("NULL")
);
/// The global position of a stream's event, for an error from a fold.
const LOCATE: &str =
    "SELECT position FROM annals_events WHERE stream_id = $1 AND stream_version = $2";
const READ_EVENT: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM annals_events WHERE position = $1"
);
const READ_STREAM: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM annals_events WHERE stream_id = $1 AND stream_version >= $2",
    in_stream_order!("$3")
);
// only below the horizon: every transaction there has finished, so a reader
// resuming after its checkpoint can never skip a late commit
const READ_ALL: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM annals_events
     WHERE (transaction_id, position) > ($1::text::xid8, $2)
       AND transaction_id < pg_snapshot_xmin(pg_current_snapshot())
     ORDER BY transaction_id, position
     LIMIT $3"
);

impl PgEventStore {
    /// A builder for a store on `pool` (run [`migrate`](crate::migrate) first).
    pub fn builder(pool: PgPool) -> PgEventStoreBuilder {
        PgEventStoreBuilder {
            pool,
            registry: Arc::new(SchemaRegistry::new()),
            validate: true,
            registrations: Vec::new(),
        }
    }

    /// The connection pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// A store that has registered nothing (unit tests without a server).
    #[cfg(test)]
    pub(crate) fn unregistered(pool: PgPool) -> Self {
        PgEventStore {
            pool,
            registry: Arc::new(SchemaRegistry::new()),
            validate: true,
            keys: Arc::default(),
        }
    }

    /// The schema keys known now (see [`crate::keys`]).
    pub(crate) fn schema_keys(&self) -> Arc<KeyMap> {
        self.keys.snapshot()
    }

    /// The shared schema registry.
    pub fn registry_arc(&self) -> Arc<SchemaRegistry> {
        self.registry.clone()
    }

    /// Registers an event type after start-up and records its schemas,
    /// with the same breaking-change check as the builder.
    pub async fn register<E: Event>(&self) -> Result<(), Error> {
        self.registry.register::<E>()?;
        self.sync_schemas().await
    }

    /// Compares every schema in the registry with the recorded ones and
    /// records those not yet stored.
    pub async fn sync_schemas(&self) -> Result<(), Error> {
        let schemas = self.registry.schemas();
        if schemas.is_empty() {
            return Ok(());
        }
        let types: Vec<String> = schemas.iter().map(|s| s.event_type.clone()).collect();
        let versions: Vec<i32> = schemas.iter().map(|s| s.version as i32).collect();
        let fingerprints: Vec<String> = schemas.iter().map(|s| s.fingerprint.clone()).collect();
        let bodies: Vec<String> = schemas.iter().map(|s| s.schema.to_string()).collect();
        let rust_types: Vec<String> = schemas.iter().map(|s| s.rust_type.to_owned()).collect();
        // insert what is new, then read back everything recorded for these
        // keys (including rows a concurrent process inserted first)
        let rows = sqlx::query(
            "WITH new AS (
                 INSERT INTO annals_event_schemas (event_type, version, fingerprint, schema, rust_type)
                 SELECT t, v, f, s::jsonb, r FROM UNNEST($1::text[], $2::int4[], $3::text[], $4::text[], $5::text[]) AS x(t, v, f, s, r)
                 ON CONFLICT (event_type, version) DO NOTHING
                 RETURNING event_type, version, fingerprint
             )
             SELECT e.event_type, e.version, e.fingerprint
             FROM annals_event_schemas e
             JOIN UNNEST($1::text[], $2::int4[]) AS k(t, v) ON e.event_type = k.t AND e.version = k.v",
        )
        .bind(&types)
        .bind(&versions)
        .bind(&fingerprints)
        .bind(&bodies)
        .bind(&rust_types)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| Error::backend("recording event schemas", e))?;
        let mut recorded = Vec::with_capacity(rows.len());
        for row in &rows {
            let t: String = row
                .try_get(0)
                .map_err(|e| Error::backend("reading event schemas", e))?;
            let v: i32 = row
                .try_get(1)
                .map_err(|e| Error::backend("reading event schemas", e))?;
            let f: String = row
                .try_get(2)
                .map_err(|e| Error::backend("reading event schemas", e))?;
            recorded.push((t, v as u32, f));
        }
        self.registry.check_against(
            recorded
                .iter()
                .map(|(t, v, f)| (t.as_str(), *v, f.as_str())),
        )?;
        self.learn_registered_keys().await
    }

    /// Learns the schema keys of every (type, version) the registry can
    /// decode (every version up to the current one: old ones may have no
    /// schema of their own, only an upcaster), computed by Postgres with the
    /// expression of the `annals_events.schema_key` column, so that lean
    /// reads of them need no fallback.
    async fn learn_registered_keys(&self) -> Result<(), Error> {
        let mut pairs = std::collections::BTreeSet::new();
        for schema in self.registry.schemas() {
            let current = self
                .registry
                .current_version(&schema.event_type)
                .unwrap_or(schema.version);
            for v in 1..=current.max(schema.version).min(i32::MAX as u32) {
                pairs.insert((schema.event_type.clone(), v as i32));
            }
        }
        let (types, versions): (Vec<String>, Vec<i32>) = pairs.into_iter().unzip();
        let rows: Vec<(String, i32, i64)> = sqlx::query_as(
            "SELECT t, v, hashtextextended(t, v) FROM UNNEST($1::text[], $2::int4[]) AS k(t, v)",
        )
        .bind(&types)
        .bind(&versions)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| Error::backend("computing the schema keys of the registered types", e))?;
        self.keys
            .learn(rows.iter().map(|(t, v, key)| (*key, t.as_str(), *v)));
        Ok(())
    }

    /// Appends inside the caller's transaction (or on any connection), so a
    /// command can append and write other rows atomically. Same semantics as
    /// [`EventStore::append`]; nothing is visible before the caller commits.
    pub async fn append_in(
        &self,
        conn: &mut PgConnection,
        stream_id: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, Error> {
        self.append_timed(conn, false, stream_id, expected, events)
            .await
    }

    /// A connection from the pool; `context` names the wait in the error.
    pub(crate) async fn checkout(
        &self,
        context: &'static str,
    ) -> Result<PoolConnection<Postgres>, Error> {
        self.pool
            .acquire()
            .await
            .map_err(|e| Error::backend(context, e))
    }

    /// The end of a command attempt on `conn`, the connection its load
    /// used: `command`'s decision, appended (`folded`: how many events the
    /// load folded).
    pub(crate) async fn append_decided_on<C: CommandFold>(
        &self,
        conn: &mut PgConnection,
        stream_id: &str,
        folded: u64,
        command: &mut C,
    ) -> Result<(u64, Option<AppendResult>), Error> {
        let Some((expected, events)) = command.decide()? else {
            return Ok((folded, None));
        };
        let result = self
            .append_owned_on(conn, stream_id, expected, events)
            .await?;
        Ok((folded, Some(result)))
    }

    /// Appends on a pool connection outside any transaction (autocommit:
    /// the statement is its own transaction), as a command does after its
    /// load on the same connection.
    pub(crate) async fn append_owned_on(
        &self,
        conn: &mut PgConnection,
        stream_id: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, Error> {
        self.append_timed(conn, true, stream_id, expected, events)
            .await
    }

    /// [`EventStore::append`]: on a connection from the pool, outside any
    /// transaction (autocommit: the statement is its own transaction).
    ///
    /// The checkout starts first and the events are validated and bound
    /// while it runs: sqlx checks a pooled connection with a ping before
    /// handing it out (`test_before_acquire`, on by default), a round trip
    /// during which the client would otherwise wait idle. An invalid event
    /// is still reported before anything is sent, and the connection goes
    /// back to the pool.
    async fn append_pooled(
        &self,
        stream_id: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, Error> {
        const CONTEXT: &str = "acquiring a connection to append";
        if events.is_empty() {
            let mut conn = self.checkout(CONTEXT).await?;
            return check_empty_append(&mut conn, stream_id, expected).await;
        }
        let mut checkout = std::pin::pin!(self.checkout(CONTEXT));
        let first = std::future::poll_fn(|cx| Poll::Ready(checkout.as_mut().poll(cx))).await;
        let binds = self.bind_events(&events);
        let conn = match first {
            Poll::Ready(conn) => conn,
            Poll::Pending => checkout.await,
        };
        let binds = binds?;
        let mut conn = conn?;
        let rows = self
            .insert_bound(&mut conn, true, stream_id, expected, binds)
            .await?;
        drop(conn);
        appended(stream_id, &rows, events)
    }

    /// [`append_on`](Self::append_on), with the append metrics. `owned`:
    /// the statement is its own transaction (no caller's transaction).
    async fn append_timed(
        &self,
        conn: &mut PgConnection,
        owned: bool,
        stream_id: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, Error> {
        let started = std::time::Instant::now();
        let result = self
            .append_on(conn, owned, stream_id, expected, events)
            .await;
        annals_core::metrics::record_append("postgres", started, &result);
        result
    }

    async fn append_on(
        &self,
        conn: &mut PgConnection,
        owned: bool,
        stream_id: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, Error> {
        if events.is_empty() {
            return check_empty_append(conn, stream_id, expected).await;
        }
        let binds = self.bind_events(&events)?;
        let rows = self
            .insert_bound(conn, owned, stream_id, expected, binds)
            .await?;
        appended(stream_id, &rows, events)
    }

    /// The client's share of an append, which needs no connection: the
    /// events validated (when the store validates) and bound for the
    /// statement.
    fn bind_events<'a>(&self, events: &'a [NewEvent]) -> Result<Binds<'a>, Error> {
        if self.validate {
            self.registry.validate_new(events)?;
        }
        let mut binds = Binds {
            ids: Vec::with_capacity(events.len()),
            types: Vec::with_capacity(events.len()),
            versions: Vec::with_capacity(events.len()),
            payloads: Vec::with_capacity(events.len()),
            metas: Vec::with_capacity(events.len()),
        };
        for e in events {
            binds.ids.push(e.event_id);
            binds.types.push(e.event_type.as_str());
            binds.versions.push(e.schema_version as i32);
            binds.payloads.push(e.payload.get());
            binds
                .metas
                .push(
                    serde_json::to_string(&e.metadata).map_err(|source| Error::Encode {
                        event_type: e.event_type.clone(),
                        source,
                    })?,
                );
        }
        Ok(binds)
    }

    /// Runs the append statement for `binds` (at least one event) on
    /// `conn`: the rows it returned, one per event in stream order, or the
    /// typed conflict when the stream was not where `expected` says.
    async fn insert_bound(
        &self,
        conn: &mut PgConnection,
        owned: bool,
        stream_id: &str,
        expected: ExpectedVersion,
        binds: Binds<'_>,
    ) -> Result<Vec<PgRow>, Error> {
        let one = binds.ids.len() == 1;
        let sql = match (expected, one, owned) {
            (ExpectedVersion::NoStream, false, true) => APPEND_OWNED_NO_STREAM,
            (ExpectedVersion::NoStream, false, false) => APPEND_NO_STREAM,
            (ExpectedVersion::Any, false, _) => APPEND_ANY,
            (ExpectedVersion::Exact(_), false, true) => APPEND_OWNED_EXACT,
            (ExpectedVersion::Exact(_), false, false) => APPEND_EXACT,
            (ExpectedVersion::NoStream, true, true) => APPEND_ONE_OWNED_NO_STREAM,
            (ExpectedVersion::NoStream, true, false) => APPEND_ONE_NO_STREAM,
            (ExpectedVersion::Any, true, _) => APPEND_ONE_ANY,
            (ExpectedVersion::Exact(_), true, true) => APPEND_ONE_OWNED_EXACT,
            (ExpectedVersion::Exact(_), true, false) => APPEND_ONE_EXACT,
        };
        let mut attempt = 0;
        let rows = loop {
            attempt += 1;
            let q = sqlx::query(sql).bind(stream_id);
            let mut q = if one {
                q.bind(binds.ids[0])
                    .bind(binds.types[0])
                    .bind(binds.versions[0])
                    .bind(binds.payloads[0])
                    .bind(&binds.metas[0])
            } else {
                q.bind(&binds.ids)
                    .bind(&binds.types)
                    .bind(&binds.versions)
                    .bind(&binds.payloads)
                    .bind(&binds.metas)
            };
            if let ExpectedVersion::Exact(v) = expected {
                q = q.bind(i64::try_from(v).unwrap_or(i64::MAX));
            }
            let rows = match q.fetch_all(&mut *conn).await {
                Ok(rows) => rows,
                Err(e) => return Err(self.map_append_error(conn, stream_id, expected, e).await),
            };
            if !rows.is_empty() || expected != ExpectedVersion::Any || attempt >= ANY_ATTEMPTS {
                break rows;
            }
            // an `Any` append lost a race for the next version: try again
            // after the winner (a new statement sees it committed)
        };
        if rows.is_empty() {
            // the stream was not at the expected version: nothing was written
            let actual = stream_version_on(&mut *conn, stream_id).await?;
            return Err(VersionConflict {
                stream_id: stream_id.to_owned(),
                expected,
                actual,
            }
            .into());
        }
        Ok(rows)
    }

    /// [`EventStore::fold_stream_payloads`] on `conn`: the lean read, each
    /// row folded as it arrives; from an event whose schema key is not
    /// known on, the full read.
    pub(crate) async fn fold_on<F>(
        &self,
        conn: &mut PgConnection,
        stream_id: &str,
        from_version: u64,
        mut f: F,
    ) -> Result<u64, Error>
    where
        F: FnMut(PayloadRef<'_>) -> Result<(), Error> + Send,
    {
        let keys = self.keys.snapshot();
        let query = if from_version <= 1 {
            sqlx::query(READ_WHOLE_PAYLOADS).bind(stream_id)
        } else {
            sqlx::query(READ_PAYLOADS)
                .bind(stream_id)
                .bind(from_version.min(i64::MAX as u64) as i64)
        };
        let mut rows = query.fetch(&mut *conn);
        let mut n = 0;
        while let Some(row) = std::future::poll_fn(|cx| rows.as_mut().poll_next(cx)).await {
            let row = row.map_err(|e| Error::backend("reading a stream", e))?;
            if let Err(stop) = fold_lean_row(&row, &keys, &mut f) {
                drop(rows);
                return self.lean_stopped(conn, stream_id, *stop, n, &mut f).await;
            }
            n += 1;
        }
        Ok(n)
    }

    /// Goes on after a lean read stopped, `folded` events in: from the
    /// unmapped event with the full statement, or with the failure located.
    pub(crate) async fn lean_stopped<F>(
        &self,
        conn: &mut PgConnection,
        stream_id: &str,
        stop: LeanStop,
        folded: u64,
        f: &mut F,
    ) -> Result<u64, Error>
    where
        F: FnMut(PayloadRef<'_>) -> Result<(), Error> + Send,
    {
        match stop {
            LeanStop::Unmapped(version) => {
                let from = version.max(1) as u64;
                Ok(folded + self.fold_full(conn, stream_id, from, f).await?)
            }
            LeanStop::Failed(version, e) => Err(locate(conn, stream_id, version, e).await),
        }
    }

    /// Folds a stream from `from_version` with [`READ_FULL_PAYLOADS`] (type
    /// and schema version read from their columns), and learns the schema
    /// keys it meets, so that the next lean read maps them.
    async fn fold_full<F>(
        &self,
        conn: &mut PgConnection,
        stream_id: &str,
        from_version: u64,
        f: &mut F,
    ) -> Result<u64, Error>
    where
        F: FnMut(PayloadRef<'_>) -> Result<(), Error> + Send,
    {
        self.keys.missed();
        let known = self.keys.snapshot();
        let mut learned: Vec<(i64, String, i32)> = Vec::new();
        let mut rows = sqlx::query(READ_FULL_PAYLOADS)
            .bind(stream_id)
            .bind(from_version.min(i64::MAX as u64) as i64)
            .fetch(&mut *conn);
        let mut n = 0;
        let mut failure = None;
        while let Some(row) = std::future::poll_fn(|cx| rows.as_mut().poll_next(cx)).await {
            let row = match row {
                Ok(row) => row,
                Err(e) => {
                    failure = Some((None, Error::backend("reading a stream", e)));
                    break;
                }
            };
            if let (Ok(t), Ok(v), Ok(key)) = (
                row.try_get_unchecked::<&str, _>(1),
                row.try_get_unchecked::<i32, _>(2),
                row.try_get_unchecked::<i64, _>(4),
            ) {
                let mapped = u32::try_from(v).is_ok_and(|v| lookup(&known, key) == Some((t, v)));
                if !mapped && !learned.iter().any(|l| l.0 == key && l.1 == t && l.2 == v) {
                    learned.push((key, t.to_owned(), v));
                }
            }
            if let Err(failed) = fold_row(&row, f) {
                failure = Some(*failed);
                break;
            }
            n += 1;
        }
        drop(rows);
        self.keys
            .learn(learned.iter().map(|(key, t, v)| (*key, t.as_str(), *v)));
        match failure {
            None => Ok(n),
            Some((version, e)) => Err(locate(conn, stream_id, version, e).await),
        }
    }

    async fn map_append_error(
        &self,
        conn: &mut PgConnection,
        stream_id: &str,
        expected: ExpectedVersion,
        e: sqlx::Error,
    ) -> Error {
        if let Some(db) = e.as_database_error() {
            match db.constraint() {
                Some("annals_events_event_id_key") => {
                    // detail: `Key (event_id)=(0192...) already exists.`
                    let id = db
                        .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                        .and_then(|pg| pg.detail())
                        .and_then(|d| d.split("=(").nth(1))
                        .and_then(|rest| rest.split(')').next())
                        .and_then(|id| uuid::Uuid::parse_str(id).ok());
                    if let Some(event_id) = id {
                        return Error::DuplicateEventId { event_id };
                    }
                }
                Some("annals_events_stream_version_key") => {
                    // a concurrent writer won the race for a version:
                    // report it as the conflict it is
                    let actual = stream_version_on(conn, stream_id).await.ok().flatten();
                    return VersionConflict {
                        stream_id: stream_id.to_owned(),
                        expected,
                        actual,
                    }
                    .into();
                }
                _ => {}
            }
        }
        Error::backend("appending events", e)
    }

    /// How far the snapshot horizon holds log readers back. Seeing other
    /// sessions' transaction start times needs the `pg_read_all_stats` role
    /// (or superuser); without it `oldest_open_since` may be `None`.
    pub async fn horizon(&self) -> Result<Horizon, Error> {
        let row = sqlx::query(
            "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::int8 AS xmin,
                    LEAST(
                      (SELECT min(xact_start) FROM pg_stat_activity
                        WHERE backend_xid IS NOT NULL AND pid <> pg_backend_pid()),
                      (SELECT min(prepared) FROM pg_prepared_xacts)) AS oldest,
                    now() AS now,
                    (SELECT count(*) FROM annals_events
                      WHERE transaction_id >= pg_snapshot_xmin(pg_current_snapshot())) AS held",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(|e| Error::backend("reading the snapshot horizon", e))?;
        let xmin: i64 = get(&row, "xmin")?;
        let oldest: Option<DateTime<Utc>> = get(&row, "oldest")?;
        let now: DateTime<Utc> = get(&row, "now")?;
        let held: i64 = get(&row, "held")?;
        let lag_seconds = oldest
            .map(|o| ((now - o).num_milliseconds().max(0) as f64) / 1000.0)
            .unwrap_or(0.0);
        Ok(Horizon {
            xmin: xmin as u64,
            oldest_open_since: oldest,
            lag_seconds,
            events_held_back: held as u64,
        })
    }

    /// A watcher that wakes when events are appended (LISTEN/NOTIFY), with
    /// polling as the fallback.
    pub async fn watch(&self) -> Result<LogWatcher, Error> {
        let mut listener = PgListener::connect_with(&self.pool)
            .await
            .map_err(|e| Error::backend("connecting the event listener", e))?;
        listener
            .listen(EVENTS_CHANNEL)
            .await
            .map_err(|e| Error::backend("listening for appended events", e))?;
        Ok(LogWatcher { listener })
    }
}

/// Wakes log readers when events are appended.
#[derive(Debug)]
pub struct LogWatcher {
    listener: PgListener,
}

impl Watch for LogWatcher {
    /// Waits until an append commits or `poll` elapses, whichever is first.
    /// Returns `true` when woken by a notification. A lost connection is
    /// re-established by the listener; waiting then falls back to polling.
    async fn wait(&mut self, poll: Duration) -> bool {
        match tokio::time::timeout(poll, self.listener.recv()).await {
            Ok(Ok(_)) => {
                // drain notifications that arrived together
                while self.listener.next_buffered().is_some() {}
                true
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "event listener failed; falling back to polling");
                tokio::time::sleep(poll).await;
                false
            }
            Err(_) => false,
        }
    }
}

fn get<'r, T>(row: &'r PgRow, column: &str) -> Result<T, Error>
where
    T: sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
{
    row.try_get(column)
        .map_err(|e| Error::backend("reading a row", e))
}

/// An append's events as the statement binds them (arrays for a batch;
/// the first of each for one event).
struct Binds<'a> {
    ids: Vec<uuid::Uuid>,
    types: Vec<&'a str>,
    versions: Vec<i32>,
    payloads: Vec<&'a str>,
    metas: Vec<String>,
}

/// An append of no events: nothing to write, but the expectation is still
/// checked (the typed conflict when the stream is not where it says).
async fn check_empty_append(
    conn: &mut PgConnection,
    stream_id: &str,
    expected: ExpectedVersion,
) -> Result<AppendResult, Error> {
    let actual = stream_version_on(conn, stream_id).await?;
    if !expected.matches(actual) {
        return Err(VersionConflict {
            stream_id: stream_id.to_owned(),
            expected,
            actual,
        }
        .into());
    }
    Ok(AppendResult {
        version: actual.unwrap_or(0),
        events: Vec::new(),
    })
}

/// The result of an append: `events` with what the statement returned for
/// each (position, transaction, stream version, time).
fn appended(stream_id: &str, rows: &[PgRow], events: Vec<NewEvent>) -> Result<AppendResult, Error> {
    let mut out = Vec::with_capacity(events.len());
    let mut last = 0;
    for (row, e) in rows.iter().zip(events) {
        // every append statement returns (position, tx, stream_version,
        // recorded_at), in this order
        let column = |i| Error::backend("reading an appended row", i);
        let position: i64 = row.try_get(0).map_err(column)?;
        let tx: i64 = row.try_get(1).map_err(column)?;
        let stream_version: i64 = row.try_get(2).map_err(column)?;
        let recorded_at: DateTime<Utc> = row.try_get(3).map_err(column)?;
        last = stream_version as u64;
        out.push(Envelope {
            event_id: e.event_id,
            stream_id: stream_id.to_owned(),
            stream_version: stream_version as u64,
            log_position: LogPosition::new(tx as u64, position as u64),
            event_type: e.event_type,
            schema_version: e.schema_version,
            metadata: e.metadata,
            recorded_at,
            payload: e.payload,
        });
    }
    Ok(AppendResult {
        version: last,
        events: out,
    })
}

async fn stream_version_on(conn: &mut PgConnection, stream_id: &str) -> Result<Option<u64>, Error> {
    let v: Option<i64> =
        sqlx::query_scalar("SELECT max(stream_version) FROM annals_events WHERE stream_id = $1")
            .bind(stream_id)
            .fetch_one(conn)
            .await
            .map_err(|e| Error::backend("reading a stream's version", e))?;
    Ok(v.filter(|v| *v > 0).map(|v| v as u64))
}

/// Decodes a row of [`columns!`] (by index: this runs once per event read),
/// the payload copied into a `RawValue` (checked: a `RawValue` can only be
/// made by parsing). jsonb arrives in binary: the payload's text is read
/// where it lies, the metadata decoded from it without an intermediate
/// string.
///
/// Columns are read without sqlx's per-value type check (about 6% of a
/// typed stream read): the migrations fix their types, and every decoder
/// still checks what it reads (lengths, UTF-8, JSON), so a column altered
/// to another type decodes to an error (or, between integer widths, the
/// same number), never a panic.
fn decode_row(row: &PgRow) -> Result<RecordedEvent, Error> {
    decode_row_with(row, |p| {
        RawValue::from_string(p.payload.to_owned()).map_err(|e| Error::CorruptedRow {
            position: 0,
            message: format!("payload is not JSON: {e}"),
        })
    })
}

/// [`decode_row`] with the payload decoded by `decode` from the jsonb text
/// where it lies in the row (borrowed, not copied first); an error from
/// `decode` gets the row's position.
fn decode_row_with<T>(
    row: &PgRow,
    decode: impl FnOnce(PayloadRef<'_>) -> Result<T, Error>,
) -> Result<Envelope<T>, Error> {
    let at = |i: usize| move |e| Error::backend(COLUMN_NAMES[i], e);
    let position: i64 = row.try_get_unchecked(0).map_err(at(0))?;
    let corrupted = |message: String| Error::CorruptedRow {
        position: position as u64,
        message,
    };
    let tx: i64 = row.try_get_unchecked(1).map_err(at(1))?;
    let stream_version: i64 = row.try_get_unchecked(4).map_err(at(4))?;
    let event_type: String = row.try_get_unchecked(5).map_err(at(5))?;
    let schema_version: i32 = row.try_get_unchecked(6).map_err(at(6))?;
    if schema_version < 0 {
        return Err(corrupted(format!(
            "negative schema version {schema_version}"
        )));
    }
    let text = row
        .try_get_raw(7)
        .map_err(at(7))
        .and_then(|value| jsonb_text(value).map_err(corrupted))?;
    let payload = decode(PayloadRef {
        stream_version: stream_version as u64,
        event_type: &event_type,
        schema_version: schema_version as u32,
        payload: text,
    })
    .map_err(|e| e.at_position(position as u64))?;
    let metadata: Json<Metadata> = row
        .try_get_unchecked(8)
        .map_err(|e| corrupted(format!("metadata is not an annals metadata object: {e}")))?;
    Ok(Envelope {
        event_id: row.try_get_unchecked(2).map_err(at(2))?,
        stream_id: row.try_get_unchecked(3).map_err(at(3))?,
        stream_version: stream_version as u64,
        log_position: LogPosition::new(tx as u64, position as u64),
        event_type,
        schema_version: schema_version as u32,
        metadata: metadata.0,
        recorded_at: row.try_get_unchecked(9).map_err(at(9))?,
        payload,
    })
}

/// Decodes a row of [`READ_FULL_PAYLOADS`] (or [`READ_STORED_PAYLOADS`]),
/// borrowing from it. An error names
/// position 0; the fold ([`locate`]) fills the real one in.
pub(crate) fn payload_row(row: &PgRow) -> Result<PayloadRef<'_>, Error> {
    let corrupted = |message: String| Error::CorruptedRow {
        position: 0,
        message,
    };
    let stream_version: i64 = row
        .try_get_unchecked(0)
        .map_err(|e| Error::backend(COLUMN_NAMES[4], e))?;
    let event_type: &str = row
        .try_get_unchecked(1)
        .map_err(|e| Error::backend(COLUMN_NAMES[5], e))?;
    let schema_version: i32 = row
        .try_get_unchecked(2)
        .map_err(|e| Error::backend(COLUMN_NAMES[6], e))?;
    if schema_version < 0 {
        return Err(corrupted(format!(
            "negative schema version {schema_version}"
        )));
    }
    let payload = row
        .try_get_raw(3)
        .map_err(|e| Error::backend(COLUMN_NAMES[7], e))
        .and_then(|value| jsonb_text(value).map_err(corrupted))?;
    Ok(PayloadRef {
        stream_version: stream_version as u64,
        event_type,
        schema_version: schema_version as u32,
        payload,
    })
}

/// Folds a row of [`READ_FULL_PAYLOADS`] into `f`. On an error, returns it
/// with the row's stream version (when it could be read), for [`locate`].
/// (Boxed: the error path is rare and `Error` is large.)
fn fold_row<F>(row: &PgRow, f: &mut F) -> Result<(), Box<(Option<i64>, Error)>>
where
    F: FnMut(PayloadRef<'_>) -> Result<(), Error>,
{
    payload_row(row)
        .and_then(f)
        .map_err(|e| Box::new((row.try_get_unchecked(0).ok(), e)))
}

/// Why a lean read stopped before the end of the stream.
pub(crate) enum LeanStop {
    /// The row's schema key is not known (or ambiguous): the read goes on
    /// from this version with [`READ_FULL_PAYLOADS`].
    Unmapped(i64),
    /// Reading or folding the row failed (its version when it could be
    /// read, for [`locate`]).
    Failed(Option<i64>, Error),
}

/// Folds a row of [`READ_PAYLOADS`] (or an event row of the snapshot load:
/// version, schema key, payload) into `f`, with the type and schema
/// version that `keys` maps its key to. (Boxed: the stop is rare and
/// `Error` is large.)
pub(crate) fn fold_lean_row<F>(row: &PgRow, keys: &KeyMap, f: &mut F) -> Result<(), Box<LeanStop>>
where
    F: FnMut(PayloadRef<'_>) -> Result<(), Error>,
{
    let failed = |version, e| Box::new(LeanStop::Failed(version, e));
    let stream_version: i64 = row
        .try_get_unchecked(0)
        .map_err(|e| failed(None, Error::backend(COLUMN_NAMES[4], e)))?;
    let key: i64 = row
        .try_get_unchecked(1)
        .map_err(|e| failed(Some(stream_version), Error::backend("schema_key", e)))?;
    let Some((event_type, schema_version)) = lookup(keys, key) else {
        return Err(Box::new(LeanStop::Unmapped(stream_version)));
    };
    let payload = row
        .try_get_raw(2)
        .map_err(|e| Error::backend(COLUMN_NAMES[7], e))
        .and_then(|value| {
            jsonb_text(value).map_err(|message| Error::CorruptedRow {
                position: 0,
                message,
            })
        })
        .map_err(|e| failed(Some(stream_version), e))?;
    f(PayloadRef {
        stream_version: stream_version as u64,
        event_type,
        schema_version,
        payload,
    })
    .map_err(|e| failed(Some(stream_version), e))
}

/// Completes an error from folding the event at `stream_version` of
/// `stream_id` with the event's global position (lean reads do not fetch
/// it): one more query, on the error path only. An event deleted in the
/// meantime keeps position 0; a failed lookup is reported as the database
/// error it is, naming the original error's event.
pub(crate) async fn locate(
    conn: &mut PgConnection,
    stream_id: &str,
    stream_version: Option<i64>,
    error: Error,
) -> Error {
    let unlocated = matches!(
        error,
        Error::Decode { position: 0, .. } | Error::CorruptedRow { position: 0, .. }
    );
    let Some(version) = stream_version.filter(|_| unlocated) else {
        return error;
    };
    match sqlx::query_scalar::<_, i64>(LOCATE)
        .bind(stream_id)
        .bind(version)
        .fetch_optional(conn)
        .await
    {
        Ok(Some(position)) => error.at_position(position.max(0) as u64),
        Ok(None) => error,
        Err(e) => Error::backend(
            "reading the global position of an event that could not be read",
            format!("{e} (the event, version {version} of stream `{stream_id}`: {error})"),
        ),
    }
}

/// The JSON text of a jsonb value, borrowed from the row. Postgres only
/// stores valid JSON in jsonb, so the text is handed to the event's decoder
/// as it is: one parse per event, like a plain `serde_json::from_slice`.
pub(crate) fn jsonb_text(value: PgValueRef<'_>) -> Result<&str, String> {
    if value.is_null() {
        return Err("payload is NULL".to_owned());
    }
    let binary = value.format() == PgValueFormat::Binary;
    let jsonb = value.type_info().name() == "JSONB";
    let bytes = value
        .as_bytes()
        .map_err(|e| format!("payload could not be read: {e}"))?;
    let text = match bytes.split_first() {
        // binary jsonb: a format version byte, then the text
        Some((1, rest)) if binary && jsonb => rest,
        Some((v, _)) if binary && jsonb => {
            return Err(format!("payload has jsonb format version {v}, expected 1"))
        }
        _ => bytes,
    };
    std::str::from_utf8(text).map_err(|e| format!("payload is not UTF-8: {e}"))
}

/// What the store was reading when a column failed, by column index.
const COLUMN_NAMES: [&str; 10] = [
    "reading an event's position",
    "reading an event's transaction id",
    "reading an event's id",
    "reading an event's stream id",
    "reading an event's stream version",
    "reading an event's type",
    "reading an event's schema version",
    "reading an event's payload",
    "reading an event's metadata",
    "reading an event's recorded time",
];

fn limit(max_count: usize) -> i64 {
    i64::try_from(max_count).unwrap_or(i64::MAX)
}

impl EventStore for PgEventStore {
    fn registry(&self) -> &SchemaRegistry {
        &self.registry
    }

    fn validates_on_append(&self) -> bool {
        self.validate
    }

    async fn append(
        &self,
        stream_id: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, Error> {
        let started = std::time::Instant::now();
        let result = self.append_pooled(stream_id, expected, events).await;
        annals_core::metrics::record_append("postgres", started, &result);
        result
    }

    async fn read_stream(
        &self,
        stream_id: &str,
        from_version: u64,
        max_count: usize,
    ) -> Result<Vec<RecordedEvent>, Error> {
        let rows = sqlx::query(READ_STREAM)
            .bind(stream_id)
            .bind(from_version.min(i64::MAX as u64) as i64)
            .bind(limit(max_count))
            .fetch_all(&self.pool)
            .await
            .map_err(|e| Error::backend("reading a stream", e))?;
        rows.iter().map(decode_row).collect()
    }

    async fn read_stream_with<T, F>(
        &self,
        stream_id: &str,
        from_version: u64,
        mut decode: F,
    ) -> Result<Vec<Envelope<T>>, Error>
    where
        T: Send,
        F: FnMut(PayloadRef<'_>) -> Result<T, Error> + Send,
    {
        let mut rows = sqlx::query(READ_STREAM)
            .bind(stream_id)
            .bind(from_version.clamp(1, i64::MAX as u64) as i64)
            .bind(limit(usize::MAX))
            .fetch(&self.pool);
        let mut out = Vec::new();
        while let Some(row) = std::future::poll_fn(|cx| rows.as_mut().poll_next(cx)).await {
            let row = row.map_err(|e| Error::backend("reading a stream", e))?;
            out.push(decode_row_with(&row, &mut decode)?);
        }
        Ok(out)
    }

    async fn read_all(
        &self,
        after: LogPosition,
        max_count: usize,
    ) -> Result<Vec<RecordedEvent>, Error> {
        let rows = sqlx::query(READ_ALL)
            .bind(after.transaction_id.to_string())
            .bind(after.position.min(i64::MAX as u64) as i64)
            .bind(limit(max_count))
            .fetch_all(&self.pool)
            .await
            .map_err(|e| Error::backend("reading the global log", e))?;
        rows.iter().map(decode_row).collect()
    }

    async fn read_stream_payloads(
        &self,
        stream_id: &str,
        from_version: u64,
    ) -> Result<Vec<StoredPayload>, Error> {
        let rows = sqlx::query(READ_STORED_PAYLOADS)
            .bind(stream_id)
            .bind(from_version.min(i64::MAX as u64) as i64)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| Error::backend("reading a stream", e))?;
        rows.iter()
            .map(|row| {
                let position: i64 = row
                    .try_get_unchecked(4)
                    .map_err(|e| Error::backend(COLUMN_NAMES[0], e))?;
                let position = position as u64;
                let p = payload_row(row).map_err(|e| e.at_position(position))?;
                Ok(StoredPayload {
                    position,
                    stream_version: p.stream_version,
                    event_type: p.event_type.to_owned(),
                    schema_version: p.schema_version,
                    payload: RawValue::from_string(p.payload.to_owned()).map_err(|e| {
                        Error::CorruptedRow {
                            position,
                            message: format!("payload is not JSON: {e}"),
                        }
                    })?,
                })
            })
            .collect()
    }

    async fn fold_stream_payloads<F>(
        &self,
        stream_id: &str,
        from_version: u64,
        f: F,
    ) -> Result<u64, Error>
    where
        F: FnMut(PayloadRef<'_>) -> Result<(), Error> + Send,
    {
        let mut conn = self
            .checkout("acquiring a connection to read a stream")
            .await?;
        self.fold_on(&mut conn, stream_id, from_version, f).await
    }

    async fn fold_and_append<C>(
        &self,
        stream_id: &str,
        command: &mut C,
    ) -> Result<(u64, Option<AppendResult>), Error>
    where
        C: CommandFold,
    {
        // one connection for the load and the append: a pool checkout pings
        // the connection, and so does its return
        let mut conn = self
            .checkout("acquiring a connection to run a command")
            .await?;
        let folded = self
            .fold_on(&mut conn, stream_id, 1, |p| command.event(p))
            .await?;
        self.append_decided_on(&mut conn, stream_id, folded, command)
            .await
    }

    async fn stream_version(&self, stream_id: &str) -> Result<Option<u64>, Error> {
        let mut conn = self.checkout("acquiring a connection").await?;
        stream_version_on(&mut conn, stream_id).await
    }

    async fn read_event(&self, position: u64) -> Result<Option<RecordedEvent>, Error> {
        let row = sqlx::query(READ_EVENT)
            .bind(position.min(i64::MAX as u64) as i64)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| Error::backend("reading an event by position", e))?;
        row.as_ref().map(decode_row).transpose()
    }

    async fn backlog(&self, after: LogPosition) -> Result<Backlog, Error> {
        // every committed event past the checkpoint, also those still above
        // the horizon: they are committed, the reader just cannot see them yet
        let row = sqlx::query(
            "SELECT count(*) AS n, min(recorded_at) AS oldest FROM annals_events
             WHERE (transaction_id, position) > ($1::text::xid8, $2)",
        )
        .bind(after.transaction_id.to_string())
        .bind(after.position.min(i64::MAX as u64) as i64)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| Error::backend("counting events behind a checkpoint", e))?;
        let n: i64 = get(&row, "n")?;
        Ok(Backlog {
            events: n.max(0) as u64,
            oldest_recorded_at: get(&row, "oldest")?,
        })
    }

    async fn horizon(&self) -> Result<Horizon, Error> {
        PgEventStore::horizon(self).await
    }

    async fn log_end(&self) -> Result<Option<LogPosition>, Error> {
        let row: Option<(i64, i64)> = sqlx::query_as(
            "SELECT transaction_id::text::int8 AS tx, position FROM annals_events
              ORDER BY transaction_id DESC, position DESC LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| Error::backend("reading the end of the global log", e))?;
        Ok(row.map(|(tx, position)| LogPosition::new(tx as u64, position as u64)))
    }
}

impl WatchLog for PgEventStore {
    type Watcher = LogWatcher;

    async fn watch(&self) -> Result<LogWatcher, Error> {
        PgEventStore::watch(self).await
    }
}

#[cfg(all(test, feature = "testing"))]
mod plan_tests {
    use super::{
        READ_ALL, READ_FULL_PAYLOADS, READ_PAYLOADS, READ_STORED_PAYLOADS, READ_STREAM,
        READ_WHOLE_PAYLOADS,
    };
    use crate::snapshot::LOAD_AND_FOLD;
    use crate::testing::TestDatabase;
    use sqlx::AssertSqlSafe;

    /// Every stream read stays on the `(stream_id, stream_version)` index,
    /// in custom and in generic plans, on a table whose statistics tempt the
    /// planner into a bitmap scan and a sort (a few big streams); the log
    /// read stays on the `(transaction_id, position)` index.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_keep_their_index_plans() {
        let db = TestDatabase::new().await;
        let pool = db.pool();
        for (stream, n) in [("big-a", 60_000i64), ("big-b", 30_000), ("small", 1_000)] {
            sqlx::query(
                "INSERT INTO annals_events (event_id, stream_id, stream_version, event_type, schema_version, payload)
                 SELECT gen_random_uuid(), $1, g, 'test.scored', 1,
                        jsonb_build_object('score', g % 100, 'model', 'gbm-2024-01',
                                           'reasons', jsonb_build_array('opened 3 emails', 'visited the pricing page'))
                   FROM generate_series(1, $2) g",
            )
            .bind(stream)
            .bind(n)
            .execute(pool)
            .await
            .expect("insert a stream");
        }
        sqlx::query("ANALYZE annals_events")
            .execute(pool)
            .await
            .expect("analyze");
        let mut conn = pool.acquire().await.expect("a connection");
        let stream_index = "Index Scan using annals_events_stream_version_key";
        let statements = [
            ("READ_PAYLOADS", READ_PAYLOADS, "('big-a', 1)", stream_index),
            (
                "READ_WHOLE_PAYLOADS",
                READ_WHOLE_PAYLOADS,
                "('big-a')",
                stream_index,
            ),
            (
                "READ_FULL_PAYLOADS",
                READ_FULL_PAYLOADS,
                "('big-a', 1)",
                stream_index,
            ),
            (
                "READ_STORED_PAYLOADS",
                READ_STORED_PAYLOADS,
                "('big-a', 1)",
                stream_index,
            ),
            (
                "READ_STREAM",
                READ_STREAM,
                "('big-a', 1, 9223372036854775807)",
                stream_index,
            ),
            (
                "LOAD_AND_FOLD",
                LOAD_AND_FOLD,
                "('lead', 'big-a')",
                stream_index,
            ),
            (
                "READ_ALL",
                READ_ALL,
                "('0', 0, 1000)",
                "Index Scan using annals_events_global_order",
            ),
        ];
        for (name, sql, args, index) in statements {
            sqlx::raw_sql(AssertSqlSafe(format!("PREPARE plan_check AS {sql}")))
                .execute(&mut *conn)
                .await
                .expect("prepare");
            for mode in ["force_custom_plan", "force_generic_plan"] {
                sqlx::raw_sql(AssertSqlSafe(format!("SET plan_cache_mode = {mode}")))
                    .execute(&mut *conn)
                    .await
                    .expect("set the plan mode");
                let plan: Vec<String> =
                    sqlx::query_scalar(AssertSqlSafe(format!("EXPLAIN EXECUTE plan_check{args}")))
                        .fetch_all(&mut *conn)
                        .await
                        .expect("explain");
                let plan = plan.join("\n");
                assert!(
                    plan.contains(index),
                    "{name} ({mode}) does not read through its index:\n{plan}"
                );
                assert!(
                    !plan.contains("Bitmap Heap Scan on annals_events")
                        && !plan.contains("Seq Scan on annals_events"),
                    "{name} ({mode}) scans the events another way:\n{plan}"
                );
            }
            sqlx::raw_sql("DEALLOCATE plan_check; RESET plan_cache_mode")
                .execute(&mut *conn)
                .await
                .expect("deallocate");
        }
    }
}

#[cfg(all(test, feature = "testing"))]
mod key_tests {
    use annals_core::testing::events::{Created, Scored, TestEvent};
    use annals_core::{EventStoreExt, ExpectedVersion, Metadata};

    use super::PgEventStore;
    use crate::testing::TestDatabase;

    fn events() -> Vec<TestEvent> {
        vec![
            TestEvent::Created(Created {
                name: "Ada".to_owned(),
                email: None,
            }),
            TestEvent::Scored(Scored {
                score: 80,
                confidence: 0.9,
                model: "gbm".to_owned(),
            }),
            TestEvent::Note("called back".to_owned()),
        ]
    }

    /// A store maps the schema keys of the types it registered from start-up
    /// on (no fallback), learns the others from its first full read, and
    /// reads a key it knows two pairs for in full every time.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lean_reads_map_registered_keys_and_learn_the_others() {
        let db = TestDatabase::new().await;
        let pool = db.pool().clone();
        let registered = PgEventStore::builder(pool.clone())
            .register::<TestEvent>()
            .build()
            .await
            .expect("build a registered store");
        let written = events();
        registered
            .append_events(
                "lead-1",
                ExpectedVersion::NoStream,
                &written,
                &Metadata::new(),
            )
            .await
            .expect("append");
        // a version-1 payload of test.scored, upcast on read
        sqlx::query(
            "INSERT INTO annals_events (event_id, stream_id, stream_version, event_type, schema_version, payload)
             VALUES (gen_random_uuid(), 'lead-1', 4, 'test.scored', 1, '{\"points\": 40}')",
        )
        .execute(&pool)
        .await
        .expect("insert a version-1 event");
        let mut expected: Vec<(u64, TestEvent)> = (1..).zip(written).collect();
        expected.push((
            4,
            TestEvent::Scored(Scored {
                score: 40,
                confidence: 0.5,
                model: "unknown".to_owned(),
            }),
        ));

        let read = registered
            .read_stream_events::<TestEvent>("lead-1", 1)
            .await
            .expect("read");
        assert_eq!(read, expected);
        assert_eq!(
            registered.keys.misses(),
            0,
            "registered keys need no fallback"
        );

        let unregistered = PgEventStore::builder(pool.clone())
            .build()
            .await
            .expect("build a store without types");
        for _ in 0..2 {
            let read = unregistered
                .read_stream_events::<TestEvent>("lead-1", 1)
                .await
                .expect("read");
            assert_eq!(read, expected);
        }
        assert_eq!(
            unregistered.keys.misses(),
            1,
            "the first read learns the keys, the second maps them"
        );
        let from_3 = unregistered
            .read_stream_events::<TestEvent>("lead-1", 3)
            .await
            .expect("read from version 3");
        assert_eq!(from_3, expected[2..]);

        // a key that stands for two pairs: read in full from that event on
        let created_key: i64 = sqlx::query_scalar(
            "SELECT schema_key FROM annals_events WHERE stream_id = 'lead-1' AND stream_version = 2",
        )
        .fetch_one(&pool)
        .await
        .expect("the key of test.scored v3");
        registered.keys.learn([(created_key, "test.other", 3)]);
        for round in 1..=2 {
            let read = registered
                .read_stream_events::<TestEvent>("lead-1", 1)
                .await
                .expect("read");
            assert_eq!(read, expected);
            assert_eq!(registered.keys.misses(), round);
        }
    }
}
