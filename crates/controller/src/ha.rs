//! Several controllers on etcd, one leading (`[controller] store = "etcd"`).
//!
//! Every controller runs [`HaController::run`]. A follower reads the leader key,
//! the state and the leader's routing table from etcd (one transaction) whenever a
//! watch on the deployment's keys reports a change, and every [`FOLLOW_EVERY`]
//! besides, and serves them: DNS, `/v1/routing`, `/v1/status`, `/v1/discovery`, `/v1/journal`,
//! `/metrics`, the dashboard. The operator's calls that only the leader can answer
//! (switchover, failover, drill reports, the health matrix) it forwards to the
//! leader and returns the leader's answer ([`forward`]), so the dashboard's actions
//! and the CLI work through any controller. The agents' calls (leases, reports) it
//! answers with 421 naming the leader, and their client tries the next controller:
//! redirect, not forwarding, so that a follower never stands between an agent and
//! its lease.
//!
//! When nobody leads (no leader key), a follower grants itself an etcd lease and
//! takes the leader key with it in a transaction that requires the key to be
//! absent. The winner builds a [`Controller`] from etcd's state exactly as if it
//! had just restarted (rule 8: it assumes it granted a lease at this instant, so it
//! promotes nobody before ttl + margin), and runs it as the term's. The pure
//! [`Leadership`] machine decides until when the term may grant: the send instant
//! of the latest keep-alive etcd answered, plus the etcd lease ttl, minus the
//! margin. Past it, or when a write guarded by the leader key is refused, the term
//! ends at once: its controller stops, its lease is revoked (if etcd still answers),
//! and the controller is a follower again.

use crate::etcd::{
    EtcdStore, Keys, LeaderRecord, REQUEST_TIMEOUT, Snapshot, bounded, campaign, connect,
    read_journal, retried, snapshot,
};
use crate::leadership::{LeaderAction, LeaderEvent, Leadership};
use crate::server::{Controller, ControllerOptions, MetricsFn, leadership_metrics};
use crate::store::StateStore;
use anyhow::{Context, Result};
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use lifeboat_api::http::{ApiError, Token};
use lifeboat_api::types::{
    ControllerMemberView, ControllerStatus, Discovery, EtcdEndpointView, LeadershipView, RegionView,
};
use lifeboat_config::Config;
use lifeboat_config::etcd::EtcdConfig;
use lifeboat_core::metrics::{Kind, Page};
use lifeboat_core::{HealthStatus, RegionId, RoutingTable};
use lifeboat_health::CheckStates;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// How often a follower reads the replicated state (and looks for a leader).
pub const FOLLOW_EVERY: Duration = Duration::from_millis(200);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The running term: its controller's router (which holds the controller).
struct Term {
    router: Router,
}

pub struct HaController {
    cfg: Arc<Config>,
    etcd: EtcdConfig,
    token: Token,
    me: LeaderRecord,
    keys: Keys,
    local: watch::Receiver<CheckStates>,
    opts: ControllerOptions,
    leadership: Arc<Mutex<Leadership>>,
    term: RwLock<Option<Arc<Term>>>,
    /// What every controller's DNS answers from: the term's table while leading,
    /// the leader's (from etcd) while following.
    routing: watch::Sender<RoutingTable>,
    replicated: Mutex<Snapshot>,
    etcd_health: Mutex<Vec<EtcdEndpointView>>,
    members_health: Mutex<Vec<ControllerMemberView>>,
    client: tokio::sync::Mutex<Option<etcd_client::Client>>,
    late_metrics: Mutex<Vec<MetricsFn>>,
    /// For the operator's calls forwarded to the leader.
    http: reqwest::Client,
    /// Cancelled when `run` returns: the live streams (`/v1/events`) end with it, so an
    /// open dashboard never holds up the HTTP server's graceful stop.
    stopping: CancellationToken,
}

