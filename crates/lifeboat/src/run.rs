//! `lifeboat controller` and `lifeboat agent`: the long-running processes.
//!
//! Each prints one line per listening socket on stdout (`listening <what> <addr>`)
//! so scripts and tests can read back ports bound as 0, then runs until SIGINT or
//! SIGTERM and shuts down in order: stop taking requests, stop the loops, fence.

use anyhow::{Context, Result};
use lifeboat_agent::{Agent, services::Services};
use lifeboat_api::types::CheckReport;
use lifeboat_config::Config;
use lifeboat_config::etcd::StoreKind;
use lifeboat_controller::{Controller, ControllerOptions};
use lifeboat_core::{RegionId, SharedRole, VantageId};
use lifeboat_health::{CheckStates, Prober};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub(crate) fn load_config(path: &Path) -> Result<Arc<Config>> {
    Config::load(path)
        .map(Arc::new)
        .map_err(|e| anyhow::anyhow!("{e}"))
}

/// Cancel the token on SIGINT or SIGTERM.
pub(crate) fn cancel_on_signal(cancel: CancellationToken) {
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!("cannot listen for SIGTERM: {e}");
                    let _ = tokio::signal::ctrl_c().await;
                    cancel.cancel();
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down");
        cancel.cancel();
    });
}

/// Bind an API port, retrying for a few seconds while it is still in use (a process
/// restarted right after a crash can find its port briefly held).
async fn bind_api(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match tokio::net::TcpListener::bind(addr).await {
            Err(e)
                if e.kind() == std::io::ErrorKind::AddrInUse
                    && tokio::time::Instant::now() < deadline =>
            {
                tracing::warn!("{addr} is in use; retrying");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            other => return other,
        }
    }
}

pub(crate) fn announce(what: &str, addr: impl std::fmt::Display) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "listening {what} {addr}");
    let _ = out.flush();
}

pub(crate) fn to_reports(states: &CheckStates) -> BTreeMap<String, CheckReport> {
    states
        .iter()
        .map(|(n, s)| {
            (
                n.clone(),
                CheckReport {
                    status: s.status,
                    detail: s.detail.clone(),
                    latency_ms: s.latency_ms,
                },
            )
        })
        .collect()
}

pub async fn controller(
    path: &Path,
    no_wait_for_agents: bool,
    member: Option<&str>,
) -> Result<ExitCode> {
    let mut cfg = load_config(path)?;
    match (cfg.controller.store, member) {
        (StoreKind::Sqlite, None) => {}
        (StoreKind::Sqlite, Some(_)) => anyhow::bail!(
            "--member is for several controllers ([controller] store = \"etcd\" in {})",
            cfg.source.display()
        ),
        (StoreKind::Etcd, None) => anyhow::bail!(
            "{} keeps the controllers' state in etcd: say which controller this is with --member NAME (one of [[controller.members]])",
            cfg.source.display()
        ),
        (StoreKind::Etcd, Some(name)) => {
            let mut c = (*cfg).clone();
            c.controller
                .as_member(name)
                .map_err(|e| anyhow::anyhow!("{}: {e}", cfg.source.display()))?;
            cfg = Arc::new(c);
        }
    }
    let token = lifeboat_agent::load_token(&cfg)?;
    let cancel = CancellationToken::new();
    cancel_on_signal(cancel.clone());

    let prober =
        Prober::new(&cfg, VantageId::Controller).context("setting up the controller's probes")?;
    let local = prober.subscribe();
    let probe_cancel = cancel.child_token();
    let mut workers = Workers::new(probe_cancel.clone());
    workers.spawn("controller's prober", prober.run(probe_cancel.clone()));
    let opts = ControllerOptions {
        discovery: Some(crate::wiring::discovery()),
        no_wait_for_agents,
        ..ControllerOptions::default()
    };
    let served = match member {
        None => Served::One(
            Controller::open(cfg.clone(), token, local, opts)
                .await
                .with_context(|| {
                    format!(
                        "opening controller state in {}",
                        cfg.controller.state_dir.display()
                    )
                })?,
        ),
        Some(name) => ha_controller(&cfg, name, token, local, opts)?,
    };
    if let (Some(_), Some(addr)) = (&cfg.dns, cfg.controller.dns_addr) {
        let (udp, tcp) = bind_dns(addr, "controller.dns_addr").await?;
        let dns = lifeboat_dns::DnsServer::new(&cfg, served.routing())
            .context("building the DNS zone")?;
        let metrics = dns.metrics();
        served.add_metrics(Arc::new(move |out: &mut String| {
            metrics.render_prometheus(out)
        }));
        workers.spawn(
            "controller's DNS server",
            dns.run(udp, tcp, probe_cancel.clone()),
        );
    }
    let listener = bind_api(cfg.controller.api_addr).await.with_context(|| {
        format!(
            "binding the controller API on {} (controller.api_addr)",
            cfg.controller.api_addr
        )
    })?;
    announce("api", format!("http://{}", listener.local_addr()?));
    let app = served.router();
    let http_cancel = cancel.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { http_cancel.cancelled().await })
            .await
    });
    // A worker that fails (its DNS server, its prober) stops the controller with that
    // error rather than leaving it running without: a supervisor starts it again, and
    // the active region holds its lease on promises meanwhile (rule 7).
    let run = served.run(cancel.clone());
    tokio::pin!(run);
    let result = tokio::select! {
        r = &mut run => r,
        e = workers.first_failure() => {
            tracing::error!("{e:#}: stopping the controller");
            cancel.cancel();
            if let Err(stop) = (&mut run).await {
                tracing::error!("while stopping: {stop:#}");
            }
            Err(e)
        }
    };
    cancel.cancel();
    match server.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!("the controller API server: {e}"),
        Err(e) => tracing::error!("the controller API server panicked: {e}"),
    }
    probe_cancel.cancel();
    workers.shutdown().await;
    result?;
    Ok(ExitCode::SUCCESS)
}

