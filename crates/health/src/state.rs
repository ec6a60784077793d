//! The per-check state one vantage point keeps, and the threshold rule that moves it.
//!
//! Guarantee: a probed check's status changes only after `failure_threshold` consecutive
//! results that agree with the new status; it is Unknown until the first such run.

use lifeboat_core::HealthStatus;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// How many bytes of an HTTP body a `search` looks at (Route 53: 5,120).
pub const SEARCH_LIMIT: usize = 5120;

/// One check's state at one vantage point.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct CheckState {
    /// Status after the threshold (and, for calculated checks, after combining children).
    pub status: HealthStatus,
    /// How many results in a row equal `last_ok` (calculated: evaluations in a row that
    /// gave the same status).
    pub consecutive: u32,
    /// The last result after inversion: `Some(true)` counted as healthy. `None` before
    /// the first probe (calculated: while the result is Unknown).
    pub last_ok: Option<bool>,
    /// What the last probe saw: "HTTP 200", "connection refused", "HTTP 503",
    /// "substring \"ok\" not in first 5120 bytes", "timed out after 400ms" …
    /// Inverted checks prefix it with "inverted: ".
    pub detail: String,
    /// How long the last probe took, answered or not (None for calculated checks).
    pub latency_ms: Option<f64>,
    /// Probes run so far (calculated: evaluations so far).
    pub probes: u64,
    /// Wall-clock time (ms since the Unix epoch) of the last status change; None while
    /// the status has never left Unknown.
    #[serde(default)]
    pub changed_at_unix_ms: Option<u64>,
}

/// Every check's state at one vantage point, by check name.
pub type CheckStates = BTreeMap<String, CheckState>;

impl Default for CheckState {
    fn default() -> Self {
        Self {
            status: HealthStatus::Unknown,
            consecutive: 0,
            last_ok: None,
            detail: "not probed yet".to_owned(),
            latency_ms: None,
            probes: 0,
            changed_at_unix_ms: None,
        }
    }
}

impl CheckState {
    /// Records one probe result (already inverted when the check is) and applies the
    /// threshold. Returns true when the status changed.
    pub fn record(
        &mut self,
        ok: bool,
        detail: String,
        latency: Option<Duration>,
        threshold: u32,
        now_unix_ms: u64,
    ) -> bool {
        self.consecutive = if self.last_ok == Some(ok) {
            self.consecutive.saturating_add(1)
        } else {
            1
        };
        self.last_ok = Some(ok);
        self.detail = detail;
        self.latency_ms = latency.map(|d| d.as_secs_f64() * 1000.0);
        self.probes += 1;
        if self.consecutive >= threshold.max(1) {
            let target = if ok {
                HealthStatus::Healthy
            } else {
                HealthStatus::Unhealthy
            };
            return self.set_status(target, now_unix_ms);
        }
        false
    }

    /// Records one evaluation of a calculated check. Returns true when the status changed.
    pub(crate) fn record_evaluation(
        &mut self,
        status: HealthStatus,
        detail: String,
        now_unix_ms: u64,
    ) -> bool {
        self.consecutive = if self.probes > 0 && self.status == status {
            self.consecutive.saturating_add(1)
        } else {
            1
        };
        self.last_ok = match status {
            HealthStatus::Healthy => Some(true),
            HealthStatus::Unhealthy => Some(false),
            HealthStatus::Unknown => None,
        };
        self.detail = detail;
        self.latency_ms = None;
        self.probes += 1;
        self.set_status(status, now_unix_ms)
    }

    fn set_status(&mut self, status: HealthStatus, now_unix_ms: u64) -> bool {
        if self.status == status {
            return false;
        }
        self.status = status;
        self.changed_at_unix_ms = Some(now_unix_ms);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(s: &mut CheckState, results: &[bool], threshold: u32) -> Vec<HealthStatus> {
        results
            .iter()
            .map(|&ok| {
                s.record(ok, String::new(), None, threshold, 0);
                s.status
            })
            .collect()
    }

    use HealthStatus::{Healthy as H, Unhealthy as U, Unknown as K};

    #[test]
    fn unknown_until_threshold_equal_results() {
        let mut s = CheckState::default();
        // Alternating results never reach a run of 3: stays Unknown.
        assert_eq!(feed(&mut s, &[true, false, true, true], 3), [K, K, K, K]);
        assert_eq!(s.consecutive, 2);
        assert_eq!(feed(&mut s, &[true], 3), [H]);
        assert!(s.changed_at_unix_ms.is_some());
    }

    #[test]
    fn threshold_applies_in_both_directions() {
        let mut s = CheckState::default();
        assert_eq!(feed(&mut s, &[false, false], 2), [K, U]);
        // One good result is a blip, not a recovery.
        assert_eq!(feed(&mut s, &[true, false], 2), [U, U]);
        assert_eq!(feed(&mut s, &[true, true], 2), [U, H]);
        // And one failure does not take a healthy check down.
        assert_eq!(feed(&mut s, &[false, true, false, false], 2), [H, H, H, U]);
        assert_eq!(s.probes, 10);
    }

    #[test]
    fn threshold_one_follows_every_result() {
        let mut s = CheckState::default();
        assert_eq!(feed(&mut s, &[true, false, true], 1), [H, U, H]);
    }

    #[test]
    fn status_change_reports_true_only_on_change() {
        let mut s = CheckState::default();
        assert!(!s.record(
            true,
            "HTTP 200".into(),
            Some(Duration::from_millis(3)),
            2,
            10
        ));
        assert!(s.record(true, "HTTP 200".into(), None, 2, 20));
        assert!(!s.record(true, "HTTP 200".into(), None, 2, 30));
        assert_eq!(s.changed_at_unix_ms, Some(20));
        assert_eq!(s.consecutive, 3);
    }
}