impl HaController {
    /// `member` is this controller's name in `[[controller.members]]`; `cfg`'s
    /// `controller.api_addr` must already be this member's.
    pub fn new(
        cfg: Arc<Config>,
        member: &str,
        token: Token,
        local: watch::Receiver<CheckStates>,
        opts: ControllerOptions,
    ) -> Result<Arc<Self>> {
        let etcd = cfg
            .controller
            .etcd
            .clone()
            .context("store = \"etcd\" needs [controller.etcd]")?;
        let margin = cfg.failover.lease_margin.max(Duration::from_millis(500));
        let routing = RoutingTable {
            version: 1,
            regions: cfg
                .region_ids()
                .into_iter()
                .map(|r| (r, HealthStatus::Unknown))
                .collect(),
            ..RoutingTable::default()
        };
        Ok(Arc::new(Self {
            keys: Keys::new(&etcd.prefix),
            leadership: Arc::new(Mutex::new(Leadership::new(etcd.lease_ttl, margin))),
            me: LeaderRecord {
                name: member.to_owned(),
                api_url: format!("http://{}", cfg.controller.api_addr),
            },
            etcd_health: Mutex::new(
                etcd.endpoints
                    .iter()
                    .map(|e| EtcdEndpointView {
                        endpoint: e.clone(),
                        ..EtcdEndpointView::default()
                    })
                    .collect(),
            ),
            members_health: Mutex::new(
                cfg.controller
                    .members
                    .iter()
                    .map(|m| ControllerMemberView {
                        name: m.name.clone(),
                        api_url: format!("http://{}", m.api_addr),
                        up: false,
                    })
                    .collect(),
            ),
            etcd,
            cfg,
            token,
            local,
            opts,
            term: RwLock::new(None),
            routing: watch::channel(routing).0,
            replicated: Mutex::new(Snapshot::default()),
            client: tokio::sync::Mutex::new(None),
            late_metrics: Mutex::new(Vec::new()),
            http: reqwest::Client::builder()
                .timeout(FORWARD_TIMEOUT)
                .connect_timeout(Duration::from_secs(2))
                .no_proxy()
                .build()
                .context("building the HTTP client that forwards to the leader")?,
            stopping: CancellationToken::new(),
        }))
    }

    /// The live routing table, for this controller's DNS.
    pub fn routing(&self) -> watch::Receiver<RoutingTable> {
        self.routing.subscribe()
    }

    /// Add more families to `/metrics` (the term's and the follower's).
    pub fn add_metrics(&self, f: MetricsFn) {
        lock(&self.late_metrics).push(f);
    }

    fn current_term(&self) -> Option<Arc<Term>> {
        self.term.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set_term(&self, t: Option<Arc<Term>>) {
        *self.term.write().unwrap_or_else(|p| p.into_inner()) = t;
    }

    /// Who leads, as this controller knows it, and etcd's health.
    pub fn view(&self) -> LeadershipView {
        let leading = lock(&self.leadership).may_grant(Instant::now());
        let leader = if leading {
            Some(self.me.clone())
        } else {
            lock(&self.replicated).leader.clone()
        };
        LeadershipView {
            this: self.me.name.clone(),
            leader: leader.as_ref().map(|l| l.name.clone()),
            leader_url: leader.map(|l| l.api_url),
            leading,
            etcd: lock(&self.etcd_health).clone(),
            controllers: lock(&self.members_health).clone(),
        }
    }

    async fn client(&self, cancel: &CancellationToken) -> Option<etcd_client::Client> {
        let mut c = self.client.lock().await;
        while c.is_none() {
            match connect(&self.etcd).await {
                Ok(client) => *c = Some(client),
                Err(e) => {
                    tracing::warn!("{e:#}");
                    tokio::select! {
                        _ = cancel.cancelled() => return None,
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    }
                }
            }
        }
        c.clone()
    }

    /// Follow, campaign, lead, follow again … until `cancel`.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) -> Result<()> {
        // However run ends, the dashboards' streams end with it.
        let _streams = self.stopping.clone().drop_guard();
        let health = tokio::spawn(self.clone().watch_etcd_health(cancel.clone()));
        let Some(client) = self.client(&cancel).await else {
            return Ok(());
        };
        let mut every = tokio::time::interval(FOLLOW_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // A watch on the deployment's keys wakes the follower at once (a new state,
        // a new routing table, the leader key gone); the period is the fallback
        // while the watch is down.
        let mut watch: Option<etcd_client::WatchStream> = None;
        while !cancel.is_cancelled() {
            if watch.is_none() {
                let mut w = client.watch_client();
                let opts = etcd_client::WatchOptions::new().with_prefix();
                watch = bounded(w.watch(self.keys.prefix(), Some(opts))).await.ok();
            }
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = every.tick() => {}
                m = async {
                    match watch.as_mut() {
                        Some(w) => w.message().await,
                        None => std::future::pending().await,
                    }
                } => {
                    if !matches!(m, Ok(Some(_))) {
                        watch = None;
                    }
                }
            }
            match snapshot(&client, &self.keys).await {
                Ok(s) => {
                    let nobody_leads = s.leader.is_none();
                    self.follow(s);
                    if nobody_leads {
                        self.clone().try_to_lead(&client, &cancel).await;
                        // Events queued while campaigning or leading are stale.
                        watch = None;
                    }
                }
                Err(e) => tracing::debug!("reading etcd: {e}"),
            }
        }
        health.abort();
        let _ = health.await;
        Ok(())
    }

