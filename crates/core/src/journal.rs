//! The journal: every step of every decision, with its time, so RTO can be broken
//! down step by step and safety can be checked from timestamps afterwards.

use crate::{Epoch, RegionId};
use serde::{Deserialize, Serialize};

/// What happened. The failover steps of docs/architecture.md come first, in their order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JournalKind {
    /// A region was first seen unhealthy by a quorum of vantage points, or its lease lapsed.
    Detected,
    /// The failure outlasted the thresholds and hold-down: a failover will happen.
    Confirmed,
    /// The old active region is fenced (its agent said so, or its lease certainly expired).
    Fenced,
    /// The new epoch was persisted and the new region was told to take writes.
    Promoted,
    /// DNS and discovery now point at the new region.
    Rerouted,
    /// The new region reported active and healthy under the new epoch.
    Verified,
    /// A failure cleared before it was confirmed (hold-down did its job).
    Recovered,
    LeaseGranted,
    LeaseExpired,
    /// An agent refused a command with an epoch older than its own.
    StaleEpochRefused,
    /// A failover or switchover was asked for by an operator.
    OperatorRequest,
    /// A switchover waits for the standby to catch up.
    CatchUpWait,
    /// A promotion was held back (for example: the standby lags past the limit).
    PromotionBlocked,
    /// A region's data role rejoined as a standby of the active region.
    Rejoined,
    /// Something an operator must look at (replication latency, unprotected primary …).
    Alert,
    /// Writes an old primary took that the new one lacks, kept aside and counted.
    DivergenceSaved,
    ControllerStarted,
    Info,
}

impl JournalKind {
    pub fn as_str(self) -> &'static str {
        match self {
            JournalKind::Detected => "detected",
            JournalKind::Confirmed => "confirmed",
            JournalKind::Fenced => "fenced",
            JournalKind::Promoted => "promoted",
            JournalKind::Rerouted => "rerouted",
            JournalKind::Verified => "verified",
            JournalKind::Recovered => "recovered",
            JournalKind::LeaseGranted => "lease_granted",
            JournalKind::LeaseExpired => "lease_expired",
            JournalKind::StaleEpochRefused => "stale_epoch_refused",
            JournalKind::OperatorRequest => "operator_request",
            JournalKind::CatchUpWait => "catch_up_wait",
            JournalKind::PromotionBlocked => "promotion_blocked",
            JournalKind::Rejoined => "rejoined",
            JournalKind::Alert => "alert",
            JournalKind::DivergenceSaved => "divergence_saved",
            JournalKind::ControllerStarted => "controller_started",
            JournalKind::Info => "info",
        }
    }
}

/// One journal line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalEntry {
    /// Monotonically increasing sequence number, assigned when persisted.
    pub seq: u64,
    /// Wall-clock time, milliseconds since the Unix epoch (for people and reports).
    pub at_unix_ms: u64,
    /// Milliseconds on the writer's monotonic clock since it started (for ordering
    /// and step durations that a wall-clock step cannot distort).
    pub mono_ms: u64,
    pub epoch: Epoch,
    pub kind: JournalKind,
    pub region: Option<RegionId>,
    pub detail: String,
}
