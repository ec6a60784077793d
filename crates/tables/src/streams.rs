//! DynamoDB Streams (`X-Amz-Target: DynamoDBStreams_20120810.<Op>`, on the API port,
//! signed as "dynamodb"): ListStreams, DescribeStream, GetShardIterator and
//! GetRecords over the region's change log (docs/tables.md, "Streams").
//!
//! - A table has a stream while its StreamSpecification enables it (CreateTable or
//!   UpdateTable). The stream's records are the table's item changes (INSERT,
//!   MODIFY, REMOVE) in this region's log, in the log's order: this region's writes
//!   and those replicated from the others, as a DynamoDB global table's replica
//!   streams both. Only writes made since the stream was enabled are served.
//! - One shard per table and region, never closed while the stream exists.
//! - Sequence numbers are the log's seq, as 21 decimal digits (zero-padded), so they
//!   compare the same as strings and as numbers.
//! - Retention: 24 hours. A record older (by when it entered this region's log) is
//!   not served; the log rows stay (replication reads them).
//! - Shard iterators are opaque: the stream, the shard, the position and the time
//!   of issue, with an HMAC (a key kept beside the store); valid for 15 minutes.
//! - Each record also carries `lifeboat`: the region that made the write, its
//!   version and, for a change that overwrote a concurrent write of this region,
//!   the lost version (`conflict`). The SDKs ignore a member they do not model.

use crate::api::{stream_arn, stream_label};
use crate::error::ApiError;
use crate::store::{Change, Store, TableDef, now_ms};
use crate::value::{item_from_json, item_size};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

/// How long a record is served (DynamoDB Streams' 24 hours).
pub const RETENTION_MS: i64 = 24 * 3600 * 1000;
/// How long a shard iterator is valid (DynamoDB's 15 minutes).
pub const ITERATOR_TTL_MS: i64 = 15 * 60 * 1000;
/// The most records of one GetRecords (and its default).
pub const MAX_RECORDS: usize = 1000;
/// The most bytes of records of one GetRecords (DynamoDB's 1 MB).
pub const PAGE_BYTES: usize = 1024 * 1024;
/// The most log rows one GetRecords looks at (records skipped as older than the
/// stream count too), so that a call answers soon even with nothing to serve.
const SCAN_MAX: usize = 10 * MAX_RECORDS;
/// How far before a stream's enabling the search for its first record starts: a
/// record is in the stream by its write's version (hybrid logical clock), but it
/// entered this region's log by this region's clock, which may lag.
const SKEW_SLACK_MS: i64 = 3600 * 1000;
/// The namespace of DynamoDB Streams' own errors.
const NAMESPACE: &str = "com.amazonaws.dynamodb.v20120810";

fn stream_error(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError {
        status: axum::http::StatusCode::BAD_REQUEST,
        namespace: NAMESPACE,
        code,
        message: message.into(),
        item: None,
    }
}

fn expired_iterator(issued_ms: i64, now: i64) -> ApiError {
    stream_error(
        "ExpiredIteratorException",
        format!(
            "Iterator expired: it was issued at {issued_ms} ms, now is {now} ms, more than the {ITERATOR_TTL_MS} ms an iterator is valid. Get a new one with GetShardIterator"
        ),
    )
}

fn trimmed(message: impl Into<String>) -> ApiError {
    stream_error("TrimmedDataAccessException", message)
}

fn invalid_iterator() -> ApiError {
    ApiError::validation("Invalid ShardIterator: not one this table server issued")
}

/// Run Streams operation `op` with request `req`.
pub async fn handle(store: &Arc<Store>, op: &str, req: &Value) -> Result<Value, ApiError> {
    if !req.is_object() {
        return Err(ApiError::serialization(
            "the request body must be a JSON object",
        ));
    }
    match op {
        "ListStreams" => list_streams(store, req),
        "DescribeStream" => describe_stream(store, req).await,
        "GetShardIterator" => get_shard_iterator(store, req).await,
        "GetRecords" => get_records(store, req).await,
        other => Err(ApiError::unknown_operation(format!(
            "the operation {other:?} is not one of DynamoDB Streams' that lifeboat's table server knows (ListStreams, DescribeStream, GetShardIterator, GetRecords)"
        ))),
    }
}

// --- sequence numbers, shards, streams ---------------------------------------

/// A log seq as a stream sequence number: 21 decimal digits.
pub fn sequence_number(seq: u64) -> String {
    format!("{seq:021}")
}

