//! The published language is a contract with people outside Tally, so it
//! must not drift. These tests hold three copies of it against each other:
//!
//! - the code's table (`topics::TOPICS`, `topics::NOT_PUBLISHED`) and what
//!   `integration_events` actually builds from real events;
//! - `docs/published-language.md`, parsed table by table;
//! - [`EVER_PUBLISHED`], the append-only history of every topic and field
//!   that has been published, which catches a rename or a breaking change
//!   that was made in the code and the document together.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use serde_json::Value;
use tally_aggregates::invoice::{CreditNote, CreditReason, CreditSource};
use tally_aggregates::subscription::Discount;
use tally_aggregates::{
    usage::UsageWindow, Address, Comment, Currency, CustomerDetails, CustomerEvent, InboxEvent,
    Interval, Invoice, InvoiceCommand, InvoiceEvent, LineKind, NewLine, NumberingEvent, Payment,
    Period, PlanEvent, PlanTerms, Priority, ProrationFigures, SeatLimits, SubscriptionEvent,
    SuspendReason, Ticket, TicketCommand, TicketEvent, TicketStatus, UsageEvent,
};
use tally_aggregates::{
    AppliedDiscount, CouponDuration, CouponEvent, CouponOff, CouponTerms, InboundNoticeEvent,
    ProviderPaymentEvent, TaxRateEvent, TaxRateTerms,
};
use tally_commands::topics::{
    envelope, integration_event, integration_events, spec, Field, FieldType, TopicSpec,
    NOT_PUBLISHED, PRIORITIES, TICKET_STATUSES, TOPICS,
};
use tally_projections::StoredEvent;

const DOC: &str = include_str!("../../docs/published-language.md");

/// Every topic ever published, with the `data` fields (name, type) it was
/// first published with. APPEND ONLY: never edit or remove an entry.
///
/// Why: receivers subscribe to topic names and read fields by name. Renaming
/// a topic in the code and the document together keeps those two in sync
/// but silently breaks every receiver; so does renaming, retyping or dropping
/// a field. With this list such a change fails
/// `every_topic_ever_published_is_still_published_with_its_fields`; the way
/// out is the versioning rule: publish the new shape under a new `v<N+1>`
/// topic, keep the old topic, and add the new topic here. A topic is only
/// ever removed through [`RETIRED`], after its retirement was announced.
/// Adding a field to a topic, or a value to an enum, is not breaking and
/// needs no entry here.
const EVER_PUBLISHED: &[(&str, &[(&str, &str)])] = &[
    (
        "billing.plans.v1.plan-created",
        &[
            ("tenant_id", "id"),
            ("plan_id", "id"),
            ("code", "string"),
            ("name", "string"),
            ("currency", "currency"),
            ("interval", "enum(month, year)"),
            ("base_price", "decimal"),
            ("seat_price", "decimal"),
            ("min_seats", "integer"),
            ("max_seats", "integer"),
            ("created_at", "timestamp"),
        ],
    ),
    (
        "billing.plans.v1.plan-archived",
        &[
            ("tenant_id", "id"),
            ("plan_id", "id"),
            ("archived_at", "timestamp"),
        ],
    ),
    (
        "billing.subscriptions.v1.subscription-created",
        &[
            ("tenant_id", "id"),
            ("subscription_id", "id"),
            ("customer_id", "id"),
            ("plan_id", "id"),
            ("currency", "currency"),
            ("seats", "integer"),
            ("created_at", "timestamp"),
        ],
    ),
    (
        "billing.subscriptions.v1.trial-started",
        &[
            ("tenant_id", "id"),
            ("subscription_id", "id"),
            ("trial_start", "timestamp"),
            ("trial_end", "timestamp"),
        ],
    ),
    (
        "billing.subscriptions.v1.trial-ended",
        &[
            ("tenant_id", "id"),
            ("subscription_id", "id"),
            ("ended_at", "timestamp"),
        ],
    ),
    (
        "billing.subscriptions.v1.subscription-activated",
        &[
            ("tenant_id", "id"),
            ("subscription_id", "id"),
            ("current_period_start", "timestamp"),
            ("current_period_end", "timestamp"),
            ("activated_at", "timestamp"),
        ],
    ),
    (
        "billing.subscriptions.v1.subscription-plan-changed",
        &[
            ("tenant_id", "id"),
            ("subscription_id", "id"),
            ("from_plan_id", "id"),
            ("to_plan_id", "id"),
            ("proration_amount", "decimal?"),
            ("currency", "currency"),
            ("changed_at", "timestamp"),
        ],
    ),
    (
        "billing.subscriptions.v1.subscription-seats-changed",
        &[
            ("tenant_id", "id"),
            ("subscription_id", "id"),
            ("from_seats", "integer"),
            ("to_seats", "integer"),
            ("proration_amount", "decimal?"),
            ("currency", "currency?"),
            ("changed_at", "timestamp"),
        ],
    ),
    (
        "billing.subscriptions.v1.subscription-suspended",
        &[
            ("tenant_id", "id"),
            ("subscription_id", "id"),
            ("reason", "enum(manual, non_payment, quota_exceeded)"),
            ("meter", "id?"),
            ("suspended_at", "timestamp"),
        ],
    ),
    (
        "billing.subscriptions.v1.subscription-resumed",
        &[
            ("tenant_id", "id"),
            ("subscription_id", "id"),
            ("resumed_at", "timestamp"),
        ],
    ),
    (
        "billing.subscriptions.v1.subscription-past-due",
        &[
            ("tenant_id", "id"),
            ("subscription_id", "id"),
            ("invoice_id", "id"),
            ("past_due_at", "timestamp"),
        ],
    ),
    (
        "billing.subscriptions.v1.subscription-past-due-cleared",
        &[
            ("tenant_id", "id"),
            ("subscription_id", "id"),
            ("invoice_id", "id"),
            ("cleared_at", "timestamp"),
        ],
    ),
    (
        "billing.subscriptions.v1.subscription-cancellation-scheduled",
        &[
            ("tenant_id", "id"),
            ("subscription_id", "id"),
            ("reason", "string?"),
            ("cancel_at", "timestamp"),
            ("scheduled_at", "timestamp"),
        ],
    ),
    (
        "billing.subscriptions.v1.subscription-canceled",
        &[
            ("tenant_id", "id"),
            ("subscription_id", "id"),
            ("reason", "string?"),
            ("canceled_at", "timestamp"),
        ],
    ),
    (
        "billing.subscriptions.v1.rating-window-closed",
        &[
            ("tenant_id", "id"),
            ("subscription_id", "id"),
            ("period_start", "timestamp"),
            ("period_end", "timestamp"),
            ("next_period_start", "timestamp"),
            ("next_period_end", "timestamp"),
            ("closed_at", "timestamp"),
        ],
    ),
    (
        "billing.customers.v1.customer-created",
        &[
            ("tenant_id", "id"),
            ("customer_id", "id"),
            ("name", "string"),
            ("email", "string?"),
            ("currency", "currency?"),
            ("country", "string?"),
            ("created_at", "timestamp"),
        ],
    ),
    (
        "billing.customers.v1.customer-updated",
        &[
            ("tenant_id", "id"),
            ("customer_id", "id"),
            ("name", "string"),
            ("email", "string?"),
            ("currency", "currency?"),
            ("country", "string?"),
            ("updated_at", "timestamp"),
        ],
    ),
    (
        "billing.invoices.v1.invoice-issued",
        &[
            ("tenant_id", "id"),
            ("invoice_id", "id"),
            ("number", "string"),
            ("customer_id", "id"),
            ("currency", "currency"),
            ("subtotal", "decimal"),
            ("total", "decimal"),
            ("amount_due", "decimal"),
            ("issued_at", "timestamp"),
            ("due_at", "timestamp"),
        ],
    ),
    (
        "billing.invoices.v1.invoice-paid",
        &[
            ("tenant_id", "id"),
            ("invoice_id", "id"),
            ("customer_id", "id"),
            ("subscription_id", "id?"),
            ("paid_at", "timestamp"),
        ],
    ),
    (
        "billing.invoices.v1.invoice-voided",
        &[
            ("tenant_id", "id"),
            ("invoice_id", "id"),
            ("customer_id", "id"),
            ("currency", "currency"),
            ("amount", "decimal"),
            ("reason", "string"),
            ("voided_at", "timestamp"),
        ],
    ),
    (
        "billing.invoices.v1.invoice-marked-uncollectible",
        &[
            ("tenant_id", "id"),
            ("invoice_id", "id"),
            ("customer_id", "id"),
            ("currency", "currency"),
            ("amount", "decimal"),
            ("marked_at", "timestamp"),
        ],
    ),
    (
        "billing.payments.v1.payment-captured",
        &[
            ("tenant_id", "id"),
            ("payment_id", "id"),
            ("invoice_id", "id"),
            ("customer_id", "id"),
            ("currency", "currency"),
            ("amount", "decimal"),
            ("reference", "string"),
            ("captured_at", "timestamp"),
            ("invoice_amount_paid", "decimal"),
            ("invoice_amount_due", "decimal"),
        ],
    ),
    (
        "metering.usage.v1.usage-recorded",
        &[
            ("tenant_id", "id"),
            ("record_id", "id"),
            ("transaction_id", "id"),
            ("subscription_id", "id"),
            ("meter", "id"),
            ("quantity", "decimal"),
            ("timestamp", "timestamp"),
            ("window_start", "timestamp"),
            ("window_end", "timestamp?"),
            ("recorded_at", "timestamp"),
        ],
    ),
    (
        "metering.usage.v1.usage-voided",
        &[
            ("tenant_id", "id"),
            ("record_id", "id"),
            ("subscription_id", "id"),
            ("meter", "id"),
            ("quantity", "decimal"),
            ("window_start", "timestamp"),
            ("window_end", "timestamp?"),
            ("reason", "string"),
            ("voided_at", "timestamp"),
        ],
    ),
    (
        "metering.quota.v1.quota-exceeded",
        &[
            ("tenant_id", "id"),
            ("subscription_id", "id"),
            ("meter", "id"),
            ("suspended_at", "timestamp"),
        ],
    ),
    (
        "support.tickets.v1.ticket-created",
        &[
            ("tenant_id", "id"),
            ("ticket_id", "id"),
            ("subject", "string"),
            ("description", "string"),
            ("requester", "id"),
            ("priority", "enum(low, normal, high, urgent)"),
            ("subscription_id", "id?"),
            ("created_at", "timestamp"),
        ],
    ),
    (
        "support.tickets.v1.ticket-assigned",
        &[
            ("tenant_id", "id"),
            ("ticket_id", "id"),
            ("assignee", "id"),
            ("previous_assignee", "id?"),
            ("assigned_at", "timestamp"),
        ],
    ),
    (
        "support.tickets.v1.ticket-commented",
        &[
            ("tenant_id", "id"),
            ("ticket_id", "id"),
            ("comment_id", "id"),
            ("author", "id"),
            ("body", "string"),
            ("commented_at", "timestamp"),
        ],
    ),
    (
        "support.tickets.v1.ticket-status-changed",
        &[
            ("tenant_id", "id"),
            ("ticket_id", "id"),
            (
                "from_status",
                "enum(new, open, pending, on_hold, solved, closed)",
            ),
            (
                "to_status",
                "enum(new, open, pending, on_hold, solved, closed)",
            ),
            ("changed_by", "id?"),
            ("changed_at", "timestamp"),
        ],
    ),
    (
        "billing.invoices.v1.credit-note-issued",
        &[
            ("tenant_id", "id"),
            ("credit_note_id", "id"),
            ("number", "string"),
            ("invoice_id", "id"),
            ("customer_id", "id"),
            ("currency", "currency"),
            ("amount", "decimal"),
            (
                "reason",
                "enum(duplicate, fraudulent, order_change, product_unsatisfactory, refund)",
            ),
            ("to_amount_due", "decimal"),
            ("to_credit", "decimal"),
            ("refunded", "decimal"),
            ("invoice_amount_due", "decimal"),
            ("issued_at", "timestamp"),
        ],
    ),
    (
        "billing.payments.v1.payment-received",
        &[
            ("tenant_id", "id"),
            ("provider", "enum(stripe, polar, mercadopago)"),
            ("payment_id", "id"),
            ("reference", "string"),
            ("customer_id", "id"),
            ("invoice_id", "id?"),
            ("currency", "currency"),
            ("amount", "decimal"),
            ("applied", "decimal"),
            ("credited", "decimal"),
            ("received_at", "timestamp"),
        ],
    ),
    (
        "billing.payments.v1.payment-refunded",
        &[
            ("tenant_id", "id"),
            ("payment_id", "id"),
            ("refund_id", "id"),
            ("customer_id", "id"),
            ("invoice_id", "id?"),
            ("currency", "currency"),
            ("amount", "decimal"),
            ("refunded", "decimal"),
            ("refunded_at", "timestamp"),
        ],
    ),
    (
        "billing.customers.v1.customer-credit-changed",
        &[
            ("tenant_id", "id"),
            ("customer_id", "id"),
            ("currency", "currency"),
            ("amount", "decimal"),
            ("balance", "decimal"),
            (
                "source",
                "enum(applied_to_invoice, negative_invoice, overpayment, credit_note, unapplied_payment, refunded_payment)",
            ),
            ("invoice_id", "id?"),
            ("changed_at", "timestamp"),
        ],
    ),
    (
        "billing.subscriptions.v1.discount-applied",
        &[
            ("tenant_id", "id"),
            ("subscription_id", "id"),
            ("coupon_id", "id"),
            ("code", "string"),
            ("periods_left", "integer?"),
            ("applied_at", "timestamp"),
        ],
    ),
    (
        "billing.subscriptions.v1.discount-removed",
        &[
            ("tenant_id", "id"),
            ("subscription_id", "id"),
            ("coupon_id", "id"),
            ("removed_at", "timestamp"),
        ],
    ),
    (
        "billing.coupons.v1.coupon-created",
        &[
            ("tenant_id", "id"),
            ("coupon_id", "id"),
            ("code", "string"),
            ("percent_off", "decimal?"),
            ("amount_off", "decimal?"),
            ("currency", "currency?"),
            ("duration", "enum(once, repeating, forever)"),
            ("duration_in_periods", "integer?"),
            ("max_redemptions", "integer?"),
            ("redeem_by", "timestamp?"),
            ("created_at", "timestamp"),
        ],
    ),
    (
        "billing.coupons.v1.coupon-redeemed",
        &[
            ("tenant_id", "id"),
            ("coupon_id", "id"),
            ("subscription_id", "id"),
            ("times_redeemed", "integer"),
            ("redeemed_at", "timestamp"),
        ],
    ),
    (
        "billing.coupons.v1.coupon-archived",
        &[
            ("tenant_id", "id"),
            ("coupon_id", "id"),
            ("archived_at", "timestamp"),
        ],
    ),
    (
        "billing.tax-rates.v1.tax-rate-created",
        &[
            ("tenant_id", "id"),
            ("tax_rate_id", "id"),
            ("name", "string"),
            ("percentage", "decimal"),
            ("inclusive", "boolean"),
            ("country", "string?"),
            ("created_at", "timestamp"),
        ],
    ),
    (
        "billing.tax-rates.v1.tax-rate-archived",
        &[
            ("tenant_id", "id"),
            ("tax_rate_id", "id"),
            ("archived_at", "timestamp"),
        ],
    ),
];

