//! `[dns]`: the authoritative zone the controller (and, as secondaries, the agents) serve.
//!
//! The section names the zone, its SOA and NS records, and the zone's records with their
//! routing policy (simple, failover, weighted) and health bindings (a `check` name and/or a
//! `region`). Validation guarantees that everything the DNS server needs is well formed:
//! names are valid and inside the zone, values parse for their type, regions and checks
//! exist, failover groups have exactly one primary, a CNAME owns its name alone, and every
//! problem is reported at its key (`dns.records[3].value`).
//!
//! ```toml
//! [dns]
//! zone = "shop.example."
//! ttl = "30s"                       # default TTL of the records (integer seconds work too)
//!
//! [[dns.nameservers]]
//! name = "ns1"                      # relative to the zone, or absolute with a final dot
//! address = "127.0.0.1"             # glue, required when the name is inside the zone
//!
//! [[dns.records]]
//! name = "db"
//! type = "A"
//! policy = "failover"
//! failover = "primary"
//! region = "a"                      # value defaults to regions.a.address
//! ```

use serde::{Deserialize, Deserializer, Serialize, de};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

/// The zone the DNS server is authoritative for.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DnsConfig {
    /// The zone's apex, e.g. "shop.example." (the final dot is optional).
    pub zone: String,
    /// Default TTL of records that set none.
    #[serde(default = "default_ttl", deserialize_with = "de_ttl")]
    pub ttl: u32,
    #[serde(default)]
    pub soa: SoaConfig,
    /// The zone's NS records: the controller and every agent that serves the zone.
    #[serde(default)]
    pub nameservers: Vec<NameserverConfig>,
    #[serde(default)]
    pub records: Vec<RecordConfig>,
}

/// The SOA record's fields. The serial is not configured: it follows the routing table's
/// version, so it increases on every change.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SoaConfig {
    /// MNAME, the primary nameserver. Default: the first of `nameservers`.
    #[serde(default)]
    pub mname: Option<String>,
    /// RNAME, the zone administrator's mailbox in DNS form. Default "hostmaster".
    #[serde(default = "default_rname")]
    pub rname: String,
    #[serde(default = "default_soa_ttl", deserialize_with = "de_ttl")]
    pub ttl: u32,
    #[serde(default = "default_refresh", deserialize_with = "de_ttl")]
    pub refresh: u32,
    #[serde(default = "default_retry", deserialize_with = "de_ttl")]
    pub retry: u32,
    #[serde(default = "default_expire", deserialize_with = "de_ttl")]
    pub expire: u32,
    /// How long resolvers cache NXDOMAIN / NODATA (RFC 2308: the SOA MINIMUM field).
    #[serde(default = "default_negative_ttl", deserialize_with = "de_ttl")]
    pub negative_ttl: u32,
}

impl Default for SoaConfig {
    fn default() -> Self {
        Self {
            mname: None,
            rname: default_rname(),
            ttl: default_soa_ttl(),
            refresh: default_refresh(),
            retry: default_retry(),
            expire: default_expire(),
            negative_ttl: default_negative_ttl(),
        }
    }
}

fn default_ttl() -> u32 {
    30
}
fn default_rname() -> String {
    "hostmaster".to_owned()
}
fn default_soa_ttl() -> u32 {
    60
}
fn default_refresh() -> u32 {
    60
}
fn default_retry() -> u32 {
    10
}
fn default_expire() -> u32 {
    7 * 24 * 3600
}
fn default_negative_ttl() -> u32 {
    5
}

/// One NS record of the zone apex (and its glue address when the name is in the zone).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NameserverConfig {
    pub name: String,
    /// Glue: the nameserver's address, required when `name` is inside the zone.
    #[serde(default)]
    pub address: Option<IpAddr>,
    /// Which process answers at this name: absent for the controller (it binds
    /// `controller.dns_addr`), or a region whose agent serves the zone as a secondary.
    #[serde(default)]
    pub region: Option<String>,
    /// Where that agent binds its DNS sockets (UDP and TCP). Default: `address` port 53.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// Several controllers (`[controller] store = "etcd"`): the member of
    /// `[[controller.members]]` that answers at this name (it binds its own `dns_addr`).
    /// Every member with a `dns_addr` is named by one entry, so the zone's NS records
    /// list every controller.
    #[serde(default)]
    pub member: Option<String>,
}

