//! The drill against a small real setup started by each test: lifeboat's own DNS
//! server (lifeboat-dns, answering from a routing table the fake controller publishes),
//! a fake app in two "regions" (axum on 127.0.0.1:P and 127.0.0.2:P), and a fake
//! controller (axum: /v1/status, /v1/journal) that fails over when the active region's
//! app goes down. The fault commands are real shell commands that create and remove
//! marker files; the fake regions watch them.
#![allow(clippy::unwrap_used)]

use axum::Router;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use lifeboat_api::types::{ControllerStatus, RegionView};
use lifeboat_config::Config;
use lifeboat_core::{
    Epoch, HealthStatus, JournalEntry, JournalKind, RegionId, RoleHealth, RoleStatus, RoutingTable,
};
use lifeboat_drill::{DrillError, DrillOptions, Scenario};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

const REGIONS: [(&str, &str); 2] = [("a", "127.0.0.1"), ("b", "127.0.0.2")];

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// The fake deployment's shared state.
struct World {
    active: String,
    epoch: u64,
    /// Each region's copy of the entries: id -> time written (ms).
    stores: BTreeMap<String, BTreeMap<String, u64>>,
    journal: Vec<JournalEntry>,
    down: BTreeSet<String>,
}

#[derive(Clone, Copy)]
struct Behaviour {
    /// Fail over when the active region goes down.
    react: bool,
    /// None: synchronous replication. Some(lag): the standby lacks the writes of the
    /// last `lag` before the failure.
    lag: Option<Duration>,
    /// The standby's database role reports not ready to be promoted (and the drill's
    /// steady_timeout is 1s instead of 20s).
    standby_unready: bool,
    /// Region a's `outage_stop` does not bring it back (it only says it ran), and
    /// steady_timeout is 3s instead of 20s.
    short_steady: bool,
}

impl Behaviour {
    /// A deployment that fails over, with synchronous replication and a ready standby.
    const FAILS_OVER: Behaviour = Behaviour {
        react: true,
        lag: None,
        standby_unready: false,
        short_steady: false,
    };
}

struct Setup {
    dir: tempfile::TempDir,
    cfg: Config,
    world: Arc<Mutex<World>>,
    routing: Arc<watch::Sender<RoutingTable>>,
    cancel: CancellationToken,
}

