//! The `Subscription` aggregate: a customer on a plan with a seat count, moving
//! Draft → (Trialing →) Active ⇄ PastDue / Suspended → Canceled (terminal). It
//! owns the billing-period clock (anniversary billing from the activation
//! anchor, or from the end of the trial), seat limits, plan changes with
//! proration, and the rating window that a renewal closes.
//!
//! A trial has no billing period: nothing is billed while it runs. Ending it
//! (`EndTrial`, by the clock at `trial_end` or earlier on request) activates
//! the subscription with its anchor and first period at the trial's end, or
//! cancels it when a cancellation was scheduled for the end of the trial.
//!
//! The subscription keeps a copy of its plan's terms, so deciding a seat change
//! or a proration never needs the plan aggregate; the command layer loads the
//! target plan for a change and passes it in as a [`PlanRef`].

use chrono::{DateTime, Utc};
use rust_decimal::{Decimal, RoundingStrategy};
use serde::{Deserialize, Serialize};

use crate::coupon::{AppliedDiscount, CouponOff, CouponRef};
use crate::money::round_to_minor;
use crate::period::{checked_period_at, checked_period_containing};
use crate::plan::{is_valid_meter_key, validate_id, validate_trial_days};
use crate::AggregateKind;
use crate::{Currency, DomainError, Period, PlanTerms};

/// The longest customer id, in characters.
pub const MAX_CUSTOMER_ID_CHARS: usize = 128;
/// The longest cancellation reason or suspension note, in characters.
pub const MAX_NOTE_CHARS: usize = 1_000;
/// Decimal places kept in a proration fraction: exact enough for any period
/// length in seconds, small enough to stay far from `Decimal`'s 28 digits.
pub const FRACTION_PLACES: u32 = 12;

/// Where a subscription is in its life. `Canceled` is terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubscriptionStatus {
    Draft,
    Trialing,
    Active,
    PastDue,
    Suspended,
    Canceled,
}

impl SubscriptionStatus {
    /// Every status, for tests and tables.
    pub const ALL: [SubscriptionStatus; 6] = [
        SubscriptionStatus::Draft,
        SubscriptionStatus::Trialing,
        SubscriptionStatus::Active,
        SubscriptionStatus::PastDue,
        SubscriptionStatus::Suspended,
        SubscriptionStatus::Canceled,
    ];

    /// The snake_case name ("draft", "past_due", …), as in the API.
    pub fn as_str(&self) -> &'static str {
        match self {
            SubscriptionStatus::Draft => "draft",
            SubscriptionStatus::Trialing => "trialing",
            SubscriptionStatus::Active => "active",
            SubscriptionStatus::PastDue => "past_due",
            SubscriptionStatus::Suspended => "suspended",
            SubscriptionStatus::Canceled => "canceled",
        }
    }
}

/// Why a subscription is suspended.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum SuspendReason {
    Manual {
        #[serde(default)]
        note: Option<String>,
    },
    NonPayment,
    QuotaExceeded {
        meter: String,
    },
}

impl SuspendReason {
    fn validate(&self) -> Result<(), DomainError> {
        match self {
            SuspendReason::Manual { note: Some(note) } => validate_note("note", note),
            SuspendReason::Manual { note: None } | SuspendReason::NonPayment => Ok(()),
            SuspendReason::QuotaExceeded { meter } => {
                if is_valid_meter_key(meter) {
                    Ok(())
                } else {
                    Err(DomainError::validation("meter", "not a valid meter key"))
                }
            }
        }
    }
}

/// The current suspension of a suspended subscription.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Suspension {
    pub reason: SuspendReason,
    pub since: DateTime<Utc>,
}

/// Whether a plan or seat change is prorated over the rest of the period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProrationMode {
    Prorate,
    None,
}

/// When a cancellation takes effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CancelWhen {
    Now,
    PeriodEnd,
}

/// A plan as the command layer loaded it, passed into a subscription command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanRef {
    pub plan_id: String,
    pub terms: PlanTerms,
    /// False when the plan is archived: no new subscriptions or changes to it.
    pub active: bool,
}

/// The money side of a prorated change, for invoicing: credit for the unused
/// part of the old price, charge for the remaining part of the new one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProrationFigures {
    /// The billing period the change falls in.
    pub period: Period,
    /// When the change took effect (clamped into `period`).
    pub at: DateTime<Utc>,
    /// Remaining / total seconds of the period, to [`FRACTION_PLACES`] places.
    #[serde(with = "rust_decimal::serde::str")]
    pub fraction: Decimal,
    /// `-round(old recurring × fraction)`; zero or negative.
    #[serde(with = "rust_decimal::serde::str")]
    pub credit: Decimal,
    /// `round(new recurring × fraction)`; zero or positive.
    #[serde(with = "rust_decimal::serde::str")]
    pub charge: Decimal,
    /// `credit + charge`.
    #[serde(with = "rust_decimal::serde::str")]
    pub net: Decimal,
    pub currency: Currency,
}

