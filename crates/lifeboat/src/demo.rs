//! `lifeboat demo`: the whole reference architecture on one machine.
//!
//! It starts, on loopback, a complete two-region deployment in a fresh directory: the
//! controller with its DNS, one agent per region (each region on its own loopback
//! address, 127.0.1.1 and 127.0.2.1, so a DNS answer moves a client between them while
//! the port stays the same), a database primary and replica (PostgreSQL with
//! synchronous replication by default, or MariaDB with semi-sync), one local object
//! store per region with replication, and the sample app as each region's pilot-light
//! service. It prints what runs where and the config path — so `lifeboat status`,
//! `failover`, `drill` and `objects` can be pointed at it — and stays up until Ctrl-C,
//! then stops everything and removes the directory. `--drill` runs a drill instead.
//!
//! A region whose agent was killed (a drill's region outage or agent kill) is started
//! again only when asked: the drill's `outage_stop` / `agent_start` command touches
//! `control/restore-<region>`, and the agent is started with the same command line.
//!
//! The controller is supervised the way systemd's `Restart=always` would: when it
//! exits (a kill -9 included) it is started again after [`CONTROLLER_RESTART_DELAY`],
//! unless `--no-restart-controller` was given or `control/hold-controller` exists (the
//! drill's controller-kill creates it so that the witness stays down for the fault's
//! length, like `systemctl stop`); `control/start-controller` starts it at once.

use crate::cli::DrillArgs;
use anyhow::{Context, Result, bail};
use lifeboat_config::Config;
use std::collections::BTreeMap;
use std::net::{IpAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::Duration;
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// postgres (synchronous replication) or mariadb (semi-synchronous).
    #[arg(long, default_value = "postgres")]
    pub database: String,
    /// Replicate the database asynchronously instead (the drill will show the RPO).
    #[arg(long = "async")]
    pub asynchronous: bool,
    /// Keep the deployment in this directory instead of a temporary one (kept on exit).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Run a drill against the demo, print its report and exit.
    #[arg(long)]
    pub drill: bool,
    /// Leave a controller that exited down (by default it is started again after a
    /// second, as systemd's Restart=always would).
    #[arg(long)]
    pub no_restart_controller: bool,
    /// 3 or 5: that many controllers on a three- or five-member etcd cluster (Debian
    /// package etcd-server; data under the demo's directory), one leading. Needs a
    /// lifeboat built with `--features etcd`.
    #[arg(long, default_value_t = 1)]
    pub controllers: usize,
    #[command(flatten)]
    pub drill_args: DrillArgs,
}

const REGIONS: [(&str, &str); 2] = [("a", "127.0.1.1"), ("b", "127.0.2.1")];

/// How long a controller that exited stays down before the demo starts it again
/// (systemd's RestartSec): long enough not to spin on a controller that cannot start.
const CONTROLLER_RESTART_DELAY: Duration = Duration::from_secs(1);

/// Ports chosen once, free on every address that binds them.
struct Ports {
    api: u16,
    dns: u16,
    app: u16,
    agent: u16,
    db: BTreeMap<&'static str, u16>,
    /// `--controllers N` > 1: the API and DNS ports of controllers c2..cN (c1 has
    /// `api` and `dns`), and each etcd member's client and peer ports.
    more_controllers: Vec<(u16, u16)>,
    etcd: Vec<(u16, u16)>,
}

impl Ports {
    /// (name, API port, DNS port) of every controller.
    fn controllers(&self) -> Vec<(String, u16, u16)> {
        let mut v = vec![("c1".to_owned(), self.api, self.dns)];
        for (i, (api, dns)) in self.more_controllers.iter().enumerate() {
            v.push((format!("c{}", i + 2), *api, *dns));
        }
        v
    }
}

/// A port free on every one of `ips` (UDP too when asked), chosen below Linux's
/// ephemeral range (32768+): outgoing connections never take it between this check and
/// the bind of the process that will own it.
fn free_on_all(ips: &[&str], udp_too: bool) -> Result<u16> {
    let addrs: Vec<IpAddr> = ips.iter().map(|ip| ip.parse()).collect::<Result<_, _>>()?;
    let mut x = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
        ^ (u64::from(std::process::id()) << 20)
        | 1;
    for _ in 0..2000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let port = 20_000 + (x % 12_000) as u16;
        let ok = addrs.iter().all(|ip| {
            TcpListener::bind((*ip, port)).is_ok()
                && (!udp_too || UdpSocket::bind((*ip, port)).is_ok())
        });
        if ok {
            return Ok(port);
        }
    }
    bail!("no port in 20000..32000 is free on {}", ips.join(", "))
}

