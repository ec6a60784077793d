//! Rejoin: turn an old primary into a standby of the new one without silently losing
//! what it alone accepted.
//!
//! Order: the old server is stopped (crash-recovered in single-user mode if it died,
//! never opened to clients); CHECKPOINT on the new primary so its control file carries
//! the new timeline (read from `pg_walfile_name(pg_current_wal_lsn())`); the fork point
//! is found by comparing the new primary's timeline history with the old server's own
//! (timeline 1 has no history file); the WAL the old server wrote past it is measured
//! (LSNs, bytes) and decoded with pg_waldump (transactions committed, rows
//! inserted/updated/deleted per table); if the divergent WAL holds a committed
//! transaction or a row change, or cannot be decoded, the whole old data directory is
//! copied aside (checkpoint and maintenance records alone are only reported); a report (`report.json`, `report.txt`,
//! `divergent-wal.txt`) is written; pg_rewind runs, the directory is made a standby at
//! once (standby.signal, primary_conninfo, primary_slot_name), and only then is the slot
//! ensured on the new primary. A "rejoin pending" marker ([`pending_marker`], outside
//! the data directory, which pg_rewind would clean) is written before the server is
//! stopped and removed once the directory is a configured standby.
//!
//! Guarantees: nothing is discarded before its copy and report are on disk; if the
//! divergence cannot be measured, the copy is kept anyway. From the moment a rejoin
//! starts, the data directory is either a configured standby or has the pending
//! marker, which [`crate::role::PostgresRole`] refuses to start: a rewound
//! (or half-rewound) old primary never comes up as a primary on its old timeline, and
//! nothing that needs the new primary (the slot) can fail between the rewind and the
//! standby configuration.

use crate::bootstrap::configure_standby;
use crate::exec::{PgBin, run_output};
use crate::instance::Instance;
use crate::server::{self, ServerSettings, format_lsn, parse_lsn};
use anyhow::{Context, Result, anyhow, bail};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio_postgres::Client;

/// Row changes to one table found in the divergent WAL.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct RelationChanges {
    pub inserts: u64,
    pub updates: u64,
    pub deletes: u64,
}

/// What a rejoin kept aside and found.
#[derive(Debug, Clone, Serialize)]
pub struct RejoinReport {
    pub region: String,
    pub new_primary: String,
    /// Unix time of the rejoin.
    pub at_unix: u64,
    pub old_timeline: u32,
    pub new_timeline: u32,
    /// Where the new primary's history left the old timeline (None: no fork found,
    /// the old server is simply behind).
    pub fork_lsn: Option<String>,
    /// End of the old server's WAL (its last checkpoint after a clean shutdown).
    pub old_end_lsn: String,
    /// Bytes of WAL the old server wrote past the fork point: what pg_rewind discards.
    pub divergent_bytes: u64,
    pub divergent_records: u64,
    /// Transactions the old server committed past the fork point (lost to clients).
    pub divergent_commits: u64,
    pub divergent_aborts: u64,
    pub rows_inserted: u64,
    pub rows_updated: u64,
    pub rows_deleted: u64,
    /// Per table ("schema.table" when known, else "spc/db/relfilenode").
    pub tables: BTreeMap<String, RelationChanges>,
    /// The copy of the old data directory (before pg_rewind), when one was kept.
    pub kept_copy: Option<PathBuf>,
    /// The directory holding report.json, report.txt and divergent-wal.txt.
    pub report_dir: PathBuf,
    /// Rows written by the divergent transactions that were read back out of the kept
    /// copy into `divergent-rows/<table>.jsonl` (inserted and updated row versions;
    /// deleted rows are only counted). None when extraction was not possible.
    pub rows_extracted: Option<u64>,
    /// pg_rewind's own summary.
    pub rewind_output: String,
}

impl RejoinReport {
    pub fn diverged(&self) -> bool {
        self.divergent_bytes > 0
    }

