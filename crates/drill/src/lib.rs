//! `lifeboat drill`: black-box chaos drills that measure RTO and RPO.
//!
//! The drill talks only to public interfaces: the deployment's DNS server (to find the
//! app, like any client), the app's HTTP API (to write and read back uniquely numbered
//! entries), the controller's HTTP API (`GET /v1/status`, `GET /v1/journal`), and the
//! fault commands of `[drill.regions.NAME]`. One run:
//!
//! 1. checks the controller answers and the fault is configured — otherwise an error,
//!    and nothing is injected; waits for a steady deployment; targets the active region;
//! 2. writes at `rate` per second for `warmup` (at least one write must succeed);
//! 3. injects the fault, keeps writing until writes succeed again *and* the controller
//!    reports another active region (or `recovery_timeout`), then `cooldown` more;
//! 4. stops writing, undoes the fault (always: also on error and cancellation), reads
//!    every id back from the region the DNS now answers, and fetches the journal;
//! 5. judges the history ([`report::analyze`]): RTO, lost acknowledged writes, unknown
//!    writes that committed, dual primaries, the journal's steps.
//!
//! A *timed* fault (lifeboat's own processes — `controller-kill`, `controller-pause`,
//! `agent-kill`, `agent-pause` — any scenario with `--fault-seconds`, and every fault of
//! `--schedule random`) replaces step 3: the fault lasts its length, is healed (the
//! undo command), and the drill waits until the deployment has converged — one active
//! region, phase steady, every agent reporting and agreeing on the epoch, the standby
//! following, exactly one database taking writes — for a lease's ttl plus its margin
//! before the next fault.
//!
//! Throughout, a sampler ([`sampler`]) asks every region's database directly at least
//! every 200 ms whether it takes writes; a round in which two do is a dual primary,
//! whatever the writes or the journal say.
//!
//! Entry point: [`run`]; render with [`render_summary`] and [`render_html`].

pub mod client;
pub mod fault;
pub mod history;
pub mod html;
pub mod report;
pub mod sampler;
pub mod schedule;

pub use html::render_html;
pub use report::{DrillReport, RunReport, Summary, render_summary};

use anyhow::{Context, anyhow};
use client::{AppClient, Clock};
use fault::{CmdEnv, Injected};
use history::{Op, Outcome};
use lifeboat_api::ApiClient;
use lifeboat_api::types::ControllerStatus;
use lifeboat_config::Config;
use lifeboat_config::drill::DrillConfig;
use lifeboat_core::{HealthStatus, JournalEntry, RegionId};
use report::{RunRecord, TimedRecord};
use schedule::{FaultLength, PlannedFault};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// What the drill breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// Kill the whole active region (`outage_start` / `outage_stop`).
    RegionOutage,
    /// Cut the active region off the network (`partition_netns`, or commands).
    Partition,
    /// Kill the active region's database server (`db_crash` / `db_restore`).
    DbCrash,
    /// Kill the active region's application (`app_crash` / `app_restore`).
    AppCrash,
    /// SIGKILL the controller, the witness (`[drill.controller] kill` / `start`).
    ControllerKill,
    /// SIGSTOP the controller, SIGCONT after the fault's length (`pause` / `resume`).
    ControllerPause,
    /// SIGKILL the active region's agent alone (`agent_kill` / `agent_start`).
    AgentKill,
    /// SIGSTOP the active region's agent (`agent_pause` / `agent_resume`).
    AgentPause,
}

impl Scenario {
    pub const ALL: [Scenario; 8] = [
        Scenario::RegionOutage,
        Scenario::Partition,
        Scenario::DbCrash,
        Scenario::AppCrash,
        Scenario::ControllerKill,
        Scenario::ControllerPause,
        Scenario::AgentKill,
        Scenario::AgentPause,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scenario::RegionOutage => "region-outage",
            Scenario::Partition => "partition",
            Scenario::DbCrash => "db-crash",
            Scenario::AppCrash => "app-crash",
            Scenario::ControllerKill => "controller-kill",
            Scenario::ControllerPause => "controller-pause",
            Scenario::AgentKill => "agent-kill",
            Scenario::AgentPause => "agent-pause",
        }
    }

    /// lifeboat's own processes: a fault that lasts a given time and is healed, after
    /// which the deployment must converge (a failover is not the expected outcome, so
    /// "until another region is active" cannot be their end).
    pub fn is_lifeboat_process(self) -> bool {
        matches!(
            self,
            Scenario::ControllerKill
                | Scenario::ControllerPause
                | Scenario::AgentKill
                | Scenario::AgentPause
        )
    }

    /// The fault hits the controller, not a region.
    pub fn hits_controller(self) -> bool {
        matches!(self, Scenario::ControllerKill | Scenario::ControllerPause)
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl FromStr for Scenario {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Scenario::ALL
            .into_iter()
            .find(|x| x.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown scenario {s:?} (one of: {})",
                    Scenario::ALL.map(|x| x.as_str()).join(", ")
                )
            })
    }
}

/// What `lifeboat drill` was asked to do.
#[derive(Debug, Clone)]
pub struct DrillOptions {
    pub scenario: Scenario,
    pub runs: u32,
    /// Write the JSON report here.
    pub json: Option<PathBuf>,
    /// Write the HTML report here.
    pub html: Option<PathBuf>,
    /// Draw a live progress line on stderr.
    pub progress: bool,
    /// How long each fault lasts before it is healed. None: a region scenario lasts
    /// until another region is active (the classic drill), lifeboat's own processes
    /// [`FaultLength::DEFAULT_SINGLE`], a random schedule's faults
    /// [`FaultLength::DEFAULT_RANDOM`]. A range draws each fault's length from it.
    pub fault_length: Option<FaultLength>,
    /// Draw `faults` faults from every configured scenario instead of `scenario` ×
    /// `runs`.
    pub random: Option<RandomSchedule>,
}

impl DrillOptions {
    /// `runs` runs of `scenario`, the classic way, no report files, no progress line.
    pub fn new(scenario: Scenario, runs: u32) -> Self {
        Self {
            scenario,
            runs,
            json: None,
            html: None,
            progress: false,
            fault_length: None,
            random: None,
        }
    }
}

/// `--schedule random --seed S --faults K`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RandomSchedule {
    pub seed: u64,
    pub faults: u32,
}

