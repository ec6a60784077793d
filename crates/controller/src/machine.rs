//! The failover state machine: pure, `(state, event) -> (state, actions)`.
//!
//! No I/O and no clock reads: every event comes with `now` (the controller's
//! monotonic clock), and the caller executes the returned actions *in order*. The
//! order is part of the contract: an [`Action::Persist`] always precedes the first
//! [`Action::Send`] that carries a new epoch, so a command never leaves with an
//! epoch that a crash could take back (DESIGN.md safety rule 1).
//!
//! Safety rules this module enforces (and its tests check):
//! - Promotion happens only after the old active region is fenced: either its lease
//!   has certainly expired — ttl + margin since the controller's last grant, on the
//!   controller's own clock (rule 3) — or its agent acknowledged a fence command at
//!   the current epoch (after which that agent never activates under that epoch).
//! - No lease is granted to anyone but the active region at the current epoch, and
//!   none to the old region once a move away from it has begun.
//! - Hold-down and thresholds: a failure must last `hold_down` before it is
//!   confirmed; a failed-over deployment does not fail back unless configured.

use lifeboat_api::types::CommandKind;
use lifeboat_config::{FailbackPolicy, FailoverMode};
use lifeboat_core::{Epoch, HealthStatus, JournalKind, RegionId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::time::Instant;

/// Timing and policy, from the config's `[failover]`.
#[derive(Debug, Clone)]
pub struct Params {
    pub mode: FailoverMode,
    pub failback: FailbackPolicy,
    pub lease_ttl: Duration,
    pub lease_margin: Duration,
    pub hold_down: Duration,
    /// An agent not heard from for this long is unreachable.
    pub report_ttl: Duration,
    pub require_ready_standby: bool,
    pub switchover_timeout: Duration,
    /// See `FailoverConfig::activation_grace`.
    pub activation_grace: Duration,
    /// How often an unanswered command is sent again.
    pub resend_every: Duration,
}

/// What the controller knows of one region's agent.
#[derive(Debug, Clone, Default)]
pub struct AgentView {
    pub last_report: Option<Instant>,
    pub epoch: Epoch,
    pub active: bool,
    pub fenced: bool,
    /// Every data role reports ready to be promoted.
    pub ready: bool,
    /// Every data role reports caught up with the primary.
    pub caught_up: bool,
    pub ready_detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MoveKind {
    Automatic,
    Manual,
    Switchover,
    Failback,
}

#[derive(Debug, Clone)]
pub struct Move {
    pub kind: MoveKind,
    pub from: Option<RegionId>,
    pub to: RegionId,
    pub started: Instant,
    pub forced: bool,
    pub fence_sent_at: Option<Instant>,
    /// When and how the old region was known fenced.
    pub fenced_at: Option<Instant>,
    /// Switchover: give up waiting for catch-up after this.
    pub deadline: Option<Instant>,
    pub wait_journaled: bool,
}

#[derive(Debug, Clone)]
pub enum Phase {
    /// One active region holding (or about to take) its lease.
    Steady,
    /// Moving the active role: fence `from`, then promote `to`.
    Moving(Move),
    /// The new epoch is persisted and `to` was told to promote; waiting for it to
    /// report active under the new epoch.
    Promoting {
        to: RegionId,
        since: Instant,
        last_sent: Instant,
        forced: bool,
    },
}

impl Phase {
    pub fn name(&self) -> String {
        match self {
            Phase::Steady => "steady".into(),
            Phase::Moving(m) => format!(
                "moving ({:?}) {} -> {}",
                m.kind,
                m.from.as_ref().map_or("-".into(), |r| r.to_string()),
                m.to
            )
            .to_lowercase(),
            Phase::Promoting { to, .. } => format!("promoting {to}"),
        }
    }
}

/// The lease as the controller last granted it.
#[derive(Debug, Clone)]
pub struct Lease {
    pub holder: RegionId,
    pub epoch: Epoch,
    pub granted_at: Instant,
    /// False for the lease the controller assumes at start-up (it may have granted
    /// one just before a crash); true once the holder renewed with this controller.
    pub renewed: bool,
}

/// A failure of the active region, from detection until it is acted on or clears.
#[derive(Debug, Clone)]
pub struct Failure {
    pub region: RegionId,
    pub since: Instant,
    pub reason: String,
    pub confirmed: bool,
    pub blocked_reported: bool,
}

/// What survives a restart (persisted with fsync before any command that needs it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Durable {
    pub epoch: Epoch,
    pub active: Option<RegionId>,
    /// The region active before the first failover (failback target).
    pub home: Option<RegionId>,
    /// A promotion that was persisted but not yet verified.
    pub promoting: Option<RegionId>,
    pub failovers: u64,
}

#[derive(Debug, Clone)]
pub enum Event {
    /// Time passes (the driver ticks a few times a second).
    Tick,
    /// The quorum decision of the vantage points, per region.
    Health(BTreeMap<RegionId, HealthStatus>),
    /// An agent's periodic report.
    Report {
        region: RegionId,
        epoch: Epoch,
        active: bool,
        fenced: bool,
        ready: bool,
        caught_up: bool,
        detail: String,
    },
    /// An agent asks for (or renews) the lease.
    LeaseRequest { region: RegionId, epoch: Epoch },
    /// An agent answered a command.
    CommandResult {
        region: RegionId,
        kind: CommandKind,
        epoch: Epoch,
        ok: bool,
        detail: String,
    },
    /// `lifeboat failover --to R [--force]`.
    Failover { to: RegionId, force: bool },
    /// `lifeboat switchover --to R`.
    Switchover { to: RegionId },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Persist [`Machine::durable`] with fsync before executing the next action.
    Persist,
    Journal {
        kind: JournalKind,
        region: Option<RegionId>,
        detail: String,
    },
    /// Send a command to a region's agent, carrying `epoch`.
    Send {
        region: RegionId,
        command: CommandKind,
        epoch: Epoch,
        active: Option<RegionId>,
        forced: bool,
    },
    /// The routing table (active region) changed: publish it to DNS and discovery.
    Publish,
}

/// The answer to a request-like event.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Lease { granted: bool, reason: String },
    Move(Result<String, String>),
}

