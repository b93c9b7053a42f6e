//! Removing what an instance runs: its route, its nodes on every cell (recorded or not) and
//! Patroni's keys. Shared by a deprovision and by a clone whose restore failed (which must
//! leave nothing running that could be mistaken for a copy, nor a Patroni retrying forever).

use tracing::info;

use super::{Inner, Step};
use crate::state::InstanceRecord;

impl Inner {
    /// Removes every node of `inst` on every cell (recorded or not: a pass may have been
    /// interrupted between a PUT and recording its ports), then Patroni's keys of its scope.
    /// The route goes with the nodes on the next router sync (the caller clears
    /// `inst.nodes`, or the instance is deprovisioning).
    pub(super) async fn remove_nodes_and_keys(&self, inst: &InstanceRecord) -> Result<(), Step> {
        let mut problems = Vec::new();
        for cell in &self.cells {
            let nodes = match cell.client.nodes().await {
                Ok(n) => n,
                Err(e) => {
                    problems.push(format!("cell {} unreachable ({e})", cell.name));
                    continue;
                }
            };
            for n in nodes.iter().filter(|n| n.instance_id == inst.id) {
                match cell.client.delete_node(&n.name).await {
                    Ok(_) => info!(instance = %inst.id, node = %n.name, cell = %cell.name,
                                   "node removed"),
                    Err(e) => problems.push(format!("node {} on cell {}: {e}", n.name, cell.name)),
                }
            }
        }
        if !problems.is_empty() {
            return Err(Step::retry(
                None,
                "some nodes could not be removed yet (their machines did not answer as expected)",
                problems.join("; "),
            ));
        }
        self.remove_patroni_keys(inst).await
    }

    /// Removes Patroni's keys of `inst`'s scope (`<namespace><scope>/`).
    pub(super) async fn remove_patroni_keys(&self, inst: &InstanceRecord) -> Result<(), Step> {
        let patroni = format!("{}{}/", self.config.patroni_namespace(), inst.scope());
        self.store
            .etcd()
            .delete_prefix(patroni.as_bytes())
            .await
            .map_err(|e| {
                Step::retry(
                    None,
                    "the cluster's coordination keys could not be removed",
                    e,
                )
            })?;
        Ok(())
    }
}
