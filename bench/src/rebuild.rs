//! `tally-bench rebuild`: how fast `tally-replay rebuild --all` rebuilds every
//! read model from a log of `--events` events, and how much memory it takes.
//!
//! For each size (`--events`, or several with `--sizes`):
//!
//! 1. **Database.** A fresh database `tally_bench_rb_<random>` on the admin
//!    URL's server (dropped at the end, also on failure or Ctrl-C, unless
//!    `--keep`), or the one given with `--database` (its log must be empty;
//!    never dropped). Migrated with `Db::migrate`, as the server does.
//! 2. **Generation.** A simulated billing business writes exactly N events,
//!    every one decided by the aggregates' own `decide` on the state their
//!    `evolve` folded, with rows built by the write path's
//!    `store::new_events` (event type, version, event id, metadata), so every
//!    stream is a legal history the projectors decode. Three tenants with two
//!    plans each (a metered `api_calls` with an overage price, a metered
//!    `storage_gb_hours` without) and `N / 800` customers who join over four
//!    weeks; then day by day each customer: renews at the period end (the
//!    billing policy's renewal invoice: usage of the closed period marked
//!    Billed, lines from `billing::renewal_lines`, issued with the tenant's
//!    next number), pays its invoices (a few late: past due, then cleared),
//!    reports 0–3 usage records, sometimes changes seats or plan or cancels,
//!    opens and works through support tickets, and reads its inbox (`ItemRead`
//!    of notifications by their derived item ids, `AllRead`). Usage records
//!    are most of the log, every aggregate type is present. Rows go in with
//!    `COPY` in chunks of [`CHUNK_ROWS`] (one transaction each) from one
//!    writer, so positions follow the generation order; the insert trigger
//!    assigns positions and transaction ids as for any append. No snapshots
//!    are written (a rebuild never reads them). Then `VACUUM (ANALYZE)
//!    events`, as autovacuum would have done on a live log.
//! 3. **Rebuild.** `<replay-bin> rebuild --all --database <url>` runs as a
//!    child process (its output is shown as it comes, indented, with the
//!    seconds since it started). Wall time
//!    is from spawn to exit; peak memory is the child's `VmHWM` (Linux's
//!    resident-set high-water mark) read from `/proc/<pid>/status` every
//!    10 ms while it runs (the workspace forbids `unsafe`, so no
//!    `wait4`/`getrusage`; a high-water mark only misses growth in the last
//!    sample interval). A non-zero exit fails the run with the child's stderr.
//! 4. **Check.** Row counts of the read models must match what was generated
//!    (plans, subscriptions, usage records and their billed share, usage
//!    totals, invoices, journal rows, tickets, inbox items at least the
//!    customer notifications), so a rebuild that did nothing cannot look fast.
//!
//! Figures: `events/s` = events in the log ÷ wall time of the rebuild
//! command. Targets: ≥ 50,000 events/s, peak memory flat in the number of
//! events (compare the sizes of one `--sizes` run).

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use chrono::{DateTime, TimeZone, Utc};
use clap::Args;
use cqrs_es::Aggregate;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rust_decimal::Decimal;
use sqlx::postgres::{PgPool, PgPoolCopyExt};
use sqlx::{Connection, PgConnection};
use tally_aggregates::billing::{renewal_lines, MeterUsage, Renewal};
use tally_aggregates::inbox::{Inbox, InboxCommand};
use tally_aggregates::invoice::{
    Invoice, InvoiceCommand, InvoiceEvent, InvoiceNumbering, InvoiceStatus, NewLine,
    NumberingCommand, NUMBERING_ID,
};
use tally_aggregates::plan::{MeterTerms, Plan, PlanCommand, PlanTerms, ResetCadence, SeatLimits};
use tally_aggregates::pricing::MeterPricing;
use tally_aggregates::subscription::{
    CancelWhen, PlanRef, ProrationMode, Subscription, SubscriptionCommand, SubscriptionEvent,
    SubscriptionStatus,
};
use tally_aggregates::ticket::{Priority, Ticket, TicketCommand, TicketStatus};
use tally_aggregates::usage::{SubscriptionContext, UsageCommand, UsageRecord};
use tally_aggregates::{Currency, Interval, Period};
use tally_commands::ids::{
    AttachmentId, CommentId, Generate, PaymentId, PlanId, SubscriptionId, TicketId,
};
use tally_commands::policies::billing::{activation_invoice_id, renewal_invoice_id};
use tally_commands::store;
use tally_commands::usage::record_id;
use tally_projections::db::TypedPool;
use tally_projections::inbox::item_id;
use tally_projections::{all_projectors, stream_key, time, Db};
use tokio::sync::mpsc;

use super::{cores, database_url, drop_database, mem_total, DatabaseArgs, ADMIN_TIMEOUT};

/// Rows per `COPY` (one transaction each).
const CHUNK_ROWS: usize = 10_000;
/// Chunks generated ahead of the writer.
const CHUNKS_AHEAD: usize = 2;
/// Customers per this many events: sizes grow by customers (and so by read
/// model rows), not only by history length.
const EVENTS_PER_CUSTOMER: u64 = 800;
/// Customers join on the first this many days, so anchors are spread.
const JOIN_DAYS: usize = 28;
const TENANTS: [(&str, &str); 3] = [("default", "EUR"), ("acme", "EUR"), ("globex", "USD")];
const AGENTS: usize = 8;
/// The simulation's first day.
fn epoch() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0)
        .single()
        .expect("a valid date")
}
/// Smallest `--events` accepted.
const MIN_EVENTS: u64 = 1_000;
/// The events/s target of the issue.
const TARGET_RATE: f64 = 50_000.0;
pub(crate) const COPY_SQL: &str =
    "COPY events (aggregate_type, aggregate_id, sequence, event_type, \
     event_version, payload, metadata, event_id, tenant, recorded_at) FROM STDIN";

#[derive(Args, Debug, Clone)]
pub(crate) struct RebuildArgs {
    #[command(flatten)]
    db: DatabaseArgs,
    /// Use this PostgreSQL database (its log must be empty; not dropped)
    /// instead of a fresh `tally_bench_rb_<random>` per size.
    #[arg(long)]
    database: Option<String>,
    /// Events to generate.
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    /// Several sizes in one run, each in a fresh database (overrides
    /// --events), e.g. 250000,1000000.
    #[arg(long, value_delimiter = ',')]
    sizes: Vec<u64>,
    /// The `tally-replay` binary (default: next to this executable).
    #[arg(long)]
    replay_bin: Option<PathBuf>,
    /// Keep the generated databases (their names are printed).
    #[arg(long)]
    keep: bool,
    /// Seed of the simulation's random choices (ids are still unique per run).
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Kill the rebuild and fail after this many seconds.
    #[arg(long, default_value_t = 1800)]
    timeout_secs: u64,
}

