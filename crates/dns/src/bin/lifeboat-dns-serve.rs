//! Serve the `[dns]` zone of a config file with a fixed routing table (the config's
//! initial active region, every region and check healthy). For benchmarks and manual
//! testing (`dig @127.0.0.1 -p PORT ...`); the controller and agents embed `DnsServer`.
//!
//! Usage: `lifeboat-dns-serve CONFIG [ADDR]` (ADDR defaults to 127.0.0.1:0). Prints
//! `udp=IP:PORT tcp=IP:PORT` once both sockets are bound, then serves until SIGINT/SIGTERM.

use anyhow::Context;
use lifeboat_core::{HealthStatus, RegionId, RoutingTable};
use lifeboat_dns::DnsServer;
use std::net::SocketAddr;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .context("usage: lifeboat-dns-serve CONFIG [ADDR]")?;
    let addr: SocketAddr = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:0".to_owned())
        .parse()
        .context("ADDR is ip:port")?;
    let cfg = lifeboat_config::Config::load(path.as_ref())?;

    let mut table = RoutingTable {
        version: 1,
        active: cfg.initial_active(),
        ..Default::default()
    };
    for r in cfg.regions.keys() {
        table
            .regions
            .insert(RegionId::new(r), HealthStatus::Healthy);
    }
    for c in cfg.checks.keys() {
        table.checks.insert(c.clone(), HealthStatus::Healthy);
    }
    let (_tx, rx) = tokio::sync::watch::channel(table);
    let server = DnsServer::new(&cfg, rx)?;

    let (udp, tcp) = bind(addr).await?;
    println!("udp={} tcp={}", udp.local_addr()?, tcp.local_addr()?);

    let cancel = CancellationToken::new();
    let stop = cancel.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
        stop.cancel();
    });
    server.run(udp, tcp, cancel).await
}

/// UDP and TCP on the same port. With port 0 the OS picks the UDP port, and its TCP twin
/// may be taken by another program: then another port is tried (a few times).
async fn bind(
    addr: SocketAddr,
) -> anyhow::Result<(tokio::net::UdpSocket, tokio::net::TcpListener)> {
    let mut tries = 0;
    loop {
        let udp = tokio::net::UdpSocket::bind(addr)
            .await
            .with_context(|| format!("binding UDP {addr}"))?;
        let at = udp.local_addr()?;
        match tokio::net::TcpListener::bind(at).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) if addr.port() == 0 && tries < 20 => {
                tries += 1;
                tracing::debug!(%at, error = %e, "TCP port taken; trying another");
            }
            Err(e) => return Err(anyhow::Error::new(e).context(format!("binding TCP {at}"))),
        }
    }
}
