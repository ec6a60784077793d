//! Controller restarts with real processes (rule 8, docs/architecture.md): a restart with its state
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
    // The witness-loss gauges, per region (b may have held its lease on a's promise
    // while the controller was down, so their values are not fixed here).
    let m = d.client().get_text("/metrics").await.unwrap();
    for r in ["a", "b"] {
        for gauge in [
            "lifeboat_region_witness_lost",
            "lifeboat_region_promise_remaining_ms",
        ] {
            let prefix = format!("{gauge}{{region=\"{r}\"}} ");
            assert!(
                m.lines()
                    .filter_map(|l| l.strip_prefix(&prefix))
                    .any(|v| v.parse::<f64>().is_ok()),
                "{prefix}: {m}"
            );
        }
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
    // It does not claim to know the active region: agents' DNS and applications keep
    // their last answer.
    for path in ["/v1/routing", "/v1/discovery"] {
        let r = reqwest::get(format!("http://{}{path}", d.ctrl_addr))
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 503, "{path}");
    }
    // Nor does it refuse a lease (a decision, after which an agent lets its lease run
    // out): it cannot judge yet, and says so.
    let r = reqwest::Client::new()
        .post(format!("http://{}/v1/lease", d.ctrl_addr))
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({"region": "a", "epoch": 0}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 503);
    assert!(r.text().await.unwrap().contains("recovering"));
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

/// The `port = N` of `[database.postgres.regions.<region>]` in the demo's config.
fn pg_port(config: &str, region: &str) -> String {
    let header = format!("[database.postgres.regions.{region}]");
    config
        .lines()
        .skip_while(|l| l.trim() != header)
        .find_map(|l| l.strip_prefix("port = "))
        .unwrap_or_else(|| panic!("no port for {region} in the demo's config"))
        .trim()
        .to_owned()
}

