//! `tally-bench`: benchmark programs that print figures.
//!
//! `tally-bench commands` measures how close Tally's write path comes to what
//! the same PostgreSQL can do for the cheapest possible event append, in one
//! run on one machine, so the two figures are directly comparable:
//!
//! * **(a) command throughput.** A fresh database `tally_bench_<unix time>` is
//!   created, the real server is started in-process (`tally_api::start` on
//!   127.0.0.1:0, system clock, default projection runtime, no tracing
//!   subscriber so no per-request logs), and a plan plus `--subscriptions`
//!   active subscriptions are created over HTTP. Then `--connections` client
//!   tasks share one `reqwest::Client` and, for `--seconds`, each sends
//!   `POST /v1/subscriptions/{random id}/change-seats` with a random seat
//!   count and `"proration": "prorate"`. Each such command loads the
//!   aggregate, decides, and appends a `SeatsChanged` event (with the
//!   optimistic-concurrency retries the server does on its own), while the
//!   projection consumers keep the read models up to date in the background
//!   — i.e. the full cost of a write. 2xx and non-2xx answers are counted
//!   separately (a non-2xx, e.g. 409 `concurrent_modification` after the
//!   server's retries, is reported, never hidden); the latency of every
//!   answered request is recorded.
//! * **(b) raw ceiling.** With the server stopped, a table `bench_events`
//!   shaped like the event log is created in the same database, and the same
//!   number of tasks over a `PgPool` with that many connections each loop
//!   for `--seconds` on `BEGIN; INSERT one row; COMMIT` with a realistic
//!   payload (~300 bytes) and metadata (~200 bytes). That is the floor cost
//!   of durably appending one event; Tally cannot beat it.
//!
//! The ratio (a)/(b) says how much of the database's append capacity the
//! command path keeps; the target is at least 0.6. The database is dropped
//! at the end, also when a phase fails or the run is interrupted (Ctrl-C).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{Connection, PgConnection};
use tally_api::{start, Config};
use tally_commands::Clock;
use tally_projections::runtime::RuntimeConfig;
use tokio::task::JoinSet;

/// Subscription creations/activations in flight during setup.
const SETUP_CONCURRENCY: usize = 32;
/// Setup (plan + subscriptions) must finish within this.
const SETUP_DEADLINE: Duration = Duration::from_secs(60);
/// One HTTP request may take at most this (the server's own limit is 30 s).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Grace after a measuring deadline for the last in-flight operations.
const DRAIN_GRACE: Duration = Duration::from_secs(15);
/// Bound on administrative statements (create/drop database, shutdown).
const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Seat counts sent by the command loop: `1..=MAX_SEATS`.
const MAX_SEATS: u32 = 1000;

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
}

#[derive(Args, Debug, Clone)]
struct CommandsArgs {
    /// A PostgreSQL URL allowed to create and drop databases (any database).
    #[arg(
        long,
        env = "TALLY_BENCH_DATABASE_ADMIN_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    database_admin_url: String,
    /// Length of each measuring phase, in seconds.
    #[arg(long, default_value_t = 30.0)]
    seconds: f64,
    /// Concurrent clients (HTTP tasks in (a), pooled connections in (b)).
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Active subscriptions the commands are spread over.
    #[arg(long, default_value_t = 1000)]
    subscriptions: usize,
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Commands(args) => commands(args).await,
    }
}

/// Latency and outcome figures of one measured phase.
struct Phase {
    ok: u64,
    failures: BTreeMap<String, u64>,
    /// Latencies in microseconds, sorted.
    latencies_us: Vec<u64>,
    wall: Duration,
}

impl Phase {
    fn failed(&self) -> u64 {
        self.failures.values().sum()
    }

