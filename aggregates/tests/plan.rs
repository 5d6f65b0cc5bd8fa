//! Given events / when command / then events or error for the `Plan`
//! aggregate: every (status, command) pair and every rule of `PlanTerms`.

mod support;

use cqrs_es::test::TestFramework;
use cqrs_es::DomainEvent;
use support::*;
use tally_aggregates::AggregateKind;
use tally_aggregates::{
    DomainError, Interval, MeterPricing, MeterTerms, Plan, PlanCommand, PlanEvent, PlanStatus,
    PlanTerms, ResetCadence, SeatLimits, EVENT_VERSION,
};

fn created_plan() -> PlanEvent {
    PlanEvent::PlanCreated {
        plan_id: "plan_basic".to_owned(),
        terms: basic().terms,
        created_at: t(CREATED),
    }
}

fn given_plan(events: &[PlanEvent]) -> Plan {
    let mut plan = Plan::default();
    for event in events {
        plan.evolve(event);
    }
    plan
}

fn history(status: Option<PlanStatus>) -> Vec<PlanEvent> {
    let Some(status) = status else {
        return vec![];
    };
    match status {
        PlanStatus::Active => vec![created_plan()],
        PlanStatus::Archived => vec![
            created_plan(),
            PlanEvent::PlanArchived {
                archived_at: t(DURING),
            },
        ],
    }
}

fn create_command(terms: PlanTerms) -> PlanCommand {
    PlanCommand::Create {
        plan_id: "plan_basic".to_owned(),
        terms,
        at: t(CREATED),
    }
}

#[test]
fn every_status_and_command_pair_is_decided_as_the_table_says() {
    for status in std::iter::once(None).chain(PlanStatus::ALL.map(Some)) {
        let commands = [
            create_command(basic().terms),
            PlanCommand::Archive { at: t(DURING) },
        ];
        for command in commands {
            let plan = given_plan(&history(status));
            let result = plan.decide(command.clone());
            // The table; a new command or status fails to compile here.
            let expected: Result<Option<PlanStatus>, DomainError> = match (&command, status) {
                (PlanCommand::Create { .. }, None) => Ok(Some(PlanStatus::Active)),
                (PlanCommand::Create { .. }, Some(PlanStatus::Active | PlanStatus::Archived)) => {
                    Err(DomainError::AlreadyExists(AggregateKind::Plan))
                }
                (PlanCommand::Archive { .. }, None) => {
                    Err(DomainError::NotFound(AggregateKind::Plan))
                }
                (PlanCommand::Archive { .. }, Some(PlanStatus::Active)) => {
                    Ok(Some(PlanStatus::Archived))
                }
                (PlanCommand::Archive { .. }, Some(PlanStatus::Archived)) => {
                    Err(DomainError::InvalidTransition {
                        aggregate: AggregateKind::Plan,
                        from: "archived".to_owned(),
                        command: "archive",
                    })
                }
            };
            match (expected, result) {
                (Ok(new_status), Ok(events)) => {
                    assert_eq!(events.len(), 1);
                    let mut after = plan.clone();
                    after.evolve(&events[0]);
                    assert_eq!(after.status, new_status);
                }
                (Err(want), Err(got)) => assert_eq!(got, want),
                (want, got) => panic!("{status:?} × {command:?}: {want:?} vs {got:?}"),
            }
        }
    }
}

#[test]
fn create_then_archive() {
    let mut plan = Plan::default();
    let events = plan.decide(create_command(basic().terms)).unwrap();
    assert_eq!(events, vec![created_plan()]);
    plan.evolve(&events[0]);
    assert_eq!(plan.id.as_deref(), Some("plan_basic"));
    assert_eq!(plan.status, Some(PlanStatus::Active));
    assert_eq!(plan.terms, Some(basic().terms));
    assert_eq!(plan.created_at, Some(t(CREATED)));
    assert_eq!(plan.plan_ref(), Some(basic()));

    let events = plan.decide(PlanCommand::Archive { at: t(DURING) }).unwrap();
    assert_eq!(
        events,
        vec![PlanEvent::PlanArchived {
            archived_at: t(DURING)
        }]
    );
    plan.evolve(&events[0]);
    assert_eq!(plan.status, Some(PlanStatus::Archived));
    assert_eq!(plan.archived_at, Some(t(DURING)));
    assert!(!plan.plan_ref().unwrap().active);
    assert_eq!(
        plan.decide(PlanCommand::Archive { at: t(DURING) })
            .unwrap_err()
            .to_string(),
        "cannot archive a archived plan"
    );
}