/// One controller on SQLite, or one of several on etcd.
enum Served {
    One(Arc<Controller>),
    #[cfg(feature = "etcd")]
    Ha(Arc<lifeboat_controller::ha::HaController>),
}

impl Served {
    fn routing(&self) -> watch::Receiver<lifeboat_core::RoutingTable> {
        match self {
            Served::One(c) => c.routing(),
            #[cfg(feature = "etcd")]
            Served::Ha(h) => h.routing(),
        }
    }
    fn add_metrics(&self, f: lifeboat_controller::MetricsFn) {
        match self {
            Served::One(c) => c.add_metrics(f),
            #[cfg(feature = "etcd")]
            Served::Ha(h) => h.add_metrics(f),
        }
    }
    fn router(&self) -> axum::Router {
        match self {
            Served::One(c) => c.router(),
            #[cfg(feature = "etcd")]
            Served::Ha(h) => h.router(),
        }
    }
    async fn run(self, cancel: CancellationToken) -> Result<()> {
        match self {
            Served::One(c) => c.run(cancel).await,
            #[cfg(feature = "etcd")]
            Served::Ha(h) => h.run(cancel).await,
        }
    }
}

#[cfg(feature = "etcd")]
fn ha_controller(
    cfg: &Arc<Config>,
    name: &str,
    token: lifeboat_api::http::Token,
    local: watch::Receiver<CheckStates>,
    opts: ControllerOptions,
) -> Result<Served> {
    lifeboat_controller::ha::HaController::new(cfg.clone(), name, token, local, opts)
        .map(Served::Ha)
}

#[cfg(not(feature = "etcd"))]
fn ha_controller(
    cfg: &Arc<Config>,
    _name: &str,
    _token: lifeboat_api::http::Token,
    _local: watch::Receiver<CheckStates>,
    _opts: ControllerOptions,
) -> Result<Served> {
    anyhow::bail!(
        "{} has [controller] store = \"etcd\", but this lifeboat was built without etcd support: build it with `cargo build --release -p lifeboat --features etcd` (needs protoc: apt-get install protobuf-compiler libprotobuf-dev)",
        cfg.source.display()
    )
}

/// Bind DNS on UDP and TCP at the same address (port 0: the same free port for both).
pub(crate) async fn bind_dns(
    addr: std::net::SocketAddr,
    key: &str,
) -> Result<(tokio::net::UdpSocket, tokio::net::TcpListener)> {
    // With port 0 the kernel picks a free UDP port whose TCP twin may be taken:
    // try again with another one. A configured port is bound as it is.
    let attempts = if addr.port() == 0 { 50 } else { 1 };
    let mut last_err = None;
    for _ in 0..attempts {
        let udp = tokio::net::UdpSocket::bind(addr)
            .await
            .with_context(|| format!("binding DNS (UDP) on {addr} ({key})"))?;
        let bound = udp.local_addr()?;
        match tokio::net::TcpListener::bind(bound).await {
            Ok(tcp) => {
                announce("dns", bound);
                return Ok((udp, tcp));
            }
            Err(e) => last_err = Some((bound, e)),
        }
    }
    let (bound, e) = last_err.context("no DNS bind attempt was made")?;
    Err(anyhow::Error::new(e).context(format!("binding DNS (TCP) on {bound} ({key})")))
}

