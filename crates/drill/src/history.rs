//! The recorded history of a run and the pure functions that judge it.
//!
//! Jepsen's model: every operation is `ok` (acknowledged), `failed` (definitely not
//! done: refused, or a definite HTTP error) or `unknown` (timed out or cut mid-request:
//! it may or may not have committed). A write is *lost* when it was acknowledged and
//! the final read does not contain it. Nothing here does I/O: the drill records, these
//! functions decide, and the tests feed them hand-written histories.
//!
//! Times are wall-clock milliseconds since the Unix epoch (the drill derives them from
//! one wall-clock reading plus its monotonic clock, so a clock step mid-run cannot
//! reorder operations), so that they line up with the controller's journal.

use lifeboat_core::{JournalEntry, JournalKind, RegionId};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;

/// How one write ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// 2xx: the app acknowledged it.
    Ok,
    /// Definitely not done: connection refused, no address, 4xx/5xx.
    Failed,
    /// Maybe done: timeout, connection reset mid-request.
    Unknown,
}

/// One write, as the client saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Op {
    /// The entry's unique id, `<run id>-<n>`.
    pub id: String,
    /// When the request started and ended (unix ms).
    pub start_ms: u64,
    pub end_ms: u64,
    pub outcome: Outcome,
    /// The address the request went to (from DNS), when there was one.
    pub addr: Option<IpAddr>,
    /// The region whose configured address that is.
    pub region: Option<RegionId>,
    /// The HTTP status, when an answer came.
    pub status: Option<u16>,
    /// What went wrong, for failed and unknown writes.
    pub error: Option<String>,
}

/// Recovery time: last acknowledged write before the fault to first one after.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rto {
    pub last_ok_before_ms: u64,
    pub first_ok_after_ms: u64,
    pub rto_ms: u64,
}

/// RTO: from the last acknowledgement of a write started before the fault was in effect
/// to the acknowledgement of the first write started after it. `fault_ms` is the instant
/// the injection command returned: a write started while the command still ran may be
/// acknowledged by the dying region, and is not a recovery. None when no write started
/// after the fault was acknowledged. With no acknowledged write before the fault, the
/// fault instant is the start.
pub fn rto(ops: &[Op], fault_ms: u64) -> Option<Rto> {
    let first_ok_after_ms = ops
        .iter()
        .filter(|o| o.outcome == Outcome::Ok && o.start_ms >= fault_ms)
        .map(|o| o.end_ms)
        .min()?;
    let last_ok_before_ms = ops
        .iter()
        .filter(|o| o.outcome == Outcome::Ok && o.start_ms < fault_ms)
        .map(|o| o.end_ms)
        .max()
        .unwrap_or(fault_ms);
    Some(Rto {
        last_ok_before_ms,
        first_ok_after_ms,
        rto_ms: first_ok_after_ms.saturating_sub(last_ok_before_ms),
    })
}

/// Unavailability: the longest time between two acknowledgements in which a write that
/// started failed (or had an unknown outcome) — from the acknowledgement before it to
/// the acknowledgement of the first write that started after it (or `to_ms` when none
/// did). Only failures that started in `[from_ms, to_ms]` count; 0 when none failed, so
/// a fault the clients never noticed costs exactly nothing.
pub fn longest_unavailability(ops: &[Op], from_ms: u64, to_ms: u64) -> u64 {
    let mut acks: Vec<(u64, u64)> = ops
        .iter()
        .filter(|o| o.outcome == Outcome::Ok)
        .map(|o| (o.start_ms, o.end_ms))
        .collect();
    acks.sort_unstable();
    // suffix_min[i]: the earliest acknowledgement of the writes started at acks[i..].
    let mut suffix_min = vec![u64::MAX; acks.len() + 1];
    for i in (0..acks.len()).rev() {
        suffix_min[i] = suffix_min[i + 1].min(acks[i].1);
    }
    let mut ends: Vec<u64> = acks.iter().map(|a| a.1).collect();
    ends.sort_unstable();
    let first_start = ops.iter().map(|o| o.start_ms).min().unwrap_or(from_ms);
    ops.iter()
        .filter(|o| o.outcome != Outcome::Ok && o.start_ms >= from_ms && o.start_ms <= to_ms)
        .map(|o| {
            let before = match ends.partition_point(|&e| e <= o.start_ms) {
                0 => first_start,
                n => ends[n - 1],
            };
            let i = acks.partition_point(|a| a.0 < o.start_ms);
            let after = match suffix_min[i] {
                u64::MAX => to_ms.max(o.start_ms),
                t => t,
            };
            after.saturating_sub(before)
        })
        .max()
        .unwrap_or(0)
}

