//! The published language: which events leave Tally, under which topic and
//! with which payload, and the envelope every outbound channel (webhooks,
//! NATS) sends. The mapping is defined and tested here so that a renamed
//! topic is a visible change.
//!
//! [`TOPICS`] is the one table of what is published; `docs/published-language.md`
//! documents it field by field and `commands/tests/published_language.rs` fails
//! when the two drift apart, when a topic's `data` differs from its row, or
//! when a published topic disappears (a rename without a new version).
//! [`NOT_PUBLISHED`] names the events that stay inside, with the reason, so
//! that leaving an event out is a decision too. The mapping matches every
//! aggregate kind and every event variant without a catch-all: a new variant
//! does not compile until it is published or listed as internal.
//!
//! `data` is a flat object of stable snake_case fields built from the event,
//! never the internal payload itself: amounts are decimal strings next to
//! their currency, times are RFC 3339 UTC, and every object carries
//! `tenant_id` and the resource's id.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde_json::{json, Value};
use tally_aggregates::money::{round_to_minor, scale_unit_price};
use tally_aggregates::{
    AggregateKind, CouponEvent, CouponOff, CustomerEvent, InboxEvent, InvoiceEvent, NumberingEvent,
    PlanEvent, SubscriptionEvent, SuspendReason, TaxRateEvent, TicketEvent, UsageEvent,
};
use tally_projections::StoredEvent;

/// An integration event: the envelope's topic and `data`.
#[derive(Debug, Clone, PartialEq)]
pub struct Integration {
    pub topic: &'static str,
    pub data: Value,
}

/// The JSON shape of one `data` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldType {
    /// An identifier string (`sub_…`, a customer id, an API key id).
    Id,
    /// Free text.
    Text,
    /// One of a fixed set of snake_case strings.
    Enum(&'static [&'static str]),
    /// An exact decimal as a string (`"12.50"`); money sits next to a `currency`.
    Decimal,
    /// An ISO 4217 code (`"EUR"`).
    Currency,
    /// An RFC 3339 UTC time.
    Timestamp,
    /// A non-negative JSON integer.
    Integer,
    /// A JSON `true` or `false`.
    Boolean,
}

/// One field of a topic's `data`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    pub name: &'static str,
    pub ty: FieldType,
    /// Whether the value may be `null`.
    pub nullable: bool,
}

impl Field {
    /// The type as the document writes it: `id`, `decimal?`,
    /// `enum(manual, non_payment)`; a trailing `?` means "or null".
    pub fn type_name(&self) -> String {
        let base = match self.ty {
            FieldType::Id => "id".to_owned(),
            FieldType::Text => "string".to_owned(),
            FieldType::Enum(values) => format!("enum({})", values.join(", ")),
            FieldType::Decimal => "decimal".to_owned(),
            FieldType::Currency => "currency".to_owned(),
            FieldType::Timestamp => "timestamp".to_owned(),
            FieldType::Integer => "integer".to_owned(),
            FieldType::Boolean => "boolean".to_owned(),
        };
        if self.nullable {
            base + "?"
        } else {
            base
        }
    }
}

const fn req(name: &'static str, ty: FieldType) -> Field {
    Field {
        name,
        ty,
        nullable: false,
    }
}

const fn opt(name: &'static str, ty: FieldType) -> Field {
    Field {
        name,
        ty,
        nullable: true,
    }
}

/// One published topic: its name, the event it is made from, what it means
/// and the fields of its `data`, in the order the document lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicSpec {
    pub topic: &'static str,
    /// The stream kind (stored `aggregate_type`) of the source event.
    pub aggregate: AggregateKind,
    /// The stored `event_type` of the source event.
    pub event: &'static str,
    pub description: &'static str,
    pub data: &'static [Field],
}

impl TopicSpec {
    /// The version in the topic name (`billing.invoices.v1.invoice-paid` → 1), as the envelope's
    /// `schema_version` states it.
    pub fn version(&self) -> u32 {
        topic_version(self.topic)
    }
}

pub const PLAN_CREATED: &str = "billing.plans.v1.plan-created";
pub const PLAN_ARCHIVED: &str = "billing.plans.v1.plan-archived";
pub const SUBSCRIPTION_CREATED: &str = "billing.subscriptions.v1.subscription-created";
pub const TRIAL_STARTED: &str = "billing.subscriptions.v1.trial-started";
pub const TRIAL_ENDED: &str = "billing.subscriptions.v1.trial-ended";
pub const SUBSCRIPTION_ACTIVATED: &str = "billing.subscriptions.v1.subscription-activated";
pub const SUBSCRIPTION_PLAN_CHANGED: &str = "billing.subscriptions.v1.subscription-plan-changed";
pub const SUBSCRIPTION_SEATS_CHANGED: &str = "billing.subscriptions.v1.subscription-seats-changed";
pub const SUBSCRIPTION_SUSPENDED: &str = "billing.subscriptions.v1.subscription-suspended";
pub const SUBSCRIPTION_RESUMED: &str = "billing.subscriptions.v1.subscription-resumed";
pub const SUBSCRIPTION_PAST_DUE: &str = "billing.subscriptions.v1.subscription-past-due";
pub const SUBSCRIPTION_PAST_DUE_CLEARED: &str =
    "billing.subscriptions.v1.subscription-past-due-cleared";
pub const SUBSCRIPTION_CANCELLATION_SCHEDULED: &str =
    "billing.subscriptions.v1.subscription-cancellation-scheduled";
pub const SUBSCRIPTION_CANCELED: &str = "billing.subscriptions.v1.subscription-canceled";
pub const RATING_WINDOW_CLOSED: &str = "billing.subscriptions.v1.rating-window-closed";
pub const DISCOUNT_APPLIED: &str = "billing.subscriptions.v1.discount-applied";
pub const DISCOUNT_REMOVED: &str = "billing.subscriptions.v1.discount-removed";
pub const COUPON_CREATED: &str = "billing.coupons.v1.coupon-created";
pub const COUPON_REDEEMED: &str = "billing.coupons.v1.coupon-redeemed";
pub const COUPON_ARCHIVED: &str = "billing.coupons.v1.coupon-archived";
pub const TAX_RATE_CREATED: &str = "billing.tax-rates.v1.tax-rate-created";
pub const TAX_RATE_ARCHIVED: &str = "billing.tax-rates.v1.tax-rate-archived";
pub const CUSTOMER_CREATED: &str = "billing.customers.v1.customer-created";
pub const CUSTOMER_UPDATED: &str = "billing.customers.v1.customer-updated";
pub const INVOICE_ISSUED: &str = "billing.invoices.v1.invoice-issued";
pub const INVOICE_PAID: &str = "billing.invoices.v1.invoice-paid";
pub const INVOICE_VOIDED: &str = "billing.invoices.v1.invoice-voided";
pub const INVOICE_MARKED_UNCOLLECTIBLE: &str = "billing.invoices.v1.invoice-marked-uncollectible";
pub const PAYMENT_CAPTURED: &str = "billing.payments.v1.payment-captured";
pub const PAYMENT_RECEIVED: &str = "billing.payments.v1.payment-received";
pub const PAYMENT_REFUNDED: &str = "billing.payments.v1.payment-refunded";
pub const CREDIT_NOTE_ISSUED: &str = "billing.invoices.v1.credit-note-issued";
pub const CUSTOMER_CREDIT_CHANGED: &str = "billing.customers.v1.customer-credit-changed";
pub const USAGE_RECORDED: &str = "metering.usage.v1.usage-recorded";
pub const USAGE_VOIDED: &str = "metering.usage.v1.usage-voided";
pub const QUOTA_EXCEEDED: &str = "metering.quota.v1.quota-exceeded";
pub const TICKET_CREATED: &str = "support.tickets.v1.ticket-created";
pub const TICKET_ASSIGNED: &str = "support.tickets.v1.ticket-assigned";
pub const TICKET_COMMENTED: &str = "support.tickets.v1.ticket-commented";
pub const TICKET_STATUS_CHANGED: &str = "support.tickets.v1.ticket-status-changed";

