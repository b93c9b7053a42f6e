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

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use futures::{StreamExt, TryStreamExt};
use serde::Serialize;

use crate::backup::needed_segments;
use crate::lsn::Lsn;
use crate::repo::{Descriptor, Repository};
use crate::wal::{SegmentName, TimelineId, WalFileName};
use crate::Error;

pub use crate::history::{parse_history, HistoryEntry};

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

/// Analyses an archive listing: see the module documentation for the rules.
pub fn analyze(a: &Archive) -> Analysis {
    let segsize = a.segment_size;
    let mut problems: Vec<Problem> = a
        .corrupt
        .iter()
        .map(|(name, reason)| Problem::Corrupt {
            name: *name,
            reason: reason.clone(),
        })
        .collect();

    // Complete and partial segments per timeline, by segment number.
    let mut full: BTreeMap<TimelineId, BTreeSet<u64>> = BTreeMap::new();
    let mut partial: BTreeMap<TimelineId, BTreeSet<u64>> = BTreeMap::new();
    let mut timelines: BTreeSet<TimelineId> = a.histories.keys().copied().collect();
    for f in &a.files {
        timelines.insert(f.timeline());
        match f {
            WalFileName::Segment(s) => {
                full.entry(s.timeline)
                    .or_default()
                    .insert(s.segment_number(segsize));
            }
            WalFileName::Partial(s) => {
                partial
                    .entry(s.timeline)
                    .or_default()
                    .insert(s.segment_number(segsize));
            }
            _ => {}
        }
    }

    // Retention deletes oldest first across timelines, except the ranges permanent backups
    // pin: nothing older than the oldest unpinned segment can be told apart from deleted WAL.
    let pinned: BTreeSet<SegmentName> = a
        .backups
        .iter()
        .filter(|b| b.permanent)
        .flat_map(|b| needed_segments(b.timeline, b.start, b.stop, segsize))
        .collect();
    let holds_pages = |f: &&WalFileName| f.holds_wal_pages();
    let floor = a
        .files
        .iter()
        .filter(holds_pages)
        .filter_map(WalFileName::segment)
        .filter(|s| !pinned.contains(s))
        .map(|s| s.segment_number(segsize))
        .min()
        .or_else(|| {
            a.files
                .iter()
                .filter(holds_pages)
                .filter_map(WalFileName::segment)
                .map(|s| s.segment_number(segsize))
                .min()
        });

    let empty = BTreeSet::new();
    let mut summaries = Vec::new();
    for &tli in &timelines {
        let fulls = full.get(&tli).unwrap_or(&empty);
        let partials = partial.get(&tli).unwrap_or(&empty);
        let history = a.histories.get(&tli);
        let (parent, switchpoint) = history
            .and_then(|h| h.last())
            .map(|e| (Some(e.timeline), Some(e.switchpoint)))
            .unwrap_or((None, None));
        let first = fulls.iter().chain(partials).min().copied();
        let last = fulls.iter().chain(partials).max().copied();
        let name = |n: u64| SegmentName::from_segment_number(tli, n, segsize);
        summaries.push(TimelineSummary {
            timeline: tli,
            parent,
            switchpoint,
            has_history: history.is_some(),
            first_segment: first.map(name),
            last_segment: last.map(name),
            segments: fulls.len(),
            partials: partials.iter().map(|&n| name(n)).collect(),
        });

        if tli.0 > 1
            && !a.files.contains(&WalFileName::History(tli))
            && a.files.iter().any(|f| f.timeline() == tli)
        {
            problems.push(Problem::MissingHistory { timeline: tli });
        }
        if let Some(h) = history {
            if let Some(reason) = history_conflict(tli, h, &a.histories) {
                problems.push(Problem::BadHistory {
                    timeline: tli,
                    reason,
                });
            }
        }
        if let (Some(sp), Some(parent)) = (switchpoint, parent) {
            if let Some(reason) = history_contradicts_archive(a, tli, parent, sp, first) {
                problems.push(Problem::BadHistory {
                    timeline: tli,
                    reason,
                });
            }
        }

        // Gaps: from the switch point (or the first archived segment) to the last one.
        let (Some(first), Some(last), Some(floor)) = (first, last, floor) else {
            continue;
        };
        let begin = switchpoint.map_or(first, |sp| first.min(sp.segment_number(segsize)));
        let mut run: Option<(u64, u64, Vec<SegmentName>)> = None;
        for n in begin.max(floor)..=last {
            let present = fulls.contains(&n) || (n == last && partials.contains(&n));
            if present {
                if let Some((lo, hi, partial_only)) = run.take() {
                    problems.push(gap(tli, lo, hi, partial_only, segsize));
                }
                continue;
            }
            let r = run.get_or_insert((n, n, Vec::new()));
            r.1 = n;
            if partials.contains(&n) {
                r.2.push(name(n));
            }
        }
        if let Some((lo, hi, partial_only)) = run {
            problems.push(gap(tli, lo, hi, partial_only, segsize));
        }
    }

    // Recovery ranges.
    let usable: BTreeSet<(TimelineId, u64)> = a
        .files
        .iter()
        .filter(|f| !a.corrupt.contains_key(f))
        .filter_map(|f| match f {
            WalFileName::Segment(s) => Some((s.timeline, s.segment_number(segsize))),
            _ => None,
        })
        .collect();
    let mut pitr = Vec::new();
    for b in &a.backups {
        problems.extend(fork_before_backup(a, b));
        let (range, blocked) = reach(a, b, &usable);
        if let Some(segment) = blocked {
            problems.push(Problem::BackupWal {
                backup: b.name.clone(),
                segment,
                corrupt: a.corrupt.contains_key(&WalFileName::Segment(segment)),
            });
        }
        pitr.push(range);
    }

    Analysis {
        timelines: summaries,
        problems,
        pitr,
    }
}

