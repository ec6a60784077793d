//! Probes against real servers on 127.0.0.1 (port 0): HTTP status rules, redirects not
//! followed, body search bounded to 5,120 bytes, timeouts, HTTPS with a self-signed
//! certificate, TCP, thresholds, inversion and calculated checks, all through the public
//! `Prober` API the controller and agents use.

mod common;

use common::*;
use lifeboat_core::{HealthStatus, VantageId};
use lifeboat_health::Prober;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

// ---------------------------------------------------------------- test servers

/// What the test HTTP server answers.
#[derive(Clone)]
enum Reply {
    /// A complete response with this status and body (3xx carry a Location that
    /// points at a closed port, so following it would fail).
    Status(u16, Vec<u8>),
    /// 200 with this body prefix, then filler bytes forever (a body with no end).
    Endless(Vec<u8>),
    /// Accept, read the request, never answer.
    Silent,
}

/// A tiny HTTP/1.1 server (plain or TLS) whose reply the test can change.
struct Server {
    addr: SocketAddr,
    reply: Arc<Mutex<Reply>>,
    requests: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    async fn http(reply: Reply) -> Server {
        Self::start(reply, None).await
    }

    async fn https(reply: Reply) -> Server {
        // A self-signed certificate for a name the probe does not even use.
        let key = rcgen::generate_simple_self_signed(vec!["not-this-host.example".to_owned()])
            .expect("self-signed certificate");
        let cert = rustls::pki_types::CertificateDer::from(key.cert.der().to_vec());
        let private =
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.signing_key.serialize_der().into());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(vec![cert], private)
            .expect("server certificate");
        Self::start(
            reply,
            Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))),
        )
        .await
    }

    async fn start(reply: Reply, tls: Option<tokio_rustls::TlsAcceptor>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let reply = Arc::new(Mutex::new(reply));
        let requests = Arc::new(AtomicU64::new(0));
        let (r, n) = (reply.clone(), requests.clone());
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                let (r, n, tls) = (r.clone(), n.clone(), tls.clone());
                conns.spawn(async move {
                    match tls {
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(stream).await {
                                serve(stream, &r, &n).await;
                            }
                        }
                        None => serve(stream, &r, &n).await,
                    }
                });
            }
        });
        Server {
            addr,
            reply,
            requests,
            task,
        }
    }

    fn set(&self, reply: Reply) {
        *self.reply.lock().expect("reply lock") = reply;
    }

    fn url(&self, scheme: &str) -> String {
        format!("{scheme}://{}/health", self.addr)
    }
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    reply: &Mutex<Reply>,
    requests: &AtomicU64,
) {
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    requests.fetch_add(1, Ordering::SeqCst);
    let reply = reply.lock().expect("reply lock").clone();
    match reply {
        Reply::Status(code, body) => {
            let mut head = format!(
                "HTTP/1.1 {code} Test\r\nContent-Length: {}\r\nConnection: close\r\n",
                body.len()
            );
            if (300..400).contains(&code) {
                head.push_str("Location: http://127.0.0.1:1/elsewhere\r\n");
            }
            head.push_str("\r\n");
            let _ = stream.write_all(head.as_bytes()).await;
            let _ = stream.write_all(&body).await;
            let _ = stream.shutdown().await;
        }
        Reply::Endless(prefix) => {
            let head = "HTTP/1.1 200 OK\r\nContent-Length: 1000000000000\r\n\r\n";
            let _ = stream.write_all(head.as_bytes()).await;
            let _ = stream.write_all(&prefix).await;
            let filler = vec![b'.'; 4096];
            while stream.write_all(&filler).await.is_ok() {}
        }
        Reply::Silent => {
            // Hold the connection until the client gives up.
            while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
        }
    }
}

/// A port nothing listens on: bound but not listening, so connections are refused and
/// no other test can take the port while the returned socket lives.
fn closed_port() -> (tokio::net::TcpSocket, SocketAddr) {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    let addr = socket.local_addr().expect("local addr");
    (socket, addr)
}

fn http_check(name: &str, kind: &str, url: &str, extra: &str) -> String {
    format!(
        "[checks.{name}]\ntype = \"{kind}\"\nurl = \"{url}\"\ninterval = \"50ms\"\ntimeout = \"2s\"\nfailure_threshold = 1\n{extra}\n"
    )
}

