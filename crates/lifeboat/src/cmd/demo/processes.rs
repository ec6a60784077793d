//! The demo's processes: the controller(s), the agents and etcd as children of the
//! demo, supervised the way systemd would (see the module doc of [`super`]), and at
//! the end every process still running from the demo's directory.

use super::{REGIONS, controller_procs, exe};
use anyhow::{Context, Result};
use lifeboat_config::Config;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

/// How long a controller that exited stays down before the demo starts it again
/// (systemd's RestartSec): long enough not to spin on a controller that cannot start.
const CONTROLLER_RESTART_DELAY: Duration = Duration::from_secs(1);

/// The demo's child processes: the controller and one agent per region.
pub(super) struct Children {
    pub(super) layout: PathBuf,
    pub(super) config: PathBuf,
    pub(super) logs: PathBuf,
    pub(super) procs: BTreeMap<String, Child>,
}

impl Children {
    pub(super) async fn spawn(
        &mut self,
        name: &str,
        args: &[&str],
        wait_for: &str,
    ) -> Result<String> {
        // Appended to: a process started again (a restored agent, a restarted
        // controller) must not erase what its predecessor logged before it died.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.logs.join(format!("{name}.log")))?;
        let mut cmd = Command::new(exe()?);
        cmd.args(args)
            .arg("--config")
            .arg(&self.config)
            .env(
                "LIFEBOAT_LOG",
                std::env::var("LIFEBOAT_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::piped())
            .stderr(log)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let mut child = cmd.spawn().with_context(|| format!("starting {name}"))?;
        if let Some(pid) = child.id() {
            std::fs::write(
                Path::new(&self.layout)
                    .join("control")
                    .join(format!("{name}.pid")),
                pid.to_string(),
            )?;
        }
        let stdout = child.stdout.take().context("child stdout")?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let prefix = wait_for.to_owned();
        tokio::spawn(async move {
            use tokio::io::AsyncBufReadExt;
            let mut lines = tokio::io::BufReader::new(stdout).lines();
            let mut tx = Some(tx);
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(rest) = line.strip_prefix(&prefix)
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(rest.trim().to_owned());
                }
            }
        });
        let addr = tokio::time::timeout(Duration::from_secs(60), rx)
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "{name} did not start in 60 s: see {}",
                    self.logs.join(format!("{name}.log")).display()
                )
            })?
            .map_err(|_| {
                anyhow::anyhow!(
                    "{name} exited at start: see {}",
                    self.logs.join(format!("{name}.log")).display()
                )
            })?;
        self.procs.insert(name.to_owned(), child);
        Ok(addr)
    }

    /// Start etcd member `i` of `members` (client, peer ports) on 127.0.0.1, its data
    /// in the demo's directory; its log in the logs directory.
    pub(super) fn spawn_etcd(&mut self, i: usize, members: &[(u16, u16)]) -> Result<()> {
        let name = format!("e{}", i + 1);
        let (client, peer) = members[i];
        let cluster = members
            .iter()
            .enumerate()
            .map(|(k, (_, p))| format!("e{}=http://127.0.0.1:{p}", k + 1))
            .collect::<Vec<_>>()
            .join(",");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.logs.join(format!("etcd-{name}.log")))?;
        let mut cmd = Command::new(ETCD);
        cmd.args(["--name", &name])
            .arg("--data-dir")
            .arg(Path::new(&self.layout).join(format!("etcd-{name}")))
            .args([
                "--listen-client-urls",
                &format!("http://127.0.0.1:{client}"),
            ])
            .args([
                "--advertise-client-urls",
                &format!("http://127.0.0.1:{client}"),
            ])
            .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
            .args([
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{peer}"),
            ])
            .args(["--initial-cluster", &cluster])
            .args(["--initial-cluster-token", "lifeboat-demo"])
            .args(["--initial-cluster-state", "new"])
            .stdout(log.try_clone()?)
            .stderr(log)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting etcd {name}"))?;
        if let Some(pid) = child.id() {
            std::fs::write(
                Path::new(&self.layout)
                    .join("control")
                    .join(format!("etcd-{name}.pid")),
                pid.to_string(),
            )?;
        }
        self.procs.insert(format!("etcd-{name}"), child);
        Ok(())
    }

    /// The process is there and has not exited (a stopped, SIGSTOPped one counts as
    /// running). An exited one is reaped here.
    pub(super) fn running(&mut self, name: &str) -> bool {
        match self.procs.get_mut(name) {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    pub(super) async fn stop(&mut self, name: &str) {
        if let Some(mut child) = self.procs.remove(name) {
            if let Some(pid) = child.id() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
            if tokio::time::timeout(Duration::from_secs(15), child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
        }
    }
}

/// The Debian package etcd-server's binary.
pub(super) const ETCD: &str = "/usr/bin/etcd";

/// The demo's servers and lifeboat's own processes (`/proc/PID/comm`, at most 15
/// bytes), never anything else: an operator's `tail -f` of a demo log is left alone.
const DEMO_PROGRAMS: [&str; 4] = ["mariadbd", "postgres", "lifeboat", "lifeboat-sample"];

/// Processes (other than this one) of [`DEMO_PROGRAMS`] whose command line names `dir`.
fn processes_under(dir: &Path) -> Vec<i32> {
    let needle = dir.display().to_string();
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| DEMO_PROGRAMS.contains(&c.trim_end()))
        })
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                let c: Vec<u8> = c
                    .into_iter()
                    .map(|b| if b == 0 { b' ' } else { b })
                    .collect();
                String::from_utf8_lossy(&c).contains(&needle)
            })
        })
        .filter_map(|pid| i32::try_from(pid).ok())
        .collect()
}

