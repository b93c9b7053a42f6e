//! The broker's records: what the API and the worker decide on, as stored (JSON) in etcd.
//!
//! Plain data with serde: no etcd here, so every record's shape (and its compatibility with
//! what earlier versions wrote: the `serde(default)`s) is read in one place.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use crate::secrets::Secret;

mod restore;
pub use restore::*;

/// How many earlier operations an [`OperationRecord`] remembers.
pub const HISTORY: usize = 10;

/// A point in time, stored as RFC 3339 (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timestamp(pub DateTime<Utc>);

impl Timestamp {
    /// Now.
    pub fn now() -> Timestamp {
        Timestamp(Utc::now())
    }
}

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0.to_rfc3339_opts(SecondsFormat::Millis, true))
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        DateTime::parse_from_rfc3339(&s)
            .map(|t| Timestamp(t.with_timezone(&Utc)))
            .map_err(serde::de::Error::custom)
    }
}

/// A record with the etcd `mod_revision` it was read at (the token for compare-and-swap).
#[derive(Debug, Clone, PartialEq)]
pub struct Versioned<T> {
    /// The record.
    pub value: T,
    /// Its key's mod revision when read.
    pub mod_revision: i64,
}

/// The lifecycle state of an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InstanceState {
    /// Accepted; the worker is creating the cluster.
    Provisioning,
    /// Usable.
    Ready,
    /// An update (plan or node count) is in progress.
    Updating,
    /// A deprovision is in progress.
    Deprovisioning,
    /// Provisioning or deprovisioning failed (or an update left it unusable); only a
    /// deprovision is accepted.
    Failed,
    /// Deprovisioned; the record stays as a tombstone.
    Deleted,
}

/// The instance parameters the broker accepts (OSB `parameters`), as the platform gave them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Parameters {
    /// `node-count`: PostgreSQL nodes (1 to 5); the plan's default when absent.
    #[serde(
        rename = "node-count",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub node_count: Option<u8>,
    /// `postgresql-version`: the PostgreSQL major asked for (one of
    /// [`crate::pgmajor::SUPPORTED`]); at creation only (a clone's must be its source's).
    #[serde(
        rename = "postgresql-version",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub postgresql_version: Option<u32>,
}

/// The platform context of an instance.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct InstanceContext {
    /// The organization (OSB `organization_guid`).
    pub organization_guid: String,
    /// The space (OSB `space_guid`).
    pub space_guid: String,
    /// The instance's name on the platform (`context.instance_name`), if given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_name: Option<String>,
    /// `context.platform`, if given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    /// The `context` object as sent.
    #[serde(default)]
    pub raw: serde_json::Value,
}

/// Where one node of an instance runs (filled in by the worker).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodePlacement {
    /// Node name (Patroni member name).
    pub name: String,
    /// The cell that runs it.
    pub cell: String,
    /// The cell's zone.
    pub zone: String,
    /// PostgreSQL's port on the cell (0 until the cell created the node).
    #[serde(default)]
    pub pg_port: u16,
    /// Patroni's REST API port on the cell (0 until the cell created the node).
    #[serde(default)]
    pub api_port: u16,
}