fn gap(tli: TimelineId, lo: u64, hi: u64, partial_only: Vec<SegmentName>, segsize: u64) -> Problem {
    Problem::Gap {
        timeline: tli,
        first: SegmentName::from_segment_number(tli, lo, segsize),
        last: SegmentName::from_segment_number(tli, hi, segsize),
        count: hi - lo + 1,
        partial_only,
    }
}

/// Why the history of `tli` (branching off `parent` at `sp`) contradicts the archive, if it
/// does: PostgreSQL creates a timeline's first segment at its switch point (copying the
/// parent's segment up to it), so no segment of the timeline is older than that one, and no
/// backup is taken on a timeline before it began. Either means the history file is not the
/// one of the timeline archived here (another cluster's, say).
fn history_contradicts_archive(
    a: &Archive,
    tli: TimelineId,
    parent: TimelineId,
    sp: Lsn,
    first: Option<u64>,
) -> Option<String> {
    let segsize = a.segment_size;
    let begins = sp.segment_number(segsize);
    if let Some(first) = first.filter(|&n| n < begins) {
        return Some(format!(
            "it says timeline {tli} branched off timeline {parent} at {sp}, but segment {} of timeline {tli} is archived, from before that point (another cluster's history file?)",
            SegmentName::from_segment_number(tli, first, segsize)
        ));
    }
    if let Some(b) = a.backups.iter().find(|b| b.timeline == tli && b.start < sp) {
        return Some(format!(
            "it says timeline {tli} branched off timeline {parent} at {sp}, but backup {} was taken on timeline {tli} at {}, before that point (another cluster's history file?)",
            b.name, b.start
        ));
    }
    None
}

/// Whether recovery from `b` toward the newest timeline fails at once (PostgreSQL's "requested
/// timeline N is not a child of this server's history"). The newest timeline is found as
/// PostgreSQL finds it: the history files of the timelines after the backup's, one after
/// the other, as long as they exist. Reported only when certain: the fork is before the
/// backup's start (its checkpoint, which PostgreSQL compares, is at or after the start).
fn fork_before_backup(a: &Archive, b: &BackupRange) -> Option<Problem> {
    let latest = (b.timeline.0 + 1..)
        .map(TimelineId)
        .take_while(|t| a.files.contains(&WalFileName::History(*t)))
        .last()?;
    let history = a.histories.get(&latest)?;
    let switchpoint = match history.iter().find(|e| e.timeline == b.timeline) {
        Some(e) if e.switchpoint < b.start => Some(e.switchpoint),
        Some(_) => return None,
        None => None,
    };
    Some(Problem::ForkBeforeBackup {
        backup: b.name.clone(),
        timeline: b.timeline,
        start: b.start,
        latest,
        switchpoint,
    })
}