fn tcp_check(name: &str, addr: SocketAddr, extra: &str) -> String {
    format!(
        "[checks.{name}]\ntype = \"tcp\"\naddr = \"{addr}\"\ninterval = \"50ms\"\ntimeout = \"2s\"\nfailure_threshold = 1\n{extra}\n"
    )
}

// ---------------------------------------------------------------- HTTP

#[tokio::test]
async fn http_200_is_healthy() {
    let server = Server::http(Reply::Status(200, b"fine".to_vec())).await;
    let mut p = start(&http_check("web", "http", &server.url("http"), ""));
    let s = p.status("web", HealthStatus::Healthy).await;
    assert_eq!(s.detail, "HTTP 200");
    assert_eq!(s.last_ok, Some(true));
    // A real request to a real server takes some time, and not a minute.
    assert!(
        s.latency_ms.is_some_and(|ms| ms > 0.0 && ms < 60_000.0),
        "{:?}",
        s.latency_ms
    );
    assert!(s.changed_at_unix_ms.is_some());
}

#[tokio::test]
async fn http_500_is_unhealthy() {
    let server = Server::http(Reply::Status(500, b"broken".to_vec())).await;
    let mut p = start(&http_check("web", "http", &server.url("http"), ""));
    let s = p.status("web", HealthStatus::Unhealthy).await;
    assert_eq!(s.detail, "HTTP 500");
    assert_eq!(s.last_ok, Some(false));
}

#[tokio::test]
async fn http_301_is_healthy_and_not_followed() {
    // The Location points at a closed port: following it would fail the probe.
    let server = Server::http(Reply::Status(301, Vec::new())).await;
    let mut p = start(&http_check("web", "http", &server.url("http"), ""));
    let s = p.status("web", HealthStatus::Healthy).await;
    assert_eq!(s.detail, "HTTP 301");
}

#[tokio::test]
async fn search_finds_substring_in_body() {
    let server = Server::http(Reply::Status(200, b"<html>status: ok</html>".to_vec())).await;
    let mut p = start(&http_check(
        "web",
        "http",
        &server.url("http"),
        "search = \"status: ok\"",
    ));
    let s = p.status("web", HealthStatus::Healthy).await;
    assert_eq!(s.detail, "HTTP 200, found \"status: ok\"");
}

#[tokio::test]
async fn search_missing_substring_is_unhealthy() {
    let server = Server::http(Reply::Status(200, b"status: degraded".to_vec())).await;
    let mut p = start(&http_check(
        "web",
        "http",
        &server.url("http"),
        "search = \"ok\"",
    ));
    let s = p.status("web", HealthStatus::Unhealthy).await;
    assert_eq!(s.detail, "substring \"ok\" not in first 5120 bytes");
}

#[tokio::test]
async fn search_looks_at_exactly_the_first_5120_bytes() {
    // "ok" ending at byte 5120 is found …
    let mut inside = vec![b'x'; 5118];
    inside.extend_from_slice(b"ok");
    inside.extend_from_slice(&[b'x'; 100]);
    let server = Server::http(Reply::Status(200, inside)).await;
    let mut p = start(&http_check(
        "web",
        "http",
        &server.url("http"),
        "search = \"ok\"",
    ));
    p.status("web", HealthStatus::Healthy).await;

    // … one byte later it is not.
    let mut outside = vec![b'x'; 5119];
    outside.extend_from_slice(b"ok");
    server.set(Reply::Status(200, outside));
    let s = p.status("web", HealthStatus::Unhealthy).await;
    assert_eq!(s.detail, "substring \"ok\" not in first 5120 bytes");
}

#[tokio::test]
async fn search_never_reads_the_whole_body() {
    // A body that never ends, with the needle after byte 5120: a probe that read the
    // whole body would time out; this one must stop at 5120 bytes and say why.
    let mut prefix = vec![b'x'; 5120];
    prefix.extend_from_slice(b"ok");
    let server = Server::http(Reply::Endless(prefix)).await;
    let mut p = start(&http_check(
        "web",
        "http",
        &server.url("http"),
        "search = \"ok\"",
    ));
    let s = p.status("web", HealthStatus::Unhealthy).await;
    assert_eq!(s.detail, "substring \"ok\" not in first 5120 bytes");

    // With the needle inside the first 5120 bytes of the same endless body: healthy.
    server.set(Reply::Endless(b"ok".to_vec()));
    p.status("web", HealthStatus::Healthy).await;
}

