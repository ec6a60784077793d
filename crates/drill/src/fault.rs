//! Fault injection: what to run to hurt a region, and the guard that undoes it.
//!
//! Guarantees:
//! - [`plan`] checks the configuration before anything runs: a scenario whose commands
//!   are missing is an error naming the missing `[drill.regions.X]` key.
//! - [`Injected`] is created *before* the fault command runs, so the undo (`*_stop`,
//!   `*_restore`, or the drill's own netns restore) runs on every path: after a normal
//!   run, when the inject command fails half-way, on cancellation (Ctrl-C), and — from
//!   `Drop`, synchronously — when the future is dropped or a panic unwinds.
//! - A partition by network namespace sets every non-loopback link of the namespace
//!   down and restores exactly the links that were up, then re-adds the namespace's
//!   routes (a link going down drops its routes).

use crate::{DrillError, Scenario};
use lifeboat_config::Config;
use lifeboat_config::drill::DrillRegionConfig;
use lifeboat_core::RegionId;
use std::time::Duration;

/// How long one fault or undo command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

/// One thing to execute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cmd {
    /// `sh -c TEXT`.
    Shell(String),
    /// A program and its arguments.
    Argv(Vec<String>),
}

impl Cmd {
    fn describe(&self) -> String {
        match self {
            Cmd::Shell(s) => s.clone(),
            Cmd::Argv(a) => a.join(" "),
        }
    }

    fn std_command(&self) -> std::process::Command {
        match self {
            Cmd::Shell(s) => {
                let mut c = std::process::Command::new("sh");
                c.arg("-c").arg(s);
                c
            }
            Cmd::Argv(a) => {
                let mut c = std::process::Command::new(a.first().map_or("true", |s| s.as_str()));
                c.args(a.iter().skip(1));
                c
            }
        }
    }
}

/// The variables every command sees.
#[derive(Debug, Clone)]
pub struct CmdEnv {
    pub region: RegionId,
    pub scenario: Scenario,
    pub run: u32,
    /// With several controllers: the member that led when the fault began (the one a
    /// controller fault should hit, and its undo bring back). Empty with one
    /// controller, or when nobody led.
    pub controller: String,
}

impl CmdEnv {
    fn vars(&self) -> [(&'static str, String); 4] {
        [
            ("LIFEBOAT_DRILL_REGION", self.region.to_string()),
            ("LIFEBOAT_DRILL_SCENARIO", self.scenario.to_string()),
            ("LIFEBOAT_DRILL_RUN", self.run.to_string()),
            ("LIFEBOAT_DRILL_CONTROLLER", self.controller.clone()),
        ]
    }
}

/// Where a command's output goes: anonymous files, not pipes, so that a daemon the
/// command starts (an `outage_stop` that brings a region back) and that inherits them
/// does not keep the drill waiting for end-of-file.
struct Capture {
    out: std::fs::File,
    err: std::fs::File,
}

impl Capture {
    fn new() -> std::io::Result<Self> {
        Ok(Self {
            out: tempfile::tempfile()?,
            err: tempfile::tempfile()?,
        })
    }

    fn attach(&self, c: &mut std::process::Command) -> std::io::Result<()> {
        c.stdin(std::process::Stdio::null())
            .stdout(self.out.try_clone()?)
            .stderr(self.err.try_clone()?);
        Ok(())
    }

    fn read(f: &mut std::fs::File) -> String {
        use std::io::{Read, Seek};
        let mut s = String::new();
        let _ = f.rewind();
        let _ = f.read_to_string(&mut s);
        s
    }

