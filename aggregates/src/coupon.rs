//! The `Coupon` aggregate: a promotion a subscription can redeem by its code.
//! Active → Archived; a coupon past its `redeem_by` stays active but can no
//! longer be redeemed. Its stream counts the redemptions, so the command layer
//! appends each `CouponRedeemed` with the subscription's `DiscountApplied` in
//! one transaction, and the coupon stream's sequence decides who redeems
//! when many do at once: `max_redemptions` is never exceeded.
//!
//! The discount itself ([`CouponOff`]) is priced here too
//! ([`discount_line`]): one negative `discount` line per invoice on the
//! subscription's recurring, proration and usage lines, rounded half away
//! from zero, never more than those lines.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::invoice::{price_line, LineKind, NewLine};
use crate::money::{round_to_minor, validate_price};
use crate::plan::validate_id;
use crate::AggregateKind;
use crate::{Currency, DomainError};

/// The longest coupon code, in characters.
pub const MAX_CODE_CHARS: usize = 64;
/// The longest coupon name, in characters.
pub const MAX_NAME_CHARS: usize = 200;
/// Plans a coupon may be restricted to.
pub const MAX_PLAN_IDS: usize = 50;
/// The longest `repeating` duration, in billing periods (ten years of months).
pub const MAX_DURATION_PERIODS: u32 = 120;
/// Decimal places of a `percent_off`.
pub const MAX_PERCENT_PLACES: u32 = 4;

/// How much a coupon takes off.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum CouponOff {
    /// `percent_off` of the discounted lines, 0 < p ≤ 100.
    Percent {
        #[serde(with = "rust_decimal::serde::str")]
        percent_off: Decimal,
    },
    /// A fixed amount per invoice, in one currency, at most the discounted lines.
    Amount {
        #[serde(with = "rust_decimal::serde::str")]
        amount_off: Decimal,
        currency: Currency,
    },
}

/// For how many invoiced periods a redeemed coupon discounts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CouponDuration {
    Once,
    Repeating,
    Forever,
}

impl CouponDuration {
    pub const ALL: [CouponDuration; 3] = [
        CouponDuration::Once,
        CouponDuration::Repeating,
        CouponDuration::Forever,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            CouponDuration::Once => "once",
            CouponDuration::Repeating => "repeating",
            CouponDuration::Forever => "forever",
        }
    }

    pub fn parse(s: &str) -> Option<CouponDuration> {
        CouponDuration::ALL.into_iter().find(|d| d.as_str() == s)
    }
}

/// Everything `POST /v1/coupons` sets. Immutable once created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CouponTerms {
    /// What customers type: letters, digits, `-` and `_`. Unique per tenant,
    /// case-insensitively (the coupon's id is derived from it).
    pub code: String,
    #[serde(default)]
    pub name: Option<String>,
    pub off: CouponOff,
    pub duration: CouponDuration,
    /// For `repeating`: how many invoiced periods.
    #[serde(default)]
    pub duration_in_periods: Option<u32>,
    #[serde(default)]
    pub max_redemptions: Option<u32>,
    #[serde(default)]
    pub redeem_by: Option<DateTime<Utc>>,
    /// Plans it applies to; empty means every plan.
    #[serde(default)]
    pub plan_ids: Vec<String>,
}

/// Checks a coupon code's syntax.
pub fn validate_code(field: &str, code: &str) -> Result<(), DomainError> {
    if code.is_empty() || code.chars().count() > MAX_CODE_CHARS {
        return Err(DomainError::validation(
            field,
            format!("must be 1 to {MAX_CODE_CHARS} characters"),
        ));
    }
    if !code
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(DomainError::validation(
            field,
            "must be letters, digits, '-' or '_'",
        ));
    }
    Ok(())
}

/// The form of a code its coupon id is derived from: codes differing only in
/// case name one coupon.
pub fn canonical_code(code: &str) -> String {
    code.to_ascii_uppercase()
}

