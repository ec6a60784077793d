//! The controller's dashboard, driven by headless Chromium over the DevTools protocol
//! on a running `lifeboat demo`, as an operator would use it: the page shows region a
//! active, a failover started from the page (confirmed, with the operator's token)
//! makes it show b active without a reload, the journal's times are human, no markup
//! shows as text. Screenshots are kept under the test target's tmp directory (the path
//! is printed).
#![allow(clippy::unwrap_used)]

mod common;

use base64::Engine as _;
use common::*;
use futures::{SinkExt, StreamExt};
use lifeboat_config::Config;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// One page of a headless Chromium, and the browser (killed on drop).
struct Browser {
    _child: tokio::process::Child,
    ws: Ws,
    next_id: u64,
    shots: PathBuf,
}

impl Browser {
    async fn open(url: &str, profile: &Path, shots: PathBuf) -> Browser {
        let mut cmd = tokio::process::Command::new("chromium");
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--no-first-run",
            "--window-size=1280,1400",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("about:blank")
        .env("HOME", profile)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "chromium is not installed: run the README's test command (it installs chromium)"
            ),
            Err(e) => panic!("running chromium: {e}"),
        };
        // "DevTools listening on ws://127.0.0.1:PORT/devtools/browser/ID" (port 0: its
        // own choice, read back).
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let browser_ws = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(l) = lines.next_line().await.unwrap() {
                if let Some(u) = l.strip_prefix("DevTools listening on ") {
                    return u.trim().to_owned();
                }
            }
            panic!("chromium exited before it listened");
        })
        .await
        .expect("chromium's DevTools endpoint within 60 s");
        // Keep draining its stderr, so that it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let host = browser_ws
            .strip_prefix("ws://")
            .and_then(|r| r.split('/').next())
            .unwrap()
            .to_owned();
        let target: Value = reqwest::Client::new()
            .put(format!("http://{host}/json/new?{url}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let page_ws = target["webSocketDebuggerUrl"].as_str().unwrap().to_owned();
        let (ws, _) = tokio_tungstenite::connect_async(page_ws).await.unwrap();
        std::fs::create_dir_all(&shots).unwrap();
        Browser {
            _child: child,
            ws,
            next_id: 0,
            shots,
        }
    }

    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let msg = json!({"id": id, "method": method, "params": params}).to_string();
        self.ws.send(Message::Text(msg.into())).await.unwrap();
        let reply = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(m) = self.ws.next().await {
                if let Message::Text(t) = m.unwrap() {
                    let v: Value = serde_json::from_str(&t).unwrap();
                    if v["id"] == id {
                        return v;
                    }
                }
            }
            panic!("chromium closed the DevTools connection");
        })
        .await
        .unwrap_or_else(|_| panic!("{method}: no answer from chromium in 30 s"));
        assert!(reply.get("error").is_none(), "{method}: {reply}");
        reply["result"].clone()
    }

    /// The value of a JavaScript expression in the page.
    async fn eval(&mut self, expr: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expr, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        assert!(r.get("exceptionDetails").is_none(), "{expr}: {r}");
        r["result"]["value"].clone()
    }

    async fn navigate(&mut self, url: &str) {
        self.call("Page.navigate", json!({ "url": url })).await;
    }

    async fn text(&mut self, id: &str) -> String {
        let v = self
            .eval(&format!(
                "(document.getElementById({id:?}) || {{}}).textContent || ''"
            ))
            .await;
        v.as_str().unwrap_or_default().to_owned()
    }

    async fn wait_text(&mut self, id: &str, want: &str, timeout: Duration) -> Duration {
        let t0 = Instant::now();
        loop {
            let got = self.text(id).await;
            if got == want {
                return t0.elapsed();
            }
            assert!(
                t0.elapsed() < timeout,
                "#{id} says {got:?}, not {want:?}, after {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Nothing on the page reads as markup or an escape: text is placed as text.
    async fn assert_no_markup_as_text(&mut self) {
        let body = self.eval("document.body.innerText").await;
        let body = body.as_str().unwrap();
        for markup in ["&lt;", "&gt;", "&amp;", "<br", "</"] {
            assert!(!body.contains(markup), "{markup} shows as text: {body}");
        }
    }

    async fn screenshot(&mut self, name: &str) -> PathBuf {
        let r = self
            .call(
                "Page.captureScreenshot",
                json!({"format": "png", "captureBeyondViewport": true}),
            )
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().unwrap())
            .unwrap();
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        let path = self.shots.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        path
    }
}

async fn controller_active(api: &str) -> Option<String> {
    let (_, body) = http_get(&format!("http://{api}/v1/status")).await?;
    let v: Value = serde_json::from_str(&body).ok()?;
    v["active"].as_str().map(str::to_owned)
}

/// a active and healthy by quorum, b's roles ready to be promoted.
async fn steady_on_a(api: &str) -> bool {
    let Some((_, body)) = http_get(&format!("http://{api}/v1/status")).await else {
        return false;
    };
    let Ok(v) = serde_json::from_str::<Value>(&body) else {
        return false;
    };
    let region = |name: &str| {
        v["regions"]
            .as_array()
            .and_then(|rs| rs.iter().find(|r| r["name"] == name))
            .cloned()
            .unwrap_or_default()
    };
    let (a, b) = (region("a"), region("b"));
    v["active"] == "a"
        && a["health"] == "healthy"
        && b["roles"]
            .as_array()
            .is_some_and(|rs| !rs.is_empty() && rs.iter().all(|r| r["ready_to_promote"] == true))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_sees_a_active_fails_over_from_the_page_and_sees_b_without_a_reload() {
    let (dir, demo_dir, demo, config_path, _) = start_demo().await;
    let cfg = Config::load(Path::new(&config_path)).unwrap();
    let api = cfg.controller.api_addr.to_string();
    let token = std::fs::read_to_string(demo_dir.join("token"))
        .unwrap()
        .trim()
        .to_owned();
    // The deployment as an operator finds it: a active and healthy, b ready.
    let t0 = Instant::now();
    while !steady_on_a(&api).await {
        assert!(
            t0.elapsed() < Duration::from_secs(90),
            "a never active and healthy with b ready: {}",
            demo_log_tails(&demo_dir)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard-screenshots");
    let mut page = Browser::open(
        &format!("http://{api}/"),
        &dir.path().join("chromium"),
        shots.clone(),
    )
    .await;
    page.wait_text("conn", "live", Duration::from_secs(30))
        .await;
    page.wait_text("active", "a", Duration::from_secs(30)).await;
    // The region cards: a marked active, b a standby with the actions.
    assert_eq!(
        page.eval("document.querySelector('.region.active').dataset.region")
            .await,
        "a"
    );
    // The demo's table servers: both regions' up, no conflict, each pulling the other.
    let t0 = Instant::now();
    loop {
        let rows = page
            .eval("[...document.querySelectorAll('#tables tr')].slice(1).map((r) => r.textContent).join('\\n')")
            .await;
        let rows = rows.as_str().unwrap_or_default().to_owned();
        if rows.lines().count() == 2
            && rows
                .lines()
                .all(|r| r.contains("up") && r.contains("none") && r.contains("pending"))
        {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "the Global tables panel shows {rows:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The journal's first rows arrive with the first update; its times are ISO 8601 UTC.
    let t0 = Instant::now();
    let first_time = loop {
        let v = page
            .eval("(document.querySelector('#journal tbody tr td.t') || {}).textContent || ''")
            .await;
        let s = v.as_str().unwrap_or_default().to_owned();
        if !s.is_empty() {
            break s;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "no journal rows");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let iso = |s: &str| {
        let b = s.as_bytes();
        s.len() == 24
            && b[4] == b'-'
            && b[7] == b'-'
            && b[10] == b'T'
            && b[13] == b':'
            && b[16] == b':'
            && b[19] == b'.'
            && b[23] == b'Z'
            && s.chars().filter(char::is_ascii_digit).count() == 17
    };
    assert!(iso(&first_time), "journal time {first_time:?}");
    // Health as a matrix: a row per check, a column per vantage point.
    let cols = page
        .eval("document.querySelectorAll('#health tr:first-child th').length")
        .await;
    assert!(cols.as_u64().unwrap() >= 4, "health matrix columns: {cols}");
    page.assert_no_markup_as_text().await;
    let first = page.screenshot("1-a-active").await;

    // A marker that a reload would wipe out.
    page.eval("window.__notReloaded = 42").await;

    // A wrong token is refused, and nothing moves.
    page.eval("document.querySelector('button[data-action=failover][data-to=b]').click()")
        .await;
    assert_eq!(
        page.eval("document.getElementById('confirm').open").await,
        true
    );
    page.eval("document.getElementById('token').value = 'not-the-token'")
        .await;
    page.eval("document.getElementById('confirm-go').click()")
        .await;
    let t0 = Instant::now();
    loop {
        let r = page.text("action-result").await;
        if r.contains("HTTP 401") {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "action result {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(controller_active(&api).await.as_deref(), Some("a"));

    // The failover, confirmed: the dialog says what will happen first.
    page.eval("document.querySelector('button[data-action=failover][data-to=b]').click()")
        .await;
    let said = page.text("confirm-text").await;
    assert!(
        said.contains("a is fenced") && said.contains("b is promoted"),
        "{said}"
    );
    let dialog = page.screenshot("2-confirm-failover").await;
    page.eval(&format!(
        "document.getElementById('token').value = {token:?}"
    ))
    .await;
    page.eval("document.getElementById('confirm-go').click()")
        .await;
    let confirmed = Instant::now();
    // The controller moves; the page follows without a reload.
    let api_b = loop {
        if controller_active(&api).await.as_deref() == Some("b") {
            break confirmed.elapsed();
        }
        assert!(
            confirmed.elapsed() < Duration::from_secs(60),
            "the controller never made b active: {}",
            demo_log_tails(&demo_dir)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // The issue's goal is 2 s; a shared CI machine gets more room, the figure is printed.
    let page_b = api_b + page.wait_text("active", "b", Duration::from_secs(15)).await;
    assert_eq!(
        page.eval("window.__notReloaded").await,
        42,
        "the page reloaded"
    );
    assert_eq!(
        page.eval("document.querySelector('.region.active').dataset.region")
            .await,
        "b"
    );
    let result = page.text("action-result").await;
    assert!(result.contains("accepted"), "{result}");
    // The failover's steps arrive in the journal and are drawn as a timeline.
    let t0 = Instant::now();
    loop {
        let n = page
            .eval("document.querySelectorAll('#timeline svg circle').length")
            .await;
        if n.as_u64().unwrap_or(0) >= 3 {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "timeline: {n}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let last = page.screenshot("3-b-active").await;

    // A drill's report is listed on the dashboard (the drill hands it to the
    // controller) and opens from it.
    let out = Command::new(bin())
        .args(["drill", "--config", &config_path, "--scenario", "app-crash"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "drill: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let t0 = Instant::now();
    let href = loop {
        let v = page
            .eval("(document.querySelector('#drills tr[data-drill] a') || {}).href || ''")
            .await;
        let href = v.as_str().unwrap_or_default().to_owned();
        if !href.is_empty() {
            break href;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "no drill listed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let row = page
        .eval("document.querySelector('#drills tr[data-drill]').innerText")
        .await;
    let row = row.as_str().unwrap();
    assert!(row.contains("app-crash") && row.contains("passed"), "{row}");
    let drills = page.screenshot("4-drill-listed").await;
    page.navigate(&href).await;
    let t0 = Instant::now();
    loop {
        let n = page.eval("document.querySelectorAll('svg').length").await;
        if n.as_u64().unwrap_or(0) > 0 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the report has no timeline"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Region a's agent has a read-only page of its own.
    let agent_a = cfg.regions["a"].agent_addr;
    page.navigate(&format!("http://{agent_a}/")).await;
    page.wait_text("conn", "live", Duration::from_secs(30))
        .await;
    page.wait_text("region", "a", Duration::from_secs(10)).await;
    // (The drill crashed b's app: a is active again, at epoch 3.)
    page.wait_text("epoch", "3", Duration::from_secs(30)).await;
    page.wait_text("role", "ACTIVE", Duration::from_secs(30))
        .await;
    let rows = page
        .eval("document.querySelectorAll('#roles tbody tr').length")
        .await;
    assert!(rows.as_u64().unwrap() >= 2, "a's roles: {rows}");
    let actions = page
        .eval("document.querySelectorAll('button').length")
        .await;
    assert_eq!(actions, 0, "the agent's page is read-only");
    page.assert_no_markup_as_text().await;
    let agent_shot = page.screenshot("5-agent-a").await;
    eprintln!(
        "dashboard: the controller made b active {} ms after the confirmation, the page showed it {} ms after that ({} ms in all); screenshots {}, {}, {}, {}, {}",
        api_b.as_millis(),
        (page_b - api_b).as_millis(),
        page_b.as_millis(),
        first.display(),
        dialog.display(),
        last.display(),
        drills.display(),
        agent_shot.display()
    );
    drop(page);
    stop_demo(demo, &demo_dir).await;
}
