//! `tally-bench queries`: `GET /v1/invoices` latency with `--invoices`
//! (1,000,000) invoices in one tenant and `--readers` (64) concurrent readers.
//!
//! 1. **Data.** A fresh database (as every benchmark here). Invoices are
//!    decided by the `Invoice` aggregate's own `decide` (create with 1–3
//!    lines — 70 % one —, issue with the tenant's next number from `InvoiceNumbering`,
//!    then paid, voided or written off, or left open or draft) and written
//!    with `COPY` through the rebuild benchmark's sink (`store::new_events`
//!    rows, so the log is what the write path appends). They span the last
//!    two years of `--customers` customers (90 % on the customer's
//!    subscription); the last 25 days hold the open and most draft ones, so
//!    nothing is past due. Two other tenants get 2,000 invoices each.
//! 2. **Read model.** `rm_invoices` is built from the log by the real
//!    invoices projector (`tally_projections::rebuild::run`, blue/green like
//!    `tally-replay rebuild`); the row count must equal the invoices created.
//!    The other consumers' checkpoints are then set to the log head (their
//!    read models stay empty; nothing here reads them), so the server starts
//!    caught up instead of replaying millions of events under the load.
//!    Then `VACUUM (ANALYZE)` of `events` and `rm_invoices`: autovacuum is
//!    off on this machine, a production server would rely on it.
//! 3. **Load.** The server (in-process, or `--server-binary` as a child with
//!    its peak RSS) answers `--readers` tasks that each loop for `--seconds`
//!    on a mix of what a client asks for: the first pages of the whole list
//!    (following `next_cursor`), a deep page (the cursor of a page far into
//!    the list: the id of an invoice sampled every 997th, which is what the
//!    server returns as `next_cursor` there), each status, paid invoices
//!    from a deep cursor, one customer's invoices (all pages), one
//!    subscription's, a customer's paid invoices. Every request must answer
//!    200 with a `data` array; anything else is counted as a failure.
//!
//! Figures: requests/s and the latency percentiles of all requests (and per
//! kind), target p99 ≤ 10 ms.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use chrono::Utc;
use clap::Args;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rust_decimal::Decimal;
use serde_json::Value;
use tally_aggregates::invoice::{
    Invoice, InvoiceCommand, InvoiceNumbering, InvoiceStatus, LineKind, NewLine, NumberingCommand,
    NUMBERING_ID,
};
use tally_aggregates::Currency;
use tally_commands::ids::{Generate, InvoiceId, PaymentId, SubscriptionId};
use tally_projections::db::TypedPool;
use tally_projections::runtime::RuntimeConfig;
use tally_projections::{all_projectors, Db, Runtime};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::rebuild::{thousands, write_chunks, Meta, Sink};
use super::{
    in_fresh_database, print_peak_rss, with_server, write_percentiles, Api, DatabaseArgs,
    OutputArgs, Phase, ServerArgs, WorkerResult, DRAIN_GRACE, REQUEST_TIMEOUT,
};

/// The tenant the readers query (the bootstrap key's).
const TENANT: &str = "default";
/// Other tenants and their invoices.
const OTHER_TENANTS: [(&str, u64); 2] = [("acme", 2_000), ("globex", 2_000)];
/// Invoices span this many days up to now.
const HISTORY_DAYS: i64 = 730;
/// Invoices younger than this may be open (due in 30 days: none past due).
const RECENT_DAYS: i64 = 25;
/// Every this many invoices of the tenant, its id is kept as a deep cursor.
const CURSOR_EVERY: u64 = 997;
/// Chunks generated ahead of the writer.
const CHUNKS_AHEAD: usize = 2;
/// The invoices projection may take at most this long to build.
const BUILD_DEADLINE: Duration = Duration::from_secs(1200);
/// The p99 target, in ms.
const TARGET_P99_MS: f64 = 10.0;

