//! Group commit on PostgreSQL: the appends of concurrent commands share one
//! transaction, one multi-row `INSERT` and one WAL flush.
//!
//! Each command's append still stands or falls alone. The group inserts with
//! `ON CONFLICT DO NOTHING` and reads back which rows went in. A command none
//! of whose rows went in (another writer took its first sequence: the usual
//! loss, a stale cached state) is answered `Conflict` and the others commit.
//! When some command's rows went in only in part, the transaction rolls
//! back, that command is answered `Conflict`, and the group is written again
//! without it. Nothing of a conflicting command is ever stored, and nothing
//! of the others is stored twice: the retry is the same rows in a fresh
//! transaction.
//!
//! One task gathers the appends waiting in its queue into a group whenever one
//! of a few writers is free, so groups grow with the load and a lone command
//! waits for nobody.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use sqlx::pool::PoolConnection;
use sqlx::{PgPool, Postgres};
use tally_projections::db::Db;
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::store::{snapshot_upsert_pg, StoreError, StreamAppend};

/// Groups written at once; each holds one connection while it commits.
const WRITERS: usize = 4;
/// Rows a group gathers at most (a larger append forms a group of its own).
const MAX_GROUP_ROWS: usize = 512;

/// One command's append, waiting for its group.
struct Pending {
    tenant: String,
    recorded_at: DateTime<Utc>,
    streams: Vec<StreamAppend>,
    /// New streams only: one that already exists is skipped (its positions
    /// left empty) instead of failing the append.
    skip_existing: bool,
    /// The positions of each stream's events, in input order.
    reply: oneshot::Sender<Result<Vec<Vec<i64>>, StoreError>>,
}

impl Pending {
    fn rows(&self) -> usize {
        self.streams.iter().map(|s| s.events.len()).sum()
    }
}

/// The queue of a process's group-committing task. Cheap to clone.
#[derive(Clone)]
pub struct GroupCommit {
    queue: mpsc::UnboundedSender<Pending>,
}

impl GroupCommit {
    /// Starts the gathering task on the current tokio runtime.
    pub fn start(pool: PgPool, db: Db) -> Self {
        let (queue, rx) = mpsc::unbounded_channel();
        tokio::spawn(gather(pool, db, rx));
        GroupCommit { queue }
    }

    /// Appends `streams` in the next group: all of their events or none.
    /// With `skip_existing` (streams that must be new), a stream that already
    /// exists is skipped, its positions left empty, and the others go in.
    /// Gives the streams back when the gathering task is gone (its runtime
    /// ended) and never saw them: the caller then appends on its own.
    pub async fn append(
        &self,
        tenant: &str,
        recorded_at: DateTime<Utc>,
        streams: Vec<StreamAppend>,
        skip_existing: bool,
    ) -> Result<Result<Vec<Vec<i64>>, StoreError>, Vec<StreamAppend>> {
        let (reply, answer) = oneshot::channel();
        let pending = Pending {
            tenant: tenant.to_string(),
            recorded_at,
            streams,
            skip_existing,
            reply,
        };
        if let Err(mpsc::error::SendError(p)) = self.queue.send(pending) {
            return Err(p.streams);
        }
        // A group dropped before it answered may or may not have committed:
        // unavailable, never "not stored".
        Ok(answer
            .await
            .unwrap_or_else(|_| Err(StoreError::Shared(Arc::new(sqlx::Error::PoolClosed)))))
    }
}

/// The writers' connections between groups. They stay out of the pool:
/// sqlx pings every connection given back to its pool (a round trip and two
/// wake-ups per group). At most [`WRITERS`]; one that failed is not kept.
type Idle = Arc<std::sync::Mutex<Vec<PoolConnection<Postgres>>>>;

/// Takes what waits in the queue as one group whenever a writer is free.
async fn gather(pool: PgPool, db: Db, mut rx: mpsc::UnboundedReceiver<Pending>) {
    let writers = Arc::new(Semaphore::new(WRITERS));
    let idle: Idle = Arc::default();
    while let Some(first) = rx.recv().await {
        let Ok(permit) = writers.clone().acquire_owned().await else {
            return;
        };
        let mut rows = first.rows();
        let mut group = vec![first];
        while rows < MAX_GROUP_ROWS {
            match rx.try_recv() {
                Ok(p) => {
                    rows += p.rows();
                    group.push(p);
                }
                Err(_) => break,
            }
        }
        let pool = pool.clone();
        let db = db.clone();
        let idle = idle.clone();
        tokio::spawn(async move {
            write(&pool, &db, group, &idle).await;
            drop(permit);
        });
    }
}

