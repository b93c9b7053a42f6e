//! `walarchive-broker disaster-recovery`: the broker's records back from a state snapshot,
//! then every instance re-created from its own archive (design §4.2, `--dry-run`).
//!
//! Why: when etcd and the cells are lost, the archives survive, and a snapshot of the
//! broker's records (`crate::statebackup`) says whose they are, on which router port each
//! instance was reached and with which credentials. Restoring those records is what lets the
//! platform's bindings work again once each instance is re-created from its own archive.
//!
//! What it does, in order:
//! 1. Refuses (nothing written) unless etcd holds no key under the prefix (Patroni's namespace
//!    is under it by default, and then counts: live clusters' keys mean it is no disaster)
//!    and every configured cell answers with no node; and unless the snapshot opens and every
//!    record in it decodes (`StateBackup::check`).
//! 2. Writes the records back, instance by instance, in one create-only transaction each
//!    ([`Store::put_if_all_absent`]): bindings, ports, catalog entries and secrets byte for
//!    byte (sealed values stay sealed), the instance record with its nodes cleared (they
//!    were on the lost cells; the worker places new ones), and for a live instance (`ready`,
//!    `updating`) a new provision operation restoring it from its own repository
//!    ([`RestoreKind::Recover`]). An operation in progress (a provision, a deprovision)
//!    keeps its id, since the platform polls it, and starts again.
//!
//! 3. Runs a worker in-process ([`Recovery::wait`], in `recover/wait.rs`) until every
//!    operation it wrote has finished: the worker's restore pass re-creates each instance
//!    from its own archive (same scope, router port and binding credentials), then reports
//!    what each instance recovered to.

use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::cell::CellClient;
use crate::config::BrokerConfig;
use crate::state::{
    encode_component, CatalogEntry, InstanceRecord, InstanceState, OperationKind, OperationRecord,
    OperationRequest, OperationState, RestoreKind, RestoreRecord, SourceRef, Store, StoreError,
    Timestamp, RESTORE_TXN_KEYS,
};
use crate::statebackup::{Snapshot, StateBackup, StateBackupError};

/// The description of the provision operation that recovers a live instance.
pub const RECOVERING: &str = "Recovering after a disaster; waiting for the worker.";
/// The description of a provision that was in progress in the snapshot.
pub const PROVISION_AGAIN: &str = "Provisioning again after a disaster; waiting for the worker.";
/// The description of a deprovision that was in progress in the snapshot.
pub const DEPROVISION_AGAIN: &str =
    "Deprovisioning again after a disaster; waiting for the worker.";
/// The description an update in progress in the snapshot ends with.
pub const UPDATE_INTERRUPTED: &str =
    "Interrupted by a disaster: the instance is recovered with its previous plan and node count.";
/// The description a dashboard action (backup, switchover) in progress in the snapshot ends
/// with.
pub const ACTION_INTERRUPTED: &str =
    "Interrupted by a disaster: the instance is recovered from its archive; ask again once it is ready.";

/// Errors of a recovery. [`RecoverError::Refused`] means nothing was written.
#[derive(Debug, thiserror::Error)]
pub enum RecoverError {
    /// A condition of the recovery does not hold; nothing was written (exit status 2).
    #[error("{0}")]
    Refused(String),
    /// The state backup's store or etcd failed while reading; nothing was written.
    #[error(transparent)]
    Backup(StateBackupError),
    /// The records were written but the in-process worker could not start (a storage
    /// credential missing from the environment, a cell without a client).
    #[error("the records were written, but the worker cannot start: {0}")]
    Worker(String),
    /// Writing failed: the instances reported before were written, this one and the rest
    /// were not.
    #[error("{written} instances written, then: {source}")]
    Write {
        /// Instances written before the failure.
        written: usize,
        /// The error (in the message: not a `source`, so that it is printed once).
        source: StoreError,
    },
}

impl RecoverError {
    /// True when nothing was written because a condition does not hold (exit status 2).
    pub fn is_refusal(&self) -> bool {
        matches!(self, RecoverError::Refused(_))
    }
}

impl From<StateBackupError> for RecoverError {
    fn from(e: StateBackupError) -> Self {
        match e {
            StateBackupError::NoSnapshot(_)
            | StateBackupError::Sealed { .. }
            | StateBackupError::Format { .. }
            | StateBackupError::Record { .. }
            | StateBackupError::Open(_) => RecoverError::Refused(e.to_string()),
            other => RecoverError::Backup(other),
        }
    }
}

