//! Verifying the WAL archive: gaps, timeline history files, undecodable objects, and how far
//! point-in-time recovery can go from each backup.
//!
//! An archive that silently lost one segment is worse than no archive: every restore past
//! the hole ends early and promotes, and nobody finds out until the day it is needed. This
//! module answers, before that day, the questions a restore would ask:
//!
//! - **Is each timeline continuous?** A timeline's segments run from its switch point off
//!   its parent (the last line of its history file; the first archived segment for
//!   timeline 1) to its last archived segment. A `.partial` file legitimately ends an old
//!   timeline, but a `.partial` followed by later segments of the same timeline means the
//!   complete segment is missing. Retention (`delete`) removes WAL oldest first across all
//!   timelines (except what permanent backups pin), so segments older than every other
//!   archived segment are not counted as missing: a hole is only a hole when something
//!   older survived.
//! - **Can recovery follow every timeline?** PostgreSQL needs `N.history` to switch to
//!   timeline N; a timeline (> 1) with WAL but no history file is unreachable. A history
//!   file must parse, list strictly older ancestors, and extend its parent's history.
//! - **Is every history file this repository's?** A history file carries no system
//!   identifier, so one of another cluster (stored by an older walarchive) is told by what
//!   it contradicts: a segment of its timeline older than its switch point (PostgreSQL starts
//!   a timeline in the segment of its switch point), or a backup taken on its timeline before
//!   it began. And a backup is reported when PostgreSQL's default recovery, toward the newest
//!   timeline (found as PostgreSQL finds it), would refuse it: that timeline forks off the
//!   backup's before the backup started, or does not descend from it. Only certain
//!   contradictions are reported: an old primary that kept archiving past a standby's
//!   promotion is normal.
//! - **Does every object decode?** Each object is downloaded and verified (header,
//!   decompression, digest), and each segment's first page header is checked against its
//!   name and the repository's cluster. This reads the whole archive: its cost is one
//!   download and one decompression of every WAL object, so run it where bandwidth is
//!   cheap, or rarely.
//! - **How far can a restore go?** From each complete backup's stop LSN, recovery follows
//!   the WAL of the backup's timeline and of the timelines descending from it after the
//!   backup's end, reading each segment from the newest timeline of its chain that covers
//!   it (as PostgreSQL's `XLogFileReadAnyTLI` does), until a segment is missing or corrupt.
//!   The furthest such point is reported; it is an upper bound (the end of the last
//!   continuous segment), because the last record inside it is only known by replaying.
//!
//! The analysis ([`analyze`]) is a pure function over a listing of WAL file names, the
//! parsed history files and the backups' ranges, so that every rule above is unit-tested on
//! synthetic archives; the I/O ([`scan_archive`], [`check_segments`]) only fills it in.

mod analysis;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use futures::{StreamExt, TryStreamExt};
use serde::Serialize;

use crate::lsn::Lsn;
use crate::repo::{Descriptor, Repository};
use crate::wal::{SegmentName, TimelineId, WalFileName};
use crate::Error;

pub use crate::history::{parse_history, HistoryEntry};
pub use analysis::analyze;

/// Checks the decoded content of WAL object `name` against the repository's cluster: a
/// segment (or `.partial`) must be one whole segment whose first page header is PostgreSQL's
/// long header for this segment, this cluster and this WAL format; a history file must
/// parse; a backup history file must be PostgreSQL's text.
pub fn check_wal_content(name: &WalFileName, raw: &[u8], d: &Descriptor) -> Result<(), String> {
    match name {
        WalFileName::Segment(_) | WalFileName::Partial(_) => {
            // The same checks wal-push made before storing it, then the repository's cluster.
            let found = crate::push::check_segment(name, raw)?;
            same_wal_identity(&found, d)
        }
        WalFileName::History(_) | WalFileName::BackupHistory { .. } => {
            crate::history::check_text_file(name, raw, d.wal_segment_size)
        }
    }
}

