//! Meter pricing: how the usage of one meter window beyond `included` is
//! charged (API.md § Plans). Four models:
//!
//! - `per_unit`: every billable unit at one unit price.
//! - `graduated`: each unit at the price of the tier it falls in, and a
//!   tier's flat fee once when any unit falls in it.
//! - `volume`: every unit at the price of the tier the window's billable
//!   total falls in, plus that tier's flat fee.
//! - `package`: a package price per started package of `package_size` units.
//!
//! A tier covers the billable units up to and including its `up_to`; the last
//! tier is open. Zero billable units cost nothing in every model.
//!
//! Rating is exact decimal arithmetic on quantities; it yields charges
//! (quantity × unit price), and each becomes one invoice line whose amount
//! the invoice rounds once, half away from zero to the minor unit
//! (`invoice::price_line`). Unit prices may be finer than the minor unit;
//! flat fees are amounts, at the minor unit.
//!
//! A window that spans several billing periods (a yearly meter on a monthly
//! plan) is rated period by period on what is newly billable: per unit,
//! graduated and package charges then add up over the window to exactly the
//! charge of its total. Volume pricing prices a period's new units at the tier
//! the window's total has reached so far (and bills that tier's flat fee when
//! the total enters it); units billed in earlier periods keep their price.

use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::money::{validate_price, validate_unit_price};
use crate::plan::validate_quantity;
use crate::{Currency, DomainError};

/// The most tiers of a graduated or volume price.
pub const MAX_TIERS: usize = 20;

/// One tier of a graduated or volume price.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PriceTier {
    /// The last billable unit of the window this tier covers (inclusive);
    /// `None` for the last tier, which is open.
    #[serde(default, with = "optional_decimal_text")]
    pub up_to: Option<Decimal>,
    /// May be finer than the minor unit.
    #[serde(with = "rust_decimal::serde::str")]
    pub unit_price: Decimal,
    /// An amount at the minor unit, billed once when the tier is entered.
    #[serde(default, with = "rust_decimal::serde::str")]
    pub flat_fee: Decimal,
}

/// `Option<Decimal>` as a decimal string or null. `rust_decimal`'s
/// `str_option` cannot read a null that serde has buffered, which it does
/// for the fields of an internally tagged enum such as [`MeterPricing`].
mod optional_decimal_text {
    use rust_decimal::Decimal;
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Option<Decimal>, s: S) -> Result<S::Ok, S::Error> {
        rust_decimal::serde::str_option::serialize(value, s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Decimal>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|text| Decimal::from_str_exact(&text).map_err(D::Error::custom))
            .transpose()
    }
}

/// How a meter's billable usage is priced. Stored in plan and subscription
/// events: the shape is part of the event contract.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "model", rename_all = "snake_case")]
pub enum MeterPricing {
    PerUnit {
        #[serde(with = "rust_decimal::serde::str")]
        unit_price: Decimal,
    },
    Graduated {
        tiers: Vec<PriceTier>,
    },
    Volume {
        tiers: Vec<PriceTier>,
    },
    Package {
        /// A whole number of units, at least 1.
        #[serde(with = "rust_decimal::serde::str")]
        package_size: Decimal,
        /// The price of one package; may be finer than the minor unit.
        #[serde(with = "rust_decimal::serde::str")]
        package_price: Decimal,
    },
}

/// What a charge is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ChargeKind {
    /// Billable units at a unit price.
    Units,
    /// A tier's flat fee (quantity: how many windows entered the tier).
    FlatFee,
    /// Started packages at the package price.
    Packages,
}

/// One priced quantity; it becomes one invoice line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Charge {
    /// The 0-based tier, for graduated and volume prices.
    pub tier: Option<usize>,
    pub kind: ChargeKind,
    pub quantity: Decimal,
    pub unit_price: Decimal,
}

