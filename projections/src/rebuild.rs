//! Blue/green rebuilds: a projection is built again from position 0 into a
//! shadow copy of its tables (`rm_…__next`) under a checkpoint of its own
//! (`<name>__next`), while the live tables keep serving queries and keep
//! being updated. Once the shadow has caught up with the head, one
//! transaction replaces the live rows with the shadow's and moves the live
//! checkpoint to the shadow's position; the live runner then continues from
//! there. Readers see the old rows or the new ones, never a mix. Projectors
//! with a bulk fold are rebuilt by it (`crate::bulk`, ADR 0014).
//!
//! A rebuild that is killed keeps its shadow tables and checkpoint (each
//! batch commits with its checkpoint, as for any consumer), so running it
//! again continues where it stopped. Two rebuilds of one projection at once
//! are harmless: the guarded checkpoint lets only one commit each batch, and
//! only one of them finds the shadow checkpoint to swap.

use std::time::Instant;

use sqlx::{AnyConnection, Row};

use crate::bulk::{self, BulkFold};
use crate::db::{Backend, Db};
use crate::log::StoredEvent;
use crate::runtime::{checkpoint, ProjectionError, Projector, Runtime};
use crate::tables::{shadow_name, Tables, SHADOW_SUFFIX, TABLE_PREFIX};
use crate::time;

/// The checkpoint name of a projection's rebuild.
pub fn shadow_consumer(name: &str) -> String {
    format!("{name}{SHADOW_SUFFIX}")
}

/// How a rebuild began.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// New shadow tables, from position 0.
    Fresh,
    /// An interrupted rebuild's shadow, continued from this position.
    Resumed(i64),
}

/// Where a running rebuild stands.
#[derive(Debug, Clone)]
pub struct Progress {
    pub name: &'static str,
    pub start: Start,
    /// The shadow checkpoint.
    pub position: i64,
    /// The log head when the rebuild began (the target of the progress bar).
    pub target: i64,
    /// Positions covered by this run (not counting a resumed part).
    pub events: i64,
    pub started: Instant,
}

impl Progress {
    pub fn events_per_sec(&self) -> f64 {
        self.events as f64 / self.started.elapsed().as_secs_f64().max(1e-9)
    }

    /// Seconds left at the current rate, when it can be told.
    pub fn eta_secs(&self) -> Option<f64> {
        let rate = self.events_per_sec();
        (rate > 0.0).then(|| (self.target - self.position).max(0) as f64 / rate)
    }
}

/// What a finished rebuild did.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub name: &'static str,
    pub start: Start,
    /// The position the swapped tables were built to (`None`: another rebuild
    /// of the same projection swapped first).
    pub swapped_at: Option<i64>,
    pub events: i64,
    pub secs: f64,
}

async fn table_exists(db: &Db, table: &str) -> Result<bool, ProjectionError> {
    let n: i64 = sqlx::query_scalar(db.sql(
        "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = current_schema() AND table_name = $1",
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = $1",
    ))
    .bind(table)
    .fetch_one(&db.any)
    .await?;
    Ok(n > 0)
}

/// Replaces the identifier `from` with `to` wherever it stands as a whole word.
fn replace_ident(sql: &str, from: &str, to: &str) -> String {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut out = String::with_capacity(sql.len() + 16);
    let mut rest = sql;
    while let Some(i) = rest.find(from) {
        let before_ok = rest[..i].chars().next_back().is_none_or(|c| !is_ident(c));
        let after = &rest[i + from.len()..];
        let after_ok = after.chars().next().is_none_or(|c| !is_ident(c));
        out.push_str(&rest[..i]);
        out.push_str(if before_ok && after_ok { to } else { from });
        rest = after;
    }
    out.push_str(rest);
    out
}

