//! Red, amber or green for an instance, and why: what an operator scans the overview for.
//!
//! Four signals, each with its amber and red threshold from `[dashboard]`: the archive's age
//! (the current worst-case data loss), the largest replica lag, the newest backup's age, and
//! whether the last operation failed. The worst signal wins; an instance the sampler has not
//! seen yet is `unknown`, not green.

use chrono::{DateTime, Utc};

use crate::config::BrokerConfig;
use crate::state::{InstanceRecord, InstanceState, OperationRecord, OperationState};
use crate::stats::{InstanceSnapshot, RepositoryState};

/// An instance's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Level {
    /// Everything within its thresholds.
    Green,
    /// Not sampled yet.
    Unknown,
    /// Something past its amber threshold.
    Amber,
    /// Something past its red threshold, or a failed operation.
    Red,
}

impl Level {
    /// The CSS class and the word shown.
    pub(super) fn word(self) -> &'static str {
        match self {
            Level::Green => "green",
            Level::Unknown => "unknown",
            Level::Amber => "amber",
            Level::Red => "red",
        }
    }
}

/// What the health is computed from.
pub(super) struct Facts<'a> {
    pub record: &'a InstanceRecord,
    pub operation: Option<&'a OperationRecord>,
    pub snapshot: Option<&'a InstanceSnapshot>,
    pub repository: Option<&'a RepositoryState>,
}

impl Facts<'_> {
    /// The newest backup's end (the sampler's view of the repository, else the worker's
    /// record of its last backup).
    pub(super) fn last_backup(&self) -> Option<DateTime<Utc>> {
        let listed = self
            .repository
            .and_then(|r| r.backups.iter().filter_map(|b| b.stopped_at).max());
        listed.or(self.record.last_backup_at).map(|t| t.0)
    }

    /// The largest lag of a replica, in bytes.
    pub(super) fn max_replica_lag(&self) -> Option<u64> {
        self.snapshot?
            .nodes
            .iter()
            .filter(|n| n.role == "replica")
            .filter_map(|n| n.lag_bytes)
            .max()
    }

    /// The archive's age in seconds (the worst-case data loss).
    pub(super) fn archive_age(&self) -> Option<f64> {
        self.snapshot?.archive.as_ref()?.lag_seconds
    }
}

/// The level and the reasons for it (empty when green).
pub(super) fn assess(
    config: &BrokerConfig,
    f: &Facts<'_>,
    now: DateTime<Utc>,
) -> (Level, Vec<String>) {
    let d = &config.dashboard;
    let mut level = Level::Green;
    let mut why = Vec::new();
    let mut raise = |l: Level, reason: String| {
        level = level.max(l);
        why.push(reason);
    };
    if f.operation
        .is_some_and(|o| o.state == OperationState::Failed)
        || f.record.state == InstanceState::Failed
    {
        raise(Level::Red, "the last operation failed".into());
    }
    if matches!(
        f.record.state,
        InstanceState::Provisioning | InstanceState::Deprovisioning
    ) {
        raise(Level::Unknown, "not running yet".into());
        return (level, why);
    }
    let Some(snap) = f.snapshot else {
        raise(Level::Unknown, "not sampled yet".into());
        return (level, why);
    };
    let timeout = config.archive_timeout.0.as_secs_f64();
    let amber = d
        .archive_age_amber
        .map_or(2.0 * timeout, |h| h.0.as_secs_f64());
    let red = d
        .archive_age_red
        .map_or(10.0 * timeout, |h| h.0.as_secs_f64());
    match f.archive_age() {
        Some(a) if a > red => raise(
            Level::Red,
            format!("archive {} behind", super::render::duration(a)),
        ),
        Some(a) if a > amber => raise(
            Level::Amber,
            format!("archive {} behind", super::render::duration(a)),
        ),
        Some(_) => {}
        None => raise(Level::Amber, "archiving unknown".into()),
    }
    if snap.leader.is_none() {
        raise(Level::Red, "no leader".into());
    }
    let down = snap.nodes.iter().filter(|n| n.role == "unknown").count();
    if down > 0 {
        raise(Level::Amber, format!("{down} node(s) not answering"));
    }
    match f.max_replica_lag() {
        Some(l) if l > d.replica_lag_red_bytes => raise(
            Level::Red,
            format!("replica {} behind", super::render::bytes(l)),
        ),
        Some(l) if l > d.replica_lag_amber_bytes => raise(
            Level::Amber,
            format!("replica {} behind", super::render::bytes(l)),
        ),
        _ => {}
    }
    match f.last_backup() {
        Some(t) => {
            let age = (now - t).num_seconds().max(0) as u64;
            if age > d.backup_age_red.0.as_secs() {
                raise(
                    Level::Red,
                    format!("last backup {} ago", super::render::duration(age as f64)),
                );
            } else if age > d.backup_age_amber.0.as_secs() {
                raise(
                    Level::Amber,
                    format!("last backup {} ago", super::render::duration(age as f64)),
                );
            }
        }
        None => raise(Level::Red, "no backup".into()),
    }
    (level, why)
}
