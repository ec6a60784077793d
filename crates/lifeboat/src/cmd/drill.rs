//! `lifeboat drill`: a disaster-recovery drill against a running deployment, its
//! RTO / RPO report, and the verdict (a drill is a test: it passes or fails). The demo
//! runs the same drill with the same flags (`lifeboat demo --drill`).

use crate::shared::load_config;
use anyhow::{Context, Result};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct DrillCommandArgs {
    #[arg(long, short)]
    config: PathBuf,
    #[command(flatten)]
    drill: DrillArgs,
}

/// `lifeboat drill --schedule`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrillSchedule {
    Random,
}

/// The drill's options, shared by `lifeboat drill` and `lifeboat demo --drill`.
#[derive(clap::Args, Debug, Clone)]
pub struct DrillArgs {
    /// region-outage (the default), partition, db-crash, app-crash, controller-kill,
    /// controller-pause, agent-kill or agent-pause.
    #[arg(long)]
    pub scenario: Option<lifeboat_drill::Scenario>,
    /// Runs of --scenario (default 1).
    #[arg(long)]
    pub runs: Option<u32>,
    /// How long each fault lasts before it is healed: seconds, or MIN-MAX to draw each
    /// length from. Default: 10 for lifeboat's own processes, 1-45 for a random
    /// schedule; the region scenarios otherwise last until another region is active.
    #[arg(long, value_name = "SECONDS|MIN-MAX")]
    pub fault_seconds: Option<lifeboat_drill::schedule::FaultLength>,
    /// `random`: --faults faults drawn from every scenario the config sets up, each
    /// healed and followed by a wait for the deployment to converge.
    #[arg(long)]
    pub schedule: Option<DrillSchedule>,
    /// The random schedule's seed (printed; the same seed replays the same faults).
    #[arg(long)]
    pub seed: Option<u64>,
    /// How many faults the random schedule draws (default 10).
    #[arg(long)]
    pub faults: Option<u32>,
    /// Write the JSON report to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write the HTML report (with an SVG timeline) to this file.
    #[arg(long)]
    pub html: Option<PathBuf>,
}

pub(crate) async fn run(args: DrillCommandArgs) -> Result<ExitCode> {
    let DrillCommandArgs { config, drill } = args;
    // A bad combination of flags is reported before anything is read or started.
    drill_options(drill.clone())?;
    let cfg = load_config(&config)?;
    run_drill(&cfg, drill).await
}

/// Run the drill, print its summary, and fail when its verdict does ([`drill_failures`]).
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
    // The controller keeps the report for its dashboard. A drill whose report it
    // cannot take still ends with its own verdict: the files (--json, --html) and the
    // summary above are the record.
    if let Err(e) = upload_report(cfg, &report, &failures).await {
        eprintln!(
            "lifeboat drill: the report was not stored on the controller (the dashboard will not list it): {e:#}"
        );
    }
    Ok(if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Hand the report to the controller (`POST /v1/drills`) for the dashboard's list.
async fn upload_report(
    cfg: &lifeboat_config::Config,
    report: &lifeboat_drill::DrillReport,
    failures: &[String],
) -> Result<()> {
    let s = &report.summary;
    let upload = lifeboat_api::types::DrillUpload {
        listing: lifeboat_api::types::DrillListing {
            id: String::new(),
            scenario: report.scenario.clone(),
            started_at_unix_ms: report.started_at_unix_ms,
            finished_at_unix_ms: report.finished_at_unix_ms,
            runs: s.runs,
            recovered: s.recovered,
            rto_median_ms: s.rto_median_ms,
            rto_max_ms: s.rto_max_ms,
            lost_acknowledged_writes: s.lost_acknowledged_writes_total,
            dual_primary_samples: s.dual_primary_samples_total,
            passed: failures.is_empty(),
            failures: failures.to_vec(),
        },
        report: serde_json::to_value(report).context("encoding the report")?,
        html: lifeboat_drill::render_html(report),
    };
    let client = crate::shared::api_client(cfg, true)?;
    let stored: lifeboat_api::types::DrillListing = client
        .post("/v1/drills", &upload)
        .await
        .context("POST /v1/drills")?;
    eprintln!(
        "lifeboat drill: report {} stored on the controller (its dashboard lists it)",
        stored.id
    );
    Ok(())
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
