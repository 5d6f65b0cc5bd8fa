//! The `UsageRecord` aggregate: one reported quantity of one meter of one
//! subscription, moving Recorded → Billed or Recorded → Voided (both terminal).
//! The aggregate id is the record id the command layer derives from the
//! client's transaction id, so a retried report lands on the same aggregate and
//! is answered with the original instead of being counted twice.
//!
//! Each record counts in one window of its meter's reset cadence (monthly and
//! yearly windows are anchored on the subscription's billing anchor, lifetime
//! never resets). The window is fixed when the usage is recorded and carried by
//! every event, so the read model's totals per (subscription, meter, window)
//! follow from [`total_delta`] alone, without reading the plan again.

use std::collections::BTreeMap;

use chrono::{DateTime, Datelike, NaiveDate, TimeDelta, TimeZone, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::money::MAX_AMOUNT;
use crate::period::checked_period_containing;
use crate::plan::{validate_id, MAX_QUANTITY_PLACES};
use crate::AggregateKind;
use crate::{DomainError, Interval, PlanTerms, ResetCadence, SubscriptionStatus};

/// The longest client transaction id, in characters.
pub const MAX_TRANSACTION_ID_CHARS: usize = 255;
/// The longest reason for voiding a record, in characters.
pub const MAX_VOID_REASON_CHARS: usize = 500;
/// The most keys the `properties` object of one record may have.
pub const MAX_PROPERTIES: usize = 50;
/// How far past the command's `now` a usage timestamp may lie: client clocks
/// run a little ahead, but usage cannot happen in the future.
pub const MAX_AHEAD_SECONDS: i64 = 5 * 60;
/// How old usage may be when it is reported. Older usage belongs to a window
/// that is likely billed already.
pub const MAX_AGE_DAYS: i64 = 35;

/// Where a usage record is in its life. `Billed` and `Voided` are terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UsageStatus {
    Recorded,
    Billed,
    Voided,
}

impl UsageStatus {
    /// Every status, for tests and tables.
    pub const ALL: [UsageStatus; 3] = [
        UsageStatus::Recorded,
        UsageStatus::Billed,
        UsageStatus::Voided,
    ];

    /// The snake_case name ("recorded", "billed", "voided"), as in the API.
    pub fn as_str(&self) -> &'static str {
        match self {
            UsageStatus::Recorded => "recorded",
            UsageStatus::Billed => "billed",
            UsageStatus::Voided => "voided",
        }
    }
}

/// The window a record counts in: half-open `[start, end)`. `end: None` =
/// lifetime (never resets).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct UsageWindow {
    pub start: DateTime<Utc>,
    pub end: Option<DateTime<Utc>>,
}

impl UsageWindow {
    /// Whether `t` lies in `[start, end)` (or at or after `start` for a
    /// lifetime window).
    pub fn contains(&self, t: DateTime<Utc>) -> bool {
        self.start <= t && self.end.is_none_or(|end| t < end)
    }
}

/// The window of a meter's reset cadence containing `t`, or `None` when it is
/// outside chrono's range. See [`usage_window`].
pub fn checked_usage_window(
    anchor: DateTime<Utc>,
    reset: ResetCadence,
    t: DateTime<Utc>,
) -> Option<UsageWindow> {
    let interval = match reset {
        ResetCadence::Lifetime => {
            return Some(UsageWindow {
                start: anchor,
                end: None,
            })
        }
        ResetCadence::Monthly => Interval::Month,
        ResetCadence::Yearly => Interval::Year,
    };
    let period = checked_period_containing(anchor, interval, t)?;
    Some(UsageWindow {
        start: period.start,
        end: Some(period.end),
    })
}

/// The window of a meter's reset cadence containing `t`, anchored on the
/// subscription's billing anchor: monthly and yearly windows are the billing
/// periods of that interval (end of month clamped, see [`crate::period`]); a
/// lifetime window is `{start: anchor, end: None}`. A `t` before the anchor
/// gives the first window.
///
/// # Panics
/// When the window is outside chrono's range; see [`checked_usage_window`].
pub fn usage_window(anchor: DateTime<Utc>, reset: ResetCadence, t: DateTime<Utc>) -> UsageWindow {
    checked_usage_window(anchor, reset, t).expect("usage window out of chrono's range")
}

/// The anchor's day (clamped to the month's last day) and time of day in
/// month `month` of `year`: the instant whose window is "the window that
/// starts in that month". `None` when there is no such month.
pub fn anchor_in_month(anchor: DateTime<Utc>, year: i32, month: u32) -> Option<DateTime<Utc>> {
    let first = NaiveDate::from_ymd_opt(year, month, 1)?;
    let last_day = (28..=31)
        .rev()
        .find(|d| NaiveDate::from_ymd_opt(year, month, *d).is_some())?;
    let day = anchor.day().min(last_day);
    let date = first.with_day(day)?;
    Some(Utc.from_utc_datetime(&date.and_time(anchor.time())))
}

/// What the command layer knows about the subscription when usage is reported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubscriptionContext {
    pub subscription_id: String,
    pub status: SubscriptionStatus,
    /// The anchor of its usage windows (`Subscription::usage_anchor`): the
    /// billing anchor, or the trial's start; `None` until it is activated.
    pub anchor: Option<DateTime<Utc>>,
    /// The terms of the subscription's current plan, for its meters.
    pub plan: PlanTerms,
}

/// One usage record. `status == None` means it was never recorded.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageRecord {
    pub id: Option<String>,
    pub status: Option<UsageStatus>,
    pub transaction_id: String,
    pub subscription_id: String,
    pub meter: String,
    #[serde(with = "rust_decimal::serde::str")]
    pub quantity: Decimal,
    pub timestamp: Option<DateTime<Utc>>,
    pub window: Option<UsageWindow>,
    pub properties: serde_json::Map<String, serde_json::Value>,
    pub recorded_at: Option<DateTime<Utc>>,
    pub billed_invoice_id: Option<String>,
    pub billed_at: Option<DateTime<Utc>>,
    pub void_reason: Option<String>,
    pub voided_at: Option<DateTime<Utc>>,
}

/// What can be asked of a usage record. Every command carries its time.
// A command is built once and moved into `decide`; boxing the subscription
// would make every caller allocate to save a few hundred bytes of stack.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum UsageCommand {
    /// Records usage; a no-op on a record that exists (a retried report).
    Record {
        record_id: String,
        transaction_id: String,
        subscription: SubscriptionContext,
        meter: String,
        #[serde(with = "rust_decimal::serde::str")]
        quantity: Decimal,
        /// When the usage happened, as the client reports it.
        timestamp: DateTime<Utc>,
        properties: serde_json::Map<String, serde_json::Value>,
        /// When the report arrived; `timestamp` is checked against it.
        now: DateTime<Utc>,
    },
    /// Recorded → Voided; billed usage cannot be voided.
    Void { reason: String, at: DateTime<Utc> },
    /// Recorded → Billed, on the invoice that charged it.
    MarkBilled {
        invoice_id: String,
        at: DateTime<Utc>,
    },
}

impl UsageCommand {
    /// The snake_case command name used in `InvalidTransition`.
    pub fn name(&self) -> &'static str {
        match self {
            UsageCommand::Record { .. } => "record_usage",
            UsageCommand::Void { .. } => "void",
            UsageCommand::MarkBilled { .. } => "mark_billed",
        }
    }
}

