//! The whole system on one machine: `lifeboat demo` (PostgreSQL, synchronous
//! replication) and a region-outage drill against it, as a newcomer would run them;
//! the sample app's message form, through each region's S3 gateway.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use lifeboat_core::JournalKind;
use std::process::Command;
use std::time::Duration;

fn config_value(config: &str, key: &str) -> String {
    config
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key} = ")))
        .unwrap_or_else(|| panic!("{key} not in the demo's config"))
        .trim_matches('"')
        .to_owned()
}

/// Region `r`'s table server endpoint in the demo's config (`[tables.regions.r]`).
fn tables_endpoint(config: &str, r: &str) -> String {
    let section = format!("[tables.regions.{r}]");
    let from = config
        .find(&section)
        .unwrap_or_else(|| panic!("no {section} in the demo's config"));
    let listen = config_value(&config[from..], "listen");
    format!("http://{listen}")
}

async fn demo_tables_take_boto3_and_replicate(demo_dir: &std::path::Path, config: &str) {
    let secret = std::fs::read_to_string(demo_dir.join("tables-secret")).unwrap();
    let boto3 = |endpoint: &str, script: &str, args: &[&str]| {
        let out = std::process::Command::new("python3")
            .arg(script)
            .args(args)
            .env("ENDPOINT", endpoint)
            .env("KEY_ID", "AKIDLIFEBOATDEMO")
            .env("SECRET", secret.trim())
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .output()
            .expect("python3 runs");
        assert!(
            out.status.success(),
            "{script} {args:?} against {endpoint}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let (a, b) = (tables_endpoint(config, "a"), tables_endpoint(config, "b"));
    let api_checks = concat!(env!("CARGO_MANIFEST_DIR"), "/../tables/tests/boto3_api.py");
    let client = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/tables/client.py");
    boto3(&a, api_checks, &[]);
    let in_a: Vec<String> =
        serde_json::from_str(&boto3(&a, client, &[&a, "ids", "orders"])).unwrap();
    assert!(in_a.len() > 4000, "{}", in_a.len());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let out = std::process::Command::new("python3")
            .args([client, &b, "ids", "orders"])
            .env("KEY_ID", "AKIDLIFEBOATDEMO")
            .env("SECRET", secret.trim())
            .output()
            .unwrap();
        let in_b: Vec<String> = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if in_b == in_a {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "region b's table server holds {} of region a's {} items",
            in_b.len(),
            in_a.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Percent-encoding for a form field (`application/x-www-form-urlencoded`).
fn form_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The page's escaping of `s` (as crates/sample-app's `web::escape`).
fn html_escaped(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// `POST /message` of the sample app at `app` (its form): status and body.
async fn post_message(app: &str, message: &str) -> (u16, String) {
    let r = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap()
        .post(format!("{app}/message"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("message={}", form_encode(message)))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let location = r
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = r.text().await.unwrap_or_default();
    (status, format!("{location}{body}"))
}

/// The message form of the demo's sample app: a message left on region a's page is
/// written through a's S3 gateway and reaches region b's store (b's page shows it); the
/// same form in region b, a standby, gets b's gateway's refusal and changes nothing.
/// The demo's summary names both gateways. Returns the message left in a.
async fn demo_messages_go_through_the_active_regions_gateway(
    demo: &Proc,
    dir: &std::path::Path,
    demo_dir: &std::path::Path,
    config_path: &str,
    app_port: &str,
) -> String {
    let cfg = lifeboat_config::Config::load(std::path::Path::new(config_path)).unwrap();
    let gw = cfg
        .objects
        .as_ref()
        .and_then(|o| o.gateway.as_ref())
        .expect("the demo configures [objects.gateway]");
    let banner = demo.lines.lock().unwrap().join("\n");
    for r in ["a", "b"] {
        let line = format!("  s3 gateway  region {r}: http://{} ", gw.listen[r]);
        assert!(
            banner.lines().any(|l| l.starts_with(&line)
                && l.contains("bucket objects")
                && l.contains("objects-gateway-secret")),
            "the summary lacks {line:?}:\n{banner}"
        );
    }

    // Region a, the active one: written, 303 back to the page, shown at once.
    let app_a = format!("http://127.0.1.1:{app_port}");
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let left = format!("left in region a <em>{nanos}</em> & replicated");
    let (status, body) = post_message(&app_a, &left).await;
    assert_eq!(status, 303, "{body}");
    assert_eq!(body, "/");
    let (_, page_a) = http_get(&format!("{app_a}/")).await.unwrap();
    assert!(page_a.contains(&html_escaped(&left)), "{page_a}");
    assert!(!page_a.contains("<em>"), "unescaped: {page_a}");

    // Region b runs its app only once promoted (pilot light): start one by hand, with
    // the command line the demo gives b's agent (on a port of its own).
    let service = &cfg.regions["b"].services[0];
    let line = service.command.as_ref().unwrap()[2].clone();
    let (_, exec) = line.split_once("exec ").unwrap();
    let mut words = exec.split_whitespace();
    let mut cmd = Command::new(words.next().unwrap());
    let mut args: Vec<String> = words.map(str::to_owned).collect();
    let bind = args.iter().position(|a| a == "--bind").unwrap() + 1;
    args[bind] = "127.0.2.1:0".to_owned();
    assert!(args.contains(&"--s3-endpoint".to_owned()), "{line}");
    cmd.args(&args).env("LIFEBOAT_LOG", "info");
    let mut app_b = Proc::spawn("app-b", cmd, &dir.join("app-b.log"));
    let app_b_url = app_b
        .wait_line("listening app ", Duration::from_secs(30))
        .await;

    // Replicated: b's page shows a's message from b's own store.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let page_b = http_get(&format!("{app_b_url}/")).await.map(|(_, p)| p);
        if page_b
            .as_deref()
            .is_some_and(|p| p.contains(&html_escaped(&left)))
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "region b's page never showed the message left in a: {page_b:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Region b, not the active one: its gateway refuses ("is fenced" until its object
    // role follows a, "is a standby" after), the page says so, nothing changes.
    let refused = format!("left in region b {nanos}");
    let (status, body) = post_message(&app_b_url, &refused).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("refuses writes")
            && (body.contains("region b is a standby") || body.contains("region b is fenced")),
        "{body}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    for page in [&app_a, &app_b_url] {
        let (_, p) = http_get(&format!("{page}/")).await.unwrap();
        assert!(p.contains(&html_escaped(&left)), "{page}: {p}");
        assert!(!p.contains(&refused), "{page}: {p}");
    }
    for r in ["a", "b"] {
        let stored =
            std::fs::read_to_string(demo_dir.join(format!("objects-{r}")).join("msgdrdct.txt"))
                .unwrap();
        assert_eq!(stored, left, "region {r}'s store");
    }
    // Stopped before the drill (and before the demo ends: it runs from the demo's dir).
    app_b.signal(nix::sys::signal::Signal::SIGTERM);
    let _ = app_b.child.wait();
    left
}

/// `lifeboat drill --scenario S` against the demo, writing drill.json and drill.html
/// into `dir`; asserts it succeeded and returns its terminal summary and JSON report.
fn run_drill(
    dir: &std::path::Path,
    config_path: &str,
    scenario: &str,
) -> (String, serde_json::Value) {
    let report = dir.join("drill.json");
    let out = Command::new(bin())
        .args([
            "drill",
            "--config",
            config_path,
            "--scenario",
            scenario,
            "--json",
        ])
        .arg(&report)
        .arg("--html")
        .arg(dir.join("drill.html"))
        .output()
        .unwrap();
    let summary = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "drill failed: {summary}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    (summary, r)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_survives_a_region_outage_drill_without_losing_writes() {
    let (dir, demo_dir, demo, config_path, config) = start_demo().await;
    let app_port = config_value(&config, "app_port");
    let api = config_value(&config, "api_addr");
    let dns = config_value(&config, "dns_addr");

    // Before: region a serves the app and its page shows the replicated message.
    let (status, page) = http_get(&format!("http://127.0.1.1:{app_port}/"))
        .await
        .expect("app a answers");
    assert_eq!(status, 200, "{page}");
    // The page names the region that served it: a, not merely "some region".
    assert!(page.contains(r#"id="region">a</span>"#), "{page}");
    assert!(page.contains("Hello from the lifeboat demo"), "{page}");

    // The page's form writes through the active region's S3 gateway only.
    let left = demo_messages_go_through_the_active_regions_gateway(
        &demo,
        dir.path(),
        &demo_dir,
        &config_path,
        &app_port,
    )
    .await;

    // The demo's global tables: boto3's client and resource APIs against region a's
    // table server (the checks of crates/tables/tests/boto3_api.py), and every item
    // reaches region b.
    demo_tables_take_boto3_and_replicate(&demo_dir, &config).await;

    // The drill: black-box, through the demo's DNS, killing region a.
    let (summary, r) = run_drill(dir.path(), &config_path, "region-outage");
    let html = dir.path().join("drill.html");
    assert_eq!(r["scenario"], "region-outage");
    let run = &r["runs"][0];
    let rto = run["rto_ms"].as_f64().expect("rto_ms");
    assert!(rto > 0.0 && rto < 15_000.0, "RTO {rto} ms: {summary}");
    assert_eq!(
        run["lost_acknowledged_writes"], 0,
        "synchronous replication loses no acknowledged write: {summary}"
    );
    assert_eq!(run["dual_primary"], false, "{summary}");
    assert!(
        run["steps"].as_array().is_some_and(|s| !s.is_empty()),
        "{run}"
    );
    let html = std::fs::read_to_string(&html).unwrap();
    assert!(
        html.contains("<svg") && html.contains("promoted"),
        "HTML report has its timeline"
    );
    // The controller kept the report for its dashboard: listed, and the same HTML.
    let (_, list) = http_get(&format!("http://{api}/v1/drills")).await.unwrap();
    let list: serde_json::Value = serde_json::from_str(&list).unwrap();
    let listed = &list[0];
    assert_eq!(listed["scenario"], "region-outage", "{list}");
    assert_eq!(listed["passed"], true, "{list}");
    assert_eq!(listed["runs"], 1, "{list}");
    assert_eq!(
        listed["started_at_unix_ms"], r["started_at_unix_ms"],
        "{list}"
    );
    let id = listed["id"].as_str().unwrap();
    let (status, served) = http_get(&format!("http://{api}/drills/{id}"))
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        served, html,
        "the dashboard opens the report the drill wrote"
    );
    let (status, _) = http_get(&format!("http://{api}/drills/..%2Fcontroller.db"))
        .await
        .unwrap();
    assert_eq!(status, 400, "a report id is never a path");
    let refused = reqwest::Client::new()
        .post(format!("http://{api}/v1/drills"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401, "storing a report needs the token");

    // After: the app answers from region b, through the address DNS gives out.
    let (ip, port) = dns.rsplit_once(':').unwrap();
    let dug = Command::new("dig")
        .args([
            &format!("@{ip}"),
            "-p",
            port,
            "app.demo.lifeboat.",
            "A",
            "+short",
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&dug.stdout).trim(), "127.0.2.1");
    let (status, info) = http_get(&format!("http://127.0.2.1:{app_port}/api/info"))
        .await
        .expect("app b answers");
    assert_eq!(status, 200);
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["region"], "b");
    assert_eq!(info["active"], "b");
    // The message object was replicated: b's page shows it from b's own store (the
    // one left in a through a's gateway, which replaced the demo's first one).
    let (_, page_b) = http_get(&format!("http://127.0.2.1:{app_port}/"))
        .await
        .expect("page b");
    assert!(
        page_b.contains(&html_escaped(&left)),
        "region b's store lacks the message: {page_b}"
    );
    let st = lifeboat_api::ApiClient::new(format!("http://{api}"), None, Duration::from_secs(3))
        .status()
        .await
        .unwrap();
    assert_eq!(st.active.as_ref().map(|r| r.as_str()), Some("b"));

    // Ctrl-C: the demo stops everything it started.
    stop_demo(demo, &demo_dir).await;
    for r in ["a", "b"] {
        let pidfile = demo_dir.join(format!("pg-{r}")).join("postmaster.pid");
        if let Ok(text) = std::fs::read_to_string(&pidfile) {
            let pid: i32 = text.lines().next().unwrap().trim().parse().unwrap();
            assert!(
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err(),
                "PostgreSQL of region {r} still runs after the demo stopped"
            );
        }
    }
    assert!(
        http_get(&format!("http://127.0.2.1:{app_port}/"))
            .await
            .is_none(),
        "app b still answers"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_against_an_unreachable_controller_injects_nothing() {
    let d = Deployment::new(Options::default());
    let marker = d.dir.path().join("injected");
    let mut config = std::fs::read_to_string(&d.config).unwrap();
    config.push_str(&format!(
        "[drill]\napp_name = \"app.test.lifeboat.\"\napp_port = {}\ndns_server = \"127.0.0.1:9\"\n\n[drill.regions.a]\noutage_start = \"touch {}\"\noutage_stop = \"true\"\n",
        d.region("a").app_port,
        marker.display()
    ));
    std::fs::write(&d.config, config).unwrap();
    // No controller is running.
    let out = Command::new(bin())
        .args(["drill", "--config"])
        .arg(&d.config)
        .args(["--scenario", "region-outage"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("unreachable") && err.contains("nothing was injected"),
        "{err}"
    );
    assert!(
        !marker.exists(),
        "the fault command ran against an unreachable deployment"
    );
}

/// Only the primary's postmaster is killed (kill -9): the app's health check fails,
/// lifeboat promotes the replica, the epoch goes up and writes succeed on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_postmaster_promotes_the_replica() {
    let (dir, demo_dir, demo, config_path, config) = start_demo().await;
    let api = config_value(&config, "api_addr");
    let client =
        lifeboat_api::ApiClient::new(format!("http://{api}"), None, Duration::from_secs(3));
    let before = client.status().await.unwrap();
    assert_eq!(before.active.as_ref().map(|r| r.as_str()), Some("a"));

    let (summary, r) = run_drill(dir.path(), &config_path, "db-crash");
    let run = &r["runs"][0];
    assert_eq!(run["new_active"], "b", "{summary}");
    assert_eq!(run["lost_acknowledged_writes"], 0, "{summary}");
    assert_eq!(run["dual_primary"], false, "{summary}");
    let after = client.status().await.unwrap();
    assert!(
        after.epoch > before.epoch,
        "epoch {} -> {}",
        before.epoch,
        after.epoch
    );
    assert_eq!(after.active.as_ref().map(|r| r.as_str()), Some("b"));
    // Writes succeed on the promoted replica.
    let app_port = config_value(&config, "app_port");
    let http = reqwest::Client::new();
    let resp = http
        .post(format!("http://127.0.2.1:{app_port}/api/entries"))
        .json(
            &serde_json::json!({"id": "after-db-crash", "body": "written on the promoted replica"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status().as_u16(),
        201,
        "{}",
        resp.text().await.unwrap_or_default()
    );
    stop_demo(demo, &demo_dir).await;
}

/// `--scenario app-crash` on the demo: region a's app is killed and kept from restarting;
/// its health check fails, lifeboat fails over to b (database and app), no acknowledged
/// write is lost, and b's app takes writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_crash_drill_fails_over_to_the_other_region() {
    let (dir, demo_dir, demo, config_path, config) = start_demo().await;
    let (summary, r) = run_drill(dir.path(), &config_path, "app-crash");
    assert_eq!(r["scenario"], "app-crash");
    let run = &r["runs"][0];
    assert_eq!(run["new_active"], "b", "{summary}");
    assert_eq!(run["recovered"], true, "{summary}");
    assert_eq!(run["lost_acknowledged_writes"], 0, "{summary}");
    assert_eq!(run["dual_primary"], false, "{summary}");
    let app_port = config_value(&config, "app_port");
    let (status, page) = http_get(&format!("http://127.0.2.1:{app_port}/"))
        .await
        .expect("app b answers");
    assert_eq!(status, 200, "{page}");
    stop_demo(demo, &demo_dir).await;
}

/// `--scenario partition` on the demo: region a is cut off by nftables (every packet
/// to or from its address dropped). The controller promotes b once a's lease has
/// certainly expired; nothing acknowledged is lost, no two primaries; once healed, a
/// stands down as a fenced standby of the new epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_drill_recovers_and_the_cut_off_region_stands_down() {
    assert!(
        is_root(),
        "the partition drill uses nftables: run the test command as root (CI does)"
    );
    let (dir, demo_dir, demo, config_path, config) = start_demo().await;
    assert!(
        config.contains("partition_start"),
        "the demo configures the partition scenario only with nft installed (scripts/test installs nftables)"
    );
    let (summary, r) = run_drill(dir.path(), &config_path, "partition");
    let run = &r["runs"][0];
    assert_eq!(run["new_active"], "b", "{summary}");
    assert_eq!(run["lost_acknowledged_writes"], 0, "{summary}");
    assert_eq!(run["dual_primary"], false, "{summary}");

    // Once the cut is healed, a knows it lost: it reports the new epoch, fenced.
    let agent_a = lifeboat_api::ApiClient::new(
        format!(
            "http://127.0.1.1:{}",
            config_value(&config, "agent_addr")
                .rsplit(':')
                .next()
                .unwrap()
        ),
        None,
        Duration::from_secs(3),
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(st) = agent_a.agent_status().await
            && st.epoch.0 >= 2
            && !st.active
            && st.fenced
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "a never learned it was fenced"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let a_journal = std::fs::read_to_string(
        demo_dir
            .join("controller")
            .join("agent-a")
            .join("journal.jsonl"),
    )
    .unwrap();
    assert!(
        a_journal
            .lines()
            .filter(|l| l.contains("\"fenced\""))
            .count()
            >= 2,
        "{a_journal}"
    );
    // Cut off, a stopped writing on its own when its lease lapsed, before the
    // controller promoted b (docs/architecture.md, rule 2), and its fence completed (every role,
    // PostgreSQL included, whose fast stop waits for the unreachable standby).
    let entries: Vec<lifeboat_core::JournalEntry> = a_journal
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let fault_at = run["fault_at_unix_ms"].as_u64().unwrap();
    let promoted_at = run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == "promoted")
        .and_then(|s| s["at_unix_ms"].as_u64())
        .unwrap_or_else(|| panic!("no promotion step: {summary}"));
    let lapsed = entries
        .iter()
        .find(|e| e.kind == JournalKind::LeaseExpired && e.at_unix_ms >= fault_at)
        .unwrap_or_else(|| panic!("a never journaled its lease lapsing: {a_journal}"));
    assert!(
        lapsed.at_unix_ms < promoted_at,
        "a's lease lapsed at {} but b was promoted at {promoted_at}",
        lapsed.at_unix_ms
    );
    assert!(
        entries.iter().any(|e| e.kind == JournalKind::Fenced
            && e.seq > lapsed.seq
            && e.detail.contains("lease lapsed")
            && e.detail.contains("postgres")),
        "a's fence after the lapse did not complete: {a_journal}"
    );
    stop_demo(demo, &demo_dir).await;
}
