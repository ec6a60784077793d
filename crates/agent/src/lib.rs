//! The region agent.
//!
//! One per region. It runs the region's vantage-point probes and reports them to the
//! controller; it holds the lease while its region is active and renews it every
//! ttl/3; it fences its region *itself* the moment a renewal has not succeeded by the
//! deadline — measured on its own monotonic clock from when it *sent* the last
//! successful renewal, so its deadline always falls before the controller's view of
//! the same lease (DESIGN.md rule 2). It persists the highest epoch it has seen and
//! refuses any command older than it (rule 1); after acknowledging a fence at an
//! epoch it never activates under that epoch again.
//!
//! The region's data layers are [`DataRole`]s: the agent activates them in order
//! (databases first, services last) and fences them all at once: a fence is the moment
//! writes must stop, so the database's fence never waits for a service's graceful stop
//! (the controller promotes another region only lease_margin after the lease lapsed).

mod guard;
mod persist;
pub mod routes;
pub mod services;

use anyhow::{Context, Result};
use lifeboat_api::ApiClient;
use lifeboat_api::http::Token;
use lifeboat_api::types::{AgentReport, CheckReport};
use lifeboat_config::Config;
use lifeboat_core::{
    Activation, DataRole, Epoch, FollowTarget, JournalKind, RegionId, RoleStatus, SharedRole,
};
pub use persist::AgentStore;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Extra Prometheus text appended to the agent's `/metrics`.
pub type MetricsFn = Arc<dyn Fn(&mut String) + Send + Sync>;

/// What the agent's vantage probes currently say (filled by the health prober).
pub type ChecksRx = watch::Receiver<BTreeMap<String, CheckReport>>;

#[derive(Debug, Clone, Default)]
pub struct State {
    pub epoch: Epoch,
    /// Acknowledged a fence at this epoch: never activate under it.
    pub fenced_epoch: Option<Epoch>,
    /// Roles are active under a valid lease.
    pub active: bool,
    pub fenced: bool,
    pub fenced_at_unix_ms: Option<u64>,
    /// The controller says this region is active at this epoch: take the lease.
    pub want_active: Option<Epoch>,
    pub lease_deadline: Option<Instant>,
    pub controller_reachable: bool,
    pub followed_epoch: Option<Epoch>,
    /// The last follow failure (journaled once) and the current retry backoff.
    pub follow_error: Option<String>,
    pub follow_backoff: Duration,
    pub last_activation_error: Option<String>,
}

pub struct Agent {
    pub cfg: Arc<Config>,
    pub region: RegionId,
    pub token: Token,
    pub controller: ApiClient,
    store: AgentStore,
    started: Instant,
    roles: Vec<SharedRole>,
    state: Mutex<State>,
    /// Serialises fence / activate / follow across tasks.
    role_lock: tokio::sync::Mutex<()>,
    wake: Notify,
    deadline_tx: watch::Sender<Option<Instant>>,
    /// The instant by which the region must be fenced: Some while a lease is held (or
    /// roles may still be writable), None only once a fence has completed. The guard
    /// process is fed from it (`guard.rs`).
    guard_tx: watch::Sender<Option<Instant>>,
    checks: ChecksRx,
    role_cache: Mutex<Vec<RoleStatus>>,
    forced: std::sync::atomic::AtomicBool,
    extra_metrics: Mutex<Vec<MetricsFn>>,
    pub report_interval: Duration,
}