    fn finish(mut self, cmd: &Cmd, status: std::process::ExitStatus) -> Result<String, String> {
        if status.success() {
            Ok(Self::read(&mut self.out))
        } else {
            Err(format!(
                "`{}` failed ({status}): {}",
                cmd.describe(),
                Self::read(&mut self.err).trim()
            ))
        }
    }
}

/// Run a command to completion; an error says what ran and what it printed.
pub async fn run_cmd(cmd: &Cmd, env: &CmdEnv) -> anyhow::Result<String> {
    let capture = Capture::new()?;
    let mut std_cmd = cmd.std_command();
    std_cmd.envs(env.vars());
    capture.attach(&mut std_cmd)?;
    let mut c = tokio::process::Command::from(std_cmd);
    c.kill_on_drop(true);
    let mut child = c
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot run `{}`: {e}", cmd.describe()))?;
    let status = tokio::time::timeout(COMMAND_TIMEOUT, child.wait())
        .await
        .map_err(|_| anyhow::anyhow!("`{}` did not finish in {COMMAND_TIMEOUT:?}", cmd.describe()))?
        .map_err(|e| anyhow::anyhow!("waiting for `{}`: {e}", cmd.describe()))?;
    capture.finish(cmd, status).map_err(anyhow::Error::msg)
}

fn run_cmd_blocking(cmd: &Cmd, env: &CmdEnv) -> Result<(), String> {
    let capture = Capture::new().map_err(|e| e.to_string())?;
    let mut c = cmd.std_command();
    c.envs(env.vars());
    capture.attach(&mut c).map_err(|e| e.to_string())?;
    let status = c
        .status()
        .map_err(|e| format!("cannot run `{}`: {e}", cmd.describe()))?;
    capture.finish(cmd, status).map(|_| ())
}

/// How a scenario hurts one region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Injection {
    Shell {
        inject: String,
        undo: Option<String>,
    },
    /// Cut the links of this network namespace (the drill restores them).
    Netns(String),
}

/// The fault of `scenario` against `region`, from `[drill.regions.REGION]`.
pub fn plan(cfg: &Config, scenario: Scenario, region: &RegionId) -> Result<Injection, DrillError> {
    let Some(drill) = cfg.drill.as_ref() else {
        return Err(DrillError::NoDrillSection {
            file: cfg.source.display().to_string(),
        });
    };
    let empty = DrillRegionConfig::default();
    let r = drill.regions.get(region.as_str()).unwrap_or(&empty);
    let missing = |key: &str, why: &str| DrillError::NotConfigured {
        file: cfg.source.display().to_string(),
        key: format!("drill.regions.{region}.{key}"),
        message: format!(
            "scenario {scenario} against region {region} needs `{key}` in [drill.regions.{region}] ({why})"
        ),
    };
    match scenario {
        Scenario::RegionOutage => match (&r.outage_start, &r.outage_stop) {
            (Some(i), Some(u)) => Ok(Injection::Shell {
                inject: i.clone(),
                undo: Some(u.clone()),
            }),
            (None, _) => Err(missing(
                "outage_start",
                "a shell command that kills the region; outage_stop brings it back",
            )),
            (Some(_), None) => Err(missing("outage_stop", "the drill must undo the outage")),
        },
        Scenario::Partition => {
            if let Some(ns) = &r.partition_netns {
                return Ok(Injection::Netns(ns.clone()));
            }
            match (&r.partition_start, &r.partition_stop) {
                (Some(i), Some(u)) => Ok(Injection::Shell {
                    inject: i.clone(),
                    undo: Some(u.clone()),
                }),
                (None, _) => Err(missing(
                    "partition_start",
                    "or `partition_netns`, the network namespace the region runs in",
                )),
                (Some(_), None) => Err(missing(
                    "partition_stop",
                    "the drill must heal the partition",
                )),
            }
        }
        Scenario::DbCrash => match &r.db_crash {
            Some(i) => Ok(Injection::Shell {
                inject: i.clone(),
                undo: r.db_restore.clone(),
            }),
            None => Err(missing(
                "db_crash",
                "a shell command that kills the region's database server",
            )),
        },
        Scenario::AppCrash => match &r.app_crash {
            Some(i) => Ok(Injection::Shell {
                inject: i.clone(),
                undo: r.app_restore.clone(),
            }),
            None => Err(missing(
                "app_crash",
                "a shell command that kills the region's application",
            )),
        },
        Scenario::AgentKill => match (&r.agent_kill, &r.agent_start) {
            (Some(i), Some(u)) => Ok(Injection::Shell {
                inject: i.clone(),
                undo: Some(u.clone()),
            }),
            (None, _) => Err(missing(
                "agent_kill",
                "a shell command that SIGKILLs the region's agent alone; agent_start starts it again",
            )),
            (Some(_), None) => Err(missing(
                "agent_start",
                "the drill must start the agent again",
            )),
        },
        Scenario::AgentPause => match (&r.agent_pause, &r.agent_resume) {
            (Some(i), Some(u)) => Ok(Injection::Shell {
                inject: i.clone(),
                undo: Some(u.clone()),
            }),
            (None, _) => Err(missing(
                "agent_pause",
                "a shell command that SIGSTOPs the region's agent; agent_resume SIGCONTs it",
            )),
            (Some(_), None) => Err(missing("agent_resume", "the drill must resume the agent")),
        },
        Scenario::ControllerKill | Scenario::ControllerPause => {
            let c = &drill.controller;
            let (inject, undo, inject_key, undo_key, why) = if scenario == Scenario::ControllerKill
            {
                (
                    &c.kill,
                    &c.start,
                    "kill",
                    "start",
                    "a shell command that SIGKILLs the controller; `start` starts it again",
                )
            } else {
                (
                    &c.pause,
                    &c.resume,
                    "pause",
                    "resume",
                    "a shell command that SIGSTOPs the controller; `resume` SIGCONTs it",
                )
            };
            let missing = |key: &str, why: &str| DrillError::NotConfigured {
                file: cfg.source.display().to_string(),
                key: format!("drill.controller.{key}"),
                message: format!("scenario {scenario} needs `{key}` in [drill.controller] ({why})"),
            };
            match (inject, undo) {
                (Some(i), Some(u)) => Ok(Injection::Shell {
                    inject: i.clone(),
                    undo: Some(u.clone()),
                }),
                (None, _) => Err(missing(inject_key, why)),
                (Some(_), None) => Err(missing(undo_key, "the drill must undo what it injects")),
            }
        }
    }
}