impl Drop for Setup {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl Setup {
    fn marker(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

fn journal(w: &mut World, kind: JournalKind, region: &str, detail: &str) {
    let seq = w.journal.len() as u64 + 1;
    w.journal.push(JournalEntry {
        seq,
        at_unix_ms: now_ms(),
        mono_ms: now_ms(),
        epoch: Epoch(w.epoch),
        kind,
        region: Some(RegionId::new(region)),
        detail: detail.to_owned(),
    });
}

fn routing(w: &World, version: u64) -> RoutingTable {
    RoutingTable {
        version,
        epoch: Epoch(w.epoch),
        active: Some(RegionId::new(&w.active)),
        regions: REGIONS
            .iter()
            .map(|(r, _)| {
                let h = if w.down.contains(*r) {
                    HealthStatus::Unhealthy
                } else {
                    HealthStatus::Healthy
                };
                (RegionId::new(*r), h)
            })
            .collect(),
        checks: BTreeMap::new(),
    }
}

// ---- the fake app -------------------------------------------------------------------

#[derive(serde::Deserialize)]
struct Entry {
    id: String,
    #[allow(dead_code)]
    body: String,
}

#[derive(Clone)]
struct AppState {
    region: String,
    world: Arc<Mutex<World>>,
    sync: bool,
    dir: PathBuf,
}

async fn post_entry(
    State(s): State<AppState>,
    axum::Json(e): axum::Json<Entry>,
) -> (StatusCode, &'static str) {
    // The fault takes effect the moment its command returns, even before the
    // supervisor closes the listener.
    if s.dir.join(format!("down-{}", s.region)).exists() {
        return (StatusCode::SERVICE_UNAVAILABLE, "down");
    }
    let mut w = s.world.lock().unwrap();
    if w.active != s.region {
        return (StatusCode::SERVICE_UNAVAILABLE, "standby");
    }
    let t = now_ms();
    if s.sync {
        for store in w.stores.values_mut() {
            store.insert(e.id.clone(), t);
        }
    } else {
        w.stores.get_mut(&s.region).unwrap().insert(e.id, t);
    }
    (StatusCode::CREATED, "ok")
}

#[derive(serde::Deserialize)]
struct After {
    after: Option<String>,
}

/// Paged like the sample app (`?after=ID`, `next`), 20 ids a page, but only the first
/// three pages are served: the drill must ask for the rest one by one.
async fn list_entries(
    State(s): State<AppState>,
    Query(q): Query<After>,
) -> axum::Json<serde_json::Value> {
    let w = s.world.lock().unwrap();
    let store = &w.stores[&s.region];
    let skip = store
        .keys()
        .position(|k| Some(k) == q.after.as_ref())
        .map_or(0, |p| p + 1);
    let ids: Vec<&String> = store.keys().skip(skip).take(20).collect();
    let next = if skip < 40 && skip + 20 < store.len() {
        ids.last().copied()
    } else {
        None
    };
    axum::Json(serde_json::json!({ "ids": ids, "next": next }))
}

async fn get_entry(State(s): State<AppState>, UrlPath(id): UrlPath<String>) -> StatusCode {
    let w = s.world.lock().unwrap();
    if w.stores[&s.region].contains_key(&id) {
        StatusCode::OK
    } else {
        StatusCode::NOT_FOUND
    }
}

fn app_router(state: AppState) -> Router {
    Router::new()
        .route("/api/entries", get(list_entries).post(post_entry))
        .route("/api/entries/{id}", get(get_entry))
        .with_state(state)
}

/// One region's app: serves while its `down-<region>` marker is absent; when the marker
/// appears the listener is closed (connections are refused), when it goes it rebinds.
async fn supervise_region(
    region: String,
    addr: std::net::SocketAddr,
    first: tokio::net::TcpListener,
    dir: PathBuf,
    state: AppState,
    cancel: CancellationToken,
) {
    let marker = dir.join(format!("down-{region}"));
    let mut listener = Some(first);
    let mut serving: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        let down = marker.exists();
        state.world.lock().unwrap().down.retain(|r| *r != region);
        if down {
            state.world.lock().unwrap().down.insert(region.clone());
            if let Some(h) = serving.take() {
                h.abort();
                let _ = h.await;
            }
        } else if serving.is_none() {
            let l = match listener.take() {
                Some(l) => l,
                None => match tokio::net::TcpListener::bind(addr).await {
                    Ok(l) => l,
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                },
            };
            let router = app_router(state.clone());
            serving = Some(tokio::spawn(async move {
                let _ = axum::serve(l, router).await;
            }));
        }
        tokio::select! {
            () = cancel.cancelled() => break,
            () = tokio::time::sleep(Duration::from_millis(10)) => {}
        }
    }
    if let Some(h) = serving.take() {
        h.abort();
    }
}

// ---- the fake controller --------------------------------------------------------------

#[derive(Clone)]
struct CtrlState {
    world: Arc<Mutex<World>>,
    standby_unready: bool,
}

async fn status(State(s): State<CtrlState>) -> axum::Json<ControllerStatus> {
    let w = s.world.lock().unwrap();
    axum::Json(ControllerStatus {
        deployment: "drilltest".into(),
        epoch: Epoch(w.epoch),
        active: Some(RegionId::new(&w.active)),
        phase: "steady".into(),
        mode: "automatic".into(),
        lease: None,
        regions: REGIONS
            .iter()
            .map(|(r, _)| {
                let down = w.down.contains(*r);
                RegionView {
                    name: RegionId::new(*r),
                    active: w.active == *r,
                    health: if down {
                        HealthStatus::Unhealthy
                    } else {
                        HealthStatus::Healthy
                    },
                    agent_addr: String::new(),
                    last_report_ms: if down { None } else { Some(50) },
                    agent_epoch: Some(Epoch(w.epoch)),
                    agent_active: w.active == *r,
                    fenced: false,
                    promised: None,
                    witness_lost: false,
                    roles: if s.standby_unready && w.active != *r {
                        let mut role = RoleStatus::new("postgres", RoleHealth::Standby);
                        role.detail = "lag 900 MB over the limit".into();
                        vec![role]
                    } else {
                        vec![]
                    },
                }
            })
            .collect(),
        failovers: 0,
        leadership: None,
    })
}

#[derive(serde::Deserialize)]
struct Since {
    #[serde(default)]
    since: u64,
}

async fn journal_page(
    State(s): State<CtrlState>,
    Query(q): Query<Since>,
) -> axum::Json<Vec<JournalEntry>> {
    let w = s.world.lock().unwrap();
    axum::Json(
        w.journal
            .iter()
            .filter(|e| e.seq > q.since)
            .take(5)
            .cloned()
            .collect(),
    )
}

/// Fail the active region over once its app has been down for a little while.
async fn brain(
    world: Arc<Mutex<World>>,
    routing_tx: Arc<watch::Sender<RoutingTable>>,
    b: Behaviour,
    cancel: CancellationToken,
) {
    let mut version = 1;
    let mut down_since: Option<u64> = None;
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
        let mut w = world.lock().unwrap();
        let active = w.active.clone();
        if !b.react || !w.down.contains(&active) {
            down_since = None;
            continue;
        }
        let since = *down_since.get_or_insert_with(now_ms);
        if now_ms() - since < 300 {
            continue;
        }
        let to = REGIONS
            .iter()
            .map(|(r, _)| *r)
            .find(|r| *r != active)
            .unwrap();
        journal(&mut w, JournalKind::Detected, &active, "app down");
        journal(&mut w, JournalKind::Confirmed, &active, "still down");
        journal(&mut w, JournalKind::Fenced, &active, "lease expired");
        if let Some(lag) = b.lag {
            // Asynchronous replication: the standby has what was written up to `lag`
            // before the failure.
            let cutoff = since - lag.as_millis() as u64;
            let copied: Vec<(String, u64)> = w.stores[&active]
                .iter()
                .filter(|(_, t)| **t <= cutoff)
                .map(|(k, t)| (k.clone(), *t))
                .collect();
            w.stores.get_mut(to).unwrap().extend(copied);
        }
        w.epoch += 1;
        w.active = to.to_owned();
        journal(&mut w, JournalKind::Promoted, to, "promoted");
        version += 1;
        routing_tx.send_replace(routing(&w, version));
        journal(
            &mut w,
            JournalKind::Rerouted,
            to,
            "DNS answers the new region",
        );
        journal(&mut w, JournalKind::Verified, to, "active");
        if b.lag.is_some() {
            // From now on the new primary's store is the truth; the old one rejoins.
            let new_store = w.stores[to].clone();
            w.stores.insert(active.clone(), new_store);
        }
        down_since = None;
    }
}

async fn serve(l: tokio::net::TcpListener, router: Router, cancel: CancellationToken) {
    let _ = axum::serve(l, router)
        .with_graceful_shutdown(async move { cancel.cancelled().await })
        .await;
}

/// Start everything. `controller_up = false` leaves the controller's address dead;
/// `ttl` is the app record's DNS TTL in seconds.
async fn setup(b: Behaviour, controller_up: bool, ttl: u32) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let extra_drill = outage_commands(dir.path(), b.short_steady);
    let cancel = CancellationToken::new();
    // The app listens on the same port in both regions.
    let (first_a, first_b, port) = loop {
        let a = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = a.local_addr().unwrap().port();
        if let Ok(b) = tokio::net::TcpListener::bind(("127.0.0.2", port)).await {
            break (a, b, port);
        }
    };
    let ctrl = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ctrl_addr = if controller_up {
        ctrl.local_addr().unwrap().to_string()
    } else {
        // Port 1 on loopback: nothing listens there, and no test binds a privileged port.
        "127.0.0.1:1".to_owned()
    };
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dns_addr = udp.local_addr().unwrap();
    let d = dir.path().display();
    let steady = if b.standby_unready {
        "1s"
    } else if b.short_steady {
        "3s"
    } else {
        "20s"
    };
    let text = format!(
        r#"
[deployment]
name = "drilltest"

[controller]
api_addr = "{ctrl_addr}"
dns_addr = "{dns_addr}"
state_dir = "{d}/controller"

[auth]
token_env = "LIFEBOAT_DRILL_TEST_NO_TOKEN"

[regions.a]
agent_addr = "127.0.0.1:1"
address = "127.0.0.1"
role = "active"

[regions.b]
agent_addr = "127.0.0.2:1"
address = "127.0.0.2"
role = "standby"

[dns]
zone = "drill.test."
ttl = {ttl}

[[dns.nameservers]]
name = "ns1"
address = "127.0.0.1"

[[dns.records]]
name = "app"
type = "A"
policy = "failover"
failover = "primary"
region = "a"

[[dns.records]]
name = "app"
type = "A"
policy = "failover"
failover = "secondary"
region = "b"

[drill]
app_name = "app.drill.test."
app_port = {port}
rate = 40
warmup = "600ms"
recovery_timeout = "20s"
cooldown = "300ms"
request_timeout = "500ms"
steady_timeout = "{steady}"
{extra_drill}
"#
    );
    let path = dir.path().join("lifeboat.toml");
    std::fs::write(&path, &text).unwrap();
    let cfg = Config::load(&path).unwrap_or_else(|e| panic!("config: {e}"));

