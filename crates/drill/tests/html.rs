//! The HTML report: well-formed (it parses as XML, every element closed), carries an
//! SVG timeline with every write and the journal's steps, escapes what it shows, uses
//! no external asset, and renders in a real browser (headless Chromium, when installed).
#![allow(clippy::unwrap_used)]

use lifeboat_core::{Epoch, JournalEntry, JournalKind, RegionId};
use lifeboat_drill::history::{Op, Outcome};
use lifeboat_drill::report::{DrillReport, RunRecord, analyze, summarize, summarize_scenarios};
use lifeboat_drill::{Scenario, render_html};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

fn report() -> DrillReport {
    let a: IpAddr = "127.0.1.1".parse().unwrap();
    let b: IpAddr = "127.0.2.1".parse().unwrap();
    let t0 = 1_700_000_000_000u64;
    let mut ops = Vec::new();
    for n in 0..200u64 {
        let start = t0 + n * 50;
        let (outcome, addr, region) = match start - t0 {
            0..2000 => (Outcome::Ok, a, "a"),
            2000..2100 => (Outcome::Unknown, a, "a"),
            2100..5000 => (Outcome::Failed, a, "a"),
            _ => (Outcome::Ok, b, "b"),
        };
        ops.push(Op {
            id: format!("r1-{n}"),
            start_ms: start,
            end_ms: start + if outcome == Outcome::Unknown { 1000 } else { 5 },
            outcome,
            addr: Some(addr),
            region: Some(RegionId::new(region)),
            status: None,
            error: None,
        });
    }
    let present = ops
        .iter()
        .filter(|o| o.id != "r1-39")
        .map(|o| o.id.clone())
        .collect();
    let step = |seq, at, kind, region: &str, detail: &str| JournalEntry {
        seq,
        at_unix_ms: t0 + at,
        mono_ms: at,
        epoch: Epoch(2),
        kind,
        region: Some(RegionId::new(region)),
        detail: detail.into(),
    };
    let run = analyze(RunRecord {
        run: 1,
        run_id: "r1".into(),
        target: RegionId::new("a"),
        started_ms: t0,
        fault_at_ms: t0 + 2000,
        fault_effective_ms: t0 + 2000,
        restored_at_ms: Some(t0 + 10_500),
        recovered: true,
        new_active: Some(RegionId::new("b")),
        ops,
        journal: vec![
            step(7, 2600, JournalKind::Detected, "a", "web-a <down> & out"),
            step(8, 2700, JournalKind::Confirmed, "a", ""),
            step(9, 4500, JournalKind::Fenced, "a", "lease expired"),
            step(10, 4510, JournalKind::Promoted, "b", "epoch 2"),
            step(11, 4510, JournalKind::Rerouted, "b", ""),
            step(12, 5200, JournalKind::Verified, "b", ""),
        ],
        present,
        region_addrs: BTreeMap::from([(RegionId::new("a"), a), (RegionId::new("b"), b)]),
        notes: vec!["<script>alert(1)</script>".into()],
        scenario: Scenario::RegionOutage,
        samples: vec![],
        timed: None,
    });
    DrillReport {
        scenario: "region-outage".into(),
        deployment: "shop".into(),
        app_name: "app.shop.example.".into(),
        started_at_unix_ms: t0,
        finished_at_unix_ms: t0 + 11_000,
        summary: summarize(std::slice::from_ref(&run)),
        per_scenario: summarize_scenarios(std::slice::from_ref(&run)),
        runs: vec![run],
        error: None,
        schedule: None,
        sampled_regions: vec![],
        sample_interval_ms: None,
        final_read: None,
    }
}

/// Every element closed in order; returns the element names seen.
fn well_formed(html: &str) -> Vec<String> {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_str(html);
    let mut stack: Vec<String> = Vec::new();
    let mut seen = Vec::new();
    loop {
        match reader.read_event() {
            Ok(Event::Start(e)) => {
                let name = String::from_utf8(e.name().as_ref().to_vec()).unwrap();
                seen.push(name.clone());
                stack.push(name);
            }
            Ok(Event::Empty(e)) => {
                seen.push(String::from_utf8(e.name().as_ref().to_vec()).unwrap());
            }
            Ok(Event::End(e)) => {
                let name = String::from_utf8(e.name().as_ref().to_vec()).unwrap();
                assert_eq!(
                    stack.pop().as_deref(),
                    Some(name.as_str()),
                    "mismatched </{name}>"
                );
            }
            Ok(Event::Eof) => break,
            Ok(_) => {}
            Err(e) => panic!("not well-formed at byte {}: {e}", reader.buffer_position()),
        }
    }
    assert!(stack.is_empty(), "unclosed elements: {stack:?}");
    seen
}

#[test]
fn the_report_is_well_formed_with_an_svg_timeline_and_the_steps() {
    let r = report();
    let html = render_html(&r);
    let seen = well_formed(&html);
    assert_eq!(seen.iter().filter(|n| *n == "svg").count(), 1);
    // One bar per write, plus legend swatches.
    let rects = seen.iter().filter(|n| *n == "rect").count();
    assert!(rects >= 200, "{rects} rects for 200 writes");
    for step in [
        "detected",
        "confirmed",
        "fenced",
        "promoted",
        "rerouted",
        "verified",
    ] {
        assert!(html.contains(&format!(">{step}<")), "step {step} missing");
    }
    // The lost write and the RTO are on the page.
    assert_eq!(r.runs[0].lost_acknowledged_writes, 1);
    assert!(html.contains("r1-39"));
    assert!(html.contains(&format!("{} ms", r.runs[0].rto_ms.unwrap())));
    // What came from outside is escaped, and nothing is fetched from elsewhere.
    assert!(!html.contains("<script>"));
    assert!(html.contains("web-a &lt;down&gt; &amp; out"));
    assert!(
        !html.contains("src=") && !html.contains("href="),
        "external asset"
    );
}

#[tokio::test]
async fn the_report_renders_in_headless_chromium() {
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("report.html");
    let shot = dir.path().join("shot.png");
    std::fs::write(&page, render_html(&report())).unwrap();
    let mut cmd = tokio::process::Command::new("chromium");
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--window-size=1100,900",
    ])
    .arg(format!(
        "--user-data-dir={}",
        dir.path().join("profile").display()
    ))
    .arg(format!("--screenshot={}", shot.display()))
    .arg(format!("file://{}", page.display()))
    .env("HOME", dir.path())
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::piped())
    .kill_on_drop(true);
    let child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "chromium is not installed: run the README's test command (it installs chromium) or apt-get install -y chromium"
        ),
        Err(e) => panic!("running chromium: {e}"),
    };
    let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .expect("chromium finishes")
        .unwrap();
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let png = std::fs::read(&shot).unwrap();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    // A blank page compresses to almost nothing; the timeline does not.
    assert!(png.len() > 10_000, "screenshot is only {} bytes", png.len());
}
