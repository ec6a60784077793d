//! Replication between real table servers on loopback (their peer ports speak HTTP
//! to each other, as between regions): changes reach every region, three regions
//! converge, and both regions writing the same keys through an nftables partition
//! converge after the heal with every losing write listed as a conflict.
#![allow(clippy::unwrap_used)]

use lifeboat_tables::api;
use lifeboat_tables::replicate::Peer;
use lifeboat_tables::server::{AccessKeys, TableOptions, TableServer};
use lifeboat_tables::store::{Conflict, Store};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "replication-test-token";

struct Region {
    name: String,
    store: Arc<Store>,
    peer_port: u16,
    _dir: tempfile::TempDir,
}

struct Mesh {
    regions: Vec<Region>,
    cancel: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Mesh {
    /// Table servers for `names`, each pulling from all the others.
    async fn start(names: &[&str]) -> Mesh {
        let mut peers = Vec::new();
        for _ in names {
            peers.push(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap());
        }
        let urls: Vec<String> = peers
            .iter()
            .map(|l| format!("http://{}", l.local_addr().unwrap()))
            .collect();
        let cancel = CancellationToken::new();
        let mut regions = Vec::new();
        let mut tasks = Vec::new();
        for (i, (name, peer)) in names.iter().zip(peers).enumerate() {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(dir.path(), name).unwrap();
            let api = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let peer_port = peer.local_addr().unwrap().port();
            let opts = TableOptions {
                keys: AccessKeys::new(),
                token: TOKEN.into(),
                peers: names
                    .iter()
                    .zip(&urls)
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .map(|(_, (n, u))| Peer {
                        region: (*n).to_owned(),
                        url: u.clone(),
                    })
                    .collect(),
            };
            let server = TableServer::new(store.clone(), opts);
            tasks.push(tokio::spawn(server.run(api, peer, cancel.clone())));
            regions.push(Region {
                name: (*name).to_owned(),
                store,
                peer_port,
                _dir: dir,
            });
        }
        Mesh {
            regions,
            cancel,
            tasks,
        }
    }

    fn store(&self, name: &str) -> &Arc<Store> {
        &self.regions.iter().find(|r| r.name == name).unwrap().store
    }

    async fn stop(self) {
        self.cancel.cancel();
        for t in self.tasks {
            t.await.unwrap().unwrap();
        }
    }
}

async fn call(store: &Arc<Store>, op: &str, req: Value) -> Value {
    api::handle(store, op, &req)
        .await
        .unwrap_or_else(|e| panic!("{op} in {}: {e}", store.region()))
}

/// Every item of `table` in `store`, by key (Scan, paged).
async fn contents(store: &Arc<Store>, table: &str) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    let mut req = json!({"TableName": table});
    loop {
        let Ok(page) = api::handle(store, "Scan", &req).await else {
            return out;
        };
        for item in page["Items"].as_array().unwrap() {
            out.insert(item["id"]["S"].as_str().unwrap().to_owned(), item.clone());
        }
        match page.get("LastEvaluatedKey") {
            Some(k) => req["ExclusiveStartKey"] = k.clone(),
            None => return out,
        }
    }
}