/// What happened to a usage record. Stored forever: see [`EVENT_VERSION`].
/// Every event carries the subscription, meter, quantity and window, so the
/// totals projector needs nothing but the event ([`total_delta`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum UsageEvent {
    UsageRecorded {
        record_id: String,
        transaction_id: String,
        subscription_id: String,
        meter: String,
        #[serde(with = "rust_decimal::serde::str")]
        quantity: Decimal,
        timestamp: DateTime<Utc>,
        window: UsageWindow,
        properties: serde_json::Map<String, serde_json::Value>,
        recorded_at: DateTime<Utc>,
    },
    UsageVoided {
        subscription_id: String,
        meter: String,
        #[serde(with = "rust_decimal::serde::str")]
        quantity: Decimal,
        window: UsageWindow,
        reason: String,
        voided_at: DateTime<Utc>,
    },
    UsageBilled {
        subscription_id: String,
        meter: String,
        #[serde(with = "rust_decimal::serde::str")]
        quantity: Decimal,
        window: UsageWindow,
        invoice_id: String,
        billed_at: DateTime<Utc>,
    },
}

impl UsageEvent {
    /// The variant name, used as the stored event type.
    pub fn name(&self) -> &'static str {
        match self {
            UsageEvent::UsageRecorded { .. } => "UsageRecorded",
            UsageEvent::UsageVoided { .. } => "UsageVoided",
            UsageEvent::UsageBilled { .. } => "UsageBilled",
        }
    }
}

fn validate_transaction_id(transaction_id: &str) -> Result<(), DomainError> {
    if transaction_id.is_empty() || transaction_id.chars().count() > MAX_TRANSACTION_ID_CHARS {
        return Err(DomainError::validation(
            "transaction_id",
            format!("must be 1 to {MAX_TRANSACTION_ID_CHARS} characters"),
        ));
    }
    if transaction_id.chars().any(char::is_control) {
        return Err(DomainError::validation(
            "transaction_id",
            "must not contain control characters",
        ));
    }
    Ok(())
}

/// Usage counts only for a subscription that is being served: active, past
/// due while its invoice is chased, or trialing (recorded and capped, never
/// billed: its windows lie before the first billing period).
fn check_subscription_status(status: SubscriptionStatus) -> Result<(), DomainError> {
    use SubscriptionStatus::{Active, Canceled, Draft, PastDue, Suspended, Trialing};
    match status {
        Trialing | Active | PastDue => Ok(()),
        Draft | Suspended | Canceled => Err(DomainError::InvalidTransition {
            aggregate: AggregateKind::Subscription,
            from: status.as_str().to_owned(),
            command: "record_usage",
        }),
    }
}

/// Checks a reported quantity and returns it, with a negative zero made zero.
fn validate_usage_quantity(quantity: Decimal) -> Result<Decimal, DomainError> {
    if quantity.is_zero() {
        return Ok(Decimal::ZERO);
    }
    if quantity.is_sign_negative() {
        return Err(DomainError::validation("quantity", "must not be negative"));
    }
    if quantity.normalize().scale() > MAX_QUANTITY_PLACES {
        return Err(DomainError::validation(
            "quantity",
            format!("at most {MAX_QUANTITY_PLACES} decimal places"),
        ));
    }
    if quantity > MAX_AMOUNT {
        return Err(DomainError::validation(
            "quantity",
            format!("must not exceed {MAX_AMOUNT}"),
        ));
    }
    Ok(quantity)
}

fn validate_timestamp(timestamp: DateTime<Utc>, now: DateTime<Utc>) -> Result<(), DomainError> {
    // A difference of two `DateTime`s always fits a `TimeDelta`.
    let ahead = timestamp.signed_duration_since(now);
    if ahead > TimeDelta::seconds(MAX_AHEAD_SECONDS) {
        return Err(DomainError::validation(
            "timestamp",
            format!("must not be more than {MAX_AHEAD_SECONDS} seconds in the future"),
        ));
    }
    if ahead < -TimeDelta::days(MAX_AGE_DAYS) {
        return Err(DomainError::validation(
            "timestamp",
            format!("must not be more than {MAX_AGE_DAYS} days in the past"),
        ));
    }
    Ok(())
}

fn validate_properties(
    properties: &serde_json::Map<String, serde_json::Value>,
) -> Result<(), DomainError> {
    if properties.len() > MAX_PROPERTIES {
        return Err(DomainError::validation(
            "properties",
            format!("at most {MAX_PROPERTIES} keys"),
        ));
    }
    Ok(())
}

fn validate_void_reason(reason: &str) -> Result<(), DomainError> {
    if reason.trim().is_empty() || reason.chars().count() > MAX_VOID_REASON_CHARS {
        return Err(DomainError::validation(
            "reason",
            format!("must be 1 to {MAX_VOID_REASON_CHARS} characters"),
        ));
    }
    Ok(())
}

impl UsageRecord {
    fn invalid(status: UsageStatus, command: &'static str) -> DomainError {
        DomainError::InvalidTransition {
            aggregate: AggregateKind::UsageRecord,
            from: status.as_str().to_owned(),
            command,
        }
    }

    /// The window of a recorded record.
    ///
    /// # Panics
    /// On a record that was never recorded.
    fn recorded_window(&self) -> UsageWindow {
        self.window
            .clone()
            .expect("a recorded usage record has a window")
    }

    /// Decides which events `command` causes, or why it is refused. Every
    /// (status, command) pair is listed on purpose.
    pub fn decide(&self, command: UsageCommand) -> Result<Vec<UsageEvent>, DomainError> {
        use UsageCommand as C;
        use UsageStatus::{Billed, Recorded, Voided};
        let name = command.name();
        match (self.status, command) {
            (
                None,
                C::Record {
                    record_id,
                    transaction_id,
                    subscription,
                    meter,
                    quantity,
                    timestamp,
                    properties,
                    now,
                },
            ) => {
                validate_transaction_id(&transaction_id)?;
                validate_id("record_id", &record_id)?;
                check_subscription_status(subscription.status)?;
                let terms = subscription.plan.meter(&meter).ok_or_else(|| {
                    DomainError::validation("meter", format!("the plan has no meter {meter:?}"))
                })?;
                let quantity = validate_usage_quantity(quantity)?;
                validate_timestamp(timestamp, now)?;
                let anchor = subscription
                    .anchor
                    .ok_or_else(|| DomainError::validation("subscription_id", "not active"))?;
                validate_properties(&properties)?;
                let window =
                    checked_usage_window(anchor, terms.reset, timestamp).ok_or_else(|| {
                        DomainError::validation("timestamp", "out of the supported date range")
                    })?;
                Ok(vec![UsageEvent::UsageRecorded {
                    record_id,
                    transaction_id,
                    subscription_id: subscription.subscription_id,
                    meter,
                    quantity,
                    timestamp,
                    window,
                    properties,
                    recorded_at: now,
                }])
            }
            // A retried report of the same transaction is not an error and is
            // counted once: the caller answers with the original record.
            (Some(Recorded | Billed | Voided), C::Record { .. }) => Ok(vec![]),

            (None, C::Void { .. } | C::MarkBilled { .. }) => {
                Err(DomainError::NotFound(AggregateKind::UsageRecord))
            }

            (Some(Recorded), C::Void { reason, at }) => {
                validate_void_reason(&reason)?;
                Ok(vec![UsageEvent::UsageVoided {
                    subscription_id: self.subscription_id.clone(),
                    meter: self.meter.clone(),
                    quantity: self.quantity,
                    window: self.recorded_window(),
                    reason,
                    voided_at: at,
                }])
            }
            // Billed usage was charged; taking it back is a credit note's job.
            (Some(status @ (Billed | Voided)), C::Void { .. }) => Err(Self::invalid(status, name)),

            (Some(Recorded), C::MarkBilled { invoice_id, at }) => {
                validate_id("invoice_id", &invoice_id)?;
                Ok(vec![UsageEvent::UsageBilled {
                    subscription_id: self.subscription_id.clone(),
                    meter: self.meter.clone(),
                    quantity: self.quantity,
                    window: self.recorded_window(),
                    invoice_id,
                    billed_at: at,
                }])
            }
            (Some(status @ (Billed | Voided)), C::MarkBilled { .. }) => {
                Err(Self::invalid(status, name))
            }
        }
    }