/// The record types a zone may hold. SOA and NS come from `[dns.soa]` and `[[dns.nameservers]]`.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RecordKind {
    #[serde(alias = "a")]
    A,
    #[serde(alias = "aaaa")]
    AAAA,
    #[serde(alias = "cname")]
    CNAME,
    #[serde(alias = "txt")]
    TXT,
    #[serde(alias = "srv")]
    SRV,
    #[serde(alias = "mx")]
    MX,
}

impl RecordKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RecordKind::A => "A",
            RecordKind::AAAA => "AAAA",
            RecordKind::CNAME => "CNAME",
            RecordKind::TXT => "TXT",
            RecordKind::SRV => "SRV",
            RecordKind::MX => "MX",
        }
    }
}

/// How the answer for a name and type is chosen among its records.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum RoutingPolicy {
    /// Every record of the name and type is answered, always.
    #[default]
    Simple,
    /// One record: the active region's, else the primary if healthy, else a healthy
    /// secondary, else the primary (Route 53's rule when all are unhealthy).
    Failover,
    /// One record, chosen at random in proportion to `weight` among healthy members.
    Weighted,
}

impl RoutingPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            RoutingPolicy::Simple => "simple",
            RoutingPolicy::Failover => "failover",
            RoutingPolicy::Weighted => "weighted",
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FailoverRole {
    Primary,
    Secondary,
}

/// One record of the zone.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RecordConfig {
    /// Relative to the zone ("www", "_sip._tcp", "@" for the apex) or absolute ("www.shop.example.").
    pub name: String,
    #[serde(rename = "type")]
    pub kind: RecordKind,
    /// Default: `[dns] ttl`.
    #[serde(default, deserialize_with = "de_ttl_opt")]
    pub ttl: Option<u32>,
    /// A: "192.0.2.1"; AAAA: "2001:db8::1"; CNAME: a name; TXT: any text (split into
    /// 255-byte strings); SRV: "priority weight port target"; MX: "preference exchange".
    /// A and AAAA records bound to a region default to `regions.<region>.address`.
    #[serde(default)]
    pub value: Option<String>,
    #[serde(default)]
    pub policy: RoutingPolicy,
    /// failover records: "primary" or "secondary".
    #[serde(default)]
    pub failover: Option<FailoverRole>,
    /// weighted records: 0..=255.
    #[serde(default)]
    pub weight: Option<u32>,
    /// Health binding: the record is unhealthy while this region is; a failover record bound
    /// to the active region is the one answered.
    #[serde(default)]
    pub region: Option<String>,
    /// Health binding: the record is unhealthy while this check (`[checks.NAME]`) is.
    #[serde(default)]
    pub check: Option<String>,
}

/// A record's data, parsed. Names are absolute, with a final dot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordValue {
    A(Ipv4Addr),
    AAAA(Ipv6Addr),
    CNAME(String),
    TXT(String),
    SRV {
        priority: u16,
        weight: u16,
        port: u16,
        target: String,
    },
    MX {
        preference: u16,
        exchange: String,
    },
}

/// The longest TXT value accepted: large enough to need TCP, small enough for one message.
pub const MAX_TXT_LEN: usize = 16 * 1024;

impl DnsConfig {
    /// The zone's apex, absolute and lower-case ("shop.example.").
    pub fn apex(&self) -> String {
        let z = self.zone.trim().to_ascii_lowercase();
        if z.ends_with('.') { z } else { format!("{z}.") }
    }

    /// A name as written in the config, made absolute: "@" is the apex, "www" is
    /// "www.<zone>", and "x.example." stays as it is.
    pub fn absolute(&self, name: &str) -> String {
        let name = name.trim();
        if name == "@" || name.is_empty() {
            self.apex()
        } else if name.ends_with('.') {
            name.to_owned()
        } else {
            format!("{name}.{}", self.apex())
        }
    }

    /// True when `name` (absolute) is the apex or below it.
    pub fn in_zone(&self, name: &str) -> bool {
        let name = name.to_ascii_lowercase();
        let apex = self.apex();
        name == apex || name.ends_with(&format!(".{apex}"))
    }

    /// Where the agent of `region` serves the zone as a secondary nameserver, if it does:
    /// the `listen` address of its `[[dns.nameservers]]` entry, else that entry's `address`
    /// on port 53.
    pub fn agent_listen(&self, region: &str) -> Option<SocketAddr> {
        let ns = self
            .nameservers
            .iter()
            .find(|ns| ns.region.as_deref() == Some(region))?;
        ns.listen
            .or_else(|| ns.address.map(|ip| SocketAddr::new(ip, 53)))
    }

