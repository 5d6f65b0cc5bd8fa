//! The "folded state" read model shape shared by plans and subscriptions: one
//! row per resource holding its state folded from its events with the
//! aggregate's own `evolve` (so the read model and the write side can never
//! disagree on what an event means), plus the columns lists filter on.

use std::marker::PhantomData;

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use serde::Serialize;
use sqlx::{AnyConnection, Row};

use crate::db::{Db, DbError};
use crate::log::StoredEvent;
use crate::runtime::{ProjectionError, Projector};
use crate::tables::Tables;
use crate::{Page, MAX_PAGE_LIMIT};

/// An aggregate state kept as a read model row.
pub trait ProjectedState: Default + Serialize + DeserializeOwned + Send + Sync + 'static {
    type Event: DeserializeOwned + Send;
    /// The aggregate type in the log.
    const AGGREGATE: &'static str;
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
pub struct StateProjector<S>(PhantomData<fn() -> S>);

impl<S> Default for StateProjector<S> {
    fn default() -> Self {
        Self(PhantomData)
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

    fn handles(&self, event: &StoredEvent) -> bool {
        event.aggregate_type == S::AGGREGATE
    }

    async fn apply(
        &self,
        conn: &mut AnyConnection,
        t: Tables,
        event: &StoredEvent,
    ) -> Result<(), ProjectionError> {
        if event.aggregate_type != S::AGGREGATE {
            return Ok(());
        }
        let id = event.resource_id();
        let table = t.name(S::TABLE);
        let row = sqlx::query(&format!(
            "SELECT body, version FROM {table} WHERE tenant = $1 AND id = $2"
        ))
        .bind(&event.tenant)
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
        let mut state = match row {
            Some(row) => {
                let version: i64 = row.try_get("version")?;
                if version >= event.sequence {
                    // Already applied: a projector must be idempotent.
                    return Ok(());
                }
                let body: String = row.try_get("body")?;
                serde_json::from_str::<S>(&body).map_err(|e| ProjectionError::decode(event, e))?
            }
            None => S::default(),
        };
        let decoded: S::Event = event
            .decode()
            .map_err(|e| ProjectionError::decode(event, e))?;
        state.fold(&decoded);
        let body = serde_json::to_string(&state).map_err(|e| ProjectionError::decode(event, e))?;
        let filters = state.filter_values();
        let cols = S::FILTER_COLUMNS.join(", ");
        let params: Vec<String> = (0..S::FILTER_COLUMNS.len())
            .map(|i| format!("${}", i + 5))
            .collect();
        let updates: Vec<String> = S::FILTER_COLUMNS
            .iter()
            .map(|c| format!("{c} = excluded.{c}"))
            .collect();
        let sql = format!(
            "INSERT INTO {table} (tenant, id, body, version, {cols}) VALUES ($1, $2, $3, $4, {params}) \
             ON CONFLICT (tenant, id) DO UPDATE SET body = excluded.body, version = excluded.version, {updates}",
            params = params.join(", "),
            updates = updates.join(", "),
        );
        let mut q = sqlx::query(&sql)
            .bind(&event.tenant)
            .bind(id)
            .bind(body)
            .bind(event.sequence);
        for v in filters {
            q = q.bind(v);
        }
        q.execute(&mut *conn).await?;
        Ok(())
    }
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
    let row = sqlx::query(&format!(
        "SELECT id, body, version FROM {} WHERE tenant = $1 AND id = $2",
        S::TABLE
    ))
    .bind(tenant)
    .bind(id)
    .fetch_optional(&db.any)
    .await?;
    row.map(|r| decode_row(&r)).transpose()
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
