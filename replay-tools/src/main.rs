//! `tally-replay`: the operator CLI over the log. This first cut has
//! `status` (every consumer's position and lag) and `rebuild` (in place: empty
//! the read model and replay it from position 0). Audit timelines, verify,
//! digest and export come with the audit issue.

use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use tally_projections::runtime::{reset, RuntimeConfig, StepOutcome};
use tally_projections::{all_projectors, Db, Runtime};

#[derive(Parser)]
#[command(
    name = "tally-replay",
    version,
    about = "Replay, inspect and rebuild Tally's log and read models"
)]
struct Cli {
    /// postgres://… or sqlite://FILE
    #[arg(
        long,
        global = true,
        env = "DATABASE_URL",
        default_value = "sqlite://tally.db"
    )]
    database: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Every consumer with its position, the log head, lag and state.
    Status,
    /// Rebuilds read models from position 0 (in place).
    Rebuild {
        /// Projection names (see `status`).
        names: Vec<String>,
        /// Rebuild every projection.
        #[arg(long)]
        all: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tally-replay: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tally-replay: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let db = Db::connect(&cli.database)
        .await
        .context("cannot open the database")?;
    db.migrate().await?;
    let runtime = Runtime::new(db.clone(), all_projectors(), RuntimeConfig::default());
    match cli.command {
        Command::Status => {
            println!(
                "{:<16} {:>12} {:>12} {:>10}  status",
                "name", "position", "log_head", "lag"
            );
            for s in runtime.status().await? {
                println!(
                    "{:<16} {:>12} {:>12} {:>10}  {}",
                    s.name, s.position, s.log_head, s.lag_events, s.status
                );
            }
        }
        Command::Rebuild { names, all } => {
            let projectors = all_projectors();
            let chosen: Vec<_> = if all {
                projectors
            } else {
                if names.is_empty() {
                    bail!("name a projection or pass --all");
                }
                for n in &names {
                    if !projectors.iter().any(|p| p.name() == n) {
                        bail!("unknown projection {n}");
                    }
                }
                projectors
                    .into_iter()
                    .filter(|p| names.iter().any(|n| n == p.name()))
                    .collect()
            };
            for p in chosen {
                let started = std::time::Instant::now();
                reset(&db, p.as_ref()).await?;
                let mut events = 0usize;
                while let StepOutcome::Applied(n) = runtime.step(p.as_ref()).await? {
                    events += n;
                }
                let secs = started.elapsed().as_secs_f64();
                println!(
                    "{}: rebuilt from {events} events in {secs:.2}s ({:.0} events/s)",
                    p.name(),
                    events as f64 / secs.max(1e-9)
                );
            }
        }
    }
    db.close().await;
    Ok(())
}
