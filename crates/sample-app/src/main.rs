//! `lifeboat-sample-app`: parse flags, bind, print the address, serve until SIGTERM/SIGINT.

use anyhow::Context as _;
use clap::Parser as _;
use lifeboat_sample_app::{Options, serve};
use std::io::Write as _;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let opts = Options::parse();
    let listener = tokio::net::TcpListener::bind(opts.bind)
        .await
        .with_context(|| format!("binding {}", opts.bind))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    // A supervisor or test reads the address from this line. Failing to print it (a
    // closed stdout) must not stop the service: the log says the same.
    {
        let mut out = std::io::stdout().lock();
        if let Err(e) = writeln!(out, "listening app http://{addr}").and_then(|()| out.flush()) {
            tracing::warn!(error = %e, "cannot print the address on stdout");
        }
    }
    tracing::info!(%addr, region = %opts.region, discovery = %opts.discovery, "sample app up");
    let cancel = CancellationToken::new();
    tokio::spawn(stop_on_signal(cancel.clone()));
    serve(listener, opts, cancel).await?;
    tracing::info!("sample app stopped");
    Ok(())
}

async fn stop_on_signal(cancel: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
    cancel.cancel();
}