/// Why the history of `tli` contradicts its parent's (PostgreSQL writes a child's history
/// as the parent's plus one line), if it does.
fn history_conflict(
    tli: TimelineId,
    h: &[HistoryEntry],
    all: &BTreeMap<TimelineId, Vec<HistoryEntry>>,
) -> Option<String> {
    let (last, ancestors) = h.split_last()?;
    let parent_history = all.get(&last.timeline)?;
    let key = |e: &HistoryEntry| (e.timeline, e.switchpoint);
    let ours: Vec<_> = ancestors.iter().map(key).collect();
    let theirs: Vec<_> = parent_history.iter().map(key).collect();
    if ours == theirs {
        return None;
    }
    if let Some(e) = parent_history
        .last()
        .filter(|e| e.switchpoint > last.switchpoint)
    {
        return Some(format!(
            "timeline {tli} branches off timeline {} at {}, before timeline {} itself began at {}",
            last.timeline, last.switchpoint, last.timeline, e.switchpoint
        ));
    }
    Some(format!(
        "its ancestors differ from those in {} (it should repeat that file and add one line)",
        WalFileName::History(last.timeline)
    ))
}

/// The timelines recovery reads along a chain ending at `target`, with the segment number
/// each begins at, oldest first.
fn chain(a: &Archive, target: TimelineId) -> Vec<(TimelineId, u64)> {
    let mut out = Vec::new();
    let mut begin = 0;
    if let Some(h) = a.histories.get(&target) {
        for e in h {
            out.push((e.timeline, begin));
            begin = e.switchpoint.segment_number(a.segment_size);
        }
    }
    out.push((target, begin));
    out
}

