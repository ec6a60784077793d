//! `[database]`: the replicated relational database. The settings every engine shares
//! live here (replication mode, the lag limit for an automatic promotion); the
//! engine-specific parts (per-region instances, users, paths) live in `postgres.rs`
//! and `mysql.rs`.
//!
//! Guarantees: the table named by `engine` must be present, and its regions are
//! checked against `[regions]`.

use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    pub engine: DatabaseEngine,
    /// `async` (default) or `sync`: in `sync` a commit on the primary returns only once
    /// a standby has it.
    #[serde(default)]
    pub mode: ReplicationMode,
    /// `sync` only: after a failover with no standby left, keep making writes wait for
    /// one (true) instead of running unprotected until a standby rejoins (false, default).
    #[serde(default)]
    pub strict: bool,
    /// A standby is promoted automatically only when it lags the primary by at most
    /// this many bytes of WAL / binlog. No limit when absent.
    #[serde(default)]
    pub max_lag_bytes: Option<u64>,
    /// ... and by at most this much time ("10s"). No limit when absent.
    #[serde(
        default,
        deserialize_with = "crate::duration::de_opt",
        serialize_with = "crate::duration::ser_opt"
    )]
    pub max_lag: Option<Duration>,
    #[serde(default)]
    pub postgres: Option<crate::postgres::PostgresConfig>,
    #[serde(default)]
    pub mysql: Option<crate::mysql::MysqlConfig>,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DatabaseEngine {
    Postgres,
    #[serde(alias = "mysql")]
    Mariadb,
}

/// How a commit on the primary relates to the standby.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum ReplicationMode {
    /// The primary acknowledges a commit before a standby has it (lag may lose data
    /// on a failover; `max_lag_bytes` / `max_lag` bound how much).
    #[default]
    Async,
    /// The primary acknowledges a commit only once a standby has it.
    Sync,
}

impl DatabaseConfig {
    pub(crate) fn validate(&self, cfg: &crate::Config, v: &mut crate::Validator<'_>) {
        match self.engine {
            DatabaseEngine::Postgres => match &self.postgres {
                Some(pg) => pg.validate(cfg, v),
                None => v.error(
                    "database",
                    "engine = \"postgres\" needs a [database.postgres] table",
                ),
            },
            DatabaseEngine::Mariadb => match &self.mysql {
                Some(mysql) => mysql.validate(cfg, v),
                None => v.error(
                    "database",
                    "engine = \"mariadb\" needs a [database.mysql] table",
                ),
            },
        }
        if self.max_lag.is_some_and(|d| d.is_zero()) {
            v.error(
                "database.max_lag",
                "max_lag must be more than zero (leave it out for no time limit)",
            );
        }
    }
}
