//! The broker's TOML configuration.
//!
//! Why secrets are never inline: the configuration file is copied around, checked into
//! configuration management and shown in support tickets. The broker password and the cell
//! tokens are therefore named by an environment variable (`password_env`) or a file
//! (`password_file`), read once at load time into [`Secret`], whose `Debug` is redacted so that
//! logging a configuration (or an error holding one) cannot leak them. Storage credentials for
//! the repositories stay in walarchive's own configuration or environment, which the broker
//! only points to.
//!
//! Unknown keys are errors (`deny_unknown_fields`): a misspelt setting silently falling back
//! to its default is worse than refusing to start.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use std::sync::Arc;

use crate::secrets::{Keyring, SecretsConfig};
use crate::tls::{is_loopback_host, TlsFiles};

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

/// A secret string (password, token). `Debug` and `Display` print `[redacted]`; use
/// [`Secret::expose`] where the value is needed.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret value. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// True when no secret is set.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// A duration written as `"90s"`, `"5m"`, `"1h"`, `"7d"` or a bare number of seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Secs(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Secs(s) => Ok(HumanDuration(Duration::from_secs(s))),
            Raw::Text(t) => parse_duration(&t)
                .map(HumanDuration)
                .map_err(serde::de::Error::custom),
        }
    }
}

/// Parses `"90s"`, `"5m"`, `"1h"`, `"7d"`, `"250ms"` or `"60"` (seconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| {
        format!("invalid duration {text:?} (expected e.g. \"60s\", \"5m\", \"1h\", \"7d\")")
    })?;
    let secs = |mult: u64| Duration::from_secs(n.saturating_mul(mult));
    Ok(match unit.trim() {
        "" | "s" => secs(1),
        "ms" => Duration::from_millis(n),
        "m" | "min" => secs(60),
        "h" => secs(3600),
        "d" => secs(86400),
        _ => {
            return Err(format!(
                "invalid duration unit in {text:?} (expected ms, s, m, h or d)"
            ))
        }
    })
}

/// The whole broker configuration (`broker.example.toml` documents every setting).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerConfig {
    /// Address the OSB API listens on.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// TLS: the certificate the OSB API serves (and presents to the cells as a client), and
    /// the CA the cells' certificates must be signed by.
    #[serde(default)]
    pub tls: Option<TlsFiles>,
    /// Accept plain HTTP off the loopback interface: the API's `listen` address, `http://`
    /// cells and etcd endpoints. Off by default: the platform's password, the cells' tokens
    /// and every database password would cross the network in clear.
    #[serde(default)]
    pub allow_plaintext: bool,
    /// The platform's credentials for HTTP basic authentication.
    pub credentials: Credentials,
    /// The one service offering.
    pub service: ServiceConfig,
    /// Where the instances' WAL and base backups go.
    pub repository: RepositoryConfig,
    /// The etcd cluster holding the broker's state.
    pub etcd: EtcdConfig,
    /// The key sealing the secrets kept in etcd (required).
    #[serde(default)]
    pub secrets: Option<SecretsConfig>,
    /// The keyring of `secrets`, loaded at load time.
    #[serde(skip)]
    pub keyring: Option<Arc<Keyring>>,
    /// The machines (cell agents) that run the clusters' nodes.
    #[serde(default)]
    pub cells: Vec<CellConfig>,
    /// The HAProxy router in front of the clusters.
    pub router: RouterConfig,
    /// PostgreSQL's `archive_timeout`: bounds the data lost with a whole cluster.
    #[serde(default = "default_archive_timeout")]
    pub archive_timeout: HumanDuration,
    /// Base backup schedule and retention.
    #[serde(default)]
    pub backups: BackupConfig,
    /// How the nodes are configured (walarchive path, Patroni timing).
    #[serde(default)]
    pub nodes: NodesConfig,
    /// The provisioning worker.
    #[serde(default)]
    pub worker: WorkerConfig,
}

