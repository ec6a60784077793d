//! `[database.mysql]`: a MySQL / MariaDB primary with a cross-region replica on GTID
//! replication.
//!
//! The replication mode and the lag limit are the engine-neutral `[database] mode` and
//! `max_lag` (`mode = "sync"` means semi-synchronous replication for MySQL/MariaDB).
//! One `[database.mysql.regions.NAME]` table per region says how to reach that
//! region's instance (and, with `datadir`, that lifeboat runs the server itself).
//! Passwords are never in the text: `password_file` / `password_env`.
//!
//! ```toml
//! [database]
//! engine = "mariadb"
//! mode = "sync"               # semi-synchronous replication (AFTER_SYNC); or "async"
//! max_lag = "5s"              # a replica lagging more is not promoted automatically
//!
//! [database.mysql]
//! semi_sync_timeout = "10s"   # then the primary falls back to async (see docs/mysql.md)
//! replication_user = "repl"
//! replication_password_env = "LIFEBOAT_REPL_PASSWORD"
//!
//! [database.mysql.regions.a]
//! host = "127.0.1.1"
//! port = 3306
//! datadir = "/var/lib/lifeboat/mysql-a"   # optional: lifeboat starts/stops this server
//! user = "lifeboat"
//! password_file = "/etc/lifeboat/mysql-a.password"
//! ```

use crate::SecretRef;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MysqlConfig {
    /// semi-sync: how long a commit waits for a replica's acknowledgement before the
    /// primary falls back to asynchronous replication (`rpl_semi_sync_master_timeout`).
    #[serde(
        default = "default_semi_sync_timeout",
        deserialize_with = "crate::duration::de",
        serialize_with = "crate::duration::ser"
    )]
    pub semi_sync_timeout: Duration,
    /// How long a promotion waits for the replica to apply what it already received.
    #[serde(
        default = "default_apply_timeout",
        deserialize_with = "crate::duration::de",
        serialize_with = "crate::duration::ser"
    )]
    pub apply_timeout: Duration,
    /// The account replicas use to read the primary's binary log.
    #[serde(default = "default_replication_user")]
    pub replication_user: String,
    #[serde(default)]
    pub replication_password_file: Option<PathBuf>,
    #[serde(default)]
    pub replication_password_env: Option<String>,
    /// Where errant transactions (kept at rejoin) and fencing state are written.
    /// Default: `<agent state dir>/mysql`.
    #[serde(default)]
    pub keep_dir: Option<PathBuf>,
    /// Directory of the MariaDB / MySQL binaries (`mariadbd`, `mariadb-binlog`, …).
    /// Default: found on PATH (and /usr/sbin).
    #[serde(default)]
    pub bin_dir: Option<PathBuf>,
    /// `[database.mysql.regions.NAME]`: one instance per region.
    pub regions: BTreeMap<String, MysqlInstanceConfig>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MysqlInstanceConfig {
    pub host: String,
    #[serde(default = "default_port")]
    pub port: u16,
    /// When set, lifeboat manages this server: it creates it at bootstrap, starts it,
    /// and fences it by stopping it. Without it the server is adopted and fenced by
    /// locking its accounts and killing their sessions.
    #[serde(default)]
    pub datadir: Option<PathBuf>,
    /// The administrative account lifeboat uses (needs SUPER / ALL PRIVILEGES).
    #[serde(default = "default_user")]
    pub user: String,
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    #[serde(default)]
    pub password_env: Option<String>,
    /// `server_id`; default: 1 + the region's position in the file's order of regions.
    #[serde(default)]
    pub server_id: Option<u32>,
}

fn default_semi_sync_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_apply_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_replication_user() -> String {
    "lifeboat_repl".to_owned()
}
fn default_port() -> u16 {
    3306
}
fn default_user() -> String {
    "root".to_owned()
}

impl MysqlConfig {
    /// One instance per region; every other key at its default.
    pub fn new(regions: BTreeMap<String, MysqlInstanceConfig>) -> Self {
        Self {
            semi_sync_timeout: default_semi_sync_timeout(),
            apply_timeout: default_apply_timeout(),
            replication_user: default_replication_user(),
            replication_password_file: None,
            replication_password_env: None,
            keep_dir: None,
            bin_dir: None,
            regions,
        }
    }