/// Errors a caller may want to tell apart (downcast the `anyhow::Error`).
#[derive(Debug, thiserror::Error)]
pub enum DrillError {
    #[error(
        "{file} has no [drill] section: add [drill] with app_name and app_port (see docs/drill.md)"
    )]
    NoDrillSection { file: String },
    #[error("{file}: key `{key}` is missing: {message}")]
    NotConfigured {
        file: String,
        key: String,
        message: String,
    },
    #[error("the controller at {url} is unreachable ({reason}); nothing was injected")]
    ControllerUnreachable { url: String, reason: String },
    #[error("the drill was cancelled; {restore}")]
    Cancelled { restore: String },
}

/// A token cancelled by the first Ctrl-C (SIGINT): hand it to [`run`], which then
/// undoes any injected fault and returns [`DrillError::Cancelled`]. The signal handler
/// is installed before this returns (call it inside the tokio runtime).
pub fn cancel_on_ctrl_c() -> std::io::Result<CancellationToken> {
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        if sigint.recv().await.is_some() {
            t.cancel();
        }
    });
    Ok(token)
}

/// Run the drill: `opts.runs` runs of `opts.scenario` against `cfg`'s deployment.
/// Writes the JSON / HTML reports when asked. On `cancel`, undoes the injected fault
/// and returns [`DrillError::Cancelled`].
pub async fn run(
    cfg: &Config,
    opts: DrillOptions,
    cancel: CancellationToken,
) -> anyhow::Result<DrillReport> {
    let dc = cfg
        .drill
        .as_ref()
        .ok_or_else(|| DrillError::NoDrillSection {
            file: cfg.source.display().to_string(),
        })?;
    anyhow::ensure!(opts.runs > 0, "--runs must be at least 1");
    let clock = Clock::new();
    let started = clock.now_ms();
    let controller = ApiClient::any_of(
        cfg.controller.api_urls(),
        cfg.auth.secret().load().ok(),
        Duration::from_secs(3),
    );
    // 1. Reachability and configuration, before anything else happens.
    let status =
        controller
            .leader_status()
            .await
            .map_err(|e| DrillError::ControllerUnreachable {
                url: controller.base().to_owned(),
                reason: e.to_string(),
            })?;
    let active = status
        .active
        .clone()
        .context("the controller reports no active region: nothing to drill against")?;
    let mut schedule_info = None;
    let planned: Vec<(Scenario, Option<u64>)> = match opts.random {
        Some(rs) => {
            anyhow::ensure!(rs.faults > 0, "--faults must be at least 1");
            // Every scenario the deployment configures, for every region (a later
            // fault targets whichever region is active then); the others are left out
            // and the report says why.
            let mut available = Vec::new();
            let mut skipped = Vec::new();
            for sc in Scenario::ALL {
                let checked = cfg
                    .region_ids()
                    .iter()
                    .try_for_each(|r| fault::plan(cfg, sc, r).map(|_| ()));
                match checked {
                    Ok(()) => available.push(sc),
                    Err(e) => skipped.push((sc, e.to_string())),
                }
            }
            anyhow::ensure!(
                !available.is_empty(),
                "no scenario is configured for every region: {}",
                skipped
                    .iter()
                    .map(|(_, e)| e.as_str())
                    .collect::<Vec<_>>()
                    .join("; ")
            );
            let length = opts.fault_length.unwrap_or(FaultLength::DEFAULT_RANDOM);
            let faults = schedule::random(rs.seed, rs.faults, &available, length);
            let list: Vec<String> = faults
                .iter()
                .map(|f| format!("{} {:.1}s", f.scenario, f.length_ms as f64 / 1000.0))
                .collect();
            eprintln!(
                "lifeboat drill: random schedule, seed {} ({} faults of {length}): {}",
                rs.seed,
                faults.len(),
                list.join(", ")
            );
            for (sc, why) in &skipped {
                eprintln!("lifeboat drill: {sc} left out of the schedule: {why}");
            }
            schedule_info = Some(report::ScheduleInfo {
                seed: rs.seed,
                faults: rs.faults,
                min_fault_ms: length.min_ms,
                max_fault_ms: length.max_ms,
                planned: faults.clone(),
                skipped,
            });
            faults
                .into_iter()
                .map(|f| (f.scenario, Some(f.length_ms)))
                .collect()
        }
        None => {
            fault::plan(cfg, opts.scenario, &active)?;
            if opts.runs > 1 {
                // Later runs target whichever region is active then: check them all now.
                for r in cfg.region_ids() {
                    fault::plan(cfg, opts.scenario, &r)?;
                }
            }
            let length = opts.fault_length.or(opts
                .scenario
                .is_lifeboat_process()
                .then_some(FaultLength::DEFAULT_SINGLE));
            match length {
                Some(l) => schedule::random(schedule::fresh_seed(), opts.runs, &[opts.scenario], l)
                    .into_iter()
                    .map(|f: PlannedFault| (f.scenario, Some(f.length_ms)))
                    .collect(),
                None => (0..opts.runs).map(|_| (opts.scenario, None)).collect(),
            }
        }
    };
    let total = planned.len() as u32;
    let dns = dc.dns_servers(cfg);
    anyhow::ensure!(
        !dns.is_empty(),
        "no DNS server: set drill.dns_server or controller.dns_addr in {}",
        cfg.source.display()
    );
    let regions: BTreeMap<_, _> = cfg
        .regions
        .iter()
        .filter_map(|(n, r)| r.address.map(|a| (a, RegionId::new(n))))
        .collect();
    let app = Arc::new(AppClient::new(
        &dns,
        &dc.app_name,
        dc.app_port,
        &dc.app_path,
        dc.request_timeout,
        regions.clone(),
        clock,
    )?);
    let progress = if opts.progress {
        indicatif::ProgressBar::new_spinner()
    } else {
        indicatif::ProgressBar::hidden()
    };
    progress.enable_steady_tick(Duration::from_millis(120));
    let sampler = sampler::Sampler::start(cfg, dc.sample_interval, clock)?;
    let ctx = RunCtx {
        cfg,
        dc,
        controller: &controller,
        app,
        clock,
        progress: &progress,
        show_lines: !opts.progress,
        cancel: &cancel,
        region_addrs: regions.into_iter().map(|(a, r)| (r, a)).collect(),
        total,
        sampler: &sampler,
    };
    let mut runs = Vec::new();
    let mut stopped: Option<String> = None;
    for (i, (scenario, length_ms)) in (1..).zip(planned.iter().copied()) {
        progress.set_message(format!("run {i}/{total}: waiting for a steady deployment"));
        let rec = match wait_steady(&ctx).await {
            Ok(_) => match length_ms {
                Some(l) => run_timed(&ctx, i, scenario, Duration::from_millis(l)).await,
                None => run_once(&ctx, i, scenario).await,
            },
            Err(e) => Err(e),
        };
        let rec = match rec {
            Ok(r) => r,
            // Cancellation, or nothing measured yet: the caller gets the error.
            Err(e) if runs.is_empty() || is_cancel(&e) => {
                progress.finish_and_clear();
                return Err(e);
            }
            // A later run's failure keeps what the earlier runs measured.
            Err(e) => {
                stopped = Some(format!("stopped at run {i}: {e:#}"));
                break;
            }
        };
        let r = report::analyze(rec);
        let line = match r.fault_length_ms {
            Some(len) => format!(
                "run {i}/{total}: {} of {} for {:.1}s; unavailable {} ms; failed over {}; {}; ok {} failed {} unknown {}; lost {}; dual-primary samples {}",
                r.scenario,
                r.fault_target,
                len as f64 / 1000.0,
                r.unavailability_ms,
                if r.failed_over { "yes" } else { "no" },
                r.converge_ms.map_or("NOT CONVERGED".into(), |c| format!(
                    "converged in {:.1}s",
                    c as f64 / 1000.0
                )),
                r.writes.ok,
                r.writes.failed,
                r.writes.unknown,
                r.lost_acknowledged_writes,
                r.dual_primary_samples,
            ),
            None => format!(
                "run {i}/{total}: fault in {} -> {}; RTO {}; ok {} failed {} unknown {}; lost {}; dual primary {}",
                r.target,
                r.new_active.as_ref().map_or("-".into(), |a| a.to_string()),
                r.rto_ms.map_or("-".into(), |v| format!("{v} ms")),
                r.writes.ok,
                r.writes.failed,
                r.writes.unknown,
                r.lost_acknowledged_writes,
                if r.dual_primary { "YES" } else { "no" }
            ),
        };
        ctx.say(line);
        runs.push(r);
    }
    // Several faults in a row: a write found after its own fault may still have been
    // lost by a later one. Read every acknowledged write once more.
    let final_read = if runs.len() > 1 && runs.iter().any(|r| r.fault_length_ms.is_some()) {
        progress.set_message("final read of every acknowledged write");
        Some(final_read(&ctx, &runs).await)
    } else {
        None
    };
    progress.finish_and_clear();
    let sampled_regions = sampler.regions().to_vec();
    let sample_interval_ms =
        (!sampled_regions.is_empty()).then(|| sampler.interval().as_millis() as u64);
    sampler.stop().await;
    let report = DrillReport {
        scenario: if opts.random.is_some() {
            "random".to_owned()
        } else {
            opts.scenario.to_string()
        },
        deployment: cfg.deployment.name.clone(),
        app_name: dc.app_name.clone(),
        started_at_unix_ms: started,
        finished_at_unix_ms: clock.now_ms(),
        summary: report::summarize(&runs),
        per_scenario: report::summarize_scenarios(&runs),
        runs,
        error: stopped,
        schedule: schedule_info,
        sampled_regions,
        sample_interval_ms,
        final_read,
    };
    if let Some(path) = &opts.json {
        let text = serde_json::to_string_pretty(&report).context("encoding the JSON report")?;
        std::fs::write(path, text)
            .with_context(|| format!("writing the JSON report {}", path.display()))?;
    }
    if let Some(path) = &opts.html {
        std::fs::write(path, render_html(&report))
            .with_context(|| format!("writing the HTML report {}", path.display()))?;
    }
    Ok(report)
}

