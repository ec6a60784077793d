//! `/`: the live dashboard, and `/v1/events`, the stream of updates it draws.
//!
//! The page (`dashboard.html`, compiled into the binary: no asset comes from the network)
//! is static; everything on it comes from `/v1/events`, server-sent events of the same
//! views as `/v1/status`, `/v1/health` and `/v1/journal` plus the lag history
//! ([`super::lag`]). Text is placed with `textContent`, never as markup, so nothing from
//! an agent's report or the journal can become HTML. The actions post to
//! `/v1/switchover` and `/v1/failover` with the operator's bearer token, which the page
//! asks for in the confirmation and never stores. docs/controller.md, "Dashboard".

use super::lag::LagSample;
use super::*;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures::stream::{self, Stream, StreamExt};
use serde::Serialize;
use std::convert::Infallible;

pub(crate) const PAGE: &str = include_str!("dashboard.html");
/// How often the stream looks for something new to send.
const EVERY: Duration = Duration::from_millis(250);
/// Journal entries the first update carries (the page keeps what comes after).
const JOURNAL_FIRST: usize = 200;

/// Nothing but this page and its own API, even if something slipped in.
pub(crate) const CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:; connect-src 'self'; base-uri 'none'; form-action 'none'";

pub(crate) async fn dashboard() -> impl IntoResponse {
    (
        [(axum::http::header::CONTENT_SECURITY_POLICY, CSP)],
        Html(PAGE),
    )
}

/// How soon a browser reconnects after a stream ends: the stream of a controller whose
/// leadership ended closes, and the page's next connection reaches what serves now.
pub(crate) const RETRY: Duration = Duration::from_secs(1);

/// One message of `/v1/events`.
#[derive(Serialize)]
struct Update {
    /// The first message of a connection: the page starts afresh from it.
    reset: bool,
    now_unix_ms: u64,
    status: ControllerStatus,
    health: Vec<CheckView>,
    /// Journal entries after the last message's (the first: the newest 200).
    journal: Vec<JournalEntry>,
    /// Lag samples after the last message's (the first: the whole window).
    lag: Vec<LagSample>,
    /// Each region's table server (global tables), as last asked.
    tables: Vec<super::tables::TableServerView>,
}

struct Cursor {
    c: Arc<Controller>,
    journal_seq: u64,
    lag_seq: u64,
    first: bool,
    last_sent: String,
    last_sent_at: Option<Instant>,
}

impl Cursor {
    async fn next(&mut self) -> Option<String> {
        let c = &self.c;
        let status = c.status_view().await;
        let health = c.health_view();
        let journal = if self.first {
            let all = c.store.journal(0, 100_000).await.unwrap_or_default();
            let skip = all.len().saturating_sub(JOURNAL_FIRST);
            all.into_iter().skip(skip).collect()
        } else {
            c.store
                .journal(self.journal_seq, 1000)
                .await
                .unwrap_or_default()
        };
        let lag = lock(&c.lag).since(self.lag_seq);
        let tables = lock(&c.tables).clone();
        // The same picture as last time (and no news) is not sent again, but a
        // message goes out at least once a second: the page's ages and countdowns are
        // computed from the newest one.
        let key = serde_json::to_string(&(
            &status.epoch,
            &status.phase,
            &status.active,
            &status.mode,
            &status.failovers,
            &health,
            &tables,
        ))
        .unwrap_or_default();
        let fresh = self.first
            || !journal.is_empty()
            || !lag.is_empty()
            || key != self.last_sent
            || self
                .last_sent_at
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(1));
        if !fresh {
            return None;
        }
        if let Some(e) = journal.last() {
            self.journal_seq = e.seq;
        }
        if let Some(s) = lag.last() {
            self.lag_seq = s.seq;
        }
        let update = Update {
            reset: self.first,
            now_unix_ms: crate::store::unix_ms(),
            status,
            health,
            journal,
            lag,
            tables,
        };
        self.first = false;
        self.last_sent = key;
        self.last_sent_at = Some(Instant::now());
        serde_json::to_string(&update).ok()
    }
}

pub(super) async fn events(
    State(c): State<Arc<Controller>>,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let stopping = c.stopping.clone().cancelled_owned();
    let cursor = Cursor {
        c,
        journal_seq: 0,
        lag_seq: 0,
        first: true,
        last_sent: String::new(),
        last_sent_at: None,
    };
    let s = stream::unfold(cursor, |mut cur| async move {
        loop {
            // A term that ended (several controllers) no longer knows the deployment:
            // end the stream; the page reconnects to whatever serves now.
            if !cur.c.leads_or_alone() {
                return None;
            }
            if let Some(json) = cur.next().await {
                let ev = SseEvent::default().event("update").retry(RETRY).data(json);
                return Some((Ok(ev), cur));
            }
            tokio::time::sleep(EVERY).await;
        }
    });
    Sse::new(s.take_until(stopping)).keep_alive(KeepAlive::default())
}
