//! The cell agent's configuration file (`walarchive-broker cell --config cell.toml`) and its
//! API token.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{io_err, Error};
use crate::secrets::Secret;

/// Environment variable holding the agent's API token (else `token_file` in the config).
pub const TOKEN_ENV: &str = "WALARCHIVE_CELL_TOKEN";

/// The agent's configuration file (`walarchive-broker cell --config cell.toml`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CellConfig {
    /// Address of the HTTP API, e.g. `127.0.0.1:7100`.
    pub listen: SocketAddr,
    /// TLS of the API: its certificate, and the CA the broker's client certificate must be
    /// signed by (mutual TLS: a client without such a certificate is refused before its
    /// token is even read).
    #[serde(default)]
    pub tls: Option<crate::tls::TlsFiles>,
    /// Serve plain HTTP on a non-loopback `listen` address (the token and the nodes'
    /// passwords would cross the network in clear).
    #[serde(default)]
    pub allow_plaintext: bool,
    /// Directory holding one sub-directory per node (traversable by the postgres user).
    pub data_root: PathBuf,
    /// File holding the API token (when the environment variable `WALARCHIVE_CELL_TOKEN`
    /// is not set).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// The Patroni executable.
    #[serde(default = "default_patroni")]
    pub patroni: PathBuf,
    /// PostgreSQL's binaries.
    #[serde(default = "default_pg_bin_dir")]
    pub pg_bin_dir: PathBuf,
    /// The OS user PostgreSQL and Patroni run as.
    #[serde(default = "default_user")]
    pub user: String,
    /// PostgreSQL's Unix-socket directory, shared by the cell's nodes (default
    /// `<data_root>/.run`). A socket's path is limited to 107 bytes: with a deep `data_root`,
    /// set a short one here.
    #[serde(default)]
    pub socket_dir: Option<PathBuf>,
    /// The nodes' ports (PostgreSQL, Patroni's API) are chosen in this inclusive range,
    /// `[min, max]`; default: any port the kernel hands out. Cells that share a machine (the
    /// single-machine mode, tests) need disjoint ranges, or two may pick one port.
    #[serde(default)]
    pub ports: Option<[u16; 2]>,
}

fn default_patroni() -> PathBuf {
    "/usr/bin/patroni".into()
}
fn default_pg_bin_dir() -> PathBuf {
    "/usr/lib/postgresql/15/bin".into()
}
fn default_user() -> String {
    "postgres".into()
}

/// The longest socket name PostgreSQL adds to the socket directory: `/.s.PGSQL.65535`.
pub(super) const SOCKET_NAME_MAX: usize = 16;
/// Longest Unix socket path (`sun_path`, with its terminating NUL).
pub(super) const SOCKET_PATH_MAX: usize = 107;

impl CellConfig {
    /// PostgreSQL's socket directory: `socket_dir`, else `<data_root>/.run` (not a node name,
    /// which never holds a `.`).
    pub fn socket_dir(&self) -> PathBuf {
        self.socket_dir
            .clone()
            .unwrap_or_else(|| self.data_root.join(".run"))
    }

    /// Reads and checks a TOML configuration file.
    pub fn load(path: &Path) -> Result<CellConfig, Error> {
        let text = std::fs::read_to_string(path).map_err(io_err("cannot read", path))?;
        let config: CellConfig = toml::from_str(&text).map_err(|e| Error::Config {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        if !config.listen.ip().is_loopback() && config.tls.is_none() && !config.allow_plaintext {
            return Err(Error::Config {
                path: path.to_path_buf(),
                message: format!(
                    "listen: {} is not a loopback address and [tls] is not configured: the token and the nodes' passwords would cross the network in clear; configure [tls] (cert_file, key_file, ca_file) or set allow_plaintext = true",
                    config.listen
                ),
            });
        }
        Ok(config)
    }

    /// The API token: `WALARCHIVE_CELL_TOKEN`, else the content of `token_file` (trimmed).
    pub fn token(&self) -> Result<Secret, Error> {
        if let Ok(t) = std::env::var(TOKEN_ENV) {
            if !t.is_empty() {
                return Ok(Secret::new(t));
            }
        }
        let Some(path) = &self.token_file else {
            return Err(Error::NoToken);
        };
        let t = std::fs::read_to_string(path).map_err(io_err("cannot read", path))?;
        let t = t.trim();
        if t.is_empty() {
            return Err(Error::NoToken);
        }
        Ok(Secret::new(t))
    }
}
