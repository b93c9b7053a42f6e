//! The dashboard's actions (`crate::actions`) carried out: a backup now, a switchover.
//!
//! A backup takes the scheduled backups' path (`backups.rs`: the leader's cell, retention,
//! the backup log) under their claim and this process's backup lock, so the two never run at
//! once. A switchover asks the leader's cell, which holds Patroni's REST credentials, for
//! Patroni's `POST /switchover`, and succeeds once the candidate leads, every other node
//! streams from it again and the router's port answers (HAProxy's check on `/primary`
//! follows the leader by itself, on the same port). Both end with a sentence for the
//! dashboard; details of failures go to the log.

use std::time::{Duration, Instant};

use tracing::warn;

use super::{Inner, Pass, Step, WorkerError};
use crate::state::{ClaimKind, OperationRecord};

/// How long Patroni gets to make the candidate lead once it accepted a switchover.
const SWITCHOVER_WAIT: Duration = Duration::from_secs(90);

impl Inner {
    /// A backup asked for on the dashboard: one base backup on the leader, then retention.
    pub(super) async fn backup_pass(&self, op: &OperationRecord) -> Result<String, Step> {
        let inst = self.current(op).await?;
        let lock = self.backup_lock(&inst.id);
        let Ok(_held) = lock.try_lock() else {
            return Err(Step::Pending(
                "Waiting for a scheduled backup of this instance to finish.".into(),
            ));
        };
        self.store
            .set_progress(
                &op.instance_id,
                &op.id,
                "Taking a base backup on the leader.",
            )
            .await?;
        let requested_by = op.requested_by.as_deref().unwrap_or("dashboard");
        let work = self.take_backup(&inst, requested_by, Some(&op.id));
        match self.try_claimed(&inst.id, ClaimKind::Backups, work).await {
            None => Err(Step::Pending(
                "Waiting for another broker's backup of this instance to finish.".into(),
            )),
            Some(Ok((name, node))) => Ok(format!("Base backup taken on {node}: {name}")),
            Some(Err(WorkerError::Store(e))) => Err(e.into()),
            Some(Err(e)) => {
                warn!(instance = %inst.id, operation = %op.id, "backup failed: {e}");
                Err(Step::Fail(
                    "The backup failed; the operator can find the details in the broker's log."
                        .into(),
                ))
            }
        }
    }

    /// Whether switchover `op` still has the description it was accepted with: no worker
    /// has asked Patroni for it yet (each says so in its progress before it waits).
    async fn untouched(&self, op: &OperationRecord, candidate: &str) -> Result<bool, Step> {
        let cur = self.store.operation(&op.instance_id).await?;
        Ok(cur.is_some_and(|c| {
            c.value.id == op.id
                && c.value.description == crate::actions::switchover_accepted(candidate)
        }))
    }

    /// A switchover to `op.candidate`: asked of Patroni once, then watched until the
    /// candidate leads, the other nodes stream from it and the router answers.
    pub(super) async fn switchover_pass(
        &self,
        op: &OperationRecord,
        pass: &mut Pass,
    ) -> Result<String, Step> {
        let inst = self.current(op).await?;
        let Some(candidate) = op.candidate.as_deref() else {
            return Err(Step::Fail("The switchover names no replica.".into()));
        };
        if !inst.nodes.iter().any(|n| n.name == candidate) {
            return Err(Step::Fail(format!(
                "{candidate} is no longer a node of this instance."
            )));
        }
        let seen = self.observe(&inst).await;
        let Some(leader) = seen.leader() else {
            return Err(Step::Pending(format!(
                "Switchover to {candidate}: no leader at the moment ({}).",
                seen.describe()
            )));
        };
        if leader.name == candidate {
            // Leading before this task asked anything, with the operation as accepted (not
            // a switchover a previous worker asked for): there is nothing to switch.
            if pass.switchover_asked.is_none() && self.untouched(op, candidate).await? {
                return Err(Step::Fail(format!(
                    "{candidate} is already the leader; choose a replica."
                )));
            }
            if !seen.healthy() {
                return Err(Step::Pending(format!(
                    "{candidate} leads; waiting for the other nodes to stream from it ({}).",
                    seen.describe()
                )));
            }
            if !self.route_works(&inst).await {
                return Err(Step::Pending(format!(
                    "{candidate} leads; waiting for the router."
                )));
            }
            return Ok(format!("Switched over: {candidate} is the leader."));
        }
        if let Some(asked) = pass.switchover_asked {
            if asked.elapsed() > SWITCHOVER_WAIT {
                warn!(instance = %inst.id, operation = %op.id, leader = %leader.name,
                      "Patroni accepted the switchover but {candidate} did not lead within {SWITCHOVER_WAIT:?}");
                return Err(Step::Fail(format!(
                    "Patroni did not make {candidate} the leader within {} s; {} still leads.",
                    SWITCHOVER_WAIT.as_secs(),
                    leader.name
                )));
            }
            return Err(Step::Pending(format!(
                "Switchover to {candidate} under way ({}).",
                seen.describe()
            )));
        }
        if !seen.streams(candidate) {
            return Err(Step::Fail(format!(
                "{candidate} is not streaming from the leader, so it cannot take over now; try again when it is."
            )));
        }
        let node = inst
            .nodes
            .iter()
            .find(|n| n.name == leader.name)
            .expect("observed");
        let Some(cell) = self.cell(&node.cell) else {
            warn!(instance = %inst.id, cell = %node.cell, "the leader's cell is not configured");
            return Err(Step::Fail(super::INTERNAL.into()));
        };
        if let Err(e) = cell.client.switchover(&leader.name, candidate).await {
            warn!(instance = %inst.id, operation = %op.id, "switchover refused: {e}");
            return Err(Step::Fail(format!(
                "Patroni refused the switchover to {candidate}; the operator can find the details in the broker's log."
            )));
        }
        pass.switchover_asked = Some(Instant::now());
        Err(Step::Pending(format!(
            "Switchover to {candidate} accepted by Patroni."
        )))
    }
}
