//! The region agent.
//!
//! One per region. It runs the region's vantage-point probes and reports them to the
//! controller; it holds the lease while its region is active and renews it every
//! ttl/3; it fences its region *itself* the moment a renewal has not succeeded by the
//! deadline — measured on its own monotonic clock from when it *sent* the last
//! successful renewal, so its deadline always falls before the controller's view of
//! the same lease (docs/architecture.md, rule 2). It persists the highest epoch it has seen and
//! refuses any command older than it (rule 1); after acknowledging a fence at an
//! epoch it never activates under that epoch again.
//!
//! The region's data layers are [`DataRole`]s: the agent activates them in order
//! (databases first, services last) and fences them all at once: a fence is the moment
//! writes must stop, so the database's fence never waits for a service's graceful stop
//! (the controller promotes another region only lease_margin after the lease lapsed).

pub mod guard;
pub mod lease;
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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Extra families added to the agent's `/metrics` page.
pub type MetricsFn = Arc<dyn Fn(&mut lifeboat_core::metrics::Page) + Send + Sync>;

/// What the agent's vantage probes currently say (filled by the health prober).
pub type ChecksRx = watch::Receiver<BTreeMap<String, CheckReport>>;

/// A snapshot of the agent's state, for status, reports and metrics.
#[derive(Debug, Clone, Default)]
pub struct State {
    pub epoch: Epoch,
    /// Acknowledged a fence at this epoch: never activate under it.
    pub fenced_epoch: Option<Epoch>,
    /// Roles are active under a valid lease.
    pub active: bool,
    pub fenced: bool,
    pub fenced_at_unix_ms: Option<u64>,
    pub lease_deadline: Option<Instant>,
    pub controller_reachable: bool,
    /// Holding the lease on promises from every other region (rule 7, docs/architecture.md).
    pub witness_lost: bool,
    /// The promise this region gave another (it refuses promotion until it ran out).
    pub promised: Option<lifeboat_api::types::PromiseView>,
    pub last_activation_error: Option<String>,
}

/// A journal entry stamped when it happened, waiting to be written.
#[derive(Debug)]
struct PendingEntry {
    at_unix_ms: u64,
    mono_ms: u64,
    epoch: Epoch,
    kind: JournalKind,
    detail: String,
}

/// Standby-side bookkeeping that is not part of the lease machine.
#[derive(Debug, Default)]
struct FollowState {
    followed_epoch: Option<Epoch>,
    /// The last follow failure (journaled once) and the current retry backoff.
    follow_error: Option<String>,
    follow_backoff: Duration,
    fenced_at_unix_ms: Option<u64>,
    last_activation_error: Option<String>,
}

pub struct Agent {
    pub cfg: Arc<Config>,
    pub region: RegionId,
    pub token: Token,
    pub controller: ApiClient,
    store: AgentStore,
    journal_queue: Mutex<std::collections::VecDeque<PendingEntry>>,
    journal_wake: Notify,
    started: Instant,
    roles: Vec<SharedRole>,
    /// The lease and role lifecycle (`lease.rs`): every decision is made there.
    machine: Mutex<lease::Machine>,
    /// Serialises stepping the machine *and* executing its actions, so that actions of
    /// two events never interleave (a cancel must find the activation it cancels).
    exec: tokio::sync::Mutex<()>,
    /// Outcomes of the tasks the actions started (lease answers, promise rounds,
    /// activations), fed back to the machine by the driver.
    events_tx: tokio::sync::mpsc::UnboundedSender<lease::Event>,
    events_rx: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<lease::Event>>>,
    /// Wakes the driver when an event changed when it must next look at the clock.
    wake: Notify,
    activation: Mutex<Option<(u64, tokio::task::AbortHandle)>>,
    /// Fences asked for, and the highest one that has run (see `fences_settled`).
    fences_requested: AtomicU64,
    fences_done: watch::Sender<u64>,
    follow: Mutex<FollowState>,
    /// The region last learned to be active, at which epoch (persisted).
    view: tokio::sync::Mutex<Option<(Epoch, Option<RegionId>)>>,
    /// Serialises fence / activate / follow across tasks.
    role_lock: tokio::sync::Mutex<()>,
    /// The instant by which the region must be fenced: Some while a lease is held (or
    /// roles may still be writable), None only once a fence has completed. The guard
    /// process is fed from it (`guard.rs`).
    guard_tx: watch::Sender<Option<Instant>>,
    checks: ChecksRx,
    role_cache: Mutex<Vec<RoleStatus>>,
    extra_metrics: Mutex<Vec<MetricsFn>>,
    /// Cancelled when `run` returns: the live streams (`/v1/events`) end with it, so an
    /// open dashboard never holds up the HTTP server's graceful stop.
    pub(crate) stopping: CancellationToken,
    /// False only in tests that run an agent inside a test binary (which cannot be
    /// re-executed as the guard process).
    guard_enabled: std::sync::atomic::AtomicBool,
    /// Lease requests that failed in a row, and when that was last logged: a lost
    /// witness is said once, then every [`RENEWAL_LOG_EVERY`], not five times a second.
    renewal_failures: Mutex<(u64, Option<Instant>)>,
    pub report_interval: Duration,
}

