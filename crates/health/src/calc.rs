//! Calculated checks: AND / OR / at least N of M over the local states of child checks.
//!
//! Guarantee: an Unknown child never makes the result Unhealthy on its own. With H
//! healthy and K unknown children out of `need` required: Healthy when H >= need,
//! Unhealthy when H + K < need (no outcome of the unknown children could pass),
//! otherwise Unknown. `inverted` swaps Healthy and Unhealthy; Unknown stays Unknown.

use lifeboat_config::{CalcOp, CheckConfig};
use lifeboat_core::HealthStatus;

/// How a calculated check combines its children.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CalcRule {
    /// Healthy children required.
    pub need: usize,
    pub inverted: bool,
}

impl CalcRule {
    /// The rule of a calculated check: `min_healthy` when set, else all children for
    /// AND and one for OR.
    pub fn of(check: &CheckConfig) -> Self {
        let need = check.min_healthy.unwrap_or(match check.op {
            CalcOp::And => check.children.len(),
            CalcOp::Or => 1,
        });
        Self {
            need,
            inverted: check.inverted,
        }
    }
}

/// Combines the children's statuses; returns the status and a one-line explanation.
pub fn evaluate_calculated(rule: CalcRule, children: &[HealthStatus]) -> (HealthStatus, String) {
    let healthy = children
        .iter()
        .filter(|s| **s == HealthStatus::Healthy)
        .count();
    let unknown = children
        .iter()
        .filter(|s| **s == HealthStatus::Unknown)
        .count();
    let raw = if healthy >= rule.need {
        HealthStatus::Healthy
    } else if healthy + unknown < rule.need {
        HealthStatus::Unhealthy
    } else {
        HealthStatus::Unknown
    };
    let mut detail = format!(
        "{healthy} of {} children healthy, {unknown} unknown (needs {})",
        children.len(),
        rule.need
    );
    let status = match (rule.inverted, raw) {
        (true, HealthStatus::Healthy) => HealthStatus::Unhealthy,
        (true, HealthStatus::Unhealthy) => HealthStatus::Healthy,
        (_, s) => s,
    };
    if rule.inverted {
        detail = format!("inverted: {detail}");
    }
    (status, detail)
}

#[cfg(test)]
mod tests {
    use super::*;
    use HealthStatus::{Healthy as H, Unhealthy as U, Unknown as K};

    fn eval(need: usize, children: &[HealthStatus]) -> HealthStatus {
        evaluate_calculated(
            CalcRule {
                need,
                inverted: false,
            },
            children,
        )
        .0
    }

    #[test]
    fn and_needs_every_child() {
        assert_eq!(eval(3, &[H, H, H]), H);
        assert_eq!(eval(3, &[H, U, H]), U);
        // An unknown child keeps AND undecided, unless another child already failed it.
        assert_eq!(eval(3, &[H, K, H]), K);
        assert_eq!(eval(3, &[U, K, H]), U);
    }

    #[test]
    fn or_needs_one_child() {
        assert_eq!(eval(1, &[U, H]), H);
        assert_eq!(eval(1, &[U, U]), U);
        assert_eq!(eval(1, &[U, K]), K);
        assert_eq!(eval(1, &[H, K]), H);
    }

    #[test]
    fn min_healthy_counts_children() {
        assert_eq!(eval(2, &[H, U, H]), H);
        assert_eq!(eval(2, &[H, U, U]), U);
        assert_eq!(eval(2, &[H, U, K]), K);
        assert_eq!(eval(2, &[K, K, K]), K);
        assert_eq!(eval(0, &[U, U]), H);
    }

    #[test]
    fn inverted_swaps_decided_results_only() {
        let rule = CalcRule {
            need: 1,
            inverted: true,
        };
        assert_eq!(evaluate_calculated(rule, &[H]).0, U);
        assert_eq!(evaluate_calculated(rule, &[U]).0, H);
        let (status, detail) = evaluate_calculated(rule, &[K]);
        assert_eq!(status, K);
        assert!(detail.starts_with("inverted: "), "{detail}");
    }

    #[test]
    fn detail_counts_children() {
        let (_, detail) = evaluate_calculated(
            CalcRule {
                need: 2,
                inverted: false,
            },
            &[H, U, K],
        );
        assert_eq!(detail, "1 of 3 children healthy, 1 unknown (needs 2)");
    }
}