fn is_cancel(e: &anyhow::Error) -> bool {
    matches!(
        e.downcast_ref::<DrillError>(),
        Some(DrillError::Cancelled { .. })
    )
}

struct RunCtx<'a> {
    cfg: &'a Config,
    dc: &'a DrillConfig,
    controller: &'a ApiClient,
    app: Arc<AppClient>,
    clock: Clock,
    progress: &'a indicatif::ProgressBar,
    /// No live progress line: print each run's line on stderr instead (a long schedule
    /// run by a script or a test shows where it is).
    show_lines: bool,
    cancel: &'a CancellationToken,
    region_addrs: BTreeMap<RegionId, std::net::IpAddr>,
    total: u32,
    sampler: &'a sampler::Sampler,
}

impl RunCtx<'_> {
    fn say(&self, line: String) {
        if self.show_lines {
            eprintln!("lifeboat drill: {line}");
        } else {
            self.progress.println(line);
        }
    }
}

const POLL: Duration = Duration::from_millis(200);

/// Sleep, or stop early with an error if the drill is cancelled.
async fn pause(cancel: &CancellationToken, d: Duration) -> Result<(), ()> {
    tokio::select! {
        () = tokio::time::sleep(d) => Ok(()),
        () = cancel.cancelled() => Err(()),
    }
}

