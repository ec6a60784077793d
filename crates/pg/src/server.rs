//! Control of a server whose data directory lifeboat manages: its configuration files
//! (`lifeboat.conf`, pg_hba.conf, postgresql.auto.conf entries), start, stop, crash
//! recovery, and reading its control file.
//!
//! Guarantees: `lifeboat.conf` always carries *this* instance's address, port and
//! socket directory (it is rewritten after a base backup or a rewind copied the other
//! server's files); the unix socket lives in the data directory, never in
//! /var/run/postgresql; start and stop wait for the server to really be up or down.

use crate::exec::{PgBin, conf_quote, write_pg_file};
use crate::instance::Instance;
use anyhow::{Context, Result, anyhow, bail};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Settings lifeboat writes for every server it manages.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub wal_keep_size_mb: u64,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            wal_keep_size_mb: 1024,
        }
    }
}

/// The file postgresql.conf includes; lifeboat owns it.
pub const LIFEBOAT_CONF: &str = "lifeboat.conf";
const FENCE_BEGIN: &str = "# lifeboat fence begin";
const FENCE_END: &str = "# lifeboat fence end";

/// The unix socket directory: inside the data directory (never /var/run/postgresql,
/// which two servers on one machine would share), in `pg_stat_tmp` because that is the
/// one subdirectory whose contents pg_basebackup and pg_rewind skip (they would try to
/// copy the socket file and fail).
pub fn socket_dir(dir: &Path) -> PathBuf {
    dir.join("pg_stat_tmp")
}

/// Write `lifeboat.conf` for `inst` into `dir` and make sure postgresql.conf includes it.
pub fn write_lifeboat_conf(inst: &Instance, dir: &Path, settings: &ServerSettings) -> Result<()> {
    let text = format!(
        "# Written by lifeboat for region {region}; rewritten at every bootstrap and rejoin.\n\
         listen_addresses = {host}\n\
         port = {port}\n\
         unix_socket_directories = {sock}\n\
         wal_level = replica\n\
         wal_log_hints = on\n\
         wal_keep_size = '{keep}MB'\n\
         max_wal_senders = 10\n\
         max_replication_slots = 10\n\
         hot_standby = on\n\
         hot_standby_feedback = on\n\
         password_encryption = 'scram-sha-256'\n\
         wal_receiver_status_interval = '1s'\n\
         wal_sender_timeout = '10s'\n\
         wal_receiver_timeout = '10s'\n\
         wal_retrieve_retry_interval = '1s'\n\
         logging_collector = off\n",
        region = inst.region,
        host = conf_quote(&inst.host),
        port = inst.port,
        sock = conf_quote(&socket_dir(dir).display().to_string()),
        keep = settings.wal_keep_size_mb,
    );
    write_pg_file(&dir.join(LIFEBOAT_CONF), &text)?;
    let main = dir.join("postgresql.conf");
    let current =
        std::fs::read_to_string(&main).with_context(|| format!("read {}", main.display()))?;
    let include = format!("include_if_exists = '{LIFEBOAT_CONF}'");
    if !current.lines().any(|l| l.trim() == include) {
        write_pg_file(
            &main,
            &format!("{current}\n# lifeboat's settings win over the ones above\n{include}\n"),
        )?;
    }
    Ok(())
}

/// pg_hba.conf of a lifeboat-bootstrapped server: password (SCRAM) everywhere, the
/// replication user may stream.
pub fn write_hba(inst: &Instance, dir: &Path) -> Result<()> {
    let text = format!(
        "# Written by lifeboat for region {region}.\n\
         # TYPE  DATABASE     USER  ADDRESS  METHOD\n\
         local   all          all            scram-sha-256\n\
         host    replication  {repl}  all    scram-sha-256\n\
         host    all          all   all      scram-sha-256\n",
        region = inst.region,
        repl = inst.replication_user,
    );
    write_pg_file(&dir.join("pg_hba.conf"), &text)
}

/// Put a reject-everything block at the top of an hba file (idempotent). Returns true
/// when the file changed.
pub fn close_hba(path: &Path, epoch: u64) -> Result<bool> {
    let current =
        std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    if current.contains(FENCE_BEGIN) {
        return Ok(false);
    }
    let text = format!(
        "{FENCE_BEGIN} (epoch {epoch}): this server is fenced, every connection is refused.\n\
         local all all reject\n\
         host all all all reject\n\
         {FENCE_END}\n{current}"
    );
    write_pg_file(path, &text)?;
    Ok(true)
}

