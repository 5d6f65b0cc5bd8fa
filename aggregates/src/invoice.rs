//! The `Invoice` aggregate: Draft → Open → Paid | Void | Uncollectible, and
//! the tenant's `InvoiceNumbering`, which hands out gapless invoice numbers.
//!
//! Money is exact: every line amount is `quantity × unit_price` rounded half
//! away from zero to the currency's minor unit, and the totals are sums of
//! rounded lines, fixed when the invoice is issued. Issuing takes the number
//! from the tenant's numbering stream; the command layer appends the
//! `InvoiceIssued` and the `InvoiceNumberAssigned` events in one transaction,
//! so a number is used exactly when an invoice is issued with it.
//!
//! Credit notes (`CN-` numbers, gapless per tenant) take money back from an
//! open or paid invoice: they lower the amount due, become customer credit,
//! or are recorded as refunded. The tenant's numbering stream also holds each
//! customer's credit per currency (ADR 0010), so issuing applies credit in the
//! same transaction that takes the number, and no credit is applied twice.

use chrono::{DateTime, Duration, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::customer::CustomerDetails;
use crate::money::{round_to_minor, MAX_AMOUNT};
use crate::plan::validate_id;
use crate::tax::{validate_rate_ids, TaxAmount, TaxSources};
use crate::AggregateKind;
use crate::{Currency, DomainError, Period};

/// The longest customer id, description, reference or reason, in characters.
pub const MAX_TEXT_CHARS: usize = 500;
/// Lines per invoice.
pub const MAX_LINES: usize = 250;
/// Payments per invoice.
pub const MAX_PAYMENTS: usize = 1_000;
/// Decimal places allowed in a quantity or a unit price (a unit price may be
/// finer than the minor unit, e.g. 0.0004 EUR per API call): those of every
/// unit price.
pub const MAX_LINE_PLACES: u32 = crate::money::MAX_UNIT_PRICE_PLACES;
/// The default and the longest payment term, in days.
pub const DEFAULT_DUE_DAYS: u32 = 30;
pub const MAX_DUE_DAYS: u32 = 365;
/// How long before it is recorded a payment may have been captured (a
/// late bank reconciliation); a capture in the future is refused, beyond the
/// clock skew of the payer's side.
pub const MAX_CAPTURE_AGE_DAYS: i64 = 366;
/// The numbering stream's id (one per tenant).
pub const NUMBERING_ID: &str = "invoice_numbers";
/// Credit notes per invoice.
pub const MAX_CREDIT_NOTES: usize = 100;

/// Where an invoice is in its life. Paid, Void and Uncollectible are terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InvoiceStatus {
    Draft,
    Open,
    Paid,
    Void,
    Uncollectible,
}

impl InvoiceStatus {
    pub const ALL: [InvoiceStatus; 5] = [
        InvoiceStatus::Draft,
        InvoiceStatus::Open,
        InvoiceStatus::Paid,
        InvoiceStatus::Void,
        InvoiceStatus::Uncollectible,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            InvoiceStatus::Draft => "draft",
            InvoiceStatus::Open => "open",
            InvoiceStatus::Paid => "paid",
            InvoiceStatus::Void => "void",
            InvoiceStatus::Uncollectible => "uncollectible",
        }
    }

    pub fn parse(s: &str) -> Option<InvoiceStatus> {
        InvoiceStatus::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

/// What a line charges for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LineKind {
    Recurring,
    Usage,
    Proration,
    #[default]
    Manual,
    /// A coupon's discount: negative, one per invoice, never more than the
    /// recurring, usage and proration lines it covers.
    Discount,
}

/// A line as asked for: the amount is computed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewLine {
    pub description: String,
    #[serde(with = "rust_decimal::serde::str")]
    pub quantity: Decimal,
    /// May be negative (a credit or discount line).
    #[serde(with = "rust_decimal::serde::str")]
    pub unit_price: Decimal,
    pub kind: LineKind,
    /// The service period the line covers, for recurring, usage and proration lines.
    #[serde(default)]
    pub period: Option<Period>,
    /// The line's own tax rates, first in the precedence line →
    /// subscription → plan → customer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tax_rate_ids: Vec<String>,
}

/// A line on an invoice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvoiceLine {
    /// 1-based position on the invoice.
    pub number: u32,
    pub description: String,
    #[serde(with = "rust_decimal::serde::str")]
    pub quantity: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub unit_price: Decimal,
    pub kind: LineKind,
    #[serde(default)]
    pub period: Option<Period>,
    /// `round(quantity × unit_price)` to the minor unit.
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
    /// The line's own tax rates (absent in lines from before taxes).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tax_rate_ids: Vec<String>,
    /// The tax of each rate that applied, fixed at issue.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tax_amounts: Vec<TaxAmount>,
}

/// The tax amounts of one line, as issuing fixed them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineTaxes {
    /// The line's number.
    pub line: u32,
    pub tax_amounts: Vec<TaxAmount>,
}

/// A payment received against an open invoice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payment {
    pub payment_id: String,
    /// What went to the invoice.
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
    /// Received beyond the amount due, become customer credit (absent when none).
    #[serde(
        default,
        with = "rust_decimal::serde::str",
        skip_serializing_if = "Decimal::is_zero"
    )]
    pub credited: Decimal,
    pub reference: String,
    pub captured_at: DateTime<Utc>,
    pub recorded_at: DateTime<Utc>,
}

/// Why a credit note was issued (as Stripe's credit note reasons).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CreditReason {
    Duplicate,
    Fraudulent,
    OrderChange,
    ProductUnsatisfactory,
    Refund,
}

impl CreditReason {
    pub const ALL: [CreditReason; 5] = [
        CreditReason::Duplicate,
        CreditReason::Fraudulent,
        CreditReason::OrderChange,
        CreditReason::ProductUnsatisfactory,
        CreditReason::Refund,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            CreditReason::Duplicate => "duplicate",
            CreditReason::Fraudulent => "fraudulent",
            CreditReason::OrderChange => "order_change",
            CreditReason::ProductUnsatisfactory => "product_unsatisfactory",
            CreditReason::Refund => "refund",
        }
    }

    pub fn parse(s: &str) -> Option<CreditReason> {
        CreditReason::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// A credit note on an invoice. Its amount splits into what lowered the
/// amount due, what became customer credit and what was refunded; the three
/// add up to `amount`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreditNote {
    pub credit_note_id: String,
    /// `CN-000001`, gapless per tenant.
    pub number: String,
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
    pub reason: CreditReason,
    pub refund: bool,
    /// The part that lowered the amount due (an open invoice).
    #[serde(with = "rust_decimal::serde::str")]
    pub to_amount_due: Decimal,
    /// The part that became customer credit.
    #[serde(with = "rust_decimal::serde::str")]
    pub to_credit: Decimal,
    /// The part paid back (`refund: true`).
    #[serde(with = "rust_decimal::serde::str")]
    pub refunded: Decimal,
    /// The source's reference (`stripe:re_…` for a provider's refund), if any.
    #[serde(default)]
    pub reference: Option<String>,
    pub issued_at: DateTime<Utc>,
}

