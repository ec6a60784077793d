//! The deployment's configuration: one TOML file that every process reads, each
//! running its own part of it.
//!
//! Guarantees: unknown keys are errors; every error names the file, the line, the
//! column and the key; durations are human-readable ("500ms", "5s"); secrets are
//! never in the text (`*_file` or `*_env` references, see [`SecretRef`]).
//! [`Config::load`] parses *and* validates, collecting every problem it finds.

pub mod database;
pub mod dns;
pub mod drill;
pub mod duration;
mod error;
pub mod etcd;
pub mod mysql;
pub mod objects;
pub mod postgres;
mod secret;
pub mod tables;
mod write;

pub use error::{ConfigError, ConfigErrors, LoadError, Validator};
pub use secret::{SecretError, SecretRef};

use lifeboat_core::{RegionId, VantageId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The whole deployment.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub deployment: Deployment,
    pub controller: ControllerConfig,
    /// The bearer token shared by the controller, the agents and the CLI.
    pub auth: AuthConfig,
    #[serde(default)]
    pub failover: FailoverConfig,
    /// `[regions.NAME]`, at least two.
    pub regions: BTreeMap<String, RegionConfig>,
    /// `[checks.NAME]`.
    #[serde(default)]
    pub checks: BTreeMap<String, CheckConfig>,
    #[serde(default)]
    pub dns: Option<dns::DnsConfig>,
    #[serde(default)]
    pub objects: Option<objects::ObjectsConfig>,
    /// `[tables]`: global tables (a DynamoDB-compatible table server per region).
    #[serde(default)]
    pub tables: Option<tables::TablesConfig>,
    #[serde(default)]
    pub database: Option<database::DatabaseConfig>,
    #[serde(default)]
    pub drill: Option<drill::DrillConfig>,
    /// Where the file was read from (not a key in the file).
    #[serde(skip)]
    pub source: PathBuf,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Deployment {
    #[serde(default = "default_deployment_name")]
    pub name: String,
}

impl Default for Deployment {
    fn default() -> Self {
        Self {
            name: default_deployment_name(),
        }
    }
}

fn default_deployment_name() -> String {
    "lifeboat".to_owned()
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ControllerConfig {
    /// HTTP API (status, journal, failover, metrics, dashboard).
    pub api_addr: SocketAddr,
    /// Authoritative DNS (UDP and TCP). No DNS when absent.
    #[serde(default)]
    pub dns_addr: Option<SocketAddr>,
    /// Durable state: epoch, active region, lease grants, journal (SQLite), and
    /// the agents' default state directories.
    pub state_dir: PathBuf,
    /// `sqlite` (one controller, the default) or `etcd` (several, see [`etcd`]).
    #[serde(default)]
    pub store: etcd::StoreKind,
    #[serde(default)]
    pub etcd: Option<etcd::EtcdConfig>,
    /// `store = "etcd"`: every controller of the deployment.
    #[serde(default)]
    pub members: Vec<etcd::ControllerMember>,
}

impl ControllerConfig {
    /// The API of every controller, the one in `api_addr` first: agents and the CLI
    /// try them in turn and stay with whichever leads.
    pub fn api_urls(&self) -> Vec<String> {
        let mut out = vec![format!("http://{}", self.api_addr)];
        for m in &self.members {
            let url = format!("http://{}", m.api_addr);
            if !out.contains(&url) {
                out.push(url);
            }
        }
        out
    }

    /// This process's part as controller `name` of the members: its API and DNS
    /// addresses replace `api_addr` / `dns_addr`.
    pub fn as_member(&mut self, name: &str) -> Result<(), String> {
        let m = self
            .members
            .iter()
            .find(|m| m.name == name)
            .ok_or_else(|| {
                format!(
                    "no controller named {name:?} in [[controller.members]] (members: {})",
                    self.members
                        .iter()
                        .map(|m| m.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })?;
        self.api_addr = m.api_addr;
        self.dns_addr = m.dns_addr;
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// File holding the bearer token.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Environment variable holding the bearer token.
    #[serde(default)]
    pub token_env: Option<String>,
}

impl AuthConfig {
    pub fn secret(&self) -> SecretRef {
        SecretRef {
            file: self.token_file.clone(),
            env: self.token_env.clone(),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum FailoverMode {
    /// The controller fails over by itself when a region is down by quorum.
    #[default]
    Automatic,
    /// Only an operator fails over (`lifeboat failover --to R`).
    Manual,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum FailbackPolicy {
    /// A failed-over deployment stays where it is until an operator moves it.
    #[default]
    Manual,
    /// Move back to the original active region once it is healthy again.
    Automatic,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FailoverConfig {
    #[serde(default)]
    pub mode: FailoverMode,
    /// How long a lease lasts. The active agent renews it every ttl/3.
    #[serde(
        default = "default_lease_ttl",
        deserialize_with = "duration::de",
        serialize_with = "duration::ser"
    )]
    pub lease_ttl: Duration,
    /// Extra wait after a lease's ttl before the controller may promote another region
    /// (covers clock-rate differences and in-flight renewals).
    #[serde(
        default = "default_lease_margin",
        deserialize_with = "duration::de",
        serialize_with = "duration::ser"
    )]
    pub lease_margin: Duration,
    /// How long a failure must last, after a quorum first saw it, before a failover.
    #[serde(
        default = "default_hold_down",
        deserialize_with = "duration::de",
        serialize_with = "duration::ser"
    )]
    pub hold_down: Duration,
    #[serde(default)]
    pub failback: FailbackPolicy,
    /// How many vantage points must agree that a check fails. Default: a majority
    /// of the check's vantage points.
    #[serde(default)]
    pub quorum: Option<usize>,
    /// A vantage point's report older than this is ignored (counts as unknown).
    #[serde(
        default = "default_report_ttl",
        deserialize_with = "duration::de",
        serialize_with = "duration::ser"
    )]
    pub report_ttl: Duration,
    /// Refuse an automatic promotion when the standby's data roles are not ready
    /// (lag over the limit). An operator may force it.
    #[serde(default = "default_true")]
    pub require_ready_standby: bool,
    /// After a region becomes active (start-up or promotion) its health checks count
    /// as failures only once it has been seen healthy, or after this grace: pilot-light
    /// services need time to start.
    #[serde(
        default = "default_activation_grace",
        deserialize_with = "duration::de",
        serialize_with = "duration::ser"
    )]
    pub activation_grace: Duration,
    /// How long a planned switchover waits for the standby to catch up.
    #[serde(
        default = "default_switchover_timeout",
        deserialize_with = "duration::de",
        serialize_with = "duration::ser"
    )]
    pub switchover_timeout: Duration,
}

