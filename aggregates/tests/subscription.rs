//! Given events / when command / then events or error, for every (status,
//! command) pair of the subscription state machine, every rejection, proration
//! figures to the cent, the past-due invoice that `ClearPastDue` answers to,
//! prorations that wait for the renewal, and period renewal across short
//! months with what the renewal invoice needs.

mod support;

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use cqrs_es::test::TestFramework;
use cqrs_es::DomainEvent;
use support::*;
use tally_aggregates::period::period_at;
use tally_aggregates::AggregateKind;
use tally_aggregates::{
    CancelWhen, Currency, DomainError, Interval, MeterPricing, MeterTerms, Period,
    ProrationFigures, ProrationMode, ResetCadence, Subscription, SubscriptionCommand,
    SubscriptionEvent, SubscriptionStatus, SuspendReason, Suspension, EVENT_VERSION,
};

// ---------------------------------------------------------------------------
// The transition matrix
// ---------------------------------------------------------------------------

#[derive(Debug, PartialEq)]
enum Outcome {
    /// Exactly these events, after which the status is this.
    Then(&'static [&'static str], SubscriptionStatus),
    /// Accepted, nothing happens.
    NoOp,
    Invalid,
    NotFound,
    AlreadyExists,
}

/// Every command name; `expected` below fails to compile when a command is
/// added, and the matrix test fails when a sample for it is missing.
const COMMAND_NAMES: [&str; 13] = [
    "create",
    "activate",
    "change_plan",
    "change_seats",
    "suspend",
    "resume",
    "mark_past_due",
    "clear_past_due",
    "cancel",
    "renew",
    "end_trial",
    "apply_discount",
    "remove_discount",
];

/// One valid-looking command of each kind (two for cancel: now and period end).
fn sample_commands() -> Vec<SubscriptionCommand> {
    vec![
        SubscriptionCommand::Create {
            subscription_id: "sub_1".to_owned(),
            customer_id: "cus_1".to_owned(),
            plan: basic(),
            seats: None,
            trial_days: None,
            at: t(CREATED),
            tax_rate_ids: vec![],
        },
        SubscriptionCommand::Activate {
            at: t(DURING),
            now: t(DURING),
        },
        SubscriptionCommand::ChangePlan {
            plan: pro(),
            proration: ProrationMode::Prorate,
            at: t(DURING),
        },
        SubscriptionCommand::ChangeSeats {
            seats: 3,
            proration: ProrationMode::Prorate,
            at: t(DURING),
        },
        SubscriptionCommand::Suspend {
            reason: SuspendReason::Manual {
                note: Some("fraud check".to_owned()),
            },
            at: t(DURING),
        },
        SubscriptionCommand::Resume { at: t(DURING) },
        SubscriptionCommand::MarkPastDue {
            invoice_id: "inv_2".to_owned(),
            at: t(DURING),
        },
        // The invoice that made the past-due fixture past due.
        SubscriptionCommand::ClearPastDue {
            invoice_id: "inv_1".to_owned(),
            at: t(DURING),
        },
        SubscriptionCommand::Cancel {
            when: CancelWhen::Now,
            reason: None,
            at: t(DURING),
        },
        SubscriptionCommand::Cancel {
            when: CancelWhen::PeriodEnd,
            reason: None,
            at: t(DURING),
        },
        SubscriptionCommand::Renew {
            at: t("2025-03-01T00:00:00Z"),
        },
        SubscriptionCommand::EndTrial { at: t(DURING) },
        SubscriptionCommand::ApplyDiscount {
            coupon: tally_aggregates::CouponRef {
                coupon_id: "cpn_1".to_owned(),
                terms: tally_aggregates::CouponTerms {
                    code: "TEN".to_owned(),
                    name: None,
                    off: tally_aggregates::CouponOff::Percent {
                        percent_off: dec("10"),
                    },
                    duration: tally_aggregates::CouponDuration::Forever,
                    duration_in_periods: None,
                    max_redemptions: None,
                    redeem_by: None,
                    plan_ids: vec![],
                },
            },
            at: t(DURING),
        },
        // The fixtures have no discount: removing none changes nothing.
        SubscriptionCommand::RemoveDiscount { at: t(DURING) },
    ]
}

/// The state machine as a table.
fn expected(status: Option<SubscriptionStatus>, command: &SubscriptionCommand) -> Outcome {
    use Outcome::{AlreadyExists, Invalid, NoOp, NotFound, Then};
    use SubscriptionCommand as C;
    use SubscriptionStatus::{Active, Canceled, Draft, PastDue, Suspended, Trialing};
    let Some(status) = status else {
        return match command {
            C::Create { .. } => Then(&["SubscriptionCreated"], Draft),
            C::Activate { .. }
            | C::ChangePlan { .. }
            | C::ChangeSeats { .. }
            | C::Suspend { .. }
            | C::Resume { .. }
            | C::MarkPastDue { .. }
            | C::ClearPastDue { .. }
            | C::Cancel { .. }
            | C::Renew { .. }
            | C::EndTrial { .. }
            | C::ApplyDiscount { .. }
            | C::RemoveDiscount { .. } => NotFound,
        };
    };
    match command {
        C::Create { .. } => AlreadyExists,
        C::Activate { .. } => match status {
            Draft => Then(&["SubscriptionActivated"], Active),
            Trialing | Active | PastDue | Suspended | Canceled => Invalid,
        },
        // During a trial without proration: nothing was billed.
        C::ChangePlan { .. } => match status {
            Trialing | Active => Then(&["PlanChanged"], status),
            Draft | PastDue | Suspended | Canceled => Invalid,
        },
        C::ChangeSeats { .. } => match status {
            Trialing | Active => Then(&["SeatsChanged"], status),
            Draft | PastDue | Suspended | Canceled => Invalid,
        },
        C::Suspend { .. } => match status {
            Trialing | Active | PastDue => Then(&["SubscriptionSuspended"], Suspended),
            Suspended => NoOp,
            Draft | Canceled => Invalid,
        },
        C::Resume { .. } => match status {
            Suspended => Then(&["SubscriptionResumed"], Active),
            Draft | Trialing | Active | PastDue | Canceled => Invalid,
        },
        C::MarkPastDue { .. } => match status {
            Active => Then(&["SubscriptionPastDue"], PastDue),
            PastDue => NoOp,
            Draft | Trialing | Suspended | Canceled => Invalid,
        },
        C::ClearPastDue { .. } => match status {
            PastDue => Then(&["PastDueCleared"], Active),
            // Paid on time, during a trial, or suspended (only Resume lifts
            // a suspension).
            Trialing | Active | Suspended => NoOp,
            Draft | Canceled => Invalid,
        },
        C::Cancel {
            when: CancelWhen::Now,
            ..
        } => match status {
            Draft | Trialing | Active | PastDue | Suspended => {
                Then(&["SubscriptionCanceled"], Canceled)
            }
            Canceled => Invalid,
        },
        C::Cancel {
            when: CancelWhen::PeriodEnd,
            ..
        } => match status {
            Draft => Then(&["SubscriptionCanceled"], Canceled),
            // A trial's term is the trial: canceled when it ends.
            Trialing | Active | PastDue | Suspended => Then(&["CancellationScheduled"], status),
            Canceled => Invalid,
        },
        C::Renew { .. } => match status {
            Active | PastDue | Suspended => Then(&["PeriodRenewed"], status),
            Draft | Trialing | Canceled => Invalid,
        },
        C::EndTrial { .. } => match status {
            Trialing => Then(&["TrialEnded", "SubscriptionActivated"], Active),
            Draft | Active | PastDue | Suspended | Canceled => Invalid,
        },
        // A discount waits for the invoices to come, in any status but the last.
        C::ApplyDiscount { .. } => match status {
            Draft | Trialing | Active | PastDue | Suspended => Then(&["DiscountApplied"], status),
            Canceled => Invalid,
        },
        C::RemoveDiscount { .. } => match status {
            Draft | Trialing | Active | PastDue | Suspended => NoOp,
            Canceled => Invalid,
        },
    }
}