/// An injected fault and what undoes it. Call [`Injected::restore`]; `Drop` restores
/// synchronously if nobody did.
#[derive(Debug)]
pub struct Injected {
    undo: Vec<Cmd>,
    /// Undo commands whose failure is expected (re-adding a route that came back by
    /// itself) and not reported.
    best_effort: Vec<Cmd>,
    env: CmdEnv,
    restored: bool,
}

impl Injected {
    /// Inject `what`. The returned guard exists even when injecting failed (the error
    /// is the second half): a half-done injection is undone like a whole one.
    pub async fn inject(what: &Injection, env: CmdEnv) -> (Injected, anyhow::Result<()>) {
        let mut guard = Injected {
            undo: vec![],
            best_effort: vec![],
            env: env.clone(),
            restored: false,
        };
        let result = match what {
            Injection::Shell { inject, undo } => {
                guard
                    .undo
                    .extend(undo.iter().map(|u| Cmd::Shell(u.clone())));
                run_cmd(&Cmd::Shell(inject.clone()), &env).await.map(|_| ())
            }
            Injection::Netns(ns) => guard.cut_netns(ns).await,
        };
        (guard, result)
    }

    async fn cut_netns(&mut self, ns: &str) -> anyhow::Result<()> {
        let ip = |args: &[&str]| {
            let mut v = vec!["ip".to_owned(), "-n".to_owned(), ns.to_owned()];
            v.extend(args.iter().map(|s| (*s).to_owned()));
            Cmd::Argv(v)
        };
        let links = run_cmd(&ip(&["-o", "link", "show"]), &self.env).await?;
        let routes = run_cmd(&ip(&["route", "show"]), &self.env).await?;
        let up = up_links(&links);
        if up.is_empty() {
            anyhow::bail!("network namespace {ns} has no link up to cut (only lo?)");
        }
        // Undo first, so a failure half-way through the cut is still healed.
        for l in &up {
            self.undo.push(ip(&["link", "set", "dev", l, "up"]));
        }
        for r in routes.lines().map(str::trim).filter(|r| !r.is_empty()) {
            let mut args = vec!["route", "replace"];
            args.extend(r.split_whitespace());
            self.best_effort.push(ip(&args));
        }
        for l in &up {
            run_cmd(&ip(&["link", "set", "dev", l, "down"]), &self.env).await?;
        }
        Ok(())
    }

