//! The region's application services, supervised as a data role.
//!
//! Pilot-light services run only while the region is active: `activate` starts them
//! and `fence` stops them (the standby's compute sleeps until promotion). Warm-standby
//! services run in every region all the time; they are told their role through the
//! `LIFEBOAT_ROLE` environment variable at start.
//!
//! A managed process (`command`) runs in its own process group, is restarted with
//! backoff if it exits while it should run, and is stopped with SIGTERM, then SIGKILL
//! after `stop_timeout`. A shell-command service (`start` / `stop`) is started and
//! stopped by running those commands.
//!
//! While a pilot-light process runs, its process group is recorded in
//! `<agent state dir>/services/<name>.pgid` ("PGID STARTTIME"), removed once it has
//! stopped: the region guard (`guard.rs`) kills that group if the agent dies or freezes
//! with its lease outstanding, since a service must not outlive its agent's lease.

use async_trait::async_trait;
use lifeboat_config::{ServiceConfig, ServiceMode};
use lifeboat_core::{
    Activation, DataRole, Epoch, FollowTarget, GuardTarget, HealthStatus, RoleError, RoleHealth,
    RoleStatus,
};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// One service's supervisor state.
struct Supervised {
    cfg: ServiceConfig,
    /// Whether it should be running now (the supervisor converges to this).
    want: watch::Sender<bool>,
    running: Arc<Mutex<Option<u32>>>,
    restarts: Arc<Mutex<u64>>,
    last_error: Arc<Mutex<String>>,
}

pub struct Services {
    region: String,
    /// Where pilot-light services' process groups are recorded for the guard.
    pgid_dir: PathBuf,
    services: Vec<Supervised>,
    cancel: CancellationToken,
    tasks: tokio_util::task::TaskTracker,
    /// The epoch rule (lifeboat_core::role), as for every role.
    seen: lifeboat_core::EpochRatchet,
}

impl Services {
    /// Start supervising the region's services. Warm-standby services start now;
    /// pilot-light ones wait for `activate`. `state_dir` is the agent's state directory
    /// (`Config::agent_state_dir`): the region guard reads the process groups there.
    pub fn new(
        region: &str,
        cfgs: &[ServiceConfig],
        state_dir: &Path,
        cancel: CancellationToken,
    ) -> Arc<Self> {
        let pgid_dir = state_dir.join("services");
        let tasks = tokio_util::task::TaskTracker::new();
        let mut services = Vec::new();
        for cfg in cfgs {
            let (want, want_rx) = watch::channel(cfg.mode == ServiceMode::WarmStandby);
            let s = Supervised {
                cfg: cfg.clone(),
                want,
                running: Arc::new(Mutex::new(None)),
                restarts: Arc::new(Mutex::new(0)),
                last_error: Arc::new(Mutex::new(String::new())),
            };
            let pgid_file = (cfg.mode == ServiceMode::PilotLight && cfg.command.is_some())
                .then(|| pgid_dir.join(format!("{}.pgid", cfg.name)));
            tasks.spawn(supervise(
                region.to_owned(),
                cfg.clone(),
                pgid_file,
                want_rx,
                s.running.clone(),
                s.restarts.clone(),
                s.last_error.clone(),
                cancel.clone(),
            ));
            services.push(s);
        }
        tasks.close();
        Arc::new(Self {
            region: region.to_owned(),
            pgid_dir,
            services,
            cancel,
            tasks,
            seen: lifeboat_core::EpochRatchet::new(),
        })
    }

    fn set_pilot_light(&self, run: bool) {
        for s in &self.services {
            if s.cfg.mode == ServiceMode::PilotLight {
                s.want.send_replace(run);
            }
        }
    }

