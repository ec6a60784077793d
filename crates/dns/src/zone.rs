//! The zone: built once from the config ([`ZoneModel`]), then evaluated against each
//! routing table into an immutable [`Snapshot`] that queries read without locks.
//!
//! Guarantees:
//! - the SOA serial is the routing table's `version` (mod 2^32), so it increases on every change;
//! - a failover group answers one record: the member bound to the active region, else the
//!   primary when healthy, else the first healthy secondary, else the primary (Route 53's
//!   rule when every member is unhealthy). A member without a health binding is healthy;
//! - a weighted group answers one healthy member chosen in proportion to its weight; when
//!   no member is healthy it answers as if all were (Route 53's rule);
//! - names are matched case-insensitively; a name that exists only as the parent of other
//!   names (an empty non-terminal) answers NODATA, not NXDOMAIN;
//! - a CNAME chain is followed inside the zone (each link once, at most
//!   `MAX_CNAME_CHAIN`) and the lookup ends with the state of its last name: data,
//!   NODATA or NXDOMAIN (RFC 6604); CNAME, RRSIG and NSEC queries are not aliased;
//! - ANY answers one RRset, the lowest type number at the name (RFC 8482 §4.2);
//! - negative answers carry the SOA with TTL min(SOA TTL, MINIMUM) (RFC 2308 §3).
//!
//! No I/O here: [`Snapshot::lookup`] is a pure function of the snapshot (and, for
//! weighted groups, a random draw).

use anyhow::{Context, bail};
use hickory_server::proto::rr::rdata::{A, AAAA, CNAME, MX, NS, SOA, SRV, TXT};
use hickory_server::proto::rr::{LowerName, Name, RData, RecordSet, RecordType};
use lifeboat_config::Config;
use lifeboat_config::dns::{DnsConfig, FailoverRole, RecordKind, RecordValue, RoutingPolicy};
use lifeboat_core::{RegionId, RoutingTable};
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Arc;

/// How many CNAMEs a chain inside the zone may have before the server stops following it.
const MAX_CNAME_CHAIN: usize = 16;

/// One configured record, with its health bindings.
#[derive(Debug, Clone)]
struct Member {
    rdata: RData,
    ttl: u32,
    region: Option<RegionId>,
    check: Option<String>,
    role: Option<FailoverRole>,
    weight: u32,
    /// Index in `[[dns.records]]`, for logs.
    index: usize,
}

/// All records of one name and type.
#[derive(Debug, Clone)]
struct Group {
    name: Name,
    lower: LowerName,
    rtype: RecordType,
    policy: RoutingPolicy,
    members: Vec<Member>,
}

/// The zone as configured; independent of health.
#[derive(Debug)]
pub(crate) struct ZoneModel {
    apex: Name,
    origin: LowerName,
    mname: Name,
    rname: Name,
    soa: lifeboat_config::dns::SoaConfig,
    ns_ttl: u32,
    nameservers: Vec<Name>,
    groups: Vec<Group>,
}

/// What a name and type answers in one snapshot.
#[derive(Debug)]
enum Answer {
    Fixed(Arc<RecordSet>),
    /// (cumulative weight, record): pick with a draw in `0..total`.
    Weighted {
        members: Vec<(u64, Arc<RecordSet>)>,
        total: u64,
    },
}

/// The zone evaluated against one routing table.
#[derive(Debug)]
pub(crate) struct Snapshot {
    pub(crate) table: RoutingTable,
    pub(crate) serial: u32,
    rrsets: HashMap<(LowerName, RecordType), Answer>,
    /// Every type present at each name (for ANY and CNAME checks).
    types_at: HashMap<LowerName, Vec<RecordType>>,
    /// Names that exist: owners of records and their ancestors up to the apex.
    names: HashSet<LowerName>,
    /// Per group: the chosen member(s), to count answer switches between snapshots.
    choices: Vec<Vec<usize>>,
    /// The SOA of negative answers: TTL min(SOA TTL, MINIMUM) (RFC 2308 §3).
    negative_soa: Arc<RecordSet>,
}