/// Acknowledged writes missing from the final read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Lost {
    pub count: usize,
    /// Earliest start and latest acknowledgement among the lost writes.
    pub first_ms: Option<u64>,
    pub last_ms: Option<u64>,
    pub ids: Vec<String>,
}

pub fn lost_acknowledged(ops: &[Op], present: &HashSet<String>) -> Lost {
    let lost: Vec<&Op> = ops
        .iter()
        .filter(|o| o.outcome == Outcome::Ok && !present.contains(&o.id))
        .collect();
    Lost {
        count: lost.len(),
        first_ms: lost.iter().map(|o| o.start_ms).min(),
        last_ms: lost.iter().map(|o| o.end_ms).max(),
        ids: lost.iter().map(|o| o.id.clone()).collect(),
    }
}

/// How many writes of an outcome turned out to be present in the final read.
pub fn present_with_outcome(ops: &[Op], outcome: Outcome, present: &HashSet<String>) -> usize {
    ops.iter()
        .filter(|o| o.outcome == outcome && present.contains(&o.id))
        .count()
}

/// Evidence, from the client's side, that two regions accepted writes at once.
///
/// `new_addr` is the address of the region that took over and `promoted_ms` the
/// journal's promotion instant, if any; `later` are the promotions the journal shows
/// after that one (instant, the promoted region's address if known), e.g. a move back.
/// Two things are impossible under a correct failover: a write acknowledged by an
/// address other than the holder's that *started* after the holder certainly took writes
/// (the first holder from the promotion instant or its first acknowledgement, whichever
/// is earlier; each later holder from its promotion); and a write acknowledged by the new
/// region that *ended* before it was promoted while another address also acknowledged
/// writes (it took writes while the old primary still did).
pub fn dual_primary_from_ops(
    ops: &[Op],
    new_addr: Option<IpAddr>,
    promoted_ms: Option<u64>,
    later: &[(u64, Option<IpAddr>)],
) -> Vec<String> {
    let Some(new_addr) = new_addr else {
        return vec![];
    };
    let ok: Vec<&Op> = ops.iter().filter(|o| o.outcome == Outcome::Ok).collect();
    let first_new_ack = ok
        .iter()
        .filter(|o| o.addr == Some(new_addr))
        .map(|o| o.end_ms)
        .min();
    let cutoff = match (promoted_ms, first_new_ack) {
        (Some(p), Some(f)) => Some(p.min(f)),
        (p, f) => p.or(f),
    };
    let mut evidence = Vec::new();
    if let Some(cutoff) = cutoff {
        // Who certainly held the writes at an instant after the cutoff, and since when
        // (None: a region whose address is not known; nothing is judged then).
        let holder_at = |t: u64| -> (Option<IpAddr>, u64) {
            later
                .iter()
                .filter(|(at, _)| *at > cutoff && *at <= t)
                .max_by_key(|(at, _)| *at)
                .map_or((Some(new_addr), cutoff), |(at, a)| (*a, *at))
        };
        // Per (address, holder, since): the first write it took and how many.
        let mut late: BTreeMap<(IpAddr, IpAddr, u64), (&Op, usize)> = BTreeMap::new();
        for o in &ok {
            let Some(a) = o.addr else { continue };
            if o.start_ms <= cutoff {
                continue;
            }
            let (Some(holder), since) = holder_at(o.start_ms) else {
                continue;
            };
            if a != holder {
                let e = late.entry((a, holder, since)).or_insert((o, 0));
                e.1 += 1;
                if o.start_ms < e.0.start_ms {
                    e.0 = o;
                }
            }
        }
        for ((addr, holder, since), (o, n)) in late {
            evidence.push(format!(
                "{addr} acknowledged {n} write(s) started after {holder} took writes at {since} (first: {} started {})",
                o.id, o.start_ms
            ));
        }
    }
    if let Some(p) = promoted_ms {
        let early: Vec<&&Op> = ok
            .iter()
            .filter(|o| o.addr == Some(new_addr) && o.end_ms < p)
            .collect();
        let others = ok
            .iter()
            .any(|o| o.addr.is_some() && o.addr != Some(new_addr));
        if let Some(first) = early.first()
            && others
        {
            evidence.push(format!(
                "{new_addr} acknowledged {} write(s) before its promotion at {p} (first: {} ended {})",
                early.len(),
                first.id,
                first.end_ms
            ));
        }
    }
    evidence
}

