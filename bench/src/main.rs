//! `tally-bench`: benchmark programs that print figures.
//!
//! Each subcommand measures how close one of Tally's write paths comes to
//! what the same PostgreSQL can do for the cheapest equivalent raw append, in
//! one run on one machine, so the two figures are directly comparable. Both
//! share the same frame: a fresh database `tally_bench_<unix time>` is
//! created, the real server is started in-process (`tally_api::start` on
//! 127.0.0.1:0, system clock, default projection runtime, no tracing
//! subscriber so no per-request logs), a plan plus `--subscriptions` active
//! subscriptions are created over HTTP, the HTTP phase runs, the server is
//! stopped, and the raw ceiling runs in a table `bench_events` shaped like the
//! event log, in the same database. The database is dropped at the end, also
//! when a phase fails or the run is interrupted (Ctrl-C). Every loop is
//! bounded in time; non-2xx answers and failed inserts are counted and
//! reported, never hidden.
//!
//! `tally-bench commands`:
//!
//! * **(a) command throughput.** `--connections` client tasks share one
//!   `reqwest::Client` and, for `--seconds`, each sends
//!   `POST /v1/subscriptions/{random id}/change-seats` with a random seat
//!   count and `"proration": "prorate"`. Each such command loads the
//!   aggregate, decides, and appends a `SeatsChanged` event (with the
//!   optimistic-concurrency retries the server does on its own), while the
//!   projection consumers keep the read models up to date in the background
//!   — i.e. the full cost of a write. 2xx and non-2xx answers are counted
//!   separately (a non-2xx, e.g. 409 `concurrent_modification` after the
//!   server's retries, is reported, never hidden); the latency of every
//!   answered request is recorded.
//! * **(b) raw ceiling.** The same number of tasks over a `PgPool` with that
//!   many connections each loop for `--seconds` on `BEGIN; INSERT one row;
//!   COMMIT` with a realistic payload (~300 bytes) and metadata (~200 bytes).
//!   That is the floor cost of durably appending one event; Tally cannot beat
//!   it.
//!
//! The ratio (a)/(b) says how much of the database's append capacity the
//! command path keeps; the target is at least 0.6.
//!
//! `tally-bench usage`:
//!
//! * **(a) usage ingest.** The plan has one meter `api_calls` without a hard
//!   cap (so the quota policy never suspends anything). `--connections`
//!   client tasks each loop for `--seconds` on `POST /v1/usage/batch` with
//!   1,000 records (random subscription, quantity 1, timestamp now, a
//!   transaction id unique per record). Records answered `created` are
//!   counted, as are batches answered 2xx or not, and the batch latency.
//! * **(b) raw ceiling.** The same number of tasks each loop on `BEGIN; one
//!   multi-row INSERT of 100 rows; COMMIT` with `UsageRecorded`-like payloads
//!   (~300 bytes) and metadata (~200 bytes).
//!
//! The ratio records/s ÷ rows/s says how much of the database's bulk append
//! capacity the ingest path keeps; the target is at least 0.5.
//!
//! `commands` also measures **projection lag** (in-process server only): each
//! 2xx answer carries `X-Log-Position`; a watcher reads every millisecond
//! how far each consumer's runner has got (`Runtime::cursor_position`, in
//! memory) and records, for each acknowledged command, the time from the
//! client's receipt of the answer until every read model (the rebuildable
//! projections), and separately every consumer (what `X-Min-Position` waits
//! for), had reached its position. Before the measured phase, the setup
//! waits until every consumer has caught up (`GET /v1/admin/projections`).
//!
//! With `--server-binary PATH` (`commands`, `queries`) the server is the
//! release binary started as a child process (`serve --rate-limit 0`,
//! `TALLY_LOG=warn`), and its peak resident set (`VmHWM` from
//! `/proc/<pid>/status`) is read after the load. The in-process server runs
//! without the per-key rate limit too (the limit is a guard, not a cost).
//!
//! `--percentiles-csv PATH` writes the latency percentiles of the measured
//! phases (`series,percentile,ms`) for `bench/plot.py`. `queries` and
//! `long-stream` are described in their modules.

use std::collections::BTreeMap;
use std::future::Future;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{Connection, PgConnection};
use tally_api::ratelimit::RateLimit;
use tally_api::{start, AppState, Config};
use tally_commands::Clock;
use tally_projections::runtime::RuntimeConfig;
use tally_projections::Runtime;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

mod long_stream;
mod queries;
mod rebuild;

/// Subscription creations/activations in flight during setup (more than
/// about 30 concurrent creations exhausted the server's pool on 2026-11-24:
/// 503 "pool timed out" after 5 s; setup time is not a figure here).
const SETUP_CONCURRENCY: usize = 8;
/// Setup (plan + subscriptions) must finish within this.
const SETUP_DEADLINE: Duration = Duration::from_secs(60);
/// After the setup, every consumer must catch up within this.
const SETTLE_DEADLINE: Duration = Duration::from_secs(300);
/// One HTTP request may take at most this (the server's own limit is 30 s).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Grace after a measuring deadline for the last in-flight operations.
const DRAIN_GRACE: Duration = Duration::from_secs(15);
/// Bound on administrative statements (create/drop database, shutdown).
const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Seat counts sent by the command loop: `1..=MAX_SEATS`.
const MAX_SEATS: u32 = 1000;
/// Records per `POST /v1/usage/batch` (the API's maximum).
const USAGE_BATCH: usize = 1000;
/// The meter the usage benchmark reports on.
const USAGE_METER: &str = "api_calls";
/// Rows per INSERT in the usage ceiling.
const USAGE_CEILING_ROWS: usize = 100;

#[derive(Parser, Debug)]
#[command(name = "tally-bench", about = "Benchmark programs that print figures")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Command throughput over HTTP versus raw PostgreSQL insert ceiling.
    Commands(CommandsArgs),
    /// Usage batch ingest over HTTP versus raw PostgreSQL multi-row inserts.
    Usage(UsageArgs),
    /// Generates a log across all aggregates and times `tally-replay rebuild --all`.
    Rebuild(rebuild::RebuildArgs),
    /// Invoice list queries (filters, cursor pages) over 1,000,000 invoices.
    Queries(queries::QueriesArgs),
    /// Command latency on a stream of 100,000 events versus a fresh stream.
    LongStream(long_stream::LongStreamArgs),
}

#[derive(Args, Debug, Clone)]
struct DatabaseArgs {
    /// A PostgreSQL URL allowed to create and drop databases (any database).
    #[arg(
        long,
        env = "TALLY_BENCH_DATABASE_ADMIN_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    database_admin_url: String,
}

