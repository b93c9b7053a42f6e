//! The cell agent's API as the broker sees it: the wire types (a node's spec, ports, state,
//! a backup's outcome) and [`CellClient`], with its own error type.
//!
//! Kept apart from the agent so that the broker, the binder and `dev`, which only talk to
//! cells, depend on the contract and not on the agent's process management.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use axum::http::header;
use serde::{Deserialize, Serialize};

pub use super::stats::{ArchiverStats, HistoryEntry, NodeStats, ReplicationStats};
use crate::binder::RoleRequest;
use crate::patroni::bootstrap::BACKUP_NAME_MAX;
pub use crate::patroni::bootstrap::{BootstrapSpec, BootstrapTarget};
use crate::patroni::{DcsTiming, EtcdCredentials, EtcdTls};
use crate::secrets::Secret;

/// Errors of the cell client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The cell has no node of that name.
    #[error("no node named {0:?}")]
    NotFound(String),
    /// The TLS certificate, key or CA cannot be used.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// An HTTP request to a cell agent failed.
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
    /// A response could not be decoded.
    #[error("cannot decode {what}: {source}")]
    Decode {
        /// What was being decoded.
        what: String,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
}

fn default_archive_timeout() -> u32 {
    60
}

/// The values of `synchronous_commit` a cell accepts in a [`NodeSpec`].
pub const SYNCHRONOUS_COMMIT: &[&str] = &["on", "remote_write", "remote_apply"];

/// What the broker asks a cell to run: one Patroni node of an instance.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    /// The instance.
    pub instance_id: String,
    /// Patroni's `scope` (the instance's [`crate::names::path_name`]); absent in specs of
    /// instances recorded before names existed, whose scope is their id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// Patroni's etcd key prefix, e.g. `/walarchive-broker/patroni/`.
    pub namespace: String,
    /// etcd client endpoints, `host:port`.
    pub etcd_hosts: Vec<String>,
    /// TLS towards etcd (files on this cell), when etcd speaks TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd_tls: Option<EtcdTls>,
    /// Patroni's etcd user, when etcd's authentication is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd_credentials: Option<EtcdCredentials>,
    /// The instance's walarchive repository URL (`<base>/<name>`).
    pub repository: String,
    /// The walarchive executable on the cell (executable by the postgres user).
    pub walarchive: PathBuf,
    /// Environment for walarchive (storage credentials: `AWS_*`, ...).
    #[serde(default)]
    pub walarchive_env: BTreeMap<String, Secret>,
    /// `archive_timeout` in seconds.
    #[serde(default = "default_archive_timeout")]
    pub archive_timeout: u32,
    /// Password of the `postgres` superuser.
    pub superuser_password: Secret,
    /// Password of the `replicator` user.
    pub replication_password: Secret,
    /// Password of the `rewinder` user (pg_rewind); absent in specs of instances created
    /// before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewind_password: Option<Secret>,
    /// Patroni `synchronous_mode`.
    #[serde(default)]
    pub synchronous: bool,
    /// PostgreSQL's `synchronous_commit` (`remote_apply`: a commit waits until the
    /// synchronous standby applied it); absent: PostgreSQL's default (`on`), as in specs
    /// written before it existed (so cells that do not know it keep accepting those).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synchronous_commit: Option<String>,
    /// Address at which other cells and routers reach this cell.
    pub host: String,
    /// Hosts of the instance's other nodes (allowed to replicate).
    #[serde(default)]
    pub peer_hosts: Vec<String>,
    /// Failure-detection timing.
    #[serde(default)]
    pub timing: DcsTiming,
    /// `initdb --wal-segsize` in MiB (16 when absent).
    #[serde(default)]
    pub wal_segsize_mb: Option<u32>,
    /// Bootstrap the cluster from another repository's backup instead of `initdb` (a clone):
    /// only the node that initialises the cluster uses it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap: Option<BootstrapSpec>,
    /// The PostgreSQL major the node runs; absent in specs of instances recorded before
    /// majors (they run the cell's [`crate::cell::CellConfig::unnamed_major`]). A cell
    /// without it refuses the node; a node's major never changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub major: Option<u32>,
}

