//! The fan-out consumer (`webhooks.fanout`): one delivery per (event,
//! topic, matching active endpoint), inside its checkpoint transaction.

use super::*;

// ---- the fan-out consumer ----

/// An active endpoint as the fan-out sees it.
pub(super) struct Target {
    pub(super) id: String,
    pub(super) topics: Vec<String>,
    pub(super) created_position: i64,
}

/// Turns each published event into one delivery per matching active
/// endpoint, inside the checkpoint transaction. Not rebuildable: replaying
/// the log would deliver old events to endpoints created since.
pub(super) struct Fanout {
    pub(super) webhooks: Webhooks,
}

#[async_trait]
impl Projector for Fanout {
    fn name(&self) -> &'static str {
        FANOUT_CONSUMER
    }

    fn tables(&self) -> &'static [&'static str] {
        &[]
    }

    fn rebuildable(&self) -> bool {
        false
    }

    fn handles(&self, event: &StoredEvent) -> bool {
        topics::TOPICS
            .iter()
            .any(|s| event.is(s.aggregate) && s.event == event.event_type)
    }

    async fn apply(
        &self,
        conn: &mut AnyConnection,
        tables: Tables,
        event: &StoredEvent,
    ) -> Result<(), ProjectionError> {
        self.apply_batch(conn, tables, &[event]).await
    }

    async fn apply_batch(
        &self,
        conn: &mut AnyConnection,
        _tables: Tables,
        events: &[&StoredEvent],
    ) -> Result<(), ProjectionError> {
        let inner = &self.webhooks.inner;
        let now = time::to_text(inner.clock.now());
        let max_attempts = i64::from(inner.config.max_attempts.max(1));
        let mut targets: HashMap<String, Vec<Target>> = HashMap::new();
        for e in events {
            if !targets.contains_key(&e.tenant) {
                let rows = sqlx::query(
                    "SELECT id, topics, created_position FROM webhook_endpoints \
                     WHERE tenant = $1 AND status = 'active'",
                )
                .bind(&e.tenant)
                .fetch_all(&mut *conn)
                .await?;
                let mut list = Vec::new();
                for r in &rows {
                    let topics: String = r.try_get("topics")?;
                    list.push(Target {
                        id: r.try_get("id")?,
                        topics: serde_json::from_str(&topics).unwrap_or_default(),
                        created_position: r.try_get("created_position")?,
                    });
                }
                targets.insert(e.tenant.clone(), list);
            }
            // A tenant without endpoints (most events) costs no envelope.
            if targets[&e.tenant].is_empty() {
                continue;
            }
            let published = topics::integration_events(e);
            let subject = format!("{}:{}", e.aggregate_type, e.resource_id());
            for (ordinal, i) in published.iter().enumerate() {
                let mut body: Option<String> = None;
                for t in targets[&e.tenant].iter().filter(|t| {
                    e.position > t.created_position
                        && t.topics.iter().any(|p| topic_matches(p, i.topic))
                }) {
                    let body = body.get_or_insert_with(|| topics::envelope(e, i).to_string());
                    sqlx::query(
                        "INSERT INTO webhook_deliveries (id, tenant, endpoint_id, event_id, topic, subject, \
                         position, ordinal, body, status, attempts, attempts_left, next_attempt_at, created_at) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'pending', 0, $10, $11, $11) \
                         ON CONFLICT (endpoint_id, event_id, topic) DO NOTHING",
                    )
                    .bind(WebhookDeliveryId::generate().into_string())
                    .bind(&e.tenant)
                    .bind(&t.id)
                    .bind(&e.event_id)
                    .bind(i.topic)
                    .bind(&subject)
                    .bind(e.position)
                    .bind(ordinal as i64)
                    .bind(body.as_str())
                    .bind(max_attempts)
                    .bind(&now)
                    .execute(&mut *conn)
                    .await?;
                }
            }
        }
        Ok(())
    }
}