/// `table`'s indexes as `pg_get_indexdef` writes them (name, definition),
/// unique ones or the others.
async fn index_defs(
    conn: &mut AnyConnection,
    table: &str,
    unique: bool,
) -> Result<Vec<(String, String)>, ProjectionError> {
    Ok(sqlx::query_as::<_, (String, String)>(
        "SELECT c.relname::text, pg_get_indexdef(i.indexrelid) FROM pg_index i \
         JOIN pg_class c ON c.oid = i.indexrelid \
         WHERE i.indrelid = to_regclass($1) AND i.indisunique = $2 \
           AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid) \
         ORDER BY 1",
    )
    .bind(table)
    .bind(unique)
    .fetch_all(conn)
    .await?)
}

/// A live index's definition made for the shadow table: the shadow's name for
/// the table and for the index, created only when missing.
fn shadow_index_def(def: &str, table: &str, shadow: &str, index: &str) -> String {
    let sql = replace_ident(
        &replace_ident(def, table, shadow),
        index,
        &shadow_name(index),
    );
    match sql.strip_prefix("CREATE INDEX ") {
        Some(rest) => format!("CREATE INDEX IF NOT EXISTS {rest}"),
        None => match sql.strip_prefix("CREATE UNIQUE INDEX ") {
            Some(rest) => format!("CREATE UNIQUE INDEX IF NOT EXISTS {rest}"),
            None => sql,
        },
    }
}

/// The statements that create `shadow` shaped like `table`. On PostgreSQL
/// with its primary key, unique constraints and unique indexes (upserts need
/// them) but not its other indexes: those are built once the rows are in
/// ([`deferred_indexes`]), one sorted build instead of an insert into each
/// index per row (the usage records' COPY spent 37 µs a row with them).
async fn shadow_ddl(db: &Db, table: &str, shadow: &str) -> Result<Vec<String>, ProjectionError> {
    match db.backend {
        Backend::Postgres => {
            let mut out = vec![format!(
                "CREATE TABLE {shadow} (LIKE {table} INCLUDING ALL EXCLUDING INDEXES)"
            )];
            let constraints: Vec<String> = sqlx::query_scalar(
                "SELECT pg_get_constraintdef(oid) FROM pg_constraint \
                 WHERE conrelid = to_regclass($1) AND contype IN ('p', 'u') ORDER BY conname",
            )
            .bind(table)
            .fetch_all(&db.any)
            .await?;
            out.extend(
                constraints
                    .into_iter()
                    .map(|c| format!("ALTER TABLE {shadow} ADD {c}")),
            );
            let mut conn = db.any.acquire().await?;
            for (name, def) in index_defs(&mut conn, table, true).await? {
                out.push(shadow_index_def(&def, table, shadow, &name));
            }
            Ok(out)
        }
        Backend::Sqlite => {
            let rows = sqlx::query(
                "SELECT type, name, sql FROM sqlite_master WHERE tbl_name = $1 AND sql IS NOT NULL \
                 ORDER BY CASE type WHEN 'table' THEN 0 ELSE 1 END, name",
            )
            .bind(table)
            .fetch_all(&db.any)
            .await?;
            let mut out = Vec::new();
            for row in rows {
                let kind: String = row.try_get("type")?;
                let name: String = row.try_get("name")?;
                let sql: String = row.try_get("sql")?;
                let mut sql = replace_ident(&sql, table, shadow);
                if kind == "index" {
                    sql = replace_ident(&sql, &name, &shadow_name(&name));
                }
                out.push(sql);
            }
            Ok(out)
        }
    }
}

