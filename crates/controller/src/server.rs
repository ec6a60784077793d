//! The controller runtime and its HTTP API.
//!
//! Every event goes through [`Controller::step`], which holds the machine's lock
//! while it steps and executes the resulting actions *in order*: a `Persist` is on
//! disk before any later `Send` leaves, because commands are sent from tasks spawned
//! after it. Agent answers come back as events through a channel.

use crate::machine::{Action, Event, Machine, Params, Reply};
use crate::store::{StateStore, Store};
use anyhow::{Context, Result};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse};
use axum::routing::{get, post};
use axum::{Json, Router};
use lifeboat_api::ApiClient;
use lifeboat_api::http::{ApiError, JsonBody, Token};
use lifeboat_api::metrics::{family, health_value, sample};
use lifeboat_api::types::*;
use lifeboat_config::Config;
use lifeboat_core::{
    Epoch, HealthStatus, JournalEntry, JournalKind, RegionId, RoutingTable, VantageId,
};
use lifeboat_health::{CheckStates, Decision, VantageReport, decide};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Extra Prometheus text (DNS, replication …) appended to `/metrics`.
pub type MetricsFn = Arc<dyn Fn(&mut String) + Send + Sync>;
/// Engine endpoints of a region for `/v1/discovery` (e.g. "database" -> host/port).
pub type DiscoveryFn =
    Arc<dyn Fn(&Config, &RegionId) -> BTreeMap<String, serde_json::Value> + Send + Sync>;

#[derive(Default, Clone)]
pub struct ControllerOptions {
    pub extra_metrics: Vec<MetricsFn>,
    pub discovery: Option<DiscoveryFn>,
    /// How often the machine is ticked (health re-decided, timers checked).
    pub tick: Option<Duration>,
    /// `lifeboat controller --no-wait-for-agents`: act on the state on disk (or the
    /// config's initial active region) at once, without waiting for every agent's
    /// report first (see `machine`'s module doc, rule 8).
    pub no_wait_for_agents: bool,
    /// Several controllers (store = "etcd"): whether this one may still grant an
    /// agent lease at `now` (it leads and its etcd lease cannot have expired, with a
    /// margin). A lease request it may not answer gets 503 (undecided), never a grant.
    pub may_grant: Option<GrantGate>,
    /// Several controllers: who leads, for status, metrics and the dashboard.
    pub leadership: Option<LeadershipFn>,
}

/// See [`ControllerOptions::may_grant`].
pub type GrantGate = Arc<dyn Fn(Instant) -> bool + Send + Sync>;
/// See [`ControllerOptions::leadership`].
pub type LeadershipFn = Arc<dyn Fn() -> LeadershipView + Send + Sync>;

