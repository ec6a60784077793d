//! JSON bodies of every endpoint. Field names are the API: change them with care.

use lifeboat_core::{Epoch, HealthStatus, JournalEntry, RegionId, RoleStatus, VantageId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `POST /v1/lease` (agent -> controller): renew or take the lease of the active region.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseRequest {
    pub region: RegionId,
    pub epoch: Epoch,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeaseResponse {
    pub granted: bool,
    /// The controller's current epoch and active region (an agent that sees a newer
    /// epoch in which it is not active fences itself at once).
    pub epoch: Epoch,
    pub active: Option<RegionId>,
    pub ttl_ms: u64,
    pub reason: String,
}

/// A check's state at one vantage point.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CheckReport {
    pub status: HealthStatus,
    pub detail: String,
    pub latency_ms: Option<f64>,
}

/// `POST /v1/report` (agent -> controller), a few times a second.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentReport {
    pub region: RegionId,
    /// Highest epoch the agent has persisted.
    pub epoch: Epoch,
    /// The agent holds an unexpired lease and its roles are active.
    pub active: bool,
    pub fenced: bool,
    /// Wall-clock time of the agent's last self-fence, if any (ms since the Unix epoch).
    pub fenced_at_unix_ms: Option<u64>,
    /// The agent's probes of every check it runs (its vantage point).
    pub checks: BTreeMap<String, CheckReport>,
    pub roles: Vec<RoleStatus>,
    /// The promise this (standby) agent gave the active region while the witness was
    /// unreachable (rule 7, docs/architecture.md): it refuses every promotion until it runs out.
    #[serde(default)]
    pub promised: Option<PromiseView>,
    /// This (active) agent holds its lease on promises from every other region, not
    /// on a grant from the controller: it lost the witness for a while.
    #[serde(default)]
    pub witness_lost: bool,
    /// The region this agent last learned to be active at `epoch` (persisted by the
    /// agent), so a controller that lost its state can adopt it (rule 8, docs/architecture.md).
    #[serde(default)]
    pub view_active: Option<RegionId>,
}

/// `POST /v1/promise` (active agent -> every other region's agent), asked when the
/// active agent cannot renew its lease with any controller (rule 7, Patroni's
/// failsafe): "promise that you hold no epoch above `epoch`, are not active, and will
/// not activate for `duration_ms` from when you receive this (plus the lease margin)".
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromiseRequest {
    /// The active region asking.
    pub region: RegionId,
    pub epoch: Epoch,
    pub duration_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PromiseResponse {
    pub granted: bool,
    /// The region that answers and the highest epoch it has seen.
    pub region: RegionId,
    pub epoch: Epoch,
    pub reason: String,
}

/// An outstanding promise, as the promising agent reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromiseView {
    /// The region promised to (the active one).
    pub to: RegionId,
    pub epoch: Epoch,
    /// Until this agent will accept a promotion again (the promise plus the margin).
    pub remaining_ms: u64,
}

/// The controller's answer to a report: what the agent must converge to.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReportResponse {
    pub epoch: Epoch,
    pub active: Option<RegionId>,
}