/// Sets up the shadow tables and checkpoint of `p`, or finds those of an
/// interrupted rebuild and continues it.
pub async fn prepare(db: &Db, p: &dyn Projector) -> Result<Start, ProjectionError> {
    if !p.rebuildable() {
        return Err(ProjectionError::NotRebuildable(p.name().to_string()));
    }
    let consumer = shadow_consumer(p.name());
    let position: Option<i64> =
        sqlx::query_scalar("SELECT position FROM consumer_checkpoints WHERE name = $1")
            .bind(&consumer)
            .fetch_optional(&db.any)
            .await?;
    if let Some(position) = position {
        let mut complete = true;
        for t in p.tables() {
            complete &= table_exists(db, &shadow_name(t)).await?;
        }
        if complete {
            return Ok(Start::Resumed(position));
        }
    }
    let mut ddl = Vec::new();
    for t in p.tables() {
        debug_assert!(t.starts_with(TABLE_PREFIX), "read model tables are rm_…");
        ddl.extend(shadow_ddl(db, t, &shadow_name(t)).await?);
    }
    let mut tx = db.any.begin().await?;
    for t in p.tables() {
        sqlx::query(&format!("DROP TABLE IF EXISTS {}", shadow_name(t)))
            .execute(&mut *tx)
            .await?;
    }
    for statement in &ddl {
        sqlx::query(statement).execute(&mut *tx).await?;
    }
    sqlx::query("DELETE FROM consumer_checkpoints WHERE name = $1")
        .bind(&consumer)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO consumer_checkpoints (name, position, status, updated_at) VALUES ($1, 0, 'rebuilding', $2)",
    )
    .bind(&consumer)
    .bind(time::to_text(chrono::Utc::now()))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Start::Fresh)
}

/// In one transaction: the live tables take the shadow's rows (PostgreSQL:
/// the shadow takes the live table's name and its indexes' names, see
/// [`renames`]; SQLite: copied), the live checkpoint takes the shadow's
/// position, and the shadow is gone.
/// Returns that position, or `None` when there was no shadow to swap (a
/// concurrent rebuild of the same projection swapped first).
pub async fn swap(db: &Db, p: &dyn Projector) -> Result<Option<i64>, ProjectionError> {
    checkpoint(db, p.name()).await?;
    let mut tx = db.any.begin().await?;
    // Taking the shadow checkpoint row first serializes concurrent swaps.
    let position: Option<i64> =
        sqlx::query_scalar("DELETE FROM consumer_checkpoints WHERE name = $1 RETURNING position")
            .bind(shadow_consumer(p.name()))
            .fetch_optional(&mut *tx)
            .await?;
    let Some(position) = position else {
        tx.rollback().await?;
        return Ok(None);
    };
    // The live runner's guarded checkpoint update fails after this, so a
    // batch it had in flight is dropped and read again from `position`.
    sqlx::query("UPDATE consumer_checkpoints SET position = $1, updated_at = $2 WHERE name = $3")
        .bind(position)
        .bind(time::to_text(chrono::Utc::now()))
        .bind(p.name())
        .execute(&mut *tx)
        .await?;
    for t in p.tables() {
        let shadow = shadow_name(t);
        let statements = match renames(&mut tx, db, t, &shadow).await? {
            // PostgreSQL: the shadow takes the live table's name, and each
            // of its indexes (and so constraints) the name of the live
            // index it copies, so migrations find the names they made.
            Some(indexes) => {
                let mut s = vec![
                    format!("DROP TABLE {t}"),
                    format!("ALTER TABLE {shadow} RENAME TO {t}"),
                ];
                s.extend(
                    indexes
                        .into_iter()
                        .map(|(from, to)| format!("ALTER INDEX {from} RENAME TO {to}")),
                );
                s
            }
            None => vec![
                format!("DELETE FROM {t}"),
                format!("INSERT INTO {t} SELECT * FROM {shadow}"),
                format!("DROP TABLE {shadow}"),
            ],
        };
        for statement in statements {
            sqlx::query(&statement).execute(&mut *tx).await?;
        }
    }
    tx.commit().await?;
    Ok(Some(position))
}

/// PostgreSQL: builds the indexes [`shadow_ddl`] left out, on `p`'s shadow
/// tables once their rows are in. Each is its own statement and only made
/// when missing, so a rebuild killed here builds the rest when resumed; a
/// shadow that has an index of that shape (made by an older version) gets
/// no second one.
async fn deferred_indexes(db: &Db, p: &dyn Projector) -> Result<(), ProjectionError> {
    if db.backend != Backend::Postgres {
        return Ok(());
    }
    let mut conn = db.any.acquire().await?;
    for table in p.tables() {
        let shadow = shadow_name(table);
        let have: Vec<_> = index_defs(&mut conn, &shadow, false)
            .await?
            .iter()
            .filter_map(|(_, def)| index_shape(def))
            .collect();
        for (name, def) in index_defs(&mut conn, table, false).await? {
            if index_shape(&def).is_some_and(|s| have.contains(&s)) {
                continue;
            }
            sqlx::query(&shadow_index_def(&def, table, &shadow, &name))
                .execute(&mut *conn)
                .await?;
        }
    }
    Ok(())
}