/// Poll until every store holds the same items (or fail after `within`, showing
/// how they differ).
async fn wait_converged(mesh: &Mesh, table: &str, within: Duration) -> BTreeMap<String, Value> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let mut all = Vec::new();
        for r in &mesh.regions {
            all.push(contents(&r.store, table).await);
        }
        if all.windows(2).all(|w| w[0] == w[1]) {
            return all.swap_remove(0);
        }
        if tokio::time::Instant::now() > deadline {
            let sizes: Vec<usize> = all.iter().map(BTreeMap::len).collect();
            let diff: Vec<&String> = all[0]
                .iter()
                .filter(|(k, v)| all[1].get(*k) != Some(*v))
                .map(|(k, _)| k)
                .take(5)
                .collect();
            panic!(
                "the regions did not converge within {within:?}: sizes {sizes:?}, e.g. {diff:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn create_table(store: &Arc<Store>, name: &str) {
    call(
        store,
        "CreateTable",
        json!({
            "TableName": name,
            "KeySchema": [{"AttributeName": "id", "KeyType": "HASH"}],
            "AttributeDefinitions": [{"AttributeName": "id", "AttributeType": "S"}],
            "BillingMode": "PAY_PER_REQUEST",
        }),
    )
    .await;
}

async fn wait_table(mesh: &Mesh, name: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !mesh.regions.iter().all(|r| r.store.table(name).is_ok()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "table {name} never reached every region"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn put(store: &Arc<Store>, table: &str, id: &str, value: &str) {
    call(
        store,
        "PutItem",
        json!({"TableName": table, "Item": {"id": {"S": id}, "v": {"S": value}}}),
    )
    .await;
}

async fn all_conflicts(mesh: &Mesh, table: &str) -> Vec<Conflict> {
    let mut out = Vec::new();
    for r in &mesh.regions {
        out.extend(
            r.store
                .conflicts(Some(table.to_owned()), 0, 100_000)
                .await
                .unwrap(),
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_regions_take_writes_and_converge_with_each_change_applied_once() {
    let mesh = Mesh::start(&["a", "b", "c"]).await;
    create_table(mesh.store("a"), "things").await;
    wait_table(&mesh, "things").await;
    // a writes 1,000 items; b updates 100 of them once it has them; c deletes 50
    // others and writes its own.
    for i in 0..1000 {
        put(mesh.store("a"), "things", &format!("k{i:04}"), "from-a").await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while contents(mesh.store("b"), "things").await.len() < 1000
        || contents(mesh.store("c"), "things").await.len() < 1000
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a's writes never reached b and c"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for i in 0..100 {
        call(
            mesh.store("b"),
            "UpdateItem",
            json!({"TableName": "things", "Key": {"id": {"S": format!("k{i:04}")}},
                   "UpdateExpression": "SET v = :v, n = :n",
                   "ExpressionAttributeValues": {":v": {"S": "from-b"}, ":n": {"N": "1"}}}),
        )
        .await;
    }
    for i in 900..950 {
        call(
            mesh.store("c"),
            "DeleteItem",
            json!({"TableName": "things", "Key": {"id": {"S": format!("k{i:04}")}}}),
        )
        .await;
    }
    for i in 0..20 {
        put(mesh.store("c"), "things", &format!("c{i:02}"), "from-c").await;
    }
    let items = wait_converged(&mesh, "things", Duration::from_secs(30)).await;
    assert_eq!(items.len(), 1000 - 50 + 20);
    assert_eq!(items["k0000"]["v"]["S"], "from-b");
    assert_eq!(items["k0000"]["n"]["N"], "1");
    assert_eq!(items["k0500"]["v"]["S"], "from-a");
    assert!(!items.contains_key("k0920"));
    assert_eq!(items["c07"]["v"]["S"], "from-c");
    // Causal writes (b and c wrote after seeing a's) are not conflicts.
    assert!(all_conflicts(&mesh, "things").await.is_empty());
    // Each of a's writes was applied once in b: one INSERT change per key, from a.
    let log = mesh.store("b").changes_since(0, 1_000_000).await.unwrap();
    let inserts_from_a = log
        .iter()
        .filter(|c| c.kind == "INSERT" && c.version.region == "a")
        .count();
    assert_eq!(inserts_from_a, 1000);
    mesh.stop().await;
}

/// Drops every packet to the given loopback ports until dropped (nftables).
struct Partition {
    table: String,
}

impl Partition {
    fn cut(ports: &[u16]) -> Partition {
        assert!(
            nix_is_root(),
            "the partition test drops packets with nftables and must run as root (CI does)"
        );
        let table = format!("lbtablescut{}", std::process::id());
        let ports = ports
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        let script = format!(
            "table inet {table} {{\n  chain out {{\n    type filter hook output priority 0; policy accept;\n    tcp dport {{ {ports} }} drop\n    tcp sport {{ {ports} }} drop\n  }}\n}}\n"
        );
        use std::io::Write;
        let mut child = std::process::Command::new("nft")
            .args(["-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("nft is installed by scripts/test (Debian package nftables)");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "nft: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Partition { table }
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        let _ = std::process::Command::new("nft")
            .args(["delete", "table", "inet", &self.table])
            .output();
    }
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_regions_writing_the_same_keys_through_a_partition_converge_and_every_lost_write_is_listed()
 {
    let mesh = Mesh::start(&["a", "b"]).await;
    create_table(mesh.store("a"), "parted").await;
    wait_table(&mesh, "parted").await;
    put(mesh.store("a"), "parted", "before", "both-see-it").await;
    wait_converged(&mesh, "parted", Duration::from_secs(20)).await;

    let ports: Vec<u16> = mesh.regions.iter().map(|r| r.peer_port).collect();
    let cut = Partition::cut(&ports);
    // Each side takes writes: 200 keys on both sides (a first, then b: b's are the
    // later writes and win), 30 keys on one side only, and a delete on a of a key
    // that b updates.
    const BOTH: usize = 200;
    for i in 0..BOTH {
        put(mesh.store("a"), "parted", &format!("both{i:03}"), "a").await;
    }
    for i in 0..30 {
        put(mesh.store("a"), "parted", &format!("only-a{i:02}"), "a").await;
    }
    call(
        mesh.store("a"),
        "DeleteItem",
        json!({"TableName": "parted", "Key": {"id": {"S": "before"}}}),
    )
    .await;
    for i in 0..BOTH {
        put(mesh.store("b"), "parted", &format!("both{i:03}"), "b").await;
    }
    for i in 0..30 {
        put(mesh.store("b"), "parted", &format!("only-b{i:02}"), "b").await;
    }
    put(mesh.store("b"), "parted", "before", "b-updated").await;
    // Still cut: neither side has the other's writes.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !contents(mesh.store("a"), "parted")
            .await
            .contains_key("only-b00")
    );
    drop(cut);

    let items = wait_converged(&mesh, "parted", Duration::from_secs(60)).await;
    assert_eq!(items.len(), BOTH + 30 + 30 + 1);
    for i in 0..BOTH {
        assert_eq!(items[&format!("both{i:03}")]["v"]["S"], "b", "both{i:03}");
    }
    assert_eq!(items["only-a07"]["v"]["S"], "a");
    assert_eq!(items["before"]["v"]["S"], "b-updated");

    // Every overwritten version is listed once: a's 200 puts and a's delete of
    // "before" lost to b's later writes; each is recorded by a (whose write it
    // was), with both versions; b lost nothing.
    let conflicts = all_conflicts(&mesh, "parted").await;
    assert_eq!(
        conflicts.len(),
        BOTH + 1,
        "{:?}",
        &conflicts[..conflicts.len().min(3)]
    );
    for c in &conflicts {
        assert_eq!(c.loser_version.region, "a", "{c:?}");
        assert_eq!(c.winner_version.region, "b", "{c:?}");
        assert!(c.winner_version > c.loser_version, "{c:?}");
        assert_eq!(
            c.winner.as_ref().unwrap()["v"]["S"]
                .as_str()
                .map(|s| s.starts_with('b')),
            Some(true),
            "{c:?}"
        );
        match c.keys["id"]["S"].as_str().unwrap() {
            "before" => assert!(c.loser.is_none(), "a's delete lost: {c:?}"),
            _ => assert_eq!(c.loser.as_ref().unwrap()["v"]["S"], "a", "{c:?}"),
        }
    }
    assert!(
        mesh.store("b")
            .conflicts(None, 0, 10)
            .await
            .unwrap()
            .is_empty(),
        "b's writes won: b records none"
    );
    mesh.stop().await;
}