    let world = Arc::new(Mutex::new(World {
        active: "a".into(),
        epoch: 1,
        stores: REGIONS
            .iter()
            .map(|(r, _)| ((*r).to_owned(), BTreeMap::new()))
            .collect(),
        journal: vec![],
        down: BTreeSet::new(),
    }));
    {
        let mut w = world.lock().unwrap();
        journal(&mut w, JournalKind::ControllerStarted, "a", "started");
    }
    let (routing_tx, routing_rx) = watch::channel(routing(&world.lock().unwrap(), 1));
    let routing_tx = Arc::new(routing_tx);
    let dns = lifeboat_dns::DnsServer::new(&cfg, routing_rx).unwrap();
    tokio::spawn(dns.run(udp, tcp, cancel.clone()));
    let ctrl_router = Router::new()
        .route("/v1/status", get(status))
        .route("/v1/journal", get(journal_page))
        .with_state(CtrlState {
            world: world.clone(),
            standby_unready: b.standby_unready,
        });
    if controller_up {
        tokio::spawn(serve(ctrl, ctrl_router, cancel.clone()));
    }
    tokio::spawn(brain(world.clone(), routing_tx.clone(), b, cancel.clone()));
    for ((region, ip), first) in REGIONS.iter().zip([first_a, first_b]) {
        let state = AppState {
            region: (*region).to_owned(),
            world: world.clone(),
            sync: b.lag.is_none(),
            dir: dir.path().to_path_buf(),
        };
        tokio::spawn(supervise_region(
            (*region).to_owned(),
            format!("{ip}:{port}").parse().unwrap(),
            first,
            dir.path().to_path_buf(),
            state,
            cancel.clone(),
        ));
    }
    Setup {
        dir,
        cfg,
        world,
        routing: routing_tx,
        cancel,
    }
}

