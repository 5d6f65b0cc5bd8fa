//! `export`: the log as JSON Lines.

#[derive(clap::Args)]
pub struct Args {}

pub async fn run(_db: &tally_projections::Db, _args: Args) -> anyhow::Result<()> {
    anyhow::bail!("export is not built yet")
}
