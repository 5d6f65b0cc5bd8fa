//! The billing cycle. Activation bills the first period in advance
//! ([`bill_activation`]); with a trial, activation comes when the trial ends,
//! by the clock ([`end_trials_due`]) or on request, and bills nothing before. A clock-driven scheduler renews every subscription
//! whose period has ended ([`renew_due`]): one `PeriodRenewed` per period, the
//! rating window. This policy consumes those events and turns each into
//! exactly one issued invoice ([`bill_renewal`]): the recurring fee for the
//! new period in advance, usage overage and prorations of the closed period
//! in arrears (the lines come from `tally_aggregates::billing`).
//!
//! Exactly one invoice per activation or renewal, however often this runs:
//! the invoice id is derived from the subscription and the period, so a
//! second run finds the invoice already there and only finishes what the
//! first did not (marking usage billed, issuing). Usage records it bills
//! become Billed on that invoice, so they can never be billed twice.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use sqlx::{AnyConnection, Row};
use tally_aggregates::billing::{renewal_lines, MeterUsage, Renewal};
use tally_aggregates::coupon::{discount_line, AppliedDiscount};
use tally_aggregates::invoice::{Invoice, InvoiceCommand, InvoiceStatus};
use tally_aggregates::subscription::{
    Subscription, SubscriptionCommand, SubscriptionEvent, SubscriptionStatus,
};
use tally_aggregates::usage::{checked_usage_window, UsageCommand, UsageRecord, UsageStatus};
use tally_aggregates::AggregateKind;
use tally_aggregates::{DomainError, Period};
use tally_projections::runtime::{ProjectionError, Projector};
use tally_projections::usage::{self as usage_rm, RecordFilter};
use tally_projections::{stream_key, time, StoredEvent};

use super::{scheduler_meta, system_meta, wait_for_consumers};
use crate::dispatch::{CommandError, CommandMeta, Dispatcher, Executed};
use crate::ids::{derived_id, InvoiceId};
use crate::invoices;
use crate::store::{self, StreamAppend};

pub const CONSUMER: &str = "policy.billing";
pub const ACTOR: &str = "system:billing";

/// How long the policy waits for the usage read model to reach a renewal.
const READ_MODEL_WAIT: Duration = Duration::from_secs(10);
/// Renewals one subscription catches up on per scheduler tick (one per round).
const MAX_ROUNDS_PER_TICK: usize = 120;
/// Renewals of all subscriptions together per scheduler tick.
pub const MAX_RENEWALS_PER_TICK: usize = 2_000;
/// Subscriptions looked at per scheduler tick.
const SCAN_LIMIT: i64 = 1000;

/// Payment terms of the invoices the billing cycle issues, and the grace
/// period of collections.
#[derive(Debug, Clone)]
pub struct BillingConfig {
    pub due_days: u32,
    pub grace: chrono::Duration,
}

impl Default for BillingConfig {
    fn default() -> Self {
        Self {
            due_days: tally_aggregates::invoice::DEFAULT_DUE_DAYS,
            grace: chrono::Duration::days(7),
        }
    }
}

/// The id of the first invoice of a subscription, for its first period.
pub fn activation_invoice_id(subscription_id: &str, period: &Period) -> InvoiceId {
    derived_id(&["activation", subscription_id, &time::to_text(period.start)])
}

/// The id of the invoice for a subscription's closed period.
pub fn renewal_invoice_id(subscription_id: &str, closed_period: &Period) -> InvoiceId {
    derived_id(&[
        "renewal",
        subscription_id,
        &time::to_text(closed_period.start),
    ])
}

pub struct BillingPolicy {
    dispatcher: Dispatcher,
    config: BillingConfig,
}

impl BillingPolicy {
    pub fn new(dispatcher: Dispatcher, config: BillingConfig) -> Self {
        Self { dispatcher, config }
    }
}

