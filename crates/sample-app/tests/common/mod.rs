//! Test harness: the real `lifeboat-sample-app` binary on port 0, a fake discovery
//! endpoint whose answer a test changes, and HTTP helpers.
//!
//! Guarantees: the app process is killed and the discovery server stopped on Drop, also
//! when a test fails; nothing is shared between tests (own ports, own directories).

#![allow(dead_code)]

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// What the fake controller answers: a status and a body.
type Answer = Arc<Mutex<(StatusCode, Value)>>;

/// A fake `GET /v1/discovery` on 127.0.0.1, port 0.
pub struct FakeDiscovery {
    pub addr: SocketAddr,
    answer: Answer,
    cancel: CancellationToken,
}

impl FakeDiscovery {
    pub async fn start(initial: Value) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind discovery");
        let addr = listener.local_addr().expect("discovery addr");
        let answer: Answer = Arc::new(Mutex::new((StatusCode::OK, initial)));
        let cancel = CancellationToken::new();
        let router = axum::Router::new()
            .route(
                "/v1/discovery",
                axum::routing::get(|State(a): State<Answer>| async move {
                    let (status, body) = a.lock().expect("answer lock").clone();
                    (status, axum::Json(body)).into_response()
                }),
            )
            .with_state(answer.clone());
        let stop = cancel.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, router)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
        });
        Self {
            addr,
            answer,
            cancel,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/v1/discovery", self.addr)
    }

    pub fn set(&self, body: Value) {
        *self.answer.lock().expect("answer lock") = (StatusCode::OK, body);
    }

    /// Stop answering at all (the port is closed afterwards).
    pub fn stop(&self) {
        self.cancel.cancel();
    }
}

impl Drop for FakeDiscovery {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// A discovery answer naming one database.
pub fn answer(
    epoch: u64,
    active: &str,
    engine: &str,
    port: u16,
    dbname: &str,
    user: &str,
) -> Value {
    json!({
        "epoch": epoch,
        "active": active,
        "address": "127.0.0.1",
        "endpoints": {"database": {
            "engine": engine, "host": "127.0.0.1", "port": port, "dbname": dbname, "user": user,
        }},
    })
}

/// The app binary, running.
pub struct App {
    pub url: String,
    child: tokio::process::Child,
}

impl App {
    /// Start the binary with `args` (and `envs`) and wait until it prints its address.
    pub async fn start(args: &[&str], envs: &[(&str, &str)]) -> Self {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_lifeboat-sample-app"));
        cmd.args(["--bind", "127.0.0.1:0"])
            .args(args)
            .env_remove("LIFEBOAT_REGION")
            .env_remove("LIFEBOAT_ROLE")
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn lifeboat-sample-app");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let url = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await.expect("read stdout") {
                if let Some(url) = line.strip_prefix("listening app ") {
                    return url.trim().to_owned();
                }
            }
            panic!("the app exited without printing its address");
        })
        .await
        .expect("the app printed its address within 30 s");
        // Keep draining stdout so the app never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self { url, child }
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("app pid")
    }

    /// SIGTERM, then the exit status (within 20 s).
    pub async fn terminate(mut self) -> std::process::ExitStatus {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
        tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .expect("the app exits within 20 s of SIGTERM")
            .expect("wait for the app")
    }
}

/// An HTTP answer: status and body text.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub text: String,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("http client")
}

pub async fn get(url: &str) -> Reply {
    let r = http().get(url).send().await.expect("GET");
    Reply {
        status: r.status().as_u16(),
        text: r.text().await.expect("body"),
    }
}

pub async fn post(url: &str, body: &str) -> Reply {
    let r = http()
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .expect("POST");
    Reply {
        status: r.status().as_u16(),
        text: r.text().await.expect("body"),
    }
}

/// Call `f` until it returns Some, or panic with `what` after `limit`.
pub async fn wait_for<T, F, Fut>(what: &str, limit: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A 127.0.0.1 port that is bound but not listening: connecting is refused, and no other
/// test can take it while the socket lives.
pub fn closed_port() -> (tokio::net::TcpSocket, u16) {
    let s = tokio::net::TcpSocket::new_v4().expect("socket");
    s.bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
    let port = s.local_addr().expect("addr").port();
    (s, port)
}