fn outage_commands(dir: &Path, a_never_returns: bool) -> String {
    let d = dir.display();
    let mut s = String::new();
    for (r, _) in REGIONS {
        let stop = if a_never_returns && r == "a" {
            format!("touch {d}/restored-{r}")
        } else {
            format!("rm -f {d}/down-{r} && touch {d}/restored-{r}")
        };
        s.push_str(&format!(
            "[drill.regions.{r}]\noutage_start = \"touch {d}/down-{r} {d}/injected-{r}\"\noutage_stop = \"{stop}\"\n"
        ));
    }
    s
}

fn opts(scenario: Scenario, runs: u32, dir: &Path) -> DrillOptions {
    DrillOptions {
        scenario,
        runs,
        json: Some(dir.join("report.json")),
        html: Some(dir.join("report.html")),
        ..DrillOptions::new(scenario, runs)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn region_outage_drill_measures_a_clean_failover_and_back() {
    let s = setup(Behaviour::FAILS_OVER, true, 1).await;
    let out = tempfile::tempdir().unwrap();
    let report = lifeboat_drill::run(
        &s.cfg,
        opts(Scenario::RegionOutage, 2, out.path()),
        CancellationToken::new(),
    )
    .await
    .unwrap_or_else(|e| panic!("drill failed: {e:#}"));

    assert_eq!(report.runs.len(), 2);
    // The second run targets whichever region was active: b, and fails back to a.
    let targets: Vec<(&str, Option<&str>)> = report
        .runs
        .iter()
        .map(|r| (r.target.as_str(), r.new_active.as_ref().map(|a| a.as_str())))
        .collect();
    assert_eq!(targets, [("a", Some("b")), ("b", Some("a"))]);
    for r in &report.runs {
        assert!(r.recovered, "run {} not recovered: {:?}", r.run, r.notes);
        let rto = r.rto_ms.expect("an RTO");
        assert!(rto > 0, "run {}: RTO {rto}", r.run);
        assert_eq!(r.lost_acknowledged_writes, 0, "{:?}", r.lost);
        assert!(!r.dual_primary, "{:?}", r.dual_primary_evidence);
        // Writes were acknowledged by both regions: DNS moved the client over.
        assert!(
            r.acknowledged_by.contains_key("a"),
            "{:?}",
            r.acknowledged_by
        );
        assert!(
            r.acknowledged_by.contains_key("b"),
            "{:?}",
            r.acknowledged_by
        );
        let steps: Vec<&str> = r.steps.iter().map(|s| s.step.as_str()).collect();
        assert_eq!(
            steps,
            [
                "detected",
                "confirmed",
                "fenced",
                "promoted",
                "rerouted",
                "verified"
            ]
        );
        assert!(
            r.steps.iter().all(|s| s.since_fault_ms >= 0),
            "{:?}",
            r.steps
        );
    }
    // Every fault was undone.
    for region in ["a", "b"] {
        assert!(s.marker(&format!("restored-{region}")).exists());
        assert!(!s.marker(&format!("down-{region}")).exists());
    }
    assert_eq!(report.summary.lost_acknowledged_writes_total, 0);
    assert!(report.summary.rto_median_ms.is_some());

    // The JSON report carries the contract's fields.
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("report.json")).unwrap())
            .unwrap();
    assert_eq!(json["scenario"], "region-outage");
    let runs = json["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2);
    for key in [
        "rto_ms",
        "lost_acknowledged_writes",
        "unknown_committed",
        "dual_primary",
        "steps",
    ] {
        assert!(!runs[0][key].is_null(), "{key} missing");
    }
    let html = std::fs::read_to_string(out.path().join("report.html")).unwrap();
    assert!(html.contains("<svg") && html.contains("promoted"));
    let text = lifeboat_drill::render_summary(&report);
    eprintln!("{text}");
    assert!(text.contains("RTO median"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asynchronous_replication_loss_is_counted_with_its_window() {
    let lag = Duration::from_millis(400);
    let s = setup(
        Behaviour {
            lag: Some(lag),
            ..Behaviour::FAILS_OVER
        },
        true,
        1,
    )
    .await;
    let out = tempfile::tempdir().unwrap();
    let report = lifeboat_drill::run(
        &s.cfg,
        opts(Scenario::RegionOutage, 1, out.path()),
        CancellationToken::new(),
    )
    .await
    .unwrap_or_else(|e| panic!("drill failed: {e:#}"));
    let r = &report.runs[0];
    assert!(r.recovered, "{:?}", r.notes);
    assert!(
        r.lost_acknowledged_writes > 0,
        "writes acknowledged by a in its last {lag:?} must be missing from b"
    );
    // The lost writes are the last ones a took before the fault was in effect (one
    // started while the fault command ran may be acknowledged just after it), and the
    // window covers them.
    let (first, last) = (r.lost.first_ms.unwrap(), r.lost.last_ms.unwrap());
    for id in &r.lost.ids {
        let op = r.ops.iter().find(|o| &o.id == id).unwrap();
        assert!(
            op.start_ms < r.fault_effective_at_unix_ms,
            "{op:?} started after the fault"
        );
        assert!(first <= op.start_ms && op.end_ms <= last, "{:?}", r.lost);
        assert_eq!(op.region.as_ref().map(|x| x.as_str()), Some("a"));
    }
    assert!(!r.dual_primary, "{:?}", r.dual_primary_evidence);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_controller_is_an_error_and_nothing_is_injected() {
    let s = setup(Behaviour::FAILS_OVER, false, 1).await;
    let err = lifeboat_drill::run(
        &s.cfg,
        opts(Scenario::RegionOutage, 1, s.dir.path()),
        CancellationToken::new(),
    )
    .await
    .expect_err("no controller");
    assert!(
        matches!(
            err.downcast_ref::<DrillError>(),
            Some(DrillError::ControllerUnreachable { .. })
        ),
        "{err:#}"
    );
    let msg = format!("{err:#}");
    assert!(
        msg.contains("127.0.0.1:1") && msg.contains("nothing was injected"),
        "{msg}"
    );
    assert!(!s.marker("injected-a").exists(), "the fault command ran");
    assert!(!s.marker("injected-b").exists(), "the fault command ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scenario_without_its_commands_names_the_missing_key() {
    let s = setup(Behaviour::FAILS_OVER, true, 1).await;
    let err = lifeboat_drill::run(
        &s.cfg,
        opts(Scenario::Partition, 1, s.dir.path()),
        CancellationToken::new(),
    )
    .await
    .expect_err("partition is not configured");
    let msg = format!("{err:#}");
    assert!(msg.contains("drill.regions.a.partition_start"), "{msg}");
    assert!(msg.contains("partition_netns"), "{msg}");
    assert!(!s.marker("injected-a").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unready_standby_is_not_steady_and_nothing_is_injected() {
    let s = setup(
        Behaviour {
            standby_unready: true,
            ..Behaviour::FAILS_OVER
        },
        true,
        1,
    )
    .await;
    let err = lifeboat_drill::run(
        &s.cfg,
        opts(Scenario::RegionOutage, 1, s.dir.path()),
        CancellationToken::new(),
    )
    .await
    .expect_err("the standby is not ready");
    let msg = format!("{err:#}");
    assert!(msg.contains("not steady"), "{msg}");
    assert!(msg.contains("unready roles [\"postgres\"]"), "{msg}");
    assert!(!s.marker("injected-a").exists(), "the fault command ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_run_that_cannot_start_keeps_the_earlier_results() {
    let s = setup(
        Behaviour {
            short_steady: true,
            ..Behaviour::FAILS_OVER
        },
        true,
        1,
    )
    .await;
    // Region a's restore does not bring it back: run 2 never finds a steady deployment.
    let out = tempfile::tempdir().unwrap();
    let report = lifeboat_drill::run(
        &s.cfg,
        opts(Scenario::RegionOutage, 3, out.path()),
        CancellationToken::new(),
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(s.marker("restored-a").exists());
    assert_eq!(report.runs.len(), 1);
    assert!(report.runs[0].recovered);
    let error = report
        .error
        .as_deref()
        .expect("the reason the drill stopped");
    assert!(
        error.contains("run 2") && error.contains("not steady"),
        "{error}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("report.json")).unwrap())
            .unwrap();
    assert_eq!(json["runs"].as_array().unwrap().len(), 1);
    assert!(json["error"].as_str().unwrap().contains("not steady"));
    assert!(lifeboat_drill::render_summary(&report).contains("DRILL STOPPED EARLY"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_during_a_run_undoes_the_fault() {
    // The controller never fails over: the drill would wait out recovery_timeout.
    let s = setup(
        Behaviour {
            react: false,
            ..Behaviour::FAILS_OVER
        },
        true,
        1,
    )
    .await;
    let cancel = lifeboat_drill::cancel_on_ctrl_c().unwrap();
    let cfg = s.cfg.clone();
    let dir = s.dir.path().to_path_buf();
    let drill = tokio::spawn(async move {
        lifeboat_drill::run(&cfg, opts(Scenario::RegionOutage, 1, &dir), cancel).await
    });
    // Wait until the fault is in, then press Ctrl-C (a real SIGINT to this process).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !s.marker("injected-a").exists() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "fault never injected"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(s.marker("down-a").exists());
    nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::Signal::SIGINT).unwrap();
    let err = tokio::time::timeout(Duration::from_secs(20), drill)
        .await
        .expect("the drill stops after SIGINT")
        .unwrap()
        .expect_err("a cancelled drill is an error");
    assert!(
        matches!(
            err.downcast_ref::<DrillError>(),
            Some(DrillError::Cancelled { .. })
        ),
        "{err:#}"
    );
    assert!(format!("{err:#}").contains("undone"), "{err:#}");
    assert!(s.marker("restored-a").exists(), "outage_stop did not run");
    assert!(!s.marker("down-a").exists(), "region a is still down");
    assert_eq!(s.world.lock().unwrap().active, "a");
}

fn resolver_client(s: &Setup) -> lifeboat_drill::client::AppClient {
    let dc = s.cfg.drill.as_ref().unwrap();
    lifeboat_drill::client::AppClient::new(
        &dc.dns_servers(&s.cfg),
        &dc.app_name,
        dc.app_port,
        &dc.app_path,
        Duration::from_secs(1),
        BTreeMap::new(),
        lifeboat_drill::client::Clock::new(),
    )
    .unwrap()
}

fn switch_dns_to_b(s: &Setup) {
    let mut w = s.world.lock().unwrap();
    w.active = "b".into();
    w.epoch += 1;
    s.routing.send_replace(routing(&w, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_resolver_keeps_an_answer_for_its_ttl() {
    let quiet = Behaviour {
        react: false,
        ..Behaviour::FAILS_OVER
    };
    // A long TTL: the cached answer outlives the switch.
    let s = setup(quiet, true, 3600).await;
    let app = resolver_client(&s);
    assert_eq!(app.resolve().await.unwrap().to_string(), "127.0.0.1");
    switch_dns_to_b(&s);
    // The server answers b now (a fresh resolver sees it) ...
    assert_eq!(
        resolver_client(&s).resolve().await.unwrap().to_string(),
        "127.0.0.2"
    );
    // ... but a resolver that cached a's answer keeps it while its TTL lasts.
    assert_eq!(app.resolve().await.unwrap().to_string(), "127.0.0.1");

    // A one-second TTL: the cached answer expires and the new one arrives.
    let s = setup(quiet, true, 1).await;
    let app = resolver_client(&s);
    assert_eq!(app.resolve().await.unwrap().to_string(), "127.0.0.1");
    switch_dns_to_b(&s);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        if app.resolve().await.unwrap().to_string() == "127.0.0.2" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the TTL never expired"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A random schedule against a deployment that configures only the region outage:
/// the other scenarios are left out (and said so), each fault lasts its drawn length,
/// is healed, and the deployment converges before the next; the seed is in the report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_random_schedule_heals_each_fault_and_waits_for_convergence() {
    let s = setup(Behaviour::FAILS_OVER, true, 1).await;
    let out = tempfile::tempdir().unwrap();
    let options = DrillOptions {
        fault_length: Some("0.8-1.5".parse().unwrap()),
        random: Some(lifeboat_drill::RandomSchedule {
            seed: 77,
            faults: 2,
        }),
        ..opts(Scenario::RegionOutage, 1, out.path())
    };
    let report = lifeboat_drill::run(&s.cfg, options, CancellationToken::new())
        .await
        .unwrap_or_else(|e| panic!("drill failed: {e:#}"));
    assert_eq!(report.scenario, "random");
    let schedule = report.schedule.as_ref().expect("the schedule is reported");
    assert_eq!(schedule.seed, 77);
    assert_eq!(schedule.skipped.len(), Scenario::ALL.len() - 1);
    assert!(
        schedule
            .skipped
            .iter()
            .any(|(sc, why)| *sc == Scenario::AgentKill && why.contains("agent_kill")),
        "{:?}",
        schedule.skipped
    );
    assert_eq!(report.runs.len(), 2, "{:?}", report.error);
    for r in &report.runs {
        assert_eq!(r.scenario, Scenario::RegionOutage);
        let len = r.fault_length_ms.expect("a timed fault");
        assert!((800..=1500).contains(&len), "{len}");
        assert_eq!(r.converged, Some(true), "{:?}", r.notes);
        assert!(r.failed_over, "the fake fails over after 300 ms down");
        assert!(r.unavailability_ms > 0);
        // Healed after its length, not after the recovery.
        let healed = r.healed_at_unix_ms.unwrap();
        assert!(healed >= r.fault_effective_at_unix_ms + len, "{r:?}");
        assert_eq!(r.lost_acknowledged_writes, 0);
    }
    // The second fault hit the region that was active then.
    assert_eq!(report.runs[0].fault_target, "a");
    assert_eq!(report.runs[1].fault_target, "b");
    let final_read = report.final_read.as_ref().expect("a final read");
    assert_eq!((final_read.lost, &final_read.error), (0, &None));
    assert!(final_read.acknowledged > 0);
    let per = &report.per_scenario;
    assert_eq!(per.len(), 1);
    assert_eq!(
        (per[0].count, per[0].converged, per[0].failovers),
        (2, 2, 2)
    );
    let text = lifeboat_drill::render_summary(&report);
    assert!(text.contains("seed 77"), "{text}");
}