/// `GET /v1/cell`: what a cell runs.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CellReport {
    /// Each major the cell has (`"17"`) and the server's full version (`"17.10"`).
    pub majors: BTreeMap<String, String>,
    /// The major of nodes whose spec names none.
    pub unnamed_major: u32,
    /// What `patroni --version` said (`patroni 4.1.5`), when it could be run.
    #[serde(default)]
    pub patroni: Option<String>,
    /// Nodes the cell runs (none from agents before the dashboard).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<u32>,
    /// Ports of its `ports` range no node holds (none: no range, or an older agent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub free_ports: Option<u32>,
}

impl CellReport {
    /// Whether the cell runs major `major`.
    pub fn has(&self, major: u32) -> bool {
        self.majors.contains_key(&major.to_string())
    }
}

impl BootstrapSpec {
    /// Checks what the bootstrap scripts rely on (every word also goes through
    /// `walarchive::shell::quote` when they are written).
    pub fn validate(&self, own_repository: &str) -> Result<(), String> {
        if self.source_repository.is_empty() || self.source_repository.chars().any(char::is_control)
        {
            return Err("bootstrap.source_repository must be a repository URL".into());
        }
        let same =
            self.source_repository.trim_end_matches('/') == own_repository.trim_end_matches('/');
        if same && !self.same_repository {
            return Err(
                "bootstrap.source_repository is the node's own repository: a clone must archive elsewhere"
                    .into(),
            );
        }
        if !same && self.same_repository {
            return Err(
                "bootstrap.same_repository is set but the source is not the node's own repository"
                    .into(),
            );
        }
        let backup_ok = !self.backup.is_empty()
            && self.backup.len() <= BACKUP_NAME_MAX
            && !self.backup.starts_with(['-', '.'])
            && self
                .backup
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
        if !backup_ok {
            return Err("bootstrap.backup must be a backup name or LATEST".into());
        }
        self.recovery_target.backup_fetch_args()?;
        if self.timeline == Some(0) {
            return Err("bootstrap.timeline must be at least 1".into());
        }
        if !crate::binder::valid_object_name(&self.group_role) {
            return Err("bootstrap.group_role must be a plain SQL name ([a-z_][a-z0-9_]*)".into());
        }
        Ok(())
    }
}

/// The two ports the cell allocated to a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodePorts {
    /// PostgreSQL's port.
    pub pg_port: u16,
    /// Patroni's REST API port.
    pub api_port: u16,
}

/// A node's state as reported by `GET /v1/nodes/{name}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// The node's name.
    pub name: String,
    /// Its instance.
    pub instance_id: String,
    /// Whether its Patroni process is running.
    pub running: bool,
    /// Patroni's PID.
    pub pid: Option<u32>,
    /// How often Patroni was restarted after exiting.
    pub restarts: u32,
    /// The node's ports.
    pub ports: NodePorts,
    /// Patroni's own `GET /patroni` answer, when it is reachable.
    pub patroni: Option<serde_json::Value>,
    /// For a node with a bootstrap spec: how its restore goes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore: Option<RestoreStatus>,
}

/// How the restore of a node bootstrapped from an archive goes (read from files: PostgreSQL
/// answers no query while it recovers in Patroni's custom bootstrap).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RestoreStatus {
    /// The base backup's restore (`backup-fetch --progress-file`), once it started.
    pub progress: Option<RestoreProgress>,
    /// WAL replay from the source's archive, once a segment was restored.
    pub replay: Option<RestoreReplay>,
    /// Why the restore failed (the node is then stopped for good): walarchive's last
    /// lines, or PostgreSQL's `FATAL` line.
    pub failed: Option<String>,
}

/// `backup-fetch --progress-file`'s document.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreProgress {
    /// The backup restored.
    pub backup: String,
    /// Bytes restored so far.
    pub bytes_done: u64,
    /// Bytes of the backup.
    pub bytes_total: u64,
    /// Whether the base backup is restored.
    pub done: bool,
}

