//! Given events / when command / then events or error for the `Coupon`
//! aggregate (every (status, command) pair, every term's validation,
//! expiry, plan and currency restrictions, `max_redemptions`), the
//! subscription's discount (applied, replaced, removed, counted per invoiced
//! period, carried by activations and renewals), the discount line's
//! arithmetic, and the invoice's rule that a discount never exceeds the
//! lines it covers.

mod support;

use support::*;
use tally_aggregates::coupon::{
    discount_amount, discount_line, AppliedDiscount, MAX_DURATION_PERIODS,
};
use tally_aggregates::subscription::Discount;
use tally_aggregates::AggregateKind;
use tally_aggregates::{
    Coupon, CouponCommand, CouponDuration, CouponEvent, CouponOff, CouponRef, CouponStatus,
    CouponTerms, DomainError, Invoice, InvoiceCommand, LineKind, NewLine, SubscriptionCommand,
    SubscriptionEvent, SubscriptionStatus,
};

const CREATED_AT: &str = "2025-01-01T00:00:00Z";
const REDEEM_BY: &str = "2025-03-01T00:00:00Z";

fn percent(p: &str) -> CouponOff {
    CouponOff::Percent {
        percent_off: dec(p),
    }
}

fn amount(a: &str) -> CouponOff {
    CouponOff::Amount {
        amount_off: dec(a),
        currency: eur(),
    }
}

fn coupon_terms() -> CouponTerms {
    CouponTerms {
        code: "WELCOME20".to_owned(),
        name: Some("Welcome".to_owned()),
        off: percent("20"),
        duration: CouponDuration::Repeating,
        duration_in_periods: Some(3),
        max_redemptions: Some(2),
        redeem_by: Some(t(REDEEM_BY)),
        plan_ids: vec!["plan_basic".to_owned()],
    }
}

fn create(terms: CouponTerms) -> CouponCommand {
    CouponCommand::Create {
        coupon_id: "cpn_1".to_owned(),
        terms,
        at: t(CREATED_AT),
    }
}

fn created_event() -> CouponEvent {
    CouponEvent::CouponCreated {
        coupon_id: "cpn_1".to_owned(),
        terms: coupon_terms(),
        created_at: t(CREATED_AT),
    }
}

fn redeem_at(sub: &str, plan: &str, at: &str) -> CouponCommand {
    CouponCommand::Redeem {
        subscription_id: sub.to_owned(),
        plan_id: plan.to_owned(),
        currency: eur(),
        at: t(at),
    }
}

fn redeem(sub: &str) -> CouponCommand {
    redeem_at(sub, "plan_basic", "2025-02-01T00:00:00Z")
}

fn redeemed(sub: &str, n: u32) -> CouponEvent {
    CouponEvent::CouponRedeemed {
        subscription_id: sub.to_owned(),
        times_redeemed: n,
        redeemed_at: t("2025-02-01T00:00:00Z"),
    }
}

fn archived() -> CouponEvent {
    CouponEvent::CouponArchived {
        archived_at: t("2025-02-02T00:00:00Z"),
    }
}

fn coupon(events: &[CouponEvent]) -> Coupon {
    let mut c = Coupon::default();
    for e in events {
        c.evolve(e);
    }
    c
}

/// A coupon in `status` (`None`: never created).
fn coupon_in(status: Option<CouponStatus>) -> Coupon {
    match status {
        None => coupon(&[]),
        Some(CouponStatus::Active) => coupon(&[created_event()]),
        Some(CouponStatus::Archived) => coupon(&[created_event(), archived()]),
    }
}

fn validation_field(e: DomainError) -> String {
    match e {
        DomainError::Validation { field, .. } => field,
        other => panic!("expected a validation error, got {other:?}"),
    }
}

// ---------- the (status, command) matrix ----------

