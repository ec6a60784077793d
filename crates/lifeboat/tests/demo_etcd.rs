//! `lifeboat demo --controllers 3`: a three-member etcd cluster under the demo's
//! directory and three controllers, as a newcomer would run it; kill -9 and SIGSTOP
//! of the leader, with the drill's client writing, are not an outage. (Needs the etcd feature, etcd-server and PostgreSQL.)
#![cfg(feature = "etcd")]
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::process::Command;
use std::time::Duration;

fn lifeboat_status(config: &str) -> String {
    let out = Command::new(bin())
        .args(["status", "--config", config])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// How many takeovers `lifeboat journal` shows.
fn takeovers(config: &str) -> usize {
    let out = Command::new(bin())
        .args(["journal", "--config", config])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(" leads (term "))
        .count()
}

/// The leader named on `lifeboat status`'s leader line.
fn leader_of(status: &str) -> Option<String> {
    let line = status.lines().find(|l| l.starts_with("leader "))?;
    let name = line.split_whitespace().nth(1)?;
    (name != "nobody").then(|| name.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_with_three_controllers_shows_its_leader_and_outlives_its_kill() {
    if common::etcd::etcd_bin().is_none() {
        panic!(
            "etcd is not installed: apt-get install -y etcd-server (./scripts/test installs it; a missing dependency fails its test, it never skips)"
        );
    }
    let dir = common::test_dir();
    let demo_dir = dir.path().join("demo");
    let mut cmd = Command::new(bin());
    cmd.args(["demo", "--controllers", "3", "--dir"])
        .arg(&demo_dir)
        .env("LIFEBOAT_LOG", "info");
    let mut demo = Proc::spawn("demo", cmd, &dir.path().join("demo.log"));
    let config = demo.wait_line("  config", Duration::from_secs(180)).await;
    // The banner names the leader among the three.
    let banner = demo.lines.lock().unwrap().join("\n");
    let leads: Vec<&str> = banner
        .lines()
        .filter(|l| l.trim_start().starts_with("controller") && l.contains("(leads)"))
        .collect();
    assert_eq!(leads.len(), 1, "one leader in the banner:\n{banner}");
    assert_eq!(
        banner
            .lines()
            .filter(|l| l.trim_start().starts_with("controller"))
            .count(),
        3,
        "{banner}"
    );

    let st = lifeboat_status(&config);
    let old = leader_of(&st).unwrap_or_else(|| panic!("status names a leader:\n{st}"));
    assert!(st.contains("epoch 1  active a  phase steady"), "{st}");
    assert!(st.contains("raft leader"), "etcd's health is shown:\n{st}");

    // Every controller answers the zone, and its NS records list all three: ask each
    // member's DNS (a follower answers from the replicated state).
    let cfg = lifeboat_config::Config::load(std::path::Path::new(&config)).unwrap();
    for m in &cfg.controller.members {
        let dns = m.dns_addr.unwrap();
        let out = Command::new("dig")
            .arg(format!("@{}", dns.ip()))
            .args(["-p", &dns.port().to_string()])
            .args(["demo.lifeboat.", "NS", "+short", "+time=2", "+tries=2"])
            .output()
            .expect("dig (scripts/test installs dnsutils)");
        let mut ns: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect();
        ns.sort();
        assert_eq!(
            ns.iter()
                .filter(|n| n.starts_with("ns-c"))
                .cloned()
                .collect::<Vec<_>>(),
            [
                "ns-c1.demo.lifeboat.",
                "ns-c2.demo.lifeboat.",
                "ns-c3.demo.lifeboat."
            ],
            "{}'s NS records: {ns:?}",
            m.name
        );
    }

    let before = takeovers(&config);
    let pid: i32 = std::fs::read_to_string(demo_dir.join(format!("control/controller-{old}.pid")))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    // Another controller leads, or the killed one, restarted by the demo's
    // supervisor a second later, won the election again: a new term either way.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let st = loop {
        let st = lifeboat_status(&config);
        if leader_of(&st).is_some() && st.contains("phase steady") && takeovers(&config) > before {
            break st;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no new leader after {old}'s kill:\n{st}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        st.contains("epoch 1  active a"),
        "a leader change is no failover:\n{st}"
    );

    // The drill kills, then freezes, whichever controller leads at that moment, while
    // its client writes through the demo's DNS and every database is sampled: a
    // leader change costs no application write. The 6 s freeze outlasts the etcd
    // lease (3 s), so another controller takes over while the old leader is stopped,
    // and the old one, resumed, must not act on its lapsed term.
    let results: Vec<_> = ["controller-kill", "controller-pause"]
        .into_iter()
        .map(|scenario| {
            let before = takeovers(&config);
            let (text, r) = drill_report(
                dir.path(),
                &config,
                &["--scenario", scenario, "--fault-seconds", "6"],
            );
            std::panic::catch_unwind(|| {
                assert_witness_fault_was_no_outage(&text, &r, scenario, 6_000);
                let hit = r["runs"][0]["fault_target"].as_str().unwrap_or_default();
                assert!(
                    hit.starts_with("controller c") && hit.ends_with("(leader)"),
                    "{scenario} hit the leader, and the report names it: {hit:?}\n{text}"
                );
                assert!(
                    takeovers(&config) > before,
                    "{scenario} of the leader ({hit}): a new term began\n{text}"
                );
            })
        })
        .collect();
    if results.iter().any(Result::is_err) {
        eprintln!("the demo's logs:{}", demo_log_tails(&demo_dir));
    }
    stop_demo(demo, &demo_dir).await;
    for result in results {
        if let Err(p) = result {
            std::panic::resume_unwind(p);
        }
    }
}