/// `instances/<id>`: one service instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceRecord {
    /// The instance id (from the platform).
    pub id: String,
    /// The service offering.
    pub service_id: String,
    /// The current plan (changes when an update succeeds).
    pub plan_id: String,
    /// The parameters as requested (changes when an update succeeds).
    pub parameters: Parameters,
    /// Effective node count: `parameters.node_count` or the plan's.
    pub node_count: u8,
    /// Platform context.
    pub context: InstanceContext,
    /// The router port (reserved under `ports/<port>`).
    pub port: u16,
    /// The read-only router port (reserved under `ports/<port>` like `port`), whose route
    /// spreads connections over the hot standbys. Given by the worker
    /// (`worker/routing.rs`), so absent from new records until then and from records
    /// written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_only_port: Option<u16>,
    /// The instance's name in repository paths, Patroni's scope and HAProxy's configuration
    /// ([`crate::names::path_name`] of the id). Absent from records written before names
    /// existed, whose ids were used as they were ([`InstanceRecord::scope`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_name: Option<String>,
    /// The walarchive repository URL of this incarnation: `<base>/<id>` for the first,
    /// `<base>/<id>.<n>` for incarnation `n` (see [`crate::config::RepositoryConfig::for_incarnation`]).
    pub repository: String,
    /// 1 for the first provision of this id, incremented by each re-provision after a
    /// deprovision.
    #[serde(default = "first_incarnation")]
    pub incarnation: u32,
    /// The earlier incarnations of this id, oldest first (their archives are kept for
    /// clones). Records written before clones held only their URLs, as
    /// `previous_repositories`: they are read as incarnations 1, 2, ...
    #[serde(
        default,
        alias = "previous_repositories",
        deserialize_with = "restore::incarnations",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub previous: Vec<Incarnation>,
    /// When the last scheduled (or first) base backup completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_backup_at: Option<Timestamp>,
    /// Lifecycle state.
    pub state: InstanceState,
    /// Node placement.
    #[serde(default)]
    pub nodes: Vec<NodePlacement>,
    /// When the provision was accepted.
    pub created_at: Timestamp,
    /// Last change.
    pub updated_at: Timestamp,
    /// When the deprovision succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<Timestamp>,
    /// For an instance whose cluster starts from an archive (a clone): what it copies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore: Option<RestoreRecord>,
    /// A deleted incarnation: since when the worker purges its archive (no clone of it is
    /// accepted from then on; `worker/purge.rs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purging: Option<Timestamp>,
    /// A deleted incarnation: its archive's purge, once done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purged: Option<Purge>,
    /// The LSN of the WAL switch the deprovision made on the leader before removing the
    /// nodes (its last commits are in the archive up to there), when it could.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_lsn: Option<String>,
    /// The PostgreSQL major the instance runs (`postgresql-version`, else
    /// [`crate::pgmajor::NEWEST`]; a clone's source's). Absent from records written before
    /// majors: those instances run 15 ([`InstanceRecord::major`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgresql_major: Option<u32>,
    /// The generation of the instance's dashboard link (`dashboard-link --rotate` increments
    /// it): the link is a MAC of the id and this number ([`crate::dashboard`]), so a rotation
    /// invalidates the old link and its sessions without storing any secret. Absent: 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub dashboard_generation: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn first_incarnation() -> u32 {
    1
}

impl InstanceRecord {
    /// Patroni's scope for the instance's nodes: its [`InstanceRecord::path_name`], or for
    /// records written before names existed the id itself (their clusters were bootstrapped
    /// under it, and a scope cannot change).
    pub fn scope(&self) -> &str {
        self.path_name.as_deref().unwrap_or(&self.id)
    }

    /// The PostgreSQL major: [`InstanceRecord::postgresql_major`], else 15 (every instance
    /// recorded before majors ran 15).
    pub fn major(&self) -> u32 {
        self.postgresql_major.unwrap_or(crate::pgmajor::LEGACY)
    }
}

/// The kind of an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OperationKind {
    /// Create the cluster.
    Provision,
    /// Change plan or node count.
    Update,
    /// Remove the cluster (halting a provision in progress, if any).
    Deprovision,
    /// A base backup on the leader, asked for on the dashboard (`crate::actions`): never
    /// changes the instance's state or plan.
    Backup,
    /// A Patroni switchover to a chosen replica, asked for on the dashboard: never changes
    /// the instance's state or plan.
    Switchover,
}

impl OperationKind {
    /// Whether the platform (OSB) started operations of this kind, so that it may poll them
    /// by id (`last_operation`); dashboard actions are not.
    pub fn is_platform(self) -> bool {
        match self {
            OperationKind::Provision | OperationKind::Update | OperationKind::Deprovision => true,
            OperationKind::Backup | OperationKind::Switchover => false,
        }
    }

    /// The kind in words, for messages ("a backup").
    pub fn noun(self) -> &'static str {
        match self {
            OperationKind::Provision => "a provision",
            OperationKind::Update => "an update",
            OperationKind::Deprovision => "a deprovision",
            OperationKind::Backup => "a backup",
            OperationKind::Switchover => "a switchover",
        }
    }
}

/// The state of an operation, spelt as OSB's `last_operation` spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OperationState {
    /// Still running.
    #[serde(rename = "in progress")]
    InProgress,
    /// Done.
    #[serde(rename = "succeeded")]
    Succeeded,
    /// Given up.
    #[serde(rename = "failed")]
    Failed,
}

impl std::fmt::Display for OperationState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            OperationState::InProgress => "in progress",
            OperationState::Succeeded => "succeeded",
            OperationState::Failed => "failed",
        })
    }
}

