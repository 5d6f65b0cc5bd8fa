//! Given events / when command / then events or error for the invoice state
//! machine and the tenant's invoice numbering: every (status, command) pair as
//! a table, every rejection, line amounts and totals to the minor unit (half
//! away from zero, totals as sums of rounded lines), issuing with the due date
//! and the settle-at-once rule for totals of zero or less, partial and full
//! payments, void and write-off, the events' wire form, and properties over
//! random command sequences: no negative amount due, paid plus due equals the
//! total, exact line amounts, and gapless numbers.

mod support;

use std::collections::BTreeSet;

use chrono::{DateTime, Duration, Utc};
use cqrs_es::test::TestFramework;
use cqrs_es::DomainEvent;
use proptest::prelude::*;
use rust_decimal::Decimal;
use support::{dec, eur, exact_round_product, jpy, kwd, t};
use tally_aggregates::invoice::{
    format_number, price_line, CreditReason, DEFAULT_DUE_DAYS, MAX_CAPTURE_AGE_DAYS, MAX_DUE_DAYS,
    MAX_LINES, MAX_LINE_PLACES, MAX_PAYMENTS, MAX_TEXT_CHARS, NUMBERING_ID,
};
use tally_aggregates::money::{round_to_minor, MAX_AMOUNT};
use tally_aggregates::AggregateKind;
use tally_aggregates::{
    Currency, DomainError, Invoice, InvoiceCommand, InvoiceEvent, InvoiceLine, InvoiceNumbering,
    InvoiceStatus, LineKind, NewLine, NumberingCommand, NumberingEvent, Payment, Period,
    EVENT_VERSION,
};

// ---------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------

/// When fixture invoices are created, issued, and when later commands happen.
const CREATED: &str = "2025-05-01T09:00:00Z";
const ISSUED: &str = "2025-05-02T10:00:00Z";
const LATER: &str = "2025-05-10T12:00:00Z";
/// When the provider captured a fixture payment, before it was recorded.
const CAPTURED: &str = "2025-05-10T11:59:00Z";

fn may() -> Period {
    Period {
        start: t("2025-05-01T00:00:00Z"),
        end: t("2025-06-01T00:00:00Z"),
    }
}

/// A manual line.
fn line(description: &str, quantity: &str, unit_price: &str) -> NewLine {
    NewLine {
        description: description.to_owned(),
        quantity: dec(quantity),
        unit_price: dec(unit_price),
        kind: LineKind::Manual,
        period: None,
        tax_rate_ids: vec![],
    }
}

/// The fixture's one line: 4 seats at 25.00 for May, 100.00 in all.
fn seats_line() -> NewLine {
    NewLine {
        description: "Seats".to_owned(),
        quantity: dec("4"),
        unit_price: dec("25.00"),
        kind: LineKind::Recurring,
        period: Some(may()),
        tax_rate_ids: vec![],
    }
}

fn create_with(currency: Currency, due_days: Option<u32>, lines: Vec<NewLine>) -> InvoiceCommand {
    InvoiceCommand::Create {
        invoice_id: "inv_1".to_owned(),
        customer_id: "cus_1".to_owned(),
        currency,
        subscription_id: Some("sub_1".to_owned()),
        billing_period: Some(may()),
        due_days,
        lines,
        at: t(CREATED),
    }
}

/// The fixture invoice: EUR, 14 days to pay, one line of 100.00.
fn create_command() -> InvoiceCommand {
    create_with(eur(), Some(14), vec![seats_line()])
}

fn add_line(line: NewLine) -> InvoiceCommand {
    InvoiceCommand::AddLine {
        line,
        at: t(CREATED),
    }
}

fn issue(number: u64) -> InvoiceCommand {
    InvoiceCommand::Issue {
        number,
        available_credit: rust_decimal::Decimal::ZERO,
        at: t(ISSUED),
        customer: None,
        taxes: Default::default(),
    }
}

fn pay(payment_id: &str, amount: &str, reference: &str) -> InvoiceCommand {
    InvoiceCommand::RecordPayment {
        payment_id: payment_id.to_owned(),
        amount: dec(amount),
        reference: reference.to_owned(),
        captured_at: t(CAPTURED),
        excess_to_credit: false,
        at: t(LATER),
    }
}

/// A provider's payment: what is received beyond the amount due becomes credit.
fn provider_pay(payment_id: &str, amount: &str, reference: &str) -> InvoiceCommand {
    InvoiceCommand::RecordPayment {
        payment_id: payment_id.to_owned(),
        amount: dec(amount),
        reference: reference.to_owned(),
        captured_at: t(CAPTURED),
        excess_to_credit: true,
        at: t(LATER),
    }
}

fn credit_note(number: u64, amount: &str, refund: bool) -> InvoiceCommand {
    InvoiceCommand::IssueCreditNote {
        credit_note_id: format!("cn_{number}"),
        number,
        amount: dec(amount),
        reason: if refund {
            CreditReason::Refund
        } else {
            CreditReason::OrderChange
        },
        refund,
        reference: None,
        at: t(LATER),
    }
}

fn void(reason: &str) -> InvoiceCommand {
    InvoiceCommand::Void {
        reason: reason.to_owned(),
        at: t(LATER),
    }
}

fn mark_uncollectible() -> InvoiceCommand {
    InvoiceCommand::MarkUncollectible { at: t(LATER) }
}

fn given(events: &[InvoiceEvent]) -> Invoice {
    let mut invoice = Invoice::default();
    for event in events {
        invoice.evolve(event);
    }
    invoice
}

/// Decides `command` and applies its events, as the command layer does.
fn run(invoice: &mut Invoice, command: InvoiceCommand) -> Result<Vec<InvoiceEvent>, DomainError> {
    let events = invoice.decide(command)?;
    for event in &events {
        invoice.evolve(event);
    }
    Ok(events)
}

/// Runs commands that must all be accepted and returns their events.
fn accepted(invoice: &mut Invoice, commands: Vec<InvoiceCommand>) -> Vec<InvoiceEvent> {
    let mut events = Vec::new();
    for command in commands {
        let context = format!("{command:?}");
        events.extend(run(invoice, command).unwrap_or_else(|e| panic!("{context}: {e:?}")));
    }
    events
}

/// A draft in `currency` with these lines.
fn draft(currency: Currency, lines: Vec<NewLine>) -> Invoice {
    let mut invoice = Invoice::default();
    accepted(&mut invoice, vec![create_with(currency, None, lines)]);
    invoice
}

/// The states the matrix starts from: every status, and an open invoice with
/// a partial payment, where the payment and void rules differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fixture {
    NeverCreated,
    Draft,
    Open,
    /// Open, 40.00 of 100.00 paid by `pay_1` / `ref_1`.
    OpenPartlyPaid,
    Paid,
    Void,
    /// Written off after 40.00 was paid.
    Uncollectible,
}

impl Fixture {
    const ALL: [Fixture; 7] = [
        Fixture::NeverCreated,
        Fixture::Draft,
        Fixture::Open,
        Fixture::OpenPartlyPaid,
        Fixture::Paid,
        Fixture::Void,
        Fixture::Uncollectible,
    ];

    fn status(self) -> Option<InvoiceStatus> {
        match self {
            Fixture::NeverCreated => None,
            Fixture::Draft => Some(InvoiceStatus::Draft),
            Fixture::Open | Fixture::OpenPartlyPaid => Some(InvoiceStatus::Open),
            Fixture::Paid => Some(InvoiceStatus::Paid),
            Fixture::Void => Some(InvoiceStatus::Void),
            Fixture::Uncollectible => Some(InvoiceStatus::Uncollectible),
        }
    }

    fn history(self) -> Vec<InvoiceEvent> {
        let commands = match self {
            Fixture::NeverCreated => vec![],
            Fixture::Draft => vec![create_command()],
            Fixture::Open => vec![create_command(), issue(1)],
            Fixture::OpenPartlyPaid => {
                vec![create_command(), issue(1), pay("pay_1", "40.00", "ref_1")]
            }
            Fixture::Paid => vec![create_command(), issue(1), pay("pay_1", "100.00", "ref_1")],
            Fixture::Void => vec![create_command(), issue(1), void("issued by mistake")],
            Fixture::Uncollectible => vec![
                create_command(),
                issue(1),
                pay("pay_1", "40.00", "ref_1"),
                mark_uncollectible(),
            ],
        };
        let mut invoice = Invoice::default();
        let events = accepted(&mut invoice, commands);
        assert_eq!(invoice.status, self.status(), "fixture {self:?}");
        events
    }

    fn invoice(self) -> Invoice {
        given(&self.history())
    }
}

fn assert_validation(result: Result<Vec<InvoiceEvent>, DomainError>, want_field: &str) {
    match result {
        Err(DomainError::Validation { field, .. }) => assert_eq!(field, want_field),
        other => panic!("expected a validation error on {want_field}, got {other:?}"),
    }
}

fn names(events: &[InvoiceEvent]) -> Vec<&'static str> {
    events.iter().map(InvoiceEvent::name).collect()
}

// ---------------------------------------------------------------------------
// The transition matrix
// ---------------------------------------------------------------------------

#[derive(Debug, PartialEq)]
enum Outcome {
    /// These events, after which the status is this.
    Then(&'static [&'static str], InvoiceStatus),
    /// Accepted, nothing happens.
    NoOp,
    /// Refused with a validation error on this field.
    Rejected(&'static str),
    Invalid,
    NotFound,
    AlreadyExists,
}

/// Every command name; `expected` below fails to compile when a command is
/// added, and the matrix test fails when a sample for it is missing.
const COMMAND_NAMES: [&str; 7] = [
    "create",
    "add_line",
    "issue",
    "record_payment",
    "void",
    "mark_uncollectible",
    "issue_credit_note",
];

/// The samples' payment references: a partial payment, a full one, and the
/// partly paid fixture's payment again (a provider's retried notification).
const PARTIAL: &str = "ref_2";
const FULL: &str = "ref_3";
const REPEAT: &str = "ref_1";
/// A provider's payment of 150.00, more than any fixture owes.
const OVERPAY: &str = "ref_4";

/// One valid-looking command of each kind (three payments, see above).
fn sample_commands() -> Vec<InvoiceCommand> {
    vec![
        create_command(),
        add_line(line("Setup", "1", "15.00")),
        issue(2),
        pay("pay_2", "10.00", PARTIAL),
        pay("pay_3", "100.00", FULL),
        pay("pay_1", "40.00", REPEAT),
        provider_pay("pay_4", "150.00", OVERPAY),
        void("duplicate"),
        mark_uncollectible(),
        credit_note(1, "30.00", false),
        credit_note(2, "30.00", true),
        credit_note(3, "120.00", false),
    ]
}

