//! Opening an instance's repository with the core library, with the storage settings the
//! walarchive CLI the broker runs would use.
//!
//! Why one place: the worker (is a new instance's repository empty?) and the API (has a
//! clone's source a completed base backup?) must read the same archive the nodes write, with
//! the same credentials and retry policy; a second way to open it would drift.

use std::path::{Path, PathBuf};

use crate::config::BrokerConfig;

/// The walarchive configuration file the broker's storage settings come from: the broker's
/// `repository.walarchive_config`, else `$WALARCHIVE_CONFIG`.
pub(crate) fn walarchive_config(config: &BrokerConfig) -> Option<PathBuf> {
    config
        .repository
        .walarchive_config
        .clone()
        .or_else(|| std::env::var_os("WALARCHIVE_CONFIG").map(Into::into))
}

/// Opens the repository at `url` with the storage settings of the broker's configuration
/// (see [`open_with`]).
pub(crate) fn open(
    config: &BrokerConfig,
    url: &str,
) -> Result<walarchive::Repository, walarchive::Error> {
    open_with(url, walarchive_config(config).as_deref())
}

/// Opens `url` with storage settings as the CLI the broker runs takes them: the `[storage]`
/// and `[retry]` tables of `config` (the broker's `walarchive_config`, or
/// `/etc/walarchive.toml`), the environment for the rest.
pub(crate) fn open_with(
    url: &str,
    config: Option<&Path>,
) -> Result<walarchive::Repository, walarchive::Error> {
    let (file, policy, env) = settings(config)?;
    walarchive::Repository::open(
        url,
        &file.storage,
        &env,
        policy,
        walarchive::Compression::default(),
    )
}

/// The object store at `url` (no repository descriptor read), opened with the archives'
/// storage settings as [`open`] takes them, and their retry policy: what `selftest` checks
/// the credentials with.
pub(crate) fn open_storage(
    config: &BrokerConfig,
    url: &str,
) -> Result<(walarchive::storage::Location, walarchive::RetryPolicy), walarchive::Error> {
    let (file, policy, env) = settings(walarchive_config(config).as_deref())?;
    let loc = walarchive::storage::open(url, &file.storage, &env, &policy)?;
    Ok((loc, policy))
}

fn settings(
    config: Option<&Path>,
) -> Result<
    (
        walarchive::config::ConfigFile,
        walarchive::RetryPolicy,
        walarchive::storage::StorageEnv,
    ),
    walarchive::Error,
> {
    let default = Path::new("/etc/walarchive.toml");
    let file = match config {
        Some(p) => walarchive::config::ConfigFile::load(p)?,
        None if default.exists() => walarchive::config::ConfigFile::load(default)?,
        None => Default::default(),
    };
    let policy = file.retry.apply(walarchive::RetryPolicy::default())?;
    // The broker's own environment, as walarchive's CLI passes its own.
    let env = walarchive::storage::StorageEnv::new(
        std::env::vars(),
        std::env::var_os(walarchive::storage::unreliable::ENV),
    );
    Ok((file, policy, env))
}