impl ProrationFigures {
    /// Prorates a change from `old_recurring` to `new_recurring` (per-period
    /// amounts) at `at` within `period`. A time outside the period is clamped to
    /// it: before the start prorates the whole period, after the end nothing.
    pub fn compute(
        period: Period,
        at: DateTime<Utc>,
        old_recurring: Decimal,
        new_recurring: Decimal,
        currency: Currency,
    ) -> ProrationFigures {
        let at = at.clamp(period.start, period.end);
        let total_seconds = period.length_seconds();
        let remaining_seconds = (period.end - at).num_seconds();
        let fraction = if total_seconds <= 0 {
            Decimal::ZERO
        } else {
            (Decimal::from(remaining_seconds) / Decimal::from(total_seconds))
                .round_dp_with_strategy(FRACTION_PLACES, RoundingStrategy::MidpointAwayFromZero)
        };
        let credit = round_to_minor(-(old_recurring * fraction), currency);
        let charge = round_to_minor(new_recurring * fraction, currency);
        ProrationFigures {
            period,
            at,
            fraction,
            credit,
            charge,
            net: round_to_minor(credit + charge, currency),
            currency,
        }
    }
}

/// A redeemed coupon on a subscription: what it takes off and for how many
/// more invoiced periods (`None`: for ever). Each activation or renewal
/// that carries it counts one period; at zero it is gone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Discount {
    pub coupon_id: String,
    pub code: String,
    pub off: CouponOff,
    pub start: DateTime<Utc>,
    pub periods_left: Option<u32>,
}

impl Discount {
    /// What one billing event's invoice takes.
    pub fn applied(&self) -> AppliedDiscount {
        AppliedDiscount {
            coupon_id: self.coupon_id.clone(),
            code: self.code.clone(),
            off: self.off.clone(),
        }
    }
}

/// A customer's subscription. `status == None` means it was never created.
#[derive(Default, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Subscription {
    pub id: Option<String>,
    pub customer_id: String,
    pub plan_id: String,
    /// The terms of the current plan, copied when the plan was chosen.
    pub plan: Option<PlanTerms>,
    pub seats: u32,
    pub status: Option<SubscriptionStatus>,
    /// The trial length the subscription asked for itself, overriding the
    /// plan's when positive.
    #[serde(default)]
    pub trial_days: Option<u32>,
    /// When the trial began (the activation) and ends (or ended, once it
    /// was ended early); `None` for a subscription that never trialed.
    #[serde(default)]
    pub trial_start: Option<DateTime<Utc>>,
    #[serde(default)]
    pub trial_end: Option<DateTime<Utc>>,
    /// The activation time, or the end of the trial; every billing period is
    /// computed from it.
    pub anchor: Option<DateTime<Utc>>,
    pub current_period: Option<Period>,
    pub suspension: Option<Suspension>,
    pub cancel_at_period_end: bool,
    /// Prorated changes in the current period, billed in arrears at renewal.
    #[serde(default)]
    pub pending_prorations: Vec<ProrationFigures>,
    /// The unpaid invoice that made the subscription past due.
    #[serde(default)]
    pub past_due_invoice: Option<String>,
    /// The redeemed coupon its next invoices take, if any.
    #[serde(default)]
    pub discount: Option<Discount>,
    /// Its own tax rates, before the plan's and the customer's.
    #[serde(default)]
    pub tax_rate_ids: Vec<String>,
    pub created_at: Option<DateTime<Utc>>,
    pub activated_at: Option<DateTime<Utc>>,
    pub canceled_at: Option<DateTime<Utc>>,
    pub cancel_reason: Option<String>,
}

/// How far ahead an activation may be dated.
pub const MAX_ACTIVATION_AHEAD_MONTHS: u32 = 12;

/// What can be asked of a subscription. Every command carries its time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum SubscriptionCommand {
    /// Creates a draft. `seats` defaults to the plan's minimum.
    Create {
        subscription_id: String,
        customer_id: String,
        plan: PlanRef,
        seats: Option<u32>,
        /// Days of trial, replacing the plan's when positive.
        trial_days: Option<u32>,
        /// The subscription's own tax rates, before the plan's and the customer's.
        tax_rate_ids: Vec<String>,
        at: DateTime<Utc>,
    },
    /// Draft → Active, or Draft → Trialing when the subscription (or else
    /// its plan) has trial days; `at` becomes the billing anchor, or the
    /// start of the trial. `now` is the clock
    /// when it was asked: `at` may lie at most one billing interval before
    /// it (one catch-up period, billed as one invoice) and at most a year
    /// after it.
    Activate {
        at: DateTime<Utc>,
        now: DateTime<Utc>,
    },
    /// Active only: moves to another active plan in the same currency and interval.
    ChangePlan {
        plan: PlanRef,
        proration: ProrationMode,
        at: DateTime<Utc>,
    },
    /// Active only: a new seat count within the plan's limits.
    ChangeSeats {
        seats: u32,
        proration: ProrationMode,
        at: DateTime<Utc>,
    },
    /// Active | PastDue → Suspended; a no-op when already suspended.
    Suspend {
        reason: SuspendReason,
        at: DateTime<Utc>,
    },
    /// Suspended → Active.
    Resume { at: DateTime<Utc> },
    /// Active → PastDue because `invoice_id` went unpaid; a no-op when past due.
    MarkPastDue {
        invoice_id: String,
        at: DateTime<Utc>,
    },
    /// PastDue → Active once `invoice_id`, the invoice that made it past
    /// due, is paid; a no-op otherwise.
    ClearPastDue {
        invoice_id: String,
        at: DateTime<Utc>,
    },
    /// Cancels now, or schedules the cancellation for the period end.
    Cancel {
        when: CancelWhen,
        reason: Option<String>,
        at: DateTime<Utc>,
    },
    /// Closes the ended period and opens the next, or carries out a scheduled
    /// cancellation.
    Renew { at: DateTime<Utc> },
    /// Trialing → Active (or Canceled, when a cancellation is scheduled) at
    /// `at`, or at `trial_end` when `at` is later: the scheduler sends the
    /// clock's time once the trial is over, a client ends it early.
    EndTrial { at: DateTime<Utc> },
    /// Any status but Canceled: the redeemed `coupon` discounts the next
    /// invoices, replacing a discount there was. The command layer appends
    /// it with the coupon's `CouponRedeemed`, which checks the coupon.
    ApplyDiscount {
        coupon: CouponRef,
        at: DateTime<Utc>,
    },
    /// Any status but Canceled: future invoices take no discount; a no-op
    /// without one.
    RemoveDiscount { at: DateTime<Utc> },
}

