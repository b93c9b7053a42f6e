//! Resolving the effective settings: flags beat environment variables beat the config file.
//! (clap already merges flags with their `WALARCHIVE_*` variables.)
//!
//! The other variables walarchive reads (cloud credentials, libpq's `PG*`, `PGDATA`, the
//! prefetch and fault-injection hooks) are read here too, once, into [`Environment`], and
//! passed down as options: the libraries never read the environment.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use walarchive::config::{ConfigFile, FileMode, RetrySettings};
use walarchive::pg::PgEnv;
use walarchive::storage::{unreliable, Backend, StorageEnv, StorageOptions};
use walarchive::{Compression, Error, Repository, RetryPolicy};
use walarchive_restore::prefetch;

use crate::cli::GlobalOpts;

/// The default configuration file, read when it exists and no other is named.
pub const DEFAULT_CONFIG: &str = "/etc/walarchive.toml";

/// The process environment, as the libraries take it.
#[derive(Debug, Default)]
pub struct Environment {
    /// Store credentials and endpoints, and the fault-injection plan.
    pub storage: StorageEnv,
    /// libpq's variables.
    pub pg: PgEnv,
    /// `$PGDATA` (non-empty), where `wal-push` looks for the data directory last.
    pub pgdata: Option<PathBuf>,
    /// `WALARCHIVE_PREFETCH_WORKER`: this process is a prefetch worker.
    pub prefetch_worker: Option<String>,
    /// `WALARCHIVE_PREFETCH_INLINE=1`: prefetch in the `wal-fetch` process.
    pub prefetch_inline: bool,
}

impl Environment {
    /// Reads this process's environment. Variables that are not valid UTF-8 are ignored,
    /// except the fault plan, which reports it.
    pub fn read() -> Environment {
        let vars: Vec<(String, String)> = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect();
        let get = |name: &str| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        Environment {
            pg: PgEnv::from_lookup(get),
            pgdata: std::env::var_os("PGDATA")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
            prefetch_worker: get(prefetch::WORKER_ENV),
            prefetch_inline: get(prefetch::INLINE_ENV).is_some_and(|v| v == "1"),
            storage: StorageEnv::new(vars, std::env::var_os(unreliable::ENV)),
        }
    }
}

/// Everything needed to open the repository. `Debug` shows the URL redacted and the storage
/// options' keys only.
pub struct Settings {
    pub repo: String,
    pub compression: Compression,
    pub policy: RetryPolicy,
    pub storage: StorageOptions,
    /// Concurrent transfers (push-ahead, backup parts).
    pub parallel: usize,
    /// wal-fetch: segments to prefetch.
    pub prefetch: usize,
    /// wal-push: start the resident daemon when none runs.
    pub daemon: bool,
    /// Mode of objects (and directories) in a `file://` repository.
    pub file_mode: FileMode,
    /// The process environment.
    pub env: Environment,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("repo", &walarchive::storage::redact_url(&self.repo))
            .field("compression", &self.compression)
            .field("storage", &self.storage)
            .field("parallel", &self.parallel)
            .field("prefetch", &self.prefetch)
            .field("daemon", &self.daemon)
            .field("file_mode", &self.file_mode)
            .finish_non_exhaustive()
    }
}

