//! The replicator of one region: observes its store, records every change durably,
//! and — while its region is the active one — pushes changes to every other region.
//!
//! Two tasks share the state database:
//! - the *observer* turns change hints ([`crate::source`]) and periodic full listings
//!   into rows: an object that appears while this region is active is `LOCAL` and
//!   enqueued for every destination its rule covers; one that appears while the
//!   region is a standby (or fenced) arrived from the active region: `REPLICA`, never
//!   sent back. Before a standby becomes active it finishes observing what arrived,
//!   so nothing received is mistaken for a local write (no ping-pong). While active
//!   it also lists the destinations and re-copies any copy found changed or missing.
//! - the *dispatcher* copies due PENDING rows, at most `concurrency` at once, verifies
//!   each copy's checksum, and records COMPLETED, or PENDING with backoff, or FAILED.
//!
//! Fencing stops the dispatcher at once (in-flight copies are abandoned and stay
//! PENDING); `follow` makes the region receive only; `activate` starts pushing.

use crate::db::{self, Db, Finish, Observation, Op, Target};
use crate::metrics::ObjectMetrics;
use crate::source::{Change, ChangeSource, FsWatcher};
use crate::store::Store;
use crate::transfer::{self, TransferError};
use anyhow::Context as _;
use futures::FutureExt as _;
use futures::StreamExt as _;
use lifeboat_config::objects::{ObjectsConfig, RuleConfig, StoreConfig};
use lifeboat_core::{
    Activation, DataRole, Epoch, FollowTarget, HealthStatus, JournalKind, RegionId, RoleError,
    RoleHealth, RoleStatus, SharedRole,
};
use object_store::ObjectStoreExt as _;
use object_store::path::Path as ObjectPath;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, broadcast, mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// The replication mode of this region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// No role assigned yet: observe nothing, push nothing.
    Unassigned,
    /// The active region: local changes are pushed to every other region.
    Active,
    /// A standby: receives replicas, pushes nothing.
    Standby,
    /// Fenced: pushes nothing; anything that arrives is a replica.
    Fenced,
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Mode::Unassigned => "unassigned",
            Mode::Active => "active",
            Mode::Standby => "standby",
            Mode::Fenced => "fenced",
        }
    }
    fn parse(s: &str) -> Mode {
        match s {
            "active" => Mode::Active,
            "standby" => Mode::Standby,
            "fenced" => Mode::Fenced,
            _ => Mode::Unassigned,
        }
    }
}

/// Something for the journal (the agent forwards these).
#[derive(Debug, Clone)]
pub struct ObjectEvent {
    pub kind: JournalKind,
    pub region: RegionId,
    pub detail: String,
}

/// The state database's file inside the region's state directory.
pub fn db_path(state_dir: &Path) -> std::path::PathBuf {
    state_dir.join("objects.sqlite")
}

/// How many bytes of unsent writes a fence keeps aside at most (oldest first).
const KEEP_ASIDE_MAX_BYTES: u64 = 1 << 30;
/// How long a fence spends keeping unsent writes aside.
const KEEP_ASIDE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a fence keeps the local writes it found unsent:
/// `kept/gen<generation>/<key>`, listed in `kept/index.jsonl`.
pub fn keep_dir(state_dir: &Path) -> std::path::PathBuf {
    state_dir.join("kept")
}

pub(crate) struct Inner {
    pub(crate) region: RegionId,
    pub(crate) cfg: ObjectsConfig,
    rules: Vec<RuleConfig>,
    pub(crate) source: Store,
    pub(crate) dests: BTreeMap<String, Store>,
    pub(crate) db: Db,
    pub(crate) metrics: Arc<ObjectMetrics>,
    desired: watch::Sender<Mode>,
    effective: watch::Sender<Mode>,
    wake: Notify,
    events: broadcast::Sender<ObjectEvent>,
    /// Cancelled by `fence`: abandons the copies in flight.
    fence_token: Mutex<CancellationToken>,
    hints_tx: mpsc::UnboundedSender<Change>,
    highest_epoch: lifeboat_core::EpochRatchet,
    /// `state_dir/kept`: local writes a fence found unsent, copied out of the store.
    keep_dir: std::path::PathBuf,
}

/// The replicator of one region. See the module documentation.
pub struct Replicator {
    inner: Arc<Inner>,
    hints_rx: mpsc::UnboundedReceiver<Change>,
}

impl std::fmt::Debug for Replicator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replicator")
            .field("region", &self.inner.region)
            .finish()
    }
}

impl Replicator {
    /// Open the replicator of `region`: its stores from `[objects]`, its state from
    /// `state_dir/objects.sqlite`. It starts with no role: the agent calls
    /// `activate` or `follow` on [`Replicator::role`].
    pub async fn open(
        cfg: &lifeboat_config::Config,
        region: &RegionId,
        state_dir: &Path,
    ) -> anyhow::Result<Self> {
        let objects = cfg
            .objects
            .as_ref()
            .context("the config has no [objects] section")?;
        let mut stores = BTreeMap::new();
        for (name, store_cfg) in &objects.stores {
            let store = Store::open(store_cfg)
                .with_context(|| format!("opening the object store of region {name}"))?;
            stores.insert(name.clone(), store);
        }
        Self::open_with_stores(objects, region, state_dir, stores)
    }