fn choose_ports(controllers: usize) -> Result<Ports> {
    let region_ips: Vec<&str> = REGIONS.iter().map(|(_, ip)| *ip).collect();
    // The ports are not held between checks, so make sure no two came out equal.
    for _ in 0..20 {
        let mut db = BTreeMap::new();
        for (r, ip) in REGIONS {
            db.insert(r, free_on_all(&[ip], false)?);
        }
        let p = Ports {
            api: free_on_all(&["127.0.0.1"], false)?,
            // The controller's DNS and each agent's secondary use the same port.
            dns: free_on_all(&["127.0.0.1", "127.0.1.1", "127.0.2.1"], true)?,
            app: free_on_all(&region_ips, false)?,
            agent: free_on_all(&region_ips, false)?,
            db,
            more_controllers: (1..controllers)
                .map(|_| {
                    Ok((
                        free_on_all(&["127.0.0.1"], false)?,
                        free_on_all(&["127.0.0.1"], true)?,
                    ))
                })
                .collect::<Result<_>>()?,
            etcd: (0..if controllers > 1 { controllers } else { 0 })
                .map(|_| {
                    Ok((
                        free_on_all(&["127.0.0.1"], false)?,
                        free_on_all(&["127.0.0.1"], false)?,
                    ))
                })
                .collect::<Result<_>>()?,
        };
        let mut all = vec![p.api, p.dns, p.app, p.agent];
        all.extend(p.db.values());
        all.extend(p.more_controllers.iter().flat_map(|(a, d)| [*a, *d]));
        all.extend(p.etcd.iter().flat_map(|(c, q)| [*c, *q]));
        let n = all.len();
        all.sort_unstable();
        all.dedup();
        if all.len() == n {
            return Ok(p);
        }
    }
    bail!("could not choose distinct free ports")
}

struct Layout {
    dir: PathBuf,
    config: PathBuf,
    control: PathBuf,
    logs: PathBuf,
}

impl Layout {
    fn new(dir: PathBuf) -> Result<Layout> {
        let l = Layout {
            config: dir.join("lifeboat.toml"),
            control: dir.join("control"),
            logs: dir.join("logs"),
            dir,
        };
        for d in [&l.dir, &l.control, &l.logs] {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        // The database server runs as the postgres user when we are root: it must be
        // able to reach its data directory inside ours.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&l.dir, std::fs::Permissions::from_mode(0o755))?;
        Ok(l)
    }
}

fn exe() -> Result<PathBuf> {
    std::env::current_exe().context("finding the lifeboat binary")
}

fn toml_str(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn write_secret(path: &Path, value: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, value).with_context(|| format!("writing {}", path.display()))?;
    // Readable by the postgres / mysql server user too (the demo's own throwaway secrets).
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))?;
    Ok(())
}

fn random_secret() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    let n = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("demo-{:x}{:x}", n, std::process::id())
}

fn database_section(args: &DemoArgs, l: &Layout, p: &Ports) -> Result<String> {
    let mut s = String::new();
    match args.database.as_str() {
        "postgres" | "postgresql" => {
            s.push_str(&format!(
                "[database]\nengine = \"postgres\"\nmode = \"{}\"\nmax_lag_bytes = 67108864\n\n[database.postgres]\ndbname = \"postgres\"\nwal_keep_size_mb = 256\n\n",
                if args.asynchronous { "async" } else { "sync" }
            ));
            for (r, ip) in REGIONS {
                s.push_str(&format!(
                    "[database.postgres.regions.{r}]\nhost = \"{ip}\"\nport = {}\ndata_dir = {}\nuser = \"postgres\"\npassword_file = {}\nreplication_user = \"replicator\"\nreplication_password_file = {}\n\n",
                    p.db[r],
                    toml_str(&l.dir.join(format!("pg-{r}")).display().to_string()),
                    toml_str(&l.dir.join("db-password").display().to_string()),
                    toml_str(&l.dir.join("repl-password").display().to_string()),
                ));
            }
        }
        "mariadb" | "mysql" => {
            s.push_str(&format!(
                "[database]\nengine = \"mariadb\"\nmode = \"{}\"\n\n[database.mysql]\nreplication_user = \"replicator\"\nreplication_password_file = {}\n\n",
                if args.asynchronous { "async" } else { "sync" },
                toml_str(&l.dir.join("repl-password").display().to_string()),
            ));
            for (i, (r, ip)) in REGIONS.iter().enumerate() {
                s.push_str(&format!(
                    "[database.mysql.regions.{r}]\nhost = \"{ip}\"\nport = {}\ndatadir = {}\nuser = \"root\"\npassword_file = {}\nserver_id = {}\n\n",
                    p.db[r],
                    toml_str(&l.dir.join(format!("mariadb-{r}")).display().to_string()),
                    toml_str(&l.dir.join("db-password").display().to_string()),
                    i + 1,
                ));
            }
        }
        other => bail!("--database {other}: use postgres or mariadb"),
    }
    Ok(s)
}

