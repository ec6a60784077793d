//! `[database.postgres]`. (Filled in by the PostgreSQL work.)

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {}
