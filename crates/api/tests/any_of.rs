//! `ApiClient::any_of`: a call goes on to the next controller when one is
//! unreachable or not the leader (421), stays with the one that answered, and takes
//! any other answer as final. Real HTTP servers on port 0.
#![allow(clippy::unwrap_used)]

use axum::Json;
use axum::http::StatusCode;
use axum::routing::post;
use lifeboat_api::ApiClient;
use lifeboat_api::http::ApiError;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// A server answering POST /v1/x with `status` (200: `{"n": id}`), counting calls.
async fn server(id: u64, status: StatusCode) -> (String, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let app = axum::Router::new().route(
        "/v1/x",
        post(move || {
            let c = c.clone();
            async move {
                c.fetch_add(1, Ordering::Relaxed);
                if status == StatusCode::OK {
                    Ok(Json(serde_json::json!({ "n": id })))
                } else {
                    Err(ApiError::new(status, format!("server {id} says {status}")))
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), calls)
}

/// A base nothing listens on.
fn dead() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}", l.local_addr().unwrap())
}

#[derive(Debug, serde::Deserialize)]
struct N {
    n: u64,
}

#[tokio::test]
async fn a_follower_or_a_dead_controller_is_passed_over_and_the_leader_kept() {
    let (follower, f_calls) = server(1, StatusCode::MISDIRECTED_REQUEST).await;
    let (leader, l_calls) = server(2, StatusCode::OK).await;
    let c = ApiClient::any_of(
        vec![dead(), follower.clone(), leader.clone()],
        None,
        Duration::from_secs(2),
    );
    let r: N = c.post("/v1/x", &()).await.unwrap();
    assert_eq!(r.n, 2);
    assert_eq!(c.base(), leader, "stays with the one that answered");
    let _: N = c.post("/v1/x", &()).await.unwrap();
    assert_eq!(
        f_calls.load(Ordering::Relaxed),
        1,
        "the follower was asked once"
    );
    assert_eq!(l_calls.load(Ordering::Relaxed), 2);
}

#[tokio::test]
async fn any_other_answer_is_final() {
    let (busy, _) = server(1, StatusCode::SERVICE_UNAVAILABLE).await;
    let (leader, l_calls) = server(2, StatusCode::OK).await;
    let c = ApiClient::any_of(vec![busy, leader], None, Duration::from_secs(2));
    let e = c.post::<_, N>("/v1/x", &()).await.unwrap_err();
    assert_eq!(e.status(), Some(503), "{e}");
    assert_eq!(
        l_calls.load(Ordering::Relaxed),
        0,
        "a decision is not retried elsewhere"
    );
}

#[tokio::test]
async fn when_nobody_leads_the_last_refusal_is_the_answer() {
    let (f1, _) = server(1, StatusCode::MISDIRECTED_REQUEST).await;
    let (f2, _) = server(2, StatusCode::MISDIRECTED_REQUEST).await;
    let c = ApiClient::any_of(vec![f1, f2], None, Duration::from_secs(2));
    let e = c.post::<_, N>("/v1/x", &()).await.unwrap_err();
    assert_eq!(e.status(), Some(421), "{e}");
}

/// A server answering GET /v1/status with `body`.
async fn status_server(body: serde_json::Value) -> String {
    let app = axum::Router::new().route(
        "/v1/status",
        axum::routing::get(move || {
            let b = body.clone();
            async move { Json(b) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

fn status(phase: &str, leading: bool, leader_url: &str) -> serde_json::Value {
    serde_json::json!({
        "deployment": "d", "epoch": 4, "active": "a", "phase": phase, "mode": "automatic",
        "lease": null, "regions": [], "failovers": 0,
        "leadership": { "this": if leading { "c2" } else { "c1" }, "leader": "c2",
            "leader_url": leader_url, "leading": leading, "etcd": [] }
    })
}

/// `leader_status` through a follower: the leader's view (a follower's is thinner:
/// no agents' reports, phase "follower of …"), and later calls go to the leader. A
/// leader that cannot be asked leaves the follower's view, not an error.
#[tokio::test]
async fn leader_status_asks_the_leader_a_follower_names() {
    let leader = {
        // The leader names itself: its URL is only known once it listens.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        drop(l);
        url
    };
    let follower = status_server(status("follower of c2 (state from etcd)", false, &leader)).await;
    let c = ApiClient::any_of(vec![follower.clone()], None, Duration::from_secs(2));
    let st = c.leader_status().await.unwrap();
    assert_eq!(
        st.phase, "follower of c2 (state from etcd)",
        "the leader is down"
    );

    let leader = status_server(status("steady", true, "")).await;
    let follower = status_server(status("follower of c2 (state from etcd)", false, &leader)).await;
    let c = ApiClient::any_of(vec![follower, leader.clone()], None, Duration::from_secs(2));
    let st = c.leader_status().await.unwrap();
    assert_eq!(st.phase, "steady", "the leader's own view");
    assert_eq!(c.base(), leader, "later calls go to the leader first");
}
