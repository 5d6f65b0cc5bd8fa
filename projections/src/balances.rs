//! Customer balances: an accounts-receivable journal in double entry
//! (`rm_journal`) and the balance per customer and currency folded from it
//! (`rm_balances`).
//!
//! | invoice event | debit | credit |
//! |---|---|---|
//! | issued, total T > 0 | receivable T | revenue T |
//! | issued, total T < 0 (a credit) | revenue −T | customer_credit −T |
//! | payment A | cash A | receivable A |
//! | voided (nothing paid), total T | revenue T | receivable T |
//! | uncollectible, amount due D | bad_debt D | receivable D |
//!
//! Each entry is two rows of the same amount keyed by the event id, so the
//! journal's debits equal its credits after every event, and a replayed event
//! writes nothing twice.

use std::str::FromStr;

use async_trait::async_trait;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sqlx::{AnyConnection, Row};
use tally_aggregates::invoice::InvoiceEvent;
use tally_aggregates::Currency;

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
}

/// A customer's balance in one currency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Balance {
    pub currency: Currency,
    /// Totals of issued invoices (positive totals).
    #[serde(with = "rust_decimal::serde::str")]
    pub invoiced: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub paid: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub voided: Decimal,
    /// Amounts due written off as uncollectible.
    #[serde(with = "rust_decimal::serde::str")]
    pub written_off: Decimal,
    /// Credits from invoices with a negative total (owed to the customer).
    #[serde(with = "rust_decimal::serde::str")]
    pub credit: Decimal,
    /// The receivable: invoiced − paid − voided − written off.
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
            credit: z,
            outstanding: z,
        }
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

/// The money movement of one invoice event.
struct Posting<'a> {
    customer_id: &'a str,
    currency: Currency,
    debit_account: &'static str,
    credit_account: &'static str,
    amount: Decimal,
    change: fn(&mut Balance, Decimal),
}

fn posting(event: &InvoiceEvent) -> Option<Posting<'_>> {
    use account::*;
    let p = match event {
        InvoiceEvent::InvoiceIssued {
            customer_id,
            currency,
            total,
            ..
        } if *total > Decimal::ZERO => Posting {
            customer_id,
            currency: *currency,
            debit_account: RECEIVABLE,
            credit_account: REVENUE,
            amount: *total,
            change: |b, a| {
                b.invoiced += a;
                b.outstanding += a;
            },
        },
        InvoiceEvent::InvoiceIssued {
            customer_id,
            currency,
            total,
            ..
        } if *total < Decimal::ZERO => Posting {
            customer_id,
            currency: *currency,
            debit_account: REVENUE,
            credit_account: CUSTOMER_CREDIT,
            amount: -*total,
            change: |b, a| b.credit += a,
        },
        InvoiceEvent::PaymentRecorded {
            payment,
            customer_id,
            currency,
            ..
        } => Posting {
            customer_id,
            currency: *currency,
            debit_account: CASH,
            credit_account: RECEIVABLE,
            amount: payment.amount,
            change: |b, a| {
                b.paid += a;
                b.outstanding -= a;
            },
        },
        InvoiceEvent::InvoiceVoided {
            customer_id,
            currency,
            amount,
            ..
        } => Posting {
            customer_id,
            currency: *currency,
            debit_account: REVENUE,
            credit_account: RECEIVABLE,
            amount: *amount,
            change: |b, a| {
                b.voided += a;
                b.outstanding -= a;
            },
        },
        InvoiceEvent::InvoiceMarkedUncollectible {
            customer_id,
            currency,
            amount,
            ..
        } => Posting {
            customer_id,
            currency: *currency,
            debit_account: BAD_DEBT,
            credit_account: RECEIVABLE,
            amount: *amount,
            change: |b, a| {
                b.written_off += a;
                b.outstanding -= a;
            },
        },
        InvoiceEvent::InvoiceIssued { .. }
        | InvoiceEvent::InvoiceCreated { .. }
        | InvoiceEvent::LineAdded { .. }
        | InvoiceEvent::InvoicePaid { .. } => return None,
    };
    (!p.amount.is_zero()).then_some(p)
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
        event.aggregate_type == "invoice"
    }

    async fn apply(
        &self,
        conn: &mut AnyConnection,
        t: Tables,
        event: &StoredEvent,
    ) -> Result<(), ProjectionError> {
        if event.aggregate_type != "invoice" {
            return Ok(());
        }
        let decoded: InvoiceEvent = event
            .decode()
            .map_err(|e| ProjectionError::decode(event, e))?;
        let Some(p) = posting(&decoded) else {
            return Ok(());
        };
        let amount = p.amount.to_string();
        let mut inserted = 0;
        for (leg, account, debit, credit) in [
            ("debit", p.debit_account, amount.as_str(), "0"),
            ("credit", p.credit_account, "0", amount.as_str()),
        ] {
            inserted += sqlx::query(
                &t.sql("INSERT INTO rm_journal (tenant, event_id, leg, position, customer_id, currency, invoice_id, \
                 account, debit, credit, recorded_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
                 ON CONFLICT (tenant, event_id, leg) DO NOTHING"),
            )
            .bind(&event.tenant)
            .bind(&event.event_id)
            .bind(leg)
            .bind(event.position)
            .bind(p.customer_id)
            .bind(p.currency.code())
            .bind(event.resource_id())
            .bind(account)
            .bind(debit)
            .bind(credit)
            .bind(&event.recorded_at)
            .execute(&mut *conn)
            .await?
            .rows_affected();
        }
        if inserted == 0 {
            // Applied before: the balance already has it.
            return Ok(());
        }
        let row = sqlx::query(&t.sql(
            "SELECT body FROM rm_balances WHERE tenant = $1 AND customer_id = $2 AND currency = $3",
        ))
        .bind(&event.tenant)
        .bind(p.customer_id)
        .bind(p.currency.code())
        .fetch_optional(&mut *conn)
        .await?;
        let mut balance = match row {
            Some(row) => {
                let body: String = row.try_get("body")?;
                serde_json::from_str::<Balance>(&body)
                    .map_err(|e| ProjectionError::decode(event, e))?
            }
            None => Balance::zero(p.currency),
        };
        (p.change)(&mut balance, p.amount);
        let body =
            serde_json::to_string(&balance).map_err(|e| ProjectionError::decode(event, e))?;
        sqlx::query(
            &t.sql("INSERT INTO rm_balances (tenant, customer_id, currency, body) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (tenant, customer_id, currency) DO UPDATE SET body = excluded.body"),
        )
        .bind(&event.tenant)
        .bind(p.customer_id)
        .bind(p.currency.code())
        .bind(body)
        .execute(&mut *conn)
        .await?;
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