/// Settings of every node the broker places (the same on all cells).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodesConfig {
    /// The walarchive executable, at this path on every cell and on the broker's machine
    /// (the broker runs retention with it).
    #[serde(default = "default_walarchive")]
    pub walarchive: PathBuf,
    /// Patroni's etcd key prefix (`namespace`); default `<etcd.prefix>/patroni/`.
    #[serde(default)]
    pub patroni_namespace: Option<String>,
    /// Patroni `synchronous_mode`: commits wait for a replica (no loss on failover).
    #[serde(default)]
    pub synchronous: bool,
    /// Patroni leader key TTL in seconds (`loop_wait + 2 * retry_timeout <= ttl`).
    #[serde(default = "default_ttl")]
    pub ttl: u32,
    /// Patroni HA loop interval in seconds.
    #[serde(default = "default_loop_wait")]
    pub loop_wait: u32,
    /// Patroni retry timeout in seconds.
    #[serde(default = "default_retry_timeout")]
    pub retry_timeout: u32,
    /// `initdb --wal-segsize` in MiB (PostgreSQL's 16 when absent).
    #[serde(default)]
    pub wal_segsize_mb: Option<u32>,
    /// Patroni's TLS towards etcd (required when etcd's endpoints are `https://`): the CA of
    /// etcd's certificate, at this path on every cell.
    #[serde(default)]
    pub etcd_ca_file: Option<PathBuf>,
    /// Patroni's client certificate for etcd, at this path on every cell (readable by the
    /// nodes' OS user).
    #[serde(default)]
    pub etcd_cert_file: Option<PathBuf>,
    /// Its key, at this path on every cell (readable by the nodes' OS user only).
    #[serde(default)]
    pub etcd_key_file: Option<PathBuf>,
    /// Patroni's etcd user, when etcd's authentication is on (a role limited to Patroni's
    /// namespace is enough).
    #[serde(default)]
    pub etcd_username: Option<String>,
    /// Environment variable holding its password (sent to the cells over TLS).
    #[serde(default)]
    pub etcd_password_env: Option<String>,
    /// File holding its password.
    #[serde(default)]
    pub etcd_password_file: Option<PathBuf>,
    /// The password, read at load time.
    #[serde(skip)]
    pub etcd_password: Secret,
}

impl Default for NodesConfig {
    fn default() -> Self {
        NodesConfig {
            walarchive: default_walarchive(),
            patroni_namespace: None,
            synchronous: false,
            ttl: default_ttl(),
            loop_wait: default_loop_wait(),
            retry_timeout: default_retry_timeout(),
            wal_segsize_mb: None,
            etcd_ca_file: None,
            etcd_cert_file: None,
            etcd_key_file: None,
            etcd_username: None,
            etcd_password_env: None,
            etcd_password_file: None,
            etcd_password: Secret::default(),
        }
    }
}

fn default_walarchive() -> PathBuf {
    PathBuf::from("/usr/local/bin/walarchive")
}

fn default_ttl() -> u32 {
    30
}

fn default_loop_wait() -> u32 {
    10
}

fn default_retry_timeout() -> u32 {
    10
}

/// The provisioning worker's pacing and limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerConfig {
    /// How often the worker looks for operations recorded by other broker processes (it is
    /// woken at once for this process's own).
    #[serde(default = "default_poll_interval")]
    pub poll_interval: HumanDuration,
    /// A provision, update or deprovision not finished after this long fails.
    #[serde(default = "default_operation_timeout")]
    pub operation_timeout: HumanDuration,
    /// Longest wait between two attempts of a failing step (a first base backup, a cell that
    /// does not answer): 1 s after the first failure, doubling up to this.
    #[serde(default = "default_backoff_max")]
    pub backoff_max: HumanDuration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            poll_interval: default_poll_interval(),
            operation_timeout: default_operation_timeout(),
            backoff_max: default_backoff_max(),
        }
    }
}

fn default_poll_interval() -> HumanDuration {
    HumanDuration(Duration::from_secs(5))
}

fn default_operation_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(600))
}

fn default_backoff_max() -> HumanDuration {
    HumanDuration(Duration::from_secs(300))
}

fn default_listen() -> SocketAddr {
    "127.0.0.1:8080".parse().expect("valid address")
}

fn default_archive_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(60))
}

/// The platform's basic-auth credentials.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    /// User name.
    pub username: String,
    /// Name of the environment variable holding the password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// File holding the password (one trailing newline is ignored).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// The password, read from `password_env` or `password_file` at load time.
    #[serde(skip)]
    pub password: Secret,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password_env", &self.password_env)
            .field("password_file", &self.password_file)
            .field("password", &self.password)
            .finish()
    }
}