/// One SQL statement through psql against a region's own server, as the demo's
/// superuser; its trimmed output.
fn psql(demo_dir: &std::path::Path, ip: &str, port: &str, sql: &str) -> String {
    let password = std::fs::read_to_string(demo_dir.join("db-password")).unwrap();
    let out = std::process::Command::new("psql")
        .args(["-h", ip, "-p", port, "-U", "postgres", "-d", "postgres"])
        .args(["-At", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .env("PGPASSWORD", password.trim())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "psql {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Kill -9 of the controller right after a switchover's fence acknowledgement, with
/// the standby lagging (its replay held back by `recovery_min_apply_delay`): the
/// restarted controller resumes the switchover from its disk and promotes b only once
/// b reports caught up — no lease-lapse failover — and no acknowledged write is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switchover_survives_a_controller_kill_after_its_fence_and_waits_for_catch_up() {
    let dir = common::test_dir();
    let demo_dir = dir.path().join("demo");
    let mut cmd = std::process::Command::new(bin());
    cmd.args(["demo", "--dir"])
        .arg(&demo_dir)
        .env("LIFEBOAT_LOG", "info");
    let mut demo = Proc::spawn("demo", cmd, &dir.path().join("demo.log"));
    let config_path = demo.wait_line("  config", Duration::from_secs(120)).await;
    let config = std::fs::read_to_string(&config_path).unwrap();
    let value = |key: &str| {
        config
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key} = ")))
            .unwrap()
            .trim_matches('"')
            .to_owned()
    };
    let api = value("api_addr");
    let app_port = value("app_port");
    let client =
        lifeboat_api::ApiClient::new(format!("http://{api}"), None, Duration::from_secs(3));
    let status = || async { client.status().await.ok() };
    let wait = |what: &'static str, secs: u64| {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        move |ok: bool| {
            assert!(
                ok || tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            ok
        }
    };
    let until = wait("a active with b reporting", 60);
    while !until(status().await.is_some_and(|st| {
        st.active.as_ref().map(|r| r.as_str()) == Some("a")
            && st.phase == "steady"
            && st.regions.iter().all(|r| r.last_report_ms.is_some())
    })) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // b's replay is held back 15 s: its data is flushed (synchronous replication
    // acknowledges) but not applied, so b is not caught up.
    let b_port = pg_port(&config, "b");
    psql(
        &demo_dir,
        "127.0.2.1",
        &b_port,
        "ALTER SYSTEM SET recovery_min_apply_delay = '15s'",
    );
    psql(&demo_dir, "127.0.2.1", &b_port, "SELECT pg_reload_conf()");
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut acknowledged = Vec::new();
    for i in 0..5 {
        let id = format!("before-switchover-{i}");
        let r = http
            .post(format!("http://127.0.1.1:{app_port}/api/entries"))
            .json(&serde_json::json!({"id": id, "body": "written on a"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 201, "{}", r.text().await.unwrap());
        acknowledged.push(id);
    }
    let until = wait("b lagging", 20);
    while !until(status().await.is_some_and(|st| {
        st.regions
            .iter()
            .any(|r| r.name.as_str() == "b" && r.roles.iter().any(|x| !x.caught_up))
    })) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let out = std::process::Command::new(bin())
        .args([
            "switchover",
            "--to",
            "b",
            "--no-wait",
            "--config",
            &config_path,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // a acknowledged its fence; the switchover waits for b.
    let until = wait("the fence acknowledgement and the catch-up wait", 20);
    loop {
        let j = client.journal(0).await.unwrap_or_default();
        let fenced = j
            .iter()
            .any(|e| e.kind == JournalKind::Fenced && e.detail.contains("agent confirmed"));
        let waiting = j.iter().any(|e| e.kind == JournalKind::CatchUpWait);
        assert!(!j.iter().any(|e| e.kind == JournalKind::Promoted), "{j:?}");
        if until(fenced && waiting) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // kill -9 of the witness; the demo starts it again as systemd would.
    let pid: i32 = std::fs::read_to_string(demo_dir.join("control").join("controller.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let killed_at = tokio::time::Instant::now();
    let until = wait("the controller started again", 30);
    loop {
        let j = client.journal(0).await.unwrap_or_default();
        let starts = j
            .iter()
            .filter(|e| e.kind == JournalKind::ControllerStarted)
            .count();
        if until(starts == 2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let st = status().await.unwrap();
    assert!(
        st.phase.starts_with("moving (switchover) a -> b"),
        "{}",
        st.phase
    );
    assert_eq!(st.epoch, Epoch(1), "nothing promoted yet");

    // b catches up once its replay delay has passed; only then is it promoted.
    let until = wait("b active at epoch 2", 60);
    while !until(status().await.is_some_and(|st| {
        st.active.as_ref().map(|r| r.as_str()) == Some("b") && st.phase == "steady"
    })) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let j = client.journal(0).await.unwrap();
    let restart = j
        .iter()
        .rposition(|e| e.kind == JournalKind::ControllerStarted)
        .unwrap();
    let after = &j[restart..];
    let promoted = after
        .iter()
        .find(|e| e.kind == JournalKind::Promoted)
        .expect("promoted after the restart");
    assert_eq!(promoted.epoch, Epoch(2));
    assert!(
        !after.iter().any(|e| matches!(
            e.kind,
            JournalKind::Detected | JournalKind::Confirmed | JournalKind::Fenced
        )),
        "the restart resumed the switchover; no lease-lapse failover: {after:?}"
    );
    assert!(
        killed_at.elapsed() > Duration::from_secs(2),
        "promotion waited for the catch-up"
    );
    // Zero loss: every acknowledged write is on b, now the primary.
    let ids = acknowledged
        .iter()
        .map(|i| format!("'{i}'"))
        .collect::<Vec<_>>()
        .join(",");
    let count = psql(
        &demo_dir,
        "127.0.2.1",
        &b_port,
        &format!("SELECT count(*) FROM entries WHERE id IN ({ids})"),
    );
    assert_eq!(count, acknowledged.len().to_string());
    psql(
        &demo_dir,
        "127.0.2.1",
        &b_port,
        "ALTER SYSTEM RESET recovery_min_apply_delay",
    );
    demo.signal(nix::sys::signal::Signal::SIGINT);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while demo.child.try_wait().unwrap().is_none() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
