//! The prober of one vantage point: runs its checks at their intervals and publishes
//! their states.
//!
//! Guarantees:
//! - Every check whose vantage list includes this point is run here, plus every check a
//!   calculated check run here depends on (a calculated check combines *local* results,
//!   so its children must be probed at the same point; see [`Prober::new`]).
//! - Each probed check has its own task; probes of one check never overlap (the next one
//!   starts one interval after the previous one started, or when it ends if it ran late).
//! - One task owns all states (no locks): probe results arrive on a channel, the
//!   threshold is applied, calculated checks that depend on a changed check are
//!   re-evaluated (children before parents), and the new map is published on a `watch`
//!   channel after every probe.
//! - `run` returns when the cancellation token fires, after stopping every probe task.

use crate::calc::{CalcRule, evaluate_calculated};
use crate::probe::{Outcome, Target};
use crate::state::{CheckState, CheckStates};
use anyhow::{Context, bail};
use lifeboat_config::{CheckKind, Config, DbExpect};
use lifeboat_core::VantageId;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Runs every check whose vantage list includes `vantage` (probes at their interval,
/// calculated checks re-evaluated whenever a child changes) and publishes the states.
#[derive(Debug)]
pub struct Prober {
    vantage: VantageId,
    probes: Vec<ProbeSpec>,
    engine: Engine,
    tx: watch::Sender<CheckStates>,
}

#[derive(Debug)]
struct ProbeSpec {
    name: String,
    target: Target,
    interval: Duration,
    timeout: Duration,
}

/// The pure part: states, thresholds, calculated checks. No I/O, no clock reads.
#[derive(Debug)]
struct Engine {
    states: CheckStates,
    /// name -> (failure_threshold, inverted), for probed checks.
    rules: BTreeMap<String, (u32, bool)>,
    /// Calculated checks, every one after all of its children.
    calculated: Vec<Calculated>,
}

#[derive(Debug)]
struct Calculated {
    name: String,
    children: Vec<String>,
    rule: CalcRule,
}

impl Prober {
    /// Prepares the checks of `vantage` (builds one HTTP client per HTTP(S) check).
    /// Fails on a url that does not parse, a calculated check naming an undefined child,
    /// or calculated checks that form a cycle (`Config::load` rejects all of these).
    ///
    /// A child of a calculated check that runs here is probed here too, even when the
    /// child's own vantage list leaves this point out; [`crate::decide`] ignores such a
    /// report for the child itself, since only the child's listed vantage points count.
    pub fn new(cfg: &Config, vantage: VantageId) -> anyhow::Result<Self> {
        // The checks that run here, then everything they depend on.
        let mut selected: BTreeSet<String> = cfg
            .checks
            .iter()
            .filter(|(_, c)| cfg.check_vantage(c).contains(&vantage))
            .map(|(n, _)| n.clone())
            .collect();
        let mut pending: Vec<String> = selected.iter().cloned().collect();
        while let Some(name) = pending.pop() {
            let check = cfg
                .checks
                .get(&name)
                .with_context(|| format!("no check named {name:?} is defined"))?;
            for child in &check.children {
                if !cfg.checks.contains_key(child) {
                    bail!("calculated check {name:?} names undefined child {child:?}");
                }
                if selected.insert(child.clone()) {
                    pending.push(child.clone());
                }
            }
        }

        let mut probes = Vec::new();
        let mut rules = BTreeMap::new();
        let mut calculated_names = Vec::new();
        for name in &selected {
            let c = &cfg.checks[name];
            let target = match c.kind {
                CheckKind::Http | CheckKind::Https => {
                    let url = c
                        .url
                        .as_deref()
                        .with_context(|| format!("check {name:?} has no url"))?;
                    Target::http(url, c.search.clone(), c.timeout)
                        .with_context(|| format!("preparing check {name:?}"))?
                }
                CheckKind::Tcp => Target::Tcp {
                    addr: c
                        .addr
                        .clone()
                        .with_context(|| format!("check {name:?} has no addr"))?,
                },
                CheckKind::Postgres | CheckKind::Mysql => {
                    let addr = c
                        .addr
                        .as_deref()
                        .with_context(|| format!("check {name:?} has no addr"))?;
                    let (host, port) = crate::probe::host_port(addr)
                        .with_context(|| format!("preparing check {name:?}"))?;
                    let user = c
                        .user
                        .clone()
                        .with_context(|| format!("check {name:?} has no user"))?;
                    let password = lifeboat_config::SecretRef {
                        file: c.password_file.clone(),
                        env: c.password_env.clone(),
                    };
                    let primary = c.expect == DbExpect::Primary;
                    if c.kind == CheckKind::Postgres {
                        let mut config = tokio_postgres::Config::new();
                        config
                            .host(&host)
                            .port(port)
                            .user(&user)
                            .dbname(c.dbname.as_deref().unwrap_or("postgres"))
                            .application_name("lifeboat-health")
                            .connect_timeout(c.timeout);
                        Target::Postgres {
                            config: Box::new(config),
                            password,
                            primary,
                        }
                    } else {
                        Target::Mysql {
                            host,
                            port,
                            user,
                            password,
                            primary,
                        }
                    }
                }
                CheckKind::Calculated => {
                    calculated_names.push(name.clone());
                    continue;
                }
            };
            rules.insert(name.clone(), (c.failure_threshold, c.inverted));
            probes.push(ProbeSpec {
                name: name.clone(),
                target,
                interval: c.interval,
                timeout: c.timeout,
            });
        }

        let calculated = topological(cfg, &calculated_names)?;
        let mut engine = Engine {
            states: selected
                .iter()
                .map(|n| (n.clone(), CheckState::default()))
                .collect(),
            rules,
            calculated,
        };
        // Calculated checks get their first evaluation now (all children Unknown), so
        // their detail says why they are Unknown.
        engine.reevaluate(None, unix_ms());
        let (tx, _) = watch::channel(engine.states.clone());
        Ok(Self {
            vantage,
            probes,
            engine,
            tx,
        })
    }

    /// The vantage point this prober runs at.
    pub fn vantage(&self) -> &VantageId {
        &self.vantage
    }

    /// The latest states; a new value after every probe.
    pub fn subscribe(&self) -> watch::Receiver<CheckStates> {
        self.tx.subscribe()
    }

    /// Probes until `cancel` fires.
    pub async fn run(self, cancel: CancellationToken) -> anyhow::Result<()> {
        let Prober {
            vantage,
            probes,
            mut engine,
            tx,
        } = self;
        tracing::debug!(%vantage, probes = probes.len(), "health prober starting");
        let (results_tx, mut results) = mpsc::channel::<(String, Outcome)>(probes.len().max(1) * 2);
        let mut tasks = JoinSet::new();
        for spec in probes {
            let results_tx = results_tx.clone();
            let cancel = cancel.clone();
            tasks.spawn(async move {
                let mut ticks = tokio::time::interval(spec.interval);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = ticks.tick() => {}
                    }
                    let outcome = tokio::select! {
                        _ = cancel.cancelled() => return,
                        o = spec.target.probe(spec.timeout) => o,
                    };
                    if results_tx.send((spec.name.clone(), outcome)).await.is_err() {
                        return;
                    }
                }
            });
        }
        drop(results_tx);

        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                received = results.recv() => {
                    let Some((name, outcome)) = received else {
                        // No probes at this vantage point: nothing to do until cancelled.
                        cancel.cancelled().await;
                        break;
                    };
                    for (check, status) in engine.apply(&name, outcome, unix_ms()) {
                        tracing::info!(%vantage, check, ?status, "health check changed");
                    }
                    tx.send_replace(engine.states.clone());
                }
            }
        }
        tasks.shutdown().await;
        Ok(())
    }
}

