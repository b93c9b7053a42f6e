//! From the cells' raw figures ([`NodeStats`]) to what people read: roles, lags, rates and the
//! archive lag. Pure functions, so that every rule here is unit-tested.
//!
//! **Archive lag** (`ArchiveState::lag_seconds`, the current worst-case data loss beyond the
//! segment being written): 0 when every completed WAL segment is archived; otherwise the time
//! since the oldest segment still waiting for the archiver was completed (the modification
//! time of its `.ready` flag in `pg_wal/archive_status`, which PostgreSQL writes when it
//! finishes the segment), on the leader's own clock. It grows while archiving fails and drops
//! to 0 once the archiver caught up. The WAL of the segment being written is not counted: it
//! is at most `archive_timeout` old when anything was written (PostgreSQL switches segments
//! then), so the data really at risk is bounded by the lag plus `archive_timeout`.
//!
//! **Last archived segment age** (`last_archived_age_seconds`): the time since
//! `pg_stat_archiver.last_archived_time`. On an idle server it grows without anything being
//! at risk; it is the figure to compare with `archive_timeout` on a busy one.
//!
//! **Rates** (`tps`, `cache_hit_ratio`): the difference of the leader's counters between two
//! samples of the same node, over the difference of its clock. A counter lower than before was
//! reset (a crash of PostgreSQL, a statistics reset): its increase is then its whole value, as
//! Prometheus's `rate` counts it. A sample from another node than the previous (a failover) has
//! no rate.

use chrono::{DateTime, TimeZone, Utc};

use crate::cell::client::{ArchiverStats, HistoryEntry, NodeStats};
use crate::state::{NodePlacement, Timestamp};
use crate::stats::{ArchiveState, Failover, InstanceSnapshot, NodeSnapshot, Sample};

/// What a node answered, or why it did not.
pub type NodeAnswer = Result<NodeStats, String>;

/// The counters of the previous sample of an instance's leader.
#[derive(Debug, Clone, PartialEq)]
pub struct Counters {
    /// The node they were read from.
    pub node: String,
    /// Its clock (seconds since the epoch).
    pub at: f64,
    /// `xact_commit + xact_rollback`.
    pub xact: u64,
    /// `blks_hit`.
    pub hit: u64,
    /// `blks_read`.
    pub read: u64,
}

impl Counters {
    /// The counters of `s`, read on `node`.
    pub fn of(node: &str, s: &NodeStats) -> Counters {
        Counters {
            node: node.to_string(),
            at: s.server_time,
            xact: s.xact_total,
            hit: s.blks_hit,
            read: s.blks_read,
        }
    }
}

/// A counter's increase from `prev` to `cur` (its whole value after a reset).
pub fn increase(prev: u64, cur: u64) -> u64 {
    if cur >= prev {
        cur - prev
    } else {
        cur
    }
}

/// Transactions per second and the cache hit ratio between two readings (none without a
/// previous reading of the same node, or when no time passed; no ratio without block reads).
pub fn rates(prev: Option<&Counters>, cur: &Counters) -> (Option<f64>, Option<f64>) {
    let Some(p) = prev.filter(|p| p.node == cur.node) else {
        return (None, None);
    };
    let dt = cur.at - p.at;
    if dt <= 0.0 {
        return (None, None);
    }
    let tps = increase(p.xact, cur.xact) as f64 / dt;
    let (hit, read) = (increase(p.hit, cur.hit), increase(p.read, cur.read));
    let ratio = (hit + read > 0).then(|| hit as f64 / (hit + read) as f64);
    (Some(tps), ratio)
}

/// Seconds since the epoch as a time.
pub fn epoch_time(secs: f64) -> Option<DateTime<Utc>> {
    if !secs.is_finite() {
        return None;
    }
    Utc.timestamp_millis_opt((secs * 1000.0).round() as i64)
        .single()
}

/// The archive state of a leader whose clock read `now` (seconds since the epoch).
pub fn archive_state(a: &ArchiverStats, now: f64, archive_timeout: u64) -> ArchiveState {
    let lag = match a.oldest_ready_time {
        Some(t) if a.ready_count > 0 => (now - t).max(0.0),
        _ => 0.0,
    };
    ArchiveState {
        last_archived_wal: a.last_archived_wal.clone(),
        last_archived_at: a.last_archived_time.and_then(epoch_time).map(Timestamp),
        archived_count: a.archived_count,
        failed_count: a.failed_count,
        last_failed_wal: a.last_failed_wal.clone(),
        last_failed_at: a.last_failed_time.and_then(epoch_time).map(Timestamp),
        lag_seconds: Some(lag),
        last_archived_age_seconds: a.last_archived_time.map(|t| (now - t).max(0.0)),
        archive_timeout_seconds: Some(archive_timeout),
    }
}

fn failover(h: &HistoryEntry) -> Failover {
    Failover {
        timeline: h.timeline,
        lsn: h.lsn,
        at: h
            .at
            .as_deref()
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| Timestamp(t.with_timezone(&Utc))),
        reason: h.reason.clone(),
        new_leader: h.new_leader.clone(),
    }
}

