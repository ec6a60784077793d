//! The drill's report: one [`RunReport`] per run, judged from its recorded history by
//! [`analyze`] (pure), a [`Summary`] across runs, and the terminal rendering.
//!
//! The JSON form (serde) is the report's contract: `scenario`, `runs[]` with `rto_ms`,
//! `lost_acknowledged_writes`, `unknown_committed`, `dual_primary` and `steps`, and
//! `summary`. Fields may be added; these are not renamed.

use crate::Scenario;
use crate::history::{self, Lost, Op, Outcome, Step};
use lifeboat_core::{JournalEntry, JournalKind, RegionId};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::fmt::Write;
use std::net::IpAddr;

/// Everything a run recorded, before judgement.
#[derive(Debug, Clone)]
pub struct RunRecord {
    pub run: u32,
    pub run_id: String,
    pub target: RegionId,
    pub started_ms: u64,
    /// When the injection started.
    pub fault_at_ms: u64,
    /// When the injection command returned: the fault is in effect (RTO counts from here).
    pub fault_effective_ms: u64,
    pub restored_at_ms: Option<u64>,
    pub recovered: bool,
    /// The active region the controller reported when the run stopped writing.
    pub new_active: Option<RegionId>,
    pub ops: Vec<Op>,
    /// The controller's journal from just before the fault to the end of the run.
    pub journal: Vec<JournalEntry>,
    /// The ids the final read found.
    pub present: HashSet<String>,
    /// Each region's client-facing address (from the config).
    pub region_addrs: BTreeMap<RegionId, IpAddr>,
    /// Problems worth showing that did not stop the run (read-back retries, restore errors).
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Counts {
    pub ok: usize,
    pub failed: usize,
    pub unknown: usize,
}

/// One run, judged.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunReport {
    pub run: u32,
    pub run_id: String,
    /// The region the fault was injected into.
    pub target: RegionId,
    pub new_active: Option<RegionId>,
    /// Writes succeeded again and the controller reported a new active region in time.
    pub recovered: bool,
    pub started_at_unix_ms: u64,
    pub fault_at_unix_ms: u64,
    /// When the injection command returned.
    pub fault_effective_at_unix_ms: u64,
    pub restored_at_unix_ms: Option<u64>,
    /// Last acknowledged write started before the fault took effect -> first acknowledged
    /// write started after.
    pub rto_ms: Option<u64>,
    pub last_ok_before_fault_unix_ms: Option<u64>,
    pub first_ok_after_fault_unix_ms: Option<u64>,
    pub writes: Counts,
    /// Acknowledged writes missing from the final read (RPO).
    pub lost_acknowledged_writes: usize,
    /// The writes counted in `lost_acknowledged_writes`: ids and the time they span.
    pub lost: Lost,
    /// Writes with an unknown outcome that the final read found.
    pub unknown_committed: usize,
    /// Definitely failed writes that the final read found anyway (should be 0).
    pub failed_but_present: usize,
    /// Did two regions ever accept writes at once (from the writes or the journal)?
    pub dual_primary: bool,
    pub dual_primary_evidence: Vec<String>,
    /// The journal's failover steps after the fault.
    pub steps: Vec<Step>,
    /// Acknowledged writes per answering region (or address, for unknown ones).
    pub acknowledged_by: BTreeMap<String, usize>,
    pub notes: Vec<String>,
    /// Every write (the HTML timeline draws them).
    pub ops: Vec<Op>,
}

/// Across runs.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Summary {
    pub runs: usize,
    pub recovered: usize,
    pub rto_median_ms: Option<u64>,
    pub rto_max_ms: Option<u64>,
    pub lost_acknowledged_writes_total: usize,
    pub unknown_committed_total: usize,
    pub dual_primary_any: bool,
}

