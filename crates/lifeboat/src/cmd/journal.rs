//! `lifeboat journal`: the controller's journal, every step with its timestamp.

use crate::shared::{api_client, load_config};
use anyhow::{Context, Result};
use lifeboat_core::JournalEntry;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, UNIX_EPOCH};

#[derive(clap::Args, Debug)]
pub struct JournalArgs {
    #[arg(long, short)]
    config: PathBuf,
    #[arg(long, default_value_t = 0)]
    since: u64,
    #[arg(long)]
    json: bool,
}

pub(crate) async fn run(args: JournalArgs) -> Result<ExitCode> {
    let JournalArgs {
        config,
        since,
        json,
    } = args;
    let cfg = load_config(&config)?;
    let c = api_client(&cfg, false)?;
    let entries = c
        .journal(since)
        .await
        .context("reading the controller's journal")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&entries)?);
    } else {
        print!("{}", render(&entries));
    }
    Ok(ExitCode::SUCCESS)
}

/// The journal for people: each step's UTC time (RFC 3339, milliseconds) and the time
/// since the step before it; `--json` keeps the machine values (`at_unix_ms`, `mono_ms`).
fn render(entries: &[JournalEntry]) -> String {
    let mut out = String::new();
    let mut previous: Option<u64> = None;
    for e in entries {
        let at = UNIX_EPOCH + Duration::from_millis(e.at_unix_ms);
        let since = previous.map_or_else(String::new, |p| since_previous(p, e.at_unix_ms));
        previous = Some(e.at_unix_ms);
        out.push_str(&format!(
            "{:>6}  {}  {:>8}  epoch {:<4} {:<20} {:<8} {}\n",
            e.seq,
            humantime::format_rfc3339_millis(at),
            since,
            e.epoch,
            e.kind.as_str(),
            e.region.as_ref().map_or("-", |r| r.as_str()),
            e.detail
        ));
    }
    out
}

/// The wall-clock time from one step to the next: "+250ms", "+12.3s", "+5m03s",
/// "+2h05m"; a clock that stepped back shows as "-…".
fn since_previous(before: u64, now: u64) -> String {
    if now >= before {
        format!("+{}", human_ms(now - before))
    } else {
        format!("-{}", human_ms(before - now))
    }
}

/// A duration for people: "250ms", "12.3s", "5m03s", "2h05m".
pub(crate) fn human_ms(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{ms}ms"),
        1_000..60_000 => format!("{:.1}s", ms as f64 / 1000.0),
        60_000..3_600_000 => format!("{}m{:02}s", ms / 60_000, ms % 60_000 / 1000),
        _ => format!("{}h{:02}m", ms / 3_600_000, ms % 3_600_000 / 60_000),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lifeboat_core::{Epoch, JournalKind, RegionId};

    fn entry(seq: u64, at_unix_ms: u64, kind: JournalKind, detail: &str) -> JournalEntry {
        JournalEntry {
            seq,
            at_unix_ms,
            mono_ms: seq,
            epoch: Epoch(2),
            kind,
            region: Some(RegionId::new("b")),
            detail: detail.into(),
        }
    }

    #[test]
    fn steps_show_their_utc_time_and_the_time_since_the_step_before() {
        // 2026-12-02T03:04:05.678Z
        let t = 1_796_180_645_678;
        let text = render(&[
            entry(7, t, JournalKind::Alert, "a unhealthy"),
            entry(8, t + 250, JournalKind::Fenced, "a fenced"),
            entry(9, t + 12_550, JournalKind::Promoted, "b promoted"),
        ]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].contains("2026-12-02T03:04:05.678Z"), "{text}");
        assert!(
            !lines[0].contains('+'),
            "the first step has no step before it: {text}"
        );
        assert!(lines[1].contains("2026-12-02T03:04:05.928Z") && lines[1].contains("+250ms"));
        assert!(
            lines[2].contains("+12.3s") && lines[2].contains("b promoted"),
            "{text}"
        );
        assert!(
            lines[2].contains("epoch 2") && lines[2].contains(" b "),
            "{text}"
        );
    }

    #[test]
    fn durations_read_at_every_scale_and_a_clock_step_back_is_shown() {
        assert_eq!(since_previous(0, 0), "+0ms");
        assert_eq!(since_previous(0, 999), "+999ms");
        assert_eq!(since_previous(0, 1_000), "+1.0s");
        assert_eq!(since_previous(0, 303_000), "+5m03s");
        assert_eq!(since_previous(0, 7_500_000), "+2h05m");
        assert_eq!(since_previous(5_000, 3_000), "-2.0s");
    }
}