/// Topics from [`EVER_PUBLISHED`] that were retired on purpose (announced,
/// superseded by a later version). Empty: nothing has been retired.
const RETIRED: &[&str] = &[];

// ---------------------------------------------------------------------------
// The document, parsed.

/// What `docs/published-language.md` says, table by table.
#[derive(Debug, Default)]
struct Doc {
    /// The "Topics" overview: (topic, aggregate, event, description).
    overview: Vec<(String, String, String, String)>,
    /// One section per topic: its field rows (name, type), in order.
    sections: BTreeMap<String, Vec<(String, String)>>,
    /// The "Events that are not published" table: (aggregate, event, why).
    not_published: Vec<(String, String, String)>,
}

/// The text between the backticks of a cell that must be code (`x`).
fn code(cell: &str) -> String {
    let inner = cell
        .strip_prefix('`')
        .and_then(|c| c.strip_suffix('`'))
        .unwrap_or_else(|| panic!("expected a `code` cell, found {cell:?}"));
    assert!(!inner.contains('`'), "one code span per cell: {cell:?}");
    inner.to_owned()
}

/// `` `aggregate` / `Event` `` → (aggregate, Event).
fn source(cell: &str) -> (String, String) {
    let (aggregate, event) = cell
        .split_once(" / ")
        .unwrap_or_else(|| panic!("expected `aggregate` / `Event`, found {cell:?}"));
    (code(aggregate), code(event))
}

