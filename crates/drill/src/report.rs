//! The drill's report: one [`RunReport`] per run, judged from its recorded history by
//! [`analyze`] (pure), a [`Summary`] across runs, and the terminal rendering.
//!
//! The JSON form (serde) is the report's contract: `scenario`, `runs[]` with `rto_ms`,
//! `lost_acknowledged_writes`, `unknown_committed`, `dual_primary` and `steps`, and
//! `summary`. Fields may be added; these are not renamed. A timed fault (lifeboat's own
//! processes, `--fault-seconds`, `--schedule random`) adds per run `fault_length_ms`,
//! `unavailability_ms`, `failed_over`, `converged`, `converge_ms` and
//! `dual_primary_samples`, and the report `per_scenario` and `schedule`.

use crate::Scenario;
use crate::history::{self, Lost, Op, Outcome, Step};
use crate::sampler::{self, DualPrimarySample, Sample};
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
    pub scenario: Scenario,
    /// The database sampler's rounds from the fault to the end of the run (empty when
    /// the deployment has no `[database]`).
    pub samples: Vec<Sample>,
    /// Set for a fault that lasted a given time and was healed.
    pub timed: Option<TimedRecord>,
}

/// What a timed fault recorded beyond a run's history.
#[derive(Debug, Clone)]
pub struct TimedRecord {
    /// The region hit, or "controller".
    pub fault_target: String,
    pub length_ms: u64,
    /// When the heal (undo) command returned.
    pub healed_at_ms: u64,
    /// When the deployment was seen converged again; None: not within the timeout.
    pub converged_at_ms: Option<u64>,
    pub epoch_before: u64,
    pub epoch_after: Option<u64>,
    pub active_before: Option<RegionId>,
}

/// Dual-primary samples listed in a report, at most (the count is always exact).
const DUAL_SAMPLES_LISTED: usize = 50;

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
    pub scenario: Scenario,
    /// The region hit, or "controller".
    pub fault_target: String,
    /// How long the fault lasted before it was healed (timed faults).
    pub fault_length_ms: Option<u64>,
    pub healed_at_unix_ms: Option<u64>,
    /// The longest time without an acknowledgement in which writes failed (0: no write
    /// failed).
    pub unavailability_ms: u64,
    /// The controller promoted a region during the run (or the active region changed).
    pub failed_over: bool,
    /// Promotions journaled during the run.
    pub promotions: usize,
    pub epoch_before: Option<u64>,
    pub epoch_after: Option<u64>,
    pub active_before: Option<RegionId>,
    /// Timed faults: one active region, steady, every agent reporting, the standby
    /// following, exactly one database taking writes — again after the heal.
    pub converged: Option<bool>,
    /// From the heal to converged.
    pub converge_ms: Option<u64>,
    /// Database sampler rounds during the run, and the longest gap between two.
    pub samples: usize,
    pub max_sample_gap_ms: Option<u64>,
    /// Rounds in which two or more databases took writes.
    pub dual_primary_samples: usize,
    /// The first of them.
    pub dual_primary_sample_list: Vec<DualPrimarySample>,
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
    #[serde(default)]
    pub dual_primary_samples_total: usize,
}

/// One scenario's faults, across a schedule.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ScenarioSummary {
    pub scenario: Scenario,
    pub count: usize,
    /// Lower median and maximum of the runs' `unavailability_ms`.
    pub unavailability_median_ms: u64,
    pub unavailability_max_ms: u64,
    /// Runs that failed over.
    pub failovers: usize,
    pub dual_primary_samples: usize,
    pub lost_acknowledged_writes: usize,
    /// Runs that converged (timed faults) or recovered.
    pub converged: usize,
    pub converge_max_ms: Option<u64>,
}

/// How a random schedule was drawn (replay it with the same seed).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScheduleInfo {
    pub seed: u64,
    pub faults: u32,
    pub min_fault_ms: u64,
    pub max_fault_ms: u64,
    pub planned: Vec<crate::schedule::PlannedFault>,
    /// Scenarios left out because the deployment does not configure them, and why.
    pub skipped: Vec<(Scenario, String)>,
}

