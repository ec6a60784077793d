//! `[controller] store = "etcd"`: three or five controllers keeping the deployment's
//! state in etcd, one leading at a time (docs/architecture.md, "A highly available
//! witness").
//!
//! ```toml
//! [controller]
//! api_addr = "127.0.0.1:7001"      # the first controller the CLI tries
//! state_dir = "/var/lib/lifeboat"
//! store = "etcd"
//!
//! [controller.etcd]
//! endpoints = ["http://10.0.0.1:2379", "http://10.0.0.2:2379", "http://10.0.0.3:2379"]
//! prefix = "/lifeboat/shop"         # one per deployment
//! lease_ttl = "3s"                  # the leader's etcd lease (whole seconds, >= 2s)
//! user = "lifeboat"                 # optional; password from password_file / password_env
//! password_file = "/etc/lifeboat/etcd-password"
//! ca_file = "/etc/lifeboat/etcd-ca.pem"        # optional TLS
//! cert_file = "/etc/lifeboat/etcd-client.pem"  # optional client certificate …
//! key_file = "/etc/lifeboat/etcd-client.key"   # … and its key
//!
//! [[controller.members]]            # every controller: `lifeboat controller --member c1`
//! name = "c1"
//! api_addr = "10.0.0.1:7000"
//! dns_addr = "10.0.0.1:53"
//! ```

use crate::duration;
use crate::{SecretRef, Validator};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Where the controller keeps the deployment's truth.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// One controller, SQLite in `state_dir` (the embedded default).
    #[default]
    Sqlite,
    /// Several controllers, state in etcd, one leader by etcd lease.
    Etcd,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EtcdConfig {
    /// `http://host:port` (or `https://` with TLS) of every etcd member.
    pub endpoints: Vec<String>,
    /// Every key of this deployment lives under it (several deployments can share
    /// one etcd cluster).
    pub prefix: String,
    /// The leader's etcd lease. A leader that cannot renew it stops granting agent
    /// leases before it can expire; another controller leads after it expired.
    #[serde(
        default = "default_etcd_ttl",
        deserialize_with = "duration::de",
        serialize_with = "duration::ser"
    )]
    pub lease_ttl: Duration,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    #[serde(default)]
    pub password_env: Option<String>,
    /// PEM CA certificate that signed the etcd members' certificates (TLS).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate and key (etcd's `--client-cert-auth`).
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    #[serde(default)]
    pub key_file: Option<PathBuf>,
}

fn default_etcd_ttl() -> Duration {
    Duration::from_secs(3)
}

impl EtcdConfig {
    /// The two keys every `[controller.etcd]` sets; the others at their defaults.
    pub fn new(endpoints: Vec<String>, prefix: impl Into<String>) -> Self {
        Self {
            endpoints,
            prefix: prefix.into(),
            lease_ttl: default_etcd_ttl(),
            user: None,
            password_file: None,
            password_env: None,
            ca_file: None,
            cert_file: None,
            key_file: None,
        }
    }

    pub fn password(&self) -> SecretRef {
        SecretRef {
            file: self.password_file.clone(),
            env: self.password_env.clone(),
        }
    }

    pub fn tls(&self) -> bool {
        self.ca_file.is_some() || self.cert_file.is_some()
    }
}

/// One of the controllers of a `store = "etcd"` deployment.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ControllerMember {
    pub name: String,
    pub api_addr: SocketAddr,
    #[serde(default)]
    pub dns_addr: Option<SocketAddr>,
}

pub(crate) fn validate(c: &crate::ControllerConfig, v: &mut Validator<'_>) {
    match (c.store, &c.etcd) {
        (StoreKind::Sqlite, Some(_)) => v.error(
            "controller.etcd",
            "[controller.etcd] is for store = \"etcd\" (this controller keeps its state in SQLite)",
        ),
        (StoreKind::Sqlite, None) => {
            if !c.members.is_empty() {
                v.error(
                    "controller.members",
                    "several controllers need store = \"etcd\" (SQLite serves one controller)",
                );
            }
        }
        (StoreKind::Etcd, None) => v.error(
            "controller.store",
            "store = \"etcd\" needs a [controller.etcd] table (endpoints, prefix)",
        ),
        (StoreKind::Etcd, Some(e)) => {
            if e.endpoints.is_empty() {
                v.error("controller.etcd.endpoints", "name at least one etcd member");
            }
            for (i, ep) in e.endpoints.iter().enumerate() {
                let scheme_ok = ep.starts_with("http://") || ep.starts_with("https://");
                if !scheme_ok {
                    v.error(
                        &format!("controller.etcd.endpoints[{i}]"),
                        format!("{ep:?} is not http://host:port or https://host:port"),
                    );
                } else if ep.starts_with("https://") && e.ca_file.is_none() {
                    v.error(
                        &format!("controller.etcd.endpoints[{i}]"),
                        "an https:// endpoint needs `ca_file` (the CA of the etcd members)",
                    );
                }
            }
            if !e.prefix.starts_with('/') || e.prefix.len() < 2 || e.prefix.ends_with('/') {
                v.error(
                    "controller.etcd.prefix",
                    format!(
                        "{:?}: a key prefix like \"/lifeboat/<deployment>\" (starts with /, does not end with /)",
                        e.prefix
                    ),
                );
            }
            if e.lease_ttl < Duration::from_secs(2) || e.lease_ttl.subsec_nanos() != 0 {
                v.error(
                    "controller.etcd.lease_ttl",
                    "etcd leases are whole seconds, at least 2s",
                );
            }
            match (&e.user, &e.password_file, &e.password_env) {
                (Some(_), None, None) => v.error(
                    "controller.etcd.user",
                    "a user needs `password_file` or `password_env` (never the password itself)",
                ),
                (_, Some(_), Some(_)) => v.error(
                    "controller.etcd.password_env",
                    "`password_file` and `password_env` exclude each other",
                ),
                (None, Some(_), _) | (None, _, Some(_)) => {
                    v.error("controller.etcd.user", "a password without `user`")
                }
                _ => {}
            }
            if e.cert_file.is_some() != e.key_file.is_some() {
                v.error(
                    "controller.etcd.key_file",
                    "`cert_file` and `key_file` go together",
                );
            }
            if c.members.is_empty() {
                v.error(
                    "controller.members",
                    "store = \"etcd\" needs [[controller.members]]: every controller's name and addresses",
                );
            }
            let mut names = std::collections::BTreeSet::new();
            let mut addrs = std::collections::BTreeSet::new();
            for (i, m) in c.members.iter().enumerate() {
                if m.name.is_empty()
                    || !m
                        .name
                        .chars()
                        .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_')
                {
                    v.error(
                        &format!("controller.members[{i}].name"),
                        format!("{:?}: letters, digits, - and _", m.name),
                    );
                }
                if !names.insert(m.name.clone()) {
                    v.error(
                        &format!("controller.members[{i}].name"),
                        format!("two controllers are named {:?}", m.name),
                    );
                }
                if !addrs.insert(m.api_addr) {
                    v.error(
                        &format!("controller.members[{i}].api_addr"),
                        format!("another controller uses {}", m.api_addr),
                    );
                }
            }
        }
    }
}