/// How far recovery has read the source's archive (`pg_wal/walarchive-metrics.json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreReplay {
    /// The last WAL segment restored.
    pub last_restored: String,
    /// When (RFC 3339).
    pub restored_at: Option<String>,
}

/// `GET /v1/nodes/{name}/wal`: where the node's WAL is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalPosition {
    /// `pg_current_wal_lsn()` on a primary, `pg_last_wal_replay_lsn()` in recovery.
    pub lsn: String,
    /// `pg_last_wal_replay_lsn()`: where recovery stopped (kept after a promotion); `None`
    /// on a cluster that never recovered.
    pub replay_lsn: Option<String>,
    /// `pg_last_xact_replay_timestamp()` (RFC 3339): the last transaction recovery replayed.
    pub replay_time: Option<String>,
    /// `pg_is_in_recovery()`.
    pub in_recovery: bool,
}

/// `POST /v1/nodes/{name}/switch-wal`: the switch and whether its segment is archived.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalSwitch {
    /// What `pg_switch_wal()` returned (the end of the switched segment's WAL).
    pub lsn: String,
    /// The segment that ended (`pg_walfile_name`).
    pub segment: String,
    /// Whether `pg_stat_archiver` showed it archived before the wait's bound.
    pub archived: bool,
}

impl NodeStatus {
    /// Patroni's role (`master`, `primary`, `replica`, ...), when known.
    pub fn role(&self) -> Option<&str> {
        self.patroni.as_ref()?.get("role")?.as_str()
    }

    /// PostgreSQL's state according to Patroni (`running`, `starting`, ...), when known.
    pub fn pg_state(&self) -> Option<&str> {
        self.patroni.as_ref()?.get("state")?.as_str()
    }

    /// Whether this node is its instance's leader (a running primary).
    pub fn is_leader(&self) -> bool {
        matches!(self.role(), Some("master" | "primary")) && self.pg_state() == Some("running")
    }
}

/// Result of `POST /v1/nodes/{name}/backup`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BackupOutcome {
    /// walarchive's `--json` summary of the backup (its `name`, LSNs, sizes).
    pub summary: serde_json::Value,
    /// How long the backup took, in seconds.
    pub seconds: f64,
}

/// Node names become directory names, Patroni member names and slot names.
pub fn valid_node_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        && !name.starts_with('-')
}

impl NodeSpec {
    /// Patroni's scope: [`NodeSpec::scope`], else the instance id.
    pub fn scope(&self) -> &str {
        self.scope.as_deref().unwrap_or(&self.instance_id)
    }
}

impl NodeSpec {
    /// Checks what the agent relies on: names, paths, timing and environment.
    pub fn validate(&self) -> Result<(), String> {
        let spec = self;
        let bad = |m: &str| Err(m.to_string());
        if spec
            .synchronous_commit
            .as_deref()
            .is_some_and(|v| !SYNCHRONOUS_COMMIT.contains(&v))
        {
            return bad("synchronous_commit must be one of on, remote_write, remote_apply");
        }
        if crate::names::check_id(&spec.instance_id, "instance_id").is_err() {
            return bad("instance_id must be 1 to 255 bytes without control characters");
        }
        // The scope is a prefix of etcd keys: `/` would put one cluster's keys inside another's.
        if !crate::names::is_safe_name(spec.scope()) {
            return bad(
                "scope must be made of A-Z, a-z, 0-9, '-', '_', '.' and '~' (not '.' or '..')",
            );
        }
        if !spec.namespace.starts_with('/') {
            return bad("namespace must start with '/'");
        }
        if spec.etcd_hosts.is_empty() {
            return bad("etcd_hosts is empty");
        }
        if !spec.walarchive.is_absolute() {
            return bad("walarchive must be an absolute path");
        }
        if spec.repository.is_empty() || spec.host.is_empty() {
            return bad("repository and host are required");
        }
        let t = &spec.timing;
        if t.loop_wait == 0 || t.loop_wait + 2 * t.retry_timeout > t.ttl {
            return bad("timing needs loop_wait > 0 and loop_wait + 2 * retry_timeout <= ttl");
        }
        for k in spec.walarchive_env.keys() {
            if k.is_empty() || k.contains('=') || k.starts_with("PATRONI") {
                return bad("walarchive_env has an invalid variable name");
            }
        }
        if let Some(b) = &spec.bootstrap {
            b.validate(&spec.repository)?;
        }
        Ok(())
    }
}

