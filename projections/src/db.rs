//! The database handle shared by the read and write sides. Tally runs on
//! SQLite (embedded default) or PostgreSQL (production) behind the same code:
//! a typed pool for the cqrs-es repositories and the log, and an `Any` pool
//! for the portable tables (read models, checkpoints, keys), so that every
//! read model has one implementation for both backends.

use std::str::FromStr;
use std::time::Duration;

use sqlx::any::AnyPoolOptions;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{AnyPool, PgPool, SqlitePool};
use tokio::sync::watch;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("unsupported database url (expected postgres:// or sqlite:): {0}")]
    UnsupportedUrl(String),
    #[error("database error: {0}")]
    Sqlx(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

impl DbError {
    /// True when the database could not be reached (as opposed to a query that failed).
    pub fn is_unavailable(&self) -> bool {
        match self {
            DbError::Sqlx(e) => sqlx_unavailable(e),
            _ => false,
        }
    }
}

/// True when `e` says the database is out of reach: no connection, or the
/// server refusing work while it shuts down or starts (SQLSTATE class 08,
/// connection exception; 57P01–57P03, a server going down or not up yet), or
/// a reply that breaks the protocol (a connection opened while the server
/// goes down reads "unexpected response from SSLRequest: 0x00"; a broken
/// connection mid-transaction reads garbage too).
pub fn sqlx_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed => true,
        sqlx::Error::Database(d) => d
            .code()
            .is_some_and(|c| c.starts_with("08") || c.starts_with("57P")),
        _ => false,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

/// The typed pool of the backend in use.
#[derive(Debug, Clone)]
pub enum TypedPool {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

/// A connected database. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Db {
    pub backend: Backend,
    pub url: String,
    pub typed: TypedPool,
    pub any: AnyPool,
    /// The newest log position this process knows of; appenders publish it,
    /// consumers wake on it (the in-process half of the wake-up signal).
    pub head: watch::Sender<i64>,
    /// Folded-state rows this process's projectors keep in memory for reads
    /// (see [`crate::state::RowCache`]).
    pub rows: crate::state::RowCache,
}

/// PostgreSQL connections a process opens at most by default: two processes
/// fit a stock `max_connections = 100` with room for psql and pgbench.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 40;
/// The fewest a process can work with: two per pool, the consumers' lock
/// session and the LISTEN connection.
pub const MIN_MAX_CONNECTIONS: u32 = 6;
/// SQLite has one writer at a time, so a few connections suffice.
const SQLITE_POOL_MAX: u32 = 8;
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

impl Db {
    /// Connects to `url` (`postgres://…` or `sqlite:…`; a SQLite file is
    /// created when missing), with [`DEFAULT_MAX_CONNECTIONS`].
    pub async fn connect(url: &str) -> Result<Db, DbError> {
        Db::connect_limited(url, DEFAULT_MAX_CONNECTIONS).await
    }

    /// [`Db::connect`] opening at most `max_connections` PostgreSQL
    /// connections in all (at least [`MIN_MAX_CONNECTIONS`]): the typed pool
    /// (commands, the group committer), the `Any` pool (read models, the
    /// consumers) and two dedicated ones (the consumers' lock session and
    /// LISTEN).
    pub async fn connect_limited(url: &str, max_connections: u32) -> Result<Db, DbError> {
        sqlx::any::install_default_drivers();
        let (head, _) = watch::channel(0);
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let pools = max_connections.max(MIN_MAX_CONNECTIONS) - 2;
            let any_max = (pools / 3).max(2);
            let opts = PgConnectOptions::from_str(url)?;
            // No ping before each acquire: sqlx pings every connection on
            // release already, and a connection that broke while idle fails
            // its first query as unavailable (503), like any other outage.
            // The ping cost a round trip per use of the pool.
            let pg = PgPoolOptions::new()
                .max_connections(pools - any_max)
                .acquire_timeout(ACQUIRE_TIMEOUT)
                .test_before_acquire(false)
                .connect_with(opts)
                .await?;
            let any = AnyPoolOptions::new()
                .max_connections(any_max)
                .acquire_timeout(ACQUIRE_TIMEOUT)
                .test_before_acquire(false)
                .connect(url)
                .await?;
            Ok(Db {
                backend: Backend::Postgres,
                url: url.to_string(),
                typed: TypedPool::Postgres(pg),
                any,
                head,
                rows: Default::default(),
            })
        } else if url.starts_with("sqlite:") {
            let opts = SqliteConnectOptions::from_str(url)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .busy_timeout(Duration::from_secs(10));
            let sqlite = SqlitePoolOptions::new()
                .max_connections(SQLITE_POOL_MAX)
                .acquire_timeout(ACQUIRE_TIMEOUT)
                .connect_with(opts)
                .await?;
            // The file exists now; the Any pool opens the same file.
            let any = AnyPoolOptions::new()
                .max_connections(SQLITE_POOL_MAX)
                .acquire_timeout(ACQUIRE_TIMEOUT)
                .after_connect(|conn, _| {
                    Box::pin(async move {
                        sqlx::query("PRAGMA busy_timeout = 10000")
                            .execute(&mut *conn)
                            .await?;
                        Ok(())
                    })
                })
                .connect(url)
                .await?;
            Ok(Db {
                backend: Backend::Sqlite,
                url: url.to_string(),
                typed: TypedPool::Sqlite(sqlite),
                any,
                head,
                rows: Default::default(),
            })
        } else {
            Err(DbError::UnsupportedUrl(url.to_string()))
        }
    }

    /// Applies the backend's migrations (idempotent).
    pub async fn migrate(&self) -> Result<(), DbError> {
        match &self.typed {
            TypedPool::Postgres(pool) => sqlx::migrate!("../migrations/postgres").run(pool).await?,
            TypedPool::Sqlite(pool) => sqlx::migrate!("../migrations/sqlite").run(pool).await?,
        }
        Ok(())
    }

    /// Picks the SQL text for the backend in use, for the few statements
    /// whose dialects differ.
    pub fn sql<'a>(&self, postgres: &'a str, sqlite: &'a str) -> &'a str {
        match self.backend {
            Backend::Postgres => postgres,
            Backend::Sqlite => sqlite,
        }
    }

    /// Publishes a newly committed log position to this process's consumers.
    pub fn announce(&self, position: i64) {
        self.head.send_if_modified(|current| {
            if position > *current {
                *current = position;
                true
            } else {
                false
            }
        });
    }

    /// Checks that the database answers.
    pub async fn ping(&self) -> Result<(), DbError> {
        sqlx::query("SELECT 1").execute(&self.any).await?;
        Ok(())
    }

    pub async fn close(&self) {
        self.any.close().await;
        match &self.typed {
            TypedPool::Postgres(p) => p.close().await,
            TypedPool::Sqlite(p) => p.close().await,
        }
    }
}

/// The `VALUES` list of a multi-row statement: `rows` tuples of `width`
/// numbered parameters, `($1, $2), ($3, $4)` for 2 × 2.
pub fn value_rows(rows: usize, width: usize) -> String {
    (0..rows)
        .map(|r| {
            let params: Vec<String> = (1..=width).map(|c| format!("${}", r * width + c)).collect();
            format!("({})", params.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    #[test]
    fn value_rows_number_parameters_row_by_row() {
        assert_eq!(super::value_rows(2, 3), "($1, $2, $3), ($4, $5, $6)");
        assert_eq!(super::value_rows(1, 1), "($1)");
        assert_eq!(super::value_rows(0, 4), "");
    }
}
