//! Test harness: a real DnsServer on 127.0.0.1 port 0 (UDP and TCP), fed by a watch
//! channel the test controls, and hickory's client to query it.
#![allow(dead_code)]

use hickory_net::client::{Client, ClientHandle};
use hickory_net::proto::op::{DnsRequestOptions, Edns, Message, Query};
use hickory_net::proto::rr::{DNSClass, Name, RData, RecordType};
use hickory_net::runtime::TokioRuntimeProvider;
use hickory_net::tcp::TcpClientStream;
use hickory_net::udp::UdpClientStream;
use hickory_net::xfer::DnsHandle;
use lifeboat_config::Config;
use lifeboat_core::{HealthStatus, RegionId, RoutingTable};
use lifeboat_dns::{DnsMetrics, DnsServer};
use std::net::SocketAddr;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub const BASE: &str = r#"
[controller]
api_addr = "127.0.0.1:7700"
state_dir = "/tmp/lifeboat-dns-test"

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

[checks.web-a]
type = "tcp"
addr = "127.0.1.1:8080"

[checks.web-b]
type = "tcp"
addr = "127.0.2.1:8080"
"#;

pub const ZONE: &str = r#"
[dns]
zone = "shop.example."
ttl = "30s"

[dns.soa]
negative_ttl = "10s"

[[dns.nameservers]]
name = "ns1"          # the controller
address = "127.0.0.1"

[[dns.nameservers]]
name = "ns-a"         # the agent of region a
address = "127.0.1.1"

[[dns.nameservers]]
name = "ns-b"         # the agent of region b
address = "127.0.2.1"

[[dns.records]]
name = "www"
type = "A"
value = "192.0.2.10"
ttl = 42

[[dns.records]]
name = "www"
type = "AAAA"
value = "2001:db8::10"

[[dns.records]]
name = "app"
type = "CNAME"
value = "www"

[[dns.records]]
name = "alias"
type = "CNAME"
value = "app.shop.example."

[[dns.records]]
name = "db"
type = "A"
policy = "failover"
failover = "primary"
region = "a"
ttl = "5s"

[[dns.records]]
name = "db"
type = "A"
policy = "failover"
failover = "secondary"
region = "b"
ttl = "5s"

[[dns.records]]
name = "web"
type = "A"
policy = "failover"
failover = "primary"
check = "web-a"
value = "192.0.2.1"

[[dns.records]]
name = "web"
type = "A"
policy = "failover"
failover = "secondary"
check = "web-b"
value = "192.0.2.2"

[[dns.records]]
name = "api"
type = "A"
policy = "weighted"
weight = 3
region = "a"
value = "192.0.2.31"

[[dns.records]]
name = "api"
type = "A"
policy = "weighted"
weight = 1
region = "b"
value = "192.0.2.32"

[[dns.records]]
name = "info"
type = "TXT"
value = "hello world"

[[dns.records]]
name = "_pg._tcp"
type = "SRV"
value = "10 5 5432 db"

[[dns.records]]
name = "@"
type = "MX"
value = "10 mail"

[[dns.records]]
name = "mail"
type = "A"
value = "192.0.2.25"

[[dns.records]]
name = "deep.sub"
type = "A"
value = "192.0.2.40"

[[dns.records]]
name = "dangling"     # an in-zone CNAME to a name that does not exist
type = "CNAME"
value = "nowhere"

[[dns.records]]
name = "tomail"       # a CNAME to a name with an A record only
type = "CNAME"
value = "mail"

[[dns.records]]
name = "ext"          # a CNAME leaving the zone
type = "CNAME"
value = "www.example.net."

[[dns.records]]
name = "loop1"        # a CNAME loop
type = "CNAME"
value = "loop2"

[[dns.records]]
name = "loop2"
type = "CNAME"
value = "loop1"

[[dns.records]]
name = "pg"           # a CNAME to a failover name
type = "CNAME"
value = "db"
"#;

