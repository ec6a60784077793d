//! `lifeboat status`: the deployment's state as the controller sees it (regions,
//! health, lease, epoch), or, when no controller answers, what each agent says.

use super::journal::human_ms;
use crate::shared::{api_client, load_config};
use anyhow::Result;
use lifeboat_api::ApiClient;
use lifeboat_api::types::ControllerStatus;
use lifeboat_config::Config;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    #[arg(long, short)]
    config: PathBuf,
    /// Machine-readable JSON instead of the table.
    #[arg(long)]
    json: bool,
}

pub(crate) async fn run(args: StatusArgs) -> Result<ExitCode> {
    let StatusArgs { config, json } = args;
    let cfg = load_config(&config)?;
    let c = api_client(&cfg, false)?;
    // Several controllers: a follower knows the state, the leader knows the agents.
    let st = match c.leader_status().await {
        Ok(st) => st,
        Err(e) => {
            // The witness is what an operator most needs to see past when it is gone:
            // ask every agent directly what it holds.
            return agents_status(&cfg, &e.to_string(), json).await;
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&st)?);
    } else {
        print!("{}", render_status(&st));
    }
    Ok(ExitCode::SUCCESS)
}

/// `lifeboat status` without a controller: each agent's own view, so an operator sees
/// whether the active region still serves on promises (rule 7, docs/architecture.md).
async fn agents_status(cfg: &Config, why: &str, json: bool) -> Result<ExitCode> {
    let token = cfg.auth.secret().load().ok();
    let mut views = Vec::new();
    for (name, rc) in &cfg.regions {
        let c = ApiClient::new(
            format!("http://{}", rc.agent_addr),
            token.clone(),
            Duration::from_secs(3),
        );
        views.push((
            name.clone(),
            c.agent_status().await.map_err(|e| e.to_string()),
        ));
    }
    if json {
        let body: serde_json::Map<String, serde_json::Value> = views
            .iter()
            .map(|(n, v)| {
                let v = match v {
                    Ok(s) => serde_json::to_value(s).unwrap_or_default(),
                    Err(e) => serde_json::json!({ "error": e }),
                };
                (n.clone(), v)
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "controller_error": why,
                "agents": body,
            }))?
        );
    } else {
        print!("{}", render_agents_status(why, &views));
    }
    // The controller is what status asks about: not reaching it is a failure.
    Ok(ExitCode::FAILURE)
}

pub fn render_agents_status(
    why: &str,
    views: &[(String, Result<lifeboat_api::types::AgentStatus, String>)],
) -> String {
    let mut out = format!(
        "controller unreachable ({why}): nothing fails over automatically until it is back.\nwhat each agent says:\n\n{:<10} {:<8} {:<8} {:<8} {:<14} {}\n",
        "REGION", "EPOCH", "ACTIVE", "FENCED", "LEASE LEFT", "WITNESS LOSS"
    );
    for (name, v) in views {
        match v {
            Ok(s) => {
                let mode = if s.witness_lost {
                    "holding the lease on promises".to_owned()
                } else if let Some(p) = &s.promised {
                    format!(
                        "promised {} not to activate for {} ms",
                        p.to, p.remaining_ms
                    )
                } else {
                    "-".to_owned()
                };
                out.push_str(&format!(
                    "{:<10} {:<8} {:<8} {:<8} {:<14} {}\n",
                    name,
                    s.epoch,
                    if s.active { "yes" } else { "no" },
                    if s.fenced { "yes" } else { "no" },
                    s.lease_remaining_ms
                        .map_or("-".into(), |ms| format!("{ms} ms")),
                    mode
                ));
            }
            Err(e) => out.push_str(&format!("{name:<10} agent unreachable: {e}\n")),
        }
    }
    out
}

