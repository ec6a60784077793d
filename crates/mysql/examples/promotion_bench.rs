//! Promotion time on real MariaDB pairs, for bench/mysql/run.sh.
//!
//! Each round starts a fresh primary + replica pair (lifeboat_mysql::testing), writes a
//! few rows, then times, on tokio's monotonic clock:
//! - `fence_to_writable`: fence of the live primary (a managed server: stopped) +
//!   activate of the replica + the first write that succeeds on it;
//! - `activate`: the activate call alone.
//!
//! Usage: promotion_bench [ROUNDS] [async|semi-sync]

use lifeboat_core::{Activation, DataRole, Epoch};
use lifeboat_mysql::MysqlRole;
use lifeboat_mysql::testing::{MysqlPair, PairOptions, region_a, region_b};
use mysql_async::prelude::Queryable;
use std::time::Duration;
use tokio::time::Instant;

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let rounds: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(10);
    let semi_sync = args.next().as_deref() == Some("semi-sync");
    let mut total = Vec::new();
    let mut activate = Vec::new();
    for round in 0..rounds {
        let pair = MysqlPair::start(PairOptions {
            semi_sync,
            ..PairOptions::default()
        })
        .await?;
        let mut a = pair.admin(&region_a()).await?;
        a.query_drop("CREATE DATABASE app").await?;
        a.query_drop("CREATE TABLE app.t (id INT PRIMARY KEY)")
            .await?;
        for i in 0..100 {
            a.query_drop(format!("INSERT INTO app.t VALUES ({i})"))
                .await?;
        }
        drop(a);
        let role_a = MysqlRole::new(&pair.config, &region_a())?;
        let role_b = MysqlRole::new(&pair.config, &region_b())?;
        let mut b = pair.admin(&region_b()).await?;
        let t0 = Instant::now();
        role_a.fence(Epoch(2)).await?;
        let t1 = Instant::now();
        role_b
            .activate(&Activation {
                epoch: Epoch(2),
                region: region_b(),
                forced: false,
            })
            .await?;
        let t2 = Instant::now();
        b.query_drop("INSERT INTO app.t VALUES (1000)").await?;
        let t3 = Instant::now();
        println!(
            "round {round}: fence {:?}, activate {:?}, first write {:?}, fence->writable {:?}",
            t1 - t0,
            t2 - t1,
            t3 - t2,
            t3 - t0
        );
        total.push(t3 - t0);
        activate.push(t2 - t1);
    }
    println!(
        "mode={} rounds={rounds} median fence->writable={:?} median activate={:?}",
        if semi_sync { "semi-sync" } else { "async" },
        median(&mut total),
        median(&mut activate)
    );
    Ok(())
}
