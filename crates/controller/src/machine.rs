//! The failover state machine: pure, `(state, event) -> (state, actions)`.
//!
//! No I/O and no clock reads: every event comes with `now` (the controller's
//! monotonic clock), and the caller executes the returned actions *in order*. The
//! order is part of the contract: an [`Action::Persist`] always precedes the first
//! [`Action::Send`] that carries a new epoch, so a command never leaves with an
//! epoch that a crash could take back (docs/architecture.md, rule 1).
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
//! - Epoch arithmetic is checked (no wrap to 0). Outside recovery, an epoch above
//!   the controller's own, in a report or a lease request, is one it never issued:
//!   refused and alerted, never adopted (one bad report cannot raise it to `u64::MAX`).
//! - A standby whose latest report shows an outstanding witness-loss promise
//!   (rule 7, docs/architecture.md) is never a promotion target, automatic or by an operator: the
//!   region it promised to may be serving without the witness.
//!
//! # Restarts (rule 8, docs/architecture.md)
//!
//! The move in progress (kind, from, to, forced, whether the old region's fence is
//! known) is part of [`Durable`] and persisted when the move starts and when its fence
//! becomes known, before the first command that depends on it. A restart resumes it:
//! the Fence is sent again at the same epoch, a known fence stays known, and a
//! switchover or failback still waits for a catch-up report received *after* the
//! restart, its timeout counted from the restart. So a restart never turns a planned,
//! zero-loss move into a lease-lapse failover.
//!
//! How a controller starts ([`Machine::start`]):
//! - **No state on disk**: *recovering*. It grants no lease and starts no move until
//!   every configured region's agent has reported. Then it adopts the highest epoch
//!   reported, and as the active region the one reporting active at that epoch, else
//!   the `view_active` the agents at that epoch report, else the config's initial
//!   active region; it bumps the epoch (checked), persists, and only then grants.
//!   Any other region that may hold a lease (it reports active, or this controller
//!   granted or assumed its lease) is told to fence at the new epoch first, and no
//!   grant goes out before it acknowledged or ttl + margin passed. The active agent's
//!   renewal at the old epoch is refused with the new epoch and active region in the
//!   answer, and it asks again at once at the new one (its refusal backoff is per
//!   epoch): one round trip, well inside the lease ttl. Until then a controller
//!   with no state answers at epoch 0 with no active region, which every agent that
//!   has seen an epoch ignores. The price: with one region's agent down, a stateless
//!   controller grants nothing (the active region fences at its deadline) until that
//!   agent is back or an operator restarts it with `--no-wait-for-agents`.
//! - **State on disk** (a normal restart): *confirming*, but with no epoch bump and no
//!   wait for the application. The disk's active region renews the lease it already
//!   holds (its report says active at the disk's epoch) exactly as before the restart,
//!   so a restart never causes an outage, even with another region down; so does
//!   the target of a promotion persisted before the restart (its old region's fence
//!   was settled then). Nothing else is granted and no move starts until every agent
//!   has reported or ttl + margin has passed since the restart (by then any lease an
//!   earlier incarnation granted has certainly expired). A lease request that comes
//!   before the holder's first report is answered "undecided" (below); the agent
//!   asks again shortly, by when its report has arrived. Bumping here would buy nothing — no agent knows an epoch above
//!   the disk's — and would cost every active agent a refused renewal on every
//!   restart. If any agent reports an epoch above the disk's during this time, the
//!   state on disk is older than the agents': the controller switches to recovering
//!   as above (grants nothing, adopts, bumps).
//! - `--no-wait-for-agents` (an operator's decision) skips both: the state on disk, or
//!   the config's initial active region at epoch 1, is acted on at once.
//!
//! While the controller cannot judge yet — recovering, confirming, or waiting for a
//! stale region's fence — a lease request gets [`Reply::LeaseUndecided`], not a
//! refusal: the server answers 503, and the active agent treats it like a lost
//! witness (it may hold its lease on promises from every other region, rule
//! 7) instead of letting its lease run out as after a refusal. What the disk does
//! decide (a stale epoch, a region not active at the disk's epoch) is refused.

