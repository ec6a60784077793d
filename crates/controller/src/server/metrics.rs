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

/// The steps a failover's durations are measured between.
const STEPS: [JournalKind; 5] = [
    JournalKind::Detected,
    JournalKind::Confirmed,
    JournalKind::Fenced,
    JournalKind::Promoted,
    JournalKind::Verified,
];

/// The durations `lifeboat_failover_step_seconds` shows, between two of [`STEPS`].
const PAIRS: [(&str, JournalKind, JournalKind); 5] = [
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

/// The first `mono_ms` of each of [`STEPS`] from a failover's start on.
#[derive(Clone, Default)]
struct Window([Option<u64>; STEPS.len()]);

impl Window {
    fn note(&mut self, e: &JournalEntry) {
        if let Some(i) = STEPS.iter().position(|k| *k == e.kind) {
            self.0[i].get_or_insert(e.mono_ms);
        }
    }
    fn at(&self, k: JournalKind) -> Option<u64> {
        STEPS.iter().position(|s| *s == k).and_then(|i| self.0[i])
    }
}

/// The most recent failover's steps, kept up to date entry by entry as the journal
/// grows, so `/metrics` reads nothing from the store. It gives what
/// [`last_failover_steps`] computes from the whole journal: the failover starts at
/// the last `detected` or `operator_request` before the last `promoted` (or at that
/// `promoted`), and each step is the first of its kind from the start on.
#[derive(Default)]
pub(super) struct FailoverSteps {
    /// From the latest `detected` / `operator_request` on.
    pending: Option<Window>,
    /// The failover of the latest `promoted`.
    last: Option<Window>,
    /// The newest entry noted (an entry noted twice counts once).
    seq: u64,
}

impl FailoverSteps {
    /// Note the next journal entry (in `seq` order).
    pub(super) fn note(&mut self, e: &JournalEntry) {
        if e.seq <= self.seq && self.seq != 0 {
            return;
        }
        self.seq = e.seq;
        if matches!(e.kind, JournalKind::Detected | JournalKind::OperatorRequest) {
            self.pending = Some(Window::default());
        }
        if let Some(w) = &mut self.pending {
            w.note(e);
        }
        if let Some(w) = &mut self.last {
            w.note(e);
        }
        if e.kind == JournalKind::Promoted {
            self.last = Some(self.pending.clone().unwrap_or_else(|| {
                let mut w = Window::default();
                w.note(e);
                w
            }));
        }
    }

    /// Durations between the steps of the most recent failover.
    pub(super) fn steps(&self) -> Vec<(&'static str, f64)> {
        let Some(w) = &self.last else { return vec![] };
        PAIRS
            .iter()
            .filter_map(|(name, a, b)| match (w.at(*a), w.at(*b)) {
                (Some(x), Some(y)) if y >= x => Some((*name, (y - x) as f64 / 1000.0)),
                _ => None,
            })
            .collect()
    }
}

/// [`FailoverSteps`] of a controller: filled from the journal in the background when
/// it starts ([`scan_failover_steps`]), and from every entry it appends.
#[derive(Default)]
pub(super) struct StepsState {
    steps: FailoverSteps,
    /// The journal has been read up to where the controller's own entries begin.
    scanned: bool,
    /// The controller's own entries while the journal is being read.
    waiting: Vec<JournalEntry>,
}

impl StepsState {
    pub(super) fn note(&mut self, e: &JournalEntry) {
        if self.scanned {
            self.steps.note(e);
        } else {
            self.waiting.push(e.clone());
        }
    }
}

/// Read the journal once, page by page, into `state`'s steps (off the request path:
/// a controller's start does not wait for it, and `/metrics` shows no step until it
/// is done).
pub(super) async fn scan_failover_steps(store: Arc<dyn StateStore>, state: Arc<Mutex<StepsState>>) {
    let mut steps = FailoverSteps::default();
    let mut since = 0;
    loop {
        match store.journal(since, JOURNAL_PAGE_MAX).await {
            Ok(page) => {
                page.iter().for_each(|e| steps.note(e));
                if let Some(e) = page.last() {
                    since = e.seq;
                }
                if page.len() < JOURNAL_PAGE_MAX {
                    break;
                }
            }
            Err(e) => {
                tracing::warn!(
                    "reading the journal for the last failover's steps: {e:#} (the metric counts from entries after seq {since})"
                );
                break;
            }
        }
    }
    let mut s = lock(&state);
    for e in std::mem::take(&mut s.waiting) {
        steps.note(&e);
    }
    s.steps = steps;
    s.scanned = true;
}

/// Durations between the steps of the most recent failover, from the journal (the
/// reference [`FailoverSteps`] is tested against).
#[cfg(test)]
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
    for (name, a, b) in PAIRS {
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
    // Kept as the journal grows (FailoverSteps): no journal read per scrape.
    out.family(
        "lifeboat_failover_step_seconds",
        Kind::Gauge,
        "Duration of each step of the most recent failover.",
    );
    for (step, secs) in lock(&c.steps).steps.steps() {
        out.sample("lifeboat_failover_step_seconds", &[("step", step)], secs);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: u64, kind: JournalKind, mono_ms: u64) -> JournalEntry {
        JournalEntry {
            seq,
            at_unix_ms: 0,
            mono_ms,
            epoch: Epoch(1),
            kind,
            region: None,
            detail: String::new(),
        }
    }

    /// Kept entry by entry, the steps are what the whole journal says, after every
    /// entry of random journals.
    #[test]
    fn failover_steps_kept_as_the_journal_grows_match_the_whole_journal() {
        let kinds = [
            JournalKind::Detected,
            JournalKind::Confirmed,
            JournalKind::Fenced,
            JournalKind::Promoted,
            JournalKind::Verified,
            JournalKind::OperatorRequest,
            JournalKind::Info,
        ];
        let mut rng: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        for _ in 0..300 {
            let mut journal = Vec::new();
            let mut steps = FailoverSteps::default();
            let mut mono = 0;
            for seq in 1..=(next() % 40) {
                mono += next() % 500;
                let kind = kinds[(next() % kinds.len() as u64) as usize];
                let e = entry(seq, kind, mono);
                steps.note(&e);
                // Noted twice (appended while the journal was read): counted once.
                if next() % 5 == 0 {
                    steps.note(&e);
                }
                journal.push(e);
                assert_eq!(steps.steps(), last_failover_steps(&journal), "{journal:?}");
            }
        }
    }
}