    /// The SOA MNAME, absolute.
    pub fn mname(&self) -> String {
        match (&self.soa.mname, self.nameservers.first()) {
            (Some(m), _) => self.absolute(m),
            (None, Some(ns)) => self.absolute(&ns.name),
            (None, None) => self.absolute("ns"),
        }
    }

    /// The SOA RNAME, absolute.
    pub fn rname(&self) -> String {
        self.absolute(&self.soa.rname)
    }

    /// A record's TTL (its own, else the zone default).
    pub fn record_ttl(&self, record: &RecordConfig) -> u32 {
        record.ttl.unwrap_or(self.ttl)
    }

    /// A record's data, parsed for its type; a region-bound A/AAAA without a value takes
    /// the region's `address`. The error says what is wrong, for `dns.records[i].value`.
    pub fn record_value(
        &self,
        cfg: &crate::Config,
        record: &RecordConfig,
    ) -> Result<RecordValue, String> {
        let Some(text) = record.value.as_deref() else {
            let region_addr = record
                .region
                .as_ref()
                .and_then(|r| cfg.regions.get(r))
                .and_then(|r| r.address);
            return match (record.kind, region_addr) {
                (RecordKind::A, Some(IpAddr::V4(ip))) => Ok(RecordValue::A(ip)),
                (RecordKind::AAAA, Some(IpAddr::V6(ip))) => Ok(RecordValue::AAAA(ip)),
                (RecordKind::A | RecordKind::AAAA, Some(ip)) => Err(format!(
                    "no `value`, and the address {ip} of region {:?} does not fit an {} record",
                    record.region.as_deref().unwrap_or_default(),
                    record.kind.as_str()
                )),
                (RecordKind::A | RecordKind::AAAA, None) if record.region.is_some() => {
                    Err(format!(
                        "set `value`, or `address` in [regions.{}]",
                        record.region.as_deref().unwrap_or_default()
                    ))
                }
                _ => Err(format!("a {} record needs `value`", record.kind.as_str())),
            };
        };
        let text = text.trim();
        let name = |s: &str| -> Result<String, String> {
            check_name(s)?;
            Ok(self.absolute(s))
        };
        match record.kind {
            RecordKind::A => text
                .parse()
                .map(RecordValue::A)
                .map_err(|_| format!("{text:?} is not an IPv4 address")),
            RecordKind::AAAA => text
                .parse()
                .map(RecordValue::AAAA)
                .map_err(|_| format!("{text:?} is not an IPv6 address")),
            RecordKind::CNAME => name(text).map(RecordValue::CNAME),
            RecordKind::TXT => {
                let raw = record.value.as_deref().unwrap_or_default();
                if raw.len() > MAX_TXT_LEN {
                    Err(format!(
                        "a TXT value is at most {MAX_TXT_LEN} bytes (this one has {})",
                        raw.len()
                    ))
                } else {
                    Ok(RecordValue::TXT(raw.to_owned()))
                }
            }
            RecordKind::SRV => {
                let parts: Vec<&str> = text.split_whitespace().collect();
                let [p, w, port, target] = parts[..] else {
                    return Err(format!(
                        "{text:?} is not \"priority weight port target\" (e.g. \"10 5 5432 db\")"
                    ));
                };
                let num = |s: &str, what: &str| {
                    s.parse::<u16>()
                        .map_err(|_| format!("SRV {what} {s:?} is not a number from 0 to 65535"))
                };
                Ok(RecordValue::SRV {
                    priority: num(p, "priority")?,
                    weight: num(w, "weight")?,
                    port: num(port, "port")?,
                    target: name(target)?,
                })
            }
            RecordKind::MX => {
                let parts: Vec<&str> = text.split_whitespace().collect();
                let [pref, exchange] = parts[..] else {
                    return Err(format!(
                        "{text:?} is not \"preference exchange\" (e.g. \"10 mail\")"
                    ));
                };
                Ok(RecordValue::MX {
                    preference: pref.parse().map_err(|_| {
                        format!("MX preference {pref:?} is not a number from 0 to 65535")
                    })?,
                    exchange: name(exchange)?,
                })
            }
        }
    }

