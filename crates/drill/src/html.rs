//! The HTML report: one self-contained page (inline CSS and SVG, no external assets,
//! no scripts) with the summary, and per run a timeline of every write (ok / failed /
//! unknown, coloured by the region that answered) with the fault, the restore and the
//! journal's failover steps drawn on the same time axis, then the steps as a table.

use crate::history::Outcome;
use crate::report::{DrillReport, RunReport};
use std::collections::BTreeMap;
use std::fmt::Write;

const WIDTH: f64 = 1000.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 980.0;
const REGION_COLOURS: [&str; 4] = ["#2a9d8f", "#3a6ea5", "#7b2cbf", "#588157"];
const FAILED: &str = "#d62828";
const UNKNOWN: &str = "#f4a261";

/// Escape text for HTML content and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn opt_ms(v: Option<u64>) -> String {
    v.map_or("–".to_owned(), |v| format!("{v} ms"))
}

/// The whole report as one HTML document.
pub fn render_html(r: &DrillReport) -> String {
    let mut h = String::new();
    let s = &r.summary;
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"/>\
<title>lifeboat drill: {scenario} — {dep}</title>\
<style>body{{font-family:system-ui,sans-serif;margin:2em;color:#222}}\
table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:left}}\
.bad{{color:#d62828;font-weight:bold}}.good{{color:#2a7d2a}}svg{{background:#fafafa;border:1px solid #ddd}}\
.legend span{{display:inline-block;margin-right:1.2em}}</style></head><body>\n\
<h1>lifeboat drill: {scenario}</h1>\n<p>deployment <b>{dep}</b> · app <code>{app}</code> · {n} run(s)</p>\n\
<table><tr><th>recovered</th><th>RTO median</th><th>RTO max</th><th>lost acknowledged writes</th><th>unknown committed</th><th>dual primary</th></tr>\
<tr><td>{rec}/{n}</td><td>{med}</td><td>{max}</td><td class=\"{lostc}\">{lost}</td><td>{unk}</td><td class=\"{dpc}\">{dp}</td></tr></table>\n",
        scenario = esc(&r.scenario.to_string()),
        dep = esc(&r.deployment),
        app = esc(&r.app_name),
        n = s.runs,
        rec = s.recovered,
        med = opt_ms(s.rto_median_ms),
        max = opt_ms(s.rto_max_ms),
        lost = s.lost_acknowledged_writes_total,
        lostc = if s.lost_acknowledged_writes_total > 0 {
            "bad"
        } else {
            "good"
        },
        unk = s.unknown_committed_total,
        dp = if s.dual_primary_any { "YES" } else { "never" },
        dpc = if s.dual_primary_any { "bad" } else { "good" },
    );
    if let Some(e) = &r.error {
        let _ = writeln!(
            h,
            "<p class=\"bad\">The drill stopped early: {}</p>",
            esc(e)
        );
    }
    if let Some(sc) = &r.schedule {
        let _ = writeln!(
            h,
            "<p>Random schedule: seed <b>{}</b>, {} fault(s), lengths {}–{} ms.</p>",
            sc.seed,
            sc.planned.len(),
            sc.min_fault_ms,
            sc.max_fault_ms
        );
    }
    if r.runs.iter().any(|x| x.fault_length_ms.is_some()) {
        h.push_str("<table><tr><th>scenario</th><th>count</th><th>unavailability median</th><th>max</th><th>failovers</th><th>dual-primary samples</th><th>lost acknowledged</th><th>converged</th></tr>\n");
        for p in &r.per_scenario {
            let _ = writeln!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{} ms</td><td>{} ms</td><td>{}</td><td class=\"{}\">{}</td><td class=\"{}\">{}</td><td>{}/{}</td></tr>",
                esc(p.scenario.as_str()),
                p.count,
                p.unavailability_median_ms,
                p.unavailability_max_ms,
                p.failovers,
                if p.dual_primary_samples > 0 {
                    "bad"
                } else {
                    "good"
                },
                p.dual_primary_samples,
                if p.lost_acknowledged_writes > 0 {
                    "bad"
                } else {
                    "good"
                },
                p.lost_acknowledged_writes,
                p.converged,
                p.count
            );
        }
        h.push_str("</table>\n");
    }
    for run in &r.runs {
        render_run(&mut h, run);
    }
    h.push_str("</body></html>\n");
    h
}

