//! The broker's durable state: JSON records in etcd, changed only by compare-and-swap.
//!
//! Why etcd and CAS: the OSB API answers immediately and a separate worker does the slow
//! work (placing nodes, starting Patroni, waiting for the first base backup), possibly in
//! another broker process. Both sides read a record, decide, and write it back only if its
//! `mod_revision` is unchanged, so neither a second broker nor a restarted worker can
//! overwrite a decision it did not see. Multi-key changes (an instance with its operation,
//! its port and its catalog entry) are single etcd transactions.
//!
//! Key layout (all under the configured prefix, default `/walarchive-broker`):
//!
//! | key | value |
//! | --- | --- |
//! | `instances/<instance_id>` | [`InstanceRecord`] |
//! | `operations/<instance_id>` | [`OperationRecord`]: the one current operation, with a short history |
//! | `bindings/<instance_id>/<binding_id>` | [`BindingRecord`] |
//! | `ports/<port>` | the owning instance id (plain text) |
//! | `secrets/<instance_id>` | [`InstanceSecrets`] of the current incarnation |
//! | `claims/<instance_id>` | [`Claim`]: the worker working on the instance's operations |
//! | `claims/<instance_id>/backup` | [`Claim`]: the worker taking its scheduled backups |
//! | `catalog/<org>/<space>/<name>/<instance_id>[%2F<n>]` | [`CatalogEntry`] (one per incarnation) |
//!
//! Path components are percent-encoded outside RFC 3986's unreserved characters (the API
//! only accepts ids made of those, so ids appear as they are).
//!
//! Port policy: a port is reserved (create-if-absent on `ports/<port>`) in the same
//! transaction that creates the instance, so the API can answer with a complete record and
//! two concurrent provisions can never share a port. The instance keeps it through updates
//! and failures; it is released only when a deprovision succeeds.
//!
//! Re-provisioning a deleted id starts a new *incarnation* (a fresh port, secrets and
//! cluster). Its predecessors' archives are kept for restores and clones, and a new cluster
//! (another system identifier) cannot archive into them, so incarnation `n >= 2` gets the
//! repository `<base>/<instance_id>.<n>`; each incarnation has its own catalog entry naming
//! its repository.
//!
//! The catalog key includes the instance id (rather than mapping a name to one id) so that a
//! name reused after a deprovision does not hide the deleted instance: clones of deleted
//! instances are found by name, and there may be several.
//!
//! Instance records are kept as tombstones (`state: deleted`) after deprovisioning: they
//! answer `410 Gone`, say where the repository is, and give a re-provision the next
//! incarnation number.

use std::ops::RangeInclusive;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use tracing::{debug, info};

use std::sync::Arc;

use crate::etcd::{Compare, EtcdClient, EtcdError, KeyValue, TxnOp, TxnOpResponse};
use crate::patroni::Secret;
use crate::secrets::{Keyring, SecretsError};

/// How many earlier operations an [`OperationRecord`] remembers.
pub const HISTORY: usize = 10;

/// How often a CAS loop re-reads and retries after losing a race before giving up.
const CAS_ATTEMPTS: usize = 32;

/// Errors of the [`Store`].
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// etcd failed (see [`EtcdError::is_transient`]).
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    /// A record does not decode: written by an incompatible version, or damaged.
    #[error("corrupt record at {key}: {message}")]
    Corrupt {
        /// The key.
        key: String,
        /// The decoding error.
        message: String,
    },
    /// A record that must exist does not.
    #[error("no {what} record for {id}")]
    NotFound {
        /// `instance`, `operation`, `binding`.
        what: &'static str,
        /// The id.
        id: String,
    },
    /// The operation is no longer the instance's current one (e.g. a deprovision replaced a
    /// provision in progress): the worker should stop working on it.
    #[error("operation {operation} of instance {instance} was superseded by operation {current}")]
    Superseded {
        /// The instance.
        instance: String,
        /// The operation the caller works on.
        operation: String,
        /// The current operation.
        current: String,
    },
    /// The operation is already finished.
    #[error("operation {operation} of instance {instance} is already {state}")]
    Finished {
        /// The instance.
        instance: String,
        /// The operation.
        operation: String,
        /// Its state.
        state: OperationState,
    },
    /// Concurrent writers kept changing the record; nothing was written.
    #[error("too much contention on {key}; nothing was changed")]
    Contention {
        /// The key.
        key: String,
    },
    /// Every port of the router's range is taken.
    #[error("no free router port in {min}..={max}")]
    NoFreePort {
        /// First port of the range.
        min: u16,
        /// Last port of the range.
        max: u16,
    },
    /// A transition closure refused the change.
    #[error("{0}")]
    Refused(String),
    /// A sealed secret does not open.
    #[error("cannot open the secret at {key}: {reason}")]
    Secret {
        /// The key.
        key: String,
        /// Why (in the message: not a `source`, so that it is printed once).
        reason: SecretsError,
    },
}

impl StoreError {
    /// True when retrying later may succeed (etcd unavailable, contention).
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Etcd(e) => e.is_transient(),
            StoreError::Contention { .. } => true,
            _ => false,
        }
    }
}

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
    /// The repositories of earlier incarnations, oldest first (kept for restores).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub previous_repositories: Vec<String>,
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
    /// Earlier operations of this instance, oldest first (at most [`HISTORY`]).
    #[serde(default)]
    pub history: Vec<OperationSummary>,
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
            if history.len() > HISTORY {
                history.drain(..history.len() - HISTORY);
            }
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
        }
    }

    /// This operation's summary.
    pub fn summary(&self) -> OperationSummary {
        OperationSummary {
            id: self.id.clone(),
            kind: self.kind,
            state: self.state,
            description: self.description.clone(),
        }
    }

    /// This operation or an earlier one with id `id`.
    pub fn find(&self, id: &str) -> Option<OperationSummary> {
        if self.id == id {
            return Some(self.summary());
        }
        self.history.iter().rev().find(|s| s.id == id).cloned()
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
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("hostname", &self.hostname)
            .field("port", &self.port)
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
}

/// The outcome of [`Store::create_instance`].
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

/// How an operation ended, as reported by the worker to [`Store::finish_operation`].
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

/// Percent-encodes everything outside RFC 3986's unreserved characters: for etcd key
/// components here, and for the user info and database of the URIs bindings return.
pub fn encode_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Typed access to the broker's records in etcd. Cheap to clone.
///
/// The instances' secrets and the bindings' credentials are sealed with `keyring` (see
/// [`crate::secrets`]) before they are written, and opened when read: etcd never holds them
/// in clear. Records written in clear by earlier versions are still read, and
/// [`Store::reseal_all`] seals them.
#[derive(Debug, Clone)]
pub struct Store {
    etcd: EtcdClient,
    prefix: String,
    keyring: Arc<Keyring>,
}

/// The stored form of [`InstanceSecrets`]: sealed.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SealedRecord {
    sealed: String,
}

/// What [`Store::reseal_all`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resealed {
    /// Values sealed again with the current key (they were sealed with an old one).
    pub rekeyed: usize,
    /// Values that were in clear (written by an earlier version), now sealed.
    pub were_clear: usize,
    /// Values already sealed with the current key.
    pub current: usize,
}