fn write_config(args: &DemoArgs, l: &Layout, p: &Ports) -> Result<()> {
    let exe = exe()?;
    let d = |name: &str| l.dir.join(name).display().to_string();
    let mut c = format!(
        "# Generated by `lifeboat demo`: a two-region deployment on loopback.\n\n[deployment]\nname = \"demo\"\n\n[controller]\napi_addr = \"127.0.0.1:{}\"\ndns_addr = \"127.0.0.1:{}\"\nstate_dir = {}\n\n[auth]\ntoken_file = {}\n\n[failover]\nmode = \"automatic\"\nlease_ttl = \"2s\"\nlease_margin = \"500ms\"\nhold_down = \"0s\"\nreport_ttl = \"2s\"\nfailback = \"manual\"\n\n",
        p.api,
        p.dns,
        toml_str(&d("controller")),
        toml_str(&d("token")),
    );
    if args.controllers > 1 {
        // Into the [controller] table, which ends at its blank line.
        let at = c
            .find("\n\n[auth]")
            .context("the generated [controller] table")?;
        let mut etcd = format!(
            "\nstore = \"etcd\"\n\n[controller.etcd]\nendpoints = [{}]\nprefix = \"/lifeboat/demo\"\n",
            p.etcd
                .iter()
                .map(|(client, _)| format!("\"http://127.0.0.1:{client}\""))
                .collect::<Vec<_>>()
                .join(", ")
        );
        for (name, api, dns) in p.controllers() {
            etcd.push_str(&format!(
                "\n[[controller.members]]\nname = \"{name}\"\napi_addr = \"127.0.0.1:{api}\"\ndns_addr = \"127.0.0.1:{dns}\"\n"
            ));
        }
        c.insert_str(at, &etcd);
    }
    for (i, (r, ip)) in REGIONS.iter().enumerate() {
        let poison = l.control.join(format!("poison-app-{r}"));
        let app = format!(
            "test -e {} && exit 1; exec {} sample-app --bind {ip}:{} --region {r} --discovery http://127.0.0.1:{}/v1/discovery --objects-dir {} --db-password-file {}",
            poison.display(),
            exe.display(),
            p.app,
            p.api,
            d(&format!("objects-{r}")),
            d("db-password"),
        );
        c.push_str(&format!(
            "[regions.{r}]\nagent_addr = \"{ip}:{}\"\naddress = \"{ip}\"\nrole = \"{}\"\n\n[[regions.{r}.services]]\nname = \"sample-app\"\nmode = \"pilot-light\"\nstop_timeout = \"3s\"\ncommand = [\"sh\", \"-c\", {}]\n\n[regions.{r}.services.env]\nLIFEBOAT_LOG = \"warn\"\n\n",
            p.agent,
            if i == 0 { "active" } else { "standby" },
            toml_str(&app),
        ));
        c.push_str(&format!(
            "[checks.app-{r}]\ntype = \"http\"\nregion = \"{r}\"\nurl = \"http://{ip}:{}/healthz\"\ninterval = \"500ms\"\ntimeout = \"400ms\"\nfailure_threshold = 2\n\n",
            p.app
        ));
    }
    c.push_str("[dns]\nzone = \"demo.lifeboat.\"\nttl = \"1s\"\n\n[[dns.nameservers]]\nname = \"ns1\"\naddress = \"127.0.0.1\"\n\n");
    // Each agent serves the zone too, from the last routing table it saw: names
    // resolve while the witness is lost (rule 7 keeps the region serving).
    for (r, ip) in REGIONS {
        c.push_str(&format!(
            "[[dns.nameservers]]\nname = \"ns-{r}\"\naddress = \"{ip}\"\nregion = \"{r}\"\nlisten = \"{ip}:{}\"\n\n",
            p.dns
        ));
    }
    for name in ["app", "db"] {
        for (i, (r, _)) in REGIONS.iter().enumerate() {
            c.push_str(&format!(
                "[[dns.records]]\nname = \"{name}\"\ntype = \"A\"\npolicy = \"failover\"\nfailover = \"{}\"\nregion = \"{r}\"\nttl = \"1s\"\n\n",
                if i == 0 { "primary" } else { "secondary" }
            ));
        }
    }
    c.push_str("[objects]\nreconcile_interval = \"10s\"\nlatency_alert = \"30s\"\n\n");
    for (r, _) in REGIONS {
        c.push_str(&format!(
            "[objects.stores.{r}]\ntype = \"local\"\npath = {}\n\n",
            toml_str(&d(&format!("objects-{r}")))
        ));
    }
    c.push_str(&database_section(args, l, p)?);
    c.push_str(&format!(
        "[drill]\napp_name = \"app.demo.lifeboat.\"\napp_port = {}\nrate = 20\n\n",
        p.app
    ));
    for (r, ip) in REGIONS {
        let kill_region = format!(
            "kill -9 $(cat {ctl}/agent-{r}.pid) 2>/dev/null; pkill -9 -f '[s]ample-app --bind {ip}:{app}' ; {db_kill}; true",
            ctl = l.control.display(),
            app = p.app,
            db_kill = db_kill_command(args, l, r),
        );
        let agent_pid = format!("$(cat {}/agent-{r}.pid)", l.control.display());
        c.push_str(&format!(
            "[drill.regions.{r}]\noutage_start = {}\noutage_stop = {}\ndb_crash = {}\ndb_restore = \"true\"\napp_crash = {}\napp_restore = {}\nagent_kill = {}\nagent_start = {}\nagent_pause = {}\nagent_resume = {}\n\n",
            toml_str(&kill_region),
            toml_str(&format!("touch {}/restore-{r}", l.control.display())),
            toml_str(&format!("{}; true", db_kill_command(args, l, r))),
            toml_str(&format!(
                "touch {}/poison-app-{r}; pkill -9 -f '[s]ample-app --bind {ip}:{}'; true",
                l.control.display(),
                p.app
            )),
            toml_str(&format!("rm -f {}/poison-app-{r}", l.control.display())),
            // The agent alone: its database, app and guard are left running.
            toml_str(&format!("kill -9 {agent_pid}")),
            // Started again by the demo's supervisor, with the same command line.
            toml_str(&format!("touch {}/restore-{r}", l.control.display())),
            toml_str(&format!("kill -STOP {agent_pid}")),
            toml_str(&format!("kill -CONT {agent_pid}")),
        ));
        if let Some(table) = partition_table(r) {
            // A real cut on loopback: drop every packet to or from this demo's ports on
            // the region's address. Only this demo's ports: other deployments on the
            // same machine (tests running side by side) use the same addresses.
            let db = p.db.get(r).copied().unwrap_or(p.app);
            let ports = format!("{}, {}, {db}, {}", p.app, p.agent, p.dns);
            c.push_str(&format!(
                "partition_start = {}\npartition_stop = {}\n\n",
                toml_str(&format!(
                    "nft add table inet {table} && nft add chain inet {table} out '{{ type filter hook output priority 0; }}' && nft add rule inet {table} out ip saddr {ip} th sport '{{ {ports} }}' drop && nft add rule inet {table} out ip daddr {ip} th dport '{{ {ports} }}' drop"
                )),
                toml_str(&format!("nft delete table inet {table} 2>/dev/null; true")),
            ));
        }
    }
    let ctl = l.control.display();
    // Several controllers: the drill's controller faults hit c1 (which may or may
    // not lead at that moment).
    let controller_pid = if args.controllers > 1 {
        format!("$(cat {ctl}/controller-c1.pid)")
    } else {
        format!("$(cat {ctl}/controller.pid)")
    };
    c.push_str(&format!(
        "[drill.controller]\nkill = {}\nstart = {}\npause = {}\nresume = {}\n",
        // Held down for the fault's length: the supervisor would restart it in a second.
        toml_str(&format!(
            "touch {ctl}/hold-controller && kill -9 {controller_pid}"
        )),
        toml_str(&format!(
            "rm -f {ctl}/hold-controller && touch {ctl}/start-controller"
        )),
        toml_str(&format!("kill -STOP {controller_pid}")),
        toml_str(&format!("kill -CONT {controller_pid}")),
    ));
    std::fs::write(&l.config, c).with_context(|| format!("writing {}", l.config.display()))
}