#[async_trait]
impl Projector for BillingPolicy {
    fn name(&self) -> &'static str {
        CONSUMER
    }

    fn tables(&self) -> &'static [&'static str] {
        &[]
    }

    fn rebuildable(&self) -> bool {
        false
    }

    fn handles(&self, event: &StoredEvent) -> bool {
        event.is(AggregateKind::Subscription)
            && matches!(
                event.event_type.as_str(),
                "PeriodRenewed" | "SubscriptionActivated"
            )
    }

    async fn apply(
        &self,
        _conn: &mut AnyConnection,
        _tables: tally_projections::Tables,
        _event: &StoredEvent,
    ) -> Result<(), ProjectionError> {
        Ok(())
    }

    async fn effects(&self, batch: &[&StoredEvent]) -> Result<(), ProjectionError> {
        for event in batch.iter().filter(|e| self.handles(e)) {
            let decoded: SubscriptionEvent = event
                .decode()
                .map_err(|err| ProjectionError::decode(event, err))?;
            if let SubscriptionEvent::SubscriptionActivated {
                period,
                plan: Some(plan),
                seats: Some(seats),
                discount,
                ..
            } = &decoded
            {
                let first = Activation {
                    period: *period,
                    plan,
                    seats: *seats,
                    discount: discount.as_ref(),
                };
                bill_activation(&self.dispatcher, &self.config, event, &first)
                    .await
                    .map_err(|e| ProjectionError::Effect(e.to_string()))?;
                continue;
            }
            let SubscriptionEvent::PeriodRenewed {
                closed_period,
                new_period,
                plan: Some(plan),
                seats: Some(seats),
                prorations,
                discount,
                ..
            } = decoded
            else {
                // Renewed before renewals carried their terms: not billable here.
                continue;
            };
            wait_for_consumers(
                self.dispatcher.db(),
                &[usage_rm::CONSUMER],
                event.position,
                READ_MODEL_WAIT,
            )
            .await?;
            let renewal = Renewal {
                closed_period,
                new_period,
                plan: &plan,
                seats,
                prorations: &prorations,
            };
            bill_renewal(
                &self.dispatcher,
                &self.config,
                event,
                &renewal,
                discount.as_ref(),
            )
            .await
            .map_err(|e| ProjectionError::Effect(e.to_string()))?;
        }
        Ok(())
    }
}

/// What an activation bills: the first period, in advance, at these terms,
/// with the discount the activation carried.
pub struct Activation<'a> {
    pub period: Period,
    pub plan: &'a tally_aggregates::PlanTerms,
    pub seats: u32,
    pub discount: Option<&'a AppliedDiscount>,
}

/// Drafts and issues the first invoice of an activated subscription: the
/// recurring fee of the first period, in advance; idempotent.
pub async fn bill_activation(
    d: &Dispatcher,
    config: &BillingConfig,
    event: &StoredEvent,
    activation: &Activation<'_>,
) -> Result<Executed<Invoice>, CommandError> {
    let Activation {
        period,
        plan,
        seats,
        discount,
    } = *activation;
    let sub_id = event.resource_id();
    let invoice_id = activation_invoice_id(sub_id, &period);
    // The fee of the new period and nothing to rate: an empty closed period.
    let first = Renewal {
        closed_period: Period {
            start: period.start,
            end: period.start,
        },
        new_period: period,
        plan,
        seats,
        prorations: &[],
    };
    invoice_once(d, config, event, &invoice_id, None, &first, false, discount).await
}

/// Drafts, fills and issues the invoice of one renewal; idempotent.
pub async fn bill_renewal(
    d: &Dispatcher,
    config: &BillingConfig,
    event: &StoredEvent,
    renewal: &Renewal<'_>,
    discount: Option<&AppliedDiscount>,
) -> Result<Executed<Invoice>, CommandError> {
    let invoice_id = renewal_invoice_id(event.resource_id(), &renewal.closed_period);
    let closed = Some(renewal.closed_period);
    invoice_once(
        d,
        config,
        event,
        &invoice_id,
        closed,
        renewal,
        true,
        discount,
    )
    .await
}

