//! The delivery worker: claims due deliveries with a lease, posts them
//! signed, records each attempt, retries with backoff, dead-letters, pauses
//! the deliveries of a disabled endpoint and purges old ones.

use super::*;

// ---- retries ----

/// What an attempt leads to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    Delivered,
    Retry(DateTime<Utc>),
    Dead,
}

/// Decides after an attempt: delivered on success; else another try after
/// the backoff (lengthened by `jitter`, 0 to 1, of `jitter_percent`) while
/// tries are left, else the dead letter. `attempts_before` counts earlier
/// attempts of this delivery; `attempts_left` includes this one.
pub fn next_after(
    config: &WebhookConfig,
    success: bool,
    attempts_before: i64,
    attempts_left: i64,
    now: DateTime<Utc>,
    jitter: f64,
) -> Next {
    if success {
        return Next::Delivered;
    }
    if attempts_left <= 1 {
        return Next::Dead;
    }
    let failed = u32::try_from(attempts_before + 1).unwrap_or(u32::MAX);
    let base = config.retry_delay(failed);
    let extra = base.mul_f64(jitter.clamp(0.0, 1.0) * f64::from(config.jitter_percent) / 100.0);
    let wait = chrono::Duration::from_std(base + extra).unwrap_or(chrono::Duration::days(1));
    Next::Retry(now + wait)
}

impl Webhooks {
    pub(super) async fn run_worker(self, mut stop: watch::Receiver<bool>) {
        let mut in_flight: JoinSet<()> = JoinSet::new();
        let mut last_purge: Option<Instant> = None;
        loop {
            if *stop.borrow() {
                break;
            }
            let free = self
                .inner
                .config
                .max_in_flight
                .saturating_sub(in_flight.len());
            if free > 0 {
                match self.claim_due(free).await {
                    Ok(claimed) => {
                        for d in claimed {
                            let me = self.clone();
                            in_flight.spawn(async move { me.attempt(d).await });
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "webhook claim failed"),
                }
            }
            if last_purge.is_none_or(|at| at.elapsed() >= PURGE_EVERY) {
                last_purge = Some(Instant::now());
                if let Err(e) = self.purge().await {
                    tracing::warn!(error = %e, "webhook delivery purge failed");
                }
            }
            tokio::select! {
                _ = stop.changed() => break,
                Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
                _ = tokio::time::sleep(self.inner.config.poll_interval) => {}
            }
        }
        in_flight.abort_all();
        while in_flight.join_next().await.is_some() {}
        if let Err(e) = sqlx::query(
            "UPDATE webhook_deliveries SET lease_owner = '', leased_until = '' WHERE lease_owner = $1",
        )
        .bind(&self.inner.owner)
        .execute(&self.inner.db.any)
        .await
        {
            tracing::warn!(error = %e, "could not release webhook leases (they expire)");
        }
    }

    /// Claims up to `limit` due deliveries whose subject has nothing earlier
    /// waiting, for this worker (a lease on the wall clock).
    pub(super) async fn claim_due(&self, limit: usize) -> Result<Vec<Claimed>, DbError> {
        let db = &self.inner.db;
        let now = time::to_text(self.inner.clock.now());
        // Leases are about processes, which run in real time, not the server clock.
        let wall = Utc::now();
        let ids: Vec<String> = sqlx::query_scalar(&format!(
            "SELECT d.id FROM webhook_deliveries d \
             JOIN webhook_endpoints w ON w.tenant = d.tenant AND w.id = d.endpoint_id \
             WHERE d.status IN ('pending', 'retrying') AND d.next_attempt_at <= $1 \
               AND d.leased_until < $2 AND w.status = 'active' \
               AND NOT EXISTS (SELECT 1 FROM webhook_deliveries e \
                 WHERE e.endpoint_id = d.endpoint_id AND e.subject = d.subject \
                   AND e.status IN ('pending', 'retrying') \
                   AND (e.position < d.position OR (e.position = d.position AND e.ordinal < d.ordinal))) \
             ORDER BY d.next_attempt_at, d.position, d.ordinal LIMIT {limit}"
        ))
        .bind(&now)
        .bind(time::to_text(wall))
        .fetch_all(&db.any)
        .await?;
        // Never shorter than two timeouts: an attempt still running must
        // not be claimed and sent by another worker at the same time.
        let lease = self.inner.config.lease.max(self.inner.config.timeout * 2);
        let lease_until =
            wall + chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::seconds(60));
        let mut claimed = Vec::new();
        for id in ids {
            let got = sqlx::query(
                "UPDATE webhook_deliveries SET lease_owner = $1, leased_until = $2 \
                 WHERE id = $3 AND status IN ('pending', 'retrying') AND leased_until < $4",
            )
            .bind(&self.inner.owner)
            .bind(time::to_text(lease_until))
            .bind(&id)
            .bind(time::to_text(wall))
            .execute(&db.any)
            .await?;
            if got.rows_affected() != 1 {
                continue;
            }
            let r = sqlx::query(
                "SELECT d.id, d.tenant, d.endpoint_id, d.event_id, d.topic, d.body, d.attempts, \
                 d.attempts_left, d.delivered_at, w.url, w.secret_salt, w.secret_key_id \
                 FROM webhook_deliveries d JOIN webhook_endpoints w ON w.tenant = d.tenant AND w.id = d.endpoint_id \
                 WHERE d.id = $1",
            )
            .bind(&id)
            .fetch_one(&db.any)
            .await?;
            claimed.push(Claimed {
                id: r.try_get("id")?,
                tenant: r.try_get("tenant")?,
                endpoint_id: r.try_get("endpoint_id")?,
                event_id: r.try_get("event_id")?,
                topic: r.try_get("topic")?,
                body: r.try_get("body")?,
                attempts: r.try_get("attempts")?,
                attempts_left: r.try_get("attempts_left")?,
                delivered_at: r.try_get("delivered_at")?,
                url: r.try_get("url")?,
                salt: r.try_get("secret_salt")?,
                key_id: r.try_get("secret_key_id")?,
            });
        }
        Ok(claimed)
    }

