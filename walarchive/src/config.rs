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
    /// Mode of the objects written to a `file://` repository, as octal text ("0640").
    pub file_mode: Option<String>,
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

/// The mode of objects in a `file://` repository, and of its directories.
///
/// Objects hold the whole database (a base backup's parts include `pg_authid`), so they are
/// private to the owner by default (0600, directories 0700) whatever the umask of whoever
/// runs walarchive (cron's 022 made them world-readable). Operators who need a group to read
/// the repository (a backup user, a replication tool) set 0640 or 0660; directories then get
/// the execute bit wherever the mode reads (0750, 0770).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileMode(u32);

impl Default for FileMode {
    fn default() -> Self {
        FileMode(0o600)
    }
}

impl FileMode {
    /// Parses octal text ("0640", "640", "0o640"): the owner reads and writes; group and
    /// others get nothing, read, or read and write; nothing is executable.
    pub fn parse(text: &str) -> Result<FileMode, Error> {
        let t = text.trim();
        let digits = t.strip_prefix("0o").unwrap_or(t);
        let bad = || {
            Error::Config(format!(
                "file_mode {text:?} is not a mode walarchive can use: give octal digits with \
                 read and write for the owner, nothing, read or read-write for group and \
                 others, and no execute bits (0600, 0640, 0660, 0644)"
            ))
        };
        if digits.is_empty()
            || digits.len() > 4
            || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b))
        {
            return Err(bad());
        }
        let mode = u32::from_str_radix(digits, 8).map_err(|_| bad())?;
        let classes_ok = [(mode >> 6) & 7, (mode >> 3) & 7, mode & 7]
            .iter()
            .all(|c| matches!(c, 0 | 4 | 6));
        if mode > 0o777 || mode & 0o600 != 0o600 || !classes_ok {
            return Err(bad());
        }
        Ok(FileMode(mode))
    }

    /// The mode of objects.
    pub fn file(self) -> u32 {
        self.0
    }

    /// The mode of directories: the file mode, searchable wherever it is readable.
    pub fn dir(self) -> u32 {
        self.0 | ((self.0 & 0o444) >> 2)
    }

    /// The umask under which files created 0666 and directories created 0777 (what
    /// object_store's local store asks for) get exactly [`FileMode::file`] and
    /// [`FileMode::dir`].
    pub fn umask(self) -> u32 {
        0o777 & !self.dir()
    }
}

impl std::fmt::Display for FileMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04o}", self.0)
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
    fn file_modes() {
        for (text, file, dir, umask) in [
            ("0600", 0o600, 0o700, 0o077),
            ("640", 0o640, 0o750, 0o027),
            ("0o660", 0o660, 0o770, 0o007),
            ("0644", 0o644, 0o755, 0o022),
            ("0646", 0o646, 0o757, 0o020),
        ] {
            let m = FileMode::parse(text).unwrap();
            assert_eq!((m.file(), m.dir(), m.umask()), (file, dir, umask), "{text}");
            // What the umask makes of object_store's 0666 files and 0777 directories.
            assert_eq!(0o666 & !m.umask(), file, "{text}");
            assert_eq!(0o777 & !m.umask(), dir, "{text}");
        }
        assert_eq!(FileMode::default().to_string(), "0600");
        for bad in [
            "", "0755", "0400", "0200", "0620", "0641", "1640", "640x", "0o", "99", "07777",
        ] {
            let e = FileMode::parse(bad).unwrap_err();
            assert!(matches!(e, Error::Config(_)), "{bad}");
            assert!(e.to_string().contains("file_mode"), "{e}");
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
