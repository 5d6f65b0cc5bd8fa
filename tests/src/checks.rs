//! Checks of the log after a run that killed servers (`tests/crash.rs`,
//! `tests/two_process.rs`): every acknowledged command is in the log once,
//! usage is recorded once and counted, invoice numbers have no gap, each
//! activation and renewal has one invoice, collections suspend once per
//! past-due crossing.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::str::FromStr;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use tally_aggregates::invoice::InvoiceEvent;
use tally_aggregates::subscription::{SubscriptionEvent, SuspendReason};
use tally_aggregates::usage::UsageEvent;
use tally_projections::StoredEvent;

use crate::TestDb;

/// A command the server answered 2xx: its events must be in the log.
#[derive(Debug, Clone)]
pub struct Ack {
    pub tenant: String,
    /// Aggregate type of the resource the answer describes, when known.
    pub kind: Option<&'static str>,
    pub id: String,
    pub version: i64,
    pub position: Option<i64>,
    /// The answer's `X-Request-Id`, when the check should also prove the
    /// command was appended once (see [`assert_acks_in_log`]).
    pub request_id: Option<String>,
    pub what: String,
}

/// Asserts every acknowledged command's events are in `events` (the whole
/// log): the answer's resource at its version, and its `X-Log-Position`.
/// With a request id, the events that request appended to the resource's
/// stream are one run of sequences ending at the answered version: a command
/// appended twice would leave two.
pub fn assert_acks_in_log(events: &[StoredEvent], acks: &[Ack]) {
    let streams: HashSet<(&str, &str, i64)> = events
        .iter()
        .map(|e| {
            (
                e.aggregate_type.as_str(),
                e.aggregate_id.as_str(),
                e.sequence,
            )
        })
        .collect();
    let positions: HashSet<i64> = events.iter().map(|e| e.position).collect();
    let mut by_request: HashMap<(&str, &str), Vec<i64>> = HashMap::new();
    for e in events {
        if let Some(r) = e.metadata.get("request_id") {
            by_request
                .entry((r.as_str(), e.aggregate_id.as_str()))
                .or_default()
                .push(e.sequence);
        }
    }
    for a in acks {
        if let Some(kind) = a.kind {
            let stream = format!("{}:{}", a.tenant, a.id);
            assert!(
                streams.contains(&(kind, stream.as_str(), a.version)),
                "acknowledged but not in the log: {} ({kind} {stream} version {})",
                a.what,
                a.version
            );
            if let Some(sequences) = a
                .request_id
                .as_deref()
                .and_then(|r| by_request.get(&(r, stream.as_str())))
            {
                let mut sequences = sequences.clone();
                sequences.sort_unstable();
                let first = a.version + 1 - sequences.len() as i64;
                assert_eq!(
                    sequences,
                    (first..=a.version).collect::<Vec<_>>(),
                    "{}: the request's events on {stream} are not one append ending at version {}",
                    a.what,
                    a.version
                );
            }
        }
        if let Some(p) = a.position.filter(|p| *p > 0) {
            assert!(
                positions.contains(&p),
                "acknowledged at position {p} but not in the log: {}",
                a.what
            );
        }
    }
}

/// No usage record recorded twice (one stream per transaction id), and
/// every recorded, not voided quantity counted in the totals read model.
pub async fn usage_counted_once(db: &TestDb, events: &[StoredEvent]) {
    let mut recorded: HashMap<&str, usize> = HashMap::new();
    let mut totals: BTreeMap<(String, String, String, String), Decimal> = BTreeMap::new();
    for e in events.iter().filter(|e| e.aggregate_type == "usage_record") {
        let (sub, meter, window, delta) = match e.decode::<UsageEvent>().expect("usage event") {
            UsageEvent::UsageRecorded {
                subscription_id,
                meter,
                quantity,
                window,
                ..
            } => {
                *recorded.entry(e.aggregate_id.as_str()).or_default() += 1;
                (subscription_id, meter, window, quantity)
            }
            UsageEvent::UsageVoided {
                subscription_id,
                meter,
                quantity,
                window,
                ..
            } => (subscription_id, meter, window, -quantity),
            UsageEvent::UsageBilled { .. } => continue,
        };
        let start = serde_json::to_value(window).expect("window")["start"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        *totals
            .entry((e.tenant.clone(), sub, meter, start))
            .or_default() += delta;
    }
    let twice: Vec<_> = recorded.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "usage recorded twice: {twice:?}");
    let conn = db.connect().await;
    let rows = crate::table_rows(
        &conn,
        "rm_usage_totals",
        "tenant, subscription_id, meter, window_start, total",
    )
    .await;
    conn.close().await;
    let read: BTreeMap<(String, String, String, String), Decimal> = rows
        .into_iter()
        .map(|r| {
            (
                (r[0].clone(), r[1].clone(), r[2].clone(), r[3].clone()),
                Decimal::from_str(&r[4]).expect("total"),
            )
        })
        .collect();
    let logged: BTreeMap<_, _> = totals.into_iter().filter(|(_, v)| !v.is_zero()).collect();
    let read_nonzero: BTreeMap<_, _> = read.into_iter().filter(|(_, v)| !v.is_zero()).collect();
    assert_eq!(
        logged.len(),
        read_nonzero.len(),
        "usage windows in the log and in rm_usage_totals"
    );
    for (k, v) in &logged {
        let window_start = time_prefix(&k.3);
        let found = read_nonzero.iter().find(|(rk, _)| {
            rk.0 == k.0 && rk.1 == k.1 && rk.2 == k.2 && time_prefix(&rk.3) == window_start
        });
        assert_eq!(
            found.map(|(_, rv)| rv.normalize()),
            Some(v.normalize()),
            "usage total of {k:?}"
        );
    }
    println!(
        "usage: {} records, {} windows counted once",
        recorded.len(),
        logged.len()
    );
}