#[derive(Debug, Default)]
pub struct Output {
    pub actions: Vec<Action>,
    pub reply: Option<Reply>,
}

impl Output {
    fn journal(&mut self, kind: JournalKind, region: Option<&RegionId>, detail: impl Into<String>) {
        self.actions.push(Action::Journal {
            kind,
            region: region.cloned(),
            detail: detail.into(),
        });
    }
}

/// The controller's whole decision state.
#[derive(Debug, Clone)]
pub struct Machine {
    pub params: Params,
    pub epoch: Epoch,
    pub active: Option<RegionId>,
    pub home: Option<RegionId>,
    pub failovers: u64,
    pub phase: Phase,
    pub lease: Option<Lease>,
    pub failure: Option<Failure>,
    pub health: BTreeMap<RegionId, HealthStatus>,
    pub agents: BTreeMap<RegionId, AgentView>,
    /// Failback: since when the home region has been healthy.
    home_healthy_since: Option<Instant>,
    /// When the current active region became active (start-up or promotion).
    active_since: Instant,
    /// The active region has been seen healthy since it became active.
    active_seen_healthy: bool,
}

impl Machine {
    /// Start from durable state (or the config's initial active region at epoch 0).
    ///
    /// The controller cannot know whether it granted a lease just before it stopped,
    /// so it assumes it did, *now*: nothing is promoted before ttl + margin from now
    /// unless the holder acknowledges a fence.
    /// `fresh` is true when no state existed on disk (a new deployment whose agents
    /// may not be up yet); false after a restart of a running deployment, where the
    /// active region was serving and its agent is expected to renew at once.
    pub fn restore(
        params: Params,
        regions: &[RegionId],
        durable: Durable,
        now: Instant,
        fresh: bool,
    ) -> Self {
        let lease = durable.active.clone().map(|holder| Lease {
            holder,
            epoch: durable.epoch,
            granted_at: now,
            // After a restart the holder must renew within ttl + margin or it has
            // lapsed; a fresh deployment's first holder gets the activation grace.
            renewed: !fresh,
        });
        let phase = match &durable.promoting {
            Some(to) => Phase::Promoting {
                to: to.clone(),
                since: now,
                // Send again at once: the command may never have left.
                last_sent: now.checked_sub(params.resend_every).unwrap_or(now),
                forced: false,
            },
            None => Phase::Steady,
        };
        Self {
            params,
            epoch: durable.epoch,
            active: durable.active,
            home: durable.home,
            failovers: durable.failovers,
            phase,
            lease,
            failure: None,
            health: regions
                .iter()
                .map(|r| (r.clone(), HealthStatus::Unknown))
                .collect(),
            agents: regions
                .iter()
                .map(|r| (r.clone(), AgentView::default()))
                .collect(),
            home_healthy_since: None,
            active_since: now,
            active_seen_healthy: !fresh && durable.promoting.is_none(),
        }
    }

