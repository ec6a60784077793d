//! The sample app against real PostgreSQL servers (lifeboat_pg's test pair: a primary
//! "a" and its streaming replica "b") with a fake discovery endpoint: the function tier
//! and the page work, a new epoch closes the old connection, a failover to the promoted
//! replica is followed within seconds, and an outage is a clear 503.

mod common;

use common::{App, FakeDiscovery, answer, get, post, wait_for};
use lifeboat_pg::testing::{PairOptions, TestPair};
use serde_json::json;
use std::collections::BTreeSet;
use std::time::Duration;
use tokio::time::Instant;

async fn app_backends(pair: &TestPair, region: &str) -> BTreeSet<i32> {
    let c = pair.client(region).await.expect("superuser connection");
    c.query(
        "SELECT pid FROM pg_stat_activity WHERE application_name = 'lifeboat-sample-app'",
        &[],
    )
    .await
    .expect("pg_stat_activity")
    .iter()
    .map(|r| r.get(0))
    .collect()
}

async fn has_row(pair: &TestPair, region: &str, id: &str) -> bool {
    let Ok(c) = pair.client(region).await else {
        return false;
    };
    c.query_opt("SELECT 1 FROM entries WHERE id = $1", &[&id])
        .await
        .is_ok_and(|r| r.is_some())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_follows_a_failover_and_reports_an_outage() {
    let pair = TestPair::start(PairOptions::default())
        .await
        .expect("PostgreSQL primary and replica");
    let port = |r: &str| pair.instance(r).port;
    let password_file = pair.dir().join("secrets").join("su");
    let objects = tempfile::tempdir().expect("objects dir");
    std::fs::write(
        objects.path().join("msgdrdct.txt"),
        "Hello from <the> object store",
    )
    .expect("write message");

    let disco = FakeDiscovery::start(answer(
        1,
        "a",
        "postgres",
        port("a"),
        "postgres",
        "postgres",
    ))
    .await;
    let app = App::start(
        &[
            "--region",
            "a",
            "--discovery",
            &disco.url(),
            "--objects-dir",
            &objects.path().display().to_string(),
            "--db-password-file",
            &password_file.display().to_string(),
        ],
        &[("LIFEBOAT_ROLE", "active")],
    )
    .await;
    let entries = format!("{}/api/entries", app.url);

    // Health, then a write read back.
    let h = get(&format!("{}/healthz", app.url)).await;
    assert_eq!((h.status, h.text.trim()), (200, "ok"), "{h:?}");
    let created = post(&entries, r#"{"id": "e-1", "body": "first <entry>"}"#).await;
    assert_eq!(created.status, 201, "{created:?}");
    let row = created.json();
    assert_eq!(row["id"], "e-1");
    assert_eq!(row["region"], "a");
    assert_eq!(row["body"], "first <entry>");
    let read = get(&format!("{entries}/e-1")).await;
    assert_eq!(read.status, 200, "{read:?}");
    assert_eq!(read.json(), row, "GET returns what POST stored");

    // Idempotent: the same write again is the stored row, not an error.
    let again = post(&entries, r#"{"id": "e-1", "body": "first <entry>"}"#).await;
    assert_eq!(again.status, 200, "{again:?}");
    assert_eq!(again.json(), row);
    let reused = post(&entries, r#"{"id": "e-1", "body": "something else"}"#).await;
    assert_eq!(reused.status, 409, "{reused:?}");
    assert_eq!(reused.json()["entry"], row);

    // Bad input.
    let bad = post(&entries, "{not json").await;
    assert_eq!(bad.status, 400, "{bad:?}");
    assert!(
        bad.json()["error"]
            .as_str()
            .is_some_and(|e| e.contains("expected JSON")),
        "{bad:?}"
    );
    let no_id = post(&entries, r#"{"body": "x"}"#).await;
    assert_eq!(no_id.status, 400, "{no_id:?}");
    assert!(no_id.text.contains("missing field `id`"), "{no_id:?}");
    let empty_id = post(&entries, r#"{"id": "", "body": "x"}"#).await;
    assert_eq!(empty_id.status, 400, "{empty_id:?}");
    let missing = get(&format!("{entries}/nope")).await;
    assert_eq!(missing.status, 404, "{missing:?}");

    // All ids, and pages of them.
    for i in 2..=4 {
        let r = post(
            &entries,
            &json!({"id": format!("e-{i}"), "body": "more"}).to_string(),
        )
        .await;
        assert_eq!(r.status, 201, "{r:?}");
    }
    let all = get(&entries).await;
    assert_eq!(all.status, 200, "{all:?}");
    assert_eq!(
        all.json(),
        json!({"ids": ["e-1", "e-2", "e-3", "e-4"], "next": null})
    );
    let page = get(&format!("{entries}?limit=2")).await.json();
    assert_eq!(page, json!({"ids": ["e-1", "e-2"], "next": "e-2"}));
    let page = get(&format!("{entries}?limit=2&after=e-2")).await.json();
    assert_eq!(page, json!({"ids": ["e-3", "e-4"], "next": "e-4"}));

    // The page: region, role, epoch, message and rows, escaped.
    let page = get(&app.url).await;
    assert_eq!(page.status, 200, "{page:?}");
    for want in [
        "<span class=\"region\" id=\"region\">a</span>",
        "(role: active)",
        "<span id=\"epoch\">1</span>",
        "Hello from &lt;the&gt; object store",
        "<td>first &lt;entry&gt;</td>",
        "<td>e-4</td>",
    ] {
        assert!(
            page.text.contains(want),
            "page lacks {want:?}:\n{}",
            page.text
        );
    }
    let info = get(&format!("{}/api/info", app.url)).await.json();
    assert_eq!(info["region"], "a");
    assert_eq!(info["epoch"], 1);

    // A new epoch (even naming the same server) closes the old connection.
    let before = app_backends(&pair, "a").await;
    assert!(!before.is_empty(), "the app holds a connection to a");
    disco.set(answer(
        2,
        "a",
        "postgres",
        port("a"),
        "postgres",
        "postgres",
    ));
    wait_for(
        "the epoch-1 connection to close",
        Duration::from_secs(10),
        || async {
            app_backends(&pair, "a")
                .await
                .is_disjoint(&before)
                .then_some(())
        },
    )
    .await;
    let r = post(&entries, r#"{"id": "e-5", "body": "epoch 2"}"#).await;
    assert_eq!(r.status, 201, "{r:?}");
    wait_for(
        "e-5 to reach the replica",
        Duration::from_secs(30),
        || async { has_row(&pair, "b", "e-5").await.then_some(()) },
    )
    .await;

    // The primary crashes; discovery still names it: a clear 503 naming it.
    pair.kill9("a").await.expect("kill a");
    let down = post(&entries, r#"{"id": "e-6", "body": "during the outage"}"#).await;
    assert_eq!(down.status, 503, "{down:?}");
    let msg = down.json()["error"].as_str().unwrap_or_default().to_owned();
    let addr_a = format!("127.0.0.1:{}", port("a"));
    assert!(
        msg.contains("unreachable") && msg.contains(&addr_a),
        "{msg}"
    );

    // Discovery names the standby before it is promoted: writes and health say it is
    // read-only.
    disco.set(answer(
        3,
        "b",
        "postgres",
        port("b"),
        "postgres",
        "postgres",
    ));
    let h = wait_for(
        "healthz to see the standby",
        Duration::from_secs(10),
        || async {
            let h = get(&format!("{}/healthz", app.url)).await;
            (h.status == 503 && h.text.contains("read-only")).then_some(h)
        },
    )
    .await;
    assert!(h.text.contains("standby"), "{h:?}");
    let r = post(&entries, r#"{"id": "e-6", "body": "to a standby"}"#).await;
    assert_eq!(r.status, 503, "{r:?}");
    assert!(r.text.contains("read-only"), "{r:?}");

    // b is promoted and discovery moves to it in a new epoch.
    let c = pair.client("b").await.expect("connect b");
    c.execute("SELECT pg_promote(true, 60)", &[])
        .await
        .expect("promote b");
    let moved = Instant::now();
    disco.set(answer(
        4,
        "b",
        "postgres",
        port("b"),
        "postgres",
        "postgres",
    ));
    let r = wait_for("a write to land on b", Duration::from_secs(10), || async {
        let r = post(&entries, r#"{"id": "e-6", "body": "after the failover"}"#).await;
        (r.status == 201).then_some(r)
    })
    .await;
    eprintln!(
        "first write after the discovery change: {:?}",
        moved.elapsed()
    );
    assert_eq!(r.json()["body"], "after the failover");
    assert!(has_row(&pair, "b", "e-6").await, "the write is on b");
    let read = get(&format!("{entries}/e-1")).await;
    assert_eq!(
        read.json(),
        row,
        "rows written before the failover are served from b"
    );
    let h = get(&format!("{}/healthz", app.url)).await;
    assert_eq!(h.status, 200, "{h:?}");
    // The page shows the new epoch within about a second (discovery is cached 500 ms).
    let page = wait_for(
        "the page to show epoch 4",
        Duration::from_secs(10),
        || async {
            let page = get(&app.url).await;
            page.text
                .contains("<span id=\"epoch\">4</span>")
                .then_some(page)
        },
    )
    .await;
    assert!(
        page.text.contains("<td>after the failover</td>"),
        "{}",
        page.text
    );

    // Outage with no failover: a clear 503 naming the server.
    pair.kill9("b").await.expect("kill b");
    let addr_b = format!("127.0.0.1:{}", port("b"));
    let r = post(&entries, r#"{"id": "e-7", "body": "nobody home"}"#).await;
    assert_eq!(r.status, 503, "{r:?}");
    let msg = r.json()["error"].as_str().unwrap_or_default().to_owned();
    assert!(
        msg.contains("unreachable") && msg.contains(&addr_b),
        "{msg}"
    );
    let h = get(&format!("{}/healthz", app.url)).await;
    assert_eq!(h.status, 503, "{h:?}");
    assert!(h.text.contains("unreachable"), "{h:?}");
    let page = get(&app.url).await;
    assert_eq!(page.status, 503);
    assert!(page.text.contains("database unavailable"), "{}", page.text);

    // ... and with discovery gone too, the error says so.
    disco.stop();
    let r = wait_for(
        "the discovery failure to show",
        Duration::from_secs(10),
        || async {
            let r = post(&entries, r#"{"id": "e-7", "body": "nobody home"}"#).await;
            (r.status == 503 && r.text.contains("discovery")).then_some(r)
        },
    )
    .await;
    assert!(r.text.contains(&disco.url()), "{r:?}");

    // SIGTERM: a clean exit.
    let status = app.terminate().await;
    assert!(status.success(), "exit status after SIGTERM: {status:?}");
}

/// A newly promoted server can be slow to take its first connections (it is busy with
/// its end-of-recovery checkpoint). Clients that give up meanwhile (the drill's 1 s
/// timeout) must not abandon the connection half made: when each request connected on
/// its own and the next one started over, the app never finished connecting and every
/// write timed out for as long as the load lasted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_give_up_do_not_stop_a_slow_first_connection() {
    let pair = TestPair::start(PairOptions::default())
        .await
        .expect("PostgreSQL primary and replica");
    let password_file = pair.dir().join("secrets").join("su");
    let su = pair.client("a").await.expect("superuser connection");
    su.batch_execute(
        "CREATE TABLE entries (id VARCHAR(200) PRIMARY KEY, body TEXT NOT NULL, \
         region TEXT NOT NULL, created_at TIMESTAMPTZ NOT NULL DEFAULT now())",
    )
    .await
    .expect("create entries");
    // Hold the table: the app's set-up (CREATE INDEX IF NOT EXISTS) waits for the lock,
    // so connecting takes as long as this transaction stays open.
    su.batch_execute("BEGIN; LOCK TABLE entries IN ACCESS EXCLUSIVE MODE")
        .await
        .expect("lock entries");

    let disco = FakeDiscovery::start(answer(
        1,
        "a",
        "postgres",
        pair.instance("a").port,
        "postgres",
        "postgres",
    ))
    .await;
    let app = App::start(
        &[
            "--region",
            "a",
            "--discovery",
            &disco.url(),
            "--db-password-file",
            &password_file.display().to_string(),
        ],
        &[],
    )
    .await;
    let entries = format!("{}/api/entries", app.url);
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .expect("http client");
    let mut gave_up = 0;
    for i in 0..10 {
        let r = impatient
            .post(&entries)
            .header("content-type", "application/json")
            .body(json!({"id": format!("slow-{i}"), "body": "x"}).to_string())
            .send()
            .await;
        if r.is_err_and(|e| e.is_timeout()) {
            gave_up += 1;
        }
    }
    assert_eq!(
        gave_up, 10,
        "every impatient write gave up while the table was held"
    );
    // The set-up really waits on the lock (else this test proves nothing)…
    let waiting: i64 = su
        .query_one(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE application_name = 'lifeboat-sample-app' AND wait_event_type = 'Lock'",
            &[],
        )
        .await
        .expect("pg_stat_activity")
        .get(0);
    assert_eq!(waiting, 1, "one connection's set-up waits for the table");
    // …and the requests that gave up did not each open connections of their own.
    let backends = app_backends(&pair, "a").await;
    assert!(
        backends.len() <= lifeboat_sample_app::db::PG_CONNECTIONS,
        "{} connections after 10 abandoned requests: {backends:?}",
        backends.len()
    );

    su.batch_execute("COMMIT").await.expect("release entries");
    let ok = post(&entries, r#"{"id": "after", "body": "x"}"#).await;
    assert_eq!(ok.status, 201, "{ok:?}");
    assert!(has_row(&pair, "a", "after").await);
    // The connection made while the clients gave up is the one in use.
    assert_eq!(app_backends(&pair, "a").await, backends);
}