/// Writes a group, dropping (answering `Conflict`) the appends that lost a
/// race until the rest commits or the database fails.
async fn write(pool: &PgPool, db: &Db, group: Vec<Pending>, idle: &Idle) {
    let kept = idle.lock().expect("idle writers").pop();
    let mut conn = match kept {
        Some(conn) => conn,
        None => match pool.acquire().await {
            Ok(conn) => conn,
            Err(e) => return fail(pool, group, e).await,
        },
    };
    if write_on(&mut conn, pool, db, group).await {
        let mut idle = idle.lock().expect("idle writers");
        if idle.len() < WRITERS {
            idle.push(conn);
        }
    }
}

/// [`write`] on one connection; false when the database failed (the
/// connection is then not reused).
async fn write_on(
    conn: &mut PoolConnection<Postgres>,
    pool: &PgPool,
    db: &Db,
    mut group: Vec<Pending>,
) -> bool {
    while !group.is_empty() {
        match try_write(conn, &group).await {
            Ok(Written::Committed(positions)) => {
                if let Some(max) = positions.iter().flatten().flatten().flatten().max() {
                    db.announce(*max);
                }
                for (p, positions) in group.into_iter().zip(positions) {
                    let _ = p.reply.send(positions.ok_or(StoreError::Conflict));
                }
                return true;
            }
            Ok(Written::Conflicts(lost)) => {
                let mut kept = Vec::with_capacity(group.len());
                for (i, p) in group.into_iter().enumerate() {
                    if lost.contains(&i) {
                        let _ = p.reply.send(Err(StoreError::Conflict));
                    } else {
                        kept.push(p);
                    }
                }
                group = kept;
            }
            Err(e) => {
                fail(pool, group, e).await;
                return false;
            }
        }
    }
    true
}

/// Answers every append of `group` with the database's failure.
async fn fail(pool: &PgPool, group: Vec<Pending>, e: sqlx::Error) {
    // An error of a group whose database has just gone away (a broken
    // connection mid-transaction can surface as a protocol error) is
    // unavailability: 503 and a retry, never 500.
    let e = if tally_projections::db::sqlx_unavailable(&e) || reachable(pool).await {
        e
    } else {
        sqlx::Error::PoolClosed
    };
    let e = Arc::new(e);
    for p in group {
        let _ = p.reply.send(Err(StoreError::Shared(e.clone())));
    }
}

/// Whether the database answers within a moment.
async fn reachable(pool: &PgPool) -> bool {
    let ping = sqlx::query("SELECT 1").execute(pool);
    matches!(
        tokio::time::timeout(std::time::Duration::from_millis(500), ping).await,
        Ok(Ok(_))
    )
}

/// Per append, per stream, the positions of its events; `None` for an
/// append none of whose rows went in (nothing of it is stored).
type Claimed = Vec<Option<Vec<Vec<i64>>>>;

enum Written {
    Committed(Claimed),
    /// The appends (indices in the group) of which some rows went in and
    /// others were taken: the transaction was rolled back.
    Conflicts(Vec<usize>),
}

/// The whole group's rows in one `INSERT … SELECT FROM UNNEST` (one statement
/// text whatever the count), snapshots after them, one commit. A row whose
/// place is taken still takes a position (the insert trigger runs before the
/// conflict is found), which leaves a hole the log readers prove. Filtering
/// such rows first (`WHERE NOT EXISTS`) was tried: it made PostgreSQL plan an
/// anti-join at every execution, five times the planning of the plain insert,
/// and change-seats lost half its throughput (docs/benchmarks.md).
const INSERT: &str = "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, \
     event_version, payload, metadata, event_id, tenant, recorded_at) \
     SELECT t, a, s, et, ev, p::json, m::json, id, tn, r FROM UNNEST($1::text[], $2::text[], \
     $3::int8[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[], \
     $10::timestamptz[]) AS u(t, a, s, et, ev, p, m, id, tn, r) \
     ON CONFLICT DO NOTHING RETURNING aggregate_type, aggregate_id, sequence, position";

async fn try_write(
    conn: &mut PoolConnection<Postgres>,
    group: &[Pending],
) -> Result<Written, sqlx::Error> {
    let cols = Columns::of(group);
    // A group of one-row appends without snapshots cannot be written in part:
    // each row is in or not, and a row that is not is its append's conflict.
    // Its insert commits by itself, one round trip instead of three (BEGIN,
    // INSERT, COMMIT): change-seats and most commands are such appends.
    let one_row_each = group
        .iter()
        .all(|p| p.rows() == 1 && p.streams.iter().all(|s| s.snapshot.is_none()));
    if one_row_each {
        let inserted = cols.insert().fetch_all(&mut **conn).await?;
        let (out, lost) = claim(group, inserted);
        debug_assert!(lost.is_empty(), "a one-row append is in or not");
        return Ok(Written::Committed(out));
    }
    let mut tx = sqlx::Connection::begin(&mut **conn).await?;
    let inserted = cols.insert().fetch_all(&mut *tx).await?;
    let (out, lost) = claim(group, inserted);
    if !lost.is_empty() {
        tx.rollback().await?;
        return Ok(Written::Conflicts(lost));
    }
    for (p, positions) in group.iter().zip(&out) {
        let Some(positions) = positions else {
            continue;
        };
        for (s, stored) in p.streams.iter().zip(positions) {
            if let (Some(snap), false) = (&s.snapshot, stored.is_empty()) {
                snapshot_upsert_pg(&mut tx, s.aggregate_type, &s.key, snap).await?;
            }
        }
    }
    tx.commit().await?;
    Ok(Written::Committed(out))
}