/// Remove lifeboat's fence block from an hba file. Returns true when the file changed.
pub fn open_hba(path: &Path) -> Result<bool> {
    let current =
        std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    let (Some(b), Some(e)) = (current.find(FENCE_BEGIN), current.find(FENCE_END)) else {
        return Ok(false);
    };
    let end = current[e..].find('\n').map_or(current.len(), |n| e + n + 1);
    let text = format!("{}{}", &current[..b], &current[end..]);
    write_pg_file(path, &text)?;
    Ok(true)
}

/// Set (Some) or remove (None) parameters in postgresql.auto.conf while the server is
/// down (ALTER SYSTEM's file; later lines win, so old entries are removed first).
pub fn set_auto_conf(dir: &Path, entries: &[(&str, Option<&str>)]) -> Result<()> {
    let path = dir.join("postgresql.auto.conf");
    let current = std::fs::read_to_string(&path).unwrap_or_default();
    let mut lines: Vec<String> = current
        .lines()
        .filter(|l| {
            let key = l.split('=').next().unwrap_or("").trim();
            !entries.iter().any(|(k, _)| *k == key)
        })
        .map(str::to_owned)
        .collect();
    for (k, v) in entries {
        if let Some(v) = v {
            lines.push(format!("{k} = {}", conf_quote(v)));
        }
    }
    write_pg_file(&path, &(lines.join("\n") + "\n"))
}

pub fn log_file(dir: &Path) -> PathBuf {
    dir.join("lifeboat-server.log")
}

/// Is process `pid` alive (and not a zombie waiting to be reaped)?
pub fn process_alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    !matches!(state, Some('Z' | 'X') | None)
}

