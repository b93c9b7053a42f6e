//! What the sampler knows about instances and cells, as the dashboard and `/metrics` read it.
//!
//! Plain serde data (the contract between the `stats`, `dashboard` and `metrics` rooms): the
//! latest [`InstanceSnapshot`] per instance is kept in memory, a [`Sample`] per instance and
//! interval goes to the samples store for the charts.

use serde::{Deserialize, Serialize};

use crate::state::Timestamp;

/// What the broker last saw of one instance: its nodes, archiving, size and load.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceSnapshot {
    /// The instance's id (the platform's).
    pub instance_id: String,
    /// When it was taken (the broker's clock).
    pub at: Timestamp,
    /// The leader's node name, when one leads.
    pub leader: Option<String>,
    /// Every node of the instance, answered or not.
    pub nodes: Vec<NodeSnapshot>,
    /// The leader's archiving, when the leader answered.
    pub archive: Option<ArchiveState>,
    /// The size of the instance's `app` database (bytes).
    pub database_bytes: Option<u64>,
    /// The size of every database of the cluster together (bytes).
    #[serde(default)]
    pub total_database_bytes: Option<u64>,
    /// Client backends connected to the leader.
    pub connections: Option<u32>,
    /// The leader's `max_connections`.
    pub max_connections: Option<u32>,
    /// Transactions (commits and rollbacks) per second on the leader since the previous
    /// sample.
    pub tps: Option<f64>,
    /// Share of block reads served from shared buffers since the previous sample (0..=1).
    pub cache_hit_ratio: Option<f64>,
    /// Failovers and switchovers (Patroni's history), oldest first.
    pub failovers: Vec<Failover>,
    /// Why something is missing (no node answered, no leader), for people.
    pub error: Option<String>,
}

impl InstanceSnapshot {
    /// A snapshot of `instance_id` taken at `at` with nothing in it yet: no leader, nodes,
    /// figures, failovers or error.
    pub fn unmeasured(instance_id: String, at: Timestamp) -> InstanceSnapshot {
        InstanceSnapshot {
            instance_id,
            at,
            leader: None,
            nodes: Vec::new(),
            archive: None,
            database_bytes: None,
            total_database_bytes: None,
            connections: None,
            max_connections: None,
            tps: None,
            cache_hit_ratio: None,
            failovers: Vec::new(),
            error: None,
        }
    }
}

/// One node as last seen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeSnapshot {
    /// The node's name (`<instance name>-<n>`).
    pub name: String,
    /// The cell that runs it.
    pub cell: String,
    /// The cell's zone.
    pub zone: String,
    /// The host PostgreSQL listens on.
    pub host: String,
    /// PostgreSQL's port.
    pub pg_port: u16,
    /// `"leader"`, `"replica"` or `"unknown"` (its cell did not answer).
    pub role: String,
    /// Patroni's state of the member (`running`, `streaming`, `starting`, ...), or `unknown`.
    pub state: String,
    /// The timeline it is on.
    pub timeline: Option<u32>,
    /// How far its replay is behind the leader's current WAL position (bytes; 0 on the
    /// leader).
    pub lag_bytes: Option<u64>,
    /// The leader's `pg_stat_replication.replay_lag` for it (seconds; 0 on the leader).
    pub lag_seconds: Option<f64>,
    /// When its cell last answered for it.
    pub last_seen: Option<Timestamp>,
}

/// The leader's archiving (`pg_stat_archiver` and what the broker derives from it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArchiveState {
    /// The last WAL file archived successfully.
    pub last_archived_wal: Option<String>,
    /// When it was archived.
    pub last_archived_at: Option<Timestamp>,
    /// Files archived since the statistics were reset.
    pub archived_count: u64,
    /// Failed attempts since the statistics were reset.
    pub failed_count: u64,
    /// The last WAL file whose archiving failed.
    pub last_failed_wal: Option<String>,
    /// When that failed.
    pub last_failed_at: Option<Timestamp>,
    /// Archive lag in seconds: the age of the oldest completed WAL segment not yet archived, 0
    /// when all are (the current worst-case data loss; `sampler::derive`, docs/metrics.md).
    pub lag_seconds: Option<f64>,
    /// Seconds since the last segment was archived (grows on an idle server too).
    pub last_archived_age_seconds: Option<f64>,
    /// The leader's `archive_timeout` (seconds; 0: off).
    pub archive_timeout_seconds: Option<u64>,
}

/// A change of leader (one line of Patroni's `GET /history`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failover {
    /// The timeline that ended.
    pub timeline: u32,
    /// Where it ended (LSN as a number, as Patroni gives it).
    pub lsn: u64,
    /// When.
    pub at: Option<Timestamp>,
    /// Patroni's reason (`no recovery target specified`, ...).
    pub reason: Option<String>,
    /// The member that led after it.
    pub new_leader: Option<String>,
}

/// A completed base backup as the dashboard lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackupSummary {
    /// The backup's name in the repository.
    pub name: String,
    /// When it started.
    pub started_at: Option<Timestamp>,
    /// When it stopped.
    pub stopped_at: Option<Timestamp>,
    /// Its size (bytes of the data directory backed up).
    pub bytes: Option<u64>,
    /// `stopped_at - started_at`.
    pub duration_seconds: Option<f64>,
    /// The node that took it, when known.
    pub node: Option<String>,
}

/// Earliest and latest point a clone can target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RestorableWindow {
    /// The earliest point's LSN (text).
    pub earliest_lsn: String,
    /// The earliest point's time.
    pub earliest_at: Option<Timestamp>,
    /// The latest point's LSN (text).
    pub latest_lsn: String,
    /// The latest point's time (the last transaction's).
    pub latest_at: Option<Timestamp>,
}

/// What the instance's repository holds (refreshed every few minutes, not every sample).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RepositoryState {
    /// Completed backups, oldest first.
    pub backups: Vec<BackupSummary>,
    /// The restorable window, once a backup completed.
    pub window: Option<RestorableWindow>,
    /// When this was read.
    pub computed_at: Timestamp,
    /// Why something is missing, for people (no internals).
    pub error: Option<String>,
}

/// A cell's load, for the operator's overview.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CellLoad {
    /// The cell's name.
    pub name: String,
    /// Its zone.
    pub zone: String,
    /// Whether it answered the last time it was asked.
    pub up: bool,
    /// Nodes placed on it (from the broker's records).
    pub nodes: u32,
    /// Ports still free in its range (unknown when it did not answer).
    pub free_ports: Option<u32>,
    /// The PostgreSQL majors it runs (empty when it did not answer).
    pub majors: Vec<u32>,
}

/// One point of an instance's series (the charts).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// When.
    pub at: Timestamp,
    /// Archive lag (seconds; see [`ArchiveState::lag_seconds`]).
    pub archive_lag_seconds: Option<f64>,
    /// The largest replica lag (bytes).
    pub replication_lag_bytes: Option<u64>,
    /// The largest replica lag (seconds).
    pub replication_lag_seconds: Option<f64>,
    /// Transactions per second.
    pub tps: Option<f64>,
    /// Client connections.
    pub connections: Option<u32>,
    /// The `app` database's size (bytes).
    pub database_bytes: Option<u64>,
}
