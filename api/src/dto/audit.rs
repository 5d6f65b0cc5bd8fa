//! Request and response shapes of the audit endpoints, and their
//! mapping from domain and read-model types.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditEventDto {
    pub position: i64,
    /// The stream's type (`plan`, `subscription`, …) and resource id.
    pub stream_type: String,
    pub stream_id: String,
    pub sequence: i64,
    pub event_id: String,
    pub event_type: String,
    pub event_version: String,
    #[schema(value_type = Object)]
    pub payload: serde_json::Value,
    #[schema(value_type = Object)]
    pub metadata: std::collections::HashMap<String, String>,
    pub recorded_at: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditEventsDto {
    pub data: Vec<AuditEventDto>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct StateParams {
    /// The state as of this time (RFC 3339): every event recorded at or before it.
    pub at: Option<String>,
    /// Or as of this stream sequence.
    pub sequence: Option<String>,
}

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct StateAtDto {
    pub sequence: i64,
    pub recorded_at: String,
    /// The resource as its own GET would have shown it then.
    #[schema(value_type = Object)]
    pub state: serde_json::Value,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct FeedParams {
    /// Continue after this global position (`next_cursor` of the previous page).
    pub after: Option<String>,
    /// 1-1000, default 100.
    #[param(value_type = Option<i64>, minimum = 1, maximum = 1000)]
    pub limit: Option<String>,
}

/// The head of the sealed hash chain (see `tally_projections::seal`).
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct DigestDto {
    /// The last sealed log position (0 when nothing is sealed yet).
    pub position: i64,
    /// Its link, 64 hex digits: what `tally-replay verify --digest` checks.
    pub hash: String,
}
