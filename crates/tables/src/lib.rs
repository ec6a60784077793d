//! Global tables (docs/tables.md): a DynamoDB-compatible table server per region.
//!
//! - [`value`]: DynamoDB's attribute values, numbers as exact decimals, item sizes,
//!   and the order-preserving encoding of key values.
//! - [`expr`]: the expression language (condition, filter, update, projection, key
//!   condition), parsed to an AST and evaluated against items.
//! - [`sigv4`]: AWS Signature Version 4, verified against the configured keys (the
//!   `lifeboat-sigv4` crate, re-exported: lifeboat's S3 client signs with it too).
//! - [`store`]: a region's tables in SQLite: group commit, versions, the change log.
//! - [`api`]: DynamoDB's operations on the store; [`error`]: its error shapes.
//! - [`streams`]: the DynamoDB Streams API over the change log.
//! - [`replicate`]: pulling the other regions' changes; last writer wins, conflicts
//!   recorded.
//! - [`server`]: the API port (SigV4) and the peer port, the pullers, the TTL sweeper,
//!   the tombstone collector.

pub mod expr;
pub use lifeboat_sigv4 as sigv4;
pub mod value;

pub mod api;
pub mod error;
pub mod replicate;
pub mod server;
pub mod store;
pub mod streams;
