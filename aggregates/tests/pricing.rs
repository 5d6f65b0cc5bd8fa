//! Meter pricing (`pricing::MeterPricing`), worked to the cent: per unit,
//! graduated, volume and package prices after `included` units, at the tier
//! boundaries (exactly `up_to`, one above), with zero usage, flat fees and a
//! package just started; windows that span billing periods; the renewal
//! lines and invoice total they come to; the validation of each field; and
//! the stored form, which old events must still read as.

mod support;

use proptest::prelude::*;
use rust_decimal::Decimal;
use support::*;
use tally_aggregates::billing::{renewal_lines, MeterUsage, Renewal};
use tally_aggregates::invoice::price_line;
use tally_aggregates::pricing::{Charge, ChargeKind, MAX_TIERS};
use tally_aggregates::{
    DomainError, Invoice, InvoiceCommand, LineKind, MeterPricing, MeterTerms, NewLine, Period,
    PlanEvent, PlanTerms, PriceTier, ResetCadence,
};

fn tier(up_to: Option<&str>, unit_price: &str, flat_fee: &str) -> PriceTier {
    PriceTier {
        up_to: up_to.map(dec),
        unit_price: dec(unit_price),
        flat_fee: dec(flat_fee),
    }
}

/// 0.002 per unit up to 10 000, 0.0015 up to 50 000 (5.00 to enter that
/// tier), 0.001 above.
fn graduated() -> MeterPricing {
    MeterPricing::Graduated {
        tiers: vec![
            tier(Some("10000"), "0.002", "0"),
            tier(Some("50000"), "0.0015", "5.00"),
            tier(None, "0.001", "0"),
        ],
    }
}

/// Every unit at 0.01 up to 1 000, at 0.008 (plus 2.00) up to 5 000, at
/// 0.005 (plus 10.00) above.
fn volume() -> MeterPricing {
    MeterPricing::Volume {
        tiers: vec![
            tier(Some("1000"), "0.01", "0"),
            tier(Some("5000"), "0.008", "2.00"),
            tier(None, "0.005", "10.00"),
        ],
    }
}

/// 5.00 per started package of 1 000 units.
fn package() -> MeterPricing {
    MeterPricing::Package {
        package_size: dec("1000"),
        package_price: dec("5.00"),
    }
}

fn per_unit(price: &str) -> MeterPricing {
    MeterPricing::PerUnit {
        unit_price: dec(price),
    }
}

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

fn meter(pricing: MeterPricing, included: &str) -> MeterTerms {
    MeterTerms {
        key: "api_calls".to_owned(),
        included: Some(dec(included)),
        hard_cap: None,
        pricing: Some(pricing),
        reset: ResetCadence::Monthly,
    }
}

/// A plan with no fee and one meter, so its renewal lines are usage only.
fn plan_with(meter: MeterTerms) -> PlanTerms {
    let mut plan = terms("metered", "0", "0", 1, 10);
    plan.meters = vec![meter];
    plan
}

/// The usage lines a renewal bills for `used` units of one monthly window,
/// as (description, quantity, unit price, amount), and the invoice total.
fn bill(
    pricing: MeterPricing,
    included: &str,
    used: &str,
) -> (Vec<(String, Decimal, Decimal, Decimal)>, Decimal) {
    bill_windows(pricing, included, &[("0", used)])
}