/// Refuses a segment whose first page header (`found`, from [`crate::push::check_segment`]
/// or [`crate::push::check_segment_start`]) names another cluster, segment size or WAL
/// format than the repository's `d`.
pub fn same_wal_identity(found: &Descriptor, d: &Descriptor) -> Result<(), String> {
    use crate::repo::WalProperty::*;
    match crate::repo::first_difference(found, d, [SegmentSize, SystemIdentifier, PageMagic]) {
        None => Ok(()),
        Some((property, found, repo)) => {
            let what = match property {
                SegmentSize => "segment size",
                SystemIdentifier => "system identifier",
                PageMagic => "WAL page magic",
            };
            Err(format!("its {what} is {found}, {} is {repo}", d.whose()))
        }
    }
}

/// [`check_wal_content`] for WAL file `name` read from `repo` (its content `raw`), before
/// it is handed to PostgreSQL: a mismatch is [`Error::Corrupt`], naming the object and what
/// its content says. For a segment this catches an intact object of another segment, or
/// of another cluster, stored under this name, whatever format version wrote it.
pub fn check_fetched(
    repo: &Repository,
    name: &WalFileName,
    raw: &[u8],
    d: &Descriptor,
) -> Result<(), Error> {
    check_wal_content(name, raw, d).map_err(|reason| Error::Corrupt {
        key: repo.key(&Repository::wal_key(name)).to_string(),
        source: crate::format::FormatError::Content(reason),
    })
}

/// What the analysis needs to know about a complete backup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupRange {
    /// Backup name.
    pub name: String,
    /// Timeline it was taken on.
    pub timeline: TimelineId,
    /// Its start LSN.
    pub start: Lsn,
    /// Its stop LSN: recovery must replay at least to here.
    pub stop: Lsn,
    /// Whether it is marked permanent (retention keeps its WAL, out of order).
    pub permanent: bool,
}

/// A WAL archive as the analysis sees it.
#[derive(Clone, Debug, Default)]
pub struct Archive {
    /// WAL segment size in bytes.
    pub segment_size: u64,
    /// Every WAL object stored where it belongs (whether it verifies or not).
    pub files: BTreeSet<WalFileName>,
    /// Objects among `files` that failed verification, with the reason.
    pub corrupt: BTreeMap<WalFileName, String>,
    /// The content of every history file that verified and parsed.
    pub histories: BTreeMap<TimelineId, Vec<HistoryEntry>>,
    /// The complete backups.
    pub backups: Vec<BackupRange>,
}

/// Something wrong with the archive.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Problem {
    /// Segments missing inside a timeline's archived range.
    Gap {
        /// The timeline.
        #[serde(serialize_with = "ser_tli")]
        timeline: TimelineId,
        /// First missing segment.
        #[serde(serialize_with = "ser_display")]
        first: SegmentName,
        /// Last missing segment.
        #[serde(serialize_with = "ser_display")]
        last: SegmentName,
        /// Number of missing segments.
        count: u64,
        /// Missing segments of which only a `.partial` is archived.
        #[serde(serialize_with = "ser_display_vec")]
        partial_only: Vec<SegmentName>,
    },
    /// A timeline above 1 has WAL but no history file.
    MissingHistory {
        /// The timeline.
        #[serde(serialize_with = "ser_tli")]
        timeline: TimelineId,
    },
    /// A history file that parses but contradicts the archive's other history files.
    BadHistory {
        /// The timeline whose history file it is.
        #[serde(serialize_with = "ser_tli")]
        timeline: TimelineId,
        /// What is wrong.
        reason: String,
    },
    /// An object that fails to decode or verify.
    Corrupt {
        /// The WAL file.
        #[serde(serialize_with = "ser_display")]
        name: WalFileName,
        /// What verification found.
        reason: String,
    },
    /// Recovery from a backup cannot follow the newest timeline, which PostgreSQL follows
    /// by default (`recovery_target_timeline = latest`): that timeline forks off the
    /// backup's before the backup started, or does not descend from it at all.
    ForkBeforeBackup {
        /// The backup.
        backup: String,
        /// The backup's timeline.
        #[serde(serialize_with = "ser_tli")]
        timeline: TimelineId,
        /// Its start LSN.
        #[serde(serialize_with = "ser_display")]
        start: Lsn,
        /// The newest timeline recovery would follow.
        #[serde(serialize_with = "ser_tli")]
        latest: TimelineId,
        /// Where that timeline's history forks off the backup's (none: it does not
        /// descend from it).
        #[serde(serialize_with = "ser_opt_display")]
        switchpoint: Option<Lsn>,
    },
    /// A backup's own WAL (start to stop LSN) cannot be read: the backup cannot be restored.
    BackupWal {
        /// The backup.
        backup: String,
        /// The first segment recovery cannot read.
        #[serde(serialize_with = "ser_display")]
        segment: SegmentName,
        /// Whether the segment is corrupt (else missing).
        corrupt: bool,
    },
}

