//! Request and response shapes of the subscription endpoints, and their
//! mapping from domain and read-model types.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tally_aggregates::subscription::{Subscription, SuspendReason};
use utoipa::ToSchema;

use crate::dto::PeriodDto;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSubscriptionRequest {
    pub customer_id: String,
    pub plan_id: String,
    pub seats: Option<u32>,
    /// Days of trial when activated (0 to 730), replacing the plan's when
    /// positive; without it (or 0) the plan's trial applies.
    #[schema(maximum = 730)]
    pub trial_days: Option<u32>,
    /// A coupon to redeem with the subscription (its `discount`).
    #[schema(max_length = 64)]
    pub coupon_code: Option<String>,
    /// The subscription's own tax rates (`txr_…`, active), before the
    /// plan's and the customer's.
    pub tax_rate_ids: Option<Vec<String>>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApplyDiscountRequest {
    /// The code of an active coupon that applies to the subscription's plan.
    #[schema(max_length = 64)]
    pub coupon_code: String,
}

/// A redeemed coupon on a subscription.
#[derive(Debug, Serialize, ToSchema)]
pub struct DiscountDto {
    pub coupon_id: String,
    pub code: String,
    pub start: DateTime<Utc>,
    /// Invoiced periods it still discounts; null: for ever.
    pub periods_left: Option<u32>,
}

#[derive(Debug, Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct ActivateRequest {
    /// RFC 3339; defaults to now.
    pub at: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangePlanRequest {
    pub plan_id: String,
    /// prorate | none
    #[schema(value_type = String, pattern = "^(prorate|none)$")]
    pub proration: tally_aggregates::ProrationMode,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangeSeatsRequest {
    pub seats: u32,
    /// prorate (default) | none
    #[schema(value_type = Option<String>, pattern = "^(prorate|none)$")]
    pub proration: Option<tally_aggregates::ProrationMode>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ClientSuspendReason {
    Manual,
    NonPayment,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SuspendRequest {
    pub reason: ClientSuspendReason,
    pub note: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelRequest {
    /// now | period_end
    #[schema(value_type = String, pattern = "^(now|period_end)$")]
    pub at: tally_aggregates::CancelWhen,
    pub reason: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SuspensionDto {
    /// manual | non_payment | quota_exceeded
    pub reason: String,
    pub meter: Option<String>,
    pub note: Option<String>,
    pub since: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SubscriptionDto {
    pub id: String,
    pub customer_id: String,
    pub plan_id: String,
    /// draft | trialing | active | past_due | suspended | canceled
    pub status: String,
    pub seats: u32,
    /// Days of trial the subscription asked for itself (null: the plan's).
    pub trial_days: Option<u32>,
    /// When the trial began; null when it never trialed.
    pub trial_start: Option<DateTime<Utc>>,
    /// When the trial ends (or ended); null when it never trialed.
    pub trial_end: Option<DateTime<Utc>>,
    pub current_period: Option<PeriodDto>,
    pub suspension: Option<SuspensionDto>,
    pub cancel_at_period_end: bool,
    /// The coupon its next invoices take; null when none.
    pub discount: Option<DiscountDto>,
    /// Its own tax rates.
    pub tax_rate_ids: Vec<String>,
    pub created_at: Option<DateTime<Utc>>,
    pub activated_at: Option<DateTime<Utc>>,
    pub canceled_at: Option<DateTime<Utc>>,
    pub version: i64,
}

impl SubscriptionDto {
    pub fn from_state(id: &str, s: &Subscription, version: i64) -> Option<SubscriptionDto> {
        let status = s.status?;
        Some(SubscriptionDto {
            id: id.to_string(),
            customer_id: s.customer_id.clone(),
            plan_id: s.plan_id.clone(),
            status: status.as_str().to_string(),
            seats: s.seats,
            trial_days: s.trial_days,
            trial_start: s.trial_start,
            trial_end: s.trial_end,
            current_period: s.current_period.as_ref().map(|p| PeriodDto {
                start: p.start,
                end: p.end,
            }),
            suspension: s.suspension.as_ref().map(|x| {
                let (reason, meter, note) = match &x.reason {
                    SuspendReason::Manual { note } => ("manual", None, note.clone()),
                    SuspendReason::NonPayment => ("non_payment", None, None),
                    SuspendReason::QuotaExceeded { meter } => {
                        ("quota_exceeded", Some(meter.clone()), None)
                    }
                };
                SuspensionDto {
                    reason: reason.into(),
                    meter,
                    note,
                    since: x.since,
                }
            }),
            cancel_at_period_end: s.cancel_at_period_end,
            discount: s.discount.as_ref().map(|d| DiscountDto {
                coupon_id: d.coupon_id.clone(),
                code: d.code.clone(),
                start: d.start,
                periods_left: d.periods_left,
            }),
            tax_rate_ids: s.tax_rate_ids.clone(),
            created_at: s.created_at,
            activated_at: s.activated_at,
            canceled_at: s.canceled_at,
            version,
        })
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EntitlementDto {
    pub meter: String,
    pub window: crate::dto::usage::WindowDto,
    pub used: String,
    pub hard_cap: Option<String>,
    pub remaining: Option<String>,
}

impl From<&tally_projections::usage::Entitlement> for EntitlementDto {
    fn from(e: &tally_projections::usage::Entitlement) -> Self {
        EntitlementDto {
            meter: e.meter.clone(),
            window: crate::dto::usage::WindowDto::from(&e.window),
            used: e.used.normalize().to_string(),
            hard_cap: e.hard_cap.map(|c| c.normalize().to_string()),
            remaining: e.remaining.map(|r| r.normalize().to_string()),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EntitlementsDto {
    pub subscription_id: String,
    pub data: Vec<EntitlementDto>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionListParams {
    /// draft | trialing | active | past_due | suspended | canceled
    pub status: Option<String>,
    pub customer_id: Option<String>,
    pub plan_id: Option<String>,
    #[param(value_type = Option<i64>, minimum = 1, maximum = 200)]
    pub limit: Option<String>,
    pub cursor: Option<String>,
}
