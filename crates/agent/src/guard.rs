//! The region guard: a small process that fences the region when the agent stops
//! feeding it (rule 2: a killed or frozen agent still leaves its region fenced
//! by the deadline plus at most the margin).
//!
//! The managed servers are daemons, not children of the agent: a `kill -9` or a
//! SIGSTOP of the agent alone would otherwise leave the region's database writable with
//! no lease behind it. So each agent runs a guard — the `lifeboat` binary re-executed as
//! the hidden `region-guard` subcommand, in a process group of its own — and feeds it
//! over a pipe (its stdin) every change of [`Agent::guard_deadline`]:
//!
//! - `Some(deadline)`: the region must be fenced by then (a lease is held, or a role may
//!   still take writes). Sent as an absolute CLOCK_MONOTONIC value, so neither pipe
//!   latency nor a late read moves it.
//! - `None`: every role is fenced; nothing to enforce.
//!
//! What the guard does, and when ([`Watch::next`] is the whole decision, pure):
//! - it *fires* at `deadline + lease_margin/2` unless it was fed a later deadline or
//!   `None` before then. A frozen agent simply stops feeding; a killed one closes the
//!   pipe (EOF), which changes nothing about *when*: the last deadline still stands.
//! - on EOF with no deadline outstanding it exits: nothing to protect.
//! - firing is kills only, no disk write and no log line before them (a hung disk is
//!   common in a region incident): PostgreSQL's postmaster gets SIGQUIT (immediate
//!   shutdown: every backend exits at once without committing more), then it and the
//!   children it had get SIGKILL 300 ms later; `mariadbd` gets SIGKILL; the pilot-light
//!   services' process groups get SIGKILL. What to kill comes from each role's
//!   [`DataRole::guard_targets`](lifeboat_core::DataRole::guard_targets): pid files,
//!   re-read every 500 ms by a helper thread; firing kills what that last reading found
//!   at once, then reads the files once more (waiting at most 100 ms) for a server
//!   restarted since. Each pid is checked against /proc (working directory, command
//!   name, start time) so a reused pid kills nothing else.
//! - after the kills it writes what it did to `guard-fired.json` in the agent's state
//!   directory and exits. The next agent to start (or the same one, thawed) journals it:
//!   "region guard fenced the region at … while the agent was gone".
//!
//! What the agent does ([`supervise`]): after its start-up fence it ends a guard left by
//! a previous agent (`guard.pid`, checked against /proc/PID/cmdline), journals that
//! guard's report, and starts its own. If its guard dies, the region has lost its
//! protection against a frozen agent: the agent fences at once and starts a new guard.
//! On a graceful shutdown it fences first and only then tells the guard `None` and
//! closes the pipe, so the region is never writable without a guard. docs/guard.md has
//! the timings, the restart and upgrade behaviour, and what the guard cannot cover.

use crate::Agent;
use anyhow::{Context, Result, bail};
use lifeboat_core::{GuardTarget, JournalKind};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// The hidden subcommand of the `lifeboat` binary that runs a guard.
pub const SUBCOMMAND: &str = "region-guard";
/// The running guard's pid, in the agent's state directory.
const PID_FILE: &str = "guard.pid";
/// What a guard that fired did, in the agent's state directory.
pub const REPORT_FILE: &str = "guard-fired.json";
/// How long a postmaster and its children get after SIGQUIT before SIGKILL: an
/// immediate shutdown takes milliseconds; this only catches a stuck one.
const POSTMASTER_GRACE: Duration = Duration::from_millis(300);
/// When firing, how long to wait for a fresh read of the pid files before using the
/// last one (a hung disk must not hold the fence).
const FRESH_READ_WAIT: Duration = Duration::from_millis(100);
/// How often the helper thread re-reads the pid files (servers restart, services too).
const SCOUT_INTERVAL: Duration = Duration::from_millis(500);
/// How long a new guard may take to say it is ready (a cold start of the binary on a
/// loaded machine).
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// A feed the guard does not take within this is a guard that hangs.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// The first line the agent writes to its guard.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Plan {
    version: u32,
    region: String,
    /// Fire this long after the deadline (lease_margin / 2).
    fire_delay_ms: u64,
    targets: Vec<GuardTarget>,
}