#[test]
fn every_status_and_command_is_decided_on_purpose() {
    let statuses = [
        None,
        Some(CouponStatus::Active),
        Some(CouponStatus::Archived),
    ];
    for status in statuses {
        let c = coupon_in(status);
        let created = c.decide(create(coupon_terms()));
        let redemption = c.decide(redeem("sub_1"));
        let archive = c.decide(CouponCommand::Archive {
            at: t("2025-02-03T00:00:00Z"),
        });
        match status {
            None => {
                assert_eq!(created.unwrap(), vec![created_event()]);
                assert!(matches!(redemption, Err(DomainError::CouponInvalid(_))));
                assert_eq!(archive, Err(DomainError::NotFound(AggregateKind::Coupon)));
            }
            Some(CouponStatus::Active) => {
                assert_eq!(
                    created,
                    Err(DomainError::AlreadyExists(AggregateKind::Coupon))
                );
                assert_eq!(redemption.unwrap(), vec![redeemed("sub_1", 1)]);
                assert_eq!(
                    archive.unwrap(),
                    vec![CouponEvent::CouponArchived {
                        archived_at: t("2025-02-03T00:00:00Z")
                    }]
                );
            }
            Some(CouponStatus::Archived) => {
                assert_eq!(
                    created,
                    Err(DomainError::AlreadyExists(AggregateKind::Coupon))
                );
                assert!(matches!(redemption, Err(DomainError::CouponInvalid(_))));
                assert_eq!(
                    archive,
                    Err(DomainError::InvalidTransition {
                        aggregate: AggregateKind::Coupon,
                        from: "archived".to_owned(),
                        command: "archive",
                    })
                );
            }
        }
    }
}

#[test]
fn evolve_follows_the_events() {
    let mut c = coupon(&[created_event()]);
    assert_eq!(c.status, Some(CouponStatus::Active));
    assert_eq!(c.times_redeemed, 0);
    c.evolve(&redeemed("sub_1", 1));
    assert_eq!(c.times_redeemed, 1);
    c.evolve(&archived());
    assert_eq!(c.status, Some(CouponStatus::Archived));
    assert_eq!(c.archived_at, Some(t("2025-02-02T00:00:00Z")));
    // Archiving keeps the count: discounts already applied run on.
    assert_eq!(c.times_redeemed, 1);
}

#[test]
#[should_panic(expected = "CouponRedeemed on a coupon that is not active")]
fn a_redemption_of_an_archived_coupon_is_a_bug_in_evolve() {
    let mut c = coupon(&[created_event(), archived()]);
    c.evolve(&redeemed("sub_1", 1));
}

// ---------- redemption rules ----------

#[test]
fn max_redemptions_is_never_exceeded() {
    let mut c = coupon(&[created_event()]);
    for (i, sub) in ["sub_1", "sub_2"].into_iter().enumerate() {
        let events = c.decide(redeem(sub)).unwrap();
        assert_eq!(events, vec![redeemed(sub, i as u32 + 1)]);
        c.evolve(&events[0]);
    }
    match c.decide(redeem("sub_3")) {
        Err(DomainError::CouponExhausted(m)) => assert!(m.contains('2'), "{m}"),
        other => panic!("expected coupon_exhausted, got {other:?}"),
    }
}

#[test]
fn without_max_redemptions_it_is_redeemed_without_limit() {
    let mut terms = coupon_terms();
    terms.max_redemptions = None;
    let mut c = coupon(&[CouponEvent::CouponCreated {
        coupon_id: "cpn_1".to_owned(),
        terms,
        created_at: t(CREATED_AT),
    }]);
    for n in 1..=50 {
        let events = c.decide(redeem("sub_1")).unwrap();
        c.evolve(&events[0]);
        assert_eq!(c.times_redeemed, n);
    }
}

#[test]
fn redeem_by_is_inclusive_and_after_it_the_code_is_invalid() {
    let c = coupon(&[created_event()]);
    assert!(c
        .decide(redeem_at("sub_1", "plan_basic", REDEEM_BY))
        .is_ok());
    assert!(matches!(
        c.decide(redeem_at("sub_1", "plan_basic", "2025-03-01T00:00:01Z")),
        Err(DomainError::CouponInvalid(_))
    ));
    assert!(c.expired_at(t("2025-03-01T00:00:01Z")));
    assert!(!c.expired_at(t(REDEEM_BY)));
}

