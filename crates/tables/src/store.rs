//! A region's tables on disk: SQLite (bundled), WAL, `synchronous = FULL`
//! (docs/tables.md, "Storage").
//!
//! - One writer thread owns the only writing connection. Writes queue to it; it takes
//!   every write waiting (up to [`GROUP`]), applies them in order in one transaction,
//!   commits (one fsync of the WAL for the group) and only then answers each. So an
//!   acknowledged write is on disk: a kill -9 or a power loss after the answer
//!   loses nothing. Each write runs in a savepoint: one that fails (a condition, a
//!   validation) leaves the others of its group untouched.
//! - Reads use a small pool of read-only connections (WAL readers never wait for the
//!   writer) and see every acknowledged write.
//! - Every item keeps its version: the hybrid logical clock time of its last write
//!   and the region that made it (last writer wins on (time, region)), and a version
//!   vector (each region's latest write to it) that tells a concurrent write from a
//!   later one. A delete leaves a tombstone (no item, a version) for replication.
//! - A tombstone is collected (deleted, not replicated) once every region is known
//!   to have applied it and it is older than the grace period
//!   ([`Store::collect_tombstones`]).
//! - Every change (insert, modify, remove) is appended to `changes` in the same
//!   transaction: the source of replication and of the stream.

use crate::error::ApiError;
use crate::expr::{Condition, Update};
use crate::value::{
    AttributeValue, Item, MAX_HASH_KEY_BYTES, MAX_ITEM_BYTES, MAX_RANGE_KEY_BYTES, ValueType,
    item_from_json, item_size, item_to_json, key_bytes,
};
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use tokio::sync::oneshot;

/// The most writes committed together.
pub const GROUP: usize = 512;
/// Read connections.
const READERS: usize = 4;
/// The most bytes of items one Query or Scan page reads (DynamoDB's 1 MB).
pub const PAGE_BYTES: usize = 1024 * 1024;
/// How long a tombstone is kept at least, by its version's time, even once every
/// region has applied it (docs/tables.md, "Replication").
pub const TOMBSTONE_GRACE: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyAttr {
    pub name: String,
    /// S, N or B.
    #[serde(rename = "type")]
    pub ty: String,
}

impl KeyAttr {
    pub fn value_type(&self) -> ValueType {
        ValueType::parse(&self.ty).unwrap_or(ValueType::S)
    }
}

/// A table's definition, as CreateTable gave it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableDef {
    pub name: String,
    pub hash: KeyAttr,
    pub range: Option<KeyAttr>,
    pub created_ms: i64,
    /// UpdateTimeToLive's attribute, when enabled.
    #[serde(default)]
    pub ttl_attribute: Option<String>,
    /// StreamSpecification's view type, when streams are enabled.
    #[serde(default)]
    pub stream_view: Option<String>,
    /// When UpdateTable last enabled the stream (ms since the epoch; None: enabled
    /// at creation, `created_ms`). The stream serves changes made from then on.
    #[serde(default)]
    pub stream_enabled_ms: Option<i64>,
    /// Stable across regions: the table's identity (TableId).
    pub id: String,
}

/// A key's stored form: the hash and range values' order-preserving bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyBytes {
    pub hk: Vec<u8>,
    pub rk: Vec<u8>,
}

impl TableDef {
    pub fn key_names(&self) -> Vec<&str> {
        let mut v = vec![self.hash.name.as_str()];
        if let Some(r) = &self.range {
            v.push(r.name.as_str());
        }
        v
    }

    /// The key attributes of `item` (a whole item or just a key), checked against the
    /// schema, and their stored bytes. `exact`: `item` must be a key and nothing else
    /// (GetItem, DeleteItem, UpdateItem).
    pub fn key_of(&self, item: &Item, exact: bool) -> Result<(Item, KeyBytes), ApiError> {
        let mismatch =
            || ApiError::validation("The provided key element does not match the schema");
        if exact && item.len() != self.key_names().len() {
            return Err(mismatch());
        }
        let mut key = Item::new();
        let mut part = |attr: &KeyAttr, max: usize| -> Result<Vec<u8>, ApiError> {
            let Some(v) = item.get(&attr.name) else {
                return Err(if exact {
                    mismatch()
                } else {
                    ApiError::validation(format!(
                        "One or more parameter values were invalid: Missing the key {} in the item",
                        attr.name
                    ))
                });
            };
            if v.value_type() != attr.value_type() {
                return Err(if exact {
                    mismatch()
                } else {
                    ApiError::validation(format!(
                        "One or more parameter values were invalid: Type mismatch for key {} expected: {} actual: {}",
                        attr.name,
                        attr.ty,
                        v.value_type()
                    ))
                });
            }
            let b = key_bytes(v).ok_or_else(mismatch)?;
            if b.is_empty() {
                return Err(ApiError::validation(format!(
                    "One or more parameter values are not valid. The AttributeValue for a key attribute cannot contain an empty {} value. Key: {}",
                    if attr.ty == "B" { "binary" } else { "string" },
                    attr.name
                )));
            }
            let len = match v {
                AttributeValue::S(s) => s.len(),
                AttributeValue::B(b) => b.len(),
                _ => 0,
            };
            if len > max {
                return Err(ApiError::validation(format!(
                    "One or more parameter values were invalid: Size of {} key exceeded the maximum allowed size of {max} bytes",
                    if max == MAX_HASH_KEY_BYTES {
                        "hashkey"
                    } else {
                        "rangekey"
                    }
                )));
            }
            key.insert(attr.name.clone(), v.clone());
            Ok(b)
        };
        let hk = part(&self.hash, MAX_HASH_KEY_BYTES)?;
        let rk = match &self.range {
            Some(r) => part(r, MAX_RANGE_KEY_BYTES)?,
            None => Vec::new(),
        };
        Ok((key, KeyBytes { hk, rk }))
    }

    /// The TTL expiry (epoch seconds) of `item`, if the table has TTL on and the
    /// item's TTL attribute is a number.
    fn expires(&self, item: &Item) -> Option<i64> {
        let attr = self.ttl_attribute.as_ref()?;
        match item.get(attr)? {
            AttributeValue::N(n) => n.to_i64().or_else(|| {
                // A fractional epoch: its whole seconds.
                n.to_string().split('.').next().and_then(|s| s.parse().ok())
            }),
            _ => None,
        }
    }
}

/// A write's version: its hybrid-logical-clock time and the region that made it.
/// Later (time, then region) wins.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Version {
    pub time: u64,
    pub region: String,
}

/// Each region's latest write to an item (its version time).
pub type VersionVector = BTreeMap<String, u64>;

/// Where a stored item's segment (Scan's Segment / TotalSegments) comes from: a
/// 32-bit FNV-1a of its hash key bytes.
pub fn segment_hash(hk: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in hk {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// What a write does to its item.
#[derive(Debug, Clone)]
pub enum Action {
    Put(Item),
    Delete,
    /// UpdateItem: the expression, if any (none: the item is created with its key).
    Update(Option<Arc<Update>>),
}

#[derive(Debug, Clone)]
pub struct ItemWrite {
    pub table: String,
    /// The key attributes (checked by [`TableDef::key_of`]).
    pub key: Item,
    pub action: Action,
    pub condition: Option<Arc<Condition>>,
    /// Return the old item with a failed condition (ReturnValuesOnConditionCheckFailure).
    pub old_on_failure: bool,
}

/// A write's item before and after (None: absent).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Written {
    pub old: Option<Item>,
    pub new: Option<Item>,
}

/// One entry of the change log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    pub seq: u64,
    pub table: String,
    /// INSERT, MODIFY or REMOVE.
    pub kind: String,
    pub keys: serde_json::Value,
    pub old: Option<serde_json::Value>,
    pub new: Option<serde_json::Value>,
    pub version: Version,
    pub vv: VersionVector,
    pub at_ms: i64,
    /// Deleted by TTL expiry (the stream's userIdentity names the service).
    pub ttl: bool,
    /// A replicated change that overwrote a concurrent write of this region: the
    /// losing version (`{"item": …, "version": …}`), also in the conflicts list.
    #[serde(default)]
    pub conflict: Option<serde_json::Value>,
}

/// A write that lost to a concurrent one (last writer wins), recorded by the region
/// that made it: both versions, both regions, both times.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Conflict {
    pub id: u64,
    pub table: String,
    pub keys: serde_json::Value,
    /// The losing item (None: a delete lost).
    pub loser: Option<serde_json::Value>,
    pub loser_version: Version,
    /// The winning item (None: a delete won).
    pub winner: Option<serde_json::Value>,
    pub winner_version: Version,
    /// When this region found it (ms since the epoch).
    pub at_ms: i64,
}

/// Tombstones of a region, for status and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tombstones {
    /// Held now.
    pub held: u64,
    /// Collected since the store was created.
    pub collected: u64,
    /// The grace period (seconds).
    pub grace_s: u64,
    /// For each region, the seq of its log up to which every region is known to
    /// have applied its changes (a tombstone of it at or before is collectable).
    pub applied_everywhere: BTreeMap<String, u64>,
}

/// What applying a batch of a peer's changes did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// Changes that changed an item here (or a table).
    pub applied: usize,
    /// Changes already here (a redelivery, or one this region's item has seen).
    pub duplicates: usize,
    /// Changes that lost to a concurrent later write here.
    pub lost: usize,
    /// Conflicts recorded here (a write of this region lost).
    pub conflicts: usize,
    /// The cursor now stored for the peer.
    pub cursor: u64,
    /// Set when a change was not applied for want of its table (created in a region
    /// this one has not heard from yet): the batch stopped there, to be retried.
    pub waiting_for_table: Option<String>,
}

