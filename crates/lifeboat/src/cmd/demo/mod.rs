//! `lifeboat demo`: the whole reference architecture on one machine.
//!
//! It starts, on loopback, a complete two-region deployment in a fresh directory: the
//! controller with its DNS, one agent per region (each region on its own loopback
//! address, 127.0.1.1 and 127.0.2.1, so a DNS answer moves a client between them while
//! the port stays the same), a database primary and replica (PostgreSQL with
//! synchronous replication by default, or MariaDB with semi-sync), one local object
//! store per region with replication and an S3 gateway in front of it (writes taken in
//! the active region only), and the sample app as each region's pilot-light service
//! (its page's form writes the message through its region's gateway). It prints what
//! runs where and the config path — so `lifeboat status`, `failover`, `drill` and
//! `objects` can be pointed at it — and stays up until Ctrl-C, then stops everything
//! and removes the directory. `--drill` runs a drill instead.
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
//!
//! Its parts: [`ports`] (the ports it chooses), [`config`] (the lifeboat.toml it
//! writes), [`processes`] (starting, supervising and ending its processes).

mod config;
mod ports;
mod processes;

use super::drill::DrillArgs;
use crate::engine::Engine;
use anyhow::{Context, Result, bail};
use lifeboat_config::Config;
use ports::Ports;
use processes::{Children, ETCD, kill_leftovers, supervise};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;
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

fn write_secret(path: &Path, value: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, value).with_context(|| format!("writing {}", path.display()))?;
    // Readable by the postgres / mysql server user too (the demo's own throwaway secrets).
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))?;
    Ok(())
}

/// A secret only the demo's own processes (the agents, the sample apps) read: 0600
/// from its creation on.
fn write_private_secret(path: &Path, value: &str) -> Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    // A file kept from an earlier run (`--dir`) keeps its mode: set it.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("restricting {}", path.display()))?;
    f.write_all(value.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn random_secret() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    let n = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("demo-{:x}{:x}", n, std::process::id())
}

fn check_prerequisites(args: &DemoArgs, engine: Engine) -> Result<()> {
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
    engine.check_installed()
}