    /// Serve what the leader published.
    fn follow(&self, s: Snapshot) {
        if let Some(rt) = &s.routing {
            let rt = rt.clone();
            self.routing.send_if_modified(|cur| {
                let changed = *cur != rt;
                if changed {
                    *cur = rt;
                }
                changed
            });
        }
        *lock(&self.replicated) = s;
    }

    /// Campaign once; if elected, lead until the term ends.
    async fn try_to_lead(
        self: Arc<Self>,
        client: &etcd_client::Client,
        cancel: &CancellationToken,
    ) {
        let ttl = i64::try_from(self.etcd.lease_ttl.as_secs()).unwrap_or(i64::MAX);
        let sent = Instant::now();
        let lease = match retried(|| {
            let mut leases = client.lease_client();
            async move { leases.grant(ttl, None).await }
        })
        .await
        {
            Ok(l) => l.id(),
            Err(e) => {
                tracing::debug!("etcd lease grant: {e}");
                return;
            }
        };
        match campaign(client, &self.keys, lease, &self.me).await {
            Ok(true) => {
                if let Err(e) = self.clone().lead(client, lease, sent, cancel).await {
                    tracing::error!("leading: {e:#}");
                }
            }
            Ok(false) => {}
            Err(e) => tracing::debug!("campaign: {e}"),
        }
        // Elected or not, this lease has no more use: revoke it so that the leader
        // key it may hold goes at once (another controller leads within one follow
        // period instead of a ttl). Unanswered: it expires by itself.
        let _ = retried(|| {
            let mut leases = client.lease_client();
            async move { leases.revoke(lease).await }
        })
        .await;
    }