/// Creates invoice `invoice_id` with the lines of `renewal` and the
/// discount's line unless it exists (rating usage first when `rate`), then
/// issues it unless it is issued.
#[allow(clippy::too_many_arguments)]
async fn invoice_once(
    d: &Dispatcher,
    config: &BillingConfig,
    event: &StoredEvent,
    invoice_id: &str,
    billing_period: Option<Period>,
    renewal: &Renewal<'_>,
    rate: bool,
    discount: Option<&AppliedDiscount>,
) -> Result<Executed<Invoice>, CommandError> {
    let meta = system_meta(event, ACTOR);
    let sub_id = event.resource_id();
    let invoice_id = invoice_id.to_string();
    let (invoice, _) = d.load::<Invoice>(&meta.tenant, &invoice_id).await?;
    if invoice.status.is_none() {
        let (sub, _) = d.load::<Subscription>(&meta.tenant, sub_id).await?;
        let usage = if rate {
            let anchor = sub.anchor.ok_or_else(|| {
                CommandError::Store(format!("renewed subscription {sub_id} has no anchor"))
            })?;
            rate_usage(d, &meta, sub_id, anchor, renewal, &invoice_id).await?
        } else {
            Vec::new()
        };
        let mut lines = renewal_lines(renewal, &usage);
        if let Some(discount) = discount {
            lines.extend(discount_line(discount, &lines, renewal.plan.currency));
        }
        let at = d.clock().now();
        let created = d
            .execute::<Invoice, _>(&meta, &invoice_id, None, |inv| {
                inv.decide(InvoiceCommand::Create {
                    invoice_id: invoice_id.clone(),
                    customer_id: sub.customer_id.clone(),
                    currency: renewal.plan.currency,
                    subscription_id: Some(sub_id.to_string()),
                    billing_period,
                    due_days: Some(config.due_days),
                    lines: lines.clone(),
                    at,
                })
            })
            .await;
        match created {
            Ok(_) | Err(CommandError::Domain(DomainError::AlreadyExists(_))) => {}
            Err(e) => return Err(e),
        }
    }
    match invoices::issue(d, &meta, &invoice_id, None).await {
        Ok(issued) => {
            tracing::info!(tenant = %meta.tenant, subscription = %sub_id, invoice = %invoice_id,
                number = ?issued.state.number, "renewal invoiced");
            Ok(issued)
        }
        // Issued by an earlier run.
        Err(CommandError::Domain(DomainError::InvalidTransition { .. })) => {
            let (state, version) = d.load::<Invoice>(&meta.tenant, &invoice_id).await?;
            debug_assert_ne!(state.status, Some(InvoiceStatus::Draft));
            Ok(Executed {
                id: invoice_id,
                state,
                version,
                position: event.position,
                appended: 0,
            })
        }
        Err(e) => Err(e),
    }
}