#[derive(Args, Debug, Clone)]
pub(crate) struct QueriesArgs {
    #[command(flatten)]
    db: DatabaseArgs,
    /// Invoices in the queried tenant.
    #[arg(long, default_value_t = 1_000_000)]
    invoices: u64,
    /// Customers those invoices belong to (each with one subscription).
    #[arg(long, default_value_t = 20_000)]
    customers: usize,
    /// Concurrent readers.
    #[arg(long, default_value_t = 64)]
    readers: usize,
    /// Length of the measuring phase, in seconds.
    #[arg(long, default_value_t = 30.0)]
    seconds: f64,
    /// Seed of the data's random choices (ids are still unique per run).
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Readers of a second, shorter phase (a third of `--seconds`) that shows
    /// the latency with little queueing; 0 skips it.
    #[arg(long, default_value_t = 1)]
    baseline_readers: usize,
    #[command(flatten)]
    out: OutputArgs,
    #[command(flatten)]
    server: ServerArgs,
}

pub(crate) async fn run(args: QueriesArgs) -> Result<()> {
    let duration = super::measuring_duration(args.seconds, args.readers, args.customers)?;
    if args.invoices < 1_000 {
        bail!("--invoices: at least 1000 please");
    }
    let a = args.clone();
    let ((phase, by_kind, baseline), peak_rss_kb) = in_fresh_database(
        &args.db.database_admin_url,
        args.readers,
        |url| async move {
            let data = load(&url, &a).await?;
            let data = Arc::new(data);
            with_server(
                &url,
                a.readers,
                a.server.server_binary.as_deref(),
                |api, _| async move {
                    let (phase, by_kind) =
                        read_phase(&api, data.clone(), a.readers, duration).await?;
                    let baseline = if a.baseline_readers > 0 {
                        let (p, _) =
                            read_phase(&api, data, a.baseline_readers, duration / 3).await?;
                        Some(p)
                    } else {
                        None
                    };
                    Ok((phase, by_kind, baseline))
                },
            )
            .await
        },
    )
    .await?;

    println!(
        "queries:  {:.1} requests/s over {:.1} s ({} readers; ok {}, failed {}, rows {}), p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.1} ms",
        phase.rate(),
        phase.wall.as_secs_f64(),
        args.readers,
        phase.ok,
        phase.failed(),
        phase.items,
        phase.quantile_ms(0.50),
        phase.quantile_ms(0.90),
        phase.quantile_ms(0.99),
        phase.max_ms(),
    );
    phase.print_issues("query failures", "query notes");
    for (kind, p) in &by_kind {
        println!(
            "  {kind:<24} {:>7} requests, p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms",
            p.ok,
            p.quantile_ms(0.50),
            p.quantile_ms(0.99),
            p.max_ms()
        );
    }
    let p99 = phase.quantile_ms(0.99);
    println!(
        "target:   p99 <= {TARGET_P99_MS} ms: {}",
        if p99 <= TARGET_P99_MS {
            "met"
        } else {
            "NOT met"
        }
    );
    if let Some(b) = &baseline {
        println!(
            "baseline: {} readers: {:.1} requests/s over {:.1} s (ok {}, failed {}), p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.1} ms",
            args.baseline_readers,
            b.rate(),
            b.wall.as_secs_f64(),
            b.ok,
            b.failed(),
            b.quantile_ms(0.50),
            b.quantile_ms(0.90),
            b.quantile_ms(0.99),
            b.max_ms(),
        );
        b.print_issues("baseline failures", "baseline notes");
    }
    print_peak_rss(peak_rss_kb);
    write_percentiles(args.out.percentiles_csv.as_deref(), &[("queries", &phase)])?;
    Ok(())
}

/// What the readers pick their parameters from.
struct Data {
    customers: Vec<String>,
    subscriptions: Vec<String>,
    /// Ids sampled every [`CURSOR_EVERY`] invoices of the tenant, in id order.
    cursors: Vec<String>,
}

