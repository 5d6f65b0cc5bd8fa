//! The invoice write side beyond a plain command: issuing (the invoice and
//! the tenant's number in one transaction, with a copy of the customer's
//! details, applying the customer's credit), credit notes (numbered the same
//! way) and the payment port.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use tally_aggregates::customer::Customer;
use tally_aggregates::invoice::{
    CreditReason, CreditSource, Invoice, InvoiceCommand, InvoiceEvent, InvoiceNumbering,
    NumberingCommand, NumberingEvent, NUMBERING_ID,
};
use tally_aggregates::subscription::Subscription;
use tally_aggregates::tax::{TaxRate, TaxSources};
use tally_aggregates::DomainError;

use crate::dispatch::{CommandError, CommandMeta, Dispatcher, Executed};
use crate::ids::{CreditNoteId, Generate, PaymentId};

/// Issues a draft: takes the tenant's next invoice number and appends the
/// `InvoiceIssued` and the `InvoiceNumberAssigned` together, so numbers are
/// unique and gapless however many invoices are issued at once. Issuers in
/// this process take turns on the numbering stream (`execute_pair`); other
/// processes meet on its sequence and retry. The invoice copies the
/// customer's details as they are when it is issued (none for a customer id
/// that was never put).
pub async fn issue(
    d: &Dispatcher,
    meta: &CommandMeta,
    invoice_id: &str,
    expected_version: Option<i64>,
) -> Result<Executed<Invoice>, CommandError> {
    let (draft, _) = d.load::<Invoice>(&meta.tenant, invoice_id).await?;
    let customer = if draft.customer_id.is_empty() {
        None
    } else {
        d.load::<Customer>(&meta.tenant, &draft.customer_id)
            .await?
            .0
            .details
    };
    let taxes = tax_sources(d, &meta.tenant, &draft, customer.as_ref()).await?;
    let (invoice, _) = d
        .execute_pair::<Invoice, InvoiceNumbering, _>(
            meta,
            invoice_id,
            NUMBERING_ID,
            expected_version,
            |invoice, numbering| {
                // Read in the numbering stream's turn, so numbers follow
                // issue times in this process.
                let at = d.clock().now();
                let available_credit = match invoice.currency {
                    Some(currency) => numbering.credit_of(&invoice.customer_id, currency),
                    None => rust_decimal::Decimal::ZERO,
                };
                let issued = invoice.decide(InvoiceCommand::Issue {
                    number: numbering.next(),
                    customer: customer.clone(),
                    available_credit,
                    taxes: Box::new(taxes.clone()),
                    at,
                })?;
                let mut ledger = numbering.decide(NumberingCommand::Assign {
                    invoice_id: invoice_id.to_string(),
                    at,
                })?;
                for event in &issued {
                    if let InvoiceEvent::InvoiceIssued {
                        customer_id,
                        currency,
                        total,
                        applied_credit,
                        ..
                    } = event
                    {
                        if !applied_credit.is_zero() {
                            ledger.extend(numbering.decide(NumberingCommand::ApplyCredit {
                                customer_id: customer_id.clone(),
                                currency: *currency,
                                amount: *applied_credit,
                                invoice_id: invoice_id.to_string(),
                                at,
                            })?);
                        }
                        // A negative total is owed to the customer.
                        if total.is_sign_negative() && !total.is_zero() {
                            ledger.extend(numbering.decide(NumberingCommand::GrantCredit {
                                customer_id: customer_id.clone(),
                                currency: *currency,
                                amount: -*total,
                                source: CreditSource::NegativeInvoice {
                                    invoice_id: invoice_id.to_string(),
                                },
                                at,
                            })?);
                        }
                    }
                }
                Ok((issued, ledger))
            },
        )
        .await?;
    Ok(invoice)
}

/// What the tax of `draft` is decided from: the tax rates of its
/// subscription, of the plan that subscription is on, and of the customer,
/// and every rate those and the lines name, loaded from their streams.
async fn tax_sources(
    d: &Dispatcher,
    tenant: &str,
    draft: &Invoice,
    customer: Option<&tally_aggregates::CustomerDetails>,
) -> Result<TaxSources, CommandError> {
    let mut sources = TaxSources {
        customer: customer.map(|c| c.tax_rate_ids.clone()).unwrap_or_default(),
        ..TaxSources::default()
    };
    if let Some(sub_id) = &draft.subscription_id {
        let (sub, _) = d.load::<Subscription>(tenant, sub_id).await?;
        sources.subscription = sub.tax_rate_ids.clone();
        sources.plan = sub
            .plan
            .as_ref()
            .map(|p| p.tax_rate_ids.clone())
            .unwrap_or_default();
    }
    let named: BTreeSet<&String> = draft
        .lines
        .iter()
        .flat_map(|l| &l.tax_rate_ids)
        .chain(&sources.subscription)
        .chain(&sources.plan)
        .chain(&sources.customer)
        .collect();
    let mut rates = BTreeMap::new();
    for id in named {
        if let Some(rate) = d.load::<TaxRate>(tenant, id).await?.0.applied() {
            rates.insert(id.clone(), rate);
        }
    }
    sources.rates = rates;
    Ok(sources)
}

