//! What the tables crate's integration tests and its benchmark share: real table
//! servers on loopback pulling from each other, calls to a region's API, reading a
//! region's contents, and an nftables partition of their peer links.
#![allow(clippy::unwrap_used, dead_code)]

use lifeboat_tables::api;
use lifeboat_tables::replicate::Peer;
use lifeboat_tables::server::{AccessKeys, TableOptions, TableServer};
use lifeboat_tables::store::{Conflict, Store};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub const TOKEN: &str = "replication-test-token";
/// The access key of the boto3 checks' table server.
pub const KEY_ID: &str = "AKIDLIFEBOATTEST";
pub const SECRET: &str = "lifeboat/test/secret+key";

pub fn boto3_installed() {
    let ok = std::process::Command::new("python3")
        .args(["-c", "import boto3"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "boto3 is not installed: python3 -m pip install boto3 (./scripts/test installs it; a missing dependency fails its test, it never skips)"
    );
}

/// Run boto3's checks in `script` (a file under tests/, which prints "all checks
/// passed") against a table server of region "a" on loopback, its data in a temp dir.
pub async fn boto3_checks(script: &str) {
    boto3_installed();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), "a").unwrap();
    let mut keys = AccessKeys::new();
    keys.insert(KEY_ID.into(), SECRET.into());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let peer = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let cancel = CancellationToken::new();
    let opts = TableOptions {
        keys,
        token: TOKEN.into(),
        peers: Vec::new(),
    };
    let task = tokio::spawn(TableServer::new(store, opts).run(listener, peer, cancel.clone()));
    let path = format!("{}/tests/{script}", env!("CARGO_MANIFEST_DIR"));
    let child = tokio::process::Command::new("python3")
        .arg(&path)
        .env("ENDPOINT", &url)
        .env("KEY_ID", KEY_ID)
        .env("SECRET", SECRET)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let out = tokio::time::timeout(Duration::from_secs(300), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{script} did not finish within 300 s"))
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{script} failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("all checks passed"), "{stdout}\n{stderr}");
    cancel.cancel();
    task.await.unwrap().unwrap();
}

pub struct Region {
    pub name: String,
    pub store: Arc<Store>,
    pub peer_port: u16,
    _dir: tempfile::TempDir,
}

pub struct Mesh {
    pub regions: Vec<Region>,
    cancel: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Mesh {
    /// Table servers for `names`, each pulling from all the others.
    pub async fn start(names: &[&str]) -> Mesh {
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
                peers: peers_but(names, &urls, i),
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

    pub fn store(&self, name: &str) -> &Arc<Store> {
        &self.regions.iter().find(|r| r.name == name).unwrap().store
    }

    pub async fn stop(self) {
        self.cancel.cancel();
        for t in self.tasks {
            t.await.unwrap().unwrap();
        }
    }
}

/// The peers of region `i` of `names` (whose peer ports are at `urls`): all the others.
pub fn peers_but(names: &[&str], urls: &[String], i: usize) -> Vec<Peer> {
    names
        .iter()
        .zip(urls)
        .enumerate()
        .filter(|(j, _)| *j != i)
        .map(|(_, (n, u))| Peer {
            region: (*n).to_owned(),
            url: u.clone(),
        })
        .collect()
}

pub async fn call(store: &Arc<Store>, op: &str, req: Value) -> Value {
    api::handle(store, op, &req)
        .await
        .unwrap_or_else(|e| panic!("{op} in {}: {e}", store.region()))
}

/// Every item of `table` in `store`, by key (Scan, paged).
pub async fn contents(store: &Arc<Store>, table: &str) -> BTreeMap<String, Value> {
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
pub async fn wait_converged(mesh: &Mesh, table: &str, within: Duration) -> BTreeMap<String, Value> {
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

pub async fn create_table(store: &Arc<Store>, name: &str) {
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

pub async fn wait_table(mesh: &Mesh, name: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !mesh.regions.iter().all(|r| r.store.table(name).is_ok()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "table {name} never reached every region"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn put(store: &Arc<Store>, table: &str, id: &str, value: &str) {
    call(
        store,
        "PutItem",
        json!({"TableName": table, "Item": {"id": {"S": id}, "v": {"S": value}}}),
    )
    .await;
}

pub async fn all_conflicts(mesh: &Mesh, table: &str) -> Vec<Conflict> {
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

/// Drops every packet to the given loopback ports until dropped (nftables).
pub struct Partition {
    table: String,
}

impl Partition {
    pub fn cut(ports: &[u16]) -> Partition {
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

pub fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}
