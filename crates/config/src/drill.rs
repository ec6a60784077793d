//! `[drill]`: how `lifeboat drill` reaches the application and injects faults.
//!
//! The drill is a black-box client: it resolves `app_name` through the deployment's DNS
//! server, writes to the app's HTTP API at a steady rate, and injects faults by running
//! the shell commands configured per region (or, for a partition, by cutting a network
//! namespace's links itself).
//!
//! ```toml
//! [drill]
//! app_name = "app.shop.example."   # resolved through dns_server only
//! app_port = 8080
//! app_path = "/api/entries"        # POST {id, body}; GET {path}/{id}; GET {path} -> {"ids": [...]}
//! dns_server = "127.0.0.1:5353"    # default: controller.dns_addr
//! rate = 20                        # writes per second
//! warmup = "2s"                    # writes before the fault
//! recovery_timeout = "60s"         # give up waiting for recovery after this
//! cooldown = "1s"                  # keep writing this long after recovery
//! request_timeout = "1s"           # a write that takes longer is "unknown"
//! steady_timeout = "120s"          # between runs: wait this long for a steady deployment
//!
//! [drill.regions.a]
//! outage_start = "kill -9 $(cat /run/demo/a/pids)"   # kill the whole region
//! outage_stop = "/run/demo/start-region a"           # bring it back (always run)
//! db_crash = "kill -9 $(head -1 /run/demo/a/pg/postmaster.pid)"
//! db_restore = "..."                                 # optional
//! app_crash = "pkill -9 -f 'sample-app --region a'"
//! app_restore = "..."                                # optional
//! partition_netns = "lb-a"          # the drill sets the namespace's links down and up
//! # or: partition_start = "..."  partition_stop = "..."
//! agent_kill = "kill -9 $(cat /run/demo/agent-a.pid)"      # agent-kill: SIGKILL the agent
//! agent_start = "systemctl start lifeboat-agent"           # … and start it again
//! agent_pause = "kill -STOP $(cat /run/demo/agent-a.pid)"  # agent-pause: SIGSTOP …
//! agent_resume = "kill -CONT $(cat /run/demo/agent-a.pid)" # … and SIGCONT
//!
//! [drill.controller]                 # controller-kill / controller-pause (the witness)
//! kill = "kill -9 $(cat /run/demo/controller.pid)"
//! start = "systemctl start lifeboat-controller"
//! pause = "kill -STOP $(cat /run/demo/controller.pid)"
//! resume = "kill -CONT $(cat /run/demo/controller.pid)"
//! ```
//!
//! Guarantees: every command that injects a lasting fault has its undo configured
//! (`outage_start` needs `outage_stop`, `partition_start` needs `partition_stop`, a kill
//! its start, a pause its resume), the regions exist, there is a DNS server to ask, the
//! databases are sampled at least every 200 ms, and every problem is reported at its key.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use crate::duration;

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DrillConfig {
    /// The application's DNS name, e.g. "app.shop.example.".
    pub app_name: String,
    /// The application's HTTP port (the same in every region).
    pub app_port: u16,
    /// The entries endpoint of the app's function tier.
    #[serde(default = "default_app_path")]
    pub app_path: String,
    /// The DNS server the drill asks (UDP). Default: `controller.dns_addr`.
    #[serde(default)]
    pub dns_server: Option<SocketAddr>,
    /// Writes per second.
    #[serde(default = "default_rate")]
    pub rate: u32,
    #[serde(
        default = "default_warmup",
        deserialize_with = "duration::de",
        serialize_with = "duration::ser"
    )]
    pub warmup: Duration,
    #[serde(
        default = "default_recovery_timeout",
        deserialize_with = "duration::de",
        serialize_with = "duration::ser"
    )]
    pub recovery_timeout: Duration,
    #[serde(
        default = "default_cooldown",
        deserialize_with = "duration::de",
        serialize_with = "duration::ser"
    )]
    pub cooldown: Duration,
    #[serde(
        default = "default_request_timeout",
        deserialize_with = "duration::de",
        serialize_with = "duration::ser"
    )]
    pub request_timeout: Duration,
    #[serde(
        default = "default_steady_timeout",
        deserialize_with = "duration::de",
        serialize_with = "duration::ser"
    )]
    pub steady_timeout: Duration,
    /// How often the drill asks every region's database whether it takes writes (at
    /// most 200 ms: a dual primary shorter than two samples would go unseen).
    #[serde(
        default = "default_sample_interval",
        deserialize_with = "duration::de",
        serialize_with = "duration::ser"
    )]
    pub sample_interval: Duration,
    /// `[drill.regions.NAME]`: the fault commands of each region.
    #[serde(default)]
    pub regions: BTreeMap<String, DrillRegionConfig>,
    /// `[drill.controller]`: the fault commands of the controller (the witness).
    #[serde(default)]
    pub controller: DrillControllerConfig,
}