impl Engine {
    /// Applies one probe result; returns the checks whose status changed, with their
    /// new status.
    fn apply(
        &mut self,
        name: &str,
        outcome: Outcome,
        now_unix_ms: u64,
    ) -> Vec<(String, lifeboat_core::HealthStatus)> {
        let Some(&(threshold, inverted)) = self.rules.get(name) else {
            return Vec::new();
        };
        let Some(state) = self.states.get_mut(name) else {
            return Vec::new();
        };
        let ok = outcome.ok != inverted;
        let detail = if inverted {
            format!("inverted: {}", outcome.detail)
        } else {
            outcome.detail
        };
        if !state.record(ok, detail, Some(outcome.latency), threshold, now_unix_ms) {
            return Vec::new();
        }
        let mut changed = vec![(name.to_owned(), state.status)];
        changed.extend(self.reevaluate(Some(name), now_unix_ms));
        changed
    }

    /// Re-evaluates the calculated checks that depend (directly or through other
    /// calculated checks) on `changed`, or all of them when `changed` is None.
    fn reevaluate(
        &mut self,
        changed: Option<&str>,
        now_unix_ms: u64,
    ) -> Vec<(String, lifeboat_core::HealthStatus)> {
        let mut dirty: BTreeSet<String> = changed.into_iter().map(str::to_owned).collect();
        let mut out = Vec::new();
        for calc in &self.calculated {
            if changed.is_some() && !calc.children.iter().any(|c| dirty.contains(c)) {
                continue;
            }
            let children: Vec<_> = calc
                .children
                .iter()
                .map(|c| self.states.get(c).map(|s| s.status).unwrap_or_default())
                .collect();
            let (status, detail) = evaluate_calculated(calc.rule, &children);
            if let Some(state) = self.states.get_mut(&calc.name)
                && state.record_evaluation(status, detail, now_unix_ms)
            {
                dirty.insert(calc.name.clone());
                out.push((calc.name.clone(), status));
            }
        }
        out
    }
}