/// Like [`bill`], for several windows of one closed period, each given as
/// (usage before the period, usage during it).
fn bill_windows(
    pricing: MeterPricing,
    included: &str,
    windows: &[(&str, &str)],
) -> (Vec<(String, Decimal, Decimal, Decimal)>, Decimal) {
    let plan = plan_with(meter(pricing, included));
    plan.validate().expect("valid plan");
    let usage: Vec<MeterUsage> = windows
        .iter()
        .map(|(before, during)| MeterUsage {
            meter: "api_calls".to_owned(),
            before: dec(before),
            during: dec(during),
        })
        .collect();
    let lines = renewal_lines(
        &Renewal {
            closed_period: april(),
            new_period: may(),
            plan: &plan,
            seats: 0,
            prorations: &[],
        },
        &usage,
    );
    let usage_lines: Vec<&NewLine> = lines.iter().filter(|l| l.kind == LineKind::Usage).collect();
    for line in &usage_lines {
        assert_eq!(line.period, Some(april()), "usage is billed in arrears");
    }
    let priced: Vec<_> = usage_lines
        .iter()
        .enumerate()
        .map(|(i, line)| {
            let priced = price_line(line, eur(), i as u32 + 1, Some(i)).expect("valid line");
            (
                priced.description,
                priced.quantity,
                priced.unit_price,
                priced.amount,
            )
        })
        .collect();
    // Issued, the invoice's total is the sum of its rounded lines.
    let mut invoice = Invoice::default();
    for command in [
        InvoiceCommand::Create {
            invoice_id: "inv_1".to_owned(),
            customer_id: "cus_1".to_owned(),
            currency: eur(),
            subscription_id: Some("sub_1".to_owned()),
            billing_period: Some(april()),
            due_days: None,
            lines,
            at: may().start,
        },
        InvoiceCommand::Issue {
            number: 1,
            available_credit: rust_decimal::Decimal::ZERO,
            at: may().start,
            customer: None,
            taxes: Default::default(),
        },
    ] {
        for event in invoice.decide(command).expect("invoice command") {
            invoice.evolve(&event);
        }
    }
    let sum: Decimal = priced.iter().map(|l| l.3).sum();
    assert_eq!(invoice.total, sum);
    (priced, invoice.total)
}

fn line(
    description: &str,
    quantity: &str,
    unit_price: &str,
    amount: &str,
) -> (String, Decimal, Decimal, Decimal) {
    (
        description.to_owned(),
        dec(quantity),
        dec(unit_price),
        dec(amount),
    )
}

// ---------------------------------------------------------------------------
// per_unit
// ---------------------------------------------------------------------------

#[test]
fn per_unit_bills_units_above_included_at_a_sub_cent_price() {
    // 2 503 units, 1 000 included: 1 503 × 0.002 = 3.006 → 3.01.
    let (lines, total) = bill(per_unit("0.002"), "1000", "2503");
    assert_eq!(
        lines,
        vec![line("Overage: api_calls", "1503", "0.002", "3.01")]
    );
    assert_eq!(total, dec("3.01"));
}

#[test]
fn per_unit_rounds_each_line_half_away_from_zero() {
    for (used, amount) in [
        ("1001", "2.50"), // 2.5025
        ("1002", "2.51"), // 2.505: half away from zero
        ("1003", "2.51"), // 2.5075
        ("1", "0.00"),    // 0.0025
        ("2", "0.01"),    // 0.005
    ] {
        let (lines, total) = bill(per_unit("0.0025"), "0", used);
        assert_eq!(lines[0].3, dec(amount), "{used}");
        assert_eq!(total, dec(amount), "{used}");
    }
}

#[test]
fn per_unit_takes_twelve_decimal_places() {
    // 1 000 000 × 0.000000123456 = 0.123456 → 0.12.
    let (lines, _) = bill(per_unit("0.000000123456"), "0", "1000000");
    assert_eq!(
        lines,
        vec![line(
            "Overage: api_calls",
            "1000000",
            "0.000000123456",
            "0.12"
        )]
    );
}

#[test]
fn every_model_bills_nothing_for_zero_usage_or_usage_within_included() {
    for pricing in [per_unit("0.002"), graduated(), volume(), package()] {
        for used in ["0", "1000", "999.5"] {
            let (lines, total) = bill(pricing.clone(), "1000", used);
            assert_eq!(lines, vec![], "{} {used}", pricing.model());
            assert_eq!(total, dec("0.00"), "{} {used}", pricing.model());
            assert_eq!(pricing.rate(dec("1000"), dec("0"), dec(used)), vec![]);
        }
    }
}