impl Settings {
    pub fn resolve(g: &GlobalOpts) -> Result<Settings> {
        let file = match &g.config {
            Some(p) => ConfigFile::load(p)?,
            None if Path::new(DEFAULT_CONFIG).exists() => {
                ConfigFile::load(&PathBuf::from(DEFAULT_CONFIG))?
            }
            None => ConfigFile::default(),
        };
        let repo = g.repo.clone().or(file.repo).ok_or_else(|| {
            Error::Config(
                "no repository configured: pass --repo URL, set WALARCHIVE_REPO, or set repo in the config file"
                    .into(),
            )
        })?;
        let codec_text = g.compression.clone().or(file.compression);
        let compression = match codec_text {
            Some(t) => t
                .parse::<Compression>()
                .map_err(|e| Error::Config(e.to_string()))?,
            None => Compression::default(),
        };
        let compression = compression
            .with_level(g.compression_level.or(file.compression_level))
            .map_err(|e| Error::Config(e.to_string()))?;
        let policy = file.retry.apply(RetryPolicy::default())?;
        let policy = RetrySettings {
            attempts: g.retries,
            request_timeout: g.request_timeout,
            ..Default::default()
        }
        .apply(policy)?;
        Ok(Settings {
            repo,
            compression,
            policy,
            storage: file.storage,
            parallel: g.parallel.or(file.parallel).unwrap_or(2) as usize,
            prefetch: g.prefetch.or(file.prefetch).unwrap_or(8) as usize,
            daemon: g.daemon.or(file.daemon).unwrap_or(false),
            file_mode: match g.file_mode.as_ref().or(file.file_mode.as_ref()) {
                Some(text) => FileMode::parse(text)?,
                None => FileMode::default(),
            },
            env: Environment::read(),
        })
    }

    /// A digest of everything that decides where and how a segment is archived: repository
    /// URL, codec, storage options and the storage variables of the environment (not
    /// retries, parallelism or logging, which a daemon may keep its own of). `wal-push` uses
    /// a running daemon only when the daemon's is the same (a
    /// daemon started before a configuration change must not archive into the old
    /// repository, or with old credentials). Secrets go into the digest only.
    pub fn daemon_key(&self) -> String {
        let mut h = Vec::new();
        let mut field = |k: &str, v: &str| {
            h.extend_from_slice(&(k.len() as u64).to_le_bytes());
            h.extend_from_slice(k.as_bytes());
            h.extend_from_slice(&(v.len() as u64).to_le_bytes());
            h.extend_from_slice(v.as_bytes());
        };
        field("repo", &self.repo);
        field("compression", &self.compression.to_string());
        field("file_mode", &self.file_mode.to_string());
        for (k, v) in &self.storage.0 {
            field(&format!("storage.{k}"), v);
        }
        // In name order (a BTreeMap's).
        let env = self.env.storage.vars().filter(|(k, _)| {
            ["AWS_", "AZURE_", "GOOGLE_", "OS_", "SWIFT_", "ST_"]
                .iter()
                .any(|p| k.starts_with(p))
        });
        for (k, v) in env {
            field(&format!("env.{k}"), v);
        }
        walarchive::format::Digest::sha256(&h).to_string()
    }

    pub fn open(&self) -> Result<Repository> {
        let mut repo = Repository::open(
            &self.repo,
            &self.storage,
            &self.env.storage,
            self.policy,
            self.compression,
        )
        .with_context(|| "cannot open the repository".to_string())?;
        if repo.backend() == Backend::Local {
            restrict_umask(self.file_mode);
            repo.narrow_to(self.file_mode);
        }
        Ok(repo)
    }
}

/// Sets this process's umask so that what object_store's local store creates (files 0666,
/// directories 0777, through a temporary file and a rename) gets exactly `mode`, whatever
/// umask walarchive was started with (cron's 022 made base-backup parts, `pg_authid`
/// included, world-readable). A umask rather than a chmod after the fact: no object or
/// directory is ever visible, even for an instant, with wider permissions. Exactly `mode`,
/// not merely narrower than the inherited umask: an operator's `file_mode = "0640"` must
/// hold under PostgreSQL's umask 077 too. What else the process creates (restored files,
/// counters, sockets) sets its mode explicitly or is the owner's anyway.
fn restrict_umask(mode: FileMode) {
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(mode.umask() as _));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_no_credentials() {
        let s = Settings {
            repo: "s3://AKIAKEY:Secret123@bucket/x".into(),
            compression: Compression::default(),
            policy: RetryPolicy::default(),
            storage: StorageOptions([("aws_secret_access_key".into(), "Secret456".into())].into()),
            parallel: 2,
            prefetch: 8,
            daemon: false,
            file_mode: FileMode::default(),
            env: Environment::default(),
        };
        let shown = format!("{s:?}");
        assert!(
            !shown.contains("AKIAKEY") && !shown.contains("Secret") && shown.contains("<redacted>"),
            "{shown}"
        );
    }
}
