//! Tombstone collection (docs/tables.md, "Replication"): a delete's tombstone is
//! kept until every region is known to have applied it (and, once its region's
//! report of that is confirmed, every write that region made before) and it is
//! older than the grace period; then each region deletes it, with no change
//! record. Stores driven by hand (each pull as `replicate::pull_once` makes it:
//! the puller's report, then the changes), and real table servers on loopback with
//! one region started late.
#![allow(clippy::unwrap_used)]

mod common;

use common::{TOKEN, call, contents, create_table, peers_but, put, wait_converged, wait_table};
use lifeboat_tables::server::{AccessKeys, TableOptions, TableServer};
use lifeboat_tables::store::{Store, TOMBSTONE_GRACE};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

struct Regions {
    stores: Vec<Arc<Store>>,
    _dirs: Vec<tempfile::TempDir>,
}

impl Regions {
    /// Stores for `names`, with no grace period (unless `default_grace`).
    fn open(names: &[&str], default_grace: bool) -> Regions {
        let mut stores = Vec::new();
        let mut dirs = Vec::new();
        for n in names {
            let d = tempfile::tempdir().unwrap();
            let s = Store::open(d.path(), n).unwrap();
            if !default_grace {
                s.set_tombstone_grace(Duration::ZERO);
            }
            stores.push(s);
            dirs.push(d);
        }
        Regions {
            stores,
            _dirs: dirs,
        }
    }

    fn get(&self, name: &str) -> &Arc<Store> {
        self.stores.iter().find(|s| s.region() == name).unwrap()
    }

    fn peers(&self, of: &str) -> Vec<String> {
        self.stores
            .iter()
            .map(|s| s.region().to_owned())
            .filter(|r| r != of)
            .collect()
    }

    /// One pull of `server`'s changes by `puller`, as the puller's task makes it:
    /// its report goes with the request, then it applies the page.
    async fn pull(&self, puller: &str, server: &str) {
        let (p, s) = (self.get(puller), self.get(server));
        let mut report = p.applied_report().await.unwrap();
        let own = report.remove(puller).unwrap();
        s.peer_applied(puller, own, report).await.unwrap();
        let cursor = p.cursor(server).await.unwrap();
        let changes = s.own_changes_since(cursor, 1000).await.unwrap();
        let upto = changes.last().map_or(cursor, |c| c.seq);
        p.apply_remote(server, changes, upto).await.unwrap();
    }

    /// Every region pulls from every other, twice (the second round carries the
    /// reports of what the first brought).
    async fn exchange(&self) {
        for _ in 0..2 {
            for p in &self.stores {
                for s in &self.stores {
                    if p.region() != s.region() {
                        self.pull(p.region(), s.region()).await;
                    }
                }
            }
        }
    }

    async fn collect(&self, region: &str) -> usize {
        self.get(region)
            .collect_tombstones(&self.peers(region), 1000)
            .await
            .unwrap()
    }
}

/// Tombstone rows in `store`'s file, counted directly.
fn tombstone_rows(store: &Store) -> i64 {
    let c = rusqlite::Connection::open(store.path()).unwrap();
    c.query_row("SELECT count(*) FROM items WHERE item IS NULL", [], |r| {
        r.get(0)
    })
    .unwrap()
}

fn key(id: &str) -> Value {
    json!({"TableName": "gct", "Key": {"id": {"S": id}}})
}

async fn delete(store: &Arc<Store>, id: &str) {
    call(store, "DeleteItem", key(id)).await;
}

async fn get_item(store: &Arc<Store>, id: &str) -> Option<Value> {
    call(store, "GetItem", key(id)).await.get("Item").cloned()
}