fn meter(key: &str) -> MeterTerms {
    MeterTerms {
        key: key.to_owned(),
        included: Some(dec("100")),
        hard_cap: Some(dec("1000")),
        pricing: Some(MeterPricing::PerUnit {
            unit_price: dec("0.0025"),
        }),
        reset: ResetCadence::Monthly,
    }
}

fn rejected_on(terms: PlanTerms) -> String {
    match Plan::default().decide(create_command(terms)) {
        Err(DomainError::Validation { field, .. }) => field,
        other => panic!("expected a validation error, got {other:?}"),
    }
}

/// Breaks one rule of otherwise good terms.
type Breaker = Box<dyn Fn(&mut PlanTerms)>;

#[test]
fn terms_rules_each_name_their_field() {
    let good = || {
        let mut terms = terms("pro", "29.99", "4.50", 1, 50);
        terms.meters = vec![meter("api.calls"), meter("storage_gb")];
        terms
    };
    good().validate().unwrap();

    let cases: Vec<(&str, Breaker)> = vec![
        ("code", Box::new(|t| t.code = String::new())),
        ("code", Box::new(|t| t.code = "c".repeat(65))),
        ("code", Box::new(|t| t.code = " pro".to_owned())),
        ("name", Box::new(|t| t.name = "  ".to_owned())),
        ("name", Box::new(|t| t.name = "n".repeat(201))),
        ("base_price", Box::new(|t| t.base_price = dec("-0.01"))),
        ("base_price", Box::new(|t| t.base_price = dec("1.001"))),
        ("seat_price", Box::new(|t| t.seat_price = dec("-5"))),
        // A unit price: finer than the minor unit, but at most 12 places.
        (
            "seat_price",
            Box::new(|t| t.seat_price = dec("0.1250000000001")),
        ),
        (
            "seats.min",
            Box::new(|t| t.seats = SeatLimits { min: 0, max: 5 }),
        ),
        (
            "seats.min",
            Box::new(|t| t.seats = SeatLimits { min: 6, max: 5 }),
        ),
        (
            "seats.max",
            Box::new(|t| {
                t.seats = SeatLimits {
                    min: 1,
                    max: 1_000_001,
                }
            }),
        ),
        (
            "meters[1].key",
            Box::new(|t| t.meters[1].key = "API".to_owned()),
        ),
        (
            "meters[1].key",
            Box::new(|t| t.meters[1].key = String::new()),
        ),
        (
            "meters[1].key",
            Box::new(|t| t.meters[1].key = "k".repeat(65)),
        ),
        (
            "meters[1].key",
            Box::new(|t| t.meters[1].key = "api.calls".to_owned()),
        ),
        (
            "meters[0].included",
            Box::new(|t| t.meters[0].included = Some(dec("-1"))),
        ),
        (
            "meters[0].included",
            Box::new(|t| t.meters[0].included = Some(dec("1001"))),
        ),
        (
            "meters[0].hard_cap",
            Box::new(|t| t.meters[0].hard_cap = Some(dec("-1"))),
        ),
        (
            "meters[0].overage_unit_price",
            Box::new(|t| {
                t.meters[0].pricing = Some(MeterPricing::PerUnit {
                    unit_price: dec("-0.5"),
                })
            }),
        ),
        (
            "meters",
            Box::new(|t| {
                t.meters = (0..51).map(|i| meter(&format!("m{i}"))).collect();
            }),
        ),
    ];
    for (field, break_it) in cases {
        let mut terms = good();
        break_it(&mut terms);
        assert_eq!(rejected_on(terms), field);
    }
}

#[test]
fn terms_limits_are_inclusive() {
    let mut terms = terms("c", "0", "0", 1_000_000, 1_000_000);
    terms.code = "c".repeat(64);
    terms.name = "n".repeat(200);
    terms.meters = (0..50).map(|i| meter(&format!("m{i}"))).collect();
    terms.meters[0].key = "k".repeat(64);
    terms.meters[1].included = None;
    terms.meters[1].hard_cap = None;
    terms.meters[2].included = Some(dec("1000"));
    terms.validate().unwrap();
}

