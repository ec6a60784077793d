//! Types shared by every lifeboat crate.
//!
//! Nothing here does I/O. The crate names the concepts of docs/architecture.md once so that
//! the controller, the agents and the data layers agree on them:
//! [`RegionId`], [`Epoch`] (the fencing token), [`HealthStatus`], journal
//! entries ([`JournalEntry`]), the live [`RoutingTable`] that DNS serves, and the
//! [`DataRole`] trait through which the agent fences, promotes and demotes the
//! data layers of its region (databases, object replication, services).

mod ids;
mod journal;
pub mod metrics;
mod role;
mod routing;

pub use ids::{Epoch, RegionId, VantageId};
pub use journal::{JournalEntry, JournalKind};
pub use role::{
    Activation, DataRole, EpochRatchet, FollowTarget, GuardTarget, RoleError, RoleHealth,
    RoleStatus, STATUS_DEADLINE, SharedRole,
};
pub use routing::{HealthStatus, RoutingTable};