/// The last read of every write the drill had acknowledged, after all faults: a write
/// found after its own fault and missing now was lost by a later one.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct FinalRead {
    pub acknowledged: usize,
    pub lost: usize,
    pub lost_ids: Vec<String>,
    /// Why the final read could not be made, if it could not.
    pub error: Option<String>,
}

/// The whole drill.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DrillReport {
    /// The scenario, or "random" for a random schedule.
    pub scenario: String,
    pub deployment: String,
    pub app_name: String,
    pub started_at_unix_ms: u64,
    pub finished_at_unix_ms: u64,
    pub runs: Vec<RunReport>,
    pub summary: Summary,
    /// Why the drill stopped before all its runs (the runs above are complete).
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub per_scenario: Vec<ScenarioSummary>,
    #[serde(default)]
    pub schedule: Option<ScheduleInfo>,
    /// The regions whose databases were sampled, and how often.
    #[serde(default)]
    pub sampled_regions: Vec<RegionId>,
    #[serde(default)]
    pub sample_interval_ms: Option<u64>,
    #[serde(default)]
    pub final_read: Option<FinalRead>,
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
    let from_ops = history::dual_primary_from_ops(&r.ops, new_addr, promotion.map(|p| p.0), &later);
    let mut notes = r.notes.clone();
    // The writes' evidence assumes a region's app writes to its own region's database.
    // After a timed fault the old region is back (or never went: a killed agent), and
    // its app — reached through a cached DNS answer — writes to whichever database the
    // discovery names: not two primaries. With the databases sampled, they decide.
    let mut evidence = if r.timed.is_some() && !r.samples.is_empty() {
        notes.extend(from_ops.into_iter().map(|e| {
            format!(
                "{e}: the old region's app still answered; the database samples, not the answering address, judge dual primaries"
            )
        }));
        Vec::new()
    } else {
        from_ops
    };
    evidence.extend(history::dual_primary_from_journal(&window, Some(&r.target)));
    let dual_samples = sampler::dual_primary(&r.samples);
    if let (Some(first), Some(last)) = (dual_samples.first(), dual_samples.last()) {
        evidence.push(format!(
            "{} database sample(s) with two servers taking writes, {}..{} ms after the fault ({})",
            dual_samples.len(),
            first.at_unix_ms as i64 - r.fault_at_ms as i64,
            last.at_unix_ms as i64 - r.fault_at_ms as i64,
            first
                .writable
                .iter()
                .map(|x| x.as_str())
                .collect::<Vec<_>>()
                .join(" and ")
        ));
    }
    let promotions = window
        .iter()
        .filter(|e| e.kind == JournalKind::Promoted)
        .count();
    let timed = r.timed.as_ref();
    let active_before = timed.map_or(Some(r.target.clone()), |t| t.active_before.clone());
    let failed_over = promotions > 0 || (r.new_active.is_some() && r.new_active != active_before);
    // The window in which failures count: a timed fault's to its last write (through
    // the wait for convergence and the cool-down: a stuck deployment is unavailable
    // throughout); a classic run's until the undo.
    let last_op_ms = r
        .ops
        .iter()
        .map(|o| o.end_ms)
        .max()
        .unwrap_or(r.fault_at_ms);
    let end_ms = match timed {
        Some(_) => last_op_ms,
        None => r.restored_at_ms.unwrap_or(last_op_ms),
    };
    let unavailability_ms = history::longest_unavailability(&r.ops, r.fault_at_ms, end_ms);
    let fault_target = timed.map_or_else(|| r.target.to_string(), |t| t.fault_target.clone());
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
        notes,
        ops: r.ops,
        scenario: r.scenario,
        fault_target,
        fault_length_ms: timed.map(|t| t.length_ms),
        healed_at_unix_ms: timed.map(|t| t.healed_at_ms),
        unavailability_ms,
        failed_over,
        promotions,
        epoch_before: timed.map(|t| t.epoch_before),
        epoch_after: timed.and_then(|t| t.epoch_after),
        active_before,
        converged: timed.map(|t| t.converged_at_ms.is_some()),
        converge_ms: timed
            .and_then(|t| t.converged_at_ms.map(|c| c.saturating_sub(t.healed_at_ms))),
        samples: r.samples.len(),
        max_sample_gap_ms: sampler::max_gap_ms(&r.samples),
        dual_primary_samples: dual_samples.len(),
        dual_primary_sample_list: dual_samples.into_iter().take(DUAL_SAMPLES_LISTED).collect(),
    }
}

