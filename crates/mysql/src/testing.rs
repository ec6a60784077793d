//! A test harness: a real MariaDB primary (region `a`) and replica (region `b`), each a
//! `mariadbd` in a temporary directory on a free loopback port, bootstrapped through
//! the crate's own [`bootstrap_primary`](crate::bootstrap_primary) /
//! [`bootstrap_replica`](crate::bootstrap_replica). Used by this crate's tests, the demo
//! and end-to-end tests.
//!
//! Guarantees: nothing is shared between two harnesses (directories, ports, sockets);
//! every server the harness (or a role using its config) started is killed on `Drop`,
//! even when a test fails. The system's own MariaDB is never touched.

use crate::conn::Instance;
use crate::server::ServerFiles;
use anyhow::Context as _;
use lifeboat_config::Config;
use lifeboat_core::RegionId;
use mysql_async::Conn;
use mysql_async::prelude::Queryable;
use std::path::{Path, PathBuf};

/// The admin password the harness writes to its password file.
pub const ADMIN_PASSWORD: &str = "lifeboat-admin-pw";

/// How the pair is set up.
#[derive(Debug, Clone)]
pub struct PairOptions {
    /// Semi-synchronous replication (`[database] mode = "sync"`).
    pub semi_sync: bool,
    /// Roles manage their servers (`datadir` in the config: fence = stop the server).
    /// When false, roles see adopted servers (fence = lock accounts + kill sessions).
    pub managed: bool,
    /// `[database] max_lag`, e.g. "5s".
    pub max_lag: Option<String>,
    /// `[database.mysql] semi_sync_timeout`.
    pub semi_sync_timeout: String,
    /// `[database.mysql] apply_timeout`.
    pub apply_timeout: String,
}

impl Default for PairOptions {
    fn default() -> Self {
        Self {
            semi_sync: false,
            managed: true,
            max_lag: Some("30s".into()),
            semi_sync_timeout: "10s".into(),
            apply_timeout: "30s".into(),
        }
    }
}

/// A primary (region a) and a replica (region b) of real MariaDB servers.
pub struct MysqlPair {
    dir: tempfile::TempDir,
    /// The config the roles use (managed or adopted per [`PairOptions::managed`]).
    pub config: Config,
    /// The same deployment with `datadir` set (what the harness starts servers with).
    pub managed_config: Config,
    pub config_text: String,
    pub ports: [u16; 2],
}

pub fn region_a() -> RegionId {
    RegionId::new("a")
}
pub fn region_b() -> RegionId {
    RegionId::new("b")
}

/// A TCP port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("binding a free port")?;
    Ok(l.local_addr()?.port())
}

fn config_text(dir: &Path, ports: [u16; 2], opts: &PairOptions, managed: bool) -> String {
    let d = dir.display();
    let mut text = format!(
        "[controller]\napi_addr = \"127.0.0.1:1\"\nstate_dir = \"{d}/controller\"\n\n\
         [auth]\ntoken_env = \"LIFEBOAT_TEST_TOKEN\"\n\n\
         [regions.a]\nagent_addr = \"127.0.0.1:2\"\nrole = \"active\"\n\n\
         [regions.b]\nagent_addr = \"127.0.0.1:3\"\nrole = \"standby\"\n\n\
         [database]\nengine = \"mariadb\"\nmode = \"{mode}\"\n",
        mode = if opts.semi_sync { "sync" } else { "async" }
    );
    if let Some(lag) = &opts.max_lag {
        text.push_str(&format!("max_lag = \"{lag}\"\n"));
    }
    text.push_str(&format!(
        "\n[database.mysql]\nreplication_user = \"repl\"\nreplication_password_file = \"{d}/repl.pw\"\n\
         keep_dir = \"{d}/keep\"\nsemi_sync_timeout = \"{}\"\napply_timeout = \"{}\"\n",
        opts.semi_sync_timeout, opts.apply_timeout
    ));
    for (i, name) in ["a", "b"].iter().enumerate() {
        text.push_str(&format!(
            "\n[database.mysql.regions.{name}]\nhost = \"127.0.0.1\"\nport = {}\nuser = \"lifeboat\"\n\
             password_file = \"{d}/admin.pw\"\n",
            ports[i]
        ));
        if managed {
            text.push_str(&format!("datadir = \"{d}/{name}\"\n"));
        }
    }
    text
}

