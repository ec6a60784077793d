//! The agent's lease and role lifecycle: pure, `(state, event) -> actions`.
//!
//! No I/O and no clock reads: every event comes with `now` (the agent's monotonic
//! clock) and the driver in `lib.rs` executes the returned actions in order. The driver
//! runs lease requests, promise rounds and activations as tasks of their own and feeds
//! their outcome back as events, so nothing here ever waits for them.
//!
//! What this module guarantees (and its tests check, on randomized schedules):
//! - **No role is active after the deadline** (rule 2, docs/architecture.md). The deadline is the send
//!   instant of the last successful renewal plus the ttl; the first event at or past it
//!   cancels any activation and fences every role. A fence command does the same.
//! - **Renewals go on while roles activate.** An activation is a task of the driver's;
//!   this machine keeps asking for the lease every ttl/3 whatever the roles are doing,
//!   so a promotion longer than the ttl keeps its lease, and a lapse or a fence during
//!   it cancels it (the half-done activation is then fenced, which every role accepts).
//! - **Nothing activates under a fenced epoch**: after acknowledging a fence at epoch E
//!   the agent never takes the lease of E again.
//! - **Witness loss is not an outage** (rule 7): when no controller answers, the active
//!   agent extends its lease only on a promise from *every* other region's agent, asked
//!   directly, and only by the ttl from when it *sent* the question. A region that
//!   promised takes no lease and accepts no promotion until its promise has run out plus
//!   the margin — nor for ttl + margin after its own start, since it may have promised
//!   just before a restart and promises are not written to disk.
//! - **A refused lease backs off**: the same epoch is asked again only after a delay
//!   that doubles with every refusal (a move away from this region is normal; asking
//!   again at once made thousands of requests a second).
//!
//! Why the promise is safe (in full in `docs/architecture.md`, "Witness loss"): the
//! active agent A sends its question at S on its clock and extends its deadline to
//! S + ttl; peer B receives it at R ≥ S (real time) and refuses to activate before
//! R + ttl + margin on its own clock. A fences by S + ttl + f (f: its fence time, bounded
//! by the region guard at margin/2 even when A is frozen); B activates no sooner than
//! S + ttl + margin. With clock rates within ρ of each other the two never overlap while
//! f + 2ρ·(ttl + margin) < margin.

use lifeboat_core::{Epoch, JournalKind, RegionId};
use std::time::Duration;
use tokio::time::Instant;

/// Timing, from the config's `[failover]`.
#[derive(Debug, Clone)]
pub struct Params {
    pub ttl: Duration,
    pub margin: Duration,
}

impl Params {
    pub fn renew_every(&self) -> Duration {
        self.ttl / 3
    }
    /// How soon an unreachable controller is asked again.
    fn retry_unreachable(&self) -> Duration {
        (self.ttl / 10).max(Duration::from_millis(50))
    }
    const ACTIVATION_RETRY: Duration = Duration::from_millis(500);
    const FENCE_RETRY: Duration = Duration::from_secs(1);
    const REFUSED_BACKOFF_MIN: Duration = Duration::from_millis(200);
    fn refused_backoff_max(&self) -> Duration {
        self.ttl.max(Duration::from_millis(400))
    }
}

/// Where the current lease came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseSource {
    /// A grant of the controller.
    Controller,
    /// Promises of every other region while no controller answered (rule 7).
    Promises,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub epoch: Epoch,
    pub deadline: Instant,
    pub source: LeaseSource,
}

/// What the region's data roles are doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Roles {
    /// Every role refuses writes (the last fence succeeded).
    Fenced,
    /// A fence is needed, under way, or failed: writes may still be accepted.
    Unfenced,
    Activating {
        epoch: Epoch,
        id: u64,
    },
    Active {
        epoch: Epoch,
    },
}

/// A promise this region gave: no activation before `until` (margin included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Promise {
    pub to: RegionId,
    pub epoch: Epoch,
    pub until: Instant,
}

