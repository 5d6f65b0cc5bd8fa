//! The sealer: a hash chain over the log in global order (tamper evidence).
//!
//! The sealer is a consumer of the ordered log like any projector: for each
//! event it appends one link to `audit_chain`, in the batch transaction that
//! also moves its checkpoint, so the chain has exactly one link per event it
//! has read. A link is `hex(SHA-256(previous link ‖ canonical bytes))`, where
//! the previous link is taken as its 64 hex characters (64 zeros before the
//! first event) and the canonical bytes are [`canonical_bytes`]. Reading
//! through the ordered reader means it never passes a position that might
//! still commit, so a later, legitimate event can never land inside the
//! sealed range.
//!
//! [`digest`] exports the head of the chain (position and hash); [`verify`]
//! recomputes the chain from the `events` rows and names the first position
//! where the rows and the chain disagree: an edited row, a deleted row, a row
//! inserted where none was sealed. The chain lives in the same database, so
//! someone who can edit events can also rewrite the whole chain consistently:
//! only a digest kept elsewhere detects that, which is why `verify` takes one.
//!
//! The chain is not a read model: it is never rebuilt, because resealing from
//! position 0 would bless whatever the log holds by then.

use std::collections::VecDeque;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use async_trait::async_trait;
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use sqlx::{AnyConnection, Row};

use crate::db::{Db, DbError};
use crate::log::{decode_row, StoredEvent};
use crate::runtime::{ProjectionError, Projector};
use crate::tables::Tables;

pub const CONSUMER: &str = "sealer";

/// The "previous link" of the first event, and the hash of an empty chain.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Links written per INSERT statement (two parameters each, well under
/// SQLite's oldest limit of 999 parameters).
const INSERT_ROWS: usize = 400;

/// Rows `verify` reads per query, of events and of links: its memory stays
/// constant whatever the size of the log.
const VERIFY_PAGE_ROWS: i64 = 5_000;

/// The same column expressions as the log reader's (`log.rs`, `PG_READ`), so
/// that `verify` hashes exactly the bytes the sealer hashed.
const PG_EVENTS: &str = "
SELECT position, event_id, tenant, aggregate_type, aggregate_id, sequence, event_type,
       event_version, payload::text AS payload, metadata::text AS metadata,
       to_char(recorded_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') AS recorded_at
  FROM events
 WHERE position >= $1 AND position <= $2
 ORDER BY position
 LIMIT $3";

/// As [`PG_EVENTS`], with `SQLITE_READ`'s columns.
const SQLITE_EVENTS: &str = "
SELECT position, event_id, tenant, aggregate_type, aggregate_id, sequence, event_type,
       event_version, payload, metadata, recorded_at
  FROM events
 WHERE position >= $1 AND position <= $2
 ORDER BY position
 LIMIT $3";

/// The head of the chain: the last sealed position and its link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Digest {
    pub position: i64,
    pub hash: String,
}

impl Digest {
    /// The digest of an empty chain.
    pub fn genesis() -> Digest {
        Digest {
            position: 0,
            hash: GENESIS.to_string(),
        }
    }
}

/// `position:hash`, the form operators copy around.
impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.position, self.hash)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid digest `{0}`: expected POSITION:HASH, a log position and 64 hex digits")]
pub struct DigestParseError(String);

impl FromStr for Digest {
    type Err = DigestParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || DigestParseError(s.to_string());
        let (position, hash) = s.trim().split_once(':').ok_or_else(invalid)?;
        let position: i64 = position
            .parse()
            .ok()
            .filter(|p| *p >= 0)
            .ok_or_else(invalid)?;
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(invalid());
        }
        Ok(Digest {
            position,
            hash: hash.to_ascii_lowercase(),
        })
    }
}

/// How the rows and the chain disagree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DivergenceKind {
    /// An event row whose recomputed link differs from the sealed one (or
    /// that cannot be read any more).
    Edited,
    /// A sealed position with no event row.
    Deleted,
    /// An event row in the sealed range with no link.
    Inserted,
    /// The recomputed chain differs from the expected digest at its position:
    /// the chain itself was rewritten.
    DigestMismatch,
    /// The expected digest names a position that is not sealed (any more).
    DigestNotSealed,
}

impl fmt::Display for DivergenceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DivergenceKind::Edited => "event edited",
            DivergenceKind::Deleted => "event deleted",
            DivergenceKind::Inserted => "event inserted",
            DivergenceKind::DigestMismatch => "chain differs from the digest",
            DivergenceKind::DigestNotSealed => "digest position not sealed",
        })
    }
}