#[derive(Args, Debug, Clone)]
struct CommandsArgs {
    #[command(flatten)]
    db: DatabaseArgs,
    /// Length of each measuring phase, in seconds.
    #[arg(long, default_value_t = 30.0)]
    seconds: f64,
    /// Concurrent clients (HTTP tasks in (a), pooled connections in (b)).
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Active subscriptions the commands are spread over.
    #[arg(long, default_value_t = 1000)]
    subscriptions: usize,
    #[command(flatten)]
    out: OutputArgs,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Args, Debug, Clone)]
struct OutputArgs {
    /// Writes the latency percentiles of the measured phases to this CSV file.
    #[arg(long)]
    percentiles_csv: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
struct ServerArgs {
    /// Runs this `tally` binary as a child process instead of the in-process
    /// server, and reports its peak RSS (no projection lag then).
    #[arg(long)]
    server_binary: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
struct UsageArgs {
    #[command(flatten)]
    db: DatabaseArgs,
    /// Length of each measuring phase, in seconds.
    #[arg(long, default_value_t = 30.0)]
    seconds: f64,
    /// Concurrent clients (HTTP tasks in (a), pooled connections in (b)).
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Active subscriptions the usage records are spread over.
    #[arg(long, default_value_t = 100)]
    subscriptions: usize,
    #[command(flatten)]
    out: OutputArgs,
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Commands(args) => commands(args).await,
        Command::Usage(args) => usage(args).await,
        Command::Rebuild(args) => rebuild::run(args).await,
        Command::Queries(args) => queries::run(args).await,
        Command::LongStream(args) => long_stream::run(args).await,
    }
}

/// Latency and outcome figures of one measured phase.
struct Phase {
    /// Operations (requests, transactions) that succeeded.
    ok: u64,
    /// Units those operations wrote: usage records created, rows inserted
    /// (one per operation where an operation writes one).
    items: u64,
    failures: BTreeMap<String, u64>,
    /// Per-item outcomes other than success inside successful operations
    /// (e.g. a rejected record in an accepted batch).
    notes: BTreeMap<String, u64>,
    /// Latencies in microseconds, sorted.
    latencies_us: Vec<u64>,
    wall: Duration,
}

impl Phase {
    fn failed(&self) -> u64 {
        self.failures.values().sum()
    }

    fn per_second(&self, n: u64) -> f64 {
        let secs = self.wall.as_secs_f64();
        if secs > 0.0 {
            n as f64 / secs
        } else {
            0.0
        }
    }

    /// Successful operations per second.
    fn rate(&self) -> f64 {
        self.per_second(self.ok)
    }

    /// Items written per second.
    fn item_rate(&self) -> f64 {
        self.per_second(self.items)
    }

    /// The `p`-quantile (0..=1) in milliseconds (nearest rank).
    fn quantile_ms(&self, p: f64) -> f64 {
        let n = self.latencies_us.len();
        if n == 0 {
            return 0.0;
        }
        let idx = ((n - 1) as f64 * p).round() as usize;
        self.latencies_us[idx.min(n - 1)] as f64 / 1000.0
    }

    fn max_ms(&self) -> f64 {
        self.latencies_us.last().copied().unwrap_or(0) as f64 / 1000.0
    }

    /// `p50 … ms, p99 … ms, max … ms`.
    fn latency_summary(&self) -> String {
        format!(
            "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            self.quantile_ms(0.50),
            self.quantile_ms(0.99),
            self.max_ms()
        )
    }

