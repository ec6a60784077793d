//! DynamoDB Streams: boto3's `dynamodbstreams` client against a real table server
//! on loopback (crates/tables/tests/boto3_streams.py holds the checks); a region's
//! stream carrying the writes replicated from another region (their origin in the
//! `lifeboat` member); the record of a change that overwrote a concurrent write
//! carrying the conflict; and the 24-hour retention.
#![allow(clippy::unwrap_used)]

mod common;

use common::{call, put};

use lifeboat_tables::replicate::Peer;
use lifeboat_tables::server::{AccessKeys, TableOptions, TableServer};
use lifeboat_tables::store::Store;
use lifeboat_tables::{api, streams};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "streams-test-token";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boto3_reads_the_stream_as_it_reads_dynamodb_streams() {
    common::boto3_checks("boto3_streams.py").await;
}

async fn stream_call(store: &Arc<Store>, op: &str, req: Value) -> Value {
    streams::handle(store, op, &req)
        .await
        .unwrap_or_else(|e| panic!("{op} in {}: {e}", store.region()))
}

async fn create_table(store: &Arc<Store>, name: &str, view: &str) {
    call(
        store,
        "CreateTable",
        json!({
            "TableName": name,
            "KeySchema": [{"AttributeName": "id", "KeyType": "HASH"}],
            "AttributeDefinitions": [{"AttributeName": "id", "AttributeType": "S"}],
            "BillingMode": "PAY_PER_REQUEST",
            "StreamSpecification": {"StreamEnabled": true, "StreamViewType": view},
        }),
    )
    .await;
}

/// The table's stream in `store`: its ARN and shard.
async fn stream_of(store: &Arc<Store>, table: &str) -> (String, String) {
    let list = stream_call(store, "ListStreams", json!({"TableName": table})).await;
    let arn = list["Streams"][0]["StreamArn"].as_str().unwrap().to_owned();
    let d = stream_call(store, "DescribeStream", json!({"StreamArn": arn})).await;
    let shard = d["StreamDescription"]["Shards"][0]["ShardId"]
        .as_str()
        .unwrap()
        .to_owned();
    (arn, shard)
}

