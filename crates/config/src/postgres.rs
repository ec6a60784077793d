//! `[database.postgres]`: one PostgreSQL instance per region, streaming-replicated.
//!
//! ```toml
//! [database]
//! engine = "postgres"
//! mode = "sync"              # or "async"
//! max_lag_bytes = 16777216   # automatic promotion only under this lag
//! max_lag = "10s"
//!
//! [database.postgres]
//! dbname = "postgres"        # the database lifeboat connects to
//!
//! [database.postgres.regions.a]
//! host = "127.0.1.1"
//! port = 5432
//! data_dir = "/var/lib/lifeboat/pg-a"   # set when lifeboat manages (starts/stops) the server
//! user = "postgres"                     # a superuser
//! password_file = "/etc/lifeboat/pg-a.password"
//! replication_user = "replicator"
//! replication_password_env = "PG_A_REPL_PASSWORD"
//! ```
//!
//! Guarantees: every instance names a defined region, has a usable address and port,
//! and takes its passwords from a file or an environment variable — never from the
//! config text. Two instances never share an address and port.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::SecretRef;

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// Directory of the PostgreSQL server binaries (initdb, pg_ctl, pg_basebackup,
    /// pg_rewind, pg_waldump). Default: the newest `/usr/lib/postgresql/*/bin`.
    #[serde(default)]
    pub bin_dir: Option<PathBuf>,
    /// The database lifeboat connects to for monitoring and control.
    #[serde(default = "default_dbname")]
    pub dbname: String,
    /// `wal_keep_size` of a bootstrapped primary, in megabytes: WAL kept for a standby
    /// that falls behind (and for pg_rewind of an old primary).
    #[serde(default = "default_wal_keep_mb")]
    pub wal_keep_size_mb: u64,
    /// Where a rejoin keeps what an old primary would lose (a copy of its data
    /// directory and a divergence report). Default: `<data_dir>.lifeboat-kept`.
    #[serde(default)]
    pub keep_dir: Option<PathBuf>,
    /// `[database.postgres.regions.NAME]`: the instance of each region.
    pub regions: BTreeMap<String, PostgresInstanceConfig>,
}

/// One region's PostgreSQL server.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PostgresInstanceConfig {
    /// The address the server listens on and clients (and the other region's standby)
    /// connect to.
    pub host: String,
    #[serde(default = "default_port")]
    pub port: u16,
    /// Set when lifeboat manages the server (bootstraps, starts and stops it). For an
    /// adopted server that lifeboat did not create, leave it out: fencing then closes
    /// the server's pg_hba.conf to clients instead of stopping it, and rejoin needs it.
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    /// A superuser lifeboat connects as.
    #[serde(default = "default_user")]
    pub user: String,
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    #[serde(default)]
    pub password_env: Option<String>,
    /// The role with REPLICATION a standby of this server connects as.
    #[serde(default = "default_replication_user")]
    pub replication_user: String,
    #[serde(default)]
    pub replication_password_file: Option<PathBuf>,
    #[serde(default)]
    pub replication_password_env: Option<String>,
    /// Rejected with a clear message: passwords are never written in the config.
    #[serde(default)]
    pub password: Option<toml::Value>,
    /// Rejected with a clear message: passwords are never written in the config.
    #[serde(default)]
    pub replication_password: Option<toml::Value>,
}

impl PostgresInstanceConfig {
    /// The superuser's password reference.
    pub fn password(&self) -> SecretRef {
        SecretRef {
            file: self.password_file.clone(),
            env: self.password_env.clone(),
        }
    }

    /// The replication user's password reference.
    pub fn replication_password(&self) -> SecretRef {
        SecretRef {
            file: self.replication_password_file.clone(),
            env: self.replication_password_env.clone(),
        }
    }
}

fn default_dbname() -> String {
    "postgres".to_owned()
}
fn default_wal_keep_mb() -> u64 {
    1024
}
fn default_port() -> u16 {
    5432
}
fn default_user() -> String {
    "postgres".to_owned()
}
fn default_replication_user() -> String {
    "replicator".to_owned()
}