    pub(crate) fn validate(&self, cfg: &crate::Config, v: &mut crate::Validator<'_>) {
        if let Err(e) = check_name(&self.zone) {
            v.error("dns.zone", e);
            return;
        }
        if self.zone.trim() == "." {
            v.error("dns.zone", "the zone cannot be the root");
            return;
        }
        self.validate_ttl("dns.ttl", self.ttl, v);

        if self.nameservers.is_empty() {
            v.error("dns", "list the zone's nameservers in [[dns.nameservers]] (the controller and the agents that serve the zone)");
        }
        let mut seen_ns = BTreeSet::new();
        let mut seen_member = BTreeSet::new();
        for (i, ns) in self.nameservers.iter().enumerate() {
            let at = format!("dns.nameservers[{i}]");
            if let Err(e) = check_name(&ns.name) {
                v.error(&format!("{at}.name"), e);
                continue;
            }
            let abs = self.absolute(&ns.name).to_ascii_lowercase();
            if let Some(region) = &ns.region {
                if !cfg.regions.contains_key(region) {
                    v.error(&format!("{at}.region"), cfg.undefined_region(region));
                } else if ns.listen.is_none() && ns.address.is_none() {
                    v.error(&at, format!("set `listen` (or `address`): where the agent of region {region:?} serves DNS"));
                }
            } else if ns.listen.is_some() {
                v.error(&format!("{at}.listen"), "`listen` is for an agent's nameserver (set `region`); the controller listens on controller.dns_addr");
            }
            let several = cfg.controller.store == crate::etcd::StoreKind::Etcd;
            match (&ns.member, &ns.region) {
                (Some(_), Some(_)) => v.error(
                    &format!("{at}.member"),
                    "a nameserver is one controller (`member`) or one region's agent (`region`), not both",
                ),
                (Some(m), None) if !several => v.error(
                    &format!("{at}.member"),
                    format!("`member = {m:?}` is for several controllers ([controller] store = \"etcd\"); the one controller answers at an entry without `region`"),
                ),
                (Some(m), None) => {
                    if !cfg.controller.members.iter().any(|c| &c.name == m) {
                        v.error(
                            &format!("{at}.member"),
                            format!(
                                "no controller named {m:?} in [[controller.members]] (members: {})",
                                cfg.controller
                                    .members
                                    .iter()
                                    .map(|c| c.name.as_str())
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ),
                        );
                    } else if !seen_member.insert(m.clone()) {
                        v.error(
                            &format!("{at}.member"),
                            format!("controller {m:?} is named by two nameservers"),
                        );
                    }
                }
                (None, None) if several => v.error(
                    &at,
                    "with several controllers, say which one answers at this name (`member = \"c1\"`, a name from [[controller.members]])",
                ),
                _ => {}
            }
            if !seen_ns.insert(abs.clone()) {
                v.error(
                    &format!("{at}.name"),
                    format!("nameserver {abs} is listed twice"),
                );
            }
            if self.in_zone(&abs) && ns.address.is_none() {
                v.error(
                    &at,
                    format!("{abs} is inside the zone: set `address` (its glue record)"),
                );
            }
        }
        // Resolvers ask only the nameservers the NS records list: a controller that
        // serves the zone but is not listed would never be asked.
        if cfg.controller.store == crate::etcd::StoreKind::Etcd {
            for m in &cfg.controller.members {
                if let Some(addr) = m.dns_addr
                    && !seen_member.contains(&m.name)
                {
                    v.error(
                        "dns.nameservers",
                        format!(
                            "controller {:?} serves the zone (dns_addr {addr}) but no [[dns.nameservers]] entry has `member = {:?}`: the zone's NS records must list every controller",
                            m.name, m.name
                        ),
                    );
                }
            }
        }
        if let Some(m) = &self.soa.mname
            && let Err(e) = check_name(m)
        {
            v.error("dns.soa.mname", e);
        }
        if let Err(e) = check_name(&self.soa.rname) {
            v.error("dns.soa.rname", e);
        }

        // (name, type) -> indexes of its records; name -> types.
        let mut groups: BTreeMap<(String, RecordKind), Vec<usize>> = BTreeMap::new();
        let mut ns_glue: BTreeSet<String> = BTreeSet::new();
        for ns in &self.nameservers {
            ns_glue.insert(self.absolute(&ns.name).to_ascii_lowercase());
        }
        for (i, r) in self.records.iter().enumerate() {
            let at = format!("dns.records[{i}]");
            if let Err(e) = check_name(&r.name) {
                v.error(&format!("{at}.name"), e);
                continue;
            }
            let abs = self.absolute(&r.name).to_ascii_lowercase();
            if !self.in_zone(&abs) {
                v.error(
                    &format!("{at}.name"),
                    format!("{abs} is outside the zone {}", self.apex()),
                );
                continue;
            }
            if let Some(ttl) = r.ttl {
                self.validate_ttl(&format!("{at}.ttl"), ttl, v);
            }
            if let Some(region) = &r.region
                && !cfg.regions.contains_key(region)
            {
                v.error(&format!("{at}.region"), cfg.undefined_region(region));
            }
            if let Some(check) = &r.check
                && !cfg.checks.contains_key(check)
            {
                let known: Vec<_> = cfg.checks.keys().cloned().collect();
                v.error(
                    &format!("{at}.check"),
                    format!(
                        "no check named {check:?} is defined (checks: {})",
                        known.join(", ")
                    ),
                );
            }
            let value_ok = r
                .region
                .as_ref()
                .is_none_or(|reg| cfg.regions.contains_key(reg));
            if value_ok && let Err(e) = self.record_value(cfg, r) {
                let key = if r.value.is_some() {
                    format!("{at}.value")
                } else {
                    at.clone()
                };
                v.error(&key, e);
            }
            match (r.policy, r.failover, r.weight) {
                (RoutingPolicy::Failover, None, _) => {
                    v.error(
                        &format!("{at}.failover"),
                        "a failover record needs failover = \"primary\" or \"secondary\"",
                    );
                }
                (p, Some(_), _) if p != RoutingPolicy::Failover => {
                    v.error(
                        &format!("{at}.failover"),
                        "`failover` is for policy = \"failover\" records",
                    );
                }
                (RoutingPolicy::Weighted, _, None) => {
                    v.error(
                        &format!("{at}.weight"),
                        "a weighted record needs `weight` (0 to 255)",
                    );
                }
                (RoutingPolicy::Weighted, _, Some(w)) if w > 255 => {
                    v.error(
                        &format!("{at}.weight"),
                        format!("weight {w} is more than 255"),
                    );
                }
                (p, _, Some(_)) if p != RoutingPolicy::Weighted => {
                    v.error(
                        &format!("{at}.weight"),
                        "`weight` is for policy = \"weighted\" records",
                    );
                }
                _ => {}
            }
            if r.policy == RoutingPolicy::Simple && (r.region.is_some() || r.check.is_some()) {
                let key = if r.check.is_some() { "check" } else { "region" };
                v.error(&format!("{at}.{key}"), "a simple record is always answered: health bindings need policy = \"failover\" or \"weighted\"");
            }
            if r.kind == RecordKind::CNAME && abs == self.apex() {
                v.error(
                    &format!("{at}.name"),
                    "the apex holds SOA and NS records and cannot be a CNAME",
                );
            }
            if ns_glue.contains(&abs) && matches!(r.kind, RecordKind::A | RecordKind::AAAA) {
                v.error(
                    &format!("{at}.name"),
                    format!("{abs} is a nameserver: its address comes from [[dns.nameservers]]"),
                );
            }
            groups.entry((abs, r.kind)).or_default().push(i);
        }

        let mut types_at: BTreeMap<&str, BTreeSet<RecordKind>> = BTreeMap::new();
        for ((name, kind), members) in &groups {
            types_at.entry(name.as_str()).or_default().insert(*kind);
            let first = &self.records[members[0]];
            for &i in &members[1..] {
                if self.records[i].policy != first.policy {
                    v.error(
                        &format!("dns.records[{i}].policy"),
                        format!("{name} {} is already a {} record (dns.records[{}]): one name and type has one policy", kind.as_str(), first.policy.as_str(), members[0]),
                    );
                }
            }
            match first.policy {
                RoutingPolicy::Failover => {
                    let primaries: Vec<usize> = members
                        .iter()
                        .copied()
                        .filter(|&i| self.records[i].failover == Some(FailoverRole::Primary))
                        .collect();
                    if primaries.is_empty()
                        && members.iter().all(|&i| self.records[i].failover.is_some())
                    {
                        v.error(
                            &format!("dns.records[{}].failover", members[0]),
                            format!(
                                "the failover records of {name} {} need one primary",
                                kind.as_str()
                            ),
                        );
                    }
                    for &i in primaries.iter().skip(1) {
                        v.error(
                            &format!("dns.records[{i}].failover"),
                            format!(
                                "{name} {} already has a primary (dns.records[{}])",
                                kind.as_str(),
                                primaries[0]
                            ),
                        );
                    }
                    let mut regions = BTreeSet::new();
                    for &i in members {
                        if let Some(reg) = &self.records[i].region
                            && !regions.insert(reg.clone())
                        {
                            v.error(&format!("dns.records[{i}].region"), format!("{name} {} already has a failover record bound to region {reg:?}", kind.as_str()));
                        }
                    }
                }
                RoutingPolicy::Simple if *kind == RecordKind::CNAME && members.len() > 1 => {
                    v.error(&format!("dns.records[{}].name", members[1]), format!("{name} has more than one CNAME: use policy = \"failover\" or \"weighted\" to choose one"));
                }
                _ => {}
            }
        }
        for (name, kinds) in &types_at {
            if kinds.contains(&RecordKind::CNAME)
                && kinds.len() > 1
                && let Some(i) = self.records.iter().position(|r| {
                    self.absolute(&r.name).eq_ignore_ascii_case(name) && r.kind != RecordKind::CNAME
                })
            {
                v.error(
                    &format!("dns.records[{i}].type"),
                    format!("{name} is a CNAME: it cannot hold other records"),
                );
            }
        }
    }