    pub fn durable(&self) -> Durable {
        Durable {
            epoch: self.epoch,
            active: self.active.clone(),
            home: self.home.clone(),
            promoting: match &self.phase {
                Phase::Promoting { to, .. } => Some(to.clone()),
                _ => None,
            },
            failovers: self.failovers,
        }
    }

    /// When the controller will consider the current lease certainly expired.
    pub fn lease_certainly_expired_at(&self) -> Option<Instant> {
        self.lease
            .as_ref()
            .map(|l| l.granted_at + self.params.lease_ttl + self.params.lease_margin)
    }

    fn lease_expired(&self, now: Instant) -> bool {
        self.lease_certainly_expired_at().is_none_or(|t| now >= t)
    }

    fn agent_fresh(&self, region: &RegionId, now: Instant) -> bool {
        self.agents
            .get(region)
            .and_then(|a| a.last_report)
            .is_some_and(|t| now.saturating_duration_since(t) <= self.params.report_ttl)
    }

    /// Apply one event.
    pub fn step(&mut self, now: Instant, event: Event) -> Output {
        let mut out = Output::default();
        match event {
            Event::Tick => {}
            Event::Health(h) => {
                for (r, s) in h {
                    self.health.insert(r, s);
                }
                if let Some(active) = &self.active
                    && self.health.get(active) == Some(&HealthStatus::Healthy)
                {
                    self.active_seen_healthy = true;
                }
            }
            Event::Report {
                region,
                epoch,
                active,
                fenced,
                ready,
                caught_up,
                detail,
            } => self.on_report(
                now, region, epoch, active, fenced, ready, caught_up, detail, &mut out,
            ),
            Event::LeaseRequest { region, epoch } => {
                let reply = self.on_lease(now, &region, epoch, &mut out);
                out.reply = Some(reply);
            }
            Event::CommandResult {
                region,
                kind,
                epoch,
                ok,
                detail,
            } => self.on_command_result(now, region, kind, epoch, ok, detail, &mut out),
            Event::Failover { to, force } => {
                let r = self.on_operator(now, to, force, MoveKind::Manual, &mut out);
                out.reply = Some(Reply::Move(r));
            }
            Event::Switchover { to } => {
                let r = self.on_operator(now, to, false, MoveKind::Switchover, &mut out);
                out.reply = Some(Reply::Move(r));
            }
        }
        self.evaluate(now, &mut out);
        out
    }

    #[allow(clippy::too_many_arguments)]
    fn on_report(
        &mut self,
        now: Instant,
        region: RegionId,
        epoch: Epoch,
        active: bool,
        fenced: bool,
        ready: bool,
        caught_up: bool,
        detail: String,
        out: &mut Output,
    ) {
        if epoch > self.epoch {
            // An agent has seen an epoch this controller does not know (its state was
            // lost or restored from an old copy). Never issue an epoch an agent would
            // refuse: adopt it, so the next promotion goes above it.
            out.journal(
                JournalKind::Alert,
                Some(&region),
                format!(
                    "agent reports epoch {epoch}, above the controller's {}: adopting it",
                    self.epoch
                ),
            );
            self.epoch = epoch;
            out.actions.push(Action::Persist);
        }
        let Some(view) = self.agents.get_mut(&region) else {
            return;
        };
        view.last_report = Some(now);
        view.epoch = epoch;
        view.active = active;
        view.fenced = fenced;
        view.ready = ready;
        view.caught_up = caught_up;
        view.ready_detail = detail;
    }