/// The nftables table a partition of `region` uses, when this demo can cut a region
/// off (root, and `nft` installed); None otherwise (the drill then says the
/// partition scenario is not configured).
fn partition_table(region: &str) -> Option<String> {
    let root = nix::unistd::Uid::effective().is_root();
    let nft = ["/usr/sbin/nft", "/sbin/nft", "/usr/bin/nft"]
        .iter()
        .any(|p| Path::new(p).exists());
    (root && nft).then(|| format!("lifeboat_demo_{}_{region}", std::process::id()))
}

/// Remove any partition a drill left behind (it undoes its own; this is the backstop).
fn remove_partitions() {
    for (r, _) in REGIONS {
        if let Some(table) = partition_table(r) {
            let _ = std::process::Command::new("nft")
                .args(["delete", "table", "inet", &table])
                .stderr(Stdio::null())
                .status();
        }
    }
}

fn db_kill_command(args: &DemoArgs, l: &Layout, r: &str) -> String {
    if args.database.starts_with("maria") || args.database == "mysql" {
        // lifeboat-mysql keeps the pid file beside the data directory
        // (`<datadir>.pid`), not inside it.
        format!(
            "kill -9 $(cat {}/mariadb-{r}.pid 2>/dev/null) 2>/dev/null",
            l.dir.display()
        )
    } else {
        format!(
            "kill -9 $(head -1 {}/pg-{r}/postmaster.pid 2>/dev/null) 2>/dev/null",
            l.dir.display()
        )
    }
}

