//! The endpoint store: endpoints and deliveries as the API shows them,
//! topic patterns, and the handle's management methods (create, list,
//! enable, delete, retry).

use super::*;

// ---- topics ----

/// Whether a subscription pattern (a topic, or a family `prefix.*`) covers `topic`.
pub fn topic_matches(pattern: &str, topic: &str) -> bool {
    match pattern.strip_suffix(".*") {
        Some(family) => {
            topic.len() > family.len() + 1
                && topic.starts_with(family)
                && topic.as_bytes()[family.len()] == b'.'
        }
        None => pattern == topic,
    }
}

/// Checks an endpoint's topics: 1 to [`MAX_TOPICS`], each a published topic
/// or a family (`billing.subscriptions.v1.*`) holding at least one.
pub fn validate_topics(topics: &[String]) -> Result<Vec<String>, String> {
    if topics.is_empty() {
        return Err("give at least one topic".into());
    }
    if topics.len() > MAX_TOPICS {
        return Err(format!("at most {MAX_TOPICS} topics"));
    }
    let mut out: Vec<String> = Vec::new();
    for t in topics {
        let known = if t.ends_with(".*") {
            topics::TOPICS.iter().any(|s| topic_matches(t, s.topic))
        } else {
            topics::spec(t).is_some()
        };
        if !known {
            return Err(format!(
                "`{}` is not a published topic or a family (`….*`) of one",
                t.chars().take(120).collect::<String>()
            ));
        }
        if !out.contains(t) {
            out.push(t.clone());
        }
    }
    Ok(out)
}

// ---- what the API shows ----

#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    pub id: String,
    pub url: String,
    pub topics: Vec<String>,
    /// active | disabled
    pub status: String,
    pub created_at: String,
    /// Since when every attempt has failed (none succeeded in between).
    pub failing_since: Option<String>,
    pub disabled_at: Option<String>,
}

/// A new endpoint and its secret, which is shown this once.
#[derive(Debug, Clone)]
pub struct CreatedEndpoint {
    pub endpoint: Endpoint,
    pub secret: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    pub id: String,
    pub endpoint_id: String,
    pub event_id: String,
    pub topic: String,
    /// pending | delivered | retrying | paused | dead. `paused` is not
    /// stored: it is how a pending or retrying delivery of a disabled
    /// endpoint reads (no attempt is due until the endpoint is enabled).
    pub status: String,
    pub attempts: i64,
    pub last_status_code: Option<i64>,
    pub last_latency_ms: Option<i64>,
    pub last_error: Option<String>,
    pub last_attempt_at: Option<String>,
    pub next_attempt_at: Option<String>,
    pub delivered_at: Option<String>,
    pub created_at: String,
}

/// One line of the delivery log.
#[derive(Debug, Clone, PartialEq)]
pub struct Attempt {
    pub attempt: i64,
    pub attempted_at: String,
    pub status_code: Option<i64>,
    pub latency_ms: i64,
    /// delivered | failed
    pub outcome: String,
    pub error: Option<String>,
}

pub(super) fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

pub(super) const ENDPOINT_COLUMNS: &str =
    "id, url, topics, status, created_at, failing_since, disabled_at";

pub(super) fn endpoint_row(r: &AnyRow) -> Result<Endpoint, DbError> {
    let topics: String = r.try_get("topics")?;
    Ok(Endpoint {
        id: r.try_get("id")?,
        url: r.try_get("url")?,
        topics: serde_json::from_str(&topics).unwrap_or_default(),
        status: r.try_get("status")?,
        created_at: r.try_get("created_at")?,
        failing_since: non_empty(r.try_get("failing_since")?),
        disabled_at: non_empty(r.try_get("disabled_at")?),
    })
}

/// Deliveries as their endpoint's state shows them (API.md § Webhooks):
/// while the endpoint is disabled the worker claims none of its deliveries,
/// so one that would be pending or retrying reads `paused`, with no next
/// attempt, rather than showing a due time that will not come. One
/// statement reads the delivery and its endpoint, so both are of the same
/// moment (the worker records an attempt and disables the endpoint in one
/// transaction); a deleted endpoint's deliveries are gone with it.
const SEEN_STATUS: &str =
    "CASE WHEN e.status = 'disabled' AND d.status IN ('pending', 'retrying') \
    THEN 'paused' ELSE d.status END";