#[test]
fn plan_restrictions_and_currency_decide_applicability() {
    let c = coupon(&[created_event()]);
    assert!(matches!(
        c.decide(redeem_at("sub_1", "plan_pro", "2025-02-01T00:00:00Z")),
        Err(DomainError::CouponNotApplicable(_))
    ));
    // An amount off is in one currency.
    let mut terms = coupon_terms();
    terms.off = amount("5.00");
    terms.plan_ids.clear();
    let c = coupon(&[CouponEvent::CouponCreated {
        coupon_id: "cpn_1".to_owned(),
        terms,
        created_at: t(CREATED_AT),
    }]);
    let in_yen = CouponCommand::Redeem {
        subscription_id: "sub_1".to_owned(),
        plan_id: "plan_any".to_owned(),
        currency: jpy(),
        at: t("2025-02-01T00:00:00Z"),
    };
    assert!(matches!(
        c.decide(in_yen),
        Err(DomainError::CouponNotApplicable(_))
    ));
    // No plan restriction: any plan in its currency.
    assert!(c
        .decide(redeem_at("sub_1", "plan_any", "2025-02-01T00:00:00Z"))
        .is_ok());
}

#[test]
fn an_expired_exhausted_coupon_is_invalid_before_it_is_exhausted() {
    let c = coupon(&[created_event(), redeemed("sub_1", 1), redeemed("sub_2", 2)]);
    assert!(matches!(
        c.decide(redeem_at("sub_3", "plan_basic", "2025-04-01T00:00:00Z")),
        Err(DomainError::CouponInvalid(_))
    ));
}

// ---------- terms ----------

/// A change that makes good terms bad.
type Spoil = Box<dyn Fn(&mut CouponTerms)>;

#[test]
fn every_term_is_checked_and_named() {
    let bad: Vec<(&str, Spoil)> = vec![
        ("code", Box::new(|t| t.code = String::new())),
        ("code", Box::new(|t| t.code = "WELCOME 20".to_owned())),
        ("code", Box::new(|t| t.code = "X".repeat(65))),
        ("name", Box::new(|t| t.name = Some("  ".to_owned()))),
        ("name", Box::new(|t| t.name = Some("a\u{7}b".to_owned()))),
        ("percent_off", Box::new(|t| t.off = percent("0"))),
        ("percent_off", Box::new(|t| t.off = percent("100.01"))),
        ("percent_off", Box::new(|t| t.off = percent("-5"))),
        ("percent_off", Box::new(|t| t.off = percent("12.34567"))),
        ("amount_off", Box::new(|t| t.off = amount("0"))),
        ("amount_off", Box::new(|t| t.off = amount("1.005"))),
        ("amount_off", Box::new(|t| t.off = amount("-1"))),
        (
            "duration_in_periods",
            Box::new(|t| t.duration_in_periods = None),
        ),
        (
            "duration_in_periods",
            Box::new(|t| t.duration_in_periods = Some(0)),
        ),
        (
            "duration_in_periods",
            Box::new(|t| t.duration_in_periods = Some(MAX_DURATION_PERIODS + 1)),
        ),
        (
            "duration_in_periods",
            Box::new(|t| t.duration = CouponDuration::Once),
        ),
        (
            "duration_in_periods",
            Box::new(|t| t.duration = CouponDuration::Forever),
        ),
        ("max_redemptions", Box::new(|t| t.max_redemptions = Some(0))),
        (
            "redeem_by",
            Box::new(|terms| terms.redeem_by = Some(t(CREATED_AT))),
        ),
        (
            "redeem_by",
            Box::new(|terms| terms.redeem_by = Some(t("2024-12-31T00:00:00Z"))),
        ),
        (
            "plan_ids[0]",
            Box::new(|t| t.plan_ids = vec!["basic".to_owned()]),
        ),
        (
            "plan_ids",
            Box::new(|t| t.plan_ids = (0..51).map(|i| format!("plan_{i}")).collect()),
        ),
    ];
    for (field, spoil) in bad {
        let mut terms = coupon_terms();
        spoil(&mut terms);
        let err = coupon_in(None).decide(create(terms.clone())).unwrap_err();
        assert_eq!(validation_field(err), field, "{terms:?}");
    }
    // The good ones.
    for off in [percent("100"), percent("0.0001"), amount("0.01")] {
        let mut terms = coupon_terms();
        terms.off = off;
        assert!(coupon_in(None).decide(create(terms)).is_ok());
    }
    for (duration, periods) in [
        (CouponDuration::Once, None),
        (CouponDuration::Forever, None),
        (CouponDuration::Repeating, Some(MAX_DURATION_PERIODS)),
    ] {
        let mut terms = coupon_terms();
        terms.duration = duration;
        terms.duration_in_periods = periods;
        assert!(coupon_in(None).decide(create(terms)).is_ok());
    }
}