/// The service offering advertised in the catalog.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// Globally unique id (a GUID is recommended).
    pub id: String,
    /// CLI-friendly name.
    pub name: String,
    /// Short description.
    pub description: String,
    /// Tags shown by the platform.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Whether instances can be bound.
    #[serde(default = "yes")]
    pub bindable: bool,
    /// Whether `GET /v2/service_instances/:id` is supported.
    #[serde(default = "yes")]
    pub instances_retrievable: bool,
    /// Whether `GET .../service_bindings/:id` is supported.
    #[serde(default = "yes")]
    pub bindings_retrievable: bool,
    /// Whether instances may change plans.
    #[serde(default = "yes")]
    pub plan_updateable: bool,
    /// The plans (at least one).
    pub plans: Vec<PlanConfig>,
}

fn yes() -> bool {
    true
}

/// One service plan.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanConfig {
    /// Globally unique id.
    pub id: String,
    /// CLI-friendly name, unique within the service.
    pub name: String,
    /// Short description.
    pub description: String,
    /// PostgreSQL nodes of an instance of this plan unless `node-count` says otherwise.
    #[serde(default = "one")]
    pub node_count: u8,
    /// Whether the plan is free of charge.
    #[serde(default = "yes")]
    pub free: bool,
}

fn one() -> u8 {
    1
}

/// Where repositories go.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepositoryConfig {
    /// Base repository URL; each instance archives to `<base>/<name>` (see
    /// [`RepositoryConfig::for_instance`]).
    pub base: String,
    /// walarchive configuration file (storage credentials) used by the nodes.
    #[serde(default)]
    pub walarchive_config: Option<PathBuf>,
    /// Names of environment variables (storage credentials) passed on to the nodes.
    #[serde(default)]
    pub env: Vec<String>,
}

impl RepositoryConfig {
    /// The repository URL of an instance's first incarnation: `<base>/<name>`, where `name`
    /// is the instance's [`crate::names::path_name`] (never `.`, `..` or holding `/`).
    pub fn for_instance(&self, name: &str) -> String {
        format!("{}/{name}", self.base.trim_end_matches('/'))
    }

    /// The repository URL of incarnation `n` of an instance named `name`: `<base>/<name>` for
    /// the first, `<base>/<name>.<n>` after re-provisions (an earlier incarnation's archive is
    /// kept, and a new cluster, with another system identifier, cannot share it). Names hold
    /// no `.`, so no incarnation's repository is another instance's.
    pub fn for_incarnation(&self, name: &str, n: u32) -> String {
        if n <= 1 {
            self.for_instance(name)
        } else {
            format!("{}.{n}", self.for_instance(name))
        }
    }
}

/// The etcd cluster holding the broker's state.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdConfig {
    /// Client URLs, e.g. `https://10.0.0.1:2379`.
    pub endpoints: Vec<String>,
    /// CA that etcd's server certificate must be signed by (required for `https://`).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Client certificate presented to etcd (when it requires one: `--client-cert-auth`).
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// Key of `cert_file`.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// etcd user of the broker, when etcd's authentication is on (a role limited to
    /// `prefix` is enough: it covers Patroni's default namespace).
    #[serde(default)]
    pub username: Option<String>,
    /// Environment variable holding that user's password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// File holding that user's password.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// The password, read at load time.
    #[serde(skip)]
    pub password: Secret,
    /// Key prefix of all the broker's keys (no trailing slash).
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// Timeout of one request.
    #[serde(default = "default_etcd_timeout")]
    pub timeout: HumanDuration,
}

fn default_prefix() -> String {
    "/walarchive-broker".into()
}

fn default_etcd_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(5))
}

/// One cell: a machine whose agent runs PostgreSQL nodes.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CellConfig {
    /// Unique name.
    pub name: String,
    /// The agent's URL.
    pub url: String,
    /// Failure zone: the nodes of one instance go to different zones where possible.
    pub zone: String,
    /// Address at which other cells and the router reach this cell's nodes; default: the
    /// host of `url`.
    #[serde(default)]
    pub host: Option<String>,
    /// Name of the environment variable holding the agent's token.
    #[serde(default)]
    pub token_env: Option<String>,
    /// File holding the agent's token.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// The token, read at load time.
    #[serde(skip)]
    pub token: Secret,
}

