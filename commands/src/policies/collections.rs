//! Collections, a clock-driven reconciliation run after each billing tick:
//!
//! 1. An open invoice past its due date makes its subscription `past_due`;
//!    past the grace period as well, the subscription is suspended with
//!    reason `non_payment`.
//! 2. A `past_due` subscription whose overdue invoice is no longer open
//!    (paid or voided) is active again.
//! 3. A subscription suspended for non-payment after being past due, with no
//!    open invoice past the grace period, resumes (if another invoice is
//!    still past due, the next tick makes it `past_due` again). A manual
//!    non-payment suspension of an active subscription is left alone.
//!
//! It compares states rather than reacting to single events, so it heals
//! whatever a crash or a race left half done, and every decision is taken
//! again on the write side's state, never on a lagging read model alone.

use chrono::{DateTime, Utc};
use sqlx::Row;
use tally_aggregates::invoice::{Invoice, InvoiceStatus};
use tally_aggregates::subscription::{
    Subscription, SubscriptionCommand, SubscriptionStatus, SuspendReason,
};
use tally_aggregates::DomainError;
use tally_projections::{time, DbError};

use super::billing::BillingConfig;
use super::{scheduler_meta, subscriptions_in};
use crate::dispatch::{CommandError, Dispatcher};

pub const ACTOR: &str = "system:collections";

/// Rows looked at per step and tick.
const SCAN_LIMIT: i64 = 1000;

/// What one run changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Collected {
    pub past_due: usize,
    pub suspended: usize,
    pub cleared: usize,
    pub resumed: usize,
}

fn db_err(e: sqlx::Error) -> CommandError {
    CommandError::from(DbError::Sqlx(e))
}

fn text(row: &sqlx::any::AnyRow, col: &str) -> Result<String, CommandError> {
    row.try_get(col)
        .map_err(|e| CommandError::Store(e.to_string()))
}

/// Runs the three steps once at the dispatcher's clock.
pub async fn collect(d: &Dispatcher, config: &BillingConfig) -> Result<Collected, CommandError> {
    let now = d.clock().now();
    let mut out = Collected::default();
    enforce_overdue(d, config, now, &mut out).await?;
    clear_settled(d, now, &mut out).await?;
    resume_settled(d, config, now, &mut out).await?;
    Ok(out)
}

