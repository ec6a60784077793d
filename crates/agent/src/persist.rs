//! The agent's durable bits: the highest epoch it has seen (a fencing token must never
//! go backwards across a restart) and its local journal (so a region cut off from the
//! controller still records when it fenced itself).

use anyhow::{Context, Result};
use lifeboat_core::{Epoch, JournalEntry, JournalKind, RegionId};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

#[derive(Serialize, Deserialize)]
struct EpochFile {
    version: u32,
    epoch: Epoch,
    /// The agent acknowledged a fence at this epoch: it never activates under it again.
    fenced_epoch: Option<Epoch>,
}

#[derive(Serialize, Deserialize)]
struct ViewFile {
    version: u32,
    epoch: Epoch,
    active: Option<RegionId>,
}

pub struct AgentStore {
    dir: PathBuf,
    journal: Mutex<(std::fs::File, u64)>,
}

pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl AgentStore {
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating agent state directory {}", dir.display()))?;
        let jpath = dir.join("journal.jsonl");
        let existing = std::fs::read_to_string(&jpath).unwrap_or_default();
        let last_seq = existing
            .lines()
            .filter_map(|l| serde_json::from_str::<JournalEntry>(l).ok())
            .map(|e| e.seq)
            .max()
            .unwrap_or(0);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&jpath)
            .with_context(|| format!("opening agent journal {}", jpath.display()))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            journal: Mutex::new((file, last_seq)),
        })
    }

    pub fn load_epoch(&self) -> Result<(Epoch, Option<Epoch>)> {
        let path = self.dir.join("epoch.json");
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let f: EpochFile = serde_json::from_str(&text)
                    .with_context(|| format!("decoding {}", path.display()))?;
                Ok((f.epoch, f.fenced_epoch))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok((Epoch::ZERO, None)),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    pub fn save_epoch(&self, epoch: Epoch, fenced_epoch: Option<Epoch>) -> Result<()> {
        let body = serde_json::to_vec(&EpochFile {
            version: 1,
            epoch,
            fenced_epoch,
        })?;
        self.write_atomically("epoch.json", &body)
    }

    /// The region this agent last learned to be active, and at which epoch (a
    /// controller that lost its state adopts it: rule 8).
    pub fn load_view(&self) -> Result<Option<(Epoch, Option<RegionId>)>> {
        let path = self.dir.join("view.json");
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let f: ViewFile = serde_json::from_str(&text)
                    .with_context(|| format!("decoding {}", path.display()))?;
                Ok(Some((f.epoch, f.active)))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    pub fn save_view(&self, epoch: Epoch, active: Option<&RegionId>) -> Result<()> {
        let body = serde_json::to_vec(&ViewFile {
            version: 1,
            epoch,
            active: active.cloned(),
        })?;
        self.write_atomically("view.json", &body)
    }

    /// temp file + fsync + rename + fsync of the directory: all or nothing on disk.
    fn write_atomically(&self, name: &str, body: &[u8]) -> Result<()> {
        let path = self.dir.join(name);
        let tmp = self.dir.join(format!("{name}.tmp"));
        {
            let mut f = std::fs::File::create(&tmp)
                .with_context(|| format!("writing {}", tmp.display()))?;
            f.write_all(body)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &path).with_context(|| format!("renaming to {}", path.display()))?;
        std::fs::File::open(&self.dir)?.sync_all()?;
        Ok(())
    }

    /// Append one entry (fsync). `at_unix_ms` is when it happened, which may be a
    /// little before it is written: the agent queues its journal off its decision path.
    pub fn append(
        &self,
        at_unix_ms: u64,
        mono_ms: u64,
        epoch: Epoch,
        kind: JournalKind,
        region: &RegionId,
        detail: &str,
    ) -> Result<JournalEntry> {
        let mut guard = self.journal.lock().unwrap_or_else(|p| p.into_inner());
        guard.1 += 1;
        let entry = JournalEntry {
            seq: guard.1,
            at_unix_ms,
            mono_ms,
            epoch,
            kind,
            region: Some(region.clone()),
            detail: detail.to_owned(),
        };
        let mut line = serde_json::to_vec(&entry)?;
        line.push(b'\n');
        guard.0.write_all(&line)?;
        guard.0.sync_data()?;
        Ok(entry)
    }

    pub fn journal(&self, since: u64) -> Result<Vec<JournalEntry>> {
        let path = self.dir.join("journal.jsonl");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        Ok(text
            .lines()
            .filter_map(|l| serde_json::from_str::<JournalEntry>(l).ok())
            .filter(|e| e.seq > since)
            .collect())
    }
}