/// What the recovery does with an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// A live instance: marked for re-creation from its own archive.
    Recover,
    /// A provision in progress: it starts again (a clone keeps its resolved target).
    ProvisionAgain,
    /// A deprovision in progress: it starts again (no node remains to remove).
    DeprovisionAgain,
    /// A failed instance: restored as it was (only a deprovision is accepted).
    KeepFailed,
    /// A tombstone: restored as it was.
    KeepDeleted,
}

impl Action {
    /// Its name in the reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Recover => "recover",
            Action::ProvisionAgain => "provision-again",
            Action::DeprovisionAgain => "deprovision-again",
            Action::KeepFailed => "keep-failed",
            Action::KeepDeleted => "keep-deleted",
        }
    }

    /// What it means, for the plan.
    pub fn explain(self) -> &'static str {
        match self {
            Action::Recover => "re-create from its own archive (provision of kind recover)",
            Action::ProvisionAgain => "start its provision again",
            Action::DeprovisionAgain => "start its deprovision again",
            Action::KeepFailed => "restore as failed (only a deprovision is accepted)",
            Action::KeepDeleted => "restore the tombstone",
        }
    }
}

/// One instance of the plan or of the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Planned {
    /// The instance id.
    pub id: String,
    /// Its name on the platform, if it has one.
    pub name: Option<String>,
    /// Its plan id.
    pub plan_id: String,
    /// Its state in the snapshot.
    pub state: InstanceState,
    /// The nodes it had (`name@cell`), all lost.
    pub nodes: Vec<String>,
    /// Its repository.
    pub repository: String,
    /// What is done.
    pub action: Action,
    /// Keys written for it (instance, operation, bindings, secrets, port, catalog).
    pub keys: usize,
}

/// The plan (`--dry-run`) or what was done.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// The snapshot's object name.
    pub snapshot: String,
    /// Its etcd revision.
    pub revision: i64,
    /// When it was taken.
    pub written_at: DateTime<Utc>,
    /// True when nothing was written.
    pub dry_run: bool,
    /// The instances, in key order.
    pub instances: Vec<Planned>,
    /// Keys of no instance in the snapshot (a port or catalog entry left behind), restored
    /// as they were.
    pub other_keys: usize,
}

/// Keys and values, as they will be written.
type Keys = Vec<(String, Vec<u8>)>;

/// One instance's keys, as they will be written.
struct Group {
    planned: Planned,
    /// Keys but the instance record and its operation, in key order.
    keys: Keys,
    /// The instance record and its operation: written last, in the last transaction.
    records: Keys,
}

