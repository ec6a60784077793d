//! The UDP path: several tasks share the socket, each receiving a query, answering it
//! and sending the response itself.
//!
//! Why not `hickory_server::Server::register_socket`: it spawns a task per query and passes
//! every response through a channel to a sender task, three task hops per packet; on a
//! small machine that costs more than the lookup. Requests are decoded by hickory's
//! `Request::from_bytes`; responses are built by `answer::respond` and size-limited by
//! `answer::encode_udp` (512 bytes without EDNS, else the advertised payload size within
//! our own limit): an answer that does not fit loses whole sections and sets TC, never
//! leaving part of a record in the packet.
//!
//! A query that repeats an earlier one byte for byte but for its ID is answered from
//! the packet cache (`cache`) without being decoded; rate limiting is checked first.
//!
//! Guarantees: a packet shorter than a header or marked as a response is dropped (no
//! reflection); one whose header parses but whose body does not gets FORMERR; nothing a
//! client sends can stop a receiving task.

use crate::cache::Counted;
use crate::rrl::Verdict;
use crate::{Responder, answer};
use hickory_server::net::xfer::Protocol;
use hickory_server::proto::op::{
    Header, HeaderCounts, Message, MessageType, Metadata, ResponseCode,
};
use hickory_server::proto::serialize::binary::{
    BinDecodable, BinDecoder, BinEncodable, BinEncoder,
};
use hickory_server::server::Request;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::UdpSocket;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The largest query accepted over UDP (queries are small; EDNS answers may be large).
const MAX_QUERY: usize = 4096;
/// A socket that fails this many times in a row is broken, not unlucky.
const MAX_CONSECUTIVE_ERRORS: u32 = 1000;

/// Receive and answer queries on `socket` until `cancel`.
pub(crate) async fn serve(
    socket: Arc<UdpSocket>,
    handler: Arc<Responder>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let mut buf = vec![0u8; MAX_QUERY];
    let mut out = Vec::with_capacity(512);
    let mut errors = 0u32;
    loop {
        let (len, src) = tokio::select! {
            r = socket.recv_from(&mut buf) => match r {
                Ok(r) => { errors = 0; r }
                Err(e) => {
                    // ICMP errors from earlier sends surface here (ECONNREFUSED): not fatal.
                    errors += 1;
                    if errors >= MAX_CONSECUTIVE_ERRORS {
                        return Err(anyhow::Error::new(e).context("receiving on the DNS UDP socket"));
                    }
                    tracing::debug!(error = %e, "DNS UDP receive error");
                    continue;
                }
            },
            () = cancel.cancelled() => return Ok(()),
        };
        if src.port() == 0 || src.ip().is_unspecified() {
            continue;
        }
        answer(&buf[..len], src, &socket, &handler, &mut out).await;
    }
}

async fn answer(
    bytes: &[u8],
    src: SocketAddr,
    socket: &UdpSocket,
    handler: &Responder,
    out: &mut Vec<u8>,
) {
    let mut decoder = BinDecoder::new(bytes);
    let Ok(header) = Header::read(&mut decoder) else {
        return;
    };
    if header.metadata.message_type == MessageType::Response {
        return;
    }
    let verdict = handler
        .limiter
        .as_ref()
        .map_or(Verdict::Send, |l| l.check(src.ip(), Instant::now()));
    let snap = handler.snapshot();
    if verdict == Verdict::Send
        && let Some(counted) = handler.cache.get(&snap, bytes, out)
    {
        handler.metrics.count(counted.qtype, counted.rcode);
        if let Err(error) = socket.send_to(out, src).await {
            tracing::debug!(%src, %error, "sending a DNS response");
        }
        return;
    }
    match Request::from_bytes(bytes.to_vec(), src, Protocol::Udp) {
        Ok(request) => {
            let reply = handler.respond_from(&snap, &request);
            let encoded = match verdict {
                Verdict::Send => answer::encode_udp(&request.queries, &reply, out),
                Verdict::Slip => {
                    handler.metrics.count_rate_limited(false);
                    answer::encode_udp_slip(&request.queries, &reply, out)
                }
                Verdict::Drop => {
                    handler.metrics.count_rate_limited(true);
                    return;
                }
            };
            if let Err(error) = encoded {
                tracing::error!(%error, "encoding a DNS response");
                out.clear();
                let mut metadata = Metadata::response_from_request(&request.metadata);
                metadata.response_code = ResponseCode::ServFail;
                let header = Header {
                    metadata,
                    counts: HeaderCounts::default(),
                };
                if header.emit(&mut BinEncoder::new(out)).is_err() {
                    return;
                }
            } else if verdict == Verdict::Send && !reply.drawn {
                let counted = Counted {
                    qtype: request.queries.queries().first().map(|q| q.query_type()),
                    rcode: reply.metadata.response_code,
                };
                handler.cache.put(&snap, bytes, out, counted);
            }
            if let Err(error) = socket.send_to(out, src).await {
                tracing::debug!(%src, %error, "sending a DNS response");
            }
        }
        Err(error) => {
            tracing::debug!(%src, %error, "malformed DNS query");
            let mut reply = Message::new(
                header.metadata.id,
                MessageType::Response,
                header.metadata.op_code,
            );
            reply.metadata.response_code = ResponseCode::FormErr;
            if let Ok(bytes) = reply.to_vec() {
                let _ = socket.send_to(&bytes, src).await;
            }
            handler.metrics.count(None, ResponseCode::FormErr);
        }
    }
}