    pub fn replication_password(&self) -> SecretRef {
        SecretRef {
            file: self.replication_password_file.clone(),
            env: self.replication_password_env.clone(),
        }
    }

    /// The server_id of a region's instance (explicit, or derived from its position).
    pub fn server_id(&self, region: &str) -> Option<u32> {
        let inst = self.regions.get(region)?;
        inst.server_id.or_else(|| {
            self.regions
                .keys()
                .position(|k| k == region)
                .and_then(|i| u32::try_from(i).ok())
                .map(|i| i + 1)
        })
    }

    pub(crate) fn validate(&self, cfg: &crate::Config, v: &mut crate::Validator<'_>) {
        let at = "database.mysql";
        if self.replication_user.trim().is_empty() {
            v.error(
                &format!("{at}.replication_user"),
                "the replication user must not be empty",
            );
        }
        if self.replication_password_file.is_some() && self.replication_password_env.is_some() {
            v.error(
                &format!("{at}.replication_password_env"),
                "set either `replication_password_file` or `replication_password_env`, not both",
            );
        } else if self.replication_password_file.is_none()
            && self.replication_password_env.is_none()
        {
            v.error(
                at,
                "the replication password comes from `replication_password_file` or `replication_password_env`",
            );
        }
        if self.semi_sync_timeout.is_zero() {
            v.error(&format!("{at}.semi_sync_timeout"), "must be longer than 0s");
        }
        for name in cfg.regions.keys() {
            if !self.regions.contains_key(name) {
                v.error(
                    &format!("{at}.regions"),
                    format!(
                        "region {name:?} has no MySQL instance: add [database.mysql.regions.{name}]"
                    ),
                );
            }
        }
        let mut ids: BTreeMap<u32, &str> = BTreeMap::new();
        let mut endpoints: BTreeMap<(String, u16), &str> = BTreeMap::new();
        for (name, inst) in &self.regions {
            let at = format!("{at}.regions.{name}");
            if !cfg.regions.contains_key(name) {
                v.error(&at, cfg.undefined_region(name));
            }
            if inst.host.trim().is_empty() {
                v.error(&format!("{at}.host"), "the host must not be empty");
            }
            if inst.port == 0 {
                v.error(
                    &format!("{at}.port"),
                    "port 0 is not a port a replica can connect to",
                );
            }
            if inst.user.trim().is_empty() {
                v.error(&format!("{at}.user"), "the user must not be empty");
            }
            match (&inst.password_file, &inst.password_env) {
                (Some(_), Some(_)) => v.error(
                    &format!("{at}.password_env"),
                    "set either `password_file` or `password_env`, not both",
                ),
                (None, None) => v.error(
                    &at,
                    "the password comes from `password_file` or `password_env` (never inline)",
                ),
                _ => {}
            }
            if inst.server_id == Some(0) {
                v.error(
                    &format!("{at}.server_id"),
                    "server_id 0 cannot replicate; use 1 or more",
                );
            }
            if let Some(id) = self.server_id(name)
                && let Some(other) = ids.insert(id, name)
            {
                v.error(
                    &format!("{at}.server_id"),
                    format!("server_id {id} is also used by region {other:?}"),
                );
            }
            if let Some(other) = endpoints.insert((inst.host.clone(), inst.port), name) {
                v.error(
                    &format!("{at}.port"),
                    format!(
                        "{}:{} is also region {other:?}'s instance",
                        inst.host, inst.port
                    ),
                );
            }
        }
    }
}

