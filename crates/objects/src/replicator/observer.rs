//! The observer: turns change hints and periodic listings of the region's store into
//! rows of the state database (LOCAL while active, REPLICA while standby), checks the
//! destinations' copies while active, and runs mode transitions (a standby finishes
//! observing what arrived before it becomes active).

use crate::db::{self, Observation};
use crate::source::{Change, ChangeSource, FsWatcher};
use crate::store::{Meta, StoreError};
use crate::transfer;
use anyhow::Context as _;
use futures::StreamExt as _;
use lifeboat_core::{JournalKind, RegionId};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Inner, Mode};

impl Inner {
    /// What an object seen now means under `mode` (the mode it arrived under).
    pub(super) fn present(
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
            compared_at: None,
        }
    }

    pub(super) fn absent(&self, key: String, mode: Mode) -> Observation {
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

    pub(super) fn apply(&self, batch: &[Observation]) -> anyhow::Result<()> {
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
    pub(super) async fn list_source(
        &self,
        prefix: &str,
        f: &mut (dyn FnMut(Meta) + Send),
    ) -> anyhow::Result<()> {
        let mut last: Option<String> = None;
        let mut failures = 0;
        loop {
            let mut stream = self.source.list(prefix, last.clone());
            let mut failed: Option<StoreError> = None;
            while let Some(item) = stream.next().await {
                match item {
                    Ok(meta) => {
                        last = Some(meta.key.clone());
                        f(meta);
                    }
                    // One entry that cannot be named stops nothing: reported, skipped.
                    Err(e @ StoreError::Unlistable { .. }) => {
                        tracing::warn!(error = %e, "an entry of the store cannot be listed as a key");
                        let mut u = self
                            .unlisted
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner);
                        if u.len() < 1000 {
                            u.push(e.to_string());
                        }
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
    pub(super) async fn reconcile_source(&self, mode: Mode) -> anyhow::Result<()> {
        let start = db::now_ms();
        let first_scan = self.db.get_meta("scanned")?.is_none();
        let seen = self.db.seen_objects()?;
        let mut listed: HashSet<String> = HashSet::with_capacity(seen.len());
        let mut stored = 0u64;
        self.unlisted
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
        let mut batch = Vec::new();
        for prefix in self.list_prefixes() {
            let mut found = Vec::new();
            self.list_source(&prefix, &mut |meta| found.push(meta))
                .await?;
            for meta in found {
                let key = meta.key;
                if self.rule_for(&key).is_none() || !listed.insert(key.clone()) {
                    continue;
                }
                stored += meta.size;
                let unchanged = seen
                    .get(&key)
                    .is_some_and(|(s, _)| s.size == meta.size && s.etag == meta.etag);
                if !unchanged {
                    batch.push(compared_at(
                        self.present(key, meta.size, meta.etag, mode, Some(first_scan)),
                        start,
                    ));
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
                // Gone past the age a lifecycle rule of this store gives it: the
                // bucket's own lifecycle expired it, which is not a delete to replicate.
                let expired = self
                    .expiry_ms(self.region.as_str(), &key)
                    .is_some_and(|age| updated_ms < start - age);
                batch.push(if expired {
                    Observation::Absent {
                        key,
                        delete_from: Vec::new(),
                    }
                } else {
                    self.absent(key, mode)
                });
            }
        }
        self.metrics
            .stored_bytes
            .store(stored, std::sync::atomic::Ordering::Relaxed);
        let unlisted = std::mem::take(
            &mut *self
                .unlisted
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        self.db
            .set_meta("unlisted", &serde_json::to_string(&unlisted)?)?;
        self.apply(&batch)?;
        if first_scan {
            self.db.set_meta("scanned", "1")?;
        }
        Ok(())
    }

    /// A new state database's first look at a standby's store, while it follows
    /// `active`: an object byte-identical (size and SHA-256) to `active`'s copy arrived
    /// from there (pushed before this replicator ever ran, or while it looks): a
    /// replica. Anything else predates lifeboat: this region's own data, pushed once it
    /// is active (backfill), as on an active region's first scan. Nothing is enqueued
    /// here: a standby pushes nothing.
    pub(super) async fn first_look(&self, active: &RegionId) -> anyhow::Result<()> {
        let theirs = self.dests.get(active.as_str());
        let (mut replicas, mut own) = (0usize, 0usize);
        let mut batch = Vec::new();
        for prefix in self.list_prefixes() {
            let mut found = Vec::new();
            self.list_source(&prefix, &mut |meta| found.push(meta))
                .await?;
            for meta in found {
                let key = meta.key.clone();
                if self.rule_for(&key).is_none() {
                    continue;
                }
                let replica = match theirs {
                    Some(store) => self.identical(store, &meta).await,
                    None => false,
                };
                if replica {
                    replicas += 1;
                } else {
                    own += 1;
                }
                batch.push(Observation::Present {
                    key,
                    size: meta.size,
                    etag: meta.etag,
                    origin: if replica { db::REPLICA } else { db::LOCAL },
                    push_to: Vec::new(),
                    backfill: false,
                    compared_at: None,
                });
                if batch.len() >= 1000 {
                    self.apply(&batch)?;
                    batch.clear();
                }
            }
        }
        self.apply(&batch)?;
        tracing::info!(
            region = %self.region,
            active = %active,
            replicas,
            own,
            "first look at the store: {replicas} object(s) identical to {active}'s copies recorded as replicas, {own} kept as this region's own"
        );
        Ok(())
    }

    /// Whether `meta`'s object in this region's store has the same bytes as `theirs`'s
    /// copy. Any failure to tell (missing there, unreadable) says no: the object stays
    /// this region's own, which loses nothing.
    async fn identical(&self, theirs: &crate::store::Store, meta: &Meta) -> bool {
        match theirs.head(&meta.key).await {
            Ok(Some(m)) if m.size == meta.size => {}
            _ => return false,
        }
        let mine = transfer::checksum_of(&self.source, &meta.key);
        let other = transfer::checksum_of(theirs, &meta.key);
        match tokio::join!(mine, other) {
            (Ok(Some((a, _, _))), Ok(Some((b, _, _)))) => a == b,
            _ => false,
        }
    }

    /// Look at one key (a hint).
    pub(super) async fn observe_key(
        &self,
        key: &str,
        mode: Mode,
    ) -> anyhow::Result<Option<Observation>> {
        let k = key.to_owned();
        if self.rule_for(&k).is_none() {
            return Ok(None);
        }
        let looked = db::now_ms();
        let seen = self.db.seen_object(&k)?;
        match self.source.head(key).await {
            Ok(Some(meta)) => {
                if seen.is_some_and(|s| s.size == meta.size && s.etag == meta.etag) {
                    return Ok(None);
                }
                Ok(Some(compared_at(
                    self.present(k, meta.size, meta.etag, mode, None),
                    looked,
                )))
            }
            Ok(None) | Err(StoreError::NotFound) => Ok(seen.map(|_| self.absent(k, mode))),
            Err(e) => {
                Err(e).with_context(|| format!("looking at {key} in {}", self.source.describe))
            }
        }
    }

    pub(super) async fn observe_prefix(&self, prefix: &str, mode: Mode) -> anyhow::Result<()> {
        let listed = db::now_ms();
        let mut found = Vec::new();
        self.list_source(prefix, &mut |meta| found.push(meta))
            .await?;
        let mut batch = Vec::new();
        for meta in found {
            let key = meta.key;
            if self.rule_for(&key).is_none() {
                continue;
            }
            let seen = self.db.seen_object(&key)?;
            if !seen.is_some_and(|s| s.size == meta.size && s.etag == meta.etag) {
                batch.push(compared_at(
                    self.present(key, meta.size, meta.etag, mode, None),
                    listed,
                ));
            }
        }
        self.apply(&batch)
    }

    /// While active: list every destination and copy again whatever no longer matches
    /// the verified copy (missing, other size, other e_tag).
    pub(super) async fn check_destinations(&self) -> anyhow::Result<()> {
        for (dest, store) in &self.dests {
            let completed = self.db.completed_copies(dest)?;
            if completed.is_empty() {
                continue;
            }
            let mut present: HashMap<String, Meta> = HashMap::new();
            for prefix in self.list_prefixes() {
                let mut stream = store.list(&prefix, None);
                while let Some(item) = stream.next().await {
                    let meta = item.with_context(|| format!("listing {}", store.describe))?;
                    present.insert(meta.key.clone(), meta);
                }
            }
            let mut changed = Vec::new();
            let mut missing = Vec::new();
            for (key, copy) in &completed {
                if !present.contains_key(key) {
                    missing.push(key.clone());
                }
                let ok = present.get(key).is_some_and(|m| {
                    m.size == copy.size
                        && match (&copy.dest_etag, &m.etag) {
                            (Some(a), Some(b)) => a.trim_matches('"') == b.trim_matches('"'),
                            _ => true,
                        }
                });
                if !ok {
                    changed.push(key.clone());
                }
            }
            // Copies the destination's own lifecycle expired stay gone.
            let expired = self.expired_at(dest, &missing).await;
            if !expired.is_empty() {
                let n = self.db.mark_expired(&expired, dest, db::now_ms())?;
                tracing::info!(region = %self.region, dest = %dest, count = n, "copies expired by the destination's lifecycle rules: not copied again");
                changed.retain(|k| !expired.contains(k));
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

    pub(super) fn enqueue_backfill(&self) -> anyhow::Result<()> {
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
}

/// `o`, compared with the state read at `at`: a record made since wins over it.
fn compared_at(mut o: Observation, at: i64) -> Observation {
    if let Observation::Present { compared_at, .. } = &mut o {
        *compared_at = Some(at);
    }
    o
}

/// The observer task: change hints, periodic reconciliation, mode transitions.
pub(super) async fn observe(
    inner: Arc<Inner>,
    mut hints: mpsc::UnboundedReceiver<Change>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let mut desired = inner.desired.subscribe();
    // Wait for a role: until then nobody knows whether what is in the store is ours.
    // A new state database waits for more: the region's part (active, or following
    // whom). A fence — the agent's first word at start-up — says neither, and what the
    // store holds may be the active region's copies, pushed before this replicator
    // ever ran.
    let never_observed = inner.db.get_meta("observed")?.is_none();
    loop {
        let target = *desired.borrow_and_update();
        let decided = if never_observed {
            matches!(target, Mode::Active | Mode::Standby)
        } else {
            target != Mode::Unassigned
        };
        if decided {
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
    let target = *desired.borrow();
    let following = inner
        .following
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let offline_mode = match (never_observed, target, following) {
        // A standby's first look: copies of the active region's objects are replicas.
        (true, Mode::Standby, Some(active)) => {
            inner.first_look(&active).await?;
            Mode::Standby
        }
        (true, _, _) => Mode::Active,
        (false, _, _) => last.unwrap_or(target),
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
                if let Err(e) = inner.apply_lifecycle().await {
                    // Tried again at the next reconcile.
                    tracing::warn!(error = %format!("{e:#}"), region = %inner.region, "applying the store's lifecycle rules failed");
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

pub(super) async fn next_hints(watcher: &mut Option<FsWatcher>) -> Option<Vec<Change>> {
    match watcher {
        Some(w) => w.next().await,
        None => std::future::pending().await,
    }
}

pub(super) async fn handle_hints(inner: &Inner, batch: Vec<Change>, mode: Mode) {
    let mut keys: Vec<String> = Vec::new();
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
pub(super) async fn transition(inner: &Inner, from: Mode, to: Mode) -> anyhow::Result<()> {
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