impl Problem {
    /// Whether the problem is corruption (exit status 8) rather than something missing.
    pub fn is_corrupt(&self) -> bool {
        match self {
            Problem::Corrupt { .. } | Problem::BadHistory { .. } => true,
            Problem::BackupWal { corrupt, .. } => *corrupt,
            Problem::Gap { .. }
            | Problem::MissingHistory { .. }
            | Problem::ForkBeforeBackup { .. } => false,
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Gap {
                timeline,
                first,
                last,
                count,
                partial_only,
            } => {
                if count == &1 {
                    write!(f, "timeline {timeline}: WAL segment {first} is missing")?;
                } else {
                    write!(
                        f,
                        "timeline {timeline}: WAL segments {first} to {last} ({count}) are missing"
                    )?;
                }
                if !partial_only.is_empty() {
                    let names: Vec<String> = partial_only
                        .iter()
                        .map(|s| format!("{s}.partial"))
                        .collect();
                    write!(
                        f,
                        " (only {} archived, yet the timeline continues after it)",
                        names.join(", ")
                    )?;
                }
                Ok(())
            }
            Problem::MissingHistory { timeline } => write!(
                f,
                "timeline {timeline} has WAL but no history file ({}): recovery cannot follow it",
                WalFileName::History(*timeline)
            ),
            Problem::BadHistory { timeline, reason } => {
                write!(f, "{}: {reason}", WalFileName::History(*timeline))
            }
            Problem::Corrupt { name, reason } => write!(f, "{name} is corrupt: {reason}"),
            Problem::ForkBeforeBackup {
                backup,
                timeline,
                start,
                latest,
                switchpoint,
            } => {
                write!(
                    f,
                    "backup {backup} (timeline {timeline}, started at {start}) cannot recover to the latest timeline, {latest}: "
                )?;
                match switchpoint {
                    Some(sp) => write!(
                        f,
                        "{} says it forked off timeline {timeline} at {sp}, before the backup started",
                        WalFileName::History(*latest)
                    )?,
                    None => write!(
                        f,
                        "{} does not descend from timeline {timeline}",
                        WalFileName::History(*latest)
                    )?,
                }
                write!(
                    f,
                    " (was timeline {latest} created by another cluster, by a restore test archiving here, or by promoting a standby by mistake?); restore it with --target-timeline current"
                )
            }
            Problem::BackupWal {
                backup,
                segment,
                corrupt,
            } => write!(
                f,
                "backup {backup} cannot be restored: WAL segment {segment}, which it needs, is {}",
                if *corrupt { "corrupt" } else { "missing" }
            ),
        }
    }
}

/// One timeline of the archive.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TimelineSummary {
    /// The timeline.
    #[serde(serialize_with = "ser_tli")]
    pub timeline: TimelineId,
    /// Its parent, per its history file.
    #[serde(serialize_with = "ser_opt_tli")]
    pub parent: Option<TimelineId>,
    /// Where it branched off its parent, per its history file.
    #[serde(serialize_with = "ser_opt_display")]
    pub switchpoint: Option<Lsn>,
    /// Whether its history file is archived (and readable).
    pub has_history: bool,
    /// First archived segment (or `.partial`).
    #[serde(serialize_with = "ser_opt_display")]
    pub first_segment: Option<SegmentName>,
    /// Last archived segment (or `.partial`).
    #[serde(serialize_with = "ser_opt_display")]
    pub last_segment: Option<SegmentName>,
    /// Complete segments archived.
    pub segments: usize,
    /// `.partial` segments archived.
    #[serde(serialize_with = "ser_display_vec")]
    pub partials: Vec<SegmentName>,
}

