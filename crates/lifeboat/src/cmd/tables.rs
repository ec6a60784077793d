//! `lifeboat tables …`: global tables (docs/tables.md).
//!
//! `lifeboat tables serve --config F --region R` runs region R's table server: a
//! process of its own beside the agent, not inside it, so that an agent restart
//! (an upgrade, a crash, a freeze) never takes the application's table away. Tables
//! are multi-active: every region takes writes, and no lease or fence gates them.

use crate::shared::{announce, cancel_on_signal, load_config, region_of};
use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

#[derive(Subcommand, Debug)]
pub enum TablesCommand {
    /// Run one region's table server (DynamoDB's API, SigV4) until SIGTERM.
    Serve(ServeArgs),
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[arg(long)]
    pub config: PathBuf,
    /// The region whose table server this is ([tables.regions.NAME]).
    #[arg(long)]
    pub region: String,
}

pub(crate) async fn run(command: TablesCommand) -> Result<ExitCode> {
    match command {
        TablesCommand::Serve(args) => serve(args).await,
    }
}

async fn serve(args: ServeArgs) -> Result<ExitCode> {
    let cfg = load_config(&args.config)?;
    let region = region_of(&cfg, &args.region)?;
    let tables = cfg
        .tables
        .as_ref()
        .with_context(|| format!("{} has no [tables] section", cfg.source.display()))?;
    let rc = tables.regions.get(region.as_str()).with_context(|| {
        format!(
            "{}: region {region} runs no table server (no [tables.regions.{region}])",
            cfg.source.display()
        )
    })?;
    let mut keys = lifeboat_tables::server::AccessKeys::new();
    for k in &tables.access_keys {
        let secret = k
            .secret()
            .load()
            .with_context(|| format!("loading the secret of table access key {}", k.id))?;
        keys.insert(k.id.clone(), secret);
    }
    let dir = cfg
        .tables_data_dir(&region)
        .context("the table server's data directory")?;
    let store = lifeboat_tables::store::Store::open(&dir, region.as_str())?;
    let token = cfg.auth.secret().load().with_context(|| {
        format!(
            "loading the bearer token named in {} [auth] (the table servers' link)",
            cfg.source.display()
        )
    })?;
    let peers = tables
        .regions
        .iter()
        .filter(|(name, _)| name.as_str() != region.as_str())
        .map(|(name, r)| lifeboat_tables::replicate::Peer {
            region: name.clone(),
            url: r.peer_base(),
        })
        .collect();
    let api = tokio::net::TcpListener::bind(rc.listen)
        .await
        .with_context(|| {
            format!(
                "binding the table server of region {region} to {}",
                rc.listen
            )
        })?;
    let peer = tokio::net::TcpListener::bind(rc.peer_listen)
        .await
        .with_context(|| {
            format!(
                "binding the table server's peer port of region {region} to {}",
                rc.peer_listen
            )
        })?;
    announce("tables", api.local_addr()?);
    announce("tables-peer", peer.local_addr()?);
    tracing::info!(%region, data = %dir.display(), "table server up");
    let cancel = CancellationToken::new();
    cancel_on_signal(cancel.clone());
    let opts = lifeboat_tables::server::TableOptions { keys, token, peers };
    lifeboat_tables::server::TableServer::new(store, opts)
        .run(api, peer, cancel)
        .await?;
    Ok(ExitCode::SUCCESS)
}
