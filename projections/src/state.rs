//! The "folded state" read model shape shared by plans and subscriptions: one
//! row per resource holding its state folded from its events with the
//! aggregate's own `evolve` (so the read model and the write side can never
//! disagree on what an event means), plus the columns lists filter on.

use std::any::Any;
use std::collections::{HashMap, HashSet};
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use serde::Serialize;
use sqlx::{AnyConnection, Row};
use tally_aggregates::AggregateKind;

use crate::db::{Db, DbError};
use crate::log::StoredEvent;
use crate::runtime::{ProjectionError, Projector};
use crate::tables::Tables;
use crate::{Page, MAX_PAGE_LIMIT};

/// An aggregate state kept as a read model row.
pub trait ProjectedState:
    Default + Clone + Serialize + DeserializeOwned + Send + Sync + 'static
{
    type Event: DeserializeOwned + Send;
    /// The aggregate type in the log.
    const AGGREGATE: AggregateKind;
    /// The consumer (checkpoint) name.
    const CONSUMER: &'static str;
    /// The read model table; it has `tenant, id, body, version` and the
    /// filter columns.
    const TABLE: &'static str;
    /// The filter columns, in the order `filter_values` returns them.
    const FILTER_COLUMNS: &'static [&'static str];

    fn fold(&mut self, event: &Self::Event);
    fn filter_values(&self) -> Vec<String>;
}

/// The projector of one `ProjectedState`.
pub struct StateProjector<S> {
    /// The row cache of the database it was attached to.
    rows: std::sync::OnceLock<RowCache>,
    state: PhantomData<fn() -> S>,
}

impl<S> Default for StateProjector<S> {
    fn default() -> Self {
        Self {
            rows: Default::default(),
            state: PhantomData,
        }
    }
}

/// One cached row: its version and its `Versioned<S>`.
type CachedRow = (i64, Arc<dyn Any + Send + Sync>);

/// Rows of folded-state read models, kept in memory by the process that runs
/// their projector, so that reading one costs no query.
///
/// An entry is only ever a state the log has committed: the projector puts
/// what it folds (in its batch, before the commit that may fail and be
/// retried with the same result) and a read puts what it read; a version
/// never replaces a newer one. Entries are served only while this process
/// owns the table's projector: another runner could write rows this cache
/// never sees, so taking or losing ownership, a checkpoint moved by someone
/// else (a takeover, a rebuild's swap) and a reset all empty the table's
/// entries.
#[derive(Clone, Default)]
pub struct RowCache(Arc<Mutex<RowCacheInner>>);

#[derive(Default)]
struct RowCacheInner {
    owned: HashSet<&'static str>,
    rows: HashMap<(&'static str, String, String), CachedRow>,
}

/// Rows the cache keeps at most.
pub const ROW_CACHE_ROWS: usize = 10_000;

impl std::fmt::Debug for RowCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.0.lock().expect("row cache");
        f.debug_struct("RowCache")
            .field("owned", &inner.owned)
            .field("rows", &inner.rows.len())
            .finish()
    }
}

impl RowCache {
    /// Starts (or stops) serving `tables` from memory, empty either way.
    pub fn own(&self, tables: &[&'static str], owned: bool) {
        let mut inner = self.0.lock().expect("row cache");
        for t in tables {
            if owned {
                inner.owned.insert(t);
            } else {
                inner.owned.remove(t);
            }
        }
        inner.rows.retain(|(t, _, _), _| !tables.contains(t));
    }

    /// Forgets every row of `tables`.
    pub fn clear(&self, tables: &[&'static str]) {
        let mut inner = self.0.lock().expect("row cache");
        inner.rows.retain(|(t, _, _), _| !tables.contains(t));
    }

    fn get<S: ProjectedState>(&self, tenant: &str, id: &str) -> Option<Versioned<S>> {
        let inner = self.0.lock().expect("row cache");
        if !inner.owned.contains(S::TABLE) {
            return None;
        }
        let (_, row) = inner
            .rows
            .get(&(S::TABLE, tenant.to_string(), id.to_string()))?;
        row.downcast_ref::<Versioned<S>>().cloned()
    }

    fn put<S: ProjectedState>(&self, tenant: &str, row: Versioned<S>) {
        let mut inner = self.0.lock().expect("row cache");
        if !inner.owned.contains(S::TABLE) {
            return;
        }
        let key = (S::TABLE, tenant.to_string(), row.id.clone());
        if inner.rows.get(&key).is_some_and(|(v, _)| *v >= row.version) {
            return;
        }
        if inner.rows.len() >= ROW_CACHE_ROWS && !inner.rows.contains_key(&key) {
            // Any entry will do: a miss costs one read.
            if let Some(victim) = inner.rows.keys().next().cloned() {
                inner.rows.remove(&victim);
            }
        }
        inner.rows.insert(key, (row.version, Arc::new(row)));
    }
}

#[async_trait]
impl<S: ProjectedState> Projector for StateProjector<S> {
    fn name(&self) -> &'static str {
        S::CONSUMER
    }

    fn tables(&self) -> &'static [&'static str] {
        std::slice::from_ref(&S::TABLE)
    }