#[test]
fn durations_count_periods() {
    let mut terms = coupon_terms();
    assert_eq!(terms.periods(), Some(3));
    terms.duration = CouponDuration::Once;
    assert_eq!(terms.periods(), Some(1));
    terms.duration = CouponDuration::Forever;
    assert_eq!(terms.periods(), None);
}

// ---------- the subscription's discount ----------

fn coupon_ref(terms: CouponTerms) -> CouponRef {
    CouponRef {
        coupon_id: "cpn_1".to_owned(),
        terms,
    }
}

fn apply(terms: CouponTerms, at: &str) -> SubscriptionCommand {
    SubscriptionCommand::ApplyDiscount {
        coupon: coupon_ref(terms),
        at: t(at),
    }
}

fn discount_applied(periods_left: Option<u32>) -> SubscriptionEvent {
    SubscriptionEvent::DiscountApplied {
        discount: Discount {
            coupon_id: "cpn_1".to_owned(),
            code: "WELCOME20".to_owned(),
            off: percent("20"),
            start: t(CREATED),
            periods_left,
        },
    }
}

#[test]
fn every_subscription_status_decides_apply_and_remove_discount() {
    for status in std::iter::once(None).chain(SubscriptionStatus::ALL.map(Some)) {
        let sub = given(&history(status));
        let applied = sub.decide(apply(coupon_terms(), DURING));
        let removed = sub.decide(SubscriptionCommand::RemoveDiscount { at: t(DURING) });
        match status {
            None => {
                assert_eq!(
                    applied,
                    Err(DomainError::NotFound(AggregateKind::Subscription))
                );
                assert_eq!(
                    removed,
                    Err(DomainError::NotFound(AggregateKind::Subscription))
                );
            }
            Some(SubscriptionStatus::Canceled) => {
                for outcome in [applied, removed] {
                    assert!(
                        matches!(outcome, Err(DomainError::InvalidTransition { ref from, .. }) if from == "canceled"),
                        "{outcome:?}"
                    );
                }
            }
            Some(_) => {
                let events = applied.unwrap();
                assert_eq!(
                    events,
                    vec![SubscriptionEvent::DiscountApplied {
                        discount: Discount {
                            coupon_id: "cpn_1".to_owned(),
                            code: "WELCOME20".to_owned(),
                            off: percent("20"),
                            start: t(DURING),
                            periods_left: Some(3),
                        }
                    }]
                );
                // No discount to remove: nothing happens.
                assert_eq!(removed.unwrap(), vec![]);
                let mut with = sub.clone();
                with.evolve(&events[0]);
                assert_eq!(
                    with.decide(SubscriptionCommand::RemoveDiscount { at: t(DURING) })
                        .unwrap(),
                    vec![SubscriptionEvent::DiscountRemoved {
                        coupon_id: "cpn_1".to_owned(),
                        removed_at: t(DURING),
                    }]
                );
            }
        }
    }
}

#[test]
fn a_subscription_takes_no_coupon_for_another_plan_or_currency() {
    let sub = given(&history(Some(SubscriptionStatus::Active)));
    let mut other_plan = coupon_terms();
    other_plan.plan_ids = vec!["plan_pro".to_owned()];
    assert!(matches!(
        sub.decide(apply(other_plan, DURING)),
        Err(DomainError::CouponNotApplicable(_))
    ));
    let mut yen = coupon_terms();
    yen.off = CouponOff::Amount {
        amount_off: dec("500"),
        currency: jpy(),
    };
    assert!(matches!(
        sub.decide(apply(yen, DURING)),
        Err(DomainError::CouponNotApplicable(_))
    ));
}

#[test]
fn activation_and_renewals_carry_the_discount_and_count_its_periods() {
    let mut sub = given(&[created(), discount_applied(Some(2))]);
    let events = run(
        &mut sub,
        SubscriptionCommand::Activate {
            at: t(ACTIVATED),
            now: t(ACTIVATED),
        },
    )
    .unwrap();
    let expected = Some(AppliedDiscount {
        coupon_id: "cpn_1".to_owned(),
        code: "WELCOME20".to_owned(),
        off: percent("20"),
    });
    assert!(matches!(
        &events[0],
        SubscriptionEvent::SubscriptionActivated { discount, .. } if *discount == expected
    ));
    assert_eq!(sub.discount.as_ref().unwrap().periods_left, Some(1));
    let events = run(&mut sub, SubscriptionCommand::Renew { at: t(FIRST_END) }).unwrap();
    assert!(matches!(
        &events[0],
        SubscriptionEvent::PeriodRenewed { discount, .. } if *discount == expected
    ));
    // Two invoiced periods: the discount is used up.
    assert_eq!(sub.discount, None);
    let events = run(
        &mut sub,
        SubscriptionCommand::Renew {
            at: t("2025-03-31T10:00:00Z"),
        },
    )
    .unwrap();
    assert!(matches!(
        &events[0],
        SubscriptionEvent::PeriodRenewed { discount: None, .. }
    ));
}