impl Store {
    /// A store keeping its records under `prefix` (e.g. `/walarchive-broker`), sealing
    /// secrets with `keyring`.
    pub fn new(etcd: EtcdClient, prefix: impl Into<String>, keyring: Arc<Keyring>) -> Store {
        let prefix = prefix.into().trim_end_matches('/').to_string();
        Store {
            etcd,
            prefix,
            keyring,
        }
    }

    /// The etcd client.
    pub fn etcd(&self) -> &EtcdClient {
        &self.etcd
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `<prefix>/instances/<id>`
    pub fn instance_key(&self, id: &str) -> String {
        format!("{}/instances/{}", self.prefix, encode_component(id))
    }

    /// `<prefix>/operations/<instance_id>`
    pub fn operation_key(&self, instance_id: &str) -> String {
        format!(
            "{}/operations/{}",
            self.prefix,
            encode_component(instance_id)
        )
    }

    /// `<prefix>/bindings/<instance_id>/` (prefix of the instance's bindings)
    pub fn bindings_prefix(&self, instance_id: &str) -> String {
        format!(
            "{}/bindings/{}/",
            self.prefix,
            encode_component(instance_id)
        )
    }

    /// `<prefix>/bindings/<instance_id>/<binding_id>`
    pub fn binding_key(&self, instance_id: &str, binding_id: &str) -> String {
        format!(
            "{}{}",
            self.bindings_prefix(instance_id),
            encode_component(binding_id)
        )
    }

    /// `<prefix>/secrets/<instance_id>`
    pub fn secrets_key(&self, instance_id: &str) -> String {
        format!("{}/secrets/{}", self.prefix, encode_component(instance_id))
    }

    /// `<prefix>/claims/<instance_id>` (operations) or `.../<instance_id>/backup` (backups:
    /// encoded ids hold no `/`, so no instance's key is another's).
    pub fn claim_key(&self, instance_id: &str, kind: ClaimKind) -> String {
        let key = format!("{}/claims/{}", self.prefix, encode_component(instance_id));
        match kind {
            ClaimKind::Operations => key,
            ClaimKind::Backups => key + "/backup",
        }
    }

    /// `<prefix>/ports/<port>`
    pub fn port_key(&self, port: u16) -> String {
        format!("{}/ports/{port}", self.prefix)
    }

    /// `<prefix>/catalog/<org>/<space>/<name>/` (prefix of the instances with that name)
    pub fn catalog_prefix(&self, org: &str, space: &str, name: &str) -> String {
        format!(
            "{}/catalog/{}/{}/{}/",
            self.prefix,
            encode_component(org),
            encode_component(space),
            encode_component(name)
        )
    }

    /// `.../<instance_id>` for the first incarnation, `.../<instance_id>/<n>` for later ones
    /// (encoded ids hold no `/`, so the keys of different ids and incarnations never collide).
    fn catalog_key(
        &self,
        ctx: &InstanceContext,
        instance_id: &str,
        incarnation: u32,
    ) -> Option<String> {
        let name = ctx.instance_name.as_deref()?;
        let mut key = format!(
            "{}{}",
            self.catalog_prefix(&ctx.organization_guid, &ctx.space_guid, name),
            encode_component(instance_id)
        );
        if incarnation > 1 {
            key.push_str(&format!("/{incarnation}"));
        }
        Some(key)
    }

    /// Where earlier versions kept the entry of incarnation `n >= 2`: `.../<instance_id>%2F<n>`
    /// (unambiguous only while ids could not hold `/`, which they could not then).
    fn legacy_catalog_key(
        &self,
        ctx: &InstanceContext,
        instance_id: &str,
        incarnation: u32,
    ) -> Option<String> {
        let name = ctx.instance_name.as_deref()?;
        (incarnation > 1 && !instance_id.contains('/')).then(|| {
            format!(
                "{}{}",
                self.catalog_prefix(&ctx.organization_guid, &ctx.space_guid, name),
                encode_component(&format!("{instance_id}/{incarnation}"))
            )
        })
    }

    fn decode<T: serde::de::DeserializeOwned>(kv: &KeyValue) -> Result<Versioned<T>, StoreError> {
        serde_json::from_slice(&kv.value)
            .map(|value| Versioned {
                value,
                mod_revision: kv.mod_revision,
            })
            .map_err(|e| StoreError::Corrupt {
                key: kv.key_str(),
                message: e.to_string(),
            })
    }

    async fn read<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<Versioned<T>>, StoreError> {
        match self.etcd.get(key.as_bytes()).await? {
            Some(kv) => Ok(Some(Self::decode(&kv)?)),
            None => Ok(None),
        }
    }

    async fn read_prefix<T: serde::de::DeserializeOwned>(
        &self,
        prefix: &str,
    ) -> Result<Vec<Versioned<T>>, StoreError> {
        self.etcd
            .get_prefix(prefix.as_bytes())
            .await?
            .iter()
            .map(Self::decode)
            .collect()
    }

    /// Reads an instance record.
    pub async fn instance(
        &self,
        id: &str,
    ) -> Result<Option<Versioned<InstanceRecord>>, StoreError> {
        self.read(&self.instance_key(id)).await
    }

    /// The secrets of an instance's current incarnation, once the worker generated them.
    pub async fn instance_secrets(
        &self,
        instance_id: &str,
    ) -> Result<Option<InstanceSecrets>, StoreError> {
        match self
            .etcd
            .get(self.secrets_key(instance_id).as_bytes())
            .await?
        {
            Some(kv) => Ok(Some(self.open_secrets(&kv)?.0)),
            None => Ok(None),
        }
    }

    /// Where a record's sealed value belongs: its key without the store's prefix (encoded
    /// components hold no `/`, so no two records share it).
    fn purpose<'a>(&self, key: &'a str) -> &'a str {
        key.strip_prefix(&self.prefix).unwrap_or(key)
    }

    fn secret_err(key: &str) -> impl FnOnce(SecretsError) -> StoreError + '_ {
        move |reason| StoreError::Secret {
            key: key.to_string(),
            reason,
        }
    }

    /// The secrets of a `secrets/<id>` record, and whether they are sealed with the current
    /// key (false: sealed with an old key, or in clear).
    fn open_secrets(&self, kv: &KeyValue) -> Result<(InstanceSecrets, bool), StoreError> {
        let key = kv.key_str();
        let corrupt = |e: serde_json::Error| StoreError::Corrupt {
            key: key.clone(),
            message: e.to_string(),
        };
        match serde_json::from_slice::<SealedRecord>(&kv.value) {
            Ok(r) => {
                let (plain, current) = self
                    .keyring
                    .open(self.purpose(&key), &r.sealed)
                    .map_err(Self::secret_err(&key))?;
                Ok((serde_json::from_slice(&plain).map_err(corrupt)?, current))
            }
            // Written in clear by an earlier version.
            Err(_) => Ok((serde_json::from_slice(&kv.value).map_err(corrupt)?, false)),
        }
    }

    fn seal_secrets(&self, key: &str, secrets: &InstanceSecrets) -> Vec<u8> {
        let plain = serde_json::to_vec(secrets).expect("JSON");
        serde_json::to_vec(&SealedRecord {
            sealed: self.keyring.seal(self.purpose(key), &plain),
        })
        .expect("JSON")
    }

    /// Stores `secrets` for an instance unless it has some already; returns the stored ones
    /// (so that concurrent or restarted workers all use the first).
    pub async fn put_instance_secrets(
        &self,
        instance_id: &str,
        secrets: &InstanceSecrets,
    ) -> Result<InstanceSecrets, StoreError> {
        let key = self.secrets_key(instance_id);
        let json = self.seal_secrets(&key, secrets);
        match self.etcd.create(key.as_bytes(), &json).await? {
            crate::etcd::CreateOutcome::Created(_) => Ok(secrets.clone()),
            crate::etcd::CreateOutcome::Exists(kv) => Ok(self.open_secrets(&kv)?.0),
        }
    }

    /// Claims (or renews the claim of) `instance_id` for worker `owner` for `ttl`: true when
    /// `owner` holds it now, false when another worker's claim is still valid.
    pub async fn claim(
        &self,
        instance_id: &str,
        kind: ClaimKind,
        owner: &str,
        ttl: std::time::Duration,
    ) -> Result<bool, StoreError> {
        let key = self.claim_key(instance_id, kind);
        for _ in 0..CAS_ATTEMPTS {
            let cur: Option<Versioned<Claim>> = self.read(&key).await?;
            let now = Utc::now();
            if let Some(c) = &cur {
                if c.value.owner != owner && c.value.until.0 > now {
                    return Ok(false);
                }
            }
            let next = Claim {
                owner: owner.to_string(),
                until: Timestamp(
                    now + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::MAX),
                ),
            };
            let json = serde_json::to_vec(&next).expect("JSON");
            if let crate::etcd::CasOutcome::Swapped(_) = self
                .etcd
                .compare_and_swap(key.as_bytes(), &json, cur.map_or(0, |c| c.mod_revision))
                .await?
            {
                return Ok(true);
            }
        }
        Err(StoreError::Contention { key })
    }

    /// Gives up `owner`'s claim of `instance_id` (nothing when another worker holds it).
    pub async fn release_claim(
        &self,
        instance_id: &str,
        kind: ClaimKind,
        owner: &str,
    ) -> Result<(), StoreError> {
        let key = self.claim_key(instance_id, kind);
        if let Some(c) = self.read::<Claim>(&key).await? {
            if c.value.owner == owner {
                self.etcd
                    .delete_if_revision(key.as_bytes(), c.mod_revision)
                    .await?;
            }
        }
        Ok(())
    }

    /// Reads an instance's current operation.
    pub async fn operation(
        &self,
        instance_id: &str,
    ) -> Result<Option<Versioned<OperationRecord>>, StoreError> {
        self.read(&self.operation_key(instance_id)).await
    }

    /// Reads an instance and its operation atomically (one etcd revision).
    pub async fn instance_and_operation(
        &self,
        id: &str,
    ) -> Result<
        (
            Option<Versioned<InstanceRecord>>,
            Option<Versioned<OperationRecord>>,
        ),
        StoreError,
    > {
        let (ik, ok) = (self.instance_key(id), self.operation_key(id));
        let mut r = self
            .etcd
            .get_many(&[ik.as_bytes(), ok.as_bytes()])
            .await?
            .into_iter();
        let inst = r.next().flatten().map(|kv| Self::decode(&kv)).transpose()?;
        let op = r.next().flatten().map(|kv| Self::decode(&kv)).transpose()?;
        Ok((inst, op))
    }

    /// Every instance record (deleted ones included).
    pub async fn instances(&self) -> Result<Vec<Versioned<InstanceRecord>>, StoreError> {
        self.read_prefix(&format!("{}/instances/", self.prefix))
            .await
    }

    /// Every current operation that is in progress: the worker's queue.
    pub async fn operations_in_progress(
        &self,
    ) -> Result<Vec<Versioned<OperationRecord>>, StoreError> {
        let all: Vec<Versioned<OperationRecord>> = self
            .read_prefix(&format!("{}/operations/", self.prefix))
            .await?;
        Ok(all
            .into_iter()
            .filter(|o| o.value.state == OperationState::InProgress)
            .collect())
    }

    /// The instance that owns `port`, if any.
    pub async fn port_owner(&self, port: u16) -> Result<Option<String>, StoreError> {
        Ok(self
            .etcd
            .get(self.port_key(port).as_bytes())
            .await?
            .map(|kv| String::from_utf8_lossy(&kv.value).into_owned()))
    }

    /// Ports in `range` that are reserved right now.
    async fn used_ports(&self, range: &RangeInclusive<u16>) -> Result<Vec<u16>, StoreError> {
        let prefix = format!("{}/ports/", self.prefix);
        Ok(self
            .etcd
            .get_prefix(prefix.as_bytes())
            .await?
            .iter()
            .filter_map(|kv| kv.key_str()[prefix.len()..].parse::<u16>().ok())
            .filter(|p| range.contains(p))
            .collect())
    }

    /// Reserves a free port of `range` for `instance_id` on its own (create-if-absent on
    /// `ports/<port>`; a lost race moves on to the next free port). Returns the port it
    /// already owns, if any. [`Store::create_instance`] does the same inside its transaction.
    pub async fn allocate_port(
        &self,
        instance_id: &str,
        range: RangeInclusive<u16>,
    ) -> Result<u16, StoreError> {
        let mut used = self.used_ports(&range).await?;
        for port in range.clone() {
            if used.contains(&port) {
                continue;
            }
            match self
                .etcd
                .create(self.port_key(port).as_bytes(), instance_id.as_bytes())
                .await?
            {
                crate::etcd::CreateOutcome::Created(_) => return Ok(port),
                crate::etcd::CreateOutcome::Exists(kv) => {
                    if kv.value == instance_id.as_bytes() {
                        return Ok(port);
                    }
                    used.push(port);
                }
            }
        }
        Err(StoreError::NoFreePort {
            min: *range.start(),
            max: *range.end(),
        })
    }

    /// Releases `port` if `instance_id` owns it; true when released.
    pub async fn release_port(&self, port: u16, instance_id: &str) -> Result<bool, StoreError> {
        let key = self.port_key(port);
        let r = self
            .etcd
            .txn(
                &[Compare::value(key.as_bytes(), instance_id.as_bytes())],
                &[TxnOp::delete(key.as_bytes())],
                &[],
            )
            .await?;
        Ok(r.succeeded)
    }

    /// Creates an instance (its `port` is chosen here from `ports`), its provision
    /// operation, its port reservation and its catalog entry in one transaction, unless an
    /// instance with this id exists.
    pub async fn create_instance(
        &self,
        instance: InstanceRecord,
        operation: OperationRecord,
        ports: RangeInclusive<u16>,
    ) -> Result<CreateInstance, StoreError> {
        self.create_incarnation(instance, operation, ports, None)
            .await
    }

    /// Re-provisions a deleted instance: replaces its tombstone `previous` (and its last
    /// operation `previous_operation`, whose history the new operation should carry) with
    /// `instance`, a new incarnation, like [`Store::create_instance`] does for a new id.
    /// [`CreateInstance::Exists`] when either record changed since it was read.
    pub async fn reincarnate_instance(
        &self,
        instance: InstanceRecord,
        operation: OperationRecord,
        ports: RangeInclusive<u16>,
        previous: &Versioned<InstanceRecord>,
        previous_operation: Option<&Versioned<OperationRecord>>,
    ) -> Result<CreateInstance, StoreError> {
        self.create_incarnation(
            instance,
            operation,
            ports,
            Some((
                previous.mod_revision,
                previous_operation.map_or(0, |o| o.mod_revision),
            )),
        )
        .await
    }

    async fn create_incarnation(
        &self,
        mut instance: InstanceRecord,
        operation: OperationRecord,
        ports: RangeInclusive<u16>,
        previous: Option<(i64, i64)>,
    ) -> Result<CreateInstance, StoreError> {
        let ik = self.instance_key(&instance.id);
        let ok = self.operation_key(&instance.id);
        let op_json = serde_json::to_vec(&operation).expect("JSON");
        let catalog = self.catalog_key(&instance.context, &instance.id, instance.incarnation);
        let entry = CatalogEntry {
            instance_id: instance.id.clone(),
            deleted: false,
            created_at: instance.created_at,
            deleted_at: None,
            incarnation: instance.incarnation,
            repository: instance.repository.clone(),
        };
        let mut used = self.used_ports(&ports).await?;
        for port in ports.clone() {
            if used.contains(&port) {
                continue;
            }
            instance.port = port;
            let pk = self.port_key(port);
            let mut ops = vec![
                TxnOp::put(ik.as_bytes(), serde_json::to_vec(&instance).expect("JSON")),
                TxnOp::put(ok.as_bytes(), op_json.clone()),
                TxnOp::put(pk.as_bytes(), instance.id.as_bytes()),
            ];
            if let Some(ck) = &catalog {
                ops.push(TxnOp::put(
                    ck.as_bytes(),
                    serde_json::to_vec(&entry).expect("JSON"),
                ));
            }
            let mut compares = vec![Compare::absent(pk.as_bytes())];
            match previous {
                None => compares.push(Compare::absent(ik.as_bytes())),
                Some((irev, orev)) => {
                    compares.push(Compare::mod_revision(ik.as_bytes(), irev));
                    compares.push(Compare::mod_revision(ok.as_bytes(), orev));
                }
            }
            let r = self
                .etcd
                .txn(
                    &compares,
                    &ops,
                    &[TxnOp::get(ik.as_bytes()), TxnOp::get(ok.as_bytes())],
                )
                .await?;
            if r.succeeded {
                info!(instance = %instance.id, port, operation = %operation.id,
                      incarnation = instance.incarnation, "instance recorded");
                return Ok(CreateInstance::Created {
                    instance: Box::new(Versioned {
                        value: instance,
                        mod_revision: r.revision,
                    }),
                    operation: Box::new(Versioned {
                        value: operation,
                        mod_revision: r.revision,
                    }),
                });
            }
            let rev = |i: usize| match r.responses.get(i) {
                Some(TxnOpResponse::Get(Some(kv))) => kv.mod_revision,
                _ => 0,
            };
            let changed = match previous {
                None => rev(0) != 0,
                Some((irev, orev)) => rev(0) != irev || rev(1) != orev,
            };
            if changed {
                return Ok(CreateInstance::Exists);
            }
            debug!(port, "port taken concurrently; trying the next one");
            used.push(port);
        }
        Err(StoreError::NoFreePort {
            min: *ports.start(),
            max: *ports.end(),
        })
    }

    /// Replaces an instance and its operation together if neither changed since they were
    /// read (`instance.mod_revision`, `operation.mod_revision`; `None`: the operation key
    /// must not exist). False when either changed: re-read and decide again.
    pub async fn replace(
        &self,
        instance: &Versioned<InstanceRecord>,
        new_instance: &InstanceRecord,
        operation: Option<&Versioned<OperationRecord>>,
        new_operation: &OperationRecord,
    ) -> Result<bool, StoreError> {
        self.replace_with(
            instance,
            new_instance,
            operation,
            new_operation,
            Vec::new(),
            Vec::new(),
        )
        .await
        .map(|r| r.is_some())
    }

    /// [`Store::replace`] with extra comparisons and operations in the same transaction;
    /// the new revision when it succeeded.
    async fn replace_with(
        &self,
        instance: &Versioned<InstanceRecord>,
        new_instance: &InstanceRecord,
        operation: Option<&Versioned<OperationRecord>>,
        new_operation: &OperationRecord,
        mut compares: Vec<Compare>,
        mut ops: Vec<TxnOp>,
    ) -> Result<Option<i64>, StoreError> {
        let ik = self.instance_key(&new_instance.id);
        let ok = self.operation_key(&new_instance.id);
        compares.push(Compare::mod_revision(ik.as_bytes(), instance.mod_revision));
        compares.push(Compare::mod_revision(
            ok.as_bytes(),
            operation.map_or(0, |o| o.mod_revision),
        ));
        ops.push(TxnOp::put(
            ik.as_bytes(),
            serde_json::to_vec(new_instance).expect("JSON"),
        ));
        ops.push(TxnOp::put(
            ok.as_bytes(),
            serde_json::to_vec(new_operation).expect("JSON"),
        ));
        let r = self.etcd.txn(&compares, &ops, &[]).await?;
        Ok(r.succeeded.then_some(r.revision))
    }

    /// Applies `f` to the instance and its operation `operation_id` and stores both, retrying
    /// from a fresh read when another writer got there first. Fails with
    /// [`StoreError::Superseded`] when `operation_id` is no longer current, and with
    /// [`StoreError::Finished`] when it is no longer in progress. The general tool of the
    /// worker; [`Store::set_progress`] and [`Store::finish_operation`] are built on it.
    pub async fn transition<F>(
        &self,
        instance_id: &str,
        operation_id: &str,
        mut f: F,
    ) -> Result<(InstanceRecord, OperationRecord), StoreError>
    where
        F: FnMut(&mut InstanceRecord, &mut OperationRecord) -> Result<(), StoreError>,
    {
        for _ in 0..CAS_ATTEMPTS {
            let (inst, op) = self.instance_and_operation(instance_id).await?;
            let inst = inst.ok_or_else(|| StoreError::NotFound {
                what: "instance",
                id: instance_id.to_string(),
            })?;
            let op = op.ok_or_else(|| StoreError::NotFound {
                what: "operation",
                id: instance_id.to_string(),
            })?;
            check_current(&op.value, operation_id)?;
            let (mut ni, mut no) = (inst.value.clone(), op.value.clone());
            f(&mut ni, &mut no)?;
            let now = Timestamp::now();
            ni.updated_at = now;
            no.updated_at = now;
            if self.replace(&inst, &ni, Some(&op), &no).await? {
                return Ok((ni, no));
            }
        }
        Err(StoreError::Contention {
            key: self.operation_key(instance_id),
        })
    }

    /// Sets the user-facing description of operation `operation_id` (still in progress).
    pub async fn set_progress(
        &self,
        instance_id: &str,
        operation_id: &str,
        description: &str,
    ) -> Result<(), StoreError> {
        self.transition(instance_id, operation_id, |_, op| {
            op.description = description.to_string();
            Ok(())
        })
        .await
        .map(|_| ())
    }

    /// Ends operation `operation_id` and moves the instance to its resulting state:
    ///
    /// * provision: `ready` on success, `failed` otherwise;
    /// * update: on success `ready` with the operation's plan, parameters and node count;
    ///   on failure `ready` with the old ones (`failed` if `instance_usable == Some(false)`);
    /// * deprovision: on success `deleted` (tombstone), its port released, its bindings
    ///   removed and its catalog entry marked deleted, all in the same transaction; on
    ///   failure `failed`.
    pub async fn finish_operation(
        &self,
        instance_id: &str,
        operation_id: &str,
        outcome: Outcome,
    ) -> Result<InstanceRecord, StoreError> {
        for _ in 0..CAS_ATTEMPTS {
            let (inst, op) = self.instance_and_operation(instance_id).await?;
            let inst = inst.ok_or_else(|| StoreError::NotFound {
                what: "instance",
                id: instance_id.to_string(),
            })?;
            let op = op.ok_or_else(|| StoreError::NotFound {
                what: "operation",
                id: instance_id.to_string(),
            })?;
            check_current(&op.value, operation_id)?;
            let now = Timestamp::now();
            let (mut ni, mut no) = (inst.value.clone(), op.value.clone());
            no.state = if outcome.succeeded {
                OperationState::Succeeded
            } else {
                OperationState::Failed
            };
            no.description = outcome.description.clone();
            no.instance_usable = outcome.instance_usable;
            no.updated_at = now;
            no.finished_at = Some(now);
            ni.updated_at = now;
            let (mut compares, mut ops) = (Vec::new(), Vec::new());
            ni.state = match (no.kind, outcome.succeeded) {
                (OperationKind::Provision, true) => InstanceState::Ready,
                (OperationKind::Provision, false) => InstanceState::Failed,
                (OperationKind::Update, true) => {
                    ni.plan_id = no.request.plan_id.clone();
                    ni.parameters = no.request.parameters;
                    ni.node_count = no.request.node_count;
                    InstanceState::Ready
                }
                (OperationKind::Update, false) => {
                    if outcome.instance_usable == Some(false) {
                        InstanceState::Failed
                    } else {
                        InstanceState::Ready
                    }
                }
                (OperationKind::Deprovision, false) => InstanceState::Failed,
                (OperationKind::Deprovision, true) => {
                    ni.deleted_at = Some(now);
                    // Release the port if this instance still owns it (it should).
                    let pk = self.port_key(ni.port);
                    if let Some(kv) = self.etcd.get(pk.as_bytes()).await? {
                        if kv.value == instance_id.as_bytes() {
                            compares.push(Compare::mod_revision(pk.as_bytes(), kv.mod_revision));
                            ops.push(TxnOp::delete(pk.as_bytes()));
                        }
                    }
                    ops.push(TxnOp::DeletePrefix(
                        self.bindings_prefix(instance_id).into_bytes(),
                    ));
                    ops.push(TxnOp::delete(self.secrets_key(instance_id).as_bytes()));
                    if let Some(mut ck) = self.catalog_key(&ni.context, instance_id, ni.incarnation)
                    {
                        let mut current: Option<Versioned<CatalogEntry>> = self.read(&ck).await?;
                        if current.is_none() {
                            if let Some(lk) =
                                self.legacy_catalog_key(&ni.context, instance_id, ni.incarnation)
                            {
                                if let Some(entry) = self.read(&lk).await? {
                                    (ck, current) = (lk, Some(entry));
                                }
                            }
                        }
                        let mut entry = current.as_ref().map_or_else(
                            || CatalogEntry {
                                instance_id: instance_id.to_string(),
                                deleted: true,
                                created_at: ni.created_at,
                                deleted_at: None,
                                incarnation: ni.incarnation,
                                repository: ni.repository.clone(),
                            },
                            |c| c.value.clone(),
                        );
                        entry.deleted = true;
                        entry.deleted_at = Some(now);
                        compares.push(Compare::mod_revision(
                            ck.as_bytes(),
                            current.map_or(0, |c| c.mod_revision),
                        ));
                        ops.push(TxnOp::put(
                            ck.as_bytes(),
                            serde_json::to_vec(&entry).expect("JSON"),
                        ));
                    }
                    InstanceState::Deleted
                }
            };
            if self
                .replace_with(&inst, &ni, Some(&op), &no, compares, ops)
                .await?
                .is_some()
            {
                info!(instance = instance_id, operation = operation_id, kind = ?no.kind,
                      state = %no.state, "operation finished");
                return Ok(ni);
            }
        }
        Err(StoreError::Contention {
            key: self.operation_key(instance_id),
        })
    }

    /// Applies `f` to an instance record and stores it by compare-and-swap, retrying on
    /// conflicts (e.g. to record node placement).
    pub async fn update_instance<F>(&self, id: &str, mut f: F) -> Result<InstanceRecord, StoreError>
    where
        F: FnMut(&mut InstanceRecord) -> Result<(), StoreError>,
    {
        let key = self.instance_key(id);
        for _ in 0..CAS_ATTEMPTS {
            let cur: Versioned<InstanceRecord> =
                self.read(&key).await?.ok_or_else(|| StoreError::NotFound {
                    what: "instance",
                    id: id.to_string(),
                })?;
            let mut next = cur.value.clone();
            f(&mut next)?;
            next.updated_at = Timestamp::now();
            let json = serde_json::to_vec(&next).expect("JSON");
            if let crate::etcd::CasOutcome::Swapped(_) = self
                .etcd
                .compare_and_swap(key.as_bytes(), &json, cur.mod_revision)
                .await?
            {
                return Ok(next);
            }
        }
        Err(StoreError::Contention { key })
    }

    /// Instances (deleted ones included) that had `name` in `org`/`space`, oldest first.
    pub async fn find_by_name(
        &self,
        org: &str,
        space: &str,
        name: &str,
    ) -> Result<Vec<CatalogEntry>, StoreError> {
        let mut v: Vec<CatalogEntry> = self
            .read_prefix(&self.catalog_prefix(org, space, name))
            .await?
            .into_iter()
            .map(|e: Versioned<CatalogEntry>| e.value)
            .collect();
        v.sort_by_key(|e| e.created_at);
        Ok(v)
    }

    /// Reads a binding.
    pub async fn binding(
        &self,
        instance_id: &str,
        binding_id: &str,
    ) -> Result<Option<Versioned<BindingRecord>>, StoreError> {
        match self
            .etcd
            .get(self.binding_key(instance_id, binding_id).as_bytes())
            .await?
        {
            Some(kv) => Ok(Some(self.open_binding(&kv)?.0)),
            None => Ok(None),
        }
    }

    /// The bindings of an instance.
    pub async fn bindings(
        &self,
        instance_id: &str,
    ) -> Result<Vec<Versioned<BindingRecord>>, StoreError> {
        self.etcd
            .get_prefix(self.bindings_prefix(instance_id).as_bytes())
            .await?
            .iter()
            .map(|kv| Ok(self.open_binding(kv)?.0))
            .collect()
    }

    /// A binding record as stored: its credentials sealed (`sealed_credentials`) in place of
    /// `credentials`.
    fn seal_binding(&self, key: &str, record: &BindingRecord) -> Vec<u8> {
        let mut v = serde_json::to_value(record).expect("JSON");
        let m = v.as_object_mut().expect("an object");
        if let Some(c) = m.remove("credentials") {
            let plain = serde_json::to_vec(&c).expect("JSON");
            m.insert(
                "sealed_credentials".into(),
                self.keyring.seal(self.purpose(key), &plain).into(),
            );
        }
        serde_json::to_vec(&v).expect("JSON")
    }

    /// A stored binding record, its credentials opened; and whether they are sealed with the
    /// current key (or there are none).
    fn open_binding(&self, kv: &KeyValue) -> Result<(Versioned<BindingRecord>, bool), StoreError> {
        let key = kv.key_str();
        let corrupt = |message: String| StoreError::Corrupt {
            key: key.clone(),
            message,
        };
        let mut v: serde_json::Value =
            serde_json::from_slice(&kv.value).map_err(|e| corrupt(e.to_string()))?;
        let m = v
            .as_object_mut()
            .ok_or_else(|| corrupt("not an object".into()))?;
        let mut current = !m.contains_key("credentials");
        if let Some(sealed) = m.remove("sealed_credentials") {
            let sealed = sealed
                .as_str()
                .ok_or_else(|| corrupt("sealed_credentials is not a string".into()))?;
            let (plain, cur) = self
                .keyring
                .open(self.purpose(&key), sealed)
                .map_err(Self::secret_err(&key))?;
            current = cur;
            let c: serde_json::Value =
                serde_json::from_slice(&plain).map_err(|e| corrupt(e.to_string()))?;
            m.insert("credentials".into(), c);
        }
        let value = serde_json::from_value(v).map_err(|e| corrupt(e.to_string()))?;
        Ok((
            Versioned {
                value,
                mod_revision: kv.mod_revision,
            },
            current,
        ))
    }

    /// Seals again, with the current key, every secret and binding credentials sealed with an
    /// old key or written in clear (by compare-and-swap: a record changed meanwhile is read
    /// again). Fails on a value no key of the keyring opens.
    pub async fn reseal_all(&self) -> Result<Resealed, StoreError> {
        let mut done = Resealed::default();
        for (prefix, binding) in [
            (format!("{}/secrets/", self.prefix), false),
            (format!("{}/bindings/", self.prefix), true),
        ] {
            for kv in self.etcd.get_prefix(prefix.as_bytes()).await? {
                let mut kv = kv;
                for attempt in 0..CAS_ATTEMPTS {
                    let key = kv.key_str();
                    let clear = if binding {
                        serde_json::from_slice::<serde_json::Value>(&kv.value)
                            .is_ok_and(|v| v.get("credentials").is_some())
                    } else {
                        serde_json::from_slice::<SealedRecord>(&kv.value).is_err()
                    };
                    let (value, current) = if binding {
                        let (b, current) = self.open_binding(&kv)?;
                        (self.seal_binding(&key, &b.value), current)
                    } else {
                        let (s, current) = self.open_secrets(&kv)?;
                        (self.seal_secrets(&key, &s), current)
                    };
                    if current {
                        done.current += 1;
                        break;
                    }
                    match self
                        .etcd
                        .compare_and_swap(kv.key.as_slice(), &value, kv.mod_revision)
                        .await?
                    {
                        crate::etcd::CasOutcome::Swapped(_) => {
                            if clear {
                                done.were_clear += 1;
                            } else {
                                done.rekeyed += 1;
                            }
                            break;
                        }
                        crate::etcd::CasOutcome::Conflict(Some(now))
                            if attempt + 1 < CAS_ATTEMPTS =>
                        {
                            kv = now;
                        }
                        // Deleted meanwhile: nothing left to seal.
                        crate::etcd::CasOutcome::Conflict(None) => break,
                        crate::etcd::CasOutcome::Conflict(Some(_)) => {
                            return Err(StoreError::Contention { key })
                        }
                    }
                }
            }
        }
        info!(
            rekeyed = done.rekeyed,
            were_clear = done.were_clear,
            key = self.keyring.current_id(),
            "secrets sealed with the current key"
        );
        Ok(done)
    }

    /// Writes a binding if its key's mod revision is still `expected` (0: must not exist);
    /// the new revision, or `None` when another writer changed it first.
    pub async fn put_binding(
        &self,
        record: &BindingRecord,
        expected: i64,
    ) -> Result<Option<i64>, StoreError> {
        let key = self.binding_key(&record.instance_id, &record.binding_id);
        let json = self.seal_binding(&key, record);
        Ok(
            match self
                .etcd
                .compare_and_swap(key.as_bytes(), &json, expected)
                .await?
            {
                crate::etcd::CasOutcome::Swapped(rev) => Some(rev),
                crate::etcd::CasOutcome::Conflict(_) => None,
            },
        )
    }

    /// Deletes a binding if its mod revision is still `expected`; true when deleted.
    pub async fn delete_binding(
        &self,
        instance_id: &str,
        binding_id: &str,
        expected: i64,
    ) -> Result<bool, StoreError> {
        Ok(self
            .etcd
            .delete_if_revision(
                self.binding_key(instance_id, binding_id).as_bytes(),
                expected,
            )
            .await?)
    }
}