    /// Applies an event. Events come from `decide`, so an impossible one is a bug.
    pub fn evolve(&mut self, event: &UsageEvent) {
        match event {
            UsageEvent::UsageRecorded {
                record_id,
                transaction_id,
                subscription_id,
                meter,
                quantity,
                timestamp,
                window,
                properties,
                recorded_at,
            } => {
                assert!(self.status.is_none(), "UsageRecorded twice");
                self.id = Some(record_id.clone());
                self.status = Some(UsageStatus::Recorded);
                self.transaction_id = transaction_id.clone();
                self.subscription_id = subscription_id.clone();
                self.meter = meter.clone();
                self.quantity = *quantity;
                self.timestamp = Some(*timestamp);
                self.window = Some(window.clone());
                self.properties = properties.clone();
                self.recorded_at = Some(*recorded_at);
            }
            UsageEvent::UsageVoided {
                reason, voided_at, ..
            } => {
                assert_eq!(
                    self.status,
                    Some(UsageStatus::Recorded),
                    "UsageVoided on a record that is not recorded"
                );
                self.status = Some(UsageStatus::Voided);
                self.void_reason = Some(reason.clone());
                self.voided_at = Some(*voided_at);
            }
            UsageEvent::UsageBilled {
                invoice_id,
                billed_at,
                ..
            } => {
                assert_eq!(
                    self.status,
                    Some(UsageStatus::Recorded),
                    "UsageBilled on a record that is not recorded"
                );
                self.status = Some(UsageStatus::Billed);
                self.billed_invoice_id = Some(invoice_id.clone());
                self.billed_at = Some(*billed_at);
            }
        }
    }
}

crate::cqrs_adapter!(UsageRecord, UsageRecord, UsageCommand, UsageEvent);

/// The change one event makes to the total of its (subscription, meter, window).
#[derive(Debug, Clone, PartialEq)]
pub struct TotalDelta {
    pub subscription_id: String,
    pub meter: String,
    pub window: UsageWindow,
    /// Signed: negative when usage is voided.
    pub quantity: Decimal,
    /// Signed: the change in the number of records counted.
    pub records: i64,
}

/// The change `event` makes to its window's total: recording adds the quantity
/// and one record, voiding takes them away again, and billing changes nothing
/// (billed usage still counts against the included quantity and the cap).
pub fn total_delta(event: &UsageEvent) -> Option<TotalDelta> {
    match event {
        UsageEvent::UsageRecorded {
            subscription_id,
            meter,
            quantity,
            window,
            ..
        } => Some(TotalDelta {
            subscription_id: subscription_id.clone(),
            meter: meter.clone(),
            window: window.clone(),
            quantity: *quantity,
            records: 1,
        }),
        UsageEvent::UsageVoided {
            subscription_id,
            meter,
            quantity,
            window,
            ..
        } => Some(TotalDelta {
            subscription_id: subscription_id.clone(),
            meter: meter.clone(),
            window: window.clone(),
            quantity: -*quantity,
            records: -1,
        }),
        UsageEvent::UsageBilled { .. } => None,
    }
}

/// The key of one total: subscription id, meter key, window start.
pub type TotalKey = (String, String, DateTime<Utc>);

/// Usage totals per (subscription, meter, window start), folded from
/// [`TotalDelta`]s: the in-memory model of the totals read model. A total whose
/// records were all voided disappears, so two foldings that count the same
/// records compare equal.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct UsageTotals {
    totals: BTreeMap<TotalKey, (Decimal, i64)>,
}

impl UsageTotals {
    /// Adds one delta to its window's total.
    ///
    /// # Panics
    /// When the total overflows `Decimal`, which takes more than 10^13
    /// records of the largest quantity.
    pub fn apply(&mut self, d: &TotalDelta) {
        let key = (d.subscription_id.clone(), d.meter.clone(), d.window.start);
        let entry = self.totals.entry(key.clone()).or_insert((Decimal::ZERO, 0));
        entry.0 += d.quantity;
        entry.1 += d.records;
        if entry.1 == 0 && entry.0.is_zero() {
            self.totals.remove(&key);
        }
    }

    /// The total quantity and the number of records counted in the window of
    /// `meter` of `subscription_id` that starts at `window_start`; zero for a
    /// window without usage.
    pub fn total(
        &self,
        subscription_id: &str,
        meter: &str,
        window_start: DateTime<Utc>,
    ) -> (Decimal, i64) {
        self.totals
            .get(&(subscription_id.to_owned(), meter.to_owned(), window_start))
            .copied()
            .unwrap_or((Decimal::ZERO, 0))
    }

    /// Every non-empty total, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&TotalKey, &(Decimal, i64))> {
        self.totals.iter()
    }
}

#[cfg(test)]
mod tests {
    //! Given events / when command / then events or error for every (status,
    //! command) pair and every rejection; usage windows across short months;
    //! the wire form of every event; and a property: totals folded from the
    //! accepted events equal the sums over the records that are not voided.

    use std::collections::BTreeMap;

    use cqrs_es::test::TestFramework;
    use proptest::prelude::*;
    use serde_json::json;

    use cqrs_es::{Aggregate, DomainEvent};

    use super::*;
    use crate::EVENT_VERSION;
    use crate::{Currency, MeterTerms, SeatLimits};

    fn t(rfc3339: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(rfc3339)
            .expect("test time")
            .with_timezone(&Utc)
    }

    fn dec(s: &str) -> Decimal {
        Decimal::from_str_exact(s).expect("test decimal")
    }

    /// The billing anchor of the fixture subscription: on the 31st, so the
    /// monthly windows clamp to the end of short months.
    const ANCHOR: &str = "2025-01-31T10:00:00Z";
    /// When the fixture usage is reported.
    const NOW: &str = "2025-03-10T12:00:00Z";
    /// When the fixture usage happened: in the window [Feb 28, Mar 31).
    const WHEN: &str = "2025-03-10T11:00:00Z";
    /// When fixture records are voided or billed.
    const LATER: &str = "2025-04-01T00:00:00Z";