/// A sequence number given by a client: decimal digits (21 as given out; up to 40
/// taken, DynamoDB's limit).
pub fn parse_sequence_number(s: &str) -> Result<u64, ApiError> {
    if s.is_empty() || s.len() > 40 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ApiError::validation(format!(
            "Invalid SequenceNumber {s:?}: a sequence number is decimal digits"
        )));
    }
    let digits = s.trim_start_matches('0');
    if digits.is_empty() {
        return Ok(0);
    }
    digits.parse().map_err(|_| {
        ApiError::validation(format!(
            "Invalid SequenceNumber {s:?}: beyond this stream's sequence numbers"
        ))
    })
}

/// When the table's stream was enabled (ms since the epoch).
pub fn stream_since_ms(def: &TableDef) -> i64 {
    def.stream_enabled_ms.unwrap_or(def.created_ms)
}

/// The one shard of the table's stream: its enabling time (as DynamoDB's shard ids
/// hold a time) and 8 hex digits of the table's id.
pub fn shard_id(def: &TableDef) -> String {
    let hex: String = def
        .id
        .chars()
        .filter(char::is_ascii_hexdigit)
        .take(8)
        .collect();
    format!("shardId-{:020}-{hex:0>8}", stream_since_ms(def).max(0))
}

/// The table whose stream `arn` is (its stream enabled, the ARN its current one).
fn stream_def(store: &Store, arn: &str) -> Result<TableDef, ApiError> {
    let name = arn
        .split_once(":table/")
        .and_then(|(_, rest)| rest.split_once("/stream/"))
        .map(|(name, _)| name);
    name.and_then(|n| store.table(n).ok())
        .filter(|d| d.stream_view.is_some() && stream_arn(store, d) == arn)
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "Requested resource not found: Stream: {arn} not found"
            ))
        })
}

fn check_shard(def: &TableDef, shard: &str) -> Result<(), ApiError> {
    if shard == shard_id(def) {
        Ok(())
    } else {
        Err(ApiError::not_found(format!(
            "Requested resource not found: Shard {shard} does not exist in the stream of table {}",
            def.name
        )))
    }
}

fn string_field<'a>(req: &'a Value, field: &str) -> Result<Option<&'a str>, ApiError> {
    match req.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(ApiError::serialization(format!(
            "{field} must be a string, not {other}"
        ))),
    }
}

fn required<'a>(req: &'a Value, field: &str) -> Result<&'a str, ApiError> {
    string_field(req, field)?.ok_or_else(|| {
        ApiError::validation(format!(
            "1 validation error detected: Value null at '{}{}' failed to satisfy constraint: Member must not be null",
            field.get(..1).unwrap_or("").to_lowercase(),
            field.get(1..).unwrap_or("")
        ))
    })
}

/// Limit: absent → `default`; otherwise 1..=`max`.
fn limit(req: &Value, default: usize, max: usize) -> Result<usize, ApiError> {
    match req.get("Limit").filter(|v| !v.is_null()) {
        None => Ok(default),
        Some(v) => match v.as_u64() {
            Some(n) if n >= 1 && n <= max as u64 => Ok(n as usize),
            _ => Err(ApiError::validation(format!(
                "1 validation error detected: Value '{v}' at 'limit' failed to satisfy constraint: Member must have value between 1 and {max}"
            ))),
        },
    }
}

// --- where the stream starts --------------------------------------------------

/// The last seq of the log whose row entered it before `cutoff_ms` (0: none), by a
/// binary search on seq (rows enter in seq order, so their times grow with it; a
/// clock stepped back makes this approximate, and the records are checked one by
/// one as well).
fn last_seq_before(c: &rusqlite::Connection, cutoff_ms: i64) -> rusqlite::Result<u64> {
    let max: i64 = c.query_row("SELECT coalesce(max(seq), 0) FROM changes", [], |r| {
        r.get(0)
    })?;
    let mut st =
        c.prepare_cached("SELECT at_ms FROM changes WHERE seq >= ?1 ORDER BY seq LIMIT 1")?;
    // The smallest s whose first row at or after it is not older than the cutoff.
    let (mut lo, mut hi) = (1i64, max.max(0) + 1);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let at: i64 = st.query_row([mid], |r| r.get(0))?;
        if at >= cutoff_ms {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    Ok((lo - 1).max(0) as u64)
}

/// The stream's horizon: every seq up to it is out of the stream (older than the
/// retention, or from before the stream was enabled, less [`SKEW_SLACK_MS`]).
async fn horizon(store: &Arc<Store>, def: &TableDef, now: i64) -> Result<u64, ApiError> {
    let cutoff = (now - RETENTION_MS).max(stream_since_ms(def) - SKEW_SLACK_MS);
    store
        .read(move |c| {
            last_seq_before(c, cutoff)
                .map_err(|e| ApiError::internal(format!("the table store: {e}")))
        })
        .await
}

// --- iterators ----------------------------------------------------------------

/// What a shard iterator holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardIterator {
    pub stream_arn: String,
    pub shard_id: String,
    /// Records after this seq are next.
    pub after: u64,
    pub issued_ms: i64,
    /// From TRIM_HORIZON: records that aged past the retention since are skipped,
    /// not an error.
    pub horizon: bool,
}