// ---------------------------------------------------------------------------
// graduated
// ---------------------------------------------------------------------------

#[test]
fn graduated_exactly_at_the_first_up_to_stays_in_the_first_tier() {
    // 11 000 used, 1 000 included: 10 000 billable, all in tier 1.
    let (lines, total) = bill(graduated(), "1000", "11000");
    assert_eq!(
        lines,
        vec![line(
            "Overage: api_calls, tier 1 (up to 10000)",
            "10000",
            "0.002",
            "20.00"
        )]
    );
    assert_eq!(total, dec("20.00"));
}

#[test]
fn graduated_one_above_up_to_enters_the_next_tier_and_its_flat_fee() {
    // 10 001 billable: 10 000 in tier 1, 1 in tier 2 (0.0015 → 0.00), and
    // tier 2's flat fee once.
    let (lines, total) = bill(graduated(), "1000", "11001");
    assert_eq!(
        lines,
        vec![
            line(
                "Overage: api_calls, tier 1 (up to 10000)",
                "10000",
                "0.002",
                "20.00"
            ),
            line(
                "Overage: api_calls, tier 2 (above 10000 up to 50000)",
                "1",
                "0.0015",
                "0.00"
            ),
            line("Overage: api_calls, tier 2 flat fee", "1", "5.00", "5.00"),
        ]
    );
    assert_eq!(total, dec("25.00"));
}

#[test]
fn graduated_bills_one_line_per_tier_used() {
    // 75 333 billable: 10 000 × 0.002 = 20.00, 40 000 × 0.0015 = 60.00 + 5.00,
    // 25 333 × 0.001 = 25.333 → 25.33.
    let (lines, total) = bill(graduated(), "1000", "76333");
    assert_eq!(
        lines,
        vec![
            line(
                "Overage: api_calls, tier 1 (up to 10000)",
                "10000",
                "0.002",
                "20.00"
            ),
            line(
                "Overage: api_calls, tier 2 (above 10000 up to 50000)",
                "40000",
                "0.0015",
                "60.00"
            ),
            line("Overage: api_calls, tier 2 flat fee", "1", "5.00", "5.00"),
            line(
                "Overage: api_calls, tier 3 (above 50000)",
                "25333",
                "0.001",
                "25.33"
            ),
        ]
    );
    assert_eq!(total, dec("110.33"));
}

#[test]
fn graduated_at_the_last_up_to_and_one_above() {
    let (lines, total) = bill(graduated(), "0", "50000");
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert_eq!(total, dec("85.00"));
    let (lines, total) = bill(graduated(), "0", "50001");
    assert_eq!(
        lines[3],
        line(
            "Overage: api_calls, tier 3 (above 50000)",
            "1",
            "0.001",
            "0.00"
        )
    );
    // 0.001 rounds to nothing: the line is there, the total does not move.
    assert_eq!(total, dec("85.00"));
}

#[test]
fn graduated_flat_fee_of_the_first_tier_is_billed_for_its_first_unit() {
    let pricing = MeterPricing::Graduated {
        tiers: vec![tier(Some("100"), "0", "9.99"), tier(None, "0.10", "0")],
    };
    // A free tier with a fee: one unit bills the fee and a zero line.
    let (lines, total) = bill(pricing.clone(), "0", "1");
    assert_eq!(
        lines,
        vec![
            line("Overage: api_calls, tier 1 (up to 100)", "1", "0", "0.00"),
            line("Overage: api_calls, tier 1 flat fee", "1", "9.99", "9.99"),
        ]
    );
    assert_eq!(total, dec("9.99"));
    let (_, total) = bill(pricing, "0", "105");
    assert_eq!(total, dec("10.49"));
}