#[derive(Debug, Clone)]
pub enum Event {
    /// Time passes (the driver wakes at [`Machine::next_wakeup`] or sooner).
    Tick,
    /// The controller's view, from a report's answer, a lease answer or a follow
    /// command: `active` is the region active at `epoch`.
    View {
        epoch: Epoch,
        active: Option<RegionId>,
    },
    LeaseGranted {
        epoch: Epoch,
        sent_at: Instant,
    },
    LeaseRefused {
        epoch: Epoch,
        reason: String,
    },
    /// No controller answered the request sent at `sent_at`.
    LeaseUnreachable {
        epoch: Epoch,
    },
    /// Every other region promised (the round was sent at `sent_at`).
    PromisesGranted {
        epoch: Epoch,
        sent_at: Instant,
        from: Vec<RegionId>,
    },
    PromisesRefused {
        epoch: Epoch,
        detail: String,
    },
    ActivationDone {
        id: u64,
        result: Result<(), String>,
    },
    FenceDone {
        ok: bool,
    },
    /// Controller command: fence at `epoch` (already checked not stale).
    FenceCommand {
        epoch: Epoch,
    },
    /// The agent itself fences (shutting down, its guard lost): no fenced epoch is
    /// recorded, so a restarted agent may take the lease of this epoch again.
    LocalFence {
        reason: String,
    },
    /// The region guard process is running (true) or was lost (false): nothing is
    /// activated without one, and losing it fences (a frozen agent would otherwise
    /// leave the region writable).
    GuardRunning {
        running: bool,
    },
    /// Controller command: take the lease at `epoch`.
    PromoteCommand {
        epoch: Epoch,
        forced: bool,
    },
    /// Another region's agent asks for a promise.
    PromiseRequest {
        from: RegionId,
        epoch: Epoch,
        duration: Duration,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Persist the epoch (and the fenced epoch) before anything that follows.
    PersistEpoch {
        epoch: Epoch,
        fenced_epoch: Option<Epoch>,
    },
    /// Ask the controller for the lease of `epoch`; report the outcome as an event.
    RequestLease {
        epoch: Epoch,
    },
    /// Ask every other region's agent for a promise of `duration`.
    AskPromises {
        epoch: Epoch,
        duration: Duration,
    },
    /// Activate every role (in order) under `epoch`, as a cancellable task.
    StartActivation {
        epoch: Epoch,
        id: u64,
        forced: bool,
    },
    /// Abort the activation task `id` (its roles are fenced by the next action).
    CancelActivation {
        id: u64,
    },
    /// Fence every role at once; report [`Event::FenceDone`].
    FenceAll {
        reason: String,
    },
    /// Tell the region guard the instant by which the region must be fenced.
    Guard(Option<Instant>),
    Journal {
        kind: JournalKind,
        detail: String,
    },
}

/// The answer to a request-like event.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Ok(String),
    Refused(String),
}

#[derive(Debug, Default)]
pub struct Output {
    pub actions: Vec<Action>,
    pub reply: Option<Reply>,
}

impl Output {
    fn journal(&mut self, kind: JournalKind, detail: impl Into<String>) {
        self.actions.push(Action::Journal {
            kind,
            detail: detail.into(),
        });
    }
}

