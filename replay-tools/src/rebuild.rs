//! `status` and `rebuild`.

use anyhow::bail;
use tally_projections::runtime::{reset, RuntimeConfig, StepOutcome};
use tally_projections::{all_projectors, Db, Runtime};

#[derive(clap::Args)]
pub struct Args {
    /// Projection names (see `status`).
    names: Vec<String>,
    /// Rebuild every projection.
    #[arg(long)]
    all: bool,
}

pub async fn status(db: &Db) -> anyhow::Result<()> {
    let runtime = Runtime::new(db.clone(), all_projectors(), RuntimeConfig::default());
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
    Ok(())
}

pub async fn run(db: &Db, args: Args) -> anyhow::Result<()> {
    let runtime = Runtime::new(db.clone(), all_projectors(), RuntimeConfig::default());
    let projectors = all_projectors();
    let chosen: Vec<_> = if args.all {
        projectors
    } else {
        if args.names.is_empty() {
            bail!("name a projection or pass --all");
        }
        for n in &args.names {
            if !projectors.iter().any(|p| p.name() == n) {
                bail!("unknown projection {n}");
            }
        }
        projectors
            .into_iter()
            .filter(|p| args.names.iter().any(|n| n == p.name()))
            .collect()
    };
    for p in chosen {
        let started = std::time::Instant::now();
        reset(db, p.as_ref()).await?;
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
    Ok(())
}