const MAC_BYTES: usize = 16;

fn mac(key: &[u8], payload: &[u8]) -> Hmac<Sha256> {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| <Hmac<Sha256> as Mac>::new(&Default::default()));
    m.update(payload);
    m
}

/// The iterator's opaque form: base64url of its fields and their HMAC.
pub fn encode_iterator(key: &[u8], it: &ShardIterator) -> String {
    let payload = format!(
        "1\n{}\n{}\n{}\n{}\n{}",
        it.stream_arn,
        it.shard_id,
        it.after,
        it.issued_ms,
        u8::from(it.horizon)
    );
    let tag = mac(key, payload.as_bytes()).finalize().into_bytes();
    let mut bytes = payload.into_bytes();
    bytes.extend_from_slice(&tag[..MAC_BYTES]);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Decode and check an iterator: ValidationException unless this key made it
/// (garbage, a changed byte), ExpiredIteratorException after [`ITERATOR_TTL_MS`].
pub fn decode_iterator(key: &[u8], s: &str, now: i64) -> Result<ShardIterator, ApiError> {
    if s.is_empty() || s.len() > 2048 {
        return Err(invalid_iterator());
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| invalid_iterator())?;
    if bytes.len() <= MAC_BYTES {
        return Err(invalid_iterator());
    }
    let (payload, tag) = bytes.split_at(bytes.len() - MAC_BYTES);
    mac(key, payload)
        .verify_truncated_left(tag)
        .map_err(|_| invalid_iterator())?;
    let text = std::str::from_utf8(payload).map_err(|_| invalid_iterator())?;
    let f: Vec<&str> = text.split('\n').collect();
    let [version, arn, shard, after, issued, horizon] = f.as_slice() else {
        return Err(invalid_iterator());
    };
    if *version != "1" {
        return Err(invalid_iterator());
    }
    let it = ShardIterator {
        stream_arn: (*arn).to_owned(),
        shard_id: (*shard).to_owned(),
        after: after.parse().map_err(|_| invalid_iterator())?,
        issued_ms: issued.parse().map_err(|_| invalid_iterator())?,
        horizon: match *horizon {
            "0" => false,
            "1" => true,
            _ => return Err(invalid_iterator()),
        },
    };
    if now.saturating_sub(it.issued_ms) > ITERATOR_TTL_MS {
        return Err(expired_iterator(it.issued_ms, now));
    }
    Ok(it)
}

/// The key of the store's iterators: 32 random bytes in `stream-iterators.key`
/// beside the store's file, made on first use, so that an iterator outlives a
/// restart of the table server. (If the file cannot be written, a key for this
/// process only.)
fn iterator_key(store: &Store) -> [u8; 32] {
    static KEYS: OnceLock<Mutex<HashMap<PathBuf, [u8; 32]>>> = OnceLock::new();
    let path = store.path().with_file_name("stream-iterators.key");
    let mut keys = KEYS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some(k) = keys.get(&path) {
        return *k;
    }
    let key = load_or_make_key(&path);
    keys.insert(path, key);
    key
}

fn load_or_make_key(path: &std::path::Path) -> [u8; 32] {
    use std::io::{Read, Write};
    let read = |p: &std::path::Path| -> Option<[u8; 32]> {
        std::fs::read(p).ok()?.as_slice().try_into().ok()
    };
    if let Some(k) = read(path) {
        return k;
    }
    let mut key = [0u8; 32];
    let random = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut key));
    if random.is_err() {
        // No /dev/urandom: a key from what differs between processes and times.
        let seed = format!(
            "{}/{}/{:?}",
            path.display(),
            std::process::id(),
            std::time::SystemTime::now()
        );
        key.copy_from_slice(&Sha256::digest(seed.as_bytes()));
    }
    let mut open = std::fs::OpenOptions::new();
    open.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        open.mode(0o600);
    }
    match open.open(path).and_then(|mut f| {
        f.write_all(&key)?;
        f.sync_all()
    }) {
        Ok(()) => key,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => read(path).unwrap_or(key),
        Err(e) => {
            tracing::warn!(
                "cannot keep the stream iterators' key in {}: {e}; iterators given out now will not outlive this process",
                path.display()
            );
            key
        }
    }
}

