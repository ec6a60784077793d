//! State-machine tests: no I/O, time passed in explicitly (and paused tokio time
//! where a test wants `Instant::now()` to mean something).

use crate::machine::*;
use lifeboat_api::types::CommandKind;
use lifeboat_config::{FailbackPolicy, FailoverMode};
use lifeboat_core::{Epoch, HealthStatus, JournalKind, RegionId};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::time::Instant;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn params() -> Params {
    Params {
        mode: FailoverMode::Automatic,
        failback: FailbackPolicy::Manual,
        lease_ttl: ms(2000),
        lease_margin: ms(500),
        hold_down: ms(1000),
        report_ttl: ms(3000),
        require_ready_standby: true,
        switchover_timeout: ms(10_000),
        activation_grace: ms(5_000),
        resend_every: ms(1000),
        stall_limit: None,
        health_settle: ms(1000),
    }
}

fn a() -> RegionId {
    RegionId::new("a")
}
fn b() -> RegionId {
    RegionId::new("b")
}

struct Sim {
    m: Machine,
    t0: Instant,
    journal: Vec<(u64, JournalKind, Option<RegionId>)>,
    sent: Vec<(u64, Action)>,
    persisted: Vec<Durable>,
    /// Index of the last Persist in the action stream seen before each Send.
    order_ok: bool,
    /// Every Fence left when the disk already said its region was being moved away
    /// from (or was not active): a restart resumes the move instead of forgetting it.
    fence_order_ok: bool,
    /// Journal details, in order (kind, detail).
    notes: Vec<(JournalKind, String)>,
    params: Params,
    /// Controller restarts so far.
    restarts: usize,
}

impl Sim {
    fn new(p: Params) -> Self {
        let t0 = Instant::now();
        let durable = Durable {
            epoch: Epoch(1),
            active: Some(a()),
            home: None,
            promoting: None,
            failovers: 0,
            moving: None,
        };
        Self {
            m: Machine::restore(p.clone(), &[a(), b()], durable, t0, true),
            t0,
            journal: vec![],
            sent: vec![],
            persisted: vec![],
            order_ok: true,
            fence_order_ok: true,
            notes: vec![],
            params: p,
            restarts: 0,
        }
    }

    /// A controller started by `Machine::start` (as the server starts it) at t0.
    fn started(p: Params, disk: Option<Durable>) -> Self {
        let mut s = Self::new(p.clone());
        s.m = Machine::start(p, &[a(), b()], disk.clone(), Some(a()), s.t0, true);
        s.persisted.extend(disk);
        s
    }

    /// kill -9 and start again at `t`, from what was last persisted.
    fn restart(&mut self, t: u64) {
        self.restarts += 1;
        self.m = Machine::start(
            self.params.clone(),
            &[a(), b()],
            self.persisted.last().cloned(),
            Some(a()),
            self.at(t),
            true,
        );
    }

    fn notes_of(&self, kind: JournalKind) -> Vec<&str> {
        self.notes
            .iter()
            .filter(|(k, _)| *k == kind)
            .map(|(_, d)| d.as_str())
            .collect()
    }

    fn at(&self, t: u64) -> Instant {
        self.t0 + ms(t)
    }

    fn step(&mut self, t: u64, ev: Event) -> Option<Reply> {
        self.step_crashing(t, ev, usize::MAX)
    }

    /// Step, execute only the first `keep` actions (in order, as the server does),
    /// and if that was not all of them, crash and restart from the disk at `t`.
    fn step_crashing(&mut self, t: u64, ev: Event, keep: usize) -> Option<Reply> {
        let out = self.m.step(self.at(t), ev);
        let total = out.actions.len();
        let mut persisted_epoch = self.persisted.last().map(|d| d.epoch).unwrap_or(Epoch(1));
        for act in out.actions.into_iter().take(keep) {
            match &act {
                Action::Persist => {
                    self.persisted.push(self.m.durable());
                    persisted_epoch = self.m.durable().epoch;
                }
                Action::Journal {
                    kind,
                    region,
                    detail,
                } => {
                    self.journal.push((t, *kind, region.clone()));
                    self.notes.push((*kind, detail.clone()));
                }
                Action::Send {
                    epoch,
                    region,
                    command,
                    ..
                } => {
                    // Rule 1: a command never carries an epoch that is not yet on disk.
                    if *epoch > persisted_epoch {
                        self.order_ok = false;
                    }
                    if *command == CommandKind::Fence {
                        let disk = self.persisted.last();
                        let moving_away = disk.is_some_and(|d| {
                            d.moving
                                .as_ref()
                                .is_some_and(|mv| mv.from.as_ref() == Some(region))
                                || d.active.as_ref() != Some(region)
                        });
                        if !moving_away {
                            self.fence_order_ok = false;
                        }
                    }
                    self.sent.push((t, act.clone()));
                }
                Action::Publish => {}
            }
        }
        if keep < total {
            self.restart(t);
            return None;
        }
        out.reply
    }

    /// A report with every field given.
    #[allow(clippy::too_many_arguments)]
    fn report_full(
        &mut self,
        t: u64,
        region: RegionId,
        epoch: u64,
        active: bool,
        caught_up: bool,
        promised: Option<lifeboat_api::types::PromiseView>,
        witness_lost: bool,
        view_active: Option<RegionId>,
    ) {
        self.step(
            t,
            Event::Report {
                region,
                epoch: Epoch(epoch),
                active,
                fenced: !active,
                ready: true,
                caught_up,
                detail: String::new(),
                promised,
                witness_lost,
                view_active,
            },
        );
    }

    fn health(&mut self, t: u64, a_h: HealthStatus, b_h: HealthStatus) {
        let mut h = BTreeMap::new();
        h.insert(a(), a_h);
        h.insert(b(), b_h);
        self.step(t, Event::Health(h));
    }

    fn report(&mut self, t: u64, region: RegionId, epoch: u64, active: bool, ready: bool) {
        self.step(
            t,
            Event::Report {
                region,
                epoch: Epoch(epoch),
                active,
                fenced: !active,
                ready,
                caught_up: ready,
                detail: if ready {
                    String::new()
                } else {
                    "lag 10 MB over the limit".into()
                },
                promised: None,
                witness_lost: false,
                view_active: None,
            },
        );
    }

    fn lease(&mut self, t: u64, region: RegionId, epoch: u64) -> bool {
        match self.step(
            t,
            Event::LeaseRequest {
                region,
                epoch: Epoch(epoch),
            },
        ) {
            Some(Reply::Lease { granted, .. }) => granted,
            Some(Reply::LeaseUndecided { .. }) => false,
            other => panic!("unexpected reply {other:?}"),
        }
    }

    fn first(&self, kind: JournalKind) -> Option<u64> {
        self.journal
            .iter()
            .find(|(_, k, _)| *k == kind)
            .map(|(t, _, _)| *t)
    }

    fn promotes(&self) -> Vec<(u64, RegionId, Epoch)> {
        self.sent
            .iter()
            .filter_map(|(t, a)| match a {
                Action::Send {
                    region,
                    command: CommandKind::Promote,
                    epoch,
                    ..
                } => Some((*t, region.clone(), *epoch)),
                _ => None,
            })
            .collect()
    }

    fn fences(&self) -> Vec<(u64, RegionId)> {
        self.sent
            .iter()
            .filter_map(|(t, a)| match a {
                Action::Send {
                    region,
                    command: CommandKind::Fence,
                    ..
                } => Some((*t, region.clone())),
                _ => None,
            })
            .collect()
    }
}

/// Region a active and renewing, b a ready standby; b healthy, a healthy while
/// `a_alive`; every 100 ms.
fn steady(s: &mut Sim, from: u64, to: u64, a_alive: bool) {
    let a_h = if a_alive {
        HealthStatus::Healthy
    } else {
        HealthStatus::Unhealthy
    };
    renewing(s, from, to, a_h, HealthStatus::Healthy);
}

