//! Leadership of one controller among several (`[controller] store = "etcd"`): pure,
//! `(state, event) -> actions`, no I/O and no clock reads.
//!
//! A controller leads while it holds the leader key in etcd, attached to an etcd
//! lease of `ttl`. etcd counts that lease from when *it* received the grant or the
//! last keep-alive, which is after this controller *sent* it; so, measured from the
//! send instant on this controller's monotonic clock, the lease cannot expire before
//! `sent + ttl` (with clock rates that differ by less than `margin / ttl`). Nobody
//! else can take the leader key before it expires.
//!
//! Guarantees (checked by the tests below, with randomized schedules):
//! - [`Leadership::may_grant`] is true only before `sent + ttl - margin`, where `sent`
//!   is the send instant of the latest grant or keep-alive etcd answered: an agent
//!   lease granted by this leader is granted before another controller can lead, and
//!   the new leader assumes a grant at its own takeover instant (the restart path of
//!   `machine`, rule 8), so no grant of an old leader overlaps a promotion by a new
//!   one (docs/architecture.md, "A highly available witness").
//! - The first event at or past that instant ends the term ([`LeaderAction::StopTerm`]),
//!   exactly once; a late keep-alive answer never revives it: a controller leads again
//!   only by winning a new election (a new etcd lease).
//! - A term starts ([`LeaderAction::StartTerm`]) only on an election won with a lease
//!   whose validity has not already run out.

