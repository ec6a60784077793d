//! PostgreSQL cross-region replica orchestration on PostgreSQL's own streaming
//! replication: bootstrap (a primary with checksums, wal_log_hints and a replication
//! role; a replica by pg_basebackup through a slot), adoption of an existing pair,
//! monitoring (role, lag in bytes and seconds from both sides, readiness), promotion
//! (`pg_promote`), a hard fence (stop the server, or close pg_hba.conf and terminate
//! sessions), and rejoin of an old primary by pg_rewind after keeping aside and
//! reporting what it alone had written.
//!
//! The agent uses [`PostgresRole`] through the [`lifeboat_core::DataRole`] trait;
//! `lifeboat demo` and tests build a real pair with [`testing::TestPair`].

pub mod bootstrap;
pub mod exec;
pub mod instance;
pub mod monitor;
pub mod rejoin;
pub mod role;
pub mod server;
pub mod testing;

pub use bootstrap::{
    Adopted, adopt, adopt_region, bootstrap_primary, bootstrap_region, bootstrap_replica,
    set_synchronous_standbys,
};
pub use exec::PgBin;
pub use instance::{Instance, PgError};
pub use rejoin::{RejoinReport, RelationChanges};
pub use role::PostgresRole;
pub use server::ServerSettings;