fn check_current(op: &OperationRecord, operation_id: &str) -> Result<(), StoreError> {
    if op.id != operation_id {
        return Err(StoreError::Superseded {
            instance: op.instance_id.clone(),
            operation: operation_id.to_string(),
            current: op.id.clone(),
        });
    }
    if op.state != OperationState::InProgress {
        return Err(StoreError::Finished {
            instance: op.instance_id.clone(),
            operation: operation_id.to_string(),
            state: op.state,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_etcd::etcd;
    use std::time::Duration;

    fn store() -> Store {
        Store::new(
            etcd().client(),
            etcd().fresh_prefix(),
            Arc::new(Keyring::from_base64(&Keyring::generate_key()).unwrap()),
        )
    }

    fn instance(id: &str, name: Option<&str>) -> (InstanceRecord, OperationRecord) {
        let now = Timestamp::now();
        let req = OperationRequest {
            plan_id: "plan".into(),
            parameters: Parameters::default(),
            node_count: 1,
        };
        (
            InstanceRecord {
                id: id.into(),
                service_id: "svc".into(),
                plan_id: "plan".into(),
                parameters: Parameters::default(),
                node_count: 1,
                context: InstanceContext {
                    organization_guid: "org".into(),
                    space_guid: "space".into(),
                    instance_name: name.map(str::to_string),
                    platform: None,
                    raw: serde_json::Value::Null,
                },
                port: 0,
                path_name: None,
                repository: format!("file:///r/{id}"),
                incarnation: 1,
                previous_repositories: vec![],
                last_backup_at: None,
                state: InstanceState::Provisioning,
                nodes: vec![],
                created_at: now,
                updated_at: now,
                deleted_at: None,
            },
            OperationRecord::new(id, OperationKind::Provision, req, "accepted", None),
        )
    }

    #[tokio::test]
    async fn concurrent_port_allocations_never_share_a_port() {
        let s = store();
        // Two instances race for a range of one port: exactly one wins it.
        let (a, b) = tokio::join!(
            s.allocate_port("inst-a", 31000..=31000),
            s.allocate_port("inst-b", 31000..=31000)
        );
        let winners = [&a, &b].iter().filter(|r| r.is_ok()).count();
        assert_eq!(winners, 1, "{a:?} {b:?}");
        let loser = if a.is_ok() { b } else { a };
        assert!(matches!(loser, Err(StoreError::NoFreePort { .. })));
        // Many instances race for a larger range: all get distinct ports.
        let tasks: Vec<_> = (0..6)
            .map(|i| {
                let s = s.clone();
                tokio::spawn(async move { s.allocate_port(&format!("i{i}"), 31001..=31010).await })
            })
            .collect();
        let mut ports = Vec::new();
        for t in tasks {
            ports.push(t.await.unwrap().unwrap());
        }
        ports.sort();
        ports.dedup();
        assert_eq!(ports.len(), 6);
        // Allocation is idempotent per instance, and release needs the owner.
        let p = ports[0];
        let owner = s.port_owner(p).await.unwrap().unwrap();
        assert!(!s.release_port(p, "someone-else").await.unwrap());
        assert!(s.release_port(p, &owner).await.unwrap());
        assert_eq!(s.port_owner(p).await.unwrap(), None);
    }

    #[tokio::test]
    async fn concurrent_instance_creations_get_distinct_ports_and_one_id_wins_once() {
        let s = store();
        let (i1, o1) = instance("one", Some("db"));
        let (i2, o2) = instance("two", Some("db"));
        let (r1, r2) = tokio::join!(
            s.create_instance(i1.clone(), o1.clone(), 32000..=32001),
            s.create_instance(i2, o2, 32000..=32001)
        );
        let p = |r: &CreateInstance| match r {
            CreateInstance::Created { instance, .. } => instance.value.port,
            CreateInstance::Exists => panic!("exists"),
        };
        let (p1, p2) = (p(&r1.unwrap()), p(&r2.unwrap()));
        assert_ne!(p1, p2);
        // The same id again: Exists, nothing changed.
        let again = s.create_instance(i1, o1, 32000..=32005).await.unwrap();
        assert_eq!(again, CreateInstance::Exists);
        assert_eq!(s.instance("one").await.unwrap().unwrap().value.port, p1);
        // A full range.
        let (i3, o3) = instance("three", None);
        assert!(matches!(
            s.create_instance(i3, o3, 32000..=32001).await,
            Err(StoreError::NoFreePort { .. })
        ));
        assert_eq!(s.instance("three").await.unwrap(), None);
        let found = s.find_by_name("org", "space", "db").await.unwrap();
        assert_eq!(found.len(), 2);
        assert!(found.iter().all(|e| !e.deleted));
    }

    #[tokio::test]
    async fn cas_refuses_stale_writes_and_the_worker_lifecycle() {
        let s = store();
        let (i, o) = instance("life", Some("my db/1"));
        let op_id = o.id.clone();
        let CreateInstance::Created {
            instance: vi,
            operation: vo,
        } = s.create_instance(i, o, 33000..=33010).await.unwrap()
        else {
            panic!()
        };
        assert_eq!(
            s.operations_in_progress()
                .await
                .unwrap()
                .iter()
                .map(|o| o.value.id.clone())
                .collect::<Vec<_>>(),
            vec![op_id.clone()]
        );
        s.set_progress("life", &op_id, "placing nodes")
            .await
            .unwrap();
        // The versions read before set_progress are stale now.
        let mut stale = vi.value.clone();
        stale.state = InstanceState::Ready;
        assert!(!s.replace(&vi, &stale, Some(&vo), &vo.value).await.unwrap());
        assert!(matches!(
            s.set_progress("life", "other-op", "x").await,
            Err(StoreError::Superseded { .. })
        ));
        let inst = s
            .finish_operation(
                "life",
                &op_id,
                Outcome {
                    succeeded: true,
                    description: "ready".into(),
                    instance_usable: None,
                },
            )
            .await
            .unwrap();
        assert_eq!(inst.state, InstanceState::Ready);
        assert!(s.operations_in_progress().await.unwrap().is_empty());
        assert!(matches!(
            s.set_progress("life", &op_id, "x").await,
            Err(StoreError::Finished { .. })
        ));
        // Deprovision: port released, catalog entry kept and marked deleted, tombstone.
        let (vi, vo) = s.instance_and_operation("life").await.unwrap();
        let (vi, vo) = (vi.unwrap(), vo.unwrap());
        let mut ni = vi.value.clone();
        ni.state = InstanceState::Deprovisioning;
        let dop = OperationRecord::new(
            "life",
            OperationKind::Deprovision,
            vo.value.request.clone(),
            "deprovisioning",
            Some(&vo.value),
        );
        assert!(s.replace(&vi, &ni, Some(&vo), &dop).await.unwrap());
        let b = BindingRecord {
            instance_id: "life".into(),
            binding_id: "b1".into(),
            service_id: "svc".into(),
            plan_id: "plan".into(),
            request: serde_json::Value::Null,
            state: BindingState::Created,
            credentials: None,
            created_at: Timestamp::now(),
            updated_at: Timestamp::now(),
        };
        assert!(s.put_binding(&b, 0).await.unwrap().is_some());
        assert!(s.put_binding(&b, 0).await.unwrap().is_none());
        let port = ni.port;
        let done = s
            .finish_operation(
                "life",
                &dop.id,
                Outcome {
                    succeeded: true,
                    description: "deleted".into(),
                    instance_usable: None,
                },
            )
            .await
            .unwrap();
        assert_eq!(done.state, InstanceState::Deleted);
        assert_eq!(s.port_owner(port).await.unwrap(), None);
        assert!(s.bindings("life").await.unwrap().is_empty());
        let found = s.find_by_name("org", "space", "my db/1").await.unwrap();
        assert_eq!(found.len(), 1);
        assert!(found[0].deleted && found[0].deleted_at.is_some());
        let op = s.operation("life").await.unwrap().unwrap().value;
        assert_eq!(op.find(&op_id).unwrap().state, OperationState::Succeeded);
        assert_eq!(op.history.len(), 1);
    }

    #[tokio::test]
    async fn catalog_keys_of_ids_and_incarnations_never_collide() {
        let s = store();
        // The first incarnation of `x/2` and the second of `x`, with one name.
        let (a, ao) = instance("x/2", Some("db"));
        let (mut b, bo) = instance("x", Some("db"));
        b.incarnation = 2;
        s.create_instance(a, ao, 35000..=35010).await.unwrap();
        s.create_instance(b, bo, 35000..=35010).await.unwrap();
        let mut found: Vec<(String, u32)> = s
            .find_by_name("org", "space", "db")
            .await
            .unwrap()
            .into_iter()
            .map(|e| (e.instance_id, e.incarnation))
            .collect();
        found.sort();
        assert_eq!(found, [("x".to_string(), 2), ("x/2".to_string(), 1)]);
    }

    #[tokio::test]
    async fn concurrent_transitions_both_apply() {
        let s = store();
        let (i, o) = instance("race", None);
        let op_id = o.id.clone();
        s.create_instance(i, o, 34000..=34000).await.unwrap();
        // Two writers append to the node list concurrently: CAS retries keep both changes.
        let (a, b) = tokio::join!(
            s.update_instance("race", |r| {
                r.nodes.push(NodePlacement {
                    name: "n1".into(),
                    cell: "a".into(),
                    zone: "za".into(),
                    pg_port: 0,
                    api_port: 0,
                });
                Ok(())
            }),
            s.transition("race", &op_id, |r, op| {
                r.nodes.push(NodePlacement {
                    name: "n2".into(),
                    cell: "b".into(),
                    zone: "zb".into(),
                    pg_port: 0,
                    api_port: 0,
                });
                op.description = "two nodes".into();
                Ok(())
            })
        );
        a.unwrap();
        b.unwrap();
        let r = s.instance("race").await.unwrap().unwrap().value;
        let mut names: Vec<_> = r.nodes.iter().map(|n| n.name.clone()).collect();
        names.sort();
        assert_eq!(names, ["n1", "n2"]);
    }

    #[tokio::test]
    async fn claims_exclude_other_workers_until_they_lapse() {
        let s = store();
        let ttl = Duration::from_millis(800);
        let ops = ClaimKind::Operations;
        assert!(s.claim("i", ops, "w1", ttl).await.unwrap());
        assert!(s.claim("i", ops, "w1", ttl).await.unwrap(), "renewal");
        assert!(!s.claim("i", ops, "w2", ttl).await.unwrap());
        // The backups of "i", and the operations of an instance "i/backup", are apart.
        assert!(s.claim("i", ClaimKind::Backups, "w2", ttl).await.unwrap());
        assert!(s.claim("i/backup", ops, "w3", ttl).await.unwrap());
        // Releasing someone else's claim does nothing; a lapsed claim can be taken.
        s.release_claim("i", ops, "w2").await.unwrap();
        assert!(!s.claim("i", ops, "w2", ttl).await.unwrap());
        tokio::time::sleep(Duration::from_millis(900)).await;
        assert!(s.claim("i", ops, "w2", ttl).await.unwrap());
        s.release_claim("i", ops, "w2").await.unwrap();
        assert!(s.claim("i", ops, "w1", ttl).await.unwrap());
    }

    #[tokio::test]
    async fn secrets_are_created_once_and_removed_with_the_instance() {
        let s = store();
        let first = s
            .put_instance_secrets("sec", &InstanceSecrets::generate())
            .await
            .unwrap();
        let again = s
            .put_instance_secrets("sec", &InstanceSecrets::generate())
            .await
            .unwrap();
        assert_eq!(first, again);
        assert_eq!(
            s.instance_secrets("sec").await.unwrap(),
            Some(first.clone())
        );
        let dbg = format!("{first:?}");
        assert!(!dbg.contains(first.superuser_password.expose()), "{dbg}");
    }

    #[tokio::test]
    async fn secrets_are_sealed_at_rest_bound_to_their_record_and_rotated() {
        let (k1, k2) = (Keyring::generate_key(), Keyring::generate_key());
        let prefix = etcd().fresh_prefix();
        let ring = |k: &str| Arc::new(Keyring::from_base64(k).unwrap());
        let s1 = Store::new(etcd().client(), &prefix, ring(&k1));
        let sec = s1
            .put_instance_secrets("a/b", &InstanceSecrets::generate())
            .await
            .unwrap();
        let now = Timestamp::now();
        let binding = BindingRecord {
            instance_id: "a/b".into(),
            binding_id: "b1".into(),
            service_id: "svc".into(),
            plan_id: "plan".into(),
            request: serde_json::Value::Null,
            state: BindingState::Created,
            credentials: Some(Credentials {
                uri: "postgres://b_b1:binding-pw-1234@h:1/app".into(),
                jdbc_url: "jdbc:postgresql://h:1/app?password=binding-pw-1234".into(),
                hostname: "h".into(),
                port: 1,
                name: "app".into(),
                username: "b_b1".into(),
                password: "binding-pw-1234".into(),
            }),
            created_at: now,
            updated_at: now,
        };
        s1.put_binding(&binding, 0).await.unwrap().unwrap();
        let raw = |prefix: String| async move {
            etcd()
                .client()
                .get_prefix(prefix.as_bytes())
                .await
                .unwrap()
                .into_iter()
                .map(|kv| (kv.key_str(), String::from_utf8(kv.value).unwrap()))
                .collect::<Vec<_>>()
        };
        let clear = [
            sec.superuser_password.expose(),
            sec.replication_password.expose(),
            "binding-pw-1234",
        ];
        let stored = raw(format!("{prefix}/")).await;
        assert_eq!(stored.len(), 2, "{stored:?}");
        for (k, v) in &stored {
            for c in clear {
                assert!(!v.contains(c), "{k} holds a password in clear: {v}");
            }
        }
        assert_eq!(s1.instance_secrets("a/b").await.unwrap(), Some(sec.clone()));
        let b = s1.binding("a/b", "b1").await.unwrap().unwrap().value;
        assert_eq!(b.credentials, binding.credentials);
        assert_eq!(
            s1.bindings("a/b").await.unwrap()[0].value.credentials,
            binding.credentials
        );

        // A sealed value copied into another instance's record does not open there.
        let (_, sealed) = stored
            .iter()
            .find(|(k, _)| k.contains("/secrets/"))
            .unwrap()
            .clone();
        let c = etcd().client();
        c.put(s1.secrets_key("c").as_bytes(), sealed.as_bytes())
            .await
            .unwrap();
        let e = s1.instance_secrets("c").await.unwrap_err();
        assert!(
            matches!(
                e,
                StoreError::Secret {
                    reason: SecretsError::Tampered(_),
                    ..
                }
            ),
            "{e:?}"
        );
        c.delete(s1.secrets_key("c").as_bytes()).await.unwrap();
        // Written in clear by an earlier version: still read.
        let legacy = InstanceSecrets::generate();
        c.put(
            s1.secrets_key("legacy").as_bytes(),
            &serde_json::to_vec(&legacy).unwrap(),
        )
        .await
        .unwrap();
        assert_eq!(
            s1.instance_secrets("legacy").await.unwrap(),
            Some(legacy.clone())
        );

        // Rotation: the new key seals, the old one still opens; re-sealing leaves nothing
        // to the old key (nor in clear).
        let s2 = Store::new(
            etcd().client(),
            &prefix,
            Arc::new(Keyring::from_base64(&k2).unwrap().with_old(&k1).unwrap()),
        );
        assert_eq!(s2.instance_secrets("a/b").await.unwrap(), Some(sec.clone()));
        let done = s2.reseal_all().await.unwrap();
        assert_eq!(
            done,
            Resealed {
                rekeyed: 2,
                were_clear: 1,
                current: 0
            }
        );
        assert_eq!(s2.reseal_all().await.unwrap().current, 3);
        let s3 = Store::new(etcd().client(), &prefix, ring(&k2));
        assert_eq!(s3.instance_secrets("a/b").await.unwrap(), Some(sec.clone()));
        assert_eq!(
            s3.instance_secrets("legacy").await.unwrap(),
            Some(legacy.clone())
        );
        assert_eq!(
            s3.binding("a/b", "b1")
                .await
                .unwrap()
                .unwrap()
                .value
                .credentials,
            binding.credentials
        );
        let k2_id = Keyring::from_base64(&k2).unwrap().current_id().to_string();
        for (k, v) in raw(format!("{prefix}/")).await {
            assert!(v.contains(&format!("wa1:{k2_id}:")), "{k}: {v}");
            assert!(!v.contains(legacy.superuser_password.expose()), "{k}: {v}");
        }
        // The old key alone opens nothing any more.
        let e = Store::new(etcd().client(), &prefix, ring(&k1))
            .instance_secrets("a/b")
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                StoreError::Secret {
                    reason: SecretsError::UnknownKey(_),
                    ..
                }
            ),
            "{e:?}"
        );
    }

    #[test]
    fn key_components_are_encoded() {
        assert_eq!(encode_component("a-b_c.d~e9"), "a-b_c.d~e9");
        assert_eq!(encode_component("my db/1"), "my%20db%2F1");
        let id = new_id();
        assert_eq!(id.len(), 32);
        assert_ne!(id, new_id());
    }
}
