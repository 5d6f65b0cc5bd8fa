//! Rating a renewal: the lines of the invoice a subscription's period renewal
//! produces. Pure: the billing policy gathers the inputs (the `PeriodRenewed`
//! event and the usage of the closed period) and drafts what this returns.
//!
//! - Recurring fee for the new period, in advance: the base price, and the
//!   seats × seat price when the plan is priced by seat.
//! - Usage overage for the closed period, in arrears, per meter with an
//!   overage price: the quantity above `included` within the meter's window.
//!   When a window spans several billing periods (a yearly meter on a monthly
//!   plan, a lifetime meter), usage before the closed period has counted
//!   against `included` already: only the newly exceeded quantity is billed.
//! - Proration for each prorated plan or seat change in the closed period: a
//!   credit line for the unused old price and a charge line for the new.

use rust_decimal::Decimal;

use crate::invoice::{LineKind, NewLine};
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
    let over = |used: Decimal| (used - included).max(Decimal::ZERO);
    over(before + during) - over(before)
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
    }];
    if !plan.seat_price.is_zero() && renewal.seats > 0 {
        lines.push(NewLine {
            description: format!("{} seats", plan.name),
            quantity: Decimal::from(renewal.seats),
            unit_price: plan.seat_price,
            kind: LineKind::Recurring,
            period: Some(renewal.new_period),
        });
    }
    for meter in &plan.meters {
        let Some(price) = meter.overage_unit_price else {
            continue;
        };
        let included = meter.included.unwrap_or(Decimal::ZERO);
        // One entry per meter window the closed period touches.
        let quantity: Decimal = usage
            .iter()
            .filter(|u| u.meter == meter.key)
            .map(|u| overage_quantity(included, u.before, u.during))
            .sum();
        if quantity > Decimal::ZERO {
            lines.push(NewLine {
                description: format!("Overage: {}", meter.key),
                quantity,
                unit_price: price,
                kind: LineKind::Usage,
                period: Some(renewal.closed_period),
            });
        }
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
            });
        }
        if !p.charge.is_zero() {
            lines.push(NewLine {
                description: format!("Remaining time from {}", p.at.format("%Y-%m-%d")),
                quantity: Decimal::ONE,
                unit_price: p.charge,
                kind: LineKind::Proration,
                period,
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
