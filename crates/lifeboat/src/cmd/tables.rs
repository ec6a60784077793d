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
    /// List the writes that lost to a concurrent write (last writer wins): both
    /// versions, both regions, both times, from every region's table server.
    Conflicts(ConflictsArgs),
}

#[derive(Args, Debug)]
pub struct ConflictsArgs {
    #[arg(long)]
    pub config: PathBuf,
    /// Only this table's.
    #[arg(long)]
    pub table: Option<String>,
    /// Only the conflicts this region recorded (its writes that lost).
    #[arg(long)]
    pub region: Option<String>,
    /// One JSON document: each region's conflicts as its table server lists them.
    #[arg(long)]
    pub json: bool,
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
        TablesCommand::Conflicts(args) => conflicts(args).await,
    }
}

/// Every conflict of every region (each is recorded once, by the region whose write
/// lost), merged in time order. A region that does not answer is named, and the
/// exit status is 1: the list is then incomplete.
async fn conflicts(args: ConflictsArgs) -> Result<ExitCode> {
    use lifeboat_tables::store::Conflict;
    let cfg = load_config(&args.config)?;
    let tables = cfg
        .tables
        .as_ref()
        .with_context(|| format!("{} has no [tables] section", cfg.source.display()))?;
    if let Some(r) = &args.region {
        region_of(&cfg, r)?;
        anyhow::ensure!(
            tables.regions.contains_key(r),
            "--region {r}: region {r} runs no table server ([tables.regions.{r}])"
        );
    }
    let token = cfg.auth.secret().load().with_context(|| {
        format!(
            "loading the bearer token named in {} [auth]",
            cfg.source.display()
        )
    })?;
    let http = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .build()?;
    let mut all: Vec<(String, Conflict)> = Vec::new();
    let mut by_region = serde_json::Map::new();
    let mut incomplete = Vec::new();
    for (region, rc) in &tables.regions {
        if args.region.as_ref().is_some_and(|r| r != region) {
            continue;
        }
        let mut after = 0u64;
        let mut got: Vec<Conflict> = Vec::new();
        let failed = loop {
            let url = format!("{}/lifeboat/v1/conflicts", rc.peer_base());
            let mut query = vec![("after", after.to_string()), ("limit", "1000".to_owned())];
            if let Some(t) = &args.table {
                query.push(("table", t.clone()));
            }
            let req = http.get(&url).query(&query).bearer_auth(&token);
            let page = match req.send().await {
                Ok(r) if r.status().is_success() => {
                    r.json::<Vec<Conflict>>().await.map_err(|e| e.to_string())
                }
                Ok(r) => Err(format!("{url}: {}", r.status())),
                Err(e) => Err(format!("{url}: {e}")),
            };
            match page {
                Ok(p) if p.is_empty() => break None,
                Ok(p) => {
                    after = p.last().map_or(after, |c| c.id);
                    got.extend(p);
                }
                Err(e) => break Some(e),
            }
        };
        if let Some(e) = failed {
            eprintln!(
                "region {region}: its table server does not answer ({e}): its conflicts are not listed"
            );
            incomplete.push(region.clone());
            continue;
        }
        by_region.insert(region.clone(), serde_json::to_value(&got)?);
        all.extend(got.into_iter().map(|c| (region.clone(), c)));
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "conflicts": by_region,
                "incomplete": incomplete,
            }))?
        );
    } else {
        all.sort_by_key(|(_, c)| c.at_ms);
        print!("{}", render_conflicts(&all));
    }
    Ok(if incomplete.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// A hybrid-logical-clock time (NTP64: seconds since the Unix epoch in the high 32
/// bits) in RFC 3339 with milliseconds.
fn hlc_time(t: u64) -> String {
    let secs = t >> 32;
    let nanos = ((t & 0xffff_ffff) * 1_000_000_000) >> 32;
    let at = std::time::UNIX_EPOCH + std::time::Duration::new(secs, nanos as u32);
    humantime::format_rfc3339_millis(at).to_string()
}

fn render_conflicts(all: &[(String, lifeboat_tables::store::Conflict)]) -> String {
    if all.is_empty() {
        return "no conflicts: no write has lost to a concurrent one\n".to_owned();
    }
    let item = |v: &Option<serde_json::Value>| match v {
        Some(v) => v.to_string(),
        None => "(deleted)".to_owned(),
    };
    let mut out = format!(
        "{} conflicts (writes that lost to a concurrent, later write):\n",
        all.len()
    );
    for (_, c) in all {
        out.push_str(&format!(
            "table {} key {}\n  lost: region {} at {}: {}\n  won:  region {} at {}: {}\n",
            c.table,
            c.keys,
            c.loser_version.region,
            hlc_time(c.loser_version.time),
            item(&c.loser),
            c.winner_version.region,
            hlc_time(c.winner_version.time),
            item(&c.winner),
        ));
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflicts_render_both_versions_regions_and_times() {
        use lifeboat_tables::store::{Conflict, Version};
        let t = |secs: u64, ms: u64| (secs << 32) | ((ms << 32) / 1000 + 1);
        let c = Conflict {
            id: 1,
            table: "orders".into(),
            keys: serde_json::json!({"id": {"S": "k1"}}),
            loser: Some(serde_json::json!({"v": {"S": "a"}})),
            loser_version: Version {
                time: t(1_764_000_000, 250),
                region: "a".into(),
            },
            winner: None,
            winner_version: Version {
                time: t(1_764_000_001, 5),
                region: "b".into(),
            },
            at_ms: 1,
        };
        let out = render_conflicts(&[("a".into(), c)]);
        assert!(out.starts_with("1 conflicts"), "{out}");
        assert!(
            out.contains("lost: region a at 2025-11-24T16:00:00.250Z: {\"v\":{\"S\":\"a\"}}"),
            "{out}"
        );
        assert!(
            out.contains("won:  region b at 2025-11-24T16:00:01.005Z: (deleted)"),
            "{out}"
        );
        assert_eq!(
            render_conflicts(&[]),
            "no conflicts: no write has lost to a concurrent one\n"
        );
    }
}