#[test]
fn graduated_handles_fractional_usage_and_tiers() {
    let pricing = MeterPricing::Graduated {
        tiers: vec![
            tier(Some("0.5"), "1.00", "0"),
            tier(None, "0.333333333333", "0"),
        ],
    };
    // 0.5 × 1.00 + 2.25 × 0.333333333333 = 0.50 + 0.74999999999925 → 0.75.
    let (lines, total) = bill(pricing, "0", "2.75");
    assert_eq!(lines[1].1, dec("2.25"));
    assert_eq!(lines[1].3, dec("0.75"));
    assert_eq!(total, dec("1.25"));
}

// ---------------------------------------------------------------------------
// volume
// ---------------------------------------------------------------------------

#[test]
fn volume_prices_every_unit_at_the_tier_the_total_falls_in() {
    for (used, expected, total) in [
        // Exactly the first up_to: tier 1.
        (
            "1000",
            vec![line(
                "Overage: api_calls, tier 1 (up to 1000)",
                "1000",
                "0.01",
                "10.00",
            )],
            "10.00",
        ),
        // One above: every unit at tier 2, plus its flat fee (8.008 → 8.01).
        (
            "1001",
            vec![
                line(
                    "Overage: api_calls, tier 2 (above 1000 up to 5000)",
                    "1001",
                    "0.008",
                    "8.01",
                ),
                line("Overage: api_calls, tier 2 flat fee", "1", "2.00", "2.00"),
            ],
            "10.01",
        ),
        (
            "5000",
            vec![
                line(
                    "Overage: api_calls, tier 2 (above 1000 up to 5000)",
                    "5000",
                    "0.008",
                    "40.00",
                ),
                line("Overage: api_calls, tier 2 flat fee", "1", "2.00", "2.00"),
            ],
            "42.00",
        ),
        // 5 001 × 0.005 = 25.005 → 25.01.
        (
            "5001",
            vec![
                line(
                    "Overage: api_calls, tier 3 (above 5000)",
                    "5001",
                    "0.005",
                    "25.01",
                ),
                line("Overage: api_calls, tier 3 flat fee", "1", "10.00", "10.00"),
            ],
            "35.01",
        ),
        (
            "1",
            vec![line(
                "Overage: api_calls, tier 1 (up to 1000)",
                "1",
                "0.01",
                "0.01",
            )],
            "0.01",
        ),
    ] {
        let (lines, got) = bill(volume(), "0", used);
        assert_eq!(lines, expected, "{used}");
        assert_eq!(got, dec(total), "{used}");
    }
}

#[test]
fn volume_tiers_count_only_usage_above_included() {
    // 1 500 used, 500 included: 1 000 billable, exactly tier 1's up_to.
    let (lines, total) = bill(volume(), "500", "1500");
    assert_eq!(
        lines,
        vec![line(
            "Overage: api_calls, tier 1 (up to 1000)",
            "1000",
            "0.01",
            "10.00"
        )]
    );
    assert_eq!(total, dec("10.00"));
}

// ---------------------------------------------------------------------------
// package
// ---------------------------------------------------------------------------

#[test]
fn package_bills_every_started_package() {
    for (used, packages, total) in [
        // One unit above included starts a package.
        ("101", "1", "5.00"),
        ("100.5", "1", "5.00"),
        // Exactly one full package, then one unit more.
        ("1100", "1", "5.00"),
        ("1101", "2", "10.00"),
        ("3100", "3", "15.00"),
    ] {
        let (lines, got) = bill(package(), "100", used);
        assert_eq!(
            lines,
            vec![line(
                "Overage: api_calls, packages of 1000",
                packages,
                "5.00",
                total
            )],
            "{used}"
        );
        assert_eq!(got, dec(total), "{used}");
    }
}

#[test]
fn package_price_may_be_finer_than_the_minor_unit() {
    let pricing = MeterPricing::Package {
        package_size: dec("1000"),
        package_price: dec("0.0125"),
    };
    // 3 packages × 0.0125 = 0.0375 → 0.04.
    let (lines, total) = bill(pricing, "0", "2001");
    assert_eq!(
        lines,
        vec![line(
            "Overage: api_calls, packages of 1000",
            "3",
            "0.0125",
            "0.04"
        )]
    );
    assert_eq!(total, dec("0.04"));
}