impl SubscriptionCommand {
    /// The snake_case command name used in `InvalidTransition`.
    pub fn name(&self) -> &'static str {
        match self {
            SubscriptionCommand::Create { .. } => "create",
            SubscriptionCommand::Activate { .. } => "activate",
            SubscriptionCommand::ChangePlan { .. } => "change_plan",
            SubscriptionCommand::ChangeSeats { .. } => "change_seats",
            SubscriptionCommand::Suspend { .. } => "suspend",
            SubscriptionCommand::Resume { .. } => "resume",
            SubscriptionCommand::MarkPastDue { .. } => "mark_past_due",
            SubscriptionCommand::ClearPastDue { .. } => "clear_past_due",
            SubscriptionCommand::Cancel { .. } => "cancel",
            SubscriptionCommand::Renew { .. } => "renew",
            SubscriptionCommand::EndTrial { .. } => "end_trial",
            SubscriptionCommand::ApplyDiscount { .. } => "apply_discount",
            SubscriptionCommand::RemoveDiscount { .. } => "remove_discount",
        }
    }
}

/// What happened to a subscription. Stored forever: see [`EVENT_VERSION`].
/// Each event carries the resulting values a projector needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum SubscriptionEvent {
    SubscriptionCreated {
        subscription_id: String,
        customer_id: String,
        plan_id: String,
        plan: PlanTerms,
        seats: u32,
        created_at: DateTime<Utc>,
        /// Absent in events stored before trials existed, and when not asked for.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        trial_days: Option<u32>,
        /// Absent in events stored before taxes existed, and when none.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        tax_rate_ids: Vec<String>,
    },
    /// Draft → Trialing: activated with a trial, nothing billed until `trial_end`.
    TrialStarted {
        trial_start: DateTime<Utc>,
        trial_end: DateTime<Utc>,
    },
    /// The trial is over at `ended_at` (its `trial_end`, or earlier when ended
    /// on request); `SubscriptionActivated` or `SubscriptionCanceled` follows
    /// in the same append.
    TrialEnded {
        ended_at: DateTime<Utc>,
    },
    /// Opens the first period; the plan and seats it starts on are what the
    /// first invoice bills (absent in events stored before they were added).
    SubscriptionActivated {
        anchor: DateTime<Utc>,
        period: Period,
        activated_at: DateTime<Utc>,
        #[serde(default)]
        plan: Option<PlanTerms>,
        #[serde(default)]
        seats: Option<u32>,
        /// The discount the first invoice takes (absent when none, as in
        /// events from before coupons existed).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        discount: Option<AppliedDiscount>,
    },
    PlanChanged {
        from_plan_id: String,
        to_plan_id: String,
        plan: PlanTerms,
        proration: Option<ProrationFigures>,
        changed_at: DateTime<Utc>,
    },
    SeatsChanged {
        from: u32,
        to: u32,
        proration: Option<ProrationFigures>,
        changed_at: DateTime<Utc>,
    },
    SubscriptionSuspended {
        reason: SuspendReason,
        suspended_at: DateTime<Utc>,
    },
    SubscriptionResumed {
        resumed_at: DateTime<Utc>,
    },
    SubscriptionPastDue {
        invoice_id: String,
        at: DateTime<Utc>,
    },
    /// The invoice that made it past due was paid: back to Active.
    PastDueCleared {
        invoice_id: String,
        at: DateTime<Utc>,
    },
    CancellationScheduled {
        reason: Option<String>,
        cancel_at: DateTime<Utc>,
        scheduled_at: DateTime<Utc>,
    },
    SubscriptionCanceled {
        reason: Option<String>,
        canceled_at: DateTime<Utc>,
    },
    /// The rating window: usage in `closed_period` can now be billed. It
    /// carries what the renewal invoice needs: the plan and seats for the new
    /// period (billed in advance) and the closed period's prorated changes
    /// (billed in arrears). Events stored before these fields existed read
    /// them as absent.
    PeriodRenewed {
        closed_period: Period,
        new_period: Period,
        renewed_at: DateTime<Utc>,
        #[serde(default)]
        plan_id: Option<String>,
        #[serde(default)]
        plan: Option<PlanTerms>,
        #[serde(default)]
        seats: Option<u32>,
        #[serde(default)]
        prorations: Vec<ProrationFigures>,
        /// The discount this renewal's invoice takes (absent when none, as
        /// in events from before coupons existed).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        discount: Option<AppliedDiscount>,
    },
    /// A coupon was redeemed for the subscription's next invoices.
    DiscountApplied {
        discount: Discount,
    },
    DiscountRemoved {
        coupon_id: String,
        removed_at: DateTime<Utc>,
    },
}

