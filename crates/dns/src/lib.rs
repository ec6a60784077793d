//! Authoritative failover DNS for the deployment's zone, on `hickory-server`.
//!
//! [`DnsServer`] serves the `[dns]` zone of the config over UDP and TCP and answers from the
//! newest [`RoutingTable`] on a `tokio::sync::watch` channel: the controller publishes its
//! decisions there, and an agent serving the zone as a secondary nameserver publishes the
//! table it polls from the controller. There is no reload and no restart: a query that
//! arrives after `watch::Sender::send` returned is answered from the new table.
//!
//! hickory does the wire work: decoding requests and encoding records, and
//! [`hickory_server::Server`] the TCP listener and its framing. The DNS semantics are this
//! crate's own (`answer`): hickory's `Catalog` was the first design, but it cannot give
//! the RFC answer for negative TTLs (RFC 2308), CNAME chains that end without data
//! (RFC 6604), IXFR (RFC 1995) or the DO bit (RFC 3225), and a zone handler behind it has
//! no say in those; building the whole response here, from the request and the zone
//! snapshot, makes every rule one place to read and test. The records are chosen by
//! health (see the `zone` module for the rules); queries and answer switches are
//! counted ([`DnsMetrics`]). UDP packets are received by a few tasks sharing the socket,
//! each answering inline (see `udp`), which doubled throughput over hickory's
//! task-per-query UDP path on a two-core machine; a query repeated but for its ID is
//! answered from a packet cache of encoded responses (see `cache`), which put throughput
//! above Knot DNS's in `bench/dns`; UDP responses are size-limited there
//! without ever cutting a record (see `answer::encode_udp`), and optionally rate limited
//! per client network ([`RateLimit`]).
//!
//! The behaviour is checked against Knot DNS serving the same zone
//! (`tests/conformance.rs`), with every allowed difference listed and explained there.

mod answer;
mod cache;
mod metrics;
mod rrl;
mod udp;
mod zone;

pub use answer::DEFAULT_UDP_PAYLOAD;
pub use metrics::DnsMetrics;
pub use rrl::RateLimit;

use anyhow::Context;
use hickory_server::Server;
use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{Header, HeaderCounts, Metadata, ResponseCode};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use lifeboat_config::Config;
use lifeboat_core::RoutingTable;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use zone::{Snapshot, ZoneModel};

/// How long a TCP connection may stay idle between queries.
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Responses buffered per TCP connection.
const TCP_RESPONSE_BUFFER: usize = 32;

/// The authoritative DNS server of one controller or agent.
pub struct DnsServer {
    live: Arc<LiveZone>,
    metrics: Arc<DnsMetrics>,
    max_udp_payload: u16,
    rate_limit: Option<RateLimit>,
}

impl std::fmt::Debug for DnsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsServer")
            .field("zone", &self.live.model.origin())
            .finish_non_exhaustive()
    }
}

impl DnsServer {
    /// Build the zone of `cfg.dns` (an error if the config has none) answering from `routing`.
    pub fn new(cfg: &Config, routing: watch::Receiver<RoutingTable>) -> anyhow::Result<Self> {
        let model = ZoneModel::from_config(cfg).context("building the DNS zone")?;
        let metrics = Arc::new(DnsMetrics::default());
        let first = model.snapshot(routing.borrow().clone());
        metrics.set_serial(first.serial);
        let live = Arc::new(LiveZone {
            model,
            routing,
            current: RwLock::new(Arc::new(first)),
            rebuild: Mutex::new(()),
            metrics: metrics.clone(),
        });
        Ok(Self {
            live,
            metrics,
            max_udp_payload: DEFAULT_UDP_PAYLOAD,
            rate_limit: None,
        })
    }

    /// Limit UDP responses per client network against amplification (see [`RateLimit`]);
    /// off by default. TCP is never limited.
    pub fn with_rate_limit(mut self, limit: RateLimit) -> Self {
        self.rate_limit = Some(limit);
        self
    }

    /// The largest UDP response, and the EDNS payload size advertised in every OPT record
    /// (default [`DEFAULT_UDP_PAYLOAD`]; never less than 512). A requestor advertising
    /// less gets at most what it advertised (and at least 512 bytes).
    pub fn with_max_udp_payload(mut self, bytes: u16) -> Self {
        self.max_udp_payload = bytes.max(512);
        self
    }

    /// The server's counters, for the `/metrics` endpoint.
    pub fn metrics(&self) -> Arc<DnsMetrics> {
        self.metrics.clone()
    }

