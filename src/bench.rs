//! `sensorlink bench`: a load generator on the client's code path.

use clap::Args;

use crate::cli::Outcome;

/// Flags of `sensorlink bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Server address.
    #[arg(default_value = "127.0.0.1:8889")]
    pub addr: String,
}

/// Run the benchmark and print its report.
pub fn run(_args: BenchArgs) -> anyhow::Result<Outcome> {
    anyhow::bail!("not yet")
}
