//! Response rate limiting over UDP, against amplification: a spoofed source address can
//! make an open authoritative server send answers to a victim, so responses to one network
//! (an IPv4 /24, an IPv6 /56, as BIND and Knot group them) are limited to
//! [`RateLimit::responses_per_second`], with a burst of one second's worth.
//!
//! Past the limit a response is dropped, except every [`RateLimit::slip`]th one, which is
//! sent as a bare truncated answer (the question, TC set, nothing else): a real client
//! behind that network retries over TCP, which cannot be spoofed and is never limited,
//! while the victim of a spoofed flood gets small packets at a fraction of the rate.
//!
//! Simpler than BIND's RRL: the limit counts every response to the network, not each
//! distinct answer; enough against reflection, where the attacker repeats one query.
//! Off unless configured ([`crate::DnsServer::with_rate_limit`]).
//!
//! Memory is bounded: [`MAX_TRACKED`] networks per shard; when a shard is full the
//! networks whose bucket refilled (idle for a second or more) are forgotten, and if none
//! is, the shard starts over (the limit then errs towards answering).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use tokio::time::Instant;

/// Networks tracked per shard before idle ones are forgotten.
const MAX_TRACKED: usize = 4096;
const SHARDS: usize = 16;

/// The limit of [`crate::DnsServer::with_rate_limit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Responses per second to one network (IPv4 /24, IPv6 /56); also the burst.
    pub responses_per_second: u32,
    /// Past the limit, one response in `slip` is sent truncated (TC, no records) instead of
    /// dropped, so real clients fall back to TCP; 0 drops them all. BIND and Knot use 2.
    pub slip: u32,
}

impl Default for RateLimit {
    fn default() -> Self {
        Self {
            responses_per_second: 20,
            slip: 2,
        }
    }
}

/// What to do with one response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Send,
    /// Send the question alone with TC set.
    Slip,
    Drop,
}

#[derive(Debug)]
struct Bucket {
    /// Tokens in millionths of a response.
    tokens: u64,
    last: Instant,
    /// Responses limited since the bucket last had a token (for the slip count).
    limited: u32,
}

#[derive(Debug)]
pub(crate) struct Limiter {
    limit: RateLimit,
    shards: Vec<Mutex<HashMap<u128, Bucket>>>,
}

const UNIT: u64 = 1_000_000;

