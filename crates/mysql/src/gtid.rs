//! MariaDB GTIDs (`domain-server-seqno`) and the comparisons lifeboat needs.
//!
//! MariaDB does not keep GTID *sets* with intervals as MySQL does: a position is the
//! last GTID per replication domain (`gtid_binlog_pos`, `gtid_slave_pos`), and a
//! binlog *state* is the last GTID per (domain, server_id) pair (`gtid_binlog_state`).
//! A transaction `d-s-n` is contained in a state when the state's entry for `(d, s)`
//! has a sequence number of at least `n`; under `gtid_strict_mode` sequence numbers
//! only grow within a domain, which is what makes that test sound.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Gtid {
    pub domain: u32,
    pub server: u32,
    pub seq: u64,
}

impl fmt::Display for Gtid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}-{}", self.domain, self.server, self.seq)
    }
}

impl FromStr for Gtid {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("not a GTID (domain-server-seqno): {s:?}");
        let mut parts = s.trim().splitn(3, '-');
        let domain = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        let server = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        let seq = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        Ok(Gtid {
            domain,
            server,
            seq,
        })
    }
}

/// Parse a comma-separated GTID list (`@@gtid_binlog_pos`, `Gtid_IO_Pos` …).
pub fn parse_list(s: &str) -> Result<Vec<Gtid>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(Gtid::from_str)
        .collect()
}

/// Last GTID per domain: a replication position.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GtidPos(pub BTreeMap<u32, Gtid>);

impl GtidPos {
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut map = BTreeMap::new();
        for g in parse_list(s)? {
            map.insert(g.domain, g);
        }
        Ok(GtidPos(map))
    }

    /// True when every domain of `other` is at or behind this position.
    pub fn covers(&self, other: &GtidPos) -> bool {
        other
            .0
            .values()
            .all(|g| self.0.get(&g.domain).is_some_and(|mine| mine.seq >= g.seq))
    }

    /// Transactions `other` has that this position lacks, summed over domains
    /// (sequence numbers are contiguous within a domain).
    pub fn behind(&self, other: &GtidPos) -> u64 {
        other
            .0
            .values()
            .map(|g| {
                g.seq
                    .saturating_sub(self.0.get(&g.domain).map_or(0, |m| m.seq))
            })
            .sum()
    }
}

impl fmt::Display for GtidPos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.values().map(Gtid::to_string).collect();
        f.write_str(&parts.join(","))
    }
}

/// Last GTID per (domain, server): `@@gtid_binlog_state`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GtidState(pub BTreeMap<(u32, u32), u64>);

impl GtidState {
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut map = BTreeMap::new();
        for g in parse_list(s)? {
            let e = map.entry((g.domain, g.server)).or_insert(0);
            *e = (*e).max(g.seq);
        }
        Ok(GtidState(map))
    }

    /// Whether the server whose binlog has this state also has transaction `g`.
    pub fn contains(&self, g: &Gtid) -> bool {
        self.0
            .get(&(g.domain, g.server))
            .is_some_and(|&n| n >= g.seq)
    }
}

/// Split a server's binlog GTIDs (in binlog order) into those the other server also has
/// and the errant ones it lacks; returns (last common GTID per domain, errant GTIDs).
pub fn split_errant(local: &[Gtid], other: &GtidState) -> (GtidPos, Vec<Gtid>) {
    let mut common = GtidPos::default();
    let mut errant = Vec::new();
    for g in local {
        if other.contains(g) {
            common.0.insert(g.domain, *g);
        } else {
            errant.push(*g);
        }
    }
    (common, errant)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(s: &str) -> Gtid {
        s.parse().expect("gtid")
    }

    #[test]
    fn parses_positions_and_states() {
        let pos = GtidPos::parse("0-1-100, 1-2-5").expect("pos");
        assert_eq!(pos.0[&0], g("0-1-100"));
        assert_eq!(pos.to_string(), "0-1-100,1-2-5");
        assert_eq!(GtidPos::parse("").expect("empty"), GtidPos::default());
        assert!(GtidPos::parse("0-1").is_err());
        let st = GtidState::parse("0-1-90,0-2-150").expect("state");
        assert!(st.contains(&g("0-1-90")));
        assert!(!st.contains(&g("0-1-91")));
        assert!(st.contains(&g("0-2-120")));
    }

    #[test]
    fn transactions_of_a_crashed_primary_that_the_new_one_lacks_are_errant() {
        // Old primary (server 1) wrote 0-1-1..0-1-100; the replica (server 2) got up to
        // 0-1-90, was promoted and wrote 0-2-91..0-2-150.
        let local: Vec<Gtid> = (1..=100)
            .map(|n| Gtid {
                domain: 0,
                server: 1,
                seq: n,
            })
            .collect();
        let new_primary = GtidState::parse("0-1-90,0-2-150").expect("state");
        let (common, errant) = split_errant(&local, &new_primary);
        assert_eq!(errant.len(), 10);
        assert_eq!(errant[0], g("0-1-91"));
        assert_eq!(common.to_string(), "0-1-90");
    }

    #[test]
    fn lag_in_transactions() {
        let replica = GtidPos::parse("0-1-90").expect("pos");
        let primary = GtidPos::parse("0-1-100,1-1-3").expect("pos");
        assert_eq!(replica.behind(&primary), 13);
        assert!(!replica.covers(&primary));
        assert!(primary.covers(&replica));
    }
}