enum Op {
    CreateTable(TableDef),
    DeleteTable(String),
    SetTtl {
        table: String,
        attribute: Option<String>,
    },
    /// UpdateTable's StreamSpecification: the view type (None: disabled).
    SetStream {
        table: String,
        view: Option<String>,
    },
    Write(Vec<ItemWrite>),
    ExpireTtl {
        now_s: i64,
        limit: usize,
    },
    ApplyRemote {
        peer: String,
        changes: Vec<Change>,
        /// The peer's cursor after these (its last change's seq, or further when
        /// the peer had nothing more of its own).
        upto: u64,
    },
    /// A peer's report, sent with its pull: its cursor for each origin, and its
    /// own newest change's seq.
    PeerApplied {
        peer: String,
        own: u64,
        applied: BTreeMap<String, u64>,
    },
    /// Delete up to `limit` tombstones every region has applied (of the regions
    /// `peers` and this one) whose version is at or before `cutoff` (NTP64).
    CollectTombstones {
        peers: Vec<String>,
        cutoff: u64,
        limit: usize,
    },
}

enum Outcome {
    Table(TableDef),
    Written(Vec<Written>),
    Expired(usize),
    Applied(Applied),
    Noted,
    Collected(usize),
}

struct Job {
    op: Op,
    reply: oneshot::Sender<Result<Outcome, ApiError>>,
}

/// A region's table store.
pub struct Store {
    region: String,
    path: PathBuf,
    jobs: std::sync::mpsc::Sender<Job>,
    tables: Arc<RwLock<BTreeMap<String, TableDef>>>,
    readers: Vec<Mutex<Connection>>,
    next_reader: AtomicUsize,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// The newest change's seq, published after each commit.
    latest: tokio::sync::watch::Sender<u64>,
    /// [`TOMBSTONE_GRACE`] unless set ([`Store::set_tombstone_grace`]), in ms.
    tombstone_grace_ms: AtomicU64,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("region", &self.region)
            .field("path", &self.path)
            .finish()
    }
}

fn sql(e: rusqlite::Error) -> ApiError {
    ApiError::internal(format!("the table store: {e}"))
}

fn open_conn(path: &Path) -> rusqlite::Result<Connection> {
    let c = Connection::open(path)?;
    c.busy_timeout(std::time::Duration::from_secs(10))?;
    c.pragma_update(None, "journal_mode", "WAL")?;
    c.pragma_update(None, "synchronous", "FULL")?;
    Ok(c)
}

