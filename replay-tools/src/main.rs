//! `tally-replay`: the operator CLI over the log. Audit timelines, consumer
//! status, blue/green projection rebuilds, tamper verification, the sealed
//! digest and a JSON Lines export. Works on both backends (`--database` or
//! `DATABASE_URL`).

use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tally_projections::Db;

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

mod audit;
mod export;
mod rebuild;
mod seal;

#[derive(Parser)]
#[command(
    name = "tally-replay",
    version,
    about = "Replay, inspect, verify and rebuild Tally's log and read models"
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
    /// A readable timeline of one stream: time, sequence, event, actor,
    /// request id and what changed in the state.
    Audit(audit::Args),
    /// Every consumer with its position, the log head, lag and state.
    Status,
    /// Rebuilds read models from position 0: blue/green (new tables, then an
    /// atomic swap) unless --in-place.
    Rebuild(rebuild::Args),
    /// Recomputes the sealed hash chain and reports the first divergence.
    Verify(seal::VerifyArgs),
    /// Prints the sealed chain's digest: position and hash.
    Digest(seal::DigestArgs),
    /// Streams the log as JSON Lines, in position order.
    Export(export::Args),
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
    let result = match cli.command {
        Command::Audit(args) => audit::run(&db, args).await,
        Command::Status => rebuild::status(&db).await,
        Command::Rebuild(args) => rebuild::run(&db, args).await,
        Command::Verify(args) => seal::verify(&db, args).await,
        Command::Digest(args) => seal::digest(&db, args).await,
        Command::Export(args) => export::run(&db, args).await,
    };
    db.close().await;
    result
}