/// The whole drill.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DrillReport {
    pub scenario: Scenario,
    pub deployment: String,
    pub app_name: String,
    pub started_at_unix_ms: u64,
    pub finished_at_unix_ms: u64,
    pub runs: Vec<RunReport>,
    pub summary: Summary,
    /// Why the drill stopped before all its runs (the runs above are complete).
    #[serde(default)]
    pub error: Option<String>,
}

/// Judge one run's history.
pub fn analyze(r: RunRecord) -> RunReport {
    let rto = history::rto(&r.ops, r.fault_effective_ms);
    let lost = history::lost_acknowledged(&r.ops, &r.present);
    let window: Vec<JournalEntry> = r.journal.clone();
    let promotion = history::first_promotion(&window);
    let new_region = promotion
        .as_ref()
        .and_then(|(_, reg)| reg.clone())
        .or_else(|| r.new_active.clone().filter(|a| *a != r.target));
    // The new primary's address: the config's, else whoever acknowledged the last write.
    let new_addr = new_region
        .as_ref()
        .and_then(|reg| r.region_addrs.get(reg).copied())
        .or_else(|| {
            new_region.as_ref().and_then(|_| {
                r.ops
                    .iter()
                    .filter(|o| o.outcome == Outcome::Ok)
                    .max_by_key(|o| o.end_ms)
                    .and_then(|o| o.addr)
            })
        });
    // Promotions after the first (a move back, say): each makes its region the holder.
    let later: Vec<(u64, Option<IpAddr>)> = window
        .iter()
        .filter(|e| e.kind == JournalKind::Promoted)
        .skip(1)
        .map(|e| {
            let addr = e
                .region
                .as_ref()
                .and_then(|reg| r.region_addrs.get(reg).copied());
            (e.at_unix_ms, addr)
        })
        .collect();
    let mut evidence =
        history::dual_primary_from_ops(&r.ops, new_addr, promotion.map(|p| p.0), &later);
    evidence.extend(history::dual_primary_from_journal(&window, Some(&r.target)));
    let mut writes = Counts::default();
    let mut acknowledged_by: BTreeMap<String, usize> = BTreeMap::new();
    for o in &r.ops {
        match o.outcome {
            Outcome::Ok => {
                writes.ok += 1;
                let who = match (&o.region, o.addr) {
                    (Some(reg), _) => reg.to_string(),
                    (None, Some(a)) => a.to_string(),
                    (None, None) => "?".to_owned(),
                };
                *acknowledged_by.entry(who).or_default() += 1;
            }
            Outcome::Failed => writes.failed += 1,
            Outcome::Unknown => writes.unknown += 1,
        }
    }
    RunReport {
        run: r.run,
        run_id: r.run_id,
        target: r.target,
        new_active: r.new_active,
        recovered: r.recovered,
        started_at_unix_ms: r.started_ms,
        fault_at_unix_ms: r.fault_at_ms,
        fault_effective_at_unix_ms: r.fault_effective_ms,
        restored_at_unix_ms: r.restored_at_ms,
        rto_ms: rto.map(|x| x.rto_ms),
        last_ok_before_fault_unix_ms: rto.map(|x| x.last_ok_before_ms),
        first_ok_after_fault_unix_ms: rto.map(|x| x.first_ok_after_ms),
        writes,
        lost_acknowledged_writes: lost.count,
        lost,
        unknown_committed: history::present_with_outcome(&r.ops, Outcome::Unknown, &r.present),
        failed_but_present: history::present_with_outcome(&r.ops, Outcome::Failed, &r.present),
        dual_primary: !evidence.is_empty(),
        dual_primary_evidence: evidence,
        steps: history::steps(&window, r.fault_at_ms),
        acknowledged_by,
        notes: r.notes,
        ops: r.ops,
    }
}

