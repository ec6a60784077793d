//! Conformance with Knot DNS (issue 14): one zone served by `knotd` and by lifeboat, the
//! same battery of queries sent to both over UDP and TCP, and the responses compared
//! field by field: RCODE (with the EDNS extended bits), opcode, ID, every header flag,
//! the question as sent back (byte case included), every record of the answer, authority
//! and additional sections (owner, TTL, class, type, data) and the OPT record (version,
//! DO, payload size, options). A difference fails the test unless it is in [`ALLOWED`],
//! each with the RFC reason it is allowed; an entry of [`ALLOWED`] that no longer occurs
//! fails it too, so the list stays exact.
//!
//! Comparison rules (not differences): owner names, and the names inside CNAME, NS, PTR,
//! MX, SRV and SOA data, compare case-insensitively (RFC 4343 §4.1: a name written as a
//! compression pointer takes the case of what it points to; Knot compresses against the
//! question, so its case follows the query's, hickory's encoder keeps the zone's case),
//! and the records of a section compare as a sorted list (RRset order carries no meaning,
//! RFC 2181 §5; the order of a CNAME chain is checked in tests/rfc.rs and tests/server.rs).
//!
//! Knot is the Debian package `knot` (`knotd`); scripts/test installs it. Without it this
//! test fails: it never skips.

mod common;

use common::{Harness, big_txt, mid_txt, name};
use hickory_net::proto::op::{Edns, Message, OpCode, Query};
use hickory_net::proto::rr::rdata::SOA;
use hickory_net::proto::rr::rdata::opt::{EdnsCode, EdnsOption};
use hickory_net::proto::rr::{DNSClass, RData, Record, RecordType};
use hickory_net::proto::serialize::binary::{BinDecodable, BinDecoder};
use lifeboat_core::{HealthStatus, RegionId};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Differences the RFCs allow: (query label prefix, compared field or "*", reason).
const ALLOWED: &[(&str, &str, &str)] = &[
    (
        "AXFR",
        "rcode",
        "transfers are denied by both; Knot answers NOTAUTH (and NOTIMP over UDP), lifeboat \
         REFUSED, the RCODE RFC 5936 §2.2.1 and RFC 1035 §4.1.1 give for a policy refusal \
         (secondaries are fed the routing table, there is nothing to transfer)",
    ),
    (
        "IXFR",
        "rcode",
        "as AXFR: RFC 1995 lets a server that does not transfer refuse; Knot's denial is \
         NOTAUTH, lifeboat's REFUSED",
    ),
    (
        "opcode Notify",
        "rcode",
        "lifeboat is the zone's only source and takes no NOTIFY (RFC 1996): NOTIMP, \
         'the name server does not support the requested kind of query' (RFC 1035 §4.1.1); \
         Knot answers NOTAUTH to a NOTIFY from a server that is not its primary",
    ),
    (
        "opcode Update",
        "rcode",
        "lifeboat takes no dynamic updates: NOTIMP, which RFC 2136 §2.2 lists for a server \
         that does not support UPDATE; Knot, which supports it, answers NOTAUTH for a zone \
         without an update ACL",
    ),
    (
        "flag cd",
        "flags",
        "RFC 4035 §3.1.6 (and RFC 6840 §5.9): a name server MUST copy the CD bit from the \
         query to the response; lifeboat does, Knot 3.2 clears it",
    ),
    (
        "two questions",
        "*",
        "more than one question: lifeboat answers FORMERR (RFC 9619 §2: a QDCOUNT above 1 \
         is an error and FORMERR the answer); Knot sends nothing at all",
    ),
];

// ---------------------------------------------------------------------------------------
// Knot

/// What the failover and weighted names answer in one routing table.
struct Chosen {
    serial: u32,
    db: &'static str,
    web: &'static str,
    api: &'static str,
}