#[test]
fn every_status_and_command_pair_is_decided_as_the_table_says() {
    let names: BTreeSet<&str> = sample_commands().iter().map(|c| c.name()).collect();
    assert_eq!(names, COMMAND_NAMES.into_iter().collect());

    let statuses = std::iter::once(None).chain(SubscriptionStatus::ALL.map(Some));
    let mut pairs = 0;
    for status in statuses {
        for command in sample_commands() {
            pairs += 1;
            let before = given(&history(status));
            assert_eq!(before.status, status, "fixture for {status:?}");
            let name = command.name();
            let want = expected(status, &command);
            let context = format!("{status:?} × {command:?}");
            match (want, before.decide(command)) {
                (Outcome::Then(names, new_status), Ok(events)) => {
                    let got: Vec<&str> = events.iter().map(|e| e.name()).collect();
                    assert_eq!(got, names, "{context}");
                    let mut after = before.clone();
                    for event in &events {
                        after.evolve(event);
                    }
                    assert_eq!(after.status, Some(new_status), "{context}");
                }
                (Outcome::NoOp, Ok(events)) => assert_eq!(events, vec![], "{context}"),
                (
                    Outcome::Invalid,
                    Err(DomainError::InvalidTransition {
                        aggregate,
                        from,
                        command,
                    }),
                ) => {
                    assert_eq!(aggregate, AggregateKind::Subscription, "{context}");
                    assert_eq!(Some(from.as_str()), status.map(|s| s.as_str()), "{context}");
                    assert_eq!(command, name, "{context}");
                }
                (Outcome::NotFound, Err(DomainError::NotFound(AggregateKind::Subscription)))
                | (
                    Outcome::AlreadyExists,
                    Err(DomainError::AlreadyExists(AggregateKind::Subscription)),
                ) => {}
                (want, got) => panic!("{context}: expected {want:?}, got {got:?}"),
            }
        }
    }
    assert_eq!(pairs, 7 * 14);
}

#[test]
fn invalid_transition_message_names_the_state_and_the_command() {
    let err = given(&history(Some(SubscriptionStatus::PastDue)))
        .decide(SubscriptionCommand::ChangeSeats {
            seats: 2,
            proration: ProrationMode::None,
            at: t(DURING),
        })
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "cannot change_seats a past_due subscription"
    );
}

// ---------------------------------------------------------------------------
// Create
// ---------------------------------------------------------------------------

fn create(
    plan: tally_aggregates::PlanRef,
    customer_id: &str,
    seats: Option<u32>,
) -> SubscriptionCommand {
    SubscriptionCommand::Create {
        subscription_id: "sub_1".to_owned(),
        customer_id: customer_id.to_owned(),
        plan,
        seats,
        trial_days: None,
        at: t(CREATED),
        tax_rate_ids: vec![],
    }
}

#[test]
fn create_defaults_seats_to_the_plan_minimum() {
    let plan = plan_ref("plan_team", terms("team", "10.00", "5.00", 3, 10));
    let events = Subscription::default()
        .decide(create(plan.clone(), "cus_1", None))
        .unwrap();
    assert_eq!(events, vec![created_on(plan, 3)]);
    let subscription = given(&events);
    assert_eq!(subscription.status, Some(SubscriptionStatus::Draft));
    assert_eq!(subscription.seats, 3);
    assert_eq!(subscription.id.as_deref(), Some("sub_1"));
    assert_eq!(subscription.customer_id, "cus_1");
    assert_eq!(subscription.plan_id, "plan_team");
    assert_eq!(subscription.created_at, Some(t(CREATED)));
    assert_eq!(subscription.current_period, None);
    assert_eq!(subscription.recurring_amount(), Some(dec("25.00")));
}

#[test]
fn create_with_explicit_seats_at_both_limits() {
    let plan = plan_ref("plan_team", terms("team", "0", "5.00", 2, 4));
    for seats in [2, 4] {
        let events = Subscription::default()
            .decide(create(plan.clone(), "cus_1", Some(seats)))
            .unwrap();
        assert_eq!(events, vec![created_on(plan.clone(), seats)]);
    }
}

#[test]
fn create_rejects_seats_outside_the_plan_limits() {
    let plan = plan_ref("plan_team", terms("team", "0", "5.00", 2, 4));
    for seats in [0, 1, 5, u32::MAX] {
        assert_eq!(
            Subscription::default().decide(create(plan.clone(), "cus_1", Some(seats))),
            Err(DomainError::SeatLimit {
                seats,
                min: 2,
                max: 4
            })
        );
    }
}

#[test]
fn create_rejects_an_archived_plan() {
    let mut plan = basic();
    plan.active = false;
    let err = Subscription::default()
        .decide(create(plan, "cus_1", None))
        .unwrap_err();
    assert!(
        matches!(err, DomainError::Validation { ref field, .. } if field == "plan_id"),
        "{err:?}"
    );
}

#[test]
fn create_rejects_invalid_plan_terms() {
    let plan = plan_ref("plan_bad", terms("bad", "-1.00", "0", 1, 10));
    let err = Subscription::default()
        .decide(create(plan, "cus_1", None))
        .unwrap_err();
    assert!(
        matches!(err, DomainError::Validation { ref field, .. } if field == "base_price"),
        "{err:?}"
    );
}

#[test]
fn create_rejects_bad_customer_ids() {
    let too_long = "c".repeat(129);
    for customer_id in ["", "   ", too_long.as_str(), "cus\n1"] {
        let err = Subscription::default()
            .decide(create(basic(), customer_id, None))
            .unwrap_err();
        assert!(
            matches!(err, DomainError::Validation { ref field, .. } if field == "customer_id"),
            "{customer_id:?}: {err:?}"
        );
    }
    let longest = "c".repeat(128);
    assert!(Subscription::default()
        .decide(create(basic(), &longest, None))
        .is_ok());
}

#[test]
fn create_rejects_bad_subscription_ids() {
    for subscription_id in ["", "sub 1", &"s".repeat(65)] {
        let err = Subscription::default()
            .decide(SubscriptionCommand::Create {
                subscription_id: subscription_id.to_owned(),
                customer_id: "cus_1".to_owned(),
                plan: basic(),
                seats: None,
                trial_days: None,
                at: t(CREATED),
                tax_rate_ids: vec![],
            })
            .unwrap_err();
        assert!(
            matches!(err, DomainError::Validation { ref field, .. } if field == "subscription_id"),
            "{subscription_id:?}: {err:?}"
        );
    }
}

// ---------------------------------------------------------------------------
// Activate
// ---------------------------------------------------------------------------

#[test]
fn activate_anchors_billing_and_opens_the_first_period() {
    let mut subscription = given(&history(Some(SubscriptionStatus::Draft)));
    let events = run(
        &mut subscription,
        SubscriptionCommand::Activate {
            at: t(ACTIVATED),
            now: t(ACTIVATED),
        },
    )
    .unwrap();
    let first = Period {
        start: t(ACTIVATED),
        end: t(FIRST_END),
    };
    assert_eq!(
        events,
        vec![SubscriptionEvent::SubscriptionActivated {
            anchor: t(ACTIVATED),
            period: first,
            activated_at: t(ACTIVATED),
            plan: Some(subscription.terms().clone()),
            seats: Some(subscription.seats),
            discount: None,
        }]
    );
    assert_eq!(subscription.status, Some(SubscriptionStatus::Active));
    assert_eq!(subscription.anchor, Some(t(ACTIVATED)));
    assert_eq!(subscription.current_period, Some(first));
    assert_eq!(subscription.activated_at, Some(t(ACTIVATED)));
}

#[test]
fn activate_on_a_yearly_plan_opens_a_year() {
    let mut yearly = terms("annual", "100.00", "0", 1, 10);
    yearly.interval = Interval::Year;
    let mut subscription = given(&[created_on(plan_ref("plan_annual", yearly), 1)]);
    run(
        &mut subscription,
        SubscriptionCommand::Activate {
            at: t("2028-02-29T00:00:00Z"),
            now: t("2028-02-29T00:00:00Z"),
        },
    )
    .unwrap();
    assert_eq!(
        subscription.current_period,
        Some(Period {
            start: t("2028-02-29T00:00:00Z"),
            end: t("2029-02-28T00:00:00Z"),
        })
    );
}

/// Issue 19: an activation dated year 0 billed thousands of periods, one
/// dated 9999-12-31 wrote a period end in year 10000. `at` may lie one
/// interval before now (a single catch-up period) and a year ahead.
#[test]
fn activation_time_is_at_most_one_interval_back_and_one_year_ahead() {
    let now = t("2026-03-31T10:00:00Z");
    let draft = given(&history(Some(SubscriptionStatus::Draft)));
    let activate = |at: DateTime<Utc>| SubscriptionCommand::Activate { at, now };
    for ok in [now, t("2026-02-28T10:00:00Z"), t("2027-03-31T10:00:00Z")] {
        assert!(draft.decide(activate(ok)).is_ok(), "{ok}");
    }
    for bad in [
        t("0000-01-01T00:00:00Z"),
        t("2026-02-28T09:59:59Z"),
        t("2027-03-31T10:00:01Z"),
        t("9999-12-31T23:59:59Z"),
    ] {
        let err = draft.decide(activate(bad)).unwrap_err();
        assert!(
            matches!(err, DomainError::Validation { ref field, .. } if field == "at"),
            "{bad}: {err:?}"
        );
    }
    // A yearly plan may be activated up to a year back.
    let mut yearly = terms("annual", "100.00", "0", 1, 10);
    yearly.interval = Interval::Year;
    let draft = given(&[created_on(plan_ref("plan_annual", yearly), 1)]);
    assert!(draft.decide(activate(t("2025-03-31T10:00:00Z"))).is_ok());
    assert!(draft.decide(activate(t("2025-03-31T09:59:59Z"))).is_err());
}