// ---------------------------------------------------------------------------
// Windows that span billing periods
// ---------------------------------------------------------------------------

#[test]
fn graduated_continues_in_the_tier_an_earlier_period_reached() {
    // 6 000 used before (5 000 billable), 10 000 now: the rest of tier 1, the
    // start of tier 2 and its fee.
    let (lines, total) = bill_windows(graduated(), "1000", &[("6000", "10000")]);
    assert_eq!(
        lines,
        vec![
            line(
                "Overage: api_calls, tier 1 (up to 10000)",
                "5000",
                "0.002",
                "10.00"
            ),
            line(
                "Overage: api_calls, tier 2 (above 10000 up to 50000)",
                "5000",
                "0.0015",
                "7.50"
            ),
            line("Overage: api_calls, tier 2 flat fee", "1", "5.00", "5.00"),
        ]
    );
    assert_eq!(total, dec("22.50"));
    // Later, within tier 2: no second fee.
    let (lines, _) = bill_windows(graduated(), "1000", &[("16000", "100")]);
    assert_eq!(
        lines,
        vec![line(
            "Overage: api_calls, tier 2 (above 10000 up to 50000)",
            "100",
            "0.0015",
            "0.15"
        )]
    );
}

#[test]
fn package_counts_packages_started_in_earlier_periods() {
    // 1 101 before (1 001 billable): 2 packages billed already; 999 more
    // stay within them.
    assert_eq!(bill_windows(package(), "100", &[("1101", "999")]).0, vec![]);
    // One more unit starts the third.
    let (lines, _) = bill_windows(package(), "100", &[("1101", "1000")]);
    assert_eq!(
        lines,
        vec![line(
            "Overage: api_calls, packages of 1000",
            "1",
            "5.00",
            "5.00"
        )]
    );
}

#[test]
fn volume_prices_new_units_at_the_tier_the_window_reached() {
    // 800 billed in tier 1 before; 400 more make 1 200: tier 2 and its fee.
    let (lines, total) = bill_windows(volume(), "0", &[("800", "400")]);
    assert_eq!(
        lines,
        vec![
            line(
                "Overage: api_calls, tier 2 (above 1000 up to 5000)",
                "400",
                "0.008",
                "3.20"
            ),
            line("Overage: api_calls, tier 2 flat fee", "1", "2.00", "2.00"),
        ]
    );
    assert_eq!(total, dec("5.20"));
    // Within the tier already reached: no second fee.
    let (lines, _) = bill_windows(volume(), "0", &[("1200", "100")]);
    assert_eq!(lines.len(), 1, "{lines:?}");
}

#[test]
fn windows_of_one_period_add_up_per_tier() {
    // A monthly meter on a yearly plan: two windows, each entering tier 2.
    let (lines, total) = bill_windows(graduated(), "0", &[("0", "10001"), ("0", "20000")]);
    assert_eq!(
        lines,
        vec![
            line(
                "Overage: api_calls, tier 1 (up to 10000)",
                "20000",
                "0.002",
                "40.00"
            ),
            line(
                "Overage: api_calls, tier 2 (above 10000 up to 50000)",
                "10001",
                "0.0015",
                "15.00"
            ),
            line("Overage: api_calls, tier 2 flat fee", "2", "5.00", "10.00"),
        ]
    );
    assert_eq!(total, dec("65.00"));
}

#[test]
fn rate_returns_charges_in_tier_order() {
    let charges = graduated().rate(dec("0"), dec("0"), dec("60000"));
    let kinds: Vec<(Option<usize>, ChargeKind)> =
        charges.iter().map(|c| (c.tier, c.kind)).collect();
    assert_eq!(
        kinds,
        vec![
            (Some(0), ChargeKind::Units),
            (Some(1), ChargeKind::Units),
            (Some(1), ChargeKind::FlatFee),
            (Some(2), ChargeKind::Units),
        ]
    );
    assert_eq!(
        package().rate(dec("0"), dec("0"), dec("1")),
        vec![Charge {
            tier: None,
            kind: ChargeKind::Packages,
            quantity: dec("1"),
            unit_price: dec("5.00"),
        }]
    );
}