impl Agent {
    /// `roles` in activation order (databases first, services last).
    pub fn new(
        cfg: Arc<Config>,
        region: RegionId,
        token: Token,
        roles: Vec<SharedRole>,
        checks: ChecksRx,
    ) -> Result<Arc<Self>> {
        anyhow::ensure!(
            cfg.region(&region).is_some(),
            "region {region:?} is not defined in {} (regions: {})",
            cfg.source.display(),
            cfg.regions.keys().cloned().collect::<Vec<_>>().join(", ")
        );
        let store = AgentStore::open(&cfg.agent_state_dir(&region))?;
        let (epoch, fenced_epoch) = store.load_epoch()?;
        let controller = ApiClient::new(
            format!("http://{}", cfg.controller.api_addr),
            Some(token.as_str().to_owned()),
            (cfg.failover.lease_ttl / 3).max(Duration::from_millis(200)),
        );
        let report_interval = cfg
            .checks
            .values()
            .map(|c| c.interval)
            .min()
            .unwrap_or(Duration::from_millis(500))
            .clamp(Duration::from_millis(100), Duration::from_millis(500))
            / 2;
        Ok(Arc::new(Self {
            cfg,
            region,
            token,
            controller,
            store,
            started: Instant::now(),
            roles,
            state: Mutex::new(State {
                epoch,
                fenced_epoch,
                ..State::default()
            }),
            role_lock: tokio::sync::Mutex::new(()),
            wake: Notify::new(),
            deadline_tx: watch::channel(None).0,
            guard_tx: watch::channel(None).0,
            checks,
            role_cache: Mutex::new(Vec::new()),
            forced: std::sync::atomic::AtomicBool::new(false),
            extra_metrics: Mutex::new(Vec::new()),
            report_interval,
        }))
    }

    /// Append more Prometheus text to the agent's `/metrics` (replication, database …).
    pub fn add_metrics(&self, f: MetricsFn) {
        self.extra_metrics
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(f);
    }

