//! The controller: the witness site's brain.
//!
//! - [`machine`]: the failover state machine, pure and tested without I/O.
//! - [`store`]: durable state and journal (SQLite, fsync'd).
//! - the runtime (`server`) feeds the machine with health decisions, agent reports
//!   and operator requests, executes its actions in order, and serves the HTTP API.

pub mod machine;
#[cfg(test)]
mod machine_tests;
pub mod store;
