//! Target resolution: what PostgreSQL will stop at for a wanted target, or why it would
//! refuse (design §1.3). The rules are the `rule_*` functions, pure over the window and what
//! a scan of its WAL found; `resolve` only runs the scans they need.

use std::fmt;

use chrono::{DateTime, Utc};

use super::{scan_forward, BackupPoint, Error, Point, RecordKind, Window};
use crate::lsn::Lsn;
use crate::repo::Repository;
use crate::wal::TimelineId;

/// What is wanted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Wanted {
    /// The latest archived point.
    Latest,
    /// Every transaction committed at or before this time.
    Time(DateTime<Utc>),
    /// Up to this WAL position.
    Lsn(Lsn),
    /// The (newest) restore point of this name.
    RestorePoint(String),
}

/// The recovery setting to write: always one PostgreSQL stops at exactly.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Setting {
    /// `recovery_target_time`.
    Time(DateTime<Utc>),
    /// `recovery_target_lsn`.
    Lsn(Lsn),
}

impl Setting {
    /// The value as written for PostgreSQL (`2026-12-07 10:15:00.000000+00`; an LSN).
    pub fn postgres_value(&self) -> String {
        match self {
            Setting::Time(t) => t.format("%Y-%m-%d %H:%M:%S%.6f+00").to_string(),
            Setting::Lsn(l) => l.to_string(),
        }
    }

    /// The PostgreSQL setting's name.
    pub fn postgres_name(&self) -> &'static str {
        match self {
            Setting::Time(_) => "recovery_target_time",
            Setting::Lsn(_) => "recovery_target_lsn",
        }
    }
}

/// A target resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    /// The backup to restore.
    pub backup: String,
    /// `recovery_target_timeline`, only when recovery stops on a timeline other than the
    /// archive's newest (see [`stop_timeline`]).
    pub timeline: Option<u32>,
    /// The recovery target to write.
    pub recovery: Setting,
    /// What the restored cluster will hold: at least the WAL up to `expect.lsn`, the last
    /// transaction's time.
    pub expect: Point,
}

/// A restore point found in the window's WAL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestorePointAt {
    /// Its name.
    pub name: String,
    /// Where its record starts.
    pub lsn: Lsn,
    /// Its timeline.
    pub timeline: TimelineId,
    /// When it was created.
    pub time: DateTime<Utc>,
}

/// Why a target cannot be restored: one variant per refusal, each with what the caller
/// needs to word it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unrestorable {
    /// The target is before the earliest restorable point.
    #[error("{} is before the earliest restorable point, {} (the end of the oldest restorable base backup, LSN {})", describe(target, found.as_ref()), time(earliest.time), earliest.lsn)]
    BeforeEarliest {
        /// The target as wanted.
        target: Wanted,
        /// For a restore point, where the newest of its name is.
        found: Option<RestorePointAt>,
        /// The earliest point.
        earliest: Point,
    },
    /// A time after the last archived transaction (PostgreSQL would never reach it).
    #[error("time {} is after the last archived transaction ({}, LSN {}): later WAL is not archived yet", time(Some(*target)), time(latest.time), latest.lsn)]
    NotArchivedYet {
        /// The time wanted.
        target: DateTime<Utc>,
        /// The latest point.
        latest: Point,
    },
    /// An LSN past the end of the archived WAL.
    #[error("LSN {target} is past the end of the archived WAL (the last record starts at {})", latest.lsn)]
    PastEnd {
        /// The LSN wanted.
        target: Lsn,
        /// The latest point.
        latest: Point,
    },
    /// A target no backup's continuous WAL reaches (a hole in the archive before it).
    #[error("{} cannot be reached: the archived WAL has a hole before it (no backup's WAL continues past {reaches})", describe(target, None))]
    Gap {
        /// The target as wanted.
        target: Wanted,
        /// How far the WAL of the newest backup before it reaches.
        reaches: Lsn,
    },
    /// No restore point of that name in the window.
    #[error("no restore point named {name:?} in the restorable window ({} to {})", time(earliest.time), time(latest.time))]
    NoSuchRestorePoint {
        /// The name.
        name: String,
        /// The earliest point.
        earliest: Point,
        /// The latest point.
        latest: Point,
    },
}

/// The target as messages name it.
fn describe(w: &Wanted, found: Option<&RestorePointAt>) -> String {
    match (w, found) {
        (Wanted::Latest, _) => "the latest point".into(),
        (Wanted::Time(t), _) => format!("time {}", time(Some(*t))),
        (Wanted::Lsn(l), _) => format!("LSN {l}"),
        (Wanted::RestorePoint(n), Some(at)) => {
            format!(
                "restore point {n:?} ({}, LSN {})",
                time(Some(at.time)),
                at.lsn
            )
        }
        (Wanted::RestorePoint(n), None) => format!("restore point {n:?}"),
    }
}

