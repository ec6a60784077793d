//! Durable replication state of one region, in SQLite (bundled, WAL).
//!
//! Two tables:
//! - `objects`: what this region's store holds, as last seen (size, the store's
//!   e_tag, lifeboat's content checksum once known) and where it came from:
//!   `LOCAL` (written in this region) or `REPLICA` (arrived from the active region;
//!   never sent back).
//! - `targets`: one row per (key, destination region): the operation (PUT/DELETE),
//!   its status PENDING / COMPLETED / FAILED, attempts, last error and times.
//!
//! Guarantees: a COMPLETED row is never copied again unless the source changes or the
//! destination copy is found changed or missing; a transfer that finishes for an older
//! version of an object (`gen`) never marks the newer one complete; every change of
//! state is committed before it is acted on, so a restart resumes where it stopped.

use rusqlite::{Connection, OptionalExtension, params};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

pub const PENDING: &str = "PENDING";
pub const COMPLETED: &str = "COMPLETED";
pub const FAILED: &str = "FAILED";
pub const REPLICA: &str = "REPLICA";
pub const LOCAL: &str = "LOCAL";

const SCHEMA_VERSION: i64 = 1;

/// Milliseconds since the Unix epoch (wall clock: these times are persisted).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Put,
    Delete,
}

impl Op {
    fn as_str(self) -> &'static str {
        match self {
            Op::Put => "PUT",
            Op::Delete => "DELETE",
        }
    }
    fn parse(s: &str) -> Op {
        if s == "DELETE" { Op::Delete } else { Op::Put }
    }
}

/// What the source store holds for a key, as last seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenObject {
    pub size: u64,
    pub etag: Option<String>,
    /// LOCAL or REPLICA.
    pub status: String,
}

/// A unit of work: replicate `op` of `key` to `dest`.
#[derive(Debug, Clone)]
pub struct Target {
    pub key: String,
    pub dest: String,
    pub op: Op,
    pub generation: i64,
    pub size: u64,
    pub attempts: u32,
    pub detected_ms: i64,
    pub backfill: bool,
}

/// One row for `lifeboat objects status`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TargetRow {
    pub key: String,
    pub dest: String,
    pub op: String,
    pub status: String,
    pub size: u64,
    pub checksum: Option<String>,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub detected_ms: i64,
    pub next_attempt_ms: i64,
    pub completed_ms: Option<i64>,
}

/// Figures for status and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    pub pending_ops: u64,
    pub pending_bytes: u64,
    pub failed_ops: u64,
    pub completed_ops: u64,
    pub replica_objects: u64,
    pub local_objects: u64,
    /// detected_ms of the oldest pending operation.
    pub oldest_pending_ms: Option<i64>,
    /// Operations enqueued by backfill, and how many of them are COMPLETED.
    pub backfill_total: u64,
    pub backfill_done: u64,
}

/// A completed PUT as the destination should still hold it.
#[derive(Debug, Clone)]
pub struct CompletedCopy {
    pub size: u64,
    pub dest_etag: Option<String>,
}

pub struct Db {
    conn: Mutex<Connection>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Db")
    }
}

