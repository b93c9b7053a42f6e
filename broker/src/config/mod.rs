//! The broker's TOML configuration.
//!
//! Why secrets are never inline: the configuration file is copied around, checked into
//! configuration management and shown in support tickets. The broker password and the cell
//! tokens are therefore named by an environment variable (`password_env`) or a file
//! (`password_file`), read once at load time into a [`Secret`](crate::secrets::Secret), whose `Debug` is redacted so that
//! logging a configuration (or an error holding one) cannot leak them. Storage credentials for
//! the repositories stay in walarchive's own configuration or environment, which the broker
//! only points to.
//!
//! Unknown keys are errors (`deny_unknown_fields`): a misspelt setting silently falling back
//! to its default is worse than refusing to start.
//!
//! The rooms: [`schema`] is the file's structure (what serde reads, with its defaults),
//! `validate` the checks that refuse a configuration before anything starts, [`secret`] how
//! secrets are read from the environment or a file, and
//! [`duration`] the human-readable durations. Loading (this module) runs them in that order.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::secrets::Keyring;

pub mod duration;
pub mod schema;
pub mod secret;
mod validate;

pub use duration::{parse_duration, HumanDuration};
pub use schema::{
    BackupConfig, BrokerConfig, CellConfig, ClonesConfig, Credentials, DashboardConfig, EtcdConfig,
    NodesConfig, PlanConfig, ReadOnlyFallback, RepositoryConfig, RouterConfig, ServiceConfig,
    StateBackupConfig, StatsConfig, SynchronousCommit, WorkerConfig,
};
use secret::resolve_secret;

/// Errors loading the configuration. Messages name the file and the offending setting.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read the configuration file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML or does not match the expected structure.
    #[error("invalid configuration {origin}: {message}")]
    Parse {
        /// The file (or `<string>`).
        origin: String,
        /// toml's message (with line and column).
        message: String,
    },
    /// A setting has an invalid value.
    #[error("invalid configuration {origin}: {setting}: {message}")]
    Invalid {
        /// The file (or `<string>`).
        origin: String,
        /// The setting, e.g. `router.port_min`.
        setting: String,
        /// What is wrong.
        message: String,
    },
    /// A secret cannot be read from its environment variable or file.
    #[error("invalid configuration {origin}: {setting}: {message}")]
    Secret {
        /// The file (or `<string>`).
        origin: String,
        /// The setting, e.g. `credentials.password_env`.
        setting: String,
        /// What is wrong (never the secret itself).
        message: String,
    },
}

/// Largest `node-count` an instance may have.
pub const MAX_NODES: u8 = 5;

impl BrokerConfig {
    /// The keyring sealing the secrets kept in etcd (loaded by [`BrokerConfig::parse`]).
    pub fn keyring(&self) -> Arc<Keyring> {
        self.keyring
            .clone()
            .expect("BrokerConfig::parse loads the keyring")
    }

    /// Reads, validates and resolves (secrets) the configuration file at `path`.
    pub fn load(path: &Path) -> Result<BrokerConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        BrokerConfig::parse(&text, &path.display().to_string())
    }

    /// Parses, validates and resolves the configuration `text`; `origin` names it in errors.
    /// Relative `*_file` paths are taken as they are (relative to the working directory).
    pub fn parse(text: &str, origin: &str) -> Result<BrokerConfig, ConfigError> {
        let mut c: BrokerConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            origin: origin.to_string(),
            message: e.to_string(),
        })?;
        c.validate(origin)?;
        c.credentials.password = resolve_secret(
            origin,
            "credentials",
            "password",
            c.credentials.password_env.as_deref(),
            c.credentials.password_file.as_deref(),
        )?;
        let secrets = c.secrets.as_ref().ok_or_else(|| ConfigError::Secret {
            origin: origin.to_string(),
            setting: "secrets".into(),
            message: "the key sealing the passwords the broker keeps in etcd is required: set secrets.key_file (or secrets.key_env) to 32 random bytes in base64, e.g. from `head -c 32 /dev/urandom | base64`".into(),
        })?;
        c.keyring = Some(Arc::new(Keyring::load(secrets).map_err(|e| {
            ConfigError::Secret {
                origin: origin.to_string(),
                setting: "secrets".into(),
                message: e.to_string(),
            }
        })?));
        if c.etcd.username.is_some() {
            c.etcd.password = resolve_secret(
                origin,
                "etcd",
                "password",
                c.etcd.password_env.as_deref(),
                c.etcd.password_file.as_deref(),
            )?;
        }
        if c.nodes.etcd_username.is_some() {
            c.nodes.etcd_password = resolve_secret(
                origin,
                "nodes",
                "etcd_password",
                c.nodes.etcd_password_env.as_deref(),
                c.nodes.etcd_password_file.as_deref(),
            )?;
        }
        for (i, cell) in c.cells.iter_mut().enumerate() {
            cell.token = resolve_secret(
                origin,
                &format!("cells[{i}]"),
                "token",
                cell.token_env.as_deref(),
                cell.token_file.as_deref(),
            )?;
        }
        Ok(c)
    }

    /// Patroni's etcd namespace (`nodes.patroni_namespace`, else `<etcd.prefix>/patroni/`).
    pub fn patroni_namespace(&self) -> String {
        self.nodes
            .patroni_namespace
            .clone()
            .unwrap_or_else(|| format!("{}/patroni/", self.etcd.prefix))
    }

    /// The plan with id `plan_id`.
    pub fn plan(&self, plan_id: &str) -> Option<&PlanConfig> {
        self.service.plans.iter().find(|p| p.id == plan_id)
    }
}

#[cfg(test)]
mod tests;
