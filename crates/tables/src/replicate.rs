//! Replication between the regions' table servers (docs/tables.md, "Replication").
//!
//! Pull, full mesh: each table server serves its own region's changes
//! (`GET /lifeboat/v1/changes?after=SEQ`, long-polled) on its peer port, and pulls
//! every other region's from where it stopped. The cursor (the last of a peer's
//! changes applied here) is stored in the same transaction as the changes it
//! covers, so a kill -9 or a partition resumes with no gap and no duplicate; a
//! redelivered change is recognised by the item's version vector and skipped.
//! Every request carries the deployment's bearer token, and the puller's cursors
//! (`&region=b&cursors=a:12,b:40,c:7`, its own newest change under its own name),
//! from which each region learns when every region has a delete (tombstone
//! collection, `Store::peer_applied`).

use crate::store::{Applied, Change, Store, now_ms};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How long a pull waits for new changes before answering with none.
pub const LONG_POLL: Duration = Duration::from_secs(10);
/// The most changes of one pull.
pub const BATCH: usize = 1000;

/// A peer region's table server, as this one reaches it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub region: String,
    /// Its peer port's base URL (`http://host:port`).
    pub url: String,
}

/// One pull's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChangesPage {
    pub region: String,
    pub changes: Vec<Change>,
    /// The cursor after this page.
    pub upto: u64,
    /// How many of the serving region's changes follow `upto`.
    pub pending: u64,
}

/// Where replication from one peer stands, for status and metrics.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct PeerState {
    pub region: String,
    pub url: String,
    /// The last of its changes applied here.
    pub cursor: u64,
    /// Its changes not yet here, as it said on the last pull.
    pub pending: u64,
    /// From a change's write there to its apply here, for the last one applied (ms).
    pub lag_ms: Option<i64>,
    /// When the last pull answered (ms since the epoch).
    pub last_contact_ms: Option<i64>,
    /// The last pull's error, while it fails.
    pub error: Option<String>,
    pub applied: u64,
    pub duplicates: u64,
    pub lost: u64,
    pub conflicts: u64,
}

/// The pullers' shared view, one entry per peer.
#[derive(Debug, Default)]
pub struct Replication {
    peers: Mutex<BTreeMap<String, PeerState>>,
}

impl Replication {
    pub fn new(peers: &[Peer]) -> Arc<Replication> {
        Arc::new(Replication {
            peers: Mutex::new(
                peers
                    .iter()
                    .map(|p| {
                        (
                            p.region.clone(),
                            PeerState {
                                region: p.region.clone(),
                                url: p.url.clone(),
                                ..PeerState::default()
                            },
                        )
                    })
                    .collect(),
            ),
        })
    }

    pub fn states(&self) -> Vec<PeerState> {
        self.peers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    fn update(&self, region: &str, f: impl FnOnce(&mut PeerState)) {
        if let Some(s) = self
            .peers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(region)
        {
            f(s);
        }
    }
}

/// Serve a pull: this region's changes after `after`, waiting up to `wait` for
/// the first one.
pub async fn serve_changes(
    store: &Arc<Store>,
    after: u64,
    limit: usize,
    wait: Duration,
) -> Result<ChangesPage, crate::error::ApiError> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut latest = store.latest();
    loop {
        // Mark the current value seen before reading, so a commit between the read
        // and the wait still wakes the wait.
        latest.borrow_and_update();
        let changes = store.own_changes_since(after, limit).await?;
        if !changes.is_empty() || tokio::time::Instant::now() >= deadline {
            let upto = changes.last().map_or(after, |c| c.seq);
            let pending = if changes.len() >= limit {
                store.own_pending(upto).await?
            } else {
                0
            };
            return Ok(ChangesPage {
                region: store.region().to_owned(),
                changes,
                upto,
                pending,
            });
        }
        tokio::select! {
            r = latest.changed() => if r.is_err() { return Err(crate::error::ApiError::internal("the store closed")) },
            _ = tokio::time::sleep_until(deadline) => {}
        }
    }
}