impl Default for FailoverConfig {
    fn default() -> Self {
        Self {
            mode: FailoverMode::default(),
            lease_ttl: default_lease_ttl(),
            lease_margin: default_lease_margin(),
            hold_down: default_hold_down(),
            failback: FailbackPolicy::default(),
            quorum: None,
            report_ttl: default_report_ttl(),
            require_ready_standby: true,
            activation_grace: default_activation_grace(),
            switchover_timeout: default_switchover_timeout(),
        }
    }
}

fn default_lease_ttl() -> Duration {
    Duration::from_secs(2)
}
fn default_lease_margin() -> Duration {
    Duration::from_millis(500)
}
fn default_hold_down() -> Duration {
    Duration::from_millis(0)
}
fn default_report_ttl() -> Duration {
    Duration::from_secs(3)
}
fn default_activation_grace() -> Duration {
    Duration::from_secs(30)
}
fn default_switchover_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_true() -> bool {
    true
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum InitialRole {
    Active,
    Standby,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RegionConfig {
    /// The agent's HTTP API.
    pub agent_addr: SocketAddr,
    /// The address clients use to reach this region (DNS answers with it).
    #[serde(default)]
    pub address: Option<IpAddr>,
    /// Which region is active when the deployment first starts (state on disk wins later).
    pub role: InitialRole,
    /// Where this region's agent keeps its state (highest epoch seen). Default:
    /// `<controller.state_dir>/agent-<region>`.
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
    #[serde(default)]
    pub services: Vec<ServiceConfig>,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ServiceMode {
    /// Runs only in the active region; the standby's copy starts at promotion.
    #[default]
    PilotLight,
    /// Runs in every region; the standby's copy is told it is read-only.
    WarmStandby,
}

/// A region's application process: either a process the agent runs and supervises
/// (`command`), or shell commands that start and stop it (`start` / `stop`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    pub name: String,
    #[serde(default)]
    pub mode: ServiceMode,
    /// argv of a managed process (restarted if it exits while it should run).
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// Shell command that starts the service (alternative to `command`).
    #[serde(default)]
    pub start: Option<String>,
    /// Shell command that stops the service.
    #[serde(default)]
    pub stop: Option<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub workdir: Option<PathBuf>,
    /// How long a managed process gets between SIGTERM and SIGKILL.
    #[serde(
        default = "default_stop_timeout",
        deserialize_with = "duration::de",
        serialize_with = "duration::ser"
    )]
    pub stop_timeout: Duration,
}