proptest! {
    #[test]
    fn graduated_and_package_charges_add_up_over_a_split_window(
        usage in prop::collection::vec(0u64..30_000, 1..6),
        included in 0u64..5_000,
    ) {
        // Rated period by period, a window bills per tier exactly what it
        // bills rated at once, and each flat fee at most once.
        let included = Decimal::from(included);
        for pricing in [graduated(), package()] {
            let mut split: Vec<(Option<usize>, ChargeKind, Decimal)> = Vec::new();
            let mut before = Decimal::ZERO;
            for used in &usage {
                let during = Decimal::from(*used);
                for c in pricing.rate(included, before, during) {
                    match split.iter_mut().find(|(t, k, _)| (*t, *k) == (c.tier, c.kind)) {
                        Some(entry) => entry.2 += c.quantity,
                        None => split.push((c.tier, c.kind, c.quantity)),
                    }
                }
                before += during;
            }
            split.sort();
            let whole: Vec<_> = pricing
                .rate(included, Decimal::ZERO, before)
                .into_iter()
                .map(|c| (c.tier, c.kind, c.quantity))
                .collect();
            prop_assert_eq!(&split, &whole);
            for (_, kind, quantity) in &split {
                if *kind == ChargeKind::FlatFee {
                    prop_assert_eq!(*quantity, Decimal::ONE);
                }
            }
        }
    }

    #[test]
    fn volume_bills_every_billable_unit_once(
        usage in prop::collection::vec(0u64..3_000, 1..6),
        included in 0u64..2_000,
    ) {
        let included = Decimal::from(included);
        let mut before = Decimal::ZERO;
        let mut units = Decimal::ZERO;
        for used in &usage {
            let during = Decimal::from(*used);
            units += volume()
                .rate(included, before, during)
                .iter()
                .filter(|c| c.kind == ChargeKind::Units)
                .map(|c| c.quantity)
                .sum::<Decimal>();
            before += during;
        }
        prop_assert_eq!(units, (before - included).max(Decimal::ZERO));
    }
}

// ---------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------

fn refusal(pricing: MeterPricing) -> DomainError {
    let mut plan = plan_with(meter(pricing, "0"));
    plan.meters.insert(0, meter(per_unit("0.01"), "0"));
    plan.meters[0].key = "other".to_owned();
    plan.validate().expect_err("invalid pricing")
}

