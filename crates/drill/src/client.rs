//! The black-box application client: DNS through the deployment's own server, HTTP to
//! whatever address it answers, every write recorded as an [`Op`].
//!
//! Guarantees:
//! - names are resolved with hickory-resolver configured with ONLY the deployment's
//!   DNS server (UDP), no hosts file, no system resolv.conf; answers are cached until
//!   their TTL expires, as a real stub resolver does (so a client keeps using the old
//!   region for up to one TTL after a failover: that delay is part of the RTO measured);
//! - every write opens a fresh connection (no pooling): a refused connection is a
//!   definite failure, a timeout or a connection cut after sending is "unknown";
//! - timestamps come from one wall-clock reading plus tokio's monotonic clock ([`Clock`]).

use crate::history::{Op, Outcome};
use anyhow::{Context, bail};
use hickory_resolver::config::{
    ConnectionConfig, LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig,
    ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::{Resolver, TokioResolver};
use lifeboat_core::RegionId;
use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// Wall-clock milliseconds that never go backwards within a drill.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    wall0_ms: u64,
    mono0: tokio::time::Instant,
}

impl Clock {
    pub fn new() -> Self {
        let wall0_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        Self {
            wall0_ms,
            mono0: tokio::time::Instant::now(),
        }
    }

    pub fn now_ms(&self) -> u64 {
        self.wall0_ms + self.mono0.elapsed().as_millis() as u64
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// A stub resolver that asks the given DNS servers (the zone's nameservers: the
/// controller and the agents' secondaries), failing over between them as a client's
/// resolver does.
pub fn resolver(servers: &[SocketAddr], timeout: Duration) -> anyhow::Result<TokioResolver> {
    anyhow::ensure!(!servers.is_empty(), "no DNS server to ask");
    let name_servers = servers
        .iter()
        .map(|server| {
            let mut conn = ConnectionConfig::udp();
            conn.port = server.port();
            let mut ns = NameServerConfig::udp(server.ip());
            ns.connections = vec![conn];
            ns
        })
        .collect();
    let config = ResolverConfig::from_name_servers(name_servers);
    let mut opts = ResolverOpts::default();
    opts.timeout = timeout;
    opts.attempts = 1;
    opts.use_hosts_file = ResolveHosts::Never;
    opts.ip_strategy = LookupIpStrategy::Ipv4thenIpv6;
    opts.cache_size = 64;
    Resolver::builder_with_config(config, TokioRuntimeProvider::default())
        .with_options(opts)
        .build()
        .with_context(|| {
            let list: Vec<String> = servers.iter().map(|s| s.to_string()).collect();
            format!("building a DNS resolver for {}", list.join(", "))
        })
}

/// The app as the drill sees it.
pub struct AppClient {
    resolver: TokioResolver,
    name: String,
    port: u16,
    path: String,
    http: reqwest::Client,
    clock: Clock,
    regions: BTreeMap<IpAddr, RegionId>,
}

impl std::fmt::Debug for AppClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppClient")
            .field("name", &self.name)
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

/// A page of the list endpoint: `{"ids": [...], "next": ID or null}`.
#[derive(serde::Deserialize)]
struct IdList {
    ids: Vec<String>,
    #[serde(default)]
    next: Option<String>,
}

/// Pages of the list endpoint followed, at most (a guard against an app that loops).
const MAX_LIST_PAGES: usize = 1000;

impl AppClient {
    pub fn new(
        dns_servers: &[SocketAddr],
        name: &str,
        port: u16,
        path: &str,
        request_timeout: Duration,
        regions: BTreeMap<IpAddr, RegionId>,
        clock: Clock,
    ) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(request_timeout)
            .connect_timeout(request_timeout)
            .pool_max_idle_per_host(0)
            .build()
            .context("building the HTTP client")?;
        let name = if name.ends_with('.') {
            name.to_owned()
        } else {
            format!("{name}.")
        };
        Ok(Self {
            resolver: resolver(dns_servers, request_timeout)?,
            name,
            port,
            path: path.trim_end_matches('/').to_owned(),
            http,
            clock,
            regions,
        })
    }

    pub fn clock(&self) -> Clock {
        self.clock
    }

    pub fn region_of(&self, addr: IpAddr) -> Option<RegionId> {
        self.regions.get(&addr).cloned()
    }

    /// The app's address now (from the cache while the TTL lasts).
    pub async fn resolve(&self) -> anyhow::Result<IpAddr> {
        let lookup = self
            .resolver
            .lookup_ip(self.name.as_str())
            .await
            .with_context(|| format!("resolving {}", self.name))?;
        lookup
            .iter()
            .next()
            .with_context(|| format!("{} resolved to no address", self.name))
    }

    fn url(&self, addr: IpAddr, suffix: &str) -> String {
        format!(
            "http://{}{}{suffix}",
            SocketAddr::new(addr, self.port),
            self.path
        )
    }

    fn host(&self) -> String {
        format!("{}:{}", self.name.trim_end_matches('.'), self.port)
    }

    /// Write one entry and record how it went.
    pub async fn write(&self, id: String, body: String) -> Op {
        let start_ms = self.clock.now_ms();
        let addr = match self.resolve().await {
            Ok(a) => a,
            Err(e) => {
                return Op {
                    id,
                    start_ms,
                    end_ms: self.clock.now_ms(),
                    outcome: Outcome::Failed,
                    addr: None,
                    region: None,
                    status: None,
                    error: Some(format!("{e:#}")),
                };
            }
        };
        let resp = self
            .http
            .post(self.url(addr, ""))
            .header(reqwest::header::HOST, self.host())
            .json(&serde_json::json!({ "id": id, "body": body }))
            .send()
            .await;
        let (outcome, status, error) = match resp {
            Ok(r) => {
                let status = r.status();
                // The status line is the acknowledgement; the body is not needed.
                let _ = r.bytes().await;
                if status.is_success() {
                    (Outcome::Ok, Some(status.as_u16()), None)
                } else {
                    (
                        Outcome::Failed,
                        Some(status.as_u16()),
                        Some(format!("HTTP {status}")),
                    )
                }
            }
            // Never connected: the request cannot have been applied.
            Err(e) if e.is_connect() => (Outcome::Failed, None, Some(describe(&e))),
            // Sent (or maybe sent) and no answer: it may have committed.
            Err(e) => (Outcome::Unknown, None, Some(describe(&e))),
        };
        Op {
            id,
            start_ms,
            end_ms: self.clock.now_ms(),
            outcome,
            addr: Some(addr),
            region: self.region_of(addr),
            status,
            error,
        }
    }

    /// Which of `ids` the app at `addr` has: the list endpoint (`GET {path}` ->
    /// `{"ids": [...]}`) when the app has one, then `GET {path}/{id}` for every id the
    /// list lacks (so a list that is truncated or paged never makes a write look lost).
    pub async fn read_present(
        &self,
        addr: IpAddr,
        ids: &[String],
    ) -> anyhow::Result<HashSet<String>> {
        let url = self.url(addr, "");
        let mut present = HashSet::new();
        let mut after: Option<String> = None;
        for _ in 0..MAX_LIST_PAGES {
            let mut req = self
                .http
                .get(&url)
                .header(reqwest::header::HOST, self.host());
            if let Some(a) = &after {
                req = req.query(&[("after", a)]);
            }
            let resp = req.send().await.with_context(|| format!("reading {url}"))?;
            if matches!(resp.status().as_u16(), 404 | 405) {
                break; // no list endpoint: every id is asked for below
            }
            if !resp.status().is_success() {
                bail!("{url} answered {}", resp.status());
            }
            let page: IdList = resp
                .json()
                .await
                .with_context(|| format!("{url} did not answer {{\"ids\": [...]}}"))?;
            present.extend(page.ids);
            match page.next {
                Some(n) if after.as_ref() != Some(&n) => after = Some(n),
                _ => break,
            }
        }
        let missing: Vec<&String> = ids.iter().filter(|id| !present.contains(*id)).collect();
        for id in missing {
            let url = self.url(addr, &format!("/{id}"));
            let resp = self
                .http
                .get(&url)
                .header(reqwest::header::HOST, self.host())
                .send()
                .await
                .with_context(|| format!("reading {url}"))?;
            match resp.status().as_u16() {
                200..=299 => {
                    present.insert(id.to_owned());
                }
                404 => {}
                s => bail!("{url} answered {s}"),
            }
        }
        Ok(present)
    }
}

fn describe(e: &reqwest::Error) -> String {
    use std::error::Error;
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}
