//! The TOML configuration file.
//!
//! PostgreSQL runs `archive_command` with the postmaster's environment, which operators
//! rarely control well (systemd units, Patroni), so everything can also come from a file:
//! `archive_command = 'walarchive --config /etc/walarchive.toml wal-push %p'`. Command-line
//! flags beat environment variables, which beat the file; that merge happens in the CLI.
//! Unknown keys are refused so a typo cannot silently fall back to a default.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::retry::RetryPolicy;
use crate::storage::StorageOptions;
use crate::Error;

/// Contents of a configuration file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Repository URL.
    pub repo: Option<String>,
    /// Codec: `zstd`, `zstd:LEVEL`, `lz4` or `none`.
    pub compression: Option<String>,
    /// zstd level (1-22).
    pub compression_level: Option<i32>,
    /// Concurrent transfers (push-ahead, backup parts).
    pub parallel: Option<u32>,
    /// wal-fetch: segments to prefetch.
    pub prefetch: Option<u32>,
    /// wal-push: start the resident `walarchive daemon` when none runs.
    pub daemon: Option<bool>,
    /// Backend options, as object_store configuration keys (`aws_endpoint`,
    /// `azure_storage_account_key`, ...). Values are never printed.
    #[serde(default)]
    pub storage: StorageOptions,
    /// Retry settings.
    #[serde(default)]
    pub retry: RetrySettings,
}

/// Retry settings from the file; missing values keep the defaults.
#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySettings {
    /// Total attempts per storage request.
    pub attempts: Option<u32>,
    /// Time limit of one attempt, in seconds.
    pub request_timeout: Option<f64>,
    /// First backoff delay, in seconds.
    pub base_delay: Option<f64>,
    /// Largest backoff delay, in seconds.
    pub max_delay: Option<f64>,
}

impl RetrySettings {
    /// Applies these settings on top of `policy`.
    pub fn apply(&self, mut policy: RetryPolicy) -> Result<RetryPolicy, Error> {
        let secs = |what: &str, v: f64| {
            if v.is_finite() && v > 0.0 && v < 86_400.0 {
                Ok(Duration::from_secs_f64(v))
            } else {
                Err(Error::Config(format!(
                    "{what} must be a positive number of seconds, got {v}"
                )))
            }
        };
        if let Some(a) = self.attempts {
            if a == 0 {
                return Err(Error::Config("retry attempts must be at least 1".into()));
            }
            policy.max_attempts = a;
        }
        if let Some(v) = self.request_timeout {
            policy.attempt_timeout = secs("request_timeout", v)?;
        }
        if let Some(v) = self.base_delay {
            policy.base_delay = secs("base_delay", v)?;
        }
        if let Some(v) = self.max_delay {
            policy.max_delay = secs("max_delay", v)?;
        }
        Ok(policy)
    }
}

impl ConfigFile {
    /// Reads and parses a configuration file.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::Config(format!(
                "cannot read configuration file {}: {e}",
                path.display()
            ))
        })?;
        Self::parse(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
    }

    /// Parses configuration text. Unknown keys, in every table, are errors naming the key
    /// (and the valid ones, or the nearest).
    pub fn parse(text: &str) -> Result<Self, String> {
        // toml's messages quote the offending line, which may hold a secret: keep only the
        // first line of the message (what and where), without the value it quotes.
        let file: ConfigFile = toml::from_str(text).map_err(|e: toml::de::Error| {
            let msg = without_quoted_value(e.message());
            match e.span() {
                Some(span) => {
                    let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
                    format!("line {line}: {msg}")
                }
                None => msg,
            }
        })?;
        file.storage
            .check_keys()
            .map_err(|e| match line_of_key(text, &e.key) {
                Some(line) => format!("line {line}: {e}"),
                None => e.to_string(),
            })?;
        Ok(file)
    }
}

/// serde's "invalid type: string \"hunter2\", expected u32" without the value (which may
/// be a secret): "invalid type: string, expected u32".
fn without_quoted_value(msg: &str) -> String {
    let msg = msg.trim_end();
    for prefix in ["invalid type: ", "invalid value: "] {
        if let Some(rest) = msg.strip_prefix(prefix) {
            if let Some((what, expected)) = rest.split_once(", expected ") {
                let kind = what.split(['`', '"']).next().unwrap_or(what).trim_end();
                return format!("{prefix}{kind}, expected {expected}");
            }
        }
    }
    msg.to_string()
}

/// The line (from 1) that sets `key`, e.g. `aws_endpont = "..."`.
fn line_of_key(text: &str, key: &str) -> Option<usize> {
    text.lines()
        .position(|l| {
            let l = l.trim_start();
            let l = l
                .strip_prefix('"')
                .and_then(|r| r.strip_prefix(key)?.strip_prefix('"'))
                .or_else(|| l.strip_prefix(key));
            l.is_some_and(|rest| rest.trim_start().starts_with('='))
        })
        .map(|i| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_file() {
        let c = ConfigFile::parse(
            r#"
repo = "s3://bucket/prefix"
compression = "lz4"
[storage]
aws_endpoint = "http://127.0.0.1:9000"
aws_secret_access_key = "s3cret"
[retry]
attempts = 3
request_timeout = 2.5
"#,
        )
        .unwrap();
        assert_eq!(c.repo.as_deref(), Some("s3://bucket/prefix"));
        assert_eq!(c.storage.0["aws_endpoint"], "http://127.0.0.1:9000");
        let p = c.retry.apply(RetryPolicy::default()).unwrap();
        assert_eq!(p.max_attempts, 3);
        assert_eq!(p.attempt_timeout, Duration::from_millis(2500));
        assert!(!format!("{c:?}").contains("s3cret"));
    }

    #[test]
    fn refuses_unknown_storage_keys_naming_the_nearest() {
        let text =
            "repo = \"s3://b/p\"\n[storage]\naws_region = \"x\"\naws_endpont = \"http://h\"\n";
        let e = ConfigFile::parse(text).unwrap_err();
        assert!(
            e.starts_with(
                "line 4: unknown key \"aws_endpont\" in [storage]: did you mean \"aws_endpoint\"?"
            ),
            "{e}"
        );
        assert!(!e.contains("http://h"), "{e}");
        // Values of the wrong type are not echoed either.
        for text in [
            "[storage]\naws_secret_access_key = 123456789\n",
            "parallel = \"hunter2\"\n",
        ] {
            let e = ConfigFile::parse(text).unwrap_err();
            assert!(e.contains("invalid type"), "{e}");
            assert!(!e.contains("123456789") && !e.contains("hunter2"), "{e}");
        }
    }

    #[test]
    fn refuses_unknown_keys_without_echoing_values() {
        let e = ConfigFile::parse("repo = \"s3://b\"\npasword = \"hunter2\"\n").unwrap_err();
        assert!(e.contains("line 2") && e.contains("pasword"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
        assert!(ConfigFile::parse("[retry]\nattempts = 0\n")
            .unwrap()
            .retry
            .apply(RetryPolicy::default())
            .is_err());
    }
}