impl fmt::Debug for CellConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CellConfig")
            .field("name", &self.name)
            .field("url", &self.url)
            .field("zone", &self.zone)
            .field("host", &self.host)
            .field("token_env", &self.token_env)
            .field("token_file", &self.token_file)
            .field("token", &self.token)
            .finish()
    }
}

impl CellConfig {
    /// The address of this cell's nodes: `host`, else the host of `url`.
    pub fn node_host(&self) -> String {
        self.host.clone().unwrap_or_else(|| {
            url::Url::parse(&self.url)
                .ok()
                .and_then(|u| u.host_str().map(|h| h.trim_matches(['[', ']']).to_string()))
                .unwrap_or_else(|| "127.0.0.1".into())
        })
    }
}

/// The HAProxy router: one TCP port per instance, forwarding to the current primary.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouterConfig {
    /// Host name applications connect to (goes into binding credentials).
    pub host: String,
    /// First port handed out to instances.
    pub port_min: u16,
    /// Last port handed out to instances (inclusive).
    pub port_max: u16,
    /// The HAProxy configuration file the broker writes. Its directory is HAProxy's own:
    /// the file is `haproxy.cfg` there, next to `haproxy.log`.
    #[serde(default = "default_haproxy_config")]
    pub haproxy_config: PathBuf,
    /// Address HAProxy binds the instance ports to.
    #[serde(default = "default_bind_address")]
    pub bind_address: String,
    /// Address HAProxy connects to the nodes from. Set it when the router runs on a machine
    /// that also runs nodes (an address of that machine that no cell uses as its `host`):
    /// the nodes accept their replication role only from the instance's other nodes, and a
    /// router connecting from a node's own address would pass for it.
    #[serde(default)]
    pub source_address: Option<String>,
    /// The HAProxy binary.
    #[serde(default = "default_haproxy_binary")]
    pub haproxy_binary: PathBuf,
    /// HAProxy keeps routing when the broker stops or crashes, and the next broker adopts
    /// it (default). `false` ties it to the broker process (single-machine mode).
    #[serde(default = "default_true")]
    pub outlive_broker: bool,
}

fn default_true() -> bool {
    true
}

fn default_haproxy_config() -> PathBuf {
    PathBuf::from("/etc/haproxy/haproxy.cfg")
}

fn default_bind_address() -> String {
    "0.0.0.0".into()
}

fn default_haproxy_binary() -> PathBuf {
    PathBuf::from("/usr/sbin/haproxy")
}

/// Base backup schedule and retention.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupConfig {
    /// Time between two base backups of an instance.
    #[serde(default = "default_backup_interval")]
    pub interval: HumanDuration,
    /// Base backups kept (older ones and the WAL only they need are deleted).
    #[serde(default = "default_retain")]
    pub retain: u32,
}

impl Default for BackupConfig {
    fn default() -> Self {
        BackupConfig {
            interval: default_backup_interval(),
            retain: default_retain(),
        }
    }
}

fn default_backup_interval() -> HumanDuration {
    HumanDuration(Duration::from_secs(86400))
}

