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
            m: Machine::restore(p, &[a(), b()], durable, t0, true),
            t0,
            journal: vec![],
            sent: vec![],
            persisted: vec![],
            order_ok: true,
        }
    }

    fn at(&self, t: u64) -> Instant {
        self.t0 + ms(t)
    }

    fn step(&mut self, t: u64, ev: Event) -> Option<Reply> {
        let out = self.m.step(self.at(t), ev);
        let mut persisted_epoch = self.persisted.last().map(|d| d.epoch).unwrap_or(Epoch(1));
        for act in out.actions {
            match &act {
                Action::Persist => {
                    self.persisted.push(self.m.durable());
                    persisted_epoch = self.m.durable().epoch;
                }
                Action::Journal { kind, region, .. } => {
                    self.journal.push((t, *kind, region.clone()))
                }
                Action::Send { epoch, .. } => {
                    // Rule 1: a command never carries an epoch that is not yet on disk.
                    if *epoch > persisted_epoch {
                        self.order_ok = false;
                    }
                    self.sent.push((t, act.clone()));
                }
                Action::Publish => {}
            }
        }
        out.reply
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
