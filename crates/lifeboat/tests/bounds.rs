//! Bounded inputs on the controller's HTTP server (lifeboat_api::serve;
//! docs/controller.md, "Limits"), with real processes and sockets.
//!
//! A controller whose journal holds 100,000 entries, and agents a (active) and b.
//! While 1,000 idle TCP connections and a few slowloris clients (a header byte a
//! second, never finishing) sit on the controller's API port, and 32 clients fetch
//! `/metrics`, the dashboard page and its event stream in a loop, the active region's
//! lease holds: no `detected`, `lease_expired`, `fenced` or `promoted` in the
//! controller's journal, no lapse, fence or witness loss in a's, the epoch and active
//! region unchanged. And a new request still gets an answer while the connections
//! are held.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use lifeboat_core::JournalKind;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

const IDLE: usize = 1_000;
const SLOWLORIS: usize = 5;
/// Clients fetching `/metrics`, the dashboard and its stream in a loop, at once (with
/// 32, the journal reads under the store's lock of old cost the active region its
/// controller renewals: it held on promises).
const HAMMERS: usize = 32;
const JOURNAL_ROWS: i64 = 100_000;

/// Descriptors this process needs: the idle connections, the slow ones, the
/// hammering clients and the harness's own. The soft limit is raised to it (up to the
/// hard limit) when lower.
fn ensure_fd_limit(need: u64) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    if soft < need {
        assert!(
            hard >= need,
            "this test needs {need} descriptors; the hard limit is {hard} (raise it: ulimit -Hn)"
        );
        setrlimit(Resource::RLIMIT_NOFILE, need, hard).unwrap();
    }
}