    pub fn summary(&self) -> String {
        if !self.diverged() {
            return format!(
                "region {} rejoined {} as a standby: no divergent WAL (nothing lost)",
                self.region, self.new_primary
            );
        }
        if self.divergent_commits == 0
            && self
                .tables
                .values()
                .all(|t| *t == RelationChanges::default())
        {
            return format!(
                "region {} rejoined {} as a standby; its {} bytes of divergent WAL ({} .. {}) hold no committed transaction and no row change (checkpoint and maintenance records only): nothing to keep but the report, in {}",
                self.region,
                self.new_primary,
                self.divergent_bytes,
                self.fork_lsn.as_deref().unwrap_or("?"),
                self.old_end_lsn,
                self.report_dir.display()
            );
        }
        format!(
            "region {} rejoined {} as a standby; it had {} bytes of divergent WAL ({} .. {}) with {} committed transactions ({} rows inserted, {} updated, {} deleted) that the new primary lacks; kept in {}",
            self.region,
            self.new_primary,
            self.divergent_bytes,
            self.fork_lsn.as_deref().unwrap_or("?"),
            self.old_end_lsn,
            self.divergent_commits,
            self.rows_inserted,
            self.rows_updated,
            self.rows_deleted,
            self.report_dir.display()
        )
    }
}

/// Points in a rejoin where a test hook ([`RejoinHook`]) runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejoinStep {
    /// The report is written (the pending marker has been since the start); pg_rewind
    /// is next.
    BeforeRewind,
    /// pg_rewind has returned successfully and the directory is a configured standby
    /// holding the new primary's WAL up to its minimum recovery point; the slot on the
    /// new primary is not ensured yet (nor the server started).
    AfterRewind,
}

/// Called at each [`RejoinStep`] (tests use it to crash the new primary at exactly
/// that moment).
pub type RejoinHook = std::sync::Arc<dyn Fn(RejoinStep) + Send + Sync>;

/// The marker a rejoin of `region` writes before pg_rewind and removes once the data
/// directory is a configured standby. While it exists the data directory may be
/// half-rewound, or still the old primary's: it must not be started (as a primary).
/// It lives in the keep directory because pg_rewind removes files the new primary
/// does not have from the data directory.
pub fn pending_marker(keep_root: &Path, region: &str) -> PathBuf {
    keep_root.join(format!("{region}.rejoin-pending"))
}