/// The large TXT record: more than fits a 1232-byte EDNS UDP answer.
pub fn big_txt() -> String {
    (0..3000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect()
}

/// A TXT record between 1232 and 4096 bytes: fits a 4096-byte EDNS payload, not the
/// server's 1232-byte cap.
pub fn mid_txt() -> String {
    (0..1500)
        .map(|i| char::from(b'A' + (i % 26) as u8))
        .collect()
}

pub fn config() -> Config {
    let text = format!(
        "{BASE}{ZONE}\n[[dns.records]]\nname = \"big\"\ntype = \"TXT\"\nvalue = \"{}\"\n\n[[dns.records]]\nname = \"mid\"\ntype = \"TXT\"\nvalue = \"{}\"\n",
        big_txt(),
        mid_txt()
    );
    Config::parse(Path::new("test.toml"), &text).expect("test config is valid")
}

/// The table the controller publishes at start: region a active, everything healthy.
pub fn initial_table() -> RoutingTable {
    let mut t = RoutingTable {
        version: 1,
        active: Some(RegionId::new("a")),
        ..Default::default()
    };
    t.regions.insert(RegionId::new("a"), HealthStatus::Healthy);
    t.regions.insert(RegionId::new("b"), HealthStatus::Healthy);
    t.checks.insert("web-a".into(), HealthStatus::Healthy);
    t.checks.insert("web-b".into(), HealthStatus::Healthy);
    t
}

/// A running server; stopped when dropped.
pub struct Harness {
    pub udp: SocketAddr,
    pub tcp: SocketAddr,
    pub routing: watch::Sender<RoutingTable>,
    pub metrics: Arc<DnsMetrics>,
    cancel: CancellationToken,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl Harness {
    pub async fn start() -> Harness {
        Self::start_with(|s| s).await
    }

    /// A server adjusted by `adjust` before it runs (e.g. its UDP payload limit).
    pub async fn start_with(adjust: impl FnOnce(DnsServer) -> DnsServer) -> Harness {
        let (tx, rx) = watch::channel(initial_table());
        let server = adjust(DnsServer::new(&config(), rx).expect("server builds"));
        let metrics = server.metrics();
        let udp = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind udp");
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind tcp");
        let (udp_addr, tcp_addr) = (
            udp.local_addr().expect("addr"),
            tcp.local_addr().expect("addr"),
        );
        let cancel = CancellationToken::new();
        tokio::spawn(server.run(udp, tcp, cancel.clone()));
        Harness {
            udp: udp_addr,
            tcp: tcp_addr,
            routing: tx,
            metrics,
            cancel,
        }
    }

    /// Change the routing table the way the controller does: bump the version.
    pub fn publish(&self, change: impl FnOnce(&mut RoutingTable)) {
        self.routing.send_modify(|t| {
            change(t);
            t.version += 1;
        });
    }

    pub fn udp_client(&self) -> Client<TokioRuntimeProvider> {
        let stream = UdpClientStream::builder(self.udp, TokioRuntimeProvider::default())
            .with_timeout(Some(Duration::from_secs(5)))
            .build();
        let (client, bg) = Client::<TokioRuntimeProvider>::from_sender(stream);
        tokio::spawn(bg);
        client
    }

    pub async fn tcp_client(&self) -> Client<TokioRuntimeProvider> {
        let (stream, sender) = TcpClientStream::new(
            self.tcp,
            None,
            Some(Duration::from_secs(5)),
            TokioRuntimeProvider::default(),
        );
        let (client, bg) =
            Client::<TokioRuntimeProvider>::new(stream.await.expect("tcp connect"), sender);
        tokio::spawn(bg);
        client
    }
}

pub fn name(s: &str) -> Name {
    Name::from_str(s).expect("valid name")
}

/// One query; the response message whatever its rcode.
pub async fn query(
    client: &mut Client<TokioRuntimeProvider>,
    qname: &str,
    qtype: RecordType,
) -> Message {
    client
        .query(name(qname), DNSClass::IN, qtype)
        .await
        .unwrap_or_else(|e| panic!("query {qname} {qtype}: {e}"))
        .into_message()
}

/// A query with explicit EDNS options (None: no OPT record at all).
pub async fn query_edns(
    client: &mut Client<TokioRuntimeProvider>,
    qname: &str,
    qtype: RecordType,
    edns: Option<Edns>,
) -> Message {
    let mut options = DnsRequestOptions::default();
    options.use_edns = false;
    let mut msg = Message::query();
    msg.add_query(Query::query(name(qname), qtype));
    msg.metadata.recursion_desired = false;
    msg.edns = edns;
    let request = hickory_net::proto::op::DnsRequest::new(msg, options);
    use futures::StreamExt;
    let mut stream = client.send(request);
    stream
        .next()
        .await
        .expect("a response")
        .unwrap_or_else(|e| panic!("query {qname} {qtype}: {e}"))
        .into_message()
}

/// The IPv4 addresses of the answer section.
pub fn a_records(msg: &Message) -> Vec<String> {
    msg.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0.to_string()),
            _ => None,
        })
        .collect()
}