/// The state machine as a table.
fn expected(fixture: Fixture, command: &InvoiceCommand) -> Outcome {
    use InvoiceCommand as C;
    use InvoiceStatus::{Draft, Open, Paid, Uncollectible, Void};
    use Outcome::{AlreadyExists, Invalid, NoOp, NotFound, Rejected, Then};
    let Some(status) = fixture.status() else {
        return match command {
            C::Create { .. } => Then(&["InvoiceCreated", "LineAdded"], Draft),
            C::AddLine { .. }
            | C::Issue { .. }
            | C::RecordPayment { .. }
            | C::Void { .. }
            | C::MarkUncollectible { .. }
            | C::IssueCreditNote { .. } => NotFound,
        };
    };
    let partly_paid = fixture == Fixture::OpenPartlyPaid;
    match command {
        C::Create { .. } => AlreadyExists,
        C::AddLine { .. } => match status {
            Draft => Then(&["LineAdded"], Draft),
            Open | Paid | Void | Uncollectible => Invalid,
        },
        C::Issue { .. } => match status {
            Draft => Then(&["InvoiceIssued"], Open),
            Open | Paid | Void | Uncollectible => Invalid,
        },
        C::RecordPayment { reference, .. } => match status {
            Open => match (reference.as_str(), partly_paid) {
                (REPEAT, true) => NoOp,
                // 100.00 against the 60.00 still due.
                (FULL, true) => Rejected("amount"),
                (FULL, false) => Then(&["PaymentRecorded", "InvoicePaid"], Paid),
                // The rest of an overpayment becomes credit.
                (OVERPAY, _) => Then(&["PaymentRecorded", "InvoicePaid"], Paid),
                _ => Then(&["PaymentRecorded"], Open),
            },
            Draft | Paid | Void | Uncollectible => Invalid,
        },
        C::Void { .. } => match status {
            Open if partly_paid => Rejected("amount_paid"),
            Open => Then(&["InvoiceVoided"], Void),
            Draft | Paid | Void | Uncollectible => Invalid,
        },
        C::MarkUncollectible { .. } => match status {
            Open => Then(&["InvoiceMarkedUncollectible"], Uncollectible),
            Draft | Paid | Void | Uncollectible => Invalid,
        },
        C::IssueCreditNote { amount, refund, .. } => match status {
            // Credit notes never add up to more than the total (100.00).
            Open | Paid if *amount > dec("100.00") => Rejected("amount"),
            // A refund pays back money received: nothing was, yet.
            Open if *refund && !partly_paid => Rejected("amount"),
            Open => Then(&["CreditNoteIssued"], Open),
            Paid => Then(&["CreditNoteIssued"], Paid),
            Draft | Void | Uncollectible => Invalid,
        },
    }
}

#[test]
fn every_status_and_command_pair_is_decided_as_the_table_says() {
    let names_sampled: BTreeSet<&str> = sample_commands().iter().map(|c| c.name()).collect();
    assert_eq!(names_sampled, COMMAND_NAMES.into_iter().collect());
    let statuses: BTreeSet<Option<&str>> = Fixture::ALL
        .iter()
        .map(|f| f.status().map(|s| s.as_str()))
        .collect();
    let every_status: BTreeSet<Option<&str>> = std::iter::once(None)
        .chain(InvoiceStatus::ALL.iter().map(|s| Some(s.as_str())))
        .collect();
    assert_eq!(statuses, every_status, "a fixture for every status");

    let mut pairs = 0;
    for fixture in Fixture::ALL {
        for command in sample_commands() {
            pairs += 1;
            let before = fixture.invoice();
            let name = command.name();
            let want = expected(fixture, &command);
            let context = format!("{fixture:?} × {command:?}");
            match (want, before.decide(command)) {
                (Outcome::Then(want_events, new_status), Ok(events)) => {
                    assert_eq!(names(&events), want_events, "{context}");
                    let mut after = before.clone();
                    for event in &events {
                        after.evolve(event);
                    }
                    assert_eq!(after.status, Some(new_status), "{context}");
                }
                (Outcome::NoOp, Ok(events)) => assert_eq!(events, vec![], "{context}"),
                (Outcome::Rejected(want_field), Err(DomainError::Validation { field, .. })) => {
                    assert_eq!(field, want_field, "{context}")
                }
                (
                    Outcome::Invalid,
                    Err(DomainError::InvalidTransition {
                        aggregate,
                        from,
                        command,
                    }),
                ) => {
                    assert_eq!(aggregate, AggregateKind::Invoice, "{context}");
                    assert_eq!(
                        Some(from.as_str()),
                        fixture.status().map(|s| s.as_str()),
                        "{context}"
                    );
                    assert_eq!(command, name, "{context}");
                }
                (Outcome::NotFound, Err(DomainError::NotFound(AggregateKind::Invoice)))
                | (
                    Outcome::AlreadyExists,
                    Err(DomainError::AlreadyExists(AggregateKind::Invoice)),
                ) => {}
                (want, got) => panic!("{context}: expected {want:?}, got {got:?}"),
            }
        }
    }
    assert_eq!(pairs, 7 * 12);
}

#[test]
fn invalid_transition_message_names_the_state_and_the_command() {
    let err = Fixture::Paid.invoice().decide(void("late")).unwrap_err();
    assert_eq!(err.to_string(), "cannot void a paid invoice");
    let err = Fixture::Uncollectible
        .invoice()
        .decide(pay("pay_9", "1.00", "ref_9"))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "cannot record_payment a uncollectible invoice"
    );
}

#[test]
fn statuses_have_snake_case_names_that_parse_back() {
    for status in InvoiceStatus::ALL {
        assert_eq!(InvoiceStatus::parse(status.as_str()), Some(status));
        assert_eq!(
            serde_json::to_value(status).unwrap(),
            serde_json::json!(status.as_str())
        );
    }
    assert_eq!(InvoiceStatus::Uncollectible.as_str(), "uncollectible");
    assert_eq!(InvoiceStatus::parse("Paid"), None);
    assert_eq!(InvoiceStatus::parse("past_due"), None);
}

// ---------------------------------------------------------------------------
// Create
// ---------------------------------------------------------------------------

#[test]
fn create_opens_a_draft_and_prices_its_lines() {
    let mut invoice = Invoice::default();
    let events = run(&mut invoice, create_command()).unwrap();
    assert_eq!(
        events,
        vec![
            InvoiceEvent::InvoiceCreated {
                invoice_id: "inv_1".to_owned(),
                customer_id: "cus_1".to_owned(),
                currency: eur(),
                subscription_id: Some("sub_1".to_owned()),
                billing_period: Some(may()),
                due_days: 14,
                created_at: t(CREATED),
            },
            InvoiceEvent::LineAdded {
                line: InvoiceLine {
                    number: 1,
                    description: "Seats".to_owned(),
                    quantity: dec("4"),
                    unit_price: dec("25"),
                    kind: LineKind::Recurring,
                    period: Some(may()),
                    amount: dec("100.00"),
                    tax_rate_ids: vec![],
                    tax_amounts: vec![],
                },
            },
        ]
    );
    assert_eq!(invoice.status, Some(InvoiceStatus::Draft));
    assert_eq!(invoice.id.as_deref(), Some("inv_1"));
    assert_eq!(invoice.customer_id, "cus_1");
    assert_eq!(invoice.currency, Some(eur()));
    assert_eq!(invoice.subscription_id.as_deref(), Some("sub_1"));
    assert_eq!(invoice.billing_period, Some(may()));
    assert_eq!(invoice.due_days, 14);
    assert_eq!(invoice.created_at, Some(t(CREATED)));
    assert_eq!(invoice.number, None);
    assert_eq!(invoice.issued_at, None);
    // A draft shows its running total, in the currency's scale.
    assert_eq!(invoice.subtotal.to_string(), "100.00");
    assert_eq!(invoice.total.to_string(), "100.00");
    assert_eq!(invoice.amount_due.to_string(), "100.00");
    assert_eq!(invoice.amount_paid.to_string(), "0.00");
}

#[test]
fn create_without_lines_or_due_days_is_an_empty_draft_due_in_thirty_days() {
    let events = Invoice::default()
        .decide(InvoiceCommand::Create {
            invoice_id: "inv_2".to_owned(),
            customer_id: "cus_1".to_owned(),
            currency: jpy(),
            subscription_id: None,
            billing_period: None,
            due_days: None,
            lines: vec![],
            at: t(CREATED),
        })
        .unwrap();
    assert_eq!(
        events,
        vec![InvoiceEvent::InvoiceCreated {
            invoice_id: "inv_2".to_owned(),
            customer_id: "cus_1".to_owned(),
            currency: jpy(),
            subscription_id: None,
            billing_period: None,
            due_days: DEFAULT_DUE_DAYS,
            created_at: t(CREATED),
        }]
    );
    assert_eq!(DEFAULT_DUE_DAYS, 30);
    let invoice = given(&events);
    assert_eq!(invoice.total.to_string(), "0");
    assert_eq!(invoice.amount_due.to_string(), "0");
    assert_eq!(invoice.lines, vec![]);
}

#[test]
fn create_accepts_due_days_up_to_a_year_and_rejects_more() {
    for due_days in [0, 1, MAX_DUE_DAYS] {
        let events = Invoice::default()
            .decide(create_with(eur(), Some(due_days), vec![]))
            .unwrap();
        assert_eq!(given(&events).due_days, due_days);
    }
    assert_eq!(MAX_DUE_DAYS, 365);
    for due_days in [MAX_DUE_DAYS + 1, u32::MAX] {
        assert_validation(
            Invoice::default().decide(create_with(eur(), Some(due_days), vec![])),
            "due_days",
        );
    }
}

#[test]
fn create_rejects_bad_ids() {
    let with = |invoice_id: &str, customer_id: &str, subscription_id: Option<&str>| {
        Invoice::default().decide(InvoiceCommand::Create {
            invoice_id: invoice_id.to_owned(),
            customer_id: customer_id.to_owned(),
            currency: eur(),
            subscription_id: subscription_id.map(str::to_owned),
            billing_period: None,
            due_days: None,
            lines: vec![],
            at: t(CREATED),
        })
    };
    for invoice_id in ["", "inv 1", "inv\t1", &"i".repeat(65)] {
        assert_validation(with(invoice_id, "cus_1", None), "invoice_id");
    }
    let too_long = "c".repeat(MAX_TEXT_CHARS + 1);
    for customer_id in ["", "   ", "cus\n1", too_long.as_str()] {
        assert_validation(with("inv_1", customer_id, None), "customer_id");
    }
    // Customer ids are the platform's: any printable text up to the limit.
    assert!(with("inv_1", "Acme GmbH #42", None).is_ok());
    assert!(with("inv_1", &"c".repeat(MAX_TEXT_CHARS), None).is_ok());
    for subscription_id in ["", "sub 1"] {
        assert_validation(
            with("inv_1", "cus_1", Some(subscription_id)),
            "subscription_id",
        );
    }
}

