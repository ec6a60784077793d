//! The one place in this crate that switches on the database engine (PostgreSQL, or
//! MariaDB / MySQL). Everything that differs between them — bootstrapping a region's
//! server, the agent's database role, the endpoint `/v1/discovery` publishes, and the
//! demo's servers — is a method of [`Engine`]; no other module matches on the engine.

use anyhow::{Context, Result, bail};
use lifeboat_config::Config;
use lifeboat_config::database::{DatabaseConfig, DatabaseEngine, ReplicationMode};
use lifeboat_config::mysql::{MysqlConfig, MysqlInstanceConfig};
use lifeboat_config::postgres::{PostgresConfig, PostgresInstanceConfig};
use lifeboat_core::{RegionId, SharedRole};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

/// The database the MariaDB sample application uses (PostgreSQL's uses `dbname`).
const MARIADB_APP_DATABASE: &str = "lifeboat_app";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Engine {
    Postgres,
    /// MariaDB, or MySQL (`engine = "mysql"` is an alias).
    Mariadb,
}

impl From<DatabaseEngine> for Engine {
    fn from(e: DatabaseEngine) -> Self {
        match e {
            DatabaseEngine::Postgres => Engine::Postgres,
            DatabaseEngine::Mariadb => Engine::Mariadb,
        }
    }
}

impl Engine {
    /// The engine of a `[database]` section.
    pub(crate) fn of(db: &DatabaseConfig) -> Engine {
        db.engine.into()
    }

    /// `lifeboat demo --database NAME`.
    pub(crate) fn from_demo_flag(name: &str) -> Result<Engine> {
        match name {
            "postgres" | "postgresql" => Ok(Engine::Postgres),
            "mariadb" | "mysql" => Ok(Engine::Mariadb),
            other => bail!("--database {other}: use postgres or mariadb"),
        }
    }

    /// The server's name, for people.
    pub(crate) fn display_name(self) -> &'static str {
        match self {
            Engine::Postgres => "PostgreSQL",
            Engine::Mariadb => "MariaDB",
        }
    }

    /// What `mode = "sync"` is called on this engine.
    pub(crate) fn sync_replication_name(self) -> &'static str {
        match self {
            Engine::Postgres => "synchronous",
            Engine::Mariadb => "semi-synchronous",
        }
    }

    /// The agent's data role for this engine's server in `region`.
    pub(crate) fn data_role(self, cfg: &Arc<Config>, region: &RegionId) -> Result<SharedRole> {
        Ok(match self {
            Engine::Postgres => Arc::new(
                lifeboat_pg::role::PostgresRole::new(cfg, region)
                    .with_context(|| format!("setting up PostgreSQL for region {region}"))?,
            ),
            Engine::Mariadb => Arc::new(
                lifeboat_mysql::MysqlRole::new(cfg, region)
                    .with_context(|| format!("setting up MariaDB for region {region}"))?,
            ),
        })
    }

    /// `endpoints.database` of `/v1/discovery`: where the `active` region's server is.
    pub(crate) fn discovery_endpoint(
        self,
        db: &DatabaseConfig,
        active: &RegionId,
    ) -> Option<serde_json::Value> {
        match self {
            Engine::Postgres => db.postgres.as_ref().and_then(|pg| {
                pg.regions.get(active.as_str()).map(|i| {
                    serde_json::json!({"engine": "postgres", "host": i.host, "port": i.port, "dbname": pg.dbname, "user": i.user})
                })
            }),
            Engine::Mariadb => db.mysql.as_ref().and_then(|my| {
                my.regions.get(active.as_str()).map(|i| {
                    serde_json::json!({"engine": "mariadb", "host": i.host, "port": i.port, "dbname": MARIADB_APP_DATABASE, "user": i.user})
                })
            }),
        }
    }
}

/// `lifeboat db bootstrap`: create region `r`'s server as the config describes it, a
/// primary in the initially active region and a replica of it elsewhere.
pub(crate) async fn bootstrap(cfg: &Config, r: &RegionId) -> Result<()> {
    let db = cfg
        .database
        .as_ref()
        .context("the config has no [database] section")?;
    match Engine::of(db) {
        Engine::Postgres => lifeboat_pg::bootstrap_region(cfg, r).await,
        Engine::Mariadb => {
            if cfg.initial_active().as_ref() == Some(r) {
                lifeboat_mysql::bootstrap_primary(cfg, r).await.map(|_| ())
            } else {
                let primary = cfg
                    .initial_active()
                    .context("no region has role = \"active\"")?;
                lifeboat_mysql::bootstrap_replica(cfg, r, &primary)
                    .await
                    .map(|_| ())
            }
        }
    }
    .with_context(|| format!("bootstrapping the database of region {r}"))
}

/// One region's server in the demo: its region, address and port.
pub(crate) struct DemoServer<'a> {
    pub region: &'a str,
    pub host: &'a str,
    pub port: u16,
}

impl Engine {
    /// The demo needs this engine's server binaries installed.
    pub(crate) fn check_installed(self) -> Result<()> {
        match self {
            Engine::Postgres => {
                if lifeboat_pg::PgBin::locate(None).is_err() {
                    bail!(
                        "PostgreSQL server binaries were not found (/usr/lib/postgresql/*/bin).\nInstall them with:  sudo apt-get install -y postgresql   (or run ./scripts/test once, which installs what lifeboat needs)"
                    );
                }
            }
            Engine::Mariadb => {
                let found = ["/usr/sbin/mariadbd", "/usr/bin/mariadbd"]
                    .iter()
                    .any(|p| Path::new(p).exists());
                if !found {
                    bail!(
                        "MariaDB was not found.\nInstall it with:  sudo apt-get install -y mariadb-server"
                    );
                }
            }
        }
        Ok(())
    }