/// The broker's client for one cell agent.
#[derive(Clone, Debug)]
pub struct CellClient {
    base: String,
    token: Secret,
    http: reqwest::Client,
}

impl CellClient {
    /// A client for the agent at `base_url` (e.g. `https://10.0.0.5:7100`), trusting only
    /// `tls.ca_file` and presenting `tls`' certificate when given.
    pub fn new(
        base_url: &str,
        token: Secret,
        tls: Option<&crate::tls::TlsFiles>,
    ) -> Result<CellClient, ClientError> {
        let mut builder = reqwest::Client::builder().connect_timeout(Duration::from_secs(5));
        if let Some(files) = tls {
            builder = crate::tls::client_builder(builder, files)?;
        }
        let http = builder.build().map_err(|source| ClientError::Http {
            url: base_url.to_string(),
            source,
        })?;
        Ok(CellClient {
            base: base_url.trim_end_matches('/').to_string(),
            token,
            http,
        })
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<String>,
        timeout: Duration,
    ) -> Result<(u16, bytes::Bytes), ClientError> {
        let url = format!("{}{path}", self.base);
        let mut req = self
            .http
            .request(method, &url)
            .bearer_auth(self.token.expose())
            .timeout(timeout);
        if let Some(b) = body {
            req = req.header(header::CONTENT_TYPE, "application/json").body(b);
        }
        let http_err = |source| ClientError::Http {
            url: url.clone(),
            source,
        };
        let resp = req.send().await.map_err(http_err)?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.map_err(http_err)?;
        if status >= 400 && status != 404 {
            let message = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v.get("error")?.as_str().map(str::to_string))
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
            return Err(ClientError::Status { status, message });
        }
        Ok((status, bytes))
    }

    fn decode<T: serde::de::DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, ClientError> {
        serde_json::from_slice(bytes).map_err(|source| ClientError::Decode {
            what: what.to_string(),
            source,
        })
    }

    /// Creates or updates node `name` and starts it; returns its ports.
    pub async fn put_node(&self, name: &str, spec: &NodeSpec) -> Result<NodePorts, ClientError> {
        let body = serde_json::to_string(spec).expect("specs serialize");
        let (status, bytes) = self
            .call(
                reqwest::Method::PUT,
                &format!("/v1/nodes/{name}"),
                Some(body),
                Duration::from_secs(180),
            )
            .await?;
        if status == 404 {
            return Err(ClientError::NotFound(name.to_string()));
        }
        Self::decode("node ports", &bytes)
    }

    /// The state of node `name`, or `None` when the cell has no such node.
    pub async fn node(&self, name: &str) -> Result<Option<NodeStatus>, ClientError> {
        let (status, bytes) = self
            .call(
                reqwest::Method::GET,
                &format!("/v1/nodes/{name}"),
                None,
                Duration::from_secs(30),
            )
            .await?;
        if status == 404 {
            return Ok(None);
        }
        Self::decode("node status", &bytes).map(Some)
    }

    /// What the cell runs (its majors). A cell agent from before majors has no such route
    /// (404): it runs 15 only, as it always did.
    pub async fn report(&self) -> Result<CellReport, ClientError> {
        let (status, bytes) = self
            .call(
                reqwest::Method::GET,
                "/v1/cell",
                None,
                Duration::from_secs(10),
            )
            .await?;
        if status == 404 {
            let legacy = crate::pgmajor::LEGACY;
            return Ok(CellReport {
                majors: BTreeMap::from([(legacy.to_string(), String::new())]),
                unnamed_major: legacy,
                ..CellReport::default()
            });
        }
        Self::decode("cell report", &bytes)
    }

    /// The state of every node of the cell.
    pub async fn nodes(&self) -> Result<Vec<NodeStatus>, ClientError> {
        let (_, bytes) = self
            .call(
                reqwest::Method::GET,
                "/v1/nodes",
                None,
                Duration::from_secs(30),
            )
            .await?;
        Self::decode("node list", &bytes)
    }

    /// Stops and removes node `name`; `false` when it did not exist.
    pub async fn delete_node(&self, name: &str) -> Result<bool, ClientError> {
        let (status, _) = self
            .call(
                reqwest::Method::DELETE,
                &format!("/v1/nodes/{name}"),
                None,
                Duration::from_secs(300),
            )
            .await?;
        Ok(status != 404)
    }

    /// Creates or resets a binding's role on node `name` (which must be its instance's
    /// leader: 409 otherwise).
    pub async fn put_role(
        &self,
        name: &str,
        role: &str,
        req: &RoleRequest,
    ) -> Result<(), ClientError> {
        let body = serde_json::to_string(req).expect("role requests serialize");
        let (status, _) = self
            .call(
                reqwest::Method::PUT,
                &format!("/v1/nodes/{name}/roles/{role}"),
                Some(body),
                Duration::from_secs(60),
            )
            .await?;
        if status == 404 {
            return Err(ClientError::NotFound(name.to_string()));
        }
        Ok(())
    }

    /// Drops a binding's role on node `name` (which must be its instance's leader), handing
    /// what it owns to `group`.
    pub async fn delete_role(
        &self,
        name: &str,
        role: &str,
        group: &str,
    ) -> Result<(), ClientError> {
        let (status, _) = self
            .call(
                reqwest::Method::DELETE,
                &format!(
                    "/v1/nodes/{name}/roles/{role}?group={}",
                    crate::state::encode_component(group)
                ),
                None,
                Duration::from_secs(120),
            )
            .await?;
        if status == 404 {
            return Err(ClientError::NotFound(name.to_string()));
        }
        Ok(())
    }

    /// Takes a base backup of node `name` into its repository (waits until it is complete).
    pub async fn backup(&self, name: &str) -> Result<BackupOutcome, ClientError> {
        let (status, bytes) = self
            .call(
                reqwest::Method::POST,
                &format!("/v1/nodes/{name}/backup"),
                None,
                Duration::from_secs(24 * 3600),
            )
            .await?;
        if status == 404 {
            return Err(ClientError::NotFound(name.to_string()));
        }
        Self::decode("backup outcome", &bytes)
    }

    async fn node_call<T: serde::de::DeserializeOwned>(
        &self,
        method: reqwest::Method,
        name: &str,
        route: &str,
        timeout: Duration,
    ) -> Result<T, ClientError> {
        let (status, bytes) = self
            .call(method, &format!("/v1/nodes/{name}/{route}"), None, timeout)
            .await?;
        if status == 404 {
            return Err(ClientError::NotFound(name.to_string()));
        }
        Self::decode(route, &bytes)
    }

    /// Asks node `name` (the leader) for a Patroni switchover to `candidate`; returns once
    /// Patroni accepted it.
    pub async fn switchover(&self, name: &str, candidate: &str) -> Result<(), ClientError> {
        let body = serde_json::json!({ "candidate": candidate }).to_string();
        let (status, _) = self
            .call(
                reqwest::Method::POST,
                &format!("/v1/nodes/{name}/switchover"),
                Some(body),
                Duration::from_secs(150),
            )
            .await?;
        if status == 404 {
            return Err(ClientError::NotFound(name.to_string()));
        }
        Ok(())
    }

    /// Where node `name`'s WAL is (its current LSN, where recovery stopped).
    pub async fn wal(&self, name: &str) -> Result<WalPosition, ClientError> {
        self.node_call(reqwest::Method::GET, name, "wal", Duration::from_secs(30))
            .await
    }

    /// The statistics of node `name` (`GET /v1/nodes/{name}/stats`), within `timeout`.
    pub async fn node_stats(
        &self,
        name: &str,
        timeout: Duration,
    ) -> Result<NodeStats, ClientError> {
        self.node_call(reqwest::Method::GET, name, "stats", timeout)
            .await
    }

    /// Switches node `name` (a primary) to a new WAL segment and waits, within a bound,
    /// until the segment it ended is archived.
    pub async fn switch_wal(&self, name: &str) -> Result<WalSwitch, ClientError> {
        self.node_call(
            reqwest::Method::POST,
            name,
            "switch-wal",
            Duration::from_secs(300),
        )
        .await
    }

    /// Archives every timeline history file in node `name`'s `pg_wal` into its repository
    /// (a clone's repository then holds the history of the timelines it forked from);
    /// returns their names.
    pub async fn push_history(&self, name: &str) -> Result<Vec<String>, ClientError> {
        self.node_call(
            reqwest::Method::POST,
            name,
            "push-history",
            Duration::from_secs(120),
        )
        .await
    }

    /// The roles of node `name` whose names start with one of `prefixes`, whether they can
    /// log in or not.
    pub async fn roles(&self, name: &str, prefixes: &[&str]) -> Result<Vec<String>, ClientError> {
        let q = crate::state::encode_component(&prefixes.join(","));
        self.node_call(
            reqwest::Method::GET,
            name,
            &format!("roles?prefix={q}"),
            Duration::from_secs(30),
        )
        .await
    }

    /// The roles of node `name` whose names start with one of `prefixes` and that can log in.
    pub async fn login_roles(
        &self,
        name: &str,
        prefixes: &[&str],
    ) -> Result<Vec<String>, ClientError> {
        let q = crate::state::encode_component(&prefixes.join(","));
        self.node_call(
            reqwest::Method::GET,
            name,
            &format!("login-roles?prefix={q}"),
            Duration::from_secs(30),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names() {
        assert!(valid_node_name("inst-1_node0"));
        for bad in ["", "-x", "a/b", "..", "a b", &"x".repeat(64)] {
            assert!(!valid_node_name(bad), "{bad}");
        }
    }

    /// A source equal to the node's repository only with `same_repository` (a disaster
    /// recovery), and that flag only with it.
    #[test]
    fn bootstrap_own_repository_needs_the_flag() {
        let mut b = BootstrapSpec {
            source_repository: "file:///r/inst/".into(),
            backup: "LATEST".into(),
            recovery_target: BootstrapTarget::Lsn("0/3000060".into()),
            timeline: None,
            disable_roles: false,
            group_role: "app_owner".into(),
            same_repository: false,
        };
        let e = b.validate("file:///r/inst").unwrap_err();
        assert!(e.contains("own repository"), "{e}");
        assert!(b.validate("file:///r/other").is_ok());
        b.same_repository = true;
        assert!(b.validate("file:///r/inst").is_ok());
        let e = b.validate("file:///r/other").unwrap_err();
        assert!(e.contains("same_repository"), "{e}");
    }

    #[test]
    fn spec_debug_hides_secrets() {
        let spec: NodeSpec = serde_json::from_value(serde_json::json!({
            "instance_id": "i", "namespace": "/n/", "etcd_hosts": ["127.0.0.1:2379"],
            "repository": "file:///tmp/r/i", "walarchive": "/usr/bin/walarchive",
            "walarchive_env": {"AWS_SECRET_ACCESS_KEY": "s3cr3t"},
            "superuser_password": "pw1", "replication_password": "pw2", "host": "127.0.0.1",
        }))
        .unwrap();
        let dbg = format!("{spec:?}");
        assert!(
            !dbg.contains("s3cr3t") && !dbg.contains("pw1") && !dbg.contains("pw2"),
            "{dbg}"
        );
        assert_eq!(spec.archive_timeout, 60);
        spec.validate().unwrap();
        // synchronous_commit: absent from the spec when not set (what older cells accept),
        // one of PostgreSQL's waiting values when set.
        assert_eq!(spec.synchronous_commit, None);
        assert!(serde_json::to_value(&spec)
            .unwrap()
            .get("synchronous_commit")
            .is_none());
        let mut s2 = spec.clone();
        s2.synchronous_commit = Some("remote_apply".into());
        s2.validate().unwrap();
        s2.synchronous_commit = Some("off'; drop".into());
        let e = s2.validate().unwrap_err();
        assert!(e.contains("synchronous_commit"), "{e}");
    }
}