fn parse_doc(text: &str) -> Doc {
    let mut doc = Doc::default();
    let mut h2 = String::new();
    let mut h3: Option<String> = None;
    let mut in_fence = false;
    for line in text.lines() {
        if line.starts_with("```") {
            in_fence = !in_fence;
            continue;
        }
        if in_fence {
            continue;
        }
        if let Some(title) = line.strip_prefix("## ") {
            h2 = title.trim().to_owned();
            h3 = None;
            continue;
        }
        if let Some(title) = line.strip_prefix("### ") {
            let topic = code(title.trim());
            assert_eq!(h2, "Topics", "topic section {topic} outside ## Topics");
            assert!(
                doc.sections.insert(topic.clone(), vec![]).is_none(),
                "two sections for {topic}"
            );
            h3 = Some(topic);
            continue;
        }
        let Some(row) = line.strip_prefix('|') else {
            continue;
        };
        let cells: Vec<&str> = row
            .trim_end()
            .strip_suffix('|')
            .unwrap_or_else(|| panic!("table row without a closing pipe: {line:?}"))
            .split('|')
            .map(str::trim)
            .collect();
        // Header and separator rows.
        if cells[0].starts_with("---") || !cells[0].starts_with('`') {
            continue;
        }
        match (h2.as_str(), &h3) {
            ("Topics", None) => {
                assert_eq!(cells.len(), 3, "overview row: {line:?}");
                let (aggregate, event) = source(cells[1]);
                doc.overview
                    .push((code(cells[0]), aggregate, event, cells[2].to_owned()));
            }
            ("Topics", Some(topic)) => {
                assert_eq!(cells.len(), 3, "field row of {topic}: {line:?}");
                doc.sections
                    .get_mut(topic)
                    .expect("section exists")
                    .push((code(cells[0]), code(cells[1])));
            }
            ("Events that are not published", _) => {
                assert_eq!(cells.len(), 2, "unpublished row: {line:?}");
                let (aggregate, event) = source(cells[0]);
                doc.not_published
                    .push((aggregate, event, cells[1].to_owned()));
            }
            // The envelope and field-type tables are prose for people.
            _ => {}
        }
    }
    assert!(!in_fence, "unclosed code fence");
    doc
}

fn doc() -> Doc {
    parse_doc(DOC)
}

fn code_fields(spec: &TopicSpec) -> Vec<(String, String)> {
    spec.data
        .iter()
        .map(|f| (f.name.to_owned(), f.type_name()))
        .collect()
}

// ---------------------------------------------------------------------------
// Code ⇄ document.

#[test]
fn the_document_lists_exactly_the_topics_in_the_code_table() {
    let doc = doc();
    let in_code: Vec<_> = TOPICS
        .iter()
        .map(|s| {
            (
                s.topic.to_owned(),
                s.aggregate.to_string(),
                s.event.to_owned(),
                s.description.to_owned(),
            )
        })
        .collect();
    assert_eq!(
        doc.overview, in_code,
        "the Topics table of docs/published-language.md and topics::TOPICS differ"
    );
}

#[test]
fn every_topic_has_a_section_with_exactly_the_code_fields() {
    let doc = doc();
    for spec in TOPICS {
        let documented = doc
            .sections
            .get(spec.topic)
            .unwrap_or_else(|| panic!("no section for {} in the document", spec.topic));
        assert_eq!(
            documented,
            &code_fields(spec),
            "fields of {} differ between the document and the code",
            spec.topic
        );
    }
    let in_code: BTreeSet<_> = TOPICS.iter().map(|s| s.topic.to_owned()).collect();
    let extra: Vec<_> = doc
        .sections
        .keys()
        .filter(|t| !in_code.contains(*t))
        .collect();
    assert!(
        extra.is_empty(),
        "documented topics not in the code: {extra:?}"
    );
}

#[test]
fn the_document_lists_exactly_the_unpublished_events() {
    let in_code: Vec<_> = NOT_PUBLISHED
        .iter()
        .map(|u| {
            (
                u.aggregate.to_string(),
                u.event.to_owned(),
                u.reason.to_owned(),
            )
        })
        .collect();
    assert_eq!(doc().not_published, in_code);
}

#[test]
fn the_parser_sees_drift() {
    // Guards the guard: a document with a renamed field, or with a topic the
    // code does not have, must not parse equal to the code.
    let topic = "billing.invoices.v1.invoice-paid";
    let renamed = DOC.replace("| `paid_at` |", "| `paid_on` |");
    assert_ne!(
        parse_doc(&renamed).sections[topic],
        code_fields(spec(topic).unwrap())
    );
    let extra = DOC.replace(
        "## Events that are not published",
        "### `billing.invoices.v1.invoice-sent`\n\n| field | type | meaning |\n|---|---|---|\n\
         | `tenant_id` | `id` | The tenant. |\n\n## Events that are not published",
    );
    assert!(parse_doc(&extra)
        .sections
        .contains_key("billing.invoices.v1.invoice-sent"));
}

// ---------------------------------------------------------------------------
// Names and versions.

#[test]
fn every_topic_ever_published_is_still_published_with_its_fields() {
    for (topic, frozen) in EVER_PUBLISHED {
        if RETIRED.contains(topic) {
            assert!(
                spec(topic).is_none(),
                "{topic} is retired but still in the table"
            );
            continue;
        }
        let Some(current) = spec(topic) else {
            panic!(
                "{topic} was published and is gone: a topic is never renamed or \
                 removed; publish the new name under a new version and keep this one"
            );
        };
        for (name, frozen_type) in *frozen {
            let field = current.data.iter().find(|f| f.name == *name);
            let Some(field) = field else {
                panic!("{topic}: field {name} was published and is gone (a breaking change needs a new version)");
            };
            assert!(
                compatible(frozen_type, field),
                "{topic}: field {name} was published as {frozen_type} and is now {} \
                 (a breaking change needs a new version)",
                field.type_name()
            );
        }
    }
}

/// Whether `field` still reads as `frozen` did: the same type and
/// nullability, where an enum may have gained values but kept every old one.
fn compatible(frozen: &str, field: &Field) -> bool {
    let current = field.type_name();
    if current == frozen {
        return true;
    }
    let values = |t: &str| -> Option<(BTreeSet<String>, bool)> {
        let (t, nullable) = match t.strip_suffix('?') {
            Some(t) => (t, true),
            None => (t, false),
        };
        let inner = t.strip_prefix("enum(")?.strip_suffix(')')?;
        Some((inner.split(", ").map(str::to_owned).collect(), nullable))
    };
    match (values(frozen), values(&current)) {
        (Some((old, old_null)), Some((new, new_null))) => {
            old_null == new_null && old.is_subset(&new)
        }
        _ => false,
    }
}

#[test]
fn every_published_topic_is_in_the_history() {
    // Keeps EVER_PUBLISHED complete, so that the test above guards every
    // topic from the day it is first published.
    for spec in TOPICS {
        assert!(
            EVER_PUBLISHED
                .iter()
                .any(|(topic, fields)| *topic == spec.topic && !fields.is_empty()),
            "{} is published but not in EVER_PUBLISHED; append it with its fields",
            spec.topic
        );
    }
    let mut seen = BTreeSet::new();
    for (topic, _) in EVER_PUBLISHED {
        assert!(seen.insert(topic), "{topic} twice in EVER_PUBLISHED");
    }
}

#[test]
fn topic_names_are_well_formed_and_unique() {
    let mut seen = BTreeSet::new();
    for spec in TOPICS {
        assert!(seen.insert(spec.topic), "{} twice in TOPICS", spec.topic);
        let parts: Vec<&str> = spec.topic.split('.').collect();
        assert_eq!(
            parts.len(),
            4,
            "{}: <domain>.<resource>.v<N>.<name>",
            spec.topic
        );
        let version = parts[2]
            .strip_prefix('v')
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or_else(|| panic!("{}: third part must be v<N>", spec.topic));
        assert!(version >= 1);
        assert_eq!(spec.version(), version);
        for part in [parts[0], parts[1], parts[3]] {
            assert!(
                !part.is_empty()
                    && part
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
                "{}: parts are lowercase kebab-case",
                spec.topic
            );
        }
        let mut names = BTreeSet::new();
        for field in spec.data {
            assert!(
                names.insert(field.name),
                "{}: {} twice",
                spec.topic,
                field.name
            );
            assert!(
                field
                    .name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
                "{}: {} is not snake_case",
                spec.topic,
                field.name
            );
        }
        // Every message names its tenant; a receiver serving many tenants
        // must not have to read the envelope to route `data`.
        assert_eq!(spec.data[0].name, "tenant_id", "{}", spec.topic);
    }
}

