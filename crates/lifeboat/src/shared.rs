//! What several subcommands share: reading the config, naming a region of it, an API
//! client for the controller, stopping on a signal, and the `listening <what> <addr>`
//! line the long-running processes print for every socket they bind.

use anyhow::{Context, Result};
use lifeboat_api::ApiClient;
use lifeboat_config::Config;
use lifeboat_core::RegionId;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Read and validate a config file (its errors name file, line and key).
pub(crate) fn load_config(path: &Path) -> Result<Arc<Config>> {
    Config::load(path)
        .map(Arc::new)
        .map_err(|e| anyhow::anyhow!("{e}"))
}

/// Cancel the token on SIGINT or SIGTERM.
pub(crate) fn cancel_on_signal(cancel: CancellationToken) {
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!("cannot listen for SIGTERM: {e}");
                    let _ = tokio::signal::ctrl_c().await;
                    cancel.cancel();
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down");
        cancel.cancel();
    });
}

/// Print `listening <what> <addr>` on stdout: scripts and tests read back ports bound as 0.
pub(crate) fn announce(what: &str, addr: impl std::fmt::Display) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "listening {what} {addr}");
    let _ = out.flush();
}

/// `--region NAME`, checked against the config's regions.
pub(crate) fn region_of(cfg: &Config, region: &str) -> Result<RegionId> {
    let id = RegionId::new(region);
    anyhow::ensure!(
        cfg.region(&id).is_some(),
        "--region {region}: no such region in {} (regions: {})",
        cfg.source.display(),
        cfg.regions.keys().cloned().collect::<Vec<_>>().join(", ")
    );
    Ok(id)
}

/// A client of the controller's API (every controller of the deployment, in turn).
/// `with_token`: the bearer token must load (commands that change state); without
/// it, a token that does not load is left out.
pub(crate) fn api_client(cfg: &Config, with_token: bool) -> Result<ApiClient> {
    let token = if with_token {
        Some(cfg.auth.secret().load().with_context(|| {
            format!(
                "loading the bearer token named in {} [auth]",
                cfg.source.display()
            )
        })?)
    } else {
        cfg.auth.secret().load().ok()
    };
    Ok(ApiClient::any_of(
        cfg.controller.api_urls(),
        token,
        Duration::from_secs(10),
    ))
}