pub struct Controller {
    cfg: Arc<Config>,
    token: Token,
    store: Arc<dyn StateStore>,
    started: Instant,
    machine: tokio::sync::Mutex<Machine>,
    reports: Mutex<BTreeMap<RegionId, (Instant, AgentReport)>>,
    local: watch::Receiver<CheckStates>,
    decision: Mutex<Decision>,
    routing: watch::Sender<RoutingTable>,
    agents: BTreeMap<RegionId, ApiClient>,
    results_tx: mpsc::UnboundedSender<Event>,
    results_rx: Mutex<Option<mpsc::UnboundedReceiver<Event>>>,
    opts: ControllerOptions,
    /// Metrics sources added after start (DNS is built from the routing channel).
    late_metrics: Mutex<Vec<MetricsFn>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Controller {
    /// Open (or create) the durable state and build the controller. `local` is the
    /// controller's own vantage point (its prober's states).
    pub async fn open(
        cfg: Arc<Config>,
        token: Token,
        local: watch::Receiver<CheckStates>,
        opts: ControllerOptions,
    ) -> Result<Arc<Self>> {
        let store: Arc<dyn StateStore> = Arc::new(Store::open(&cfg.controller.state_dir)?);
        Self::open_with(cfg, token, local, opts, store).await
    }

    /// Build the controller on `store`. A controller that just won the leadership of
    /// several is built here too: from the store's state, exactly as if it had just
    /// restarted (rule 8; it assumes a grant at this instant, docs/architecture.md).
    pub async fn open_with(
        cfg: Arc<Config>,
        token: Token,
        local: watch::Receiver<CheckStates>,
        opts: ControllerOptions,
        store: Arc<dyn StateStore>,
    ) -> Result<Arc<Self>> {
        let now = Instant::now();
        let regions = cfg.region_ids();
        let existing = store.load().await?;
        if let Some(active) = existing.as_ref().and_then(|d| d.active.as_ref()) {
            anyhow::ensure!(
                cfg.region(active).is_some(),
                "the state in {} says region {active:?} is active, but the config no longer defines it",
                store.describe()
            );
        }
        let f = &cfg.failover;
        let params = Params {
            mode: f.mode,
            failback: f.failback,
            lease_ttl: f.lease_ttl,
            lease_margin: f.lease_margin,
            hold_down: f.hold_down,
            report_ttl: f.report_ttl,
            require_ready_standby: f.require_ready_standby,
            switchover_timeout: f.switchover_timeout,
            activation_grace: f.activation_grace,
            resend_every: (f.lease_ttl / 3).max(Duration::from_millis(200)),
            // The agents renew every ttl/3; the machine steps every 50 ms at least.
            stall_limit: Some((f.lease_ttl / 3).max(Duration::from_millis(200))),
        };
        let had_state = existing.is_some();
        let wait = !opts.no_wait_for_agents;
        let machine = Machine::start(params, &regions, existing, cfg.initial_active(), now, wait);
        if !had_state && !wait {
            // Acting on the config's initial state at once: it must be on disk before
            // anything it implies leaves. (A recovering controller persists only what
            // it adopts: killed before that, it starts recovering again.)
            store
                .save(&machine.durable())
                .await
                .context("persisting the initial state")?;
        }
        store.append(
            0,
            machine.epoch,
            JournalKind::ControllerStarted,
            machine.active.as_ref(),
            &format!(
                "controller started at epoch {}, active {}; {}",
                machine.epoch,
                machine
                    .active
                    .as_ref()
                    .map_or("none".into(), |r| r.to_string()),
                match (had_state, wait) {
                    (false, true) => "no state on disk: recovering, no lease until every agent has reported",
                    (true, true) => "state from disk: confirming it against the agents' reports",
                    (false, false) => "no state on disk, not waiting for the agents (--no-wait-for-agents): the config's initial active region",
                    (true, false) => "state from disk, not waiting for the agents (--no-wait-for-agents)",
                }
            ),
        ).await?;
        let agents = cfg
            .regions
            .iter()
            .map(|(name, r)| {
                (
                    RegionId::new(name),
                    ApiClient::new(
                        format!("http://{}", r.agent_addr),
                        Some(token.as_str().to_owned()),
                        Duration::from_secs(5),
                    ),
                )
            })
            .collect();
        let (results_tx, results_rx) = mpsc::unbounded_channel();
        let routing = RoutingTable {
            version: 1,
            epoch: machine.epoch,
            active: machine.active.clone(),
            regions: regions
                .iter()
                .map(|r| (r.clone(), HealthStatus::Unknown))
                .collect(),
            checks: BTreeMap::new(),
        };
        Ok(Arc::new(Self {
            cfg,
            token,
            store,
            started: now,
            machine: tokio::sync::Mutex::new(machine),
            reports: Mutex::new(BTreeMap::new()),
            local,
            decision: Mutex::new(Decision::default()),
            routing: watch::channel(routing).0,
            agents,
            results_tx,
            results_rx: Mutex::new(Some(results_rx)),
            opts,
            late_metrics: Mutex::new(Vec::new()),
        }))
    }

    /// Append more Prometheus text to `/metrics` (for pieces built after the controller).
    pub fn add_metrics(&self, f: MetricsFn) {
        lock(&self.late_metrics).push(f);
    }

    /// The live routing table, for DNS.
    pub fn routing(&self) -> watch::Receiver<RoutingTable> {
        self.routing.subscribe()
    }

    pub fn config(&self) -> &Arc<Config> {
        &self.cfg
    }

    fn mono_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Step the machine with one event and execute its actions in order.
    pub async fn step(&self, event: Event) -> Result<Option<Reply>> {
        let mut m = self.machine.lock().await;
        let out = m.step(Instant::now(), event);
        let mut publish = false;
        for action in out.actions {
            match action {
                Action::Persist => {
                    // On disk before anything after it: the Sends below carry this epoch.
                    self.store
                        .save(&m.durable())
                        .await
                        .context("persisting controller state")?;
                }
                Action::Journal {
                    kind,
                    region,
                    detail,
                } => {
                    self.store
                        .append(self.mono_ms(), m.epoch, kind, region.as_ref(), &detail)
                        .await
                        .context("writing the journal")?;
                    tracing::info!(epoch = %m.epoch, kind = kind.as_str(), region = ?region.as_ref().map(|r| r.to_string()), "{detail}");
                }
                Action::Send {
                    region,
                    command,
                    epoch,
                    active,
                    forced,
                } => self.send(region, command, epoch, active, forced),
                Action::Publish => publish = true,
            }
        }
        if publish {
            self.publish(&m);
        }
        Ok(out.reply)
    }

    fn send(
        &self,
        region: RegionId,
        command: CommandKind,
        epoch: Epoch,
        active: Option<RegionId>,
        forced: bool,
    ) {
        let Some(client) = self.agents.get(&region).cloned() else {
            return;
        };
        let tx = self.results_tx.clone();
        tokio::spawn(async move {
            let cmd = AgentCommand {
                epoch,
                command,
                active,
                forced,
            };
            let (ok, detail) = match client.command(&cmd).await {
                Ok(r) => (r.accepted, r.detail),
                Err(e) => (false, e.to_string()),
            };
            if !ok {
                tracing::warn!(region = %region, ?command, "command not accepted: {detail}");
            }
            let _ = tx.send(Event::CommandResult {
                region,
                kind: command,
                epoch,
                ok,
                detail,
            });
        });
    }

    /// Recompute the routing table; bump its version only when something changed.
    fn publish(&self, m: &Machine) {
        let decision = lock(&self.decision).clone();
        self.routing.send_if_modified(|rt| {
            let checks: BTreeMap<String, HealthStatus> = decision
                .checks
                .iter()
                .map(|(n, v)| (n.clone(), v.status))
                .collect();
            let mut regions = decision.regions.clone();
            for r in self.cfg.region_ids() {
                regions.entry(r).or_insert(HealthStatus::Unknown);
            }
            let changed = rt.epoch != m.epoch
                || rt.active != m.active
                || rt.regions != regions
                || rt.checks != checks;
            if changed {
                rt.version += 1;
                rt.epoch = m.epoch;
                rt.active = m.active.clone();
                rt.regions = regions;
                rt.checks = checks;
            }
            changed
        });
    }

    /// Decide health from every fresh vantage report (the controller's own included).
    fn decide_health(&self) -> Decision {
        let now = Instant::now();
        let mut reports = vec![(
            VantageReport::from_states(VantageId::Controller, &self.local.borrow()),
            Duration::ZERO,
        )];
        for (region, (at, r)) in lock(&self.reports).iter() {
            reports.push((
                VantageReport {
                    vantage: VantageId::Agent(region.clone()),
                    checks: r
                        .checks
                        .iter()
                        .map(|(n, c)| (n.clone(), c.status))
                        .collect(),
                    details: r
                        .checks
                        .iter()
                        .map(|(n, c)| (n.clone(), c.detail.clone()))
                        .collect(),
                },
                now.saturating_duration_since(*at),
            ));
        }
        decide(&self.cfg, &reports)
    }

    /// Tick the machine until `cancel`; feed agents' answers back in.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) -> Result<()> {
        let mut results = lock(&self.results_rx)
            .take()
            .context("controller already running")?;
        let tick = self.opts.tick.unwrap_or(Duration::from_millis(50));
        let mut interval = tokio::time::interval(tick);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                Some(ev) = results.recv() => { self.step(ev).await?; }
                _ = interval.tick() => {
                    let decision = self.decide_health();
                    let regions = decision.regions.clone();
                    *lock(&self.decision) = decision;
                    self.step(Event::Health(regions)).await?;
                    let m = self.machine.lock().await;
                    self.publish(&m);
                }
            }
        }
        let epoch = self.machine.lock().await.epoch;
        self.store
            .append(
                self.mono_ms(),
                epoch,
                JournalKind::Info,
                None,
                "controller stopped",
            )
            .await?;
        Ok(())
    }

    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/", get(dashboard))
            .route("/v1/status", get(status))
            .route("/v1/regions", get(regions))
            .route("/v1/health", get(health))
            .route("/v1/journal", get(journal))
            .route("/v1/routing", get(routing))
            .route("/v1/discovery", get(discovery))
            .route("/v1/failover", post(failover))
            .route("/v1/switchover", post(switchover))
            .route("/v1/lease", post(lease))
            .route("/v1/report", post(report))
            .route("/metrics", get(metrics))
            .route("/healthz", get(|| async { "ok" }))
            .with_state(self.clone())
    }

    async fn status_view(&self) -> ControllerStatus {
        let m = self.machine.lock().await;
        let now = Instant::now();
        let reports = lock(&self.reports).clone();
        let decision = lock(&self.decision).clone();
        let regions = self
            .cfg
            .regions
            .iter()
            .map(|(name, rc)| {
                let id = RegionId::new(name);
                let rep = reports.get(&id);
                RegionView {
                    active: m.active.as_ref() == Some(&id),
                    health: decision.regions.get(&id).copied().unwrap_or_default(),
                    agent_addr: rc.agent_addr.to_string(),
                    last_report_ms: rep.map(|(t, _)| {
                        u64::try_from(now.saturating_duration_since(*t).as_millis())
                            .unwrap_or(u64::MAX)
                    }),
                    agent_epoch: rep.map(|(_, r)| r.epoch),
                    agent_active: rep.is_some_and(|(_, r)| r.active),
                    fenced: rep.is_some_and(|(_, r)| r.fenced),
                    roles: rep.map(|(_, r)| r.roles.clone()).unwrap_or_default(),
                    promised: rep.and_then(|(_, r)| r.promised.clone()),
                    witness_lost: rep.is_some_and(|(_, r)| r.witness_lost),
                    name: id,
                }
            })
            .collect();
        ControllerStatus {
            deployment: self.cfg.deployment.name.clone(),
            epoch: m.epoch,
            active: m.active.clone(),
            phase: m.condition(),
            mode: format!("{:?}", self.cfg.failover.mode).to_lowercase(),
            lease: m.lease.as_ref().map(|l| {
                let expires = m.lease_certainly_expired_at().unwrap_or(now);
                LeaseView {
                    holder: l.holder.clone(),
                    epoch: l.epoch,
                    renewed: l.renewed,
                    expires_in_ms: if expires >= now {
                        i64::try_from(expires.duration_since(now).as_millis()).unwrap_or(i64::MAX)
                    } else {
                        -i64::try_from(now.duration_since(expires).as_millis()).unwrap_or(i64::MAX)
                    },
                }
            }),
            regions,
            failovers: m.failovers,
            leadership: self.opts.leadership.as_ref().map(|f| f()),
        }
    }

    /// The current epoch.
    pub async fn epoch(&self) -> Epoch {
        self.machine.lock().await.epoch
    }

    /// May this controller grant a lease now (see [`ControllerOptions::may_grant`])?
    fn may_grant(&self) -> bool {
        self.opts
            .may_grant
            .as_ref()
            .is_none_or(|gate| gate(Instant::now()))
    }
}