/// Evidence, from the journal, that a region was promoted while the previous holder's
/// fence had not been journaled first (docs/architecture.md, rule 3). `holder` is the region that
/// was active when the window starts; `window` is in sequence order.
pub fn dual_primary_from_journal(
    window: &[JournalEntry],
    holder: Option<&RegionId>,
) -> Vec<String> {
    let mut holder = holder.cloned();
    let mut fenced = false;
    let mut evidence = Vec::new();
    for e in window {
        match e.kind {
            JournalKind::Fenced if e.region.is_some() && e.region == holder => fenced = true,
            JournalKind::Promoted => {
                let Some(to) = e.region.clone() else { continue };
                if let Some(h) = &holder
                    && *h != to
                    && !fenced
                {
                    evidence.push(format!(
                        "journal #{}: {to} promoted (epoch {}) at {} before any fence of {h} was journaled",
                        e.seq, e.epoch, e.at_unix_ms
                    ));
                }
                holder = Some(to);
                fenced = false;
            }
            _ => {}
        }
    }
    evidence
}

/// One failover step from the journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    /// detected, confirmed, fenced, promoted, rerouted, verified.
    pub step: String,
    pub region: Option<RegionId>,
    pub seq: u64,
    pub at_unix_ms: u64,
    /// Milliseconds from the fault injection to this step (wall clocks).
    pub since_fault_ms: i64,
    /// Milliseconds from the previous step found (the controller's monotonic clock).
    pub duration_ms: Option<u64>,
    pub detail: String,
}

/// The failover steps in their order: the first journal entry of each kind.
pub fn steps(window: &[JournalEntry], fault_at_ms: u64) -> Vec<Step> {
    const ORDER: [JournalKind; 6] = [
        JournalKind::Detected,
        JournalKind::Confirmed,
        JournalKind::Fenced,
        JournalKind::Promoted,
        JournalKind::Rerouted,
        JournalKind::Verified,
    ];
    let mut out: Vec<Step> = Vec::new();
    let mut prev_mono: Option<u64> = None;
    for kind in ORDER {
        let Some(e) = window.iter().find(|e| e.kind == kind) else {
            continue;
        };
        out.push(Step {
            step: kind.as_str().to_owned(),
            region: e.region.clone(),
            seq: e.seq,
            at_unix_ms: e.at_unix_ms,
            since_fault_ms: e.at_unix_ms as i64 - fault_at_ms as i64,
            duration_ms: prev_mono.map(|p| e.mono_ms.saturating_sub(p)),
            detail: e.detail.clone(),
        });
        prev_mono = Some(e.mono_ms);
    }
    out
}

