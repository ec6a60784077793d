//! End-to-end failover with real processes: a controller and two agents on
//! loopback, each region running a pilot-light HTTP app.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use lifeboat_core::{Epoch, JournalKind};
use std::time::Duration;

fn first(
    journal: &[lifeboat_core::JournalEntry],
    kind: JournalKind,
    after: u64,
) -> Option<&lifeboat_core::JournalEntry> {
    journal.iter().find(|e| e.kind == kind && e.seq > after)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_app_fails_over_and_the_pilot_light_starts() {
    let mut d = Deployment::new(Options::default());
    d.start_controller().await;
    d.start_agent("a", None).await;
    d.start_agent("b", None).await;
    let st = d.wait_active("a", Duration::from_secs(30)).await;
    d.wait_all_reporting(Duration::from_secs(10)).await;
    assert_eq!(st.epoch, Epoch(1));
    // a's app serves; b's sleeps (pilot light).
    let a_url = d.app_url("a");
    d.wait_for("a's app to answer", Duration::from_secs(20), || async {
        http_get(&a_url).await.filter(|(s, _)| *s == 200)
    })
    .await;
    assert!(
        http_get(&d.app_url("b")).await.is_none(),
        "b's pilot-light app must not run while a is active"
    );
    let before = d.journal().await.last().map_or(0, |e| e.seq);

    d.kill_app("a");

    let st = d.wait_active("b", Duration::from_secs(30)).await;
    assert_eq!(st.epoch, Epoch(2), "one promotion, epoch + 1");
    // b's pilot-light app started on promotion and serves.
    let b_url = d.app_url("b");
    let (_, body) = d
        .wait_for("b's app to answer", Duration::from_secs(20), || async {
            http_get(&b_url).await.filter(|(s, _)| *s == 200)
        })
        .await;
    // b's own page (a directory listing would mean the app serves the wrong thing).
    assert_eq!(body.trim(), "region b", "{body}");
    // DNS switched with the decision.
    assert_eq!(d.dig_app(false), d.region("b").ip);
    assert_eq!(d.dig_app(true), d.region("b").ip);
    // The journal tells the story in order.
    let j = d.journal().await;
    let detected = first(&j, JournalKind::Detected, before).expect("detected");
    let fenced = first(&j, JournalKind::Fenced, before).expect("fenced");
    let promoted = first(&j, JournalKind::Promoted, before).expect("promoted");
    let verified = first(&j, JournalKind::Verified, before).expect("verified");
    assert!(detected.seq < fenced.seq && fenced.seq < promoted.seq && promoted.seq < verified.seq);
    assert!(detected.at_unix_ms <= fenced.at_unix_ms && fenced.at_unix_ms <= promoted.at_unix_ms);
    assert_eq!(promoted.region.as_ref().map(|r| r.as_str()), Some("b"));
    assert_eq!(promoted.epoch, Epoch(2));
    // a was fenced: its agent is no longer active and reports the new epoch.
    let a = d.agent_client("a");
    let ast = d
        .wait_for(
            "a's agent to learn epoch 2",
            Duration::from_secs(10),
            || async { a.agent_status().await.ok().filter(|s| s.epoch == Epoch(2)) },
        )
        .await;
    assert!(!ast.active && ast.fenced);
    // Metrics say the same.
    let m = d.client().get_text("/metrics").await.unwrap();
    assert!(m.contains("lifeboat_epoch 2"), "{m}");
    assert!(m.contains("lifeboat_active_region{region=\"b\"} 1"), "{m}");
    assert!(m.contains("lifeboat_failovers_total 1"), "{m}");
    // An unhealthy app is no lapse: a's agent renewed throughout.
    assert!(m.contains("lifeboat_lease_lapses_total 0"), "{m}");
    // OpenMetrics, from the Prometheus client library (tests/prometheus.rs has a real
    // Prometheus scrape it).
    assert!(m.ends_with("# EOF\n"), "{m}");
    // `lifeboat status` prints the table with b active.
    let out = std::process::Command::new(bin())
        .args(["status", "--config"])
        .arg(&d.config)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("epoch 2") && text.contains("active b"),
        "{text}"
    );
    let out = std::process::Command::new(bin())
        .args(["status", "--json", "--config"])
        .arg(&d.config)
        .output()
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["active"], "b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_killed_mid_failover_resumes_without_losing_its_epoch() {
    // A long hold-down opens a window between detection and promotion.
    let mut d = Deployment::new(Options {
        failover_extra: "hold_down = \"3s\"\n".into(),
        ..Options::default()
    });
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

    d.kill_app("a");
    // Wait for detection, then kill -9 the controller before it promotes.
    d.wait_for("detection", Duration::from_secs(20), || async {
        let j = d.journal().await;
        (j.iter().any(|e| e.kind == JournalKind::Detected)
            && !j.iter().any(|e| e.kind == JournalKind::Promoted))
        .then_some(())
    })
    .await;
    let epoch_before = d.status().await.unwrap().epoch;
    d.proc("controller").kill9();
    assert!(d.status().await.is_none(), "controller is dead");

    d.start_controller().await;
    let st = d
        .wait_for(
            "the restarted controller to answer",
            Duration::from_secs(10),
            || d.status(),
        )
        .await;
    assert!(
        st.epoch >= epoch_before,
        "epoch went backwards across kill -9: {} < {epoch_before}",
        st.epoch
    );
    let st = d.wait_active("b", Duration::from_secs(40)).await;
    assert!(st.epoch > epoch_before);
    let j = d.journal().await;
    assert_eq!(
        j.iter()
            .filter(|e| e.kind == JournalKind::ControllerStarted)
            .count(),
        2
    );
    // Epochs in the journal never decrease.
    assert!(j.windows(2).all(|w| w[0].epoch <= w[1].epoch), "{j:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_refuses_bad_requests_clearly() {
    let mut d = Deployment::new(Options::default());
    d.start_controller().await;
    d.start_agent("a", None).await;
    // A controller with no state grants nothing before every agent has reported.
    d.start_agent("b", None).await;
    let http = reqwest::Client::new();
    let base = format!("http://{}", d.ctrl_addr);
    // No token -> 401, and nothing happens.
    let r = http
        .post(format!("{base}/v1/failover"))
        .json(&serde_json::json!({"to": "b"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("bearer token"));
    // Wrong token -> 401.
    let r = http
        .post(format!("{base}/v1/switchover"))
        .bearer_auth("nope")
        .json(&serde_json::json!({"to": "b"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    // Malformed JSON -> 400 with a message saying where.
    let r = http
        .post(format!("{base}/v1/failover"))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body("{\"to\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("invalid JSON"),
        "{body}"
    );
    // Unknown field and unknown region -> 400.
    let r = http
        .post(format!("{base}/v1/failover"))
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({"to": "b", "forse": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let r = http
        .post(format!("{base}/v1/failover"))
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({"to": "mars"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert!(r.text().await.unwrap().contains("mars"));
    // Agents' reports need the token too.
    let r = http
        .post(format!("{base}/v1/lease"))
        .json(&serde_json::json!({"region": "a", "epoch": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    // Still epoch 1, a active: none of that changed anything.
    let st = d
        .wait_for("status", Duration::from_secs(10), || d.status())
        .await;
    assert_eq!(st.epoch, Epoch(1));

    // The agent refuses a command older than the epoch it has persisted (409), and
    // journals the refusal.
    let a = d.agent_client("a");
    d.wait_for("a's agent at epoch 1", Duration::from_secs(20), || async {
        a.agent_status().await.ok().filter(|s| s.epoch == Epoch(1))
    })
    .await;
    let agent_base = format!("http://{}:{}", d.region("a").ip, d.region("a").agent_port);
    let r = http
        .post(format!("{agent_base}/v1/command"))
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({"epoch": 0, "command": "fence"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 409);
    assert!(r.text().await.unwrap().contains("stale epoch 0"));
    let r = http
        .post(format!("{agent_base}/v1/command"))
        .json(&serde_json::json!({"epoch": 9, "command": "fence"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401, "commands need the token");
    let j: Vec<lifeboat_core::JournalEntry> = a.get("/v1/journal").await.unwrap();
    assert!(j.iter().any(|e| e.kind == JournalKind::StaleEpochRefused));
    let ast = a.agent_status().await.unwrap();
    assert_eq!(
        ast.epoch,
        Epoch(1),
        "a stale command does not move the epoch"
    );
}

#[test]
fn validate_names_line_and_key_of_bad_config() {
    let d = Deployment::new(Options::default());
    let good = std::fs::read_to_string(&d.config).unwrap();
    let run = |text: &str| {
        let path = d.dir.path().join("bad.toml");
        std::fs::write(&path, text).unwrap();
        let out = std::process::Command::new(bin())
            .arg("validate")
            .arg(&path)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (ok, _, stdout) = run(&good);
    assert!(ok, "{stdout}");
    let line_of =
        |text: &str, needle: &str| text.lines().position(|l| l.contains(needle)).unwrap() + 1;

    let bad = good.replace(
        "lease_margin = \"500ms\"",
        "lease_margin = \"500ms\"\nlease_tll = \"1s\"",
    );
    let (ok, err, _) = run(&bad);
    assert!(!ok);
    assert!(
        err.contains(&format!("bad.toml:{}:", line_of(&bad, "lease_tll")))
            && err.contains("lease_tll"),
        "{err}"
    );

    let bad = good.replace("lease_ttl = \"2s\"", "lease_ttl = \"2 fortnights\"");
    let (ok, err, _) = run(&bad);
    assert!(!ok);
    assert!(
        err.contains(&format!("bad.toml:{}:", line_of(&bad, "lease_ttl")))
            && err.contains("failover.lease_ttl"),
        "{err}"
    );

    let bad = good.replace("region = \"b\"", "region = \"c\"");
    let (ok, err, _) = run(&bad);
    assert!(!ok);
    assert!(
        err.contains(&format!("bad.toml:{}:", line_of(&bad, "region = \"c\"")))
            && err.contains("checks.web-b.region"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planned_switchover_and_manual_failover_from_the_cli() {
    let mut d = Deployment::new(Options {
        failover_extra: "mode = \"manual\"\n".into(),
        ..Options::default()
    });
    d.start_controller().await;
    d.start_agent("a", None).await;
    d.start_agent("b", None).await;
    d.wait_active("a", Duration::from_secs(30)).await;
    d.wait_all_reporting(Duration::from_secs(10)).await;
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(bin())
            .args(args)
            .arg("--config")
            .arg(&d.config)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    // Planned switchover: a is fenced first, b promoted once caught up; the CLI waits.
    let (ok, out, err) = cli(&["switchover", "--to", "b"]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("b is active at epoch 2"), "{out}");
    let j = d.journal().await;
    let kinds: Vec<JournalKind> = j.iter().map(|e| e.kind).collect();
    let pos = |k| {
        kinds
            .iter()
            .position(|x| *x == k)
            .unwrap_or_else(|| panic!("{k:?} missing: {kinds:?}"))
    };
    assert!(pos(JournalKind::OperatorRequest) < pos(JournalKind::Fenced));
    assert!(pos(JournalKind::Fenced) < pos(JournalKind::Promoted));
    let fenced = j.iter().find(|e| e.kind == JournalKind::Fenced).unwrap();
    assert!(
        fenced.detail.contains("agent confirmed"),
        "a planned switchover does not wait for the lease: {}",
        fenced.detail
    );
    let a = d.agent_client("a");
    let ast = d
        .wait_for("a fenced at epoch 2", Duration::from_secs(10), || async {
            a.agent_status().await.ok().filter(|s| s.epoch == Epoch(2))
        })
        .await;
    assert!(!ast.active);

    // Asking again for the active region is refused clearly, and nothing changes.
    let (ok, _, err) = cli(&["switchover", "--to", "b"]);
    assert!(!ok);
    assert!(err.contains("already the active region"), "{err}");
    let (ok, _, err) = cli(&["failover", "--to", "nowhere"]);
    assert!(!ok && err.contains("no such region"), "{err}");

    // Manual mode: a's app dying does not move anything by itself...
    let b_url = d.app_url("b");
    d.wait_for("b's app", Duration::from_secs(20), || async {
        http_get(&b_url).await.filter(|(s, _)| *s == 200)
    })
    .await;
    d.wait_active("b", Duration::from_secs(20)).await;
    d.kill_app("b");
    d.wait_for("b detected unhealthy", Duration::from_secs(20), || async {
        d.journal()
            .await
            .iter()
            .any(|e| e.kind == JournalKind::PromotionBlocked && e.detail.contains("manual"))
            .then_some(())
    })
    .await;
    assert_eq!(
        d.status().await.unwrap().epoch,
        Epoch(2),
        "manual mode never fails over by itself"
    );
    // ...an operator does.
    let (ok, out, err) = cli(&["failover", "--to", "a"]);
    assert!(ok, "{out}{err}");
    let st = d.wait_active("a", Duration::from_secs(30)).await;
    assert_eq!(st.epoch, Epoch(3));
}

/// `--log-format json`: a controller's log lines are JSON objects a log shipper can
/// read (time, level, target, message); a `--log` filter that does not parse is refused
/// with an error that names it, instead of silently logging at another level.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_for_log_shippers_and_a_bad_log_filter_is_refused() {
    let d = Deployment::new(Options::default());
    let mut cmd = d.command(None);
    cmd.args(["--log-format", "json", "controller", "--config"])
        .arg(&d.config)
        .env("LIFEBOAT_LOG", "info");
    let log = d.log("controller-json");
    let mut p = Proc::spawn("controller", cmd, &log);
    p.wait_line("listening api ", Duration::from_secs(30)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let event = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| !l.trim().is_empty()) {
            break serde_json::from_str::<serde_json::Value>(line)
                .unwrap_or_else(|e| panic!("a log line that is not JSON ({e}): {line}"));
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the controller logged nothing"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for field in ["timestamp", "level", "target", "message"] {
        assert!(event.get(field).is_some(), "no {field:?} in {event}");
    }
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        assert!(
            serde_json::from_str::<serde_json::Value>(line).is_ok(),
            "every line is JSON: {line}"
        );
    }
    drop(p);

    let out = std::process::Command::new(bin())
        .args(["--log", "lifeboat_agent=loud", "validate"])
        .arg(&d.config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("lifeboat_agent=loud") && err.contains("not a log filter"),
        "{err}"
    );
}

/// An open dashboard does not hold up a stop: the controller's and an agent's live
/// streams (`/v1/events`) end when the process is told to stop, so SIGTERM still
/// stops it in order instead of waiting for the browser to go away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_dashboards_do_not_hold_up_a_stop() {
    let mut d = Deployment::new(Options::default());
    d.start_controller().await;
    d.start_agent("a", None).await;
    d.start_agent("b", None).await;
    d.wait_active("a", Duration::from_secs(30)).await;
    let cfg = lifeboat_config::Config::load(&d.config).unwrap();
    // Two pages left open: the controller's and a's agent's.
    let mut streams = Vec::new();
    for url in [
        format!("http://{}/v1/events", d.ctrl_addr),
        format!("http://{}/v1/events", cfg.regions["a"].agent_addr),
    ] {
        let mut resp = reqwest::Client::new().get(&url).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{url}");
        // Its first message has arrived: the stream is live.
        let first = resp.chunk().await.unwrap().unwrap();
        assert!(
            String::from_utf8_lossy(&first).contains("event: update"),
            "{url}"
        );
        streams.push(resp);
    }
    for name in ["controller", "agent-a"] {
        d.proc(name).signal(nix::sys::signal::Signal::SIGTERM);
    }
    for name in ["controller", "agent-a"] {
        let t0 = tokio::time::Instant::now();
        while d.proc(name).child.try_wait().unwrap().is_none() {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "{name} did not stop within 20 s of SIGTERM with its dashboard open"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // The streams ended with their processes, rather than being cut.
    for mut resp in streams {
        while let Ok(Some(_)) = resp.chunk().await {}
    }
}
