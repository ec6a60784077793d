//! The live routing table: what the controller has decided, as DNS serves it.

use crate::{Epoch, RegionId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Health of a check, a region or a role, as decided by its thresholds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum HealthStatus {
    Healthy,
    Unhealthy,
    /// Not yet known (no result yet, or every vantage point is stale).
    #[default]
    Unknown,
}

impl HealthStatus {
    /// Route 53's rule: a record with no health check, or not yet checked, counts as healthy.
    pub fn is_usable(self) -> bool {
        !matches!(self, HealthStatus::Unhealthy)
    }
}

/// What the controller has decided, published on a `tokio::sync::watch` channel.
/// DNS answers from the newest value; a change bumps `version` (the SOA serial follows it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct RoutingTable {
    /// Increases on every change of any field.
    pub version: u64,
    pub epoch: Epoch,
    /// The region that takes writes, if any.
    pub active: Option<RegionId>,
    /// Health per region as decided by the quorum of vantage points.
    pub regions: BTreeMap<RegionId, HealthStatus>,
    /// Health per named check, as decided by the quorum of vantage points.
    pub checks: BTreeMap<String, HealthStatus>,
}

impl RoutingTable {
    pub fn region_health(&self, region: &RegionId) -> HealthStatus {
        self.regions.get(region).copied().unwrap_or_default()
    }
    pub fn check_health(&self, check: &str) -> HealthStatus {
        self.checks.get(check).copied().unwrap_or_default()
    }
    pub fn is_active(&self, region: &RegionId) -> bool {
        self.active.as_ref() == Some(region)
    }
}