/// How to kill or freeze the controller, and how to bring it back. Commands run like
/// the regions' (`sh -c`, with the `LIFEBOAT_DRILL_*` variables; with several
/// controllers `LIFEBOAT_DRILL_CONTROLLER` names the leader, the one to hit).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct DrillControllerConfig {
    /// controller-kill: SIGKILL the controller process.
    #[serde(default)]
    pub kill: Option<String>,
    /// controller-kill: start it again (required with `kill`).
    #[serde(default)]
    pub start: Option<String>,
    /// controller-pause: SIGSTOP the controller process.
    #[serde(default)]
    pub pause: Option<String>,
    /// controller-pause: SIGCONT it (required with `pause`).
    #[serde(default)]
    pub resume: Option<String>,
}

/// How to hurt one region, and how to undo it. Commands run with `sh -c`, with
/// `LIFEBOAT_DRILL_REGION`, `LIFEBOAT_DRILL_SCENARIO` and `LIFEBOAT_DRILL_RUN` set.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct DrillRegionConfig {
    /// region-outage: kill everything of the region.
    #[serde(default)]
    pub outage_start: Option<String>,
    /// region-outage: bring the region back (required with `outage_start`).
    #[serde(default)]
    pub outage_stop: Option<String>,
    /// db-crash: kill the region's database server.
    #[serde(default)]
    pub db_crash: Option<String>,
    /// db-crash: optional undo, run after the drill (e.g. restart it).
    #[serde(default)]
    pub db_restore: Option<String>,
    /// app-crash: kill the region's application.
    #[serde(default)]
    pub app_crash: Option<String>,
    #[serde(default)]
    pub app_restore: Option<String>,
    /// partition: commands that cut the region off and join it again …
    #[serde(default)]
    pub partition_start: Option<String>,
    #[serde(default)]
    pub partition_stop: Option<String>,
    /// … or the network namespace the region runs in: the drill sets its links down.
    #[serde(default)]
    pub partition_netns: Option<String>,
    /// agent-kill: SIGKILL the region's agent alone (its database and services stay).
    #[serde(default)]
    pub agent_kill: Option<String>,
    /// agent-kill: start the agent again, with the same command line (required).
    #[serde(default)]
    pub agent_start: Option<String>,
    /// agent-pause: SIGSTOP the region's agent (a frozen VM, a long GC pause).
    #[serde(default)]
    pub agent_pause: Option<String>,
    /// agent-pause: SIGCONT it (required with `agent_pause`).
    #[serde(default)]
    pub agent_resume: Option<String>,
}

fn default_app_path() -> String {
    "/api/entries".to_owned()
}
fn default_rate() -> u32 {
    20
}
fn default_warmup() -> Duration {
    Duration::from_secs(2)
}
fn default_recovery_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_cooldown() -> Duration {
    Duration::from_secs(1)
}
fn default_request_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_steady_timeout() -> Duration {
    Duration::from_secs(120)
}
fn default_sample_interval() -> Duration {
    Duration::from_millis(200)
}

/// The longest `sample_interval` allowed.
pub const MAX_SAMPLE_INTERVAL: Duration = Duration::from_millis(200);