fn default_retain() -> u32 {
    7
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

    fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let invalid = |setting: &str, message: String| ConfigError::Invalid {
            origin: origin.to_string(),
            setting: setting.to_string(),
            message,
        };
        if self.credentials.username.is_empty() || self.credentials.username.contains(':') {
            return Err(invalid(
                "credentials.username",
                "must be non-empty and contain no ':'".into(),
            ));
        }
        let s = &self.service;
        for (name, v) in [
            ("service.id", &s.id),
            ("service.name", &s.name),
            ("service.description", &s.description),
        ] {
            if v.trim().is_empty() {
                return Err(invalid(name, "must not be empty".into()));
            }
        }
        if s.plans.is_empty() {
            return Err(invalid(
                "service.plans",
                "at least one plan is required".into(),
            ));
        }
        let (mut ids, mut names) = (HashSet::new(), HashSet::new());
        for (i, p) in s.plans.iter().enumerate() {
            let at = |f: &str| format!("service.plans[{i}].{f}");
            if p.id.trim().is_empty() || p.name.trim().is_empty() || p.description.trim().is_empty()
            {
                return Err(invalid(
                    &at("id"),
                    "id, name and description must not be empty".into(),
                ));
            }
            if p.id == s.id {
                return Err(invalid(&at("id"), "must differ from the service id".into()));
            }
            if !ids.insert(&p.id) {
                return Err(invalid(&at("id"), format!("duplicate plan id {:?}", p.id)));
            }
            if !names.insert(&p.name) {
                return Err(invalid(
                    &at("name"),
                    format!("duplicate plan name {:?}", p.name),
                ));
            }
            if !(1..=MAX_NODES).contains(&p.node_count) {
                return Err(invalid(
                    &at("node_count"),
                    format!("must be between 1 and {MAX_NODES}"),
                ));
            }
        }
        // The value is never echoed: a mistyped one may still hold a secret.
        match url::Url::parse(&self.repository.base) {
            Err(_) => {
                return Err(invalid(
                    "repository.base",
                    "is not a URL (e.g. s3://bucket/prefix or file:///srv/archive)".into(),
                ))
            }
            // Every node's argv, environment and log would carry them, and etcd in clear.
            Ok(u) if !u.username().is_empty() || u.password().is_some() => {
                return Err(invalid(
                    "repository.base",
                    "must not hold credentials (user:password@): give them in repository.env or repository.walarchive_config".into(),
                ))
            }
            Ok(u) if u.query().is_some() || u.fragment().is_some() => {
                return Err(invalid(
                    "repository.base",
                    "must not have a query string or fragment (credentials and storage options go in repository.env or repository.walarchive_config)".into(),
                ))
            }
            Ok(_) => {}
        }
        if self.etcd.endpoints.is_empty() {
            return Err(invalid(
                "etcd.endpoints",
                "at least one endpoint is required".into(),
            ));
        }
        for e in &self.etcd.endpoints {
            match url::Url::parse(e) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => {
                    let host = u.host_str().unwrap_or_default();
                    if u.scheme() == "http" && !is_loopback_host(host) && !self.allow_plaintext {
                        return Err(invalid(
                            "etcd.endpoints",
                            format!("{e:?} is plain HTTP to another machine: use https:// (with etcd.ca_file), or set allow_plaintext = true"),
                        ));
                    }
                    if u.scheme() == "https" && self.etcd.ca_file.is_none() {
                        return Err(invalid(
                            "etcd.ca_file",
                            format!(
                                "{e:?} is https: set etcd.ca_file to the CA of etcd's certificate"
                            ),
                        ));
                    }
                }
                _ => {
                    return Err(invalid(
                        "etcd.endpoints",
                        format!("{e:?} is not an http(s)://HOST:PORT URL"),
                    ))
                }
            }
        }
        let https = self.etcd.endpoints.iter().any(|e| e.starts_with("https:"));
        if https && self.nodes.etcd_ca_file.is_none() {
            return Err(invalid(
                "nodes.etcd_ca_file",
                "etcd is https: set the path of etcd's CA on the cells, for Patroni".into(),
            ));
        }
        if self.nodes.etcd_cert_file.is_some() != self.nodes.etcd_key_file.is_some() {
            return Err(invalid(
                "nodes.etcd_cert_file",
                "nodes.etcd_cert_file and nodes.etcd_key_file go together".into(),
            ));
        }
        if self.etcd.username.is_none()
            && (self.etcd.password_env.is_some() || self.etcd.password_file.is_some())
        {
            return Err(invalid(
                "etcd.username",
                "a password is set but no user: set etcd.username".into(),
            ));
        }
        if self.nodes.etcd_username.is_none()
            && (self.nodes.etcd_password_env.is_some() || self.nodes.etcd_password_file.is_some())
        {
            return Err(invalid(
                "nodes.etcd_username",
                "a password is set but no user: set nodes.etcd_username".into(),
            ));
        }
        if self.etcd.cert_file.is_some() != self.etcd.key_file.is_some() {
            return Err(invalid(
                "etcd.cert_file",
                "etcd.cert_file and etcd.key_file go together".into(),
            ));
        }
        if !self.listen.ip().is_loopback() && self.tls.is_none() && !self.allow_plaintext {
            return Err(invalid(
                "listen",
                format!("{} is not a loopback address and [tls] is not configured: the platform's password would cross the network in clear; configure [tls] (cert_file, key_file, ca_file) or set allow_plaintext = true", self.listen),
            ));
        }
        let p = &self.etcd.prefix;
        if !p.starts_with('/') || p.ends_with('/') || p.len() < 2 {
            return Err(invalid(
                "etcd.prefix",
                format!("{p:?} must start with '/' and not end with '/'"),
            ));
        }
        if self.etcd.timeout.0.is_zero() {
            return Err(invalid("etcd.timeout", "must be positive".into()));
        }
        let mut cells = HashSet::new();
        for (i, c) in self.cells.iter().enumerate() {
            if c.name.is_empty() || !cells.insert(&c.name) {
                return Err(invalid(
                    &format!("cells[{i}].name"),
                    format!("empty or duplicate cell name {:?}", c.name),
                ));
            }
            let url = match url::Url::parse(&c.url) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => u,
                _ => {
                    return Err(invalid(
                        &format!("cells[{i}].url"),
                        format!("{:?} is not an http(s)://HOST:PORT URL", c.url),
                    ))
                }
            };
            if url.scheme() == "https" && self.tls.is_none() {
                return Err(invalid(
                    &format!("cells[{i}].url"),
                    format!("{:?} is https: configure [tls] (the CA of the cells' certificates, and the broker's client certificate)", c.url),
                ));
            }
            if url.scheme() == "http"
                && !is_loopback_host(url.host_str().unwrap_or_default())
                && !self.allow_plaintext
            {
                return Err(invalid(
                    &format!("cells[{i}].url"),
                    format!("{:?} is plain HTTP to another machine (its token and the nodes' passwords would cross the network in clear): use https://, or set allow_plaintext = true", c.url),
                ));
            }
        }
        let r = &self.router;
        if r.host.is_empty() {
            return Err(invalid("router.host", "must not be empty".into()));
        }
        if r.port_min == 0 || r.port_min > r.port_max {
            return Err(invalid(
                "router.port_min",
                format!(
                    "need 0 < port_min <= port_max, got {}..{}",
                    r.port_min, r.port_max
                ),
            ));
        }
        if self.archive_timeout.0.is_zero() {
            return Err(invalid("archive_timeout", "must be positive".into()));
        }
        if self.worker.backoff_max.0 < Duration::from_secs(1) {
            return Err(invalid("worker.backoff_max", "must be at least 1s".into()));
        }
        if self.backups.interval.0.is_zero() {
            return Err(invalid("backups.interval", "must be positive".into()));
        }
        let n = &self.nodes;
        if n.loop_wait == 0 || n.loop_wait + 2 * n.retry_timeout > n.ttl {
            return Err(invalid(
                "nodes.ttl",
                "need loop_wait > 0 and loop_wait + 2 * retry_timeout <= ttl".into(),
            ));
        }
        if !n.walarchive.is_absolute() {
            return Err(invalid(
                "nodes.walarchive",
                "must be an absolute path".into(),
            ));
        }
        if let Some(ns) = &n.patroni_namespace {
            if !ns.starts_with('/') || !ns.ends_with('/') {
                return Err(invalid(
                    "nodes.patroni_namespace",
                    format!("{ns:?} must start and end with '/'"),
                ));
            }
        }
        if self.backups.retain == 0 {
            return Err(invalid("backups.retain", "must be at least 1".into()));
        }
        Ok(())
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