/// How far point-in-time recovery can go from one backup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PitrRange {
    /// The backup.
    pub backup: String,
    /// The backup's timeline.
    #[serde(serialize_with = "ser_tli")]
    pub timeline: TimelineId,
    /// Earliest point: the backup's stop LSN.
    #[serde(serialize_with = "ser_display")]
    pub from_lsn: Lsn,
    /// End of the continuous WAL (the end of its last segment); none when the backup's own
    /// WAL is incomplete and it cannot be restored at all.
    #[serde(serialize_with = "ser_opt_display")]
    pub to_lsn: Option<Lsn>,
    /// The timeline that WAL ends on.
    #[serde(serialize_with = "ser_opt_tli")]
    pub to_timeline: Option<TimelineId>,
}

/// The outcome of [`analyze`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Analysis {
    /// Every timeline that has WAL or a history file, in order.
    pub timelines: Vec<TimelineSummary>,
    /// What is wrong, corrupt objects first, then by timeline.
    pub problems: Vec<Problem>,
    /// The recovery range of each complete backup.
    pub pitr: Vec<PitrRange>,
}

/// What reading one WAL object found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ObjectCheck {
    /// It decodes and its content is valid; the decoded size, and for a history file its
    /// entries.
    Valid {
        /// Decoded bytes.
        bytes: u64,
        /// A history file's entries.
        history: Option<Vec<HistoryEntry>>,
    },
    /// It is not in the repository.
    Missing,
    /// It fails verification: why.
    Corrupt(String),
}

/// Downloads WAL object `name`, verifies it and checks its content against the repository's
/// descriptor. Only storage failures are errors; a missing or corrupt object is an answer.
pub async fn check_object(
    repo: &Repository,
    name: &WalFileName,
    d: &Descriptor,
) -> Result<ObjectCheck, Error> {
    let raw = match repo.get_verified(&Repository::wal_key(name)).await {
        Ok((_, raw)) => raw,
        Err(Error::NotFound { .. }) => return Ok(ObjectCheck::Missing),
        Err(Error::Corrupt { source, .. }) => return Ok(ObjectCheck::Corrupt(source.to_string())),
        Err(e) => return Err(e),
    };
    if let Err(why) = check_wal_content(name, &raw, d) {
        return Ok(ObjectCheck::Corrupt(why));
    }
    let history = match name {
        WalFileName::History(t) => Some(
            parse_history(*t, &String::from_utf8_lossy(&raw)).expect("check_wal_content parsed it"),
        ),
        _ => None,
    };
    Ok(ObjectCheck::Valid {
        bytes: raw.len() as u64,
        history,
    })
}

/// How many objects to download at once: enough to overlap requests, few enough that
/// (decoded and compressed copies of) large segments stay within a few hundred MiB.
pub(crate) fn concurrency(segment_size: u64) -> usize {
    ((256 << 20) / segment_size.max(1)).clamp(1, 8) as usize
}

/// What [`scan_archive`] (or [`list_archive`]) read.
#[derive(Clone, Debug, Default)]
pub struct Scan {
    /// The archive, ready for [`analyze`].
    pub archive: Archive,
    /// Objects downloaded and verified.
    pub objects_checked: usize,
    /// Decoded bytes verified.
    pub bytes_checked: u64,
    /// Keys under `wal/` that are not WAL files where they belong (not analysed).
    pub ignored: Vec<String>,
}

/// Lists the WAL of `repo` without downloading a single segment: every WAL file name, and
/// the history files, downloaded, verified and parsed (they are small, and [`analyze`] needs
/// them). The archive it returns is ready for [`analyze`] (with `backups` as given), but only
/// the history files were verified: what the restorable window (`crate::window`) reads.
pub async fn list_archive(
    repo: &Repository,
    d: &Descriptor,
    backups: Vec<BackupRange>,
) -> Result<Scan, Error> {
    let mut scan = Scan::default();
    for listed in repo.list("wal/").await? {
        match crate::layout::parse_key(&listed.key) {
            Some(crate::layout::OwnKey::Wal(n)) => {
                scan.archive.files.insert(n);
            }
            _ => {
                tracing::warn!("ignoring {}: not a WAL file where one belongs", listed.key);
                scan.ignored.push(listed.key);
            }
        }
    }
    scan.archive.segment_size = d.wal_segment_size;
    scan.archive.backups = backups;
    let histories: Vec<WalFileName> = scan
        .archive
        .files
        .iter()
        .filter(|n| matches!(n, WalFileName::History(_)))
        .copied()
        .collect();
    check_into(repo, d, &mut scan, histories).await?;
    Ok(scan)
}

