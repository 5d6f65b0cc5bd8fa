//! The invoice write side beyond a plain command: issuing (the invoice and
//! the tenant's number in one transaction, with a copy of the customer's
//! details) and the payment port.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use tally_aggregates::customer::Customer;
use tally_aggregates::invoice::{
    Invoice, InvoiceCommand, InvoiceNumbering, NumberingCommand, NUMBERING_ID,
};

use crate::dispatch::{CommandError, CommandMeta, Dispatcher, Executed};
use crate::ids::new_id;

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
                let issued = invoice.decide(InvoiceCommand::Issue {
                    number: numbering.next(),
                    customer: customer.clone(),
                    at,
                })?;
                let assigned = numbering.decide(NumberingCommand::Assign {
                    invoice_id: invoice_id.to_string(),
                    at,
                })?;
                Ok((issued, assigned))
            },
        )
        .await?;
    Ok(invoice)
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

/// Records a payment against an open invoice (the payment port).
pub async fn record_payment(
    d: &Dispatcher,
    meta: &CommandMeta,
    notice: PaymentNotice,
    expected_version: Option<i64>,
) -> Result<Executed<Invoice>, CommandError> {
    let at = d.clock().now();
    let payment_id = new_id("pay");
    d.execute::<Invoice, _>(meta, &notice.invoice_id, expected_version, |invoice| {
        invoice.decide(InvoiceCommand::RecordPayment {
            payment_id: payment_id.clone(),
            amount: notice.amount,
            reference: notice.reference.clone(),
            captured_at: notice.captured_at.unwrap_or(at),
            at,
        })
    })
    .await
}