/// The first place where the log and its chain disagree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Divergence {
    pub position: i64,
    pub kind: DivergenceKind,
    pub detail: String,
}

/// What [`verify`] found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// Events whose link was recomputed and matched, up to the divergence.
    pub checked_events: u64,
    /// The head of the chain when the walk started.
    pub sealed: Digest,
    /// The last position verified and its recomputed link (genesis when none).
    pub verified: Digest,
    /// Events after the sealed head: not sealed yet, so not verified.
    pub unsealed_events: i64,
    /// The digest the chain was checked against, if one was given.
    pub expected: Option<Digest>,
    pub divergence: Option<Divergence>,
}

impl VerifyReport {
    pub fn is_ok(&self) -> bool {
        self.divergence.is_none()
    }
}

/// The sealing consumer (`audit_chain`).
#[derive(Debug, Default)]
pub struct Sealer;

/// The sealer, for the server's list of consumers.
pub fn sealer() -> Arc<dyn Projector> {
    Arc::new(Sealer)
}

#[async_trait]
impl Projector for Sealer {
    fn name(&self) -> &'static str {
        CONSUMER
    }

    fn tables(&self) -> &'static [&'static str] {
        &["audit_chain"]
    }

    async fn apply(
        &self,
        conn: &mut AnyConnection,
        tables: Tables,
        event: &StoredEvent,
    ) -> Result<(), ProjectionError> {
        self.apply_batch(conn, tables, &[event]).await
    }

    /// Reads the head link once, chains the batch in memory and writes the
    /// links in a few multi-row INSERTs. The chain is never a rebuild's
    /// shadow copy (the sealer is not rebuildable), so `tables` is unused.
    async fn apply_batch(
        &self,
        conn: &mut AnyConnection,
        _tables: Tables,
        events: &[&StoredEvent],
    ) -> Result<(), ProjectionError> {
        let head: Option<(i64, String)> =
            sqlx::query_as("SELECT position, hash FROM audit_chain ORDER BY position DESC LIMIT 1")
                .fetch_optional(&mut *conn)
                .await?;
        let (sealed_to, mut previous) = head.unwrap_or((i64::MIN, GENESIS.to_string()));
        let mut links = Vec::with_capacity(events.len());
        for event in events {
            // Already sealed: a batch delivered again changes nothing.
            if event.position <= sealed_to {
                continue;
            }
            previous = link(&previous, &canonical_bytes(event));
            links.push((event.position, previous.clone()));
        }
        for chunk in links.chunks(INSERT_ROWS) {
            let sql = format!(
                "INSERT INTO audit_chain (position, hash) VALUES {}",
                crate::db::value_rows(chunk.len(), 2)
            );
            let sql = crate::db::for_conn(conn, sql);
            let mut query = sqlx::query(&sql);
            for (position, hash) in chunk {
                query = query.bind(*position).bind(hash.as_str());
            }
            query.execute(&mut *conn).await?;
        }
        Ok(())
    }

    /// Resealing from position 0 would recompute the chain over whatever the
    /// log holds now, tampering included.
    fn rebuildable(&self) -> bool {
        false
    }
}

/// One link: `hex(SHA-256(previous ‖ canonical))`, the previous link taken as
/// its hex text.
pub fn link(previous: &str, canonical: &[u8]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(previous.as_bytes());
    hasher.update(canonical);
    hex::encode(hasher.finalize())
}

/// The bytes of an event the chain covers: the JSON array `[position,
/// event_id, tenant, aggregate_type, aggregate_id, sequence, event_type,
/// event_version, payload, metadata, recorded_at]` (the tenant column is
/// what queries filter on, so moving an event to another tenant must show), without whitespace and with every
/// object's keys sorted (by their UTF-8 bytes). It is written here rather than
/// by `serde_json`, whose map order depends on a feature any dependency may
/// turn on. The payload is hashed as parsed JSON, so formatting and key order
/// in the stored text are not covered; its meaning is.
pub fn canonical_bytes(event: &StoredEvent) -> Vec<u8> {
    let mut out = String::with_capacity(256);
    out.push('[');
    out.push_str(&event.position.to_string());
    for text in [
        &event.event_id,
        &event.tenant,
        &event.aggregate_type,
        &event.aggregate_id,
    ] {
        out.push(',');
        write_string(text, &mut out);
    }
    out.push(',');
    out.push_str(&event.sequence.to_string());
    for text in [&event.event_type, &event.event_version] {
        out.push(',');
        write_string(text, &mut out);
    }
    out.push(',');
    match event.payload_value() {
        Ok(payload) => write_canonical(&payload, &mut out),
        // Text that is no JSON (only an edited log holds it) is covered as
        // a string: it cannot give the bytes of the payload it replaced.
        Err(_) => write_string(&event.payload, &mut out),
    }
    out.push(',');
    let mut metadata: Vec<_> = event.metadata.iter().collect();
    metadata.sort();
    out.push('{');
    for (i, (key, value)) in metadata.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_string(key, &mut out);
        out.push(':');
        write_string(value, &mut out);
    }
    out.push('}');
    out.push(',');
    write_string(&event.recorded_at, &mut out);
    out.push(']');
    out.into_bytes()
}