/// The result of a lookup. A CNAME chain (RFC 1034 §4.3.2 step 3.a) comes first in the
/// answer section; the answer's RCODE is that of the chain's last name (RFC 6604 §2).
#[derive(Debug)]
pub(crate) enum Lookup {
    /// Records for the answer section (the chain, then the asked type at its end, or the
    /// chain alone when it leaves the zone) and the additional section.
    Answer {
        answers: Vec<Arc<RecordSet>>,
        additionals: Vec<Arc<RecordSet>>,
    },
    /// The last name exists without the asked type (also an empty non-terminal):
    /// NOERROR, the chain (maybe empty), the negative SOA in the authority section.
    NoData { chain: Vec<Arc<RecordSet>> },
    /// The last name does not exist in the zone: NXDOMAIN, the chain (maybe empty), the
    /// negative SOA.
    NxDomain { chain: Vec<Arc<RecordSet>> },
    /// The name is outside the zone.
    Refused,
}

fn name(text: &str) -> anyhow::Result<Name> {
    Name::from_str(text).with_context(|| format!("invalid DNS name {text:?}"))
}

impl ZoneModel {
    pub(crate) fn from_config(cfg: &Config) -> anyhow::Result<Self> {
        let Some(dns) = cfg.dns.as_ref() else {
            bail!("the config has no [dns] section");
        };
        Self::new(cfg, dns)
    }

    fn new(cfg: &Config, dns: &DnsConfig) -> anyhow::Result<Self> {
        let apex = name(&dns.apex())?;
        let mut groups: Vec<Group> = Vec::new();
        let mut index: HashMap<(LowerName, RecordType), usize> = HashMap::new();
        for (i, r) in dns.records.iter().enumerate() {
            let owner = name(&dns.absolute(&r.name))?;
            let value = dns
                .record_value(cfg, r)
                .map_err(|e| anyhow::anyhow!("dns.records[{i}].value: {e}"))?;
            let rdata = rdata(value)?;
            let rtype = match r.kind {
                RecordKind::A => RecordType::A,
                RecordKind::AAAA => RecordType::AAAA,
                RecordKind::CNAME => RecordType::CNAME,
                RecordKind::TXT => RecordType::TXT,
                RecordKind::SRV => RecordType::SRV,
                RecordKind::MX => RecordType::MX,
            };
            let member = Member {
                rdata,
                ttl: dns.record_ttl(r),
                region: r.region.as_deref().map(RegionId::new),
                check: r.check.clone(),
                role: r.failover,
                weight: r.weight.unwrap_or(0),
                index: i,
            };
            let lower = LowerName::new(&owner);
            match index.get(&(lower.clone(), rtype)) {
                Some(&g) => groups[g].members.push(member),
                None => {
                    index.insert((lower.clone(), rtype), groups.len());
                    groups.push(Group {
                        name: owner,
                        lower,
                        rtype,
                        policy: r.policy,
                        members: vec![member],
                    });
                }
            }
        }
        let mut nameservers = Vec::new();
        for ns in &dns.nameservers {
            let ns_name = name(&dns.absolute(&ns.name))?;
            if let Some(addr) = ns.address {
                let (rtype, rdata) = match addr {
                    IpAddr::V4(ip) => (RecordType::A, RData::A(A(ip))),
                    IpAddr::V6(ip) => (RecordType::AAAA, RData::AAAA(AAAA(ip))),
                };
                if dns.in_zone(&ns_name.to_ascii()) {
                    groups.push(Group {
                        lower: LowerName::new(&ns_name),
                        name: ns_name.clone(),
                        rtype,
                        policy: RoutingPolicy::Simple,
                        members: vec![Member {
                            rdata,
                            ttl: dns.soa.ttl,
                            region: None,
                            check: None,
                            role: None,
                            weight: 0,
                            index: usize::MAX,
                        }],
                    });
                }
            }
            nameservers.push(ns_name);
        }
        Ok(Self {
            origin: LowerName::new(&apex),
            mname: name(&dns.mname())?,
            rname: name(&dns.rname())?,
            apex,
            soa: dns.soa.clone(),
            ns_ttl: dns.soa.ttl,
            nameservers,
            groups,
        })
    }

    pub(crate) fn origin(&self) -> &LowerName {
        &self.origin
    }