/// Every later line: the deadline in CLOCK_MONOTONIC nanoseconds, or none.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Feed {
    deadline_ns: Option<u64>,
}

/// What the guard knows: the last deadline it was fed and whether the agent is gone.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Watch {
    deadline_ns: Option<u64>,
    eof: bool,
}

/// What the guard hears from the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Input {
    Deadline(Option<u64>),
    Eof,
}

/// What the guard does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    /// Wait for input, at most until this instant (None: no limit).
    Wait(Option<u64>),
    Fire,
    Exit,
}

impl Watch {
    pub(crate) fn apply(&mut self, input: Input) {
        match input {
            // A deadline after EOF cannot arrive (the pipe is closed); the last one
            // before it stays in force.
            Input::Deadline(d) if !self.eof => self.deadline_ns = d,
            Input::Deadline(_) => {}
            Input::Eof => self.eof = true,
        }
    }

    /// The decision: fire `delay_ns` after the last deadline, whether the agent is
    /// frozen (no input) or gone (EOF); exit only when gone with nothing outstanding.
    pub(crate) fn next(&self, now_ns: u64, delay_ns: u64) -> Next {
        match self.deadline_ns {
            Some(d) => {
                let at = d.saturating_add(delay_ns);
                if now_ns >= at {
                    Next::Fire
                } else {
                    Next::Wait(Some(at))
                }
            }
            None if self.eof => Next::Exit,
            None => Next::Wait(None),
        }
    }
}

/// CLOCK_MONOTONIC now, in nanoseconds: the clock std's (and so tokio's) Instant reads.
pub(crate) fn mono_ns() -> u64 {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) {
        Ok(t) => {
            let secs = u64::try_from(t.tv_sec()).unwrap_or(0);
            let nanos = u64::try_from(t.tv_nsec()).unwrap_or(0);
            secs.saturating_mul(1_000_000_000).saturating_add(nanos)
        }
        // CLOCK_MONOTONIC always exists on Linux; 0 would only make a deadline look late.
        Err(_) => 0,
    }
}

/// A tokio instant as an absolute CLOCK_MONOTONIC value, by the distance from now (so
/// paused test time converts consistently too).
fn to_mono_ns(at: tokio::time::Instant) -> u64 {
    let now = tokio::time::Instant::now();
    let mono = mono_ns();
    if at >= now {
        let ahead = u64::try_from((at - now).as_nanos()).unwrap_or(u64::MAX);
        mono.saturating_add(ahead)
    } else {
        let behind = u64::try_from((now - at).as_nanos()).unwrap_or(u64::MAX);
        mono.saturating_sub(behind)
    }
}

fn unix_ms() -> u64 {
    crate::persist::unix_ms()
}

fn fmt_unix_ms(ms: u64) -> String {
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

// ---------------------------------------------------------------------------------
// The guard process.

/// A process to kill, as read from a target's files and checked against /proc.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Victim {
    what: String,
    pid: i32,
    /// Start time of the process (of the group's leader), to tell a reused pid apart.
    start: u64,
    kind: VictimKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum VictimKind {
    /// SIGQUIT, then SIGKILL of it and these children (pid, start time).
    Postmaster(Vec<(i32, u64)>),
    /// SIGKILL.
    Process,
    /// SIGKILL of the whole process group `pid`.
    Group,
}

/// Field 22 of /proc/PID/stat (start time in clock ticks since boot), and the parent.
fn proc_stat(pid: i32) -> Option<(u64, i32, char)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) S ppid ...": comm may hold spaces and parentheses; it ends at the last ')'.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    let ppid = fields.get(1)?.parse().ok()?;
    // Field 22 overall is the 20th after comm (state is the 3rd field overall).
    let start = fields.get(19)?.parse().ok()?;
    Some((start, ppid, state))
}

/// The start time of a live (not zombie) process.
pub(crate) fn proc_start(pid: i32) -> Option<u64> {
    proc_stat(pid).and_then(|(start, _, state)| (!matches!(state, 'Z' | 'X')).then_some(start))
}

fn same_process(pid: i32, start: u64) -> bool {
    proc_start(pid) == Some(start)
}

