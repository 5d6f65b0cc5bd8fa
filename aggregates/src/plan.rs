//! The `Plan` aggregate: a catalog entry with immutable terms (price, seats,
//! meters). Active → Archived; a new price is a new plan. Subscriptions copy the
//! terms they are on, so archiving a plan never changes what a customer pays.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::money::{round_to_minor, validate_price, validate_unit_price, MAX_AMOUNT};
use crate::pricing::MeterPricing;
use crate::subscription::PlanRef;
use crate::AggregateKind;
use crate::{Currency, DomainError, Interval};

/// The most meters a plan may define.
pub const MAX_METERS: usize = 50;
/// The most seats any plan may allow.
pub const MAX_SEATS: u32 = 1_000_000;
/// The longest plan code, meter key and plan id, in characters.
pub const MAX_CODE_CHARS: usize = 64;
/// The longest plan name, in characters.
pub const MAX_NAME_CHARS: usize = 200;
/// The longest trial a plan or subscription may give, in days (two years).
pub const MAX_TRIAL_DAYS: u32 = 730;
/// The most decimal places of a meter quantity.
pub const MAX_QUANTITY_PLACES: u32 = 12;
/// The most usage lines a plan's meters may put on one renewal invoice
/// (`MeterPricing::max_lines` summed), well within `invoice::MAX_LINES`.
pub const MAX_USAGE_LINES: usize = 100;

/// The inclusive range of seats a subscription on the plan may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SeatLimits {
    pub min: u32,
    pub max: u32,
}

impl Default for SeatLimits {
    /// One to ten thousand seats.
    fn default() -> Self {
        SeatLimits {
            min: 1,
            max: 10_000,
        }
    }
}

impl SeatLimits {
    /// Whether `seats` is within `min..=max`.
    pub fn contains(&self, seats: u32) -> bool {
        self.min <= seats && seats <= self.max
    }

    /// `Ok` when `seats` is within the limits, else [`DomainError::SeatLimit`].
    pub fn check(&self, seats: u32) -> Result<(), DomainError> {
        if self.contains(seats) {
            Ok(())
        } else {
            Err(DomainError::SeatLimit {
                seats,
                min: self.min,
                max: self.max,
            })
        }
    }

    /// `1 <= min <= max <= MAX_SEATS`.
    pub fn validate(&self) -> Result<(), DomainError> {
        if self.min < 1 {
            return Err(DomainError::validation("seats.min", "must be at least 1"));
        }
        if self.min > self.max {
            return Err(DomainError::validation(
                "seats.min",
                "must not be greater than seats.max",
            ));
        }
        if self.max > MAX_SEATS {
            return Err(DomainError::validation(
                "seats.max",
                format!("must not exceed {MAX_SEATS}"),
            ));
        }
        Ok(())
    }
}

/// When a meter's included quantity and hard cap start over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResetCadence {
    Lifetime,
    Monthly,
    Yearly,
}

/// The terms of one metered feature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "MeterTermsRepr", into = "MeterTermsRepr")]
pub struct MeterTerms {
    /// 1..=64 characters of `[a-z0-9_.-]`.
    pub key: String,
    /// Quantity included in the price per reset window.
    pub included: Option<Decimal>,
    /// Usage beyond this quantity per reset window is refused.
    pub hard_cap: Option<Decimal>,
    /// How usage beyond `included` is billed; `None`: it is not billed.
    pub pricing: Option<MeterPricing>,
    pub reset: ResetCadence,
}

/// The stored form of [`MeterTerms`], in plan and subscription events. A
/// per-unit price is stored as it always was, in `overage_unit_price`, so
/// that events of such meters read the same as before tiers existed; the
/// other models are stored in `pricing`, absent otherwise.
#[derive(Serialize, Deserialize)]
struct MeterTermsRepr {
    key: String,
    #[serde(default, with = "rust_decimal::serde::str_option")]
    included: Option<Decimal>,
    #[serde(default, with = "rust_decimal::serde::str_option")]
    hard_cap: Option<Decimal>,
    #[serde(default, with = "rust_decimal::serde::str_option")]
    overage_unit_price: Option<Decimal>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pricing: Option<MeterPricing>,
    reset: ResetCadence,
}

