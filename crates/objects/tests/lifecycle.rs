//! Lifecycle rules for cost (`[[objects.lifecycle]]`): objects older than a rule expire
//! in the store the rule names and never in another; an expired copy is not copied
//! there again, and the expiry is not replicated as a delete. An S3-API store gets the
//! rules as its bucket's own lifecycle configuration.
#![allow(clippy::unwrap_used)]

mod common;
#[path = "common/moto.rs"]
mod moto;

use common::*;
use lifeboat_config::objects::{LifecycleRule, ObjectsConfig};
use lifeboat_objects::Store;
use lifeboat_objects::s3::LifecycleXmlRule;
use std::path::Path;
use std::time::{Duration, SystemTime};

const TWO_DAYS: Duration = Duration::from_secs(2 * 86_400);

fn age(dir: &Path, key: &str) {
    std::fs::File::options()
        .write(true)
        .open(dir.join(key))
        .unwrap()
        .set_modified(SystemTime::now() - TWO_DAYS)
        .unwrap();
}

fn rule(store: &str, prefix: &str, days: u32) -> LifecycleRule {
    LifecycleRule {
        store: store.to_owned(),
        prefix: prefix.to_owned(),
        expire_after_days: Some(days),
        noncurrent_expire_after_days: None,
        abort_incomplete_multipart_after_days: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_objects_expire_in_the_store_the_rule_names_and_nowhere_else() {
    let tmp = tempfile::tempdir().unwrap();
    let (a_dir, b_dir) = (tmp.path().join("a"), tmp.path().join("b"));
    let (state_a, state_b) = (tmp.path().join("state-a"), tmp.path().join("state-b"));
    let cfg = ObjectsConfig {
        lifecycle: vec![rule("b", "logs/", 1)],
        ..config(vec![])
    };
    // a's objects, two of them last modified two days ago, before lifeboat first runs.
    for key in ["logs/old.txt", "logs/new.txt", "keep/old.txt"] {
        write(&a_dir, key, key.as_bytes());
    }
    age(&a_dir, "logs/old.txt");
    age(&a_dir, "keep/old.txt");
    let regions = || stores(vec![("a", local_store(&a_dir)), ("b", local_store(&b_dir))]);

    // a replicates everything to b (b's copies are new there), then stops.
    let a = Running::start(&cfg, "a", &state_a, regions());
    a.activate(1).await;
    wait_until(60, "three objects copied to b", || {
        a.metrics.replicated() >= 3
    })
    .await;
    a.stop().await;

    // b's copies grow old; b's replicator (a standby) applies b's rule.
    age(&b_dir, "logs/old.txt");
    age(&b_dir, "keep/old.txt");
    let b = Running::start(&cfg, "b", &state_b, regions());
    b.follow(1, "a").await;
    wait_until(60, "b's lifecycle expired logs/old.txt", || {
        b.metrics.expired() >= 1
    })
    .await;
    assert!(read(&b_dir, "logs/old.txt").is_none(), "expired in b");
    assert!(read(&b_dir, "logs/new.txt").is_some(), "new: kept");
    assert!(
        read(&b_dir, "keep/old.txt").is_some(),
        "outside the prefix: kept"
    );
    assert_eq!(b.metrics.expired(), 1);
    assert!(
        read(&a_dir, "logs/old.txt").is_some(),
        "the rule names b's store: a's object of the same age stays"
    );

    // a again: the copy b expired is not copied there again, and nothing is deleted.
    let a = Running::start(&cfg, "a", &state_a, regions());
    a.activate(2).await;
    let db = a.db();
    wait_until(60, "a marks b's expired copy EXPIRED", || {
        db.target("logs/old.txt", "b")
            .unwrap()
            .is_some_and(|r| r.status == "EXPIRED")
    })
    .await;
    let passes = a.metrics.reconciles();
    wait_until(60, "two more reconcile passes of a", || {
        a.metrics.reconciles() >= passes + 2
    })
    .await;
    assert!(
        read(&b_dir, "logs/old.txt").is_none(),
        "not copied to b again"
    );
    assert!(read(&a_dir, "logs/old.txt").is_some(), "a's object stays");
    assert_eq!(a.metrics.expired(), 0, "a's store has no rule");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_s3_store_gets_the_rules_as_its_buckets_lifecycle() {
    let tmp = tempfile::tempdir().unwrap();
    let moto = moto::Moto::start().await;
    moto::client(&moto, "region-b")
        .create_bucket()
        .await
        .unwrap();
    let b_cfg = moto::store_config(&moto, "region-b", &tmp.path().join("creds"));
    let cfg = ObjectsConfig {
        lifecycle: vec![
            LifecycleRule {
                noncurrent_expire_after_days: Some(7),
                abort_incomplete_multipart_after_days: Some(2),
                ..rule("b", "logs/", 30)
            },
            rule("a", "tmp/", 1),
        ],
        ..config(vec![])
    };
    let b = Running::start(
        &cfg,
        "b",
        &tmp.path().join("state-b"),
        stores(vec![
            ("a", local_store(&tmp.path().join("a"))),
            ("b", Store::open(&b_cfg).unwrap()),
        ]),
    );
    b.follow(1, "a").await;
    let bucket = moto::client(&moto, "region-b");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let rules = loop {
        let rules = bucket.get_lifecycle().await.unwrap();
        if !rules.is_empty() {
            break rules;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "b's bucket has no lifecycle rules after 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        rules,
        vec![LifecycleXmlRule {
            id: "lifeboat-0".into(),
            prefix: "logs/".into(),
            expire_after_days: Some(30),
            noncurrent_expire_after_days: Some(7),
            abort_incomplete_multipart_after_days: Some(2),
        }],
        "b's rule only (a's rule names a's store)"
    );
    b.stop().await;
}