#[test]
fn create_takes_at_most_the_line_limit() {
    let lines = |n: usize| vec![line("Item", "1", "1.00"); n];
    let events = Invoice::default()
        .decide(create_with(eur(), None, lines(MAX_LINES)))
        .unwrap();
    assert_eq!(events.len(), 1 + MAX_LINES);
    assert_eq!(given(&events).total, Decimal::from(MAX_LINES as u64));
    assert_validation(
        Invoice::default().decide(create_with(eur(), None, lines(MAX_LINES + 1))),
        "lines",
    );
}

#[test]
fn create_names_the_bad_line() {
    let good = line("Item", "1", "1.00");
    for (bad, field) in [
        (line("", "1", "1.00"), "lines[1].description"),
        (line("Item", "-1", "1.00"), "lines[1].quantity"),
        (line("Item", "1", "0.0000000000001"), "lines[1].unit_price"),
    ] {
        assert_validation(
            Invoice::default().decide(create_with(eur(), None, vec![good.clone(), bad])),
            field,
        );
    }
}

// ---------------------------------------------------------------------------
// Add line
// ---------------------------------------------------------------------------

#[test]
fn add_line_numbers_lines_after_the_created_ones_and_keeps_kind_and_period() {
    let mut invoice = Fixture::Draft.invoice();
    let usage = NewLine {
        description: "Overage: api.calls".to_owned(),
        quantity: dec("1333"),
        unit_price: dec("0.0015"),
        kind: LineKind::Usage,
        period: Some(may()),
        tax_rate_ids: vec![],
    };
    let events = run(&mut invoice, add_line(usage)).unwrap();
    assert_eq!(
        events,
        vec![InvoiceEvent::LineAdded {
            line: InvoiceLine {
                number: 2,
                description: "Overage: api.calls".to_owned(),
                quantity: dec("1333"),
                unit_price: dec("0.0015"),
                kind: LineKind::Usage,
                period: Some(may()),
                // 1.9995 → 2.00
                amount: dec("2.00"),
                tax_rate_ids: vec![],
                tax_amounts: vec![],
            },
        }]
    );
    run(&mut invoice, add_line(line("Discount", "1", "-12.50"))).unwrap();
    let numbers: Vec<u32> = invoice.lines.iter().map(|l| l.number).collect();
    assert_eq!(numbers, vec![1, 2, 3]);
    assert_eq!(invoice.lines[2].kind, LineKind::Manual);
    assert_eq!(invoice.total.to_string(), "89.50");
    assert_eq!(invoice.amount_due.to_string(), "89.50");
}

#[test]
fn add_line_rejects_a_bad_description() {
    let too_long = "d".repeat(MAX_TEXT_CHARS + 1);
    for description in ["", "  ", "two\nlines", "nul\u{0}", too_long.as_str()] {
        assert_validation(
            Fixture::Draft
                .invoice()
                .decide(add_line(line(description, "1", "1.00"))),
            "description",
        );
    }
    let longest = "d".repeat(MAX_TEXT_CHARS);
    assert!(Fixture::Draft
        .invoice()
        .decide(add_line(line(&longest, "1", "1.00")))
        .is_ok());
}

#[test]
fn add_line_rejects_a_negative_quantity() {
    for quantity in ["-1", "-0.5", "-0.000000000001"] {
        assert_validation(
            Fixture::Draft
                .invoice()
                .decide(add_line(line("Item", quantity, "1.00"))),
            "quantity",
        );
    }
}

#[test]
fn add_line_allows_twelve_places_in_quantity_and_unit_price_and_no_more() {
    assert_eq!(MAX_LINE_PLACES, 12);
    let draft = Fixture::Draft.invoice();
    assert!(draft
        .decide(add_line(line("Item", "0.000000000001", "0.000000000001")))
        .is_ok());
    assert_validation(
        draft.decide(add_line(line("Item", "0.0000000000001", "1.00"))),
        "quantity",
    );
    assert_validation(
        draft.decide(add_line(line("Item", "1", "0.0000000000001"))),
        "unit_price",
    );
    assert_validation(
        draft.decide(add_line(line("Item", "1", "-0.0000000000001"))),
        "unit_price",
    );
    // Trailing zeros are not precision.
    let events = draft
        .decide(add_line(line(
            "Item",
            "2.0000000000000000",
            "1.5000000000000000",
        )))
        .unwrap();
    let InvoiceEvent::LineAdded { line } = &events[0] else {
        panic!("{events:?}");
    };
    assert_eq!(line.quantity.to_string(), "2");
    assert_eq!(line.unit_price.to_string(), "1.5");
    assert_eq!(line.amount.to_string(), "3.00");
}

#[test]
fn add_line_rejects_amounts_beyond_the_limit() {
    let draft = Fixture::Draft.invoice();
    let over = (MAX_AMOUNT + Decimal::ONE).to_string();
    let under = (-MAX_AMOUNT - Decimal::ONE).to_string();
    assert_validation(draft.decide(add_line(line("Item", &over, "0"))), "quantity");
    assert_validation(
        draft.decide(add_line(line("Item", "1", &over))),
        "unit_price",
    );
    assert_validation(
        draft.decide(add_line(line("Item", "1", &under))),
        "unit_price",
    );
    // Each factor fits, the product does not.
    assert_validation(
        draft.decide(add_line(line("Item", "100000000", "10000000.01"))),
        "quantity",
    );
    assert_validation(
        draft.decide(add_line(line("Item", "100000000", "-10000000.01"))),
        "quantity",
    );
    // At the limit exactly.
    let events = draft
        .decide(add_line(line("Item", "100000000", "10000000")))
        .unwrap();
    let InvoiceEvent::LineAdded { line } = &events[0] else {
        panic!("{events:?}");
    };
    assert_eq!(line.amount, MAX_AMOUNT);
}

#[test]
fn add_line_refuses_the_line_after_the_limit() {
    let mut invoice = draft(eur(), vec![line("Item", "1", "1.00"); MAX_LINES - 1]);
    run(&mut invoice, add_line(line("Last", "1", "1.00"))).unwrap();
    assert_eq!(invoice.lines.len(), MAX_LINES);
    assert_eq!(invoice.lines[MAX_LINES - 1].number, MAX_LINES as u32);
    assert_validation(
        invoice.decide(add_line(line("One more", "1", "1.00"))),
        "lines",
    );
}

#[test]
fn zero_quantity_and_credit_lines_are_allowed() {
    let mut invoice = Fixture::Draft.invoice();
    run(&mut invoice, add_line(line("Free month", "0", "25.00"))).unwrap();
    run(
        &mut invoice,
        add_line(line("Goodwill credit", "1", "-30.00")),
    )
    .unwrap();
    let amounts: Vec<String> = invoice.lines.iter().map(|l| l.amount.to_string()).collect();
    assert_eq!(amounts, vec!["100.00", "0.00", "-30.00"]);
    assert_eq!(invoice.total, dec("70.00"));
}

// ---------------------------------------------------------------------------
// Line amounts and totals, to the minor unit
// ---------------------------------------------------------------------------

fn amount_of(currency: Currency, quantity: &str, unit_price: &str) -> String {
    price_line(&line("Item", quantity, unit_price), currency, 1, None)
        .unwrap()
        .amount
        .to_string()
}

#[test]
fn line_amounts_round_half_away_from_zero_to_the_minor_unit() {
    for (currency, quantity, unit_price, amount) in [
        // 0.9999 → 1.00
        (eur(), "3", "0.3333", "1.00"),
        (eur(), "1", "0.005", "0.01"),
        (eur(), "1", "-0.005", "-0.01"),
        (eur(), "0.5", "-0.01", "-0.01"),
        (eur(), "1", "0.004999", "0.00"),
        // A credit of less than half a cent is nothing, not "-0.00".
        (eur(), "1", "-0.004", "0.00"),
        (eur(), "1", "2.675", "2.68"),
        (eur(), "1", "-2.675", "-2.68"),
        (eur(), "1000000", "0.0000004", "0.40"),
        (eur(), "0.000000000001", "0.000000000001", "0.00"),
        (jpy(), "3", "0.5", "2"),
        (jpy(), "1", "-0.5", "-1"),
        (jpy(), "1", "149.49", "149"),
        (kwd(), "1", "1.0005", "1.001"),
        (kwd(), "2", "-0.00025", "-0.001"),
        (kwd(), "7", "1", "7.000"),
    ] {
        assert_eq!(
            amount_of(currency, quantity, unit_price),
            amount,
            "{quantity} × {unit_price} {currency}"
        );
    }
}

#[test]
fn regression_line_amount_is_rounded_once_from_the_exact_product() {
    // `Decimal` multiplication rounds a product wider than 28 digits: here it
    // gave 667052.005, which rounded again to 667052.01. The exact product is
    // 667052.004999999999999999999999, so the line is 667052.00.
    assert_eq!(
        amount_of(eur(), "540312518478.138489041097", "0.000001234567"),
        "667052.00"
    );
    assert_eq!(
        amount_of(eur(), "540312518478.138489041097", "-0.000001234567"),
        "-667052.00"
    );
    assert_eq!(
        exact_round_product(dec("540312518478.138489041097"), dec("0.000001234567"), 2),
        Some(dec("667052.00"))
    );
}

#[test]
fn the_total_is_the_sum_of_rounded_lines_not_the_rounded_sum() {
    // Three half cents: each line is 0.01, so 0.03 (the rounded sum of the
    // raw amounts would be 0.02).
    let invoice = draft(eur(), vec![line("Call", "1", "0.005"); 3]);
    assert_eq!(invoice.total.to_string(), "0.03");
    // Three thirds: 0.33 each, 0.99 in all, not 1.00.
    let invoice = draft(eur(), vec![line("Third", "1", "0.3333"); 3]);
    assert_eq!(invoice.total.to_string(), "0.99");
    // A line and its credit leave nothing.
    let invoice = draft(
        eur(),
        vec![line("Call", "1", "0.005"), line("Refund", "1", "-0.005")],
    );
    assert_eq!(invoice.total.to_string(), "0.00");
    // Yen lines: 2 + 2 + 2.
    let invoice = draft(jpy(), vec![line("Call", "3", "0.5"); 3]);
    assert_eq!(invoice.total.to_string(), "6");
}