use FieldType::{Boolean, Currency, Decimal as Dec, Enum, Id, Integer, Text, Timestamp};

const TENANT: Field = req("tenant_id", Id);
const SUBSCRIPTION: Field = req("subscription_id", Id);
const INVOICE: Field = req("invoice_id", Id);
const TICKET: Field = req("ticket_id", Id);
const CUSTOMER: Field = req("customer_id", Id);
const COUPON: Field = req("coupon_id", Id);
const TAX_RATE: Field = req("tax_rate_id", Id);

/// `CouponDuration::as_str` of every duration (a test keeps them equal).
pub const COUPON_DURATIONS: &[&str] = &["once", "repeating", "forever"];

/// `Interval::as_str` of every interval (a test keeps them equal).
pub const INTERVALS: &[&str] = &["month", "year"];
/// How a suspension is explained on the wire.
pub const SUSPEND_REASONS: &[&str] = &["manual", "non_payment", "quota_exceeded"];
/// `Priority::as_str` of every priority (a test keeps them equal).
pub const PRIORITIES: &[&str] = &["low", "normal", "high", "urgent"];
/// `TicketStatus::as_str` of every status (a test keeps them equal).
/// Credit note reasons (`tally_aggregates::invoice::CreditReason`).
pub const CREDIT_REASONS: &[&str] = &[
    "duplicate",
    "fraudulent",
    "order_change",
    "product_unsatisfactory",
    "refund",
];
/// The payment providers (`tally_commands::payments::Provider`).
pub const PROVIDERS: &[&str] = &["stripe", "polar", "mercadopago"];
/// Why customer credit changed (`tally_aggregates::invoice::CreditSource`).
pub const CREDIT_SOURCES: &[&str] = &tally_aggregates::invoice::CreditSource::KINDS;
pub const TICKET_STATUSES: &[&str] = &["new", "open", "pending", "on_hold", "solved", "closed"];