async fn iterator(store: &Arc<Store>, table: &str, kind: &str, seq: Option<&str>) -> String {
    let (arn, shard) = stream_of(store, table).await;
    let mut req = json!({"StreamArn": arn, "ShardId": shard, "ShardIteratorType": kind});
    if let Some(s) = seq {
        req["SequenceNumber"] = json!(s);
    }
    stream_call(store, "GetShardIterator", req).await["ShardIterator"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Every record from `it` on (GetRecords until a page is empty).
async fn read_from(store: &Arc<Store>, mut it: String) -> Vec<Value> {
    let mut out = Vec::new();
    loop {
        let page = stream_call(
            store,
            "GetRecords",
            json!({"ShardIterator": it, "Limit": 100}),
        )
        .await;
        let records = page["Records"].as_array().unwrap();
        if records.is_empty() {
            return out;
        }
        out.extend(records.iter().cloned());
        it = page["NextShardIterator"].as_str().unwrap().to_owned();
    }
}

async fn records(store: &Arc<Store>, table: &str) -> Vec<Value> {
    let it = iterator(store, table, "TRIM_HORIZON", None).await;
    read_from(store, it).await
}

fn seqs(records: &[Value]) -> Vec<u64> {
    records
        .iter()
        .map(|r| {
            r["dynamodb"]["SequenceNumber"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_regions_stream_carries_the_writes_replicated_from_another_with_their_origin() {
    // Two table servers pulling from each other over their peer ports.
    let listeners = [
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
    ];
    let urls: Vec<String> = listeners
        .iter()
        .map(|l| format!("http://{}", l.local_addr().unwrap()))
        .collect();
    let names = ["a", "b"];
    let cancel = CancellationToken::new();
    let mut stores = Vec::new();
    let mut tasks = Vec::new();
    let mut dirs = Vec::new();
    for (i, peer) in listeners.into_iter().enumerate() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), names[i]).unwrap();
        let opts = TableOptions {
            keys: AccessKeys::new(),
            token: TOKEN.into(),
            peers: vec![Peer {
                region: names[1 - i].to_owned(),
                url: urls[1 - i].clone(),
            }],
        };
        let api = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        tasks.push(tokio::spawn(TableServer::new(store.clone(), opts).run(
            api,
            peer,
            cancel.clone(),
        )));
        stores.push(store);
        dirs.push(dir);
    }
    let (a, b) = (&stores[0], &stores[1]);
    create_table(a, "orders", "NEW_AND_OLD_IMAGES").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while b.table("orders").is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the table never reached b"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // a writes, b writes, a updates and deletes.
    for i in 0..10 {
        put(a, "orders", &format!("a{i}"), "from-a").await;
    }
    put(b, "orders", "b0", "from-b").await;
    put(a, "orders", "a0", "from-a-again").await;
    call(
        a,
        "DeleteItem",
        json!({"TableName": "orders", "Key": {"id": {"S": "a1"}}}),
    )
    .await;
    // Until b's stream has all 13 changes.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let in_b = loop {
        let r = records(b, "orders").await;
        if r.len() >= 13 {
            break r;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "b's stream has {} of the 13 changes",
            r.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(in_b.len(), 13, "{in_b:#?}");
    let s = seqs(&in_b);
    assert!(s.windows(2).all(|w| w[0] < w[1]), "{s:?}");
    let from_a: Vec<&Value> = in_b
        .iter()
        .filter(|r| r["lifeboat"]["origin"] == "a")
        .collect();
    assert_eq!(from_a.len(), 12);
    for r in &in_b {
        assert_eq!(r["awsRegion"], "b", "b's stream: b's records");
        assert_eq!(r["eventSource"], "aws:dynamodb");
        assert_eq!(
            r["lifeboat"]["version"]["region"], r["lifeboat"]["origin"],
            "{r}"
        );
        assert!(r["lifeboat"].get("conflict").is_none(), "{r}");
    }
    // a0's changes in b, in order, with b's old images.
    let a0: Vec<&Value> = in_b
        .iter()
        .filter(|r| r["dynamodb"]["Keys"]["id"]["S"] == "a0")
        .collect();
    assert_eq!(a0.len(), 2);
    assert_eq!(a0[0]["eventName"], "INSERT");
    assert_eq!(a0[1]["eventName"], "MODIFY");
    assert_eq!(a0[1]["dynamodb"]["OldImage"]["v"]["S"], "from-a");
    assert_eq!(a0[1]["dynamodb"]["NewImage"]["v"]["S"], "from-a-again");
    let a1 = in_b
        .iter()
        .rfind(|r| r["dynamodb"]["Keys"]["id"]["S"] == "a1")
        .unwrap();
    assert_eq!(a1["eventName"], "REMOVE");
    assert_eq!(a1["lifeboat"]["origin"], "a");
    let b0 = in_b
        .iter()
        .find(|r| r["dynamodb"]["Keys"]["id"]["S"] == "b0")
        .unwrap();
    assert_eq!(b0["lifeboat"]["origin"], "b");
    // a's stream has the same changes under a's own ARN, sequence numbers and ids.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let in_a = loop {
        let r = records(a, "orders").await;
        if r.len() >= 13 || tokio::time::Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(in_a.len(), 13);
    assert_ne!(
        stream_of(a, "orders").await.0,
        stream_of(b, "orders").await.0
    );
    assert!(in_a.iter().all(|r| r["awsRegion"] == "a"));
    assert!(
        in_a.iter()
            .all(|r| in_b.iter().all(|o| o["eventID"] != r["eventID"]))
    );
    cancel.cancel();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
}

/// Apply every change of `from` that `to` has not had yet (what a pull does).
async fn replicate(from: &Arc<Store>, to: &Arc<Store>) {
    let after = to.cursor(from.region()).await.unwrap();
    let changes = from.own_changes_since(after, 100_000).await.unwrap();
    let upto = changes.last().map_or(after, |c| c.seq);
    let applied = to.apply_remote(from.region(), changes, upto).await.unwrap();
    assert!(applied.waiting_for_table.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_record_of_a_change_that_overwrote_a_concurrent_write_carries_the_conflict() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Store::open(da.path(), "a").unwrap();
    let b = Store::open(db.path(), "b").unwrap();
    create_table(&a, "parted", "NEW_AND_OLD_IMAGES").await;
    replicate(&a, &b).await;
    put(&a, "parted", "calm", "a").await;
    replicate(&a, &b).await;
    // Both write "k" before hearing of the other's write (as through a partition):
    // b's is the later and wins everywhere; a's is lost, and recorded by a.
    put(&a, "parted", "k", "from-a").await;
    put(&b, "parted", "k", "from-b").await;
    replicate(&a, &b).await;
    replicate(&b, &a).await;

    let in_a = records(&a, "parted").await;
    let k: Vec<&Value> = in_a
        .iter()
        .filter(|r| r["dynamodb"]["Keys"]["id"]["S"] == "k")
        .collect();
    assert_eq!(k.len(), 2, "{in_a:#?}");
    assert_eq!(k[0]["eventName"], "INSERT");
    assert_eq!(k[0]["lifeboat"]["origin"], "a");
    assert!(k[0]["lifeboat"].get("conflict").is_none());
    let won = k[1];
    assert_eq!(won["eventName"], "MODIFY");
    assert_eq!(won["lifeboat"]["origin"], "b");
    assert_eq!(won["dynamodb"]["OldImage"]["v"]["S"], "from-a");
    assert_eq!(won["dynamodb"]["NewImage"]["v"]["S"], "from-b");
    let conflict = &won["lifeboat"]["conflict"];
    assert_eq!(conflict["item"]["v"]["S"], "from-a", "{won}");
    assert_eq!(conflict["version"]["region"], "a");
    assert_eq!(conflict["version"], k[0]["lifeboat"]["version"]);
    // The conflicts list has the same lost write.
    let listed = a.conflicts(Some("parted".into()), 0, 10).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].loser_version.region, "a");
    // No other record carries a conflict; b lost nothing, so b's stream has its own
    // write of k only (a's lost there, no change), with no conflict.
    assert_eq!(
        in_a.iter()
            .filter(|r| r["lifeboat"].get("conflict").is_some())
            .count(),
        1
    );
    let in_b = records(&b, "parted").await;
    let kb: Vec<&Value> = in_b
        .iter()
        .filter(|r| r["dynamodb"]["Keys"]["id"]["S"] == "k")
        .collect();
    assert_eq!(kb.len(), 1, "{in_b:#?}");
    assert_eq!(kb[0]["lifeboat"]["origin"], "b");
    assert!(in_b.iter().all(|r| r["lifeboat"].get("conflict").is_none()));
}

fn code(e: &lifeboat_tables::error::ApiError) -> &'static str {
    e.code
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_older_than_24_hours_are_not_served() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), "a").unwrap();
    create_table(&store, "aging", "KEYS_ONLY").await;
    for id in ["old1", "old2", "young"] {
        put(&store, "aging", id, "v").await;
    }
    let all = records(&store, "aging").await;
    assert_eq!(all.len(), 3);
    let s = seqs(&all);
    let seq = |i: usize| {
        all[i]["dynamodb"]["SequenceNumber"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    // Iterators taken before the records age.
    let horizon_it = iterator(&store, "aging", "TRIM_HORIZON", None).await;
    let at_old = iterator(&store, "aging", "AT_SEQUENCE_NUMBER", Some(&seq(0))).await;

    // The first two (and the log before them) entered the log 25 hours ago.
    let c = rusqlite::Connection::open(store.path()).unwrap();
    c.busy_timeout(Duration::from_secs(10)).unwrap();
    let n = c
        .execute(
            "UPDATE changes SET at_ms = at_ms - 25 * 3600 * 1000 WHERE seq <= ?1",
            [i64::try_from(s[1]).unwrap()],
        )
        .unwrap();
    assert!(n >= 2);
    drop(c);

    // TRIM_HORIZON starts at the oldest record younger than 24 hours.
    let now = records(&store, "aging").await;
    assert_eq!(now.len(), 1);
    assert_eq!(now[0]["dynamodb"]["Keys"]["id"]["S"], "young");
    // An iterator from TRIM_HORIZON taken before skips what aged since.
    let r = read_from(&store, horizon_it).await;
    assert_eq!(seqs(&r), vec![s[2]]);
    // One at an aged record: TrimmedDataAccessException, as DynamoDB's.
    let e = streams::handle(&store, "GetRecords", &json!({"ShardIterator": at_old}))
        .await
        .unwrap_err();
    assert_eq!(code(&e), "TrimmedDataAccessException", "{e}");
    // AT / AFTER an aged sequence number: the same; the young one is fine.
    let (arn, shard) = stream_of(&store, "aging").await;
    for (kind, i) in [
        ("AT_SEQUENCE_NUMBER", 0),
        ("AT_SEQUENCE_NUMBER", 1),
        ("AFTER_SEQUENCE_NUMBER", 1),
    ] {
        let e = streams::handle(
            &store,
            "GetShardIterator",
            &json!({"StreamArn": arn, "ShardId": shard, "ShardIteratorType": kind, "SequenceNumber": seq(i)}),
        )
        .await
        .unwrap_err();
        assert_eq!(code(&e), "TrimmedDataAccessException", "{kind} {i}: {e}");
    }
    let it = iterator(&store, "aging", "AT_SEQUENCE_NUMBER", Some(&seq(2))).await;
    assert_eq!(seqs(&read_from(&store, it).await), vec![s[2]]);
    // The log rows stay (replication reads them).
    let log = store.changes_since(0, 1000).await.unwrap();
    assert!(log.iter().any(|c| c.seq == s[0]));
    // The shard starts after the trimmed records.
    let d = stream_call(&store, "DescribeStream", json!({"StreamArn": arn})).await;
    let start: u64 =
        d["StreamDescription"]["Shards"][0]["SequenceNumberRange"]["StartingSequenceNumber"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
    assert!(start > s[1] && start <= s[2], "{start} {s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_enabled_by_update_table_starts_then_and_reaches_the_other_region() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Store::open(da.path(), "a").unwrap();
    let b = Store::open(db.path(), "b").unwrap();
    call(
        &a,
        "CreateTable",
        json!({
            "TableName": "late",
            "KeySchema": [{"AttributeName": "id", "KeyType": "HASH"}],
            "AttributeDefinitions": [{"AttributeName": "id", "AttributeType": "S"}],
        }),
    )
    .await;
    put(&a, "late", "before", "v").await;
    replicate(&a, &b).await;
    let none = stream_call(&b, "ListStreams", json!({"TableName": "late"})).await;
    assert_eq!(none["Streams"], json!([]));
    tokio::time::sleep(Duration::from_millis(5)).await;
    let d = call(
        &a,
        "UpdateTable",
        json!({"TableName": "late", "StreamSpecification": {"StreamEnabled": true, "StreamViewType": "NEW_IMAGE"}}),
    )
    .await;
    assert_eq!(
        d["TableDescription"]["StreamSpecification"]["StreamViewType"],
        "NEW_IMAGE"
    );
    put(&a, "late", "after", "v").await;
    replicate(&a, &b).await;
    put(&b, "late", "in-b", "v").await;
    for (store, want) in [(&a, vec!["after"]), (&b, vec!["after", "in-b"])] {
        let r = records(store, "late").await;
        let ids: Vec<&str> = r
            .iter()
            .map(|r| r["dynamodb"]["Keys"]["id"]["S"].as_str().unwrap())
            .collect();
        assert_eq!(ids, want, "in {}", store.region());
        assert!(r.iter().all(|r| r["dynamodb"].get("NewImage").is_some()));
    }
    // Enabling twice is refused, as DynamoDB refuses it.
    let e = api::handle(
        &a,
        "UpdateTable",
        &json!({"TableName": "late", "StreamSpecification": {"StreamEnabled": true, "StreamViewType": "KEYS_ONLY"}}),
    )
    .await
    .unwrap_err();
    assert_eq!(code(&e), "ValidationException");
    // Disabled in a, the stream is gone in both.
    let (arn_b, _) = stream_of(&b, "late").await;
    call(
        &a,
        "UpdateTable",
        json!({"TableName": "late", "StreamSpecification": {"StreamEnabled": false}}),
    )
    .await;
    replicate(&a, &b).await;
    for store in [&a, &b] {
        let l = stream_call(store, "ListStreams", json!({"TableName": "late"})).await;
        assert_eq!(l["Streams"], json!([]));
    }
    let e = streams::handle(&b, "DescribeStream", &json!({"StreamArn": arn_b}))
        .await
        .unwrap_err();
    assert_eq!(code(&e), "ResourceNotFoundException");
}
