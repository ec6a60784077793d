//! `lifeboat objects`, `lifeboat db`, `lifeboat drill` and `lifeboat sample-app`.

use crate::cli::{DbCommand, DrillArgs, ObjectsCommand};
use crate::run::load_config;
use anyhow::{Context, Result};
use lifeboat_config::database::DatabaseEngine;
use lifeboat_core::RegionId;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

fn region_of(cfg: &lifeboat_config::Config, region: &str) -> Result<RegionId> {
    let id = RegionId::new(region);
    anyhow::ensure!(
        cfg.region(&id).is_some(),
        "--region {region}: no such region in {} (regions: {})",
        cfg.source.display(),
        cfg.regions.keys().cloned().collect::<Vec<_>>().join(", ")
    );
    Ok(id)
}

pub async fn objects(cmd: ObjectsCommand) -> Result<ExitCode> {
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

pub async fn db(cmd: DbCommand) -> Result<ExitCode> {
    match cmd {
        DbCommand::Bootstrap { config, region } => {
            let cfg = load_config(&config)?;
            let r = region_of(&cfg, &region)?;
            bootstrap(&cfg, &r).await?;
            println!("database of region {r} bootstrapped");
            Ok(ExitCode::SUCCESS)
        }
    }
}

pub(crate) async fn bootstrap(cfg: &lifeboat_config::Config, r: &RegionId) -> Result<()> {
    let db = cfg
        .database
        .as_ref()
        .context("the config has no [database] section")?;
    match db.engine {
        DatabaseEngine::Postgres => lifeboat_pg::bootstrap_region(cfg, r).await,
        DatabaseEngine::Mariadb => {
            if cfg.initial_active().as_ref() == Some(r) {
                lifeboat_mysql::bootstrap_primary(cfg, r).await.map(|_| ())
            } else {
                let primary = cfg
                    .initial_active()
                    .context("no region has role = \"active\"")?;
                lifeboat_mysql::bootstrap_replica(cfg, r, &primary)
                    .await
                    .map(|_| ())
            }
        }
    }
    .with_context(|| format!("bootstrapping the database of region {r}"))
}

pub async fn drill(config: &Path, args: DrillArgs) -> Result<ExitCode> {
    // A bad combination of flags is reported before anything is read or started.
    drill_options(args.clone())?;
    let cfg = load_config(config)?;
    run_drill(&cfg, args).await
}

pub(crate) async fn run_drill(cfg: &lifeboat_config::Config, args: DrillArgs) -> Result<ExitCode> {
    let opts = drill_options(args)?;
    let cancel = lifeboat_drill::cancel_on_ctrl_c().context("listening for Ctrl-C")?;
    let report = lifeboat_drill::run(cfg, opts, cancel).await?;
    let mut out = std::io::stdout().lock();
    let _ = write!(out, "{}", lifeboat_drill::render_summary(&report));
    let _ = out.flush();
    // A drill is a test: two primaries, a run that did not recover or a drill that
    // stopped early fail it (lost writes are a figure, expected with async replication).
    let bad = report.summary.dual_primary_any
        || report.summary.recovered < report.summary.runs
        || report.error.is_some();
    Ok(if bad {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// The flags, checked together: a random schedule draws its own scenarios and count.
pub(crate) fn drill_options(args: DrillArgs) -> Result<lifeboat_drill::DrillOptions> {
    use crate::cli::DrillSchedule;
    let random = match args.schedule {
        Some(DrillSchedule::Random) => {
            if let Some(s) = args.scenario {
                anyhow::bail!(
                    "--scenario {s} and --schedule random exclude each other: the schedule draws from every scenario the config sets up"
                );
            }
            if args.runs.is_some() {
                anyhow::bail!(
                    "--runs does not apply to --schedule random: say how many faults with --faults"
                );
            }
            let faults = args.faults.unwrap_or(10);
            anyhow::ensure!(faults > 0, "--faults must be at least 1");
            Some(lifeboat_drill::RandomSchedule {
                seed: args
                    .seed
                    .unwrap_or_else(lifeboat_drill::schedule::fresh_seed),
                faults,
            })
        }
        None => {
            if args.seed.is_some() || args.faults.is_some() {
                anyhow::bail!("--seed and --faults go with --schedule random");
            }
            None
        }
    };
    let runs = args.runs.unwrap_or(1);
    anyhow::ensure!(runs > 0, "--runs must be at least 1");
    Ok(lifeboat_drill::DrillOptions {
        scenario: args
            .scenario
            .unwrap_or(lifeboat_drill::Scenario::RegionOutage),
        runs,
        json: args.json,
        html: args.html,
        progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
        fault_length: args.fault_seconds,
        random,
    })
}

pub async fn sample_app(opts: lifeboat_sample_app::Options) -> Result<ExitCode> {
    let listener = tokio::net::TcpListener::bind(opts.bind)
        .await
        .with_context(|| format!("binding the sample app on {}", opts.bind))?;
    crate::run::announce("app", format!("http://{}", listener.local_addr()?));
    let cancel = tokio_util::sync::CancellationToken::new();
    crate::run::cancel_on_signal(cancel.clone());
    lifeboat_sample_app::serve(listener, opts, cancel).await?;
    Ok(ExitCode::SUCCESS)
}