/// What an operation is to achieve: the instance's plan and parameters once it succeeds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperationRequest {
    /// Target plan.
    pub plan_id: String,
    /// Target parameters (as requested).
    pub parameters: Parameters,
    /// Target effective node count.
    pub node_count: u8,
}

/// An earlier operation, as remembered in [`OperationRecord::history`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperationSummary {
    /// Operation id.
    pub id: String,
    /// Kind.
    pub kind: OperationKind,
    /// Final (or last known) state.
    pub state: OperationState,
    /// Last description.
    pub description: String,
    /// When accepted (absent from summaries written before it was kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Timestamp>,
    /// When it succeeded or failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Timestamp>,
    /// Who asked for it, for dashboard actions ([`OperationRecord::requested_by`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_by: Option<String>,
}

/// `operations/<instance_id>`: the instance's current operation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OperationRecord {
    /// The instance.
    pub instance_id: String,
    /// Operation id (returned to the platform as `operation`).
    pub id: String,
    /// Kind.
    pub kind: OperationKind,
    /// State.
    pub state: OperationState,
    /// User-facing progress or outcome.
    pub description: String,
    /// Target of the operation.
    pub request: OperationRequest,
    /// For a deprovision that interrupted a provision: that provision's id. The worker halts
    /// the provision and cleans up whatever it created (orphan mitigation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interrupted: Option<String>,
    /// OSB 2.16 `instance_usable` for failed updates and deprovisions, if the worker knows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_usable: Option<bool>,
    /// When accepted.
    pub started_at: Timestamp,
    /// Last change.
    pub updated_at: Timestamp,
    /// When it succeeded or failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Timestamp>,
    /// Earlier operations of this instance, oldest first (at most [`HISTORY`]; the newest
    /// platform operation is never dropped for a dashboard action's, so `last_operation`
    /// keeps answering for it).
    #[serde(default)]
    pub history: Vec<OperationSummary>,
    /// Who asked for a dashboard action (`crate::actions`: `operator`, `user`), or for an
    /// update made on the dashboard; absent for the platform's own operations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_by: Option<String>,
    /// A switchover's candidate: the replica that is to lead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidate: Option<String>,
}

impl OperationRecord {
    /// A new operation in progress, following `previous` (whose summary goes to the history).
    pub fn new(
        instance_id: &str,
        kind: OperationKind,
        request: OperationRequest,
        description: impl Into<String>,
        previous: Option<&OperationRecord>,
    ) -> OperationRecord {
        let now = Timestamp::now();
        let mut history = Vec::new();
        if let Some(p) = previous {
            history = p.history.clone();
            history.push(p.summary());
            trim_history(&mut history);
        }
        OperationRecord {
            instance_id: instance_id.to_string(),
            id: new_id(),
            kind,
            state: OperationState::InProgress,
            description: description.into(),
            request,
            interrupted: None,
            instance_usable: None,
            started_at: now,
            updated_at: now,
            finished_at: None,
            history,
            requested_by: None,
            candidate: None,
        }
    }

    /// This operation's summary.
    pub fn summary(&self) -> OperationSummary {
        OperationSummary {
            id: self.id.clone(),
            kind: self.kind,
            state: self.state,
            description: self.description.clone(),
            started_at: Some(self.started_at),
            finished_at: self.finished_at,
            requested_by: self.requested_by.clone(),
        }
    }

    /// The newest operation the platform started (this one or one in the history): what
    /// `last_operation` without an operation id answers for, since the platform never saw
    /// the dashboard's actions.
    pub fn last_platform(&self) -> Option<OperationSummary> {
        if self.kind.is_platform() {
            return Some(self.summary());
        }
        self.history
            .iter()
            .rev()
            .find(|s| s.kind.is_platform())
            .cloned()
    }

    /// This operation or an earlier one with id `id`.
    pub fn find(&self, id: &str) -> Option<OperationSummary> {
        if self.id == id {
            return Some(self.summary());
        }
        self.history.iter().rev().find(|s| s.id == id).cloned()
    }
}

/// Drops the oldest summaries beyond [`HISTORY`], but never the newest platform operation's
/// (dashboard actions could otherwise push the provision the platform polls out of reach).
fn trim_history(history: &mut Vec<OperationSummary>) {
    while history.len() > HISTORY {
        let keep = history.iter().rposition(|s| s.kind.is_platform());
        let drop = (0..history.len())
            .find(|i| Some(*i) != keep)
            .expect("more than one summary");
        history.remove(drop);
    }
}