type DbResult<T> = rusqlite::Result<T>;

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}
fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Db {
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating state directory {}", dir.display()))?;
        }
        let conn = Connection::open(path)
            .with_context(|| format!("opening replication state {}", path.display()))?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.execute_batch(
            "PRAGMA journal_mode=WAL;
             PRAGMA synchronous=NORMAL;
             CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS objects (
                key TEXT PRIMARY KEY,
                size INTEGER NOT NULL,
                etag TEXT,
                checksum TEXT,
                status TEXT NOT NULL,
                seen_ms INTEGER NOT NULL,
                updated_ms INTEGER NOT NULL
             );
             CREATE TABLE IF NOT EXISTS targets (
                key TEXT NOT NULL,
                dest TEXT NOT NULL,
                op TEXT NOT NULL,
                status TEXT NOT NULL,
                gen INTEGER NOT NULL,
                size INTEGER NOT NULL,
                checksum TEXT,
                dest_etag TEXT,
                attempts INTEGER NOT NULL DEFAULT 0,
                last_error TEXT,
                detected_ms INTEGER NOT NULL,
                next_attempt_ms INTEGER NOT NULL,
                completed_ms INTEGER,
                updated_ms INTEGER NOT NULL,
                backfill INTEGER NOT NULL DEFAULT 0,
                PRIMARY KEY (key, dest)
             );
             CREATE INDEX IF NOT EXISTS targets_due ON targets(status, next_attempt_ms);",
        )
        .context("creating the replication state schema")?;
        let version: Option<i64> = conn
            .query_row("SELECT v FROM meta WHERE k='schema_version'", [], |r| {
                r.get::<_, String>(0)
            })
            .optional()?
            .and_then(|v| v.parse().ok());
        match version {
            None => {
                conn.execute(
                    "INSERT INTO meta(k, v) VALUES('schema_version', ?1)",
                    [SCHEMA_VERSION.to_string()],
                )?;
            }
            Some(SCHEMA_VERSION) => {}
            Some(other) => anyhow::bail!(
                "replication state {} has schema version {other}; this lifeboat knows {SCHEMA_VERSION}",
                path.display()
            ),
        }
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves SQLite consistent (transactions roll
        // back), so a poisoned lock is still usable.
        self.conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn get_meta(&self, k: &str) -> DbResult<Option<String>> {
        self.lock()
            .query_row("SELECT v FROM meta WHERE k=?1", [k], |r| r.get(0))
            .optional()
    }

    pub fn set_meta(&self, k: &str, v: &str) -> DbResult<()> {
        self.lock().execute(
            "INSERT INTO meta(k, v) VALUES(?1, ?2) ON CONFLICT(k) DO UPDATE SET v=excluded.v",
            params![k, v],
        )?;
        Ok(())
    }

    /// Every object of the source store as last seen.
    pub fn seen_objects(&self) -> DbResult<HashMap<String, (SeenObject, i64)>> {
        let conn = self.lock();
        let mut stmt = conn.prepare("SELECT key, size, etag, status, updated_ms FROM objects")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                (
                    SeenObject {
                        size: to_u64(r.get(1)?),
                        etag: r.get(2)?,
                        status: r.get(3)?,
                    },
                    r.get::<_, i64>(4)?,
                ),
            ))
        })?;
        rows.collect()
    }

    pub fn seen_object(&self, key: &str) -> DbResult<Option<SeenObject>> {
        self.lock()
            .query_row(
                "SELECT size, etag, status FROM objects WHERE key=?1",
                [key],
                |r| {
                    Ok(SeenObject {
                        size: to_u64(r.get(0)?),
                        etag: r.get(1)?,
                        status: r.get(2)?,
                    })
                },
            )
            .optional()
    }

    /// Apply a batch of observations in one transaction. Returns how many operations
    /// were enqueued.
    pub fn apply(&self, changes: &[Observation], now: i64) -> DbResult<u64> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let mut enqueued = 0;
        for c in changes {
            match c {
                Observation::Present {
                    key,
                    size,
                    etag,
                    origin,
                    push_to,
                    backfill,
                    compared_at,
                } => {
                    if let Some(t) = compared_at {
                        let updated: Option<i64> = tx
                            .query_row("SELECT updated_ms FROM objects WHERE key=?1", [key], |r| {
                                r.get(0)
                            })
                            .optional()?;
                        if updated.is_some_and(|u| u >= *t) {
                            continue;
                        }
                    }
                    tx.execute(
                        "INSERT INTO objects(key, size, etag, checksum, status, seen_ms, updated_ms)
                         VALUES(?1, ?2, ?3, NULL, ?4, ?5, ?5)
                         ON CONFLICT(key) DO UPDATE SET size=excluded.size, etag=excluded.etag,
                           checksum=NULL, status=excluded.status, seen_ms=excluded.seen_ms,
                           updated_ms=excluded.updated_ms",
                        params![key, to_i64(*size), etag, origin, now],
                    )?;
                    if *origin == REPLICA {
                        // It came from the active region: whatever this region still
                        // meant to send for this key is superseded, and the key is
                        // never sent back.
                        tx.execute("DELETE FROM targets WHERE key=?1", [key])?;
                    }
                    for dest in push_to {
                        enqueue(&tx, key, dest, Op::Put, *size, now, *backfill)?;
                        enqueued += 1;
                    }
                }
                Observation::Absent { key, delete_from } => {
                    tx.execute("DELETE FROM objects WHERE key=?1", [key])?;
                    if delete_from.is_empty() {
                        // Deletes are not replicated: forget the key (the copies stay).
                        tx.execute("DELETE FROM targets WHERE key=?1", [key])?;
                    }
                    for dest in delete_from {
                        enqueue(&tx, key, dest, Op::Delete, 0, now, false)?;
                        enqueued += 1;
                    }
                }
            }
        }
        tx.commit()?;
        Ok(enqueued)
    }

    /// Enqueue PUTs of objects that are LOCAL and have no COMPLETED or PENDING copy at
    /// `dest` (backfill). Keys are filtered by `want`.
    pub fn enqueue_backfill(
        &self,
        dests: &[String],
        want: &dyn Fn(&str) -> bool,
        now: i64,
    ) -> DbResult<u64> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let mut n = 0;
        {
            let mut stmt = tx.prepare("SELECT key, size FROM objects WHERE status='LOCAL'")?;
            let objects: Vec<(String, i64)> = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<DbResult<_>>()?;
            for (key, size) in objects {
                if !want(&key) {
                    continue;
                }
                for dest in dests {
                    let exists: bool = tx
                        .query_row(
                            "SELECT 1 FROM targets WHERE key=?1 AND dest=?2 AND op='PUT' AND status IN ('COMPLETED','PENDING','EXPIRED')",
                            params![key, dest],
                            |_| Ok(true),
                        )
                        .optional()?
                        .unwrap_or(false);
                    if !exists {
                        enqueue(&tx, &key, dest, Op::Put, to_u64(size), now, true)?;
                        n += 1;
                    }
                }
            }
        }
        tx.commit()?;
        Ok(n)
    }

    /// PENDING operations due now, oldest first.
    pub fn due(&self, now: i64, limit: usize) -> DbResult<Vec<Target>> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT key, dest, op, gen, size, attempts, detected_ms, backfill FROM targets
             WHERE status='PENDING' AND next_attempt_ms <= ?1
             ORDER BY next_attempt_ms LIMIT ?2",
        )?;
        let rows = stmt.query_map(
            params![now, i64::try_from(limit).unwrap_or(i64::MAX)],
            |r| {
                Ok(Target {
                    key: r.get(0)?,
                    dest: r.get(1)?,
                    op: Op::parse(&r.get::<_, String>(2)?),
                    generation: r.get(3)?,
                    size: to_u64(r.get(4)?),
                    attempts: u32::try_from(r.get::<_, i64>(5)?).unwrap_or(u32::MAX),
                    detected_ms: r.get(6)?,
                    backfill: r.get::<_, i64>(7)? != 0,
                })
            },
        )?;
        rows.collect()
    }

    /// When the next PENDING operation becomes due.
    pub fn next_due_ms(&self) -> DbResult<Option<i64>> {
        self.lock().query_row(
            "SELECT MIN(next_attempt_ms) FROM targets WHERE status='PENDING'",
            [],
            |r| r.get(0),
        )
    }

    /// Record the outcome of finished transfers, all in one transaction (one commit
    /// per batch, not per object: the commit is what costs). For each, returns
    /// whether it applied: false when the row moved on to a newer version meanwhile
    /// (a newer change of the object was seen), in which case nothing is changed.
    pub fn finish(&self, results: &[(Target, Finish)], now: i64) -> DbResult<Vec<bool>> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let mut applied = Vec::with_capacity(results.len());
        {
            let mut completed = tx.prepare_cached(
                "UPDATE targets SET status='COMPLETED', checksum=?4, dest_etag=?5, size=?6,
                   last_error=NULL, completed_ms=?7, updated_ms=?7
                 WHERE key=?1 AND dest=?2 AND gen=?3",
            )?;
            let mut checksum = tx.prepare_cached("UPDATE objects SET checksum=?2 WHERE key=?1")?;
            // A replicated delete, or a copy whose source vanished, leaves nothing to track.
            let mut remove =
                tx.prepare_cached("DELETE FROM targets WHERE key=?1 AND dest=?2 AND gen=?3")?;
            let mut failed = tx.prepare_cached(
                "UPDATE targets SET status=?4, attempts=attempts+1, last_error=?5,
                   next_attempt_ms=?6, updated_ms=?7
                 WHERE key=?1 AND dest=?2 AND gen=?3",
            )?;
            for (t, f) in results {
                let n = match f {
                    Finish::Copied {
                        checksum: sum,
                        dest_etag,
                        size,
                    } => {
                        let n = completed.execute(params![
                            t.key,
                            t.dest,
                            t.generation,
                            sum,
                            dest_etag,
                            to_i64(*size),
                            now
                        ])?;
                        if n > 0 {
                            checksum.execute(params![t.key, sum])?;
                        }
                        n
                    }
                    Finish::Deleted | Finish::Dropped => {
                        remove.execute(params![t.key, t.dest, t.generation])?
                    }
                    Finish::Failed {
                        error,
                        terminal,
                        next_ms,
                    } => failed.execute(params![
                        t.key,
                        t.dest,
                        t.generation,
                        if *terminal { FAILED } else { PENDING },
                        error,
                        next_ms,
                        now
                    ])?,
                };
                applied.push(n > 0);
            }
        }
        tx.commit()?;
        Ok(applied)
    }

    /// Completed copies at `dest`, to compare with what the destination holds.
    pub fn completed_copies(&self, dest: &str) -> DbResult<HashMap<String, CompletedCopy>> {
        let conn = self.lock();
        let mut stmt = conn.prepare(
            "SELECT key, size, dest_etag FROM targets WHERE dest=?1 AND op='PUT' AND status='COMPLETED'",
        )?;
        let rows = stmt.query_map([dest], |r| {
            Ok((
                r.get::<_, String>(0)?,
                CompletedCopy {
                    size: to_u64(r.get(1)?),
                    dest_etag: r.get(2)?,
                },
            ))
        })?;
        rows.collect()
    }

    /// A destination copy no longer matches: copy it again.
    /// Copies at `dest` that its store's lifecycle expired: EXPIRED, not copied again
    /// (until the object changes here, which enqueues it anew).
    pub fn mark_expired(&self, keys: &[String], dest: &str, now: i64) -> DbResult<u64> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let mut n = 0;
        for key in keys {
            n += tx.execute(
                "UPDATE targets SET status='EXPIRED', last_error='expired by the lifecycle rules of its store', updated_ms=?3
                 WHERE key=?1 AND dest=?2 AND status='COMPLETED'",
                params![key, dest, now],
            )?;
        }
        tx.commit()?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    pub fn requeue(&self, keys: &[String], dest: &str, reason: &str, now: i64) -> DbResult<u64> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let mut n = 0;
        for key in keys {
            n += tx.execute(
                "UPDATE targets SET status='PENDING', gen=gen+1, attempts=0, last_error=?3,
                   detected_ms=?4, next_attempt_ms=?4, updated_ms=?4
                 WHERE key=?1 AND dest=?2 AND status='COMPLETED'",
                params![key, dest, reason, now],
            )?;
        }
        tx.commit()?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// FAILED (and waiting PENDING) operations become due now with a fresh attempt
    /// count. Returns how many.
    pub fn retry(&self, key_prefix: Option<&str>, now: i64) -> DbResult<u64> {
        let like = format!(
            "{}%",
            key_prefix
                .unwrap_or("")
                .replace('%', "\\%")
                .replace('_', "\\_")
        );
        let n = self.lock().execute(
            "UPDATE targets SET status='PENDING', attempts=0, next_attempt_ms=?1, updated_ms=?1
             WHERE status IN ('FAILED','PENDING') AND key LIKE ?2 ESCAPE '\\'",
            params![now, like],
        )?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Local writes not yet copied to every destination (a PUT not COMPLETED), one row
    /// per key, oldest first: (key, generation, size). What a fence keeps aside: the next active
    /// region's copies may overwrite them in this region's store.
    pub fn unsent_local_writes(&self) -> DbResult<Vec<(String, i64, u64)>> {
        let conn = self.lock();
        let mut stmt = conn.prepare(
            "SELECT t.key, MAX(t.gen), MAX(t.size) FROM targets t JOIN objects o ON o.key = t.key
             WHERE t.status != 'COMPLETED' AND t.op = 'PUT' AND o.status = 'LOCAL'
             GROUP BY t.key ORDER BY MIN(t.detected_ms), t.key",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                u64::try_from(r.get::<_, i64>(2)?).unwrap_or(0),
            ))
        })?;
        rows.collect()
    }

    pub fn counts(&self) -> DbResult<Counts> {
        let conn = self.lock();
        let (pending_ops, pending_bytes, oldest): (i64, i64, Option<i64>) = conn.query_row(
            "SELECT COUNT(*), COALESCE(SUM(size),0), MIN(detected_ms) FROM targets WHERE status='PENDING'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?;
        let count = |sql: &str| -> DbResult<u64> {
            conn.query_row(sql, [], |r| r.get::<_, i64>(0)).map(to_u64)
        };
        Ok(Counts {
            pending_ops: to_u64(pending_ops),
            pending_bytes: to_u64(pending_bytes),
            failed_ops: count("SELECT COUNT(*) FROM targets WHERE status='FAILED'")?,
            completed_ops: count("SELECT COUNT(*) FROM targets WHERE status='COMPLETED'")?,
            replica_objects: count("SELECT COUNT(*) FROM objects WHERE status='REPLICA'")?,
            local_objects: count("SELECT COUNT(*) FROM objects WHERE status='LOCAL'")?,
            oldest_pending_ms: oldest,
            backfill_total: count("SELECT COUNT(*) FROM targets WHERE backfill=1")?,
            backfill_done: count(
                "SELECT COUNT(*) FROM targets WHERE backfill=1 AND status='COMPLETED'",
            )?,
        })
    }

    /// Rows that are not COMPLETED (pending and failed), oldest first.
    pub fn unfinished(&self, limit: usize) -> DbResult<Vec<TargetRow>> {
        let conn = self.lock();
        let mut stmt = conn.prepare(
            "SELECT key, dest, op, status, size, checksum, attempts, last_error, detected_ms,
                    next_attempt_ms, completed_ms
             FROM targets WHERE status != 'COMPLETED' ORDER BY status, detected_ms LIMIT ?1",
        )?;
        let rows = stmt.query_map([i64::try_from(limit).unwrap_or(i64::MAX)], row_of)?;
        rows.collect()
    }

    /// One target row (tests and the CLI).
    pub fn target(&self, key: &str, dest: &str) -> DbResult<Option<TargetRow>> {
        self.lock()
            .query_row(
                "SELECT key, dest, op, status, size, checksum, attempts, last_error, detected_ms,
                        next_attempt_ms, completed_ms
                 FROM targets WHERE key=?1 AND dest=?2",
                params![key, dest],
                row_of,
            )
            .optional()
    }
}