    /// Evaluate the zone against `table`. `previous` (the snapshot being replaced) lets the
    /// caller count how many groups changed their answer.
    pub(crate) fn snapshot(&self, table: RoutingTable) -> Snapshot {
        let serial = table.version as u32;
        let mut rrsets = HashMap::new();
        let mut types_at: HashMap<LowerName, Vec<RecordType>> = HashMap::new();
        let mut names = HashSet::new();
        let mut choices = Vec::with_capacity(self.groups.len());

        let mut soa = RecordSet::with_ttl(self.apex.clone(), RecordType::SOA, self.soa.ttl);
        soa.add_rdata(RData::SOA(SOA::new(
            self.mname.clone(),
            self.rname.clone(),
            serial,
            self.soa.refresh as i32,
            self.soa.retry as i32,
            self.soa.expire as i32,
            self.soa.negative_ttl,
        )));
        let mut ns = RecordSet::with_ttl(self.apex.clone(), RecordType::NS, self.ns_ttl);
        for n in &self.nameservers {
            ns.add_rdata(RData::NS(NS(n.clone())));
        }
        let mut negative_soa = soa.clone();
        negative_soa.set_ttl(self.soa.ttl.min(self.soa.negative_ttl));
        for (rtype, set) in [(RecordType::SOA, soa), (RecordType::NS, ns)] {
            rrsets.insert((self.origin.clone(), rtype), Answer::Fixed(Arc::new(set)));
            types_at.entry(self.origin.clone()).or_default().push(rtype);
        }
        names.insert(self.origin.clone());

        for group in &self.groups {
            let chosen = choose(group, &table);
            let answer = match group.policy {
                RoutingPolicy::Weighted => {
                    let mut total = 0u64;
                    let mut members = Vec::new();
                    for &(i, w) in &chosen {
                        total += w;
                        members.push((total, Arc::new(single(group, &group.members[i]))));
                    }
                    Answer::Weighted { members, total }
                }
                _ => {
                    let ttl = chosen
                        .iter()
                        .map(|&(i, _)| group.members[i].ttl)
                        .min()
                        .unwrap_or(0);
                    let mut set = RecordSet::with_ttl(group.name.clone(), group.rtype, ttl);
                    for &(i, _) in &chosen {
                        set.add_rdata(group.members[i].rdata.clone());
                    }
                    Answer::Fixed(Arc::new(set))
                }
            };
            choices.push(chosen.iter().map(|&(i, _)| i).collect());
            rrsets.insert((group.lower.clone(), group.rtype), answer);
            let types = types_at.entry(group.lower.clone()).or_default();
            if !types.contains(&group.rtype) {
                types.push(group.rtype);
            }
            // The owner and every ancestor up to the apex exist (RFC 8020: empty
            // non-terminals answer NODATA).
            let mut n = group.lower.clone();
            while self.origin.zone_of(&n) && names.insert(n.clone()) && n != self.origin {
                n = n.base_name();
            }
        }
        Snapshot {
            table,
            serial,
            rrsets,
            types_at,
            names,
            choices,
            negative_soa: Arc::new(negative_soa),
        }
    }