    /// Undo the fault (once). Every undo command runs even if one fails.
    pub async fn restore(&mut self) -> anyhow::Result<()> {
        if self.restored {
            return Ok(());
        }
        self.restored = true;
        let mut errors = Vec::new();
        for c in &self.undo {
            if let Err(e) = run_cmd(c, &self.env).await {
                errors.push(format!("{e:#}"));
            }
        }
        for c in &self.best_effort {
            let _ = run_cmd(c, &self.env).await;
        }
        if errors.is_empty() {
            Ok(())
        } else {
            anyhow::bail!("restoring the fault failed: {}", errors.join("; "))
        }
    }
}

impl Drop for Injected {
    fn drop(&mut self) {
        if self.restored {
            return;
        }
        // The async path did not run (the future was dropped or a panic unwound):
        // restore now, blocking, because leaving a region down is worse.
        for c in self.undo.iter().chain(&self.best_effort) {
            if let Err(e) = run_cmd_blocking(c, &self.env) {
                tracing::error!("drill: {e}");
            }
        }
    }
}

/// Names of the links that are administratively up, except `lo`, from `ip -o link show`.
fn up_links(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ": ");
            let _index = parts.next()?;
            let name = parts.next()?.split('@').next()?.trim().to_owned();
            let rest = parts.next()?;
            let flags = rest.split('>').next()?.trim_start_matches('<');
            let up = flags.split(',').any(|f| f == "UP");
            (up && name != "lo").then_some(name)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> CmdEnv {
        CmdEnv {
            region: RegionId::new("a"),
            scenario: Scenario::RegionOutage,
            run: 3,
            controller: "c2".into(),
        }
    }

    #[tokio::test]
    async fn a_command_that_starts_a_daemon_returns_when_the_shell_does() {
        // An `outage_stop` that brings a region back leaves processes running that
        // inherit its output: the drill must not wait for them.
        let out = tokio::time::timeout(
            Duration::from_secs(60),
            run_cmd(
                &Cmd::Shell(
                    "sleep 300 & echo \"$! $LIFEBOAT_DRILL_REGION $LIFEBOAT_DRILL_RUN $LIFEBOAT_DRILL_CONTROLLER\"".into(),
                ),
                &env(),
            ),
        )
        .await
        .expect("the command returned while its daemon still runs")
        .expect("command succeeds");
        let mut words = out.split_whitespace();
        let pid: i32 = words.next().expect("pid").parse().expect("a pid");
        assert_eq!(words.collect::<Vec<_>>(), ["a", "3", "c2"]);
        let _ = std::process::Command::new("kill")
            .arg(pid.to_string())
            .status();
    }

    #[tokio::test]
    async fn a_failing_command_says_what_it_printed() {
        let e = run_cmd(&Cmd::Shell("echo boom >&2; exit 3".into()), &env())
            .await
            .expect_err("exit 3");
        let e = format!("{e:#}");
        assert!(e.contains("boom") && e.contains("exit 3"), "{e}");
    }

    #[test]
    fn up_links_skip_loopback_and_down_links() {
        let text = "1: lo: <LOOPBACK,UP,LOWER_UP> mtu 65536 qdisc noqueue state UNKNOWN\n\
2: lbn7@if8: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue state UP\n\
3: d0: <BROADCAST,NOARP> mtu 1500 qdisc noop state DOWN\n";
        assert_eq!(up_links(text), vec!["lbn7".to_owned()]);
    }
}