pub(crate) async fn run(args: RebuildArgs) -> Result<()> {
    let sizes = if args.sizes.is_empty() {
        vec![args.events]
    } else {
        args.sizes.clone()
    };
    if let Some(n) = sizes.iter().find(|n| **n < MIN_EVENTS) {
        bail!("{n} events: at least {MIN_EVENTS} please");
    }
    if args.database.is_some() && sizes.len() > 1 {
        bail!("--database takes one size (--events), --sizes needs fresh databases");
    }
    let replay = match &args.replay_bin {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .context("locating this executable")?
            .with_file_name("tally-replay"),
    };
    if !replay.is_file() {
        bail!(
            "{} not found: build it (cargo build --release -p tally-replay) or pass --replay-bin",
            replay.display()
        );
    }
    let timeout = Duration::from_secs(args.timeout_secs.max(1));

    println!("machine: {} cores, {}", cores(), mem_total());
    let server_url = args
        .database
        .as_deref()
        .unwrap_or(&args.db.database_admin_url);
    let (version, autovacuum) = server_version(server_url).await?;
    println!("postgres: {version} (autovacuum {autovacuum})");
    println!("replay:  {}", replay.display());

    let mut results = Vec::new();
    for &n in &sizes {
        let outcome = match &args.database {
            Some(url) => one_size(url, n, args.seed, &replay, timeout).await,
            None => {
                in_new_database(&args.db.database_admin_url, args.keep, |url| {
                    let replay = replay.clone();
                    async move { one_size(&url, n, args.seed, &replay, timeout).await }
                })
                .await
            }
        }?;
        results.push(outcome);
    }
    if results.len() > 1 {
        println!();
        for r in &results {
            println!(
                "summary: {:>9} events: generate {:.1} s, rebuild {:.1} s, {} events/s, peak RSS {}",
                thousands(r.events),
                r.generate.as_secs_f64(),
                r.rebuild.as_secs_f64(),
                thousands(r.rate() as u64),
                mib(r.peak_rss_kb),
            );
        }
        let (first, last) = (&results[0], &results[results.len() - 1]);
        if first.peak_rss_kb > 0 {
            println!(
                "memory:  peak RSS {} at {} events, {} at {} events (x{:.2} for x{:.1} events)",
                mib(first.peak_rss_kb),
                thousands(first.events),
                mib(last.peak_rss_kb),
                thousands(last.events),
                last.peak_rss_kb as f64 / first.peak_rss_kb as f64,
                last.events as f64 / first.events as f64,
            );
        }
    }
    Ok(())
}

/// What one size measured.
struct SizeResult {
    events: u64,
    generate: Duration,
    rebuild: Duration,
    peak_rss_kb: u64,
}

impl SizeResult {
    fn rate(&self) -> f64 {
        self.events as f64 / self.rebuild.as_secs_f64().max(1e-9)
    }
}

/// The server's `version()` and its `autovacuum` setting.
pub(crate) async fn server_version(url: &str) -> Result<(String, String)> {
    let mut conn = tokio::time::timeout(ADMIN_TIMEOUT, PgConnection::connect(url))
        .await
        .context("connecting to PostgreSQL timed out")?
        .with_context(|| format!("connecting to {url}"))?;
    let v: String = sqlx::query_scalar("SELECT version()")
        .fetch_one(&mut conn)
        .await?;
    let autovacuum: String = sqlx::query_scalar("SHOW autovacuum")
        .fetch_one(&mut conn)
        .await?;
    let _ = conn.close().await;
    Ok((v, autovacuum))
}

/// Creates `tally_bench_rb_<random>`, runs `body` with its URL (Ctrl-C
/// interrupts it) and drops the database unless `keep`, whatever happened.
async fn in_new_database<T, F, Fut>(admin_url: &str, keep: bool, body: F) -> Result<T>
where
    F: FnOnce(String) -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let name = format!("tally_bench_rb_{:08x}", rand::random::<u32>());
    {
        let mut admin = tokio::time::timeout(ADMIN_TIMEOUT, PgConnection::connect(admin_url))
            .await
            .context("connecting to PostgreSQL timed out")?
            .with_context(|| format!("connecting to {admin_url}"))?;
        tokio::time::timeout(
            ADMIN_TIMEOUT,
            sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut admin),
        )
        .await
        .context("CREATE DATABASE timed out")?
        .with_context(|| format!("creating database {name}"))?;
        let _ = admin.close().await;
    }
    println!();
    println!("database: {name}{}", if keep { " (kept)" } else { "" });
    let outcome = tokio::select! {
        r = body(database_url(admin_url, &name)) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
    };
    let dropped = if keep {
        Ok(())
    } else {
        drop_database(admin_url, &name).await
    };
    let outcome = outcome?;
    dropped?;
    Ok(outcome)
}

/// Generates `n` events into the (empty) database at `url`, rebuilds, checks
/// and prints the figures.
async fn one_size(
    url: &str,
    n: u64,
    seed: u64,
    replay: &Path,
    timeout: Duration,
) -> Result<SizeResult> {
    let db = Db::connect(url).await.context("connecting")?;
    db.migrate().await.context("migrating")?;
    let TypedPool::Postgres(pool) = db.typed.clone() else {
        bail!("the rebuild benchmark needs PostgreSQL");
    };
    let existing: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&pool)
        .await?;
    if existing != 0 {
        bail!("the log of {url} holds {existing} events; the benchmark needs an empty one");
    }

    let started = Instant::now();
    let (tx, rx) = mpsc::channel::<Vec<u8>>(CHUNKS_AHEAD);
    let generator = tokio::task::spawn_blocking(move || generate(n, seed, tx));
    let written = write_chunks(pool.clone(), rx).await;
    let generated = generator.await.context("the generator panicked")?;
    // A writer error is the cause of a generator's "writer stopped".
    let copied = written.context("writing the log")?;
    let stats = generated.context("generating events")?;
    let generate_time = started.elapsed();
    let in_log: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&pool)
        .await?;
    if in_log as u64 != n || copied != n {
        bail!("generated {n} events, copied {copied}, the log holds {in_log}");
    }
    println!(
        "generate: {} events in {:.1} s ({} events/s): {} tenants, {} customers, {} simulated days",
        thousands(n),
        generate_time.as_secs_f64(),
        thousands((n as f64 / generate_time.as_secs_f64().max(1e-9)) as u64),
        TENANTS.len(),
        thousands(stats.customers as u64),
        stats.days,
    );
    println!("  mix: {}", stats.mix(n));
    let vacuum = Instant::now();
    sqlx::query("VACUUM (ANALYZE) events")
        .execute(&pool)
        .await
        .context("VACUUM (ANALYZE) events")?;
    println!(
        "  vacuum (analyze) events: {:.1} s",
        vacuum.elapsed().as_secs_f64()
    );
    db.close().await;

    let child = {
        let (replay, url) = (replay.to_path_buf(), url.to_string());
        tokio::task::spawn_blocking(move || rebuild(&replay, &url, timeout))
            .await
            .context("the rebuild runner panicked")??
    };
    let projections = all_projectors().len();
    let result = SizeResult {
        events: n,
        generate: generate_time,
        rebuild: child.wall,
        peak_rss_kb: child.peak_rss_kb,
    };
    println!(
        "rebuild: {} events, {projections} projections, {:.1} s, {} events/s, peak RSS {}",
        n,
        child.wall.as_secs_f64(),
        thousands(result.rate() as u64),
        mib(child.peak_rss_kb),
    );

    let db = Db::connect(url).await.context("reconnecting")?;
    let checked = check(&db, &stats).await;
    db.close().await;
    checked?;
    println!(
        "target:  >= {} events/s: {}",
        thousands(TARGET_RATE as u64),
        if result.rate() >= TARGET_RATE {
            "met"
        } else {
            "NOT met"
        }
    );
    Ok(result)
}

