//! The operator's files under `examples/` are checked by the tools that will read them:
//! the Prometheus alert rules by `promtool check rules` and unit-tested by `promtool test
//! rules`, the systemd units by `systemd-analyze verify`, and each unit's command line is
//! parsed by the binary itself. scripts/test installs promtool (Debian package
//! prometheus) and systemd-analyze (systemd).
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn run(what: &str, cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("{what} did not run ({e}): scripts/test installs it"))
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn the_alert_rules_load_and_fire_as_their_tests_say() {
    let dir = repo().join("examples/prometheus");
    let out = run(
        "promtool",
        Command::new("promtool")
            .args(["check", "rules"])
            .arg(dir.join("alerts.yml")),
    );
    assert!(out.status.success(), "promtool check rules: {}", text(&out));
    // Every rule is tested: a rule without a test could be wrong without anyone knowing.
    let rules = std::fs::read_to_string(dir.join("alerts.yml")).unwrap();
    let tests = std::fs::read_to_string(dir.join("alerts_test.yml")).unwrap();
    let names: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert!(names.len() >= 6, "{names:?}");
    for n in &names {
        assert!(
            tests.contains(&format!(
                "alertname: {n}\n        exp_alerts:\n          - "
            )),
            "alerts_test.yml has no case in which {n} fires"
        );
    }
    let out = run(
        "promtool",
        Command::new("promtool")
            .current_dir(&dir)
            .args(["test", "rules", "alerts_test.yml"]),
    );
    assert!(out.status.success(), "promtool test rules: {}", text(&out));
}

/// The units name /usr/local/bin/lifeboat; verify them with this build in its place.
fn units_with_this_binary(tmp: &Path) -> Vec<PathBuf> {
    let src = repo().join("examples/systemd");
    let mut out = Vec::new();
    for e in std::fs::read_dir(&src).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "service") {
            let body = std::fs::read_to_string(&p)
                .unwrap()
                .replace("/usr/local/bin/lifeboat", env!("CARGO_BIN_EXE_lifeboat"));
            let to = tmp.join(p.file_name().unwrap());
            std::fs::write(&to, body).unwrap();
            out.push(to);
        }
    }
    out.sort();
    out
}

#[test]
fn the_systemd_units_verify_and_their_commands_parse() {
    let tmp = tempfile::tempdir().unwrap();
    let units = units_with_this_binary(tmp.path());
    let names: Vec<String> = units
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        [
            "lifeboat-agent@.service",
            "lifeboat-controller.service",
            "lifeboat-tables@.service"
        ]
    );
    // A template is verified through an instance: region a's.
    let targets = [
        tmp.path().join("lifeboat-agent@a.service"),
        tmp.path().join("lifeboat-controller.service"),
        tmp.path().join("lifeboat-tables@a.service"),
    ];
    let out = run(
        "systemd-analyze",
        Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .args(&targets),
    );
    let said = text(&out);
    assert!(out.status.success(), "systemd-analyze verify: {said}");
    // verify exits 0 on some problems it only prints (an unknown key, a bad value).
    let ours: Vec<&str> = said.lines().filter(|l| l.contains("lifeboat")).collect();
    assert!(ours.is_empty(), "systemd-analyze verify: {said}");

    // Each ExecStart's flags are the binary's: with --help appended, a flag it does not
    // know is an error before the help is printed.
    for unit in &units {
        let body = std::fs::read_to_string(unit).unwrap();
        let line = body
            .lines()
            .find_map(|l| l.strip_prefix("ExecStart="))
            .unwrap_or_else(|| panic!("{} has no ExecStart", unit.display()));
        let argv: Vec<String> = line
            .split_whitespace()
            .map(|w| w.replace("%i", "a"))
            .collect();
        let out = run(
            "lifeboat",
            Command::new(&argv[0]).args(&argv[1..]).arg("--help"),
        );
        assert!(
            out.status.success(),
            "{}: `{line} --help`: {}",
            unit.display(),
            text(&out)
        );
    }

    // Hardening, as systemd scores it (0 best, 100 worst; in tenths): the controller
    // and the table server need little (2.0 when written); the agent runs and signals
    // database servers (5.2). A change that loosens one beyond this fails.
    for (unit, threshold) in [(&targets[1], 30), (&targets[0], 60), (&targets[2], 30)] {
        let out = run(
            "systemd-analyze",
            Command::new("systemd-analyze")
                .args(["security", "--offline=yes"])
                .arg(format!("--threshold={threshold}"))
                .arg(unit),
        );
        assert!(
            out.status.success(),
            "{}: exposure above {threshold}: {}",
            unit.display(),
            text(&out)
        );
    }

    // The agent's guard and managed servers must outlive a restart of the agent
    // (docs/guard.md): systemd must stop only the agent's own process.
    let agent = std::fs::read_to_string(&units[0]).unwrap();
    assert!(agent.lines().any(|l| l == "KillMode=process"), "{agent}");
}