/// A time as messages write it; "no transaction" when unknown.
fn time(t: Option<DateTime<Utc>>) -> String {
    match t {
        Some(t) => t.format("%Y-%m-%d %H:%M:%S%.f+00").to_string(),
        None => "no transaction since the backup".into(),
    }
}

impl fmt::Display for Setting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} = '{}'", self.postgres_name(), self.postgres_value())
    }
}

/// What a forward scan for a time target found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct TimeScan {
    /// The first commit/abort after the time (PostgreSQL stops before it).
    pub first_after: Option<Lsn>,
    /// The last record before it (the last one replayed).
    pub last_replayed: Option<Lsn>,
    /// The time of the last transaction at or before the target.
    pub last_xact: Option<DateTime<Utc>>,
}

/// `recovery_target_timeline` for a recovery that stops at `stop` (the record PostgreSQL
/// stops at or before): none when that is on the archive's newest timeline (`latest`), else
/// the timeline `stop` is on along the window's chain. Also for a stop on an *ancestor* of
/// the newest timeline, before its switch point: with `latest`, PostgreSQL would stop there
/// but write the new timeline's history as a child of the newest one (its switch point
/// after the stop), a history whose switch points go backwards (valid, and stored: see
/// [`crate::history::effective`]), naming a timeline the new one never followed; with the
/// ancestor named, the new timeline branches from it where recovery stopped, plainly.
/// Except when `stop` lies in the segment of that ancestor's switch point: the ancestor's
/// copy of it is archived as a `.partial` at most, so recovery must read the next
/// timeline's (the window's chain as before: named only when off the newest timeline).
fn stop_timeline(w: &Window, stop: Lsn) -> Option<u32> {
    let on = w.timeline_at(stop);
    if on != w.newest_timeline && w.segment(stop.segment_number(w.segment_size)).timeline == on {
        Some(on.0)
    } else {
        (w.last_timeline() != w.newest_timeline).then_some(w.last_timeline().0)
    }
}

fn gap(w: &Window, target: Wanted, lsn: Lsn) -> Unrestorable {
    let reaches = w
        .backups
        .iter()
        .rev()
        .find(|b| b.stop <= lsn && b.reaches.is_some())
        .and_then(|b| b.reaches)
        .unwrap_or(w.earliest.lsn);
    Unrestorable::Gap { target, reaches }
}

pub(crate) fn rule_latest(w: &Window) -> Result<Resolved, Unrestorable> {
    let b = w
        .backup_for(w.latest.lsn, None)
        .ok_or_else(|| gap(w, Wanted::Latest, w.latest.lsn))?;
    Ok(Resolved {
        backup: b.name.clone(),
        timeline: stop_timeline(w, w.latest.lsn),
        recovery: Setting::Lsn(w.latest.lsn),
        expect: w.latest.clone(),
    })
}

pub(crate) fn rule_lsn(w: &Window, l: Lsn) -> Result<Resolved, Unrestorable> {
    if l < w.earliest.lsn {
        return Err(Unrestorable::BeforeEarliest {
            target: Wanted::Lsn(l),
            found: None,
            earliest: w.earliest.clone(),
        });
    }
    if l > w.latest.lsn {
        return Err(Unrestorable::PastEnd {
            target: l,
            latest: w.latest.clone(),
        });
    }
    let b = w
        .backup_for(l, None)
        .ok_or_else(|| gap(w, Wanted::Lsn(l), l))?;
    Ok(Resolved {
        backup: b.name.clone(),
        timeline: stop_timeline(w, l),
        recovery: Setting::Lsn(l),
        expect: Point {
            lsn: l,
            timeline: w.timeline_at(l),
            time: None,
        },
    })
}

/// The backup a time target starts from: the newest restorable one that ended at or before it.
pub(crate) fn backup_for_time(w: &Window, t: DateTime<Utc>) -> Result<&BackupPoint, Unrestorable> {
    let before = || Unrestorable::BeforeEarliest {
        target: Wanted::Time(t),
        found: None,
        earliest: w.earliest.clone(),
    };
    if w.earliest.time.is_some_and(|e| t < e) {
        return Err(before());
    }
    w.backups
        .iter()
        .rev()
        .find(|b| b.reaches.is_some() && b.stop_time.is_some_and(|s| s <= t))
        .ok_or_else(before)
}

