//! Connecting: a pool with annals' defaults, and a connection failure that
//! says where it failed, in seconds.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use annals_core::error::InvalidInput;
use annals_core::Error;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection as _, PgPool};

/// Connects a pool to the database at `url` with annals' defaults (see
/// [`PoolConfig`]). A server that cannot be reached fails within the
/// connect timeout (5 s), with an error that names the host and port and
/// why (`connection refused at 127.0.0.1:5433`), instead of sqlx's
/// `PoolTimedOut` after 30 s of retries.
///
/// ```no_run
/// # async fn run() -> Result<(), annals::Error> {
/// let pool = annals::postgres::connect("postgres://app@localhost/clinic").await?;
/// annals::postgres::migrate(&pool).await?;
/// # Ok(()) }
/// ```
pub async fn connect(url: &str) -> Result<PgPool, Error> {
    PoolConfig::from_url(url)?.connect().await
}

/// A connection pool's settings, with annals' defaults:
///
/// - at most 10 connections;
/// - a connect timeout of 5 s, also the longest a checkout waits for a
///   free connection;
/// - no ping of a pooled connection before it is handed out (sqlx's
///   `test_before_acquire`, which sqlx itself turns on): the ping is a
///   round trip per checkout, and on a durable server it cost 14-17% of a
///   command's throughput (benches/durable.rs, "no checkout ping" rows).
///   The price: after a server restart, each dead connection still in the
///   pool fails one operation with a retryable error (see
///   [`Error::is_retryable`]; runners and sagas retry it, a command's
///   caller may) before the pool replaces it. Turn the ping on with
///   [`test_before_acquire`](Self::test_before_acquire) when a caller must
///   never see that error.
///
/// ```no_run
/// # async fn run() -> Result<(), annals::Error> {
/// use std::time::Duration;
/// use annals::postgres::PoolConfig;
///
/// let pool = PoolConfig::from_url("postgres://app@db.internal/clinic")?
///     .max_connections(32)
///     .connect_timeout(Duration::from_secs(2))
///     .connect()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct PoolConfig {
    options: PgConnectOptions,
    max_connections: u32,
    connect_timeout: Duration,
    test_before_acquire: bool,
}

impl PoolConfig {
    /// The settings for the database at `url` (`postgres://user:password@host:port/database`),
    /// with annals' defaults.
    pub fn from_url(url: &str) -> Result<Self, Error> {
        let scheme = url.split_once("://").map(|(scheme, _)| scheme);
        if !matches!(scheme, Some("postgres" | "postgresql")) {
            return Err(InvalidInput::new(
                "database url",
                "not a Postgres connection URL: it must start with `postgres://` or `postgresql://`",
            )
            .into());
        }
        let options = PgConnectOptions::from_str(url).map_err(|e| {
            InvalidInput::new(
                "database url",
                format!("not a Postgres connection URL: {e}"),
            )
        })?;
        Ok(Self::from_options(options))
    }

    /// The settings for sqlx connect options, with annals' defaults.
    pub fn from_options(options: PgConnectOptions) -> Self {
        PoolConfig {
            options: crate::tenancy::every_tenant(options),
            max_connections: 10,
            connect_timeout: Duration::from_secs(5),
            test_before_acquire: false,
        }
    }

    /// The most connections the pool opens (default 10).
    pub fn max_connections(mut self, n: u32) -> Self {
        self.max_connections = n.max(1);
        self
    }

    /// How long a connection attempt, and a checkout, may take (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Whether the pool pings a connection before handing it out (default off).
    pub fn test_before_acquire(mut self, test: bool) -> Self {
        self.test_before_acquire = test;
        self
    }

    /// Opens one connection to check that the server is there (failing
    /// within the connect timeout, naming the host and port), then returns
    /// the pool.
    pub async fn connect(self) -> Result<PgPool, Error> {
        let place = Place::of(&self.options);
        let probe = tokio::time::timeout(
            self.connect_timeout,
            sqlx::PgConnection::connect_with(&self.options),
        )
        .await;
        let failure = match probe {
            Ok(Ok(conn)) => {
                // a polite goodbye; the pool opens its own connections
                let _ = conn.close().await;
                None
            }
            Ok(Err(e)) => Some(ConnectError::Failed {
                place: place.clone(),
                source: e,
            }),
            Err(_) => Some(ConnectError::TimedOut {
                place: place.clone(),
                after: self.connect_timeout,
            }),
        };
        if let Some(e) = failure {
            return Err(e.into_error());
        }
        let pool = PgPoolOptions::new()
            .max_connections(self.max_connections)
            .acquire_timeout(self.connect_timeout)
            .test_before_acquire(self.test_before_acquire)
            .connect_lazy_with(self.options);
        Ok(pool)
    }
}

/// Where a connection goes: `host:port` or a socket path, and the database.
#[derive(Debug, Clone)]
struct Place(String);

impl Place {
    fn of(options: &PgConnectOptions) -> Self {
        let at = match options.get_socket() {
            Some(socket) => format!("socket {}", socket.display()),
            None => format!("{}:{}", options.get_host(), options.get_port()),
        };
        Place(match options.get_database() {
            Some(db) => format!("{at} (database `{db}`)"),
            None => at,
        })
    }
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why connecting failed, and where.
#[derive(Debug, thiserror::Error)]
enum ConnectError {
    #[error("cannot connect to {place}: {}", describe(source))]
    Failed {
        place: Place,
        #[source]
        source: sqlx::Error,
    },
    #[error("no answer from {place} within {after:?}")]
    TimedOut { place: Place, after: Duration },
}

impl ConnectError {
    /// A refused or timed-out connection may work later; a wrong password
    /// or database will not.
    fn into_error(self) -> Error {
        let transient = match &self {
            ConnectError::TimedOut { .. } => true,
            ConnectError::Failed { source, .. } => matches!(source, sqlx::Error::Io(_)),
        };
        if transient {
            Error::transient("connecting to the database", self)
        } else {
            Error::backend("connecting to the database", self)
        }
    }
}

fn describe(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
            "connection refused".to_owned()
        }
        other => other.to_string(),
    }
}
