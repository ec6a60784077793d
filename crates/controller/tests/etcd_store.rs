//! The controller's state in a real etcd member (Debian's etcd-server 3.4): every
//! write is guarded by the leader key's lease, every state write by the state's
//! revision too, so two controllers that both believe they lead can never both
//! change the epoch; the journal keeps one order. Fails, saying so, without etcd.
#![cfg(feature = "etcd")]
#![allow(clippy::unwrap_used)]

use lifeboat_config::etcd::EtcdConfig;
use lifeboat_controller::etcd::{
    EtcdStore, Keys, LeaderRecord, campaign, connect, read_journal, snapshot,
};
use lifeboat_controller::machine::Durable;
use lifeboat_controller::store::StateStore;
use lifeboat_core::{Epoch, JournalKind, RegionId};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// One etcd member on free loopback ports, its data in a temp dir; killed on Drop.
struct Etcd {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn etcd() -> Option<Etcd> {
    etcd_with(None).await
}

/// Files of a TLS set-up: CA, server certificate and key, client certificate and key.
struct Tls {
    ca: std::path::PathBuf,
    server: (std::path::PathBuf, std::path::PathBuf),
    client: (std::path::PathBuf, std::path::PathBuf),
}

/// A CA and two certificates it signed (127.0.0.1), made with the openssl CLI.
fn make_tls(dir: &std::path::Path) -> Option<Tls> {
    assert!(
        std::path::Path::new("/usr/bin/openssl").exists(),
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
    Some(Tls {
        ca: dir.join("ca.pem"),
        server: (dir.join("server.pem"), dir.join("server.key")),
        client: (dir.join("client.pem"), dir.join("client.key")),
    })
}

/// One member; with `tls`, clients speak https and must show a certificate.
async fn etcd_with(tls: Option<&Tls>) -> Option<Etcd> {
    if !std::path::Path::new("/usr/bin/etcd").exists() {
        panic!(
            "etcd is not installed: apt-get install -y etcd-server (./scripts/test installs it; a missing dependency fails its test, it never skips)"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let (client, peer) = (free_port(), free_port());
    let scheme = if tls.is_some() { "https" } else { "http" };
    let url = format!("{scheme}://127.0.0.1:{client}");
    let mut cmd = Command::new("/usr/bin/etcd");
    cmd.args(["--name", "t1"])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args([
            "--listen-client-urls",
            &url,
            "--advertise-client-urls",
            &url,
        ])
        .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
        .args([
            "--initial-advertise-peer-urls",
            &format!("http://127.0.0.1:{peer}"),
        ])
        .args(["--initial-cluster", &format!("t1=http://127.0.0.1:{peer}")]);
    if let Some(t) = tls {
        cmd.arg("--cert-file")
            .arg(&t.server.0)
            .arg("--key-file")
            .arg(&t.server.1)
            .arg("--trusted-ca-file")
            .arg(&t.ca)
            .arg("--client-cert-auth");
    }
    let child = cmd
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("etcd.log")).unwrap())
        .spawn()
        .unwrap();
    let e = Etcd {
        child,
        url,
        _dir: dir,
    };
    let mut cfg = config(&e, "/probe");
    if let Some(t) = tls {
        cfg.ca_file = Some(t.ca.clone());
        cfg.cert_file = Some(t.client.0.clone());
        cfg.key_file = Some(t.client.1.clone());
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(c) = connect(&cfg).await
            && snapshot(&c, &Keys::new("/probe")).await.is_ok()
        {
            return Some(e);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "etcd never answered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn config(e: &Etcd, prefix: &str) -> EtcdConfig {
    EtcdConfig {
        endpoints: vec![e.url.clone()],
        prefix: prefix.into(),
        lease_ttl: Duration::from_secs(3),
        user: None,
        password_file: None,
        password_env: None,
        ca_file: None,
        cert_file: None,
        key_file: None,
    }
}

fn at_epoch(n: u64) -> Durable {
    Durable {
        epoch: Epoch(n),
        active: Some(RegionId::new("a")),
        ..Durable::default()
    }
}

fn me(name: &str) -> LeaderRecord {
    LeaderRecord {
        name: name.into(),
        api_url: format!("http://{name}"),
    }
}

#[tokio::test]
async fn only_the_holder_of_the_leader_key_writes_and_a_stale_term_is_refused() {
    let Some(e) = etcd().await else { return };
    let cfg = config(&e, "/lifeboat/t1");
    let keys = Keys::new(&cfg.prefix);
    let client = connect(&cfg).await.unwrap();
    let mut leases = client.lease_client();
    let la = leases.grant(3, None).await.unwrap().id();
    let lb = leases.grant(3, None).await.unwrap().id();
    assert!(campaign(&client, &keys, la, &me("c1")).await.unwrap());
    assert!(
        !campaign(&client, &keys, lb, &me("c2")).await.unwrap(),
        "one leader key"
    );

    let a = EtcdStore::for_term(client.clone(), keys.clone(), la)
        .await
        .unwrap();
    assert_eq!(a.load().await.unwrap(), None);
    a.save(&at_epoch(1)).await.unwrap();
    let b = EtcdStore::for_term(client.clone(), keys.clone(), lb)
        .await
        .unwrap();
    let err = b.save(&at_epoch(2)).await.unwrap_err();
    assert!(format!("{err:#}").contains("no longer leads"), "{err:#}");
    assert!(b.lost().is_cancelled(), "a refused write ends the term");

    // c1's lease goes (it expired, or c1 stepped down); c2 takes the key and goes on
    // from what etcd has. c1, unaware, tries to promote: refused.
    leases.revoke(la).await.unwrap();
    assert!(campaign(&client, &keys, lb, &me("c2")).await.unwrap());
    let b = EtcdStore::for_term(client.clone(), keys.clone(), lb)
        .await
        .unwrap();
    assert_eq!(b.load().await.unwrap(), Some(at_epoch(1)));
    b.save(&at_epoch(2)).await.unwrap();
    let err = a.save(&at_epoch(2)).await.unwrap_err();
    assert!(format!("{err:#}").contains("no longer leads"), "{err:#}");
    assert!(a.lost().is_cancelled());
    let s = snapshot(&client, &keys).await.unwrap();
    assert_eq!(s.state, Some(at_epoch(2)));
    assert_eq!(s.leader, Some(me("c2")));
}

/// Two stores of the same lease (a term's controller confused about what it
/// wrote): the one whose last read is older than etcd's state is refused, so the
/// epoch cannot be changed twice from the same previous one.
#[tokio::test]
async fn an_epoch_change_compares_the_previous_revision() {
    let Some(e) = etcd().await else { return };
    let cfg = config(&e, "/lifeboat/t2");
    let keys = Keys::new(&cfg.prefix);
    let client = connect(&cfg).await.unwrap();
    let lease = client.lease_client().grant(3, None).await.unwrap().id();
    assert!(campaign(&client, &keys, lease, &me("c1")).await.unwrap());
    let first = EtcdStore::for_term(client.clone(), keys.clone(), lease)
        .await
        .unwrap();
    let second = EtcdStore::for_term(client.clone(), keys.clone(), lease)
        .await
        .unwrap();
    first.save(&at_epoch(1)).await.unwrap();
    second.load().await.unwrap();
    first.save(&at_epoch(2)).await.unwrap();
    // `second` read epoch 1; a promotion from there to 2 must not overwrite.
    let err = second.save(&at_epoch(2)).await.unwrap_err();
    assert!(format!("{err:#}").contains("no longer leads"), "{err:#}");
    assert_eq!(
        snapshot(&client, &keys).await.unwrap().state,
        Some(at_epoch(2))
    );
}

/// The journal: one order across terms, read back by anyone.
#[tokio::test]
async fn the_journal_goes_on_in_one_order_across_terms() {
    let Some(e) = etcd().await else { return };
    let cfg = config(&e, "/lifeboat/t3");
    let keys = Keys::new(&cfg.prefix);
    let client = connect(&cfg).await.unwrap();
    let mut leases = client.lease_client();
    let l1 = leases.grant(3, None).await.unwrap().id();
    assert!(campaign(&client, &keys, l1, &me("c1")).await.unwrap());
    let t1 = EtcdStore::for_term(client.clone(), keys.clone(), l1)
        .await
        .unwrap();
    for i in 0..3 {
        t1.append(i, Epoch(1), JournalKind::Info, None, &format!("one {i}"))
            .await
            .unwrap();
    }
    leases.revoke(l1).await.unwrap();
    let l2 = leases.grant(3, None).await.unwrap().id();
    assert!(campaign(&client, &keys, l2, &me("c2")).await.unwrap());
    let t2 = EtcdStore::for_term(client.clone(), keys.clone(), l2)
        .await
        .unwrap();
    t2.append(0, Epoch(1), JournalKind::Info, None, "two")
        .await
        .unwrap();
    assert!(
        t1.append(9, Epoch(1), JournalKind::Info, None, "late")
            .await
            .is_err(),
        "the old term writes nothing"
    );
    let j = read_journal(&client, &keys, 0, 100).await.unwrap();
    let got: Vec<(u64, &str)> = j.iter().map(|e| (e.seq, e.detail.as_str())).collect();
    assert_eq!(
        got,
        vec![(1, "one 0"), (2, "one 1"), (3, "one 2"), (4, "two")]
    );
    assert_eq!(read_journal(&client, &keys, 2, 100).await.unwrap().len(), 2);
}

/// etcd with authentication on: the controller logs in with `user` and the
/// password from `password_file`; without them etcd refuses it.
#[tokio::test]
async fn a_controller_logs_in_with_the_user_and_password_file() {
    let Some(e) = etcd().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("etcd-password");
    std::fs::write(&pw, "s3cret-for-etcd\n").unwrap();
    let open = config(&e, "/lifeboat/t4");
    let mut admin = connect(&open).await.unwrap();
    admin.role_add("root").await.unwrap();
    admin
        .user_add("root", "s3cret-for-etcd", None)
        .await
        .unwrap();
    admin.user_grant_role("root", "root").await.unwrap();
    admin.auth_enable().await.unwrap();

    let keys = Keys::new(&open.prefix);
    let anonymous = connect(&open).await.unwrap();
    assert!(
        snapshot(&anonymous, &keys).await.is_err(),
        "etcd with auth refuses a client with no user"
    );
    let mut with_user = open.clone();
    with_user.user = Some("root".into());
    with_user.password_file = Some(pw);
    let c = connect(&with_user).await.unwrap();
    let lease = c.lease_client().grant(3, None).await.unwrap().id();
    assert!(campaign(&c, &keys, lease, &me("c1")).await.unwrap());
    let s = EtcdStore::for_term(c.clone(), keys.clone(), lease)
        .await
        .unwrap();
    s.save(&at_epoch(7)).await.unwrap();
    assert_eq!(snapshot(&c, &keys).await.unwrap().state, Some(at_epoch(7)));

    let mut wrong = with_user.clone();
    wrong.password_file = Some(dir.path().join("missing"));
    let Err(err) = connect(&wrong).await else {
        panic!("connected with a missing password file");
    };
    assert!(
        format!("{err:#}").contains("password_file"),
        "names the key: {err:#}"
    );
}

/// etcd over TLS with client certificates: the controller trusts `ca_file` and
/// shows `cert_file` / `key_file`; without its certificate etcd refuses it.
#[tokio::test]
async fn a_controller_speaks_tls_with_a_client_certificate() {
    let certs = tempfile::tempdir().unwrap();
    let Some(tls) = make_tls(certs.path()) else {
        return;
    };
    let Some(e) = etcd_with(Some(&tls)).await else {
        return;
    };
    let mut cfg = config(&e, "/lifeboat/t5");
    cfg.ca_file = Some(tls.ca.clone());
    cfg.cert_file = Some(tls.client.0.clone());
    cfg.key_file = Some(tls.client.1.clone());
    let keys = Keys::new(&cfg.prefix);
    let c = connect(&cfg).await.unwrap();
    let lease = c.lease_client().grant(3, None).await.unwrap().id();
    assert!(campaign(&c, &keys, lease, &me("c1")).await.unwrap());
    let s = EtcdStore::for_term(c.clone(), keys.clone(), lease)
        .await
        .unwrap();
    s.save(&at_epoch(3)).await.unwrap();
    assert_eq!(snapshot(&c, &keys).await.unwrap().state, Some(at_epoch(3)));

    let mut no_cert = cfg.clone();
    no_cert.cert_file = None;
    no_cert.key_file = None;
    let refused = match connect(&no_cert).await {
        Err(_) => true,
        Ok(c) => snapshot(&c, &keys).await.is_err(),
    };
    assert!(
        refused,
        "etcd --client-cert-auth refuses a client without a certificate"
    );
}