/// A fault command and its required undo: both or neither (`(key, value)` pairs).
fn pair(
    v: &mut crate::Validator<'_>,
    at: &str,
    (start_key, start): (&str, &Option<String>),
    (stop_key, stop): (&str, &Option<String>),
) {
    match (start, stop) {
        (Some(_), None) => v.error(
            &format!("{at}.{start_key}"),
            format!("`{start_key}` needs `{stop_key}`: the drill must undo what it injects"),
        ),
        (None, Some(_)) => v.error(
            &format!("{at}.{stop_key}"),
            format!("`{stop_key}` without `{start_key}`"),
        ),
        _ => {}
    }
}

fn not_empty(v: &mut crate::Validator<'_>, at: &str, keys: &[(&str, &Option<String>)]) {
    for (key, val) in keys {
        if val.as_ref().is_some_and(|c| c.trim().is_empty()) {
            v.error(&format!("{at}.{key}"), format!("`{key}` is empty"));
        }
    }
}

impl DrillConfig {
    /// The two keys every `[drill]` sets; the others at their defaults.
    pub fn new(app_name: impl Into<String>, app_port: u16) -> Self {
        Self {
            app_name: app_name.into(),
            app_port,
            app_path: default_app_path(),
            dns_server: None,
            rate: default_rate(),
            warmup: default_warmup(),
            recovery_timeout: default_recovery_timeout(),
            cooldown: default_cooldown(),
            request_timeout: default_request_timeout(),
            steady_timeout: default_steady_timeout(),
            sample_interval: default_sample_interval(),
            regions: BTreeMap::new(),
            controller: DrillControllerConfig::default(),
        }
    }

    /// The DNS server to ask: `dns_server`, else the controller's DNS address.
    pub fn dns_server(&self, cfg: &crate::Config) -> Option<SocketAddr> {
        self.dns_server.or(cfg.controller.dns_addr)
    }

    /// Every DNS server a client of the zone would ask: `dns_server` alone when set,
    /// else the controller's DNS and every agent serving the zone as a secondary — as
    /// a resolver would, given the zone's NS records, so that a drill sees what clients
    /// see when the witness is lost.
    pub fn dns_servers(&self, cfg: &crate::Config) -> Vec<SocketAddr> {
        if let Some(one) = self.dns_server {
            return vec![one];
        }
        let mut out: Vec<SocketAddr> = cfg.controller.dns_addr.into_iter().collect();
        if let Some(dns) = &cfg.dns {
            for region in cfg.regions.keys() {
                if let Some(addr) = dns.agent_listen(region)
                    && !out.contains(&addr)
                {
                    out.push(addr);
                }
            }
        }
        out
    }