/// The state of a binding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BindingState {
    /// The binder is creating it.
    Creating,
    /// Usable; credentials recorded.
    Created,
    /// The binder failed; a new PUT retries, a DELETE cleans up.
    Failed,
    /// The binder is removing it.
    Deleting,
}

/// The credentials of a binding (the OSB `credentials` object). `Debug` redacts the password.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    /// `postgresql://user:password@host:port/name`
    pub uri: String,
    /// `jdbc:postgresql://host:port/name?user=...&password=...`
    #[serde(rename = "jdbcUrl")]
    pub jdbc_url: String,
    /// Router host.
    pub hostname: String,
    /// Router port.
    pub port: u16,
    /// Database name.
    pub name: String,
    /// Role name.
    pub username: String,
    /// Role password.
    pub password: String,
    /// `postgres://user:password@host:read_only_port/name`: the router's read-only port
    /// (hot standbys; the primary when none is healthy, unless the operator turned that
    /// off). Absent when the instance had no read-only port at bind time, and from bindings
    /// made before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_only_uri: Option<String>,
    /// The router's read-only port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_only_port: Option<u16>,
    /// `postgresql://user:password@h1:p1,h2:p2/name?target_session_attrs=read-write`: the
    /// nodes themselves, as placed at bind time, for clients that fail over without the
    /// router.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri_multihost: Option<String>,
    /// The JDBC form of `uri_multihost` (`targetServerType=primary`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jdbc_url_multihost: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("hostname", &self.hostname)
            .field("port", &self.port)
            .field("read_only_port", &self.read_only_port)
            .field("name", &self.name)
            .field("username", &self.username)
            .field("password", &"[redacted]")
            .finish_non_exhaustive()
    }
}

/// `bindings/<instance_id>/<binding_id>`: one binding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BindingRecord {
    /// The instance.
    pub instance_id: String,
    /// The binding id.
    pub binding_id: String,
    /// Service id of the request.
    pub service_id: String,
    /// Plan id of the request.
    pub plan_id: String,
    /// The request's `app_guid`, `bind_resource` and `parameters`, to tell an identical
    /// re-sent request (200) from a conflicting one (409).
    pub request: serde_json::Value,
    /// State.
    pub state: BindingState,
    /// Credentials, once created. Stored so that re-sent requests and `GET` return the same
    /// ones: etcd must be protected like the databases themselves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<Credentials>,
    /// When first requested.
    pub created_at: Timestamp,
    /// Last change.
    pub updated_at: Timestamp,
}

/// `catalog/<org>/<space>/<name>/<instance_id>`: finds instances (deleted ones too) by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogEntry {
    /// The instance.
    pub instance_id: String,
    /// True once deprovisioned.
    pub deleted: bool,
    /// When the instance was created.
    pub created_at: Timestamp,
    /// When it was deprovisioned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<Timestamp>,
    /// The incarnation of the instance id (see [`InstanceRecord::incarnation`]).
    #[serde(default = "first_incarnation")]
    pub incarnation: u32,
    /// The incarnation's repository URL (where its archive stays after deletion).
    #[serde(default)]
    pub repository: String,
    /// Its archive's purge, once done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purged: Option<Purge>,
}

/// `secrets/<instance_id>`: the database passwords of an instance's current incarnation.
///
/// Kept apart from [`InstanceRecord`] so that nothing that serves or logs instance records
/// (the API, `Debug` output) can carry them; [`Secret`] redacts itself in `Debug`. Written
/// once per incarnation by the worker (create-if-absent, so a restarted worker reuses them)
/// and removed when a deprovision succeeds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceSecrets {
    /// Password of the `postgres` superuser (only Patroni uses it: the superuser is reached
    /// over the nodes' Unix sockets only).
    pub superuser_password: Secret,
    /// Password of the `replicator` replication user.
    pub replication_password: Secret,
    /// Password of the `rewinder` user pg_rewind uses (absent for instances created before
    /// it existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewind_password: Option<Secret>,
}

impl InstanceSecrets {
    /// Fresh random passwords.
    pub fn generate() -> InstanceSecrets {
        InstanceSecrets {
            superuser_password: Secret::generate(),
            replication_password: Secret::generate(),
            rewind_password: Some(Secret::generate()),
        }
    }
}

/// How many backups a [`BackupLog`] remembers.
pub const BACKUP_LOG: usize = 100;