/// An index's shape: unique or not, and what follows USING.
fn index_shape(def: &str) -> Option<(bool, String)> {
    def.split_once(" USING ")
        .map(|(head, tail)| (head.starts_with("CREATE UNIQUE"), tail.to_string()))
}

/// For a swap by rename (PostgreSQL): each index of `shadow` with the name
/// of the index of `table` it copies. `None` (swap by copy) on SQLite, and
/// when a rename would lose something: the indexes do not pair up one to
/// one, or a foreign key or a view involves either table.
async fn renames(
    conn: &mut AnyConnection,
    db: &Db,
    table: &str,
    shadow: &str,
) -> Result<Option<Vec<(String, String)>>, ProjectionError> {
    if db.backend != Backend::Postgres {
        return Ok(None);
    }
    let dependents: i64 = sqlx::query_scalar(
        "SELECT (SELECT COUNT(*) FROM pg_constraint WHERE contype = 'f' \
                 AND (conrelid IN (to_regclass($1), to_regclass($2)) OR confrelid IN (to_regclass($1), to_regclass($2)))) \
              + (SELECT COUNT(*) FROM pg_depend WHERE classid = 'pg_rewrite'::regclass \
                 AND refobjid IN (to_regclass($1), to_regclass($2)))",
    )
    .bind(table)
    .bind(shadow)
    .fetch_one(&mut *conn)
    .await?;
    if dependents != 0 {
        return Ok(None);
    }
    let indexes = |t: &str| {
        sqlx::query_as::<_, (String, String)>(
            "SELECT c.relname::text, pg_get_indexdef(i.indexrelid) FROM pg_index i \
             JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = to_regclass($1) ORDER BY 1",
        )
        .bind(t.to_string())
    };
    let live = indexes(table).fetch_all(&mut *conn).await?;
    let copies = indexes(shadow).fetch_all(&mut *conn).await?;
    let shape = index_shape;
    let mut out = Vec::with_capacity(copies.len());
    for (name, def) in &copies {
        let Some(want) = shape(def) else {
            return Ok(None);
        };
        let matches: Vec<&String> = live
            .iter()
            .filter(|(_, d)| shape(d).as_ref() == Some(&want))
            .map(|(n, _)| n)
            .collect();
        match matches.as_slice() {
            [one] if !out.iter().any(|(_, to)| to == *one) => {
                out.push((name.clone(), (*one).clone()))
            }
            _ => return Ok(None),
        }
    }
    if out.len() != live.len() {
        return Ok(None);
    }
    Ok(Some(out))
}

/// Events after which a rebuild first refreshes its shadow tables' planner
/// statistics; then again each time the count doubles.
const ANALYZE_FIRST: i64 = 2_000;

/// Refreshes PostgreSQL's statistics of the projections' tables. A shadow
/// table starts empty, and a plan made for an empty table (a sequential
/// scan, cached with the prepared statement) stays until the statistics
/// change; with autovacuum off or behind, that turns every batch's lookup
/// into a full scan.
async fn analyze(
    db: &Db,
    projectors: impl Iterator<Item = &dyn Projector>,
    tables: Tables,
) -> Result<(), ProjectionError> {
    if db.backend != Backend::Postgres {
        return Ok(());
    }
    let names: Vec<String> = projectors
        .flat_map(|p| p.tables().iter().map(|t| tables.name(t)))
        .collect();
    sqlx::query(&format!("ANALYZE {}", names.join(", ")))
        .execute(&db.any)
        .await?;
    Ok(())
}