/// Copies each chunk in its own `COPY` (one transaction), in order; returns
/// the rows copied.
pub(crate) async fn write_chunks(pool: PgPool, mut rx: mpsc::Receiver<Vec<u8>>) -> Result<u64> {
    let mut rows = 0;
    while let Some(chunk) = rx.recv().await {
        let mut copy = pool.copy_in_raw(COPY_SQL).await?;
        copy.send(chunk).await?;
        rows += copy.finish().await?;
    }
    Ok(rows)
}

/// What a rebuild child did.
struct ChildRun {
    wall: Duration,
    peak_rss_kb: u64,
}

/// Runs `replay rebuild --all --database url`, echoing its output, sampling
/// its peak RSS; fails on a non-zero exit or after `timeout`.
fn rebuild(replay: &Path, url: &str, timeout: Duration) -> Result<ChildRun> {
    let started = Instant::now();
    let mut child = Command::new(replay)
        .args(["rebuild", "--all", "--database", url])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", replay.display()))?;
    let pid = child.id();
    let stdout = child.stdout.take().context("child stdout")?;
    let mut stderr = child.stderr.take().context("child stderr")?;
    // Each line with the time since the start, so phases can be told apart.
    let echo = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            match line {
                Ok(l) => println!("  | {:>6.1}s {l}", started.elapsed().as_secs_f64()),
                Err(_) => break,
            }
        }
    });
    let errors = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let mut peak_kb = 0;
    let status = loop {
        if let Some(kb) = vm_hwm_kb(pid) {
            peak_kb = peak_kb.max(kb);
        }
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the rebuild did not finish within {timeout:?}; killed");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let wall = started.elapsed();
    let _ = echo.join();
    let stderr = errors.join().unwrap_or_default();
    if !status.success() {
        bail!(
            "{} rebuild --all failed ({status}): {}",
            replay.display(),
            stderr.trim()
        );
    }
    if !stderr.trim().is_empty() {
        println!("  rebuild stderr: {}", stderr.trim());
    }
    Ok(ChildRun {
        wall,
        peak_rss_kb: peak_kb,
    })
}

/// `VmHWM` of a process, in kB (None once it has exited or off Linux).
pub(crate) fn vm_hwm_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kb| kb.parse().ok())
}

/// Compares read model row counts with what was generated; prints one line
/// and fails on any mismatch.
async fn check(db: &Db, stats: &GenStats) -> Result<()> {
    let TypedPool::Postgres(pool) = &db.typed else {
        bail!("PostgreSQL expected");
    };
    let count = |sql: &'static str| async move {
        sqlx::query_scalar::<_, i64>(sql)
            .fetch_one(pool)
            .await
            .map(|n| n as u64)
            .with_context(|| sql.to_string())
    };
    let ev = |t: &str| stats.event(t);
    let exact: Vec<(&str, u64, u64)> = vec![
        (
            "rm_plans",
            count("SELECT count(*) FROM rm_plans").await?,
            ev("PlanCreated"),
        ),
        (
            "rm_subscriptions",
            count("SELECT count(*) FROM rm_subscriptions").await?,
            ev("SubscriptionCreated"),
        ),
        (
            "rm_usage_records",
            count("SELECT count(*) FROM rm_usage_records").await?,
            ev("UsageRecorded"),
        ),
        (
            "billed",
            count("SELECT count(*) FROM rm_usage_records WHERE status = 'billed'").await?,
            ev("UsageBilled"),
        ),
        (
            "totals.records",
            count("SELECT COALESCE(sum(record_count), 0)::bigint FROM rm_usage_totals").await?,
            ev("UsageRecorded"),
        ),
        (
            "rm_invoices",
            count("SELECT count(*) FROM rm_invoices").await?,
            ev("InvoiceCreated"),
        ),
        (
            "rm_journal",
            count("SELECT count(*) FROM rm_journal").await?,
            stats.journal_rows,
        ),
        (
            "rm_tickets",
            count("SELECT count(*) FROM rm_tickets").await?,
            ev("TicketCreated"),
        ),
    ];
    let items = count("SELECT count(*) FROM rm_inbox_items").await?;
    let read = count("SELECT count(*) FROM rm_inbox_items WHERE state = 'read'").await?;
    // Every activation, issue and payment notifies the customer (tickets add more).
    let min_items = ev("SubscriptionActivated") + ev("InvoiceIssued") + ev("InvoicePaid");
    let mut line = Vec::new();
    let mut bad = Vec::new();
    for (what, got, want) in &exact {
        line.push(format!("{what} {got}"));
        if got != want {
            bad.push(format!("{what}: {got}, expected {want}"));
        }
    }
    line.push(format!("rm_inbox_items {items} ({read} read)"));
    if items < min_items {
        bad.push(format!("rm_inbox_items: {items}, expected >= {min_items}"));
    }
    if ev("ItemRead") > 0 && read == 0 {
        bad.push("no inbox item is read".to_string());
    }
    let head: i64 = sqlx::query_scalar("SELECT COALESCE(max(position), 0) FROM events")
        .fetch_one(pool)
        .await?;
    let behind: Vec<String> =
        sqlx::query_as::<_, (String, i64)>("SELECT name, position FROM consumer_checkpoints")
            .fetch_all(pool)
            .await?
            .into_iter()
            .filter(|(name, p)| *p < head && all_projectors().iter().any(|x| x.name() == name))
            .map(|(name, p)| format!("{name} at {p}"))
            .collect();
    println!("check:   {}", line.join(", "));
    if !behind.is_empty() {
        println!(
            "  note: checkpoints behind the log head {head}: {}",
            behind.join(", ")
        );
    }
    if !bad.is_empty() {
        bail!(
            "the rebuilt read models do not match the log: {}",
            bad.join("; ")
        );
    }
    println!("  read models match the generated log");
    Ok(())
}