/// Every topic Tally publishes. The document lists exactly these, with the
/// same fields in the same order.
pub const TOPICS: &[TopicSpec] = &[
    TopicSpec {
        topic: PLAN_CREATED,
        aggregate: AggregateKind::Plan,
        event: "PlanCreated",
        description: "A catalog plan was created; its terms never change.",
        data: &[
            TENANT,
            req("plan_id", Id),
            req("code", Text),
            req("name", Text),
            req("currency", Currency),
            req("interval", Enum(INTERVALS)),
            req("base_price", Dec),
            req("seat_price", Dec),
            req("min_seats", Integer),
            req("max_seats", Integer),
            req("created_at", Timestamp),
        ],
    },
    TopicSpec {
        topic: PLAN_ARCHIVED,
        aggregate: AggregateKind::Plan,
        event: "PlanArchived",
        description: "A plan was archived: no new subscriptions or changes onto it.",
        data: &[TENANT, req("plan_id", Id), req("archived_at", Timestamp)],
    },
    TopicSpec {
        topic: SUBSCRIPTION_CREATED,
        aggregate: AggregateKind::Subscription,
        event: "SubscriptionCreated",
        description: "A subscription was created in draft.",
        data: &[
            TENANT,
            SUBSCRIPTION,
            req("customer_id", Id),
            req("plan_id", Id),
            req("currency", Currency),
            req("seats", Integer),
            req("created_at", Timestamp),
        ],
    },
    TopicSpec {
        topic: TRIAL_STARTED,
        aggregate: AggregateKind::Subscription,
        event: "TrialStarted",
        description: "A draft subscription was activated into a trial; nothing is billed until it ends.",
        data: &[
            TENANT,
            SUBSCRIPTION,
            req("trial_start", Timestamp),
            req("trial_end", Timestamp),
        ],
    },
    TopicSpec {
        topic: TRIAL_ENDED,
        aggregate: AggregateKind::Subscription,
        event: "TrialEnded",
        description: "A trial ended, at its end or early on request; subscription-activated (or subscription-canceled, when a cancellation waited for it) follows.",
        data: &[TENANT, SUBSCRIPTION, req("ended_at", Timestamp)],
    },
    TopicSpec {
        topic: SUBSCRIPTION_ACTIVATED,
        aggregate: AggregateKind::Subscription,
        event: "SubscriptionActivated",
        description: "A subscription became active, at activation or when its trial ended, and its first billing period opened.",
        data: &[
            TENANT,
            SUBSCRIPTION,
            req("current_period_start", Timestamp),
            req("current_period_end", Timestamp),
            req("activated_at", Timestamp),
        ],
    },
    TopicSpec {
        topic: SUBSCRIPTION_PLAN_CHANGED,
        aggregate: AggregateKind::Subscription,
        event: "PlanChanged",
        description: "An active or trialing subscription moved to another plan, prorated or not (never during a trial).",
        data: &[
            TENANT,
            SUBSCRIPTION,
            req("from_plan_id", Id),
            req("to_plan_id", Id),
            opt("proration_amount", Dec),
            req("currency", Currency),
            req("changed_at", Timestamp),
        ],
    },
    TopicSpec {
        topic: SUBSCRIPTION_SEATS_CHANGED,
        aggregate: AggregateKind::Subscription,
        event: "SeatsChanged",
        description: "An active or trialing subscription's seat count changed, prorated or not (never during a trial).",
        data: &[
            TENANT,
            SUBSCRIPTION,
            req("from_seats", Integer),
            req("to_seats", Integer),
            opt("proration_amount", Dec),
            opt("currency", Currency),
            req("changed_at", Timestamp),
        ],
    },
    TopicSpec {
        topic: SUBSCRIPTION_SUSPENDED,
        aggregate: AggregateKind::Subscription,
        event: "SubscriptionSuspended",
        description: "A subscription was suspended: by hand, for non-payment or over a quota.",
        data: &[
            TENANT,
            SUBSCRIPTION,
            req("reason", Enum(SUSPEND_REASONS)),
            opt("meter", Id),
            req("suspended_at", Timestamp),
        ],
    },
    TopicSpec {
        topic: SUBSCRIPTION_RESUMED,
        aggregate: AggregateKind::Subscription,
        event: "SubscriptionResumed",
        description: "A suspended subscription is active again (or back in its trial, when suspended during one).",
        data: &[TENANT, SUBSCRIPTION, req("resumed_at", Timestamp)],
    },
    TopicSpec {
        topic: SUBSCRIPTION_PAST_DUE,
        aggregate: AggregateKind::Subscription,
        event: "SubscriptionPastDue",
        description: "An invoice of the subscription went unpaid past its due date.",
        data: &[TENANT, SUBSCRIPTION, INVOICE, req("past_due_at", Timestamp)],
    },
    TopicSpec {
        topic: SUBSCRIPTION_PAST_DUE_CLEARED,
        aggregate: AggregateKind::Subscription,
        event: "PastDueCleared",
        description:
            "The invoice that made the subscription past due was paid; it is active again.",
        data: &[TENANT, SUBSCRIPTION, INVOICE, req("cleared_at", Timestamp)],
    },
    TopicSpec {
        topic: SUBSCRIPTION_CANCELLATION_SCHEDULED,
        aggregate: AggregateKind::Subscription,
        event: "CancellationScheduled",
        description: "A cancellation at the end of the current period was scheduled.",
        data: &[
            TENANT,
            SUBSCRIPTION,
            opt("reason", Text),
            req("cancel_at", Timestamp),
            req("scheduled_at", Timestamp),
        ],
    },
    TopicSpec {
        topic: SUBSCRIPTION_CANCELED,
        aggregate: AggregateKind::Subscription,
        event: "SubscriptionCanceled",
        description: "A subscription was canceled, now or at a scheduled period end.",
        data: &[
            TENANT,
            SUBSCRIPTION,
            opt("reason", Text),
            req("canceled_at", Timestamp),
        ],
    },
    TopicSpec {
        topic: RATING_WINDOW_CLOSED,
        aggregate: AggregateKind::Subscription,
        event: "PeriodRenewed",
        description: "A billing period ended and renewed: its usage is final and can be rated.",
        data: &[
            TENANT,
            SUBSCRIPTION,
            req("period_start", Timestamp),
            req("period_end", Timestamp),
            req("next_period_start", Timestamp),
            req("next_period_end", Timestamp),
            req("closed_at", Timestamp),
        ],
    },
    TopicSpec {
        topic: DISCOUNT_APPLIED,
        aggregate: AggregateKind::Subscription,
        event: "DiscountApplied",
        description: "A coupon was redeemed for the subscription: its next invoices take the discount.",
        data: &[
            TENANT,
            SUBSCRIPTION,
            COUPON,
            req("code", Text),
            opt("periods_left", Integer),
            req("applied_at", Timestamp),
        ],
    },
    TopicSpec {
        topic: DISCOUNT_REMOVED,
        aggregate: AggregateKind::Subscription,
        event: "DiscountRemoved",
        description: "The subscription's discount was removed; invoices from now on take none.",
        data: &[TENANT, SUBSCRIPTION, COUPON, req("removed_at", Timestamp)],
    },
    TopicSpec {
        topic: COUPON_CREATED,
        aggregate: AggregateKind::Coupon,
        event: "CouponCreated",
        description: "A coupon was created: percent or amount off, for how long, how often.",
        data: &[
            TENANT,
            COUPON,
            req("code", Text),
            opt("percent_off", Dec),
            opt("amount_off", Dec),
            opt("currency", Currency),
            req("duration", Enum(COUPON_DURATIONS)),
            opt("duration_in_periods", Integer),
            opt("max_redemptions", Integer),
            opt("redeem_by", Timestamp),
            req("created_at", Timestamp),
        ],
    },
    TopicSpec {
        topic: COUPON_REDEEMED,
        aggregate: AggregateKind::Coupon,
        event: "CouponRedeemed",
        description: "A subscription redeemed the coupon; times_redeemed counts this one.",
        data: &[
            TENANT,
            COUPON,
            SUBSCRIPTION,
            req("times_redeemed", Integer),
            req("redeemed_at", Timestamp),
        ],
    },
    TopicSpec {
        topic: COUPON_ARCHIVED,
        aggregate: AggregateKind::Coupon,
        event: "CouponArchived",
        description: "The coupon can no longer be redeemed; discounts already applied run on.",
        data: &[TENANT, COUPON, req("archived_at", Timestamp)],
    },
    TopicSpec {
        topic: TAX_RATE_CREATED,
        aggregate: AggregateKind::TaxRate,
        event: "TaxRateCreated",
        description: "A tax rate was created: a percentage, inclusive or exclusive.",
        data: &[
            TENANT,
            TAX_RATE,
            req("name", Text),
            req("percentage", Dec),
            req("inclusive", Boolean),
            opt("country", Text),
            req("created_at", Timestamp),
        ],
    },
    TopicSpec {
        topic: TAX_RATE_ARCHIVED,
        aggregate: AggregateKind::TaxRate,
        event: "TaxRateArchived",
        description: "The tax rate can no longer be attached; where it is attached it keeps applying.",
        data: &[TENANT, TAX_RATE, req("archived_at", Timestamp)],
    },
    TopicSpec {
        topic: CUSTOMER_CREATED,
        aggregate: AggregateKind::Customer,
        event: "CustomerCreated",
        description: "A customer was put for the first time.",
        data: &[
            TENANT,
            CUSTOMER,
            req("name", Text),
            opt("email", Text),
            opt("currency", Currency),
            opt("country", Text),
            req("created_at", Timestamp),
        ],
    },
    TopicSpec {
        topic: CUSTOMER_UPDATED,
        aggregate: AggregateKind::Customer,
        event: "CustomerUpdated",
        description: "A customer's details changed; invoices issued from now on copy them.",
        data: &[
            TENANT,
            CUSTOMER,
            req("name", Text),
            opt("email", Text),
            opt("currency", Currency),
            opt("country", Text),
            req("updated_at", Timestamp),
        ],
    },
    TopicSpec {
        topic: INVOICE_ISSUED,
        aggregate: AggregateKind::Invoice,
        event: "InvoiceIssued",
        description: "A draft invoice was issued with its number, totals and due date.",
        data: &[
            TENANT,
            INVOICE,
            req("number", Text),
            req("customer_id", Id),
            req("currency", Currency),
            req("subtotal", Dec),
            req("discount", Dec),
            req("tax", Dec),
            req("total", Dec),
            req("amount_due", Dec),
            req("issued_at", Timestamp),
            req("due_at", Timestamp),
        ],
    },
    TopicSpec {
        topic: INVOICE_PAID,
        aggregate: AggregateKind::Invoice,
        event: "InvoicePaid",
        description: "An invoice was paid in full (or had nothing to collect when issued).",
        data: &[
            TENANT,
            INVOICE,
            req("customer_id", Id),
            opt("subscription_id", Id),
            req("paid_at", Timestamp),
        ],
    },
    TopicSpec {
        topic: INVOICE_VOIDED,
        aggregate: AggregateKind::Invoice,
        event: "InvoiceVoided",
        description: "An open, unpaid invoice was voided.",
        data: &[
            TENANT,
            INVOICE,
            req("customer_id", Id),
            req("currency", Currency),
            req("amount", Dec),
            req("reason", Text),
            req("voided_at", Timestamp),
        ],
    },
    TopicSpec {
        topic: INVOICE_MARKED_UNCOLLECTIBLE,
        aggregate: AggregateKind::Invoice,
        event: "InvoiceMarkedUncollectible",
        description: "The amount due of an open invoice was written off.",
        data: &[
            TENANT,
            INVOICE,
            req("customer_id", Id),
            req("currency", Currency),
            req("amount", Dec),
            req("marked_at", Timestamp),
        ],
    },
    TopicSpec {
        topic: PAYMENT_CAPTURED,
        aggregate: AggregateKind::Invoice,
        event: "PaymentRecorded",
        description: "A payment against an open invoice was recorded.",
        data: &[
            TENANT,
            req("payment_id", Id),
            INVOICE,
            req("customer_id", Id),
            req("currency", Currency),
            req("amount", Dec),
            req("reference", Text),
            req("captured_at", Timestamp),
            req("invoice_amount_paid", Dec),
            req("invoice_amount_due", Dec),
        ],
    },
    TopicSpec {
        topic: CREDIT_NOTE_ISSUED,
        aggregate: AggregateKind::Invoice,
        event: "CreditNoteIssued",
        description: "A credit note on an open or paid invoice: what lowered the amount due, what became customer credit, what was refunded.",
        data: &[
            TENANT,
            req("credit_note_id", Id),
            req("number", Text),
            INVOICE,
            req("customer_id", Id),
            req("currency", Currency),
            req("amount", Dec),
            req("reason", Enum(CREDIT_REASONS)),
            req("to_amount_due", Dec),
            req("to_credit", Dec),
            req("refunded", Dec),
            req("invoice_amount_due", Dec),
            req("issued_at", Timestamp),
        ],
    },
    TopicSpec {
        topic: PAYMENT_RECEIVED,
        aggregate: AggregateKind::ProviderPayment,
        event: "ProviderPaymentReceived",
        description: "A payment provider reported a payment: applied to the invoice it named (any rest became customer credit), or all customer credit when that invoice was unknown, in another currency or no longer open.",
        data: &[
            TENANT,
            req("provider", Enum(PROVIDERS)),
            req("payment_id", Id),
            req("reference", Text),
            req("customer_id", Id),
            opt("invoice_id", Id),
            req("currency", Currency),
            req("amount", Dec),
            req("applied", Dec),
            req("credited", Dec),
            req("received_at", Timestamp),
        ],
    },
    TopicSpec {
        topic: PAYMENT_REFUNDED,
        aggregate: AggregateKind::ProviderPayment,
        event: "ProviderPaymentRefunded",
        description: "A payment provider refunded (part of) a payment: a refund credit note on its invoice, or customer credit paid back.",
        data: &[
            TENANT,
            req("payment_id", Id),
            req("refund_id", Id),
            req("customer_id", Id),
            opt("invoice_id", Id),
            req("currency", Currency),
            req("amount", Dec),
            req("refunded", Dec),
            req("refunded_at", Timestamp),
        ],
    },
    TopicSpec {
        topic: CUSTOMER_CREDIT_CHANGED,
        aggregate: AggregateKind::InvoiceNumbering,
        event: "CustomerCreditChanged",
        description: "A customer's credit in one currency changed: granted (an overpayment, an unapplied payment, a credit note, a negative invoice) or applied to an invoice at its issue (a negative amount).",
        data: &[
            TENANT,
            req("customer_id", Id),
            req("currency", Currency),
            req("amount", Dec),
            req("balance", Dec),
            req("source", Enum(CREDIT_SOURCES)),
            opt("invoice_id", Id),
            req("changed_at", Timestamp),
        ],
    },
    TopicSpec {
        topic: USAGE_RECORDED,
        aggregate: AggregateKind::UsageRecord,
        event: "UsageRecorded",
        description: "A usage report was recorded (once per transaction id).",
        data: &[
            TENANT,
            req("record_id", Id),
            req("transaction_id", Id),
            SUBSCRIPTION,
            req("meter", Id),
            req("quantity", Dec),
            req("timestamp", Timestamp),
            req("window_start", Timestamp),
            opt("window_end", Timestamp),
            req("recorded_at", Timestamp),
        ],
    },
    TopicSpec {
        topic: USAGE_VOIDED,
        aggregate: AggregateKind::UsageRecord,
        event: "UsageVoided",
        description: "A recorded, unbilled usage record was voided and no longer counts.",
        data: &[
            TENANT,
            req("record_id", Id),
            SUBSCRIPTION,
            req("meter", Id),
            req("quantity", Dec),
            req("window_start", Timestamp),
            opt("window_end", Timestamp),
            req("reason", Text),
            req("voided_at", Timestamp),
        ],
    },
    TopicSpec {
        topic: QUOTA_EXCEEDED,
        aggregate: AggregateKind::Subscription,
        event: "SubscriptionSuspended",
        description:
            "Usage went over a meter's hard cap and the subscription was suspended for it.",
        data: &[
            TENANT,
            SUBSCRIPTION,
            req("meter", Id),
            req("suspended_at", Timestamp),
        ],
    },
    TopicSpec {
        topic: TICKET_CREATED,
        aggregate: AggregateKind::Ticket,
        event: "TicketCreated",
        description: "A support ticket was opened.",
        data: &[
            TENANT,
            TICKET,
            req("subject", Text),
            req("description", Text),
            req("requester", Id),
            req("priority", Enum(PRIORITIES)),
            opt("subscription_id", Id),
            req("created_at", Timestamp),
        ],
    },
    TopicSpec {
        topic: TICKET_ASSIGNED,
        aggregate: AggregateKind::Ticket,
        event: "TicketAssigned",
        description: "A ticket was assigned to an agent.",
        data: &[
            TENANT,
            TICKET,
            req("assignee", Id),
            opt("previous_assignee", Id),
            req("assigned_at", Timestamp),
        ],
    },
    TopicSpec {
        topic: TICKET_COMMENTED,
        aggregate: AggregateKind::Ticket,
        event: "CommentAdded",
        description:
            "A public comment was added to a ticket; internal comments are never published.",
        data: &[
            TENANT,
            TICKET,
            req("comment_id", Id),
            req("author", Id),
            req("body", Text),
            req("commented_at", Timestamp),
        ],
    },
    TopicSpec {
        topic: TICKET_STATUS_CHANGED,
        aggregate: AggregateKind::Ticket,
        event: "TicketStatusChanged",
        description: "A ticket moved from one status to another.",
        data: &[
            TENANT,
            TICKET,
            req("from_status", Enum(TICKET_STATUSES)),
            req("to_status", Enum(TICKET_STATUSES)),
            opt("changed_by", Id),
            req("changed_at", Timestamp),
        ],
    },
];

