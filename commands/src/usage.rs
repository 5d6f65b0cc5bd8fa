//! Usage ingest. A usage record's stream id is derived from the client's
//! transaction id, so a repeated report (retried, concurrent, or once in a
//! batch and once alone) lands on the same stream and is recorded once: the
//! aggregate answers a repeat with no events, and a simultaneous repeat loses
//! the append race and, on retry, sees the original.
//!
//! Batches take a fast path: every record is decided in memory as a new
//! stream, and all their events are appended in one statement that leaves
//! alone the streams that already exist (those are the duplicates: recorded
//! by an earlier or a concurrent batch); each record is still its own stream.
//! If a stream only partly goes in (a concurrent writer of a longer stream),
//! nothing is stored and the batch falls back to one command per record.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use sha2::{Digest, Sha256};
use tally_aggregates::subscription::Subscription;
use tally_aggregates::usage::{SubscriptionContext, UsageCommand, UsageRecord};
use tally_aggregates::{AggregateKind, DomainError};
use tally_projections::stream_key;

use crate::dispatch::{CommandError, CommandMeta, Dispatcher, Executed};
use crate::ids::SubscriptionId;
use crate::store::{self, StoreError, StreamAppend};

/// Largest batch accepted.
pub const MAX_BATCH: usize = 1000;

/// One usage report as the client sent it (parsed).
#[derive(Debug, Clone)]
pub struct UsageReport {
    pub subscription_id: String,
    pub meter: String,
    pub quantity: Decimal,
    pub timestamp: DateTime<Utc>,
    pub transaction_id: String,
    pub properties: serde_json::Map<String, serde_json::Value>,
}

/// The record id of a transaction id: `use_` and 32 hex digits of its SHA-256.
pub fn record_id(transaction_id: &str) -> String {
    let digest = Sha256::digest(transaction_id.as_bytes());
    format!("use_{}", &hex::encode(digest)[..32])
}

#[derive(Debug)]
pub enum Reported {
    Created(Executed<UsageRecord>),
    Duplicate(Executed<UsageRecord>),
}

fn unknown_subscription() -> CommandError {
    CommandError::Domain(DomainError::Validation {
        field: "subscription_id".into(),
        message: "unknown subscription".into(),
    })
}

/// What the command layer knows of a subscription when usage is reported.
pub async fn subscription_context(
    d: &Dispatcher,
    tenant: &str,
    subscription_id: &str,
) -> Result<SubscriptionContext, CommandError> {
    if SubscriptionId::parse(subscription_id).is_err() {
        return Err(unknown_subscription());
    }
    let (sub, _) = d.load::<Subscription>(tenant, subscription_id).await?;
    context_of(subscription_id, &sub)
}

/// A subscription's usage context; a stream that is no subscription is unknown.
fn context_of(
    subscription_id: &str,
    sub: &Subscription,
) -> Result<SubscriptionContext, CommandError> {
    let (Some(status), Some(plan)) = (sub.status, sub.plan.clone()) else {
        return Err(unknown_subscription());
    };
    Ok(SubscriptionContext {
        subscription_id: subscription_id.to_string(),
        status,
        anchor: sub.usage_anchor(),
        plan,
    })
}

fn record_command(r: &UsageReport, ctx: &SubscriptionContext, now: DateTime<Utc>) -> UsageCommand {
    UsageCommand::Record {
        record_id: record_id(&r.transaction_id),
        transaction_id: r.transaction_id.clone(),
        subscription: ctx.clone(),
        meter: r.meter.clone(),
        quantity: r.quantity,
        timestamp: r.timestamp,
        properties: r.properties.clone(),
        now,
    }
}

/// Records one report.
pub async fn report(
    d: &Dispatcher,
    meta: &CommandMeta,
    r: &UsageReport,
) -> Result<Reported, CommandError> {
    let ctx = subscription_context(d, &meta.tenant, &r.subscription_id).await?;
    let id = record_id(&r.transaction_id);
    let now = d.clock().now();
    let out = d
        .execute::<UsageRecord, _>(meta, &id, None, |u| u.decide(record_command(r, &ctx, now)))
        .await?;
    Ok(if out.appended == 0 {
        Reported::Duplicate(out)
    } else {
        Reported::Created(out)
    })
}

/// The result for one record of a batch.
#[derive(Debug)]
pub enum BatchOutcome {
    Created { id: String, position: i64 },
    Duplicate { id: String },
    Rejected { error: CommandError },
}

