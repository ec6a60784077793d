//! The prober harness the probe tests share: a config around some checks, a running
//! `Prober` (stopped on Drop, also when a test fails), and waiting for a state.

#![allow(dead_code)]

use lifeboat_config::Config;
use lifeboat_core::{HealthStatus, VantageId};
use lifeboat_health::{CheckState, CheckStates, Prober};
use std::path::Path;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How long any test waits for a state before failing (generous: CI machines are busy).
pub const DEADLINE: Duration = Duration::from_secs(20);

pub fn config(checks: &str) -> Config {
    let text = format!(
        r#"
[controller]
api_addr = "127.0.0.1:1"
state_dir = "/nonexistent"
[auth]
token_env = "LIFEBOAT_TEST_TOKEN"
[regions.a]
agent_addr = "127.0.0.1:2"
role = "active"
[regions.b]
agent_addr = "127.0.0.1:3"
role = "standby"
{checks}
"#
    );
    Config::parse(Path::new("test.toml"), &text).expect("valid test config")
}

/// A running prober; stops on Drop, also when a test fails.
pub struct Running {
    states: watch::Receiver<CheckStates>,
    cancel: CancellationToken,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

pub fn start(checks: &str) -> Running {
    let prober = Prober::new(&config(checks), VantageId::Controller).expect("prober");
    let states = prober.subscribe();
    let cancel = CancellationToken::new();
    tokio::spawn(prober.run(cancel.clone()));
    Running { states, cancel }
}

impl Running {
    /// Waits until `check` satisfies `cond`; fails with the last state after DEADLINE.
    pub async fn until(&mut self, check: &str, cond: impl Fn(&CheckState) -> bool) -> CheckState {
        let wait = async {
            loop {
                let hit = self
                    .states
                    .borrow_and_update()
                    .get(check)
                    .filter(|s| cond(s))
                    .cloned();
                if let Some(s) = hit {
                    return s;
                }
                self.states.changed().await.expect("prober stopped");
            }
        };
        match tokio::time::timeout(DEADLINE, wait).await {
            Ok(s) => s,
            Err(_) => panic!(
                "check {check:?} never reached the condition; last state: {:?}",
                self.states.borrow().get(check)
            ),
        }
    }

    pub async fn status(&mut self, check: &str, status: HealthStatus) -> CheckState {
        self.until(check, |s| s.status == status).await
    }
}