fn render_run(h: &mut String, run: &RunReport) {
    let _ = write!(
        h,
        "<section id=\"run-{n}\"><h2>Run {n}: fault in {target} → {new}</h2>\n\
<p>RTO <b>{rto}</b>{rec} · writes ok {ok} · failed {failed} · unknown {unknown} · \
lost acknowledged <span class=\"{lc}\">{lost}</span> · unknown committed {uc} · dual primary <span class=\"{dc}\">{dp}</span></p>\n",
        n = run.run,
        target = esc(run.target.as_str()),
        new = esc(run.new_active.as_ref().map_or("–", |a| a.as_str())),
        rto = opt_ms(run.rto_ms),
        rec = if run.recovered {
            ""
        } else {
            " <span class=\"bad\">(not recovered)</span>"
        },
        ok = run.writes.ok,
        failed = run.writes.failed,
        unknown = run.writes.unknown,
        lost = run.lost_acknowledged_writes,
        lc = if run.lost_acknowledged_writes > 0 {
            "bad"
        } else {
            "good"
        },
        uc = run.unknown_committed,
        dp = if run.dual_primary { "YES" } else { "no" },
        dc = if run.dual_primary { "bad" } else { "good" },
    );
    if let Some(len) = run.fault_length_ms {
        let _ = writeln!(
            h,
            "<p>{} of {} for {} ms · unavailable {} ms · failed over {} · {} · dual-primary samples <span class=\"{}\">{}</span> of {}</p>",
            esc(run.scenario.as_str()),
            esc(&run.fault_target),
            len,
            run.unavailability_ms,
            if run.failed_over { "yes" } else { "no" },
            run.converge_ms.map_or(
                "<span class=\"bad\">not converged</span>".to_owned(),
                |c| format!("converged {c} ms after the heal")
            ),
            if run.dual_primary_samples > 0 {
                "bad"
            } else {
                "good"
            },
            run.dual_primary_samples,
            run.samples
        );
    }
    render_svg(h, run);
    h.push_str("<table><tr><th>step</th><th>region</th><th>after fault</th><th>since previous step</th><th>detail</th></tr>\n");
    let _ = writeln!(
        h,
        "<tr><td>fault injected</td><td>{}</td><td>0 ms</td><td></td><td></td></tr>",
        esc(run.target.as_str())
    );
    for st in &run.steps {
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{} ms</td><td>{}</td><td>{}</td></tr>",
            esc(&st.step),
            esc(st.region.as_ref().map_or("", |r| r.as_str())),
            st.since_fault_ms,
            st.duration_ms.map_or(String::new(), |d| format!("{d} ms")),
            esc(&st.detail)
        );
    }
    h.push_str("</table>\n");
    if run.lost_acknowledged_writes > 0 {
        let _ = writeln!(
            h,
            "<p class=\"bad\">Lost acknowledged writes ({}): {}</p>",
            run.lost_acknowledged_writes,
            esc(&run.lost.ids.join(", "))
        );
    }
    for e in &run.dual_primary_evidence {
        let _ = writeln!(h, "<p class=\"bad\">Dual primary: {}</p>", esc(e));
    }
    for n in &run.notes {
        let _ = writeln!(h, "<p>Note: {}</p>", esc(n));
    }
    h.push_str("</section>\n");
}