// --- records ------------------------------------------------------------------

/// A change of the log as a stream record of a table whose StreamViewType is
/// `view`, in `region`'s stream.
pub fn record(region: &str, view: &str, ch: &Change) -> Result<Value, ApiError> {
    let corrupt = |e: crate::value::ValueError| {
        ApiError::internal(format!("change {} holds an invalid item: {}", ch.seq, e.0))
    };
    let mut size = item_size(&item_from_json(&ch.keys).map_err(corrupt)?);
    let mut body = json!({
        "ApproximateCreationDateTime": ch.at_ms.div_euclid(1000),
        "Keys": ch.keys,
        "SequenceNumber": sequence_number(ch.seq),
        "StreamViewType": view,
    });
    let (new, old) = match view {
        "NEW_IMAGE" => (true, false),
        "OLD_IMAGE" => (false, true),
        "NEW_AND_OLD_IMAGES" => (true, true),
        _ => (false, false),
    };
    if new && let Some(n) = &ch.new {
        size += item_size(&item_from_json(n).map_err(corrupt)?);
        body["NewImage"] = n.clone();
    }
    if old && let Some(o) = &ch.old {
        size += item_size(&item_from_json(o).map_err(corrupt)?);
        body["OldImage"] = o.clone();
    }
    body["SizeBytes"] = json!(size.max(1));
    let id = Sha256::digest(format!("{region}/{}", ch.seq).as_bytes());
    let mut lifeboat = json!({
        "origin": ch.version.region,
        "version": ch.version,
    });
    if let Some(c) = &ch.conflict {
        lifeboat["conflict"] = c.clone();
    }
    let mut r = json!({
        "eventID": hex::encode(&id[..16]),
        "eventName": ch.kind,
        "eventVersion": "1.1",
        "eventSource": "aws:dynamodb",
        "awsRegion": region,
        "dynamodb": body,
        "lifeboat": lifeboat,
    });
    if ch.ttl {
        r["userIdentity"] = json!({"Type": "Service", "PrincipalId": "dynamodb.amazonaws.com"});
    }
    Ok(r)
}

/// The byte size a record counts for GetRecords' 1 MB.
fn record_bytes(r: &Value) -> usize {
    r["dynamodb"]["SizeBytes"].as_u64().unwrap_or(1) as usize
}

/// Whether a change's write is from the stream's time on (its version's clock time
/// in ms, against the enabling).
fn in_stream(def: &TableDef, ch: &Change) -> bool {
    let ms = uhlc::NTP64(ch.version.time).as_nanos() / 1_000_000;
    i64::try_from(ms).unwrap_or(i64::MAX) >= stream_since_ms(def)
}

// --- operations -----------------------------------------------------------------

fn list_streams(store: &Arc<Store>, req: &Value) -> Result<Value, ApiError> {
    let table = string_field(req, "TableName")?;
    let start = string_field(req, "ExclusiveStartStreamArn")?;
    let limit = limit(req, 100, 100)?;
    if let Some(t) = table {
        store.table(t)?;
    }
    let mut streams: Vec<(String, Value)> = store
        .table_names()
        .into_iter()
        .filter(|n| table.is_none_or(|t| t == n))
        .filter_map(|n| store.table(&n).ok())
        .filter(|d| d.stream_view.is_some())
        .map(|d| {
            let arn = stream_arn(store, &d);
            let v = json!({"StreamArn": arn, "TableName": d.name, "StreamLabel": stream_label(&d)});
            (arn, v)
        })
        .filter(|(arn, _)| start.is_none_or(|s| arn.as_str() > s))
        .collect();
    streams.sort_by(|a, b| a.0.cmp(&b.0));
    let more = streams.len() > limit;
    streams.truncate(limit);
    let mut out = json!({});
    if more && let Some((arn, _)) = streams.last() {
        out["LastEvaluatedStreamArn"] = json!(arn);
    }
    out["Streams"] = Value::Array(streams.into_iter().map(|(_, v)| v).collect());
    Ok(out)
}