    fn on_lease(
        &mut self,
        now: Instant,
        region: &RegionId,
        epoch: Epoch,
        out: &mut Output,
    ) -> Reply {
        let refuse = |reason: String| Reply::Lease {
            granted: false,
            reason,
        };
        if epoch < self.epoch {
            out.journal(
                JournalKind::StaleEpochRefused,
                Some(region),
                format!(
                    "lease request at epoch {epoch} refused: current epoch is {}",
                    self.epoch
                ),
            );
            return refuse(format!(
                "stale epoch {epoch}: current epoch is {}",
                self.epoch
            ));
        }
        if epoch > self.epoch {
            return refuse(format!(
                "epoch {epoch} is from the future (current {})",
                self.epoch
            ));
        }
        if self.active.as_ref() != Some(region) {
            return refuse(format!(
                "region {region} is not active in epoch {} (active: {})",
                self.epoch,
                self.active
                    .as_ref()
                    .map_or("none".into(), |r| r.to_string())
            ));
        }
        if let Phase::Moving(m) = &self.phase
            && m.from.as_ref() == Some(region)
        {
            return refuse(format!("a move from {region} to {} is in progress", m.to));
        }
        let first = self
            .lease
            .as_ref()
            .is_none_or(|l| &l.holder != region || l.epoch != epoch || !l.renewed);
        self.lease = Some(Lease {
            holder: region.clone(),
            epoch,
            granted_at: now,
            renewed: true,
        });
        if first {
            out.journal(
                JournalKind::LeaseGranted,
                Some(region),
                format!(
                    "lease granted for epoch {epoch}, ttl {:?}",
                    self.params.lease_ttl
                ),
            );
        }
        Reply::Lease {
            granted: true,
            reason: String::new(),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn on_command_result(
        &mut self,
        now: Instant,
        region: RegionId,
        kind: CommandKind,
        epoch: Epoch,
        ok: bool,
        detail: String,
        out: &mut Output,
    ) {
        match (&mut self.phase, kind) {
            (Phase::Moving(m), CommandKind::Fence)
                if ok
                    && epoch == self.epoch
                    && m.from.as_ref() == Some(&region)
                    && m.fenced_at.is_none() =>
            {
                // The agent fenced its region and will not activate again under this
                // epoch: safe to promote without waiting for the lease to run out.
                m.fenced_at = Some(now);
                out.journal(
                    JournalKind::Fenced,
                    Some(&region),
                    format!("agent confirmed fence at epoch {epoch}"),
                );
            }
            (_, CommandKind::Promote) if !ok => {
                out.journal(
                    JournalKind::PromotionBlocked,
                    Some(&region),
                    format!("promote at epoch {epoch} failed: {detail}"),
                );
            }
            _ => {}
        }
    }

    fn on_operator(
        &mut self,
        now: Instant,
        to: RegionId,
        force: bool,
        kind: MoveKind,
        out: &mut Output,
    ) -> Result<String, String> {
        let what = if kind == MoveKind::Switchover {
            "switchover"
        } else {
            "failover"
        };
        if !self.agents.contains_key(&to) {
            return Err(format!(
                "no region named {to:?} (regions: {})",
                self.agents
                    .keys()
                    .map(|r| r.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if self.active.as_ref() == Some(&to) && !matches!(self.phase, Phase::Moving(_)) {
            return Err(format!(
                "{to} is already the active region (epoch {})",
                self.epoch
            ));
        }
        if let Phase::Moving(m) = &self.phase {
            return Err(format!(
                "a move to {} is already in progress; wait for it to finish",
                m.to
            ));
        }
        if !self.agent_fresh(&to, now) {
            return Err(format!(
                "the agent of {to} is not reporting: it could not take the lease"
            ));
        }
        // The target's own checks are not consulted: a pilot-light standby's services
        // sleep (and fail their checks) until it is promoted. Its agent reporting and
        // its data roles' readiness (and, for a switchover, catch-up) decide.
        let view = &self.agents[&to];
        if !force && self.params.require_ready_standby && !view.ready {
            out.journal(
                JournalKind::PromotionBlocked,
                Some(&to),
                format!(
                    "{what} to {to} refused: standby not ready ({}); use --force to override",
                    view.ready_detail
                ),
            );
            return Err(format!(
                "{to} is not ready to be promoted: {} (use --force to override)",
                view.ready_detail
            ));
        }
        out.journal(
            JournalKind::OperatorRequest,
            Some(&to),
            format!(
                "{what} to {to} requested{}",
                if force {
                    " (forced past readiness checks)"
                } else {
                    ""
                }
            ),
        );
        let from = self.active.clone();
        self.failure = None;
        self.phase = Phase::Moving(Move {
            kind,
            from,
            to: to.clone(),
            started: now,
            forced: force,
            fence_sent_at: None,
            fenced_at: None,
            deadline: (kind == MoveKind::Switchover).then(|| now + self.params.switchover_timeout),
            wait_journaled: false,
        });
        Ok(format!("{what} to {to} started at epoch {}", self.epoch))
    }

    /// The time-driven part: detection, confirmation, fencing, promotion, verification.
    fn evaluate(&mut self, now: Instant, out: &mut Output) {
        match self.phase.clone() {
            Phase::Steady => {
                self.detect(now, out);
                self.maybe_failback(now, out);
            }
            Phase::Moving(m) => self.advance_move(now, m, out),
            Phase::Promoting {
                to,
                since: _,
                last_sent,
                forced,
            } => {
                let view = self.agents.get(&to).cloned().unwrap_or_default();
                if view.epoch == self.epoch && view.active {
                    out.journal(
                        JournalKind::Verified,
                        Some(&to),
                        format!("{to} reports active under epoch {}", self.epoch),
                    );
                    self.phase = Phase::Steady;
                    self.failure = None;
                    out.actions.push(Action::Persist);
                } else if now.saturating_duration_since(last_sent) >= self.params.resend_every {
                    // The command may have been lost: agents are idempotent.
                    out.actions.push(self.promote_command(&to, forced));
                    self.phase = Phase::Promoting {
                        to: to.clone(),
                        since: match &self.phase {
                            Phase::Promoting { since, .. } => *since,
                            _ => now,
                        },
                        last_sent: now,
                        forced,
                    };
                }
                // A promoted region that fails before it is verified is a failure of
                // the active region like any other.
                self.detect(now, out);
            }
        }
    }

    fn detect(&mut self, now: Instant, out: &mut Output) {
        let Some(active) = self.active.clone() else {
            return;
        };
        // A region that just became active may not have started its pilot-light
        // services yet: its checks count once it was seen healthy, or after the grace.
        let judged = self.active_seen_healthy
            || now.saturating_duration_since(self.active_since) >= self.params.activation_grace;
        let unhealthy = judged && self.health.get(&active) == Some(&HealthStatus::Unhealthy);
        // A lease the holder renewed with us and then let lapse: the agent is gone or
        // cut off (it has fenced itself by now).
        let lapsed = self.lease.as_ref().is_some_and(|l| {
            let grace_over =
                now.saturating_duration_since(self.active_since) >= self.params.activation_grace;
            (l.renewed || grace_over) && l.holder == active && self.lease_expired(now)
        });
        let failing = unhealthy || lapsed;
        match (&mut self.failure, failing) {
            (None, true) => {
                let reason = if unhealthy {
                    format!("{active} unhealthy by quorum of vantage points")
                } else {
                    format!("lease of {active} lapsed: its agent stopped renewing")
                };
                out.journal(JournalKind::Detected, Some(&active), reason.clone());
                self.failure = Some(Failure {
                    region: active.clone(),
                    since: now,
                    reason,
                    confirmed: false,
                    blocked_reported: false,
                });
            }
            (Some(f), false) if f.region == active => {
                out.journal(
                    JournalKind::Recovered,
                    Some(&active),
                    format!(
                        "{active} recovered after {:?}, before a failover",
                        now.saturating_duration_since(f.since)
                    ),
                );
                self.failure = None;
            }
            _ => {}
        }
        let Some(f) = self.failure.clone() else {
            return;
        };
        if f.region != active || now.saturating_duration_since(f.since) < self.params.hold_down {
            return;
        }
        if !f.confirmed {
            out.journal(
                JournalKind::Confirmed,
                Some(&active),
                format!(
                    "{} for {:?} (hold-down {:?})",
                    f.reason,
                    now.saturating_duration_since(f.since),
                    self.params.hold_down
                ),
            );
            if let Some(f) = &mut self.failure {
                f.confirmed = true;
            }
            if self.params.mode == FailoverMode::Manual {
                out.journal(
                    JournalKind::PromotionBlocked,
                    Some(&active),
                    "failover mode is manual: run `lifeboat failover --to REGION`",
                );
            }
        }
        if self.params.mode == FailoverMode::Manual {
            return;
        }
        match self.pick_target(now, &active) {
            Ok(to) => {
                self.phase = Phase::Moving(Move {
                    kind: MoveKind::Automatic,
                    from: Some(active),
                    to,
                    started: now,
                    forced: false,
                    fence_sent_at: None,
                    fenced_at: None,
                    deadline: None,
                    wait_journaled: false,
                });
                self.evaluate(now, out);
            }
            Err(why) => {
                if let Some(f) = &mut self.failure
                    && !f.blocked_reported
                {
                    f.blocked_reported = true;
                    out.journal(JournalKind::PromotionBlocked, Some(&active), why);
                }
            }
        }
    }

    /// A standby to promote: its agent reporting (the site is up and can take the
    /// lease) and its data roles ready. Healthy regions first; a pilot-light standby's
    /// own checks fail by design while its services sleep, so they do not rule it out.
    fn pick_target(&self, now: Instant, from: &RegionId) -> Result<RegionId, String> {
        let mut reasons = Vec::new();
        let mut candidates = Vec::new();
        for (region, view) in &self.agents {
            if region == from {
                continue;
            }
            let health = self.health.get(region).copied().unwrap_or_default();
            if !self.agent_fresh(region, now) {
                reasons.push(format!("{region}'s agent is not reporting"));
            } else if self.params.require_ready_standby && !view.ready {
                reasons.push(format!("{region} not ready: {}", view.ready_detail));
            } else {
                candidates.push((health != HealthStatus::Healthy, region.clone()));
            }
        }
        candidates.sort();
        candidates
            .into_iter()
            .next()
            .map(|(_, r)| r)
            .ok_or_else(|| format!("no standby can be promoted: {}", reasons.join("; ")))
    }

    fn advance_move(&mut self, now: Instant, mut m: Move, out: &mut Output) {
        // 1. Fence the old region: tell its agent (fast path) and stop renewing its
        //    lease (the agent fences itself when it runs out).
        if let Some(from) = &m.from {
            if m.fence_sent_at.is_none_or(|t| {
                m.fenced_at.is_none()
                    && now.saturating_duration_since(t) >= self.params.resend_every
            }) {
                m.fence_sent_at = Some(now);
                out.actions.push(Action::Send {
                    region: from.clone(),
                    command: CommandKind::Fence,
                    epoch: self.epoch,
                    active: self.active.clone(),
                    forced: false,
                });
            }
            if m.fenced_at.is_none() && self.lease_expired(now) {
                m.fenced_at = Some(now);
                let detail = match self.lease.as_ref() {
                    Some(l) => format!(
                        "lease of {} (epoch {}) certainly expired: ttl {:?} + margin {:?} since the last grant",
                        l.holder, l.epoch, self.params.lease_ttl, self.params.lease_margin
                    ),
                    None => "no lease outstanding".to_owned(),
                };
                out.journal(JournalKind::Fenced, Some(from), detail);
            }
        } else if m.fenced_at.is_none() {
            m.fenced_at = Some(now);
        }
        if m.fenced_at.is_none() {
            self.phase = Phase::Moving(m);
            return;
        }
        // 2. A planned switchover waits until the target has everything (zero loss).
        if m.kind == MoveKind::Switchover || m.kind == MoveKind::Failback {
            let view = self.agents.get(&m.to).cloned().unwrap_or_default();
            let fenced_at = m.fenced_at.unwrap_or(now);
            let fresh_since_fence = view.last_report.is_some_and(|t| t > fenced_at);
            if !(view.caught_up && fresh_since_fence) {
                if m.deadline.is_some_and(|d| now >= d) {
                    // Give the old region its role back under a new epoch.
                    out.journal(
                        JournalKind::Alert,
                        Some(&m.to),
                        format!(
                            "switchover to {} aborted: it did not catch up in {:?}",
                            m.to, self.params.switchover_timeout
                        ),
                    );
                    if let Some(from) = m.from.clone() {
                        self.promote(now, from, false, out);
                    } else {
                        self.phase = Phase::Steady;
                    }
                    return;
                }
                if !m.wait_journaled {
                    m.wait_journaled = true;
                    out.journal(
                        JournalKind::CatchUpWait,
                        Some(&m.to),
                        format!(
                            "{} fenced; waiting for {} to catch up",
                            m.from.as_ref().map_or("-".into(), |r| r.to_string()),
                            m.to
                        ),
                    );
                }
                self.phase = Phase::Moving(m);
                return;
            }
        }
        // 3. Promote.
        self.failovers += 1;
        if self.home.is_none() {
            self.home = m.from.clone();
        }
        self.promote(now, m.to.clone(), m.forced, out);
    }

    fn promote(&mut self, now: Instant, to: RegionId, forced: bool, out: &mut Output) {
        self.epoch = self.epoch.next();
        self.active = Some(to.clone());
        self.active_since = now;
        self.active_seen_healthy = false;
        self.lease = None;
        self.phase = Phase::Promoting {
            to: to.clone(),
            since: now,
            last_sent: now,
            forced,
        };
        self.failure = None;
        // Persist first: the command below carries the new epoch.
        out.actions.push(Action::Persist);
        out.journal(
            JournalKind::Promoted,
            Some(&to),
            format!(
                "epoch {} persisted; {to} told to take writes{}",
                self.epoch,
                if forced { " (forced)" } else { "" }
            ),
        );
        out.actions.push(self.promote_command(&to, forced));
        out.actions.push(Action::Publish);
        out.journal(
            JournalKind::Rerouted,
            Some(&to),
            format!("DNS and discovery now answer {to}"),
        );
    }

    fn promote_command(&self, to: &RegionId, forced: bool) -> Action {
        Action::Send {
            region: to.clone(),
            command: CommandKind::Promote,
            epoch: self.epoch,
            active: Some(to.clone()),
            forced,
        }
    }

    fn maybe_failback(&mut self, now: Instant, out: &mut Output) {
        if self.params.failback != FailbackPolicy::Automatic
            || self.params.mode != FailoverMode::Automatic
        {
            return;
        }
        let (Some(home), Some(active)) = (self.home.clone(), self.active.clone()) else {
            return;
        };
        if home == active {
            self.home_healthy_since = None;
            return;
        }
        let ok = self.health.get(&home) == Some(&HealthStatus::Healthy)
            && self.agent_fresh(&home, now)
            && self.agents.get(&home).is_some_and(|a| a.ready);
        if !ok {
            self.home_healthy_since = None;
            return;
        }
        let since = *self.home_healthy_since.get_or_insert(now);
        if now.saturating_duration_since(since) >= self.params.hold_down.max(self.params.lease_ttl)
        {
            out.journal(
                JournalKind::Info,
                Some(&home),
                format!("failback to {home}: healthy again"),
            );
            self.home_healthy_since = None;
            self.phase = Phase::Moving(Move {
                kind: MoveKind::Failback,
                from: Some(active),
                to: home,
                started: now,
                forced: false,
                fence_sent_at: None,
                fenced_at: None,
                deadline: Some(now + self.params.switchover_timeout),
                wait_journaled: false,
            });
            self.evaluate(now, out);
        }
    }
}