/// `instance` and its `operation` as restored, and what is done: nodes cleared; a live
/// instance provisioning again from its own repository.
pub fn recovered(
    mut instance: InstanceRecord,
    operation: Option<OperationRecord>,
    now: Timestamp,
) -> (Action, InstanceRecord, Option<OperationRecord>) {
    let had_nodes = !instance.nodes.is_empty();
    instance.nodes.clear();
    let in_progress = |kind: OperationKind, op: &Option<OperationRecord>| {
        op.as_ref()
            .is_some_and(|o| o.kind == kind && o.state == OperationState::InProgress)
    };
    let request = OperationRequest {
        plan_id: instance.plan_id.clone(),
        parameters: instance.parameters,
        node_count: instance.node_count,
    };
    let again = |mut op: OperationRecord, description: &str| {
        op.description = description.to_string();
        op.updated_at = now;
        op
    };
    let (action, operation) = match instance.state {
        InstanceState::Ready | InstanceState::Updating => {
            let previous = operation.map(|mut o| {
                if o.state == OperationState::InProgress {
                    // An update the platform may still poll (or a dashboard action): it ends,
                    // failed, in the history.
                    o.state = OperationState::Failed;
                    if o.kind.is_platform() {
                        o.description = UPDATE_INTERRUPTED.into();
                        o.instance_usable = Some(true);
                    } else {
                        o.description = ACTION_INTERRUPTED.into();
                    }
                    o.finished_at = Some(now);
                    o.updated_at = now;
                }
                o
            });
            instance.state = InstanceState::Provisioning;
            instance.restore = Some(RestoreRecord {
                kind: RestoreKind::Recover,
                source: SourceRef {
                    instance_id: instance.id.clone(),
                    incarnation: instance.incarnation,
                    name: instance.context.instance_name.clone(),
                    repository: instance.repository.clone(),
                    deleted_at: None,
                },
                requested: None,
                resolved: None,
                attempt: 0,
                roles_removed: false,
                reached: None,
            });
            let op = OperationRecord::new(
                &instance.id,
                OperationKind::Provision,
                request,
                RECOVERING,
                previous.as_ref(),
            );
            (Action::Recover, Some(op))
        }
        InstanceState::Provisioning if in_progress(OperationKind::Provision, &operation) => (
            Action::ProvisionAgain,
            operation.map(|o| again(o, PROVISION_AGAIN)),
        ),
        InstanceState::Provisioning => {
            let op = OperationRecord::new(
                &instance.id,
                OperationKind::Provision,
                request,
                PROVISION_AGAIN,
                operation.as_ref(),
            );
            (Action::ProvisionAgain, Some(op))
        }
        InstanceState::Deprovisioning if in_progress(OperationKind::Deprovision, &operation) => (
            Action::DeprovisionAgain,
            operation.map(|o| again(o, DEPROVISION_AGAIN)),
        ),
        InstanceState::Deprovisioning => {
            let op = OperationRecord::new(
                &instance.id,
                OperationKind::Deprovision,
                request,
                DEPROVISION_AGAIN,
                operation.as_ref(),
            );
            (Action::DeprovisionAgain, Some(op))
        }
        InstanceState::Failed => (Action::KeepFailed, operation),
        InstanceState::Deleted => (Action::KeepDeleted, operation),
    };
    if had_nodes || !matches!(action, Action::KeepFailed | Action::KeepDeleted) {
        instance.updated_at = now;
    }
    (action, instance, operation)
}

/// The recovery of `config`'s broker state into an empty etcd.
pub struct Recovery<'a> {
    config: &'a BrokerConfig,
    store: Store,
    backup: StateBackup,
}

