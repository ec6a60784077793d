//! The replicator of one region: observes its store, records every change durably,
//! and — while its region is the active one — pushes changes to every other region.
//!
//! Two tasks share the state database (each in a file of its own under `replicator/`;
//! this file holds the replicator, its `DataRole` and the state they share):
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

use crate::db::{self, Db};
use crate::metrics::ObjectMetrics;
use crate::source::Change;
use crate::store::Store;
use crate::transfer::{self, TransferError};
use anyhow::Context as _;
use lifeboat_config::objects::{ObjectsConfig, RuleConfig, StoreConfig};
use lifeboat_core::{
    Activation, DataRole, Epoch, FollowTarget, HealthStatus, JournalKind, RegionId, RoleError,
    RoleHealth, RoleStatus, SharedRole,
};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, broadcast, mpsc, watch};
use tokio_util::sync::CancellationToken;

mod dispatcher;
mod gateway;
mod lifecycle;
mod observer;

pub use gateway::Gateway;

use dispatcher::dispatch;
use observer::observe;

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
/// How long a fence waits for the gateway writes it found in flight.
const GATEWAY_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
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
    /// The active region this one was last told to follow: a new state database's first
    /// look compares the store with that region's copies.
    following: Mutex<Option<RegionId>>,
    /// Held shared by each gateway write from its mode check to its record, taken
    /// exclusively by `fence`: once a fence returns, no gateway write is in flight.
    write_gate: tokio::sync::RwLock<()>,
    /// Entries the listings of this pass could not name as keys (reported by status).
    unlisted: Mutex<Vec<String>>,
    /// The S3 store's bucket got this region's lifecycle rules (once per start).
    lifecycle_applied: std::sync::atomic::AtomicBool,
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
            following: Mutex::new(None),
            write_gate: tokio::sync::RwLock::new(()),
            lifecycle_applied: std::sync::atomic::AtomicBool::new(false),
            unlisted: Mutex::new(Vec::new()),
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
        // Wait for the gateway writes admitted before the fence: each is recorded
        // before it lets go of the gate, so the keep-aside below sees it. New ones are
        // refused already (the mode is fenced).
        if tokio::time::timeout(GATEWAY_DRAIN_TIMEOUT, inner.write_gate.write())
            .await
            .is_err()
        {
            inner.emit(
                JournalKind::Alert,
                format!(
                    "gateway writes to region {} were still in flight {}s after the fence; they are recorded when they finish, and listed by `lifeboat objects status` if unsent",
                    inner.region,
                    GATEWAY_DRAIN_TIMEOUT.as_secs()
                ),
            );
        }
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
        *self
            .inner
            .following
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(target.active.clone());
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
        let mut unkeepable: Vec<String> = Vec::new();
        for (key, generation, size) in rows {
            // The keep directory is a local directory: a key it cannot hold byte-exact
            // (`a//b`, `/x`, `dir/`) is named in the alert instead.
            if let Err(e) = crate::store::os_path("the keep directory", &key) {
                unkeepable.push(e.to_string());
                continue;
            }
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
            match transfer::copy_object(&self.source, &keep, &key, self.part_size(), true).await {
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
        if !unkeepable.is_empty() {
            let more = unkeepable.len().saturating_sub(5);
            self.emit(
                JournalKind::Alert,
                format!(
                    "{} unsent object write(s) of region {} could not be kept aside at the fence ({}{}): they stay listed by `lifeboat objects status` and may be overwritten by the next active region",
                    unkeepable.len(),
                    self.region,
                    unkeepable.iter().take(5).cloned().collect::<Vec<_>>().join("; "),
                    if more > 0 { format!(" and {more} more") } else { String::new() }
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

    /// The prefixes to list so that every rule's keys are seen, each once: a rule's
    /// prefix that another rule's prefix covers is not listed again.
    fn list_prefixes(&self) -> Vec<String> {
        let mut all: Vec<&str> = self.rules.iter().map(|r| r.prefix.as_str()).collect();
        all.sort_unstable();
        let mut out: Vec<String> = Vec::new();
        for p in all {
            if !out.iter().any(|o| p.starts_with(o.as_str())) {
                out.push(p.to_owned());
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

    fn backoff(&self, attempts: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempts.min(20));
        self.cfg
            .retry_initial
            .saturating_mul(factor)
            .min(self.cfg.retry_max)
    }
}
