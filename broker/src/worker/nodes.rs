//! Putting an instance's recorded nodes on their cells and waiting for the cluster.
//!
//! Every pass re-sends each node's full specification (the cell agent answers the same
//! ports for the same spec), so a node whose peers changed is reconfigured and a node a
//! crashed pass created but did not record ports for is picked up; nothing here needs to
//! remember more than [`Pass`] across passes.

use std::collections::HashMap;

use tracing::warn;

use super::observe::Observed;
use super::{Inner, Pass, Step};
use crate::cell::{BootstrapSpec, DcsTiming, NodeSpec};
use crate::state::{InstanceRecord, InstanceSecrets, NodePlacement, OperationRecord};

impl Inner {
    /// What the cell agent is told to run for `node` of `inst`: Patroni's scope and DCS,
    /// the archive, the passwords, and the hosts of the node's peers.
    fn spec(
        &self,
        inst: &InstanceRecord,
        secrets: &InstanceSecrets,
        node: &NodePlacement,
    ) -> Result<NodeSpec, Step> {
        let cell = self.cell(&node.cell).ok_or_else(|| {
            warn!(instance = %inst.id, node = %node.name, cell = %node.cell,
                  "the cell of a node is no longer configured");
            Step::Fail(
                "A machine this instance's nodes run on is no longer configured; the operator can find the details in the broker's log."
                    .into(),
            )
        })?;
        let mut peer_hosts: Vec<String> = inst
            .nodes
            .iter()
            .filter(|n| n.name != node.name)
            .filter_map(|n| self.cell(&n.cell).map(|c| c.host.clone()))
            .collect();
        peer_hosts.sort();
        peer_hosts.dedup();
        let n = &self.config.nodes;
        Ok(NodeSpec {
            major: inst.postgresql_major,
            instance_id: inst.id.clone(),
            scope: inst.path_name.clone(),
            namespace: self.config.patroni_namespace(),
            etcd_hosts: self
                .config
                .etcd
                .endpoints
                .iter()
                .filter_map(|e| {
                    let u = url::Url::parse(e).ok()?;
                    Some(format!("{}:{}", u.host_str()?, u.port_or_known_default()?))
                })
                .collect(),
            etcd_tls: n.etcd_ca_file.as_ref().map(|ca| crate::patroni::EtcdTls {
                ca_file: ca.clone(),
                cert_file: n.etcd_cert_file.clone(),
                key_file: n.etcd_key_file.clone(),
            }),
            etcd_credentials: n
                .etcd_username
                .as_ref()
                .map(|u| crate::patroni::EtcdCredentials {
                    username: u.clone(),
                    password: n.etcd_password.clone(),
                }),
            repository: inst.repository.clone(),
            walarchive: n.walarchive.clone(),
            walarchive_env: self.storage_env.clone(),
            archive_timeout: self.config.archive_timeout.0.as_secs().max(1) as u32,
            superuser_password: secrets.superuser_password.clone(),
            replication_password: secrets.replication_password.clone(),
            rewind_password: secrets.rewind_password.clone(),
            synchronous: n.synchronous,
            // Absent at PostgreSQL's default, so that specs stay what cells from before it
            // accept.
            synchronous_commit: (n.synchronous_commit != crate::config::SynchronousCommit::On)
                .then(|| n.synchronous_commit.as_str().to_string()),
            host: cell.host.clone(),
            peer_hosts,
            timing: DcsTiming {
                ttl: n.ttl,
                loop_wait: n.loop_wait,
                retry_timeout: n.retry_timeout,
                ..DcsTiming::default()
            },
            wal_segsize_mb: n.wal_segsize_mb,
            bootstrap: None,
        })
    }

    /// PUTs every recorded node of `inst` on its cell (idempotent: the same spec answers
    /// the same ports) and records the ports of nodes that had none.
    pub(super) async fn ensure_nodes(
        &self,
        op: &OperationRecord,
        inst: &InstanceRecord,
        secrets: &InstanceSecrets,
        pass: &mut Pass,
    ) -> Result<InstanceRecord, Step> {
        self.ensure_nodes_with(op, inst, secrets, pass, None, None)
            .await
    }

    /// [`Inner::ensure_nodes`] for the node named `only` (every node when `None`), each
    /// bootstrapped with `bootstrap` when given (a clone's first node, `worker/restore.rs`).
    pub(super) async fn ensure_nodes_with(
        &self,
        op: &OperationRecord,
        inst: &InstanceRecord,
        secrets: &InstanceSecrets,
        pass: &mut Pass,
        only: Option<&str>,
        bootstrap: Option<&BootstrapSpec>,
    ) -> Result<InstanceRecord, Step> {
        let mut ports = HashMap::new();
        for node in &inst.nodes {
            if only.is_some_and(|o| o != node.name) {
                continue;
            }
            let mut spec = self.spec(inst, secrets, node)?;
            spec.bootstrap = bootstrap.cloned();
            let sent = (spec.peer_hosts.clone(), spec.bootstrap.is_some());
            if node.pg_port != 0 && pass.put.get(&node.name) == Some(&sent) {
                continue;
            }
            let cell = self.cell(&node.cell).expect("checked by spec()");
            match cell.client.put_node(&node.name, &spec).await {
                Ok(p) => {
                    pass.put.insert(node.name.clone(), sent);
                    if node.pg_port != p.pg_port || node.api_port != p.api_port {
                        ports.insert(node.name.clone(), p);
                    }
                }
                Err(e) => {
                    return Err(Step::retry(
                        None,
                        "a node could not be created (its machine did not answer as expected)",
                        format_args!("node {} on cell {}: {e}", node.name, cell.name),
                    ))
                }
            }
        }
        if ports.is_empty() {
            return Ok(inst.clone());
        }
        let (ni, _) = self
            .store
            .transition(&op.instance_id, &op.id, |i, _| {
                for n in &mut i.nodes {
                    if let Some(p) = ports.get(&n.name) {
                        n.pg_port = p.pg_port;
                        n.api_port = p.api_port;
                    }
                }
                Ok(())
            })
            .await?;
        Ok(ni)
    }

    /// Puts every node of `inst` on its cell, waits (as a pending step) until the cluster
    /// is healthy, then routes to it: what a provision and an update both end with.
    pub(super) async fn nodes_up_and_routed(
        &self,
        op: &OperationRecord,
        inst: &InstanceRecord,
        secrets: &InstanceSecrets,
        pass: &mut Pass,
    ) -> Result<(InstanceRecord, Observed), Step> {
        let inst = self.ensure_nodes(op, inst, secrets, pass).await?;
        let seen = self.observe(&inst).await;
        if !seen.healthy() {
            return Err(Step::Pending(seen.describe()));
        }
        self.sync_router().await.map_err(|e| {
            Step::retry(Some(seen.describe()), "the router could not be updated", e)
        })?;
        Ok((inst, seen))
    }

    /// The instance's passwords, generated on first use (create-if-absent, so a
    /// restarted pass finds the same ones).
    pub(super) async fn secrets(&self, iid: &str) -> Result<InstanceSecrets, Step> {
        Ok(match self.store.instance_secrets(iid).await? {
            Some(s) => s,
            None => {
                self.store
                    .put_instance_secrets(iid, &InstanceSecrets::generate())
                    .await?
            }
        })
    }
}
