//! A real PostgreSQL primary + replica pair in a temporary directory, on free ports,
//! for tests, `lifeboat demo` and benchmarks.
//!
//! Guarantees: both servers are stopped (immediate) and, failing that, their postmasters
//! killed when the [`TestPair`] is dropped — also when a test panics; nothing is shared
//! between two pairs (own directory, own ports, own secrets).

use crate::bootstrap::{bootstrap_primary, bootstrap_replica};
use crate::exec::{PgBin, give_to_postgres};
use crate::instance::Instance;
use crate::role::PostgresRole;
use crate::server::{self, ServerSettings};
use anyhow::{Context, Result};
use lifeboat_config::Config;
use lifeboat_config::database::ReplicationMode;
use lifeboat_core::RegionId;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tempfile::TempDir;
use tokio_postgres::Client;

/// How to build a pair.
#[derive(Debug, Clone)]
pub struct PairOptions {
    pub mode: ReplicationMode,
    pub strict: bool,
    pub max_lag_bytes: Option<u64>,
    pub max_lag: Option<Duration>,
    /// Listen addresses of region "a" (the primary) and region "b" (the replica).
    pub hosts: [String; 2],
    /// Ports; 0 picks a free one.
    pub ports: [u16; 2],
}

impl Default for PairOptions {
    fn default() -> Self {
        Self {
            mode: ReplicationMode::Async,
            strict: false,
            max_lag_bytes: None,
            max_lag: None,
            hosts: ["127.0.0.1".into(), "127.0.0.1".into()],
            ports: [0, 0],
        }
    }
}

/// Region "a" starts as the primary, region "b" as its streaming replica.
pub struct TestPair {
    dir: TempDir,
    pub bin: PgBin,
    pub config: Config,
    /// The `[database]` part of the config, to paste into a larger config.
    pub database_toml: String,
    /// The whole config text (`config` parsed from it).
    pub config_text: String,
    data_dirs: Vec<PathBuf>,
}

impl std::fmt::Debug for TestPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestPair")
            .field("dir", &self.dir.path())
            .finish()
    }
}

/// A port nothing listens on right now (bind 0 on `host`, read it back, release it).
pub fn free_port(host: &str) -> Result<u16> {
    let l = std::net::TcpListener::bind((host, 0)).with_context(|| format!("bind {host}:0"))?;
    Ok(l.local_addr()?.port())
}

impl TestPair {
    /// Bootstrap a primary and a streaming replica.
    pub async fn start(opts: PairOptions) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("lifeboat-pg-")
            .tempdir()
            .context("create temp dir")?;
        let root = dir.path().to_path_buf();
        // The postgres user must reach its data directories.
        give_to_postgres(&root)?;
        let bin = PgBin::locate(None)?;
        let secrets = root.join("secrets");
        std::fs::create_dir(&secrets)?;
        for (name, value) in [
            ("su", "su-password-x"),
            ("repl", "repl-password-y"),
            ("token", "token-z"),
        ] {
            std::fs::write(secrets.join(name), value)?;
        }
        let ports = [
            if opts.ports[0] == 0 {
                free_port(&opts.hosts[0])?
            } else {
                opts.ports[0]
            },
            if opts.ports[1] == 0 {
                free_port(&opts.hosts[1])?
            } else {
                opts.ports[1]
            },
        ];
        let mut database_toml = format!(
            "[database]\nengine = \"postgres\"\nmode = \"{}\"\nstrict = {}\n",
            match opts.mode {
                ReplicationMode::Async => "async",
                ReplicationMode::Sync => "sync",
            },
            opts.strict
        );
        if let Some(b) = opts.max_lag_bytes {
            database_toml.push_str(&format!("max_lag_bytes = {b}\n"));
        }
        if let Some(d) = opts.max_lag {
            database_toml.push_str(&format!("max_lag = \"{}ms\"\n", d.as_millis()));
        }
        database_toml.push_str(&format!(
            "\n[database.postgres]\nbin_dir = \"{}\"\nwal_keep_size_mb = 256\nkeep_dir = \"{}\"\n",
            bin.dir.display(),
            root.join("kept").display()
        ));
        for (i, region) in ["a", "b"].iter().enumerate() {
            database_toml.push_str(&format!(
                "\n[database.postgres.regions.{region}]\nhost = \"{}\"\nport = {}\ndata_dir = \"{}\"\npassword_file = \"{}\"\nreplication_password_file = \"{}\"\n",
                opts.hosts[i],
                ports[i],
                root.join(format!("pg-{region}")).display(),
                secrets.join("su").display(),
                secrets.join("repl").display(),
            ));
        }
        let text = format!(
            "[controller]\napi_addr = \"127.0.0.1:0\"\nstate_dir = \"{}\"\n\n[auth]\ntoken_file = \"{}\"\n\n\
             [regions.a]\nagent_addr = \"127.0.0.1:0\"\nrole = \"active\"\n\n[regions.b]\nagent_addr = \"127.0.0.1:0\"\nrole = \"standby\"\n\n{database_toml}",
            root.join("controller").display(),
            secrets.join("token").display()
        );
        let config_path = root.join("lifeboat.toml");
        std::fs::write(&config_path, &text)?;
        let config = Config::parse(&config_path, &text)
            .map_err(|e| anyhow::anyhow!("harness config: {e}"))?;
        let pair = Self {
            data_dirs: vec![root.join("pg-a"), root.join("pg-b")],
            dir,
            bin,
            config,
            database_toml,
            config_text: text,
        };
        spawn_watchdog(&root, &pair.data_dirs)?;
        let settings = ServerSettings {
            wal_keep_size_mb: 256,
        };
        bootstrap_primary(&pair.bin, &pair.instance("a"), &settings).await?;
        bootstrap_replica(
            &pair.bin,
            &pair.instance("a"),
            &pair.instance("b"),
            &settings,
            opts.mode,
        )
        .await?;
        Ok(pair)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The instance of region "a" or "b".
    pub fn instance(&self, region: &str) -> Instance {
        let pg = self
            .config
            .database
            .as_ref()
            .and_then(|d| d.postgres.as_ref())
            .expect("harness config has postgres");
        Instance::from_config(&RegionId::new(region), &pg.regions[region], &pg.dbname)
    }

