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
    let sync = cfg
        .database
        .as_ref()
        .is_some_and(|d| d.mode == lifeboat_config::database::ReplicationMode::Sync);
    let failures = drill_failures(&report.summary, report.error.as_deref(), sync);
    for f in &failures {
        eprintln!("lifeboat drill: FAILED: {f}");
    }
    Ok(if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Why a drill fails, if it does. A drill is a test: two primaries, a run that did not
/// recover or a drill that stopped early fail it. Lost writes are a figure with
/// asynchronous replication (its RPO); with synchronous replication, which promises that
/// no acknowledged write is lost, they fail it too.
fn drill_failures(s: &lifeboat_drill::Summary, error: Option<&str>, sync: bool) -> Vec<String> {
    let mut why = Vec::new();
    if s.dual_primary_any {
        why.push("two databases took writes at once (see dual_primary in the report)".to_owned());
    }
    if s.recovered < s.runs {
        why.push(format!(
            "{} of {} runs did not recover",
            s.runs - s.recovered,
            s.runs
        ));
    }
    if let Some(e) = error {
        why.push(format!("the drill stopped early: {e}"));
    }
    if sync && s.lost_acknowledged_writes_total > 0 {
        why.push(format!(
            "{} acknowledged writes were lost with synchronous replication ([database] mode = \"sync\"), which promises none (the report's runs say which)",
            s.lost_acknowledged_writes_total
        ));
    }
    why
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

#[cfg(test)]
mod drill_verdict_tests {
    use super::drill_failures;
    use lifeboat_drill::Summary;

    fn summary(lost: usize) -> Summary {
        Summary {
            runs: 3,
            recovered: 3,
            lost_acknowledged_writes_total: lost,
            ..Summary::default()
        }
    }

    #[test]
    fn lost_writes_fail_a_drill_only_with_synchronous_replication() {
        assert!(drill_failures(&summary(0), None, true).is_empty());
        assert!(
            drill_failures(&summary(470), None, false).is_empty(),
            "async: the RPO"
        );
        let why = drill_failures(&summary(470), None, true);
        assert_eq!(why.len(), 1, "{why:?}");
        assert!(
            why[0].contains("470 acknowledged writes were lost"),
            "{why:?}"
        );
    }

    #[test]
    fn two_primaries_an_unrecovered_run_and_an_early_stop_fail_any_drill() {
        let mut s = summary(0);
        s.dual_primary_any = true;
        s.recovered = 2;
        let why = drill_failures(&s, Some("read-back failed"), false);
        assert_eq!(why.len(), 3, "{why:?}");
        assert!(why[1].contains("1 of 3 runs did not recover"), "{why:?}");
        assert!(why[2].contains("read-back failed"), "{why:?}");
    }
}
