//! The ordered log reader: every committed event exactly once, in global
//! position order, even when concurrent PostgreSQL transactions commit out of
//! position order.
//!
//! Positions come from a sequence before commit, so a reader that sees
//! position 11 committed may still see 10 appear later (its transaction was
//! slower), or never (it rolled back). The reader therefore delivers rows only
//! up to the first *hole* it cannot prove final. The proof: every appending
//! transaction takes its transaction id before its position (the insert
//! trigger), so the holder of a hole below a committed row had its id before
//! that row committed. When the reader first meets a hole it takes a fresh
//! transaction id as the hole's *bound* (greater than the holder's id); once
//! `pg_snapshot_xmin` of a later read is at or above the bound, every
//! transaction that could hold the hole has ended, and a hole still empty in
//! that same read is final (a rollback) and is stepped over. Until then the
//! rows above the hole wait. Bounds live in the `EventLog` (shared by the
//! consumers of a process); losing them only costs one more wait.
//!
//! SQLite has one writer at a time, so commit order is position order and a
//! hole is always final.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use serde_json::Value;
use sqlx::Row;
use tally_aggregates::AggregateKind;

use crate::db::{Backend, Db, DbError};

/// One event as stored in the log.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    pub position: i64,
    pub event_id: String,
    pub tenant: String,
    pub aggregate_type: String,
    /// The stream key, `<tenant>:<resource id>`.
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
    pub event_version: String,
    /// The payload's JSON text as stored: each consumer decodes it into
    /// its own type. Parsed into a tree per read, it cost a third of the
    /// consumers' CPU (the parse and the drop) under usage ingest.
    pub payload: String,
    pub metadata: HashMap<String, String>,
    /// RFC 3339 UTC.
    pub recorded_at: String,
}

impl StoredEvent {
    /// The kind of the stream; `None` for a type no aggregate of this build
    /// stores (only an edited log holds one).
    pub fn kind(&self) -> Option<AggregateKind> {
        AggregateKind::parse(&self.aggregate_type)
    }

    /// Whether the event is of the stream kind `kind` (one comparison, for
    /// filters on the hot path).
    pub fn is(&self, kind: AggregateKind) -> bool {
        self.aggregate_type == kind.as_str()
    }

    /// The resource id (the stream key without its tenant).
    pub fn resource_id(&self) -> &str {
        crate::split_stream_key(&self.aggregate_id)
            .map(|(_, id)| id)
            .unwrap_or(&self.aggregate_id)
    }

    /// Deserializes the payload into the aggregate's event type.
    pub fn decode<E: serde::de::DeserializeOwned>(&self) -> Result<E, serde_json::Error> {
        serde_json::from_str(&self.payload)
    }

    /// The payload as a JSON tree (audit answers, exports, the seal's
    /// canonical form).
    pub fn payload_value(&self) -> Result<Value, serde_json::Error> {
        serde_json::from_str(&self.payload)
    }
}

/// Largest batch one read returns.
pub const MAX_READ_LIMIT: i64 = 10_000;