/// An event that is deliberately not published, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unpublished {
    pub aggregate: AggregateKind,
    pub event: &'static str,
    pub reason: &'static str,
}

/// Every stored event type that never leaves Tally. With [`TOPICS`] it
/// accounts for every event type there is.
pub const NOT_PUBLISHED: &[Unpublished] = &[
    Unpublished {
        aggregate: AggregateKind::Invoice,
        event: "InvoiceCreated",
        reason:
            "A draft is internal until it is issued; invoice-issued is its first public moment.",
    },
    Unpublished {
        aggregate: AggregateKind::Invoice,
        event: "LineAdded",
        reason: "Lines change only on drafts; invoice-issued carries the totals they add up to.",
    },
    Unpublished {
        aggregate: AggregateKind::InvoiceNumbering,
        event: "InvoiceNumberAssigned",
        reason: "Bookkeeping of the gapless sequence; the number is in invoice-issued.",
    },
    Unpublished {
        aggregate: AggregateKind::InvoiceNumbering,
        event: "CreditNoteNumberAssigned",
        reason: "Bookkeeping of the gapless sequence; the number is in credit-note-issued.",
    },
    Unpublished {
        aggregate: AggregateKind::InboundNotice,
        event: "InboundNoticeRecorded",
        reason: "A provider's raw notification, kept for audit; payment-received and payment-refunded carry what it meant.",
    },
    Unpublished {
        aggregate: AggregateKind::UsageRecord,
        event: "UsageBilled",
        reason: "Billing bookkeeping, one per record; the invoice topics carry the outcome.",
    },
    Unpublished {
        aggregate: AggregateKind::Ticket,
        event: "AttachmentAdded",
        reason:
            "Attachments have no public or internal flag and name a storage key; they stay inside.",
    },
    Unpublished {
        aggregate: AggregateKind::Inbox,
        event: "ItemRead",
        reason: "A recipient's read state is private to them.",
    },
    Unpublished {
        aggregate: AggregateKind::Inbox,
        event: "ItemArchived",
        reason: "A recipient's read state is private to them.",
    },
    Unpublished {
        aggregate: AggregateKind::Inbox,
        event: "AllRead",
        reason: "A recipient's read state is private to them.",
    },
    Unpublished {
        aggregate: AggregateKind::Inbox,
        event: "Notified",
        reason:
            "A notice to an operator's inbox; what it reports has its own topic or is internal.",
    },
    Unpublished {
        aggregate: AggregateKind::AccessKey,
        event: "KeyRevoked",
        reason: "Access control of Tally's own API; it is in the audit log, not for integrations.",
    },
];

