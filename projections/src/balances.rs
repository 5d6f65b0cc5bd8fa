//! Customer balances: an accounts-receivable journal in double entry
//! (`rm_journal`) and the balance per customer and currency folded from it
//! (`rm_balances`), keyed by customer id.
//!
//! | event | debit | credit |
//! |---|---|---|
//! | issued, total T > 0 | receivable T | revenue T |
//! | issued, total T < 0 (a credit) | revenue −T | customer_credit −T |
//! | issued with applied credit C | customer_credit C | receivable C |
//! | payment A (of which X beyond the amount due) | cash A − X, cash X | receivable A − X, customer_credit X |
//! | voided (nothing paid), total T | revenue T | receivable T |
//! | uncollectible, amount due D | bad_debt D | receivable D |
//! | credit note: D off the amount due, C to credit, R refunded | credit_notes D, C, R | receivable D, customer_credit C, cash R |
//! | payment not applied to an invoice, A (ledger stream) | cash A | customer_credit A |
//! | a provider's refund R of a payment that became credit (ledger stream) | customer_credit R | cash R |
//!
//! Each movement is two rows (a debit and a credit leg) of the same amount
//! keyed by the event id and the movement's index, so the journal's debits
//! equal its credits after every event, and a replayed event writes nothing
//! twice. Credit applied and granted through the ledger stream
//! (`invoice_numbering`) is journaled from the invoice event it goes with;
//! only a payment that reached no invoice is journaled from the ledger.

use std::str::FromStr;

use async_trait::async_trait;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sqlx::{AnyConnection, Row};
use tally_aggregates::invoice::{CreditSource, InvoiceEvent, NumberingEvent};
use tally_aggregates::{AggregateKind, Currency};

use crate::bulk::{self, Cell};
use crate::db::{Db, DbError};
use crate::log::StoredEvent;
use crate::runtime::{ProjectionError, Projector};
use crate::tables::Tables;
use crate::{Page, MAX_PAGE_LIMIT};

pub const CONSUMER: &str = "balances";

/// The accounts of the journal.
pub mod account {
    pub const RECEIVABLE: &str = "receivable";
    pub const REVENUE: &str = "revenue";
    pub const CASH: &str = "cash";
    pub const BAD_DEBT: &str = "bad_debt";
    pub const CUSTOMER_CREDIT: &str = "customer_credit";
    /// Revenue taken back by credit notes (a contra-revenue account).
    pub const CREDIT_NOTES: &str = "credit_notes";
}

/// A customer's balance in one currency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Balance {
    pub currency: Currency,
    /// Totals of issued invoices (positive totals).
    #[serde(with = "rust_decimal::serde::str")]
    pub invoiced: Decimal,
    /// Money received from the customer, whether or not it reached an invoice.
    #[serde(with = "rust_decimal::serde::str")]
    pub paid: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub voided: Decimal,
    /// Amounts due written off as uncollectible.
    #[serde(with = "rust_decimal::serde::str")]
    pub written_off: Decimal,
    /// The sum of credit notes (refunds included).
    #[serde(default, with = "rust_decimal::serde::str")]
    pub credited: Decimal,
    /// The part of credit notes paid back.
    #[serde(default, with = "rust_decimal::serde::str")]
    pub refunded: Decimal,
    /// Money the customer has with us (negative invoices, unapplied
    /// payments, credit notes to balance), less what later invoices applied.
    #[serde(with = "rust_decimal::serde::str")]
    pub credit: Decimal,
    /// The receivable: what issued invoices still ask for.
    #[serde(with = "rust_decimal::serde::str")]
    pub outstanding: Decimal,
}

impl Balance {
    fn zero(currency: Currency) -> Balance {
        let z = tally_aggregates::money::round_to_minor(Decimal::ZERO, currency);
        Balance {
            currency,
            invoiced: z,
            paid: z,
            voided: z,
            written_off: z,
            credited: z,
            refunded: z,
            credit: z,
            outstanding: z,
        }
    }