/// How far recovery from `b` reaches, and the first segment of its own WAL it cannot read.
fn reach(
    a: &Archive,
    b: &BackupRange,
    usable: &BTreeSet<(TimelineId, u64)>,
) -> (PitrRange, Option<SegmentName>) {
    let segsize = a.segment_size;
    // The backup's timeline, and every timeline whose history shows it branching off the
    // backup's timeline at or after the backup's end.
    let mut targets = vec![b.timeline];
    for (&t, h) in &a.histories {
        if t > b.timeline
            && h.iter()
                .any(|e| e.timeline == b.timeline && e.switchpoint >= b.stop)
        {
            targets.push(t);
        }
    }
    let start = b.start.segment_number(segsize);
    // (end of continuous WAL, timeline it ends on, target, where it stopped)
    let mut best: Option<(Lsn, Option<TimelineId>, TimelineId, SegmentName)> = None;
    for target in targets {
        let c = chain(a, target);
        let mut n = start;
        let mut on = None;
        let blocked = loop {
            let tli = c
                .iter()
                .rev()
                .find(|(_, begin)| *begin <= n)
                .map_or(target, |(t, _)| *t);
            if !usable.contains(&(tli, n)) {
                break SegmentName::from_segment_number(tli, n, segsize);
            }
            on = Some(tli);
            n += 1;
        };
        let end = Lsn(n * segsize);
        let better = best
            .as_ref()
            .is_none_or(|(e, t, _, _)| (end, on) > (*e, *t));
        if better {
            best = Some((end, on, target, blocked));
        }
    }
    let (end, on, _, blocked) = best.expect("the backup's own timeline is a target");
    // Recovery needs the WAL up to the stop LSN (the segment holding its last byte).
    let needed_end = Lsn(needed_segments(b.timeline, b.start, b.stop, segsize)
        .last()
        .map_or(b.stop.0, |s| s.start_lsn(segsize).0 + segsize));
    let complete = end >= needed_end;
    (
        PitrRange {
            backup: b.name.clone(),
            timeline: b.timeline,
            from_lsn: b.stop,
            to_lsn: complete.then_some(end),
            to_timeline: if complete { on } else { None },
        },
        (!complete).then_some(blocked),
    )
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

#[cfg(test)]
mod tests {
    use super::*;

    const SEG: u64 = 16 << 20;

    fn seg(tli: u32, n: u64) -> SegmentName {
        SegmentName::from_segment_number(TimelineId(tli), n, SEG)
    }

    fn lsn(s: &str) -> Lsn {
        s.parse().unwrap()
    }

    /// An archive with segments `range` on each given timeline, plus extra files.
    fn archive(segments: &[(u32, std::ops::RangeInclusive<u64>)]) -> Archive {
        let mut a = Archive {
            segment_size: SEG,
            ..Default::default()
        };
        for (tli, r) in segments {
            for n in r.clone() {
                a.files.insert(WalFileName::Segment(seg(*tli, n)));
            }
        }
        a
    }

    fn add_history(a: &mut Archive, tli: u32, text: &str) {
        a.files.insert(WalFileName::History(TimelineId(tli)));
        a.histories.insert(
            TimelineId(tli),
            parse_history(TimelineId(tli), text).unwrap(),
        );
    }

    fn backup(name: &str, tli: u32, start: &str, stop: &str) -> BackupRange {
        BackupRange {
            name: name.into(),
            timeline: TimelineId(tli),
            start: lsn(start),
            stop: lsn(stop),
            permanent: false,
        }
    }

    fn messages(an: &Analysis) -> Vec<String> {
        an.problems.iter().map(|p| p.to_string()).collect()
    }

    #[test]
    fn a_continuous_timeline_is_clean() {
        let mut a = archive(&[(1, 1..=9)]);
        a.backups.push(backup("b1", 1, "0/2000028", "0/2000100"));
        let an = analyze(&a);
        assert_eq!(messages(&an), Vec::<String>::new());
        assert_eq!(
            an.pitr,
            vec![PitrRange {
                backup: "b1".into(),
                timeline: TimelineId(1),
                from_lsn: lsn("0/2000100"),
                to_lsn: Some(lsn("0/A000000")),
                to_timeline: Some(TimelineId(1)),
            }]
        );
        assert_eq!(an.timelines.len(), 1);
        assert_eq!(an.timelines[0].segments, 9);
        assert_eq!(
            an.timelines[0].first_segment.unwrap().to_string(),
            "000000010000000000000001"
        );
    }

    #[test]
    fn gaps_are_found_and_stop_recovery() {
        let mut a = archive(&[(1, 1..=9)]);
        a.files.remove(&WalFileName::Segment(seg(1, 5)));
        a.files.remove(&WalFileName::Segment(seg(1, 7)));
        a.files.remove(&WalFileName::Segment(seg(1, 8)));
        a.backups.push(backup("b1", 1, "0/2000028", "0/2000100"));
        let an = analyze(&a);
        assert_eq!(
            messages(&an),
            vec![
                "timeline 1: WAL segment 000000010000000000000005 is missing",
                "timeline 1: WAL segments 000000010000000000000007 to 000000010000000000000008 (2) are missing",
            ]
        );
        assert!(an.problems.iter().all(|p| !p.is_corrupt()));
        assert_eq!(an.pitr[0].to_lsn, Some(lsn("0/5000000")));
    }

    #[test]
    fn a_backup_whose_own_wal_is_missing_cannot_be_restored() {
        let mut a = archive(&[(1, 1..=9)]);
        a.files.remove(&WalFileName::Segment(seg(1, 3)));
        a.backups.push(backup("b1", 1, "0/2000028", "0/3000100"));
        let an = analyze(&a);
        assert_eq!(an.pitr[0].to_lsn, None);
        assert_eq!(an.pitr[0].to_timeline, None);
        assert!(messages(&an).contains(
            &"backup b1 cannot be restored: WAL segment 000000010000000000000003, which it needs, is missing".to_string()
        ));
        // A stop LSN at a segment boundary does not need the next segment.
        let mut a = archive(&[(1, 1..=2)]);
        a.backups.push(backup("b1", 1, "0/1000028", "0/3000000"));
        let an = analyze(&a);
        assert_eq!(messages(&an), Vec::<String>::new());
        assert_eq!(an.pitr[0].to_lsn, Some(lsn("0/3000000")));
    }

    #[test]
    fn corrupt_objects_are_reported_once_and_stop_recovery() {
        let mut a = archive(&[(1, 1..=9)]);
        a.corrupt
            .insert(WalFileName::Segment(seg(1, 6)), "checksum mismatch".into());
        a.backups.push(backup("b1", 1, "0/2000028", "0/2000100"));
        a.backups.push(backup("b2", 1, "0/6000028", "0/6000100"));
        let an = analyze(&a);
        assert_eq!(
            messages(&an),
            vec![
                "000000010000000000000006 is corrupt: checksum mismatch",
                "backup b2 cannot be restored: WAL segment 000000010000000000000006, which it needs, is corrupt",
            ]
        );
        assert!(an.problems.iter().all(Problem::is_corrupt));
        assert_eq!(an.pitr[0].to_lsn, Some(lsn("0/6000000")));
    }

    /// Timeline 2 branched off timeline 1 in segment 5; timeline 1 went on to segment 9.
    fn branched() -> Archive {
        let mut a = archive(&[(1, 1..=9), (2, 5..=12)]);
        add_history(&mut a, 2, "1\t0/5000090\tno recovery target specified\n");
        a
    }

    #[test]
    fn timelines_start_at_their_switch_point() {
        let mut a = branched();
        a.backups.push(backup("b1", 1, "0/2000028", "0/2000100"));
        a.backups.push(backup("b2", 1, "0/6000028", "0/6000100"));
        let an = analyze(&a);
        // b2 started after timeline 2 forked off: PostgreSQL's default recovery, toward the
        // latest timeline, refuses it ("not a child of this server's history"). Said, but
        // not as corruption.
        assert_eq!(
            messages(&an),
            vec!["backup b2 (timeline 1, started at 0/6000028) cannot recover to the latest timeline, 2: 00000002.history says it forked off timeline 1 at 0/5000090, before the backup started (was timeline 2 created by another cluster, by a restore test archiving here, or by promoting a standby by mistake?); restore it with --target-timeline current"]
        );
        assert!(!an.problems[0].is_corrupt());
        // b1 ends before the branch: recovery can follow timeline 2, which goes further.
        assert_eq!(an.pitr[0].to_lsn, Some(lsn("0/D000000")));
        assert_eq!(an.pitr[0].to_timeline, Some(TimelineId(2)));
        // b2 ends after it: only timeline 1 leads on from there.
        assert_eq!(an.pitr[1].to_lsn, Some(lsn("0/A000000")));
        assert_eq!(an.pitr[1].to_timeline, Some(TimelineId(1)));
        let tl2 = &an.timelines[1];
        assert_eq!(
            (tl2.parent, tl2.switchpoint, tl2.has_history),
            (Some(TimelineId(1)), Some(lsn("0/5000090")), true)
        );

        // The first segments of timeline 2 missing is a gap: older WAL survived.
        a.files.remove(&WalFileName::Segment(seg(2, 5)));
        a.files.remove(&WalFileName::Segment(seg(2, 6)));
        let an = analyze(&a);
        assert_eq!(
            messages(&an)[0],
            "timeline 2: WAL segments 000000020000000000000005 to 000000020000000000000006 (2) are missing"
        );
        assert_eq!(an.problems.len(), 2, "and the fork before b2");
        // Recovery from b1 cannot cross to timeline 2 any more (segment 5 is read from
        // timeline 2), but still reaches the end of timeline 1.
        assert_eq!(an.pitr[0].to_lsn, Some(lsn("0/A000000")));
        assert_eq!(an.pitr[0].to_timeline, Some(TimelineId(1)));
    }

    /// A history file whose switch point contradicts the timeline's own segments or backups
    /// is not the history of the timeline archived here (another cluster's, say): reported
    /// as a bad history file. Conservative: a timeline starting at its switch point, or a
    /// parent going on after it (an old primary that kept archiving), is fine.
    #[test]
    fn history_files_that_contradict_the_archive() {
        // Timeline 2's segments start in segment 3, but its history says it began in 5.
        let mut a = archive(&[(1, 1..=9), (2, 3..=12)]);
        add_history(&mut a, 2, "1\t0/5000090\tno recovery target specified\n");
        let an = analyze(&a);
        assert_eq!(
            messages(&an),
            vec!["00000002.history: it says timeline 2 branched off timeline 1 at 0/5000090, but segment 000000020000000000000003 of timeline 2 is archived, from before that point (another cluster's history file?)"]
        );
        assert!(an.problems[0].is_corrupt());
        // A backup taken on timeline 2 before its switch point.
        let mut a = branched();
        a.backups.push(backup("b2", 2, "0/4000028", "0/4000100"));
        let an = analyze(&a);
        assert!(
            messages(&an)[0].starts_with("00000002.history: it says timeline 2 branched off timeline 1 at 0/5000090, but backup b2 was taken on timeline 2 at 0/4000028"),
            "{:?}",
            messages(&an)
        );
        // A switch point exactly at a segment boundary: the timeline starts in that segment.
        let mut a = archive(&[(1, 1..=9), (2, 5..=12)]);
        add_history(&mut a, 2, "1\t0/5000000\tno recovery target specified\n");
        a.backups.push(backup("b2", 2, "0/6000028", "0/6000100"));
        assert_eq!(messages(&analyze(&a)), Vec::<String>::new());
    }

    /// The newest timeline does not descend from the backup's at all: PostgreSQL's default
    /// recovery cannot reach it. PostgreSQL looks for the history files after the backup's
    /// timeline one after the other, so a later one past a missing one does not count.
    #[test]
    fn the_latest_timeline_must_descend_from_the_backups() {
        let mut a = archive(&[(1, 1..=9), (2, 5..=9), (3, 7..=12)]);
        add_history(&mut a, 2, "1\t0/5000090\ta\n");
        add_history(&mut a, 3, "1\t0/5000090\ta\n2\t0/7000090\tb\n");
        a.backups.push(backup("on2", 2, "0/6000028", "0/6000100"));
        a.backups.push(backup("on1", 1, "0/2000028", "0/2000100"));
        assert_eq!(messages(&analyze(&a)), Vec::<String>::new());
        // A timeline 3 that forked off timeline 1 instead.
        a.histories.remove(&TimelineId(3));
        add_history(&mut a, 3, "1\t0/7000090\tb\n");
        let m = messages(&analyze(&a));
        assert_eq!(m.len(), 1, "{m:?}");
        assert!(
            m[0].starts_with("backup on2 (timeline 2, started at 0/6000028) cannot recover to the latest timeline, 3: 00000003.history does not descend from timeline 2"),
            "{m:?}"
        );
        // Timeline 5 after a missing 4 is not what PostgreSQL would follow.
        let mut a = archive(&[(1, 1..=9)]);
        add_history(&mut a, 5, "1\t0/3000090\ta\n");
        a.backups.push(backup("b", 1, "0/6000028", "0/6000100"));
        assert_eq!(messages(&analyze(&a)), Vec::<String>::new());
    }

    #[test]
    fn partial_segments_end_old_timelines() {
        // Timeline 1 ends with a .partial at the switch point (a promoted standby archived it).
        let mut a = archive(&[(1, 1..=4), (2, 5..=8)]);
        a.files.insert(WalFileName::Partial(seg(1, 5)));
        add_history(&mut a, 2, "1\t0/5000090\tpromoted\n");
        a.backups.push(backup("b1", 1, "0/2000028", "0/2000100"));
        let an = analyze(&a);
        assert_eq!(messages(&an), Vec::<String>::new());
        assert_eq!(an.pitr[0].to_lsn, Some(lsn("0/9000000")));
        assert_eq!(an.pitr[0].to_timeline, Some(TimelineId(2)));
        assert_eq!(an.timelines[0].partials, vec![seg(1, 5)]);

        // A .partial followed by later segments of the same timeline: the complete one is missing.
        a.files.insert(WalFileName::Segment(seg(1, 6)));
        let an = analyze(&a);
        assert_eq!(
            messages(&an),
            vec!["timeline 1: WAL segment 000000010000000000000005 is missing (only 000000010000000000000005.partial archived, yet the timeline continues after it)"]
        );
    }

    #[test]
    fn a_timeline_without_history_is_reported_and_not_followed() {
        let mut a = archive(&[(1, 1..=6), (2, 5..=12)]);
        a.backups.push(backup("b1", 1, "0/2000028", "0/2000100"));
        let an = analyze(&a);
        assert_eq!(
            messages(&an),
            vec!["timeline 2 has WAL but no history file (00000002.history): recovery cannot follow it"]
        );
        assert_eq!(an.pitr[0].to_lsn, Some(lsn("0/7000000")));
        assert_eq!(an.pitr[0].to_timeline, Some(TimelineId(1)));
        assert!(!an.timelines[1].has_history);
    }

    #[test]
    fn descendants_follow_their_whole_chain() {
        // 1 -> 2 at segment 5, 2 -> 3 at segment 8.
        let mut a = archive(&[(1, 1..=6), (2, 5..=9), (3, 8..=15)]);
        add_history(&mut a, 2, "1\t0/5000090\ta\n");
        add_history(&mut a, 3, "1\t0/5000090\ta\n2\t0/8000000\tb\n");
        a.backups.push(backup("b1", 1, "0/2000028", "0/2000100"));
        a.backups.push(backup("b2", 2, "0/6000028", "0/6000100"));
        let an = analyze(&a);
        assert_eq!(messages(&an), Vec::<String>::new());
        assert_eq!(an.pitr[0].to_lsn, Some(lsn("0/10000000")));
        assert_eq!(an.pitr[0].to_timeline, Some(TimelineId(3)));
        assert_eq!(an.pitr[1].to_lsn, Some(lsn("0/10000000")));
        assert_eq!(an.pitr[1].to_timeline, Some(TimelineId(3)));

        // A history that does not extend its parent's.
        let mut b = a.clone();
        add_history(&mut b, 3, "1\t0/4000000\tx\n2\t0/8000000\tb\n");
        let an = analyze(&b);
        assert_eq!(an.problems.len(), 1, "{:?}", messages(&an));
        assert!(matches!(
            an.problems[0],
            Problem::BadHistory {
                timeline: TimelineId(3),
                ..
            }
        ));
        assert!(an.problems[0].is_corrupt());
        // A child branching off before its parent began.
        add_history(&mut a, 3, "2\t0/3000000\tb\n");
        let an = analyze(&a);
        assert!(
            messages(&an)[0].contains("before timeline 2 itself began"),
            "{:?}",
            messages(&an)
        );
    }

    #[test]
    fn wal_older_than_every_other_segment_may_have_been_deleted_by_retention() {
        // Retention removed everything before segment 20, including timeline 2's start.
        let mut a = archive(&[(1, 20..=30), (2, 20..=25)]);
        add_history(&mut a, 2, "1\t0/5000090\ta\n");
        let an = analyze(&a);
        assert_eq!(messages(&an), Vec::<String>::new());

        // A permanent backup pins its own old WAL; the hole after it is retention's.
        let mut a = archive(&[(1, 2..=3), (1, 10..=20)]);
        let mut p = backup("p", 1, "0/2000028", "0/3000100");
        p.permanent = true;
        a.backups.push(p.clone());
        a.backups.push(backup("b", 1, "0/A000028", "0/A000100"));
        let an = analyze(&a);
        assert_eq!(messages(&an), Vec::<String>::new());
        assert_eq!(an.pitr[0].to_lsn, Some(lsn("0/4000000")));
        // The same hole without the permanent mark is a gap.
        a.backups[0].permanent = false;
        let an = analyze(&a);
        assert_eq!(
            messages(&an),
            vec!["timeline 1: WAL segments 000000010000000000000004 to 000000010000000000000009 (6) are missing"]
        );
    }

    fn descriptor() -> Descriptor {
        Descriptor {
            format_version: 1,
            system_identifier: "7312345678901234567".into(),
            pg_version: Some(15),
            wal_page_magic: 0xD110,
            wal_segment_size: SEG,
            created_at: 0,
            created_by: "test".into(),
        }
    }

    fn segment_bytes(page_tli: u32, page_address: u64, sysid: u64) -> Vec<u8> {
        let mut b = vec![0u8; SEG as usize];
        b[0..2].copy_from_slice(&0xD110u16.to_le_bytes());
        b[2..4].copy_from_slice(&0x0006u16.to_le_bytes());
        b[4..8].copy_from_slice(&page_tli.to_le_bytes());
        b[8..16].copy_from_slice(&page_address.to_le_bytes());
        b[24..32].copy_from_slice(&sysid.to_le_bytes());
        b[32..36].copy_from_slice(&(SEG as u32).to_le_bytes());
        b[36..40].copy_from_slice(&8192u32.to_le_bytes());
        b
    }

    #[test]
    fn content_checks() {
        let d = descriptor();
        let sysid = 7_312_345_678_901_234_567;
        let name = WalFileName::Segment(seg(2, 3));
        check_wal_content(&name, &segment_bytes(2, 3 * SEG, sysid), &d).unwrap();
        // A new timeline's first segment starts with its parent's pages.
        check_wal_content(&name, &segment_bytes(1, 3 * SEG, sysid), &d).unwrap();
        check_wal_content(
            &WalFileName::Partial(seg(2, 3)),
            &segment_bytes(2, 3 * SEG, sysid),
            &d,
        )
        .unwrap();
        let err = |raw: &[u8]| check_wal_content(&name, raw, &d).unwrap_err();
        assert!(err(&segment_bytes(3, 3 * SEG, sysid)).contains("timeline 3"));
        assert!(err(&segment_bytes(2, 4 * SEG, sysid)).contains("0/4000000"));
        assert!(err(&segment_bytes(2, 3 * SEG, 1)).contains("system identifier is 1,"));
        assert!(err(&segment_bytes(2, 3 * SEG, sysid)[..4096]).contains("4096 bytes"));
        assert!(err(&vec![0; SEG as usize]).contains("magic"));

        let h = WalFileName::History(TimelineId(2));
        check_wal_content(&h, b"1\t0/3000090\tno recovery target specified\n", &d).unwrap();
        assert!(check_wal_content(&h, b"garbage", &d)
            .unwrap_err()
            .contains("not a valid timeline history"));
        let b: WalFileName = "000000010000000000000002.00000028.backup".parse().unwrap();
        check_wal_content(
            &b,
            b"START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n\
              STOP WAL LOCATION: 0/2000100 (file 000000010000000000000002)\n\
              CHECKPOINT LOCATION: 0/2000060\n",
            &d,
        )
        .unwrap();
        assert!(check_wal_content(
            &b,
            b"START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n",
            &d,
        )
        .unwrap_err()
        .contains("not a valid backup history file: no STOP WAL LOCATION"));
        assert!(check_wal_content(&b, &[0xff, 0xfe], &d).is_err());
    }

    #[test]
    fn problems_serialize_with_their_kind() {
        let p = Problem::Gap {
            timeline: TimelineId(1),
            first: seg(1, 5),
            last: seg(1, 5),
            count: 1,
            partial_only: vec![],
        };
        assert_eq!(
            serde_json::to_value(&p).unwrap(),
            serde_json::json!({
                "kind": "gap", "timeline": 1, "first": "000000010000000000000005",
                "last": "000000010000000000000005", "count": 1, "partial_only": []
            })
        );
        let r = PitrRange {
            backup: "b".into(),
            timeline: TimelineId(1),
            from_lsn: lsn("0/2000100"),
            to_lsn: None,
            to_timeline: None,
        };
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            serde_json::json!({"backup": "b", "timeline": 1, "from_lsn": "0/2000100", "to_lsn": null, "to_timeline": null})
        );
    }
}