// ---------------------------------------------------------------------------
// Generation
// ---------------------------------------------------------------------------

/// What the generator wrote, by type.
#[derive(Default)]
pub(crate) struct GenStats {
    customers: usize,
    days: u32,
    by_aggregate: BTreeMap<&'static str, u64>,
    by_event: HashMap<String, u64>,
    /// Rows the balances journal must hold (two per money-moving event).
    journal_rows: u64,
}

impl GenStats {
    pub(crate) fn event(&self, t: &str) -> u64 {
        self.by_event.get(t).copied().unwrap_or(0)
    }

    /// `usage_record 81.0% (UsageRecorded 54.1%, UsageBilled 26.9%), …`.
    fn mix(&self, n: u64) -> String {
        let pct = |k: u64| 100.0 * k as f64 / n.max(1) as f64;
        let mut types: Vec<_> = self.by_aggregate.iter().collect();
        types.sort_by(|a, b| b.1.cmp(a.1));
        types
            .into_iter()
            .map(|(t, k)| {
                if *t == "usage_record" {
                    format!(
                        "{t} {:.1}% (UsageRecorded {:.1}%, UsageBilled {:.1}%)",
                        pct(*k),
                        pct(self.event("UsageRecorded")),
                        pct(self.event("UsageBilled"))
                    )
                } else {
                    format!("{t} {:.1}%", pct(*k))
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Who issued a command: stored as metadata like `CommandMeta::to_map`.
pub(crate) struct Meta {
    actor: &'static str,
    request_id: String,
    correlation_id: String,
    causation_id: Option<String>,
}

impl Meta {
    /// A client's request.
    pub(crate) fn client() -> Meta {
        let request_id = uuid::Uuid::now_v7().to_string();
        Meta {
            actor: "bench",
            correlation_id: request_id.clone(),
            request_id,
            causation_id: None,
        }
    }

    /// A policy's command caused by event `cause`.
    fn caused(actor: &'static str, cause: &str) -> Meta {
        Meta {
            actor,
            request_id: uuid::Uuid::now_v7().to_string(),
            correlation_id: cause.to_string(),
            causation_id: Some(cause.to_string()),
        }
    }

    /// A scheduler's command (no causing event).
    fn scheduler(actor: &'static str) -> Meta {
        Meta {
            actor,
            ..Meta::client()
        }
    }

    pub(crate) fn to_map(&self, tenant: &str, at: DateTime<Utc>) -> HashMap<String, String> {
        let mut m = HashMap::from([
            ("tenant".to_string(), tenant.to_string()),
            ("actor".to_string(), self.actor.to_string()),
            ("request_id".to_string(), self.request_id.clone()),
            ("correlation_id".to_string(), self.correlation_id.clone()),
            ("recorded_at".to_string(), time::to_text(at)),
        ]);
        if let Some(c) = &self.causation_id {
            m.insert("causation_id".to_string(), c.clone());
        }
        m
    }
}

/// Encodes rows for `COPY … FROM STDIN` (text format) and hands full chunks
/// to the writer. Stops writing at `limit` rows; states still evolve after
/// that so the generator's step in progress stays consistent.
pub(crate) struct Sink {
    limit: u64,
    written: u64,
    buf: Vec<u8>,
    rows_in_buf: usize,
    tx: mpsc::Sender<Vec<u8>>,
    stats: GenStats,
}

impl Sink {
    /// A sink writing at most `limit` rows to `tx`.
    pub(crate) fn new(limit: u64, tx: mpsc::Sender<Vec<u8>>) -> Sink {
        Sink {
            limit,
            written: 0,
            buf: Vec::with_capacity(CHUNK_ROWS * 1024),
            rows_in_buf: 0,
            tx,
            stats: GenStats::default(),
        }
    }

    /// Rows written so far.
    pub(crate) fn written(&self) -> u64 {
        self.written
    }

    fn full(&self) -> bool {
        self.written >= self.limit
    }

    /// Appends `events` (decided on `state` at sequence `seq`) to stream
    /// `id` of `tenant`, evolving `state` and `seq`. Returns the event ids of
    /// the rows written (fewer than the events once the limit is reached).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn emit<A: Aggregate>(
        &mut self,
        tenant: &str,
        id: &str,
        state: &mut A,
        seq: &mut i64,
        events: Vec<A::Event>,
        at: DateTime<Utc>,
        meta: &Meta,
    ) -> Result<Vec<String>> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let rows = store::new_events::<A>(*seq, &events, &meta.to_map(tenant, at))?;
        let key = stream_key(tenant, id);
        let at = time::to_text(at);
        let mut written = Vec::with_capacity(rows.len());
        for (row, event) in rows.into_iter().zip(events) {
            state.apply(event);
            *seq = row.sequence;
            if self.full() {
                continue;
            }
            self.write_row(A::TYPE, &key, &row, tenant, &at)?;
            written.push(row.event_id);
        }
        Ok(written)
    }

    fn write_row(
        &mut self,
        aggregate_type: &'static str,
        key: &str,
        row: &store::NewEvent,
        tenant: &str,
        at: &str,
    ) -> Result<()> {
        let payload = serde_json::to_string(&row.payload)?;
        let metadata = serde_json::to_string(&row.metadata)?;
        let b = &mut self.buf;
        for (i, field) in [
            aggregate_type,
            key,
            &row.sequence.to_string(),
            &row.event_type,
            &row.event_version,
            &payload,
            &metadata,
            &row.event_id,
            tenant,
            at,
        ]
        .into_iter()
        .enumerate()
        {
            if i > 0 {
                b.push(b'\t');
            }
            copy_escape(b, field);
        }
        b.push(b'\n');
        self.rows_in_buf += 1;
        self.written += 1;
        *self.stats.by_aggregate.entry(aggregate_type).or_insert(0) += 1;
        match self.stats.by_event.get_mut(row.event_type.as_str()) {
            Some(k) => *k += 1,
            None => {
                self.stats.by_event.insert(row.event_type.clone(), 1);
            }
        }
        if self.rows_in_buf >= CHUNK_ROWS || self.full() {
            self.flush()?;
        }
        Ok(())
    }

    pub(crate) fn flush(&mut self) -> Result<()> {
        if self.rows_in_buf == 0 {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK_ROWS * 1024));
        self.rows_in_buf = 0;
        self.tx
            .blocking_send(chunk)
            .map_err(|_| anyhow!("the log writer stopped"))
    }
}

/// A text-format `COPY` field: backslash, tab, newline and carriage return escaped.
fn copy_escape(buf: &mut Vec<u8>, s: &str) {
    for &c in s.as_bytes() {
        match c {
            b'\\' => buf.extend_from_slice(b"\\\\"),
            b'\t' => buf.extend_from_slice(b"\\t"),
            b'\n' => buf.extend_from_slice(b"\\n"),
            b'\r' => buf.extend_from_slice(b"\\r"),
            _ => buf.push(c),
        }
    }
}

struct TenantSim {
    name: &'static str,
    plans: Vec<PlanRef>,
    numbering: InvoiceNumbering,
    numbering_seq: i64,
}

struct Billable {
    id: String,
    state: UsageRecord,
}

struct OpenInvoice {
    id: String,
    state: Invoice,
    seq: i64,
    /// The `InvoiceIssued` event, whose notification the customer reads.
    issued_event: Option<String>,
    pay_day: u32,
    past_due_day: Option<u32>,
}

struct TicketSim {
    id: String,
    state: Ticket,
    seq: i64,
    stage: u8,
    next_day: u32,
    agent: String,
}

struct Customer {
    index: usize,
    tenant: usize,
    customer_id: String,
    recipient: String,
    join_day: u32,
    sub_id: String,
    sub: Subscription,
    sub_seq: i64,
    tx_counter: u64,
    /// Recorded usage of meters with an overage price, billed at renewal.
    billable: Vec<Billable>,
    open_invoices: Vec<OpenInvoice>,
    inbox: Inbox,
    inbox_seq: i64,
    ticket: Option<TicketSim>,
    payments: u64,
}

fn money(units: i64, scale: u32) -> Decimal {
    Decimal::new(units, scale)
}

fn plan_terms(code: &str, currency: Currency, base: i64, seat: i64, included: i64) -> PlanTerms {
    PlanTerms {
        code: code.to_string(),
        name: format!("{}{}", code[..1].to_uppercase(), &code[1..]),
        currency,
        interval: Interval::Month,
        base_price: money(base, 2),
        seat_price: money(seat, 2),
        seats: SeatLimits { min: 1, max: 500 },
        meters: vec![
            MeterTerms {
                key: "api_calls".to_string(),
                included: Some(Decimal::from(included)),
                hard_cap: None,
                pricing: Some(MeterPricing::PerUnit {
                    unit_price: money(2, 3),
                }),
                reset: ResetCadence::Monthly,
            },
            MeterTerms {
                key: "storage_gb_hours".to_string(),
                included: None,
                hard_cap: None,
                pricing: None,
                reset: ResetCadence::Monthly,
            },
        ],
        trial_days: 0,
        tax_rate_ids: vec![],
    }
}

const REGIONS: [&str; 4] = ["eu-west-1", "eu-central-1", "us-east-1", "ap-south-1"];
const ENDPOINTS: [&str; 5] = [
    "/v1/search",
    "/v1/documents",
    "/v1/exports",
    "/v1/images/resize",
    "/v1/webhooks",
];

/// Writes exactly `n` events through `tx` (blocking; run off the runtime).
fn generate(n: u64, seed: u64, tx: mpsc::Sender<Vec<u8>>) -> Result<GenStats> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut sink = Sink::new(n, tx);
    let start = epoch();

    let mut tenants = Vec::new();
    for (name, currency) in TENANTS {
        let currency = Currency::parse(currency).map_err(|e| anyhow!("{e}"))?;
        let mut plans = Vec::new();
        for (code, base, seat, included) in [("basic", 2900, 500, 500), ("pro", 9900, 400, 5000)] {
            let plan_id = PlanId::generate().into_string();
            let mut plan = Plan::default();
            let mut seq = 0;
            let events = plan.decide(PlanCommand::Create {
                plan_id: plan_id.clone(),
                terms: plan_terms(code, currency, base, seat, included),
                at: start,
            })?;
            sink.emit(
                name,
                &plan_id,
                &mut plan,
                &mut seq,
                events,
                start,
                &Meta::client(),
            )?;
            plans.push(plan.plan_ref().context("a created plan")?);
        }
        tenants.push(TenantSim {
            name,
            plans,
            numbering: InvoiceNumbering::default(),
            numbering_seq: 0,
        });
    }

    let count = (n / EVENTS_PER_CUSTOMER).max(4) as usize;
    let mut customers: Vec<Customer> = (0..count)
        .map(|i| {
            let customer_id = format!("cus_{i:06}");
            Customer {
                index: i,
                tenant: i % TENANTS.len(),
                recipient: format!("customer:{customer_id}"),
                customer_id,
                join_day: (i % JOIN_DAYS) as u32,
                sub_id: SubscriptionId::generate().into_string(),
                sub: Subscription::default(),
                sub_seq: 0,
                tx_counter: 0,
                billable: Vec::new(),
                open_invoices: Vec::new(),
                inbox: Inbox::default(),
                inbox_seq: 0,
                ticket: None,
                payments: 0,
            }
        })
        .collect();

    let mut day: u32 = 0;
    while !sink.full() {
        let before = sink.written;
        let day_start = start + chrono::Duration::days(i64::from(day));
        for c in customers.iter_mut() {
            if sink.full() {
                break;
            }
            let tenant = &mut tenants[c.tenant];
            step(c, tenant, &mut rng, &mut sink, day, day_start)
                .with_context(|| format!("day {day}, customer {}", c.customer_id))?;
        }
        if sink.written == before && day as usize > JOIN_DAYS {
            bail!("the simulation stopped producing events on day {day}");
        }
        day += 1;
    }
    sink.flush()?;
    sink.stats.customers = count;
    sink.stats.days = day;
    Ok(sink.stats)
}

/// One simulated day of one customer.
fn step(
    c: &mut Customer,
    tenant: &mut TenantSim,
    rng: &mut StdRng,
    sink: &mut Sink,
    day: u32,
    day_start: DateTime<Utc>,
) -> Result<()> {
    use SubscriptionStatus::{Active, PastDue, Suspended};
    if day < c.join_day {
        return Ok(());
    }
    let t0 =
        day_start + chrono::Duration::hours(8) + chrono::Duration::seconds((c.index % 3600) as i64);
    if day == c.join_day {
        return join(c, tenant, rng, sink, day, t0);
    }
    let mins = |m: i64| t0 + chrono::Duration::minutes(m);
    let served = |c: &Customer| matches!(c.sub.status, Some(Active | PastDue | Suspended));
    if served(c) && c.sub.current_period.is_some_and(|p| p.end <= t0) {
        renew(c, tenant, rng, sink, day, t0)?;
    }
    collections(c, sink, day, mins(1))?;
    if matches!(c.sub.status, Some(Active | PastDue)) {
        usage(c, tenant.name, rng, sink, t0)?;
    }
    if c.sub.status == Some(Active) {
        changes(c, tenant, rng, sink, mins(15 * 60))?;
    }
    ticket(c, tenant.name, rng, sink, day, mins(15 * 60 + 30))?;
    if rng.gen_ratio(1, 45) {
        let events = c.inbox.decide(InboxCommand::ReadAll {
            recipient: c.recipient.clone(),
            at: mins(16 * 60),
        })?;
        sink.emit(
            tenant.name,
            &c.recipient,
            &mut c.inbox,
            &mut c.inbox_seq,
            events,
            mins(16 * 60),
            &Meta::client(),
        )?;
    }
    Ok(())
}

/// Subscribes and activates; the billing policy invoices the first period.
fn join(
    c: &mut Customer,
    tenant: &mut TenantSim,
    rng: &mut StdRng,
    sink: &mut Sink,
    day: u32,
    t0: DateTime<Utc>,
) -> Result<()> {
    let plan = tenant.plans[(c.index / TENANTS.len()) % tenant.plans.len()].clone();
    let meta = Meta::client();
    let events = c.sub.decide(SubscriptionCommand::Create {
        subscription_id: c.sub_id.clone(),
        customer_id: c.customer_id.clone(),
        plan,
        seats: Some(rng.gen_range(1..=20)),
        trial_days: None,
        tax_rate_ids: vec![],
        at: t0,
    })?;
    sink.emit(
        tenant.name,
        &c.sub_id,
        &mut c.sub,
        &mut c.sub_seq,
        events,
        t0,
        &meta,
    )?;
    let at = t0 + chrono::Duration::minutes(5);
    let events = c
        .sub
        .decide(SubscriptionCommand::Activate { at, now: at })?;
    let ids = sink.emit(
        tenant.name,
        &c.sub_id,
        &mut c.sub,
        &mut c.sub_seq,
        events,
        at,
        &Meta::client(),
    )?;
    let period = c
        .sub
        .current_period
        .context("an active subscription's period")?;
    let terms = c.sub.plan.clone().context("a subscription's plan")?;
    let lines = renewal_lines(
        &Renewal {
            closed_period: Period {
                start: period.start,
                end: period.start,
            },
            new_period: period,
            plan: &terms,
            seats: c.sub.seats,
            prorations: &[],
        },
        &[],
    );
    let invoice_id = activation_invoice_id(&c.sub_id, &period).into_string();
    let cause = ids.first().cloned().unwrap_or_default();
    invoice(
        c,
        tenant,
        rng,
        sink,
        day,
        (invoice_id, None),
        lines,
        at + chrono::Duration::seconds(1),
        &cause,
    )
}

/// The renewal scheduler, then the billing policy's renewal invoice.
fn renew(
    c: &mut Customer,
    tenant: &mut TenantSim,
    rng: &mut StdRng,
    sink: &mut Sink,
    day: u32,
    at: DateTime<Utc>,
) -> Result<()> {
    let events = c.sub.decide(SubscriptionCommand::Renew { at })?;
    let renewed = events.first().cloned();
    let ids = sink.emit(
        tenant.name,
        &c.sub_id,
        &mut c.sub,
        &mut c.sub_seq,
        events,
        at,
        &Meta::scheduler("system:billing"),
    )?;
    let Some(SubscriptionEvent::PeriodRenewed {
        closed_period,
        new_period,
        plan,
        seats,
        prorations,
        ..
    }) = renewed
    else {
        // Canceled at the period end: nothing more to bill.
        c.billable.clear();
        return Ok(());
    };
    let cause = ids.first().cloned().unwrap_or_default();
    let meta = Meta::caused("system:billing", &cause);
    let invoice_id = renewal_invoice_id(&c.sub_id, &closed_period).into_string();
    let at = at + chrono::Duration::seconds(30);
    // Usage of the closed period becomes Billed on the invoice first.
    let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut c.billable)
        .into_iter()
        .partition(|b| b.state.timestamp.is_some_and(|t| t < closed_period.end));
    c.billable = later;
    let mut during: HashMap<String, Decimal> = HashMap::new();
    for mut b in due {
        let events = b.state.decide(UsageCommand::MarkBilled {
            invoice_id: invoice_id.clone(),
            at,
        })?;
        let mut seq = 1;
        sink.emit(
            tenant.name,
            &b.id,
            &mut b.state,
            &mut seq,
            events,
            at,
            &meta,
        )?;
        *during.entry(b.state.meter.clone()).or_default() += b.state.quantity;
    }
    let plan = plan.context("PeriodRenewed without its plan")?;
    let usage: Vec<MeterUsage> = plan
        .meters
        .iter()
        .filter(|m| m.pricing.is_some())
        .map(|m| MeterUsage {
            meter: m.key.clone(),
            before: Decimal::ZERO,
            during: during.get(&m.key).copied().unwrap_or_default(),
        })
        .collect();
    let lines = renewal_lines(
        &Renewal {
            closed_period,
            new_period,
            plan: &plan,
            seats: seats.unwrap_or(c.sub.seats),
            prorations: &prorations,
        },
        &usage,
    );
    invoice(
        c,
        tenant,
        rng,
        sink,
        day,
        (invoice_id, Some(closed_period)),
        lines,
        at + chrono::Duration::seconds(1),
        &cause,
    )
}