fn seen_deliveries() -> String {
    format!(
        "SELECT d.id, d.endpoint_id, d.event_id, d.topic, {SEEN_STATUS} AS status, d.attempts, \
         d.last_status_code, d.last_latency_ms, d.last_error, d.last_attempt_at, d.next_attempt_at, \
         d.delivered_at, d.created_at \
         FROM webhook_deliveries d JOIN webhook_endpoints e ON e.tenant = d.tenant AND e.id = d.endpoint_id"
    )
}

pub(super) fn delivery_row(r: &AnyRow) -> Result<Delivery, DbError> {
    let status: String = r.try_get("status")?;
    let next: String = r.try_get("next_attempt_at")?;
    Ok(Delivery {
        id: r.try_get("id")?,
        endpoint_id: r.try_get("endpoint_id")?,
        event_id: r.try_get("event_id")?,
        topic: r.try_get("topic")?,
        // Only a delivery that will be tried has a next attempt.
        next_attempt_at: if status == "pending" || status == "retrying" {
            non_empty(next)
        } else {
            None
        },
        status,
        attempts: r.try_get("attempts")?,
        last_status_code: r.try_get("last_status_code")?,
        last_latency_ms: r.try_get("last_latency_ms")?,
        last_error: r.try_get("last_error")?,
        last_attempt_at: non_empty(r.try_get("last_attempt_at")?),
        delivered_at: non_empty(r.try_get("delivered_at")?),
        created_at: r.try_get("created_at")?,
    })
}

/// A delivery claimed by this worker, with what sending it needs.
#[derive(Debug, Clone)]
pub(super) struct Claimed {
    pub(super) id: String,
    pub(super) tenant: String,
    pub(super) endpoint_id: String,
    pub(super) event_id: String,
    pub(super) topic: String,
    pub(super) body: String,
    pub(super) attempts: i64,
    pub(super) attempts_left: i64,
    pub(super) delivered_at: String,
    pub(super) url: String,
    pub(super) salt: String,
    pub(super) key_id: String,
}