#[test]
fn prices_follow_the_currency_minor_unit() {
    let mut yen = terms("yen", "1000", "0", 1, 10);
    yen.currency = tally_aggregates::Currency::parse("JPY").unwrap();
    yen.validate().unwrap();
    yen.base_price = dec("1000.5");
    assert_eq!(rejected_on(yen), "base_price");
    let mut dinar = terms("kwd", "1.125", "0.005", 1, 10);
    dinar.currency = tally_aggregates::Currency::parse("KWD").unwrap();
    dinar.validate().unwrap();
}

#[test]
fn recurring_amount_is_base_plus_seats_rounded() {
    let terms = terms("team", "9.99", "4.50", 1, 100);
    assert_eq!(terms.recurring_amount(1), dec("14.49"));
    assert_eq!(terms.recurring_amount(10), dec("54.99"));
    assert_eq!(terms.recurring_amount(0).to_string(), "9.99");
    assert_eq!(flat_terms().recurring_amount(7).to_string(), "5.00");
}

fn flat_terms() -> PlanTerms {
    terms("flat", "5", "0", 1, 10)
}

#[test]
fn meter_lookup_by_key() {
    let mut terms = terms("pro", "1", "0", 1, 10);
    terms.meters = vec![meter("api.calls")];
    assert_eq!(terms.meter("api.calls"), Some(&meter("api.calls")));
    assert_eq!(terms.meter("storage"), None);
}

#[test]
fn terms_wire_form_defaults_optional_fields() {
    let terms: PlanTerms = serde_json::from_value(serde_json::json!({
        "code": "starter",
        "name": "Starter",
        "currency": "EUR",
        "interval": "year",
        "base_price": "99.00",
        "meters": [{"key": "api.calls", "hard_cap": "1000", "reset": "lifetime"}]
    }))
    .unwrap();
    assert_eq!(terms.seat_price, dec("0"));
    assert_eq!(
        terms.seats,
        SeatLimits {
            min: 1,
            max: 10_000
        }
    );
    assert_eq!(terms.interval, Interval::Year);
    assert_eq!(terms.meters[0].included, None);
    assert_eq!(terms.meters[0].hard_cap, Some(dec("1000")));
    assert_eq!(terms.meters[0].reset, ResetCadence::Lifetime);
    // Floats are refused: amounts are decimal strings.
    assert!(serde_json::from_value::<PlanTerms>(serde_json::json!({
        "code": "x", "name": "x", "currency": "EUR", "interval": "month", "base_price": 9.99
    }))
    .is_err());
    assert!(serde_json::from_value::<PlanTerms>(serde_json::json!({
        "code": "x", "name": "x", "currency": "eur", "interval": "month", "base_price": "1"
    }))
    .is_err());
}

#[test]
fn plan_events_are_a_stable_contract() {
    for event in history(Some(PlanStatus::Archived)) {
        assert_eq!(event.event_version(), EVENT_VERSION);
        let json = serde_json::to_value(&event).unwrap();
        assert!(json.get(event.event_type()).is_some(), "{json}");
        assert_eq!(serde_json::from_value::<PlanEvent>(json).unwrap(), event);
    }
    assert_eq!(
        serde_json::to_value(PlanEvent::PlanArchived {
            archived_at: t(DURING)
        })
        .unwrap(),
        serde_json::json!({"PlanArchived": {"archived_at": "2025-02-10T12:00:00Z"}})
    );
    assert_eq!(
        serde_json::to_value(PlanStatus::Archived).unwrap(),
        "archived"
    );
}

#[test]
fn the_cqrs_adapter_emits_what_decide_decides() {
    TestFramework::<Plan>::with(())
        .given_no_previous_events()
        .when(create_command(basic().terms))
        .then_expect_events(vec![created_plan()]);
    TestFramework::<Plan>::with(())
        .given(vec![created_plan()])
        .when(create_command(basic().terms))
        .then_expect_error(DomainError::AlreadyExists(AggregateKind::Plan));
    assert_eq!(<Plan as cqrs_es::Aggregate>::TYPE, "plan");
}

#[test]
fn create_rejects_a_bad_plan_id() {
    let result = Plan::default().decide(PlanCommand::Create {
        plan_id: "plan 1".to_owned(),
        terms: basic().terms,
        at: t(CREATED),
    });
    assert!(
        matches!(result, Err(DomainError::Validation { ref field, .. }) if field == "plan_id"),
        "{result:?}"
    );
}
