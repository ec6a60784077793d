//! The UDP path: several tasks share the socket, each receiving a query, answering it
//! through the catalog and sending the response itself.
//!
//! Why not `hickory_server::Server::register_socket`: it spawns a task per query and passes
//! every response through a channel to a sender task, three task hops per packet; on a
//! small machine that costs more than the lookup. The wire work stays hickory's: requests
//! are decoded by `Request::from_bytes`, responses encoded by `MessageResponse`, with the
//! same size limit hickory applies (512 bytes without EDNS, else the advertised payload
//! size, never less than 512), so truncation sets TC exactly as hickory's server does.
//!
//! Guarantees: a packet shorter than a header or marked as a response is dropped (no
//! reflection); one whose header parses but whose body does not gets FORMERR; nothing a
//! client sends can stop a receiving task.

use crate::CountingHandler;
use hickory_server::net::NetError;
use hickory_server::net::runtime::TokioTime;
use hickory_server::net::xfer::Protocol;
use hickory_server::proto::op::{
    Header, HeaderCounts, Message, MessageType, Metadata, ResponseCode,
};
use hickory_server::proto::rr::Record;
use hickory_server::proto::serialize::binary::{
    BinDecodable, BinDecoder, BinEncodable, BinEncoder,
};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponse;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

/// The largest query accepted over UDP (queries are small; EDNS answers may be large).
const MAX_QUERY: usize = 4096;
/// A socket that fails this many times in a row is broken, not unlucky.
const MAX_CONSECUTIVE_ERRORS: u32 = 1000;

/// Receive and answer queries on `socket` until `cancel`.
pub(crate) async fn serve(
    socket: Arc<UdpSocket>,
    handler: Arc<CountingHandler>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let mut buf = vec![0u8; MAX_QUERY];
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
        answer(&buf[..len], src, &socket, &handler).await;
    }
}

async fn answer(bytes: &[u8], src: SocketAddr, socket: &Arc<UdpSocket>, handler: &CountingHandler) {
    let mut decoder = BinDecoder::new(bytes);
    let Ok(header) = Header::read(&mut decoder) else {
        return;
    };
    if header.metadata.message_type == MessageType::Response {
        return;
    }
    let responder = UdpResponder {
        socket: socket.clone(),
        dst: src,
    };
    match Request::from_bytes(bytes.to_vec(), src, Protocol::Udp) {
        Ok(request) => {
            handler
                .handle_request::<_, TokioTime>(&request, responder)
                .await;
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

/// Encodes a response within the UDP size limit and sends it from the shared socket.
#[derive(Clone)]
struct UdpResponder {
    socket: Arc<UdpSocket>,
    dst: SocketAddr,
}

#[async_trait::async_trait]
impl ResponseHandler for UdpResponder {
    async fn send_response<'a>(
        &mut self,
        response: MessageResponse<
            '_,
            'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
        >,
    ) -> Result<ResponseInfo, NetError> {
        // RFC 1035 4.2.1: 512 bytes without EDNS; RFC 6891: the requestor's payload size.
        let max = response.edns().map_or(512, |e| e.max_payload().max(512));
        let (id, op_code) = (response.metadata().id, response.metadata().op_code);
        let mut buf = Vec::with_capacity(512);
        let mut encoder = BinEncoder::new(&mut buf);
        encoder.set_max_size(max);
        let info = match response.destructive_emit(&mut encoder) {
            Ok(info) => info,
            Err(error) => {
                tracing::error!(%error, "encoding a DNS response");
                buf.clear();
                let mut metadata = Metadata::new(id, MessageType::Response, op_code);
                metadata.response_code = ResponseCode::ServFail;
                let header = Header {
                    metadata,
                    counts: HeaderCounts::default(),
                };
                header.emit(&mut BinEncoder::new(&mut buf))?;
                ResponseInfo::from(header)
            }
        };
        self.socket.send_to(&buf, self.dst).await?;
        Ok(info)
    }
}
