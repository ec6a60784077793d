//! The global tables' figures (bench/tables/run.sh runs this; `#[ignore]`d in the
//! test command: timings belong in a benchmark, not in a test):
//! 1. PutItem and GetItem through the table server (HTTP, SigV4, group commit),
//!    throughput and p99, beside the same rows written to and read from SQLite
//!    directly with the same durability (WAL, synchronous = FULL, a commit per row);
//! 2. replication latency, a write acknowledged in a to the item applied in b,
//!    p50 / p99 at 1,000 writes/s;
//! 3. convergence after a 30 s partition (nftables) during which both regions wrote
//!    the same 10,000 keys.
#![allow(clippy::unwrap_used)]

mod common;

use common::{Mesh, Partition, all_conflicts, call, contents, create_table, wait_table};
use lifeboat_tables::server::{AccessKeys, TableOptions, TableServer};
use lifeboat_tables::store::Store;
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    if v.is_empty() {
        return Duration::ZERO;
    }
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

const KEY_ID: &str = "AKIDBENCH";
const SECRET: &str = "bench-secret";

/// One signed DynamoDB call over HTTP, as an SDK makes it.
async fn signed(
    http: &reqwest::Client,
    url: &str,
    host: &str,
    op: &str,
    body: &serde_json::Value,
) -> u16 {
    let body = body.to_string().into_bytes();
    let mut h = axum::http::HeaderMap::new();
    h.insert("host", host.parse().unwrap());
    h.insert(
        "x-amz-target",
        format!("DynamoDB_20120810.{op}").parse().unwrap(),
    );
    h.insert(
        "content-type",
        "application/x-amz-json-1.0".parse().unwrap(),
    );
    lifeboat_tables::sigv4::sign(
        "POST",
        "/",
        &mut h,
        &body,
        KEY_ID,
        SECRET,
        "a",
        "dynamodb",
        std::time::SystemTime::now(),
    )
    .unwrap();
    let mut req = http.post(url).body(body);
    for (k, v) in &h {
        if k != "host" {
            req = req.header(k.as_str(), v.as_bytes());
        }
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let _ = r.bytes().await;
    status
}

/// `clients` tasks each making `per_client` calls built by `body(client, i)`;
/// (ops/s, p50, p99).
async fn load(
    url: &str,
    host: &str,
    op: &'static str,
    clients: usize,
    per_client: usize,
    body: impl Fn(usize, usize) -> serde_json::Value + Send + Sync + 'static,
) -> (f64, Duration, Duration) {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .build()
        .unwrap();
    let body = Arc::new(body);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (http, url, host, body) = (http.clone(), url.to_owned(), host.to_owned(), body.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per_client);
            for i in 0..per_client {
                let t = Instant::now();
                let st = signed(&http, &url, &host, op, &body(c, i)).await;
                assert_eq!(st, 200, "{op} failed");
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let secs = started.elapsed().as_secs_f64();
    let n = all.len();
    (n as f64 / secs, pct(&mut all, 0.5), pct(&mut all, 0.99))
}

/// The same rows straight into SQLite, one commit per row (what an acknowledged
/// PutItem promises), then read back by key: (puts/s, put p99, gets/s, get p99).
fn sqlite_direct(dir: &std::path::Path, rows: usize) -> (f64, Duration, f64, Duration) {
    let c = rusqlite::Connection::open(dir.join("direct.db")).unwrap();
    c.pragma_update(None, "journal_mode", "WAL").unwrap();
    c.pragma_update(None, "synchronous", "FULL").unwrap();
    c.execute_batch("CREATE TABLE t (hk BLOB PRIMARY KEY, item TEXT NOT NULL) WITHOUT ROWID")
        .unwrap();
    let mut lat = Vec::with_capacity(rows);
    let started = Instant::now();
    for i in 0..rows {
        let t = Instant::now();
        let item = json!({"id": {"S": format!("k{i:08}")}, "n": {"N": i.to_string()}, "pad": {"S": "x".repeat(100)}});
        c.execute(
            "INSERT INTO t (hk, item) VALUES (?1, ?2) ON CONFLICT (hk) DO UPDATE SET item = excluded.item",
            rusqlite::params![format!("k{i:08}").into_bytes(), item.to_string()],
        )
        .unwrap();
        lat.push(t.elapsed());
    }
    let put_rate = rows as f64 / started.elapsed().as_secs_f64();
    let put_p99 = pct(&mut lat, 0.99);
    let mut lat = Vec::with_capacity(rows);
    let started = Instant::now();
    let mut st = c.prepare("SELECT item FROM t WHERE hk = ?1").unwrap();
    for i in 0..rows {
        let t = Instant::now();
        let s: String = st
            .query_row([format!("k{i:08}").into_bytes()], |r| r.get(0))
            .unwrap();
        let _: serde_json::Value = serde_json::from_str(&s).unwrap();
        lat.push(t.elapsed());
    }
    let get_rate = rows as f64 / started.elapsed().as_secs_f64();
    (put_rate, put_p99, get_rate, pct(&mut lat, 0.99))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: bench/tables/run.sh"]
async fn bench_tables() {
    let clients = env_usize("CLIENTS", 16);
    let per_client = env_usize("PER_CLIENT", 500);
    let rate = env_usize("RATE", 1000);
    let seconds = env_usize("SECONDS", 10);
    let partition_s = env_usize("PARTITION_SECONDS", 30);
    let conflict_keys = env_usize("CONFLICT_KEYS", 10_000);

    // 1. One region through HTTP, beside SQLite directly.
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), "a").unwrap();
    let mut keys = AccessKeys::new();
    keys.insert(KEY_ID.into(), SECRET.into());
    let api = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let peer = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let host = api.local_addr().unwrap().to_string();
    let url = format!("http://{host}/");
    let cancel = CancellationToken::new();
    let server = TableServer::new(
        store.clone(),
        TableOptions {
            keys,
            token: "t".into(),
            peers: Vec::new(),
        },
    );
    let task = tokio::spawn(server.run(api, peer, cancel.clone()));
    create_table(&store, "bench").await;
    let (put_rate, put_p50, put_p99) = load(&url, &host, "PutItem", clients, per_client, |c, i| {
        json!({"TableName": "bench", "Item": {"id": {"S": format!("k{c:03}-{i:06}")}, "n": {"N": i.to_string()}, "pad": {"S": "x".repeat(100)}}})
    })
    .await;
    let (get_rate, get_p50, get_p99) = load(
        &url,
        &host,
        "GetItem",
        clients,
        per_client,
        |c, i| json!({"TableName": "bench", "Key": {"id": {"S": format!("k{c:03}-{i:06}")}}}),
    )
    .await;
    cancel.cancel();
    task.await.unwrap().unwrap();
    let rows = clients * per_client;
    let (d_put, d_put_p99, d_get, d_get_p99) = {
        let d = dir.path().to_owned();
        tokio::task::spawn_blocking(move || sqlite_direct(&d, rows))
            .await
            .unwrap()
    };
    println!(
        "PutItem via the table server ({clients} clients, {rows} items): {put_rate:.0}/s, p50 {:.2} ms, p99 {:.2} ms",
        ms(put_p50),
        ms(put_p99)
    );
    println!(
        "INSERT into SQLite directly (one commit per row, same pragmas): {d_put:.0}/s, p99 {:.2} ms; ratio server/direct: throughput {:.2}x, p99 {:.2}x",
        ms(d_put_p99),
        put_rate / d_put,
        ms(put_p99) / ms(d_put_p99)
    );
    println!(
        "GetItem via the table server: {get_rate:.0}/s, p50 {:.2} ms, p99 {:.2} ms",
        ms(get_p50),
        ms(get_p99)
    );
    println!(
        "SELECT from SQLite directly: {d_get:.0}/s, p99 {:.3} ms; ratio server/direct: throughput {:.3}x, p99 {:.1}x",
        ms(d_get_p99),
        get_rate / d_get,
        ms(get_p99) / ms(d_get_p99)
    );

    // 2. Replication latency at `rate` writes/s.
    let mesh = Mesh::start(&["a", "b"]).await;
    create_table(mesh.store("a"), "lag").await;
    wait_table(&mesh, "lag").await;
    let total = rate * seconds;
    let acked: Arc<std::sync::Mutex<HashMap<String, Instant>>> = Arc::default();
    let arrived: Arc<std::sync::Mutex<HashMap<String, Instant>>> = Arc::default();
    let watcher = {
        let (b, arrived) = (mesh.store("b").clone(), arrived.clone());
        tokio::spawn(async move {
            let mut latest = b.latest();
            let mut seq = *latest.borrow_and_update();
            loop {
                for c in b.changes_since(seq, 10_000).await.unwrap() {
                    seq = c.seq;
                    if c.table == "lag"
                        && let Some(id) = c.keys["id"]["S"].as_str()
                    {
                        arrived
                            .lock()
                            .unwrap()
                            .insert(id.to_owned(), Instant::now());
                    }
                }
                if arrived.lock().unwrap().len() >= total {
                    return;
                }
                let _ = tokio::time::timeout(Duration::from_millis(100), latest.changed()).await;
            }
        })
    };
    let a = mesh.store("a").clone();
    let every = Duration::from_secs_f64(1.0 / rate as f64);
    let start = tokio::time::Instant::now();
    for i in 0..total {
        tokio::time::sleep_until(start + every * i as u32).await;
        let id = format!("w{i:07}");
        call(
            &a,
            "PutItem",
            json!({"TableName": "lag", "Item": {"id": {"S": id}, "n": {"N": i.to_string()}}}),
        )
        .await;
        acked.lock().unwrap().insert(id, Instant::now());
    }
    let achieved = total as f64 / start.elapsed().as_secs_f64();
    tokio::time::timeout(Duration::from_secs(60), watcher)
        .await
        .unwrap()
        .unwrap();
    let mut lags: Vec<Duration> = {
        let (acked, arrived) = (acked.lock().unwrap(), arrived.lock().unwrap());
        acked
            .iter()
            .map(|(id, t)| arrived[id].saturating_duration_since(*t))
            .collect()
    };
    println!(
        "replication a -> b at {achieved:.0} writes/s ({total} writes): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (DynamoDB global tables: typically within a second)",
        ms(pct(&mut lags, 0.5)),
        ms(pct(&mut lags, 0.99)),
        ms(pct(&mut lags, 1.0))
    );

    // 3. Convergence after a partition with conflicting writes on both sides.
    create_table(mesh.store("a"), "split").await;
    wait_table(&mesh, "split").await;
    let ports: Vec<u16> = mesh.regions.iter().map(|r| r.peer_port).collect();
    let cut = Partition::cut(&ports);
    let cut_at = Instant::now();
    for side in ["a", "b"] {
        let s = mesh.store(side).clone();
        for i in 0..conflict_keys {
            call(&s, "PutItem", json!({"TableName": "split", "Item": {"id": {"S": format!("c{i:06}")}, "v": {"S": side}}})).await;
        }
    }
    let written = cut_at.elapsed();
    if let Some(rest) = Duration::from_secs(partition_s as u64).checked_sub(written) {
        tokio::time::sleep(rest).await;
    }
    drop(cut);
    let healed = Instant::now();
    loop {
        let (ca, cb) = (
            contents(mesh.store("a"), "split").await,
            contents(mesh.store("b"), "split").await,
        );
        if ca.len() == conflict_keys && ca == cb {
            break;
        }
        assert!(
            healed.elapsed() < Duration::from_secs(300),
            "no convergence"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = healed.elapsed();
    let conflicts = all_conflicts(&mesh, "split").await.len();
    println!(
        "partition of {:.0} s with {conflict_keys} keys written on both sides ({} writes in {:.1} s): converged {:.0} ms after the heal; {conflicts} conflicts listed (expected {conflict_keys})",
        cut_at.elapsed().as_secs_f64() - took.as_secs_f64(),
        2 * conflict_keys,
        written.as_secs_f64(),
        ms(took)
    );
    assert_eq!(conflicts, conflict_keys);
    mesh.stop().await;
}