impl From<MeterTermsRepr> for MeterTerms {
    fn from(repr: MeterTermsRepr) -> Self {
        let per_unit = repr
            .overage_unit_price
            .map(|unit_price| MeterPricing::PerUnit { unit_price });
        MeterTerms {
            key: repr.key,
            included: repr.included,
            hard_cap: repr.hard_cap,
            pricing: repr.pricing.or(per_unit),
            reset: repr.reset,
        }
    }
}

impl From<MeterTerms> for MeterTermsRepr {
    fn from(terms: MeterTerms) -> Self {
        let (overage_unit_price, pricing) = match terms.pricing {
            Some(MeterPricing::PerUnit { unit_price }) => (Some(unit_price), None),
            other => (None, other),
        };
        MeterTermsRepr {
            key: terms.key,
            included: terms.included,
            hard_cap: terms.hard_cap,
            overage_unit_price,
            pricing,
            reset: terms.reset,
        }
    }
}

/// Whether `key` is a valid meter key: 1..=64 characters of `[a-z0-9_.-]`.
pub fn is_valid_meter_key(key: &str) -> bool {
    !key.is_empty()
        && key.chars().count() <= MAX_CODE_CHARS
        && key
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '.' | '-'))
}

/// Checks a meter quantity: not negative, at most [`MAX_AMOUNT`], at most
/// [`MAX_QUANTITY_PLACES`] places.
pub(crate) fn validate_quantity(field: &str, value: Option<Decimal>) -> Result<(), DomainError> {
    let Some(value) = value else {
        return Ok(());
    };
    if value.is_sign_negative() && !value.is_zero() {
        return Err(DomainError::validation(field, "must not be negative"));
    }
    if value > MAX_AMOUNT {
        return Err(DomainError::validation(
            field,
            format!("must not exceed {MAX_AMOUNT}"),
        ));
    }
    if value.normalize().scale() > MAX_QUANTITY_PLACES {
        return Err(DomainError::validation(
            field,
            format!("at most {MAX_QUANTITY_PLACES} decimal places"),
        ));
    }
    Ok(())
}

impl MeterTerms {
    /// Checks the key, quantities and pricing; `index` is the meter's
    /// position, for the field name in the error (`meters[2].hard_cap`).
    pub fn validate(&self, index: usize, currency: Currency) -> Result<(), DomainError> {
        let field = |name: &str| format!("meters[{index}].{name}");
        if !is_valid_meter_key(&self.key) {
            return Err(DomainError::validation(
                field("key"),
                "must be 1 to 64 characters of a-z, 0-9, '_', '.', '-'",
            ));
        }
        validate_quantity(&field("included"), self.included)?;
        validate_quantity(&field("hard_cap"), self.hard_cap)?;
        match &self.pricing {
            // The shorthand names the field a client sent.
            Some(MeterPricing::PerUnit { unit_price }) => {
                validate_unit_price(&field("overage_unit_price"), *unit_price, currency)?;
            }
            Some(pricing) => pricing.validate(&field("pricing"), currency)?,
            None => {}
        }
        if let (Some(included), Some(hard_cap)) = (self.included, self.hard_cap) {
            if included > hard_cap {
                return Err(DomainError::validation(
                    field("included"),
                    "must not be greater than hard_cap",
                ));
            }
        }
        Ok(())
    }
}

/// What a plan sells. Immutable once the plan exists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanTerms {
    pub code: String,
    pub name: String,
    pub currency: Currency,
    pub interval: Interval,
    #[serde(with = "rust_decimal::serde::str")]
    pub base_price: Decimal,
    /// Price per seat per period, a unit price (it may be finer than the
    /// minor unit); zero when the plan is not priced by seat.
    #[serde(default, with = "rust_decimal::serde::str")]
    pub seat_price: Decimal,
    #[serde(default)]
    pub seats: SeatLimits,
    #[serde(default)]
    pub meters: Vec<MeterTerms>,
    /// Days of trial a subscription on this plan starts with when it is
    /// activated; zero: none. Absent (zero) in terms stored before trials
    /// existed, and left out when zero so those terms keep their shape.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub trial_days: u32,
    /// The plan's tax rates (`txr_…`), third in the precedence line →
    /// subscription → plan → customer; absent in plans from before taxes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tax_rate_ids: Vec<String>,
}