#[test]
fn a_draft_with_a_credit_total_owes_nothing_in_the_currency_s_scale() {
    // Regression: the running amount due of a draft whose lines net to a
    // credit was a bare "0", not "0.00" like every other amount.
    let invoice = draft(eur(), vec![line("Credit", "1", "-5.00")]);
    assert_eq!(invoice.total.to_string(), "-5.00");
    assert_eq!(invoice.amount_due.to_string(), "0.00");
    let json = serde_json::to_value(&invoice).unwrap();
    assert_eq!(json["amount_due"], "0.00");
}

// ---------------------------------------------------------------------------
// Issue
// ---------------------------------------------------------------------------

#[test]
fn issue_fixes_the_number_the_totals_and_the_due_date() {
    let mut invoice = Fixture::Draft.invoice();
    let events = run(&mut invoice, issue(42)).unwrap();
    assert_eq!(
        events,
        vec![InvoiceEvent::InvoiceIssued {
            number: "INV-000042".to_owned(),
            sequence: 42,
            customer_id: "cus_1".to_owned(),
            currency: eur(),
            subtotal: dec("100.00"),
            discount: dec("0.00"),
            total: dec("100.00"),
            applied_credit: dec("0.00"),
            amount_due: dec("100.00"),
            issued_at: t(ISSUED),
            due_at: t(ISSUED) + Duration::days(14),
            customer_details: None,
            tax: dec("0.00"),
            line_taxes: vec![],
        }]
    );
    assert_eq!(invoice.status, Some(InvoiceStatus::Open));
    assert_eq!(invoice.number.as_deref(), Some("INV-000042"));
    assert_eq!(invoice.issued_at, Some(t(ISSUED)));
    assert_eq!(invoice.due_at, Some(t("2025-05-16T10:00:00Z")));
    assert_eq!(invoice.amount_due.to_string(), "100.00");
    assert_eq!(invoice.amount_paid.to_string(), "0.00");
    assert_eq!(invoice.paid_at, None);
}

#[test]
fn due_at_is_issued_at_plus_the_due_days() {
    for (due_days, issued_at, due_at) in [
        (None, "2025-05-02T10:00:00Z", "2025-06-01T10:00:00Z"),
        (Some(0), "2025-05-02T10:00:00Z", "2025-05-02T10:00:00Z"),
        (Some(14), "2028-02-20T23:30:00Z", "2028-03-05T23:30:00Z"),
        (Some(365), "2027-03-01T00:00:00Z", "2028-02-29T00:00:00Z"),
    ] {
        let mut invoice = Invoice::default();
        accepted(
            &mut invoice,
            vec![
                create_with(eur(), due_days, vec![seats_line()]),
                InvoiceCommand::Issue {
                    number: 1,
                    available_credit: rust_decimal::Decimal::ZERO,
                    at: t(issued_at),
                    customer: None,
                    taxes: Default::default(),
                },
            ],
        );
        assert_eq!(invoice.due_at, Some(t(due_at)), "{due_days:?} {issued_at}");
    }
}

#[test]
fn issuing_a_zero_total_settles_it_at_once() {
    for lines in [
        vec![],
        vec![line("Free month", "1", "0")],
        vec![line("Seats", "1", "10.00"), line("Voucher", "1", "-10.00")],
    ] {
        let mut invoice = draft(eur(), lines.clone());
        let events = run(&mut invoice, issue(3)).unwrap();
        assert_eq!(
            events,
            vec![
                InvoiceEvent::InvoiceIssued {
                    number: "INV-000003".to_owned(),
                    sequence: 3,
                    customer_id: "cus_1".to_owned(),
                    currency: eur(),
                    subtotal: dec("0.00"),
                    discount: dec("0.00"),
                    total: dec("0.00"),
                    applied_credit: dec("0.00"),
                    amount_due: dec("0.00"),
                    issued_at: t(ISSUED),
                    due_at: t(ISSUED) + Duration::days(30),
                    customer_details: None,
                    tax: dec("0.00"),
                    line_taxes: vec![],
                },
                InvoiceEvent::InvoicePaid {
                    customer_id: "cus_1".to_owned(),
                    subscription_id: Some("sub_1".to_owned()),
                    paid_at: t(ISSUED),
                },
            ],
            "{lines:?}"
        );
        assert_eq!(invoice.status, Some(InvoiceStatus::Paid));
        assert_eq!(invoice.paid_at, Some(t(ISSUED)));
        assert_eq!(invoice.amount_due.to_string(), "0.00");
        assert_eq!(invoice.amount_paid.to_string(), "0.00");
    }
}

#[test]
fn issuing_a_credit_total_settles_it_with_nothing_due() {
    let mut invoice = draft(
        eur(),
        vec![line("Seats", "1", "10.00"), line("Refund", "1", "-15.00")],
    );
    let events = run(&mut invoice, issue(4)).unwrap();
    assert_eq!(names(&events), vec!["InvoiceIssued", "InvoicePaid"]);
    let InvoiceEvent::InvoiceIssued {
        total, amount_due, ..
    } = &events[0]
    else {
        panic!("{events:?}");
    };
    assert_eq!(total.to_string(), "-5.00");
    assert_eq!(amount_due.to_string(), "0.00");
    assert_eq!(invoice.status, Some(InvoiceStatus::Paid));
    assert_eq!(invoice.total.to_string(), "-5.00");
    assert_eq!(invoice.amount_due.to_string(), "0.00");
    // Nothing to pay, nothing to void.
    assert!(matches!(
        invoice.decide(pay("pay_1", "1.00", "ref_1")),
        Err(DomainError::InvalidTransition { .. })
    ));
}

#[test]
fn issue_rejects_number_zero() {
    assert_validation(Fixture::Draft.invoice().decide(issue(0)), "number");
}

#[test]
fn issue_in_a_currency_without_minor_units() {
    let mut invoice = draft(jpy(), vec![line("Seats", "3", "333.5")]);
    let events = run(&mut invoice, issue(1)).unwrap();
    let InvoiceEvent::InvoiceIssued {
        total, amount_due, ..
    } = &events[0]
    else {
        panic!("{events:?}");
    };
    // 1000.5 → 1001 yen.
    assert_eq!(total.to_string(), "1001");
    assert_eq!(amount_due.to_string(), "1001");
}

// ---------------------------------------------------------------------------
// Payments
// ---------------------------------------------------------------------------

#[test]
fn partial_payments_lower_the_amount_due_until_it_is_paid() {
    let mut invoice = Fixture::Open.invoice();
    let events = run(&mut invoice, pay("pay_1", "30", "ref_1")).unwrap();
    assert_eq!(
        events,
        vec![InvoiceEvent::PaymentRecorded {
            payment: Payment {
                payment_id: "pay_1".to_owned(),
                amount: dec("30.00"),
                credited: dec("0.00"),
                reference: "ref_1".to_owned(),
                captured_at: t(CAPTURED),
                recorded_at: t(LATER),
            },
            customer_id: "cus_1".to_owned(),
            currency: eur(),
            amount_paid: dec("30.00"),
            amount_due: dec("70.00"),
            credited: dec("0.00"),
        }]
    );
    assert_eq!(invoice.status, Some(InvoiceStatus::Open));
    assert_eq!(invoice.amount_paid.to_string(), "30.00");
    assert_eq!(invoice.amount_due.to_string(), "70.00");
    // The payment is kept at the currency's scale.
    assert_eq!(invoice.payments[0].amount.to_string(), "30.00");

    run(&mut invoice, pay("pay_2", "69.99", "ref_2")).unwrap();
    assert_eq!(invoice.amount_due.to_string(), "0.01");
    assert_eq!(invoice.status, Some(InvoiceStatus::Open));

    let events = run(&mut invoice, pay("pay_3", "0.01", "ref_3")).unwrap();
    assert_eq!(
        events[1],
        InvoiceEvent::InvoicePaid {
            customer_id: "cus_1".to_owned(),
            subscription_id: Some("sub_1".to_owned()),
            paid_at: t(LATER),
        }
    );
    let InvoiceEvent::PaymentRecorded {
        amount_paid,
        amount_due,
        ..
    } = &events[0]
    else {
        panic!("{events:?}");
    };
    assert_eq!(amount_paid.to_string(), "100.00");
    assert_eq!(amount_due.to_string(), "0.00");
    assert_eq!(invoice.status, Some(InvoiceStatus::Paid));
    assert_eq!(invoice.paid_at, Some(t(LATER)));
    assert_eq!(invoice.payments.len(), 3);
    assert_eq!(invoice.amount_paid + invoice.amount_due, invoice.total);
}

#[test]
fn payment_must_be_positive() {
    for amount in ["0", "0.00", "-0.01", "-100"] {
        assert_validation(
            Fixture::Open
                .invoice()
                .decide(pay("pay_1", amount, "ref_1")),
            "amount",
        );
    }
}

/// Issue 19: payments accepted a `captured_at` of year 0 or 9999.
#[test]
fn payment_capture_time_is_at_most_a_year_old_and_not_in_the_future() {
    let open = Fixture::Open.invoice();
    let at = t(LATER);
    let captured = |captured_at: DateTime<Utc>| InvoiceCommand::RecordPayment {
        payment_id: "pay_1".to_owned(),
        amount: dec("1.00"),
        reference: "ref_1".to_owned(),
        captured_at,
        excess_to_credit: false,
        at,
    };
    for ok in [
        at,
        at - Duration::days(MAX_CAPTURE_AGE_DAYS),
        at + Duration::minutes(5),
    ] {
        assert!(open.decide(captured(ok)).is_ok(), "{ok}");
    }
    for bad in [
        t("0000-01-01T00:00:00Z"),
        t("9999-12-31T23:59:59Z"),
        at - Duration::days(MAX_CAPTURE_AGE_DAYS) - Duration::seconds(1),
        at + Duration::minutes(5) + Duration::seconds(1),
    ] {
        assert_validation(open.decide(captured(bad)), "captured_at");
    }
}

