//! Authoritative failover DNS for the deployment's zone, on `hickory-server`.
//!
//! [`DnsServer`] serves the `[dns]` zone of the config over UDP and TCP and answers from the
//! newest [`RoutingTable`] on a `tokio::sync::watch` channel: the controller publishes its
//! decisions there, and an agent serving the zone as a secondary nameserver publishes the
//! table it polls from the controller. There is no reload and no restart: a query that
//! arrives after `watch::Sender::send` returned is answered from the new table.
//!
//! hickory does all the wire work: decoding and encoding (with truncation, TC, over UDP),
//! [`hickory_server::Server`] the TCP listener and its framing, and
//! [`hickory_server::zone_handler::Catalog`] the DNS semantics (AA flag, EDNS(0) and
//! BADVERS, REFUSED outside the zone, the SOA in the authority section of NXDOMAIN and
//! NODATA answers). This crate adds a [`ZoneHandler`] whose records are chosen by health
//! (see [`zone`](crate::zone) for the rules) and counts queries and answer switches
//! ([`DnsMetrics`]). UDP packets are received by a few tasks sharing the socket, each
//! answering inline (see `udp`), which doubled throughput over hickory's task-per-query
//! UDP path on a two-core machine.

mod metrics;
mod udp;
mod zone;

pub use metrics::DnsMetrics;

use anyhow::Context;
use hickory_server::Server;
use hickory_server::net::runtime::Time;
use hickory_server::proto::op::ResponseCode;
use hickory_server::proto::rr::{LowerName, RecordType};
use hickory_server::server::{Request, RequestHandler, RequestInfo, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::{
    AuthLookup, AxfrPolicy, Catalog, LookupControlFlow, LookupError, LookupOptions, LookupRecords,
    ZoneHandler, ZoneType,
};
use lifeboat_config::Config;
use lifeboat_core::RoutingTable;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use zone::{Lookup, Snapshot, ZoneModel};

/// How long a TCP connection may stay idle between queries.
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Responses buffered per TCP connection.
const TCP_RESPONSE_BUFFER: usize = 32;

/// The authoritative DNS server of one controller or agent.
pub struct DnsServer {
    live: Arc<LiveZone>,
    metrics: Arc<DnsMetrics>,
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
        Ok(Self { live, metrics })
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
        let mut catalog = Catalog::new();
        catalog.upsert(
            self.live.model.origin().clone(),
            vec![Arc::new(ZoneAdapter(self.live.clone()))],
        );
        let handler = Arc::new(CountingHandler {
            catalog,
            metrics: self.metrics.clone(),
        });
        // TCP through hickory's server; UDP through our receive loops (see `udp`).
        let mut server = Server::new(SharedHandler(handler.clone()));
        server.register_listener(tcp, TCP_IDLE_TIMEOUT, TCP_RESPONSE_BUFFER);
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

    fn lookup(
        &self,
        name: &LowerName,
        rtype: RecordType,
        options: LookupOptions,
    ) -> LookupControlFlow<AuthLookup> {
        let snap = self.snapshot();
        let result = match snap.lookup(self.model.origin(), name, rtype) {
            Lookup::Answer {
                answers,
                additionals,
            } => Ok(AuthLookup::answers(
                LookupRecords::many(options, answers),
                (!additionals.is_empty()).then(|| LookupRecords::many(options, additionals)),
            )),
            Lookup::NoData => Err(LookupError::NameExists),
            Lookup::NxDomain => Err(LookupError::from(ResponseCode::NXDomain)),
            Lookup::Refused => Err(LookupError::from(ResponseCode::Refused)),
        };
        LookupControlFlow::Break(result)
    }
}

/// hickory's view of the live zone.
struct ZoneAdapter(Arc<LiveZone>);

#[async_trait::async_trait]
impl ZoneHandler for ZoneAdapter {
    fn zone_type(&self) -> ZoneType {
        ZoneType::Primary
    }

    fn axfr_policy(&self) -> AxfrPolicy {
        // Secondaries are fed the routing table, not zone transfers.
        AxfrPolicy::Deny
    }

    fn origin(&self) -> &LowerName {
        self.0.model.origin()
    }

    async fn lookup(
        &self,
        name: &LowerName,
        rtype: RecordType,
        _request_info: Option<&RequestInfo<'_>>,
        options: LookupOptions,
    ) -> LookupControlFlow<AuthLookup> {
        self.0.lookup(name, rtype, options)
    }

    async fn search(
        &self,
        request: &Request,
        options: LookupOptions,
    ) -> (
        LookupControlFlow<AuthLookup>,
        Option<hickory_server::proto::rr::TSigResponseContext>,
    ) {
        let info = match request.request_info() {
            Ok(info) => info,
            Err(e) => return (LookupControlFlow::Break(Err(e)), None),
        };
        (
            self.0
                .lookup(info.query.name(), info.query.query_type(), options),
            None,
        )
    }

    async fn zone_transfer(
        &self,
        _request: &Request,
        _options: LookupOptions,
        _now: u64,
    ) -> Option<(
        Result<hickory_server::zone_handler::ZoneTransfer, LookupError>,
        Option<hickory_server::proto::rr::TSigResponseContext>,
    )> {
        Some((Err(LookupError::from(ResponseCode::Refused)), None))
    }

    async fn nsec_records(
        &self,
        _name: &LowerName,
        _options: LookupOptions,
    ) -> LookupControlFlow<AuthLookup> {
        LookupControlFlow::Break(Ok(AuthLookup::default()))
    }
}

/// The catalog, counting every answer by query type and response code.
pub(crate) struct CountingHandler {
    catalog: Catalog,
    pub(crate) metrics: Arc<DnsMetrics>,
}

/// The handler as hickory's server owns it (shared with the UDP tasks).
struct SharedHandler(Arc<CountingHandler>);

#[async_trait::async_trait]
impl RequestHandler for SharedHandler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        response_handle: R,
    ) -> ResponseInfo {
        self.0
            .handle_request::<R, T>(request, response_handle)
            .await
    }
}

#[async_trait::async_trait]
impl RequestHandler for CountingHandler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        response_handle: R,
    ) -> ResponseInfo {
        let info = self
            .catalog
            .handle_request::<R, T>(request, response_handle)
            .await;
        let qtype = request.queries.queries().first().map(|q| q.query_type());
        self.metrics.count(qtype, info.response_code);
        info
    }
}