/// `POST /v1/command` (controller -> agent). Every command carries its epoch; an
/// agent refuses one older than the highest it has persisted (409).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentCommand {
    pub epoch: Epoch,
    pub command: CommandKind,
    /// The active region in `epoch` (for `follow`).
    #[serde(default)]
    pub active: Option<RegionId>,
    /// An operator forced the promotion past readiness checks.
    #[serde(default)]
    pub forced: bool,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CommandKind {
    /// Take the lease and become the active region.
    Promote,
    /// Stop taking writes now (planned switchover or failover away from this region).
    Fence,
    /// Be a standby of `active`.
    Follow,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CommandResponse {
    pub epoch: Epoch,
    pub accepted: bool,
    pub detail: String,
}

/// `POST /v1/failover` and `POST /v1/switchover` (operator -> controller).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MoveRequest {
    pub to: RegionId,
    /// failover only: promote even if the target's data roles are not ready.
    #[serde(default)]
    pub force: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MoveResponse {
    pub accepted: bool,
    pub epoch: Epoch,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeaseView {
    pub holder: RegionId,
    pub epoch: Epoch,
    /// Milliseconds until the controller considers the lease certainly expired.
    pub expires_in_ms: i64,
    /// The holder renewed it with this controller (false: the lease a controller
    /// assumes when it starts or takes over the leadership).
    #[serde(default)]
    pub renewed: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegionView {
    pub name: RegionId,
    pub active: bool,
    pub health: HealthStatus,
    pub agent_addr: String,
    /// Age of the last report from this region's agent; None if never heard from.
    pub last_report_ms: Option<u64>,
    pub agent_epoch: Option<Epoch>,
    pub agent_active: bool,
    pub fenced: bool,
    pub roles: Vec<RoleStatus>,
    /// The promise this region's agent last reported (rule 7, docs/architecture.md).
    #[serde(default)]
    pub promised: Option<PromiseView>,
    /// The agent last reported holding its lease on promises (witness lost).
    #[serde(default)]
    pub witness_lost: bool,
}

/// `GET /v1/status` on the controller.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ControllerStatus {
    pub deployment: String,
    pub epoch: Epoch,
    pub active: Option<RegionId>,
    pub phase: String,
    pub mode: String,
    pub lease: Option<LeaseView>,
    pub regions: Vec<RegionView>,
    pub failovers: u64,
    /// Several controllers (store = "etcd"): who leads, each controller and etcd.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leadership: Option<LeadershipView>,
}

/// Leadership among several controllers (`[controller] store = "etcd"`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct LeadershipView {
    /// The controller that answered.
    pub this: String,
    /// The leader's member name, as etcd has it (None: nobody leads right now).
    pub leader: Option<String>,
    /// The leader's API, `http://host:port`.
    pub leader_url: Option<String>,
    /// This controller leads and may grant agent leases now.
    pub leading: bool,
    /// Each etcd endpoint and whether it answered its last status request.
    pub etcd: Vec<EtcdEndpointView>,
    /// Each controller and whether it answered its last `/healthz`, as this
    /// controller saw it (every second).
    #[serde(default)]
    pub controllers: Vec<ControllerMemberView>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ControllerMemberView {
    pub name: String,
    pub api_url: String,
    pub up: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct EtcdEndpointView {
    pub endpoint: String,
    pub healthy: bool,
    /// etcd's own view: this member is its raft leader.
    pub raft_leader: bool,
}

/// `GET /v1/health`: per check, the decision and each vantage point's view.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckView {
    pub name: String,
    pub region: Option<RegionId>,
    pub status: HealthStatus,
    pub quorum: usize,
    pub unhealthy_votes: usize,
    pub vantage: BTreeMap<String, CheckReport>,
}

/// `GET /v1/discovery`: where applications find the active region's endpoints.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Discovery {
    pub epoch: Epoch,
    pub active: Option<RegionId>,
    pub address: Option<String>,
    /// Engine-specific endpoints (e.g. "database" -> {"host":..,"port":..}).
    #[serde(default)]
    pub endpoints: BTreeMap<String, serde_json::Value>,
}

/// `GET /v1/status` on an agent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentStatus {
    pub region: RegionId,
    pub epoch: Epoch,
    pub active: bool,
    pub fenced: bool,
    pub lease_remaining_ms: Option<i64>,
    pub controller_reachable: bool,
    pub vantage: VantageId,
    pub checks: BTreeMap<String, CheckReport>,
    pub roles: Vec<RoleStatus>,
    /// See [`AgentReport::promised`].
    #[serde(default)]
    pub promised: Option<PromiseView>,
    /// See [`AgentReport::witness_lost`].
    #[serde(default)]
    pub witness_lost: bool,
}

/// `GET /v1/journal?since=SEQ`
pub type Journal = Vec<JournalEntry>;

/// Every error body: `{"error": "..."}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

/// A drill's outcome in one line, for the controller's list of drill reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrillListing {
    /// Assigned by the controller when it stores the report (empty in an upload).
    #[serde(default)]
    pub id: String,
    /// The scenario, or "random" for a random schedule.
    pub scenario: String,
    pub started_at_unix_ms: u64,
    pub finished_at_unix_ms: u64,
    pub runs: usize,
    pub recovered: usize,
    pub rto_median_ms: Option<u64>,
    pub rto_max_ms: Option<u64>,
    pub lost_acknowledged_writes: usize,
    pub dual_primary_samples: usize,
    /// The drill's verdict: passed, or the reasons it failed.
    pub passed: bool,
    #[serde(default)]
    pub failures: Vec<String>,
}

/// `POST /v1/drills`: `lifeboat drill` hands its report to the controller, which keeps
/// the newest ones for the dashboard.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DrillUpload {
    pub listing: DrillListing,
    /// The JSON report, as `--json` writes it.
    pub report: serde_json::Value,
    /// The HTML report, as `--html` writes it.
    pub html: String,
}