/// Creates an invoice with `lines` and issues it with the tenant's next
/// number (invoice and numbering events together, as `execute_pair` appends
/// them); an open invoice is scheduled for payment, a few of them late.
#[allow(clippy::too_many_arguments)]
fn invoice(
    c: &mut Customer,
    tenant: &mut TenantSim,
    rng: &mut StdRng,
    sink: &mut Sink,
    day: u32,
    (invoice_id, billing_period): (String, Option<Period>),
    lines: Vec<NewLine>,
    at: DateTime<Utc>,
    cause: &str,
) -> Result<()> {
    let meta = Meta::caused("system:billing", cause);
    let terms = c.sub.plan.as_ref().context("a subscription's plan")?;
    let mut state = Invoice::default();
    let mut seq = 0;
    let events = state.decide(InvoiceCommand::Create {
        invoice_id: invoice_id.clone(),
        customer_id: c.customer_id.clone(),
        currency: terms.currency,
        subscription_id: Some(c.sub_id.clone()),
        billing_period,
        due_days: Some(tally_aggregates::invoice::DEFAULT_DUE_DAYS),
        lines,
        at,
    })?;
    sink.emit(
        tenant.name,
        &invoice_id,
        &mut state,
        &mut seq,
        events,
        at,
        &meta,
    )?;
    let at = at + chrono::Duration::seconds(1);
    let issued = state.decide(InvoiceCommand::Issue {
        number: tenant.numbering.next(),
        available_credit: rust_decimal::Decimal::ZERO,
        at,
        customer: None,
        taxes: Default::default(),
    })?;
    let assigned = tenant.numbering.decide(NumberingCommand::Assign {
        invoice_id: invoice_id.clone(),
        at,
    })?;
    let moves_money = matches!(
        issued.first(),
        Some(InvoiceEvent::InvoiceIssued { total, .. }) if !total.is_zero()
    );
    let ids = sink.emit(
        tenant.name,
        &invoice_id,
        &mut state,
        &mut seq,
        issued,
        at,
        &meta,
    )?;
    if moves_money && !ids.is_empty() {
        sink.stats.journal_rows += 2;
    }
    sink.emit(
        tenant.name,
        NUMBERING_ID,
        &mut tenant.numbering,
        &mut tenant.numbering_seq,
        assigned,
        at,
        &meta,
    )?;
    if state.status == Some(InvoiceStatus::Open) {
        let (pay_day, past_due_day) = if rng.gen_ratio(1, 12) {
            let past_due = day + tally_aggregates::invoice::DEFAULT_DUE_DAYS + 1;
            (past_due + rng.gen_range(2..=9), Some(past_due))
        } else {
            (day + rng.gen_range(1..=5), None)
        };
        c.open_invoices.push(OpenInvoice {
            id: invoice_id,
            state,
            seq,
            issued_event: ids.first().cloned(),
            pay_day,
            past_due_day,
        });
    }
    Ok(())
}