    /// Every figure at the currency's scale: a row written before a field
    /// existed, and sums with a zero (`Decimal` may drop the scale of
    /// `0.00 + 0`), print as "0.00".
    fn rescaled(mut self) -> Balance {
        let c = self.currency;
        for v in [
            &mut self.invoiced,
            &mut self.paid,
            &mut self.voided,
            &mut self.written_off,
            &mut self.credited,
            &mut self.refunded,
            &mut self.credit,
            &mut self.outstanding,
        ] {
            *v = tally_aggregates::money::round_to_minor(*v, c);
        }
        self
    }
}

/// One row of the journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JournalEntry {
    pub event_id: String,
    pub position: i64,
    pub invoice_id: String,
    pub currency: String,
    pub account: String,
    pub debit: String,
    pub credit: String,
    pub recorded_at: String,
}

/// One movement: a debit and a credit of one amount.
struct Movement {
    debit_account: &'static str,
    credit_account: &'static str,
    amount: Decimal,
}

/// The money movements of one event, and what they change in the balance.
struct Posting<'a> {
    customer_id: &'a str,
    currency: Currency,
    /// The invoice the movements belong to (`None`: the event's stream).
    invoice_id: Option<&'a str>,
    movements: Vec<Movement>,
    change: Box<dyn Fn(&mut Balance) + Send + Sync>,
}

fn movement(
    debit_account: &'static str,
    credit_account: &'static str,
    amount: Decimal,
) -> Movement {
    Movement {
        debit_account,
        credit_account,
        amount,
    }
}

fn invoice_posting(event: &InvoiceEvent) -> Option<Posting<'_>> {
    use account::*;
    let p = match event {
        InvoiceEvent::InvoiceIssued {
            customer_id,
            currency,
            total,
            applied_credit,
            ..
        } => {
            let (total, applied) = (*total, *applied_credit);
            let mut movements = Vec::new();
            if total > Decimal::ZERO {
                movements.push(movement(RECEIVABLE, REVENUE, total));
            } else if total < Decimal::ZERO {
                movements.push(movement(REVENUE, CUSTOMER_CREDIT, -total));
            }
            if !applied.is_zero() {
                movements.push(movement(CUSTOMER_CREDIT, RECEIVABLE, applied));
            }
            Posting {
                customer_id,
                currency: *currency,
                invoice_id: None,
                movements,
                change: Box::new(move |b| {
                    if total > Decimal::ZERO {
                        b.invoiced += total;
                        b.outstanding += total;
                    } else {
                        b.credit -= total;
                    }
                    b.credit -= applied;
                    b.outstanding -= applied;
                }),
            }
        }
        InvoiceEvent::PaymentRecorded {
            payment,
            customer_id,
            currency,
            credited,
            ..
        } => {
            let (applied, credited) = (payment.amount, *credited);
            Posting {
                customer_id,
                currency: *currency,
                invoice_id: None,
                movements: vec![
                    movement(CASH, RECEIVABLE, applied),
                    movement(CASH, CUSTOMER_CREDIT, credited),
                ],
                change: Box::new(move |b| {
                    b.paid += applied + credited;
                    b.outstanding -= applied;
                    b.credit += credited;
                }),
            }
        }
        InvoiceEvent::InvoiceVoided {
            customer_id,
            currency,
            amount,
            ..
        } => {
            let amount = *amount;
            Posting {
                customer_id,
                currency: *currency,
                invoice_id: None,
                movements: vec![movement(REVENUE, RECEIVABLE, amount)],
                change: Box::new(move |b| {
                    b.voided += amount;
                    b.outstanding -= amount;
                }),
            }
        }
        InvoiceEvent::InvoiceMarkedUncollectible {
            customer_id,
            currency,
            amount,
            ..
        } => {
            let amount = *amount;
            Posting {
                customer_id,
                currency: *currency,
                invoice_id: None,
                movements: vec![movement(BAD_DEBT, RECEIVABLE, amount)],
                change: Box::new(move |b| {
                    b.written_off += amount;
                    b.outstanding -= amount;
                }),
            }
        }
        InvoiceEvent::CreditNoteIssued {
            credit_note,
            customer_id,
            currency,
            ..
        } => {
            let note = credit_note.clone();
            Posting {
                customer_id,
                currency: *currency,
                invoice_id: None,
                movements: vec![
                    movement(CREDIT_NOTES, RECEIVABLE, note.to_amount_due),
                    movement(CREDIT_NOTES, CUSTOMER_CREDIT, note.to_credit),
                    movement(CREDIT_NOTES, CASH, note.refunded),
                ],
                change: Box::new(move |b| {
                    b.credited += note.amount;
                    b.refunded += note.refunded;
                    b.outstanding -= note.to_amount_due;
                    b.credit += note.to_credit;
                }),
            }
        }
        InvoiceEvent::InvoiceCreated { .. }
        | InvoiceEvent::LineAdded { .. }
        | InvoiceEvent::InvoicePaid { .. } => return None,
    };
    Some(p)
}

