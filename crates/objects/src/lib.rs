//! Cross-region object replication with S3 Cross-Region Replication semantics,
//! between any object stores object_store supports: a local directory (the embedded
//! default), S3-compatible servers, GCS and Azure.
//!
//! The [`Replicator`] of the active region pushes its new, changed and (per rule)
//! deleted objects to every other region's store; a standby receives only. Each
//! object's replication state (PENDING / COMPLETED / FAILED / REPLICA, attempts, last
//! error, times) is kept in SQLite, so a restart resumes without copying completed
//! objects again. Copies are streamed (multipart above one part), checksummed with
//! SHA-256 by lifeboat and verified at the destination. Objects that arrived as
//! replicas are never sent back after a failover (no ping-pong). The region handle
//! ([`Replicator::role`]) implements [`lifeboat_core::DataRole`]: fencing stops
//! replication out of the region at once.
//!
//! See docs/objects.md for the operator's view.

pub mod cli;
pub mod db;
pub mod metrics;
mod replicator;
pub mod s3;
pub mod source;
pub mod store;
pub mod transfer;

pub use metrics::ObjectMetrics;
pub use replicator::{Gateway, Mode, ObjectEvent, RegionRole, Replicator, db_path, keep_dir};
pub use source::{Change, ChangeSource};
pub use store::Store;
