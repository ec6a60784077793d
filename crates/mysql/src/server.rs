//! A MariaDB server that lifeboat manages itself (`datadir` set in the config):
//! create it (`mariadb-install-db`), write its option file, start it, stop it.
//!
//! Guarantees:
//! - the option file always starts the server with `read_only=ON`: a managed server
//!   that restarts (after a fence, a crash, a reboot) never takes writes until lifeboat
//!   activates it under a lease;
//! - binlog settings for GTID failover are always on: `log_bin`, `log_slave_updates`,
//!   `gtid_strict_mode`, `binlog_format=ROW`, a unique `server_id`;
//! - the server's own files (option file, pid, socket, log) live next to the data
//!   directory, so several servers can run side by side on one machine.

use anyhow::{Context as _, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::time::Instant;

/// Where a managed server's files are.
#[derive(Debug, Clone)]
pub struct ServerFiles {
    pub datadir: PathBuf,
    pub bin_dir: Option<PathBuf>,
}

impl ServerFiles {
    pub fn new(datadir: &Path, bin_dir: Option<&Path>) -> Self {
        Self {
            datadir: datadir.to_path_buf(),
            bin_dir: bin_dir.map(Path::to_path_buf),
        }
    }
    fn sibling(&self, suffix: &str) -> PathBuf {
        let mut s = self.datadir.as_os_str().to_owned();
        s.push(suffix);
        PathBuf::from(s)
    }
    /// The option file lifeboat writes (`<datadir>.cnf`).
    pub fn cnf(&self) -> PathBuf {
        self.sibling(".cnf")
    }
    pub fn pid_file(&self) -> PathBuf {
        self.sibling(".pid")
    }
    pub fn socket(&self) -> PathBuf {
        self.sibling(".sock")
    }
    pub fn error_log(&self) -> PathBuf {
        self.sibling(".err")
    }
    pub fn init_file(&self) -> PathBuf {
        self.sibling(".init.sql")
    }
    /// The server's own temporary directory (servers side by side must not share /tmp
    /// names).
    pub fn tmpdir(&self) -> PathBuf {
        self.sibling(".tmp")
    }

    /// Resolve a MariaDB program (`mariadbd`, `mariadb-binlog`, …).
    pub fn program(&self, name: &str) -> PathBuf {
        program(self.bin_dir.as_deref(), name)
    }

    pub fn initialized(&self) -> bool {
        self.datadir.join("mysql").is_dir()
    }

    /// The server's pid, when it runs.
    pub fn running_pid(&self) -> Option<i32> {
        let pid: i32 = std::fs::read_to_string(self.pid_file())
            .ok()?
            .trim()
            .parse()
            .ok()?;
        alive(pid).then_some(pid)
    }

    /// Create the data directory with `mariadb-install-db` (no-op when it exists).
    pub async fn install(&self) -> anyhow::Result<()> {
        if self.initialized() {
            return Ok(());
        }
        for dir in [&self.datadir, &self.tmpdir()] {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let mut cmd = tokio::process::Command::new(self.program("mariadb-install-db"));
        cmd.arg("--no-defaults")
            .arg(format!("--datadir={}", self.datadir.display()))
            .arg(format!("--tmpdir={}", self.tmpdir().display()))
            .arg("--skip-test-db");
        if is_root() {
            cmd.arg("--user=root");
        }
        let out = cmd
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .context("running mariadb-install-db (is the mariadb-server package installed?)")?;
        if !out.status.success() {
            bail!(
                "mariadb-install-db for {} failed: {}{}",
                self.datadir.display(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// Write the option file.
    pub fn write_cnf(&self, bind: &str, port: u16, server_id: u32) -> anyhow::Result<()> {
        std::fs::create_dir_all(self.tmpdir()).context("creating the server's tmpdir")?;
        let mut cnf = format!(
            "# Written by lifeboat: the server starts read-only; lifeboat makes it writable.\n\
             [mariadbd]\n\
             datadir={datadir}\n\
             tmpdir={tmp}\n\
             port={port}\n\
             bind-address={bind}\n\
             socket={socket}\n\
             pid-file={pid}\n\
             log-error={err}\n\
             server-id={server_id}\n\
             log-bin=mariadb-bin\n\
             relay-log=relay-bin\n\
             log-slave-updates=ON\n\
             gtid-strict-mode=ON\n\
             binlog-format=ROW\n\
             binlog-row-image=FULL\n\
             read-only=ON\n\
             skip-name-resolve=ON\n\
             rpl-semi-sync-slave-enabled=ON\n\
             rpl-semi-sync-master-wait-point=AFTER_SYNC\n\
             innodb-buffer-pool-size=32M\n\
             innodb-log-file-size=16M\n\
             performance-schema=OFF\n\
             max-connections=200\n",
            datadir = self.datadir.display(),
            socket = self.socket().display(),
            tmp = self.tmpdir().display(),
            pid = self.pid_file().display(),
            err = self.error_log().display(),
        );
        if is_root() {
            cnf.push_str("user=root\n");
        }
        std::fs::write(self.cnf(), cnf).with_context(|| format!("writing {}", self.cnf().display()))
    }

    /// Start the server (no-op when it runs). `init_sql`, when given, runs once at this
    /// start (creating lifeboat's accounts on a new server).
    pub async fn start(&self, init_sql: Option<&str>) -> anyhow::Result<()> {
        match self.start_once(init_sql).await {
            Err(e) if self.log_tail().contains("--tc-heuristic-recover") => {
                // A server killed in the middle of a commit (the region guard's SIGKILL,
                // a crash) can be left with a transaction prepared in InnoDB that its
                // binlog cannot resolve, and then refuses to start. That transaction never
                // returned to its client: roll it back (mariadbd exits after the
                // recovery), say so, and start again.
                tracing::warn!(
                    datadir = %self.datadir.display(),
                    "mariadbd refused to start over an in-doubt transaction a kill left prepared; rolling it back (it was never acknowledged): {e:#}"
                );
                let recover = tokio::process::Command::new(self.program("mariadbd"))
                    .arg(format!("--defaults-file={}", self.cnf().display()))
                    .arg("--tc-heuristic-recover=ROLLBACK")
                    .stdin(std::process::Stdio::null())
                    .kill_on_drop(true)
                    .output();
                let out = tokio::time::timeout(Duration::from_secs(120), recover)
                    .await
                    .context("mariadbd --tc-heuristic-recover=ROLLBACK did not exit within 120s")?
                    .context("running mariadbd --tc-heuristic-recover=ROLLBACK")?;
                tracing::warn!(
                    datadir = %self.datadir.display(),
                    "heuristic recovery exited with {}: {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).lines().rev().take(3).collect::<Vec<_>>().join(" | ")
                );
                self.start_once(init_sql).await
            }
            other => other,
        }
    }

    async fn start_once(&self, init_sql: Option<&str>) -> anyhow::Result<()> {
        if self.running_pid().is_some() {
            return Ok(());
        }
        let _ = std::fs::remove_file(self.pid_file());
        let mut cmd = std::process::Command::new(self.program("mariadbd"));
        cmd.arg(format!("--defaults-file={}", self.cnf().display()));
        if let Some(sql) = init_sql {
            std::fs::write(self.init_file(), sql).context("writing the init file")?;
            cmd.arg(format!("--init-file={}", self.init_file().display()));
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.error_log())
            .context("opening the error log")?;
        let log2 = log.try_clone().context("cloning the log handle")?;
        let mut child = cmd
            .stdin(std::process::Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .context("starting mariadbd (is the mariadb-server package installed?)")?;
        let pid = child.id();
        // Reap the child when it exits so that it never lingers as a zombie (which would
        // still look alive to kill(pid, 0)).
        std::thread::spawn(move || {
            let _ = child.wait();
        });
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Ok(p) = std::fs::read_to_string(self.pid_file())
                && p.trim().parse::<i32>().ok().is_some_and(alive)
            {
                break;
            }
            if !alive(i32::try_from(pid).unwrap_or(i32::MAX)) {
                bail!(
                    "mariadbd for {} exited during start-up; its log says:\n{}",
                    self.datadir.display(),
                    self.log_tail()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "mariadbd for {} did not start within 120s",
                    self.datadir.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// The last lines of the server's error log (for error messages).
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.error_log()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// Stop the server: SIGTERM, then SIGKILL after `grace`. Returns once it is gone.
    pub async fn stop(&self, grace: Duration) -> anyhow::Result<()> {
        let Some(pid) = self.running_pid() else {
            return Ok(());
        };
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while alive(pid) {
            if Instant::now() > deadline {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                let hard = Instant::now() + Duration::from_secs(10);
                while alive(pid) {
                    if Instant::now() > hard {
                        bail!("mariadbd pid {pid} survived SIGKILL");
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    /// kill -9 (tests, and Drop of the test harness).
    pub fn kill_now(&self) {
        if let Some(pid) = self.running_pid() {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

/// True while `pid` exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            // "pid (comm) S ...": the state follows the last ')'.
            let state = stat.rsplit_once(')').map(|(_, rest)| rest.trim_start());
            !matches!(state.and_then(|s| s.chars().next()), Some('Z' | 'X') | None)
        }
        Err(_) => false,
    }
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A MariaDB program in `bin_dir`, else the first of PATH, /usr/sbin, /usr/bin.
pub fn program(bin_dir: Option<&Path>, name: &str) -> PathBuf {
    if let Some(dir) = bin_dir {
        return dir.join(name);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(name))
}