impl MysqlInstanceConfig {
    pub fn password(&self) -> SecretRef {
        SecretRef {
            file: self.password_file.clone(),
            env: self.password_env.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::{Config, ConfigError};
    use std::path::Path;

    const EXAMPLE: &str = include_str!("../../../examples/two-regions.toml");

    const MYSQL: &str = r#"
[database]
engine = "mariadb"
mode = "sync"
max_lag = "3s"

[database.mysql]
semi_sync_timeout = "2s"
replication_password_env = "REPL_PW"

[database.mysql.regions.a]
host = "127.0.1.1"
port = 3306
datadir = "/tmp/lifeboat-mysql-a"
password_file = "/etc/lifeboat/mysql-a"

[database.mysql.regions.b]
host = "127.0.2.1"
port = 3306
password_env = "MYSQL_B_PW"
"#;

    fn errors(extra: &str) -> Vec<ConfigError> {
        let text = format!("{EXAMPLE}{extra}");
        match Config::parse(Path::new("test.toml"), &text) {
            Ok(_) => Vec::new(),
            Err(e) => e.0,
        }
    }

    fn line_of(text: &str, needle: &str) -> usize {
        text.lines().position(|l| l.trim() == needle).expect("line") + 1
    }

    #[test]
    fn the_mysql_section_written_back_reads_as_the_same_config() {
        crate::tests::assert_round_trip(&format!("{EXAMPLE}{MYSQL}"));
    }

    #[test]
    fn mysql_section_parses_with_defaults() {
        let text = format!("{EXAMPLE}{MYSQL}");
        let cfg = Config::parse(Path::new("test.toml"), &text).expect("valid");
        let db = cfg.database.expect("db");
        assert_eq!(db.mode, crate::database::ReplicationMode::Sync);
        let m = db.mysql.expect("mysql");
        assert_eq!(m.semi_sync_timeout, std::time::Duration::from_secs(2));
        assert_eq!(m.server_id("a"), Some(1));
        assert_eq!(m.server_id("b"), Some(2));
        assert_eq!(m.regions["b"].user, "root");
        assert!(m.regions["a"].datadir.is_some());
    }

    #[test]
    fn bad_port_is_located() {
        let extra = MYSQL.replacen("port = 3306\npassword_env", "port = 0\npassword_env", 1);
        let errs = errors(&extra);
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].key, "database.mysql.regions.b.port");
        let text = format!("{EXAMPLE}{extra}");
        assert_eq!(errs[0].line, line_of(&text, "port = 0"), "{}", errs[0]);
    }

    #[test]
    fn inline_or_missing_password_is_rejected() {
        let errs = errors(&MYSQL.replace("password_env = \"MYSQL_B_PW\"", "password = \"x\""));
        assert!(
            errs.iter().any(|e| e.message.contains("password")),
            "inline password must be rejected: {errs:?}"
        );
        let errs = errors(&MYSQL.replace("password_env = \"MYSQL_B_PW\"", ""));
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].key, "database.mysql.regions.b");
        assert!(errs[0].message.contains("password_file"), "{}", errs[0]);
        assert!(errs[0].line > 0);
    }

    #[test]
    fn unknown_region_and_missing_region_are_reported() {
        let extra = MYSQL.replace("[database.mysql.regions.b]", "[database.mysql.regions.c]");
        let errs = errors(&extra);
        assert!(
            errs.iter()
                .any(|e| e.key == "database.mysql.regions.c" && e.message.contains("\"c\"")),
            "{errs:?}"
        );
        assert!(
            errs.iter()
                .any(|e| e.key == "database.mysql.regions" && e.message.contains("\"b\"")),
            "{errs:?}"
        );
    }

    #[test]
    fn duplicate_server_id_and_endpoint_are_rejected() {
        let extra = MYSQL
            .replace("host = \"127.0.2.1\"", "host = \"127.0.1.1\"")
            .replace(
                "password_env = \"MYSQL_B_PW\"",
                "password_env = \"MYSQL_B_PW\"\nserver_id = 1",
            );
        let errs = errors(&extra);
        assert!(
            errs.iter()
                .any(|e| e.key == "database.mysql.regions.b.server_id"),
            "{errs:?}"
        );
        assert!(
            errs.iter()
                .any(|e| e.key == "database.mysql.regions.b.port"),
            "{errs:?}"
        );
    }

    #[test]
    fn bad_semi_sync_timeout_is_located() {
        let errs =
            errors(&MYSQL.replace("semi_sync_timeout = \"2s\"", "semi_sync_timeout = \"soon\""));
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].key, "database.mysql.semi_sync_timeout");
        let errs =
            errors(&MYSQL.replace("semi_sync_timeout = \"2s\"", "semi_sync_timeout = \"0s\""));
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].key, "database.mysql.semi_sync_timeout");
        assert!(errs[0].line > 0, "{}", errs[0]);
    }
}