    #[test]
    fn anchor_in_month_clamps_to_the_months_last_day() {
        let anchor = t(ANCHOR);
        assert_eq!(
            anchor_in_month(anchor, 2025, 2),
            Some(t("2025-02-28T10:00:00Z"))
        );
        assert_eq!(
            anchor_in_month(anchor, 2024, 2),
            Some(t("2024-02-29T10:00:00Z"))
        );
        assert_eq!(
            anchor_in_month(anchor, 2025, 3),
            Some(t("2025-03-31T10:00:00Z"))
        );
        assert_eq!(anchor_in_month(anchor, 2025, 0), None);
        assert_eq!(anchor_in_month(anchor, 2025, 13), None);
    }

    fn meter(key: &str, reset: ResetCadence) -> MeterTerms {
        MeterTerms {
            key: key.to_owned(),
            included: Some(dec("1000")),
            hard_cap: None,
            pricing: Some(crate::MeterPricing::PerUnit {
                unit_price: dec("0.0015"),
            }),
            reset,
        }
    }

    fn plan_terms() -> PlanTerms {
        PlanTerms {
            code: "metered".to_owned(),
            name: "Metered plan".to_owned(),
            currency: Currency::parse("EUR").expect("EUR"),
            interval: Interval::Month,
            base_price: dec("10.00"),
            seat_price: dec("0"),
            seats: SeatLimits::default(),
            meters: vec![
                meter("api_calls", ResetCadence::Monthly),
                meter("storage_gb", ResetCadence::Yearly),
                meter("projects", ResetCadence::Lifetime),
            ],
            trial_days: 0,
            tax_rate_ids: vec![],
        }
    }

    fn context(status: SubscriptionStatus) -> SubscriptionContext {
        SubscriptionContext {
            subscription_id: "sub_1".to_owned(),
            status,
            anchor: Some(t(ANCHOR)),
            plan: plan_terms(),
        }
    }

    fn properties() -> serde_json::Map<String, serde_json::Value> {
        let mut properties = serde_json::Map::new();
        properties.insert("region".to_owned(), json!("eu-west"));
        properties
    }

    /// The fields of a `Record` command, so a test changes only the one it is about.
    #[derive(Debug, Clone)]
    struct Report {
        record_id: String,
        transaction_id: String,
        subscription: SubscriptionContext,
        meter: String,
        quantity: Decimal,
        timestamp: DateTime<Utc>,
        properties: serde_json::Map<String, serde_json::Value>,
        now: DateTime<Utc>,
    }

    impl Report {
        fn valid() -> Report {
            Report {
                record_id: "rec_1".to_owned(),
                transaction_id: "tx_1".to_owned(),
                subscription: context(SubscriptionStatus::Active),
                meter: "api_calls".to_owned(),
                quantity: dec("2.5"),
                timestamp: t(WHEN),
                properties: properties(),
                now: t(NOW),
            }
        }

        fn command(self) -> UsageCommand {
            UsageCommand::Record {
                record_id: self.record_id,
                transaction_id: self.transaction_id,
                subscription: self.subscription,
                meter: self.meter,
                quantity: self.quantity,
                timestamp: self.timestamp,
                properties: self.properties,
                now: self.now,
            }
        }
    }

    fn window() -> UsageWindow {
        UsageWindow {
            start: t("2025-02-28T10:00:00Z"),
            end: Some(t("2025-03-31T10:00:00Z")),
        }
    }

    fn recorded() -> UsageEvent {
        UsageEvent::UsageRecorded {
            record_id: "rec_1".to_owned(),
            transaction_id: "tx_1".to_owned(),
            subscription_id: "sub_1".to_owned(),
            meter: "api_calls".to_owned(),
            quantity: dec("2.5"),
            timestamp: t(WHEN),
            window: window(),
            properties: properties(),
            recorded_at: t(NOW),
        }
    }

    fn voided() -> UsageEvent {
        UsageEvent::UsageVoided {
            subscription_id: "sub_1".to_owned(),
            meter: "api_calls".to_owned(),
            quantity: dec("2.5"),
            window: window(),
            reason: "sent twice by a buggy client".to_owned(),
            voided_at: t(LATER),
        }
    }

    fn billed() -> UsageEvent {
        UsageEvent::UsageBilled {
            subscription_id: "sub_1".to_owned(),
            meter: "api_calls".to_owned(),
            quantity: dec("2.5"),
            window: window(),
            invoice_id: "inv_1".to_owned(),
            billed_at: t(LATER),
        }
    }

    fn void() -> UsageCommand {
        UsageCommand::Void {
            reason: "sent twice by a buggy client".to_owned(),
            at: t(LATER),
        }
    }

    fn mark_billed() -> UsageCommand {
        UsageCommand::MarkBilled {
            invoice_id: "inv_1".to_owned(),
            at: t(LATER),
        }
    }

    /// The events that put a record into `status`.
    fn history(status: Option<UsageStatus>) -> Vec<UsageEvent> {
        match status {
            None => vec![],
            Some(UsageStatus::Recorded) => vec![recorded()],
            Some(UsageStatus::Billed) => vec![recorded(), billed()],
            Some(UsageStatus::Voided) => vec![recorded(), voided()],
        }
    }

    fn state(status: Option<UsageStatus>) -> UsageRecord {
        let mut record = UsageRecord::default();
        for event in history(status) {
            record.evolve(&event);
        }
        assert_eq!(record.status, status);
        record
    }

    fn record_error(report: Report) -> DomainError {
        UsageRecord::default()
            .decide(report.command())
            .expect_err("the report is rejected")
    }

    fn assert_validation(error: &DomainError, expected_field: &str) {
        assert!(
            matches!(error, DomainError::Validation { field, .. } if field == expected_field),
            "expected a validation error on {expected_field}, got {error:?}"
        );
    }

    // -----------------------------------------------------------------------
    // The transition matrix
    // -----------------------------------------------------------------------

    #[derive(Debug, PartialEq)]
    enum Outcome {
        /// Exactly one event of this type, after which the status is this.
        Then(&'static str, UsageStatus),
        /// Accepted, nothing happens.
        NoOp,
        Invalid,
        NotFound,
    }

    /// What each (status, command) pair must do. No catch-all: a new status or
    /// command does not compile until its row is written.
    fn expected(status: Option<UsageStatus>, command: &UsageCommand) -> Outcome {
        use UsageCommand as C;
        use UsageStatus::{Billed, Recorded, Voided};
        match (status, command) {
            (None, C::Record { .. }) => Outcome::Then("UsageRecorded", Recorded),
            (Some(Recorded | Billed | Voided), C::Record { .. }) => Outcome::NoOp,
            (None, C::Void { .. }) => Outcome::NotFound,
            (Some(Recorded), C::Void { .. }) => Outcome::Then("UsageVoided", Voided),
            (Some(Billed | Voided), C::Void { .. }) => Outcome::Invalid,
            (None, C::MarkBilled { .. }) => Outcome::NotFound,
            (Some(Recorded), C::MarkBilled { .. }) => Outcome::Then("UsageBilled", Billed),
            (Some(Billed | Voided), C::MarkBilled { .. }) => Outcome::Invalid,
        }
    }

