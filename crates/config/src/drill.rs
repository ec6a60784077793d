//! `[drill]`: how `lifeboat drill` reaches the application and injects faults.
//! (Filled in by the drill work.)

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct DrillConfig {}

impl DrillConfig {
    pub(crate) fn validate(&self, _cfg: &crate::Config, _v: &mut crate::Validator<'_>) {}
}
