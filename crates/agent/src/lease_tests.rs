//! The agent's lease machine without I/O: scripted cases for each promise of the
//! module, then randomized schedules checking them all at every step.
#![allow(clippy::unwrap_used)]

use super::*;

const TTL: Duration = Duration::from_secs(2);
const MARGIN: Duration = Duration::from_millis(500);
const TICK: Duration = Duration::from_millis(50);

fn params() -> Params {
    Params {
        ttl: TTL,
        margin: MARGIN,
    }
}

fn a() -> RegionId {
    RegionId::new("a")
}
fn b() -> RegionId {
    RegionId::new("b")
}

/// One agent's machine with a clock, recording every action it emitted.
struct Sim {
    m: Machine,
    now: Instant,
    actions: Vec<(Instant, Action)>,
}

impl Sim {
    /// An agent of `region` that started long enough ago for its start-up hold to be
    /// over and whose start-up fence succeeded.
    fn new(region: RegionId) -> Sim {
        let t0 = Instant::now();
        let (m, out) = Machine::start(params(), region, Epoch(1), None, t0);
        let mut s = Sim {
            m,
            now: t0,
            actions: Vec::new(),
        };
        s.record(out);
        s.ev(Event::FenceDone { ok: true });
        s.ev(Event::GuardRunning { running: true });
        s.advance(TTL + MARGIN);
        s
    }

    fn record(&mut self, out: Output) -> Option<Reply> {
        for a in out.actions {
            self.actions.push((self.now, a));
        }
        out.reply
    }

    fn ev(&mut self, e: Event) -> Option<Reply> {
        let out = self.m.step(self.now, e);
        self.record(out)
    }

    fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            self.now = (self.now + TICK).min(end);
            self.ev(Event::Tick);
        }
    }

    fn count(&self, since: usize, f: impl Fn(&Action) -> bool) -> usize {
        self.actions[since..].iter().filter(|(_, a)| f(a)).count()
    }

    fn last_activation(&self) -> Option<u64> {
        self.actions.iter().rev().find_map(|(_, a)| match a {
            Action::StartActivation { id, .. } => Some(*id),
            _ => None,
        })
    }

    /// Answer the outstanding lease request (if any) with a grant sent now.
    fn grant_pending(&mut self) -> bool {
        let pending = self.m.request_in_flight;
        if pending {
            let epoch = self.m.want.unwrap_or(self.m.epoch);
            self.ev(Event::LeaseGranted {
                epoch,
                sent_at: self.now,
            });
        }
        pending
    }

    /// `a` told it is active at epoch 1, lease granted, activation started.
    fn activating(region: RegionId) -> Sim {
        let mut s = Sim::new(region.clone());
        s.ev(Event::View {
            epoch: Epoch(1),
            active: Some(region),
        });
        assert!(s.grant_pending(), "a lease request follows the view");
        assert!(
            matches!(s.m.roles, Roles::Activating { .. }),
            "{:?}",
            s.m.roles
        );
        s
    }
}

fn is_request(a: &Action) -> bool {
    matches!(a, Action::RequestLease { .. })
}
fn is_fence(a: &Action) -> bool {
    matches!(a, Action::FenceAll { .. })
}

#[test]
fn the_start_fences_every_role_and_the_guard_has_nothing_to_enforce() {
    let (m, out) = Machine::start(params(), a(), Epoch(3), Some(Epoch(2)), Instant::now());
    assert!(out.actions.iter().any(is_fence), "{:?}", out.actions);
    assert!(!m.fenced(), "not fenced until the fence reports done");
    assert!(
        !out.actions
            .iter()
            .any(|a| matches!(a, Action::Guard(Some(_))))
    );
}

/// Issue 10: "a role whose activation takes three times the lease ttl: renewals
/// continue, the region becomes active, no livelock".
#[test]
fn renewals_go_on_while_a_slow_activation_runs() {
    let mut s = Sim::activating(a());
    let since = s.actions.len();
    let start = s.now;
    let mut last_request = s.now;
    while s.now < start + TTL * 3 {
        s.advance(TICK);
        if s.grant_pending() {
            assert!(
                s.now.duration_since(last_request) <= TTL / 3 + TICK,
                "renewal gap {:?}",
                s.now.duration_since(last_request)
            );
            last_request = s.now;
        }
        assert!(s.m.lease.as_ref().is_some_and(|l| l.deadline > s.now));
    }
    assert!(s.count(since, is_request) >= 8, "renewed every ttl/3");
    assert_eq!(s.count(since, is_fence), 0, "never fenced while renewing");
    let id = s.last_activation().unwrap();
    s.ev(Event::ActivationDone { id, result: Ok(()) });
    assert!(
        s.m.active(),
        "the slow activation completes under the renewed lease"
    );
    assert_eq!(
        s.count(since, |a| matches!(a, Action::StartActivation { .. })),
        0,
        "activated once, not again and again"
    );
}