/// Rejoin the stopped old server `local` (its data directory) under `primary`.
/// `primary_client` is a superuser connection to the new primary.
pub async fn rejoin(
    bin: &PgBin,
    local: &Instance,
    primary: &Instance,
    primary_client: &Client,
    settings: &ServerSettings,
    keep_root: &Path,
    hook: Option<&RejoinHook>,
) -> Result<RejoinReport> {
    let dir = local.data_dir()?.clone();
    // From here on this directory is being demoted: until it is a configured standby
    // the marker says it must not be started (it lacks what the new primary wrote, and
    // pg_rewind may leave it half-done).
    std::fs::create_dir_all(keep_root)
        .with_context(|| format!("create {}", keep_root.display()))?;
    let marker = pending_marker(keep_root, local.region.as_str());
    std::fs::write(
        &marker,
        format!(
            "rejoin of region {} under region {} started; until it completes {} is the old primary's or half-rewound.\n\
             lifeboat will not start it until a rejoin completes.\n",
            local.region,
            primary.region,
            dir.display()
        ),
    )
    .with_context(|| format!("write {}", marker.display()))?;
    server::stop(bin, &dir, "fast").await?;
    server::ensure_clean_shutdown(bin, &dir).await?;
    let old = server::control_data(bin, &dir).await?;

    let new_tli = checkpoint_on_new_timeline(primary_client).await?;
    let old_history = local_history(&dir, old.timeline)?;
    let new_history = remote_history(primary_client, new_tli).await?;
    let fork = fork_point(old.timeline, &old_history, new_tli, &new_history)?;
    let old_end = old.checkpoint_lsn;
    let divergent_bytes = fork.map_or(0, |f| old_end.saturating_sub(f));

    let at_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let report_dir = keep_root.join(format!(
        "{at_unix}-{}-timeline{}",
        local.region, old.timeline
    ));
    std::fs::create_dir_all(&report_dir)
        .with_context(|| format!("create {}", report_dir.display()))?;

    let mut report = RejoinReport {
        region: local.region.to_string(),
        new_primary: primary.region.to_string(),
        at_unix,
        old_timeline: old.timeline,
        new_timeline: new_tli,
        fork_lsn: fork.map(format_lsn),
        old_end_lsn: format_lsn(old_end),
        divergent_bytes,
        divergent_records: 0,
        divergent_commits: 0,
        divergent_aborts: 0,
        rows_inserted: 0,
        rows_updated: 0,
        rows_deleted: 0,
        tables: BTreeMap::new(),
        kept_copy: None,
        report_dir: report_dir.clone(),
        rows_extracted: None,
        rewind_output: String::new(),
    };

    if let Some(fork) = fork.filter(|_| divergent_bytes > 0) {
        // Decode first (read-only: pg_rewind has not run). The whole old data directory
        // is copied aside unless the divergent WAL provably holds nothing a client
        // wrote — no committed transaction, no row change (the end-of-recovery or
        // shutdown checkpoint of a server that stopped after the fork, the common case).
        // Copying it every time kept a full copy per rejoin for ever, and a region that
        // failed over a few dozen times filled its disk.
        let decoded = decode_divergence(bin, &dir, old.timeline, fork, primary_client).await;
        let keep_copy = match &decoded {
            Ok((_, d)) => {
                d.commits > 0 || d.tables.values().any(|t| *t != RelationChanges::default())
            }
            // Not measured: keep everything.
            Err(_) => true,
        };
        if keep_copy {
            let copy = report_dir.join("old-data-dir");
            let mut cp = tokio::process::Command::new("cp");
            cp.arg("-a").arg(&dir).arg(&copy);
            run_output(cp, "cp -a (keep the old data directory)").await?;
            report.kept_copy = Some(copy);
        }
        match decoded {
            Ok((text, d)) => {
                std::fs::write(report_dir.join("divergent-wal.txt"), text)?;
                report.divergent_records = d.records;
                report.divergent_commits = d.commits;
                report.divergent_aborts = d.aborts;
                report.rows_inserted = d.tables.values().map(|t| t.inserts).sum();
                report.rows_updated = d.tables.values().map(|t| t.updates).sum();
                report.rows_deleted = d.tables.values().map(|t| t.deletes).sum();
                report.tables = d.tables;
                // Read the divergent rows themselves out of the kept copy.
                if let Some(copy) = report.kept_copy.clone() {
                    match extract_rows(
                        bin,
                        local,
                        &copy,
                        &report_dir,
                        &report.tables,
                        &d.committed_xids,
                    )
                    .await
                    {
                        Ok(n) => report.rows_extracted = Some(n),
                        Err(e) => tracing::warn!(
                            "could not extract the divergent rows (counts and the copy are kept): {e:#}"
                        ),
                    }
                }
            }
            Err(e) => {
                tracing::warn!(
                    "could not decode the divergent WAL (the data directory copy is kept): {e:#}"
                );
                std::fs::write(
                    report_dir.join("divergent-wal.txt"),
                    format!("pg_waldump failed: {e:#}\n"),
                )?;
            }
        }
    }
    write_report(&report)?;
    if report.diverged() {
        tracing::warn!("{}", report.summary());
    }

    if let Some(hook) = hook {
        hook(RejoinStep::BeforeRewind);
    }
    // pg_rewind copies the new primary's files, its server log among them: keep this
    // server's own log aside and put it back afterwards, so its history stays here.
    let own_log = server::log_file(&dir);
    let log_aside = keep_root.join(format!("server-log-{}.during-rewind", local.region));
    let log_moved = own_log.exists()
        && std::fs::rename(&own_log, &log_aside)
            .map_err(|e| {
                tracing::warn!(
                    "cannot move {} aside during pg_rewind (it will hold the new primary's log): {e}",
                    own_log.display()
                );
            })
            .is_ok();
    // Everything the new primary had flushed before pg_rewind starts is in what it copies.
    let flushed_before = flush_lsn(primary_client).await?;
    let password = primary.superuser_password()?;
    let out = bin
        .run(
            "pg_rewind",
            [
                "-D".as_ref(),
                dir.as_os_str(),
                format!("--source-server={}", primary.superuser_conninfo()).as_ref(),
                "--no-ensure-shutdown".as_ref(),
            ],
            &[("PGPASSWORD", &password)],
        )
        .await
        .with_context(|| format!("pg_rewind {} from {}", dir.display(), primary.addr()));
    if log_moved && let Err(e) = std::fs::rename(&log_aside, &own_log) {
        tracing::warn!(
            "cannot put this server's log back from {}: {e}",
            log_aside.display()
        );
    }
    let out = out?;
    // A standby before anything else can fail (nothing here needs the new primary).
    configure_standby(local, primary, &dir, settings)?;
    std::fs::remove_file(&marker).with_context(|| format!("remove {}", marker.display()))?;
    match top_up_wal(bin, primary_client, &dir, flushed_before).await {
        Ok(n) => tracing::debug!("copied the last {n} WAL segment(s) again after pg_rewind"),
        Err(e) => tracing::warn!(
            "could not copy the WAL written during pg_rewind (streaming will fetch it; without the new primary this standby may not become consistent): {e:#}"
        ),
    }
    if let Some(hook) = hook {
        hook(RejoinStep::AfterRewind);
    }
    report.rewind_output = out.trim().to_owned();
    write_report(&report)?;

    // The new primary keeps WAL for this standby from now on.
    ensure_slot(primary_client, &local.slot_name()).await?;
    Ok(report)
}

