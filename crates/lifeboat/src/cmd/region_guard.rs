//! `lifeboat region-guard` (hidden, not for operators): the region guard an agent
//! starts and feeds; it fences the region if the agent dies or freezes.

use anyhow::Result;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct RegionGuardArgs {
    #[arg(long)]
    region: String,
    #[arg(long)]
    state_dir: PathBuf,
}

pub(crate) async fn run(args: RegionGuardArgs) -> Result<ExitCode> {
    let RegionGuardArgs { region, state_dir } = args;
    // Blocking by design (threads and timeouts, no runtime in the fence path).
    tokio::task::spawn_blocking(move || lifeboat_agent::guard::run_process(&region, &state_dir))
        .await??;
    Ok(ExitCode::SUCCESS)
}