impl PostgresConfig {
    pub(crate) fn validate(&self, cfg: &crate::Config, v: &mut crate::Validator<'_>) {
        let at = "database.postgres";
        if let Some(bin) = &self.bin_dir
            && !bin.is_absolute()
        {
            v.error(&format!("{at}.bin_dir"), "bin_dir must be an absolute path");
        }
        if self.dbname.is_empty() {
            v.error(&format!("{at}.dbname"), "dbname must not be empty");
        }
        if self.wal_keep_size_mb == 0 {
            v.error(
                &format!("{at}.wal_keep_size_mb"),
                "wal_keep_size_mb must be more than zero: a standby that falls behind and a rejoining old primary need WAL kept",
            );
        }
        if let Some(keep) = &self.keep_dir
            && !keep.is_absolute()
        {
            v.error(
                &format!("{at}.keep_dir"),
                "keep_dir must be an absolute path",
            );
        }
        if self.regions.len() < 2 {
            v.error(
                &format!("{at}.regions"),
                "PostgreSQL replication needs an instance in at least two regions",
            );
        }
        let mut seen: BTreeMap<(String, u16), &str> = BTreeMap::new();
        for (name, inst) in &self.regions {
            let at = format!("{at}.regions.{name}");
            if !cfg.regions.contains_key(name) {
                v.error(&at, cfg.undefined_region(name));
            }
            if inst.host.trim().is_empty() {
                v.error(&format!("{at}.host"), "host must not be empty");
            } else if inst.host.starts_with('/') {
                v.error(
                    &format!("{at}.host"),
                    "host must be a network address: the other region's standby connects to it over TCP",
                );
            }
            if inst.port == 0 {
                v.error(&format!("{at}.port"), "port must be between 1 and 65535");
            }
            if let Some(other) = seen.insert((inst.host.clone(), inst.port), name) {
                v.error(
                    &format!("{at}.port"),
                    format!(
                        "region {other:?} already uses {}:{}: two instances cannot share an address and port",
                        inst.host, inst.port
                    ),
                );
            }
            if let Some(dir) = &inst.data_dir
                && !dir.is_absolute()
            {
                v.error(
                    &format!("{at}.data_dir"),
                    "data_dir must be an absolute path",
                );
            }
            for (field, user) in [
                ("user", &inst.user),
                ("replication_user", &inst.replication_user),
            ] {
                if !valid_role_name(user) {
                    v.error(
                        &format!("{at}.{field}"),
                        format!("{user:?} is not a usable role name (letters, digits and '_', not starting with a digit)"),
                    );
                }
            }
            secret_pair(
                v,
                &at,
                "password",
                inst.password.is_some(),
                &inst.password_file,
                &inst.password_env,
            );
            secret_pair(
                v,
                &at,
                "replication_password",
                inst.replication_password.is_some(),
                &inst.replication_password_file,
                &inst.replication_password_env,
            );
        }
    }
}

/// `NAME_file` xor `NAME_env`, and never `NAME` inline.
fn secret_pair(
    v: &mut crate::Validator<'_>,
    at: &str,
    name: &str,
    inline: bool,
    file: &Option<PathBuf>,
    env: &Option<String>,
) {
    if inline {
        v.error(
            &format!("{at}.{name}"),
            format!("passwords are never written in the config: use `{name}_file` or `{name}_env`"),
        );
        return;
    }
    crate::secret::check_file_or_env(v, at, name, file.is_some(), env.is_some(), true);
}

fn valid_role_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 63
}

#[cfg(test)]
mod tests {
    use crate::Config;
    use std::path::Path;

    const EXAMPLE: &str = include_str!("../../../examples/two-regions.toml");

    const PG: &str = r#"
[database]
engine = "postgres"
mode = "sync"
max_lag_bytes = 1048576
max_lag = "10s"

[database.postgres]

[database.postgres.regions.a]
host = "127.0.1.1"
port = 5432
data_dir = "/var/lib/lifeboat/pg-a"
password_file = "/etc/lifeboat/pg.password"
replication_password_file = "/etc/lifeboat/repl.password"

[database.postgres.regions.b]
host = "127.0.2.1"
port = 5432
data_dir = "/var/lib/lifeboat/pg-b"
password_env = "PG_PASSWORD"
replication_password_env = "PG_REPL_PASSWORD"
"#;

