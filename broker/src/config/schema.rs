//! The structure of the configuration file, as serde reads it: every section, its settings
//! and their defaults. Checks across settings live in `validate`; `broker.example.toml`
//! documents every setting for operators.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::HumanDuration;
use crate::secrets::Secret;
use crate::secrets::{Keyring, SecretsConfig};
use crate::tls::TlsFiles;

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
    /// Clones (`clone-from`): who may clone across organizations, and how long the API may
    /// spend reading a source's archive before it answers.
    #[serde(default)]
    pub clones: ClonesConfig,
    /// Snapshots of the broker's own state in a second store (absent: none, with a warning).
    #[serde(default)]
    pub state_backup: Option<StateBackupConfig>,
    /// The web dashboard (`/dashboard/`): its external URL, sessions, health thresholds.
    #[serde(default)]
    pub dashboard: DashboardConfig,
    /// The sampler behind the dashboard and `/metrics` (`crate::stats`).
    #[serde(default)]
    pub stats: StatsConfig,
}

/// `[dashboard]`: the web dashboard served beside the OSB API ([`crate::dashboard`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DashboardConfig {
    /// The broker's URL as users' browsers reach it (`https://broker.example.com`), the base
    /// of every `dashboard_url`. Absent: `http(s)://<listen>` (TLS decides the scheme).
    #[serde(default)]
    pub url: Option<String>,
    /// How long a session (a login, or an opened per-instance link) lasts.
    #[serde(default = "default_session_lifetime")]
    pub session_lifetime: HumanDuration,
    /// Health: amber when the last archived segment is older than this (the worst-case data
    /// loss); default twice `archive_timeout`.
    #[serde(default)]
    pub archive_age_amber: Option<HumanDuration>,
    /// Health: red when it is older than this; default ten times `archive_timeout`.
    #[serde(default)]
    pub archive_age_red: Option<HumanDuration>,
    /// Health: amber when a replica is this many bytes behind the leader.
    #[serde(default = "default_lag_amber")]
    pub replica_lag_amber_bytes: u64,
    /// Health: red when a replica is this many bytes behind (or down).
    #[serde(default = "default_lag_red")]
    pub replica_lag_red_bytes: u64,
    /// Health: amber when the newest base backup is older than this.
    #[serde(default = "default_backup_amber")]
    pub backup_age_amber: HumanDuration,
    /// Health: red when it is older than this (or there is none).
    #[serde(default = "default_backup_red")]
    pub backup_age_red: HumanDuration,
}

impl Default for DashboardConfig {
    fn default() -> Self {
        DashboardConfig {
            url: None,
            session_lifetime: default_session_lifetime(),
            archive_age_amber: None,
            archive_age_red: None,
            replica_lag_amber_bytes: default_lag_amber(),
            replica_lag_red_bytes: default_lag_red(),
            backup_age_amber: default_backup_amber(),
            backup_age_red: default_backup_red(),
        }
    }
}

fn default_session_lifetime() -> HumanDuration {
    HumanDuration(Duration::from_secs(8 * 3600))
}

fn default_lag_amber() -> u64 {
    16 << 20
}

fn default_lag_red() -> u64 {
    64 << 20
}

fn default_backup_amber() -> HumanDuration {
    HumanDuration(Duration::from_secs(26 * 3600))
}

fn default_backup_red() -> HumanDuration {
    HumanDuration(Duration::from_secs(50 * 3600))
}

/// `[stats]`: how often the broker samples its instances, and how long it keeps the samples.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatsConfig {
    /// Sample at all (`false`: no sampler, empty dashboard figures, `/metrics` with the
    /// broker's own counters only).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Time between two samples of every ready instance.
    #[serde(default = "default_sample_interval")]
    pub sample_interval: HumanDuration,
    /// How long one cell may take to answer for one node before the node counts as unknown.
    #[serde(default = "default_cell_timeout")]
    pub cell_timeout: HumanDuration,
    /// Nodes asked at once.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Time between two readings of an instance's repository (backups, restorable window).
    #[serde(default = "default_repository_interval")]
    pub repository_interval: HumanDuration,
    /// The directory of the samples file (`samples.redb`); default: the directory of
    /// `router.haproxy_config`, which the broker owns already.
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// How long every sample is kept.
    #[serde(default = "default_full_retention")]
    pub full_retention: HumanDuration,
    /// Older samples are kept as one per this interval (lags and connections their maximum,
    /// rates their mean, sizes the last) ...
    #[serde(default = "default_coarse_interval")]
    pub coarse_interval: HumanDuration,
    /// ... for this long.
    #[serde(default = "default_coarse_retention")]
    pub coarse_retention: HumanDuration,
}

impl Default for StatsConfig {
    fn default() -> Self {
        StatsConfig {
            enabled: true,
            sample_interval: default_sample_interval(),
            cell_timeout: default_cell_timeout(),
            concurrency: default_concurrency(),
            repository_interval: default_repository_interval(),
            dir: None,
            full_retention: default_full_retention(),
            coarse_interval: default_coarse_interval(),
            coarse_retention: default_coarse_retention(),
        }
    }
}

impl StatsConfig {
    /// The samples file's directory.
    pub fn dir(&self, router: &RouterConfig) -> PathBuf {
        self.dir.clone().unwrap_or_else(|| {
            router
                .haproxy_config
                .parent()
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("."))
        })
    }
}