fn ledger_posting(event: &NumberingEvent) -> Option<Posting<'_>> {
    use account::*;
    match event {
        NumberingEvent::CustomerCreditChanged {
            customer_id,
            currency,
            amount,
            source: CreditSource::UnappliedPayment { invoice_id, .. },
            ..
        } => {
            let amount = *amount;
            Some(Posting {
                customer_id,
                currency: *currency,
                invoice_id: invoice_id.as_deref(),
                movements: vec![movement(CASH, CUSTOMER_CREDIT, amount)],
                change: Box::new(move |b| {
                    b.paid += amount;
                    b.credit += amount;
                }),
            })
        }
        NumberingEvent::CustomerCreditChanged {
            customer_id,
            currency,
            amount,
            source: CreditSource::RefundedPayment { .. },
            ..
        } => {
            let amount = -*amount;
            Some(Posting {
                customer_id,
                currency: *currency,
                invoice_id: None,
                movements: vec![movement(CUSTOMER_CREDIT, CASH, amount)],
                change: Box::new(move |b| {
                    b.refunded += amount;
                    b.credit -= amount;
                }),
            })
        }
        // Journaled from the invoice event appended with it.
        NumberingEvent::CustomerCreditChanged { .. }
        | NumberingEvent::InvoiceNumberAssigned { .. }
        | NumberingEvent::CreditNoteNumberAssigned { .. } => None,
    }
}

/// The columns of `rm_journal`, in the order of [`Posted::journal_rows`].
pub(crate) const JOURNAL_COLUMNS: [&str; 11] = [
    "tenant",
    "event_id",
    "leg",
    "position",
    "customer_id",
    "currency",
    "invoice_id",
    "account",
    "debit",
    "credit",
    "recorded_at",
];

/// The columns of `rm_balances`, in the order of [`balance_row`].
pub(crate) const BALANCE_COLUMNS: [&str; 4] = ["tenant", "customer_id", "currency", "body"];

/// What one event that moves money writes: its journal rows and the change
/// to one balance (the live projector and the rebuild's bulk fold both
/// take it from [`posted`]).
pub(crate) struct Posted {
    pub customer_id: String,
    pub currency: Currency,
    /// The journal rows, in [`JOURNAL_COLUMNS`] order.
    pub journal_rows: Vec<Vec<Cell>>,
    pub change: Box<dyn Fn(&mut Balance) + Send + Sync>,
}