    async fn lead(
        self: Arc<Self>,
        client: &etcd_client::Client,
        lease: i64,
        sent: Instant,
        cancel: &CancellationToken,
    ) -> Result<()> {
        let actions = lock(&self.leadership).step(Instant::now(), LeaderEvent::Elected { sent });
        let Some(term_no) = actions.iter().find_map(|a| match a {
            LeaderAction::StartTerm { term } => Some(*term),
            LeaderAction::StopTerm { .. } => None,
        }) else {
            return Ok(());
        };
        let store = match EtcdStore::for_term(client.clone(), self.keys.clone(), lease).await {
            Ok(s) => Arc::new(s),
            Err(e) => {
                self.end_term("cannot read the journal from etcd");
                return Err(e);
            }
        };
        let mut opts = self.opts.clone();
        let gate = self.leadership.clone();
        opts.may_grant = Some(Arc::new(move |now| lock(&gate).may_grant(now)));
        let me = Arc::downgrade(&self);
        opts.leadership = Some(Arc::new(move || {
            me.upgrade().map(|h| h.view()).unwrap_or_default()
        }));
        opts.extra_metrics
            .extend(lock(&self.late_metrics).iter().cloned());
        let dyn_store: Arc<dyn StateStore> = store.clone();
        let controller = match Controller::open_with(
            self.cfg.clone(),
            self.token.clone(),
            self.local.clone(),
            opts,
            dyn_store,
        )
        .await
        {
            Ok(c) => c,
            Err(e) => {
                self.end_term("cannot start the term's controller");
                return Err(e.context("starting the term's controller from etcd's state"));
            }
        };
        let epoch = controller.epoch().await;
        if let Err(e) = store
            .append(
                0,
                epoch,
                lifeboat_core::JournalKind::Info,
                None,
                &format!(
                    "controller {} leads (term {term_no} on this controller; etcd lease {lease:x}): it acts as if just restarted",
                    self.me.name
                ),
            )
            .await
        {
            self.end_term("cannot journal the takeover");
            return Err(e);
        }
        tracing::info!(member = %self.me.name, %epoch, "leading");
        let term_cancel = cancel.child_token();
        let mut run = tokio::spawn(controller.clone().run(term_cancel.clone()));
        let publish = tokio::spawn(publish_routing(
            controller.routing(),
            self.routing.clone(),
            store.clone(),
            term_cancel.clone(),
        ));
        self.set_term(Some(Arc::new(Term {
            router: controller.router(),
        })));
        let (tx, mut events) = mpsc::unbounded_channel();
        let keeper = tokio::spawn(keep_alive(
            client.clone(),
            lease,
            self.etcd.lease_ttl / 3,
            tx,
            term_cancel.clone(),
        ));
        let lost = store.lost();
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        let mut ended = None;
        let why = loop {
            let event = tokio::select! {
                _ = term_cancel.cancelled() => break "stopping".to_owned(),
                // A term's controller that stopped (a store write failed, and it makes
                // no more decisions) must not leave this member leading with nobody
                // deciding: end the term, and the next one starts from etcd's state.
                res = &mut run, if ended.is_none() => {
                    let why = match &res {
                        Ok(Ok(())) => "the term's controller stopped".to_owned(),
                        Ok(Err(e)) => format!("the term's controller stopped: {e:#}"),
                        Err(e) => format!("the term's controller panicked: {e}"),
                    };
                    ended = Some(res);
                    LeaderEvent::Lost { why }
                }
                _ = lost.cancelled() => LeaderEvent::Lost { why: "a write guarded by the leader key was refused or unanswered".into() },
                ev = events.recv() => ev.unwrap_or(LeaderEvent::Lost { why: "the keep-alive loop ended".into() }),
                _ = tick.tick() => LeaderEvent::Tick,
            };
            let actions = lock(&self.leadership).step(Instant::now(), event);
            if let Some(why) = actions.into_iter().find_map(|a| match a {
                LeaderAction::StopTerm { why, .. } => Some(why),
                LeaderAction::StartTerm { .. } => None,
            }) {
                break why;
            }
        };
        // The gate already refuses every grant; stop the rest of the term.
        self.end_term(&why);
        term_cancel.cancel();
        let res = match ended {
            Some(res) => res,
            None => run.await,
        };
        match res {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("the term's controller ended: {e:#}"),
            Err(e) => tracing::error!("the term's controller panicked: {e}"),
        }
        if let Err(e) = publish.await {
            tracing::error!("the routing publisher panicked: {e}");
        }
        if let Err(e) = keeper.await {
            tracing::error!("the keep-alive loop panicked: {e}");
        }
        tracing::warn!(member = %self.me.name, "no longer leading: {why}");
        Ok(())
    }

    fn end_term(&self, why: &str) {
        lock(&self.leadership).step(
            Instant::now(),
            LeaderEvent::Lost {
                why: why.to_owned(),
            },
        );
        self.set_term(None);
    }