/// Per scenario, in the order of [`Scenario::ALL`]: count, unavailability, failovers,
/// dual-primary samples, lost writes, converged.
pub fn summarize_scenarios(runs: &[RunReport]) -> Vec<ScenarioSummary> {
    Scenario::ALL
        .iter()
        .filter_map(|&scenario| {
            let of: Vec<&RunReport> = runs.iter().filter(|r| r.scenario == scenario).collect();
            if of.is_empty() {
                return None;
            }
            let mut un: Vec<u64> = of.iter().map(|r| r.unavailability_ms).collect();
            un.sort_unstable();
            Some(ScenarioSummary {
                scenario,
                count: of.len(),
                unavailability_median_ms: un[(un.len() - 1) / 2],
                unavailability_max_ms: un.last().copied().unwrap_or(0),
                failovers: of.iter().filter(|r| r.failed_over).count(),
                dual_primary_samples: of.iter().map(|r| r.dual_primary_samples).sum(),
                lost_acknowledged_writes: of.iter().map(|r| r.lost_acknowledged_writes).sum(),
                converged: of
                    .iter()
                    .filter(|r| r.converged.unwrap_or(r.recovered))
                    .count(),
                converge_max_ms: of.iter().filter_map(|r| r.converge_ms).max(),
            })
        })
        .collect()
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
        dual_primary_samples_total: runs.iter().map(|r| r.dual_primary_samples).sum(),
    }
}

