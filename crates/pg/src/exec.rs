//! Running PostgreSQL's own programs (initdb, pg_ctl, pg_basebackup, pg_rewind,
//! pg_waldump, pg_controldata) the way the server needs them: as the `postgres` user
//! when lifeboat runs as root (the server refuses to run as root), on files that user owns.
//!
//! Guarantees: a failed program is an error that names the program and carries its
//! stderr; passwords reach programs through the environment (`PGPASSWORD`), never argv.

use anyhow::{Context, Result, anyhow, bail};
use std::ffi::OsStr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Where the server binaries are.
#[derive(Debug, Clone)]
pub struct PgBin {
    pub dir: PathBuf,
}

impl PgBin {
    /// The configured directory, or the newest `/usr/lib/postgresql/*/bin`.
    pub fn locate(configured: Option<&Path>) -> Result<Self> {
        if let Some(dir) = configured {
            if !dir.join("pg_ctl").exists() {
                bail!("no pg_ctl in the configured bin_dir {}", dir.display());
            }
            return Ok(Self {
                dir: dir.to_path_buf(),
            });
        }
        let mut best: Option<(u32, PathBuf)> = None;
        let entries = std::fs::read_dir("/usr/lib/postgresql").context(
            "no PostgreSQL server binaries in /usr/lib/postgresql (install the Debian package `postgresql`, or set database.postgres.bin_dir)",
        )?;
        for entry in entries.flatten() {
            let Some(version) = entry
                .file_name()
                .to_str()
                .and_then(|v| v.parse::<u32>().ok())
            else {
                continue;
            };
            let bin = entry.path().join("bin");
            if bin.join("pg_ctl").exists() && best.as_ref().is_none_or(|(v, _)| version > *v) {
                best = Some((version, bin));
            }
        }
        best.map(|(_, dir)| Self { dir })
            .ok_or_else(|| anyhow!("no /usr/lib/postgresql/*/bin/pg_ctl found (install the Debian package `postgresql`)"))
    }

    pub fn path(&self, program: &str) -> PathBuf {
        self.dir.join(program)
    }

    /// A command running `program` as the postgres user when we are root.
    pub fn command(&self, program: &str) -> tokio::process::Command {
        as_postgres(self.path(program))
    }

    /// Run `program args…` to completion; error (with stderr) unless it exits 0.
    pub async fn run<I, S>(&self, program: &str, args: I, env: &[(&str, &str)]) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.command(program);
        cmd.args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        run_output(cmd, program).await
    }
}

/// Run a prepared command; stdout on success, an error naming `what` with stderr otherwise.
pub async fn run_output(mut cmd: tokio::process::Command, what: &str) -> Result<String> {
    cmd.stdin(std::process::Stdio::null()).kill_on_drop(true);
    let out = cmd
        .output()
        .await
        .with_context(|| format!("cannot run {what}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        bail!(
            "{what} failed ({}): {}{}",
            out.status,
            stderr.trim(),
            if stderr.trim().is_empty() {
                stdout.trim()
            } else {
                ""
            }
        );
    }
    // Programs like pg_rewind report on stderr; keep both.
    Ok(format!("{stdout}{}", String::from_utf8_lossy(&out.stderr)))
}

/// True when this process runs as root.
pub fn is_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// uid and gid of the `postgres` user.
pub fn postgres_ids() -> Result<(u32, u32)> {
    static IDS: OnceLock<Option<(u32, u32)>> = OnceLock::new();
    let ids = IDS.get_or_init(|| {
        let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
        passwd.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.first() == Some(&"postgres") && f.len() > 3)
                .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
                .flatten()
        })
    });
    ids.ok_or_else(|| anyhow!("there is no `postgres` user to run the server as (install the Debian package `postgresql`)"))
}

fn as_postgres(program: PathBuf) -> tokio::process::Command {
    if is_root() {
        let mut c = tokio::process::Command::new("runuser");
        c.arg("-u").arg("postgres").arg("--").arg(program);
        c
    } else {
        tokio::process::Command::new(program)
    }
}

/// Give `path` to the postgres user (recursively) when we are root; a no-op otherwise.
pub fn give_to_postgres(path: &Path) -> Result<()> {
    if !is_root() {
        return Ok(());
    }
    let (uid, gid) = postgres_ids()?;
    chown_tree(path, uid, gid).with_context(|| format!("chown {} to postgres", path.display()))
}

fn chown_tree(path: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))?;
    let meta = std::fs::symlink_metadata(path)?;
    if meta.is_dir() {
        for entry in std::fs::read_dir(path)? {
            chown_tree(&entry?.path(), uid, gid)?;
        }
    }
    Ok(())
}

/// Write a file inside a data directory: mode 0600, owned by postgres.
pub fn write_pg_file(path: &Path, contents: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, contents).with_context(|| format!("write {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod {}", path.display()))?;
    give_to_postgres(path)
}

/// Quote a value for postgresql.conf: `'…'` with `'` doubled.
pub fn conf_quote(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "''"))
}

/// Quote a value inside a libpq conninfo string.
pub fn conninfo_quote(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// Quote an SQL string literal.
pub fn sql_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// Quote an SQL identifier.
pub fn sql_ident(value: &str) -> String {
    format!("\"{}\"", value.replace('"', "\"\""))
}