/// The live children of `pid` (one scan of /proc: procfs, never the disk).
fn children_of(pid: i32) -> Vec<(i32, u64)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|p| {
            let (start, ppid, state) = proc_stat(p)?;
            (ppid == pid && !matches!(state, 'Z' | 'X')).then_some((p, start))
        })
        .collect()
}

fn first_word(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    Some(text.split_whitespace().next()?.to_owned())
}

/// What `target` names right now (None: nothing of it runs).
fn resolve(target: &GuardTarget) -> Option<Victim> {
    match target {
        GuardTarget::Postmaster { data_dir } => {
            let pid: i32 = first_word(&data_dir.join("postmaster.pid"))?.parse().ok()?;
            // A postmaster works in its data directory: a stale pid file whose pid now
            // belongs to some other process is told apart by that.
            let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).ok()?;
            let want = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.clone());
            if cwd != want {
                return None;
            }
            let start = proc_start(pid)?;
            // Its children are listed when firing (a scan of all of /proc every 500 ms
            // would cost more than it saves).
            Some(Victim {
                what: format!("PostgreSQL postmaster {} (pid {pid})", data_dir.display()),
                pid,
                start,
                kind: VictimKind::Postmaster(Vec::new()),
            })
        }
        GuardTarget::Process { pid_file, comm } => {
            let pid: i32 = first_word(pid_file)?.parse().ok()?;
            let actual = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
            if actual.trim_end() != comm {
                return None;
            }
            Some(Victim {
                what: format!("{comm} (pid {pid}, {})", pid_file.display()),
                pid,
                start: proc_start(pid)?,
                kind: VictimKind::Process,
            })
        }
        GuardTarget::ProcessGroup { pgid_file } => {
            let text = std::fs::read_to_string(pgid_file).ok()?;
            let mut words = text.split_whitespace();
            let pgid: i32 = words.next()?.parse().ok()?;
            let start: u64 = words.next()?.parse().ok()?;
            Some(Victim {
                what: format!("process group {pgid} ({})", pgid_file.display()),
                pid: pgid,
                start,
                kind: VictimKind::Group,
            })
        }
    }
}

fn resolve_all(targets: &[GuardTarget]) -> Vec<Victim> {
    targets.iter().filter_map(resolve).collect()
}

/// Kill every victim. Only /proc is read and only signals are sent: no disk I/O.
/// Returns a line per victim saying what was done.
fn fire(victims: &[Victim]) -> Vec<String> {
    let mut done = Vec::new();
    let mut postmasters = Vec::new();
    // The databases first: they are what takes writes.
    for v in victims {
        if let VictimKind::Postmaster(known) = &v.kind {
            if same_process(v.pid, v.start) {
                // Listed before the signal: once the postmaster is gone its children are
                // reparented and can no longer be told apart.
                let mut children = children_of(v.pid);
                for c in known {
                    if !children.contains(c) {
                        children.push(*c);
                    }
                }
                let _ = kill(Pid::from_raw(v.pid), Signal::SIGQUIT);
                postmasters.push((v, children));
            } else {
                done.push(format!("{}: already gone", v.what));
            }
        }
    }
    for v in victims.iter().filter(|v| v.kind == VictimKind::Process) {
        if same_process(v.pid, v.start) {
            let _ = kill(Pid::from_raw(v.pid), Signal::SIGKILL);
            done.push(format!("{}: SIGKILL", v.what));
        } else {
            done.push(format!("{}: already gone", v.what));
        }
    }
    for v in victims.iter().filter(|v| v.kind == VictimKind::Group) {
        // A process group's number is not reused while any member lives; a live
        // process with that pid and another start time means the group is gone.
        match proc_start(v.pid) {
            Some(start) if start != v.start => done.push(format!("{}: already gone", v.what)),
            _ => {
                let r = killpg(Pid::from_raw(v.pid), Signal::SIGKILL);
                done.push(format!(
                    "{}: {}",
                    v.what,
                    if r.is_ok() { "SIGKILL" } else { "already gone" }
                ));
            }
        }
    }
    // Then give the postmasters a moment for their immediate shutdown and SIGKILL what
    // is left of them: the postmaster, the children it had, any it forked since.
    let grace_until = mono_ns().saturating_add(nanos(POSTMASTER_GRACE));
    for (v, mut children) in postmasters {
        while same_process(v.pid, v.start) && mono_ns() < grace_until {
            std::thread::sleep(Duration::from_millis(5));
        }
        let stuck = same_process(v.pid, v.start);
        if stuck {
            for c in children_of(v.pid) {
                if !children.contains(&c) {
                    children.push(c);
                }
            }
            let _ = kill(Pid::from_raw(v.pid), Signal::SIGKILL);
        }
        let mut killed = 0;
        for (pid, start) in &children {
            if same_process(*pid, *start) {
                let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
                killed += 1;
            }
        }
        done.push(format!(
            "{}: SIGQUIT{}{}",
            v.what,
            if stuck {
                ", then SIGKILL (still running after 300 ms)"
            } else {
                ""
            },
            if killed > 0 {
                format!(", SIGKILL of {killed} remaining children")
            } else {
                String::new()
            }
        ));
    }
    done
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// What a guard that fired did (written after the kills, read by the next agent).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct FiredReport {
    pub version: u32,
    pub region: String,
    /// When the kills were done.
    pub fired_at_unix_ms: u64,
    /// The lease deadline the agent had last fed.
    pub deadline_unix_ms: u64,
    /// Why: the agent closed its pipe (gone) or stopped feeding (frozen).
    pub reason: String,
    pub actions: Vec<String>,
}