/// Region a's agent renewing its lease (epoch 1) and b a ready standby, with the
/// quorum's health of a and b as given; every 100 ms.
fn renewing(s: &mut Sim, from: u64, to: u64, a_h: HealthStatus, b_h: HealthStatus) {
    let mut t = from;
    while t <= to {
        s.health(t, a_h, b_h);
        s.report(t, b(), 1, false, true);
        if t.is_multiple_of(600) {
            s.lease(t, a(), 1);
        }
        t += 100;
    }
}

#[test]
fn region_down_by_quorum_fails_over_after_hold_down_and_lease_expiry() {
    let mut s = Sim::new(params());
    steady(&mut s, 0, 1000, true);
    assert!(s.promotes().is_empty());
    // a's app dies: the quorum says a is unhealthy from t=1100. a's agent lives on and
    // keeps asking for its lease (refused once the move starts).
    renewing(
        &mut s,
        1100,
        6000,
        HealthStatus::Unhealthy,
        HealthStatus::Healthy,
    );
    let detected = s.first(JournalKind::Detected).expect("detected");
    let confirmed = s.first(JournalKind::Confirmed).expect("confirmed");
    let fenced = s.first(JournalKind::Fenced).expect("fenced");
    let promoted = s.first(JournalKind::Promoted).expect("promoted");
    assert_eq!(detected, 1100);
    assert_eq!(confirmed, 2100, "hold-down of 1 s after detection");
    // The last grant to a was at t=1800 (before the move began at 2100): promotion
    // waits for 1800 + ttl 2000 + margin 500 = 4300 since a never acknowledged a fence.
    assert_eq!(fenced, 4300);
    assert_eq!(promoted, 4300);
    assert!(detected < confirmed && confirmed <= fenced && fenced <= promoted);
    let promotes = s.promotes();
    assert_eq!(promotes[0].1, b());
    assert_eq!(promotes[0].2, Epoch(2), "epoch + 1");
    assert_eq!(s.m.epoch, Epoch(2));
    assert_eq!(s.m.active, Some(b()));
    assert!(s.order_ok, "a command left before its epoch was persisted");
    assert_eq!(s.persisted.last().map(|d| d.epoch), Some(Epoch(2)));
    // The move refused a's renewals and fenced it.
    assert_eq!(s.fences().first().map(|f| f.1.clone()), Some(a()));
    assert!(
        s.journal
            .iter()
            .any(|(t, k, _)| *k == JournalKind::Rerouted && *t == promoted)
    );
}

#[test]
fn acknowledged_fence_lets_promotion_go_before_the_lease_runs_out() {
    let mut s = Sim::new(params());
    steady(&mut s, 0, 1000, true);
    s.health(1100, HealthStatus::Unhealthy, HealthStatus::Healthy);
    s.report(2100, b(), 1, false, true);
    s.health(2100, HealthStatus::Unhealthy, HealthStatus::Healthy);
    assert_eq!(s.fences().len(), 1, "fence sent at confirmation");
    assert!(s.promotes().is_empty());
    s.step(
        2150,
        Event::CommandResult {
            region: a(),
            kind: CommandKind::Fence,
            epoch: Epoch(1),
            ok: true,
            detail: String::new(),
        },
    );
    assert_eq!(s.first(JournalKind::Fenced), Some(2150));
    assert_eq!(s.promotes().first().map(|p| p.0), Some(2150));
    // An acknowledgement for an older epoch would not count.
    let mut s2 = Sim::new(params());
    steady(&mut s2, 0, 1000, true);
    s2.health(1100, HealthStatus::Unhealthy, HealthStatus::Healthy);
    s2.health(2100, HealthStatus::Unhealthy, HealthStatus::Healthy);
    s2.step(
        2150,
        Event::CommandResult {
            region: a(),
            kind: CommandKind::Fence,
            epoch: Epoch(0),
            ok: true,
            detail: String::new(),
        },
    );
    assert!(s2.promotes().is_empty());
}

#[test]
fn blip_shorter_than_hold_down_does_not_fail_over() {
    let mut s = Sim::new(params());
    steady(&mut s, 0, 1000, true);
    s.health(1100, HealthStatus::Unhealthy, HealthStatus::Healthy);
    s.health(1700, HealthStatus::Unhealthy, HealthStatus::Healthy);
    steady(&mut s, 1800, 8000, true);
    assert!(s.first(JournalKind::Detected).is_some());
    assert!(s.first(JournalKind::Recovered).is_some());
    assert!(s.first(JournalKind::Confirmed).is_none());
    assert!(s.promotes().is_empty());
    assert_eq!(s.m.epoch, Epoch(1));
}

#[test]
fn unknown_health_is_not_a_failure() {
    // One partitioned observer cannot make a region unhealthy (the quorum decision
    // says Unknown or Healthy, never Unhealthy): nothing happens.
    let mut s = Sim::new(params());
    renewing(
        &mut s,
        0,
        10_000,
        HealthStatus::Unknown,
        HealthStatus::Healthy,
    );
    assert!(s.first(JournalKind::Detected).is_none());
    assert!(s.promotes().is_empty());
}

#[test]
fn stale_epoch_lease_request_is_refused_and_journaled() {
    let mut s = Sim::new(params());
    assert!(s.lease(0, a(), 1));
    assert!(!s.lease(100, a(), 0), "epoch 0 < current 1");
    assert!(s.first(JournalKind::StaleEpochRefused).is_some());
    assert!(!s.lease(200, b(), 1), "b is not active");
    assert!(!s.lease(300, a(), 7), "future epoch");
}

#[test]
fn agent_cut_off_lease_lapse_triggers_failover_only_after_certain_expiry() {
    let mut s = Sim::new(params());
    steady(&mut s, 0, 1200, true);
    // Last grant at t=1200. From here a's agent is cut off from the controller: no
    // renewals, no reports; the vantage points still see a's app (partition of the
    // agent only), so health stays Healthy.
    let mut t = 1300;
    while t <= 8000 {
        s.health(t, HealthStatus::Healthy, HealthStatus::Healthy);
        s.report(t, b(), 1, false, true);
        t += 100;
    }
    let detected = s.first(JournalKind::Detected).expect("lapse detected");
    let promoted = s.first(JournalKind::Promoted).expect("promoted");
    assert!(
        detected >= 1200 + 2000 + 500,
        "lapse is detected only after ttl + margin"
    );
    assert!(
        promoted >= 1200 + 2500 + 1000,
        "and promotion waits the hold-down too"
    );
    // The agent, measuring from when it *sent* its last renewal (<= 1200), fenced
    // itself by 1200 + 2000 = 3200 on its own clock: strictly before the promotion.
    assert!(1200 + 2000 < promoted);
    // Counted once for lifeboat_lease_lapses_total (examples/prometheus/alerts.yml).
    assert_eq!(s.m.lease_lapses, 1);
}

#[test]
fn restart_mid_failover_resends_promote_with_same_epoch() {
    let p = params();
    let t0 = Instant::now();
    let durable = Durable {
        epoch: Epoch(5),
        active: Some(b()),
        home: Some(a()),
        promoting: Some(b()),
        failovers: 3,
        moving: None,
    };
    let mut m = Machine::restore(p, &[a(), b()], durable, t0, false);
    let out = m.step(t0, Event::Tick);
    let sends: Vec<_> = out
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::Send {
                region,
                command,
                epoch,
                ..
            } => Some((region.clone(), *command, *epoch)),
            _ => None,
        })
        .collect();
    assert_eq!(sends, vec![(b(), CommandKind::Promote, Epoch(5))]);
    assert_eq!(m.epoch, Epoch(5), "never lower after a restart");
    // b reports active under epoch 5: verified, steady.
    let out = m.step(
        t0 + ms(100),
        Event::Report {
            region: b(),
            epoch: Epoch(5),
            active: true,
            fenced: false,
            ready: true,
            caught_up: true,
            detail: String::new(),
            promised: None,
            witness_lost: false,
            view_active: None,
        },
    );
    assert!(out.actions.iter().any(|a| matches!(
        a,
        Action::Journal {
            kind: JournalKind::Verified,
            ..
        }
    )));
    assert!(matches!(m.phase, Phase::Steady));
    assert_eq!(m.durable().promoting, None);
}

