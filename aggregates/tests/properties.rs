//! Property tests: random command sequences, valid and invalid alike, never
//! break the subscription's invariants. Errors are discarded; only accepted
//! commands change the state, exactly as the command layer applies them.
//! Every prorated change is billed by exactly one renewal, and only paying
//! the invoice that made a subscription past due clears it. Proration figures
//! match an exact integer reference, and the renewal invoice carries exactly
//! their credits and charges. (The invoice's own properties are in
//! `invoice.rs`.)

mod support;

use chrono::Duration;
use proptest::prelude::*;
use rust_decimal::Decimal;
use support::*;
use tally_aggregates::billing::{overage_quantity, renewal_lines, MeterUsage, Renewal};
use tally_aggregates::invoice::price_line;
use tally_aggregates::money::round_to_minor;
use tally_aggregates::subscription::FRACTION_PLACES;
use tally_aggregates::{
    CancelWhen, Currency, Interval, LineKind, MeterPricing, Period, PlanRef, ProrationFigures,
    ProrationMode, Subscription, SubscriptionCommand, SubscriptionEvent, SubscriptionStatus,
    SuspendReason,
};

/// The plans a random sequence picks from: some fit, some are archived, in
/// another currency or interval, or have seat limits the current seats miss.
fn plans() -> Vec<PlanRef> {
    let mut archived = plan_ref("plan_old", terms("old", "15.00", "1.00", 1, 50));
    archived.active = false;
    let mut usd = plan_ref("plan_usd", terms("usd", "12.00", "0", 1, 10));
    usd.terms.currency = Currency::parse("USD").unwrap();
    let mut yearly = plan_ref("plan_year", terms("year", "100.00", "0", 1, 10));
    yearly.terms.interval = Interval::Year;
    vec![
        basic(),
        pro(),
        plan_ref("plan_small", terms("small", "5.00", "2.50", 1, 3)),
        plan_ref("plan_big", terms("big", "99.00", "9.99", 6, 100)),
        plan_ref("plan_team", terms("team", "0", "7.00", 2, 20)),
        archived,
        usd,
        yearly,
    ]
}

/// One step of a random sequence: which command, its numbers, and how far the
/// clock moves before it.
#[derive(Debug, Clone)]
struct Step {
    kind: u8,
    seats: u32,
    plan: usize,
    advance_seconds: i64,
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec(
        (
            // Plan and seat changes (kinds 2 and 3) get extra weight.
            prop_oneof![2 => 0u8..14, 1 => 2u8..4],
            prop_oneof![4 => 0u32..25, 1 => 0u32..120],
            0usize..8,
            0i64..(20 * 86_400),
        )
            .prop_map(|(kind, seats, plan, advance_seconds)| Step {
                kind,
                seats,
                plan,
                advance_seconds,
            }),
        1..80,
    )
}

fn command(
    step: &Step,
    plans: &[PlanRef],
    at: chrono::DateTime<chrono::Utc>,
) -> SubscriptionCommand {
    let proration = if step.seats % 2 == 1 {
        ProrationMode::None
    } else {
        ProrationMode::Prorate
    };
    let plan = plans[step.plan].clone();
    match step.kind {
        0 => SubscriptionCommand::Create {
            subscription_id: "sub_p".to_owned(),
            customer_id: if step.seats % 11 == 3 {
                String::new()
            } else {
                "cus_p".to_owned()
            },
            plan,
            // Now and then no seats: the plan minimum.
            seats: (step.seats % 5 != 4).then_some(step.seats),
            // Now and then a trial of its own (zero: the plan's, none).
            trial_days: step.seats.is_multiple_of(3).then_some(step.seats % 20),
            tax_rate_ids: vec![],
            at,
        },
        1 => SubscriptionCommand::Activate { at, now: at },
        2 => SubscriptionCommand::ChangePlan {
            plan,
            proration,
            at,
        },
        3 => SubscriptionCommand::ChangeSeats {
            seats: step.seats,
            proration,
            at,
        },
        4 => SubscriptionCommand::Suspend {
            reason: match step.seats % 3 {
                0 => SuspendReason::NonPayment,
                1 => SuspendReason::Manual { note: None },
                _ => SuspendReason::QuotaExceeded {
                    meter: "api.calls".to_owned(),
                },
            },
            at,
        },
        5 => SubscriptionCommand::Resume { at },
        // Few invoice ids, so that a payment often matches the past-due one.
        6 => SubscriptionCommand::MarkPastDue {
            invoice_id: format!("inv_{}", step.seats % 3),
            at,
        },
        7 => SubscriptionCommand::Cancel {
            when: CancelWhen::Now,
            reason: None,
            at,
        },
        8 => SubscriptionCommand::Cancel {
            when: CancelWhen::PeriodEnd,
            reason: Some("later".to_owned()),
            at,
        },
        9 => SubscriptionCommand::ClearPastDue {
            invoice_id: format!("inv_{}", step.seats % 3),
            at,
        },
        10 => SubscriptionCommand::EndTrial { at },
        // Renewal is the most frequent command in real life.
        _ => SubscriptionCommand::Renew { at },
    }
}