/// The row of a published topic.
pub fn spec(topic: &str) -> Option<&'static TopicSpec> {
    TOPICS.iter().find(|s| s.topic == topic)
}

/// The primary integration event for a stored event, if it is published:
/// the first of [`integration_events`].
pub fn integration_event(e: &StoredEvent) -> Option<Integration> {
    integration_events(e).into_iter().next()
}

/// Every integration event a stored event publishes, primary first. Most
/// events publish one or none; a suspension over a quota publishes
/// `subscription-suspended` and then `quota-exceeded`.
pub fn integration_events(e: &StoredEvent) -> Vec<Integration> {
    let decoded = match e.kind() {
        Some(AggregateKind::Plan) => e.decode().map(|event| plan(e, event)),
        Some(AggregateKind::Subscription) => e.decode().map(|event| subscription(e, event)),
        Some(AggregateKind::Customer) => e.decode().map(|event| customer(e, event)),
        Some(AggregateKind::Coupon) => e.decode().map(|event| coupon(e, event)),
        Some(AggregateKind::TaxRate) => e.decode().map(|event| tax_rate(e, event)),
        Some(AggregateKind::Invoice) => e.decode().map(|event| invoice(e, event)),
        Some(AggregateKind::InvoiceNumbering) => e.decode().map(|event| match event {
            NumberingEvent::InvoiceNumberAssigned { .. }
            | NumberingEvent::CreditNoteNumberAssigned { .. } => vec![],
            NumberingEvent::CustomerCreditChanged {
                customer_id,
                currency,
                amount,
                balance,
                source,
                at,
            } => one(
                CUSTOMER_CREDIT_CHANGED,
                json!({
                    "tenant_id": e.tenant,
                    "customer_id": customer_id,
                    "currency": currency.code(),
                    "amount": money(&amount, currency),
                    "balance": money(&balance, currency),
                    "source": source.kind(),
                    "invoice_id": source.invoice_id(),
                    "changed_at": time(&at),
                }),
            ),
        }),
        Some(AggregateKind::UsageRecord) => e.decode().map(|event| usage(e, event)),
        Some(AggregateKind::InboundNotice) => e.decode().map(|event| match event {
            tally_aggregates::InboundNoticeEvent::InboundNoticeRecorded { .. } => vec![],
        }),
        Some(AggregateKind::ProviderPayment) => e.decode().map(|event| provider_payment(e, event)),
        Some(AggregateKind::Ticket) => e.decode().map(|event| ticket(e, event)),
        Some(AggregateKind::Inbox) => e.decode().map(|event| match event {
            InboxEvent::ItemRead { .. }
            | InboxEvent::ItemArchived { .. }
            | InboxEvent::AllRead { .. }
            | InboxEvent::Notified { .. } => vec![],
        }),
        Some(AggregateKind::AccessKey) => e.decode().map(|event| match event {
            tally_aggregates::AccessKeyEvent::KeyRevoked { .. } => vec![],
        }),
        // A type no aggregate of this build stores.
        None => return vec![],
    };
    decoded.unwrap_or_else(|error| {
        // A stored event this build cannot read is a bug (a missing
        // upcaster); publishing a guess would be worse than publishing nothing.
        tracing::warn!(
            event_id = %e.event_id,
            aggregate_type = %e.aggregate_type,
            event_type = %e.event_type,
            %error,
            "stored event not decodable; nothing published"
        );
        vec![]
    })
}

fn one(topic: &'static str, data: Value) -> Vec<Integration> {
    vec![Integration { topic, data }]
}

