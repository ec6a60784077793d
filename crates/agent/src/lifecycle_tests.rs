//! The agent's driver on a real runtime against a small fake controller over HTTP:
//! what the pure machine promises must survive the I/O around it (role lock, task
//! cancellation, lease requests while a role activates).
#![allow(clippy::unwrap_used)]

use super::*;
use axum::extract::State as AxState;
use axum::routing::post;
use axum::{Json, Router};
use lifeboat_api::types::{AgentCommand, CommandKind, LeaseRequest, LeaseResponse, ReportResponse};
use lifeboat_core::{RoleError, RoleHealth};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

const TTL: Duration = Duration::from_secs(1);

/// Grants region a the lease at epoch 1 and records when each request came.
#[derive(Default)]
struct FakeController {
    requests: Mutex<Vec<Instant>>,
}

async fn fake_lease(
    AxState(f): AxState<Arc<FakeController>>,
    Json(req): Json<LeaseRequest>,
) -> Json<LeaseResponse> {
    f.requests
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(Instant::now());
    Json(LeaseResponse {
        granted: req.region.as_str() == "a" && req.epoch == Epoch(1),
        epoch: Epoch(1),
        active: Some(RegionId::new("a")),
        ttl_ms: 1000,
        reason: String::new(),
    })
}

async fn fake_report() -> Json<ReportResponse> {
    Json(ReportResponse {
        epoch: Epoch(1),
        active: Some(RegionId::new("a")),
    })
}

/// A role whose activation takes `takes` (three lease ttls): a PostgreSQL promotion
/// that replays a long WAL tail, a service slow to start.
struct SlowActivate {
    takes: Duration,
    calls: AtomicU32,
    began: Mutex<Option<Instant>>,
    finished: Mutex<Option<Instant>>,
    /// The activation future was dropped before it finished (cancelled).
    cancelled: AtomicBool,
    fences: Mutex<Vec<Instant>>,
}

struct SetOnDrop<'a>(&'a AtomicBool, bool);
impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        if self.1 {
            self.0.store(true, Ordering::SeqCst);
        }
    }
}

#[async_trait::async_trait]
impl DataRole for SlowActivate {
    fn name(&self) -> &str {
        "slow"
    }
    async fn status(&self) -> RoleStatus {
        RoleStatus::new("slow", RoleHealth::Unknown)
    }
    async fn fence(&self, _epoch: Epoch) -> Result<(), RoleError> {
        self.fences
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Instant::now());
        Ok(())
    }
    async fn activate(&self, _a: &Activation) -> Result<(), RoleError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        *self.began.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        let mut armed = SetOnDrop(&self.cancelled, true);
        tokio::time::sleep(self.takes).await;
        armed.1 = false;
        *self.finished.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        Ok(())
    }
    async fn follow(&self, _t: &FollowTarget) -> Result<(), RoleError> {
        Ok(())
    }
}

struct Running {
    agent: Arc<Agent>,
    role: Arc<SlowActivate>,
    fake: Arc<FakeController>,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<Result<()>>,
    _dir: tempfile::TempDir,
}

/// Two regions, a 1 s lease, the controller at `addr`; state under `dir`.
fn test_config(dir: &tempfile::TempDir, addr: std::net::SocketAddr) -> Arc<Config> {
    let text = format!(
        "[deployment]\nname = \"t\"\n\n[controller]\napi_addr = \"{addr}\"\n\
         dns_addr = \"127.0.0.1:9\"\nstate_dir = {:?}\n\n[auth]\ntoken_env = \"T\"\n\n\
         [failover]\nlease_ttl = \"1s\"\nlease_margin = \"300ms\"\n\n\
         [regions.a]\nagent_addr = \"127.0.0.1:9\"\nrole = \"active\"\n\n\
         [regions.b]\nagent_addr = \"127.0.0.1:10\"\nrole = \"standby\"\n",
        dir.path().display().to_string()
    );
    Arc::new(Config::parse(&dir.path().join("t.toml"), &text).unwrap())
}

