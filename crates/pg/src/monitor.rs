//! What a server says about its replication, read from both sides:
//! `pg_stat_replication` on a primary, `pg_last_wal_receive_lsn` / `pg_last_wal_replay_lsn`
//! / `pg_last_xact_replay_timestamp` / `pg_stat_wal_receiver` on a standby.
//!
//! Guarantees: one round trip per observation; LSNs are plain byte positions (u64).

use anyhow::{Context, Result};
use tokio_postgres::Client;

/// One standby as its primary sees it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StandbyView {
    pub application_name: String,
    pub state: String,
    pub sync_state: String,
    /// Bytes of WAL the primary has written that this standby has not replayed.
    pub lag_bytes: u64,
    /// `replay_lag` (None when idle: PostgreSQL clears it once the standby caught up).
    pub replay_lag_seconds: Option<f64>,
}

/// One observation of a server.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Observation {
    pub in_recovery: bool,
    /// Primary: pg_current_wal_lsn().
    pub current_lsn: Option<u64>,
    /// Standby: last WAL position received and flushed, and last replayed.
    pub receive_lsn: Option<u64>,
    pub replay_lsn: Option<u64>,
    pub replay_paused: bool,
    /// Standby: seconds since the last replayed transaction committed on the primary.
    pub last_replay_age_seconds: Option<f64>,
    /// Standby: pg_stat_wal_receiver.status ("streaming" when connected).
    pub receiver_status: Option<String>,
    pub synchronous_standby_names: String,
    pub standbys: Vec<StandbyView>,
}

impl Observation {
    pub fn streaming(&self) -> bool {
        self.receiver_status.as_deref() == Some("streaming")
    }
}

const OBSERVE: &str = "SELECT pg_is_in_recovery(),
    CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint END,
    pg_wal_lsn_diff(pg_last_wal_receive_lsn(), '0/0')::bigint,
    pg_wal_lsn_diff(pg_last_wal_replay_lsn(), '0/0')::bigint,
    CASE WHEN pg_is_in_recovery() THEN pg_is_wal_replay_paused() ELSE false END,
    EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp())::float8,
    (SELECT status FROM pg_stat_wal_receiver LIMIT 1),
    current_setting('synchronous_standby_names')";

const STANDBYS: &str = "SELECT coalesce(application_name, ''), coalesce(state, ''), coalesce(sync_state, ''),
    coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn), pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0'))::bigint,
    EXTRACT(EPOCH FROM replay_lag)::float8
    FROM pg_stat_replication ORDER BY application_name";

pub async fn observe(client: &Client) -> Result<Observation> {
    let row = client
        .query_one(OBSERVE, &[])
        .await
        .context("read replication state")?;
    let lsn = |i: usize| row.get::<_, Option<i64>>(i).map(|v| v.max(0) as u64);
    let mut obs = Observation {
        in_recovery: row.get(0),
        current_lsn: lsn(1),
        receive_lsn: lsn(2),
        replay_lsn: lsn(3),
        replay_paused: row.get(4),
        last_replay_age_seconds: row.get(5),
        receiver_status: row.get(6),
        synchronous_standby_names: row.get(7),
        standbys: Vec::new(),
    };
    if !obs.in_recovery {
        for r in client
            .query(STANDBYS, &[])
            .await
            .context("read pg_stat_replication")?
        {
            obs.standbys.push(StandbyView {
                application_name: r.get(0),
                state: r.get(1),
                sync_state: r.get(2),
                lag_bytes: r.get::<_, Option<i64>>(3).unwrap_or(0).max(0) as u64,
                replay_lag_seconds: r.get(4),
            });
        }
    }
    Ok(obs)
}

/// A standby's lag and readiness, combining its own view with its primary's (when the
/// primary answers).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Lag {
    pub bytes: u64,
    pub seconds: f64,
    /// Replayed everything the primary has written (primary reachable) or everything
    /// received (primary unreachable).
    pub caught_up: bool,
    /// Whether the primary's side was part of the judgement.
    pub primary_seen: bool,
}

/// Lag of a standby. `primary` is the primary's own observation when it answered;
/// `app` is the standby's application_name in the primary's pg_stat_replication.
pub fn standby_lag(standby: &Observation, primary: Option<&Observation>, app: &str) -> Lag {
    let replay = standby.replay_lsn.unwrap_or(0);
    let receive = standby.receive_lsn.unwrap_or(replay).max(replay);
    let age = standby.last_replay_age_seconds.unwrap_or(0.0).max(0.0);
    match primary.and_then(|p| p.current_lsn.map(|c| (p, c))) {
        Some((p, current)) => {
            let bytes = current.saturating_sub(replay);
            let caught_up = bytes == 0;
            let primary_says = p
                .standbys
                .iter()
                .find(|s| s.application_name == app)
                .and_then(|s| s.replay_lag_seconds)
                .unwrap_or(0.0);
            let seconds = if caught_up {
                0.0
            } else {
                age.max(primary_says)
            };
            Lag {
                bytes,
                seconds,
                caught_up,
                primary_seen: true,
            }
        }
        None => {
            let bytes = receive - replay;
            let caught_up = bytes == 0;
            Lag {
                bytes,
                seconds: if caught_up { 0.0 } else { age },
                caught_up,
                primary_seen: false,
            }
        }
    }
}

/// Why a standby may not be promoted automatically (None: it may).
pub fn not_ready_reason(
    standby: &Observation,
    lag: &Lag,
    max_bytes: Option<u64>,
    max_seconds: Option<f64>,
) -> Option<String> {
    if !standby.in_recovery {
        return Some("it is not a standby".to_owned());
    }
    if standby.replay_paused {
        return Some("WAL replay is paused".to_owned());
    }
    if let Some(max) = max_bytes
        && lag.bytes > max
    {
        return Some(format!(
            "lag {} bytes exceeds max_lag_bytes {max}",
            lag.bytes
        ));
    }
    if let Some(max) = max_seconds
        && lag.seconds > max
    {
        return Some(format!("lag {:.1}s exceeds max_lag {max}s", lag.seconds));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn standby(receive: u64, replay: u64, age: f64) -> Observation {
        Observation {
            in_recovery: true,
            current_lsn: None,
            receive_lsn: Some(receive),
            replay_lsn: Some(replay),
            replay_paused: false,
            last_replay_age_seconds: Some(age),
            receiver_status: Some("streaming".into()),
            synchronous_standby_names: String::new(),
            standbys: vec![],
        }
    }

    #[test]
    fn lag_uses_the_primary_when_it_answers() {
        let s = standby(150, 100, 7.0);
        let mut p = standby(0, 0, 0.0);
        p.in_recovery = false;
        p.current_lsn = Some(400);
        let lag = standby_lag(&s, Some(&p), "x");
        assert_eq!(lag.bytes, 300);
        assert!(!lag.caught_up);
        assert_eq!(lag.seconds, 7.0);
        let alone = standby_lag(&s, None, "x");
        assert_eq!(alone.bytes, 50);
        assert!(!alone.primary_seen);
        assert_eq!(
            not_ready_reason(&s, &lag, Some(200), None).map(|r| r.contains("300 bytes")),
            Some(true)
        );
        assert_eq!(not_ready_reason(&s, &alone, Some(200), Some(10.0)), None);
    }

    #[test]
    fn an_idle_caught_up_standby_has_no_lag_in_seconds() {
        let s = standby(100, 100, 3600.0);
        let lag = standby_lag(&s, None, "x");
        assert!(lag.caught_up);
        assert_eq!(lag.seconds, 0.0);
    }
}
