//! The ordered log reader: every committed event exactly once, in global
//! position order, even when concurrent PostgreSQL transactions commit out of
//! position order.
//!
//! Positions are taken from a sequence before commit, so a reader that sees
//! position 11 committed may still see 10 appear later (its transaction was
//! slower), or never (it rolled back). Each row carries a *horizon*: the next
//! transaction id at the moment its position was taken (see
//! `migrations/postgres/0001_log.sql`). Any transaction that holds a lower
//! position already had an id below that horizon. So a hole below a row can be
//! stepped over only once `pg_snapshot_xmin` of the reader's snapshot is at or
//! above the row's horizon: by then every such transaction has ended and the
//! hole is final. Until then the reader stops in front of the hole, and does
//! not deliver the rows after it.

use std::collections::HashMap;

use serde_json::Value;
use sqlx::Row;

use crate::db::{Db, DbError};

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
    pub payload: Value,
    pub metadata: HashMap<String, String>,
    /// RFC 3339 UTC.
    pub recorded_at: String,
}

impl StoredEvent {
    /// The resource id (the stream key without its tenant).
    pub fn resource_id(&self) -> &str {
        crate::split_stream_key(&self.aggregate_id)
            .map(|(_, id)| id)
            .unwrap_or(&self.aggregate_id)
    }

    /// Deserializes the payload into the aggregate's event type.
    pub fn decode<E: serde::de::DeserializeOwned>(&self) -> Result<E, serde_json::Error> {
        serde_json::from_value(self.payload.clone())
    }
}

/// Largest batch one read returns.
pub const MAX_READ_LIMIT: i64 = 10_000;

const PG_READ: &str = "
SELECT position, event_id, tenant, aggregate_type, aggregate_id, sequence, event_type,
       event_version, payload::text AS payload, metadata::text AS metadata,
       to_char(recorded_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') AS recorded_at,
       horizon::text AS horizon,
       pg_snapshot_xmin(pg_current_snapshot())::text AS xmin
  FROM events
 WHERE position > $1
 ORDER BY position
 LIMIT $2";

const SQLITE_READ: &str = "
SELECT position, event_id, tenant, aggregate_type, aggregate_id, sequence, event_type,
       event_version, payload, metadata, recorded_at,
       '0' AS horizon, '0' AS xmin
  FROM events
 WHERE position > $1
 ORDER BY position
 LIMIT $2";

const PG_STREAM: &str = "
SELECT position, event_id, tenant, aggregate_type, aggregate_id, sequence, event_type,
       event_version, payload::text AS payload, metadata::text AS metadata,
       to_char(recorded_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') AS recorded_at,
       '0' AS horizon, '0' AS xmin
  FROM events
 WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence > $3
 ORDER BY sequence
 LIMIT $4";

const SQLITE_STREAM: &str = "
SELECT position, event_id, tenant, aggregate_type, aggregate_id, sequence, event_type,
       event_version, payload, metadata, recorded_at, '0' AS horizon, '0' AS xmin
  FROM events
 WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence > $3
 ORDER BY sequence
 LIMIT $4";

/// Reads the log. Cheap to clone.
#[derive(Debug, Clone)]
pub struct EventLog {
    db: Db,
}

impl EventLog {
    pub fn new(db: Db) -> Self {
        Self { db }
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
        for row in rows {
            let horizon: u64 = parse_xid(row.try_get("horizon")?);
            let xmin: u64 = parse_xid(row.try_get("xmin")?);
            let event = decode_row(&row)?;
            if event.position != expected && xmin < horizon {
                // A transaction that took a position in the hole may still commit.
                break;
            }
            expected = event.position + 1;
            out.push(event);
        }
        Ok(out)
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

    /// The position of the last event of one stream (0 when it has none).
    pub async fn stream_position(
        &self,
        aggregate_type: &str,
        stream_key: &str,
    ) -> Result<i64, DbError> {
        let p: i64 = sqlx::query_scalar(
            "SELECT COALESCE(MAX(position), 0) FROM events WHERE aggregate_type = $1 AND aggregate_id = $2",
        )
        .bind(aggregate_type)
        .bind(stream_key)
        .fetch_one(&self.db.any)
        .await?;
        Ok(p)
    }
}

fn parse_xid(text: String) -> u64 {
    text.parse().unwrap_or(0)
}

fn decode_row(row: &sqlx::any::AnyRow) -> Result<StoredEvent, DbError> {
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
        payload: serde_json::from_str(&payload).map_err(decode_err)?,
        metadata: serde_json::from_str(&metadata).map_err(decode_err)?,
        recorded_at: row.try_get("recorded_at")?,
    })
}