/// Is a postmaster running on this data directory? A postmaster.pid left by a killed
/// postmaster (dead or a zombie) does not count.
pub async fn is_running(bin: &PgBin, dir: &Path) -> Result<bool> {
    match postmaster_pid(dir) {
        None => return Ok(false),
        Some(pid) if !process_alive(pid) => return Ok(false),
        Some(_) => {}
    }
    let mut cmd = bin.command("pg_ctl");
    cmd.arg("status").arg("-D").arg(dir);
    cmd.stdin(std::process::Stdio::null());
    let out = cmd.output().await.context("run pg_ctl status")?;
    match out.status.code() {
        Some(0) => Ok(true),
        Some(3) => Ok(false),
        _ => bail!(
            "pg_ctl status -D {}: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ),
    }
}

/// Start the server and wait until it accepts connections.
pub async fn start(bin: &PgBin, dir: &Path) -> Result<()> {
    if is_running(bin, dir).await? {
        return Ok(());
    }
    let log = log_file(dir);
    // A postmaster killed with -9 leaves children behind for a moment; they keep the
    // shared memory and pg_ctl refuses to start until they are gone. Retry briefly.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let res = bin
            .run(
                "pg_ctl",
                [
                    "start".as_ref(),
                    "-D".as_ref(),
                    dir.as_os_str(),
                    "-l".as_ref(),
                    log.as_os_str(),
                    "-w".as_ref(),
                    "-t".as_ref(),
                    "120".as_ref(),
                ],
                &[],
            )
            .await;
        match res {
            Ok(_) => return Ok(()),
            Err(e) if tokio::time::Instant::now() < deadline && still_in_use(&log) => {
                tracing::debug!("waiting for an old postmaster's children to exit: {e:#}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => {
                let tail = tail_of(&log, 2000);
                return Err(e.context(format!(
                    "start PostgreSQL in {}; server log ends with:\n{tail}",
                    dir.display()
                )));
            }
        }
    }
}

fn still_in_use(log: &Path) -> bool {
    let tail = tail_of(log, 600);
    tail.contains("pre-existing shared memory block")
        || tail.contains("already in use")
        || tail.contains("lock file")
}

/// The last `n` bytes of a log file (for error messages).
pub fn tail_of(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut start = text.len().saturating_sub(n);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    text[start..].to_owned()
}

/// Stop the server with `mode` ("fast" or "immediate") and wait until it is down.
/// Stopping a stopped server is fine.
pub async fn stop(bin: &PgBin, dir: &Path, mode: &str) -> Result<()> {
    stop_within(bin, dir, mode, 60).await
}

/// `pg_ctl stop -m mode`, waiting at most `wait_secs` seconds for the server to be down
/// (an error if it is not).
pub async fn stop_within(bin: &PgBin, dir: &Path, mode: &str, wait_secs: u32) -> Result<()> {
    if !is_running(bin, dir).await? {
        return Ok(());
    }
    let wait = wait_secs.to_string();
    bin.run(
        "pg_ctl",
        [
            "stop".as_ref(),
            "-D".as_ref(),
            dir.as_os_str(),
            "-m".as_ref(),
            mode.as_ref(),
            "-w".as_ref(),
            "-t".as_ref(),
            wait.as_ref(),
        ],
        &[],
    )
    .await
    .map(|_| ())
    .or_else(|e| {
        // A postmaster that died while we waited (killed, crashed) is stopped too.
        if postmaster_pid(dir).is_none_or(|pid| !process_alive(pid)) {
            Ok(())
        } else {
            Err(e)
        }
    })
    .with_context(|| format!("stop PostgreSQL in {} ({mode})", dir.display()))
}

/// The postmaster's pid from postmaster.pid, when the file exists.
pub fn postmaster_pid(dir: &Path) -> Option<u32> {
    std::fs::read_to_string(dir.join("postmaster.pid"))
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

/// What pg_controldata says about a stopped cluster.
#[derive(Debug, Clone)]
pub struct ControlData {
    pub state: String,
    pub checkpoint_lsn: u64,
    pub redo_lsn: u64,
    pub timeline: u32,
    /// How far recovery must replay before the cluster is consistent (0/0: no limit).
    pub min_recovery_lsn: u64,
}

pub async fn control_data(bin: &PgBin, dir: &Path) -> Result<ControlData> {
    let out = bin
        .run(
            "pg_controldata",
            ["-D".as_ref(), dir.as_os_str()],
            &[("LC_ALL", "C")],
        )
        .await?;
    let field = |name: &str| -> Result<String> {
        out.lines()
            .find_map(|l| {
                l.strip_prefix(name)
                    .map(|v| v.trim_start_matches(':').trim().to_owned())
            })
            .ok_or_else(|| anyhow!("pg_controldata printed no {name:?}"))
    };
    Ok(ControlData {
        state: field("Database cluster state")?,
        checkpoint_lsn: parse_lsn(&field("Latest checkpoint location")?)?,
        redo_lsn: parse_lsn(&field("Latest checkpoint's REDO location")?)?,
        timeline: field("Latest checkpoint's TimeLineID")?
            .parse()
            .context("timeline")?,
        min_recovery_lsn: parse_lsn(&field("Minimum recovery ending location")?)?,
    })
}

/// Bring a crashed (not cleanly shut down) cluster to a clean shutdown by crash
/// recovery in single-user mode, without ever opening it to clients.
pub async fn ensure_clean_shutdown(bin: &PgBin, dir: &Path) -> Result<()> {
    let cd = control_data(bin, dir).await?;
    if cd.state.starts_with("shut down") {
        return Ok(());
    }
    // A standby (e.g. a rewound one that never finished starting) cannot recover in
    // single-user mode ("standby mode is not supported by single-user servers"); it
    // recovers as a standby, which never accepts writes, and is stopped again.
    if dir.join("standby.signal").exists() {
        start(bin, dir).await?;
        return stop(bin, dir, "fast").await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut cmd = bin.command("postgres");
        cmd.args(["--single", "-F", "-c", "exit_on_error=false", "-D"])
            .arg(dir)
            .arg("template1");
        match crate::exec::run_output(cmd, "postgres --single (crash recovery)").await {
            Ok(_) => return Ok(()),
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::debug!("single-user crash recovery not possible yet: {e:#}");
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// "0/3000148" -> 0x3000148.
pub fn parse_lsn(text: &str) -> Result<u64> {
    let (hi, lo) = text
        .trim()
        .split_once('/')
        .ok_or_else(|| anyhow!("not an LSN: {text:?}"))?;
    let hi = u64::from_str_radix(hi, 16).with_context(|| format!("not an LSN: {text:?}"))?;
    let lo = u64::from_str_radix(lo, 16).with_context(|| format!("not an LSN: {text:?}"))?;
    Ok((hi << 32) | lo)
}

pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsns_round_trip() {
        assert_eq!(parse_lsn("0/3000148").expect("lsn"), 0x300_0148);
        assert_eq!(parse_lsn("1/0").expect("lsn"), 1 << 32);
        assert_eq!(format_lsn(0x1_0300_0148), "1/3000148");
        assert!(parse_lsn("nope").is_err());
    }

    #[test]
    fn hba_fence_block_is_added_once_and_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pg_hba.conf");
        std::fs::write(&path, "host all all all scram-sha-256\n").expect("write");
        assert!(close_hba(&path, 3).expect("close"));
        assert!(!close_hba(&path, 4).expect("close again"));
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(text.starts_with(FENCE_BEGIN), "{text}");
        assert!(text.contains("host all all all reject"));
        assert!(open_hba(&path).expect("open"));
        assert_eq!(
            std::fs::read_to_string(&path).expect("read"),
            "host all all all scram-sha-256\n"
        );
    }
}