    pub(crate) fn render_extra_metrics(&self, out: &mut String) {
        for f in self
            .extra_metrics
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            f(out);
        }
    }

    /// See the `guard_tx` field: what the guard process must enforce.
    pub(crate) fn guard_deadline(&self) -> watch::Receiver<Option<Instant>> {
        self.guard_tx.subscribe()
    }

    /// The region's data roles, in activation order.
    pub(crate) fn roles(&self) -> &[SharedRole] {
        &self.roles
    }

    pub fn state(&self) -> State {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn checks(&self) -> BTreeMap<String, CheckReport> {
        self.checks.borrow().clone()
    }

    pub fn role_statuses(&self) -> Vec<RoleStatus> {
        self.role_cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn journal(&self, since: u64) -> Result<Vec<lifeboat_core::JournalEntry>> {
        self.store.journal(since)
    }

    fn journal_step(&self, kind: JournalKind, detail: &str) {
        let epoch = self.lock().epoch;
        let mono = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        if let Err(e) = self.store.append(mono, epoch, kind, &self.region, detail) {
            tracing::error!("cannot write the agent journal: {e:#}");
        }
        tracing::info!(region = %self.region, epoch = %epoch, kind = kind.as_str(), "{detail}");
    }

    /// Raise the persisted epoch to `epoch` (never lowers it). Returns false if
    /// `epoch` is older than what this agent has seen.
    fn observe_epoch(&self, epoch: Epoch, fenced_at: Option<Epoch>) -> Result<bool> {
        let (cur, fenced) = {
            let s = self.lock();
            (s.epoch, s.fenced_epoch)
        };
        if epoch < cur {
            return Ok(false);
        }
        let new_fenced = fenced_at.or(fenced).max(fenced);
        if epoch > cur || new_fenced != fenced {
            // Persist before acting on it: a restart must not forget a newer epoch.
            self.store.save_epoch(epoch, new_fenced)?;
            let mut s = self.lock();
            s.epoch = epoch;
            s.fenced_epoch = new_fenced;
        }
        Ok(true)
    }

    /// The controller's view (from a report or lease answer): converge to it.
    async fn apply_controller_view(self: &Arc<Self>, epoch: Epoch, active: Option<RegionId>) {
        match self.observe_epoch(epoch, None) {
            Ok(true) => {}
            Ok(false) => return, // an older answer that crossed a newer one: ignore
            Err(e) => {
                tracing::error!("cannot persist epoch {epoch}: {e:#}");
                return;
            }
        }
        if active.as_ref() == Some(&self.region) {
            let wake = {
                let mut s = self.lock();
                let blocked = s.fenced_epoch == Some(epoch);
                if !blocked && s.want_active != Some(epoch) {
                    s.want_active = Some(epoch);
                    true
                } else {
                    false
                }
            };
            if wake {
                self.wake.notify_one();
            }
        } else {
            let was_active = {
                let mut s = self.lock();
                s.want_active = None;
                s.active
            };
            if was_active {
                let who = active
                    .as_ref()
                    .map_or("no region".into(), |r| r.to_string());
                self.fence_all(&format!("controller says {who} is active at epoch {epoch}"))
                    .await;
            }
            if let Some(active) = active {
                let follow = {
                    let mut s = self.lock();
                    if s.followed_epoch != Some(epoch) {
                        s.followed_epoch = Some(epoch);
                        true
                    } else {
                        false
                    }
                };
                if follow {
                    let me = self.clone();
                    tokio::spawn(async move { me.follow_all(epoch, active).await });
                }
            }
        }
    }

    /// Fence every role, all at once, now. Idempotent.
    pub async fn fence_all(&self, reason: &str) {
        let epoch = {
            let mut s = self.lock();
            s.active = false;
            s.lease_deadline = None;
            s.epoch
        };
        self.deadline_tx.send_replace(None);
        let _g = self.role_lock.lock().await;
        // Concurrently: one slow role (a service's graceful stop, a database waiting on
        // an unreachable standby) must not keep another one writable.
        let results = futures::future::join_all(self.roles.iter().map(|role| async move {
            let began = Instant::now();
            let r = role.fence(epoch).await;
            (r, began.elapsed())
        }))
        .await;
        let mut errors = Vec::new();
        let mut took = Vec::new();
        for (role, (r, elapsed)) in self.roles.iter().zip(results) {
            match r {
                Ok(()) => took.push(format!("{} {} ms", role.name(), elapsed.as_millis())),
                Err(e) => errors.push(format!("{}: {e}", role.name())),
            }
        }
        let first = {
            let mut s = self.lock();
            let first = !s.fenced;
            s.fenced = true;
            s.active = false;
            if first {
                s.fenced_at_unix_ms = Some(persist::unix_ms());
            }
            first
        };
        if errors.is_empty() && !self.lock().active {
            // Every role refuses writes: the guard has nothing left to enforce.
            self.guard_tx.send_replace(None);
        }
        if !errors.is_empty() {
            self.journal_step(
                JournalKind::Alert,
                &format!("fence incomplete ({reason}): {}", errors.join("; ")),
            );
        } else if first {
            let detail = if took.is_empty() {
                format!("region fenced: {reason}")
            } else {
                format!("region fenced: {reason} ({})", took.join(", "))
            };
            self.journal_step(JournalKind::Fenced, &detail);
        }
    }

    async fn activate_all(&self, epoch: Epoch, forced: bool) -> Result<(), String> {
        let _g = self.role_lock.lock().await;
        {
            let s = self.lock();
            // Re-check under the lock: the lease may have lapsed or a fence arrived.
            let valid = s.lease_deadline.is_some_and(|d| Instant::now() < d);
            if !valid || s.epoch != epoch || s.fenced_epoch == Some(epoch) || s.active {
                return Ok(());
            }
        }
        let activation = Activation {
            epoch,
            region: self.region.clone(),
            forced,
        };
        for role in &self.roles {
            if let Err(e) = role.activate(&activation).await {
                let msg = format!("{}: {e}", role.name());
                self.lock().last_activation_error = Some(msg.clone());
                return Err(msg);
            }
        }
        {
            let mut s = self.lock();
            // The lease might have lapsed while roles were activating: the watchdog
            // fences in that case, so only mark active if it is still valid.
            if s.lease_deadline.is_none_or(|d| Instant::now() >= d) || s.epoch != epoch {
                return Ok(());
            }
            s.active = true;
            s.fenced = false;
            s.last_activation_error = None;
        }
        self.journal_step(
            JournalKind::Promoted,
            &format!("region active under epoch {epoch}"),
        );
        Ok(())
    }

    async fn follow_all(&self, epoch: Epoch, active: RegionId) {
        let guard = self.role_lock.lock().await;
        if self.lock().epoch != epoch {
            return;
        }
        let target = FollowTarget {
            epoch,
            active: active.clone(),
        };
        for role in &self.roles {
            if let Err(e) = role.follow(&target).await {
                let msg = format!("{} could not follow {active}: {e}", role.name());
                // Journal a failure once, not on every retry; retry with backoff.
                let (repeat, wait) = {
                    let mut s = self.lock();
                    let repeat = s.follow_error.as_deref() == Some(msg.as_str());
                    s.follow_backoff = if repeat {
                        (s.follow_backoff * 2).min(Duration::from_secs(30))
                    } else {
                        Duration::from_secs(1)
                    };
                    s.follow_error = Some(msg.clone());
                    (repeat, s.follow_backoff)
                };
                if !repeat {
                    self.journal_step(
                        JournalKind::Alert,
                        &format!("{msg} (retrying with backoff)"),
                    );
                }
                // Never hold the role lock while waiting: a fence must not wait for it.
                drop(guard);
                tokio::time::sleep(wait).await;
                // Try again on a later report.
                self.lock().followed_epoch = None;
                return;
            }
        }
        {
            let mut s = self.lock();
            s.follow_error = None;
            s.follow_backoff = Duration::ZERO;
        }
        self.journal_step(
            JournalKind::Rejoined,
            &format!("standby of {active} at epoch {epoch}"),
        );
    }

    /// Handle a command from the controller. Err(message) on a stale epoch.
    pub async fn command(
        self: &Arc<Self>,
        cmd: &lifeboat_api::types::AgentCommand,
    ) -> Result<String, CommandError> {
        use lifeboat_api::types::CommandKind;
        let current = self.lock().epoch;
        if cmd.epoch < current {
            self.journal_step(
                JournalKind::StaleEpochRefused,
                &format!(
                    "{:?} at epoch {} refused: this agent has seen epoch {current}",
                    cmd.command, cmd.epoch
                ),
            );
            return Err(CommandError::Stale {
                got: cmd.epoch,
                seen: current,
            });
        }
        let fenced_at = (cmd.command == CommandKind::Fence).then_some(cmd.epoch);
        self.observe_epoch(cmd.epoch, fenced_at)
            .map_err(|e| CommandError::Failed(format!("cannot persist epoch: {e:#}")))?;
        match cmd.command {
            CommandKind::Fence => {
                self.lock().want_active = None;
                self.fence_all(&format!("fence command at epoch {}", cmd.epoch))
                    .await;
                Ok(format!("fenced at epoch {}", cmd.epoch))
            }
            CommandKind::Promote => {
                if cmd.active.as_ref().is_some_and(|a| a != &self.region) {
                    return Err(CommandError::Failed(format!(
                        "promote names {:?}, this agent is {}",
                        cmd.active, self.region
                    )));
                }
                if self.lock().fenced_epoch == Some(cmd.epoch) {
                    return Err(CommandError::Failed(format!(
                        "this region was fenced at epoch {}",
                        cmd.epoch
                    )));
                }
                {
                    let mut s = self.lock();
                    s.want_active = Some(cmd.epoch);
                }
                self.forced
                    .store(cmd.forced, std::sync::atomic::Ordering::SeqCst);
                self.wake.notify_one();
                Ok(format!("taking the lease for epoch {}", cmd.epoch))
            }
            CommandKind::Follow => {
                let active = cmd.active.clone();
                self.apply_controller_view(cmd.epoch, active).await;
                Ok(format!("following at epoch {}", cmd.epoch))
            }
        }
    }

    /// Run every loop until `cancel`; on the way out, fence the region (no lease
    /// survives the agent) and stop the services.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) -> Result<()> {
        self.journal_step(
            JournalKind::Info,
            "agent started; region fenced until it holds a lease",
        );
        // No lease yet: whatever ran before this agent must not take writes.
        self.fence_all("agent start: no lease held").await;
        let tasks = tokio_util::task::TaskTracker::new();
        {
            let me = self.clone();
            let cancel = cancel.clone();
            tasks.spawn(async move {
                if let Err(e) = guard::supervise(me.clone(), cancel).await {
                    // Without its guard the region has no protection against a frozen
                    // agent: it must not stay writable.
                    me.journal_step(JournalKind::Alert, &format!("region guard failed: {e:#}"));
                    me.fence_all("region guard failed").await;
                }
            });
        }
        tasks.spawn(self.clone().lease_loop(cancel.clone()));
        tasks.spawn(self.clone().watchdog(cancel.clone()));
        tasks.spawn(self.clone().report_loop(cancel.clone()));
        tasks.spawn(self.clone().status_loop(cancel.clone()));
        tasks.close();
        cancel.cancelled().await;
        tasks.wait().await;
        self.fence_all("agent shutting down").await;
        Ok(())
    }

    async fn lease_loop(self: Arc<Self>, cancel: CancellationToken) {
        let ttl = self.cfg.failover.lease_ttl;
        loop {
            let want = self.lock().want_active;
            let mut next = Instant::now() + ttl / 3;
            if let Some(epoch) = want {
                let sent = Instant::now();
                let req = lifeboat_api::types::LeaseRequest {
                    region: self.region.clone(),
                    epoch,
                };
                match self.controller.lease(&req).await {
                    Ok(resp) if resp.granted => {
                        self.lock().controller_reachable = true;
                        let deadline = sent + ttl;
                        let activate = {
                            let mut s = self.lock();
                            if s.epoch == epoch && s.fenced_epoch != Some(epoch) {
                                s.lease_deadline = Some(deadline);
                                !s.active
                            } else {
                                false
                            }
                        };
                        self.deadline_tx.send_replace(Some(deadline));
                        self.guard_tx.send_replace(Some(deadline));
                        if activate {
                            let forced = self.forced.load(std::sync::atomic::Ordering::SeqCst);
                            if let Err(e) = self.activate_all(epoch, forced).await {
                                self.journal_step(
                                    JournalKind::PromotionBlocked,
                                    &format!("activation failed: {e}"),
                                );
                                next = Instant::now() + Duration::from_millis(500);
                            }
                        }
                    }
                    Ok(resp) => {
                        self.lock().controller_reachable = true;
                        tracing::info!(region = %self.region, "lease refused: {}", resp.reason);
                        {
                            let mut s = self.lock();
                            if s.want_active == Some(epoch) {
                                s.want_active = None;
                            }
                        }
                        self.apply_controller_view(resp.epoch, resp.active).await;
                    }
                    Err(e) => {
                        self.lock().controller_reachable = false;
                        tracing::warn!(region = %self.region, "lease renewal failed: {e}");
                        next = Instant::now() + (ttl / 10).max(Duration::from_millis(50));
                    }
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep_until(next) => {}
                _ = self.wake.notified() => {}
            }
        }
    }

    /// Fences the region the instant the lease deadline passes.
    async fn watchdog(self: Arc<Self>, cancel: CancellationToken) {
        let mut rx = self.deadline_tx.subscribe();
        loop {
            let deadline = *rx.borrow_and_update();
            match deadline {
                Some(d) => {
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = rx.changed() => continue,
                        _ = tokio::time::sleep_until(d) => {
                            let lapsed = self.lock().lease_deadline.is_some_and(|cur| cur <= Instant::now());
                            if lapsed {
                                // Journaled first: the instant the region stops writing, which
                                // the controller's promotion must follow (DESIGN.md rule 2).
                                self.journal_step(
                                    JournalKind::LeaseExpired,
                                    "lease lapsed: fencing every role now",
                                );
                                self.fence_all("lease lapsed: no successful renewal before the deadline").await;
                            }
                        }
                    }
                }
                None => {
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        r = rx.changed() => if r.is_err() { return },
                    }
                }
            }
        }
    }

    async fn report_loop(self: Arc<Self>, cancel: CancellationToken) {
        loop {
            let report = {
                let s = self.lock();
                AgentReport {
                    region: self.region.clone(),
                    epoch: s.epoch,
                    active: s.active,
                    fenced: s.fenced,
                    fenced_at_unix_ms: s.fenced_at_unix_ms,
                    checks: self.checks.borrow().clone(),
                    roles: self.role_statuses(),
                    promised: None,
                    witness_lost: false,
                    view_active: None,
                }
            };
            match self.controller.report(&report).await {
                Ok(resp) => {
                    self.lock().controller_reachable = true;
                    self.apply_controller_view(resp.epoch, resp.active).await;
                }
                Err(e) => {
                    self.lock().controller_reachable = false;
                    tracing::debug!(region = %self.region, "report failed: {e}");
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(self.report_interval) => {}
            }
        }
    }

    async fn status_loop(self: Arc<Self>, cancel: CancellationToken) {
        loop {
            let mut statuses = Vec::new();
            for role in &self.roles {
                let st = match tokio::time::timeout(Duration::from_secs(2), role.status()).await {
                    Ok(st) => st,
                    Err(_) => {
                        let mut st =
                            RoleStatus::new(role.name(), lifeboat_core::RoleHealth::Unknown);
                        st.detail = "status timed out".into();
                        st
                    }
                };
                statuses.push(st);
            }
            *self.role_cache.lock().unwrap_or_else(|p| p.into_inner()) = statuses;
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(self.report_interval) => {}
            }
        }
    }
}