// ---------------------------------------------------------------------------
// Change plan
// ---------------------------------------------------------------------------

fn change_plan(plan: tally_aggregates::PlanRef) -> SubscriptionCommand {
    SubscriptionCommand::ChangePlan {
        plan,
        proration: ProrationMode::None,
        at: t(DURING),
    }
}

fn active() -> Subscription {
    given(&history(Some(SubscriptionStatus::Active)))
}

fn assert_validation(result: Result<Vec<SubscriptionEvent>, DomainError>, want_field: &str) {
    match result {
        Err(DomainError::Validation { field, .. }) => assert_eq!(field, want_field),
        other => panic!("expected a validation error on {want_field}, got {other:?}"),
    }
}

#[test]
fn change_plan_without_proration_swaps_the_terms() {
    let mut subscription = active();
    let events = run(&mut subscription, change_plan(pro())).unwrap();
    assert_eq!(
        events,
        vec![SubscriptionEvent::PlanChanged {
            from_plan_id: "plan_basic".to_owned(),
            to_plan_id: "plan_pro".to_owned(),
            plan: pro().terms,
            proration: None,
            changed_at: t(DURING),
        }]
    );
    assert_eq!(subscription.plan_id, "plan_pro");
    assert_eq!(subscription.plan, Some(pro().terms));
    assert_eq!(subscription.status, Some(SubscriptionStatus::Active));
}

#[test]
fn change_plan_rejects_an_archived_plan() {
    let mut plan = pro();
    plan.active = false;
    assert_validation(active().decide(change_plan(plan)), "plan_id");
}

#[test]
fn change_plan_rejects_the_same_plan() {
    assert_validation(active().decide(change_plan(basic())), "plan_id");
}

#[test]
fn change_plan_rejects_another_currency() {
    let mut usd = pro();
    usd.terms.currency = Currency::parse("USD").unwrap();
    assert_validation(active().decide(change_plan(usd)), "plan_id");
}

#[test]
fn change_plan_rejects_another_interval() {
    let mut yearly = pro();
    yearly.terms.interval = Interval::Year;
    assert_validation(active().decide(change_plan(yearly)), "plan_id");
}

#[test]
fn change_plan_rejects_invalid_terms() {
    let mut bad = pro();
    bad.terms.seats.min = 0;
    assert_validation(active().decide(change_plan(bad)), "seats.min");
}

#[test]
fn change_plan_rejects_a_plan_the_current_seats_do_not_fit() {
    let subscription = given(&[created_on(basic(), 5), activated()]);
    let small = plan_ref("plan_small", terms("small", "5.00", "0", 1, 3));
    assert_eq!(
        subscription.decide(change_plan(small)),
        Err(DomainError::SeatLimit {
            seats: 5,
            min: 1,
            max: 3
        })
    );
    let big = plan_ref("plan_big", terms("big", "5.00", "0", 6, 100));
    assert_eq!(
        subscription.decide(change_plan(big)),
        Err(DomainError::SeatLimit {
            seats: 5,
            min: 6,
            max: 100
        })
    );
}

// ---------------------------------------------------------------------------
// Change seats
// ---------------------------------------------------------------------------

#[test]
fn change_seats_without_proration() {
    let mut subscription = active();
    let events = run(
        &mut subscription,
        SubscriptionCommand::ChangeSeats {
            seats: 10,
            proration: ProrationMode::None,
            at: t(DURING),
        },
    )
    .unwrap();
    assert_eq!(
        events,
        vec![SubscriptionEvent::SeatsChanged {
            from: 1,
            to: 10,
            proration: None,
            changed_at: t(DURING),
        }]
    );
    assert_eq!(subscription.seats, 10);
}

#[test]
fn change_seats_outside_the_limits_is_a_seat_limit_error() {
    for seats in [0, 11, u32::MAX] {
        assert_eq!(
            active().decide(SubscriptionCommand::ChangeSeats {
                seats,
                proration: ProrationMode::Prorate,
                at: t(DURING),
            }),
            Err(DomainError::SeatLimit {
                seats,
                min: 1,
                max: 10
            })
        );
    }
}

#[test]
fn change_seats_to_the_same_count_changes_nothing() {
    assert_eq!(
        active().decide(SubscriptionCommand::ChangeSeats {
            seats: 1,
            proration: ProrationMode::Prorate,
            at: t(DURING),
        }),
        Ok(vec![])
    );
}

// ---------------------------------------------------------------------------
// Suspend, resume, past due
// ---------------------------------------------------------------------------

#[test]
fn suspend_for_quota_records_the_meter_and_resume_clears_it() {
    let mut subscription = active();
    let reason = SuspendReason::QuotaExceeded {
        meter: "api.calls".to_owned(),
    };
    let events = run(
        &mut subscription,
        SubscriptionCommand::Suspend {
            reason: reason.clone(),
            at: t(DURING),
        },
    )
    .unwrap();
    assert_eq!(
        events,
        vec![SubscriptionEvent::SubscriptionSuspended {
            reason: reason.clone(),
            suspended_at: t(DURING),
        }]
    );
    assert_eq!(subscription.status, Some(SubscriptionStatus::Suspended));
    assert_eq!(
        subscription.suspension,
        Some(Suspension {
            reason,
            since: t(DURING)
        })
    );

    // A second suspension is a no-op and keeps the first reason.
    assert_eq!(
        subscription.decide(SubscriptionCommand::Suspend {
            reason: SuspendReason::NonPayment,
            at: t(DURING),
        }),
        Ok(vec![])
    );

    let events = run(
        &mut subscription,
        SubscriptionCommand::Resume {
            at: t("2025-02-12T00:00:00Z"),
        },
    )
    .unwrap();
    assert_eq!(
        events,
        vec![SubscriptionEvent::SubscriptionResumed {
            resumed_at: t("2025-02-12T00:00:00Z")
        }]
    );
    assert_eq!(subscription.status, Some(SubscriptionStatus::Active));
    assert_eq!(subscription.suspension, None);
}

#[test]
fn suspend_rejects_a_bad_meter_key_and_an_overlong_note() {
    assert_validation(
        active().decide(SubscriptionCommand::Suspend {
            reason: SuspendReason::QuotaExceeded {
                meter: "API Calls".to_owned(),
            },
            at: t(DURING),
        }),
        "meter",
    );
    assert_validation(
        active().decide(SubscriptionCommand::Suspend {
            reason: SuspendReason::Manual {
                note: Some("n".repeat(1001)),
            },
            at: t(DURING),
        }),
        "note",
    );
}

#[test]
fn past_due_then_suspended_for_non_payment_then_resumed_is_active() {
    let mut subscription = active();
    let events = run(
        &mut subscription,
        SubscriptionCommand::MarkPastDue {
            invoice_id: "inv_9".to_owned(),
            at: t(DURING),
        },
    )
    .unwrap();
    assert_eq!(
        events,
        vec![SubscriptionEvent::SubscriptionPastDue {
            invoice_id: "inv_9".to_owned(),
            at: t(DURING),
        }]
    );
    assert_eq!(subscription.status, Some(SubscriptionStatus::PastDue));
    run(
        &mut subscription,
        SubscriptionCommand::Suspend {
            reason: SuspendReason::NonPayment,
            at: t(DURING),
        },
    )
    .unwrap();
    run(
        &mut subscription,
        SubscriptionCommand::Resume { at: t(DURING) },
    )
    .unwrap();
    assert_eq!(subscription.status, Some(SubscriptionStatus::Active));
}

#[test]
fn mark_past_due_rejects_an_empty_invoice_id() {
    assert_validation(
        active().decide(SubscriptionCommand::MarkPastDue {
            invoice_id: String::new(),
            at: t(DURING),
        }),
        "invoice_id",
    );
}

#[test]
fn mark_past_due_remembers_the_first_unpaid_invoice() {
    let mut subscription = active();
    assert_eq!(subscription.past_due_invoice, None);
    run(
        &mut subscription,
        SubscriptionCommand::MarkPastDue {
            invoice_id: "inv_9".to_owned(),
            at: t(DURING),
        },
    )
    .unwrap();
    assert_eq!(subscription.past_due_invoice.as_deref(), Some("inv_9"));
    // A second unpaid invoice is a no-op and does not replace the first.
    let events = run(
        &mut subscription,
        SubscriptionCommand::MarkPastDue {
            invoice_id: "inv_10".to_owned(),
            at: t(DURING),
        },
    )
    .unwrap();
    assert_eq!(events, vec![]);
    assert_eq!(subscription.past_due_invoice.as_deref(), Some("inv_9"));
}

// ---------------------------------------------------------------------------
// Clear past due
// ---------------------------------------------------------------------------

fn clear_past_due(invoice_id: &str) -> SubscriptionCommand {
    SubscriptionCommand::ClearPastDue {
        invoice_id: invoice_id.to_owned(),
        at: t("2025-02-12T00:00:00Z"),
    }
}