use lifeboat_api::types::{CommandKind, PromiseView};
use lifeboat_config::{FailbackPolicy, FailoverMode};
use lifeboat_core::{Epoch, HealthStatus, JournalKind, RegionId};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use tokio::time::Instant;

/// The longest promise the controller takes at its word (a day): promises last about
/// a lease ttl plus the margin; anything longer is clamped, not trusted to the clock.
const MAX_PROMISE_MS: u64 = 86_400_000;

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
    /// Two steps further apart than this mean the controller itself did not run in
    /// between (SIGSTOP, a paused VM, a starved host): it cannot have seen the renewals
    /// and reports sent meanwhile, so it treats the lease, the health evidence and the
    /// hold-down as after a restart. None: never (tests that jump the clock).
    pub stall_limit: Option<Duration>,
    /// After a stall, how long until a health verdict rests only on evidence gathered
    /// after the resume: every check probed again (its interval plus its timeout), at
    /// most `report_ttl` (by then every report counted arrived after the resume).
    pub health_settle: Duration,
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
    /// The witness-loss promise of the latest report (rule 7, docs/architecture.md), and until when
    /// it binds on the controller's clock (report time + remaining).
    pub promised: Option<PromiseView>,
    pub promised_until: Option<Instant>,
    /// The agent holds its lease on promises, not on this controller's grant.
    pub witness_lost: bool,
    /// The region the agent last learned to be active at `epoch`.
    pub view_active: Option<RegionId>,
    /// The last never-issued epoch this agent sent (alerted once per epoch).
    pub refused_epoch: Option<Epoch>,
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
    /// The target's outstanding promise held the promotion back (journaled once).
    pub promise_journaled: bool,
}

impl Move {
    fn new(kind: MoveKind, from: Option<RegionId>, to: RegionId, now: Instant) -> Self {
        Self {
            kind,
            from,
            to,
            started: now,
            forced: false,
            fence_sent_at: None,
            fenced_at: None,
            deadline: None,
            wait_journaled: false,
            promise_journaled: false,
        }
    }

    /// A switchover or failback: waits for the target's catch-up (zero loss).
    pub fn planned(&self) -> bool {
        matches!(self.kind, MoveKind::Switchover | MoveKind::Failback)
    }
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
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Durable {
    pub epoch: Epoch,
    pub active: Option<RegionId>,
    /// The region active before the first failover (failback target).
    pub home: Option<RegionId>,
    /// A promotion that was persisted but not yet verified.
    pub promoting: Option<RegionId>,
    pub failovers: u64,
    /// The move in progress, before its promotion (absent from state format 1, which
    /// had no way to say it: it reads as "no move").
    #[serde(default)]
    pub moving: Option<DurableMove>,
}

/// The part of a [`Move`] a restart must not forget (rule 8, docs/architecture.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DurableMove {
    pub kind: MoveKind,
    pub from: Option<RegionId>,
    pub to: RegionId,
    pub forced: bool,
    /// The old region's fence is known: its agent acknowledged a fence at the
    /// current epoch, or its lease certainly expired. Either stays true after a
    /// restart (the agent never activates under a fenced epoch; an expired lease is
    /// not renewed during a move).
    pub fence_known: bool,
}