impl SubscriptionEvent {
    /// The variant name, used as the stored event type.
    pub fn name(&self) -> &'static str {
        match self {
            SubscriptionEvent::SubscriptionCreated { .. } => "SubscriptionCreated",
            SubscriptionEvent::TrialStarted { .. } => "TrialStarted",
            SubscriptionEvent::TrialEnded { .. } => "TrialEnded",
            SubscriptionEvent::SubscriptionActivated { .. } => "SubscriptionActivated",
            SubscriptionEvent::PlanChanged { .. } => "PlanChanged",
            SubscriptionEvent::SeatsChanged { .. } => "SeatsChanged",
            SubscriptionEvent::SubscriptionSuspended { .. } => "SubscriptionSuspended",
            SubscriptionEvent::SubscriptionResumed { .. } => "SubscriptionResumed",
            SubscriptionEvent::SubscriptionPastDue { .. } => "SubscriptionPastDue",
            SubscriptionEvent::PastDueCleared { .. } => "PastDueCleared",
            SubscriptionEvent::CancellationScheduled { .. } => "CancellationScheduled",
            SubscriptionEvent::SubscriptionCanceled { .. } => "SubscriptionCanceled",
            SubscriptionEvent::PeriodRenewed { .. } => "PeriodRenewed",
            SubscriptionEvent::DiscountApplied { .. } => "DiscountApplied",
            SubscriptionEvent::DiscountRemoved { .. } => "DiscountRemoved",
        }
    }
}

fn validate_note(field: &str, note: &str) -> Result<(), DomainError> {
    if note.chars().count() > MAX_NOTE_CHARS {
        return Err(DomainError::validation(
            field,
            format!("must be at most {MAX_NOTE_CHARS} characters"),
        ));
    }
    Ok(())
}

pub(crate) fn validate_customer_id(customer_id: &str) -> Result<(), DomainError> {
    if customer_id.trim().is_empty() || customer_id.chars().count() > MAX_CUSTOMER_ID_CHARS {
        return Err(DomainError::validation(
            "customer_id",
            format!("must be 1 to {MAX_CUSTOMER_ID_CHARS} characters"),
        ));
    }
    if customer_id.chars().any(char::is_control) {
        return Err(DomainError::validation(
            "customer_id",
            "must not contain control characters",
        ));
    }
    Ok(())
}

/// A plan that a subscription may move onto: valid terms, not archived.
fn check_target_plan(plan: &PlanRef) -> Result<(), DomainError> {
    validate_id("plan_id", &plan.plan_id)?;
    if !plan.active {
        return Err(DomainError::validation("plan_id", "the plan is archived"));
    }
    plan.terms.validate()
}

impl Subscription {
    /// The terms of the current plan.
    ///
    /// # Panics
    /// On a subscription that was never created.
    pub fn terms(&self) -> &PlanTerms {
        self.plan
            .as_ref()
            .expect("a created subscription has plan terms")
    }

    /// The current billing period.
    ///
    /// # Panics
    /// On a subscription that was never activated.
    fn period(&self) -> Period {
        self.current_period
            .expect("an activated subscription has a period")
    }

    /// The subscription's currency, once created.
    pub fn currency(&self) -> Option<Currency> {
        self.plan.as_ref().map(|terms| terms.currency)
    }

    /// The price of one period at the current plan and seats, once created.
    pub fn recurring_amount(&self) -> Option<Decimal> {
        self.plan
            .as_ref()
            .map(|terms| terms.recurring_amount(self.seats))
    }

    fn invalid(status: SubscriptionStatus, command: &'static str) -> DomainError {
        DomainError::InvalidTransition {
            aggregate: AggregateKind::Subscription,
            from: status.as_str().to_owned(),
            command,
        }
    }

