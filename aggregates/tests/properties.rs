//! Property tests: random command sequences, valid and invalid alike, never
//! break the subscription's invariants. Errors are discarded; only accepted
//! commands change the state, exactly as the command layer applies them.

mod support;

use chrono::Duration;
use proptest::prelude::*;
use rust_decimal::Decimal;
use support::*;
use tally_aggregates::{
    CancelWhen, Currency, Interval, PlanRef, ProrationMode, Subscription, SubscriptionCommand,
    SubscriptionEvent, SubscriptionStatus, SuspendReason,
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
            at,
        },
        1 => SubscriptionCommand::Activate { at },
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
        6 => SubscriptionCommand::MarkPastDue {
            invoice_id: format!("inv_{}", step.seats),
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
            | SubscriptionStatus::Active
            | SubscriptionStatus::PastDue
            | SubscriptionStatus::Canceled,
        )
        | None => assert!(subscription.suspension.is_none()),
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
        for step in &steps {
            at += Duration::seconds(step.advance_seconds);
            let command = command(step, &plans, at);
            let before = subscription.clone();
            let was_canceled = before.status == Some(SubscriptionStatus::Canceled);
            match run(&mut subscription, command.clone()) {
                Ok(events) => {
                    prop_assert!(!was_canceled, "a canceled subscription accepted {command:?}");
                    check_invariants(&subscription, &events);
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