/// Reads a secret from exactly one of `env` (variable name) and `file`.
fn resolve_secret(
    origin: &str,
    section: &str,
    what: &str,
    env: Option<&str>,
    file: Option<&Path>,
) -> Result<Secret, ConfigError> {
    let err = |setting: String, message: String| ConfigError::Secret {
        origin: origin.to_string(),
        setting,
        message,
    };
    let value = match (env, file) {
        (Some(_), Some(_)) => {
            return Err(err(
                format!("{section}.{what}_env"),
                format!("set either {what}_env or {what}_file, not both"),
            ))
        }
        (None, None) => {
            return Err(err(
                format!("{section}.{what}_env"),
                format!("set {what}_env (an environment variable name) or {what}_file (a file path); the {what} itself is never written in the configuration"),
            ))
        }
        (Some(var), None) => std::env::var(var).map_err(|_| {
            err(
                format!("{section}.{what}_env"),
                format!("environment variable {var} is not set (or not UTF-8)"),
            )
        })?,
        (None, Some(path)) => {
            let mut v = std::fs::read_to_string(path).map_err(|e| {
                err(
                    format!("{section}.{what}_file"),
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            if v.ends_with('\n') {
                v.pop();
                if v.ends_with('\r') {
                    v.pop();
                }
            }
            v
        }
    };
    if value.is_empty() {
        return Err(err(
            format!("{section}.{what}"),
            format!("the {what} is empty"),
        ));
    }
    Ok(Secret(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> String {
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/broker.example.toml"))
            .unwrap()
    }

    fn with_password_file(text: &str) -> (tempfile::NamedTempFile, String) {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), "s3cret-pw\n").unwrap();
        let key = f.path().with_extension("key");
        std::fs::write(&key, crate::secrets::Keyring::generate_key()).unwrap();
        let text = text
            .replace(
                "/etc/walarchive-broker/secrets.key\"",
                &format!("{}\"", key.display()),
            )
            .replace(
                "\"/etc/walarchive-broker/etcd.password\"",
                &format!("{:?}", f.path().display().to_string()),
            )
            .replace(
                "\"/etc/walarchive-broker/etcd-patroni.password\"",
                &format!("{:?}", f.path().display().to_string()),
            );
        let text = text.replace(
            "password_env = \"WALARCHIVE_BROKER_PASSWORD\"",
            &format!("password_file = {:?}", f.path().display().to_string()),
        );
        let text = text
            .lines()
            .filter(|l| !l.starts_with("token_env"))
            .collect::<Vec<_>>()
            .join("\n")
            .replace("[[cells]]", "[[cells]]\ntoken_file = \"__TOKEN__\"")
            .replace("__TOKEN__", &f.path().display().to_string());
        (f, text)
    }

    #[test]
    fn the_example_loads_and_secrets_are_redacted() {
        let (_f, text) = with_password_file(&example());
        let c = BrokerConfig::parse(&text, "example").unwrap();
        assert_eq!(c.credentials.password.expose(), "s3cret-pw");
        assert_eq!(c.service.plans.len(), 2);
        assert_eq!(c.service.plans[0].node_count, 1);
        assert_eq!(c.service.plans[1].node_count, 2);
        assert_eq!(c.etcd.prefix, "/walarchive-broker");
        assert_eq!(c.archive_timeout.0, Duration::from_secs(60));
        assert!(c.cells.iter().all(|c| c.token.expose() == "s3cret-pw"));
        let debug = format!("{c:?}");
        assert!(!debug.contains("s3cret"), "{debug}");
        assert!(debug.contains("[redacted]"));
        assert_eq!(
            c.repository.for_instance("abc"),
            format!("{}/abc", c.repository.base.trim_end_matches('/'))
        );
    }

    #[test]
    fn errors_are_clear() {
        let (_f, text) = with_password_file(&example());
        let bad = text.replace("listen =", "lisen =");
        let e = BrokerConfig::parse(&bad, "x.toml").unwrap_err().to_string();
        assert!(e.contains("x.toml") && e.contains("lisen"), "{e}");

        let e = BrokerConfig::parse(&text.replace("port_min = 30000", "port_min = 40000"), "x")
            .unwrap_err()
            .to_string();
        assert!(e.contains("router.port_min"), "{e}");

        let e = BrokerConfig::parse(&example(), "x")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("WALARCHIVE_BROKER_PASSWORD") || e.contains("token"),
            "{e}"
        );

        let e = BrokerConfig::parse(&text.replace("node_count = 2", "node_count = 9"), "x")
            .unwrap_err()
            .to_string();
        assert!(e.contains("node_count"), "{e}");

        let start = text.find("\n[secrets]").unwrap();
        let end = text[start..].find("\n[credentials]").unwrap() + start;
        let e = BrokerConfig::parse(&format!("{}{}", &text[..start], &text[end..]), "x")
            .unwrap_err()
            .to_string();
        assert_eq!(e, "invalid configuration x: secrets: the key sealing the passwords the broker keeps in etcd is required: set secrets.key_file (or secrets.key_env) to 32 random bytes in base64, e.g. from `head -c 32 /dev/urandom | base64`");
    }

    /// Storage credentials go in the credential settings, never in the base URL (which
    /// every node's command line, log and etcd record carries); the error names the key and
    /// never echoes the secret.
    #[test]
    fn credentials_in_the_repository_url_are_refused() {
        let (_f, text) = with_password_file(&example());
        let base = BrokerConfig::parse(&text, "x").unwrap().repository.base;
        let (scheme, rest) = base.split_once("://").unwrap();
        for bad in [
            format!("s3://AKIAEXAMPLE:SuperSecret123@bucket/{rest}"),
            format!("s3://SuperSecret123@bucket/{rest}"),
            format!("{scheme}://{rest}?access_key=SuperSecret123"),
            format!("{scheme}://{rest}#SuperSecret123"),
            "not a url SuperSecret123".to_string(),
        ] {
            let e = BrokerConfig::parse(&text.replace(&base, &bad), "x")
                .unwrap_err()
                .to_string();
            assert!(e.contains("repository.base"), "{e}");
            assert!(!e.contains("SuperSecret123") && !e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn plain_http_off_the_loopback_interface_is_refused() {
        let (_f, text) = with_password_file(&example());
        let no_tls = |t: &str| {
            let start = t.find("\n[tls]\n").unwrap();
            let end = t[start..].find("\n[secrets]").unwrap() + start;
            format!("{}{}", &t[..start], &t[end..])
        };
        let e = BrokerConfig::parse(&no_tls(&text), "x.toml")
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "invalid configuration x.toml: listen: 0.0.0.0:8443 is not a loopback address and [tls] is not configured: the platform's password would cross the network in clear; configure [tls] (cert_file, key_file, ca_file) or set allow_plaintext = true"
        );
        let http_cell = text.replace("https://10.0.1.10:7500", "http://10.0.1.10:7500");
        let e = BrokerConfig::parse(&http_cell, "x")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("cells[0].url: \"http://10.0.1.10:7500\" is plain HTTP to another machine"),
            "{e}"
        );
        let http_etcd = text.replace("https://10.0.0.21:2379", "http://10.0.0.21:2379");
        let e = BrokerConfig::parse(&http_etcd, "x")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(
                "etcd.endpoints: \"http://10.0.0.21:2379\" is plain HTTP to another machine"
            ),
            "{e}"
        );
        let no_etcd_ca = text.replace("ca_file = \"/etc/walarchive-broker/tls/etcd-ca.crt\"", "");
        let e = BrokerConfig::parse(&no_etcd_ca, "x")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("etcd.ca_file: \"https://10.0.0.21:2379\" is https"),
            "{e}"
        );
        let https_cells_without_tls =
            no_tls(&text).replace("listen = \"0.0.0.0:8443\"", "listen = \"127.0.0.1:8443\"");
        let e = BrokerConfig::parse(&https_cells_without_tls, "x")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("cells[0].url: \"https://10.0.1.10:7500\" is https: configure [tls]"),
            "{e}"
        );
        // Everything plain, explicitly allowed.
        let plain = no_tls(&text).replace("https://", "http://").replace(
            "listen = \"0.0.0.0:8443\"",
            "listen = \"0.0.0.0:8443\"\nallow_plaintext = true",
        );
        BrokerConfig::parse(&plain, "x").unwrap();
        // Plain HTTP on the loopback interface is fine.
        let local = no_tls(&text)
            .replace("https://10.0.", "http://127.0.")
            .replace("listen = \"0.0.0.0:8443\"", "listen = \"127.0.0.1:8443\"");
        BrokerConfig::parse(&local, "x").unwrap();
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(
            parse_duration("7d").unwrap(),
            Duration::from_secs(7 * 86400)
        );
        assert_eq!(parse_duration("60").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("5 weeks").is_err());
        assert!(parse_duration("s").is_err());
    }
}
