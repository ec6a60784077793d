//! Prometheus text exposition, written by hand because it is a few lines of text
//! and every subsystem renders its own figures into one page.

use std::fmt::Write;

/// Escape a label value.
pub fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Write the `# HELP` and `# TYPE` lines of a metric family.
pub fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Write one sample: `name{k="v",...} value`.
pub fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: f64) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{k}=\"{}\"", escape(v));
        }
        out.push('}');
    }
    let _ = writeln!(out, " {value}");
}

/// Health as a number: 1 healthy, 0 unhealthy, -1 unknown.
pub fn health_value(h: lifeboat_core::HealthStatus) -> f64 {
    match h {
        lifeboat_core::HealthStatus::Healthy => 1.0,
        lifeboat_core::HealthStatus::Unhealthy => 0.0,
        lifeboat_core::HealthStatus::Unknown => -1.0,
    }
}
