//! Binding the sockets of the long-running processes (controller and agent): the API
//! port, retried while a predecessor's is still held, and DNS on UDP and TCP at one
//! address. Each bound socket is announced ([`crate::shared::announce`]).

use crate::shared::announce;
use anyhow::{Context, Result};

/// Bind an API port, retrying for a few seconds while it is still in use (a process
/// restarted right after a crash can find its port briefly held).
pub(crate) async fn bind_api(
    addr: std::net::SocketAddr,
) -> std::io::Result<tokio::net::TcpListener> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match tokio::net::TcpListener::bind(addr).await {
            Err(e)
                if e.kind() == std::io::ErrorKind::AddrInUse
                    && tokio::time::Instant::now() < deadline =>
            {
                tracing::warn!("{addr} is in use; retrying");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            other => return other,
        }
    }
}

/// Bind DNS on UDP and TCP at the same address (port 0: the same free port for both).
pub(crate) async fn bind_dns(
    addr: std::net::SocketAddr,
    key: &str,
) -> Result<(tokio::net::UdpSocket, tokio::net::TcpListener)> {
    // With port 0 the kernel picks a free UDP port whose TCP twin may be taken:
    // try again with another one. A configured port is bound as it is.
    let attempts = if addr.port() == 0 { 50 } else { 1 };
    let mut last_err = None;
    for _ in 0..attempts {
        let udp = tokio::net::UdpSocket::bind(addr)
            .await
            .with_context(|| format!("binding DNS (UDP) on {addr} ({key})"))?;
        let bound = udp.local_addr()?;
        match tokio::net::TcpListener::bind(bound).await {
            Ok(tcp) => {
                announce("dns", bound);
                return Ok((udp, tcp));
            }
            Err(e) => last_err = Some((bound, e)),
        }
    }
    let (bound, e) = last_err.context("no DNS bind attempt was made")?;
    Err(anyhow::Error::new(e).context(format!("binding DNS (TCP) on {bound} ({key})")))
}