    #[test]
    fn every_status_and_command_pair_is_decided_as_the_table_says() {
        let statuses = [
            None,
            Some(UsageStatus::Recorded),
            Some(UsageStatus::Billed),
            Some(UsageStatus::Voided),
        ];
        let commands = [Report::valid().command(), void(), mark_billed()];
        let mut pairs = 0;
        for status in statuses {
            for command in &commands {
                let record = state(status);
                let want = expected(status, command);
                let got = match record.decide(command.clone()) {
                    Ok(events) if events.is_empty() => Outcome::NoOp,
                    Ok(events) => {
                        assert_eq!(events.len(), 1, "{status:?} {}", command.name());
                        let mut after = record.clone();
                        after.evolve(&events[0]);
                        Outcome::Then(
                            events[0].name(),
                            after.status.expect("a status after an event"),
                        )
                    }
                    Err(DomainError::InvalidTransition {
                        aggregate,
                        from,
                        command: name,
                    }) => {
                        assert_eq!(aggregate, AggregateKind::UsageRecord);
                        assert_eq!(Some(from.as_str()), status.map(|s| s.as_str()));
                        assert_eq!(name, command.name());
                        Outcome::Invalid
                    }
                    Err(DomainError::NotFound(aggregate)) => {
                        assert_eq!(aggregate, AggregateKind::UsageRecord);
                        Outcome::NotFound
                    }
                    Err(other) => panic!("{status:?} {}: {other:?}", command.name()),
                };
                assert_eq!(got, want, "{status:?} {}", command.name());
                pairs += 1;
            }
        }
        assert_eq!(pairs, 12);
    }

    #[test]
    fn record_emits_the_usage_with_its_window_and_arrival_time() {
        TestFramework::<UsageRecord>::with(())
            .given_no_previous_events()
            .when(Report::valid().command())
            .then_expect_events(vec![recorded()]);
        let mut record = UsageRecord::default();
        record.evolve(&recorded());
        assert_eq!(
            record,
            UsageRecord {
                id: Some("rec_1".to_owned()),
                status: Some(UsageStatus::Recorded),
                transaction_id: "tx_1".to_owned(),
                subscription_id: "sub_1".to_owned(),
                meter: "api_calls".to_owned(),
                quantity: dec("2.5"),
                timestamp: Some(t(WHEN)),
                window: Some(window()),
                properties: properties(),
                recorded_at: Some(t(NOW)),
                ..UsageRecord::default()
            }
        );
    }

    #[test]
    fn a_past_due_subscription_still_records_usage() {
        let report = Report {
            subscription: context(SubscriptionStatus::PastDue),
            ..Report::valid()
        };
        assert_eq!(
            UsageRecord::default().decide(report.command()),
            Ok(vec![recorded()])
        );
    }

    #[test]
    fn a_retried_report_is_accepted_and_changes_nothing_in_every_status() {
        for status in UsageStatus::ALL {
            // Even a retry whose fields are now invalid answers with the original.
            let retry = Report {
                quantity: dec("-5"),
                subscription: context(SubscriptionStatus::Canceled),
                ..Report::valid()
            };
            assert_eq!(state(Some(status)).decide(retry.command()), Ok(vec![]));
        }
    }

    #[test]
    fn void_and_mark_billed_carry_what_the_totals_need() {
        TestFramework::<UsageRecord>::with(())
            .given(vec![recorded()])
            .when(void())
            .then_expect_events(vec![voided()]);
        TestFramework::<UsageRecord>::with(())
            .given(vec![recorded()])
            .when(mark_billed())
            .then_expect_events(vec![billed()]);
        let voided_record = state(Some(UsageStatus::Voided));
        assert_eq!(
            voided_record.void_reason.as_deref(),
            Some("sent twice by a buggy client")
        );
        assert_eq!(voided_record.voided_at, Some(t(LATER)));
        let billed_record = state(Some(UsageStatus::Billed));
        assert_eq!(billed_record.billed_invoice_id.as_deref(), Some("inv_1"));
        assert_eq!(billed_record.billed_at, Some(t(LATER)));
    }

    #[test]
    fn billed_usage_cannot_be_voided_nor_billed_twice() {
        TestFramework::<UsageRecord>::with(())
            .given(history(Some(UsageStatus::Billed)))
            .when(void())
            .then_expect_error(DomainError::InvalidTransition {
                aggregate: AggregateKind::UsageRecord,
                from: "billed".to_owned(),
                command: "void",
            });
        TestFramework::<UsageRecord>::with(())
            .given(history(Some(UsageStatus::Voided)))
            .when(void())
            .then_expect_error(DomainError::InvalidTransition {
                aggregate: AggregateKind::UsageRecord,
                from: "voided".to_owned(),
                command: "void",
            });
        TestFramework::<UsageRecord>::with(())
            .given(history(Some(UsageStatus::Billed)))
            .when(mark_billed())
            .then_expect_error(DomainError::InvalidTransition {
                aggregate: AggregateKind::UsageRecord,
                from: "billed".to_owned(),
                command: "mark_billed",
            });
        TestFramework::<UsageRecord>::with(())
            .given(history(Some(UsageStatus::Voided)))
            .when(mark_billed())
            .then_expect_error(DomainError::InvalidTransition {
                aggregate: AggregateKind::UsageRecord,
                from: "voided".to_owned(),
                command: "mark_billed",
            });
        TestFramework::<UsageRecord>::with(())
            .given_no_previous_events()
            .when(void())
            .then_expect_error(DomainError::NotFound(AggregateKind::UsageRecord));
        TestFramework::<UsageRecord>::with(())
            .given_no_previous_events()
            .when(mark_billed())
            .then_expect_error(DomainError::NotFound(AggregateKind::UsageRecord));
        assert_eq!(<UsageRecord as Aggregate>::TYPE, "usage_record");
    }

    // -----------------------------------------------------------------------
    // Rejections of a report
    // -----------------------------------------------------------------------

    #[test]
    fn transaction_id_is_1_to_255_characters_without_control_characters() {
        for bad in [
            String::new(),
            "x".repeat(256),
            "tx\n1".to_owned(),
            "tx\u{7f}".to_owned(),
        ] {
            let error = record_error(Report {
                transaction_id: bad.clone(),
                ..Report::valid()
            });
            assert_validation(&error, "transaction_id");
        }
        for good in [
            "x".repeat(255),
            "é".repeat(255),
            "order 42/line 7".to_owned(),
        ] {
            let report = Report {
                transaction_id: good,
                ..Report::valid()
            };
            assert!(UsageRecord::default().decide(report.command()).is_ok());
        }
    }

    #[test]
    fn record_id_is_1_to_64_characters() {
        for bad in [String::new(), "r".repeat(65), "rec 1".to_owned()] {
            let error = record_error(Report {
                record_id: bad,
                ..Report::valid()
            });
            assert_validation(&error, "record_id");
        }
        let report = Report {
            record_id: "r".repeat(64),
            ..Report::valid()
        };
        assert!(UsageRecord::default().decide(report.command()).is_ok());
    }

    #[test]
    fn a_draft_suspended_or_canceled_subscription_refuses_usage() {
        for status in [
            SubscriptionStatus::Draft,
            SubscriptionStatus::Suspended,
            SubscriptionStatus::Canceled,
        ] {
            let error = record_error(Report {
                subscription: context(status),
                ..Report::valid()
            });
            assert_eq!(
                error,
                DomainError::InvalidTransition {
                    aggregate: AggregateKind::Subscription,
                    from: status.as_str().to_owned(),
                    command: "record_usage",
                }
            );
        }
    }

