//! The restorable window of a repository, and what a recovery target resolves to in it
//! (design `docs/design/clones.md` §1.2–1.3).
//!
//! A clone or a point-in-time restore must be refused *before* it starts when PostgreSQL
//! would refuse it after an hour of downloading: a time after the last archived commit is
//! never "reached" (PostgreSQL 13+ stops with FATAL), a target before a backup's end cannot
//! be stopped at, and a restore point that is not in the WAL is never found. So the window
//! is computed from what recovery will really read: the listing and the history files
//! (`verify::list_archive`, no segment downloaded), the backups' manifests, and the last
//! segments, decoded record by record (`crate::walrecord`) for the last record and the last
//! transaction's time.
//! Resolution ([`resolve`]) turns every target into one PostgreSQL stops at exactly: a time
//! (PostgreSQL stops before the first commit or abort after it), or an LSN ("latest" is
//! pinned to one, so a hole in the archive fails loudly instead of ending recovery early).
//! The decisions are pure functions over the window and what the scans found, unit-tested in
//! `window/tests.rs`; the I/O only fills them in.

mod resolve;
#[cfg(test)]
mod tests;

use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};

use crate::catalog;
use crate::history::HistoryEntry;
use crate::lsn::Lsn;
use crate::repo::Repository;
use crate::verify::{self, BackupRange};
use crate::wal::{SegmentName, TimelineId, WalFileName};

use crate::walrecord::{Record, RecordKind, WalReader, WalRecordError};
pub use resolve::{
    find_restore_points, resolve, Resolved, RestorePointAt, Setting, Unrestorable, Wanted,
};

/// How many segments are read backwards from the end of the archive to find the last
/// transaction's time.
pub const WINDOW_SCAN_SEGMENTS: u64 = 64;

/// A point of the WAL: where, on which timeline, and when (when known).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Point {
    /// The WAL position.
    pub lsn: Lsn,
    /// Its timeline.
    pub timeline: TimelineId,
    /// The time the point stands for: a backup's stop time, the last transaction's commit (or
    /// abort) time, a restore point's creation time.
    pub time: Option<DateTime<Utc>>,
}

/// A complete backup as the window sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupPoint {
    /// Its name.
    pub name: String,
    /// Its timeline.
    pub timeline: TimelineId,
    /// Its start LSN.
    pub start: Lsn,
    /// Its stop LSN: the earliest point it restores to.
    pub stop: Lsn,
    /// Its stop time (the server's clock), from the manifest.
    pub stop_time: Option<DateTime<Utc>>,
    /// The end of the continuous WAL recovery from it reads (none: its own WAL is
    /// incomplete and it cannot be restored).
    pub reaches: Option<Lsn>,
}

/// The restorable window: from the end of the oldest restorable backup to the last record
/// of the continuous archived WAL, along the newest timeline chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Window {
    /// The earliest restorable point: the oldest restorable backup's end.
    pub earliest: Point,
    /// The latest: the start of the last complete archived record, with the time of the
    /// last transaction (none when no transaction was found since the backup).
    pub latest: Point,
    /// The end of the continuous archived WAL (the end of its last segment).
    pub end: Lsn,
    /// Every complete backup, oldest first.
    pub backups: Vec<BackupPoint>,
    /// The timelines the window follows, oldest first.
    pub timelines: Vec<TimelineId>,
    /// The newest timeline of the archive (what `recovery_target_timeline = latest` picks).
    pub newest_timeline: TimelineId,
    /// The WAL segment size.
    pub segment_size: u64,
    /// The history of the last timeline of `timelines` (empty for timeline 1), as PostgreSQL
    /// resolves it ([`crate::history::effective`]): switch points in order.
    history: Vec<HistoryEntry>,
}

