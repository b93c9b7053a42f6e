//! The cell agent's errors, shared by its configuration, its nodes and its HTTP server
//! (which decides what of them crosses the network).

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::config::TOKEN_ENV;

/// Errors of the cell agent (its client has [`super::ClientError`]).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or directory operation failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The configuration file is not valid.
    #[error("invalid cell configuration {}: {message}", path.display())]
    Config {
        /// The configuration file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Neither the environment nor the configuration provide an API token.
    #[error("no API token: set {TOKEN_ENV} or `token_file` in the cell configuration")]
    NoToken,
    /// The `postgres` OS user (or the configured one) does not exist.
    #[error("OS user {0:?} not found")]
    NoUser(String),
    /// A request was malformed.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// No node of that name.
    #[error("no node named {0:?}")]
    NotFound(String),
    /// A program could not be started.
    #[error("cannot start {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The node is not its instance's leader (a replica, in recovery): ask the leader.
    #[error("node {0} is not the leader (a replica, or in recovery)")]
    NotLeader(String),
    /// PostgreSQL refused a connection or a statement for another reason.
    #[error("PostgreSQL: {0}")]
    Postgres(String),
    /// A base backup failed.
    #[error("backup of node {node} failed (exit status {code:?}): {stderr}")]
    Backup {
        /// The node.
        node: String,
        /// walarchive's exit code.
        code: Option<i32>,
        /// The end of walarchive's error output.
        stderr: String,
    },
    /// The TLS certificate, key or CA cannot be used.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// The agent cannot listen on its address.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// An HTTP request to a cell agent or to Patroni failed.
    #[error("request to {url} failed: {source}")]
    Http {
        /// The URL (never holds credentials).
        url: String,
        /// The client error.
        #[source]
        source: reqwest::Error,
    },
    /// A cell agent answered with an error status.
    #[error("cell agent answered {status}: {message}")]
    Status {
        /// The HTTP status.
        status: u16,
        /// The error message it gave.
        message: String,
    },
    /// A walarchive command run for a node failed.
    #[error("{what} on node {node} failed (exit status {code:?}): {stderr}")]
    Walarchive {
        /// The node.
        node: String,
        /// What was run.
        what: &'static str,
        /// walarchive's exit status.
        code: Option<i32>,
        /// The end of its stderr.
        stderr: String,
    },
    /// A response or stored file could not be decoded.
    #[error("cannot decode {what}: {source}")]
    Decode {
        /// What was being decoded.
        what: String,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
}

pub(super) fn io_err<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> Error + 'a {
    move |source| Error::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// [`Error::NotLeader`] when `e` says the node is not the primary, else [`Error::Postgres`]
/// with `message`.
pub(super) fn pg_error(
    node: &str,
    message: String,
    e: &(dyn std::error::Error + 'static),
) -> Error {
    if crate::binder::not_leader(e) {
        Error::NotLeader(node.to_string())
    } else {
        Error::Postgres(message)
    }
}