/// Run a guard: read the plan and the deadlines from stdin, fire when they say so.
/// Blocking (its own process; threads, no runtime needed).
pub fn run_process(region: &str, state_dir: &Path) -> Result<()> {
    let mut first = String::new();
    if std::io::stdin()
        .read_line(&mut first)
        .context("reading the guard's plan")?
        == 0
    {
        return Ok(()); // the agent went away before saying anything: nothing to guard
    }
    let plan: Plan = serde_json::from_str(&first).context("decoding the guard's plan")?;
    // The agent runs its own image as the guard (see `guard_program`), so the versions
    // match; a mismatch is a bug, refused loudly (the agent then fences and retries).
    if plan.version != 1 {
        bail!("plan version {} (this guard reads version 1)", plan.version);
    }
    if plan.region != region {
        bail!(
            "plan for region {} given to the guard of {region}",
            plan.region
        );
    }
    let delay_ns = plan.fire_delay_ms.saturating_mul(1_000_000);
    let targets = Arc::new(plan.targets.clone());

    // The helper thread keeps the last reading of the pid files, so that firing never
    // has to wait for the disk.
    let seen: Arc<Mutex<Vec<Victim>>> = Arc::new(Mutex::new(resolve_all(&targets)));
    {
        let (seen, targets) = (seen.clone(), targets.clone());
        std::thread::spawn(move || {
            loop {
                std::thread::sleep(SCOUT_INTERVAL);
                let now = resolve_all(&targets);
                *seen.lock().unwrap_or_else(|p| p.into_inner()) = now;
            }
        });
    }
    let (tx, rx) = std::sync::mpsc::channel::<Input>();
    std::thread::spawn(move || {
        // Stdin's buffer is shared: this continues right after the plan's line.
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            match serde_json::from_str::<Feed>(&line) {
                Ok(f) => {
                    if tx.send(Input::Deadline(f.deadline_ns)).is_err() {
                        return;
                    }
                }
                // A line it cannot read changes nothing: the last deadline stands.
                Err(e) => tracing::warn!("region guard: ignoring an unreadable feed: {e}"),
            }
        }
        let _ = tx.send(Input::Eof);
    });
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "ready").context("telling the agent the guard is ready")?;
        out.flush()?;
    }
    tracing::info!(
        region,
        targets = targets.len(),
        "region guard running; fires {} ms after a deadline it is not fed past",
        plan.fire_delay_ms
    );

    let mut watch = Watch::default();
    loop {
        let input = match watch.next(mono_ns(), delay_ns) {
            Next::Exit => {
                tracing::info!(
                    region,
                    "region guard: the agent is gone and every role was fenced; exiting"
                );
                return Ok(());
            }
            Next::Fire => break,
            Next::Wait(None) => rx.recv().unwrap_or(Input::Eof),
            Next::Wait(Some(at)) => {
                let wait = Duration::from_nanos(at.saturating_sub(mono_ns()));
                match rx.recv_timeout(wait) {
                    Ok(i) => i,
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => continue,
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Input::Eof,
                }
            }
        };
        watch.apply(input);
    }

    // Fire: first what the helper thread read last (at most SCOUT_INTERVAL old, each
    // pid checked against its start time), at once; then a fresh reading, if the disk
    // gives it quickly, for a server restarted since.
    let (fired_at, fired_mono) = (unix_ms(), mono_ns());
    let known = seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut actions = fire(&known);
    let (ftx, frx) = std::sync::mpsc::channel();
    let t = targets.clone();
    std::thread::spawn(move || {
        let _ = ftx.send(resolve_all(&t));
    });
    match frx.recv_timeout(FRESH_READ_WAIT) {
        Ok(fresh) => {
            let new: Vec<Victim> = fresh
                .into_iter()
                .filter(|v| !known.iter().any(|k| k.pid == v.pid && k.start == v.start))
                .collect();
            actions.extend(fire(&new));
        }
        Err(_) => actions.push(format!(
            "the pid files gave no answer within {} ms (a hung disk?): only what was read before was killed",
            FRESH_READ_WAIT.as_millis()
        )),
    }
    let took_ms = mono_ns().saturating_sub(fired_mono) / 1_000_000;
    // Only now: the log line and the report (disk writes may hang; the kills are done).
    let deadline_ns = watch.deadline_ns.unwrap_or(0);
    let late_ms = fired_mono.saturating_sub(deadline_ns) / 1_000_000;
    actions.push(format!("the kills took {took_ms} ms"));
    let report = FiredReport {
        version: 1,
        region: region.to_owned(),
        fired_at_unix_ms: fired_at,
        deadline_unix_ms: fired_at.saturating_sub(late_ms),
        reason: if watch.eof {
            "the agent was gone (its pipe closed) with its lease outstanding".into()
        } else {
            "the agent stopped renewing its deadline (frozen or hung)".into()
        },
        actions,
    };
    tracing::warn!(
        region,
        "region guard fired {late_ms} ms after the lease deadline ({}): {}",
        report.reason,
        report.actions.join("; ")
    );
    write_report(state_dir, &report)
}

