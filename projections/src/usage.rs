//! Read model of usage: one row per record (`rm_usage_records`) and running
//! totals per subscription, meter and window (`rm_usage_totals`). Windows come
//! in the events (the command layer computed them from the meter's reset
//! cadence), so this projector only adds and subtracts.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use async_trait::async_trait;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sqlx::{AnyConnection, Row};

use tally_aggregates::subscription::Subscription;
use tally_aggregates::usage::{total_delta, usage_window, UsageEvent, UsageRecord, UsageWindow};
use tally_aggregates::AggregateKind;

use crate::db::{Db, DbError};
use crate::log::StoredEvent;
use crate::runtime::{ProjectionError, Projector};
use crate::state::{fold_batch, Versioned};
use crate::tables::Tables;
use crate::{time, Page, MAX_PAGE_LIMIT};

#[derive(Debug, Default)]
pub struct UsageProjector;

pub const CONSUMER: &str = "usage";

#[async_trait]
impl Projector for UsageProjector {
    fn name(&self) -> &'static str {
        CONSUMER
    }

    fn tables(&self) -> &'static [&'static str] {
        &["rm_usage_records", "rm_usage_totals"]
    }

    fn handles(&self, event: &StoredEvent) -> bool {
        event.is(AggregateKind::UsageRecord)
    }

    fn bulk(&self) -> Option<Box<dyn crate::bulk::BulkFold>> {
        Some(Box::new(crate::bulk::UsageBulk::new()))
    }

    async fn apply(
        &self,
        conn: &mut AnyConnection,
        t: Tables,
        event: &StoredEvent,
    ) -> Result<(), ProjectionError> {
        self.apply_batch(conn, t, &[event]).await
    }

    /// Folds each record's events of the batch onto its row (read once),
    /// writes the records in multi-row upserts, and adds the batch's changes
    /// to each window total with one read and one write per window.
    async fn apply_batch(
        &self,
        conn: &mut AnyConnection,
        t: Tables,
        events: &[&StoredEvent],
    ) -> Result<(), ProjectionError> {
        let mut totals: Totals = HashMap::new();
        let folded = fold_batch::<UsageRecord, UsageEvent>(
            conn,
            &t.name("rm_usage_records"),
            AggregateKind::UsageRecord,
            events,
            |_, _| None,
            |state, decoded, event| {
                state.evolve(decoded);
                let Some(d) = total_delta(decoded) else {
                    return;
                };
                let key = (
                    event.tenant.clone(),
                    d.subscription_id,
                    d.meter,
                    time::to_text(d.window.start),
                );
                let sum = totals
                    .entry(key)
                    .or_insert_with(|| (d.window.end.map(time::to_text), Decimal::ZERO, 0));
                sum.1 += d.quantity;
                sum.2 += d.records;
            },
        )
        .await?;
        let mut records = Vec::with_capacity(folded.len());
        for f in folded {
            records.push(record_values(f.tenant, f.id, &f.state, f.version)?);
        }
        for chunk in records.chunks(ROWS_PER_UPSERT) {
            let sql = t.sql(&format!(
                "INSERT INTO rm_usage_records (tenant, id, transaction_id, subscription_id, meter, ts, status, body, version) \
                 VALUES {} ON CONFLICT (tenant, id) DO UPDATE SET \
                 status = excluded.status, body = excluded.body, version = excluded.version",
                crate::db::value_rows(chunk.len(), 9)
            ))
            .into_owned();
            let sql = crate::db::for_conn(conn, sql);
            let mut q = sqlx::query(&sql);
            for row in chunk {
                for (i, v) in row.iter().enumerate() {
                    q = if i == 8 {
                        q.bind(v.parse::<i64>().unwrap_or_default())
                    } else {
                        q.bind(v.as_str())
                    };
                }
            }
            q.execute(&mut *conn).await?;
        }
        add_to_totals(conn, t, totals).await
    }
}