fn check_invariants(subscription: &Subscription, events: &[SubscriptionEvent]) {
    if let Some(terms) = &subscription.plan {
        assert!(
            terms.seats.contains(subscription.seats),
            "seats {} outside {:?}",
            subscription.seats,
            terms.seats
        );
    }
    if let Some(period) = subscription.current_period {
        assert!(period.start < period.end, "{period:?}");
    }
    match subscription.status {
        Some(SubscriptionStatus::Suspended) => assert!(subscription.suspension.is_some()),
        Some(
            SubscriptionStatus::Draft
            | SubscriptionStatus::Trialing
            | SubscriptionStatus::Active
            | SubscriptionStatus::PastDue
            | SubscriptionStatus::Canceled,
        )
        | None => assert!(subscription.suspension.is_none()),
    }
    // A trial has no billing period, so nothing can be billed during it;
    // every running subscription without a period is in its trial.
    match subscription.status {
        Some(SubscriptionStatus::Trialing) => {
            assert_eq!(subscription.current_period, None);
            assert_eq!(subscription.anchor, None);
            assert!(subscription.trial_start <= subscription.trial_end);
            assert!(subscription.trial_end.is_some());
        }
        Some(SubscriptionStatus::Suspended) if subscription.current_period.is_none() => {
            assert!(subscription.trial_end.is_some());
        }
        Some(SubscriptionStatus::Active | SubscriptionStatus::PastDue) => {
            assert!(subscription.current_period.is_some());
        }
        Some(
            SubscriptionStatus::Draft
            | SubscriptionStatus::Suspended
            | SubscriptionStatus::Canceled,
        )
        | None => {}
    }
    // Past due always knows which invoice; only a suspension may outlive it.
    match subscription.status {
        Some(SubscriptionStatus::PastDue) => assert!(subscription.past_due_invoice.is_some()),
        Some(SubscriptionStatus::Suspended) => {}
        Some(
            SubscriptionStatus::Draft
            | SubscriptionStatus::Trialing
            | SubscriptionStatus::Active
            | SubscriptionStatus::Canceled,
        )
        | None => assert_eq!(subscription.past_due_invoice, None),
    }
    // Prorations waiting for the renewal belong to the current period.
    for figures in &subscription.pending_prorations {
        assert_eq!(Some(figures.period), subscription.current_period);
    }
    for event in events {
        match event {
            SubscriptionEvent::PeriodRenewed {
                closed_period,
                new_period,
                ..
            } => assert_eq!(
                closed_period.end, new_period.start,
                "periods are contiguous"
            ),
            SubscriptionEvent::PlanChanged {
                proration: Some(figures),
                ..
            }
            | SubscriptionEvent::SeatsChanged {
                proration: Some(figures),
                ..
            } => {
                assert!(figures.fraction >= Decimal::ZERO && figures.fraction <= Decimal::ONE);
                assert!(figures.credit <= Decimal::ZERO);
                assert!(figures.charge >= Decimal::ZERO);
                assert_eq!(figures.net, figures.credit + figures.charge);
                assert_eq!(figures.credit.scale(), 2);
                assert_eq!(figures.charge.scale(), 2);
            }
            _ => {}
        }
        // Every accepted event survives the event store.
        let json = serde_json::to_string(event).unwrap();
        assert_eq!(
            &serde_json::from_str::<SubscriptionEvent>(&json).unwrap(),
            event
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_command_sequences_keep_every_invariant(
        steps in steps(),
        start_active in any::<bool>(),
    ) {
        let plans = plans();
        let mut subscription = Subscription::default();
        let mut history = Vec::new();
        let mut at = t("2025-01-31T10:00:00Z");
        // Half the runs start from an active subscription, so that more of the
        // random commands reach the states where plan and seat changes apply.
        if start_active {
            history = vec![created(), activated_at("2025-01-31T10:00:00Z")];
            subscription = given(&history);
        }
        // The prorated changes no renewal has billed yet, as the billing
        // policy would see them in the log.
        let mut unbilled = Vec::new();
        for step in &steps {
            at += Duration::seconds(step.advance_seconds);
            let command = command(step, &plans, at);
            let before = subscription.clone();
            let was_canceled = before.status == Some(SubscriptionStatus::Canceled);
            match run(&mut subscription, command.clone()) {
                Ok(events) => {
                    prop_assert!(!was_canceled, "a canceled subscription accepted {command:?}");
                    check_invariants(&subscription, &events);
                    check_billing(&before, &events, &mut unbilled)?;
                    prop_assert_eq!(&subscription.pending_prorations, &unbilled);
                    history.extend(events);
                }
                Err(_) => prop_assert_eq!(&subscription, &before),
            }
            if was_canceled {
                prop_assert_eq!(&subscription, &before);
            }
        }
        // Replaying the accepted events rebuilds the same state.
        prop_assert_eq!(given(&history), subscription);
    }

    #[test]
    fn a_canceled_subscription_refuses_everything(steps in steps()) {
        let plans = plans();
        let canceled = given(&history_canceled());
        let mut at = t("2025-03-01T00:00:00Z");
        for step in &steps {
            at += Duration::seconds(step.advance_seconds);
            let command = command(step, &plans, at);
            prop_assert!(canceled.decide(command.clone()).is_err(), "{command:?}");
        }
    }
}

fn history_canceled() -> Vec<SubscriptionEvent> {
    support::history(Some(SubscriptionStatus::Canceled))
}

/// What the billing side relies on: a renewal carries the plan and seats it
/// closed with and exactly the prorated changes since the last renewal (each
/// billed once), and a past due is cleared only by its own invoice.
fn check_billing(
    before: &Subscription,
    events: &[SubscriptionEvent],
    unbilled: &mut Vec<ProrationFigures>,
) -> Result<(), TestCaseError> {
    for event in events {
        match event {
            SubscriptionEvent::PlanChanged { proration, .. }
            | SubscriptionEvent::SeatsChanged { proration, .. } => {
                unbilled.extend(proration.clone());
            }
            SubscriptionEvent::PeriodRenewed {
                closed_period,
                plan_id,
                plan,
                seats,
                prorations,
                ..
            } => {
                // No invoice during a trial: it has no period to renew.
                prop_assert_ne!(before.status, Some(SubscriptionStatus::Trialing));
                prop_assert_eq!(plan_id.as_deref(), Some(before.plan_id.as_str()));
                prop_assert_eq!(plan.as_ref(), before.plan.as_ref());
                prop_assert_eq!(*seats, Some(before.seats));
                prop_assert_eq!(prorations, &*unbilled);
                for figures in prorations {
                    prop_assert_eq!(figures.period, *closed_period);
                }
                unbilled.clear();
            }
            SubscriptionEvent::PastDueCleared { invoice_id, .. } => {
                prop_assert_eq!(before.status, Some(SubscriptionStatus::PastDue));
                prop_assert_eq!(
                    before.past_due_invoice.as_deref(),
                    Some(invoice_id.as_str())
                );
            }
            // A cancellation ends the subscription without a renewal, so
            // what is pending stays pending (and is never billed).
            SubscriptionEvent::SubscriptionCanceled { .. }
            | SubscriptionEvent::SubscriptionCreated { .. }
            | SubscriptionEvent::TrialStarted { .. }
            | SubscriptionEvent::TrialEnded { .. }
            | SubscriptionEvent::SubscriptionActivated { .. }
            | SubscriptionEvent::SubscriptionSuspended { .. }
            | SubscriptionEvent::SubscriptionResumed { .. }
            | SubscriptionEvent::SubscriptionPastDue { .. }
            | SubscriptionEvent::CancellationScheduled { .. }
            | SubscriptionEvent::DiscountApplied { .. }
            | SubscriptionEvent::DiscountRemoved { .. } => {}
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Proration figures and the renewal invoice
// ---------------------------------------------------------------------------

fn currencies() -> [Currency; 3] {
    [eur(), jpy(), kwd()]
}

/// A prorated change: a period of one hour to two years, a change time from
/// before the period to after it (clamped), and per-period amounts at the
/// currency's scale, as `PlanTerms::recurring_amount` gives them.
#[derive(Debug, Clone)]
struct Change {
    period: Period,
    at: chrono::DateTime<chrono::Utc>,
    old_recurring: Decimal,
    new_recurring: Decimal,
    currency: Currency,
}

fn change() -> impl Strategy<Value = Change> {
    (
        0i64..(10 * 365 * 86_400),
        3_600i64..(2 * 366 * 86_400),
        // Where the change falls, in thousandths of the period.
        -250i64..1_250,
        prop_oneof![2 => 0i64..100_000, 1 => 0i64..100_000_000_000],
        prop_oneof![2 => 0i64..100_000, 1 => 0i64..100_000_000_000],
        0usize..3,
    )
        .prop_map(|(start, length, permille, old, new, currency)| {
            let currency = currencies()[currency];
            let start = t("2020-01-01T00:00:00Z") + Duration::seconds(start);
            let offset = length * permille / 1_000;
            let places = currency.minor_units();
            Change {
                period: Period {
                    start,
                    end: start + Duration::seconds(length),
                },
                at: start + Duration::seconds(offset),
                old_recurring: Decimal::new(old, places),
                new_recurring: Decimal::new(new, places),
                currency,
            }
        })
}

fn compute(change: &Change) -> ProrationFigures {
    ProrationFigures::compute(
        change.period,
        change.at,
        change.old_recurring,
        change.new_recurring,
        change.currency,
    )
}

/// remaining / total seconds to `FRACTION_PLACES`, half away from zero, in
/// integers.
fn exact_fraction(change: &Change) -> Decimal {
    let at = change.at.clamp(change.period.start, change.period.end);
    let total = i128::from(change.period.length_seconds());
    let remaining = i128::from((change.period.end - at).num_seconds());
    let scaled = remaining * 10i128.pow(FRACTION_PLACES);
    let mut units = scaled / total;
    if (scaled % total) * 2 >= total {
        units += 1;
    }
    Decimal::from_i128_with_scale(units, FRACTION_PLACES)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn proration_figures_are_exact_and_bounded(change in change()) {
        let figures = compute(&change);
        let places = change.currency.minor_units();
        let round = |amount: Decimal| round_to_minor(amount, change.currency);

        prop_assert_eq!(figures.period, change.period);
        prop_assert_eq!(figures.at, change.at.clamp(change.period.start, change.period.end));
        prop_assert_eq!(figures.currency, change.currency);
        prop_assert_eq!(figures.fraction, exact_fraction(&change));
        prop_assert!(figures.fraction >= Decimal::ZERO && figures.fraction <= Decimal::ONE);

        // credit + charge = round(new × fraction) − round(old × fraction).
        let charge = exact_round_product(change.new_recurring, figures.fraction, places).unwrap();
        let refund = exact_round_product(change.old_recurring, figures.fraction, places).unwrap();
        prop_assert_eq!(figures.charge, charge);
        prop_assert_eq!(figures.credit, round(-refund));
        prop_assert_eq!(figures.credit + figures.charge, charge - refund);
        prop_assert_eq!(figures.net, figures.credit + figures.charge);

        // Never more back than was paid, never more charged than the new price.
        prop_assert!(figures.credit <= Decimal::ZERO);
        prop_assert!(figures.charge >= Decimal::ZERO);
        prop_assert!(-figures.credit <= change.old_recurring);
        prop_assert!(figures.charge <= change.new_recurring);
        for amount in [figures.credit, figures.charge, figures.net] {
            prop_assert_eq!(amount.scale(), places);
        }
        if figures.at == change.period.start {
            prop_assert_eq!(figures.credit, round(-change.old_recurring));
            prop_assert_eq!(figures.charge, change.new_recurring);
        }
        if figures.at == change.period.end {
            prop_assert!(figures.credit.is_zero() && figures.charge.is_zero());
        }
    }

    #[test]
    fn renewal_lines_carry_exactly_each_credit_and_charge(
        changes in prop::collection::vec(change(), 0..5),
        currency in 0usize..3,
        base in 0i64..1_000_000,
        seat in 0i64..100_000,
        seats in 0u32..50,
    ) {
        // One currency per renewal: the first change's, or the drawn one.
        let currency = changes.first().map_or(currencies()[currency], |c| c.currency);
        let places = currency.minor_units();
        let prorations: Vec<ProrationFigures> = changes
            .iter()
            .map(|c| Change { currency, ..c.clone() })
            .map(|c| compute(&Change {
                old_recurring: round_to_minor(c.old_recurring, currency),
                new_recurring: round_to_minor(c.new_recurring, currency),
                ..c
            }))
            .collect();
        let mut plan = terms("team", "0", "0", 1, 100);
        plan.currency = currency;
        plan.base_price = Decimal::new(base, places);
        plan.seat_price = Decimal::new(seat, places);
        let april = Period { start: t("2025-04-01T00:00:00Z"), end: t("2025-05-01T00:00:00Z") };
        let may = Period { start: t("2025-05-01T00:00:00Z"), end: t("2025-06-01T00:00:00Z") };
        let renewal = Renewal {
            closed_period: april,
            new_period: may,
            plan: &plan,
            seats,
            prorations: &prorations,
        };
        let lines = renewal_lines(&renewal, &[]);
        let priced: Vec<_> = lines
            .iter()
            .enumerate()
            .map(|(i, line)| price_line(line, currency, i as u32 + 1, Some(i)))
            .collect::<Result<_, _>>()
            .expect("renewal lines are valid invoice lines");

        // The recurring fee is the plan's price for the seats, in advance.
        let recurring: Decimal = priced
            .iter()
            .filter(|l| l.kind == LineKind::Recurring)
            .map(|l| l.amount)
            .sum();
        prop_assert_eq!(recurring, plan.recurring_amount(seats));
        for line in priced.iter().filter(|l| l.kind == LineKind::Recurring) {
            prop_assert_eq!(line.period, Some(may));
        }

        // The proration lines are the non-zero credits and charges, in order.
        let proration_lines: Vec<_> = priced
            .iter()
            .filter(|l| l.kind == LineKind::Proration)
            .collect();
        let mut expected = Vec::new();
        for figures in &prorations {
            let period = Some(Period { start: figures.at, end: figures.period.end });
            for amount in [figures.credit, figures.charge] {
                if !amount.is_zero() {
                    expected.push((amount, period));
                }
            }
        }
        let got: Vec<_> = proration_lines.iter().map(|l| (l.amount, l.period)).collect();
        prop_assert_eq!(got, expected);
        let billed: Decimal = proration_lines.iter().map(|l| l.amount).sum();
        let net: Decimal = prorations.iter().map(|f| f.net).sum();
        prop_assert_eq!(billed, net);
        prop_assert_eq!(priced.len(), lines.len());
    }

    #[test]
    fn overage_is_billed_once_however_the_window_is_split(
        included in 0u64..10_000,
        usage in prop::collection::vec(0u64..5_000, 0..8),
        scale in 0u32..4,
    ) {
        // Usage of one window spread over several billing periods: the
        // overage billed period by period adds up to the overage of the
        // whole window, and no period bills more than it used.
        let included = Decimal::new(included as i64, scale);
        let mut before = Decimal::ZERO;
        let mut billed = Decimal::ZERO;
        for used in &usage {
            let during = Decimal::new(*used as i64, scale);
            let over = overage_quantity(included, before, during);
            prop_assert!(over >= Decimal::ZERO && over <= during);
            let lines = {
                let mut plan = terms("team", "1.00", "0", 1, 10);
                plan.meters.push(tally_aggregates::MeterTerms {
                    key: "api.calls".to_owned(),
                    included: Some(included),
                    hard_cap: None,
                    pricing: Some(MeterPricing::PerUnit {
                        unit_price: Decimal::new(15, 4),
                    }),
                    reset: tally_aggregates::ResetCadence::Lifetime,
                });
                let april = Period { start: t("2025-04-01T00:00:00Z"), end: t("2025-05-01T00:00:00Z") };
                let may = Period { start: t("2025-05-01T00:00:00Z"), end: t("2025-06-01T00:00:00Z") };
                renewal_lines(
                    &Renewal { closed_period: april, new_period: may, plan: &plan, seats: 1, prorations: &[] },
                    &[MeterUsage { meter: "api.calls".to_owned(), before, during }],
                )
            };
            let usage_lines: Vec<_> = lines.iter().filter(|l| l.kind == LineKind::Usage).collect();
            if over.is_zero() {
                prop_assert!(usage_lines.is_empty());
            } else {
                prop_assert_eq!(usage_lines.len(), 1);
                prop_assert_eq!(usage_lines[0].quantity, over);
            }
            billed += over;
            before += during;
        }
        prop_assert_eq!(billed, (before - included).max(Decimal::ZERO));
    }
}
