//! Replication between local-directory stores: the embedded default.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use lifeboat_config::objects::RuleConfig;
use std::sync::atomic::Ordering;

struct Two {
    _tmp: tempfile::TempDir,
    a: std::path::PathBuf,
    b: std::path::PathBuf,
    state_a: std::path::PathBuf,
    state_b: std::path::PathBuf,
}

fn two() -> Two {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().to_path_buf();
    for d in ["a", "b", "state-a", "state-b"] {
        std::fs::create_dir_all(p.join(d)).unwrap();
    }
    Two {
        a: p.join("a"),
        b: p.join("b"),
        state_a: p.join("state-a"),
        state_b: p.join("state-b"),
        _tmp: tmp,
    }
}

impl Two {
    fn stores(&self) -> std::collections::BTreeMap<String, lifeboat_objects::Store> {
        stores(vec![
            ("a", local_store(&self.a)),
            ("b", local_store(&self.b)),
        ])
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_overwrite_and_delete_without_delete_replication() {
    let t = two();
    let cfg = config(vec![]);
    let a = Running::start(&cfg, "a", &t.state_a, t.stores());
    a.activate(1).await;

    write(&t.a, "hello.txt", b"first version");
    wait_until(20, "hello.txt copied to b", || {
        read(&t.b, "hello.txt").as_deref() == Some(b"first version")
    })
    .await;

    write(&t.a, "hello.txt", b"second, longer version");
    wait_until(20, "overwrite copied to b", || {
        read(&t.b, "hello.txt").as_deref() == Some(b"second, longer version")
    })
    .await;
    // The file appears before the copy is verified and recorded: wait for the record
    // (a delete seen before it would make a forget the key and the copy in flight).
    wait_until(20, "both copies recorded", || a.metrics.replicated() >= 2).await;

    // Deletes are not replicated by default (S3's default): b keeps its copy.
    std::fs::remove_file(t.a.join("hello.txt")).unwrap();
    let db = a.db();
    wait_until(20, "a notices the delete", || {
        db.seen_object("hello.txt").unwrap().is_none()
    })
    .await;
    assert_eq!(
        read(&t.b, "hello.txt").as_deref(),
        Some(&b"second, longer version"[..])
    );
    assert!(
        db.target("hello.txt", "b").unwrap().is_none(),
        "a forgets the key"
    );
    assert_eq!(a.metrics.replicated(), 2);
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_replication_nested_prefixes_and_filters() {
    let t = two();
    let cfg = config(vec![
        RuleConfig {
            prefix: "msgs/".into(),
            delete_replication: true,
            backfill: true,
        },
        RuleConfig {
            prefix: "docs/".into(),
            ..RuleConfig::default()
        },
    ]);
    let a = Running::start(&cfg, "a", &t.state_a, t.stores());
    a.activate(1).await;

    write(&t.a, "msgs/2026/11/22/deep.txt", b"deep");
    write(&t.a, "docs/readme", b"docs");
    write(&t.a, "other/secret", b"not replicated");
    wait_until(20, "nested key copied", || {
        read(&t.b, "msgs/2026/11/22/deep.txt").as_deref() == Some(b"deep")
    })
    .await;
    wait_until(20, "docs copied", || {
        read(&t.b, "docs/readme").as_deref() == Some(b"docs")
    })
    .await;

    std::fs::remove_file(t.a.join("msgs/2026/11/22/deep.txt")).unwrap();
    std::fs::remove_file(t.a.join("docs/readme")).unwrap();
    wait_until(20, "delete replicated under msgs/", || {
        read(&t.b, "msgs/2026/11/22/deep.txt").is_none()
    })
    .await;
    let db = a.db();
    wait_until(20, "docs delete seen", || {
        db.seen_object("docs/readme").unwrap().is_none()
    })
    .await;
    assert_eq!(
        read(&t.b, "docs/readme").as_deref(),
        Some(&b"docs"[..]),
        "docs/ has no delete replication"
    );
    assert!(
        read(&t.b, "other/secret").is_none(),
        "keys outside every rule stay home"
    );
    assert!(db.seen_object("other/secret").unwrap().is_none());
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_of_a_thousand_small_objects() {
    let t = two();
    for i in 0..1000 {
        write(
            &t.a,
            &format!("small/{:02}/obj-{i:04}", i % 10),
            format!("object number {i}").as_bytes(),
        );
    }
    let cfg = config(vec![]);
    let a = Running::start(&cfg, "a", &t.state_a, t.stores());
    a.activate(1).await;
    wait_until(60, "1000 objects replicated", || {
        a.metrics.replicated() >= 1000
    })
    .await;
    for i in 0..1000 {
        let key = format!("small/{:02}/obj-{i:04}", i % 10);
        assert_eq!(
            read(&t.b, &key).unwrap(),
            format!("object number {i}").as_bytes(),
            "{key}"
        );
    }
    let c = a.db().counts().unwrap();
    assert_eq!(c.completed_ops, 1000);
    assert_eq!((c.pending_ops, c.failed_ops), (0, 0));
    // Gauges follow the database within a moment.
    wait_until(10, "backfill progress 1000/1000", || {
        a.metrics.backfill_progress() == (1000, 1000)
    })
    .await;
    wait_until(10, "caught up", || {
        futures::executor::block_on(a.role.status()).caught_up
    })
    .await;
    let mut page = lifeboat_core::metrics::Page::new();
    a.metrics.render_prometheus(&mut page);
    let prom = page.render();
    assert!(
        prom.contains("lifeboat_objects_replicated_total{region=\"a\"} 1000"),
        "{prom}"
    );
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_mb_object_is_streamed_in_bounded_memory() {
    let t = two();
    // 200 MB of non-repeating content, written in 1 MiB pieces.
    {
        use std::io::Write as _;
        let mut f = std::fs::File::create(t.a.join("big.bin")).unwrap();
        let mut block = vec![0u8; 1 << 20];
        for i in 0..200u32 {
            for (j, b) in block.iter_mut().enumerate() {
                *b = (i as usize * 31 + j * 7 + (j >> 8)) as u8;
            }
            f.write_all(&block).unwrap();
        }
    }
    let cfg = config(vec![]);
    let (b_store, counting) = Counting::wrap(local_store(&t.b));
    let a = Running::start(
        &cfg,
        "a",
        &t.state_a,
        stores(vec![("a", local_store(&t.a)), ("b", b_store)]),
    );
    a.activate(1).await;
    wait_until(120, "big object replicated", || a.metrics.replicated() >= 1).await;

    let part = cfg.part_size_mib * 1024 * 1024;
    let max = counting.max_buffer.load(Ordering::Relaxed);
    assert!(
        max <= part,
        "largest buffer {max} bytes exceeds one part ({part})"
    );
    assert!(
        max < 200 * 1024 * 1024 / 10,
        "largest buffer {max} must be far below the object's 200 MB"
    );
    let meta = std::fs::metadata(t.b.join("big.bin")).unwrap();
    assert_eq!(meta.len(), 200 * 1024 * 1024);
    let row = a.db().target("big.bin", "b").unwrap().unwrap();
    assert_eq!(row.status, "COMPLETED");
    let expected = sha256_file(&t.a.join("big.bin"));
    assert_eq!(
        sha256_file(&t.b.join("big.bin")),
        expected,
        "the copy is byte-identical"
    );
    assert_eq!(
        row.checksum.as_deref(),
        Some(expected.as_str()),
        "verified checksum recorded"
    );
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_in_the_middle_of_a_backfill_resumes_without_copying_again() {
    let t = two();
    let total = 400u64;
    for i in 0..total {
        write(
            &t.a,
            &format!("r/{i:04}"),
            format!("{i}").repeat(64).as_bytes(),
        );
    }
    let mut cfg = config(vec![]);
    cfg.concurrency = 4;
    let a = Running::start(&cfg, "a", &t.state_a, t.stores());
    a.activate(1).await;
    wait_until(60, "part of the backfill done", || {
        a.metrics.replicated() >= 50
    })
    .await;
    a.stop().await;

    let done_before = common_completed(&t.state_a);
    assert!(
        done_before >= 50 && done_before < total,
        "stopped in the middle: {done_before}"
    );

    let (b_store, counting) = Counting::wrap(local_store(&t.b));
    let a = Running::start(
        &cfg,
        "a",
        &t.state_a,
        stores(vec![("a", local_store(&t.a)), ("b", b_store)]),
    );
    a.activate(2).await;
    wait_until(60, "backfill finished", || {
        common_completed(&t.state_a) == total
    })
    .await;
    assert_eq!(
        counting.writes.load(Ordering::Relaxed),
        total - done_before,
        "only the objects not completed before the restart are copied"
    );
    for i in 0..total {
        assert_eq!(
            read(&t.b, &format!("r/{i:04}")).unwrap(),
            format!("{i}").repeat(64).as_bytes()
        );
    }
    a.stop().await;
}

fn common_completed(state: &std::path::Path) -> u64 {
    lifeboat_objects::db::Db::open(&lifeboat_objects::db_path(state))
        .unwrap()
        .counts()
        .unwrap()
        .completed_ops
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_destination_copy_is_detected_and_copied_again() {
    let t = two();
    let cfg = config(vec![]);
    let a = Running::start(&cfg, "a", &t.state_a, t.stores());
    a.activate(1).await;
    write(&t.a, "precious.txt", b"the real content");
    wait_until(20, "copied", || {
        read(&t.b, "precious.txt").as_deref() == Some(b"the real content")
    })
    .await;

    // Same size, different bytes: only a content check or a changed e_tag tells.
    std::fs::write(t.b.join("precious.txt"), b"the fake content").unwrap();
    wait_until(30, "corruption repaired", || {
        read(&t.b, "precious.txt").as_deref() == Some(b"the real content")
    })
    .await;
    assert!(a.metrics.repaired() >= 1);
    // And a copy that vanished comes back too.
    std::fs::remove_file(t.b.join("precious.txt")).unwrap();
    wait_until(30, "vanished copy restored", || {
        read(&t.b, "precious.txt").as_deref() == Some(b"the real content")
    })
    .await;
    a.stop().await;
}

/// Move the active region: `old` fenced, `new` active, `old` follows it; wait until
/// `new` pushes.
async fn hand_over(old: &Running, new: &Running, epoch: u64) {
    old.fence(epoch).await;
    new.activate(epoch).await;
    old.follow(epoch, new.region.as_str()).await;
    wait_until(20, "the new region active", || {
        futures::executor::block_on(new.role.status()).role == lifeboat_core::RoleHealth::Primary
    })
    .await;
}

/// Wait until `db`'s region has recorded `key` as a replica.
async fn wait_replica(db: &lifeboat_objects::db::Db, key: &str) {
    wait_until(20, &format!("{key} recorded as a replica"), || {
        db.seen_object(key)
            .unwrap()
            .is_some_and(|s| s.status == "REPLICA")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_ping_pong_after_the_direction_changes() {
    let t = two();
    let cfg = config(vec![]);
    let a = Running::start(&cfg, "a", &t.state_a, t.stores());
    let b = Running::start(&cfg, "b", &t.state_b, t.stores());
    b.follow(1, "a").await;
    // A new region's first look at its store takes what is there for its own data
    // (it predates lifeboat); let b take that look before a starts pushing into it.
    let b_meta = b.db();
    wait_until(20, "b's first observation", || {
        b_meta.get_meta("observed").unwrap().is_some()
    })
    .await;
    a.activate(1).await;

    write(&t.a, "from-a.txt", b"written in a");
    wait_until(20, "a's object reached b", || {
        read(&t.b, "from-a.txt").is_some()
    })
    .await;
    let db_b = b.db();
    wait_replica(&db_b, "from-a.txt").await;
    let a_copy_mtime = std::fs::metadata(t.a.join("from-a.txt"))
        .unwrap()
        .modified()
        .unwrap();

    // Failover: a fenced, b active, a follows.
    hand_over(&a, &b, 2).await;

    write(&t.b, "from-b.txt", b"written in b after the failover");
    wait_until(20, "b's object reached a", || {
        read(&t.a, "from-b.txt").is_some()
    })
    .await;
    let db_a = a.db();
    wait_replica(&db_a, "from-b.txt").await;
    wait_until(20, "b recorded its copy", || b.metrics.replicated() >= 1).await;
    assert_eq!(
        b.metrics.replicated(),
        1,
        "b sent only its own write, not a's replica back"
    );
    assert!(db_b.target("from-a.txt", "a").unwrap().is_none());

    // Fail back: a's replica of b's object must not go back to b either.
    hand_over(&b, &a, 3).await;
    write(&t.a, "again-a.txt", b"a again");
    wait_until(20, "a's new object reached b", || {
        read(&t.b, "again-a.txt").is_some()
    })
    .await;
    wait_until(20, "a recorded its copy", || a.metrics.replicated() >= 2).await;
    assert_eq!(
        a.metrics.replicated(),
        2,
        "a sent from-a.txt once and again-a.txt, never from-b.txt"
    );
    assert!(db_a.target("from-b.txt", "b").unwrap().is_none());
    assert_eq!(
        std::fs::metadata(t.a.join("from-a.txt"))
            .unwrap()
            .modified()
            .unwrap(),
        a_copy_mtime,
        "a's original never overwritten"
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fencing_stops_replication_out_of_the_region() {
    let t = two();
    let cfg = config(vec![]);
    let a = Running::start(&cfg, "a", &t.state_a, t.stores());
    a.activate(1).await;
    write(&t.a, "before.txt", b"x");
    wait_until(20, "copied", || read(&t.b, "before.txt").is_some()).await;
    a.fence(2).await;
    assert!(
        a.role
            .activate(&lifeboat_core::Activation {
                epoch: lifeboat_core::Epoch(1),
                region: a.region.clone(),
                forced: false
            })
            .await
            .is_err(),
        "stale epoch refused"
    );
    write(&t.a, "after.txt", b"y");
    let db = a.db();
    wait_until(20, "the write is seen", || {
        db.seen_object("after.txt").unwrap().is_some()
    })
    .await;
    // Give the dispatcher several rounds: nothing may leave a fenced region.
    for _ in 0..10 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert!(
            read(&t.b, "after.txt").is_none(),
            "a fenced region pushed an object"
        );
    }
    let st = a.role.status().await;
    assert_eq!(st.role, lifeboat_core::RoleHealth::Fenced);
    a.stop().await;
}

/// A write region a acknowledged but had not copied when it was fenced is kept aside
/// at the fence: the next active region's copy of the same key overwrites a's store
/// later, and a's version must not be lost silently (docs/architecture.md, rule 4).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fence_keeps_unsent_writes_aside_before_the_new_region_overwrites_them() {
    let t = two();
    let cfg = config(vec![]);
    let stores = t.stores();
    // b's store stops taking writes: its directory becomes a file.
    std::fs::remove_dir_all(&t.b).unwrap();
    std::fs::write(&t.b, b"not a directory").unwrap();
    let mut a = Running::start(&cfg, "a", &t.state_a, stores);
    a.activate(1).await;
    write(&t.a, "dir/held.txt", b"written in a, never copied");
    write(&t.a, "sent-nowhere-either.txt", b"second");
    let db = a.db();
    wait_until(20, "the copy to b to have failed", || {
        db.target("dir/held.txt", "b")
            .unwrap()
            .is_some_and(|r| r.attempts >= 1 && r.status != "COMPLETED")
    })
    .await;
    a.fence(2).await;

    let index_path = lifeboat_objects::keep_dir(&t.state_a).join("index.jsonl");
    let index = std::fs::read_to_string(&index_path).unwrap();
    let entries: Vec<serde_json::Value> = index
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(entries.len(), 2, "{index}");
    let held = entries
        .iter()
        .find(|e| e["key"] == "dir/held.txt")
        .unwrap_or_else(|| panic!("{index}"));
    assert_eq!(held["fenced_at_epoch"], 2);
    let kept_path = std::path::PathBuf::from(held["path"].as_str().unwrap());
    assert_eq!(
        std::fs::read(&kept_path).unwrap(),
        b"written in a, never copied"
    );
    let event = loop {
        let e = a.events.recv().await.unwrap();
        if e.kind == lifeboat_core::JournalKind::DivergenceSaved {
            break e;
        }
    };
    assert!(event.detail.starts_with("2 object write(s)"), "{event:?}");
    assert!(event.detail.contains("dir/held.txt"), "{event:?}");

    // The new active region's copy overwrites a's store; a's version is still kept.
    write(&t.a, "dir/held.txt", b"b's version");
    assert_eq!(
        std::fs::read(&kept_path).unwrap(),
        b"written in a, never copied"
    );
    // Fencing again keeps nothing twice.
    a.fence(3).await;
    assert_eq!(std::fs::read_to_string(&index_path).unwrap(), index);
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_with_spaces_unicode_and_percent_round_trip() {
    let t = two();
    let cfg = config(vec![]);
    let a = Running::start(&cfg, "a", &t.state_a, t.stores());
    a.activate(1).await;
    let keys = [
        "with space/file name.txt",
        "ünïcödé/日本語.txt",
        "100%/50% off.txt",
        "a+b=c&d.txt",
    ];
    for k in keys {
        write(&t.a, k, k.as_bytes());
    }
    for k in keys {
        wait_until(20, k, || read(&t.b, k).as_deref() == Some(k.as_bytes())).await;
    }
    a.stop().await;
}

/// The agent fences its region at start-up (it holds no lease yet): objects that were
/// in the store before lifeboat ever ran are still the region's own, and are pushed
/// once it becomes active — not recorded as replicas and forgotten.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_present_before_the_first_start_replicate_after_a_fence_at_start_up() {
    let t = two();
    let cfg = config(vec![]);
    write(&t.a, "msgdrdct.txt", b"written before lifeboat started");
    let a = Running::start(&cfg, "a", &t.state_a, t.stores());
    let b = Running::start(&cfg, "b", &t.state_b, t.stores());
    a.fence(1).await;
    b.fence(1).await;
    a.activate(1).await;
    b.follow(1, "a").await;
    wait_until(20, "the pre-existing object reached b", || {
        read(&t.b, "msgdrdct.txt").as_deref() == Some(&b"written before lifeboat started"[..])
    })
    .await;
    let db_a = a.db();
    let st = db_a
        .seen_object("msgdrdct.txt")
        .unwrap()
        .expect("a knows its object");
    assert_ne!(
        st.status, "REPLICA",
        "a's own object must not be taken for a replica"
    );
}

/// A standby whose replicator starts (with a new state database) after the active
/// region has already copied objects into its store: its first look records the
/// byte-identical ones as replicas, not as its own data — nothing pending on the
/// standby, and nothing copied back when it is promoted. An object only it has (it
/// predates lifeboat) stays its own and goes out once it is active.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_started_after_the_first_pushes_takes_them_for_replicas() {
    let t = two();
    let cfg = config(vec![]);
    let a = Running::start(&cfg, "a", &t.state_a, t.stores());
    a.activate(1).await;
    for i in 0..3 {
        write(
            &t.a,
            &format!("pushed-{i}.txt"),
            format!("from a {i}").as_bytes(),
        );
    }
    wait_until(20, "a's objects in b's store", || {
        (0..3).all(|i| read(&t.b, &format!("pushed-{i}.txt")).is_some())
    })
    .await;
    wait_until(20, "a recorded its copies", || a.metrics.replicated() >= 3).await;
    let a_mtimes: Vec<_> = (0..3)
        .map(|i| {
            std::fs::metadata(t.a.join(format!("pushed-{i}.txt")))
                .unwrap()
                .modified()
                .unwrap()
        })
        .collect();
    write(&t.b, "only-in-b.txt", b"b's own, from before lifeboat");

    // b's agent starts now: a fence first (no lease yet), then the follow.
    let b = Running::start(&cfg, "b", &t.state_b, t.stores());
    b.fence(1).await;
    b.follow(1, "a").await;
    let db_b = b.db();
    wait_until(20, "b's first look", || {
        db_b.seen_object("only-in-b.txt").unwrap().is_some()
            && (0..3).all(|i| {
                db_b.seen_object(&format!("pushed-{i}.txt"))
                    .unwrap()
                    .is_some()
            })
    })
    .await;
    for i in 0..3 {
        let seen = db_b
            .seen_object(&format!("pushed-{i}.txt"))
            .unwrap()
            .unwrap();
        assert_eq!(seen.status, "REPLICA", "pushed-{i}.txt");
    }
    assert_eq!(
        db_b.seen_object("only-in-b.txt").unwrap().unwrap().status,
        "LOCAL"
    );
    assert_eq!(
        db_b.counts().unwrap().pending_ops,
        0,
        "nothing pending on a standby"
    );

    hand_over(&a, &b, 2).await;
    wait_until(20, "b's own object reached a", || {
        read(&t.a, "only-in-b.txt").is_some()
    })
    .await;
    wait_until(20, "b recorded its copy", || b.metrics.replicated() >= 1).await;
    assert_eq!(
        b.metrics.replicated(),
        1,
        "b sent only its own object, not a's back"
    );
    for (i, m) in a_mtimes.iter().enumerate() {
        assert_eq!(
            &std::fs::metadata(t.a.join(format!("pushed-{i}.txt")))
                .unwrap()
                .modified()
                .unwrap(),
            m,
            "a's pushed-{i}.txt never overwritten"
        );
    }
    a.stop().await;
    b.stop().await;
}

/// A file whose name object_store's paths refuse (a control character) stops nothing:
/// the listing goes on, the other objects replicate, and `objects status` names it.
/// (Before, the whole listing failed, so a region with such a file present at its
/// first start never became active for objects.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_that_cannot_be_named_as_a_key_is_reported_and_stops_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (a_dir, b_dir) = (tmp.path().join("a"), tmp.path().join("b"));
    write(&a_dir, "docs/one.txt", b"one");
    std::fs::write(a_dir.join("docs").join("bad\u{1}name"), b"unnameable").unwrap();
    write(&a_dir, "docs/two.txt", b"two");
    let a = Running::start(
        &config(vec![]),
        "a",
        &tmp.path().join("state-a"),
        stores(vec![("a", local_store(&a_dir)), ("b", local_store(&b_dir))]),
    );
    a.activate(1).await;
    wait_until(60, "both nameable objects replicated", || {
        read(&b_dir, "docs/one.txt").is_some() && read(&b_dir, "docs/two.txt").is_some()
    })
    .await;
    let db = a.db();
    wait_until(30, "the unnameable entry reported", || {
        lifeboat_objects::cli::status_of_db(&db, &a.region, false)
            .unwrap()
            .contains("UNLISTED")
    })
    .await;
    let text = lifeboat_objects::cli::status_of_db(&db, &a.region, false).unwrap();
    assert!(
        text.contains("1 entry of the store could not be listed as keys") && text.contains("bad"),
        "{text}"
    );
    let json = lifeboat_objects::cli::status_of_db(&db, &a.region, true).unwrap();
    assert!(json.contains("\"unlisted\""), "{json}");
    a.stop().await;
}