/// Collections marks overdue invoices' subscriptions past due; customers pay
/// (clearing past due) and read the invoice's notification.
fn collections(c: &mut Customer, sink: &mut Sink, day: u32, at: DateTime<Utc>) -> Result<()> {
    use SubscriptionStatus::{Active, PastDue};
    let tenant = TENANTS[c.tenant].0;
    let mut i = 0;
    while i < c.open_invoices.len() {
        let inv = &mut c.open_invoices[i];
        if inv.past_due_day == Some(day) && matches!(c.sub.status, Some(Active | PastDue)) {
            let events = c.sub.decide(SubscriptionCommand::MarkPastDue {
                invoice_id: inv.id.clone(),
                at,
            })?;
            sink.emit(
                tenant,
                &c.sub_id,
                &mut c.sub,
                &mut c.sub_seq,
                events,
                at,
                &Meta::scheduler("system:collections"),
            )?;
        }
        if inv.pay_day != day {
            i += 1;
            continue;
        }
        c.payments += 1;
        let events = inv.state.decide(InvoiceCommand::RecordPayment {
            payment_id: PaymentId::generate().into_string(),
            amount: inv.state.amount_due,
            reference: format!("bank-{}-{}", c.customer_id, c.payments),
            captured_at: at,
            excess_to_credit: false,
            at,
        })?;
        let ids = sink.emit(
            tenant,
            &inv.id,
            &mut inv.state,
            &mut inv.seq,
            events,
            at,
            &Meta::client(),
        )?;
        if !ids.is_empty() {
            sink.stats.journal_rows += 2;
        }
        if c.sub.status == Some(PastDue) {
            let cause = ids.last().cloned().unwrap_or_default();
            let events = c.sub.decide(SubscriptionCommand::ClearPastDue {
                invoice_id: inv.id.clone(),
                at,
            })?;
            sink.emit(
                tenant,
                &c.sub_id,
                &mut c.sub,
                &mut c.sub_seq,
                events,
                at,
                &Meta::caused("system:collections", &cause),
            )?;
        }
        if let Some(issued) = &inv.issued_event {
            let events = c.inbox.decide(InboxCommand::MarkRead {
                recipient: c.recipient.clone(),
                item_id: item_id(issued, &c.recipient),
                at,
            })?;
            sink.emit(
                tenant,
                &c.recipient,
                &mut c.inbox,
                &mut c.inbox_seq,
                events,
                at,
                &Meta::client(),
            )?;
        }
        c.open_invoices.remove(i);
    }
    Ok(())
}

