//! Replication against a real S3 API server (s3s-fs on 127.0.0.1, port 0): paged
//! listing, multipart upload, content type, unreachable destinations, wrong credentials.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use lifeboat_objects::Store;
use lifeboat_objects::store::Attrs;
use std::sync::atomic::Ordering;

const BUCKET: &str = "replicas";

struct Env {
    tmp: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        Env {
            tmp: tempfile::tempdir().unwrap(),
        }
    }
    fn dir(&self, name: &str) -> std::path::PathBuf {
        let p = self.tmp.path().join(name);
        std::fs::create_dir_all(&p).unwrap();
        p
    }
}

async fn count_objects(store: &Store) -> usize {
    use futures::TryStreamExt as _;
    store
        .list("", None)
        .try_collect::<Vec<_>>()
        .await
        .unwrap()
        .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_to_s3_paged_listing_multipart_and_odd_keys() {
    let env = Env::new();
    let a_dir = env.dir("a");
    let server = S3Server::start(&env.dir("s3"), BUCKET).await;
    let b_cfg = s3_config(&server.endpoint, BUCKET, &env.dir("creds"), S3_SECRET);

    // More keys than one ListObjectsV2 page (1,000), one multipart-sized object
    // (12 MiB > 5 MiB parts), and keys that need escaping.
    for i in 0..1100 {
        write(
            &a_dir,
            &format!("page/{i:05}.txt"),
            format!("small {i}").as_bytes(),
        );
    }
    let big: Vec<u8> = (0..12 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    write(&a_dir, "big/twelve.bin", &big);
    let odd = [
        "with space/a b.txt",
        "ünïcödé/日本語.txt",
        "100%/50% off.txt",
    ];
    for k in odd {
        write(&a_dir, k, k.as_bytes());
    }
    let total = 1100 + 1 + odd.len() as u64;

    let cfg = config(vec![]);
    let b_store = Store::open(&b_cfg).unwrap();
    let a = Running::start(
        &cfg,
        "a",
        &env.dir("state-a"),
        stores(vec![("a", local_store(&a_dir)), ("b", b_store)]),
    );
    a.activate(1).await;
    wait_until(120, "everything replicated to S3", || {
        a.metrics.replicated() >= total
    })
    .await;

    let b = Store::open(&b_cfg).unwrap();
    assert_eq!(
        count_objects(&b).await as u64,
        total,
        "paged listing sees every key"
    );
    let got = read_store(&b, "big/twelve.bin").await.unwrap();
    assert_eq!(
        sha256(&got),
        sha256(&big),
        "multipart copy is byte-identical"
    );
    // Single-part copies are verified by the server's MD5 ETag, not read back; only
    // a multipart copy (whose ETag this server does not compute S3's way) may be.
    assert!(
        server.object_gets.load(Ordering::Relaxed) <= 1,
        "copies were read back: {} GETs",
        server.object_gets.load(Ordering::Relaxed)
    );
    assert!(
        server.max_body.load(Ordering::Relaxed) <= 5 * 1024 * 1024,
        "sent in parts: the largest request body was {} bytes",
        server.max_body.load(Ordering::Relaxed)
    );
    for k in odd {
        let got = read_store(&b, k).await.unwrap();
        assert_eq!(&got[..], k.as_bytes(), "{k}");
    }
    // The destination check lists S3 too: a full reconcile must not copy anything again.
    let before = a.metrics.replicated();
    let passes = a.metrics.reconciles();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    while a.metrics.reconciles() < passes + 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no two reconcile passes in 30 s (reconcile_interval {:?})",
            cfg.reconcile_interval
        );
        tokio::time::sleep(cfg.reconcile_interval / 4).await;
    }
    assert_eq!(
        a.metrics.replicated(),
        before,
        "verified copies are not copied again"
    );
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_source_is_reconciled_by_paged_listing_with_content_type() {
    let env = Env::new();
    let server = S3Server::start(&env.dir("s3"), BUCKET).await;
    let a_cfg = s3_config(&server.endpoint, BUCKET, &env.dir("creds"), S3_SECRET);
    let a_store = Store::open(&a_cfg).unwrap();
    for i in 0..1050 {
        a_store
            .put(
                &format!("p/{i:05}"),
                vec![format!("v{i}").into()],
                &Attrs::default(),
            )
            .await
            .unwrap();
    }
    let attrs = Attrs {
        headers: vec![("content-type".into(), "text/html".into())],
        tags: Vec::new(),
    };
    a_store
        .put("site/index.html", vec!["<h1>hi</h1>".into()], &attrs)
        .await
        .unwrap();

    // Region b is a second bucket on the same server, so the content type can travel.
    let b_cfg = s3_config(&server.endpoint, "b-bucket", &env.dir("creds-b"), S3_SECRET);
    std::fs::create_dir_all(server.root.join("b-bucket")).unwrap();
    let cfg = config(vec![]);
    let a = Running::start(
        &cfg,
        "a",
        &env.dir("state-a"),
        stores(vec![("a", a_store), ("b", Store::open(&b_cfg).unwrap())]),
    );
    a.activate(1).await;
    wait_until(120, "1051 objects replicated", || {
        a.metrics.replicated() >= 1051
    })
    .await;
    let b = Store::open(&b_cfg).unwrap();
    assert_eq!(count_objects(&b).await, 1051);
    let got = b
        .get("site/index.html", 1 << 20, false)
        .await
        .unwrap()
        .unwrap();
    assert!(
        got.attrs
            .headers
            .contains(&("content-type".to_owned(), "text/html".to_owned())),
        "{:?}",
        got.attrs
    );
    assert_eq!(
        read_store(&b, "site/index.html").await.as_deref(),
        Some(&b"<h1>hi</h1>"[..])
    );
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_destination_keeps_objects_pending_until_it_returns() {
    let env = Env::new();
    let a_dir = env.dir("a");
    // Reserve a port, then close it: nothing listens there yet.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let endpoint = format!("http://127.0.0.1:{port}");
    let b_cfg = s3_config(&endpoint, BUCKET, &env.dir("creds"), S3_SECRET);
    let cfg = config(vec![]);
    let state = env.dir("state-a");
    let a = Running::start(
        &cfg,
        "a",
        &state,
        stores(vec![
            ("a", local_store(&a_dir)),
            ("b", Store::open(&b_cfg).unwrap()),
        ]),
    );
    a.activate(1).await;
    write(&a_dir, "waiting.txt", b"patience");

    let db = a.db();
    wait_until(60, "a failed attempt recorded", || {
        db.target("waiting.txt", "b")
            .unwrap()
            .is_some_and(|r| r.attempts >= 1)
    })
    .await;
    let row = db.target("waiting.txt", "b").unwrap().unwrap();
    assert_eq!(
        row.status, "PENDING",
        "an unreachable destination is retried, not failed: {row:?}"
    );
    let err = row.last_error.unwrap_or_default();
    assert!(
        err.contains("writing waiting.txt to s3 http://127.0.0.1"),
        "clear error: {err}"
    );
    // The cause, not only where: an operator must see that nothing listens there.
    assert!(
        err.to_lowercase().contains("connection refused"),
        "the error keeps its cause: {err}"
    );
    let text = lifeboat_objects::cli::status_of_db(&db, &a.region, false).unwrap();
    assert!(
        text.contains("PENDING") && text.contains("waiting.txt"),
        "{text}"
    );

    // The destination comes back on the same address.
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let server = S3Server::serve(listener, &env.dir("s3"), BUCKET);
    wait_until(60, "replicated once the destination is back", || {
        db.target("waiting.txt", "b")
            .unwrap()
            .is_some_and(|r| r.status == "COMPLETED")
    })
    .await;
    assert_eq!(
        std::fs::read(server.root.join(BUCKET).join("waiting.txt")).unwrap(),
        b"patience"
    );
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_fail_clearly_and_nothing_is_lost() {
    let env = Env::new();
    let a_dir = env.dir("a");
    let server = S3Server::start(&env.dir("s3"), BUCKET).await;
    let creds = env.dir("creds");
    let bad = s3_config(&server.endpoint, BUCKET, &creds, "not-the-secret");
    let cfg = config(vec![]);
    let state = env.dir("state-a");
    let a = Running::start(
        &cfg,
        "a",
        &state,
        stores(vec![
            ("a", local_store(&a_dir)),
            ("b", Store::open(&bad).unwrap()),
        ]),
    );
    a.activate(1).await;
    write(&a_dir, "important.txt", b"keep me");
    let db = a.db();
    wait_until(60, "marked FAILED", || {
        db.target("important.txt", "b")
            .unwrap()
            .is_some_and(|r| r.status == "FAILED")
    })
    .await;
    let row = db.target("important.txt", "b").unwrap().unwrap();
    let err = row.last_error.unwrap_or_default();
    assert!(
        err.contains("access denied") && err.contains("credentials"),
        "clear error: {err}"
    );
    assert_eq!(
        read(&a_dir, "important.txt").as_deref(),
        Some(&b"keep me"[..]),
        "the source is untouched"
    );
    a.stop().await;

    // The operator fixes the secret and retries: the object replicates.
    let good = s3_config(&server.endpoint, BUCKET, &creds, S3_SECRET);
    let n = db.retry(None, lifeboat_objects::db::now_ms()).unwrap();
    assert_eq!(n, 1);
    let a = Running::start(
        &cfg,
        "a",
        &state,
        stores(vec![
            ("a", local_store(&a_dir)),
            ("b", Store::open(&good).unwrap()),
        ]),
    );
    a.activate(2).await;
    wait_until(60, "replicated after the fix", || {
        db.target("important.txt", "b")
            .unwrap()
            .is_some_and(|r| r.status == "COMPLETED")
    })
    .await;
    assert_eq!(
        std::fs::read(server.root.join(BUCKET).join("important.txt")).unwrap(),
        b"keep me"
    );
    a.stop().await;
}
