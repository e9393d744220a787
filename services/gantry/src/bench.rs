//! `gantry bench`: measurements recorded in BENCHMARKS.md.

use clap::Subcommand;

use crate::cli::Global;

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Append→delivered latency of one event.
    Hop,
}

pub async fn run(command: BenchCommand, _global: &Global) -> anyhow::Result<()> {
    match command {
        BenchCommand::Hop => anyhow::bail!("not yet"),
    }
}