#[test]
fn the_tables_name_the_aggregates_by_their_stored_type() {
    // `integration_events` dispatches on the stored `aggregate_type`; if an
    // aggregate's TYPE changed, its events would silently stop publishing.
    use cqrs_es::Aggregate;
    let stored_types = BTreeSet::from([
        tally_aggregates::Plan::TYPE,
        tally_aggregates::Subscription::TYPE,
        tally_aggregates::Customer::TYPE,
        tally_aggregates::Coupon::TYPE,
        tally_aggregates::TaxRate::TYPE,
        tally_aggregates::Invoice::TYPE,
        tally_aggregates::InvoiceNumbering::TYPE,
        tally_aggregates::UsageRecord::TYPE,
        tally_aggregates::Ticket::TYPE,
        tally_aggregates::Inbox::TYPE,
        tally_aggregates::AccessKey::TYPE,
        tally_aggregates::InboundNotice::TYPE,
        tally_aggregates::ProviderPayment::TYPE,
    ]);
    let in_tables: BTreeSet<&str> = TOPICS
        .iter()
        .map(|s| s.aggregate.as_str())
        .chain(NOT_PUBLISHED.iter().map(|u| u.aggregate.as_str()))
        .collect();
    assert_eq!(in_tables, stored_types);
}

#[test]
fn enum_values_are_the_domain_values() {
    let statuses: Vec<&str> = TicketStatus::ALL.iter().map(|s| s.as_str()).collect();
    assert_eq!(TICKET_STATUSES, statuses.as_slice());
    let priorities: Vec<&str> = Priority::ALL.iter().map(|p| p.as_str()).collect();
    assert_eq!(PRIORITIES, priorities.as_slice());
    let intervals = [Interval::Month.as_str(), Interval::Year.as_str()];
    assert_eq!(tally_commands::topics::INTERVALS, intervals.as_slice());
    let reasons: Vec<&str> = CreditReason::ALL.iter().map(|r| r.as_str()).collect();
    assert_eq!(tally_commands::topics::CREDIT_REASONS, reasons.as_slice());
    let durations: Vec<&str> = tally_aggregates::CouponDuration::ALL
        .iter()
        .map(|d| d.as_str())
        .collect();
    assert_eq!(
        tally_commands::topics::COUPON_DURATIONS,
        durations.as_slice()
    );
}

// ---------------------------------------------------------------------------
// Events → integration events.

fn t(rfc3339: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(rfc3339)
        .expect("test time")
        .with_timezone(&Utc)
}

fn dec(s: &str) -> Decimal {
    Decimal::from_str_exact(s).expect("test decimal")
}

fn eur() -> Currency {
    Currency::parse("EUR").expect("EUR")
}

fn terms() -> PlanTerms {
    PlanTerms {
        code: "pro".into(),
        name: "Pro".into(),
        currency: eur(),
        interval: Interval::Month,
        base_price: dec("20.00"),
        seat_price: dec("5"),
        seats: SeatLimits { min: 1, max: 50 },
        meters: vec![],
        trial_days: 0,
        tax_rate_ids: vec![],
    }
}

fn customer_details() -> CustomerDetails {
    CustomerDetails {
        name: "Ana Lima".into(),
        email: Some("ana@example.com".into()),
        currency: Some(eur()),
        address: Some(Address {
            line1: "Rua A 1".into(),
            line2: None,
            city: "Lisboa".into(),
            postal_code: Some("1000-001".into()),
            country: "PT".into(),
        }),
        tax_rate_ids: vec![],
        metadata: Default::default(),
    }
}

fn period(start: &str, end: &str) -> Period {
    Period {
        start: t(start),
        end: t(end),
    }
}

fn coupon_terms(off: CouponOff) -> CouponTerms {
    CouponTerms {
        code: "TEN".into(),
        name: None,
        off,
        duration: CouponDuration::Repeating,
        duration_in_periods: Some(3),
        max_redemptions: Some(100),
        redeem_by: Some(t("2026-06-01T00:00:00Z")),
        plan_ids: vec![],
    }
}

fn proration() -> ProrationFigures {
    ProrationFigures::compute(
        period("2026-01-01T00:00:00Z", "2026-02-01T00:00:00Z"),
        t("2026-01-16T12:00:00Z"),
        dec("20.00"),
        dec("30.00"),
        eur(),
    )
}

/// A stored event as the log reader returns it, in tenant `acme`.
fn stored<E: Serialize>(aggregate: &str, id: &str, event_type: &str, event: &E) -> StoredEvent {
    StoredEvent {
        position: 42,
        event_id: format!("evt-{event_type}"),
        tenant: "acme".into(),
        aggregate_type: aggregate.into(),
        aggregate_id: format!("acme:{id}"),
        sequence: 1,
        event_type: event_type.into(),
        event_version: tally_aggregates::EVENT_VERSION.into(),
        payload: serde_json::to_string(event).expect("event serializes"),
        metadata: HashMap::from([("correlation_id".to_owned(), "corr-1".to_owned())]),
        recorded_at: "2026-01-16T12:00:00.000001Z".into(),
    }
}

fn plan_event(e: PlanEvent) -> StoredEvent {
    stored("plan", "plan_pro", e.name(), &e)
}

fn sub_event(e: SubscriptionEvent) -> StoredEvent {
    stored("subscription", "sub_1", e.name(), &e)
}

fn invoice_event(e: InvoiceEvent) -> StoredEvent {
    stored("invoice", "inv_1", e.name(), &e)
}

fn usage_event(e: UsageEvent) -> StoredEvent {
    stored("usage_record", "use_1", e.name(), &e)
}

fn ticket_event(e: TicketEvent) -> StoredEvent {
    stored("ticket", "tkt_1", e.name(), &e)
}

fn month_window() -> UsageWindow {
    UsageWindow {
        start: t("2026-01-01T00:00:00Z"),
        end: Some(t("2026-02-01T00:00:00Z")),
    }
}

