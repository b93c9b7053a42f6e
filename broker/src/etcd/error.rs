//! The etcd client's one error type, classified by what a caller can do about it: retry later
//! ([`EtcdError::is_transient`]) or not.

use std::time::Duration;

/// Errors of the etcd client. [`EtcdError::is_transient`] tells which ones may go away by
/// themselves (retry later) and which ones will not (a bug or a misconfiguration).
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// No endpoint was configured.
    #[error("no etcd endpoint is configured")]
    NoEndpoints,
    /// An endpoint URL cannot be used.
    #[error("invalid etcd endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint {
        /// The endpoint as configured.
        endpoint: String,
        /// Why it is invalid.
        reason: String,
    },
    /// The HTTP client could not be built.
    #[error("cannot build the etcd HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    /// A TLS file (CA, client certificate or key) cannot be used.
    #[error("etcd TLS: {0}")]
    Tls(String),
    /// The connection could not be established: the request was never sent.
    #[error("cannot connect to etcd at {endpoint}: {source}")]
    Connect {
        /// The endpoint tried.
        endpoint: String,
        /// The underlying error.
        #[source]
        source: reqwest::Error,
    },
    /// No complete answer within the timeout; the request may or may not have been applied.
    #[error("etcd at {endpoint} did not answer within {timeout:?}")]
    Timeout {
        /// The endpoint tried.
        endpoint: String,
        /// The configured request timeout.
        timeout: Duration,
    },
    /// The connection failed after the request was sent; it may or may not have been applied.
    #[error("etcd at {endpoint}: {source}")]
    Transport {
        /// The endpoint tried.
        endpoint: String,
        /// The underlying error.
        #[source]
        source: reqwest::Error,
    },
    /// A server-side failure (HTTP 5xx or 429: no leader, overloaded, request timed out).
    #[error("etcd at {endpoint} failed with HTTP {status}: {message}")]
    Unavailable {
        /// The endpoint tried.
        endpoint: String,
        /// The HTTP status.
        status: u16,
        /// etcd's message.
        message: String,
    },
    /// etcd refused the request (HTTP 4xx other than 429): retrying will not help.
    #[error("etcd at {endpoint} refused the request with HTTP {status}: {message}")]
    Rejected {
        /// The endpoint tried.
        endpoint: String,
        /// The HTTP status.
        status: u16,
        /// etcd's message.
        message: String,
    },
    /// The answer could not be understood.
    #[error("unexpected answer from etcd at {endpoint}: {detail}")]
    Protocol {
        /// The endpoint tried.
        endpoint: String,
        /// What was wrong with it.
        detail: String,
    },
}

impl EtcdError {
    /// True when the error may go away by itself: connection failures, timeouts and 5xx.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            EtcdError::Connect { .. }
                | EtcdError::Timeout { .. }
                | EtcdError::Transport { .. }
                | EtcdError::Unavailable { .. }
        )
    }

    /// True when the request certainly did not reach a server (safe to send anywhere else).
    pub(super) fn not_sent(&self) -> bool {
        matches!(self, EtcdError::Connect { .. })
    }
}
