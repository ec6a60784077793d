//! The controller runtime: [`Controller`] owns the machine, the store and the channels,
//! and serves the HTTP API — handlers in `server/handlers.rs`, `/metrics` in
//! `server/metrics.rs`, the HTML dashboard in `server/dashboard.rs`.
//!
//! Every event goes through [`Controller::step`], which holds the machine's lock
//! while it steps and executes the resulting actions *in order*: a `Persist` is on
//! disk before any later `Send` leaves, because commands are sent from tasks spawned
//! after it. Agent answers come back as events through a channel.

pub(crate) mod dashboard;
mod drills;

/// The largest request body a follower forwards to the leader (a drill report).
#[cfg(feature = "etcd")]
pub(crate) const MAX_FORWARDED_BODY: usize = drills::MAX_UPLOAD;
mod handlers;
mod lag;
mod metrics;
mod tables;

pub use metrics::leadership_metrics;

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
use lifeboat_api::metrics::health_value;
use lifeboat_api::types::*;
use lifeboat_config::Config;
use lifeboat_core::metrics::{Kind, Page};
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

/// Extra families (DNS, replication …) added to the `/metrics` page.
pub type MetricsFn = Arc<dyn Fn(&mut lifeboat_core::metrics::Page) + Send + Sync>;
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
    /// When each agent's reports resumed after a gap longer than `report_ttl` (or
    /// began): its votes wait until it has probed afresh ([`vote_age`]).
    resumed: Mutex<BTreeMap<RegionId, Instant>>,
    local: watch::Receiver<CheckStates>,
    decision: Mutex<Decision>,
    routing: watch::Sender<RoutingTable>,
    agents: BTreeMap<RegionId, ApiClient>,
    results_tx: mpsc::UnboundedSender<Event>,
    results_rx: Mutex<Option<mpsc::UnboundedReceiver<Event>>>,
    opts: ControllerOptions,
    /// Metrics sources added after start (DNS is built from the routing channel).
    late_metrics: Mutex<Vec<MetricsFn>>,
    /// Set when a write to the store failed: the machine has moved on in memory to a
    /// state that is not on disk, so it makes no further decision (no later step may
    /// send a command that depends on it); the run loop exits with this error and a
    /// supervisor starts the controller again from what is on disk (rule 8).
    broken: Mutex<Option<String>>,
    /// The last minutes of the agents' replication lag, for the dashboard.
    lag: Mutex<lag::LagHistory>,
    /// The table servers' status (global tables), for the dashboard.
    tables: Arc<Mutex<Vec<tables::TableServerView>>>,
    /// Cancelled when `run` returns: the live streams (`/v1/events`) end with it, so an
    /// open dashboard never holds up the HTTP server's graceful stop.
    stopping: CancellationToken,
}