    /// Log and count the groups whose answer differs between two snapshots.
    pub(crate) fn switches(&self, old: &Snapshot, new: &Snapshot) -> u64 {
        let mut n = 0;
        for (g, (a, b)) in self.groups.iter().zip(old.choices.iter().zip(&new.choices)) {
            if a != b {
                n += 1;
                let describe = |c: &Vec<usize>| {
                    c.iter()
                        .map(|&i| {
                            let m = &g.members[i];
                            match &m.region {
                                Some(r) => format!("dns.records[{}] (region {r})", m.index),
                                None => format!("dns.records[{}]", m.index),
                            }
                        })
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                tracing::info!(
                    name = %g.name,
                    rtype = %g.rtype,
                    from = %describe(a),
                    to = %describe(b),
                    version = new.table.version,
                    "DNS answer switched"
                );
            }
        }
        n
    }
}

fn rdata(value: RecordValue) -> anyhow::Result<RData> {
    Ok(match value {
        RecordValue::A(ip) => RData::A(A(ip)),
        RecordValue::AAAA(ip) => RData::AAAA(AAAA(ip)),
        RecordValue::CNAME(target) => RData::CNAME(CNAME(name(&target)?)),
        RecordValue::TXT(text) => RData::TXT(TXT::new(split_txt(&text))),
        RecordValue::SRV {
            priority,
            weight,
            port,
            target,
        } => RData::SRV(SRV::new(priority, weight, port, name(&target)?)),
        RecordValue::MX {
            preference,
            exchange,
        } => RData::MX(MX::new(preference, name(&exchange)?)),
    })
}

/// A TXT record holds character-strings of at most 255 bytes: split long text, on
/// character boundaries.
fn split_txt(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for c in text.chars() {
        if cur.len() + c.len_utf8() > 255 {
            out.push(std::mem::take(&mut cur));
        }
        cur.push(c);
    }
    if !cur.is_empty() || out.is_empty() {
        out.push(cur);
    }
    out
}

fn single(group: &Group, m: &Member) -> RecordSet {
    let mut set = RecordSet::with_ttl(group.name.clone(), group.rtype, m.ttl);
    set.add_rdata(m.rdata.clone());
    set
}

/// A member's health: its check (if any) and its region (if any) must not be unhealthy.
/// Unknown counts as healthy (Route 53: a record without a health check is healthy).
fn healthy(m: &Member, table: &RoutingTable) -> bool {
    m.check
        .as_deref()
        .is_none_or(|c| table.check_health(c).is_usable())
        && m.region
            .as_ref()
            .is_none_or(|r| table.region_health(r).is_usable())
}

/// The members a group answers, with their weights.
fn choose(group: &Group, table: &RoutingTable) -> Vec<(usize, u64)> {
    match group.policy {
        RoutingPolicy::Simple => (0..group.members.len()).map(|i| (i, 1)).collect(),
        RoutingPolicy::Failover => vec![(choose_failover(&group.members, table), 1)],
        RoutingPolicy::Weighted => {
            let members = &group.members;
            let healthy_weighted: Vec<(usize, u64)> = (0..members.len())
                .filter(|&i| healthy(&members[i], table) && members[i].weight > 0)
                .map(|i| (i, u64::from(members[i].weight)))
                .collect();
            if !healthy_weighted.is_empty() {
                return healthy_weighted;
            }
            // Only weight-0 members are healthy: they share the traffic equally.
            let healthy_any: Vec<(usize, u64)> = (0..members.len())
                .filter(|&i| healthy(&members[i], table))
                .map(|i| (i, 1))
                .collect();
            if !healthy_any.is_empty() {
                return healthy_any;
            }
            // Nobody is healthy: answer as if everyone were.
            let all: Vec<(usize, u64)> = (0..members.len())
                .map(|i| (i, u64::from(members[i].weight)))
                .filter(|&(_, w)| w > 0)
                .collect();
            if all.is_empty() {
                (0..members.len()).map(|i| (i, 1)).collect()
            } else {
                all
            }
        }
    }
}

/// The one member a failover group answers.
fn choose_failover(members: &[Member], table: &RoutingTable) -> usize {
    // The order of preference: the active region's member, the primary, the secondaries.
    let active = table
        .active
        .as_ref()
        .and_then(|a| members.iter().position(|m| m.region.as_ref() == Some(a)));
    let primary = members
        .iter()
        .position(|m| m.role == Some(FailoverRole::Primary));
    let mut order: Vec<usize> = Vec::with_capacity(members.len());
    for i in active.into_iter().chain(primary).chain(0..members.len()) {
        if !order.contains(&i) {
            order.push(i);
        }
    }
    let usable = |i: usize| {
        let m = &members[i];
        // The controller chose the active region knowing its health: the active member
        // answers unless its own health check fails.
        if Some(i) == active {
            m.check
                .as_deref()
                .is_none_or(|c| table.check_health(c).is_usable())
        } else {
            healthy(m, table)
        }
    };
    order
        .iter()
        .copied()
        .find(|&i| usable(i))
        .unwrap_or(order[0])
}

impl Snapshot {
    /// The RRset answered for `key`; sets `drawn` when a weighted group drew among
    /// several members (the answer then varies from query to query).
    fn pick(&self, key: &(LowerName, RecordType), drawn: &mut bool) -> Option<Arc<RecordSet>> {
        match self.rrsets.get(key)? {
            Answer::Fixed(set) => Some(set.clone()),
            Answer::Weighted { members, total } => {
                if *total == 0 || members.len() == 1 {
                    return members.first().map(|(_, s)| s.clone());
                }
                *drawn = true;
                let draw = fastrand::u64(0..*total);
                members
                    .iter()
                    .find(|(cum, _)| draw < *cum)
                    .map(|(_, s)| s.clone())
            }
        }
    }

