//! Dual-primary sampling: ask every region's database server itself, at least every
//! 200 ms, whether it takes writes — independent of what lifeboat reports about it.
//!
//! Guarantees:
//! - a server is taking writes only when it accepted a fresh connection (as the
//!   config's user, over TCP to the configured address) and said so: PostgreSQL
//!   `select not pg_is_in_recovery()`, MariaDB/MySQL `select @@global.read_only` = 0.
//!   Down, refusing the connection or the user (a pg_hba fence), or silent for longer
//!   than the probe timeout is *not* taking writes;
//! - every round asks all regions at once and is stamped with the instant it started;
//!   rounds start on a fixed cadence and never wait for a slow one (a frozen server
//!   delays its own answer, not the next round);
//! - the judgement is pure: [`dual_primary`] lists the rounds in which two or more
//!   regions took writes, [`max_gap_ms`] says whether the cadence was kept.

use crate::client::Clock;
use anyhow::Context;
use lifeboat_config::Config;
use lifeboat_core::RegionId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// What one server said in one round.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Writable {
    /// Accepted the connection and takes writes (a primary).
    Yes,
    /// Accepted the connection and is read-only (a standby, a fenced server).
    No,
    /// Down, refused the connection or the login, or did not answer in time.
    Unreachable,
}

/// One round: each region's answer, stamped with when the round started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sample {
    pub at_ms: u64,
    pub regions: BTreeMap<RegionId, Writable>,
}

impl Sample {
    pub fn writable(&self) -> Vec<RegionId> {
        self.regions
            .iter()
            .filter(|(_, w)| **w == Writable::Yes)
            .map(|(r, _)| r.clone())
            .collect()
    }
}

/// A round in which more than one region took writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DualPrimarySample {
    pub at_unix_ms: u64,
    pub writable: Vec<RegionId>,
}

/// The rounds of `samples` in which two or more regions took writes, in time order.
pub fn dual_primary(samples: &[Sample]) -> Vec<DualPrimarySample> {
    let mut out: Vec<DualPrimarySample> = samples
        .iter()
        .filter_map(|s| {
            let w = s.writable();
            (w.len() >= 2).then_some(DualPrimarySample {
                at_unix_ms: s.at_ms,
                writable: w,
            })
        })
        .collect();
    out.sort_by_key(|d| d.at_unix_ms);
    out
}

/// The longest time between two consecutive rounds (None with fewer than two): above
/// the interval, the drill itself was starved and may have missed a short breach.
pub fn max_gap_ms(samples: &[Sample]) -> Option<u64> {
    let mut at: Vec<u64> = samples.iter().map(|s| s.at_ms).collect();
    at.sort_unstable();
    at.windows(2).map(|w| w[1] - w[0]).max()
}

/// The rounds that started in `[from_ms, to_ms]`.
pub fn window(samples: &[Sample], from_ms: u64, to_ms: u64) -> Vec<Sample> {
    samples
        .iter()
        .filter(|s| s.at_ms >= from_ms && s.at_ms <= to_ms)
        .cloned()
        .collect()
}

/// How to ask one region's server.
#[derive(Debug, Clone)]
enum Probe {
    Postgres(Box<tokio_postgres::Config>),
    Mysql(mysql_async::Opts),
}

impl Probe {
    async fn ask(&self) -> Writable {
        match self {
            Probe::Postgres(cfg) => {
                let Ok((client, conn)) = cfg.connect(tokio_postgres::NoTls).await else {
                    return Writable::Unreachable;
                };
                // Drive the connection ourselves and drop its notices: polled as a
                // future, tokio-postgres logs every server notice ("terminating
                // connection due to immediate shutdown" on each fence) at info.
                let task = tokio::spawn(async move {
                    let mut conn = conn;
                    // Until the connection ends or fails.
                    while let Some(Ok(_)) = next_message(&mut conn).await {}
                });
                let answer = client
                    .query_one("select not pg_is_in_recovery()", &[])
                    .await
                    .ok()
                    .and_then(|row| row.try_get::<_, bool>(0).ok());
                drop(client);
                task.abort();
                match answer {
                    Some(true) => Writable::Yes,
                    Some(false) => Writable::No,
                    None => Writable::Unreachable,
                }
            }
            Probe::Mysql(opts) => {
                use mysql_async::prelude::Queryable as _;
                let Ok(mut conn) = mysql_async::Conn::new(opts.clone()).await else {
                    return Writable::Unreachable;
                };
                let ro: Result<Option<i64>, _> =
                    conn.query_first("select @@global.read_only").await;
                let _ = conn.disconnect().await;
                match ro {
                    Ok(Some(0)) => Writable::Yes,
                    Ok(Some(_)) => Writable::No,
                    _ => Writable::Unreachable,
                }
            }
        }
    }
}

