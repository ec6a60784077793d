//! `lifeboat agent`: one region's agent — its probes, its data roles (database first,
//! then object replication) and services, its secondary DNS server, and its API.
//!
//! Like the controller it announces each socket (`listening <what> <addr>`) and runs
//! until SIGINT or SIGTERM; then it stops its services and data roles in order.

use crate::shared::{announce, cancel_on_signal, load_config};
use crate::sockets::{bind_api, bind_dns};
use anyhow::{Context, Result};
use lifeboat_agent::{Agent, services::Services};
use lifeboat_api::types::CheckReport;
use lifeboat_config::Config;
use lifeboat_controller::MetricsFn;
use lifeboat_core::{RegionId, SharedRole, VantageId};
use lifeboat_health::{CheckStates, Prober};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(clap::Args, Debug)]
pub struct AgentArgs {
    #[arg(long, short)]
    config: PathBuf,
    /// The region this agent runs in (a name from [regions]).
    #[arg(long, short)]
    region: String,
}

pub(crate) async fn run(args: AgentArgs) -> Result<ExitCode> {
    let AgentArgs { config, region } = args;
    let (path, region) = (config.as_path(), region.as_str());
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
        data_roles(&cfg, &region_id, &tasks, data_cancel.clone()).await?;
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

fn to_reports(states: &CheckStates) -> BTreeMap<String, CheckReport> {
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

/// The region's data roles in activation order (database first, then objects), the
/// metrics they expose, and their background tasks spawned on `tasks`.
async fn data_roles(
    cfg: &Arc<Config>,
    region: &RegionId,
    tasks: &TaskTracker,
    cancel: CancellationToken,
) -> Result<(Vec<SharedRole>, Vec<MetricsFn>)> {
    let mut roles: Vec<SharedRole> = Vec::new();
    let mut metrics: Vec<MetricsFn> = Vec::new();
    if let Some(db) = &cfg.database {
        roles.push(crate::engine::Engine::of(db).data_role(cfg, region)?);
    }
    if let Some(objects) = &cfg.objects
        && objects.stores.contains_key(region.as_str())
    {
        let rep = lifeboat_objects::Replicator::open(cfg, region, &cfg.agent_state_dir(region))
            .await
            .with_context(|| format!("setting up object replication for region {region}"))?;
        roles.push(rep.role());
        if let Some(gw) = &objects.gateway
            && let Some(addr) = gw.listen.get(region.as_str())
        {
            let mut keys = Vec::new();
            for (i, k) in gw.access_keys.iter().enumerate() {
                let secret = k.secret().load().with_context(|| {
                    format!(
                        "reading the secret of objects.gateway.access_keys[{i}] ({})",
                        k.id
                    )
                })?;
                keys.push((k.id.clone(), secret));
            }
            let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
                format!("binding region {region}'s object gateway on {addr} (objects.gateway.listen.{region})")
            })?;
            let gateway = rep.gateway(&gw.bucket);
            let stop = cancel.clone();
            tasks.spawn(async move {
                if let Err(e) = gateway.serve(listener, keys, stop).await {
                    tracing::error!("the object gateway stopped: {e:#}");
                }
            });
        }
        let m = rep.metrics();
        metrics.push(Arc::new(move |out: &mut lifeboat_core::metrics::Page| {
            m.render_prometheus(out)
        }));
        tasks.spawn(async move {
            if let Err(e) = rep.run(cancel).await {
                tracing::error!("object replication stopped: {e:#}");
            }
        });
    }
    Ok((roles, metrics))
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
