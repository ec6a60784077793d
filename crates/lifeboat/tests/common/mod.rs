//! Test harness: real `lifeboat` processes on loopback (and in network namespaces),
//! with configs written to a temp dir, ports found free, and everything killed on
//! Drop — even when the test fails.
#![allow(dead_code, clippy::unwrap_used)]

use lifeboat_api::ApiClient;
use lifeboat_api::types::ControllerStatus;
use lifeboat_core::JournalEntry;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

pub mod etcd;

pub const TOKEN: &str = "test-token-7f3a";

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_lifeboat")
}

/// A port free on `ip` right now (the config must name ports before the processes
/// start; docs/architecture.md allows "a port found free"). Chosen below Linux's ephemeral range
/// (32768+), so the many outgoing connections of tests running in parallel cannot take
/// it between this check and the process's bind.
pub fn free_port(ip: &str) -> u16 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let ip: IpAddr = ip.parse().unwrap();
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64
        ^ (u64::from(std::process::id()) << 20)
        ^ SEQ.fetch_add(0x9e37_79b9, Ordering::Relaxed);
    let mut x = seed | 1;
    for _ in 0..1000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let port = 20_000 + (x % 12_000) as u16;
        if TcpListener::bind((ip, port)).is_ok() && std::net::UdpSocket::bind((ip, port)).is_ok() {
            return port;
        }
    }
    panic!("no free port on {ip} in 20000..32000")
}