    /// Decides which events `command` causes, or why it is refused. Every
    /// (status, command) pair is listed on purpose.
    pub fn decide(
        &self,
        command: SubscriptionCommand,
    ) -> Result<Vec<SubscriptionEvent>, DomainError> {
        use SubscriptionCommand as C;
        use SubscriptionStatus::{Active, Canceled, Draft, PastDue, Suspended, Trialing};
        let name = command.name();
        match (self.status, command) {
            (
                None,
                C::Create {
                    subscription_id,
                    customer_id,
                    plan,
                    seats,
                    trial_days,
                    tax_rate_ids,
                    at,
                },
            ) => Self::create(
                subscription_id,
                customer_id,
                plan,
                seats,
                trial_days,
                tax_rate_ids,
                at,
            ),
            (
                Some(Draft | Trialing | Active | PastDue | Suspended | Canceled),
                C::Create { .. },
            ) => Err(DomainError::AlreadyExists(AggregateKind::Subscription)),
            (
                None,
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
                | C::RemoveDiscount { .. },
            ) => Err(DomainError::NotFound(AggregateKind::Subscription)),

            (Some(Draft), C::Activate { at, now }) => self.activate(at, now),
            (
                Some(status @ (Trialing | Active | PastDue | Suspended | Canceled)),
                C::Activate { .. },
            ) => Err(Self::invalid(status, name)),

            (
                Some(Active),
                C::ChangePlan {
                    plan,
                    proration,
                    at,
                },
            ) => self.change_plan(plan, proration, at),
            // A trial bills nothing, so there is nothing to prorate: the
            // first invoice bills the plan the trial ends on.
            (Some(Trialing), C::ChangePlan { plan, at, .. }) => {
                self.change_plan(plan, ProrationMode::None, at)
            }
            (Some(status @ (Draft | PastDue | Suspended | Canceled)), C::ChangePlan { .. }) => {
                Err(Self::invalid(status, name))
            }

            (
                Some(Active),
                C::ChangeSeats {
                    seats,
                    proration,
                    at,
                },
            ) => self.change_seats(seats, proration, at),
            (Some(Trialing), C::ChangeSeats { seats, at, .. }) => {
                self.change_seats(seats, ProrationMode::None, at)
            }
            (Some(status @ (Draft | PastDue | Suspended | Canceled)), C::ChangeSeats { .. }) => {
                Err(Self::invalid(status, name))
            }

            // A trial is suspended like a running subscription (a quota's
            // hard cap holds during a trial too); resuming returns to it.
            (Some(Trialing | Active | PastDue), C::Suspend { reason, at }) => {
                reason.validate()?;
                Ok(vec![SubscriptionEvent::SubscriptionSuspended {
                    reason,
                    suspended_at: at,
                }])
            }
            // Suspending a suspended subscription keeps the first suspension.
            (Some(Suspended), C::Suspend { .. }) => Ok(vec![]),
            (Some(status @ (Draft | Canceled)), C::Suspend { .. }) => {
                Err(Self::invalid(status, name))
            }

            (Some(Suspended), C::Resume { at }) => {
                Ok(vec![SubscriptionEvent::SubscriptionResumed { resumed_at: at }])
            }
            (
                Some(status @ (Draft | Trialing | Active | PastDue | Canceled)),
                C::Resume { .. },
            ) => Err(Self::invalid(status, name)),

            (Some(Active), C::MarkPastDue { invoice_id, at }) => {
                validate_id("invoice_id", &invoice_id)?;
                Ok(vec![SubscriptionEvent::SubscriptionPastDue { invoice_id, at }])
            }
            // A second unpaid invoice does not make it more past due.
            (Some(PastDue), C::MarkPastDue { .. }) => Ok(vec![]),
            // A trial has billed nothing that could be past due.
            (Some(status @ (Draft | Trialing | Suspended | Canceled)), C::MarkPastDue { .. }) => {
                Err(Self::invalid(status, name))
            }

            (Some(PastDue), C::ClearPastDue { invoice_id, at }) => {
                validate_id("invoice_id", &invoice_id)?;
                if self.past_due_invoice.as_deref() == Some(invoice_id.as_str()) {
                    Ok(vec![SubscriptionEvent::PastDueCleared { invoice_id, at }])
                } else {
                    // Another invoice keeps it past due.
                    Ok(vec![])
                }
            }
            // Paid while not past due (on time, during a trial, or after a
            // suspension, which only Resume lifts): nothing to clear.
            (Some(Trialing | Active | Suspended), C::ClearPastDue { invoice_id, .. }) => {
                validate_id("invoice_id", &invoice_id)?;
                Ok(vec![])
            }
            (Some(status @ (Draft | Canceled)), C::ClearPastDue { .. }) => {
                Err(Self::invalid(status, name))
            }

            (
                Some(Draft | Trialing | Active | PastDue | Suspended),
                C::Cancel {
                    when: CancelWhen::Now,
                    reason,
                    at,
                },
            )
            // A draft has no period to run out: it ends now.
            | (
                Some(Draft),
                C::Cancel {
                    when: CancelWhen::PeriodEnd,
                    reason,
                    at,
                },
            ) => {
                if let Some(reason) = &reason {
                    validate_note("reason", reason)?;
                }
                Ok(vec![SubscriptionEvent::SubscriptionCanceled {
                    reason,
                    canceled_at: at,
                }])
            }
            // During a trial the term that runs out is the trial: the
            // subscription ends with it, never billed.
            (
                Some(Trialing | Active | PastDue | Suspended),
                C::Cancel {
                    when: CancelWhen::PeriodEnd,
                    reason,
                    at,
                },
            ) => self.schedule_cancellation(reason, at),
            (Some(status @ Canceled), C::Cancel { .. }) => Err(Self::invalid(status, name)),

            (Some(Active | PastDue), C::Renew { at }) => self.renew(at),
            // Suspended during its trial, it has no period to renew yet.
            (Some(status @ Suspended), C::Renew { at }) => match self.current_period {
                Some(_) => self.renew(at),
                None => Err(Self::invalid(status, name)),
            },
            (Some(status @ (Draft | Trialing | Canceled)), C::Renew { .. }) => {
                Err(Self::invalid(status, name))
            }

            (Some(Trialing), C::EndTrial { at }) => Ok(self.end_trial(at)),
            // A trial suspended is resumed first, then ended.
            (
                Some(status @ (Draft | Active | PastDue | Suspended | Canceled)),
                C::EndTrial { .. },
            ) => Err(Self::invalid(status, name)),

            // A discount waits for the invoices to come: before activation,
            // during a trial, or while collections hold the subscription.
            (
                Some(Draft | Trialing | Active | PastDue | Suspended),
                C::ApplyDiscount { coupon, at },
            ) => self.apply_discount(coupon, at),
            (Some(status @ Canceled), C::ApplyDiscount { .. }) => Err(Self::invalid(status, name)),

            (Some(Draft | Trialing | Active | PastDue | Suspended), C::RemoveDiscount { at }) => {
                Ok(match &self.discount {
                    Some(d) => vec![SubscriptionEvent::DiscountRemoved {
                        coupon_id: d.coupon_id.clone(),
                        removed_at: at,
                    }],
                    None => vec![],
                })
            }
            (Some(status @ Canceled), C::RemoveDiscount { .. }) => Err(Self::invalid(status, name)),
        }
    }

