//! `GET /v1/nodes/{name}/stats`: what the broker's sampler (`crate::sampler`) needs of a node
//! for the dashboard and `/metrics`, read over the node's Unix socket as the superuser and from
//! Patroni's REST API on this machine.
//!
//! Raw figures only: counters stay counters (the broker turns them into rates between two
//! samples, where it also sees a counter reset), times are the server's, and the archive lag is
//! left to the broker to derive from the figures here (`crate::stats`, which documents it).
//! One query per concern, so a failing view costs that concern only; nothing the request
//! carries becomes SQL text (the node name selects the node, and the database name is bound).

use serde::{Deserialize, Serialize};
use tracing::warn;

use super::{pg_error, Agent, Error};

/// The database every instance's bindings use (`crate::binder`).
const APP_DATABASE: &str = "app";

/// A node's statistics (`GET /v1/nodes/{name}/stats`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeStats {
    /// The server's clock when read (seconds since the epoch).
    pub server_time: f64,
    /// When the postmaster started (seconds since the epoch): a later start than the previous
    /// sample's means the counters below restarted.
    pub postmaster_start: f64,
    /// `pg_is_in_recovery()`.
    pub in_recovery: bool,
    /// The timeline (Patroni's view, else the last checkpoint's).
    pub timeline: Option<u32>,
    /// `pg_current_wal_lsn()` on a primary.
    pub current_lsn: Option<String>,
    /// `pg_last_wal_receive_lsn()` on a standby.
    pub receive_lsn: Option<String>,
    /// `pg_last_wal_replay_lsn()` on a standby.
    pub replay_lsn: Option<String>,
    /// The segment being written (`pg_walfile_name(pg_current_wal_lsn())`) on a primary.
    pub current_wal_file: Option<String>,
    /// `archive_timeout` in seconds (0: off).
    pub archive_timeout_seconds: u64,
    /// `max_connections`.
    pub max_connections: u32,
    /// Client backends connected (this reading's own session left out).
    pub connections: u32,
    /// `pg_database_size` of the `app` database (none before it exists).
    pub app_database_bytes: Option<u64>,
    /// `pg_database_size` of every database together.
    pub total_database_bytes: u64,
    /// `xact_commit + xact_rollback` of every database (a counter).
    pub xact_total: u64,
    /// `blks_hit` of every database (a counter).
    pub blks_hit: u64,
    /// `blks_read` of every database (a counter).
    pub blks_read: u64,
    /// `pg_stat_archiver` and the archive status flags, on a primary.
    pub archiver: Option<ArchiverStats>,
    /// `pg_stat_replication`, on a primary.
    pub replication: Vec<ReplicationStats>,
    /// Patroni's view of the member (`GET /patroni`): role and state.
    pub patroni_role: Option<String>,
    /// Patroni's state of the member (`running`, `streaming`, ...).
    pub patroni_state: Option<String>,
    /// Patroni's `GET /history` (changes of leader), when this node leads.
    pub history: Vec<HistoryEntry>,
}

/// `pg_stat_archiver` plus the flags in `pg_wal/archive_status`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ArchiverStats {
    /// Files archived.
    pub archived_count: u64,
    /// The last file archived.
    pub last_archived_wal: Option<String>,
    /// When (seconds since the epoch).
    pub last_archived_time: Option<f64>,
    /// Failed attempts.
    pub failed_count: u64,
    /// The last file that failed.
    pub last_failed_wal: Option<String>,
    /// When (seconds since the epoch).
    pub last_failed_time: Option<f64>,
    /// Completed files waiting for the archiver (`.ready` flags).
    pub ready_count: u64,
    /// When the oldest of them was completed (its flag's modification time, seconds since the
    /// epoch): the start of the archive lag.
    pub oldest_ready_time: Option<f64>,
}

/// One row of `pg_stat_replication`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReplicationStats {
    /// `application_name`: the standby's Patroni member name.
    pub application_name: String,
    /// `state` (`streaming`, `catchup`, ...).
    pub state: Option<String>,
    /// `sync_state` (`sync`, `async`, ...).
    pub sync_state: Option<String>,
    /// `pg_current_wal_lsn() - replay_lsn` in bytes.
    pub lag_bytes: Option<u64>,
    /// `replay_lag` in seconds (none when the standby is idle and caught up).
    pub replay_lag_seconds: Option<f64>,
}