/// The agent's whole lease and role state.
#[derive(Debug, Clone)]
pub struct Machine {
    pub params: Params,
    pub region: RegionId,
    pub epoch: Epoch,
    /// Acknowledged a fence at this epoch: never activate under it.
    pub fenced_epoch: Option<Epoch>,
    /// The controller says this region is active at this epoch: take the lease.
    pub want: Option<Epoch>,
    forced: bool,
    pub lease: Option<Held>,
    pub roles: Roles,
    pub promise: Option<Promise>,
    /// No activation before this: the agent may have promised just before it started.
    start_hold_until: Instant,
    /// The region guard runs (see [`Event::GuardRunning`]).
    pub guard_running: bool,
    pub controller_reachable: bool,
    /// Holding the lease on promises (entered on the first granted round).
    pub witness_lost: bool,
    request_in_flight: bool,
    next_request_at: Instant,
    /// The last refused epoch, not asked again before the instant.
    refused: Option<(Epoch, Instant)>,
    refused_backoff: Duration,
    promise_round_in_flight: bool,
    next_promise_round_at: Instant,
    promise_refusal_journaled: bool,
    next_activation: u64,
    activation_retry_at: Instant,
    fence_retry_at: Option<Instant>,
    /// The guard deadline last sent (so it is sent only on change).
    guard: Option<Instant>,
}

impl Machine {
    /// A machine for an agent starting now, with the epochs it persisted. The first
    /// actions fence every role: whatever ran before this agent must not take writes.
    pub fn start(
        params: Params,
        region: RegionId,
        epoch: Epoch,
        fenced_epoch: Option<Epoch>,
        now: Instant,
    ) -> (Self, Output) {
        let start_hold_until = now + params.ttl + params.margin;
        let m = Self {
            params,
            region,
            epoch,
            fenced_epoch,
            want: None,
            forced: false,
            lease: None,
            roles: Roles::Unfenced,
            promise: None,
            start_hold_until,
            guard_running: false,
            controller_reachable: false,
            witness_lost: false,
            request_in_flight: false,
            next_request_at: now,
            refused: None,
            refused_backoff: Duration::ZERO,
            promise_round_in_flight: false,
            next_promise_round_at: now,
            promise_refusal_journaled: false,
            next_activation: 1,
            activation_retry_at: now,
            fence_retry_at: None,
            guard: None,
        };
        let mut out = Output::default();
        out.actions.push(Action::FenceAll {
            reason: "agent start: no lease held".into(),
        });
        (m, out)
    }

    /// Roles are active (or activating) under a lease that has not lapsed.
    pub fn active(&self) -> bool {
        matches!(self.roles, Roles::Active { .. })
    }

    pub fn fenced(&self) -> bool {
        self.roles == Roles::Fenced
    }

    /// Until when this region refuses to activate (a promise, or the start-up hold).
    pub fn hold_until(&self) -> Instant {
        self.promise.as_ref().map_or(self.start_hold_until, |p| {
            p.until.max(self.start_hold_until)
        })
    }

    fn held(&self, now: Instant) -> bool {
        now < self.hold_until()
    }

    /// The next instant at which time alone changes something (None: only events do).
    pub fn next_wakeup(&self) -> Option<Instant> {
        let mut c = Vec::new();
        if let Some(want) = self.want
            && !self.request_in_flight
        {
            let mut t = self.next_request_at;
            if let Some((e, until)) = self.refused
                && e == want
            {
                t = t.max(until);
            }
            c.push(t);
        }
        if let Some(l) = &self.lease {
            c.push(l.deadline);
            if !matches!(self.roles, Roles::Active { .. } | Roles::Activating { .. }) {
                c.push(self.activation_retry_at.max(self.hold_until()));
            }
        }
        if let Some(p) = &self.promise {
            c.push(p.until);
        }
        if let Some(f) = self.fence_retry_at {
            c.push(f);
        }
        c.into_iter().min()
    }

