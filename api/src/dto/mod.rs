//! Request and response bodies of the HTTP API, and their mapping from domain
//! and read-model types. Only this crate knows these shapes.

pub mod audit;
pub mod coupons;
pub mod customers;
pub mod inbox;
pub mod invoices;
pub mod keys;
pub mod ops;
pub mod payments;
pub mod plans;
pub mod subscriptions;
pub mod tax_rates;
pub mod tickets;
pub mod usage;
pub mod webhooks;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::ApiError;

#[derive(Debug, Serialize, ToSchema)]
pub struct PeriodDto {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema, Clone, Copy)]
#[serde(deny_unknown_fields)]
pub struct SeatsDto {
    pub min: u32,
    pub max: u32,
}

/// A list page.
#[derive(Debug, Serialize, ToSchema)]
pub struct ListPage<T> {
    pub data: Vec<T>,
    pub next_cursor: Option<String>,
}

/// Parses a decimal string field.
pub fn parse_decimal(field: &str, s: &str) -> Result<Decimal, ApiError> {
    let d: Decimal = s
        .trim()
        .parse()
        .map_err(|_| ApiError::field(field, "must be a decimal string, e.g. \"12.50\""))?;
    if d.is_sign_negative() && !d.is_zero() {
        return Err(ApiError::field(field, "must not be negative"));
    }
    Ok(d)
}

/// An RFC 3339 time within the bounds of every accepted time
/// (`tally_aggregates::time::check_accepted`).
pub fn parse_time(field: &str, s: &str) -> Result<DateTime<Utc>, ApiError> {
    let t = DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| {
            ApiError::field(field, "must be an RFC 3339 time, e.g. 2026-01-31T00:00:00Z")
        })?;
    Ok(tally_aggregates::time::check_accepted(field, t)?)
}

/// The body of a command that takes none: empty or `{}`, nothing else.
#[derive(Debug, Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct EmptyRequest {}