impl MysqlPair {
    /// Directories, ports, password files and config; no server started yet.
    pub fn prepare(opts: &PairOptions) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("lbmy")
            .tempdir()
            .context("creating a temp dir")?;
        let a = free_port()?;
        let mut b = free_port()?;
        while b == a {
            b = free_port()?;
        }
        let ports = [a, b];
        std::fs::write(dir.path().join("admin.pw"), format!("{ADMIN_PASSWORD}\n"))?;
        std::fs::write(dir.path().join("repl.pw"), "lifeboat-repl-pw\n")?;
        let managed_text = config_text(dir.path(), ports, opts, true);
        let text = config_text(dir.path(), ports, opts, opts.managed);
        let path = dir.path().join("lifeboat.toml");
        std::fs::write(&path, &text)?;
        let parse = |t: &str| Config::parse(&path, t).map_err(|e| anyhow::anyhow!("{e}"));
        Ok(Self {
            config: parse(&text)?,
            managed_config: parse(&managed_text)?,
            config_text: text,
            ports,
            dir,
        })
    }

    /// A bootstrapped pair: a is the primary, b its replica (caught up).
    pub async fn start(opts: PairOptions) -> anyhow::Result<Self> {
        let pair = Self::prepare(&opts)?;
        crate::bootstrap_primary(&pair.managed_config, &region_a()).await?;
        crate::bootstrap_replica(&pair.managed_config, &region_b(), &region_a()).await?;
        Ok(pair)
    }

    /// Only the primary (region a) runs.
    pub async fn start_primary(opts: PairOptions) -> anyhow::Result<Self> {
        let pair = Self::prepare(&opts)?;
        crate::bootstrap_primary(&pair.managed_config, &region_a()).await?;
        Ok(pair)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn datadir(&self, region: &RegionId) -> PathBuf {
        self.dir.path().join(region.as_str())
    }

    pub fn files(&self, region: &RegionId) -> ServerFiles {
        ServerFiles::new(&self.datadir(region), None)
    }

    pub fn instance(&self, region: &RegionId) -> anyhow::Result<Instance> {
        Instance::from_config(&self.managed_config, region)
    }

    /// An admin connection to a region's server.
    pub async fn admin(&self, region: &RegionId) -> anyhow::Result<Conn> {
        Ok(self.instance(region)?.connect().await?)
    }

    /// A connection as some other account.
    pub async fn connect_as(
        &self,
        region: &RegionId,
        user: &str,
        password: &str,
    ) -> anyhow::Result<Conn> {
        let mut inst = self.instance(region)?;
        inst.user = user.to_owned();
        inst.password = password.to_owned();
        Ok(inst.connect().await?)
    }

    /// Create an application account with ALL PRIVILEGES (SUPER included), on one server
    /// only (not binlogged).
    pub async fn create_super_user(
        &self,
        region: &RegionId,
        user: &str,
        password: &str,
    ) -> anyhow::Result<()> {
        let mut c = self.admin(region).await?;
        c.query_drop("SET SESSION sql_log_bin=0").await?;
        c.query_drop(format!(
            "CREATE USER '{user}'@'%' IDENTIFIED BY '{password}'"
        ))
        .await?;
        c.query_drop(format!("GRANT ALL PRIVILEGES ON *.* TO '{user}'@'%'"))
            .await?;
        Ok(())
    }

    /// kill -9 a region's server.
    pub fn kill(&self, region: &RegionId) {
        self.files(region).kill_now();
    }

    /// Is the region's server process running?
    pub fn running(&self, region: &RegionId) -> bool {
        self.files(region).running_pid().is_some()
    }

    /// Start a (stopped or killed) server again without any role involved: it comes back
    /// read-only (the option file says so), as after a reboot.
    pub async fn restart(&self, region: &RegionId) -> anyhow::Result<()> {
        self.files(region).start(None).await?;
        crate::role::wait_connect(&self.instance(region)?, std::time::Duration::from_secs(60))
            .await?;
        Ok(())
    }
}

impl Drop for MysqlPair {
    fn drop(&mut self) {
        for r in [region_a(), region_b()] {
            self.files(&r).kill_now();
        }
    }
}
