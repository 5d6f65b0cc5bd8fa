//! Rating a renewal: the lines of the invoice a subscription's period renewal
//! produces. Pure: the billing policy gathers the inputs (the `PeriodRenewed`
//! event and the usage of the closed period) and drafts what this returns.
//!
//! - Recurring fee for the new period, in advance: the base price, and the
//!   seats × seat price when the plan is priced by seat.
//! - Usage overage for the closed period, in arrears, per meter with a
//!   price: the quantity above `included` within the meter's window, priced
//!   by the meter's model (`pricing`): one line per tier used, one more per
//!   tier flat fee billed. When a window spans several billing periods (a
//!   yearly meter on a monthly plan, a lifetime meter), usage before the
//!   closed period has counted against `included` (and the tiers) already:
//!   only the newly exceeded quantity is billed.
//! - Proration for each prorated plan or seat change in the closed period: a
//!   credit line for the unused old price and a charge line for the new.

use std::collections::BTreeMap;

use rust_decimal::Decimal;

use crate::invoice::{LineKind, NewLine};
use crate::plan::MeterTerms;
use crate::pricing::{billable_range, ChargeKind, MeterPricing, PriceTier};
use crate::{Period, PlanTerms, ProrationFigures};

/// A meter's usage in one of its windows that the closed period touches (a
/// monthly meter on a yearly plan has twelve; `included` applies per window).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeterUsage {
    pub meter: String,
    /// Usage in the meter's window before the closed period started.
    pub before: Decimal,
    /// Usage in the closed period (within the meter's window).
    pub during: Decimal,
}

/// What a renewal bills.
#[derive(Debug, Clone, PartialEq)]
pub struct Renewal<'a> {
    pub closed_period: Period,
    pub new_period: Period,
    pub plan: &'a PlanTerms,
    pub seats: u32,
    pub prorations: &'a [ProrationFigures],
}

/// The billable quantity above `included`, newly exceeded in the closed period.
pub fn overage_quantity(included: Decimal, before: Decimal, during: Decimal) -> Decimal {
    let (from, to) = billable_range(included, before, during);
    to - from
}

/// The usage lines of one meter for the closed period: the charges of each
/// of the meter's windows the period touches (one `usage` entry each), added
/// up per tier and kind, in tier order. Nothing for a meter without a price.
fn usage_lines(meter: &MeterTerms, usage: &[MeterUsage], closed: Period) -> Vec<NewLine> {
    let Some(pricing) = &meter.pricing else {
        return Vec::new();
    };
    let included = meter.included.unwrap_or(Decimal::ZERO);
    let mut charges: BTreeMap<(Option<usize>, ChargeKind), (Decimal, Decimal)> = BTreeMap::new();
    for window in usage.iter().filter(|u| u.meter == meter.key) {
        for charge in pricing.rate(included, window.before, window.during) {
            let entry = charges
                .entry((charge.tier, charge.kind))
                .or_insert((Decimal::ZERO, charge.unit_price));
            entry.0 += charge.quantity;
        }
    }
    charges
        .into_iter()
        .filter(|(_, (quantity, _))| *quantity > Decimal::ZERO)
        .map(|((tier, kind), (quantity, unit_price))| NewLine {
            description: usage_description(&meter.key, pricing, tier, kind),
            quantity,
            unit_price,
            kind: LineKind::Usage,
            period: Some(closed),
            tax_rate_ids: vec![],
        })
        .collect()
}

/// "Overage: api_calls", "Overage: api_calls, tier 2 (above 10000 up to
/// 50000)", "Overage: api_calls, tier 2 flat fee", "Overage: api_calls,
/// packages of 1000".
fn usage_description(
    key: &str,
    pricing: &MeterPricing,
    tier: Option<usize>,
    kind: ChargeKind,
) -> String {
    let tiers: &[PriceTier] = match pricing {
        MeterPricing::Graduated { tiers } | MeterPricing::Volume { tiers } => tiers,
        MeterPricing::PerUnit { .. } => return format!("Overage: {key}"),
        MeterPricing::Package { package_size, .. } => {
            return format!("Overage: {key}, packages of {}", package_size.normalize())
        }
    };
    let Some(i) = tier else {
        return format!("Overage: {key}");
    };
    if kind == ChargeKind::FlatFee {
        return format!("Overage: {key}, tier {} flat fee", i + 1);
    }
    let lower = i.checked_sub(1).and_then(|p| tiers[p].up_to);
    let range = match (lower, tiers[i].up_to) {
        (None, Some(upper)) => format!("up to {}", upper.normalize()),
        (Some(lower), Some(upper)) => {
            format!("above {} up to {}", lower.normalize(), upper.normalize())
        }
        (Some(lower), None) => format!("above {}", lower.normalize()),
        (None, None) => "all units".to_owned(),
    };
    format!("Overage: {key}, tier {} ({range})", i + 1)
}

/// The invoice lines of a renewal, in the order they are printed.
pub fn renewal_lines(renewal: &Renewal<'_>, usage: &[MeterUsage]) -> Vec<NewLine> {
    let plan = renewal.plan;
    let mut lines = vec![NewLine {
        description: format!("{} ({})", plan.name, plan.interval.as_str()),
        quantity: Decimal::ONE,
        unit_price: plan.base_price,
        kind: LineKind::Recurring,
        period: Some(renewal.new_period),
        tax_rate_ids: vec![],
    }];
    if !plan.seat_price.is_zero() && renewal.seats > 0 {
        lines.push(NewLine {
            description: format!("{} seats", plan.name),
            quantity: Decimal::from(renewal.seats),
            unit_price: plan.seat_price,
            kind: LineKind::Recurring,
            period: Some(renewal.new_period),
            tax_rate_ids: vec![],
        });
    }
    for meter in &plan.meters {
        lines.extend(usage_lines(meter, usage, renewal.closed_period));
    }
    for p in renewal.prorations {
        let period = Some(Period {
            start: p.at,
            end: p.period.end,
        });
        if !p.credit.is_zero() {
            lines.push(NewLine {
                description: format!("Unused time from {}", p.at.format("%Y-%m-%d")),
                quantity: Decimal::ONE,
                unit_price: p.credit,
                kind: LineKind::Proration,
                period,
                tax_rate_ids: vec![],
            });
        }
        if !p.charge.is_zero() {
            lines.push(NewLine {
                description: format!("Remaining time from {}", p.at.format("%Y-%m-%d")),
                quantity: Decimal::ONE,
                unit_price: p.charge,
                kind: LineKind::Proration,
                period,
                tax_rate_ids: vec![],
            });
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn dec(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    #[test]
    fn overage_counts_only_what_is_newly_above_included() {
        assert_eq!(
            overage_quantity(dec("100"), dec("0"), dec("150")),
            dec("50")
        );
        assert_eq!(overage_quantity(dec("100"), dec("0"), dec("80")), dec("0"));
        // A window spanning periods: 90 used before, 30 now → 20 newly over.
        assert_eq!(
            overage_quantity(dec("100"), dec("90"), dec("30")),
            dec("20")
        );
        // Already over before: all of this period's usage is over.
        assert_eq!(
            overage_quantity(dec("100"), dec("120"), dec("30")),
            dec("30")
        );
        assert_eq!(overage_quantity(dec("0"), dec("0"), dec("7")), dec("7"));
    }
}