/// One line of Patroni's `GET /history`: `[timeline, lsn, reason, timestamp, new_leader]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// The timeline that ended.
    pub timeline: u32,
    /// Where (Patroni's integer LSN).
    pub lsn: u64,
    /// Why.
    pub reason: Option<String>,
    /// When (Patroni's ISO 8601 text).
    pub at: Option<String>,
    /// Who led after.
    pub new_leader: Option<String>,
}

/// Patroni's history lines, leniently (fields it did not write stay none).
fn parse_history(v: &serde_json::Value) -> Vec<HistoryEntry> {
    let Some(lines) = v.as_array() else {
        return Vec::new();
    };
    lines
        .iter()
        .filter_map(|l| {
            let l = l.as_array()?;
            let text = |i: usize| l.get(i).and_then(|x| x.as_str()).map(str::to_string);
            Some(HistoryEntry {
                timeline: u32::try_from(l.first()?.as_u64()?).ok()?,
                lsn: l.get(1).and_then(serde_json::Value::as_u64).unwrap_or(0),
                reason: text(2),
                at: text(3),
                new_leader: text(4),
            })
        })
        .collect()
}

fn to_u64(v: Option<i64>) -> Option<u64> {
    v.and_then(|v| u64::try_from(v).ok())
}

impl Agent {
    /// `GET /v1/nodes/{name}/stats`.
    pub(super) async fn node_stats(&self, name: &str) -> Result<NodeStats, Error> {
        let node = self.node(name)?;
        let api_port = node.record().ports.api_port;
        let db = self.local_superuser(name, "postgres").await?;
        let err = |what: &str, e: &tokio_postgres::Error| {
            // The server's message stays in this agent's log.
            warn!(node = name, "reading {what}: {e:?}");
            pg_error(name, format!("reading {what} of {name}"), e)
        };
        let row = db
            .query_one(
                "select extract(epoch from clock_timestamp())::float8,
                        extract(epoch from pg_postmaster_start_time())::float8,
                        pg_is_in_recovery(),
                        (select timeline_id from pg_control_checkpoint()),
                        case when pg_is_in_recovery() then null else pg_current_wal_lsn()::text end,
                        pg_last_wal_receive_lsn()::text,
                        pg_last_wal_replay_lsn()::text,
                        case when pg_is_in_recovery() then null
                             else pg_walfile_name(pg_current_wal_lsn()) end,
                        (select setting::int8 from pg_settings where name = 'archive_timeout'),
                        (select setting::int8 from pg_settings where name = 'max_connections')",
                &[],
            )
            .await
            .map_err(|e| err("the position", &e))?;
        let in_recovery: bool = row.get(2);
        let mut stats = NodeStats {
            server_time: row.get(0),
            postmaster_start: row.get(1),
            in_recovery,
            timeline: row
                .get::<_, Option<i32>>(3)
                .and_then(|t| u32::try_from(t).ok()),
            current_lsn: row.get(4),
            receive_lsn: row.get(5),
            replay_lsn: row.get(6),
            current_wal_file: row.get(7),
            archive_timeout_seconds: to_u64(row.get(8)).unwrap_or(0),
            max_connections: to_u64(row.get(9)).unwrap_or(0) as u32,
            connections: 0,
            app_database_bytes: None,
            total_database_bytes: 0,
            xact_total: 0,
            blks_hit: 0,
            blks_read: 0,
            archiver: None,
            replication: Vec::new(),
            patroni_role: None,
            patroni_state: None,
            history: Vec::new(),
        };
        let row = db
            .query_one(
                "select (select sum(pg_database_size(oid))::int8 from pg_database
                         where datallowconn),
                        (select pg_database_size(oid) from pg_database where datname = $1)",
                &[&APP_DATABASE],
            )
            .await
            .map_err(|e| err("the database sizes", &e))?;
        stats.total_database_bytes = to_u64(row.get(0)).unwrap_or(0);
        stats.app_database_bytes = to_u64(row.get(1));
        let row = db
            .query_one(
                "select (select count(*) from pg_stat_activity
                         where backend_type = 'client backend' and pid <> pg_backend_pid()),
                        coalesce(sum(xact_commit + xact_rollback), 0)::int8,
                        coalesce(sum(blks_hit), 0)::int8,
                        coalesce(sum(blks_read), 0)::int8
                 from pg_stat_database",
                &[],
            )
            .await
            .map_err(|e| err("the activity", &e))?;
        stats.connections = to_u64(row.get(0)).unwrap_or(0) as u32;
        stats.xact_total = to_u64(row.get(1)).unwrap_or(0);
        stats.blks_hit = to_u64(row.get(2)).unwrap_or(0);
        stats.blks_read = to_u64(row.get(3)).unwrap_or(0);
        if !in_recovery {
            let row = db
                .query_one(
                    "select archived_count, last_archived_wal,
                            extract(epoch from last_archived_time)::float8,
                            failed_count, last_failed_wal,
                            extract(epoch from last_failed_time)::float8,
                            (select count(*) from pg_ls_archive_statusdir()
                             where name like '%.ready'),
                            (select extract(epoch from min(modification))::float8
                             from pg_ls_archive_statusdir() where name like '%.ready')
                     from pg_stat_archiver",
                    &[],
                )
                .await
                .map_err(|e| err("the archiver's state", &e))?;
            stats.archiver = Some(ArchiverStats {
                archived_count: to_u64(row.get(0)).unwrap_or(0),
                last_archived_wal: row.get(1),
                last_archived_time: row.get(2),
                failed_count: to_u64(row.get(3)).unwrap_or(0),
                last_failed_wal: row.get(4),
                last_failed_time: row.get(5),
                ready_count: to_u64(row.get(6)).unwrap_or(0),
                oldest_ready_time: row.get(7),
            });
            let rows = db
                .query(
                    "select coalesce(application_name, ''), state, sync_state,
                            pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::int8,
                            extract(epoch from replay_lag)::float8
                     from pg_stat_replication order by 1",
                    &[],
                )
                .await
                .map_err(|e| err("the replication", &e))?;
            stats.replication = rows
                .iter()
                .map(|r| ReplicationStats {
                    application_name: r.get(0),
                    state: r.get(1),
                    sync_state: r.get(2),
                    lag_bytes: to_u64(r.get(3)),
                    replay_lag_seconds: r.get(4),
                })
                .collect();
        }
        drop(db);
        if let Some(p) = self.patroni_state(api_port).await {
            let text = |k: &str| p.get(k).and_then(|x| x.as_str()).map(str::to_string);
            stats.patroni_role = text("role");
            stats.patroni_state = text("state");
            if let Some(t) = p.get("timeline").and_then(serde_json::Value::as_u64) {
                stats.timeline = u32::try_from(t).ok();
            }
        }
        if !in_recovery {
            stats.history = self.patroni_history(api_port).await;
        }
        Ok(stats)
    }

    /// Patroni's `GET /history` (empty when it does not answer).
    async fn patroni_history(&self, api_port: u16) -> Vec<HistoryEntry> {
        let resp = self
            .http
            .get(format!("http://127.0.0.1:{api_port}/history"))
            .timeout(std::time::Duration::from_secs(2))
            .send()
            .await;
        let Ok(bytes) = (match resp {
            Ok(r) => r.bytes().await,
            Err(e) => Err(e),
        }) else {
            return Vec::new();
        };
        serde_json::from_slice(&bytes)
            .map(|v| parse_history(&v))
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_lines() {
        let v = serde_json::json!([
            [
                1,
                25623960,
                "no recovery target specified",
                "2026-12-07T10:12:13.456789+00:00",
                "n-1"
            ],
            [
                2,
                50331808,
                "no recovery target specified",
                "2026-12-07T11:00:00+00:00"
            ],
            ["bad"]
        ]);
        let h = parse_history(&v);
        assert_eq!(h.len(), 2);
        assert_eq!(h[0].timeline, 1);
        assert_eq!(h[0].lsn, 25623960);
        assert_eq!(h[0].new_leader.as_deref(), Some("n-1"));
        assert_eq!(h[1].new_leader, None);
        assert!(parse_history(&serde_json::json!({"x": 1})).is_empty());
    }
}