/// 0–3 usage records at times of the day after `t0`, half of them on the
/// meter with an overage price.
fn usage(
    c: &mut Customer,
    tenant: &str,
    rng: &mut StdRng,
    sink: &mut Sink,
    t0: DateTime<Utc>,
) -> Result<()> {
    let k = rng.gen_range(0..=3);
    if k == 0 {
        return Ok(());
    }
    let mut offsets: Vec<i64> = (0..k).map(|_| rng.gen_range(120..14 * 3600)).collect();
    offsets.sort_unstable();
    let context = SubscriptionContext {
        subscription_id: c.sub_id.clone(),
        status: c.sub.status.context("a served subscription")?,
        anchor: c.sub.anchor,
        plan: c.sub.plan.clone().context("a subscription's plan")?,
    };
    for offset in offsets {
        let ts = t0 + chrono::Duration::seconds(offset);
        c.tx_counter += 1;
        let transaction_id = format!("{}-{}", c.sub_id, c.tx_counter);
        let id = record_id(&transaction_id);
        let meter = &context.plan.meters[rng.gen_range(0..context.plan.meters.len())];
        let billable = meter.pricing.is_some();
        let mut properties = serde_json::Map::new();
        properties.insert(
            "region".into(),
            REGIONS[rng.gen_range(0..REGIONS.len())].into(),
        );
        properties.insert(
            "endpoint".into(),
            ENDPOINTS[rng.gen_range(0..ENDPOINTS.len())].into(),
        );
        let mut state = UsageRecord::default();
        let mut seq = 0;
        let events = state.decide(UsageCommand::Record {
            record_id: id.clone(),
            transaction_id,
            subscription: context.clone(),
            meter: meter.key.clone(),
            quantity: Decimal::from(rng.gen_range(1..=60)),
            timestamp: ts,
            properties,
            now: ts + chrono::Duration::seconds(2),
        })?;
        sink.emit(
            tenant,
            &id,
            &mut state,
            &mut seq,
            events,
            ts + chrono::Duration::seconds(2),
            &Meta::client(),
        )?;
        if billable {
            c.billable.push(Billable { id, state });
        }
    }
    Ok(())
}

