//! Money properties over random command sequences (issue 17, item 8): a
//! subscription with trials, plan and seat changes with proration, a tiered
//! meter, coupons applied and removed, renewed period after period; each
//! billing event invoiced as the billing policy does (renewal lines, the
//! discount line), issued with random exclusive and inclusive tax rates and
//! customer credit, then paid and credited at random. After every step:
//! `amount_due` is never negative; `total = subtotal − discount + exclusive
//! tax`; each line equals its rounded product; the discount is never more
//! than the lines it covers; each tax amount is its line's rounded tax; one
//! invoice per billing period; no invoice during a trial.

mod support;

use std::collections::{BTreeMap, BTreeSet};

use chrono::Duration;
use proptest::prelude::*;
use rust_decimal::Decimal;
use support::*;
use tally_aggregates::billing::{renewal_lines, MeterUsage, Renewal};
use tally_aggregates::coupon::{discount_line, discounts};
use tally_aggregates::invoice::CreditReason;
use tally_aggregates::plan::MeterTerms;
use tally_aggregates::tax::tax_amount;
use tally_aggregates::{
    AppliedDiscount, AppliedRate, CouponDuration, CouponOff, CouponRef, CouponTerms, Invoice,
    InvoiceCommand, LineKind, MeterPricing, PlanRef, PriceTier, ProrationMode, ResetCadence,
    Subscription, SubscriptionCommand, SubscriptionEvent, SubscriptionStatus, TaxSources,
};

/// A plan with a graduated meter: usage bills in tiers, with a flat fee.
fn tiered() -> PlanRef {
    let mut plan = plan_ref("plan_tiered", terms("tiered", "19.99", "3.333", 1, 10));
    plan.terms.meters = vec![MeterTerms {
        key: "api_calls".to_owned(),
        included: Some(dec("100")),
        hard_cap: None,
        pricing: Some(MeterPricing::Graduated {
            tiers: vec![
                PriceTier {
                    up_to: Some(dec("1000")),
                    unit_price: dec("0.0125"),
                    flat_fee: dec("0"),
                },
                PriceTier {
                    up_to: None,
                    unit_price: dec("0.00333"),
                    flat_fee: dec("2.50"),
                },
            ],
        }),
        reset: ResetCadence::Monthly,
    }];
    plan
}

fn coupon(step: &Step) -> CouponRef {
    let off = if step.a.is_multiple_of(2) {
        CouponOff::Percent {
            percent_off: Decimal::new(i64::from(step.b % 10_000) + 1, 2).min(dec("100")),
        }
    } else {
        CouponOff::Amount {
            amount_off: Decimal::new(i64::from(step.b % 5_000) + 1, 2),
            currency: eur(),
        }
    };
    let (duration, periods) = match step.a % 3 {
        0 => (CouponDuration::Once, None),
        1 => (CouponDuration::Repeating, Some(step.a % 4 + 1)),
        _ => (CouponDuration::Forever, None),
    };
    CouponRef {
        coupon_id: format!("cpn_{}", step.a),
        terms: CouponTerms {
            code: format!("C{}", step.a),
            name: None,
            off,
            duration,
            duration_in_periods: periods,
            max_redemptions: None,
            redeem_by: None,
            plan_ids: vec![],
        },
    }
}

#[derive(Debug, Clone)]
struct Step {
    kind: u8,
    a: u32,
    b: u32,
    advance_hours: i64,
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec(
        (0u8..9, 0u32..1_000, 0u32..100_000, 0i64..(40 * 24)).prop_map(
            |(kind, a, b, advance_hours)| Step {
                kind,
                a,
                b,
                advance_hours,
            },
        ),
        1..60,
    )
}

/// Random tax rates of the plan (the lines' rates at issue).
fn tax_rates() -> impl Strategy<Value = Vec<(u32, bool)>> {
    prop::collection::vec((0u32..300_000, any::<bool>()), 0..3)
}

fn sources(rates: &[(u32, bool)]) -> TaxSources {
    let mut sources = TaxSources::default();
    for (i, (p, inclusive)) in rates.iter().enumerate() {
        let id = format!("txr_{i}");
        sources.plan.push(id.clone());
        sources.rates.insert(
            id.clone(),
            AppliedRate {
                tax_rate_id: id,
                // 0 to 30 %, four places.
                percentage: Decimal::new(i64::from(*p), 4),
                inclusive: *inclusive,
            },
        );
    }
    sources
}