fn default_stop_timeout() -> Duration {
    Duration::from_secs(5)
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CheckKind {
    Http,
    Https,
    Tcp,
    /// Log in to a PostgreSQL server and run a query.
    #[serde(alias = "postgresql")]
    Postgres,
    /// Log in to a MariaDB / MySQL server and run a query.
    #[serde(alias = "mariadb")]
    Mysql,
    Calculated,
}

impl CheckKind {
    /// A database probe (`postgres` or `mysql`).
    pub fn is_database(self) -> bool {
        matches!(self, CheckKind::Postgres | CheckKind::Mysql)
    }
}

/// What a database probe requires of the server.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum DbExpect {
    /// It logs the probe in and answers a query.
    #[default]
    Any,
    /// It also takes writes (PostgreSQL: not in recovery; MySQL: read_only off).
    Primary,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum CalcOp {
    /// Healthy when every child is healthy.
    #[default]
    And,
    /// Healthy when any child is healthy.
    Or,
}

/// A health check, Route 53 style.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CheckConfig {
    #[serde(rename = "type")]
    pub kind: CheckKind,
    /// The region whose health this check decides. Checks without a region (for
    /// example children of a calculated check) only feed other checks and DNS records.
    #[serde(default)]
    pub region: Option<String>,
    /// http / https: the URL to GET. 2xx and 3xx are healthy.
    #[serde(default)]
    pub url: Option<String>,
    /// tcp / postgres / mysql: host:port to connect to.
    #[serde(default)]
    pub addr: Option<String>,
    /// postgres / mysql: the user the probe logs in as.
    #[serde(default)]
    pub user: Option<String>,
    /// postgres: the database to connect to (default "postgres").
    #[serde(default)]
    pub dbname: Option<String>,
    /// postgres / mysql: a file holding the password (read at every probe).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// postgres / mysql: an environment variable holding the password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// postgres / mysql: `any` (answers a query) or `primary` (also takes writes).
    #[serde(default)]
    pub expect: DbExpect,
    /// http / https: healthy only if this string is in the first 5,120 bytes of the body.
    #[serde(default)]
    pub search: Option<String>,
    #[serde(
        default = "default_interval",
        deserialize_with = "duration::de",
        serialize_with = "duration::ser"
    )]
    pub interval: Duration,
    #[serde(
        default = "default_timeout",
        deserialize_with = "duration::de",
        serialize_with = "duration::ser"
    )]
    pub timeout: Duration,
    /// Consecutive results needed to change state, in both directions.
    #[serde(default = "default_threshold")]
    pub failure_threshold: u32,
    /// Report healthy when the probe fails and the other way round.
    #[serde(default)]
    pub inverted: bool,
    /// calculated: the checks it combines.
    #[serde(default)]
    pub children: Vec<String>,
    /// calculated: `and` or `or` (ignored when `min_healthy` is set).
    #[serde(default)]
    pub op: CalcOp,
    /// calculated: healthy when at least this many children are healthy.
    #[serde(default)]
    pub min_healthy: Option<usize>,
    /// Where the probe runs: "controller" and/or region names. Default: everywhere.
    #[serde(default)]
    pub vantage: Option<Vec<String>>,
}