/// An invoice. `status == None` means it was never created.
#[derive(Default, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Invoice {
    pub id: Option<String>,
    pub customer_id: String,
    pub currency: Option<Currency>,
    pub subscription_id: Option<String>,
    /// The billing period a renewal invoice was made for.
    pub billing_period: Option<Period>,
    pub due_days: u32,
    pub status: Option<InvoiceStatus>,
    pub lines: Vec<InvoiceLine>,
    pub number: Option<String>,
    /// The lines before discount (and before exclusive tax).
    #[serde(with = "rust_decimal::serde::str")]
    pub subtotal: Decimal,
    /// What the discount line takes off, as a positive amount.
    #[serde(default, with = "rust_decimal::serde::str")]
    pub discount: Decimal,
    /// Every line's tax, inclusive and exclusive, fixed at issue.
    #[serde(default, with = "rust_decimal::serde::str")]
    pub tax: Decimal,
    /// `subtotal − discount + exclusive tax`.
    #[serde(with = "rust_decimal::serde::str")]
    pub total: Decimal,
    /// Customer credit applied at issue.
    #[serde(default, with = "rust_decimal::serde::str")]
    pub applied_credit: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub amount_paid: Decimal,
    /// The sum of the credit notes (refunds included).
    #[serde(default, with = "rust_decimal::serde::str")]
    pub amount_credited: Decimal,
    /// The part of the credit notes paid back.
    #[serde(default, with = "rust_decimal::serde::str")]
    pub amount_refunded: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub amount_due: Decimal,
    pub payments: Vec<Payment>,
    #[serde(default)]
    pub credit_notes: Vec<CreditNote>,
    pub created_at: Option<DateTime<Utc>>,
    pub issued_at: Option<DateTime<Utc>>,
    pub due_at: Option<DateTime<Utc>>,
    pub paid_at: Option<DateTime<Utc>>,
    pub voided_at: Option<DateTime<Utc>>,
    pub void_reason: Option<String>,
    pub uncollectible_at: Option<DateTime<Utc>>,
    /// The customer's details as they were when the invoice was issued;
    /// `None` before issue, for a customer never put, and on invoices issued
    /// before customers existed.
    #[serde(default)]
    pub customer_details: Option<CustomerDetails>,
}

/// What can be asked of an invoice. Every command carries its time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum InvoiceCommand {
    /// Creates a draft, optionally with its first lines.
    Create {
        invoice_id: String,
        customer_id: String,
        currency: Currency,
        subscription_id: Option<String>,
        billing_period: Option<Period>,
        due_days: Option<u32>,
        lines: Vec<NewLine>,
        at: DateTime<Utc>,
    },
    /// Draft only.
    AddLine { line: NewLine, at: DateTime<Utc> },
    /// Draft → Open with `number` (from [`InvoiceNumbering`]), a copy of
    /// the customer's details as they are now (`None`: never put), applying
    /// up to `available_credit` of the customer's credit in the invoice's
    /// currency; an amount due of zero is settled at once (→ Paid).
    Issue {
        number: u64,
        customer: Option<CustomerDetails>,
        available_credit: Decimal,
        /// The tax rates the lines may take (none: no tax). Boxed: the
        /// other commands are small.
        taxes: Box<TaxSources>,
        at: DateTime<Utc>,
    },
    /// Open only; at most `amount_due` unless `excess_to_credit` (a payment
    /// provider's overpayment: the rest becomes customer credit). A repeat of
    /// a payment reference with the same amount is a no-op (a provider's
    /// retried notification).
    RecordPayment {
        payment_id: String,
        amount: Decimal,
        reference: String,
        captured_at: DateTime<Utc>,
        excess_to_credit: bool,
        at: DateTime<Utc>,
    },
    /// Open or Paid: a credit note numbered `number` (from
    /// [`InvoiceNumbering`]). On an open invoice it lowers the amount due and
    /// the rest becomes credit; on a paid one it is credit, or refunded with
    /// `refund`. A refund pays back money received, so it is at most what
    /// was paid and not yet refunded, and it leaves the amount due as it is.
    /// The credit notes never add up to more than the total.
    IssueCreditNote {
        credit_note_id: String,
        number: u64,
        amount: Decimal,
        reason: CreditReason,
        refund: bool,
        reference: Option<String>,
        at: DateTime<Utc>,
    },
    /// Open with nothing paid → Void.
    Void { reason: String, at: DateTime<Utc> },
    /// Open → Uncollectible: the amount due is written off.
    MarkUncollectible { at: DateTime<Utc> },
}

impl InvoiceCommand {
    pub fn name(&self) -> &'static str {
        match self {
            InvoiceCommand::Create { .. } => "create",
            InvoiceCommand::AddLine { .. } => "add_line",
            InvoiceCommand::Issue { .. } => "issue",
            InvoiceCommand::RecordPayment { .. } => "record_payment",
            InvoiceCommand::Void { .. } => "void",
            InvoiceCommand::MarkUncollectible { .. } => "mark_uncollectible",
            InvoiceCommand::IssueCreditNote { .. } => "issue_credit_note",
        }
    }
}

/// What happened to an invoice. Each event after creation carries the
/// customer and currency, so the balance journal needs no other source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum InvoiceEvent {
    InvoiceCreated {
        invoice_id: String,
        customer_id: String,
        currency: Currency,
        subscription_id: Option<String>,
        billing_period: Option<Period>,
        due_days: u32,
        created_at: DateTime<Utc>,
    },
    LineAdded {
        line: InvoiceLine,
    },
    InvoiceIssued {
        number: String,
        sequence: u64,
        customer_id: String,
        currency: Currency,
        #[serde(with = "rust_decimal::serde::str")]
        subtotal: Decimal,
        /// The discount line's amount, positive (absent when none, as in
        /// events from before coupons existed).
        #[serde(
            default,
            with = "rust_decimal::serde::str",
            skip_serializing_if = "Decimal::is_zero"
        )]
        discount: Decimal,
        /// Every line's tax, inclusive and exclusive (absent when none, as
        /// in events from before taxes existed).
        #[serde(
            default,
            with = "rust_decimal::serde::str",
            skip_serializing_if = "Decimal::is_zero"
        )]
        tax: Decimal,
        /// The tax amounts per line (absent when none).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        line_taxes: Vec<LineTaxes>,
        #[serde(with = "rust_decimal::serde::str")]
        total: Decimal,
        /// Customer credit applied (absent when none, as in events from
        /// before credit existed).
        #[serde(
            default,
            with = "rust_decimal::serde::str",
            skip_serializing_if = "Decimal::is_zero"
        )]
        applied_credit: Decimal,
        #[serde(with = "rust_decimal::serde::str")]
        amount_due: Decimal,
        issued_at: DateTime<Utc>,
        due_at: DateTime<Utc>,
        /// The customer's details at issue; absent for a customer never put
        /// and in events stored before customers existed. Boxed: most
        /// invoice events are small.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        customer_details: Option<Box<CustomerDetails>>,
    },
    PaymentRecorded {
        payment: Payment,
        customer_id: String,
        currency: Currency,
        #[serde(with = "rust_decimal::serde::str")]
        amount_paid: Decimal,
        #[serde(with = "rust_decimal::serde::str")]
        amount_due: Decimal,
        /// Received beyond the amount due, become customer credit (a
        /// provider's overpayment; absent when none).
        #[serde(
            default,
            with = "rust_decimal::serde::str",
            skip_serializing_if = "Decimal::is_zero"
        )]
        credited: Decimal,
    },
    CreditNoteIssued {
        credit_note: CreditNote,
        customer_id: String,
        currency: Currency,
        #[serde(with = "rust_decimal::serde::str")]
        amount_credited: Decimal,
        #[serde(with = "rust_decimal::serde::str")]
        amount_refunded: Decimal,
        #[serde(with = "rust_decimal::serde::str")]
        amount_due: Decimal,
    },
    InvoicePaid {
        customer_id: String,
        subscription_id: Option<String>,
        paid_at: DateTime<Utc>,
    },
    InvoiceVoided {
        customer_id: String,
        currency: Currency,
        /// The total taken back.
        #[serde(with = "rust_decimal::serde::str")]
        amount: Decimal,
        reason: String,
        voided_at: DateTime<Utc>,
    },
    InvoiceMarkedUncollectible {
        customer_id: String,
        currency: Currency,
        /// The amount due written off.
        #[serde(with = "rust_decimal::serde::str")]
        amount: Decimal,
        at: DateTime<Utc>,
    },
}

