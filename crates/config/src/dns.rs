//! `[dns]`: the authoritative zone the controller serves. (Filled in by the DNS work.)

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DnsConfig {
    /// The zone's apex, e.g. "shop.example.".
    pub zone: String,
}

impl DnsConfig {
    pub(crate) fn validate(&self, _cfg: &crate::Config, _v: &mut crate::Validator<'_>) {}
}