    /// Each etcd endpoint's and each controller's health, every second, for status
    /// and metrics.
    async fn watch_etcd_health(self: Arc<Self>, cancel: CancellationToken) {
        let mut clients: BTreeMap<String, etcd_client::Client> = BTreeMap::new();
        loop {
            let mut views = Vec::new();
            for ep in &self.etcd.endpoints {
                let mut one = self.etcd.clone();
                one.endpoints = vec![ep.clone()];
                if !clients.contains_key(ep)
                    && let Ok(c) = connect(&one).await
                {
                    clients.insert(ep.clone(), c);
                }
                let mut view = EtcdEndpointView {
                    endpoint: ep.clone(),
                    ..EtcdEndpointView::default()
                };
                if let Some(c) = clients.get_mut(ep)
                    && let Ok(s) = bounded(c.status()).await
                {
                    view.healthy = true;
                    view.raft_leader = s.header().is_some_and(|h| h.member_id() == s.leader());
                }
                views.push(view);
            }
            *lock(&self.etcd_health) = views;
            let mut members = lock(&self.members_health).clone();
            for m in &mut members {
                let c = lifeboat_api::ApiClient::new(m.api_url.clone(), None, REQUEST_TIMEOUT);
                m.up = c.get_text("/healthz").await.is_ok_and(|t| t.trim() == "ok");
            }
            *lock(&self.members_health) = members;
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    pub fn router(self: &Arc<Self>) -> Router {
        Router::new().fallback(dispatch).with_state(self.clone())
    }

    fn follower_status(&self) -> ControllerStatus {
        let s = lock(&self.replicated).clone();
        let rt = self.routing.borrow().clone();
        let state = s.state.unwrap_or_default();
        let regions = self
            .cfg
            .regions
            .iter()
            .map(|(name, rc)| {
                let id = RegionId::new(name);
                RegionView {
                    active: state.active.as_ref() == Some(&id),
                    health: rt.regions.get(&id).copied().unwrap_or_default(),
                    agent_addr: rc.agent_addr.to_string(),
                    last_report_ms: None,
                    agent_epoch: None,
                    agent_active: false,
                    fenced: false,
                    roles: Vec::new(),
                    promised: None,
                    witness_lost: false,
                    name: id,
                }
            })
            .collect();
        ControllerStatus {
            deployment: self.cfg.deployment.name.clone(),
            epoch: state.epoch,
            active: state.active.clone(),
            phase: match &s.leader {
                Some(l) => format!("follower of {} (state from etcd)", l.name),
                None => "follower: nobody leads (state from etcd)".to_owned(),
            },
            mode: format!("{:?}", self.cfg.failover.mode).to_lowercase(),
            lease: None,
            regions,
            failovers: state.failovers,
            leadership: Some(self.view()),
        }
    }

    fn not_leader(&self) -> ApiError {
        let v = self.view();
        ApiError::new(
            StatusCode::MISDIRECTED_REQUEST,
            match (v.leader, v.leader_url) {
                (Some(l), Some(url)) => format!(
                    "controller {} is not the leader: {l} leads, at {url}",
                    self.me.name
                ),
                _ => format!(
                    "controller {} is not the leader, and nobody leads right now",
                    self.me.name
                ),
            },
        )
    }

    fn follower_metrics(&self) -> String {
        let mut out = Page::new();
        let st = self.follower_status();
        out.family(
            "lifeboat_epoch",
            Kind::Gauge,
            "Current epoch (fencing token).",
        );
        out.sample("lifeboat_epoch", &[], st.epoch.0 as f64);
        leadership_metrics(&mut out, &self.view());
        for f in lock(&self.late_metrics).iter() {
            f(&mut out);
        }
        out.render()
    }
}

/// Forward the term's routing table to this controller's DNS and to etcd (for
/// the followers' DNS) until the term ends.
async fn publish_routing(
    mut from: watch::Receiver<RoutingTable>,
    to: watch::Sender<RoutingTable>,
    store: Arc<EtcdStore>,
    cancel: CancellationToken,
) {
    // A new term's controller counts its table's versions from 1 again: continue
    // from the last one served, so the zone's SOA serial never goes back.
    let base = to.borrow().version;
    loop {
        let mut rt = from.borrow_and_update().clone();
        rt.version = rt.version.saturating_add(base);
        to.send_replace(rt.clone());
        if let Err(e) = store.put_routing(&rt).await {
            tracing::warn!("publishing the routing table: {e:#}");
            return;
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            r = from.changed() => if r.is_err() { return },
        }
    }
}

/// Renew `lease` every `every`; report each answer with the instant its request
/// was sent. A keep-alive that is not answered in time is abandoned with its
/// stream (a late answer on the same stream would be taken for the next one's).
async fn keep_alive(
    client: etcd_client::Client,
    lease: i64,
    every: Duration,
    events: mpsc::UnboundedSender<LeaderEvent>,
    cancel: CancellationToken,
) {
    let mut stream = None;
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = interval.tick() => {}
        }
        let sent = Instant::now();
        if stream.is_none() {
            match retried(|| {
                let mut leases = client.lease_client();
                async move { leases.keep_alive(lease).await }
            })
            .await
            {
                // Opening the stream sends the first keep-alive and waits for its answer.
                Ok((keeper, s)) => {
                    stream = Some((keeper, s));
                    if events.send(LeaderEvent::Renewed { sent }).is_err() {
                        return;
                    }
                }
                Err(crate::etcd::EtcdStoreError::Etcd(
                    etcd_client::Error::LeaseKeepAliveError(e),
                )) => {
                    let _ = events.send(LeaderEvent::Lost {
                        why: format!("etcd lease {lease:x}: {e}"),
                    });
                    return;
                }
                Err(e) => {
                    tracing::warn!("etcd keep-alive: {e}");
                    interval.reset_immediately();
                }
            }
            continue;
        }
        let Some((keeper, s)) = stream.as_mut() else {
            continue;
        };
        let answer = tokio::time::timeout(REQUEST_TIMEOUT, async {
            keeper.keep_alive().await?;
            s.message().await
        })
        .await;
        match answer {
            Ok(Ok(Some(resp))) if resp.ttl() > 0 => {
                if events.send(LeaderEvent::Renewed { sent }).is_err() {
                    return;
                }
            }
            Ok(Ok(Some(_))) => {
                let _ = events.send(LeaderEvent::Lost {
                    why: format!("etcd lease {lease:x} expired"),
                });
                return;
            }
            Ok(Ok(None)) | Ok(Err(_)) | Err(_) => {
                tracing::warn!("etcd keep-alive unanswered; opening a new stream");
                stream = None;
                interval.reset_immediately();
            }
        }
    }
}