/// One event of every variant of every aggregate (and the variants' cases
/// that publish differently), with the topics each must publish, in order.
fn samples() -> Vec<(&'static str, StoredEvent, Vec<&'static str>)> {
    use tally_commands::topics::*;
    let comment = |public: bool| TicketEvent::CommentAdded {
        comment: Comment {
            id: "cmt_1".into(),
            author: "agent_ann".into(),
            body: "Looking into it.".into(),
            public,
            created_at: t("2026-01-16T12:00:00Z"),
        },
        requester: "cus_1".into(),
        assignee: Some("agent_ann".into()),
        subject: "Invoice question".into(),
    };
    vec![
        (
            "plan created",
            plan_event(PlanEvent::PlanCreated {
                plan_id: "plan_pro".into(),
                terms: terms(),
                created_at: t("2026-01-01T00:00:00Z"),
            }),
            vec![PLAN_CREATED],
        ),
        (
            "plan archived",
            plan_event(PlanEvent::PlanArchived {
                archived_at: t("2026-01-02T00:00:00Z"),
            }),
            vec![PLAN_ARCHIVED],
        ),
        (
            "subscription created",
            sub_event(SubscriptionEvent::SubscriptionCreated {
                subscription_id: "sub_1".into(),
                customer_id: "cus_1".into(),
                plan_id: "plan_pro".into(),
                plan: terms(),
                seats: 3,
                created_at: t("2026-01-01T00:00:00Z"),
                trial_days: None,
                tax_rate_ids: vec![],
            }),
            vec![SUBSCRIPTION_CREATED],
        ),
        (
            "customer created",
            stored(
                "customer",
                "cus_1",
                "CustomerCreated",
                &CustomerEvent::CustomerCreated {
                    customer_id: "cus_1".into(),
                    details: customer_details(),
                    created_at: t("2026-01-01T00:00:00Z"),
                },
            ),
            vec![CUSTOMER_CREATED],
        ),
        (
            "customer updated",
            stored(
                "customer",
                "cus_1",
                "CustomerUpdated",
                &CustomerEvent::CustomerUpdated {
                    details: CustomerDetails {
                        email: None,
                        address: None,
                        currency: None,
                        ..customer_details()
                    },
                    updated_at: t("2026-01-02T00:00:00Z"),
                },
            ),
            vec![CUSTOMER_UPDATED],
        ),
        (
            "trial started",
            sub_event(SubscriptionEvent::TrialStarted {
                trial_start: t("2026-01-01T00:00:00Z"),
                trial_end: t("2026-01-15T00:00:00Z"),
            }),
            vec![TRIAL_STARTED],
        ),
        (
            "trial ended",
            sub_event(SubscriptionEvent::TrialEnded {
                ended_at: t("2026-01-15T00:00:00Z"),
            }),
            vec![TRIAL_ENDED],
        ),
        (
            "subscription activated",
            sub_event(SubscriptionEvent::SubscriptionActivated {
                anchor: t("2026-01-01T00:00:00Z"),
                period: period("2026-01-01T00:00:00Z", "2026-02-01T00:00:00Z"),
                activated_at: t("2026-01-01T00:00:00Z"),
                plan: Some(terms()),
                seats: Some(3),
                discount: None,
            }),
            vec![SUBSCRIPTION_ACTIVATED],
        ),
        (
            "subscription activated, stored before plan and seats were added",
            sub_event(SubscriptionEvent::SubscriptionActivated {
                anchor: t("2026-01-01T00:00:00Z"),
                period: period("2026-01-01T00:00:00Z", "2026-02-01T00:00:00Z"),
                activated_at: t("2026-01-01T00:00:00Z"),
                plan: None,
                seats: None,
                discount: None,
            }),
            vec![SUBSCRIPTION_ACTIVATED],
        ),
        (
            "plan changed with proration",
            sub_event(SubscriptionEvent::PlanChanged {
                from_plan_id: "plan_basic".into(),
                to_plan_id: "plan_pro".into(),
                plan: terms(),
                proration: Some(proration()),
                changed_at: t("2026-01-16T12:00:00Z"),
            }),
            vec![SUBSCRIPTION_PLAN_CHANGED],
        ),
        (
            "plan changed without proration",
            sub_event(SubscriptionEvent::PlanChanged {
                from_plan_id: "plan_basic".into(),
                to_plan_id: "plan_pro".into(),
                plan: terms(),
                proration: None,
                changed_at: t("2026-01-16T12:00:00Z"),
            }),
            vec![SUBSCRIPTION_PLAN_CHANGED],
        ),
        (
            "seats changed with proration",
            sub_event(SubscriptionEvent::SeatsChanged {
                from: 3,
                to: 5,
                proration: Some(proration()),
                changed_at: t("2026-01-16T12:00:00Z"),
            }),
            vec![SUBSCRIPTION_SEATS_CHANGED],
        ),
        (
            "seats changed without proration",
            sub_event(SubscriptionEvent::SeatsChanged {
                from: 5,
                to: 3,
                proration: None,
                changed_at: t("2026-01-16T12:00:00Z"),
            }),
            vec![SUBSCRIPTION_SEATS_CHANGED],
        ),
        (
            "suspended by hand",
            sub_event(SubscriptionEvent::SubscriptionSuspended {
                reason: SuspendReason::Manual {
                    note: Some("fraud review".into()),
                },
                suspended_at: t("2026-01-16T12:00:00Z"),
            }),
            vec![SUBSCRIPTION_SUSPENDED],
        ),
        (
            "suspended for non-payment",
            sub_event(SubscriptionEvent::SubscriptionSuspended {
                reason: SuspendReason::NonPayment,
                suspended_at: t("2026-01-16T12:00:00Z"),
            }),
            vec![SUBSCRIPTION_SUSPENDED],
        ),
        (
            "suspended over a quota",
            sub_event(SubscriptionEvent::SubscriptionSuspended {
                reason: SuspendReason::QuotaExceeded {
                    meter: "api_calls".into(),
                },
                suspended_at: t("2026-01-16T12:00:00Z"),
            }),
            vec![SUBSCRIPTION_SUSPENDED, QUOTA_EXCEEDED],
        ),
        (
            "resumed",
            sub_event(SubscriptionEvent::SubscriptionResumed {
                resumed_at: t("2026-01-17T00:00:00Z"),
            }),
            vec![SUBSCRIPTION_RESUMED],
        ),
        (
            "past due",
            sub_event(SubscriptionEvent::SubscriptionPastDue {
                invoice_id: "inv_1".into(),
                at: t("2026-02-01T00:00:00Z"),
            }),
            vec![SUBSCRIPTION_PAST_DUE],
        ),
        (
            "past due cleared",
            sub_event(SubscriptionEvent::PastDueCleared {
                invoice_id: "inv_1".into(),
                at: t("2026-02-02T00:00:00Z"),
            }),
            vec![SUBSCRIPTION_PAST_DUE_CLEARED],
        ),
        (
            "cancellation scheduled",
            sub_event(SubscriptionEvent::CancellationScheduled {
                reason: Some("too expensive".into()),
                cancel_at: t("2026-02-01T00:00:00Z"),
                scheduled_at: t("2026-01-16T12:00:00Z"),
            }),
            vec![SUBSCRIPTION_CANCELLATION_SCHEDULED],
        ),
        (
            "canceled",
            sub_event(SubscriptionEvent::SubscriptionCanceled {
                reason: None,
                canceled_at: t("2026-02-01T00:00:00Z"),
            }),
            vec![SUBSCRIPTION_CANCELED],
        ),
        (
            "period renewed",
            sub_event(SubscriptionEvent::PeriodRenewed {
                closed_period: period("2026-01-01T00:00:00Z", "2026-02-01T00:00:00Z"),
                new_period: period("2026-02-01T00:00:00Z", "2026-03-01T00:00:00Z"),
                renewed_at: t("2026-02-01T00:00:05Z"),
                plan_id: Some("plan_pro".into()),
                plan: Some(terms()),
                seats: Some(3),
                prorations: vec![proration()],
                discount: Some(AppliedDiscount {
                    coupon_id: "cpn_1".into(),
                    code: "TEN".into(),
                    off: CouponOff::Percent {
                        percent_off: dec("10"),
                    },
                }),
            }),
            vec![RATING_WINDOW_CLOSED],
        ),
        (
            "discount applied",
            sub_event(SubscriptionEvent::DiscountApplied {
                discount: Discount {
                    coupon_id: "cpn_1".into(),
                    code: "TEN".into(),
                    off: CouponOff::Percent {
                        percent_off: dec("10"),
                    },
                    start: t("2026-01-02T00:00:00Z"),
                    periods_left: Some(3),
                },
            }),
            vec![DISCOUNT_APPLIED],
        ),
        (
            "discount removed",
            sub_event(SubscriptionEvent::DiscountRemoved {
                coupon_id: "cpn_1".into(),
                removed_at: t("2026-01-03T00:00:00Z"),
            }),
            vec![DISCOUNT_REMOVED],
        ),
        (
            "coupon created, percent off",
            stored(
                "coupon",
                "cpn_1",
                "CouponCreated",
                &CouponEvent::CouponCreated {
                    coupon_id: "cpn_1".into(),
                    terms: coupon_terms(CouponOff::Percent {
                        percent_off: dec("12.5"),
                    }),
                    created_at: t("2026-01-01T00:00:00Z"),
                },
            ),
            vec![COUPON_CREATED],
        ),
        (
            "coupon created, amount off",
            stored(
                "coupon",
                "cpn_1",
                "CouponCreated",
                &CouponEvent::CouponCreated {
                    coupon_id: "cpn_1".into(),
                    terms: coupon_terms(CouponOff::Amount {
                        amount_off: dec("5"),
                        currency: eur(),
                    }),
                    created_at: t("2026-01-01T00:00:00Z"),
                },
            ),
            vec![COUPON_CREATED],
        ),
        (
            "coupon redeemed",
            stored(
                "coupon",
                "cpn_1",
                "CouponRedeemed",
                &CouponEvent::CouponRedeemed {
                    subscription_id: "sub_1".into(),
                    times_redeemed: 1,
                    redeemed_at: t("2026-01-02T00:00:00Z"),
                },
            ),
            vec![COUPON_REDEEMED],
        ),
        (
            "tax rate created",
            stored(
                "tax_rate",
                "txr_1",
                "TaxRateCreated",
                &TaxRateEvent::TaxRateCreated {
                    tax_rate_id: "txr_1".into(),
                    terms: TaxRateTerms {
                        name: "VAT".into(),
                        percentage: dec("19"),
                        inclusive: false,
                        country: Some("DE".into()),
                    },
                    created_at: t("2026-01-01T00:00:00Z"),
                },
            ),
            vec![TAX_RATE_CREATED],
        ),
        (
            "tax rate archived",
            stored(
                "tax_rate",
                "txr_1",
                "TaxRateArchived",
                &TaxRateEvent::TaxRateArchived {
                    archived_at: t("2026-01-04T00:00:00Z"),
                },
            ),
            vec![TAX_RATE_ARCHIVED],
        ),
        (
            "coupon archived",
            stored(
                "coupon",
                "cpn_1",
                "CouponArchived",
                &CouponEvent::CouponArchived {
                    archived_at: t("2026-01-04T00:00:00Z"),
                },
            ),
            vec![COUPON_ARCHIVED],
        ),
        (
            "invoice created",
            invoice_event(InvoiceEvent::InvoiceCreated {
                invoice_id: "inv_1".into(),
                customer_id: "cus_1".into(),
                currency: eur(),
                subscription_id: Some("sub_1".into()),
                billing_period: None,
                due_days: 30,
                created_at: t("2026-02-01T00:00:00Z"),
            }),
            vec![],
        ),
        (
            "line added",
            invoice_event(InvoiceEvent::LineAdded {
                line: tally_aggregates::InvoiceLine {
                    number: 1,
                    description: "Pro".into(),
                    quantity: dec("1"),
                    unit_price: dec("20.00"),
                    kind: LineKind::Recurring,
                    period: None,
                    amount: dec("20.00"),
                    tax_rate_ids: vec![],
                    tax_amounts: vec![],
                },
            }),
            vec![],
        ),
        (
            "invoice issued",
            invoice_event(InvoiceEvent::InvoiceIssued {
                number: "INV-000001".into(),
                sequence: 1,
                customer_id: "cus_1".into(),
                currency: eur(),
                subtotal: dec("35.00"),
                discount: dec("0.00"),
                total: dec("35.00"),
                applied_credit: dec("0.00"),
                amount_due: dec("35.00"),
                issued_at: t("2026-02-01T00:00:00Z"),
                due_at: t("2026-03-03T00:00:00Z"),
                customer_details: None,
                tax: dec("0.00"),
                line_taxes: vec![],
            }),
            vec![INVOICE_ISSUED],
        ),
        (
            "payment recorded",
            invoice_event(InvoiceEvent::PaymentRecorded {
                payment: Payment {
                    payment_id: "pay_1".into(),
                    amount: dec("10"),
                    credited: dec("0"),
                    reference: "ch_123".into(),
                    captured_at: t("2026-02-03T00:00:00Z"),
                    recorded_at: t("2026-02-03T00:00:01Z"),
                },
                customer_id: "cus_1".into(),
                currency: eur(),
                amount_paid: dec("10.00"),
                amount_due: dec("25.00"),
                credited: dec("0"),
            }),
            vec![PAYMENT_CAPTURED],
        ),
        (
            "credit note issued",
            invoice_event(InvoiceEvent::CreditNoteIssued {
                credit_note: CreditNote {
                    credit_note_id: "cn_1".into(),
                    number: "CN-000001".into(),
                    amount: dec("15.00"),
                    reason: CreditReason::OrderChange,
                    refund: false,
                    to_amount_due: dec("10.00"),
                    to_credit: dec("5.00"),
                    refunded: dec("0.00"),
                    reference: None,
                    issued_at: t("2026-02-05T00:00:00Z"),
                },
                customer_id: "cus_1".into(),
                currency: eur(),
                amount_credited: dec("15.00"),
                amount_refunded: dec("0.00"),
                amount_due: dec("0.00"),
            }),
            vec![CREDIT_NOTE_ISSUED],
        ),
        (
            "refund",
            invoice_event(InvoiceEvent::CreditNoteIssued {
                credit_note: CreditNote {
                    credit_note_id: "cn_2".into(),
                    number: "CN-000002".into(),
                    amount: dec("10.00"),
                    reason: CreditReason::Refund,
                    refund: true,
                    to_amount_due: dec("0.00"),
                    to_credit: dec("0.00"),
                    refunded: dec("10.00"),
                    reference: Some("stripe:re_1".into()),
                    issued_at: t("2026-02-06T00:00:00Z"),
                },
                customer_id: "cus_1".into(),
                currency: eur(),
                amount_credited: dec("25.00"),
                amount_refunded: dec("10.00"),
                amount_due: dec("0.00"),
            }),
            vec![CREDIT_NOTE_ISSUED],
        ),
        (
            "provider payment received",
            stored(
                "provider_payment",
                "ppy_1",
                "ProviderPaymentReceived",
                &ProviderPaymentEvent::ProviderPaymentReceived {
                    provider: "stripe".into(),
                    payment_id: "pi_1".into(),
                    reference: "stripe:pi_1".into(),
                    currency: eur(),
                    customer_id: "cus_1".into(),
                    invoice_id: Some("inv_1".into()),
                    amount: dec("30.00"),
                    applied: dec("25.00"),
                    credited: dec("5.00"),
                    received_at: t("2026-02-06T00:00:00Z"),
                },
            ),
            vec![PAYMENT_RECEIVED],
        ),
        (
            "provider payment refunded",
            stored(
                "provider_payment",
                "ppy_1",
                "ProviderPaymentRefunded",
                &ProviderPaymentEvent::ProviderPaymentRefunded {
                    payment_id: "pi_1".into(),
                    refund_id: "re_1".into(),
                    currency: eur(),
                    customer_id: "cus_1".into(),
                    invoice_id: Some("inv_1".into()),
                    amount: dec("10.00"),
                    refunded: dec("10.00"),
                    refunded_at: t("2026-02-07T00:00:00Z"),
                },
            ),
            vec![PAYMENT_REFUNDED],
        ),
        (
            "inbound notice recorded",
            stored(
                "inbound_notice",
                "ibn_1",
                "InboundNoticeRecorded",
                &InboundNoticeEvent::InboundNoticeRecorded {
                    provider: "stripe".into(),
                    provider_event_id: "evt_1".into(),
                    event_type: "payment_intent.succeeded".into(),
                    outcome: "applied".into(),
                    payment_reference: Some("stripe:pi_1".into()),
                    raw_payload: "{}".into(),
                    signature_header: "t=1,v1=00".into(),
                    received_at: t("2026-02-06T00:00:00Z"),
                },
            ),
            vec![],
        ),
        (
            "credit note number assigned",
            stored(
                "invoice_numbering",
                "invoice_numbers",
                "CreditNoteNumberAssigned",
                &NumberingEvent::CreditNoteNumberAssigned {
                    invoice_id: "inv_1".into(),
                    credit_note_id: "cn_1".into(),
                    sequence: 1,
                    number: "CN-000001".into(),
                    at: t("2026-02-05T00:00:00Z"),
                },
            ),
            vec![],
        ),
        (
            "customer credit applied",
            stored(
                "invoice_numbering",
                "invoice_numbers",
                "CustomerCreditChanged",
                &NumberingEvent::CustomerCreditChanged {
                    customer_id: "cus_1".into(),
                    currency: eur(),
                    amount: dec("-5.00"),
                    balance: dec("0.00"),
                    source: CreditSource::AppliedToInvoice {
                        invoice_id: "inv_2".into(),
                    },
                    at: t("2026-03-01T00:00:00Z"),
                },
            ),
            vec![CUSTOMER_CREDIT_CHANGED],
        ),
        (
            "invoice paid",
            invoice_event(InvoiceEvent::InvoicePaid {
                customer_id: "cus_1".into(),
                subscription_id: Some("sub_1".into()),
                paid_at: t("2026-02-04T00:00:00Z"),
            }),
            vec![INVOICE_PAID],
        ),
        (
            "one-off invoice paid",
            invoice_event(InvoiceEvent::InvoicePaid {
                customer_id: "cus_1".into(),
                subscription_id: None,
                paid_at: t("2026-02-04T00:00:00Z"),
            }),
            vec![INVOICE_PAID],
        ),
        (
            "invoice voided",
            invoice_event(InvoiceEvent::InvoiceVoided {
                customer_id: "cus_1".into(),
                currency: eur(),
                amount: dec("35.00"),
                reason: "issued by mistake".into(),
                voided_at: t("2026-02-02T00:00:00Z"),
            }),
            vec![INVOICE_VOIDED],
        ),
        (
            "invoice marked uncollectible",
            invoice_event(InvoiceEvent::InvoiceMarkedUncollectible {
                customer_id: "cus_1".into(),
                currency: eur(),
                amount: dec("25.00"),
                at: t("2026-04-01T00:00:00Z"),
            }),
            vec![INVOICE_MARKED_UNCOLLECTIBLE],
        ),
        (
            "invoice number assigned",
            stored(
                "invoice_numbering",
                "invoice_numbers",
                "InvoiceNumberAssigned",
                &NumberingEvent::InvoiceNumberAssigned {
                    invoice_id: "inv_1".into(),
                    sequence: 1,
                    number: "INV-000001".into(),
                    at: t("2026-02-01T00:00:00Z"),
                },
            ),
            vec![],
        ),
        (
            "usage recorded",
            usage_event(UsageEvent::UsageRecorded {
                record_id: "use_1".into(),
                transaction_id: "tx-1".into(),
                subscription_id: "sub_1".into(),
                meter: "api_calls".into(),
                quantity: dec("12.5"),
                timestamp: t("2026-01-16T11:59:00Z"),
                window: month_window(),
                properties: serde_json::Map::from_iter([("region".to_owned(), "eu".into())]),
                recorded_at: t("2026-01-16T12:00:00Z"),
            }),
            vec![USAGE_RECORDED],
        ),
        (
            "lifetime usage recorded",
            usage_event(UsageEvent::UsageRecorded {
                record_id: "use_1".into(),
                transaction_id: "tx-1".into(),
                subscription_id: "sub_1".into(),
                meter: "storage".into(),
                quantity: dec("1"),
                timestamp: t("2026-01-16T11:59:00Z"),
                window: UsageWindow {
                    start: t("2026-01-01T00:00:00Z"),
                    end: None,
                },
                properties: serde_json::Map::new(),
                recorded_at: t("2026-01-16T12:00:00Z"),
            }),
            vec![USAGE_RECORDED],
        ),
        (
            "usage voided",
            usage_event(UsageEvent::UsageVoided {
                subscription_id: "sub_1".into(),
                meter: "api_calls".into(),
                quantity: dec("12.5"),
                window: month_window(),
                reason: "duplicate".into(),
                voided_at: t("2026-01-17T00:00:00Z"),
            }),
            vec![USAGE_VOIDED],
        ),
        (
            "usage billed",
            usage_event(UsageEvent::UsageBilled {
                subscription_id: "sub_1".into(),
                meter: "api_calls".into(),
                quantity: dec("12.5"),
                window: month_window(),
                invoice_id: "inv_2".into(),
                billed_at: t("2026-02-01T00:00:00Z"),
            }),
            vec![],
        ),
        (
            "ticket created",
            ticket_event(TicketEvent::TicketCreated {
                ticket_id: "tkt_1".into(),
                subject: "Invoice question".into(),
                description: "Why was I charged twice?".into(),
                requester: "cus_1".into(),
                priority: Priority::High,
                subscription_id: Some("sub_1".into()),
                created_at: t("2026-01-16T12:00:00Z"),
            }),
            vec![TICKET_CREATED],
        ),
        (
            "ticket assigned",
            ticket_event(TicketEvent::TicketAssigned {
                assignee: "agent_ann".into(),
                previous: None,
                requester: "cus_1".into(),
                subject: "Invoice question".into(),
                assigned_at: t("2026-01-16T12:00:00Z"),
            }),
            vec![TICKET_ASSIGNED],
        ),
        (
            "public comment",
            ticket_event(comment(true)),
            vec![TICKET_COMMENTED],
        ),
        ("internal comment", ticket_event(comment(false)), vec![]),
        (
            "attachment added",
            ticket_event(TicketEvent::AttachmentAdded {
                attachment: tally_aggregates::Attachment {
                    id: "att_1".into(),
                    file_name: "receipt.pdf".into(),
                    content_type: "application/pdf".into(),
                    size_bytes: 1024,
                    storage_key: "tenants/acme/att_1".into(),
                    created_at: t("2026-01-16T12:00:00Z"),
                },
            }),
            vec![],
        ),
        (
            "ticket status changed",
            ticket_event(TicketEvent::TicketStatusChanged {
                from: TicketStatus::Solved,
                to: TicketStatus::Open,
                requester: "cus_1".into(),
                assignee: Some("agent_ann".into()),
                subject: "Invoice question".into(),
                changed_at: t("2026-01-18T00:00:00Z"),
                by: Some("cus_1".into()),
            }),
            vec![TICKET_STATUS_CHANGED],
        ),
        (
            "inbox item read",
            stored(
                "inbox",
                "agent_ann",
                "ItemRead",
                &InboxEvent::ItemRead {
                    recipient: "agent_ann".into(),
                    item_id: "itm_1".into(),
                    read_at: t("2026-01-16T12:00:00Z"),
                },
            ),
            vec![],
        ),
        (
            "inbox item archived",
            stored(
                "inbox",
                "agent_ann",
                "ItemArchived",
                &InboxEvent::ItemArchived {
                    recipient: "agent_ann".into(),
                    item_id: "itm_1".into(),
                    archived_at: t("2026-01-16T12:00:00Z"),
                },
            ),
            vec![],
        ),
        (
            "inbox all read",
            stored(
                "inbox",
                "agent_ann",
                "AllRead",
                &InboxEvent::AllRead {
                    recipient: "agent_ann".into(),
                    read_at: t("2026-01-16T12:00:00Z"),
                },
            ),
            vec![],
        ),
        (
            "inbox notice",
            stored(
                "inbox",
                "user:key_1",
                "Notified",
                &InboxEvent::Notified {
                    recipient: "user:key_1".into(),
                    notice: tally_aggregates::inbox::Notice {
                        severity: "warning".into(),
                        title: "Webhook endpoint disabled".into(),
                        body: "Every delivery failed for three days.".into(),
                        subject_type: "webhook".into(),
                        subject_id: "whk_1".into(),
                    },
                    notified_at: t("2026-01-16T12:00:00Z"),
                },
            ),
            vec![],
        ),
        (
            "key revoked",
            stored(
                "api_key",
                "key_1",
                "KeyRevoked",
                &tally_aggregates::AccessKeyEvent::KeyRevoked {
                    key_id: "key_1".into(),
                    role: "writer".into(),
                    revoked_at: t("2026-01-16T12:00:00Z"),
                },
            ),
            vec![],
        ),
    ]
}