pub fn render_status(st: &ControllerStatus) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "deployment {}  epoch {}  active {}  phase {}  mode {}  failovers {}\n",
        st.deployment,
        st.epoch,
        st.active.as_ref().map_or("none".into(), |r| r.to_string()),
        st.phase,
        st.mode,
        st.failovers
    ));
    if let Some(l) = &st.lease {
        let when = match u64::try_from(l.expires_in_ms) {
            Ok(ms) => format!("certainly expired in {}", human_ms(ms)),
            Err(_) => format!("expired {} ago", human_ms(l.expires_in_ms.unsigned_abs())),
        };
        out.push_str(&format!(
            "lease    {} (epoch {}), {when}\n",
            l.holder, l.epoch
        ));
    }
    if let Some(v) = &st.leadership {
        out.push_str(&format!(
            "leader   {} (answered by {}{})  etcd: {}\n",
            v.leader.as_deref().unwrap_or("nobody"),
            v.this,
            if v.leading {
                ", leading"
            } else {
                ", following"
            },
            v.etcd
                .iter()
                .map(|e| format!(
                    "{} {}{}",
                    e.endpoint,
                    if e.healthy { "up" } else { "DOWN" },
                    if e.raft_leader { " (raft leader)" } else { "" }
                ))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    out.push_str(&format!(
        "\n{:<10} {:<8} {:<10} {:<8} {:<8} {:<12} {}\n",
        "REGION", "ROLE", "HEALTH", "EPOCH", "FENCED", "LAST REPORT", "DATA ROLES"
    ));
    for r in &st.regions {
        let roles = r
            .roles
            .iter()
            .map(|x| {
                let mut s = format!("{}={:?}", x.name, x.role).to_lowercase();
                if let Some(l) = x.lag_bytes {
                    s.push_str(&format!(" lag {l}B"));
                }
                if !x.ready_to_promote {
                    s.push_str(" (not ready)");
                }
                s
            })
            .collect::<Vec<_>>()
            .join(", ");
        out.push_str(&format!(
            "{:<10} {:<8} {:<10} {:<8} {:<8} {:<12} {}\n",
            r.name,
            if r.active { "active" } else { "standby" },
            format!("{:?}", r.health).to_lowercase(),
            r.agent_epoch.map_or("-".into(), |e| e.to_string()),
            if r.fenced { "yes" } else { "no" },
            r.last_report_ms
                .map_or("never".into(), |m| format!("{} ago", human_ms(m))),
            roles
        ));
    }
    for r in &st.regions {
        if r.witness_lost {
            out.push_str(&format!(
                "{} last reported holding its lease on promises (the witness was unreachable)\n",
                r.name
            ));
        }
        if let Some(p) = &r.promised {
            out.push_str(&format!(
                "{} promised {} (epoch {}) not to activate for {}: it cannot be promoted until then\n",
                r.name,
                p.to,
                p.epoch,
                human_ms(p.remaining_ms)
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use lifeboat_api::types::{LeaseView, PromiseView, RegionView};
    use lifeboat_core::{Epoch, HealthStatus, RegionId};

    fn region(name: &str, last_report_ms: Option<u64>) -> RegionView {
        RegionView {
            name: RegionId::new(name),
            active: name == "a",
            health: HealthStatus::Healthy,
            agent_addr: "127.0.0.1:1".into(),
            last_report_ms,
            agent_epoch: Some(Epoch(3)),
            agent_active: name == "a",
            fenced: name != "a",
            roles: Vec::new(),
            promised: None,
            witness_lost: false,
        }
    }

    #[test]
    fn durations_read_as_durations() {
        let mut b = region("b", Some(125_000));
        b.promised = Some(PromiseView {
            to: RegionId::new("a"),
            epoch: Epoch(3),
            remaining_ms: 2_340,
        });
        let mut st = ControllerStatus {
            deployment: "d".into(),
            epoch: Epoch(3),
            active: Some(RegionId::new("a")),
            phase: "steady".into(),
            mode: "automatic".into(),
            lease: Some(LeaseView {
                holder: RegionId::new("a"),
                epoch: Epoch(3),
                expires_in_ms: 2_250,
                renewed: true,
            }),
            regions: vec![region("a", Some(180)), b, region("c", None)],
            failovers: 0,
            leadership: None,
        };
        let text = render_status(&st);
        assert!(text.contains("certainly expired in 2.2s"), "{text}");
        assert!(text.contains("180ms ago"), "{text}");
        assert!(text.contains("2m05s ago"), "{text}");
        assert!(text.contains("never"), "{text}");
        assert!(text.contains("not to activate for 2.3s"), "{text}");
        assert!(!text.contains(" ms"), "{text}");
        st.lease.as_mut().unwrap().expires_in_ms = -4_000;
        assert!(render_status(&st).contains("expired 4.0s ago"));
    }
}
