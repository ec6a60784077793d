//! The bounded server (lifeboat_api::serve) on real sockets: a body over the limit is
//! a 413, a client that sends its headers too slowly is disconnected, a handler that
//! takes too long is a 408, connections over the cap wait and are then served, and a
//! cancelled server stops. Short limits through [`Limits`], so nothing waits long.
#![allow(clippy::unwrap_used)]

use axum::Router;
use axum::routing::{get, post};
use lifeboat_api::http::JsonBody;
use lifeboat_api::serve::{Limits, serve};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

fn app() -> Router {
    Router::new()
        .route("/", get(|| async { "ok" }))
        .route(
            "/echo",
            post(|JsonBody(v): JsonBody<serde_json::Value>| async move { v.to_string() }),
        )
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(60)).await;
                "late"
            }),
        )
}

async fn start(limits: Limits) -> (SocketAddr, CancellationToken, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let s = stop.clone();
    let h = tokio::spawn(async move { serve(listener, app(), limits, s).await.unwrap() });
    (addr, stop, h)
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .no_proxy()
        .build()
        .unwrap()
}

#[tokio::test]
async fn a_body_over_the_limit_is_a_413_and_one_within_is_served() {
    let (addr, stop, h) = start(Limits {
        max_body: 1024,
        ..Limits::default()
    })
    .await;
    let small = serde_json::json!({ "x": "y".repeat(100) });
    let r = client()
        .post(format!("http://{addr}/echo"))
        .json(&small)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let big = serde_json::json!({ "x": "y".repeat(4096) });
    let r = client()
        .post(format!("http://{addr}/echo"))
        .json(&big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 413);
    let body: serde_json::Value = r.json().await.unwrap();
    let msg = body["error"].as_str().unwrap();
    assert!(msg.contains("request body too large"), "{msg}");
    stop.cancel();
    h.await.unwrap();
}

#[tokio::test]
async fn a_client_sending_its_headers_too_slowly_is_disconnected() {
    let (addr, stop, h) = start(Limits {
        header_read_timeout: Duration::from_millis(300),
        ..Limits::default()
    })
    .await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = s.split();
    let head = b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let mut got = Vec::new();
    // One byte every 50 ms (never the whole head) until the server hangs up.
    let trickle = async {
        for b in head {
            if wr.write_all(&[*b]).await.is_err() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    };
    let closed = tokio::select! {
        r = rd.read_to_end(&mut got) => { let _ = r; true }
        cut = trickle => cut,
    };
    assert!(
        closed,
        "the connection was still open after the whole slow head"
    );
    let text = String::from_utf8_lossy(&got);
    assert!(!text.contains("200 OK"), "no request was served: {text}");
    // Others are still served.
    let r = client()
        .get(format!("http://{addr}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    stop.cancel();
    h.await.unwrap();
}

#[tokio::test]
async fn an_idle_connection_is_closed_after_the_header_read_timeout() {
    let (addr, stop, h) = start(Limits {
        header_read_timeout: Duration::from_millis(200),
        ..Limits::default()
    })
    .await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 64];
    // Never sends a byte: the server closes it (read returns 0, or a reset).
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .expect("the idle connection is closed");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    stop.cancel();
    h.await.unwrap();
}

#[tokio::test]
async fn a_handler_slower_than_the_request_timeout_is_a_408() {
    let (addr, stop, h) = start(Limits {
        request_timeout: Duration::from_millis(200),
        ..Limits::default()
    })
    .await;
    let r = client()
        .get(format!("http://{addr}/slow"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 408);
    stop.cancel();
    h.await.unwrap();
}

#[tokio::test]
async fn connections_over_the_cap_wait_and_are_served_once_a_slot_frees() {
    let (addr, stop, h) = start(Limits {
        max_connections: 2,
        header_read_timeout: Duration::from_millis(300),
        ..Limits::default()
    })
    .await;
    // Two idle connections take both slots; the request on a third waits in the
    // backlog until the header-read timeout closes them, then is answered.
    let idle = [
        TcpStream::connect(addr).await.unwrap(),
        TcpStream::connect(addr).await.unwrap(),
    ];
    let r = client()
        .get(format!("http://{addr}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    drop(idle);
    stop.cancel();
    h.await.unwrap();
}

#[tokio::test]
async fn a_cancelled_server_stops_and_closes_its_idle_connections() {
    let (addr, stop, h) = start(Limits::default()).await;
    let c = client();
    // A kept-alive connection (reqwest pools it) does not hold the stop up.
    let r = c.get(format!("http://{addr}/")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), h)
        .await
        .expect("the server stops")
        .unwrap();
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "no longer listening"
    );
}
