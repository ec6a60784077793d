//! The quorum decision: a check fails only when a quorum of fresh vantage points says so,
//! stale reports and unlisted vantage points do not vote, and regions aggregate their
//! checks (no checks = healthy).

use lifeboat_config::Config;
use lifeboat_core::{HealthStatus, RegionId, VantageId};
use lifeboat_health::{VantageReport, decide};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use HealthStatus::{Healthy as H, Unhealthy as U, Unknown as K};

fn config(extra_regions: &str, failover: &str) -> Config {
    let text = format!(
        r#"
[controller]
api_addr = "127.0.0.1:1"
state_dir = "/nonexistent"
[auth]
token_env = "LIFEBOAT_TEST_TOKEN"
[failover]
report_ttl = "3s"
{failover}
[regions.a]
agent_addr = "127.0.0.1:2"
role = "active"
[regions.b]
agent_addr = "127.0.0.1:3"
role = "standby"
{extra_regions}
[checks.web-a]
type = "http"
region = "a"
url = "http://127.0.0.1:8080/"
[checks.db-a]
type = "tcp"
region = "a"
addr = "127.0.0.1:5432"
[checks.web-b]
type = "http"
region = "b"
url = "http://127.0.0.1:8081/"
[checks.pair]
type = "tcp"
addr = "127.0.0.1:9"
vantage = ["controller", "a"]
"#
    );
    Config::parse(Path::new("test.toml"), &text).expect("valid test config")
}

fn ctl() -> VantageId {
    VantageId::Controller
}
fn agent(r: &str) -> VantageId {
    VantageId::Agent(RegionId::new(r))
}

fn report(vantage: VantageId, checks: &[(&str, HealthStatus)]) -> VantageReport {
    VantageReport {
        vantage,
        checks: checks.iter().map(|(n, s)| ((*n).to_owned(), *s)).collect(),
        details: BTreeMap::new(),
    }
}

const FRESH: Duration = Duration::from_millis(200);
const STALE: Duration = Duration::from_secs(4);

#[test]
fn two_of_three_vantage_points_make_a_check_unhealthy() {
    let cfg = config("", "");
    let d = decide(
        &cfg,
        &[
            (report(ctl(), &[("web-a", U)]), FRESH),
            (report(agent("a"), &[("web-a", H)]), FRESH),
            (report(agent("b"), &[("web-a", U)]), FRESH),
        ],
    );
    let v = &d.checks["web-a"];
    assert_eq!(v.status, U);
    assert_eq!((v.unhealthy_votes, v.healthy_votes, v.quorum), (2, 1, 2));
    assert_eq!(v.vantage[&agent("a")], H);
}

#[test]
fn one_partitioned_observer_cannot_make_a_check_unhealthy() {
    let cfg = config("", "");
    // Agent b is cut off from region a and sees it down; the others see it fine.
    let d = decide(
        &cfg,
        &[
            (report(ctl(), &[("web-a", H), ("db-a", H)]), FRESH),
            (report(agent("a"), &[("web-a", H), ("db-a", H)]), FRESH),
            (report(agent("b"), &[("web-a", U), ("db-a", U)]), FRESH),
        ],
    );
    assert_eq!(d.checks["web-a"].status, H);
    assert_eq!(d.checks["web-a"].unhealthy_votes, 1);
    assert_eq!(d.regions[&RegionId::new("a")], H);

    // Even when it is the only one reporting at all, it stays one vote short.
    let d = decide(&cfg, &[(report(agent("b"), &[("web-a", U)]), FRESH)]);
    assert_eq!(d.checks["web-a"].status, K);
    assert_eq!(d.regions[&RegionId::new("a")], K);
}

#[test]
fn stale_reports_do_not_vote() {
    let cfg = config("", "");
    let d = decide(
        &cfg,
        &[
            (report(ctl(), &[("web-a", U)]), STALE),
            (report(agent("a"), &[("web-a", H)]), STALE),
            (report(agent("b"), &[("web-a", U)]), FRESH),
        ],
    );
    let v = &d.checks["web-a"];
    assert_eq!(v.status, K, "only one fresh vote: {v:?}");
    assert_eq!(v.vantage.keys().collect::<Vec<_>>(), [&agent("b")]);

    // A report exactly at the ttl still counts; a vantage point's youngest report wins.
    let d = decide(
        &cfg,
        &[
            (report(ctl(), &[("web-a", U)]), Duration::from_secs(3)),
            (report(agent("b"), &[("web-a", H)]), Duration::from_secs(2)),
            (report(agent("b"), &[("web-a", U)]), FRESH),
        ],
    );
    assert_eq!(d.checks["web-a"].status, U);
    assert_eq!(d.checks["web-a"].unhealthy_votes, 2);
}

