//! Request and response shapes of the plan endpoints, and their
//! mapping from domain and read-model types.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use tally_aggregates::money::parse_unit_price;
use tally_aggregates::plan::{MeterTerms, Plan, PlanTerms, ResetCadence, SeatLimits};
use tally_aggregates::pricing::{MeterPricing, PriceTier};
use tally_aggregates::{Currency, Interval, Money};
use utoipa::ToSchema;

use crate::dto::{parse_decimal, SeatsDto};
use crate::error::ApiError;

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

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct PlanListParams {
    /// active | archived
    pub status: Option<String>,
    pub code: Option<String>,
    #[param(value_type = Option<i64>, minimum = 1, maximum = 200)]
    pub limit: Option<String>,
    pub cursor: Option<String>,
}