    pub(crate) fn validate(&self, cfg: &crate::Config, v: &mut crate::Validator<'_>) {
        let name = self.app_name.trim_end_matches('.');
        if name.is_empty()
            || name.split('.').any(|l| {
                l.is_empty()
                    || l.len() > 63
                    || !l
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            })
        {
            v.error(
                "drill.app_name",
                format!(
                    "{:?} is not a DNS name (like \"app.shop.example.\")",
                    self.app_name
                ),
            );
        }
        if self.app_port == 0 {
            v.error("drill.app_port", "app_port must be a port (1-65535)");
        }
        if !self.app_path.starts_with('/') {
            v.error("drill.app_path", "app_path must start with '/'");
        }
        if self.dns_server(cfg).is_none() {
            v.error(
                "drill",
                "the drill resolves app_name through lifeboat's DNS: set drill.dns_server or controller.dns_addr",
            );
        }
        if !(1..=1000).contains(&self.rate) {
            v.error(
                "drill.rate",
                "rate must be between 1 and 1000 writes per second",
            );
        }
        for (key, d) in [
            ("recovery_timeout", self.recovery_timeout),
            ("request_timeout", self.request_timeout),
            ("steady_timeout", self.steady_timeout),
        ] {
            if d.is_zero() {
                v.error(
                    &format!("drill.{key}"),
                    format!("{key} must be more than zero"),
                );
            }
        }
        if self.sample_interval.is_zero() || self.sample_interval > MAX_SAMPLE_INTERVAL {
            v.error(
                "drill.sample_interval",
                format!(
                    "sample_interval must be more than zero and at most {MAX_SAMPLE_INTERVAL:?} (the databases are asked at least that often whether they take writes)"
                ),
            );
        }
        let c = &self.controller;
        pair(
            v,
            "drill.controller",
            ("kill", &c.kill),
            ("start", &c.start),
        );
        pair(
            v,
            "drill.controller",
            ("pause", &c.pause),
            ("resume", &c.resume),
        );
        not_empty(
            v,
            "drill.controller",
            &[
                ("kill", &c.kill),
                ("start", &c.start),
                ("pause", &c.pause),
                ("resume", &c.resume),
            ],
        );
        for (region, r) in &self.regions {
            let at = format!("drill.regions.{region}");
            if !cfg.regions.contains_key(region) {
                v.error(&at, cfg.undefined_region(region));
            }
            pair(
                v,
                &at,
                ("outage_start", &r.outage_start),
                ("outage_stop", &r.outage_stop),
            );
            pair(
                v,
                &at,
                ("partition_start", &r.partition_start),
                ("partition_stop", &r.partition_stop),
            );
            pair(
                v,
                &at,
                ("agent_kill", &r.agent_kill),
                ("agent_start", &r.agent_start),
            );
            pair(
                v,
                &at,
                ("agent_pause", &r.agent_pause),
                ("agent_resume", &r.agent_resume),
            );
            not_empty(
                v,
                &at,
                &[
                    ("outage_start", &r.outage_start),
                    ("outage_stop", &r.outage_stop),
                    ("db_crash", &r.db_crash),
                    ("db_restore", &r.db_restore),
                    ("app_crash", &r.app_crash),
                    ("app_restore", &r.app_restore),
                    ("partition_start", &r.partition_start),
                    ("partition_stop", &r.partition_stop),
                    ("agent_kill", &r.agent_kill),
                    ("agent_start", &r.agent_start),
                    ("agent_pause", &r.agent_pause),
                    ("agent_resume", &r.agent_resume),
                ],
            );
            if r.db_restore.is_some() && r.db_crash.is_none() {
                v.error(
                    &format!("{at}.db_restore"),
                    "`db_restore` without `db_crash`",
                );
            }
            if r.app_restore.is_some() && r.app_crash.is_none() {
                v.error(
                    &format!("{at}.app_restore"),
                    "`app_restore` without `app_crash`",
                );
            }
            if let Some(ns) = &r.partition_netns {
                if r.partition_start.is_some() {
                    v.error(
                        &format!("{at}.partition_netns"),
                        "`partition_netns` and `partition_start` exclude each other",
                    );
                }
                if ns.is_empty()
                    || !ns
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                {
                    v.error(
                        &format!("{at}.partition_netns"),
                        format!("{ns:?} is not a network namespace name (letters, digits, '-', '_', '.')"),
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::{Config, ConfigError, ConfigErrors};
    use std::path::Path;
    use std::time::Duration;

    const EXAMPLE: &str = include_str!("../../../examples/two-regions.toml");

    fn parse(extra: &str) -> Result<Config, ConfigErrors> {
        Config::parse(Path::new("test.toml"), &format!("{EXAMPLE}\n{extra}"))
    }

    fn errors(extra: &str) -> Vec<ConfigError> {
        parse(extra).expect_err("config should be rejected").0
    }

    fn line_of(extra: &str, needle: &str) -> usize {
        let text = format!("{EXAMPLE}\n{extra}");
        text.lines()
            .position(|l| l.trim_start().starts_with(needle))
            .expect("needle in text")
            + 1
    }

    const GOOD: &str = r#"
[drill]
app_name = "app.shop.example."
app_port = 8080
rate = 50
warmup = "500ms"

[drill.regions.a]
outage_start = "kill -9 $(cat /tmp/a.pids)"
outage_stop = "start-region a"
partition_netns = "lb-a"

[drill.regions.b]
db_crash = "kill -9 1"
"#;

    #[test]
    fn the_drill_section_written_back_reads_as_the_same_config() {
        crate::tests::assert_round_trip(&format!("{EXAMPLE}\n{GOOD}"));
    }

    #[test]
    fn a_full_section_parses_with_defaults() {
        let cfg = parse(GOOD).expect("valid");
        let d = cfg.drill.as_ref().expect("drill");
        assert_eq!(d.app_path, "/api/entries");
        assert_eq!(d.rate, 50);
        assert_eq!(d.warmup, Duration::from_millis(500));
        assert_eq!(d.recovery_timeout, Duration::from_secs(60));
        // The example's controller serves DNS: that is the default server.
        assert_eq!(d.dns_server(&cfg), cfg.controller.dns_addr);
        assert_eq!(d.regions["a"].partition_netns.as_deref(), Some("lb-a"));
    }

    #[test]
    fn a_fault_without_its_undo_is_located() {
        let extra = GOOD.replace("outage_stop = \"start-region a\"\n", "");
        let errs = errors(&extra);
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].key, "drill.regions.a.outage_start");
        assert_eq!(errs[0].line, line_of(&extra, "outage_start"));
        assert!(errs[0].message.contains("outage_stop"), "{}", errs[0]);
    }

    #[test]
    fn undefined_region_and_bad_values_are_all_reported() {
        let extra = GOOD
            .replace("[drill.regions.b]", "[drill.regions.c]")
            .replace("rate = 50", "rate = 0")
            .replace("app.shop.example.", "app..example")
            .replace("\"lb-a\"", "\"lb a\"");
        let errs = errors(&extra);
        let keys: Vec<&str> = errs.iter().map(|e| e.key.as_str()).collect();
        for want in [
            "drill.regions.c",
            "drill.rate",
            "drill.app_name",
            "drill.regions.a.partition_netns",
        ] {
            assert!(keys.contains(&want), "missing {want} in {errs:?}");
        }
        let c = errs.iter().find(|e| e.key == "drill.regions.c").expect("c");
        assert!(c.message.contains("\"c\" is not defined"), "{c}");
        assert_eq!(c.line, line_of(&extra, "[drill.regions.c]"));
    }

    #[test]
    fn no_dns_server_anywhere_is_an_error() {
        let text = format!("{EXAMPLE}\n{GOOD}").replace("dns_addr = \"127.0.0.1:5353\"\n", "");
        let errs = Config::parse(Path::new("t.toml"), &text)
            .expect_err("rejected")
            .0;
        assert!(
            errs.iter()
                .any(|e| e.key == "drill" && e.message.contains("dns_server")),
            "{errs:?}"
        );
    }

    #[test]
    fn unknown_drill_key_is_rejected_with_its_line() {
        let extra = GOOD.replace(
            "db_crash = \"kill -9 1\"",
            "db_crash = \"kill -9 1\"\ndb_kill = \"x\"",
        );
        let errs = errors(&extra);
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].message.contains("db_kill"), "{}", errs[0]);
        assert_eq!(errs[0].line, line_of(&extra, "db_kill"));
    }

    #[test]
    fn lifeboat_own_faults_need_their_undo_and_sampling_is_bounded() {
        let extra = format!(
            "{GOOD}agent_kill = \"kill -9 1\"\nagent_pause = \"kill -STOP 1\"\nagent_resume = \"kill -CONT 1\"\n\n[drill.controller]\npause = \"kill -STOP 2\"\n"
        )
        .replace("rate = 50", "rate = 50\nsample_interval = \"500ms\"");
        let errs = errors(&extra);
        let keys: Vec<&str> = errs.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "drill.sample_interval",
                "drill.controller.pause",
                "drill.regions.b.agent_kill"
            ],
            "{errs:?}"
        );
        assert!(errs[2].message.contains("agent_start"), "{}", errs[2]);
        assert_eq!(errs[2].line, line_of(&extra, "agent_kill"));
        assert!(errs[1].message.contains("resume"), "{}", errs[1]);
        assert!(errs[0].message.contains("200ms"), "{}", errs[0]);

        let good = format!(
            "{GOOD}agent_kill = \"kill -9 1\"\nagent_start = \"start-agent b\"\n\n[drill.controller]\nkill = \"kill -9 2\"\nstart = \"start-controller\"\n"
        );
        let cfg = parse(&good).expect("valid");
        let d = cfg.drill.as_ref().expect("drill");
        assert_eq!(d.sample_interval, Duration::from_millis(200));
        assert_eq!(d.controller.start.as_deref(), Some("start-controller"));
        assert_eq!(d.regions["b"].agent_start.as_deref(), Some("start-agent b"));
    }
}