/// A child process killed on Drop: SIGTERM first (so an agent stops its services),
/// SIGKILL if it does not exit within a few seconds.
pub struct Proc {
    pub name: String,
    pub child: Child,
    pub lines: std::sync::Arc<Mutex<Vec<String>>>,
    log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> Proc {
        let err = std::fs::File::create(log).unwrap();
        cmd.stdout(Stdio::piped()).stderr(err).stdin(Stdio::null());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {name}: {e}"));
        let out = child.stdout.take().unwrap();
        let lines = std::sync::Arc::new(Mutex::new(Vec::new()));
        let l2 = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                l2.lock().unwrap().push(line);
            }
        });
        Proc {
            name: name.to_owned(),
            child,
            lines,
            log: log.to_path_buf(),
        }
    }

    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).unwrap()
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig);
    }

    /// Wait for a stdout line starting with `prefix` and return the rest. Fails at once,
    /// with the end of the process's log, if the process exits first.
    pub async fn wait_line(&mut self, prefix: &str, timeout: Duration) -> String {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(l) = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.starts_with(prefix))
            {
                return l[prefix.len()..].trim().to_owned();
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "{} exited ({status}) before printing {prefix:?}; its log:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} never printed {prefix:?}; its log:\n{}",
                self.name,
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    pub fn kill9(&mut self) {
        self.signal(nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        self.signal(nix::sys::signal::Signal::SIGCONT);
        self.signal(nix::sys::signal::Signal::SIGTERM);
        // Up to 30 s: a demo stops its agents and database servers before exiting, and
        // a SIGKILL would leave those behind.
        for _ in 0..600 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One region of a test deployment.
#[derive(Clone, Debug)]
pub struct RegionSpec {
    pub name: String,
    /// Address the agent and the app bind.
    pub ip: String,
    pub agent_port: u16,
    pub app_port: u16,
}

pub struct Deployment {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub ctrl_addr: String,
    pub regions: Vec<RegionSpec>,
    pub procs: BTreeMap<String, Proc>,
    pub dns_addr: Option<String>,
    /// Several controllers on etcd: (member name, API address), in config order.
    pub members: Vec<(String, String)>,
}

pub struct Options {
    pub ctrl_ip: String,
    pub regions: Vec<(String, String)>,
    /// Fixed (agent, app) ports for regions whose address is not bindable here
    /// (inside a network namespace of their own, where every port is free).
    pub fixed_ports: BTreeMap<String, (u16, u16)>,
    pub failover_extra: String,
    /// Non-empty: `[controller] store = "etcd"` on these endpoints, with
    /// `controllers` members c1, c2 … on 127.0.0.1.
    pub etcd_endpoints: Vec<String>,
    /// More `[controller.etcd]` lines (TLS files, credentials).
    pub etcd_extra: String,
    pub controllers: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            ctrl_ip: "127.0.0.1".into(),
            regions: vec![
                ("a".into(), "127.0.1.1".into()),
                ("b".into(), "127.0.2.1".into()),
            ],
            fixed_ports: BTreeMap::new(),
            failover_extra: String::new(),
            etcd_endpoints: Vec::new(),
            etcd_extra: String::new(),
            controllers: 0,
        }
    }
}

impl Deployment {
    /// Write a config: a controller, two regions, each with a pilot-light HTTP app
    /// (python's http.server) and an HTTP check on it; checks every 500 ms,
    /// threshold 2, lease ttl 2 s — the figures of issue 2's benchmark.
    pub fn new(opts: Options) -> Deployment {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("token"), TOKEN).unwrap();
        let members: Vec<(String, String)> = (1..=opts.controllers)
            .map(|i| {
                (
                    format!("c{i}"),
                    format!("{}:{}", opts.ctrl_ip, free_port(&opts.ctrl_ip)),
                )
            })
            .collect();
        let ctrl_addr = match members.first() {
            Some((_, addr)) => addr.clone(),
            None => format!("{}:{}", opts.ctrl_ip, free_port(&opts.ctrl_ip)),
        };
        let mut cfg = format!(
            "[deployment]\nname = \"test\"\n\n[controller]\napi_addr = \"{ctrl_addr}\"\ndns_addr = \"127.0.0.1:0\"\nstate_dir = \"{}\"\n\n[auth]\ntoken_file = \"{}\"\n\n[failover]\nlease_ttl = \"2s\"\nlease_margin = \"500ms\"\nreport_ttl = \"2s\"\n{}\n",
            d.join("controller").display(),
            d.join("token").display(),
            opts.failover_extra,
        );
        if !members.is_empty() {
            // The [controller] table ends at its blank line: the etcd keys go there.
            let at = cfg.find("\n\n[auth]").unwrap();
            let mut etcd = format!(
                "\nstore = \"etcd\"\n\n[controller.etcd]\nendpoints = [{}]\nprefix = \"/lifeboat/test-{}\"\n",
                opts.etcd_endpoints
                    .iter()
                    .map(|e| format!("\"{e}\""))
                    .collect::<Vec<_>>()
                    .join(", "),
                std::process::id()
            );
            etcd.push_str(&opts.etcd_extra);
            for (name, addr) in &members {
                etcd.push_str(&format!(
                    "\n[[controller.members]]\nname = \"{name}\"\napi_addr = \"{addr}\"\ndns_addr = \"127.0.0.1:0\"\n"
                ));
            }
            cfg.insert_str(at, &etcd);
        }
        let mut regions = Vec::new();
        for (i, (name, ip)) in opts.regions.iter().enumerate() {
            let (agent_port, app_port) = opts
                .fixed_ports
                .get(name)
                .copied()
                .unwrap_or_else(|| (free_port(ip), free_port(ip)));
            let spec = RegionSpec {
                name: name.clone(),
                ip: ip.clone(),
                agent_port,
                app_port,
            };
            let www = d.join(format!("www-{name}"));
            std::fs::create_dir_all(&www).unwrap();
            std::fs::write(www.join("index.html"), format!("region {name}\n")).unwrap();
            let pidfile = d.join(format!("app-{name}.pid"));
            let poison = d.join(format!("poison-{name}"));
            cfg.push_str(&format!(
                "[regions.{name}]\nagent_addr = \"{ip}:{}\"\naddress = \"{ip}\"\nrole = \"{}\"\n\n[[regions.{name}.services]]\nname = \"web\"\nworkdir = \"{}\"\nstop_timeout = \"2s\"\ncommand = [\"sh\", \"-c\", \"echo $$ > {}; test -e {} && exit 1; exec python3 -m http.server --bind {ip} {}\"]\n\n[checks.web-{name}]\ntype = \"http\"\nregion = \"{name}\"\nurl = \"http://{ip}:{}/\"\nsearch = \"region {name}\"\ninterval = \"500ms\"\ntimeout = \"400ms\"\nfailure_threshold = 2\n\n",
                spec.agent_port,
                if i == 0 { "active" } else { "standby" },
                www.display(),
                pidfile.display(),
                poison.display(),
                spec.app_port,
                spec.app_port,
            ));
            cfg.push_str(&format!(
                "[[dns.records]]\nname = \"app\"\ntype = \"A\"\npolicy = \"failover\"\nfailover = \"{}\"\nregion = \"{name}\"\nttl = \"1s\"\n\n",
                if i == 0 { "primary" } else { "secondary" }
            ));
            regions.push(spec);
        }
        cfg.push_str("[dns]\nzone = \"test.lifeboat.\"\nttl = \"1s\"\n\n");
        if members.is_empty() {
            cfg.push_str("[[dns.nameservers]]\nname = \"ns1\"\naddress = \"127.0.0.1\"\n\n");
        }
        // Several controllers: each answers at a name of its own (the NS records list
        // every one).
        for (name, _) in &members {
            cfg.push_str(&format!(
                "[[dns.nameservers]]\nname = \"ns-{name}\"\naddress = \"127.0.0.1\"\nmember = \"{name}\"\n\n"
            ));
        }
        let config = d.join("lifeboat.toml");
        std::fs::write(&config, cfg).unwrap();
        Deployment {
            dir,
            config,
            ctrl_addr,
            regions,
            procs: BTreeMap::new(),
            dns_addr: None,
            members,
        }
    }

    /// Start controller `name` of the members (`lifeboat controller --member`).
    pub async fn start_member(&mut self, name: &str) {
        let mut cmd = self.command(None);
        cmd.args(["controller", "--config"])
            .arg(&self.config)
            .args(["--member", name])
            .env("LIFEBOAT_LOG", "info");
        let proc_name = format!("controller-{name}");
        let mut p = Proc::spawn(&proc_name, cmd, &self.log(&proc_name));
        p.wait_line("listening api ", Duration::from_secs(30)).await;
        let dns = p.wait_line("listening dns ", Duration::from_secs(5)).await;
        if self.dns_addr.is_none() {
            self.dns_addr = Some(dns);
        }
        self.procs.insert(proc_name, p);
    }

    /// A client of one member only.
    pub fn member_client(&self, name: &str) -> ApiClient {
        let (_, addr) = self.members.iter().find(|(n, _)| n == name).unwrap();
        ApiClient::new(
            format!("http://{addr}"),
            Some(TOKEN.into()),
            Duration::from_secs(2),
        )
    }

    /// The member whose own status says it leads, with that status.
    pub async fn leader(&self) -> Option<(String, ControllerStatus)> {
        for (name, _) in &self.members {
            if let Ok(st) = self.member_client(name).status().await
                && st.leadership.as_ref().is_some_and(|l| l.leading)
            {
                return Some((name.clone(), st));
            }
        }
        None
    }

    pub fn log(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.log"))
    }

    pub fn command(&self, netns: Option<&str>) -> Command {
        match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, bin()]);
                c
            }
            None => Command::new(bin()),
        }
    }

    pub async fn start_controller(&mut self) {
        let mut cmd = self.command(None);
        cmd.args(["controller", "--config"])
            .arg(&self.config)
            .env("LIFEBOAT_LOG", "info");
        let mut p = Proc::spawn("controller", cmd, &self.log("controller"));
        p.wait_line("listening api ", Duration::from_secs(30)).await;
        self.dns_addr = Some(p.wait_line("listening dns ", Duration::from_secs(5)).await);
        self.procs.insert("controller".into(), p);
    }

    /// `dig @dns app.test.lifeboat. A +short` over UDP (or TCP).
    pub fn dig_app(&self, tcp: bool) -> String {
        let addr = self.dns_addr.as_ref().expect("controller started");
        let (ip, port) = addr.rsplit_once(':').unwrap();
        let mut cmd = Command::new("dig");
        cmd.arg(format!("@{ip}")).args([
            "-p",
            port,
            "app.test.lifeboat.",
            "A",
            "+short",
            "+time=2",
            "+tries=1",
        ]);
        if tcp {
            cmd.arg("+tcp");
        }
        let out = cmd
            .output()
            .expect("dig is installed by scripts/test (Debian package dnsutils)");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    pub async fn start_agent(&mut self, region: &str, netns: Option<&str>) {
        let mut cmd = self.command(netns);
        cmd.args(["agent", "--config"])
            .arg(&self.config)
            .args(["--region", region])
            .env("LIFEBOAT_LOG", "info");
        let name = format!("agent-{region}");
        let mut p = Proc::spawn(&name, cmd, &self.log(&name));
        p.wait_line("listening agent ", Duration::from_secs(30))
            .await;
        self.procs.insert(name, p);
    }

    pub fn proc(&mut self, name: &str) -> &mut Proc {
        self.procs.get_mut(name).unwrap()
    }

    pub fn client(&self) -> ApiClient {
        if self.members.is_empty() {
            return ApiClient::new(
                format!("http://{}", self.ctrl_addr),
                Some(TOKEN.into()),
                Duration::from_secs(3),
            );
        }
        ApiClient::any_of(
            self.members
                .iter()
                .map(|(_, a)| format!("http://{a}"))
                .collect(),
            Some(TOKEN.into()),
            Duration::from_secs(3),
        )
    }

    pub fn agent_client(&self, region: &str) -> ApiClient {
        let r = self.region(region);
        ApiClient::new(
            format!("http://{}:{}", r.ip, r.agent_port),
            Some(TOKEN.into()),
            Duration::from_secs(3),
        )
    }

    pub fn region(&self, name: &str) -> &RegionSpec {
        self.regions.iter().find(|r| r.name == name).unwrap()
    }

    pub fn app_url(&self, region: &str) -> String {
        let r = self.region(region);
        format!("http://{}:{}/", r.ip, r.app_port)
    }

    /// Make region's app crash and stay down: a poison file makes every restart by
    /// the supervisor exit at once, then SIGKILL the running one.
    pub fn kill_app(&self, region: &str) {
        std::fs::write(self.dir.path().join(format!("poison-{region}")), b"").unwrap();
        if let Some(pid) = self.app_pid(region) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }

    pub fn app_pid(&self, region: &str) -> Option<i32> {
        std::fs::read_to_string(self.dir.path().join(format!("app-{region}.pid")))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// The controller's status; with several, the leader's (followers know less).
    pub async fn status(&self) -> Option<ControllerStatus> {
        if self.members.is_empty() {
            return self.client().status().await.ok();
        }
        // A term can end on one etcd transport error (its outcome unknown) and the
        // next leader follows within a follow period: give it a few seconds.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            if let Some((_, st)) = self.leader().await {
                return Some(st);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn journal(&self) -> Vec<JournalEntry> {
        self.client().journal(0).await.unwrap_or_default()
    }

    /// Poll `f` until it returns Some, or fail with `what` after `timeout`.
    pub async fn wait_for<T, F, Fut>(&self, what: &str, timeout: Duration, mut f: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(v) = f().await {
                return v;
            }
            if tokio::time::Instant::now() >= deadline {
                let journal = self.journal().await;
                let lines: Vec<String> = journal
                    .iter()
                    .map(|e| format!("{} {} {:?} {}", e.seq, e.kind.as_str(), e.region, e.detail))
                    .collect();
                panic!(
                    "timed out waiting for {what}\njournal:\n{}\ncontroller log:\n{}",
                    lines.join("\n"),
                    std::fs::read_to_string(self.log("controller"))
                        .unwrap_or_default()
                        .lines()
                        .rev()
                        .take(30)
                        .collect::<Vec<_>>()
                        .join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Wait until every agent reports.
    pub async fn wait_all_reporting(&self, timeout: Duration) {
        self.wait_for("every agent reporting", timeout, || async {
            let st = self.status().await?;
            st.regions
                .iter()
                .all(|r| r.last_report_ms.is_some_and(|ms| ms < 1500))
                .then_some(())
        })
        .await
    }

    /// Wait until `region` is active, verified (phase steady), healthy and reporting.
    pub async fn wait_active(&self, region: &str, timeout: Duration) -> ControllerStatus {
        self.wait_for(&format!("{region} active and steady"), timeout, || async {
            let st = self.status().await?;
            let ok = st.active.as_ref().map(|r| r.as_str()) == Some(region)
                && st.phase == "steady"
                && st.regions.iter().any(|r| {
                    r.name.as_str() == region
                        && r.agent_active
                        && r.last_report_ms.is_some_and(|ms| ms < 1500)
                        && r.health == lifeboat_core::HealthStatus::Healthy
                });
            ok.then_some(st)
        })
        .await
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        if std::env::var_os("LIFEBOAT_KEEP_TEST_DIR").is_some() {
            eprintln!("keeping {}", self.dir.path().display());
            let keep = tempfile::tempdir().unwrap();
            let old = std::mem::replace(&mut self.dir, keep);
            let _ = old.keep();
        }
        // Agents first (they stop their services), then the controller.
        let names: Vec<String> = self.procs.keys().cloned().collect();
        for n in names.iter().filter(|n| n.starts_with("agent")) {
            self.procs.remove(n);
        }
        self.procs.clear();
        // Apps whose agent was killed hard are orphans: kill them by pid file.
        for r in &self.regions {
            if let Some(pid) = self.app_pid(&r.name) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

/// HTTP GET returning (status, body), or None if nothing answers.
pub async fn http_get(url: &str) -> Option<(u16, String)> {
    let c = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .no_proxy()
        .build()
        .ok()?;
    let r = c.get(url).send().await.ok()?;
    let status = r.status().as_u16();
    Some((status, r.text().await.ok()?))
}

/// A network namespace joined to the host by a veth pair: the host side gets
/// `198.18.N.1/30`, the namespace side `198.18.N.2/30` (RFC 2544 test addresses).
/// Removed on Drop.
pub struct NetNs {
    pub name: String,
    pub host_if: String,
    pub ns_if: String,
    pub guard_route: String,
    pub host_ip: String,
    pub ns_ip: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running ip {args:?}: {e}"));
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl NetNs {
    pub fn create() -> NetNs {
        let id = std::process::id() % 200 + 20;
        let name = format!("lbtest{}", std::process::id());
        let host_if = format!("lbh{id}");
        let ns_if = format!("lbn{id}");
        let host_ip = format!("198.18.{id}.1");
        let ns_ip = format!("198.18.{id}.2");
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        let _ = Command::new("ip").args(["link", "del", &host_if]).output();
        let guard_route = format!("198.18.{id}.0/24");
        let ns = NetNs {
            name: name.clone(),
            host_if: host_if.clone(),
            ns_if: ns_if.clone(),
            guard_route: guard_route.clone(),
            host_ip: host_ip.clone(),
            ns_ip: ns_ip.clone(),
        };
        // Whatever happens to the veth, traffic for the test prefix never leaves this
        // machine by the default route: it is unreachable unless the veth carries it.
        let _ = Command::new("ip")
            .args(["route", "del", "unreachable", &guard_route])
            .output();
        ip(&[
            "route",
            "add",
            "unreachable",
            &guard_route,
            "metric",
            "4000",
        ]);
        ip(&["netns", "add", &name]);
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if,
        ]);
        ip(&["link", "set", &ns_if, "netns", &name]);
        ip(&["addr", "add", &format!("{host_ip}/30"), "dev", &host_if]);
        ip(&["link", "set", &host_if, "up"]);
        ip(&[
            "netns",
            "exec",
            &name,
            "ip",
            "addr",
            "add",
            &format!("{ns_ip}/30"),
            "dev",
            &ns_if,
        ]);
        ip(&["netns", "exec", &name, "ip", "link", "set", &ns_if, "up"]);
        ip(&["netns", "exec", &name, "ip", "link", "set", "lo", "up"]);
        ns
    }

    /// Cut the namespace off (both directions), or join it again. The namespace's
    /// side goes down: the host keeps its route to the veth (packets die there).
    pub fn set_link(&self, up: bool) {
        ip(&[
            "netns",
            "exec",
            &self.name,
            "ip",
            "link",
            "set",
            &self.ns_if,
            if up { "up" } else { "down" },
        ]);
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
        let _ = Command::new("ip")
            .args(["route", "del", "unreachable", &self.guard_route])
            .output();
    }
}

pub fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

/// `lifeboat drill --config CONFIG ARGS --json`, its report and HTML page kept in
/// `dir`: its terminal output and JSON report (whatever its exit status: the
/// assertions read the report).
pub fn drill_report(dir: &Path, config: &str, args: &[&str]) -> (String, serde_json::Value) {
    let report = dir.join("drill.json");
    let _ = std::fs::remove_file(&report);
    let out = Command::new(bin())
        .args(["drill", "--config", config])
        .args(args)
        .arg("--json")
        .arg(&report)
        .arg("--html")
        .arg(dir.join("drill.html"))
        .env("LIFEBOAT_LOG", "warn")
        .output()
        .unwrap();
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    eprintln!("{text}");
    let r = std::fs::read(&report)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_else(|| panic!("the drill wrote no report: {text}"));
    (text, r)
}

/// The drill's one run of `scenario` (a controller kill or pause of `length_ms`): the
/// application kept acknowledging writes (no gap above 1 s, no write failed or left
/// without an answer), nothing failed over, the epoch and active region a are as
/// before, the deployment converged, and no database sample saw two primaries.
pub fn assert_witness_fault_was_no_outage(
    text: &str,
    r: &serde_json::Value,
    scenario: &str,
    length_ms: u64,
) {
    let run = &r["runs"][0];
    assert_eq!(run["scenario"], scenario, "{text}");
    assert_eq!(run["fault_length_ms"], length_ms, "{text}");
    let gap = run["unavailability_ms"].as_u64().unwrap();
    assert!(
        gap <= 1000,
        "{scenario}: writes failed for {gap} ms while the witness was down: {text}"
    );
    for (key, want) in [
        (&run["writes"]["failed"], serde_json::json!(0)),
        (&run["writes"]["unknown"], serde_json::json!(0)),
        (&run["failed_over"], serde_json::json!(false)),
        (&run["active_before"], serde_json::json!("a")),
        (&run["new_active"], serde_json::json!("a")),
        (&run["converged"], serde_json::json!(true)),
        (&run["dual_primary_samples"], serde_json::json!(0)),
        (&run["lost_acknowledged_writes"], serde_json::json!(0)),
        (&run["epoch_after"], run["epoch_before"].clone()),
    ] {
        assert_eq!(*key, want, "{scenario}: {text}");
    }
}

/// The end of every log of the demo's processes, for a failed assertion: a fault
/// that went wrong in CI must be readable from CI's output alone.
pub fn demo_log_tails(demo_dir: &Path) -> String {
    let mut out = String::new();
    let dir = demo_dir.join("logs");
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    names.sort();
    for path in names {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| !l.contains("lifeboat_health::prober"))
            .collect();
        out.push_str(&format!(
            "\n--- {} (last {} lines) ---\n{}\n",
            path.display(),
            lines.len().min(60),
            lines[lines.len().saturating_sub(60)..].join("\n")
        ));
    }
    out
}

/// A temp dir for one test, removed when it drops unless LIFEBOAT_KEEP_TEST_DIR is
/// set (then its path is printed and it stays, for a look after a failure).
pub fn test_dir() -> tempfile::TempDir {
    let mut dir = tempfile::tempdir().unwrap();
    if std::env::var_os("LIFEBOAT_KEEP_TEST_DIR").is_some() {
        eprintln!("keeping {}", dir.path().display());
        dir.disable_cleanup(true);
    }
    dir
}

/// Start `lifeboat demo --dir` in a temp dir; wait for its banner; return the temp dir,
/// the demo's directory, the process, the config path and the config text.
pub async fn start_demo() -> (tempfile::TempDir, std::path::PathBuf, Proc, String, String) {
    let dir = test_dir();
    let demo_dir = dir.path().join("demo");
    let mut cmd = Command::new(bin());
    cmd.args(["demo", "--dir"])
        .arg(&demo_dir)
        .env("LIFEBOAT_LOG", "info");
    let mut demo = Proc::spawn("demo", cmd, &dir.path().join("demo.log"));
    let config_path = demo.wait_line("  config", Duration::from_secs(120)).await;
    let config = std::fs::read_to_string(&config_path).unwrap();
    (dir, demo_dir, demo, config_path, config)
}

/// Ctrl-C a `lifeboat demo` and wait (bounded) until it has exited; nothing it started
/// (servers restarted by agents during a drill, etcd members) may be left running.
pub async fn stop_demo(mut demo: Proc, demo_dir: &Path) {
    demo.signal(nix::sys::signal::Signal::SIGINT);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while demo.child.try_wait().unwrap().is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "demo did not stop on Ctrl-C"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let needle = demo_dir.display().to_string();
    let left: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let c = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let c = String::from_utf8_lossy(&c).replace('\0', " ");
            c.contains(&needle).then(|| format!("{pid}: {c}"))
        })
        .collect();
    assert!(
        left.is_empty(),
        "still running after the demo stopped: {left:#?}"
    );
}