    /// Wait until every service is in the wanted state (or `timeout`).
    async fn settle(&self, timeout: Duration) -> Result<(), RoleError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let pending: Vec<_> = self
                .services
                .iter()
                .filter(|s| {
                    let want = *s.want.borrow();
                    let running = lock(&s.running).is_some();
                    want != running
                })
                .map(|s| s.cfg.name.clone())
                .collect();
            if pending.is_empty() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(RoleError::Failed {
                    role: "services".into(),
                    message: format!(
                        "services did not settle in {timeout:?}: {}",
                        pending.join(", ")
                    ),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stop everything (agent shutdown) and wait for the supervisors.
    pub async fn shutdown(&self) {
        for s in &self.services {
            s.want.send_replace(false);
        }
        self.cancel.cancel();
        self.tasks.wait().await;
    }

    /// Pid of a running service (for tests and status).
    pub fn pid(&self, name: &str) -> Option<u32> {
        self.services
            .iter()
            .find(|s| s.cfg.name == name)
            .and_then(|s| *lock(&s.running))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[async_trait]
impl DataRole for Services {
    fn name(&self) -> &str {
        "services"
    }

    async fn status(&self) -> RoleStatus {
        let mut st = RoleStatus::new("services", RoleHealth::Unknown);
        let mut details = Vec::new();
        let mut all_ok = true;
        let mut any_pilot_running = false;
        for s in &self.services {
            let want = *s.want.borrow();
            let pid = *lock(&s.running);
            if s.cfg.mode == ServiceMode::PilotLight && pid.is_some() {
                any_pilot_running = true;
            }
            if want && pid.is_none() {
                all_ok = false;
            }
            let err = lock(&s.last_error).clone();
            details.push(format!(
                "{}={}{}",
                s.cfg.name,
                match pid {
                    Some(p) => format!("running(pid {p})"),
                    None => "stopped".into(),
                },
                if err.is_empty() {
                    String::new()
                } else {
                    format!(" [{err}]")
                }
            ));
            st.metrics.insert(
                format!("{}_restarts", s.cfg.name),
                *lock(&s.restarts) as f64,
            );
        }
        st.role = if any_pilot_running {
            RoleHealth::Primary
        } else {
            RoleHealth::Standby
        };
        st.health = if all_ok {
            HealthStatus::Healthy
        } else {
            HealthStatus::Unhealthy
        };
        // Services carry no data: a standby's services are always ready and caught up.
        st.ready_to_promote = true;
        st.caught_up = true;
        st.detail = format!("{}: {}", self.region, details.join(", "));
        st
    }

    async fn fence(&self, epoch: Epoch) -> Result<(), RoleError> {
        self.seen.fence(epoch);
        self.set_pilot_light(false);
        let max_stop = self
            .services
            .iter()
            .map(|s| s.cfg.stop_timeout)
            .max()
            .unwrap_or_default();
        self.settle(max_stop + Duration::from_secs(2)).await
    }

    async fn activate(&self, a: &Activation) -> Result<(), RoleError> {
        self.seen.admit(a.epoch)?;
        self.set_pilot_light(true);
        self.settle(Duration::from_secs(10)).await
    }

    async fn follow(&self, t: &FollowTarget) -> Result<(), RoleError> {
        self.seen.admit(t.epoch)?;
        self.set_pilot_light(false);
        Ok(())
    }

    /// The pilot-light processes (what a fence stops). Warm-standby services run in
    /// every region anyway; shell-command services have no process lifeboat owns.
    fn guard_targets(&self) -> Vec<GuardTarget> {
        self.services
            .iter()
            .filter(|s| s.cfg.mode == ServiceMode::PilotLight && s.cfg.command.is_some())
            .map(|s| GuardTarget::ProcessGroup {
                pgid_file: self.pgid_dir.join(format!("{}.pgid", s.cfg.name)),
            })
            .collect()
    }
}

/// Record a running service's process group for the guard (its leader is `pid`).
fn record_pgid(file: Option<&Path>, pid: Option<u32>) {
    let (Some(file), Some(pid)) = (file, pid.and_then(|p| i32::try_from(p).ok())) else {
        return;
    };
    let Some(start) = crate::guard::proc_start(pid) else {
        return; // already gone: nothing to record
    };
    let write = file
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| std::fs::write(file, format!("{pid} {start}\n")));
    if let Err(e) = write {
        // The service runs unguarded against a frozen agent: say so loudly.
        tracing::error!(
            "cannot record process group {pid} in {} for the region guard: {e}",
            file.display()
        );
    }
}

/// Run a small file operation on the blocking pool: under writeback pressure even a
/// tiny write can stall, and it must not stall the agent's lease renewals.
async fn off_runtime(file: Option<PathBuf>, op: impl FnOnce(Option<&Path>) + Send + 'static) {
    if file.is_none() {
        return;
    }
    let _ = tokio::task::spawn_blocking(move || op(file.as_deref())).await;
}

fn forget_pgid(file: Option<&Path>) {
    if let Some(file) = file {
        let _ = std::fs::remove_file(file);
    }
}

#[allow(clippy::too_many_arguments)]
async fn supervise(
    region: String,
    cfg: ServiceConfig,
    pgid_file: Option<PathBuf>,
    mut want: watch::Receiver<bool>,
    running: Arc<Mutex<Option<u32>>>,
    restarts: Arc<Mutex<u64>>,
    last_error: Arc<Mutex<String>>,
    cancel: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let should_run = *want.borrow_and_update() && !cancel.is_cancelled();
        if !should_run {
            if cfg.command.is_none() && lock(&running).is_some() {
                run_shell(&cfg, cfg.stop.as_deref(), &region, "standby")
                    .await
                    .ok();
            }
            *lock(&running) = None;
            tokio::select! {
                _ = cancel.cancelled() => return,
                r = want.changed() => if r.is_err() { return },
            }
            continue;
        }
        let role = if cfg.mode == ServiceMode::PilotLight {
            "active"
        } else {
            "standby"
        };
        match &cfg.command {
            Some(argv) => {
                let child = spawn(&cfg, argv, &region, role);
                let mut child = match child {
                    Ok(c) => c,
                    Err(e) => {
                        *lock(&last_error) = format!("cannot start: {e}");
                        tracing::warn!(service = %cfg.name, "cannot start: {e}");
                        if wait_or_change(&mut want, &cancel, backoff).await {
                            return;
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                        continue;
                    }
                };
                *lock(&running) = child.id();
                let child_pid = child.id();
                off_runtime(pgid_file.clone(), move |f| record_pgid(f, child_pid)).await;
                tracing::info!(service = %cfg.name, pid = ?child.id(), "started");
                let started = tokio::time::Instant::now();
                // Run until it exits or it should stop.
                let exit = loop {
                    tokio::select! {
                        status = child.wait() => break Some(status),
                        _ = cancel.cancelled() => break None,
                        r = want.changed() => {
                            if r.is_err() || !*want.borrow() { break None; }
                        }
                    }
                };
                match exit {
                    Some(status) => {
                        *lock(&running) = None;
                        // The record stays: children of the leader may live on in
                        // its group (the guard checks the leader's start time, so a
                        // reused pid is never taken for it); a restart replaces it.
                        let msg = match status {
                            Ok(s) => format!("exited: {s}"),
                            Err(e) => format!("wait failed: {e}"),
                        };
                        tracing::warn!(service = %cfg.name, "{msg}; restarting");
                        *lock(&last_error) = msg;
                        *lock(&restarts) += 1;
                        if started.elapsed() > Duration::from_secs(10) {
                            backoff = Duration::from_millis(100);
                        }
                        if wait_or_change(&mut want, &cancel, backoff).await {
                            return;
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                    None => {
                        stop_child(&mut child, cfg.stop_timeout).await;
                        off_runtime(pgid_file.clone(), forget_pgid).await;
                        *lock(&running) = None;
                        tracing::info!(service = %cfg.name, "stopped");
                    }
                }
            }
            None => {
                match run_shell(&cfg, cfg.start.as_deref(), &region, role).await {
                    Ok(()) => {
                        *lock(&running) = Some(0);
                        lock(&last_error).clear();
                    }
                    Err(e) => {
                        *lock(&last_error) = e;
                        if wait_or_change(&mut want, &cancel, backoff).await {
                            return;
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                        continue;
                    }
                }
                tokio::select! {
                    _ = cancel.cancelled() => {
                        run_shell(&cfg, cfg.stop.as_deref(), &region, "standby").await.ok();
                        *lock(&running) = None;
                        return;
                    }
                    r = want.changed() => if r.is_err() { return },
                }
            }
        }
    }
}

/// Sleep `d` unless the wanted state changes first; true when cancelled.
async fn wait_or_change(
    want: &mut watch::Receiver<bool>,
    cancel: &CancellationToken,
    d: Duration,
) -> bool {
    tokio::select! {
        _ = cancel.cancelled() => true,
        _ = tokio::time::sleep(d) => false,
        r = want.changed() => r.is_err(),
    }
}

fn spawn(cfg: &ServiceConfig, argv: &[String], region: &str, role: &str) -> std::io::Result<Child> {
    let (prog, args) = argv
        .split_first()
        .ok_or_else(|| std::io::Error::other("empty command"))?;
    let mut cmd = Command::new(prog);
    cmd.args(args)
        .envs(env(cfg, region, role))
        .process_group(0)
        .kill_on_drop(true)
        .stdin(std::process::Stdio::null());
    if let Some(dir) = &cfg.workdir {
        cmd.current_dir(dir);
    }
    cmd.spawn()
}

fn env(cfg: &ServiceConfig, region: &str, role: &str) -> BTreeMap<String, String> {
    let mut env = cfg.env.clone();
    env.insert("LIFEBOAT_REGION".into(), region.to_owned());
    env.insert("LIFEBOAT_ROLE".into(), role.to_owned());
    env
}

async fn stop_child(child: &mut Child, timeout: Duration) {
    if let Some(pid) = child.id() {
        let pgid = Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX));
        let _ = killpg(pgid, Signal::SIGTERM);
        if tokio::time::timeout(timeout, child.wait()).await.is_err() {
            let _ = killpg(pgid, Signal::SIGKILL);
            let _ = child.wait().await;
        }
        // Reap any stragglers of the group.
        let _ = killpg(pgid, Signal::SIGKILL);
    }
}

async fn run_shell(
    cfg: &ServiceConfig,
    script: Option<&str>,
    region: &str,
    role: &str,
) -> Result<(), String> {
    let Some(script) = script else { return Ok(()) };
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(script)
        .envs(env(cfg, region, role))
        .kill_on_drop(true);
    if let Some(dir) = &cfg.workdir {
        cmd.current_dir(dir);
    }
    let out = tokio::time::timeout(cfg.stop_timeout.max(Duration::from_secs(10)), cmd.output())
        .await
        .map_err(|_| format!("`{script}` timed out"))?
        .map_err(|e| format!("`{script}`: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{script}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}