/// The connection's next message (a notice, a notification), None at its end.
async fn next_message<S, T>(
    conn: &mut tokio_postgres::Connection<S, T>,
) -> Option<Result<tokio_postgres::AsyncMessage, tokio_postgres::Error>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    std::future::poll_fn(|cx| conn.poll_message(cx)).await
}

/// How each region's database is reached, from `[database]`; empty when the deployment
/// has none. An unreadable password is an error (nothing has been injected yet).
fn probes(cfg: &Config, timeout: Duration) -> anyhow::Result<Vec<(RegionId, Probe)>> {
    let mut out = Vec::new();
    let Some(db) = &cfg.database else {
        return Ok(out);
    };
    if let Some(pg) = &db.postgres {
        for (r, inst) in &pg.regions {
            let mut c = tokio_postgres::Config::new();
            c.host(&inst.host)
                .port(inst.port)
                .user(&inst.user)
                .dbname(&pg.dbname)
                .application_name("lifeboat-drill")
                .connect_timeout(timeout);
            if let Some(p) = load(&inst.password(), r)? {
                c.password(p);
            }
            out.push((RegionId::new(r), Probe::Postgres(Box::new(c))));
        }
    }
    if let Some(my) = &db.mysql {
        for (r, inst) in &my.regions {
            let opts = mysql_async::OptsBuilder::default()
                .ip_or_hostname(inst.host.clone())
                .tcp_port(inst.port)
                .user(Some(inst.user.clone()))
                .pass(load(&inst.password(), r)?)
                // Stay on TCP to the configured address (no switch to a local socket).
                .prefer_socket(false)
                .conn_ttl(None);
            out.push((RegionId::new(r), Probe::Mysql(opts.into())));
        }
    }
    Ok(out)
}

fn load(secret: &lifeboat_config::SecretRef, region: &str) -> anyhow::Result<Option<String>> {
    if secret.file.is_none() && secret.env.is_none() {
        return Ok(None);
    }
    secret
        .load()
        .map(|p| Some(p.trim().to_owned()))
        .with_context(|| {
            format!("reading region {region}'s database password (the drill asks each server directly whether it takes writes)")
        })
}