/// Canonical JSON of a value: no whitespace, object keys sorted recursively.
fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(key, out);
                out.push(':');
                write_canonical(item, out);
            }
            out.push('}');
        }
    }
}

/// A JSON string literal (serde_json's escaping, which is fixed).
fn write_string(s: &str, out: &mut String) {
    // serde_json escapes a `str` exactly as the `Value::String` it would
    // become; one allocation instead of three.
    out.push_str(&serde_json::to_string(s).expect("a str always serializes"));
}

/// The head of the chain (genesis when nothing is sealed).
pub async fn digest(db: &Db) -> Result<Digest, DbError> {
    let head: Option<(i64, String)> =
        sqlx::query_as("SELECT position, hash FROM audit_chain ORDER BY position DESC LIMIT 1")
            .fetch_optional(&db.any)
            .await?;
    Ok(head
        .map(|(position, hash)| Digest { position, hash })
        .unwrap_or_else(Digest::genesis))
}

/// One event row as `verify` reads it: a row that no longer decodes is a
/// divergence at its position, not a failure of the walk.
type EventRow = (i64, Result<StoredEvent, String>);

/// Recomputes the chain from the `events` rows up to the sealed head and
/// reports the first divergence, checking `expected` on the way when given.
///
/// Every event row in the sealed range is read (positions ≤ 0 included), so a
/// row inserted below the first position or into a hole is found. A position
/// with neither a row nor a link is a hole the log reader stepped over (a
/// rolled-back append) and is fine.
pub async fn verify(db: &Db, expected: Option<Digest>) -> Result<VerifyReport, DbError> {
    let sealed = digest(db).await?;
    let unsealed_events: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM events WHERE position > $1")
            .bind(sealed.position)
            .fetch_one(&db.any)
            .await?;
    let mut report = VerifyReport {
        checked_events: 0,
        sealed: sealed.clone(),
        verified: Digest::genesis(),
        unsealed_events,
        expected: expected.clone(),
        divergence: None,
    };
    // The empty chain's digest holds for every chain.
    let mut expected = expected.filter(|d| *d != Digest::genesis());
    let (mut events, mut links) = (VecDeque::new(), VecDeque::new());
    let (mut events_from, mut links_from) = (Some(i64::MIN), Some(i64::MIN));
    let mut previous = GENESIS.to_string();
    let divergence = loop {
        if events.is_empty() {
            if let Some(from) = events_from {
                let page = events_page(db, from, sealed.position).await?;
                events_from = next_from(page.len(), page.last().map(|(p, _)| *p));
                events.extend(page);
            }
        }
        if links.is_empty() {
            if let Some(from) = links_from {
                let page = links_page(db, from, sealed.position).await?;
                links_from = next_from(page.len(), page.last().map(|(p, _)| *p));
                links.extend(page);
            }
        }
        // The expected digest's position was passed without a link there.
        if let Some(d) = &expected {
            let next = match (events.front(), links.front()) {
                (Some((e, _)), Some((l, _))) => Some((*e).min(*l)),
                (Some((e, _)), None) => Some(*e),
                (None, Some((l, _))) => Some(*l),
                (None, None) => None,
            };
            if next.is_none_or(|p| p > d.position) {
                break Some(Divergence {
                    position: d.position,
                    kind: DivergenceKind::DigestNotSealed,
                    detail: format!("the chain has no link at position {}", d.position),
                });
            }
        }
        let (event_at, link_at) = (events.front().map(|e| e.0), links.front().map(|l| l.0));
        match (event_at, link_at) {
            (None, None) => break None,
            (Some(e), l) if l.is_none_or(|l| e < l) => {
                break Some(Divergence {
                    position: e,
                    kind: DivergenceKind::Inserted,
                    detail: "an event row in the sealed range has no link".into(),
                });
            }
            (e, Some(l)) if e.is_none_or(|e| l < e) => {
                break Some(Divergence {
                    position: l,
                    kind: DivergenceKind::Deleted,
                    detail: "a sealed position has no event row".into(),
                });
            }
            _ => {}
        }
        let (position, event) = events.pop_front().expect("an event at the link's position");
        let (_, sealed_link) = links.pop_front().expect("a link at the event's position");
        let event = match event {
            Ok(event) => event,
            Err(e) => {
                break Some(Divergence {
                    position,
                    kind: DivergenceKind::Edited,
                    detail: format!("the row cannot be read: {e}"),
                });
            }
        };
        let recomputed = link(&previous, &canonical_bytes(&event));
        if recomputed != sealed_link {
            break Some(Divergence {
                position,
                kind: DivergenceKind::Edited,
                detail: format!("recomputed link {recomputed}, sealed {sealed_link}"),
            });
        }
        if let Some(d) = expected.take_if(|d| d.position == position) {
            if d.hash != recomputed {
                break Some(Divergence {
                    position,
                    kind: DivergenceKind::DigestMismatch,
                    detail: format!("recomputed link {recomputed}, digest {}", d.hash),
                });
            }
        }
        previous = recomputed;
        report.checked_events += 1;
        report.verified = Digest {
            position,
            hash: previous.clone(),
        };
    };
    report.divergence = divergence;
    Ok(report)
}