impl CouponTerms {
    /// Checks every field against the time of creation; the error names the
    /// first bad one.
    pub fn validate(&self, at: DateTime<Utc>) -> Result<(), DomainError> {
        validate_code("code", &self.code)?;
        if let Some(name) = &self.name {
            if name.trim().is_empty() || name.chars().count() > MAX_NAME_CHARS {
                return Err(DomainError::validation(
                    "name",
                    format!("must be 1 to {MAX_NAME_CHARS} characters"),
                ));
            }
            if name.chars().any(char::is_control) {
                return Err(DomainError::validation(
                    "name",
                    "must not contain control characters",
                ));
            }
        }
        match &self.off {
            CouponOff::Percent { percent_off } => {
                if *percent_off <= Decimal::ZERO || *percent_off > Decimal::ONE_HUNDRED {
                    return Err(DomainError::validation(
                        "percent_off",
                        "must be greater than 0 and at most 100",
                    ));
                }
                if percent_off.normalize().scale() > MAX_PERCENT_PLACES {
                    return Err(DomainError::validation(
                        "percent_off",
                        format!("at most {MAX_PERCENT_PLACES} decimal places"),
                    ));
                }
            }
            CouponOff::Amount {
                amount_off,
                currency,
            } => {
                validate_price("amount_off", *amount_off, *currency)?;
                if amount_off.is_zero() {
                    return Err(DomainError::validation(
                        "amount_off",
                        "must be greater than 0",
                    ));
                }
            }
        }
        match (self.duration, self.duration_in_periods) {
            (CouponDuration::Repeating, Some(n)) if (1..=MAX_DURATION_PERIODS).contains(&n) => {}
            (CouponDuration::Repeating, _) => {
                return Err(DomainError::validation(
                    "duration_in_periods",
                    format!("a repeating coupon needs 1 to {MAX_DURATION_PERIODS} periods"),
                ))
            }
            (CouponDuration::Once | CouponDuration::Forever, Some(_)) => {
                return Err(DomainError::validation(
                    "duration_in_periods",
                    "only a repeating coupon has a number of periods",
                ))
            }
            (CouponDuration::Once | CouponDuration::Forever, None) => {}
        }
        if self.max_redemptions == Some(0) {
            return Err(DomainError::validation(
                "max_redemptions",
                "must be at least 1",
            ));
        }
        if let Some(redeem_by) = self.redeem_by {
            crate::time::check_accepted("redeem_by", redeem_by)?;
            if redeem_by <= at {
                return Err(DomainError::validation(
                    "redeem_by",
                    "must be in the future",
                ));
            }
        }
        if self.plan_ids.len() > MAX_PLAN_IDS {
            return Err(DomainError::validation(
                "plan_ids",
                format!("at most {MAX_PLAN_IDS} plans"),
            ));
        }
        for (i, id) in self.plan_ids.iter().enumerate() {
            validate_id(&format!("plan_ids[{i}]"), id)?;
            if !id.starts_with("plan_") {
                return Err(DomainError::validation(
                    format!("plan_ids[{i}]"),
                    "must be a plan id (plan_…)",
                ));
            }
        }
        Ok(())
    }

    /// The invoiced periods a redemption discounts: `None` for ever.
    pub fn periods(&self) -> Option<u32> {
        match self.duration {
            CouponDuration::Once => Some(1),
            CouponDuration::Repeating => self.duration_in_periods,
            CouponDuration::Forever => None,
        }
    }
}

/// Where a coupon is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CouponStatus {
    Active,
    Archived,
}

impl CouponStatus {
    pub const ALL: [CouponStatus; 2] = [CouponStatus::Active, CouponStatus::Archived];

    pub fn as_str(&self) -> &'static str {
        match self {
            CouponStatus::Active => "active",
            CouponStatus::Archived => "archived",
        }
    }
}

/// A tenant's coupon. `status == None` means it was never created.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Coupon {
    pub id: Option<String>,
    pub status: Option<CouponStatus>,
    pub terms: Option<CouponTerms>,
    pub times_redeemed: u32,
    pub created_at: Option<DateTime<Utc>>,
    pub archived_at: Option<DateTime<Utc>>,
}

/// What can be asked of a coupon.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CouponCommand {
    Create {
        coupon_id: String,
        terms: CouponTerms,
        at: DateTime<Utc>,
    },
    /// A subscription on `plan_id`, billed in `currency`, takes the coupon.
    Redeem {
        subscription_id: String,
        plan_id: String,
        currency: Currency,
        at: DateTime<Utc>,
    },
    /// Active → Archived: no further redemptions; discounts already applied run on.
    Archive { at: DateTime<Utc> },
}

