//! boto3 (from PyPI; ./scripts/test installs it) against a real table server on
//! loopback: tables, CRUD over every type, conditions, update expressions, Query and
//! Scan paging through 5,000 items, batches, TTL expiry, and DynamoDB's errors for
//! bad input (crates/tables/tests/boto3_api.py holds the checks).
#![allow(clippy::unwrap_used)]

use lifeboat_tables::server::{AccessKeys, TableOptions, TableServer};
use lifeboat_tables::store::Store;
use std::process::Stdio;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const KEY_ID: &str = "AKIDLIFEBOATTEST";
const SECRET: &str = "lifeboat/test/secret+key";

/// A table server for region "a" on 127.0.0.1:0, its data in a temp dir.
async fn server() -> (
    String,
    CancellationToken,
    tokio::task::JoinHandle<anyhow::Result<()>>,
    tempfile::TempDir,
) {
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
        token: "peer-token".into(),
        peers: Vec::new(),
    };
    let task = tokio::spawn(TableServer::new(store, opts).run(listener, peer, cancel.clone()));
    (url, cancel, task, dir)
}

fn boto3_installed() {
    let ok = std::process::Command::new("python3")
        .args(["-c", "import boto3"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "boto3 is not installed: python3 -m pip install boto3 (./scripts/test installs it; a missing dependency fails its test, it never skips)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boto3_uses_the_table_server_as_it_uses_dynamodb() {
    boto3_installed();
    let (url, cancel, task, _dir) = server().await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/boto3_api.py");
    let child = tokio::process::Command::new("python3")
        .arg(script)
        .env("ENDPOINT", &url)
        .env("KEY_ID", KEY_ID)
        .env("SECRET", SECRET)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let out = tokio::time::timeout(Duration::from_secs(300), child.wait_with_output())
        .await
        .expect("the boto3 script did not finish within 300 s")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the boto3 checks failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("all checks passed"), "{stdout}\n{stderr}");
    cancel.cancel();
    task.await.unwrap().unwrap();
}
