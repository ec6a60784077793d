//! Replication between real table servers on loopback (their peer ports speak HTTP
//! to each other, as between regions): changes reach every region, three regions
//! converge, and both regions writing the same keys through an nftables partition
//! converge after the heal with every losing write listed as a conflict.
#![allow(clippy::unwrap_used)]

mod common;

use common::{
    Mesh, Partition, all_conflicts, call, contents, create_table, put, wait_converged, wait_table,
};
use serde_json::json;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_regions_take_writes_and_converge_with_each_change_applied_once() {
    let mesh = Mesh::start(&["a", "b", "c"]).await;
    create_table(mesh.store("a"), "things").await;
    wait_table(&mesh, "things").await;
    // a writes 1,000 items; b updates 100 of them once it has them; c deletes 50
    // others and writes its own.
    for i in 0..1000 {
        put(mesh.store("a"), "things", &format!("k{i:04}"), "from-a").await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while contents(mesh.store("b"), "things").await.len() < 1000
        || contents(mesh.store("c"), "things").await.len() < 1000
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a's writes never reached b and c"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for i in 0..100 {
        call(
            mesh.store("b"),
            "UpdateItem",
            json!({"TableName": "things", "Key": {"id": {"S": format!("k{i:04}")}},
                   "UpdateExpression": "SET v = :v, n = :n",
                   "ExpressionAttributeValues": {":v": {"S": "from-b"}, ":n": {"N": "1"}}}),
        )
        .await;
    }
    for i in 900..950 {
        call(
            mesh.store("c"),
            "DeleteItem",
            json!({"TableName": "things", "Key": {"id": {"S": format!("k{i:04}")}}}),
        )
        .await;
    }
    for i in 0..20 {
        put(mesh.store("c"), "things", &format!("c{i:02}"), "from-c").await;
    }
    let items = wait_converged(&mesh, "things", Duration::from_secs(30)).await;
    assert_eq!(items.len(), 1000 - 50 + 20);
    assert_eq!(items["k0000"]["v"]["S"], "from-b");
    assert_eq!(items["k0000"]["n"]["N"], "1");
    assert_eq!(items["k0500"]["v"]["S"], "from-a");
    assert!(!items.contains_key("k0920"));
    assert_eq!(items["c07"]["v"]["S"], "from-c");
    // Causal writes (b and c wrote after seeing a's) are not conflicts.
    assert!(all_conflicts(&mesh, "things").await.is_empty());
    // Each of a's writes was applied once in b: one INSERT change per key, from a.
    let log = mesh.store("b").changes_since(0, 1_000_000).await.unwrap();
    let inserts_from_a = log
        .iter()
        .filter(|c| c.kind == "INSERT" && c.version.region == "a")
        .count();
    assert_eq!(inserts_from_a, 1000);
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_regions_writing_the_same_keys_through_a_partition_converge_and_every_lost_write_is_listed()
 {
    let mesh = Mesh::start(&["a", "b"]).await;
    create_table(mesh.store("a"), "parted").await;
    wait_table(&mesh, "parted").await;
    put(mesh.store("a"), "parted", "before", "both-see-it").await;
    wait_converged(&mesh, "parted", Duration::from_secs(20)).await;

    let ports: Vec<u16> = mesh.regions.iter().map(|r| r.peer_port).collect();
    let cut = Partition::cut(&ports);
    // Each side takes writes: 200 keys on both sides (a first, then b: b's are the
    // later writes and win), 30 keys on one side only, and a delete on a of a key
    // that b updates.
    const BOTH: usize = 200;
    for i in 0..BOTH {
        put(mesh.store("a"), "parted", &format!("both{i:03}"), "a").await;
    }
    for i in 0..30 {
        put(mesh.store("a"), "parted", &format!("only-a{i:02}"), "a").await;
    }
    call(
        mesh.store("a"),
        "DeleteItem",
        json!({"TableName": "parted", "Key": {"id": {"S": "before"}}}),
    )
    .await;
    for i in 0..BOTH {
        put(mesh.store("b"), "parted", &format!("both{i:03}"), "b").await;
    }
    for i in 0..30 {
        put(mesh.store("b"), "parted", &format!("only-b{i:02}"), "b").await;
    }
    put(mesh.store("b"), "parted", "before", "b-updated").await;
    // Still cut: neither side has the other's writes.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !contents(mesh.store("a"), "parted")
            .await
            .contains_key("only-b00")
    );
    drop(cut);

    let items = wait_converged(&mesh, "parted", Duration::from_secs(60)).await;
    assert_eq!(items.len(), BOTH + 30 + 30 + 1);
    for i in 0..BOTH {
        assert_eq!(items[&format!("both{i:03}")]["v"]["S"], "b", "both{i:03}");
    }
    assert_eq!(items["only-a07"]["v"]["S"], "a");
    assert_eq!(items["before"]["v"]["S"], "b-updated");

    // Every overwritten version is listed once: a's 200 puts and a's delete of
    // "before" lost to b's later writes; each is recorded by a (whose write it
    // was), with both versions; b lost nothing.
    let conflicts = all_conflicts(&mesh, "parted").await;
    assert_eq!(
        conflicts.len(),
        BOTH + 1,
        "{:?}",
        &conflicts[..conflicts.len().min(3)]
    );
    for c in &conflicts {
        assert_eq!(c.loser_version.region, "a", "{c:?}");
        assert_eq!(c.winner_version.region, "b", "{c:?}");
        assert!(c.winner_version > c.loser_version, "{c:?}");
        assert_eq!(
            c.winner.as_ref().unwrap()["v"]["S"]
                .as_str()
                .map(|s| s.starts_with('b')),
            Some(true),
            "{c:?}"
        );
        match c.keys["id"]["S"].as_str().unwrap() {
            "before" => assert!(c.loser.is_none(), "a's delete lost: {c:?}"),
            _ => assert_eq!(c.loser.as_ref().unwrap()["v"]["S"], "a", "{c:?}"),
        }
    }
    assert!(
        mesh.store("b")
            .conflicts(None, 0, 10)
            .await
            .unwrap()
            .is_empty(),
        "b's writes won: b records none"
    );
    // The conflicts are counted on a's /metrics, and both regions' pulls are up again.
    for r in &mesh.regions {
        let page = reqwest::get(format!("http://127.0.0.1:{}/metrics", r.peer_port))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let conflicts = format!(
            "lifeboat_table_conflicts_total{{region=\"a\",table=\"parted\"}} {}",
            BOTH + 1
        );
        assert_eq!(
            page.contains(&conflicts),
            r.name == "a",
            "{}: {page}",
            r.name
        );
        let other = if r.name == "a" { "b" } else { "a" };
        let up = format!(
            "lifeboat_table_replication_up{{from=\"{other}\",to=\"{}\"}} 1",
            r.name
        );
        assert!(page.contains(&up), "{}: {page}", r.name);
        // Each region's stream holds the changes it applied, no more.
        let records = format!(
            "lifeboat_table_stream_records{{region=\"{}\",table=\"parted\"}} ",
            r.name
        );
        let n: u64 = page
            .lines()
            .find_map(|l| l.strip_prefix(&records))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map(|v| v as u64)
            .unwrap_or_else(|| panic!("{}: no {records}in {page}", r.name));
        // a: its own 1 + 200 + 30 + 1 (the delete), then b's 200 + 30 + 1 that won;
        // b: a's "before", its own 200 + 30 + 1, then a's 30 (a's 200 puts and its
        // delete lost, and a losing change writes no record).
        let want = if r.name == "a" { 463 } else { 262 };
        assert_eq!(n, want, "{}: stream records", r.name);
    }
    mesh.stop().await;
}