fn internal(e: anyhow::Error) -> ApiError {
    tracing::error!("{e:#}");
    ApiError::internal(format!("{e:#}"))
}

async fn status(State(c): State<Arc<Controller>>) -> Json<ControllerStatus> {
    Json(c.status_view().await)
}

async fn regions(State(c): State<Arc<Controller>>) -> Json<Vec<RegionView>> {
    Json(c.status_view().await.regions)
}

async fn health(State(c): State<Arc<Controller>>) -> Json<Vec<CheckView>> {
    let decision = lock(&c.decision).clone();
    let now = Instant::now();
    let reports = lock(&c.reports).clone();
    let local = c.local.borrow().clone();
    let mut out = Vec::new();
    for (name, check) in &c.cfg.checks {
        let verdict = decision.checks.get(name);
        let mut vantage = BTreeMap::new();
        if let Some(s) = local.get(name) {
            vantage.insert(
                "controller".to_owned(),
                CheckReport {
                    status: s.status,
                    detail: s.detail.clone(),
                    latency_ms: s.latency_ms,
                },
            );
        }
        for (region, (at, r)) in &reports {
            if now.saturating_duration_since(*at) > c.cfg.failover.report_ttl {
                continue;
            }
            if let Some(cr) = r.checks.get(name) {
                vantage.insert(format!("agent:{region}"), cr.clone());
            }
        }
        out.push(CheckView {
            name: name.clone(),
            region: check.region.as_ref().map(RegionId::new),
            status: verdict.map(|v| v.status).unwrap_or_default(),
            quorum: verdict.map_or(c.cfg.check_quorum(check), |v| v.quorum),
            unhealthy_votes: verdict.map_or(0, |v| v.unhealthy_votes),
            vantage,
        });
    }
    Json(out)
}