/// An agent's secondary nameserver: the zone as the controller last decided it,
/// polled from `/v1/routing`; it keeps answering from the last table if the
/// controller (the witness site) is lost.
async fn agent_dns(
    cfg: Arc<Config>,
    region: &str,
    token: String,
    tasks: &tokio_util::task::TaskTracker,
    cancel: CancellationToken,
) -> Result<()> {
    let Some(dns_cfg) = &cfg.dns else {
        return Ok(());
    };
    let Some(addr) = dns_cfg.agent_listen(region) else {
        return Ok(());
    };
    let (udp, tcp) = bind_dns(addr, &format!("dns.nameservers (region {region})")).await?;
    let client = lifeboat_api::ApiClient::any_of(
        cfg.controller.api_urls(),
        Some(token),
        std::time::Duration::from_secs(2),
    );
    // The last table this agent served, kept on disk: an agent restarted while the
    // witness is unreachable answers with the region the controller last chose, not
    // the config's initial one (which may be the fenced region after a failover).
    let saved = cfg
        .agent_state_dir(&RegionId::new(region))
        .join("routing.json");
    let initial = match client.routing().await {
        Ok(rt) => rt,
        Err(e) => match load_routing(&saved) {
            Some(rt) => {
                tracing::warn!(
                    "controller unreachable ({e}): serving the routing table saved in {} (epoch {})",
                    saved.display(),
                    rt.epoch
                );
                rt
            }
            None => lifeboat_core::RoutingTable {
                version: 1,
                epoch: lifeboat_core::Epoch::ZERO,
                active: cfg.initial_active(),
                regions: BTreeMap::new(),
                checks: BTreeMap::new(),
            },
        },
    };
    if let Err(e) = save_routing(&saved, &initial) {
        tracing::warn!(
            "cannot save the routing table to {}: {e:#}",
            saved.display()
        );
    }
    let (tx, rx) = watch::channel(initial);
    let server = lifeboat_dns::DnsServer::new(&cfg, rx).context("building the DNS zone")?;
    let dns_cancel = cancel.clone();
    let dns_region = region.to_owned();
    // Logged, never dropped; the region's other nameservers keep answering.
    tasks.spawn(async move {
        if let Err(e) = server.run(udp, tcp, dns_cancel).await {
            tracing::error!(region = %dns_region, "the agent's secondary DNS server failed: {e:#}");
        }
    });
    tasks.spawn(async move {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(std::time::Duration::from_millis(250)) => {}
            }
            if let Ok(rt) = client.routing().await {
                let changed = tx.send_if_modified(|cur| {
                    let changed = *cur != rt;
                    if changed {
                        *cur = rt.clone();
                    }
                    changed
                });
                if changed {
                    // Off the runtime: a slow disk must not hold up the DNS poller.
                    let (path, table) = (saved.clone(), rt.clone());
                    match tokio::task::spawn_blocking(move || save_routing(&path, &table)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => tracing::warn!(
                            "cannot save the routing table to {}: {e:#}",
                            saved.display()
                        ),
                        Err(e) => tracing::warn!("cannot save the routing table: {e}"),
                    }
                }
            }
        }
    });
    Ok(())
}

/// The routing table saved by [`agent_dns`], if it can be read.
fn load_routing(path: &Path) -> Option<lifeboat_core::RoutingTable> {
    let text = std::fs::read_to_string(path).ok()?;
    match serde_json::from_str(&text) {
        Ok(rt) => Some(rt),
        Err(e) => {
            tracing::warn!("ignoring {}: {e}", path.display());
            None
        }
    }
}

/// temp file + fsync + rename: a crash leaves the old table or the new one.
fn save_routing(path: &Path, rt: &lifeboat_core::RoutingTable) -> Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = path.with_extension("json.tmp");
    let mut f =
        std::fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(&serde_json::to_vec(rt)?)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