/// The controller's journal, seeded before it starts: `JOURNAL_ROWS` info entries
/// (the schema is the store's; no state row, so it starts as a fresh deployment).
fn seed_journal(state_dir: &std::path::Path) {
    std::fs::create_dir_all(state_dir).unwrap();
    let mut db = rusqlite::Connection::open(state_dir.join("controller.db")).unwrap();
    db.execute_batch(
        "CREATE TABLE IF NOT EXISTS state (id INTEGER PRIMARY KEY CHECK (id = 1), body TEXT NOT NULL);
         CREATE TABLE IF NOT EXISTS journal (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            at_unix_ms INTEGER NOT NULL,
            mono_ms INTEGER NOT NULL,
            epoch INTEGER NOT NULL,
            kind TEXT NOT NULL,
            region TEXT,
            detail TEXT NOT NULL);",
    )
    .unwrap();
    let tx = db.transaction().unwrap();
    {
        let mut stmt = tx
            .prepare("INSERT INTO journal (at_unix_ms, mono_ms, epoch, kind, region, detail) VALUES (0, ?1, 0, 'info', NULL, ?2)")
            .unwrap();
        for i in 0..JOURNAL_ROWS {
            stmt.execute(rusqlite::params![
                i,
                format!("seeded entry {i} of an old, long journal")
            ])
            .unwrap();
        }
    }
    tx.commit().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idle_and_slow_connections_and_a_hammered_dashboard_do_not_cost_the_lease() {
    ensure_fd_limit((IDLE + SLOWLORIS + HAMMERS) as u64 + 1_000);
    let mut d = Deployment::new(Options::default());
    seed_journal(&d.dir.path().join("controller"));
    d.start_controller().await;
    d.start_agent("a", None).await;
    d.start_agent("b", None).await;
    let before = d.wait_active("a", Duration::from_secs(30)).await;
    d.wait_all_reporting(Duration::from_secs(10)).await;
    let a = d.agent_client("a");
    // Where each journal stands before the storm (the controller's in pages: it is
    // longer than one).
    let mut ctrl_mark = 0;
    loop {
        let page = d.client().journal(ctrl_mark).await.unwrap();
        match page.last() {
            Some(e) => ctrl_mark = e.seq,
            None => break,
        }
    }
    assert!(
        ctrl_mark > JOURNAL_ROWS as u64,
        "the seeded journal is read"
    );
    let agent_mark = a.journal(0).await.unwrap().last().map_or(0, |e| e.seq);

    let stop = CancellationToken::new();
    let base = format!("http://{}", d.ctrl_addr);

    // The hammer first (its pooled connections are inside the cap before the idle
    // ones fill it): /metrics, the dashboard page, and its stream's first message.
    let answered = Arc::new(AtomicU64::new(0));
    let mut hammers = Vec::new();
    for i in 0..HAMMERS {
        let (stop, base, answered) = (stop.clone(), base.clone(), answered.clone());
        hammers.push(tokio::spawn(async move {
            let c = reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .no_proxy()
                .build()
                .unwrap();
            let path = ["/metrics", "/", "/v1/events", "/metrics"][i % 4];
            while !stop.is_cancelled() {
                if let Ok(mut r) = c.get(format!("{base}{path}")).send().await
                    && r.status().is_success()
                    && r.chunk().await.is_ok()
                {
                    answered.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    // Slowloris: a request head that never ends, one byte a second.
    let mut slow = Vec::new();
    for _ in 0..SLOWLORIS {
        let (stop, addr) = (stop.clone(), d.ctrl_addr.clone());
        slow.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(&addr).await.unwrap();
            let head = b"GET /v1/status HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
            let mut reconnects = 0u32;
            let mut i = 0;
            while !stop.is_cancelled() {
                let byte = head[i % head.len()];
                i += 1;
                if s.write_all(&[byte]).await.is_err() {
                    // Disconnected (the header-read timeout): come back, as an
                    // attacker would.
                    reconnects += 1;
                    s = TcpStream::connect(&addr).await.unwrap();
                    i = 0;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            reconnects
        }));
    }
    // 1,000 connections that never send a byte (more than the cap: the rest wait in
    // the accept backlog).
    let mut idle = Vec::with_capacity(IDLE);
    for _ in 0..IDLE {
        idle.push(TcpStream::connect(&d.ctrl_addr).await.unwrap());
    }

    // Six lease ttls (2 s): more than one header-read timeout (10 s), so the idle
    // and slow connections are cut and the queued ones come in meanwhile.
    tokio::time::sleep(Duration::from_secs(12)).await;

    // A new request on a new connection is answered while the idle ones are held.
    let fresh = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .no_proxy()
        .build()
        .unwrap();
    let health = fresh.get(format!("{base}/v1/health")).send().await.unwrap();
    assert_eq!(health.status().as_u16(), 200);

    stop.cancel();
    for h in hammers {
        h.await.unwrap();
    }
    let mut reconnects = 0;
    for s in slow {
        reconnects += s.await.unwrap();
    }
    drop(idle);
    assert!(
        answered.load(Ordering::Relaxed) > 0,
        "the hammering clients were answered"
    );
    eprintln!(
        "hammering requests answered: {}; slowloris reconnects: {reconnects}",
        answered.load(Ordering::Relaxed)
    );
    assert!(
        reconnects > 0,
        "the slowloris clients were disconnected by the header-read timeout"
    );

    // The lease held, from the journals.
    let after = d.status().await.unwrap();
    assert_eq!(after.epoch, before.epoch, "no promotion");
    assert_eq!(after.active, before.active);
    assert_eq!(after.phase, "steady");
    let ctrl = d.client().journal(ctrl_mark).await.unwrap();
    let bad: Vec<_> = ctrl
        .iter()
        .filter(|e| {
            matches!(
                e.kind,
                JournalKind::Detected
                    | JournalKind::LeaseExpired
                    | JournalKind::Fenced
                    | JournalKind::Promoted
            )
        })
        .map(|e| format!("{} {} {}", e.seq, e.kind.as_str(), e.detail))
        .collect();
    assert!(
        bad.is_empty(),
        "the controller saw the lease lapse: {bad:#?}"
    );
    let agent = a.journal(agent_mark).await.unwrap();
    let bad: Vec<_> = agent
        .iter()
        .filter(|e| {
            matches!(e.kind, JournalKind::LeaseExpired | JournalKind::Fenced)
                || e.detail.contains("witness unreachable")
        })
        .map(|e| format!("{} {} {}", e.seq, e.kind.as_str(), e.detail))
        .collect();
    assert!(
        bad.is_empty(),
        "a's renewals did not all reach the controller: {bad:#?}"
    );
    let st = a.agent_status().await.unwrap();
    assert!(st.active && !st.fenced, "{st:?}");
}