/// Send `msg` in one UDP datagram from a fresh socket; the raw response bytes.
pub async fn raw_udp(server: SocketAddr, msg: &[u8]) -> Vec<u8> {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind client");
    sock.send_to(msg, server).await.expect("send");
    let mut buf = vec![0u8; 65535];
    let (n, _) = tokio::time::timeout(Duration::from_secs(5), sock.recv_from(&mut buf))
        .await
        .unwrap_or_else(|_| panic!("no UDP response from {server}"))
        .expect("recv");
    buf.truncate(n);
    buf
}

/// Send `msg` over a fresh TCP connection (2-byte length framing); the raw response bytes.
pub async fn raw_tcp(server: SocketAddr, msg: &[u8]) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(server).await?;
        let len = u16::try_from(msg.len()).expect("query fits TCP framing");
        s.write_all(&len.to_be_bytes()).await?;
        s.write_all(msg).await?;
        let mut len = [0u8; 2];
        s.read_exact(&mut len).await?;
        let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
        s.read_exact(&mut buf).await?;
        Ok::<_, std::io::Error>(buf)
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .unwrap_or_else(|_| panic!("no TCP response from {server}"))
        .unwrap_or_else(|e| panic!("TCP exchange with {server}: {e}"))
}

/// Decode a response strictly: every byte must belong to the records its header counts
/// (a truncated record left in the packet, or trailing bytes, fail).
pub fn decode_strict(bytes: &[u8]) -> Message {
    use hickory_net::proto::serialize::binary::{BinDecodable, BinDecoder};
    let mut decoder = BinDecoder::new(bytes);
    let msg = Message::read(&mut decoder)
        .unwrap_or_else(|e| panic!("malformed response ({} bytes): {e}", bytes.len()));
    assert!(
        decoder.is_empty(),
        "{} bytes after the last record of a {}-byte response: {msg:?}",
        decoder.len(),
        bytes.len()
    );
    msg
}

/// A query message: one question, RD clear, with `edns` (None: no OPT record).
pub fn query_msg(qname: &str, qtype: RecordType, edns: Option<Edns>) -> Message {
    let mut msg = Message::query();
    msg.metadata.id = fastrand_id();
    msg.add_query(Query::query(name(qname), qtype));
    msg.metadata.recursion_desired = false;
    msg.edns = edns;
    msg
}

fn fastrand_id() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// EDNS version 0 with `payload` and the DO bit as given.
pub fn edns(payload: u16, dnssec_ok: bool) -> Edns {
    let mut e = Edns::new();
    e.set_max_payload(payload)
        .set_version(0)
        .set_dnssec_ok(dnssec_ok);
    e
}

/// The SOA records of the authority section.
pub fn authority_soa(msg: &Message) -> Vec<&hickory_net::proto::rr::Record> {
    msg.authorities
        .iter()
        .filter(|r| r.record_type() == RecordType::SOA)
        .collect()
}
