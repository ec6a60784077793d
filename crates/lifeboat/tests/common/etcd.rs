//! Real etcd members for the tests of several controllers: `etcd` (Debian package
//! etcd-server, installed by scripts/test), each member on loopback ports found
//! free, its data in the test's directory, killed on Drop.

use super::{Proc, free_port};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

pub struct EtcdMember {
    pub name: String,
    pub client_url: String,
    peer_url: String,
    data_dir: PathBuf,
    log: PathBuf,
    pub proc: Option<Proc>,
}

pub struct EtcdCluster {
    pub members: Vec<EtcdMember>,
    initial_cluster: String,
    token: String,
}

/// The etcd binary, or None (the caller skips, saying so) when it is not installed.
pub fn etcd_bin() -> Option<PathBuf> {
    ["/usr/bin/etcd", "/usr/local/bin/etcd"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

impl EtcdCluster {
    /// Start `n` members under `dir` and wait until the cluster has a leader.
    pub async fn start(dir: &Path, n: usize) -> EtcdCluster {
        let mut members = Vec::new();
        for i in 1..=n {
            let name = format!("e{i}");
            members.push(EtcdMember {
                client_url: format!("http://127.0.0.1:{}", free_port("127.0.0.1")),
                peer_url: format!("http://127.0.0.1:{}", free_port("127.0.0.1")),
                data_dir: dir.join(format!("etcd-{name}")),
                log: dir.join(format!("etcd-{name}.log")),
                name,
                proc: None,
            });
        }
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url))
            .collect::<Vec<_>>()
            .join(",");
        let mut c = EtcdCluster {
            members,
            initial_cluster,
            token: format!("lifeboat-test-{}", std::process::id()),
        };
        for i in 0..n {
            c.start_member(i);
        }
        c.wait_healthy(Duration::from_secs(30)).await;
        c
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client_url.clone()).collect()
    }

    /// Start (or restart, on its data) member `i`.
    pub fn start_member(&mut self, i: usize) {
        let m = &mut self.members[i];
        let mut cmd = Command::new(etcd_bin().expect("etcd is installed"));
        cmd.args(["--name", &m.name])
            .arg("--data-dir")
            .arg(&m.data_dir)
            .args(["--listen-client-urls", &m.client_url])
            .args(["--advertise-client-urls", &m.client_url])
            .args(["--listen-peer-urls", &m.peer_url])
            .args(["--initial-advertise-peer-urls", &m.peer_url])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-token", &self.token])
            .args(["--initial-cluster-state", "new"])
            .args(["--heartbeat-interval", "100", "--election-timeout", "1000"])
            // Debian's etcd 3.4 on amd64 needs nothing more; on other architectures
            // it asks for ETCD_UNSUPPORTED_ARCH.
            .env("ETCD_UNSUPPORTED_ARCH", std::env::consts::ARCH);
        m.proc = Some(Proc::spawn(&format!("etcd-{}", m.name), cmd, &m.log));
    }

    pub fn kill9(&mut self, i: usize) {
        if let Some(mut p) = self.members[i].proc.take() {
            p.kill9();
        }
    }

    /// True if the member answers `/health` with health true (it is part of a
    /// cluster with a leader).
    pub async fn healthy(&self, i: usize) -> bool {
        let url = format!("{}/health", self.members[i].client_url);
        super::http_get(&url)
            .await
            .is_some_and(|(s, body)| s == 200 && body.contains("true"))
    }

    /// Wait until every running member says healthy.
    pub async fn wait_healthy(&self, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let mut all = true;
            for i in 0..self.members.len() {
                if self.members[i].proc.is_some() && !self.healthy(i).await {
                    all = false;
                }
            }
            if all {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "etcd never became healthy; logs:\n{}",
                self.members
                    .iter()
                    .map(|m| format!(
                        "--- {}\n{}",
                        m.name,
                        std::fs::read_to_string(&m.log)
                            .unwrap_or_default()
                            .lines()
                            .rev()
                            .take(15)
                            .collect::<Vec<_>>()
                            .join("\n")
                    ))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
