//! Request and response bodies of the HTTP API, and their mapping from domain
//! and read-model types. Only this crate knows these shapes.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use tally_aggregates::customer::{Address, Customer, CustomerDetails};
use tally_aggregates::money::parse_unit_price;
use tally_aggregates::plan::{MeterTerms, Plan, PlanTerms, ResetCadence, SeatLimits};
use tally_aggregates::pricing::{MeterPricing, PriceTier};
use tally_aggregates::subscription::{Subscription, SuspendReason};
use tally_aggregates::{Currency, Interval, Money};
use utoipa::ToSchema;

use crate::error::ApiError;

// ---------- shared ----------

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

// ---------- plans ----------

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePlanRequest {
    /// Not blank, no control characters.
    #[schema(
        max_length = 64,
        pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]*[^\\s\\x00-\\x1f\\x7f-\\x9f][^\\x00-\\x1f\\x7f-\\x9f]*$"
    )]
    pub code: String,
    /// Not blank, no control characters.
    #[schema(
        max_length = 200,
        pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]*[^\\s\\x00-\\x1f\\x7f-\\x9f][^\\x00-\\x1f\\x7f-\\x9f]*$"
    )]
    pub name: String,
    /// ISO 4217 code, e.g. "EUR".
    #[schema(
        pattern = "^(AUD|BHD|BRL|CAD|CHF|CLP|CNY|CZK|DKK|EUR|GBP|HKD|HUF|INR|ISK|JOD|JPY|KRW|KWD|MXN|NOK|NZD|PLN|SEK|SGD|TND|USD|ZAR)$"
    )]
    pub currency: String,
    #[schema(value_type = String, pattern = "^(month|year)$", example = "month")]
    pub interval: Interval,
    /// An amount: decimal string at the currency's minor unit.
    #[schema(pattern = "^[-+]?[0-9_.]+$")]
    pub base_price: String,
    /// A unit price: decimal string, up to 12 decimal places.
    #[schema(pattern = "^[-+]?[0-9_.]+$")]
    pub seat_price: Option<String>,
    pub seats: Option<SeatsDto>,
    /// Days of trial a subscription on the plan starts with when activated
    /// (0 to 730; default 0, none).
    #[schema(maximum = 730)]
    pub trial_days: Option<u32>,
    /// Tax rates (`txr_…`, active) for the plan's invoices, after a line's
    /// and a subscription's own and before the customer's.
    pub tax_rate_ids: Option<Vec<String>>,
    #[serde(default)]
    pub meters: Vec<MeterRequest>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MeterRequest {
    #[schema(pattern = "^[a-z0-9_.-]{1,64}$")]
    pub key: String,
    #[schema(pattern = "^\\s*[-+]?[0-9_.]+\\s*$")]
    pub included: Option<String>,
    #[schema(pattern = "^\\s*[-+]?[0-9_.]+\\s*$")]
    pub hard_cap: Option<String>,
    /// Shorthand for `pricing: {"model": "per_unit", "unit_price": …}`; a
    /// unit price, up to 12 decimal places. Not together with `pricing`.
    #[schema(pattern = "^[-+]?[0-9_.]+$")]
    pub overage_unit_price: Option<String>,
    /// How the usage of one window beyond `included` is billed; without it
    /// (and without `overage_unit_price`) usage is not billed.
    pub pricing: Option<PricingDto>,
    #[schema(value_type = String, pattern = "^(lifetime|monthly|yearly)$", example = "monthly")]
    pub reset: ResetCadence,
}

/// A meter's pricing model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PricingModel {
    PerUnit,
    Graduated,
    Volume,
    Package,
}