    #[test]
    fn a_meter_the_plan_lacks_is_refused_by_name() {
        let error = record_error(Report {
            meter: "gpu_minutes".to_owned(),
            ..Report::valid()
        });
        assert_validation(&error, "meter");
        assert!(error.to_string().contains("gpu_minutes"), "{error}");
    }

    #[test]
    fn quantity_is_non_negative_with_at_most_12_places_up_to_the_maximum() {
        for (bad, message) in [
            ("-1", "must not be negative"),
            ("-0.000000000001", "must not be negative"),
            ("0.0000000000001", "at most 12 decimal places"),
            ("1.1234567890123", "at most 12 decimal places"),
            ("1000000000000000.000000000001", "must not exceed"),
            ("1000000000000001", "must not exceed"),
        ] {
            let error = record_error(Report {
                quantity: dec(bad),
                ..Report::valid()
            });
            assert_validation(&error, "quantity");
            assert!(error.to_string().contains(message), "{bad}: {error}");
        }
        for (good, stored) in [
            ("0", "0"),
            ("-0", "0"),
            ("0.000000000001", "0.000000000001"),
            // Trailing zeros are not precision.
            ("1.500000000000000", "1.500000000000000"),
            ("1000000000000000", "1000000000000000"),
        ] {
            let report = Report {
                quantity: dec(good),
                ..Report::valid()
            };
            let events = UsageRecord::default()
                .decide(report.command())
                .expect("accepted");
            let [UsageEvent::UsageRecorded { quantity, .. }] = events.as_slice() else {
                panic!("{good}: {events:?}");
            };
            assert_eq!(quantity.to_string(), stored, "{good}");
            assert!(!quantity.is_sign_negative(), "{good}");
        }
    }

    #[test]
    fn timestamp_may_be_five_minutes_ahead_and_35_days_old_but_no_more() {
        let now = t(NOW);
        let at = |timestamp: DateTime<Utc>| {
            UsageRecord::default().decide(
                Report {
                    timestamp,
                    ..Report::valid()
                }
                .command(),
            )
        };
        assert!(at(now + TimeDelta::minutes(5)).is_ok());
        assert!(at(now).is_ok());
        assert!(at(now - TimeDelta::days(35)).is_ok());
        for bad in [
            now + TimeDelta::minutes(5) + TimeDelta::seconds(1),
            now + TimeDelta::days(400),
            now - TimeDelta::days(35) - TimeDelta::seconds(1),
            now - TimeDelta::days(4000),
        ] {
            let error = at(bad).expect_err("rejected");
            assert_validation(&error, "timestamp");
        }
    }

    #[test]
    fn an_active_subscription_without_an_anchor_is_not_active() {
        let mut subscription = context(SubscriptionStatus::Active);
        subscription.anchor = None;
        let error = record_error(Report {
            subscription,
            ..Report::valid()
        });
        assert_eq!(
            error,
            DomainError::validation("subscription_id", "not active")
        );
    }

    #[test]
    fn properties_have_at_most_50_keys() {
        let many = |count: usize| {
            (0..count)
                .map(|i| (format!("k{i}"), json!(i)))
                .collect::<serde_json::Map<_, _>>()
        };
        let error = record_error(Report {
            properties: many(51),
            ..Report::valid()
        });
        assert_validation(&error, "properties");
        let report = Report {
            properties: many(50),
            ..Report::valid()
        };
        assert!(UsageRecord::default().decide(report.command()).is_ok());
    }

    #[test]
    fn a_report_with_many_faults_names_them_in_the_documented_order() {
        let mut report = Report {
            transaction_id: String::new(),
            record_id: String::new(),
            subscription: context(SubscriptionStatus::Suspended),
            meter: "gpu_minutes".to_owned(),
            quantity: dec("-1"),
            timestamp: t(NOW) + TimeDelta::hours(1),
            properties: (0..60).map(|i| (format!("k{i}"), json!(i))).collect(),
            now: t(NOW),
        };
        report.subscription.anchor = None;
        let field_of = |report: &Report| match record_error(report.clone()) {
            DomainError::Validation { field, .. } => field,
            DomainError::InvalidTransition { aggregate, .. } => aggregate.as_str().to_owned(),
            other => panic!("{other:?}"),
        };
        assert_eq!(field_of(&report), "transaction_id");
        report.transaction_id = "tx_1".to_owned();
        assert_eq!(field_of(&report), "record_id");
        report.record_id = "rec_1".to_owned();
        assert_eq!(field_of(&report), "subscription");
        report.subscription.status = SubscriptionStatus::Active;
        assert_eq!(field_of(&report), "meter");
        report.meter = "api_calls".to_owned();
        assert_eq!(field_of(&report), "quantity");
        report.quantity = dec("1");
        assert_eq!(field_of(&report), "timestamp");
        report.timestamp = t(WHEN);
        assert_eq!(field_of(&report), "subscription_id");
        report.subscription.anchor = Some(t(ANCHOR));
        assert_eq!(field_of(&report), "properties");
        report.properties = properties();
        assert!(UsageRecord::default().decide(report.command()).is_ok());
    }

    #[test]
    fn a_void_needs_a_reason_of_1_to_500_characters() {
        let recorded = state(Some(UsageStatus::Recorded));
        for bad in [String::new(), "  ".to_owned(), "r".repeat(501)] {
            let error = recorded
                .decide(UsageCommand::Void {
                    reason: bad,
                    at: t(LATER),
                })
                .expect_err("rejected");
            assert_validation(&error, "reason");
        }
        assert!(recorded
            .decide(UsageCommand::Void {
                reason: "r".repeat(500),
                at: t(LATER),
            })
            .is_ok());
    }

    #[test]
    fn mark_billed_needs_an_invoice_id() {
        let error = state(Some(UsageStatus::Recorded))
            .decide(UsageCommand::MarkBilled {
                invoice_id: String::new(),
                at: t(LATER),
            })
            .expect_err("rejected");
        assert_validation(&error, "invoice_id");
    }

    // -----------------------------------------------------------------------
    // Windows
    // -----------------------------------------------------------------------

    fn closed(start: &str, end: &str) -> UsageWindow {
        UsageWindow {
            start: t(start),
            end: Some(t(end)),
        }
    }

    #[test]
    fn monthly_windows_anchored_on_the_31st_clamp_across_february() {
        let anchor = t(ANCHOR);
        for (at, start, end) in [
            (ANCHOR, ANCHOR, "2025-02-28T10:00:00Z"),
            ("2025-02-15T00:00:00Z", ANCHOR, "2025-02-28T10:00:00Z"),
            ("2025-02-28T09:59:59Z", ANCHOR, "2025-02-28T10:00:00Z"),
            (
                "2025-02-28T10:00:00Z",
                "2025-02-28T10:00:00Z",
                "2025-03-31T10:00:00Z",
            ),
            (
                "2025-03-31T10:00:00Z",
                "2025-03-31T10:00:00Z",
                "2025-04-30T10:00:00Z",
            ),
            (
                "2028-02-29T12:00:00Z",
                "2028-02-29T10:00:00Z",
                "2028-03-31T10:00:00Z",
            ),
        ] {
            let window = usage_window(anchor, ResetCadence::Monthly, t(at));
            assert_eq!(window, closed(start, end), "{at}");
            assert!(window.contains(t(at)), "{at}");
        }
    }