fn render_svg(h: &mut String, run: &RunReport) {
    let mut t0 = run.fault_at_unix_ms;
    let mut t1 = run.fault_at_unix_ms;
    for o in &run.ops {
        t0 = t0.min(o.start_ms);
        t1 = t1.max(o.end_ms);
    }
    for st in &run.steps {
        t1 = t1.max(st.at_unix_ms);
    }
    if let Some(r) = run.restored_at_unix_ms {
        t1 = t1.max(r);
    }
    let span = (t1.saturating_sub(t0)).max(1) as f64;
    let x = |t: u64| LEFT + (t.saturating_sub(t0) as f64) / span * (RIGHT - LEFT);
    // Lanes: ok, unknown, failed; then the steps' labels below.
    let lanes = [
        (Outcome::Ok, 40.0, "ok"),
        (Outcome::Unknown, 75.0, "unknown"),
        (Outcome::Failed, 110.0, "failed"),
    ];
    let label_rows = 3.0;
    let height = 165.0 + label_rows * 16.0 + 30.0;
    let mut colours: BTreeMap<String, &str> = BTreeMap::new();
    for o in &run.ops {
        if let Some(r) = &o.region {
            let n = colours.len();
            colours
                .entry(r.to_string())
                .or_insert(REGION_COLOURS[n % REGION_COLOURS.len()]);
        }
    }
    let _ = writeln!(
        h,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"timeline\" width=\"{WIDTH}\" height=\"{height}\" viewBox=\"0 0 {WIDTH} {height}\" role=\"img\" aria-label=\"timeline of run {}\">",
        run.run
    );
    for (_, y, name) in lanes {
        let _ = writeln!(
            h,
            "<text x=\"{}\" y=\"{}\" font-size=\"12\" text-anchor=\"end\">{name}</text><line x1=\"{LEFT}\" y1=\"{y}\" x2=\"{RIGHT}\" y2=\"{y}\" stroke=\"#e5e5e5\"/>",
            LEFT - 8.0,
            y + 4.0
        );
    }
    // Time axis: a tick per second (or per 5/10 s on long runs).
    let axis_y = 130.0;
    let step_ms: u64 = match span as u64 {
        0..=15_000 => 1000,
        15_001..=60_000 => 5000,
        _ => 10_000,
    };
    let _ = writeln!(
        h,
        "<line x1=\"{LEFT}\" y1=\"{axis_y}\" x2=\"{RIGHT}\" y2=\"{axis_y}\" stroke=\"#888\"/>"
    );
    // Ticks count seconds from the fault (negative before it).
    let fault = run.fault_at_unix_ms as i64;
    let mut tick = fault - ((fault - t0 as i64) / step_ms as i64) * step_ms as i64;
    while tick <= t1 as i64 {
        let tx = x(tick.max(0) as u64);
        let _ = writeln!(
            h,
            "<line x1=\"{tx:.1}\" y1=\"{axis_y}\" x2=\"{tx:.1}\" y2=\"{}\" stroke=\"#888\"/><text x=\"{tx:.1}\" y=\"{}\" font-size=\"10\" text-anchor=\"middle\">{:+}s</text>",
            axis_y + 4.0,
            axis_y + 15.0,
            (tick - fault) / 1000
        );
        tick += step_ms as i64;
    }
    // Every write as a bar from start to end.
    for o in &run.ops {
        let (y, colour) = match o.outcome {
            Outcome::Ok => (
                40.0,
                o.region
                    .as_ref()
                    .and_then(|r| colours.get(r.as_str()).copied())
                    .unwrap_or(REGION_COLOURS[0]),
            ),
            Outcome::Unknown => (75.0, UNKNOWN),
            Outcome::Failed => (110.0, FAILED),
        };
        let x1 = x(o.start_ms);
        let w = (x(o.end_ms) - x1).max(1.5);
        let _ = writeln!(
            h,
            "<rect x=\"{x1:.1}\" y=\"{}\" width=\"{w:.1}\" height=\"14\" fill=\"{colour}\" fill-opacity=\"0.75\"><title>{} {:?} {} ms{}</title></rect>",
            y - 7.0,
            esc(&o.id),
            o.outcome,
            o.end_ms.saturating_sub(o.start_ms),
            o.addr.map_or(String::new(), |a| format!(" via {a}")),
        );
    }
    // Markers: fault, steps, restore.
    let mut marks: Vec<(u64, String, &str)> = vec![(run.fault_at_unix_ms, "fault".into(), "#000")];
    for st in &run.steps {
        marks.push((st.at_unix_ms, st.step.clone(), "#1d4ed8"));
    }
    if let Some(r) = run.restored_at_unix_ms {
        marks.push((r, "restored".into(), "#666"));
    }
    for (i, (t, label, colour)) in marks.iter().enumerate() {
        let mx = x(*t);
        let ly = 165.0 + (i as f64 % label_rows) * 16.0;
        let anchor = if mx > RIGHT - 30.0 { "end" } else { "middle" };
        let _ = writeln!(
            h,
            "<line class=\"step\" x1=\"{mx:.1}\" y1=\"25\" x2=\"{mx:.1}\" y2=\"{}\" stroke=\"{colour}\" stroke-dasharray=\"4 3\"/><text x=\"{mx:.1}\" y=\"{ly}\" font-size=\"11\" fill=\"{colour}\" text-anchor=\"{anchor}\">{}</text>",
            ly - 10.0,
            esc(label)
        );
    }
    let legend_y = height - 8.0;
    let mut lx = LEFT;
    for (region, colour) in &colours {
        let _ = write!(
            h,
            "<rect x=\"{lx}\" y=\"{}\" width=\"10\" height=\"10\" fill=\"{colour}\"/><text x=\"{}\" y=\"{legend_y}\" font-size=\"11\">ok via {}</text>",
            legend_y - 9.0,
            lx + 14.0,
            esc(region)
        );
        lx += 110.0;
    }
    let _ = writeln!(
        h,
        "<rect x=\"{lx}\" y=\"{}\" width=\"10\" height=\"10\" fill=\"{UNKNOWN}\"/><text x=\"{}\" y=\"{legend_y}\" font-size=\"11\">unknown</text><rect x=\"{}\" y=\"{}\" width=\"10\" height=\"10\" fill=\"{FAILED}\"/><text x=\"{}\" y=\"{legend_y}\" font-size=\"11\">failed</text>",
        legend_y - 9.0,
        lx + 14.0,
        lx + 90.0,
        legend_y - 9.0,
        lx + 104.0
    );
    h.push_str("</svg>\n");
}