/// The usage of the closed period per meter window, for meters with an
/// overage price. Records of the period that are still Recorded are marked
/// Billed on `invoice_id` first; what counts as billed here is what ended up
/// Billed on this invoice (a record voided meanwhile drops out).
async fn rate_usage(
    d: &Dispatcher,
    meta: &CommandMeta,
    sub_id: &str,
    anchor: DateTime<Utc>,
    renewal: &Renewal<'_>,
    invoice_id: &str,
) -> Result<Vec<MeterUsage>, CommandError> {
    let closed = renewal.closed_period;
    let mut out = Vec::new();
    for meter in renewal.plan.meters.iter().filter(|m| m.pricing.is_some()) {
        let Some(first) = checked_usage_window(anchor, meter.reset, closed.start) else {
            continue;
        };
        let records =
            records_between(d, &meta.tenant, sub_id, &meter.key, first.start, closed.end).await?;
        let (in_period, earlier): (Vec<_>, Vec<_>) = records
            .into_iter()
            .partition(|r| r.state.timestamp.is_some_and(|t| t >= closed.start));
        let billed = mark_billed(d, meta, in_period, invoice_id).await?;
        // Walk the meter's windows that the closed period touches.
        let mut window = first;
        loop {
            let in_window = |t: Option<DateTime<Utc>>| t.is_some_and(|t| window.contains(t));
            let before: Decimal = earlier
                .iter()
                .filter(|r| r.state.status != Some(UsageStatus::Voided))
                .filter(|r| in_window(r.state.timestamp))
                .map(|r| r.state.quantity)
                .sum();
            let during: Decimal = billed
                .iter()
                .filter(|r| in_window(r.timestamp))
                .map(|r| r.quantity)
                .sum();
            out.push(MeterUsage {
                meter: meter.key.clone(),
                before,
                during,
            });
            match window.end {
                Some(end) if end < closed.end => {
                    match checked_usage_window(anchor, meter.reset, end) {
                        Some(next) => window = next,
                        None => break,
                    }
                }
                _ => break,
            }
        }
    }
    Ok(out)
}

/// Every usage record of a subscription's meter with a timestamp in `[from, to)`.
async fn records_between(
    d: &Dispatcher,
    tenant: &str,
    sub_id: &str,
    meter: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<tally_projections::state::Versioned<UsageRecord>>, CommandError> {
    let filter = RecordFilter {
        subscription_id: Some(sub_id.to_string()),
        meter: Some(meter.to_string()),
        from: Some(from),
        to: Some(to),
    };
    let mut all = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = usage_rm::list(
            d.db(),
            tenant,
            &filter,
            tally_projections::MAX_PAGE_LIMIT,
            cursor.as_deref(),
        )
        .await?;
        all.extend(page.data);
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => return Ok(all),
        }
    }
}

