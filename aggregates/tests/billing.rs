//! The lines of a renewal invoice from `billing::renewal_lines`, to the cent:
//! the recurring fee and seats for the new period, usage overage for the
//! closed period (only what is newly above `included` when a meter's window
//! spans periods), proration credits and charges, and what is left out
//! (meters under their allowance, meters without an overage price). The last
//! tests put the lines on an invoice and issue it.

mod support;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use support::*;
use tally_aggregates::billing::{overage_quantity, renewal_lines, MeterUsage, Renewal};
use tally_aggregates::invoice::price_line;
use tally_aggregates::{
    Currency, Interval, Invoice, InvoiceCommand, InvoiceEvent, InvoiceStatus, LineKind,
    MeterPricing, MeterTerms, NewLine, Period, PlanTerms, ProrationFigures, ResetCadence,
};

fn april() -> Period {
    Period {
        start: t("2025-04-01T00:00:00Z"),
        end: t("2025-05-01T00:00:00Z"),
    }
}

fn may() -> Period {
    Period {
        start: t("2025-05-01T00:00:00Z"),
        end: t("2025-06-01T00:00:00Z"),
    }
}

fn meter(key: &str, included: Option<&str>, overage_unit_price: Option<&str>) -> MeterTerms {
    MeterTerms {
        key: key.to_owned(),
        included: included.map(dec),
        hard_cap: None,
        pricing: overage_unit_price.map(|p| MeterPricing::PerUnit { unit_price: dec(p) }),
        reset: ResetCadence::Monthly,
    }
}

fn usage(meter: &str, before: &str, during: &str) -> MeterUsage {
    MeterUsage {
        meter: meter.to_owned(),
        before: dec(before),
        during: dec(during),
    }
}

/// 10.00 EUR a month plus 5.00 per seat.
fn team() -> PlanTerms {
    terms("team", "10.00", "5.00", 1, 10)
}

fn renewal<'a>(plan: &'a PlanTerms, seats: u32, prorations: &'a [ProrationFigures]) -> Renewal<'a> {
    Renewal {
        closed_period: april(),
        new_period: may(),
        plan,
        seats,
        prorations,
    }
}

