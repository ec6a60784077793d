//! `lifeboat objects`: a region's object replication — pending and failed objects,
//! retries, backfill.

use crate::shared::{load_config, region_of};
use anyhow::Result;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Subcommand, Debug)]
pub enum ObjectsCommand {
    /// Counts and lists of pending and failed objects of a region.
    Status {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long, short)]
        region: String,
        #[arg(long)]
        json: bool,
    },
    /// Retry failed (and backing-off) objects now.
    Retry {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long, short)]
        region: String,
        /// Only keys starting with this prefix.
        #[arg(long)]
        prefix: Option<String>,
    },
    /// Copy every existing object of a region that the other regions lack.
    Backfill {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long, short)]
        region: String,
    },
}

pub(crate) async fn run(cmd: ObjectsCommand) -> Result<ExitCode> {
    let out = match cmd {
        ObjectsCommand::Status {
            config,
            region,
            json,
        } => {
            let cfg = load_config(&config)?;
            let r = region_of(&cfg, &region)?;
            lifeboat_objects::cli::status(&cfg, &r, &cfg.agent_state_dir(&r), json).await?
        }
        ObjectsCommand::Retry {
            config,
            region,
            prefix,
        } => {
            let cfg = load_config(&config)?;
            let r = region_of(&cfg, &region)?;
            lifeboat_objects::cli::retry(&cfg, &r, &cfg.agent_state_dir(&r), prefix.as_deref())
                .await?
        }
        ObjectsCommand::Backfill { config, region } => {
            let cfg = load_config(&config)?;
            let r = region_of(&cfg, &region)?;
            let progress = std::io::IsTerminal::is_terminal(&std::io::stderr());
            lifeboat_objects::cli::backfill(&cfg, &r, &cfg.agent_state_dir(&r), progress).await?
        }
    };
    println!("{out}");
    Ok(ExitCode::SUCCESS)
}
