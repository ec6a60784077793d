//! A dead or frozen agent cannot leave its region writable (rule 2, issue 10).
//!
//! `lifeboat demo` on PostgreSQL (synchronous) and on MariaDB (semi-synchronous); the
//! agent of the active region a alone is killed with SIGKILL, or frozen with SIGSTOP for
//! 20 s, its database and app left running. Each region's server is asked directly
//! (psql / mariadb against the server itself) every 70 ms whether it takes writes:
//! a's stops by the lease deadline plus the margin (the region guard), b is promoted
//! and serves through the demo's DNS, no sample ever finds both taking writes, and a
//! rejoins as a standby once its agent is back.
#![allow(clippy::unwrap_used)]

mod common;

use common::{bin, http_get};
use lifeboat_config::Config;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Engine {
    Postgres,
    Mariadb,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Fault {
    Kill,
    Freeze(Duration),
}

/// One region's server, asked directly.
#[derive(Clone, Debug)]
struct Server {
    host: String,
    port: u16,
}

/// The demo, stopped (Ctrl-C, bounded) even when the test fails; a frozen agent is
/// thawed first so that it can stop too.
struct Demo {
    dir: tempfile::TempDir,
    demo_dir: PathBuf,
    proc: Option<common::Proc>,
    cfg: Config,
    engine: Engine,
    password: String,
    frozen: Arc<Mutex<Option<i32>>>,
}

impl Demo {
    async fn start(engine: Engine) -> Demo {
        let dir = common::test_dir();
        let demo_dir = dir.path().join("demo");
        let mut cmd = Command::new(bin());
        cmd.args(["demo", "--dir"]).arg(&demo_dir).args([
            "--database",
            match engine {
                Engine::Postgres => "postgres",
                Engine::Mariadb => "mariadb",
            },
        ]);
        cmd.env("LIFEBOAT_LOG", "info");
        let mut proc = common::Proc::spawn("demo", cmd, &dir.path().join("demo.log"));
        let config_path = proc.wait_line("  config", Duration::from_secs(180)).await;
        let cfg = Config::load(Path::new(&config_path)).unwrap();
        let password = std::fs::read_to_string(demo_dir.join("db-password"))
            .unwrap()
            .trim()
            .to_owned();
        Demo {
            dir,
            demo_dir,
            proc: Some(proc),
            cfg,
            engine,
            password,
            frozen: Arc::new(Mutex::new(None)),
        }
    }

    fn server(&self, region: &'static str) -> Server {
        let db = self.cfg.database.as_ref().unwrap();
        let (host, port) = match self.engine {
            Engine::Postgres => {
                let i = &db.postgres.as_ref().unwrap().regions[region];
                (i.host.clone(), i.port)
            }
            Engine::Mariadb => {
                let i = &db.mysql.as_ref().unwrap().regions[region];
                (i.host.clone(), i.port)
            }
        };
        Server { host, port }
    }

    fn agent_pid(&self, region: &str) -> i32 {
        std::fs::read_to_string(self.demo_dir.join(format!("control/agent-{region}.pid")))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    fn agent_journal(&self, region: &str) -> Vec<lifeboat_core::JournalEntry> {
        let path = self
            .cfg
            .agent_state_dir(&lifeboat_core::RegionId::new(region));
        std::fs::read_to_string(path.join("journal.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The controller's journal as `lifeboat journal` prints it: first in a failure's
    /// output, which CI may cut short (the decisions say more than the logs' tails).
    fn controller_journal(&self) -> String {
        let out = Command::new(bin())
            .arg("journal")
            .arg("--config")
            .arg(self.demo_dir.join("lifeboat.toml"))
            .output();
        match out {
            Ok(o) => format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => format!("lifeboat journal did not run: {e}"),
        }
    }

    fn log_tail(&self, name: &str) -> String {
        let text = std::fs::read_to_string(self.demo_dir.join(format!("logs/{name}.log")))
            .unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Does this server take writes right now? Asked of the server itself; a server
    /// that does not answer takes none.
    async fn takes_writes(&self, s: &Server) -> bool {
        Demo::probe(self.engine, &self.password, s).await
    }

    /// A standby: PostgreSQL in recovery; MariaDB read-only with both replication
    /// threads running.
    async fn is_standby(&self, s: &Server) -> bool {
        let (prog, args, env): (&str, Vec<String>, (&str, &str)) = match self.engine {
            Engine::Postgres => (
                "psql",
                vec![
                    format!(
                        "host={} port={} user=postgres dbname=postgres connect_timeout=2",
                        s.host, s.port
                    ),
                    "-tAc".into(),
                    "select pg_is_in_recovery() and status = 'streaming' from pg_stat_wal_receiver"
                        .into(),
                ],
                ("PGPASSWORD", &self.password),
            ),
            Engine::Mariadb => (
                "mariadb",
                vec![
                    "--protocol=TCP".into(),
                    "-h".into(),
                    s.host.clone(),
                    "-P".into(),
                    s.port.to_string(),
                    "-u".into(),
                    "root".into(),
                    "--connect-timeout=2".into(),
                    "-e".into(),
                    "select concat('read_only=', @@global.read_only); show slave status\\G".into(),
                ],
                ("MYSQL_PWD", &self.password),
            ),
        };
        let Ok(out) = tokio::process::Command::new(prog)
            .args(&args)
            .env(env.0, env.1)
            .output()
            .await
        else {
            return false;
        };
        let text = String::from_utf8_lossy(&out.stdout);
        match self.engine {
            Engine::Postgres => text.trim() == "t",
            Engine::Mariadb => {
                // concat() renders the boolean as ON / OFF.
                (text.contains("read_only=1") || text.contains("read_only=ON"))
                    && text.contains("Slave_IO_Running: Yes")
                    && text.contains("Slave_SQL_Running: Yes")
            }
        }
    }

    /// What the demo's DNS answers for the app.
    fn dig_app(&self) -> String {
        let dns = self.cfg.controller.dns_addr.unwrap();
        let out = Command::new("dig")
            .arg(format!("@{}", dns.ip()))
            .args(["-p", &dns.port().to_string()])
            .args(["app.demo.lifeboat.", "A", "+short", "+time=1", "+tries=1"])
            .output()
            .expect("dig is installed by scripts/test (Debian package dnsutils)");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// The app answers through the address DNS gives out, from region `region`, as the
    /// active region, and takes a write.
    async fn serves_from(&self, region: &str) -> bool {
        let ip = self.dig_app();
        let want_ip = self.cfg.regions[region]
            .address
            .map(|a| a.to_string())
            .unwrap_or_default();
        if ip != want_ip {
            return false;
        }
        let port = self.cfg.drill.as_ref().map(|d| d.app_port).unwrap_or(0);
        let Some((200, info)) = http_get(&format!("http://{ip}:{port}/api/info")).await else {
            return false;
        };
        let Ok(info) = serde_json::from_str::<serde_json::Value>(&info) else {
            return false;
        };
        if info["region"] != region || info["active"] != region {
            return false;
        }
        let id = format!("agent-crash-{}", rand_id());
        let Ok(client) = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .no_proxy()
            .build()
        else {
            return false;
        };
        client
            .post(format!("http://{ip}:{port}/api/entries"))
            .json(&serde_json::json!({"id": id, "body": "written while a's agent was down"}))
            .send()
            .await
            .is_ok_and(|r| r.status().as_u16() == 201)
    }
}

fn rand_id() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

impl Drop for Demo {
    fn drop(&mut self) {
        if let Some(pid) = *self.frozen.lock().unwrap() {
            let _ = kill(Pid::from_raw(pid), Signal::SIGCONT);
        }
        // Proc's Drop: SIGTERM, the demo stops every agent and server it started.
        if let Some(mut p) = self.proc.take() {
            p.signal(Signal::SIGINT);
            for _ in 0..600 {
                if let Ok(Some(_)) = p.child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = &self.dir;
    }
}

/// One sample: both servers asked at once.
#[derive(Clone, Copy, Debug)]
struct Sample {
    /// Since the fault, in ms (negative: before it).
    at_ms: i64,
    a: bool,
    b: bool,
}

/// Ask both servers every 70 ms, each sample in its own task so one slow answer does
/// not delay the next sample.
fn start_sampler(
    demo: Arc<DemoRef>,
    t0: Arc<Mutex<Option<Instant>>>,
    started: Instant,
) -> (Arc<Mutex<Vec<Sample>>>, tokio_util::sync::CancellationToken) {
    let samples = Arc::new(Mutex::new(Vec::new()));
    let cancel = tokio_util::sync::CancellationToken::new();
    let (s2, c2) = (samples.clone(), cancel.clone());
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(70));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        loop {
            tokio::select! {
                _ = c2.cancelled() => return,
                _ = tick.tick() => {}
            }
            let begun = Instant::now();
            let (demo, samples, t0) = (demo.clone(), s2.clone(), t0.clone());
            tokio::spawn(async move {
                let (a, b) = tokio::join!(demo.takes_writes(&demo.a), demo.takes_writes(&demo.b));
                let base = t0.lock().unwrap().unwrap_or(started);
                let at_ms = if begun >= base {
                    (begun - base).as_millis() as i64
                } else {
                    -((base - begun).as_millis() as i64)
                };
                samples.lock().unwrap().push(Sample { at_ms, a, b });
            });
        }
    });
    (samples, cancel)
}

/// What the sampler needs from the demo (shared with its tasks).
struct DemoRef {
    engine: Engine,
    password: String,
    a: Server,
    b: Server,
}

impl DemoRef {
    async fn takes_writes(&self, s: &Server) -> bool {
        Demo::probe(self.engine, &self.password, s).await
    }
}

impl Demo {
    /// `select pg_is_in_recovery()` = f, or `@@global.read_only` = 0.
    fn probe(
        engine: Engine,
        password: &str,
        s: &Server,
    ) -> impl std::future::Future<Output = bool> + Send + 'static {
        let (engine, password, s) = (engine, password.to_owned(), s.clone());
        async move {
            let mut c = match engine {
                Engine::Postgres => {
                    let mut c = tokio::process::Command::new("psql");
                    c.arg(format!(
                        "host={} port={} user=postgres dbname=postgres connect_timeout=2",
                        s.host, s.port
                    ))
                    .args(["-tAc", "select pg_is_in_recovery()"])
                    .env("PGPASSWORD", &password);
                    c
                }
                Engine::Mariadb => {
                    let mut c = tokio::process::Command::new("mariadb");
                    c.args(["--protocol=TCP", "-h", &s.host, "-P", &s.port.to_string()])
                        .args(["-u", "root", "--connect-timeout=2", "-N", "-B"])
                        .args(["-e", "select @@global.read_only"])
                        .env("MYSQL_PWD", &password);
                    c
                }
            };
            c.kill_on_drop(true);
            let Ok(Ok(out)) = tokio::time::timeout(Duration::from_secs(3), c.output()).await else {
                return false;
            };
            let text = String::from_utf8_lossy(&out.stdout);
            out.status.success()
                && match engine {
                    Engine::Postgres => text.trim() == "f",
                    Engine::Mariadb => text.trim() == "0",
                }
        }
    }
}

async fn wait_until<F, Fut>(what: &str, timeout: Duration, demo: &Demo, mut f: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let begun = Instant::now();
    loop {
        if f().await {
            return begun.elapsed();
        }
        assert!(
            begun.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}\ncontroller journal:\n{}\nagent-a log:\n{}\nagent-b log:\n{}\ncontroller log:\n{}",
            demo.controller_journal(),
            demo.log_tail("agent-a"),
            demo.log_tail("agent-b"),
            demo.log_tail("controller"),
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The controller's `lifeboat_lease_lapses_total` (what examples/prometheus/alerts.yml's
/// LifeboatLeaseLapsed watches), the journal's failures detected as a lapse of a's lease,
/// and all its detected failures.
async fn lapse_figures(demo: &Demo) -> (u64, u64, u64) {
    let api = demo.cfg.controller.api_addr;
    let (_, metrics) = http_get(&format!("http://{api}/metrics"))
        .await
        .expect("the controller's /metrics answers");
    let lapses = metrics
        .lines()
        .find_map(|l| l.strip_prefix("lifeboat_lease_lapses_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no lifeboat_lease_lapses_total in {metrics}"));
    let (_, journal) = http_get(&format!("http://{api}/v1/journal"))
        .await
        .expect("the controller's journal answers");
    let journal: Vec<lifeboat_core::JournalEntry> = serde_json::from_str(&journal).unwrap();
    let detected: Vec<_> = journal
        .iter()
        .filter(|e| e.kind == lifeboat_core::JournalKind::Detected)
        .collect();
    let lapse_entries = detected
        .iter()
        .filter(|e| e.detail.contains("lease of a lapsed"))
        .count();
    (lapses as u64, lapse_entries as u64, detected.len() as u64)
}

async fn agent_fault(engine: Engine, fault: Fault) {
    let demo = Demo::start(engine).await;
    let (a, b) = (demo.server("a"), demo.server("b"));
    let ttl = demo.cfg.failover.lease_ttl;
    let margin = demo.cfg.failover.lease_margin;
    assert!(demo.takes_writes(&a).await, "a is the primary at the start");
    assert!(!demo.takes_writes(&b).await, "b is a standby at the start");

    let shared = Arc::new(DemoRef {
        engine,
        password: demo.password.clone(),
        a: a.clone(),
        b: b.clone(),
    });
    let t0_slot = Arc::new(Mutex::new(None));
    let started = Instant::now();
    let (samples, stop_sampling) = start_sampler(shared, t0_slot.clone(), started);
    // A second of samples before the fault: the probe sees a taking writes.
    wait_until(
        "samples of a taking writes",
        Duration::from_secs(10),
        &demo,
        || async { samples.lock().unwrap().iter().filter(|s| s.a).count() >= 5 },
    )
    .await;

    // The fault: a's agent alone; its database and app are left running.
    let agent_a = demo.agent_pid("a");
    let t0 = Instant::now();
    *t0_slot.lock().unwrap() = Some(t0);
    match fault {
        Fault::Kill => {
            kill(Pid::from_raw(agent_a), Signal::SIGKILL).unwrap();
        }
        Fault::Freeze(_) => {
            *demo.frozen.lock().unwrap() = Some(agent_a);
            kill(Pid::from_raw(agent_a), Signal::SIGSTOP).unwrap();
        }
    }

    // a stops taking writes by the lease deadline plus the margin, without its agent.
    let a_stopped = wait_until(
        "a's database to stop taking writes",
        ttl * 3,
        &demo,
        || async { !demo.takes_writes(&a).await },
    )
    .await;
    // b is promoted and serves through DNS.
    let b_serves = a_stopped
        + wait_until(
            "b to serve through DNS",
            Duration::from_secs(60),
            &demo,
            || async { demo.serves_from("b").await },
        )
        .await;
    let (lapses, lapse_entries, detected) = lapse_figures(&demo).await;
    assert!(
        (lapse_entries..=detected).contains(&lapses),
        "lifeboat_lease_lapses_total {lapses}: every failure detected as a lapse counts \
         ({lapse_entries} in the journal), and nothing else but failures ({detected})"
    );
    if lapse_entries > 0 {
        eprintln!("{engine:?} {fault:?}: the controller counted {lapses} lease lapse(s)");
    }

    // The agent comes back: killed, it is restarted (as the demo's restore does);
    // frozen, it is thawed after the freeze.
    match fault {
        Fault::Kill => {
            std::fs::write(demo.demo_dir.join("control/restore-a"), b"").unwrap();
        }
        Fault::Freeze(length) => {
            if let Some(left) = length.checked_sub(t0.elapsed()) {
                tokio::time::sleep(left).await;
            }
            kill(Pid::from_raw(agent_a), Signal::SIGCONT).unwrap();
            *demo.frozen.lock().unwrap() = None;
        }
    }
    let rejoined = wait_until(
        "a to rejoin as a standby",
        Duration::from_secs(120),
        &demo,
        || async { demo.is_standby(&a).await },
    )
    .await;
    // A few more samples with a back as a standby: it must stay one.
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop_sampling.cancel();
    // Let the samples in flight land.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut samples = samples.lock().unwrap().clone();
    samples.sort_by_key(|s| s.at_ms);

    let both: Vec<&Sample> = samples.iter().filter(|s| s.a && s.b).collect();
    assert!(
        both.is_empty(),
        "{} sample(s) found a and b both taking writes: {both:?}",
        both.len()
    );
    let bound = i64::try_from((ttl + margin).as_millis()).unwrap();
    let late: Vec<&Sample> = samples.iter().filter(|s| s.a && s.at_ms > bound).collect();
    assert!(
        late.is_empty(),
        "a took writes after the lease deadline plus the margin ({bound} ms after the fault): {late:?}"
    );
    let after: Vec<i64> = samples
        .iter()
        .filter(|s| s.at_ms >= 0)
        .map(|s| s.at_ms)
        .collect();
    let gap = after.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
    let last_a = samples
        .iter()
        .filter(|s| s.a && s.at_ms >= 0)
        .map(|s| s.at_ms)
        .max();
    assert!(
        demo.takes_writes(&b).await,
        "b is still the primary after a rejoined"
    );

    // a's agent journaled what its guard did while it was gone or frozen.
    let journal = demo.agent_journal("a");
    let fired = journal
        .iter()
        .find(|e| {
            e.kind == lifeboat_core::JournalKind::Fenced
                && e.detail.contains("region guard fenced the region")
        })
        .unwrap_or_else(|| panic!("a's journal says nothing of its guard: {journal:#?}"));
    eprintln!(
        "{engine:?} {fault:?}: a took its last write {} ms after the fault (bound {bound} ms), its server stopped answering as a primary within {} ms; b served through DNS after {} ms; a rejoined {} ms after its agent came back; {} samples, largest gap {gap} ms\n  a's journal: {}",
        last_a.map_or("no".into(), |ms| ms.to_string()),
        a_stopped.as_millis(),
        b_serves.as_millis(),
        rejoined.as_millis(),
        samples.len(),
        fired.detail
    );
    // A sample is started every 70 ms; only a test process starved of CPU misses one
    // for long. A gap over a second would leave room for an unseen dual primary.
    assert!(gap <= 1000, "a gap of {gap} ms between samples");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_agent_kill_leaves_its_region_fenced() {
    agent_fault(Engine::Postgres, Fault::Kill).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_agent_freeze_leaves_its_region_fenced() {
    agent_fault(Engine::Postgres, Fault::Freeze(Duration::from_secs(20))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_agent_kill_leaves_its_region_fenced() {
    agent_fault(Engine::Mariadb, Fault::Kill).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_agent_freeze_leaves_its_region_fenced() {
    agent_fault(Engine::Mariadb, Fault::Freeze(Duration::from_secs(20))).await;
}

/// The guard itself dies (kill -9), its agent alive: the agent treats that as losing its
/// protection — it fences the region at once and starts a new guard — and the deployment
/// serves again, never with two primaries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_guard_is_replaced_and_its_region_fenced_meanwhile() {
    let demo = Demo::start(Engine::Postgres).await;
    let (a, b) = (demo.server("a"), demo.server("b"));
    let shared = Arc::new(DemoRef {
        engine: Engine::Postgres,
        password: demo.password.clone(),
        a: a.clone(),
        b: b.clone(),
    });
    let t0_slot = Arc::new(Mutex::new(None));
    let (samples, stop_sampling) = start_sampler(shared, t0_slot.clone(), Instant::now());
    let pid_file = demo
        .cfg
        .agent_state_dir(&lifeboat_core::RegionId::new("a"))
        .join("guard.pid");
    let guard_pid = |what: &str| -> i32 {
        std::fs::read_to_string(&pid_file)
            .unwrap_or_else(|e| panic!("{what}: {}: {e}", pid_file.display()))
            .trim()
            .parse()
            .unwrap()
    };
    // The fault hits a deployment that serves, as it would in production: on a loaded
    // machine the demo prints its config before a's app is healthy, and a fault in that
    // start-up window measures the start-up, not the guard's replacement.
    wait_until(
        "a to serve through DNS before the fault",
        Duration::from_secs(60),
        &demo,
        || async { demo.serves_from("a").await },
    )
    .await;
    let old = guard_pid("a's guard");
    let cmdline = std::fs::read(format!("/proc/{old}/cmdline")).unwrap();
    assert!(
        String::from_utf8_lossy(&cmdline).contains("region-guard"),
        "{}",
        String::from_utf8_lossy(&cmdline)
    );
    *t0_slot.lock().unwrap() = Some(Instant::now());
    kill(Pid::from_raw(old), Signal::SIGKILL).unwrap();

    let fenced = wait_until(
        "a's database to stop taking writes",
        Duration::from_secs(10),
        &demo,
        || async { !demo.takes_writes(&a).await },
    )
    .await;
    let replaced = wait_until("a new guard", Duration::from_secs(20), &demo, || async {
        std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|t| t.trim().parse::<i32>().ok())
            .is_some_and(|p| {
                p != old
                    && std::fs::read(format!("/proc/{p}/cmdline"))
                        .is_ok_and(|c| String::from_utf8_lossy(&c).contains("region-guard"))
            })
    })
    .await;
    let serves = wait_until(
        "a region to serve through DNS",
        Duration::from_secs(60),
        &demo,
        || async { demo.serves_from("a").await || demo.serves_from("b").await },
    )
    .await;
    stop_sampling.cancel();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let samples = samples.lock().unwrap().clone();
    let both: Vec<&Sample> = samples.iter().filter(|s| s.a && s.b).collect();
    assert!(both.is_empty(), "a and b both took writes: {both:?}");
    let journal = demo.agent_journal("a");
    assert!(
        journal
            .iter()
            .any(|e| e.kind == lifeboat_core::JournalKind::Alert
                && e.detail.contains(&format!("region guard (pid {old})"))
                && e.detail.contains("starting a new guard")),
        "{journal:#?}"
    );
    eprintln!(
        "guard kill -9: a stopped taking writes within {} ms, a new guard ran after {} ms, the app served again {} ms later",
        fenced.as_millis(),
        replaced.as_millis(),
        serves.as_millis()
    );
}
