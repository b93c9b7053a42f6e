//! Resolving the effective settings: flags beat environment variables beat the config file.
//! (clap already merges flags with their `WALARCHIVE_*` variables.)

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use walarchive_core::config::{ConfigFile, RetrySettings};
use walarchive_core::storage::StorageOptions;
use walarchive_core::{Compression, Error, Repository, RetryPolicy};

use crate::cli::GlobalOpts;

/// The default configuration file, read when it exists and no other is named.
pub const DEFAULT_CONFIG: &str = "/etc/walarchive.toml";

/// Everything needed to open the repository.
#[derive(Debug)]
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
        })
    }

    pub fn open(&self) -> Result<Repository> {
        Repository::open(&self.repo, &self.storage, self.policy, self.compression)
            .with_context(|| "cannot open the repository".to_string())
    }
}