#[derive(serde::Deserialize)]
struct Since {
    #[serde(default)]
    since: u64,
    #[serde(default)]
    limit: Option<usize>,
}

async fn journal(
    State(c): State<Arc<Controller>>,
    q: Result<Query<Since>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<JournalEntry>>, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::bad_request(format!("bad query: {e}")))?;
    c.store
        .journal(q.since, q.limit.unwrap_or(10_000))
        .await
        .map(Json)
        .map_err(internal)
}

/// While recovering (no state, or state older than the agents') the controller does
/// not know the active region: it says so (503) rather than answer "none", so that
/// agents' secondary DNS and applications keep the last answer they had (the region
/// that is in fact still serving) instead of dropping it.
async fn unknown_while_recovering(c: &Controller) -> Result<(), ApiError> {
    let m = c.machine.lock().await;
    if m.recovery.as_ref().is_some_and(|r| r.strict) {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{}: the active region is not known yet", m.condition()),
        ));
    }
    Ok(())
}

async fn routing(State(c): State<Arc<Controller>>) -> Result<Json<RoutingTable>, ApiError> {
    unknown_while_recovering(&c).await?;
    Ok(Json(c.routing.borrow().clone()))
}

async fn discovery(State(c): State<Arc<Controller>>) -> Result<Json<Discovery>, ApiError> {
    unknown_while_recovering(&c).await?;
    let rt = c.routing.borrow().clone();
    let address = rt
        .active
        .as_ref()
        .and_then(|a| c.cfg.region(a))
        .and_then(|r| r.address)
        .map(|a| a.to_string());
    let endpoints = match (&c.opts.discovery, &rt.active) {
        (Some(f), Some(active)) => f(&c.cfg, active),
        _ => BTreeMap::new(),
    };
    Ok(Json(Discovery {
        epoch: rt.epoch,
        active: rt.active,
        address,
        endpoints,
    }))
}

