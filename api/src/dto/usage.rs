//! Request and response shapes of the usage endpoints, and their
//! mapping from domain and read-model types.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use tally_aggregates::usage::{UsageRecord, UsageWindow};
use tally_commands::usage::UsageReport;
use utoipa::ToSchema;

use crate::dto::{parse_decimal, parse_time};
use crate::error::{ApiError, FieldError};

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UsageRequest {
    pub subscription_id: String,
    pub meter: String,
    /// Non-negative decimal, as a string ("12.5") or an integer.
    pub quantity: QuantityInput,
    /// RFC 3339; at most 5 minutes ahead, at most 35 days old.
    pub timestamp: String,
    /// The client's id of this report: a repeat is recorded once.
    pub transaction_id: String,
    #[schema(value_type = Option<Object>)]
    pub properties: Option<serde_json::Map<String, serde_json::Value>>,
}

/// A decimal string or an integer.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum QuantityInput {
    Text(String),
    Integer(i64),
}

impl QuantityInput {
    /// The quantity as a non-negative decimal; errors name `field`.
    pub fn non_negative(self, field: &str) -> Result<Decimal, ApiError> {
        match self {
            QuantityInput::Text(s) => parse_decimal(field, &s),
            QuantityInput::Integer(i) if i >= 0 => Ok(Decimal::from(i)),
            QuantityInput::Integer(_) => Err(ApiError::field(field, "must not be negative")),
        }
    }
}

impl UsageRequest {
    pub(crate) fn into_report(self) -> Result<UsageReport, ApiError> {
        let quantity = self.quantity.non_negative("quantity")?;
        let properties = self.properties.unwrap_or_default();
        if serde_json::to_vec(&properties)
            .map(|b| b.len())
            .unwrap_or(0)
            > 4096
        {
            return Err(ApiError::field("properties", "at most 4 KiB of JSON"));
        }
        Ok(UsageReport {
            subscription_id: self.subscription_id,
            meter: self.meter,
            quantity,
            timestamp: parse_time("timestamp", &self.timestamp)?,
            transaction_id: self.transaction_id,
            properties,
        })
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WindowDto {
    pub start: DateTime<Utc>,
    /// Absent for a lifetime meter.
    pub end: Option<DateTime<Utc>>,
}

impl From<&UsageWindow> for WindowDto {
    fn from(w: &UsageWindow) -> Self {
        WindowDto {
            start: w.start,
            end: w.end,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UsageRecordDto {
    pub id: String,
    pub transaction_id: String,
    pub subscription_id: String,
    pub meter: String,
    pub quantity: String,
    pub timestamp: Option<DateTime<Utc>>,
    pub window: Option<WindowDto>,
    /// recorded | billed | voided
    pub status: String,
    #[schema(value_type = Object)]
    pub properties: serde_json::Map<String, serde_json::Value>,
    pub recorded_at: Option<DateTime<Utc>>,
    pub billed_invoice_id: Option<String>,
    pub voided_at: Option<DateTime<Utc>>,
    pub void_reason: Option<String>,
    /// True when this answers a repeated transaction id with the original record.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub duplicate: bool,
    pub version: i64,
}

impl UsageRecordDto {
    pub(crate) fn from_state(
        id: &str,
        r: &UsageRecord,
        version: i64,
        duplicate: bool,
    ) -> Option<Self> {
        Some(UsageRecordDto {
            id: id.to_string(),
            transaction_id: r.transaction_id.clone(),
            subscription_id: r.subscription_id.clone(),
            meter: r.meter.clone(),
            quantity: r.quantity.normalize().to_string(),
            timestamp: r.timestamp,
            window: r.window.as_ref().map(WindowDto::from),
            status: r.status?.as_str().to_string(),
            properties: r.properties.clone(),
            recorded_at: r.recorded_at,
            billed_invoice_id: r.billed_invoice_id.clone(),
            voided_at: r.voided_at,
            void_reason: r.void_reason.clone(),
            duplicate,
            version,
        })
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    /// At most 1000 records, each shaped like `POST /v1/usage`.
    #[schema(value_type = Vec<UsageRequest>)]
    pub records: Vec<serde_json::Value>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BatchItemError {
    pub code: String,
    pub detail: String,
    pub errors: Vec<FieldError>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BatchResult {
    pub transaction_id: Option<String>,
    /// created | duplicate | rejected
    pub status: String,
    pub id: Option<String>,
    pub error: Option<BatchItemError>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BatchResponse {
    pub results: Vec<BatchResult>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VoidRequest {
    pub reason: String,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct UsageListParams {
    pub subscription_id: Option<String>,
    pub meter: Option<String>,
    /// RFC 3339, inclusive.
    pub from: Option<String>,
    /// RFC 3339, exclusive.
    pub to: Option<String>,
    #[param(value_type = Option<i64>, minimum = 1, maximum = 200)]
    pub limit: Option<String>,
    pub cursor: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct SummaryParams {
    pub subscription_id: String,
    pub meter: String,
    /// `current` (default) or `YYYY-MM`: the window that starts in that month.
    pub window: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SummaryDto {
    pub subscription_id: String,
    pub meter: String,
    pub window: WindowDto,
    pub total: String,
    pub record_count: i64,
}