impl<'a> Recovery<'a> {
    /// The recovery of `config`'s broker, whose records are under `store`'s prefix;
    /// refused without `[state_backup]`.
    pub fn new(config: &'a BrokerConfig, store: Store) -> Result<Recovery<'a>, RecoverError> {
        let backup = StateBackup::open(config, store.clone())?.ok_or_else(|| {
            RecoverError::Refused(
                "no [state_backup] in the configuration: disaster recovery restores from its snapshots"
                    .into(),
            )
        })?;
        Ok(Recovery {
            config,
            store,
            backup,
        })
    }

    /// Refuses unless etcd holds no key under the prefix and every configured cell answers
    /// with no node.
    pub async fn check_empty(&self) -> Result<(), RecoverError> {
        let prefix = self.store.prefix();
        let keys = self
            .store
            .etcd()
            .get_prefix(format!("{prefix}/").as_bytes())
            .await
            .map_err(|e| RecoverError::Backup(e.into()))?;
        if !keys.is_empty() {
            return Err(RecoverError::Refused(format!(
                "etcd already holds broker state under {prefix} ({} keys); disaster recovery restores into an empty etcd.",
                keys.len()
            )));
        }
        for c in &self.config.cells {
            let refused = |what: String| {
                RecoverError::Refused(format!(
                    "cell {} {what}; disaster recovery restores onto empty cells (remove a lost cell from the configuration).",
                    c.name
                ))
            };
            let client = CellClient::new(&c.url, c.token.clone(), self.config.tls.as_ref())
                .map_err(|e| refused(format!("has no usable client ({e})")))?;
            let nodes = client
                .nodes()
                .await
                .map_err(|e| refused(format!("did not answer ({e})")))?;
            if !nodes.is_empty() {
                let names: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
                return Err(refused(format!(
                    "runs {} nodes ({})",
                    nodes.len(),
                    names.join(", ")
                )));
            }
        }
        Ok(())
    }

    /// The snapshot of revision `revision`, else the newest, opened and checked: its name
    /// and content.
    pub async fn snapshot(
        &self,
        revision: Option<i64>,
    ) -> Result<(String, Snapshot), RecoverError> {
        let listed = self.backup.list().await?;
        let chosen = match revision {
            Some(r) => listed
                .into_iter()
                .find(|l| l.revision == r)
                .ok_or_else(|| {
                    RecoverError::Refused(format!(
                        "no snapshot of revision {r} in {} (see state-backup list)",
                        self.backup.url()
                    ))
                })?,
            None => listed
                .into_iter()
                .next_back()
                .ok_or_else(|| StateBackupError::NoSnapshot(self.backup.url().to_string()))?,
        };
        let snap = self.backup.load(&chosen.name).await?;
        self.backup.check(&chosen.name, &snap)?;
        Ok((chosen.name, snap))
    }

    /// Checks the conditions, then writes the snapshot's records back (nothing when
    /// `dry_run`); the plan or what was done.
    pub async fn run(&self, revision: Option<i64>, dry_run: bool) -> Result<Report, RecoverError> {
        self.check_empty().await?;
        let (name, snap) = self.snapshot(revision).await?;
        let (groups, other) = self.plan(&name, &snap)?;
        let mut report = Report {
            snapshot: name,
            revision: snap.revision,
            written_at: snap.written_at,
            dry_run,
            instances: groups.iter().map(|g| g.planned.clone()).collect(),
            other_keys: other.len(),
        };
        if dry_run {
            return Ok(report);
        }
        let mut written = 0;
        let failed = |written: usize| move |source| RecoverError::Write { written, source };
        for g in &groups {
            // The instance record and its operation go in the last transaction: once they
            // are there, the instance is whole (an instance's keys rarely need more than one).
            let mut chunks: Vec<Vec<(String, Vec<u8>)>> =
                g.keys.chunks(RESTORE_TXN_KEYS).map(<[_]>::to_vec).collect();
            match chunks.last_mut() {
                Some(last) if last.len() + g.records.len() <= RESTORE_TXN_KEYS => {
                    last.extend(g.records.iter().cloned())
                }
                _ => chunks.push(g.records.clone()),
            }
            for chunk in &chunks {
                if !self
                    .store
                    .put_if_all_absent(chunk)
                    .await
                    .map_err(failed(written))?
                {
                    return Err(failed(written)(StoreError::Refused(format!(
                        "a key of instance {} appeared in etcd while recovering: another broker or recovery is writing",
                        g.planned.id
                    ))));
                }
            }
            written += 1;
            tracing::info!(instance = %g.planned.id, action = g.planned.action.as_str(), "instance restored");
        }
        for chunk in other.chunks(RESTORE_TXN_KEYS) {
            if !self
                .store
                .put_if_all_absent(chunk)
                .await
                .map_err(failed(written))?
            {
                return Err(failed(written)(StoreError::Refused(
                    "a key appeared in etcd while recovering: another broker or recovery is writing"
                        .into(),
                )));
            }
        }
        report.dry_run = false;
        Ok(report)
    }

    /// The snapshot's keys grouped by instance (with the instance and operation records as
    /// restored), and the keys of no instance.
    fn plan(&self, name: &str, snap: &Snapshot) -> Result<(Vec<Group>, Keys), RecoverError> {
        let now = Timestamp::now();
        let inside = format!("{}/", self.store.prefix());
        let corrupt = |key: &str, message: String| {
            RecoverError::Refused(format!("{name}: corrupt record at {key}: {message}"))
        };
        // The owner's encoded id of every key, and the values.
        let mut values: Vec<(String, Vec<u8>, Option<String>)> = Vec::new();
        for k in &snap.keys {
            let value = B64
                .decode(&k.value_b64)
                .map_err(|e| corrupt(&k.key, format!("value_b64: {e}")))?;
            let rest = k.key.strip_prefix(&inside).unwrap_or(&k.key);
            let mut parts = rest.split('/');
            let kind = parts.next().unwrap_or("");
            let owner = match kind {
                "instances" | "operations" | "bindings" | "secrets" | "backups" => {
                    parts.next().map(str::to_string)
                }
                "ports" => std::str::from_utf8(&value).ok().map(encode_component),
                "catalog" => serde_json::from_slice::<CatalogEntry>(&value)
                    .ok()
                    .map(|e| encode_component(&e.instance_id)),
                _ => None,
            };
            values.push((k.key.clone(), value, owner));
        }
        let by_key: BTreeMap<&str, &[u8]> = values
            .iter()
            .map(|(k, v, _)| (k.as_str(), v.as_slice()))
            .collect();
        let mut groups: BTreeMap<String, Group> = BTreeMap::new();
        let mut record_keys = std::collections::HashSet::new();
        for (key, value, _) in &values {
            let Some(enc) = key
                .strip_prefix(&inside)
                .and_then(|r| r.strip_prefix("instances/"))
            else {
                continue;
            };
            let instance: InstanceRecord =
                serde_json::from_slice(value).map_err(|e| corrupt(key, e.to_string()))?;
            let op_key = self.store.operation_key(&instance.id);
            let op_bytes = by_key.get(op_key.as_str()).copied();
            let operation = op_bytes
                .map(|v| {
                    serde_json::from_slice::<OperationRecord>(v)
                        .map_err(|e| corrupt(&op_key, e.to_string()))
                })
                .transpose()?;
            let before = instance.clone();
            let (action, after, op_after) = recovered(instance, operation.clone(), now);
            let mut records = vec![(
                key.clone(),
                if after == before {
                    value.clone()
                } else {
                    serde_json::to_vec(&after).expect("JSON")
                },
            )];
            if let Some(op) = &op_after {
                let bytes = if Some(op) == operation.as_ref() {
                    op_bytes.expect("read above").to_vec()
                } else {
                    serde_json::to_vec(op).expect("JSON")
                };
                records.push((op_key.clone(), bytes));
            }
            record_keys.extend(records.iter().map(|(k, _)| k.clone()));
            let planned = Planned {
                id: before.id.clone(),
                name: before.context.instance_name.clone(),
                plan_id: before.plan_id.clone(),
                state: before.state,
                nodes: before
                    .nodes
                    .iter()
                    .map(|n| format!("{}@{}", n.name, n.cell))
                    .collect(),
                repository: before.repository.clone(),
                action,
                keys: 0,
            };
            groups.insert(
                enc.to_string(),
                Group {
                    planned,
                    keys: Vec::new(),
                    records,
                },
            );
        }
        let mut other = Vec::new();
        for (key, value, owner) in values {
            if record_keys.contains(&key) {
                continue;
            }
            match owner.and_then(|o| groups.get_mut(&o)) {
                Some(g) if !key.starts_with(&format!("{inside}operations/")) => {
                    g.keys.push((key, value))
                }
                _ => other.push((key, value)),
            }
        }
        for g in groups.values_mut() {
            g.planned.keys = g.keys.len() + g.records.len();
        }
        Ok((groups.into_values().collect(), other))
    }
}

impl Report {
    /// The plan, one line per instance (`--dry-run`).
    pub fn plan_text(&self) -> String {
        let mut out = format!(
            "snapshot {} (revision {}, taken {}): {} instances, {} other keys; nothing written (--dry-run)\n",
            self.snapshot,
            self.revision,
            self.written_at.to_rfc3339(),
            self.instances.len(),
            self.other_keys
        );
        for p in &self.instances {
            let nodes = if p.nodes.is_empty() {
                "no nodes".to_string()
            } else {
                format!("nodes {}", p.nodes.join(","))
            };
            out.push_str(&format!(
                "{} {} plan {} {} {} {:?}: {}\n",
                p.id,
                p.name.as_deref().unwrap_or("-"),
                p.plan_id,
                nodes,
                p.repository,
                p.state,
                p.action.explain()
            ));
        }
        out
    }

    /// What was done, one line per instance (`id name action`).
    pub fn done_text(&self) -> String {
        let mut out = String::new();
        for p in &self.instances {
            out.push_str(&format!(
                "{} {} {}\n",
                p.id,
                p.name.as_deref().unwrap_or("-"),
                p.action.as_str()
            ));
        }
        let recover = self
            .instances
            .iter()
            .filter(|p| p.action != Action::KeepDeleted && p.action != Action::KeepFailed)
            .count();
        out.push_str(&format!(
            "restored {} instances and {} other keys from {} (revision {}); {recover} are re-created by the worker\n",
            self.instances.len(),
            self.other_keys,
            self.snapshot,
            self.revision
        ));
        out
    }
}

#[cfg(test)]
mod tests;
mod wait;

pub use wait::{outcomes_text, Outcome};