/// Step 1: open invoices past due → past_due, then suspended after grace.
async fn enforce_overdue(
    d: &Dispatcher,
    config: &BillingConfig,
    now: DateTime<Utc>,
    out: &mut Collected,
) -> Result<(), CommandError> {
    // Only where there is something to do: an active subscription, or a
    // past-due one whose invoice is past the grace period too.
    let rows = sqlx::query(
        "SELECT i.tenant, i.id, i.subscription_id FROM rm_invoices i JOIN rm_subscriptions s \
         ON s.tenant = i.tenant AND s.id = i.subscription_id \
         WHERE i.status = 'open' AND i.due_at <> '' AND i.due_at < $1 \
         AND (s.status = 'active' OR (s.status = 'past_due' AND i.due_at <= $2)) \
         ORDER BY i.due_at, i.tenant, i.id LIMIT $3",
    )
    .bind(time::to_text(now))
    .bind(time::to_text(now - config.grace))
    .bind(SCAN_LIMIT)
    .fetch_all(&d.db().any)
    .await
    .map_err(db_err)?;
    for row in rows {
        let tenant = text(&row, "tenant")?;
        let invoice_id = text(&row, "id")?;
        let sub_id = text(&row, "subscription_id")?;
        let (invoice, _) = d.load::<Invoice>(&tenant, &invoice_id).await?;
        let Some(due_at) = invoice.due_at else {
            continue;
        };
        if invoice.status != Some(InvoiceStatus::Open) || due_at >= now {
            continue;
        }
        let beyond_grace = now >= due_at + config.grace;
        let meta = scheduler_meta(&tenant, ACTOR);
        let result = d
            .execute::<Subscription, _>(&meta, &sub_id, None, |s| {
                let mut events = Vec::new();
                let mut next = s.clone();
                if s.status == Some(SubscriptionStatus::Active) {
                    for e in s.decide(SubscriptionCommand::MarkPastDue {
                        invoice_id: invoice_id.clone(),
                        at: now,
                    })? {
                        next.evolve(&e);
                        events.push(e);
                    }
                }
                if beyond_grace && next.status == Some(SubscriptionStatus::PastDue) {
                    events.extend(next.decide(SubscriptionCommand::Suspend {
                        reason: SuspendReason::NonPayment,
                        at: now,
                    })?);
                }
                Ok(events)
            })
            .await;
        match result {
            Ok(done) if done.appended > 0 => match done.state.status {
                Some(SubscriptionStatus::Suspended) => {
                    out.suspended += 1;
                    out.past_due += done.appended - 1;
                }
                Some(SubscriptionStatus::PastDue) => out.past_due += 1,
                _ => {}
            },
            Ok(_) => {}
            // Canceled or never activated: nothing to collect on.
            Err(CommandError::Domain(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Step 2: past_due subscriptions whose overdue invoice is settled → active.
async fn clear_settled(
    d: &Dispatcher,
    now: DateTime<Utc>,
    out: &mut Collected,
) -> Result<(), CommandError> {
    for (tenant, sub_id, sub) in subscriptions_in(d, "past_due", SCAN_LIMIT).await? {
        let Some(invoice_id) = sub.past_due_invoice else {
            continue;
        };
        let (invoice, _) = d.load::<Invoice>(&tenant, &invoice_id).await?;
        if invoice.status == Some(InvoiceStatus::Open) {
            continue;
        }
        let meta = scheduler_meta(&tenant, ACTOR);
        // The write side clears only if that invoice is still the reason.
        match d
            .execute::<Subscription, _>(&meta, &sub_id, None, |s| {
                s.decide(SubscriptionCommand::ClearPastDue {
                    invoice_id: invoice_id.clone(),
                    at: now,
                })
            })
            .await
        {
            Ok(done) => out.cleared += usize::from(done.appended > 0),
            Err(CommandError::Domain(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Step 3: suspended for non-payment, nothing open past grace → resumed.
async fn resume_settled(
    d: &Dispatcher,
    config: &BillingConfig,
    now: DateTime<Utc>,
    out: &mut Collected,
) -> Result<(), CommandError> {
    for (tenant, sub_id, sub) in subscriptions_in(d, "suspended", SCAN_LIMIT).await? {
        if !suspended_for_non_payment(&sub) {
            continue;
        }
        // The invoice it was suspended for, from the write side: a read
        // model that lags or is being rebuilt must never resume it.
        if let Some(invoice_id) = &sub.past_due_invoice {
            let (invoice, _) = d.load::<Invoice>(&tenant, invoice_id).await?;
            if invoice.status == Some(InvoiceStatus::Open) {
                continue;
            }
        }
        if has_open_overdue(d, &tenant, &sub_id, now - config.grace).await? {
            continue;
        }
        let meta = scheduler_meta(&tenant, ACTOR);
        match d
            .execute::<Subscription, _>(&meta, &sub_id, None, |s| {
                if suspended_for_non_payment(s) {
                    s.decide(SubscriptionCommand::Resume { at: now })
                } else {
                    Ok(vec![])
                }
            })
            .await
        {
            Ok(done) => out.resumed += usize::from(done.appended > 0),
            Err(CommandError::Domain(DomainError::InvalidTransition { .. })) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Suspended for non-payment after being past due on an invoice (a manual
/// non-payment suspension of an active subscription names no invoice and
/// stays until someone resumes it).
fn suspended_for_non_payment(s: &Subscription) -> bool {
    s.status == Some(SubscriptionStatus::Suspended)
        && s.past_due_invoice.is_some()
        && s.suspension
            .as_ref()
            .is_some_and(|x| x.reason == SuspendReason::NonPayment)
}

/// Whether the subscription has an open invoice due before `due_before`,
/// checked on the write side for each candidate the read model names (the
/// read model may not show a payment made a moment ago).
async fn has_open_overdue(
    d: &Dispatcher,
    tenant: &str,
    sub_id: &str,
    due_before: DateTime<Utc>,
) -> Result<bool, CommandError> {
    let rows = sqlx::query(
        "SELECT id FROM rm_invoices WHERE tenant = $1 AND subscription_id = $2 AND status = 'open' \
         AND due_at <> '' AND due_at <= $3",
    )
    .bind(tenant)
    .bind(sub_id)
    .bind(time::to_text(due_before))
    .fetch_all(&d.db().any)
    .await
    .map_err(db_err)?;
    for row in rows {
        let id = text(&row, "id")?;
        let (invoice, _) = d.load::<Invoice>(tenant, &id).await?;
        if invoice.status == Some(InvoiceStatus::Open)
            && invoice.due_at.is_some_and(|t| t <= due_before)
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Renews due subscriptions, then collects, every `every` until `stop`.
pub async fn run_scheduler(
    d: Dispatcher,
    config: BillingConfig,
    every: std::time::Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tick(&d, &config).await;
        if tokio::time::timeout(every, stop.wait_for(|s| *s))
            .await
            .is_ok()
        {
            return;
        }
    }
}

/// One scheduler tick: trials that ended, renewals, then collections.
/// Errors are logged and the next tick tries again.
pub async fn tick(d: &Dispatcher, config: &BillingConfig) {
    if let Err(e) = super::billing::end_trials_due(d).await {
        tracing::warn!(error = %e, "trial end scan failed");
    }
    if let Err(e) = super::billing::renew_due(d).await {
        tracing::warn!(error = %e, "billing renewal scan failed");
    }
    match collect(d, config).await {
        Ok(c) if c != Collected::default() => tracing::info!(?c, "collections"),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "collections scan failed"),
    }
}