#[test]
fn paying_the_invoice_that_made_it_past_due_makes_it_active() {
    let mut subscription = given(&history(Some(SubscriptionStatus::PastDue)));
    assert_eq!(subscription.past_due_invoice.as_deref(), Some("inv_1"));
    let events = run(&mut subscription, clear_past_due("inv_1")).unwrap();
    assert_eq!(
        events,
        vec![SubscriptionEvent::PastDueCleared {
            invoice_id: "inv_1".to_owned(),
            at: t("2025-02-12T00:00:00Z"),
        }]
    );
    assert_eq!(subscription.status, Some(SubscriptionStatus::Active));
    assert_eq!(subscription.past_due_invoice, None);
    // A retried payment notification finds nothing left to clear.
    assert_eq!(subscription.decide(clear_past_due("inv_1")), Ok(vec![]));
}

#[test]
fn paying_another_invoice_keeps_it_past_due() {
    let mut subscription = given(&history(Some(SubscriptionStatus::PastDue)));
    let before = subscription.clone();
    assert_eq!(run(&mut subscription, clear_past_due("inv_2")), Ok(vec![]));
    assert_eq!(subscription, before);
    assert_eq!(subscription.status, Some(SubscriptionStatus::PastDue));
}

#[test]
fn clear_past_due_while_active_or_suspended_is_a_no_op() {
    for status in [SubscriptionStatus::Active, SubscriptionStatus::Suspended] {
        for invoice_id in ["inv_1", "inv_2"] {
            assert_eq!(
                given(&history(Some(status))).decide(clear_past_due(invoice_id)),
                Ok(vec![]),
                "{status:?} {invoice_id}"
            );
        }
    }
}

#[test]
fn a_suspension_outlives_the_payment_and_resume_forgets_the_invoice() {
    // Past due, then suspended for non-payment: the invoice is remembered.
    let mut subscription = given(&history(Some(SubscriptionStatus::PastDue)));
    run(
        &mut subscription,
        SubscriptionCommand::Suspend {
            reason: SuspendReason::NonPayment,
            at: t(DURING),
        },
    )
    .unwrap();
    assert_eq!(subscription.past_due_invoice.as_deref(), Some("inv_1"));
    // Paying it does not lift the suspension: that is Resume's job.
    assert_eq!(run(&mut subscription, clear_past_due("inv_1")), Ok(vec![]));
    assert_eq!(subscription.status, Some(SubscriptionStatus::Suspended));
    run(
        &mut subscription,
        SubscriptionCommand::Resume { at: t(DURING) },
    )
    .unwrap();
    assert_eq!(subscription.status, Some(SubscriptionStatus::Active));
    assert_eq!(subscription.past_due_invoice, None);
}

#[test]
fn cancel_forgets_the_past_due_invoice() {
    let mut subscription = given(&history(Some(SubscriptionStatus::PastDue)));
    run(
        &mut subscription,
        SubscriptionCommand::Cancel {
            when: CancelWhen::Now,
            reason: None,
            at: t(DURING),
        },
    )
    .unwrap();
    assert_eq!(subscription.past_due_invoice, None);
    assert_eq!(
        subscription.decide(clear_past_due("inv_1")),
        Err(DomainError::InvalidTransition {
            aggregate: AggregateKind::Subscription,
            from: "canceled".to_owned(),
            command: "clear_past_due",
        })
    );
}

#[test]
fn clear_past_due_rejects_a_bad_invoice_id_in_every_state_that_accepts_it() {
    for status in [
        SubscriptionStatus::Active,
        SubscriptionStatus::PastDue,
        SubscriptionStatus::Suspended,
    ] {
        for invoice_id in ["", "inv 1", &"i".repeat(65)] {
            assert_validation(
                given(&history(Some(status))).decide(clear_past_due(invoice_id)),
                "invoice_id",
            );
        }
    }
}

#[test]
fn clear_past_due_on_a_missing_or_draft_subscription() {
    assert_eq!(
        Subscription::default().decide(clear_past_due("inv_1")),
        Err(DomainError::NotFound(AggregateKind::Subscription))
    );
    assert_eq!(
        given(&history(Some(SubscriptionStatus::Draft))).decide(clear_past_due("inv_1")),
        Err(DomainError::InvalidTransition {
            aggregate: AggregateKind::Subscription,
            from: "draft".to_owned(),
            command: "clear_past_due",
        })
    );
}

// ---------------------------------------------------------------------------
// Cancel
// ---------------------------------------------------------------------------

#[test]
fn cancel_now_is_terminal_and_clears_the_suspension() {
    let mut subscription = given(&history(Some(SubscriptionStatus::Suspended)));
    let events = run(
        &mut subscription,
        SubscriptionCommand::Cancel {
            when: CancelWhen::Now,
            reason: Some("moved on".to_owned()),
            at: t(DURING),
        },
    )
    .unwrap();
    assert_eq!(
        events,
        vec![SubscriptionEvent::SubscriptionCanceled {
            reason: Some("moved on".to_owned()),
            canceled_at: t(DURING),
        }]
    );
    assert_eq!(subscription.status, Some(SubscriptionStatus::Canceled));
    assert_eq!(subscription.canceled_at, Some(t(DURING)));
    assert_eq!(subscription.cancel_reason.as_deref(), Some("moved on"));
    assert_eq!(subscription.suspension, None);
}

#[test]
fn cancel_at_period_end_on_a_draft_cancels_now() {
    let events = given(&history(Some(SubscriptionStatus::Draft)))
        .decide(SubscriptionCommand::Cancel {
            when: CancelWhen::PeriodEnd,
            reason: None,
            at: t(DURING),
        })
        .unwrap();
    assert_eq!(
        events,
        vec![SubscriptionEvent::SubscriptionCanceled {
            reason: None,
            canceled_at: t(DURING),
        }]
    );
}

#[test]
fn cancel_at_period_end_is_carried_out_by_the_renewal() {
    let mut subscription = active();
    let schedule = SubscriptionCommand::Cancel {
        when: CancelWhen::PeriodEnd,
        reason: Some("budget".to_owned()),
        at: t(DURING),
    };
    let events = run(&mut subscription, schedule.clone()).unwrap();
    assert_eq!(
        events,
        vec![SubscriptionEvent::CancellationScheduled {
            reason: Some("budget".to_owned()),
            cancel_at: t(FIRST_END),
            scheduled_at: t(DURING),
        }]
    );
    assert!(subscription.cancel_at_period_end);
    assert_eq!(subscription.status, Some(SubscriptionStatus::Active));

    // Scheduling again changes nothing.
    assert_eq!(subscription.decide(schedule), Ok(vec![]));

    // Not yet.
    assert_validation(
        subscription.decide(SubscriptionCommand::Renew {
            at: t("2025-02-28T09:59:59Z"),
        }),
        "at",
    );

    let events = run(
        &mut subscription,
        SubscriptionCommand::Renew {
            at: t("2025-03-02T00:00:00Z"),
        },
    )
    .unwrap();
    assert_eq!(
        events,
        vec![SubscriptionEvent::SubscriptionCanceled {
            reason: Some("budget".to_owned()),
            canceled_at: t(FIRST_END),
        }]
    );
    assert_eq!(subscription.status, Some(SubscriptionStatus::Canceled));
    assert!(!subscription.cancel_at_period_end);
}

#[test]
fn cancel_now_after_scheduling_cancels_now() {
    let mut subscription = active();
    run(
        &mut subscription,
        SubscriptionCommand::Cancel {
            when: CancelWhen::PeriodEnd,
            reason: None,
            at: t(DURING),
        },
    )
    .unwrap();
    let events = run(
        &mut subscription,
        SubscriptionCommand::Cancel {
            when: CancelWhen::Now,
            reason: Some("now please".to_owned()),
            at: t("2025-02-11T00:00:00Z"),
        },
    )
    .unwrap();
    assert_eq!(
        events,
        vec![SubscriptionEvent::SubscriptionCanceled {
            reason: Some("now please".to_owned()),
            canceled_at: t("2025-02-11T00:00:00Z"),
        }]
    );
}

#[test]
fn cancel_rejects_an_overlong_reason() {
    for when in [CancelWhen::Now, CancelWhen::PeriodEnd] {
        assert_validation(
            active().decide(SubscriptionCommand::Cancel {
                when,
                reason: Some("r".repeat(1001)),
                at: t(DURING),
            }),
            "reason",
        );
    }
}

// ---------------------------------------------------------------------------
// Renew
// ---------------------------------------------------------------------------

#[test]
fn renew_before_the_period_ends_is_rejected() {
    for status in [
        SubscriptionStatus::Active,
        SubscriptionStatus::PastDue,
        SubscriptionStatus::Suspended,
    ] {
        assert_validation(
            given(&history(Some(status))).decide(SubscriptionCommand::Renew { at: t(DURING) }),
            "at",
        );
    }
}

