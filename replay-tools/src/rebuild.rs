//! `status` and `rebuild`.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use tally_projections::rebuild::{Progress, Start};
use tally_projections::runtime::{checkpoints, reset, RuntimeConfig, StepOutcome};
use tally_projections::tables::SHADOW_SUFFIX;
use tally_projections::{all_projectors, Db, Projector, Runtime};

#[derive(clap::Args)]
pub struct Args {
    /// Projection names (see `status`).
    names: Vec<String>,
    /// Rebuild every projection.
    #[arg(long)]
    all: bool,
    /// Empty the live tables and replay into them (offline: queries see a
    /// partial read model until it finishes). The default is blue/green.
    #[arg(long)]
    in_place: bool,
    /// Events read and applied per transaction.
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(i64).range(1..=10_000))]
    batch_size: i64,
}

/// Every consumer with a checkpoint: the read models and the sealer, then
/// the rest (policies, which run in the server; rebuilds in progress).
pub async fn status(db: &Db) -> anyhow::Result<()> {
    let mut consumers = all_projectors();
    consumers.push(tally_projections::seal::sealer());
    let runtime = Runtime::new(db.clone(), consumers, RuntimeConfig::default());
    println!(
        "{:<24} {:>12} {:>12} {:>10}  status",
        "name", "position", "log_head", "lag"
    );
    let mut shown = Vec::new();
    let mut head = 0;
    for s in runtime.status().await? {
        let state = match s.lag_events {
            0 => "caught up",
            _ if s.position == 0 => "not started",
            _ => "behind",
        };
        println!(
            "{:<24} {:>12} {:>12} {:>10}  {state}",
            s.name, s.position, s.log_head, s.lag_events
        );
        head = s.log_head;
        shown.push(s.name);
    }
    let mut rest: Vec<_> = checkpoints(db)
        .await?
        .into_iter()
        .filter(|(name, _)| !shown.contains(name))
        .collect();
    rest.sort();
    for (name, position) in rest {
        let state = if name.ends_with(SHADOW_SUFFIX) {
            "rebuild in progress (resumable)"
        } else {
            "policy (runs in the server)"
        };
        println!(
            "{:<24} {:>12} {:>12} {:>10}  {state}",
            name,
            position,
            head,
            (head - position).max(0)
        );
    }
    Ok(())
}

fn choose(args: &Args) -> anyhow::Result<Vec<Arc<dyn Projector>>> {
    let projectors = all_projectors();
    if args.all {
        return Ok(projectors);
    }
    if args.names.is_empty() {
        bail!("name a projection or pass --all");
    }
    for n in &args.names {
        if !projectors.iter().any(|p| p.name() == n) {
            let known: Vec<_> = projectors.iter().map(|p| p.name()).collect();
            bail!("unknown projection {n} (known: {})", known.join(", "));
        }
    }
    Ok(projectors
        .into_iter()
        .filter(|p| args.names.iter().any(|n| n == p.name()))
        .collect())
}

pub async fn run(db: &Db, args: Args) -> anyhow::Result<()> {
    let chosen = choose(&args)?;
    let config = RuntimeConfig {
        batch_size: args.batch_size,
        ..RuntimeConfig::default()
    };
    let runtime = Runtime::new(db.clone(), all_projectors(), config);
    if args.in_place {
        for p in chosen {
            in_place(&runtime, p.as_ref()).await?;
        }
        return Ok(());
    }
    // One pass over the log for all of them.
    let projectors: Vec<&dyn Projector> = chosen.iter().map(|p| p.as_ref()).collect();
    let mut reporter = Reporter::new();
    let outcomes =
        tally_projections::rebuild::run_all(&runtime, &projectors, &mut |pr| reporter.show(pr))
            .await?;
    reporter.finish();
    for outcome in outcomes {
        let swapped = match outcome.swapped_at {
            Some(at) => format!("swapped in at position {at}"),
            None => "another rebuild swapped it in first".to_string(),
        };
        println!(
            "{}: rebuilt from {} events in {:.2}s ({:.0} events/s), {swapped}",
            outcome.name,
            outcome.events,
            outcome.secs,
            outcome.events as f64 / outcome.secs.max(1e-9)
        );
    }
    Ok(())
}

/// The offline rebuild: empty the live tables, replay into them.
async fn in_place(runtime: &Runtime, p: &dyn Projector) -> anyhow::Result<()> {
    let started = Instant::now();
    reset(runtime.db(), p).await?;
    runtime.forget_cursor(p.name());
    let mut events = 0usize;
    while let StepOutcome::Applied(n) = runtime.step(p).await? {
        events += n;
    }
    runtime.settle_cursor(p.name()).await?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{}: rebuilt in place from {events} events in {secs:.2}s ({:.0} events/s)",
        p.name(),
        events as f64 / secs.max(1e-9)
    );
    Ok(())
}

/// Shows a rebuild's progress: a redrawn bar on a terminal (stderr), plain
/// lines otherwise (stdout, at most one a second after the first batch).
struct Reporter {
    terminal: bool,
    last: Option<Instant>,
    batches: u64,
}

impl Reporter {
    fn new() -> Self {
        Self {
            terminal: std::io::stderr().is_terminal(),
            last: None,
            batches: 0,
        }
    }

    fn show(&mut self, p: &Progress) {
        if self.batches == 0 {
            let from = match p.start {
                Start::Fresh => "from position 0".to_string(),
                Start::Resumed(at) => format!("resuming at position {at}"),
            };
            println!(
                "{}: building new tables {from}, log head {}",
                p.name, p.target
            );
        }
        self.batches += 1;
        let due = self.last.is_none_or(|t| {
            t.elapsed() >= Duration::from_millis(if self.terminal { 100 } else { 1000 })
        });
        if !due || p.events == 0 {
            return;
        }
        self.last = Some(Instant::now());
        let done = if p.target > 0 {
            (p.position as f64 / p.target as f64).min(1.0)
        } else {
            1.0
        };
        let eta = p
            .eta_secs()
            .map(|s| format!("{s:.0}s"))
            .unwrap_or_else(|| "?".into());
        if self.terminal {
            let width = 30;
            let filled = (done * width as f64) as usize;
            eprint!(
                "\r{} [{}{}] {:>3.0}% {}/{} {:.0} events/s ETA {eta}   ",
                p.name,
                "#".repeat(filled),
                ".".repeat(width - filled),
                done * 100.0,
                p.position,
                p.target,
                p.events_per_sec()
            );
            let _ = std::io::stderr().flush();
        } else {
            println!(
                "{}: position {}/{} ({:.0}%), {:.0} events/s, ETA {eta}",
                p.name,
                p.position,
                p.target,
                done * 100.0,
                p.events_per_sec()
            );
            let _ = std::io::stdout().flush();
        }
    }

    fn finish(&self) {
        if self.terminal && self.last.is_some() {
            eprintln!();
        }
    }
}