/// How a meter's usage beyond `included` is priced, per window. `per_unit`
/// takes `unit_price`; `graduated` (each unit at its tier's price, a tier's
/// `flat_fee` once when any unit falls in it, one invoice line per tier
/// used) and `volume` (every unit at the price of the tier the window's
/// billable total falls in, plus that tier's `flat_fee`) take `tiers`;
/// `package` takes `package_size` and `package_price` (per started package).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PricingDto {
    #[schema(value_type = String, pattern = "^(per_unit|graduated|volume|package)$", example = "graduated")]
    pub model: PricingModel,
    /// `per_unit`: the price of one unit, up to 12 decimal places.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^[-+]?[0-9_.]+$")]
    pub unit_price: Option<String>,
    /// `graduated`, `volume`: 1 to 20 tiers, ascending `up_to`, the last
    /// with `up_to` null.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tiers: Option<Vec<TierDto>>,
    /// `package`: units per package, a whole number of at least 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^[-+]?[0-9_.]+$")]
    pub package_size: Option<String>,
    /// `package`: the price of one started package, up to 12 decimal places.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^[-+]?[0-9_.]+$")]
    pub package_price: Option<String>,
}

/// One tier of a graduated or volume price.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TierDto {
    /// The last billable unit of the window in this tier (inclusive); null
    /// for the last tier, which is open.
    #[schema(pattern = "^\\s*[-+]?[0-9_.]+\\s*$")]
    pub up_to: Option<String>,
    /// Up to 12 decimal places.
    #[schema(pattern = "^[-+]?[0-9_.]+$")]
    pub unit_price: String,
    /// An amount at the currency's minor unit, billed once when the tier is
    /// entered; default 0.
    #[serde(default)]
    #[schema(pattern = "^[-+]?[0-9_.]+$")]
    pub flat_fee: Option<String>,
}

impl PricingDto {
    /// The domain's pricing; `field` is the DTO's path (`meters[0].pricing`).
    /// Fields the model does not use are refused, naming them.
    fn into_pricing(self, field: &str, currency: Currency) -> Result<MeterPricing, ApiError> {
        let name = |n: &str| format!("{field}.{n}");
        let model = enum_str(&self.model);
        let missing = |n: &str| ApiError::field(&name(n), format!("required for model {model}"));
        let given = [
            ("unit_price", self.unit_price.is_some()),
            ("tiers", self.tiers.is_some()),
            ("package_size", self.package_size.is_some()),
            ("package_price", self.package_price.is_some()),
        ];
        let uses: &[&str] = match self.model {
            PricingModel::PerUnit => &["unit_price"],
            PricingModel::Graduated | PricingModel::Volume => &["tiers"],
            PricingModel::Package => &["package_size", "package_price"],
        };
        if let Some((n, _)) = given.iter().find(|(n, given)| *given && !uses.contains(n)) {
            return Err(ApiError::field(
                &name(n),
                format!("not used by model {model}"),
            ));
        }
        Ok(match self.model {
            PricingModel::PerUnit => {
                let unit_price = self.unit_price.ok_or_else(|| missing("unit_price"))?;
                MeterPricing::PerUnit {
                    unit_price: parse_unit_price(&name("unit_price"), &unit_price, currency)?,
                }
            }
            PricingModel::Graduated | PricingModel::Volume => {
                let tiers = self
                    .tiers
                    .ok_or_else(|| missing("tiers"))?
                    .into_iter()
                    .enumerate()
                    .map(|(j, tier)| tier.into_tier(&format!("{field}.tiers[{j}]"), currency))
                    .collect::<Result<Vec<_>, ApiError>>()?;
                if self.model == PricingModel::Graduated {
                    MeterPricing::Graduated { tiers }
                } else {
                    MeterPricing::Volume { tiers }
                }
            }
            PricingModel::Package => {
                let size = self.package_size.ok_or_else(|| missing("package_size"))?;
                let price = self.package_price.ok_or_else(|| missing("package_price"))?;
                MeterPricing::Package {
                    package_size: parse_decimal(&name("package_size"), &size)?,
                    package_price: parse_unit_price(&name("package_price"), &price, currency)?,
                }
            }
        })
    }