/// Runs a blue/green rebuild of `p` to the end: prepare (or resume), build
/// the shadow up to the head, swap. `on_progress` is called after each batch.
pub async fn run(
    runtime: &Runtime,
    p: &dyn Projector,
    on_progress: &mut (dyn FnMut(&Progress) + Send),
) -> Result<Outcome, ProjectionError> {
    let mut outcomes = run_all(runtime, &[p], on_progress).await?;
    Ok(outcomes.remove(0))
}

/// How often a rebuild stopped in front of an unproven hole reads again.
const HOLE_POLL: std::time::Duration = std::time::Duration::from_millis(10);

/// A projection being rebuilt in bulk (see [`crate::bulk`]): its fold in
/// memory, how far it has folded and where its checkpoint stands.
struct Bulk {
    fold: Box<dyn BulkFold>,
    reached: i64,
    /// Where its checkpoint stands once the write in flight (if any) has
    /// committed.
    committed: i64,
    /// When it last wrote (`None`: not yet in this run).
    flushed: Option<Instant>,
    /// The flush being written while folding goes on: true when it
    /// committed, false when its checkpoint guard failed.
    writing: Option<tokio::task::JoinHandle<Result<bool, ProjectionError>>>,
}

impl Bulk {
    fn new(fold: Box<dyn BulkFold>, at: i64) -> Self {
        Self {
            fold,
            reached: at,
            committed: at,
            flushed: None,
            writing: None,
        }
    }

    /// Whether to write what it holds now: past `held_rows`, after its
    /// first batch and then at least every `flush_every`, so that a killed
    /// rebuild loses little work.
    fn due(&self, limits: &bulk::Limits) -> bool {
        self.fold.held() >= limits.held_rows
            || self
                .flushed
                .is_none_or(|at| at.elapsed() >= limits.flush_every)
    }

    /// Waits for the write in flight; false when its checkpoint guard
    /// failed (another rebuild of this projection moved the checkpoint).
    async fn written(&mut self) -> Result<bool, ProjectionError> {
        match self.writing.take() {
            Some(handle) => handle
                .await
                .map_err(|e| ProjectionError::Effect(format!("bulk write: {e}")))?,
            None => Ok(true),
        }
    }
}

/// One projection of a rebuild.
struct Part<'a> {
    p: &'a dyn Projector,
    consumer: String,
    start: Start,
    /// `None`: applied batch by batch under its shadow checkpoint.
    bulk: Option<tokio::sync::Mutex<Bulk>>,
}

impl Part<'_> {
    /// How far this projection has got.
    async fn reached(&self, runtime: &Runtime) -> Result<i64, ProjectionError> {
        match &self.bulk {
            Some(b) => Ok(b.lock().await.reached),
            None => Ok(runtime.cursor_position(&self.consumer).await?),
        }
    }

    /// Folds the events of `batch` after what it has reached; when due
    /// (or with `flush`), writes what it holds.
    async fn apply(
        &self,
        runtime: &Runtime,
        batch: &[StoredEvent],
        limits: &bulk::Limits,
        flush: bool,
    ) -> Result<(), ProjectionError> {
        let Some(b) = &self.bulk else {
            runtime
                .consume(self.p, &self.consumer, Tables::Shadow, batch)
                .await?;
            // Progress over events it does not handle is written too, so
            // a rebuild killed now resumes from here, not from the last
            // batch this projection had rows in.
            runtime.settle_cursor(&self.consumer).await?;
            return Ok(());
        };
        let mut b = b.lock().await;
        let start = batch.partition_point(|e| e.position <= b.reached);
        if let Some(last) = batch.last().filter(|e| e.position > b.reached) {
            for e in &batch[start..] {
                if self.p.handles(e) {
                    b.fold.fold(e)?;
                }
            }
            b.reached = last.position;
        }
        // A flush is written while the next batches are folded; the next
        // flush waits for it (its read-backs need those rows), and so does
        // the end of the rebuild.
        if b.writing.as_ref().is_some_and(|w| w.is_finished()) || flush {
            self.settle_write(runtime, &mut b).await?;
        }
        if (flush || b.due(limits)) && b.reached > b.committed {
            self.settle_write(runtime, &mut b).await?;
            if b.reached <= b.committed {
                return Ok(());
            }
            let db = runtime.db();
            let rows = b.fold.drain(db, Tables::Shadow).await?;
            let (db, consumer) = (db.clone(), self.consumer.clone());
            let (from, to) = (b.committed, b.reached);
            b.writing = Some(tokio::spawn(async move {
                bulk::write(&db, &consumer, from, to, Tables::Shadow, &rows).await
            }));
            b.committed = to;
            // The first flush is waited for, so that the first progress a
            // rebuild reports is committed: killed then, it resumes from
            // there (`replay-tools/tests/cli.rs`).
            let first = b.flushed.is_none();
            b.flushed = Some(Instant::now());
            if flush || first {
                self.settle_write(runtime, &mut b).await?;
            }
        }
        Ok(())
    }

    /// Waits for `b`'s write in flight; when its checkpoint guard failed
    /// (another rebuild of this projection moved the checkpoint), starts
    /// again from where the checkpoint is now.
    async fn settle_write(&self, runtime: &Runtime, b: &mut Bulk) -> Result<(), ProjectionError> {
        if !b.written().await? {
            let at = checkpoint(runtime.db(), &self.consumer).await?;
            *b = Bulk::new(self.p.bulk().expect("a bulk projector"), at);
        }
        Ok(())
    }
}