    /// The data role of region "a" or "b".
    pub fn role(&self, region: &str) -> Result<PostgresRole> {
        PostgresRole::new(&self.config, &RegionId::new(region))
    }

    /// A superuser connection to a region's server.
    pub async fn client(&self, region: &str) -> Result<Client> {
        Ok(self.instance(region).connect().await?)
    }

    pub fn data_dir(&self, region: &str) -> PathBuf {
        self.dir.path().join(format!("pg-{region}"))
    }

    /// Where rejoins keep what they set aside.
    pub fn keep_dir(&self) -> PathBuf {
        self.dir.path().join("kept")
    }

    /// SIGKILL a region's postmaster (a crash, not a shutdown) and wait until its
    /// port no longer answers.
    pub async fn kill9(&self, region: &str) -> Result<()> {
        let dir = self.data_dir(region);
        let pid = server::postmaster_pid(&dir).context("no postmaster.pid: server not running")?;
        let status = std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "kill -KILL {pid} failed");
        let inst = self.instance(region);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect((inst.host.as_str(), inst.port)).is_ok() {
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "port {} still answers after kill -9",
                inst.port
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }
}

/// A detached shell (its own session, so a test runner killing the test's process group
/// does not take it along) that waits for this process to end and then kills any
/// postmaster still running in the pair's data directories and removes the directory.
/// `Drop` is the normal path; this covers a test process killed by a timeout or a signal,
/// where no destructor runs.
fn spawn_watchdog(root: &Path, data_dirs: &[PathBuf]) -> Result<()> {
    let mut script = format!(
        "while kill -0 {} 2>/dev/null; do sleep 1; done\n",
        std::process::id()
    );
    for dir in data_dirs {
        let pidfile = dir.join("postmaster.pid");
        script.push_str(&format!(
            "if [ -f '{pidfile}' ]; then p=$(head -n 1 '{pidfile}'); \
             if grep -q postgres /proc/$p/cmdline 2>/dev/null; then kill -KILL $p; fi; fi\n",
            pidfile = pidfile.display()
        ));
    }
    script.push_str(&format!("sleep 1; rm -rf '{}'\n", root.display()));
    std::process::Command::new("setsid")
        .args(["sh", "-c", &script])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("spawn the harness watchdog")?;
    Ok(())
}

impl Drop for TestPair {
    fn drop(&mut self) {
        for dir in &self.data_dirs {
            if server::postmaster_pid(dir).is_none() {
                continue;
            }
            let mut cmd = if crate::exec::is_root() {
                let mut c = std::process::Command::new("runuser");
                c.args(["-u", "postgres", "--"])
                    .arg(self.bin.path("pg_ctl"));
                c
            } else {
                std::process::Command::new(self.bin.path("pg_ctl"))
            };
            let stopped = cmd
                .args(["stop", "-m", "immediate", "-w", "-t", "20", "-D"])
                .arg(dir)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !stopped && let Some(pid) = server::postmaster_pid(dir) {
                let _ = std::process::Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
        }
    }
}