/// Steady: the controller is in phase "steady" with an active, healthy region, every
/// region's agent has reported recently (a restored region is back), and — when the
/// controller requires it — every standby's data roles are ready to be promoted.
async fn wait_steady(ctx: &RunCtx<'_>) -> anyhow::Result<ControllerStatus> {
    let deadline = tokio::time::Instant::now() + ctx.dc.steady_timeout;
    let fresh_ms = ctx.cfg.failover.report_ttl.as_millis() as u64;
    let mut last: String;
    loop {
        match ctx.controller.leader_status().await {
            Ok(s) => {
                let active_ok = s.active.as_ref().is_some_and(|a| {
                    s.regions
                        .iter()
                        .any(|r| &r.name == a && r.health == HealthStatus::Healthy)
                });
                let all_report = s
                    .regions
                    .iter()
                    .all(|r| r.last_report_ms.is_some_and(|ms| ms <= fresh_ms));
                // The controller refuses to promote an unready standby: wait for them.
                let standbys_ready = !ctx.cfg.failover.require_ready_standby
                    || s.regions
                        .iter()
                        .filter(|r| Some(&r.name) != s.active.as_ref())
                        .all(|r| r.roles.iter().all(|role| role.ready_to_promote));
                if s.phase == "steady" && active_ok && all_report && standbys_ready {
                    return Ok(s);
                }
                last = format!(
                    "phase {}, active {}, regions reporting: {}",
                    s.phase,
                    s.active.as_ref().map_or("-".into(), |a| a.to_string()),
                    s.regions
                        .iter()
                        .map(|r| {
                            let unready: Vec<&str> = r
                                .roles
                                .iter()
                                .filter(|x| !x.ready_to_promote)
                                .map(|x| x.name.as_str())
                                .collect();
                            format!(
                                "{} health {:?}, last report {}, unready roles {:?}",
                                r.name,
                                r.health,
                                r.last_report_ms
                                    .map_or("never".into(), |m| format!("{m} ms ago")),
                                unready
                            )
                        })
                        .collect::<Vec<_>>()
                        .join("; ")
                );
            }
            Err(e) => last = e.to_string(),
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!(
                "the deployment was not steady within {:?} ({last})",
                ctx.dc.steady_timeout
            );
        }
        if pause(ctx.cancel, POLL).await.is_err() {
            return Err(DrillError::Cancelled {
                restore: "nothing was injected".into(),
            }
            .into());
        }
    }
}

/// How long a journal read keeps trying a controller that does not answer.
const JOURNAL_PATIENCE: Duration = Duration::from_secs(30);

/// One page of the journal. A controller that times out or refuses (restarting, starved
/// on a loaded host, just resumed from a pause) is asked again for up to
/// [`JOURNAL_PATIENCE`]: a drill of lifeboat's own faults must not stop at the first slow
/// answer, as a 40-fault bench once did at fault 31 (and its demo shut down with it).
async fn journal_page(c: &ApiClient, since: u64) -> anyhow::Result<Vec<JournalEntry>> {
    let deadline = tokio::time::Instant::now() + JOURNAL_PATIENCE;
    let mut tries = 0u32;
    loop {
        tries += 1;
        match c.journal(since).await {
            Ok(page) => return Ok(page),
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::debug!("reading the controller's journal (try {tries}): {e}");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => {
                return Err(anyhow::Error::new(e).context(format!(
                    "reading the controller's journal ({tries} tries in {} s)",
                    JOURNAL_PATIENCE.as_secs()
                )));
            }
        }
    }
}

/// The highest journal sequence number now.
async fn journal_cursor(c: &ApiClient) -> anyhow::Result<u64> {
    let mut since = 0;
    loop {
        let page = journal_page(c, since).await?;
        match page.last() {
            Some(e) if e.seq > since => since = e.seq,
            _ => return Ok(since),
        }
    }
}

async fn journal_since(c: &ApiClient, mut since: u64) -> anyhow::Result<Vec<JournalEntry>> {
    let mut out = Vec::new();
    loop {
        let page = journal_page(c, since).await?;
        match page.last() {
            Some(e) if e.seq > since => since = e.seq,
            _ => return Ok(out),
        }
        out.extend(page);
    }
}

