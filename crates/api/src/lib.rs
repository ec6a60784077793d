//! lifeboat's HTTP API, shared by the controller, the agents and the CLI.
//!
//! This crate holds what both sides of a connection must agree on: the JSON types
//! ([`types`]), the bearer-token check and JSON error bodies ([`http`]), Prometheus
//! text helpers ([`metrics`]) and the typed client ([`client`]). The routes
//! themselves live with the state they serve (controller and agent crates), so no
//! dependency cycle forms.

pub mod client;
pub mod http;
pub mod metrics;
pub mod types;

pub use client::{ApiClient, ClientError};