/// The running sampler: rounds are collected until [`Sampler::stop`].
#[derive(Debug)]
pub struct Sampler {
    samples: Arc<Mutex<Vec<Sample>>>,
    regions: Vec<RegionId>,
    interval: Duration,
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Sampler {
    /// Start sampling every region of `cfg`'s `[database]` every `interval`. With no
    /// database configured it samples nothing (and says so in [`Sampler::regions`]).
    pub fn start(cfg: &Config, interval: Duration, clock: Clock) -> anyhow::Result<Sampler> {
        // A round may run over the interval (a server that does not answer), but not
        // for ever: five intervals, and then that region is not taking writes.
        let timeout = interval * 5;
        let probes = probes(cfg, timeout)?;
        let regions = probes.iter().map(|(r, _)| r.clone()).collect();
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let task = (!probes.is_empty()).then(|| {
            tokio::spawn(sample_loop(
                Arc::new(probes),
                interval,
                timeout,
                clock,
                samples.clone(),
                stop.clone(),
            ))
        });
        Ok(Sampler {
            samples,
            regions,
            interval,
            stop,
            task,
        })
    }

    pub fn regions(&self) -> &[RegionId] {
        &self.regions
    }

    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// The rounds that started in `[from_ms, to_ms]`, so far.
    pub fn window(&self, from_ms: u64, to_ms: u64) -> Vec<Sample> {
        self.samples
            .lock()
            .map(|v| window(&v, from_ms, to_ms))
            .unwrap_or_default()
    }

    /// The latest complete round.
    pub fn latest(&self) -> Option<Sample> {
        self.samples
            .lock()
            .ok()
            .and_then(|v| v.iter().max_by_key(|s| s.at_ms).cloned())
    }

    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn sample_loop(
    probes: Arc<Vec<(RegionId, Probe)>>,
    interval: Duration,
    timeout: Duration,
    clock: Clock,
    samples: Arc<Mutex<Vec<Sample>>>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(interval);
    // A starved drill catches up with the cadence instead of bunching rounds together.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut rounds = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let probes = probes.clone();
        let samples = samples.clone();
        rounds.spawn(async move {
            let at_ms = clock.now_ms();
            let mut asks = tokio::task::JoinSet::new();
            for i in 0..probes.len() {
                let probes = probes.clone();
                asks.spawn(async move {
                    let (region, probe) = &probes[i];
                    let w = tokio::time::timeout(timeout, probe.ask())
                        .await
                        .unwrap_or(Writable::Unreachable);
                    (region.clone(), w)
                });
            }
            let mut answers = BTreeMap::new();
            while let Some(r) = asks.join_next().await {
                if let Ok((region, w)) = r {
                    answers.insert(region, w);
                }
            }
            if let Ok(mut v) = samples.lock() {
                v.push(Sample {
                    at_ms,
                    regions: answers,
                });
            }
        });
        while rounds.try_join_next().is_some() {}
    }
    // Rounds in flight are dropped: their connections close, nothing is half-recorded.
    rounds.abort_all();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at_ms: u64, a: Writable, b: Writable) -> Sample {
        Sample {
            at_ms,
            regions: [(RegionId::new("a"), a), (RegionId::new("b"), b)].into(),
        }
    }

    #[test]
    fn two_writable_servers_in_one_round_are_a_dual_primary_sample() {
        use Writable::*;
        let s = vec![
            sample(0, Yes, No),
            sample(200, Yes, No),
            // a's agent froze; b was promoted while a still took writes.
            sample(400, Yes, Yes),
            sample(600, Yes, Yes),
            // a fenced: refused connections are not writes.
            sample(800, Unreachable, Yes),
            sample(1000, No, Yes),
        ];
        let d = dual_primary(&s);
        assert_eq!(
            d.iter().map(|x| x.at_unix_ms).collect::<Vec<_>>(),
            [400, 600]
        );
        assert_eq!(d[0].writable, [RegionId::new("a"), RegionId::new("b")]);
        assert_eq!(max_gap_ms(&s), Some(200));
        assert_eq!(window(&s, 300, 800).len(), 3);
    }

    #[test]
    fn a_clean_failover_and_a_down_server_are_not_dual_primaries() {
        use Writable::*;
        let s = vec![
            sample(0, Yes, No),
            sample(200, Unreachable, No),
            sample(400, Unreachable, Unreachable),
            sample(600, Unreachable, Yes),
            sample(1400, No, Yes),
        ];
        assert!(dual_primary(&s).is_empty());
        // The drill was starved between 600 and 1400: it says so.
        assert_eq!(max_gap_ms(&s), Some(800));
        assert_eq!(max_gap_ms(&s[..1]), None);
    }

    #[tokio::test]
    async fn a_server_that_is_not_there_is_not_taking_writes() {
        // Port 1 on loopback refuses at once: not writable, and no panic or hang.
        let mut c = tokio_postgres::Config::new();
        c.host("127.0.0.1").port(1).user("x");
        assert_eq!(
            Probe::Postgres(Box::new(c)).ask().await,
            Writable::Unreachable
        );
        let opts = mysql_async::OptsBuilder::default()
            .ip_or_hostname("127.0.0.1")
            .tcp_port(1)
            .prefer_socket(false);
        assert_eq!(Probe::Mysql(opts.into()).ask().await, Writable::Unreachable);
    }
}
