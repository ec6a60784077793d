//! Losing the witness is not an outage (DESIGN rule 7): with the controller killed or
//! frozen, the active region keeps serving on promises from the other region's agent,
//! nothing fails over, and the controller finds the same epoch and active region when
//! it comes back. Real processes, real signals.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use lifeboat_core::JournalKind;
use nix::sys::signal::Signal;
use std::time::Duration;

/// What a client of region a saw while the witness was gone.
#[derive(Debug, Default)]
struct Served {
    samples: usize,
    failures: usize,
    longest_gap: Duration,
    /// a's agent said it held the lease on promises at least once.
    saw_witness_lost: bool,
    /// b's agent reported a promise to a at least once.
    saw_promise: bool,
    /// a's agent reported itself not active at some sample.
    saw_inactive: bool,
}

/// Ask a's app every 100 ms for `span`, and both agents how they hold up.
async fn watch_a(d: &Deployment, span: Duration) -> Served {
    let url = d.app_url("a");
    let a = d.agent_client("a");
    let b = d.agent_client("b");
    let mut out = Served::default();
    let start = tokio::time::Instant::now();
    let mut last_ok = start;
    while start.elapsed() < span {
        let t = tokio::time::Instant::now();
        out.samples += 1;
        match http_get(&url).await {
            Some((200, _)) => {
                out.longest_gap = out.longest_gap.max(t.duration_since(last_ok));
                last_ok = t;
            }
            _ => out.failures += 1,
        }
        if let Ok(s) = a.agent_status().await {
            out.saw_witness_lost |= s.witness_lost;
            out.saw_inactive |= !s.active;
        }
        if let Ok(s) = b.agent_status().await {
            out.saw_promise |= s.promised.as_ref().is_some_and(|p| p.to.as_str() == "a");
        }
        tokio::time::sleep_until(t + Duration::from_millis(100)).await;
    }
    let end = tokio::time::Instant::now();
    out.longest_gap = out.longest_gap.max(end.duration_since(last_ok));
    out
}

async fn deployment_with_a_serving() -> (Deployment, lifeboat_core::Epoch) {
    let mut d = Deployment::new(Options::default());
    d.start_controller().await;
    d.start_agent("a", None).await;
    d.start_agent("b", None).await;
    let st = d.wait_active("a", Duration::from_secs(30)).await;
    d.wait_all_reporting(Duration::from_secs(10)).await;
    let url = d.app_url("a");
    d.wait_for("a's app to answer", Duration::from_secs(20), || async {
        http_get(&url).await.filter(|(s, _)| *s == 200)
    })
    .await;
    (d, st.epoch)
}

/// After the witness came back: same epoch, same active region, no promotion, and a
/// never fenced itself meanwhile.
async fn nothing_moved(d: &Deployment, epoch: lifeboat_core::Epoch, served: &Served) {
    assert!(
        served.saw_witness_lost,
        "a's agent never reported holding its lease on promises: {served:?}"
    );
    assert!(served.saw_promise, "b never reported its promise to a: {served:?}");
    assert!(!served.saw_inactive, "a's agent went inactive: {served:?}");
    assert!(
        served.longest_gap <= Duration::from_secs(1),
        "a's app stopped answering for {:?} ({} of {} samples failed)",
        served.longest_gap,
        served.failures,
        served.samples
    );
    let st = d.wait_active("a", Duration::from_secs(20)).await;
    assert_eq!(st.epoch, epoch, "the controller came back to the same epoch");
    let j = d.journal().await;
    assert!(
        !j.iter()
            .any(|e| e.kind == JournalKind::Promoted && e.epoch > epoch),
        "nothing was promoted: {j:#?}"
    );
    let aj = d.agent_client("a").journal(0).await.unwrap();
    assert!(
        !aj.iter()
            .any(|e| e.kind == JournalKind::LeaseExpired && e.epoch == epoch),
        "a's lease never lapsed: {aj:#?}"
    );
    assert!(
        aj.iter()
            .any(|e| e.kind == JournalKind::Alert && e.detail.contains("witness unreachable")),
        "a journaled entering witness-loss mode: {aj:#?}"
    );
    d.wait_for(
        "a to leave witness-loss mode",
        Duration::from_secs(10),
        || async {
            let s = d.agent_client("a").agent_status().await.ok()?;
            (!s.witness_lost && s.active).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_controller_is_not_an_outage() {
    let (mut d, epoch) = deployment_with_a_serving().await;
    d.proc("controller").kill9();
    let served = watch_a(&d, Duration::from_secs(60)).await;
    d.start_controller().await;
    nothing_moved(&d, epoch, &served).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_controller_is_not_an_outage() {
    let (mut d, epoch) = deployment_with_a_serving().await;
    d.proc("controller").signal(Signal::SIGSTOP);
    let served = watch_a(&d, Duration::from_secs(45)).await;
    d.proc("controller").signal(Signal::SIGCONT);
    nothing_moved(&d, epoch, &served).await;
}

/// Without b's promise (its agent is gone too) a must not keep its lease: it fences
/// by its deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_every_promise_the_active_region_fences() {
    let (mut d, epoch) = deployment_with_a_serving().await;
    d.proc("agent-b").kill9();
    d.proc("controller").kill9();
    let a = d.agent_client("a");
    let st = d
        .wait_for("a to fence itself", Duration::from_secs(10), || async {
            a.agent_status().await.ok().filter(|s| !s.active)
        })
        .await;
    assert_eq!(st.epoch, epoch);
    // The lapse is journaled once the fence is done (the fence never waits for it).
    let aj = d
        .wait_for("a to journal its lapse", Duration::from_secs(10), || async {
            let aj = a.journal(0).await.ok()?;
            aj.iter()
                .any(|e| e.kind == JournalKind::LeaseExpired)
                .then_some(aj)
        })
        .await;
    assert!(
        aj.iter().any(|e| e.kind == JournalKind::Alert
            && e.detail.contains("not every region promised")),
        "{aj:#?}"
    );
    let url = d.app_url("a");
    d.wait_for("a's app to stop", Duration::from_secs(10), || async {
        http_get(&url).await.is_none().then_some(())
    })
    .await;
}