#[test]
fn a_fence_command_during_an_activation_wins() {
    let mut s = Sim::activating(a());
    let id = s.last_activation().unwrap();
    let since = s.actions.len();
    let r = s.ev(Event::FenceCommand { epoch: Epoch(1) });
    assert!(matches!(r, Some(Reply::Ok(_))));
    let acts: Vec<&Action> = s.actions[since..].iter().map(|(_, a)| a).collect();
    let cancel = acts
        .iter()
        .position(|a| **a == Action::CancelActivation { id });
    let fence = acts.iter().position(|a| is_fence(a));
    assert!(
        cancel.is_some() && fence.is_some() && cancel < fence,
        "{acts:?}"
    );
    assert!(acts.iter().any(|a| matches!(
        a,
        Action::PersistEpoch {
            fenced_epoch: Some(Epoch(1)),
            ..
        }
    )));
    // The activation's late completion changes nothing.
    s.ev(Event::ActivationDone { id, result: Ok(()) });
    assert!(!s.m.active());
    s.ev(Event::FenceDone { ok: true });
    assert!(s.m.fenced());
    // And the region never takes the lease of the fenced epoch again.
    s.ev(Event::View {
        epoch: Epoch(1),
        active: Some(a()),
    });
    s.advance(TTL);
    assert!(!s.m.request_in_flight && s.m.lease.is_none());
}

#[test]
fn a_lapse_during_an_activation_cancels_it_and_fences() {
    let mut s = Sim::activating(a());
    let id = s.last_activation().unwrap();
    let deadline = s.m.lease.as_ref().unwrap().deadline;
    let since = s.actions.len();
    // The controller never answers again (requests stay in flight).
    s.advance(TTL + TICK);
    let (at, _) = s.actions[since..]
        .iter()
        .find(|(_, a)| is_fence(a))
        .expect("fenced at the lapse");
    assert!(
        *at >= deadline && *at < deadline + TICK,
        "fenced at the deadline"
    );
    assert!(
        s.actions[since..]
            .iter()
            .any(|(_, a)| *a == Action::CancelActivation { id })
    );
    s.ev(Event::ActivationDone { id, result: Ok(()) });
    assert!(
        !s.m.active(),
        "a late activation does not resurrect the lease"
    );
    // The guard kept the old deadline until the fence was done, then let go.
    assert_eq!(s.m.guard, Some(deadline));
    s.ev(Event::FenceDone { ok: true });
    assert_eq!(s.m.guard, None);
}

#[test]
fn a_refused_lease_backs_off() {
    let mut s = Sim::new(a());
    let since = s.actions.len();
    // Reports keep saying a is active at epoch 1 while the controller refuses the
    // lease (a move away from a is in progress): 10 s of that.
    for _ in 0..200 {
        s.ev(Event::View {
            epoch: Epoch(1),
            active: Some(a()),
        });
        if s.m.request_in_flight {
            s.ev(Event::LeaseRefused {
                epoch: Epoch(1),
                reason: "a move from a to b is in progress".into(),
            });
        }
        s.advance(TICK);
    }
    let n = s.count(since, is_request);
    assert!((3..=20).contains(&n), "{n} requests in 10 s");
    assert_eq!(
        s.count(since, |a| matches!(a, Action::Journal { .. })),
        1,
        "the refusal is journaled once"
    );
}