#[test]
fn payment_has_at_most_the_currency_s_places() {
    // EUR: two places; trailing zeros are not precision.
    let open = Fixture::Open.invoice();
    assert_validation(open.decide(pay("pay_1", "10.001", "ref_1")), "amount");
    assert_validation(open.decide(pay("pay_1", "0.005", "ref_1")), "amount");
    let events = open.decide(pay("pay_1", "10.010", "ref_1")).unwrap();
    assert_eq!(given_after(&open, &events).amount_paid.to_string(), "10.01");

    // JPY: none.
    let mut yen = draft(jpy(), vec![line("Seats", "1", "1000")]);
    run(&mut yen, issue(1)).unwrap();
    assert_validation(yen.decide(pay("pay_1", "100.5", "ref_1")), "amount");
    assert_validation(yen.decide(pay("pay_1", "0.1", "ref_1")), "amount");
    for amount in ["100", "100.0", "100.00"] {
        let events = yen.decide(pay("pay_1", amount, "ref_1")).unwrap();
        assert_eq!(given_after(&yen, &events).amount_due.to_string(), "900");
    }

    // KWD: three.
    let mut dinar = draft(kwd(), vec![line("Seats", "1", "10")]);
    run(&mut dinar, issue(1)).unwrap();
    assert_validation(dinar.decide(pay("pay_1", "1.0005", "ref_1")), "amount");
    let events = dinar.decide(pay("pay_1", "1.005", "ref_1")).unwrap();
    assert_eq!(given_after(&dinar, &events).amount_due.to_string(), "8.995");
}

/// The state after applying `events` to a copy of `invoice`.
fn given_after(invoice: &Invoice, events: &[InvoiceEvent]) -> Invoice {
    let mut after = invoice.clone();
    for event in events {
        after.evolve(event);
    }
    after
}

#[test]
fn payment_above_the_amount_due_is_refused() {
    let open = Fixture::Open.invoice();
    let err = open.decide(pay("pay_1", "100.01", "ref_1")).unwrap_err();
    assert_eq!(
        err,
        DomainError::validation("amount", "must not exceed the amount due, 100.00")
    );
    let partly_paid = Fixture::OpenPartlyPaid.invoice();
    assert_validation(partly_paid.decide(pay("pay_2", "60.01", "ref_2")), "amount");
    // Exactly what is due is fine.
    let events = partly_paid.decide(pay("pay_2", "60.00", "ref_2")).unwrap();
    assert_eq!(names(&events), vec!["PaymentRecorded", "InvoicePaid"]);
}

#[test]
fn a_repeated_reference_with_the_same_amount_is_a_no_op() {
    let mut invoice = Fixture::OpenPartlyPaid.invoice();
    run(&mut invoice, pay("pay_2", "50.00", "ref_2")).unwrap();
    // 10.00 due now; the first notification again is no overpayment but a
    // retry, whatever its payment id, and however its amount is written.
    let before = invoice.clone();
    for retry in [
        pay("pay_1", "40.00", "ref_1"),
        pay("pay_9", "40", "ref_1"),
        pay("pay_2", "50.0", "ref_2"),
    ] {
        assert_eq!(run(&mut invoice, retry), Ok(vec![]));
    }
    assert_eq!(invoice, before);
}

#[test]
fn a_retried_notice_of_the_settling_payment_on_a_paid_invoice_is_a_no_op() {
    let mut invoice = Fixture::OpenPartlyPaid.invoice();
    let events = run(&mut invoice, pay("pay_2", "60.00", "ref_2")).unwrap();
    assert_eq!(names(&events), vec!["PaymentRecorded", "InvoicePaid"]);
    let before = invoice.clone();
    // The provider sends the settling payment (and an earlier one) again.
    for retry in [pay("pay_7", "60.00", "ref_2"), pay("pay_8", "40", "ref_1")] {
        assert_eq!(run(&mut invoice, retry), Ok(vec![]));
    }
    assert_eq!(invoice, before);
    // Anything else on a paid invoice is still a transition it does not allow.
    assert!(matches!(
        invoice.decide(pay("pay_9", "60.00", "ref_9")),
        Err(DomainError::InvalidTransition { .. })
    ));
    assert!(matches!(
        invoice.decide(pay("pay_9", "61.00", "ref_2")),
        Err(DomainError::InvalidTransition { .. })
    ));
}

#[test]
fn a_repeated_reference_with_another_amount_is_refused() {
    let partly_paid = Fixture::OpenPartlyPaid.invoice();
    let err = partly_paid
        .decide(pay("pay_2", "20.00", "ref_1"))
        .unwrap_err();
    assert_eq!(
        err,
        DomainError::validation(
            "reference",
            "a payment with this reference was recorded for 40.00"
        )
    );
}

#[test]
fn payment_rejects_bad_ids_and_references() {
    let open = Fixture::Open.invoice();
    for payment_id in ["", "pay 1", &"p".repeat(65)] {
        assert_validation(open.decide(pay(payment_id, "1.00", "ref_1")), "payment_id");
    }
    let too_long = "r".repeat(MAX_TEXT_CHARS + 1);
    for reference in ["", " ", "ref\r1", too_long.as_str()] {
        assert_validation(open.decide(pay("pay_1", "1.00", reference)), "reference");
    }
    // References are the provider's: printable text of any shape.
    assert!(open.decide(pay("pay_1", "1.00", "ch_3N 1a/2b")).is_ok());
}

#[test]
fn an_invoice_takes_at_most_the_payment_limit() {
    let mut invoice = draft(eur(), vec![line("Seats", "1", "20.00")]);
    run(&mut invoice, issue(1)).unwrap();
    for i in 0..MAX_PAYMENTS {
        run(
            &mut invoice,
            pay(&format!("pay_{i}"), "0.01", &format!("ref_{i}")),
        )
        .unwrap();
    }
    assert_eq!(invoice.payments.len(), MAX_PAYMENTS);
    assert_eq!(invoice.amount_due.to_string(), "10.00");
    assert_validation(
        invoice.decide(pay("pay_last", "10.00", "ref_last")),
        "payments",
    );
    // A retry of a recorded payment is still recognised.
    assert_eq!(invoice.decide(pay("pay_0", "0.01", "ref_0")), Ok(vec![]));
}

// ---------------------------------------------------------------------------
// Void and write-off
// ---------------------------------------------------------------------------

#[test]
fn void_takes_back_the_total_of_an_unpaid_invoice() {
    let mut invoice = Fixture::Open.invoice();
    let events = run(&mut invoice, void("issued twice")).unwrap();
    assert_eq!(
        events,
        vec![InvoiceEvent::InvoiceVoided {
            customer_id: "cus_1".to_owned(),
            currency: eur(),
            amount: dec("100.00"),
            reason: "issued twice".to_owned(),
            voided_at: t(LATER),
        }]
    );
    assert_eq!(invoice.status, Some(InvoiceStatus::Void));
    assert_eq!(invoice.voided_at, Some(t(LATER)));
    assert_eq!(invoice.void_reason.as_deref(), Some("issued twice"));
    assert_eq!(invoice.amount_due.to_string(), "0.00");
    assert_eq!(invoice.amount_paid.to_string(), "0.00");
    // The number stays used: numbers have no gaps.
    assert_eq!(invoice.number.as_deref(), Some("INV-000001"));
}

#[test]
fn void_is_refused_once_something_was_paid() {
    assert_eq!(
        Fixture::OpenPartlyPaid.invoice().decide(void("oops")),
        Err(DomainError::validation(
            "amount_paid",
            "an invoice with payments cannot be voided"
        ))
    );
}

#[test]
fn void_needs_a_reason() {
    let too_long = "r".repeat(MAX_TEXT_CHARS + 1);
    for reason in ["", "   ", "bad\u{7}reason", too_long.as_str()] {
        assert_validation(Fixture::Open.invoice().decide(void(reason)), "reason");
    }
    // The reason is checked before the payments.
    assert_validation(Fixture::OpenPartlyPaid.invoice().decide(void("")), "reason");
}

#[test]
fn mark_uncollectible_writes_off_what_is_due() {
    let mut invoice = Fixture::OpenPartlyPaid.invoice();
    let events = run(&mut invoice, mark_uncollectible()).unwrap();
    assert_eq!(
        events,
        vec![InvoiceEvent::InvoiceMarkedUncollectible {
            customer_id: "cus_1".to_owned(),
            currency: eur(),
            amount: dec("60.00"),
            at: t(LATER),
        }]
    );
    assert_eq!(invoice.status, Some(InvoiceStatus::Uncollectible));
    assert_eq!(invoice.uncollectible_at, Some(t(LATER)));
    assert_eq!(invoice.amount_paid.to_string(), "40.00");
}

// ---------------------------------------------------------------------------
// Invoice numbering
// ---------------------------------------------------------------------------

fn assign(invoice_id: &str) -> NumberingCommand {
    NumberingCommand::Assign {
        invoice_id: invoice_id.to_owned(),
        at: t(ISSUED),
    }
}

fn assigned(invoice_id: &str, sequence: u64) -> NumberingEvent {
    NumberingEvent::InvoiceNumberAssigned {
        invoice_id: invoice_id.to_owned(),
        sequence,
        number: format_number(sequence),
        at: t(ISSUED),
    }
}

#[test]
fn numbers_are_handed_out_from_one_without_gaps() {
    let mut numbering = InvoiceNumbering::default();
    assert_eq!(numbering.next(), 1);
    for (i, invoice_id) in ["inv_a", "inv_b", "inv_c"].into_iter().enumerate() {
        let events = numbering.decide(assign(invoice_id)).unwrap();
        let sequence = i as u64 + 1;
        assert_eq!(
            events,
            vec![NumberingEvent::InvoiceNumberAssigned {
                invoice_id: invoice_id.to_owned(),
                sequence,
                number: format!("INV-00000{sequence}"),
                at: t(ISSUED),
            }]
        );
        numbering.evolve(&events[0]);
        assert_eq!(numbering.last, sequence);
        assert_eq!(numbering.next(), sequence + 1);
    }
}

#[test]
fn numbers_print_with_six_digits_at_least() {
    assert_eq!(format_number(1), "INV-000001");
    assert_eq!(format_number(42), "INV-000042");
    assert_eq!(format_number(999_999), "INV-999999");
    assert_eq!(format_number(1_000_000), "INV-1000000");
}

#[test]
fn assign_rejects_a_bad_invoice_id_and_uses_no_number() {
    let numbering = InvoiceNumbering {
        last: 7,
        ..Default::default()
    };
    for invoice_id in ["", "inv 1", &"i".repeat(65)] {
        match numbering.decide(assign(invoice_id)) {
            Err(DomainError::Validation { field, .. }) => assert_eq!(field, "invoice_id"),
            other => panic!("{invoice_id:?}: {other:?}"),
        }
    }
    assert_eq!(
        numbering.decide(assign("inv_8")),
        Ok(vec![assigned("inv_8", 8)])
    );
}