/// Why `value` is not a valid `field`, if it is not.
fn type_error(field: &Field, value: &Value) -> Option<String> {
    if value.is_null() {
        return (!field.nullable).then(|| "null in a field that is not nullable".to_owned());
    }
    let Some(text) = value.as_str() else {
        return match field.ty {
            FieldType::Integer if value.is_u64() => None,
            FieldType::Boolean if value.is_boolean() => None,
            _ => Some(format!("{value} is not a {}", field.type_name())),
        };
    };
    let ok = match field.ty {
        FieldType::Id => !text.is_empty(),
        FieldType::Text => true,
        FieldType::Enum(values) => values.contains(&text),
        FieldType::Decimal => Decimal::from_str_exact(text).is_ok(),
        FieldType::Currency => Currency::parse(text).is_ok(),
        FieldType::Timestamp => DateTime::parse_from_rfc3339(text).is_ok() && text.ends_with('Z'),
        FieldType::Integer | FieldType::Boolean => false,
    };
    (!ok).then(|| format!("{value} is not a {}", field.type_name()))
}

#[test]
fn every_published_event_produces_exactly_its_documented_data() {
    let doc = doc();
    for (name, event, expected) in samples() {
        let published = integration_events(&event);
        let topics: Vec<&str> = published.iter().map(|i| i.topic).collect();
        assert_eq!(topics, expected, "{name}: topics");
        for i in &published {
            let spec = spec(i.topic).unwrap_or_else(|| panic!("{name}: {} not in TOPICS", i.topic));
            assert_eq!(
                (spec.aggregate.as_str(), spec.event),
                (event.aggregate_type.as_str(), event.event_type.as_str()),
                "{name}: {} is documented as made from another event",
                i.topic
            );
            let data = i.data.as_object().expect("data is an object");
            let keys: BTreeSet<&str> = data.keys().map(String::as_str).collect();
            // The document's fields, not only the code's: this is what a
            // receiver reads.
            let documented: BTreeSet<&str> = doc.sections[i.topic]
                .iter()
                .map(|(n, _)| n.as_str())
                .collect();
            assert_eq!(keys, documented, "{name}: fields of {}", i.topic);
            for field in spec.data {
                if let Some(error) = type_error(field, &data[field.name]) {
                    panic!("{name}: {}.{}: {error}", i.topic, field.name);
                }
            }
            assert_eq!(data["tenant_id"], "acme", "{name}");
            // Flat: no nested objects or arrays.
            assert!(
                data.values().all(|v| !v.is_object() && !v.is_array()),
                "{name}: data of {} is not flat",
                i.topic
            );
        }
        assert_eq!(
            integration_event(&event).map(|i| i.topic),
            expected.first().copied(),
            "{name}: integration_event is the primary one"
        );
    }
}

