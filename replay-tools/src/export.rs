//! `export`: the log as JSON Lines, in position order, read a page at a
//! time through the ordered reader (constant memory, never past a position
//! that may still commit).

use std::io::Write;
use std::time::{Duration, Instant};

use serde_json::json;
use tally_projections::{Db, EventLog};

#[derive(clap::Args)]
pub struct Args {
    /// Only this tenant's events.
    #[arg(long)]
    tenant: Option<String>,
    /// Only events after this position.
    #[arg(long, default_value_t = 0)]
    after: i64,
}

/// Events read per page.
const PAGE: i64 = 5000;
/// How long to wait for an open transaction below the head to finish.
const HOLE_WAIT: Duration = Duration::from_secs(5);

pub async fn run(db: &Db, args: Args) -> anyhow::Result<()> {
    let log = EventLog::new(db.clone());
    let head = log.head().await?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut at = args.after;
    let mut waiting_since: Option<Instant> = None;
    while at < head {
        let page = log.read_after(at, PAGE).await?;
        let Some(last) = page.last() else {
            // A hole below the head whose transaction is still open: the
            // reader waits for it to commit or roll back.
            let since = *waiting_since.get_or_insert_with(Instant::now);
            if !log.has_pending_holes() || since.elapsed() > HOLE_WAIT {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        };
        waiting_since = None;
        at = last.position;
        for e in page {
            if args.tenant.as_deref().is_some_and(|t| t != e.tenant) {
                continue;
            }
            let line = json!({
                "position": e.position,
                "event_id": e.event_id,
                "tenant": e.tenant,
                "stream_type": e.aggregate_type,
                "stream_id": e.resource_id(),
                "sequence": e.sequence,
                "event_type": e.event_type,
                "event_version": e.event_version,
                "payload": e.payload,
                "metadata": e.metadata,
                "recorded_at": e.recorded_at,
            });
            serde_json::to_writer(&mut out, &line)?;
            out.write_all(b"\n")?;
        }
    }
    out.flush()?;
    Ok(())
}
