//! The life of an operation in the records: a step recorded on the instance and its
//! operation together ([`Store::transition`], [`Store::set_progress`]), and its end, which
//! moves the instance to its resulting state ([`Store::finish_operation`]).
//!
//! Its own room because it is the worker's one way of changing an instance while an
//! operation runs, with its own rule (only the current, unfinished operation may); `store`
//! keeps the reads, the creations and the plain compare-and-swaps.

use tracing::info;

use super::model::*;
use super::{until_swapped, Round, Store, StoreError};
use crate::etcd::{Compare, TxnOp};

impl Store {
    /// Applies `f` to the instance and its operation `operation_id` and stores both, retrying
    /// from a fresh read when another writer got there first. Fails with
    /// [`StoreError::Superseded`] when `operation_id` is no longer current, and with
    /// [`StoreError::Finished`] when it is no longer in progress. The general tool of the
    /// worker; [`Store::set_progress`] and [`Store::finish_operation`] are built on it.
    pub async fn transition<F>(
        &self,
        instance_id: &str,
        operation_id: &str,
        f: F,
    ) -> Result<(InstanceRecord, OperationRecord), StoreError>
    where
        F: FnMut(&mut InstanceRecord, &mut OperationRecord) -> Result<(), StoreError>,
    {
        until_swapped(f, |mut f| async move {
            let (inst, op) = self.current_operation(instance_id, operation_id).await?;
            let (mut ni, mut no) = (inst.value.clone(), op.value.clone());
            f(&mut ni, &mut no)?;
            let now = Timestamp::now();
            ni.updated_at = now;
            no.updated_at = now;
            if self.replace(&inst, &ni, Some(&op), &no).await? {
                return Ok(Round::Done((ni, no)));
            }
            Ok::<_, StoreError>(Round::Lost(f))
        })
        .await?
        .ok_or_else(|| StoreError::Contention {
            key: self.operation_key(instance_id),
        })
    }

    /// The instance and its operation, read together, provided `operation_id` is its current,
    /// unfinished operation (see [`check_current`]): where every step of an operation starts.
    async fn current_operation(
        &self,
        instance_id: &str,
        operation_id: &str,
    ) -> Result<(Versioned<InstanceRecord>, Versioned<OperationRecord>), StoreError> {
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
        Ok((inst, op))
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
    /// * deprovision: on success `deleted` (tombstone), its port released, its bindings and
    ///   backup log removed and its catalog entry marked deleted, all in the same
    ///   transaction; on failure `failed`;
    /// * backup, switchover (dashboard actions): the instance's state is left as it is.
    pub async fn finish_operation(
        &self,
        instance_id: &str,
        operation_id: &str,
        outcome: Outcome,
    ) -> Result<InstanceRecord, StoreError> {
        let outcome = &outcome;
        until_swapped((), |()| async move {
            let (inst, op) = self.current_operation(instance_id, operation_id).await?;
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
                // Dashboard actions leave the instance as it is (`ready`).
                (OperationKind::Backup | OperationKind::Switchover, _) => ni.state,
                (OperationKind::Deprovision, false) => InstanceState::Failed,
                (OperationKind::Deprovision, true) => {
                    ni.deleted_at = Some(now);
                    // Release the ports if this instance still owns them (it should).
                    for port in std::iter::once(ni.port).chain(ni.read_only_port) {
                        let pk = self.port_key(port);
                        if let Some(kv) = self.etcd.get(pk.as_bytes()).await? {
                            if kv.value == instance_id.as_bytes() {
                                compares
                                    .push(Compare::mod_revision(pk.as_bytes(), kv.mod_revision));
                                ops.push(TxnOp::delete(pk.as_bytes()));
                            }
                        }
                    }
                    ops.push(TxnOp::DeletePrefix(
                        self.bindings_prefix(instance_id).into_bytes(),
                    ));
                    ops.push(TxnOp::delete(self.secrets_key(instance_id).as_bytes()));
                    ops.push(TxnOp::delete(self.backups_key(instance_id).as_bytes()));
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
                                purged: None,
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
                return Ok(Round::Done(ni));
            }
            Ok::<_, StoreError>(Round::Lost(()))
        })
        .await?
        .ok_or_else(|| StoreError::Contention {
            key: self.operation_key(instance_id),
        })
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