    /// Like [`Replicator::open`] with stores built by the caller (a test wrapping a
    /// store, a gateway sharing one).
    pub fn open_with_stores(
        objects: &ObjectsConfig,
        region: &RegionId,
        state_dir: &Path,
        mut stores: BTreeMap<String, Store>,
    ) -> anyhow::Result<Self> {
        let source = stores
            .remove(region.as_str())
            .with_context(|| format!("region {region} has no object store in [objects.stores]"))?;
        let db = Db::open(&db_path(state_dir))?;
        let (hints_tx, hints_rx) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            region: region.clone(),
            cfg: objects.clone(),
            rules: objects.effective_rules(),
            source,
            dests: stores,
            db,
            metrics: Arc::new(ObjectMetrics::new(region.as_str())),
            desired: watch::Sender::new(Mode::Unassigned),
            effective: watch::Sender::new(Mode::Unassigned),
            wake: Notify::new(),
            events: broadcast::channel(256).0,
            fence_token: Mutex::new(CancellationToken::new()),
            hints_tx,
            highest_epoch: lifeboat_core::EpochRatchet::new(),
            keep_dir: keep_dir(state_dir),
        });
        inner.refresh_gauges();
        Ok(Self { inner, hints_rx })
    }

    /// The fencing handle the agent drives.
    pub fn role(&self) -> SharedRole {
        Arc::new(RegionRole {
            inner: self.inner.clone(),
        })
    }

    pub fn metrics(&self) -> Arc<ObjectMetrics> {
        self.inner.metrics.clone()
    }

    /// Journal-worthy events (latency alerts, objects marked FAILED, repairs).
    pub fn events(&self) -> broadcast::Receiver<ObjectEvent> {
        self.inner.events.subscribe()
    }

    /// The seam for a change source without a watcher of its own (a regional S3
    /// gateway): every hint sent here is looked at at once.
    pub fn change_sender(&self) -> mpsc::UnboundedSender<Change> {
        self.inner.hints_tx.clone()
    }

    /// The mode the replicator is in now (changes after the role is told).
    pub fn mode(&self) -> Mode {
        *self.inner.effective.borrow()
    }

    /// Run until cancelled: the observer and the dispatcher.
    pub async fn run(self, cancel: CancellationToken) -> anyhow::Result<()> {
        let inner = self.inner.clone();
        let observer = tokio::spawn(observe(self.inner.clone(), self.hints_rx, cancel.clone()));
        let dispatched = dispatch(inner.clone(), cancel.clone(), false).await;
        cancel.cancel();
        let observed = observer
            .await
            .context("the object observer task panicked")?;
        dispatched.and(observed)
    }

    /// Run one backfill to completion: observe the whole source store, enqueue every
    /// matching object that has no copy yet at each destination (whatever the rules'
    /// `backfill` says: this is the explicit batch replication), and copy until
    /// nothing is due. `progress` is called with (done, total) as copies finish.
    pub(crate) async fn backfill_once(
        self,
        cancel: CancellationToken,
        progress: &(dyn Fn(u64, u64) + Send + Sync),
    ) -> anyhow::Result<()> {
        let inner = self.inner.clone();
        let last = inner.db.get_meta("mode")?.map(|m| Mode::parse(&m));
        if matches!(last, Some(Mode::Standby | Mode::Fenced)) {
            anyhow::bail!(
                "region {} was last a {} region: a backfill pushes from the active region only",
                inner.region,
                last.map_or("?", Mode::as_str)
            );
        }
        let started = tokio::time::Instant::now();
        inner.reconcile_source(Mode::Active).await?;
        tracing::info!(region = %inner.region, elapsed = ?started.elapsed(), "backfill: source store listed and recorded");
        let dests: Vec<String> = inner.dests.keys().cloned().collect();
        let rules = inner.rules.clone();
        let n = inner.db.enqueue_backfill(
            &dests,
            &|key| rules.iter().any(|r| key.starts_with(&r.prefix)),
            db::now_ms(),
        )?;
        tracing::info!(region = %inner.region, enqueued = n, elapsed = ?started.elapsed(), "backfill enqueued");
        inner.effective.send_replace(Mode::Active);
        inner.db.set_meta("mode", Mode::Active.as_str())?;
        let inner2 = inner.clone();
        let cancel2 = cancel.clone();
        let dispatcher = tokio::spawn(async move { dispatch(inner2, cancel2, true).await });
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                () = cancel.cancelled() => break,
                _ = tick.tick() => {
                    let (done, total) = inner.metrics.backfill_progress();
                    progress(done, total);
                    if dispatcher.is_finished() {
                        break;
                    }
                }
            }
        }
        let (done, total) = inner.metrics.backfill_progress();
        progress(done, total);
        dispatcher
            .await
            .context("the backfill dispatcher panicked")?
    }
}

/// The region's objects data role.
pub struct RegionRole {
    inner: Arc<Inner>,
}

impl RegionRole {
    /// Activations and follows (lifeboat_core::role: the epoch rule).
    fn check_epoch(&self, epoch: Epoch) -> Result<(), RoleError> {
        self.inner.highest_epoch.admit(epoch)
    }
}

#[async_trait::async_trait]
impl DataRole for RegionRole {
    fn name(&self) -> &str {
        "objects"
    }