/// Seat changes, plan changes and cancellations of an active subscription.
fn changes(
    c: &mut Customer,
    tenant: &TenantSim,
    rng: &mut StdRng,
    sink: &mut Sink,
    at: DateTime<Utc>,
) -> Result<()> {
    let command = if rng.gen_ratio(1, 40) {
        SubscriptionCommand::ChangeSeats {
            seats: rng.gen_range(1..=20),
            proration: ProrationMode::Prorate,
            at,
        }
    } else if rng.gen_ratio(1, 400) {
        let Some(plan) = tenant
            .plans
            .iter()
            .find(|p| p.plan_id != c.sub.plan_id)
            .cloned()
        else {
            return Ok(());
        };
        SubscriptionCommand::ChangePlan {
            plan,
            proration: ProrationMode::Prorate,
            at,
        }
    } else if rng.gen_ratio(1, 2500) && !c.sub.cancel_at_period_end {
        SubscriptionCommand::Cancel {
            when: CancelWhen::PeriodEnd,
            reason: Some("switching provider".to_string()),
            at,
        }
    } else {
        return Ok(());
    };
    let events = c.sub.decide(command)?;
    sink.emit(
        tenant.name,
        &c.sub_id,
        &mut c.sub,
        &mut c.sub_seq,
        events,
        at,
        &Meta::client(),
    )?;
    Ok(())
}

/// A support ticket's life, one step a day: opened (sometimes with an
/// attachment), assigned (which opens it), answered by the agent, replied to
/// by the customer, solved (the customer reads that notification), closed.
fn ticket(
    c: &mut Customer,
    tenant: &str,
    rng: &mut StdRng,
    sink: &mut Sink,
    day: u32,
    at: DateTime<Utc>,
) -> Result<()> {
    let Some(t) = c.ticket.as_mut() else {
        if c.sub.status != Some(SubscriptionStatus::Canceled) && rng.gen_ratio(1, 90) {
            let id = TicketId::generate().into_string();
            let mut state = Ticket::default();
            let mut seq = 0;
            let priorities = [
                Priority::Low,
                Priority::Normal,
                Priority::High,
                Priority::Urgent,
            ];
            let mut events = state.decide(TicketCommand::Create {
                ticket_id: id.clone(),
                subject: format!("Invoice question from {}", c.customer_id),
                description: "Our last invoice shows more API calls than our dashboard. \
                              Could you check the usage of the closed period and tell us \
                              which endpoints were billed?"
                    .to_string(),
                requester: c.customer_id.clone(),
                priority: priorities[rng.gen_range(0..priorities.len())],
                subscription_id: Some(c.sub_id.clone()),
                at,
            })?;
            let meta = Meta::client();
            sink.emit(tenant, &id, &mut state, &mut seq, events, at, &meta)?;
            if rng.gen_ratio(1, 3) {
                let attachment_id = AttachmentId::generate().into_string();
                events = state.decide(TicketCommand::Attach {
                    storage_key: format!("tickets/{id}/{attachment_id}"),
                    attachment_id,
                    file_name: "usage-export.csv".to_string(),
                    content_type: "text/csv".to_string(),
                    size_bytes: rng.gen_range(1_000..200_000),
                    at,
                })?;
                sink.emit(tenant, &id, &mut state, &mut seq, events, at, &meta)?;
            }
            c.ticket = Some(TicketSim {
                id,
                state,
                seq,
                stage: 1,
                next_day: day + 1,
                agent: format!("agent_{}", rng.gen_range(0..AGENTS)),
            });
        }
        return Ok(());
    };
    if t.next_day != day {
        return Ok(());
    }
    let command = match t.stage {
        1 => TicketCommand::Assign {
            assignee: t.agent.clone(),
            at,
        },
        2 => TicketCommand::Comment {
            comment_id: CommentId::generate().into_string(),
            author: t.agent.clone(),
            body: "Thanks for reaching out. The overage line covers the API calls above \
                   the included quantity in the closed period; the export is attached."
                .to_string(),
            public: true,
            at,
        },
        3 => TicketCommand::Comment {
            comment_id: CommentId::generate().into_string(),
            author: c.customer_id.clone(),
            body: "Understood, thank you. That matches our numbers now.".to_string(),
            public: true,
            at,
        },
        4 => TicketCommand::Transition {
            to: TicketStatus::Solved,
            at,
        },
        _ => TicketCommand::Transition {
            to: TicketStatus::Closed,
            at,
        },
    };
    let events = t.state.decide(command)?;
    let ids = sink.emit(
        tenant,
        &t.id,
        &mut t.state,
        &mut t.seq,
        events,
        at,
        &Meta::client(),
    )?;
    match t.stage {
        4 => {
            // The customer reads the "solved" notification.
            if let Some(event) = ids.first() {
                let events = c.inbox.decide(InboxCommand::MarkRead {
                    recipient: c.recipient.clone(),
                    item_id: item_id(event, &c.recipient),
                    at: at + chrono::Duration::minutes(20),
                })?;
                sink.emit(
                    tenant,
                    &c.recipient,
                    &mut c.inbox,
                    &mut c.inbox_seq,
                    events,
                    at + chrono::Duration::minutes(20),
                    &Meta::client(),
                )?;
            }
            t.stage = 5;
            t.next_day = day + 3;
        }
        5 => c.ticket = None,
        _ => {
            t.stage += 1;
            t.next_day = day + 1;
        }
    }
    Ok(())
}

/// `1234567` → `1,234,567`.
pub(crate) fn thousands(n: u64) -> String {
    let digits = n.to_string();
    // The leading group has 1 to 3 digits, every other group 3.
    let lead = match digits.len() % 3 {
        0 => 3.min(digits.len()),
        r => r,
    };
    let mut out = digits[..lead].to_string();
    for group in digits.as_bytes()[lead..].chunks(3) {
        out.push(',');
        out.extend(group.iter().map(|&b| b as char));
    }
    out
}

/// kB → `41.3 MB` (MiB), or `n/a` when nothing was sampled.
pub(crate) fn mib(kb: u64) -> String {
    if kb == 0 {
        "n/a".to_string()
    } else {
        format!("{:.1} MB", kb as f64 / 1024.0)
    }
}

#[cfg(test)]
mod tests {
    use super::{copy_escape, thousands};

    #[test]
    fn copy_fields_escape_what_text_format_needs() {
        let mut b = Vec::new();
        copy_escape(&mut b, "a\\b\tc\nd\re {\"x\":\"\\n\"}");
        assert_eq!(
            String::from_utf8(b).unwrap(),
            "a\\\\b\\tc\\nd\\re {\"x\":\"\\\\n\"}"
        );
    }

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1234567), "1,234,567");
    }
}
