//! `[database.mysql]`. (Filled in by the MySQL / MariaDB work.)

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MysqlConfig {}