#[test]
#[should_panic(expected = "invoice numbers skip")]
fn a_skipped_number_is_a_bug() {
    let mut numbering = InvoiceNumbering {
        last: 2,
        ..Default::default()
    };
    numbering.evolve(&assigned("inv_x", 4));
}

#[test]
fn numbering_through_the_cqrs_adapter() {
    TestFramework::<InvoiceNumbering>::with(())
        .given(vec![assigned("inv_a", 1), assigned("inv_b", 2)])
        .when(assign("inv_c"))
        .then_expect_events(vec![assigned("inv_c", 3)]);
    TestFramework::<InvoiceNumbering>::with(())
        .given_no_previous_events()
        .when(assign(""))
        .then_expect_error(DomainError::validation(
            "invoice_id",
            "must be 1 to 64 characters",
        ));
    assert_eq!(
        <InvoiceNumbering as cqrs_es::Aggregate>::TYPE,
        "invoice_numbering"
    );
    assert_eq!(NUMBERING_ID, "invoice_numbers");
    let event = assigned("inv_a", 1);
    assert_eq!(event.event_type(), "InvoiceNumberAssigned");
    assert_eq!(event.event_version(), EVENT_VERSION);
    assert_eq!(
        serde_json::to_value(&event).unwrap(),
        serde_json::json!({"InvoiceNumberAssigned": {
            "invoice_id": "inv_a",
            "sequence": 1,
            "number": "INV-000001",
            "at": "2025-05-02T10:00:00Z"
        }})
    );
}

// ---------------------------------------------------------------------------
// Events as a stored contract, and the cqrs-es adapter
// ---------------------------------------------------------------------------

fn one_of_each_event() -> Vec<InvoiceEvent> {
    let mut events = Fixture::Uncollectible.history();
    let mut voided = Fixture::Void.history();
    events.push(voided.pop().unwrap());
    events.extend(
        Fixture::Paid
            .history()
            .into_iter()
            .filter(|e| e.name() == "InvoicePaid"),
    );
    let mut paid = Fixture::Paid.invoice();
    events.extend(run(&mut paid, credit_note(1, "10.00", false)).unwrap());
    events
}

#[test]
fn events_are_externally_tagged_by_their_type_and_round_trip() {
    let events = one_of_each_event();
    let types: BTreeSet<String> = events.iter().map(|e| e.event_type()).collect();
    assert_eq!(types.len(), 8, "one of each event type: {types:?}");
    for event in events {
        assert_eq!(event.event_version(), EVENT_VERSION);
        let json = serde_json::to_value(&event).unwrap();
        let object = json.as_object().unwrap();
        assert_eq!(object.len(), 1);
        assert_eq!(object.keys().next().unwrap(), &event.event_type());
        let back: InvoiceEvent = serde_json::from_value(json).unwrap();
        assert_eq!(back, event);
    }
}

#[test]
fn stored_event_json_is_stable() {
    let events = Fixture::OpenPartlyPaid.history();
    assert_eq!(
        serde_json::to_value(&events[1]).unwrap(),
        serde_json::json!({"LineAdded": {"line": {
            "number": 1,
            "description": "Seats",
            "quantity": "4",
            "unit_price": "25",
            "kind": "recurring",
            "period": {"start": "2025-05-01T00:00:00Z", "end": "2025-06-01T00:00:00Z"},
            "amount": "100.00"
        }}})
    );
    assert_eq!(
        serde_json::to_value(&events[2]).unwrap(),
        serde_json::json!({"InvoiceIssued": {
            "number": "INV-000001",
            "sequence": 1,
            "customer_id": "cus_1",
            "currency": "EUR",
            "subtotal": "100.00",
            "total": "100.00",
            "amount_due": "100.00",
            "issued_at": "2025-05-02T10:00:00Z",
            "due_at": "2025-05-16T10:00:00Z"
        }})
    );
    assert_eq!(
        serde_json::to_value(&events[3]).unwrap(),
        serde_json::json!({"PaymentRecorded": {
            "payment": {
                "payment_id": "pay_1",
                "amount": "40.00",
                "reference": "ref_1",
                "captured_at": "2025-05-10T11:59:00Z",
                "recorded_at": "2025-05-10T12:00:00Z"
            },
            "customer_id": "cus_1",
            "currency": "EUR",
            "amount_paid": "40.00",
            "amount_due": "60.00"
        }})
    );
}

#[test]
fn a_new_line_reads_from_json_with_string_decimals_and_defaults() {
    let line: NewLine = serde_json::from_value(serde_json::json!({
        "description": "API calls",
        "quantity": "1500",
        "unit_price": "0.0015",
        "kind": "usage"
    }))
    .unwrap();
    assert_eq!(
        line,
        NewLine {
            description: "API calls".to_owned(),
            quantity: dec("1500"),
            unit_price: dec("0.0015"),
            kind: LineKind::Usage,
            period: None,
            tax_rate_ids: vec![],
        }
    );
    assert_eq!(LineKind::default(), LineKind::Manual);
    // A float is not money.
    assert!(serde_json::from_value::<NewLine>(serde_json::json!({
        "description": "API calls",
        "quantity": 1500,
        "unit_price": 0.0015,
        "kind": "usage"
    }))
    .is_err());
}

#[test]
fn the_state_snapshot_round_trips() {
    let mut invoice = Invoice::default();
    for event in one_of_each_event() {
        // The void and paid events come from other histories: fold each on a
        // state where it is possible.
        if matches!(
            event,
            InvoiceEvent::InvoiceVoided { .. } | InvoiceEvent::InvoicePaid { .. }
        ) {
            invoice = Fixture::Open.invoice();
        }
        if matches!(event, InvoiceEvent::CreditNoteIssued { .. }) {
            invoice = Fixture::Paid.invoice();
        }
        invoice.evolve(&event);
        let json = serde_json::to_string(&invoice).unwrap();
        assert_eq!(serde_json::from_str::<Invoice>(&json).unwrap(), invoice);
    }
}

#[test]
fn the_cqrs_adapter_emits_what_decide_decides() {
    let history = Fixture::Draft.history();
    let mut draft = given(&history);
    let issued = run(&mut draft, issue(1)).unwrap();
    TestFramework::<Invoice>::with(())
        .given(history)
        .when(issue(1))
        .then_expect_events(issued);
    TestFramework::<Invoice>::with(())
        .given(Fixture::Void.history())
        .when(pay("pay_1", "1.00", "ref_1"))
        .then_expect_error(DomainError::InvalidTransition {
            aggregate: AggregateKind::Invoice,
            from: "void".to_owned(),
            command: "record_payment",
        });
    TestFramework::<Invoice>::with(())
        .given(Fixture::OpenPartlyPaid.history())
        .when(pay("pay_1", "40.00", "ref_1"))
        .then_expect_events(vec![]);
    TestFramework::<Invoice>::with(())
        .given_no_previous_events()
        .when(issue(1))
        .then_expect_error(DomainError::NotFound(AggregateKind::Invoice));
    assert_eq!(<Invoice as cqrs_es::Aggregate>::TYPE, "invoice");
}

#[test]
#[should_panic(expected = "LineAdded on an invoice in status")]
fn an_impossible_event_is_a_bug() {
    let mut invoice = Fixture::Open.invoice();
    invoice.evolve(&InvoiceEvent::LineAdded {
        line: price_line(&seats_line(), eur(), 2, None).unwrap(),
    });
}

// ---------------------------------------------------------------------------
// Properties over random command sequences
// ---------------------------------------------------------------------------

/// A decimal from a mantissa and a scale; the generators keep mantissas below
/// 10^18 so that [`exact_round_product`] never overflows.
fn decimal(mantissa: i64, scale: u32) -> Decimal {
    Decimal::new(mantissa, scale)
}

fn mantissa() -> impl Strategy<Value = i64> {
    prop_oneof![
        4 => 0i64..10_000,
        2 => 0i64..100_000_000,
        1 => 0i64..1_000_000_000_000_000_000,
    ]
}

/// Mostly valid lines; now and then a negative quantity, a 13th place or an
/// empty description, which must be refused.
fn new_line() -> impl Strategy<Value = NewLine> {
    (
        mantissa(),
        prop_oneof![8 => 0u32..=12, 1 => Just(13u32)],
        mantissa(),
        prop_oneof![8 => 0u32..=12, 1 => Just(13u32)],
        prop_oneof![6 => Just(1i64), 2 => Just(-1i64)],
        prop_oneof![12 => Just(false), 1 => Just(true)],
        prop_oneof![12 => Just(false), 1 => Just(true)],
    )
        .prop_map(
            |(q, q_scale, p, p_scale, p_sign, negative_quantity, blank)| NewLine {
                description: if blank { " " } else { "Item" }.to_owned(),
                quantity: decimal(if negative_quantity { -q - 1 } else { q }, q_scale),
                unit_price: decimal(p * p_sign, p_scale),
                kind: LineKind::Manual,
                period: None,
                tax_rate_ids: vec![],
            },
        )
}

/// A line that passes every check: up to 10^7 × 10^7 in mantissas, so the
/// product stays within the amount limit; one in four is a credit.
fn good_line() -> impl Strategy<Value = NewLine> {
    (
        0i64..10_000_000,
        0u32..=6,
        -2_500_000i64..7_500_000,
        0u32..=6,
    )
        .prop_map(|(q, q_scale, p, p_scale)| NewLine {
            description: "Item".to_owned(),
            quantity: decimal(q, q_scale),
            unit_price: decimal(p, p_scale),
            kind: LineKind::Manual,
            period: None,
            tax_rate_ids: vec![],
        })
}

/// What one step of a random sequence does, and to which of the run's
/// invoices.
#[derive(Debug, Clone)]
enum Action {
    Create {
        currency: usize,
        due_days: u32,
        lines: Vec<NewLine>,
    },
    AddLine(NewLine),
    Issue,
    /// `how` picks the amount from the state (see `payment_amount`).
    Pay {
        how: u8,
        share_percent: u32,
        reference: u8,
    },
    Void {
        blank_reason: bool,
    },
    MarkUncollectible,
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        4 => (
            0usize..3,
            prop_oneof![8 => 0u32..=365, 1 => 366u32..1000],
            prop::collection::vec(prop_oneof![6 => good_line(), 1 => new_line()], 0..4),
        )
            .prop_map(|(currency, due_days, lines)| Action::Create { currency, due_days, lines }),
        4 => prop_oneof![good_line(), new_line()].prop_map(Action::AddLine),
        3 => Just(Action::Issue),
        6 => (0u8..8, 1u32..=100, 0u8..4).prop_map(|(how, share_percent, reference)| Action::Pay {
            how,
            share_percent,
            reference,
        }),
        1 => any::<bool>().prop_map(|blank_reason| Action::Void { blank_reason }),
        1 => Just(Action::MarkUncollectible),
    ]
}