/// The columns of `rm_usage_records`, in the order of [`record_values`].
pub(crate) const RECORD_COLUMNS: [&str; 9] = [
    "tenant",
    "id",
    "transaction_id",
    "subscription_id",
    "meter",
    "ts",
    "status",
    "body",
    "version",
];

/// One record's row, as text (the version last).
pub(crate) fn record_values(
    tenant: String,
    id: String,
    state: &UsageRecord,
    version: i64,
) -> Result<[String; 9], ProjectionError> {
    let body = serde_json::to_string(state).map_err(|e| ProjectionError::Effect(e.to_string()))?;
    Ok([
        tenant,
        id,
        state.transaction_id.clone(),
        state.subscription_id.clone(),
        state.meter.clone(),
        state.timestamp.map(time::to_text).unwrap_or_default(),
        state
            .status
            .map(|s| s.as_str().to_string())
            .unwrap_or_default(),
        body,
        version.to_string(),
    ])
}

/// Record rows written per statement (9 parameters each).
const ROWS_PER_UPSERT: usize = 200;

/// A window total's key: (tenant, subscription, meter, window start).
pub(crate) type TotalKey = (String, String, String, String);
/// Window totals by key: (window end, total, record count).
pub(crate) type Totals = HashMap<TotalKey, (Option<String>, Decimal, i64)>;