/// Orders calculated checks so every one comes after the calculated checks it uses.
fn topological(cfg: &Config, names: &[String]) -> anyhow::Result<Vec<Calculated>> {
    fn visit(
        cfg: &Config,
        name: &str,
        visiting: &mut BTreeSet<String>,
        done: &mut BTreeSet<String>,
        out: &mut Vec<Calculated>,
    ) -> anyhow::Result<()> {
        if done.contains(name) {
            return Ok(());
        }
        if !visiting.insert(name.to_owned()) {
            bail!("calculated checks form a cycle through {name:?}");
        }
        let check = &cfg.checks[name];
        for child in &check.children {
            if cfg.checks.get(child).map(|c| c.kind) == Some(CheckKind::Calculated) {
                visit(cfg, child, visiting, done, out)?;
            }
        }
        visiting.remove(name);
        done.insert(name.to_owned());
        out.push(Calculated {
            name: name.to_owned(),
            children: check.children.clone(),
            rule: CalcRule::of(check),
        });
        Ok(())
    }
    let (mut visiting, mut done, mut out) = (BTreeSet::new(), BTreeSet::new(), Vec::new());
    for name in names {
        visit(cfg, name, &mut visiting, &mut done, &mut out)?;
    }
    Ok(out)
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::Step;
    use lifeboat_core::HealthStatus::{self, Healthy as H, Unhealthy as U, Unknown as K};
    use std::path::Path;
    use std::sync::{Arc, Mutex};

    fn config(checks: &str) -> Config {
        let text = format!(
            r#"
[controller]
api_addr = "127.0.0.1:1"
state_dir = "/nonexistent"
[auth]
token_env = "T"
[regions.a]
agent_addr = "127.0.0.1:2"
role = "active"
[regions.b]
agent_addr = "127.0.0.1:3"
role = "standby"
{checks}
"#
        );
        Config::parse(Path::new("test.toml"), &text).expect("valid config")
    }

    fn outcome(ok: bool) -> Outcome {
        Outcome {
            ok,
            detail: if ok {
                "connected"
            } else {
                "connection refused"
            }
            .to_owned(),
            latency: Duration::from_millis(1),
        }
    }

    fn status(p: &Prober, name: &str) -> HealthStatus {
        p.engine.states[name].status
    }

    const TREE: &str = r#"
[checks.x]
type = "tcp"
addr = "127.0.0.1:9"
failure_threshold = 1
[checks.y]
type = "tcp"
addr = "127.0.0.1:9"
failure_threshold = 1
inverted = true
[checks.both]
type = "calculated"
children = ["x", "y"]
op = "and"
[checks.top]
type = "calculated"
children = ["both"]
inverted = true
"#;

    #[test]
    fn calculated_checks_follow_children_through_levels() {
        let mut p = Prober::new(&config(TREE), VantageId::Controller).expect("prober");
        assert_eq!(p.probes.len(), 2);
        assert_eq!(
            p.engine.calculated[0].name, "both",
            "children before parents"
        );
        assert_eq!((status(&p, "both"), status(&p, "top")), (K, K));

        let changed = p.engine.apply("x", outcome(true), 1);
        assert_eq!(changed, [("x".to_owned(), H)]);
        // y is inverted: a failed probe is healthy.
        let changed = p.engine.apply("y", outcome(false), 2);
        assert_eq!(
            changed,
            [
                ("y".to_owned(), H),
                ("both".to_owned(), H),
                ("top".to_owned(), U)
            ]
        );
        assert!(p.engine.states["y"].detail.starts_with("inverted: "));
        p.engine.apply("x", outcome(false), 3);
        assert_eq!((status(&p, "both"), status(&p, "top")), (U, H));
    }

    #[test]
    fn only_checks_of_this_vantage_run_plus_children_of_calculated_ones() {
        let cfg = config(
            r#"
[checks.from-b]
type = "tcp"
addr = "127.0.0.1:9"
vantage = ["b"]
[checks.child]
type = "tcp"
addr = "127.0.0.1:9"
vantage = ["controller"]
[checks.sum]
type = "calculated"
children = ["child"]
vantage = ["a"]
"#,
        );
        let a = Prober::new(&cfg, VantageId::Agent("a".into())).expect("prober");
        let names: Vec<_> = a.subscribe().borrow().keys().cloned().collect();
        assert_eq!(names, ["child", "sum"]);
        let c = Prober::new(&cfg, VantageId::Controller).expect("prober");
        let names: Vec<_> = c.subscribe().borrow().keys().cloned().collect();
        assert_eq!(names, ["child"]);
    }

    /// A prober of one scripted check `s` (the config's TCP target is replaced).
    fn scripted(check: &str, steps: &[Step]) -> Prober {
        let mut p = Prober::new(&config(check), VantageId::Controller).expect("prober");
        p.probes[0].target = Target::Script(Arc::new(Mutex::new(steps.iter().copied().collect())));
        p
    }

    /// Runs `p` until `s` satisfies `cond`; returns the state and the (paused) time it took.
    async fn run_until(
        p: Prober,
        cond: impl Fn(&CheckState) -> bool,
    ) -> (CheckState, Duration, CancellationToken) {
        let mut rx = p.subscribe();
        let cancel = CancellationToken::new();
        let start = tokio::time::Instant::now();
        tokio::spawn(p.run(cancel.clone()));
        loop {
            let hit = rx.borrow_and_update().get("s").filter(|s| cond(s)).cloned();
            if let Some(s) = hit {
                return (s, start.elapsed(), cancel);
            }
            rx.changed().await.expect("prober running");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn failure_is_detected_after_threshold_intervals() {
        use Step::{Fail, Pass};
        let check = "[checks.s]\ntype = \"tcp\"\naddr = \"127.0.0.1:9\"\ninterval = \"1s\"\ntimeout = \"500ms\"\nfailure_threshold = 3\n";
        // Probes at t = 0, 1, 2 … s: three passes make it healthy at t = 2 s.
        let (s, at, cancel) = run_until(
            scripted(check, &[Pass, Pass, Pass, Pass, Pass, Fail]),
            |s| s.status == H,
        )
        .await;
        assert_eq!((at, s.probes), (Duration::from_secs(2), 3));
        cancel.cancel();
        // Failing from the 6th probe (t = 5 s): unhealthy at the 3rd failure, t = 7 s.
        let (s, at, cancel) = run_until(
            scripted(check, &[Pass, Pass, Pass, Pass, Pass, Fail]),
            |s| s.status == U,
        )
        .await;
        assert_eq!(
            (at, s.probes, s.consecutive),
            (Duration::from_secs(7), 8, 3)
        );
        assert_eq!(s.detail, "scripted failure");
        cancel.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn timeout_bounds_a_probe_and_probes_never_overlap() {
        // Interval 100 ms but every probe hangs for its 400 ms timeout: probes run
        // back to back (0, 400, 800 ms), never several at once.
        let check = "[checks.s]\ntype = \"tcp\"\naddr = \"127.0.0.1:9\"\ninterval = \"100ms\"\ntimeout = \"400ms\"\nfailure_threshold = 3\n";
        let (s, at, cancel) = run_until(scripted(check, &[Step::Hang]), |s| s.probes == 3).await;
        assert_eq!(at, Duration::from_millis(1200));
        assert_eq!(s.status, U);
        assert_eq!(s.detail, "timed out after 400ms");
        assert_eq!(s.latency_ms, Some(400.0));
        cancel.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn run_with_no_checks_waits_for_cancel() {
        let p = Prober::new(&config(""), VantageId::Controller).expect("prober");
        let cancel = CancellationToken::new();
        let task = tokio::spawn(p.run(cancel.clone()));
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(!task.is_finished());
        cancel.cancel();
        task.await.expect("join").expect("run");
    }
}
