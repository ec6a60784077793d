//! The quorum decision: vantage reports in, one verdict per check and per region out.
//!
//! Pure (no I/O, no clock reads: the caller passes each report's age). Rules:
//! - A report older than `failover.report_ttl` is ignored; for a check, only the vantage
//!   points in its vantage list count. When one vantage point sent several fresh reports,
//!   the youngest wins.
//! - A check is Unhealthy when at least `Config::check_quorum(check)` fresh vantage
//!   points report it Unhealthy; Healthy when it is not Unhealthy and at least one fresh
//!   vantage point reports it Healthy; otherwise Unknown. So one partitioned observer
//!   cannot make a check Unhealthy while the quorum is above one.
//! - A region is Unhealthy when any check with `region = R` is Unhealthy, Healthy when
//!   all are Healthy, otherwise Unknown; a region without checks is Healthy (Route 53:
//!   no health check means healthy).

use crate::VantageReport;
use lifeboat_config::Config;
use lifeboat_core::{HealthStatus, RegionId, VantageId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// The quorum's view of every check and region.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct Decision {
    pub checks: BTreeMap<String, CheckVerdict>,
    pub regions: BTreeMap<RegionId, HealthStatus>,
}

/// One check's verdict and the votes behind it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct CheckVerdict {
    pub status: HealthStatus,
    pub unhealthy_votes: usize,
    pub healthy_votes: usize,
    /// Unhealthy votes needed.
    pub quorum: usize,
    /// What each fresh vantage point in the check's list reported (Unknown when its
    /// report does not mention the check). In JSON the keys read "controller" and
    /// "agent:REGION" (JSON object keys must be strings).
    #[serde(with = "vantage_keys")]
    pub vantage: BTreeMap<VantageId, HealthStatus>,
}

/// (De)serializes a map keyed by [`VantageId`] with the ids' display form as keys.
mod vantage_keys {
    use lifeboat_core::{HealthStatus, RegionId, VantageId};
    use serde::{Deserialize, Deserializer, Serializer, de::Error as _};
    use std::collections::BTreeMap;

    pub fn serialize<S: Serializer>(
        map: &BTreeMap<VantageId, HealthStatus>,
        ser: S,
    ) -> Result<S::Ok, S::Error> {
        ser.collect_map(map.iter().map(|(k, v)| (k.to_string(), v)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        de: D,
    ) -> Result<BTreeMap<VantageId, HealthStatus>, D::Error> {
        BTreeMap::<String, HealthStatus>::deserialize(de)?
            .into_iter()
            .map(|(k, v)| {
                let id = if k == "controller" {
                    VantageId::Controller
                } else if let Some(region) = k.strip_prefix("agent:") {
                    VantageId::Agent(RegionId::new(region))
                } else {
                    return Err(D::Error::custom(format!("{k:?} is not a vantage point")));
                };
                Ok((id, v))
            })
            .collect()
    }
}

/// Decides every check and region of `cfg` from the reports (each with its age).
pub fn decide(cfg: &Config, reports: &[(VantageReport, Duration)]) -> Decision {
    // The youngest fresh report of each vantage point.
    let mut fresh: BTreeMap<&VantageId, (&VantageReport, Duration)> = BTreeMap::new();
    for (report, age) in reports {
        if *age > cfg.failover.report_ttl {
            continue;
        }
        let entry = fresh.entry(&report.vantage).or_insert((report, *age));
        if *age < entry.1 {
            *entry = (report, *age);
        }
    }

    let mut checks = BTreeMap::new();
    for (name, check) in &cfg.checks {
        let quorum = cfg.check_quorum(check);
        let vantage: BTreeMap<VantageId, HealthStatus> = cfg
            .check_vantage(check)
            .into_iter()
            .filter_map(|vp| {
                let (report, _) = fresh.get(&vp)?;
                let status = report.checks.get(name).copied().unwrap_or_default();
                Some((vp, status))
            })
            .collect();
        let votes = |s: HealthStatus| vantage.values().filter(|v| **v == s).count();
        let (unhealthy_votes, healthy_votes) =
            (votes(HealthStatus::Unhealthy), votes(HealthStatus::Healthy));
        let status = if unhealthy_votes >= quorum {
            HealthStatus::Unhealthy
        } else if healthy_votes >= 1 {
            HealthStatus::Healthy
        } else {
            HealthStatus::Unknown
        };
        checks.insert(
            name.clone(),
            CheckVerdict {
                status,
                unhealthy_votes,
                healthy_votes,
                quorum,
                vantage,
            },
        );
    }

    let regions = cfg
        .region_ids()
        .into_iter()
        .map(|region| {
            let statuses: Vec<HealthStatus> = cfg
                .checks
                .iter()
                .filter(|(_, c)| c.region.as_deref() == Some(region.as_str()))
                .map(|(name, _)| {
                    checks
                        .get(name)
                        .map_or(HealthStatus::Unknown, |v: &CheckVerdict| v.status)
                })
                .collect();
            let health = if statuses.contains(&HealthStatus::Unhealthy) {
                HealthStatus::Unhealthy
            } else if statuses.iter().all(|s| *s == HealthStatus::Healthy) {
                HealthStatus::Healthy
            } else {
                HealthStatus::Unknown
            };
            (region, health)
        })
        .collect();

    Decision { checks, regions }
}
