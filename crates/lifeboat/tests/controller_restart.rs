//! Controller restarts with real processes (DESIGN rule 8): a restart with its state
//! keeps the epoch and the active region without an outage; a controller that lost its
//! state adopts the deployment's epoch and active region from the agents and bumps the
//! epoch before its first grant, instead of reactivating the config's initial region.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use lifeboat_core::{Epoch, JournalKind};
use std::time::Duration;

/// Wait until `region` is active at an epoch above `above`, verified, and its agent
/// reports active at that same epoch (it renewed under the new one).
async fn wait_active_above(d: &Deployment, region: &str, above: Epoch) -> Epoch {
    d.wait_for(
        &format!("{region} active at an epoch above {above}"),
        Duration::from_secs(30),
        || async {
            let st = d.status().await?;
            let agent = st.regions.iter().find(|r| r.name.as_str() == region)?;
            (st.active.as_ref().map(|r| r.as_str()) == Some(region)
                && st.phase == "steady"
                && st.epoch > above
                && agent.agent_active
                && agent.agent_epoch == Some(st.epoch))
            .then_some(st.epoch)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_that_lost_its_state_keeps_b_active_at_a_higher_epoch() {
    let mut d = Deployment::new(Options::default());
    d.start_controller().await;
    d.start_agent("a", None).await;
    d.start_agent("b", None).await;
    d.wait_active("a", Duration::from_secs(30)).await;
    d.wait_all_reporting(Duration::from_secs(10)).await;

    // a -> b: a's app dies for good.
    d.kill_app("a");
    let st = d.wait_active("b", Duration::from_secs(40)).await;
    assert_eq!(st.epoch, Epoch(2));
    let b_url = d.app_url("b");
    d.wait_for("b's app", Duration::from_secs(20), || async {
        http_get(&b_url).await.filter(|(s, _)| *s == 200)
    })
    .await;

    // The witness dies and its state directory is lost with it.
    d.proc("controller").kill9();
    d.procs.remove("controller");
    std::fs::remove_dir_all(d.dir.path().join("controller")).unwrap();
    d.start_controller().await;

    // b stays active, at a higher epoch; a stays a standby.
    let epoch = wait_active_above(&d, "b", Epoch(2)).await;
    assert_eq!(epoch, Epoch(3), "adopted 2 from the agents, bumped once");
    let a = d.agent_client("a");
    let ast = d
        .wait_for(
            "a's agent to learn epoch 3",
            Duration::from_secs(10),
            || async { a.agent_status().await.ok().filter(|s| s.epoch == Epoch(3)) },
        )
        .await;
    assert!(!ast.active, "a must not be reactivated");
    let (code, body) = http_get(&b_url).await.expect("b's app serves");
    assert_eq!(code, 200, "{body}");
    assert_eq!(d.dig_app(false), d.region("b").ip, "DNS still answers b");

    // The new journal says what was adopted from whom, and nothing was promoted.
    let j = d.journal().await;
    let started = j
        .iter()
        .find(|e| e.kind == JournalKind::ControllerStarted)
        .expect("controller_started");
    assert!(
        started.detail.contains("no state on disk: recovering"),
        "{}",
        started.detail
    );
    let info: Vec<&str> = j
        .iter()
        .filter(|e| e.kind == JournalKind::Info)
        .map(|e| e.detail.as_str())
        .collect();
    assert!(
        info.iter().any(|d| d.contains("adopting epoch 2")),
        "{info:?}"
    );
    assert!(
        info.iter()
            .any(|d| d.contains("b reports active at epoch 2")),
        "{info:?}"
    );
    assert!(
        !j.iter()
            .any(|e| matches!(e.kind, JournalKind::Promoted | JournalKind::Detected)),
        "no failover after the restart: {j:?}"
    );
    let st = d.status().await.unwrap();
    assert_eq!(st.failovers, 0, "the counter was lost with the state");
    // Nobody holds a lease on promises, nobody promised: the gauges say so.
    let m = d.client().get_text("/metrics").await.unwrap();
    for r in ["a", "b"] {
        assert!(
            m.contains(&format!("lifeboat_region_witness_lost{{region=\"{r}\"}} 0")),
            "{m}"
        );
        assert!(
            m.contains(&format!(
                "lifeboat_region_promise_remaining_ms{{region=\"{r}\"}} 0"
            )),
            "{m}"
        );
    }
    assert!(m.contains("lifeboat_epoch 3"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_with_its_state_keeps_the_epoch_and_a_serving() {
    let mut d = Deployment::new(Options::default());
    d.start_controller().await;
    d.start_agent("a", None).await;
    d.start_agent("b", None).await;
    d.wait_active("a", Duration::from_secs(30)).await;
    d.wait_all_reporting(Duration::from_secs(10)).await;
    let a_url = d.app_url("a");
    d.wait_for("a's app", Duration::from_secs(20), || async {
        http_get(&a_url).await.filter(|(s, _)| *s == 200)
    })
    .await;

    d.proc("controller").kill9();
    d.procs.remove("controller");
    d.start_controller().await;

    // Same epoch, same active region, no failover; a renewed with the new controller.
    let st = d.wait_active("a", Duration::from_secs(20)).await;
    assert_eq!(st.epoch, Epoch(1), "state current: no bump");
    let a = d.agent_client("a");
    let ast = a.agent_status().await.unwrap();
    assert!(ast.active && ast.epoch == Epoch(1), "{ast:?}");
    let j = d.journal().await;
    assert!(
        j.iter()
            .any(|e| e.kind == JournalKind::Info && e.detail.contains("state on disk is current")),
        "{j:?}"
    );
    assert!(
        !j.iter().any(|e| matches!(
            e.kind,
            JournalKind::Promoted | JournalKind::Detected | JournalKind::LeaseExpired
        )),
        "{j:?}"
    );
    // a never fenced itself: its agent's journal has no lapse.
    let aj: Vec<lifeboat_core::JournalEntry> = a.get("/v1/journal").await.unwrap();
    assert!(
        !aj.iter().any(|e| e.kind == JournalKind::LeaseExpired),
        "a's lease lapsed across the restart: {aj:?}"
    );
}

/// `lifeboat controller --no-wait-for-agents`, as the harness starts the controller.
async fn start_controller_not_waiting(d: &mut Deployment) {
    let mut cmd = d.command(None);
    cmd.args(["controller", "--no-wait-for-agents", "--config"])
        .arg(&d.config)
        .env("LIFEBOAT_LOG", "info");
    let mut p = Proc::spawn("controller", cmd, &d.log("controller"));
    p.wait_line("listening api ", Duration::from_secs(30)).await;
    d.dns_addr = Some(p.wait_line("listening dns ", Duration::from_secs(5)).await);
    d.procs.insert("controller".into(), p);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stateless_controller_grants_nothing_until_every_agent_reported_unless_told() {
    let mut d = Deployment::new(Options::default());
    d.start_controller().await;
    d.start_agent("a", None).await;
    // b's agent never comes: the controller says what it waits for, and grants nothing.
    let st = d
        .wait_for(
            "the recovering condition",
            Duration::from_secs(10),
            || async {
                let st = d.status().await?;
                st.regions
                    .iter()
                    .any(|r| r.name.as_str() == "a" && r.last_report_ms.is_some())
                    .then_some(st)
            },
        )
        .await;
    assert_eq!(st.phase, "recovering: waiting for reports from b");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let st = d.status().await.unwrap();
    assert_eq!(st.phase, "recovering: waiting for reports from b");
    assert!(st.lease.is_none() && st.active.is_none(), "{st:?}");
    let a = d.agent_client("a");
    assert!(!a.agent_status().await.unwrap().active);
    assert!(
        http_get(&d.app_url("a")).await.is_none(),
        "a's app sleeps until a lease is granted"
    );

    // The operator knows b is gone: the config's initial region starts at once.
    d.proc("controller").kill9();
    d.procs.remove("controller");
    start_controller_not_waiting(&mut d).await;
    let st = d
        .wait_for("a active", Duration::from_secs(30), || async {
            let st = d.status().await?;
            let ra = st.regions.iter().find(|r| r.name.as_str() == "a")?;
            (st.active.as_ref().map(|r| r.as_str()) == Some("a") && ra.agent_active).then_some(st)
        })
        .await;
    assert_eq!(st.epoch, Epoch(1));
    let j = d.journal().await;
    assert!(
        j.iter().any(|e| e.kind == JournalKind::ControllerStarted
            && e.detail.contains("--no-wait-for-agents")),
        "{j:?}"
    );
}