async fn operator_move(
    c: &Controller,
    headers: &HeaderMap,
    body: Result<JsonBody<MoveRequest>, ApiError>,
    switchover: bool,
) -> Result<(StatusCode, Json<MoveResponse>), ApiError> {
    c.token.check(headers)?;
    let JsonBody(req) = body?;
    if c.cfg.region(&req.to).is_none() {
        return Err(ApiError::bad_request(format!(
            "no region named {:?} (regions: {})",
            req.to.as_str(),
            c.cfg.regions.keys().cloned().collect::<Vec<_>>().join(", ")
        )));
    }
    let ev = if switchover {
        Event::Switchover { to: req.to.clone() }
    } else {
        Event::Failover {
            to: req.to.clone(),
            force: req.force,
        }
    };
    let reply = c.step(ev).await.map_err(internal)?;
    let epoch = c.machine.lock().await.epoch;
    match reply {
        Some(Reply::Move(Ok(detail))) => Ok((
            StatusCode::ACCEPTED,
            Json(MoveResponse {
                accepted: true,
                epoch,
                detail,
            }),
        )),
        Some(Reply::Move(Err(detail))) => Err(ApiError::conflict(detail)),
        _ => Err(ApiError::internal("no reply from the state machine")),
    }
}

async fn failover(
    State(c): State<Arc<Controller>>,
    headers: HeaderMap,
    body: Result<JsonBody<MoveRequest>, ApiError>,
) -> Result<(StatusCode, Json<MoveResponse>), ApiError> {
    operator_move(&c, &headers, body, false).await
}

async fn switchover(
    State(c): State<Arc<Controller>>,
    headers: HeaderMap,
    body: Result<JsonBody<MoveRequest>, ApiError>,
) -> Result<(StatusCode, Json<MoveResponse>), ApiError> {
    operator_move(&c, &headers, body, true).await
}