    /// Prints the failures and the notes, each on an indented line, if any.
    fn print_issues(&self, failures: &str, notes: &str) {
        if !self.failures.is_empty() {
            println!("  {failures}: {}", summary(&self.failures));
        }
        if !self.notes.is_empty() {
            println!("  {notes}: {}", summary(&self.notes));
        }
    }
}

fn summary(counts: &BTreeMap<String, u64>) -> String {
    counts
        .iter()
        .map(|(k, n)| format!("{k} x{n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Prints the ratio line of a benchmark against its ceiling.
fn print_ratio(rate: f64, ceiling: f64, target: f64) {
    if ceiling > 0.0 {
        let ratio = rate / ceiling;
        println!(
            "ratio:    {ratio:.2} (target >= {target}: {})",
            if ratio >= target { "met" } else { "NOT met" }
        );
    } else {
        println!("ratio:    n/a (the ceiling phase completed no insert)");
    }
}

/// What one worker task of a measured phase brings back.
#[derive(Default)]
struct WorkerResult {
    ok: u64,
    items: u64,
    failures: BTreeMap<String, u64>,
    notes: BTreeMap<String, u64>,
    latencies_us: Vec<u64>,
}

impl WorkerResult {
    fn new() -> Self {
        WorkerResult {
            latencies_us: Vec::with_capacity(4096),
            ..WorkerResult::default()
        }
    }

    fn fail(&mut self, what: String) {
        *self.failures.entry(what).or_insert(0) += 1;
    }

    fn note(&mut self, what: String) {
        *self.notes.entry(what).or_insert(0) += 1;
    }

    fn record_latency(&mut self, since: Instant) {
        self.latencies_us.push(since.elapsed().as_micros() as u64);
    }
}

/// Joins the workers of a phase (bounded by `limit`) and merges their figures.
async fn collect(
    mut set: JoinSet<WorkerResult>,
    started: Instant,
    limit: Instant,
) -> Result<Phase> {
    let mut phase = Phase {
        ok: 0,
        items: 0,
        failures: BTreeMap::new(),
        notes: BTreeMap::new(),
        latencies_us: Vec::new(),
        wall: Duration::ZERO,
    };
    loop {
        let next = tokio::time::timeout_at(limit.into(), set.join_next())
            .await
            .map_err(|_| anyhow!("workers did not stop within {DRAIN_GRACE:?} of the deadline"))?;
        let Some(joined) = next else { break };
        let worker = joined.context("a worker task failed")?;
        phase.ok += worker.ok;
        phase.items += worker.items;
        for (k, n) in worker.failures {
            *phase.failures.entry(k).or_insert(0) += n;
        }
        for (k, n) in worker.notes {
            *phase.notes.entry(k).or_insert(0) += n;
        }
        phase.latencies_us.extend(worker.latencies_us);
    }
    phase.wall = started.elapsed();
    phase.latencies_us.sort_unstable();
    Ok(phase)
}

/// Checks the shared arguments; returns the length of a measuring phase.
fn measuring_duration(seconds: f64, connections: usize, subscriptions: usize) -> Result<Duration> {
    if !(seconds > 0.0 && seconds <= 3600.0) {
        bail!("--seconds must be in (0, 3600]");
    }
    if connections == 0 || subscriptions == 0 {
        bail!("--connections and --subscriptions must be at least 1");
    }
    Ok(Duration::from_secs_f64(seconds))
}

async fn commands(args: CommandsArgs) -> Result<()> {
    let duration = measuring_duration(args.seconds, args.connections, args.subscriptions)?;
    let connections = args.connections;
    let subscriptions = args.subscriptions;
    let binary = args.server.server_binary.clone();
    let ((commands, lag), peak_rss_kb, ceiling) =
        in_fresh_database(&args.db.database_admin_url, connections, |url| async move {
            let (commands, peak_rss_kb) = with_server(
                &url,
                connections,
                binary.as_deref(),
                |api, state| async move {
                    let ids = setup(&api, &bench_plan(), subscriptions).await?;
                    let runtime = state.map(|s| s.runtime.clone());
                    command_phase(&api, ids, connections, duration, runtime).await
                },
            )
            .await?;
            let ceiling = ceiling_phase(&url, connections, duration, &SEATS_CHANGED_ROWS).await?;
            Ok((commands, peak_rss_kb, ceiling))
        })
        .await?;

    println!(
        "commands: {:.1}/s over {:.1} s (ok {}, failed {}), {}",
        commands.rate(),
        commands.wall.as_secs_f64(),
        commands.ok,
        commands.failed(),
        commands.latency_summary(),
    );
    commands.print_issues("command failures", "command notes");
    println!(
        "ceiling:  {:.1} inserts/s over {:.1} s (ok {}, failed {}), {}",
        ceiling.rate(),
        ceiling.wall.as_secs_f64(),
        ceiling.ok,
        ceiling.failed(),
        ceiling.latency_summary(),
    );
    ceiling.print_issues("insert failures", "insert notes");
    print_ratio(commands.rate(), ceiling.rate(), 0.6);
    match &lag {
        Some(lag) => {
            for (what, p) in [
                ("read models", &lag.read_models),
                ("every consumer (X-Min-Position)", &lag.all),
            ] {
                println!(
                    "lag:      {what}: {} commands, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                    p.ok,
                    p.quantile_ms(0.50),
                    p.quantile_ms(0.99),
                    p.max_ms(),
                );
                p.print_issues("lag not measured", "lag notes");
            }
            let p99 = lag.read_models.quantile_ms(0.99);
            println!(
                "          read models p99 target <= 100 ms: {}",
                if p99 <= 100.0 { "met" } else { "NOT met" }
            );
            if !lag.behind.is_empty() {
                println!(
                    "  most events behind the head (sampled every {LAG_SAMPLE:?}): {}",
                    lag.behind
                );
            }
        }
        None => println!("lag:      not measured (server in a child process)"),
    }
    print_peak_rss(peak_rss_kb);
    let mut series = vec![("commands", &commands)];
    if let Some(lag) = &lag {
        series.push(("projection lag (read models)", &lag.read_models));
    }
    write_percentiles(args.out.percentiles_csv.as_deref(), &series)?;
    Ok(())
}

/// Prints the child server's peak RSS, when there was one.
fn print_peak_rss(peak_rss_kb: Option<u64>) {
    if let Some(kb) = peak_rss_kb {
        println!(
            "server:   peak RSS {} (VmHWM after the load; target <= 150 MB: {})",
            rebuild::mib(kb),
            if kb as f64 / 1024.0 <= 150.0 {
                "met"
            } else {
                "NOT met"
            }
        );
    }
}

/// Percentiles written by `--percentiles-csv` (100 is the maximum).
const CSV_PERCENTILES: [f64; 20] = [
    1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 95.0, 97.0, 98.0, 99.0,
    99.5, 99.8, 99.9, 100.0,
];

/// Writes `series,percentile,ms` rows for each named phase to `path`, if given.
fn write_percentiles(path: Option<&Path>, series: &[(&str, &Phase)]) -> Result<()> {
    let Some(path) = path else { return Ok(()) };
    let mut out = String::from("series,percentile,ms\n");
    for (name, phase) in series {
        if phase.latencies_us.is_empty() {
            continue;
        }
        for p in CSV_PERCENTILES {
            out.push_str(&format!("{name},{p},{:.3}\n", phase.quantile_ms(p / 100.0)));
        }
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(path, out).with_context(|| format!("writing {}", path.display()))?;
    println!("percentiles: {}", path.display());
    Ok(())
}

async fn usage(args: UsageArgs) -> Result<()> {
    let duration = measuring_duration(args.seconds, args.connections, args.subscriptions)?;
    let connections = args.connections;
    let subscriptions = args.subscriptions;
    let (ingest, ceiling) =
        in_fresh_database(&args.db.database_admin_url, connections, |url| async move {
            let (ingest, _) = with_server(&url, connections, None, |api, _| async move {
                // No hard cap: the quota policy never suspends a subscription.
                let plan = json!({
                    "code": "bench",
                    "name": "Bench",
                    "currency": "EUR",
                    "interval": "month",
                    "base_price": "1.00",
                    "meters": [{"key": USAGE_METER, "reset": "monthly"}]
                });
                let ids = setup(&api, &plan, subscriptions).await?;
                usage_phase(&api, ids, connections, duration).await
            })
            .await?;
            let ceiling = ceiling_phase(&url, connections, duration, &USAGE_RECORDED_ROWS).await?;
            Ok((ingest, ceiling))
        })
        .await?;

    println!(
        "usage:    {:.1} records/s over {:.1} s (batches ok {}, failed {}; records created {}), batch {}",
        ingest.item_rate(),
        ingest.wall.as_secs_f64(),
        ingest.ok,
        ingest.failed(),
        ingest.items,
        ingest.latency_summary(),
    );
    ingest.print_issues("batch failures", "records not created");
    println!(
        "ceiling:  {:.1} rows/s over {:.1} s ({}-row inserts, ok {}, failed {}), {}",
        ceiling.item_rate(),
        ceiling.wall.as_secs_f64(),
        USAGE_RECORDED_ROWS.rows_per_insert,
        ceiling.ok,
        ceiling.failed(),
        ceiling.latency_summary(),
    );
    ceiling.print_issues("insert failures", "insert notes");
    print_ratio(ingest.item_rate(), ceiling.item_rate(), 0.5);
    write_percentiles(
        args.out.percentiles_csv.as_deref(),
        &[("usage batches", &ingest)],
    )?;
    Ok(())
}

/// Prints the machine, creates a fresh database, runs `body` with its URL
/// (interruptible by Ctrl-C) and drops the database again, whatever happened.
async fn in_fresh_database<T, F, Fut>(admin_url: &str, connections: usize, body: F) -> Result<T>
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = Result<T>>,
{
    println!("machine: {} cores, {}", cores(), mem_total());
    let name = format!(
        "tally_bench_{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .context("system clock before 1970")?
            .as_secs()
    );
    {
        let mut admin = tokio::time::timeout(ADMIN_TIMEOUT, PgConnection::connect(admin_url))
            .await
            .context("connecting to PostgreSQL timed out")?
            .with_context(|| format!("connecting to {admin_url}"))?;
        let max: String = sqlx::query_scalar("SHOW max_connections")
            .fetch_one(&mut admin)
            .await?;
        let max: usize = max.parse().context("max_connections")?;
        // The ceiling pool plus this admin connection, with some headroom.
        if connections + 4 > max {
            bail!(
                "--connections {connections} needs more than PostgreSQL's max_connections {max} allows"
            );
        }
        tokio::time::timeout(
            ADMIN_TIMEOUT,
            sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut admin),
        )
        .await
        .context("CREATE DATABASE timed out")?
        .with_context(|| format!("creating database {name}"))?;
        let _ = admin.close().await;
    }
    let url = database_url(admin_url, &name);

    let outcome = tokio::select! {
        r = body(url) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
    };
    let dropped = drop_database(admin_url, &name).await;
    let outcome = outcome?;
    dropped?;
    Ok(outcome)
}

/// Starts the server on the database at `url` (in this process, or
/// `binary` as a child process), runs `phase` against it, and stops the
/// server (closing its pools) before returning, also when `phase` failed, so
/// that a following ceiling phase has the database to itself. `phase` gets
/// the in-process server's state (None for a child). Returns the child's peak
/// RSS in kB, read after `phase`.
async fn with_server<T, F, Fut>(
    url: &str,
    connections: usize,
    binary: Option<&Path>,
    phase: F,
) -> Result<(T, Option<u64>)>
where
    F: FnOnce(Api, Option<AppState>) -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(connections.max(SETUP_CONCURRENCY))
        .timeout(REQUEST_TIMEOUT)
        .build()?;
    if let Some(binary) = binary {
        let child = ChildServer::spawn(binary, url).await?;
        let api = Api {
            client,
            base: format!("http://{}", child.addr),
            key: child.key.clone(),
        };
        let outcome = phase(api, None).await;
        let peak = rebuild::vm_hwm_kb(child.process.id());
        let stopped = child.stop().await;
        let outcome = outcome?;
        stopped?;
        return Ok((outcome, peak));
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let server = start(
        Config {
            database_url: url.to_string(),
            clock: Clock::System,
            runtime: RuntimeConfig::default(),
            billing: Default::default(),
            nats: None,
            rate_limit: RateLimit {
                per_sec: 0.0,
                burst: 0.0,
            },
            limits: Default::default(),
            db_max_connections: tally_projections::db::DEFAULT_MAX_CONNECTIONS,
        },
        listener,
    )
    .await
    .context("starting the Tally server")?;
    let outcome = async {
        let key = server
            .bootstrap_key
            .clone()
            .context("the server created no bootstrap key (database not fresh?)")?;
        let api = Api {
            client,
            base: format!("http://{}", server.addr),
            key,
        };
        phase(api, Some(server.state.clone())).await
    }
    .await;
    let stopped = tokio::time::timeout(ADMIN_TIMEOUT, server.shutdown()).await;
    let outcome = outcome?;
    stopped
        .context("server shutdown timed out")?
        .context("server shutdown")?;
    Ok((outcome, None))
}

/// The `tally serve` binary running as a child process.
struct ChildServer {
    process: Child,
    addr: String,
    key: String,
    /// The last lines of its stderr, for a failure message.
    stderr: Arc<Mutex<Vec<String>>>,
}

impl ChildServer {
    /// Starts `binary serve` on a free loopback port and waits (bounded) for
    /// the bootstrap key it prints on stdout.
    async fn spawn(binary: &Path, url: &str) -> Result<ChildServer> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let addr = format!("127.0.0.1:{port}");
        let mut process = std::process::Command::new(binary)
            .args(["serve", "--database", url, "--listen", &addr])
            .args(["--rate-limit", "0"])
            .env("TALLY_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let stdout = process.stdout.take().context("child stdout")?;
        let mut stderr_pipe = process.stderr.take().context("child stderr")?;
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let tail = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = String::new();
            let _ = stderr_pipe.read_to_string(&mut buf);
            let mut tail = tail.lock().expect("stderr tail");
            tail.extend(buf.lines().rev().take(20).map(str::to_string));
        });
        // The key is the line after "Created tenant …"; stdout is drained after.
        let (key_tx, key_rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let mut key_tx = Some(key_tx);
            let mut next_is_key = false;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if next_is_key {
                    if let Some(tx) = key_tx.take() {
                        let _ = tx.send(line.trim().to_string());
                    }
                    next_is_key = false;
                } else if line.starts_with("Created tenant") {
                    next_is_key = true;
                }
            }
        });
        let key = match tokio::time::timeout(SETUP_DEADLINE, key_rx).await {
            Ok(Ok(key)) => key,
            _ => {
                let _ = process.kill();
                let _ = process.wait();
                let tail = stderr.lock().expect("stderr tail").join(" | ");
                bail!(
                    "{} printed no bootstrap key (fresh database expected): {tail}",
                    binary.display()
                );
            }
        };
        println!(
            "server:   {} (pid {}) on {addr}",
            binary.display(),
            process.id()
        );
        Ok(ChildServer {
            process,
            addr,
            key,
            stderr,
        })
    }

