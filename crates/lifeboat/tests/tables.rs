//! Global tables as processes (`lifeboat tables serve`): kill -9 of a table server
//! in a write burst loses no acknowledged write, and replication resumes with no
//! duplicate and no gap — also when the region that pulls is killed. boto3 (from
//! PyPI; ./scripts/test installs it) writes and reads, as an application would.
#![allow(clippy::unwrap_used)]

mod common;

use common::{Proc, TOKEN, bin, free_port, test_dir};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const KEY_ID: &str = "AKIDTABLESTEST";
const SECRET: &str = "tables-test-secret";

struct Tables {
    dir: tempfile::TempDir,
    config: PathBuf,
    api: BTreeMap<String, String>,
    peer: BTreeMap<String, String>,
    procs: BTreeMap<String, Proc>,
}

impl Tables {
    fn new(regions: &[&str]) -> Tables {
        let dir = test_dir();
        let d = dir.path();
        std::fs::write(d.join("token"), TOKEN).unwrap();
        std::fs::write(d.join("tables.secret"), SECRET).unwrap();
        let mut cfg = format!(
            "[controller]\napi_addr = \"127.0.0.1:{}\"\nstate_dir = \"{}\"\n\n[auth]\ntoken_file = \"{}\"\n\n[[tables.access_keys]]\nid = \"{KEY_ID}\"\nsecret_file = \"{}\"\n\n",
            free_port("127.0.0.1"),
            d.join("controller").display(),
            d.join("token").display(),
            d.join("tables.secret").display(),
        );
        let mut api = BTreeMap::new();
        let mut peer = BTreeMap::new();
        for (i, r) in regions.iter().enumerate() {
            let (a, p) = (free_port("127.0.0.1"), free_port("127.0.0.1"));
            cfg.push_str(&format!(
                "[regions.{r}]\nagent_addr = \"127.0.0.1:{}\"\nrole = \"{}\"\n\n[tables.regions.{r}]\nlisten = \"127.0.0.1:{a}\"\npeer_listen = \"127.0.0.1:{p}\"\n\n",
                free_port("127.0.0.1"),
                if i == 0 { "active" } else { "standby" },
            ));
            api.insert((*r).to_owned(), format!("http://127.0.0.1:{a}"));
            peer.insert((*r).to_owned(), format!("http://127.0.0.1:{p}"));
        }
        let config = d.join("lifeboat.toml");
        std::fs::write(&config, cfg).unwrap();
        Tables {
            dir,
            config,
            api,
            peer,
            procs: BTreeMap::new(),
        }
    }

    async fn start(&mut self, region: &str) {
        let name = format!("tables-{region}");
        let mut cmd = Command::new(bin());
        cmd.args(["tables", "serve", "--config"])
            .arg(&self.config)
            .args(["--region", region])
            .env("LIFEBOAT_LOG", "info");
        let log = self.dir.path().join(format!("{name}.log"));
        let mut p = Proc::spawn(&name, cmd, &log);
        p.wait_line("listening tables ", Duration::from_secs(30))
            .await;
        p.wait_line("listening tables-peer ", Duration::from_secs(5))
            .await;
        self.procs.insert(name, p);
    }

    fn kill9(&mut self, region: &str) {
        let mut p = self.procs.remove(&format!("tables-{region}")).unwrap();
        p.kill9();
    }