#[tokio::test]
async fn server_that_never_answers_times_out() {
    let server = Server::http(Reply::Silent).await;
    let check = format!(
        "[checks.web]\ntype = \"http\"\nurl = \"{}\"\ninterval = \"100ms\"\ntimeout = \"300ms\"\nfailure_threshold = 1\n",
        server.url("http")
    );
    let mut p = start(&check);
    let s = p.status("web", HealthStatus::Unhealthy).await;
    assert_eq!(s.detail, "timed out after 300ms");
    assert!(
        server.requests.load(Ordering::SeqCst) >= 1,
        "the request did arrive"
    );
    // The timeout bounds the probe: it reports about when the timeout expired.
    assert!(s.latency_ms.is_some_and(|ms| ms >= 300.0), "{s:?}");
}

#[tokio::test]
async fn closed_http_port_reads_connection_refused() {
    let (_reserved, addr) = closed_port();
    let mut p = start(&http_check("web", "http", &format!("http://{addr}/"), ""));
    let s = p.status("web", HealthStatus::Unhealthy).await;
    assert_eq!(s.detail, "connection refused");
}

#[tokio::test]
async fn https_with_self_signed_certificate_is_healthy() {
    let server = Server::https(Reply::Status(200, b"secure ok".to_vec())).await;
    let mut p = start(&http_check(
        "web",
        "https",
        &server.url("https"),
        "search = \"ok\"",
    ));
    let s = p.status("web", HealthStatus::Healthy).await;
    assert_eq!(s.detail, "HTTP 200, found \"ok\"");
    server.set(Reply::Status(503, Vec::new()));
    let s = p.status("web", HealthStatus::Unhealthy).await;
    assert_eq!(s.detail, "HTTP 503");
}

