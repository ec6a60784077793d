//! The table servers, as the dashboard shows them (global tables, docs/tables.md):
//! the controller asks each region's table server (its peer port, with the
//! deployment's token) for its status every [`EVERY`] — conflicts per table and the
//! replication from each other region — and keeps the last answer or the error.

use super::*;
use serde::Serialize;

/// How often each table server is asked.
pub(super) const EVERY: Duration = Duration::from_secs(2);

/// One region's table server, as last seen.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct TableServerView {
    pub region: String,
    pub url: String,
    pub up: bool,
    /// Why the last ask failed.
    pub error: Option<String>,
    /// Conflicts recorded there (its writes that lost), per table.
    pub conflicts: BTreeMap<String, u64>,
    /// Its replication from each other region (cursor, pending, lag_ms, error, …).
    pub replication: Vec<serde_json::Value>,
    pub at_unix_ms: u64,
}

/// Ask every table server of `cfg` until `cancel`, keeping the views in `out`.
pub(super) async fn watch(
    cfg: Arc<Config>,
    token: Token,
    out: Arc<Mutex<Vec<TableServerView>>>,
    cancel: CancellationToken,
) {
    let Some(tables) = cfg.tables.clone() else {
        return;
    };
    let http = match reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .no_proxy()
        .build()
    {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!("no HTTP client for the table servers: {e}");
            return;
        }
    };
    let mut every = tokio::time::interval(EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = every.tick() => {}
        }
        let mut views = Vec::new();
        for (region, rc) in &tables.regions {
            let url = rc.peer_base();
            let answer = async {
                let r = http
                    .get(format!("{url}/lifeboat/v1/status"))
                    .bearer_auth(token.as_str())
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                if !r.status().is_success() {
                    return Err(format!("{}", r.status()));
                }
                r.json::<serde_json::Value>()
                    .await
                    .map_err(|e| e.to_string())
            }
            .await;
            views.push(match answer {
                Ok(st) => TableServerView {
                    region: region.clone(),
                    url: url.clone(),
                    up: true,
                    error: None,
                    conflicts: serde_json::from_value(st["conflicts"].clone()).unwrap_or_default(),
                    replication: st["replication"].as_array().cloned().unwrap_or_default(),
                    at_unix_ms: crate::store::unix_ms(),
                },
                Err(e) => TableServerView {
                    region: region.clone(),
                    url: url.clone(),
                    up: false,
                    error: Some(e),
                    conflicts: BTreeMap::new(),
                    replication: Vec::new(),
                    at_unix_ms: crate::store::unix_ms(),
                },
            });
        }
        *lock(&out) = views;
    }
}
