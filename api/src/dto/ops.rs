//! Request and response shapes of the operations endpoints, and their
//! mapping from domain and read-model types.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Debug, Serialize, ToSchema)]
pub struct ProjectionDto {
    pub name: String,
    pub position: i64,
    pub log_head: i64,
    pub lag_events: i64,
    pub status: String,
    pub last_error: Option<String>,
    /// While a rebuild runs: the position its new tables are built to (the
    /// current tables keep serving until they are swapped).
    pub rebuild_position: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ClockDto {
    pub now: DateTime<Utc>,
    /// system | manual
    pub mode: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AdvanceClockRequest {
    /// Move to this time (RFC 3339).
    pub to: Option<String>,
    /// Or move by an ISO 8601 duration, e.g. "P1M", "P3DT4H", "PT90S".
    pub by: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct StatusDto {
    pub status: String,
}
