//! Request and response shapes of the invoice and balance endpoints, and their
//! mapping from domain and read-model types.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use tally_aggregates::invoice::{Invoice, LineKind, NewLine};
use utoipa::ToSchema;

use crate::dto::usage::QuantityInput;
use crate::dto::PeriodDto;
use crate::error::ApiError;

fn period_dto(p: &tally_aggregates::Period) -> PeriodDto {
    PeriodDto {
        start: p.start,
        end: p.end,
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LineRequest {
    pub description: String,
    /// Non-negative decimal, as a string ("1.5") or an integer.
    pub quantity: QuantityInput,
    /// Decimal string; negative for a credit or discount line.
    #[schema(pattern = "^\\s*[-+]?[0-9_.]+\\s*$")]
    pub unit_price: String,
    /// recurring | usage | proration | discount | manual (default). A
    /// discount line is negative, one per invoice, at most the recurring,
    /// usage and proration lines before it.
    #[schema(value_type = Option<String>, pattern = "^(recurring|usage|proration|discount|manual)$")]
    pub kind: Option<LineKind>,
    /// The line's own tax rates (`txr_…`, active), before the
    /// subscription's, the plan's and the customer's.
    pub tax_rate_ids: Option<Vec<String>>,
}

impl LineRequest {
    pub(crate) fn into_line(self, prefix: &str) -> Result<NewLine, ApiError> {
        let field = |name: &str| format!("{prefix}{name}");
        let unit_price: Decimal = self.unit_price.trim().parse().map_err(|_| {
            ApiError::field(
                &field("unit_price"),
                "must be a decimal string, e.g. \"12.50\"",
            )
        })?;
        Ok(NewLine {
            description: self.description,
            quantity: self.quantity.non_negative(&field("quantity"))?,
            unit_price,
            kind: self.kind.unwrap_or_default(),
            period: None,
            tax_rate_ids: self.tax_rate_ids.unwrap_or_default(),
        })
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateInvoiceRequest {
    pub customer_id: String,
    /// ISO 4217 code, e.g. "EUR".
    #[schema(
        pattern = "^(AUD|BHD|BRL|CAD|CHF|CLP|CNY|CZK|DKK|EUR|GBP|HKD|HUF|INR|ISK|JOD|JPY|KRW|KWD|MXN|NOK|NZD|PLN|SEK|SGD|TND|USD|ZAR)$"
    )]
    pub currency: String,
    pub subscription_id: Option<String>,
    /// Days from issue to due date (0–365, default 30).
    pub due_days: Option<u32>,
    pub lines: Option<Vec<LineRequest>>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PaymentRequest {
    /// Decimal string, more than 0 and at most the amount due.
    #[schema(pattern = "^\\s*[-+]?[0-9_.]+\\s*$")]
    pub amount: String,
    /// The payment's reference at its source (bank transfer id, …).
    pub reference: String,
    /// RFC 3339; defaults to now.
    pub captured_at: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreditNoteRequest {
    /// Decimal string, more than 0; with the invoice's other credit notes at
    /// most its total; with `refund`, at most what was paid and not refunded.
    #[schema(pattern = "^\\s*[-+]?[0-9_.]+\\s*$")]
    pub amount: String,
    /// duplicate | fraudulent | order_change | product_unsatisfactory | refund
    #[schema(pattern = "^(duplicate|fraudulent|order_change|product_unsatisfactory|refund)$")]
    pub reason: String,
    /// Pays the amount back instead of crediting it (default false).
    pub refund: Option<bool>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VoidRequest {
    pub reason: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LineDto {
    pub number: u32,
    pub description: String,
    pub quantity: String,
    pub unit_price: String,
    pub kind: String,
    pub period: Option<PeriodDto>,
    pub amount: String,
    /// The line's own tax rates.
    pub tax_rate_ids: Vec<String>,
    /// Each rate's tax on the line, fixed at issue (empty before).
    pub tax_amounts: Vec<TaxAmountDto>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TaxAmountDto {
    pub tax_rate_id: String,
    pub percentage: String,
    pub inclusive: bool,
    pub amount: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PaymentDto {
    pub id: String,
    pub amount: String,
    pub reference: String,
    pub captured_at: DateTime<Utc>,
    pub recorded_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CreditNoteDto {
    pub id: String,
    /// `CN-000001`, gapless per tenant.
    pub number: String,
    pub amount: String,
    /// duplicate | fraudulent | order_change | product_unsatisfactory | refund
    pub reason: String,
    pub refund: bool,
    /// The part that lowered the amount due.
    pub to_amount_due: String,
    /// The part that became customer credit.
    pub to_credit: String,
    /// The part paid back.
    pub refunded: String,
    /// The source's reference (a payment provider's refund), if any.
    pub reference: Option<String>,
    pub issued_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct InvoiceDto {
    pub id: String,
    /// `INV-000042` once issued.
    pub number: Option<String>,
    pub customer_id: String,
    pub subscription_id: Option<String>,
    /// draft | open | paid | void | uncollectible
    pub status: String,
    pub currency: String,
    /// For a renewal invoice: the closed period it rates.
    pub billing_period: Option<PeriodDto>,
    pub lines: Vec<LineDto>,
    /// Every line but the discount.
    pub subtotal: String,
    /// What the discount line takes off, positive.
    pub discount: String,
    /// Every line's tax, inclusive and exclusive.
    pub tax: String,
    /// `subtotal − discount + exclusive tax`.
    pub total: String,
    /// Customer credit applied when it was issued.
    pub applied_credit: String,
    pub amount_paid: String,
    /// The sum of its credit notes (refunds included).
    pub amount_credited: String,
    /// The part of its credit notes paid back.
    pub amount_refunded: String,
    pub amount_due: String,
    pub payments: Vec<PaymentDto>,
    pub credit_notes: Vec<CreditNoteDto>,
    pub due_days: u32,
    pub created_at: Option<DateTime<Utc>>,
    pub issued_at: Option<DateTime<Utc>>,
    pub due_at: Option<DateTime<Utc>>,
    pub paid_at: Option<DateTime<Utc>>,
    pub voided_at: Option<DateTime<Utc>>,
    pub void_reason: Option<String>,
    pub uncollectible_at: Option<DateTime<Utc>>,
    /// The customer's name, email and address as they were when the invoice
    /// was issued; null before issue and for a customer never put.
    pub customer_details: Option<crate::dto::customers::CustomerDetailsDto>,
    pub version: i64,
}

impl InvoiceDto {
    pub fn from_state(id: &str, s: &Invoice, version: i64) -> Option<InvoiceDto> {
        let status = s.status?;
        let currency = s.currency?;
        Some(InvoiceDto {
            id: id.to_string(),
            number: s.number.clone(),
            customer_id: s.customer_id.clone(),
            subscription_id: s.subscription_id.clone(),
            status: status.as_str().to_string(),
            currency: currency.code().to_string(),
            billing_period: s.billing_period.as_ref().map(period_dto),
            lines: s
                .lines
                .iter()
                .map(|l| LineDto {
                    number: l.number,
                    description: l.description.clone(),
                    quantity: l.quantity.normalize().to_string(),
                    unit_price: l.unit_price.normalize().to_string(),
                    kind: serde_json::to_value(l.kind)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default(),
                    period: l.period.as_ref().map(period_dto),
                    amount: l.amount.to_string(),
                    tax_rate_ids: l.tax_rate_ids.clone(),
                    tax_amounts: l
                        .tax_amounts
                        .iter()
                        .map(|t| TaxAmountDto {
                            tax_rate_id: t.tax_rate_id.clone(),
                            percentage: t.percentage.normalize().to_string(),
                            inclusive: t.inclusive,
                            amount: t.amount.to_string(),
                        })
                        .collect(),
                })
                .collect(),
            subtotal: s.subtotal.to_string(),
            discount: tally_aggregates::money::round_to_minor(s.discount, currency).to_string(),
            tax: tally_aggregates::money::round_to_minor(s.tax, currency).to_string(),
            total: s.total.to_string(),
            applied_credit: s.applied_credit.to_string(),
            amount_paid: s.amount_paid.to_string(),
            amount_credited: s.amount_credited.to_string(),
            amount_refunded: s.amount_refunded.to_string(),
            amount_due: s.amount_due.to_string(),
            payments: s
                .payments
                .iter()
                .map(|p| PaymentDto {
                    id: p.payment_id.clone(),
                    amount: p.amount.to_string(),
                    reference: p.reference.clone(),
                    captured_at: p.captured_at,
                    recorded_at: p.recorded_at,
                })
                .collect(),
            credit_notes: s
                .credit_notes
                .iter()
                .map(|n| CreditNoteDto {
                    id: n.credit_note_id.clone(),
                    number: n.number.clone(),
                    amount: n.amount.to_string(),
                    reason: n.reason.as_str().to_string(),
                    refund: n.refund,
                    to_amount_due: n.to_amount_due.to_string(),
                    to_credit: n.to_credit.to_string(),
                    refunded: n.refunded.to_string(),
                    reference: n.reference.clone(),
                    issued_at: n.issued_at,
                })
                .collect(),
            due_days: s.due_days,
            created_at: s.created_at,
            issued_at: s.issued_at,
            due_at: s.due_at,
            paid_at: s.paid_at,
            voided_at: s.voided_at,
            void_reason: s.void_reason.clone(),
            uncollectible_at: s.uncollectible_at,
            customer_details: s
                .customer_details
                .as_ref()
                .map(crate::dto::customers::CustomerDetailsDto::from_details),
            version,
        })
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct InvoiceListParams {
    pub status: Option<String>,
    pub customer_id: Option<String>,
    pub subscription_id: Option<String>,
    pub limit: Option<String>,
    pub cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BalanceDto {
    pub currency: String,
    /// Totals of issued invoices.
    pub invoiced: String,
    pub paid: String,
    pub voided: String,
    /// Amounts due written off as uncollectible.
    pub written_off: String,
    /// The sum of credit notes (refunds included).
    pub credited: String,
    /// The part of credit notes paid back.
    pub refunded: String,
    /// Money the customer has with us (unapplied payments, overpayments,
    /// credit notes to balance, negative invoices), applied to their next
    /// invoices in this currency when those are issued.
    pub credit: String,
    /// What issued invoices still ask for.
    pub outstanding: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CustomerBalanceDto {
    pub customer_id: String,
    /// One entry per currency the customer was invoiced in.
    pub data: Vec<BalanceDto>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct JournalEntryDto {
    pub event_id: String,
    pub position: i64,
    pub invoice_id: String,
    pub currency: String,
    /// receivable | revenue | cash | bad_debt | customer_credit | credit_notes
    pub account: String,
    pub debit: String,
    pub credit: String,
    pub recorded_at: String,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct JournalParams {
    pub limit: Option<String>,
    pub cursor: Option<String>,
}
