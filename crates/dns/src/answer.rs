//! The response to one request, built here rather than by hickory's `Catalog`.
//!
//! Why not the `Catalog`: its answers differ from the RFCs where this server must not
//! (the negative SOA keeps its own TTL instead of min(TTL, MINIMUM), a CNAME chain that
//! ends without data answers NOERROR without the SOA, IXFR answers an empty NOERROR, the
//! DO bit is not echoed without hickory's DNSSEC feature), and a `ZoneHandler` cannot
//! change any of them: the catalog decides the RCODE and the authority section itself.
//! So this module decides everything about the response (header flags, RCODE, the three
//! record sections, the OPT record) from the request and the zone snapshot, as one pure
//! function, [`respond`]; hickory still decodes requests and encodes the records.
//!
//! Rules (RFC references in docs/dns.md):
//! - a message marked as a response gets FORMERR (over TCP; UDP drops it unanswered);
//! - a request that is not a single query of class IN (or ANY) and opcode QUERY gets
//!   FORMERR (0 or several questions), NOTIMP (other opcodes) or REFUSED (other classes);
//! - EDNS: an OPT record answers an OPT record, with version 0, the DO bit copied
//!   (RFC 3225 §3), our payload size ([`DEFAULT_UDP_PAYLOAD`] unless configured) and
//!   no options; a version above 0 gets BADVERS;
//! - AXFR and IXFR are refused (secondaries are fed the routing table, not transfers);
//! - in-zone answers are authoritative; negative ones (NXDOMAIN, NODATA, also at the end
//!   of a CNAME chain) carry the SOA with TTL min(SOA TTL, MINIMUM) (RFC 2308 §3) and the
//!   RCODE of the chain's last name (RFC 6604);
//! - over UDP a response larger than the limit first loses its additional section (it is
//!   optional, RFC 2181 §9), then everything but the question and OPT record, with TC
//!   set: never a partial record (see [`encode_udp`]).

use crate::zone::{Lookup, Snapshot};
use hickory_server::proto::ProtoError;
use hickory_server::proto::op::{Edns, MessageType, Metadata, OpCode, ResponseCode};
use hickory_server::proto::rr::{DNSClass, LowerName, Record, RecordSet, RecordType};
use hickory_server::proto::serialize::binary::BinEncoder;
use hickory_server::server::ResponseInfo;
use hickory_server::zone_handler::{MessageRequest, MessageResponseBuilder, Queries};
use std::sync::Arc;

/// The largest UDP payload advertised and sent by default: 1232 bytes, the DNS flag
/// day 2020 value, which fits an IPv6 packet on a 1280-byte MTU without fragmentation.
pub const DEFAULT_UDP_PAYLOAD: u16 = 1232;
/// RFC 1035 §4.2.1: the UDP limit without EDNS, and the smallest EDNS payload size.
const MIN_UDP_PAYLOAD: u16 = 512;

/// A response, before encoding.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) metadata: Metadata,
    pub(crate) answers: Vec<Arc<RecordSet>>,
    pub(crate) authorities: Vec<Arc<RecordSet>>,
    pub(crate) additionals: Vec<Arc<RecordSet>>,
    pub(crate) edns: Option<Edns>,
    /// The largest UDP message the requestor accepts, within our own limit.
    pub(crate) udp_limit: u16,
    /// A weighted group drew the answer: another query may get another one, so the
    /// encoded response must not be reused (see `cache`).
    pub(crate) drawn: bool,
}

impl Reply {
    fn new(request: &MessageRequest, max_udp_payload: u16) -> Self {
        let edns = request.edns.as_ref().map(|req| {
            let mut edns = Edns::new();
            edns.set_max_payload(max_udp_payload)
                .set_version(0)
                .set_dnssec_ok(req.flags().dnssec_ok);
            edns
        });
        let udp_limit = match &request.edns {
            Some(req) => req
                .max_payload()
                .clamp(MIN_UDP_PAYLOAD, max_udp_payload.max(MIN_UDP_PAYLOAD)),
            None => MIN_UDP_PAYLOAD,
        };
        Self {
            metadata: Metadata::response_from_request(&request.metadata),
            answers: Vec::new(),
            authorities: Vec::new(),
            additionals: Vec::new(),
            edns,
            udp_limit,
            drawn: false,
        }
    }

