//! `[objects]`: object replication between the regions' stores. (Filled in by the objects work.)

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ObjectsConfig {}

impl ObjectsConfig {
    pub(crate) fn validate(&self, _cfg: &crate::Config, _v: &mut crate::Validator<'_>) {}
}
