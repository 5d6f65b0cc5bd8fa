//! Request and response shapes of the webhook endpoints, and their
//! mapping from domain and read-model types.

use serde::{Deserialize, Serialize};
use tally_commands::webhooks::{Attempt, Delivery, Endpoint};
use utoipa::{IntoParams, ToSchema};

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhookRequest {
    /// Where deliveries are POSTed (http or https).
    pub url: String,
    /// Topics (`billing.subscriptions.v1.subscription-suspended`) or families
    /// (`billing.subscriptions.v1.*`).
    pub topics: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookDto {
    pub id: String,
    pub url: String,
    pub topics: Vec<String>,
    /// active | disabled
    pub status: String,
    pub created_at: String,
    /// Since when every attempt has failed; null while deliveries succeed.
    pub failing_since: Option<String>,
    pub disabled_at: Option<String>,
}

impl From<Endpoint> for WebhookDto {
    fn from(e: Endpoint) -> Self {
        WebhookDto {
            id: e.id,
            url: e.url,
            topics: e.topics,
            status: e.status,
            created_at: e.created_at,
            failing_since: e.failing_since,
            disabled_at: e.disabled_at,
        }
    }
}

/// A new endpoint with its signing secret, which is never shown again.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedWebhookDto {
    #[serde(flatten)]
    pub endpoint: WebhookDto,
    /// The HMAC-SHA256 key of `Tally-Signature` (the string's bytes).
    pub secret: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookPage {
    pub data: Vec<WebhookDto>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryDto {
    pub id: String,
    pub endpoint_id: String,
    /// The envelope's `id`: the same on every attempt.
    pub event_id: String,
    pub topic: String,
    /// pending | delivered | retrying | paused | dead (`paused`: the
    /// endpoint is disabled; no attempt is due until it is enabled)
    pub status: String,
    pub attempts: i64,
    pub last_status_code: Option<i64>,
    pub last_latency_ms: Option<i64>,
    pub last_error: Option<String>,
    pub last_attempt_at: Option<String>,
    /// Null unless the delivery is pending or retrying (never while paused).
    pub next_attempt_at: Option<String>,
    pub delivered_at: Option<String>,
    pub created_at: String,
}

impl From<Delivery> for DeliveryDto {
    fn from(d: Delivery) -> Self {
        DeliveryDto {
            id: d.id,
            endpoint_id: d.endpoint_id,
            event_id: d.event_id,
            topic: d.topic,
            status: d.status,
            attempts: d.attempts,
            last_status_code: d.last_status_code,
            last_latency_ms: d.last_latency_ms,
            last_error: d.last_error,
            last_attempt_at: d.last_attempt_at,
            next_attempt_at: d.next_attempt_at,
            delivered_at: d.delivered_at,
            created_at: d.created_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryPage {
    pub data: Vec<DeliveryDto>,
    pub next_cursor: Option<String>,
}

/// One attempt of the delivery log.
#[derive(Debug, Serialize, ToSchema)]
pub struct AttemptDto {
    pub attempt: i64,
    pub attempted_at: String,
    /// The receiver's status code; null when no response came (timeout,
    /// refused connection, refused address).
    pub status_code: Option<i64>,
    pub latency_ms: i64,
    /// delivered | failed
    pub outcome: String,
    pub error: Option<String>,
}

impl From<Attempt> for AttemptDto {
    fn from(a: Attempt) -> Self {
        AttemptDto {
            attempt: a.attempt,
            attempted_at: a.attempted_at,
            status_code: a.status_code,
            latency_ms: a.latency_ms,
            outcome: a.outcome,
            error: a.error,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryDetailDto {
    #[serde(flatten)]
    pub delivery: DeliveryDto,
    pub attempt_log: Vec<AttemptDto>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct WebhookListParams {
    #[param(value_type = Option<i64>, minimum = 1, maximum = 200)]
    pub limit: Option<String>,
    pub cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DeliveryListParams {
    /// pending | delivered | retrying | paused | dead (`dead` lists the dead letter)
    pub status: Option<String>,
    #[param(value_type = Option<i64>, minimum = 1, maximum = 200)]
    pub limit: Option<String>,
    pub cursor: Option<String>,
}