fn ms(v: Option<u64>) -> String {
    v.map_or("-".to_owned(), |v| format!("{v} ms"))
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
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
    if let Some(sc) = &r.schedule {
        let _ = writeln!(
            s,
            "random schedule: seed {} (replay: --schedule random --seed {} --faults {} --fault-seconds {}), {} fault(s)",
            sc.seed,
            sc.seed,
            sc.faults,
            crate::schedule::FaultLength {
                min_ms: sc.min_fault_ms,
                max_ms: sc.max_fault_ms
            },
            sc.planned.len()
        );
        for (scenario, why) in &sc.skipped {
            let _ = writeln!(s, "  skipped {scenario}: {why}");
        }
    }
    if r.sampled_regions.is_empty() {
        let _ = writeln!(
            s,
            "databases: not sampled (no [database] in the config): dual primaries are judged from the writes and the journal only"
        );
    } else {
        let _ = writeln!(
            s,
            "databases of {} asked every {} whether they take writes",
            r.sampled_regions
                .iter()
                .map(|x| x.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            ms(r.sample_interval_ms)
        );
    }
    for run in &r.runs {
        if let Some(len) = run.fault_length_ms {
            let _ = writeln!(
                s,
                "run {}: {} of {} for {:.1} s; unavailable {} ms; failed over {}{}; {}; epoch {} -> {}; writes ok {} failed {} unknown {}; lost acknowledged {}; dual-primary samples {} of {}",
                run.run,
                run.scenario,
                run.fault_target,
                len as f64 / 1000.0,
                run.unavailability_ms,
                yes_no(run.failed_over),
                match (&run.active_before, &run.new_active) {
                    (Some(a), Some(b)) if a != b => format!(" ({a} -> {b})"),
                    _ => String::new(),
                },
                match (run.converged, run.converge_ms) {
                    (Some(true), Some(c)) =>
                        format!("converged {:.1} s after the heal", c as f64 / 1000.0),
                    _ => "NOT CONVERGED".to_owned(),
                },
                run.epoch_before.map_or("-".into(), |e| e.to_string()),
                run.epoch_after.map_or("-".into(), |e| e.to_string()),
                run.writes.ok,
                run.writes.failed,
                run.writes.unknown,
                run.lost_acknowledged_writes,
                run.dual_primary_samples,
                run.samples,
            );
        } else {
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
        }
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
        if let Some(gap) = run.max_sample_gap_ms
            && r.sample_interval_ms.is_some_and(|i| gap > 2 * i)
        {
            let _ = writeln!(
                s,
                "  note: the database samples had a gap of {gap} ms (the drill was starved): a breach shorter than that may be unseen"
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
    if let Some(f) = &r.final_read {
        match &f.error {
            Some(e) => {
                let _ = writeln!(
                    s,
                    "final read of all {} acknowledged writes FAILED: {e}",
                    f.acknowledged
                );
            }
            None => {
                let _ = writeln!(
                    s,
                    "final read: {} of {} acknowledged writes missing after all faults{}",
                    f.lost,
                    f.acknowledged,
                    if f.lost > 0 { " (LOST)" } else { "" }
                );
            }
        }
    }
    let m = &r.summary;
    let _ = writeln!(
        s,
        "summary: {}/{} {}; RTO median {} max {}; lost acknowledged writes {}; unknown committed {}; dual primary {}{}",
        m.recovered,
        m.runs,
        if r.runs.iter().any(|x| x.converged.is_some()) {
            "converged"
        } else {
            "recovered"
        },
        ms(m.rto_median_ms),
        ms(m.rto_max_ms),
        m.lost_acknowledged_writes_total,
        m.unknown_committed_total,
        if m.dual_primary_any { "YES" } else { "never" },
        if r.sampled_regions.is_empty() {
            String::new()
        } else {
            format!(
                " ({} dual-primary database samples)",
                m.dual_primary_samples_total
            )
        },
    );
    if r.runs.iter().any(|x| x.fault_length_ms.is_some()) {
        let _ = writeln!(
            s,
            "{:<17} {:>5} {:>13} {:>10} {:>9} {:>12} {:>5} {:>9}",
            "scenario",
            "count",
            "unavail. med",
            "max",
            "failovers",
            "dual-primary",
            "lost",
            "converged"
        );
        for p in &r.per_scenario {
            let _ = writeln!(
                s,
                "{:<17} {:>5} {:>10} ms {:>7} ms {:>9} {:>12} {:>5} {:>5}/{}",
                p.scenario.as_str(),
                p.count,
                p.unavailability_median_ms,
                p.unavailability_max_ms,
                p.failovers,
                p.dual_primary_samples,
                p.lost_acknowledged_writes,
                p.converged,
                p.count
            );
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampler::Writable;
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
            scenario: Scenario::RegionOutage,
            samples: vec![],
            timed: None,
        }
    }

    fn drill_report(runs: Vec<RunReport>, error: Option<String>) -> DrillReport {
        DrillReport {
            scenario: "region-outage".into(),
            deployment: "shop".into(),
            app_name: "app.shop.example.".into(),
            started_at_unix_ms: 0,
            finished_at_unix_ms: 1,
            summary: summarize(&runs),
            per_scenario: summarize_scenarios(&runs),
            runs,
            error,
            schedule: None,
            sampled_regions: vec![RegionId::new("a"), RegionId::new("b")],
            sample_interval_ms: Some(200),
            final_read: None,
        }
    }

    /// An agent of a killed for 10 s at 1000..11000: a keeps serving (no failover),
    /// converged 2 s after the heal; the database samples are given.
    fn timed_record(samples: Vec<(u64, Writable, Writable)>) -> RunRecord {
        let mut rec = record();
        let a = rec.region_addrs[&RegionId::new("a")];
        rec.scenario = Scenario::AgentKill;
        rec.journal.clear();
        rec.new_active = Some(RegionId::new("a"));
        rec.ops = (0..60)
            .map(|n| Op {
                id: format!("x-{n}"),
                start_ms: 500 + n * 200,
                end_ms: 510 + n * 200,
                outcome: if (11..=15).contains(&n) {
                    Outcome::Failed
                } else {
                    Outcome::Ok
                },
                addr: Some(a),
                region: Some(RegionId::new("a")),
                status: None,
                error: None,
            })
            .collect();
        rec.present = rec.ops.iter().map(|o| o.id.clone()).collect();
        rec.samples = samples
            .into_iter()
            .map(|(at_ms, wa, wb)| Sample {
                at_ms,
                regions: [(RegionId::new("a"), wa), (RegionId::new("b"), wb)].into(),
            })
            .collect();
        rec.timed = Some(TimedRecord {
            fault_target: "a".into(),
            length_ms: 10_000,
            healed_at_ms: 11_000,
            converged_at_ms: Some(13_000),
            epoch_before: 1,
            epoch_after: Some(1),
            active_before: Some(RegionId::new("a")),
        });
        rec
    }

    #[test]
    fn a_timed_fault_reports_unavailability_convergence_and_dual_primary_samples() {
        use Writable::{No, Yes};
        let clean = analyze(timed_record(vec![(1000, Yes, No), (1200, Yes, No)]));
        // Writes 11..=15 failed: from write 10's ack (2510) to write 16's (3710).
        assert_eq!(clean.unavailability_ms, 1200);
        assert!(!clean.failed_over);
        assert_eq!(clean.converged, Some(true));
        assert_eq!(clean.converge_ms, Some(2000));
        assert_eq!(clean.dual_primary_samples, 0);
        assert!(!clean.dual_primary, "{:?}", clean.dual_primary_evidence);
        assert_eq!(clean.fault_target, "a");

        let mut rec = timed_record(vec![
            (1000, Yes, No),
            (1200, Yes, Yes),
            (1400, Yes, Yes),
            (1600, No, Yes),
        ]);
        rec.journal = vec![JournalEntry {
            seq: 9,
            at_unix_ms: 1300,
            mono_ms: 1300,
            epoch: Epoch(2),
            kind: JournalKind::Promoted,
            region: Some(RegionId::new("b")),
            detail: String::new(),
        }];
        let breach = analyze(rec);
        assert_eq!(breach.dual_primary_samples, 2);
        assert!(breach.dual_primary);
        assert!(breach.failed_over);
        assert!(
            breach
                .dual_primary_evidence
                .iter()
                .any(|e| e.contains("2 database sample(s)")),
            "{:?}",
            breach.dual_primary_evidence
        );
        // a's app kept answering after b's promotion (all writes went to a): with the
        // databases sampled, that is a note, not dual-primary evidence.
        assert!(
            !breach
                .dual_primary_evidence
                .iter()
                .any(|e| e.contains("acknowledged")),
            "{:?}",
            breach.dual_primary_evidence
        );
        assert!(
            breach
                .notes
                .iter()
                .any(|n| n.contains("the database samples")),
            "{:?}",
            breach.notes
        );
        let per = summarize_scenarios(&[clean.clone(), breach.clone()]);
        assert_eq!(per.len(), 1);
        assert_eq!(per[0].scenario, Scenario::AgentKill);
        assert_eq!(per[0].count, 2);
        assert_eq!(per[0].failovers, 1);
        assert_eq!(per[0].dual_primary_samples, 2);
        assert_eq!(per[0].converged, 2);
        let text = render_summary(&drill_report(vec![clean, breach], None));
        assert!(text.contains("agent-kill of a for 10.0 s"), "{text}");
        assert!(text.contains("converged 2.0 s after the heal"), "{text}");
        assert!(text.contains("2 dual-primary database samples"), "{text}");
        assert!(text.contains("unavail. med"), "{text}");
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
        let text = render_summary(&drill_report(
            vec![r],
            Some("stopped at run 2: the deployment was not steady".into()),
        ));
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
