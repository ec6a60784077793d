//! Counters of the DNS server: queries by type and response code, answer switches, and
//! the zone's current serial. Lock-free (one atomic per series) so that counting costs
//! nothing measurable on the query path; rendered through the Prometheus client library (lifeboat_core::metrics).

use hickory_server::proto::op::ResponseCode;
use hickory_server::proto::rr::RecordType;
use lifeboat_core::metrics::{Kind, Page};
use std::sync::atomic::{AtomicU64, Ordering};

const QTYPES: [&str; 13] = [
    "A", "AAAA", "CNAME", "TXT", "SRV", "MX", "NS", "SOA", "ANY", "AXFR", "IXFR", "OTHER", "NONE",
];
const RCODES: [&str; 8] = [
    "NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "BADVERS", "OTHER",
];

fn qtype_index(t: Option<RecordType>) -> usize {
    match t {
        Some(RecordType::A) => 0,
        Some(RecordType::AAAA) => 1,
        Some(RecordType::CNAME) => 2,
        Some(RecordType::TXT) => 3,
        Some(RecordType::SRV) => 4,
        Some(RecordType::MX) => 5,
        Some(RecordType::NS) => 6,
        Some(RecordType::SOA) => 7,
        Some(RecordType::ANY) => 8,
        Some(RecordType::AXFR) => 9,
        Some(RecordType::IXFR) => 10,
        Some(_) => 11,
        None => 12,
    }
}

fn rcode_index(r: ResponseCode) -> usize {
    match r {
        ResponseCode::NoError => 0,
        ResponseCode::FormErr => 1,
        ResponseCode::ServFail => 2,
        ResponseCode::NXDomain => 3,
        ResponseCode::NotImp => 4,
        ResponseCode::Refused => 5,
        ResponseCode::BADVERS => 6,
        _ => 7,
    }
}

/// The DNS server's metrics. Shared with the controller's `/metrics` endpoint through
/// [`crate::DnsServer::metrics`].
#[derive(Debug, Default)]
pub struct DnsMetrics {
    queries: [[AtomicU64; RCODES.len()]; QTYPES.len()],
    answer_switches: AtomicU64,
    serial: AtomicU64,
    /// UDP responses held back by rate limiting: [dropped, sent truncated].
    rate_limited: [AtomicU64; 2],
}

impl DnsMetrics {
    pub(crate) fn count(&self, qtype: Option<RecordType>, rcode: ResponseCode) {
        self.queries[qtype_index(qtype)][rcode_index(rcode)].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_rate_limited(&self, dropped: bool) {
        self.rate_limited[usize::from(!dropped)].fetch_add(1, Ordering::Relaxed);
    }

    /// UDP responses rate limiting dropped, and those it sent truncated instead (slipped).
    pub fn rate_limited(&self) -> (u64, u64) {
        (
            self.rate_limited[0].load(Ordering::Relaxed),
            self.rate_limited[1].load(Ordering::Relaxed),
        )
    }

    pub(crate) fn add_switches(&self, n: u64) {
        self.answer_switches.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn set_serial(&self, serial: u32) {
        self.serial.store(u64::from(serial), Ordering::Relaxed);
    }

    /// Queries answered with `rcode` ("NOERROR", "NXDOMAIN", …) for `qtype` ("A", "TXT", …;
    /// "OTHER" for the rest).
    pub fn queries(&self, qtype: &str, rcode: &str) -> u64 {
        let (Some(t), Some(r)) = (
            QTYPES.iter().position(|q| q.eq_ignore_ascii_case(qtype)),
            RCODES.iter().position(|c| c.eq_ignore_ascii_case(rcode)),
        ) else {
            return 0;
        };
        self.queries[t][r].load(Ordering::Relaxed)
    }

    /// Every query answered, whatever its type and response code.
    pub fn total_queries(&self) -> u64 {
        self.queries
            .iter()
            .flatten()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    /// How many times the answer of a failover or weighted name changed (a failover flip,
    /// or a weighted member leaving or rejoining).
    pub fn answer_switches(&self) -> u64 {
        self.answer_switches.load(Ordering::Relaxed)
    }

    /// The SOA serial currently served.
    pub fn serial(&self) -> u32 {
        u32::try_from(self.serial.load(Ordering::Relaxed)).unwrap_or(u32::MAX)
    }

    /// Add the DNS server's metrics to a `/metrics` page.
    pub fn render_prometheus(&self, out: &mut Page) {
        let q = "lifeboat_dns_queries_total";
        out.family(
            q,
            Kind::Counter,
            "DNS queries answered, by query type and response code.",
        );
        for (t, row) in self.queries.iter().enumerate() {
            for (r, c) in row.iter().enumerate() {
                let n = c.load(Ordering::Relaxed);
                if n > 0 {
                    out.sample(q, &[("qtype", QTYPES[t]), ("rcode", RCODES[r])], n as f64);
                }
            }
        }
        let s = "lifeboat_dns_answer_switches_total";
        out.family(
            s,
            Kind::Counter,
            "Times the answer of a failover or weighted name changed.",
        );
        out.sample(s, &[], self.answer_switches() as f64);
        let z = "lifeboat_dns_zone_serial";
        out.family(
            z,
            Kind::Gauge,
            "The SOA serial served (follows the routing table's version).",
        );
        out.sample(z, &[], f64::from(self.serial()));
        let l = "lifeboat_dns_rate_limited_total";
        out.family(
            l,
            Kind::Counter,
            "UDP responses held back by rate limiting: dropped, or sent truncated (slip).",
        );
        let (dropped, slipped) = self.rate_limited();
        out.sample(l, &[("action", "drop")], dropped as f64);
        out.sample(l, &[("action", "slip")], slipped as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_render_as_prometheus_series() {
        let m = DnsMetrics::default();
        m.count(Some(RecordType::A), ResponseCode::NoError);
        m.count(Some(RecordType::A), ResponseCode::NoError);
        m.count(Some(RecordType::TXT), ResponseCode::NXDomain);
        m.add_switches(1);
        m.set_serial(7);
        let mut page = Page::new();
        m.render_prometheus(&mut page);
        let out = page.render();
        assert!(
            out.contains("lifeboat_dns_queries_total{qtype=\"A\",rcode=\"NOERROR\"} 2.0\n"),
            "{out}"
        );
        assert!(
            out.contains("lifeboat_dns_queries_total{qtype=\"TXT\",rcode=\"NXDOMAIN\"} 1.0\n"),
            "{out}"
        );
        assert!(
            out.contains("lifeboat_dns_answer_switches_total 1.0\n"),
            "{out}"
        );
        assert!(out.contains("lifeboat_dns_zone_serial 7.0\n"), "{out}");
        assert_eq!(m.queries("a", "noerror"), 2);
        assert_eq!(m.total_queries(), 3);
    }
}
