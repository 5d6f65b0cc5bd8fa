//! Idempotency keys. A POST with `Idempotency-Key` first reserves the key
//! (an insert that only one request can win, also across processes); the
//! winner runs the command and stores its response; a repeat with the same
//! body gets that response back, a repeat with another body is refused. A
//! request that finds the key reserved but not yet completed waits for the
//! first one (bounded), so two simultaneous requests give one effect. A
//! reservation abandoned by a dead process is taken over after
//! [`STALE_AFTER`], unless the log shows its command took effect.

use std::time::Duration;

use chrono::Utc;
use tally_projections::db::{Db, DbError};
use tally_projections::time;

/// How long a repeat waits for the first request to finish.
pub const IN_FLIGHT_WAIT: Duration = Duration::from_secs(10);
/// A reservation older than this whose request never completed (its process
/// died) may be taken over.
pub const STALE_AFTER: chrono::Duration = chrono::Duration::seconds(60);
/// Keys are kept at least this long (API.md: at least 24 h).
pub const RETENTION: chrono::Duration = chrono::Duration::hours(48);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResponse {
    pub status: u16,
    pub body: String,
    /// Headers to repeat (JSON object of name → value).
    pub headers: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reservation {
    /// This request owns the key: run it, then `complete` or `release`.
    Proceed,
    /// The key was used with this body before: answer this.
    Replay(StoredResponse),
    /// The key was used with another body.
    Mismatch,
    /// The first request with this key is still running after the wait.
    InFlight,
    /// The first request abandoned its reservation (its process died, or it
    /// was cut off) after its command appended events: the command took
    /// effect but its answer was never stored. Running it again would apply
    /// it twice.
    Applied,
}

/// request_hash, state, response status, body, headers, created_at.
type KeyRow = (
    String,
    String,
    Option<i64>,
    Option<String>,
    Option<String>,
    String,
);

pub async fn reserve(
    db: &Db,
    tenant: &str,
    key: &str,
    request_hash: &str,
) -> Result<Reservation, DbError> {
    let deadline = tokio::time::Instant::now() + IN_FLIGHT_WAIT;
    loop {
        let now = Utc::now();
        let inserted = sqlx::query(
            "INSERT INTO idempotency_keys (tenant, idem_key, request_hash, state, created_at) \
             VALUES ($1, $2, $3, 'pending', $4) ON CONFLICT (tenant, idem_key) DO NOTHING",
        )
        .bind(tenant)
        .bind(key)
        .bind(request_hash)
        .bind(time::to_text(now))
        .execute(&db.any)
        .await?;
        if inserted.rows_affected() == 1 {
            return Ok(Reservation::Proceed);
        }
        let row: Option<KeyRow> = sqlx::query_as(
            "SELECT request_hash, state, response_status, response_body, response_headers, created_at \
             FROM idempotency_keys WHERE tenant = $1 AND idem_key = $2",
        )
        .bind(tenant)
        .bind(key)
        .fetch_optional(&db.any)
        .await?;
        let Some((hash, state, status, body, headers, created_at)) = row else {
            // Released between our insert and select: try again.
            continue;
        };
        if hash != request_hash {
            return Ok(Reservation::Mismatch);
        }
        if state == "complete" {
            return Ok(Reservation::Replay(StoredResponse {
                status: status.unwrap_or(200) as u16,
                body: body.unwrap_or_default(),
                headers: headers.unwrap_or_else(|| "{}".into()),
            }));
        }
        let stale = time::from_text(&created_at).is_none_or(|t| now - t > STALE_AFTER);
        if stale {
            if applied(db, tenant, key).await? {
                return Ok(Reservation::Applied);
            }
            let taken = sqlx::query(
                "UPDATE idempotency_keys SET created_at = $1 WHERE tenant = $2 AND idem_key = $3 \
                 AND state = 'pending' AND created_at = $4",
            )
            .bind(time::to_text(now))
            .bind(tenant)
            .bind(key)
            .bind(&created_at)
            .execute(&db.any)
            .await?;
            if taken.rows_affected() == 1 {
                return Ok(Reservation::Proceed);
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(Reservation::InFlight);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether the tenant's log holds events appended under `key` (commands
/// carry it in their events' metadata). Only asked of abandoned
/// reservations, so the scan of the tenant's events is rare.
async fn applied(db: &Db, tenant: &str, key: &str) -> Result<bool, DbError> {
    let sql = db.sql(
        "SELECT 1 FROM events WHERE tenant = $1 AND metadata->>'idempotency_key' = $2 LIMIT 1",
        "SELECT 1 FROM events WHERE tenant = $1 \
         AND json_extract(metadata, '$.idempotency_key') = $2 LIMIT 1",
    );
    let found = sqlx::query(sql)
        .bind(tenant)
        .bind(key)
        .fetch_optional(&db.any)
        .await?;
    Ok(found.is_some())
}

/// Stores the response of the request that owns the key.
pub async fn complete(
    db: &Db,
    tenant: &str,
    key: &str,
    response: &StoredResponse,
) -> Result<(), DbError> {
    sqlx::query(
        "UPDATE idempotency_keys SET state = 'complete', response_status = $1, response_body = $2, \
         response_headers = $3 WHERE tenant = $4 AND idem_key = $5",
    )
    .bind(response.status as i64)
    .bind(&response.body)
    .bind(&response.headers)
    .bind(tenant)
    .bind(key)
    .execute(&db.any)
    .await?;
    Ok(())
}

/// Gives the key up (the request failed in a way a retry may fix).
pub async fn release(db: &Db, tenant: &str, key: &str) -> Result<(), DbError> {
    sqlx::query(
        "DELETE FROM idempotency_keys WHERE tenant = $1 AND idem_key = $2 AND state = 'pending'",
    )
    .bind(tenant)
    .bind(key)
    .execute(&db.any)
    .await?;
    Ok(())
}

/// Deletes keys past their retention.
pub async fn purge(db: &Db) -> Result<u64, DbError> {
    let cutoff = time::to_text(Utc::now() - RETENTION);
    let r = sqlx::query("DELETE FROM idempotency_keys WHERE created_at < $1")
        .bind(cutoff)
        .execute(&db.any)
        .await?;
    Ok(r.rows_affected())
}