/// Where the next page starts, or `None` when this one was the last.
fn next_from(rows: usize, last: Option<i64>) -> Option<i64> {
    if (rows as i64) < VERIFY_PAGE_ROWS {
        return None;
    }
    last.and_then(|p| p.checked_add(1))
}

async fn events_page(db: &Db, from: i64, to: i64) -> Result<Vec<EventRow>, DbError> {
    let rows = sqlx::query(db.sql(PG_EVENTS, SQLITE_EVENTS))
        .bind(from)
        .bind(to)
        .bind(VERIFY_PAGE_ROWS)
        .fetch_all(&db.any)
        .await?;
    rows.iter()
        .map(|row| {
            let position: i64 = row.try_get("position")?;
            Ok((position, decode_row(row).map_err(|e| e.to_string())))
        })
        .collect()
}

async fn links_page(db: &Db, from: i64, to: i64) -> Result<Vec<(i64, String)>, DbError> {
    let rows = sqlx::query_as(
        "SELECT position, hash FROM audit_chain WHERE position >= $1 AND position <= $2 \
         ORDER BY position LIMIT $3",
    )
    .bind(from)
    .bind(to)
    .bind(VERIFY_PAGE_ROWS)
    .fetch_all(&db.any)
    .await?;
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(payload: Value) -> StoredEvent {
        StoredEvent {
            position: 7,
            event_id: "e1".into(),
            tenant: "acme".into(),
            aggregate_type: "plan".into(),
            aggregate_id: "acme:plan_1".into(),
            sequence: 2,
            event_type: "PlanArchived".into(),
            event_version: "1".into(),
            payload: payload.to_string(),
            metadata: [("b", "2"), ("a", "1")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            recorded_at: "2024-01-31T10:00:00.000000Z".into(),
        }
    }

    #[test]
    fn canonical_bytes_sort_keys_recursively_and_escape_strings() {
        let e = event(json!({"z": [{"y": 1, "x": "é\"\n"}], "a": null, "m": 1.5}));
        assert_eq!(
            String::from_utf8(canonical_bytes(&e)).unwrap(),
            r#"[7,"e1","acme","plan","acme:plan_1",2,"PlanArchived","1",{"a":null,"m":1.5,"z":[{"x":"é\"\n","y":1}]},{"a":"1","b":"2"},"2024-01-31T10:00:00.000000Z"]"#
        );
    }

    #[test]
    fn links_chain_from_genesis() {
        let e = event(json!({}));
        let first = link(GENESIS, &canonical_bytes(&e));
        assert_eq!(first.len(), 64);
        assert_ne!(first, link(GENESIS, b""));
        assert_ne!(link(&first, &canonical_bytes(&e)), first);
        // Fixed: a change here breaks every chain already sealed.
        let mut h = Sha256::new();
        h.update(GENESIS.as_bytes());
        h.update(canonical_bytes(&e));
        assert_eq!(first, hex::encode(h.finalize()));
    }

    #[test]
    fn digests_parse_from_position_and_hash() {
        let d: Digest = format!("12:{}", "AB".repeat(32)).parse().unwrap();
        assert_eq!(d.position, 12);
        assert_eq!(d.hash, "ab".repeat(32));
        assert_eq!(d.to_string(), format!("12:{}", "ab".repeat(32)));
        for bad in [
            "",
            "12",
            "x:ab",
            "-1:00",
            &format!("1:{}", "g".repeat(64)),
            "1:abc",
        ] {
            assert!(bad.parse::<Digest>().is_err(), "{bad}");
        }
    }
}