    /// Apply one event.
    pub fn step(&mut self, now: Instant, event: Event) -> Output {
        let mut out = Output::default();
        match event {
            Event::Tick => {}
            Event::View { epoch, active } => self.on_view(now, epoch, active, &mut out),
            Event::LeaseGranted { epoch, sent_at } => {
                self.on_granted(now, epoch, sent_at, &mut out)
            }
            Event::LeaseRefused { epoch, reason } => {
                self.request_in_flight = false;
                self.controller_reachable = true;
                self.refused_backoff = if self.refused.is_some_and(|(e, _)| e == epoch) {
                    (self.refused_backoff * 2).min(self.params.refused_backoff_max())
                } else {
                    out.journal(
                        JournalKind::Info,
                        format!("lease for epoch {epoch} refused: {reason}"),
                    );
                    Params::REFUSED_BACKOFF_MIN
                };
                self.refused = Some((epoch, now + self.refused_backoff));
                // The controller answered and said no: no promise may stand in for it.
                // The lease held so far runs out at its deadline.
                if self.want == Some(epoch) {
                    self.want = None;
                }
            }
            Event::LeaseUnreachable { epoch } => {
                self.request_in_flight = false;
                self.controller_reachable = false;
                self.next_request_at = now + self.params.retry_unreachable();
                let holding = self
                    .lease
                    .as_ref()
                    .is_some_and(|l| l.epoch == epoch && now < l.deadline);
                if holding && !self.promise_round_in_flight && now >= self.next_promise_round_at {
                    self.promise_round_in_flight = true;
                    self.next_promise_round_at = now + self.params.renew_every();
                    out.actions.push(Action::AskPromises {
                        epoch,
                        duration: self.params.ttl,
                    });
                }
            }
            Event::PromisesGranted {
                epoch,
                sent_at,
                from,
            } => {
                self.promise_round_in_flight = false;
                if let Some(l) = &mut self.lease
                    && l.epoch == epoch
                    && now < l.deadline
                {
                    l.deadline = l.deadline.max(sent_at + self.params.ttl);
                    l.source = LeaseSource::Promises;
                    if !self.witness_lost {
                        self.witness_lost = true;
                        let names: Vec<String> = from.iter().map(|r| r.to_string()).collect();
                        out.journal(
                            JournalKind::Alert,
                            format!(
                                "witness unreachable: holding the lease of epoch {epoch} on promises from {} (rule 7, docs/architecture.md); nothing fails over automatically until a controller answers",
                                if names.is_empty() {
                                    "no other region (there is none)".to_owned()
                                } else {
                                    names.join(", ")
                                }
                            ),
                        );
                    }
                }
            }
            Event::PromisesRefused { epoch, detail } => {
                self.promise_round_in_flight = false;
                // A lost answer may be a blip: the next failed renewal asks again.
                self.next_promise_round_at = now;
                if self.lease.as_ref().is_some_and(|l| l.epoch == epoch)
                    && !self.promise_refusal_journaled
                {
                    self.promise_refusal_journaled = true;
                    out.journal(
                        JournalKind::Alert,
                        format!(
                            "witness unreachable and not every region promised ({detail}): the region fences at its lease deadline"
                        ),
                    );
                }
            }
            Event::ActivationDone { id, result } => self.on_activated(now, id, result, &mut out),
            Event::FenceDone { ok } => {
                if ok {
                    self.fence_retry_at = None;
                    if self.roles == Roles::Unfenced {
                        self.roles = Roles::Fenced;
                    }
                } else {
                    self.fence_retry_at = Some(now + Params::FENCE_RETRY);
                }
            }
            Event::FenceCommand { epoch } => {
                if epoch >= self.epoch {
                    let fenced = Some(epoch).max(self.fenced_epoch);
                    if epoch > self.epoch || fenced != self.fenced_epoch {
                        self.epoch = epoch;
                        self.fenced_epoch = fenced;
                        out.actions.push(Action::PersistEpoch {
                            epoch,
                            fenced_epoch: fenced,
                        });
                    }
                    self.want = None;
                    self.fence_now(&format!("fence command at epoch {epoch}"), &mut out);
                    out.reply = Some(Reply::Ok(format!("fenced at epoch {epoch}")));
                } else {
                    out.reply = Some(Reply::Refused(format!(
                        "stale epoch {epoch}: this agent has seen epoch {}",
                        self.epoch
                    )));
                }
            }
            Event::GuardRunning { running } => {
                let was = self.guard_running;
                self.guard_running = running;
                if was && !running {
                    // The lease is kept (and renewed): only the roles are fenced, and
                    // activated again once a guard runs.
                    let (lease, witness_lost) = (self.lease.take(), self.witness_lost);
                    self.witness_lost = false;
                    self.fence_now("the region guard is not running", &mut out);
                    self.lease = lease;
                    self.witness_lost = witness_lost;
                }
            }
            Event::LocalFence { reason } => {
                self.want = None;
                self.fence_now(&reason, &mut out);
                out.reply = Some(Reply::Ok(format!("fenced: {reason}")));
            }
            Event::PromoteCommand { epoch, forced } => {
                out.reply = Some(self.on_promote(now, epoch, forced, &mut out));
            }
            Event::PromiseRequest {
                from,
                epoch,
                duration,
            } => {
                out.reply = Some(self.on_promise_request(now, from, epoch, duration, &mut out));
            }
        }
        self.evaluate(now, &mut out);
        out
    }

