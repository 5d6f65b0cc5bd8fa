//! `audit`: one stream's timeline. Each event is folded into the aggregate
//! with its own `apply` (the write path's fold), so the "changes" column is
//! what the event did to the state the write side decides on.

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};
use tally_aggregates::{
    access_key::AccessKey,
    inbox::Inbox,
    invoice::{Invoice, InvoiceNumbering},
    plan::Plan,
    subscription::Subscription,
    ticket::Ticket,
    usage::UsageRecord,
    AggregateKind,
};
use tally_projections::{Db, EventLog, StoredEvent};

#[derive(clap::Args)]
pub struct Args {
    /// plan, subscription, customer, coupon, tax_rate, invoice, usage_record, ticket, inbox, invoice_numbering,
    /// api_key, inbound_notice or provider_payment
    #[arg(value_name = "TYPE")]
    kind: String,
    /// The resource id (e.g. sub_…); for an inbox, the recipient.
    id: String,
    /// The stream's tenant (found from the id when omitted).
    #[arg(long)]
    tenant: Option<String>,
    /// Only events recorded at or before this time (RFC 3339); the state
    /// printed last is the state as of then.
    #[arg(long)]
    at: Option<String>,
    /// One JSON document instead of the table.
    #[arg(long)]
    json: bool,
}

/// One line of the timeline.
struct Entry {
    event: StoredEvent,
    changes: Vec<(String, Value, Value)>,
    state: Value,
}

pub async fn run(db: &Db, args: Args) -> anyhow::Result<()> {
    let Some(kind) = AggregateKind::parse(&args.kind) else {
        let all: Vec<&str> = AggregateKind::ALL.iter().map(|k| k.as_str()).collect();
        bail!("unknown type {} (one of {})", args.kind, all.join(", "));
    };
    let at: Option<DateTime<Utc>> = match &args.at {
        Some(t) => Some(
            DateTime::parse_from_rfc3339(t)
                .with_context(|| format!("--at {t}: not an RFC 3339 time"))?
                .with_timezone(&Utc),
        ),
        None => None,
    };
    let key = stream_key(db, kind, &args.id, args.tenant.as_deref()).await?;
    let log = EventLog::new(db.clone());
    let mut events = Vec::new();
    let mut after = 0;
    loop {
        let page = log.read_stream(kind.as_str(), &key, after, 1000).await?;
        let Some(last) = page.last() else { break };
        after = last.sequence;
        events.extend(page.into_iter().filter(|e| {
            at.is_none_or(|t| {
                tally_projections::time::from_text(&e.recorded_at).is_some_and(|r| r <= t)
            })
        }));
    }
    if events.is_empty() {
        bail!("no events for {} {} before that time", args.kind, args.id);
    }
    let entries = match kind {
        AggregateKind::Plan => timeline::<Plan>(events)?,
        AggregateKind::Subscription => timeline::<Subscription>(events)?,
        AggregateKind::Customer => timeline::<tally_aggregates::customer::Customer>(events)?,
        AggregateKind::Coupon => timeline::<tally_aggregates::Coupon>(events)?,
        AggregateKind::TaxRate => timeline::<tally_aggregates::TaxRate>(events)?,
        AggregateKind::Invoice => timeline::<Invoice>(events)?,
        AggregateKind::UsageRecord => timeline::<UsageRecord>(events)?,
        AggregateKind::Ticket => timeline::<Ticket>(events)?,
        AggregateKind::Inbox => timeline::<Inbox>(events)?,
        AggregateKind::AccessKey => timeline::<AccessKey>(events)?,
        AggregateKind::InboundNotice => timeline::<tally_aggregates::InboundNotice>(events)?,
        AggregateKind::ProviderPayment => timeline::<tally_aggregates::ProviderPayment>(events)?,
        AggregateKind::InvoiceNumbering => timeline::<InvoiceNumbering>(events)?,
    };
    if args.json {
        let out: Vec<Value> = entries
            .iter()
            .map(|e| {
                json!({
                    "position": e.event.position,
                    "sequence": e.event.sequence,
                    "recorded_at": e.event.recorded_at,
                    "event_type": e.event.event_type,
                    "event_version": e.event.event_version,
                    "actor": e.event.metadata.get("actor"),
                    "request_id": e.event.metadata.get("request_id"),
                    "correlation_id": e.event.metadata.get("correlation_id"),
                    "causation_id": e.event.metadata.get("causation_id"),
                    "changes": e.changes.iter().map(|(k, from, to)| json!({"field": k, "from": from, "to": to})).collect::<Vec<_>>(),
                })
            })
            .collect();
        let state = entries
            .last()
            .map(|e| e.state.clone())
            .unwrap_or(Value::Null);
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "type": args.kind, "id": args.id, "stream": key, "events": out, "state": state,
            }))?
        );
        return Ok(());
    }
    println!("{} {} (stream {key})", args.kind, args.id);
    println!(
        "{:<27} {:>4}  {:<24} {:<40} {:<36}  changes",
        "time", "seq", "event", "actor", "request id"
    );
    for e in &entries {
        let meta = |k: &str| e.event.metadata.get(k).cloned().unwrap_or_default();
        let changes: Vec<String> = e
            .changes
            .iter()
            .map(|(k, from, to)| format!("{k}: {} → {}", short(from), short(to)))
            .collect();
        println!(
            "{:<27} {:>4}  {:<24} {:<40} {:<36}  {}",
            e.event.recorded_at,
            e.event.sequence,
            e.event.event_type,
            meta("actor"),
            meta("request_id"),
            changes.join("; ")
        );
    }
    if let Some(last) = entries.last() {
        println!(
            "\nstate as of sequence {} ({}):\n{}",
            last.event.sequence,
            last.event.recorded_at,
            serde_json::to_string_pretty(&last.state)?
        );
    }
    Ok(())
}