    async fn status(&self) -> RoleStatus {
        let inner = &self.inner;
        let mode = *inner.effective.borrow();
        let desired = *inner.desired.borrow();
        let role = match mode {
            Mode::Active => RoleHealth::Primary,
            Mode::Standby => RoleHealth::Standby,
            Mode::Fenced => RoleHealth::Fenced,
            Mode::Unassigned => RoleHealth::Unknown,
        };
        let m = &inner.metrics;
        let pending = m.pending_ops();
        let failed = m.failed_ops();
        let lag_ms = m.oldest_pending_ms.load(Ordering::Relaxed);
        let mut st = RoleStatus::new("objects", role);
        st.health = if failed > 0 {
            HealthStatus::Unhealthy
        } else {
            HealthStatus::Healthy
        };
        st.lag_bytes = Some(m.pending_bytes());
        st.lag_seconds = Some(lag_ms as f64 / 1000.0);
        st.caught_up = pending == 0 && failed == 0 && mode == desired;
        // Object replicas never block a promotion: what the standby lacks is listed
        // by the old active region's pending rows and sent when it can.
        st.ready_to_promote = mode != Mode::Unassigned;
        st.detail = format!(
            "{} ({}): {pending} pending ({} bytes), {failed} failed, oldest pending {:.1}s",
            mode.as_str(),
            inner.source.describe,
            m.pending_bytes(),
            lag_ms as f64 / 1000.0
        );
        st.metrics.insert("pending_ops".into(), pending as f64);
        st.metrics
            .insert("pending_bytes".into(), m.pending_bytes() as f64);
        st.metrics.insert("failed_ops".into(), failed as f64);
        st.metrics
            .insert("replicated_total".into(), m.replicated() as f64);
        st
    }

    async fn fence(&self, epoch: Epoch) -> Result<(), RoleError> {
        // Always carried out (lifeboat_core::role: the epoch rule).
        self.inner.highest_epoch.fence(epoch);
        let inner = &self.inner;
        inner.desired.send_replace(Mode::Fenced);
        // Stop at once: the dispatcher checks the effective mode before every copy,
        // and the copies in flight are abandoned (they stay PENDING).
        inner.effective.send_replace(Mode::Fenced);
        let old = std::mem::replace(
            &mut *inner
                .fence_token
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
            CancellationToken::new(),
        );
        old.cancel();
        inner
            .db
            .set_meta("mode", Mode::Fenced.as_str())
            .map_err(|e| RoleError::Failed {
                role: "objects".into(),
                message: format!("recording the fenced mode: {e}"),
            })?;
        inner.wake.notify_waiters();
        // Writes this region took that no other region has yet: once another region is
        // active its copies may overwrite them here, so they are kept aside now
        // (docs/architecture.md, rule 4); a commanded failover waits for this fence before promoting.
        // Replication has stopped already (the fence itself): a keep-aside that fails or
        // takes too long is an alert, and the writes stay listed as unsent.
        let kept = tokio::time::timeout(KEEP_ASIDE_TIMEOUT, inner.keep_unsent(epoch)).await;
        let problem = match kept {
            Ok(Ok(_)) => None,
            Ok(Err(e)) => Some(format!("{e:#}")),
            Err(_) => Some(format!(
                "not finished within {} s",
                KEEP_ASIDE_TIMEOUT.as_secs()
            )),
        };
        if let Some(p) = problem {
            inner.emit(
                JournalKind::Alert,
                format!(
                    "could not keep the unsent object writes of region {} aside in {}: {p}; they stay listed by `lifeboat objects status` and may be overwritten by the next active region",
                    inner.region,
                    inner.keep_dir.display()
                ),
            );
        }
        Ok(())
    }

    async fn activate(&self, activation: &Activation) -> Result<(), RoleError> {
        self.check_epoch(activation.epoch)?;
        self.inner.desired.send_replace(Mode::Active);
        Ok(())
    }

    async fn follow(&self, target: &FollowTarget) -> Result<(), RoleError> {
        self.check_epoch(target.epoch)?;
        self.inner.desired.send_replace(Mode::Standby);
        Ok(())
    }
}

impl Inner {
    /// The multipart part size (and the limit for a single PUT), in bytes.
    fn part_size(&self) -> usize {
        usize::try_from(self.cfg.part_size_mib * 1024 * 1024).unwrap_or(8 << 20)
    }