    fn error(mut self, rcode: ResponseCode) -> Self {
        self.metadata.response_code = rcode;
        self
    }
}

/// The response to `request` from `snap` (the zone at `origin`).
pub(crate) fn respond(
    snap: &Snapshot,
    origin: &LowerName,
    request: &MessageRequest,
    max_udp_payload: u16,
) -> Reply {
    let reply = Reply::new(request, max_udp_payload);
    if request.metadata.message_type == MessageType::Response {
        // Only TCP gets here (UDP drops responses unanswered: no reflection).
        return reply.error(ResponseCode::FormErr);
    }
    if request.edns.as_ref().is_some_and(|e| e.version() > 0) {
        return reply.error(ResponseCode::BADVERS);
    }
    if request.metadata.op_code != OpCode::Query {
        return reply.error(ResponseCode::NotImp);
    }
    let [query] = request.queries.queries() else {
        return reply.error(ResponseCode::FormErr);
    };
    if !matches!(query.query_class(), DNSClass::IN | DNSClass::ANY) {
        return reply.error(ResponseCode::Refused);
    }
    let qtype = query.query_type();
    if matches!(qtype, RecordType::AXFR | RecordType::IXFR) {
        // Secondaries are fed the routing table; there is no zone to transfer.
        return reply.error(ResponseCode::Refused);
    }
    let mut reply = reply;
    match snap.lookup(origin, query.name(), qtype, &mut reply.drawn) {
        Lookup::Refused => return reply.error(ResponseCode::Refused),
        Lookup::Answer {
            answers,
            additionals,
        } => {
            reply.answers = answers;
            reply.additionals = additionals;
        }
        Lookup::NoData { chain } => {
            reply.answers = chain;
            reply.authorities.push(snap.negative_soa());
        }
        Lookup::NxDomain { chain } => {
            reply.metadata.response_code = ResponseCode::NXDomain;
            reply.answers = chain;
            reply.authorities.push(snap.negative_soa());
        }
    }
    reply.metadata.authoritative = true;
    reply
}

fn records(sets: &[Arc<RecordSet>]) -> impl Iterator<Item = &Record> + Send {
    sets.iter().flat_map(|s| s.records_without_rrsigs())
}

/// Which sections an encoding carries.
#[derive(Clone, Copy, PartialEq)]
enum Sections {
    All,
    /// Without the additional section (optional data, RFC 2181 §9): TC stays clear.
    NoAdditional,
    /// The question and the OPT record only, TC set.
    Truncated,
}

fn emit(
    queries: &Queries,
    reply: &Reply,
    sections: Sections,
    buf: &mut Vec<u8>,
) -> Result<ResponseInfo, ProtoError> {
    buf.clear();
    let mut metadata = reply.metadata;
    let none: &[Arc<RecordSet>] = &[];
    let (answers, authorities, additionals) = match sections {
        Sections::All => (
            &reply.answers[..],
            &reply.authorities[..],
            &reply.additionals[..],
        ),
        Sections::NoAdditional => (&reply.answers[..], &reply.authorities[..], none),
        Sections::Truncated => {
            metadata.truncation = true;
            (none, none, none)
        }
    };
    let response = MessageResponseBuilder::new(queries, reply.edns.as_ref()).build(
        metadata,
        records(answers),
        records(authorities),
        std::iter::empty(),
        records(additionals),
    );
    let mut encoder = BinEncoder::new(buf);
    response.destructive_emit(&mut encoder)
}

/// Encode `reply` for UDP into `buf`: whole when it fits `reply.udp_limit`, else without
/// its additional section, else the question alone with TC set.
pub(crate) fn encode_udp(
    queries: &Queries,
    reply: &Reply,
    buf: &mut Vec<u8>,
) -> Result<ResponseInfo, ProtoError> {
    let limit = usize::from(reply.udp_limit);
    let mut info = emit(queries, reply, Sections::All, buf)?;
    if buf.len() <= limit {
        return Ok(info);
    }
    if !reply.additionals.is_empty() {
        info = emit(queries, reply, Sections::NoAdditional, buf)?;
        if buf.len() <= limit {
            return Ok(info);
        }
    }
    emit(queries, reply, Sections::Truncated, buf)
}

