//! The three kinds of operation, one pass each: provision, update, deprovision.
//!
//! A pass compares the world with what its operation asks for and does the next thing that
//! is missing, returning the outcome's description when nothing is, or a [`Step`] when it
//! must stop, fail, wait or retry; `drive` (in `worker.rs`) runs passes until the operation
//! finishes. Every step is idempotent, so a pass may be cut short anywhere.

use std::collections::HashSet;

use tracing::{info, warn};

use super::{Inner, Pass, Step};
use crate::state::{InstanceRecord, NodePlacement, OperationRecord, Timestamp};

impl Inner {
    /// One pass of a provision: checks (before anything exists) that the repository is
    /// new, places the nodes, puts them on their cells, waits for a healthy cluster and a
    /// working route, and takes the first base backup.
    pub(super) async fn provision_pass(
        &self,
        op: &OperationRecord,
        pass: &mut Pass,
    ) -> Result<String, Step> {
        let inst = self.current(op).await?;
        if inst.restore.is_some() {
            // A clone (or a recovery): its cluster starts from an archive (`restore.rs`).
            return self.restore_pass(op, inst, pass).await;
        }
        if inst.nodes.is_empty() {
            self.check_new_repository(&inst).await?;
        }
        let secrets = self.secrets(&inst.id).await?;
        let target = op.request.node_count as usize;
        let inst = self.place(op, &inst, target).await?;
        let (inst, seen) = self.nodes_up_and_routed(op, &inst, &secrets, pass).await?;
        if !self.route_works(&inst).await {
            return Err(Step::Pending(format!(
                "{}; waiting for the router",
                seen.describe()
            )));
        }
        if !pass.backed_up {
            self.store
                .set_progress(
                    &op.instance_id,
                    &op.id,
                    &format!("{}; taking the first base backup", seen.describe()),
                )
                .await?;
            let leader = seen.leader().expect("healthy").name.clone();
            let node = inst
                .nodes
                .iter()
                .find(|n| n.name == leader)
                .expect("observed");
            let cell = self.cell(&node.cell).expect("observed");
            match self.logged_backup(&inst.id, &cell.client, &leader).await {
                Ok(b) => {
                    info!(instance = %inst.id, backup = %b.summary["name"], seconds = b.seconds,
                          "first base backup taken");
                    pass.backed_up = true;
                    let now = Timestamp::now();
                    self.store
                        .transition(&op.instance_id, &op.id, |i, _| {
                            i.last_backup_at = Some(now);
                            Ok(())
                        })
                        .await?;
                }
                Err(e) => {
                    return Err(Step::retry(
                        Some(seen.describe()),
                        "the first base backup failed",
                        format_args!("node {leader}: {e}"),
                    ))
                }
            }
        }
        Ok(format!(
            "The PostgreSQL cluster is ready ({}).",
            nodes(inst.nodes.len())
        ))
    }

    /// Before anything of a new instance is created: its repository must be new. (An id
    /// `x.2` and the second incarnation of `x` would share one, for instance.)
    pub(super) async fn check_new_repository(&self, inst: &InstanceRecord) -> Result<(), Step> {
        match self.repository_contents(&inst.repository).await {
            Ok(None) => Ok(()),
            Ok(Some(what)) => {
                warn!(instance = %inst.id, repository = %inst.repository,
                      "the repository of a new instance is not empty: {what}");
                Err(Step::Fail(
                    "This instance's repository already holds an archive; a new cluster cannot archive into it. The operator can find the details in the broker's log."
                        .into(),
                ))
            }
            Err(e) => Err(Step::retry(
                None,
                "the instance's backup repository could not be checked",
                format_args!("{}: {e}", inst.repository),
            )),
        }
    }

    /// One pass of an update: places the nodes a scale-up adds, removes the replicas a
    /// scale-down drops (never the leader), and re-sends every node's spec.
    pub(super) async fn update_pass(
        &self,
        op: &OperationRecord,
        pass: &mut Pass,
    ) -> Result<String, Step> {
        let inst = self.current(op).await?;
        let secrets = self.secrets(&inst.id).await?;
        let target = op.request.node_count as usize;
        let mut inst = self.place(op, &inst, target).await?;
        if inst.nodes.len() > target {
            // Scale down: remove replicas only; the leader stays (at least one node remains).
            let seen = self.observe(&inst).await;
            let Some(leader) = seen.leader().map(|l| l.name.clone()) else {
                return Err(Step::Pending(format!(
                    "{}; waiting for a leader before removing nodes",
                    seen.describe()
                )));
            };
            // Replicas that do not stream go first, then the newest.
            let mut victims: Vec<&NodePlacement> =
                inst.nodes.iter().filter(|n| n.name != leader).collect();
            victims.sort_by_key(|n| (seen.streams(&n.name), std::cmp::Reverse(n.name.clone())));
            let victims: Vec<NodePlacement> = victims
                .into_iter()
                .take(inst.nodes.len() - target)
                .cloned()
                .collect();
            for (k, v) in victims.iter().enumerate() {
                self.store
                    .set_progress(
                        &op.instance_id,
                        &op.id,
                        &format!(
                            "{}; removing replica {} of {}",
                            seen.describe(),
                            k + 1,
                            victims.len()
                        ),
                    )
                    .await?;
                if let Some(cell) = self.cell(&v.cell) {
                    cell.client.delete_node(&v.name).await.map_err(|e| {
                        Step::retry(
                            Some(seen.describe()),
                            "a replica could not be removed (its machine did not answer as expected)",
                            format_args!("node {} on cell {}: {e}", v.name, v.cell),
                        )
                    })?;
                }
                info!(instance = %inst.id, node = %v.name, cell = %v.cell, "node removed");
            }
            let gone: HashSet<String> = victims.iter().map(|v| v.name.clone()).collect();
            let (ni, _) = self
                .store
                .transition(&op.instance_id, &op.id, |i, _| {
                    i.nodes.retain(|n| !gone.contains(&n.name));
                    Ok(())
                })
                .await?;
            inst = ni;
            if let Err(e) = self.sync_router().await {
                warn!("cannot update the router: {e}");
            }
        }
        let (inst, _) = self.nodes_up_and_routed(op, &inst, &secrets, pass).await?;
        Ok(format!("Updated: {}.", nodes(inst.nodes.len())))
    }

    /// One pass of a deprovision: removes the route, has the leader archive its last WAL,
    /// removes every node of the instance on every cell (recorded or not), and Patroni's
    /// keys; the archive is kept.
    pub(super) async fn deprovision_pass(&self, op: &OperationRecord) -> Result<String, Step> {
        let inst = self.current(op).await?;
        // The route goes first (the instance is deprovisioning, so it has none any more).
        if let Err(e) = self.sync_router().await {
            return Err(Step::retry(None, "the route could not be removed", e));
        }
        // Before any node goes, the leader's last commits go to the archive (design §2.3).
        self.archive_final_wal(op, &inst).await?;
        self.remove_nodes_and_keys(&inst).await?;
        self.store
            .transition(&op.instance_id, &op.id, |i, _| {
                i.nodes.clear();
                Ok(())
            })
            .await?;
        info!(instance = %inst.id, repository = %inst.repository, "deleted; the archive is kept");
        Ok("Deleted; the archive is kept.".into())
    }
}

/// "1 node", "3 nodes".
fn nodes(n: usize) -> String {
    format!("{n} node{}", if n == 1 { "" } else { "s" })
}