    fn apply_discount(
        &self,
        coupon: CouponRef,
        at: DateTime<Utc>,
    ) -> Result<Vec<SubscriptionEvent>, DomainError> {
        validate_id("coupon_id", &coupon.coupon_id)?;
        // The coupon checks plan and currency too; checked here as well so
        // that a subscription never holds a discount it cannot take.
        let terms = &coupon.terms;
        if !terms.plan_ids.is_empty() && !terms.plan_ids.contains(&self.plan_id) {
            return Err(DomainError::CouponNotApplicable(format!(
                "the coupon does not apply to plan {}",
                self.plan_id
            )));
        }
        if let CouponOff::Amount { currency, .. } = &terms.off {
            if Some(*currency) != self.currency() {
                return Err(DomainError::CouponNotApplicable(format!(
                    "the coupon takes {currency} off, the subscription is billed in {}",
                    self.terms().currency
                )));
            }
        }
        Ok(vec![SubscriptionEvent::DiscountApplied {
            discount: Discount {
                coupon_id: coupon.coupon_id,
                code: terms.code.clone(),
                off: terms.off.clone(),
                start: at,
                periods_left: terms.periods(),
            },
        }])
    }

    /// The discount the invoice of a period opening now takes.
    fn billed_discount(&self) -> Option<AppliedDiscount> {
        self.discount
            .as_ref()
            .filter(|d| d.periods_left != Some(0))
            .map(Discount::applied)
    }