    fn observe_epoch(&mut self, epoch: Epoch, out: &mut Output) -> bool {
        if epoch < self.epoch {
            return false;
        }
        if epoch > self.epoch {
            self.epoch = epoch;
            out.actions.push(Action::PersistEpoch {
                epoch,
                fenced_epoch: self.fenced_epoch,
            });
        }
        true
    }

    fn on_view(&mut self, now: Instant, epoch: Epoch, active: Option<RegionId>, out: &mut Output) {
        if !self.observe_epoch(epoch, out) {
            return; // an older answer that crossed a newer one
        }
        if active.as_ref() == Some(&self.region) {
            if self.fenced_epoch != Some(epoch) && self.want != Some(epoch) {
                self.want = Some(epoch);
                if self.refused.is_none_or(|(e, _)| e != epoch) {
                    self.next_request_at = now;
                }
            }
        } else {
            self.want = None;
            if self.lease.is_some()
                || matches!(self.roles, Roles::Active { .. } | Roles::Activating { .. })
            {
                let who = active
                    .as_ref()
                    .map_or("no region".into(), |r| r.to_string());
                self.fence_now(
                    &format!("controller says {who} is active at epoch {epoch}"),
                    out,
                );
            }
        }
    }

    fn on_granted(&mut self, now: Instant, epoch: Epoch, sent_at: Instant, out: &mut Output) {
        self.request_in_flight = false;
        self.controller_reachable = true;
        self.refused = None;
        self.refused_backoff = Duration::ZERO;
        self.next_request_at = sent_at + self.params.renew_every();
        let deadline = sent_at + self.params.ttl;
        // A lease may be held while a promise (or the start-up hold) stands: holding it
        // takes no write, and it keeps the controller from failing over an agent that
        // was merely restarted. Activation waits for the hold (`evaluate`, step 3).
        let usable = self.want == Some(epoch)
            && self.epoch == epoch
            && self.fenced_epoch != Some(epoch)
            && now < deadline;
        if !usable {
            return;
        }
        let deadline = match &self.lease {
            Some(l) if l.epoch == epoch => l.deadline.max(deadline),
            _ => deadline,
        };
        if self.witness_lost {
            self.witness_lost = false;
            out.journal(
                JournalKind::Info,
                format!(
                    "witness reachable again: the controller granted the lease of epoch {epoch}"
                ),
            );
        }
        self.promise_refusal_journaled = false;
        self.lease = Some(Held {
            epoch,
            deadline,
            source: LeaseSource::Controller,
        });
        // An activation under an older epoch is not this one.
        if let Roles::Activating { epoch: e, id } = self.roles
            && e != epoch
        {
            out.actions.push(Action::CancelActivation { id });
            self.roles = Roles::Unfenced;
        }
        if let Roles::Active { epoch: e } = self.roles
            && e != epoch
        {
            // Same region, newer epoch (a controller that bumped it on recovery): the
            // roles stay writable and are told the new epoch.
            self.roles = Roles::Active { epoch };
        }
    }