/// Records a batch (at most [`MAX_BATCH`]); one bad record does not reject the others.
pub async fn report_batch(
    d: &Dispatcher,
    meta: &CommandMeta,
    reports: Vec<Result<UsageReport, CommandError>>,
) -> Vec<BatchOutcome> {
    let now = d.clock().now();
    // The batch's subscriptions as they are now: cached states checked
    // against their streams in one query, the others loaded.
    let wanted: Vec<String> = reports
        .iter()
        .flatten()
        .map(|r| r.subscription_id.clone())
        .filter(|id| SubscriptionId::parse(id).is_ok())
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let loaded = d.load_current::<Subscription>(&meta.tenant, &wanted).await;
    let contexts: HashMap<String, Result<SubscriptionContext, CommandError>> = reports
        .iter()
        .flatten()
        .map(|r| {
            let id = &r.subscription_id;
            let context = match &loaded {
                Ok(states) => states
                    .get(id)
                    .ok_or_else(unknown_subscription)
                    .and_then(|sub| context_of(id, sub)),
                Err(e) => Err(clone_error(e)),
            };
            (id.clone(), context)
        })
        .collect();
    let mut outcomes: Vec<Option<BatchOutcome>> = Vec::with_capacity(reports.len());
    let mut seen: HashSet<String> = HashSet::new();
    // The records to append (index in the batch, id) and, in the same
    // order, their streams: the rows are moved there, not copied (a batch's
    // rows twice over was most of a batch's memory).
    let mut to_append: Vec<(usize, String)> = Vec::new();
    let mut streams: Vec<StreamAppend> = Vec::new();
    // Records refused before the append: a repeat of one already recorded
    // is a duplicate all the same (see below).
    let mut refused: Vec<(usize, String)> = Vec::new();
    let metadata = meta.to_map(d.clock());
    for (i, r) in reports.iter().enumerate() {
        let r = match r {
            Ok(r) => r,
            Err(e) => {
                outcomes.push(Some(BatchOutcome::Rejected {
                    error: clone_error(e),
                }));
                continue;
            }
        };
        let id = record_id(&r.transaction_id);
        if seen.contains(&id) {
            outcomes.push(Some(BatchOutcome::Duplicate { id }));
            continue;
        }
        let ctx = match &contexts[&r.subscription_id] {
            Ok(c) => c,
            // Unknown subscription, or the database out of reach.
            Err(e) => {
                refused.push((i, id));
                outcomes.push(Some(BatchOutcome::Rejected {
                    error: clone_error(e),
                }));
                continue;
            }
        };
        match UsageRecord::default().decide(record_command(r, ctx, now)) {
            Ok(events) => match store::new_events::<UsageRecord>(0, &events, &metadata) {
                Ok(rows) => {
                    seen.insert(id.clone());
                    streams.push(StreamAppend {
                        aggregate_type: AggregateKind::UsageRecord.as_str(),
                        key: stream_key(&meta.tenant, &id),
                        events: rows,
                        snapshot: None,
                    });
                    to_append.push((i, id));
                    outcomes.push(None);
                }
                Err(e) => outcomes.push(Some(BatchOutcome::Rejected { error: e.into() })),
            },
            Err(e) => {
                refused.push((i, id));
                outcomes.push(Some(BatchOutcome::Rejected { error: e.into() }));
            }
        }
    }
    if !refused.is_empty() {
        let ids: Vec<String> = refused.iter().map(|(_, id)| id.clone()).collect();
        if let Ok(existing) = existing_records(d, &meta.tenant, &ids).await {
            for (i, id) in refused {
                if existing.contains(&id) {
                    outcomes[i] = Some(BatchOutcome::Duplicate { id });
                }
            }
        }
    }
    // New streams only: a transaction id recorded before (by an earlier
    // batch, or by a concurrent one that committed first) is left alone and
    // answered as a duplicate.
    match d.append_new(&meta.tenant, now, streams).await {
        Ok(positions) => {
            for ((i, id), position) in to_append.into_iter().zip(positions) {
                outcomes[i] = Some(match position {
                    Some(position) => BatchOutcome::Created { id, position },
                    None => BatchOutcome::Duplicate { id },
                });
            }
        }
        Err(StoreError::Conflict) => {
            // A concurrent report of one of these ids: nothing was stored;
            // record one by one (each then sees its duplicate).
            for (i, _) in to_append {
                let Ok(r) = &reports[i] else { continue };
                outcomes[i] = Some(match report(d, meta, r).await {
                    Ok(Reported::Created(out)) => BatchOutcome::Created {
                        id: out.id,
                        position: out.position,
                    },
                    Ok(Reported::Duplicate(out)) => BatchOutcome::Duplicate { id: out.id },
                    Err(error) => BatchOutcome::Rejected { error },
                });
            }
        }
        Err(e) => {
            let error = CommandError::from(e);
            for (i, _) in to_append {
                outcomes[i] = Some(BatchOutcome::Rejected {
                    error: clone_error(&error),
                });
            }
        }
    }
    outcomes
        .into_iter()
        .map(|o| o.expect("every record has an outcome"))
        .collect()
}

fn clone_error(e: &CommandError) -> CommandError {
    match e {
        CommandError::Domain(d) => CommandError::Domain(d.clone()),
        CommandError::Unavailable(m) => CommandError::Unavailable(m.clone()),
        other => CommandError::Store(other.to_string()),
    }
}

/// Which of these record ids already have a stream.
async fn existing_records(
    d: &Dispatcher,
    tenant: &str,
    ids: &[String],
) -> Result<HashSet<String>, tally_projections::DbError> {
    let keys: Vec<String> = ids.iter().map(|id| stream_key(tenant, id)).collect();
    let heads = d
        .log()
        .stream_heads(AggregateKind::UsageRecord.as_str(), &keys)
        .await?;
    let found = ids
        .iter()
        .zip(&keys)
        .filter(|(_, key)| heads.contains_key(*key))
        .map(|(id, _)| id.clone())
        .collect();
    Ok(found)
}