#[derive(Debug)]
pub enum CommandError {
    Stale { got: Epoch, seen: Epoch },
    Failed(String),
}

/// Load the bearer token named by the config.
pub fn load_token(cfg: &Config) -> Result<Token> {
    let t = cfg.auth.secret().load().with_context(|| {
        format!(
            "loading the bearer token named in {} [auth]",
            cfg.source.display()
        )
    })?;
    Ok(Token::new(t))
}

/// Convenience for callers that keep roles as concrete types.
pub fn share<R: DataRole + 'static>(role: R) -> SharedRole {
    Arc::new(role)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lifeboat_core::{Activation, RoleError, RoleHealth};

    /// A role whose fence takes `takes` and records when it began.
    struct SlowFence {
        name: &'static str,
        takes: Duration,
        began: Mutex<Option<Instant>>,
    }

    #[async_trait::async_trait]
    impl DataRole for SlowFence {
        fn name(&self) -> &str {
            self.name
        }
        async fn status(&self) -> RoleStatus {
            RoleStatus::new(self.name, RoleHealth::Fenced)
        }
        async fn fence(&self, _epoch: Epoch) -> Result<(), RoleError> {
            *self.began.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
            tokio::time::sleep(self.takes).await;
            Ok(())
        }
        async fn activate(&self, _a: &Activation) -> Result<(), RoleError> {
            Ok(())
        }
        async fn follow(&self, _t: &FollowTarget) -> Result<(), RoleError> {
            Ok(())
        }
    }

    fn config(dir: &std::path::Path) -> Arc<Config> {
        let text = format!(
            "[deployment]\nname = \"t\"\n\n[controller]\napi_addr = \"127.0.0.1:9\"\n\
             dns_addr = \"127.0.0.1:9\"\nstate_dir = {:?}\n\n[auth]\ntoken_env = \"T\"\n\n\
             [regions.a]\nagent_addr = \"127.0.0.1:9\"\nrole = \"active\"\n\n\
             [regions.b]\nagent_addr = \"127.0.0.1:10\"\nrole = \"standby\"\n",
            dir.display().to_string()
        );
        let cfg = Config::parse(&dir.join("t.toml"), &text)
            .unwrap_or_else(|e| panic!("test config: {e}"));
        Arc::new(cfg)
    }

    /// The database's fence starts when the lease lapses, not after the services'
    /// graceful stop: with the lease margin at 500 ms, a database fenced 3 s late would
    /// still take writes after the other region's promotion.
    #[tokio::test(start_paused = true)]
    async fn every_role_is_fenced_at_once() {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = Arc::new(SlowFence {
            name: "postgres",
            takes: Duration::from_millis(100),
            began: Mutex::new(None),
        });
        let services = Arc::new(SlowFence {
            name: "services",
            takes: Duration::from_secs(3),
            began: Mutex::new(None),
        });
        let (_tx, checks) = watch::channel(BTreeMap::new());
        let agent = Agent::new(
            config(dir.path()),
            RegionId::new("a"),
            Token::new("t"),
            vec![db.clone(), services.clone()],
            checks,
        )
        .expect("agent");
        let start = Instant::now();
        agent.fence_all("test").await;
        let began = |r: &SlowFence| {
            r.began
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .expect("fenced")
                .duration_since(start)
        };
        assert_eq!(began(&db), Duration::ZERO, "the database is fenced at once");
        assert_eq!(began(&services), Duration::ZERO);
        assert!(agent.state().fenced);
        let j = agent.journal(0).expect("journal");
        assert!(
            j.iter()
                .any(|e| e.kind == JournalKind::Fenced && e.detail.contains("test")),
            "{j:?}"
        );
    }
}