const INVOICES: usize = 3;

fn steps() -> impl Strategy<Value = Vec<(usize, Action)>> {
    prop::collection::vec((0..INVOICES, action()), 1..60)
}

fn currencies() -> [Currency; 3] {
    [eur(), jpy(), kwd()]
}

/// A payment amount chosen from the invoice's state: in full, a share, one
/// minor unit too much, zero, negative, or with a place too many.
fn payment_amount(invoice: &Invoice, how: u8, share_percent: u32) -> Decimal {
    let currency = invoice.currency.unwrap_or_else(eur);
    let places = currency.minor_units();
    let due = invoice.amount_due;
    let minor = Decimal::new(1, places);
    match how {
        0 => due,
        1 => due + minor,
        2 => Decimal::ZERO,
        3 => -minor,
        4 => {
            round_to_minor(
                due * Decimal::from(share_percent) / Decimal::ONE_HUNDRED,
                currency,
            ) + Decimal::new(5, places + 1)
        }
        _ => round_to_minor(
            due * Decimal::from(share_percent) / Decimal::ONE_HUNDRED,
            currency,
        )
        .max(minor),
    }
}

fn invoice_command(
    index: usize,
    action: &Action,
    invoice: &Invoice,
    step: usize,
    at: DateTime<Utc>,
) -> InvoiceCommand {
    match action {
        Action::Create {
            currency,
            due_days,
            lines,
        } => InvoiceCommand::Create {
            invoice_id: format!("inv_{index}"),
            customer_id: "cus_p".to_owned(),
            currency: currencies()[*currency],
            subscription_id: None,
            billing_period: None,
            due_days: Some(*due_days),
            lines: lines.clone(),
            at,
        },
        Action::AddLine(line) => InvoiceCommand::AddLine {
            line: line.clone(),
            at,
        },
        Action::Issue => unreachable!("issuing goes through the numbering"),
        Action::Pay {
            how,
            share_percent,
            reference,
        } => InvoiceCommand::RecordPayment {
            payment_id: format!("pay_{step}"),
            amount: payment_amount(invoice, *how, *share_percent),
            reference: format!("ref_{reference}"),
            captured_at: at,
            excess_to_credit: false,
            at,
        },
        Action::Void { blank_reason } => InvoiceCommand::Void {
            reason: if *blank_reason { "" } else { "mistake" }.to_owned(),
            at,
        },
        Action::MarkUncollectible => InvoiceCommand::MarkUncollectible { at },
    }
}

