//! Replication metrics of one region's replicator, rendered in Prometheus text format.
//!
//! Everything is atomics: the transfer tasks update them without locks and
//! [`ObjectMetrics::render_prometheus`] never blocks.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (seconds) of the replication latency histogram.
const LATENCY_BUCKETS: [f64; 14] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
];

#[derive(Debug)]
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
    latency_buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    latency_count: AtomicU64,
    latency_sum_us: AtomicU64,
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
            latency_buckets: Default::default(),
            latency_count: AtomicU64::new(0),
            latency_sum_us: AtomicU64::new(0),
        }
    }

    pub(crate) fn observe_latency(&self, d: Duration) {
        let secs = d.as_secs_f64();
        for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
            if secs <= *bound {
                self.latency_buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.latency_count.fetch_add(1, Ordering::Relaxed);
        self.latency_sum_us.fetch_add(
            u64::try_from(d.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
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
    /// (done, total) of the current backfill.
    pub fn backfill_progress(&self) -> (u64, u64) {
        (
            self.backfill_done.load(Ordering::Relaxed),
            self.backfill_total.load(Ordering::Relaxed),
        )
    }

    /// Append this replicator's metrics in Prometheus text exposition format.
    pub fn render_prometheus(&self, out: &mut String) {
        let r = &self.region;
        let g = |v: &AtomicU64| v.load(Ordering::Relaxed);
        let mut line = |name: &str, kind: &str, help: &str, value: String| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            let _ = writeln!(out, "{name}{{region=\"{r}\"}} {value}");
        };
        line(
            "lifeboat_objects_pending_ops",
            "gauge",
            "Object operations waiting to be replicated.",
            g(&self.ops_pending).to_string(),
        );
        line(
            "lifeboat_objects_pending_bytes",
            "gauge",
            "Bytes waiting to be replicated.",
            g(&self.bytes_pending).to_string(),
        );
        line(
            "lifeboat_objects_failed_ops",
            "gauge",
            "Objects marked FAILED (lifeboat objects retry).",
            g(&self.ops_failed).to_string(),
        );
        line(
            "lifeboat_objects_lag_seconds",
            "gauge",
            "Age of the oldest pending operation.",
            format!("{:.3}", g(&self.oldest_pending_ms) as f64 / 1000.0),
        );
        line(
            "lifeboat_objects_replicated_total",
            "counter",
            "Objects copied to a destination.",
            g(&self.replicated_total).to_string(),
        );
        line(
            "lifeboat_objects_deleted_total",
            "counter",
            "Deletions replicated to a destination.",
            g(&self.deleted_total).to_string(),
        );
        line(
            "lifeboat_objects_replicated_bytes_total",
            "counter",
            "Bytes copied to destinations.",
            g(&self.bytes_replicated_total).to_string(),
        );
        line(
            "lifeboat_objects_failures_total",
            "counter",
            "Replication attempts that failed.",
            g(&self.failures_total).to_string(),
        );
        line(
            "lifeboat_objects_repaired_total",
            "counter",
            "Destination copies found changed or missing and copied again.",
            g(&self.repaired_total).to_string(),
        );
        line(
            "lifeboat_objects_latency_alerts_total",
            "counter",
            "Objects whose replication took longer than latency_alert.",
            g(&self.latency_alerts_total).to_string(),
        );
        line(
            "lifeboat_objects_reconciles_total",
            "counter",
            "Periodic reconcile passes completed (source listed; when active, destination copies checked).",
            g(&self.reconciles_total).to_string(),
        );
        line(
            "lifeboat_objects_backfill_total",
            "gauge",
            "Operations enqueued by the current backfill.",
            g(&self.backfill_total).to_string(),
        );
        line(
            "lifeboat_objects_backfill_done",
            "gauge",
            "Backfill operations completed.",
            g(&self.backfill_done).to_string(),
        );

        let name = "lifeboat_objects_replication_latency_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Time from a change being seen to its copy being verified at the destination."
        );
        let _ = writeln!(out, "# TYPE {name} histogram");
        for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "{name}_bucket{{region=\"{r}\",le=\"{bound}\"}} {}",
                g(&self.latency_buckets[i])
            );
        }
        let count = g(&self.latency_count);
        let _ = writeln!(out, "{name}_bucket{{region=\"{r}\",le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "{name}_sum{{region=\"{r}\"}} {:.6}",
            g(&self.latency_sum_us) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count{{region=\"{r}\"}} {count}");
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
        let mut out = String::new();
        m.render_prometheus(&mut out);
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