/// The renewal of a fixture subscription still on the basic plan with one seat
/// and no prorated change.
fn renewed_on_basic(closed: Period, new: Period, at: DateTime<Utc>) -> SubscriptionEvent {
    SubscriptionEvent::PeriodRenewed {
        closed_period: closed,
        new_period: new,
        renewed_at: at,
        plan_id: Some("plan_basic".to_owned()),
        plan: Some(basic().terms),
        seats: Some(1),
        prorations: vec![],
        discount: None,
    }
}

#[test]
fn renew_exactly_at_the_period_end_closes_the_rating_window() {
    let mut subscription = active();
    let events = run(
        &mut subscription,
        SubscriptionCommand::Renew { at: t(FIRST_END) },
    )
    .unwrap();
    let closed = Period {
        start: t(ACTIVATED),
        end: t(FIRST_END),
    };
    let next = Period {
        start: t(FIRST_END),
        end: t("2025-03-31T10:00:00Z"),
    };
    assert_eq!(
        events,
        vec![SubscriptionEvent::PeriodRenewed {
            closed_period: closed,
            new_period: next,
            renewed_at: t(FIRST_END),
            plan_id: Some("plan_basic".to_owned()),
            plan: Some(basic().terms),
            seats: Some(1),
            prorations: vec![],
            discount: None,
        }]
    );
    assert_eq!(subscription.current_period, Some(next));
}

#[test]
fn renewals_clamp_to_month_ends_and_return_to_the_31st() {
    let mut subscription = given(&[created(), activated_at("2027-01-31T10:00:00Z")]);
    let expected_ends = [
        "2027-02-28T10:00:00Z",
        "2027-03-31T10:00:00Z",
        "2027-04-30T10:00:00Z",
        "2027-05-31T10:00:00Z",
        "2027-06-30T10:00:00Z",
        "2027-07-31T10:00:00Z",
        "2027-08-31T10:00:00Z",
        "2027-09-30T10:00:00Z",
        "2027-10-31T10:00:00Z",
        "2027-11-30T10:00:00Z",
        "2027-12-31T10:00:00Z",
        "2028-01-31T10:00:00Z",
        "2028-02-29T10:00:00Z",
        "2028-03-31T10:00:00Z",
    ];
    let mut start = t("2027-01-31T10:00:00Z");
    for window in expected_ends.windows(2) {
        let (end, next_end) = (t(window[0]), t(window[1]));
        assert_eq!(subscription.current_period, Some(Period { start, end }));
        let events = run(&mut subscription, SubscriptionCommand::Renew { at: end }).unwrap();
        assert_eq!(
            events,
            vec![renewed_on_basic(
                Period { start, end },
                Period {
                    start: end,
                    end: next_end
                },
                end
            )]
        );
        start = end;
    }
}

#[test]
fn a_late_renewal_closes_one_period_at_a_time() {
    let mut subscription = active();
    let late = t("2025-06-15T00:00:00Z");
    let anchor = t(ACTIVATED);
    for index in 0..4 {
        let events = run(&mut subscription, SubscriptionCommand::Renew { at: late }).unwrap();
        assert_eq!(
            events,
            vec![renewed_on_basic(
                period_at(anchor, Interval::Month, index),
                period_at(anchor, Interval::Month, index + 1),
                late
            )]
        );
    }
    // The period containing the late time is now open: renewing again is early.
    assert_eq!(
        subscription.current_period,
        Some(Period {
            start: t("2025-05-31T10:00:00Z"),
            end: t("2025-06-30T10:00:00Z"),
        })
    );
    assert_validation(
        subscription.decide(SubscriptionCommand::Renew { at: late }),
        "at",
    );
}

#[test]
fn past_due_and_suspended_subscriptions_keep_renewing() {
    for status in [SubscriptionStatus::PastDue, SubscriptionStatus::Suspended] {
        let mut subscription = given(&history(Some(status)));
        let events = run(
            &mut subscription,
            SubscriptionCommand::Renew { at: t(FIRST_END) },
        )
        .unwrap();
        assert_eq!(events[0].name(), "PeriodRenewed");
        assert_eq!(subscription.status, Some(status));
    }
}

#[test]
fn prorated_changes_wait_for_the_renewal_and_are_billed_once() {
    let team = plan_ref("plan_team", terms("team", "10.00", "5.00", 1, 10));
    let big_team = plan_ref("plan_big_team", terms("big_team", "30.00", "6.00", 1, 10));
    let mut subscription = active_in_april(team, 2);
    assert_eq!(subscription.pending_prorations, vec![]);

    // A third in: 2 → 4 seats on team (20.00 → 30.00 a month).
    let seats_at = t("2025-04-11T00:00:00Z");
    run(
        &mut subscription,
        SubscriptionCommand::ChangeSeats {
            seats: 4,
            proration: ProrationMode::Prorate,
            at: seats_at,
        },
    )
    .unwrap();
    let seat_figures = ProrationFigures {
        period: april(),
        at: seats_at,
        fraction: dec("0.666666666667"),
        credit: dec("-13.33"),
        charge: dec("20.00"),
        net: dec("6.67"),
        currency: eur(),
    };
    assert_eq!(subscription.pending_prorations, vec![seat_figures.clone()]);

    // A change without proration adds nothing to bill.
    run(
        &mut subscription,
        SubscriptionCommand::ChangeSeats {
            seats: 5,
            proration: ProrationMode::None,
            at: t("2025-04-14T00:00:00Z"),
        },
    )
    .unwrap();
    assert_eq!(subscription.pending_prorations, vec![seat_figures.clone()]);

    // Half way: team with 5 seats (35.00) → big team with 5 seats (60.00).
    let plan_at = t("2025-04-16T00:00:00Z");
    run(
        &mut subscription,
        SubscriptionCommand::ChangePlan {
            plan: big_team.clone(),
            proration: ProrationMode::Prorate,
            at: plan_at,
        },
    )
    .unwrap();
    let plan_figures = ProrationFigures {
        period: april(),
        at: plan_at,
        fraction: dec("0.5"),
        credit: dec("-17.50"),
        charge: dec("30.00"),
        net: dec("12.50"),
        currency: eur(),
    };
    assert_eq!(
        subscription.pending_prorations,
        vec![seat_figures.clone(), plan_figures.clone()]
    );

    // The renewal carries the new plan, the seats and both prorations…
    let may = Period {
        start: t("2025-05-01T00:00:00Z"),
        end: t("2025-06-01T00:00:00Z"),
    };
    let events = run(
        &mut subscription,
        SubscriptionCommand::Renew { at: april().end },
    )
    .unwrap();
    assert_eq!(
        events,
        vec![SubscriptionEvent::PeriodRenewed {
            closed_period: april(),
            new_period: may,
            renewed_at: april().end,
            plan_id: Some("plan_big_team".to_owned()),
            plan: Some(big_team.terms.clone()),
            seats: Some(5),
            prorations: vec![seat_figures, plan_figures],
            discount: None,
        }]
    );
    // …and clears them, so the next renewal bills none of them again.
    assert_eq!(subscription.pending_prorations, vec![]);
    let events = run(
        &mut subscription,
        SubscriptionCommand::Renew { at: may.end },
    )
    .unwrap();
    let SubscriptionEvent::PeriodRenewed {
        prorations, seats, ..
    } = &events[0]
    else {
        panic!("{events:?}");
    };
    assert_eq!(prorations, &vec![]);
    assert_eq!(*seats, Some(5));
}

#[test]
fn past_due_and_suspended_renewals_carry_the_plan_and_seats() {
    for status in [SubscriptionStatus::PastDue, SubscriptionStatus::Suspended] {
        let events = given(&history(Some(status)))
            .decide(SubscriptionCommand::Renew { at: t(FIRST_END) })
            .unwrap();
        assert_eq!(
            events,
            vec![renewed_on_basic(
                period_at(t(ACTIVATED), Interval::Month, 0),
                period_at(t(ACTIVATED), Interval::Month, 1),
                t(FIRST_END)
            )],
            "{status:?}"
        );
    }
}

// ---------------------------------------------------------------------------
// Proration
// ---------------------------------------------------------------------------

/// A subscription activated on April 1st: a 30-day period.
fn active_in_april(plan: tally_aggregates::PlanRef, seats: u32) -> Subscription {
    given(&[
        created_on(plan, seats),
        activated_at("2025-04-01T00:00:00Z"),
    ])
}

fn april() -> Period {
    Period {
        start: t("2025-04-01T00:00:00Z"),
        end: t("2025-05-01T00:00:00Z"),
    }
}

