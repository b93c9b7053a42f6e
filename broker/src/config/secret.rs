//! Secrets in the configuration: the redacted [`Secret`] type, and reading a secret from the
//! environment variable or file a setting names (never from the file itself; see the parent
//! module's docs).

use std::fmt;
use std::path::Path;

use super::ConfigError;

/// A secret string (password, token). `Debug` and `Display` print `[redacted]`; use
/// [`Secret::expose`] where the value is needed.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret value. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// True when no secret is set.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

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
    Ok(Secret(value))
}
