//! Data loss (RPO) on kill -9 of the primary under write load, for bench/mysql/run.sh.
//!
//! Each round starts a fresh pair (lifeboat_mysql::testing), runs WRITERS concurrent
//! clients that insert rows as fast as they can and record every insert the primary
//! acknowledged, kills the primary with SIGKILL after one second, promotes the replica
//! with `MysqlRole::activate`, and counts the acknowledged rows missing there (the
//! Jepsen-style "lost" count).
//!
//! Usage: rpo_bench [ROUNDS] [async|semi-sync]

use lifeboat_core::{Activation, DataRole, Epoch};
use lifeboat_mysql::MysqlRole;
use lifeboat_mysql::testing::{MysqlPair, PairOptions, region_a, region_b};
use mysql_async::prelude::Queryable;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

const WRITERS: u64 = 4;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let rounds: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(3);
    let semi_sync = args.next().as_deref() == Some("semi-sync");
    let mode = if semi_sync { "semi-sync" } else { "async" };
    let mut losses = Vec::new();
    for round in 0..rounds {
        let pair = MysqlPair::start(PairOptions {
            semi_sync,
            ..PairOptions::default()
        })
        .await?;
        let mut a = pair.admin(&region_a()).await?;
        a.query_drop("CREATE DATABASE app").await?;
        a.query_drop("CREATE TABLE app.t (id BIGINT PRIMARY KEY, v VARCHAR(200))")
            .await?;
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for w in 0..WRITERS {
            let mut c = pair.admin(&region_a()).await?;
            let stop = stop.clone();
            tasks.push(tokio::spawn(async move {
                let mut acked = Vec::new();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let id = w * 1_000_000_000 + n;
                    n += 1;
                    let q = format!("INSERT INTO app.t VALUES ({id}, REPEAT('x', 150))");
                    match c.query_drop(q).await {
                        Ok(()) => acked.push(id),
                        Err(_) => break,
                    }
                }
                acked
            }));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        pair.kill(&region_a());
        stop.store(true, Ordering::Relaxed);
        let mut acked = BTreeSet::new();
        for t in tasks {
            acked.extend(t.await?);
        }
        let role_b = MysqlRole::new(&pair.config, &region_b())?;
        role_b
            .activate(&Activation {
                epoch: Epoch(2),
                region: region_b(),
                forced: false,
            })
            .await?;
        let mut b = pair.admin(&region_b()).await?;
        let present: Vec<u64> = b.query("SELECT id FROM app.t").await?;
        let present: BTreeSet<u64> = present.into_iter().collect();
        let lost = acked.difference(&present).count();
        println!(
            "{mode} round {round}: {} writes acknowledged, {} on the promoted replica, {lost} lost",
            acked.len(),
            present.len()
        );
        losses.push(lost);
    }
    println!(
        "mode={mode} rounds={rounds} writers={WRITERS} lost acknowledged writes per round: {losses:?}"
    );
    Ok(())
}