/// Whether Patroni's role (or, without Patroni's answer, recovery) makes a node the leader.
fn is_leader(s: &NodeStats) -> bool {
    match s.patroni_role.as_deref() {
        Some("master" | "primary") => !s.in_recovery,
        Some(_) => false,
        None => !s.in_recovery,
    }
}

fn lsn(text: Option<&str>) -> Option<u64> {
    text?.parse::<walarchive::Lsn>().ok().map(|l| l.0)
}

/// What the snapshot of an instance is made of.
pub struct Inputs<'a> {
    /// The instance's id.
    pub instance_id: &'a str,
    /// When the broker asked.
    pub at: DateTime<Utc>,
    /// Each node of the record, with the host its cell gives its nodes, and its answer.
    pub nodes: Vec<(&'a NodePlacement, String, NodeAnswer)>,
    /// The previous snapshot (for `last_seen` of nodes that did not answer now).
    pub previous: Option<&'a InstanceSnapshot>,
    /// The leader's counters at the previous sample.
    pub counters: Option<&'a Counters>,
}

/// The snapshot of an instance from its nodes' answers, and the leader's counters to keep for
/// the next one.
pub fn snapshot(i: Inputs<'_>) -> (InstanceSnapshot, Option<Counters>) {
    let leader = i
        .nodes
        .iter()
        .find_map(|(p, _, a)| a.as_ref().ok().filter(|s| is_leader(s)).map(|s| (p, s)));
    let leader_lsn = leader.and_then(|(_, s)| lsn(s.current_lsn.as_deref()));
    let seen_before = |name: &str| {
        i.previous
            .and_then(|p| p.nodes.iter().find(|n| n.name == name))
            .and_then(|n| n.last_seen)
    };
    let nodes = i
        .nodes
        .iter()
        .map(|(p, host, a)| {
            let mut n = NodeSnapshot {
                name: p.name.clone(),
                cell: p.cell.clone(),
                zone: p.zone.clone(),
                host: host.clone(),
                pg_port: p.pg_port,
                role: "unknown".into(),
                state: "unknown".into(),
                timeline: None,
                lag_bytes: None,
                lag_seconds: None,
                last_seen: seen_before(&p.name),
            };
            if let Ok(s) = a {
                n.last_seen = epoch_time(s.server_time).map(Timestamp);
                n.timeline = s.timeline;
                n.state = s.patroni_state.clone().unwrap_or_else(|| "unknown".into());
                if leader.is_some_and(|(lp, _)| lp.name == p.name) {
                    n.role = "leader".into();
                    n.lag_bytes = Some(0);
                    n.lag_seconds = Some(0.0);
                } else {
                    n.role = "replica".into();
                    let row = leader.and_then(|(_, l)| {
                        l.replication.iter().find(|r| r.application_name == p.name)
                    });
                    n.lag_bytes = row.and_then(|r| r.lag_bytes).or_else(|| {
                        let replayed = lsn(s.replay_lsn.as_deref())?;
                        Some(leader_lsn?.saturating_sub(replayed))
                    });
                    // PostgreSQL clears `replay_lag` once an idle standby caught up.
                    n.lag_seconds = row
                        .and_then(|r| r.replay_lag_seconds)
                        .or((row.is_some() && n.lag_bytes == Some(0)).then_some(0.0));
                }
            }
            n
        })
        .collect::<Vec<_>>();
    let answered = i.nodes.iter().filter(|(_, _, a)| a.is_ok()).count();
    let error = if i.nodes.is_empty() {
        Some("The instance has no nodes.".into())
    } else if answered == 0 {
        Some("No node answered.".into())
    } else if leader.is_none() {
        Some("No node leads.".into())
    } else {
        None
    };
    let mut snap = InstanceSnapshot {
        leader: leader.map(|(p, _)| p.name.clone()),
        nodes,
        error,
        ..InstanceSnapshot::unmeasured(i.instance_id.to_string(), Timestamp(i.at))
    };
    let Some((p, s)) = leader else {
        return (snap, None);
    };
    snap.archive = s
        .archiver
        .as_ref()
        .map(|a| archive_state(a, s.server_time, s.archive_timeout_seconds));
    snap.database_bytes = s.app_database_bytes;
    snap.total_database_bytes = Some(s.total_database_bytes);
    snap.connections = Some(s.connections);
    snap.max_connections = Some(s.max_connections);
    let counters = Counters::of(&p.name, s);
    (snap.tps, snap.cache_hit_ratio) = rates(i.counters, &counters);
    snap.failovers = s.history.iter().map(failover).collect();
    (snap, Some(counters))
}

/// The chart point of a snapshot: the worst replica's lag.
pub fn sample(s: &InstanceSnapshot) -> Sample {
    let replicas = || s.nodes.iter().filter(|n| n.role == "replica");
    Sample {
        at: s.at,
        archive_lag_seconds: s.archive.as_ref().and_then(|a| a.lag_seconds),
        replication_lag_bytes: replicas().filter_map(|n| n.lag_bytes).max(),
        replication_lag_seconds: replicas()
            .filter_map(|n| n.lag_seconds)
            .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x)))),
        tps: s.tps,
        connections: s.connections,
        database_bytes: s.database_bytes,
    }
}

#[cfg(test)]
mod tests;