/// Pull `peer`'s changes into `store` until `cancel`.
pub async fn pull(
    store: Arc<Store>,
    peer: Peer,
    token: Option<String>,
    state: Arc<Replication>,
    cancel: CancellationToken,
) {
    let http = match reqwest::Client::builder()
        .timeout(LONG_POLL + Duration::from_secs(20))
        .connect_timeout(Duration::from_secs(3))
        .no_proxy()
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("replication from {}: no HTTP client: {e}", peer.region);
            return;
        }
    };
    let mut backoff = Duration::from_millis(100);
    while !cancel.is_cancelled() {
        let result = pull_once(&store, &peer, token.as_deref(), &http, &cancel).await;
        match result {
            Ok(Some((page_len, applied, pending, lag))) => {
                backoff = Duration::from_millis(100);
                state.update(&peer.region, |s| {
                    s.cursor = applied.cursor;
                    s.pending = pending;
                    s.last_contact_ms = Some(now_ms());
                    s.error = None;
                    if let Some(l) = lag {
                        s.lag_ms = Some(l);
                    }
                    s.applied += applied.applied as u64;
                    s.duplicates += applied.duplicates as u64;
                    s.lost += applied.lost as u64;
                    s.conflicts += applied.conflicts as u64;
                });
                if let Some(t) = &applied.waiting_for_table {
                    tracing::info!(
                        "replication from {}: table {t} is not here yet (it was created in a region not heard from yet); retrying",
                        peer.region
                    );
                    wait(&cancel, Duration::from_millis(500)).await;
                } else if page_len == 0 {
                    // The long poll returned with nothing: caught up.
                    state.update(&peer.region, |s| s.lag_ms = Some(0));
                }
            }
            Ok(None) => return,
            Err(e) => {
                state.update(&peer.region, |s| s.error = Some(e.clone()));
                tracing::warn!("replication from {}: {e}", peer.region);
                wait(&cancel, backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// `cursors=` of a pull: `region:seq`, comma-separated.
pub fn format_cursors(cursors: &BTreeMap<String, u64>) -> String {
    cursors
        .iter()
        .map(|(r, s)| format!("{r}:{s}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Parse `cursors=` of a pull (region names of letters, digits, '-' and '_'; each
/// seq a whole number; each region once). Empty: none.
pub fn parse_cursors(s: &str) -> Result<BTreeMap<String, u64>, String> {
    let mut out = BTreeMap::new();
    if s.is_empty() {
        return Ok(out);
    }
    for entry in s.split(',') {
        let Some((region, seq)) = entry.split_once(':') else {
            return Err(format!(
                "cursors: {entry:?} is not region:seq (cursors=a:12,c:7)"
            ));
        };
        if region.is_empty()
            || !region
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(format!(
                "cursors: {region:?} is not a region name (letters, digits, '-' and '_')"
            ));
        }
        if seq.is_empty() || !seq.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!(
                "cursors: the seq of region {region} ({seq:?}) is not a whole number"
            ));
        }
        let seq: u64 = seq
            .parse()
            .map_err(|_| format!("cursors: the seq of region {region} ({seq}) is too large"))?;
        if out.insert(region.to_owned(), seq).is_some() {
            return Err(format!("cursors: region {region} is given twice"));
        }
    }
    Ok(out)
}

async fn wait(cancel: &CancellationToken, d: Duration) {
    tokio::select! {
        _ = cancel.cancelled() => {}
        _ = tokio::time::sleep(d) => {}
    }
}

/// One pull and its apply: (changes in the page, what applying did, the peer's
/// pending count, the lag of the newest change applied). None: cancelled.
async fn pull_once(
    store: &Arc<Store>,
    peer: &Peer,
    token: Option<&str>,
    http: &reqwest::Client,
    cancel: &CancellationToken,
) -> Result<Option<(usize, Applied, u64, Option<i64>)>, String> {
    let cursor = store
        .cursor(&peer.region)
        .await
        .map_err(|e| e.to_string())?;
    let url = format!(
        "{}/lifeboat/v1/changes?after={cursor}&limit={BATCH}&wait_ms={}",
        peer.url,
        LONG_POLL.as_millis()
    );
    // With it, what this region has applied of every region's log (and its own
    // newest change): the peer learns when every region has a delete, to collect
    // its tombstone (`Store::peer_applied`).
    let report = store.applied_report().await.map_err(|e| e.to_string())?;
    let mut req = http.get(format!(
        "{url}&region={}&cursors={}",
        store.region(),
        format_cursors(&report)
    ));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = tokio::select! {
        _ = cancel.cancelled() => return Ok(None),
        r = req.send() => r.map_err(|e| format!("{url}: {e}"))?,
    };
    let status = resp.status();
    let body = resp.bytes().await.map_err(|e| format!("{url}: {e}"))?;
    if !status.is_success() {
        return Err(format!(
            "{url}: {status}: {}",
            String::from_utf8_lossy(&body)
        ));
    }
    let page: ChangesPage =
        serde_json::from_slice(&body).map_err(|e| format!("{url}: not a page of changes: {e}"))?;
    if page.region != peer.region {
        return Err(format!(
            "{url} answers as region {:?}, not {:?}: check [tables.regions.{}] peer_url",
            page.region, peer.region, peer.region
        ));
    }
    let n = page.changes.len();
    let lag = page.changes.last().map(|c| now_ms() - c.at_ms);
    if n == 0 && page.upto <= cursor {
        let a = Applied {
            cursor,
            ..Applied::default()
        };
        return Ok(Some((0, a, page.pending, None)));
    }
    let applied = store
        .apply_remote(&peer.region, page.changes, page.upto)
        .await
        .map_err(|e| e.to_string())?;
    Ok(Some((n, applied, page.pending, lag)))
}
