//! The analysis of a WAL archive: the rules of `verify`'s module documentation, as a pure
//! function from a listing, the history files and the backups' ranges to timelines, problems
//! and recovery ranges.
//!
//! It is its own room because it does no I/O: the scan in `verify` only fills in the
//! [`Archive`] it reads, and every rule is unit-tested here on synthetic archives
//! (`verify/tests.rs`).

use std::collections::{BTreeMap, BTreeSet};

use super::{Analysis, Archive, BackupRange, HistoryEntry, PitrRange, Problem, TimelineSummary};
use crate::backup::needed_segments;
use crate::history::effective;
use crate::lsn::Lsn;
use crate::wal::{SegmentName, TimelineId, WalFileName};

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
        // Where the timeline's own WAL begins, as PostgreSQL resolves the history (an
        // ancestor whose range is empty is skipped).
        let (parent, switchpoint) = history
            .and_then(|h| effective(h).last().cloned())
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
/// each begins at, oldest first: the history as PostgreSQL resolves it, so an ancestor
/// whose range is empty (switch points going backwards) is not read at all.
fn chain(a: &Archive, target: TimelineId) -> Vec<(TimelineId, u64)> {
    let mut out = Vec::new();
    let mut begin = 0;
    if let Some(h) = a.histories.get(&target) {
        for e in effective(h) {
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
            && effective(h)
                .iter()
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
