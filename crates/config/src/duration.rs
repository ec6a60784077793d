//! Human-readable durations in the config: "500ms", "5s", "1m 30s".

use serde::{Deserialize, Deserializer, Serializer, de};
use std::time::Duration;

/// Parse a duration the way the config writes it.
pub fn parse(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|e| {
        format!("invalid duration {text:?} ({e}); write it like \"500ms\", \"5s\" or \"1m\"")
    })
}

/// `#[serde(deserialize_with = "duration::de")]`
pub fn de<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    parse(&s).map_err(de::Error::custom)
}

/// `#[serde(default, deserialize_with = "duration::de_opt")]`
pub fn de_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let s = Option::<String>::deserialize(d)?;
    s.map(|s| parse(&s).map_err(de::Error::custom)).transpose()
}

/// Format a duration back the way the config writes it.
pub fn format(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// `#[serde(serialize_with = "duration::ser")]`: the syntax [`de`] reads ("500ms").
pub fn ser<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format(*d))
}

/// `#[serde(serialize_with = "duration::ser_opt")]`: absent stays absent.
pub fn ser_opt<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_some(&format(*d)),
        None => s.serialize_none(),
    }
}