    /// Counts one invoiced period of the discount, when the billing event
    /// carried it.
    fn count_discounted_period(&mut self, carried: &Option<AppliedDiscount>) {
        let Some(carried) = carried else { return };
        let Some(discount) = &mut self.discount else {
            return;
        };
        if discount.coupon_id != carried.coupon_id {
            return;
        }
        if let Some(left) = &mut discount.periods_left {
            *left = left.saturating_sub(1);
            if *left == 0 {
                self.discount = None;
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn create(
        subscription_id: String,
        customer_id: String,
        plan: PlanRef,
        seats: Option<u32>,
        trial_days: Option<u32>,
        tax_rate_ids: Vec<String>,
        at: DateTime<Utc>,
    ) -> Result<Vec<SubscriptionEvent>, DomainError> {
        validate_id("subscription_id", &subscription_id)?;
        crate::tax::validate_rate_ids("tax_rate_ids", &tax_rate_ids)?;
        validate_customer_id(&customer_id)?;
        check_target_plan(&plan)?;
        if let Some(days) = trial_days {
            validate_trial_days("trial_days", days)?;
        }
        let seats = seats.unwrap_or(plan.terms.seats.min);
        plan.terms.seats.check(seats)?;
        Ok(vec![SubscriptionEvent::SubscriptionCreated {
            subscription_id,
            customer_id,
            plan_id: plan.plan_id,
            plan: plan.terms,
            seats,
            created_at: at,
            trial_days,
            tax_rate_ids,
        }])
    }

    fn activate(
        &self,
        at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Vec<SubscriptionEvent>, DomainError> {
        let interval = self.terms().interval;
        crate::time::check_within(
            "at",
            at,
            crate::time::months_before(now, interval.months()),
            crate::time::months_after(now, MAX_ACTIVATION_AHEAD_MONTHS),
            &format!(
                "no earlier than one {} before now and no later than one year ahead",
                interval.as_str()
            ),
        )?;
        let trial_days = self.effective_trial_days();
        if trial_days > 0 {
            let trial_end = at
                .checked_add_signed(chrono::Duration::days(i64::from(trial_days)))
                .filter(|end| crate::time::check_accepted("at", *end).is_ok())
                .ok_or_else(|| DomainError::validation("at", "out of the supported date range"))?;
            return Ok(vec![SubscriptionEvent::TrialStarted {
                trial_start: at,
                trial_end,
            }]);
        }
        Ok(vec![self.activated(at)?])
    }

    /// The trial an activation starts: the subscription's own trial days
    /// when positive, else the plan's; zero means none.
    pub fn effective_trial_days(&self) -> u32 {
        self.trial_days
            .filter(|days| *days > 0)
            .unwrap_or(self.terms().trial_days)
    }

    /// The first period opening at `anchor`, with what its invoice bills.
    fn activated(&self, anchor: DateTime<Utc>) -> Result<SubscriptionEvent, DomainError> {
        let period = checked_period_at(anchor, self.terms().interval, 0)
            .ok_or_else(|| DomainError::validation("at", "out of the supported date range"))?;
        Ok(SubscriptionEvent::SubscriptionActivated {
            anchor,
            period,
            activated_at: anchor,
            plan: Some(self.terms().clone()),
            seats: Some(self.seats),
            discount: self.billed_discount(),
        })
    }

    /// Ends the trial at `at`, clamped into the trial: the subscription
    /// becomes active with its first period from then, or is canceled then
    /// when a cancellation waited for the end of the trial.
    fn end_trial(&self, at: DateTime<Utc>) -> Vec<SubscriptionEvent> {
        let (start, end) = self
            .trial_start
            .zip(self.trial_end)
            .expect("a trialing subscription has its trial");
        let ended_at = at.clamp(start, end);
        let then = if self.cancel_at_period_end {
            SubscriptionEvent::SubscriptionCanceled {
                reason: self.cancel_reason.clone(),
                canceled_at: ended_at,
            }
        } else {
            // The anchor lies within the trial, itself within the accepted
            // range, so its first period always exists.
            self.activated(ended_at)
                .expect("a period within the accepted range")
        };
        vec![SubscriptionEvent::TrialEnded { ended_at }, then]
    }

    /// The end of the term a cancellation "at period end" waits for: the
    /// current period, or the trial when there is no period yet.
    fn term_end(&self) -> DateTime<Utc> {
        match (self.current_period, self.trial_end) {
            (Some(period), _) => period.end,
            (None, Some(trial_end)) => trial_end,
            (None, None) => unreachable!("a running subscription has a period or a trial"),
        }
    }

    /// The anchor of the subscription's usage windows: the billing anchor,
    /// or during a trial the trial's start (so usage of a trial never shares
    /// a window with billed usage).
    pub fn usage_anchor(&self) -> Option<DateTime<Utc>> {
        self.anchor.or(self.trial_start)
    }

    fn prorate(
        &self,
        mode: ProrationMode,
        at: DateTime<Utc>,
        new_terms: &PlanTerms,
        new_seats: u32,
    ) -> Option<ProrationFigures> {
        match mode {
            ProrationMode::None => None,
            ProrationMode::Prorate => Some(ProrationFigures::compute(
                self.period(),
                at,
                self.terms().recurring_amount(self.seats),
                new_terms.recurring_amount(new_seats),
                new_terms.currency,
            )),
        }
    }

    fn change_plan(
        &self,
        plan: PlanRef,
        proration: ProrationMode,
        at: DateTime<Utc>,
    ) -> Result<Vec<SubscriptionEvent>, DomainError> {
        check_target_plan(&plan)?;
        if plan.plan_id == self.plan_id {
            return Err(DomainError::validation(
                "plan_id",
                "the subscription is already on this plan",
            ));
        }
        let current = self.terms();
        if plan.terms.currency != current.currency {
            return Err(DomainError::validation(
                "plan_id",
                format!(
                    "the plan is priced in {}, the subscription in {}",
                    plan.terms.currency, current.currency
                ),
            ));
        }
        // Billing periods are computed from the anchor with the plan's
        // interval; switching interval mid-life would make periods overlap.
        if plan.terms.interval != current.interval {
            return Err(DomainError::validation(
                "plan_id",
                format!(
                    "the plan bills every {}, the subscription every {}",
                    plan.terms.interval.as_str(),
                    current.interval.as_str()
                ),
            ));
        }
        plan.terms.seats.check(self.seats)?;
        let proration = self.prorate(proration, at, &plan.terms, self.seats);
        Ok(vec![SubscriptionEvent::PlanChanged {
            from_plan_id: self.plan_id.clone(),
            to_plan_id: plan.plan_id,
            plan: plan.terms,
            proration,
            changed_at: at,
        }])
    }

    fn change_seats(
        &self,
        seats: u32,
        proration: ProrationMode,
        at: DateTime<Utc>,
    ) -> Result<Vec<SubscriptionEvent>, DomainError> {
        let terms = self.terms();
        terms.seats.check(seats)?;
        if seats == self.seats {
            return Ok(vec![]);
        }
        let proration = self.prorate(proration, at, terms, seats);
        Ok(vec![SubscriptionEvent::SeatsChanged {
            from: self.seats,
            to: seats,
            proration,
            changed_at: at,
        }])
    }

    fn schedule_cancellation(
        &self,
        reason: Option<String>,
        at: DateTime<Utc>,
    ) -> Result<Vec<SubscriptionEvent>, DomainError> {
        if let Some(reason) = &reason {
            validate_note("reason", reason)?;
        }
        // Scheduling twice changes nothing: the period end is the same.
        if self.cancel_at_period_end {
            return Ok(vec![]);
        }
        Ok(vec![SubscriptionEvent::CancellationScheduled {
            reason,
            cancel_at: self.term_end(),
            scheduled_at: at,
        }])
    }

    fn renew(&self, at: DateTime<Utc>) -> Result<Vec<SubscriptionEvent>, DomainError> {
        let closed_period = self.period();
        if at < closed_period.end {
            return Err(DomainError::validation(
                "at",
                format!(
                    "the current period ends at {}",
                    closed_period.end.to_rfc3339()
                ),
            ));
        }
        if self.cancel_at_period_end {
            return Ok(vec![SubscriptionEvent::SubscriptionCanceled {
                reason: self.cancel_reason.clone(),
                canceled_at: closed_period.end,
            }]);
        }
        let anchor = self
            .anchor
            .expect("an activated subscription has an anchor");
        let new_period =
            checked_period_containing(anchor, self.terms().interval, closed_period.end)
                .ok_or_else(|| DomainError::validation("at", "out of the supported date range"))?;
        Ok(vec![SubscriptionEvent::PeriodRenewed {
            closed_period,
            new_period,
            renewed_at: at,
            plan_id: Some(self.plan_id.clone()),
            plan: Some(self.terms().clone()),
            seats: Some(self.seats),
            prorations: self.pending_prorations.clone(),
            discount: self.billed_discount(),
        }])
    }

    fn expect_status(&self, allowed: &[SubscriptionStatus], event: &SubscriptionEvent) {
        assert!(
            self.status.is_some_and(|status| allowed.contains(&status)),
            "{} on a subscription in status {:?}",
            event.name(),
            self.status
        );
    }

    /// Applies an event. Events come from `decide`, so an impossible one is a bug.
    pub fn evolve(&mut self, event: &SubscriptionEvent) {
        use SubscriptionStatus::{Active, Canceled, Draft, PastDue, Suspended, Trialing};
        match event {
            SubscriptionEvent::SubscriptionCreated {
                subscription_id,
                customer_id,
                plan_id,
                plan,
                seats,
                created_at,
                trial_days,
                tax_rate_ids,
            } => {
                assert!(self.status.is_none(), "SubscriptionCreated twice");
                self.trial_days = *trial_days;
                self.tax_rate_ids = tax_rate_ids.clone();
                self.id = Some(subscription_id.clone());
                self.customer_id = customer_id.clone();
                self.plan_id = plan_id.clone();
                self.plan = Some(plan.clone());
                self.seats = *seats;
                self.status = Some(Draft);
                self.created_at = Some(*created_at);
            }
            SubscriptionEvent::TrialStarted {
                trial_start,
                trial_end,
            } => {
                self.expect_status(&[Draft], event);
                self.status = Some(Trialing);
                self.trial_start = Some(*trial_start);
                self.trial_end = Some(*trial_end);
            }
            SubscriptionEvent::TrialEnded { ended_at } => {
                // Activation or cancellation follows; the status moves then.
                self.expect_status(&[Trialing], event);
                self.trial_end = Some(*ended_at);
            }
            SubscriptionEvent::SubscriptionActivated {
                anchor,
                period,
                activated_at,
                discount,
                ..
            } => {
                self.expect_status(&[Draft, Trialing], event);
                self.status = Some(Active);
                self.anchor = Some(*anchor);
                self.current_period = Some(*period);
                self.activated_at = Some(*activated_at);
                self.count_discounted_period(discount);
            }
            SubscriptionEvent::PlanChanged {
                to_plan_id,
                plan,
                proration,
                ..
            } => {
                self.expect_status(&[Trialing, Active], event);
                self.plan_id = to_plan_id.clone();
                self.plan = Some(plan.clone());
                self.pending_prorations.extend(proration.clone());
            }
            SubscriptionEvent::SeatsChanged { to, proration, .. } => {
                self.expect_status(&[Trialing, Active], event);
                self.seats = *to;
                self.pending_prorations.extend(proration.clone());
            }
            SubscriptionEvent::SubscriptionSuspended {
                reason,
                suspended_at,
            } => {
                self.expect_status(&[Trialing, Active, PastDue], event);
                self.status = Some(Suspended);
                self.suspension = Some(Suspension {
                    reason: reason.clone(),
                    since: *suspended_at,
                });
            }
            SubscriptionEvent::SubscriptionResumed { .. } => {
                self.expect_status(&[Suspended], event);
                // Suspended during its trial, it has no period yet.
                self.status = Some(if self.current_period.is_some() {
                    Active
                } else {
                    Trialing
                });
                self.suspension = None;
                self.past_due_invoice = None;
            }
            SubscriptionEvent::SubscriptionPastDue { invoice_id, .. } => {
                self.expect_status(&[Active], event);
                self.status = Some(PastDue);
                self.past_due_invoice = Some(invoice_id.clone());
            }
            SubscriptionEvent::PastDueCleared { .. } => {
                self.expect_status(&[PastDue], event);
                self.status = Some(Active);
                self.past_due_invoice = None;
            }
            SubscriptionEvent::CancellationScheduled { reason, .. } => {
                self.expect_status(&[Trialing, Active, PastDue, Suspended], event);
                self.cancel_at_period_end = true;
                self.cancel_reason = reason.clone();
            }
            SubscriptionEvent::SubscriptionCanceled {
                reason,
                canceled_at,
            } => {
                self.expect_status(&[Draft, Trialing, Active, PastDue, Suspended], event);
                self.status = Some(Canceled);
                self.canceled_at = Some(*canceled_at);
                self.cancel_reason = reason.clone();
                self.cancel_at_period_end = false;
                self.suspension = None;
                self.past_due_invoice = None;
            }
            SubscriptionEvent::PeriodRenewed {
                new_period,
                discount,
                ..
            } => {
                self.expect_status(&[Active, PastDue, Suspended], event);
                self.current_period = Some(*new_period);
                self.pending_prorations.clear();
                self.count_discounted_period(discount);
            }
            SubscriptionEvent::DiscountApplied { discount } => {
                self.expect_status(&[Draft, Trialing, Active, PastDue, Suspended], event);
                self.discount = Some(discount.clone());
            }
            SubscriptionEvent::DiscountRemoved { .. } => {
                self.expect_status(&[Draft, Trialing, Active, PastDue, Suspended], event);
                self.discount = None;
            }
        }
    }
}

crate::cqrs_adapter!(
    Subscription,
    Subscription,
    SubscriptionCommand,
    SubscriptionEvent
);