    /// SIGTERM (via `kill`, the workspace forbids `unsafe`), then SIGKILL if
    /// it has not exited within [`ADMIN_TIMEOUT`].
    async fn stop(mut self) -> Result<()> {
        let pid = self.process.id().to_string();
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status();
        let deadline = Instant::now() + ADMIN_TIMEOUT;
        loop {
            if let Some(status) = self.process.try_wait()? {
                if !status.success() {
                    let tail = self.stderr.lock().expect("stderr tail").join(" | ");
                    println!("  server exited with {status}: {tail}");
                }
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = self.process.kill();
                let _ = self.process.wait();
                bail!("the server did not stop within {ADMIN_TIMEOUT:?} of SIGTERM; killed");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A 2xx answer of a measured request.
struct Answer {
    body: Vec<u8>,
    /// `X-Log-Position`, when the request ran a command.
    log_position: Option<i64>,
}

/// A client of the running server.
#[derive(Clone)]
struct Api {
    client: reqwest::Client,
    base: String,
    key: String,
}

impl Api {
    /// POSTs `body`; returns the status and the JSON body (Null if none).
    async fn post(&self, path: &str, body: &Value) -> Result<(u16, Value)> {
        let r = self
            .client
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.key)
            .json(body)
            .send()
            .await
            .with_context(|| format!("POST {path}"))?;
        let status = r.status().as_u16();
        let bytes = r.bytes().await?;
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok((status, body))
    }

    /// Waits (bounded by [`SETTLE_DEADLINE`]) until `GET
    /// /v1/admin/projections` shows every consumer at the log head.
    async fn settle(&self) -> Result<()> {
        let deadline = Instant::now() + SETTLE_DEADLINE;
        loop {
            let r = self
                .client
                .get(format!("{}/v1/admin/projections", self.base))
                .bearer_auth(&self.key)
                .send()
                .await
                .context("GET /v1/admin/projections")?;
            let status = r.status();
            let body: Value = r.json().await.unwrap_or(Value::Null);
            let Some(consumers) = body.as_array().filter(|_| status.is_success()) else {
                bail!("GET /v1/admin/projections: {status}: {body}");
            };
            let behind: Vec<String> = consumers
                .iter()
                .filter(|c| c["lag_events"].as_i64() != Some(0))
                .map(|c| format!("{} {}", c["name"], c["lag_events"]))
                .collect();
            if behind.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "consumers still behind after {SETTLE_DEADLINE:?}: {}",
                    behind.join(", ")
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// POSTs and expects `want`; returns the body's `id`.
    async fn post_expect(&self, path: &str, body: &Value, want: u16) -> Result<String> {
        let (status, answer) = self.post(path, body).await?;
        if status != want {
            bail!("POST {path}: {status} (want {want}): {answer}");
        }
        answer["id"]
            .as_str()
            .map(str::to_string)
            .with_context(|| format!("POST {path}: no id in {answer}"))
    }

    /// Sends `request` during a measured phase and records its latency (up
    /// to the whole answer body) in `w`. Returns the status, headers and
    /// body; a transport or body error is recorded as a failure and gives
    /// `None`.
    async fn send_measured(
        request: reqwest::RequestBuilder,
        w: &mut WorkerResult,
    ) -> Option<(reqwest::StatusCode, reqwest::header::HeaderMap, Vec<u8>)> {
        let t0 = Instant::now();
        let r = match request.send().await {
            Ok(r) => r,
            Err(e) => {
                w.record_latency(t0);
                w.fail(format!("transport: {}", error_kind(&e)));
                return None;
            }
        };
        let status = r.status();
        let headers = r.headers().clone();
        let bytes = r.bytes().await;
        w.record_latency(t0);
        match bytes {
            Ok(b) => Some((status, headers, b.to_vec())),
            Err(e) => {
                w.fail(format!("body: {}", error_kind(&e)));
                None
            }
        }
    }

    /// POSTs `body` during a measured phase (see [`Api::send_measured`]).
    /// Returns a 2xx answer; any other outcome is recorded as a failure in
    /// `w` and gives `None`.
    async fn post_measured(
        &self,
        path: &str,
        body: &Value,
        w: &mut WorkerResult,
    ) -> Option<Answer> {
        let request = self
            .client
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.key)
            .json(body);
        let (status, headers, b) = Self::send_measured(request, w).await?;
        if !status.is_success() {
            let code = serde_json::from_slice::<Value>(&b)
                .ok()
                .and_then(|v| v["code"].as_str().map(str::to_string))
                .unwrap_or_default();
            w.fail(format!("{} {code}", status.as_u16()));
            return None;
        }
        let log_position = headers
            .get("x-log-position")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        Some(Answer {
            body: b,
            log_position,
        })
    }
}

/// The plan of the command benchmarks: seats up to 100,000, no meters.
fn bench_plan() -> Value {
    json!({
        "code": "bench",
        "name": "Bench",
        "currency": "EUR",
        "interval": "month",
        "base_price": "10.00",
        "seat_price": "1.00",
        "seats": {"min": 1, "max": 100000}
    })
}

/// Creates the plan `plan` and `n` active subscriptions on it, then waits
/// until every consumer has caught up with the log (the billing policy issues
/// one activation invoice per subscription: that backlog belongs to the
/// setup, not to the measured load); returns their ids.
async fn setup(api: &Api, plan: &Value, n: usize) -> Result<Arc<Vec<String>>> {
    let started = Instant::now();
    let deadline = started + SETUP_DEADLINE;
    let plan = api.post_expect("/v1/plans", plan, 201).await?;
    let plan = Arc::new(plan);
    let next = Arc::new(AtomicUsize::new(0));
    let mut set = JoinSet::new();
    for _ in 0..SETUP_CONCURRENCY.min(n) {
        let (api, plan, next) = (api.clone(), plan.clone(), next.clone());
        set.spawn(async move {
            let mut ids = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return Ok::<_, anyhow::Error>(ids);
                }
                if Instant::now() >= deadline {
                    bail!("setup did not finish within {SETUP_DEADLINE:?}");
                }
                let id = api
                    .post_expect(
                        "/v1/subscriptions",
                        &json!({"customer_id": format!("cus_bench_{i}"), "plan_id": *plan, "seats": 1}),
                        201,
                    )
                    .await?;
                api.post_expect(&format!("/v1/subscriptions/{id}/activate"), &json!({}), 200)
                    .await?;
                ids.push(id);
            }
        });
    }
    let mut ids = Vec::with_capacity(n);
    let limit = deadline + REQUEST_TIMEOUT * 2;
    loop {
        let next = tokio::time::timeout_at(limit.into(), set.join_next())
            .await
            .map_err(|_| anyhow!("setup did not finish within {SETUP_DEADLINE:?}"))?;
        let Some(joined) = next else { break };
        ids.extend(joined.context("a setup task failed")??);
    }
    let created = started.elapsed();
    let settled = Instant::now();
    api.settle().await?;
    println!(
        "setup:    1 plan, {} active subscriptions in {:.1} s; every consumer caught up {:.1} s later",
        ids.len(),
        created.as_secs_f64(),
        settled.elapsed().as_secs_f64()
    );
    Ok(Arc::new(ids))
}

/// `commands` (a): `connections` tasks sending change-seats for `duration`.
/// With the in-process server's `runtime`, also the projection lag of every
/// acknowledged command (see [`watch_lag`]).
async fn command_phase(
    api: &Api,
    ids: Arc<Vec<String>>,
    connections: usize,
    duration: Duration,
    runtime: Option<Runtime>,
) -> Result<(Phase, Option<Lag>)> {
    let started = Instant::now();
    let deadline = started + duration;
    let (acks, acked) = mpsc::unbounded_channel::<(i64, Instant)>();
    let watcher = runtime.map(|runtime| {
        tokio::spawn(watch_lag(
            runtime,
            acked,
            deadline + DRAIN_GRACE + LAG_GRACE,
        ))
    });
    let mut set = JoinSet::new();
    for _ in 0..connections {
        let api = api.clone();
        let ids = ids.clone();
        let acks = watcher.is_some().then(|| acks.clone());
        set.spawn(async move {
            let mut rng = StdRng::from_entropy();
            let mut w = WorkerResult::new();
            while Instant::now() < deadline {
                let id = &ids[rng.gen_range(0..ids.len())];
                let seats = rng.gen_range(1..=MAX_SEATS);
                let body = json!({"seats": seats, "proration": "prorate"});
                let path = format!("/v1/subscriptions/{id}/change-seats");
                if let Some(answer) = api.post_measured(&path, &body, &mut w).await {
                    w.ok += 1;
                    w.items += 1;
                    match (&acks, answer.log_position) {
                        (Some(acks), Some(p)) => {
                            let _ = acks.send((p, Instant::now()));
                        }
                        (Some(_), None) => w.note("2xx without X-Log-Position".to_string()),
                        _ => {}
                    }
                }
            }
            w
        });
    }
    drop(acks);
    let commands = collect(set, started, deadline + DRAIN_GRACE).await?;
    let lag = match watcher {
        Some(w) => Some(w.await.context("the lag watcher panicked")??),
        None => None,
    };
    Ok((commands, lag))
}

/// How long after the command phase's drain the lag watcher waits for the
/// last positions.
const LAG_GRACE: Duration = Duration::from_secs(10);
/// The lag watcher's poll interval.
const LAG_POLL: Duration = Duration::from_millis(1);
/// How often the lag watcher samples every consumer's distance to the head.
const LAG_SAMPLE: Duration = Duration::from_millis(250);

/// What the lag watcher measured.
struct Lag {
    /// Until every read model (the rebuildable projections) had the command.
    read_models: Phase,
    /// Until every consumer, policies included, had it: what a query with
    /// `X-Min-Position` waits for.
    all: Phase,
    /// The most events each consumer was seen behind the head, largest first.
    behind: String,
}

/// Projection lag: receives (position, time the answer arrived) for each
/// acknowledged command and, every [`LAG_POLL`], reads the positions the
/// runtime's consumers have reached (in memory: `Runtime::cursor_position`
/// of the runners in this process); a command's lag is the time from its
/// answer to the first poll that found every consumer of a group at or past
/// its position. Positions still unreached at `limit` are failures.
async fn watch_lag(
    runtime: Runtime,
    mut acked: mpsc::UnboundedReceiver<(i64, Instant)>,
    limit: Instant,
) -> Result<Lag> {
    let started = Instant::now();
    let read_models: Vec<&'static str> = tally_projections::all_projectors()
        .iter()
        .map(|p| p.name())
        .collect();
    let mut groups = [
        (
            read_models,
            BTreeMap::<i64, Vec<Instant>>::new(),
            WorkerResult::new(),
        ),
        (runtime.names(), BTreeMap::new(), WorkerResult::new()),
    ];
    let mut open = true;
    // Per consumer, the most events it was seen behind the head.
    let mut behind: BTreeMap<String, i64> = BTreeMap::new();
    let mut sampled = Instant::now();
    loop {
        if sampled.elapsed() >= LAG_SAMPLE {
            sampled = Instant::now();
            for c in runtime.status().await.context("consumer status")? {
                let max = behind.entry(c.name).or_insert(0);
                *max = (*max).max(c.lag_events);
            }
        }
        while open {
            match acked.try_recv() {
                Ok((p, at)) => {
                    for (_, pending, _) in groups.iter_mut() {
                        pending.entry(p).or_default().push(at);
                    }
                }
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => open = false,
            }
        }
        let waiting = groups.iter().any(|(_, pending, _)| !pending.is_empty());
        if (!open && !waiting) || Instant::now() >= limit {
            break;
        }
        for (names, pending, w) in groups.iter_mut() {
            if pending.is_empty() {
                continue;
            }
            let mut reached = i64::MAX;
            for name in names.iter() {
                let p = runtime
                    .cursor_position(name)
                    .await
                    .context("reading a consumer's position")?;
                reached = reached.min(p);
            }
            let now = Instant::now();
            let later = pending.split_off(&(reached.saturating_add(1)));
            for (_, acks) in std::mem::replace(pending, later) {
                for at in acks {
                    w.ok += 1;
                    w.latencies_us
                        .push(now.saturating_duration_since(at).as_micros() as u64);
                }
            }
        }
        tokio::time::sleep(LAG_POLL).await;
    }
    let wall = started.elapsed();
    let [read_models, all] = groups.map(|(_, pending, mut w)| {
        for acks in pending.values() {
            for _ in acks {
                w.fail(format!(
                    "position not reached within {LAG_GRACE:?} after the drain"
                ));
            }
        }
        w.latencies_us.sort_unstable();
        Phase {
            ok: w.ok,
            items: w.ok,
            failures: w.failures,
            notes: w.notes,
            latencies_us: w.latencies_us,
            wall,
        }
    });
    let mut behind: Vec<_> = behind.into_iter().filter(|(_, n)| *n > 0).collect();
    behind.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
    let behind = behind
        .iter()
        .map(|(name, n)| format!("{name} {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    Ok(Lag {
        read_models,
        all,
        behind,
    })
}

/// `usage` (a): `connections` tasks posting batches of [`USAGE_BATCH`]
/// records for `duration`. `ok`/failures count batches, `items` the records
/// answered `created`, notes the records answered otherwise.
async fn usage_phase(
    api: &Api,
    ids: Arc<Vec<String>>,
    connections: usize,
    duration: Duration,
) -> Result<Phase> {
    let started = Instant::now();
    let deadline = started + duration;
    let mut set = JoinSet::new();
    for client in 0..connections {
        let api = api.clone();
        let ids = ids.clone();
        set.spawn(async move {
            let mut rng = StdRng::from_entropy();
            let mut w = WorkerResult::new();
            let mut counter: u64 = 0;
            while Instant::now() < deadline {
                let body = usage_batch(&mut rng, &ids, client, &mut counter);
                let Some(answer) = api.post_measured("/v1/usage/batch", &body, &mut w).await else {
                    continue;
                };
                let results = serde_json::from_slice::<Value>(&answer.body)
                    .ok()
                    .and_then(|v| match v.get("results") {
                        Some(Value::Array(results)) => Some(results.clone()),
                        _ => None,
                    });
                let Some(results) = results else {
                    w.fail("2xx without results".to_string());
                    continue;
                };
                w.ok += 1;
                if results.len() != USAGE_BATCH {
                    w.note(format!("batch answered with {} results", results.len()));
                }
                for r in &results {
                    match r["status"].as_str().unwrap_or("no status") {
                        "created" => w.items += 1,
                        "rejected" => w.note(format!(
                            "rejected {}",
                            r["error"]["code"].as_str().unwrap_or("?")
                        )),
                        other => w.note(other.to_string()),
                    }
                }
            }
            w
        });
    }
    collect(set, started, deadline + DRAIN_GRACE).await
}

/// One `POST /v1/usage/batch` body: [`USAGE_BATCH`] records on random
/// subscriptions of `ids`, timestamped now, with transaction ids
/// `<client>-<counter>` (`counter` is advanced per record).
fn usage_batch(rng: &mut StdRng, ids: &[String], client: usize, counter: &mut u64) -> Value {
    let timestamp = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let records: Vec<Value> = (0..USAGE_BATCH)
        .map(|_| {
            *counter += 1;
            json!({
                "subscription_id": ids[rng.gen_range(0..ids.len())],
                "meter": USAGE_METER,
                "quantity": "1",
                "timestamp": timestamp,
                "transaction_id": format!("{client}-{counter}"),
            })
        })
        .collect();
    json!({ "records": records })
}

fn error_kind(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else if e.is_body() || e.is_decode() {
        "body"
    } else {
        "other"
    }
}

/// What a ceiling phase inserts: how many rows per `INSERT` (one transaction
/// each) and what the rows look like.
struct CeilingRows {
    rows_per_insert: usize,
    aggregate_type: &'static str,
    event_type: &'static str,
    /// Prefix of the (unique) aggregate ids, like the server's id prefixes.
    id_prefix: &'static str,
    /// The payload and metadata of one row, given its aggregate id.
    row: fn(&mut StdRng, &str) -> (Value, Value),
}

/// `commands` (b): one `SeatsChanged` row per transaction.
const SEATS_CHANGED_ROWS: CeilingRows = CeilingRows {
    rows_per_insert: 1,
    aggregate_type: "Subscription",
    event_type: "SeatsChanged",
    id_prefix: "sub",
    row: event_row,
};

/// `usage` (b): [`USAGE_CEILING_ROWS`] `UsageRecorded` rows per transaction.
const USAGE_RECORDED_ROWS: CeilingRows = CeilingRows {
    rows_per_insert: USAGE_CEILING_ROWS,
    aggregate_type: "usage_record",
    event_type: "UsageRecorded",
    id_prefix: "use",
    row: usage_row,
};

/// Ceiling phase (b): `connections` tasks over a pool of as many connections,
/// each doing `BEGIN; INSERT rows.rows_per_insert rows; COMMIT` for
/// `duration`. `ok` counts transactions, `items` rows.
async fn ceiling_phase(
    url: &str,
    connections: usize,
    duration: Duration,
    rows: &'static CeilingRows,
) -> Result<Phase> {
    let pool = PgPoolOptions::new()
        .max_connections(connections as u32)
        .acquire_timeout(REQUEST_TIMEOUT)
        .connect(url)
        .await
        .context("connecting the ceiling pool")?;
    let phase = ceiling_measure(&pool, connections, duration, rows).await;
    pool.close().await;
    phase
}

async fn ceiling_measure(
    pool: &PgPool,
    connections: usize,
    duration: Duration,
    rows: &'static CeilingRows,
) -> Result<Phase> {
    sqlx::query(
        "CREATE TABLE bench_events (
            aggregate_type text        NOT NULL,
            aggregate_id   text        NOT NULL,
            sequence       bigint      NOT NULL,
            event_type     text        NOT NULL,
            event_version  text        NOT NULL,
            payload        json        NOT NULL,
            metadata       json        NOT NULL,
            position       bigserial   UNIQUE,
            event_id       text        NOT NULL,
            tenant         text        NOT NULL,
            recorded_at    timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (aggregate_type, aggregate_id, sequence)
        )",
    )
    .execute(pool)
    .await
    .context("creating bench_events")?;
    // Open every connection before the clock starts, as (a) had a warm server.
    let mut warm = Vec::with_capacity(connections);
    for _ in 0..connections {
        warm.push(
            pool.acquire()
                .await
                .context("opening ceiling connections")?,
        );
    }
    drop(warm);

    let sql = insert_sql(rows.rows_per_insert);
    let started = Instant::now();
    let deadline = started + duration;
    let mut set = JoinSet::new();
    for task in 0..connections {
        let pool = pool.clone();
        let sql = sql.clone();
        set.spawn(async move {
            let mut rng = StdRng::from_entropy();
            let mut w = WorkerResult::new();
            let mut n: u64 = 0;
            let mut batch = Vec::with_capacity(rows.rows_per_insert);
            while Instant::now() < deadline {
                batch.clear();
                for _ in 0..rows.rows_per_insert {
                    n += 1;
                    let aggregate_id = format!("{}_bench{task:03}x{n:09}", rows.id_prefix);
                    let event_id = format!("{:032x}", rng.gen::<u128>());
                    let (payload, metadata) = (rows.row)(&mut rng, &aggregate_id);
                    batch.push((aggregate_id, event_id, payload, metadata));
                }
                let t0 = Instant::now();
                let inserted = insert_rows(&pool, &sql, rows, &batch).await;
                w.record_latency(t0);
                match inserted {
                    Ok(()) => {
                        w.ok += 1;
                        w.items += batch.len() as u64;
                    }
                    Err(e) => w.fail(sql_error_kind(&e)),
                }
            }
            w
        });
    }
    collect(set, started, deadline + DRAIN_GRACE).await
}

/// `INSERT INTO bench_events … VALUES (…), …` for `rows` rows of 8
/// parameters each (sequence 1, `recorded_at` by default).
fn insert_sql(rows: usize) -> String {
    let values = (0..rows)
        .map(|r| {
            let b = r * 8;
            format!(
                "(${}, ${}, 1, ${}, ${}, ${}, ${}, ${}, ${})",
                b + 1,
                b + 2,
                b + 3,
                b + 4,
                b + 5,
                b + 6,
                b + 7,
                b + 8
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "INSERT INTO bench_events
            (aggregate_type, aggregate_id, sequence, event_type, event_version,
             payload, metadata, event_id, tenant)
         VALUES {values}"
    )
}

/// One transaction inserting `batch` (aggregate id, event id, payload,
/// metadata) with the statement from [`insert_sql`].
async fn insert_rows(
    pool: &PgPool,
    sql: &str,
    rows: &CeilingRows,
    batch: &[(String, String, Value, Value)],
) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    let mut q = sqlx::query(sql);
    for (aggregate_id, event_id, payload, metadata) in batch {
        q = q
            .bind(rows.aggregate_type)
            .bind(aggregate_id)
            .bind(rows.event_type)
            .bind("1.0")
            .bind(payload)
            .bind(metadata)
            .bind(event_id)
            .bind("default");
    }
    q.execute(&mut *tx).await?;
    tx.commit().await
}

fn sql_error_kind(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(d) => format!("database {}", d.code().unwrap_or_default()),
        sqlx::Error::PoolTimedOut => "pool timed out".to_string(),
        sqlx::Error::Io(_) => "io".to_string(),
        _ => "other".to_string(),
    }
}

/// A `SeatsChanged`-like payload (~300 bytes) and command metadata (~200 bytes).
fn event_row(rng: &mut StdRng, aggregate_id: &str) -> (Value, Value) {
    let from = rng.gen_range(1..=MAX_SEATS);
    let to = rng.gen_range(1..=MAX_SEATS);
    let fraction = rng.gen_range(0..10_000_000_000u64);
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let payload = json!({
        "SeatsChanged": {
            "from": from,
            "to": to,
            "proration": {
                "period": {"start": "2025-01-01T00:00:00Z", "end": "2025-02-01T00:00:00Z"},
                "at": now,
                "fraction": format!("0.{fraction:010}"),
                "credit": format!("-{}.{:02}", from / 2, from % 100),
                "charge": format!("{}.{:02}", to / 2, to % 100),
                "net": format!("{}.{:02}", to.abs_diff(from) / 2, to % 100),
                "currency": "EUR"
            },
            "changed_at": now
        }
    });
    (payload, command_metadata(rng, "change_seats", aggregate_id))
}

/// A `UsageRecorded`-like payload (~300 bytes) and command metadata (~200 bytes).
fn usage_row(rng: &mut StdRng, aggregate_id: &str) -> (Value, Value) {
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let payload = json!({
        "UsageRecorded": {
            "record_id": aggregate_id,
            "transaction_id": format!("{}-{}", rng.gen_range(0..64), rng.gen_range(0..10_000_000u64)),
            "subscription_id": format!("sub_{:032x}", rng.gen::<u128>()),
            "meter": USAGE_METER,
            "quantity": "1",
            "timestamp": now,
            "window": {"start": "2025-01-01T00:00:00Z", "end": "2025-02-01T00:00:00Z"},
            "properties": {},
            "recorded_at": now
        }
    });
    (payload, command_metadata(rng, "report_usage", aggregate_id))
}

/// Command metadata as the server records it (~200 bytes).
fn command_metadata(rng: &mut StdRng, command: &str, correlation_id: &str) -> Value {
    json!({
        "tenant": "default",
        "actor": format!("key_{:016x}", rng.gen::<u64>()),
        "command": command,
        "request_id": format!("{:032x}", rng.gen::<u128>()),
        "correlation_id": correlation_id,
        "recorded_by": "tally-bench"
    })
}

/// `admin_url` with its database replaced by `name` (query string kept).
fn database_url(admin_url: &str, name: &str) -> String {
    let (path, query) = match admin_url.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (admin_url, None),
    };
    // Only cut a database segment after the authority ("scheme://host/db").
    let base = match path.split_once("://") {
        Some((scheme, rest)) => match rest.split_once('/') {
            Some((authority, _)) => format!("{scheme}://{authority}"),
            None => path.to_string(),
        },
        None => path.to_string(),
    };
    match query {
        Some(q) => format!("{base}/{name}?{q}"),
        None => format!("{base}/{name}"),
    }
}