async fn start() -> Running {
    let fake = Arc::new(FakeController::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new()
        .route("/v1/lease", post(fake_lease))
        .route("/v1/report", post(fake_report))
        .with_state(fake.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let dir = tempfile::tempdir().unwrap();
    let cfg = test_config(&dir, addr);
    let role = Arc::new(SlowActivate {
        takes: TTL * 3,
        calls: AtomicU32::new(0),
        began: Mutex::new(None),
        finished: Mutex::new(None),
        cancelled: AtomicBool::new(false),
        fences: Mutex::new(Vec::new()),
    });
    let (_tx, checks) = watch::channel(BTreeMap::new());
    let agent = Agent::new(
        cfg,
        RegionId::new("a"),
        Token::new("t"),
        vec![role.clone()],
        checks,
    )
    .unwrap();
    // This test binary cannot be re-executed as the guard process.
    agent.disable_guard();
    let cancel = CancellationToken::new();
    let task = tokio::spawn(agent.clone().run(cancel.clone()));
    Running {
        agent,
        role,
        fake,
        cancel,
        task,
        _dir: dir,
    }
}

async fn poll<T>(what: &str, within: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl Running {
    async fn stop(self) {
        self.cancel.cancel();
        self.task.await.unwrap().unwrap();
    }
    fn began(&self) -> Option<Instant> {
        *self.role.began.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Issue 10: "A role whose activation takes three times the lease ttl: renewals
/// continue, the region becomes active, no livelock".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_activation_keeps_its_lease_and_completes() {
    let r = start().await;
    poll("a active", Duration::from_secs(20), || {
        r.agent.state().active.then_some(())
    })
    .await;
    let began = r.began().unwrap();
    let finished = r.role.finished.lock().unwrap().unwrap();
    assert!(finished.duration_since(began) >= TTL * 3);
    let during = r
        .fake
        .requests
        .lock()
        .unwrap()
        .iter()
        .filter(|t| **t > began && **t < finished)
        .count();
    assert!(
        during >= 6,
        "only {during} renewals in a 3 s activation (ttl 1 s)"
    );
    assert_eq!(r.role.calls.load(Ordering::SeqCst), 1, "activated once");
    assert!(
        r.role.fences.lock().unwrap().iter().all(|t| *t < began),
        "never fenced after the activation began"
    );
    r.stop().await;
}

/// "... a fence during the activation wins."
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fence_during_a_slow_activation_wins() {
    let r = start().await;
    let began = poll("the activation to begin", Duration::from_secs(20), || {
        r.began()
    })
    .await;
    let answer = r
        .agent
        .command(&AgentCommand {
            epoch: Epoch(1),
            command: CommandKind::Fence,
            active: Some(RegionId::new("b")),
            forced: false,
        })
        .await;
    assert!(answer.is_ok(), "{answer:?}");
    assert!(
        Instant::now().duration_since(began) < TTL * 3,
        "the fence did not wait for the activation"
    );
    assert!(
        r.role.cancelled.load(Ordering::SeqCst),
        "the activation was cancelled"
    );
    assert!(r.role.fences.lock().unwrap().iter().any(|t| *t > began));
    // The fenced epoch is never activated again, whatever the controller grants.
    let until = Instant::now() + TTL * 4;
    while Instant::now() < until {
        assert!(!r.agent.state().active);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(r.role.finished.lock().unwrap().is_none());
    assert_eq!(r.role.calls.load(Ordering::SeqCst), 1);
    r.stop().await;
}

/// A role whose status answers only once `answer` is notified, then ready to promote.
struct LateStatus {
    answer: tokio::sync::Notify,
    answered: AtomicBool,
}

#[async_trait::async_trait]
impl DataRole for LateStatus {
    fn name(&self) -> &str {
        "late"
    }
    async fn status(&self) -> RoleStatus {
        if !self.answered.load(Ordering::SeqCst) {
            self.answer.notified().await;
            self.answered.store(true, Ordering::SeqCst);
        }
        let mut st = RoleStatus::new("late", RoleHealth::Standby);
        st.ready_to_promote = true;
        st.caught_up = true;
        st
    }
    async fn fence(&self, _epoch: Epoch) -> Result<(), RoleError> {
        Ok(())
    }
    async fn activate(&self, _a: &Activation) -> Result<(), RoleError> {
        Ok(())
    }
    async fn follow(&self, _t: &FollowTarget) -> Result<(), RoleError> {
        Ok(())
    }
}

async fn record_report(
    AxState(seen): AxState<Arc<Mutex<Vec<lifeboat_api::types::AgentReport>>>>,
    Json(r): Json<lifeboat_api::types::AgentReport>,
) -> Json<ReportResponse> {
    seen.lock().unwrap_or_else(|p| p.into_inner()).push(r);
    Json(ReportResponse {
        epoch: Epoch(1),
        active: Some(RegionId::new("a")),
    })
}

/// A freshly started agent reports its roles as not observed until each has answered
/// once: the controller takes an empty role list as "ready", and once promoted a stale
/// old primary 220 ms after its agent restarted (470 acknowledged writes lost).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_just_started_agent_is_not_ready_until_its_roles_answered() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new()
        .route("/v1/lease", post(fake_lease))
        .with_state(Arc::new(FakeController::default()))
        .merge(
            Router::new()
                .route("/v1/report", post(record_report))
                .with_state(seen.clone()),
        );
    tokio::spawn(async move { axum::serve(listener, app).await });
    let dir = tempfile::tempdir().unwrap();
    let cfg = test_config(&dir, addr);
    let role = Arc::new(LateStatus {
        answer: tokio::sync::Notify::new(),
        answered: AtomicBool::new(false),
    });
    let (_tx, checks) = watch::channel(BTreeMap::new());
    let agent = Agent::new(
        cfg,
        RegionId::new("b"),
        Token::new("t"),
        vec![role.clone()],
        checks,
    )
    .unwrap();
    agent.disable_guard();
    let before = agent.role_statuses();
    assert_eq!(before.len(), 1, "{before:?}");
    assert!(!before[0].ready_to_promote, "{before:?}");
    assert_eq!(before[0].name, "late");
    assert!(before[0].detail.contains("not observed yet"), "{before:?}");

    let cancel = CancellationToken::new();
    let task = tokio::spawn(agent.clone().run(cancel.clone()));
    let count = |seen: &Mutex<Vec<lifeboat_api::types::AgentReport>>| {
        seen.lock().unwrap_or_else(|p| p.into_inner()).len()
    };
    poll("three reports", Duration::from_secs(20), || {
        (count(&seen) >= 3).then_some(())
    })
    .await;
    // Every report sent before the role answered names it, not ready.
    for r in seen.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        assert_eq!(r.roles.len(), 1, "{r:?}");
        assert!(
            !r.roles[0].ready_to_promote,
            "reported ready unobserved: {r:?}"
        );
    }
    role.answer.notify_one();
    poll(
        "a report of the role's own, ready status",
        Duration::from_secs(20),
        || {
            seen.lock()
                .unwrap_or_else(|p| p.into_inner())
                .last()
                .is_some_and(|r| r.roles.iter().all(|s| s.ready_to_promote))
                .then_some(())
        },
    )
    .await;
    cancel.cancel();
    task.await.unwrap().unwrap();
}