/// Adds `deltas` to the stored window totals: one read of the stored totals
/// and one upsert per 200 windows, not a read and a write per window.
async fn add_to_totals(
    conn: &mut AnyConnection,
    t: Tables,
    deltas: Totals,
) -> Result<(), ProjectionError> {
    let table = t.name("rm_usage_totals");
    let stored = stored_totals(conn, &table, deltas.keys()).await?;
    let mut rows: Vec<(TotalKey, Option<String>, String, i64)> = deltas
        .into_iter()
        .map(|(key, (end, quantity, count))| {
            let (end, total, records) = match stored.get(&key) {
                Some((end, total, records)) => (end.clone(), *total, *records),
                None => (end, Decimal::ZERO, 0),
            };
            let total = (total + quantity).normalize().to_string();
            (key, end, total, records + count)
        })
        .collect();
    // In key order, so two writers of one window (a takeover's moment) take
    // its row lock in the same order.
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    for chunk in rows.chunks(ROWS_PER_UPSERT) {
        let sql = format!(
            "INSERT INTO {table} (tenant, subscription_id, meter, window_start, window_end, total, record_count) \
             VALUES {} ON CONFLICT (tenant, subscription_id, meter, window_start) \
             DO UPDATE SET total = excluded.total, record_count = excluded.record_count",
            crate::db::value_rows(chunk.len(), 7)
        );
        let sql = crate::db::for_conn(conn, sql);
        let mut q = sqlx::query(&sql).persistent(false);
        for ((tenant, subscription_id, meter, start), end, total, count) in chunk {
            q = q
                .bind(tenant.as_str())
                .bind(subscription_id.as_str())
                .bind(meter.as_str())
                .bind(start.as_str())
                .bind(end.clone())
                .bind(total.as_str())
                .bind(*count);
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}

/// The stored totals of the windows `keys` name: one query per tenant and
/// 500 subscriptions, for the window starts among the keys (a batch has one
/// or two), planned with its keys. Rows of other meters may come along.
pub(crate) async fn stored_totals<'a>(
    conn: &mut AnyConnection,
    table: &str,
    keys: impl IntoIterator<Item = &'a TotalKey>,
) -> Result<Totals, ProjectionError> {
    // tenant → subscription → its window starts among the keys.
    let mut by_tenant: HashMap<&str, BTreeMap<&str, BTreeSet<&str>>> = HashMap::new();
    for (tenant, subscription, _, start) in keys {
        by_tenant
            .entry(tenant)
            .or_default()
            .entry(subscription)
            .or_default()
            .insert(start);
    }
    let params = |from: usize, n: usize| -> String {
        (from..from + n)
            .map(|i| format!("${i}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut out = HashMap::new();
    for (tenant, subs) in by_tenant {
        let subs: Vec<(&str, BTreeSet<&str>)> = subs.into_iter().collect();
        for chunk in subs.chunks(500) {
            let mut starts: BTreeSet<&str> =
                chunk.iter().flat_map(|(_, s)| s.iter().copied()).collect();
            let mut sql = format!(
                "SELECT subscription_id, meter, window_start, window_end, total, record_count FROM {table} \
                 WHERE tenant = $1 AND subscription_id IN ({})",
                params(2, chunk.len())
            );
            if starts.len() <= 500 {
                sql += &format!(
                    " AND window_start IN ({})",
                    params(2 + chunk.len(), starts.len())
                );
            } else {
                // Many windows (a rebuild's flush): every window of these
                // subscriptions, rather than thousands of parameters.
                starts.clear();
            }
            let mut q = sqlx::query(&sql).persistent(false).bind(tenant);
            for s in chunk.iter().map(|(sub, _)| sub).chain(starts.iter()) {
                q = q.bind(*s);
            }
            for row in q.fetch_all(&mut *conn).await? {
                let total: String = row.try_get("total")?;
                let total = total
                    .parse::<Decimal>()
                    .map_err(|e| ProjectionError::Effect(format!("{table}: {e}")))?;
                out.insert(
                    (
                        tenant.to_string(),
                        row.try_get("subscription_id")?,
                        row.try_get("meter")?,
                        row.try_get("window_start")?,
                    ),
                    (
                        row.try_get("window_end")?,
                        total,
                        row.try_get("record_count")?,
                    ),
                );
            }
        }
    }
    Ok(out)
}

/// The total of one window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowTotal {
    pub meter: String,
    pub total: Decimal,
    pub record_count: i64,
}

/// Total of (subscription, meter, window starting at `window_start`); zero when nothing was recorded.
pub async fn total(
    db: &Db,
    tenant: &str,
    subscription_id: &str,
    meter: &str,
    window_start: chrono::DateTime<chrono::Utc>,
) -> Result<WindowTotal, DbError> {
    let row: Option<(String, i64)> = sqlx::query_as(
        "SELECT total, record_count FROM rm_usage_totals \
         WHERE tenant = $1 AND subscription_id = $2 AND meter = $3 AND window_start = $4",
    )
    .bind(tenant)
    .bind(subscription_id)
    .bind(meter)
    .bind(time::to_text(window_start))
    .fetch_optional(&db.any)
    .await?;
    let (total, record_count) = match row {
        Some((t, c)) => (
            t.parse().map_err(|e: rust_decimal::Error| {
                DbError::Sqlx(sqlx::Error::Decode(Box::new(e)))
            })?,
            c,
        ),
        None => (Decimal::ZERO, 0),
    };
    Ok(WindowTotal {
        meter: meter.to_string(),
        total,
        record_count,
    })
}

pub async fn get(
    db: &Db,
    tenant: &str,
    id: &str,
) -> Result<Option<Versioned<UsageRecord>>, DbError> {
    let row =
        sqlx::query("SELECT id, body, version FROM rm_usage_records WHERE tenant = $1 AND id = $2")
            .bind(tenant)
            .bind(id)
            .fetch_optional(&db.any)
            .await?;
    row.map(|r| decode(&r)).transpose()
}

/// Filters of the record list.
#[derive(Debug, Default, Clone)]
pub struct RecordFilter {
    pub subscription_id: Option<String>,
    pub meter: Option<String>,
    /// Inclusive lower and exclusive upper bound on the record's timestamp.
    pub from: Option<chrono::DateTime<chrono::Utc>>,
    pub to: Option<chrono::DateTime<chrono::Utc>>,
}

/// Records in timestamp order, one page after `cursor` (`<timestamp>|<id>`).
pub async fn list(
    db: &Db,
    tenant: &str,
    f: &RecordFilter,
    limit: i64,
    cursor: Option<&str>,
) -> Result<Page<Versioned<UsageRecord>>, DbError> {
    let limit = limit.clamp(1, MAX_PAGE_LIMIT);
    let (after_ts, after_id) = cursor
        .and_then(|c| c.split_once('|'))
        .map(|(t, i)| (t.to_string(), i.to_string()))
        .unwrap_or_default();
    let mut sql = String::from(
        "SELECT id, body, version, ts FROM rm_usage_records WHERE tenant = $1 AND (ts > $2 OR (ts = $2 AND id > $3))",
    );
    let mut binds: Vec<String> = Vec::new();
    let mut push = |sql: &mut String, cond: &str, v: String| {
        binds.push(v);
        sql.push_str(&format!(" AND {cond} ${}", binds.len() + 3));
    };
    if let Some(s) = &f.subscription_id {
        push(&mut sql, "subscription_id =", s.clone());
    }
    if let Some(m) = &f.meter {
        push(&mut sql, "meter =", m.clone());
    }
    if let Some(t) = f.from {
        push(&mut sql, "ts >=", time::to_text(t));
    }
    if let Some(t) = f.to {
        push(&mut sql, "ts <", time::to_text(t));
    }
    sql.push_str(&format!(" ORDER BY ts, id LIMIT {}", limit + 1));
    let mut q = sqlx::query(&sql).bind(tenant).bind(after_ts).bind(after_id);
    for b in binds {
        q = q.bind(b);
    }
    let rows = q.fetch_all(&db.any).await?;
    let mut cursors = Vec::new();
    let mut data = Vec::new();
    for r in &rows {
        let ts: String = r.try_get("ts")?;
        let v = decode(r)?;
        cursors.push(format!("{ts}|{}", v.id));
        data.push(v);
    }
    let next_cursor = if data.len() as i64 > limit {
        data.truncate(limit as usize);
        cursors.get(limit as usize - 1).cloned()
    } else {
        None
    };
    Ok(Page { data, next_cursor })
}

fn decode(row: &sqlx::any::AnyRow) -> Result<Versioned<UsageRecord>, DbError> {
    let body: String = row.try_get("body")?;
    Ok(Versioned {
        id: row.try_get("id")?,
        state: serde_json::from_str(&body)
            .map_err(|e| DbError::Sqlx(sqlx::Error::Decode(Box::new(e))))?,
        version: row.try_get("version")?,
    })
}

/// One meter's entitlement: the usage of its window containing a given time
/// against its hard cap.
#[derive(Debug, Clone, PartialEq)]
pub struct Entitlement {
    pub meter: String,
    pub window: UsageWindow,
    pub used: Decimal,
    pub hard_cap: Option<Decimal>,
    /// What is left under the hard cap, never below zero; `None` without one.
    pub remaining: Option<Decimal>,
}

/// Entitlements of one subscription at `at`, per meter of its plan, from the
/// subscriptions and usage read models. `None` when the read model has no
/// such subscription; empty when it was never activated (no usage windows).
pub async fn entitlements(
    db: &Db,
    tenant: &str,
    subscription_id: &str,
    at: chrono::DateTime<chrono::Utc>,
) -> Result<Option<Vec<Entitlement>>, DbError> {
    let Some(sub) = crate::state::get::<Subscription>(db, tenant, subscription_id).await? else {
        return Ok(None);
    };
    let sub = sub.state;
    let (Some(anchor), Some(plan)) = (sub.usage_anchor(), sub.plan.as_ref()) else {
        return Ok(Some(Vec::new()));
    };
    let mut out = Vec::with_capacity(plan.meters.len());
    for m in &plan.meters {
        let window = usage_window(anchor, m.reset, at);
        let used = total(db, tenant, subscription_id, &m.key, window.start)
            .await?
            .total;
        out.push(Entitlement {
            meter: m.key.clone(),
            window,
            used,
            hard_cap: m.hard_cap,
            remaining: m.hard_cap.map(|c| (c - used).max(Decimal::ZERO)),
        });
    }
    Ok(Some(out))
}