/// Rebuilds several projections blue/green in one pass over the log: each
/// batch is read once and applied to every shadow that has not seen it yet
/// (each in its own guarded transaction; projectors with a bulk fold fold it
/// in memory and write in bulk, see [`crate::bulk`]), then each is swapped in.
pub async fn run_all(
    runtime: &Runtime,
    projectors: &[&dyn Projector],
    on_progress: &mut (dyn FnMut(&Progress) + Send),
) -> Result<Vec<Outcome>, ProjectionError> {
    let limits = bulk::Limits::for_backend(runtime.db().backend);
    run_all_with(runtime, projectors, limits, on_progress).await
}

/// [`run_all`] with bulk folds written at `limits`.
pub async fn run_all_with(
    runtime: &Runtime,
    projectors: &[&dyn Projector],
    limits: bulk::Limits,
    on_progress: &mut (dyn FnMut(&Progress) + Send),
) -> Result<Vec<Outcome>, ProjectionError> {
    let limits = &limits;
    let db = runtime.db();
    let mut parts = Vec::with_capacity(projectors.len());
    for p in projectors {
        let start = prepare(db, *p).await?;
        let consumer = shadow_consumer(p.name());
        runtime.forget_cursor(&consumer);
        // On SQLite the bulk writes measured four times slower than batches
        // through the projector (one writer lock, 250k events: 214.6 s
        // against 48.4 s; docs/benchmarks.md), so SQLite rebuilds batch by batch.
        let bulk = match p.bulk().filter(|_| db.backend == Backend::Postgres) {
            Some(fold) => {
                let at = checkpoint(db, &consumer).await?;
                Some(tokio::sync::Mutex::new(Bulk::new(fold, at)))
            }
            None => None,
        };
        parts.push(Part {
            p: *p,
            consumer,
            start,
            bulk,
        });
    }
    let lowest = || async {
        let mut low = i64::MAX;
        for part in &parts {
            low = low.min(part.reached(runtime).await?);
        }
        Ok::<i64, ProjectionError>(if low == i64::MAX { 0 } else { low })
    };
    let from = lowest().await?;
    let mut progress = Progress {
        name: match projectors {
            [one] => one.name(),
            _ => "all",
        },
        start: parts
            .iter()
            .map(|part| part.start)
            .find(|s| *s != Start::Fresh)
            .unwrap_or(Start::Fresh),
        position: from,
        target: runtime.log().head().await?,
        events: 0,
        started: Instant::now(),
    };
    if let Start::Resumed(_) = progress.start {
        progress.start = Start::Resumed(from);
    }
    on_progress(&progress);
    let mut next_analyze = ANALYZE_FIRST;
    // The rebuild reaches at least the head it started with. A read that
    // comes back empty below it stopped in front of a hole not yet proven
    // (a transaction still in flight, or one rolled back a moment ago): the
    // rebuild waits for the proof instead of swapping in tables that stop
    // short of it.
    let head_at_start = progress.target;
    let mut read_from = from;
    let mut batch = runtime.log().read_after(from, runtime.batch_size()).await?;
    loop {
        let Some(last) = batch.last().map(|e| e.position) else {
            if read_from >= head_at_start {
                break;
            }
            tokio::time::sleep(HOLE_POLL).await;
            batch = runtime
                .log()
                .read_after(read_from, runtime.batch_size())
                .await?;
            continue;
        };
        // Every projection applies the batch at once, each in its own
        // transaction on its own connection, while the next batch is read.
        let apply = futures::future::try_join_all(
            parts
                .iter()
                .map(|part| part.apply(runtime, &batch, limits, false)),
        );
        // Read (and decoded) on another worker thread than the folds.
        let (log, size) = (runtime.log().clone(), runtime.batch_size());
        let ahead = tokio::spawn(async move { log.read_after(last, size).await });
        let (applied, ahead) = tokio::join!(apply, ahead);
        applied?;
        let ahead =
            ahead.map_err(|e| ProjectionError::Effect(format!("reading the log: {e}")))??;
        progress.position = last;
        progress.events = last - from;
        if progress.events >= next_analyze {
            analyze(db, parts.iter().map(|part| part.p), Tables::Shadow).await?;
            next_analyze = progress.events * 2;
        }
        progress.target = progress.target.max(last);
        on_progress(&progress);
        // A projection whose batch lost its checkpoint guard (another
        // rebuild moved it) reads again from where it really is.
        let reached = lowest().await?;
        read_from = reached;
        batch = if reached == last {
            ahead
        } else {
            runtime
                .log()
                .read_after(reached, runtime.batch_size())
                .await?
        };
    }
    // What the bulk folds still hold.
    futures::future::try_join_all(
        parts
            .iter()
            .map(|part| part.apply(runtime, &[], limits, true)),
    )
    .await?;
    let mut outcomes = Vec::with_capacity(parts.len());
    for part in &parts {
        runtime.settle_cursor(&part.consumer).await?;
        deferred_indexes(db, part.p).await?;
        let swapped_at = swap(db, part.p).await?;
        runtime.forget_cursor(&part.consumer);
        runtime.forget_cursor(part.p.name());
        outcomes.push(Outcome {
            name: part.p.name(),
            start: part.start,
            swapped_at,
            events: progress.events,
            secs: progress.started.elapsed().as_secs_f64(),
        });
    }
    // The live tables now hold the copied rows.
    analyze(db, parts.iter().map(|part| part.p), Tables::Live).await?;
    Ok(outcomes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deferred_index_is_made_for_the_shadow_only_when_missing() {
        assert_eq!(
            shadow_index_def(
                "CREATE INDEX rm_usage_records_sub_idx ON public.rm_usage_records USING btree (tenant, subscription_id, ts, id)",
                "rm_usage_records",
                "rm_usage_records__next",
                "rm_usage_records_sub_idx",
            ),
            "CREATE INDEX IF NOT EXISTS rm_usage_records_sub_idx__next ON public.rm_usage_records__next USING btree (tenant, subscription_id, ts, id)"
        );
        assert_eq!(
            index_shape("CREATE UNIQUE INDEX a ON public.t USING btree (x)"),
            Some((true, "btree (x)".to_string()))
        );
    }

    #[test]
    fn identifiers_are_replaced_whole() {
        assert_eq!(
            replace_ident(
                "CREATE INDEX rm_usage_idx ON rm_usage (a); -- rm_usage_totals",
                "rm_usage",
                "rm_usage__next"
            ),
            "CREATE INDEX rm_usage_idx ON rm_usage__next (a); -- rm_usage_totals"
        );
    }
}
