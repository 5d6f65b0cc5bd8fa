//! The quota policy. When a subscription's usage of a meter in the current
//! window goes above the plan's hard cap, it suspends the subscription with
//! reason `quota_exceeded` and the meter; when that meter's next window
//! begins, it resumes a subscription it suspended for that meter.
//!
//! It decides from the usage and subscription read models, after waiting for
//! them to reach the batch it is handling, and it issues its commands before
//! its checkpoint commits (at-least-once). A repeat is harmless: suspending a
//! suspended subscription emits nothing, so however many records cross the
//! cap at once there is exactly one suspension.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::AnyConnection;
use tally_aggregates::subscription::{Subscription, SubscriptionCommand, SuspendReason};
use tally_aggregates::usage::{usage_window, UsageEvent};
use tally_aggregates::{AggregateKind, DomainError};
use tally_projections::runtime::{ProjectionError, Projector};
use tally_projections::{state, usage, StoredEvent};

use super::{scheduler_meta, subscriptions_in, system_meta, wait_for_consumers};
use crate::dispatch::{CommandError, Dispatcher};

pub const CONSUMER: &str = "policy.quota";
pub const ACTOR: &str = "system:quota";

/// How long the policy waits for the read models to reach its batch before
/// failing the batch (it is then retried).
const READ_MODEL_WAIT: Duration = Duration::from_secs(10);

pub struct QuotaPolicy {
    dispatcher: Dispatcher,
}

impl QuotaPolicy {
    pub fn new(dispatcher: Dispatcher) -> Self {
        Self { dispatcher }
    }
}

#[async_trait]
impl Projector for QuotaPolicy {
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
        event.is(AggregateKind::UsageRecord)
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
        // The newest usage event per (tenant, subscription, meter, window).
        let mut touched: BTreeMap<
            (String, String, String, DateTime<Utc>),
            (&StoredEvent, Option<DateTime<Utc>>),
        > = BTreeMap::new();
        for e in batch.iter().filter(|e| e.is(AggregateKind::UsageRecord)) {
            let decoded: UsageEvent = e.decode().map_err(|err| ProjectionError::decode(e, err))?;
            if let UsageEvent::UsageRecorded {
                subscription_id,
                meter,
                window,
                ..
            } = decoded
            {
                touched.insert(
                    (e.tenant.clone(), subscription_id, meter, window.start),
                    (e, window.end),
                );
            }
        }
        let Some(last) = batch.last() else {
            return Ok(());
        };
        if touched.is_empty() {
            return Ok(());
        }
        wait_for_consumers(
            self.dispatcher.db(),
            &[
                usage::CONSUMER,
                <Subscription as state::ProjectedState>::CONSUMER,
            ],
            last.position,
            READ_MODEL_WAIT,
        )
        .await?;
        let now = self.dispatcher.clock().now();
        let db = self.dispatcher.db();
        for ((tenant, sub_id, meter, window_start), (event, window_end)) in touched {
            if window_end.is_some_and(|end| end <= now) {
                // Late usage for a window that is over: no suspension now.
                continue;
            }
            let Some(sub) = state::get::<Subscription>(db, &tenant, &sub_id).await? else {
                continue;
            };
            let Some(cap) = sub
                .state
                .plan
                .as_ref()
                .and_then(|p| p.meter(&meter))
                .and_then(|m| m.hard_cap)
            else {
                continue;
            };
            let used = usage::total(db, &tenant, &sub_id, &meter, window_start).await?;
            if used.total <= cap {
                continue;
            }
            let reason = SuspendReason::QuotaExceeded {
                meter: meter.clone(),
            };
            let result = self
                .dispatcher
                .execute::<Subscription, _>(&system_meta(event, ACTOR), &sub_id, None, |s| {
                    s.decide(SubscriptionCommand::Suspend {
                        reason: reason.clone(),
                        at: now,
                    })
                })
                .await;
            match result {
                Ok(out) if out.appended > 0 => {
                    tracing::info!(tenant = %tenant, subscription = %sub_id, meter = %meter, "suspended for quota");
                }
                Ok(_) | Err(CommandError::Domain(DomainError::InvalidTransition { .. })) => {}
                Err(e) => return Err(ProjectionError::Effect(e.to_string())),
            }
        }
        Ok(())
    }
}

/// Subscriptions looked at per scheduler tick.
const RESUME_SCAN_LIMIT: i64 = 1000;

/// Resumes subscriptions suspended for a meter's quota whose window has ended
/// by the dispatcher's clock. Returns how many were resumed.
pub async fn resume_due(dispatcher: &Dispatcher) -> Result<usize, CommandError> {
    let now = dispatcher.clock().now();
    let mut resumed = 0;
    for (tenant, id, sub) in subscriptions_in(dispatcher, "suspended", RESUME_SCAN_LIMIT).await? {
        if !window_ended(&sub, now) {
            continue;
        }
        let meta = scheduler_meta(&tenant, ACTOR);
        // Decided on the write side's state: only a subscription still
        // suspended for that quota, with its window over, is resumed.
        let out = dispatcher
            .execute::<Subscription, _>(&meta, &id, None, |s| {
                if window_ended(s, now) {
                    s.decide(SubscriptionCommand::Resume { at: now })
                } else {
                    Ok(Vec::new())
                }
            })
            .await;
        match out {
            Ok(o) if o.appended > 0 => resumed += 1,
            Ok(_) | Err(CommandError::Domain(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(resumed)
}

/// True when `sub` is suspended for a meter's quota and the window in which
/// that happened is over at `now`.
fn window_ended(sub: &Subscription, now: DateTime<Utc>) -> bool {
    let Some(s) = &sub.suspension else {
        return false;
    };
    let SuspendReason::QuotaExceeded { meter } = &s.reason else {
        return false;
    };
    let (Some(anchor), Some(plan)) = (sub.usage_anchor(), sub.plan.as_ref()) else {
        return false;
    };
    let Some(terms) = plan.meter(meter) else {
        return false;
    };
    usage_window(anchor, terms.reset, s.since)
        .end
        .is_some_and(|end| end <= now)
}

/// Runs [`resume_due`] every `every` until `stop` turns true.
pub async fn run_resume_scheduler(
    dispatcher: Dispatcher,
    every: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        if let Err(e) = resume_due(&dispatcher).await {
            tracing::warn!(error = %e, "quota resume scan failed");
        }
        if tokio::time::timeout(every, stop.wait_for(|s| *s))
            .await
            .is_ok()
        {
            return;
        }
    }
}