async fn drop_database(admin_url: &str, name: &str) -> Result<()> {
    let drop = async {
        let mut admin = PgConnection::connect(admin_url).await?;
        sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .execute(&mut admin)
            .await?;
        let _ = admin.close().await;
        Ok::<_, sqlx::Error>(())
    };
    tokio::time::timeout(ADMIN_TIMEOUT, drop)
        .await
        .with_context(|| format!("dropping database {name} timed out"))?
        .with_context(|| format!("dropping database {name}"))
}

fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

fn mem_total() -> String {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("MemTotal:").map(|v| v.trim().to_string()))
        })
        .map(|v| {
            let gib = v
                .split_whitespace()
                .next()
                .and_then(|kb| kb.parse::<f64>().ok())
                .map(|kb| format!(" ({:.1} GiB)", kb / 1024.0 / 1024.0))
                .unwrap_or_default();
            format!("MemTotal {v}{gib}")
        })
        .unwrap_or_else(|| "MemTotal unknown".to_string())
}

#[cfg(test)]
mod tests {
    use super::{database_url, event_row, insert_sql, usage_batch, usage_row, USAGE_BATCH};
    use rand::rngs::StdRng;
    use rand::SeedableRng;
    use std::collections::HashSet;

    #[test]
    fn event_rows_are_realistically_sized() {
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..100 {
            let (payload, metadata) = event_row(&mut rng, "sub_bench001x000000001");
            let (p, m) = (payload.to_string().len(), metadata.to_string().len());
            assert!((250..=350).contains(&p), "payload {p} bytes");
            assert!((170..=230).contains(&m), "metadata {m} bytes");
        }
    }

