//! The data-role trait: how the agent drives the data layers of its region.
//!
//! A *data role* is anything in a region whose writes must stop when the region
//! loses its lease and that must be promoted when the region becomes active: the
//! database, object replication, the region's services. The agent holds a list of
//! them and calls them in order; each implementation lives in its own crate
//! (`lifeboat-pg`, `lifeboat-mysql`, `lifeboat-objects`, the agent's service
//! supervisor) and this crate only names the contract.
//!
//! Contract:
//! - [`DataRole::fence`] must leave the role refusing writes *for real* (stop the
//!   server or close it to clients; a read-only flag any session can undo is not a
//!   fence). It must be idempotent and must finish quickly: the agent calls it when
//!   its lease runs out.
//! - [`DataRole::activate`] makes the role writable in this region under `epoch`.
//! - [`DataRole::follow`] makes the role a standby of the active region (rejoin);
//!   anything that would be discarded in the process is kept aside and reported.
//! - [`DataRole::status`] is cheap and never blocks for long: it reports role, lag
//!   and whether this standby is ready to be promoted.
//! - [`DataRole::guard_targets`] names the processes the region guard kills when the
//!   agent stops feeding it (rule 2: a dead or frozen agent cannot leave its
//!   region writable). Files, not pids: the guard reads them when it fires, so a server
//!   restarted since the guard started is the one it kills.
//!
//! The epoch rule, the same for every role ([`EpochRatchet`] enforces it):
//! - a fence is always carried out, whatever its epoch: fencing is never unsafe (a late
//!   one can cost availability, never a second writer), and the agent already refuses
//!   commands older than its own epoch before they reach a role (rule 1);
//! - an activation or a follow older than the highest epoch the role has seen is
//!   refused with [`RoleError::StaleEpoch`]: acting on it could make a region writable,
//!   or repoint it, on a decision that has been superseded;
//! - every accepted call raises the highest epoch seen; nothing lowers it.

use crate::{Epoch, HealthStatus, RegionId};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;

/// Errors a data role reports. Callers tell them apart: a stale epoch is not a timeout.
#[derive(Debug, thiserror::Error)]
pub enum RoleError {
    #[error("stale epoch {got}: this role has already seen epoch {seen}")]
    StaleEpoch { got: Epoch, seen: Epoch },
    #[error("{role} is not ready to be promoted: {reason}")]
    NotReady { role: String, reason: String },
    #[error("{role} is unreachable: {reason}")]
    Unreachable { role: String, reason: String },
    #[error("{role}: {message}")]
    Failed { role: String, message: String },
}

/// What the agent tells a role when its region becomes the active one.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Activation {
    pub epoch: Epoch,
    pub region: RegionId,
    /// True when an operator forced the promotion past a readiness check.
    pub forced: bool,
}

/// What the agent tells a role when its region must follow another (rejoin).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FollowTarget {
    pub epoch: Epoch,
    /// The region that now takes writes.
    pub active: RegionId,
}

/// Coarse role a data layer reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RoleHealth {
    Primary,
    Standby,
    Fenced,
    Stopped,
    Unknown,
}

/// A data role's self-report, shown in status and consulted before promotion.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoleStatus {
    pub name: String,
    pub role: RoleHealth,
    pub health: HealthStatus,
    /// Replication lag seen from this side, when it is a standby.
    pub lag_bytes: Option<u64>,
    pub lag_seconds: Option<f64>,
    /// A standby that has applied everything it received and lags under the limit.
    pub ready_to_promote: bool,
    /// True when this standby has everything the primary acknowledged (planned
    /// switchover waits for it: zero data loss).
    pub caught_up: bool,
    /// Human-readable detail (errors, the reason for not being ready …).
    pub detail: String,
    /// Extra figures for metrics and status (name -> value).
    #[serde(default)]
    pub metrics: std::collections::BTreeMap<String, f64>,
}

impl RoleStatus {
    pub fn new(name: impl Into<String>, role: RoleHealth) -> Self {
        Self {
            name: name.into(),
            role,
            health: HealthStatus::Unknown,
            lag_bytes: None,
            lag_seconds: None,
            ready_to_promote: false,
            caught_up: false,
            detail: String::new(),
            metrics: Default::default(),
        }
    }
}