async fn log_len(store: &Arc<Store>) -> usize {
    store.changes_since(0, 1_000_000).await.unwrap().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tombstone_stays_until_every_region_has_the_delete_then_is_collected_everywhere() {
    let r = Regions::open(&["a", "b", "c"], false);
    create_table(r.get("a"), "gct").await;
    put(r.get("a"), "gct", "k", "v1").await;
    r.exchange().await;
    assert!(get_item(r.get("c"), "k").await.is_some());

    delete(r.get("a"), "k").await;
    // b has the delete; c pulls nothing from a (a partition of that link), though
    // everything else goes on: reports included.
    for (p, s) in [("b", "a"), ("a", "b"), ("a", "c"), ("b", "c"), ("c", "b")] {
        r.pull(p, s).await;
        r.pull(p, s).await;
    }
    for region in ["a", "b", "c"] {
        assert_eq!(r.collect(region).await, 0, "{region} collected too early");
    }
    assert_eq!(tombstone_rows(r.get("a")), 1);
    assert_eq!(tombstone_rows(r.get("b")), 1);
    assert_eq!(tombstone_rows(r.get("c")), 0);
    assert!(
        get_item(r.get("c"), "k").await.is_some(),
        "c has not the delete"
    );
    let status = r.get("a").tombstones(&r.peers("a")).await.unwrap();
    assert_eq!((status.held, status.collected), (1, 0));

    // c pulls a: now every region has applied the delete, and each learns it.
    r.exchange().await;
    let logs = [
        log_len(r.get("a")).await,
        log_len(r.get("b")).await,
        log_len(r.get("c")).await,
    ];
    for region in ["a", "b", "c"] {
        assert_eq!(r.collect(region).await, 1, "{region}");
        assert_eq!(tombstone_rows(r.get(region)), 0, "{region}");
        assert!(get_item(r.get(region), "k").await.is_none(), "{region}");
        let t = r.get(region).tombstones(&r.peers(region)).await.unwrap();
        assert_eq!((t.held, t.collected), (0, 1), "{region}");
    }
    // Collecting wrote no change.
    assert_eq!(
        logs,
        [
            log_len(r.get("a")).await,
            log_len(r.get("b")).await,
            log_len(r.get("c")).await,
        ]
    );

    // A late redelivery of the delete: no item, no change (a tombstone row again,
    // collected again).
    let del = r
        .get("a")
        .own_changes_since(0, 1000)
        .await
        .unwrap()
        .into_iter()
        .rfind(|c| c.kind == "REMOVE")
        .unwrap();
    let before = log_len(r.get("c")).await;
    let cursor = r.get("c").cursor("a").await.unwrap();
    r.get("c")
        .apply_remote("a", vec![del], cursor)
        .await
        .unwrap();
    assert!(get_item(r.get("c"), "k").await.is_none());
    assert_eq!(log_len(r.get("c")).await, before);
    assert_eq!(tombstone_rows(r.get("c")), 1);
    assert_eq!(r.collect("c").await, 1);
    assert_eq!(tombstone_rows(r.get("c")), 0);

    // A new write of the key is an insert, and reaches every region, with no
    // conflict anywhere.
    put(r.get("b"), "gct", "k", "v2").await;
    r.exchange().await;
    for region in ["a", "b", "c"] {
        let item = get_item(r.get(region), "k").await.unwrap();
        assert_eq!(item["v"]["S"], "v2", "{region}");
        assert!(
            r.get(region)
                .conflicts(None, 0, 10)
                .await
                .unwrap()
                .is_empty(),
            "{region}"
        );
    }
    let last = r.get("a").changes_since(0, 1000).await.unwrap();
    let last = last.last().unwrap();
    assert_eq!(
        (last.kind.as_str(), last.version.region.as_str()),
        ("INSERT", "b")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_concurrent_with_the_delete_still_on_its_way_holds_the_tombstone_back() {
    let r = Regions::open(&["a", "b", "c"], false);
    create_table(r.get("a"), "gct").await;
    put(r.get("a"), "gct", "k", "v1").await;
    r.exchange().await;

    // c writes k; a, not having it, deletes k (later). c gets the delete (its write
    // loses, and c records that) and tells a and b; but a and b do not get c's
    // write yet (their pulls of c are cut).
    put(r.get("c"), "gct", "k", "from-c").await;
    delete(r.get("a"), "k").await;
    for (p, s) in [("c", "a"), ("c", "b"), ("b", "a"), ("a", "b")] {
        r.pull(p, s).await;
        r.pull(p, s).await;
    }
    assert!(get_item(r.get("c"), "k").await.is_none());
    // Every region has applied the delete, but c's earlier write is not here: its
    // report waits, and the tombstone stays (collected, c's write would bring k
    // back in a and b, not in c).
    for region in ["a", "b"] {
        assert_eq!(r.collect(region).await, 0, "{region}");
        assert_eq!(tombstone_rows(r.get(region)), 1, "{region}");
    }

    // c's write arrives: it loses to the delete, and then the tombstone goes.
    r.exchange().await;
    for region in ["a", "b", "c"] {
        r.collect(region).await;
        assert_eq!(tombstone_rows(r.get(region)), 0, "{region}");
        assert!(get_item(r.get(region), "k").await.is_none(), "{region}");
    }
    let conflicts = r.get("c").conflicts(None, 0, 10).await.unwrap();
    assert_eq!(
        conflicts.len(),
        1,
        "c's write lost, recorded once: {conflicts:?}"
    );
    assert!(conflicts[0].winner.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_after_one_region_collected_is_no_conflict_where_the_tombstone_is_still_held() {
    let r = Regions::open(&["a", "b"], false);
    create_table(r.get("a"), "gct").await;
    put(r.get("a"), "gct", "k", "v1").await;
    r.exchange().await;
    delete(r.get("a"), "k").await;
    r.exchange().await;
    // b collects; a has not yet. b's new write of k covers no tombstone (b has
    // none): a sees it as after its delete (b had applied it), not as concurrent.
    assert_eq!(r.collect("b").await, 1);
    assert_eq!(tombstone_rows(r.get("a")), 1);
    put(r.get("b"), "gct", "k", "v2").await;
    r.pull("a", "b").await;
    assert_eq!(get_item(r.get("a"), "k").await.unwrap()["v"]["S"], "v2");
    assert!(
        r.get("a").conflicts(None, 0, 10).await.unwrap().is_empty(),
        "a's delete did not lose to b's write: b made it after applying it"
    );
    assert_eq!(tombstone_rows(r.get("a")), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_default_grace_period_nothing_is_collected() {
    let r = Regions::open(&["a", "b"], true);
    assert_eq!(r.get("a").tombstone_grace(), TOMBSTONE_GRACE);
    assert_eq!(TOMBSTONE_GRACE, Duration::from_secs(24 * 3600));
    create_table(r.get("a"), "gct").await;
    put(r.get("a"), "gct", "k", "v1").await;
    r.exchange().await;
    delete(r.get("a"), "k").await;
    r.exchange().await;
    for region in ["a", "b"] {
        assert_eq!(r.collect(region).await, 0, "{region}");
        assert_eq!(tombstone_rows(r.get(region)), 1, "{region}");
        let t = r.get(region).tombstones(&r.peers(region)).await.unwrap();
        assert_eq!(t.grace_s, 24 * 3600);
        // Every region has the delete: only the grace period keeps it.
        assert!(t.applied_everywhere["a"] > 0, "{region}: {t:?}");
    }
}

/// Table servers for `names`, each pulling from all the others, with no grace
/// period; those of `later` are started by [`Late::start`].
struct Late {
    cancel: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
    stores: Vec<(Arc<Store>, u16)>,
    waiting: Vec<(Arc<TableServer>, tokio::net::TcpListener)>,
    _dirs: Vec<tempfile::TempDir>,
}

impl Late {
    async fn new(names: &[&str], later: &[&str]) -> Late {
        let mut peers = Vec::new();
        for _ in names {
            peers.push(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap());
        }
        let urls: Vec<String> = peers
            .iter()
            .map(|l| format!("http://{}", l.local_addr().unwrap()))
            .collect();
        let mut late = Late {
            cancel: CancellationToken::new(),
            tasks: Vec::new(),
            stores: Vec::new(),
            waiting: Vec::new(),
            _dirs: Vec::new(),
        };
        for (i, (name, peer)) in names.iter().zip(peers).enumerate() {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(dir.path(), name).unwrap();
            store.set_tombstone_grace(Duration::ZERO);
            let opts = TableOptions {
                keys: AccessKeys::new(),
                token: TOKEN.into(),
                peers: peers_but(names, &urls, i),
            };
            late.stores
                .push((store.clone(), peer.local_addr().unwrap().port()));
            let server = TableServer::new(store, opts);
            if later.contains(name) {
                // Its peer port is bound (the others' pulls wait on it) but not
                // served yet.
                late.waiting.push((server, peer));
            } else {
                late.run(server, peer).await;
            }
            late._dirs.push(dir);
        }
        late
    }

    async fn run(&mut self, server: Arc<TableServer>, peer: tokio::net::TcpListener) {
        let api = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        self.tasks
            .push(tokio::spawn(server.run(api, peer, self.cancel.clone())));
    }

    async fn start(&mut self) {
        for (server, peer) in std::mem::take(&mut self.waiting) {
            self.run(server, peer).await;
        }
    }

    fn store(&self, name: &str) -> &Arc<Store> {
        &self
            .stores
            .iter()
            .find(|(s, _)| s.region() == name)
            .unwrap()
            .0
    }

    fn port(&self, name: &str) -> u16 {
        self.stores
            .iter()
            .find(|(s, _)| s.region() == name)
            .unwrap()
            .1
    }

    async fn status(&self, name: &str) -> Value {
        reqwest::Client::new()
            .get(format!(
                "http://127.0.0.1:{}/lifeboat/v1/status",
                self.port(name)
            ))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn metrics(&self, name: &str) -> String {
        reqwest::get(format!("http://127.0.0.1:{}/metrics", self.port(name)))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    async fn stop(self) {
        self.cancel.cancel();
        for t in self.tasks {
            t.await.unwrap().unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_servers_collect_a_tombstone_once_the_late_region_has_pulled_it() {
    let mut m = Late::new(&["a", "b", "c"], &["c"]).await;
    let (a, b) = (m.store("a").clone(), m.store("b").clone());
    create_table(&a, "gct").await;
    put(&a, "gct", "k", "v1").await;
    delete(&a, "k").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while tombstone_rows(&b) != 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "b never got the delete"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // c is not running: a and b keep the tombstone, through their sweeps.
    let peers = |me: &str| -> Vec<String> {
        ["a", "b", "c"]
            .into_iter()
            .filter(|r| *r != me)
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(a.collect_tombstones(&peers("a"), 1000).await.unwrap(), 0);
    assert_eq!(b.collect_tombstones(&peers("b"), 1000).await.unwrap(), 0);
    assert_eq!(m.status("a").await["tombstones"]["held"], 1);
    assert!(
        m.metrics("a")
            .await
            .contains("lifeboat_table_tombstones{region=\"a\"} 1"),
    );

    // c starts, pulls, and tells the others; their sweeps (every 10 s) collect.
    m.start().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mut held = Vec::new();
        for r in ["a", "b", "c"] {
            let s = m.status(r).await;
            held.push((
                s["tombstones"]["held"].clone(),
                s["tombstones"]["collected"].clone(),
            ));
        }
        if held.iter().all(|h| *h == (json!(0), json!(1))) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the tombstone was not collected everywhere: (held, collected) of a, b, c: {held:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for r in ["a", "b", "c"] {
        let page = m.metrics(r).await;
        assert!(
            page.contains(&format!("lifeboat_table_tombstones{{region=\"{r}\"}} 0")),
            "{page}"
        );
        assert!(
            page.contains(&format!(
                "lifeboat_table_tombstones_collected_total{{region=\"{r}\"}} 1"
            )),
            "{page}"
        );
        assert!(get_item(m.store(r), "k").await.is_none(), "{r}");
    }

    // The key written again after: an insert everywhere.
    put(m.store("c"), "gct", "k", "v2").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut all = Vec::new();
        for r in ["a", "b", "c"] {
            all.push(contents(m.store(r), "gct").await);
        }
        if all
            .iter()
            .all(|c| c.get("k").is_some_and(|i| i["v"]["S"] == "v2"))
        {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{all:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for r in ["a", "b", "c"] {
        assert!(
            m.store(r).conflicts(None, 0, 10).await.unwrap().is_empty(),
            "{r}"
        );
    }
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_with_garbage_cursors_is_refused_with_400() {
    let mesh = common::Mesh::start(&["a", "b"]).await;
    create_table(mesh.store("a"), "gct").await;
    wait_table(&mesh, "gct").await;
    put(mesh.store("a"), "gct", "k", "v").await;
    wait_converged(&mesh, "gct", Duration::from_secs(20)).await;
    let port = mesh.regions[0].peer_port;
    let get = |query: &str| {
        let url = format!("http://127.0.0.1:{port}/lifeboat/v1/changes?after=0&{query}");
        async move {
            let r = reqwest::Client::new()
                .get(url)
                .bearer_auth(TOKEN)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    for (query, says) in [
        ("region=b&cursors=b:1,,a:2", "is not region:seq"),
        ("region=b&cursors=b:1,a", "is not region:seq"),
        ("region=b&cursors=b:-1", "is not a whole number"),
        ("region=b&cursors=b:%2B1", "is not a whole number"),
        ("region=b&cursors=b:", "is not a whole number"),
        ("region=b&cursors=b:99999999999999999999", "too large"),
        ("region=b&cursors=b:1,b:2", "given twice"),
        ("region=b&cursors=b%20c:1", "not a region name"),
        ("region=b&cursors=a:1", "no entry for the pulling region"),
        ("region=b", "go together"),
        ("cursors=b:1", "go together"),
    ] {
        let (status, body) = get(query).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert!(body.contains(says), "{query}: {body}");
    }
    // Well formed: served (and without a report, as a tool pulls).
    for query in ["region=b&cursors=a:1,b:0", "limit=5"] {
        let (status, body) = get(query).await;
        assert_eq!(status, 200, "{query}: {body}");
        assert!(body.contains("\"changes\""), "{query}: {body}");
    }
    mesh.stop().await;
}