/// The writer: one write every 1/rate seconds, each in its own task so a hanging write
/// does not slow the rate; returns when `stop` fires and every write has finished.
async fn writer(
    app: Arc<AppClient>,
    run_id: String,
    rate: u32,
    ops: Arc<Mutex<Vec<Op>>>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut tasks = tokio::task::JoinSet::new();
    let mut n: u64 = 0;
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        n += 1;
        let id = format!("{run_id}-{n}");
        let body = format!("lifeboat drill {run_id} write {n}");
        let app = app.clone();
        let ops = ops.clone();
        tasks.spawn(async move {
            let op = app.write(id, body).await;
            if let Ok(mut v) = ops.lock() {
                v.push(op);
            }
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
}

fn counts(ops: &Mutex<Vec<Op>>) -> (usize, usize, usize) {
    let v = ops.lock().map(|v| v.clone()).unwrap_or_default();
    let c = |o| v.iter().filter(|x| x.outcome == o).count();
    (c(Outcome::Ok), c(Outcome::Failed), c(Outcome::Unknown))
}

enum Waited {
    Recovered(Option<RegionId>),
    TimedOut(Option<RegionId>),
}

/// The warm-up: `warmup` of writes, of which one at least must succeed. On failure
/// (or cancellation) the writer is stopped and the error says nothing was injected.
async fn warm_up(
    ctx: &RunCtx<'_>,
    ops: &Mutex<Vec<Op>>,
    stop: &CancellationToken,
    writer_task: &mut Option<tokio::task::JoinHandle<()>>,
) -> anyhow::Result<()> {
    let warm = pause(ctx.cancel, ctx.dc.warmup).await;
    if warm.is_ok() && counts(ops).0 > 0 {
        return Ok(());
    }
    stop.cancel();
    if let Some(t) = writer_task.take() {
        let _ = t.await;
    }
    if warm.is_err() {
        return Err(DrillError::Cancelled {
            restore: "nothing was injected".into(),
        }
        .into());
    }
    let last_error = ops
        .lock()
        .ok()
        .and_then(|v| v.iter().rev().find_map(|o| o.error.clone()))
        .unwrap_or_else(|| "no write finished".into());
    anyhow::bail!(
        "no write to {} succeeded during the {:?} warm-up (last error: {last_error}); nothing was injected",
        ctx.dc.app_name,
        ctx.dc.warmup
    )
}

async fn run_once(ctx: &RunCtx<'_>, i: u32, scenario: Scenario) -> anyhow::Result<RunRecord> {
    let status =
        ctx.controller
            .leader_status()
            .await
            .map_err(|e| DrillError::ControllerUnreachable {
                url: ctx.controller.base().to_owned(),
                reason: e.to_string(),
            })?;
    let target = status
        .active
        .clone()
        .context("the controller reports no active region")?;
    let injection = fault::plan(ctx.cfg, scenario, &target)?;
    let started_ms = ctx.clock.now_ms();
    let run_id = format!("drill{started_ms:x}r{i}");
    let ops = Arc::new(Mutex::new(Vec::new()));
    let stop = CancellationToken::new();
    let mut writer_task = Some(tokio::spawn(writer(
        ctx.app.clone(),
        run_id.clone(),
        ctx.dc.rate,
        ops.clone(),
        stop.clone(),
    )));
    let label = format!("run {i}/{}", ctx.total);
    let show = |phase: &str| {
        let (ok, failed, unknown) = counts(&ops);
        ctx.progress.set_message(format!(
            "{label} {}: {phase} · ok {ok} failed {failed} unknown {unknown}",
            scenario
        ));
    };

    // 2. Warm up; nothing is injected unless the app takes writes.
    show("warming up");
    warm_up(ctx, &ops, &stop, &mut writer_task).await?;

    // 3. Inject, then wait for recovery. The guard undoes the fault on every path.
    let env = CmdEnv {
        region: target.clone(),
        scenario,
        run: i,
        controller: String::new(),
    };
    // The journal window starts here: its steps are those of this fault.
    let cursor = match journal_cursor(ctx.controller).await {
        Ok(c) => c,
        Err(e) => {
            stop.cancel();
            if let Some(t) = writer_task.take() {
                let _ = t.await;
            }
            return Err(e.context("nothing was injected"));
        }
    };
    let fault_at_ms = ctx.clock.now_ms();
    show(&format!("injecting {} into {target}", scenario));
    let (mut guard, injected) = Injected::inject(&injection, env).await;
    let fault_effective_ms = ctx.clock.now_ms();
    let waited: anyhow::Result<Waited> = async {
        injected.with_context(|| format!("injecting {} into {target}", scenario))?;
        let deadline = tokio::time::Instant::now() + ctx.dc.recovery_timeout;
        let mut active = Some(target.clone());
        // When the controller was first seen to name another region: recovery is a write
        // started after that which succeeded (a write the dying region squeezed in just
        // after the injection is not a recovery).
        let mut moved_at_ms: Option<u64> = None;
        loop {
            if let Ok(s) = ctx.controller.leader_status().await {
                active = s.active;
            }
            let moved = active.as_ref().is_some_and(|a| *a != target);
            if moved && moved_at_ms.is_none() {
                moved_at_ms = Some(ctx.clock.now_ms());
            }
            let ok_after = moved_at_ms.is_some_and(|m| {
                ops.lock().is_ok_and(|v| {
                    v.iter()
                        .any(|o| o.outcome == Outcome::Ok && o.start_ms >= m)
                })
            });
            show(&format!(
                "fault in {target} for {:.1}s · active {}",
                ctx.clock.now_ms().saturating_sub(fault_at_ms) as f64 / 1000.0,
                active.as_ref().map_or("-".into(), |a| a.to_string())
            ));
            if moved && ok_after {
                show("recovered; cooling down");
                pause(ctx.cancel, ctx.dc.cooldown)
                    .await
                    .map_err(|()| anyhow!("cancelled"))?;
                return Ok(Waited::Recovered(active));
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(Waited::TimedOut(active));
            }
            pause(ctx.cancel, POLL)
                .await
                .map_err(|()| anyhow!("cancelled"))?;
        }
    }
    .await;

    // 4. Stop writing, undo the fault, read back.
    stop.cancel();
    if let Some(t) = writer_task.take() {
        let _ = t.await;
    }
    show("restoring the fault");
    let restored = guard.restore().await;
    let restored_at_ms = ctx.clock.now_ms();
    let mut notes = Vec::new();
    let restore_text = match &restored {
        Ok(()) => "the injected fault was undone".to_owned(),
        Err(e) => format!("undoing the fault FAILED: {e:#}"),
    };
    if ctx.cancel.is_cancelled() {
        return Err(DrillError::Cancelled {
            restore: restore_text,
        }
        .into());
    }
    let waited = waited.with_context(|| restore_text.clone())?;
    if let Err(e) = restored {
        notes.push(format!("{e:#}"));
    }
    let (recovered, new_active) = match waited {
        Waited::Recovered(a) => (true, a),
        Waited::TimedOut(a) => {
            notes.push(format!(
                "not recovered within {:?}",
                ctx.dc.recovery_timeout
            ));
            (false, a)
        }
    };
    let mut ops: Vec<Op> = ops.lock().map(|v| v.clone()).unwrap_or_default();
    ops.sort_by_key(|o| o.start_ms);
    show("reading back");
    let present = read_back(ctx, &ops, new_active.as_ref(), &mut notes).await?;
    let journal = journal_since(ctx.controller, cursor).await?;
    Ok(RunRecord {
        run: i,
        run_id,
        target,
        started_ms,
        fault_at_ms,
        fault_effective_ms,
        restored_at_ms: Some(restored_at_ms),
        recovered,
        new_active,
        ops,
        journal,
        present,
        region_addrs: ctx.region_addrs.clone(),
        notes,
        scenario,
        samples: ctx.sampler.window(fault_at_ms, restored_at_ms),
        timed: None,
    })
}

/// One timed fault: warm up, inject, hold for `length`, heal, wait until converged,
/// cool down, read back. A fault whose deployment does not converge is recorded as
/// such (`converged: false`), not an error: the report is what the drill is for.
async fn run_timed(
    ctx: &RunCtx<'_>,
    i: u32,
    scenario: Scenario,
    length: Duration,
) -> anyhow::Result<RunRecord> {
    let before =
        ctx.controller
            .leader_status()
            .await
            .map_err(|e| DrillError::ControllerUnreachable {
                url: ctx.controller.base().to_owned(),
                reason: e.to_string(),
            })?;
    let target = before
        .active
        .clone()
        .context("the controller reports no active region")?;
    let injection = fault::plan(ctx.cfg, scenario, &target)?;
    // With several controllers a controller fault hits the one that leads now (a
    // follower's death changes nothing worth drilling); its name goes to the commands.
    let leader = before
        .leadership
        .as_ref()
        .and_then(|l| l.leader.clone())
        .unwrap_or_default();
    let fault_target = match (scenario.hits_controller(), leader.is_empty()) {
        (false, _) => target.to_string(),
        (true, true) => "controller".to_owned(),
        (true, false) => format!("controller {leader} (leader)"),
    };
    let started_ms = ctx.clock.now_ms();
    let run_id = format!("drill{started_ms:x}r{i}");
    let ops = Arc::new(Mutex::new(Vec::new()));
    let stop = CancellationToken::new();
    let mut writer_task = Some(tokio::spawn(writer(
        ctx.app.clone(),
        run_id.clone(),
        ctx.dc.rate,
        ops.clone(),
        stop.clone(),
    )));
    let label = format!("run {i}/{}", ctx.total);
    let show = |phase: &str| {
        let (ok, failed, unknown) = counts(&ops);
        ctx.progress.set_message(format!(
            "{label} {scenario} of {fault_target}: {phase} · ok {ok} failed {failed} unknown {unknown}"
        ));
    };
    show("warming up");
    warm_up(ctx, &ops, &stop, &mut writer_task).await?;
    let stop_writer = async |task: &mut Option<tokio::task::JoinHandle<()>>| {
        stop.cancel();
        if let Some(t) = task.take() {
            let _ = t.await;
        }
    };
    let cursor = match journal_cursor(ctx.controller).await {
        Ok(c) => c,
        Err(e) => {
            stop_writer(&mut writer_task).await;
            return Err(e.context("nothing was injected"));
        }
    };
    let env = CmdEnv {
        region: target.clone(),
        scenario,
        run: i,
        controller: leader,
    };
    let fault_at_ms = ctx.clock.now_ms();
    show(&format!("injecting for {:.1}s", length.as_secs_f64()));
    let (mut guard, injected) = Injected::inject(&injection, env).await;
    let fault_effective_ms = ctx.clock.now_ms();
    let held: anyhow::Result<()> = async {
        injected.with_context(|| format!("injecting {scenario} into {fault_target}"))?;
        let until = fault_effective_ms + length.as_millis() as u64;
        loop {
            let now = ctx.clock.now_ms();
            if now >= until {
                return Ok(());
            }
            show(&format!(
                "fault for {:.1}s of {:.1}s",
                now.saturating_sub(fault_at_ms) as f64 / 1000.0,
                length.as_secs_f64()
            ));
            pause(ctx.cancel, POLL.min(Duration::from_millis(until - now)))
                .await
                .map_err(|()| anyhow!("cancelled"))?;
        }
    }
    .await;
    show("healing");
    let restored = guard.restore().await;
    let healed_at_ms = ctx.clock.now_ms();
    let restore_text = match &restored {
        Ok(()) => "the injected fault was undone".to_owned(),
        Err(e) => format!("undoing the fault FAILED: {e:#}"),
    };
    if ctx.cancel.is_cancelled() {
        stop_writer(&mut writer_task).await;
        return Err(DrillError::Cancelled {
            restore: restore_text,
        }
        .into());
    }
    if let Err(e) = held {
        stop_writer(&mut writer_task).await;
        return Err(e.context(restore_text));
    }
    let mut notes = Vec::new();
    if let Err(e) = restored {
        notes.push(format!("{e:#}"));
    }
    show("healed; waiting for the deployment to converge");
    let converged = wait_converged(ctx, &show).await;
    let (converged_at_ms, after) = match converged {
        Ok((at, st)) => (Some(at), Some(st)),
        Err(why) => {
            notes.push(format!(
                "not converged within {:?} of the heal: {why}",
                ctx.dc.steady_timeout
            ));
            (None, ctx.controller.leader_status().await.ok())
        }
    };
    if converged_at_ms.is_some() {
        show("converged; cooling down");
        if pause(ctx.cancel, ctx.dc.cooldown).await.is_err() {
            stop_writer(&mut writer_task).await;
            return Err(DrillError::Cancelled {
                restore: restore_text,
            }
            .into());
        }
    }
    stop_writer(&mut writer_task).await;
    let end_ms = ctx.clock.now_ms();
    let mut ops: Vec<Op> = ops.lock().map(|v| v.clone()).unwrap_or_default();
    ops.sort_by_key(|o| o.start_ms);
    let new_active = after.as_ref().and_then(|s| s.active.clone());
    show("reading back");
    let present = match read_back(ctx, &ops, new_active.as_ref(), &mut notes).await {
        Ok(p) => p,
        Err(e) if is_cancel(&e) => return Err(e),
        // Nothing to read from (the deployment did not come back): the run is kept,
        // for its samples and its unavailability, and says its losses are unjudged.
        Err(e) => {
            notes.push(format!(
                "{e:#}: lost writes NOT judged for this fault (see the final read)"
            ));
            ops.iter()
                .filter(|o| o.outcome == Outcome::Ok)
                .map(|o| o.id.clone())
                .collect()
        }
    };
    let journal = match journal_since(ctx.controller, cursor).await {
        Ok(j) => j,
        Err(e) => {
            notes.push(format!("{e:#}: the journal's steps are missing"));
            Vec::new()
        }
    };
    Ok(RunRecord {
        run: i,
        run_id,
        target,
        started_ms,
        fault_at_ms,
        fault_effective_ms,
        restored_at_ms: Some(healed_at_ms),
        recovered: converged_at_ms.is_some(),
        new_active,
        ops,
        journal,
        present,
        region_addrs: ctx.region_addrs.clone(),
        notes,
        scenario,
        samples: ctx.sampler.window(fault_at_ms, end_ms),
        timed: Some(TimedRecord {
            fault_target,
            length_ms: length.as_millis() as u64,
            healed_at_ms,
            converged_at_ms,
            epoch_before: before.epoch.0,
            epoch_after: after.map(|s| s.epoch.0),
            active_before: before.active,
        }),
    })
}

/// Wait (at most `steady_timeout`) until the deployment has converged and stayed so
/// for a lease's ttl plus its margin — a region whose agent came back may still lose
/// its lease, and a controller back from a pause may still act on what it missed: an
/// instant's agreement is not convergence. Returns when the stretch began (and the
/// status at its end), or why it has not converged.
async fn wait_converged(
    ctx: &RunCtx<'_>,
    show: &(dyn Fn(&str) + Sync),
) -> Result<(u64, ControllerStatus), String> {
    let deadline = tokio::time::Instant::now() + ctx.dc.steady_timeout;
    let fresh_ms = ctx.cfg.failover.report_ttl.as_millis() as u64;
    let settle_ms = (ctx.cfg.failover.lease_ttl + ctx.cfg.failover.lease_margin).as_millis() as u64;
    let sampled = !ctx.sampler.regions().is_empty();
    // (when the conditions first held in the current stretch, the active region then)
    let mut stretch: Option<(u64, Option<RegionId>)> = None;
    let mut why;
    loop {
        let asked_ms = ctx.clock.now_ms();
        why = match ctx.controller.leader_status().await {
            Ok(s) => {
                // The databases must agree, in a round started after this status.
                let sample = if sampled {
                    wait_sample_after(ctx, asked_ms).await
                } else {
                    None
                };
                match convergence(&s, fresh_ms, sample.as_ref(), sampled) {
                    Ok(()) => {
                        let (since, active) = match &stretch {
                            // A move in the middle starts the stretch again.
                            Some((t, a)) if *a == s.active => (*t, a.clone()),
                            _ => (asked_ms, s.active.clone()),
                        };
                        stretch = Some((since, active));
                        if ctx.clock.now_ms().saturating_sub(since) >= settle_ms {
                            return Ok((since, s));
                        }
                        format!("converged; holding for {settle_ms} ms")
                    }
                    Err(w) => {
                        stretch = None;
                        w
                    }
                }
            }
            Err(e) => {
                stretch = None;
                format!("the controller does not answer: {e}")
            }
        };
        show(&format!("waiting to converge: {why}"));
        if tokio::time::Instant::now() >= deadline {
            return Err(why);
        }
        if pause(ctx.cancel, POLL).await.is_err() {
            return Err("cancelled".into());
        }
    }
}

/// The first sampler round started at or after `after_ms` (waiting up to a second).
async fn wait_sample_after(ctx: &RunCtx<'_>, after_ms: u64) -> Option<sampler::Sample> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    loop {
        if let Some(s) = ctx.sampler.latest()
            && s.at_ms >= after_ms
        {
            return Some(s);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Converged: phase steady; one active region, healthy and not fenced, whose agent
/// alone reports active; every agent reporting within `fresh_ms` at the controller's
/// epoch; every standby's roles following (ready to be promoted); and, when the
/// databases are sampled, exactly the active region's database taking writes. Pure.
pub fn convergence(
    s: &ControllerStatus,
    fresh_ms: u64,
    sample: Option<&sampler::Sample>,
    sampled: bool,
) -> Result<(), String> {
    if s.phase != "steady" {
        return Err(format!("phase {}", s.phase));
    }
    let Some(active) = &s.active else {
        return Err("no active region".into());
    };
    for r in &s.regions {
        let is_active = &r.name == active;
        if r.last_report_ms.is_none_or(|ms| ms > fresh_ms) {
            return Err(format!(
                "region {}'s agent last reported {}",
                r.name,
                r.last_report_ms
                    .map_or("never".into(), |m| format!("{m} ms ago"))
            ));
        }
        if r.agent_epoch != Some(s.epoch) {
            return Err(format!(
                "region {}'s agent is at epoch {} (controller {})",
                r.name,
                r.agent_epoch.map_or("-".into(), |e| e.to_string()),
                s.epoch
            ));
        }
        if r.agent_active != is_active {
            return Err(format!(
                "region {}'s agent reports {} while {active} is the active region",
                r.name,
                if r.agent_active {
                    "active"
                } else {
                    "not active"
                }
            ));
        }
        if is_active && (r.health != HealthStatus::Healthy || r.fenced) {
            return Err(format!(
                "active region {} is {:?}{}",
                r.name,
                r.health,
                if r.fenced { ", fenced" } else { "" }
            ));
        }
        if !is_active && let Some(role) = r.roles.iter().find(|x| !x.ready_to_promote) {
            return Err(format!(
                "standby {}'s {} is not following yet ({})",
                r.name, role.name, role.detail
            ));
        }
    }
    if sampled {
        let Some(sample) = sample else {
            return Err("no database sample since the status".into());
        };
        let w = sample.writable();
        if w.len() != 1 || &w[0] != active {
            return Err(format!(
                "databases taking writes: [{}] (want only {active})",
                w.iter().map(|x| x.as_str()).collect::<Vec<_>>().join(", ")
            ));
        }
    }
    Ok(())
}

/// Read every acknowledged write of every run once more, from the region active now.
async fn final_read(ctx: &RunCtx<'_>, runs: &[report::RunReport]) -> report::FinalRead {
    let acked: Vec<Op> = runs
        .iter()
        .flat_map(|r| r.ops.iter())
        .filter(|o| o.outcome == Outcome::Ok)
        .cloned()
        .collect();
    let mut notes = Vec::new();
    match read_back(ctx, &acked, None, &mut notes).await {
        Ok(present) => {
            let lost_ids: Vec<String> = acked
                .iter()
                .filter(|o| !present.contains(&o.id))
                .map(|o| o.id.clone())
                .collect();
            report::FinalRead {
                acknowledged: acked.len(),
                lost: lost_ids.len(),
                lost_ids,
                error: None,
            }
        }
        Err(e) => report::FinalRead {
            acknowledged: acked.len(),
            lost: 0,
            lost_ids: Vec::new(),
            error: Some(format!("{e:#}")),
        },
    }
}

/// Read every id back from the region that is active now (the deployment may have
/// moved again since the recovery), through DNS: waiting until the (TTL-cached) answer
/// is that region's address.
async fn read_back(
    ctx: &RunCtx<'_>,
    ops: &[Op],
    new_active: Option<&RegionId>,
    notes: &mut Vec<String>,
) -> anyhow::Result<HashSet<String>> {
    let ids: Vec<String> = ops.iter().map(|o| o.id.clone()).collect();
    let deadline = tokio::time::Instant::now() + ctx.dc.steady_timeout;
    let mut read_error = String::new();
    let mut dns_error = String::new();
    let mut moved_noted = false;
    loop {
        let active = match ctx.controller.leader_status().await {
            Ok(s) => s.active,
            Err(_) => new_active.cloned(),
        };
        if !moved_noted
            && let (Some(now), Some(then)) = (&active, new_active)
            && now != then
        {
            moved_noted = true;
            notes.push(format!(
                "the active region moved again after the recovery: {then} -> {now}; read back from {now}"
            ));
        }
        match ctx.app.resolve().await {
            Ok(addr) => {
                let region = ctx.app.region_of(addr);
                let wanted = match (&active, &region) {
                    (Some(want), Some(got)) => want == got,
                    _ => true,
                };
                if wanted {
                    match ctx.app.read_present(addr, &ids).await {
                        Ok(p) => {
                            if !read_error.is_empty() {
                                notes.push(format!("read-back retried after: {read_error}"));
                            }
                            return Ok(p);
                        }
                        Err(e) => read_error = format!("{e:#}"),
                    }
                } else {
                    dns_error = format!(
                        "DNS answers {addr} ({}) while the controller reports {} active",
                        region.map_or("?".into(), |r| r.to_string()),
                        active.as_ref().map_or("-".into(), |a| a.to_string())
                    );
                }
            }
            Err(e) => dns_error = format!("{e:#}"),
        }
        if tokio::time::Instant::now() >= deadline {
            let mut why = Vec::new();
            if !read_error.is_empty() {
                why.push(format!("last read error: {read_error}"));
            }
            if !dns_error.is_empty() {
                why.push(format!("last DNS problem: {dns_error}"));
            }
            anyhow::bail!(
                "reading the entries back failed within {:?} ({})",
                ctx.dc.steady_timeout,
                why.join("; ")
            );
        }
        if pause(ctx.cancel, POLL).await.is_err() {
            return Err(DrillError::Cancelled {
                restore: "the injected fault was undone (cancelled while reading back)".into(),
            }
            .into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenarios_parse_and_print_the_same() {
        for s in Scenario::ALL {
            assert_eq!(s.as_str().parse::<Scenario>(), Ok(s));
            assert_eq!(
                serde_json::to_value(s).expect("json"),
                serde_json::Value::String(s.to_string())
            );
        }
        let e = "outage".parse::<Scenario>().expect_err("unknown");
        assert!(e.contains("region-outage"), "{e}");
    }

    /// A two-region status as the controller serves it (from JSON, so fields the API
    /// adds later do not break the test).
    fn status(
        phase: &str,
        active: &str,
        tweak: impl Fn(&mut serde_json::Value),
    ) -> ControllerStatus {
        let region = |name: &str| {
            serde_json::json!({
                "name": name, "active": name == active, "health": "healthy",
                "agent_addr": "127.0.0.1:1", "last_report_ms": 300, "agent_epoch": 3,
                "agent_active": name == active, "fenced": false,
                "roles": [{"name": "postgres", "role": if name == active { "primary" } else { "standby" },
                           "health": "healthy", "lag_bytes": null, "lag_seconds": null,
                           "ready_to_promote": name != active, "caught_up": true, "detail": ""}]
            })
        };
        let mut v = serde_json::json!({
            "deployment": "demo", "epoch": 3, "active": active, "phase": phase,
            "mode": "automatic", "lease": null, "regions": [region("a"), region("b")],
            "failovers": 0
        });
        tweak(&mut v);
        serde_json::from_value(v).expect("a status")
    }

    #[test]
    fn convergence_needs_one_active_region_everyone_reporting_and_one_writable_database() {
        use sampler::{Sample, Writable};
        let sample = |a, b| Sample {
            at_ms: 0,
            regions: [(RegionId::new("a"), a), (RegionId::new("b"), b)].into(),
        };
        let good = sample(Writable::Yes, Writable::No);
        let st = status("steady", "a", |_| {});
        assert_eq!(convergence(&st, 2000, Some(&good), true), Ok(()));
        assert_eq!(convergence(&st, 2000, None, false), Ok(()));
        let why = |st: &ControllerStatus, s: Option<&Sample>| {
            convergence(st, 2000, s, true).expect_err("not converged")
        };
        assert!(why(&status("promoting b", "a", |_| {}), Some(&good)).contains("phase"));
        let silent = status("steady", "a", |v| {
            v["regions"][1]["last_report_ms"] = 9000.into()
        });
        assert!(why(&silent, Some(&good)).contains("last reported 9000 ms ago"));
        let old_epoch = status("steady", "a", |v| v["regions"][1]["agent_epoch"] = 2.into());
        assert!(why(&old_epoch, Some(&good)).contains("epoch 2"));
        let two = status("steady", "a", |v| {
            v["regions"][1]["agent_active"] = true.into()
        });
        assert!(why(&two, Some(&good)).contains("reports active"));
        let lagging = status("steady", "a", |v| {
            v["regions"][1]["roles"][0]["ready_to_promote"] = false.into();
            v["regions"][1]["roles"][0]["detail"] = "lag 9 MB".into();
        });
        assert!(why(&lagging, Some(&good)).contains("not following"));
        // The databases disagree with the controller: not converged either way.
        let both = sample(Writable::Yes, Writable::Yes);
        assert!(why(&st, Some(&both)).contains("[a, b]"));
        let none = sample(Writable::Unreachable, Writable::No);
        assert!(why(&st, Some(&none)).contains("[]"));
        assert!(why(&st, None).contains("no database sample"));
    }
}

#[cfg(test)]
mod journal_patience_tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A controller that answers its first journal requests 503 (restarting) and then
    /// the journal: the drill's cursor waits for it instead of stopping the drill.
    #[tokio::test]
    async fn a_controller_that_answers_late_does_not_stop_the_drill() {
        let calls = Arc::new(AtomicU32::new(0));
        let c2 = calls.clone();
        let app = axum::Router::new().route(
            "/v1/journal",
            axum::routing::get(move || {
                let calls = c2.clone();
                async move {
                    if calls.fetch_add(1, Ordering::SeqCst) < 3 {
                        return (axum::http::StatusCode::SERVICE_UNAVAILABLE, "recovering".to_owned());
                    }
                    (
                        axum::http::StatusCode::OK,
                        r#"[{"seq": 7, "at_unix_ms": 1, "mono_ms": 1, "epoch": 1, "kind": "info", "region": null, "detail": "x"}]"#
                            .to_owned(),
                    )
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let c = ApiClient::new(format!("http://{addr}"), None, Duration::from_secs(2));
        // The page with seq 7 is returned for every `since` (a fake): the cursor stops
        // once a page brings nothing newer.
        let cursor = journal_cursor(&c).await.unwrap();
        assert_eq!(cursor, 7);
        assert!(
            calls.load(Ordering::SeqCst) >= 4,
            "asked again after the 503s"
        );
        server.abort();
    }
}