    #[test]
    fn yearly_windows_follow_the_anchor_year_and_clamp_feb_29() {
        let anchor = t("2024-02-29T00:00:00Z");
        assert_eq!(
            usage_window(anchor, ResetCadence::Yearly, t("2024-12-31T23:59:59Z")),
            closed("2024-02-29T00:00:00Z", "2025-02-28T00:00:00Z")
        );
        assert_eq!(
            usage_window(anchor, ResetCadence::Yearly, t("2025-03-01T00:00:00Z")),
            closed("2025-02-28T00:00:00Z", "2026-02-28T00:00:00Z")
        );
        assert_eq!(
            usage_window(anchor, ResetCadence::Yearly, t("2028-02-29T00:00:00Z")),
            closed("2028-02-29T00:00:00Z", "2029-02-28T00:00:00Z")
        );
    }

    #[test]
    fn a_lifetime_window_starts_at_the_anchor_and_never_ends() {
        let anchor = t(ANCHOR);
        let lifetime = UsageWindow {
            start: anchor,
            end: None,
        };
        for at in [ANCHOR, "2099-12-31T23:59:59Z", "2020-01-01T00:00:00Z"] {
            assert_eq!(
                usage_window(anchor, ResetCadence::Lifetime, t(at)),
                lifetime
            );
        }
        assert!(lifetime.contains(anchor));
        assert!(lifetime.contains(t("2999-01-01T00:00:00Z")));
        assert!(!lifetime.contains(anchor - TimeDelta::seconds(1)));
    }

    #[test]
    fn a_time_before_the_anchor_gets_the_first_window() {
        let anchor = t(ANCHOR);
        let before = t("2024-06-01T00:00:00Z");
        assert_eq!(
            usage_window(anchor, ResetCadence::Monthly, before),
            closed(ANCHOR, "2025-02-28T10:00:00Z")
        );
        assert_eq!(
            usage_window(anchor, ResetCadence::Yearly, before),
            closed(ANCHOR, "2026-01-31T10:00:00Z")
        );
    }

    #[test]
    fn a_window_is_half_open() {
        let window = window();
        assert!(window.contains(window.start));
        assert!(window.contains(t("2025-03-31T09:59:59Z")));
        assert!(!window.contains(t("2025-03-31T10:00:00Z")));
        assert!(!window.contains(window.start - TimeDelta::seconds(1)));
    }

    #[test]
    fn a_record_counts_in_its_meters_window() {
        for (meter, expected) in [
            ("api_calls", window()),
            ("storage_gb", closed(ANCHOR, "2026-01-31T10:00:00Z")),
            (
                "projects",
                UsageWindow {
                    start: t(ANCHOR),
                    end: None,
                },
            ),
        ] {
            let report = Report {
                meter: meter.to_owned(),
                ..Report::valid()
            };
            let events = UsageRecord::default()
                .decide(report.command())
                .expect("accepted");
            let [UsageEvent::UsageRecorded { window, .. }] = events.as_slice() else {
                panic!("{meter}: {events:?}");
            };
            assert_eq!(*window, expected, "{meter}");
        }
    }

    // -----------------------------------------------------------------------
    // Names and wire forms
    // -----------------------------------------------------------------------

    #[test]
    fn names_statuses_and_versions() {
        assert_eq!(Report::valid().command().name(), "record_usage");
        assert_eq!(void().name(), "void");
        assert_eq!(mark_billed().name(), "mark_billed");
        for status in UsageStatus::ALL {
            assert_eq!(
                serde_json::to_value(status).expect("serialize"),
                json!(status.as_str())
            );
            assert_eq!(
                serde_json::from_value::<UsageStatus>(json!(status.as_str())).expect("parse"),
                status
            );
        }
        for event in [recorded(), voided(), billed()] {
            assert_eq!(event.event_type(), event.name());
            assert_eq!(event.event_version(), EVENT_VERSION);
        }
    }

    #[test]
    fn every_event_round_trips_through_json_with_string_quantities() {
        let lifetime = UsageEvent::UsageRecorded {
            record_id: "rec_2".to_owned(),
            transaction_id: "tx_2".to_owned(),
            subscription_id: "sub_1".to_owned(),
            meter: "projects".to_owned(),
            quantity: dec("0.000000000001"),
            timestamp: t(WHEN),
            window: UsageWindow {
                start: t(ANCHOR),
                end: None,
            },
            properties: serde_json::Map::new(),
            recorded_at: t(NOW),
        };
        for event in [recorded(), voided(), billed(), lifetime] {
            let value = serde_json::to_value(&event).expect("serialize");
            let object = value.as_object().expect("externally tagged");
            assert_eq!(object.len(), 1);
            let body = &object[event.name()];
            assert!(body["quantity"].is_string(), "{value}");
            assert!(body["window"]["start"].is_string(), "{value}");
            assert_eq!(
                serde_json::from_value::<UsageEvent>(value.clone()).expect("parse"),
                event
            );
        }
        assert_eq!(
            serde_json::to_value(recorded()).expect("serialize"),
            json!({"UsageRecorded": {
                "record_id": "rec_1",
                "transaction_id": "tx_1",
                "subscription_id": "sub_1",
                "meter": "api_calls",
                "quantity": "2.5",
                "timestamp": "2025-03-10T11:00:00Z",
                "window": {"start": "2025-02-28T10:00:00Z", "end": "2025-03-31T10:00:00Z"},
                "properties": {"region": "eu-west"},
                "recorded_at": "2025-03-10T12:00:00Z"
            }})
        );
        // The aggregate state is stored in snapshots too.
        for status in [
            None,
            Some(UsageStatus::Recorded),
            Some(UsageStatus::Billed),
            Some(UsageStatus::Voided),
        ] {
            let record = state(status);
            let json = serde_json::to_string(&record).expect("serialize");
            assert_eq!(
                serde_json::from_str::<UsageRecord>(&json).expect("parse"),
                record
            );
        }
    }

    // -----------------------------------------------------------------------
    // Totals
    // -----------------------------------------------------------------------

    #[test]
    fn recording_adds_voiding_subtracts_and_billing_keeps_the_total() {
        let delta = |quantity: &str, records: i64| TotalDelta {
            subscription_id: "sub_1".to_owned(),
            meter: "api_calls".to_owned(),
            window: window(),
            quantity: dec(quantity),
            records,
        };
        assert_eq!(total_delta(&recorded()), Some(delta("2.5", 1)));
        assert_eq!(total_delta(&voided()), Some(delta("-2.5", -1)));
        assert_eq!(total_delta(&billed()), None);

        let start = window().start;
        let mut totals = UsageTotals::default();
        assert_eq!(totals.total("sub_1", "api_calls", start), (dec("0"), 0));
        totals.apply(&delta("2.5", 1));
        totals.apply(&delta("0.75", 1));
        assert_eq!(totals.total("sub_1", "api_calls", start), (dec("3.25"), 2));
        assert_eq!(totals.total("sub_1", "storage_gb", start), (dec("0"), 0));
        assert_eq!(totals.total("sub_2", "api_calls", start), (dec("0"), 0));
        totals.apply(&delta("-2.5", -1));
        assert_eq!(totals.total("sub_1", "api_calls", start), (dec("0.75"), 1));
        totals.apply(&delta("-0.75", -1));
        assert_eq!(totals, UsageTotals::default());
        assert_eq!(totals.iter().count(), 0);
    }