    fn validate_ttl(&self, at: &str, ttl: u32, v: &mut crate::Validator<'_>) {
        if ttl > i32::MAX as u32 {
            v.error(at, "a TTL is at most 2147483647 seconds (RFC 2181)");
        }
    }
}

/// A domain name as the config writes it: "@", relative or absolute; letters, digits,
/// '-' and '_' in labels of 1 to 63 bytes, at most 253 bytes in all.
pub fn check_name(name: &str) -> Result<(), String> {
    let name = name.trim();
    if name == "@" || name == "." {
        return Ok(());
    }
    if name.is_empty() {
        return Err("a name cannot be empty (write \"@\" for the zone apex)".to_owned());
    }
    let body = name.strip_suffix('.').unwrap_or(name);
    if body.len() > 253 {
        return Err(format!("{name:?} is longer than 253 bytes"));
    }
    for label in body.split('.') {
        if label.is_empty() {
            return Err(format!("{name:?} has an empty label"));
        }
        if label.len() > 63 {
            return Err(format!("{name:?} has a label longer than 63 bytes"));
        }
        if !label
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(format!(
                "{name:?}: labels use letters, digits, '-' and '_' only"
            ));
        }
    }
    Ok(())
}

/// A TTL: integer seconds (`30`) or a duration (`"30s"`, `"5m"`), whole seconds.
fn de_ttl<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    d.deserialize_any(TtlVisitor)
}

