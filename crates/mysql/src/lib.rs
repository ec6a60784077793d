//! MySQL / MariaDB cross-region replication, orchestrated: bootstrap of a primary and a
//! replica on GTID replication, lag and readiness, promotion, a hard fence, rejoin of the
//! old primary that keeps its errant transactions, and semi-synchronous replication as
//! the RPO-0 option.
//!
//! The agent drives a region's server through [`MysqlRole`], an implementation of
//! [`lifeboat_core::DataRole`] (the same contract as the PostgreSQL role). Bootstrap and
//! adoption are [`bootstrap_primary`], [`bootstrap_replica`] and [`adopt`]. The
//! [`testing`] module starts real `mariadbd` pairs for tests, the demo and drills.
//!
//! What each piece guarantees is said at the top of its module; docs/mysql.md is the
//! operator's guide (settings, semi-sync caveats, what a rejoin keeps and where).

pub mod bootstrap;
pub mod conn;
pub mod gtid;
pub mod repl;
mod role;
pub mod server;
pub mod testing;

pub use bootstrap::{BootstrapReport, adopt, bootstrap_primary, bootstrap_replica};
pub use conn::{ConnectError, Instance};
pub use role::{MysqlRole, RejoinReport};