#[test]
fn a_trial_invoices_nothing_so_it_counts_no_period() {
    let mut sub = given(&[created(), discount_applied(Some(1)), trial_started()]);
    run(&mut sub, SubscriptionCommand::EndTrial { at: t(TRIAL_END) }).unwrap();
    // The first invoice (at the trial's end) took the one period.
    assert_eq!(sub.discount, None);
    let mut sub = given(&[created(), trial_started(), discount_applied(Some(1))]);
    assert_eq!(sub.discount.as_ref().unwrap().periods_left, Some(1));
    let events = run(&mut sub, SubscriptionCommand::EndTrial { at: t(TRIAL_END) }).unwrap();
    assert!(matches!(
        &events[1],
        SubscriptionEvent::SubscriptionActivated {
            discount: Some(_),
            ..
        }
    ));
}

#[test]
fn a_forever_discount_never_runs_out() {
    let mut sub = given(&[created(), discount_applied(None), activated()]);
    for month in ["2025-02-28", "2025-03-31", "2025-04-30", "2025-05-31"] {
        let events = run(
            &mut sub,
            SubscriptionCommand::Renew {
                at: t(&format!("{month}T10:00:00Z")),
            },
        )
        .unwrap();
        assert!(matches!(
            &events[0],
            SubscriptionEvent::PeriodRenewed {
                discount: Some(_),
                ..
            }
        ));
    }
    assert_eq!(sub.discount.as_ref().unwrap().periods_left, None);
}

#[test]
fn a_new_coupon_replaces_the_discount_and_old_events_read_without_one() {
    let mut sub = given(&[created(), discount_applied(Some(1))]);
    let mut other = coupon_terms();
    other.code = "FOREVER5".to_owned();
    other.off = amount("5.00");
    other.duration = CouponDuration::Forever;
    other.duration_in_periods = None;
    run(&mut sub, apply(other, DURING)).unwrap();
    let d = sub.discount.as_ref().unwrap();
    assert_eq!((d.code.as_str(), d.periods_left), ("FOREVER5", None));
    // Events stored before coupons existed have no `discount` field.
    let old = serde_json::json!({"PeriodRenewed": {
        "closed_period": {"start": "2025-01-31T10:00:00Z", "end": "2025-02-28T10:00:00Z"},
        "new_period": {"start": "2025-02-28T10:00:00Z", "end": "2025-03-31T10:00:00Z"},
        "renewed_at": "2025-02-28T10:00:00Z"}});
    let event: SubscriptionEvent = serde_json::from_value(old).unwrap();
    assert!(matches!(
        event,
        SubscriptionEvent::PeriodRenewed { discount: None, .. }
    ));
    let no_discount = serde_json::to_value(&event).unwrap();
    assert!(no_discount["PeriodRenewed"].get("discount").is_none());
}

// ---------- the discount line ----------

fn line(kind: LineKind, quantity: &str, unit_price: &str) -> NewLine {
    NewLine {
        description: format!("{kind:?}"),
        quantity: dec(quantity),
        unit_price: dec(unit_price),
        kind,
        period: None,
        tax_rate_ids: vec![],
    }
}

fn applied(off: CouponOff) -> AppliedDiscount {
    AppliedDiscount {
        coupon_id: "cpn_1".to_owned(),
        code: "WELCOME20".to_owned(),
        off,
    }
}

#[test]
fn percent_off_rounds_half_away_from_zero() {
    // 33.33 × 15% = 4.9995 → 5.00
    assert_eq!(
        discount_amount(&percent("15"), dec("33.33"), eur()),
        dec("-5.00")
    );
    // 0.05 × 50% = 0.025 → 0.03
    assert_eq!(
        discount_amount(&percent("50"), dec("0.05"), eur()),
        dec("-0.03")
    );
    assert_eq!(
        discount_amount(&percent("100"), dec("19.99"), eur()),
        dec("-19.99")
    );
    // JPY has no minor unit: 999 × 12.5% = 124.875 → 125.
    assert_eq!(
        discount_amount(&percent("12.5"), dec("999"), jpy()),
        dec("-125")
    );
}