    #[test]
    fn usage_rows_are_realistically_sized() {
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..100 {
            let (payload, metadata) = usage_row(&mut rng, "use_bench001x000000001");
            let (p, m) = (payload.to_string().len(), metadata.to_string().len());
            assert!((250..=350).contains(&p), "payload {p} bytes");
            assert!((170..=230).contains(&m), "metadata {m} bytes");
        }
    }

    #[test]
    fn insert_sql_numbers_eight_parameters_per_row() {
        let one = insert_sql(1);
        assert!(
            one.ends_with("VALUES ($1, $2, 1, $3, $4, $5, $6, $7, $8)"),
            "{one}"
        );
        let many = insert_sql(100);
        assert_eq!(many.matches("), (").count(), 99);
        assert!(many.ends_with("($793, $794, 1, $795, $796, $797, $798, $799, $800)"));
    }

    #[test]
    fn usage_batches_have_unique_transaction_ids_across_batches() {
        let mut rng = StdRng::seed_from_u64(7);
        let ids = vec!["sub_a".to_string(), "sub_b".to_string()];
        let mut counter = 0;
        let mut seen = HashSet::new();
        for _ in 0..2 {
            let body = usage_batch(&mut rng, &ids, 3, &mut counter);
            let records = body["records"].as_array().unwrap();
            assert_eq!(records.len(), USAGE_BATCH);
            for r in records {
                assert!(ids.iter().any(|id| r["subscription_id"] == **id));
                assert_eq!(r["meter"], "api_calls");
                assert_eq!(r["quantity"], "1");
                let ts = r["timestamp"].as_str().unwrap();
                chrono::DateTime::parse_from_rfc3339(ts).unwrap();
                let txid = r["transaction_id"].as_str().unwrap().to_string();
                assert!(txid.starts_with("3-"), "{txid}");
                assert!(seen.insert(txid));
            }
        }
        assert_eq!(counter, 2 * USAGE_BATCH as u64);
    }

    #[test]
    fn database_url_replaces_the_database() {
        assert_eq!(
            database_url("postgres://postgres@127.0.0.1:5432/postgres", "x"),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert_eq!(
            database_url("postgres://u:p@h/db?sslmode=disable", "x"),
            "postgres://u:p@h/x?sslmode=disable"
        );
        assert_eq!(
            database_url("postgres://h:5432", "x"),
            "postgres://h:5432/x"
        );
    }
}