async fn describe_stream(store: &Arc<Store>, req: &Value) -> Result<Value, ApiError> {
    let arn = required(req, "StreamArn")?;
    let _ = limit(req, 100, 100)?;
    let start = string_field(req, "ExclusiveStartShardId")?;
    let def = stream_def(store, arn)?;
    let shard = shard_id(&def);
    // The one shard has no children (it never closes); past it there is none.
    let children_only = match req.get("ShardFilter").filter(|v| !v.is_null()) {
        None => false,
        Some(f) => match string_field(f, "Type")? {
            Some("CHILD_SHARDS") => true,
            other => {
                return Err(ApiError::validation(format!(
                    "ShardFilter Type {other:?}: the one type is CHILD_SHARDS"
                )));
            }
        },
    };
    let mut shards = Vec::new();
    if !children_only && start.is_none_or(|s| s < shard.as_str()) {
        let h = horizon(store, &def, now_ms()).await?;
        shards.push(json!({
            "ShardId": shard,
            "SequenceNumberRange": {"StartingSequenceNumber": sequence_number(h + 1)},
        }));
    }
    let mut schema = vec![json!({"AttributeName": def.hash.name, "KeyType": "HASH"})];
    if let Some(r) = &def.range {
        schema.push(json!({"AttributeName": r.name, "KeyType": "RANGE"}));
    }
    Ok(json!({"StreamDescription": {
        "StreamArn": arn,
        "StreamLabel": stream_label(&def),
        "StreamStatus": "ENABLED",
        "StreamViewType": def.stream_view,
        "CreationRequestDateTime": stream_since_ms(&def) as f64 / 1000.0,
        "TableName": def.name,
        "KeySchema": schema,
        "Shards": shards,
    }}))
}

async fn get_shard_iterator(store: &Arc<Store>, req: &Value) -> Result<Value, ApiError> {
    let arn = required(req, "StreamArn")?;
    let shard = required(req, "ShardId")?;
    let kind = required(req, "ShardIteratorType")?;
    let def = stream_def(store, arn)?;
    check_shard(&def, shard)?;
    let now = now_ms();
    let h = horizon(store, &def, now).await?;
    let latest = *store.latest().borrow();
    let at = |after_of: fn(u64) -> u64| -> Result<u64, ApiError> {
        let n = parse_sequence_number(string_field(req, "SequenceNumber")?.ok_or_else(|| {
            ApiError::validation(format!("ShardIteratorType {kind} needs a SequenceNumber"))
        })?)?;
        if n <= h {
            return Err(trimmed(format!(
                "SequenceNumber {} is older than the stream's oldest record (retention 24 hours, or before the stream was enabled)",
                sequence_number(n)
            )));
        }
        if n > latest {
            return Err(ApiError::validation(format!(
                "SequenceNumber {} is beyond the newest record of the shard",
                sequence_number(n)
            )));
        }
        Ok(after_of(n))
    };
    let (after, from_horizon) = match kind {
        "TRIM_HORIZON" => (h, true),
        "LATEST" => (latest.max(h), false),
        "AT_SEQUENCE_NUMBER" => (at(|n| n - 1)?, false),
        "AFTER_SEQUENCE_NUMBER" => (at(|n| n)?, false),
        other => {
            return Err(ApiError::validation(format!(
                "1 validation error detected: Value '{other}' at 'shardIteratorType' failed to satisfy constraint: Member must satisfy enum value set: [TRIM_HORIZON, LATEST, AT_SEQUENCE_NUMBER, AFTER_SEQUENCE_NUMBER]"
            )));
        }
    };
    let it = ShardIterator {
        stream_arn: arn.to_owned(),
        shard_id: shard.to_owned(),
        after,
        issued_ms: now,
        horizon: from_horizon,
    };
    Ok(json!({"ShardIterator": encode_iterator(&iterator_key(store), &it)}))
}