    fn attach(&self, db: &Db) {
        let _ = self.rows.set(db.rows.clone());
    }

    fn bulk(&self) -> Option<Box<dyn crate::bulk::BulkFold>> {
        Some(Box::new(crate::bulk::StateBulk::<S>::new()))
    }

    fn handles(&self, event: &StoredEvent) -> bool {
        event.is(S::AGGREGATE)
    }

    async fn apply(
        &self,
        conn: &mut AnyConnection,
        t: Tables,
        event: &StoredEvent,
    ) -> Result<(), ProjectionError> {
        self.apply_batch(conn, t, &[event]).await
    }

    /// Reads each stream's row once, folds all of its events of the batch,
    /// and writes the changed rows in multi-row upserts: a few statements per
    /// batch instead of two per event.
    async fn apply_batch(
        &self,
        conn: &mut AnyConnection,
        t: Tables,
        events: &[&StoredEvent],
    ) -> Result<(), ProjectionError> {
        let table = t.name(S::TABLE);
        let cache = self.rows.get().filter(|_| t == Tables::Live);
        let known = |tenant: &str, id: &str| {
            cache
                .and_then(|c| c.get::<S>(tenant, id))
                .map(|v| (v.state, v.version))
        };
        let folded =
            fold_batch::<S, S::Event>(conn, &table, S::AGGREGATE, events, known, |s, e, _| {
                s.fold(e)
            })
            .await?;
        let mut rows = Vec::with_capacity(folded.len());
        for f in folded {
            rows.push((row_values(&f.tenant, &f.id, &f.state)?, f.version));
            if let Some(cache) = cache {
                cache.put(
                    &f.tenant,
                    Versioned {
                        id: f.id,
                        state: f.state,
                        version: f.version,
                    },
                );
            }
        }
        upsert_rows::<S>(conn, &table, rows).await
    }
}

/// The columns of a folded-state row but its version, in the order of
/// [`row_columns`]: `tenant, id, body` and the filter values.
pub(crate) fn row_values<S: ProjectedState>(
    tenant: &str,
    id: &str,
    state: &S,
) -> Result<Vec<String>, ProjectionError> {
    let body = serde_json::to_string(state).map_err(|e| ProjectionError::Effect(e.to_string()))?;
    let mut values = vec![tenant.to_string(), id.to_string(), body];
    values.extend(state.filter_values());
    Ok(values)
}

/// The columns of a folded-state table, in the order [`row_values`] gives
/// them, then `version`.
pub(crate) fn row_columns<S: ProjectedState>() -> Vec<&'static str> {
    let mut cols = vec!["tenant", "id", "body"];
    cols.extend_from_slice(S::FILTER_COLUMNS);
    cols.push("version");
    cols
}

/// One stream's state after a batch, with its new version.
pub(crate) struct Folded<A> {
    pub tenant: String,
    pub id: String,
    pub state: A,
    pub version: i64,
}