fn de_ttl_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    d.deserialize_any(TtlVisitor).map(Some)
}

struct TtlVisitor;

impl de::Visitor<'_> for TtlVisitor {
    type Value = u32;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a TTL: seconds (30) or a duration (\"30s\", \"5m\")")
    }

    fn visit_i64<E: de::Error>(self, n: i64) -> Result<u32, E> {
        u32::try_from(n)
            .map_err(|_| E::custom(format!("TTL {n} is not between 0 and 4294967295 seconds")))
    }

    fn visit_u64<E: de::Error>(self, n: u64) -> Result<u32, E> {
        u32::try_from(n)
            .map_err(|_| E::custom(format!("TTL {n} is not between 0 and 4294967295 seconds")))
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<u32, E> {
        let d: Duration = crate::duration::parse(s).map_err(E::custom)?;
        if d.subsec_nanos() != 0 {
            return Err(E::custom(format!(
                "TTL {s:?} is not a whole number of seconds"
            )));
        }
        u32::try_from(d.as_secs()).map_err(|_| E::custom(format!("TTL {s:?} is too long")))
    }
}

#[cfg(test)]
mod tests {
    use crate::{Config, ConfigError, ConfigErrors};
    use std::path::Path;

    const BASE: &str = r#"
[controller]
api_addr = "127.0.0.1:7700"
state_dir = "/tmp/x"

[auth]
token_env = "T"

[regions.a]
agent_addr = "127.0.1.1:7701"
address = "127.0.1.1"
role = "active"

[regions.b]
agent_addr = "127.0.2.1:7701"
address = "127.0.2.1"
role = "standby"

[checks.web-a]
type = "tcp"
addr = "127.0.1.1:80"
"#;

