//! This broker host's HAProxy: the routes of every instance, and whether one works.
//!
//! The routes are computed from etcd alone on every pass (and after every operation), so a
//! restarted broker keeps routing and a HAProxy that died is started again; whether a route
//! works is asked through the router itself, as a client would.
//!
//! The same pass gives every routed instance without one its read-only port (new
//! instances, and those recorded before read-only ports existed): one place, so an instance
//! gets it however it came to lack it, and before its route is written.

use std::collections::HashMap;
use std::time::Duration;

use tracing::{info, warn};

use super::Inner;
use crate::router::{Backend, Route};
use crate::state::{InstanceRecord, InstanceState};

/// The routes of every instance that has nodes and is not being (or was not) deleted, but
/// not of a clone whose source's roles are not removed yet.
pub fn routes(instances: &[InstanceRecord], cell_hosts: &HashMap<String, String>) -> Vec<Route> {
    instances
        .iter()
        .filter(|i| {
            !matches!(
                i.state,
                InstanceState::Deprovisioning | InstanceState::Deleted
            )
        })
        // A clone is routed only once no credential of its source opens it (design §2.6).
        .filter(|i| i.restore.as_ref().is_none_or(|r| r.roles_removed))
        .filter_map(|i| {
            let backends: Vec<Backend> = i
                .nodes
                .iter()
                .filter(|n| n.pg_port != 0)
                .filter_map(|n| {
                    Some(Backend {
                        name: n.name.clone(),
                        host: cell_hosts.get(&n.cell)?.clone(),
                        pg_port: n.pg_port,
                        api_port: n.api_port,
                    })
                })
                .collect();
            (!backends.is_empty()).then(|| Route {
                name: crate::names::path_name(&i.id),
                port: i.port,
                read_only_port: i.read_only_port,
                backends,
            })
        })
        .collect()
}

/// Whether `i` is routed (or will be) and has no read-only port yet.
fn needs_read_only_port(i: &InstanceRecord) -> bool {
    i.read_only_port.is_none()
        && !matches!(
            i.state,
            InstanceState::Deprovisioning | InstanceState::Deleted
        )
}

impl Inner {
    /// Makes HAProxy serve the routes of every instance recorded in etcd.
    pub(super) async fn sync_router(&self) -> Result<(), String> {
        let mut instances: Vec<InstanceRecord> = self
            .store
            .instances()
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|v| v.value)
            .collect();
        for i in instances.iter_mut().filter(|i| needs_read_only_port(i)) {
            let range = self.config.router.port_min..=self.config.router.port_max;
            match self.store.give_read_only_port(&i.id, range).await {
                Ok(Some(p)) => {
                    info!(instance = %i.id, read_only_port = p, "read-only port given");
                    i.read_only_port = Some(p);
                }
                Ok(None) => {}
                Err(e) => warn!(instance = %i.id, "no read-only port for the instance: {e}"),
            }
        }
        let hosts: HashMap<String, String> = self
            .cells
            .iter()
            .map(|c| (c.name.clone(), c.host.clone()))
            .collect();
        let routes = routes(&instances, &hosts);
        let mut router = self.router.lock().await;
        match router.apply(&routes).await {
            Ok(true) => {
                info!(routes = routes.len(), "router updated");
                Ok(())
            }
            Ok(false) => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Whether the router port leads to a PostgreSQL server. HAProxy forwards only to the
    /// node Patroni reports as the primary and closes the connection without one, so a server
    /// answering an SSLRequest through it (one byte, `S` or `N`, before any authentication)
    /// is the primary. No credentials: the superuser is not reachable through the router,
    /// by design.
    pub(super) async fn route_works(&self, inst: &InstanceRecord) -> bool {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let host = match self.config.router.bind_address.as_str() {
            "0.0.0.0" | "" => "127.0.0.1".to_string(),
            "::" => "::1".to_string(),
            h => h.to_string(),
        };
        let attempt = async {
            let mut s = tokio::net::TcpStream::connect((host.as_str(), inst.port))
                .await
                .ok()?;
            // SSLRequest: length 8, code 80877103.
            s.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])
                .await
                .ok()?;
            let mut b = [0u8; 1];
            s.read_exact(&mut b).await.ok()?;
            matches!(b[0], b'S' | b'N').then_some(())
        };
        matches!(
            tokio::time::timeout(Duration::from_secs(5), attempt).await,
            Ok(Some(()))
        )
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn routes_of_hostile_ids_have_distinct_names() {
        let ids = ["a/b", "a_b", ".", "..", "a b", "a.b"];
        let instances: Vec<InstanceRecord> = ids
            .iter()
            .enumerate()
            .map(|(k, id)| {
                serde_json::from_value(serde_json::json!({
                    "id": id, "service_id": "s", "plan_id": "p", "parameters": {},
                    "node_count": 1, "context": {"organization_guid": "o", "space_guid": "s"},
                    "port": 30000 + k, "repository": "file:///r", "state": "ready",
                    "nodes": [{"name": format!("n{k}"), "cell": "c", "zone": "z",
                               "pg_port": 1, "api_port": 2}],
                    "created_at": "2026-01-01T00:00:00.000Z",
                    "updated_at": "2026-01-01T00:00:00.000Z",
                }))
                .unwrap()
            })
            .collect();
        let hosts = HashMap::from([("c".to_string(), "127.0.0.1".to_string())]);
        let names: HashSet<String> = routes(&instances, &hosts)
            .into_iter()
            .map(|r| r.name)
            .collect();
        assert_eq!(names.len(), ids.len(), "{names:?}");
        let cfg = crate::router::render(&routes(&instances, &hosts), &Default::default());
        assert!(
            cfg.contains("listen pg__a_2Fb\n") && cfg.contains("listen pg_a_b\n"),
            "{cfg}"
        );
    }
}