    /// The wire form of a stored pricing.
    fn from_pricing(pricing: &MeterPricing) -> PricingDto {
        let dto = |model| PricingDto {
            model,
            unit_price: None,
            tiers: None,
            package_size: None,
            package_price: None,
        };
        let tiers = |tiers: &[PriceTier]| Some(tiers.iter().map(TierDto::from_tier).collect());
        match pricing {
            MeterPricing::PerUnit { unit_price } => PricingDto {
                unit_price: Some(unit_price.to_string()),
                ..dto(PricingModel::PerUnit)
            },
            MeterPricing::Graduated { tiers: t } => PricingDto {
                tiers: tiers(t),
                ..dto(PricingModel::Graduated)
            },
            MeterPricing::Volume { tiers: t } => PricingDto {
                tiers: tiers(t),
                ..dto(PricingModel::Volume)
            },
            MeterPricing::Package {
                package_size,
                package_price,
            } => PricingDto {
                package_size: Some(package_size.normalize().to_string()),
                package_price: Some(package_price.to_string()),
                ..dto(PricingModel::Package)
            },
        }
    }
}

impl TierDto {
    /// The domain's tier; `field` is the DTO's path (`meters[0].pricing.tiers[1]`).
    fn into_tier(self, field: &str, currency: Currency) -> Result<PriceTier, ApiError> {
        let name = |n: &str| format!("{field}.{n}");
        Ok(PriceTier {
            up_to: self
                .up_to
                .as_deref()
                .map(|s| parse_decimal(&name("up_to"), s))
                .transpose()?,
            unit_price: parse_unit_price(&name("unit_price"), &self.unit_price, currency)?,
            flat_fee: match &self.flat_fee {
                Some(s) => Money::parse_price(&name("flat_fee"), s, currency)?.amount(),
                None => Money::zero(currency).amount(),
            },
        })
    }

    fn from_tier(tier: &PriceTier) -> TierDto {
        TierDto {
            up_to: tier.up_to.map(|d| d.normalize().to_string()),
            unit_price: tier.unit_price.to_string(),
            flat_fee: Some(tier.flat_fee.to_string()),
        }
    }
}