async fn dispatch(State(h): State<Arc<HaController>>, req: Request) -> Response {
    if let Some(term) = h.current_term() {
        return match term.router.clone().oneshot(req).await {
            Ok(r) => r,
            Err(never) => match never {},
        };
    }
    if req.method() == Method::GET && req.uri().path() == "/v1/events" {
        return follower_events(h).into_response();
    }
    follower(&h, req).await
}

/// A follower's `/v1/events` for the same dashboard as the leader's: the replicated
/// status and the journal from etcd (no health matrix or lag: those live in the
/// leader's memory). It ends when this controller's own term starts, and the page
/// reconnects to the term's stream.
fn follower_events(
    h: Arc<HaController>,
) -> axum::response::sse::Sse<
    impl futures::Stream<Item = Result<axum::response::sse::Event, std::convert::Infallible>>,
> {
    use crate::server::dashboard::RETRY;
    use axum::response::sse::{Event, KeepAlive, Sse};
    use futures::StreamExt;
    let stopping = h.stopping.clone().cancelled_owned();
    let s = futures::stream::unfold((h, 0u64, true), |(h, seq, first)| async move {
        if !first {
            tokio::time::sleep(FOLLOWER_EVENTS_EVERY).await;
        }
        if h.current_term().is_some() {
            return None;
        }
        let client = h.client.lock().await.clone();
        let mut journal = match &client {
            Some(c) => read_journal(c, &h.keys, seq, if first { 100_000 } else { 1000 })
                .await
                .unwrap_or_default(),
            None => Vec::new(),
        };
        if first {
            let skip = journal.len().saturating_sub(200);
            journal.drain(..skip);
        }
        let next = journal.last().map_or(seq, |e| e.seq);
        let update = serde_json::json!({
            "reset": first,
            "now_unix_ms": crate::store::unix_ms(),
            "status": h.follower_status(),
            "health": [],
            "journal": journal,
            "lag": [],
        });
        let ev = Event::default()
            .event("update")
            .retry(RETRY)
            .data(update.to_string());
        Some((Ok(ev), (h, next, false)))
    });
    Sse::new(s.take_until(stopping)).keep_alive(KeepAlive::default())
}

/// How often a follower's dashboard stream sends the replicated state.
const FOLLOWER_EVENTS_EVERY: Duration = Duration::from_millis(500);

/// Marks a call a follower forwarded: the leader answers it, and a controller that
/// is no longer the leader when it arrives answers 421 rather than forward it again.
pub const FORWARDED_BY: &str = "x-lifeboat-forwarded-by";
/// On a forwarded call's answer: the controller that answered it.
pub const ANSWERED_BY: &str = "x-lifeboat-answered-by";
/// How long a follower waits for the leader's answer to a forwarded call.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(15);

/// The calls a follower forwards to the leader: the operator's, which only the
/// leader can answer. The agents' (`/v1/lease`, `/v1/report`) are not among them.
fn forwarded(method: &Method, path: &str) -> bool {
    match *method {
        Method::POST => matches!(path, "/v1/failover" | "/v1/switchover" | "/v1/drills"),
        Method::GET => {
            matches!(path, "/v1/health" | "/v1/regions" | "/v1/drills")
                || path.starts_with("/drills/")
        }
        _ => false,
    }
}