/// Encode `reply` for UDP as a bare truncated answer (the question and OPT record, TC
/// set): what rate limiting sends instead of dropping a response (see `rrl`).
pub(crate) fn encode_udp_slip(
    queries: &Queries,
    reply: &Reply,
    buf: &mut Vec<u8>,
) -> Result<ResponseInfo, ProtoError> {
    emit(queries, reply, Sections::Truncated, buf)
}

/// The reply as hickory's response type, for hickory's TCP server (no size limit).
pub(crate) fn send_parts<'a>(
    queries: &'a Queries,
    reply: &'a Reply,
) -> hickory_server::zone_handler::MessageResponse<
    'a,
    'a,
    impl Iterator<Item = &'a Record> + Send + 'a,
    impl Iterator<Item = &'a Record> + Send + 'a,
    impl Iterator<Item = &'a Record> + Send + 'a,
    impl Iterator<Item = &'a Record> + Send + 'a,
> {
    MessageResponseBuilder::new(queries, reply.edns.as_ref()).build(
        reply.metadata,
        records(&reply.answers),
        records(&reply.authorities),
        std::iter::empty(),
        records(&reply.additionals),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_server::proto::op::{MessageType, Query};
    use hickory_server::proto::rr::rdata::A;
    use hickory_server::proto::rr::{Name, RData};
    use hickory_server::proto::serialize::binary::{BinDecodable, BinDecoder};
    use std::str::FromStr;

    fn set(owner: &str, addrs: std::ops::Range<u8>) -> Arc<RecordSet> {
        let name = Name::from_str(owner).expect("name");
        let mut set = RecordSet::with_ttl(name, RecordType::A, 30);
        for i in addrs {
            set.add_rdata(RData::A(A::new(192, 0, 2, i)));
        }
        Arc::new(set)
    }

    fn decode(bytes: &[u8]) -> hickory_server::proto::op::Message {
        let mut d = BinDecoder::new(bytes);
        let m = hickory_server::proto::op::Message::read(&mut d).expect("well formed");
        assert!(d.is_empty(), "no bytes after the last counted record");
        m
    }

    fn reply(answers: Vec<Arc<RecordSet>>, additionals: Vec<Arc<RecordSet>>) -> Reply {
        let mut metadata = Metadata::new(7, MessageType::Response, OpCode::Query);
        metadata.authoritative = true;
        Reply {
            metadata,
            answers,
            authorities: Vec::new(),
            additionals,
            edns: None,
            udp_limit: MIN_UDP_PAYLOAD,
            drawn: false,
        }
    }

    #[test]
    fn udp_drops_the_additional_section_before_truncating_the_answer() {
        let mut query = hickory_server::proto::op::Message::query();
        query.add_query(Query::query(
            Name::from_str("a.example.").expect("name"),
            RecordType::A,
        ));
        let request = hickory_server::server::Request::from_bytes(
            query.to_vec().expect("encode"),
            std::net::SocketAddr::from(([127, 0, 0, 1], 5353)),
            hickory_server::net::xfer::Protocol::Udp,
        )
        .expect("decode");
        let queries = &request.queries;
        let mut buf = Vec::new();

        // The answer fits 512 bytes, the additional section does not: it goes, TC stays clear.
        let r = reply(
            vec![set("a.example.", 1..3)],
            vec![set("b.example.", 1..60)],
        );
        encode_udp(queries, &r, &mut buf).expect("encode");
        assert!(buf.len() <= 512);
        let m = decode(&buf);
        assert!(!m.metadata.truncation, "{m:?}");
        assert_eq!(m.answers.len(), 2);
        assert!(m.additionals.is_empty());

        // The answer alone is too large: the question only, with TC (no partial record).
        let r = reply(vec![set("a.example.", 1..60)], vec![]);
        encode_udp(queries, &r, &mut buf).expect("encode");
        let m = decode(&buf);
        assert!(m.metadata.truncation && m.metadata.authoritative);
        assert!(m.answers.is_empty() && m.additionals.is_empty());
        assert_eq!(m.queries.len(), 1);

        // Small enough: everything, as is.
        let r = reply(vec![set("a.example.", 1..3)], vec![set("b.example.", 1..3)]);
        encode_udp(queries, &r, &mut buf).expect("encode");
        let m = decode(&buf);
        assert_eq!((m.answers.len(), m.additionals.len()), (2, 2));
    }
}
