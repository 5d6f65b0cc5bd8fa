//! `audit`: one stream's timeline.

#[derive(clap::Args)]
pub struct Args {}

pub async fn run(_db: &tally_projections::Db, _args: Args) -> anyhow::Result<()> {
    anyhow::bail!("audit is not built yet")
}
