//! `lifeboat failover` and `lifeboat switchover`: move the active region, then wait
//! until the controller reports the target active at a newer epoch.

use crate::shared::{api_client, load_config};
use anyhow::Result;
use lifeboat_api::types::MoveRequest;
use lifeboat_core::RegionId;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

#[derive(clap::Args, Debug)]
pub struct FailoverArgs {
    #[arg(long, short)]
    config: PathBuf,
    /// The region to promote.
    #[arg(long)]
    to: String,
    /// Promote even if the target's data roles are not ready (lag over the limit).
    #[arg(long)]
    force: bool,
    /// Return at once instead of waiting for the new region to report active.
    #[arg(long)]
    no_wait: bool,
}

#[derive(clap::Args, Debug)]
pub struct SwitchoverArgs {
    #[arg(long, short)]
    config: PathBuf,
    #[arg(long)]
    to: String,
    #[arg(long)]
    no_wait: bool,
}

/// Unplanned: the active region is fenced, not waited for.
pub(crate) async fn failover(a: FailoverArgs) -> Result<ExitCode> {
    move_to(&a.config, &a.to, a.force, false, a.no_wait).await
}

/// Planned: the target catches up (zero data loss) before it is promoted.
pub(crate) async fn switchover(a: SwitchoverArgs) -> Result<ExitCode> {
    move_to(&a.config, &a.to, false, true, a.no_wait).await
}

async fn move_to(
    path: &Path,
    to: &str,
    force: bool,
    switchover: bool,
    no_wait: bool,
) -> Result<ExitCode> {
    let cfg = load_config(path)?;
    let to = RegionId::new(to);
    if cfg.region(&to).is_none() {
        anyhow::bail!(
            "--to {to}: no such region in {} (regions: {})",
            path.display(),
            cfg.regions.keys().cloned().collect::<Vec<_>>().join(", ")
        );
    }
    let c = api_client(&cfg, true)?;
    let req = MoveRequest {
        to: to.clone(),
        force,
    };
    let what = if switchover { "switchover" } else { "failover" };
    let resp = if switchover {
        c.switchover(&req).await
    } else {
        c.failover(&req).await
    };
    let resp = match resp {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{what} refused: {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    println!("{}", resp.detail);
    if no_wait {
        return Ok(ExitCode::SUCCESS);
    }
    let deadline =
        tokio::time::Instant::now() + cfg.failover.switchover_timeout + cfg.failover.lease_ttl * 2;
    loop {
        let st = c.status().await?;
        let verified =
            st.active.as_ref() == Some(&to) && st.epoch > resp.epoch && st.phase == "steady";
        if verified {
            println!("{to} is active at epoch {}", st.epoch);
            return Ok(ExitCode::SUCCESS);
        }
        if tokio::time::Instant::now() >= deadline {
            eprintln!(
                "{what} to {to} not verified yet (phase: {}); see `lifeboat journal`",
                st.phase
            );
            return Ok(ExitCode::FAILURE);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
