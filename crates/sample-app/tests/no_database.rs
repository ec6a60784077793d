//! The sample app when lifeboat cannot tell it where the database is: every endpoint
//! that needs the database is a 503 that says why; the page still renders.

mod common;

use common::{App, FakeDiscovery, answer, closed_port, get, post};
use serde_json::json;

#[tokio::test]
async fn unreachable_discovery_and_no_database_endpoint_are_503s_that_say_why() {
    let (_reserved, port) = closed_port();
    let url = format!("http://127.0.0.1:{port}/v1/discovery");
    let objects = tempfile::tempdir().expect("objects dir");
    let app = App::start(
        &[
            "--discovery",
            &url,
            "--objects-dir",
            &objects.path().display().to_string(),
        ],
        // As the agent starts a service.
        &[("LIFEBOAT_REGION", "b"), ("LIFEBOAT_ROLE", "standby")],
    )
    .await;
    let r = post(
        &format!("{}/api/entries", app.url),
        r#"{"id": "x", "body": "y"}"#,
    )
    .await;
    assert_eq!(r.status, 503, "{r:?}");
    let msg = r.json()["error"].as_str().unwrap_or_default().to_owned();
    assert!(
        msg.contains("cannot discover the database") && msg.contains(&url),
        "{msg}"
    );
    let h = get(&format!("{}/healthz", app.url)).await;
    assert_eq!(h.status, 503, "{h:?}");
    assert!(h.text.contains(&url), "{h:?}");
    let page = get(&app.url).await;
    assert_eq!(page.status, 503);
    assert!(
        page.text.contains("id=\"region\">b</span>"),
        "{}",
        page.text
    );
    assert!(page.text.contains("(no message yet)"), "{}", page.text);
    assert!(page.text.contains("(role: standby)"), "{}", page.text);

    // Discovery answers, but no region is active: no database endpoint.
    let disco = FakeDiscovery::start(json!({"epoch": 3, "active": null, "address": null})).await;
    let app = App::start(&["--region", "b", "--discovery", &disco.url()], &[]).await;
    let r = post(&format!("{}/api/entries", app.url), r#"{"id": "x"}"#).await;
    assert_eq!(r.status, 503, "{r:?}");
    assert!(r.text.contains("names no database endpoint"), "{r:?}");
    let r = get(&format!("{}/api/entries/x", app.url)).await;
    assert_eq!(r.status, 503, "{r:?}");
    // Bad input is still the client's fault, whatever the database does.
    let r = post(&format!("{}/api/entries", app.url), "[1, 2]").await;
    assert_eq!(r.status, 400, "{r:?}");
}

/// A server that accepts connections and never says a word (a hung or half-partitioned
/// database): requests fail with 503 "timed out", they do not hang.
#[tokio::test]
async fn a_silent_database_is_a_503_not_a_hang() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = silent.local_addr().expect("addr").port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = silent.accept().await {
            held.push(sock);
        }
    });
    for engine in ["postgres", "mariadb"] {
        let disco = FakeDiscovery::start(answer(1, "a", engine, port, "app", "app")).await;
        let app = App::start(&["--region", "a", "--discovery", &disco.url()], &[]).await;
        let r = post(
            &format!("{}/api/entries", app.url),
            r#"{"id": "x", "body": "y"}"#,
        )
        .await;
        assert_eq!(r.status, 503, "{engine}: {r:?}");
        let msg = r.json()["error"].as_str().unwrap_or_default().to_owned();
        assert!(
            msg.contains("unreachable") && msg.contains("timed out"),
            "{engine}: {msg}"
        );
        let h = get(&format!("{}/healthz", app.url)).await;
        assert_eq!(h.status, 503, "{engine}: {h:?}");
    }
}
