//! Fixtures shared by the aggregate test binaries: times, currencies, plans,
//! the event histories that put a subscription into each status, and an exact
//! reference for rounding a product of decimals. Each test binary uses a
//! subset, hence the `dead_code` allowance.
#![allow(dead_code)]

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use tally_aggregates::{
    Currency, Interval, PlanRef, PlanTerms, SeatLimits, Subscription, SubscriptionCommand,
    SubscriptionEvent, SubscriptionStatus,
};

pub fn t(rfc3339: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(rfc3339)
        .expect("test time")
        .with_timezone(&Utc)
}

pub fn dec(s: &str) -> Decimal {
    Decimal::from_str_exact(s).expect("test decimal")
}

pub fn eur() -> Currency {
    Currency::parse("EUR").expect("EUR")
}

/// A currency without a minor unit.
pub fn jpy() -> Currency {
    Currency::parse("JPY").expect("JPY")
}

/// A currency with three decimal places.
pub fn kwd() -> Currency {
    Currency::parse("KWD").expect("KWD")
}

/// `a × b` rounded half away from zero to `places`, computed on the exact
/// integer product of the mantissas, independently of `Decimal`'s own
/// multiplication (which rounds products wider than 28 digits). `None` when
/// the product of the mantissas does not fit an `i128`; generators keep their
/// factors small enough for it to fit.
pub fn exact_round_product(a: Decimal, b: Decimal, places: u32) -> Option<Decimal> {
    let product = a.mantissa().checked_mul(b.mantissa())?;
    let scale = a.scale() + b.scale();
    let units = if scale >= places {
        let divisor = 10i128.checked_pow(scale - places)?;
        let (quotient, remainder) = (product / divisor, product % divisor);
        if remainder.abs() * 2 >= divisor {
            quotient + product.signum()
        } else {
            quotient
        }
    } else {
        product.checked_mul(10i128.pow(places - scale))?
    };
    let mut rounded = Decimal::try_from_i128_with_scale(units, places).ok()?;
    // The product rounds like money: a zero is never negative.
    if rounded.is_zero() {
        rounded.set_sign_positive(true);
    }
    Some(rounded)
}

/// Monthly EUR terms with a base price, a seat price and seat limits.
pub fn terms(code: &str, base: &str, seat: &str, min: u32, max: u32) -> PlanTerms {
    PlanTerms {
        code: code.to_owned(),
        name: format!("{code} plan"),
        currency: eur(),
        interval: Interval::Month,
        base_price: dec(base),
        seat_price: dec(seat),
        seats: SeatLimits { min, max },
        meters: vec![],
        trial_days: 0,
        tax_rate_ids: vec![],
    }
}

pub fn plan_ref(plan_id: &str, terms: PlanTerms) -> PlanRef {
    PlanRef {
        plan_id: plan_id.to_owned(),
        terms,
        active: true,
    }
}

/// The plan every fixture subscription starts on: 10.00 EUR a month, 1..=10 seats.
pub fn basic() -> PlanRef {
    plan_ref("plan_basic", terms("basic", "10.00", "0", 1, 10))
}

/// The plan fixture subscriptions change to: 20.00 EUR a month, 1..=10 seats.
pub fn pro() -> PlanRef {
    plan_ref("plan_pro", terms("pro", "20.00", "0", 1, 10))
}

/// When fixture subscriptions are created and activated. The anchor on the 31st
/// makes the first period end on the last day of February.
pub const CREATED: &str = "2025-01-30T09:00:00Z";
pub const ACTIVATED: &str = "2025-01-31T10:00:00Z";
/// A time inside the first period, for commands that need one.
pub const DURING: &str = "2025-02-10T12:00:00Z";
/// The end of the first period.
pub const FIRST_END: &str = "2025-02-28T10:00:00Z";
/// The end of the fixture trial: 14 days from `ACTIVATED`, after `DURING`.
pub const TRIAL_END: &str = "2025-02-14T10:00:00Z";

/// The fixture trial: 14 days from `ACTIVATED`.
pub fn trial_started() -> SubscriptionEvent {
    SubscriptionEvent::TrialStarted {
        trial_start: t(ACTIVATED),
        trial_end: t(TRIAL_END),
    }
}

pub fn created_on(plan: PlanRef, seats: u32) -> SubscriptionEvent {
    SubscriptionEvent::SubscriptionCreated {
        subscription_id: "sub_1".to_owned(),
        customer_id: "cus_1".to_owned(),
        plan_id: plan.plan_id,
        plan: plan.terms,
        seats,
        created_at: t(CREATED),
        trial_days: None,
        tax_rate_ids: vec![],
    }
}

pub fn created() -> SubscriptionEvent {
    created_on(basic(), 1)
}

pub fn activated_at(at: &str) -> SubscriptionEvent {
    let anchor = t(at);
    SubscriptionEvent::SubscriptionActivated {
        anchor,
        period: tally_aggregates::period::period_at(anchor, Interval::Month, 0),
        activated_at: anchor,
        plan: Some(basic().terms),
        seats: Some(1),
        discount: None,
    }
}

pub fn activated() -> SubscriptionEvent {
    activated_at(ACTIVATED)
}

/// An event history that leaves a fixture subscription in `status`; `None` is
/// the empty history of a subscription that was never created.
pub fn history(status: Option<SubscriptionStatus>) -> Vec<SubscriptionEvent> {
    let Some(status) = status else {
        return vec![];
    };
    match status {
        SubscriptionStatus::Draft => vec![created()],
        SubscriptionStatus::Trialing => vec![created(), trial_started()],
        SubscriptionStatus::Active => vec![created(), activated()],
        SubscriptionStatus::PastDue => vec![
            created(),
            activated(),
            SubscriptionEvent::SubscriptionPastDue {
                invoice_id: "inv_1".to_owned(),
                at: t("2025-02-05T00:00:00Z"),
            },
        ],
        SubscriptionStatus::Suspended => vec![
            created(),
            activated(),
            SubscriptionEvent::SubscriptionSuspended {
                reason: tally_aggregates::SuspendReason::NonPayment,
                suspended_at: t("2025-02-06T00:00:00Z"),
            },
        ],
        SubscriptionStatus::Canceled => vec![
            created(),
            activated(),
            SubscriptionEvent::SubscriptionCanceled {
                reason: Some("too expensive".to_owned()),
                canceled_at: t("2025-02-07T00:00:00Z"),
            },
        ],
    }
}

/// Replays events through `evolve`.
pub fn given(events: &[SubscriptionEvent]) -> Subscription {
    let mut subscription = Subscription::default();
    for event in events {
        subscription.evolve(event);
    }
    subscription
}

/// Decides and, on success, evolves: what the command layer does.
pub fn run(
    subscription: &mut Subscription,
    command: SubscriptionCommand,
) -> Result<Vec<SubscriptionEvent>, tally_aggregates::DomainError> {
    let events = subscription.decide(command)?;
    for event in &events {
        subscription.evolve(event);
    }
    Ok(events)
}
