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
use sqlx::{AnyConnection, AnyPool, PgPool, SqlitePool};
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

/// `sql` as SQLite binds it fastest, when `conn` is SQLite: see
/// [`sqlite_params`]. PostgreSQL gets it as it is.
pub fn for_conn(conn: &AnyConnection, sql: String) -> String {
    if conn.backend_name() == <sqlx::Sqlite as sqlx::Database>::NAME {
        sqlite_params(sql)
    } else {
        sql
    }
}

/// A statement's numbered parameters rewritten as anonymous ones (`?`), for
/// SQLite, when they are `$1` … `$n`, each once and in textual order (what
/// [`value_rows`] makes); otherwise the statement as it is.
///
/// A flaw of the stack, worked around here: for every parameter of every
/// execution, sqlx-sqlite 0.8 asks SQLite the parameter's name
/// (`sqlite3_bind_parameter_name`), which SQLite finds by a linear scan of the
/// statement's named parameters; binding n numbered parameters costs O(n²).
/// A usage batch's appends spent a fifth of the server's CPU there
/// (docs/benchmarks.md, 2026-12-08). An anonymous parameter has no name to
/// look up, and `?`s bind in order, so the statement means the same.
pub fn sqlite_params(sql: String) -> String {
    let bytes = sql.as_bytes();
    let mut out = String::with_capacity(sql.len());
    let mut next = 1u64;
    let mut copied = 0;
    let mut quoted = false;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'\'' {
            quoted = !quoted;
        } else if b == b'$' && !quoted {
            let digits = bytes[i + 1..]
                .iter()
                .take_while(|c| c.is_ascii_digit())
                .count();
            let after_ident =
                i > 0 && (bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
            if digits > 0 && !after_ident {
                let n: u64 = match sql[i + 1..i + 1 + digits].parse() {
                    Ok(n) => n,
                    Err(_) => return sql,
                };
                if n != next {
                    return sql;
                }
                next += 1;
                out.push_str(&sql[copied..i]);
                out.push('?');
                i += 1 + digits;
                copied = i;
                continue;
            }
        }
        i += 1;
    }
    if next == 1 {
        return sql;
    }
    out.push_str(&sql[copied..]);
    out
}

#[cfg(test)]
mod tests {
    use super::sqlite_params;

    #[test]
    fn parameters_in_order_become_anonymous() {
        let sql = format!("INSERT INTO t (a, b) VALUES {}", super::value_rows(2, 2));
        assert_eq!(
            sqlite_params(sql),
            "INSERT INTO t (a, b) VALUES (?, ?), (?, ?)"
        );
        assert_eq!(
            sqlite_params("UPDATE t SET a = $1 WHERE id = $2 AND s = 'x$3'".into()),
            "UPDATE t SET a = ? WHERE id = ? AND s = 'x$3'"
        );
    }

    #[test]
    fn parameters_out_of_order_or_repeated_are_left_alone() {
        for sql in [
            "SELECT $2, $1",
            "SELECT $1 WHERE a = $1",
            "SELECT $1, $3",
            "SELECT 1",
            "SELECT '$1'",
        ] {
            assert_eq!(sqlite_params(sql.into()), sql);
        }
    }

    /// The flaw worked around: with numbered parameters, binding costs
    /// O(n²) in sqlx-sqlite; with anonymous ones, O(n). Both statements
    /// insert the same rows; the numbered one takes many times longer.
    #[tokio::test]
    async fn sqlite_binds_anonymous_parameters_without_the_quadratic_lookup() {
        use sqlx::{Connection, Executor};
        let mut conn = sqlx::SqliteConnection::connect("sqlite::memory:")
            .await
            .unwrap();
        conn.execute("CREATE TABLE t (a INTEGER, b INTEGER, c INTEGER)")
            .await
            .unwrap();
        let numbered = format!("INSERT INTO t VALUES {}", super::value_rows(5_000, 3));
        let anonymous = sqlite_params(numbered.clone());
        assert!(!anonymous.contains('$'));
        let mut took = Vec::new();
        for sql in [&numbered, &anonymous] {
            let mut q = sqlx::query(sql);
            for i in 0..15_000i64 {
                q = q.bind(i);
            }
            let started = std::time::Instant::now();
            q.execute(&mut conn).await.unwrap();
            took.push(started.elapsed());
        }
        let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM t WHERE a + 1 = b AND b + 1 = c")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(rows, 10_000, "both statements bound every value in place");
        eprintln!("numbered {:?}, anonymous {:?}", took[0], took[1]);
        assert!(
            took[0] > took[1] * 5,
            "numbered {:?}, anonymous {:?}",
            took[0],
            took[1]
        );
    }

    #[test]
    fn value_rows_number_parameters_row_by_row() {
        assert_eq!(super::value_rows(2, 3), "($1, $2, $3), ($4, $5, $6)");
        assert_eq!(super::value_rows(1, 1), "($1)");
        assert_eq!(super::value_rows(0, 4), "");
    }
}