impl CreatePlanRequest {
    pub fn into_terms(self) -> Result<PlanTerms, ApiError> {
        let currency = Currency::parse(&self.currency)
            .map_err(|_| ApiError::field("currency", "unknown ISO 4217 currency"))?;
        let base_price = Money::parse_price("base_price", &self.base_price, currency)?.amount();
        let seat_price = match &self.seat_price {
            Some(s) => parse_unit_price("seat_price", s, currency)?,
            None => Decimal::ZERO,
        };
        let meters = self
            .meters
            .into_iter()
            .enumerate()
            .map(|(i, m)| {
                let q = |name: &str, v: &Option<String>| -> Result<Option<Decimal>, ApiError> {
                    v.as_deref()
                        .map(|s| parse_decimal(&format!("meters[{i}].{name}"), s))
                        .transpose()
                };
                let pricing = match (m.overage_unit_price, m.pricing) {
                    (Some(_), Some(_)) => {
                        return Err(ApiError::field(
                            &format!("meters[{i}].pricing"),
                            "give either overage_unit_price or pricing, not both",
                        ))
                    }
                    (Some(s), None) => Some(MeterPricing::PerUnit {
                        unit_price: parse_unit_price(
                            &format!("meters[{i}].overage_unit_price"),
                            &s,
                            currency,
                        )?,
                    }),
                    (None, Some(pricing)) => {
                        Some(pricing.into_pricing(&format!("meters[{i}].pricing"), currency)?)
                    }
                    (None, None) => None,
                };
                Ok(MeterTerms {
                    included: q("included", &m.included)?,
                    hard_cap: q("hard_cap", &m.hard_cap)?,
                    pricing,
                    key: m.key,
                    reset: m.reset,
                })
            })
            .collect::<Result<Vec<_>, ApiError>>()?;
        let terms = PlanTerms {
            code: self.code,
            name: self.name,
            currency,
            interval: self.interval,
            base_price,
            seat_price,
            seats: self
                .seats
                .map(|s| SeatLimits {
                    min: s.min,
                    max: s.max,
                })
                .unwrap_or_default(),
            meters,
            trial_days: self.trial_days.unwrap_or(0),
            tax_rate_ids: self.tax_rate_ids.unwrap_or_default(),
        };
        terms.validate()?;
        Ok(terms)
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MeterDto {
    pub key: String,
    pub included: Option<String>,
    pub hard_cap: Option<String>,
    /// The unit price of a `per_unit` meter (the shorthand); null otherwise.
    pub overage_unit_price: Option<String>,
    /// How usage beyond `included` is billed; null: it is not billed.
    pub pricing: Option<PricingDto>,
    /// lifetime | monthly | yearly
    pub reset: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PlanDto {
    pub id: String,
    pub code: String,
    pub name: String,
    pub currency: String,
    /// month | year
    pub interval: String,
    pub base_price: String,
    pub seat_price: String,
    pub seats: SeatsDto,
    pub meters: Vec<MeterDto>,
    /// Days of trial a subscription on the plan starts with; 0: none.
    pub trial_days: u32,
    pub tax_rate_ids: Vec<String>,
    /// active | archived
    pub status: String,
    pub created_at: Option<DateTime<Utc>>,
    pub archived_at: Option<DateTime<Utc>>,
    pub version: i64,
}

fn enum_str<T: Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

impl PlanDto {
    pub fn from_state(id: &str, p: &Plan, version: i64) -> Option<PlanDto> {
        let terms = p.terms.as_ref()?;
        Some(PlanDto {
            id: id.to_string(),
            code: terms.code.clone(),
            name: terms.name.clone(),
            currency: terms.currency.code().to_string(),
            interval: enum_str(&terms.interval),
            base_price: terms.base_price.to_string(),
            seat_price: terms.seat_price.to_string(),
            seats: SeatsDto {
                min: terms.seats.min,
                max: terms.seats.max,
            },
            meters: terms
                .meters
                .iter()
                .map(|m| MeterDto {
                    key: m.key.clone(),
                    included: m.included.map(|d| d.to_string()),
                    hard_cap: m.hard_cap.map(|d| d.to_string()),
                    overage_unit_price: match &m.pricing {
                        Some(MeterPricing::PerUnit { unit_price }) => Some(unit_price.to_string()),
                        _ => None,
                    },
                    pricing: m.pricing.as_ref().map(PricingDto::from_pricing),
                    reset: enum_str(&m.reset),
                })
                .collect(),
            trial_days: terms.trial_days,
            tax_rate_ids: terms.tax_rate_ids.clone(),
            status: p.status.as_ref().map(enum_str).unwrap_or_default(),
            created_at: p.created_at,
            archived_at: p.archived_at,
            version,
        })
    }
}

// ---------- subscriptions ----------

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

/// The body of a command that takes none: empty or `{}`, nothing else.
#[derive(Debug, Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct EmptyRequest {}

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
    pub window: crate::routes::usage::WindowDto,
    pub used: String,
    pub hard_cap: Option<String>,
    pub remaining: Option<String>,
}

impl From<&tally_projections::usage::Entitlement> for EntitlementDto {
    fn from(e: &tally_projections::usage::Entitlement) -> Self {
        EntitlementDto {
            meter: e.meter.clone(),
            window: crate::routes::usage::WindowDto::from(&e.window),
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

// ---------- customers ----------

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddressDto {
    pub line1: String,
    pub line2: Option<String>,
    pub city: String,
    pub postal_code: Option<String>,
    /// ISO 3166-1 alpha-2, upper case, e.g. "DE".
    #[schema(pattern = "^[A-Z]{2}$")]
    pub country: String,
}

impl AddressDto {
    fn into_address(self) -> Address {
        Address {
            line1: self.line1,
            line2: self.line2,
            city: self.city,
            postal_code: self.postal_code,
            country: self.country,
        }
    }

    fn from_address(a: &Address) -> AddressDto {
        AddressDto {
            line1: a.line1.clone(),
            line2: a.line2.clone(),
            city: a.city.clone(),
            postal_code: a.postal_code.clone(),
            country: a.country.clone(),
        }
    }
}

/// The body of `PUT /v1/customers/{customer_id}`: every field the customer
/// has; a field left out is cleared.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutCustomerRequest {
    /// Not blank, at most 200 characters.
    #[schema(max_length = 200)]
    pub name: String,
    pub email: Option<String>,
    /// The customer's default currency (ISO 4217).
    #[schema(
        pattern = "^(AUD|BHD|BRL|CAD|CHF|CLP|CNY|CZK|DKK|EUR|GBP|HKD|HUF|INR|ISK|JOD|JPY|KRW|KWD|MXN|NOK|NZD|PLN|SEK|SGD|TND|USD|ZAR)$"
    )]
    pub currency: Option<String>,
    pub address: Option<AddressDto>,
    /// Default tax rates (`txr_…`), at most 10.
    pub tax_rate_ids: Option<Vec<String>>,
    /// Up to 50 string values.
    pub metadata: Option<std::collections::BTreeMap<String, String>>,
}

impl PutCustomerRequest {
    pub fn into_details(self) -> Result<CustomerDetails, ApiError> {
        let currency = self
            .currency
            .as_deref()
            .map(|c| {
                Currency::parse(c)
                    .map_err(|_| ApiError::field("currency", "unknown ISO 4217 currency"))
            })
            .transpose()?;
        let details = CustomerDetails {
            name: self.name,
            email: self.email,
            currency,
            address: self.address.map(AddressDto::into_address),
            tax_rate_ids: self.tax_rate_ids.unwrap_or_default(),
            metadata: self.metadata.unwrap_or_default(),
        };
        details.validate()?;
        Ok(details)
    }
}

/// A customer's details as an invoice copied them when it was issued.
#[derive(Debug, Serialize, ToSchema)]
pub struct CustomerDetailsDto {
    pub name: String,
    pub email: Option<String>,
    pub address: Option<AddressDto>,
}

impl CustomerDetailsDto {
    pub fn from_details(d: &CustomerDetails) -> CustomerDetailsDto {
        CustomerDetailsDto {
            name: d.name.clone(),
            email: d.email.clone(),
            address: d.address.as_ref().map(AddressDto::from_address),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CustomerDto {
    /// The client's own id for the customer.
    pub id: String,
    pub name: String,
    pub email: Option<String>,
    pub currency: Option<String>,
    pub address: Option<AddressDto>,
    pub tax_rate_ids: Vec<String>,
    pub metadata: std::collections::BTreeMap<String, String>,
    pub created_at: Option<DateTime<Utc>>,
    pub updated_at: Option<DateTime<Utc>>,
    pub version: i64,
}

impl CustomerDto {
    pub fn from_state(id: &str, c: &Customer, version: i64) -> Option<CustomerDto> {
        let d = c.details.as_ref()?;
        Some(CustomerDto {
            id: id.to_string(),
            name: d.name.clone(),
            email: d.email.clone(),
            currency: d.currency.map(|c| c.code().to_string()),
            address: d.address.as_ref().map(AddressDto::from_address),
            tax_rate_ids: d.tax_rate_ids.clone(),
            metadata: d.metadata.clone(),
            created_at: c.created_at,
            updated_at: c.updated_at,
            version,
        })
    }
}

// ---------- audit ----------

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

// ---------- operations ----------

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
