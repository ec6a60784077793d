//! Durable controller state: the epoch, the active region and the journal.
//!
//! [`StateStore`] is what the controller needs of its storage; [`Store`] keeps it in
//! SQLite (one controller, the embedded default) and `etcd::EtcdStore` (feature
//! `etcd`) in etcd, for several controllers of which one leads. A `save` that
//! returned is durable; one that failed leaves the old state, and the controller
//! sends nothing that depends on it.
//!
//! SQLite:
//! `synchronous = FULL` with WAL: a transaction that returned is on disk, so a kill -9
//! at any instant leaves either the old or the new state, never a torn one. The state
//! row carries a format version so a later release can migrate it.
//!
//! Formats: 1 had no move in progress; 2 adds `Durable::moving` (rule 8, docs/architecture.md). A
//! format-1 row reads as "no move in progress" (a serde default): a controller of
//! format 1 persisted no move, so there is none to resume.

use crate::machine::Durable;
use anyhow::{Context, Result};
use lifeboat_core::{Epoch, JournalEntry, JournalKind, RegionId};
use rusqlite::{Connection, OptionalExtension, params};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

pub(crate) const FORMAT_VERSION: u32 = 2;

/// The controller's durable state and journal, wherever they are kept.
#[async_trait::async_trait]
pub trait StateStore: Send + Sync {
    /// Where the state lives, for messages ("/var/lib/lifeboat/controller.db").
    fn describe(&self) -> String;
    async fn load(&self) -> Result<Option<Durable>>;
    /// Persist the durable state; returns once it is durable.
    async fn save(&self, state: &Durable) -> Result<()>;
    async fn append(
        &self,
        mono_ms: u64,
        epoch: Epoch,
        kind: JournalKind,
        region: Option<&RegionId>,
        detail: &str,
    ) -> Result<JournalEntry>;
    /// Journal entries with `seq > since`, oldest first, at most `limit`.
    async fn journal(&self, since: u64, limit: usize) -> Result<Vec<JournalEntry>>;
}

#[async_trait::async_trait]
impl StateStore for Store {
    fn describe(&self) -> String {
        self.path.display().to_string()
    }
    async fn load(&self) -> Result<Option<Durable>> {
        Store::load(self)
    }
    async fn save(&self, state: &Durable) -> Result<()> {
        Store::save(self, state)
    }
    async fn append(
        &self,
        mono_ms: u64,
        epoch: Epoch,
        kind: JournalKind,
        region: Option<&RegionId>,
        detail: &str,
    ) -> Result<JournalEntry> {
        Store::append(self, mono_ms, epoch, kind, region, detail)
    }
    async fn journal(&self, since: u64, limit: usize) -> Result<Vec<JournalEntry>> {
        Store::journal(self, since, limit)
    }
}

/// The state in SQLite: one controller.
pub struct Store {
    conn: Mutex<Connection>,
    path: PathBuf,
}

#[derive(serde::Serialize, serde::Deserialize)]
pub(crate) struct Versioned {
    pub(crate) version: u32,
    pub(crate) state: Durable,
}

pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Store {
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating state directory {}", dir.display()))?;
        let path = dir.join("controller.db");
        let conn = Connection::open(&path)
            .with_context(|| format!("opening controller state {}", path.display()))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS state (id INTEGER PRIMARY KEY CHECK (id = 1), body TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS journal (
                seq INTEGER PRIMARY KEY AUTOINCREMENT,
                at_unix_ms INTEGER NOT NULL,
                mono_ms INTEGER NOT NULL,
                epoch INTEGER NOT NULL,
                kind TEXT NOT NULL,
                region TEXT,
                detail TEXT NOT NULL);",
        )
        .with_context(|| format!("initialising {}", path.display()))?;
        Ok(Self {
            conn: Mutex::new(conn),
            path,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite half-written (it has its
        // own transactions), so a poisoned lock is safe to take over.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn load(&self) -> Result<Option<Durable>> {
        let body: Option<String> = self
            .conn()
            .query_row("SELECT body FROM state WHERE id = 1", [], |r| r.get(0))
            .optional()
            .with_context(|| format!("reading {}", self.path.display()))?;
        let Some(body) = body else { return Ok(None) };
        decode(&body, &self.path).map(Some)
    }

    /// Persist the durable state; returns once it is on disk.
    pub fn save(&self, state: &Durable) -> Result<()> {
        let body = serde_json::to_string(&Versioned {
            version: FORMAT_VERSION,
            state: state.clone(),
        })?;
        self.conn()
            .execute(
                "INSERT INTO state (id, body) VALUES (1, ?1) ON CONFLICT(id) DO UPDATE SET body = excluded.body",
                params![body],
            )
            .with_context(|| format!("writing controller state to {}", self.path.display()))?;
        Ok(())
    }

    pub fn append(
        &self,
        mono_ms: u64,
        epoch: Epoch,
        kind: JournalKind,
        region: Option<&RegionId>,
        detail: &str,
    ) -> Result<JournalEntry> {
        let at = unix_ms();
        let conn = self.conn();
        conn.execute(
            "INSERT INTO journal (at_unix_ms, mono_ms, epoch, kind, region, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                at as i64,
                mono_ms as i64,
                epoch.0 as i64,
                kind.as_str(),
                region.map(|r| r.as_str()),
                detail
            ],
        )
        .with_context(|| format!("appending to the journal in {}", self.path.display()))?;
        let seq = conn.last_insert_rowid();
        Ok(JournalEntry {
            seq: u64::try_from(seq).unwrap_or(0),
            at_unix_ms: at,
            mono_ms,
            epoch,
            kind,
            region: region.cloned(),
            detail: detail.to_owned(),
        })
    }

    /// Journal entries with `seq > since`, oldest first, at most `limit`.
    pub fn journal(&self, since: u64, limit: usize) -> Result<Vec<JournalEntry>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT seq, at_unix_ms, mono_ms, epoch, kind, region, detail FROM journal WHERE seq > ?1 ORDER BY seq LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![since as i64, limit as i64], |r| {
            let kind: String = r.get(4)?;
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
                kind,
                r.get::<_, Option<String>>(5)?,
                r.get::<_, String>(6)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (seq, at, mono, epoch, kind, region, detail) = row?;
            let kind: JournalKind = serde_json::from_value(serde_json::Value::String(kind.clone()))
                .with_context(|| format!("unknown journal kind {kind:?}"))?;
            out.push(JournalEntry {
                seq: seq as u64,
                at_unix_ms: at as u64,
                mono_ms: mono as u64,
                epoch: Epoch(epoch as u64),
                kind,
                region: region.map(RegionId),
                detail,
            });
        }
        Ok(out)
    }
}

/// The state row's body, of any format up to this one's, as today's [`Durable`].
pub(crate) fn decode(body: &str, path: &Path) -> Result<Durable> {
    let v: Versioned = serde_json::from_str(body)
        .with_context(|| format!("decoding controller state in {}", path.display()))?;
    anyhow::ensure!(
        v.version <= FORMAT_VERSION,
        "{} was written by a newer lifeboat (state format {}, this one knows {})",
        path.display(),
        v.version,
        FORMAT_VERSION
    );
    // 1 -> 2: `moving` did not exist; its default (None) is the truth for format 1.
    Ok(v.state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::{DurableMove, MoveKind};

    #[test]
    fn format_1_state_reads_as_no_move_in_progress() {
        let body = r#"{"version":1,"state":{"epoch":4,"active":"b","home":"a","promoting":null,"failovers":2}}"#;
        let d = decode(body, Path::new("controller.db")).expect("format 1 decodes");
        assert_eq!(d.epoch, Epoch(4));
        assert_eq!(d.active, Some(RegionId::new("b")));
        assert_eq!(d.home, Some(RegionId::new("a")));
        assert_eq!(d.failovers, 2);
        assert_eq!(d.moving, None);
    }

    #[test]
    fn a_newer_format_is_refused_not_misread() {
        let body = r#"{"version":99,"state":{"epoch":4,"active":"b","home":null,"promoting":null,"failovers":0}}"#;
        let e = decode(body, Path::new("controller.db")).expect_err("refused");
        assert!(format!("{e:#}").contains("newer lifeboat"), "{e:#}");
    }

    #[test]
    fn the_move_in_progress_survives_a_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = Durable {
            epoch: Epoch(3),
            active: Some(RegionId::new("a")),
            moving: Some(DurableMove {
                kind: MoveKind::Switchover,
                from: Some(RegionId::new("a")),
                to: RegionId::new("b"),
                forced: false,
                fence_known: true,
            }),
            ..Durable::default()
        };
        Store::open(dir.path())
            .expect("open")
            .save(&d)
            .expect("save");
        let back = Store::open(dir.path())
            .expect("reopen")
            .load()
            .expect("load");
        assert_eq!(back, Some(d));
    }
}