/// SIGKILL every process running from `dir` until none is left (at most 5 s); how many.
pub(super) async fn kill_leftovers(dir: &Path) -> usize {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut killed = std::collections::BTreeSet::new();
    loop {
        let pids = processes_under(dir);
        if pids.is_empty() || tokio::time::Instant::now() > deadline {
            break;
        }
        for pid in pids {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            killed.insert(pid);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    killed.len()
}

/// `control/restore-<region>` appears (the drill's `outage_stop` / `agent_start`) if it
/// is not running, and restart the controller the way systemd's `Restart=always` would
/// (see the module doc). Every process started stays in `children`, so the demo's
/// shutdown stops it.
pub(super) async fn supervise(
    children: &mut Children,
    cfg: &Config,
    control: &Path,
    restart_controller: bool,
    stop: CancellationToken,
) {
    let hold = control.join("hold-controller");
    let start = control.join("start-controller");
    let controllers = controller_procs(cfg);
    let mut down_since: BTreeMap<String, tokio::time::Instant> = BTreeMap::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
        for (r, _) in REGIONS {
            let flag = control.join(format!("restore-{r}"));
            if !flag.exists() {
                continue;
            }
            let _ = std::fs::remove_file(&flag);
            let name = format!("agent-{r}");
            if children.running(&name) {
                continue;
            }
            match children
                .spawn(&name, &["agent", "--region", r], "listening agent ")
                .await
            {
                Ok(_) => eprintln!("lifeboat demo: region {r} restored (agent restarted)"),
                Err(e) => eprintln!("lifeboat demo: cannot restore region {r}: {e:#}"),
            }
        }
        let asked = start.exists();
        if asked {
            let _ = std::fs::remove_file(&start);
            let _ = std::fs::remove_file(&hold);
        }
        for (name, args) in &controllers {
            if children.running(name) {
                down_since.remove(name);
                continue;
            }
            let now = tokio::time::Instant::now();
            let since = *down_since.entry(name.clone()).or_insert(now);
            let due = restart_controller
                && !hold.exists()
                && now.duration_since(since) >= CONTROLLER_RESTART_DELAY;
            if !(asked || due) {
                continue;
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            match children.spawn(name, &args, "listening api ").await {
                Ok(_) => {
                    eprintln!("lifeboat demo: {name} started again");
                    down_since.remove(name);
                }
                Err(e) => {
                    eprintln!("lifeboat demo: cannot start {name} again: {e:#}");
                    // Wait another delay before the next try, as systemd would.
                    down_since.insert(name.clone(), tokio::time::Instant::now());
                }
            }
        }
    }
}