impl CouponCommand {
    pub fn name(&self) -> &'static str {
        match self {
            CouponCommand::Create { .. } => "create",
            CouponCommand::Redeem { .. } => "redeem",
            CouponCommand::Archive { .. } => "archive",
        }
    }
}

/// What happened to a coupon. Stored forever: see [`crate::EVENT_VERSION`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CouponEvent {
    CouponCreated {
        coupon_id: String,
        terms: CouponTerms,
        created_at: DateTime<Utc>,
    },
    /// One more redemption; `times_redeemed` is the count after it.
    CouponRedeemed {
        subscription_id: String,
        times_redeemed: u32,
        redeemed_at: DateTime<Utc>,
    },
    CouponArchived {
        archived_at: DateTime<Utc>,
    },
}

impl CouponEvent {
    pub fn name(&self) -> &'static str {
        match self {
            CouponEvent::CouponCreated { .. } => "CouponCreated",
            CouponEvent::CouponRedeemed { .. } => "CouponRedeemed",
            CouponEvent::CouponArchived { .. } => "CouponArchived",
        }
    }
}

impl Coupon {
    /// The coupon's terms.
    ///
    /// # Panics
    /// On a coupon that was never created.
    pub fn terms(&self) -> &CouponTerms {
        self.terms.as_ref().expect("a created coupon has terms")
    }

    /// Whether a redemption at `at` is past the coupon's `redeem_by`.
    pub fn expired_at(&self, at: DateTime<Utc>) -> bool {
        self.terms().redeem_by.is_some_and(|by| at > by)
    }

    /// Decides which events `command` causes, or why it is refused. Every
    /// (status, command) pair is listed on purpose.
    pub fn decide(&self, command: CouponCommand) -> Result<Vec<CouponEvent>, DomainError> {
        use CouponStatus::{Active, Archived};
        let name = command.name();
        match (self.status, command) {
            (
                None,
                CouponCommand::Create {
                    coupon_id,
                    terms,
                    at,
                },
            ) => {
                validate_id("coupon_id", &coupon_id)?;
                terms.validate(at)?;
                Ok(vec![CouponEvent::CouponCreated {
                    coupon_id,
                    terms,
                    created_at: at,
                }])
            }
            (Some(Active | Archived), CouponCommand::Create { .. }) => {
                Err(DomainError::AlreadyExists(AggregateKind::Coupon))
            }
            // Redeeming names the coupon by its code: an unknown code is an
            // invalid coupon, not a missing resource.
            (None, CouponCommand::Redeem { .. }) => {
                Err(DomainError::CouponInvalid("no coupon has this code".into()))
            }
            (None, CouponCommand::Archive { .. }) => {
                Err(DomainError::NotFound(AggregateKind::Coupon))
            }
            (
                Some(Active),
                CouponCommand::Redeem {
                    subscription_id,
                    plan_id,
                    currency,
                    at,
                },
            ) => self.redeem(subscription_id, &plan_id, currency, at),
            (Some(Archived), CouponCommand::Redeem { .. }) => {
                Err(DomainError::CouponInvalid("the coupon is archived".into()))
            }
            (Some(Active), CouponCommand::Archive { at }) => {
                Ok(vec![CouponEvent::CouponArchived { archived_at: at }])
            }
            (Some(from @ Archived), CouponCommand::Archive { .. }) => {
                Err(DomainError::InvalidTransition {
                    aggregate: AggregateKind::Coupon,
                    from: from.as_str().to_owned(),
                    command: name,
                })
            }
        }
    }

    fn redeem(
        &self,
        subscription_id: String,
        plan_id: &str,
        currency: Currency,
        at: DateTime<Utc>,
    ) -> Result<Vec<CouponEvent>, DomainError> {
        validate_id("subscription_id", &subscription_id)?;
        let terms = self.terms();
        if self.expired_at(at) {
            return Err(DomainError::CouponInvalid(
                "the coupon's redeem_by has passed".into(),
            ));
        }
        if !terms.plan_ids.is_empty() && !terms.plan_ids.iter().any(|p| p == plan_id) {
            return Err(DomainError::CouponNotApplicable(format!(
                "the coupon does not apply to plan {plan_id}"
            )));
        }
        if let CouponOff::Amount {
            currency: coupon_currency,
            ..
        } = &terms.off
        {
            if *coupon_currency != currency {
                return Err(DomainError::CouponNotApplicable(format!(
                    "the coupon takes {coupon_currency} off, the subscription is billed in {currency}"
                )));
            }
        }
        if terms
            .max_redemptions
            .is_some_and(|max| self.times_redeemed >= max)
        {
            return Err(DomainError::CouponExhausted(format!(
                "the coupon was redeemed {} times, its maximum",
                self.times_redeemed
            )));
        }
        Ok(vec![CouponEvent::CouponRedeemed {
            subscription_id,
            times_redeemed: self.times_redeemed + 1,
            redeemed_at: at,
        }])
    }

