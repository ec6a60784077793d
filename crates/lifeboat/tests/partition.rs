//! Network partition with a real network namespace: region a's agent and app live
//! in a namespace of their own; cutting its link must make a fence itself before the
//! controller promotes b (docs/architecture.md, rules 2 and 3: never two writable regions).
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use lifeboat_core::{Epoch, JournalEntry, JournalKind};
use std::collections::BTreeMap;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_region_fences_itself_before_the_promotion() {
    assert!(
        is_root(),
        "this test creates network namespaces: run the test command as root (CI does)"
    );
    // Declared first so it is dropped last, after the processes inside it.
    let ns = NetNs::create();
    // b lives on the host side of a's link, not on a loopback address: inside the
    // namespace 127.0.2.1 is the namespace's own loopback, so a's agent (a vantage
    // point) would vote b's app unhealthy as soon as the link healed and, with one
    // stale report of b's, fail b back over to a (a CI run did exactly that).
    let mut fixed = BTreeMap::new();
    fixed.insert("a".to_owned(), (7701, 8080));
    let mut d = Deployment::new(Options {
        ctrl_ip: ns.host_ip.clone(),
        regions: vec![
            ("a".into(), ns.ns_ip.clone()),
            ("b".into(), ns.host_ip.clone()),
        ],
        fixed_ports: fixed,
        ..Options::default()
    });
    d.start_controller().await;
    d.start_agent("a", Some(&ns.name)).await;
    d.start_agent("b", None).await;
    d.wait_active("a", Duration::from_secs(30)).await;
    d.wait_all_reporting(Duration::from_secs(10)).await;
    let before = d.journal().await.last().map_or(0, |e| e.seq);

    // Cut region a off: its agent can no longer reach the controller, nor anyone a.
    ns.set_link(false);
    let cut_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;

    let st = d.wait_active("b", Duration::from_secs(30)).await;
    assert_eq!(st.epoch, Epoch(2));
    let j = d.journal().await;
    let promoted = j
        .iter()
        .find(|e| e.seq > before && e.kind == JournalKind::Promoted)
        .expect("promoted")
        .clone();
    assert_eq!(promoted.region.as_ref().map(|r| r.as_str()), Some("b"));

    // Heal the partition and read a's own journal: when did it fence itself?
    ns.set_link(true);
    let a = d.agent_client("a");
    let aj: Vec<JournalEntry> = d
        .wait_for(
            "a's agent to answer again",
            Duration::from_secs(20),
            || async { a.get::<Vec<JournalEntry>>("/v1/journal").await.ok() },
        )
        .await;
    let fenced = aj
        .iter()
        .find(|e| {
            e.kind == JournalKind::Fenced
                && e.at_unix_ms >= cut_at
                && e.detail.contains("lease lapsed")
        })
        .unwrap_or_else(|| panic!("a never fenced itself on lease lapse: {aj:#?}"));
    assert!(
        fenced.at_unix_ms < promoted.at_unix_ms,
        "two writable regions: a fenced at {} but b was promoted at {}",
        fenced.at_unix_ms,
        promoted.at_unix_ms
    );
    // The margin the safety rule promises: a fenced at least lease_margin before.
    assert!(
        promoted.at_unix_ms - fenced.at_unix_ms >= 400,
        "fenced {} promoted {}",
        fenced.at_unix_ms,
        promoted.at_unix_ms
    );

    // Back on the network, a learns epoch 2 and stays a fenced standby: no failback.
    // On learning the epoch it fences once more (its roles read "unfenced" while that
    // fence runs: a CI run read the status in that instant), so wait for the fence to
    // land, and a must never report itself active meanwhile.
    let ast = d
        .wait_for(
            "a to learn epoch 2 and be fenced",
            Duration::from_secs(20),
            || async {
                let s = a.agent_status().await.ok()?;
                assert!(!s.active, "a active again after the partition: {s:?}");
                (s.epoch == Epoch(2) && s.fenced).then_some(s)
            },
        )
        .await;
    assert!(!ast.active && ast.fenced);
    let a_url = d.app_url("a");
    d.wait_for(
        "a's pilot-light app to be stopped",
        Duration::from_secs(10),
        || async { http_get(&a_url).await.is_none().then_some(()) },
    )
    .await;
    let st = d.status().await.unwrap();
    assert_eq!(st.active.as_ref().map(|r| r.as_str()), Some("b"));
}