/// Send an operator's call on to the leader and return its answer, with
/// [`ANSWERED_BY`] naming it. The leader checks the operator token, as for a call
/// made to it. Nobody leading, or the leader unreachable: 503, nothing was done.
/// Sent but unanswered: 504, saying that it may have been carried out.
async fn forward(h: &HaController, req: Request) -> Response {
    use axum::http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
    if req.headers().contains_key(FORWARDED_BY) {
        return h.not_leader().into_response();
    }
    let me = &h.me.name;
    let v = h.view();
    let (Some(leader), Some(url)) = (v.leader, v.leader_url) else {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "controller {me} is not the leader and nobody leads right now (an election takes up to the etcd lease ttl): nothing was done; try again in a few seconds"
            ),
        )
        .into_response();
    };
    let (parts, body) = req.into_parts();
    let body = match axum::body::to_bytes(body, crate::server::MAX_FORWARDED_BODY).await {
        Ok(b) => b,
        Err(e) => {
            return ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("reading the request to forward to the leader {leader}: {e}"),
            )
            .into_response();
        }
    };
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let target = format!("{url}{path}");
    let mut out = h
        .http
        .request(parts.method.clone(), &target)
        .header(FORWARDED_BY, me.as_str())
        .body(body);
    for name in [AUTHORIZATION, CONTENT_TYPE, ACCEPT] {
        if let Some(v) = parts.headers.get(&name) {
            out = out.header(name, v);
        }
    }
    let answer = match out.send().await {
        Ok(resp) => {
            let status = resp.status();
            let content_type = resp.headers().get(CONTENT_TYPE).cloned();
            resp.bytes().await.map(|b| (status, content_type, b))
        }
        Err(e) => Err(e),
    };
    match answer {
        Ok((status, content_type, bytes)) => {
            let mut r = (status, bytes).into_response();
            if let Some(ct) = content_type {
                r.headers_mut().insert(CONTENT_TYPE, ct);
            }
            if let Ok(v) = axum::http::HeaderValue::from_str(&leader) {
                r.headers_mut().insert(ANSWERED_BY, v);
            }
            r
        }
        Err(e) if e.is_connect() => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "controller {me} is not the leader, and the leader {leader} at {url} does not answer it ({e}): nothing was done"
            ),
        )
        .into_response(),
        Err(e) => ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            format!(
                "controller {me} forwarded this to the leader {leader} at {url} and got no answer ({e}): it may have been carried out; see `lifeboat status` and `lifeboat journal`"
            ),
        )
        .into_response(),
    }
}

async fn follower(h: &HaController, req: Request) -> Response {
    if forwarded(req.method(), req.uri().path()) {
        return forward(h, req).await;
    }
    if req.method() != Method::GET {
        return h.not_leader().into_response();
    }
    let query = req.uri().query().unwrap_or("").to_owned();
    match req.uri().path() {
        "/healthz" => "ok".into_response(),
        "/v1/status" => axum::Json(h.follower_status()).into_response(),
        "/v1/routing" => {
            if lock(&h.replicated).routing.is_none() {
                return ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no routing table in etcd yet",
                )
                .into_response();
            }
            axum::Json(h.routing.borrow().clone()).into_response()
        }
        "/v1/discovery" => {
            let rt = h.routing.borrow().clone();
            let address = rt
                .active
                .as_ref()
                .and_then(|a| h.cfg.region(a))
                .and_then(|r| r.address)
                .map(|a| a.to_string());
            let endpoints = match (&h.opts.discovery, &rt.active) {
                (Some(f), Some(active)) => f(&h.cfg, active),
                _ => BTreeMap::new(),
            };
            axum::Json(Discovery {
                epoch: rt.epoch,
                active: rt.active,
                address,
                endpoints,
            })
            .into_response()
        }
        "/v1/journal" => {
            let mut since = 0;
            let mut limit = 10_000;
            for kv in query.split('&') {
                match kv.split_once('=') {
                    Some(("since", v)) => since = v.parse().unwrap_or(0),
                    Some(("limit", v)) => limit = v.parse().unwrap_or(10_000),
                    _ => {}
                }
            }
            let client = h.client.lock().await.clone();
            let Some(client) = client else {
                return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "etcd not reached yet")
                    .into_response();
            };
            match read_journal(&client, &h.keys, since, limit).await {
                Ok(j) => axum::Json(j).into_response(),
                Err(e) => {
                    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response()
                }
            }
        }
        "/metrics" => (
            [(
                axum::http::header::CONTENT_TYPE,
                lifeboat_core::metrics::CONTENT_TYPE,
            )],
            h.follower_metrics(),
        )
            .into_response(),
        "/" => (
            [(
                axum::http::header::CONTENT_SECURITY_POLICY,
                crate::server::dashboard::CSP,
            )],
            Html(crate::server::dashboard::PAGE),
        )
            .into_response(),
        _ => h.not_leader().into_response(),
    }
}