impl MeterPricing {
    /// The snake_case model name ("per_unit", "graduated", "volume", "package").
    pub fn model(&self) -> &'static str {
        match self {
            MeterPricing::PerUnit { .. } => "per_unit",
            MeterPricing::Graduated { .. } => "graduated",
            MeterPricing::Volume { .. } => "volume",
            MeterPricing::Package { .. } => "package",
        }
    }

    /// Checks the prices and tiers; `field` prefixes the names in errors
    /// (`meters[0].pricing` → `meters[0].pricing.tiers[1].up_to`).
    pub fn validate(&self, field: &str, currency: Currency) -> Result<(), DomainError> {
        match self {
            MeterPricing::PerUnit { unit_price } => {
                validate_unit_price(&format!("{field}.unit_price"), *unit_price, currency)?;
            }
            MeterPricing::Graduated { tiers } | MeterPricing::Volume { tiers } => {
                validate_tiers(&format!("{field}.tiers"), tiers, currency)?;
            }
            MeterPricing::Package {
                package_size,
                package_price,
            } => {
                let size_field = format!("{field}.package_size");
                validate_quantity(&size_field, Some(*package_size))?;
                if *package_size < Decimal::ONE || !package_size.fract().is_zero() {
                    return Err(DomainError::validation(
                        size_field,
                        "must be a whole number of at least 1",
                    ));
                }
                validate_unit_price(&format!("{field}.package_price"), *package_price, currency)?;
            }
        }
        Ok(())
    }

    /// The most invoice lines one renewal bills for a meter with this price:
    /// one per tier, and one more per tier with a flat fee.
    pub fn max_lines(&self) -> usize {
        match self {
            MeterPricing::PerUnit { .. } | MeterPricing::Package { .. } => 1,
            MeterPricing::Graduated { tiers } | MeterPricing::Volume { tiers } => {
                tiers.len() + tiers.iter().filter(|t| !t.flat_fee.is_zero()).count()
            }
        }
    }

    /// The charges for `during` units used in a window after `before` units
    /// of the same window were used (and rated) already; the first `included`
    /// units of a window are free. Charges come in tier order, a tier's units
    /// before its flat fee; zero newly billable units give no charge.
    pub fn rate(&self, included: Decimal, before: Decimal, during: Decimal) -> Vec<Charge> {
        let (from, to) = billable_range(included, before, during);
        if to <= from {
            return Vec::new();
        }
        let units = |tier, quantity, unit_price| Charge {
            tier,
            kind: ChargeKind::Units,
            quantity,
            unit_price,
        };
        let flat_fee = |tier, fee| Charge {
            tier,
            kind: ChargeKind::FlatFee,
            quantity: Decimal::ONE,
            unit_price: fee,
        };
        match self {
            MeterPricing::PerUnit { unit_price } => vec![units(None, to - from, *unit_price)],
            MeterPricing::Graduated { tiers } => {
                let mut charges = Vec::new();
                let mut lower = Decimal::ZERO;
                for (i, tier) in tiers.iter().enumerate() {
                    // The units of `0..=x` that fall in this tier.
                    let in_tier = |x: Decimal| {
                        let above = (x - lower).max(Decimal::ZERO);
                        match tier.up_to {
                            Some(up_to) => above.min(up_to - lower),
                            None => above,
                        }
                    };
                    let quantity = in_tier(to) - in_tier(from);
                    if quantity > Decimal::ZERO {
                        charges.push(units(Some(i), quantity, tier.unit_price));
                        // Entered now: no unit of the window fell in it before.
                        if from <= lower && !tier.flat_fee.is_zero() {
                            charges.push(flat_fee(Some(i), tier.flat_fee));
                        }
                    }
                    match tier.up_to {
                        Some(up_to) if up_to < to => lower = up_to,
                        _ => break,
                    }
                }
                charges
            }
            MeterPricing::Volume { tiers } => {
                let i = tier_of(tiers, to);
                let tier = &tiers[i];
                let mut charges = vec![units(Some(i), to - from, tier.unit_price)];
                let entered = from.is_zero() || tier_of(tiers, from) != i;
                if entered && !tier.flat_fee.is_zero() {
                    charges.push(flat_fee(Some(i), tier.flat_fee));
                }
                charges
            }
            MeterPricing::Package {
                package_size,
                package_price,
            } => {
                let started =
                    started_packages(to, *package_size) - started_packages(from, *package_size);
                if started.is_zero() {
                    return Vec::new();
                }
                vec![Charge {
                    tier: None,
                    kind: ChargeKind::Packages,
                    quantity: started,
                    unit_price: *package_price,
                }]
            }
        }
    }
}

/// The window's billable units (those above `included`) before and after
/// `during` units are added to the `before` units of the window.
pub fn billable_range(included: Decimal, before: Decimal, during: Decimal) -> (Decimal, Decimal) {
    let billable = |used: Decimal| (used - included).max(Decimal::ZERO);
    (billable(before), billable(before + during))
}

/// The index of the tier that a billable total of `x` (> 0) falls in: the
/// first whose `up_to` is at least `x`, else the open last tier.
fn tier_of(tiers: &[PriceTier], x: Decimal) -> usize {
    tiers
        .iter()
        .position(|t| t.up_to.is_none_or(|up_to| x <= up_to))
        .unwrap_or(tiers.len() - 1)
}

/// How many packages of a whole `size` `x` units start: ⌈x / size⌉, in
/// integers (⌈x / s⌉ = ⌈⌈x⌉ / s⌉ for a whole s), so no division rounds.
fn started_packages(x: Decimal, size: Decimal) -> Decimal {
    let (Some(units), Some(size)) = (x.ceil().to_u128(), size.to_u128()) else {
        unreachable!("a whole, non-negative Decimal fits u128");
    };
    Decimal::from(units.div_ceil(size))
}

fn validate_tiers(field: &str, tiers: &[PriceTier], currency: Currency) -> Result<(), DomainError> {
    if tiers.is_empty() {
        return Err(DomainError::validation(
            field,
            "must have at least one tier",
        ));
    }
    if tiers.len() > MAX_TIERS {
        return Err(DomainError::validation(
            field,
            format!("at most {MAX_TIERS} tiers"),
        ));
    }
    let last = tiers.len() - 1;
    let mut previous = Decimal::ZERO;
    for (j, tier) in tiers.iter().enumerate() {
        let up_to_field = format!("{field}[{j}].up_to");
        match (tier.up_to, j == last) {
            (None, true) => {}
            (None, false) => {
                return Err(DomainError::validation(
                    up_to_field,
                    "only the last tier may have up_to null",
                ))
            }
            (Some(_), true) => {
                return Err(DomainError::validation(
                    up_to_field,
                    "the last tier must have up_to null",
                ))
            }
            (Some(up_to), false) => {
                validate_quantity(&up_to_field, Some(up_to))?;
                if up_to <= previous {
                    return Err(DomainError::validation(
                        up_to_field,
                        if j == 0 {
                            "must be greater than 0".to_owned()
                        } else {
                            format!("must be greater than the previous tier's up_to ({previous})")
                        },
                    ));
                }
                previous = up_to;
            }
        }
        validate_unit_price(
            &format!("{field}[{j}].unit_price"),
            tier.unit_price,
            currency,
        )?;
        validate_price(&format!("{field}[{j}].flat_fee"), tier.flat_fee, currency)?;
    }
    Ok(())
}
