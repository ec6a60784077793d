//! `lifeboat validate`: check a config file without starting anything.

use anyhow::Result;
use lifeboat_config::Config;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct ValidateArgs {
    /// The config file (also accepted as --config).
    #[arg(long, short)]
    config: Option<PathBuf>,
    file: Option<PathBuf>,
}

pub(crate) fn run(args: ValidateArgs) -> Result<ExitCode> {
    match args.config.or(args.file) {
        Some(path) => validate(&path),
        None => anyhow::bail!("validate needs a config file: lifeboat validate FILE"),
    }
}

fn validate(path: &Path) -> Result<ExitCode> {
    match Config::load(path) {
        Ok(cfg) => {
            println!(
                "{}: ok ({} regions, {} checks{}{}{})",
                path.display(),
                cfg.regions.len(),
                cfg.checks.len(),
                if cfg.dns.is_some() { ", dns" } else { "" },
                if cfg.objects.is_some() {
                    ", objects"
                } else {
                    ""
                },
                if cfg.database.is_some() {
                    ", database"
                } else {
                    ""
                },
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("{e}");
            Ok(ExitCode::FAILURE)
        }
    }
}