    fn errors(text: &str) -> Vec<crate::ConfigError> {
        Config::parse(Path::new("test.toml"), text)
            .expect_err("config should be rejected")
            .0
    }

    fn line_of(text: &str, needle: &str) -> usize {
        text.lines()
            .position(|l| l.trim() == needle)
            .expect("line present")
            + 1
    }

    #[test]
    fn the_postgres_section_written_back_reads_as_the_same_config() {
        crate::tests::assert_round_trip(&format!("{EXAMPLE}{PG}"));
    }

    #[test]
    fn postgres_example_is_valid() {
        let text = format!("{EXAMPLE}{PG}");
        let cfg = Config::parse(Path::new("test.toml"), &text).expect("valid");
        let db = cfg.database.expect("database");
        assert_eq!(db.mode, crate::database::ReplicationMode::Sync);
        assert_eq!(db.max_lag, Some(std::time::Duration::from_secs(10)));
        let pg = db.postgres.expect("postgres");
        assert_eq!(pg.regions["b"].user, "postgres");
        assert_eq!(pg.regions["b"].replication_user, "replicator");
        assert_eq!(pg.dbname, "postgres");
    }

    #[test]
    fn bad_port_is_located() {
        let text = format!("{EXAMPLE}{PG}").replacen(
            "host = \"127.0.2.1\"\nport = 5432",
            "host = \"127.0.2.1\"\nport = 0",
            1,
        );
        let errs = errors(&text);
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].key, "database.postgres.regions.b.port");
        assert_eq!(errs[0].line, line_of(&text, "port = 0"), "{}", errs[0]);
    }

    #[test]
    fn inline_password_is_rejected_with_a_hint() {
        let text = format!("{EXAMPLE}{PG}")
            .replace("password_env = \"PG_PASSWORD\"", "password = \"hunter2\"");
        let errs = errors(&text);
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].key, "database.postgres.regions.b.password");
        assert_eq!(errs[0].line, line_of(&text, "password = \"hunter2\""));
        assert!(errs[0].message.contains("password_file"), "{}", errs[0]);
    }

    #[test]
    fn missing_and_double_password_sources_are_rejected() {
        let text = format!("{EXAMPLE}{PG}")
            .replace("password_file = \"/etc/lifeboat/pg.password\"\n", "")
            .replace(
                "replication_password_env = \"PG_REPL_PASSWORD\"",
                "replication_password_env = \"PG_REPL_PASSWORD\"\nreplication_password_file = \"/x\"",
            );
        let errs = errors(&text);
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(
            errs.iter()
                .any(|e| e.key == "database.postgres.regions.a"
                    && e.message.contains("password_file"))
        );
        assert!(errs.iter().any(|e| e.key
            == "database.postgres.regions.b.replication_password_env"
            && e.message.contains("exclude")));
    }

    #[test]
    fn undefined_region_and_shared_address_are_rejected() {
        let text = format!("{EXAMPLE}{PG}")
            .replace(
                "[database.postgres.regions.b]",
                "[database.postgres.regions.c]",
            )
            .replace("host = \"127.0.2.1\"", "host = \"127.0.1.1\"");
        let errs = errors(&text);
        assert!(
            errs.iter().any(|e| e.key == "database.postgres.regions.c"
                && e.message.contains("\"c\" is not defined")
                && e.line == line_of(&text, "[database.postgres.regions.c]")),
            "{errs:?}"
        );
        assert!(
            errs.iter()
                .any(|e| e.key.ends_with(".port")
                    && e.message.contains("already uses 127.0.1.1:5432")),
            "{errs:?}"
        );
    }

    #[test]
    fn relative_data_dir_and_missing_table_are_rejected() {
        let text = format!("{EXAMPLE}{PG}").replace("/var/lib/lifeboat/pg-b", "pg-b");
        let errs = errors(&text);
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].key, "database.postgres.regions.b.data_dir");

        let text = format!("{EXAMPLE}\n[database]\nengine = \"postgres\"\n");
        let errs = errors(&text);
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].key, "database");
        assert!(
            errs[0].message.contains("[database.postgres]"),
            "{}",
            errs[0]
        );
    }
}