    const DNS: &str = r#"
[dns]
zone = "shop.example"
ttl = "30s"

[dns.soa]
negative_ttl = 10

[[dns.nameservers]]
name = "ns1"
address = "127.0.0.1"

[[dns.records]]
name = "db"
type = "A"
policy = "failover"
failover = "primary"
region = "a"

[[dns.records]]
name = "db"
type = "A"
policy = "failover"
failover = "secondary"
region = "b"

[[dns.records]]
name = "_pg._tcp"
type = "SRV"
value = "10 5 5432 db"
ttl = 60

[[dns.records]]
name = "@"
type = "MX"
value = "10 mail.example.net."
"#;

    fn parse(text: &str) -> Result<Config, ConfigErrors> {
        Config::parse(Path::new("test.toml"), text)
    }

    fn only_error(text: &str) -> ConfigError {
        let errs = parse(text).expect_err("config should be rejected").0;
        assert_eq!(errs.len(), 1, "expected one error, got {errs:?}");
        errs.into_iter().next().expect("one error")
    }

    fn line_of(text: &str, needle: &str, nth: usize) -> usize {
        text.lines()
            .enumerate()
            .filter(|(_, l)| l.trim() == needle)
            .nth(nth)
            .unwrap_or_else(|| panic!("no line {needle:?}"))
            .0
            + 1
    }

    #[test]
    fn the_dns_section_written_back_reads_as_the_same_config() {
        crate::tests::assert_round_trip(&format!("{BASE}{DNS}"));
    }

    #[test]
    fn a_valid_zone_parses_with_defaults_and_readable_ttls() {
        let cfg = parse(&format!("{BASE}{DNS}")).expect("valid");
        let dns = cfg.dns.as_ref().expect("dns");
        assert_eq!(dns.apex(), "shop.example.");
        assert_eq!(dns.ttl, 30);
        assert_eq!(dns.soa.negative_ttl, 10);
        assert_eq!(dns.records[2].ttl, Some(60));
        assert_eq!(dns.mname(), "ns1.shop.example.");
        assert_eq!(
            dns.record_value(&cfg, &dns.records[1]),
            Ok(super::RecordValue::A("127.0.2.1".parse().expect("ip")))
        );
        assert_eq!(
            dns.record_value(&cfg, &dns.records[2]),
            Ok(super::RecordValue::SRV {
                priority: 10,
                weight: 5,
                port: 5432,
                target: "db.shop.example.".into()
            })
        );
    }

    #[test]
    fn a_bad_value_names_line_and_key() {
        let text =
            format!("{BASE}{DNS}").replace("value = \"10 5 5432 db\"", "value = \"10 5 port db\"");
        let e = only_error(&text);
        assert_eq!(e.key, "dns.records[2].value", "{e}");
        assert_eq!(e.line, line_of(&text, "value = \"10 5 port db\"", 0), "{e}");
        assert!(e.message.contains("SRV port"), "{e}");
    }

    #[test]
    fn an_undefined_region_or_check_is_located() {
        let text = format!("{BASE}{DNS}").replace("region = \"b\"", "region = \"c\"");
        let e = only_error(&text);
        assert_eq!(e.key, "dns.records[1].region", "{e}");
        assert_eq!(e.line, line_of(&text, "region = \"c\"", 0), "{e}");
        assert!(e.message.contains("\"c\" is not defined"), "{e}");

        let text =
            format!("{BASE}{DNS}").replace("region = \"b\"", "region = \"b\"\ncheck = \"web-z\"");
        let e = only_error(&text);
        assert_eq!(e.key, "dns.records[1].check", "{e}");
        assert_eq!(e.line, line_of(&text, "check = \"web-z\"", 0), "{e}");
    }

    #[test]
    fn two_primaries_are_rejected_at_the_second() {
        let text =
            format!("{BASE}{DNS}").replace("failover = \"secondary\"", "failover = \"primary\"");
        let e = only_error(&text);
        assert_eq!(e.key, "dns.records[1].failover", "{e}");
        assert_eq!(e.line, line_of(&text, "failover = \"primary\"", 1), "{e}");
        assert!(e.message.contains("already has a primary"), "{e}");
    }

