//! The demo's ports: chosen once, before anything starts, free on every loopback
//! address that binds them and distinct from each other.

use super::REGIONS;
use anyhow::{Result, bail};
use std::collections::BTreeMap;
use std::net::{IpAddr, TcpListener, UdpSocket};

/// Ports chosen once, free on every address that binds them.
pub(super) struct Ports {
    pub(super) api: u16,
    pub(super) dns: u16,
    pub(super) app: u16,
    pub(super) agent: u16,
    /// Each region's table server: its API (the SDKs' endpoint) and its peer port.
    pub(super) tables: u16,
    pub(super) tables_peer: u16,
    /// Each region's S3 object gateway (`[objects.gateway] listen`).
    pub(super) gateway: u16,
    pub(super) db: BTreeMap<&'static str, u16>,
    /// `--controllers N` > 1: the API and DNS ports of controllers c2..cN (c1 has
    /// `api` and `dns`), and each etcd member's client and peer ports.
    pub(super) more_controllers: Vec<(u16, u16)>,
    pub(super) etcd: Vec<(u16, u16)>,
}

impl Ports {
    /// (name, API port, DNS port) of every controller.
    pub(super) fn controllers(&self) -> Vec<(String, u16, u16)> {
        let mut v = vec![("c1".to_owned(), self.api, self.dns)];
        for (i, (api, dns)) in self.more_controllers.iter().enumerate() {
            v.push((format!("c{}", i + 2), *api, *dns));
        }
        v
    }
}

/// A port free on every one of `ips` (UDP too when asked), chosen below Linux's
/// ephemeral range (32768+): outgoing connections never take it between this check and
/// the bind of the process that will own it.
fn free_on_all(ips: &[&str], udp_too: bool) -> Result<u16> {
    let addrs: Vec<IpAddr> = ips.iter().map(|ip| ip.parse()).collect::<Result<_, _>>()?;
    let mut x = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
        ^ (u64::from(std::process::id()) << 20)
        | 1;
    for _ in 0..2000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let port = 20_000 + (x % 12_000) as u16;
        let ok = addrs.iter().all(|ip| {
            TcpListener::bind((*ip, port)).is_ok()
                && (!udp_too || UdpSocket::bind((*ip, port)).is_ok())
        });
        if ok {
            return Ok(port);
        }
    }
    bail!("no port in 20000..32000 is free on {}", ips.join(", "))
}

pub(super) fn choose_ports(controllers: usize) -> Result<Ports> {
    let region_ips: Vec<&str> = REGIONS.iter().map(|(_, ip)| *ip).collect();
    // The ports are not held between checks, so make sure no two came out equal.
    for _ in 0..20 {
        let mut db = BTreeMap::new();
        for (r, ip) in REGIONS {
            db.insert(r, free_on_all(&[ip], false)?);
        }
        let p = Ports {
            api: free_on_all(&["127.0.0.1"], false)?,
            // The controller's DNS and each agent's secondary use the same port.
            dns: free_on_all(&["127.0.0.1", "127.0.1.1", "127.0.2.1"], true)?,
            app: free_on_all(&region_ips, false)?,
            agent: free_on_all(&region_ips, false)?,
            tables: free_on_all(&region_ips, false)?,
            tables_peer: free_on_all(&region_ips, false)?,
            gateway: free_on_all(&region_ips, false)?,
            db,
            more_controllers: (1..controllers)
                .map(|_| {
                    Ok((
                        free_on_all(&["127.0.0.1"], false)?,
                        free_on_all(&["127.0.0.1"], true)?,
                    ))
                })
                .collect::<Result<_>>()?,
            etcd: (0..if controllers > 1 { controllers } else { 0 })
                .map(|_| {
                    Ok((
                        free_on_all(&["127.0.0.1"], false)?,
                        free_on_all(&["127.0.0.1"], false)?,
                    ))
                })
                .collect::<Result<_>>()?,
        };
        let mut all = vec![
            p.api,
            p.dns,
            p.app,
            p.agent,
            p.tables,
            p.tables_peer,
            p.gateway,
        ];
        all.extend(p.db.values());
        all.extend(p.more_controllers.iter().flat_map(|(a, d)| [*a, *d]));
        all.extend(p.etcd.iter().flat_map(|(c, q)| [*c, *q]));
        let n = all.len();
        all.sort_unstable();
        all.dedup();
        if all.len() == n {
            return Ok(p);
        }
    }
    bail!("could not choose distinct free ports")
}