async fn lease(
    State(c): State<Arc<Controller>>,
    headers: HeaderMap,
    body: Result<JsonBody<LeaseRequest>, ApiError>,
) -> Result<Json<LeaseResponse>, ApiError> {
    c.token.check(&headers)?;
    let JsonBody(req) = body?;
    if c.cfg.region(&req.region).is_none() {
        return Err(ApiError::bad_request(format!(
            "no region named {:?}",
            req.region.as_str()
        )));
    }
    if !c.may_grant() {
        // Not the leader any more, or its etcd lease may be about to expire: not a
        // decision (503), so the active agent holds on promises (rule 7) until it
        // finds the new leader.
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "this controller's leadership is ending: ask the leader",
        ));
    }
    let reply = c
        .step(Event::LeaseRequest {
            region: req.region,
            epoch: req.epoch,
        })
        .await
        .map_err(internal)?;
    let m = c.machine.lock().await;
    let (granted, reason) = match reply {
        // Checked again after the step: the grant leaves only while the leadership
        // that made it holds (the old leader's last grant precedes the new one's
        // takeover, docs/architecture.md).
        Some(Reply::Lease { granted: true, .. }) if !c.may_grant() => {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "this controller's leadership ended: ask the leader",
            ));
        }
        Some(Reply::Lease { granted, reason }) => (granted, reason),
        Some(Reply::LeaseUndecided { reason }) => {
            // Not a decision: the controller cannot judge yet. 503 makes the active
            // agent treat it as a lost witness (promises, rule 7) instead of
            // letting its lease run out on a refusal.
            return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, reason));
        }
        _ => (false, "no reply from the state machine".into()),
    };
    Ok(Json(LeaseResponse {
        granted,
        epoch: m.epoch,
        active: m.active.clone(),
        ttl_ms: u64::try_from(c.cfg.failover.lease_ttl.as_millis()).unwrap_or(u64::MAX),
        reason,
    }))
}

async fn report(
    State(c): State<Arc<Controller>>,
    headers: HeaderMap,
    body: Result<JsonBody<AgentReport>, ApiError>,
) -> Result<Json<ReportResponse>, ApiError> {
    c.token.check(&headers)?;
    let JsonBody(r) = body?;
    if c.cfg.region(&r.region).is_none() {
        return Err(ApiError::bad_request(format!(
            "no region named {:?}",
            r.region.as_str()
        )));
    }
    let ready = r.roles.iter().all(|s| s.ready_to_promote);
    let caught_up = r.roles.iter().all(|s| s.caught_up);
    let detail = r
        .roles
        .iter()
        .filter(|s| !s.ready_to_promote || !s.caught_up)
        .map(|s| format!("{}: {}", s.name, s.detail))
        .collect::<Vec<_>>()
        .join("; ");
    let ev = Event::Report {
        region: r.region.clone(),
        epoch: r.epoch,
        active: r.active,
        fenced: r.fenced,
        ready,
        caught_up,
        detail,
        promised: r.promised.clone(),
        witness_lost: r.witness_lost,
        view_active: r.view_active.clone(),
    };
    lock(&c.reports).insert(r.region.clone(), (Instant::now(), r));
    c.step(ev).await.map_err(internal)?;
    let m = c.machine.lock().await;
    Ok(Json(ReportResponse {
        epoch: m.epoch,
        active: m.active.clone(),
    }))
}

/// The leadership gauges (every controller, leader or not).
pub fn leadership_metrics(out: &mut String, v: &LeadershipView) {
    family(
        out,
        "lifeboat_controller_leading",
        "gauge",
        "1 while this controller leads and may grant leases, else 0.",
    );
    sample(
        out,
        "lifeboat_controller_leading",
        &[("member", &v.this)],
        f64::from(u8::from(v.leading)),
    );
    family(
        out,
        "lifeboat_etcd_endpoint_healthy",
        "gauge",
        "1 if the etcd endpoint answered its last status request, else 0.",
    );
    for e in &v.etcd {
        sample(
            out,
            "lifeboat_etcd_endpoint_healthy",
            &[("endpoint", &e.endpoint)],
            f64::from(u8::from(e.healthy)),
        );
    }
    family(
        out,
        "lifeboat_controller_up",
        "gauge",
        "1 if the controller answered its last /healthz from this one, else 0.",
    );
    for c in &v.controllers {
        sample(
            out,
            "lifeboat_controller_up",
            &[("member", &c.name)],
            f64::from(u8::from(c.up)),
        );
    }
}