    fn on_activated(
        &mut self,
        now: Instant,
        id: u64,
        result: Result<(), String>,
        out: &mut Output,
    ) {
        let Roles::Activating { epoch, id: current } = self.roles else {
            return;
        };
        if current != id {
            return;
        }
        match result {
            Ok(())
                if self
                    .lease
                    .as_ref()
                    .is_some_and(|l| l.epoch == epoch && now < l.deadline) =>
            {
                self.roles = Roles::Active { epoch };
                out.journal(
                    JournalKind::Promoted,
                    format!("region active under epoch {epoch}"),
                );
            }
            Ok(()) => {
                // The lease lapsed as the last role finished: evaluate() fences.
                self.roles = Roles::Unfenced;
            }
            Err(e) => {
                out.journal(
                    JournalKind::PromotionBlocked,
                    format!("activation failed: {e}"),
                );
                // A half-done activation may have left some roles writable.
                self.roles = Roles::Unfenced;
                self.activation_retry_at = now + Params::ACTIVATION_RETRY;
                out.actions.push(Action::FenceAll {
                    reason: format!("activation failed: {e}"),
                });
            }
        }
    }

    fn on_promote(&mut self, now: Instant, epoch: Epoch, forced: bool, out: &mut Output) -> Reply {
        if epoch < self.epoch {
            return Reply::Refused(format!(
                "stale epoch {epoch}: this agent has seen epoch {}",
                self.epoch
            ));
        }
        if self.fenced_epoch == Some(epoch) {
            return Reply::Refused(format!("this region was fenced at epoch {epoch}"));
        }
        if self.held(now) {
            let left = self.hold_until().saturating_duration_since(now);
            let why = match &self.promise {
                Some(p) if p.until > now => format!(
                    "this region promised {} (epoch {}) not to activate for another {} ms",
                    p.to,
                    p.epoch,
                    left.as_millis()
                ),
                _ => format!(
                    "this agent started less than ttl + margin ago and may have promised another region not to activate; {} ms left",
                    left.as_millis()
                ),
            };
            // The epoch is remembered: the promised region's next promise round at an
            // older epoch is refused, so it fences by its deadline.
            self.observe_epoch(epoch, out);
            return Reply::Refused(why);
        }
        self.observe_epoch(epoch, out);
        self.forced = forced;
        if self.want != Some(epoch) {
            self.want = Some(epoch);
            self.refused = None;
            self.next_request_at = now;
        }
        Reply::Ok(format!("taking the lease for epoch {epoch}"))
    }

    fn on_promise_request(
        &mut self,
        now: Instant,
        from: RegionId,
        epoch: Epoch,
        duration: Duration,
        out: &mut Output,
    ) -> Reply {
        if from == self.region {
            return Reply::Refused("a region cannot promise itself".into());
        }
        if self.epoch > epoch {
            return Reply::Refused(format!(
                "{} has seen epoch {}, newer than {epoch}",
                self.region, self.epoch
            ));
        }
        if self.lease.is_some()
            || matches!(self.roles, Roles::Active { .. } | Roles::Activating { .. })
        {
            return Reply::Refused(format!("{} is active or activating", self.region));
        }
        if let Some(w) = self.want {
            return Reply::Refused(format!(
                "{} was told to take the lease at epoch {w}",
                self.region
            ));
        }
        // Bounded: a request cannot hold this region off for longer than a ttl.
        let duration = duration.min(self.params.ttl);
        let until = now + duration + self.params.margin;
        let first = self
            .promise
            .as_ref()
            .is_none_or(|p| p.to != from || p.until <= now);
        let until = match &self.promise {
            Some(p) if p.until > now => p.until.max(until),
            _ => until,
        };
        self.promise = Some(Promise {
            to: from.clone(),
            epoch,
            until,
        });
        if first {
            out.journal(
                JournalKind::Info,
                format!(
                    "promised {from} (epoch {epoch}) not to activate for {} ms: it cannot reach the witness",
                    (duration + self.params.margin).as_millis()
                ),
            );
        }
        Reply::Ok(format!(
            "{} promises not to activate for {} ms",
            self.region,
            (duration + self.params.margin).as_millis()
        ))
    }