/// The instant of an RFC 3339 text, whatever its fraction digits.
fn time_prefix(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// Per tenant, the issued invoices are numbered 1..N, each number once, and
/// each number assigned on the tenant's numbering stream to that invoice.
pub fn invoice_numbers_gapless(events: &[StoredEvent]) {
    let mut issued: BTreeMap<&str, Vec<(u64, String)>> = BTreeMap::new();
    let mut assigned: BTreeMap<&str, Vec<(u64, String)>> = BTreeMap::new();
    for e in events {
        if e.aggregate_type == "invoice" && e.event_type == "InvoiceIssued" {
            if let InvoiceEvent::InvoiceIssued { sequence, .. } = e.decode().expect("invoice event")
            {
                issued
                    .entry(&e.tenant)
                    .or_default()
                    .push((sequence, e.resource_id().to_string()));
            }
        }
        if e.event_type == "InvoiceNumberAssigned" {
            let payload = e.payload_value().expect("JSON payload");
            let p = &payload["InvoiceNumberAssigned"];
            assigned.entry(&e.tenant).or_default().push((
                p["sequence"].as_u64().expect("sequence"),
                p["invoice_id"].as_str().expect("invoice id").to_string(),
            ));
        }
    }
    for (tenant, list) in &mut issued {
        list.sort();
        let numbers: Vec<u64> = list.iter().map(|(n, _)| *n).collect();
        let expected: Vec<u64> = (1..=list.len() as u64).collect();
        assert_eq!(
            numbers, expected,
            "invoice numbers of {tenant}: no gap, no duplicate"
        );
        let mut a = assigned.remove(tenant).unwrap_or_default();
        a.sort();
        assert_eq!(
            &a, list,
            "numbers assigned to exactly the issued invoices of {tenant}"
        );
        println!("tenant {tenant}: invoices numbered 1..{}", list.len());
    }
    assert!(
        assigned.values().all(Vec::is_empty),
        "numbers assigned without an issued invoice: {assigned:?}"
    );
}

/// Every activation and renewal has exactly one billing invoice (its id is
/// derived from the subscription and the period), and it was issued; the
/// billing policy created no other invoice.
pub fn one_invoice_per_billing_event(events: &[StoredEvent]) {
    use tally_commands::policies::billing::{activation_invoice_id, renewal_invoice_id, ACTOR};
    let mut expected: Vec<String> = Vec::new();
    let mut created: BTreeMap<&str, usize> = BTreeMap::new();
    let mut issued: HashSet<&str> = HashSet::new();
    let mut by_policy: BTreeSet<&str> = BTreeSet::new();
    for e in events {
        match (e.aggregate_type.as_str(), e.event_type.as_str()) {
            ("subscription", "SubscriptionActivated" | "PeriodRenewed") => {
                let sub = e.resource_id();
                let id = match e.decode::<SubscriptionEvent>().expect("subscription event") {
                    SubscriptionEvent::SubscriptionActivated { period, .. } => {
                        activation_invoice_id(sub, &period)
                    }
                    SubscriptionEvent::PeriodRenewed { closed_period, .. } => {
                        renewal_invoice_id(sub, &closed_period)
                    }
                    _ => unreachable!("matched on the event type"),
                };
                expected.push(format!("{}:{id}", e.tenant));
            }
            ("invoice", "InvoiceCreated") => {
                *created.entry(&e.aggregate_id).or_default() += 1;
                if e.metadata.get("actor").map(String::as_str) == Some(ACTOR) {
                    by_policy.insert(&e.aggregate_id);
                }
            }
            ("invoice", "InvoiceIssued") => {
                issued.insert(&e.aggregate_id);
            }
            _ => {}
        }
    }
    let unique: BTreeSet<&str> = expected.iter().map(String::as_str).collect();
    assert_eq!(
        unique.len(),
        expected.len(),
        "one activation or renewal per period"
    );
    for id in &unique {
        assert_eq!(created.get(id), Some(&1), "one billing invoice {id}");
        assert!(issued.contains(id), "the billing invoice {id} was issued");
    }
    let extra: Vec<_> = by_policy.difference(&unique).collect();
    assert!(
        extra.is_empty(),
        "billing invoices without an activation or renewal: {extra:?}"
    );
    println!(
        "{} activations and renewals, one issued invoice each",
        unique.len()
    );
}

/// Collections suspend a subscription at most once per past-due crossing.
pub fn one_suspension_per_crossing(events: &[StoredEvent]) {
    let mut by_sub: BTreeMap<&str, Vec<&StoredEvent>> = BTreeMap::new();
    for e in events.iter().filter(|e| e.aggregate_type == "subscription") {
        by_sub.entry(&e.aggregate_id).or_default().push(e);
    }
    let (mut crossings, mut suspensions) = (0, 0);
    for (sub, list) in by_sub {
        let mut since_crossing = 0;
        for e in list {
            match e.decode::<SubscriptionEvent>().expect("subscription event") {
                SubscriptionEvent::SubscriptionPastDue { .. } => {
                    crossings += 1;
                    since_crossing = 0;
                }
                SubscriptionEvent::SubscriptionSuspended {
                    reason: SuspendReason::NonPayment,
                    ..
                } if e.metadata.get("actor").map(String::as_str) == Some("system:collections") => {
                    suspensions += 1;
                    since_crossing += 1;
                    assert_eq!(since_crossing, 1, "{sub}: a second non-payment suspension without a new past-due crossing (position {})", e.position);
                }
                _ => {}
            }
        }
    }
    println!("{crossings} past-due crossings, {suspensions} non-payment suspensions");
}