/// Marks the Recorded records Billed on `invoice_id` (one transaction for
/// all; one by one when any changed meanwhile) and returns the records that
/// are Billed on it.
async fn mark_billed(
    d: &Dispatcher,
    meta: &CommandMeta,
    records: Vec<tally_projections::state::Versioned<UsageRecord>>,
    invoice_id: &str,
) -> Result<Vec<UsageRecord>, CommandError> {
    let at = d.clock().now();
    let billed_here = |r: &UsageRecord| r.billed_invoice_id.as_deref() == Some(invoice_id);
    let (to_bill, rest): (Vec<_>, Vec<_>) = records
        .into_iter()
        .partition(|r| r.state.status == Some(UsageStatus::Recorded));
    let mut billed: Vec<UsageRecord> = rest
        .into_iter()
        .map(|r| r.state)
        .filter(billed_here)
        .collect();
    if to_bill.is_empty() {
        return Ok(billed);
    }
    let metadata = meta.to_map(d.clock());
    let mut streams = Vec::with_capacity(to_bill.len());
    let mut states = Vec::with_capacity(to_bill.len());
    for r in &to_bill {
        let events = r.state.decide(UsageCommand::MarkBilled {
            invoice_id: invoice_id.to_string(),
            at,
        })?;
        let mut state = r.state.clone();
        for e in &events {
            state.evolve(e);
        }
        streams.push(StreamAppend {
            aggregate_type: AggregateKind::UsageRecord.as_str(),
            key: stream_key(&meta.tenant, &r.id),
            events: store::new_events::<UsageRecord>(r.version, &events, &metadata)?,
            snapshot: None,
        });
        states.push(state);
    }
    match d.append_many(&meta.tenant, at, streams).await {
        Ok(_) => billed.extend(states),
        Err(store::StoreError::Conflict) => {
            // Some record changed since the read model saw it: decide each on
            // its current state.
            for r in to_bill {
                let out = d
                    .execute::<UsageRecord, _>(meta, &r.id, None, |rec| {
                        if billed_here(rec) {
                            return Ok(vec![]);
                        }
                        rec.decide(UsageCommand::MarkBilled {
                            invoice_id: invoice_id.to_string(),
                            at,
                        })
                    })
                    .await;
                match out {
                    Ok(done) if billed_here(&done.state) => billed.push(done.state),
                    Ok(_) | Err(CommandError::Domain(DomainError::InvalidTransition { .. })) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Err(e) => return Err(e.into()),
    }
    Ok(billed)
}

/// Ends every trial whose `trial_end` has passed by the dispatcher's clock:
/// the subscription becomes active with its first period from `trial_end`
/// (whose `SubscriptionActivated` this policy then bills), or is canceled
/// when a cancellation waited for the end of the trial. Decided on the write
/// side: a trial the read model still shows but that has ended otherwise
/// changes nothing. Returns how many trials ended.
pub async fn end_trials_due(d: &Dispatcher) -> Result<usize, CommandError> {
    let now = d.clock().now();
    let rows = sqlx::query(
        "SELECT tenant, id FROM rm_subscriptions WHERE status = 'trialing' \
         AND trial_end <> '' AND trial_end <= $1 ORDER BY trial_end, tenant, id LIMIT $2",
    )
    .bind(time::to_text(now))
    .bind(SCAN_LIMIT)
    .fetch_all(&d.db().any)
    .await
    .map_err(|e| CommandError::from(tally_projections::DbError::Sqlx(e)))?;
    let mut ended = 0;
    for row in rows {
        let tenant: String = row
            .try_get("tenant")
            .map_err(|e| CommandError::Store(e.to_string()))?;
        let id: String = row
            .try_get("id")
            .map_err(|e| CommandError::Store(e.to_string()))?;
        let meta = scheduler_meta(&tenant, ACTOR);
        let out = d
            .execute::<Subscription, _>(&meta, &id, None, |s| match (s.status, s.trial_end) {
                (Some(SubscriptionStatus::Trialing), Some(end)) if end <= now => {
                    s.decide(SubscriptionCommand::EndTrial { at: now })
                }
                _ => Ok(vec![]),
            })
            .await;
        match out {
            Ok(o) if o.appended > 0 => ended += 1,
            Ok(_) | Err(CommandError::Domain(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(ended)
}

/// Renews every subscription whose period ended by the dispatcher's clock,
/// catching up on several periods when the clock jumped. Fair and bounded:
/// each round renews every due subscription by one period, so a subscription
/// far behind cannot starve the others, and a tick stops after
/// [`MAX_RENEWALS_PER_TICK`] renewals (the next tick goes on). Returns the
/// number of renewals.
pub async fn renew_due(d: &Dispatcher) -> Result<usize, CommandError> {
    let now = d.clock().now();
    let rows = sqlx::query(
        "SELECT tenant, id FROM rm_subscriptions WHERE status IN ('active', 'past_due', 'suspended') \
         AND period_end <> '' AND period_end <= $1 ORDER BY period_end, tenant, id LIMIT $2",
    )
    .bind(time::to_text(now))
    .bind(SCAN_LIMIT)
    .fetch_all(&d.db().any)
    .await
    .map_err(|e| CommandError::from(tally_projections::DbError::Sqlx(e)))?;
    let mut due = Vec::with_capacity(rows.len());
    for row in rows {
        let tenant: String = row
            .try_get("tenant")
            .map_err(|e| CommandError::Store(e.to_string()))?;
        let id: String = row
            .try_get("id")
            .map_err(|e| CommandError::Store(e.to_string()))?;
        due.push((tenant, id));
    }
    in_rounds(
        due,
        MAX_ROUNDS_PER_TICK,
        MAX_RENEWALS_PER_TICK,
        |(tenant, id)| async move {
            let meta = scheduler_meta(&tenant, ACTOR);
            // Decided on the write side: a period that has not ended (the
            // read model was behind) renews nothing.
            let out = d
                .execute::<Subscription, _>(&meta, &id, None, |s| match s.current_period {
                    Some(p) if p.end <= now => s.decide(SubscriptionCommand::Renew { at: now }),
                    _ => Ok(vec![]),
                })
                .await;
            match out {
                Ok(o) if o.appended > 0 => {
                    if o.state.current_period.is_some_and(|p| p.end <= now) {
                        Ok(Step::RenewedStillDue)
                    } else {
                        Ok(Step::RenewedCaughtUp)
                    }
                }
                Ok(_) | Err(CommandError::Domain(_)) => Ok(Step::Nothing),
                Err(e) => Err(e),
            }
        },
    )
    .await
}

/// What one renewal attempt of one subscription did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    RenewedStillDue,
    RenewedCaughtUp,
    Nothing,
}

/// Fair, bounded catch-up: each round renews every item of `due` once, in
/// order; an item still due goes on to the next round. At most `max_rounds`
/// rounds and `max_total` renewals in all. Returns the number of renewals.
async fn in_rounds<K, E, F, Fut>(
    mut due: Vec<K>,
    max_rounds: usize,
    max_total: usize,
    mut renew: F,
) -> Result<usize, E>
where
    K: Clone,
    F: FnMut(K) -> Fut,
    Fut: std::future::Future<Output = Result<Step, E>>,
{
    let mut renewed = 0;
    for _ in 0..max_rounds {
        let mut still_due = Vec::with_capacity(due.len());
        for item in due {
            if renewed >= max_total {
                return Ok(renewed);
            }
            match renew(item.clone()).await? {
                Step::RenewedStillDue => {
                    renewed += 1;
                    still_due.push(item);
                }
                Step::RenewedCaughtUp => renewed += 1,
                Step::Nothing => {}
            }
        }
        if still_due.is_empty() {
            break;
        }
        due = still_due;
    }
    Ok(renewed)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;

    use super::*;

    /// Runs `in_rounds` over subscriptions `behind` periods behind; returns
    /// the renewals and the order they happened in.
    async fn catch_up(
        behind: &[(&'static str, usize)],
        max_rounds: usize,
        max_total: usize,
    ) -> (usize, Vec<&'static str>) {
        let left = Mutex::new(behind.iter().copied().collect::<HashMap<_, _>>());
        let order = Mutex::new(Vec::new());
        let due = behind.iter().map(|(k, _)| *k).collect();
        let n = in_rounds(due, max_rounds, max_total, |k| {
            let step = {
                let mut left = left.lock().unwrap();
                let l = left.get_mut(k).unwrap();
                if *l == 0 {
                    Step::Nothing
                } else {
                    *l -= 1;
                    order.lock().unwrap().push(k);
                    if *l > 0 {
                        Step::RenewedStillDue
                    } else {
                        Step::RenewedCaughtUp
                    }
                }
            };
            async move { Ok::<_, ()>(step) }
        })
        .await
        .unwrap();
        (n, order.into_inner().unwrap())
    }

    /// Issue 19: one subscription thousands of periods behind kept a tick
    /// to itself (120 renewals each, 1000 subscriptions a tick).
    #[tokio::test]
    async fn a_tick_renews_round_robin_and_stops_at_its_budget() {
        let (n, order) = catch_up(&[("far", 5000), ("a", 1), ("b", 2)], 120, 6).await;
        assert_eq!(n, 6);
        assert_eq!(order, ["far", "a", "b", "far", "b", "far"]);
        let (n, order) = catch_up(&[("far", 5000), ("a", 1)], 3, 1000).await;
        assert_eq!(n, 4, "at most 3 rounds: {order:?}");
        let (n, _) = catch_up(&[("a", 2), ("b", 0)], 120, 1000).await;
        assert_eq!(n, 2);
    }
}
