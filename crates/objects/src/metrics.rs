//! Replication metrics of one region's replicator, added to a `/metrics` page (lifeboat_core::metrics).
//!
//! Everything is atomics: the transfer tasks update them without locks and
//! [`ObjectMetrics::render_prometheus`] never blocks.

use lifeboat_core::metrics::{Kind, Page};
use prometheus_client::metrics::histogram::Histogram;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (seconds) of the replication latency histogram.
const LATENCY_BUCKETS: [f64; 14] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
];

pub struct ObjectMetrics {
    region: String,
    /// Operations (puts and deletes) waiting, and their bytes.
    pub(crate) ops_pending: AtomicU64,
    pub(crate) bytes_pending: AtomicU64,
    /// Objects marked FAILED (waiting for `lifeboat objects retry`).
    pub(crate) ops_failed: AtomicU64,
    pub(crate) replicated_total: AtomicU64,
    pub(crate) deleted_total: AtomicU64,
    pub(crate) bytes_replicated_total: AtomicU64,
    /// Attempts that ended in an error (each retry counts).
    pub(crate) failures_total: AtomicU64,
    /// Destination copies that no longer matched and were copied again.
    pub(crate) repaired_total: AtomicU64,
    pub(crate) latency_alerts_total: AtomicU64,
    /// Periodic reconcile passes that completed (source listed and, when active,
    /// every destination copy checked).
    pub(crate) reconciles_total: AtomicU64,
    /// Backfill: operations enqueued by the last backfill and how many are done.
    pub(crate) backfill_total: AtomicU64,
    pub(crate) backfill_done: AtomicU64,
    /// Age of the oldest pending operation, milliseconds (the replication lag).
    pub(crate) oldest_pending_ms: AtomicU64,
    /// Writes (PUTs, deletes) the gateway carried out, and those it refused because
    /// the region was not the active one.
    pub(crate) gateway_writes_total: AtomicU64,
    pub(crate) gateway_refused_total: AtomicU64,
    /// Gateway writes admitted and not yet answered.
    pub(crate) gateway_inflight: AtomicU64,
    /// Objects the lifecycle rules of this region's store expired (lifeboat's sweep).
    pub(crate) expired_total: AtomicU64,
    /// Bytes in this region's store under the replication rules, at the last listing.
    pub(crate) stored_bytes: AtomicU64,
    /// Time from a change being seen to its copy being verified (the client library's
    /// histogram: buckets, sum and count).
    latency: Histogram,
}

impl std::fmt::Debug for ObjectMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectMetrics")
            .field("region", &self.region)
            .field("ops_pending", &self.ops_pending)
            .field("ops_failed", &self.ops_failed)
            .finish_non_exhaustive()
    }
}

impl ObjectMetrics {
    pub fn new(region: &str) -> Self {
        Self {
            region: region.to_owned(),
            ops_pending: AtomicU64::new(0),
            bytes_pending: AtomicU64::new(0),
            ops_failed: AtomicU64::new(0),
            replicated_total: AtomicU64::new(0),
            deleted_total: AtomicU64::new(0),
            bytes_replicated_total: AtomicU64::new(0),
            failures_total: AtomicU64::new(0),
            repaired_total: AtomicU64::new(0),
            latency_alerts_total: AtomicU64::new(0),
            reconciles_total: AtomicU64::new(0),
            backfill_total: AtomicU64::new(0),
            backfill_done: AtomicU64::new(0),
            oldest_pending_ms: AtomicU64::new(0),
            gateway_writes_total: AtomicU64::new(0),
            gateway_refused_total: AtomicU64::new(0),
            gateway_inflight: AtomicU64::new(0),
            expired_total: AtomicU64::new(0),
            stored_bytes: AtomicU64::new(0),
            latency: Histogram::new(LATENCY_BUCKETS),
        }
    }

    pub(crate) fn observe_latency(&self, d: Duration) {
        self.latency.observe(d.as_secs_f64());
    }

    /// Operations waiting to be replicated (puts and deletes, all destinations).
    pub fn pending_ops(&self) -> u64 {
        self.ops_pending.load(Ordering::Relaxed)
    }
    pub fn pending_bytes(&self) -> u64 {
        self.bytes_pending.load(Ordering::Relaxed)
    }
    pub fn failed_ops(&self) -> u64 {
        self.ops_failed.load(Ordering::Relaxed)
    }
    pub fn replicated(&self) -> u64 {
        self.replicated_total.load(Ordering::Relaxed)
    }
    pub fn repaired(&self) -> u64 {
        self.repaired_total.load(Ordering::Relaxed)
    }
    /// Periodic reconcile passes completed.
    pub fn reconciles(&self) -> u64 {
        self.reconciles_total.load(Ordering::Relaxed)
    }
    /// Writes the gateway refused (the region was not the active one).
    pub fn gateway_refused(&self) -> u64 {
        self.gateway_refused_total.load(Ordering::Relaxed)
    }
    /// Objects expired by the lifecycle rules of this region's store.
    pub fn expired(&self) -> u64 {
        self.expired_total.load(Ordering::Relaxed)
    }
    /// Bytes in the store at the last listing.
    pub fn stored_bytes(&self) -> u64 {
        self.stored_bytes.load(Ordering::Relaxed)
    }
    /// Gateway writes admitted and not yet answered.
    pub fn gateway_inflight(&self) -> u64 {
        self.gateway_inflight.load(Ordering::Relaxed)
    }
    /// (done, total) of the current backfill.
    pub fn backfill_progress(&self) -> (u64, u64) {
        (
            self.backfill_done.load(Ordering::Relaxed),
            self.backfill_total.load(Ordering::Relaxed),
        )
    }