/// A payment received for an invoice: what any payment source reports. The
/// manual payment endpoint is one source; a payment provider adapter (card
/// processor webhooks, bank reconciliation) is another that only has to
/// build these and call [`record_payment`].
#[derive(Debug, Clone)]
pub struct PaymentNotice {
    pub invoice_id: String,
    pub amount: Decimal,
    /// The source's own reference; a repeat with the same amount is recorded once.
    pub reference: String,
    /// When the money was captured, by the source's clock; defaults to now.
    pub captured_at: Option<DateTime<Utc>>,
}

/// Records a payment against an open invoice (the payment port): at most
/// the amount due.
pub async fn record_payment(
    d: &Dispatcher,
    meta: &CommandMeta,
    notice: PaymentNotice,
    expected_version: Option<i64>,
) -> Result<Executed<Invoice>, CommandError> {
    let at = d.clock().now();
    let payment_id = PaymentId::generate().into_string();
    d.execute::<Invoice, _>(meta, &notice.invoice_id, expected_version, |invoice| {
        invoice.decide(InvoiceCommand::RecordPayment {
            payment_id: payment_id.clone(),
            amount: notice.amount,
            reference: notice.reference.clone(),
            captured_at: notice.captured_at.unwrap_or(at),
            excess_to_credit: false,
            at,
        })
    })
    .await
}

/// The ledger events that follow an invoice's events: what they move into
/// the customer's credit.
pub fn credit_movements(
    numbering: &InvoiceNumbering,
    invoice_id: &str,
    events: &[InvoiceEvent],
    at: DateTime<Utc>,
) -> Result<Vec<NumberingEvent>, DomainError> {
    let mut ledger = Vec::new();
    let mut state = numbering.clone();
    for event in events {
        let grant = match event {
            InvoiceEvent::PaymentRecorded {
                payment,
                customer_id,
                currency,
                credited,
                ..
            } if !credited.is_zero() => Some((
                customer_id,
                *currency,
                *credited,
                CreditSource::Overpayment {
                    invoice_id: invoice_id.to_string(),
                    reference: payment.reference.clone(),
                },
            )),
            InvoiceEvent::CreditNoteIssued {
                credit_note,
                customer_id,
                currency,
                ..
            } if !credit_note.to_credit.is_zero() => Some((
                customer_id,
                *currency,
                credit_note.to_credit,
                CreditSource::CreditNote {
                    invoice_id: invoice_id.to_string(),
                    credit_note_id: credit_note.credit_note_id.clone(),
                },
            )),
            _ => None,
        };
        if let Some((customer_id, currency, amount, source)) = grant {
            let granted = state.decide(NumberingCommand::GrantCredit {
                customer_id: customer_id.clone(),
                currency,
                amount,
                source,
                at,
            })?;
            for e in &granted {
                state.evolve(e);
            }
            ledger.extend(granted);
        }
    }
    Ok(ledger)
}

/// A credit note as asked for.
#[derive(Debug, Clone)]
pub struct CreditNoteRequest {
    pub invoice_id: String,
    pub amount: rust_decimal::Decimal,
    pub reason: CreditReason,
    pub refund: bool,
    /// The source's reference (a provider's refund id); a repeat is a no-op.
    pub reference: Option<String>,
}

/// Issues a credit note: the invoice's `CreditNoteIssued`, the tenant's next
/// `CN-` number and the credit it grants, in one transaction.
pub async fn issue_credit_note(
    d: &Dispatcher,
    meta: &CommandMeta,
    request: CreditNoteRequest,
    expected_version: Option<i64>,
) -> Result<Executed<Invoice>, CommandError> {
    let credit_note_id = CreditNoteId::generate().into_string();
    let invoice_id = request.invoice_id.clone();
    let (invoice, _) = d
        .execute_pair::<Invoice, InvoiceNumbering, _>(
            meta,
            &invoice_id,
            NUMBERING_ID,
            expected_version,
            |invoice, numbering| {
                let at = d.clock().now();
                let noted = invoice.decide(InvoiceCommand::IssueCreditNote {
                    credit_note_id: credit_note_id.clone(),
                    number: numbering.next_credit_note(),
                    amount: request.amount,
                    reason: request.reason,
                    refund: request.refund,
                    reference: request.reference.clone(),
                    at,
                })?;
                if noted.is_empty() {
                    return Ok((noted, vec![]));
                }
                let mut ledger = numbering.decide(NumberingCommand::AssignCreditNote {
                    invoice_id: invoice_id.clone(),
                    credit_note_id: credit_note_id.clone(),
                    at,
                })?;
                ledger.extend(credit_movements(numbering, &invoice_id, &noted, at)?);
                Ok((noted, ledger))
            },
        )
        .await?;
    Ok(invoice)
}
