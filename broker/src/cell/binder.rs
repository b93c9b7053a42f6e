//! The broker's [`Binder`]: bindings made on an instance's leader through its cell.
//!
//! The roles themselves (their SQL, names and credentials) are [`crate::binder`]'s; this is
//! only the broker's side of asking the leader's cell to create or drop one, retried while a
//! failover is in progress. It lives with the cell's client, not in `binder`, so that the cell
//! agent (which runs `binder`'s SQL) and the broker's binder do not import each other.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use tracing::info;

use super::{CellClient, ClientError};
use crate::api::{BindError, Binder, BoxFuture};
use crate::backoff::{retry, Backoff};
use crate::binder::{
    add_multihost, add_read_only, credentials, new_role, role_name, BinderOptions,
};
use crate::state::{Credentials, InstanceRecord};

/// The [`Binder`] of a real broker: a role per binding, made on the leader by its cell.
pub struct CellBinder {
    host: String,
    options: BinderOptions,
    cells: BTreeMap<String, CellClient>,
    /// Each cell's host as it advertises it to the nodes' clients (the multi-host URIs).
    node_hosts: BTreeMap<String, String>,
}

impl std::fmt::Debug for CellBinder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CellBinder")
            .field("host", &self.host)
            .field("options", &self.options)
            .field("cells", &self.cells.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl CellBinder {
    /// A binder whose credentials name `host` (the router) and the instance's port, reaching
    /// the instances' nodes through `cells` (by cell name).
    pub fn new(
        host: impl Into<String>,
        cells: BTreeMap<String, CellClient>,
        options: BinderOptions,
    ) -> CellBinder {
        CellBinder {
            host: host.into(),
            options,
            cells,
            node_hosts: BTreeMap::new(),
        }
    }

    /// Names each cell's host (by cell name) in the bindings' multi-host URIs; without it
    /// they have none.
    pub fn with_node_hosts(mut self, hosts: BTreeMap<String, String>) -> CellBinder {
        self.node_hosts = hosts;
        self
    }

    /// The binder of a broker's configuration (its cells, over TLS, and its router host).
    pub fn from_config(config: &crate::BrokerConfig) -> Result<CellBinder, ClientError> {
        let mut cells = BTreeMap::new();
        for c in &config.cells {
            cells.insert(
                c.name.clone(),
                CellClient::new(&c.url, c.token.clone(), config.tls.as_ref())?,
            );
        }
        let hosts = config
            .cells
            .iter()
            .map(|c| (c.name.clone(), c.node_host()))
            .collect();
        Ok(
            CellBinder::new(config.router.host.clone(), cells, BinderOptions::default())
                .with_node_hosts(hosts),
        )
    }

    /// The options.
    pub fn options(&self) -> &BinderOptions {
        &self.options
    }

    /// The cell and name of the instance's leader, as its cells report it.
    async fn leader<'a>(
        &'a self,
        instance: &'a InstanceRecord,
    ) -> Result<(&'a CellClient, &'a str), BindError> {
        for n in &instance.nodes {
            let Some(cell) = self.cells.get(&n.cell) else {
                continue;
            };
            if let Ok(Some(s)) = cell.node(&n.name).await {
                if s.is_leader() {
                    return Ok((cell, &n.name));
                }
            }
        }
        Err(BindError::new(format!(
            "instance {} has no leader now (failover in progress?)",
            instance.id
        )))
    }

    async fn retrying<T, F, Fut>(&self, what: &str, f: F) -> Result<T, BindError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, BindError>>,
    {
        // A second apart, as a failover moves the leader within seconds.
        let pace = Backoff::new(Duration::from_secs(1), Duration::from_secs(1));
        retry(pace, self.options.attempts, what, f).await
    }
}

fn cell_err(what: &'static str) -> impl FnOnce(ClientError) -> BindError {
    move |e| BindError {
        message: format!("{what}: {e}"),
        source: Some(Box::new(e)),
    }
}

impl crate::windows::LeaderWal for CellBinder {
    fn current_lsn<'a>(
        &'a self,
        inst: &'a InstanceRecord,
    ) -> BoxFuture<'a, Option<walarchive::Lsn>> {
        Box::pin(async move {
            let (cell, name) = self.leader(inst).await.ok()?;
            let w = cell.wal(name).await.ok()?;
            if w.in_recovery {
                return None;
            }
            w.lsn.parse().ok()
        })
    }
}

impl crate::api::CellMajors for CellBinder {
    fn cell_majors(&self) -> BoxFuture<'_, Vec<crate::api::CellMajorsAnswer>> {
        Box::pin(async move {
            let asks = self.cells.iter().map(|(name, c)| async move {
                let majors = c
                    .report()
                    .await
                    .map(|r| r.majors.keys().filter_map(|m| m.parse().ok()).collect())
                    .map_err(|e| e.to_string());
                (name.clone(), majors)
            });
            futures::future::join_all(asks).await
        })
    }
}

impl Binder for CellBinder {
    fn bind<'a>(
        &'a self,
        instance: &'a InstanceRecord,
        binding_id: &'a str,
    ) -> BoxFuture<'a, Result<Credentials, BindError>> {
        Box::pin(async move {
            let (role, req, password) = new_role(&self.options, instance, binding_id);
            self.retrying("bind", || async {
                let (cell, node) = self.leader(instance).await?;
                cell.put_role(node, &role, &req)
                    .await
                    .map_err(cell_err("creating the binding's role"))
            })
            .await?;
            info!(instance = %instance.id, binding = %binding_id, role = %role, "binding role ready");
            let mut creds = credentials(
                &self.host,
                instance.port,
                &self.options.database,
                &role,
                password.expose(),
            );
            if let Some(ro) = instance.read_only_port {
                add_read_only(&mut creds, ro);
            }
            // The nodes as placed now (a node added or replaced later is not in it).
            let nodes: Vec<(String, u16)> = instance
                .nodes
                .iter()
                .filter(|n| n.pg_port != 0)
                .filter_map(|n| Some((self.node_hosts.get(&n.cell)?.clone(), n.pg_port)))
                .collect();
            add_multihost(&mut creds, &nodes);
            Ok(creds)
        })
    }

    fn unbind<'a>(
        &'a self,
        instance: &'a InstanceRecord,
        binding_id: &'a str,
    ) -> BoxFuture<'a, Result<(), BindError>> {
        Box::pin(async move {
            let role = role_name(binding_id);
            self.retrying("unbind", || async {
                let (cell, node) = self.leader(instance).await?;
                cell.delete_role(node, &role, &self.options.group_role)
                    .await
                    .map_err(cell_err("dropping the binding's role"))
            })
            .await?;
            info!(instance = %instance.id, binding = %binding_id, "binding role dropped");
            Ok(())
        })
    }
}
