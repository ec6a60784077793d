//! Every S3 key shape replicates (docs/objects.md, "Keys"): boto3 writes each into an
//! S3-API server (moto, which keeps every shape byte-exact; s3s-fs cannot, see
//! tests/s3_client.rs), and the active region's replicator copies them to another S3
//! bucket byte-exact with their metadata and tags, and to a local directory where it
//! can — the shapes a directory cannot hold are FAILED with the reason, never skipped,
//! and they stop nothing: an ordinary key written after them replicates as usual.
#![allow(clippy::unwrap_used)]

mod common;
#[path = "common/moto.rs"]
mod moto;

use common::*;
use lifeboat_config::objects::StoreConfig;
use lifeboat_objects::Store;
use moto::{PyObject, key_shapes};

fn moto_store(moto: &moto::Moto, bucket: &str, dir: &std::path::Path) -> StoreConfig {
    moto::store_config(moto, bucket, dir)
}

async fn create_bucket(moto: &moto::Moto, bucket: &str) {
    moto::client(moto, bucket).create_bucket().await.unwrap();
}

/// The keys a local directory cannot hold byte-exact, and a word of each one's reason.
const NOT_IN_A_DIRECTORY: &[(&str, &str)] = &[
    ("a//b", "empty segment"),
    ("a/./b", "\".\""),
    ("a/../b", "\"..\""),
    ("/lead", "leading or trailing '/'"),
    ("dir/", "leading or trailing '/'"),
    ("trail/", "leading or trailing '/'"),
    ("ctl\u{1}x", "illegal character"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_key_shape_replicates_byte_exact_or_fails_with_its_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let moto = moto::Moto::start().await;
    create_bucket(&moto, "region-a").await;
    create_bucket(&moto, "region-b").await;
    let c_dir = tmp.path().join("c");
    let a = Running::start(
        &config(vec![]),
        "a",
        &tmp.path().join("state-a"),
        stores(vec![
            (
                "a",
                Store::open(&moto_store(&moto, "region-a", &tmp.path().join("ca"))).unwrap(),
            ),
            (
                "b",
                Store::open(&moto_store(&moto, "region-b", &tmp.path().join("cb"))).unwrap(),
            ),
            ("c", local_store(&c_dir)),
        ]),
    );
    a.activate(1).await;

    let objects = key_shapes();
    let said = moto::boto3(
        "write",
        &moto.endpoint,
        "region-a",
        &serde_json::to_string(&objects).unwrap(),
    )
    .await;
    assert!(said.contains(&format!("wrote {}", objects.len())), "{said}");

    let db = a.db();
    let finished = |key: &str, dest: &str| {
        db.target(key, dest)
            .unwrap()
            .is_some_and(|r| r.status == "COMPLETED" || r.status == "FAILED")
    };
    wait_until(
        120,
        "every key copied to b and copied or failed at c",
        || {
            objects
                .iter()
                .all(|o| finished(&o.key, "b") && finished(&o.key, "c"))
        },
    )
    .await;

    // Region b (S3): every shape, byte-exact, with its metadata, headers and tags, as
    // boto3 reads them.
    for o in &objects {
        let row = db.target(&o.key, "b").unwrap().unwrap();
        assert_eq!(row.status, "COMPLETED", "{:?} to b: {row:?}", o.key);
    }
    let read_back = |bucket: &'static str| {
        let endpoint = moto.endpoint.clone();
        async move {
            serde_json::from_str::<Vec<PyObject>>(&moto::boto3("read", &endpoint, bucket, "").await)
                .unwrap()
        }
    };
    let originals = read_back("region-a").await;
    let copies = read_back("region-b").await;
    assert_eq!(copies.len(), objects.len(), "every key listed at b");
    for (copy, original) in copies.iter().zip(&originals) {
        assert_eq!(copy, original, "b's copy of {:?}", original.key);
    }

    // Region c (a local directory): what it can hold, byte-exact; the rest FAILED with
    // the reason, each named in `objects status`.
    let status = lifeboat_objects::cli::status_of_db(&db, &a.region, false).unwrap();
    for o in &objects {
        let row = db.target(&o.key, "c").unwrap().unwrap();
        match NOT_IN_A_DIRECTORY.iter().find(|(k, _)| *k == o.key) {
            Some((_, why)) => {
                assert_eq!(row.status, "FAILED", "{:?} to c: {row:?}", o.key);
                let err = row.last_error.clone().unwrap_or_default();
                assert!(
                    err.contains(&format!("cannot hold the key {:?}", o.key)) && err.contains(why),
                    "{:?}: the reason is given: {err}",
                    o.key
                );
                assert!(
                    status.contains(&format!("cannot hold the key {:?}", o.key)),
                    "objects status lists {:?}:\n{status}",
                    o.key
                );
            }
            None if o.key.len() > 255 => {
                assert_eq!(row.status, "FAILED", "{:?} to c: {row:?}", o.key);
                let err = row.last_error.unwrap_or_default();
                assert!(err.contains("a local file name holds at most 255"), "{err}");
            }
            None => {
                assert_eq!(row.status, "COMPLETED", "{:?} to c: {row:?}", o.key);
                use base64::Engine as _;
                let body = base64::engine::general_purpose::STANDARD
                    .decode(&o.body)
                    .unwrap();
                assert!(
                    read(&c_dir, &o.key).as_deref() == Some(&body[..]),
                    "c's copy of {:?}",
                    o.key
                );
            }
        }
    }

    // Nothing is stuck behind them: an ordinary key written now replicates everywhere.
    let later = vec![PyObject {
        key: "after/ordinary.txt".into(),
        body: moto::b64(b"written after every odd key"),
        metadata: Default::default(),
        tags: Default::default(),
        headers: Default::default(),
    }];
    moto::boto3(
        "write",
        &moto.endpoint,
        "region-a",
        &serde_json::to_string(&later).unwrap(),
    )
    .await;
    wait_until(60, "the ordinary key replicated to b and c", || {
        ["b", "c"].iter().all(|d| {
            db.target("after/ordinary.txt", d)
                .unwrap()
                .is_some_and(|r| r.status == "COMPLETED")
        })
    })
    .await;
    assert_eq!(
        read(&c_dir, "after/ordinary.txt").as_deref(),
        Some(&b"written after every odd key"[..])
    );
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multipart_object_keeps_its_part_layout_and_etag() {
    let tmp = tempfile::tempdir().unwrap();
    let moto = moto::Moto::start().await;
    create_bucket(&moto, "region-a").await;
    create_bucket(&moto, "region-b").await;
    let a_cfg = moto_store(&moto, "region-a", &tmp.path().join("ca"));
    let b_cfg = moto_store(&moto, "region-b", &tmp.path().join("cb"));
    let c_dir = tmp.path().join("c");

    // Written as an application's SDK would: 6 MiB parts (not lifeboat's 5), a tail.
    let a_store = Store::open(&a_cfg).unwrap();
    let lifeboat_objects::store::Backend::S3(client) = &a_store.backend else {
        panic!("an s3 store");
    };
    const MIB: usize = 1 << 20;
    let key = "videos/big.bin";
    let parts: Vec<Vec<u8>> = (0..3)
        .map(|i| moto::pattern(if i < 2 { 6 * MIB } else { MIB + 17 }, i))
        .collect();
    let id = client.create_multipart(key, &[], &[]).await.unwrap();
    let mut done = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        let n = u32::try_from(i + 1).unwrap();
        let etag = client
            .upload_part(key, &id, n, vec![bytes::Bytes::from(p.clone())])
            .await
            .unwrap();
        done.push((n, etag));
    }
    let source_etag = client.complete_multipart(key, &id, &done).await.unwrap();
    assert!(
        source_etag.as_deref().is_some_and(|e| e.ends_with("-3")),
        "{source_etag:?}"
    );

    let a = Running::start(
        &config(vec![]),
        "a",
        &tmp.path().join("state-a"),
        stores(vec![
            ("a", a_store.clone()),
            ("b", Store::open(&b_cfg).unwrap()),
            ("c", local_store(&c_dir)),
        ]),
    );
    a.activate(1).await;
    let db = a.db();
    wait_until(120, "the multipart object copied to b and c", || {
        ["b", "c"].iter().all(|d| {
            db.target(key, d)
                .unwrap()
                .is_some_and(|r| r.status == "COMPLETED")
        })
    })
    .await;
    let b = Store::open(&b_cfg).unwrap();
    let copy = b.head(key).await.unwrap().unwrap();
    assert_eq!(
        copy.etag.as_deref().map(|e| e.trim_matches('"')),
        source_etag.as_deref().map(|e| e.trim_matches('"')),
        "the copy at b has the source's ETag (same part layout)"
    );
    let whole: Vec<u8> = parts.concat();
    assert!(read_store(&b, key).await.unwrap() == whole, "b's bytes");
    assert!(read(&c_dir, key).unwrap() == whole, "c's bytes");
    a.stop().await;
}