    /// Applies an event. Events come from `decide`, so an impossible one is a bug.
    pub fn evolve(&mut self, event: &CouponEvent) {
        match event {
            CouponEvent::CouponCreated {
                coupon_id,
                terms,
                created_at,
            } => {
                assert!(self.status.is_none(), "CouponCreated twice");
                self.id = Some(coupon_id.clone());
                self.status = Some(CouponStatus::Active);
                self.terms = Some(terms.clone());
                self.created_at = Some(*created_at);
            }
            CouponEvent::CouponRedeemed { times_redeemed, .. } => {
                assert_eq!(
                    self.status,
                    Some(CouponStatus::Active),
                    "CouponRedeemed on a coupon that is not active"
                );
                self.times_redeemed = *times_redeemed;
            }
            CouponEvent::CouponArchived { archived_at } => {
                assert_eq!(
                    self.status,
                    Some(CouponStatus::Active),
                    "CouponArchived on a coupon that is not active"
                );
                self.status = Some(CouponStatus::Archived);
                self.archived_at = Some(*archived_at);
            }
        }
    }
}

crate::cqrs_adapter!(Coupon, Coupon, CouponCommand, CouponEvent);

/// A coupon as the command layer loaded it, passed into the subscription's
/// `ApplyDiscount`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CouponRef {
    pub coupon_id: String,
    pub terms: CouponTerms,
}

/// The discount one billing event's invoice takes: carried by
/// `SubscriptionActivated` and `PeriodRenewed`, so the invoice needs no
/// other source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedDiscount {
    pub coupon_id: String,
    pub code: String,
    pub off: CouponOff,
}

/// Lines a discount covers: the subscription's own charges.
pub fn discounts(kind: LineKind) -> bool {
    match kind {
        LineKind::Recurring | LineKind::Usage | LineKind::Proration => true,
        LineKind::Manual | LineKind::Discount => false,
    }
}

/// What `off` takes from lines covered summing to `covered`: a negative
/// amount at the minor unit (zero when nothing is covered), never more than
/// `covered`. Percent: `round(covered × p / 100)`, half away from zero.
pub fn discount_amount(off: &CouponOff, covered: Decimal, currency: Currency) -> Decimal {
    let covered = round_to_minor(covered, currency);
    if covered <= Decimal::ZERO {
        return round_to_minor(Decimal::ZERO, currency);
    }
    let off = match off {
        CouponOff::Percent { percent_off } => {
            round_to_minor(covered * *percent_off / Decimal::ONE_HUNDRED, currency)
        }
        CouponOff::Amount { amount_off, .. } => *amount_off,
    };
    round_to_minor(-off.min(covered), currency)
}

/// The one `discount` line of an invoice with `lines`, or `None` when the
/// discount takes nothing (nothing covered, or all of it negative).
pub fn discount_line(
    discount: &AppliedDiscount,
    lines: &[NewLine],
    currency: Currency,
) -> Option<NewLine> {
    let covered: Decimal = lines
        .iter()
        .filter(|l| discounts(l.kind))
        .filter_map(|l| price_line(l, currency, 1, None).ok())
        .map(|l| l.amount)
        .sum();
    let amount = discount_amount(&discount.off, covered, currency);
    if amount.is_zero() {
        return None;
    }
    let what = match &discount.off {
        CouponOff::Percent { percent_off } => format!("{}% off", percent_off.normalize()),
        CouponOff::Amount { amount_off, .. } => format!("{amount_off} off"),
    };
    Some(NewLine {
        description: format!("Discount {} ({what})", discount.code),
        quantity: Decimal::ONE,
        unit_price: amount,
        kind: LineKind::Discount,
        period: None,
        tax_rate_ids: vec![],
    })
}