use std::time::Duration;
use tokio::time::Instant;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    Follower,
    Leading {
        /// The term's number on this controller (1, 2, … since it started).
        term: u64,
        since: Instant,
        /// `sent + ttl - margin` of the latest answered grant or keep-alive.
        valid_until: Instant,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaderEvent {
    /// The leader key was taken with an etcd lease whose grant was sent at `sent`.
    Elected { sent: Instant },
    /// etcd answered a keep-alive sent at `sent`: the lease lives on.
    Renewed { sent: Instant },
    /// The lease is gone (a keep-alive answered ttl 0, or a write guarded by the
    /// leader key was refused): another controller may lead already.
    Lost { why: String },
    /// Time passes.
    Tick,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaderAction {
    /// Build the controller from the store's state, as if just restarted, and run it.
    StartTerm { term: u64 },
    /// Stop the term's controller now: it must grant nothing more.
    StopTerm { term: u64, why: String },
}

#[derive(Debug, Clone)]
pub struct Leadership {
    ttl: Duration,
    margin: Duration,
    role: Role,
    terms: u64,
}

impl Leadership {
    /// `ttl` is the etcd lease's; `margin` what the leader gives up of it (at least
    /// the agents' lease margin: time for a grant in flight and clock-rate drift).
    pub fn new(ttl: Duration, margin: Duration) -> Self {
        Self {
            ttl,
            margin,
            role: Role::Follower,
            terms: 0,
        }
    }

    pub fn role(&self) -> &Role {
        &self.role
    }

    pub fn leading(&self) -> bool {
        matches!(self.role, Role::Leading { .. })
    }

    /// Until when a lease answered for a request sent at `sent` lets this leader act.
    fn valid_until(&self, sent: Instant) -> Instant {
        (sent + self.ttl).checked_sub(self.margin).unwrap_or(sent)
    }

    /// True while this controller leads and its etcd lease cannot have expired.
    pub fn may_grant(&self, now: Instant) -> bool {
        matches!(self.role, Role::Leading { valid_until, .. } if now < valid_until)
    }

    pub fn step(&mut self, now: Instant, event: LeaderEvent) -> Vec<LeaderAction> {
        let mut out = Vec::new();
        // Whatever the event, one at or past the deadline ends the term first: an
        // answer that comes after it does not extend a term that already ended.
        self.check_deadline(now, &mut out);
        match event {
            LeaderEvent::Elected { sent } => {
                if self.leading() {
                    // Already leading: a second election cannot happen with the same
                    // key; treat it as the renewal it implies.
                    self.renew(sent);
                } else if now < self.valid_until(sent) {
                    self.terms += 1;
                    self.role = Role::Leading {
                        term: self.terms,
                        since: now,
                        valid_until: self.valid_until(sent),
                    };
                    out.push(LeaderAction::StartTerm { term: self.terms });
                }
                // An election answered after its own validity: lead nothing; the
                // driver resigns and campaigns again.
            }
            LeaderEvent::Renewed { sent } => self.renew(sent),
            LeaderEvent::Lost { why } => {
                if let Role::Leading { term, .. } = self.role {
                    self.role = Role::Follower;
                    out.push(LeaderAction::StopTerm { term, why });
                }
            }
            LeaderEvent::Tick => {}
        }
        out
    }

    fn check_deadline(&mut self, now: Instant, out: &mut Vec<LeaderAction>) {
        if let Role::Leading {
            term, valid_until, ..
        } = self.role
            && now >= valid_until
        {
            self.role = Role::Follower;
            out.push(LeaderAction::StopTerm {
                term,
                why: format!(
                    "the etcd lease was not renewed in time (a leader stops {} ms before it can expire)",
                    self.margin.as_millis()
                ),
            });
        }
    }

    fn renew(&mut self, sent: Instant) {
        let until = self.valid_until(sent);
        if let Role::Leading { valid_until, .. } = &mut self.role
            && until > *valid_until
        {
            *valid_until = until;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(3);
    const MARGIN: Duration = Duration::from_millis(500);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn an_election_starts_a_term_that_ends_before_the_etcd_lease_can() {
        let t0 = Instant::now();
        let mut l = Leadership::new(TTL, MARGIN);
        assert!(!l.may_grant(t0));
        let a = l.step(t0 + ms(20), LeaderEvent::Elected { sent: t0 });
        assert_eq!(a, vec![LeaderAction::StartTerm { term: 1 }]);
        assert!(l.may_grant(t0 + ms(2499)));
        assert!(!l.may_grant(t0 + ms(2500)), "ttl - margin from the send");
        let a = l.step(t0 + ms(2500), LeaderEvent::Tick);
        assert!(matches!(
            a.as_slice(),
            [LeaderAction::StopTerm { term: 1, .. }]
        ));
        assert!(l.step(t0 + ms(2600), LeaderEvent::Tick).is_empty(), "once");
    }

    #[test]
    fn renewals_extend_from_their_send_instant_and_a_late_one_never_revives() {
        let t0 = Instant::now();
        let mut l = Leadership::new(TTL, MARGIN);
        l.step(t0, LeaderEvent::Elected { sent: t0 });
        // Answered late, but sent at 1 s: valid until 3.5 s.
        l.step(
            t0 + ms(2000),
            LeaderEvent::Renewed {
                sent: t0 + ms(1000),
            },
        );
        assert!(l.may_grant(t0 + ms(3499)));
        assert!(!l.may_grant(t0 + ms(3500)));
        // An older answer does not shorten it.
        l.step(t0 + ms(2100), LeaderEvent::Renewed { sent: t0 + ms(500) });
        assert!(l.may_grant(t0 + ms(3499)));
        let a = l.step(
            t0 + ms(3600),
            LeaderEvent::Renewed {
                sent: t0 + ms(3000),
            },
        );
        assert!(
            matches!(a.as_slice(), [LeaderAction::StopTerm { .. }]),
            "an answer after the deadline ends the term, it does not extend it: {a:?}"
        );
        assert!(!l.may_grant(t0 + ms(3700)));
    }

    #[test]
    fn a_lost_lease_ends_the_term_at_once_and_only_a_new_election_leads_again() {
        let t0 = Instant::now();
        let mut l = Leadership::new(TTL, MARGIN);
        l.step(t0, LeaderEvent::Elected { sent: t0 });
        let a = l.step(
            t0 + ms(100),
            LeaderEvent::Lost {
                why: "refused".into(),
            },
        );
        assert!(matches!(
            a.as_slice(),
            [LeaderAction::StopTerm { term: 1, .. }]
        ));
        assert!(!l.may_grant(t0 + ms(200)));
        l.step(t0 + ms(300), LeaderEvent::Renewed { sent: t0 + ms(250) });
        assert!(!l.may_grant(t0 + ms(400)), "a renewal is not an election");
        let a = l.step(
            t0 + ms(5000),
            LeaderEvent::Elected {
                sent: t0 + ms(4900),
            },
        );
        assert_eq!(a, vec![LeaderAction::StartTerm { term: 2 }]);
    }

    #[test]
    fn an_election_answered_after_its_validity_leads_nothing() {
        let t0 = Instant::now();
        let mut l = Leadership::new(TTL, MARGIN);
        let a = l.step(t0 + ms(2600), LeaderEvent::Elected { sent: t0 });
        assert!(a.is_empty(), "{a:?}");
        assert!(!l.may_grant(t0 + ms(2600)));
    }

    /// Random schedules of elections, renewals answered or lost, late answers and
    /// ticks: after every step, `may_grant` implies the etcd lease of the current
    /// term (from the send of its latest answered request) cannot have expired
    /// with a margin to spare, and starts and stops alternate.
    #[test]
    fn randomized_schedules_never_grant_past_the_etcd_lease() {
        let mut seed: u64 = 0x5eed_1ead;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for _ in 0..200 {
            let t0 = Instant::now();
            let mut l = Leadership::new(TTL, MARGIN);
            let mut now = t0;
            // The latest send etcd answered for the current term's lease.
            let mut answered: Option<Instant> = None;
            let mut in_term = false;
            for _ in 0..300 {
                now += ms(next(700));
                let sent = now.checked_sub(ms(next(4000))).unwrap_or(t0).max(t0);
                let ev = match next(10) {
                    0 if !in_term => LeaderEvent::Elected { sent },
                    1..=4 if in_term => LeaderEvent::Renewed { sent },
                    5 => LeaderEvent::Lost { why: "x".into() },
                    _ => LeaderEvent::Tick,
                };
                let was_leading = l.leading();
                match &ev {
                    LeaderEvent::Elected { sent } => answered = Some(*sent),
                    LeaderEvent::Renewed { sent } => {
                        answered = answered.map(|a| a.max(*sent));
                    }
                    _ => {}
                }
                for a in l.step(now, ev) {
                    match a {
                        LeaderAction::StartTerm { .. } => {
                            assert!(!was_leading && !in_term, "a term started twice");
                            in_term = true;
                        }
                        LeaderAction::StopTerm { .. } => {
                            assert!(in_term, "stopped a term that did not run");
                            in_term = false;
                        }
                    }
                }
                assert_eq!(in_term, l.leading());
                if !in_term {
                    answered = None;
                }
                if l.may_grant(now) {
                    let a = answered.expect("a leader has an answered lease");
                    assert!(
                        now + MARGIN < a + TTL,
                        "may grant at {:?} with the lease answered for a send at {:?}",
                        now - t0,
                        a - t0
                    );
                }
            }
        }
    }
}