async fn get_records(store: &Arc<Store>, req: &Value) -> Result<Value, ApiError> {
    let given = required(req, "ShardIterator")?;
    let limit = limit(req, MAX_RECORDS, MAX_RECORDS)?;
    let key = iterator_key(store);
    let now = now_ms();
    let it = decode_iterator(&key, given, now)?;
    let def = stream_def(store, &it.stream_arn)?;
    check_shard(&def, &it.shard_id)?;
    let view = def.stream_view.clone().unwrap_or_default();
    let cutoff = now - RETENTION_MS;
    // Every change up to `latest` is committed, so visible to the reads below.
    let latest = *store.latest().borrow();
    let mut after = it.after;
    let mut records = Vec::new();
    let mut bytes = 0usize;
    let mut scanned = 0usize;
    let mut caught_up = false;
    // Rows are read `limit` at a time, more while they are all skipped.
    let mut batch_size = limit;
    'read: while scanned < SCAN_MAX {
        let batch = store
            .table_changes_since(&def.name, after, batch_size)
            .await?;
        let n = batch.len();
        for ch in batch {
            if ch.at_ms < cutoff {
                if scanned == 0 && !it.horizon {
                    return Err(trimmed(format!(
                        "the iterator's next record ({}) is older than the stream's 24-hour retention: get a new iterator (TRIM_HORIZON)",
                        sequence_number(ch.seq)
                    )));
                }
            } else if in_stream(&def, &ch) {
                let r = record(store.region(), &view, &ch)?;
                let size = record_bytes(&r);
                if !records.is_empty() && bytes + size > PAGE_BYTES {
                    break 'read;
                }
                bytes += size;
                records.push(r);
            }
            scanned += 1;
            after = ch.seq;
            if records.len() >= limit {
                break 'read;
            }
        }
        if n < batch_size {
            caught_up = true;
            break;
        }
        batch_size = (batch_size * 4).min(MAX_RECORDS);
    }
    if caught_up {
        // Nothing more of this table up to `latest`: the next read starts there.
        after = after.max(latest);
    }
    let next = ShardIterator {
        stream_arn: it.stream_arn,
        shard_id: it.shard_id,
        after,
        issued_ms: now,
        horizon: false,
    };
    Ok(json!({
        "Records": records,
        "NextShardIterator": encode_iterator(&key, &next),
    }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::store::{KeyAttr, Version};

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn it() -> ShardIterator {
        ShardIterator {
            stream_arn: "arn:aws:dynamodb:a:000000000000:table/t1/stream/2024-01-02T03:04:05.678"
                .into(),
            shard_id: "shardId-00000001700000000000-0123abcd".into(),
            after: 42,
            issued_ms: 1_700_000_000_000,
            horizon: true,
        }
    }

    #[test]
    fn an_iterator_decodes_to_what_was_encoded_and_is_opaque() {
        let s = encode_iterator(KEY, &it());
        assert!(s.len() < 2048);
        assert!(!s.contains("t1"), "{s}");
        assert_eq!(
            decode_iterator(KEY, &s, it().issued_ms + 1000).unwrap(),
            it()
        );
        let mut other = it();
        other.horizon = false;
        other.after = u64::MAX;
        let s = encode_iterator(KEY, &other);
        assert_eq!(decode_iterator(KEY, &s, other.issued_ms).unwrap(), other);
    }

    #[test]
    fn a_tampered_or_garbage_iterator_is_a_validation_error() {
        let s = encode_iterator(KEY, &it());
        let now = it().issued_ms;
        // Every single changed character is refused.
        for i in 0..s.len() {
            let mut b = s.clone().into_bytes();
            b[i] = if b[i] == b'A' { b'B' } else { b'A' };
            let t = String::from_utf8(b).unwrap();
            if t == s {
                continue;
            }
            let e = decode_iterator(KEY, &t, now).unwrap_err();
            assert_eq!(e.code, "ValidationException", "at {i}");
        }
        for garbage in [
            "",
            "x",
            "!!!!",
            "AAAA",
            &"A".repeat(3000),
            &s[..s.len() - 2],
        ] {
            let e = decode_iterator(KEY, garbage, now).unwrap_err();
            assert_eq!(e.code, "ValidationException", "{garbage:?}");
        }
        // Another key's iterator (another store) is refused too.
        let e = decode_iterator(b"another key", &s, now).unwrap_err();
        assert_eq!(e.code, "ValidationException");
        // A well-signed payload that is not an iterator.
        let tag = mac(KEY, b"hello").finalize().into_bytes();
        let mut b = b"hello".to_vec();
        b.extend_from_slice(&tag[..MAC_BYTES]);
        let forged = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let e = decode_iterator(KEY, &forged, now).unwrap_err();
        assert_eq!(e.code, "ValidationException");
    }

    #[test]
    fn an_iterator_expires_after_15_minutes() {
        let s = encode_iterator(KEY, &it());
        let issued = it().issued_ms;
        assert!(decode_iterator(KEY, &s, issued + ITERATOR_TTL_MS).is_ok());
        let e = decode_iterator(KEY, &s, issued + ITERATOR_TTL_MS + 1).unwrap_err();
        assert_eq!(e.code, "ExpiredIteratorException");
        assert_eq!(
            e.body()["__type"],
            "com.amazonaws.dynamodb.v20120810#ExpiredIteratorException"
        );
    }

    #[test]
    fn sequence_numbers_are_21_digits_that_sort_as_numbers() {
        assert_eq!(sequence_number(1), "000000000000000000001");
        assert_eq!(sequence_number(u64::MAX).len(), 21);
        let seqs = [0u64, 1, 9, 10, 99, 100, 123_456_789, u64::MAX];
        for w in seqs.windows(2) {
            assert!(sequence_number(w[0]) < sequence_number(w[1]));
        }
        for s in seqs {
            assert_eq!(parse_sequence_number(&sequence_number(s)).unwrap(), s);
        }
        assert_eq!(parse_sequence_number("42").unwrap(), 42);
        for bad in ["", "-1", "1.5", "12a", &"9".repeat(41), &"9".repeat(30)] {
            assert_eq!(
                parse_sequence_number(bad).unwrap_err().code,
                "ValidationException",
                "{bad:?}"
            );
        }
    }

    fn def() -> TableDef {
        TableDef {
            name: "t1".into(),
            hash: KeyAttr {
                name: "id".into(),
                ty: "S".into(),
            },
            range: None,
            created_ms: 1_700_000_000_123,
            ttl_attribute: None,
            stream_view: Some("NEW_AND_OLD_IMAGES".into()),
            stream_enabled_ms: None,
            id: "0123abcd-4567-89ef-0123-456789abcdef".into(),
        }
    }

    #[test]
    fn the_shard_id_is_stable_and_as_long_as_dynamodbs() {
        let d = def();
        assert_eq!(shard_id(&d), "shardId-00000001700000000123-0123abcd");
        assert_eq!(shard_id(&d), shard_id(&d.clone()));
        assert!((28..=65).contains(&shard_id(&d).len()));
        let mut later = d.clone();
        later.stream_enabled_ms = Some(1_800_000_000_000);
        assert_ne!(shard_id(&later), shard_id(&d));
    }

    fn change(kind: &str, old: Option<Value>, new: Option<Value>) -> Change {
        Change {
            seq: 7,
            table: "t1".into(),
            kind: kind.into(),
            keys: json!({"id": {"S": "k"}}),
            old,
            new,
            version: Version {
                time: 123,
                region: "b".into(),
            },
            vv: Default::default(),
            at_ms: 1_700_000_001_999,
            ttl: false,
            conflict: None,
        }
    }

    #[test]
    fn records_carry_the_images_their_view_type_says() {
        let old = json!({"id": {"S": "k"}, "v": {"N": "1"}});
        let new = json!({"id": {"S": "k"}, "v": {"N": "2"}});
        let ch = change("MODIFY", Some(old.clone()), Some(new.clone()));
        let cases = [
            ("KEYS_ONLY", false, false),
            ("NEW_IMAGE", true, false),
            ("OLD_IMAGE", false, true),
            ("NEW_AND_OLD_IMAGES", true, true),
        ];
        let mut sizes = Vec::new();
        for (view, has_new, has_old) in cases {
            let r = record("a", view, &ch).unwrap();
            let d = &r["dynamodb"];
            assert_eq!(d["Keys"], json!({"id": {"S": "k"}}), "{view}");
            assert_eq!(d.get("NewImage").is_some(), has_new, "{view}");
            assert_eq!(d.get("OldImage").is_some(), has_old, "{view}");
            if has_new {
                assert_eq!(d["NewImage"], new);
            }
            if has_old {
                assert_eq!(d["OldImage"], old);
            }
            assert_eq!(d["StreamViewType"], view);
            assert_eq!(d["SequenceNumber"], "000000000000000000007");
            assert_eq!(d["ApproximateCreationDateTime"], 1_700_000_001);
            sizes.push(d["SizeBytes"].as_u64().unwrap());
            assert_eq!(r["eventName"], "MODIFY");
            assert_eq!(r["eventVersion"], "1.1");
            assert_eq!(r["eventSource"], "aws:dynamodb");
            assert_eq!(r["awsRegion"], "a");
            assert_eq!(r["eventID"].as_str().unwrap().len(), 32);
            assert_eq!(r["lifeboat"]["origin"], "b");
            assert_eq!(
                r["lifeboat"]["version"],
                json!({"time": 123, "region": "b"})
            );
            assert!(r["lifeboat"].get("conflict").is_none());
            assert!(r.get("userIdentity").is_none());
        }
        // Keys only < one image < both.
        assert!(sizes[0] >= 1 && sizes[0] < sizes[1] && sizes[1] < sizes[3]);
        // An insert has no old image, a remove no new one, whatever the view.
        let ins = record(
            "a",
            "NEW_AND_OLD_IMAGES",
            &change("INSERT", None, Some(new)),
        )
        .unwrap();
        assert!(ins["dynamodb"].get("OldImage").is_none());
        let rm = record(
            "a",
            "NEW_AND_OLD_IMAGES",
            &change("REMOVE", Some(old), None),
        )
        .unwrap();
        assert!(rm["dynamodb"].get("NewImage").is_none());
        assert!(rm["dynamodb"].get("OldImage").is_some());
        // Another region's record of the same seq is another event.
        assert_ne!(
            record("a", "KEYS_ONLY", &ch).unwrap()["eventID"],
            record("b", "KEYS_ONLY", &ch).unwrap()["eventID"]
        );
    }

    #[test]
    fn ttl_deletes_name_the_service_and_conflicts_are_carried() {
        let mut ch = change("REMOVE", Some(json!({"id": {"S": "k"}})), None);
        ch.ttl = true;
        ch.conflict =
            Some(json!({"item": {"id": {"S": "k"}}, "version": {"time": 5, "region": "a"}}));
        let r = record("a", "KEYS_ONLY", &ch).unwrap();
        assert_eq!(
            r["userIdentity"],
            json!({"Type": "Service", "PrincipalId": "dynamodb.amazonaws.com"})
        );
        assert_eq!(r["lifeboat"]["conflict"]["version"]["region"], "a");
    }

    #[test]
    fn a_write_is_in_the_stream_from_its_enabling_on() {
        let mut d = def();
        d.stream_enabled_ms = Some(1_700_000_000_000);
        let ntp = |ms: u64| uhlc::NTP64::from(std::time::Duration::from_millis(ms)).as_u64();
        let mut ch = change("INSERT", None, Some(json!({"id": {"S": "k"}})));
        ch.version.time = ntp(1_700_000_000_000);
        assert!(in_stream(&d, &ch));
        ch.version.time = ntp(1_699_999_999_999);
        assert!(!in_stream(&d, &ch));
    }

    #[test]
    fn the_retention_search_finds_the_last_older_row() {
        let c = rusqlite::Connection::open_in_memory().unwrap();
        c.execute_batch(
            "CREATE TABLE changes (seq INTEGER PRIMARY KEY AUTOINCREMENT, at_ms INTEGER NOT NULL);",
        )
        .unwrap();
        assert_eq!(last_seq_before(&c, 100).unwrap(), 0);
        // seqs 1..=50 at 10, 20, …, 500, with gaps after 20.
        for i in 1..=50i64 {
            let seq = if i > 20 { i + 5 } else { i };
            c.execute(
                "INSERT INTO changes (seq, at_ms) VALUES (?1, ?2)",
                [seq, i * 10],
            )
            .unwrap();
        }
        assert_eq!(last_seq_before(&c, 0).unwrap(), 0);
        assert_eq!(last_seq_before(&c, 11).unwrap(), 1);
        assert_eq!(last_seq_before(&c, 200).unwrap(), 19);
        assert_eq!(
            last_seq_before(&c, 201).unwrap(),
            20,
            "21..=25 do not exist"
        );
        assert_eq!(last_seq_before(&c, 215).unwrap(), 26);
        assert_eq!(last_seq_before(&c, 220).unwrap(), 26);
        assert_eq!(last_seq_before(&c, 221).unwrap(), 27);
        assert_eq!(last_seq_before(&c, 10_000).unwrap(), 55);
    }
}