#[test]
fn plan_change_a_third_into_the_period_credits_two_thirds_of_the_old_price() {
    let subscription = active_in_april(basic(), 1);
    let at = t("2025-04-11T00:00:00Z");
    let events = subscription
        .decide(SubscriptionCommand::ChangePlan {
            plan: pro(),
            proration: ProrationMode::Prorate,
            at,
        })
        .unwrap();
    let figures = ProrationFigures {
        period: april(),
        at,
        fraction: dec("0.666666666667"),
        credit: dec("-6.67"),
        charge: dec("13.33"),
        net: dec("6.66"),
        currency: eur(),
    };
    assert_eq!(
        events,
        vec![SubscriptionEvent::PlanChanged {
            from_plan_id: "plan_basic".to_owned(),
            to_plan_id: "plan_pro".to_owned(),
            plan: pro().terms,
            proration: Some(figures.clone()),
            changed_at: at,
        }]
    );
    // The figures print as the API shows them.
    let json = serde_json::to_value(&figures).unwrap();
    assert_eq!(json["credit"], "-6.67");
    assert_eq!(json["charge"], "13.33");
    assert_eq!(json["net"], "6.66");
    assert_eq!(json["fraction"], "0.666666666667");
    assert_eq!(json["currency"], "EUR");
}

#[test]
fn seat_change_half_way_through_prorates_both_seat_counts() {
    let team = plan_ref("plan_team", terms("team", "10.00", "5.00", 1, 10));
    let subscription = active_in_april(team, 2);
    let at = t("2025-04-16T00:00:00Z");
    let events = subscription
        .decide(SubscriptionCommand::ChangeSeats {
            seats: 4,
            proration: ProrationMode::Prorate,
            at,
        })
        .unwrap();
    assert_eq!(
        events,
        vec![SubscriptionEvent::SeatsChanged {
            from: 2,
            to: 4,
            proration: Some(ProrationFigures {
                period: april(),
                at,
                fraction: dec("0.5"),
                credit: dec("-10.00"),
                charge: dec("15.00"),
                net: dec("5.00"),
                currency: eur(),
            }),
            changed_at: at,
        }]
    );
}

#[test]
fn seat_reduction_nets_a_credit() {
    let team = plan_ref("plan_team", terms("team", "0", "7.00", 1, 10));
    let subscription = active_in_april(team, 3);
    let events = subscription
        .decide(SubscriptionCommand::ChangeSeats {
            seats: 1,
            proration: ProrationMode::Prorate,
            at: t("2025-04-21T00:00:00Z"),
        })
        .unwrap();
    let SubscriptionEvent::SeatsChanged {
        proration: Some(figures),
        ..
    } = &events[0]
    else {
        panic!("{events:?}");
    };
    // 10 of 30 days left: credit 21.00 / 3, charge 7.00 / 3.
    assert_eq!(figures.fraction, dec("0.333333333333"));
    assert_eq!(figures.credit, dec("-7.00"));
    assert_eq!(figures.charge, dec("2.33"));
    assert_eq!(figures.net, dec("-4.67"));
}

#[test]
fn proration_at_the_period_start_and_end() {
    let whole =
        ProrationFigures::compute(april(), april().start, dec("10.00"), dec("20.00"), eur());
    assert_eq!(
        (whole.fraction, whole.credit, whole.charge, whole.net),
        (dec("1"), dec("-10.00"), dec("20.00"), dec("10.00"))
    );
    // Outside the period is clamped: nothing is left after the end, and a
    // credit of nothing is "0.00", not "-0.00".
    let none = ProrationFigures::compute(
        april(),
        t("2025-05-03T00:00:00Z"),
        dec("10.00"),
        dec("20.00"),
        eur(),
    );
    assert_eq!(none.at, april().end);
    assert_eq!(none.fraction, dec("0"));
    assert_eq!(none.credit.to_string(), "0.00");
    assert_eq!(none.charge.to_string(), "0.00");
    let early = ProrationFigures::compute(
        april(),
        t("2025-03-01T00:00:00Z"),
        dec("10.00"),
        dec("20.00"),
        eur(),
    );
    assert_eq!(early.at, april().start);
    assert_eq!(early.fraction, dec("1"));
}

#[test]
fn proration_rounds_half_away_from_zero() {
    // 0.03 × 1/2 = 0.015 → 0.02 either side.
    let figures = ProrationFigures::compute(
        april(),
        t("2025-04-16T00:00:00Z"),
        dec("0.03"),
        dec("0.03"),
        eur(),
    );
    assert_eq!(figures.credit, dec("-0.02"));
    assert_eq!(figures.charge, dec("0.02"));
    assert_eq!(figures.net, dec("0.00"));
}

#[test]
fn proration_in_a_zero_decimal_currency() {
    let jpy = Currency::parse("JPY").unwrap();
    // 20 of 30 days left.
    let figures = ProrationFigures::compute(
        april(),
        t("2025-04-11T00:00:00Z"),
        dec("1000"),
        dec("2000"),
        jpy,
    );
    assert_eq!(figures.credit.to_string(), "-667");
    assert_eq!(figures.charge.to_string(), "1333");
    assert_eq!(figures.net.to_string(), "666");
}

#[test]
fn proration_counts_seconds_in_a_leap_february() {
    // Anchor Jan 31 2028: the second period is [Feb 29, Mar 31), 31 days.
    let mut subscription = given(&[created(), activated_at("2028-01-31T00:00:00Z")]);
    run(
        &mut subscription,
        SubscriptionCommand::Renew {
            at: t("2028-02-29T00:00:00Z"),
        },
    )
    .unwrap();
    let events = subscription
        .decide(SubscriptionCommand::ChangePlan {
            plan: pro(),
            proration: ProrationMode::Prorate,
            at: t("2028-03-15T00:00:00Z"),
        })
        .unwrap();
    let SubscriptionEvent::PlanChanged {
        proration: Some(figures),
        ..
    } = &events[0]
    else {
        panic!("{events:?}");
    };
    assert_eq!(
        figures.period,
        Period {
            start: t("2028-02-29T00:00:00Z"),
            end: t("2028-03-31T00:00:00Z"),
        }
    );
    // 16 of 31 days left.
    assert_eq!(figures.fraction, dec("0.516129032258"));
    assert_eq!(figures.credit, dec("-5.16"));
    assert_eq!(figures.charge, dec("10.32"));
    assert_eq!(figures.net, dec("5.16"));
}

// ---------------------------------------------------------------------------
// Events as a stored contract, and the cqrs-es adapter
// ---------------------------------------------------------------------------

fn one_of_each_event() -> Vec<SubscriptionEvent> {
    let figures = ProrationFigures::compute(
        april(),
        t("2025-04-11T00:00:00Z"),
        dec("10.00"),
        dec("20.00"),
        eur(),
    );
    let mut metered = pro().terms;
    metered.meters.push(MeterTerms {
        key: "api.calls".to_owned(),
        included: Some(dec("1000")),
        hard_cap: Some(dec("5000")),
        pricing: Some(MeterPricing::PerUnit {
            unit_price: dec("0.0015"),
        }),
        reset: ResetCadence::Monthly,
    });
    vec![
        created(),
        activated(),
        SubscriptionEvent::PlanChanged {
            from_plan_id: "plan_basic".to_owned(),
            to_plan_id: "plan_pro".to_owned(),
            plan: metered.clone(),
            proration: Some(figures.clone()),
            changed_at: t(DURING),
        },
        SubscriptionEvent::SeatsChanged {
            from: 1,
            to: 2,
            proration: Some(figures.clone()),
            changed_at: t(DURING),
        },
        SubscriptionEvent::SubscriptionSuspended {
            reason: SuspendReason::QuotaExceeded {
                meter: "api.calls".to_owned(),
            },
            suspended_at: t(DURING),
        },
        SubscriptionEvent::SubscriptionResumed {
            resumed_at: t(DURING),
        },
        SubscriptionEvent::SubscriptionPastDue {
            invoice_id: "inv_1".to_owned(),
            at: t(DURING),
        },
        SubscriptionEvent::PastDueCleared {
            invoice_id: "inv_1".to_owned(),
            at: t(DURING),
        },
        SubscriptionEvent::CancellationScheduled {
            reason: None,
            cancel_at: t(FIRST_END),
            scheduled_at: t(DURING),
        },
        SubscriptionEvent::PeriodRenewed {
            closed_period: period_at(t(ACTIVATED), Interval::Month, 0),
            new_period: period_at(t(ACTIVATED), Interval::Month, 1),
            renewed_at: t(FIRST_END),
            plan_id: Some("plan_pro".to_owned()),
            plan: Some(metered),
            seats: Some(2),
            prorations: vec![figures.clone(), figures],
            discount: None,
        },
        SubscriptionEvent::SubscriptionCanceled {
            reason: Some("done".to_owned()),
            canceled_at: t(FIRST_END),
        },
    ]
}

#[test]
fn events_are_externally_tagged_by_their_type_and_round_trip() {
    let events = one_of_each_event();
    let types: BTreeSet<String> = events.iter().map(|e| e.event_type()).collect();
    assert_eq!(types.len(), 11, "one of each event type");
    for event in events {
        assert_eq!(event.event_version(), EVENT_VERSION);
        let json = serde_json::to_value(&event).unwrap();
        let object = json.as_object().unwrap();
        assert_eq!(object.len(), 1);
        assert_eq!(object.keys().next().unwrap(), &event.event_type());
        let back: SubscriptionEvent = serde_json::from_value(json).unwrap();
        assert_eq!(back, event);
    }
}