    /// The demo's `[database]`: one server per region under `dir` (`pg-<region>` or
    /// `mariadb-<region>`), the passwords in `dir/db-password` and `dir/repl-password`.
    pub(crate) fn demo_database(
        self,
        mode: ReplicationMode,
        dir: &Path,
        servers: &[DemoServer<'_>],
    ) -> DatabaseConfig {
        let password_file = dir.join("db-password");
        let replication_password_file = dir.join("repl-password");
        let (max_lag_bytes, postgres, mysql) = match self {
            Engine::Postgres => {
                let regions = servers
                    .iter()
                    .map(|s| {
                        let instance = PostgresInstanceConfig {
                            host: s.host.to_owned(),
                            port: s.port,
                            data_dir: Some(dir.join(format!("pg-{}", s.region))),
                            user: "postgres".to_owned(),
                            password_file: Some(password_file.clone()),
                            password_env: None,
                            replication_user: "replicator".to_owned(),
                            replication_password_file: Some(replication_password_file.clone()),
                            replication_password_env: None,
                            password: None,
                            replication_password: None,
                        };
                        (s.region.to_owned(), instance)
                    })
                    .collect();
                let pg = PostgresConfig {
                    bin_dir: None,
                    dbname: "postgres".to_owned(),
                    wal_keep_size_mb: 256,
                    keep_dir: None,
                    regions,
                };
                (Some(64 << 20), Some(pg), None)
            }
            Engine::Mariadb => {
                let regions: BTreeMap<_, _> = servers
                    .iter()
                    .enumerate()
                    .map(|(i, s)| {
                        let instance = MysqlInstanceConfig {
                            host: s.host.to_owned(),
                            port: s.port,
                            datadir: Some(dir.join(format!("mariadb-{}", s.region))),
                            user: "root".to_owned(),
                            password_file: Some(password_file.clone()),
                            password_env: None,
                            server_id: Some(i as u32 + 1),
                        };
                        (s.region.to_owned(), instance)
                    })
                    .collect();
                let mut my = MysqlConfig::new(regions);
                my.replication_user = "replicator".to_owned();
                my.replication_password_file = Some(replication_password_file);
                (None, None, Some(my))
            }
        };
        DatabaseConfig {
            engine: match self {
                Engine::Postgres => DatabaseEngine::Postgres,
                Engine::Mariadb => DatabaseEngine::Mariadb,
            },
            mode,
            strict: false,
            max_lag_bytes,
            max_lag: None,
            postgres,
            mysql,
        }
    }

    /// The demo's shell command that kills region `r`'s server (`kill -9`, no clean stop).
    pub(crate) fn demo_kill_command(self, dir: &Path, r: &str) -> String {
        match self {
            // lifeboat-mysql keeps the pid file beside the data directory
            // (`<datadir>.pid`), not inside it.
            Engine::Mariadb => format!(
                "kill -9 $(cat {}/mariadb-{r}.pid 2>/dev/null) 2>/dev/null",
                dir.display()
            ),
            Engine::Postgres => format!(
                "kill -9 $(head -1 {}/pg-{r}/postmaster.pid 2>/dev/null) 2>/dev/null",
                dir.display()
            ),
        }
    }

    /// After the demo's bootstrap: the sample app's database on MariaDB (PostgreSQL's
    /// demo uses `postgres`), created on the primary (`primary_region`); it reaches the
    /// replica through the binlog like any other change.
    pub(crate) async fn prepare_demo_app(
        self,
        db: &DatabaseConfig,
        primary_region: &str,
        password_file: &Path,
    ) -> Result<()> {
        match self {
            Engine::Postgres => Ok(()),
            Engine::Mariadb => {
                let my = db.mysql.as_ref().context("no [database.mysql]")?;
                create_app_database(my, primary_region, password_file).await
            }
        }
    }

    /// Stop every server of the demo at once (`immediate` / SIGKILL): its directory is
    /// about to go.
    pub(crate) async fn stop_demo_servers(self, db: &DatabaseConfig) {
        match self {
            Engine::Postgres => {
                if let Some(pg) = &db.postgres
                    && let Ok(bin) = lifeboat_pg::PgBin::locate(pg.bin_dir.as_deref())
                {
                    for inst in pg.regions.values() {
                        if let Some(dir) = &inst.data_dir {
                            let _ = lifeboat_pg::server::stop(&bin, dir, "immediate").await;
                        }
                    }
                }
            }
            Engine::Mariadb => {
                let Some(my) = &db.mysql else { return };
                for inst in my.regions.values() {
                    if let Some(dir) = &inst.datadir
                        && let Ok(pid) = std::fs::read_to_string(format!("{}.pid", dir.display()))
                        && let Ok(pid) = pid.trim().parse::<i32>()
                    {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                    }
                }
            }
        }
    }
}

async fn create_app_database(
    my: &MysqlConfig,
    primary_region: &str,
    password_file: &Path,
) -> Result<()> {
    let primary = my
        .regions
        .get(primary_region)
        .with_context(|| format!("no [database.mysql.regions.{primary_region}]"))?;
    let password = std::fs::read_to_string(password_file)?;
    let out = tokio::process::Command::new("mariadb")
        .args([
            "--protocol=TCP",
            "-h",
            &primary.host,
            "-P",
            &primary.port.to_string(),
            "-u",
            &primary.user,
        ])
        .args([
            "-e",
            &format!("CREATE DATABASE IF NOT EXISTS {MARIADB_APP_DATABASE}"),
        ])
        .env("MYSQL_PWD", password.trim())
        .output()
        .await
        .context("running the mariadb client")?;
    anyhow::ensure!(
        out.status.success(),
        "creating the demo's database on {}:{}: {}",
        primary.host,
        primary.port,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}