fn time(t: &DateTime<Utc>) -> Value {
    Value::String(t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
}

/// A quantity, exactly as recorded.
fn decimal(d: &Decimal) -> Value {
    Value::String(d.to_string())
}

/// An amount of money with as many places as its currency's minor unit
/// (`"20.00"`, never `"20"`), whatever scale the event happened to store.
fn money(amount: &Decimal, currency: tally_aggregates::Currency) -> Value {
    Value::String(round_to_minor(*amount, currency).to_string())
}

fn plan(e: &StoredEvent, event: PlanEvent) -> Vec<Integration> {
    let (tenant_id, plan_id) = (&e.tenant, e.resource_id());
    match event {
        PlanEvent::PlanCreated {
            terms, created_at, ..
        } => one(
            PLAN_CREATED,
            json!({
                "tenant_id": tenant_id,
                "plan_id": plan_id,
                "code": terms.code,
                "name": terms.name,
                "currency": terms.currency.code(),
                "interval": terms.interval.as_str(),
                "base_price": money(&terms.base_price, terms.currency),
                // A unit price: its own places, at least the minor unit's.
                "seat_price": Value::String(
                    scale_unit_price(terms.seat_price, terms.currency).to_string()
                ),
                "min_seats": terms.seats.min,
                "max_seats": terms.seats.max,
                "created_at": time(&created_at),
            }),
        ),
        PlanEvent::PlanArchived { archived_at } => one(
            PLAN_ARCHIVED,
            json!({
                "tenant_id": tenant_id,
                "plan_id": plan_id,
                "archived_at": time(&archived_at),
            }),
        ),
    }
}

fn customer(e: &StoredEvent, event: CustomerEvent) -> Vec<Integration> {
    let (tenant_id, customer_id) = (&e.tenant, e.resource_id());
    let (topic, details, at_field, at) = match event {
        CustomerEvent::CustomerCreated {
            details,
            created_at,
            ..
        } => (CUSTOMER_CREATED, details, "created_at", created_at),
        CustomerEvent::CustomerUpdated {
            details,
            updated_at,
        } => (CUSTOMER_UPDATED, details, "updated_at", updated_at),
    };
    let mut data = json!({
        "tenant_id": tenant_id,
        "customer_id": customer_id,
        "name": details.name,
        "email": details.email,
        "currency": details.currency.map(|c| c.code()),
        "country": details.address.map(|a| a.country),
    });
    data[at_field] = time(&at);
    one(topic, data)
}

fn subscription(e: &StoredEvent, event: SubscriptionEvent) -> Vec<Integration> {
    let (tenant_id, subscription_id) = (&e.tenant, e.resource_id());
    match event {
        SubscriptionEvent::SubscriptionCreated {
            customer_id,
            plan_id,
            plan,
            seats,
            created_at,
            ..
        } => one(
            SUBSCRIPTION_CREATED,
            json!({
                "tenant_id": tenant_id,
                "subscription_id": subscription_id,
                "customer_id": customer_id,
                "plan_id": plan_id,
                "currency": plan.currency.code(),
                "seats": seats,
                "created_at": time(&created_at),
            }),
        ),
        SubscriptionEvent::TrialStarted {
            trial_start,
            trial_end,
        } => one(
            TRIAL_STARTED,
            json!({
                "tenant_id": tenant_id,
                "subscription_id": subscription_id,
                "trial_start": time(&trial_start),
                "trial_end": time(&trial_end),
            }),
        ),
        SubscriptionEvent::TrialEnded { ended_at } => one(
            TRIAL_ENDED,
            json!({
                "tenant_id": tenant_id,
                "subscription_id": subscription_id,
                "ended_at": time(&ended_at),
            }),
        ),
        SubscriptionEvent::SubscriptionActivated {
            period,
            activated_at,
            ..
        } => one(
            SUBSCRIPTION_ACTIVATED,
            json!({
                "tenant_id": tenant_id,
                "subscription_id": subscription_id,
                "current_period_start": time(&period.start),
                "current_period_end": time(&period.end),
                "activated_at": time(&activated_at),
            }),
        ),
        SubscriptionEvent::PlanChanged {
            from_plan_id,
            to_plan_id,
            plan,
            proration,
            changed_at,
        } => one(
            SUBSCRIPTION_PLAN_CHANGED,
            json!({
                "tenant_id": tenant_id,
                "subscription_id": subscription_id,
                "from_plan_id": from_plan_id,
                "to_plan_id": to_plan_id,
                "proration_amount": proration.as_ref().map(|p| money(&p.net, p.currency)),
                "currency": plan.currency.code(),
                "changed_at": time(&changed_at),
            }),
        ),
        SubscriptionEvent::SeatsChanged {
            from,
            to,
            proration,
            changed_at,
        } => one(
            SUBSCRIPTION_SEATS_CHANGED,
            json!({
                "tenant_id": tenant_id,
                "subscription_id": subscription_id,
                "from_seats": from,
                "to_seats": to,
                "proration_amount": proration.as_ref().map(|p| money(&p.net, p.currency)),
                "currency": proration.as_ref().map(|p| p.currency.code()),
                "changed_at": time(&changed_at),
            }),
        ),
        SubscriptionEvent::SubscriptionSuspended {
            reason,
            suspended_at,
        } => {
            let (reason, meter) = match reason {
                SuspendReason::Manual { .. } => ("manual", None),
                SuspendReason::NonPayment => ("non_payment", None),
                SuspendReason::QuotaExceeded { meter } => ("quota_exceeded", Some(meter)),
            };
            let mut published = one(
                SUBSCRIPTION_SUSPENDED,
                json!({
                    "tenant_id": tenant_id,
                    "subscription_id": subscription_id,
                    "reason": reason,
                    "meter": meter,
                    "suspended_at": time(&suspended_at),
                }),
            );
            if let Some(meter) = meter {
                published.push(Integration {
                    topic: QUOTA_EXCEEDED,
                    data: json!({
                        "tenant_id": tenant_id,
                        "subscription_id": subscription_id,
                        "meter": meter,
                        "suspended_at": time(&suspended_at),
                    }),
                });
            }
            published
        }
        SubscriptionEvent::SubscriptionResumed { resumed_at } => one(
            SUBSCRIPTION_RESUMED,
            json!({
                "tenant_id": tenant_id,
                "subscription_id": subscription_id,
                "resumed_at": time(&resumed_at),
            }),
        ),
        SubscriptionEvent::SubscriptionPastDue { invoice_id, at } => one(
            SUBSCRIPTION_PAST_DUE,
            json!({
                "tenant_id": tenant_id,
                "subscription_id": subscription_id,
                "invoice_id": invoice_id,
                "past_due_at": time(&at),
            }),
        ),
        SubscriptionEvent::PastDueCleared { invoice_id, at } => one(
            SUBSCRIPTION_PAST_DUE_CLEARED,
            json!({
                "tenant_id": tenant_id,
                "subscription_id": subscription_id,
                "invoice_id": invoice_id,
                "cleared_at": time(&at),
            }),
        ),
        SubscriptionEvent::CancellationScheduled {
            reason,
            cancel_at,
            scheduled_at,
        } => one(
            SUBSCRIPTION_CANCELLATION_SCHEDULED,
            json!({
                "tenant_id": tenant_id,
                "subscription_id": subscription_id,
                "reason": reason,
                "cancel_at": time(&cancel_at),
                "scheduled_at": time(&scheduled_at),
            }),
        ),
        SubscriptionEvent::SubscriptionCanceled {
            reason,
            canceled_at,
        } => one(
            SUBSCRIPTION_CANCELED,
            json!({
                "tenant_id": tenant_id,
                "subscription_id": subscription_id,
                "reason": reason,
                "canceled_at": time(&canceled_at),
            }),
        ),
        SubscriptionEvent::PeriodRenewed {
            closed_period,
            new_period,
            renewed_at,
            ..
        } => one(
            RATING_WINDOW_CLOSED,
            json!({
                "tenant_id": tenant_id,
                "subscription_id": subscription_id,
                "period_start": time(&closed_period.start),
                "period_end": time(&closed_period.end),
                "next_period_start": time(&new_period.start),
                "next_period_end": time(&new_period.end),
                "closed_at": time(&renewed_at),
            }),
        ),
        SubscriptionEvent::DiscountApplied { discount } => one(
            DISCOUNT_APPLIED,
            json!({
                "tenant_id": tenant_id,
                "subscription_id": subscription_id,
                "coupon_id": discount.coupon_id,
                "code": discount.code,
                "periods_left": discount.periods_left,
                "applied_at": time(&discount.start),
            }),
        ),
        SubscriptionEvent::DiscountRemoved {
            coupon_id,
            removed_at,
        } => one(
            DISCOUNT_REMOVED,
            json!({
                "tenant_id": tenant_id,
                "subscription_id": subscription_id,
                "coupon_id": coupon_id,
                "removed_at": time(&removed_at),
            }),
        ),
    }
}

fn tax_rate(e: &StoredEvent, event: TaxRateEvent) -> Vec<Integration> {
    let (tenant_id, tax_rate_id) = (&e.tenant, e.resource_id());
    match event {
        TaxRateEvent::TaxRateCreated {
            terms, created_at, ..
        } => one(
            TAX_RATE_CREATED,
            json!({
                "tenant_id": tenant_id,
                "tax_rate_id": tax_rate_id,
                "name": terms.name,
                "percentage": decimal(&terms.percentage.normalize()),
                "inclusive": terms.inclusive,
                "country": terms.country,
                "created_at": time(&created_at),
            }),
        ),
        TaxRateEvent::TaxRateArchived { archived_at } => one(
            TAX_RATE_ARCHIVED,
            json!({
                "tenant_id": tenant_id,
                "tax_rate_id": tax_rate_id,
                "archived_at": time(&archived_at),
            }),
        ),
    }
}

fn coupon(e: &StoredEvent, event: CouponEvent) -> Vec<Integration> {
    let (tenant_id, coupon_id) = (&e.tenant, e.resource_id());
    match event {
        CouponEvent::CouponCreated {
            terms, created_at, ..
        } => {
            let (percent_off, amount_off, currency) = match &terms.off {
                CouponOff::Percent { percent_off } => {
                    (Some(decimal(&percent_off.normalize())), None, None)
                }
                CouponOff::Amount {
                    amount_off,
                    currency,
                } => (
                    None,
                    Some(money(amount_off, *currency)),
                    Some(currency.code()),
                ),
            };
            one(
                COUPON_CREATED,
                json!({
                    "tenant_id": tenant_id,
                    "coupon_id": coupon_id,
                    "code": terms.code,
                    "percent_off": percent_off,
                    "amount_off": amount_off,
                    "currency": currency,
                    "duration": terms.duration.as_str(),
                    "duration_in_periods": terms.duration_in_periods,
                    "max_redemptions": terms.max_redemptions,
                    "redeem_by": terms.redeem_by.as_ref().map(time),
                    "created_at": time(&created_at),
                }),
            )
        }
        CouponEvent::CouponRedeemed {
            subscription_id,
            times_redeemed,
            redeemed_at,
        } => one(
            COUPON_REDEEMED,
            json!({
                "tenant_id": tenant_id,
                "coupon_id": coupon_id,
                "subscription_id": subscription_id,
                "times_redeemed": times_redeemed,
                "redeemed_at": time(&redeemed_at),
            }),
        ),
        CouponEvent::CouponArchived { archived_at } => one(
            COUPON_ARCHIVED,
            json!({
                "tenant_id": tenant_id,
                "coupon_id": coupon_id,
                "archived_at": time(&archived_at),
            }),
        ),
    }
}

fn invoice(e: &StoredEvent, event: InvoiceEvent) -> Vec<Integration> {
    let (tenant_id, invoice_id) = (&e.tenant, e.resource_id());
    match event {
        InvoiceEvent::InvoiceCreated { .. } | InvoiceEvent::LineAdded { .. } => vec![],
        InvoiceEvent::InvoiceIssued {
            number,
            customer_id,
            currency,
            subtotal,
            discount,
            tax,
            total,
            amount_due,
            issued_at,
            due_at,
            ..
        } => one(
            INVOICE_ISSUED,
            json!({
                "tenant_id": tenant_id,
                "invoice_id": invoice_id,
                "number": number,
                "customer_id": customer_id,
                "currency": currency.code(),
                "subtotal": money(&subtotal, currency),
                "discount": money(&discount, currency),
                "tax": money(&tax, currency),
                "total": money(&total, currency),
                "amount_due": money(&amount_due, currency),
                "issued_at": time(&issued_at),
                "due_at": time(&due_at),
            }),
        ),
        InvoiceEvent::PaymentRecorded {
            payment,
            customer_id,
            currency,
            amount_paid,
            amount_due,
            ..
        } => one(
            PAYMENT_CAPTURED,
            json!({
                "tenant_id": tenant_id,
                "payment_id": payment.payment_id,
                "invoice_id": invoice_id,
                "customer_id": customer_id,
                "currency": currency.code(),
                "amount": money(&payment.amount, currency),
                "reference": payment.reference,
                "captured_at": time(&payment.captured_at),
                "invoice_amount_paid": money(&amount_paid, currency),
                "invoice_amount_due": money(&amount_due, currency),
            }),
        ),
        InvoiceEvent::InvoicePaid {
            customer_id,
            subscription_id,
            paid_at,
        } => one(
            INVOICE_PAID,
            json!({
                "tenant_id": tenant_id,
                "invoice_id": invoice_id,
                "customer_id": customer_id,
                "subscription_id": subscription_id,
                "paid_at": time(&paid_at),
            }),
        ),
        InvoiceEvent::InvoiceVoided {
            customer_id,
            currency,
            amount,
            reason,
            voided_at,
        } => one(
            INVOICE_VOIDED,
            json!({
                "tenant_id": tenant_id,
                "invoice_id": invoice_id,
                "customer_id": customer_id,
                "currency": currency.code(),
                "amount": money(&amount, currency),
                "reason": reason,
                "voided_at": time(&voided_at),
            }),
        ),
        InvoiceEvent::CreditNoteIssued {
            credit_note,
            customer_id,
            currency,
            amount_due,
            ..
        } => one(
            CREDIT_NOTE_ISSUED,
            json!({
                "tenant_id": tenant_id,
                "credit_note_id": credit_note.credit_note_id,
                "number": credit_note.number,
                "invoice_id": invoice_id,
                "customer_id": customer_id,
                "currency": currency.code(),
                "amount": money(&credit_note.amount, currency),
                "reason": credit_note.reason.as_str(),
                "to_amount_due": money(&credit_note.to_amount_due, currency),
                "to_credit": money(&credit_note.to_credit, currency),
                "refunded": money(&credit_note.refunded, currency),
                "invoice_amount_due": money(&amount_due, currency),
                "issued_at": time(&credit_note.issued_at),
            }),
        ),
        InvoiceEvent::InvoiceMarkedUncollectible {
            customer_id,
            currency,
            amount,
            at,
        } => one(
            INVOICE_MARKED_UNCOLLECTIBLE,
            json!({
                "tenant_id": tenant_id,
                "invoice_id": invoice_id,
                "customer_id": customer_id,
                "currency": currency.code(),
                "amount": money(&amount, currency),
                "marked_at": time(&at),
            }),
        ),
    }
}

fn provider_payment(
    e: &StoredEvent,
    event: tally_aggregates::ProviderPaymentEvent,
) -> Vec<Integration> {
    use tally_aggregates::ProviderPaymentEvent as P;
    let tenant_id = &e.tenant;
    match event {
        P::ProviderPaymentReceived {
            provider,
            payment_id,
            reference,
            currency,
            customer_id,
            invoice_id,
            amount,
            applied,
            credited,
            received_at,
        } => one(
            PAYMENT_RECEIVED,
            json!({
                "tenant_id": tenant_id,
                "provider": provider,
                "payment_id": payment_id,
                "reference": reference,
                "customer_id": customer_id,
                "invoice_id": invoice_id,
                "currency": currency.code(),
                "amount": money(&amount, currency),
                "applied": money(&applied, currency),
                "credited": money(&credited, currency),
                "received_at": time(&received_at),
            }),
        ),
        P::ProviderPaymentRefunded {
            payment_id,
            refund_id,
            currency,
            customer_id,
            invoice_id,
            amount,
            refunded,
            refunded_at,
        } => one(
            PAYMENT_REFUNDED,
            json!({
                "tenant_id": tenant_id,
                "payment_id": payment_id,
                "refund_id": refund_id,
                "customer_id": customer_id,
                "invoice_id": invoice_id,
                "currency": currency.code(),
                "amount": money(&amount, currency),
                "refunded": money(&refunded, currency),
                "refunded_at": time(&refunded_at),
            }),
        ),
    }
}

fn usage(e: &StoredEvent, event: UsageEvent) -> Vec<Integration> {
    let (tenant_id, record_id) = (&e.tenant, e.resource_id());
    match event {
        // The client's `properties` are free-form and nested: not part of a
        // flat, stable contract.
        UsageEvent::UsageRecorded {
            transaction_id,
            subscription_id,
            meter,
            quantity,
            timestamp,
            window,
            recorded_at,
            ..
        } => one(
            USAGE_RECORDED,
            json!({
                "tenant_id": tenant_id,
                "record_id": record_id,
                "transaction_id": transaction_id,
                "subscription_id": subscription_id,
                "meter": meter,
                "quantity": decimal(&quantity),
                "timestamp": time(&timestamp),
                "window_start": time(&window.start),
                "window_end": window.end.as_ref().map(time),
                "recorded_at": time(&recorded_at),
            }),
        ),
        UsageEvent::UsageVoided {
            subscription_id,
            meter,
            quantity,
            window,
            reason,
            voided_at,
        } => one(
            USAGE_VOIDED,
            json!({
                "tenant_id": tenant_id,
                "record_id": record_id,
                "subscription_id": subscription_id,
                "meter": meter,
                "quantity": decimal(&quantity),
                "window_start": time(&window.start),
                "window_end": window.end.as_ref().map(time),
                "reason": reason,
                "voided_at": time(&voided_at),
            }),
        ),
        UsageEvent::UsageBilled { .. } => vec![],
    }
}

fn ticket(e: &StoredEvent, event: TicketEvent) -> Vec<Integration> {
    let (tenant_id, ticket_id) = (&e.tenant, e.resource_id());
    match event {
        TicketEvent::TicketCreated {
            subject,
            description,
            requester,
            priority,
            subscription_id,
            created_at,
            ..
        } => one(
            TICKET_CREATED,
            json!({
                "tenant_id": tenant_id,
                "ticket_id": ticket_id,
                "subject": subject,
                "description": description,
                "requester": requester,
                "priority": priority.as_str(),
                "subscription_id": subscription_id,
                "created_at": time(&created_at),
            }),
        ),
        TicketEvent::TicketAssigned {
            assignee,
            previous,
            assigned_at,
            ..
        } => one(
            TICKET_ASSIGNED,
            json!({
                "tenant_id": tenant_id,
                "ticket_id": ticket_id,
                "assignee": assignee,
                "previous_assignee": previous,
                "assigned_at": time(&assigned_at),
            }),
        ),
        // An internal comment is for agents only: it must never leave Tally.
        TicketEvent::CommentAdded { comment, .. } if !comment.public => vec![],
        TicketEvent::CommentAdded { comment, .. } => one(
            TICKET_COMMENTED,
            json!({
                "tenant_id": tenant_id,
                "ticket_id": ticket_id,
                "comment_id": comment.id,
                "author": comment.author,
                "body": comment.body,
                "commented_at": time(&comment.created_at),
            }),
        ),
        TicketEvent::AttachmentAdded { .. } => vec![],
        TicketEvent::TicketStatusChanged {
            from,
            to,
            changed_at,
            by,
            ..
        } => one(
            TICKET_STATUS_CHANGED,
            json!({
                "tenant_id": tenant_id,
                "ticket_id": ticket_id,
                "from_status": from.as_str(),
                "to_status": to.as_str(),
                "changed_by": by,
                "changed_at": time(&changed_at),
            }),
        ),
    }
}

/// The version in a topic name: the first dot-separated part `v<N>`, else 1.
fn topic_version(topic: &str) -> u32 {
    topic
        .split('.')
        .find_map(|part| part.strip_prefix('v')?.parse::<u32>().ok())
        .unwrap_or(1)
}

/// The envelope every outbound channel (webhooks, NATS) sends: `id` is the
/// event id, so a redelivery carries the same id and receivers can dedupe.
pub fn envelope(e: &StoredEvent, i: &Integration) -> Value {
    let name = i.topic.rsplit('.').next().unwrap_or(i.topic);
    let version = topic_version(i.topic);
    json!({
        "id": e.event_id,
        "type": name,
        "topic": i.topic,
        "tenant_id": e.tenant,
        "subject": {"type": e.aggregate_type, "id": e.resource_id()},
        "created_at": e.recorded_at,
        "schema_version": version,
        "correlation_id": e.metadata.get("correlation_id"),
        "causation_id": e.metadata.get("causation_id"),
        "data": i.data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn stored(payload: Value) -> StoredEvent {
        StoredEvent {
            position: 7,
            event_id: "evt".into(),
            tenant: "acme".into(),
            aggregate_type: "subscription".into(),
            aggregate_id: "acme:sub_1".into(),
            sequence: 3,
            event_type: "SubscriptionSuspended".into(),
            event_version: "1.0".into(),
            payload: payload.to_string(),
            metadata: HashMap::new(),
            recorded_at: "2026-01-01T00:00:00.000000Z".into(),
        }
    }

    #[test]
    fn quota_suspension_maps_to_the_suspended_topic_with_the_meter() {
        let e = SubscriptionEvent::SubscriptionSuspended {
            reason: SuspendReason::QuotaExceeded {
                meter: "api_calls".into(),
            },
            suspended_at: "2026-01-05T00:00:00Z".parse().unwrap(),
        };
        let i = integration_event(&stored(serde_json::to_value(&e).unwrap())).unwrap();
        assert_eq!(i.topic, "billing.subscriptions.v1.subscription-suspended");
        assert_eq!(i.data["tenant_id"], "acme");
        assert_eq!(i.data["subscription_id"], "sub_1");
        assert_eq!(i.data["reason"], "quota_exceeded");
        assert_eq!(i.data["meter"], "api_calls");
    }

    #[test]
    fn envelope_carries_the_event_id_subject_and_version() {
        let e = SubscriptionEvent::SubscriptionSuspended {
            reason: SuspendReason::NonPayment,
            suspended_at: "2026-01-05T00:00:00Z".parse().unwrap(),
        };
        let mut stored = stored(serde_json::to_value(&e).unwrap());
        stored
            .metadata
            .insert("correlation_id".into(), "corr-1".into());
        let i = integration_event(&stored).unwrap();
        let env = envelope(&stored, &i);
        assert_eq!(env["id"], "evt");
        assert_eq!(env["type"], "subscription-suspended");
        assert_eq!(env["topic"], SUBSCRIPTION_SUSPENDED);
        assert_eq!(env["tenant_id"], "acme");
        assert_eq!(
            env["subject"],
            json!({"type": "subscription", "id": "sub_1"})
        );
        assert_eq!(env["schema_version"], 1);
        assert_eq!(env["correlation_id"], "corr-1");
        assert_eq!(env["causation_id"], Value::Null);
        assert_eq!(env["created_at"], "2026-01-01T00:00:00.000000Z");
        assert_eq!(env["data"]["reason"], "non_payment");
    }

    #[test]
    fn manual_suspension_has_no_meter() {
        let e = SubscriptionEvent::SubscriptionSuspended {
            reason: SuspendReason::Manual {
                note: Some("x".into()),
            },
            suspended_at: "2026-01-05T00:00:00Z".parse().unwrap(),
        };
        let i = integration_event(&stored(serde_json::to_value(&e).unwrap())).unwrap();
        assert_eq!(i.data["reason"], "manual");
        assert_eq!(i.data["meter"], Value::Null);
        // The operator's note is internal.
        assert!(i.data.get("note").is_none());
    }

    #[test]
    fn topic_versions_are_read_from_the_name() {
        assert_eq!(topic_version(SUBSCRIPTION_SUSPENDED), 1);
        assert_eq!(topic_version("billing.invoices.v2.invoice-paid"), 2);
        assert!(TOPICS.iter().all(|s| s.version() == 1));
    }
}