/// The first promotion in the window: (instant, region).
pub fn first_promotion(window: &[JournalEntry]) -> Option<(u64, Option<RegionId>)> {
    window
        .iter()
        .find(|e| e.kind == JournalKind::Promoted)
        .map(|e| (e.at_unix_ms, e.region.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use lifeboat_core::Epoch;
    use std::net::Ipv4Addr;

    const A: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 1, 1));
    const B: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 2, 1));

    fn op(n: u64, start: u64, end: u64, outcome: Outcome, addr: IpAddr) -> Op {
        Op {
            id: format!("r-{n}"),
            start_ms: start,
            end_ms: end,
            outcome,
            addr: Some(addr),
            region: None,
            status: None,
            error: None,
        }
    }

    fn entry(seq: u64, at: u64, kind: JournalKind, region: &str) -> JournalEntry {
        JournalEntry {
            seq,
            at_unix_ms: at,
            mono_ms: at + 1000,
            epoch: Epoch(1),
            kind,
            region: Some(RegionId::new(region)),
            detail: String::new(),
        }
    }

    /// a takes writes until the fault at 1000, b from 2500 on.
    fn failover_history() -> Vec<Op> {
        vec![
            op(1, 900, 910, Outcome::Ok, A),
            op(2, 950, 960, Outcome::Ok, A),
            op(3, 990, 1990, Outcome::Unknown, A),
            op(4, 1100, 1101, Outcome::Failed, A),
            op(5, 2400, 2500, Outcome::Ok, B),
            op(6, 2600, 2610, Outcome::Ok, B),
        ]
    }

    #[test]
    fn rto_runs_from_last_ack_before_the_fault_to_first_ack_after() {
        let r = rto(&failover_history(), 1000).expect("recovered");
        assert_eq!(r.last_ok_before_ms, 960);
        assert_eq!(r.first_ok_after_ms, 2500);
        assert_eq!(r.rto_ms, 1540);
    }

    #[test]
    fn a_write_in_flight_at_the_fault_counts_before_it() {
        // Started before the fault took effect, acknowledged by the dying region after:
        // it is the last ok before the fault, not the first after.
        let mut ops = failover_history();
        ops.push(op(9, 995, 1005, Outcome::Ok, A));
        let r = rto(&ops, 1000).expect("recovered");
        assert_eq!(r.last_ok_before_ms, 1005);
        assert_eq!(r.first_ok_after_ms, 2500);
    }

    #[test]
    fn no_ack_after_the_fault_means_no_rto() {
        let ops: Vec<Op> = failover_history().into_iter().take(4).collect();
        assert_eq!(rto(&ops, 1000), None);
    }

    #[test]
    fn lost_writes_are_acknowledged_ones_missing_from_the_read() {
        let ops = failover_history();
        let present: HashSet<String> = ["r-1", "r-5", "r-6", "r-3"].map(String::from).into();
        let lost = lost_acknowledged(&ops, &present);
        assert_eq!(lost.count, 1);
        assert_eq!(lost.ids, vec!["r-2".to_owned()]);
        assert_eq!((lost.first_ms, lost.last_ms), (Some(950), Some(960)));
        // The unknown write r-3 committed; the failed r-4 did not.
        assert_eq!(present_with_outcome(&ops, Outcome::Unknown, &present), 1);
        assert_eq!(present_with_outcome(&ops, Outcome::Failed, &present), 0);
        let all: HashSet<String> = ops.iter().map(|o| o.id.clone()).collect();
        assert_eq!(lost_acknowledged(&ops, &all).count, 0);
    }

    #[test]
    fn a_clean_failover_is_not_a_dual_primary() {
        let ops = failover_history();
        assert!(dual_primary_from_ops(&ops, Some(B), Some(2300), &[]).is_empty());
        let j = vec![
            entry(10, 1200, JournalKind::Detected, "a"),
            entry(11, 1300, JournalKind::Confirmed, "a"),
            entry(12, 2200, JournalKind::Fenced, "a"),
            entry(13, 2300, JournalKind::Promoted, "b"),
            entry(14, 2300, JournalKind::Rerouted, "b"),
        ];
        assert!(dual_primary_from_journal(&j, Some(&RegionId::new("a"))).is_empty());
    }

    #[test]
    fn the_old_region_acknowledging_after_the_promotion_is_a_dual_primary() {
        let mut ops = failover_history();
        ops.push(op(7, 2550, 2560, Outcome::Ok, A));
        let ev = dual_primary_from_ops(&ops, Some(B), Some(2300), &[]);
        assert_eq!(ev.len(), 1, "{ev:?}");
        assert!(ev[0].contains("r-7"), "{ev:?}");
        // Even without a journal, b's first acknowledgement (2500) is the cutoff.
        assert_eq!(dual_primary_from_ops(&ops, Some(B), None, &[]).len(), 1);
        // A write to a that was merely unknown proves nothing.
        let mut ops = failover_history();
        ops.push(op(7, 2550, 3550, Outcome::Unknown, A));
        assert!(dual_primary_from_ops(&ops, Some(B), Some(2300), &[]).is_empty());
    }

    #[test]
    fn a_move_back_makes_the_old_region_the_holder_again() {
        // b promoted at 2300, then (b unhealthy) a promoted again at 5000.
        let mut ops = failover_history();
        ops.push(op(7, 5100, 5110, Outcome::Ok, A));
        let later = [(5000, Some(A))];
        assert!(
            dual_primary_from_ops(&ops, Some(B), Some(2300), &later).is_empty(),
            "a's writes after its own promotion are not a dual primary"
        );
        // a acknowledging between b's promotion and its own return still is…
        ops.push(op(8, 3000, 3010, Outcome::Ok, A));
        let ev = dual_primary_from_ops(&ops, Some(B), Some(2300), &later);
        assert_eq!(ev.len(), 1, "{ev:?}");
        assert!(ev[0].contains("r-8"), "{ev:?}");
        // …and so is b acknowledging after it was replaced.
        let mut ops = failover_history();
        ops.push(op(9, 5200, 5210, Outcome::Ok, B));
        let ev = dual_primary_from_ops(&ops, Some(B), Some(2300), &later);
        assert_eq!(ev.len(), 1, "{ev:?}");
        assert!(ev[0].contains("r-9") && ev[0].contains("at 5000"), "{ev:?}");
    }

    #[test]
    fn the_new_region_acknowledging_before_its_promotion_is_a_dual_primary() {
        let mut ops = failover_history();
        ops.push(op(8, 940, 945, Outcome::Ok, B));
        let ev = dual_primary_from_ops(&ops, Some(B), Some(2300), &[]);
        assert!(
            ev.iter().any(|e| e.contains("before its promotion")),
            "{ev:?}"
        );
    }

    #[test]
    fn a_promotion_without_a_journaled_fence_is_a_dual_primary() {
        let j = vec![
            entry(10, 1200, JournalKind::Detected, "a"),
            entry(11, 1300, JournalKind::Promoted, "b"),
            // A fence journaled after the promotion does not count.
            entry(12, 1400, JournalKind::Fenced, "a"),
        ];
        let ev = dual_primary_from_journal(&j, Some(&RegionId::new("a")));
        assert_eq!(ev.len(), 1, "{ev:?}");
        assert!(ev[0].contains("#11"), "{ev:?}");
        // A fence of some other region is not the holder's fence.
        let j = vec![
            entry(10, 1200, JournalKind::Fenced, "c"),
            entry(11, 1300, JournalKind::Promoted, "b"),
        ];
        assert_eq!(
            dual_primary_from_journal(&j, Some(&RegionId::new("a"))).len(),
            1
        );
    }

    #[test]
    fn steps_come_in_order_with_durations() {
        let j = vec![
            entry(9, 900, JournalKind::LeaseGranted, "a"),
            entry(10, 1200, JournalKind::Detected, "a"),
            entry(11, 1300, JournalKind::Confirmed, "a"),
            entry(12, 2200, JournalKind::Fenced, "a"),
            entry(13, 2300, JournalKind::Promoted, "b"),
            entry(14, 2300, JournalKind::Rerouted, "b"),
            entry(15, 2900, JournalKind::Verified, "b"),
        ];
        let s = steps(&j, 1000);
        let names: Vec<&str> = s.iter().map(|s| s.step.as_str()).collect();
        assert_eq!(
            names,
            [
                "detected",
                "confirmed",
                "fenced",
                "promoted",
                "rerouted",
                "verified"
            ]
        );
        assert_eq!(s[0].since_fault_ms, 200);
        assert_eq!(s[0].duration_ms, None);
        assert_eq!(s[2].duration_ms, Some(900));
        assert_eq!(s[5].duration_ms, Some(600));
        assert_eq!(first_promotion(&j), Some((2300, Some(RegionId::new("b")))));
    }

    #[test]
    fn unavailability_is_the_longest_gap_with_failed_writes() {
        // a acknowledges up to 960, nothing until b's 2500: 1540 ms.
        let ops = failover_history();
        assert_eq!(longest_unavailability(&ops, 1000, 5000), 1540);
        // No failure, no unavailability, however sparse the writes.
        let quiet = vec![
            op(1, 0, 5, Outcome::Ok, A),
            op(2, 4000, 4005, Outcome::Ok, A),
        ];
        assert_eq!(longest_unavailability(&quiet, 0, 5000), 0);
        // A failure before the window does not count; one with no recovery runs to
        // the end of the window.
        assert_eq!(longest_unavailability(&ops, 3000, 5000), 0);
        let mut stuck = ops.clone();
        stuck.push(op(7, 3000, 3001, Outcome::Failed, B));
        assert_eq!(longest_unavailability(&stuck, 1000, 9000), 9000 - 2610);
    }
}