    /// Serve on the bound sockets until `cancel`; the caller binds them (tests bind port 0
    /// and read the port back). Returns an error if a socket fails for good.
    pub async fn run(
        self,
        udp: tokio::net::UdpSocket,
        tcp: tokio::net::TcpListener,
        cancel: CancellationToken,
    ) -> anyhow::Result<()> {
        let handler = Arc::new(Responder {
            live: self.live.clone(),
            metrics: self.metrics.clone(),
            max_udp_payload: self.max_udp_payload,
            limiter: self.rate_limit.map(rrl::Limiter::new),
            cache: cache::PacketCache::default(),
        });
        // TCP through hickory's server; UDP through our receive loops (see `udp`).
        let mut server = Server::new(SharedHandler(handler.clone()));
        server.register_listener(tcp, TCP_IDLE_TIMEOUT, TCP_RESPONSE_BUFFER);
        grow_receive_buffer(&udp);
        let udp = Arc::new(udp);
        let mut udp_tasks = tokio::task::JoinSet::new();
        for _ in 0..udp_receivers() {
            udp_tasks.spawn(udp::serve(udp.clone(), handler.clone(), cancel.clone()));
        }

        // Rebuild as soon as the table changes, so that switches are logged and counted
        // even when nobody asks; queries also rebuild on demand, so none sees a stale table.
        let mut routing = self.live.routing.clone();
        let live = self.live.clone();
        let watcher_cancel = cancel.clone();
        let watcher = tokio::spawn(async move {
            loop {
                tokio::select! {
                    changed = routing.changed() => if changed.is_err() { break },
                    () = watcher_cancel.cancelled() => break,
                }
                live.snapshot();
            }
        });

        let shutdown = server.shutdown_token().clone();
        let result = tokio::select! {
            r = server.block_until_done() => r.context("DNS server (TCP) stopped"),
            Some(r) = udp_tasks.join_next() => match r {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e),
                Err(e) => Err(anyhow::Error::new(e).context("DNS UDP task failed")),
            },
            () = cancel.cancelled() => Ok(()),
        };
        // Whatever ended first, stop everything else.
        shutdown.cancel();
        udp_tasks.abort_all();
        watcher.abort();
        let stopped = server
            .block_until_done()
            .await
            .context("shutting down the DNS server");
        result.and(stopped)
    }
}

/// The UDP receive buffer asked for: room for bursts of thousands of queries while the
/// receiving tasks are busy (the Linux default, 208 KiB, holds about 270 small packets).
/// The kernel caps it at `net.core.rmem_max`.
const UDP_RECEIVE_BUFFER: usize = 4 << 20;

/// Ask for [`UDP_RECEIVE_BUFFER`]; a refusal only leaves the system's default.
fn grow_receive_buffer(udp: &tokio::net::UdpSocket) {
    let sock = socket2::SockRef::from(udp);
    if let Err(error) = sock.set_recv_buffer_size(UDP_RECEIVE_BUFFER) {
        tracing::debug!(%error, "DNS UDP socket: SO_RCVBUF refused; keeping the default");
    }
    match sock.recv_buffer_size() {
        Ok(bytes) => tracing::debug!(bytes, "DNS UDP socket receive buffer"),
        Err(error) => tracing::debug!(%error, "DNS UDP socket: reading SO_RCVBUF"),
    }
}

/// How many tasks receive on the UDP socket: one per core, so that every core can
/// answer while the others wait for packets.
fn udp_receivers() -> usize {
    std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(2, 16)
}

/// The zone and the routing table it answers from.
struct LiveZone {
    model: ZoneModel,
    routing: watch::Receiver<RoutingTable>,
    current: RwLock<Arc<Snapshot>>,
    /// Serializes rebuilds so that each table is evaluated (and its switches counted) once.
    rebuild: Mutex<()>,
    metrics: Arc<DnsMetrics>,
}

impl LiveZone {
    /// The snapshot of the newest routing table. Cheap when nothing changed: one read lock
    /// and a comparison of the table (a few map entries).
    fn snapshot(&self) -> Arc<Snapshot> {
        let cur = self.read();
        if *self.routing.borrow() == cur.table {
            return cur;
        }
        // Locks are never held across an await, and a poisoned lock only means another
        // query panicked mid-rebuild: the data behind it is still a whole snapshot.
        let _guard = self.rebuild.lock().unwrap_or_else(|e| e.into_inner());
        let cur = self.read();
        let table = self.routing.borrow().clone();
        if table == cur.table {
            return cur;
        }
        let next = Arc::new(self.model.snapshot(table));
        self.metrics.add_switches(self.model.switches(&cur, &next));
        self.metrics.set_serial(next.serial);
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = next.clone();
        next
    }

    fn read(&self) -> Arc<Snapshot> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Answers requests from the live zone and counts every answer by query type and
/// response code.
pub(crate) struct Responder {
    live: Arc<LiveZone>,
    pub(crate) metrics: Arc<DnsMetrics>,
    max_udp_payload: u16,
    /// UDP response rate limiting, when configured.
    pub(crate) limiter: Option<rrl::Limiter>,
    /// Encoded UDP responses for repeated queries (see `cache`).
    pub(crate) cache: cache::PacketCache<Snapshot>,
}

impl Responder {
    /// The snapshot of the newest routing table.
    pub(crate) fn snapshot(&self) -> Arc<Snapshot> {
        self.live.snapshot()
    }

    /// The response to `request` from the newest routing table, counted.
    pub(crate) fn respond(&self, request: &Request) -> answer::Reply {
        self.respond_from(&self.live.snapshot(), request)
    }

    /// The response to `request` from `snap`, counted.
    pub(crate) fn respond_from(&self, snap: &Snapshot, request: &Request) -> answer::Reply {
        let reply = answer::respond(
            snap,
            self.live.model.origin(),
            request,
            self.max_udp_payload,
        );
        let qtype = request.queries.queries().first().map(|q| q.query_type());
        self.metrics.count(qtype, reply.metadata.response_code);
        reply
    }
}

/// The responder as hickory's server owns it (shared with the UDP tasks).
struct SharedHandler(Arc<Responder>);

#[async_trait::async_trait]
impl RequestHandler for SharedHandler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let reply = self.0.respond(request);
        let response = answer::send_parts(&request.queries, &reply);
        match response_handle.send_response(response).await {
            Ok(info) => info,
            Err(error) => {
                tracing::debug!(%error, src = %request.src(), "sending a DNS response");
                let mut metadata = Metadata::response_from_request(&request.metadata);
                metadata.response_code = ResponseCode::ServFail;
                ResponseInfo::from(Header {
                    metadata,
                    counts: HeaderCounts::default(),
                })
            }
        }
    }
}