/// Checks every money property of an invoice, at any point of its life.
fn check_invoice(
    invoice: &Invoice,
    rates: &BTreeMap<String, AppliedRate>,
) -> Result<(), TestCaseError> {
    let currency = invoice.currency();
    let places = currency.minor_units();
    prop_assert!(
        invoice.amount_due >= Decimal::ZERO,
        "amount_due {}",
        invoice.amount_due
    );
    let mut covered = Decimal::ZERO;
    let mut discount = Decimal::ZERO;
    for line in &invoice.lines {
        if line.kind == LineKind::Discount {
            prop_assert!(line.amount <= Decimal::ZERO);
            discount -= line.amount;
        } else {
            prop_assert_eq!(
                Some(line.amount),
                exact_round_product(line.quantity, line.unit_price, places),
                "line {:?}",
                line
            );
        }
        if discounts(line.kind) {
            covered += line.amount;
        }
        for tax in &line.tax_amounts {
            let rate = &rates[&tax.tax_rate_id];
            prop_assert_eq!(tax.amount, tax_amount(line.amount, rate, currency));
        }
    }
    prop_assert!(
        discount <= covered.max(Decimal::ZERO),
        "discount {discount} covers {covered}"
    );
    prop_assert_eq!(invoice.discount, discount);
    if invoice.number.is_some() {
        let taxes = invoice.lines.iter().flat_map(|l| &l.tax_amounts);
        let tax: Decimal = taxes.clone().map(|t| t.amount).sum();
        let exclusive: Decimal = taxes.filter(|t| !t.inclusive).map(|t| t.amount).sum();
        prop_assert_eq!(invoice.tax, tax);
        prop_assert_eq!(
            invoice.total,
            invoice.subtotal - invoice.discount + exclusive
        );
        prop_assert_eq!(
            invoice.subtotal,
            invoice
                .lines
                .iter()
                .filter(|l| l.kind != LineKind::Discount)
                .map(|l| l.amount)
                .sum::<Decimal>()
        );
    }
    Ok(())
}

fn apply(invoice: &mut Invoice, command: InvoiceCommand) -> bool {
    match invoice.decide(command) {
        Ok(events) => {
            for e in &events {
                invoice.evolve(e);
            }
            true
        }
        Err(_) => false,
    }
}

