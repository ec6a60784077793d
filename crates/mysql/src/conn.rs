//! Connecting to one region's MySQL / MariaDB instance, with errors that say which
//! instance, where, and whether it is a login problem or an unreachable server.
//!
//! Every connection has a deadline: a server that accepts TCP but never answers must
//! not hang the agent (fencing in particular has to finish quickly).

use anyhow::Context as _;
use lifeboat_config::mysql::{MysqlConfig, MysqlInstanceConfig};
use lifeboat_config::{Config, SecretRef};
use lifeboat_core::{RegionId, RoleError};
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, OptsBuilder, Row, Value};
use std::path::PathBuf;
use std::time::Duration;

/// How long a connection attempt may take before the server counts as unreachable.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// One region's instance, with its secrets resolved.
#[derive(Clone)]
pub struct Instance {
    pub region: RegionId,
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
    pub server_id: u32,
    pub datadir: Option<PathBuf>,
}

impl std::fmt::Debug for Instance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the password.
        write!(
            f,
            "mysql[{}] {}@{}:{}",
            self.region, self.user, self.host, self.port
        )
    }
}

impl std::fmt::Display for Instance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "MySQL of region {} ({}:{})",
            self.region, self.host, self.port
        )
    }
}

/// Why a connection failed: callers tell a login problem from an unreachable server.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(
        "{instance}: login as {user:?} refused: {message} (check the password file / variable and the account)"
    )]
    Login {
        instance: String,
        user: String,
        message: String,
    },
    #[error("{instance} is unreachable: {reason}")]
    Unreachable { instance: String, reason: String },
    #[error("{instance}: {message}")]
    Other { instance: String, message: String },
}

impl ConnectError {
    pub fn into_role_error(self) -> RoleError {
        match self {
            ConnectError::Unreachable { .. } => RoleError::Unreachable {
                role: "mysql".into(),
                reason: self.to_string(),
            },
            _ => RoleError::Failed {
                role: "mysql".into(),
                message: self.to_string(),
            },
        }
    }
}

/// The `[database.mysql]` table, or a clear error.
pub fn mysql_config(cfg: &Config) -> anyhow::Result<&MysqlConfig> {
    cfg.database
        .as_ref()
        .and_then(|d| d.mysql.as_ref())
        .context("the config has no [database.mysql] table")
}

pub fn load_secret(secret: &SecretRef, what: &str) -> anyhow::Result<String> {
    secret.load().with_context(|| format!("reading the {what}"))
}

impl Instance {
    pub fn from_config(cfg: &Config, region: &RegionId) -> anyhow::Result<Self> {
        let m = mysql_config(cfg)?;
        let inst: &MysqlInstanceConfig = m.regions.get(region.as_str()).with_context(|| {
            format!("region {region} has no [database.mysql.regions.{region}] table")
        })?;
        let password = load_secret(
            &inst.password(),
            &format!("password of database.mysql.regions.{region}"),
        )?;
        Ok(Instance {
            region: region.clone(),
            host: inst.host.clone(),
            port: inst.port,
            user: inst.user.clone(),
            password,
            server_id: m
                .server_id(region.as_str())
                .with_context(|| format!("no server_id for region {region}"))?,
            datadir: inst.datadir.clone(),
        })
    }

    fn opts(&self) -> OptsBuilder {
        OptsBuilder::default()
            .ip_or_hostname(self.host.clone())
            .tcp_port(self.port)
            .user(Some(self.user.clone()))
            .pass(Some(self.password.clone()))
            // Talk to exactly the configured address, never a socket it advertises.
            .prefer_socket(false)
            .stmt_cache_size(0)
    }

    /// Connect with [`CONNECT_TIMEOUT`].
    pub async fn connect(&self) -> Result<Conn, ConnectError> {
        self.connect_within(CONNECT_TIMEOUT).await
    }

    pub async fn connect_within(&self, timeout: Duration) -> Result<Conn, ConnectError> {
        match tokio::time::timeout(timeout, Conn::new(self.opts())).await {
            Err(_) => Err(ConnectError::Unreachable {
                instance: self.to_string(),
                reason: format!("no answer within {timeout:?}"),
            }),
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => Err(self.classify(e)),
        }
    }

    fn classify(&self, e: mysql_async::Error) -> ConnectError {
        match e {
            mysql_async::Error::Server(s) if matches!(s.code, 1045 | 4151 | 1044 | 1698) => {
                ConnectError::Login {
                    instance: self.to_string(),
                    user: self.user.clone(),
                    message: s.message,
                }
            }
            mysql_async::Error::Io(io) => ConnectError::Unreachable {
                instance: self.to_string(),
                reason: io.to_string(),
            },
            mysql_async::Error::Driver(mysql_async::DriverError::ConnectionClosed) => {
                ConnectError::Unreachable {
                    instance: self.to_string(),
                    reason: "the server closed the connection".into(),
                }
            }
            other => ConnectError::Other {
                instance: self.to_string(),
                message: other.to_string(),
            },
        }
    }
}

/// A column of a text-protocol row as a string (NULL → None).
pub fn col(row: &Row, name: &str) -> Option<String> {
    let idx = row
        .columns_ref()
        .iter()
        .position(|c| c.name_str() == name)?;
    match row.as_ref(idx)? {
        Value::NULL => None,
        Value::Bytes(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::Int(i) => Some(i.to_string()),
        Value::UInt(u) => Some(u.to_string()),
        other => Some(other.as_sql(true)),
    }
}

pub fn col_u64(row: &Row, name: &str) -> Option<u64> {
    col(row, name).and_then(|s| s.trim().parse().ok())
}

/// `SELECT @@var` as a string.
pub async fn global(conn: &mut Conn, var: &str) -> anyhow::Result<String> {
    let v: Option<Option<String>> = conn
        .query_first(format!("SELECT CAST(@@GLOBAL.{var} AS CHAR)"))
        .await
        .with_context(|| format!("reading @@{var}"))?;
    Ok(v.flatten().unwrap_or_default())
}

/// A boolean system variable (`ON` / `1`).
pub async fn global_bool(conn: &mut Conn, var: &str) -> anyhow::Result<bool> {
    let v = global(conn, var).await?;
    Ok(matches!(
        v.to_ascii_uppercase().as_str(),
        "ON" | "1" | "TRUE" | "YES"
    ))
}

/// A single-quoted SQL string literal.
pub fn lit(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
}