#[test]
fn a_promise_is_honoured_then_runs_out() {
    let mut s = Sim::new(b());
    let r = s.ev(Event::PromiseRequest {
        from: a(),
        epoch: Epoch(1),
        duration: TTL,
    });
    assert!(matches!(r, Some(Reply::Ok(_))), "{r:?}");
    let until = s.m.promise.as_ref().unwrap().until;
    assert_eq!(until, s.now + TTL + MARGIN);
    // The controller promotes b at epoch 2 meanwhile: refused, epoch remembered.
    let r = s.ev(Event::PromoteCommand {
        epoch: Epoch(2),
        forced: true,
    });
    assert!(
        matches!(&r, Some(Reply::Refused(w)) if w.contains("promised a")),
        "{r:?}"
    );
    assert_eq!(s.m.epoch, Epoch(2));
    // a's next round at epoch 1 is refused: b holds a newer epoch.
    let r = s.ev(Event::PromiseRequest {
        from: a(),
        epoch: Epoch(1),
        duration: TTL,
    });
    assert!(
        matches!(&r, Some(Reply::Refused(w)) if w.contains("newer")),
        "{r:?}"
    );
    // The controller says b is active at 2 (it decided before it saw the promise):
    // b may hold the lease, but activates nothing while the promise stands.
    s.ev(Event::View {
        epoch: Epoch(2),
        active: Some(b()),
    });
    while s.now < until {
        s.grant_pending();
        assert!(
            matches!(s.m.roles, Roles::Fenced),
            "nothing activated inside the promise: {:?}",
            s.m.roles
        );
        s.advance(TICK);
    }
    // Once it ran out, b activates under the lease it holds.
    s.grant_pending();
    s.advance(TICK);
    assert!(
        matches!(s.m.roles, Roles::Activating { .. }),
        "{:?}",
        s.m.roles
    );
}

#[test]
fn an_agent_that_just_started_refuses_a_promotion() {
    let t0 = Instant::now();
    let (mut m, _) = Machine::start(params(), b(), Epoch(1), None, t0);
    let out = m.step(
        t0 + TTL,
        Event::PromoteCommand {
            epoch: Epoch(2),
            forced: false,
        },
    );
    assert!(
        matches!(&out.reply, Some(Reply::Refused(w)) if w.contains("started")),
        "{:?}",
        out.reply
    );
    let out = m.step(
        t0 + TTL + MARGIN,
        Event::PromoteCommand {
            epoch: Epoch(2),
            forced: false,
        },
    );
    assert!(matches!(out.reply, Some(Reply::Ok(_))));
}

#[test]
fn a_standby_promises_nothing_while_active_or_told_to_be() {
    let mut s = Sim::activating(b());
    let r = s.ev(Event::PromiseRequest {
        from: a(),
        epoch: Epoch(1),
        duration: TTL,
    });
    assert!(matches!(r, Some(Reply::Refused(_))), "{r:?}");
}

/// Issue 10: "Controller kill -9 for 60 s: region a acknowledges writes throughout".
#[test]
fn witness_loss_keeps_the_lease_on_every_promise() {
    let mut s = Sim::activating(a());
    let id = s.last_activation().unwrap();
    s.ev(Event::ActivationDone { id, result: Ok(()) });
    assert!(s.m.active());
    let since = s.actions.len();
    let end = s.now + Duration::from_secs(60);
    while s.now < end {
        s.advance(TICK);
        if s.m.request_in_flight {
            s.ev(Event::LeaseUnreachable { epoch: Epoch(1) });
        }
        let round = s.actions[since..]
            .iter()
            .filter(|(_, a)| matches!(a, Action::AskPromises { .. }))
            .count();
        if s.m.promise_round_in_flight {
            s.ev(Event::PromisesGranted {
                epoch: Epoch(1),
                sent_at: s.now,
                from: vec![b()],
            });
        }
        assert!(s.m.active(), "still active after {round} promise rounds");
    }
    assert_eq!(s.count(since, is_fence), 0);
    assert!(s.m.witness_lost);
    // The controller is back: the next grant ends witness-loss mode.
    s.advance(TICK * 5);
    assert!(s.grant_pending());
    assert!(!s.m.witness_lost && s.m.active());
}

#[test]
fn without_every_promise_the_region_fences_at_its_deadline() {
    let mut s = Sim::activating(a());
    let id = s.last_activation().unwrap();
    s.ev(Event::ActivationDone { id, result: Ok(()) });
    let deadline = s.m.lease.as_ref().unwrap().deadline;
    let since = s.actions.len();
    while s.now < deadline + TICK {
        s.advance(TICK);
        if s.m.request_in_flight {
            s.ev(Event::LeaseUnreachable { epoch: Epoch(1) });
        }
        if s.m.promise_round_in_flight {
            s.ev(Event::PromisesRefused {
                epoch: Epoch(1),
                detail: "b: unreachable".into(),
            });
        }
    }
    let (at, _) = s.actions[since..]
        .iter()
        .find(|(_, a)| is_fence(a))
        .expect("fenced");
    assert!(*at >= deadline && *at < deadline + TICK);
    assert!(!s.m.active());
}