/// The fold of a batch for a one-row-per-stream read model: the events of
/// `aggregate` grouped by stream, each stream's stored row read once (chunks
/// of streams per query), the events above its version folded onto it with
/// `fold` (given the decoded and the stored event). Returns the streams that
/// changed, in first-seen order.
///
/// `known` may give a stream's row without a read: a state at least as new
/// as the stored row (the row cache of the process that owns the table).
/// Such a stream is always written back, since the stored row may be older.
pub(crate) async fn fold_batch<A, E>(
    conn: &mut AnyConnection,
    table: &str,
    aggregate: AggregateKind,
    events: &[&StoredEvent],
    known: impl Fn(&str, &str) -> Option<(A, i64)> + Send,
    mut fold: impl FnMut(&mut A, &E, &StoredEvent) + Send,
) -> Result<Vec<Folded<A>>, ProjectionError>
where
    A: Default + DeserializeOwned + Send,
    E: DeserializeOwned,
{
    let mut streams: Vec<((&str, &str), Vec<&StoredEvent>)> = Vec::new();
    let mut index: HashMap<(&str, &str), usize> = HashMap::new();
    for e in events.iter().filter(|e| e.is(aggregate)) {
        let key = (e.tenant.as_str(), e.resource_id());
        let at = *index.entry(key).or_insert_with(|| {
            streams.push((key, Vec::new()));
            streams.len() - 1
        });
        streams[at].1.push(e);
    }
    if streams.is_empty() {
        return Ok(Vec::new());
    }
    let mut cached: HashMap<(&str, &str), (A, i64)> = HashMap::new();
    for (key, _) in &streams {
        if let Some(row) = known(key.0, key.1) {
            cached.insert(*key, row);
        }
    }
    // A stream whose first event here is its first event (sequence 1) is
    // new: no earlier event of it was applied, so it has no row to read
    // (every usage record of an ingest batch; reading them cost a query per
    // 500 records, and a scan of the table when the planner had no
    // statistics).
    let keys: Vec<(&str, &str)> = streams
        .iter()
        .filter(|(k, events)| events[0].sequence > 1 && !cached.contains_key(k))
        .map(|(k, _)| *k)
        .collect();
    let mut current = if keys.is_empty() {
        HashMap::new()
    } else {
        load_rows(conn, table, &keys).await?
    };
    let mut out = Vec::new();
    for ((tenant, id), stream) in streams {
        let mut changed = false;
        let (mut state, mut version) = match cached.remove(&(tenant, id)) {
            Some(row) => {
                changed = true;
                row
            }
            None => match current.remove(&(tenant.to_string(), id.to_string())) {
                Some((body, version)) => (
                    serde_json::from_str::<A>(&body)
                        .map_err(|e| ProjectionError::decode(stream[0], e))?,
                    version,
                ),
                None => (A::default(), 0),
            },
        };
        for event in stream {
            if event.sequence <= version {
                // Already applied: a projector must be idempotent.
                continue;
            }
            let decoded: E = event
                .decode()
                .map_err(|e| ProjectionError::decode(event, e))?;
            fold(&mut state, &decoded, event);
            version = event.sequence;
            changed = true;
        }
        if changed {
            out.push(Folded {
                tenant: tenant.to_string(),
                id: id.to_string(),
                state,
                version,
            });
        }
    }
    Ok(out)
}

/// Keys read per query.
const KEYS_PER_QUERY: usize = 500;
/// Rows written per statement.
const ROWS_PER_UPSERT: usize = 200;

/// The stored `(body, version)` of each `(tenant, id)` that has a row.
pub(crate) async fn load_rows(
    conn: &mut AnyConnection,
    table: &str,
    keys: &[(&str, &str)],
) -> Result<HashMap<(String, String), (String, i64)>, ProjectionError> {
    let mut by_tenant: HashMap<&str, Vec<&str>> = HashMap::new();
    for (tenant, id) in keys {
        by_tenant.entry(tenant).or_default().push(id);
    }
    let mut out = HashMap::new();
    for (tenant, ids) in by_tenant {
        for chunk in ids.chunks(KEYS_PER_QUERY) {
            let params: Vec<String> = (0..chunk.len()).map(|i| format!("${}", i + 2)).collect();
            let sql = format!(
                "SELECT id, body, version FROM {table} WHERE tenant = $1 AND id IN ({})",
                params.join(", ")
            );
            // Planned with its keys (an unnamed statement): a generic plan,
            // made while the table was small, scans every row for each of
            // the 500 keys once it is large (1.4 s a batch of usage records
            // at 230,000 rows, where the index answers in a millisecond).
            let mut q = sqlx::query(&sql).persistent(false).bind(tenant);
            for id in chunk {
                q = q.bind(*id);
            }
            for row in q.fetch_all(&mut *conn).await? {
                out.insert(
                    (tenant.to_string(), row.try_get("id")?),
                    (row.try_get("body")?, row.try_get("version")?),
                );
            }
        }
    }
    Ok(out)
}

