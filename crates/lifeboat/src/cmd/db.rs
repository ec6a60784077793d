//! `lifeboat db`: database orchestration — bootstrap a region's server as the config
//! describes it (the engine's part is in [`crate::engine`]).

use crate::shared::{load_config, region_of};
use anyhow::Result;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Subcommand, Debug)]
pub enum DbCommand {
    /// Create the region's server: a primary in the initially active region, a replica
    /// of it elsewhere (the primary must be up).
    Bootstrap {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long, short)]
        region: String,
    },
}

pub(crate) async fn run(cmd: DbCommand) -> Result<ExitCode> {
    match cmd {
        DbCommand::Bootstrap { config, region } => {
            let cfg = load_config(&config)?;
            let r = region_of(&cfg, &region)?;
            crate::engine::bootstrap(&cfg, &r).await?;
            println!("database of region {r} bootstrapped");
            Ok(ExitCode::SUCCESS)
        }
    }
}
