//! The controller: the witness site's brain.
//!
//! - [`machine`]: the failover state machine, pure and tested without I/O.
//! - [`store`]: durable state and journal (SQLite, fsync'd; or etcd, feature `etcd`).
//! - [`leadership`]: which of several controllers leads, and until when it may
//!   grant (pure).
//! - [`server`]: the runtime — it feeds the machine with health decisions, agent
//!   reports and operator requests, executes its actions in order, publishes the
//!   routing table DNS serves, and answers the HTTP API.

#[cfg(feature = "etcd")]
pub mod etcd;
#[cfg(feature = "etcd")]
pub mod ha;
pub mod leadership;
pub mod machine;
pub mod server;
pub mod store;

#[cfg(test)]
mod machine_tests;

pub use server::{Controller, ControllerOptions, DiscoveryFn, MetricsFn};