#[test]
fn after_restart_no_promotion_before_an_assumed_lease_expires() {
    let p = params();
    let t0 = Instant::now();
    let durable = Durable {
        epoch: Epoch(2),
        active: Some(a()),
        home: None,
        promoting: None,
        failovers: 0,
        moving: None,
    };
    let mut m = Machine::restore(p, &[a(), b()], durable, t0, false);
    let mut h = BTreeMap::new();
    h.insert(a(), HealthStatus::Unhealthy);
    h.insert(b(), HealthStatus::Healthy);
    let mut first_promote = None;
    for i in 0..100u64 {
        let now = t0 + ms(i * 100);
        let mut actions = m.step(now, Event::Health(h.clone())).actions;
        actions.extend(
            m.step(
                now,
                Event::Report {
                    region: b(),
                    epoch: Epoch(2),
                    active: false,
                    fenced: true,
                    ready: true,
                    caught_up: true,
                    detail: String::new(),
                    promised: None,
                    witness_lost: false,
                    view_active: None,
                },
            )
            .actions,
        );
        actions.extend(m.step(now, Event::Tick).actions);
        if first_promote.is_none()
            && actions.iter().any(|a| {
                matches!(
                    a,
                    Action::Send {
                        command: CommandKind::Promote,
                        ..
                    }
                )
            })
        {
            first_promote = Some(i * 100);
        }
    }
    assert!(
        first_promote.expect("promoted eventually") >= 2500,
        "a lease granted just before the crash is honoured"
    );
}

#[test]
fn manual_mode_detects_but_waits_for_an_operator() {
    let mut p = params();
    p.mode = FailoverMode::Manual;
    let mut s = Sim::new(p);
    steady(&mut s, 0, 500, true);
    steady(&mut s, 600, 6000, false);
    assert!(s.first(JournalKind::Confirmed).is_some());
    assert!(s.first(JournalKind::PromotionBlocked).is_some());
    assert!(s.promotes().is_empty());
    let r = s.step(
        6100,
        Event::Failover {
            to: b(),
            force: false,
        },
    );
    assert!(matches!(r, Some(Reply::Move(Ok(_)))), "{r:?}");
    steady(&mut s, 6200, 12_000, false);
    assert_eq!(s.promotes().first().map(|p| p.1.clone()), Some(b()));
    assert_eq!(s.m.epoch, Epoch(2));
}

#[test]
fn operator_failover_to_a_lagging_standby_needs_force_and_is_journaled() {
    let mut s = Sim::new(params());
    s.report(0, b(), 1, false, false);
    let r = s.step(
        100,
        Event::Failover {
            to: b(),
            force: false,
        },
    );
    assert!(
        matches!(&r, Some(Reply::Move(Err(e))) if e.contains("not ready")),
        "{r:?}"
    );
    assert!(s.first(JournalKind::PromotionBlocked).is_some());
    let r = s.step(
        200,
        Event::Failover {
            to: b(),
            force: true,
        },
    );
    assert!(matches!(r, Some(Reply::Move(Ok(_)))));
    assert!(
        s.journal
            .iter()
            .any(|(_, k, _)| *k == JournalKind::OperatorRequest)
    );
    let r = s.step(
        300,
        Event::Failover {
            to: RegionId::new("zz"),
            force: true,
        },
    );
    assert!(
        matches!(&r, Some(Reply::Move(Err(e))) if e.contains("no region named")),
        "{r:?}"
    );
}

#[test]
fn automatic_failover_skips_a_lagging_standby() {
    let mut s = Sim::new(params());
    let mut t = 0;
    while t <= 8000 {
        s.health(
            t,
            if t > 500 {
                HealthStatus::Unhealthy
            } else {
                HealthStatus::Healthy
            },
            HealthStatus::Healthy,
        );
        s.report(t, b(), 1, false, false);
        t += 100;
    }
    assert!(
        s.promotes().is_empty(),
        "a standby over the lag limit is not promoted automatically"
    );
    assert_eq!(
        s.journal
            .iter()
            .filter(|(_, k, _)| *k == JournalKind::PromotionBlocked)
            .count(),
        1,
        "said once"
    );
}

#[test]
fn switchover_waits_for_catch_up_after_fencing() {
    let mut s = Sim::new(params());
    steady(&mut s, 0, 600, true);
    let r = s.step(700, Event::Switchover { to: b() });
    assert!(matches!(r, Some(Reply::Move(Ok(_)))), "{r:?}");
    s.step(
        750,
        Event::CommandResult {
            region: a(),
            kind: CommandKind::Fence,
            epoch: Epoch(1),
            ok: true,
            detail: String::new(),
        },
    );
    // b has not caught up yet.
    s.step(
        800,
        Event::Report {
            region: b(),
            epoch: Epoch(1),
            active: false,
            fenced: true,
            ready: true,
            caught_up: false,
            detail: String::new(),
            promised: None,
            witness_lost: false,
            view_active: None,
        },
    );
    assert!(s.promotes().is_empty());
    assert!(s.first(JournalKind::CatchUpWait).is_some());
    s.step(
        900,
        Event::Report {
            region: b(),
            epoch: Epoch(1),
            active: false,
            fenced: true,
            ready: true,
            caught_up: true,
            detail: String::new(),
            promised: None,
            witness_lost: false,
            view_active: None,
        },
    );
    assert_eq!(
        s.promotes().first().map(|p| (p.0, p.1.clone())),
        Some((900, b()))
    );
}

#[test]
fn no_failback_unless_configured() {
    for policy in [FailbackPolicy::Manual, FailbackPolicy::Automatic] {
        let mut p = params();
        p.failback = policy;
        let mut s = Sim::new(p);
        steady(&mut s, 0, 500, true);
        let r = s.step(
            600,
            Event::Failover {
                to: b(),
                force: false,
            },
        );
        assert!(matches!(r, Some(Reply::Move(Ok(_)))));
        s.step(
            650,
            Event::CommandResult {
                region: a(),
                kind: CommandKind::Fence,
                epoch: Epoch(1),
                ok: true,
                detail: String::new(),
            },
        );
        assert_eq!(s.m.active, Some(b()));
        // b verifies and holds the lease; a comes back healthy, ready and caught up.
        let mut t = 700;
        while t <= 30_000 {
            let e = s.m.epoch.0;
            s.health(t, HealthStatus::Healthy, HealthStatus::Healthy);
            let b_active = s.m.active == Some(b());
            s.report(t, b(), e, b_active, true);
            s.report(t, a(), e, !b_active, true);
            if t % 600 == 0 {
                let holder = s.m.active.clone().expect("active");
                s.lease(t, holder, e);
            }
            if let Some((
                _,
                Action::Send {
                    command: CommandKind::Fence,
                    region,
                    epoch,
                    ..
                },
            )) = s.sent.last().cloned()
            {
                s.step(
                    t,
                    Event::CommandResult {
                        region,
                        kind: CommandKind::Fence,
                        epoch,
                        ok: true,
                        detail: String::new(),
                    },
                );
            }
            t += 100;
        }
        match policy {
            FailbackPolicy::Manual => assert_eq!(s.m.active, Some(b()), "stays failed over"),
            FailbackPolicy::Automatic => assert_eq!(s.m.active, Some(a()), "fails back home"),
        }
    }
}