/// Writes rows of `(tenant, id, body, filter values…)` and their versions.
async fn upsert_rows<S: ProjectedState>(
    conn: &mut AnyConnection,
    table: &str,
    rows: Vec<(Vec<String>, i64)>,
) -> Result<(), ProjectionError> {
    let cols = S::FILTER_COLUMNS;
    let width = 4 + cols.len();
    let updates: Vec<String> = cols
        .iter()
        .map(|c| format!(", {c} = excluded.{c}"))
        .collect();
    for chunk in rows.chunks(ROWS_PER_UPSERT) {
        let sql = format!(
            "INSERT INTO {table} (tenant, id, body, {cols}{sep}version) VALUES {tuples} \
             ON CONFLICT (tenant, id) DO UPDATE SET body = excluded.body, version = excluded.version{updates}",
            cols = cols.join(", "),
            sep = if cols.is_empty() { "" } else { ", " },
            tuples = crate::db::value_rows(chunk.len(), width),
            updates = updates.concat(),
        );
        let sql = crate::db::for_conn(conn, sql);
        let mut q = sqlx::query(&sql);
        for (values, version) in chunk {
            for v in values {
                q = q.bind(v.as_str());
            }
            q = q.bind(*version);
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}

/// One resource of the read model with its version (stream sequence).
#[derive(Debug, Clone)]
pub struct Versioned<S> {
    pub id: String,
    pub state: S,
    pub version: i64,
}

/// Reads one resource.
pub async fn get<S: ProjectedState>(
    db: &Db,
    tenant: &str,
    id: &str,
) -> Result<Option<Versioned<S>>, DbError> {
    if let Some(row) = db.rows.get::<S>(tenant, id) {
        return Ok(Some(row));
    }
    let row = sqlx::query(&format!(
        "SELECT id, body, version FROM {} WHERE tenant = $1 AND id = $2",
        S::TABLE
    ))
    .bind(tenant)
    .bind(id)
    .fetch_optional(&db.any)
    .await?;
    let row: Option<Versioned<S>> = row.map(|r| decode_row(&r)).transpose()?;
    if let Some(row) = &row {
        db.rows.put(tenant, row.clone());
    }
    Ok(row)
}

/// Lists resources in id order (ids are time-sortable), filtered by equality
/// on filter columns, one page after `cursor`.
pub async fn list<S: ProjectedState>(
    db: &Db,
    tenant: &str,
    filters: &[(&str, Option<String>)],
    limit: i64,
    cursor: Option<&str>,
) -> Result<Page<Versioned<S>>, DbError> {
    let limit = limit.clamp(1, MAX_PAGE_LIMIT);
    let mut sql = format!(
        "SELECT id, body, version FROM {} WHERE tenant = $1 AND id > $2",
        S::TABLE
    );
    let mut binds = Vec::new();
    for (col, value) in filters {
        debug_assert!(S::FILTER_COLUMNS.contains(col));
        if let Some(v) = value {
            binds.push(v.clone());
            sql.push_str(&format!(" AND {col} = ${}", binds.len() + 2));
        }
    }
    sql.push_str(&format!(" ORDER BY id LIMIT {}", limit + 1));
    let mut q = sqlx::query(&sql).bind(tenant).bind(cursor.unwrap_or(""));
    for b in binds {
        q = q.bind(b);
    }
    let rows = q.fetch_all(&db.any).await?;
    let mut data = rows
        .iter()
        .map(decode_row)
        .collect::<Result<Vec<Versioned<S>>, _>>()?;
    let next_cursor = if data.len() as i64 > limit {
        data.truncate(limit as usize);
        data.last().map(|v| v.id.clone())
    } else {
        None
    };
    Ok(Page { data, next_cursor })
}

fn decode_row<S: ProjectedState>(row: &sqlx::any::AnyRow) -> Result<Versioned<S>, DbError> {
    let body: String = row.try_get("body")?;
    Ok(Versioned {
        id: row.try_get("id")?,
        state: serde_json::from_str(&body)
            .map_err(|e| DbError::Sqlx(sqlx::Error::Decode(Box::new(e))))?,
        version: row.try_get("version")?,
    })
}