/// Median (the lower middle for an even count) and maximum RTO, total losses.
pub fn summarize(runs: &[RunReport]) -> Summary {
    let mut rtos: Vec<u64> = runs.iter().filter_map(|r| r.rto_ms).collect();
    rtos.sort_unstable();
    Summary {
        runs: runs.len(),
        recovered: runs.iter().filter(|r| r.recovered).count(),
        rto_median_ms: (!rtos.is_empty()).then(|| rtos[(rtos.len() - 1) / 2]),
        rto_max_ms: rtos.last().copied(),
        lost_acknowledged_writes_total: runs.iter().map(|r| r.lost_acknowledged_writes).sum(),
        unknown_committed_total: runs.iter().map(|r| r.unknown_committed).sum(),
        dual_primary_any: runs.iter().any(|r| r.dual_primary),
    }
}

fn ms(v: Option<u64>) -> String {
    v.map_or("-".to_owned(), |v| format!("{v} ms"))
}

/// The terminal summary printed at the end of a drill.
pub fn render_summary(r: &DrillReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "drill {} against {} ({}): {} run(s)",
        r.scenario,
        r.deployment,
        r.app_name,
        r.runs.len()
    );
    for run in &r.runs {
        let _ = writeln!(
            s,
            "run {}: fault in {} -> active {}{}; RTO {}; writes ok {} failed {} unknown {}; lost acknowledged {}; unknown committed {}; dual primary {}",
            run.run,
            run.target,
            run.new_active
                .as_ref()
                .map_or("-".to_owned(), |a| a.to_string()),
            if run.recovered {
                ""
            } else {
                " (NOT RECOVERED)"
            },
            ms(run.rto_ms),
            run.writes.ok,
            run.writes.failed,
            run.writes.unknown,
            run.lost_acknowledged_writes,
            run.unknown_committed,
            if run.dual_primary { "YES" } else { "no" },
        );
        if let (Some(a), Some(b)) = (run.lost.first_ms, run.lost.last_ms) {
            let _ = writeln!(
                s,
                "  lost writes span {} ms ({}..{} ms after the fault)",
                b.saturating_sub(a),
                a as i64 - run.fault_at_unix_ms as i64,
                b as i64 - run.fault_at_unix_ms as i64
            );
        }
        for st in &run.steps {
            let _ = writeln!(
                s,
                "  {:<10} {:>+7} ms after fault{}  {}",
                st.step,
                st.since_fault_ms,
                st.duration_ms
                    .map_or(String::new(), |d| format!(" (+{d} ms)")),
                st.region.as_ref().map_or("", |r| r.as_str()),
            );
        }
        for e in &run.dual_primary_evidence {
            let _ = writeln!(s, "  DUAL PRIMARY: {e}");
        }
        for n in &run.notes {
            let _ = writeln!(s, "  note: {n}");
        }
    }
    if let Some(e) = &r.error {
        let _ = writeln!(s, "DRILL STOPPED EARLY: {e}");
    }
    let m = &r.summary;
    let _ = writeln!(
        s,
        "summary: {}/{} recovered; RTO median {} max {}; lost acknowledged writes {}; unknown committed {}; dual primary {}",
        m.recovered,
        m.runs,
        ms(m.rto_median_ms),
        ms(m.rto_max_ms),
        m.lost_acknowledged_writes_total,
        m.unknown_committed_total,
        if m.dual_primary_any { "YES" } else { "never" },
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use lifeboat_core::{Epoch, JournalKind};
    use std::net::Ipv4Addr;

    fn record() -> RunRecord {
        let a = IpAddr::V4(Ipv4Addr::new(127, 0, 1, 1));
        let b = IpAddr::V4(Ipv4Addr::new(127, 0, 2, 1));
        let op = |n: u64, s: u64, e: u64, outcome, addr, region: &str| Op {
            id: format!("x-{n}"),
            start_ms: s,
            end_ms: e,
            outcome,
            addr: Some(addr),
            region: Some(RegionId::new(region)),
            status: None,
            error: None,
        };
        let j = |seq, at, kind, region: &str| JournalEntry {
            seq,
            at_unix_ms: at,
            mono_ms: at,
            epoch: Epoch(2),
            kind,
            region: Some(RegionId::new(region)),
            detail: String::new(),
        };
        RunRecord {
            run: 1,
            run_id: "x".into(),
            target: RegionId::new("a"),
            started_ms: 0,
            fault_at_ms: 1000,
            fault_effective_ms: 1000,
            restored_at_ms: Some(5000),
            recovered: true,
            new_active: Some(RegionId::new("b")),
            ops: vec![
                op(1, 900, 950, Outcome::Ok, a, "a"),
                op(2, 1050, 2050, Outcome::Unknown, a, "a"),
                op(3, 3000, 3010, Outcome::Ok, b, "b"),
            ],
            journal: vec![
                j(5, 1500, JournalKind::Detected, "a"),
                j(6, 2500, JournalKind::Fenced, "a"),
                j(7, 2600, JournalKind::Promoted, "b"),
            ],
            present: ["x-1", "x-2", "x-3"].map(String::from).into(),
            region_addrs: [(RegionId::new("a"), a), (RegionId::new("b"), b)].into(),
            notes: vec![],
        }
    }

    #[test]
    fn a_clean_run_is_judged_clean() {
        let r = analyze(record());
        assert_eq!(r.rto_ms, Some(2060));
        assert_eq!(r.lost_acknowledged_writes, 0);
        assert_eq!(r.unknown_committed, 1);
        assert!(!r.dual_primary, "{:?}", r.dual_primary_evidence);
        assert_eq!(r.steps.len(), 3);
        assert_eq!(r.acknowledged_by.get("b"), Some(&1));
        let json = serde_json::to_value(&r).expect("json");
        for key in [
            "rto_ms",
            "lost_acknowledged_writes",
            "unknown_committed",
            "dual_primary",
            "steps",
        ] {
            assert!(json.get(key).is_some(), "{key} missing from {json}");
        }
    }

    #[test]
    fn a_lost_write_and_a_late_old_primary_are_reported() {
        let mut rec = record();
        rec.present.remove("x-1");
        let a = rec.region_addrs[&RegionId::new("a")];
        rec.ops.push(Op {
            id: "x-9".into(),
            start_ms: 2700,
            end_ms: 2710,
            outcome: Outcome::Ok,
            addr: Some(a),
            region: Some(RegionId::new("a")),
            status: Some(201),
            error: None,
        });
        rec.present.insert("x-9".into());
        let r = analyze(rec);
        assert_eq!(r.lost_acknowledged_writes, 1);
        assert_eq!(r.lost.ids, vec!["x-1".to_owned()]);
        assert!(r.dual_primary);
        let text = render_summary(&DrillReport {
            scenario: Scenario::RegionOutage,
            deployment: "shop".into(),
            app_name: "app.shop.example.".into(),
            started_at_unix_ms: 0,
            finished_at_unix_ms: 1,
            summary: summarize(std::slice::from_ref(&r)),
            runs: vec![r],
            error: Some("stopped at run 2: the deployment was not steady".into()),
        });
        assert!(text.contains("DRILL STOPPED EARLY"), "{text}");
        assert!(text.contains("lost acknowledged 1"), "{text}");
        assert!(text.contains("DUAL PRIMARY"), "{text}");
    }

    #[test]
    fn summary_takes_median_and_max() {
        let mut runs = Vec::new();
        for rto in [3000, 1000, 2000, 9000] {
            let mut r = analyze(record());
            r.rto_ms = Some(rto);
            r.lost_acknowledged_writes = 2;
            runs.push(r);
        }
        let s = summarize(&runs);
        assert_eq!(s.rto_median_ms, Some(2000));
        assert_eq!(s.rto_max_ms, Some(9000));
        assert_eq!(s.lost_acknowledged_writes_total, 8);
        assert!(!s.dual_primary_any);
    }
}