pub(crate) fn rule_time(
    w: &Window,
    t: DateTime<Utc>,
    b: &BackupPoint,
    scan: &TimeScan,
    complete_to: Option<Lsn>,
) -> Result<Resolved, Unrestorable> {
    match scan.first_after {
        // PostgreSQL would stop before the backup is consistent, and refuse.
        Some(at) if at < b.stop => Err(Unrestorable::BeforeEarliest {
            target: Wanted::Time(t),
            found: None,
            earliest: w.earliest.clone(),
        }),
        Some(at) => {
            let lsn = scan.last_replayed.unwrap_or(b.stop).max(b.stop);
            Ok(Resolved {
                backup: b.name.clone(),
                // PostgreSQL stops at the first commit after t: on its timeline.
                timeline: stop_timeline(w, at),
                recovery: Setting::Time(t),
                expect: Point {
                    lsn,
                    timeline: w.timeline_at(lsn),
                    time: scan.last_xact,
                },
            })
        }
        // The backup's WAL stops at a hole before the end: what follows it cannot be read.
        None if b.reaches.is_some_and(|r| r < w.end) => Err(Unrestorable::Gap {
            target: Wanted::Time(t),
            reaches: b.reaches.unwrap_or(w.end),
        }),
        // Every archived transaction is at or before t: PostgreSQL never "reaches" t. When
        // the archive is known complete up to t, t is the latest point, pinned to its LSN.
        None if complete_to.is_some_and(|c| c <= w.end) => rule_latest(w),
        None => Err(Unrestorable::NotArchivedYet {
            target: t,
            latest: w.latest.clone(),
        }),
    }
}

pub(crate) fn rule_restore_point(
    w: &Window,
    name: &str,
    found: &[RestorePointAt],
) -> Result<Resolved, Unrestorable> {
    let newest = found
        .iter()
        .filter(|r| r.name == name)
        .max_by_key(|r| r.lsn)
        .ok_or_else(|| Unrestorable::NoSuchRestorePoint {
            name: name.to_string(),
            earliest: w.earliest.clone(),
            latest: w.latest.clone(),
        })?;
    let target = Wanted::RestorePoint(name.to_string());
    if newest.lsn < w.earliest.lsn {
        return Err(Unrestorable::BeforeEarliest {
            target,
            found: Some(newest.clone()),
            earliest: w.earliest.clone(),
        });
    }
    let b = w
        .backup_for(newest.lsn, None)
        .ok_or_else(|| gap(w, target, newest.lsn))?;
    Ok(Resolved {
        backup: b.name.clone(),
        timeline: stop_timeline(w, newest.lsn),
        recovery: Setting::Lsn(newest.lsn),
        expect: Point {
            lsn: newest.lsn,
            timeline: newest.timeline,
            time: Some(newest.time),
        },
    })
}

/// Resolves `wanted` in the window `w` of `repo`. `complete_to`: an LSN up to which the
/// source's WAL is known to be all written (a deleted source's end; a running one's current
/// LSN): a time after the last archived transaction is then the latest point instead of a
/// refusal. Time targets and restore points read the window's WAL (from the chosen backup's
/// start; from the oldest backup's start): the caller bounds how long that may take.
pub async fn resolve(
    repo: &Repository,
    w: &Window,
    wanted: &Wanted,
    complete_to: Option<Lsn>,
) -> Result<Resolved, Error> {
    Ok(match wanted {
        Wanted::Latest => rule_latest(w)?,
        Wanted::Lsn(l) => rule_lsn(w, *l)?,
        Wanted::Time(t) => {
            let b = backup_for_time(w, *t)?;
            let mut scan = TimeScan::default();
            let to = b.reaches.unwrap_or(w.end);
            scan_forward(repo, w, b.start, to, |r| {
                if r.start < b.start {
                    return true;
                }
                match r.kind {
                    RecordKind::Commit(x) | RecordKind::Abort(x) if x > *t => {
                        scan.first_after = Some(r.start);
                        return false;
                    }
                    RecordKind::Commit(x) | RecordKind::Abort(x) => scan.last_xact = Some(x),
                    _ => {}
                }
                scan.last_replayed = Some(r.start);
                true
            })
            .await?;
            rule_time(w, *t, b, &scan, complete_to)?
        }
        Wanted::RestorePoint(name) => {
            let found = find_restore_points(repo, w, name).await?;
            rule_restore_point(w, name, &found)?
        }
    })
}

/// The restore points named `name` in the window's WAL, oldest first: from the start of the
/// oldest backup whose WAL runs without a hole to the end of the archive (restore points
/// before a hole are not looked for: no backup before it restores past it).
pub async fn find_restore_points(
    repo: &Repository,
    w: &Window,
    name: &str,
) -> Result<Vec<RestorePointAt>, Error> {
    let from = w
        .backups
        .iter()
        .find(|b| b.reaches == Some(w.end))
        .map_or(w.earliest.lsn, |b| b.start);
    let mut found = Vec::new();
    scan_forward(repo, w, from, w.end, |r| {
        if let RecordKind::RestorePoint { name: n, time } = &r.kind {
            if n == name {
                found.push(RestorePointAt {
                    name: n.clone(),
                    lsn: r.start,
                    timeline: w.timeline_at(r.start),
                    time: *time,
                });
            }
        }
        true
    })
    .await?;
    Ok(found)
}
