//! A frozen witness (SIGSTOP, a stalled VM) accepts connections and answers nothing.
//! The application's discovery must not wait for it once it has an answer: every
//! request of the application would stall for the request timeout each time the cache
//! expires (issue 10: a paused controller cost the drill's client 3 s of writes).
#![allow(clippy::unwrap_used)]

use axum::{Router, routing::get};
use lifeboat_core::Epoch;
use lifeboat_sample_app::discovery::Discoverer;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::watch;

/// A discovery endpoint that answers at once while `frozen` is false, and holds every
/// request (connection open, no answer) while it is true.
struct Witness {
    url: String,
    frozen: watch::Sender<bool>,
    epoch: Arc<AtomicU64>,
    held: Arc<AtomicU64>,
    _stop: tokio_util::sync::DropGuard,
}

async fn witness() -> Witness {
    let (frozen, rx) = watch::channel(false);
    let epoch = Arc::new(AtomicU64::new(1));
    let held = Arc::new(AtomicU64::new(0));
    let (e, h) = (epoch.clone(), held.clone());
    let app = Router::new().route(
        "/v1/discovery",
        get(move || {
            let (mut rx, e, h) = (rx.clone(), e.clone(), h.clone());
            async move {
                if *rx.borrow_and_update() {
                    h.fetch_add(1, Ordering::SeqCst);
                    let _ = rx.wait_for(|f| !*f).await;
                }
                let epoch = e.load(Ordering::SeqCst);
                format!(
                    r#"{{"epoch": {epoch}, "active": "a", "address": "127.0.1.1", "endpoints": {{"database": {{"engine": "postgres", "host": "127.0.1.1", "port": 5432, "dbname": "app", "user": "app"}}}}}}"#
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let s = stop.clone();
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { s.cancelled().await })
            .await
    });
    Witness {
        url: format!("http://{addr}/v1/discovery"),
        frozen,
        epoch,
        held,
        _stop: stop.drop_guard(),
    }
}

/// Poll `f` every 20 ms until it returns Some, for at most `secs` seconds.
async fn until<T>(what: &str, secs: u64, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_controller_does_not_stall_discovery() {
    let w = witness().await;
    // Every answer expires at once; a request would wait an hour for the frozen witness:
    // a discoverer that waited for it could not return within the test's deadline.
    let d = Arc::new(
        Discoverer::with_limits(&w.url, Duration::ZERO, Duration::from_secs(3600)).unwrap(),
    );
    let first = d.get().await.unwrap();
    assert_eq!(first.epoch, Epoch(1));

    w.frozen.send_replace(true);
    // The first get after the freeze starts a renewal the witness holds; it and every
    // later one return the last answer while that renewal is outstanding.
    for i in 0..50 {
        let got = tokio::time::timeout(Duration::from_secs(30), d.get())
            .await
            .unwrap_or_else(|_| panic!("get {i} waited for the frozen controller"))
            .unwrap();
        assert_eq!(got.epoch, Epoch(1));
    }
    until("the renewal to reach the frozen witness", 30, || {
        (w.held.load(Ordering::SeqCst) > 0).then_some(())
    })
    .await;
    // One renewal at a time, however many callers: the witness holds exactly one.
    assert_eq!(w.held.load(Ordering::SeqCst), 1, "one renewal at a time");

    // The witness thaws with a new epoch: the held renewal brings it in, and gets see it.
    w.epoch.store(2, Ordering::SeqCst);
    w.frozen.send_replace(false);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if d.get().await.unwrap().epoch == Epoch(2) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new epoch never reached the cache"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_discoverer_without_an_answer_waits_and_says_why() {
    // No answer yet: the caller has nothing else to use, so it waits for the request and
    // gets the reason when it fails (connection refused here: nothing listens).
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let d = Arc::new(
        Discoverer::with_limits(
            format!("http://127.0.0.1:{port}/v1/discovery"),
            Duration::ZERO,
            Duration::from_secs(5),
        )
        .unwrap(),
    );
    let err = d.get().await.expect_err("nothing listens");
    assert!(
        err.to_string().contains("cannot discover the database"),
        "{err}"
    );
    assert!(err.to_string().contains(&port.to_string()), "{err}");
}
