//! The sample app against a real MariaDB server (lifeboat_mysql's test harness): the
//! function tier, the page, health that sees `read_only`, and an outage as a 503.

mod common;

use common::{App, FakeDiscovery, answer, get, post};
use lifeboat_mysql::testing::{ADMIN_PASSWORD, MysqlPair, PairOptions, region_a};
use mysql_async::prelude::Queryable;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_from_mariadb_and_sees_read_only_and_outage() {
    let pair = MysqlPair::start_primary(PairOptions::default())
        .await
        .expect("MariaDB primary");
    let mut admin = pair.admin(&region_a()).await.expect("admin connection");
    admin
        .query_drop("CREATE DATABASE app")
        .await
        .expect("create database app");
    let port = pair.ports[0];
    let disco = FakeDiscovery::start(answer(1, "a", "mariadb", port, "app", "lifeboat")).await;
    let app = App::start(
        &[
            "--region",
            "a",
            "--discovery",
            &disco.url(),
            "--db-password-env",
            "SAMPLE_APP_TEST_DB_PW",
        ],
        &[("SAMPLE_APP_TEST_DB_PW", ADMIN_PASSWORD)],
    )
    .await;
    let entries = format!("{}/api/entries", app.url);

    let h = get(&format!("{}/healthz", app.url)).await;
    assert_eq!((h.status, h.text.trim()), (200, "ok"), "{h:?}");
    let created = post(&entries, r#"{"id": "m-1", "body": "Grüße <from> MariaDB"}"#).await;
    assert_eq!(created.status, 201, "{created:?}");
    let row = created.json();
    assert_eq!(row["region"], "a");
    assert_eq!(row["body"], "Grüße <from> MariaDB");
    assert!(
        row["created_at"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{row}"
    );
    let again = post(&entries, r#"{"id": "m-1", "body": "Grüße <from> MariaDB"}"#).await;
    assert_eq!(again.status, 200, "{again:?}");
    assert_eq!(again.json(), row);
    // Ids are case-sensitive, as on PostgreSQL.
    let upper = post(&entries, r#"{"id": "M-1", "body": "upper"}"#).await;
    assert_eq!(upper.status, 201, "{upper:?}");
    let read = get(&format!("{entries}/m-1")).await;
    assert_eq!(read.json(), row);
    assert_eq!(get(&format!("{entries}/m-2")).await.status, 404);
    let all = get(&entries).await.json();
    assert_eq!(all, json!({"ids": ["M-1", "m-1"], "next": null}));
    let page = get(&app.url).await;
    assert_eq!(page.status, 200, "{page:?}");
    assert!(
        page.text.contains("<td>Grüße &lt;from&gt; MariaDB</td>"),
        "{}",
        page.text
    );
    assert!(
        page.text.contains("(no object store configured)"),
        "{}",
        page.text
    );

    // A read-only server is not healthy.
    admin
        .query_drop("SET GLOBAL read_only = 1")
        .await
        .expect("set read_only");
    let h = get(&format!("{}/healthz", app.url)).await;
    assert_eq!(h.status, 503, "{h:?}");
    assert!(h.text.contains("read-only"), "{h:?}");
    admin
        .query_drop("SET GLOBAL read_only = 0")
        .await
        .expect("clear read_only");
    drop(admin);

    // The server dies: a clear 503 naming it.
    pair.kill(&region_a());
    let r = post(&entries, r#"{"id": "m-3", "body": "nobody home"}"#).await;
    assert_eq!(r.status, 503, "{r:?}");
    let msg = r.json()["error"].as_str().unwrap_or_default().to_owned();
    assert!(
        msg.contains("MariaDB") && msg.contains("unreachable") && msg.contains(&port.to_string()),
        "{msg}"
    );
}