/// The stream key of `id`: under `tenant`, or the one tenant that has it.
async fn stream_key(
    db: &Db,
    kind: AggregateKind,
    id: &str,
    tenant: Option<&str>,
) -> anyhow::Result<String> {
    if let Some(t) = tenant {
        return Ok(tally_projections::stream_key(t, id));
    }
    let tenants: Vec<String> = sqlx::query_scalar("SELECT id FROM tenants ORDER BY id")
        .fetch_all(&db.any)
        .await?;
    let mut found = Vec::new();
    for t in tenants {
        let key = tally_projections::stream_key(&t, id);
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM events WHERE aggregate_type = $1 AND aggregate_id = $2",
        )
        .bind(kind.as_str())
        .bind(&key)
        .fetch_one(&db.any)
        .await?;
        if n > 0 {
            found.push(key);
        }
    }
    match found.len() {
        0 => bail!("no {kind} stream {id} in any tenant"),
        1 => Ok(found.remove(0)),
        _ => bail!(
            "{kind} {id} exists in several tenants ({}): pass --tenant",
            found.join(", ")
        ),
    }
}

/// Folds the events one by one, noting which top-level fields each changed.
fn timeline<A>(events: Vec<StoredEvent>) -> anyhow::Result<Vec<Entry>>
where
    A: cqrs_es::Aggregate + serde::Serialize,
{
    let mut state = A::default();
    let mut before = to_map(&state)?;
    let mut out = Vec::with_capacity(events.len());
    for event in events {
        let decoded: A::Event = event
            .decode()
            .with_context(|| format!("event at position {}", event.position))?;
        state.apply(decoded);
        let after = to_map(&state)?;
        let mut changes = Vec::new();
        for (k, to) in &after {
            let from = before.get(k).cloned().unwrap_or(Value::Null);
            if &from != to {
                changes.push((k.clone(), from, to.clone()));
            }
        }
        out.push(Entry {
            event,
            changes,
            state: Value::Object(after.clone()),
        });
        before = after;
    }
    Ok(out)
}

fn to_map<T: serde::Serialize>(v: &T) -> anyhow::Result<Map<String, Value>> {
    match serde_json::to_value(v)? {
        Value::Object(m) => Ok(m),
        other => Ok(Map::from_iter([("state".to_string(), other)])),
    }
}

/// A value in at most 60 characters.
fn short(v: &Value) -> String {
    let s = match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if s.chars().count() > 60 {
        format!("{}…", s.chars().take(59).collect::<String>())
    } else {
        s
    }
}