#[test]
fn stored_event_json_is_stable() {
    let json = serde_json::to_value(SubscriptionEvent::SubscriptionSuspended {
        reason: SuspendReason::QuotaExceeded {
            meter: "api.calls".to_owned(),
        },
        suspended_at: t(DURING),
    })
    .unwrap();
    assert_eq!(
        json,
        serde_json::json!({"SubscriptionSuspended": {
            "reason": {"reason": "quota_exceeded", "meter": "api.calls"},
            "suspended_at": "2025-02-10T12:00:00Z"
        }})
    );
    let json = serde_json::to_value(created()).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"SubscriptionCreated": {
            "subscription_id": "sub_1",
            "customer_id": "cus_1",
            "plan_id": "plan_basic",
            "plan": {
                "code": "basic",
                "name": "basic plan",
                "currency": "EUR",
                "interval": "month",
                "base_price": "10.00",
                "seat_price": "0",
                "seats": {"min": 1, "max": 10},
                "meters": []
            },
            "seats": 1,
            "created_at": "2025-01-30T09:00:00Z"
        }})
    );
    assert_eq!(
        serde_json::to_value(SubscriptionStatus::PastDue).unwrap(),
        "past_due"
    );
    assert_eq!(SubscriptionStatus::PastDue.as_str(), "past_due");
}

#[test]
fn a_period_renewed_stored_before_the_billing_fields_still_reads() {
    let json = serde_json::json!({"PeriodRenewed": {
        "closed_period": {"start": "2025-01-31T10:00:00Z", "end": "2025-02-28T10:00:00Z"},
        "new_period": {"start": "2025-02-28T10:00:00Z", "end": "2025-03-31T10:00:00Z"},
        "renewed_at": "2025-02-28T10:00:00Z"
    }});
    let event: SubscriptionEvent = serde_json::from_value(json).unwrap();
    assert_eq!(
        event,
        SubscriptionEvent::PeriodRenewed {
            closed_period: period_at(t(ACTIVATED), Interval::Month, 0),
            new_period: period_at(t(ACTIVATED), Interval::Month, 1),
            renewed_at: t(FIRST_END),
            plan_id: None,
            plan: None,
            seats: None,
            prorations: vec![],
            discount: None,
        }
    );
    // A subscription folded from such an event is the same as before.
    let mut subscription = active();
    subscription.evolve(&event);
    assert_eq!(
        subscription.current_period,
        Some(period_at(t(ACTIVATED), Interval::Month, 1))
    );
    // A snapshot taken before the new state fields existed reads too.
    let mut old_snapshot = serde_json::to_value(active()).unwrap();
    let object = old_snapshot.as_object_mut().unwrap();
    object.remove("pending_prorations").unwrap();
    object.remove("past_due_invoice").unwrap();
    assert_eq!(
        serde_json::from_value::<Subscription>(old_snapshot).unwrap(),
        active()
    );
}

#[test]
fn stored_past_due_cleared_json_is_stable() {
    assert_eq!(
        serde_json::to_value(SubscriptionEvent::PastDueCleared {
            invoice_id: "inv_1".to_owned(),
            at: t(DURING),
        })
        .unwrap(),
        serde_json::json!({"PastDueCleared": {
            "invoice_id": "inv_1",
            "at": "2025-02-10T12:00:00Z"
        }})
    );
}

#[test]
fn the_state_snapshot_round_trips() {
    let mut subscription = Subscription::default();
    for event in one_of_each_event() {
        subscription.evolve(&event);
        let json = serde_json::to_string(&subscription).unwrap();
        assert_eq!(
            serde_json::from_str::<Subscription>(&json).unwrap(),
            subscription
        );
    }
}

#[test]
fn the_cqrs_adapter_emits_what_decide_decides() {
    TestFramework::<Subscription>::with(())
        .given(vec![created()])
        .when(SubscriptionCommand::Activate {
            at: t(ACTIVATED),
            now: t(ACTIVATED),
        })
        .then_expect_events(vec![activated()]);
    TestFramework::<Subscription>::with(())
        .given(history(Some(SubscriptionStatus::Canceled)))
        .when(SubscriptionCommand::Resume { at: t(DURING) })
        .then_expect_error(DomainError::InvalidTransition {
            aggregate: AggregateKind::Subscription,
            from: "canceled".to_owned(),
            command: "resume",
        });
    TestFramework::<Subscription>::with(())
        .given(history(Some(SubscriptionStatus::PastDue)))
        .when(clear_past_due("inv_1"))
        .then_expect_events(vec![SubscriptionEvent::PastDueCleared {
            invoice_id: "inv_1".to_owned(),
            at: t("2025-02-12T00:00:00Z"),
        }]);
    TestFramework::<Subscription>::with(())
        .given(history(Some(SubscriptionStatus::PastDue)))
        .when(clear_past_due("inv_2"))
        .then_expect_events(vec![]);
    TestFramework::<Subscription>::with(())
        .given(history(Some(SubscriptionStatus::Suspended)))
        .when(SubscriptionCommand::Suspend {
            reason: SuspendReason::NonPayment,
            at: t(DURING),
        })
        .then_expect_events(vec![]);
    assert_eq!(<Subscription as cqrs_es::Aggregate>::TYPE, "subscription");
}

#[test]
#[should_panic(expected = "SubscriptionActivated on a subscription in status")]
fn an_impossible_event_is_a_bug() {
    let mut subscription = active();
    subscription.evolve(&activated());
}

// ---------------------------------------------------------------------------
// Trials
// ---------------------------------------------------------------------------

/// A draft on `plan` (with its own `trial_days`), not yet activated.
fn draft_with_trial(plan: tally_aggregates::PlanRef, trial_days: Option<u32>) -> Subscription {
    let mut subscription = Subscription::default();
    run(
        &mut subscription,
        SubscriptionCommand::Create {
            subscription_id: "sub_1".to_owned(),
            customer_id: "cus_1".to_owned(),
            plan,
            seats: None,
            trial_days,
            at: t(CREATED),
            tax_rate_ids: vec![],
        },
    )
    .unwrap();
    subscription
}

fn basic_with_trial(days: u32) -> tally_aggregates::PlanRef {
    let mut plan = basic();
    plan.terms.trial_days = days;
    plan
}

fn activate_now(subscription: &mut Subscription) -> Vec<SubscriptionEvent> {
    run(
        subscription,
        SubscriptionCommand::Activate {
            at: t(ACTIVATED),
            now: t(ACTIVATED),
        },
    )
    .unwrap()
}

#[test]
fn activating_with_the_plans_trial_starts_it_and_opens_no_period() {
    let mut subscription = draft_with_trial(basic_with_trial(14), None);
    let events = activate_now(&mut subscription);
    assert_eq!(events, vec![trial_started()]);
    assert_eq!(subscription.status, Some(SubscriptionStatus::Trialing));
    assert_eq!(subscription.current_period, None);
    assert_eq!(subscription.anchor, None);
    assert_eq!(subscription.activated_at, None);
    assert_eq!(subscription.trial_end, Some(t(TRIAL_END)));
    // Usage of the trial has windows of its own, from the trial's start.
    assert_eq!(subscription.usage_anchor(), Some(t(ACTIVATED)));
}

#[test]
fn the_subscriptions_own_trial_days_replace_the_plans_and_zero_means_the_plans() {
    for (plan_days, own, want) in [
        (14, Some(30), Some("2025-03-02T10:00:00Z")),
        (0, Some(14), Some(TRIAL_END)),
        (14, Some(0), Some(TRIAL_END)),
        (14, None, Some(TRIAL_END)),
        (0, Some(0), None),
        (0, None, None),
    ] {
        let mut subscription = draft_with_trial(basic_with_trial(plan_days), own);
        let events = activate_now(&mut subscription);
        match want {
            Some(end) => assert_eq!(
                events,
                vec![SubscriptionEvent::TrialStarted {
                    trial_start: t(ACTIVATED),
                    trial_end: t(end),
                }],
                "plan {plan_days}, own {own:?}"
            ),
            None => {
                assert_eq!(events, vec![activated()], "plan {plan_days}, own {own:?}");
                assert_eq!(subscription.status, Some(SubscriptionStatus::Active));
            }
        }
    }
}

#[test]
fn trial_days_beyond_two_years_are_refused_naming_the_field() {
    let err = Subscription::default()
        .decide(SubscriptionCommand::Create {
            subscription_id: "sub_1".to_owned(),
            customer_id: "cus_1".to_owned(),
            plan: basic(),
            seats: None,
            trial_days: Some(731),
            at: t(CREATED),
            tax_rate_ids: vec![],
        })
        .unwrap_err();
    assert!(
        matches!(err, DomainError::Validation { ref field, .. } if field == "trial_days"),
        "{err:?}"
    );
    let mut terms = basic().terms;
    terms.trial_days = 731;
    assert!(
        matches!(terms.validate(), Err(DomainError::Validation { ref field, .. }) if field == "trial_days")
    );
    terms.trial_days = 730;
    assert_eq!(terms.validate(), Ok(()));
}

