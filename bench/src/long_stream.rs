//! `tally-bench long-stream`: command latency on a subscription whose stream
//! holds `--events` (100,000) events, against a fresh subscription.
//!
//! In a fresh database, with the in-process server: a plan and two active
//! subscriptions over HTTP. The first one's stream is then grown to
//! `--events` events the way the write path would have written them:
//! `ChangeSeats` (no proration) decided by the `Subscription` aggregate on
//! its folded state, appended with `store::append` (the dispatcher's append:
//! one statement, positions from the insert trigger) in chunks of
//! [`CHUNK`] events, each chunk carrying the snapshot the dispatcher stores
//! when a stream crosses a multiple of `SNAPSHOT_EVERY` (100) — as if one
//! command had decided the whole chunk. This takes seconds where 100,000
//! HTTP commands would take minutes; what a load sees is the same: a
//! snapshot at most 99 events behind the head. The benchmark waits until
//! every consumer has caught up with the log.
//!
//! Then `--requests` sequential `POST /v1/subscriptions/{id}/change-seats`
//! (`"proration": "prorate"`) on each subscription, alternating between the
//! two (which goes first alternates too), so both see the same machine.
//! Figures: p50/p99 of each, and the ratios long/fresh (target ≤ 2); also
//! the in-process aggregate load time (`Dispatcher::load`) of each stream,
//! which is what a long stream could make slower.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use cqrs_es::Aggregate;
use serde_json::json;
use tally_aggregates::subscription::{Subscription, SubscriptionCommand};
use tally_aggregates::ProrationMode;
use tally_api::AppState;
use tally_commands::store::{self, NewSnapshot, SNAPSHOT_EVERY};
use tally_projections::stream_key;

use super::rebuild::{thousands, Meta};
use super::{
    in_fresh_database, setup, with_server, write_percentiles, Api, DatabaseArgs, OutputArgs, Phase,
    WorkerResult,
};

const TENANT: &str = "default";
/// Events per append while growing the long stream.
const CHUNK: usize = 1_000;
/// The consumers must catch up with the grown stream within this.
const CATCH_UP: Duration = Duration::from_secs(600);
/// In-process loads timed per stream.
const LOADS: usize = 200;
/// The ratio target.
const TARGET_RATIO: f64 = 2.0;

#[derive(Args, Debug, Clone)]
pub(crate) struct LongStreamArgs {
    #[command(flatten)]
    db: DatabaseArgs,
    /// Events in the long stream.
    #[arg(long, default_value_t = 100_000)]
    events: usize,
    /// Sequential requests on each stream.
    #[arg(long, default_value_t = 1_000)]
    requests: usize,
    #[command(flatten)]
    out: OutputArgs,
}

pub(crate) async fn run(args: LongStreamArgs) -> Result<()> {
    if args.events < SNAPSHOT_EVERY || args.requests == 0 || args.requests > 100_000 {
        bail!("--events >= {SNAPSHOT_EVERY} and --requests in 1..=100000 please");
    }
    let (events, requests) = (args.events, args.requests);
    let (long, fresh) = in_fresh_database(&args.db.database_admin_url, 4, |url| async move {
        let (phases, _) = with_server(&url, 4, None, |api, state| async move {
            let state = state.context("the in-process server's state")?;
            measure(&api, &state, events, requests).await
        })
        .await?;
        Ok(phases)
    })
    .await?;

    let ratio = |q: f64| long.quantile_ms(q) / fresh.quantile_ms(q).max(1e-9);
    let (r50, r99) = (ratio(0.50), ratio(0.99));
    println!(
        "ratio:    long/fresh p50 {r50:.2}, p99 {r99:.2} (target <= {TARGET_RATIO}: {})",
        if r50 <= TARGET_RATIO && r99 <= TARGET_RATIO {
            "met"
        } else {
            "NOT met"
        }
    );
    write_percentiles(
        args.out.percentiles_csv.as_deref(),
        &[
            ("long stream (100k events)", &long),
            ("fresh stream", &fresh),
        ],
    )?;
    Ok(())
}

