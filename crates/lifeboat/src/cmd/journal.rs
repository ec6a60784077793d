//! `lifeboat journal`: the controller's journal, every step with its timestamp.

use crate::shared::{api_client, load_config};
use anyhow::{Context, Result};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct JournalArgs {
    #[arg(long, short)]
    config: PathBuf,
    #[arg(long, default_value_t = 0)]
    since: u64,
    #[arg(long)]
    json: bool,
}

pub(crate) async fn run(args: JournalArgs) -> Result<ExitCode> {
    let JournalArgs {
        config,
        since,
        json,
    } = args;
    let cfg = load_config(&config)?;
    let c = api_client(&cfg, false)?;
    let entries = c
        .journal(since)
        .await
        .context("reading the controller's journal")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&entries)?);
    } else {
        for e in entries {
            println!(
                "{:>6} {:>14} epoch {:<4} {:<20} {:<8} {}",
                e.seq,
                e.at_unix_ms,
                e.epoch,
                e.kind.as_str(),
                e.region.as_ref().map_or("-", |r| r.as_str()),
                e.detail
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
