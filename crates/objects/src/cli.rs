//! `lifeboat objects status | retry | backfill`: what the CLI subcommands run.
//!
//! `status` and `retry` only touch the region's state database (safe while the
//! agent runs: SQLite in WAL mode, the running replicator picks retried rows up
//! within a second). `backfill` copies in this process, with a progress bar.

use crate::db::{self, Db};
use crate::replicator::{Replicator, db_path};
use anyhow::Context as _;
use lifeboat_config::Config;
use lifeboat_core::RegionId;
use std::fmt::Write as _;
use std::path::Path;
use tokio_util::sync::CancellationToken;

fn open_db(cfg: &Config, region: &RegionId, state_dir: &Path) -> anyhow::Result<Db> {
    let objects = cfg
        .objects
        .as_ref()
        .context("the config has no [objects] section")?;
    if !objects.stores.contains_key(region.as_str()) {
        anyhow::bail!("region {region} has no object store in [objects.stores]");
    }
    Db::open(&db_path(state_dir))
}

/// Pending and failed objects of `region`, with counts; JSON when `json`.
pub async fn status(
    cfg: &Config,
    region: &RegionId,
    state_dir: &Path,
    json: bool,
) -> anyhow::Result<String> {
    let db = open_db(cfg, region, state_dir)?;
    status_of_db(&db, region, json)
}

/// The status report of an open state database.
pub fn status_of_db(db: &Db, region: &RegionId, json: bool) -> anyhow::Result<String> {
    let counts = db.counts()?;
    let rows = db.unfinished(200)?;
    let mode = db
        .get_meta("mode")?
        .unwrap_or_else(|| "unassigned".to_owned());
    // Entries the last full listing could not name as keys (not replicated).
    let unlisted: Vec<String> = db
        .get_meta("unlisted")?
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    if json {
        return Ok(serde_json::to_string_pretty(&serde_json::json!({
            "region": region,
            "mode": mode,
            "counts": counts,
            "unfinished": rows,
            "unlisted": unlisted,
        }))?);
    }
    let mut out = String::new();
    let lag = counts
        .oldest_pending_ms
        .map_or(0.0, |t| (db::now_ms() - t) as f64 / 1000.0);
    let _ = writeln!(
        out,
        "objects of region {region} ({mode}): {} pending ({} bytes, oldest {lag:.1}s), {} failed, {} completed, {} local objects, {} replicas",
        counts.pending_ops,
        counts.pending_bytes,
        counts.failed_ops,
        counts.completed_ops,
        counts.local_objects,
        counts.replica_objects
    );
    if !unlisted.is_empty() {
        let _ = writeln!(
            out,
            "{} entr{} of the store could not be listed as keys (not replicated):",
            unlisted.len(),
            if unlisted.len() == 1 { "y" } else { "ies" }
        );
        for u in &unlisted {
            let _ = writeln!(out, "  UNLISTED  {}", shown_key(u));
        }
    }
    if counts.backfill_total > 0 {
        let _ = writeln!(
            out,
            "backfill: {}/{} done",
            counts.backfill_done, counts.backfill_total
        );
    }
    if !rows.is_empty() {
        let _ = writeln!(
            out,
            "{:<9} {:<6} {:<8} {:>12} {:>8}  {:<40} ERROR",
            "STATUS", "OP", "TO", "BYTES", "ATTEMPTS", "KEY"
        );
        for r in &rows {
            let _ = writeln!(
                out,
                "{:<9} {:<6} {:<8} {:>12} {:>8}  {:<40} {}",
                r.status,
                r.op,
                r.dest,
                r.size,
                r.attempts,
                shown_key(&r.key),
                r.last_error.as_deref().unwrap_or("")
            );
        }
        if rows.len() as u64 > 199 {
            let _ = writeln!(out, "(first 200 shown)");
        }
    }
    Ok(out)
}

/// A key as the text table shows it: as it is, unless it has characters a terminal
/// would not show faithfully (control characters, a leading or trailing space), then
/// quoted and escaped (`"a\u{1}b"`). `--json` always has the key exact.
fn shown_key(key: &str) -> String {
    let plain = !key.is_empty()
        && !key.chars().any(char::is_control)
        && !key.starts_with(' ')
        && !key.ends_with(' ');
    if plain {
        key.to_owned()
    } else {
        format!("{key:?}")
    }
}

/// Make FAILED (and backing-off PENDING) objects of `region` due now, optionally only
/// keys starting with `prefix`.
pub async fn retry(
    cfg: &Config,
    region: &RegionId,
    state_dir: &Path,
    prefix: Option<&str>,
) -> anyhow::Result<String> {
    let db = open_db(cfg, region, state_dir)?;
    let n = db.retry(prefix, db::now_ms())?;
    Ok(format!(
        "{n} object operations of region {region} will be retried now"
    ))
}

/// Copy every object of `region`'s store that has no copy yet in the other regions
/// (S3 Batch Replication's job), showing a progress bar when `progress`.
pub async fn backfill(
    cfg: &Config,
    region: &RegionId,
    state_dir: &Path,
    progress: bool,
) -> anyhow::Result<String> {
    let rep = Replicator::open(cfg, region, state_dir).await?;
    let metrics = rep.metrics();
    let bar = if progress {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} backfill {pos}/{len} objects [{bar:40}] {per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        Some(bar)
    } else {
        None
    };
    let start = tokio::time::Instant::now();
    let cancel = CancellationToken::new();
    let ctrl_c = {
        let cancel = cancel.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                cancel.cancel();
            }
        })
    };
    let b = bar.clone();
    let result = rep
        .backfill_once(cancel, &move |done, total| {
            if let Some(b) = &b {
                b.set_length(total);
                b.set_position(done);
            }
        })
        .await;
    ctrl_c.abort();
    if let Some(bar) = &bar {
        bar.finish();
    }
    result?;
    let db = open_db(cfg, region, state_dir)?;
    let c = db.counts()?;
    let secs = start.elapsed().as_secs_f64();
    Ok(format!(
        "backfill of region {region}: {}/{} copied ({} bytes replicated by this run) in {secs:.2}s; {} pending, {} failed",
        c.backfill_done,
        c.backfill_total,
        metrics
            .bytes_replicated_total
            .load(std::sync::atomic::Ordering::Relaxed),
        c.pending_ops,
        c.failed_ops
    ))
}