#[test]
fn only_the_checks_vantage_points_vote() {
    let cfg = config("", "");
    // `pair` runs from the controller and agent a: quorum 2 of those 2.
    let d = decide(
        &cfg,
        &[
            (report(ctl(), &[("pair", U)]), FRESH),
            (report(agent("b"), &[("pair", U)]), FRESH),
        ],
    );
    let v = &d.checks["pair"];
    assert_eq!(v.quorum, 2);
    assert_eq!(
        v.unhealthy_votes, 1,
        "agent b is not one of pair's vantage points"
    );
    assert_eq!(v.status, K);
    assert!(!v.vantage.contains_key(&agent("b")));
}

#[test]
fn a_configured_quorum_overrides_the_majority() {
    let cfg = config("", "quorum = 1");
    let d = decide(
        &cfg,
        &[
            (report(ctl(), &[("web-a", H)]), FRESH),
            (report(agent("b"), &[("web-a", U)]), FRESH),
        ],
    );
    assert_eq!(d.checks["web-a"].quorum, 1);
    assert_eq!(d.checks["web-a"].status, U);
}

#[test]
fn regions_aggregate_their_checks() {
    let cfg = config(
        "[regions.c]\nagent_addr = \"127.0.0.1:4\"\nrole = \"standby\"\n",
        "",
    );
    let all = |s: HealthStatus| {
        vec![
            (
                report(ctl(), &[("web-a", s), ("db-a", H), ("web-b", H)]),
                FRESH,
            ),
            (
                report(agent("a"), &[("web-a", s), ("db-a", H), ("web-b", H)]),
                FRESH,
            ),
            (
                report(agent("b"), &[("web-a", s), ("db-a", H), ("web-b", H)]),
                FRESH,
            ),
            (
                report(agent("c"), &[("web-a", s), ("db-a", H), ("web-b", H)]),
                FRESH,
            ),
        ]
    };
    let d = decide(&cfg, &all(H));
    assert_eq!(d.regions[&RegionId::new("a")], H);
    assert_eq!(d.regions[&RegionId::new("b")], H);
    // Region c has no checks: healthy (Route 53: no health check means healthy).
    assert_eq!(d.regions[&RegionId::new("c")], H);

    // One unhealthy check takes its region down, and only its region.
    let d = decide(&cfg, &all(U));
    assert_eq!(d.checks["web-a"].quorum, 3, "majority of 4 vantage points");
    assert_eq!(d.regions[&RegionId::new("a")], U);
    assert_eq!(d.regions[&RegionId::new("b")], H);

    // One undecided check leaves its region undecided.
    let d = decide(&cfg, &all(K));
    assert_eq!(d.checks["web-a"].status, K);
    assert_eq!(d.regions[&RegionId::new("a")], K);

    // No reports at all: every region with checks is unknown, none is unhealthy.
    let d = decide(&cfg, &[]);
    assert_eq!(d.regions[&RegionId::new("a")], K);
    assert_eq!(d.regions[&RegionId::new("c")], H);
}

#[test]
fn decision_and_report_travel_as_json() {
    let cfg = config("", "");
    let r = report(agent("a"), &[("web-a", U)]);
    let json = serde_json::to_string(&r).expect("report to json");
    let back: VantageReport = serde_json::from_str(&json).expect("report from json");
    assert_eq!(back, r);

    let d = decide(&cfg, &[(r, FRESH), (report(ctl(), &[("web-a", U)]), FRESH)]);
    let json = serde_json::to_value(&d).expect("decision to json");
    assert_eq!(json["checks"]["web-a"]["vantage"]["agent:a"], "unhealthy");
    assert_eq!(json["checks"]["web-a"]["status"], "unhealthy");
    let back: lifeboat_health::Decision = serde_json::from_value(json).expect("decision from json");
    assert_eq!(back, d);
}