    /// One step of a random sequence.
    #[derive(Debug, Clone)]
    enum Op {
        Record {
            subscription: usize,
            meter: usize,
            quantity: Decimal,
            /// Seconds after the subscription's anchor that the usage happened.
            offset_seconds: i64,
            /// Seconds between the usage and its report; negative = ahead.
            lag_seconds: i64,
            /// Reuses an earlier record id: a retried report.
            retry_of: Option<usize>,
        },
        Void {
            target: usize,
            blank_reason: bool,
        },
        MarkBilled {
            target: usize,
        },
    }

    /// The subscriptions a sequence reports for: two that accept usage (one
    /// anchored on the 31st, one on Feb 29) and one suspended.
    fn subscriptions() -> [SubscriptionContext; 3] {
        let mut past_due = context(SubscriptionStatus::PastDue);
        past_due.subscription_id = "sub_2".to_owned();
        past_due.anchor = Some(t("2024-02-29T00:00:00Z"));
        let mut suspended = context(SubscriptionStatus::Suspended);
        suspended.subscription_id = "sub_3".to_owned();
        [context(SubscriptionStatus::Active), past_due, suspended]
    }

    /// The meters a sequence reports on; the last one is not on the plan.
    const METERS: [&str; 4] = ["api_calls", "storage_gb", "projects", "gpu_minutes"];

    fn op() -> impl Strategy<Value = Op> {
        let quantity = (
            prop_oneof![9 => Just(false), 1 => Just(true)],
            0i64..5_000_000,
            0u32..6,
        )
            .prop_map(|(negative, mantissa, scale)| {
                let quantity = Decimal::new(mantissa, scale);
                if negative {
                    -quantity
                } else {
                    quantity
                }
            });
        let record = (
            prop_oneof![3 => 0usize..2, 1 => Just(2usize)],
            0usize..4,
            quantity,
            0i64..(800 * 86_400),
            prop_oneof![9 => -200i64..(30 * 86_400), 1 => -900i64..(40 * 86_400)],
            prop_oneof![9 => Just(None), 1 => (0usize..1000).prop_map(Some)],
        )
            .prop_map(
                |(subscription, meter, quantity, offset_seconds, lag_seconds, retry_of)| {
                    Op::Record {
                        subscription,
                        meter,
                        quantity,
                        offset_seconds,
                        lag_seconds,
                        retry_of,
                    }
                },
            );
        prop_oneof![
            4 => record,
            2 => (0usize..1000, prop_oneof![9 => Just(false), 1 => Just(true)])
                .prop_map(|(target, blank_reason)| Op::Void { target, blank_reason }),
            1 => (0usize..1000).prop_map(|target| Op::MarkBilled { target }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn folded_totals_equal_the_sums_over_records_not_voided(
            ops in prop::collection::vec(op(), 1..120),
        ) {
            let subscriptions = subscriptions();
            let mut records: BTreeMap<String, UsageRecord> = BTreeMap::new();
            let mut ids: Vec<String> = Vec::new();
            let mut totals = UsageTotals::default();
            for (step, op) in ops.iter().enumerate() {
                let (id, command) = match op {
                    Op::Record {
                        subscription,
                        meter,
                        quantity,
                        offset_seconds,
                        lag_seconds,
                        retry_of,
                    } => {
                        let id = match retry_of {
                            Some(index) if !ids.is_empty() => ids[index % ids.len()].clone(),
                            Some(_) | None => format!("rec_{step}"),
                        };
                        let subscription = subscriptions[*subscription].clone();
                        let anchor = subscription.anchor.expect("fixture anchors");
                        let timestamp = anchor + TimeDelta::seconds(*offset_seconds);
                        let command = UsageCommand::Record {
                            record_id: id.clone(),
                            transaction_id: format!("tx_{id}"),
                            subscription,
                            meter: METERS[*meter].to_owned(),
                            quantity: *quantity,
                            timestamp,
                            properties: serde_json::Map::new(),
                            now: timestamp + TimeDelta::seconds(*lag_seconds),
                        };
                        (id, command)
                    }
                    Op::Void { target, blank_reason } => {
                        if ids.is_empty() {
                            continue;
                        }
                        let reason = if *blank_reason { "" } else { "wrong meter" };
                        let command = UsageCommand::Void {
                            reason: reason.to_owned(),
                            at: t(LATER),
                        };
                        (ids[target % ids.len()].clone(), command)
                    }
                    Op::MarkBilled { target } => {
                        if ids.is_empty() {
                            continue;
                        }
                        let command = UsageCommand::MarkBilled {
                            invoice_id: "inv_1".to_owned(),
                            at: t(LATER),
                        };
                        (ids[target % ids.len()].clone(), command)
                    }
                };
                if !ids.contains(&id) {
                    ids.push(id.clone());
                }
                let record = records.entry(id).or_default();
                let Ok(events) = record.decide(command) else {
                    continue;
                };
                for event in &events {
                    record.evolve(event);
                    if let Some(delta) = total_delta(event) {
                        totals.apply(&delta);
                    }
                }
            }

            let mut expected: BTreeMap<TotalKey, (Decimal, i64)> = BTreeMap::new();
            for record in records.values() {
                let counted = match record.status {
                    None | Some(UsageStatus::Voided) => false,
                    Some(UsageStatus::Recorded | UsageStatus::Billed) => true,
                };
                if let Some(status) = record.status {
                    // Every recorded record counts in the window of its meter
                    // that contains its timestamp.
                    let subscription = subscriptions
                        .iter()
                        .find(|s| s.subscription_id == record.subscription_id)
                        .expect("a fixture subscription");
                    prop_assert_ne!(subscription.status, SubscriptionStatus::Suspended);
                    let reset = subscription.plan.meter(&record.meter).expect("a plan meter").reset;
                    let timestamp = record.timestamp.expect("recorded");
                    let window = record.window.clone().expect("recorded");
                    prop_assert!(window.contains(timestamp), "{:?} {:?}", status, record);
                    prop_assert_eq!(
                        &window,
                        &usage_window(subscription.anchor.expect("anchor"), reset, timestamp)
                    );
                }
                if counted {
                    let window = record.window.as_ref().expect("recorded");
                    let key = (record.subscription_id.clone(), record.meter.clone(), window.start);
                    let entry = expected.entry(key).or_insert((Decimal::ZERO, 0));
                    entry.0 += record.quantity;
                    entry.1 += 1;
                }
            }
            for ((subscription_id, meter, start), value) in &expected {
                prop_assert_eq!(totals.total(subscription_id, meter, *start), *value);
            }
            let folded: BTreeMap<TotalKey, (Decimal, i64)> =
                totals.iter().map(|(key, value)| (key.clone(), *value)).collect();
            prop_assert_eq!(folded, expected);
        }
    }
}