#[test]
fn a_failed_activation_is_fenced_and_tried_again() {
    let mut s = Sim::activating(a());
    let id = s.last_activation().unwrap();
    let since = s.actions.len();
    s.ev(Event::ActivationDone {
        id,
        result: Err("postgres: the old primary still takes writes".into()),
    });
    assert!(s.count(since, is_fence) == 1, "half-done activation fenced");
    s.ev(Event::FenceDone { ok: true });
    s.advance(Duration::from_millis(600));
    s.grant_pending();
    assert!(
        s.last_activation().unwrap() > id,
        "tried again after the retry delay"
    );
}

/// A tiny deterministic generator (no dependency for a test).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Random events in random order, with the driver's answers delayed, lost or
/// refused; every invariant of the module checked after every step.
#[test]
fn randomized_schedules_keep_every_invariant() {
    for seed in 1..=300u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let region = if seed % 2 == 0 { a() } else { b() };
        let other = if seed % 2 == 0 { b() } else { a() };
        let t0 = Instant::now();
        let (mut m, out) = Machine::start(params(), region.clone(), Epoch(1), None, t0);
        let mut now = t0;
        let mut pending: Vec<Event> = Vec::new();
        let mut promised_until: Option<Instant> = None;
        let mut guard: Option<Instant> = None;
        let mut outs = vec![out];
        for step in 0..400 {
            for out in outs.drain(..) {
                for act in out.actions {
                    match act {
                        Action::RequestLease { epoch } => pending.push(match rng.below(4) {
                            0 => Event::LeaseRefused {
                                epoch,
                                reason: "no".into(),
                            },
                            1 => Event::LeaseUnreachable { epoch },
                            _ => Event::LeaseGranted {
                                epoch,
                                sent_at: now,
                            },
                        }),
                        Action::AskPromises { epoch, .. } => pending.push(if rng.below(3) == 0 {
                            Event::PromisesRefused {
                                epoch,
                                detail: "x".into(),
                            }
                        } else {
                            Event::PromisesGranted {
                                epoch,
                                sent_at: now,
                                from: vec![other.clone()],
                            }
                        }),
                        Action::StartActivation { epoch, id, .. } => {
                            assert_ne!(m.fenced_epoch, Some(epoch), "seed {seed} step {step}");
                            assert!(
                                promised_until.is_none_or(|u| now >= u),
                                "seed {seed} step {step}: activation inside a promise"
                            );
                            pending.push(Event::ActivationDone {
                                id,
                                result: if rng.below(5) == 0 {
                                    Err("boom".into())
                                } else {
                                    Ok(())
                                },
                            });
                        }
                        Action::FenceAll { .. } => pending.push(Event::FenceDone {
                            ok: rng.below(6) != 0,
                        }),
                        Action::Guard(g) => guard = g,
                        Action::CancelActivation { .. }
                        | Action::PersistEpoch { .. }
                        | Action::Journal { .. } => {}
                    }
                }
                if let Some(Reply::Ok(msg)) = &out.reply
                    && msg.contains("promises")
                {
                    let u = m.promise.as_ref().map(|p| p.until);
                    promised_until = promised_until.max(u);
                }
            }
            now += Duration::from_millis(rng.below(400));
            let ev = if !pending.is_empty() && rng.below(3) != 0 {
                // Answers arrive out of order, and some are lost.
                let i = usize::try_from(rng.below(pending.len() as u64)).unwrap();
                let e = pending.swap_remove(i);
                if rng.below(10) == 0 { Event::Tick } else { e }
            } else {
                let epoch = Epoch(m.epoch.0 + rng.below(2));
                match rng.below(8) {
                    7 => Event::GuardRunning {
                        running: rng.below(4) != 0,
                    },
                    0 => Event::View {
                        epoch,
                        active: Some(if rng.below(3) == 0 {
                            other.clone()
                        } else {
                            region.clone()
                        }),
                    },
                    1 => Event::FenceCommand { epoch },
                    2 => Event::PromoteCommand {
                        epoch,
                        forced: false,
                    },
                    3 => Event::PromiseRequest {
                        from: other.clone(),
                        epoch,
                        duration: TTL,
                    },
                    _ => Event::Tick,
                }
            };
            let out = m.step(now, ev);
            // Invariants after every step.
            if matches!(m.roles, Roles::Active { .. } | Roles::Activating { .. }) {
                let l = m.lease.as_ref().unwrap_or_else(|| {
                    panic!(
                        "seed {seed} step {step}: roles {:?} without a lease",
                        m.roles
                    )
                });
                assert!(
                    now < l.deadline,
                    "seed {seed} step {step}: active past the deadline"
                );
            }
            if let Some(u) = promised_until
                && now < u
            {
                assert!(
                    !matches!(m.roles, Roles::Active { .. } | Roles::Activating { .. }),
                    "seed {seed} step {step}: roles {:?} inside a promise",
                    m.roles
                );
            }
            if !m.guard_running {
                assert!(
                    !matches!(m.roles, Roles::Active { .. } | Roles::Activating { .. }),
                    "seed {seed} step {step}: roles {:?} without a guard",
                    m.roles
                );
            }
            let g = out
                .actions
                .iter()
                .rev()
                .find_map(|a| match a {
                    Action::Guard(g) => Some(*g),
                    _ => None,
                })
                .unwrap_or(guard);
            if let Some(l) = &m.lease {
                assert_eq!(
                    g,
                    Some(l.deadline),
                    "seed {seed} step {step}: guard not fed"
                );
            }
            if !m.fenced() && m.lease.is_none() && m.guard.is_some() {
                // Still enforcing the last deadline until the fence completes.
                assert!(g.is_some());
            }
            outs.push(out);
        }
    }
}