impl Limiter {
    pub(crate) fn new(limit: RateLimit) -> Self {
        Self {
            limit,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    /// The network a source belongs to, as one key.
    fn network(ip: IpAddr) -> u128 {
        // An IPv4 client on a dual-stack socket arrives as ::ffff:a.b.c.d.
        match ip.to_canonical() {
            IpAddr::V4(v4) => u128::from(u32::from(v4) & 0xffff_ff00),
            // Tagged so that no IPv6 network shares a key with an IPv4 one.
            IpAddr::V6(v6) => (u128::from(v6) & !((1u128 << 72) - 1)) | 1,
        }
    }

    pub(crate) fn check(&self, ip: IpAddr, now: Instant) -> Verdict {
        let rate = u64::from(self.limit.responses_per_second);
        if rate == 0 {
            return Verdict::Send;
        }
        let burst = rate * UNIT;
        let key = Self::network(ip);
        let shard = &self.shards[shard_of(key)];
        // A poisoned lock only means a panic mid-update of plain counters.
        let mut map = shard.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_TRACKED && !map.contains_key(&key) {
            map.retain(|_, b| {
                let idle = now.saturating_duration_since(b.last);
                idle.as_micros() < 1_000_000
            });
            if map.len() >= MAX_TRACKED {
                map.clear();
            }
        }
        let bucket = map.entry(key).or_insert(Bucket {
            tokens: burst,
            last: now,
            limited: 0,
        });
        let elapsed = now.saturating_duration_since(bucket.last);
        let refill = u64::try_from(elapsed.as_micros())
            .unwrap_or(u64::MAX)
            .saturating_mul(rate);
        bucket.tokens = bucket.tokens.saturating_add(refill).min(burst);
        bucket.last = now;
        if bucket.tokens >= UNIT {
            bucket.tokens -= UNIT;
            bucket.limited = 0;
            return Verdict::Send;
        }
        bucket.limited = bucket.limited.saturating_add(1);
        if self.limit.slip > 0 && bucket.limited.is_multiple_of(self.limit.slip) {
            Verdict::Slip
        } else {
            Verdict::Drop
        }
    }
}

/// The shard of a network: a multiplicative hash of the key's bits (the low bits of an
/// IPv4 key are always 0, so they cannot pick the shard themselves).
fn shard_of(key: u128) -> usize {
    let folded = (key as u64) ^ ((key >> 64) as u64);
    (folded.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 60) as usize % SHARDS
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_network_gets_its_rate_then_slips_one_in_slip_and_refills() {
        let l = Limiter::new(RateLimit {
            responses_per_second: 5,
            slip: 2,
        });
        let t0 = Instant::now();
        let a: IpAddr = "192.0.2.7".parse().expect("ip");
        let same_net: IpAddr = "192.0.2.200".parse().expect("ip");
        let other: IpAddr = "198.51.100.1".parse().expect("ip");
        let verdicts: Vec<Verdict> = (0..9)
            .map(|i| l.check(if i % 2 == 0 { a } else { same_net }, t0))
            .collect();
        use Verdict::{Drop, Send, Slip};
        assert_eq!(
            verdicts,
            vec![Send, Send, Send, Send, Send, Drop, Slip, Drop, Slip],
            "the burst is shared by the /24, then one in two slips"
        );
        assert_eq!(
            l.check(other, t0),
            Send,
            "another network has its own budget"
        );
        // 200 ms later one token is back (5/s).
        let t1 = t0 + Duration::from_millis(200);
        assert_eq!(l.check(a, t1), Send);
        assert_eq!(l.check(a, t1), Drop);
        // After a second the whole burst is back, and no more.
        let t2 = t1 + Duration::from_secs(10);
        assert_eq!((0..5).filter(|_| l.check(a, t2) == Send).count(), 5);
        assert_ne!(l.check(a, t2), Send);
    }

    #[test]
    fn ipv6_sources_are_grouped_by_56_bit_prefix() {
        let l = Limiter::new(RateLimit {
            responses_per_second: 1,
            slip: 0,
        });
        let t = Instant::now();
        let a: IpAddr = "2001:db8:0:1::1".parse().expect("ip");
        let same: IpAddr = "2001:db8:0:ff::2".parse().expect("ip");
        let other: IpAddr = "2001:db8:0:100::1".parse().expect("ip");
        assert_eq!(l.check(a, t), Verdict::Send);
        assert_eq!(l.check(same, t), Verdict::Drop, "same /56, slip 0: dropped");
        assert_eq!(l.check(other, t), Verdict::Send);
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().expect("ip");
        let v4: IpAddr = "192.0.2.9".parse().expect("ip");
        assert_eq!(l.check(mapped, t), Verdict::Send);
        assert_eq!(
            l.check(v4, t),
            Verdict::Drop,
            "a mapped address is its IPv4 network"
        );
    }

    #[test]
    fn the_table_of_networks_is_bounded() {
        let l = Limiter::new(RateLimit {
            responses_per_second: 1,
            slip: 2,
        });
        let t = Instant::now();
        for i in 0..(MAX_TRACKED * SHARDS * 3) as u32 {
            l.check(IpAddr::from(std::net::Ipv4Addr::from(i << 8)), t);
        }
        let mut used = 0;
        for shard in &l.shards {
            let len = shard.lock().expect("lock").len();
            assert!(len <= MAX_TRACKED);
            used += usize::from(len > 0);
        }
        assert_eq!(used, SHARDS, "networks spread over every shard");
    }
}
