//! The last minutes of each data role's replication lag, from the agents' reports, for
//! the dashboard's charts. Pure: the report handler records, the event stream reads.

use lifeboat_core::{RegionId, RoleStatus};
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};

/// How far back the charts go.
pub(super) const WINDOW_MS: u64 = 10 * 60 * 1000;
/// At most one sample per region and role in this long (agents report about twice a
/// second; a chart of ten minutes needs no more).
const SPACING_MS: u64 = 1000;

/// One point of one role's lag.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(super) struct LagSample {
    pub seq: u64,
    pub at_unix_ms: u64,
    pub region: RegionId,
    pub role: String,
    pub bytes: Option<u64>,
    pub seconds: Option<f64>,
}

#[derive(Debug, Default)]
pub(super) struct LagHistory {
    samples: VecDeque<LagSample>,
    next_seq: u64,
    last_at: BTreeMap<(RegionId, String), u64>,
}

impl LagHistory {
    /// Record the roles of one report that say anything of their lag.
    pub fn record(&mut self, at_unix_ms: u64, region: &RegionId, roles: &[RoleStatus]) {
        for r in roles {
            if r.lag_bytes.is_none() && r.lag_seconds.is_none() {
                continue;
            }
            let key = (region.clone(), r.name.clone());
            if self
                .last_at
                .get(&key)
                .is_some_and(|&t| at_unix_ms < t.saturating_add(SPACING_MS))
            {
                continue;
            }
            self.last_at.insert(key, at_unix_ms);
            self.next_seq += 1;
            self.samples.push_back(LagSample {
                seq: self.next_seq,
                at_unix_ms,
                region: region.clone(),
                role: r.name.clone(),
                bytes: r.lag_bytes,
                seconds: r.lag_seconds.filter(|s| s.is_finite()),
            });
        }
        let cutoff = at_unix_ms.saturating_sub(WINDOW_MS);
        while self.samples.front().is_some_and(|s| s.at_unix_ms < cutoff) {
            self.samples.pop_front();
        }
    }

    /// The samples after `seq` (0: all of the window), oldest first.
    pub fn since(&self, seq: u64) -> Vec<LagSample> {
        self.samples
            .iter()
            .filter(|s| s.seq > seq)
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lifeboat_core::RoleHealth;

    fn standby(name: &str, bytes: u64) -> RoleStatus {
        let mut r = RoleStatus::new(name, RoleHealth::Standby);
        r.lag_bytes = Some(bytes);
        r.lag_seconds = Some(0.5);
        r
    }

    #[test]
    fn one_sample_a_second_per_role_for_ten_minutes() {
        let mut h = LagHistory::default();
        let b = RegionId::new("b");
        let t0 = 1_000_000;
        // Two reports a second for twenty minutes.
        for i in 0..2400u64 {
            let roles = [
                standby("postgres", i),
                RoleStatus::new("app", RoleHealth::Standby),
            ];
            h.record(t0 + i * 500, &b, &roles);
        }
        let all = h.since(0);
        // The app says nothing of lag; postgres is kept once a second, ten minutes back.
        assert!(all.iter().all(|s| s.role == "postgres"));
        // (The window is counted back from the newest report, at t0 + 1,199,500.)
        assert_eq!(all.len(), 600, "{}", all.len());
        let last = all.last().unwrap();
        assert_eq!(last.at_unix_ms, t0 + 2398 * 500);
        assert!(all[0].at_unix_ms >= last.at_unix_ms - WINDOW_MS);
        assert!(all.windows(2).all(|w| w[0].seq < w[1].seq));
        // A reader that has seen up to a sequence number gets only what came after.
        let newer = h.since(all[598].seq);
        assert_eq!(newer, vec![last.clone()]);
        assert!(h.since(last.seq).is_empty());
    }

    #[test]
    fn regions_and_roles_are_sampled_apart() {
        let mut h = LagHistory::default();
        h.record(10_000, &RegionId::new("a"), &[standby("postgres", 1)]);
        h.record(10_100, &RegionId::new("b"), &[standby("postgres", 2)]);
        h.record(10_200, &RegionId::new("b"), &[standby("mysql", 3)]);
        h.record(10_300, &RegionId::new("b"), &[standby("postgres", 4)]);
        let got: Vec<_> = h
            .since(0)
            .into_iter()
            .map(|s| (s.region.to_string(), s.role, s.bytes))
            .collect();
        assert_eq!(
            got,
            [
                ("a".into(), "postgres".into(), Some(1)),
                ("b".into(), "postgres".into(), Some(2)),
                ("b".into(), "mysql".into(), Some(3)),
            ]
        );
    }
}
