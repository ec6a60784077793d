//! Serving an axum [`Router`] with bounded inputs: the one HTTP server of the
//! controller and the agent ([`serve`]).
//!
//! What is bounded, and how ([`Limits`]; docs/controller.md, "Limits"):
//!
//! - **Connections**: at most [`Limits::max_connections`] at once. Past it the server
//!   stops accepting: further connections wait in the kernel's accept backlog and are
//!   taken, in order, as slots free up. Not accepted-and-closed: a legitimate client
//!   (an agent whose pooled connection just closed) then waits a moment instead of
//!   failing at once, and every slot frees within the header-read timeout unless its
//!   client is making requests. The cap keeps the process below its descriptor limit
//!   (an `accept` failing with EMFILE would stall every client). An agent's lease
//!   renewals share a pooled client with its reports (sent a few times a second), so
//!   its kept-alive connections are never idle long enough to be closed and do not
//!   queue behind idle ones; if a renewal ever did, it fails as an unreachable
//!   witness and the region holds on promises (rule 7, docs/architecture.md).
//! - **Headers**: a request's head must arrive within [`Limits::header_read_timeout`]
//!   (hyper's HTTP/1 `header_read_timeout`), counted from when the connection is ready
//!   for a request: a slowloris client is disconnected, and so is a connection idle
//!   that long (a fresh one that never sends a byte, or a keep-alive one between
//!   requests). HTTP/1 only: version detection (HTTP/2) would wait for the first bytes
//!   with no timeout.
//! - **Requests**: a handler must produce its response head within
//!   [`Limits::request_timeout`] (408 otherwise; reading the body counts). A streamed
//!   body (the dashboards' server-sent events) is not cut: it ends with the server.
//! - **Bodies**: at most [`Limits::max_body`] bytes through axum's extractors (413,
//!   see [`crate::http::JsonBody`]); a route may set its own (`DefaultBodyLimit` on the
//!   route wins).
//!
//! Graceful shutdown: when `shutdown` is cancelled the listener stops accepting, every
//! connection finishes the request in flight and closes, and [`serve`] returns when
//! the last one has.

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_http::timeout::TimeoutLayer;

/// The bounds [`serve`] enforces. [`Limits::default`] is what the controller and the
/// agent use.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Connections served at once; more wait in the accept backlog.
    pub max_connections: usize,
    /// Time for a request's head to arrive, and for an idle connection to stay open.
    pub header_read_timeout: Duration,
    /// Time for a handler to answer (its response head).
    pub request_timeout: Duration,
    /// Request body bytes the extractors read.
    pub max_body: usize,
}

/// 512 connections: far more than a deployment's agents, CLIs and dashboards, and
/// well inside the usual descriptor limit of 1,024.
pub const MAX_CONNECTIONS: usize = 512;
/// 10 s for a request's head (a renewing agent sends one every ttl / 3).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// 30 s to answer: the longest legitimate call is one a follower forwards to the
/// leader (at most 15 s, `FORWARD_TIMEOUT`); a move (`/v1/switchover`) answers once
/// it is started, not when it completes.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// 1 MiB of request body: every API body is a small JSON document (a drill report,
/// uploaded to `/v1/drills`, has a larger limit of its own).
pub const MAX_BODY: usize = 1 << 20;

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: MAX_CONNECTIONS,
            header_read_timeout: HEADER_READ_TIMEOUT,
            request_timeout: REQUEST_TIMEOUT,
            max_body: MAX_BODY,
        }
    }
}

/// Serve `app` on `listener` within `limits` until `shutdown` is cancelled, then stop
/// gracefully (see the module documentation). An error accepting a connection (out of
/// descriptors, say) is logged and retried after a second, as `axum::serve` does;
/// an error on one connection (a header timeout, a reset) ends that connection only.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app =
        app.layer(DefaultBodyLimit::max(limits.max_body))
            .layer(TimeoutLayer::with_status_code(
                StatusCode::REQUEST_TIMEOUT,
                limits.request_timeout,
            ));
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let connections = TaskTracker::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    loop {
        // A slot first: at the cap, connections wait in the backlog.
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    tracing::error!("accepting a connection: {e}; retrying in 1 s");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            },
        };
        let service = TowerToHyperService::new(app.clone());
        let conn = http.serve_connection(TokioIo::new(stream), service);
        let stop = shutdown.clone();
        connections.spawn(async move {
            let _permit = permit;
            let mut conn = std::pin::pin!(conn.with_upgrades());
            let result = tokio::select! {
                r = conn.as_mut() => r,
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, "connection ended: {e}");
            }
        });
    }
    drop(listener);
    connections.close();
    connections.wait().await;
    Ok(())
}

/// Errors of one connection that `accept` reports (the peer gave up before it was
/// taken): nothing to wait for, take the next.
fn is_connection_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}