fn is_zero(days: &u32) -> bool {
    *days == 0
}

/// Checks a number of trial days: at most [`MAX_TRIAL_DAYS`].
pub fn validate_trial_days(field: &str, days: u32) -> Result<(), DomainError> {
    if days > MAX_TRIAL_DAYS {
        return Err(DomainError::validation(
            field,
            format!("must be at most {MAX_TRIAL_DAYS}"),
        ));
    }
    Ok(())
}

fn validate_text(field: &str, value: &str, max_chars: usize) -> Result<(), DomainError> {
    if value.trim().is_empty() {
        return Err(DomainError::validation(field, "must not be empty"));
    }
    if value.chars().count() > max_chars {
        return Err(DomainError::validation(
            field,
            format!("must be at most {max_chars} characters"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(DomainError::validation(
            field,
            "must not contain control characters",
        ));
    }
    Ok(())
}

impl PlanTerms {
    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), DomainError> {
        crate::tax::validate_rate_ids("tax_rate_ids", &self.tax_rate_ids)?;
        validate_text("code", &self.code, MAX_CODE_CHARS)?;
        if self.code.trim() != self.code {
            return Err(DomainError::validation(
                "code",
                "must not start or end with whitespace",
            ));
        }
        validate_text("name", &self.name, MAX_NAME_CHARS)?;
        validate_price("base_price", self.base_price, self.currency)?;
        validate_unit_price("seat_price", self.seat_price, self.currency)?;
        self.seats.validate()?;
        validate_trial_days("trial_days", self.trial_days)?;
        if self.meters.len() > MAX_METERS {
            return Err(DomainError::validation(
                "meters",
                format!("at most {MAX_METERS} meters"),
            ));
        }
        for (index, meter) in self.meters.iter().enumerate() {
            meter.validate(index, self.currency)?;
            if self.meters[..index].iter().any(|m| m.key == meter.key) {
                return Err(DomainError::validation(
                    format!("meters[{index}].key"),
                    format!("duplicate meter key {:?}", meter.key),
                ));
            }
        }
        let usage_lines: usize = self
            .meters
            .iter()
            .filter_map(|m| m.pricing.as_ref())
            .map(MeterPricing::max_lines)
            .sum();
        if usage_lines > MAX_USAGE_LINES {
            return Err(DomainError::validation(
                "meters",
                format!(
                    "the meters' prices may bill at most {MAX_USAGE_LINES} invoice lines \
                     (one per tier, one more per tier with a flat fee); these bill {usage_lines}"
                ),
            ));
        }
        Ok(())
    }

    /// The meter with this key.
    pub fn meter(&self, key: &str) -> Option<&MeterTerms> {
        self.meters.iter().find(|m| m.key == key)
    }

    /// The price of one period: `base_price + seats × seat_price`, rounded to
    /// the currency's minor unit. Validated terms cannot overflow.
    pub fn recurring_amount(&self, seats: u32) -> Decimal {
        round_to_minor(
            self.base_price + Decimal::from(seats) * self.seat_price,
            self.currency,
        )
    }
}

/// Where a plan is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PlanStatus {
    Active,
    Archived,
}

impl PlanStatus {
    /// Every status, for tests and tables.
    pub const ALL: [PlanStatus; 2] = [PlanStatus::Active, PlanStatus::Archived];

    /// The snake_case name ("active", "archived").
    pub fn as_str(&self) -> &'static str {
        match self {
            PlanStatus::Active => "active",
            PlanStatus::Archived => "archived",
        }
    }
}

/// A catalog plan. `status == None` means it was never created.
#[derive(Default, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Plan {
    pub id: Option<String>,
    pub status: Option<PlanStatus>,
    pub terms: Option<PlanTerms>,
    pub created_at: Option<DateTime<Utc>>,
    pub archived_at: Option<DateTime<Utc>>,
}

