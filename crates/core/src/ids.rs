//! Identifiers: regions, vantage points and epochs.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The name of a region (a site: data centre, cloud region) as written in the config.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RegionId(pub String);

impl RegionId {
    pub fn new(name: impl Into<String>) -> Self {
        Self(name.into())
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RegionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

impl From<&str> for RegionId {
    fn from(s: &str) -> Self {
        Self(s.to_owned())
    }
}

/// The place a health probe runs from: the controller or one region's agent.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VantageId {
    Controller,
    Agent(RegionId),
}

impl fmt::Display for VantageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VantageId::Controller => f.write_str("controller"),
            VantageId::Agent(r) => write!(f, "agent:{r}"),
        }
    }
}

/// The fencing token. Every promotion increments it; the controller persists a new
/// epoch before any command that carries it leaves, and an agent refuses any command
/// older than the highest epoch it has persisted.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Epoch(pub u64);

impl Epoch {
    pub const ZERO: Epoch = Epoch(0);

    /// The epoch after this one, or None at `u64::MAX`: a fencing token must never
    /// wrap to 0 (every agent would then refuse every command for good, or worse,
    /// accept one it fenced long ago). There is deliberately no unchecked `next`.
    #[must_use]
    pub fn checked_next(self) -> Option<Epoch> {
        self.0.checked_add(1).map(Epoch)
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_order_and_increase() {
        assert!(Epoch(3).checked_next() > Some(Epoch(3)));
        assert_eq!(Epoch::ZERO.checked_next(), Some(Epoch(1)));
        assert_eq!(Epoch(u64::MAX).checked_next(), None, "never wraps to 0");
        assert_eq!(serde_json::to_string(&Epoch(7)).unwrap(), "7");
    }
}