impl InvoiceEvent {
    pub fn name(&self) -> &'static str {
        match self {
            InvoiceEvent::InvoiceCreated { .. } => "InvoiceCreated",
            InvoiceEvent::LineAdded { .. } => "LineAdded",
            InvoiceEvent::InvoiceIssued { .. } => "InvoiceIssued",
            InvoiceEvent::PaymentRecorded { .. } => "PaymentRecorded",
            InvoiceEvent::InvoicePaid { .. } => "InvoicePaid",
            InvoiceEvent::InvoiceVoided { .. } => "InvoiceVoided",
            InvoiceEvent::InvoiceMarkedUncollectible { .. } => "InvoiceMarkedUncollectible",
            InvoiceEvent::CreditNoteIssued { .. } => "CreditNoteIssued",
        }
    }
}

/// The invoice number for a sequence: `INV-000042`.
pub fn format_number(sequence: u64) -> String {
    format!("INV-{sequence:06}")
}

/// The credit note number for a sequence: `CN-000042`.
pub fn format_credit_note_number(sequence: u64) -> String {
    format!("CN-{sequence:06}")
}

fn validate_text(field: &str, value: &str) -> Result<(), DomainError> {
    if value.trim().is_empty() || value.chars().count() > MAX_TEXT_CHARS {
        return Err(DomainError::validation(
            field,
            format!("must be 1 to {MAX_TEXT_CHARS} characters"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(DomainError::validation(
            field,
            "must not contain control characters",
        ));
    }
    Ok(())
}

fn check_decimal(field: &str, value: Decimal) -> Result<(), DomainError> {
    if value.abs() > MAX_AMOUNT {
        return Err(DomainError::validation(
            field,
            format!("must be within ±{MAX_AMOUNT}"),
        ));
    }
    if value.normalize().scale() > MAX_LINE_PLACES {
        return Err(DomainError::validation(
            field,
            format!("at most {MAX_LINE_PLACES} decimal places"),
        ));
    }
    Ok(())
}

/// Checks a line and computes its amount. `index` names the line in errors
/// of a create command (`lines[2].quantity`); `None` for a single line.
pub fn price_line(
    line: &NewLine,
    currency: Currency,
    number: u32,
    index: Option<usize>,
) -> Result<InvoiceLine, DomainError> {
    let field = |name: &str| match index {
        Some(i) => format!("lines[{i}].{name}"),
        None => name.to_owned(),
    };
    validate_text(&field("description"), &line.description)?;
    validate_rate_ids(&field("tax_rate_ids"), &line.tax_rate_ids)?;
    if line.quantity.is_sign_negative() && !line.quantity.is_zero() {
        return Err(DomainError::validation(
            field("quantity"),
            "must not be negative",
        ));
    }
    check_decimal(&field("quantity"), line.quantity)?;
    check_decimal(&field("unit_price"), line.unit_price)?;
    // The bound is checked on `Decimal`'s product, which may be rounded in its
    // last digits; the amount itself is rounded once, from the exact product.
    let amount = line
        .quantity
        .checked_mul(line.unit_price)
        .filter(|a| a.abs() <= MAX_AMOUNT)
        .and_then(|_| line_amount(line.quantity, line.unit_price, currency))
        .ok_or_else(|| {
            DomainError::validation(
                field("quantity"),
                format!("quantity × unit_price must be within ±{MAX_AMOUNT}"),
            )
        })?;
    Ok(InvoiceLine {
        number,
        description: line.description.clone(),
        quantity: line.quantity.normalize(),
        unit_price: line.unit_price.normalize(),
        kind: line.kind,
        period: line.period,
        amount,
        tax_rate_ids: line.tax_rate_ids.clone(),
        tax_amounts: Vec::new(),
    })
}

/// `quantity × unit_price` rounded half away from zero to the currency's
/// minor unit, from the exact product. `Decimal` multiplication rounds a
/// product that needs more than 28 digits, and rounding that again to the
/// minor unit can land one minor unit off: 540312518478.138489041097 ×
/// 0.000001234567 is 667052.004999…, which `Decimal` makes 667052.005 and then
/// 667052.01. The line checks bound both factors (|x| ≤ [`MAX_AMOUNT`], at
/// most [`MAX_LINE_PLACES`] places), so their mantissas are below 10^27 and
/// the product is exact in `u128` as `high × 10^28 + low`.
fn line_amount(quantity: Decimal, unit_price: Decimal, currency: Currency) -> Option<Decimal> {
    const HALF: u128 = 100_000_000_000_000; // 10^14
    const LOW: u128 = HALF * HALF; // 10^28
    let (q, p) = (quantity.normalize(), unit_price.normalize());
    let (a, b) = (q.mantissa().unsigned_abs(), p.mantissa().unsigned_abs());
    if a >= LOW / 10 || b >= LOW / 10 {
        return None;
    }
    // a = ah × 10^14 + al with ah < 10^13, likewise b.
    let (ah, al, bh, bl) = (a / HALF, a % HALF, b / HALF, b % HALF);
    let mid = ah * bl + al * bh; // < 2 × 10^27
    let low = (mid % HALF) * HALF + al * bl; // < 2 × 10^28
    let high = ah * bh + mid / HALF + low / LOW;
    let low = low % LOW;
    let places = currency.minor_units();
    let scale = q.scale() + p.scale();
    let units = if scale >= places {
        // At most 2 × MAX_LINE_PLACES places: the shift stays below 28.
        let divisor = 10u128.pow(scale - places);
        let units = high
            .checked_mul(LOW / divisor)?
            .checked_add(low / divisor)?;
        if (low % divisor) * 2 >= divisor {
            units.checked_add(1)?
        } else {
            units
        }
    } else {
        high.checked_mul(LOW)?
            .checked_add(low)?
            .checked_mul(10u128.pow(places - scale))?
    };
    let units = i128::try_from(units).ok()?;
    let signed = if q.is_sign_negative() != p.is_sign_negative() {
        -units
    } else {
        units
    };
    let amount = Decimal::try_from_i128_with_scale(signed, places).ok()?;
    Some(round_to_minor(amount, currency))
}

/// The discount rule for `line` joining `lines`: a discount line is at most
/// one per invoice, never positive, and never more than the recurring, usage
/// and proration lines it covers; a line after the discount must leave it
/// covered. `field` names the line's kind in errors.
fn check_discount(
    lines: &[InvoiceLine],
    line: &InvoiceLine,
    field: &str,
) -> Result<(), DomainError> {
    let existing = lines.iter().find(|l| l.kind == LineKind::Discount);
    let discount = match (existing, line.kind) {
        (Some(_), LineKind::Discount) => {
            return Err(DomainError::validation(
                field,
                "an invoice has at most one discount line",
            ))
        }
        (None, LineKind::Discount) => {
            if line.amount > Decimal::ZERO {
                return Err(DomainError::validation(
                    field,
                    "a discount line must not be positive",
                ));
            }
            line.amount
        }
        (Some(d), _) => d.amount,
        (None, _) => return Ok(()),
    };
    let covered: Decimal = lines
        .iter()
        .chain(std::iter::once(line))
        .filter(|l| crate::coupon::discounts(l.kind))
        .map(|l| l.amount)
        .sum();
    if -discount > covered {
        return Err(DomainError::validation(
            field,
            format!(
                "a discount must not exceed the recurring, usage and proration lines it covers ({covered})"
            ),
        ));
    }
    Ok(())
}

impl Invoice {
    fn invalid(status: InvoiceStatus, command: &'static str) -> DomainError {
        DomainError::InvalidTransition {
            aggregate: AggregateKind::Invoice,
            from: status.as_str().to_owned(),
            command,
        }
    }

    /// The invoice's currency.
    ///
    /// # Panics
    /// On an invoice that was never created.
    pub fn currency(&self) -> Currency {
        self.currency.expect("a created invoice has a currency")
    }

    /// The sum of the line amounts (already rounded), in the currency's scale.
    pub fn lines_total(&self) -> Decimal {
        let sum: Decimal = self.lines.iter().map(|l| l.amount).sum();
        round_to_minor(sum, self.currency())
    }

    /// The subtotal (every line but the discount) and the discount (the
    /// discount line's amount, as a positive number) of `lines`.
    pub fn subtotal_and_discount(lines: &[InvoiceLine], currency: Currency) -> (Decimal, Decimal) {
        let (discount, other): (Vec<_>, Vec<_>) =
            lines.iter().partition(|l| l.kind == LineKind::Discount);
        let subtotal: Decimal = other.iter().map(|l| l.amount).sum();
        let discount: Decimal = discount.iter().map(|l| -l.amount).sum();
        (
            round_to_minor(subtotal, currency),
            round_to_minor(discount, currency),
        )
    }

    /// Decides which events `command` causes, or why it is refused. Every
    /// (status, command) pair is listed on purpose.
    pub fn decide(&self, command: InvoiceCommand) -> Result<Vec<InvoiceEvent>, DomainError> {
        use InvoiceCommand as C;
        use InvoiceStatus::{Draft, Open, Paid, Uncollectible, Void};
        let name = command.name();
        match (self.status, command) {
            (
                None,
                C::Create {
                    invoice_id,
                    customer_id,
                    currency,
                    subscription_id,
                    billing_period,
                    due_days,
                    lines,
                    at,
                },
            ) => Self::create(
                invoice_id,
                customer_id,
                currency,
                subscription_id,
                billing_period,
                due_days,
                lines,
                at,
            ),
            (Some(Draft | Open | Paid | Void | Uncollectible), C::Create { .. }) => {
                Err(DomainError::AlreadyExists(AggregateKind::Invoice))
            }
            (
                None,
                C::AddLine { .. }
                | C::Issue { .. }
                | C::RecordPayment { .. }
                | C::Void { .. }
                | C::MarkUncollectible { .. }
                | C::IssueCreditNote { .. },
            ) => Err(DomainError::NotFound(AggregateKind::Invoice)),

            (Some(Draft), C::AddLine { line, .. }) => {
                if self.lines.len() >= MAX_LINES {
                    return Err(DomainError::validation(
                        "lines",
                        format!("an invoice has at most {MAX_LINES} lines"),
                    ));
                }
                let line = price_line(&line, self.currency(), self.lines.len() as u32 + 1, None)?;
                check_discount(&self.lines, &line, "kind")?;
                Ok(vec![InvoiceEvent::LineAdded { line }])
            }
            (Some(status @ (Open | Paid | Void | Uncollectible)), C::AddLine { .. }) => {
                Err(Self::invalid(status, name))
            }

            (
                Some(Draft),
                C::Issue {
                    number,
                    customer,
                    available_credit,
                    taxes,
                    at,
                },
            ) => self.issue(number, customer, available_credit, &taxes, at),
            (Some(status @ (Open | Paid | Void | Uncollectible)), C::Issue { .. }) => {
                Err(Self::invalid(status, name))
            }

            (
                Some(Open),
                C::RecordPayment {
                    payment_id,
                    amount,
                    reference,
                    captured_at,
                    excess_to_credit,
                    at,
                },
            ) => self.record_payment(
                payment_id,
                amount,
                reference,
                captured_at,
                excess_to_credit,
                at,
            ),
            // A source retrying the notice of the payment that settled the
            // invoice gets the same answer as any other repeat.
            (
                Some(Paid),
                C::RecordPayment {
                    amount, reference, ..
                },
            ) => {
                let repeat = self.payment_repeats(&reference, amount);
                if repeat {
                    Ok(vec![])
                } else {
                    Err(Self::invalid(InvoiceStatus::Paid, name))
                }
            }
            (Some(status @ (Draft | Void | Uncollectible)), C::RecordPayment { .. }) => {
                Err(Self::invalid(status, name))
            }

            (Some(Open), C::Void { reason, at }) => {
                validate_text("reason", &reason)?;
                if !self.amount_paid.is_zero() {
                    return Err(DomainError::validation(
                        "amount_paid",
                        "an invoice with payments cannot be voided",
                    ));
                }
                // Voiding takes back the total; with credit applied or
                // credit notes issued, part of it already moved elsewhere.
                if !self.applied_credit.is_zero() || !self.credit_notes.is_empty() {
                    return Err(DomainError::validation(
                        "amount_credited",
                        "an invoice with applied credit or credit notes cannot be voided; issue a credit note for the amount due",
                    ));
                }
                Ok(vec![InvoiceEvent::InvoiceVoided {
                    customer_id: self.customer_id.clone(),
                    currency: self.currency(),
                    amount: self.total,
                    reason,
                    voided_at: at,
                }])
            }
            (Some(status @ (Draft | Paid | Void | Uncollectible)), C::Void { .. }) => {
                Err(Self::invalid(status, name))
            }

            (Some(Open), C::MarkUncollectible { at }) => {
                Ok(vec![InvoiceEvent::InvoiceMarkedUncollectible {
                    customer_id: self.customer_id.clone(),
                    currency: self.currency(),
                    amount: self.amount_due,
                    at,
                }])
            }
            (Some(status @ (Draft | Paid | Void | Uncollectible)), C::MarkUncollectible { .. }) => {
                Err(Self::invalid(status, name))
            }

            (
                Some(status @ (Open | Paid)),
                C::IssueCreditNote {
                    credit_note_id,
                    number,
                    amount,
                    reason,
                    refund,
                    reference,
                    at,
                },
            ) => self.issue_credit_note(
                status,
                credit_note_id,
                number,
                amount,
                reason,
                refund,
                reference,
                at,
            ),
            (Some(status @ (Draft | Void | Uncollectible)), C::IssueCreditNote { .. }) => {
                Err(Self::invalid(status, name))
            }
        }
    }

    /// Whether a payment with this reference and amount was recorded: a
    /// source's retried notice. The amount compared is what was received,
    /// credited excess included.
    fn payment_repeats(&self, reference: &str, amount: Decimal) -> bool {
        let amount = round_to_minor(amount, self.currency());
        self.payments
            .iter()
            .any(|p| p.reference == reference && p.amount + p.credited == amount)
    }

    /// Checks a money amount: positive, at the currency's minor unit, bounded.
    fn check_amount(&self, field: &str, amount: Decimal) -> Result<Decimal, DomainError> {
        let currency = self.currency();
        if amount <= Decimal::ZERO {
            return Err(DomainError::validation(field, "must be greater than 0"));
        }
        if amount > MAX_AMOUNT {
            return Err(DomainError::validation(
                field,
                format!("must be at most {MAX_AMOUNT}"),
            ));
        }
        if amount.normalize().scale() > currency.minor_units() {
            return Err(DomainError::validation(
                field,
                format!(
                    "{currency} allows at most {} decimal places",
                    currency.minor_units()
                ),
            ));
        }
        Ok(round_to_minor(amount, currency))
    }

    #[allow(clippy::too_many_arguments)]
    fn issue_credit_note(
        &self,
        status: InvoiceStatus,
        credit_note_id: String,
        number: u64,
        amount: Decimal,
        reason: CreditReason,
        refund: bool,
        reference: Option<String>,
        at: DateTime<Utc>,
    ) -> Result<Vec<InvoiceEvent>, DomainError> {
        validate_id("credit_note_id", &credit_note_id)?;
        if number == 0 {
            return Err(DomainError::validation("number", "must be at least 1"));
        }
        if let Some(reference) = &reference {
            validate_text("reference", reference)?;
            // A source's retried refund notice is recorded once.
            if let Some(earlier) = self
                .credit_notes
                .iter()
                .find(|n| n.reference.as_deref() == Some(reference))
            {
                if earlier.amount == round_to_minor(amount, self.currency()) {
                    return Ok(vec![]);
                }
                return Err(DomainError::validation(
                    "reference",
                    format!(
                        "a credit note with this reference was issued for {}",
                        earlier.amount
                    ),
                ));
            }
        }
        let amount = self.check_amount("amount", amount)?;
        let currency = self.currency();
        let creditable = round_to_minor(self.total - self.amount_credited, currency);
        if amount > creditable {
            return Err(DomainError::validation(
                "amount",
                format!("credit notes must not exceed the total; at most {creditable} is left"),
            ));
        }
        if self.credit_notes.len() >= MAX_CREDIT_NOTES {
            return Err(DomainError::validation(
                "credit_notes",
                format!("an invoice takes at most {MAX_CREDIT_NOTES} credit notes"),
            ));
        }
        let zero = round_to_minor(Decimal::ZERO, currency);
        let (to_amount_due, to_credit, refunded) = if refund {
            let refundable = round_to_minor(self.amount_paid - self.amount_refunded, currency);
            if amount > refundable {
                return Err(DomainError::validation(
                    "amount",
                    format!("a refund pays back money received; at most {refundable} is left"),
                ));
            }
            (zero, zero, amount)
        } else {
            let to_due = match status {
                InvoiceStatus::Open => amount.min(self.amount_due),
                _ => zero,
            };
            (to_due, round_to_minor(amount - to_due, currency), zero)
        };
        let amount_due = round_to_minor(self.amount_due - to_amount_due, currency);
        let mut events = vec![InvoiceEvent::CreditNoteIssued {
            credit_note: CreditNote {
                credit_note_id,
                number: format_credit_note_number(number),
                amount,
                reason,
                refund,
                to_amount_due,
                to_credit,
                refunded,
                reference,
                issued_at: at,
            },
            customer_id: self.customer_id.clone(),
            currency,
            amount_credited: round_to_minor(self.amount_credited + amount, currency),
            amount_refunded: round_to_minor(self.amount_refunded + refunded, currency),
            amount_due,
        }];
        if status == InvoiceStatus::Open && amount_due.is_zero() {
            events.push(InvoiceEvent::InvoicePaid {
                customer_id: self.customer_id.clone(),
                subscription_id: self.subscription_id.clone(),
                paid_at: at,
            });
        }
        Ok(events)
    }

    #[allow(clippy::too_many_arguments)]
    fn create(
        invoice_id: String,
        customer_id: String,
        currency: Currency,
        subscription_id: Option<String>,
        billing_period: Option<Period>,
        due_days: Option<u32>,
        lines: Vec<NewLine>,
        at: DateTime<Utc>,
    ) -> Result<Vec<InvoiceEvent>, DomainError> {
        validate_id("invoice_id", &invoice_id)?;
        validate_text("customer_id", &customer_id)?;
        if let Some(sub) = &subscription_id {
            validate_id("subscription_id", sub)?;
        }
        let due_days = due_days.unwrap_or(DEFAULT_DUE_DAYS);
        if due_days > MAX_DUE_DAYS {
            return Err(DomainError::validation(
                "due_days",
                format!("must be 0 to {MAX_DUE_DAYS}"),
            ));
        }
        if lines.len() > MAX_LINES {
            return Err(DomainError::validation(
                "lines",
                format!("an invoice has at most {MAX_LINES} lines"),
            ));
        }
        let mut events = vec![InvoiceEvent::InvoiceCreated {
            invoice_id,
            customer_id,
            currency,
            subscription_id,
            billing_period,
            due_days,
            created_at: at,
        }];
        let mut priced: Vec<InvoiceLine> = Vec::with_capacity(lines.len());
        for (i, line) in lines.iter().enumerate() {
            let line = price_line(line, currency, i as u32 + 1, Some(i))?;
            check_discount(&priced, &line, &format!("lines[{i}].kind"))?;
            priced.push(line.clone());
            events.push(InvoiceEvent::LineAdded { line });
        }
        Ok(events)
    }

    fn issue(
        &self,
        number: u64,
        customer: Option<CustomerDetails>,
        available_credit: Decimal,
        taxes: &TaxSources,
        at: DateTime<Utc>,
    ) -> Result<Vec<InvoiceEvent>, DomainError> {
        if number == 0 {
            return Err(DomainError::validation("number", "must be at least 1"));
        }
        let currency = self.currency();
        let zero = round_to_minor(Decimal::ZERO, currency);
        let (subtotal, discount) = Self::subtotal_and_discount(&self.lines, currency);
        // Rounded per line and rate; the totals are sums of those.
        let line_taxes: Vec<LineTaxes> = self
            .lines
            .iter()
            .map(|l| LineTaxes {
                line: l.number,
                tax_amounts: taxes.line_taxes(&l.tax_rate_ids, l.amount, currency),
            })
            .filter(|t| !t.tax_amounts.is_empty())
            .collect();
        let all = line_taxes.iter().flat_map(|t| &t.tax_amounts);
        let tax = round_to_minor(all.clone().map(|t| t.amount).sum(), currency);
        let exclusive: Decimal = all.filter(|t| !t.inclusive).map(|t| t.amount).sum();
        let total = round_to_minor(subtotal - discount + exclusive, currency);
        let before_credit = total.max(zero);
        // Credit never makes the amount due negative.
        let applied_credit =
            round_to_minor(available_credit.max(zero).min(before_credit), currency);
        let amount_due = round_to_minor(before_credit - applied_credit, currency);
        let due_at = at + Duration::days(i64::from(self.due_days));
        let mut events = vec![InvoiceEvent::InvoiceIssued {
            number: format_number(number),
            sequence: number,
            customer_id: self.customer_id.clone(),
            currency: self.currency(),
            subtotal,
            discount,
            tax,
            line_taxes,
            total,
            applied_credit,
            amount_due,
            issued_at: at,
            due_at,
            customer_details: customer.map(Box::new),
        }];
        // Nothing to collect (a zero or credit invoice): settled on issue.
        if amount_due.is_zero() {
            events.push(InvoiceEvent::InvoicePaid {
                customer_id: self.customer_id.clone(),
                subscription_id: self.subscription_id.clone(),
                paid_at: at,
            });
        }
        Ok(events)
    }

    fn record_payment(
        &self,
        payment_id: String,
        amount: Decimal,
        reference: String,
        captured_at: DateTime<Utc>,
        excess_to_credit: bool,
        at: DateTime<Utc>,
    ) -> Result<Vec<InvoiceEvent>, DomainError> {
        validate_id("payment_id", &payment_id)?;
        validate_text("reference", &reference)?;
        crate::time::check_within(
            "captured_at",
            captured_at,
            at - Duration::days(MAX_CAPTURE_AGE_DAYS),
            at + crate::time::CLOCK_SKEW,
            &format!("no more than {MAX_CAPTURE_AGE_DAYS} days before now and not in the future"),
        )?;
        let currency = self.currency();
        let received = self.check_amount("amount", amount)?;
        if let Some(earlier) = self.payments.iter().find(|p| p.reference == reference) {
            if earlier.amount + earlier.credited == received {
                return Ok(vec![]);
            }
            return Err(DomainError::validation(
                "reference",
                format!(
                    "a payment with this reference was recorded for {}",
                    earlier.amount + earlier.credited
                ),
            ));
        }
        let (amount, credited) = if excess_to_credit && received > self.amount_due {
            (
                self.amount_due,
                round_to_minor(received - self.amount_due, currency),
            )
        } else {
            (received, round_to_minor(Decimal::ZERO, currency))
        };
        if amount > self.amount_due {
            return Err(DomainError::validation(
                "amount",
                format!("must not exceed the amount due, {}", self.amount_due),
            ));
        }
        if self.payments.len() >= MAX_PAYMENTS {
            return Err(DomainError::validation(
                "payments",
                format!("an invoice takes at most {MAX_PAYMENTS} payments"),
            ));
        }
        let amount_paid = round_to_minor(self.amount_paid + amount, currency);
        let amount_due = round_to_minor(self.amount_due - amount, currency);
        let mut events = vec![InvoiceEvent::PaymentRecorded {
            payment: Payment {
                payment_id,
                amount,
                credited,
                reference,
                captured_at,
                recorded_at: at,
            },
            customer_id: self.customer_id.clone(),
            currency,
            amount_paid,
            amount_due,
            credited,
        }];
        if amount_due.is_zero() {
            events.push(InvoiceEvent::InvoicePaid {
                customer_id: self.customer_id.clone(),
                subscription_id: self.subscription_id.clone(),
                paid_at: at,
            });
        }
        Ok(events)
    }

    fn expect_status(&self, allowed: &[InvoiceStatus], event: &InvoiceEvent) {
        assert!(
            self.status.is_some_and(|status| allowed.contains(&status)),
            "{} on an invoice in status {:?}",
            event.name(),
            self.status
        );
    }

    /// Applies an event. Events come from `decide`, so an impossible one is a bug.
    pub fn evolve(&mut self, event: &InvoiceEvent) {
        use InvoiceStatus::{Draft, Open, Paid, Uncollectible, Void};
        match event {
            InvoiceEvent::InvoiceCreated {
                invoice_id,
                customer_id,
                currency,
                subscription_id,
                billing_period,
                due_days,
                created_at,
            } => {
                assert!(self.status.is_none(), "InvoiceCreated twice");
                self.id = Some(invoice_id.clone());
                self.customer_id = customer_id.clone();
                self.currency = Some(*currency);
                self.subscription_id = subscription_id.clone();
                self.billing_period = *billing_period;
                self.due_days = *due_days;
                self.status = Some(Draft);
                self.created_at = Some(*created_at);
                let zero = round_to_minor(Decimal::ZERO, *currency);
                self.subtotal = zero;
                self.discount = zero;
                self.tax = zero;
                self.total = zero;
                self.applied_credit = zero;
                self.amount_paid = zero;
                self.amount_credited = zero;
                self.amount_refunded = zero;
                self.amount_due = zero;
            }
            InvoiceEvent::LineAdded { line } => {
                self.expect_status(&[Draft], event);
                self.lines.push(line.clone());
                // A draft shows its running total; issuing fixes it.
                (self.subtotal, self.discount) =
                    Self::subtotal_and_discount(&self.lines, self.currency());
                self.total = self.lines_total();
                self.amount_due = self
                    .total
                    .max(round_to_minor(Decimal::ZERO, self.currency()));
            }
            InvoiceEvent::InvoiceIssued {
                number,
                subtotal,
                discount,
                tax,
                line_taxes,
                total,
                applied_credit,
                amount_due,
                issued_at,
                due_at,
                customer_details,
                ..
            } => {
                self.expect_status(&[Draft], event);
                self.status = Some(Open);
                self.customer_details = customer_details.as_deref().cloned();
                self.number = Some(number.clone());
                self.subtotal = *subtotal;
                self.discount = round_to_minor(*discount, self.currency());
                self.tax = round_to_minor(*tax, self.currency());
                for taxed in line_taxes {
                    if let Some(line) = self.lines.iter_mut().find(|l| l.number == taxed.line) {
                        line.tax_amounts = taxed.tax_amounts.clone();
                    }
                }
                self.total = *total;
                self.applied_credit = round_to_minor(*applied_credit, self.currency());
                self.amount_due = *amount_due;
                self.issued_at = Some(*issued_at);
                self.due_at = Some(*due_at);
            }
            InvoiceEvent::PaymentRecorded {
                payment,
                amount_paid,
                amount_due,
                ..
            } => {
                self.expect_status(&[Open], event);
                self.payments.push(payment.clone());
                self.amount_paid = *amount_paid;
                self.amount_due = *amount_due;
            }
            InvoiceEvent::CreditNoteIssued {
                credit_note,
                amount_credited,
                amount_refunded,
                amount_due,
                ..
            } => {
                self.expect_status(&[Open, Paid], event);
                self.credit_notes.push(credit_note.clone());
                self.amount_credited = *amount_credited;
                self.amount_refunded = *amount_refunded;
                self.amount_due = *amount_due;
            }
            InvoiceEvent::InvoicePaid { paid_at, .. } => {
                self.expect_status(&[Open], event);
                self.status = Some(Paid);
                self.paid_at = Some(*paid_at);
            }
            InvoiceEvent::InvoiceVoided {
                reason, voided_at, ..
            } => {
                self.expect_status(&[Open], event);
                self.status = Some(Void);
                self.voided_at = Some(*voided_at);
                self.void_reason = Some(reason.clone());
                self.amount_due = round_to_minor(Decimal::ZERO, self.currency());
            }
            InvoiceEvent::InvoiceMarkedUncollectible { at, .. } => {
                self.expect_status(&[Open], event);
                self.status = Some(Uncollectible);
                self.uncollectible_at = Some(*at);
            }
        }
    }
}

crate::cqrs_adapter!(Invoice, Invoice, InvoiceCommand, InvoiceEvent);

/// The tenant's billing ledger: the invoice number counter, the credit note
/// number counter and each customer's credit per currency, one stream per
/// tenant ([`NUMBERING_ID`]). Its events are appended in the same transaction
/// as the invoice event that uses the number or moves the credit, so numbers
/// are unique and gapless and credit is applied once (ADR 0005, ADR 0010).
#[derive(Default, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct InvoiceNumbering {
    /// The last number handed out (0 before the first).
    pub last: u64,
    /// The last credit note number handed out (0 before the first).
    #[serde(default)]
    pub last_credit_note: u64,
    /// Each customer's credit (money the customer has with the tenant) per
    /// currency; a customer without credit has no entry.
    #[serde(default)]
    pub credit: std::collections::BTreeMap<String, std::collections::BTreeMap<Currency, Decimal>>,
}

/// Why a customer's credit changed: where granted credit came from, or the
/// invoice that applied it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum CreditSource {
    /// Applied to an invoice at its issue (the change is negative).
    AppliedToInvoice { invoice_id: String },
    /// An invoice issued with a negative total.
    NegativeInvoice { invoice_id: String },
    /// A payment beyond an invoice's amount due.
    Overpayment {
        invoice_id: String,
        reference: String,
    },
    /// A credit note's part that became credit.
    CreditNote {
        invoice_id: String,
        credit_note_id: String,
    },
    /// A payment that could not be applied to the invoice it named (unknown,
    /// in another currency, or no longer open): all of it is credit.
    UnappliedPayment {
        /// The invoice the payment named, if it named one.
        invoice_id: Option<String>,
        reference: String,
        /// Why it was not applied, for people.
        why: String,
    },
    /// A provider refunded a payment whose money was credit (the change is
    /// negative).
    RefundedPayment { reference: String },
}

impl CreditSource {
    /// The snake_case kind, as stored and published.
    pub fn kind(&self) -> &'static str {
        match self {
            CreditSource::AppliedToInvoice { .. } => "applied_to_invoice",
            CreditSource::NegativeInvoice { .. } => "negative_invoice",
            CreditSource::Overpayment { .. } => "overpayment",
            CreditSource::CreditNote { .. } => "credit_note",
            CreditSource::UnappliedPayment { .. } => "unapplied_payment",
            CreditSource::RefundedPayment { .. } => "refunded_payment",
        }
    }

    /// The invoice the change concerns, if any.
    pub fn invoice_id(&self) -> Option<&str> {
        match self {
            CreditSource::AppliedToInvoice { invoice_id }
            | CreditSource::NegativeInvoice { invoice_id }
            | CreditSource::Overpayment { invoice_id, .. }
            | CreditSource::CreditNote { invoice_id, .. } => Some(invoice_id),
            CreditSource::UnappliedPayment { invoice_id, .. } => invoice_id.as_deref(),
            CreditSource::RefundedPayment { .. } => None,
        }
    }

    pub const KINDS: [&'static str; 6] = [
        "applied_to_invoice",
        "negative_invoice",
        "overpayment",
        "credit_note",
        "unapplied_payment",
        "refunded_payment",
    ];
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum NumberingCommand {
    /// Takes the next number for `invoice_id`.
    Assign {
        invoice_id: String,
        at: DateTime<Utc>,
    },
    /// Takes the next credit note number for a credit note on `invoice_id`.
    AssignCreditNote {
        invoice_id: String,
        credit_note_id: String,
        at: DateTime<Utc>,
    },
    /// Adds to a customer's credit.
    GrantCredit {
        customer_id: String,
        currency: Currency,
        amount: Decimal,
        source: CreditSource,
        at: DateTime<Utc>,
    },
    /// Pays credit back to the customer (a provider refunded a payment that
    /// had become credit); at most the credit the customer has.
    RefundCredit {
        customer_id: String,
        currency: Currency,
        amount: Decimal,
        reference: String,
        at: DateTime<Utc>,
    },
    /// Takes from a customer's credit for an invoice being issued; at most
    /// the credit the customer has.
    ApplyCredit {
        customer_id: String,
        currency: Currency,
        amount: Decimal,
        invoice_id: String,
        at: DateTime<Utc>,
    },
}

impl NumberingCommand {
    pub fn name(&self) -> &'static str {
        match self {
            NumberingCommand::Assign { .. } => "assign",
            NumberingCommand::AssignCreditNote { .. } => "assign_credit_note",
            NumberingCommand::GrantCredit { .. } => "grant_credit",
            NumberingCommand::ApplyCredit { .. } => "apply_credit",
            NumberingCommand::RefundCredit { .. } => "refund_credit",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum NumberingEvent {
    InvoiceNumberAssigned {
        invoice_id: String,
        sequence: u64,
        number: String,
        at: DateTime<Utc>,
    },
    CreditNoteNumberAssigned {
        invoice_id: String,
        credit_note_id: String,
        sequence: u64,
        number: String,
        at: DateTime<Utc>,
    },
    /// A customer's credit in one currency changed by `amount` (negative
    /// when applied to an invoice) to `balance`.
    CustomerCreditChanged {
        customer_id: String,
        currency: Currency,
        #[serde(with = "rust_decimal::serde::str")]
        amount: Decimal,
        /// The customer's credit after it.
        #[serde(with = "rust_decimal::serde::str")]
        balance: Decimal,
        source: CreditSource,
        at: DateTime<Utc>,
    },
}

impl NumberingEvent {
    pub fn name(&self) -> &'static str {
        match self {
            NumberingEvent::InvoiceNumberAssigned { .. } => "InvoiceNumberAssigned",
            NumberingEvent::CreditNoteNumberAssigned { .. } => "CreditNoteNumberAssigned",
            NumberingEvent::CustomerCreditChanged { .. } => "CustomerCreditChanged",
        }
    }
}

impl InvoiceNumbering {
    /// The number the next assignment takes.
    pub fn next(&self) -> u64 {
        self.last + 1
    }

    /// The number the next credit note takes.
    pub fn next_credit_note(&self) -> u64 {
        self.last_credit_note + 1
    }

    /// A customer's credit in a currency (zero when none).
    pub fn credit_of(&self, customer_id: &str, currency: Currency) -> Decimal {
        self.credit
            .get(customer_id)
            .and_then(|c| c.get(&currency))
            .copied()
            .unwrap_or_else(|| round_to_minor(Decimal::ZERO, currency))
    }

    fn check_credit_amount(amount: Decimal, currency: Currency) -> Result<Decimal, DomainError> {
        if amount <= Decimal::ZERO || amount > MAX_AMOUNT {
            return Err(DomainError::validation(
                "amount",
                format!("must be greater than 0 and at most {MAX_AMOUNT}"),
            ));
        }
        if amount.normalize().scale() > currency.minor_units() {
            return Err(DomainError::validation(
                "amount",
                format!(
                    "{currency} allows at most {} decimal places",
                    currency.minor_units()
                ),
            ));
        }
        Ok(round_to_minor(amount, currency))
    }

    pub fn decide(&self, command: NumberingCommand) -> Result<Vec<NumberingEvent>, DomainError> {
        match command {
            NumberingCommand::Assign { invoice_id, at } => {
                validate_id("invoice_id", &invoice_id)?;
                let sequence = self.next();
                Ok(vec![NumberingEvent::InvoiceNumberAssigned {
                    invoice_id,
                    sequence,
                    number: format_number(sequence),
                    at,
                }])
            }
            NumberingCommand::AssignCreditNote {
                invoice_id,
                credit_note_id,
                at,
            } => {
                validate_id("invoice_id", &invoice_id)?;
                validate_id("credit_note_id", &credit_note_id)?;
                let sequence = self.next_credit_note();
                Ok(vec![NumberingEvent::CreditNoteNumberAssigned {
                    invoice_id,
                    credit_note_id,
                    sequence,
                    number: format_credit_note_number(sequence),
                    at,
                }])
            }
            NumberingCommand::GrantCredit {
                customer_id,
                currency,
                amount,
                source,
                at,
            } => {
                validate_text("customer_id", &customer_id)?;
                let amount = Self::check_credit_amount(amount, currency)?;
                let balance =
                    round_to_minor(self.credit_of(&customer_id, currency) + amount, currency);
                if balance > MAX_AMOUNT {
                    return Err(DomainError::validation(
                        "amount",
                        format!("a customer's credit is at most {MAX_AMOUNT}"),
                    ));
                }
                if matches!(
                    source,
                    CreditSource::AppliedToInvoice { .. } | CreditSource::RefundedPayment { .. }
                ) {
                    return Err(DomainError::validation(
                        "source",
                        "applying or refunding credit is not a grant",
                    ));
                }
                Ok(vec![NumberingEvent::CustomerCreditChanged {
                    customer_id,
                    currency,
                    amount,
                    balance,
                    source,
                    at,
                }])
            }
            NumberingCommand::RefundCredit {
                customer_id,
                currency,
                amount,
                reference,
                at,
            } => {
                validate_text("customer_id", &customer_id)?;
                let amount = Self::check_credit_amount(amount, currency)?;
                let available = self.credit_of(&customer_id, currency);
                if amount > available {
                    return Err(DomainError::validation(
                        "amount",
                        format!("the customer has {available} {currency} of credit"),
                    ));
                }
                Ok(vec![NumberingEvent::CustomerCreditChanged {
                    customer_id,
                    currency,
                    amount: -amount,
                    balance: round_to_minor(available - amount, currency),
                    source: CreditSource::RefundedPayment { reference },
                    at,
                }])
            }
            NumberingCommand::ApplyCredit {
                customer_id,
                currency,
                amount,
                invoice_id,
                at,
            } => {
                validate_text("customer_id", &customer_id)?;
                let amount = Self::check_credit_amount(amount, currency)?;
                let available = self.credit_of(&customer_id, currency);
                if amount > available {
                    return Err(DomainError::validation(
                        "amount",
                        format!("the customer has {available} {currency} of credit"),
                    ));
                }
                validate_id("invoice_id", &invoice_id)?;
                Ok(vec![NumberingEvent::CustomerCreditChanged {
                    customer_id,
                    currency,
                    amount: -amount,
                    balance: round_to_minor(available - amount, currency),
                    source: CreditSource::AppliedToInvoice { invoice_id },
                    at,
                }])
            }
        }
    }

    fn set_credit(&mut self, customer_id: &str, currency: Currency, balance: Decimal) {
        if balance.is_zero() {
            if let Some(by_currency) = self.credit.get_mut(customer_id) {
                by_currency.remove(&currency);
                if by_currency.is_empty() {
                    self.credit.remove(customer_id);
                }
            }
        } else {
            self.credit
                .entry(customer_id.to_owned())
                .or_default()
                .insert(currency, balance);
        }
    }

    pub fn evolve(&mut self, event: &NumberingEvent) {
        match event {
            NumberingEvent::InvoiceNumberAssigned { sequence, .. } => {
                assert_eq!(*sequence, self.last + 1, "invoice numbers skip");
                self.last = *sequence;
            }
            NumberingEvent::CreditNoteNumberAssigned { sequence, .. } => {
                assert_eq!(
                    *sequence,
                    self.last_credit_note + 1,
                    "credit note numbers skip"
                );
                self.last_credit_note = *sequence;
            }
            NumberingEvent::CustomerCreditChanged {
                customer_id,
                currency,
                balance,
                ..
            } => {
                assert!(*balance >= Decimal::ZERO, "customer credit below zero");
                self.set_credit(customer_id, *currency, *balance);
            }
        }
    }
}

crate::cqrs_adapter!(
    InvoiceNumbering,
    InvoiceNumbering,
    NumberingCommand,
    NumberingEvent
);