/// What must hold of every invoice state an accepted sequence reaches.
fn check_invoice(invoice: &Invoice) -> Result<(), TestCaseError> {
    let Some(status) = invoice.status else {
        prop_assert_eq!(invoice, &Invoice::default());
        return Ok(());
    };
    let currency = invoice.currency();
    let places = currency.minor_units();
    let zero = Decimal::ZERO;

    // Every line is round(quantity × unit_price), from the exact product.
    for line in &invoice.lines {
        let exact = exact_round_product(line.quantity, line.unit_price, places)
            .expect("generated factors fit an i128");
        prop_assert_eq!(line.amount, exact, "{:?}", line);
        prop_assert_eq!(line.amount.scale(), places);
    }
    // The total is the sum of the rounded lines.
    let sum: Decimal = invoice.lines.iter().map(|l| l.amount).sum();
    prop_assert_eq!(invoice.total, sum);
    prop_assert_eq!(invoice.subtotal, invoice.total);
    // Amounts are at the currency's scale and nothing is ever owed below zero.
    for amount in [invoice.total, invoice.amount_due, invoice.amount_paid] {
        prop_assert_eq!(amount.scale(), places, "{}", amount);
    }
    prop_assert!(
        invoice.amount_due >= zero,
        "amount due {}",
        invoice.amount_due
    );
    let paid: Decimal = invoice.payments.iter().map(|p| p.amount).sum();
    prop_assert_eq!(invoice.amount_paid, paid);
    for payment in &invoice.payments {
        prop_assert!(payment.amount > zero);
        prop_assert!(payment.amount.normalize().scale() <= places);
    }
    let references: BTreeSet<&str> = invoice
        .payments
        .iter()
        .map(|p| p.reference.as_str())
        .collect();
    prop_assert_eq!(
        references.len(),
        invoice.payments.len(),
        "one payment per reference"
    );

    match status {
        InvoiceStatus::Draft => {
            prop_assert!(invoice.number.is_none());
            prop_assert!(invoice.payments.is_empty());
            prop_assert_eq!(invoice.amount_due, invoice.total.max(zero));
        }
        InvoiceStatus::Open => {
            prop_assert!(invoice.amount_due > zero);
            prop_assert_eq!(invoice.amount_paid + invoice.amount_due, invoice.total);
        }
        InvoiceStatus::Paid => {
            prop_assert_eq!(invoice.amount_due, zero);
            if invoice.total > zero {
                prop_assert_eq!(invoice.amount_paid, invoice.total);
            } else {
                prop_assert_eq!(invoice.amount_paid, zero);
            }
            prop_assert!(invoice.paid_at.is_some());
        }
        InvoiceStatus::Void => {
            prop_assert_eq!(invoice.amount_paid, zero);
            prop_assert_eq!(invoice.amount_due, zero);
            prop_assert!(invoice.total > zero);
        }
        InvoiceStatus::Uncollectible => {
            prop_assert!(invoice.amount_due > zero);
            prop_assert_eq!(invoice.amount_paid + invoice.amount_due, invoice.total);
        }
    }
    let issued = !matches!(status, InvoiceStatus::Draft);
    prop_assert_eq!(invoice.number.is_some(), issued);
    prop_assert_eq!(invoice.issued_at.is_some(), issued);
    if let (Some(issued_at), Some(due_at)) = (invoice.issued_at, invoice.due_at) {
        prop_assert_eq!(
            due_at,
            issued_at + Duration::days(i64::from(invoice.due_days))
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_invoice_commands_keep_every_invariant_and_numbers_gapless(steps in steps()) {
        let mut invoices: Vec<Invoice> = vec![Invoice::default(); INVOICES];
        let mut histories: Vec<Vec<InvoiceEvent>> = vec![Vec::new(); INVOICES];
        let mut numbering = InvoiceNumbering::default();
        let mut numbering_history = Vec::new();
        let mut at = t(CREATED);
        for (step, (index, action)) in steps.iter().enumerate() {
            at += Duration::hours(7);
            let invoice = &mut invoices[*index];
            let before = invoice.clone();
            let terminal = matches!(
                before.status,
                Some(InvoiceStatus::Paid | InvoiceStatus::Void | InvoiceStatus::Uncollectible)
            );
            // Issuing takes the next number and issues with it; the command
            // layer appends both or neither.
            let outcome = if let Action::Issue = action {
                let numbered = numbering.decide(NumberingCommand::Assign {
                    invoice_id: format!("inv_{index}"),
                    at,
                });
                numbered.and_then(|numbered| {
                    let NumberingEvent::InvoiceNumberAssigned { sequence, .. } = &numbered[0] else {
                        unreachable!("assign assigns")
                    };
                    let events = invoice.decide(InvoiceCommand::Issue { number: *sequence, customer: None, taxes: Default::default(), available_credit: rust_decimal::Decimal::ZERO, at })?;
                    for event in &numbered {
                        numbering.evolve(event);
                    }
                    numbering_history.extend(numbered);
                    Ok(events)
                })
            } else {
                invoice.decide(invoice_command(*index, action, invoice, step, at))
            };
            match outcome {
                Ok(events) => {
                    // A terminal invoice accepts nothing but a retried
                    // notice of a payment it already has, which changes nothing.
                    prop_assert!(
                        !terminal || events.is_empty(),
                        "a {:?} invoice accepted {:?}",
                        before.status,
                        action
                    );
                    for event in &events {
                        invoice.evolve(event);
                        let json = serde_json::to_string(event).unwrap();
                        prop_assert_eq!(&serde_json::from_str::<InvoiceEvent>(&json).unwrap(), event);
                    }
                    histories[*index].extend(events);
                }
                Err(_) => prop_assert_eq!(&*invoice, &before),
            }
            check_invoice(invoice)?;
        }
        // Replaying the accepted events rebuilds the same states.
        for (invoice, history) in invoices.iter().zip(&histories) {
            prop_assert_eq!(&given(history), invoice);
        }
        let mut replayed = InvoiceNumbering::default();
        for event in &numbering_history {
            replayed.evolve(event);
        }
        prop_assert_eq!(&replayed, &numbering);
        // Every number handed out is on exactly one issued invoice: 1..=n.
        let mut used: Vec<u64> = histories
            .iter()
            .flatten()
            .filter_map(|event| match event {
                InvoiceEvent::InvoiceIssued { sequence, number, .. } => {
                    assert_eq!(number, &format_number(*sequence));
                    Some(*sequence)
                }
                _ => None,
            })
            .collect();
        used.sort_unstable();
        prop_assert_eq!(used, (1..=numbering.last).collect::<Vec<u64>>());
    }

    #[test]
    fn assigned_numbers_run_from_one_without_gap_or_duplicate(
        ids in prop::collection::vec(
            prop_oneof![8 => "inv_[a-z0-9]{1,8}", 1 => Just(String::new()), 1 => Just("inv x".to_owned())],
            0..80,
        ),
    ) {
        let mut numbering = InvoiceNumbering::default();
        let mut numbers = Vec::new();
        for invoice_id in ids {
            let before = numbering.clone();
            match numbering.decide(NumberingCommand::Assign { invoice_id: invoice_id.clone(), at: t(ISSUED) }) {
                Ok(events) => {
                    prop_assert_eq!(events.len(), 1);
                    for event in &events {
                        numbering.evolve(event);
                        let NumberingEvent::InvoiceNumberAssigned { sequence, number, invoice_id: for_id, .. } = event else {
                            unreachable!("assign assigns")
                        };
                        prop_assert_eq!(for_id, &invoice_id);
                        prop_assert_eq!(number, &format!("INV-{sequence:06}"));
                        numbers.push(*sequence);
                    }
                }
                Err(_) => prop_assert_eq!(&numbering, &before),
            }
        }
        prop_assert_eq!(numbering.last, numbers.len() as u64);
        prop_assert_eq!(numbers, (1..=numbering.last).collect::<Vec<u64>>());
    }

    #[test]
    fn a_line_amount_is_the_exactly_rounded_product(
        line in new_line(),
        currency in 0usize..3,
    ) {
        let currency = currencies()[currency];
        match price_line(&line, currency, 1, None) {
            Ok(priced) => {
                let exact = exact_round_product(line.quantity, line.unit_price, currency.minor_units())
                    .expect("generated factors fit an i128");
                prop_assert_eq!(priced.amount, exact);
                prop_assert_eq!(priced.amount.scale(), currency.minor_units());
                // A zero amount is never "-0.00".
                prop_assert!(!priced.amount.is_sign_negative() || !priced.amount.is_zero());
            }
            Err(DomainError::Validation { field, .. }) => {
                prop_assert!(
                    field == "description" || field == "quantity" || field == "unit_price",
                    "{}", field
                );
                let bad_places = line.quantity.normalize().scale() > MAX_LINE_PLACES
                    || line.unit_price.normalize().scale() > MAX_LINE_PLACES;
                let negative = line.quantity < Decimal::ZERO;
                let too_large = line.quantity.abs() > MAX_AMOUNT
                    || line.unit_price.abs() > MAX_AMOUNT
                    || line.quantity.checked_mul(line.unit_price).is_none_or(|a| a.abs() > MAX_AMOUNT);
                prop_assert!(
                    line.description.trim().is_empty() || bad_places || negative || too_large,
                    "refused a good line {:?}", line
                );
            }
            Err(other) => prop_assert!(false, "{:?}", other),
        }
    }
}

// ---------------------------------------------------------------------------
// Credit notes, applied credit and overpayments
// ---------------------------------------------------------------------------

fn credit_note_of(events: &[InvoiceEvent]) -> tally_aggregates::invoice::CreditNote {
    match &events[0] {
        InvoiceEvent::CreditNoteIssued { credit_note, .. } => credit_note.clone(),
        other => panic!("expected CreditNoteIssued, got {other:?}"),
    }
}

#[test]
fn a_credit_note_on_an_open_invoice_lowers_the_amount_due_and_the_rest_is_credit() {
    let mut invoice = Fixture::OpenPartlyPaid.invoice();
    let events = run(&mut invoice, credit_note(1, "30.00", false)).unwrap();
    let note = credit_note_of(&events);
    assert_eq!(note.number, "CN-000001");
    assert_eq!(
        (note.to_amount_due, note.to_credit, note.refunded),
        (dec("30.00"), dec("0.00"), dec("0.00"))
    );
    assert_eq!(invoice.amount_due, dec("30.00"));
    // 40.00 credited against the 30.00 still due: paid, 10.00 is credit.
    let events = run(&mut invoice, credit_note(2, "40.00", false)).unwrap();
    assert_eq!(names(&events), ["CreditNoteIssued", "InvoicePaid"]);
    let note = credit_note_of(&events);
    assert_eq!(
        (note.to_amount_due, note.to_credit),
        (dec("30.00"), dec("10.00"))
    );
    assert_eq!(invoice.status, Some(InvoiceStatus::Paid));
    assert_eq!(invoice.amount_credited, dec("70.00"));
    assert_eq!(invoice.amount_due, dec("0.00"));
    // 30.00 of the total is left to credit.
    assert_validation(run(&mut invoice, credit_note(3, "30.01", false)), "amount");
    let events = run(&mut invoice, credit_note(3, "30.00", false)).unwrap();
    assert_eq!(credit_note_of(&events).to_credit, dec("30.00"));
}

#[test]
fn a_refund_pays_back_money_received_and_leaves_the_amount_due() {
    let mut invoice = Fixture::OpenPartlyPaid.invoice();
    assert_validation(run(&mut invoice, credit_note(1, "40.01", true)), "amount");
    let events = run(&mut invoice, credit_note(1, "40.00", true)).unwrap();
    assert_eq!(credit_note_of(&events).refunded, dec("40.00"));
    assert_eq!(invoice.amount_due, dec("60.00"));
    assert_eq!(invoice.amount_refunded, dec("40.00"));
    assert_eq!(invoice.status, Some(InvoiceStatus::Open));
    // Nothing received is left to pay back.
    assert_validation(run(&mut invoice, credit_note(2, "0.01", true)), "amount");

    let mut paid = Fixture::Paid.invoice();
    let events = run(&mut paid, credit_note(1, "100.00", true)).unwrap();
    assert_eq!(names(&events), ["CreditNoteIssued"]);
    assert_eq!(paid.amount_refunded, dec("100.00"));
    assert_eq!(paid.status, Some(InvoiceStatus::Paid));
}

#[test]
fn a_credit_note_with_a_reference_is_issued_once() {
    let mut invoice = Fixture::Paid.invoice();
    let mut with_ref = credit_note(1, "10.00", true);
    if let InvoiceCommand::IssueCreditNote { reference, .. } = &mut with_ref {
        *reference = Some("stripe:re_1".to_owned());
    }
    assert_eq!(run(&mut invoice, with_ref.clone()).unwrap().len(), 1);
    assert_eq!(run(&mut invoice, with_ref.clone()).unwrap(), vec![]);
    if let InvoiceCommand::IssueCreditNote { amount, .. } = &mut with_ref {
        *amount = dec("11.00");
    }
    assert_validation(run(&mut invoice, with_ref), "reference");
}

#[test]
fn an_overpayment_from_a_provider_pays_the_invoice_and_credits_the_rest() {
    let mut invoice = Fixture::OpenPartlyPaid.invoice();
    let events = run(&mut invoice, provider_pay("pay_4", "75.00", OVERPAY)).unwrap();
    match &events[0] {
        InvoiceEvent::PaymentRecorded {
            payment, credited, ..
        } => {
            assert_eq!(payment.amount, dec("60.00"));
            assert_eq!(*credited, dec("15.00"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(invoice.status, Some(InvoiceStatus::Paid));
    // The provider retries its notice: the same amount received, no effect.
    assert_eq!(
        run(&mut invoice, provider_pay("pay_5", "75.00", OVERPAY)).unwrap(),
        vec![]
    );
    // Through the API an overpayment is refused.
    let mut open = Fixture::Open.invoice();
    assert_validation(run(&mut open, pay("pay_6", "100.01", "ref_6")), "amount");
}

#[test]
fn issuing_applies_credit_up_to_the_amount_due() {
    for (available, applied, due, status) in [
        ("30.00", "30.00", "70.00", InvoiceStatus::Open),
        ("100.00", "100.00", "0.00", InvoiceStatus::Paid),
        ("250.00", "100.00", "0.00", InvoiceStatus::Paid),
        ("0", "0.00", "100.00", InvoiceStatus::Open),
    ] {
        let mut invoice = Fixture::Draft.invoice();
        let events = run(
            &mut invoice,
            InvoiceCommand::Issue {
                number: 1,
                customer: None,
                available_credit: dec(available),
                at: t(ISSUED),
                taxes: Default::default(),
            },
        )
        .unwrap();
        match &events[0] {
            InvoiceEvent::InvoiceIssued { applied_credit, .. } => {
                assert_eq!(*applied_credit, dec(applied), "{available}")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(invoice.applied_credit, dec(applied));
        assert_eq!(invoice.amount_due, dec(due), "{available}");
        assert_eq!(invoice.status, Some(status), "{available}");
    }
    // An invoice with applied credit is not voided: the credit moved.
    let mut invoice = Fixture::Draft.invoice();
    run(
        &mut invoice,
        InvoiceCommand::Issue {
            number: 1,
            customer: None,
            available_credit: dec("10.00"),
            at: t(ISSUED),
            taxes: Default::default(),
        },
    )
    .unwrap();
    assert_validation(run(&mut invoice, void("mistake")), "amount_credited");
}

#[test]
fn the_ledger_numbers_credit_notes_gaplessly_and_never_applies_more_credit_than_there_is() {
    use tally_aggregates::invoice::CreditSource;
    let mut ledger = InvoiceNumbering::default();
    let apply = |ledger: &mut InvoiceNumbering, command| {
        let events = ledger.decide(command)?;
        for e in &events {
            ledger.evolve(e);
        }
        Ok::<_, DomainError>(events)
    };
    for n in 1..=3u64 {
        let events = apply(
            &mut ledger,
            NumberingCommand::AssignCreditNote {
                invoice_id: "inv_1".into(),
                credit_note_id: format!("cn_{n}"),
                at: t(LATER),
            },
        )
        .unwrap();
        assert!(matches!(&events[0],
            NumberingEvent::CreditNoteNumberAssigned { number, sequence, .. }
                if *sequence == n && *number == format!("CN-{n:06}")));
    }
    assert_eq!(ledger.next(), 1, "invoice numbers are their own sequence");
    apply(
        &mut ledger,
        NumberingCommand::GrantCredit {
            customer_id: "cus_1".into(),
            currency: eur(),
            amount: dec("25.00"),
            source: CreditSource::NegativeInvoice {
                invoice_id: "inv_1".into(),
            },
            at: t(LATER),
        },
    )
    .unwrap();
    assert_eq!(ledger.credit_of("cus_1", eur()), dec("25.00"));
    assert_eq!(ledger.credit_of("cus_1", jpy()), dec("0"));
    let too_much = NumberingCommand::ApplyCredit {
        customer_id: "cus_1".into(),
        currency: eur(),
        amount: dec("25.01"),
        invoice_id: "inv_2".into(),
        at: t(LATER),
    };
    assert!(matches!(
        apply(&mut ledger, too_much),
        Err(DomainError::Validation { .. })
    ));
    apply(
        &mut ledger,
        NumberingCommand::ApplyCredit {
            customer_id: "cus_1".into(),
            currency: eur(),
            amount: dec("25.00"),
            invoice_id: "inv_2".into(),
            at: t(LATER),
        },
    )
    .unwrap();
    assert!(
        ledger.credit.is_empty(),
        "no entry for a customer without credit"
    );
    // The ledger's state survives a snapshot round trip.
    let json = serde_json::to_string(&ledger).unwrap();
    assert_eq!(
        serde_json::from_str::<InvoiceNumbering>(&json).unwrap(),
        ledger
    );
    let old: InvoiceNumbering = serde_json::from_str(r#"{"last": 7}"#).unwrap();
    assert_eq!((old.last, old.last_credit_note), (7, 0));
}