    /// The SOA for the authority section of NXDOMAIN and NODATA answers.
    pub(crate) fn negative_soa(&self) -> Arc<RecordSet> {
        self.negative_soa.clone()
    }

    /// Answer `qtype` at `qname`.
    ///
    /// ANY (RFC 8482 §4.2) answers one RRset of the name: the one of the lowest type
    /// number, as Knot DNS does, over UDP and TCP alike.
    ///
    /// `drawn` is set when the answer came from a weighted draw: then it is not the same
    /// for every query of this snapshot (and its encoding is not cached).
    pub(crate) fn lookup(
        &self,
        origin: &LowerName,
        qname: &LowerName,
        qtype: RecordType,
        drawn: &mut bool,
    ) -> Lookup {
        if !origin.zone_of(qname) {
            return Lookup::Refused;
        }
        let mut answers = Vec::new();
        if qtype == RecordType::ANY {
            let first = self
                .types_at
                .get(qname)
                .and_then(|types| types.iter().min_by_key(|t| u16::from(**t)));
            return match first.and_then(|t| self.pick(&(qname.clone(), *t), drawn)) {
                Some(set) => self.positive(origin, vec![set], drawn),
                None => self.negative(qname, answers),
            };
        }
        let mut name = qname.clone();
        for _ in 0..=MAX_CNAME_CHAIN {
            if let Some(set) = self.pick(&(name.clone(), qtype), drawn) {
                answers.push(set);
                return self.positive(origin, answers, drawn);
            }
            // RRSIG and NSEC live beside a CNAME (RFC 4035 §2.5, RFC 2181 §10.1): asked
            // for, they are not aliased, as CNAME itself is not.
            if matches!(
                qtype,
                RecordType::CNAME | RecordType::RRSIG | RecordType::NSEC
            ) {
                break;
            }
            let Some(cname) = self.pick(&(name.clone(), RecordType::CNAME), drawn) else {
                break;
            };
            let target = cname.records_without_rrsigs().find_map(|r| match &r.data {
                RData::CNAME(c) => Some(LowerName::new(&c.0)),
                _ => None,
            });
            answers.push(cname);
            match target {
                // A loop: each link once, then stop (a positive answer, as at the limit).
                Some(t) if answers.iter().any(|set| LowerName::new(set.name()) == t) => {
                    return self.positive(origin, answers, drawn);
                }
                Some(t) if origin.zone_of(&t) => name = t,
                // The chain leaves the zone: the resolver follows it elsewhere.
                _ => return self.positive(origin, answers, drawn),
            }
        }
        if answers.len() > MAX_CNAME_CHAIN {
            // A chain too long (or a loop): what was followed, as a positive answer.
            return self.positive(origin, answers, drawn);
        }
        // `name` is the chain's last name (the query name when there is no chain).
        self.negative(&name, answers)
    }

    fn positive(
        &self,
        origin: &LowerName,
        answers: Vec<Arc<RecordSet>>,
        drawn: &mut bool,
    ) -> Lookup {
        let additionals = self.additionals(origin, &answers, drawn);
        Lookup::Answer {
            answers,
            additionals,
        }
    }

    /// A negative answer with the RCODE of `last`, the chain's last name (RFC 6604).
    fn negative(&self, last: &LowerName, chain: Vec<Arc<RecordSet>>) -> Lookup {
        if self.names.contains(last) {
            Lookup::NoData { chain }
        } else {
            Lookup::NxDomain { chain }
        }
    }