/// The demo's child processes: the controller and one agent per region.
struct Children {
    layout: PathBuf,
    config: PathBuf,
    logs: PathBuf,
    procs: BTreeMap<String, Child>,
}

impl Children {
    async fn spawn(&mut self, name: &str, args: &[&str], wait_for: &str) -> Result<String> {
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
    fn spawn_etcd(&mut self, i: usize, members: &[(u16, u16)]) -> Result<()> {
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
    fn running(&mut self, name: &str) -> bool {
        match self.procs.get_mut(name) {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    async fn stop(&mut self, name: &str) {
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
const ETCD: &str = "/usr/bin/etcd";

fn check_prerequisites(args: &DemoArgs) -> Result<()> {
    match args.controllers {
        1 => {}
        3 | 5 => {
            if !cfg!(feature = "etcd") {
                bail!(
                    "--controllers {} needs a lifeboat built with etcd support:\n  cargo run --release -p lifeboat --features etcd -- demo --controllers {}\n(its build needs protoc: sudo apt-get install -y protobuf-compiler libprotobuf-dev)",
                    args.controllers,
                    args.controllers
                );
            }
            if !Path::new(ETCD).exists() {
                bail!(
                    "etcd was not found ({ETCD}).\nInstall it with:  sudo apt-get install -y etcd-server   (then `systemctl disable --now etcd`: the demo starts its own members)"
                );
            }
        }
        n => bail!("--controllers {n}: 1 (SQLite), or 3 or 5 (on etcd)"),
    }
    match args.database.as_str() {
        "postgres" | "postgresql" => {
            if lifeboat_pg::PgBin::locate(None).is_err() {
                bail!(
                    "PostgreSQL server binaries were not found (/usr/lib/postgresql/*/bin).\nInstall them with:  sudo apt-get install -y postgresql   (or run ./scripts/test once, which installs what lifeboat needs)"
                );
            }
        }
        _ => {
            let found = ["/usr/sbin/mariadbd", "/usr/bin/mariadbd"]
                .iter()
                .any(|p| Path::new(p).exists());
            if !found {
                bail!(
                    "MariaDB was not found.\nInstall it with:  sudo apt-get install -y mariadb-server"
                );
            }
        }
    }
    Ok(())
}

pub async fn run(args: DemoArgs) -> Result<ExitCode> {
    if args.drill {
        // Before minutes of setting up: a bad combination of drill flags.
        crate::extra::drill_options(args.drill_args.clone())?;
    }
    check_prerequisites(&args)?;
    let (tempdir, dir) = match &args.dir {
        Some(d) => (None, d.clone()),
        None => {
            let t = tempfile::Builder::new()
                .prefix("lifeboat-demo-")
                .tempdir()
                .context("creating the demo directory")?;
            let p = t.path().to_path_buf();
            (Some(t), p)
        }
    };
    let layout = Layout::new(dir)?;
    let ports = choose_ports(args.controllers)?;
    write_secret(&layout.dir.join("token"), &random_secret())?;
    write_secret(&layout.dir.join("db-password"), &random_secret())?;
    write_secret(&layout.dir.join("repl-password"), &random_secret())?;
    for (r, _) in REGIONS {
        std::fs::create_dir_all(layout.dir.join(format!("objects-{r}")))?;
    }
    std::fs::write(
        layout.dir.join("objects-a").join("msgdrdct.txt"),
        "Hello from the lifeboat demo. This message lives in region a's object store and lifeboat replicates it to region b.\n",
    )?;
    write_config(&args, &layout, &ports)?;
    let cfg = Config::load(&layout.config)
        .map_err(|e| anyhow::anyhow!("the generated config is invalid (a bug): {e}"))?;

    eprintln!("lifeboat demo: setting up in {}", layout.dir.display());
    let mut children = Children {
        layout: layout.dir.clone(),
        config: layout.config.clone(),
        logs: layout.logs.clone(),
        procs: BTreeMap::new(),
    };
    let result = run_inner(&args, &cfg, &layout, &ports, &mut children).await;

    eprintln!("lifeboat demo: stopping");
    remove_partitions();
    for (r, _) in REGIONS {
        children.stop(&format!("agent-{r}")).await;
    }
    for (name, _) in controller_procs(&cfg) {
        children.stop(&name).await;
    }
    let etcd: Vec<String> = children
        .procs
        .keys()
        .filter(|n| n.starts_with("etcd-"))
        .cloned()
        .collect();
    for name in etcd {
        children.stop(&name).await;
    }
    stop_databases(&cfg).await;
    // What is left: pilot-light apps whose agent a drill killed (orphans), a server an
    // agent was starting as it was stopped (a rejoin right after a drill: no pid file
    // yet). Everything still running from the demo's directory (the apps' command
    // lines name it too) is ended before the directory goes.
    let left = kill_leftovers(&layout.dir).await;
    if left > 0 {
        eprintln!(
            "lifeboat demo: ended {left} leftover process(es) running from the demo directory"
        );
    }
    match tempdir {
        Some(t) => {
            let path = t.path().display().to_string();
            if let Err(e) = t.close() {
                eprintln!("lifeboat demo: could not remove {path}: {e}");
            } else {
                eprintln!("lifeboat demo: removed {path}");
            }
        }
        None => eprintln!("lifeboat demo: kept {}", layout.dir.display()),
    }
    result
}

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
async fn kill_leftovers(dir: &Path) -> usize {
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

async fn stop_databases(cfg: &Config) {
    let Some(db) = &cfg.database else { return };
    if let Some(pg) = &db.postgres
        && let Ok(bin) = lifeboat_pg::PgBin::locate(pg.bin_dir.as_deref())
    {
        for inst in pg.regions.values() {
            if let Some(dir) = &inst.data_dir {
                let _ = lifeboat_pg::server::stop(&bin, dir, "immediate").await;
            }
        }
    }
    if let Some(my) = &db.mysql {
        for inst in my.regions.values() {
            if let Some(dir) = &inst.datadir
                && let Ok(pid) = std::fs::read_to_string(format!("{}.pid", dir.display()))
                && let Ok(pid) = pid.trim().parse::<i32>()
            {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

async fn run_inner(
    args: &DemoArgs,
    cfg: &Config,
    l: &Layout,
    p: &Ports,
    children: &mut Children,
) -> Result<ExitCode> {
    let cancel = CancellationToken::new();
    crate::run::cancel_on_signal(cancel.clone());

    eprintln!(
        "lifeboat demo: bootstrapping the {} primary (region a) and replica (region b)",
        cfg.database
            .as_ref()
            .map_or("-", |d| if d.postgres.is_some() {
                "PostgreSQL"
            } else {
                "MariaDB"
            })
    );
    for (r, _) in REGIONS {
        let region = lifeboat_core::RegionId::new(r);
        tokio::select! {
            res = crate::extra::bootstrap(cfg, &region) => res?,
            _ = cancel.cancelled() => return Ok(ExitCode::FAILURE),
        }
    }
    if let Some(my) = cfg.database.as_ref().and_then(|d| d.mysql.as_ref()) {
        create_app_database(my, l).await?;
    }
    if !p.etcd.is_empty() {
        eprintln!(
            "lifeboat demo: starting a {}-member etcd cluster",
            p.etcd.len()
        );
        for i in 0..p.etcd.len() {
            children.spawn_etcd(i, &p.etcd)?;
        }
        wait_etcd(&p.etcd, &cancel).await?;
    }
    eprintln!("lifeboat demo: starting the controller(s) and the agents");
    for (name, args) in controller_procs(cfg) {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        children.spawn(&name, &args, "listening api ").await?;
    }
    for (r, _) in REGIONS {
        children
            .spawn(
                &format!("agent-{r}"),
                &["agent", "--region", r],
                "listening agent ",
            )
            .await?;
    }
    let ready = wait_ready(cfg, p, &cancel).await;
    if let Err(e) = ready {
        eprintln!("lifeboat demo: {e:#}\nlogs are in {}", l.logs.display());
        return Ok(ExitCode::FAILURE);
    }
    print_banner(args, cfg, l, p).await;

    let restart_controller = !args.no_restart_controller;
    if args.drill {
        // The supervisor runs beside the drill (a drill's faults need it: restores,
        // the controller's restart) and stops when the drill is done.
        let supervising = cancel.child_token();
        let drill = async {
            let code = tokio::select! {
                r = crate::extra::run_drill(cfg, args.drill_args.clone()) => r,
                _ = cancel.cancelled() => Ok(ExitCode::FAILURE),
            };
            supervising.cancel();
            code
        };
        let (code, ()) = tokio::join!(
            drill,
            supervise(
                children,
                cfg,
                &l.control,
                restart_controller,
                supervising.clone()
            )
        );
        return code;
    }
    println!(
        "Ctrl-C stops everything{}.",
        if args.dir.is_none() {
            " and removes the directory"
        } else {
            ""
        }
    );
    supervise(
        children,
        cfg,
        &l.control,
        restart_controller,
        cancel.clone(),
    )
    .await;
    Ok(ExitCode::SUCCESS)
}

/// The sample app's database on MariaDB (PostgreSQL's demo uses `postgres`): created on
/// the primary, it reaches the replica through the binlog like any other change.
async fn create_app_database(my: &lifeboat_config::mysql::MysqlConfig, l: &Layout) -> Result<()> {
    let primary = my
        .regions
        .get(REGIONS[0].0)
        .context("no [database.mysql.regions.a]")?;
    let password = std::fs::read_to_string(l.dir.join("db-password"))?;
    let out = Command::new("mariadb")
        .args([
            "--protocol=TCP",
            "-h",
            &primary.host,
            "-P",
            &primary.port.to_string(),
            "-u",
            &primary.user,
        ])
        .args(["-e", "CREATE DATABASE IF NOT EXISTS lifeboat_app"])
        .env("MYSQL_PWD", password.trim())
        .output()
        .await
        .context("running the mariadb client")?;
    anyhow::ensure!(
        out.status.success(),
        "creating the demo's database on {}:{}: {}",
        primary.host,
        primary.port,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// Wait until region a is active and its app answers.
/// Every controller process of the demo: its name (and pid file) and arguments.
fn controller_procs(cfg: &Config) -> Vec<(String, Vec<String>)> {
    if cfg.controller.members.is_empty() {
        return vec![("controller".into(), vec!["controller".into()])];
    }
    cfg.controller
        .members
        .iter()
        .map(|m| {
            (
                format!("controller-{}", m.name),
                vec!["controller".into(), "--member".into(), m.name.clone()],
            )
        })
        .collect()
}

/// The leading controller's status (with one controller, its status).
async fn leader_status(cfg: &Config) -> Option<lifeboat_api::types::ControllerStatus> {
    for url in cfg.controller.api_urls() {
        let c = lifeboat_api::ApiClient::new(url, None, Duration::from_secs(2));
        if let Ok(st) = c.status().await
            && st.leadership.as_ref().is_none_or(|l| l.leading)
        {
            return Some(st);
        }
    }
    None
}

/// Until every etcd member answers `/health` with true (the cluster has a leader).
async fn wait_etcd(members: &[(u16, u16)], cancel: &CancellationToken) -> Result<()> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .no_proxy()
        .build()?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut healthy = 0;
        for (client, _) in members {
            let url = format!("http://127.0.0.1:{client}/health");
            if let Ok(r) = http.get(&url).send().await
                && r.text().await.is_ok_and(|t| t.contains("true"))
            {
                healthy += 1;
            }
        }
        if healthy == members.len() {
            return Ok(());
        }
        if cancel.is_cancelled() {
            bail!("interrupted");
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "etcd did not become healthy in 30 s ({healthy} of {} members)",
                members.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn wait_ready(cfg: &Config, p: &Ports, cancel: &CancellationToken) -> Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .no_proxy()
        .build()?;
    let url = format!("http://{}:{}/healthz", REGIONS[0].1, p.app);
    loop {
        if cancel.is_cancelled() {
            bail!("interrupted");
        }
        let st = leader_status(cfg).await;
        let active = st.as_ref().is_some_and(|s| {
            s.active.as_ref().map(|r| r.as_str()) == Some("a") && s.phase == "steady"
        });
        let app_ok = http
            .get(&url)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if active && app_ok {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "the deployment did not become ready in 90 s (active region a: {active}, app healthy: {app_ok})"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Keep the demo's processes up: start a region's agent again when
/// `control/restore-<region>` appears (the drill's `outage_stop` / `agent_start`) if it
/// is not running, and restart the controller the way systemd's `Restart=always` would
/// (see the module doc). Every process started stays in `children`, so the demo's
/// shutdown stops it.
async fn supervise(
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

async fn print_banner(args: &DemoArgs, cfg: &Config, l: &Layout, p: &Ports) {
    let engine = if args.database.starts_with("maria") || args.database == "mysql" {
        "MariaDB"
    } else {
        "PostgreSQL"
    };
    let mode = if args.asynchronous {
        "asynchronous"
    } else if engine == "MariaDB" {
        "semi-synchronous"
    } else {
        "synchronous"
    };
    let cfgp = l.config.display();
    let mut s = String::new();
    s.push_str(&format!(
        "\nlifeboat demo is up: deployment \"{}\", two regions on loopback\n\n",
        cfg.deployment.name
    ));
    s.push_str(&format!("  app         http://app.demo.lifeboat:{app}/   (resolve it through lifeboat's DNS below)\n", app = p.app));
    for (r, ip) in REGIONS {
        s.push_str(&format!(
            "              region {r}: http://{ip}:{}/{}\n",
            p.app,
            if r == "a" {
                "   (active)"
            } else {
                "   (pilot light: starts on promotion)"
            }
        ));
    }
    s.push_str(&format!(
        "  dns         127.0.0.1:{dns}   dig @127.0.0.1 -p {dns} app.demo.lifeboat. A +short\n",
        dns = p.dns
    ));
    if p.more_controllers.is_empty() {
        s.push_str(&format!(
            "  controller  http://127.0.0.1:{}/   (dashboard, /metrics, /v1/status)\n",
            p.api
        ));
    } else {
        let leader = leader_status(cfg)
            .await
            .and_then(|st| st.leadership)
            .and_then(|l| l.leader);
        for (name, api, dns) in p.controllers() {
            s.push_str(&format!(
                "  controller  {name}: http://127.0.0.1:{api}/  dns 127.0.0.1:{dns}{}\n",
                if leader.as_deref() == Some(name.as_str()) {
                    "   (leads)"
                } else {
                    ""
                }
            ));
        }
        s.push_str(&format!(
            "  etcd        {}   (data in {})\n",
            p.etcd
                .iter()
                .map(|(c, _)| format!("http://127.0.0.1:{c}"))
                .collect::<Vec<_>>()
                .join(", "),
            l.dir.display()
        ));
    }
    for (r, ip) in REGIONS {
        s.push_str(&format!(
            "  database    region {r}: {engine} on {ip}:{}{}\n",
            p.db[r],
            if r == "a" {
                format!(" (primary, {mode} replication to b)")
            } else {
                " (replica)".into()
            }
        ));
    }
    for (r, _) in REGIONS {
        s.push_str(&format!(
            "  objects     region {r}: {}\n",
            l.dir.join(format!("objects-{r}")).display()
        ));
    }
    s.push_str(&format!(
        "\n  config      {cfgp}\n  logs        {}\n\n",
        l.logs.display()
    ));
    s.push_str(&format!("Try:\n  lifeboat status --config {cfgp}\n  lifeboat failover --config {cfgp} --to b\n  lifeboat drill --config {cfgp} --scenario region-outage\n  lifeboat drill --config {cfgp} --schedule random --faults 8 --fault-seconds 1-10\n  lifeboat objects status --config {cfgp} --region a\n"));
    println!("{s}");
    use std::io::Write;
    let _ = std::io::stdout().flush();
}