/// How often a witness that stays unreachable is logged again.
const RENEWAL_LOG_EVERY: Duration = Duration::from_secs(10);

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
        let view = store.load_view()?;
        let controller = ApiClient::any_of(
            cfg.controller.api_urls(),
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
        let started = Instant::now();
        let params = lease::Params {
            ttl: cfg.failover.lease_ttl,
            margin: cfg.failover.lease_margin,
        };
        // The start-up fence this returns is executed by `run`.
        let (machine, _) =
            lease::Machine::start(params, region.clone(), epoch, fenced_epoch, started);
        let (events_tx, events_rx) = tokio::sync::mpsc::unbounded_channel();
        // Until the status loop has asked each role once, each is reported as not
        // observed, never as ready: an empty list would read as "every role ready" to
        // the controller, which once promoted a just-restarted agent's stale old
        // primary 220 ms after its start and lost the other region's writes.
        let unobserved: Vec<RoleStatus> = roles
            .iter()
            .map(|r| {
                let mut st = RoleStatus::new(r.name(), lifeboat_core::RoleHealth::Unknown);
                st.detail = "not observed yet: the agent has just started".into();
                st
            })
            .collect();
        Ok(Arc::new(Self {
            cfg,
            region,
            token,
            controller,
            store,
            journal_queue: Mutex::new(std::collections::VecDeque::new()),
            journal_wake: Notify::new(),
            started,
            roles,
            machine: Mutex::new(machine),
            exec: tokio::sync::Mutex::new(()),
            events_tx,
            events_rx: Mutex::new(Some(events_rx)),
            wake: Notify::new(),
            activation: Mutex::new(None),
            fences_requested: AtomicU64::new(0),
            fences_done: watch::channel(0).0,
            follow: Mutex::new(FollowState::default()),
            view: tokio::sync::Mutex::new(view),
            role_lock: tokio::sync::Mutex::new(()),
            guard_tx: watch::channel(None).0,
            checks,
            role_cache: Mutex::new(unobserved),
            extra_metrics: Mutex::new(Vec::new()),
            stopping: CancellationToken::new(),
            guard_enabled: std::sync::atomic::AtomicBool::new(true),
            renewal_failures: Mutex::new((0, None)),
            report_interval,
        }))
    }

    /// Add more families to the agent's `/metrics` page (replication, database …).
    pub fn add_metrics(&self, f: MetricsFn) {
        self.extra_metrics
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(f);
    }

    pub(crate) fn render_extra_metrics(&self, out: &mut lifeboat_core::metrics::Page) {
        for f in self
            .extra_metrics
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            f(out);
        }
    }

    /// Run without the region guard process: for tests that run an agent inside a
    /// test binary only. A real agent always has its guard (rule 2, docs/architecture.md).
    pub fn disable_guard(&self) {
        self.guard_enabled
            .store(false, std::sync::atomic::Ordering::SeqCst);
    }

    /// See the `guard_tx` field: what the guard process must enforce.
    pub(crate) fn guard_deadline(&self) -> watch::Receiver<Option<Instant>> {
        self.guard_tx.subscribe()
    }

    /// The region's data roles, in activation order.
    pub(crate) fn roles(&self) -> &[SharedRole] {
        &self.roles
    }

    fn machine(&self) -> std::sync::MutexGuard<'_, lease::Machine> {
        self.machine.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn follow_state(&self) -> std::sync::MutexGuard<'_, FollowState> {
        self.follow.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn state(&self) -> State {
        let now = Instant::now();
        let m = self.machine();
        let f = self.follow_state();
        State {
            epoch: m.epoch,
            fenced_epoch: m.fenced_epoch,
            active: m.active() && m.lease.as_ref().is_some_and(|l| now < l.deadline),
            fenced: m.fenced(),
            fenced_at_unix_ms: f.fenced_at_unix_ms,
            lease_deadline: m.lease.as_ref().map(|l| l.deadline),
            controller_reachable: m.controller_reachable,
            witness_lost: m.witness_lost,
            promised: m.promise.as_ref().filter(|p| p.until > now).map(|p| {
                lifeboat_api::types::PromiseView {
                    to: p.to.clone(),
                    epoch: p.epoch,
                    remaining_ms: u64::try_from(
                        m.hold_until().saturating_duration_since(now).as_millis(),
                    )
                    .unwrap_or(u64::MAX),
                }
            }),
            last_activation_error: f.last_activation_error.clone(),
        }
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
        // What happened is readable at once, even if the writer has not caught up.
        self.flush_journal();
        self.store.journal(since)
    }

    /// Record a step. The entry is stamped now and written (with fsync) by the journal
    /// writer task: a fence, a lease renewal or a promise never waits for the disk,
    /// which is often the slow part of a region in trouble (rule 2, docs/architecture.md).
    pub(crate) fn journal_step(&self, kind: JournalKind, detail: &str) {
        let epoch = self.machine().epoch;
        let mono = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        tracing::info!(region = %self.region, epoch = %epoch, kind = kind.as_str(), "{detail}");
        self.journal_queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back(PendingEntry {
                at_unix_ms: persist::unix_ms(),
                mono_ms: mono,
                epoch,
                kind,
                detail: detail.to_owned(),
            });
        self.journal_wake.notify_one();
    }

    /// Write every queued journal entry, in order.
    fn flush_journal(&self) {
        loop {
            let Some(e) = self
                .journal_queue
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .pop_front()
            else {
                return;
            };
            if let Err(err) = self.store.append(
                e.at_unix_ms,
                e.mono_ms,
                e.epoch,
                e.kind,
                &self.region,
                &e.detail,
            ) {
                tracing::error!("cannot write the agent journal: {err:#}");
            }
        }
    }

    /// Writes queued journal entries until `cancel`, then what is left.
    async fn journal_writer(self: Arc<Self>, cancel: CancellationToken) {
        loop {
            let me = self.clone();
            if let Err(e) = tokio::task::spawn_blocking(move || me.flush_journal()).await {
                tracing::error!("the agent's journal writer failed: {e}");
            }
            tokio::select! {
                _ = cancel.cancelled() => {
                    let me = self.clone();
                    let _ = tokio::task::spawn_blocking(move || me.flush_journal()).await;
                    return;
                }
                _ = self.journal_wake.notified() => {}
            }
        }
    }

    /// Step the machine with `event` and execute what it decides, in order.
    async fn drive(self: &Arc<Self>, event: lease::Event) -> Option<lease::Reply> {
        let _exec = self.exec.lock().await;
        let out = self.machine().step(Instant::now(), event);
        let mut queue: std::collections::VecDeque<lease::Action> = out.actions.into();
        while let Some(action) = queue.pop_front() {
            if let Some(next) = self.execute(action).await {
                let more = self.machine().step(Instant::now(), next);
                queue.extend(more.actions);
            }
        }
        self.wake.notify_one();
        out.reply
    }

    /// Execute one action; an action done inline may produce the next event at once.
    async fn execute(self: &Arc<Self>, action: lease::Action) -> Option<lease::Event> {
        use lease::{Action, Event};
        match action {
            Action::PersistEpoch {
                epoch,
                fenced_epoch,
            } => {
                // On the blocking pool: an fsync stalled by writeback must not stall the
                // runtime that renews leases and answers promises.
                let me = self.clone();
                let saved =
                    tokio::task::spawn_blocking(move || me.store.save_epoch(epoch, fenced_epoch))
                        .await;
                let err = match saved {
                    Ok(Ok(())) => None,
                    Ok(Err(e)) => Some(format!("{e:#}")),
                    Err(e) => Some(e.to_string()),
                };
                if let Some(e) = err {
                    // The machine already acts on the epoch; a restart would forget it,
                    // which only makes the agent accept older commands it must refuse.
                    self.journal_step(
                        JournalKind::Alert,
                        &format!("cannot persist epoch {epoch}: {e}"),
                    );
                }
                None
            }
            Action::RequestLease { epoch } => {
                let me = self.clone();
                tokio::spawn(me.request_lease(epoch));
                None
            }
            Action::AskPromises { epoch, duration } => {
                let me = self.clone();
                tokio::spawn(async move { me.ask_promises(epoch, duration).await });
                None
            }
            Action::StartActivation { epoch, id, forced } => {
                let me = self.clone();
                let task = tokio::spawn(async move {
                    let result = me.activate_roles(epoch, forced).await;
                    if let Err(e) = &result {
                        me.follow_state().last_activation_error = Some(e.clone());
                    } else {
                        me.follow_state().last_activation_error = None;
                    }
                    let _ = me.events_tx.send(Event::ActivationDone { id, result });
                });
                *self.activation.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some((id, task.abort_handle()));
                None
            }
            Action::CancelActivation { id } => {
                let mut slot = self.activation.lock().unwrap_or_else(|p| p.into_inner());
                if let Some((current, handle)) = slot.take() {
                    if current == id {
                        // Dropped at its next await; the fence that follows waits for
                        // the role lock it held.
                        handle.abort();
                    } else {
                        *slot = Some((current, handle));
                    }
                }
                None
            }
            Action::FenceAll { reason } => {
                // A task of its own: a fence may wait for the role lock (a rejoin in
                // progress holds it for seconds), and nothing else the machine does —
                // answering a promise, a promote, a lease — may wait behind it.
                let generation = self.fences_requested.fetch_add(1, Ordering::SeqCst) + 1;
                tokio::spawn(self.clone().fence_task(reason, generation));
                None
            }
            Action::Guard(deadline) => {
                self.guard_tx.send_replace(deadline);
                None
            }
            Action::Journal { kind, detail } => {
                self.journal_step(kind, &detail);
                None
            }
        }
    }

    /// Boxed: its answer may drive the machine again, which may ask for the lease again
    /// (a recursive future needs a named type).
    fn request_lease(self: Arc<Self>, epoch: Epoch) -> futures::future::BoxFuture<'static, ()> {
        Box::pin(async move { self.request_lease_inner(epoch).await })
    }

    async fn request_lease_inner(self: Arc<Self>, epoch: Epoch) {
        use lease::Event;
        let sent_at = Instant::now();
        let req = lifeboat_api::types::LeaseRequest {
            region: self.region.clone(),
            epoch,
        };
        let result = self.controller.lease(&req).await;
        {
            let mut f = self
                .renewal_failures
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            match &result {
                Ok(_) => {
                    if f.0 > 1 {
                        tracing::info!(region = %self.region, "the controller answers again after {} failed lease requests", f.0);
                    }
                    *f = (0, None);
                }
                Err(e) => {
                    f.0 += 1;
                    let now = Instant::now();
                    if f.1
                        .is_none_or(|t| now.saturating_duration_since(t) >= RENEWAL_LOG_EVERY)
                    {
                        // Not an answer from a controller that decided: an unreachable
                        // one, one that is restarting (5xx) or misconfigured (401).
                        tracing::warn!(region = %self.region, "lease renewal failed ({} in a row; said again every {}s while it lasts): {e}", f.0, RENEWAL_LOG_EVERY.as_secs());
                        f.1 = Some(now);
                    } else {
                        tracing::debug!(region = %self.region, "lease renewal failed: {e}");
                    }
                }
            }
        }
        match result {
            Ok(resp) if resp.granted => {
                let _ = self.events_tx.send(Event::LeaseGranted { epoch, sent_at });
            }
            Ok(resp) => {
                tracing::debug!(region = %self.region, "lease refused: {}", resp.reason);
                let _ = self.events_tx.send(Event::LeaseRefused {
                    epoch,
                    reason: resp.reason,
                });
                self.apply_controller_view(resp.epoch, resp.active).await;
            }
            Err(_) => {
                // Witness-loss rules (logged above).
                let _ = self.events_tx.send(Event::LeaseUnreachable { epoch });
            }
        }
    }

    /// Ask every other region's agent, directly, for a promise (rule 7, docs/architecture.md). All
    /// of them must grant it: one silent region may be the one being promoted.
    async fn ask_promises(self: Arc<Self>, epoch: Epoch, duration: Duration) {
        use lease::Event;
        let sent_at = Instant::now();
        // A round is worth waiting for until the lease it would extend runs out: under
        // load an answer can take longer than a renewal's timeout.
        let remaining = self.machine().lease.as_ref().map_or(Duration::ZERO, |l| {
            l.deadline.saturating_duration_since(sent_at)
        });
        let timeout = remaining.max(Duration::from_millis(100));
        let req = lifeboat_api::types::PromiseRequest {
            region: self.region.clone(),
            epoch,
            duration_ms: u64::try_from(duration.as_millis()).unwrap_or(u64::MAX),
        };
        let peers: Vec<(RegionId, String)> = self
            .cfg
            .regions
            .iter()
            .filter(|(name, _)| name.as_str() != self.region.as_str())
            .map(|(name, rc)| (RegionId::new(name), rc.agent_addr.to_string()))
            .collect();
        let answers = futures::future::join_all(peers.iter().map(|(name, addr)| {
            let client = ApiClient::new(
                format!("http://{addr}"),
                Some(self.token.as_str().to_owned()),
                timeout,
            );
            let req = req.clone();
            async move { (name.clone(), client.promise(&req).await) }
        }))
        .await;
        let mut refused = Vec::new();
        let mut from = Vec::new();
        for (name, answer) in answers {
            match answer {
                Ok(r) if r.granted => from.push(name),
                Ok(r) => refused.push(format!("{name}: {}", r.reason)),
                Err(e) => refused.push(format!("{name}: {e}")),
            }
        }
        let event = if refused.is_empty() {
            Event::PromisesGranted {
                epoch,
                sent_at,
                from,
            }
        } else {
            Event::PromisesRefused {
                epoch,
                detail: refused.join("; "),
            }
        };
        let _ = self.events_tx.send(event);
    }

    /// The controller's view (from a report or lease answer): converge to it.
    async fn apply_controller_view(self: &Arc<Self>, epoch: Epoch, active: Option<RegionId>) {
        if epoch < self.machine().epoch {
            return; // an older answer that crossed a newer one
        }
        self.remember_view(epoch, active.as_ref()).await;
        self.drive(lease::Event::View {
            epoch,
            active: active.clone(),
        })
        .await;
        if let Some(active) = active
            && active != self.region
        {
            let follow = {
                let mut f = self.follow_state();
                if f.followed_epoch != Some(epoch) {
                    f.followed_epoch = Some(epoch);
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

    /// Persist the controller's view when it changed: a controller that lost its
    /// state learns the active region from the agents (rule 8, docs/architecture.md).
    async fn remember_view(self: &Arc<Self>, epoch: Epoch, active: Option<&RegionId>) {
        let mut view = self.view.lock().await;
        let newer = view
            .as_ref()
            .is_none_or(|(e, a)| epoch > *e || (epoch == *e && a.as_ref() != active));
        if !newer {
            return;
        }
        let me = self.clone();
        let owned = active.cloned();
        let saved =
            tokio::task::spawn_blocking(move || me.store.save_view(epoch, owned.as_ref())).await;
        match saved {
            Ok(Ok(())) => *view = Some((epoch, active.cloned())),
            Ok(Err(e)) => tracing::warn!("cannot persist the controller's view: {e:#}"),
            Err(e) => tracing::warn!("cannot persist the controller's view: {e}"),
        }
    }

    /// Fence every role at once (no lease held afterwards) and wait for it. Used at
    /// shutdown and by callers outside the lease machine.
    pub async fn fence_all(self: &Arc<Self>, reason: &str) {
        let _ = self
            .drive(lease::Event::LocalFence {
                reason: reason.to_owned(),
            })
            .await;
        self.fences_settled().await;
    }

    /// Run one fence and tell the machine. Boxed: it drives the machine, whose actions
    /// may start another fence (a recursive future needs a named type).
    fn fence_task(
        self: Arc<Self>,
        reason: String,
        generation: u64,
    ) -> futures::future::BoxFuture<'static, ()> {
        Box::pin(async move {
            let ok = self.fence_roles(&reason).await;
            self.drive(lease::Event::FenceDone { ok }).await;
            self.fences_done
                .send_modify(|done| *done = (*done).max(generation));
        })
    }

    /// The region guard started (true) or was lost (false, which fences the roles and
    /// waits for that fence). Nothing activates without a guard.
    pub(crate) async fn set_guard_running(self: &Arc<Self>, running: bool) {
        self.drive(lease::Event::GuardRunning { running }).await;
        if !running {
            self.fences_settled().await;
        }
    }

    /// Wait until every fence requested so far has run.
    async fn fences_settled(&self) {
        let wanted = self.fences_requested.load(Ordering::SeqCst);
        let mut done = self.fences_done.subscribe();
        // Err only if the sender is gone, which cannot happen while `self` lives.
        let _ = done.wait_for(|d| *d >= wanted).await;
    }

    /// Fence every role, all at once, now. True when every role reported fenced.
    async fn fence_roles(&self, reason: &str) -> bool {
        let epoch = self.machine().epoch;
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
            let mut f = self.follow_state();
            let first = f.fenced_at_unix_ms.is_none() || !self.machine().fenced();
            if first {
                f.fenced_at_unix_ms = Some(persist::unix_ms());
            }
            first
        };
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
        errors.is_empty()
    }

    /// Activate every role in order under `epoch`. Runs as a task the machine may
    /// cancel (a lapse or a fence); it holds the role lock so a fence waits for the
    /// cancelled task to drop, then fences whatever it half-activated.
    async fn activate_roles(&self, epoch: Epoch, forced: bool) -> Result<(), String> {
        let _g = self.role_lock.lock().await;
        let activation = Activation {
            epoch,
            region: self.region.clone(),
            forced,
        };
        for role in &self.roles {
            role.activate(&activation)
                .await
                .map_err(|e| format!("{}: {e}", role.name()))?;
        }
        Ok(())
    }

    async fn follow_all(&self, epoch: Epoch, active: RegionId) {
        let guard = self.role_lock.lock().await;
        if self.machine().epoch != epoch {
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
                    let mut s = self.follow_state();
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
                self.follow_state().followed_epoch = None;
                return;
            }
        }
        {
            let mut s = self.follow_state();
            s.follow_error = None;
            s.follow_backoff = Duration::ZERO;
        }
        self.journal_step(
            JournalKind::Rejoined,
            &format!("standby of {active} at epoch {epoch}"),
        );
    }

    /// Handle a command from the controller. Err on a stale epoch or a refusal.
    pub async fn command(
        self: &Arc<Self>,
        cmd: &lifeboat_api::types::AgentCommand,
    ) -> Result<String, CommandError> {
        use lifeboat_api::types::CommandKind;
        let current = self.machine().epoch;
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
        match cmd.command {
            CommandKind::Fence => {
                match self
                    .drive(lease::Event::FenceCommand { epoch: cmd.epoch })
                    .await
                {
                    Some(lease::Reply::Ok(msg)) => {
                        // The acknowledgement lets the controller promote another
                        // region at once: it leaves only once the fence has run.
                        self.fences_settled().await;
                        Ok(msg)
                    }
                    Some(lease::Reply::Refused(msg)) => Err(CommandError::Failed(msg)),
                    None => Err(CommandError::Failed("no answer".into())),
                }
            }
            CommandKind::Promote => {
                if cmd.active.as_ref().is_some_and(|a| a != &self.region) {
                    return Err(CommandError::Failed(format!(
                        "promote names {:?}, this agent is {}",
                        cmd.active, self.region
                    )));
                }
                match self
                    .drive(lease::Event::PromoteCommand {
                        epoch: cmd.epoch,
                        forced: cmd.forced,
                    })
                    .await
                {
                    Some(lease::Reply::Ok(msg)) => Ok(msg),
                    Some(lease::Reply::Refused(msg)) => Err(CommandError::Failed(msg)),
                    None => Err(CommandError::Failed("no answer".into())),
                }
            }
            CommandKind::Follow => {
                let active = cmd.active.clone();
                self.apply_controller_view(cmd.epoch, active).await;
                Ok(format!("following at epoch {}", cmd.epoch))
            }
        }
    }

    /// Another region's agent asks for a witness-loss promise (rule 7, docs/architecture.md).
    pub async fn promise(
        self: &Arc<Self>,
        req: &lifeboat_api::types::PromiseRequest,
    ) -> lifeboat_api::types::PromiseResponse {
        let reply = self
            .drive(lease::Event::PromiseRequest {
                from: req.region.clone(),
                epoch: req.epoch,
                duration: Duration::from_millis(req.duration_ms),
            })
            .await;
        let (granted, reason) = match reply {
            Some(lease::Reply::Ok(m)) => (true, m),
            Some(lease::Reply::Refused(m)) => (false, m),
            None => (false, "no answer".into()),
        };
        lifeboat_api::types::PromiseResponse {
            granted,
            region: self.region.clone(),
            epoch: self.machine().epoch,
            reason,
        }
    }

    /// Run every loop until `cancel`; on the way out, fence the region (no lease
    /// survives the agent) and stop the services.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) -> Result<()> {
        // However run ends, the dashboards' streams end with it.
        let _streams = self.stopping.clone().drop_guard();
        self.journal_step(
            JournalKind::Info,
            "agent started; region fenced until it holds a lease",
        );
        // No lease yet: whatever ran before this agent must not take writes.
        let ok = self.fence_roles("agent start: no lease held").await;
        self.drive(lease::Event::FenceDone { ok }).await;
        let tasks = tokio_util::task::TaskTracker::new();
        if !self.guard_enabled.load(std::sync::atomic::Ordering::SeqCst) {
            // A test binary's agent: no guard process, nothing to wait for.
            self.drive(lease::Event::GuardRunning { running: true })
                .await;
        } else {
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
        // The journal writer outlives the other loops: it stops last (below).
        let journal_cancel = CancellationToken::new();
        let writer = tokio::spawn(self.clone().journal_writer(journal_cancel.clone()));
        tasks.spawn(self.clone().driver(cancel.clone()));
        tasks.spawn(self.clone().report_loop(cancel.clone()));
        tasks.spawn(self.clone().status_loop(cancel.clone()));
        tasks.close();
        cancel.cancelled().await;
        tasks.wait().await;
        self.fence_all("agent shutting down").await;
        journal_cancel.cancel();
        writer.await.context("the agent's journal writer")?;
        Ok(())
    }

    /// Feeds the machine its events and the passing of time.
    async fn driver(self: Arc<Self>, cancel: CancellationToken) {
        let Some(mut rx) = self
            .events_rx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        else {
            tracing::error!("the agent's driver started twice");
            return;
        };
        loop {
            let wake = self.machine().next_wakeup();
            let sleep = async {
                match wake {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = cancel.cancelled() => return,
                ev = rx.recv() => match ev {
                    Some(ev) => { self.drive(ev).await; }
                    None => return,
                },
                _ = sleep => { self.drive(lease::Event::Tick).await; }
                _ = self.wake.notified() => {}
            }
        }
    }

    async fn report_loop(self: Arc<Self>, cancel: CancellationToken) {
        loop {
            let view_active = self
                .view
                .lock()
                .await
                .as_ref()
                .filter(|(e, _)| *e == self.machine().epoch)
                .and_then(|(_, a)| a.clone());
            let report = {
                let s = self.state();
                AgentReport {
                    region: self.region.clone(),
                    epoch: s.epoch,
                    active: s.active,
                    fenced: s.fenced,
                    fenced_at_unix_ms: s.fenced_at_unix_ms,
                    checks: self.checks.borrow().clone(),
                    roles: self.role_statuses(),
                    promised: s.promised,
                    witness_lost: s.witness_lost,
                    view_active,
                }
            };
            if let Ok(resp) = self.controller.report(&report).await {
                self.apply_controller_view(resp.epoch, resp.active).await;
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
                let deadline = lifeboat_core::STATUS_DEADLINE;
                let st = match tokio::time::timeout(deadline, role.status()).await {
                    Ok(st) => st,
                    Err(_) => {
                        let mut st =
                            RoleStatus::new(role.name(), lifeboat_core::RoleHealth::Unknown);
                        st.detail = format!("status timed out (no answer within {deadline:?})");
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
#[path = "lifecycle_tests.rs"]
mod lifecycle_tests;

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