/// Hands each inserted row to its append: per append, the positions of its
/// streams' events (`None` when none of its rows went in), and the appends
/// only part of whose rows went in (the group must then roll back).
fn claim(group: &[Pending], inserted: Vec<(String, String, i64, i64)>) -> (Claimed, Vec<usize>) {
    let mut position: HashMap<(String, String, i64), i64> = inserted
        .into_iter()
        .map(|(t, a, s, p)| ((t, a, s), p))
        .collect();
    let mut out = Vec::with_capacity(group.len());
    let mut lost = Vec::new();
    for (i, p) in group.iter().enumerate() {
        // Each inserted row belongs to the first append of the group that
        // claims it: two appends of one new stream in one group are one
        // append and one that finds the stream taken.
        let mut positions = Vec::with_capacity(p.streams.len());
        let mut complete = true;
        let mut untouched = true;
        for s in &p.streams {
            let found: Vec<i64> = s
                .events
                .iter()
                .filter_map(|e| {
                    position.remove(&(s.aggregate_type.to_string(), s.key.clone(), e.sequence))
                })
                .collect();
            untouched &= found.is_empty();
            if found.len() == s.events.len() || (p.skip_existing && found.is_empty()) {
                positions.push(found);
            } else {
                complete = false;
            }
        }
        if complete {
            out.push(Some(positions));
        } else if untouched {
            out.push(None);
        } else {
            lost.push(i);
        }
    }
    (out, lost)
}

/// The group's rows as the columns `UNNEST` takes.
struct Columns<'a> {
    aggregate_type: Vec<&'a str>,
    aggregate_id: Vec<&'a str>,
    sequence: Vec<i64>,
    event_type: Vec<&'a str>,
    event_version: Vec<&'a str>,
    payload: Vec<&'a str>,
    metadata: Vec<&'a str>,
    event_id: Vec<&'a str>,
    tenant: Vec<&'a str>,
    recorded_at: Vec<DateTime<Utc>>,
}

impl<'a> Columns<'a> {
    fn of(group: &'a [Pending]) -> Self {
        let rows: usize = group.iter().map(Pending::rows).sum();
        let mut cols = Columns::with_capacity(rows);
        for p in group {
            for s in &p.streams {
                for e in &s.events {
                    cols.aggregate_type.push(s.aggregate_type);
                    cols.aggregate_id.push(s.key.as_str());
                    cols.sequence.push(e.sequence);
                    cols.event_type.push(e.event_type.as_str());
                    cols.event_version.push(e.event_version.as_str());
                    cols.payload.push(e.payload.get());
                    cols.metadata.push(e.metadata.get());
                    cols.event_id.push(e.event_id.as_str());
                    cols.tenant.push(p.tenant.as_str());
                    cols.recorded_at.push(p.recorded_at);
                }
            }
        }
        cols
    }

    /// The group's [`INSERT`], returning each inserted row's key and position.
    fn insert(
        &self,
    ) -> sqlx::query::QueryAs<'_, Postgres, (String, String, i64, i64), sqlx::postgres::PgArguments>
    {
        sqlx::query_as(INSERT)
            .bind(&self.aggregate_type)
            .bind(&self.aggregate_id)
            .bind(&self.sequence)
            .bind(&self.event_type)
            .bind(&self.event_version)
            .bind(&self.payload)
            .bind(&self.metadata)
            .bind(&self.event_id)
            .bind(&self.tenant)
            .bind(&self.recorded_at)
    }

    fn with_capacity(n: usize) -> Self {
        Columns {
            aggregate_type: Vec::with_capacity(n),
            aggregate_id: Vec::with_capacity(n),
            sequence: Vec::with_capacity(n),
            event_type: Vec::with_capacity(n),
            event_version: Vec::with_capacity(n),
            payload: Vec::with_capacity(n),
            metadata: Vec::with_capacity(n),
            event_id: Vec::with_capacity(n),
            tenant: Vec::with_capacity(n),
            recorded_at: Vec::with_capacity(n),
        }
    }
}
