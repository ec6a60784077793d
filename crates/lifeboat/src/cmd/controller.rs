//! `lifeboat controller`: the controller (the witness) — health quorum, failover, DNS,
//! the HTTP API — as one process on SQLite, or one of several on etcd (`--member`).
//!
//! It prints one line per listening socket on stdout (`listening <what> <addr>`) so
//! scripts and tests can read back ports bound as 0, then runs until SIGINT or SIGTERM
//! and shuts down in order: stop taking requests, stop the loops. A background worker
//! that fails stops it ([`Workers`]).

use crate::shared::{announce, cancel_on_signal, load_config};
use crate::sockets::{bind_api, bind_dns};
use anyhow::{Context, Result};
use lifeboat_config::Config;
use lifeboat_config::etcd::StoreKind;
use lifeboat_controller::{Controller, ControllerOptions, DiscoveryFn};
use lifeboat_core::{RegionId, VantageId};
use lifeboat_health::{CheckStates, Prober};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

#[derive(clap::Args, Debug)]
pub struct ControllerArgs {
    #[arg(long, short)]
    config: PathBuf,
    /// Grant leases and start moves at once instead of first hearing from every
    /// region's agent (with no state on disk: start at the config's initial active
    /// region). Only when an agent is gone for good and its region known dead.
    #[arg(long)]
    no_wait_for_agents: bool,
    /// `[controller] store = "etcd"`: which of `[[controller.members]]` this is
    /// (its API and DNS addresses).
    #[arg(long)]
    member: Option<String>,
}

pub(crate) async fn run(args: ControllerArgs) -> Result<ExitCode> {
    let ControllerArgs {
        config,
        no_wait_for_agents,
        member,
    } = args;
    let member = member.as_deref();
    let mut cfg = load_config(&config)?;
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
        discovery: Some(discovery()),
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
    // The expiry of the certificates it uses (today etcd's), for the alert rules.
    let cert_files = crate::certs::controller_files(&cfg);
    if !cert_files.is_empty() {
        let figures = crate::certs::Figures::default();
        let shown = figures.clone();
        served.add_metrics(Arc::new(move |out: &mut lifeboat_core::metrics::Page| {
            shown.render(out)
        }));
        let c = probe_cancel.clone();
        workers.spawn("certificate expiry watch", async move {
            crate::certs::watch(cert_files, figures, c).await;
            Ok(())
        });
    }
    if let (Some(_), Some(addr)) = (&cfg.dns, cfg.controller.dns_addr) {
        let (udp, tcp) = bind_dns(addr, "controller.dns_addr").await?;
        let dns = lifeboat_dns::DnsServer::new(&cfg, served.routing())
            .context("building the DNS zone")?;
        let metrics = dns.metrics();
        served.add_metrics(Arc::new(move |out: &mut lifeboat_core::metrics::Page| {
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

/// `endpoints.database` of `/v1/discovery`: where the active region's database is.
fn discovery() -> DiscoveryFn {
    Arc::new(|cfg: &Config, active: &RegionId| {
        let mut out = BTreeMap::new();
        let Some(db) = &cfg.database else { return out };
        if let Some(e) = crate::engine::Engine::of(db).discovery_endpoint(db, active) {
            out.insert("database".to_owned(), e);
        }
        out
    })
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