/// Why the window cannot be computed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No complete backup whose own WAL is archived.
    #[error(
        "the repository has no complete base backup whose WAL is archived: nothing can be restored"
    )]
    NoBackup,
    /// The target cannot be restored.
    #[error(transparent)]
    Unrestorable(#[from] Unrestorable),
    /// A segment the window reads is not WAL this version understands.
    #[error("WAL segment {segment}: {why}")]
    Wal {
        /// The segment.
        segment: SegmentName,
        /// What the reader said.
        why: String,
    },
    /// Storage, corruption, configuration.
    #[error(transparent)]
    Core(#[from] crate::Error),
}

impl Error {
    /// The class of this error (a refusal is bad input).
    pub fn kind(&self) -> crate::ErrorKind {
        match self {
            Error::NoBackup => crate::ErrorKind::NotFound,
            Error::Unrestorable(_) => crate::ErrorKind::BadInput,
            Error::Wal { .. } => crate::ErrorKind::Corrupt,
            Error::Core(e) => e.kind(),
        }
    }
}

impl Window {
    /// The timeline the WAL at `lsn` belongs to, along the window's chain.
    pub fn timeline_at(&self, lsn: Lsn) -> TimelineId {
        self.history
            .iter()
            .find(|e| lsn < e.switchpoint)
            .map_or(self.last_timeline(), |e| e.timeline)
    }

    /// The timeline the window ends on.
    pub fn last_timeline(&self) -> TimelineId {
        *self.timelines.last().expect("a window has a timeline")
    }

    /// The archived segment recovery reads for segment number `n`: from the newest
    /// timeline of the chain that covers it (as PostgreSQL's `XLogFileReadAnyTLI`).
    fn segment(&self, n: u64) -> SegmentName {
        let mut tli = self
            .history
            .first()
            .map_or(self.last_timeline(), |e| e.timeline);
        for (i, e) in self.history.iter().enumerate() {
            if e.switchpoint.segment_number(self.segment_size) <= n {
                tli = self
                    .history
                    .get(i + 1)
                    .map_or(self.last_timeline(), |next| next.timeline);
            }
        }
        SegmentName::from_segment_number(tli, n, self.segment_size)
    }

    /// The newest backup that can serve a target at `lsn` (and, for a time, whose stop time is
    /// at or before `time`): it ends at or before it and its WAL reaches it.
    pub fn backup_for(&self, lsn: Lsn, time: Option<DateTime<Utc>>) -> Option<&BackupPoint> {
        self.backups.iter().rev().find(|b| {
            b.reaches.is_some_and(|r| r >= lsn)
                && b.stop <= lsn
                && time.is_none_or(|t| b.stop_time.is_some_and(|s| s <= t))
        })
    }
}

/// Computes the restorable window of `repo`: a listing, the history files, the manifests
/// and at most [`WINDOW_SCAN_SEGMENTS`] segments, never the whole archive.
pub async fn compute(repo: &Repository) -> Result<Window, Error> {
    let d = repo.require_descriptor().await?;
    let manifests: Vec<_> = catalog::list_backups(repo, false)
        .await?
        .into_iter()
        .filter_map(|e| Some((e.manifest?, e.permanent)))
        .collect();
    let ranges = manifests
        .iter()
        .map(|(m, permanent)| BackupRange {
            name: m.name.clone(),
            timeline: TimelineId(m.timeline),
            start: m.start_lsn,
            stop: m.stop_lsn,
            permanent: *permanent,
        })
        .collect();
    let scan = verify::list_archive(repo, &d, ranges).await?;
    let analysis = verify::analyze(&scan.archive);
    let backups: Vec<BackupPoint> = manifests
        .iter()
        .zip(&analysis.pitr)
        .map(|((m, _), r)| BackupPoint {
            name: m.name.clone(),
            timeline: TimelineId(m.timeline),
            start: m.start_lsn,
            stop: m.stop_lsn,
            stop_time: crate::manifest::parse_time(&m.stop_time),
            reaches: r.to_lsn,
        })
        .collect();
    let first = backups
        .iter()
        .find(|b| b.reaches.is_some())
        .ok_or(Error::NoBackup)?;
    let best = analysis
        .pitr
        .iter()
        .filter_map(|r| Some((r.to_lsn?, r.to_timeline?)))
        .max()
        .expect("the first restorable backup has a range");
    let (end, last) = best;
    // As PostgreSQL follows it: an ancestor that covers nothing is not on the chain.
    let history = scan
        .archive
        .histories
        .get(&last)
        .map(|h| crate::history::effective(h))
        .unwrap_or_default();
    let mut timelines: Vec<TimelineId> = history.iter().map(|e| e.timeline).collect();
    timelines.push(last);
    // Only the part of the chain from the earliest backup's timeline on.
    if let Some(i) = timelines.iter().position(|t| *t == first.timeline) {
        timelines.drain(..i);
    }
    let newest_timeline = scan
        .archive
        .files
        .iter()
        .filter_map(|f| match f {
            WalFileName::History(t) => Some(*t),
            _ => None,
        })
        .max()
        .unwrap_or(TimelineId(1))
        .max(last);
    let earliest = Point {
        lsn: first.stop,
        timeline: first.timeline,
        time: first.stop_time,
    };
    let mut w = Window {
        earliest: earliest.clone(),
        latest: earliest,
        end,
        backups: backups.clone(),
        timelines,
        newest_timeline,
        segment_size: d.wal_segment_size,
        history,
    };
    w.latest = find_latest(repo, &w, first.start).await?;
    Ok(w)
}

/// Downloads the segment recovery reads for number `n`.
async fn download(repo: &Repository, w: &Window, n: u64) -> Result<(u64, Vec<u8>), Error> {
    let s = w.segment(n);
    let (_, raw) = repo
        .get_verified(&Repository::wal_key(&WalFileName::Segment(s)))
        .await?;
    Ok((n, raw))
}

/// The records that start in segment `n`, read from it and (for a record it does not
/// finish) the next one, `next`.
fn records_starting_in(
    w: &Window,
    n: u64,
    bytes: &[u8],
    next: Option<&[u8]>,
) -> Result<Vec<Record>, Error> {
    let start = Lsn(n * w.segment_size);
    let bad = |e: WalRecordError| Error::Wal {
        segment: w.segment(n),
        why: e.to_string(),
    };
    // Pages of the chain's older timelines come first: the reader reads up to its last.
    let mut reader = WalReader::new(w.segment_size, w.last_timeline(), start);
    let mut records = reader.feed(start, bytes).map_err(bad)?;
    if let Some(next) = next {
        let following = Lsn((n + 1) * w.segment_size);
        records.extend(reader.feed(following, next).map_err(bad)?);
    }
    let end = Lsn((n + 1) * w.segment_size);
    records.retain(|r| r.start < end);
    Ok(records)
}

/// The latest point: the last complete record of the continuous WAL, and the last
/// transaction's time, reading backwards at most [`WINDOW_SCAN_SEGMENTS`] segments (never
/// before `floor`, the oldest restorable backup's start).
async fn find_latest(repo: &Repository, w: &Window, floor: Lsn) -> Result<Point, Error> {
    let end_segment = w.end.segment_number(w.segment_size);
    let lowest = end_segment
        .saturating_sub(WINDOW_SCAN_SEGMENTS)
        .max(floor.segment_number(w.segment_size));
    let mut last_record: Option<Lsn> = None;
    let mut time = None;
    let mut next: Option<Vec<u8>> = None;
    let mut n = end_segment;
    while n > lowest && time.is_none() {
        n -= 1;
        let (_, bytes) = download(repo, w, n).await?;
        let records = records_starting_in(w, n, &bytes, next.as_deref())?;
        if last_record.is_none() {
            last_record = records.last().map(|r| r.start);
        }
        time = records.iter().rev().find_map(|r| match r.kind {
            RecordKind::Commit(t) | RecordKind::Abort(t) if r.start >= floor => Some(t),
            _ => None,
        });
        next = Some(bytes);
    }
    let lsn = last_record.unwrap_or(w.earliest.lsn).max(w.earliest.lsn);
    Ok(Point {
        lsn,
        timeline: w.timeline_at(lsn),
        time,
    })
}

/// Reads the window's WAL forward from the segment of `from` to `to` (a segment boundary:
/// the end of the continuous WAL a backup reaches), downloading ahead, and hands every
/// record to `visit` until it returns false.
async fn scan_forward(
    repo: &Repository,
    w: &Window,
    from: Lsn,
    to: Lsn,
    mut visit: impl FnMut(&Record) -> bool,
) -> Result<(), Error> {
    let first = from.segment_number(w.segment_size);
    let end_segment = to.min(w.end).segment_number(w.segment_size);
    let mut reader = WalReader::new(
        w.segment_size,
        w.last_timeline(),
        Lsn(first * w.segment_size),
    );
    let mut segments = futures::stream::iter(first..end_segment)
        .map(|n| download(repo, w, n))
        .buffered(verify::concurrency(w.segment_size));
    while let Some((n, bytes)) = segments.try_next().await? {
        let records = reader
            .feed(Lsn(n * w.segment_size), &bytes)
            .map_err(|e| Error::Wal {
                segment: w.segment(n),
                why: e.to_string(),
            })?;
        for r in &records {
            if !visit(r) {
                return Ok(());
            }
        }
    }
    Ok(())
}
