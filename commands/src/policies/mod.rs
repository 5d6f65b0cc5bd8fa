//! Policies (process managers): consumers of the log and clock-driven
//! schedulers that turn events and time into further commands, with
//! causation metadata pointing at the event.

pub mod billing;
pub mod collections;
pub mod quota;

use std::time::Duration;

use tally_projections::runtime::{checkpoints, ProjectionError};
use tally_projections::{Db, StoredEvent};

use sqlx::Row;
use tally_aggregates::Subscription;

use crate::dispatch::{CommandError, CommandMeta, Dispatcher};

/// The metadata of a command a policy issues because of `event`.
pub fn system_meta(event: &StoredEvent, actor: &str) -> CommandMeta {
    CommandMeta {
        tenant: event.tenant.clone(),
        actor: actor.into(),
        request_id: uuid::Uuid::now_v7().to_string(),
        correlation_id: event
            .metadata
            .get("correlation_id")
            .cloned()
            .unwrap_or_else(|| event.event_id.clone()),
        causation_id: Some(event.event_id.clone()),
        idempotency_key: None,
    }
}

/// The metadata of a command a scheduler issues on its own (no causing event).
pub fn scheduler_meta(tenant: &str, actor: &str) -> CommandMeta {
    CommandMeta {
        tenant: tenant.to_string(),
        actor: actor.into(),
        request_id: uuid::Uuid::now_v7().to_string(),
        correlation_id: uuid::Uuid::now_v7().to_string(),
        causation_id: None,
        idempotency_key: None,
    }
}

/// How often [`wait_for_consumers`] reads the checkpoints.
const CHECKPOINT_POLL: Duration = Duration::from_millis(10);

/// Waits until the named read models have reached `position`, or fails the
/// batch (it is retried) after `timeout`.
pub async fn wait_for_consumers(
    db: &Db,
    consumers: &[&str],
    position: i64,
    timeout: Duration,
) -> Result<(), ProjectionError> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let at = checkpoints(db).await?;
        if consumers
            .iter()
            .all(|c| at.get(*c).copied().unwrap_or(0) >= position)
        {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(ProjectionError::Effect(format!(
                "read models {consumers:?} have not reached position {position}"
            )));
        }
        // Polled at a fixed pace: waking on every append read the
        // checkpoints thousands of times a second under usage ingest.
        tokio::time::sleep(CHECKPOINT_POLL).await;
    }
}

/// Subscriptions of every tenant in `status`, as the read model folded them
/// (tenant, id, state): what the schedulers scan, without touching the write
/// side. Whatever they then change is decided again on the write side.
pub async fn subscriptions_in(
    d: &Dispatcher,
    status: &str,
    limit: i64,
) -> Result<Vec<(String, String, Subscription)>, CommandError> {
    let store = |e: sqlx::Error| CommandError::Store(e.to_string());
    let rows = sqlx::query(
        "SELECT tenant, id, body FROM rm_subscriptions WHERE status = $1 ORDER BY tenant, id LIMIT $2",
    )
    .bind(status)
    .bind(limit)
    .fetch_all(&d.db().any)
    .await
    .map_err(|e| CommandError::from(tally_projections::DbError::Sqlx(e)))?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let body: String = row.try_get("body").map_err(store)?;
        let sub: Subscription =
            serde_json::from_str(&body).map_err(|e| CommandError::Store(e.to_string()))?;
        out.push((
            row.try_get("tenant").map_err(store)?,
            row.try_get("id").map_err(store)?,
            sub,
        ));
    }
    Ok(out)
}
