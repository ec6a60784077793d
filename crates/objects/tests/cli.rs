//! The entry points the lead wires into `lifeboat objects …` and the agent, driven
//! from a real config file: open from config, backfill, status, retry, alerts.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use lifeboat_core::{JournalKind, RegionId};
use lifeboat_objects::Replicator;
use std::path::Path;
use tokio_util::sync::CancellationToken;

fn config_text(a: &Path, b: &Path, state: &Path, extra: &str) -> String {
    format!(
        r#"
[controller]
api_addr = "127.0.0.1:7700"
state_dir = "{state}"
[auth]
token_env = "LIFEBOAT_TOKEN"
[regions.a]
agent_addr = "127.0.0.1:7701"
role = "active"
[regions.b]
agent_addr = "127.0.0.1:7702"
role = "standby"
[objects]
reconcile_interval = "300ms"
retry_initial = "100ms"
retry_max = "300ms"
{extra}
[objects.stores.a]
type = "local"
path = "{a}"
[objects.stores.b]
type = "local"
path = "{b}"
"#,
        state = state.display(),
        a = a.display(),
        b = b.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_status_and_retry_from_a_config_file() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b, state) = (
        tmp.path().join("a"),
        tmp.path().join("b"),
        tmp.path().join("state"),
    );
    std::fs::create_dir_all(&a).unwrap();
    for i in 0..50 {
        write(&a, &format!("k/{i}"), format!("value {i}").as_bytes());
    }
    let path = tmp.path().join("lifeboat.toml");
    std::fs::write(&path, config_text(&a, &b, &state, "")).unwrap();
    let cfg = lifeboat_config::Config::load(&path).unwrap();
    let region = RegionId::new("a");

    let out = lifeboat_objects::cli::backfill(&cfg, &region, &state, false)
        .await
        .unwrap();
    assert!(out.contains("50/50 copied"), "{out}");
    for i in 0..50 {
        assert_eq!(
            read(&b, &format!("k/{i}")).unwrap(),
            format!("value {i}").as_bytes()
        );
    }
    let json = lifeboat_objects::cli::status(&cfg, &region, &state, true)
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["counts"]["completed_ops"], 50, "{json}");
    assert_eq!(v["counts"]["pending_ops"], 0, "{json}");
    let text = lifeboat_objects::cli::status(&cfg, &region, &state, false)
        .await
        .unwrap();
    assert!(
        text.contains("0 pending") && text.contains("50 completed"),
        "{text}"
    );
    let out = lifeboat_objects::cli::retry(&cfg, &region, &state, None)
        .await
        .unwrap();
    assert!(out.starts_with("0 object operations"), "{out}");

    // A second backfill copies nothing again.
    let out = lifeboat_objects::cli::backfill(&cfg, &region, &state, false)
        .await
        .unwrap();
    assert!(out.contains("(0 bytes replicated by this run)"), "{out}");

    // The backfill refuses to push from a region last known as a standby.
    let state_b = tmp.path().join("state-b");
    let rep = Replicator::open(&cfg, &RegionId::new("b"), &state_b)
        .await
        .unwrap();
    let role = rep.role();
    let cancel = CancellationToken::new();
    let task = tokio::spawn(rep.run(cancel.clone()));
    role.follow(&lifeboat_core::FollowTarget {
        epoch: lifeboat_core::Epoch(1),
        active: region.clone(),
    })
    .await
    .unwrap();
    wait_until(20, "b standby", || {
        futures::executor::block_on(role.status()).role == lifeboat_core::RoleHealth::Standby
    })
    .await;
    cancel.cancel();
    task.await.unwrap().unwrap();
    let err = lifeboat_objects::cli::backfill(&cfg, &RegionId::new("b"), &state_b, false)
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("pushes from the active region only"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_replication_raises_a_latency_alert() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b, state) = (
        tmp.path().join("a"),
        tmp.path().join("b"),
        tmp.path().join("state"),
    );
    std::fs::create_dir_all(&a).unwrap();
    let path = tmp.path().join("lifeboat.toml");
    // Any copy takes longer than a microsecond: every object raises the alert.
    std::fs::write(
        &path,
        config_text(&a, &b, &state, "latency_alert = \"1us\""),
    )
    .unwrap();
    let cfg = lifeboat_config::Config::load(&path).unwrap();
    let rep = Replicator::open(&cfg, &RegionId::new("a"), &state)
        .await
        .unwrap();
    let mut events = rep.events();
    let role = rep.role();
    let metrics = rep.metrics();
    let cancel = CancellationToken::new();
    let task = tokio::spawn(rep.run(cancel.clone()));
    role.activate(&lifeboat_core::Activation {
        epoch: lifeboat_core::Epoch(1),
        region: RegionId::new("a"),
        forced: false,
    })
    .await
    .unwrap();
    // Objects found by the first scan are backfill and raise no latency alert: write
    // only once the region is active.
    wait_until(20, "a active", || {
        futures::executor::block_on(role.status()).role == lifeboat_core::RoleHealth::Primary
    })
    .await;
    // Large enough that copying and verifying it takes milliseconds.
    write(&a, "slow.bin", &vec![1u8; 4 << 20]);
    let ev = tokio::time::timeout(std::time::Duration::from_secs(30), events.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ev.kind, JournalKind::Alert);
    assert!(
        ev.detail.contains("slow.bin") && ev.detail.contains("latency_alert"),
        "{}",
        ev.detail
    );
    let mut page = lifeboat_core::metrics::Page::new();
    metrics.render_prometheus(&mut page);
    let prom = page.render();
    assert!(
        prom.contains("lifeboat_objects_latency_alerts_total{region=\"a\"} 1"),
        "{prom}"
    );
    cancel.cancel();
    task.await.unwrap().unwrap();
}
