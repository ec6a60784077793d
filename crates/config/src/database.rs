//! `[database]`: the replicated relational database. The engine-specific parts live in
//! `postgres.rs` and `mysql.rs`. (Filled in by the database work.)

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    pub engine: DatabaseEngine,
    #[serde(default)]
    pub postgres: Option<crate::postgres::PostgresConfig>,
    #[serde(default)]
    pub mysql: Option<crate::mysql::MysqlConfig>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DatabaseEngine {
    Postgres,
    #[serde(alias = "mysql")]
    Mariadb,
}

impl DatabaseConfig {
    pub(crate) fn validate(&self, _cfg: &crate::Config, _v: &mut crate::Validator<'_>) {}
}