/// The posting of `event`; `None` when it moves no money.
pub(crate) fn posted(event: &StoredEvent) -> Result<Option<Posted>, ProjectionError> {
    let invoice_event: InvoiceEvent;
    let ledger_event: NumberingEvent;
    let posting = match event.kind() {
        Some(AggregateKind::Invoice) => {
            invoice_event = event
                .decode()
                .map_err(|e| ProjectionError::decode(event, e))?;
            invoice_posting(&invoice_event)
        }
        Some(AggregateKind::InvoiceNumbering) => {
            ledger_event = event
                .decode()
                .map_err(|e| ProjectionError::decode(event, e))?;
            ledger_posting(&ledger_event)
        }
        _ => None,
    };
    let Some(p) = posting else {
        return Ok(None);
    };
    if p.movements.iter().all(|m| m.amount.is_zero()) {
        return Ok(None);
    }
    let invoice_id = p.invoice_id.unwrap_or_else(|| event.resource_id());
    let mut journal_rows = Vec::with_capacity(2 * p.movements.len());
    for (index, m) in p.movements.iter().enumerate() {
        if m.amount.is_zero() {
            continue;
        }
        let amount = m.amount.to_string();
        // The first movement keeps the legs' original names.
        let suffix = if index == 0 {
            String::new()
        } else {
            format!(":{index}")
        };
        for (leg, account, debit, credit) in [
            ("debit", m.debit_account, amount.as_str(), "0"),
            ("credit", m.credit_account, "0", amount.as_str()),
        ] {
            journal_rows.push(vec![
                Cell::Text(event.tenant.clone()),
                Cell::Text(event.event_id.clone()),
                Cell::Text(format!("{leg}{suffix}")),
                Cell::Int(event.position),
                Cell::Text(p.customer_id.to_string()),
                Cell::Text(p.currency.code().to_string()),
                Cell::Text(invoice_id.to_string()),
                Cell::Text(account.to_string()),
                Cell::Text(debit.to_string()),
                Cell::Text(credit.to_string()),
                Cell::Text(event.recorded_at.clone()),
            ]);
        }
    }
    Ok(Some(Posted {
        customer_id: p.customer_id.to_string(),
        currency: p.currency,
        journal_rows,
        change: p.change,
    }))
}

/// A stored balance's body as the balance it starts from.
pub(crate) fn stored_balance(body: &str) -> Result<Balance, serde_json::Error> {
    Ok(serde_json::from_str::<Balance>(body)?.rescaled())
}

/// The balance `currency` starts from when there is no row.
pub(crate) fn new_balance(currency: Currency) -> Balance {
    Balance::zero(currency)
}

/// `balance` after one posting's change.
pub(crate) fn changed(mut balance: Balance, p: &Posted) -> Balance {
    (p.change)(&mut balance);
    balance.rescaled()
}

/// The `rm_balances` row of a balance, in [`BALANCE_COLUMNS`] order.
pub(crate) fn balance_row(
    tenant: &str,
    customer_id: &str,
    balance: &Balance,
) -> Result<Vec<Cell>, serde_json::Error> {
    Ok(vec![
        Cell::Text(tenant.to_string()),
        Cell::Text(customer_id.to_string()),
        Cell::Text(balance.currency.code().to_string()),
        Cell::Text(serde_json::to_string(balance)?),
    ])
}

#[derive(Debug, Default)]
pub struct BalanceProjector;

#[async_trait]
impl Projector for BalanceProjector {
    fn name(&self) -> &'static str {
        CONSUMER
    }

    fn tables(&self) -> &'static [&'static str] {
        &["rm_journal", "rm_balances"]
    }

    fn handles(&self, event: &StoredEvent) -> bool {
        event.is(AggregateKind::Invoice) || event.is(AggregateKind::InvoiceNumbering)
    }

    fn bulk(&self) -> Option<Box<dyn crate::bulk::BulkFold>> {
        Some(Box::new(crate::bulk::BalancesBulk::new()))
    }

    async fn apply(
        &self,
        conn: &mut AnyConnection,
        t: Tables,
        event: &StoredEvent,
    ) -> Result<(), ProjectionError> {
        let Some(p) = posted(event)? else {
            return Ok(());
        };
        let insert = format!(
            "INSERT INTO rm_journal ({}) VALUES {} ON CONFLICT (tenant, event_id, leg) DO NOTHING",
            JOURNAL_COLUMNS.join(", "),
            crate::db::value_rows(1, JOURNAL_COLUMNS.len())
        );
        let insert = t.sql(&insert);
        let mut inserted = 0;
        for row in &p.journal_rows {
            let mut q = sqlx::query(&insert);
            for cell in row {
                q = bulk::bind(q, cell);
            }
            inserted += q.execute(&mut *conn).await?.rows_affected();
        }
        if inserted == 0 {
            // Applied before: the balance already has it.
            return Ok(());
        }
        let row = sqlx::query(&t.sql(
            "SELECT body FROM rm_balances WHERE tenant = $1 AND customer_id = $2 AND currency = $3",
        ))
        .bind(&event.tenant)
        .bind(&p.customer_id)
        .bind(p.currency.code())
        .fetch_optional(&mut *conn)
        .await?;
        let balance = match row {
            Some(row) => {
                let body: String = row.try_get("body")?;
                stored_balance(&body).map_err(|e| ProjectionError::decode(event, e))?
            }
            None => new_balance(p.currency),
        };
        let balance = changed(balance, &p);
        let row = balance_row(&event.tenant, &p.customer_id, &balance)
            .map_err(|e| ProjectionError::decode(event, e))?;
        let upsert = t.sql("INSERT INTO rm_balances (tenant, customer_id, currency, body) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (tenant, customer_id, currency) DO UPDATE SET body = excluded.body");
        let mut q = sqlx::query(&upsert);
        for cell in &row {
            q = bulk::bind(q, cell);
        }
        q.execute(&mut *conn).await?;
        Ok(())
    }
}

