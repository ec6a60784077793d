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
//! Entry point: [`run`]; render with [`render_summary`] and [`render_html`].

pub mod client;
pub mod fault;
pub mod history;
pub mod html;
pub mod report;

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
use report::RunRecord;
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
}

impl Scenario {
    pub const ALL: [Scenario; 4] = [
        Scenario::RegionOutage,
        Scenario::Partition,
        Scenario::DbCrash,
        Scenario::AppCrash,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scenario::RegionOutage => "region-outage",
            Scenario::Partition => "partition",
            Scenario::DbCrash => "db-crash",
            Scenario::AppCrash => "app-crash",
        }
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
    let controller = ApiClient::new(
        format!("http://{}", cfg.controller.api_addr),
        cfg.auth.secret().load().ok(),
        Duration::from_secs(3),
    );
    // 1. Reachability and configuration, before anything else happens.
    let status = controller
        .status()
        .await
        .map_err(|e| DrillError::ControllerUnreachable {
            url: controller.base().to_owned(),
            reason: e.to_string(),
        })?;
    let active = status
        .active
        .clone()
        .context("the controller reports no active region: nothing to drill against")?;
    fault::plan(cfg, opts.scenario, &active)?;
    if opts.runs > 1 {
        // Later runs target whichever region is active then: check them all now.
        for r in cfg.region_ids() {
            fault::plan(cfg, opts.scenario, &r)?;
        }
    }
    let dns = dc
        .dns_server(cfg)
        .context("no DNS server: set drill.dns_server or controller.dns_addr")?;
    let regions: BTreeMap<_, _> = cfg
        .regions
        .iter()
        .filter_map(|(n, r)| r.address.map(|a| (a, RegionId::new(n))))
        .collect();
    let app = Arc::new(AppClient::new(
        dns,
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
    let ctx = RunCtx {
        cfg,
        dc,
        scenario: opts.scenario,
        controller: &controller,
        app,
        clock,
        progress: &progress,
        cancel: &cancel,
        region_addrs: regions.into_iter().map(|(a, r)| (r, a)).collect(),
        total: opts.runs,
    };
    let mut runs = Vec::new();
    let mut stopped: Option<String> = None;
    for i in 1..=opts.runs {
        progress.set_message(format!(
            "run {i}/{}: waiting for a steady deployment",
            opts.runs
        ));
        let rec = match wait_steady(&ctx).await {
            Ok(_) => run_once(&ctx, i).await,
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
        progress.println(format!(
            "run {i}/{}: fault in {} -> {}; RTO {}; ok {} failed {} unknown {}; lost {}; dual primary {}",
            opts.runs,
            r.target,
            r.new_active.as_ref().map_or("-".into(), |a| a.to_string()),
            r.rto_ms.map_or("-".into(), |v| format!("{v} ms")),
            r.writes.ok,
            r.writes.failed,
            r.writes.unknown,
            r.lost_acknowledged_writes,
            if r.dual_primary { "YES" } else { "no" }
        ));
        runs.push(r);
    }
    progress.finish_and_clear();
    let report = DrillReport {
        scenario: opts.scenario,
        deployment: cfg.deployment.name.clone(),
        app_name: dc.app_name.clone(),
        started_at_unix_ms: started,
        finished_at_unix_ms: clock.now_ms(),
        summary: report::summarize(&runs),
        runs,
        error: stopped,
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
    scenario: Scenario,
    controller: &'a ApiClient,
    app: Arc<AppClient>,
    clock: Clock,
    progress: &'a indicatif::ProgressBar,
    cancel: &'a CancellationToken,
    region_addrs: BTreeMap<RegionId, std::net::IpAddr>,
    total: u32,
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
        match ctx.controller.status().await {
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

/// The highest journal sequence number now.
async fn journal_cursor(c: &ApiClient) -> anyhow::Result<u64> {
    let mut since = 0;
    loop {
        let page = c
            .journal(since)
            .await
            .context("reading the controller's journal")?;
        match page.last() {
            Some(e) if e.seq > since => since = e.seq,
            _ => return Ok(since),
        }
    }
}

async fn journal_since(c: &ApiClient, mut since: u64) -> anyhow::Result<Vec<JournalEntry>> {
    let mut out = Vec::new();
    loop {
        let page = c
            .journal(since)
            .await
            .context("reading the controller's journal")?;
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

async fn run_once(ctx: &RunCtx<'_>, i: u32) -> anyhow::Result<RunRecord> {
    let status = ctx
        .controller
        .status()
        .await
        .map_err(|e| DrillError::ControllerUnreachable {
            url: ctx.controller.base().to_owned(),
            reason: e.to_string(),
        })?;
    let target = status
        .active
        .clone()
        .context("the controller reports no active region")?;
    let injection = fault::plan(ctx.cfg, ctx.scenario, &target)?;
    let started_ms = ctx.clock.now_ms();
    let run_id = format!("drill{started_ms:x}r{i}");
    let ops = Arc::new(Mutex::new(Vec::new()));
    let stop = CancellationToken::new();
    let writer_task = tokio::spawn(writer(
        ctx.app.clone(),
        run_id.clone(),
        ctx.dc.rate,
        ops.clone(),
        stop.clone(),
    ));
    let label = format!("run {i}/{}", ctx.total);
    let show = |phase: &str| {
        let (ok, failed, unknown) = counts(&ops);
        ctx.progress.set_message(format!(
            "{label} {}: {phase} · ok {ok} failed {failed} unknown {unknown}",
            ctx.scenario
        ));
    };

    // 2. Warm up; nothing is injected unless the app takes writes.
    show("warming up");
    let warm = pause(ctx.cancel, ctx.dc.warmup).await;
    if warm.is_err() || counts(&ops).0 == 0 {
        stop.cancel();
        let _ = writer_task.await;
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
        );
    }

    // 3. Inject, then wait for recovery. The guard undoes the fault on every path.
    let env = CmdEnv {
        region: target.clone(),
        scenario: ctx.scenario,
        run: i,
    };
    // The journal window starts here: its steps are those of this fault.
    let cursor = match journal_cursor(ctx.controller).await {
        Ok(c) => c,
        Err(e) => {
            stop.cancel();
            let _ = writer_task.await;
            return Err(e.context("nothing was injected"));
        }
    };
    let fault_at_ms = ctx.clock.now_ms();
    show(&format!("injecting {} into {target}", ctx.scenario));
    let (mut guard, injected) = Injected::inject(&injection, env).await;
    let fault_effective_ms = ctx.clock.now_ms();
    let waited: anyhow::Result<Waited> = async {
        injected.with_context(|| format!("injecting {} into {target}", ctx.scenario))?;
        let deadline = tokio::time::Instant::now() + ctx.dc.recovery_timeout;
        let mut active = Some(target.clone());
        // When the controller was first seen to name another region: recovery is a write
        // started after that which succeeded (a write the dying region squeezed in just
        // after the injection is not a recovery).
        let mut moved_at_ms: Option<u64> = None;
        loop {
            if let Ok(s) = ctx.controller.status().await {
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
    let _ = writer_task.await;
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
    })
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
        let active = match ctx.controller.status().await {
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
}