#[test]
fn bad_pricing_is_refused_naming_the_field() {
    let tiers = |tiers: Vec<PriceTier>| MeterPricing::Graduated { tiers };
    let cases: Vec<(MeterPricing, &str, &str)> = vec![
        (tiers(vec![]), "tiers", "must have at least one tier"),
        (
            tiers(
                (0..=MAX_TIERS)
                    .map(|i| tier(Some(&format!("{}", i + 1)), "1", "0"))
                    .collect(),
            ),
            "tiers",
            "at most 20 tiers",
        ),
        (
            tiers(vec![tier(Some("0"), "1", "0"), tier(None, "1", "0")]),
            "tiers[0].up_to",
            "must be greater than 0",
        ),
        (
            tiers(vec![
                tier(Some("100"), "1", "0"),
                tier(Some("100"), "1", "0"),
                tier(None, "1", "0"),
            ]),
            "tiers[1].up_to",
            "must be greater than the previous tier's up_to (100)",
        ),
        (
            tiers(vec![
                tier(Some("100"), "1", "0"),
                tier(Some("50"), "1", "0"),
                tier(None, "1", "0"),
            ]),
            "tiers[1].up_to",
            "must be greater than the previous tier's up_to (100)",
        ),
        (
            tiers(vec![
                tier(Some("100"), "1", "0"),
                tier(Some("200"), "1", "0"),
            ]),
            "tiers[1].up_to",
            "the last tier must have up_to null",
        ),
        (
            tiers(vec![tier(None, "1", "0"), tier(None, "1", "0")]),
            "tiers[0].up_to",
            "only the last tier may have up_to null",
        ),
        (
            tiers(vec![
                tier(Some("0.0000000000001"), "1", "0"),
                tier(None, "1", "0"),
            ]),
            "tiers[0].up_to",
            "at most 12 decimal places",
        ),
        (
            tiers(vec![
                tier(Some("10"), "0.0000000000001", "0"),
                tier(None, "1", "0"),
            ]),
            "tiers[0].unit_price",
            "at most 12 decimal places",
        ),
        (
            tiers(vec![tier(Some("10"), "1", "0"), tier(None, "-0.01", "0")]),
            "tiers[1].unit_price",
            "must not be negative",
        ),
        (
            tiers(vec![tier(Some("10"), "1", "0.005"), tier(None, "1", "0")]),
            "tiers[0].flat_fee",
            "EUR allows at most 2 decimal places",
        ),
        (
            MeterPricing::Volume {
                tiers: vec![tier(Some("10"), "1", "-1"), tier(None, "1", "0")],
            },
            "tiers[0].flat_fee",
            "must not be negative",
        ),
        (
            MeterPricing::Package {
                package_size: dec("0"),
                package_price: dec("1"),
            },
            "package_size",
            "must be a whole number of at least 1",
        ),
        (
            MeterPricing::Package {
                package_size: dec("1.5"),
                package_price: dec("1"),
            },
            "package_size",
            "must be a whole number of at least 1",
        ),
        (
            MeterPricing::Package {
                package_size: dec("-1000"),
                package_price: dec("1"),
            },
            "package_size",
            "must not be negative",
        ),
        (
            MeterPricing::Package {
                package_size: dec("1000"),
                package_price: dec("0.1234567890123"),
            },
            "package_price",
            "at most 12 decimal places",
        ),
    ];
    for (pricing, field, message) in cases {
        assert_eq!(
            refusal(pricing.clone()),
            DomainError::validation(format!("meters[1].pricing.{field}"), message),
            "{pricing:?}"
        );
    }
    // The shorthand names the field a client sends.
    assert_eq!(
        refusal(per_unit("0.0000000000001")),
        DomainError::validation("meters[1].overage_unit_price", "at most 12 decimal places")
    );
}

#[test]
fn twelve_places_and_one_open_tier_are_accepted() {
    for pricing in [
        per_unit("0.000000000001"),
        MeterPricing::Graduated {
            tiers: vec![tier(None, "0.123456789012", "0")],
        },
        MeterPricing::Volume {
            tiers: vec![
                tier(Some("0.000000000001"), "1", "0.01"),
                tier(None, "0", "0"),
            ],
        },
        MeterPricing::Package {
            package_size: dec("1"),
            package_price: dec("0"),
        },
        MeterPricing::Graduated {
            tiers: (0..MAX_TIERS)
                .map(|i| {
                    tier(
                        (i + 1 < MAX_TIERS).then(|| format!("{}", i + 1)).as_deref(),
                        "1",
                        "0",
                    )
                })
                .collect(),
        },
    ] {
        plan_with(meter(pricing.clone(), "0"))
            .validate()
            .unwrap_or_else(|e| panic!("{pricing:?}: {e}"));
    }
}

