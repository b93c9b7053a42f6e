//! Real WAL for tests that drive walarchive without a server in front of it.

use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use crate::*;

/// Real WAL segments (1 MiB, the harness's default size), written by a PostgreSQL cluster
/// of their own and collected by `cp` as its archive_command. Building one takes a few
/// seconds: keep it in a `static OnceLock` to share it between the tests of a binary.
pub struct WalSource {
    /// The cluster that wrote them; it keeps running (a static is never dropped; its
    /// watchdog stops it when the test process ends).
    pub cluster: PgCluster,
    /// The directory holding the collected files (owned by postgres).
    pub dir: TestDir,
    /// The names of the collected segments, sorted.
    pub segments: Vec<String>,
    /// The cluster's system identifier, as `pg_control_system()` shows it.
    pub system_identifier: String,
}

impl WalSource {
    /// Writes WAL in `switches` steps (step `i` inserts `rows_per_step * (i + 1)` rows, then
    /// switches to a new segment) and waits until every step's segment is collected: at
    /// least `switches` segments.
    pub fn collect(switches: u32, rows_per_step: u32) -> WalSource {
        let dir = TestDir::new_postgres("walarchive-src-");
        let cluster = PgCluster::init(PgOptions {
            extra_conf: format!(
                "archive_mode = on\narchive_command = 'cp %p {}/%f'\n",
                dir.path().display()
            ),
            ..Default::default()
        });
        cluster.start();
        cluster.psql("create table t(id int, v text)");
        let mut last = String::new();
        for i in 0..switches {
            cluster.psql(&format!(
                "insert into t select g, md5(g::text) from generate_series(1, {}) g",
                rows_per_step * (i + 1)
            ));
            last = cluster.switch_wal();
        }
        cluster.wait_archived(&last, Duration::from_secs(60));
        let mut segments: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.len() == 24)
            .collect();
        segments.sort();
        assert!(segments.len() >= switches as usize, "{segments:?}");
        let system_identifier = cluster.psql("select system_identifier from pg_control_system()");
        WalSource {
            cluster,
            dir,
            segments,
            system_identifier,
        }
    }

    /// The collected file `name`.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The bytes of the collected file `name`.
    pub fn bytes(&self, name: &str) -> Vec<u8> {
        fs::read(self.path(name)).unwrap()
    }
}