/// A customer's balances, one per currency they were invoiced in.
pub async fn balances(db: &Db, tenant: &str, customer_id: &str) -> Result<Vec<Balance>, DbError> {
    let rows = sqlx::query(
        "SELECT body FROM rm_balances WHERE tenant = $1 AND customer_id = $2 ORDER BY currency",
    )
    .bind(tenant)
    .bind(customer_id)
    .fetch_all(&db.any)
    .await?;
    rows.iter()
        .map(|r| {
            let body: String = r.try_get("body")?;
            serde_json::from_str(&body).map_err(|e| DbError::Sqlx(sqlx::Error::Decode(Box::new(e))))
        })
        .collect()
}

/// A customer's journal, oldest first, one page after `cursor` (a position).
pub async fn journal(
    db: &Db,
    tenant: &str,
    customer_id: &str,
    limit: i64,
    cursor: Option<i64>,
) -> Result<Page<JournalEntry>, DbError> {
    let limit = limit.clamp(1, MAX_PAGE_LIMIT);
    // Both legs of an entry share a position: page by whole entries.
    let rows = sqlx::query(&format!(
        "SELECT event_id, position, invoice_id, currency, account, debit, credit, recorded_at \
         FROM rm_journal WHERE tenant = $1 AND customer_id = $2 AND position > $3 \
         AND position IN (SELECT DISTINCT position FROM rm_journal WHERE tenant = $1 AND customer_id = $2 \
         AND position > $3 ORDER BY position LIMIT {}) ORDER BY position, leg DESC",
        limit + 1
    ))
    .bind(tenant)
    .bind(customer_id)
    .bind(cursor.unwrap_or(0))
    .fetch_all(&db.any)
    .await?;
    let mut data = rows
        .iter()
        .map(|r| {
            Ok(JournalEntry {
                event_id: r.try_get("event_id")?,
                position: r.try_get("position")?,
                invoice_id: r.try_get("invoice_id")?,
                currency: r.try_get("currency")?,
                account: r.try_get("account")?,
                debit: r.try_get("debit")?,
                credit: r.try_get("credit")?,
                recorded_at: r.try_get("recorded_at")?,
            })
        })
        .collect::<Result<Vec<_>, DbError>>()?;
    let mut positions: Vec<i64> = data.iter().map(|e| e.position).collect();
    positions.dedup();
    let next_cursor = if positions.len() as i64 > limit {
        let last = positions[limit as usize - 1];
        data.retain(|e| e.position <= last);
        Some(last.to_string())
    } else {
        None
    };
    Ok(Page { data, next_cursor })
}

/// Sums of the tenant's journal: (debits, credits). Equal at all times.
pub async fn journal_totals(db: &Db, tenant: &str) -> Result<(Decimal, Decimal), DbError> {
    let rows = sqlx::query("SELECT debit, credit FROM rm_journal WHERE tenant = $1")
        .bind(tenant)
        .fetch_all(&db.any)
        .await?;
    let mut debits = Decimal::ZERO;
    let mut credits = Decimal::ZERO;
    for r in rows {
        let d: String = r.try_get("debit")?;
        let c: String = r.try_get("credit")?;
        debits += parse_amount(&d)?;
        credits += parse_amount(&c)?;
    }
    Ok((debits, credits))
}

fn parse_amount(s: &str) -> Result<Decimal, DbError> {
    Decimal::from_str(s).map_err(|e| DbError::Sqlx(sqlx::Error::Decode(Box::new(e))))
}