/// What the region guard kills when it fires (read when it fires, never cached for
/// long: a server restarted since is followed). Each names how to recognise the process,
/// so a stale pid file whose pid was reused by an unrelated process kills nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum GuardTarget {
    /// A PostgreSQL postmaster: its pid is the first line of `<data_dir>/postmaster.pid`
    /// and its working directory is `data_dir`. SIGQUIT (immediate shutdown: every
    /// backend exits at once without committing more), then SIGKILL of the postmaster
    /// and of the children it had, a moment later.
    Postmaster { data_dir: PathBuf },
    /// A server process SIGKILLed (MariaDB's `mariadbd`): its pid is the first word of
    /// `pid_file`, its command name (`/proc/PID/comm`) is `comm`.
    Process { pid_file: PathBuf, comm: String },
    /// A process group SIGKILLed (a supervised service): `pgid_file` holds "PGID
    /// STARTTIME" (the leader's start time in clock ticks, from /proc/PID/stat), written
    /// by the supervisor while the service runs and removed when it stops.
    ProcessGroup { pgid_file: PathBuf },
}

/// The highest epoch a role has seen, and the module's epoch rule: fences always pass
/// (and raise it), activations and follows below it are refused.
#[derive(Debug, Default)]
pub struct EpochRatchet(std::sync::Mutex<Epoch>);

impl EpochRatchet {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Epoch> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The highest epoch seen.
    pub fn highest(&self) -> Epoch {
        *self.lock()
    }

    /// A fence at `epoch`: always carried out; raises the ratchet.
    pub fn fence(&self, epoch: Epoch) {
        let mut seen = self.lock();
        *seen = (*seen).max(epoch);
    }

    /// An activation or a follow at `epoch`: refused below the highest epoch seen,
    /// otherwise it raises the ratchet.
    pub fn admit(&self, epoch: Epoch) -> Result<(), RoleError> {
        let mut seen = self.lock();
        if epoch < *seen {
            return Err(RoleError::StaleEpoch {
                got: epoch,
                seen: *seen,
            });
        }
        *seen = epoch;
        Ok(())
    }
}

/// How long the agent waits for one role's [`DataRole::status`] before it reports "status
/// timed out" for it. A role that bounds its own status (to say *what* did not answer)
/// must use a shorter bound, or its own report can never arrive.
pub const STATUS_DEADLINE: std::time::Duration = std::time::Duration::from_secs(2);

/// A data layer of one region that the agent fences, promotes and demotes.
#[async_trait::async_trait]
pub trait DataRole: Send + Sync {
    /// Short stable name, e.g. "postgres", "objects", "services".
    fn name(&self) -> &str;
    /// Current role, lag and readiness. Answers within [`STATUS_DEADLINE`].
    async fn status(&self) -> RoleStatus;
    /// Stop accepting writes in this region, for real. Idempotent.
    async fn fence(&self, epoch: Epoch) -> Result<(), RoleError>;
    /// Become writable in this region.
    async fn activate(&self, activation: &Activation) -> Result<(), RoleError>;
    /// Become (or stay) a standby of the active region.
    async fn follow(&self, target: &FollowTarget) -> Result<(), RoleError>;
    /// The processes the region guard must kill to fence this role without the agent.
    /// Empty (the default) for a role whose writes cannot outlive the agent: one that
    /// runs inside the agent process, or a server lifeboat does not manage (the guard
    /// never kills what lifeboat did not start).
    fn guard_targets(&self) -> Vec<GuardTarget> {
        Vec::new()
    }
}

/// How roles are shared between the agent's tasks.
pub type SharedRole = Arc<dyn DataRole>;

#[cfg(test)]
mod epoch_rule_tests {
    use super::*;

    #[test]
    fn fences_always_pass_and_stale_activations_and_follows_are_refused() {
        let r = EpochRatchet::new();
        r.admit(Epoch(3)).expect("activate at 3");
        // A late fence at an older epoch is carried out and lowers nothing.
        r.fence(Epoch(2));
        assert_eq!(r.highest(), Epoch(3));
        match r.admit(Epoch(2)) {
            Err(RoleError::StaleEpoch { got, seen }) => {
                assert_eq!((got, seen), (Epoch(2), Epoch(3)));
            }
            other => panic!("a stale activation passed: {other:?}"),
        }
        // The same epoch again is idempotent; a fence at a newer one raises it.
        r.admit(Epoch(3)).expect("same epoch");
        r.fence(Epoch(5));
        assert_eq!(r.highest(), Epoch(5));
        assert!(r.admit(Epoch(4)).is_err(), "below a fence's epoch");
        r.admit(Epoch(6)).expect("newer");
    }
}