/// Invoices one billing event as the billing policy does, issues it, and
/// pays and credits it at random; checks the money after every step.
fn bill(
    renewal: &Renewal<'_>,
    usage: Decimal,
    discount: Option<&AppliedDiscount>,
    taxes: &TaxSources,
    step: &Step,
) -> Result<(), TestCaseError> {
    let meters: Vec<MeterUsage> = renewal
        .plan
        .meters
        .iter()
        .map(|m| MeterUsage {
            meter: m.key.clone(),
            before: Decimal::ZERO,
            during: usage,
        })
        .collect();
    let mut lines = renewal_lines(renewal, &meters);
    if let Some(discount) = discount {
        lines.extend(discount_line(discount, &lines, eur()));
    }
    let at = renewal.new_period.start;
    let mut invoice = Invoice::default();
    let created = apply(
        &mut invoice,
        InvoiceCommand::Create {
            invoice_id: "inv_p".into(),
            customer_id: "cus_p".into(),
            currency: eur(),
            subscription_id: Some("sub_p".into()),
            billing_period: Some(renewal.closed_period),
            due_days: None,
            lines,
            at,
        },
    );
    prop_assert!(created, "the billing lines make a valid draft");
    check_invoice(&invoice, &taxes.rates)?;
    let issued = apply(
        &mut invoice,
        InvoiceCommand::Issue {
            number: 1,
            customer: None,
            available_credit: Decimal::new(i64::from(step.b % 3_000), 2),
            taxes: Box::new(taxes.clone()),
            at,
        },
    );
    prop_assert!(issued, "a draft is issued");
    check_invoice(&invoice, &taxes.rates)?;
    // Payments and credit notes, some too large (refused), until settled.
    for n in 0..4u32 {
        let amount = Decimal::new(i64::from((step.b / (n + 1)) % 4_000 + 1), 2);
        let command = if (step.a + n).is_multiple_of(2) {
            InvoiceCommand::RecordPayment {
                payment_id: format!("pay_{n}"),
                amount,
                reference: format!("ref-{n}"),
                captured_at: at,
                excess_to_credit: n == 3,
                at,
            }
        } else {
            InvoiceCommand::IssueCreditNote {
                credit_note_id: format!("cn_{n}"),
                number: u64::from(n) + 1,
                amount,
                reason: CreditReason::OrderChange,
                refund: n == 1,
                reference: None,
                at,
            }
        };
        apply(&mut invoice, command);
        check_invoice(&invoice, &taxes.rates)?;
        prop_assert!(invoice.amount_credited <= invoice.total.max(Decimal::ZERO));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn money_holds_over_random_billing_histories(
        steps in steps(),
        trial in any::<bool>(),
        rates in tax_rates(),
    ) {
        let plans = [basic(), pro(), tiered()];
        let taxes = sources(&rates);
        let mut at = t(CREATED);
        let mut sub = Subscription::default();
        let created = sub
            .decide(SubscriptionCommand::Create {
                subscription_id: "sub_p".into(),
                customer_id: "cus_p".into(),
                plan: tiered(),
                seats: Some(2),
                trial_days: trial.then_some(14),
                tax_rate_ids: vec![],
                at,
            })
            .unwrap();
        for e in &created {
            sub.evolve(e);
        }
        let mut periods = BTreeSet::new();
        for step in &steps {
            at += Duration::hours(step.advance_hours);
            let command = match step.kind {
                0 => SubscriptionCommand::Activate { at, now: at },
                1 => SubscriptionCommand::EndTrial { at },
                2 => SubscriptionCommand::ChangeSeats {
                    seats: step.a % 12,
                    proration: ProrationMode::Prorate,
                    at,
                },
                3 => SubscriptionCommand::ChangePlan {
                    plan: plans[step.a as usize % plans.len()].clone(),
                    proration: if step.b.is_multiple_of(2) { ProrationMode::Prorate } else { ProrationMode::None },
                    at,
                },
                4 => SubscriptionCommand::ApplyDiscount { coupon: coupon(step), at },
                5 => SubscriptionCommand::RemoveDiscount { at },
                _ => {
                    // Renew when the period has ended (the scheduler's tick).
                    if let Some(period) = sub.current_period {
                        at = at.max(period.end);
                    }
                    SubscriptionCommand::Renew { at }
                }
            };
            let before = sub.status;
            let Ok(events) = sub.decide(command) else { continue };
            for event in &events {
                sub.evolve(event);
                match event {
                    SubscriptionEvent::SubscriptionActivated { period, plan: Some(plan), seats: Some(seats), discount, .. } => {
                        prop_assert!(periods.insert(period.start), "a second invoice for {:?}", period);
                        let first = Renewal {
                            closed_period: tally_aggregates::Period { start: period.start, end: period.start },
                            new_period: *period,
                            plan,
                            seats: *seats,
                            prorations: &[],
                        };
                        bill(&first, Decimal::ZERO, discount.as_ref(), &taxes, step)?;
                    }
                    SubscriptionEvent::PeriodRenewed { closed_period, new_period, plan: Some(plan), seats: Some(seats), prorations, discount, .. } => {
                        // No invoice during a trial: a trial has no period to renew.
                        prop_assert_ne!(before, Some(SubscriptionStatus::Trialing));
                        prop_assert!(periods.insert(new_period.start), "a second invoice for {:?}", new_period);
                        let renewal = Renewal {
                            closed_period: *closed_period,
                            new_period: *new_period,
                            plan,
                            seats: *seats,
                            prorations,
                        };
                        let usage = Decimal::from(step.b % 20_000);
                        bill(&renewal, usage, discount.as_ref(), &taxes, step)?;
                    }
                    _ => {}
                }
            }
            if sub.status == Some(SubscriptionStatus::Trialing) {
                prop_assert!(sub.current_period.is_none());
            }
        }
    }
}