    #[test]
    fn unknown_keys_and_bad_ttls_name_the_line() {
        let text = format!("{BASE}{DNS}").replace("ttl = 60", "tll = 60");
        let e = only_error(&text);
        assert_eq!(e.line, line_of(&text, "tll = 60", 0), "{e}");
        assert!(e.message.contains("tll"), "{e}");

        let text = format!("{BASE}{DNS}").replace("ttl = 60", "ttl = \"1500ms\"");
        let e = only_error(&text);
        assert_eq!(e.line, line_of(&text, "ttl = \"1500ms\"", 0), "{e}");
        assert!(e.message.contains("whole number of seconds"), "{e}");
    }

    #[test]
    fn cname_must_own_its_name_and_names_must_be_in_zone() {
        let text = format!(
            "{BASE}{DNS}\n[[dns.records]]\nname = \"db\"\ntype = \"CNAME\"\nvalue = \"www\"\n\n[[dns.records]]\nname = \"www.other.example.\"\ntype = \"TXT\"\nvalue = \"x\"\n"
        );
        let errs = parse(&text).expect_err("rejected").0;
        assert!(
            errs.iter()
                .any(|e| e.key == "dns.records[0].type" && e.message.contains("is a CNAME")),
            "{errs:?}"
        );
        let e = errs
            .iter()
            .find(|e| e.key == "dns.records[5].name")
            .expect("outside zone error");
        assert!(e.message.contains("outside the zone"), "{e}");
        assert_eq!(
            e.line,
            line_of(&text, "name = \"www.other.example.\"", 0),
            "{e}"
        );
    }

    #[test]
    fn region_without_address_needs_a_value_and_glue_is_required() {
        let text = format!("{BASE}{DNS}").replacen("address = \"127.0.2.1\"\n", "", 1);
        let e = only_error(&text);
        assert_eq!(e.key, "dns.records[1]", "{e}");
        assert!(e.message.contains("[regions.b]"), "{e}");

        let text = format!("{BASE}{DNS}").replace("address = \"127.0.0.1\"\n", "");
        let e = only_error(&text);
        assert_eq!(e.key, "dns.nameservers[0]", "{e}");
        assert!(e.message.contains("glue"), "{e}");
    }

    #[test]
    fn agents_find_where_they_serve_the_zone() {
        let text = format!(
            "{BASE}{DNS}\n[[dns.nameservers]]\nname = \"ns-a\"\naddress = \"127.0.1.1\"\nregion = \"a\"\nlisten = \"127.0.1.1:5353\"\n\n[[dns.nameservers]]\nname = \"ns-b\"\naddress = \"127.0.2.1\"\nregion = \"b\"\n"
        );
        let cfg = parse(&text).expect("valid");
        let dns = cfg.dns.as_ref().expect("dns");
        assert_eq!(
            dns.agent_listen("a"),
            Some("127.0.1.1:5353".parse().expect("addr"))
        );
        assert_eq!(
            dns.agent_listen("b"),
            Some("127.0.2.1:53".parse().expect("addr"))
        );
        assert_eq!(dns.agent_listen("c"), None);

        let text = text.replace("region = \"b\"\n", "region = \"z\"\n");
        let errs = parse(&text).expect_err("rejected").0;
        let e = errs
            .iter()
            .find(|e| e.key == "dns.nameservers[2].region")
            .expect("nameserver region error");
        assert_eq!(e.line, line_of(&text, "region = \"z\"", 1), "{e}");
    }

    #[test]
    fn wildcards_are_not_supported() {
        let text = format!("{BASE}{DNS}").replace("name = \"_pg._tcp\"", "name = \"*.x\"");
        let e = only_error(&text);
        assert_eq!(e.key, "dns.records[2].name", "{e}");
    }

    #[test]
    fn weighted_needs_weight_and_simple_has_no_health_binding() {
        let text = format!(
            "{BASE}{DNS}\n[[dns.records]]\nname = \"w\"\ntype = \"A\"\npolicy = \"weighted\"\nvalue = \"192.0.2.1\"\n\n[[dns.records]]\nname = \"s\"\ntype = \"A\"\nvalue = \"192.0.2.1\"\ncheck = \"web-a\"\n"
        );
        let errs = parse(&text).expect_err("rejected").0;
        assert!(
            errs.iter().any(|e| e.key == "dns.records[4].weight"),
            "{errs:?}"
        );
        let e = errs
            .iter()
            .find(|e| e.key == "dns.records[5].check")
            .expect("simple with check");
        assert_eq!(e.line, line_of(&text, "check = \"web-a\"", 0), "{e}");
    }
}