#[test]
fn every_topic_and_every_unpublished_event_has_a_sample() {
    let samples = samples();
    for spec in TOPICS {
        assert!(
            samples
                .iter()
                .any(|(_, _, topics)| topics.contains(&spec.topic)),
            "no sample publishes {}",
            spec.topic
        );
    }
    for u in NOT_PUBLISHED {
        let mut found = false;
        for (name, event, topics) in &samples {
            if (event.aggregate_type.as_str(), event.event_type.as_str())
                == (u.aggregate.as_str(), u.event)
            {
                found = true;
                assert!(topics.is_empty(), "{name} is listed as not published");
            }
        }
        assert!(found, "no sample of {} / {}", u.aggregate, u.event);
        assert!(
            !TOPICS
                .iter()
                .any(|s| (s.aggregate, s.event) == (u.aggregate, u.event)),
            "{} / {} is both published and not",
            u.aggregate,
            u.event
        );
    }
    // Every sample's event is accounted for by one of the two tables.
    for (name, event, _) in &samples {
        let key = (event.aggregate_type.as_str(), event.event_type.as_str());
        assert!(
            TOPICS
                .iter()
                .any(|s| (s.aggregate.as_str(), s.event) == key)
                || NOT_PUBLISHED
                    .iter()
                    .any(|u| (u.aggregate.as_str(), u.event) == key),
            "{name}: {key:?} is in neither TOPICS nor NOT_PUBLISHED"
        );
    }
}