/// The amounts the lines come to on an invoice in `currency`.
fn amounts(lines: &[NewLine], currency: Currency) -> Vec<Decimal> {
    lines
        .iter()
        .enumerate()
        .map(|(i, line)| {
            price_line(line, currency, i as u32 + 1, Some(i))
                .expect("renewal lines are valid invoice lines")
                .amount
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Recurring fee
// ---------------------------------------------------------------------------

#[test]
fn the_base_price_and_the_seats_are_billed_for_the_new_period() {
    let plan = team();
    let lines = renewal_lines(&renewal(&plan, 3, &[]), &[]);
    assert_eq!(
        lines,
        vec![
            NewLine {
                description: "team plan (month)".to_owned(),
                quantity: dec("1"),
                unit_price: dec("10.00"),
                kind: LineKind::Recurring,
                period: Some(may()),
                tax_rate_ids: vec![],
            },
            NewLine {
                description: "team plan seats".to_owned(),
                quantity: dec("3"),
                unit_price: dec("5.00"),
                kind: LineKind::Recurring,
                period: Some(may()),
                tax_rate_ids: vec![],
            },
        ]
    );
    assert_eq!(amounts(&lines, eur()), vec![dec("10.00"), dec("15.00")]);
}

#[test]
fn a_plan_not_priced_by_seat_has_no_seat_line() {
    let plan = terms("basic", "10.00", "0", 1, 10);
    let lines = renewal_lines(&renewal(&plan, 7, &[]), &[]);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0].unit_price, dec("10.00"));
    assert_eq!(lines[0].kind, LineKind::Recurring);
    // No seats, no seat line either.
    let lines = renewal_lines(&renewal(&team(), 0, &[]), &[]);
    assert_eq!(lines.len(), 1, "{lines:?}");
}

#[test]
fn a_yearly_plan_names_its_interval() {
    let mut plan = team();
    plan.interval = Interval::Year;
    let lines = renewal_lines(&renewal(&plan, 1, &[]), &[]);
    assert_eq!(lines[0].description, "team plan (year)");
}

// ---------------------------------------------------------------------------
// Usage overage
// ---------------------------------------------------------------------------

#[test]
fn usage_above_included_is_billed_in_arrears_for_the_closed_period() {
    let mut plan = team();
    plan.meters = vec![meter("api.calls", Some("1000"), Some("0.0015"))];
    let lines = renewal_lines(&renewal(&plan, 1, &[]), &[usage("api.calls", "0", "1500")]);
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert_eq!(
        lines[2],
        NewLine {
            description: "Overage: api.calls".to_owned(),
            quantity: dec("500"),
            unit_price: dec("0.0015"),
            kind: LineKind::Usage,
            period: Some(april()),
            tax_rate_ids: vec![],
        }
    );
    assert_eq!(amounts(&lines, eur())[2], dec("0.75"));
}

#[test]
fn a_window_spanning_periods_bills_only_what_is_newly_over() {
    let mut plan = team();
    plan.meters = vec![meter("storage.gb", Some("100"), Some("0.10"))];
    plan.meters[0].reset = ResetCadence::Yearly;
    // (before, during) → quantity billed now.
    for (before, during, billed) in [
        // 90 counted earlier in the window: only 20 of these 30 are over.
        ("90", "30", "20"),
        // Over already: all of this period's usage is over.
        ("120", "30", "30"),
        // Reaching the allowance exactly is not over.
        ("40", "60", "0"),
        ("0", "100.5", "0.5"),
    ] {
        let lines = renewal_lines(
            &renewal(&plan, 1, &[]),
            &[usage("storage.gb", before, during)],
        );
        let overage: Vec<&NewLine> = lines.iter().filter(|l| l.kind == LineKind::Usage).collect();
        if dec(billed).is_zero() {
            assert_eq!(overage, Vec::<&NewLine>::new(), "{before} + {during}");
        } else {
            assert_eq!(overage.len(), 1, "{before} + {during}");
            assert_eq!(overage[0].quantity, dec(billed), "{before} + {during}");
        }
        assert_eq!(
            overage_quantity(dec("100"), dec(before), dec(during)),
            dec(billed)
        );
    }
}

#[test]
fn a_meter_without_an_allowance_bills_all_its_usage() {
    let mut plan = team();
    plan.meters = vec![meter("sms", None, Some("0.07"))];
    let lines = renewal_lines(&renewal(&plan, 1, &[]), &[usage("sms", "3", "12")]);
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert_eq!(lines[2].quantity, dec("12"));
    assert_eq!(amounts(&lines, eur())[2], dec("0.84"));
}

#[test]
fn no_overage_line_under_the_allowance() {
    let mut plan = team();
    plan.meters = vec![meter("api.calls", Some("1000"), Some("0.0015"))];
    for during in ["0", "999", "1000"] {
        let lines = renewal_lines(&renewal(&plan, 1, &[]), &[usage("api.calls", "0", during)]);
        assert!(
            lines.iter().all(|l| l.kind == LineKind::Recurring),
            "{during}: {lines:?}"
        );
    }
}

#[test]
fn meters_without_an_overage_price_or_without_usage_are_left_out() {
    let mut plan = team();
    plan.meters = vec![
        // A hard-capped meter with no overage price: usage is never billed.
        meter("exports", Some("10"), None),
        meter("webhooks", Some("0"), Some("0.01")),
        meter("api.calls", Some("1000"), Some("0.0015")),
    ];
    let lines = renewal_lines(
        &renewal(&plan, 2, &[]),
        &[
            usage("exports", "0", "50"),
            usage("api.calls", "0", "3000"),
            // Usage of a meter the plan does not have is not this plan's to bill.
            usage("legacy.meter", "0", "99"),
        ],
    );
    let descriptions: Vec<&str> = lines.iter().map(|l| l.description.as_str()).collect();
    assert_eq!(
        descriptions,
        vec!["team plan (month)", "team plan seats", "Overage: api.calls"]
    );
    assert_eq!(
        amounts(&lines, eur()),
        vec![dec("10.00"), dec("10.00"), dec("3.00")]
    );
}

#[test]
fn overage_lines_follow_the_plan_s_meter_order_and_round_per_line() {
    let mut plan = team();
    plan.meters = vec![
        meter("b.meter", Some("0"), Some("0.333")),
        meter("a.meter", Some("0"), Some("0.0005")),
    ];
    let lines = renewal_lines(
        &renewal(&plan, 1, &[]),
        &[usage("a.meter", "0", "9"), usage("b.meter", "0", "1")],
    );
    assert_eq!(lines[2].description, "Overage: b.meter");
    assert_eq!(lines[3].description, "Overage: a.meter");
    // 0.333 → 0.33 and 9 × 0.0005 = 0.0045 → 0.00: each line is rounded.
    assert_eq!(amounts(&lines, eur())[2..], [dec("0.33"), dec("0.00")]);
}

// ---------------------------------------------------------------------------
// Proration
// ---------------------------------------------------------------------------

fn figures(at: &str, old: &str, new: &str) -> ProrationFigures {
    ProrationFigures::compute(april(), t(at), dec(old), dec(new), eur())
}

#[test]
fn a_prorated_change_is_a_credit_line_and_a_charge_line() {
    // Two thirds of April left: 10.00 → 20.00 a month.
    let change = figures("2025-04-11T00:00:00Z", "10.00", "20.00");
    let plan = team();
    let prorations = [change.clone()];
    let lines = renewal_lines(&renewal(&plan, 1, &prorations), &[]);
    let rest_of_april = Some(Period {
        start: t("2025-04-11T00:00:00Z"),
        end: april().end,
    });
    assert_eq!(
        lines[2..],
        [
            NewLine {
                description: "Unused time from 2025-04-11".to_owned(),
                quantity: dec("1"),
                unit_price: dec("-6.67"),
                kind: LineKind::Proration,
                period: rest_of_april,
                tax_rate_ids: vec![],
            },
            NewLine {
                description: "Remaining time from 2025-04-11".to_owned(),
                quantity: dec("1"),
                unit_price: dec("13.33"),
                kind: LineKind::Proration,
                period: rest_of_april,
                tax_rate_ids: vec![],
            },
        ]
    );
    let amounts = amounts(&lines, eur());
    assert_eq!(amounts[2..], [dec("-6.67"), dec("13.33")]);
    assert_eq!(amounts[2] + amounts[3], change.net);
}

#[test]
fn several_changes_each_get_their_lines_in_order() {
    let first = figures("2025-04-11T00:00:00Z", "10.00", "20.00");
    let second = figures("2025-04-16T00:00:00Z", "20.00", "15.00");
    let plan = team();
    let prorations = [first, second.clone()];
    let lines = renewal_lines(&renewal(&plan, 1, &prorations), &[]);
    let descriptions: Vec<&str> = lines[2..].iter().map(|l| l.description.as_str()).collect();
    assert_eq!(
        descriptions,
        vec![
            "Unused time from 2025-04-11",
            "Remaining time from 2025-04-11",
            "Unused time from 2025-04-16",
            "Remaining time from 2025-04-16",
        ]
    );
    // Half of 20.00 back, half of 15.00 charged.
    assert_eq!(amounts(&lines, eur())[4..], [dec("-10.00"), dec("7.50")]);
    assert_eq!(second.net, dec("-2.50"));
}

#[test]
fn zero_sides_of_a_proration_print_no_line() {
    let plan = team();
    // From a free plan: nothing to credit.
    let from_free = [figures("2025-04-16T00:00:00Z", "0", "20.00")];
    let lines = renewal_lines(&renewal(&plan, 1, &from_free), &[]);
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert_eq!(lines[2].description, "Remaining time from 2025-04-16");
    // To a free plan: nothing to charge.
    let to_free = [figures("2025-04-16T00:00:00Z", "20.00", "0")];
    let lines = renewal_lines(&renewal(&plan, 1, &to_free), &[]);
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert_eq!(lines[2].description, "Unused time from 2025-04-16");
    // A change at the very end of the period leaves nothing either way.
    let at_the_end = [figures("2025-05-01T00:00:00Z", "10.00", "20.00")];
    let lines = renewal_lines(&renewal(&plan, 1, &at_the_end), &[]);
    assert_eq!(lines.len(), 2, "{lines:?}");
}

// ---------------------------------------------------------------------------
// On an invoice
// ---------------------------------------------------------------------------

fn renewal_invoice(lines: Vec<NewLine>, currency: Currency) -> Invoice {
    let at: DateTime<Utc> = may().start;
    let mut invoice = Invoice::default();
    for command in [
        InvoiceCommand::Create {
            invoice_id: "inv_renewal".to_owned(),
            customer_id: "cus_1".to_owned(),
            currency,
            subscription_id: Some("sub_1".to_owned()),
            billing_period: Some(may()),
            due_days: None,
            lines,
            at,
        },
        InvoiceCommand::Issue {
            number: 7,
            customer: None,
            available_credit: rust_decimal::Decimal::ZERO,
            at,
            taxes: Default::default(),
        },
    ] {
        for event in invoice.decide(command).expect("the renewal invoice") {
            invoice.evolve(&event);
        }
    }
    invoice
}

#[test]
fn a_renewal_invoice_adds_up_fee_seats_overage_and_prorations() {
    let mut plan = team();
    plan.meters = vec![meter("api.calls", Some("1000"), Some("0.0015"))];
    let prorations = [figures("2025-04-11T00:00:00Z", "10.00", "20.00")];
    let lines = renewal_lines(
        &renewal(&plan, 4, &prorations),
        &[usage("api.calls", "0", "2333")],
    );
    let invoice = renewal_invoice(lines, eur());
    // 10.00 + 4 × 5.00 + round(1333 × 0.0015 = 1.9995) − 6.67 + 13.33.
    assert_eq!(invoice.total, dec("38.66"));
    assert_eq!(invoice.amount_due, dec("38.66"));
    assert_eq!(invoice.status, Some(InvoiceStatus::Open));
    let amounts: Vec<Decimal> = invoice.lines.iter().map(|l| l.amount).collect();
    assert_eq!(
        amounts,
        vec![
            dec("10.00"),
            dec("20.00"),
            dec("2.00"),
            dec("-6.67"),
            dec("13.33")
        ]
    );
    assert_eq!(invoice.number.as_deref(), Some("INV-000007"));
}

#[test]
fn a_downgrade_credit_larger_than_the_fee_settles_the_invoice_at_once() {
    let plan = terms("basic", "1.00", "0", 1, 10);
    // Half of 50.00 back on a 1.00 plan: the invoice is a credit note.
    let prorations = [figures("2025-04-16T00:00:00Z", "50.00", "1.00")];
    let lines = renewal_lines(&renewal(&plan, 1, &prorations), &[]);
    let mut invoice = Invoice::default();
    let mut events = Vec::new();
    for command in [
        InvoiceCommand::Create {
            invoice_id: "inv_renewal".to_owned(),
            customer_id: "cus_1".to_owned(),
            currency: eur(),
            subscription_id: Some("sub_1".to_owned()),
            billing_period: Some(may()),
            due_days: None,
            lines,
            at: may().start,
        },
        InvoiceCommand::Issue {
            number: 8,
            available_credit: rust_decimal::Decimal::ZERO,
            at: may().start,
            customer: None,
            taxes: Default::default(),
        },
    ] {
        let decided = invoice.decide(command).unwrap();
        for event in &decided {
            invoice.evolve(event);
        }
        events.extend(decided);
    }
    // 1.00 − 25.00 + 0.50.
    assert_eq!(invoice.total, dec("-23.50"));
    assert_eq!(invoice.amount_due.to_string(), "0.00");
    assert_eq!(invoice.status, Some(InvoiceStatus::Paid));
    let names: Vec<&str> = events.iter().map(InvoiceEvent::name).collect();
    assert_eq!(
        names,
        vec![
            "InvoiceCreated",
            "LineAdded",
            "LineAdded",
            "LineAdded",
            "InvoiceIssued",
            "InvoicePaid"
        ]
    );
}

#[test]
fn overage_in_a_currency_without_minor_units_rounds_to_whole_units() {
    let mut plan = team();
    plan.currency = jpy();
    plan.base_price = dec("1000");
    plan.seat_price = dec("0");
    plan.meters = vec![meter("api.calls", Some("0"), Some("0.15"))];
    let lines = renewal_lines(&renewal(&plan, 1, &[]), &[usage("api.calls", "0", "1010")]);
    // 1010 × 0.15 = 151.5 → 152 yen.
    assert_eq!(amounts(&lines, jpy()), vec![dec("1000"), dec("152")]);
    assert_eq!(renewal_invoice(lines, jpy()).total.to_string(), "1152");
}
