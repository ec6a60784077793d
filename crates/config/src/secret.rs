//! Secrets are never in the config text: a `*_file` path or a `*_env` variable name.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Where a secret comes from. Exactly one of the two is set.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SecretRef {
    /// A file whose content (trimmed of surrounding white space) is the secret.
    #[serde(default)]
    pub file: Option<PathBuf>,
    /// An environment variable that holds the secret.
    #[serde(default)]
    pub env: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("secret file {}: {source}", path.display())]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("environment variable {0} is not set")]
    Env(String),
    #[error("secret {0} is empty")]
    Empty(String),
    #[error("no secret source: set `file` or `env`")]
    Missing,
}

impl SecretRef {
    pub fn from_file(path: impl Into<PathBuf>) -> Self {
        Self {
            file: Some(path.into()),
            env: None,
        }
    }

    /// Read the secret now.
    pub fn load(&self) -> Result<String, SecretError> {
        let (value, what) = match (&self.file, &self.env) {
            (Some(path), _) => (
                std::fs::read_to_string(path).map_err(|source| SecretError::File {
                    path: path.clone(),
                    source,
                })?,
                path.display().to_string(),
            ),
            (None, Some(var)) => (
                std::env::var(var).map_err(|_| SecretError::Env(var.clone()))?,
                format!("${var}"),
            ),
            (None, None) => return Err(SecretError::Missing),
        };
        let value = value.trim().to_owned();
        if value.is_empty() {
            return Err(SecretError::Empty(what));
        }
        Ok(value)
    }
}

/// Validate the `NAME_file` / `NAME_env` pair of the table at `at`: never both, and one
/// of them when `required`.
pub(crate) fn check_file_or_env(
    v: &mut crate::Validator<'_>,
    at: &str,
    name: &str,
    file: bool,
    env: bool,
    required: bool,
) {
    match (file, env) {
        (false, false) if required => {
            v.error(at, format!("set `{name}_file` or `{name}_env`"));
        }
        (true, true) => v.error(
            &format!("{at}.{name}_env"),
            format!("`{name}_file` and `{name}_env` exclude each other"),
        ),
        _ => {}
    }
}