/// Lists the WAL of `repo`, downloads and verifies every object, and returns the archive
/// for [`analyze`] (with `backups` as given).
pub async fn scan_archive(
    repo: &Repository,
    d: &Descriptor,
    backups: Vec<BackupRange>,
) -> Result<Scan, Error> {
    let mut scan = list_archive(repo, d, backups).await?;
    let rest: Vec<WalFileName> = scan
        .archive
        .files
        .iter()
        .filter(|n| !matches!(n, WalFileName::History(_)))
        .copied()
        .collect();
    check_into(repo, d, &mut scan, rest).await?;
    Ok(scan)
}

/// Downloads and verifies `names` (listed in `scan`), recording what was found.
async fn check_into(
    repo: &Repository,
    d: &Descriptor,
    scan: &mut Scan,
    names: Vec<WalFileName>,
) -> Result<(), Error> {
    let checks: Vec<(WalFileName, ObjectCheck)> = futures::stream::iter(names)
        .map(|n| async move { check_object(repo, &n, d).await.map(|c| (n, c)) })
        .buffered(concurrency(d.wal_segment_size))
        .try_collect()
        .await?;
    let archive = &mut scan.archive;
    for (name, check) in checks {
        match check {
            ObjectCheck::Missing => {
                // Deleted since the listing.
                archive.files.remove(&name);
            }
            ObjectCheck::Corrupt(why) => {
                scan.objects_checked += 1;
                archive.corrupt.insert(name, why);
            }
            ObjectCheck::Valid { bytes, history } => {
                scan.objects_checked += 1;
                scan.bytes_checked += bytes;
                if let Some(h) = history {
                    archive.histories.insert(name.timeline(), h);
                }
            }
        }
    }
    Ok(())
}

/// Downloads and verifies the segments `segs` (a backup's WAL, say): the number read and
/// the problems found ([`Problem::BackupWal`] for a missing one, [`Problem::Corrupt`] for
/// one that fails verification), in order.
pub async fn check_segments(
    repo: &Repository,
    backup: &str,
    segs: &[SegmentName],
    d: &Descriptor,
) -> Result<(usize, Vec<Problem>), Error> {
    let checks: Vec<(SegmentName, ObjectCheck)> = futures::stream::iter(segs.iter().copied())
        .map(|s| async move {
            check_object(repo, &WalFileName::Segment(s), d)
                .await
                .map(|c| (s, c))
        })
        .buffered(concurrency(d.wal_segment_size))
        .try_collect()
        .await?;
    let mut problems = Vec::new();
    let mut read = 0;
    for (segment, check) in checks {
        match check {
            ObjectCheck::Valid { .. } => read += 1,
            ObjectCheck::Missing => problems.push(Problem::BackupWal {
                backup: backup.to_string(),
                segment,
                corrupt: false,
            }),
            ObjectCheck::Corrupt(reason) => {
                read += 1;
                problems.push(Problem::Corrupt {
                    name: WalFileName::Segment(segment),
                    reason,
                })
            }
        }
    }
    Ok((read, problems))
}

fn ser_display<T: fmt::Display, S: serde::Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

fn ser_opt_display<T: fmt::Display, S: serde::Serializer>(
    v: &Option<T>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => s.collect_str(v),
        None => s.serialize_none(),
    }
}

fn ser_display_vec<T: fmt::Display, S: serde::Serializer>(
    v: &[T],
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(|x| x.to_string()))
}

fn ser_tli<S: serde::Serializer>(t: &TimelineId, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u32(t.0)
}

fn ser_opt_tli<S: serde::Serializer>(t: &Option<TimelineId>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.serialize_u32(t.0),
        None => s.serialize_none(),
    }
}