/// Generates and loads the log, builds `rm_invoices`, moves the other
/// consumers to the head, vacuums; prints the times.
async fn load(url: &str, args: &QueriesArgs) -> Result<Data> {
    let db = Db::connect(url).await.context("connecting")?;
    db.migrate().await.context("migrating")?;
    let TypedPool::Postgres(pool) = db.typed.clone() else {
        bail!("the queries benchmark needs PostgreSQL");
    };
    let started = Instant::now();
    let (tx, rx) = mpsc::channel::<Vec<u8>>(CHUNKS_AHEAD);
    let (n, customers, seed) = (args.invoices, args.customers, args.seed);
    let generator = tokio::task::spawn_blocking(move || generate(n, customers, seed, tx));
    let written = write_chunks(pool.clone(), rx).await;
    let generated = generator.await.context("the generator panicked")?;
    let copied = written.context("writing the log")?;
    let gen = generated.context("generating invoices")?;
    let total: u64 = gen.by_status.values().sum();
    println!(
        "generate: {} invoices in tenant {TENANT} (+{} in {} other tenants), {} events, in {:.1} s (decide + COPY)",
        thousands(args.invoices),
        thousands(total - args.invoices),
        OTHER_TENANTS.len(),
        thousands(copied),
        started.elapsed().as_secs_f64(),
    );
    println!(
        "  by status: {}",
        gen.by_status
            .iter()
            .map(|(s, k)| format!("{s} {}", thousands(*k)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if copied != gen.events {
        bail!("generated {} events, copied {copied}", gen.events);
    }

    let built = Instant::now();
    let invoices = all_projectors()
        .into_iter()
        .find(|p| p.name() == "invoices")
        .context("no invoices projector")?;
    let runtime = Runtime::new(db.clone(), vec![invoices.clone()], RuntimeConfig::default());
    let mut last_print = Instant::now();
    let outcome = tokio::time::timeout(
        BUILD_DEADLINE,
        tally_projections::rebuild::run(&runtime, invoices.as_ref(), &mut |p| {
            if last_print.elapsed() >= Duration::from_secs(15) {
                last_print = Instant::now();
                println!(
                    "  building rm_invoices: position {} of {}, {:.0} events/s",
                    p.position,
                    p.target,
                    p.events_per_sec()
                );
            }
        }),
    )
    .await
    .with_context(|| format!("building rm_invoices took over {BUILD_DEADLINE:?}"))?
    .context("building rm_invoices")?;
    let build_secs = built.elapsed().as_secs_f64();
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM rm_invoices")
        .fetch_one(&pool)
        .await?;
    if rows as u64 != total {
        bail!("rm_invoices holds {rows} rows, {total} invoices were created");
    }
    println!(
        "project:  rm_invoices built by the invoices projector from the log: {} events in {build_secs:.1} s ({} events/s), {} rows",
        thousands(outcome.events as u64),
        thousands((outcome.events as f64 / build_secs.max(1e-9)) as u64),
        thousands(rows as u64),
    );

    let head = runtime.log().head().await?;
    let mut others: Vec<&str> = all_projectors().iter().map(|p| p.name()).collect();
    others.extend([
        tally_commands::policies::quota::CONSUMER,
        tally_commands::policies::billing::CONSUMER,
        tally_commands::webhooks::FANOUT_CONSUMER,
        tally_projections::seal::CONSUMER,
    ]);
    others.retain(|n| *n != "invoices");
    for name in &others {
        sqlx::query(
            "INSERT INTO consumer_checkpoints (name, position, status, updated_at) \
             VALUES ($1, $2, 'running', $3) \
             ON CONFLICT (name) DO UPDATE SET position = excluded.position",
        )
        .bind(name)
        .bind(head)
        .bind(tally_projections::time::to_text(Utc::now()))
        .execute(&pool)
        .await
        .with_context(|| format!("moving checkpoint {name}"))?;
    }
    println!(
        "  other consumers ({}) moved to the log head {head}",
        others.join(", ")
    );
    let vacuum = Instant::now();
    sqlx::query("VACUUM (ANALYZE) events, rm_invoices")
        .execute(&pool)
        .await
        .context("VACUUM (ANALYZE)")?;
    println!(
        "  vacuum (analyze) events, rm_invoices: {:.1} s (autovacuum is off here)",
        vacuum.elapsed().as_secs_f64()
    );
    let data = Data {
        customers: gen.customers,
        subscriptions: gen.subscriptions,
        cursors: gen.cursors,
    };
    explain(&pool, &data).await?;
    db.close().await;
    Ok(data)
}

/// Prints the plan and execution time of the list query (the SQL of
/// `state::list`) for each filter shape, as `EXPLAIN (ANALYZE, BUFFERS)`.
async fn explain(pool: &sqlx::PgPool, data: &Data) -> Result<()> {
    let base = "SELECT id, body, version FROM rm_invoices WHERE tenant = $1 AND id > $2";
    let deep = data
        .cursors
        .get(data.cursors.len() / 2)
        .cloned()
        .unwrap_or_default();
    let customer = data.customers[0].clone();
    let subscription = data.subscriptions[0].clone();
    let shapes: [(&str, String, Vec<String>, i64); 6] = [
        ("first page", String::new(), vec![], 51),
        ("deep cursor", deep.clone(), vec![], 51),
        ("status=open", String::new(), vec!["status".into()], 51),
        ("status=paid, deep", deep, vec!["status".into()], 101),
        ("customer", String::new(), vec!["customer_id".into()], 21),
        (
            "subscription",
            String::new(),
            vec!["subscription_id".into()],
            21,
        ),
    ];
    for (name, cursor, filters, limit) in shapes {
        let mut sql = base.to_string();
        for (i, col) in filters.iter().enumerate() {
            sql.push_str(&format!(" AND {col} = ${}", i + 3));
        }
        sql.push_str(&format!(" ORDER BY id LIMIT {limit}"));
        let explained = format!("EXPLAIN (ANALYZE, BUFFERS) {sql}");
        let mut q = sqlx::query_scalar::<_, String>(&explained)
            .bind(TENANT)
            .bind(cursor);
        for col in &filters {
            q = q.bind(match col.as_str() {
                "status" if name.contains("paid") => "paid".to_string(),
                "status" => "open".to_string(),
                "customer_id" => customer.clone(),
                _ => subscription.clone(),
            });
        }
        let plan = q.fetch_all(pool).await.context("EXPLAIN")?;
        let scan = plan
            .iter()
            .find(|l| l.contains("Scan"))
            .map(|l| l.trim().trim_start_matches("->").trim().to_string())
            .unwrap_or_default();
        let exec = plan
            .iter()
            .find(|l| l.starts_with("Execution Time"))
            .cloned()
            .unwrap_or_default();
        println!("  explain {name:<18} {exec}; {scan}");
    }
    Ok(())
}

/// What the generator wrote.
struct Generated {
    events: u64,
    by_status: BTreeMap<&'static str, u64>,
    customers: Vec<String>,
    subscriptions: Vec<String>,
    cursors: Vec<String>,
}

/// The status an invoice is taken to.
#[derive(Clone, Copy, PartialEq)]
enum Fate {
    Draft,
    Open,
    Paid,
    Void,
    Uncollectible,
}

fn fate(rng: &mut StdRng, recent: bool) -> Fate {
    let r = rng.gen_range(0..100);
    if recent {
        match r {
            0..=9 => Fate::Draft,
            10..=54 => Fate::Open,
            _ => Fate::Paid,
        }
    } else {
        match r {
            0 => Fate::Draft,
            1..=4 => Fate::Void,
            5..=7 => Fate::Uncollectible,
            _ => Fate::Paid,
        }
    }
}

/// Writes the invoices of every tenant through `tx` (blocking; run off the runtime).
fn generate(
    invoices: u64,
    customers: usize,
    seed: u64,
    tx: mpsc::Sender<Vec<u8>>,
) -> Result<Generated> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut sink = Sink::new(u64::MAX, tx);
    let now = Utc::now();
    let eur = Currency::parse("EUR").map_err(|e| anyhow::anyhow!("{e}"))?;
    let customer_ids: Vec<String> = (0..customers.max(1))
        .map(|i| format!("cus_{i:06}"))
        .collect();
    let subscription_ids: Vec<String> = customer_ids
        .iter()
        .map(|_| SubscriptionId::generate().into_string())
        .collect();
    let mut by_status = BTreeMap::new();
    let mut cursors = Vec::new();
    let tenants = std::iter::once((TENANT, invoices)).chain(OTHER_TENANTS);
    for (tenant, count) in tenants {
        let mut numbering = InvoiceNumbering::default();
        let mut numbering_seq = 0;
        for i in 0..count {
            let age_secs = HISTORY_DAYS * 86_400 * (count - i) as i64 / count as i64;
            let at = now - chrono::Duration::seconds(age_secs);
            let c = rng.gen_range(0..customer_ids.len());
            let fate = fate(&mut rng, age_secs < RECENT_DAYS * 86_400);
            let invoice_id = InvoiceId::generate().into_string();
            if tenant == TENANT && i % CURSOR_EVERY == CURSOR_EVERY / 2 {
                cursors.push(invoice_id.clone());
            }
            let count = match rng.gen_range(0..10) {
                0..=6 => 1,
                7 | 8 => 2,
                _ => 3,
            };
            let lines = (0..count)
                .map(|k| NewLine {
                    description: if k == 0 {
                        "Subscription".to_string()
                    } else {
                        format!("Extra seats ({k})")
                    },
                    quantity: Decimal::from(rng.gen_range(1..=20)),
                    unit_price: Decimal::new(rng.gen_range(500..5_000), 2),
                    kind: if k == 0 {
                        LineKind::Recurring
                    } else {
                        LineKind::Manual
                    },
                    period: None,
                    tax_rate_ids: vec![],
                })
                .collect();
            let meta = Meta::client();
            let mut state = Invoice::default();
            let mut seq = 0;
            let events = state.decide(InvoiceCommand::Create {
                invoice_id: invoice_id.clone(),
                customer_id: customer_ids[c].clone(),
                currency: eur,
                subscription_id: rng.gen_ratio(9, 10).then(|| subscription_ids[c].clone()),
                billing_period: None,
                due_days: Some(30),
                lines,
                at,
            })?;
            sink.emit(tenant, &invoice_id, &mut state, &mut seq, events, at, &meta)?;
            if fate != Fate::Draft {
                let at = at + chrono::Duration::minutes(5);
                let issued = state.decide(InvoiceCommand::Issue {
                    number: numbering.next(),
                    available_credit: rust_decimal::Decimal::ZERO,
                    at,
                    customer: None,
                    taxes: Default::default(),
                })?;
                let assigned = numbering.decide(NumberingCommand::Assign {
                    invoice_id: invoice_id.clone(),
                    at,
                })?;
                sink.emit(tenant, &invoice_id, &mut state, &mut seq, issued, at, &meta)?;
                sink.emit(
                    tenant,
                    NUMBERING_ID,
                    &mut numbering,
                    &mut numbering_seq,
                    assigned,
                    at,
                    &meta,
                )?;
                // Settled within 20 days, never after now.
                let settle = (age_secs - 600).clamp(0, 20 * 86_400);
                let at = at + chrono::Duration::seconds(rng.gen_range(0..=settle));
                let command = match fate {
                    Fate::Paid => Some(InvoiceCommand::RecordPayment {
                        payment_id: PaymentId::generate().into_string(),
                        amount: state.amount_due,
                        reference: format!("bank-{:012}", rng.gen_range(0..1_000_000_000_000u64)),
                        captured_at: at,
                        excess_to_credit: false,
                        at,
                    }),
                    Fate::Void => Some(InvoiceCommand::Void {
                        reason: "issued in error".to_string(),
                        at,
                    }),
                    Fate::Uncollectible => Some(InvoiceCommand::MarkUncollectible { at }),
                    Fate::Draft | Fate::Open => None,
                };
                if let Some(command) = command {
                    let events = state.decide(command)?;
                    sink.emit(tenant, &invoice_id, &mut state, &mut seq, events, at, &meta)?;
                }
            }
            let status = state.status.map(|s| s.as_str()).unwrap_or("none");
            *by_status.entry(status).or_insert(0) += 1;
        }
    }
    sink.flush()?;
    cursors.sort();
    Ok(Generated {
        events: sink.written(),
        by_status,
        customers: customer_ids,
        subscriptions: subscription_ids,
        cursors,
    })
}

/// One kind of list request a reader sends: its name, its weight in the mix,
/// and how many pages it follows at most.
const KINDS: [(&str, u32, usize); 7] = [
    ("all, pages 1-5", 20, 5),
    ("all, deep cursor", 15, 1),
    ("status, pages 1-3", 15, 3),
    ("status=paid, deep cursor", 10, 1),
    ("customer, all pages", 20, 5),
    ("subscription, all pages", 15, 5),
    ("customer + status=paid", 5, 1),
];

/// The query string of a kind's first page (without `cursor`).
fn first_query(kind: usize, rng: &mut StdRng, data: &Data) -> (String, Option<String>) {
    let pick = |rng: &mut StdRng, v: &[String]| v[rng.gen_range(0..v.len())].clone();
    let deep = |rng: &mut StdRng| {
        if data.cursors.is_empty() {
            None
        } else {
            Some(pick(rng, &data.cursors))
        }
    };
    match kind {
        0 => ("limit=50".to_string(), None),
        1 => ("limit=50".to_string(), deep(rng)),
        2 => {
            let status = match rng.gen_range(0..100) {
                0..=39 => InvoiceStatus::Open,
                40..=79 => InvoiceStatus::Paid,
                80..=89 => InvoiceStatus::Draft,
                90..=94 => InvoiceStatus::Void,
                _ => InvoiceStatus::Uncollectible,
            };
            (format!("status={}&limit=50", status.as_str()), None)
        }
        3 => ("status=paid&limit=100".to_string(), deep(rng)),
        4 => (
            format!("customer_id={}&limit=20", pick(rng, &data.customers)),
            None,
        ),
        5 => (
            format!(
                "subscription_id={}&limit=20",
                pick(rng, &data.subscriptions)
            ),
            None,
        ),
        _ => (
            format!(
                "customer_id={}&status=paid&limit=50",
                pick(rng, &data.customers)
            ),
            None,
        ),
    }
}

/// A reader's figures: all requests, and latencies per kind.
struct ReaderResult {
    all: WorkerResult,
    by_kind: Vec<Vec<u64>>,
}

/// `readers` tasks looping on the request mix for `duration`; returns all
/// requests and the per-kind phases.
async fn read_phase(
    api: &Api,
    data: Arc<Data>,
    readers: usize,
    duration: Duration,
) -> Result<(Phase, Vec<(&'static str, Phase)>)> {
    let total_weight: u32 = KINDS.iter().map(|k| k.1).sum();
    let started = Instant::now();
    let deadline = started + duration;
    let mut set = JoinSet::new();
    for reader in 0..readers {
        let api = api.clone();
        let data = data.clone();
        set.spawn(async move {
            let mut rng = StdRng::seed_from_u64(reader as u64 ^ 0x5eed);
            let mut r = ReaderResult {
                all: WorkerResult::new(),
                by_kind: vec![Vec::new(); KINDS.len()],
            };
            while Instant::now() < deadline {
                let mut x = rng.gen_range(0..total_weight);
                let kind = KINDS
                    .iter()
                    .position(|k| {
                        if x < k.1 {
                            true
                        } else {
                            x -= k.1;
                            false
                        }
                    })
                    .unwrap_or(0);
                let (query, mut cursor) = first_query(kind, &mut rng, &data);
                for _ in 0..KINDS[kind].2 {
                    if Instant::now() >= deadline {
                        break;
                    }
                    let url = match &cursor {
                        Some(c) => format!("{}/v1/invoices?{query}&cursor={c}", api.base),
                        None => format!("{}/v1/invoices?{query}", api.base),
                    };
                    let before = r.all.latencies_us.len();
                    let page = get_page(&api, &url, &mut r.all).await;
                    if let Some(us) = r.all.latencies_us.get(before) {
                        r.by_kind[kind].push(*us);
                    }
                    match page {
                        Some(next) => cursor = next,
                        None => break,
                    }
                    if cursor.is_none() {
                        break;
                    }
                }
            }
            r
        });
    }
    let limit = deadline + DRAIN_GRACE;
    let mut all = Vec::new();
    let mut by_kind = vec![Vec::new(); KINDS.len()];
    let mut counts = vec![0u64; KINDS.len()];
    let mut merged = WorkerResult::new();
    loop {
        let next = tokio::time::timeout_at(limit.into(), set.join_next())
            .await
            .map_err(|_| anyhow::anyhow!("readers did not stop within {DRAIN_GRACE:?}"))?;
        let Some(joined) = next else { break };
        let r = joined.context("a reader task failed")?;
        merged.ok += r.all.ok;
        merged.items += r.all.items;
        for (k, n) in r.all.failures {
            *merged.failures.entry(k).or_insert(0) += n;
        }
        for (k, n) in r.all.notes {
            *merged.notes.entry(k).or_insert(0) += n;
        }
        all.extend(r.all.latencies_us);
        for (i, l) in r.by_kind.into_iter().enumerate() {
            counts[i] += l.len() as u64;
            by_kind[i].extend(l);
        }
    }
    let wall = started.elapsed();
    let phase = |mut latencies_us: Vec<u64>, ok: u64| {
        latencies_us.sort_unstable();
        Phase {
            ok,
            items: 0,
            failures: BTreeMap::new(),
            notes: BTreeMap::new(),
            latencies_us,
            wall,
        }
    };
    let per_kind = by_kind
        .into_iter()
        .zip(counts)
        .enumerate()
        .map(|(i, (l, n))| (KINDS[i].0, phase(l, n)))
        .collect();
    let mut total = phase(all, merged.ok);
    total.items = merged.items;
    total.failures = merged.failures;
    total.notes = merged.notes;
    Ok((total, per_kind))
}

/// GETs one page, records its latency in `w`; returns `Some(next_cursor)`
/// for a 200 with a `data` array (`items` counts its rows), else records a
/// failure and returns `None`.
async fn get_page(api: &Api, url: &str, w: &mut WorkerResult) -> Option<Option<String>> {
    let request = api
        .client
        .get(url)
        .bearer_auth(&api.key)
        .timeout(REQUEST_TIMEOUT);
    let (status, _, bytes) = Api::send_measured(request, w).await?;
    if !status.is_success() {
        w.fail(status.as_u16().to_string());
        return None;
    }
    let body: Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(_) => {
            w.fail("200 without JSON".to_string());
            return None;
        }
    };
    let Some(rows) = body["data"].as_array() else {
        w.fail("200 without data".to_string());
        return None;
    };
    w.ok += 1;
    w.items += rows.len() as u64;
    if rows.is_empty() {
        w.note("empty page".to_string());
    }
    Some(body["next_cursor"].as_str().map(str::to_string))
}
