//! moto's S3 server (PyPI `moto[server]`; ./scripts/test installs it), one per test on
//! 127.0.0.1: `python3 -m moto.server -H 127.0.0.1 -p 0` binds a free port itself and
//! names it on stderr (" * Running on http://127.0.0.1:PORT"). Killed on drop, so also
//! when the test fails. And boto3 (PyPI), run with tests/s3keys.py, as the AWS users'
//! writer and reader.
#![allow(dead_code, clippy::unwrap_used)]

use std::io::BufRead as _;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// moto serves any access key and does not check signatures.
pub const KEY_ID: &str = "AKIDLIFEBOATMOTO";
pub const SECRET: &str = "moto/test/secret+key";

pub struct Moto {
    pub endpoint: String,
    child: Child,
}

fn python_has(module: &str) -> bool {
    Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Fail (never skip) when moto's server or boto3 is missing, saying what to install.
pub fn installed() {
    assert!(
        python_has("moto.server") && python_has("flask") && python_has("boto3"),
        "moto's S3 server or boto3 is not installed: python3 -m pip install 'moto[server]' boto3 \
         (./scripts/test installs them; a missing dependency fails its test, it never skips)"
    );
}

impl Moto {
    pub async fn start() -> Moto {
        installed();
        let mut child = Command::new("python3")
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", "0"])
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting python3 -m moto.server");
        // Werkzeug names the port it bound on stderr; the rest of stderr (one line per
        // request) is drained by the thread, so moto never blocks on a full pipe.
        let stderr = child.stderr.take().unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(t) = &tx {
                    if let Some(at) = line.find("Running on http://") {
                        let url = line[at + "Running on ".len()..].trim().to_owned();
                        let _ = t.send(url);
                        tx = None;
                    } else {
                        let _ = t.send(format!("#{line}"));
                    }
                }
            }
        });
        let mut moto = Moto {
            endpoint: String::new(),
            child,
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let mut said = Vec::new();
        while moto.endpoint.is_empty() {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(line)) if line.starts_with('#') => said.push(line),
                Ok(Some(url)) => moto.endpoint = url.trim_end_matches('/').to_owned(),
                Ok(None) | Err(_) => panic!(
                    "moto.server named no port within 60 s (status {:?}):\n{}",
                    moto.child.try_wait(),
                    said.join("\n")
                ),
            }
        }
        moto.wait_answering().await;
        moto
    }

    /// Until an HTTP request gets an answer.
    async fn wait_answering(&self) {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let addr = self.endpoint.trim_start_matches("http://").to_owned();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(mut s) = tokio::net::TcpStream::connect(&addr).await {
                let req =
                    format!("GET /moto-api/ HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
                let mut head = [0u8; 12];
                if s.write_all(req.as_bytes()).await.is_ok()
                    && s.read_exact(&mut head).await.is_ok()
                    && head.starts_with(b"HTTP/1.")
                {
                    return;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "moto at {} does not answer",
                self.endpoint
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run tests/s3keys.py `mode` (boto3) against `endpoint`/`bucket`, `input` on its stdin;
/// returns its stdout. Panics with its output when it fails.
pub async fn boto3(mode: &str, endpoint: &str, bucket: &str, input: &str) -> String {
    use tokio::io::AsyncWriteExt as _;
    let script = format!("{}/tests/s3keys.py", env!("CARGO_MANIFEST_DIR"));
    let mut child = tokio::process::Command::new("python3")
        .arg(&script)
        .arg(mode)
        .env("ENDPOINT", endpoint)
        .env("BUCKET", bucket)
        .env("KEY_ID", KEY_ID)
        .env("SECRET", SECRET)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.as_bytes()).await.unwrap();
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("s3keys.py {mode} did not finish within 120 s"))
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "s3keys.py {mode} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Distinct, non-repeating content (so a misplaced byte range shows).
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// One object as tests/s3keys.py reads and writes it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PyObject {
    pub key: String,
    /// base64
    pub body: String,
    pub metadata: std::collections::BTreeMap<String, String>,
    pub tags: std::collections::BTreeMap<String, String>,
    pub headers: std::collections::BTreeMap<String, String>,
}

pub fn b64(data: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// Every key shape S3 allows, with distinct content; some with tags, metadata and
/// headers. `a/b` and `b` are there to catch a server that collapses `a//b`, `a/./b` or
/// `a/../b` onto them.
pub fn key_shapes() -> Vec<PyObject> {
    let long = format!("long/{}{}", "ü".repeat(500), "x".repeat(19));
    assert_eq!(long.len(), 1024);
    let keys: Vec<String> = [
        "a//b",
        "a/./b",
        "a/../b",
        "/lead",
        "dir/",
        "trail/",
        "sp ace+plus%25?q#h&amp",
        "ü/日本/🙂",
        "ctl\u{1}x",
        "a/b",
        "b",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .chain([long])
    .collect();
    keys.into_iter()
        .enumerate()
        .map(|(i, key)| {
            let body = if key == "dir/" {
                Vec::new()
            } else {
                let mut b = format!("content of {key:?} #{i}\n").into_bytes();
                b.extend(pattern(i * 100, i as u64));
                b
            };
            let mut o = PyObject {
                key,
                body: b64(&body),
                metadata: std::collections::BTreeMap::new(),
                tags: std::collections::BTreeMap::new(),
                headers: std::collections::BTreeMap::new(),
            };
            if i % 2 == 0 {
                o.metadata.insert("index".into(), i.to_string());
                o.metadata.insert("note".into(), "a b/c+d=e".into());
                o.tags.insert("team".into(), "dr".into());
                o.tags.insert("k y".into(), format!("v=/+:@ {i}"));
            }
            if i % 3 == 0 {
                o.headers
                    .insert("ContentType".into(), "text/x-lifeboat".into());
                o.headers.insert("CacheControl".into(), "max-age=60".into());
                o.headers
                    .insert("ContentDisposition".into(), "attachment".into());
                o.headers.insert("ContentLanguage".into(), "fr".into());
            }
            o
        })
        .collect()
}

/// lifeboat's raw S3 client for `bucket` on this moto.
pub fn client(moto: &Moto, bucket: &str) -> lifeboat_objects::s3::S3Client {
    lifeboat_objects::s3::S3Client::new(lifeboat_objects::s3::S3Config {
        endpoint: Some(moto.endpoint.clone()),
        bucket: bucket.to_owned(),
        region: "us-east-1".into(),
        access_key_id: KEY_ID.into(),
        secret_access_key: SECRET.into(),
        session_token: None,
        virtual_hosted_style: false,
    })
    .unwrap()
}

/// A `[objects.stores.X]` for `bucket` on this moto, its credentials in files under `dir`.
pub fn store_config(
    moto: &Moto,
    bucket: &str,
    dir: &std::path::Path,
) -> lifeboat_config::objects::StoreConfig {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("id"), KEY_ID).unwrap();
    std::fs::write(dir.join("secret"), SECRET).unwrap();
    lifeboat_config::objects::StoreConfig {
        kind: lifeboat_config::objects::StoreKind::S3,
        path: None,
        bucket: Some(bucket.to_owned()),
        endpoint: Some(moto.endpoint.clone()),
        access_key_id_file: Some(dir.join("id")),
        secret_access_key_file: Some(dir.join("secret")),
        ..lifeboat_config::objects::StoreConfig::local("/unused")
    }
}
