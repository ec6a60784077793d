//! One region's PostgreSQL server as lifeboat sees it: where it listens, who to connect
//! as, where its data directory is (when lifeboat manages it), and the names its
//! standby uses (application_name, replication slot).
//!
//! Guarantees: connection failures are told apart ([`PgError`]): an unreachable server,
//! a wrong password and anything else; every message names the region and address.

use anyhow::{Context, Result, anyhow};
use lifeboat_config::SecretRef;
use lifeboat_config::postgres::PostgresInstanceConfig;
use lifeboat_core::RegionId;
use std::path::PathBuf;
use std::time::Duration;
use tokio_postgres::{Client, NoTls};

/// How long a connection attempt may take before the server counts as unreachable.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Connection errors a caller must tell apart.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("PostgreSQL of region {region} at {addr} is unreachable: {reason}")]
    Unreachable {
        region: RegionId,
        addr: String,
        reason: String,
    },
    #[error(
        "PostgreSQL of region {region} at {addr} refused user {user:?}: wrong password or no pg_hba.conf entry ({reason})"
    )]
    Auth {
        region: RegionId,
        addr: String,
        user: String,
        reason: String,
    },
    #[error("PostgreSQL of region {region} at {addr}: {reason}")]
    Other {
        region: RegionId,
        addr: String,
        reason: String,
    },
}

/// One region's server.
#[derive(Debug, Clone)]
pub struct Instance {
    pub region: RegionId,
    pub host: String,
    pub port: u16,
    /// Present when lifeboat manages (starts/stops) the server.
    pub data_dir: Option<PathBuf>,
    pub dbname: String,
    pub user: String,
    pub password: SecretRef,
    pub replication_user: String,
    pub replication_password: SecretRef,
}

impl Instance {
    pub fn from_config(region: &RegionId, cfg: &PostgresInstanceConfig, dbname: &str) -> Self {
        Self {
            region: region.clone(),
            host: cfg.host.clone(),
            port: cfg.port,
            data_dir: cfg.data_dir.clone(),
            dbname: dbname.to_owned(),
            user: cfg.user.clone(),
            password: cfg.password(),
            replication_user: cfg.replication_user.clone(),
            replication_password: cfg.replication_password(),
        }
    }

    /// `region`'s instance from `[database.postgres.regions.REGION]`.
    pub fn from_region(cfg: &lifeboat_config::Config, region: &RegionId) -> Result<Self> {
        let pg = crate::bootstrap::postgres_section(cfg)?;
        let inst = pg
            .regions
            .get(region.as_str())
            .ok_or_else(|| anyhow!("[database.postgres.regions.{region}] is not configured"))?;
        Ok(Self::from_config(region, inst, &pg.dbname))
    }

    pub fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// The application_name this region's server uses when it streams as a standby
    /// (what `synchronous_standby_names` on the primary names).
    pub fn application_name(&self) -> String {
        format!("lifeboat_{}", sanitize(self.region.as_str()))
    }

    /// The physical replication slot a primary keeps for this region's standby.
    pub fn slot_name(&self) -> String {
        self.application_name()
    }

    pub fn data_dir(&self) -> Result<&PathBuf> {
        self.data_dir.as_ref().ok_or_else(|| {
            anyhow!(
                "region {}: database.postgres.regions.{}.data_dir is not set, so lifeboat cannot manage this server's files",
                self.region,
                self.region
            )
        })
    }

    pub fn superuser_password(&self) -> Result<String> {
        self.password.load().with_context(|| {
            format!(
                "password of PostgreSQL user {:?} for region {}",
                self.user, self.region
            )
        })
    }

    pub fn replication_password_value(&self) -> Result<String> {
        self.replication_password.load().with_context(|| {
            format!(
                "password of PostgreSQL replication user {:?} for region {}",
                self.replication_user, self.region
            )
        })
    }

    /// A libpq conninfo for the superuser (pg_rewind's source), without the password
    /// (it goes through PGPASSWORD).
    pub fn superuser_conninfo(&self) -> String {
        use crate::exec::conninfo_quote as q;
        format!(
            "host={} port={} user={} dbname={} connect_timeout=5",
            q(&self.host),
            self.port,
            q(&self.user),
            q(&self.dbname)
        )
    }

    /// `primary_conninfo` for a standby of this server named `standby_app`.
    pub fn replication_conninfo(&self, standby_app: &str) -> Result<String> {
        use crate::exec::conninfo_quote as q;
        Ok(format!(
            "host={} port={} user={} password={} application_name={} connect_timeout=5",
            q(&self.host),
            self.port,
            q(&self.replication_user),
            q(&self.replication_password_value()?),
            q(standby_app)
        ))
    }

    /// Connect as the superuser. The connection task runs until the client is dropped.
    pub async fn connect(&self) -> Result<Client, PgError> {
        let password = self.superuser_password().map_err(|e| PgError::Other {
            region: self.region.clone(),
            addr: self.addr(),
            reason: format!("{e:#}"),
        })?;
        self.connect_as(&self.user, &password).await
    }

    pub async fn connect_as(&self, user: &str, password: &str) -> Result<Client, PgError> {
        let mut cfg = tokio_postgres::Config::new();
        cfg.host(&self.host)
            .port(self.port)
            .user(user)
            .password(password)
            .dbname(&self.dbname)
            .application_name("lifeboat")
            .connect_timeout(CONNECT_TIMEOUT);
        let attempt =
            tokio::time::timeout(CONNECT_TIMEOUT + Duration::from_secs(1), cfg.connect(NoTls))
                .await;
        let (client, connection) = match attempt {
            Err(_) => {
                return Err(PgError::Unreachable {
                    region: self.region.clone(),
                    addr: self.addr(),
                    reason: format!("no answer within {CONNECT_TIMEOUT:?}"),
                });
            }
            Ok(Err(e)) => return Err(self.classify(user, &e)),
            Ok(Ok(pair)) => pair,
        };
        tokio::spawn(async move {
            // The connection ends when the client is dropped or the server goes away;
            // the next query on the client reports it.
            let _ = connection.await;
        });
        Ok(client)
    }

    /// Sort a driver error into the cases callers act on.
    pub fn classify(&self, user: &str, e: &tokio_postgres::Error) -> PgError {
        use tokio_postgres::error::SqlState;
        let reason = error_text(e);
        if let Some(db) = e.as_db_error() {
            if *db.code() == SqlState::INVALID_PASSWORD
                || *db.code() == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
            {
                return PgError::Auth {
                    region: self.region.clone(),
                    addr: self.addr(),
                    user: user.to_owned(),
                    reason,
                };
            }
            if *db.code() == SqlState::CANNOT_CONNECT_NOW || *db.code() == SqlState::ADMIN_SHUTDOWN
            {
                return PgError::Unreachable {
                    region: self.region.clone(),
                    addr: self.addr(),
                    reason,
                };
            }
            return PgError::Other {
                region: self.region.clone(),
                addr: self.addr(),
                reason,
            };
        }
        // No server answer at all: refused, reset, timed out, closed.
        PgError::Unreachable {
            region: self.region.clone(),
            addr: self.addr(),
            reason,
        }
    }
}

/// The driver's message with its causes ("error connecting to server: Connection refused").
pub fn error_text(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{}: {}", db.severity(), db.message());
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect()
}