/// Randomised schedules: whatever the interleaving of health flips, reports, lease
/// renewals, fence acknowledgements and operator requests, a promotion never goes out
/// while the previous lease could still be valid and unfenced, and epochs only grow.
#[test]
fn random_schedules_never_promote_over_a_live_lease() {
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut rnd = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    for _run in 0..300 {
        let mut s = Sim::new(params());
        // Per region: when its agent last got a grant for the current holder role,
        // and whether it acknowledged a fence at an epoch.
        let mut last_grant: BTreeMap<RegionId, (u64, Epoch)> = BTreeMap::new();
        let mut fence_acked: BTreeMap<RegionId, Epoch> = BTreeMap::new();
        let mut t = 0;
        let mut last_epoch = s.m.epoch;
        for _ in 0..400 {
            t += 50 + rnd(200);
            let r = if rnd(2) == 0 { a() } else { b() };
            match rnd(7) {
                0 | 1 => {
                    let hs = [
                        HealthStatus::Healthy,
                        HealthStatus::Unhealthy,
                        HealthStatus::Unknown,
                    ];
                    s.health(t, hs[rnd(3) as usize], hs[rnd(3) as usize]);
                }
                2 => {
                    let e = s.m.epoch.0;
                    s.report(t, r, e, false, rnd(4) != 0);
                }
                3 => {
                    let e = s.m.epoch;
                    if s.lease(t, r.clone(), e.0) {
                        // The agent would not take a grant at an epoch it fenced at.
                        if fence_acked.get(&r) != Some(&e) {
                            last_grant.insert(r, (t, e));
                        }
                    }
                }
                4 => {
                    if let Some((
                        _,
                        Action::Send {
                            region,
                            command: CommandKind::Fence,
                            epoch,
                            ..
                        },
                    )) = s.sent.last().cloned()
                    {
                        fence_acked.insert(region.clone(), epoch);
                        s.step(
                            t,
                            Event::CommandResult {
                                region,
                                kind: CommandKind::Fence,
                                epoch,
                                ok: true,
                                detail: String::new(),
                            },
                        );
                    }
                }
                5 => {
                    let _ = s.step(
                        t,
                        Event::Failover {
                            to: r,
                            force: rnd(2) == 0,
                        },
                    );
                }
                _ => {
                    s.step(t, Event::Tick);
                }
            }
            assert!(s.m.epoch >= last_epoch, "epoch went backwards");
            last_epoch = s.m.epoch;
        }
        assert!(s.order_ok, "a command left before its epoch was persisted");
        for (pt, to, epoch) in s.promotes() {
            for (holder, (gt, ge)) in &last_grant {
                if holder == &to || *ge >= epoch || *gt > pt {
                    continue;
                }
                let acked = fence_acked.get(holder).is_some_and(|fe| *fe == *ge);
                let expired = pt >= gt + 2500;
                assert!(
                    acked || expired,
                    "promoted {to} at {pt} (epoch {epoch}) while {holder}'s lease from {gt} (epoch {ge}) was live"
                );
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn paused_time_drives_a_full_failover() {
    // The same machine driven by tokio's paused clock, as the runtime drives it.
    let t0 = Instant::now();
    let durable = Durable {
        epoch: Epoch(1),
        active: Some(a()),
        home: None,
        promoting: None,
        failovers: 0,
        moving: None,
    };
    let mut m = Machine::restore(params(), &[a(), b()], durable, t0, false);
    let mut promoted_at = None;
    let mut h = BTreeMap::new();
    h.insert(a(), HealthStatus::Unhealthy);
    h.insert(b(), HealthStatus::Healthy);
    for _ in 0..100 {
        tokio::time::advance(ms(100)).await;
        let now = Instant::now();
        let mut actions = m
            .step(
                now,
                Event::Report {
                    region: b(),
                    epoch: m.epoch,
                    active: m.active == Some(b()),
                    fenced: false,
                    ready: true,
                    caught_up: true,
                    detail: String::new(),
                    promised: None,
                    witness_lost: false,
                    view_active: None,
                },
            )
            .actions;
        actions.extend(m.step(now, Event::Health(h.clone())).actions);
        if promoted_at.is_none()
            && actions.iter().any(|a| {
                matches!(
                    a,
                    Action::Send {
                        command: CommandKind::Promote,
                        ..
                    }
                )
            })
        {
            promoted_at = Some(now.duration_since(t0));
        }
    }
    // Restart assumed a lease granted at t0: promotion at or after ttl + margin.
    assert!(promoted_at.expect("promoted") >= ms(2500));
    assert_eq!(m.active, Some(b()));
    assert!(
        matches!(m.phase, Phase::Steady),
        "verified: {:?}",
        m.phase.name()
    );
}

#[test]
fn a_newly_active_region_gets_its_grace_before_it_counts_as_failed() {
    // Start-up of a pilot-light region: its app is down until the agent holds the
    // lease and starts it. Unhealthy during that time is not a failure...
    let mut s = Sim::new(params());
    renewing(
        &mut s,
        0,
        4000,
        HealthStatus::Unhealthy,
        HealthStatus::Unhealthy,
    );
    assert!(
        s.first(JournalKind::Detected).is_none(),
        "no detection inside the grace"
    );
    // ...but once a was healthy, a failure counts at once; and a region that never
    // comes up is judged when the grace runs out.
    steady(&mut s, 4100, 4500, true);
    s.health(4600, HealthStatus::Unhealthy, HealthStatus::Unhealthy);
    assert_eq!(s.first(JournalKind::Detected), Some(4600));
    let mut s2 = Sim::new(params());
    let mut t = 0;
    while t <= 6000 {
        s2.health(t, HealthStatus::Unhealthy, HealthStatus::Unhealthy);
        s2.report(t, b(), 1, false, true);
        t += 100;
    }
    assert_eq!(s2.first(JournalKind::Detected), Some(5000));
}

#[test]
fn a_sleeping_pilot_light_standby_can_be_promoted() {
    // b's own checks fail (its services are stopped), yet its agent reports and its
    // data is ready: it is a valid target.
    let mut s = Sim::new(params());
    let mut t = 0;
    while t <= 8000 {
        let a_h = if t < 1000 {
            HealthStatus::Healthy
        } else {
            HealthStatus::Unhealthy
        };
        s.health(t, a_h, HealthStatus::Unhealthy);
        s.report(t, b(), 1, false, true);
        if t % 600 == 0 && t < 1000 {
            s.lease(t, a(), 1);
        }
        t += 100;
    }
    assert_eq!(
        s.promotes().first().map(|p| p.1.clone()),
        Some(b()),
        "{:?}",
        s.journal
    );
}

#[test]
fn after_a_restart_an_active_agent_that_never_renews_has_lapsed() {
    // The controller restarts while a's agent is dead (a's app still answers, so
    // health alone would never notice). The assumed lease lapses at restart + ttl +
    // margin and the failover proceeds; a fresh deployment would instead wait the
    // activation grace for its agents to come up.
    let t0 = Instant::now();
    let durable = Durable {
        epoch: Epoch(4),
        active: Some(a()),
        home: None,
        promoting: None,
        failovers: 1,
        moving: None,
    };
    let mut m = Machine::restore(params(), &[a(), b()], durable.clone(), t0, false);
    let mut fresh = Machine::restore(params(), &[a(), b()], durable, t0, true);
    let mut h = BTreeMap::new();
    h.insert(a(), HealthStatus::Healthy);
    h.insert(b(), HealthStatus::Healthy);
    let report = Event::Report {
        region: b(),
        epoch: Epoch(4),
        active: false,
        fenced: true,
        ready: true,
        caught_up: true,
        detail: String::new(),
        promised: None,
        witness_lost: false,
        view_active: None,
    };
    let mut promoted = None;
    let mut fresh_promoted = None;
    for i in 0..60u64 {
        let now = t0 + ms(i * 100);
        for (mach, slot) in [(&mut m, &mut promoted), (&mut fresh, &mut fresh_promoted)] {
            let mut acts = mach.step(now, Event::Health(h.clone())).actions;
            acts.extend(mach.step(now, report.clone()).actions);
            if slot.is_none()
                && acts.iter().any(|a| {
                    matches!(
                        a,
                        Action::Send {
                            command: CommandKind::Promote,
                            ..
                        }
                    )
                })
            {
                *slot = Some(i * 100);
            }
        }
    }
    let p = promoted.expect("restarted controller fails over from a silent agent");
    assert!(p >= 2500 + 1000, "lapse (ttl + margin) then hold-down: {p}");
    assert_eq!(
        fresh_promoted, None,
        "a fresh deployment waits for its agents"
    );
    assert_eq!(m.epoch, Epoch(5));
}

fn fence_ack(s: &mut Sim, t: u64, region: RegionId, epoch: u64) {
    s.step(
        t,
        Event::CommandResult {
            region,
            kind: CommandKind::Fence,
            epoch: Epoch(epoch),
            ok: true,
            detail: String::new(),
        },
    );
}

fn durable(epoch: u64, active: RegionId) -> Durable {
    Durable {
        epoch: Epoch(epoch),
        active: Some(active),
        ..Durable::default()
    }
}

/// A switchover a -> b whose fence a acknowledged, with b lagging; then kill -9 of
/// the controller and a restart at t=800.
fn switchover_fenced_then_restart() -> Sim {
    let mut s = Sim::new(params());
    s.persisted.push(s.m.durable());
    steady(&mut s, 0, 600, true);
    s.report_full(650, b(), 1, false, false, None, false, None);
    let r = s.step(700, Event::Switchover { to: b() });
    assert!(matches!(r, Some(Reply::Move(Ok(_)))), "{r:?}");
    assert_eq!(
        s.persisted.last().and_then(|d| d.moving.clone()),
        Some(DurableMove {
            kind: MoveKind::Switchover,
            from: Some(a()),
            to: b(),
            forced: false,
            fence_known: false,
        }),
        "the move is on disk before its Fence leaves"
    );
    fence_ack(&mut s, 750, a(), 1);
    assert!(
        s.persisted
            .last()
            .and_then(|d| d.moving.as_ref())
            .is_some_and(|m| m.fence_known),
        "the acknowledged fence is on disk"
    );
    assert!(s.promotes().is_empty(), "b lags");
    s.restart(800);
    s
}

#[test]
fn a_restart_after_a_switchover_fence_ack_still_waits_for_catch_up() {
    let mut s = switchover_fenced_then_restart();
    assert!(
        matches!(s.m.phase, Phase::Moving(_)),
        "{}",
        s.m.phase.name()
    );
    assert_eq!(s.m.epoch, Epoch(1));
    let fences_before = s.fences().len();
    s.step(800, Event::Tick);
    assert_eq!(
        s.fences().len(),
        fences_before + 1,
        "the Fence is sent again at once"
    );
    assert!(matches!(
        s.sent.last(),
        Some((
            800,
            Action::Send {
                epoch: Epoch(1),
                command: CommandKind::Fence,
                ..
            }
        ))
    ));
    // Long past ttl + margin + hold-down, b still lagging, a asking for its lease:
    // no lease-lapse failover that would skip the catch-up.
    let mut t = 900;
    while t <= 10_600 {
        s.health(t, HealthStatus::Healthy, HealthStatus::Healthy);
        s.report_full(t, b(), 1, false, false, None, false, None);
        if t % 600 == 0 {
            assert!(!s.lease(t, a(), 1), "a's lease is not renewed mid-move");
        }
        t += 100;
    }
    assert!(s.promotes().is_empty(), "{:?}", s.notes);
    assert!(s.first(JournalKind::Detected).is_none());
    s.report_full(10_650, b(), 1, false, true, None, false, None);
    assert_eq!(s.promotes(), vec![(10_650, b(), Epoch(2))]);
    assert!(s.order_ok && s.fence_order_ok);
}

#[test]
fn a_restarted_switchover_times_out_from_the_restart_and_gives_a_its_role_back() {
    let mut s = switchover_fenced_then_restart();
    // A catch-up reported before the restart does not count either: it must be new.
    let mut t = 900;
    while t <= 10_700 {
        s.report_full(t, b(), 1, false, false, None, false, None);
        t += 100;
    }
    assert!(
        s.promotes().is_empty(),
        "timeout counts from the restart (800)"
    );
    s.report_full(10_800, b(), 1, false, false, None, false, None);
    assert_eq!(
        s.promotes(),
        vec![(10_800, a(), Epoch(2))],
        "aborted: a again"
    );
}

#[test]
fn a_crash_between_persisting_a_move_and_sending_its_fence_resumes_the_move() {
    let mut s = Sim::new(params());
    s.persisted.push(s.m.durable());
    steady(&mut s, 0, 600, true);
    // The switchover's actions: journal, Persist, Send Fence. Crash after the Persist.
    s.step_crashing(700, Event::Switchover { to: b() }, 2);
    assert!(s.fences().is_empty(), "the Fence never left");
    assert!(matches!(&s.m.phase, Phase::Moving(m) if m.to == b() && m.fenced_at.is_none()));
    s.step(750, Event::Tick);
    assert_eq!(s.fences(), vec![(750, a())]);
    fence_ack(&mut s, 800, a(), 1);
    s.report_full(900, b(), 1, false, true, None, false, None);
    assert_eq!(s.promotes(), vec![(900, b(), Epoch(2))]);
    assert!(s.order_ok && s.fence_order_ok);
}

#[test]
fn a_restarted_failover_whose_fence_was_not_known_waits_for_the_lease_from_the_restart() {
    let mut s = Sim::new(params());
    s.persisted.push(s.m.durable());
    steady(&mut s, 0, 600, true);
    let r = s.step(
        700,
        Event::Failover {
            to: b(),
            force: false,
        },
    );
    assert!(matches!(r, Some(Reply::Move(Ok(_)))));
    s.restart(1000);
    let mut t = 1000;
    while t <= 4000 {
        s.report_full(t, b(), 1, false, true, None, false, None);
        t += 100;
    }
    // a's agent never answers the Fence: the lease the restarted controller must
    // assume (granted at 1000) has certainly expired at 1000 + 2500.
    assert_eq!(s.promotes().first().map(|p| p.0), Some(3500));
    assert_eq!(s.m.epoch, Epoch(2));
}

#[test]
fn a_controller_with_no_state_adopts_the_agents_epoch_and_active_region_before_any_grant() {
    // After a -> b (epoch 2) the controller's state directory was deleted.
    let mut s = Sim::started(params(), None);
    assert_eq!(s.m.condition(), "recovering: waiting for reports from a, b");
    assert_eq!(s.m.active, None);
    s.report_full(0, b(), 2, true, true, None, false, Some(b()));
    assert!(
        !s.lease(50, b(), 2),
        "nothing granted before every agent reported"
    );
    assert_eq!(s.m.condition(), "recovering: waiting for reports from a");
    assert!(s.persisted.is_empty() && s.sent.is_empty());
    s.report_full(100, a(), 2, false, true, None, false, Some(b()));
    assert_eq!(s.m.epoch, Epoch(3), "one above every epoch seen");
    assert_eq!(s.m.active, Some(b()));
    assert_eq!(
        s.persisted.last(),
        Some(&durable(3, b())),
        "persisted first"
    );
    assert_eq!(s.m.condition(), "steady");
    let info = s.notes_of(JournalKind::Info).join("\n");
    assert!(info.contains("adopting epoch 2"), "{info}");
    assert!(info.contains("b reports active at epoch 2"), "{info}");
    assert!(info.contains("epoch 3 persisted"), "{info}");
    // b renews at the old epoch: refused (the answer carries 3); at 3: granted.
    assert!(!s.lease(150, b(), 2));
    assert!(s.lease(200, b(), 3));
    assert!(!s.lease(250, a(), 3), "a stays a standby");
    assert!(s.promotes().is_empty() && s.fences().is_empty());
    assert!(s.order_ok);
}

#[test]
fn recovery_takes_the_active_region_from_the_agents_views_then_the_config() {
    // Nobody active (b's lease lapsed while the controller was gone): the agents at
    // the highest epoch say b.
    let mut s = Sim::started(params(), None);
    s.report_full(0, a(), 4, false, true, None, false, Some(b()));
    s.report_full(10, b(), 4, false, true, None, false, Some(b()));
    assert_eq!((s.m.epoch, s.m.active.clone()), (Epoch(5), Some(b())));
    assert!(
        s.notes_of(JournalKind::Info)
            .iter()
            .any(|n| n.contains("(a, b) last learned b to be active")),
        "{:?}",
        s.notes
    );
    // An agent at a lower epoch has no say.
    let mut s = Sim::started(params(), None);
    s.report_full(0, a(), 3, false, true, None, false, Some(a()));
    s.report_full(10, b(), 4, false, true, None, false, Some(b()));
    assert_eq!((s.m.epoch, s.m.active.clone()), (Epoch(5), Some(b())));
    // A brand-new deployment: every agent at 0, nobody knows: the config's region.
    let mut s = Sim::started(params(), None);
    s.report_full(0, a(), 0, false, true, None, false, None);
    s.report_full(10, b(), 0, false, true, None, false, None);
    assert_eq!((s.m.epoch, s.m.active.clone()), (Epoch(1), Some(a())));
    assert!(s.lease(20, a(), 1));
}

#[test]
fn no_wait_for_agents_acts_on_the_config_or_the_disk_at_once() {
    let m = Machine::start(
        params(),
        &[a(), b()],
        None,
        Some(a()),
        Instant::now(),
        false,
    );
    assert!(m.recovery.is_none());
    assert_eq!((m.epoch, m.active.clone()), (Epoch(1), Some(a())));
    let m = Machine::start(
        params(),
        &[a(), b()],
        Some(durable(7, b())),
        Some(a()),
        Instant::now(),
        false,
    );
    assert!(m.recovery.is_none());
    assert_eq!((m.epoch, m.active), (Epoch(7), Some(b())));
}

#[test]
fn a_normal_restart_renews_the_active_lease_at_once_and_keeps_the_epoch() {
    let mut s = Sim::started(params(), Some(durable(2, a())));
    // a still holds its lease and says so: renewed at once, though b is silent.
    s.report_full(10, a(), 2, true, true, None, false, Some(a()));
    assert!(s.lease(20, a(), 2), "no outage across a controller restart");
    assert!(
        s.m.condition().contains("confirming"),
        "{}",
        s.m.condition()
    );
    s.report_full(30, b(), 2, false, true, None, false, Some(a()));
    assert!(s.m.recovery.is_none());
    assert_eq!(s.m.condition(), "steady");
    assert_eq!(s.m.epoch, Epoch(2), "state current: no bump");
    assert_eq!(s.persisted.len(), 1, "nothing new to persist");
    assert!(
        s.notes_of(JournalKind::Info)
            .iter()
            .any(|n| n.contains("state on disk is current"))
    );
    assert!(s.lease(600, a(), 2));
}

#[test]
fn after_a_normal_restart_nothing_new_is_granted_or_moved_before_every_report() {
    let mut s = Sim::started(params(), Some(durable(2, a())));
    // a's lease lapsed while the controller was down; b is silent.
    s.report_full(10, a(), 2, false, true, None, false, Some(a()));
    assert!(!s.lease(20, a(), 2), "not a lease a holds: wait");
    let r = s.step(30, Event::Switchover { to: a() });
    assert!(matches!(r, Some(Reply::Move(Err(_)))));
    s.step(2400, Event::Tick);
    assert!(!s.lease(2400, a(), 2));
    // ttl + margin after the restart every older lease has expired: act on the disk.
    s.step(2500, Event::Tick);
    assert!(s.m.recovery.is_none());
    assert!(
        s.notes_of(JournalKind::Info)
            .iter()
            .any(|n| n.contains("no report from b"))
    );
    assert!(s.lease(2600, a(), 2));
    assert_eq!(s.m.epoch, Epoch(2));
}

#[test]
fn a_disk_older_than_an_agent_is_recovered_from_and_a_stale_active_region_fenced_first() {
    // The state directory was restored from an old copy: epoch 2, a active. In truth
    // b was promoted at epoch 3, and a (never told) still thinks it is active.
    let mut s = Sim::started(params(), Some(durable(2, a())));
    s.report_full(0, a(), 2, true, true, None, false, Some(a()));
    assert!(
        s.lease(10, a(), 2),
        "a lease a holds, renewed while confirming"
    );
    s.report_full(20, b(), 3, true, true, None, false, Some(b()));
    assert!(
        s.notes_of(JournalKind::Alert)
            .iter()
            .any(|n| n.contains("older than the agents'")),
        "{:?}",
        s.notes
    );
    // Both have reported: adopted epoch 3 with b active, bumped to 4; a is told to
    // fence at 4 and b gets no lease before a acknowledged.
    assert_eq!((s.m.epoch, s.m.active.clone()), (Epoch(4), Some(b())));
    assert_eq!(s.fences(), vec![(20, a())]);
    assert!(
        s.fence_order_ok,
        "the fence left after the adoption was on disk"
    );
    assert!(!s.lease(30, a(), 2));
    assert!(!s.lease(40, b(), 4), "a may still be taking writes");
    fence_ack(&mut s, 50, a(), 4);
    assert!(s.lease(60, b(), 4));
    assert!(s.order_ok);
    // Without the acknowledgement the hold lasts ttl + margin.
    let mut s = Sim::started(params(), Some(durable(2, a())));
    s.report_full(0, a(), 2, true, true, None, false, Some(a()));
    s.report_full(20, b(), 3, true, true, None, false, Some(b()));
    assert!(!s.lease(2500, b(), 4));
    s.step(2520, Event::Tick);
    assert!(s.lease(2530, b(), 4));
}

#[test]
fn an_epoch_the_controller_never_issued_is_refused_and_alerted_not_adopted() {
    let mut s = Sim::new(params());
    steady(&mut s, 0, 600, true);
    for t in [700, 800, 900] {
        s.report_full(t, b(), u64::MAX, false, true, None, false, None);
    }
    assert_eq!(s.m.epoch, Epoch(1), "not adopted");
    let alerts = s.notes_of(JournalKind::Alert);
    assert_eq!(alerts.len(), 1, "alerted once: {alerts:?}");
    assert!(alerts[0].contains("never issued"), "{}", alerts[0]);
    assert!(!s.lease(1000, a(), 9));
    assert_eq!(s.notes_of(JournalKind::Alert).len(), 2);
    assert!(!s.lease(1100, a(), 9));
    assert_eq!(s.notes_of(JournalKind::Alert).len(), 2, "once per epoch");
    assert!(s.persisted.iter().all(|d| d.epoch == Epoch(1)));
    assert!(s.lease(1200, a(), 1), "the real holder is unaffected");
}

#[test]
fn recovery_never_adopts_an_epoch_without_a_successor() {
    let mut s = Sim::started(params(), None);
    s.report_full(0, a(), u64::MAX, false, true, None, false, None);
    s.report_full(10, b(), 1, true, true, None, false, None);
    assert!(s.m.recovery.is_some(), "stuck, not wrapped");
    assert!(
        s.m.condition().contains("no successor"),
        "{}",
        s.m.condition()
    );
    assert_eq!(s.m.epoch, Epoch::ZERO);
    assert!(!s.lease(20, b(), 1));
    assert!(s.persisted.is_empty());
    s.step(30, Event::Tick);
    assert_eq!(s.notes_of(JournalKind::Alert).len(), 1, "said once");
}

#[test]
fn a_standby_that_promised_is_never_promoted_and_the_journal_says_why() {
    let mut s = Sim::new(params());
    steady(&mut s, 0, 1200, true);
    // The controller loses a (a holds its lease on b's promise): no renewals, no
    // reports from a; b reports its promise, refreshed each time.
    let promise = lifeboat_api::types::PromiseView {
        to: a(),
        epoch: Epoch(1),
        remaining_ms: 1800,
    };
    let mut t = 1300;
    while t <= 6000 {
        s.health(t, HealthStatus::Healthy, HealthStatus::Healthy);
        s.report_full(t, b(), 1, false, true, Some(promise.clone()), false, None);
        t += 100;
    }
    assert!(
        s.first(JournalKind::Detected).is_some(),
        "detection goes on"
    );
    assert!(s.first(JournalKind::Confirmed).is_some());
    assert!(s.promotes().is_empty());
    let blocked = s.notes_of(JournalKind::PromotionBlocked);
    assert_eq!(blocked.len(), 1, "once per failure: {blocked:?}");
    assert!(
        blocked[0].contains("b promised a not to activate for")
            && blocked[0].contains("ms: a may be serving without the witness"),
        "{}",
        blocked[0]
    );
    // Not even an operator's forced failover.
    let r = s.step(
        6050,
        Event::Failover {
            to: b(),
            force: true,
        },
    );
    assert!(
        matches!(&r, Some(Reply::Move(Err(e))) if e.contains("b promised a not to activate for 1750 ms")),
        "{r:?}"
    );
    // a reaches the controller again: the failure clears.
    assert!(s.lease(6100, a(), 1));
    assert!(s.first(JournalKind::Recovered).is_some());
    // A promise that ran out (its last report is old) holds nothing back.
    let mut t = 6200;
    while t <= 12_000 {
        s.health(t, HealthStatus::Healthy, HealthStatus::Healthy);
        t += 100;
    }
    s.report_full(12_000, b(), 1, false, true, None, false, None);
    assert_eq!(s.promotes().first().map(|p| p.1.clone()), Some(b()));
}

#[test]
fn witness_loss_mode_is_journaled_on_entry_and_exit() {
    let mut s = Sim::new(params());
    for (t, lost) in [
        (0, false),
        (100, true),
        (200, true),
        (300, false),
        (400, false),
    ] {
        s.report_full(t, a(), 1, true, true, None, lost, Some(a()));
    }
    let alerts = s.notes_of(JournalKind::Alert);
    assert_eq!(alerts.len(), 2, "{alerts:?}");
    assert!(alerts[0].contains("a entered witness-loss mode"));
    assert!(alerts[1].contains("a left witness-loss mode"));
}

/// Randomised schedules with controller restarts (from the last persisted state, at
/// random points, including between a Persist and the Send after it), operator
/// moves, never-issued epochs and lagging standbys: epochs never decrease or wrap,
/// nothing is promoted while the old lease may be live, a switchover never promotes
/// before a catch-up reported after the last restart, and Persist precedes every
/// Send that depends on it.
#[test]
fn random_schedules_with_restarts_keep_every_guarantee() {
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let mut rnd = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let mut restarts = 0;
    let mut switchovers_promoted = 0;
    for _run in 0..300 {
        let mut s = Sim::new(params());
        s.persisted.push(s.m.durable());
        let mut last_grant: BTreeMap<RegionId, (u64, Epoch)> = BTreeMap::new();
        // Every (region, epoch) whose fence an agent acknowledged: it never takes
        // writes under that epoch, or any older one, again.
        let mut fence_acked: std::collections::BTreeSet<(RegionId, Epoch)> =
            std::collections::BTreeSet::new();
        let fenced =
            |acked: &std::collections::BTreeSet<(RegionId, Epoch)>, r: &RegionId, e: Epoch| {
                acked.iter().any(|(ar, ae)| ar == r && *ae >= e)
            };
        let mut t = 0;
        // Per region: its latest report since the last restart said caught up.
        let mut caught_up: BTreeMap<RegionId, bool> = BTreeMap::new();
        let mut max_out = Epoch(1);
        for _ in 0..400 {
            t += 50 + rnd(200);
            let r = if rnd(2) == 0 { a() } else { b() };
            let pre_phase = s.m.phase.clone();
            let strict = s.m.recovery.as_ref().is_some_and(|r| r.strict);
            let sent_before = s.sent.len();
            let crash = rnd(12) == 0;
            let restarts_before = s.restarts;
            let keep = if crash { rnd(4) as usize } else { usize::MAX };
            let ev = match rnd(10) {
                0 | 1 => {
                    let hs = [
                        HealthStatus::Healthy,
                        HealthStatus::Unhealthy,
                        HealthStatus::Unknown,
                    ];
                    let mut h = BTreeMap::new();
                    h.insert(a(), hs[rnd(3) as usize]);
                    h.insert(b(), hs[rnd(3) as usize]);
                    Event::Health(h)
                }
                2 | 3 => {
                    // Mostly the controller's epoch; now and then one it never issued.
                    let e = if rnd(25) == 0 {
                        Epoch(s.m.epoch.0 + 1 + rnd(2))
                    } else {
                        s.m.epoch
                    };
                    let ok = rnd(3) != 0;
                    // An agent reports active while it holds a grant at the current
                    // epoch that it did not fence (as a real agent does).
                    let holds = last_grant.get(&r).is_some_and(|(gt, ge)| {
                        t < gt + 2000 && *ge == e && !fenced(&fence_acked, &r, *ge)
                    });
                    Event::Report {
                        region: r,
                        epoch: e,
                        active: holds,
                        fenced: !holds,
                        ready: ok,
                        caught_up: ok && rnd(3) != 0,
                        detail: String::new(),
                        promised: None,
                        witness_lost: false,
                        view_active: None,
                    }
                }
                4 => Event::LeaseRequest {
                    region: r,
                    epoch: s.m.epoch,
                },
                5 => match s.sent.last().cloned() {
                    Some((
                        _,
                        Action::Send {
                            region,
                            command: CommandKind::Fence,
                            epoch,
                            ..
                        },
                    )) => {
                        fence_acked.insert((region.clone(), epoch));
                        Event::CommandResult {
                            region,
                            kind: CommandKind::Fence,
                            epoch,
                            ok: true,
                            detail: String::new(),
                        }
                    }
                    _ => Event::Tick,
                },
                6 => Event::Failover {
                    to: r,
                    force: rnd(2) == 0,
                },
                7 => Event::Switchover { to: r },
                _ => Event::Tick,
            };
            if let Event::Report {
                region,
                epoch,
                caught_up: c,
                ..
            } = &ev
                && (*epoch <= s.m.epoch || s.m.recovery.is_some())
            {
                caught_up.insert(region.clone(), *c);
            }
            let lease_req = match &ev {
                Event::LeaseRequest { region, epoch } => Some((region.clone(), *epoch)),
                _ => None,
            };
            let reply = s.step_crashing(t, ev, keep);
            let restarted = s.restarts > restarts_before;
            if let (Some((region, epoch)), Some(Reply::Lease { granted: true, .. })) =
                (lease_req, &reply)
            {
                assert!(!strict, "a lease granted while recovering");
                // Never two live leases: every other region's grant has certainly
                // expired, or its fence at that epoch was acknowledged — whatever the
                // restarts made the controller forget.
                for (other, (gt, ge)) in &last_grant {
                    if other == &region || *ge > epoch {
                        continue;
                    }
                    assert!(
                        fenced(&fence_acked, other, *ge) || t >= gt + 2500,
                        "granted {region} at {t} (epoch {epoch}) while {other}'s lease from {gt} (epoch {ge}) was live"
                    );
                }
                max_out = max_out.max(epoch);
                if !fenced(&fence_acked, &region, epoch) {
                    last_grant.insert(region, (t, epoch));
                }
            }
            for (_, act) in &s.sent[sent_before..] {
                if let Action::Send {
                    region,
                    command: CommandKind::Promote,
                    ..
                } = act
                    && let Phase::Moving(m) = &pre_phase
                    && m.planned()
                    && &m.to == region
                {
                    assert!(
                        caught_up.get(region) == Some(&true),
                        "a switchover promoted {region} before a catch-up reported after the restart"
                    );
                    switchovers_promoted += 1;
                }
                if let Action::Send { epoch, .. } = act {
                    max_out = max_out.max(*epoch);
                }
            }
            if restarted {
                restarts += 1;
                caught_up.clear();
            }
            assert!(s.m.epoch >= Epoch(1), "wrapped");
            assert!(
                s.m.epoch >= max_out,
                "epoch {} below {max_out}, which already left",
                s.m.epoch
            );
            assert!(
                s.persisted.windows(2).all(|w| w[0].epoch <= w[1].epoch),
                "a persisted epoch went backwards"
            );
        }
        assert!(s.order_ok, "a command left before its epoch was persisted");
        assert!(
            s.fence_order_ok,
            "a Fence left before its move was persisted"
        );
        for (pt, to, epoch) in s.promotes() {
            for (holder, (gt, ge)) in &last_grant {
                if holder == &to || *ge >= epoch || *gt > pt {
                    continue;
                }
                let acked = fenced(&fence_acked, holder, *ge);
                let expired = pt >= gt + 2500;
                assert!(
                    acked || expired,
                    "promoted {to} at {pt} (epoch {epoch}) while {holder}'s lease from {gt} (epoch {ge}) was live"
                );
            }
        }
    }
    assert!(
        restarts > 100,
        "the schedules restart the controller: {restarts}"
    );
    assert!(
        switchovers_promoted > 10,
        "and complete switchovers: {switchovers_promoted}"
    );
}

#[test]
fn a_promotion_persisted_before_a_restart_completes_while_the_state_is_confirmed() {
    // Region a is gone (its agent silent); the controller died right after
    // persisting epoch 3 and telling b to promote.
    let disk = Durable {
        promoting: Some(b()),
        ..durable(3, b())
    };
    let mut s = Sim::started(params(), Some(disk));
    s.step(0, Event::Tick);
    assert_eq!(
        s.promotes(),
        vec![(0, b(), Epoch(3))],
        "sent again, same epoch"
    );
    s.report_full(50, b(), 3, false, true, None, false, Some(b()));
    assert!(s.m.recovery.is_some(), "a has not reported");
    assert!(
        s.lease(100, b(), 3),
        "b takes the lease of the promotion at once"
    );
    s.report_full(200, b(), 3, true, true, None, false, Some(b()));
    assert!(matches!(s.m.phase, Phase::Steady));
    assert_eq!(s.m.epoch, Epoch(3));
}

#[test]
fn a_lease_granted_while_confirming_is_honoured_by_the_adoption_that_follows() {
    // Found by the randomized schedule: b took the lease of a promotion resumed after
    // a restart, its last report still saying "not active"; then a reported an epoch
    // above the disk's and the adoption picked a. b's live lease must be fenced
    // first, whatever b last reported.
    let disk = Durable {
        promoting: Some(b()),
        ..durable(3, b())
    };
    let mut s = Sim::started(params(), Some(disk));
    s.report_full(0, b(), 3, false, true, None, false, None);
    assert!(s.lease(10, b(), 3));
    s.report_full(20, a(), 4, false, true, None, false, None);
    assert_eq!((s.m.epoch, s.m.active.clone()), (Epoch(5), Some(a())));
    assert_eq!(s.fences(), vec![(20, b())]);
    assert!(!s.lease(30, a(), 5), "b's lease from t=10 may be live");
    fence_ack(&mut s, 40, b(), 5);
    assert!(s.lease(50, a(), 5));
}

#[test]
fn an_absurd_promise_is_clamped_not_a_clock_overflow() {
    let mut s = Sim::new(params());
    let promise = lifeboat_api::types::PromiseView {
        to: a(),
        epoch: Epoch(1),
        remaining_ms: u64::MAX,
    };
    s.report_full(0, b(), 1, false, true, Some(promise), false, None);
    let r = s.step(10, Event::Switchover { to: b() });
    assert!(
        matches!(&r, Some(Reply::Move(Err(e))) if e.contains("b promised a")),
        "{r:?}"
    );
}

#[test]
fn a_controller_that_cannot_judge_yet_says_so_instead_of_refusing() {
    // A refusal is a decision (the agent's lease then runs out); "undecided" lets an
    // active agent hold on, on promises, until the controller can judge.
    let lease = |s: &mut Sim, t: u64, r: RegionId, e: u64| {
        s.step(
            t,
            Event::LeaseRequest {
                region: r,
                epoch: Epoch(e),
            },
        )
    };
    // Recovering with no state.
    let mut s = Sim::started(params(), None);
    assert!(matches!(
        lease(&mut s, 0, a(), 1),
        Some(Reply::LeaseUndecided { .. })
    ));
    // Confirming the state on disk, before the holder's first report.
    let mut s = Sim::started(params(), Some(durable(2, a())));
    assert!(matches!(
        lease(&mut s, 0, a(), 2),
        Some(Reply::LeaseUndecided { .. })
    ));
    // ...but what the disk decides is still a decision: b is not active at 2, and
    // epoch 1 is stale.
    assert!(matches!(
        lease(&mut s, 10, b(), 2),
        Some(Reply::Lease { granted: false, .. })
    ));
    assert!(matches!(
        lease(&mut s, 20, a(), 1),
        Some(Reply::Lease { granted: false, .. })
    ));
    // Outside recovery, a never-issued epoch is refused: a decision.
    let mut s = Sim::new(params());
    assert!(matches!(
        lease(&mut s, 0, a(), 9),
        Some(Reply::Lease { granted: false, .. })
    ));
}

/// Issue 10: the controller frozen (SIGSTOP) for 20 s while a keeps its lease on
/// promises. On resume its clock says "no renewal for 20 s", but it did not run to see
/// any: it must not call that a lapse and fail over. It treats the lease as granted at
/// the resume; a renews and stays active at the same epoch. (A bench drill's 32 s
/// controller pause once ended in a failover this way.)
#[test]
fn a_controller_that_did_not_run_does_not_take_its_own_pause_for_a_lapse() {
    let mut p = params();
    p.stall_limit = Some(ms(700));
    let mut s = Sim::new(p);
    steady(&mut s, 0, 3000, true);
    // Frozen from t = 3000 to t = 23000: no step at all. The first thing it handles on
    // resume is a tick of health (its own probes, frozen mid-flight, time out at once).
    s.health(23_000, HealthStatus::Unhealthy, HealthStatus::Healthy);
    s.report(23_050, b(), 1, false, true);
    s.lease(23_100, a(), 1);
    steady(&mut s, 23_200, 30_000, true);
    assert_eq!(s.first(JournalKind::Detected), None, "{:?}", s.notes);
    assert_eq!(s.first(JournalKind::Promoted), None, "{:?}", s.notes);
    assert_eq!(s.m.epoch, Epoch(1));
    assert_eq!(s.m.active, Some(a()));
    assert_eq!(s.m.lease_lapses, 0, "a pause of the witness is no lapse");
    assert!(
        s.notes_of(JournalKind::Alert)
            .iter()
            .any(|d| d.contains("did not run for 20000 ms")),
        "the pause is journaled: {:?}",
        s.notes
    );
}

/// The same stall, but a's agent really is gone: the failover still happens, counted
/// from the resume (ttl + margin without a renewal, then the hold-down): later, never
/// sooner.
#[test]
fn after_a_stall_a_lease_that_is_not_renewed_still_lapses_from_the_resume() {
    let mut p = params();
    p.stall_limit = Some(ms(700));
    let mut s = Sim::new(p);
    steady(&mut s, 0, 3000, true);
    let mut t = 23_000;
    while t <= 40_000 {
        s.health(t, HealthStatus::Healthy, HealthStatus::Healthy);
        s.report(t, b(), 1, false, true);
        t += 100;
    }
    let detected = s.first(JournalKind::Detected).expect("lapse detected");
    let promoted = s.first(JournalKind::Promoted).expect("promoted");
    assert!(detected >= 23_000 + 2000 + 500, "detected at {detected}");
    assert!(promoted > detected);
    assert_eq!(s.m.epoch, Epoch(2));
    assert_eq!(s.m.lease_lapses, 1);
}

/// After a stall, "seen healthy" needs evidence from after the resume. Seen in the
/// bench: on resume a verdict built from what was gathered before the freeze said a
/// healthy, and the next one (probes that timed out while frozen) said unhealthy: a
/// failure on a region "seen healthy", judged on stale evidence. Now only a healthy
/// verdict once every check was probed again (`health_settle`, here 1 s) arms
/// detection; a real failure is still detected after it.
#[test]
fn after_a_stall_a_healthy_verdict_built_before_the_freeze_does_not_arm_detection() {
    let mut p = params();
    p.stall_limit = Some(ms(700));
    let mut s = Sim::new(p);
    steady(&mut s, 0, 3000, true);
    // Frozen from 3000 to 23000. On resume: the stale "healthy", then "unhealthy".
    s.health(23_000, HealthStatus::Healthy, HealthStatus::Healthy);
    renewing(
        &mut s,
        23_100,
        23_900,
        HealthStatus::Unhealthy,
        HealthStatus::Healthy,
    );
    // Fresh evidence: healthy once the checks were probed again, then a real failure.
    renewing(
        &mut s,
        24_000,
        24_500,
        HealthStatus::Healthy,
        HealthStatus::Healthy,
    );
    assert_eq!(s.first(JournalKind::Detected), None, "{:?}", s.notes);
    renewing(
        &mut s,
        24_600,
        27_000,
        HealthStatus::Unhealthy,
        HealthStatus::Healthy,
    );
    let detected = s
        .first(JournalKind::Detected)
        .expect("a real failure is detected");
    assert!(detected >= 24_600, "detected at {detected}");
}