    /// One attempt: send, then record the outcome.
    pub(super) async fn attempt(&self, d: Claimed) {
        let at = self.inner.clock.now();
        let started = Instant::now();
        let result = self.send(&d, at).await;
        let latency_ms = i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX);
        if let Err(e) = self.record(&d, at, result, latency_ms).await {
            // The lease runs out and the delivery is tried again.
            tracing::warn!(delivery_id = %d.id, error = %e, "could not record a webhook attempt");
        }
    }

    /// Posts the delivery's body, signed; the receiver's status code, or why
    /// there is none.
    pub(super) async fn send(&self, d: &Claimed, at: DateTime<Utc>) -> Result<u16, String> {
        let url = check_url(&self.inner.config.allowed_hosts, &d.url)
            .await
            .map_err(|e| format!("refused: {e}"))?;
        let secret = self
            .inner
            .keys
            .secret(&d.key_id, &d.endpoint_id, &d.salt)
            .ok_or_else(|| format!("the signing key {} is not configured", d.key_id))?;
        let signature = signature(&secret, at.timestamp(), d.body.as_bytes());
        let response = self
            .inner
            .client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(SIGNATURE_HEADER, signature)
            .header("Tally-Event-Id", &d.event_id)
            .header("Tally-Delivery-Id", &d.id)
            .header("Tally-Topic", &d.topic)
            .body(d.body.clone())
            .send()
            .await
            .map_err(describe)?;
        Ok(response.status().as_u16())
    }

    /// Records an attempt and what follows from it, in one transaction,
    /// guarded by this worker's lease.
    pub(super) async fn record(
        &self,
        d: &Claimed,
        at: DateTime<Utc>,
        result: Result<u16, String>,
        latency_ms: i64,
    ) -> Result<(), DbError> {
        let config = &self.inner.config;
        let code = result.as_ref().ok().copied();
        let success = code.is_some_and(|c| (200..300).contains(&c));
        let error = match &result {
            Ok(_) => None,
            Err(e) => Some(e.chars().take(MAX_ERROR_CHARS).collect::<String>()),
        };
        let jitter: f64 = rand::thread_rng().gen();
        let next = next_after(config, success, d.attempts, d.attempts_left, at, jitter);
        let (status, next_at, delivered_at) = match &next {
            Next::Delivered => ("delivered", String::new(), time::to_text(at)),
            Next::Retry(t) => ("retrying", time::to_text(*t), d.delivered_at.clone()),
            Next::Dead => ("dead", String::new(), d.delivered_at.clone()),
        };
        let at_text = time::to_text(at);
        let mut tx = self.inner.db.any.begin().await?;
        let updated = sqlx::query(
            "UPDATE webhook_deliveries SET status = $1, attempts = attempts + 1, attempts_left = $2, \
             last_status_code = $3, last_latency_ms = $4, last_error = $5, last_attempt_at = $6, \
             next_attempt_at = $7, delivered_at = $8, lease_owner = '', leased_until = '' \
             WHERE id = $9 AND lease_owner = $10",
        )
        .bind(status)
        .bind((d.attempts_left - 1).max(0))
        .bind(code.map(i64::from))
        .bind(latency_ms)
        .bind(error.clone())
        .bind(&at_text)
        .bind(&next_at)
        .bind(&delivered_at)
        .bind(&d.id)
        .bind(&self.inner.owner)
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() != 1 {
            // Our lease ran out and another worker has it now: its record counts.
            tx.rollback().await?;
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO webhook_attempts (delivery_id, attempt, tenant, attempted_at, status_code, \
             latency_ms, outcome, error) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (delivery_id, attempt) DO NOTHING",
        )
        .bind(&d.id)
        .bind(d.attempts + 1)
        .bind(&d.tenant)
        .bind(&at_text)
        .bind(code.map(i64::from))
        .bind(latency_ms)
        .bind(if success { "delivered" } else { "failed" })
        .bind(error)
        .execute(&mut *tx)
        .await?;
        let mut disabled = false;
        if success {
            sqlx::query(
                "UPDATE webhook_endpoints SET failing_since = '' WHERE tenant = $1 AND id = $2 AND failing_since <> ''",
            )
            .bind(&d.tenant)
            .bind(&d.endpoint_id)
            .execute(&mut *tx)
            .await?;
        } else {
            sqlx::query(
                "UPDATE webhook_endpoints SET failing_since = $1 WHERE tenant = $2 AND id = $3 AND failing_since = ''",
            )
            .bind(&at_text)
            .bind(&d.tenant)
            .bind(&d.endpoint_id)
            .execute(&mut *tx)
            .await?;
            let since: Option<String> = sqlx::query_scalar(
                "SELECT failing_since FROM webhook_endpoints WHERE tenant = $1 AND id = $2 AND status = 'active'",
            )
            .bind(&d.tenant)
            .bind(&d.endpoint_id)
            .fetch_optional(&mut *tx)
            .await?;
            let limit = chrono::Duration::from_std(config.disable_after)
                .unwrap_or(chrono::Duration::days(3));
            if since
                .as_deref()
                .and_then(time::from_text)
                .is_some_and(|since| at - since >= limit)
            {
                disabled = sqlx::query(
                    "UPDATE webhook_endpoints SET status = 'disabled', disabled_at = $1 \
                     WHERE tenant = $2 AND id = $3 AND status = 'active'",
                )
                .bind(&at_text)
                .bind(&d.tenant)
                .bind(&d.endpoint_id)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                    == 1;
            }
        }
        tx.commit().await?;
        let outcome = match next {
            Next::Delivered => "delivered",
            Next::Retry(_) => "retrying",
            Next::Dead => "dead",
        };
        metrics::counter!("tally_webhook_attempts_total", "outcome" => outcome).increment(1);
        match next {
            Next::Delivered => {}
            Next::Retry(_) => tracing::info!(tenant = %d.tenant, endpoint_id = %d.endpoint_id,
                delivery_id = %d.id, status_code = ?code, attempt = d.attempts + 1, "webhook attempt failed"),
            Next::Dead => tracing::warn!(tenant = %d.tenant, endpoint_id = %d.endpoint_id,
                delivery_id = %d.id, status_code = ?code, attempt = d.attempts + 1, "webhook delivery dead-lettered"),
        }
        if disabled {
            tracing::warn!(tenant = %d.tenant, endpoint_id = %d.endpoint_id,
                "webhook endpoint disabled: every attempt failed for the disable period");
            self.notify_disabled(&d.tenant, &d.endpoint_id, at).await;
        }
        Ok(())
    }

    /// Tells the admin who registered a disabled endpoint, in their inbox
    /// (`user:<key id>`), through the `Inbox` aggregate's `Notify` so that a
    /// rebuild keeps the item. Best effort after the disable committed: a
    /// crash in between loses the notice, not the disable (logged above).
    pub(super) async fn notify_disabled(&self, tenant: &str, endpoint_id: &str, at: DateTime<Utc>) {
        let row: Result<Option<(String, String)>, sqlx::Error> = sqlx::query_as(
            "SELECT created_by, url FROM webhook_endpoints WHERE tenant = $1 AND id = $2",
        )
        .bind(tenant)
        .bind(endpoint_id)
        .fetch_optional(&self.inner.db.any)
        .await;
        let Ok(Some((created_by, url))) = row else {
            tracing::warn!(
                tenant,
                endpoint_id,
                "no admin to notify of a disabled webhook endpoint"
            );
            return;
        };
        let recipient = format!("user:{created_by}");
        let host = Url::parse(&url)
            .ok()
            .and_then(|u| u.host_str().map(str::to_string))
            .unwrap_or_default();
        let days = self.inner.config.disable_after.as_secs() / 86_400;
        let notice = Notice {
            severity: "critical".into(),
            title: "Webhook endpoint disabled".into(),
            body: format!(
                "Webhook endpoint {endpoint_id} ({host}) failed every delivery for {days} days and is disabled. \
                 Fix the receiver, then enable it with POST /v1/webhooks/{endpoint_id}/enable; waiting deliveries resume."
            ),
            subject_type: "webhook".into(),
            subject_id: endpoint_id.to_string(),
        };
        let dispatcher = crate::Dispatcher::new(self.inner.db.clone(), self.inner.clock.clone());
        let meta = crate::policies::scheduler_meta(tenant, "system:webhooks");
        let result = dispatcher
            .execute::<Inbox, _>(&meta, &recipient, None, |inbox| {
                inbox.decide(InboxCommand::Notify {
                    recipient: recipient.clone(),
                    notice: notice.clone(),
                    at,
                })
            })
            .await;
        if let Err(e) = result {
            tracing::warn!(tenant, endpoint_id, error = %e, "could not notify the admin of a disabled webhook endpoint");
        }
    }

    /// Deletes delivered and dead deliveries past their retention, with their attempts.
    pub(super) async fn purge(&self) -> Result<(), DbError> {
        let retention = chrono::Duration::from_std(self.inner.config.retention)
            .unwrap_or(chrono::Duration::days(30));
        let cutoff = time::to_text(self.inner.clock.now() - retention);
        let mut tx = self.inner.db.any.begin().await?;
        sqlx::query(
            "DELETE FROM webhook_attempts WHERE delivery_id IN (SELECT id FROM webhook_deliveries \
             WHERE status IN ('delivered', 'dead') AND created_at < $1)",
        )
        .bind(&cutoff)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "DELETE FROM webhook_deliveries WHERE status IN ('delivered', 'dead') AND created_at < $1",
        )
        .bind(&cutoff)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }
}

/// A transport error without its URL (which may carry a receiver's token),
/// with its causes ("tcp connect error: Connection refused").
pub(super) fn describe(e: reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    let e = e.without_url();
    let mut text = format!("{kind}: {e}");
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text.chars().take(MAX_ERROR_CHARS).collect()
}