fn write_report(dir: &Path, report: &FiredReport) -> Result<()> {
    let path = dir.join(REPORT_FILE);
    let tmp = dir.join(format!("{REPORT_FILE}.tmp"));
    {
        let mut f =
            std::fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
        f.write_all(&serde_json::to_vec_pretty(report)?)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

// ---------------------------------------------------------------------------------
// The agent's side.

/// Journal (then remove) the report of a guard that fired, if there is one.
fn journal_report(agent: &Agent, dir: &Path, when: &str) {
    let path = dir.join(REPORT_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
        Err(e) => {
            agent.journal_step(
                JournalKind::Alert,
                &format!(
                    "cannot read the region guard's report {}: {e}",
                    path.display()
                ),
            );
            return;
        }
    };
    let detail = match serde_json::from_str::<FiredReport>(&text) {
        Ok(r) => format!(
            "region guard fenced the region at {} ({} ms after the lease deadline {}) {when}: {}; {}",
            fmt_unix_ms(r.fired_at_unix_ms),
            r.fired_at_unix_ms.saturating_sub(r.deadline_unix_ms),
            fmt_unix_ms(r.deadline_unix_ms),
            r.reason,
            if r.actions.is_empty() {
                "nothing of the region was running".to_owned()
            } else {
                r.actions.join("; ")
            }
        ),
        Err(e) => format!("region guard fenced the region {when} (its report is unreadable: {e})"),
    };
    agent.journal_step(JournalKind::Fenced, &detail);
    if let Err(e) = std::fs::remove_file(&path) {
        tracing::warn!("cannot remove {}: {e}", path.display());
    }
}

/// Whether `pid` is a region guard for `dir` (its command line says so).
fn is_guard_of(pid: i32, dir: &Path) -> bool {
    let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<String> = raw
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let dir = dir.display().to_string();
    args.iter().any(|a| a == SUBCOMMAND) && args.contains(&dir)
}

/// End the guard a previous agent left running (this agent has fenced the region
/// already, so it has nothing left to protect).
async fn end_previous(dir: &Path) {
    let path = dir.join(PID_FILE);
    let Some(pid) = first_word(&path).and_then(|w| w.parse::<i32>().ok()) else {
        return;
    };
    if pid != std::process::id() as i32 && is_guard_of(pid, dir) && proc_start(pid).is_some() {
        tracing::info!(pid, "ending the region guard a previous agent left running");
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while proc_start(pid).is_some() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let _ = std::fs::remove_file(&path);
}

/// How the feeding of one guard ended.
enum Ended {
    Cancelled,
    Died(String),
}

/// One running guard process, from the agent's side.
struct Guard {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    pid: i32,
}

fn feed_line(deadline: Option<tokio::time::Instant>) -> Result<Vec<u8>> {
    let mut line = serde_json::to_vec(&Feed {
        deadline_ns: deadline.map(to_mono_ns),
    })?;
    line.push(b'\n');
    Ok(line)
}

/// The binary this agent runs, for the guard: by its path, so the guard shows up as
/// `lifeboat` (ps, the demo's clean-up); if that file was replaced or removed since the
/// agent started (an upgrade in progress, a rebuild), the running image itself.
fn guard_program() -> PathBuf {
    match std::env::current_exe() {
        Ok(p) if p.exists() => p,
        _ => PathBuf::from("/proc/self/exe"),
    }
}

impl Guard {
    async fn start(agent: &Agent, dir: &Path, plan: &Plan) -> Result<Guard> {
        let mut cmd = tokio::process::Command::new(guard_program());
        cmd.arg(SUBCOMMAND)
            .arg("--region")
            .arg(agent.region.as_str())
            .arg("--state-dir")
            .arg(dir)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            // Its own process group: a Ctrl-C (or a kill of the agent's group) must not
            // take the guard down with the agent.
            .process_group(0)
            .kill_on_drop(false);
        let mut child = cmd.spawn().context("starting the region guard")?;
        let pid = child
            .id()
            .and_then(|p| i32::try_from(p).ok())
            .context("the region guard exited at once")?;
        let mut stdin = child.stdin.take().context("the guard's stdin")?;
        let stdout = child.stdout.take().context("the guard's stdout")?;
        // On the blocking pool: a stalled write must not stall the agent's renewals.
        let pid_file = dir.join(PID_FILE);
        tokio::task::spawn_blocking(move || {
            std::fs::write(&pid_file, format!("{pid}\n"))
                .with_context(|| format!("writing {}", pid_file.display()))
        })
        .await
        .context("writing the guard's pid file")??;
        let mut first = serde_json::to_vec(plan)?;
        first.push(b'\n');
        first.extend(feed_line(*agent.guard_deadline().borrow())?);
        stdin
            .write_all(&first)
            .await
            .context("writing the guard's plan")?;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        match tokio::time::timeout(READY_TIMEOUT, lines.next_line()).await {
            Ok(Ok(Some(l))) if l.trim() == "ready" => {}
            other => {
                let _ = child.start_kill();
                bail!("the region guard did not start (pid {pid}): {other:?}");
            }
        }
        Ok(Guard { child, stdin, pid })
    }

    /// Feed every change of the deadline until the agent stops or the guard dies.
    async fn feed(&mut self, agent: &Agent, cancel: &CancellationToken) -> Ended {
        let mut rx = agent.guard_deadline();
        rx.mark_changed();
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return Ended::Cancelled,
                status = self.child.wait() => {
                    return Ended::Died(match status {
                        Ok(s) => format!("exited ({s})"),
                        Err(e) => format!("could not be waited for: {e}"),
                    });
                }
                r = rx.changed() => {
                    if r.is_err() {
                        return Ended::Cancelled;
                    }
                    let value = *rx.borrow_and_update();
                    let line = match feed_line(value) {
                        Ok(l) => l,
                        Err(e) => return Ended::Died(format!("could not be fed: {e}")),
                    };
                    match tokio::time::timeout(WRITE_TIMEOUT, self.stdin.write_all(&line)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => return Ended::Died(format!("stopped reading its feed: {e}")),
                        Err(_) => {
                            let _ = self.child.start_kill();
                            return Ended::Died(format!("took no feed for {WRITE_TIMEOUT:?} (killed)"));
                        }
                    }
                }
            }
        }
    }

    /// Graceful end: tell it the last value and close the pipe. With the region fenced
    /// (None) it exits; with a deadline still outstanding (the fence failed) it stays to
    /// fire at it.
    async fn stop(mut self, agent: &Agent, dir: &Path) {
        let last = *agent.guard_deadline().borrow();
        if let Ok(line) = feed_line(last) {
            let _ = tokio::time::timeout(WRITE_TIMEOUT, self.stdin.write_all(&line)).await;
        }
        drop(self.stdin);
        if last.is_some() {
            tracing::warn!(
                pid = self.pid,
                "agent stops with a fence incomplete: its region guard stays to fire at the deadline"
            );
            return;
        }
        match tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await {
            Ok(_) => {
                let _ = std::fs::remove_file(dir.join(PID_FILE));
            }
            Err(_) => tracing::warn!(pid = self.pid, "the region guard did not exit"),
        }
    }
}

/// Runs for the agent's lifetime: starts the guard process and feeds it every change
/// of [`Agent::guard_deadline`]. Spawned right after the agent's start-up fence.
pub(crate) async fn supervise(agent: Arc<Agent>, cancel: CancellationToken) -> Result<()> {
    let dir = agent.cfg.agent_state_dir(&agent.region);
    end_previous(&dir).await;
    journal_report(&agent, &dir, "while the agent was gone");
    let plan = Plan {
        version: 1,
        region: agent.region.to_string(),
        fire_delay_ms: u64::try_from((agent.cfg.failover.lease_margin / 2).as_millis())
            .unwrap_or(u64::MAX),
        targets: agent
            .roles()
            .iter()
            .flat_map(|r| r.guard_targets())
            .collect(),
    };
    let mut backoff = Duration::from_millis(100);
    loop {
        let started = tokio::time::Instant::now();
        let lost = match Guard::start(&agent, &dir, &plan).await {
            Ok(mut guard) => {
                // Only now may the region activate (the lease machine waits for it).
                agent.set_guard_running(true).await;
                let ended = guard.feed(&agent, &cancel).await;
                match ended {
                    Ended::Cancelled => {
                        // Fence before letting the guard go: the region is never writable
                        // without one (the agent fences again on its way out: a no-op).
                        agent.fence_all("agent shutting down").await;
                        guard.stop(&agent, &dir).await;
                        return Ok(());
                    }
                    Ended::Died(why) => format!("region guard (pid {}) {why}", guard.pid),
                }
            }
            Err(_) if cancel.is_cancelled() => return Ok(()),
            // Not given up on: an agent without a guard must not stay writable, and a
            // cause such as a full process table may pass.
            Err(e) => format!("region guard could not start: {e:#}"),
        };
        // Without a guard a frozen agent would leave the region writable: fence first,
        // journal after (the fence never waits on a disk write). The lease is kept and
        // renewed; the roles are activated again once a new guard runs.
        agent.set_guard_running(false).await;
        journal_report(&agent, &dir, "while the agent was not feeding it");
        agent.journal_step(
            JournalKind::Alert,
            &format!("{lost}: region fenced, starting a new guard"),
        );
        // A guard that dies at once again and again must not spin the agent.
        backoff = if started.elapsed() > Duration::from_secs(10) {
            Duration::from_millis(100)
        } else {
            (backoff * 2).min(Duration::from_secs(2))
        };
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            _ = tokio::time::sleep(backoff) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;
    const DELAY: u64 = 250 * MS;

    fn watch(inputs: &[Input]) -> Watch {
        let mut w = Watch::default();
        for i in inputs {
            w.apply(*i);
        }
        w
    }

    #[test]
    fn nothing_outstanding_waits_without_limit_and_exits_at_eof() {
        assert_eq!(Watch::default().next(5 * MS, DELAY), Next::Wait(None));
        assert_eq!(
            watch(&[Input::Deadline(None)]).next(5 * MS, DELAY),
            Next::Wait(None)
        );
        assert_eq!(watch(&[Input::Eof]).next(5 * MS, DELAY), Next::Exit);
        // Fenced (None) then gone: exit, never fire.
        let w = watch(&[
            Input::Deadline(Some(1000 * MS)),
            Input::Deadline(None),
            Input::Eof,
        ]);
        assert_eq!(w.next(10_000 * MS, DELAY), Next::Exit);
    }

    #[test]
    fn a_deadline_fires_half_the_margin_after_it_and_not_before() {
        let w = watch(&[Input::Deadline(Some(1000 * MS))]);
        assert_eq!(w.next(900 * MS, DELAY), Next::Wait(Some(1250 * MS)));
        assert_eq!(w.next(1249 * MS, DELAY), Next::Wait(Some(1250 * MS)));
        assert_eq!(w.next(1250 * MS, DELAY), Next::Fire);
        // A frozen agent feeds nothing more: it still fires, however late the guard
        // itself wakes up.
        assert_eq!(w.next(60_000 * MS, DELAY), Next::Fire);
    }

    #[test]
    fn a_later_deadline_or_none_postpones_or_cancels_the_fire() {
        let w = watch(&[
            Input::Deadline(Some(1000 * MS)),
            Input::Deadline(Some(1600 * MS)),
        ]);
        assert_eq!(w.next(1300 * MS, DELAY), Next::Wait(Some(1850 * MS)));
        let w = watch(&[Input::Deadline(Some(1000 * MS)), Input::Deadline(None)]);
        assert_eq!(w.next(5000 * MS, DELAY), Next::Wait(None));
        // An earlier deadline is obeyed too: the agent knows best when its lease ends.
        let w = watch(&[
            Input::Deadline(Some(1000 * MS)),
            Input::Deadline(Some(500 * MS)),
        ]);
        assert_eq!(w.next(800 * MS, DELAY), Next::Fire);
    }

    #[test]
    fn eof_keeps_the_last_deadline_and_fires_at_it() {
        let w = watch(&[Input::Deadline(Some(1000 * MS)), Input::Eof]);
        assert_eq!(w.next(1100 * MS, DELAY), Next::Wait(Some(1250 * MS)));
        assert_eq!(w.next(1250 * MS, DELAY), Next::Fire);
        // Nothing after EOF changes it (the pipe is closed; a stray value is ignored).
        let mut w = w;
        w.apply(Input::Deadline(None));
        assert_eq!(w.next(1250 * MS, DELAY), Next::Fire);
    }

    #[test]
    fn deadlines_convert_to_the_monotonic_clock_by_their_distance() {
        let now = tokio::time::Instant::now();
        let before = mono_ns();
        let ahead = to_mono_ns(now + Duration::from_secs(2));
        let after = mono_ns();
        assert!(
            ahead >= before + 2_000_000_000 - 50 * MS,
            "{ahead} vs {before}"
        );
        assert!(ahead <= after + 2_000_000_000, "{ahead} vs {after}");
        assert!(to_mono_ns(now) <= mono_ns());
    }

    #[test]
    fn proc_reads_this_process() {
        let me = std::process::id() as i32;
        let start = proc_start(me).expect("own start time");
        assert!(same_process(me, start));
        assert!(!same_process(me, start + 1));
        let dir = tempfile::tempdir().expect("tempdir");
        let pid_file = dir.path().join("x.pid");
        std::fs::write(&pid_file, format!("{me}\n")).expect("write");
        // The wrong command name: a pid file whose pid now belongs to someone else.
        assert_eq!(
            resolve(&GuardTarget::Process {
                pid_file: pid_file.clone(),
                comm: "mariadbd".into()
            }),
            None
        );
        let comm = std::fs::read_to_string(format!("/proc/{me}/comm")).expect("comm");
        let v = resolve(&GuardTarget::Process {
            pid_file,
            comm: comm.trim_end().into(),
        })
        .expect("resolves");
        assert_eq!((v.pid, v.start), (me, start));
        // A postmaster pid file whose pid does not work in that data directory.
        std::fs::write(dir.path().join("postmaster.pid"), format!("{me}\n")).expect("write");
        assert_eq!(
            resolve(&GuardTarget::Postmaster {
                data_dir: dir.path().join("elsewhere")
            }),
            None
        );
    }
}