/// The new primary's WAL flush position.
async fn flush_lsn(client: &Client) -> Result<u64> {
    let lsn: i64 = client
        .query_one(
            "SELECT pg_wal_lsn_diff(pg_current_wal_flush_lsn(), '0/0')::bigint",
            &[],
        )
        .await
        .context("read the new primary's WAL flush position")?
        .get(0);
    Ok(lsn.max(0) as u64)
}

/// pg_rewind from a live server sets the minimum recovery point to the source's insert
/// position read *after* copying, so WAL inserted (or not yet flushed) while it copied
/// can be missing here; should the new primary die before this standby streams, it could
/// never become consistent. Copy the segments from `from` (flushed before pg_rewind) to
/// the minimum recovery point again once the source has flushed that far. Returns how
/// many segments were copied.
async fn top_up_wal(bin: &PgBin, client: &Client, dir: &Path, from: u64) -> Result<u64> {
    use std::os::unix::fs::PermissionsExt;
    let target = server::control_data(bin, dir).await?.min_recovery_lsn;
    if target <= from {
        return Ok(0);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while flush_lsn(client).await? < target {
        if tokio::time::Instant::now() > deadline {
            bail!(
                "the new primary has not flushed {} after 10 s",
                format_lsn(target)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seg: i64 = client
        .query_one(
            "SELECT pg_size_bytes(current_setting('wal_segment_size'))",
            &[],
        )
        .await?
        .get(0);
    let seg = u64::try_from(seg)
        .ok()
        .filter(|s| *s > 0)
        .context("wal_segment_size")?;
    let mut copied = 0;
    for segno in from / seg..=(target - 1) / seg {
        // pg_walfile_name names the segment holding the byte *before* the LSN: ask for
        // the segment's second byte.
        let name: String = client
            .query_one(
                "SELECT pg_walfile_name($1::text::pg_lsn)",
                &[&format_lsn(segno * seg + 1)],
            )
            .await?
            .get(0);
        let bytes: Vec<u8> = client
            .query_one("SELECT pg_read_binary_file('pg_wal/' || $1)", &[&name])
            .await
            .with_context(|| format!("read pg_wal/{name} on the new primary"))?
            .get(0);
        let path = dir.join("pg_wal").join(&name);
        std::fs::write(&path, &bytes).with_context(|| format!("write {}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("chmod {}", path.display()))?;
        crate::exec::give_to_postgres(&path)?;
        copied += 1;
    }
    Ok(copied)
}

/// The new primary's current timeline, after a CHECKPOINT that ran on it (pg_rewind
/// reads the source's timeline from its control file, which a promotion updates only
/// with its first checkpoint).
async fn checkpoint_on_new_timeline(client: &Client) -> Result<u32> {
    let walfile: String = client
        .query_one("SELECT pg_walfile_name(pg_current_wal_lsn())", &[])
        .await
        .context("read the new primary's current WAL file")?
        .get(0);
    let tli = walfile
        .get(..8)
        .and_then(|t| u32::from_str_radix(t, 16).ok())
        .ok_or_else(|| anyhow!("not a WAL file name: {walfile:?}"))?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        client
            .batch_execute("CHECKPOINT")
            .await
            .context("CHECKPOINT on the new primary")?;
        let in_control: i32 = client
            .query_one("SELECT timeline_id FROM pg_control_checkpoint()", &[])
            .await?
            .get(0);
        if in_control as u32 == tli {
            return Ok(tli);
        }
        if tokio::time::Instant::now() > deadline {
            bail!(
                "the new primary writes timeline {tli} but its last checkpoint is still on timeline {in_control}"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `(timeline, where it ended)` for every timeline before the current one, from the
/// text of a `<tli>.history` file.
fn parse_history(text: &str) -> Result<Vec<(u32, u64)>> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut f = line.split_whitespace();
        let (Some(tli), Some(lsn)) = (f.next(), f.next()) else {
            continue;
        };
        let tli = tli
            .parse::<u32>()
            .with_context(|| format!("bad history line {line:?}"))?;
        out.push((tli, parse_lsn(lsn)?));
    }
    Ok(out)
}

/// The old server's own history (timeline 1 has none).
fn local_history(dir: &Path, tli: u32) -> Result<Vec<(u32, u64)>> {
    if tli <= 1 {
        return Ok(Vec::new());
    }
    let path = dir.join(format!("pg_wal/{tli:08X}.history"));
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "read {} (the old server's timeline history)",
            path.display()
        )
    })?;
    parse_history(&text)
}

/// The new primary's history (timeline 1 has none).
async fn remote_history(client: &Client, tli: u32) -> Result<Vec<(u32, u64)>> {
    if tli <= 1 {
        return Ok(Vec::new());
    }
    let file = format!("pg_wal/{tli:08X}.history");
    let text: String = client
        .query_one("SELECT pg_read_file($1)", &[&file])
        .await
        .with_context(|| format!("read {file} on the new primary"))?
        .get(0);
    parse_history(&text)
}

/// Create a physical slot that reserves WAL now, unless it exists.
pub async fn ensure_slot(client: &Client, slot: &str) -> Result<()> {
    client
        .execute(
            "SELECT pg_create_physical_replication_slot($1, true) WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)",
            &[&slot],
        )
        .await
        .with_context(|| format!("create replication slot {slot}"))?;
    Ok(())
}

/// Where the old server's history and the new primary's part: the end of the last
/// timeline both share, on whichever side it ended first. None when both are on the
/// same timeline with the same history (the old server is at most behind).
fn fork_point(
    old_tli: u32,
    old_history: &[(u32, u64)],
    new_tli: u32,
    new_history: &[(u32, u64)],
) -> Result<Option<u64>> {
    if old_tli == new_tli {
        if old_history != new_history {
            bail!(
                "the old server and the new primary are both on timeline {old_tli} but with different histories ({old_history:?} vs {new_history:?}): two promotions chose the same timeline id; refusing to rewind"
            );
        }
        return Ok(None);
    }
    // timeline -> where it ended (None: still current on that side).
    let ends = |history: &[(u32, u64)], current: u32| -> BTreeMap<u32, Option<u64>> {
        let mut m: BTreeMap<u32, Option<u64>> =
            history.iter().map(|(t, l)| (*t, Some(*l))).collect();
        m.insert(current, None);
        m
    };
    let old = ends(old_history, old_tli);
    let new = ends(new_history, new_tli);
    let Some((tli, old_end)) = old.iter().rev().find(|(t, _)| new.contains_key(t)) else {
        bail!(
            "the new primary's timeline {new_tli} and the old server's timeline {old_tli} share no history: the clusters are unrelated"
        );
    };
    let new_end = new.get(tli).copied().flatten();
    Ok(match (old_end, new_end) {
        (Some(a), Some(b)) => Some((*a).min(b)),
        (Some(a), None) => Some(*a),
        (None, Some(b)) => Some(b),
        (None, None) => None,
    })
}

struct Divergence {
    records: u64,
    commits: u64,
    /// Transaction ids (with subtransactions) committed past the fork point.
    committed_xids: Vec<u32>,
    aborts: u64,
    tables: BTreeMap<String, RelationChanges>,
}

async fn decode_divergence(
    bin: &PgBin,
    dir: &Path,
    tli: u32,
    fork: u64,
    primary: &Client,
) -> Result<(String, Divergence)> {
    let mut cmd = bin.command("pg_waldump");
    cmd.arg("-p")
        .arg(dir.join("pg_wal"))
        .arg("-t")
        .arg(tli.to_string())
        .arg("-s")
        .arg(format_lsn(fork));
    cmd.stdin(std::process::Stdio::null());
    let out = cmd.output().await.context("run pg_waldump")?;
    // pg_waldump exits non-zero when it reaches the end of the WAL; that is expected.
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if text.trim().is_empty() && !out.status.success() {
        return Err(anyhow!("pg_waldump: {}", stderr.trim()));
    }
    let names = relation_names(primary).await.unwrap_or_default();
    let mut d = Divergence {
        records: 0,
        commits: 0,
        committed_xids: Vec::new(),
        aborts: 0,
        tables: BTreeMap::new(),
    };
    for line in text.lines() {
        let Some(rmgr) = line
            .strip_prefix("rmgr: ")
            .map(|r| r.split_whitespace().next().unwrap_or(""))
        else {
            continue;
        };
        d.records += 1;
        let desc = line.split("desc: ").nth(1).unwrap_or("");
        match rmgr {
            "Transaction" if desc.starts_with("COMMIT") => {
                d.commits += 1;
                if let Some(xid) = line
                    .split("tx:")
                    .nth(1)
                    .and_then(|t| t.trim_start().split(',').next())
                    .and_then(|t| t.trim().parse().ok())
                {
                    d.committed_xids.push(xid);
                }
                if let Some(subs) = desc.split("subxacts:").nth(1) {
                    let subs = subs.split(';').next().unwrap_or("");
                    d.committed_xids.extend(
                        subs.split_whitespace()
                            .filter_map(|x| x.parse::<u32>().ok()),
                    );
                }
            }
            "Transaction" if desc.starts_with("ABORT") => d.aborts += 1,
            "Heap" | "Heap2" => {
                let rel = line
                    .split("rel ")
                    .nth(1)
                    .and_then(|r| r.split_whitespace().next())
                    .unwrap_or("?")
                    .to_owned();
                let name = rel
                    .rsplit('/')
                    .next()
                    .and_then(|n| n.parse::<u32>().ok())
                    .and_then(|n| names.get(&n).cloned())
                    .unwrap_or(rel);
                let (i, u, del) = if desc.starts_with("INSERT") {
                    (1, 0, 0)
                } else if let Some(rest) = desc.strip_prefix("MULTI_INSERT") {
                    let n = rest
                        .split("ntuples: ")
                        .nth(1)
                        .and_then(|t| t.split(|c: char| !c.is_ascii_digit()).next())
                        .and_then(|t| t.parse().ok())
                        .unwrap_or(1);
                    (n, 0, 0)
                } else if desc.starts_with("UPDATE") || desc.starts_with("HOT_UPDATE") {
                    (0, 1, 0)
                } else if desc.starts_with("DELETE") {
                    (0, 0, 1)
                } else {
                    (0, 0, 0)
                };
                if i + u + del > 0 {
                    let t = d.tables.entry(name).or_default();
                    t.inserts += i;
                    t.updates += u;
                    t.deletes += del;
                }
            }
            _ => {}
        }
    }
    Ok((text, d))
}

/// relfilenode -> "schema.table" in the database lifeboat connects to.
async fn relation_names(client: &Client) -> Result<BTreeMap<u32, String>> {
    let rows = client
        .query(
            "SELECT pg_relation_filenode(c.oid)::oid, n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE pg_relation_filenode(c.oid) IS NOT NULL",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| (r.get::<_, u32>(0), r.get::<_, String>(1)))
        .collect())
}

fn write_report(report: &RejoinReport) -> Result<()> {
    let json = serde_json::to_string_pretty(report)?;
    std::fs::write(report.report_dir.join("report.json"), json)?;
    let mut txt = format!("{}\n\n", report.summary());
    txt.push_str(&format!(
        "old timeline {}, new timeline {}\nfork point {}\nold end of WAL {}\ndivergent WAL bytes {}\nWAL records {}\ncommitted transactions {}\naborted transactions {}\n",
        report.old_timeline,
        report.new_timeline,
        report.fork_lsn.as_deref().unwrap_or("none"),
        report.old_end_lsn,
        report.divergent_bytes,
        report.divergent_records,
        report.divergent_commits,
        report.divergent_aborts
    ));
    if let Some(n) = report.rows_extracted {
        txt.push_str(&format!(
            "rows read back from the kept copy into divergent-rows/: {n}\n"
        ));
    }
    for (table, c) in &report.tables {
        txt.push_str(&format!(
            "  {table}: {} inserted, {} updated, {} deleted\n",
            c.inserts, c.updates, c.deletes
        ));
    }
    if let Some(copy) = &report.kept_copy {
        txt.push_str(&format!(
            "\nThe old data directory (before pg_rewind) is kept in {}.\nTo read the lost rows: start it on a spare port, e.g.\n  runuser -u postgres -- pg_ctl -D {} -o \"-p 54999 -c listen_addresses='' -c unix_socket_directories='{}'\" start\nand compare its tables with the new primary.\n",
            copy.display(),
            copy.display(),
            copy.display()
        ));
    }
    std::fs::write(report.report_dir.join("report.txt"), txt)?;
    Ok(())
}

/// Start the kept copy briefly — on its unix socket only, never on the network — and
/// write every row version the divergent transactions created to
/// `divergent-rows/<schema.table>.jsonl`. Returns how many rows were written.
async fn extract_rows(
    bin: &PgBin,
    local: &Instance,
    copy: &Path,
    report_dir: &Path,
    tables: &BTreeMap<String, RelationChanges>,
    xids: &[u32],
) -> Result<u64> {
    use crate::exec::sql_ident;
    let wanted: Vec<&String> = tables
        .iter()
        .filter(|(name, c)| name.contains('.') && !name.contains('/') && c.inserts + c.updates > 0)
        .map(|(name, _)| name)
        .collect();
    if wanted.is_empty() || xids.is_empty() {
        return Ok(0);
    }
    // No TCP at all (listen_addresses = ''): the port only names the socket file,
    // which lives in the copy's own directory.
    let port = local.port;
    let socket_dir = server::socket_dir(copy);
    let opts = format!(
        "-c listen_addresses='' -c port={port} -c unix_socket_directories='{}' -c archive_mode=off",
        socket_dir.display()
    );
    let log = copy.join("lifeboat-extract.log");
    bin.run(
        "pg_ctl",
        [
            "start".as_ref(),
            "-D".as_ref(),
            copy.as_os_str(),
            "-l".as_ref(),
            log.as_os_str(),
            "-w".as_ref(),
            "-t".as_ref(),
            "60".as_ref(),
            "-o".as_ref(),
            opts.as_ref(),
        ],
        &[],
    )
    .await
    .context("start the kept copy on its unix socket")?;
    let result = async {
        let mut cfg = tokio_postgres::Config::new();
        cfg.host_path(&socket_dir)
            .port(port)
            .user(&local.user)
            .password(local.superuser_password()?)
            .dbname(&local.dbname)
            .connect_timeout(Duration::from_secs(10));
        let (client, conn) = cfg
            .connect(tokio_postgres::NoTls)
            .await
            .context("connect to the kept copy")?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let list = xids
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let dir = report_dir.join("divergent-rows");
        std::fs::create_dir_all(&dir)?;
        let mut total = 0u64;
        for name in wanted {
            let Some((schema, table)) = name.split_once('.') else {
                continue;
            };
            let sql = format!(
                "SELECT row_to_json(t)::text FROM {}.{} t WHERE t.xmin::text::bigint IN ({list})",
                sql_ident(schema),
                sql_ident(table)
            );
            let rows = client
                .query(&sql, &[])
                .await
                .with_context(|| format!("read {name} in the kept copy"))?;
            let mut out = String::new();
            for r in &rows {
                out.push_str(&r.get::<_, String>(0));
                out.push('\n');
            }
            std::fs::write(dir.join(format!("{name}.jsonl")), out)?;
            total += rows.len() as u64;
        }
        Ok::<u64, anyhow::Error>(total)
    }
    .await;
    // Always stop the copy again, whatever happened.
    let _ = server::stop(bin, copy, "fast").await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fork_point_handles_timeline_one_and_both_directions() {
        // Old on 1, new promoted to 2 at 0/3000000.
        let h2 = vec![(1, 0x300_0000)];
        assert_eq!(fork_point(1, &[], 2, &h2).expect("fork"), Some(0x300_0000));
        // Old on 2 (left 1 at 0/3000000), new still on timeline 1: no 00000001.history.
        assert_eq!(fork_point(2, &h2, 1, &[]).expect("fork"), Some(0x300_0000));
        // Old on 2, new on 3 (left 2 at 0/5000000).
        let h3 = vec![(1, 0x300_0000), (2, 0x500_0000)];
        assert_eq!(fork_point(2, &h2, 3, &h3).expect("fork"), Some(0x500_0000));
        // Same timeline, same history: nothing diverged.
        assert_eq!(fork_point(2, &h2, 2, &h2).expect("same"), None);
        // Same timeline id from two different promotions: refused.
        let other2 = vec![(1, 0x400_0000)];
        assert!(fork_point(2, &h2, 2, &other2).is_err());
        // Siblings: both left 1, at different points.
        assert_eq!(
            fork_point(3, &[(1, 0x400_0000)], 2, &h2).expect("siblings"),
            Some(0x300_0000)
        );
        assert_eq!(
            parse_history("1\t0/3000000\tno recovery target specified\n\n2\t0/5000000\tx\n")
                .expect("parse"),
            h3
        );
    }
}