#[tokio::test]
async fn every_probe_connects_afresh_so_a_closed_listener_is_seen() {
    // A keep-alive server: it would happily answer every probe on one connection.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let connections = Arc::new(AtomicU64::new(0));
    let counted = connections.clone();
    let accept = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            // Detached: open connections outlive the listener.
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 {
                        return;
                    }
                    let reply = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                    if stream.write_all(reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let mut p = start(&http_check("web", "http", &format!("http://{addr}/"), ""));
    let s = p
        .until("web", |s| {
            s.status == HealthStatus::Healthy && s.probes >= 3
        })
        .await;
    assert!(
        connections.load(Ordering::SeqCst) >= s.probes,
        "one connection per probe"
    );

    // The listener goes away while connections stay open: probes must notice.
    accept.abort();
    let s = p.status("web", HealthStatus::Unhealthy).await;
    assert_eq!(s.detail, "connection refused");
}

// ---------------------------------------------------------------- TCP

#[tokio::test]
async fn tcp_open_port_is_healthy_closed_port_is_not() {
    let open = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let (_reserved, closed) = closed_port();
    let checks =
        tcp_check("open", open.local_addr().expect("addr"), "") + &tcp_check("closed", closed, "");
    let mut p = start(&checks);
    let s = p.status("open", HealthStatus::Healthy).await;
    assert_eq!(s.detail, "connected");
    let s = p.status("closed", HealthStatus::Unhealthy).await;
    assert_eq!(s.detail, "connection refused");
}

// ---------------------------------------------------------------- threshold, inversion

#[tokio::test]
async fn threshold_holds_state_until_n_consecutive_results_both_ways() {
    const N: u32 = 3;
    let server = Server::http(Reply::Status(500, Vec::new())).await;
    let check = format!(
        "[checks.web]\ntype = \"http\"\nurl = \"{}\"\ninterval = \"50ms\"\ntimeout = \"2s\"\nfailure_threshold = {N}\n",
        server.url("http")
    );
    let mut p = start(&check);

    // Unknown until N failures in a row; every state seen on the way obeys the rule.
    let s = p
        .until("web", |s| {
            assert!(
                s.status == HealthStatus::Unhealthy || s.consecutive < N,
                "status must change after exactly {N} results: {s:?}"
            );
            assert_ne!(s.status, HealthStatus::Healthy, "{s:?}");
            s.status == HealthStatus::Unhealthy
        })
        .await;
    assert!(s.consecutive >= N, "{s:?}");
    assert!(s.probes >= u64::from(N), "{s:?}");

    // The server recovers: the check stays Unhealthy through N-1 good results.
    server.set(Reply::Status(200, Vec::new()));
    let s = p
        .until("web", |s| {
            if s.last_ok == Some(true) && s.consecutive < N {
                assert_eq!(
                    s.status,
                    HealthStatus::Unhealthy,
                    "changed too early: {s:?}"
                );
            }
            s.status == HealthStatus::Healthy
        })
        .await;
    assert!(s.consecutive >= N && s.last_ok == Some(true), "{s:?}");

    // And back down: N-1 failures are not enough.
    server.set(Reply::Status(503, Vec::new()));
    let s = p
        .until("web", |s| {
            if s.last_ok == Some(false) && s.consecutive < N {
                assert_eq!(s.status, HealthStatus::Healthy, "changed too early: {s:?}");
            }
            s.status == HealthStatus::Unhealthy
        })
        .await;
    assert_eq!(s.detail, "HTTP 503");
}

#[tokio::test]
async fn inverted_checks_flip_the_result() {
    let server = Server::http(Reply::Status(200, Vec::new())).await;
    let (_reserved, closed) = closed_port();
    let checks = http_check(
        "up-inverted",
        "http",
        &server.url("http"),
        "inverted = true",
    ) + &tcp_check("down-inverted", closed, "inverted = true");
    let mut p = start(&checks);
    let s = p.status("up-inverted", HealthStatus::Unhealthy).await;
    assert_eq!(s.detail, "inverted: HTTP 200");
    assert_eq!(s.last_ok, Some(false));
    let s = p.status("down-inverted", HealthStatus::Healthy).await;
    assert_eq!(s.detail, "inverted: connection refused");
}

// ---------------------------------------------------------------- calculated

#[tokio::test]
async fn calculated_checks_combine_local_child_states() {
    let up = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let up_addr = up.local_addr().expect("addr");
    let server = Server::http(Reply::Status(200, Vec::new())).await;
    let (_reserved, down) = closed_port();
    let checks = tcp_check("up", up_addr, "")
        + &http_check("flip", "http", &server.url("http"), "")
        + &tcp_check("down", down, "")
        + r#"
[checks.all]
type = "calculated"
children = ["up", "flip", "down"]
op = "and"
[checks.any]
type = "calculated"
children = ["up", "flip", "down"]
op = "or"
[checks.two]
type = "calculated"
children = ["up", "flip", "down"]
min_healthy = 2
[checks.up-and-flip]
type = "calculated"
children = ["up", "flip"]
"#;
    let mut p = start(&checks);
    p.status("up", HealthStatus::Healthy).await;
    p.status("flip", HealthStatus::Healthy).await;
    p.status("down", HealthStatus::Unhealthy).await;
    let s = p.status("all", HealthStatus::Unhealthy).await;
    assert_eq!(s.detail, "2 of 3 children healthy, 0 unknown (needs 3)");
    p.status("any", HealthStatus::Healthy).await;
    p.status("two", HealthStatus::Healthy).await;
    p.status("up-and-flip", HealthStatus::Healthy).await;

    // A child changes: the calculated checks follow without a probe of their own.
    server.set(Reply::Status(500, Vec::new()));
    p.status("flip", HealthStatus::Unhealthy).await;
    let s = p.status("two", HealthStatus::Unhealthy).await;
    assert_eq!(s.detail, "1 of 3 children healthy, 0 unknown (needs 2)");
    p.status("up-and-flip", HealthStatus::Unhealthy).await;
    let s = p.until("any", |s| s.status != HealthStatus::Unknown).await;
    assert_eq!(
        s.status,
        HealthStatus::Healthy,
        "one child is still up: {s:?}"
    );
}

#[tokio::test]
async fn prober_stops_when_cancelled() {
    let server = Server::http(Reply::Status(200, Vec::new())).await;
    let prober = Prober::new(
        &config(&http_check("web", "http", &server.url("http"), "")),
        VantageId::Controller,
    )
    .expect("prober");
    let mut states = prober.subscribe();
    let cancel = CancellationToken::new();
    let task = tokio::spawn(prober.run(cancel.clone()));
    states.changed().await.expect("a first probe");
    cancel.cancel();
    tokio::time::timeout(DEADLINE, task)
        .await
        .expect("run returns after cancel")
        .expect("join")
        .expect("run result");
    // The sender is gone with the prober: subscribers see the end of the channel.
    tokio::time::timeout(DEADLINE, async { while states.changed().await.is_ok() {} })
        .await
        .expect("the states channel closes when the prober stops");
}
