//! `[tables]`: global tables, a DynamoDB-compatible table server per region
//! (docs/tables.md).
//!
//! ```toml
//! [[tables.access_keys]]                 # what the SDKs sign with (SigV4)
//! id = "AKIDLIFEBOATEXAMPLE"
//! secret_file = "/etc/lifeboat/tables.secret"   # or secret_env; never inline
//!
//! [tables.regions.a]
//! listen = "0.0.0.0:8000"                # the SDKs' endpoint_url in region a
//! peer_listen = "0.0.0.0:8001"           # what the other regions' table servers pull
//! peer_url = "http://10.0.1.5:8001"      # how they reach it (default: http://<peer_listen>)
//! # data_dir = "/var/lib/lifeboat/tables-a"   (default: <region a's agent state dir>/tables)
//!
//! [tables.regions.b]
//! listen = "0.0.0.0:8000"
//! peer_listen = "0.0.0.0:8001"
//! peer_url = "http://10.0.2.5:8001"
//! ```
//!
//! The peer port is apart from the API port so that a firewall (or a test's
//! nftables) can cut the regions' link while each region's applications still
//! reach their own table server, as in a real partition.
//!
//! Guarantees: every region named is defined, at least one access key, secrets come
//! from a file or the environment only, and each problem is reported at its key.

use crate::SecretRef;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TablesConfig {
    #[serde(default)]
    pub access_keys: Vec<AccessKeyConfig>,
    /// `[tables.regions.NAME]`: the regions that run a table server.
    #[serde(default)]
    pub regions: BTreeMap<String, TableRegionConfig>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AccessKeyConfig {
    pub id: String,
    /// Refused: a secret is never written in the config.
    #[serde(default)]
    pub secret: Option<String>,
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    #[serde(default)]
    pub secret_env: Option<String>,
}

impl AccessKeyConfig {
    pub fn secret(&self) -> SecretRef {
        SecretRef {
            file: self.secret_file.clone(),
            env: self.secret_env.clone(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TableRegionConfig {
    /// Where this region's table server listens (the SDKs' endpoint).
    pub listen: SocketAddr,
    /// Where it serves the other regions' table servers (replication).
    pub peer_listen: SocketAddr,
    /// How the other regions reach `peer_listen` (default `http://<peer_listen>`;
    /// needed when `peer_listen` is a wildcard address).
    #[serde(default)]
    pub peer_url: Option<String>,
    /// Its data (default: `<the region's agent state dir>/tables`).
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
}

impl TablesConfig {
    pub(crate) fn validate(&self, cfg: &crate::Config, v: &mut crate::Validator<'_>) {
        if self.regions.is_empty() {
            v.error(
                "tables.regions",
                "no region runs a table server: add [tables.regions.NAME] with `listen`",
            );
        }
        for (region, r) in &self.regions {
            let at = format!("tables.regions.{region}");
            if !cfg.regions.contains_key(region) {
                v.error(&at, cfg.undefined_region(region));
            }
            if r.peer_listen == r.listen {
                v.error(
                    &format!("{at}.peer_listen"),
                    "the peer port must differ from the API port (`listen`)",
                );
            }
            match &r.peer_url {
                None if r.peer_listen.ip().is_unspecified() => v.error(
                    &format!("{at}.peer_url"),
                    format!(
                        "peer_listen {} is a wildcard address: say how the other regions reach it (peer_url = \"http://host:{}\")",
                        r.peer_listen,
                        r.peer_listen.port()
                    ),
                ),
                Some(u) if !(u.starts_with("http://") || u.starts_with("https://")) => v.error(
                    &format!("{at}.peer_url"),
                    format!("{u:?} is not an http:// or https:// URL"),
                ),
                _ => {}
            }
        }
        validate_access_keys(
            "tables.access_keys",
            &self.access_keys,
            "the table servers need at least one access key ([[tables.access_keys]] with id and secret_file or secret_env): every request is signed",
            v,
        );
    }
}

/// A list of SigV4 access keys (`[[tables.access_keys]]`, `[[objects.gateway.access_keys]]`):
/// at least one, ids letters and digits and each once, secrets from a file or the
/// environment only.
pub(crate) fn validate_access_keys(
    at: &str,
    keys: &[AccessKeyConfig],
    none_message: &str,
    v: &mut crate::Validator<'_>,
) {
    if keys.is_empty() {
        v.error(at, none_message);
    }
    let mut ids = std::collections::BTreeSet::new();
    for (i, k) in keys.iter().enumerate() {
        let at = format!("{at}[{i}]");
        if k.id.is_empty() || !k.id.bytes().all(|b| b.is_ascii_alphanumeric()) {
            v.error(
                &format!("{at}.id"),
                "an access key id is letters and digits (as AWS's are)",
            );
        }
        if !ids.insert(k.id.clone()) {
            v.error(
                &format!("{at}.id"),
                format!("access key {:?} is listed twice", k.id),
            );
        }
        if k.secret.is_some() {
            v.error(
                &format!("{at}.secret"),
                "secrets are never inline: use secret_file or secret_env",
            );
        }
        match (&k.secret_file, &k.secret_env) {
            (None, None) => v.error(&at, "an access key needs secret_file or secret_env"),
            (Some(_), Some(_)) => v.error(&at, "give secret_file or secret_env, not both"),
            _ => {}
        }
    }
}

impl TableRegionConfig {
    /// How the other regions reach this one's peer port.
    pub fn peer_base(&self) -> String {
        self.peer_url
            .clone()
            .unwrap_or_else(|| format!("http://{}", self.peer_listen))
            .trim_end_matches('/')
            .to_owned()
    }
}

impl crate::Config {
    /// Where region `region`'s table server keeps its data.
    pub fn tables_data_dir(&self, region: &lifeboat_core::RegionId) -> Option<PathBuf> {
        let t = self.tables.as_ref()?.regions.get(region.as_str())?;
        Some(
            t.data_dir
                .clone()
                .unwrap_or_else(|| self.agent_state_dir(region).join("tables")),
        )
    }
}