    /// Add this replicator's metrics to a `/metrics` page.
    pub fn render_prometheus(&self, out: &mut Page) {
        let r = self.region.as_str();
        let g = |v: &AtomicU64| v.load(Ordering::Relaxed) as f64;
        let mut line = |name: &str, kind: Kind, help: &str, value: f64| {
            out.family(name, kind, help);
            out.sample(name, &[("region", r)], value);
        };
        line(
            "lifeboat_objects_pending_ops",
            Kind::Gauge,
            "Object operations waiting to be replicated.",
            g(&self.ops_pending),
        );
        line(
            "lifeboat_objects_pending_bytes",
            Kind::Gauge,
            "Bytes waiting to be replicated.",
            g(&self.bytes_pending),
        );
        line(
            "lifeboat_objects_failed_ops",
            Kind::Gauge,
            "Objects marked FAILED (lifeboat objects retry).",
            g(&self.ops_failed),
        );
        line(
            "lifeboat_objects_lag_seconds",
            Kind::Gauge,
            "Age of the oldest pending operation.",
            g(&self.oldest_pending_ms) / 1000.0,
        );
        line(
            "lifeboat_objects_replicated_total",
            Kind::Counter,
            "Objects copied to a destination.",
            g(&self.replicated_total),
        );
        line(
            "lifeboat_objects_deleted_total",
            Kind::Counter,
            "Deletions replicated to a destination.",
            g(&self.deleted_total),
        );
        line(
            "lifeboat_objects_replicated_bytes_total",
            Kind::Counter,
            "Bytes copied to destinations.",
            g(&self.bytes_replicated_total),
        );
        line(
            "lifeboat_objects_failures_total",
            Kind::Counter,
            "Replication attempts that failed.",
            g(&self.failures_total),
        );
        line(
            "lifeboat_objects_repaired_total",
            Kind::Counter,
            "Destination copies found changed or missing and copied again.",
            g(&self.repaired_total),
        );
        line(
            "lifeboat_objects_latency_alerts_total",
            Kind::Counter,
            "Objects whose replication took longer than latency_alert.",
            g(&self.latency_alerts_total),
        );
        line(
            "lifeboat_objects_reconciles_total",
            Kind::Counter,
            "Periodic reconcile passes completed (source listed; when active, destination copies checked).",
            g(&self.reconciles_total),
        );
        line(
            "lifeboat_objects_backfill_total",
            Kind::Gauge,
            "Operations enqueued by the current backfill.",
            g(&self.backfill_total),
        );
        line(
            "lifeboat_objects_backfill_done",
            Kind::Gauge,
            "Backfill operations completed.",
            g(&self.backfill_done),
        );
        line(
            "lifeboat_objects_gateway_writes_total",
            Kind::Counter,
            "Writes (PUTs and deletes) carried out through the region's S3 gateway.",
            g(&self.gateway_writes_total),
        );
        line(
            "lifeboat_objects_gateway_refused_total",
            Kind::Counter,
            "Writes the S3 gateway refused because the region was not the active one.",
            g(&self.gateway_refused_total),
        );
        line(
            "lifeboat_objects_stored_bytes",
            Kind::Gauge,
            "Bytes in the region's store under the replication rules, at the last full listing.",
            g(&self.stored_bytes),
        );
        line(
            "lifeboat_objects_expired_total",
            Kind::Counter,
            "Objects the lifecycle rules of the region's store expired (lifeboat's sweep; S3 buckets expire their own).",
            g(&self.expired_total),
        );
        line(
            "lifeboat_objects_gateway_inflight",
            Kind::Gauge,
            "Writes the S3 gateway admitted and has not answered yet (a fence waits for them).",
            g(&self.gateway_inflight),
        );

        out.histogram(
            "lifeboat_objects_replication_latency_seconds",
            "Time from a change being seen to its copy being verified at the destination.",
            &[("region", r)],
            &self.latency,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_histogram_and_gauges() {
        let m = ObjectMetrics::new("a");
        m.observe_latency(Duration::from_millis(30));
        m.observe_latency(Duration::from_secs(2));
        m.ops_pending.store(3, Ordering::Relaxed);
        let mut page = Page::new();
        m.render_prometheus(&mut page);
        let out = page.render();
        assert!(
            out.contains("lifeboat_objects_pending_ops{region=\"a\"} 3"),
            "{out}"
        );
        assert!(
            out.contains(
                "lifeboat_objects_replication_latency_seconds_bucket{region=\"a\",le=\"0.05\"} 1"
            ),
            "{out}"
        );
        assert!(
            out.contains(
                "lifeboat_objects_replication_latency_seconds_bucket{region=\"a\",le=\"+Inf\"} 2"
            ),
            "{out}"
        );
        assert!(
            out.contains("lifeboat_objects_replication_latency_seconds_count{region=\"a\"} 2"),
            "{out}"
        );
    }
}