#[test]
fn a_plan_s_meters_bill_a_bounded_number_of_lines() {
    // Twenty tiers with flat fees bill at most 40 lines a meter: two such
    // meters fit the 100 lines of a plan, three do not.
    let tiered = MeterPricing::Graduated {
        tiers: (0..MAX_TIERS)
            .map(|i| {
                tier(
                    (i + 1 < MAX_TIERS).then(|| format!("{}", i + 1)).as_deref(),
                    "1",
                    "1.00",
                )
            })
            .collect(),
    };
    assert_eq!(tiered.max_lines(), 40);
    let mut plan = terms("many", "1", "0", 1, 10);
    plan.meters = (0..3)
        .map(|i| MeterTerms {
            key: format!("m{i}"),
            ..meter(tiered.clone(), "0")
        })
        .collect();
    assert!(matches!(
        plan.validate(),
        Err(DomainError::Validation { ref field, .. }) if field == "meters"
    ));
    plan.meters.pop();
    plan.validate().unwrap();
}

#[test]
fn seat_prices_are_unit_prices() {
    let mut plan = terms("seats", "10.00", "0.125", 1, 10);
    plan.validate().unwrap();
    plan.seat_price = dec("0.0000000000001");
    assert_eq!(
        plan.validate(),
        Err(DomainError::validation(
            "seat_price",
            "at most 12 decimal places"
        ))
    );
}

// ---------------------------------------------------------------------------
// The stored form
// ---------------------------------------------------------------------------

#[test]
fn meters_stored_before_pricing_models_read_as_per_unit() {
    // A PlanCreated as stored before tiers existed.
    let stored = serde_json::json!({"PlanCreated": {
        "plan_id": "plan_1",
        "terms": {
            "code": "std", "name": "Standard", "currency": "EUR", "interval": "month",
            "base_price": "10.00", "seat_price": "2.50", "seats": {"min": 1, "max": 20},
            "meters": [
                {"key": "api_calls", "included": "1000", "hard_cap": "5000",
                 "overage_unit_price": "0.01", "reset": "monthly"},
                {"key": "storage", "included": null, "hard_cap": "10",
                 "overage_unit_price": null, "reset": "lifetime"},
                {"key": "seats_used", "reset": "yearly"}
            ]
        },
        "created_at": "2025-01-30T09:00:00Z"
    }});
    let event: PlanEvent = serde_json::from_value(stored.clone()).unwrap();
    let PlanEvent::PlanCreated { terms, .. } = &event else {
        panic!("{event:?}")
    };
    assert_eq!(terms.meters[0].pricing, Some(per_unit("0.01")));
    assert_eq!(terms.meters[1].pricing, None);
    assert_eq!(terms.meters[2].pricing, None);
    // Written again, a per-unit or unpriced meter has its old shape.
    let written = serde_json::to_value(&event).unwrap();
    let meters = &written["PlanCreated"]["terms"]["meters"];
    assert_eq!(meters[0], stored["PlanCreated"]["terms"]["meters"][0]);
    assert_eq!(meters[1], stored["PlanCreated"]["terms"]["meters"][1]);
    assert!(meters[2].get("pricing").is_none(), "{written}");
}

#[test]
fn tiered_pricing_is_stored_by_model() {
    let m = meter(graduated(), "1000");
    let json = serde_json::to_value(&m).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "key": "api_calls", "included": "1000", "hard_cap": null,
            "overage_unit_price": null,
            "pricing": {"model": "graduated", "tiers": [
                {"up_to": "10000", "unit_price": "0.002", "flat_fee": "0"},
                {"up_to": "50000", "unit_price": "0.0015", "flat_fee": "5.00"},
                {"up_to": null, "unit_price": "0.001", "flat_fee": "0"}
            ]},
            "reset": "monthly"
        })
    );
    assert_eq!(serde_json::from_value::<MeterTerms>(json).unwrap(), m);
    for pricing in [volume(), package(), per_unit("0.002")] {
        let m = meter(pricing, "0");
        let back: MeterTerms = serde_json::from_value(serde_json::to_value(&m).unwrap()).unwrap();
        assert_eq!(back, m);
    }
    let package_json = serde_json::to_value(meter(package(), "0")).unwrap();
    assert_eq!(
        package_json["pricing"],
        serde_json::json!({"model": "package", "package_size": "1000", "package_price": "5.00"})
    );
}