#[test]
fn a_trial_ended_by_the_clock_anchors_billing_at_trial_end() {
    let mut subscription = given(&history(Some(SubscriptionStatus::Trialing)));
    // The scheduler runs some time after the trial's end: the anchor is
    // the end of the trial, not the scheduler's time.
    let events = run(
        &mut subscription,
        SubscriptionCommand::EndTrial {
            at: t("2025-02-16T08:00:00Z"),
        },
    )
    .unwrap();
    let anchor = t(TRIAL_END);
    assert_eq!(
        events,
        vec![
            SubscriptionEvent::TrialEnded { ended_at: anchor },
            SubscriptionEvent::SubscriptionActivated {
                anchor,
                period: period_at(anchor, Interval::Month, 0),
                activated_at: anchor,
                plan: Some(basic().terms),
                seats: Some(1),
                discount: None,
            },
        ]
    );
    assert_eq!(subscription.status, Some(SubscriptionStatus::Active));
    assert_eq!(subscription.anchor, Some(anchor));
    assert_eq!(
        subscription.current_period,
        Some(Period {
            start: anchor,
            end: t("2025-03-14T10:00:00Z"),
        })
    );
    assert_eq!(subscription.usage_anchor(), Some(anchor));
}

#[test]
fn ending_a_trial_early_anchors_billing_then() {
    let mut subscription = given(&history(Some(SubscriptionStatus::Trialing)));
    let events = run(
        &mut subscription,
        SubscriptionCommand::EndTrial { at: t(DURING) },
    )
    .unwrap();
    assert_eq!(
        events[0],
        SubscriptionEvent::TrialEnded {
            ended_at: t(DURING)
        }
    );
    assert_eq!(subscription.anchor, Some(t(DURING)));
    assert_eq!(subscription.trial_end, Some(t(DURING)));
    assert_eq!(
        subscription.current_period.map(|p| p.start),
        Some(t(DURING))
    );
    // Ended once: a second end is refused.
    assert!(matches!(
        subscription.decide(SubscriptionCommand::EndTrial { at: t(DURING) }),
        Err(DomainError::InvalidTransition { ref from, .. }) if from == "active"
    ));
}

#[test]
fn a_cancellation_at_period_end_during_a_trial_ends_it_with_the_trial_unbilled() {
    let mut subscription = given(&history(Some(SubscriptionStatus::Trialing)));
    let events = run(
        &mut subscription,
        SubscriptionCommand::Cancel {
            when: CancelWhen::PeriodEnd,
            reason: Some("not for us".to_owned()),
            at: t(DURING),
        },
    )
    .unwrap();
    assert_eq!(
        events,
        vec![SubscriptionEvent::CancellationScheduled {
            reason: Some("not for us".to_owned()),
            cancel_at: t(TRIAL_END),
            scheduled_at: t(DURING),
        }]
    );
    assert_eq!(subscription.status, Some(SubscriptionStatus::Trialing));
    let events = run(
        &mut subscription,
        SubscriptionCommand::EndTrial {
            at: t("2025-03-01T00:00:00Z"),
        },
    )
    .unwrap();
    assert_eq!(
        events,
        vec![
            SubscriptionEvent::TrialEnded {
                ended_at: t(TRIAL_END)
            },
            SubscriptionEvent::SubscriptionCanceled {
                reason: Some("not for us".to_owned()),
                canceled_at: t(TRIAL_END),
            },
        ]
    );
    assert_eq!(subscription.status, Some(SubscriptionStatus::Canceled));
    assert_eq!(subscription.current_period, None, "never billed");
}

#[test]
fn canceling_a_trial_now_bills_nothing() {
    let mut subscription = given(&history(Some(SubscriptionStatus::Trialing)));
    let events = run(
        &mut subscription,
        SubscriptionCommand::Cancel {
            when: CancelWhen::Now,
            reason: None,
            at: t(DURING),
        },
    )
    .unwrap();
    assert_eq!(
        events,
        vec![SubscriptionEvent::SubscriptionCanceled {
            reason: None,
            canceled_at: t(DURING),
        }]
    );
    assert_eq!(subscription.current_period, None);
    assert_eq!(subscription.anchor, None);
}

#[test]
fn plan_and_seat_changes_during_a_trial_are_never_prorated_and_the_first_invoice_bills_them() {
    let mut subscription = given(&history(Some(SubscriptionStatus::Trialing)));
    let events = run(
        &mut subscription,
        SubscriptionCommand::ChangeSeats {
            seats: 3,
            proration: ProrationMode::Prorate,
            at: t(DURING),
        },
    )
    .unwrap();
    assert_eq!(
        events,
        vec![SubscriptionEvent::SeatsChanged {
            from: 1,
            to: 3,
            proration: None,
            changed_at: t(DURING),
        }]
    );
    let events = run(
        &mut subscription,
        SubscriptionCommand::ChangePlan {
            plan: pro(),
            proration: ProrationMode::Prorate,
            at: t(DURING),
        },
    )
    .unwrap();
    assert!(matches!(
        &events[..],
        [SubscriptionEvent::PlanChanged {
            proration: None,
            ..
        }]
    ));
    assert!(subscription.pending_prorations.is_empty());
    let events = run(
        &mut subscription,
        SubscriptionCommand::EndTrial { at: t(TRIAL_END) },
    )
    .unwrap();
    assert!(
        matches!(
            &events[1],
            SubscriptionEvent::SubscriptionActivated { plan: Some(plan), seats: Some(3), .. }
                if plan.code == "pro"
        ),
        "{events:?}"
    );
}

#[test]
fn a_trial_suspended_resumes_into_its_trial_and_has_no_period_to_renew() {
    let mut subscription = given(&history(Some(SubscriptionStatus::Trialing)));
    run(
        &mut subscription,
        SubscriptionCommand::Suspend {
            reason: SuspendReason::QuotaExceeded {
                meter: "api.calls".to_owned(),
            },
            at: t(DURING),
        },
    )
    .unwrap();
    assert_eq!(subscription.status, Some(SubscriptionStatus::Suspended));
    assert!(matches!(
        subscription.decide(SubscriptionCommand::Renew {
            at: t("2025-03-01T00:00:00Z")
        }),
        Err(DomainError::InvalidTransition {
            command: "renew",
            ..
        })
    ));
    assert!(matches!(
        subscription.decide(SubscriptionCommand::EndTrial { at: t(DURING) }),
        Err(DomainError::InvalidTransition {
            command: "end_trial",
            ..
        })
    ));
    // A cancellation at period end waits for the end of the trial.
    assert!(matches!(
        &subscription.decide(SubscriptionCommand::Cancel {
            when: CancelWhen::PeriodEnd,
            reason: None,
            at: t(DURING),
        }).unwrap()[..],
        [SubscriptionEvent::CancellationScheduled { cancel_at, .. }] if *cancel_at == t(TRIAL_END)
    ));
    run(
        &mut subscription,
        SubscriptionCommand::Resume { at: t(DURING) },
    )
    .unwrap();
    assert_eq!(subscription.status, Some(SubscriptionStatus::Trialing));
    assert_eq!(subscription.suspension, None);
}

#[test]
fn events_and_terms_stored_before_trials_read_without_them_and_are_written_the_same() {
    let created: SubscriptionEvent = serde_json::from_value(serde_json::json!({
        "SubscriptionCreated": {
            "subscription_id": "sub_1", "customer_id": "cus_1", "plan_id": "plan_basic",
            "plan": {"code": "basic", "name": "basic plan", "currency": "EUR",
                     "interval": "month", "base_price": "10.00"},
            "seats": 1, "created_at": "2025-01-30T09:00:00Z"
        }
    }))
    .unwrap();
    let SubscriptionEvent::SubscriptionCreated {
        plan, trial_days, ..
    } = &created
    else {
        panic!("{created:?}")
    };
    assert_eq!(*trial_days, None);
    assert_eq!(plan.trial_days, 0);
    // Without a trial, neither field is written: the stored shape is unchanged.
    let text = serde_json::to_string(&created).unwrap();
    assert!(!text.contains("trial_days"), "{text}");
    let old_snapshot: Subscription = serde_json::from_value({
        let mut value =
            serde_json::to_value(given(&history(Some(SubscriptionStatus::Active)))).unwrap();
        let object = value.as_object_mut().unwrap();
        for field in ["trial_days", "trial_start", "trial_end"] {
            object.remove(field);
        }
        value
    })
    .unwrap();
    assert_eq!(
        old_snapshot,
        given(&history(Some(SubscriptionStatus::Active)))
    );
}