/// The age a vantage point's report counts with in the health quorum. An agent whose
/// reports resumed less than `report_ttl` ago counts as stale (no vote): the checks it
/// reports were judged while it was cut off or gone (a partitioned agent's probes of the
/// other region failed because of the partition, and its rise counts keep saying so for
/// a while after the heal). Seen in CI: right after a partition of a healed, a's stale
/// "b unreachable" plus one timed-out probe made a quorum, and b failed back to a. Only
/// a vote is withheld, never given, so this can delay a failover by at most
/// `report_ttl`, never cause one.
fn vote_age(now: Instant, at: Instant, resumed: Option<Instant>, report_ttl: Duration) -> Duration {
    let age = now.saturating_duration_since(at);
    match resumed {
        Some(r) if now.saturating_duration_since(r) < report_ttl => {
            age.max(report_ttl + Duration::from_millis(1))
        }
        _ => age,
    }
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
            health_settle: cfg
                .checks
                .values()
                .map(|c| c.interval + c.timeout)
                .max()
                .unwrap_or_default()
                .min(f.report_ttl),
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
            broken: Mutex::new(None),
            lag: Mutex::new(lag::LagHistory::default()),
            tables: Arc::default(),
            resumed: Mutex::new(BTreeMap::new()),
            stopping: CancellationToken::new(),
        }))
    }

    /// Add more families to `/metrics` (for pieces built after the controller).
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
        if let Some(why) = lock(&self.broken).clone() {
            anyhow::bail!("the controller makes no more decisions: {why}");
        }
        let result = self.step_locked(&mut m, event).await;
        if let Err(e) = &result {
            let mut broken = lock(&self.broken);
            if broken.is_none() {
                tracing::error!("{e:#}: this controller stops deciding; restart it");
                *broken = Some(format!("{e:#}"));
            }
        }
        result
    }

    async fn step_locked(&self, m: &mut Machine, event: Event) -> Result<Option<Reply>> {
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
            self.publish(m);
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
        let resumed = lock(&self.resumed).clone();
        for (region, (at, r)) in lock(&self.reports).iter() {
            let age = vote_age(
                now,
                *at,
                resumed.get(region).copied(),
                self.cfg.failover.report_ttl,
            );
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
                age,
            ));
        }
        decide(&self.cfg, &reports)
    }

    /// Note an agent's report arriving at `now`: after a gap longer than `report_ttl`
    /// (a partition healed, an agent restarted or thawed) its reports have resumed.
    fn note_report(&self, region: &RegionId, now: Instant) {
        let ttl = self.cfg.failover.report_ttl;
        let gap = lock(&self.reports)
            .get(region)
            .is_none_or(|(at, _)| now.saturating_duration_since(*at) > ttl);
        if gap {
            lock(&self.resumed).insert(region.clone(), now);
        }
    }

    /// Tick the machine until `cancel`; feed agents' answers back in.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) -> Result<()> {
        // However run ends, the dashboards' streams end with it.
        let _streams = self.stopping.clone().drop_guard();
        let mut results = lock(&self.results_rx)
            .take()
            .context("controller already running")?;
        // The table servers' status for the dashboard, asked until run returns.
        let tables_cancel = cancel.child_token();
        let _stop_tables = tables_cancel.clone().drop_guard();
        tokio::spawn(tables::watch(
            self.cfg.clone(),
            self.token.clone(),
            self.tables.clone(),
            tables_cancel,
        ));
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
            .route("/", get(dashboard::dashboard))
            .route("/v1/events", get(dashboard::events))
            .route(
                "/v1/drills",
                get(drills::list)
                    .post(drills::upload)
                    .layer(axum::extract::DefaultBodyLimit::max(drills::MAX_UPLOAD)),
            )
            .route("/drills/{id}", get(drills::html))
            .route("/v1/status", get(handlers::status))
            .route("/v1/regions", get(handlers::regions))
            .route("/v1/health", get(handlers::health))
            .route("/v1/journal", get(handlers::journal))
            .route("/v1/routing", get(handlers::routing))
            .route("/v1/discovery", get(handlers::discovery))
            .route("/v1/failover", post(handlers::failover))
            .route("/v1/switchover", post(handlers::switchover))
            .route("/v1/lease", post(handlers::lease))
            .route("/v1/report", post(handlers::report))
            .route("/metrics", get(metrics::metrics))
            .route("/healthz", get(|| async { "ok" }))
            .with_state(self.clone())
    }

    /// True for a lone controller, and for the term of the one that leads.
    fn leads_or_alone(&self) -> bool {
        self.opts.leadership.as_ref().is_none_or(|f| f().leading)
    }

    /// Each check's verdict with every vantage point's last report (`/v1/health`).
    fn health_view(&self) -> Vec<CheckView> {
        let c = self;
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
        out
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::Durable;

    #[test]
    fn an_agent_whose_reports_just_resumed_has_no_vote_for_a_report_ttl() {
        let t0 = Instant::now();
        let ttl = Duration::from_secs(2);
        let ms = Duration::from_millis;
        // Reporting steadily: its report counts with its own age.
        assert_eq!(
            vote_age(t0 + ms(5000), t0 + ms(4800), Some(t0), ttl),
            ms(200)
        );
        assert_eq!(vote_age(t0 + ms(5000), t0 + ms(4800), None, ttl), ms(200));
        // Resumed 500 ms ago (a partition healed): stale, whatever its age.
        let age = vote_age(t0 + ms(5000), t0 + ms(4900), Some(t0 + ms(4500)), ttl);
        assert!(age > ttl, "{age:?}");
        // A report_ttl after the resume it votes again.
        assert_eq!(
            vote_age(t0 + ms(6600), t0 + ms(6500), Some(t0 + ms(4500)), ttl),
            ms(100)
        );
    }
    use std::sync::atomic::{AtomicBool, Ordering};

    /// The real SQLite store, whose writes fail once `failing` is set (a full or
    /// vanished disk).
    struct FailingStore {
        inner: Store,
        failing: AtomicBool,
    }

    #[async_trait::async_trait]
    impl StateStore for FailingStore {
        fn describe(&self) -> String {
            self.inner.describe()
        }
        async fn load(&self) -> Result<Option<Durable>> {
            StateStore::load(&self.inner).await
        }
        async fn save(&self, state: &Durable) -> Result<()> {
            if self.failing.load(Ordering::SeqCst) {
                anyhow::bail!("disk I/O error");
            }
            StateStore::save(&self.inner, state).await
        }
        async fn append(
            &self,
            mono_ms: u64,
            epoch: Epoch,
            kind: JournalKind,
            region: Option<&RegionId>,
            detail: &str,
        ) -> Result<JournalEntry> {
            if self.failing.load(Ordering::SeqCst) {
                anyhow::bail!("disk I/O error");
            }
            StateStore::append(&self.inner, mono_ms, epoch, kind, region, detail).await
        }
        async fn journal(&self, since: u64, limit: usize) -> Result<Vec<JournalEntry>> {
            StateStore::journal(&self.inner, since, limit).await
        }
    }

    /// A decision the controller could not persist is not acted on later: once a store
    /// write failed, every further step is refused (the run loop then exits, and a
    /// restart starts from the disk), instead of the in-memory machine sending commands
    /// whose state a crash would take back.
    #[tokio::test]
    async fn after_a_failed_write_the_controller_makes_no_more_decisions() {
        let dir = tempfile::tempdir().expect("temp dir");
        let text = format!(
            "[deployment]\nname = \"t\"\n\n[controller]\napi_addr = \"127.0.0.1:9\"\n\
             state_dir = {:?}\n\n[auth]\ntoken_env = \"T\"\n\n\
             [regions.a]\nagent_addr = \"127.0.0.1:9\"\nrole = \"active\"\n\n\
             [regions.b]\nagent_addr = \"127.0.0.1:10\"\nrole = \"standby\"\n",
            dir.path().display().to_string()
        );
        let cfg = Config::parse(&dir.path().join("t.toml"), &text).expect("config");
        let store = Arc::new(FailingStore {
            inner: Store::open(dir.path()).expect("store"),
            failing: AtomicBool::new(false),
        });
        let (_tx, local) = watch::channel(CheckStates::default());
        let opts = ControllerOptions {
            no_wait_for_agents: true,
            ..ControllerOptions::default()
        };
        let c = Controller::open_with(Arc::new(cfg), Token::new("t"), local, opts, store.clone())
            .await
            .expect("controller");
        for (region, active) in [("a", true), ("b", false)] {
            c.step(Event::Report {
                region: RegionId::new(region),
                epoch: Epoch(1),
                active,
                fenced: !active,
                ready: true,
                caught_up: true,
                detail: String::new(),
                promised: None,
                witness_lost: false,
                view_active: Some(RegionId::new("a")),
            })
            .await
            .expect("a healthy step");
        }

        store.failing.store(true, Ordering::SeqCst);
        let failed = c
            .step(Event::Failover {
                to: RegionId::new("b"),
                force: true,
            })
            .await;
        assert!(
            failed.is_err(),
            "the move could not be persisted: {failed:?}"
        );
        store.failing.store(false, Ordering::SeqCst);
        let err = c
            .step(Event::Tick)
            .await
            .expect_err("no decision after a failed write");
        assert!(format!("{err:#}").contains("no more decisions"), "{err:#}");
        let err = c
            .clone()
            .run(CancellationToken::new())
            .await
            .expect_err("run stops");
        assert!(format!("{err:#}").contains("disk I/O error"), "{err:#}");
    }
}