pub async fn run(args: DemoArgs) -> Result<ExitCode> {
    if args.drill {
        // Before minutes of setting up: a bad combination of drill flags.
        super::drill::drill_options(args.drill_args.clone())?;
    }
    let engine = Engine::from_demo_flag(&args.database)?;
    check_prerequisites(&args, engine)?;
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
    let ports = ports::choose_ports(args.controllers)?;
    write_secret(&layout.dir.join("token"), &random_secret())?;
    write_secret(&layout.dir.join("db-password"), &random_secret())?;
    write_secret(&layout.dir.join("repl-password"), &random_secret())?;
    write_secret(&layout.dir.join("tables-secret"), &random_secret())?;
    write_private_secret(
        &layout.dir.join(config::GATEWAY_SECRET_FILE),
        &random_secret(),
    )?;
    for (r, _) in REGIONS {
        std::fs::create_dir_all(layout.dir.join(format!("objects-{r}")))?;
    }
    // Written straight into a's store before anything runs: a's own data, which
    // replication copies to b (the page's form writes later ones through a's gateway,
    // which takes writes only once a is active).
    std::fs::write(
        layout.dir.join("objects-a").join("msgdrdct.txt"),
        "Hello from the lifeboat demo. This message lives in region a's object store and lifeboat replicates it to region b.\n",
    )?;
    config::write_config(&args, engine, &layout, &ports)?;
    let cfg = Config::load(&layout.config)
        .map_err(|e| anyhow::anyhow!("the generated config is invalid (a bug): {e}"))?;

    eprintln!("lifeboat demo: setting up in {}", layout.dir.display());
    let mut children = Children {
        layout: layout.dir.clone(),
        config: layout.config.clone(),
        logs: layout.logs.clone(),
        procs: BTreeMap::new(),
    };
    let result = run_inner(&args, engine, &cfg, &layout, &ports, &mut children).await;

    eprintln!("lifeboat demo: stopping");
    config::remove_partitions();
    for (r, _) in REGIONS {
        children.stop(&format!("agent-{r}")).await;
    }
    for (r, _) in REGIONS {
        children.stop(&format!("tables-{r}")).await;
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
    if let Some(db) = &cfg.database {
        Engine::of(db).stop_demo_servers(db).await;
    }
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

async fn run_inner(
    args: &DemoArgs,
    engine: Engine,
    cfg: &Config,
    l: &Layout,
    p: &Ports,
    children: &mut Children,
) -> Result<ExitCode> {
    let cancel = CancellationToken::new();
    crate::shared::cancel_on_signal(cancel.clone());

    eprintln!(
        "lifeboat demo: bootstrapping the {} primary (region a) and replica (region b)",
        cfg.database
            .as_ref()
            .map_or("-", |d| Engine::of(d).display_name())
    );
    for (r, _) in REGIONS {
        let region = lifeboat_core::RegionId::new(r);
        tokio::select! {
            res = crate::engine::bootstrap(cfg, &region) => res?,
            _ = cancel.cancelled() => return Ok(ExitCode::FAILURE),
        }
    }
    if let Some(db) = &cfg.database {
        Engine::of(db)
            .prepare_demo_app(db, REGIONS[0].0, &l.dir.join("db-password"))
            .await?;
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
    // Each region's table server: a process of its own beside the agent
    // (docs/tables.md), so a drill that kills an agent leaves the table up.
    for (r, _) in REGIONS {
        children
            .spawn(
                &format!("tables-{r}"),
                &["tables", "serve", "--region", r],
                "listening tables ",
            )
            .await?;
    }
    let ready = wait_ready(cfg, p, &cancel).await;
    if let Err(e) = ready {
        eprintln!("lifeboat demo: {e:#}\nlogs are in {}", l.logs.display());
        return Ok(ExitCode::FAILURE);
    }
    print_banner(args, engine, cfg, l, p).await;

    let restart_controller = !args.no_restart_controller;
    if args.drill {
        // The supervisor runs beside the drill (a drill's faults need it: restores,
        // the controller's restart) and stops when the drill is done.
        let supervising = cancel.child_token();
        let drill = async {
            let code = tokio::select! {
                r = super::drill::run_drill(cfg, args.drill_args.clone()) => r,
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

/// Wait until region a is active and its app answers.
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

async fn print_banner(args: &DemoArgs, engine: Engine, cfg: &Config, l: &Layout, p: &Ports) {
    let mode = if args.asynchronous {
        "asynchronous"
    } else {
        engine.sync_replication_name()
    };
    let engine = engine.display_name();
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
    for (r, ip) in REGIONS {
        s.push_str(&format!(
            "  s3 gateway  region {r}: http://{ip}:{}   (bucket {}, key id {}, secret in {}; writes only while {r} is active)\n",
            p.gateway,
            config::DEMO_GATEWAY_BUCKET,
            config::DEMO_GATEWAY_KEY_ID,
            l.dir.join(config::GATEWAY_SECRET_FILE).display()
        ));
    }
    for (r, ip) in REGIONS {
        s.push_str(&format!(
            "  tables      region {r}: http://{ip}:{}   (DynamoDB's API: endpoint_url, key id {}, secret in {})\n",
            p.tables,
            config::DEMO_TABLES_KEY_ID,
            l.dir.join("tables-secret").display()
        ));
    }
    s.push_str(&format!(
        "\n  config      {cfgp}\n  logs        {}\n\n",
        l.logs.display()
    ));
    s.push_str(&format!("Try:\n  lifeboat status --config {cfgp}\n  lifeboat failover --config {cfgp} --to b\n  lifeboat drill --config {cfgp} --scenario region-outage\n  lifeboat drill --config {cfgp} --schedule random --faults 8 --fault-seconds 1-10\n  lifeboat objects status --config {cfgp} --region a\n  lifeboat table conflicts --config {cfgp}\n"));
    // An S3 PUT without the AWS CLI: curl's own SigV4 (the header because curl 7.88,
    // Debian 12's, sends no x-amz-content-sha256, which S3 requires), and the form.
    s.push_str(&format!(
        "  curl --aws-sigv4 aws:amz:us-east-1:s3 -u {}:$(cat {}) -H 'x-amz-content-sha256: UNSIGNED-PAYLOAD' -T {cfgp} http://{}:{}/{}/lifeboat.toml   (the same to b's gateway: refused, b is a standby)\n  \"Leave a message\" on region a's page writes the message through a's gateway\n",
        config::DEMO_GATEWAY_KEY_ID,
        l.dir.join(config::GATEWAY_SECRET_FILE).display(),
        REGIONS[0].1,
        p.gateway,
        config::DEMO_GATEWAY_BUCKET,
    ));
    println!("{s}");
    use std::io::Write;
    let _ = std::io::stdout().flush();
}