impl CheckConfig {
    /// A check of this kind with every other key at its default.
    pub fn new(kind: CheckKind) -> Self {
        Self {
            kind,
            region: None,
            url: None,
            addr: None,
            user: None,
            dbname: None,
            password_file: None,
            password_env: None,
            expect: DbExpect::default(),
            search: None,
            interval: default_interval(),
            timeout: default_timeout(),
            failure_threshold: default_threshold(),
            inverted: false,
            children: Vec::new(),
            op: CalcOp::default(),
            min_healthy: None,
            vantage: None,
        }
    }
}

fn default_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_threshold() -> u32 {
    3
}

impl Config {
    /// Read, parse and validate a config file.
    pub fn load(path: &Path) -> Result<Config, LoadError> {
        let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Self::parse(path, &text)?)
    }

    /// Parse and validate config text; `path` is used in error messages.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigErrors> {
        let mut cfg: Config = toml::from_str(text).map_err(|e| {
            let (line, column) = e.span().map_or((0, 0), |s| error::line_col(text, s.start));
            let message = e.message().trim().to_owned();
            ConfigErrors(vec![ConfigError {
                file: path.to_path_buf(),
                line,
                column,
                key: key_at(text, e.span()),
                message,
            }])
        })?;
        cfg.source = path.to_path_buf();
        let mut v = Validator::new(path, text);
        cfg.validate(&mut v);
        if v.errors.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigErrors(v.errors))
        }
    }

    fn validate(&self, v: &mut Validator<'_>) {
        if self.regions.len() < 2 {
            v.error("regions", "a deployment needs at least two regions");
        }
        let active: Vec<_> = self
            .regions
            .iter()
            .filter(|(_, r)| r.role == InitialRole::Active)
            .map(|(n, _)| n.clone())
            .collect();
        if active.len() != 1 && !self.regions.is_empty() {
            let first = self.regions.keys().next().cloned().unwrap_or_default();
            v.error(
                &format!("regions.{first}.role"),
                format!(
                    "exactly one region must have role = \"active\" (found {}: {:?})",
                    active.len(),
                    active
                ),
            );
        }
        for (name, region) in &self.regions {
            if !valid_name(name) {
                v.error(
                    &format!("regions.{name}"),
                    "region names use letters, digits, '-' and '_' only",
                );
            }
            let mut seen = std::collections::BTreeSet::new();
            for (i, svc) in region.services.iter().enumerate() {
                let at = format!("regions.{name}.services[{i}]");
                if !seen.insert(svc.name.clone()) {
                    v.error(
                        &format!("{at}.name"),
                        format!("duplicate service name {:?}", svc.name),
                    );
                }
                match (&svc.command, &svc.start) {
                    (None, None) => v.error(&at, "a service needs `command` (a managed process) or `start` (a shell command)"),
                    (Some(_), Some(_)) => v.error(&format!("{at}.start"), "`command` and `start` exclude each other"),
                    (Some(argv), None) if argv.is_empty() => v.error(&format!("{at}.command"), "`command` is empty"),
                    _ => {}
                }
            }
        }
        // Two agents on one address would answer for each other.
        let mut addrs: BTreeMap<SocketAddr, &str> = BTreeMap::new();
        for (name, region) in &self.regions {
            if region.agent_addr.port() != 0
                && let Some(other) = addrs.insert(region.agent_addr, name)
            {
                v.error(
                    &format!("regions.{name}.agent_addr"),
                    format!("region {other:?} uses the same agent address"),
                );
            }
        }

        match (&self.auth.token_file, &self.auth.token_env) {
            (None, None) => v.error(
                "auth",
                "set `token_file` or `token_env`: the bearer token is never written in the config",
            ),
            (Some(_), Some(_)) => v.error(
                "auth.token_env",
                "`token_file` and `token_env` exclude each other",
            ),
            _ => {}
        }

        etcd::validate(&self.controller, v);

        let f = &self.failover;
        if f.lease_ttl < Duration::from_millis(300) {
            v.error("failover.lease_ttl", "lease_ttl must be at least 300ms");
        }
        if let Some(q) = f.quorum {
            if q == 0 {
                v.error("failover.quorum", "quorum must be at least 1");
            } else if q > self.vantage_points().len() {
                v.error(
                    "failover.quorum",
                    format!("quorum {q} is more than the {} vantage points (the controller and one agent per region)", self.vantage_points().len()),
                );
            }
        }

        for (name, check) in &self.checks {
            self.validate_check(name, check, v);
        }
        self.validate_check_cycles(v);

        if let Some(dns) = &self.dns {
            dns.validate(self, v);
        }
        if let Some(objects) = &self.objects {
            objects.validate(self, v);
        }
        if let Some(tables) = &self.tables {
            tables.validate(self, v);
        }
        if let Some(db) = &self.database {
            db.validate(self, v);
        }
        if let Some(drill) = &self.drill {
            drill.validate(self, v);
        }
    }

    fn validate_check(&self, name: &str, c: &CheckConfig, v: &mut Validator<'_>) {
        let at = format!("checks.{name}");
        if let Some(region) = &c.region
            && !self.regions.contains_key(region)
        {
            v.error(&format!("{at}.region"), self.undefined_region(region));
        }
        let needs = |field: &str, present: bool, v: &mut Validator<'_>| {
            if !present {
                v.error(&at, format!("a {:?} check needs `{field}`", c.kind));
            }
        };
        let host_port = |v: &mut Validator<'_>| {
            if let Some(addr) = &c.addr
                && addr
                    .rsplit_once(':')
                    .and_then(|(_, p)| p.parse::<u16>().ok())
                    .is_none()
            {
                v.error(&format!("{at}.addr"), format!("{addr:?} is not host:port"));
            }
        };
        match c.kind {
            CheckKind::Http | CheckKind::Https => {
                needs("url", c.url.is_some(), v);
                if let Some(url) = &c.url {
                    let scheme = if c.kind == CheckKind::Http {
                        "http://"
                    } else {
                        "https://"
                    };
                    if !url.starts_with(scheme) {
                        v.error(
                            &format!("{at}.url"),
                            format!("a {:?} check's url must start with {scheme}", c.kind),
                        );
                    }
                }
            }
            CheckKind::Postgres | CheckKind::Mysql => {
                needs("addr", c.addr.is_some(), v);
                needs("user", c.user.is_some(), v);
                host_port(v);
                secret::check_file_or_env(
                    v,
                    &at,
                    "password",
                    c.password_file.is_some(),
                    c.password_env.is_some(),
                    false,
                );
                if c.kind == CheckKind::Mysql && c.dbname.is_some() {
                    v.error(
                        &format!("{at}.dbname"),
                        "a mysql check logs in without a database: remove `dbname`",
                    );
                }
            }
            CheckKind::Tcp => {
                needs("addr", c.addr.is_some(), v);
                host_port(v);
            }
            CheckKind::Calculated => {
                if c.children.is_empty() {
                    v.error(&at, "a calculated check needs `children`");
                }
                for (i, child) in c.children.iter().enumerate() {
                    if !self.checks.contains_key(child) {
                        v.error(
                            &format!("{at}.children[{i}]"),
                            format!("no check named {child:?} is defined"),
                        );
                    }
                }
                if let Some(n) = c.min_healthy
                    && n > c.children.len()
                {
                    v.error(
                        &format!("{at}.min_healthy"),
                        format!(
                            "min_healthy {n} is more than the {} children",
                            c.children.len()
                        ),
                    );
                }
            }
        }
        if !c.kind.is_database() {
            for (field, set) in [
                ("user", c.user.is_some()),
                ("dbname", c.dbname.is_some()),
                ("password_file", c.password_file.is_some()),
                ("password_env", c.password_env.is_some()),
                ("expect", c.expect != DbExpect::Any),
            ] {
                if set {
                    v.error(
                        &format!("{at}.{field}"),
                        format!("`{field}` is for postgres and mysql checks only"),
                    );
                }
            }
        }
        if c.kind != CheckKind::Calculated {
            if c.interval < Duration::from_millis(50) {
                v.error(&format!("{at}.interval"), "interval must be at least 50ms");
            }
            if c.timeout.is_zero() {
                v.error(&format!("{at}.timeout"), "timeout must be more than zero");
            }
            if c.failure_threshold == 0 {
                v.error(
                    &format!("{at}.failure_threshold"),
                    "failure_threshold must be at least 1",
                );
            }
        }
        if let Some(vantage) = &c.vantage {
            for (i, vp) in vantage.iter().enumerate() {
                if vp != "controller" && !self.regions.contains_key(vp) {
                    v.error(
                        &format!("{at}.vantage[{i}]"),
                        format!(
                            "{vp:?} is neither \"controller\" nor a region ({})",
                            self.region_list()
                        ),
                    );
                }
            }
        }
    }

    fn validate_check_cycles(&self, v: &mut Validator<'_>) {
        // A calculated check must not depend on itself.
        fn visits(cfg: &Config, from: &str, target: &str, depth: usize) -> bool {
            if depth > cfg.checks.len() {
                return true;
            }
            cfg.checks.get(from).is_some_and(|c| {
                c.children
                    .iter()
                    .any(|ch| ch == target || visits(cfg, ch, target, depth + 1))
            })
        }
        for name in self.checks.keys() {
            if visits(self, name, name, 0) {
                v.error(
                    &format!("checks.{name}.children"),
                    "calculated checks form a cycle",
                );
            }
        }
    }

    pub(crate) fn undefined_region(&self, region: &str) -> String {
        format!(
            "region {region:?} is not defined (regions: {})",
            self.region_list()
        )
    }

    fn region_list(&self) -> String {
        self.regions.keys().cloned().collect::<Vec<_>>().join(", ")
    }

    /// Every vantage point of the deployment: the controller and each region's agent.
    pub fn vantage_points(&self) -> Vec<VantageId> {
        let mut v = vec![VantageId::Controller];
        v.extend(
            self.regions
                .keys()
                .map(|r| VantageId::Agent(RegionId::new(r))),
        );
        v
    }

    /// The vantage points a check runs from.
    pub fn check_vantage(&self, check: &CheckConfig) -> Vec<VantageId> {
        match &check.vantage {
            None => self.vantage_points(),
            Some(list) => list
                .iter()
                .map(|v| {
                    if v == "controller" {
                        VantageId::Controller
                    } else {
                        VantageId::Agent(RegionId::new(v))
                    }
                })
                .collect(),
        }
    }

    /// How many vantage points must agree that a check is unhealthy.
    pub fn check_quorum(&self, check: &CheckConfig) -> usize {
        let n = self.check_vantage(check).len();
        self.failover.quorum.unwrap_or(n / 2 + 1).min(n).max(1)
    }

    /// The region that is active when no state exists on disk yet.
    pub fn initial_active(&self) -> Option<RegionId> {
        self.regions
            .iter()
            .find(|(_, r)| r.role == InitialRole::Active)
            .map(|(n, _)| RegionId::new(n))
    }

    pub fn region(&self, id: &RegionId) -> Option<&RegionConfig> {
        self.regions.get(id.as_str())
    }

    pub fn region_ids(&self) -> Vec<RegionId> {
        self.regions.keys().map(RegionId::new).collect()
    }

    /// Where a region's agent keeps its state.
    pub fn agent_state_dir(&self, id: &RegionId) -> PathBuf {
        self.region(id)
            .and_then(|r| r.state_dir.clone())
            .unwrap_or_else(|| self.controller.state_dir.join(format!("agent-{id}")))
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// The dotted key at a syntax/type error's position, for the message.
fn key_at(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    let Some(span) = span else {
        return String::new();
    };
    let start = span.start.min(text.len());
    // The current table header above the error.
    let before = &text[..start];
    let table = before
        .lines()
        .rev()
        .find_map(|l| {
            let l = l.trim();
            (l.starts_with('[') && l.ends_with(']'))
                .then(|| l.trim_matches(|c| c == '[' || c == ']').trim().to_owned())
        })
        .unwrap_or_default();
    // The key on the error's line, if the line is `key = value`.
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or("");
    let key = line
        .split_once('=')
        .map(|(k, _)| k.trim().to_owned())
        .unwrap_or_default();
    let key = if key.starts_with('[') {
        String::new()
    } else {
        key
    };
    match (table.is_empty(), key.is_empty()) {
        (true, _) => key,
        (false, true) => table,
        (false, false) => format!("{table}.{key}"),
    }
}

#[cfg(test)]
mod tests;