    fn client(&self, region: &str, args: &[&str]) -> Command {
        let mut c = Command::new("python3");
        c.arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/tables/client.py"
        ))
        .arg(&self.api[region])
        .args(args)
        .env("KEY_ID", KEY_ID)
        .env("SECRET", SECRET)
        .env("AWS_EC2_METADATA_DISABLED", "true");
        c
    }

    fn run(&self, region: &str, args: &[&str]) -> String {
        let out = self.client(region, args).output().unwrap();
        assert!(
            out.status.success(),
            "client.py {region} {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn ids(&self, region: &str, table: &str) -> Vec<String> {
        serde_json::from_str(&self.run(region, &["ids", table])).unwrap()
    }

    async fn status(&self, region: &str) -> serde_json::Value {
        let r = reqwest::Client::new()
            .get(format!("{}/lifeboat/v1/status", self.peer[region]))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.status());
        r.json().await.unwrap()
    }

    /// Wait until `region` holds every change `from` made, and return both
    /// statuses.
    async fn wait_replicated(&self, from: &str, region: &str, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let (src, dst) = (self.status(from).await, self.status(region).await);
            let made = &src["changes_by_origin"][from];
            let here = &dst["changes_by_origin"][from];
            if made == here && made.as_u64().is_some_and(|n| n > 0) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{region} never caught up with {from}: {from} made {made}, {region} holds {here} ({})",
                dst["replication"]
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn acked(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn boto3_installed() {
    let ok = Command::new("python3")
        .args(["-c", "import boto3"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "boto3 is not installed: python3 -m pip install boto3 (./scripts/test installs it; a missing dependency fails its test, it never skips)"
    );
}

/// Start a write burst at `region`; once `at_least` writes are acknowledged, kill
/// -9 its table server; return the acknowledged ids.
async fn burst_and_kill(
    t: &mut Tables,
    region: &str,
    prefix: &str,
    at_least: usize,
) -> Vec<String> {
    let file = t.dir.path().join(format!("acked-{prefix}"));
    let writer = t
        .client(region, &["burst", "orders", prefix, file.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while acked(&file).len() < at_least {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the burst never reached {at_least} writes"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    t.kill9(region);
    let out = tokio::task::spawn_blocking(move || writer.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("burst stopped"), "{said}");
    eprintln!("{region}: {said}");
    acked(&file)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_table_server_loses_no_acknowledged_write_and_replication_resumes_exactly_once() {
    boto3_installed();
    let mut t = Tables::new(&["a", "b"]);
    t.start("a").await;
    t.start("b").await;
    t.run("a", &["create", "orders"]);
    t.run("b", &["wait-table", "orders"]);

    // kill -9 of a's table server in a write burst.
    let first = burst_and_kill(&mut t, "a", "a1-", 300).await;
    t.start("a").await;
    let in_a = t.ids("a", "orders");
    let missing: Vec<&String> = first
        .iter()
        .filter(|id| in_a.binary_search(id).is_err())
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged writes lost by the kill: {:?}",
        missing.len(),
        first.len(),
        &missing[..missing.len().min(5)]
    );

    // kill -9 of b's table server while it catches up with a second burst at a.
    let file = t.dir.path().join("acked-a2-");
    let writer = t
        .client("a", &["burst", "orders", "a2-", file.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while acked(&file).len() < 200 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the second burst stalled"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    t.kill9("b");
    while acked(&file).len() < 400 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the second burst stalled"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    t.start("b").await;
    // a's server goes down under the writer: the burst ends.
    t.kill9("a");
    let _ = tokio::task::spawn_blocking(move || writer.wait_with_output()).await;
    let second = acked(&file);
    t.start("a").await;

    // b holds each of a's changes exactly once (its log counts what a's counts:
    // no gap, no duplicate), and the same items as a, every acknowledged one in both.
    t.wait_replicated("a", "b", Duration::from_secs(60)).await;
    let (in_a, in_b) = (t.ids("a", "orders"), t.ids("b", "orders"));
    assert_eq!(in_a.len(), in_b.len());
    assert!(in_a == in_b, "a and b differ after replication resumed");
    for id in first.iter().chain(&second) {
        assert!(
            in_b.binary_search(id).is_ok(),
            "{id} acknowledged by a, missing in b"
        );
    }
    // `lifeboat table conflicts` asks every region: none here (only a wrote); with b's
    // table server down, it names b and exits 1 (the list is incomplete).
    let conflicts = |t: &Tables| {
        Command::new(bin())
            .args(["table", "conflicts", "--config"])
            .arg(&t.config)
            .args(["--table", "orders"])
            .output()
            .unwrap()
    };
    let out = conflicts(&t);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("no conflicts"), "{said}");
    let st = t.status("b").await;
    t.kill9("b");
    let out = conflicts(&t);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("region b: its table server does not answer"),
        "{err}"
    );
    eprintln!(
        "acknowledged {} + {}; b: {}",
        first.len(),
        second.len(),
        st["replication"]
    );
}
