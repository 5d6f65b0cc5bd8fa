//! Request and response shapes of the coupon endpoints, and their
//! mapping from domain and read-model types.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tally_aggregates::coupon::{
    Coupon, CouponDuration, CouponOff, CouponTerms, MAX_PERCENT_PLACES,
};
use tally_aggregates::{Currency, Money};
use utoipa::ToSchema;

use crate::dto::{parse_decimal, parse_time};
use crate::error::ApiError;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCouponRequest {
    /// What customers type: letters, digits, `-` and `_`, unique per
    /// tenant regardless of case.
    #[schema(min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9_-]+$")]
    pub code: String,
    #[schema(max_length = 200)]
    pub name: Option<String>,
    /// Decimal string, more than 0 and at most 100, up to 4 places; or
    /// `amount_off` with `currency`.
    #[schema(pattern = "^\\s*[-+]?[0-9_.]+\\s*$")]
    pub percent_off: Option<String>,
    /// Decimal string at the currency's minor unit; needs `currency`.
    #[schema(pattern = "^\\s*[-+]?[0-9_.]+\\s*$")]
    pub amount_off: Option<String>,
    #[schema(
        pattern = "^(AUD|BHD|BRL|CAD|CHF|CLP|CNY|CZK|DKK|EUR|GBP|HKD|HUF|INR|ISK|JOD|JPY|KRW|KWD|MXN|NOK|NZD|PLN|SEK|SGD|TND|USD|ZAR)$"
    )]
    pub currency: Option<String>,
    /// once | repeating | forever
    #[schema(pattern = "^(once|repeating|forever)$")]
    pub duration: String,
    /// For `repeating`: how many invoiced periods (1–120).
    #[schema(minimum = 1, maximum = 120)]
    pub duration_in_periods: Option<u32>,
    #[schema(minimum = 1)]
    pub max_redemptions: Option<u32>,
    /// RFC 3339; after it the code can no longer be redeemed.
    pub redeem_by: Option<String>,
    /// The plans it applies to (`plan_…`); absent or empty: every plan.
    pub plan_ids: Option<Vec<String>>,
}

impl CreateCouponRequest {
    pub(crate) fn into_terms(self) -> Result<CouponTerms, ApiError> {
        let off = match (&self.percent_off, &self.amount_off, &self.currency) {
            (Some(p), None, None) => {
                let percent_off = parse_decimal("percent_off", p)?;
                if percent_off.normalize().scale() > MAX_PERCENT_PLACES {
                    return Err(ApiError::field(
                        "percent_off",
                        format!("at most {MAX_PERCENT_PLACES} decimal places"),
                    ));
                }
                CouponOff::Percent { percent_off }
            }
            (Some(_), _, _) => {
                return Err(ApiError::field(
                    "percent_off",
                    "give percent_off, or amount_off with currency, not both",
                ))
            }
            (None, Some(a), Some(c)) => {
                let currency = Currency::parse(c)
                    .map_err(|_| ApiError::field("currency", "unknown ISO 4217 currency"))?;
                let amount_off = Money::parse_price("amount_off", a, currency)?.amount();
                CouponOff::Amount {
                    amount_off,
                    currency,
                }
            }
            (None, Some(_), None) => {
                return Err(ApiError::field(
                    "currency",
                    "amount_off needs the currency it is in",
                ))
            }
            (None, None, Some(_)) => {
                return Err(ApiError::field(
                    "currency",
                    "a currency goes with amount_off only",
                ))
            }
            (None, None, None) => {
                return Err(ApiError::field(
                    "percent_off",
                    "give percent_off, or amount_off with currency",
                ))
            }
        };
        let duration = CouponDuration::parse(&self.duration)
            .ok_or_else(|| ApiError::field("duration", "must be once, repeating or forever"))?;
        let redeem_by = self
            .redeem_by
            .as_deref()
            .map(|s| parse_time("redeem_by", s))
            .transpose()?;
        Ok(CouponTerms {
            code: self.code,
            name: self.name,
            off,
            duration,
            duration_in_periods: self.duration_in_periods,
            max_redemptions: self.max_redemptions,
            redeem_by,
            plan_ids: self.plan_ids.unwrap_or_default(),
        })
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CouponDto {
    /// `cpn_…`, derived from the code.
    pub id: String,
    pub code: String,
    pub name: Option<String>,
    /// active | archived
    pub status: String,
    /// False once archived or past `redeem_by` (as of this answer).
    pub redeemable: bool,
    pub percent_off: Option<String>,
    pub amount_off: Option<String>,
    pub currency: Option<String>,
    /// once | repeating | forever
    pub duration: String,
    pub duration_in_periods: Option<u32>,
    pub max_redemptions: Option<u32>,
    pub times_redeemed: u32,
    pub redeem_by: Option<DateTime<Utc>>,
    pub plan_ids: Vec<String>,
    pub created_at: Option<DateTime<Utc>>,
    pub archived_at: Option<DateTime<Utc>>,
    pub version: i64,
}

impl CouponDto {
    pub fn from_state(id: &str, c: &Coupon, version: i64, now: DateTime<Utc>) -> Option<CouponDto> {
        let status = c.status?;
        let t = c.terms.as_ref()?;
        let (percent_off, amount_off, currency) = match &t.off {
            CouponOff::Percent { percent_off } => {
                (Some(percent_off.normalize().to_string()), None, None)
            }
            CouponOff::Amount {
                amount_off,
                currency,
            } => (
                None,
                Some(amount_off.to_string()),
                Some(currency.code().to_string()),
            ),
        };
        Some(CouponDto {
            id: id.to_string(),
            code: t.code.clone(),
            name: t.name.clone(),
            status: status.as_str().to_string(),
            redeemable: status == tally_aggregates::CouponStatus::Active
                && !c.expired_at(now)
                && t.max_redemptions.is_none_or(|max| c.times_redeemed < max),
            percent_off,
            amount_off,
            currency,
            duration: t.duration.as_str().to_string(),
            duration_in_periods: t.duration_in_periods,
            max_redemptions: t.max_redemptions,
            times_redeemed: c.times_redeemed,
            redeem_by: t.redeem_by,
            plan_ids: t.plan_ids.clone(),
            created_at: c.created_at,
            archived_at: c.archived_at,
            version,
        })
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct CouponListParams {
    /// active | archived
    pub status: Option<String>,
    /// Exactly this code, as created.
    pub code: Option<String>,
    #[param(value_type = Option<i64>, minimum = 1, maximum = 200)]
    pub limit: Option<String>,
    pub cursor: Option<String>,
}
