//! What Patroni says of an instance's nodes, as seen through their cells.
//!
//! A pass decides from this alone whether the cluster is there yet: a leader, and every
//! other recorded node streaming from it. The same view gives the progress text that
//! `last_operation` shows ("leader running; replicas streaming, starting").

use super::Inner;
use crate::cell::NodeStatus;
use crate::state::{InstanceRecord, NodePlacement};

/// Patroni `members` and replication as seen from the cells.
pub(super) struct Observed {
    /// Per recorded node: its status, when its cell answered and has it.
    status: Vec<(NodePlacement, Option<NodeStatus>)>,
}

impl Observed {
    pub(super) fn leader(&self) -> Option<&NodeStatus> {
        self.status
            .iter()
            .filter_map(|(_, s)| s.as_ref())
            .find(|s| s.is_leader())
    }

    /// Whether the leader streams to `name`.
    pub(super) fn streams(&self, name: &str) -> bool {
        self.leader().is_some_and(|l| streams_to(l, name))
    }

    /// True when there is a leader and every other node streams from it.
    pub(super) fn healthy(&self) -> bool {
        let Some(leader) = self.leader() else {
            return false;
        };
        self.status
            .iter()
            .all(|(p, _)| p.name == leader.name || streams_to(leader, &p.name))
    }

    /// "leader running; replicas streaming, starting" (in the manner of the issue).
    pub(super) fn describe(&self) -> String {
        let state = |s: &Option<NodeStatus>| -> String {
            match s {
                None => "creating".into(),
                Some(s) if !s.running => "stopped".into(),
                Some(s) => s.pg_state().unwrap_or("starting").replace(' ', "-"),
            }
        };
        let leader = self.leader().map(|l| l.name.clone());
        let mut parts = Vec::new();
        let replicas: Vec<String> = self
            .status
            .iter()
            .filter(|(p, _)| Some(&p.name) != leader.as_ref())
            .map(|(p, s)| {
                if self.streams(&p.name) {
                    "streaming".to_string()
                } else {
                    state(s)
                }
            })
            .collect();
        match &leader {
            Some(_) => parts.push("leader running".to_string()),
            None => parts.push("no leader yet".to_string()),
        }
        if !replicas.is_empty() {
            let label = if leader.is_some() {
                "replicas"
            } else {
                "nodes"
            };
            parts.push(format!("{label} {}", replicas.join(", ")));
        }
        parts.join("; ")
    }
}

/// Whether `leader` reports `replica` as a streaming standby.
fn streams_to(leader: &NodeStatus, replica: &str) -> bool {
    leader
        .patroni
        .as_ref()
        .and_then(|p| p.get("replication"))
        .and_then(|r| r.as_array())
        .is_some_and(|reps| {
            reps.iter().any(|r| {
                r.get("application_name").and_then(|v| v.as_str()) == Some(replica)
                    && r.get("state").and_then(|v| v.as_str()) == Some("streaming")
            })
        })
}

impl Inner {
    /// Asks each recorded node's cell for its status (none when the cell does not answer
    /// or has no such node).
    pub(super) async fn observe(&self, inst: &InstanceRecord) -> Observed {
        let futs = inst.nodes.iter().map(|n| async move {
            let s = match self.cell(&n.cell) {
                Some(c) => c.client.node(&n.name).await.ok().flatten(),
                None => None,
            };
            (n.clone(), s)
        });
        Observed {
            status: futures::future::join_all(futs).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn placed(name: &str, cell: &str, zone: &str) -> NodePlacement {
        NodePlacement {
            name: name.into(),
            cell: cell.into(),
            zone: zone.into(),
            pg_port: 0,
            api_port: 0,
        }
    }

    #[test]
    fn progress_descriptions() {
        let leader = NodeStatus {
            name: "n0".into(),
            instance_id: "i".into(),
            running: true,
            pid: Some(1),
            restarts: 0,
            ports: crate::cell::NodePorts {
                pg_port: 1,
                api_port: 2,
            },
            patroni: Some(serde_json::json!({
                "role": "master", "state": "running",
                "replication": [{"application_name": "n1", "state": "streaming"}]
            })),
            restore: None,
        };
        let mut starting = leader.clone();
        starting.name = "n2".into();
        starting.patroni = Some(serde_json::json!({"role": "replica", "state": "starting"}));
        let mut stopped = starting.clone();
        stopped.name = "n1".into();
        stopped.running = false;
        let seen = Observed {
            status: vec![
                (placed("n0", "a", "za"), Some(leader.clone())),
                (placed("n2", "b", "zb"), Some(starting)),
                (placed("n3", "c", "zc"), Some(stopped)),
            ],
        };
        assert_eq!(
            seen.describe(),
            "leader running; replicas starting, stopped"
        );
        assert!(!seen.healthy());
        let seen = Observed {
            status: vec![
                (placed("n0", "a", "za"), Some(leader)),
                (placed("n1", "b", "zb"), None),
            ],
        };
        assert_eq!(seen.describe(), "leader running; replicas streaming");
        assert!(seen.healthy());
        let seen = Observed {
            status: vec![(placed("n0", "a", "za"), None)],
        };
        assert_eq!(seen.describe(), "no leader yet; nodes creating");
    }
}
