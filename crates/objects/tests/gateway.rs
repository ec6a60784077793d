//! The regional S3 gateway, driven by boto3 as an application would: writes through
//! it replicate without any listing, and a region that is not the active one refuses
//! them (docs/architecture.md, rule 2) with nothing of a refused write appearing
//! anywhere.
//!
//! Region a's store is an S3-API server (s3s-fs), which has no change feed, and the
//! reconcile interval is an hour: only the gateway's own record of a write can make
//! it replicate within the test.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use lifeboat_config::objects::RuleConfig;
use lifeboat_core::RoleHealth;
use lifeboat_objects::Store;
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

const BUCKET: &str = "store-a";
const GATEWAY_BUCKET: &str = "objects";

/// Run the boto3 client script; its one JSON line.
fn boto3(endpoint: &str, args: &[&str]) -> Value {
    boto3_as(endpoint, S3_SECRET, args)
}

/// Like [`boto3`], signing with `secret`.
fn boto3_as(endpoint: &str, secret: &str, args: &[&str]) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/gateway_client.py");
    let out = std::process::Command::new("python3")
        .arg(&script)
        .args([endpoint, GATEWAY_BUCKET, S3_KEY_ID, secret])
        .args(args)
        .output()
        .expect("python3 runs (the test command installs boto3)");
    assert!(
        out.status.success(),
        "boto3 client failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "boto3 client printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

async fn wait_role(r: &Running, want: RoleHealth) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let st = r.role.status().await;
        if st.role == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "region {} not {want:?} within 30 s: {}",
            r.region,
            st.detail
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn slow_listing(rules: Vec<RuleConfig>) -> lifeboat_config::objects::ObjectsConfig {
    lifeboat_config::objects::ObjectsConfig {
        reconcile_interval: Duration::from_secs(3600),
        ..config(rules)
    }
}

/// Region a: its store a bucket of an S3-API server (no change feed), listed once an
/// hour, deletes replicated, its gateway in front; region b: the local directory `b`.
async fn s3_region_with_gateway(tmp: &Path, b_dir: &Path) -> (S3Server, Running) {
    let server = S3Server::start(&tmp.join("s3"), BUCKET).await;
    let a_store = Store::open(&s3_config(
        &server.endpoint,
        BUCKET,
        &tmp.join("creds"),
        S3_SECRET,
    ))
    .unwrap();
    let cfg = slow_listing(vec![RuleConfig {
        prefix: String::new(),
        delete_replication: true,
        backfill: true,
    }]);
    let a = Running::start_with_gateway(
        &cfg,
        "a",
        &tmp.join("state-a"),
        stores(vec![("a", a_store), ("b", local_store(b_dir))]),
        GATEWAY_BUCKET,
    )
    .await;
    (server, a)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_the_gateway_replicate_at_once_without_listing() {
    let tmp = tempfile::tempdir().unwrap();
    let b_dir = tmp.path().join("b");
    let (_server, a) = s3_region_with_gateway(tmp.path(), &b_dir).await;
    let gw = a.gateway.clone().unwrap();
    a.activate(1).await;
    wait_role(&a, RoleHealth::Primary).await;

    let put = boto3(&gw, &["put", "docs/report.txt", "quarterly", "text/plain"]);
    assert!(put.get("etag").is_some(), "PUT through the gateway: {put}");
    wait_until(30, "docs/report.txt replicated to b", || {
        read(&b_dir, "docs/report.txt").is_some()
    })
    .await;
    assert_eq!(
        read(&b_dir, "docs/report.txt").as_deref(),
        Some(&b"quarterly"[..])
    );
    assert_eq!(
        a.metrics.reconciles(),
        0,
        "no periodic listing ran: the gateway's record replicated it"
    );

    // Reads and listings through the gateway see the store.
    let got = boto3(&gw, &["get", "docs/report.txt"]);
    assert_eq!(got["body"], "quarterly", "{got}");
    assert_eq!(got["content_type"], "text/plain", "{got}");
    boto3(&gw, &["put", "docs/sub/deep.txt", "deep"]);
    boto3(&gw, &["put", "top.txt", "top"]);
    let listed = boto3(&gw, &["list", "docs/", "/"]);
    assert_eq!(
        listed["keys"],
        serde_json::json!(["docs/report.txt"]),
        "{listed}"
    );
    assert_eq!(
        listed["prefixes"],
        serde_json::json!(["docs/sub/"]),
        "{listed}"
    );
    let all = boto3(&gw, &["list", ""]);
    assert_eq!(
        all["keys"],
        serde_json::json!(["docs/report.txt", "docs/sub/deep.txt", "top.txt"]),
        "{all}"
    );

    // A delete through the gateway replicates too (the rule says so).
    wait_until(30, "top.txt replicated", || {
        read(&b_dir, "top.txt").is_some()
    })
    .await;
    let del = boto3(&gw, &["delete", "top.txt"]);
    assert_eq!(del["deleted"], "top.txt", "{del}");
    wait_until(30, "the delete replicated to b", || {
        read(&b_dir, "top.txt").is_none()
    })
    .await;
    assert_eq!(a.metrics.reconciles(), 0, "still no listing");
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_that_is_not_active_refuses_writes_and_nothing_refused_appears() {
    let tmp = tempfile::tempdir().unwrap();
    let b_dir = tmp.path().join("b");
    let (server, a) = s3_region_with_gateway(tmp.path(), &b_dir).await;
    let gw = a.gateway.clone().unwrap();
    let in_a = |key: &str| server.root.join(BUCKET).join(key).exists();

    // No role yet (an agent that has not heard from the witness): no writes.
    let early = boto3(&gw, &["put", "early.txt", "too soon"]);
    assert_eq!(early["error"], "ServiceUnavailable", "{early}");
    assert_eq!(early["status"], 503, "{early}");
    assert!(
        early["message"]
            .as_str()
            .unwrap()
            .contains("region a has no role yet"),
        "{early}"
    );

    a.activate(1).await;
    wait_role(&a, RoleHealth::Primary).await;
    boto3(&gw, &["put", "kept.txt", "before the fence"]);
    wait_until(30, "kept.txt replicated", || {
        read(&b_dir, "kept.txt").is_some()
    })
    .await;

    a.fence(2).await;
    let put = boto3(&gw, &["put", "refused.txt", "after the fence"]);
    assert_eq!(put["error"], "ServiceUnavailable", "boto3 raised: {put}");
    assert!(
        put["message"]
            .as_str()
            .unwrap()
            .contains("region a is fenced"),
        "the refusal says why: {put}"
    );
    let del = boto3(&gw, &["delete", "kept.txt"]);
    assert_eq!(del["error"], "ServiceUnavailable", "boto3 raised: {del}");

    // Nothing of the refused writes appears anywhere.
    assert!(!in_a("refused.txt"), "the refused PUT reached a's store");
    assert!(in_a("kept.txt"), "the refused DELETE removed a's object");
    assert_eq!(
        read(&b_dir, "kept.txt").as_deref(),
        Some(&b"before the fence"[..]),
        "b's copy is untouched"
    );
    assert!(read(&b_dir, "refused.txt").is_none());
    let db = a.db();
    assert!(
        db.seen_object("refused.txt").unwrap().is_none(),
        "a refused write is not recorded"
    );
    assert_eq!(a.metrics.gateway_refused(), 3);

    // Reads still work in a fenced region (a read replica's part).
    let got = boto3(&gw, &["get", "kept.txt"]);
    assert_eq!(got["body"], "before the fence", "{got}");

    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_secret_is_refused_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let a_dir = tmp.path().join("a");
    let b_dir = tmp.path().join("b");
    let a = Running::start_with_gateway(
        &config(vec![]),
        "a",
        &tmp.path().join("state-a"),
        stores(vec![("a", local_store(&a_dir)), ("b", local_store(&b_dir))]),
        GATEWAY_BUCKET,
    )
    .await;
    let gw = a.gateway.clone().unwrap();
    a.activate(1).await;
    wait_role(&a, RoleHealth::Primary).await;
    let bad = boto3_as(&gw, "not-the-secret", &["put", "x.txt", "nope"]);
    assert_eq!(bad["error"], "SignatureDoesNotMatch", "{bad}");
    assert_eq!(bad["status"], 403, "{bad}");
    assert!(read(&a_dir, "x.txt").is_none(), "nothing written");
    let good = boto3_as(&gw, S3_SECRET, &["list", ""]);
    assert_eq!(
        good["keys"],
        serde_json::json!([]),
        "the right secret lists: {good}"
    );
    a.stop().await;
}

/// A PUT the gateway admitted while active and whose body is still arriving when the
/// fence comes: the fence waits for it (it returns only once no admitted write is in
/// flight), a write that comes after the fence is refused, and the admitted one is
/// recorded as this region's own and kept aside by the fence (docs/architecture.md,
/// rule 4) — never taken for a replica, never lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fence_waits_for_the_write_it_admitted_and_keeps_it_aside() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let tmp = tempfile::tempdir().unwrap();
    let a_dir = tmp.path().join("a");
    let b_dir = tmp.path().join("b");
    let state = tmp.path().join("state-a");
    let a = Running::start_with_gateway(
        &config(vec![]),
        "a",
        &state,
        stores(vec![("a", local_store(&a_dir)), ("b", local_store(&b_dir))]),
        GATEWAY_BUCKET,
    )
    .await;
    let gw = a.gateway.clone().unwrap();
    a.activate(1).await;
    wait_role(&a, RoleHealth::Primary).await;

    // A signed PUT whose body is sent in two halves (UNSIGNED-PAYLOAD, as SDKs stream).
    let addr = gw.trim_start_matches("http://").to_owned();
    let body: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let path = format!("/{GATEWAY_BUCKET}/slow/upload.bin");
    let mut headers = http::HeaderMap::new();
    headers.insert("host", addr.parse().unwrap());
    lifeboat_sigv4::sign_s3(
        "PUT",
        &path,
        &[],
        &mut headers,
        "UNSIGNED-PAYLOAD",
        &lifeboat_sigv4::Credentials {
            access_key_id: S3_KEY_ID,
            secret_access_key: S3_SECRET,
            session_token: None,
        },
        "us-east-1",
        std::time::SystemTime::now(),
    )
    .unwrap();
    let mut head = format!("PUT {path} HTTP/1.1\r\ncontent-length: {}\r\n", body.len());
    for (name, value) in &headers {
        head.push_str(&format!("{name}: {}\r\n", value.to_str().unwrap()));
    }
    head.push_str("\r\n");
    let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(&body[..100_000]).await.unwrap();
    wait_until(30, "the slow PUT admitted", || {
        a.metrics.gateway_inflight() == 1
    })
    .await;

    // The fence: the region is fenced at once, the fence itself waits for the PUT.
    let role = a.role.clone();
    let fence = tokio::spawn(async move { role.fence(lifeboat_core::Epoch(2)).await });
    wait_role(&a, RoleHealth::Fenced).await;
    let refused = boto3(&gw, &["put", "after-the-fence.txt", "no"]);
    assert_eq!(refused["error"], "ServiceUnavailable", "{refused}");
    assert!(
        !fence.is_finished(),
        "the fence returned while a write it admitted was still in flight"
    );

    conn.write_all(&body[100_000..]).await.unwrap();
    let mut answer = vec![0u8; 12];
    conn.read_exact(&mut answer).await.unwrap();
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "the admitted PUT completes: {}",
        String::from_utf8_lossy(&answer)
    );
    tokio::time::timeout(Duration::from_secs(30), fence)
        .await
        .expect("the fence returns once the PUT is done")
        .unwrap()
        .unwrap();

    // Recorded as a's own write, unsent, and kept aside by the fence.
    let db = a.db();
    let row = db.target("slow/upload.bin", "b").unwrap();
    assert!(
        row.as_ref().is_some_and(|r| r.status == "PENDING"),
        "the admitted write waits to be sent, as a's own: {row:?}"
    );
    let index = std::fs::read_to_string(lifeboat_objects::keep_dir(&state).join("index.jsonl"))
        .unwrap_or_default();
    assert!(
        index.contains("slow/upload.bin"),
        "kept aside at the fence: {index:?}"
    );
    assert!(read(&a_dir, "after-the-fence.txt").is_none());
    assert!(
        read(&b_dir, "slow/upload.bin").is_none(),
        "not sent while fenced"
    );
    a.stop().await;
}