/// What can be asked of a plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum PlanCommand {
    Create {
        plan_id: String,
        terms: PlanTerms,
        at: DateTime<Utc>,
    },
    Archive {
        at: DateTime<Utc>,
    },
}

impl PlanCommand {
    /// The snake_case command name used in `InvalidTransition`.
    pub fn name(&self) -> &'static str {
        match self {
            PlanCommand::Create { .. } => "create",
            PlanCommand::Archive { .. } => "archive",
        }
    }
}

/// What happened to a plan. Stored forever: see [`EVENT_VERSION`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum PlanEvent {
    PlanCreated {
        plan_id: String,
        terms: PlanTerms,
        created_at: DateTime<Utc>,
    },
    PlanArchived {
        archived_at: DateTime<Utc>,
    },
}

impl PlanEvent {
    /// The variant name, used as the stored event type.
    pub fn name(&self) -> &'static str {
        match self {
            PlanEvent::PlanCreated { .. } => "PlanCreated",
            PlanEvent::PlanArchived { .. } => "PlanArchived",
        }
    }
}

/// Checks an aggregate id: 1..=64 characters, no whitespace or control characters.
pub(crate) fn validate_id(field: &str, id: &str) -> Result<(), DomainError> {
    if id.is_empty() || id.chars().count() > MAX_CODE_CHARS {
        return Err(DomainError::validation(
            field,
            format!("must be 1 to {MAX_CODE_CHARS} characters"),
        ));
    }
    if id.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(DomainError::validation(
            field,
            "must not contain whitespace or control characters",
        ));
    }
    Ok(())
}

impl Plan {
    /// Whether the plan exists and is not archived.
    pub fn is_active(&self) -> bool {
        self.status == Some(PlanStatus::Active)
    }

    /// What a subscription command needs to know about this plan; `None` when
    /// the plan was never created.
    pub fn plan_ref(&self) -> Option<PlanRef> {
        Some(PlanRef {
            plan_id: self.id.clone()?,
            terms: self.terms.clone()?,
            active: self.is_active(),
        })
    }

    /// Decides which events `command` causes, or why it is refused.
    pub fn decide(&self, command: PlanCommand) -> Result<Vec<PlanEvent>, DomainError> {
        use PlanStatus::{Active, Archived};
        match (self.status, command) {
            (None, PlanCommand::Create { plan_id, terms, at }) => {
                validate_id("plan_id", &plan_id)?;
                terms.validate()?;
                Ok(vec![PlanEvent::PlanCreated {
                    plan_id,
                    terms,
                    created_at: at,
                }])
            }
            (Some(Active | Archived), PlanCommand::Create { .. }) => {
                Err(DomainError::AlreadyExists(AggregateKind::Plan))
            }
            (None, PlanCommand::Archive { .. }) => Err(DomainError::NotFound(AggregateKind::Plan)),
            (Some(Active), PlanCommand::Archive { at }) => {
                Ok(vec![PlanEvent::PlanArchived { archived_at: at }])
            }
            (Some(from @ Archived), command @ PlanCommand::Archive { .. }) => {
                Err(DomainError::InvalidTransition {
                    aggregate: AggregateKind::Plan,
                    from: from.as_str().to_owned(),
                    command: command.name(),
                })
            }
        }
    }

    /// Applies an event. Events come from `decide`, so an impossible one is a bug.
    pub fn evolve(&mut self, event: &PlanEvent) {
        match event {
            PlanEvent::PlanCreated {
                plan_id,
                terms,
                created_at,
            } => {
                assert!(self.status.is_none(), "PlanCreated on an existing plan");
                self.id = Some(plan_id.clone());
                self.status = Some(PlanStatus::Active);
                self.terms = Some(terms.clone());
                self.created_at = Some(*created_at);
            }
            PlanEvent::PlanArchived { archived_at } => {
                assert_eq!(
                    self.status,
                    Some(PlanStatus::Active),
                    "PlanArchived on a plan that is not active"
                );
                self.status = Some(PlanStatus::Archived);
                self.archived_at = Some(*archived_at);
            }
        }
    }
}

crate::cqrs_adapter!(Plan, Plan, PlanCommand, PlanEvent);
