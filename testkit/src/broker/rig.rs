//! A test's real cluster: the tests' etcd, a fresh root holding a copy of the walarchive
//! binary and a file repository, and cells started and ready.
//!
//! Why one place: every test that provisions on real cells began with the same dozen lines
//! (root, binary, repository, cells started then waited for, a [`BrokerToml`] naming each
//! cell in its zone, a fresh etcd prefix); written once here, each test only says what
//! differs.

use std::path::PathBuf;

use super::broker::BrokerToml;
use super::cells::{file_repository, test_root, walarchive_copy, Cell};
use super::etcd::{etcd, EtcdServer};

/// The cluster a test provisions on.
pub struct Rig {
    /// The tests' etcd.
    pub etcd: &'static EtcdServer,
    /// The test's directory ([`test_root`]).
    pub root: PathBuf,
    /// The copy of the walarchive binary the nodes run ([`walarchive_copy`]).
    pub bin: PathBuf,
    /// The file repository's base ([`file_repository`]).
    pub base: String,
    /// The cells, in the order named, each ready.
    pub cells: Vec<Cell>,
    /// Each cell's zone: `z` and its name.
    zones: Vec<String>,
}

impl Rig {
    /// Starts cells named `cells` under a fresh root for `kind`, then waits until each is
    /// ready (all are started before the first is waited for).
    pub async fn start(kind: &str, cells: &[&str]) -> Rig {
        let etcd = etcd();
        let root = test_root(kind);
        let bin = walarchive_copy(&root);
        let base = file_repository(&root);
        let cells: Vec<Cell> = cells.iter().map(|n| Cell::start(&root, n)).collect();
        for c in &cells {
            c.wait_ready().await;
        }
        let zones = cells.iter().map(|c| format!("z{}", c.name)).collect();
        Rig {
            etcd,
            root,
            bin,
            base,
            cells,
            zones,
        }
    }

    /// A broker configuration with files under the root, archiving into the repository,
    /// with every cell in its zone (`z` and its name).
    pub fn toml(&self) -> BrokerToml<'_> {
        let mut t = BrokerToml::new(&self.root, &self.base, &self.bin);
        t.cells = self
            .cells
            .iter()
            .zip(self.zones.iter().map(String::as_str))
            .collect();
        t
    }

    /// A fresh prefix for a broker's state in the tests' etcd.
    pub fn prefix(&self) -> String {
        format!("/broker{}", self.etcd.fresh_prefix())
    }
}
