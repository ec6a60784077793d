//! Lifecycle rules for cost (`[[objects.lifecycle]]`): each rule names one region's
//! store and acts on that store only.
//!
//! - An S3-API store gets the rules as its bucket's own lifecycle configuration
//!   (PutBucketLifecycleConfiguration, once per start): S3 expires, drops
//!   noncurrent versions and aborts incomplete uploads itself.
//! - Other stores (local directories, GCS, Azure) are swept by their region's
//!   replicator at every reconcile: objects under the prefix last modified before
//!   the rule's age are deleted (each one looked at again just before).
//! - Expiry is not a write: it is never replicated as a delete (as with S3 CRR), and
//!   a copy another region's lifecycle expired is not copied there again (its row
//!   becomes EXPIRED) — until the object changes at the source.

use super::Inner;
use crate::db::{self, Observation};
use crate::s3::LifecycleXmlRule;
use crate::store::{Backend, Meta};
use anyhow::Context as _;
use lifeboat_config::objects::LifecycleRule;
use lifeboat_core::JournalKind;
use std::sync::atomic::Ordering;

const DAY_MS: i64 = 86_400_000;

impl Inner {
    fn lifecycle_of<'a>(&'a self, store: &'a str) -> impl Iterator<Item = &'a LifecycleRule> {
        self.cfg.lifecycle.iter().filter(move |r| r.store == store)
    }

    /// How old (ms) an object under `key` may get in region `store`'s store before its
    /// lifecycle expires it (the shortest rule that covers the key).
    pub(super) fn expiry_ms(&self, store: &str, key: &str) -> Option<i64> {
        self.lifecycle_of(store)
            .filter(|r| key.starts_with(&r.prefix))
            .filter_map(|r| r.expire_after_days)
            .min()
            .map(|d| i64::from(d) * DAY_MS)
    }

    /// Apply the rules of this region's own store (see the module documentation).
    pub(super) async fn apply_lifecycle(&self) -> anyhow::Result<()> {
        let rules: Vec<&LifecycleRule> = self.lifecycle_of(self.region.as_str()).collect();
        if rules.is_empty() {
            return Ok(());
        }
        match &self.source.backend {
            Backend::S3(client) => {
                if self.lifecycle_applied.load(Ordering::Relaxed) {
                    return Ok(());
                }
                let xml: Vec<LifecycleXmlRule> = rules
                    .iter()
                    .enumerate()
                    .map(|(i, r)| LifecycleXmlRule {
                        id: format!("lifeboat-{i}"),
                        prefix: r.prefix.clone(),
                        expire_after_days: r.expire_after_days,
                        noncurrent_expire_after_days: r.noncurrent_expire_after_days,
                        abort_incomplete_multipart_after_days: r
                            .abort_incomplete_multipart_after_days,
                    })
                    .collect();
                client.put_lifecycle(&xml).await.with_context(|| {
                    format!(
                        "setting the lifecycle rules of {} (objects.lifecycle)",
                        self.source.describe
                    )
                })?;
                self.lifecycle_applied.store(true, Ordering::Relaxed);
                tracing::info!(region = %self.region, store = %self.source.describe, rules = xml.len(), "lifecycle rules set on the bucket");
                Ok(())
            }
            Backend::Os(_) => self.sweep(&rules).await,
        }
    }

    /// Delete what the rules expire from this region's own (non-S3) store.
    async fn sweep(&self, rules: &[&LifecycleRule]) -> anyhow::Result<()> {
        let now = db::now_ms();
        let (mut expired, mut bytes) = (0u64, 0u64);
        for rule in rules {
            let Some(days) = rule.expire_after_days else {
                continue;
            };
            let cutoff = now - i64::from(days) * DAY_MS;
            let mut old: Vec<Meta> = Vec::new();
            self.list_source(&rule.prefix, &mut |m| {
                if m.modified_ms.is_some_and(|t| t < cutoff) {
                    old.push(m);
                }
            })
            .await?;
            let mut gone = Vec::new();
            for m in old {
                // Looked at again just before: a write since the listing is not old.
                match self.source.head(&m.key).await {
                    Ok(Some(now_m))
                        if now_m.etag == m.etag
                            && now_m.modified_ms.is_some_and(|t| t < cutoff) => {}
                    _ => continue,
                }
                self.source
                    .delete(&m.key)
                    .await
                    .with_context(|| format!("expiring {} in {}", m.key, self.source.describe))?;
                expired += 1;
                bytes += m.size;
                // Forgotten, not a delete to replicate.
                gone.push(Observation::Absent {
                    key: m.key,
                    delete_from: Vec::new(),
                });
            }
            self.apply(&gone)?;
        }
        if expired > 0 {
            self.metrics
                .expired_total
                .fetch_add(expired, Ordering::Relaxed);
            tracing::info!(region = %self.region, expired, bytes, "lifecycle: expired objects deleted");
            self.emit(
                JournalKind::Info,
                format!(
                    "lifecycle: {expired} object(s) ({bytes} bytes) expired in region {}'s store ({})",
                    self.region, self.source.describe
                ),
            );
        }
        Ok(())
    }

    /// Of `missing` (copies no longer at `dest`), those `dest`'s lifecycle expired:
    /// the source object is older than the rule's age there.
    pub(super) async fn expired_at(&self, dest: &str, missing: &[String]) -> Vec<String> {
        let now = db::now_ms();
        let mut out = Vec::new();
        for key in missing {
            let Some(age) = self.expiry_ms(dest, key) else {
                continue;
            };
            if let Ok(Some(m)) = self.source.head(key).await
                && m.modified_ms.is_some_and(|t| t < now - age)
            {
                out.push(key.clone());
            }
        }
        out
    }
}