/// The zone lifeboat serves from tests/common under one routing table (where one weighted
/// `api` member is unhealthy, so that every answer is deterministic), as a zone file.
fn knot_zone(c: &Chosen) -> String {
    let Chosen {
        serial,
        db,
        web,
        api,
    } = c;
    let txt = |s: &str| {
        s.as_bytes()
            .chunks(255)
            .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    format!(
        r#"$ORIGIN shop.example.
$TTL 30
@        60 IN SOA   ns1.shop.example. hostmaster.shop.example. {serial} 60 10 604800 10
@        60 IN NS    ns1
@        60 IN NS    ns-a
@        60 IN NS    ns-b
@           IN MX    10 mail
ns1      60 IN A     127.0.0.1
ns-a     60 IN A     127.0.1.1
ns-b     60 IN A     127.0.2.1
www      42 IN A     192.0.2.10
www         IN AAAA  2001:db8::10
app         IN CNAME www
alias       IN CNAME app.shop.example.
db        5 IN A     {db}
web         IN A     {web}
api         IN A     {api}
info        IN TXT   "hello world"
_pg._tcp    IN SRV   10 5 5432 db
mail        IN A     192.0.2.25
deep.sub    IN A     192.0.2.40
dangling    IN CNAME nowhere
tomail      IN CNAME mail
ext         IN CNAME www.example.net.
pg          IN CNAME db
loop1       IN CNAME loop2
loop2       IN CNAME loop1
big         IN TXT   {big}
mid         IN TXT   {mid}
"#,
        big = txt(&big_txt()),
        mid = txt(&mid_txt()),
    )
}

fn knotd() -> PathBuf {
    for dir in std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/sbin"])
    {
        let p = Path::new(dir).join("knotd");
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "knotd not found: install the Debian package knot (scripts/test installs it; \
         apt-get install -y knot)"
    );
}

/// A knotd on 127.0.0.1, killed when dropped (also when the test fails).
struct Knot {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Knot {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port free for both UDP and TCP right now (knotd cannot bind port 0).
fn free_port() -> u16 {
    loop {
        let udp = UdpSocket::bind("127.0.0.1:0").expect("bind a UDP port");
        let port = udp.local_addr().expect("addr").port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

impl Knot {
    fn start(zone: &str) -> Knot {
        let bin = knotd();
        let mut last_error = String::new();
        for _ in 0..5 {
            let dir = tempfile::tempdir().expect("temp dir");
            let port = free_port();
            let d = dir.path().display();
            std::fs::write(dir.path().join("shop.example.zone"), zone).expect("write zone");
            std::fs::create_dir(dir.path().join("db")).expect("mkdir");
            let conf = format!(
                r#"server:
    rundir: "{d}"
    listen: 127.0.0.1@{port}
    identity: ""
    version: ""
    nsid: ""
    udp-workers: 1
    tcp-workers: 1
    background-workers: 1
database:
    storage: "{d}/db"
log:
  - target: stderr
    any: warning
template:
  - id: default
    journal-content: none
    zonefile-sync: -1
zone:
  - domain: shop.example.
    storage: "{d}"
    file: "shop.example.zone"
"#
            );
            let conf_path = dir.path().join("knot.conf");
            std::fs::write(&conf_path, conf).expect("write knot.conf");
            let child = Command::new(&bin)
                .arg("-c")
                .arg(&conf_path)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(dir.path().join("knot.log")).expect("log file"))
                .spawn()
                .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
            let mut knot = Knot {
                child,
                addr: SocketAddr::from(([127, 0, 0, 1], port)),
                _dir: dir,
            };
            // Up to 10 s (200 × 50 ms) to load the zone and answer.
            for _ in 0..200 {
                if let Ok(Some(status)) = knot.child.try_wait() {
                    last_error = format!(
                        "knotd exited ({status}): {}",
                        std::fs::read_to_string(knot._dir.path().join("knot.log"))
                            .unwrap_or_default()
                    );
                    break;
                }
                if knot.answers_soa() {
                    return knot;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            if last_error.is_empty() {
                last_error = format!(
                    "knotd does not answer on {}: {}",
                    knot.addr,
                    std::fs::read_to_string(knot._dir.path().join("knot.log")).unwrap_or_default()
                );
            }
            // Lost the port to someone else, or slow: another port, another try.
        }
        panic!("{last_error}");
    }

    fn answers_soa(&self) -> bool {
        let q = Message::query()
            .add_query(Query::query(name("shop.example."), RecordType::SOA))
            .to_vec()
            .expect("encode");
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        let _ = sock.send_to(&q, self.addr);
        let mut buf = [0u8; 512];
        sock.recv_from(&mut buf)
            .ok()
            .and_then(|(n, _)| Message::from_vec(&buf[..n]).ok())
            .is_some_and(|m| !m.answers.is_empty())
    }
}

// ---------------------------------------------------------------------------------------
// Exchanges

#[derive(Clone, Copy, Debug, PartialEq)]
enum Transport {
    Udp,
    Tcp,
}

/// The raw response, or None when the server sent nothing (within 2 s).
async fn exchange(server: SocketAddr, transport: Transport, msg: &[u8]) -> Option<Vec<u8>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let wait = Duration::from_secs(2);
    match transport {
        Transport::Udp => {
            let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.ok()?;
            sock.send_to(msg, server).await.ok()?;
            let mut buf = vec![0u8; 65535];
            let (n, _) = tokio::time::timeout(wait, sock.recv_from(&mut buf))
                .await
                .ok()?
                .ok()?;
            buf.truncate(n);
            Some(buf)
        }
        Transport::Tcp => {
            let run = async {
                let mut s = tokio::net::TcpStream::connect(server).await?;
                let len = u16::try_from(msg.len()).unwrap_or(u16::MAX);
                s.write_all(&len.to_be_bytes()).await?;
                s.write_all(msg).await?;
                let mut len = [0u8; 2];
                s.read_exact(&mut len).await?;
                let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
                s.read_exact(&mut buf).await?;
                Ok::<_, std::io::Error>(buf)
            };
            tokio::time::timeout(wait, run).await.ok()?.ok()
        }
    }
}

/// A response as the comparable fields.
fn view(bytes: Option<&[u8]>) -> BTreeMap<&'static str, String> {
    let mut v = BTreeMap::new();
    let Some(bytes) = bytes else {
        v.insert("response", "none".to_owned());
        return v;
    };
    let mut decoder = BinDecoder::new(bytes);
    let m = match Message::read(&mut decoder) {
        Ok(m) if decoder.is_empty() => m,
        Ok(_) => {
            v.insert("response", format!("{} trailing bytes", decoder.len()));
            return v;
        }
        Err(e) => {
            v.insert("response", format!("malformed: {e}"));
            return v;
        }
    };
    let md = &m.metadata;
    v.insert("rcode", u16::from(md.response_code).to_string());
    v.insert("opcode", format!("{:?}", md.op_code));
    v.insert("id", md.id.to_string());
    v.insert(
        "flags",
        format!(
            "qr={} aa={} tc={} rd={} ra={} ad={} cd={}",
            md.message_type as u8,
            md.authoritative,
            md.truncation,
            md.recursion_desired,
            md.recursion_available,
            md.authentic_data,
            md.checking_disabled
        ),
    );
    // The question exactly as sent back (case included).
    v.insert(
        "question",
        m.queries
            .iter()
            .map(|q| format!("{} {} {}", q.name(), q.query_class(), q.query_type()))
            .collect::<Vec<_>>()
            .join(", "),
    );
    let section = |records: &[Record]| {
        let mut lines: Vec<String> = records
            .iter()
            .map(|r| {
                let data = r.data.to_string();
                // Names and numbers only: their names compare case-insensitively.
                let data = match r.record_type() {
                    RecordType::CNAME
                    | RecordType::NS
                    | RecordType::PTR
                    | RecordType::MX
                    | RecordType::SRV
                    | RecordType::SOA => data.to_lowercase(),
                    _ => data,
                };
                format!(
                    "{} {} {} {} {data}",
                    r.name.to_ascii().to_lowercase(),
                    r.ttl,
                    r.dns_class,
                    r.record_type(),
                )
            })
            .collect();
        lines.sort();
        lines.join(" | ")
    };
    v.insert("answer", section(&m.answers));
    v.insert("authority", section(&m.authorities));
    v.insert("additional", section(&m.additionals));
    v.insert(
        "opt",
        match &m.edns {
            None => "none".to_owned(),
            Some(e) => format!(
                "version={} do={} payload={} options={:?}",
                e.version(),
                e.flags().dnssec_ok,
                e.max_payload(),
                e.options()
            ),
        },
    );
    v
}

// ---------------------------------------------------------------------------------------
// The battery

struct Case {
    label: String,
    transport: Transport,
    msg: Vec<u8>,
}

fn q(qname: &str, qtype: RecordType) -> Message {
    let mut m = Message::query();
    m.add_query(Query::query(name(qname), qtype));
    m.metadata.recursion_desired = false;
    m
}

fn with_edns(mut m: Message, payload: u16, version: u8, dnssec_ok: bool) -> Message {
    let mut e = Edns::new();
    e.set_max_payload(payload)
        .set_version(version)
        .set_dnssec_ok(dnssec_ok);
    m.edns = Some(e);
    m
}

fn battery() -> Vec<Case> {
    use RecordType as T;
    let mut cases: Vec<(String, Message, &[Transport])> = Vec::new();
    let both: &[Transport] = &[Transport::Udp, Transport::Tcp];
    let udp: &[Transport] = &[Transport::Udp];
    let mut add = |label: String, m: Message, t: &'static [Transport]| cases.push((label, m, t));

    // Every type at the names of the zone, and some the zone does not hold (NODATA).
    let types = [
        T::A,
        T::AAAA,
        T::CNAME,
        T::TXT,
        T::MX,
        T::NS,
        T::SOA,
        T::SRV,
        T::PTR,
        T::CAA,
        T::DS,
        T::DNSKEY,
        T::RRSIG,
        T::NSEC,
        T::HINFO,
        T::Unknown(65280),
        T::ANY,
    ];
    let names = [
        "shop.example.",
        "www.shop.example.",
        "app.shop.example.",
        "alias.shop.example.",
        "db.shop.example.",
        "web.shop.example.",
        "api.shop.example.",
        "info.shop.example.",
        "_pg._tcp.shop.example.",
        "mail.shop.example.",
        "ns1.shop.example.",
        "ns-a.shop.example.",
        // An empty non-terminal and the names under it.
        "sub.shop.example.",
        "deep.sub.shop.example.",
        "_tcp.shop.example.",
        // Names that do not exist, also under an empty non-terminal and an existing name.
        "nope.shop.example.",
        "x.nope.shop.example.",
        "nope.sub.shop.example.",
        "x.www.shop.example.",
        // CNAME chains: dangling in the zone, to a name without the type, out of the zone,
        // through a failover name.
        "dangling.shop.example.",
        "tomail.shop.example.",
        "ext.shop.example.",
        "pg.shop.example.",
        "loop1.shop.example.",
    ];
    for n in names {
        for t in types {
            add(format!("{n} {t}"), q(n, t), both);
        }
    }
    // Case: the question comes back as sent, the answer is the same.
    for (n, t) in [
        ("WwW.ShOp.ExAmPlE.", T::A),
        ("ALIAS.SHOP.EXAMPLE.", T::A),
        ("NoPe.Shop.Example.", T::A),
        ("SHOP.EXAMPLE.", T::NS),
        ("Sub.Shop.Example.", T::A),
    ] {
        add(format!("case {n} {t}"), q(n, t), both);
    }
    // Outside the zone.
    for (n, t) in [
        ("www.example.com.", T::A),
        ("example.", T::SOA),
        (".", T::NS),
        ("xshop.example.", T::A),
        ("shop.example.com.", T::A),
        ("www.example.net.", T::A),
    ] {
        add(format!("outside {n} {t}"), q(n, t), both);
    }
    // EDNS sizes and versions, the DO bit, an unknown option.
    for payload in [0u16, 100, 511, 512, 1232, 1400, 4096, 65535] {
        for n in [
            "www.shop.example.",
            "mid.shop.example.",
            "big.shop.example.",
        ] {
            let t = if n.starts_with("www") { T::A } else { T::TXT };
            add(
                format!("edns payload={payload} {n} {t}"),
                with_edns(q(n, t), payload, 0, false),
                udp,
            );
        }
    }
    for n in ["mid.shop.example.", "big.shop.example."] {
        add(format!("no edns {n} TXT"), q(n, T::TXT), both);
        add(
            format!("edns 1232 {n} TXT"),
            with_edns(q(n, T::TXT), 1232, 0, false),
            &[Transport::Tcp],
        );
    }
    for dnssec_ok in [false, true] {
        for (n, t) in [
            ("www.shop.example.", T::A),
            ("nope.shop.example.", T::A),
            ("www.shop.example.", T::TXT),
            ("dangling.shop.example.", T::A),
            ("shop.example.", T::DNSKEY),
        ] {
            add(
                format!("do={dnssec_ok} {n} {t}"),
                with_edns(q(n, t), 1232, 0, dnssec_ok),
                both,
            );
        }
    }
    for version in [1u8, 2, 255] {
        add(
            format!("edns version={version}"),
            with_edns(q("www.shop.example.", T::A), 1232, version, false),
            both,
        );
    }
    let mut unknown_option = with_edns(q("www.shop.example.", T::A), 1232, 0, false);
    if let Some(e) = unknown_option.edns.as_mut() {
        e.options_mut()
            .insert(EdnsOption::Unknown(65001, vec![1, 2, 3]));
    }
    add("edns unknown option".into(), unknown_option, both);
    let mut nsid = with_edns(q("www.shop.example.", T::A), 1232, 0, false);
    if let Some(e) = nsid.edns.as_mut() {
        e.options_mut()
            .insert(EdnsOption::Unknown(u16::from(EdnsCode::NSID), vec![]));
    }
    add("edns nsid request".into(), nsid, both);

    // Header flags in the query.
    for (label, set) in [
        (
            "rd",
            (|m: &mut Message| m.metadata.recursion_desired = true) as fn(&mut Message),
        ),
        ("cd", |m| m.metadata.checking_disabled = true),
        ("ad", |m| m.metadata.authentic_data = true),
        ("aa", |m| m.metadata.authoritative = true),
        ("ra", |m| m.metadata.recursion_available = true),
        ("tc", |m| m.metadata.truncation = true),
    ] {
        for (n, t) in [("www.shop.example.", T::A), ("nope.shop.example.", T::A)] {
            let mut m = q(n, t);
            set(&mut m);
            add(format!("flag {label} {n} {t}"), m, both);
        }
    }

    // Transfers.
    add("AXFR".into(), q("shop.example.", T::AXFR), both);
    add("AXFR outside".into(), q("example.com.", T::AXFR), both);
    let mut ixfr = q("shop.example.", T::IXFR);
    ixfr.add_authority(Record::from_rdata(
        name("shop.example."),
        0,
        RData::SOA(SOA::new(
            name("ns1.shop.example."),
            name("hostmaster.shop.example."),
            1,
            0,
            0,
            0,
            0,
        )),
    ));
    add("IXFR".into(), ixfr, both);

    // Other opcodes.
    for op in [
        OpCode::Unknown(1), // IQUERY, obsolete (RFC 3425)
        OpCode::Status,
        OpCode::Unknown(3),
        OpCode::Notify,
        OpCode::Update,
        OpCode::Unknown(6),
        OpCode::Unknown(15),
    ] {
        let mut m = q("shop.example.", T::SOA);
        m.metadata.op_code = op;
        add(format!("opcode {op:?}"), m, both);
    }

    // Other classes.
    for class in [DNSClass::CH, DNSClass::HS, DNSClass::NONE, DNSClass::ANY] {
        for (n, t) in [
            ("www.shop.example.", T::A),
            ("nope.shop.example.", T::A),
            ("version.bind.", T::TXT),
        ] {
            let mut m = q(n, t);
            m.queries[0].set_query_class(class);
            add(format!("class {class} {n} {t}"), m, both);
        }
    }

    // A response sent as a query (UDP: both drop it unanswered).
    let mut qr = q("www.shop.example.", T::A);
    qr.metadata.message_type = hickory_net::proto::op::MessageType::Response;
    add("qr set".into(), qr, both);

    // Question counts and meta types.
    let mut none = q("shop.example.", T::SOA);
    none.queries.clear();
    add("no question".into(), none, both);
    let mut two = q("www.shop.example.", T::A);
    two.add_query(Query::query(name("mail.shop.example."), T::A));
    add("two questions".into(), two, both);
    for t in [T::Unknown(253), T::Unknown(254), T::OPT, T::TSIG] {
        add(format!("meta {t}"), q("www.shop.example.", t), both);
    }

    let mut id = 0u16;
    let mut out = Vec::new();
    for (label, mut msg, transports) in cases {
        for &transport in transports {
            id = id.wrapping_add(1);
            msg.metadata.id = id;
            let mut bytes = msg
                .to_vec()
                .unwrap_or_else(|e| panic!("encode {label}: {e}"));
            if let Some(mixed) = label
                .strip_prefix("case ")
                .and_then(|r| r.split(' ').next())
            {
                set_question_case(&mut bytes, mixed);
            }
            out.push(Case {
                label: format!("{label} [{transport:?}]"),
                transport,
                msg: bytes,
            });
        }
    }
    out
}

/// Write the question name of the encoded query `wire` in the case of `mixed` (the
/// same name): hickory's encoder writes names in lower case, so a query that tests case
/// handling gets its case in the bytes.
fn set_question_case(wire: &mut [u8], mixed: &str) {
    let mut at = 12;
    for label in mixed.trim_end_matches('.').split('.') {
        let len = usize::from(wire[at]);
        let bytes = &mut wire[at + 1..at + 1 + len];
        assert!(
            bytes.eq_ignore_ascii_case(label.as_bytes()),
            "{mixed}: the encoded question holds another name"
        );
        bytes.copy_from_slice(label.as_bytes());
        at += 1 + len;
    }
    assert_eq!(wire[at], 0, "{mixed}: the encoded question is longer");
}

// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifeboat_answers_like_knot_on_the_same_zone() {
    let h = Harness::start().await;
    let cases = battery();
    let mut differences: BTreeMap<(String, &'static str), (String, String)> = BTreeMap::new();

    // Round 1, region a active. Region b unhealthy: the weighted `api` answers its region
    // a member only.
    h.publish(|t| {
        t.regions
            .insert(RegionId::new("b"), HealthStatus::Unhealthy);
    });
    let before = Chosen {
        serial: 2,
        db: "127.0.1.1",
        web: "192.0.2.1",
        api: "192.0.2.31",
    };
    compare(
        &h,
        &Knot::start(&knot_zone(&before)),
        &cases,
        "",
        &mut differences,
    )
    .await;

    // Round 2, after a failover to region b (a unhealthy, web's primary check failing):
    // the failover names, the chain through `pg`, the weighted name and the serial of
    // every SOA (negative answers included) follow.
    h.publish(|t| {
        t.active = Some(RegionId::new("b"));
        t.regions
            .insert(RegionId::new("a"), HealthStatus::Unhealthy);
        t.regions.insert(RegionId::new("b"), HealthStatus::Healthy);
        t.checks.insert("web-a".into(), HealthStatus::Unhealthy);
    });
    let after = Chosen {
        serial: 3,
        db: "127.0.2.1",
        web: "192.0.2.2",
        api: "192.0.2.32",
    };
    compare(
        &h,
        &Knot::start(&knot_zone(&after)),
        &cases,
        "after failover: ",
        &mut differences,
    )
    .await;

    let compared = 2 * cases.len();
    let allowed = |label: &str, field: &str| {
        let label = label.trim_start_matches("after failover: ");
        ALLOWED
            .iter()
            .any(|(l, f, _)| label.starts_with(l) && (*f == field || *f == "*"))
    };
    let unexplained: Vec<String> = differences
        .iter()
        .filter(|((label, field), _)| !allowed(label, field))
        .map(|((label, field), (knot, ours))| {
            format!("{label}: {field}\n    knot:     {knot}\n    lifeboat: {ours}")
        })
        .collect();
    let unused: Vec<&str> = ALLOWED
        .iter()
        .filter(|(l, f, _)| {
            !differences.keys().any(|(label, field)| {
                label.trim_start_matches("after failover: ").starts_with(l)
                    && (field == f || *f == "*")
            })
        })
        .map(|(l, _, _)| *l)
        .collect();
    eprintln!(
        "conformance: {} queries compared, {} differences, {} allowed by {} entries",
        compared,
        differences.len(),
        differences.len() - unexplained.len(),
        ALLOWED.len()
    );
    assert!(
        unexplained.is_empty(),
        "{} differences from Knot not in ALLOWED:\n{}",
        unexplained.len(),
        unexplained.join("\n")
    );
    assert!(
        unused.is_empty(),
        "ALLOWED entries that no longer occur (remove them): {unused:?}"
    );
}

/// Send every case to lifeboat and to Knot; record each field that differs.
async fn compare(
    h: &Harness,
    knot: &Knot,
    cases: &[Case],
    round: &str,
    differences: &mut BTreeMap<(String, &'static str), (String, String)>,
) {
    for case in cases {
        let lifeboat_addr = match case.transport {
            Transport::Udp => h.udp,
            Transport::Tcp => h.tcp,
        };
        let ours = view(
            exchange(lifeboat_addr, case.transport, &case.msg)
                .await
                .as_deref(),
        );
        let theirs = view(
            exchange(knot.addr, case.transport, &case.msg)
                .await
                .as_deref(),
        );
        let fields: BTreeSet<&'static str> = ours.keys().chain(theirs.keys()).copied().collect();
        for field in fields {
            let (a, b) = (ours.get(field), theirs.get(field));
            if a != b {
                differences.insert(
                    (format!("{round}{}", case.label), field),
                    (
                        b.cloned().unwrap_or_else(|| "-".into()),
                        a.cloned().unwrap_or_else(|| "-".into()),
                    ),
                );
            }
        }
    }
}