fn row_of(r: &rusqlite::Row<'_>) -> DbResult<TargetRow> {
    Ok(TargetRow {
        key: r.get(0)?,
        dest: r.get(1)?,
        op: r.get(2)?,
        status: r.get(3)?,
        size: to_u64(r.get(4)?),
        checksum: r.get(5)?,
        attempts: u32::try_from(r.get::<_, i64>(6)?).unwrap_or(u32::MAX),
        last_error: r.get(7)?,
        detected_ms: r.get(8)?,
        next_attempt_ms: r.get(9)?,
        completed_ms: r.get(10)?,
    })
}

fn enqueue(
    tx: &rusqlite::Transaction<'_>,
    key: &str,
    dest: &str,
    op: Op,
    size: u64,
    now: i64,
    backfill: bool,
) -> DbResult<()> {
    tx.execute(
        "INSERT INTO targets(key, dest, op, status, gen, size, attempts, detected_ms,
                             next_attempt_ms, updated_ms, backfill)
         VALUES(?1, ?2, ?3, 'PENDING', 1, ?4, 0, ?5, ?5, ?5, ?6)
         ON CONFLICT(key, dest) DO UPDATE SET op=excluded.op, status='PENDING', gen=gen+1,
           size=excluded.size, attempts=0, last_error=NULL, detected_ms=excluded.detected_ms,
           next_attempt_ms=excluded.next_attempt_ms, updated_ms=excluded.updated_ms,
           completed_ms=NULL, backfill=excluded.backfill",
        params![
            key,
            dest,
            op.as_str(),
            to_i64(size),
            now,
            i64::from(backfill)
        ],
    )?;
    Ok(())
}

/// What an observation of the source store found for one key.
#[derive(Debug, Clone)]
pub enum Observation {
    Present {
        key: String,
        size: u64,
        etag: Option<String>,
        /// LOCAL or REPLICA.
        origin: &'static str,
        /// Destinations to copy it to (empty for replicas and baseline objects).
        push_to: Vec<String>,
        backfill: bool,
        /// When the state this observation was compared with was read (a listing's or
        /// a hint's start): a row recorded since then — by the gateway, for a write it
        /// admitted — is newer and wins. None: always applied.
        compared_at: Option<i64>,
    },
    Absent {
        key: String,
        /// Destinations to delete it from (empty when deletes are not replicated).
        delete_from: Vec<String>,
    },
}

/// How a transfer ended, for [`Db::finish`].
#[derive(Debug, Clone)]
pub enum Finish {
    Copied {
        checksum: String,
        dest_etag: Option<String>,
        size: u64,
    },
    Deleted,
    /// The source vanished before it could be copied: forget the operation (a delete,
    /// if replicated, is enqueued by the observation that sees it gone).
    Dropped,
    Failed {
        error: String,
        terminal: bool,
        next_ms: i64,
    },
}