    fn rate(&self) -> f64 {
        let secs = self.wall.as_secs_f64();
        if secs > 0.0 {
            self.ok as f64 / secs
        } else {
            0.0
        }
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

    fn failure_summary(&self) -> String {
        self.failures
            .iter()
            .map(|(k, n)| format!("{k} x{n}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// What one worker task of a measured phase brings back.
#[derive(Default)]
struct WorkerResult {
    ok: u64,
    failures: BTreeMap<String, u64>,
    latencies_us: Vec<u64>,
}

impl WorkerResult {
    fn fail(&mut self, what: String) {
        *self.failures.entry(what).or_insert(0) += 1;
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
        failures: BTreeMap::new(),
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
        for (k, n) in worker.failures {
            *phase.failures.entry(k).or_insert(0) += n;
        }
        phase.latencies_us.extend(worker.latencies_us);
    }
    phase.wall = started.elapsed();
    phase.latencies_us.sort_unstable();
    Ok(phase)
}

async fn commands(args: CommandsArgs) -> Result<()> {
    if !(args.seconds > 0.0 && args.seconds <= 3600.0) {
        bail!("--seconds must be in (0, 3600]");
    }
    if args.connections == 0 || args.subscriptions == 0 {
        bail!("--connections and --subscriptions must be at least 1");
    }
    let duration = Duration::from_secs_f64(args.seconds);
    println!("machine: {} cores, {}", cores(), mem_total());

    let name = format!(
        "tally_bench_{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .context("system clock before 1970")?
            .as_secs()
    );
    {
        let mut admin = tokio::time::timeout(
            ADMIN_TIMEOUT,
            PgConnection::connect(&args.database_admin_url),
        )
        .await
        .context("connecting to PostgreSQL timed out")?
        .with_context(|| format!("connecting to {}", args.database_admin_url))?;
        let max: String = sqlx::query_scalar("SHOW max_connections")
            .fetch_one(&mut admin)
            .await?;
        let max: usize = max.parse().context("max_connections")?;
        // The ceiling pool plus this admin connection, with some headroom.
        if args.connections + 4 > max {
            bail!(
                "--connections {} needs more than PostgreSQL's max_connections {max} allows",
                args.connections
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
    let url = database_url(&args.database_admin_url, &name);

    let outcome = tokio::select! {
        r = run(&args, &url, duration) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
    };
    let dropped = drop_database(&args.database_admin_url, &name).await;
    let (commands, ceiling) = outcome?;
    dropped?;

    let cmd_rate = commands.rate();
    let raw_rate = ceiling.rate();
    println!(
        "commands: {:.1}/s over {:.1} s (ok {}, failed {}), p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        cmd_rate,
        commands.wall.as_secs_f64(),
        commands.ok,
        commands.failed(),
        commands.quantile_ms(0.50),
        commands.quantile_ms(0.99),
        commands.max_ms(),
    );
    if commands.failed() > 0 {
        println!("  command failures: {}", commands.failure_summary());
    }
    println!(
        "ceiling:  {:.1} inserts/s over {:.1} s (ok {}, failed {}), p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        raw_rate,
        ceiling.wall.as_secs_f64(),
        ceiling.ok,
        ceiling.failed(),
        ceiling.quantile_ms(0.50),
        ceiling.quantile_ms(0.99),
        ceiling.max_ms(),
    );
    if ceiling.failed() > 0 {
        println!("  insert failures: {}", ceiling.failure_summary());
    }
    if raw_rate > 0.0 {
        let ratio = cmd_rate / raw_rate;
        println!(
            "ratio:    {ratio:.2} (target >= 0.6: {})",
            if ratio >= 0.6 { "met" } else { "NOT met" }
        );
    } else {
        println!("ratio:    n/a (the ceiling phase completed no insert)");
    }
    Ok(())
}

/// The whole measured part, against the fresh database at `url`: server,
/// setup, phase (a), server shutdown, phase (b).
async fn run(args: &CommandsArgs, url: &str, duration: Duration) -> Result<(Phase, Phase)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let server = start(
        Config {
            database_url: url.to_string(),
            clock: Clock::System,
            runtime: RuntimeConfig::default(),
        },
        listener,
    )
    .await
    .context("starting the Tally server")?;
    let commands = async {
        let key = server
            .bootstrap_key
            .clone()
            .context("the server created no bootstrap key (database not fresh?)")?;
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(args.connections.max(SETUP_CONCURRENCY))
            .timeout(REQUEST_TIMEOUT)
            .build()?;
        let api = Api {
            client,
            base: format!("http://{}", server.addr),
            key,
        };
        let ids = setup(&api, args.subscriptions).await?;
        command_phase(&api, ids, args.connections, duration).await
    }
    .await;
    // Stop the server (and close its pools) before the ceiling phase, also
    // when the command phase failed.
    let stopped = tokio::time::timeout(ADMIN_TIMEOUT, server.shutdown()).await;
    let commands = commands?;
    stopped
        .context("server shutdown timed out")?
        .context("server shutdown")?;

    let ceiling = ceiling_phase(url, args.connections, duration).await?;
    Ok((commands, ceiling))
}

/// A client of the running server.
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
}

/// Creates the plan and `n` active subscriptions; returns their ids.
async fn setup(api: &Api, n: usize) -> Result<Arc<Vec<String>>> {
    let started = Instant::now();
    let deadline = started + SETUP_DEADLINE;
    let plan = api
        .post_expect(
            "/v1/plans",
            &json!({
                "code": "bench",
                "name": "Bench",
                "currency": "EUR",
                "interval": "month",
                "base_price": "10.00",
                "seat_price": "1.00",
                "seats": {"min": 1, "max": 100000}
            }),
            201,
        )
        .await?;
    let plan = Arc::new(plan);
    let next = Arc::new(AtomicUsize::new(0));
    let api = Arc::new(Api {
        client: api.client.clone(),
        base: api.base.clone(),
        key: api.key.clone(),
    });
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
    println!(
        "setup:    1 plan, {} active subscriptions in {:.1} s",
        ids.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(Arc::new(ids))
}

/// Phase (a): `connections` tasks sending change-seats for `duration`.
async fn command_phase(
    api: &Api,
    ids: Arc<Vec<String>>,
    connections: usize,
    duration: Duration,
) -> Result<Phase> {
    let started = Instant::now();
    let deadline = started + duration;
    let mut set = JoinSet::new();
    for _ in 0..connections {
        let client = api.client.clone();
        let base = api.base.clone();
        let key = api.key.clone();
        let ids = ids.clone();
        set.spawn(async move {
            let mut rng = StdRng::from_entropy();
            let mut w = WorkerResult {
                latencies_us: Vec::with_capacity(4096),
                ..WorkerResult::default()
            };
            while Instant::now() < deadline {
                let id = &ids[rng.gen_range(0..ids.len())];
                let seats = rng.gen_range(1..=MAX_SEATS);
                let body = json!({"seats": seats, "proration": "prorate"});
                let t0 = Instant::now();
                let sent = client
                    .post(format!("{base}/v1/subscriptions/{id}/change-seats"))
                    .bearer_auth(&key)
                    .json(&body)
                    .send()
                    .await;
                match sent {
                    Ok(r) => {
                        let status = r.status();
                        let bytes = r.bytes().await;
                        w.latencies_us.push(t0.elapsed().as_micros() as u64);
                        match bytes {
                            Ok(_) if status.is_success() => w.ok += 1,
                            Ok(b) => {
                                let code = serde_json::from_slice::<Value>(&b)
                                    .ok()
                                    .and_then(|v| v["code"].as_str().map(str::to_string))
                                    .unwrap_or_default();
                                w.fail(format!("{} {code}", status.as_u16()));
                            }
                            Err(e) => w.fail(format!("body: {}", error_kind(&e))),
                        }
                    }
                    Err(e) => {
                        w.latencies_us.push(t0.elapsed().as_micros() as u64);
                        w.fail(format!("transport: {}", error_kind(&e)));
                    }
                }
            }
            w
        });
    }
    collect(set, started, deadline + DRAIN_GRACE).await
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

/// Phase (b): `connections` tasks over a pool of as many connections, each
/// doing `BEGIN; INSERT one event row; COMMIT` for `duration`.
async fn ceiling_phase(url: &str, connections: usize, duration: Duration) -> Result<Phase> {
    let pool = PgPoolOptions::new()
        .max_connections(connections as u32)
        .acquire_timeout(REQUEST_TIMEOUT)
        .connect(url)
        .await
        .context("connecting the ceiling pool")?;
    let phase = ceiling_measure(&pool, connections, duration).await;
    pool.close().await;
    phase
}

async fn ceiling_measure(pool: &PgPool, connections: usize, duration: Duration) -> Result<Phase> {
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

    let started = Instant::now();
    let deadline = started + duration;
    let mut set = JoinSet::new();
    for task in 0..connections {
        let pool = pool.clone();
        set.spawn(async move {
            let mut rng = StdRng::from_entropy();
            let mut w = WorkerResult {
                latencies_us: Vec::with_capacity(4096),
                ..WorkerResult::default()
            };
            let mut n: u64 = 0;
            while Instant::now() < deadline {
                n += 1;
                let aggregate_id = format!("sub_bench{task:03}x{n:09}");
                let event_id = format!("{:032x}", rng.gen::<u128>());
                let (payload, metadata) = event_row(&mut rng, &aggregate_id);
                let t0 = Instant::now();
                let inserted = insert_one(&pool, &aggregate_id, &event_id, payload, metadata).await;
                w.latencies_us.push(t0.elapsed().as_micros() as u64);
                match inserted {
                    Ok(()) => w.ok += 1,
                    Err(e) => w.fail(sql_error_kind(&e)),
                }
            }
            w
        });
    }
    collect(set, started, deadline + DRAIN_GRACE).await
}

async fn insert_one(
    pool: &PgPool,
    aggregate_id: &str,
    event_id: &str,
    payload: Value,
    metadata: Value,
) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO bench_events
            (aggregate_type, aggregate_id, sequence, event_type, event_version,
             payload, metadata, event_id, tenant)
         VALUES ($1, $2, 1, $3, $4, $5, $6, $7, $8)",
    )
    .bind("Subscription")
    .bind(aggregate_id)
    .bind("SeatsChanged")
    .bind("1.0")
    .bind(payload)
    .bind(metadata)
    .bind(event_id)
    .bind("default")
    .execute(&mut *tx)
    .await?;
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
    let metadata = json!({
        "tenant": "default",
        "actor": format!("key_{:016x}", rng.gen::<u64>()),
        "command": "change_seats",
        "request_id": format!("{:032x}", rng.gen::<u128>()),
        "correlation_id": aggregate_id,
        "recorded_by": "tally-bench"
    });
    (payload, metadata)
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
    use super::{database_url, event_row};
    use rand::rngs::StdRng;
    use rand::SeedableRng;

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
