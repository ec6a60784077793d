//! Metrics helpers shared by the controller and the agents. The page itself (families,
//! samples, the OpenMetrics text) is `lifeboat_core::metrics`, on the Prometheus
//! project's client library.

pub use lifeboat_core::metrics::{CONTENT_TYPE, Kind, Page};

/// Health as a number: 1 healthy, 0 unhealthy, -1 unknown.
pub fn health_value(h: lifeboat_core::HealthStatus) -> f64 {
    match h {
        lifeboat_core::HealthStatus::Healthy => 1.0,
        lifeboat_core::HealthStatus::Unhealthy => 0.0,
        lifeboat_core::HealthStatus::Unknown => -1.0,
    }
}