    /// Copy every unsent local write out of the store into `keep_dir` (once per
    /// generation), and journal what was kept. Returns how many objects were copied.
    async fn keep_unsent(&self, epoch: Epoch) -> anyhow::Result<usize> {
        let rows = self.db.unsent_local_writes()?;
        let mut kept = Vec::new();
        let (mut kept_bytes, mut over_budget, mut over_bytes) = (0u64, 0usize, 0u64);
        for (key, generation, size) in rows {
            let path = self.keep_dir.join(format!("gen{generation}")).join(&key);
            if path.exists() {
                continue;
            }
            if kept_bytes.saturating_add(size) > KEEP_ASIDE_MAX_BYTES {
                over_budget += 1;
                over_bytes = over_bytes.saturating_add(size);
                continue;
            }
            kept_bytes += size;
            // The same streamed, verified copy as replication, into a local store.
            let gen_dir = self.keep_dir.join(format!("gen{generation}"));
            let keep = Store::open(&StoreConfig::local(&gen_dir))?;
            match transfer::copy_object(
                &self.source,
                &keep,
                &object_key(&key),
                self.part_size(),
                true,
            )
            .await
            {
                Ok(_) => {}
                // Deleted since: there is nothing left to keep.
                Err(TransferError::SourceGone(_)) => continue,
                Err(e) => return Err(e).with_context(|| format!("keeping {key} aside")),
            }
            kept.push((key, generation, size, path));
        }
        if over_budget > 0 {
            self.emit(
                JournalKind::Alert,
                format!(
                    "{over_budget} unsent object write(s) of region {} ({over_bytes} bytes) were not kept aside at the fence (over the {KEEP_ASIDE_MAX_BYTES}-byte budget): they stay listed by `lifeboat objects status` and may be overwritten by the next active region",
                    self.region
                ),
            );
        }
        if kept.is_empty() {
            return Ok(0);
        }
        let now = db::now_ms();
        let mut index = String::new();
        for (key, generation, size, path) in &kept {
            index.push_str(&serde_json::json!({
                "key": key, "generation": generation, "size": size,
                "path": path.display().to_string(), "fenced_at_epoch": epoch.0, "kept_at_unix_ms": now,
            }).to_string());
            index.push('\n');
        }
        let index_path = self.keep_dir.join("index.jsonl");
        let mut f = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&index_path)
            .await
            .with_context(|| format!("opening {}", index_path.display()))?;
        tokio::io::AsyncWriteExt::write_all(&mut f, index.as_bytes())
            .await
            .with_context(|| format!("writing {}", index_path.display()))?;
        f.sync_all().await?;
        let names: Vec<&str> = kept.iter().take(5).map(|k| k.0.as_str()).collect();
        let more = kept.len().saturating_sub(names.len());
        self.emit(
            JournalKind::DivergenceSaved,
            format!(
                "{} object write(s) of region {} not yet replicated when it was fenced at epoch {epoch} were kept in {} ({}{}): the next active region may overwrite them in this store",
                kept.len(),
                self.region,
                self.keep_dir.display(),
                names.join(", "),
                if more > 0 { format!(" and {more} more") } else { String::new() }
            ),
        );
        tracing::warn!(region = %self.region, kept = kept.len(), dir = %self.keep_dir.display(), "unsent object writes kept aside at the fence");
        Ok(kept.len())
    }

    fn emit(&self, kind: JournalKind, detail: String) {
        let _ = self.events.send(ObjectEvent {
            kind,
            region: self.region.clone(),
            detail,
        });
    }

    fn rule_for(&self, key: &str) -> Option<&RuleConfig> {
        self.rules.iter().find(|r| key.starts_with(&r.prefix))
    }

    /// The prefixes to list so that every rule's keys are seen (segment-aligned, as
    /// object_store lists by path segment).
    fn list_prefixes(&self) -> Vec<Option<ObjectPath>> {
        let mut out: Vec<Option<ObjectPath>> = Vec::new();
        for r in &self.rules {
            let dir = match r.prefix.rfind('/') {
                Some(i) => &r.prefix[..i],
                None => "",
            };
            if dir.is_empty() {
                return vec![None];
            }
            let p = Some(ObjectPath::from(dir));
            if !out.contains(&p) {
                out.push(p);
            }
        }
        out
    }

    fn refresh_gauges(&self) {
        match self.db.counts() {
            Ok(c) => {
                let m = &self.metrics;
                m.ops_pending.store(c.pending_ops, Ordering::Relaxed);
                m.bytes_pending.store(c.pending_bytes, Ordering::Relaxed);
                m.ops_failed.store(c.failed_ops, Ordering::Relaxed);
                m.backfill_total.store(c.backfill_total, Ordering::Relaxed);
                m.backfill_done.store(c.backfill_done, Ordering::Relaxed);
                let age = c
                    .oldest_pending_ms
                    .map_or(0, |t| u64::try_from(db::now_ms() - t).unwrap_or(0));
                m.oldest_pending_ms.store(age, Ordering::Relaxed);
            }
            Err(e) => tracing::warn!(error = %e, "reading replication counts"),
        }
    }

    /// What an object seen now means under `mode` (the mode it arrived under).
    fn present(
        &self,
        key: String,
        size: u64,
        etag: Option<String>,
        mode: Mode,
        backfill_scan: Option<bool>,
    ) -> Observation {
        let local = mode == Mode::Active;
        let rule = self.rule_for(&key);
        let push = match (local, rule, backfill_scan) {
            (false, _, _) | (_, None, _) => false,
            // The first scan of a store: existing objects go only where backfill is on.
            (true, Some(r), Some(true)) => r.backfill,
            (true, Some(_), _) => true,
        };
        Observation::Present {
            key,
            size,
            etag,
            origin: if local { db::LOCAL } else { db::REPLICA },
            push_to: if push {
                self.dests.keys().cloned().collect()
            } else {
                Vec::new()
            },
            backfill: backfill_scan == Some(true),
        }
    }

    fn absent(&self, key: String, mode: Mode) -> Observation {
        let delete =
            mode == Mode::Active && self.rule_for(&key).is_some_and(|r| r.delete_replication);
        Observation::Absent {
            key,
            delete_from: if delete {
                self.dests.keys().cloned().collect()
            } else {
                Vec::new()
            },
        }
    }

    fn apply(&self, batch: &[Observation]) -> anyhow::Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let n = self
            .db
            .apply(batch, db::now_ms())
            .context("recording observed changes")?;
        if n > 0 {
            self.wake.notify_one();
        }
        Ok(())
    }

    /// List a prefix of the source store with paged listing, resuming after the last
    /// key seen (list_with_offset) when a page fails.
    async fn list_source(
        &self,
        prefix: Option<&ObjectPath>,
        f: &mut (dyn FnMut(object_store::ObjectMeta) + Send),
    ) -> anyhow::Result<()> {
        let mut last: Option<ObjectPath> = None;
        let mut failures = 0;
        loop {
            let mut stream = match &last {
                None => self.source.inner.list(prefix),
                Some(offset) => self.source.inner.list_with_offset(prefix, offset),
            };
            let mut failed = None;
            while let Some(item) = stream.next().await {
                match item {
                    Ok(meta) => {
                        last = Some(meta.location.clone());
                        f(meta);
                    }
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            match failed {
                None => return Ok(()),
                Some(e) => {
                    failures += 1;
                    if failures > 3 {
                        return Err(e).with_context(|| format!("listing {}", self.source.describe));
                    }
                    tracing::warn!(error = %e, store = %self.source.describe, "listing failed; resuming after the last key");
                    tokio::time::sleep(Duration::from_millis(200 * failures)).await;
                }
            }
        }
    }

    /// Compare the whole source store with what was last seen, and record every
    /// difference as having happened under `mode`.
    async fn reconcile_source(&self, mode: Mode) -> anyhow::Result<()> {
        let start = db::now_ms();
        let first_scan = self.db.get_meta("scanned")?.is_none();
        let seen = self.db.seen_objects()?;
        let mut listed: HashSet<String> = HashSet::with_capacity(seen.len());
        let mut batch = Vec::new();
        for prefix in self.list_prefixes() {
            let mut found = Vec::new();
            self.list_source(prefix.as_ref(), &mut |meta| found.push(meta))
                .await?;
            for meta in found {
                let key = meta.location.to_string();
                if self.rule_for(&key).is_none() || !listed.insert(key.clone()) {
                    continue;
                }
                let unchanged = seen
                    .get(&key)
                    .is_some_and(|(s, _)| s.size == meta.size && s.etag == meta.e_tag);
                if !unchanged {
                    batch.push(self.present(key, meta.size, meta.e_tag, mode, Some(first_scan)));
                    if batch.len() >= 1000 {
                        self.apply(&batch)?;
                        batch.clear();
                    }
                }
            }
        }
        for (key, (_, updated_ms)) in seen {
            // A row written after this listing started may be newer than the listing.
            if !listed.contains(&key) && updated_ms < start {
                batch.push(self.absent(key, mode));
            }
        }
        self.apply(&batch)?;
        if first_scan {
            self.db.set_meta("scanned", "1")?;
        }
        Ok(())
    }

    /// Look at one key (a hint).
    async fn observe_key(
        &self,
        key: &ObjectPath,
        mode: Mode,
    ) -> anyhow::Result<Option<Observation>> {
        let k = key.to_string();
        if self.rule_for(&k).is_none() {
            return Ok(None);
        }
        let seen = self.db.seen_object(&k)?;
        match self.source.inner.head(key).await {
            Ok(meta) => {
                if seen.is_some_and(|s| s.size == meta.size && s.etag == meta.e_tag) {
                    return Ok(None);
                }
                Ok(Some(self.present(k, meta.size, meta.e_tag, mode, None)))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(seen.map(|_| self.absent(k, mode))),
            Err(e) => {
                Err(e).with_context(|| format!("looking at {key} in {}", self.source.describe))
            }
        }
    }

    async fn observe_prefix(&self, prefix: &ObjectPath, mode: Mode) -> anyhow::Result<()> {
        let mut found = Vec::new();
        self.list_source(Some(prefix), &mut |meta| found.push(meta))
            .await?;
        let mut batch = Vec::new();
        for meta in found {
            let key = meta.location.to_string();
            if self.rule_for(&key).is_none() {
                continue;
            }
            let seen = self.db.seen_object(&key)?;
            if !seen.is_some_and(|s| s.size == meta.size && s.etag == meta.e_tag) {
                batch.push(self.present(key, meta.size, meta.e_tag, mode, None));
            }
        }
        self.apply(&batch)
    }

    /// While active: list every destination and copy again whatever no longer matches
    /// the verified copy (missing, other size, other e_tag).
    async fn check_destinations(&self) -> anyhow::Result<()> {
        for (dest, store) in &self.dests {
            let completed = self.db.completed_copies(dest)?;
            if completed.is_empty() {
                continue;
            }
            let mut present: HashMap<String, object_store::ObjectMeta> = HashMap::new();
            for prefix in self.list_prefixes() {
                let mut stream = store.inner.list(prefix.as_ref());
                while let Some(item) = stream.next().await {
                    let meta = item.with_context(|| format!("listing {}", store.describe))?;
                    present.insert(meta.location.to_string(), meta);
                }
            }
            let mut changed = Vec::new();
            for (key, copy) in &completed {
                let ok = present.get(key).is_some_and(|m| {
                    m.size == copy.size
                        && match (&copy.dest_etag, &m.e_tag) {
                            (Some(a), Some(b)) => a.trim_matches('"') == b.trim_matches('"'),
                            _ => true,
                        }
                });
                if !ok {
                    changed.push(key.clone());
                }
            }
            if !changed.is_empty() {
                let n = self.db.requeue(
                    &changed,
                    dest,
                    "the copy at the destination changed or vanished; copying again",
                    db::now_ms(),
                )?;
                self.metrics.repaired_total.fetch_add(n, Ordering::Relaxed);
                tracing::warn!(region = %self.region, dest = %dest, count = n, "destination copies changed or missing: copying again");
                self.emit(
                    JournalKind::Info,
                    format!("{n} object copies at region {dest} changed or vanished and are copied again"),
                );
                self.wake.notify_one();
            }
        }
        Ok(())
    }

    fn enqueue_backfill(&self) -> anyhow::Result<()> {
        let dests: Vec<String> = self.dests.keys().cloned().collect();
        let n = self.db.enqueue_backfill(
            &dests,
            &|key| self.rule_for(key).is_some_and(|r| r.backfill),
            db::now_ms(),
        )?;
        if n > 0 {
            tracing::info!(region = %self.region, enqueued = n, "backfill enqueued");
            self.wake.notify_one();
        }
        Ok(())
    }

    fn backoff(&self, attempts: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempts.min(20));
        self.cfg
            .retry_initial
            .saturating_mul(factor)
            .min(self.cfg.retry_max)
    }
}

/// The observer task: change hints, periodic reconciliation, mode transitions.
async fn observe(
    inner: Arc<Inner>,
    mut hints: mpsc::UnboundedReceiver<Change>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let mut desired = inner.desired.subscribe();
    // Wait for a role: until then nobody knows whether what is in the store is ours.
    loop {
        if *desired.borrow_and_update() != Mode::Unassigned {
            break;
        }
        tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            r = desired.changed() => if r.is_err() { return Ok(()) },
        }
    }
    let mut watcher: Option<FsWatcher> = match &inner.source.local_root {
        Some(root) => match FsWatcher::new(root) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "no directory watcher; relying on periodic reconciliation");
                None
            }
        },
        None => None,
    };
    // Changes made while lifeboat was not running happened under the last mode. With
    // no last mode (a new state database), what the store holds predates lifeboat: it
    // is this region's own data, never a replica — even though the agent's first word
    // is a fence (no lease yet at start-up). It is pushed once the region is active.
    // (`fence` records its mode before the observer first runs, so "never observed"
    // is what marks a new state database, not a missing mode.)
    let last = inner.db.get_meta("mode")?.map(|m| Mode::parse(&m));
    let never_observed = inner.db.get_meta("observed")?.is_none();
    let target = *desired.borrow();
    let offline_mode = if never_observed {
        Mode::Active
    } else {
        last.unwrap_or(target)
    };
    transition(&inner, offline_mode, target).await?;
    inner.db.set_meta("observed", "1")?;

    let mut tick = tokio::time::interval(inner.cfg.reconcile_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        let mode = *inner.effective.borrow();
        tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            r = desired.changed() => {
                if r.is_err() { return Ok(()); }
                let target = *desired.borrow_and_update();
                if let Err(e) = transition(&inner, mode, target).await {
                    tracing::error!(error = %format!("{e:#}"), "object replication role change failed; retrying at the next reconcile");
                }
            }
            batch = next_hints(&mut watcher) => {
                match batch {
                    Some(batch) => handle_hints(&inner, batch, mode).await,
                    None => watcher = None,
                }
            }
            Some(first) = hints.recv() => {
                let mut batch = vec![first];
                while let Ok(more) = hints.try_recv() { batch.push(more); }
                handle_hints(&inner, batch, mode).await;
            }
            _ = tick.tick() => {
                let target = *desired.borrow();
                if target != mode {
                    if let Err(e) = transition(&inner, mode, target).await {
                        tracing::error!(error = %format!("{e:#}"), "object replication role change failed");
                    }
                    continue;
                }
                let mut complete = true;
                if let Err(e) = inner.reconcile_source(mode).await {
                    tracing::warn!(error = %format!("{e:#}"), region = %inner.region, "reconciling the source store failed");
                    complete = false;
                }
                if mode == Mode::Active
                    && let Err(e) = inner.check_destinations().await
                {
                    tracing::warn!(error = %format!("{e:#}"), region = %inner.region, "checking destination copies failed");
                    complete = false;
                }
                if complete {
                    inner.metrics.reconciles_total.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
    }
}

async fn next_hints(watcher: &mut Option<FsWatcher>) -> Option<Vec<Change>> {
    match watcher {
        Some(w) => w.next().await,
        None => std::future::pending().await,
    }
}

async fn handle_hints(inner: &Inner, batch: Vec<Change>, mode: Mode) {
    let mut keys: Vec<ObjectPath> = Vec::new();
    let mut prefixes = Vec::new();
    let mut rescan = false;
    for c in batch {
        match c {
            Change::Key(k) => {
                if !keys.contains(&k) {
                    keys.push(k);
                }
            }
            Change::Prefix(p) => prefixes.push(p),
            Change::Rescan => rescan = true,
        }
    }
    if rescan {
        if let Err(e) = inner.reconcile_source(mode).await {
            tracing::warn!(error = %format!("{e:#}"), "rescanning the source store failed");
        }
        return;
    }
    let mut observations = Vec::new();
    for k in &keys {
        match inner.observe_key(k, mode).await {
            Ok(Some(o)) => observations.push(o),
            Ok(None) => {}
            Err(e) => tracing::debug!(error = %format!("{e:#}"), "change hint"),
        }
    }
    if let Err(e) = inner.apply(&observations) {
        tracing::error!(error = %format!("{e:#}"), "recording changes failed");
    }
    for p in prefixes {
        if let Err(e) = inner.observe_prefix(&p, mode).await {
            tracing::debug!(error = %format!("{e:#}"), "change hint (prefix)");
        }
    }
}

/// Move from `from` to `to`. Becoming active first finishes observing what arrived
/// under the old mode, so replicas are never mistaken for local writes.
async fn transition(inner: &Inner, from: Mode, to: Mode) -> anyhow::Result<()> {
    match to {
        Mode::Active => {
            let observe_as = if from == Mode::Active {
                Mode::Active
            } else {
                Mode::Standby
            };
            inner.reconcile_source(observe_as).await?;
            *inner
                .fence_token
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = CancellationToken::new();
            inner.db.set_meta("mode", Mode::Active.as_str())?;
            inner.effective.send_replace(Mode::Active);
            inner.enqueue_backfill()?;
            if let Err(e) = inner.check_destinations().await {
                tracing::warn!(error = %format!("{e:#}"), "checking destination copies failed");
            }
            tracing::info!(region = %inner.region, "object replication active: pushing to {:?}", inner.dests.keys().collect::<Vec<_>>());
        }
        Mode::Standby | Mode::Fenced => {
            inner.effective.send_replace(to);
            inner.db.set_meta("mode", to.as_str())?;
            // Whatever changed while lifeboat was down, seen now, arrived as a replica
            // unless this region was active then.
            inner
                .reconcile_source(if from == Mode::Active {
                    Mode::Active
                } else {
                    to
                })
                .await?;
            tracing::info!(region = %inner.region, mode = to.as_str(), "object replication receives only");
        }
        Mode::Unassigned => {}
    }
    inner.wake.notify_one();
    Ok(())
}

enum Outcome {
    Copied(transfer::Copied),
    Deleted,
    Failed(TransferError),
    Abandoned,
}

/// The dispatcher: copy due rows while active. With `until_drained`, return once
/// nothing is in flight and nothing is due (retries in backoff count as not due).
async fn dispatch(
    inner: Arc<Inner>,
    cancel: CancellationToken,
    until_drained: bool,
) -> anyhow::Result<()> {
    let mut effective = inner.effective.subscribe();
    let mut inflight: HashSet<(String, String)> = HashSet::new();
    let mut tasks: JoinSet<(Target, Outcome)> = JoinSet::new();
    let part_size = inner.part_size();
    // Large copies buffer up to a few parts each: bound how many run at once.
    let large = Arc::new(tokio::sync::Semaphore::new(4));
    let mut last_gauges = tokio::time::Instant::now();
    loop {
        let active = *effective.borrow_and_update() == Mode::Active;
        let mut due_now = 0;
        if active && inflight.len() < inner.cfg.concurrency {
            let room = inner.cfg.concurrency - inflight.len();
            // A database error must not end replication: log it and try again soon
            // (nothing is lost: the rows stay PENDING).
            let due = match inner.db.due(db::now_ms(), room + inflight.len()) {
                Ok(due) => due,
                Err(e) => {
                    tracing::error!(error = %e, region = %inner.region, "reading due transfers failed; retrying");
                    tokio::select! {
                        () = cancel.cancelled() => return Ok(()),
                        () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            };
            due_now = due.len();
            let fence = inner
                .fence_token
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone();
            for t in due {
                if inflight.len() >= inner.cfg.concurrency {
                    break;
                }
                if !inflight.insert((t.key.clone(), t.dest.clone())) {
                    continue;
                }
                let inner = inner.clone();
                let fence = fence.clone();
                let large = large.clone();
                tasks.spawn(async move {
                    let outcome = tokio::select! {
                        () = fence.cancelled() => Outcome::Abandoned,
                        // A panic in one transfer must not leave its key marked in flight.
                        o = std::panic::AssertUnwindSafe(run_one(&inner, &t, part_size, &large)).catch_unwind() => {
                            o.unwrap_or_else(|_| Outcome::Failed(TransferError::Store {
                                context: format!("copying {}", t.key),
                                source: object_store::Error::Generic {
                                    store: "lifeboat",
                                    source: "the transfer task panicked".into(),
                                },
                            }))
                        }
                    };
                    (t, outcome)
                });
            }
        }
        if last_gauges.elapsed() > Duration::from_millis(250) {
            inner.refresh_gauges();
            last_gauges = tokio::time::Instant::now();
        }
        if until_drained && tasks.is_empty() && due_now == 0 {
            inner.refresh_gauges();
            return Ok(());
        }
        tokio::select! {
            () = cancel.cancelled() => {
                tasks.shutdown().await;
                inner.refresh_gauges();
                return Ok(());
            }
            Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                // Take every transfer that has finished by now: one commit for all.
                let mut batch = Vec::new();
                let mut next = Some(joined);
                while let Some(joined) = next {
                    match joined {
                        Ok((t, outcome)) => {
                            inflight.remove(&(t.key.clone(), t.dest.clone()));
                            batch.push((t, outcome));
                        }
                        Err(e) => tracing::error!(error = %e, "a transfer task failed"),
                    }
                    next = tasks.try_join_next();
                }
                if let Err(e) = record(&inner, batch) {
                    // The rows stay PENDING and are copied again: logged, not fatal.
                    tracing::error!(error = %format!("{e:#}"), region = %inner.region, "recording finished transfers failed");
                }
            }
            () = inner.wake.notified() => {}
            _ = effective.changed() => {}
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
}

async fn run_one(
    inner: &Inner,
    t: &Target,
    part_size: usize,
    large: &tokio::sync::Semaphore,
) -> Outcome {
    let Some(dst) = inner.dests.get(&t.dest) else {
        return Outcome::Failed(TransferError::SourceGone(format!(
            "no store for region {}",
            t.dest
        )));
    };
    let key = object_key(&t.key);
    match t.op {
        Op::Put => {
            let _permit = if usize::try_from(t.size).is_ok_and(|s| s > part_size) {
                large.acquire().await.ok()
            } else {
                None
            };
            match transfer::copy_object(&inner.source, dst, &key, part_size, inner.cfg.verify).await
            {
                Ok(c) => Outcome::Copied(c),
                Err(e) => Outcome::Failed(e),
            }
        }
        Op::Delete => {
            match transfer::delete_object(dst.inner.as_ref(), &dst.describe, &key).await {
                Ok(()) => Outcome::Deleted,
                Err(e) => Outcome::Failed(e),
            }
        }
    }
}

/// Record a batch of finished transfers: one database transaction, then metrics,
/// logs and events.
fn record(inner: &Inner, batch: Vec<(Target, Outcome)>) -> anyhow::Result<()> {
    let now = db::now_ms();
    let m = &inner.metrics;
    let mut rows: Vec<(Target, Finish)> = Vec::with_capacity(batch.len());
    for (t, outcome) in batch {
        let finish = match outcome {
            Outcome::Abandoned => continue,
            Outcome::Copied(c) => Finish::Copied {
                checksum: c.checksum,
                dest_etag: c.dest_etag,
                size: c.size,
            },
            Outcome::Deleted => Finish::Deleted,
            Outcome::Failed(TransferError::SourceGone(what)) => {
                tracing::debug!(key = %t.key, "source gone before copy: {what}");
                let _ = inner.hints_tx.send(Change::Key(object_key(&t.key)));
                Finish::Dropped
            }
            Outcome::Failed(e) => {
                m.failures_total.fetch_add(1, Ordering::Relaxed);
                let attempts = t.attempts + 1;
                let terminal = e.is_permanent()
                    || (matches!(e, TransferError::ChecksumMismatch { .. })
                        && attempts >= inner.cfg.max_attempts);
                let delay = inner.backoff(t.attempts);
                let msg = e.to_string();
                if terminal {
                    tracing::error!(region = %inner.region, key = %t.key, dest = %t.dest, error = %msg, "object replication FAILED");
                    inner.emit(
                        JournalKind::Alert,
                        format!(
                            "replication of {} to region {} FAILED: {msg}",
                            t.key, t.dest
                        ),
                    );
                } else {
                    tracing::warn!(region = %inner.region, key = %t.key, dest = %t.dest, attempts, retry_in = ?delay, error = %msg, "object replication attempt failed");
                }
                Finish::Failed {
                    error: msg,
                    terminal,
                    next_ms: now + i64::try_from(delay.as_millis()).unwrap_or(i64::MAX),
                }
            }
        };
        rows.push((t, finish));
    }
    let applied = inner
        .db
        .finish(&rows, now)
        .context("recording finished transfers")?;
    for ((t, f), applied) in rows.iter().zip(applied) {
        if !applied {
            continue;
        }
        match f {
            Finish::Copied { size, .. } => {
                m.replicated_total.fetch_add(1, Ordering::Relaxed);
                m.bytes_replicated_total.fetch_add(*size, Ordering::Relaxed);
                observe_latency(inner, t, now);
            }
            Finish::Deleted => {
                m.deleted_total.fetch_add(1, Ordering::Relaxed);
                observe_latency(inner, t, now);
            }
            Finish::Dropped | Finish::Failed { .. } => {}
        }
    }
    Ok(())
}

fn observe_latency(inner: &Inner, t: &Target, now: i64) {
    let ms = u64::try_from(now - t.detected_ms).unwrap_or(0);
    let d = Duration::from_millis(ms);
    inner.metrics.observe_latency(d);
    if d > inner.cfg.latency_alert && !t.backfill {
        inner
            .metrics
            .latency_alerts_total
            .fetch_add(1, Ordering::Relaxed);
        inner.emit(
            JournalKind::Alert,
            format!(
                "object {} reached region {} after {:.1}s (latency_alert {:.1}s)",
                t.key,
                t.dest,
                d.as_secs_f64(),
                inner.cfg.latency_alert.as_secs_f64()
            ),
        );
    }
}

/// The object_store path of a key as recorded (recorded keys are object_store's own
/// `Path` strings, so parsing them back is exact).
fn object_key(key: &str) -> ObjectPath {
    ObjectPath::parse(key).unwrap_or_else(|_| ObjectPath::from(key))
}