    /// Addresses of the in-zone targets of NS, MX and SRV answers.
    fn additionals(
        &self,
        origin: &LowerName,
        answers: &[Arc<RecordSet>],
        drawn: &mut bool,
    ) -> Vec<Arc<RecordSet>> {
        let mut out = Vec::new();
        for set in answers {
            for r in set.records_without_rrsigs() {
                let target = match &r.data {
                    RData::NS(n) => &n.0,
                    RData::MX(mx) => &mx.exchange,
                    RData::SRV(srv) => &srv.target,
                    _ => continue,
                };
                let target = LowerName::new(target);
                if !origin.zone_of(&target) {
                    continue;
                }
                for t in [RecordType::A, RecordType::AAAA] {
                    out.extend(self.pick(&(target.clone(), t), drawn));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lifeboat_core::HealthStatus::{Healthy, Unhealthy};

    fn member(region: Option<&str>, check: Option<&str>, role: Option<FailoverRole>) -> Member {
        Member {
            rdata: RData::A(A::new(192, 0, 2, 1)),
            ttl: 5,
            region: region.map(RegionId::new),
            check: check.map(str::to_owned),
            role,
            weight: 1,
            index: 0,
        }
    }

    #[test]
    fn failover_follows_the_active_region_and_falls_back_to_the_primary() {
        let members = vec![
            member(Some("a"), Some("web-a"), Some(FailoverRole::Primary)),
            member(Some("b"), Some("web-b"), Some(FailoverRole::Secondary)),
        ];
        let mut t = RoutingTable {
            active: Some(RegionId::new("a")),
            ..Default::default()
        };
        assert_eq!(choose_failover(&members, &t), 0);
        t.active = Some(RegionId::new("b"));
        assert_eq!(
            choose_failover(&members, &t),
            1,
            "the active region's record answers"
        );
        t.checks.insert("web-b".into(), Unhealthy);
        assert_eq!(
            choose_failover(&members, &t),
            0,
            "the active member's own check still counts"
        );
        t.checks.insert("web-a".into(), Unhealthy);
        assert_eq!(
            choose_failover(&members, &t),
            1,
            "all unhealthy: the (active) primary"
        );
        t.active = None;
        assert_eq!(
            choose_failover(&members, &t),
            0,
            "all unhealthy, no active region: the primary"
        );
        t.checks.insert("web-b".into(), Healthy);
        assert_eq!(choose_failover(&members, &t), 1);
    }

    fn model(soa: &str) -> ZoneModel {
        let text = format!(
            r#"
[controller]
api_addr = "127.0.0.1:7700"
state_dir = "/tmp/lifeboat-dns-unit"

[auth]
token_env = "LIFEBOAT_TOKEN"

[regions.a]
agent_addr = "127.0.1.1:7701"
address = "127.0.1.1"
role = "active"

[regions.b]
agent_addr = "127.0.2.1:7701"
address = "127.0.2.1"
role = "standby"

[dns]
zone = "z.example."

[dns.soa]
{soa}

[[dns.nameservers]]
name = "ns1"
address = "127.0.0.1"
"#
        );
        let cfg = Config::parse(std::path::Path::new("unit.toml"), &text).expect("valid config");
        ZoneModel::from_config(&cfg).expect("zone")
    }

    #[test]
    fn the_negative_soa_ttl_is_the_lesser_of_the_soa_ttl_and_minimum() {
        for (ttl, minimum, want) in [(60, 10, 10), (5, 10, 5), (7, 7, 7)] {
            let m = model(&format!("ttl = {ttl}\nnegative_ttl = {minimum}"));
            let snap = m.snapshot(RoutingTable::default());
            assert_eq!(
                snap.negative_soa().ttl(),
                want,
                "ttl {ttl}, minimum {minimum}"
            );
            let asked = snap
                .pick(&(m.origin().clone(), RecordType::SOA), &mut false)
                .expect("SOA");
            assert_eq!(asked.ttl(), ttl, "the SOA asked for keeps its own TTL");
        }
    }

    #[test]
    fn txt_is_split_into_255_byte_strings() {
        let parts = split_txt(&"x".repeat(600));
        assert_eq!(
            parts.iter().map(String::len).collect::<Vec<_>>(),
            vec![255, 255, 90]
        );
        assert_eq!(split_txt(""), vec![String::new()]);
    }
}
