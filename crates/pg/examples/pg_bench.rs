//! Figures for lifeboat-pg (run by bench/pg/run.sh):
//! - promotion time, fence of the old primary -> the new primary accepts a write
//!   (median of N fresh pairs);
//! - replication lag (bytes and seconds, as `PostgresRole::status` reports it) while
//!   pgbench loads the primary, in async and sync mode.

use anyhow::{Context, Result};
use lifeboat_config::database::ReplicationMode;
use lifeboat_core::{Activation, DataRole, Epoch, RegionId};
use lifeboat_pg::testing::{PairOptions, TestPair};
use std::time::Duration;
use tokio::time::Instant;

#[tokio::main]
async fn main() -> Result<()> {
    let runs: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10);
    let load_secs: u64 = std::env::args()
        .nth(2)
        .and_then(|a| a.parse().ok())
        .unwrap_or(20);
    promotion(runs).await?;
    for mode in [ReplicationMode::Async, ReplicationMode::Sync] {
        lag_under_load(mode, load_secs).await?;
    }
    Ok(())
}

async fn promotion(runs: usize) -> Result<()> {
    let mut total = Vec::new();
    let mut fence = Vec::new();
    let mut promote = Vec::new();
    for i in 0..runs {
        let pair = TestPair::start(PairOptions::default()).await?;
        let a = pair.client("a").await?;
        a.batch_execute("CREATE TABLE t (id int); INSERT INTO t VALUES (1)")
            .await?;
        drop(a);
        let (ra, rb) = (pair.role("a")?, pair.role("b")?);
        // Wait for the standby to be caught up so every run starts from the same state.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !rb.status().await.caught_up {
            anyhow::ensure!(Instant::now() < deadline, "standby never caught up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let t0 = Instant::now();
        ra.fence(Epoch(1)).await?;
        let t1 = Instant::now();
        rb.activate(&Activation {
            epoch: Epoch(1),
            region: RegionId::new("b"),
            forced: false,
        })
        .await?;
        let b = pair.client("b").await?;
        b.batch_execute("INSERT INTO t VALUES (2)").await?;
        let t2 = Instant::now();
        fence.push((t1 - t0).as_secs_f64() * 1000.0);
        promote.push((t2 - t1).as_secs_f64() * 1000.0);
        total.push((t2 - t0).as_secs_f64() * 1000.0);
        eprintln!(
            "run {}: fence {:.0} ms, promote+write {:.0} ms",
            i + 1,
            fence[i],
            promote[i]
        );
    }
    println!("promotion (fence -> new primary writable), {runs} runs on fresh pairs:");
    println!(
        "  total   median {:.0} ms  min {:.0}  max {:.0}",
        median(&total),
        min(&total),
        max(&total)
    );
    println!(
        "  fence   median {:.0} ms (pg_ctl stop -m fast)",
        median(&fence)
    );
    println!(
        "  promote median {:.0} ms (pg_promote(wait) + first write)",
        median(&promote)
    );
    Ok(())
}

async fn lag_under_load(mode: ReplicationMode, secs: u64) -> Result<()> {
    let pair = TestPair::start(PairOptions {
        mode,
        ..PairOptions::default()
    })
    .await?;
    let a = pair.instance("a");
    let password = a.superuser_password()?;
    let pgbench = pair.bin.path("pgbench");
    let port = a.port.to_string();
    let common = [
        "-h",
        a.host.as_str(),
        "-p",
        port.as_str(),
        "-U",
        a.user.as_str(),
    ];
    let init = tokio::process::Command::new(&pgbench)
        .args(common)
        .args(["-i", "-s", "10", "-q", "postgres"])
        .env("PGPASSWORD", &password)
        .output()
        .await
        .context("pgbench -i")?;
    anyhow::ensure!(
        init.status.success(),
        "pgbench -i: {}",
        String::from_utf8_lossy(&init.stderr)
    );
    let rb = pair.role("b")?;
    let load = tokio::process::Command::new(&pgbench)
        .args(common)
        .args(["-c", "4", "-j", "2", "-T", &secs.to_string(), "postgres"])
        .env("PGPASSWORD", &password)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("pgbench")?;
    let (mut bytes, mut seconds) = (Vec::new(), Vec::new());
    let end = Instant::now() + Duration::from_secs(secs);
    tokio::time::sleep(Duration::from_secs(1)).await;
    while Instant::now() < end {
        let st = rb.status().await;
        if let (Some(b), Some(s)) = (st.lag_bytes, st.lag_seconds) {
            bytes.push(b as f64);
            seconds.push(s);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let out = load.wait_with_output().await?;
    let text = String::from_utf8_lossy(&out.stdout);
    let tps = text
        .lines()
        .find(|l| l.starts_with("tps"))
        .unwrap_or("tps = ?")
        .trim()
        .to_owned();
    println!(
        "lag under pgbench (scale 10, 4 clients, {secs} s, {mode:?} mode; {tps}), {} samples of the standby's status:",
        bytes.len()
    );
    println!(
        "  bytes   median {:.0}  p95 {:.0}  max {:.0}",
        median(&bytes),
        pct(&bytes, 0.95),
        max(&bytes)
    );
    println!(
        "  seconds median {:.3}  p95 {:.3}  max {:.3}",
        median(&seconds),
        pct(&seconds, 0.95),
        max(&seconds)
    );
    Ok(())
}

fn sorted(v: &[f64]) -> Vec<f64> {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v
}
fn pct(v: &[f64], p: f64) -> f64 {
    let s = sorted(v);
    if s.is_empty() {
        return f64::NAN;
    }
    s[((s.len() - 1) as f64 * p).round() as usize]
}
fn median(v: &[f64]) -> f64 {
    pct(v, 0.5)
}
fn min(v: &[f64]) -> f64 {
    pct(v, 0.0)
}
fn max(v: &[f64]) -> f64 {
    pct(v, 1.0)
}
