//! The `tally` command line: `serve`, `migrate` and `keys create|list|revoke`. Logs are
//! JSON lines on stderr; stdout carries only what a script wants (a new key).
//! It is a library function so that the `tally` binary (`main.rs`) and the
//! crash tests' copy of it (`tests/src/bin/tally-under-test.rs`, a separate
//! process they can SIGKILL) run the same code.

use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use tally_commands::keys::{self, Role};
use tally_commands::nats::NatsConfig;
use tally_commands::policies::billing::BillingConfig;
use tally_commands::Clock;
use tally_projections::runtime::RuntimeConfig;
use tally_projections::Db;

use crate::ratelimit::RateLimit;
use crate::{start, Config};

const DEFAULT_DATABASE: &str = "sqlite://tally.db";

#[derive(Parser)]
#[command(
    name = "tally",
    version,
    about = "Tally: an event-sourced billing ledger"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the HTTP server (applies migrations on start).
    Serve {
        /// Address to listen on.
        #[arg(long, env = "TALLY_LISTEN", default_value = "127.0.0.1:8080")]
        listen: String,
        /// postgres://… or sqlite://FILE (created when missing).
        #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_DATABASE)]
        database: String,
        /// `manual` starts a clock that only moves through POST /v1/admin/clock/advance.
        #[arg(long, value_enum, default_value = "system")]
        clock: ClockKind,
        /// Start time of a manual clock (RFC 3339); defaults to now.
        #[arg(long)]
        clock_start: Option<String>,
        /// Payment terms of renewal invoices, in days.
        #[arg(long, env = "TALLY_INVOICE_DUE_DAYS", default_value_t = 30)]
        invoice_due_days: u32,
        /// Days a past-due subscription keeps running before it is suspended.
        #[arg(long, env = "TALLY_GRACE_DAYS", default_value_t = 7)]
        grace_days: u32,
        /// Publishes integration events to NATS JetStream (stream `TALLY`) when
        /// set; a comma-separated list for a cluster.
        #[arg(long, env = "NATS_URL")]
        nats_url: Option<String>,
        /// Requests per second per API key (0: no limit); answered 429 with
        /// Retry-After above it.
        #[arg(long, env = "TALLY_RATE_LIMIT", default_value_t = 1000.0)]
        rate_limit: f64,
        /// Requests a key may make at once above its rate.
        #[arg(long, env = "TALLY_RATE_BURST", default_value_t = 2000.0)]
        rate_burst: f64,
        /// A request still running after this is answered 503 `timeout`.
        #[arg(long, env = "TALLY_REQUEST_TIMEOUT_MS", default_value = "30000")]
        request_timeout_ms: std::num::NonZeroU64,
        /// Requests handled at once; above it 503 `overloaded` at once.
        #[arg(long, env = "TALLY_MAX_CONCURRENT_REQUESTS", default_value = "1024")]
        max_concurrent_requests: std::num::NonZeroUsize,
        /// PostgreSQL connections this process opens at most, all pools and
        /// the consumers' lock session included (at least 6). The default lets
        /// two processes share a stock `max_connections = 100`.
        #[arg(long, env = "TALLY_DB_MAX_CONNECTIONS",
              default_value_t = tally_projections::db::DEFAULT_MAX_CONNECTIONS,
              value_parser = clap::value_parser!(u32).range(6..=10_000))]
        db_max_connections: u32,
    },
    /// Applies the database migrations.
    Migrate {
        #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_DATABASE)]
        database: String,
    },
    /// Manages API keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Creates a key (and the tenant when new) and prints the key alone on stdout.
    Create {
        #[arg(long)]
        tenant: String,
        /// admin | writer | reader | auditor
        #[arg(long)]
        role: String,
        #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_DATABASE)]
        database: String,
    },
    /// Lists keys, one a line: id, tenant, role, created_at, revoked_at or
    /// `-`, tab-separated. Never a secret.
    List {
        /// Only this tenant's keys.
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_DATABASE)]
        database: String,
    },
    /// Revokes a key: every server stops accepting it within a second.
    Revoke {
        /// The key's id (`key_…`, from `tally keys list`).
        id: String,
        #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_DATABASE)]
        database: String,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum ClockKind {
    System,
    Manual,
}

/// Parses the arguments, runs the command, and says how it went.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .json()
        .with_current_span(true)
        .with_span_list(false)
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TALLY_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn")),
        )
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tally: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tally: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve {
            listen,
            database,
            clock,
            clock_start,
            invoice_due_days,
            grace_days,
            nats_url,
            rate_limit,
            rate_burst,
            request_timeout_ms,
            max_concurrent_requests,
            db_max_connections,
        } => {
            let clock = match clock {
                ClockKind::System => Clock::System,
                ClockKind::Manual => {
                    let start = match clock_start {
                        Some(s) => tally_aggregates::time::check_accepted(
                            "--clock-start",
                            chrono::DateTime::parse_from_rfc3339(&s)
                                .context("--clock-start must be RFC 3339")?
                                .with_timezone(&chrono::Utc),
                        )?,
                        None => chrono::Utc::now(),
                    };
                    Clock::manual(start)
                }
            };
            let listener = tokio::net::TcpListener::bind(&listen)
                .await
                .with_context(|| format!("cannot listen on {listen}"))?;
            if !(rate_limit.is_finite() && rate_limit >= 0.0 && rate_burst.is_finite()) {
                anyhow::bail!("--rate-limit and --rate-burst must be non-negative numbers");
            }
            if invoice_due_days > tally_aggregates::invoice::MAX_DUE_DAYS || grace_days > 365 {
                anyhow::bail!("--invoice-due-days and --grace-days must be 0 to 365");
            }
            let config = Config {
                database_url: database,
                clock,
                runtime: RuntimeConfig::default(),
                billing: BillingConfig {
                    due_days: invoice_due_days,
                    grace: chrono::Duration::days(i64::from(grace_days)),
                },
                nats: nats_url
                    .filter(|u| !u.trim().is_empty())
                    .map(NatsConfig::new),
                rate_limit: RateLimit {
                    per_sec: rate_limit,
                    burst: rate_burst.max(1.0),
                },
                limits: crate::limits::Limits {
                    request_timeout: std::time::Duration::from_millis(request_timeout_ms.get()),
                    max_concurrent_requests: max_concurrent_requests.get(),
                },
                db_max_connections,
            };
            let server = start(config, listener).await?;
            if let Some(key) = &server.bootstrap_key {
                println!("Created tenant `default` with an admin API key (shown once):\n{key}");
            }
            tracing::info!(addr = %server.addr, "listening");
            let stop = server.shutdown_signal();
            tokio::spawn(async move {
                shutdown_signal().await;
                tracing::info!("shutting down");
                let _ = stop.send(true);
            });
            server.wait().await
        }
        Command::Migrate { database } => {
            let db = Db::connect(&database).await?;
            db.migrate().await?;
            db.close().await;
            eprintln!("migrations applied");
            Ok(())
        }
        Command::Keys {
            command:
                KeysCommand::Create {
                    tenant,
                    role,
                    database,
                },
        } => {
            let role =
                Role::parse(&role).context("--role must be admin, writer, reader or auditor")?;
            let db = Db::connect(&database).await?;
            db.migrate().await?;
            let (_, secret) = keys::create(&db, &tenant, role).await?;
            db.close().await;
            println!("{secret}");
            Ok(())
        }
        Command::Keys {
            command: KeysCommand::List { tenant, database },
        } => {
            let db = Db::connect(&database).await?;
            db.migrate().await?;
            let mut after: Option<String> = None;
            loop {
                let page = keys::list(
                    &db,
                    tenant.as_deref(),
                    after.as_deref(),
                    keys::MAX_KEYS_PAGE,
                )
                .await?;
                for k in &page.data {
                    println!(
                        "{}\t{}\t{}\t{}\t{}",
                        k.id,
                        k.tenant,
                        k.role,
                        k.created_at,
                        k.revoked_at.as_deref().unwrap_or("-")
                    );
                }
                match page.next_cursor {
                    Some(c) => after = Some(c),
                    None => break,
                }
            }
            db.close().await;
            Ok(())
        }
        Command::Keys {
            command: KeysCommand::Revoke { id, database },
        } => {
            let db = Db::connect(&database).await?;
            db.migrate().await?;
            let dispatcher = tally_commands::Dispatcher::new(db.clone(), Clock::System);
            let meta = tally_commands::CommandMeta {
                tenant: String::new(),
                actor: "cli:tally-keys-revoke".into(),
                request_id: uuid::Uuid::now_v7().to_string(),
                correlation_id: uuid::Uuid::now_v7().to_string(),
                causation_id: None,
                idempotency_key: None,
            };
            let revoked = keys::revoke(&dispatcher, &meta, None, &id).await;
            db.close().await;
            let key = revoked?.with_context(|| format!("no key {id}"))?;
            eprintln!(
                "revoked {} ({} of {}) at {}",
                key.id,
                key.role,
                key.tenant,
                key.revoked_at.as_deref().unwrap_or("-")
            );
            Ok(())
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