/// Durations between the steps of the most recent failover, from the journal.
fn last_failover_steps(journal: &[JournalEntry]) -> Vec<(&'static str, f64)> {
    let Some(promoted) = journal
        .iter()
        .rposition(|e| e.kind == JournalKind::Promoted)
    else {
        return vec![];
    };
    let start = journal[..promoted]
        .iter()
        .rposition(|e| matches!(e.kind, JournalKind::Detected | JournalKind::OperatorRequest))
        .unwrap_or(promoted);
    let find = |k: JournalKind, from: usize| {
        journal[from..]
            .iter()
            .find(|e| e.kind == k)
            .map(|e| e.mono_ms)
    };
    let t = |k| find(k, start);
    let mut out = Vec::new();
    let pairs = [
        (
            "detect_to_confirm",
            JournalKind::Detected,
            JournalKind::Confirmed,
        ),
        (
            "confirm_to_fence",
            JournalKind::Confirmed,
            JournalKind::Fenced,
        ),
        (
            "fence_to_promote",
            JournalKind::Fenced,
            JournalKind::Promoted,
        ),
        (
            "promote_to_verify",
            JournalKind::Promoted,
            JournalKind::Verified,
        ),
        (
            "detect_to_verify",
            JournalKind::Detected,
            JournalKind::Verified,
        ),
    ];
    for (name, a, b) in pairs {
        if let (Some(x), Some(y)) = (t(a), t(b))
            && y >= x
        {
            out.push((name, (y - x) as f64 / 1000.0));
        }
    }
    out
}

async fn metrics(State(c): State<Arc<Controller>>) -> impl IntoResponse {
    let mut out = String::new();
    let (epoch, active, failovers) = {
        let m = c.machine.lock().await;
        (m.epoch, m.active.clone(), m.failovers)
    };
    family(
        &mut out,
        "lifeboat_epoch",
        "gauge",
        "Current epoch (fencing token).",
    );
    sample(&mut out, "lifeboat_epoch", &[], epoch.0 as f64);
    family(
        &mut out,
        "lifeboat_active_region",
        "gauge",
        "1 for the active region, 0 for the others.",
    );
    for r in c.cfg.region_ids() {
        sample(
            &mut out,
            "lifeboat_active_region",
            &[("region", r.as_str())],
            f64::from(u8::from(active.as_ref() == Some(&r))),
        );
    }
    family(
        &mut out,
        "lifeboat_failovers_total",
        "counter",
        "Promotions since the deployment started.",
    );
    sample(&mut out, "lifeboat_failovers_total", &[], failovers as f64);
    // Witness-loss promises (rule 7, docs/architecture.md), from each region's latest report: what
    // holds a promotion back, and who serves on promises instead of a grant.
    let reports = lock(&c.reports).clone();
    let now = Instant::now();
    family(
        &mut out,
        "lifeboat_region_promise_remaining_ms",
        "gauge",
        "Milliseconds the region's agent still promises not to activate (0: no promise).",
    );
    family(
        &mut out,
        "lifeboat_region_witness_lost",
        "gauge",
        "1 while the region's agent holds its lease on promises (witness lost), else 0.",
    );
    for r in c.cfg.region_ids() {
        let rep = reports.get(&r);
        let remaining = rep
            .and_then(|(at, rep)| {
                let p = rep.promised.as_ref()?;
                let age = u64::try_from(now.saturating_duration_since(*at).as_millis())
                    .unwrap_or(u64::MAX);
                Some(p.remaining_ms.saturating_sub(age))
            })
            .unwrap_or(0);
        sample(
            &mut out,
            "lifeboat_region_promise_remaining_ms",
            &[("region", r.as_str())],
            remaining as f64,
        );
        sample(
            &mut out,
            "lifeboat_region_witness_lost",
            &[("region", r.as_str())],
            f64::from(u8::from(rep.is_some_and(|(_, rep)| rep.witness_lost))),
        );
    }
    let decision = lock(&c.decision).clone();
    family(
        &mut out,
        "lifeboat_region_health",
        "gauge",
        "Region health by quorum: 1 healthy, 0 unhealthy, -1 unknown.",
    );
    for (r, h) in &decision.regions {
        sample(
            &mut out,
            "lifeboat_region_health",
            &[("region", r.as_str())],
            health_value(*h),
        );
    }
    family(
        &mut out,
        "lifeboat_check_health",
        "gauge",
        "Check health per vantage point (and \"quorum\" for the decision).",
    );
    for (name, v) in &decision.checks {
        sample(
            &mut out,
            "lifeboat_check_health",
            &[("check", name), ("vantage", "quorum")],
            health_value(v.status),
        );
        for (vp, h) in &v.vantage {
            sample(
                &mut out,
                "lifeboat_check_health",
                &[("check", name), ("vantage", &vp.to_string())],
                health_value(*h),
            );
        }
    }
    if let Ok(journal) = c.store.journal(0, 100_000).await {
        family(
            &mut out,
            "lifeboat_failover_step_seconds",
            "gauge",
            "Duration of each step of the most recent failover.",
        );
        for (step, secs) in last_failover_steps(&journal) {
            sample(
                &mut out,
                "lifeboat_failover_step_seconds",
                &[("step", step)],
                secs,
            );
        }
    }
    if let Some(v) = c.opts.leadership.as_ref().map(|f| f()) {
        leadership_metrics(&mut out, &v);
    }
    for f in &c.opts.extra_metrics {
        f(&mut out);
    }
    for f in lock(&c.late_metrics).iter() {
        f(&mut out);
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        out,
    )
}

