//! One `/metrics` page, rendered by the Prometheus project's Rust client
//! (`prometheus-client`): escaping, the OpenMetrics text format and histograms come
//! from the library, not from hand-written lines.
//!
//! Every subsystem (the controller's machine, the DNS server, object replication, an
//! agent's roles) writes its current figures into a [`Page`] built for one scrape: a
//! family is declared once with its type and help, then each labelled sample is set.
//! Values are read from the subsystems' own state (atomics, the machine's fields), so a
//! page is built from scratch on each scrape; a counter is set to its running total.
//! The metric names are those documented in docs/controller.md, docs/agent.md,
//! docs/dns.md and docs/objects.md: a counter's name ends in `_total` (the library adds
//! the suffix to the family's name, as OpenMetrics wants).

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;

/// The content type of [`Page::render`]'s text (OpenMetrics 1.0, which Prometheus
/// asks for first).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type Labels = Vec<(String, String)>;

/// What a family measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A value that goes up and down.
    Gauge,
    /// A running total (its name ends in `_total`).
    Counter,
}

enum Fam {
    Gauge(Family<Labels, Gauge<f64, AtomicU64>>),
    Counter(Family<Labels, Counter<f64, AtomicU64>>),
}

/// The metrics of one scrape.
#[derive(Default)]
pub struct Page {
    registry: Registry,
    families: BTreeMap<String, Fam>,
}

impl std::fmt::Debug for Page {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Page")
            .field("families", &self.families.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// The library adds the full stop to a help text.
fn help(text: &str) -> &str {
    text.strip_suffix('.').unwrap_or(text)
}

impl Page {
    pub fn new() -> Self {
        Self::default()
    }

    /// Declare a family. Declaring a name again keeps the first declaration (one name,
    /// one family on the page).
    pub fn family(&mut self, name: &str, kind: Kind, help_text: &str) {
        if self.families.contains_key(name) {
            return;
        }
        let fam = match kind {
            Kind::Gauge => {
                let f = Family::<Labels, Gauge<f64, AtomicU64>>::default();
                self.registry.register(name, help(help_text), f.clone());
                Fam::Gauge(f)
            }
            Kind::Counter => {
                let f = Family::<Labels, Counter<f64, AtomicU64>>::default();
                let base = name.strip_suffix("_total").unwrap_or(name);
                self.registry.register(base, help(help_text), f.clone());
                Fam::Counter(f)
            }
        };
        self.families.insert(name.to_owned(), fam);
    }

    /// Set one sample of a family declared with [`Page::family`] (a sample of an
    /// undeclared name declares it as a gauge without help).
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        if !self.families.contains_key(name) {
            self.family(name, Kind::Gauge, "");
        }
        let labels: Labels = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        match self.families.get(name) {
            Some(Fam::Gauge(f)) => {
                f.get_or_create(&labels).set(value);
            }
            Some(Fam::Counter(f)) => {
                let c = f.get_or_create(&labels);
                let now = c.get();
                if value > now {
                    c.inc_by(value - now);
                }
            }
            None => {}
        }
    }

    /// Add a histogram the subsystem keeps itself, with these labels on every series.
    pub fn histogram(
        &mut self,
        name: &str,
        help_text: &str,
        labels: &[(&str, &str)],
        h: &Histogram,
    ) {
        let labels: Vec<(Cow<'static, str>, Cow<'static, str>)> = labels
            .iter()
            .map(|(k, v)| (Cow::Owned((*k).to_owned()), Cow::Owned((*v).to_owned())))
            .collect();
        self.registry
            .sub_registry_with_labels(labels.into_iter())
            .register(name, help(help_text), h.clone());
    }

    /// The page in the OpenMetrics text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_samples_and_escaping_come_out_as_openmetrics() {
        let mut p = Page::new();
        p.family(
            "lifeboat_epoch",
            Kind::Gauge,
            "Current epoch (fencing token).",
        );
        p.sample("lifeboat_epoch", &[], 3.0);
        p.family("lifeboat_failovers_total", Kind::Counter, "Promotions.");
        p.sample("lifeboat_failovers_total", &[], 2.0);
        p.family("lifeboat_region_health", Kind::Gauge, "Health.");
        p.sample("lifeboat_region_health", &[("region", "a")], 1.0);
        p.sample(
            "lifeboat_region_health",
            &[("region", "b \"quoted\"\\ \n")],
            -1.0,
        );
        // A second declaration of a name does not make a second family.
        p.family("lifeboat_epoch", Kind::Counter, "again");
        let h = Histogram::new([0.1, 1.0]);
        h.observe(0.05);
        h.observe(0.5);
        p.histogram(
            "lifeboat_latency_seconds",
            "Latency.",
            &[("region", "a")],
            &h,
        );
        let text = p.render();
        assert!(
            text.contains("# HELP lifeboat_epoch Current epoch (fencing token).\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE lifeboat_epoch gauge\nlifeboat_epoch 3.0\n"),
            "{text}"
        );
        assert_eq!(text.matches("# TYPE lifeboat_epoch ").count(), 1, "{text}");
        assert!(
            text.contains("# TYPE lifeboat_failovers counter\n"),
            "{text}"
        );
        assert!(text.contains("lifeboat_failovers_total 2.0\n"), "{text}");
        assert!(
            text.contains("lifeboat_region_health{region=\"a\"} 1.0\n"),
            "{text}"
        );
        assert!(
            text.contains("lifeboat_region_health{region=\"b \\\"quoted\\\"\\\\ \\n\"} -1.0\n"),
            "{text}"
        );
        assert!(
            text.contains("lifeboat_latency_seconds_bucket{le=\"0.1\",region=\"a\"} 1\n")
                || text.contains("lifeboat_latency_seconds_bucket{region=\"a\",le=\"0.1\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("lifeboat_latency_seconds_count{region=\"a\"} 2\n"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
