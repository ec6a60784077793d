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
    /// Dropped (killed) before `dir` is removed: fields drop in this order.
    pub members: Vec<EtcdMember>,
    initial_cluster: String,
    token: String,
    /// Clients speak https and must show a certificate of this CA.
    pub tls: Option<Tls>,
    /// The client health checks use (with the client certificate under TLS).
    http: reqwest::Client,
    dir: tempfile::TempDir,
}

/// A CA and the server and client certificates it signed (for 127.0.0.1, valid one
/// day), made with the openssl CLI (scripts/test installs it).
#[derive(Clone)]
pub struct Tls {
    pub ca: PathBuf,
    pub server: (PathBuf, PathBuf),
    pub client: (PathBuf, PathBuf),
}

impl Tls {
    pub fn make(dir: &Path) -> Tls {
        assert!(
            Path::new("/usr/bin/openssl").exists(),
            "openssl is not installed: apt-get install -y openssl (./scripts/test installs it)"
        );
        let script = r#"set -e
openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 1 -subj /CN=lifeboat-test-ca \
  -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
for who in server client; do
  openssl req -newkey rsa:2048 -nodes -keyout $who.key -out $who.csr -subj /CN=$who
  printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\nbasicConstraints=CA:FALSE\n' > $who.ext
  openssl x509 -req -in $who.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out $who.pem -days 1 -extfile $who.ext
done"#;
        let out = Command::new("sh")
            .args(["-c", script])
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tls {
            ca: dir.join("ca.pem"),
            server: (dir.join("server.pem"), dir.join("server.key")),
            client: (dir.join("client.pem"), dir.join("client.key")),
        }
    }

    /// The `[controller.etcd]` lines of a controller that uses these files.
    pub fn config_lines(&self) -> String {
        format!(
            "ca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            self.ca.display(),
            self.client.0.display(),
            self.client.1.display()
        )
    }
}

/// The etcd binary, or None (the caller skips, saying so) when it is not installed.
pub fn etcd_bin() -> Option<PathBuf> {
    ["/usr/bin/etcd", "/usr/local/bin/etcd"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

impl EtcdCluster {
    /// Start `n` members, their data in a temp dir of their own (removed on Drop,
    /// kept with LIFEBOAT_KEEP_TEST_DIR), and wait until the cluster has a leader.
    pub async fn start(n: usize) -> EtcdCluster {
        Self::start_with(n, None).await
    }

    /// `n` members whose clients must speak TLS with a certificate of `tls`'s CA.
    pub async fn start_with(n: usize, tls: Option<Tls>) -> EtcdCluster {
        let scheme = if tls.is_some() { "https" } else { "http" };
        let mut dir = tempfile::tempdir().unwrap();
        if std::env::var_os("LIFEBOAT_KEEP_TEST_DIR").is_some() {
            eprintln!("keeping etcd data in {}", dir.path().display());
            dir.disable_cleanup(true);
        }
        let mut members = Vec::new();
        for i in 1..=n {
            let name = format!("e{i}");
            members.push(EtcdMember {
                client_url: format!("{scheme}://127.0.0.1:{}", free_port("127.0.0.1")),
                peer_url: format!("http://127.0.0.1:{}", free_port("127.0.0.1")),
                data_dir: dir.path().join(format!("etcd-{name}")),
                log: dir.path().join(format!("etcd-{name}.log")),
                name,
                proc: None,
            });
        }
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url))
            .collect::<Vec<_>>()
            .join(",");
        let mut http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .no_proxy();
        if let Some(t) = &tls {
            let ca = std::fs::read(&t.ca).unwrap();
            let mut id = std::fs::read(&t.client.0).unwrap();
            id.extend(std::fs::read(&t.client.1).unwrap());
            http = http
                .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
                .identity(reqwest::Identity::from_pem(&id).unwrap());
        }
        let mut c = EtcdCluster {
            members,
            initial_cluster,
            token: format!("lifeboat-test-{}", std::process::id()),
            tls,
            http: http.build().unwrap(),
            dir,
        };
        for i in 0..n {
            c.start_member(i);
        }
        c.wait_healthy(Duration::from_secs(30)).await;
        c
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client_url.clone()).collect()
    }

    /// The endpoints on 127.0.0.2 (each member listens there too): a controller
    /// given these reaches etcd by packets an [`NftCut`] can drop.
    pub fn second_endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| second_address(&m.client_url))
            .collect()
    }

    /// Start (or restart, on its data) member `i`.
    pub fn start_member(&mut self, i: usize) {
        let m = &mut self.members[i];
        let mut cmd = Command::new(etcd_bin().expect("etcd is installed"));
        cmd.args(["--name", &m.name])
            .arg("--data-dir")
            .arg(&m.data_dir)
            // Also on 127.0.0.2 (the same port): a controller given those endpoints
            // can be cut off from etcd by address alone ([`NftCut`]).
            .args([
                "--listen-client-urls",
                &format!("{},{}", m.client_url, second_address(&m.client_url)),
            ])
            .args(["--advertise-client-urls", &m.client_url])
            .args(["--listen-peer-urls", &m.peer_url])
            .args(["--initial-advertise-peer-urls", &m.peer_url])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-token", &self.token])
            .args(["--initial-cluster-state", "new"])
            .args(["--heartbeat-interval", "100", "--election-timeout", "1000"]);
        if let Some(t) = &self.tls {
            cmd.arg("--cert-file")
                .arg(&t.server.0)
                .arg("--key-file")
                .arg(&t.server.1)
                .arg("--trusted-ca-file")
                .arg(&t.ca)
                .arg("--client-cert-auth");
        }
        cmd
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
        let Ok(resp) = self.http.get(url).send().await else {
            return false;
        };
        let ok = resp.status().is_success();
        ok && resp.text().await.is_ok_and(|body| body.contains("true"))
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

fn second_address(url: &str) -> String {
    url.replacen("://127.0.0.1:", "://127.0.0.2:", 1)
}

/// An nftables table that drops every packet to and from the etcd members'
/// second address (127.0.0.2, [`EtcdCluster::second_endpoints`]) in both
/// directions: whoever reaches etcd there is cut off as by a firewall (its
/// connections stay open and go silent; no reset), and everyone on 127.0.0.1 is
/// not. Removed on Drop.
pub struct NftCut {
    table: String,
}

impl NftCut {
    pub fn cut(etcd: &EtcdCluster) -> NftCut {
        let ports: Vec<String> = etcd
            .endpoints()
            .iter()
            .filter_map(|u| {
                u.rsplit(':')
                    .next()
                    .map(|p| p.trim_end_matches('/').to_owned())
            })
            .collect();
        let ports = ports.join(", ");
        let table = format!("lbetcdcut{}", std::process::id());
        nft(&format!(
            "table inet {table} {{\n  chain out {{\n    type filter hook output priority 0; policy accept;\n    ip daddr 127.0.0.2 tcp dport {{ {ports} }} drop\n    ip saddr 127.0.0.2 tcp sport {{ {ports} }} drop\n  }}\n}}\n"
        ));
        NftCut { table }
    }
}

impl Drop for NftCut {
    fn drop(&mut self) {
        let _ = Command::new("nft")
            .args(["delete", "table", "inet", &self.table])
            .output();
    }
}

/// Run an nftables script in this network namespace.
fn nft(script: &str) {
    use std::io::Write;
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("nft is installed by scripts/test (Debian package nftables)");
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(script.as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "nft: {}\n{script}",
        String::from_utf8_lossy(&out.stderr)
    );
}
