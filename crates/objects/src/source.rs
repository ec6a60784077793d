//! Change sources: how the replicator learns, quickly, that an object may have changed.
//!
//! A change source only gives *hints* ("look at this key", "look under this prefix",
//! "look at everything"); the replicator then asks the store itself, so a lost or
//! duplicated hint costs latency at worst, never correctness. The periodic full
//! reconciliation behind every source catches whatever hints missed.
//!
//! Implementations: [`FsWatcher`] (inotify on a local directory, via `notify`).
//! Remote stores have no push feed and rely on paged listing at the reconcile
//! interval. The seam for a later regional S3 gateway is [`ChangeSource`]: the
//! gateway sends [`Change::Key`] for every write it accepts, and replication starts
//! at once.

use std::path::{Path, PathBuf};
use tokio::sync::mpsc;

/// A hint that something in the source store may have changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// This key (a raw S3 key) may have been written or deleted.
    Key(String),
    /// Something under this prefix changed (for example a directory appeared whose
    /// files were written before it was watched).
    Prefix(String),
    /// Hints were lost: look at everything.
    Rescan,
}

/// Where change hints come from.
#[async_trait::async_trait]
pub trait ChangeSource: Send {
    /// The next batch of hints; `None` when the source has ended.
    async fn next(&mut self) -> Option<Vec<Change>>;
}

/// A change source fed through a channel: what a gateway (or a test) uses.
#[derive(Debug)]
pub struct ChannelSource(pub mpsc::UnboundedReceiver<Change>);

#[async_trait::async_trait]
impl ChangeSource for ChannelSource {
    async fn next(&mut self) -> Option<Vec<Change>> {
        let first = self.0.recv().await?;
        let mut batch = vec![first];
        while let Ok(more) = self.0.try_recv() {
            batch.push(more);
        }
        Some(batch)
    }
}

/// Watches a local directory store (recursively) with inotify.
pub struct FsWatcher {
    // Dropping the watcher stops the notifications: it lives as long as the source.
    _watcher: notify::RecommendedWatcher,
    rx: mpsc::UnboundedReceiver<notify::Result<notify::Event>>,
    root: PathBuf,
}

impl std::fmt::Debug for FsWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FsWatcher")
            .field("root", &self.root)
            .finish()
    }
}

impl FsWatcher {
    pub fn new(root: &Path) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        use notify::Watcher as _;
        let (tx, rx) = mpsc::unbounded_channel();
        let mut watcher = notify::recommended_watcher(move |ev| {
            // The receiver is gone only when the replicator stopped.
            let _ = tx.send(ev);
        })
        .context("starting the directory watcher (inotify)")?;
        watcher
            .watch(root, notify::RecursiveMode::Recursive)
            .with_context(|| format!("watching {}", root.display()))?;
        Ok(Self {
            _watcher: watcher,
            rx,
            root: root.to_path_buf(),
        })
    }

    fn translate(&self, ev: notify::Result<notify::Event>, out: &mut Vec<Change>) {
        use notify::EventKind;
        let ev = match ev {
            Ok(ev) => ev,
            Err(e) => {
                tracing::warn!(error = %e, "directory watcher error; rescanning");
                out.push(Change::Rescan);
                return;
            }
        };
        if ev.need_rescan() {
            out.push(Change::Rescan);
            return;
        }
        match ev.kind {
            EventKind::Access(_) => return,
            EventKind::Create(notify::event::CreateKind::Folder) => {
                for p in &ev.paths {
                    if let Some(key) = key_of(&self.root, p) {
                        out.push(Change::Prefix(key));
                    }
                }
                return;
            }
            _ => {}
        }
        for p in &ev.paths {
            if let Some(key) = key_of(&self.root, p) {
                out.push(Change::Key(key));
            }
        }
    }
}

#[async_trait::async_trait]
impl ChangeSource for FsWatcher {
    async fn next(&mut self) -> Option<Vec<Change>> {
        let first = self.rx.recv().await?;
        let mut batch = Vec::new();
        self.translate(first, &mut batch);
        while let Ok(more) = self.rx.try_recv() {
            self.translate(more, &mut batch);
            if batch.len() > 10_000 {
                break;
            }
        }
        Some(batch)
    }
}

/// The object key of a file under a local store's root, as `LocalFileSystem` lists
/// it. `None` for the root itself, for paths outside it, and for names the store
/// does not list (its in-progress upload files `name#N`).
pub fn key_of(root: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(root).ok()?;
    let mut parts = Vec::new();
    for c in rel.components() {
        match c {
            std::path::Component::Normal(s) => parts.push(s.to_str()?.to_owned()),
            _ => return None,
        }
    }
    let last = parts.last()?;
    if let Some((_, suffix)) = last.rsplit_once('#')
        && !suffix.is_empty()
        && suffix.chars().all(|c| c.is_ascii_digit())
    {
        return None;
    }
    let key = parts.join("/");
    object_store::path::Path::parse(&key)
        .ok()
        .map(|p| p.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_of_files() {
        let root = Path::new("/srv/a");
        assert_eq!(
            key_of(root, Path::new("/srv/a/x/y.txt")),
            Some("x/y.txt".to_owned())
        );
        assert_eq!(
            key_of(root, Path::new("/srv/a/x/y.txt#12")),
            None,
            "upload temp file"
        );
        assert_eq!(key_of(root, Path::new("/srv/a")), None);
        assert_eq!(key_of(root, Path::new("/srv/b/x")), None);
        let odd = key_of(root, Path::new("/srv/a/with space/ü 100%.txt")).expect("valid key");
        assert_eq!(odd, "with space/ü 100%.txt");
    }
}