fn default_sample_interval() -> HumanDuration {
    HumanDuration(Duration::from_secs(15))
}

fn default_cell_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(5))
}

fn default_concurrency() -> usize {
    8
}

fn default_repository_interval() -> HumanDuration {
    HumanDuration(Duration::from_secs(300))
}

fn default_full_retention() -> HumanDuration {
    HumanDuration(Duration::from_secs(48 * 3600))
}

fn default_coarse_interval() -> HumanDuration {
    HumanDuration(Duration::from_secs(600))
}

fn default_coarse_retention() -> HumanDuration {
    HumanDuration(Duration::from_secs(30 * 86400))
}

/// Settings of clones (`clone-from`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClonesConfig {
    /// Platform user GUIDs (`X-Broker-API-Originating-Identity`, platform `cloudfoundry`)
    /// that may clone an instance of another organization by its id. Empty: nobody.
    #[serde(default)]
    pub cross_organization_users: Vec<String>,
    /// How long a provision may spend reading the source's archive before it answers 503.
    #[serde(default = "default_validation_budget")]
    pub validation_budget: HumanDuration,
}

impl Default for ClonesConfig {
    fn default() -> Self {
        ClonesConfig {
            cross_organization_users: Vec::new(),
            validation_budget: default_validation_budget(),
        }
    }
}

fn default_validation_budget() -> HumanDuration {
    HumanDuration(Duration::from_secs(20))
}

/// `[state_backup]`: where sealed snapshots of the broker's etcd state go
/// ([`crate::statebackup`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateBackupConfig {
    /// The store's URL (`s3://bucket/prefix`, `file:///srv/broker-state`), without
    /// credentials: a store of its own, not under `repository.base`.
    pub url: String,
    /// walarchive configuration file whose `[storage]` table holds this store's credentials
    /// (distinct from the archives'): the broker's environment is not used for it.
    #[serde(default)]
    pub walarchive_config: Option<PathBuf>,
    /// Snapshots kept (the newest; older ones are deleted, but for the newest of each of the
    /// last 30 days).
    #[serde(default = "default_keep")]
    pub keep: u32,
    /// At most one snapshot per this interval: every change is in a snapshot within it.
    #[serde(default = "default_min_interval")]
    pub min_interval: HumanDuration,
}

fn default_keep() -> u32 {
    200
}

fn default_min_interval() -> HumanDuration {
    HumanDuration(Duration::from_secs(5))
}

/// `nodes.synchronous_commit`: how long a commit waits for the synchronous standby.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SynchronousCommit {
    /// Until the standby has flushed the commit's WAL (PostgreSQL's default).
    #[default]
    On,
    /// Until the standby has applied it (read-your-writes on the standby).
    RemoteApply,
}

impl SynchronousCommit {
    /// PostgreSQL's name of the setting's value.
    pub fn as_str(self) -> &'static str {
        match self {
            SynchronousCommit::On => "on",
            SynchronousCommit::RemoteApply => "remote_apply",
        }
    }
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
    /// PostgreSQL's `synchronous_commit` on every node, with `synchronous`: `on` (default:
    /// a commit waits until the synchronous standby has flushed it) or `remote_apply` (until
    /// it has applied it: a read on that standby right after the commit sees it).
    #[serde(default)]
    pub synchronous_commit: SynchronousCommit,
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
            synchronous_commit: SynchronousCommit::default(),
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
    /// A provision that restores an archive (a clone) not finished after this long fails; it
    /// fails earlier when its restore made no progress for `operation_timeout`.
    #[serde(default = "default_restore_timeout")]
    pub restore_timeout: HumanDuration,
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
            restore_timeout: default_restore_timeout(),
            backoff_max: default_backoff_max(),
        }
    }
}

fn default_poll_interval() -> HumanDuration {
    HumanDuration(Duration::from_secs(5))
}

fn default_restore_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(12 * 3600))
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
#[derive(Debug, Clone, Deserialize)]
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
    /// How long a deleted incarnation's archive is kept (clones of it accepted); the worker
    /// purges it afterwards. Absent: kept forever.
    #[serde(default)]
    pub keep_deleted: Option<HumanDuration>,
    /// The least `keep_deleted` accepted (a guard against `"30s"` written for `"30d"`):
    /// 1 hour unless lowered here (tests use seconds).
    #[serde(default = "default_keep_deleted_minimum")]
    pub keep_deleted_minimum: HumanDuration,
}

fn default_keep_deleted_minimum() -> HumanDuration {
    HumanDuration(Duration::from_secs(3600))
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
#[derive(Debug, Clone, Deserialize)]
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
    /// Where the read-only port sends connections when no replica is healthy: `primary`
    /// (default: reads keep working, on the primary) or `none` (refused: reads never load
    /// the primary).
    #[serde(default)]
    pub read_only_fallback: ReadOnlyFallback,
    /// Replicas further behind the leader than this many bytes get no new read-only
    /// connections (Patroni's `GET /replica?lag=`); 0: no limit. Default 16 MiB.
    #[serde(default = "default_read_only_max_lag")]
    pub read_only_max_lag_bytes: u64,
}

/// `router.read_only_fallback`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReadOnlyFallback {
    /// The primary serves the read-only port while no replica is healthy.
    #[default]
    Primary,
    /// The read-only port refuses connections while no replica is healthy.
    None,
}

fn default_read_only_max_lag() -> u64 {
    16 << 20
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