/// One base backup the broker took (scheduled, first, or on demand).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupEntry {
    /// The backup's name in the repository (`walarchive backup-list`).
    pub name: String,
    /// The node (Patroni member) that took it: the leader then.
    pub node: String,
    /// Who asked for it: `schedule` (scheduled and first backups), or the dashboard's
    /// `requested_by` (`operator`, `user`).
    pub requested_by: String,
    /// When the broker asked for it.
    pub started_at: Timestamp,
    /// When it was complete.
    pub finished_at: Timestamp,
    /// The dashboard action's operation, for backups taken on demand.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
}

/// `backups/<instance_id>`: the backups the broker took of the instance's current
/// incarnation, oldest first (at most [`BACKUP_LOG`]), so that the dashboard can say which
/// node took each (the repository's manifests do not). Removed with the incarnation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupLog {
    /// The backups.
    pub entries: Vec<BackupEntry>,
}

/// `claims/<instance_id>`: which worker works on an instance, and until when (renewed while
/// it works). Lets several broker processes share one etcd without two workers driving the
/// same instance; a crashed worker's claim simply expires.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    /// The worker's random id.
    pub owner: String,
    /// When the claim lapses unless renewed.
    pub until: Timestamp,
}

/// What a [`Claim`] is on: an instance's operations, or its scheduled backups (which run
/// beside them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimKind {
    /// Provisions, updates, deprovisions.
    Operations,
    /// Scheduled base backups and retention.
    Backups,
    /// The purge of a deleted incarnation's archive (`[repository] keep_deleted`).
    Purge,
}

/// The outcome of [`Store::create_instance`](super::Store::create_instance).
#[derive(Debug, Clone, PartialEq)]
pub enum CreateInstance {
    /// Created, with the port reserved.
    Created {
        /// The record as stored (with its port).
        instance: Box<Versioned<InstanceRecord>>,
        /// The provision operation as stored.
        operation: Box<Versioned<OperationRecord>>,
    },
    /// An instance with this id already exists (re-read it).
    Exists,
}

/// How an operation ended, as reported by the worker to [`Store::finish_operation`](super::Store::finish_operation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// True when it succeeded.
    pub succeeded: bool,
    /// User-facing description (shown by the platform).
    pub description: String,
    /// For failed updates: false when the instance is no longer usable (then it becomes
    /// `failed`). Reported as OSB `instance_usable`.
    pub instance_usable: Option<bool>,
}

/// A fresh random id (32 hex digits) for operations.
pub fn new_id() -> String {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).expect("the OS random number generator");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(kind: OperationKind, previous: Option<&OperationRecord>) -> OperationRecord {
        let req = OperationRequest {
            plan_id: "p".into(),
            parameters: Parameters::default(),
            node_count: 2,
        };
        let mut o = OperationRecord::new("i", kind, req, "d", previous);
        o.state = OperationState::Succeeded;
        o
    }

    #[test]
    fn dashboard_actions_never_push_the_platforms_operation_out_of_the_history() {
        let provision = op(OperationKind::Provision, None);
        let mut cur = op(OperationKind::Backup, Some(&provision));
        for _ in 0..3 * HISTORY {
            cur = op(OperationKind::Switchover, Some(&cur));
        }
        assert_eq!(cur.history.len(), HISTORY);
        assert_eq!(cur.find(&provision.id), Some(provision.summary()));
        assert_eq!(cur.last_platform(), Some(provision.summary()));
        // The newest platform operation is the one kept.
        let update = op(OperationKind::Update, Some(&cur));
        let mut cur = op(OperationKind::Backup, Some(&update));
        for _ in 0..3 * HISTORY {
            cur = op(OperationKind::Backup, Some(&cur));
        }
        assert_eq!(cur.last_platform().map(|s| s.id), Some(update.id.clone()));
        assert_eq!(cur.find(&provision.id), None);
    }

    #[test]
    fn summaries_written_before_times_decode() {
        let s: OperationSummary = serde_json::from_value(serde_json::json!({
            "id": "a", "kind": "update", "state": "succeeded", "description": "d"
        }))
        .unwrap();
        assert_eq!(
            (s.started_at, s.finished_at, s.requested_by),
            (None, None, None)
        );
        let o = op(OperationKind::Backup, None);
        let json = serde_json::to_value(&o).unwrap();
        let back: OperationRecord = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(serde_json::to_value(&back).unwrap(), json);
        assert_eq!(serde_json::to_value(o.kind).unwrap(), "backup");
    }
}