async fn dashboard(State(c): State<Arc<Controller>>) -> Html<String> {
    let s = c.status_view().await;
    let journal = c.store.journal(0, 100_000).await.unwrap_or_default();
    let esc = |t: &str| {
        t.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    };
    let mut rows = String::new();
    for r in &s.regions {
        rows.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td class=\"{:?}\">{:?}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(r.name.as_str()),
            if r.active { "<b>active</b>" } else { "standby" },
            r.health,
            r.health,
            r.agent_epoch.map_or("-".into(), |e| e.to_string()),
            r.last_report_ms.map_or("never".into(), |m| format!("{m} ms ago")),
            esc(&r.roles.iter().map(|x| format!("{}: {:?} {}", x.name, x.role, x.detail)).collect::<Vec<_>>().join("<br>")),
            // rule 7: why a standby cannot be promoted, and who serves on promises.
            esc(&match (&r.promised, r.witness_lost) {
                (Some(p), _) => format!("promised {} not to activate for {} ms", p.to, p.remaining_ms),
                (None, true) => "witness lost: holds its lease on promises".to_owned(),
                (None, false) => "-".to_owned(),
            }),
        ));
    }
    let mut jrows = String::new();
    for e in journal.iter().rev().take(50) {
        jrows.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            e.seq,
            e.at_unix_ms,
            e.epoch,
            e.kind.as_str(),
            esc(&format!(
                "{} {}",
                e.region.as_ref().map_or("", |r| r.as_str()),
                e.detail
            ))
        ));
    }
    Html(format!(
        "<!doctype html><html><head><meta charset=utf-8><meta http-equiv=refresh content=2><title>lifeboat — {dep}</title>\
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px}}.Healthy{{color:green}}.Unhealthy{{color:red}}</style></head>\
<body><h1>lifeboat — {dep}</h1>{leader}<p>epoch <b>{epoch}</b> · active <b>{active}</b> · phase {phase} · mode {mode} · failovers {fo}</p>\
<h2>Regions</h2><table><tr><th>region</th><th>role</th><th>health</th><th>agent epoch</th><th>last report</th><th>data roles</th><th>witness</th></tr>{rows}</table>\
<h2>Journal (newest first)</h2><table><tr><th>#</th><th>unix ms</th><th>epoch</th><th>step</th><th>detail</th></tr>{jrows}</table></body></html>",
        dep = esc(&s.deployment),
        epoch = s.epoch,
        active = s.active.as_ref().map_or("none".into(), |r| r.to_string()),
        phase = esc(&s.phase),
        mode = s.mode,
        fo = s.failovers,
        leader = s.leadership.as_ref().map_or(String::new(), |v| format!(
            "<p>controller <b>{}</b> leads · controllers: {} · etcd: {}</p>",
            esc(&v.this),
            esc(&v
                .controllers
                .iter()
                .map(|c| format!("{} {}", c.name, if c.up { "up" } else { "down" }))
                .collect::<Vec<_>>()
                .join(", ")),
            esc(&v
                .etcd
                .iter()
                .map(|e| format!("{} {}", e.endpoint, if e.healthy { "up" } else { "down" }))
                .collect::<Vec<_>>()
                .join(", "))
        )),
    ))
}