const PG_READ: &str = "
SELECT position, event_id, tenant, aggregate_type, aggregate_id, sequence, event_type,
       event_version, payload::text AS payload, metadata::text AS metadata,
       to_char(recorded_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') AS recorded_at,
       pg_snapshot_xmin(pg_current_snapshot())::text AS xmin
  FROM events
 WHERE position > $1
 ORDER BY position
 LIMIT $2";

const SQLITE_READ: &str = "
SELECT position, event_id, tenant, aggregate_type, aggregate_id, sequence, event_type,
       event_version, payload, metadata, recorded_at,
       '0' AS xmin
  FROM events
 WHERE position > $1
 ORDER BY position
 LIMIT $2";

const PG_STREAM: &str = "
SELECT position, event_id, tenant, aggregate_type, aggregate_id, sequence, event_type,
       event_version, payload::text AS payload, metadata::text AS metadata,
       to_char(recorded_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') AS recorded_at,
       '0' AS xmin
  FROM events
 WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence > $3
 ORDER BY sequence
 LIMIT $4";

const SQLITE_STREAM: &str = "
SELECT position, event_id, tenant, aggregate_type, aggregate_id, sequence, event_type,
       event_version, payload, metadata, recorded_at, '0' AS xmin
  FROM events
 WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence > $3
 ORDER BY sequence
 LIMIT $4";

/// Reads the log. Cheap to clone.
#[derive(Debug, Clone)]
pub struct EventLog {
    db: Db,
    /// First position of a hole → its bound (a transaction id).
    holes: Arc<Mutex<BTreeMap<i64, u64>>>,
    /// Holes proven final, as first position → the position after the hole.
    /// A final hole stays empty for ever, so every other reader that meets
    /// it (a slower consumer, a rebuild) steps over it without a new proof,
    /// which would wait for every older transaction of the whole cluster.
    finals: Arc<Mutex<BTreeMap<i64, i64>>>,
    /// The stretches of the log read last, shared by every consumer of the
    /// process: a batch is read and decoded once, however many consumers
    /// take it (see [`EventLog::read_shared`]).
    tail: Arc<Mutex<Tail>>,
    /// Held while reading the log for the tail, so that consumers waking
    /// together make one read.
    tail_read: Arc<tokio::sync::Mutex<()>>,
}

/// Events read after a position, in log order: slices of consecutive
/// batches of the shared tail.
#[derive(Debug, Default, Clone)]
pub struct SharedBatch {
    /// A batch and the range of it that belongs here.
    segments: Vec<(Arc<Vec<StoredEvent>>, usize, usize)>,
}

impl SharedBatch {
    /// The events, in log order.
    pub fn events(&self) -> Vec<&StoredEvent> {
        self.segments
            .iter()
            .flat_map(|(events, start, end)| events[*start..*end].iter())
            .collect()
    }
}

/// Consecutive stretches of the log as [`EventLog::read_after`] returned
/// them: each segment holds every event after its `after` up to its last,
/// and each begins where the one before it ends.
#[derive(Debug, Default)]
struct Tail {
    segments: VecDeque<(i64, Arc<Vec<StoredEvent>>)>,
    events: usize,
}

/// Events the shared tail keeps at most.
const TAIL_EVENTS: usize = 8_000;

impl Tail {
    /// The stored events after `position`, up to `limit` of them, when a
    /// segment covers it: from that segment and the ones that follow it.
    fn find(&self, position: i64, limit: usize) -> Option<SharedBatch> {
        let first = self.segments.iter().position(|(after, events)| {
            events
                .last()
                .is_some_and(|last| *after <= position && position < last.position)
        })?;
        let mut batch = SharedBatch::default();
        let mut taken = 0;
        for (i, (_, events)) in self.segments.iter().enumerate().skip(first) {
            if taken >= limit {
                break;
            }
            let start = if i == first {
                events.partition_point(|e| e.position <= position)
            } else {
                0
            };
            let end = events.len().min(start + (limit - taken));
            taken += end - start;
            batch.segments.push((events.clone(), start, end));
        }
        Some(batch)
    }

    /// Keeps `events`, read after `after`, when they continue the tail.
    fn push(&mut self, after: i64, events: Arc<Vec<StoredEvent>>) {
        let newest = self
            .segments
            .back()
            .and_then(|(_, e)| e.last())
            .map(|e| e.position);
        match newest {
            Some(last) if last == after => {}
            // A consumer ahead of the tail: start a new one from it.
            Some(last) if after > last => {
                self.segments.clear();
                self.events = 0;
            }
            // A consumer behind the tail reads on its own.
            Some(_) => return,
            None => {}
        }
        self.events += events.len();
        self.segments.push_back((after, events));
        while self.events > TAIL_EVENTS && self.segments.len() > 1 {
            if let Some((_, old)) = self.segments.pop_front() {
                self.events -= old.len();
            }
        }
    }
}

/// Holes remembered at most (the oldest are forgotten first; a forgotten
/// hole only gets a new bound).
const MAX_HOLES: usize = 10_000;

impl EventLog {
    pub fn new(db: Db) -> Self {
        Self {
            db,
            holes: Arc::default(),
            finals: Arc::default(),
            tail: Arc::default(),
            tail_read: Arc::default(),
        }
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Events after `position`, in position order, at most `limit`. Stops in
    /// front of a hole whose transaction may still commit (see the module doc).
    pub async fn read_after(&self, position: i64, limit: i64) -> Result<Vec<StoredEvent>, DbError> {
        let limit = limit.clamp(1, MAX_READ_LIMIT);
        let rows = sqlx::query(self.db.sql(PG_READ, SQLITE_READ))
            .bind(position)
            .bind(limit)
            .fetch_all(&self.db.any)
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        let mut expected = position + 1;
        for (i, row) in rows.iter().enumerate() {
            let event = decode_row(row)?;
            if event.position != expected
                && self.db.backend == Backend::Postgres
                && !self.known_final(expected, event.position)
            {
                let xmin = parse_xid(row.try_get("xmin")?);
                let had_bound = self.holes.lock().expect("holes").contains_key(&expected);
                if !self.hole_is_final(expected, xmin).await? {
                    // Only a bound taken after this read covers the holes
                    // below its rows: an older one may predate their holders.
                    if !had_bound {
                        self.bound_later_holes(expected, &rows[i..])?;
                    }
                    break;
                }
                let mut finals = self.finals.lock().expect("finals");
                if finals.len() >= MAX_HOLES {
                    finals.pop_first();
                }
                finals.insert(expected, event.position);
            }
            expected = event.position + 1;
            out.push(event);
        }
        if let Some(last) = out.last() {
            // Holes this reader has passed need no bound any more; a slower
            // reader that meets one again just takes a new bound.
            self.holes
                .lock()
                .expect("holes")
                .retain(|start, _| *start > last.position);
        }
        Ok(out)
    }

    /// Like [`EventLog::read_after`], shared: the events after `position`
    /// come from batches that every consumer of this process at that point
    /// of the log takes from memory, joined up to `limit` events (a consumer
    /// behind the others takes in one step what they read in several). Only
    /// the first of them to ask reads the log.
    pub async fn read_shared(&self, position: i64, limit: i64) -> Result<SharedBatch, DbError> {
        let max = usize::try_from(limit).unwrap_or(0).max(1);
        if let Some(found) = self.tail.lock().expect("tail").find(position, max) {
            return Ok(found);
        }
        let _reading = self.tail_read.lock().await;
        if let Some(found) = self.tail.lock().expect("tail").find(position, max) {
            return Ok(found);
        }
        let events = Arc::new(self.read_after(position, limit).await?);
        if !events.is_empty() {
            self.tail
                .lock()
                .expect("tail")
                .push(position, events.clone());
        }
        let end = events.len();
        Ok(SharedBatch {
            segments: vec![(events, 0, end)],
        })
    }

    /// True while a hole is waiting to be proven final: readers should look
    /// again soon rather than at their idle poll interval.
    pub fn has_pending_holes(&self) -> bool {
        !self.holes.lock().expect("holes").is_empty()
    }

    /// Whether the positions `start..end` were proven an empty, final hole.
    fn known_final(&self, start: i64, end: i64) -> bool {
        let finals = self.finals.lock().expect("finals");
        finals
            .range(..=start)
            .next_back()
            .is_some_and(|(_, after)| *after >= end)
    }

    /// Gives every hole between `rows` (read with the hole at `start`) the
    /// bound just taken for that hole, when it has none: that bound was taken
    /// after this read, so it is above the id of every transaction that could
    /// hold a position below the rows read (see the module doc); a bound
    /// taken after an earlier read is not, and must not be passed on. The next read then
    /// proves them all at once, instead of one hole per read, which made a
    /// log with many holes (duplicates skipped by a usage batch each leave
    /// one) cost a read per hole.
    fn bound_later_holes(&self, start: i64, rows: &[sqlx::any::AnyRow]) -> Result<(), DbError> {
        let mut holes = self.holes.lock().expect("holes");
        let Some(bound) = holes.get(&start).copied() else {
            return Ok(());
        };
        let mut previous: Option<i64> = None;
        for row in rows {
            let p: i64 = row.try_get("position")?;
            if let Some(prev) = previous {
                if p != prev + 1 && !self.known_final(prev + 1, p) && holes.len() < MAX_HOLES {
                    holes.entry(prev + 1).or_insert(bound);
                }
            }
            previous = Some(p);
        }
        Ok(())
    }

    /// Whether the hole starting at `start` is final, given the `xmin` of the
    /// read that found it still empty (see the module doc).
    async fn hole_is_final(&self, start: i64, xmin: u64) -> Result<bool, DbError> {
        let known = self.holes.lock().expect("holes").get(&start).copied();
        match known {
            Some(bound) if xmin >= bound => {
                let mut holes = self.holes.lock().expect("holes");
                holes.remove(&start);
                Ok(true)
            }
            Some(_) => Ok(false),
            None => {
                // Taken after the read that saw the row above the hole, so it
                // is above the id of every transaction that could hold it.
                let bound: String = sqlx::query_scalar("SELECT pg_current_xact_id()::text")
                    .fetch_one(&self.db.any)
                    .await?;
                let mut holes = self.holes.lock().expect("holes");
                if holes.len() >= MAX_HOLES {
                    holes.pop_first();
                }
                holes.insert(start, parse_xid(bound));
                Ok(false)
            }
        }
    }

    /// The events of one stream after `sequence`, in stream order.
    pub async fn read_stream(
        &self,
        aggregate_type: &str,
        stream_key: &str,
        after_sequence: i64,
        limit: i64,
    ) -> Result<Vec<StoredEvent>, DbError> {
        let rows = sqlx::query(self.db.sql(PG_STREAM, SQLITE_STREAM))
            .bind(aggregate_type)
            .bind(stream_key)
            .bind(after_sequence)
            .bind(limit.clamp(1, MAX_READ_LIMIT))
            .fetch_all(&self.db.any)
            .await?;
        rows.iter().map(decode_row).collect()
    }

    /// The highest committed position (0 for an empty log).
    pub async fn head(&self) -> Result<i64, DbError> {
        let head: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(position), 0) FROM events")
            .fetch_one(&self.db.any)
            .await?;
        Ok(head)
    }

    /// The sequence of the last event of each of the streams `keys` of one
    /// type that has any (a stream with no events is absent). One query per
    /// 500 keys, each planned with its keys (an unnamed statement): a
    /// generic plan for "any 500 ids" scanned the whole log instead of
    /// walking the primary key.
    pub async fn stream_heads(
        &self,
        aggregate_type: &str,
        keys: &[String],
    ) -> Result<HashMap<String, i64>, DbError> {
        let mut heads = HashMap::with_capacity(keys.len());
        for chunk in keys.chunks(500) {
            let params: Vec<String> = (0..chunk.len()).map(|i| format!("${}", i + 2)).collect();
            let sql = format!(
                "SELECT aggregate_id, MAX(sequence) FROM events WHERE aggregate_type = $1 \
                 AND aggregate_id IN ({}) GROUP BY aggregate_id",
                params.join(", ")
            );
            let mut q = sqlx::query_as::<_, (String, i64)>(&sql)
                .persistent(false)
                .bind(aggregate_type);
            for k in chunk {
                q = q.bind(k);
            }
            heads.extend(q.fetch_all(&self.db.any).await?);
        }
        Ok(heads)
    }

    /// The sequence and the position of the last event of one stream
    /// (`(0, 0)` when it has none).
    pub async fn stream_head(
        &self,
        aggregate_type: &str,
        stream_key: &str,
    ) -> Result<(i64, i64), DbError> {
        // A stream's positions grow with its sequence (an append follows the
        // commit of the events before it), so the last event by sequence, one
        // index probe, has both; `MAX(position)` read every row of the stream.
        let head: Option<(i64, i64)> = sqlx::query_as(
            "SELECT sequence, position FROM events WHERE aggregate_type = $1 AND aggregate_id = $2 \
             ORDER BY sequence DESC LIMIT 1",
        )
        .bind(aggregate_type)
        .bind(stream_key)
        .fetch_optional(&self.db.any)
        .await?;
        Ok(head.unwrap_or((0, 0)))
    }
}

fn parse_xid(text: String) -> u64 {
    text.parse().unwrap_or(0)
}

pub(crate) fn decode_row(row: &sqlx::any::AnyRow) -> Result<StoredEvent, DbError> {
    let payload: String = row.try_get("payload")?;
    let metadata: String = row.try_get("metadata")?;
    let decode_err = |e: serde_json::Error| DbError::Sqlx(sqlx::Error::Decode(Box::new(e)));
    Ok(StoredEvent {
        position: row.try_get("position")?,
        event_id: row.try_get("event_id")?,
        tenant: row.try_get("tenant")?,
        aggregate_type: row.try_get("aggregate_type")?,
        aggregate_id: row.try_get("aggregate_id")?,
        sequence: row.try_get("sequence")?,
        event_type: row.try_get("event_type")?,
        event_version: row.try_get("event_version")?,
        payload,
        metadata: serde_json::from_str(&metadata).map_err(decode_err)?,
        recorded_at: row.try_get("recorded_at")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(positions: std::ops::RangeInclusive<i64>) -> Arc<Vec<StoredEvent>> {
        Arc::new(
            positions
                .map(|position| StoredEvent {
                    position,
                    event_id: format!("e{position}"),
                    tenant: "t".into(),
                    aggregate_type: "test".into(),
                    aggregate_id: "t:s".into(),
                    sequence: position,
                    event_type: "TestEvent".into(),
                    event_version: "1.0".into(),
                    payload: "null".into(),
                    metadata: HashMap::new(),
                    recorded_at: String::new(),
                })
                .collect(),
        )
    }

    fn positions(batch: &SharedBatch) -> Vec<i64> {
        batch.events().iter().map(|e| e.position).collect()
    }

    /// A consumer behind the one that reads the log takes, in one batch, what
    /// the other read in several small ones, up to its limit.
    #[test]
    fn tail_joins_consecutive_reads_up_to_the_limit() {
        let mut tail = Tail::default();
        tail.push(0, events(1..=2));
        tail.push(2, events(3..=3));
        tail.push(3, events(4..=7));
        assert_eq!(
            positions(&tail.find(0, 100).unwrap()),
            (1..=7).collect::<Vec<_>>()
        );
        assert_eq!(positions(&tail.find(1, 4).unwrap()), vec![2, 3, 4, 5]);
        assert_eq!(positions(&tail.find(3, 2).unwrap()), vec![4, 5]);
        assert_eq!(positions(&tail.find(6, 100).unwrap()), vec![7]);
        // At the end of the tail, or before it: the log must be read.
        assert!(tail.find(7, 100).is_none());
        let mut later = Tail::default();
        later.push(10, events(11..=12));
        assert!(later.find(5, 100).is_none());
    }
}
