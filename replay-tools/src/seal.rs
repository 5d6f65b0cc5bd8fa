//! `verify` and `digest`: the tamper-evidence commands. They read the chain
//! the server's sealer wrote; neither seals anything, so running them against
//! a live database changes nothing.

use tally_projections::seal::{self, Digest};
use tally_projections::Db;

#[derive(clap::Args)]
pub struct VerifyArgs {
    /// A digest taken earlier (`tally-replay digest`, `GET /v1/audit/digest`):
    /// the recomputed chain must pass through it. Without one, a chain
    /// rewritten consistently with edited events goes unnoticed.
    #[arg(long, value_name = "POSITION:HASH")]
    digest: Option<Digest>,
    /// Print the whole report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct DigestArgs {
    /// Print `{"position": …, "hash": …}` instead of `position:hash`.
    #[arg(long)]
    json: bool,
}

/// Prints the verdict; a divergence is an error, so the exit status is 1.
pub async fn verify(db: &Db, args: VerifyArgs) -> anyhow::Result<()> {
    let report = seal::verify(db, args.digest).await?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    }
    if let Some(d) = &report.divergence {
        anyhow::bail!(
            "diverged at position {}: {} ({})",
            d.position,
            d.kind,
            d.detail
        );
    }
    if !args.json {
        let mut line = format!(
            "ok: {} events verified up to position {} (hash {})",
            report.checked_events, report.verified.position, report.verified.hash
        );
        if let Some(d) = &report.expected {
            line.push_str(&format!(", digest {d} matches"));
        }
        if report.unsealed_events > 0 {
            line.push_str(&format!(
                ", {} later events not sealed yet",
                report.unsealed_events
            ));
        }
        println!("{line}");
    }
    Ok(())
}

pub async fn digest(db: &Db, args: DigestArgs) -> anyhow::Result<()> {
    let d = seal::digest(db).await?;
    if args.json {
        println!("{}", serde_json::to_string(&d)?);
    } else {
        println!("{d}");
    }
    Ok(())
}