/// Why a controller that just started does not yet act on its own state.
#[derive(Debug, Clone)]
pub struct Recovery {
    /// True: grant nothing and start nothing until every agent has reported, then
    /// adopt and bump (no state on disk, or state older than an agent's). False: the
    /// state on disk is being confirmed (see the module doc).
    pub strict: bool,
    pub since: Instant,
    /// What the state on disk said: its epoch and active region (None: no state).
    pub disk: Option<(Epoch, Option<RegionId>)>,
    pub initial_active: Option<RegionId>,
    /// Adoption is impossible (the highest epoch has no successor): journaled once.
    pub stuck: Option<String>,
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
        promised: Option<PromiseView>,
        witness_lost: bool,
        view_active: Option<RegionId>,
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
    Lease {
        granted: bool,
        reason: String,
    },
    /// Not a decision: the controller cannot judge yet (recovering, confirming its
    /// state, or waiting for a stale region's fence). The server answers 503, which
    /// an active agent treats like a lost witness (it may hold its lease on promises,
    /// rule 7) instead of letting its lease run out as after a refusal.
    LeaseUndecided {
        reason: String,
    },
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
    /// Failures detected with the active region's lease lapsed, since this controller
    /// started (not durable: `lifeboat_lease_lapses_total` is a counter, and Prometheus
    /// takes a drop to 0 as a restart).
    pub lease_lapses: u64,
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
    /// After a stall ([`Machine::on_stall`]): health verdicts before this instant may
    /// rest on evidence gathered before the freeze, and do not count as having seen the
    /// active region healthy (`Params::health_settle`).
    fresh_health_after: Option<Instant>,
    /// Set while the controller is recovering or confirming its state after a start.
    pub recovery: Option<Recovery>,
    /// Regions told to fence at the adopted epoch after a recovery; no lease is
    /// granted before they acknowledged it or `fence_hold_until` passed.
    pending_fences: BTreeSet<RegionId>,
    fence_hold_until: Option<Instant>,
    /// The epoch has no successor: journaled once.
    exhausted_reported: bool,
    /// When the previous event was applied (stall detection, `Params::stall_limit`).
    last_step: Option<Instant>,
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
        let phase = match (&durable.promoting, &durable.moving) {
            (Some(to), _) => Phase::Promoting {
                to: to.clone(),
                since: now,
                // Send again at once: the command may never have left.
                last_sent: now.checked_sub(params.resend_every).unwrap_or(now),
                forced: false,
            },
            (None, Some(mv)) => {
                // Resume the move as it started. The Fence goes out again at once
                // (fence_sent_at None) at the same epoch; a known fence stays known,
                // dated now, so a switchover's catch-up must be reported after the
                // restart; its timeout counts from the restart.
                let mut m = Move::new(mv.kind, mv.from.clone(), mv.to.clone(), now);
                m.forced = mv.forced;
                m.fenced_at = mv.fence_known.then_some(now);
                if m.planned() {
                    m.deadline = Some(now + params.switchover_timeout);
                }
                Phase::Moving(m)
            }
            (None, None) => Phase::Steady,
        };
        Self {
            params,
            epoch: durable.epoch,
            active: durable.active,
            home: durable.home,
            failovers: durable.failovers,
            lease_lapses: 0,
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
            fresh_health_after: None,
            recovery: None,
            pending_fences: BTreeSet::new(),
            fence_hold_until: None,
            exhausted_reported: false,
            last_step: None,
        }
    }

    /// Start the controller from what the disk holds (`None`: no state), as the
    /// module doc describes. `wait_for_agents` false is the operator's
    /// `--no-wait-for-agents`: act on the disk (or the config's initial active region
    /// at epoch 1) at once.
    pub fn start(
        params: Params,
        regions: &[RegionId],
        disk: Option<Durable>,
        initial_active: Option<RegionId>,
        now: Instant,
        wait_for_agents: bool,
    ) -> Self {
        match (disk, wait_for_agents) {
            (Some(d), false) => Self::restore(params, regions, d, now, false),
            (None, false) => {
                let d = Durable {
                    epoch: Epoch(1),
                    active: initial_active,
                    ..Durable::default()
                };
                Self::restore(params, regions, d, now, true)
            }
            (Some(d), true) => {
                let disk = Some((d.epoch, d.active.clone()));
                let mut m = Self::restore(params, regions, d, now, false);
                m.recovery = Some(Recovery {
                    strict: false,
                    since: now,
                    disk,
                    initial_active,
                    stuck: None,
                });
                m
            }
            (None, true) => {
                // Nothing is known: epoch 0 and no active region until the agents
                // have been heard (an answer at epoch 0 is below every agent that
                // ever saw an epoch, so it changes nothing on their side).
                let mut m = Self::restore(params, regions, Durable::default(), now, true);
                m.recovery = Some(Recovery {
                    strict: true,
                    since: now,
                    disk: None,
                    initial_active,
                    stuck: None,
                });
                m
            }
        }
    }

    /// The regions whose agents have not reported since this controller started.
    pub fn waiting_for(&self) -> Vec<RegionId> {
        self.agents
            .iter()
            .filter(|(_, v)| v.last_report.is_none())
            .map(|(r, _)| r.clone())
            .collect()
    }

    /// The phase as status shows it, with the recovering condition if any.
    pub fn condition(&self) -> String {
        let waiting = self
            .waiting_for()
            .iter()
            .map(|r| r.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        match &self.recovery {
            Some(r) if r.strict => match &r.stuck {
                Some(why) => format!("recovering: {why}"),
                None => format!("recovering: waiting for reports from {waiting}"),
            },
            Some(_) => format!(
                "{} (confirming the state on disk: waiting for reports from {waiting})",
                self.phase.name()
            ),
            None => self.phase.name(),
        }
    }

    /// The outstanding promise of `region`'s latest report, as the reason it cannot
    /// be promoted now.
    fn promise_block(&self, region: &RegionId, now: Instant) -> Option<String> {
        let view = self.agents.get(region)?;
        let (p, until) = (view.promised.as_ref()?, view.promised_until?);
        (now < until).then(|| {
            format!(
                "{region} promised {} not to activate for {} ms: {} may be serving without the witness",
                p.to,
                until.saturating_duration_since(now).as_millis(),
                p.to
            )
        })
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
            moving: match &self.phase {
                Phase::Moving(m) => Some(DurableMove {
                    kind: m.kind,
                    from: m.from.clone(),
                    to: m.to.clone(),
                    forced: m.forced,
                    fence_known: m.fenced_at.is_some(),
                }),
                _ => None,
            },
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
        if let (Some(limit), Some(prev)) = (self.params.stall_limit, self.last_step) {
            let gap = now.saturating_duration_since(prev);
            if gap > limit {
                self.on_stall(now, gap, &mut out);
            }
        }
        self.last_step = Some(now.max(self.last_step.unwrap_or(now)));
        match event {
            Event::Tick => {}
            Event::Health(h) => {
                for (r, s) in h {
                    self.health.insert(r, s);
                }
                if let Some(active) = &self.active
                    && self.health.get(active) == Some(&HealthStatus::Healthy)
                    && self.fresh_health_after.is_none_or(|t| now >= t)
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
                promised,
                witness_lost,
                view_active,
            } => {
                let view = AgentView {
                    last_report: Some(now),
                    epoch,
                    active,
                    fenced,
                    ready,
                    caught_up,
                    ready_detail: detail,
                    // From the network: clamped, so an absurd remaining time cannot
                    // overflow the clock (a real promise is about ttl + margin).
                    promised_until: promised.as_ref().and_then(|p| {
                        now.checked_add(Duration::from_millis(p.remaining_ms.min(MAX_PROMISE_MS)))
                    }),
                    promised,
                    witness_lost,
                    view_active,
                    refused_epoch: None,
                };
                self.on_report(region, view, &mut out)
            }
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

    fn on_report(&mut self, region: RegionId, report: AgentView, out: &mut Output) {
        if !self.agents.contains_key(&region) {
            return;
        }
        let epoch = report.epoch;
        if epoch > self.epoch {
            match &mut self.recovery {
                // Recorded below: adoption takes the highest epoch once all reported.
                Some(r) if r.strict => {}
                Some(r) => {
                    r.strict = true;
                    out.journal(
                        JournalKind::Alert,
                        Some(&region),
                        format!(
                            "{region} reports epoch {epoch}, above the {} on disk: the controller's state is older than the agents'; granting nothing until every agent has reported, then adopting the highest epoch",
                            self.epoch
                        ),
                    );
                }
                None => {
                    self.never_issued(&region, epoch, "report", out);
                    return;
                }
            }
        }
        let Some(view) = self.agents.get_mut(&region) else {
            return;
        };
        if view.witness_lost != report.witness_lost {
            out.journal(
                JournalKind::Alert,
                Some(&region),
                if report.witness_lost {
                    format!(
                        "{region} entered witness-loss mode: it holds its lease on promises from every other region, not on a grant"
                    )
                } else {
                    format!("{region} left witness-loss mode: it holds its lease on a grant again")
                },
            );
        }
        let refused_epoch = view.refused_epoch;
        *view = AgentView {
            refused_epoch,
            ..report
        };
    }

    /// An epoch above the controller's, outside recovery: the controller never issued
    /// it (it persists every epoch before it leaves). Adopting it would let one bad or
    /// forged message push the epoch anywhere, up to `u64::MAX`; refuse it, and alert
    /// once per region and epoch.
    fn never_issued(&mut self, region: &RegionId, epoch: Epoch, what: &str, out: &mut Output) {
        let Some(view) = self.agents.get_mut(region) else {
            return;
        };
        if view.refused_epoch == Some(epoch) {
            return;
        }
        view.refused_epoch = Some(epoch);
        out.journal(
            JournalKind::Alert,
            Some(region),
            format!(
                "{what} from {region} carries epoch {epoch}, above the controller's {}: an epoch this controller never issued; refused, not adopted",
                self.epoch
            ),
        );
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
        let undecided = |reason: String| Reply::LeaseUndecided { reason };
        if self.recovery.as_ref().is_some_and(|r| r.strict) {
            return undecided(format!(
                "{}: no lease is granted before every agent has reported",
                self.condition()
            ));
        }
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
            let current = self.epoch;
            match &mut self.recovery {
                Some(r) => {
                    r.strict = true;
                    out.journal(
                        JournalKind::Alert,
                        Some(region),
                        format!(
                            "lease request from {region} at epoch {epoch}, above the {current} on disk: the controller's state is older than the agents'; granting nothing until every agent has reported"
                        ),
                    );
                }
                None => {
                    self.never_issued(region, epoch, "lease request", out);
                    return refuse(format!(
                        "epoch {epoch} was never issued by this controller (current {current})"
                    ));
                }
            }
            return undecided(format!(
                "epoch {epoch} is above the {current} on disk: recovering the deployment's state from the agents"
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
        if self.recovery.is_some() {
            // Confirming the state on disk: renew a lease the region holds right now,
            // or complete a promotion decided (old region fenced, epoch persisted)
            // before the restart; grant no other (an unheard agent may know a newer
            // epoch, and an earlier incarnation may have granted a lease it forgot).
            let holds = self
                .agents
                .get(region)
                .is_some_and(|v| v.last_report.is_some() && v.active && v.epoch == epoch);
            let promoting = matches!(&self.phase, Phase::Promoting { to, .. } if to == region);
            if !holds && !promoting {
                return undecided(format!(
                    "{}: only a lease {region} already holds is renewed (its report says it is not active at epoch {epoch})",
                    self.condition()
                ));
            }
        }
        if !self.pending_fences.is_empty() && self.fence_hold_until.is_some_and(|t| now < t) {
            return undecided(format!(
                "waiting for {} to acknowledge its fence at epoch {} (or its old lease to expire)",
                self.pending_fences
                    .iter()
                    .map(|r| r.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                self.epoch
            ));
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
        if kind == CommandKind::Fence
            && ok
            && epoch == self.epoch
            && self.pending_fences.remove(&region)
        {
            out.journal(
                JournalKind::Fenced,
                Some(&region),
                format!("agent confirmed fence at the adopted epoch {epoch}"),
            );
            return;
        }
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
                // A restart must not forget it (a planned move then only waits for
                // the catch-up, not for the lease too).
                out.actions.push(Action::Persist);
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
        if self.recovery.is_some() {
            let why = format!(
                "{what} to {to} refused: {}; no move starts before every agent has reported",
                self.condition()
            );
            out.journal(JournalKind::PromotionBlocked, Some(&to), why.clone());
            return Err(why);
        }
        if !self.agent_fresh(&to, now) {
            return Err(format!(
                "the agent of {to} is not reporting: it could not take the lease"
            ));
        }
        // Not even with --force: the agent would refuse the promotion anyway, and the
        // region it promised to may be taking writes right now.
        if let Some(why) = self.promise_block(&to, now) {
            out.journal(
                JournalKind::PromotionBlocked,
                Some(&to),
                format!("{what} to {to} refused: {why}"),
            );
            return Err(why);
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
        let mut m = Move::new(kind, self.active.clone(), to.clone(), now);
        m.forced = force;
        m.deadline = m.planned().then(|| now + self.params.switchover_timeout);
        self.failure = None;
        self.start_move(m, out);
        Ok(format!("{what} to {to} started at epoch {}", self.epoch))
    }

    /// The time-driven part: detection, confirmation, fencing, promotion, verification.
    fn evaluate(&mut self, now: Instant, out: &mut Output) {
        if self.advance_recovery(now, out) {
            return;
        }
        if self.fence_hold_until.is_some_and(|t| now >= t) {
            // Any lease the unacknowledged regions held from before has certainly
            // expired by now.
            self.pending_fences.clear();
            self.fence_hold_until = None;
        }
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

    /// The controller did not run for `gap`: a renewal or a report sent meanwhile went
    /// unseen, so "the holder stopped renewing" cannot be concluded from that time, nor
    /// can a check result from probes that were frozen mid-flight be trusted. As after
    /// a restart (rule 8), it assumes it granted the lease now (a promotion waits ttl +
    /// margin from here unless the holder acknowledges a fence: only later, never
    /// sooner), judges the active region's health afresh (from when it is seen healthy
    /// again, or after the activation grace), and a failure not yet acted on counts its
    /// hold-down from now.
    fn on_stall(&mut self, now: Instant, gap: Duration, out: &mut Output) {
        if let Some(l) = self.lease.as_mut() {
            l.granted_at = l.granted_at.max(now);
        }
        self.active_since = now;
        self.active_seen_healthy = false;
        // A verdict is fresh once every check was probed again after the resume (not
        // the pre-freeze state of this controller's own probes, nor its probes that
        // timed out while frozen).
        self.fresh_health_after = Some(now + self.params.health_settle.min(self.params.report_ttl));
        if let Some(f) = self.failure.as_mut()
            && !f.confirmed
        {
            f.since = now;
        }
        out.journal(
            JournalKind::Alert,
            self.active.as_ref(),
            format!(
                "the controller did not run for {} ms (frozen, paused or starved): the lease, the health of the active region and any hold-down count from now, as after a restart",
                gap.as_millis()
            ),
        );
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
                if lapsed {
                    self.lease_lapses += 1;
                }
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
        if self.params.mode == FailoverMode::Manual || self.recovery.is_some() {
            // In recovery the move waits for every agent's report (or the window's end).
            return;
        }
        match self.pick_target(now, &active) {
            Ok(to) => {
                self.start_move(Move::new(MoveKind::Automatic, Some(active), to, now), out);
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
            } else if let Some(why) = self.promise_block(region, now) {
                reasons.push(why);
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
                out.actions.push(Action::Persist);
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
        if m.planned() {
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
                        // Off the disk too: a restart must not resume an aborted move.
                        self.phase = Phase::Steady;
                        out.actions.push(Action::Persist);
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
        // 3. Promote, unless the target has promised not to activate (it would refuse,
        //    and the region it promised to may still be taking writes).
        if let Some(why) = self.promise_block(&m.to, now) {
            if !m.promise_journaled {
                m.promise_journaled = true;
                out.journal(JournalKind::PromotionBlocked, Some(&m.to), why);
            }
            self.phase = Phase::Moving(m);
            return;
        }
        if self.promote(now, m.to.clone(), m.forced, out) {
            // Read by the Persist above when the actions run, after this step.
            self.failovers += 1;
            if self.home.is_none() {
                self.home = m.from.clone();
            }
        }
    }

    /// Promote `to` under the next epoch. False (and nothing changed) if there is none.
    fn promote(&mut self, now: Instant, to: RegionId, forced: bool, out: &mut Output) -> bool {
        let Some(next) = self.epoch.checked_next() else {
            // Unreachable in practice (epochs above the controller's are never
            // adopted outside recovery, and recovery needs a successor), but a
            // wrapped fencing token would be worse than a stuck deployment.
            if !self.exhausted_reported {
                self.exhausted_reported = true;
                out.journal(
                    JournalKind::Alert,
                    Some(&to),
                    format!("cannot promote {to}: epoch {} has no successor", self.epoch),
                );
            }
            return false;
        };
        self.epoch = next;
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
        true
    }

    /// Begin a move. Persisted at once: the Fence that follows depends on it, and a
    /// restart must resume the move as it started (rule 8, docs/architecture.md).
    fn start_move(&mut self, m: Move, out: &mut Output) {
        self.phase = Phase::Moving(m);
        out.actions.push(Action::Persist);
    }

    /// The recovering / confirming condition after a start. True while the normal
    /// evaluation must not run (strict recovery).
    fn advance_recovery(&mut self, now: Instant, out: &mut Output) -> bool {
        let Some(r) = self.recovery.clone() else {
            return false;
        };
        let waiting = self.waiting_for();
        let names = |v: &[RegionId]| {
            v.iter()
                .map(|r| r.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        if !r.strict {
            let active = self
                .active
                .as_ref()
                .map_or("none".into(), |r| r.to_string());
            if waiting.is_empty() {
                out.journal(
                    JournalKind::Info,
                    self.active.as_ref(),
                    format!(
                        "every agent has reported at or below epoch {}: the state on disk is current (active {active}); kept as it is, no epoch bump",
                        self.epoch
                    ),
                );
                self.recovery = None;
            } else if now.saturating_duration_since(r.since)
                >= self.params.lease_ttl + self.params.lease_margin
            {
                // Every lease an earlier incarnation granted has certainly expired.
                out.journal(
                    JournalKind::Info,
                    self.active.as_ref(),
                    format!(
                        "no report from {} within ttl + margin of the restart: acting on the state on disk (epoch {}, active {active}); an epoch above {} from them will be refused",
                        names(&waiting),
                        self.epoch,
                        self.epoch
                    ),
                );
                self.recovery = None;
            }
            return false;
        }
        if waiting.is_empty() && r.stuck.is_none() {
            self.adopt(now, r, out);
        }
        true
    }

    /// Every agent has reported: adopt the highest epoch and its active region, bump
    /// the epoch past it and persist before any grant (rule 8, docs/architecture.md).
    fn adopt(&mut self, now: Instant, r: Recovery, out: &mut Output) {
        let mut best = r.disk.as_ref().map_or(Epoch::ZERO, |d| d.0);
        let mut source = if r.disk.is_some() {
            "the state on disk".to_owned()
        } else {
            "no state on disk".to_owned()
        };
        for (region, v) in &self.agents {
            if v.epoch > best {
                best = v.epoch;
                source = format!("{region}'s report");
            }
        }
        let Some(next) = best.checked_next() else {
            let why = format!(
                "cannot adopt epoch {best} from {source}: it has no successor; reset the agents' epochs"
            );
            out.journal(JournalKind::Alert, None, why.clone());
            if let Some(rec) = &mut self.recovery {
                rec.stuck = Some(why);
            }
            return;
        };
        let reported = self
            .agents
            .iter()
            .map(|(region, v)| {
                format!(
                    "{region}: epoch {}{}",
                    v.epoch,
                    if v.active { " active" } else { "" }
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        out.journal(
            JournalKind::Info,
            None,
            format!("recovery: adopting epoch {best} from {source} (reports: {reported})"),
        );
        let at_best: Vec<(&RegionId, &AgentView)> = self
            .agents
            .iter()
            .filter(|(_, v)| v.epoch == best)
            .collect();
        let mut views: BTreeMap<RegionId, Vec<String>> = BTreeMap::new();
        for (region, v) in &at_best {
            if let Some(va) = v
                .view_active
                .as_ref()
                .filter(|va| self.agents.contains_key(*va))
            {
                views
                    .entry(va.clone())
                    .or_default()
                    .push(region.to_string());
            }
        }
        let (active, why) = if let Some((region, _)) = at_best.iter().find(|(_, v)| v.active) {
            (
                Some((*region).clone()),
                format!("{region} reports active at epoch {best}"),
            )
        } else if let Some((va, from)) = views.iter().max_by_key(|(_, from)| from.len()) {
            (
                Some(va.clone()),
                format!(
                    "the agents at epoch {best} ({}) last learned {va} to be active",
                    from.join(", ")
                ),
            )
        } else if let Some((_, Some(da))) = r.disk.as_ref().filter(|d| d.0 == best) {
            (
                Some(da.clone()),
                format!("the state on disk has {da} active at epoch {best}"),
            )
        } else {
            (
                r.initial_active.clone(),
                "no agent and no state knows better: the config's initial active region".into(),
            )
        };
        let name = active.as_ref().map_or("none".into(), |a| a.to_string());
        out.journal(
            JournalKind::Info,
            active.as_ref(),
            format!("recovery: active region {name}, because {why}"),
        );
        // The lease this controller granted (while confirming its state) or assumed
        // at its start may still be live, whatever its holder last reported.
        let prior_holder = self
            .lease
            .as_ref()
            .filter(|_| !self.lease_expired(now))
            .map(|l| l.holder.clone());
        self.epoch = next;
        self.active = active.clone();
        self.phase = Phase::Steady;
        self.failure = None;
        self.recovery = None;
        self.active_since = now;
        self.active_seen_healthy = false;
        // The adopted holder may still hold a lease from an earlier incarnation: the
        // controller assumes one from now, as after any restart.
        self.lease = active.clone().map(|holder| Lease {
            holder,
            epoch: next,
            granted_at: now,
            renewed: false,
        });
        if r.disk.is_none() {
            self.home = None;
        }
        out.actions.push(Action::Persist);
        out.journal(
            JournalKind::Info,
            active.as_ref(),
            format!(
                "recovery: epoch {next} persisted, one above every epoch seen; {name} may now take the lease"
            ),
        );
        out.actions.push(Action::Publish);
        // A region still active under an older view must stop before the adopted one
        // takes writes: told to fence at the new epoch, and no grant until it
        // acknowledged or its old lease has certainly expired.
        let stale: BTreeSet<RegionId> = self
            .agents
            .iter()
            .filter(|(region, v)| {
                (v.active || prior_holder.as_ref() == Some(*region))
                    && Some(*region) != active.as_ref()
            })
            .map(|(region, _)| region.clone())
            .collect();
        for region in stale {
            out.journal(
                JournalKind::Info,
                Some(&region),
                format!("recovery: {region} may hold a lease but {name} was adopted: fencing it at epoch {next} first"),
            );
            out.actions.push(Action::Send {
                region: region.clone(),
                command: CommandKind::Fence,
                epoch: next,
                active: active.clone(),
                forced: false,
            });
            self.pending_fences.insert(region);
            self.fence_hold_until = Some(now + self.params.lease_ttl + self.params.lease_margin);
        }
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
            || self.recovery.is_some()
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
            let mut m = Move::new(MoveKind::Failback, Some(active), home, now);
            m.deadline = Some(now + self.params.switchover_timeout);
            self.start_move(m, out);
            self.evaluate(now, out);
        }
    }
}