    /// Cancel any activation and fence every role now.
    fn fence_now(&mut self, reason: &str, out: &mut Output) {
        if let Roles::Activating { id, .. } = self.roles {
            out.actions.push(Action::CancelActivation { id });
        }
        if self.witness_lost {
            self.witness_lost = false;
            out.journal(
                JournalKind::Info,
                format!("left witness-loss mode: {reason}"),
            );
        }
        self.lease = None;
        self.roles = Roles::Unfenced;
        out.actions.push(Action::FenceAll {
            reason: reason.to_owned(),
        });
        // The guard keeps the last deadline until the fence is done.
    }

    /// The time-driven part: lapse, renewals, activation, retries, promise expiry.
    fn evaluate(&mut self, now: Instant, out: &mut Output) {
        // 1. The lease deadline: nothing may be writable past it.
        if let Some(l) = &self.lease
            && now >= l.deadline
        {
            let source = l.source;
            // Journaled first, stamped with the lapse instant: the driver only queues
            // journal entries (written by a task of their own), so the fence below
            // never waits for the disk.
            out.journal(
                JournalKind::LeaseExpired,
                "lease lapsed: fencing every role now",
            );
            self.fence_now(
                match source {
                    LeaseSource::Controller => {
                        "lease lapsed: no successful renewal before the deadline"
                    }
                    LeaseSource::Promises => {
                        "lease lapsed: neither a controller nor every region's promise renewed it"
                    }
                },
                out,
            );
        }
        if let Some(p) = &self.promise
            && now >= p.until
        {
            out.journal(
                JournalKind::Info,
                format!("promise to {} (epoch {}) ran out", p.to, p.epoch),
            );
            self.promise = None;
        }
        // 2. Ask for (or renew) the lease.
        if let Some(epoch) = self.want
            && !self.request_in_flight
            && now >= self.next_request_at
            && self.refused.is_none_or(|(e, t)| e != epoch || now >= t)
            && self.fenced_epoch != Some(epoch)
        {
            self.request_in_flight = true;
            // A fallback: the answer's event sets the real next instant.
            self.next_request_at = now + self.params.renew_every();
            out.actions.push(Action::RequestLease { epoch });
        }
        // 3. Activate under a valid lease.
        if let Some(l) = self.lease.clone()
            && matches!(self.roles, Roles::Fenced | Roles::Unfenced)
            && now >= self.activation_retry_at
            && self.fenced_epoch != Some(l.epoch)
            && !self.held(now)
            && self.guard_running
        {
            let id = self.next_activation;
            self.next_activation += 1;
            self.roles = Roles::Activating { epoch: l.epoch, id };
            out.actions.push(Action::StartActivation {
                epoch: l.epoch,
                id,
                forced: self.forced,
            });
        }
        // 4. A failed fence is tried again.
        if self.lease.is_none()
            && self.roles == Roles::Unfenced
            && self.fence_retry_at.is_some_and(|t| now >= t)
        {
            self.fence_retry_at = None;
            out.actions.push(Action::FenceAll {
                reason: "retrying an incomplete fence".into(),
            });
        }
        // 5. The guard enforces the deadline while anything may be writable.
        let guard = match (&self.lease, self.roles) {
            (Some(l), _) => Some(l.deadline),
            (None, Roles::Fenced) => None,
            (None, _) => self.guard,
        };
        if guard != self.guard {
            self.guard = guard;
            out.actions.push(Action::Guard(guard));
        }
    }
}

#[cfg(test)]
#[path = "lease_tests.rs"]
mod tests;