#[test]
fn data_carries_the_values_of_the_event() {
    let samples = samples();
    let data = |label: &str, n: usize| {
        let (_, event, _) = samples.iter().find(|(l, _, _)| *l == label).unwrap();
        integration_events(event)[n].data.clone()
    };

    let payment = data("payment recorded", 0);
    assert_eq!(payment["invoice_id"], "inv_1");
    assert_eq!(payment["payment_id"], "pay_1");
    assert_eq!(payment["amount"], "10.00");
    assert_eq!(payment["currency"], "EUR");
    assert_eq!(payment["invoice_amount_due"], "25.00");
    assert_eq!(payment["captured_at"], "2026-02-03T00:00:00Z");

    let renewed = data("period renewed", 0);
    assert_eq!(renewed["period_start"], "2026-01-01T00:00:00Z");
    assert_eq!(renewed["period_end"], "2026-02-01T00:00:00Z");
    assert_eq!(renewed["next_period_end"], "2026-03-01T00:00:00Z");

    let quota = data("suspended over a quota", 1);
    assert_eq!(quota["meter"], "api_calls");
    assert_eq!(quota["subscription_id"], "sub_1");

    let seats = data("seats changed with proration", 0);
    assert_eq!(seats["proration_amount"], proration().net.to_string());
    assert_eq!(seats["currency"], "EUR");
    let seats = data("seats changed without proration", 0);
    assert_eq!(seats["proration_amount"], Value::Null);
    assert_eq!(seats["currency"], Value::Null);

    let plan = data("plan created", 0);
    assert_eq!(plan["base_price"], "20.00");
    // Money is published at its currency's scale, whatever scale was stored.
    assert_eq!(plan["seat_price"], "5.00");
    assert_eq!(plan["interval"], "month");
    assert_eq!(plan["max_seats"], 50);

    let lifetime = data("lifetime usage recorded", 0);
    assert_eq!(lifetime["window_end"], Value::Null);
    assert_eq!(data("usage recorded", 0)["quantity"], "12.5");

    // Internal detail stays inside: the operator's note, the storage layout.
    let manual = data("suspended by hand", 0);
    assert!(!manual.to_string().contains("fraud review"));
}

#[test]
fn every_envelope_names_its_topic_version_and_subject() {
    for (name, event, _) in samples() {
        for i in integration_events(&event) {
            let env = envelope(&event, &i);
            let spec = spec(i.topic).unwrap();
            assert_eq!(env["id"], event.event_id, "{name}");
            assert_eq!(env["topic"], i.topic, "{name}");
            assert_eq!(env["type"], i.topic.rsplit('.').next().unwrap(), "{name}");
            assert_eq!(env["schema_version"], spec.version(), "{name}");
            assert_eq!(env["subject"]["type"], spec.aggregate.as_str(), "{name}");
            assert_eq!(env["subject"]["id"], event.resource_id(), "{name}");
            assert_eq!(env["tenant_id"], env["data"]["tenant_id"], "{name}");
            assert_eq!(env["correlation_id"], "corr-1", "{name}");
            let keys: BTreeSet<&str> = env
                .as_object()
                .unwrap()
                .keys()
                .map(String::as_str)
                .collect();
            assert_eq!(
                keys,
                BTreeSet::from([
                    "id",
                    "type",
                    "topic",
                    "tenant_id",
                    "subject",
                    "created_at",
                    "schema_version",
                    "correlation_id",
                    "causation_id",
                    "data"
                ]),
                "{name}"
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Decided, not hand-built: what the aggregates really emit.

fn ticket_events(ticket: &mut Ticket, command: TicketCommand) -> Vec<StoredEvent> {
    let events = ticket.decide(command).expect("command accepted");
    events
        .into_iter()
        .map(|e| {
            ticket.evolve(&e);
            ticket_event(e)
        })
        .collect()
}

#[test]
fn internal_comments_never_leave_and_public_ones_do() {
    const SECRET: &str = "customer is on the fraud watch list";
    let mut ticket = Ticket::default();
    let mut log = ticket_events(
        &mut ticket,
        TicketCommand::Create {
            ticket_id: "tkt_1".into(),
            subject: "Invoice question".into(),
            description: "Why was I charged twice?".into(),
            requester: "cus_1".into(),
            priority: Priority::Normal,
            subscription_id: None,
            at: t("2026-01-16T12:00:00Z"),
        },
    );
    // An agent's internal note on a new ticket also opens it.
    log.extend(ticket_events(
        &mut ticket,
        TicketCommand::Comment {
            comment_id: "cmt_internal".into(),
            author: "agent_ann".into(),
            body: SECRET.into(),
            public: false,
            at: t("2026-01-16T12:05:00Z"),
        },
    ));
    log.extend(ticket_events(
        &mut ticket,
        TicketCommand::Comment {
            comment_id: "cmt_public".into(),
            author: "agent_ann".into(),
            body: "We are looking into it.".into(),
            public: true,
            at: t("2026-01-16T12:10:00Z"),
        },
    ));
    let published: Vec<_> = log.iter().flat_map(integration_events).collect();
    let topics: Vec<&str> = published.iter().map(|i| i.topic).collect();
    assert_eq!(
        topics,
        [
            "support.tickets.v1.ticket-created",
            "support.tickets.v1.ticket-status-changed",
            "support.tickets.v1.ticket-commented",
        ]
    );
    for i in &published {
        let text = i.data.to_string();
        assert!(!text.contains(SECRET), "{}: {text}", i.topic);
        assert!(!text.contains("cmt_internal"), "{}: {text}", i.topic);
    }
    assert_eq!(published[2].data["comment_id"], "cmt_public");
    assert_eq!(published[1].data["from_status"], "new");
    assert_eq!(published[1].data["to_status"], "open");
}

#[test]
fn a_paid_invoice_publishes_issue_payment_and_paid() {
    let mut invoice = Invoice::default();
    let mut log = vec![];
    let mut run = |invoice: &mut Invoice, command: InvoiceCommand| {
        for e in invoice.decide(command).expect("command accepted") {
            invoice.evolve(&e);
            log.push(invoice_event(e));
        }
    };
    run(
        &mut invoice,
        InvoiceCommand::Create {
            invoice_id: "inv_1".into(),
            customer_id: "cus_1".into(),
            currency: eur(),
            subscription_id: Some("sub_1".into()),
            billing_period: None,
            due_days: Some(14),
            lines: vec![NewLine {
                description: "API calls".into(),
                quantity: dec("1000"),
                unit_price: dec("0.0125"),
                kind: LineKind::Usage,
                period: None,
                tax_rate_ids: vec![],
            }],
            at: t("2026-02-01T00:00:00Z"),
        },
    );
    run(
        &mut invoice,
        InvoiceCommand::Issue {
            number: 7,
            available_credit: rust_decimal::Decimal::ZERO,
            at: t("2026-02-01T00:00:00Z"),
            customer: None,
            taxes: Default::default(),
        },
    );
    run(
        &mut invoice,
        InvoiceCommand::RecordPayment {
            payment_id: "pay_1".into(),
            amount: dec("12.50"),
            reference: "ch_1".into(),
            captured_at: t("2026-02-02T00:00:00Z"),
            excess_to_credit: false,
            at: t("2026-02-02T00:00:01Z"),
        },
    );
    let published: Vec<_> = log.iter().flat_map(integration_events).collect();
    let topics: Vec<&str> = published.iter().map(|i| i.topic).collect();
    assert_eq!(
        topics,
        [
            "billing.invoices.v1.invoice-issued",
            "billing.payments.v1.payment-captured",
            "billing.invoices.v1.invoice-paid",
        ]
    );
    assert_eq!(published[0].data["number"], "INV-000007");
    assert_eq!(published[0].data["total"], "12.50");
    assert_eq!(published[0].data["due_at"], "2026-02-15T00:00:00Z");
    assert_eq!(published[1].data["invoice_amount_due"], "0.00");
    assert_eq!(published[2].data["subscription_id"], "sub_1");
}