pub async fn agent(path: &Path, region: &str) -> Result<ExitCode> {
    let cfg = load_config(path)?;
    let region_id = RegionId::new(region);
    let Some(rc) = cfg.region(&region_id).cloned() else {
        anyhow::bail!(
            "--region {region}: no such region in {} (regions: {})",
            path.display(),
            cfg.regions.keys().cloned().collect::<Vec<_>>().join(", ")
        );
    };
    let token = lifeboat_agent::load_token(&cfg)?;
    let cancel = CancellationToken::new();
    cancel_on_signal(cancel.clone());
    let tasks = tokio_util::task::TaskTracker::new();

    let prober = Prober::new(&cfg, VantageId::Agent(region_id.clone()))
        .context("setting up the agent's probes")?;
    let mut states = prober.subscribe();
    let (checks_tx, checks_rx) = watch::channel(to_reports(&states.borrow()));
    let probe_cancel = CancellationToken::new();
    let pcancel = probe_cancel.clone();
    // Logged, never dropped; an agent does not stop (and fence its region) for a probe.
    tasks.spawn(async move {
        if let Err(e) = prober.run(pcancel).await {
            tracing::error!("the agent's prober failed: {e:#}; its checks stay as last seen");
        }
    });
    let pc = probe_cancel.clone();
    tasks.spawn(async move {
        loop {
            tokio::select! {
                _ = pc.cancelled() => return,
                r = states.changed() => {
                    if r.is_err() { return; }
                    checks_tx.send_replace(to_reports(&states.borrow_and_update()));
                }
            }
        }
    });

    // Data roles in activation order: data first, services last.
    let service_cancel = CancellationToken::new();
    let services = Services::new(
        region,
        &rc.services,
        &cfg.agent_state_dir(&region_id),
        service_cancel.clone(),
    );
    let data_cancel = CancellationToken::new();
    let (mut roles, extra_metrics) =
        crate::wiring::data_roles(&cfg, &region_id, &tasks, data_cancel.clone()).await?;
    roles.push(services.clone() as SharedRole);

    agent_dns(
        cfg.clone(),
        region,
        token.as_str().to_owned(),
        &tasks,
        probe_cancel.clone(),
    )
    .await?;
    let agent = Agent::new(cfg.clone(), region_id.clone(), token, roles, checks_rx)?;
    for m in extra_metrics {
        agent.add_metrics(m);
    }
    let listener = bind_api(rc.agent_addr).await.with_context(|| {
        format!(
            "binding the agent API on {} (regions.{region}.agent_addr)",
            rc.agent_addr
        )
    })?;
    announce("agent", format!("http://{}", listener.local_addr()?));
    let app = lifeboat_agent::routes::router(agent.clone());
    let http_cancel = cancel.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { http_cancel.cancelled().await })
            .await
    });
    let result = agent.run(cancel.clone()).await;
    let _ = server.await;
    services.shutdown().await;
    data_cancel.cancel();
    probe_cancel.cancel();
    tasks.close();
    tasks.wait().await;
    result?;
    Ok(ExitCode::SUCCESS)
}

/// The background workers of one process, each with a name. A worker whose `Result`
/// is an error (or that panics, or ends on its own before shutdown) is never dropped
/// on the floor: [`Workers::first_failure`] returns it, naming the worker, and
/// [`Workers::shutdown`] logs any that fail while stopping.
pub(crate) struct Workers {
    set: tokio::task::JoinSet<(&'static str, Result<()>)>,
    stopping: CancellationToken,
}

impl Workers {
    /// `stopping`: once cancelled, a worker that ends is expected to.
    pub(crate) fn new(stopping: CancellationToken) -> Self {
        Self {
            set: tokio::task::JoinSet::new(),
            stopping,
        }
    }

    pub(crate) fn spawn(
        &mut self,
        name: &'static str,
        work: impl std::future::Future<Output = Result<()>> + Send + 'static,
    ) {
        self.set.spawn(async move { (name, work.await) });
    }

    /// The first worker to fail, or to stop before shutdown; pending while all run.
    pub(crate) async fn first_failure(&mut self) -> anyhow::Error {
        loop {
            match self.set.join_next().await {
                None => std::future::pending::<()>().await,
                Some(Ok((name, Err(e)))) => return e.context(format!("the {name} failed")),
                Some(Ok((name, Ok(())))) if !self.stopping.is_cancelled() => {
                    return anyhow::anyhow!("the {name} stopped on its own");
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return anyhow::anyhow!("a background worker panicked: {e}"),
            }
        }
    }

    /// Wait for every worker; log the ones that failed.
    pub(crate) async fn shutdown(mut self) {
        while let Some(r) = self.set.join_next().await {
            match r {
                Ok((_, Ok(()))) => {}
                Ok((name, Err(e))) => tracing::error!("the {name} failed while stopping: {e:#}"),
                Err(e) => tracing::error!("a background worker panicked: {e}"),
            }
        }
    }
}

#[cfg(test)]
mod workers_tests {
    use super::*;

    #[tokio::test]
    async fn a_failing_worker_is_reported_by_name_and_a_finished_one_is_not() {
        let stop = CancellationToken::new();
        let mut w = Workers::new(stop.clone());
        let s = stop.clone();
        w.spawn("prober", async move {
            s.cancelled().await;
            Ok(())
        });
        w.spawn("DNS server", async { anyhow::bail!("socket closed") });
        let e = w.first_failure().await;
        assert_eq!(format!("{e:#}"), "the DNS server failed: socket closed");
        stop.cancel();
        w.shutdown().await;
    }

    #[tokio::test]
    async fn a_worker_that_ends_before_shutdown_is_a_failure() {
        let mut w = Workers::new(CancellationToken::new());
        w.spawn("routing poller", async { Ok(()) });
        let e = w.first_failure().await;
        assert!(
            e.to_string().contains("routing poller stopped on its own"),
            "{e}"
        );
    }
}