/// An upgrade: the agent of the active region restarts within the ttl. It takes its
/// lease back at once (so the controller sees no lapse and fails nothing over), and
/// activates once its start-up hold is over.
#[test]
fn a_restarted_active_agent_takes_its_lease_back_without_waiting() {
    let t0 = Instant::now();
    let (mut m, _) = Machine::start(params(), a(), Epoch(1), None, t0);
    m.step(t0, Event::FenceDone { ok: true });
    m.step(t0, Event::GuardRunning { running: true });
    let out = m.step(
        t0,
        Event::View {
            epoch: Epoch(1),
            active: Some(a()),
        },
    );
    assert!(
        out.actions
            .contains(&Action::RequestLease { epoch: Epoch(1) }),
        "asked at once: {:?}",
        out.actions
    );
    let out = m.step(
        t0,
        Event::LeaseGranted {
            epoch: Epoch(1),
            sent_at: t0,
        },
    );
    assert!(m.lease.is_some(), "held at once");
    assert!(
        !out.actions
            .iter()
            .any(|a| matches!(a, Action::StartActivation { .. })),
        "not activated inside the start-up hold"
    );
    // Renewed through the hold, then activated.
    let mut now = t0;
    let mut activated_at = None;
    while now < t0 + TTL * 2 {
        now += TICK;
        let out = m.step(now, Event::Tick);
        for a in out.actions {
            match a {
                Action::RequestLease { epoch } => {
                    m.step(
                        now,
                        Event::LeaseGranted {
                            epoch,
                            sent_at: now,
                        },
                    );
                }
                Action::StartActivation { .. } => activated_at = activated_at.or(Some(now)),
                _ => {}
            }
        }
        assert!(
            m.lease.as_ref().is_some_and(|l| l.deadline > now),
            "renewed"
        );
    }
    let at = activated_at.expect("activated after the hold");
    assert!(at >= t0 + TTL + MARGIN && at < t0 + TTL + MARGIN + TICK * 2);
}

#[test]
fn losing_the_guard_fences_the_roles_and_keeps_the_lease() {
    let mut s = Sim::activating(a());
    let id = s.last_activation().unwrap();
    s.ev(Event::ActivationDone { id, result: Ok(()) });
    assert!(s.m.active());
    let since = s.actions.len();
    s.ev(Event::GuardRunning { running: false });
    assert_eq!(s.count(since, is_fence), 1, "fenced when the guard is lost");
    assert!(s.m.lease.is_some(), "the lease is kept");
    s.ev(Event::FenceDone { ok: true });
    for _ in 0..20 {
        s.advance(TICK);
        s.grant_pending();
    }
    assert!(
        s.m.fenced(),
        "no activation without a guard: {:?}",
        s.m.roles
    );
    s.ev(Event::GuardRunning { running: true });
    assert!(
        matches!(s.m.roles, Roles::Activating { .. }),
        "{:?}",
        s.m.roles
    );
}