/// `items.oseq`: the seq of the row's version in its origin's (`vregion`'s) log.
/// `peer_cursors`: how far each peer has applied each origin's log, as it said in
/// a report this region has confirmed; `peer_reports`: a peer's report waiting for
/// this region to have applied the peer's own changes up to `own` (see
/// [`Store::peer_applied`]). `tombstones_collected`: how many were, and the newest
/// version among them (the clock never starts behind it).
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS tables (name TEXT PRIMARY KEY, def TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (
  tbl TEXT NOT NULL, seg INTEGER NOT NULL, hk BLOB NOT NULL, rk BLOB NOT NULL,
  item TEXT,
  vtime TEXT NOT NULL, vregion TEXT NOT NULL, vv TEXT NOT NULL,
  expires INTEGER, size INTEGER NOT NULL,
  oseq INTEGER,
  PRIMARY KEY (tbl, seg, hk, rk)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS items_expires ON items (tbl, expires) WHERE expires IS NOT NULL;
CREATE INDEX IF NOT EXISTS items_tombstones ON items (vregion, oseq) WHERE item IS NULL;
CREATE TABLE IF NOT EXISTS changes (
  seq INTEGER PRIMARY KEY AUTOINCREMENT, tbl TEXT NOT NULL, kind TEXT NOT NULL,
  keys TEXT NOT NULL, old TEXT, new TEXT,
  vtime TEXT NOT NULL, vregion TEXT NOT NULL, vv TEXT NOT NULL,
  at_ms INTEGER NOT NULL, ttl INTEGER NOT NULL DEFAULT 0, conflict TEXT);
CREATE INDEX IF NOT EXISTS changes_origin ON changes (vregion, seq);
CREATE INDEX IF NOT EXISTS changes_tbl ON changes (tbl, seq);
CREATE TABLE IF NOT EXISTS cursors (peer TEXT PRIMARY KEY, seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS peer_cursors (
  peer TEXT NOT NULL, origin TEXT NOT NULL, seq INTEGER NOT NULL,
  PRIMARY KEY (peer, origin)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS peer_reports (
  peer TEXT PRIMARY KEY, own INTEGER NOT NULL, cursors TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tombstones_collected (
  id INTEGER PRIMARY KEY CHECK (id = 1), n INTEGER NOT NULL, newest TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS conflicts (
  id INTEGER PRIMARY KEY AUTOINCREMENT, tbl TEXT NOT NULL, keys TEXT NOT NULL,
  loser TEXT, loser_vtime TEXT NOT NULL, loser_region TEXT NOT NULL,
  winner TEXT, winner_vtime TEXT NOT NULL, winner_region TEXT NOT NULL,
  at_ms INTEGER NOT NULL);
";

/// A version time as stored: 16 hex digits (sorts as the number does).
fn vtime_text(t: u64) -> String {
    format!("{t:016x}")
}

fn vtime_parse(s: &str) -> u64 {
    u64::from_str_radix(s, 16).unwrap_or(0)
}

impl Store {
    /// Open (or create) `dir/tables.db` for `region` and start its writer.
    pub fn open(dir: &Path, region: &str) -> anyhow::Result<Arc<Store>> {
        use anyhow::Context;
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the table store's directory {}", dir.display()))?;
        let path = dir.join("tables.db");
        let conn = open_conn(&path).with_context(|| format!("opening {}", path.display()))?;
        conn.execute_batch(SCHEMA)
            .with_context(|| format!("creating the schema of {}", path.display()))?;
        let mut tables = BTreeMap::new();
        {
            let mut st = conn.prepare("SELECT name, def FROM tables")?;
            let rows =
                st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
            for row in rows {
                let (name, def) = row?;
                let def: TableDef = serde_json::from_str(&def).with_context(|| {
                    format!("{}: the definition of table {name}", path.display())
                })?;
                tables.insert(name, def);
            }
        }
        // The clock never goes back past what is stored: a restart with a clock
        // stepped back still writes later versions than the ones it overwrites
        // (and `write_one` takes the item's version + 1 at least), nor past a
        // collected tombstone's (a new write of its key has no row to outdo).
        let latest: Option<String> = conn
            .query_row(
                "SELECT max(v) FROM (SELECT max(vtime) AS v FROM items UNION ALL SELECT newest FROM tombstones_collected)",
                [],
                |r| r.get(0),
            )
            .optional()?
            .flatten();
        let hlc = uhlc::HLCBuilder::new()
            .with_id(hlc_id(region))
            .with_max_delta(std::time::Duration::from_secs(3600))
            .build();
        if let Some(t) = latest {
            let ts = uhlc::Timestamp::new(uhlc::NTP64(vtime_parse(&t)), hlc_id("stored"));
            if let Err(e) = hlc.update_with_timestamp(&ts) {
                tracing::warn!("the table store's newest version is far ahead of this clock: {e}");
            }
        }
        let newest: i64 = conn.query_row("SELECT coalesce(max(seq), 0) FROM changes", [], |r| {
            r.get(0)
        })?;
        let latest = tokio::sync::watch::Sender::new(newest.max(0) as u64);
        let tables = Arc::new(RwLock::new(tables));
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let mut readers = Vec::new();
        for _ in 0..READERS {
            let c = open_conn(&path).with_context(|| format!("opening {}", path.display()))?;
            c.pragma_update(None, "query_only", "ON")?;
            readers.push(Mutex::new(c));
        }
        let w = Writer {
            conn,
            region: region.to_owned(),
            hlc,
            tables: tables.clone(),
            latest: latest.clone(),
        };
        let writer = std::thread::Builder::new()
            .name(format!("tables-writer-{region}"))
            .spawn(move || w.run(rx))
            .context("starting the table store's writer")?;
        Ok(Arc::new(Store {
            region: region.to_owned(),
            path,
            jobs: tx,
            tables,
            readers,
            next_reader: AtomicUsize::new(0),
            writer: Mutex::new(Some(writer)),
            latest,
            tombstone_grace_ms: AtomicU64::new(
                u64::try_from(TOMBSTONE_GRACE.as_millis()).unwrap_or(u64::MAX),
            ),
        }))
    }

    pub fn region(&self) -> &str {
        &self.region
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn submit(&self, op: Op) -> Result<Outcome, ApiError> {
        let (reply, rx) = oneshot::channel();
        self.jobs
            .send(Job { op, reply })
            .map_err(|_| ApiError::internal("the table store's writer has stopped"))?;
        rx.await
            .map_err(|_| ApiError::internal("the table store's writer stopped before answering"))?
    }

    pub fn table(&self, name: &str) -> Result<TableDef, ApiError> {
        self.tables
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
            .ok_or_else(|| ApiError::no_table(name))
    }

    pub fn table_names(&self) -> Vec<String> {
        self.tables
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect()
    }

    pub async fn create_table(&self, def: TableDef) -> Result<TableDef, ApiError> {
        match self.submit(Op::CreateTable(def)).await? {
            Outcome::Table(t) => Ok(t),
            _ => Err(ApiError::internal("unexpected answer from the writer")),
        }
    }

    pub async fn delete_table(&self, name: &str) -> Result<TableDef, ApiError> {
        match self.submit(Op::DeleteTable(name.to_owned())).await? {
            Outcome::Table(t) => Ok(t),
            _ => Err(ApiError::internal("unexpected answer from the writer")),
        }
    }

    pub async fn set_ttl(
        &self,
        table: &str,
        attribute: Option<String>,
    ) -> Result<TableDef, ApiError> {
        match self
            .submit(Op::SetTtl {
                table: table.to_owned(),
                attribute,
            })
            .await?
        {
            Outcome::Table(t) => Ok(t),
            _ => Err(ApiError::internal("unexpected answer from the writer")),
        }
    }

    /// Enable the table's stream with view type `view`, or disable it (None);
    /// replicated as an UPDATE_TABLE change, as [`Store::set_ttl`] is.
    pub async fn set_stream(
        &self,
        table: &str,
        view: Option<String>,
    ) -> Result<TableDef, ApiError> {
        match self
            .submit(Op::SetStream {
                table: table.to_owned(),
                view,
            })
            .await?
        {
            Outcome::Table(t) => Ok(t),
            _ => Err(ApiError::internal("unexpected answer from the writer")),
        }
    }

    /// Apply `writes` in order, in one transaction: all or (the first error) none.
    pub async fn write(&self, writes: Vec<ItemWrite>) -> Result<Vec<Written>, ApiError> {
        match self.submit(Op::Write(writes)).await? {
            Outcome::Written(w) => Ok(w),
            _ => Err(ApiError::internal("unexpected answer from the writer")),
        }
    }

    /// Delete up to `limit` items whose TTL attribute is before `now_s`.
    pub async fn expire_ttl(&self, now_s: i64, limit: usize) -> Result<usize, ApiError> {
        match self.submit(Op::ExpireTtl { now_s, limit }).await? {
            Outcome::Expired(n) => Ok(n),
            _ => Err(ApiError::internal("unexpected answer from the writer")),
        }
    }

    /// Run `f` on a read connection, off the async runtime.
    pub async fn read<T, F>(self: &Arc<Self>, f: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, ApiError> + Send + 'static,
    {
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            let i = me.next_reader.fetch_add(1, Ordering::Relaxed) % me.readers.len().max(1);
            let Some(m) = me.readers.get(i) else {
                return Err(ApiError::internal("no read connection"));
            };
            let c = m.lock().unwrap_or_else(|p| p.into_inner());
            f(&c)
        })
        .await
        .map_err(|e| ApiError::internal(format!("a read panicked: {e}")))?
    }

    pub async fn get(
        self: &Arc<Self>,
        table: &str,
        key: KeyBytes,
    ) -> Result<Option<Item>, ApiError> {
        let table = table.to_owned();
        self.read(move |c| {
            let seg = segment_hash(&key.hk);
            let item: Option<Option<String>> = c
                .query_row(
                    "SELECT item FROM items WHERE tbl = ?1 AND seg = ?2 AND hk = ?3 AND rk = ?4",
                    params![table, seg, key.hk, key.rk],
                    |r| r.get(0),
                )
                .optional()
                .map_err(sql)?;
            item.flatten().map(|s| parse_item(&s)).transpose()
        })
        .await
    }

    /// Items of one hash key whose range key bytes lie in `range`, in range key order
    /// (descending if `!forward`), at most `limit` rows and about [`PAGE_BYTES`].
    /// Returns the items and whether it stopped early (more may follow the last).
    pub async fn query(
        self: &Arc<Self>,
        table: &str,
        hk: Vec<u8>,
        range: RangeBytes,
        forward: bool,
        limit: usize,
    ) -> Result<(Vec<Item>, bool), ApiError> {
        let table = table.to_owned();
        self.read(move |c| {
            let seg = segment_hash(&hk);
            let mut q = String::from(
                "SELECT item, size FROM items WHERE tbl = ?1 AND seg = ?2 AND hk = ?3 AND item IS NOT NULL",
            );
            let mut args: Vec<rusqlite::types::Value> = vec![
                table.into(),
                i64::from(seg).into(),
                hk.into(),
            ];
            for (op, b) in range.clauses() {
                args.push(b.into());
                q.push_str(&format!(" AND rk {op} ?{}", args.len()));
            }
            q.push_str(if forward { " ORDER BY rk ASC" } else { " ORDER BY rk DESC" });
            q.push_str(&format!(" LIMIT {}", limit.saturating_add(1)));
            page(c, &q, args, limit)
        })
        .await
    }

    /// Items of the segments `segs` (of 2^32 hash values), after `after` (seg, hk,
    /// rk) if given, in stored order; at most `limit` and about [`PAGE_BYTES`].
    pub async fn scan(
        self: &Arc<Self>,
        table: &str,
        segs: (u64, u64),
        after: Option<(u32, KeyBytes)>,
        limit: usize,
    ) -> Result<(Vec<Item>, bool), ApiError> {
        let table = table.to_owned();
        self.read(move |c| {
            let mut q = String::from(
                "SELECT item, size FROM items WHERE tbl = ?1 AND seg >= ?2 AND seg < ?3 AND item IS NOT NULL",
            );
            let mut args: Vec<rusqlite::types::Value> = vec![
                table.into(),
                i64::try_from(segs.0).unwrap_or(i64::MAX).into(),
                i64::try_from(segs.1).unwrap_or(i64::MAX).into(),
            ];
            if let Some((seg, k)) = after {
                args.push(i64::from(seg).into());
                args.push(k.hk.into());
                args.push(k.rk.into());
                q.push_str(" AND (seg, hk, rk) > (?4, ?5, ?6)");
            }
            q.push_str(&format!(" ORDER BY seg, hk, rk LIMIT {}", limit.saturating_add(1)));
            page(c, &q, args, limit)
        })
        .await
    }

    /// Item count and bytes of a table (DescribeTable).
    pub async fn table_size(self: &Arc<Self>, table: &str) -> Result<(u64, u64), ApiError> {
        let table = table.to_owned();
        self.read(move |c| {
            c.query_row(
                "SELECT count(*), coalesce(sum(size), 0) FROM items WHERE tbl = ?1 AND item IS NOT NULL",
                params![table],
                |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)),
            )
            .map(|(n, b)| (n.max(0) as u64, b.max(0) as u64))
            .map_err(sql)
        })
        .await
    }

    /// Changes after `seq`, oldest first, at most `limit` (every change applied
    /// here, this region's and the replicated ones: the stream's view).
    pub async fn changes_since(
        self: &Arc<Self>,
        seq: u64,
        limit: usize,
    ) -> Result<Vec<Change>, ApiError> {
        self.read(move |c| read_changes(c, seq, limit, None)).await
    }

    /// The item changes (INSERT, MODIFY, REMOVE) of `table` after `after_seq`,
    /// oldest first, at most `limit` (the table's stream; index `changes_tbl`).
    pub async fn table_changes_since(
        self: &Arc<Self>,
        table: &str,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<Change>, ApiError> {
        let table = table.to_owned();
        self.read(move |c| read_changes_of(c, after_seq, limit, None, Some(table)))
            .await
    }

    /// This region's own changes after `seq` (what its peers pull), at most `limit`.
    pub async fn own_changes_since(
        self: &Arc<Self>,
        seq: u64,
        limit: usize,
    ) -> Result<Vec<Change>, ApiError> {
        let me = self.region.clone();
        self.read(move |c| read_changes(c, seq, limit, Some(me)))
            .await
    }

    /// How many of this region's own changes follow `after`.
    pub async fn own_pending(self: &Arc<Self>, after: u64) -> Result<u64, ApiError> {
        let me = self.region.clone();
        self.read(move |c| {
            c.query_row(
                "SELECT count(*) FROM changes WHERE vregion = ?1 AND seq > ?2",
                params![me, i64::try_from(after).unwrap_or(i64::MAX)],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n.max(0) as u64)
            .map_err(sql)
        })
        .await
    }

    /// The newest change's seq (0: none), and a receiver told of every new one.
    pub fn latest(&self) -> tokio::sync::watch::Receiver<u64> {
        self.latest.subscribe()
    }

    /// Where replication from `peer` stands: the seq of the last of its changes
    /// applied here.
    pub async fn cursor(self: &Arc<Self>, peer: &str) -> Result<u64, ApiError> {
        let peer = peer.to_owned();
        self.read(move |c| {
            let v: Option<i64> = c
                .query_row(
                    "SELECT seq FROM cursors WHERE peer = ?1",
                    params![peer],
                    |r| r.get(0),
                )
                .optional()
                .map_err(sql)?;
            Ok(v.unwrap_or(0).max(0) as u64)
        })
        .await
    }

    /// Apply changes pulled from `peer` and store its cursor, in one transaction.
    pub async fn apply_remote(
        &self,
        peer: &str,
        changes: Vec<Change>,
        upto: u64,
    ) -> Result<Applied, ApiError> {
        match self
            .submit(Op::ApplyRemote {
                peer: peer.to_owned(),
                changes,
                upto,
            })
            .await?
        {
            Outcome::Applied(a) => Ok(a),
            _ => Err(ApiError::internal("unexpected answer from the writer")),
        }
    }

    /// What this region tells each peer it pulls from (the pull's `cursors`): its
    /// cursor for every peer and, under its own name, its own newest change's seq.
    pub async fn applied_report(self: &Arc<Self>) -> Result<BTreeMap<String, u64>, ApiError> {
        let me = self.region.clone();
        self.read(move |c| {
            // One statement, one snapshot: the own seq is at least that of every own
            // change made before the cursors were stored.
            let mut st = c
                .prepare_cached(
                    "SELECT peer, seq FROM cursors WHERE peer <> ?1
                     UNION ALL SELECT ?1, coalesce(max(seq), 0) FROM changes WHERE vregion = ?1",
                )
                .map_err(sql)?;
            let rows = st
                .query_map(params![me], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
                })
                .map_err(sql)?;
            let mut out = BTreeMap::new();
            for row in rows {
                let (region, seq) = row.map_err(sql)?;
                out.insert(region, seq.max(0) as u64);
            }
            Ok(out)
        })
        .await
    }

    /// Note what `peer` said with its pull: how far it has applied each region's
    /// log (`applied`) and its own newest change's seq (`own`). It is taken as known
    /// only once this region has applied the peer's own changes up to `own`: then
    /// every write the peer made before applying what it reports is here too, so a
    /// write of it concurrent with a delete, still on its way here, holds the
    /// delete's tombstone back. Until then the report waits, and later reports of
    /// the peer are dropped (they would wait longer).
    pub async fn peer_applied(
        &self,
        peer: &str,
        own: u64,
        applied: BTreeMap<String, u64>,
    ) -> Result<(), ApiError> {
        match self
            .submit(Op::PeerApplied {
                peer: peer.to_owned(),
                own,
                applied,
            })
            .await?
        {
            Outcome::Noted => Ok(()),
            _ => Err(ApiError::internal("unexpected answer from the writer")),
        }
    }

    /// Keep tombstones at least `grace` by their version's time (default
    /// [`TOMBSTONE_GRACE`]).
    pub fn set_tombstone_grace(&self, grace: std::time::Duration) {
        self.tombstone_grace_ms.store(
            u64::try_from(grace.as_millis()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    pub fn tombstone_grace(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.tombstone_grace_ms.load(Ordering::Relaxed))
    }

    /// Delete up to `limit` tombstones that every region (this one and `peers`) is
    /// known to have applied — the delete or a later version of the item — and whose
    /// version is older than the grace period. Local housekeeping: no change record,
    /// nothing replicated. Returns how many were deleted.
    pub async fn collect_tombstones(
        &self,
        peers: &[String],
        limit: usize,
    ) -> Result<usize, ApiError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let cutoff = uhlc::NTP64::from(now.saturating_sub(self.tombstone_grace())).as_u64();
        match self
            .submit(Op::CollectTombstones {
                peers: peers.to_vec(),
                cutoff,
                limit,
            })
            .await?
        {
            Outcome::Collected(n) => Ok(n),
            _ => Err(ApiError::internal("unexpected answer from the writer")),
        }
    }

    /// Tombstones held and collected here, and what every region has applied.
    pub async fn tombstones(self: &Arc<Self>, peers: &[String]) -> Result<Tombstones, ApiError> {
        let me = self.region.clone();
        let peers = peers.to_vec();
        let grace_s = self.tombstone_grace().as_secs();
        self.read(move |c| {
            let held: i64 = c
                .query_row("SELECT count(*) FROM items WHERE item IS NULL", [], |r| {
                    r.get(0)
                })
                .map_err(sql)?;
            let collected: Option<i64> = c
                .query_row("SELECT n FROM tombstones_collected WHERE id = 1", [], |r| {
                    r.get(0)
                })
                .optional()
                .map_err(sql)?;
            Ok(Tombstones {
                held: held.max(0) as u64,
                collected: collected.unwrap_or(0).max(0) as u64,
                grace_s,
                applied_everywhere: applied_everywhere(c, &me, &peers)?,
            })
        })
        .await
    }

    /// Conflicts recorded here (this region's writes that lost), oldest first,
    /// after id `after`, of `table` or all.
    pub async fn conflicts(
        self: &Arc<Self>,
        table: Option<String>,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Conflict>, ApiError> {
        self.read(move |c| {
            let mut st = c
                .prepare_cached(
                    "SELECT id, tbl, keys, loser, loser_vtime, loser_region, winner, winner_vtime, winner_region, at_ms FROM conflicts
                     WHERE id > ?1 AND (?2 IS NULL OR tbl = ?2) ORDER BY id LIMIT ?3",
                )
                .map_err(sql)?;
            let rows = st
                .query_map(
                    params![
                        i64::try_from(after).unwrap_or(i64::MAX),
                        table,
                        i64::try_from(limit).unwrap_or(i64::MAX)
                    ],
                    |r| {
                        Ok((
                            r.get::<_, i64>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, String>(2)?,
                            r.get::<_, Option<String>>(3)?,
                            r.get::<_, String>(4)?,
                            r.get::<_, String>(5)?,
                            r.get::<_, Option<String>>(6)?,
                            r.get::<_, String>(7)?,
                            r.get::<_, String>(8)?,
                            r.get::<_, i64>(9)?,
                        ))
                    },
                )
                .map_err(sql)?;
            let mut out = Vec::new();
            for row in rows {
                let (id, table, keys, loser, lt, lr, winner, wt, wr, at_ms) = row.map_err(sql)?;
                out.push(Conflict {
                    id: id.max(0) as u64,
                    table,
                    keys: json_text(&keys)?,
                    loser: loser.as_deref().map(json_text).transpose()?,
                    loser_version: Version {
                        time: vtime_parse(&lt),
                        region: lr,
                    },
                    winner: winner.as_deref().map(json_text).transpose()?,
                    winner_version: Version {
                        time: vtime_parse(&wt),
                        region: wr,
                    },
                    at_ms,
                });
            }
            Ok(out)
        })
        .await
    }

    /// How many item changes this region's log holds, per region that made them
    /// (each change applied once: a peer's count here equals the peer's own).
    pub async fn changes_by_origin(self: &Arc<Self>) -> Result<BTreeMap<String, u64>, ApiError> {
        self.read(|c| {
            counts(
                c,
                "SELECT vregion, count(*) FROM changes WHERE kind IN ('INSERT', 'MODIFY', 'REMOVE') GROUP BY vregion",
            )
        })
        .await
    }

    /// How many stream records each table has within the streams' retention (its
    /// item changes, this region's and the replicated ones, since `since_ms`). A scan
    /// of the log's rows since then.
    pub async fn stream_sizes(
        self: &Arc<Self>,
        since_ms: i64,
    ) -> Result<BTreeMap<String, u64>, ApiError> {
        self.read(move |c| {
            let mut st = c
                .prepare_cached(
                    "SELECT tbl, count(*) FROM changes WHERE kind IN ('INSERT', 'MODIFY', 'REMOVE') AND at_ms >= ?1 GROUP BY tbl",
                )
                .map_err(sql)?;
            let rows = st
                .query_map(params![since_ms], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
                .map_err(sql)?;
            let mut out = BTreeMap::new();
            for row in rows {
                let (name, n) = row.map_err(sql)?;
                out.insert(name, n.max(0) as u64);
            }
            Ok(out)
        })
        .await
    }

    /// How many conflicts are recorded here, per table.
    pub async fn conflict_counts(self: &Arc<Self>) -> Result<BTreeMap<String, u64>, ApiError> {
        self.read(|c| counts(c, "SELECT tbl, count(*) FROM conflicts GROUP BY tbl"))
            .await
    }

    /// Stop the writer after what is queued (called on shutdown; dropping the store
    /// does the same).
    pub fn close(&self) {
        let handle = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        // The writer ends when every sender is gone; ours goes with the store, so
        // here only wait if it is already ending.
        if let Some(h) = handle
            && h.is_finished()
        {
            let _ = h.join();
        }
    }
}

/// Bounds on range key bytes (each `(operator, bytes)`).
#[derive(Debug, Clone, Default)]
pub struct RangeBytes {
    pub lower: Option<(Vec<u8>, bool)>,
    pub upper: Option<(Vec<u8>, bool)>,
}

impl RangeBytes {
    fn clauses(&self) -> Vec<(&'static str, Vec<u8>)> {
        let mut v = Vec::new();
        if let Some((b, inclusive)) = &self.lower {
            v.push((if *inclusive { ">=" } else { ">" }, b.clone()));
        }
        if let Some((b, inclusive)) = &self.upper {
            v.push((if *inclusive { "<=" } else { "<" }, b.clone()));
        }
        v
    }

    /// Narrow to after (forward) or before (backward) an exclusive start key.
    pub fn after(mut self, start: Vec<u8>, forward: bool) -> RangeBytes {
        if forward {
            let tighter = match &self.lower {
                Some((b, _)) => start >= *b,
                None => true,
            };
            if tighter {
                self.lower = Some((start, false));
            }
        } else {
            let tighter = match &self.upper {
                Some((b, _)) => start <= *b,
                None => true,
            };
            if tighter {
                self.upper = Some((start, false));
            }
        }
        self
    }
}

fn parse_item(s: &str) -> Result<Item, ApiError> {
    let v: serde_json::Value = serde_json::from_str(s)
        .map_err(|e| ApiError::internal(format!("a stored item is not JSON: {e}")))?;
    item_from_json(&v).map_err(|e| ApiError::internal(format!("a stored item: {e}")))
}

fn page(
    c: &Connection,
    q: &str,
    args: Vec<rusqlite::types::Value>,
    limit: usize,
) -> Result<(Vec<Item>, bool), ApiError> {
    let mut st = c.prepare(q).map_err(sql)?;
    let mut rows = st.query(rusqlite::params_from_iter(args)).map_err(sql)?;
    let mut out = Vec::new();
    let mut bytes = 0usize;
    while let Some(r) = rows.next().map_err(sql)? {
        if out.len() >= limit || bytes >= PAGE_BYTES {
            return Ok((out, true));
        }
        let s: String = r.get(0).map_err(sql)?;
        let size: i64 = r.get(1).map_err(sql)?;
        bytes += size.max(0) as usize;
        out.push(parse_item(&s)?);
    }
    Ok((out, false))
}

fn hlc_id(region: &str) -> uhlc::ID {
    use sha2::Digest;
    let d = sha2::Sha256::digest(region.as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    b[0] |= 1;
    uhlc::ID::try_from(b).unwrap_or_else(|_| uhlc::ID::rand())
}

struct Writer {
    conn: Connection,
    region: String,
    hlc: uhlc::HLC,
    tables: Arc<RwLock<BTreeMap<String, TableDef>>>,
    latest: tokio::sync::watch::Sender<u64>,
}

/// The item row as stored.
struct Current {
    item: Option<Item>,
    version: Version,
    vv: VersionVector,
    /// The version's seq in its origin's log (None: not known, never collected).
    oseq: Option<u64>,
}

impl Writer {
    fn run(mut self, rx: std::sync::mpsc::Receiver<Job>) {
        while let Ok(first) = rx.recv() {
            let mut group = vec![first];
            while group.len() < GROUP {
                match rx.try_recv() {
                    Ok(j) => group.push(j),
                    Err(_) => break,
                }
            }
            self.commit_group(group);
        }
    }

    fn commit_group(&mut self, group: Vec<Job>) {
        let mut results = Vec::with_capacity(group.len());
        let mut table_changes = Vec::new();
        let outcome = (|| -> Result<(), rusqlite::Error> {
            let tx = self.conn.transaction()?;
            for job in &group {
                // A savepoint per job: a failing job rolls back alone.
                tx.execute_batch("SAVEPOINT job")?;
                let before = table_changes.len();
                let r = apply(
                    &tx,
                    &self.hlc,
                    &self.region,
                    &self.tables,
                    &job.op,
                    &mut table_changes,
                );
                if r.is_err() {
                    tx.execute_batch("ROLLBACK TO job; RELEASE job")?;
                    table_changes.truncate(before);
                } else {
                    tx.execute_batch("RELEASE job")?;
                }
                results.push(r);
            }
            tx.commit()
        })();
        match outcome {
            Ok(()) => {
                {
                    let mut t = self.tables.write().unwrap_or_else(|p| p.into_inner());
                    for c in table_changes {
                        match c {
                            TableChange::Put(def) => {
                                t.insert(def.name.clone(), def);
                            }
                            TableChange::Remove(name) => {
                                t.remove(&name);
                            }
                        }
                    }
                }
                match self
                    .conn
                    .query_row("SELECT coalesce(max(seq), 0) FROM changes", [], |r| {
                        r.get::<_, i64>(0)
                    }) {
                    Ok(n) => {
                        self.latest.send_if_modified(|cur| {
                            let n = n.max(0) as u64;
                            let changed = *cur != n;
                            *cur = n;
                            changed
                        });
                    }
                    Err(e) => tracing::warn!("reading the newest change: {e}"),
                }
                for (job, r) in group.into_iter().zip(results) {
                    let _ = job.reply.send(r);
                }
            }
            Err(e) => {
                tracing::error!("the table store could not commit: {e}");
                for job in group {
                    let _ = job.reply.send(Err(ApiError::internal(format!(
                        "the table store could not commit: {e}"
                    ))));
                }
            }
        }
    }
}

enum TableChange {
    Put(TableDef),
    Remove(String),
}

fn apply(
    tx: &rusqlite::Transaction<'_>,
    hlc: &uhlc::HLC,
    region: &str,
    tables: &RwLock<BTreeMap<String, TableDef>>,
    op: &Op,
    changes: &mut Vec<TableChange>,
) -> Result<Outcome, ApiError> {
    match op {
        Op::CreateTable(def) => {
            if lookup_def(tables, changes, &def.name).is_some() {
                return Err(ApiError::in_use(format!(
                    "Table already exists: {}",
                    def.name
                )));
            }
            put_def(tx, def)?;
            append_table_change(tx, hlc, region, "CREATE_TABLE", def)?;
            changes.push(TableChange::Put(def.clone()));
            Ok(Outcome::Table(def.clone()))
        }
        Op::DeleteTable(name) => {
            let def = lookup_def(tables, changes, name).ok_or_else(|| ApiError::no_table(name))?;
            tx.execute("DELETE FROM tables WHERE name = ?1", params![name])
                .map_err(sql)?;
            tx.execute("DELETE FROM items WHERE tbl = ?1", params![name])
                .map_err(sql)?;
            append_table_change(tx, hlc, region, "DELETE_TABLE", &def)?;
            changes.push(TableChange::Remove(name.clone()));
            Ok(Outcome::Table(def))
        }
        Op::SetTtl { table, attribute } => {
            let mut def =
                lookup_def(tables, changes, table).ok_or_else(|| ApiError::no_table(table))?;
            match (&def.ttl_attribute, attribute) {
                (Some(_), Some(_)) => {
                    return Err(ApiError::validation("TimeToLive is already enabled"));
                }
                (None, None) => {
                    return Err(ApiError::validation("TimeToLive is already disabled"));
                }
                _ => {}
            }
            def.ttl_attribute = attribute.clone();
            put_def(tx, &def)?;
            // Existing items' expiry follows the new attribute.
            recompute_expiry(tx, &def)?;
            append_table_change(tx, hlc, region, "UPDATE_TABLE", &def)?;
            changes.push(TableChange::Put(def.clone()));
            Ok(Outcome::Table(def))
        }
        Op::SetStream { table, view } => {
            let mut def =
                lookup_def(tables, changes, table).ok_or_else(|| ApiError::no_table(table))?;
            match (&def.stream_view, view) {
                (Some(_), Some(_)) => {
                    return Err(ApiError::validation(format!(
                        "Table already has an enabled stream: TableName: {table}"
                    )));
                }
                (None, None) => {
                    return Err(ApiError::validation(format!(
                        "Table does not have an enabled stream: TableName: {table}"
                    )));
                }
                _ => {}
            }
            def.stream_view = view.clone();
            if view.is_some() {
                // The clock's time (later than every write seen here so far), in ms:
                // the stream serves the writes whose version is from then on.
                let ms = hlc.new_timestamp().get_time().as_nanos() / 1_000_000;
                def.stream_enabled_ms = Some(i64::try_from(ms).unwrap_or(i64::MAX));
            }
            put_def(tx, &def)?;
            append_table_change(tx, hlc, region, "UPDATE_TABLE", &def)?;
            changes.push(TableChange::Put(def.clone()));
            Ok(Outcome::Table(def))
        }
        Op::Write(writes) => {
            let mut out = Vec::with_capacity(writes.len());
            for w in writes {
                let def = lookup_def(tables, changes, &w.table)
                    .ok_or_else(|| ApiError::no_table(&w.table))?;
                out.push(write_one(tx, hlc, region, &def, w, false)?);
            }
            Ok(Outcome::Written(out))
        }
        Op::ExpireTtl { now_s, limit } => {
            let mut n = 0;
            let defs: Vec<TableDef> = tables
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .values()
                .filter(|d| d.ttl_attribute.is_some())
                .cloned()
                .collect();
            for def in defs {
                let keys: Vec<String> = {
                    let mut st = tx
                        .prepare_cached(
                            "SELECT item FROM items WHERE tbl = ?1 AND expires IS NOT NULL AND expires < ?2 AND item IS NOT NULL LIMIT ?3",
                        )
                        .map_err(sql)?;
                    let rows = st
                        .query_map(
                            params![def.name, now_s, i64::try_from(*limit - n).unwrap_or(0)],
                            |r| r.get::<_, String>(0),
                        )
                        .map_err(sql)?;
                    rows.collect::<Result<_, _>>().map_err(sql)?
                };
                for s in keys {
                    let item = parse_item(&s)?;
                    let (key, _) = def.key_of(&item, false)?;
                    let w = ItemWrite {
                        table: def.name.clone(),
                        key,
                        action: Action::Delete,
                        condition: None,
                        old_on_failure: false,
                    };
                    write_one(tx, hlc, region, &def, &w, true)?;
                    n += 1;
                }
                if n >= *limit {
                    break;
                }
            }
            Ok(Outcome::Expired(n))
        }
        Op::PeerApplied { peer, own, applied } => {
            confirm_report(tx, peer)?;
            let waiting: i64 = tx
                .prepare_cached("SELECT count(*) FROM peer_reports WHERE peer = ?1")
                .map_err(sql)?
                .query_row(params![peer], |r| r.get(0))
                .map_err(sql)?;
            if waiting == 0 {
                if stored_cursor(tx, peer)? >= *own {
                    know(tx, peer, applied)?;
                } else {
                    let json = serde_json::to_string(applied)
                        .map_err(|e| ApiError::internal(e.to_string()))?;
                    tx.prepare_cached(
                        "INSERT INTO peer_reports (peer, own, cursors) VALUES (?1, ?2, ?3)",
                    )
                    .map_err(sql)?
                    .execute(params![peer, i64::try_from(*own).unwrap_or(i64::MAX), json])
                    .map_err(sql)?;
                }
            }
            Ok(Outcome::Noted)
        }
        Op::CollectTombstones {
            peers,
            cutoff,
            limit,
        } => {
            for p in peers {
                confirm_report(tx, p)?;
            }
            let cutoff = vtime_text(*cutoff);
            let mut n = 0usize;
            let mut newest: Option<String> = None;
            for (origin, upto) in applied_everywhere(tx, region, peers)? {
                if upto == 0 || n >= *limit {
                    continue;
                }
                let rows: Vec<TombstoneRow> = {
                    let mut st = tx
                        .prepare_cached(
                            "SELECT tbl, seg, hk, rk, vtime FROM items
                             WHERE item IS NULL AND vregion = ?1 AND oseq <= ?2 AND vtime <= ?3 LIMIT ?4",
                        )
                        .map_err(sql)?;
                    let rows = st
                        .query_map(
                            params![
                                origin,
                                i64::try_from(upto).unwrap_or(i64::MAX),
                                cutoff,
                                i64::try_from(*limit - n).unwrap_or(i64::MAX)
                            ],
                            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
                        )
                        .map_err(sql)?;
                    rows.collect::<Result<_, _>>().map_err(sql)?
                };
                for (tbl, seg, hk, rk, vtime) in rows {
                    n += tx
                        .prepare_cached(
                            "DELETE FROM items WHERE tbl = ?1 AND seg = ?2 AND hk = ?3 AND rk = ?4 AND item IS NULL",
                        )
                        .map_err(sql)?
                        .execute(params![tbl, seg, hk, rk])
                        .map_err(sql)?;
                    if newest.as_ref().is_none_or(|t| vtime > *t) {
                        newest = Some(vtime);
                    }
                }
            }
            if let Some(newest) = newest {
                tx.prepare_cached(
                    "INSERT INTO tombstones_collected (id, n, newest) VALUES (1, ?1, ?2)
                     ON CONFLICT (id) DO UPDATE SET n = n + excluded.n, newest = max(newest, excluded.newest)",
                )
                .map_err(sql)?
                .execute(params![i64::try_from(n).unwrap_or(i64::MAX), newest])
                .map_err(sql)?;
            }
            Ok(Outcome::Collected(n))
        }
        Op::ApplyRemote {
            peer,
            changes: remote,
            upto,
        } => {
            let mut a = Applied::default();
            let mut cursor = None;
            for ch in remote {
                let ts =
                    uhlc::Timestamp::new(uhlc::NTP64(ch.version.time), hlc_id(&ch.version.region));
                if let Err(e) = hlc.update_with_timestamp(&ts) {
                    tracing::warn!("a change from {peer} is far ahead of this clock: {e}");
                }
                if TABLE_KINDS.contains(&ch.kind.as_str()) {
                    let def: TableDef = ch
                        .new
                        .as_ref()
                        .map(|d| serde_json::from_value(d.clone()))
                        .transpose()
                        .map_err(|e| {
                            ApiError::internal(format!("a table change from {peer}: {e}"))
                        })?
                        .ok_or_else(|| {
                            ApiError::internal(format!(
                                "a table change from {peer} has no definition"
                            ))
                        })?;
                    let here = lookup_def(tables, changes, &def.name);
                    match (ch.kind.as_str(), here) {
                        ("CREATE_TABLE", None) | ("UPDATE_TABLE", _) => {
                            put_def(tx, &def)?;
                            if ch.kind == "UPDATE_TABLE" {
                                recompute_expiry(tx, &def)?;
                            }
                            changes.push(TableChange::Put(def));
                            a.applied += 1;
                        }
                        ("CREATE_TABLE", Some(local)) => {
                            if local.hash != def.hash || local.range != def.range {
                                tracing::error!(
                                    table = %def.name,
                                    "table {} was created in region {} with another key schema than here: this region keeps its own; its items from there will be refused",
                                    def.name,
                                    ch.version.region
                                );
                            }
                            a.duplicates += 1;
                        }
                        ("DELETE_TABLE", Some(_)) => {
                            tx.execute("DELETE FROM tables WHERE name = ?1", params![def.name])
                                .map_err(sql)?;
                            tx.execute("DELETE FROM items WHERE tbl = ?1", params![def.name])
                                .map_err(sql)?;
                            changes.push(TableChange::Remove(def.name.clone()));
                            a.applied += 1;
                        }
                        _ => a.duplicates += 1,
                    }
                    cursor = Some(ch.seq);
                    continue;
                }
                let Some(def) = lookup_def(tables, changes, &ch.table) else {
                    a.waiting_for_table = Some(ch.table.clone());
                    break;
                };
                match apply_remote_item(tx, region, &def, ch)? {
                    RemoteItem::Applied { conflict } => {
                        a.applied += 1;
                        a.conflicts += usize::from(conflict);
                    }
                    RemoteItem::Duplicate => a.duplicates += 1,
                    RemoteItem::Lost => a.lost += 1,
                }
                cursor = Some(ch.seq);
            }
            let cursor = match (&a.waiting_for_table, cursor) {
                (None, _) => *upto,
                (Some(_), Some(c)) => c,
                (Some(_), None) => {
                    let v: Option<i64> = tx
                        .query_row(
                            "SELECT seq FROM cursors WHERE peer = ?1",
                            params![peer],
                            |r| r.get(0),
                        )
                        .optional()
                        .map_err(sql)?;
                    v.unwrap_or(0).max(0) as u64
                }
            };
            tx.prepare_cached(
                "INSERT INTO cursors (peer, seq) VALUES (?1, ?2) ON CONFLICT (peer) DO UPDATE SET seq = max(seq, excluded.seq)",
            )
            .map_err(sql)?
            .execute(params![peer, i64::try_from(cursor).unwrap_or(i64::MAX)])
            .map_err(sql)?;
            a.cursor = cursor;
            Ok(Outcome::Applied(a))
        }
    }
}

/// A table's definition as of this group (an earlier job of it may have changed it).
fn lookup_def(
    tables: &RwLock<BTreeMap<String, TableDef>>,
    changes: &[TableChange],
    name: &str,
) -> Option<TableDef> {
    for c in changes.iter().rev() {
        match c {
            TableChange::Put(d) if d.name == name => return Some(d.clone()),
            TableChange::Remove(n) if n == name => return None,
            _ => {}
        }
    }
    tables
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .get(name)
        .cloned()
}

fn put_def(tx: &rusqlite::Transaction<'_>, def: &TableDef) -> Result<(), ApiError> {
    let json = serde_json::to_string(def).map_err(|e| ApiError::internal(e.to_string()))?;
    tx.execute(
        "INSERT INTO tables (name, def) VALUES (?1, ?2) ON CONFLICT (name) DO UPDATE SET def = excluded.def",
        params![def.name, json],
    )
    .map_err(sql)?;
    Ok(())
}

fn recompute_expiry(tx: &rusqlite::Transaction<'_>, def: &TableDef) -> Result<(), ApiError> {
    let rows: Vec<(i64, Vec<u8>, Vec<u8>, String)> = {
        let mut st = tx
            .prepare("SELECT seg, hk, rk, item FROM items WHERE tbl = ?1 AND item IS NOT NULL")
            .map_err(sql)?;
        let rows = st
            .query_map(params![def.name], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })
            .map_err(sql)?;
        rows.collect::<Result<_, _>>().map_err(sql)?
    };
    for (seg, hk, rk, item) in rows {
        let exp = def.expires(&parse_item(&item)?);
        tx.execute(
            "UPDATE items SET expires = ?5 WHERE tbl = ?1 AND seg = ?2 AND hk = ?3 AND rk = ?4",
            params![def.name, seg, hk, rk, exp],
        )
        .map_err(sql)?;
    }
    Ok(())
}

/// item, vtime, vregion, vv, oseq.
type ItemRow = (Option<String>, String, String, String, Option<i64>);
/// A tombstone's key (tbl, seg, hk, rk) and vtime.
type TombstoneRow = (String, i64, Vec<u8>, Vec<u8>, String);

fn current(
    tx: &rusqlite::Transaction<'_>,
    table: &str,
    seg: u32,
    key: &KeyBytes,
) -> Result<Option<Current>, ApiError> {
    let row: Option<ItemRow> = tx
        .prepare_cached(
            "SELECT item, vtime, vregion, vv, oseq FROM items WHERE tbl = ?1 AND seg = ?2 AND hk = ?3 AND rk = ?4",
        )
        .map_err(sql)?
        .query_row(params![table, seg, key.hk, key.rk], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .optional()
        .map_err(sql)?;
    let Some((item, vtime, vregion, vv, oseq)) = row else {
        return Ok(None);
    };
    Ok(Some(Current {
        item: item.as_deref().map(parse_item).transpose()?,
        version: Version {
            time: vtime_parse(&vtime),
            region: vregion,
        },
        vv: serde_json::from_str(&vv)
            .map_err(|e| ApiError::internal(format!("a stored version vector: {e}")))?,
        oseq: oseq.map(|s| s.max(0) as u64),
    }))
}

/// One item write: its condition against the current item, the new item, its
/// version (later than the one it replaces), the row and the change.
fn write_one(
    tx: &rusqlite::Transaction<'_>,
    hlc: &uhlc::HLC,
    region: &str,
    def: &TableDef,
    w: &ItemWrite,
    ttl: bool,
) -> Result<Written, ApiError> {
    let (key, kb) = def.key_of(&w.key, true)?;
    let seg = segment_hash(&kb.hk);
    let cur = current(tx, &def.name, seg, &kb)?;
    let old = cur.as_ref().and_then(|c| c.item.clone());
    if let Some(cond) = &w.condition {
        let empty = Item::new();
        if !cond.eval(old.as_ref().unwrap_or(&empty))? {
            return Err(ApiError::conditional_check_failed(if w.old_on_failure {
                old
            } else {
                None
            }));
        }
    }
    let new = match &w.action {
        Action::Put(item) => Some(item.clone()),
        Action::Delete => None,
        Action::Update(u) => {
            let mut n = old.clone().unwrap_or_else(|| key.clone());
            if let Some(u) = u {
                u.apply(&mut n)?;
            }
            Some(n)
        }
    };
    if let Some(n) = &new {
        if item_size(n) > MAX_ITEM_BYTES {
            return Err(ApiError::item_too_large());
        }
        let (k2, _) = def.key_of(n, false)?;
        if k2 != key {
            return Err(ApiError::validation(
                "One or more parameter values were invalid: the key attributes of an item cannot change",
            ));
        }
    }
    if old == new {
        // Nothing changes (a delete of nothing, a put of the same item): no new
        // version and no change record, as DynamoDB writes no stream record.
        return Ok(Written { old, new });
    }
    let mut time = hlc.new_timestamp().get_time().as_u64();
    if let Some(c) = &cur {
        time = time.max(c.version.time.saturating_add(1));
    }
    let version = Version {
        time,
        region: region.to_owned(),
    };
    let mut vv = cur.map(|c| c.vv).unwrap_or_default();
    vv.insert(region.to_owned(), time);
    let seq = append_change(
        tx,
        &def.name,
        &key,
        old.as_ref(),
        new.as_ref(),
        &version,
        &vv,
        ttl,
        None,
    )?;
    put_row(tx, def, seg, &kb, new.as_ref(), &version, &vv, seq)?;
    Ok(Written { old, new })
}

/// Store an item's row: the item (None: a tombstone), its version and vector, and
/// `oseq`, the version's seq in its origin's log.
#[allow(clippy::too_many_arguments)]
fn put_row(
    tx: &rusqlite::Transaction<'_>,
    def: &TableDef,
    seg: u32,
    kb: &KeyBytes,
    item: Option<&Item>,
    version: &Version,
    vv: &VersionVector,
    oseq: u64,
) -> Result<(), ApiError> {
    let vv_json = serde_json::to_string(vv).map_err(|e| ApiError::internal(e.to_string()))?;
    let json = item.map(|n| item_to_json(n).to_string());
    let size = item.map_or(0, item_size);
    let expires = item.and_then(|n| def.expires(n));
    tx.prepare_cached(
        "INSERT INTO items (tbl, seg, hk, rk, item, vtime, vregion, vv, expires, size, oseq) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
         ON CONFLICT (tbl, seg, hk, rk) DO UPDATE SET item = excluded.item, vtime = excluded.vtime, vregion = excluded.vregion, vv = excluded.vv, expires = excluded.expires, size = excluded.size, oseq = excluded.oseq",
    )
    .map_err(sql)?
    .execute(params![
        def.name,
        seg,
        kb.hk,
        kb.rk,
        json,
        vtime_text(version.time),
        version.region,
        vv_json,
        expires,
        i64::try_from(size).unwrap_or(i64::MAX),
        i64::try_from(oseq).unwrap_or(i64::MAX)
    ])
    .map_err(sql)?;
    Ok(())
}

/// Append a change of an item (`old` → `new`) to the log and return its seq.
/// `conflict`: the local version this (replicated) change overwrote concurrently.
#[allow(clippy::too_many_arguments)]
fn append_change(
    tx: &rusqlite::Transaction<'_>,
    table: &str,
    key: &Item,
    old: Option<&Item>,
    new: Option<&Item>,
    version: &Version,
    vv: &VersionVector,
    ttl: bool,
    conflict: Option<&serde_json::Value>,
) -> Result<u64, ApiError> {
    let kind = match (old, new) {
        (None, Some(_)) => "INSERT",
        (Some(_), Some(_)) => "MODIFY",
        _ => "REMOVE",
    };
    let vv_json = serde_json::to_string(vv).map_err(|e| ApiError::internal(e.to_string()))?;
    tx.prepare_cached(
        "INSERT INTO changes (tbl, kind, keys, old, new, vtime, vregion, vv, at_ms, ttl, conflict) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    )
    .map_err(sql)?
    .execute(params![
        table,
        kind,
        item_to_json(key).to_string(),
        old.map(|o| item_to_json(o).to_string()),
        new.map(|n| item_to_json(n).to_string()),
        vtime_text(version.time),
        version.region,
        vv_json,
        now_ms(),
        i64::from(ttl),
        conflict.map(|c| c.to_string()),
    ])
    .map_err(sql)?;
    // The change's seq: its rowid (AUTOINCREMENT).
    Ok(tx.last_insert_rowid().max(0) as u64)
}

/// A `SELECT name, count(*) … GROUP BY name` as a map.
fn counts(c: &Connection, q: &str) -> Result<BTreeMap<String, u64>, ApiError> {
    let mut st = c.prepare_cached(q).map_err(sql)?;
    let rows = st
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
        .map_err(sql)?;
    let mut out = BTreeMap::new();
    for row in rows {
        let (name, n) = row.map_err(sql)?;
        out.insert(name, n.max(0) as u64);
    }
    Ok(out)
}

fn json_text(s: &str) -> Result<serde_json::Value, ApiError> {
    serde_json::from_str(s).map_err(|e| ApiError::internal(format!("stored JSON: {e}")))
}

fn read_changes(
    c: &Connection,
    seq: u64,
    limit: usize,
    origin: Option<String>,
) -> Result<Vec<Change>, ApiError> {
    read_changes_of(c, seq, limit, origin, None)
}

/// [`read_changes`], or with `table`: only that table's item changes (by the
/// `changes_tbl` index).
fn read_changes_of(
    c: &Connection,
    seq: u64,
    limit: usize,
    origin: Option<String>,
    table: Option<String>,
) -> Result<Vec<Change>, ApiError> {
    let mut st = c
        .prepare_cached(if table.is_some() {
            "SELECT seq, tbl, kind, keys, old, new, vtime, vregion, vv, at_ms, ttl, conflict FROM changes
             WHERE tbl = ?4 AND seq > ?1 AND kind IN ('INSERT', 'MODIFY', 'REMOVE')
             AND (?3 IS NULL OR vregion = ?3) ORDER BY seq LIMIT ?2"
        } else {
            "SELECT seq, tbl, kind, keys, old, new, vtime, vregion, vv, at_ms, ttl, conflict FROM changes
             WHERE seq > ?1 AND (?3 IS NULL OR vregion = ?3) AND ?4 IS NULL ORDER BY seq LIMIT ?2"
        })
        .map_err(sql)?;
    let rows = st
        .query_map(
            params![
                i64::try_from(seq).unwrap_or(i64::MAX),
                i64::try_from(limit).unwrap_or(i64::MAX),
                origin,
                table
            ],
            |r| {
                Ok((
                    (
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, Option<String>>(4)?,
                        r.get::<_, Option<String>>(5)?,
                    ),
                    (
                        r.get::<_, String>(6)?,
                        r.get::<_, String>(7)?,
                        r.get::<_, String>(8)?,
                        r.get::<_, i64>(9)?,
                        r.get::<_, i64>(10)?,
                        r.get::<_, Option<String>>(11)?,
                    ),
                ))
            },
        )
        .map_err(sql)?;
    let mut out = Vec::new();
    for row in rows {
        let ((seq, table, kind, keys, old, new), (vtime, vregion, vv, at_ms, ttl, conflict)) =
            row.map_err(sql)?;
        out.push(Change {
            seq: seq.max(0) as u64,
            table,
            kind,
            keys: json_text(&keys)?,
            old: old.as_deref().map(json_text).transpose()?,
            new: new.as_deref().map(json_text).transpose()?,
            version: Version {
                time: vtime_parse(&vtime),
                region: vregion,
            },
            vv: serde_json::from_str(&vv)
                .map_err(|e| ApiError::internal(format!("a stored version vector: {e}")))?,
            at_ms,
            ttl: ttl != 0,
            conflict: conflict.as_deref().map(json_text).transpose()?,
        });
    }
    Ok(out)
}

/// `a ≤ b`: every write `a` has seen, `b` has seen too.
fn seen_by(a: &VersionVector, b: &VersionVector) -> bool {
    a.iter().all(|(r, t)| b.get(r).is_some_and(|bt| bt >= t))
}

fn merged(a: &VersionVector, b: &VersionVector) -> VersionVector {
    let mut m = a.clone();
    for (r, t) in b {
        let e = m.entry(r.clone()).or_insert(*t);
        *e = (*e).max(*t);
    }
    m
}

fn version_json(item: Option<&Item>, v: &Version) -> serde_json::Value {
    serde_json::json!({
        "item": item.map(item_to_json),
        "version": v,
    })
}

/// This region's cursor for `peer`: the last of the peer's changes applied here.
fn stored_cursor(c: &Connection, peer: &str) -> Result<u64, ApiError> {
    let v: Option<i64> = c
        .prepare_cached("SELECT seq FROM cursors WHERE peer = ?1")
        .map_err(sql)?
        .query_row(params![peer], |r| r.get(0))
        .optional()
        .map_err(sql)?;
    Ok(v.unwrap_or(0).max(0) as u64)
}

/// How far `peer` is known (a confirmed report) to have applied `origin`'s log.
fn known_applied(c: &Connection, peer: &str, origin: &str) -> Result<u64, ApiError> {
    let v: Option<i64> = c
        .prepare_cached("SELECT seq FROM peer_cursors WHERE peer = ?1 AND origin = ?2")
        .map_err(sql)?
        .query_row(params![peer, origin], |r| r.get(0))
        .optional()
        .map_err(sql)?;
    Ok(v.unwrap_or(0).max(0) as u64)
}

/// Take what `peer` reported as known (each cursor only ever grows).
fn know(c: &Connection, peer: &str, applied: &BTreeMap<String, u64>) -> Result<(), ApiError> {
    let mut st = c
        .prepare_cached(
            "INSERT INTO peer_cursors (peer, origin, seq) VALUES (?1, ?2, ?3)
             ON CONFLICT (peer, origin) DO UPDATE SET seq = excluded.seq WHERE excluded.seq > peer_cursors.seq",
        )
        .map_err(sql)?;
    for (origin, seq) in applied {
        if origin != peer {
            st.execute(params![
                peer,
                origin,
                i64::try_from(*seq).unwrap_or(i64::MAX)
            ])
            .map_err(sql)?;
        }
    }
    Ok(())
}

/// Take `peer`'s waiting report as known once this region has applied the peer's
/// own changes up to the report's `own` ([`Store::peer_applied`]).
fn confirm_report(c: &Connection, peer: &str) -> Result<(), ApiError> {
    let row: Option<(i64, String)> = c
        .prepare_cached("SELECT own, cursors FROM peer_reports WHERE peer = ?1")
        .map_err(sql)?
        .query_row(params![peer], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()
        .map_err(sql)?;
    let Some((own, cursors)) = row else {
        return Ok(());
    };
    if stored_cursor(c, peer)? < own.max(0) as u64 {
        return Ok(());
    }
    let applied: BTreeMap<String, u64> = serde_json::from_str(&cursors)
        .map_err(|e| ApiError::internal(format!("a stored report of region {peer}: {e}")))?;
    know(c, peer, &applied)?;
    c.prepare_cached("DELETE FROM peer_reports WHERE peer = ?1")
        .map_err(sql)?
        .execute(params![peer])
        .map_err(sql)?;
    Ok(())
}

/// For each region (`me` and `peers`), the seq of its log up to which every other
/// of them is known to have applied its changes: `me` by its cursors, a peer by its
/// confirmed reports (0: one of them not known). A region has its own changes.
fn applied_everywhere(
    c: &Connection,
    me: &str,
    peers: &[String],
) -> Result<BTreeMap<String, u64>, ApiError> {
    let mut regions: Vec<&str> = peers.iter().map(String::as_str).collect();
    regions.push(me);
    regions.sort_unstable();
    regions.dedup();
    let mut out = BTreeMap::new();
    for origin in &regions {
        let mut least = u64::MAX;
        for x in &regions {
            if x == origin {
                continue;
            }
            let applied = if *x == me {
                stored_cursor(c, origin)?
            } else {
                known_applied(c, x, origin)?
            };
            least = least.min(applied);
        }
        out.insert((*origin).to_owned(), least);
    }
    Ok(out)
}

/// Whether `cur`, a tombstone, was collected by the region that made `ch` before
/// it made `ch`: `ch` neither covers it nor is covered by it (a write of a key that
/// region had no row of), and that region had applied the tombstone's version
/// before making `ch` — its own, earlier in its log; or, from its report this region
/// confirmed, which came before `ch` in its log since this region had applied the
/// region's changes up to the report when it confirmed it, and `ch` follows. Such a
/// change comes after the delete, not concurrently with it: it is applied as onto
/// no row, as it would be had this region collected the tombstone too.
fn forgotten(c: &Connection, cur: &Current, ch: &Change) -> Result<bool, ApiError> {
    let Some(oseq) = cur.oseq else {
        return Ok(false);
    };
    if cur.item.is_some() || seen_by(&ch.vv, &cur.vv) || seen_by(&cur.vv, &ch.vv) {
        return Ok(false);
    }
    let from = ch.version.region.as_str();
    // A redelivery tells nothing of when it was made.
    if ch.seq <= stored_cursor(c, from)? {
        return Ok(false);
    }
    if cur.version.region == from {
        return Ok(ch.seq > oseq);
    }
    Ok(known_applied(c, from, &cur.version.region)? >= oseq)
}

/// What one replicated item change did here.
enum RemoteItem {
    Applied { conflict: bool },
    Duplicate,
    Lost,
}

/// Apply a peer's change of an item: skipped if this region's item has seen it
/// (a redelivery, or an older write), applied if it is later (last writer wins on
/// (time, region)), kept out if it is earlier; a concurrent write of this region
/// that loses is recorded as a conflict, with both versions. A tombstone the
/// change's region has collected before making the change is as if collected here.
fn apply_remote_item(
    tx: &rusqlite::Transaction<'_>,
    me: &str,
    def: &TableDef,
    ch: &Change,
) -> Result<RemoteItem, ApiError> {
    let keys = item_from_json(&ch.keys)?;
    let (key, kb) = def.key_of(&keys, true)?;
    let seg = segment_hash(&kb.hk);
    let new = ch.new.as_ref().map(item_from_json).transpose()?;
    let cur = match current(tx, &def.name, seg, &kb)? {
        Some(c) if forgotten(tx, &c, ch)? => None,
        c => c,
    };
    let Some(cur) = cur else {
        put_row(tx, def, seg, &kb, new.as_ref(), &ch.version, &ch.vv, ch.seq)?;
        if new.is_some() {
            append_change(
                tx,
                &def.name,
                &key,
                None,
                new.as_ref(),
                &ch.version,
                &ch.vv,
                ch.ttl,
                None,
            )?;
        }
        return Ok(RemoteItem::Applied { conflict: false });
    };
    if seen_by(&ch.vv, &cur.vv) {
        return Ok(RemoteItem::Duplicate);
    }
    let concurrent = !seen_by(&cur.vv, &ch.vv);
    let vv = merged(&cur.vv, &ch.vv);
    if ch.version > cur.version {
        put_row(tx, def, seg, &kb, new.as_ref(), &ch.version, &vv, ch.seq)?;
        // This region's write lost if it was concurrent, unless both are deletes
        // (nothing is lost when two regions delete the same item).
        let lost_here =
            concurrent && cur.version.region == me && !(cur.item.is_none() && new.is_none());
        let loser = lost_here.then(|| version_json(cur.item.as_ref(), &cur.version));
        if cur.item != new {
            append_change(
                tx,
                &def.name,
                &key,
                cur.item.as_ref(),
                new.as_ref(),
                &ch.version,
                &vv,
                ch.ttl,
                loser.as_ref(),
            )?;
        }
        if lost_here {
            tx.prepare_cached(
                "INSERT INTO conflicts (tbl, keys, loser, loser_vtime, loser_region, winner, winner_vtime, winner_region, at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )
            .map_err(sql)?
            .execute(params![
                def.name,
                item_to_json(&key).to_string(),
                cur.item.as_ref().map(|i| item_to_json(i).to_string()),
                vtime_text(cur.version.time),
                cur.version.region,
                new.as_ref().map(|i| item_to_json(i).to_string()),
                vtime_text(ch.version.time),
                ch.version.region,
                now_ms(),
            ])
            .map_err(sql)?;
        }
        Ok(RemoteItem::Applied {
            conflict: lost_here,
        })
    } else {
        // Concurrent and earlier: it loses here; remember that this item has seen
        // it, so that a redelivery is a duplicate.
        tx.prepare_cached(
            "UPDATE items SET vv = ?5 WHERE tbl = ?1 AND seg = ?2 AND hk = ?3 AND rk = ?4",
        )
        .map_err(sql)?
        .execute(params![
            def.name,
            seg,
            kb.hk,
            kb.rk,
            serde_json::to_string(&vv).map_err(|e| ApiError::internal(e.to_string()))?
        ])
        .map_err(sql)?;
        Ok(RemoteItem::Lost)
    }
}

/// Record a table's creation, deletion or TTL change as a change of this region's,
/// for the peers.
fn append_table_change(
    tx: &rusqlite::Transaction<'_>,
    hlc: &uhlc::HLC,
    region: &str,
    kind: &str,
    def: &TableDef,
) -> Result<(), ApiError> {
    let json = serde_json::to_string(def).map_err(|e| ApiError::internal(e.to_string()))?;
    let time = hlc.new_timestamp().get_time().as_u64();
    tx.prepare_cached(
        "INSERT INTO changes (tbl, kind, keys, old, new, vtime, vregion, vv, at_ms, ttl) VALUES (?1, ?2, '{}', NULL, ?3, ?4, ?5, '{}', ?6, 0)",
    )
    .map_err(sql)?
    .execute(params![def.name, kind, json, vtime_text(time), region, now_ms()])
    .map_err(sql)?;
    Ok(())
}

/// The change kinds that are tables', not items'.
pub const TABLE_KINDS: [&str; 3] = ["CREATE_TABLE", "DELETE_TABLE", "UPDATE_TABLE"];