impl Webhooks {
    /// Registers an endpoint; its secret is in the answer and nowhere else.
    pub async fn create_endpoint(
        &self,
        tenant: &str,
        created_by: &str,
        url: &str,
        topics: &[String],
    ) -> Result<CreatedEndpoint, WebhookError> {
        let topics = validate_topics(topics).map_err(|message| WebhookError::Invalid {
            field: "topics",
            message,
        })?;
        let url = check_url(&self.inner.config.allowed_hosts, url)
            .await
            .map_err(|e| WebhookError::Invalid {
                field: "url",
                message: e.to_string(),
            })?;
        let db = &self.inner.db;
        let count: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM webhook_endpoints WHERE tenant = $1 AND status <> 'deleted'",
        )
        .bind(tenant)
        .fetch_one(&db.any)
        .await?;
        if count >= MAX_ENDPOINTS_PER_TENANT {
            return Err(WebhookError::Invalid {
                field: "url",
                message: format!("a tenant has at most {MAX_ENDPOINTS_PER_TENANT} endpoints"),
            });
        }
        let id = WebhookEndpointId::generate().into_string();
        let mut salt = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut salt);
        let salt = hex::encode(salt);
        let key_id = self.inner.keys.current.clone();
        let secret = self
            .inner
            .keys
            .secret(&key_id, &id, &salt)
            .ok_or_else(|| WebhookError::Config("the signing key is not loaded".into()))?;
        // Events recorded from now on are delivered to it, earlier ones not.
        let created_position = EventLog::new(db.clone()).head().await?;
        let now = time::to_text(self.inner.clock.now());
        sqlx::query(
            "INSERT INTO webhook_endpoints (tenant, id, url, topics, status, secret_salt, secret_key_id, \
             created_by, created_at, created_position) VALUES ($1, $2, $3, $4, 'active', $5, $6, $7, $8, $9)",
        )
        .bind(tenant)
        .bind(&id)
        .bind(url.as_str())
        .bind(serde_json::to_string(&topics).unwrap_or_else(|_| "[]".into()))
        .bind(&salt)
        .bind(&key_id)
        .bind(created_by)
        .bind(&now)
        .bind(created_position)
        .execute(&db.any)
        .await?;
        Ok(CreatedEndpoint {
            endpoint: Endpoint {
                id,
                url: url.to_string(),
                topics,
                status: "active".into(),
                created_at: now,
                failing_since: None,
                disabled_at: None,
            },
            secret,
        })
    }

    /// A tenant's endpoint (not deleted).
    pub async fn endpoint(&self, tenant: &str, id: &str) -> Result<Endpoint, WebhookError> {
        let row = sqlx::query(&format!(
            "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE tenant = $1 AND id = $2 AND status <> 'deleted'"
        ))
        .bind(tenant)
        .bind(id)
        .fetch_optional(&self.inner.db.any)
        .await?;
        match row {
            Some(r) => Ok(endpoint_row(&r)?),
            None => Err(WebhookError::NotFound),
        }
    }

    /// A tenant's endpoints in id (creation) order, one page after `cursor`.
    pub async fn list_endpoints(
        &self,
        tenant: &str,
        limit: i64,
        cursor: Option<&str>,
    ) -> Result<Page<Endpoint>, WebhookError> {
        let limit = limit.clamp(1, MAX_PAGE_LIMIT);
        let rows = sqlx::query(&format!(
            "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE tenant = $1 AND status <> 'deleted' \
             AND id > $2 ORDER BY id LIMIT {}",
            limit + 1
        ))
        .bind(tenant)
        .bind(cursor.unwrap_or(""))
        .fetch_all(&self.inner.db.any)
        .await?;
        let data = rows
            .iter()
            .map(endpoint_row)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(page(data, limit, |e| e.id.clone()))
    }

    /// Deletes an endpoint: nothing more is delivered to it, and its
    /// unfinished deliveries end in the dead letter.
    pub async fn delete_endpoint(&self, tenant: &str, id: &str) -> Result<(), WebhookError> {
        let mut tx = self.inner.db.any.begin().await?;
        let done = sqlx::query(
            "UPDATE webhook_endpoints SET status = 'deleted' WHERE tenant = $1 AND id = $2 AND status <> 'deleted'",
        )
        .bind(tenant)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            return Err(WebhookError::NotFound);
        }
        sqlx::query(
            "UPDATE webhook_deliveries SET status = 'dead', last_error = 'endpoint deleted' \
             WHERE tenant = $1 AND endpoint_id = $2 AND status IN ('pending', 'retrying')",
        )
        .bind(tenant)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The signing secret of an endpoint, derived again (it is never stored):
    /// for replaying the creation answer of an idempotent request.
    pub async fn endpoint_secret(
        &self,
        tenant: &str,
        endpoint_id: &str,
    ) -> Result<Option<String>, DbError> {
        let row: Option<(String, String)> = sqlx::query_as(
            "SELECT secret_salt, secret_key_id FROM webhook_endpoints WHERE tenant = $1 AND id = $2",
        )
        .bind(tenant)
        .bind(endpoint_id)
        .fetch_optional(&self.inner.db.any)
        .await?;
        Ok(row.and_then(|(salt, key_id)| self.inner.keys.secret(&key_id, endpoint_id, &salt)))
    }

    /// Enables a disabled endpoint again; its paused deliveries resume, due
    /// now (their next attempt times passed while the endpoint was disabled).
    pub async fn enable_endpoint(&self, tenant: &str, id: &str) -> Result<Endpoint, WebhookError> {
        let now = time::to_text(self.inner.clock.now());
        let mut tx = self.inner.db.any.begin().await?;
        let enabled = sqlx::query(
            "UPDATE webhook_endpoints SET status = 'active', failing_since = '', disabled_at = '' \
             WHERE tenant = $1 AND id = $2 AND status = 'disabled'",
        )
        .bind(tenant)
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if enabled {
            sqlx::query(
                "UPDATE webhook_deliveries SET next_attempt_at = $1 \
                 WHERE tenant = $2 AND endpoint_id = $3 AND status IN ('pending', 'retrying') \
                   AND next_attempt_at < $1",
            )
            .bind(&now)
            .bind(tenant)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        self.endpoint(tenant, id).await
    }

    // ---- deliveries ----

    /// An endpoint's deliveries in creation order (optionally of one status),
    /// one page after `cursor`.
    pub async fn list_deliveries(
        &self,
        tenant: &str,
        endpoint_id: &str,
        status: Option<&str>,
        limit: i64,
        cursor: Option<&str>,
    ) -> Result<Page<Delivery>, WebhookError> {
        // An unknown endpoint is a 404, not an empty list.
        self.endpoint(tenant, endpoint_id).await?;
        let limit = limit.clamp(1, MAX_PAGE_LIMIT);
        let status_filter = if status.is_some() {
            format!(" AND {SEEN_STATUS} = $4")
        } else {
            String::new()
        };
        let sql = format!(
            "{} WHERE d.tenant = $1 AND d.endpoint_id = $2 AND d.id > $3{status_filter} \
             ORDER BY d.id LIMIT {}",
            seen_deliveries(),
            limit + 1
        );
        let mut q = sqlx::query(&sql)
            .bind(tenant)
            .bind(endpoint_id)
            .bind(cursor.unwrap_or(""));
        if let Some(s) = status {
            q = q.bind(s);
        }
        let rows = q.fetch_all(&self.inner.db.any).await?;
        let data = rows
            .iter()
            .map(delivery_row)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(page(data, limit, |d| d.id.clone()))
    }

    /// One delivery with its attempts, oldest first.
    pub async fn delivery(
        &self,
        tenant: &str,
        id: &str,
    ) -> Result<(Delivery, Vec<Attempt>), WebhookError> {
        let row = sqlx::query(&format!(
            "{} WHERE d.tenant = $1 AND d.id = $2",
            seen_deliveries()
        ))
        .bind(tenant)
        .bind(id)
        .fetch_optional(&self.inner.db.any)
        .await?
        .ok_or(WebhookError::NotFound)?;
        let delivery = delivery_row(&row)?;
        let rows = sqlx::query(
            "SELECT attempt, attempted_at, status_code, latency_ms, outcome, error FROM webhook_attempts \
             WHERE tenant = $1 AND delivery_id = $2 ORDER BY attempt",
        )
        .bind(tenant)
        .bind(id)
        .fetch_all(&self.inner.db.any)
        .await?;
        let attempts = rows
            .iter()
            .map(|r| {
                Ok(Attempt {
                    attempt: r.try_get("attempt")?,
                    attempted_at: r.try_get("attempted_at")?,
                    status_code: r.try_get("status_code")?,
                    latency_ms: r.try_get("latency_ms")?,
                    outcome: r.try_get("outcome")?,
                    error: r.try_get("error")?,
                })
            })
            .collect::<Result<Vec<_>, DbError>>()?;
        Ok((delivery, attempts))
    }

    /// Manual retry: the delivery is due now, with one more try when it had
    /// none left (a dead letter, or a delivery to send again).
    pub async fn retry(&self, tenant: &str, id: &str) -> Result<Delivery, WebhookError> {
        let (delivery, _) = self.delivery(tenant, id).await?;
        let endpoint = self.endpoint(tenant, &delivery.endpoint_id).await?;
        if endpoint.status != "active" {
            return Err(WebhookError::Conflict(format!(
                "the endpoint {} is {}; enable it first",
                endpoint.id, endpoint.status
            )));
        }
        let due = time::to_text(self.inner.clock.now());
        sqlx::query(
            "UPDATE webhook_deliveries SET status = 'pending', next_attempt_at = $1, \
             attempts_left = CASE WHEN attempts_left < 1 THEN 1 ELSE attempts_left END \
             WHERE tenant = $2 AND id = $3",
        )
        .bind(&due)
        .bind(tenant)
        .bind(id)
        .execute(&self.inner.db.any)
        .await?;
        // The delivery as this retry left it: reading it again raced the
        // worker, which may already have sent it (a flaky "delivered").
        Ok(Delivery {
            status: "pending".into(),
            next_attempt_at: Some(due),
            ..delivery
        })
    }

    // ---- the worker ----
}

pub(super) fn page<T>(mut data: Vec<T>, limit: i64, key: impl Fn(&T) -> String) -> Page<T> {
    let next_cursor = if data.len() as i64 > limit {
        data.truncate(limit as usize);
        data.last().map(key)
    } else {
        None
    };
    Page { data, next_cursor }
}
