//! Secrets in the configuration: reading a [`Secret`] from the environment variable or file a
//! setting names (never from the file itself; see the parent module's docs).

use std::path::Path;

use super::ConfigError;
use crate::secrets::Secret;

/// Reads a secret from exactly one of `env` (variable name) and `file`.
pub(super) fn resolve_secret(
    origin: &str,
    section: &str,
    what: &str,
    env: Option<&str>,
    file: Option<&Path>,
) -> Result<Secret, ConfigError> {
    let err = |setting: String, message: String| ConfigError::Secret {
        origin: origin.to_string(),
        setting,
        message,
    };
    let value = match (env, file) {
        (Some(_), Some(_)) => {
            return Err(err(
                format!("{section}.{what}_env"),
                format!("set either {what}_env or {what}_file, not both"),
            ))
        }
        (None, None) => {
            return Err(err(
                format!("{section}.{what}_env"),
                format!("set {what}_env (an environment variable name) or {what}_file (a file path); the {what} itself is never written in the configuration"),
            ))
        }
        (Some(var), None) => std::env::var(var).map_err(|_| {
            err(
                format!("{section}.{what}_env"),
                format!("environment variable {var} is not set (or not UTF-8)"),
            )
        })?,
        (None, Some(path)) => {
            let mut v = std::fs::read_to_string(path).map_err(|e| {
                err(
                    format!("{section}.{what}_file"),
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            if v.ends_with('\n') {
                v.pop();
                if v.ends_with('\r') {
                    v.pop();
                }
            }
            v
        }
    };
    if value.is_empty() {
        return Err(err(
            format!("{section}.{what}"),
            format!("the {what} is empty"),
        ));
    }
    Ok(Secret::new(value))
}