async fn measure(
    api: &Api,
    state: &AppState,
    events: usize,
    requests: usize,
) -> Result<(Phase, Phase)> {
    let ids = setup(api, &super::bench_plan(), 2).await?;
    let (long_id, fresh_id) = (ids[0].clone(), ids[1].clone());

    let grown = Instant::now();
    let last = grow(state, &long_id, events).await?;
    let grow_secs = grown.elapsed().as_secs_f64();
    let caught = Instant::now();
    if !state.runtime.wait_for(last, CATCH_UP).await? {
        bail!("the consumers did not reach position {last} within {CATCH_UP:?}");
    }
    println!(
        "stream:   {} grown to {} events in {grow_secs:.1} s (store::append, {CHUNK} events per append, snapshot every {SNAPSHOT_EVERY}); consumers caught up in {:.1} s",
        long_id,
        thousands(events as u64),
        caught.elapsed().as_secs_f64()
    );

    let mut long = WorkerResult::new();
    let mut fresh = WorkerResult::new();
    let started = Instant::now();
    for i in 0..requests {
        let seats = 2 + (i % 50);
        let body = json!({"seats": seats, "proration": "prorate"});
        let order = if i % 2 == 0 {
            [(&fresh_id, &mut fresh), (&long_id, &mut long)]
        } else {
            [(&long_id, &mut long), (&fresh_id, &mut fresh)]
        };
        for (id, w) in order {
            let path = format!("/v1/subscriptions/{id}/change-seats");
            if api.post_measured(&path, &body, w).await.is_some() {
                w.ok += 1;
            }
        }
    }
    let wall = started.elapsed();
    let phase = |mut w: WorkerResult| {
        w.latencies_us.sort_unstable();
        Phase {
            ok: w.ok,
            items: w.ok,
            failures: w.failures,
            notes: w.notes,
            latencies_us: w.latencies_us,
            wall,
        }
    };
    let (long, fresh) = (phase(long), phase(fresh));

    let (long_version, long_load) = time_loads(state, &long_id).await?;
    let (fresh_version, fresh_load) = time_loads(state, &fresh_id).await?;
    for (what, id, p, version, load) in [
        ("long:", &long_id, &long, long_version, &long_load),
        ("fresh:", &fresh_id, &fresh, fresh_version, &fresh_load),
    ] {
        println!(
            "{what:<9} change-seats on {id} (now {} events): {} ok, {} failed, p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms; aggregate load p50 {:.2} ms",
            thousands(version as u64),
            p.ok,
            p.failed(),
            p.quantile_ms(0.50),
            p.quantile_ms(0.99),
            p.max_ms(),
            load.quantile_ms(0.50),
        );
        p.print_issues("failures", "notes");
    }
    Ok((long, fresh))
}

/// Appends `ChangeSeats` events to subscription `id` until its stream holds
/// `events` events; returns the position of the last one.
async fn grow(state: &AppState, id: &str, events: usize) -> Result<i64> {
    let (mut sub, mut version) = state
        .dispatcher
        .load::<Subscription>(TENANT, id)
        .await
        .context("loading the subscription")?;
    let db = &state.db;
    let key = stream_key(TENANT, id);
    let mut last = 0;
    while (version as usize) < events {
        let at = chrono::Utc::now();
        let n = CHUNK.min(events - version as usize);
        let mut decided = Vec::with_capacity(n);
        let mut folded = sub.clone();
        for _ in 0..n {
            let seats = if folded.seats == 5 { 6 } else { 5 };
            let mut e = folded.decide(SubscriptionCommand::ChangeSeats {
                seats,
                proration: ProrationMode::None,
                at,
            })?;
            if e.len() != 1 {
                bail!("ChangeSeats decided {} events", e.len());
            }
            let e = e.remove(0);
            folded.apply(e.clone());
            decided.push(e);
        }
        let rows = store::new_events::<Subscription>(
            version,
            &decided,
            &Meta::client().to_map(TENANT, at),
        )?;
        let new_version = version + n as i64;
        let crosses = version as usize / SNAPSHOT_EVERY != new_version as usize / SNAPSHOT_EVERY;
        let snapshot = crosses
            .then(|| {
                serde_json::to_value(&folded).map(|payload| NewSnapshot {
                    last_sequence: new_version,
                    payload,
                })
            })
            .transpose()?;
        let positions = store::append(
            db,
            Subscription::TYPE,
            &key,
            TENANT,
            at,
            &rows,
            snapshot.as_ref(),
        )
        .await
        .context("appending")?;
        last = positions.last().copied().unwrap_or(last);
        sub = folded;
        version = new_version;
    }
    Ok(last)
}

/// Times [`LOADS`] in-process loads of subscription `id`; returns its
/// version and the load latencies.
async fn time_loads(state: &AppState, id: &str) -> Result<(i64, Phase)> {
    let mut w = WorkerResult::new();
    let mut version = 0;
    let started = Instant::now();
    for _ in 0..LOADS {
        let t0 = Instant::now();
        let (_, v) = state.dispatcher.load::<Subscription>(TENANT, id).await?;
        w.record_latency(t0);
        version = v;
    }
    w.latencies_us.sort_unstable();
    Ok((
        version,
        Phase {
            ok: LOADS as u64,
            items: 0,
            failures: w.failures,
            notes: w.notes,
            latencies_us: w.latencies_us,
            wall: started.elapsed(),
        },
    ))
}
