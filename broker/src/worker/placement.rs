//! Where an instance's nodes go, and what they are called.
//!
//! Cells are chosen, and the nodes' names recorded, in one compare-and-swap *before* any
//! node is created, so that a restarted worker or a deprovision finds every node a pass may
//! have created. Only cells that run the instance's PostgreSQL major; distinct cells always;
//! zones the instance does not use yet first, then the least loaded cells.

use std::collections::{HashMap, HashSet};

use sha2::{Digest, Sha256};
use tracing::info;

use super::{CellInfo, Inner, Step};
use crate::state::{InstanceRecord, InstanceState, NodePlacement, OperationRecord};

/// The Patroni member name of node `k` of an instance: readable, unique per instance id and
/// incarnation, and valid as a directory, member and slot name (at most 63 characters of
/// `[A-Za-z0-9_-]`).
pub fn node_name(instance_id: &str, incarnation: u32, k: usize) -> String {
    let mut readable: String = instance_id
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(40)
        .collect();
    if !readable.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        readable.insert(0, 'n');
    }
    let digest = Sha256::digest(format!("{instance_id}/{incarnation}").as_bytes());
    format!(
        "{readable}-{:02x}{:02x}{:02x}{:02x}-{k}",
        digest[0], digest[1], digest[2], digest[3]
    )
}

/// Chooses cells for `count` new nodes of an instance whose nodes are `existing`: distinct
/// cells always, zones the instance does not use yet first, then the least loaded cells
/// (`load`: nodes per cell over all instances), then by name for determinism.
pub(super) fn choose_cells<'a>(
    cells: &'a [CellInfo],
    load: &HashMap<String, usize>,
    existing: &[NodePlacement],
    count: usize,
) -> Result<Vec<&'a CellInfo>, String> {
    let mut used: HashSet<&str> = existing.iter().map(|p| p.cell.as_str()).collect();
    let mut zones: HashMap<&str, usize> = HashMap::new();
    for p in existing {
        *zones.entry(p.zone.as_str()).or_default() += 1;
    }
    let mut load = load.clone();
    let mut chosen = Vec::new();
    for _ in 0..count {
        let best = cells
            .iter()
            .filter(|c| !used.contains(c.name.as_str()))
            .min_by_key(|c| {
                (
                    zones.get(c.zone.as_str()).copied().unwrap_or(0),
                    load.get(&c.name).copied().unwrap_or(0),
                    c.name.clone(),
                )
            })
            .ok_or_else(|| {
                format!(
                    "Not enough cells: {} nodes need {} distinct cells, and {} are configured.",
                    existing.len() + count,
                    existing.len() + count,
                    cells.len()
                )
            })?;
        used.insert(&best.name);
        *zones.entry(best.zone.as_str()).or_default() += 1;
        *load.entry(best.name.clone()).or_default() += 1;
        chosen.push(best);
    }
    Ok(chosen)
}

impl Inner {
    /// The cells that may hold a node of major `major`: those that say they run it, and
    /// those that do not answer now (as before majors: creating the node there waits for
    /// them, and a cell without the major refuses it).
    async fn cells_running(&self, major: u32) -> Vec<CellInfo> {
        let asks = self.cells.iter().map(|c| async move {
            match c.client.report().await {
                Ok(r) if !r.has(major) => {
                    info!(cell = %c.name, major, majors = ?r.majors.keys().collect::<Vec<_>>(),
                          "cell does not run this PostgreSQL major");
                    None
                }
                _ => Some(c.clone()),
            }
        });
        futures::future::join_all(asks)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    /// Nodes per cell over every live instance.
    async fn cell_load(&self) -> Result<HashMap<String, usize>, Step> {
        let mut load = HashMap::new();
        for i in self.store.instances().await? {
            if i.value.state == InstanceState::Deleted {
                continue;
            }
            for n in &i.value.nodes {
                *load.entry(n.cell.clone()).or_default() += 1;
            }
        }
        Ok(load)
    }

    /// Records cells for the nodes `inst` lacks to reach `target` nodes (before any is
    /// created, so that whatever a pass creates is recorded).
    pub(super) async fn place(
        &self,
        op: &OperationRecord,
        inst: &InstanceRecord,
        target: usize,
    ) -> Result<InstanceRecord, Step> {
        if inst.nodes.len() >= target {
            return Ok(inst.clone());
        }
        let load = self.cell_load().await?;
        let cells = self.cells_running(inst.major()).await;
        let chosen =
            choose_cells(&cells, &load, &inst.nodes, target - inst.nodes.len()).map_err(|e| {
                let lacking = self.cells.len() - cells.len();
                if lacking == 0 {
                    Step::Fail(e)
                } else {
                    Step::Fail(format!(
                        "{e} ({lacking} cell(s) do not run PostgreSQL {}.)",
                        inst.major()
                    ))
                }
            })?;
        let (ni, _) = self
            .store
            .transition(&op.instance_id, &op.id, |i, o| {
                let mut k = 0;
                for c in &chosen {
                    if i.nodes.len() >= target {
                        break;
                    }
                    if i.nodes.iter().any(|n| n.cell == c.name) {
                        continue;
                    }
                    let name = loop {
                        let n = node_name(&i.id, i.incarnation, k);
                        k += 1;
                        if !i.nodes.iter().any(|p| p.name == n) {
                            break n;
                        }
                    };
                    i.nodes.push(NodePlacement {
                        name,
                        cell: c.name.clone(),
                        zone: c.zone.clone(),
                        pg_port: 0,
                        api_port: 0,
                    });
                }
                o.description = format!("Placing {target} node(s).");
                Ok(())
            })
            .await?;
        info!(instance = %ni.id, nodes = ?ni.nodes.iter().map(|n| (&n.name, &n.cell)).collect::<Vec<_>>(),
              "nodes placed");
        Ok(ni)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cell::CellClient;
    use crate::secrets::Secret;

    fn cell(name: &str, zone: &str) -> CellInfo {
        CellInfo {
            name: name.into(),
            zone: zone.into(),
            host: "127.0.0.1".into(),
            client: CellClient::new("http://127.0.0.1:1", Secret::new("t"), None).unwrap(),
        }
    }

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
    fn placement_prefers_new_zones_then_light_cells() {
        let cells = [
            cell("a1", "za"),
            cell("a2", "za"),
            cell("b1", "zb"),
            cell("c1", "zc"),
        ];
        let mut load = HashMap::new();
        load.insert("b1".to_string(), 3);
        // Three nodes: three zones, even though b1 is loaded.
        let names: Vec<&str> = choose_cells(&cells, &load, &[], 3)
            .unwrap()
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(names, ["a1", "c1", "b1"]);
        // A fourth node of an instance on a1, b1, c1 goes to a2 (the only cell left).
        let existing = [
            placed("n0", "a1", "za"),
            placed("n1", "b1", "zb"),
            placed("n2", "c1", "zc"),
        ];
        let c = choose_cells(&cells, &load, &existing, 1).unwrap();
        assert_eq!(c[0].name, "a2");
        // More nodes than cells.
        assert!(choose_cells(&cells, &load, &existing, 2).is_err());
    }

    #[test]
    fn node_names_are_valid_and_distinct() {
        let a = node_name("inst-1", 1, 0);
        assert!(a.starts_with("inst-1-") && a.ends_with("-0"), "{a}");
        assert_ne!(a, node_name("inst-1", 2, 0));
        assert_ne!(a, node_name("inst.1", 1, 0));
        let long = node_name(&format!("~{}", "x".repeat(200)), 1, 4);
        assert!(crate::cell::valid_node_name(&long), "{long}");
    }
}
