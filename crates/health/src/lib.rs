//! Health checks with Route 53 semantics, run from several vantage points, and the
//! quorum decision that turns their reports into one verdict per check and region.
//!
//! Two halves:
//! - [`Prober`] runs at one vantage point (the controller or a region's agent). It probes
//!   every check whose vantage list includes that point (HTTP, HTTPS, TCP), applies the
//!   failure threshold in both directions and inversion, evaluates calculated checks
//!   (AND / OR / at least N of M) from its own local results, and publishes a
//!   [`CheckStates`] map on a `tokio::sync::watch` channel.
//! - [`decide`] is pure: given the latest [`VantageReport`] of each vantage point and its
//!   age, it says which checks and regions are Healthy, Unhealthy or Unknown. A check is
//!   Unhealthy only when a quorum of fresh vantage points says so, so one partitioned
//!   observer cannot fail a region over.
//!
//! The rules, in one place (each is tested):
//! - HTTP(S): healthy on 2xx and 3xx (redirects are not followed: a 3xx is itself healthy);
//!   with `search`, only if the string occurs in the first 5,120 bytes of the body, and no
//!   more than that is read. HTTPS certificates are not validated (Route 53 does not).
//!   `timeout` bounds the whole probe: connect, TLS, headers and the body read.
//! - TCP: healthy when a connection to `addr` is established within `timeout`.
//! - Threshold: a check starts [`HealthStatus::Unknown`] and becomes Healthy or Unhealthy
//!   after `failure_threshold` consecutive equal results; after that it changes only after
//!   `failure_threshold` consecutive results of the other kind (both directions, as Route 53).
//!   `inverted` flips each probe result before the threshold sees it.
//! - Calculated: with H healthy, K unknown children and `need` = `min_healthy`, or all
//!   children for AND, or one for OR: Healthy when H >= need, Unhealthy when H + K < need
//!   (even if every unknown child turned healthy it could not pass), otherwise Unknown.
//!   So an Unknown child never makes a calculated check Unhealthy by itself; it keeps the
//!   result Unknown only while it could still decide it. `inverted` swaps Healthy and
//!   Unhealthy of the result (Unknown stays Unknown).

mod calc;
mod probe;
mod prober;
mod quorum;
mod state;

pub use calc::{CalcRule, evaluate_calculated};
pub use prober::Prober;
pub use quorum::{CheckVerdict, Decision, decide};
pub use state::{CheckState, CheckStates, SEARCH_LIMIT};

use lifeboat_core::{HealthStatus, VantageId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One vantage point's latest report, as sent to the controller.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct VantageReport {
    pub vantage: VantageId,
    pub checks: BTreeMap<String, HealthStatus>,
    pub details: BTreeMap<String, String>,
}

impl VantageReport {
    /// The report a vantage point sends for the states its [`Prober`] published.
    pub fn from_states(vantage: VantageId, states: &CheckStates) -> Self {
        Self {
            vantage,
            checks: states.iter().map(|(n, s)| (n.clone(), s.status)).collect(),
            details: states
                .iter()
                .map(|(n, s)| (n.clone(), s.detail.clone()))
                .collect(),
        }
    }
}
