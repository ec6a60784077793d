//! `/metrics`: the controller's metrics page (epoch, phase, leases, health,
//! the last failover's steps, leadership), plus any extra families the binary adds.

use super::*;

/// The leadership gauges (every controller, leader or not).
pub fn leadership_metrics(out: &mut Page, v: &LeadershipView) {
    out.family(
        "lifeboat_controller_leading",
        Kind::Gauge,
        "1 while this controller leads and may grant leases, else 0.",
    );
    out.sample(
        "lifeboat_controller_leading",
        &[("member", &v.this)],
        f64::from(u8::from(v.leading)),
    );
    out.family(
        "lifeboat_etcd_endpoint_healthy",
        Kind::Gauge,
        "1 if the etcd endpoint answered its last status request, else 0.",
    );
    for e in &v.etcd {
        out.sample(
            "lifeboat_etcd_endpoint_healthy",
            &[("endpoint", &e.endpoint)],
            f64::from(u8::from(e.healthy)),
        );
    }
    out.family(
        "lifeboat_controller_up",
        Kind::Gauge,
        "1 if the controller answered its last /healthz from this one, else 0.",
    );
    for c in &v.controllers {
        out.sample(
            "lifeboat_controller_up",
            &[("member", &c.name)],
            f64::from(u8::from(c.up)),
        );
    }
}

/// Durations between the steps of the most recent failover, from the journal.
pub(super) fn last_failover_steps(journal: &[JournalEntry]) -> Vec<(&'static str, f64)> {
    let Some(promoted) = journal
        .iter()
        .rposition(|e| e.kind == JournalKind::Promoted)
    else {
        return vec![];
    };
    let start = journal[..promoted]
        .iter()
        .rposition(|e| matches!(e.kind, JournalKind::Detected | JournalKind::OperatorRequest))
        .unwrap_or(promoted);
    let find = |k: JournalKind, from: usize| {
        journal[from..]
            .iter()
            .find(|e| e.kind == k)
            .map(|e| e.mono_ms)
    };
    let t = |k| find(k, start);
    let mut out = Vec::new();
    let pairs = [
        (
            "detect_to_confirm",
            JournalKind::Detected,
            JournalKind::Confirmed,
        ),
        (
            "confirm_to_fence",
            JournalKind::Confirmed,
            JournalKind::Fenced,
        ),
        (
            "fence_to_promote",
            JournalKind::Fenced,
            JournalKind::Promoted,
        ),
        (
            "promote_to_verify",
            JournalKind::Promoted,
            JournalKind::Verified,
        ),
        (
            "detect_to_verify",
            JournalKind::Detected,
            JournalKind::Verified,
        ),
    ];
    for (name, a, b) in pairs {
        if let (Some(x), Some(y)) = (t(a), t(b))
            && y >= x
        {
            out.push((name, (y - x) as f64 / 1000.0));
        }
    }
    out
}

pub(super) async fn metrics(State(c): State<Arc<Controller>>) -> impl IntoResponse {
    let mut out = Page::new();
    let (epoch, active, failovers, lapses) = {
        let m = c.machine.lock().await;
        (m.epoch, m.active.clone(), m.failovers, m.lease_lapses)
    };
    out.family(
        "lifeboat_epoch",
        Kind::Gauge,
        "Current epoch (fencing token).",
    );
    out.sample("lifeboat_epoch", &[], epoch.0 as f64);
    out.family(
        "lifeboat_active_region",
        Kind::Gauge,
        "1 for the active region, 0 for the others.",
    );
    for r in c.cfg.region_ids() {
        out.sample(
            "lifeboat_active_region",
            &[("region", r.as_str())],
            f64::from(u8::from(active.as_ref() == Some(&r))),
        );
    }
    out.family(
        "lifeboat_failovers_total",
        Kind::Counter,
        "Promotions since the deployment started.",
    );
    out.sample("lifeboat_failovers_total", &[], failovers as f64);
    out.family("lifeboat_lease_lapses_total",
        Kind::Counter,
        "Failures detected with the active region's lease lapsed (its agent stopped renewing), since this controller started.",
    );
    out.sample("lifeboat_lease_lapses_total", &[], lapses as f64);
    // Witness-loss promises (rule 7, docs/architecture.md), from each region's latest report: what
    // holds a promotion back, and who serves on promises instead of a grant.
    let reports = lock(&c.reports).clone();
    let now = Instant::now();
    out.family(
        "lifeboat_region_promise_remaining_ms",
        Kind::Gauge,
        "Milliseconds the region's agent still promises not to activate (0: no promise).",
    );
    out.family(
        "lifeboat_region_witness_lost",
        Kind::Gauge,
        "1 while the region's agent holds its lease on promises (witness lost), else 0.",
    );
    for r in c.cfg.region_ids() {
        let rep = reports.get(&r);
        let remaining = rep
            .and_then(|(at, rep)| {
                let p = rep.promised.as_ref()?;
                let age = u64::try_from(now.saturating_duration_since(*at).as_millis())
                    .unwrap_or(u64::MAX);
                Some(p.remaining_ms.saturating_sub(age))
            })
            .unwrap_or(0);
        out.sample(
            "lifeboat_region_promise_remaining_ms",
            &[("region", r.as_str())],
            remaining as f64,
        );
        out.sample(
            "lifeboat_region_witness_lost",
            &[("region", r.as_str())],
            f64::from(u8::from(rep.is_some_and(|(_, rep)| rep.witness_lost))),
        );
    }
    let decision = lock(&c.decision).clone();
    out.family(
        "lifeboat_region_health",
        Kind::Gauge,
        "Region health by quorum: 1 healthy, 0 unhealthy, -1 unknown.",
    );
    for (r, h) in &decision.regions {
        out.sample(
            "lifeboat_region_health",
            &[("region", r.as_str())],
            health_value(*h),
        );
    }
    out.family(
        "lifeboat_check_health",
        Kind::Gauge,
        "Check health per vantage point (and \"quorum\" for the decision).",
    );
    for (name, v) in &decision.checks {
        out.sample(
            "lifeboat_check_health",
            &[("check", name), ("vantage", "quorum")],
            health_value(v.status),
        );
        for (vp, h) in &v.vantage {
            out.sample(
                "lifeboat_check_health",
                &[("check", name), ("vantage", &vp.to_string())],
                health_value(*h),
            );
        }
    }
    if let Ok(journal) = c.store.journal(0, 100_000).await {
        out.family(
            "lifeboat_failover_step_seconds",
            Kind::Gauge,
            "Duration of each step of the most recent failover.",
        );
        for (step, secs) in last_failover_steps(&journal) {
            out.sample("lifeboat_failover_step_seconds", &[("step", step)], secs);
        }
    }
    if let Some(v) = c.opts.leadership.as_ref().map(|f| f()) {
        leadership_metrics(&mut out, &v);
    }
    for f in &c.opts.extra_metrics {
        f(&mut out);
    }
    for f in lock(&c.late_metrics).iter() {
        f(&mut out);
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            lifeboat_core::metrics::CONTENT_TYPE,
        )],
        out.render(),
    )
}
