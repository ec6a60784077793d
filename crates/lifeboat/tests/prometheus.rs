//! A real Prometheus server scrapes a running deployment and evaluates
//! examples/prometheus/alerts.yml on what it scraped: the pages are ingested (OpenMetrics
//! from the Prometheus client library), the counters keep their documented `_total`
//! names, and a lease lapse raises LifeboatLeaseLapsed. scripts/test installs
//! Prometheus (Debian package prometheus).
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use lifeboat_config::Config;
use nix::sys::signal::Signal;
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// The values of an instant query, by the given label.
async fn query(prom: &str, q: &str) -> Vec<(String, f64)> {
    let url = format!("http://{prom}/api/v1/query");
    let Ok(resp) = reqwest::Client::new()
        .get(url)
        .query(&[("query", q)])
        .timeout(Duration::from_secs(5))
        .send()
        .await
    else {
        return Vec::new();
    };
    let Ok(v) = resp.json::<Value>().await else {
        return Vec::new();
    };
    v["data"]["result"]
        .as_array()
        .map(|rs| {
            rs.iter()
                .map(|r| {
                    (
                        r["metric"].to_string(),
                        r["value"][1]
                            .as_str()
                            .and_then(|s| s.parse().ok())
                            .unwrap_or(f64::NAN),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// SIGSTOP / SIGCONT of a process by its pid file.
fn signal_pidfile(path: &Path, sig: Signal) {
    let pid: i32 = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .parse()
        .unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig).unwrap();
}

/// Thaws a's agent and guard however the test ends.
struct Thaw(Vec<std::path::PathBuf>, i32);
impl Drop for Thaw {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.1), Signal::SIGCONT);
        for p in &self.0 {
            if let Ok(pid) = std::fs::read_to_string(p)
                && let Ok(pid) = pid.trim().parse::<i32>()
            {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGCONT);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_every_page_and_a_lease_lapse_raises_its_alert() {
    let mut d = Deployment::new(Options::default());
    d.start_controller().await;
    d.start_agent("a", None).await;
    d.start_agent("b", None).await;
    d.wait_active("a", Duration::from_secs(30)).await;
    d.wait_all_reporting(Duration::from_secs(10)).await;
    let cfg = Config::load(&d.config).unwrap();

    let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/prometheus/alerts.yml");
    let agents: Vec<String> = ["a", "b"]
        .iter()
        .map(|r| format!("\"{}\"", cfg.regions[*r].agent_addr))
        .collect();
    let prom_port = free_port("127.0.0.1");
    let prom_cfg = d.dir.path().join("prometheus.yml");
    std::fs::write(
        &prom_cfg,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {rules}\nscrape_configs:\n  - job_name: lifeboat-controller\n    static_configs:\n      - targets: [\"{ctrl}\"]\n  - job_name: lifeboat-agent\n    static_configs:\n      - targets: [{agents}]\n",
            rules = rules.display(),
            ctrl = d.ctrl_addr,
            agents = agents.join(", "),
        ),
    )
    .unwrap();
    let mut cmd = Command::new("prometheus");
    cmd.arg(format!("--config.file={}", prom_cfg.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            d.dir.path().join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"));
    let _prom = Proc::spawn("prometheus", cmd, &d.log("prometheus"));
    let prom = format!("127.0.0.1:{prom_port}");

    // Every page is scraped and ingested: the controller's and both agents'.
    d.wait_for("three targets up", Duration::from_secs(60), || async {
        let up = query(&prom, "up").await;
        (up.len() == 3 && up.iter().all(|(_, v)| *v == 1.0)).then_some(())
    })
    .await;
    d.wait_for(
        "the controller's figures in Prometheus",
        Duration::from_secs(20),
        || async {
            let epoch = query(&prom, "lifeboat_epoch").await;
            let active = query(&prom, "lifeboat_active_region == 1").await;
            let lapses = query(&prom, "lifeboat_lease_lapses_total").await;
            let checks = query(&prom, "lifeboat_check_health").await;
            (epoch.first().map(|(_, v)| *v) == Some(1.0)
                && active.len() == 1
                && active[0].0.contains("\"region\":\"a\"")
                && lapses.first().map(|(_, v)| *v) == Some(0.0)
                && !checks.is_empty())
            .then_some(())
        },
    )
    .await;
    let agent_epochs = query(&prom, "lifeboat_agent_epoch").await;
    assert_eq!(agent_epochs.len(), 2, "{agent_epochs:?}");
    assert!(
        query(&prom, "ALERTS{alertname=\"LifeboatLeaseLapsed\"}")
            .await
            .is_empty()
    );

    // a's agent and its guard frozen: a's app still serves (so health stays good), and
    // only the lapse of a's lease tells the controller (nobody fences a here: the test
    // has no database, and it thaws both at the end).
    let state = cfg.agent_state_dir(&lifeboat_core::RegionId::new("a"));
    let guard_pid = state.join("guard.pid");
    let agent_pid = d.proc("agent-a").pid();
    let _thaw = Thaw(vec![guard_pid.clone()], agent_pid);
    signal_pidfile(&guard_pid, Signal::SIGSTOP);
    d.proc("agent-a").signal(Signal::SIGSTOP);
    d.wait_active("b", Duration::from_secs(30)).await;
    d.wait_for(
        "LifeboatLeaseLapsed firing in Prometheus",
        Duration::from_secs(30),
        || async {
            let firing = query(
                &prom,
                "ALERTS{alertname=\"LifeboatLeaseLapsed\",alertstate=\"firing\"}",
            )
            .await;
            (!firing.is_empty()).then_some(firing)
        },
    )
    .await;
    let lapses = query(&prom, "lifeboat_lease_lapses_total").await;
    assert_eq!(lapses.first().map(|(_, v)| *v), Some(1.0), "{lapses:?}");
    let failovers = query(&prom, "lifeboat_failovers_total").await;
    assert_eq!(
        failovers.first().map(|(_, v)| *v),
        Some(1.0),
        "{failovers:?}"
    );
}