#[test]
fn an_amount_off_never_takes_more_than_the_lines() {
    assert_eq!(
        discount_amount(&amount("5.00"), dec("12.00"), eur()),
        dec("-5.00")
    );
    assert_eq!(
        discount_amount(&amount("50.00"), dec("12.00"), eur()),
        dec("-12.00")
    );
    assert_eq!(
        discount_amount(&amount("5.00"), dec("0"), eur()),
        dec("0.00")
    );
    assert_eq!(
        discount_amount(&amount("5.00"), dec("-3.00"), eur()),
        dec("0.00")
    );
}

#[test]
fn the_discount_line_covers_recurring_usage_and_proration_lines_only() {
    let lines = vec![
        line(LineKind::Recurring, "1", "10.00"),
        line(LineKind::Usage, "1000", "0.002"),
        line(LineKind::Proration, "1", "-4.00"),
        line(LineKind::Manual, "1", "100.00"),
    ];
    // 10.00 + 2.00 − 4.00 = 8.00 covered; 25% → 2.00.
    let d = discount_line(&applied(percent("25")), &lines, eur()).unwrap();
    assert_eq!(d.kind, LineKind::Discount);
    assert_eq!((d.quantity, d.unit_price), (dec("1"), dec("-2.00")));
    // Nothing covered: no line.
    let manual_only = vec![line(LineKind::Manual, "1", "100.00")];
    assert_eq!(
        discount_line(&applied(percent("25")), &manual_only, eur()),
        None
    );
}

fn draft(lines: Vec<NewLine>) -> Result<Invoice, DomainError> {
    let mut invoice = Invoice::default();
    let events = invoice.decide(InvoiceCommand::Create {
        invoice_id: "inv_1".to_owned(),
        customer_id: "cus_1".to_owned(),
        currency: eur(),
        subscription_id: Some("sub_1".to_owned()),
        billing_period: None,
        due_days: None,
        lines,
        at: t(DURING),
    })?;
    for e in &events {
        invoice.evolve(e);
    }
    Ok(invoice)
}

#[test]
fn an_invoice_refuses_a_discount_above_its_lines_or_a_second_one() {
    let base = line(LineKind::Recurring, "1", "10.00");
    let too_much = line(LineKind::Discount, "1", "-10.01");
    let err = draft(vec![base.clone(), too_much]).unwrap_err();
    assert_eq!(validation_field(err), "lines[1].kind");
    let positive = line(LineKind::Discount, "1", "1.00");
    assert_eq!(
        validation_field(draft(vec![base.clone(), positive]).unwrap_err()),
        "lines[1].kind"
    );
    let d = line(LineKind::Discount, "1", "-2.00");
    assert_eq!(
        validation_field(draft(vec![base.clone(), d.clone(), d.clone()]).unwrap_err()),
        "lines[2].kind"
    );
    // A later credit may not leave the discount uncovered.
    let mut invoice = draft(vec![base.clone(), d.clone()]).unwrap();
    let credit = line(LineKind::Proration, "1", "-9.00");
    let err = invoice
        .decide(InvoiceCommand::AddLine {
            line: credit,
            at: t(DURING),
        })
        .unwrap_err();
    assert_eq!(validation_field(err), "kind");
    // A discount of all of it is fine; the totals say what it took.
    invoice = draft(vec![base, line(LineKind::Manual, "1", "5.00"), d]).unwrap();
    assert_eq!(
        (invoice.subtotal, invoice.discount, invoice.total),
        (dec("15.00"), dec("2.00"), dec("13.00"))
    );
    let events = invoice
        .decide(InvoiceCommand::Issue {
            number: 1,
            customer: None,
            available_credit: dec("0"),
            at: t(DURING),
            taxes: Default::default(),
        })
        .unwrap();
    for e in &events {
        invoice.evolve(e);
    }
    assert_eq!(
        (
            invoice.subtotal,
            invoice.discount,
            invoice.total,
            invoice.amount_due
        ),
        (dec("15.00"), dec("2.00"), dec("13.00"), dec("13.00"))
    );
}
