//! Timeline history files and backup history files: the two WAL file kinds without WAL pages.
//!
//! A segment proves what it is through its page header; these text files prove nothing by
//! themselves, and PostgreSQL trusts them completely: recovery follows the newest timeline a
//! history file describes, and a wrong one ends a restore with "requested timeline N is not
//! a child of this server's history". So `wal-push` refuses a file of either kind that does
//! not parse as PostgreSQL writes it (status 3), instead of storing garbage under a name a
//! restore will later take for good, and `wal-verify` checks the stored ones the same way.
//!
//! The parsers follow PostgreSQL's readers (`readTimeLineHistory`, the backup label reader)
//! and PostgreSQL's writers (`writeTimeLineHistory`, `do_pg_backup_stop`): they accept what
//! PostgreSQL writes and accepts, and refuse what it would choke on or could not have
//! written (timelines out of order, a backup history file whose locations contradict its
//! own name).
//!
//! Switch points may go backwards, because PostgreSQL writes them so: a recovery that stops
//! on an old timeline before that timeline's switch point, toward a newer target timeline
//! (a point-in-time restore to just before a failover, say), promotes with a history whose
//! last switch point is before the previous one. PostgreSQL's reader accepts that, and
//! resolves it newest entry first (`tliOfPointInHistory`): entry i covers [end of i-1, end
//! of i), the new timeline everything from its own switch point on, so the entry in
//! between covers nothing. [`effective`] gives that view to the readers that follow a chain.

use crate::lsn::Lsn;
use crate::wal::{SegmentName, TimelineId, WalFileName};

/// One line of a timeline history file: an ancestor timeline and where it ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryEntry {
    /// The ancestor timeline.
    pub timeline: TimelineId,
    /// The LSN at which the next timeline of the chain branched off it.
    pub switchpoint: Lsn,
    /// PostgreSQL's free-text reason (may be empty).
    pub reason: String,
}

/// Parses the content of `<timeline>.history`: lines `<parentTLI>\t<switchpoint X/Y>\t<reason>`,
/// blank lines and `#` comments ignored, as PostgreSQL's `readTimeLineHistory` reads it.
/// The entries must name timelines older than `timeline`, in increasing order, with valid
/// (non-zero) switch points, and there must be at least one. Switch points may decrease:
/// PostgreSQL writes that when recovery stopped on an old timeline before its switch point
/// (see the module doc); [`effective`] resolves such a history as PostgreSQL does.
pub fn parse_history(timeline: TimelineId, text: &str) -> Result<Vec<HistoryEntry>, String> {
    let mut out: Vec<HistoryEntry> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut shown = format!("{raw:?}");
        if shown.len() > 80 {
            let cut = (0..=77)
                .rev()
                .find(|&c| shown.is_char_boundary(c))
                .unwrap_or(0);
            shown.truncate(cut);
            shown.push_str("...");
        }
        let bad = |why: &str| format!("line {}: {why}: {shown}", i + 1);
        // Fields are separated by a tab, but sscanf("%u\t%X/%X") takes any whitespace.
        let (tli, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let rest = rest.trim_start();
        let (switchpoint, reason) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
        let tli = tli
            .parse::<u32>()
            .ok()
            .filter(|&t| t != 0)
            .ok_or_else(|| bad("no timeline ID"))?;
        let switchpoint: Lsn = switchpoint
            .parse()
            .map_err(|_| bad("no switch point LSN"))?;
        if switchpoint == Lsn::INVALID {
            return Err(bad("the switch point is the invalid LSN 0/0"));
        }
        let reason = reason.trim().to_string();
        if tli >= timeline.0 {
            return Err(bad(&format!(
                "timeline {tli} cannot be an ancestor of timeline {timeline}"
            )));
        }
        if let Some(prev) = out.last() {
            if tli <= prev.timeline.0 {
                return Err(bad("timeline IDs do not increase"));
            }
        }
        out.push(HistoryEntry {
            timeline: TimelineId(tli),
            switchpoint,
            reason,
        });
    }
    if out.is_empty() && timeline.0 > 1 {
        return Err("no entries: a history file lists at least the parent timeline".into());
    }
    Ok(out)
}

/// The history as PostgreSQL's `tliOfPointInHistory` resolves it, with non-decreasing
/// switch points: entry i covers [end of i-1, end of i) and the history's own timeline
/// everything from the last switch point on, a newer range winning where they overlap. So
/// an entry's effective end is the least switch point from it on, and an entry left with
/// an empty range covers nothing and is dropped. For a history PostgreSQL wrote in order,
/// this is the history itself.
pub fn effective(history: &[HistoryEntry]) -> Vec<HistoryEntry> {
    let mut out: Vec<HistoryEntry> = Vec::with_capacity(history.len());
    let mut end = Lsn(u64::MAX);
    for e in history.iter().rev() {
        end = end.min(e.switchpoint);
        out.push(HistoryEntry {
            switchpoint: end,
            ..e.clone()
        });
    }
    out.reverse();
    // Each entry begins where the previous one (as written) ended.
    let mut begin = Lsn::INVALID;
    let mut kept = Vec::with_capacity(out.len());
    for (e, written) in out.into_iter().zip(history) {
        if begin < e.switchpoint {
            kept.push(e);
        }
        begin = written.switchpoint;
    }
    kept
}

/// What a backup history file (`SEGMENT.OFFSET.backup`) records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupHistory {
    /// `START WAL LOCATION`.
    pub start: Lsn,
    /// `STOP WAL LOCATION`.
    pub stop: Lsn,
    /// `CHECKPOINT LOCATION`.
    pub checkpoint: Lsn,
    /// `START TIMELINE`, when present.
    pub start_timeline: Option<TimelineId>,
    /// `STOP TIMELINE`, when present.
    pub stop_timeline: Option<TimelineId>,
    /// `LABEL`, when present.
    pub label: Option<String>,
}

/// Longest backup history file accepted: PostgreSQL's are a few hundred bytes (the label is
/// at most 1 KiB).
pub const MAX_BACKUP_HISTORY: usize = 16 << 10;

/// Parses backup history file `name` (of a cluster with `wal_segment_size`-byte segments), as
/// `do_pg_backup_stop` writes it: `START WAL LOCATION: X/Y (file SEGMENT)`, `STOP WAL
/// LOCATION: X/Y (file SEGMENT)`, `CHECKPOINT LOCATION: X/Y`, and the other lines of the
/// backup label (`BACKUP METHOD`, `START TIME`, `LABEL`, `START TIMELINE`, `STOP TIME`,
/// `STOP TIMELINE`, ...). The start location must be the one the name encodes (segment and
/// offset), the segments in parentheses those holding the locations, and start <= checkpoint
/// <= stop. Lines it does not know are allowed (later PostgreSQL versions add some); a
/// known one given twice is not.
pub fn parse_backup_history(
    name: &WalFileName,
    raw: &[u8],
    wal_segment_size: u64,
) -> Result<BackupHistory, String> {
    let WalFileName::BackupHistory { segment, offset } = *name else {
        return Err(format!("{name} is not a backup history file name"));
    };
    if raw.len() > MAX_BACKUP_HISTORY {
        return Err(format!(
            "is {} bytes: too long for a backup history file",
            raw.len()
        ));
    }
    if raw.contains(&0) {
        return Err("holds NUL bytes: not a backup history file".into());
    }
    // The label may be in any encoding; only the ASCII fields matter.
    let text = String::from_utf8_lossy(raw);
    let mut fields: std::collections::BTreeMap<&str, &str> = std::collections::BTreeMap::new();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(": ") else {
            continue;
        };
        if matches!(
            key,
            "START WAL LOCATION"
                | "STOP WAL LOCATION"
                | "CHECKPOINT LOCATION"
                | "START TIMELINE"
                | "STOP TIMELINE"
                | "LABEL"
        ) && fields.insert(key, value).is_some()
        {
            return Err(format!("{key} appears twice"));
        }
    }
    let field = |key: &str| {
        fields
            .get(key)
            .copied()
            .ok_or_else(|| format!("no {key} line: not a backup history file"))
    };
    let location = |key: &str| -> Result<(Lsn, Option<SegmentName>), String> {
        let value = field(key)?;
        let (lsn, file) = match value.split_once(" (file ") {
            Some((lsn, rest)) => {
                let file = rest
                    .strip_suffix(')')
                    .ok_or_else(|| format!("{key}: {value:?} is not \"X/Y (file SEGMENT)\""))?;
                let seg = file
                    .parse::<SegmentName>()
                    .map_err(|_| format!("{key}: {file:?} is not a WAL segment name"))?;
                (lsn, Some(seg))
            }
            None => (value, None),
        };
        let lsn: Lsn = lsn
            .trim()
            .parse()
            .map_err(|_| format!("{key}: {lsn:?} is not an LSN"))?;
        if lsn == Lsn::INVALID {
            return Err(format!("{key} is the invalid LSN 0/0"));
        }
        Ok((lsn, file))
    };
    let timeline = |key: &str| -> Result<Option<TimelineId>, String> {
        fields
            .get(key)
            .map(|v| {
                v.trim()
                    .parse::<u32>()
                    .ok()
                    .filter(|&t| t != 0)
                    .map(TimelineId)
                    .ok_or_else(|| format!("{key}: {v:?} is not a timeline ID"))
            })
            .transpose()
    };
    let (start, start_file) = location("START WAL LOCATION")?;
    let (stop, stop_file) = location("STOP WAL LOCATION")?;
    let (checkpoint, _) = location("CHECKPOINT LOCATION")?;
    let start_timeline = timeline("START TIMELINE")?;
    let stop_timeline = timeline("STOP TIMELINE")?;

    let named_start = Lsn(segment.start_lsn(wal_segment_size).0 + u64::from(offset));
    if !segment.fits_segment_size(wal_segment_size) || u64::from(offset) >= wal_segment_size {
        return Err(format!(
            "the name is out of range for {} MiB segments",
            wal_segment_size >> 20
        ));
    }
    if start != named_start {
        return Err(format!(
            "START WAL LOCATION is {start} but the name says the backup started at {named_start}"
        ));
    }
    if start_file != Some(segment) {
        return Err(format!(
            "START WAL LOCATION names file {} but the name says {segment}",
            start_file.map_or_else(|| "none".to_string(), |s| s.to_string())
        ));
    }
    if let Some(t) = start_timeline.filter(|&t| t != segment.timeline) {
        return Err(format!(
            "START TIMELINE is {t} but the name says timeline {}",
            segment.timeline
        ));
    }
    if stop < start {
        return Err(format!(
            "STOP WAL LOCATION {stop} is before START WAL LOCATION {start}"
        ));
    }
    if checkpoint < start || checkpoint > stop {
        return Err(format!(
            "CHECKPOINT LOCATION {checkpoint} is not between the start ({start}) and the stop ({stop})"
        ));
    }
    let stop_tli = stop_timeline.unwrap_or(segment.timeline);
    if stop_tli < segment.timeline {
        return Err(format!(
            "STOP TIMELINE {stop_tli} is before START TIMELINE {}",
            segment.timeline
        ));
    }
    let stop_segment = SegmentName::containing(stop_tli, stop, wal_segment_size);
    if let Some(f) = stop_file.filter(|f| *f != stop_segment) {
        return Err(format!(
            "STOP WAL LOCATION {stop} is in {stop_segment}, not in {f}"
        ));
    }
    Ok(BackupHistory {
        start,
        stop,
        checkpoint,
        start_timeline,
        stop_timeline,
        label: fields.get("LABEL").map(|l| l.to_string()),
    })
}

/// Checks the content of a WAL file that holds no WAL pages (a timeline history file or a
/// backup history file) as PostgreSQL writes it; other kinds pass. The message says what is
/// wrong, to follow the file's name.
pub fn check_text_file(
    name: &WalFileName,
    raw: &[u8],
    wal_segment_size: u64,
) -> Result<(), String> {
    match name {
        WalFileName::History(t) => {
            if raw.contains(&0) {
                return Err("is not a valid timeline history: it holds NUL bytes".into());
            }
            // A reason may quote a restore point's name in any encoding.
            parse_history(*t, &String::from_utf8_lossy(raw))
                .map(|_| ())
                .map_err(|e| format!("is not a valid timeline history: {e}"))
        }
        WalFileName::BackupHistory { .. } => parse_backup_history(name, raw, wal_segment_size)
            .map(|_| ())
            .map_err(|e| format!("is not a valid backup history file: {e}")),
        WalFileName::Segment(_) | WalFileName::Partial(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lsn(s: &str) -> Lsn {
        s.parse().unwrap()
    }

    #[test]
    fn parses_history_files() {
        let h = parse_history(
            TimelineId(3),
            "1\t0/3000090\tno recovery target specified\n\n# comment\n  2\t0/5000000\tbefore 2026-11-22 05:30:00+00\n",
        )
        .unwrap();
        assert_eq!(
            h,
            vec![
                HistoryEntry {
                    timeline: TimelineId(1),
                    switchpoint: lsn("0/3000090"),
                    reason: "no recovery target specified".into()
                },
                HistoryEntry {
                    timeline: TimelineId(2),
                    switchpoint: lsn("0/5000000"),
                    reason: "before 2026-11-22 05:30:00+00".into()
                },
            ]
        );
        assert_eq!(
            parse_history(TimelineId(2), "1\t0/3000090").unwrap()[0].reason,
            ""
        );
        assert_eq!(
            parse_history(TimelineId(2), "1  0/3000090 \t two words ").unwrap()[0],
            HistoryEntry {
                timeline: TimelineId(1),
                switchpoint: lsn("0/3000090"),
                reason: "two words".into()
            }
        );
        // Timeline 1 has no history file content to speak of.
        assert_eq!(parse_history(TimelineId(1), "").unwrap(), vec![]);
    }

    #[test]
    fn refuses_hostile_history_files() {
        let long_garbage = "\u{1}".repeat(100_000);
        for bad in [
            "",
            "# only a comment\n",
            "x\t0/1\treason",
            "1\tnot-an-lsn\treason",
            "1\t0/0\tinvalid switch point",
            "1\t0/\tempty half",
            "1\t123456789/0\ttoo many digits",
            "1\t-1/5\tsign",
            "2\t0/1\tnot an ancestor of 2",
            "1\t0/5\ta\n1\t0/6\tb",
            "0\t0/5\tzero",
            "4294967296\t0/5\toverflow",
            "1",
            "\u{0}\u{0}\u{0}",
            long_garbage.as_str(),
            "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)",
        ] {
            let tli = if bad.contains("\n2\t") { 3 } else { 2 };
            let e = parse_history(TimelineId(tli), bad);
            assert!(e.is_err(), "{bad:?} should be refused");
            assert!(e.unwrap_err().len() < 300, "the message stays short");
        }
    }

    /// PostgreSQL's `tliOfPointInHistory` over `readTimeLineHistory`'s list (newest first).
    fn tli_of_point(timeline: TimelineId, h: &[HistoryEntry], p: Lsn) -> TimelineId {
        let mut ranges = vec![(
            h.last().map_or(Lsn::INVALID, |e| e.switchpoint),
            None,
            timeline,
        )];
        let mut begin = Lsn::INVALID;
        for e in h {
            ranges.push((begin, Some(e.switchpoint), e.timeline));
            begin = e.switchpoint;
        }
        ranges.sort_by_key(|r| std::cmp::Reverse(r.2));
        ranges
            .iter()
            .find(|(b, end, _)| *b <= p && end.is_none_or(|end| p < end))
            .map(|r| r.2)
            .expect("PostgreSQL finds a timeline for every point")
    }

    /// What [`effective`] says about `p`, the way the window and verify read it.
    fn tli_of_effective(timeline: TimelineId, h: &[HistoryEntry], p: Lsn) -> TimelineId {
        effective(h)
            .iter()
            .find(|e| p < e.switchpoint)
            .map_or(timeline, |e| e.timeline)
    }

    #[test]
    fn accepts_backwards_switch_points_as_postgresql_writes_them() {
        // A recovery of timeline 1 toward timeline 2 (latest) that stopped before timeline
        // 2 began, promoted as timeline 3: PostgreSQL 15 writes exactly this.
        let text = "1\t0/5000000\tno recovery target specified\n\n\
                    2\t0/4F00000\tbefore 2026-12-07 12:00:00.123+00\n";
        let h = parse_history(TimelineId(3), text).unwrap();
        assert_eq!(h.len(), 2);
        assert_eq!(h[1].switchpoint, lsn("0/4F00000"));
        // Timeline 2 covers nothing; timeline 1 ends where timeline 3 begins.
        assert_eq!(
            effective(&h),
            vec![HistoryEntry {
                timeline: TimelineId(1),
                switchpoint: lsn("0/4F00000"),
                reason: "no recovery target specified".into()
            }]
        );
        // A history in order is its own effective history.
        let ordered = parse_history(TimelineId(3), "1\t0/3000090\ta\n2\t0/5000000\tb").unwrap();
        assert_eq!(effective(&ordered), ordered);
        assert_eq!(effective(&[]), vec![]);
        // Everywhere, the same timeline as PostgreSQL's resolution, on these shapes and others.
        let shapes = [
            (3, text.to_string()),
            (3, "1\t0/3000090\ta\n2\t0/5000000\tb".into()),
            (
                4,
                "1\t0/5000000\ta\n2\t0/6000000\tb\n3\t0/4800000\tc".into(),
            ),
            (
                4,
                "1\t0/5000000\ta\n2\t0/4F00000\tb\n3\t0/5800000\tc".into(),
            ),
            (
                4,
                "1\t0/5000000\ta\n2\t0/5000000\tb\n3\t0/5000000\tc".into(),
            ),
            (2, "1\t0/5000000\ta".into()),
        ];
        for (tli, text) in shapes {
            let h = parse_history(TimelineId(tli), &text).unwrap();
            for p in (0..0x700u64).map(|k| Lsn(k << 12)) {
                assert_eq!(
                    tli_of_effective(TimelineId(tli), &h, p),
                    tli_of_point(TimelineId(tli), &h, p),
                    "{text:?} at {p}"
                );
            }
        }
    }

    const SEG: u64 = 16 << 20;

    fn label(start: &str, start_file: &str, stop: &str, stop_file: &str, ckpt: &str) -> String {
        format!(
            "START WAL LOCATION: {start} (file {start_file})\n\
             STOP WAL LOCATION: {stop} (file {stop_file})\n\
             CHECKPOINT LOCATION: {ckpt}\n\
             BACKUP METHOD: streamed\n\
             BACKUP FROM: primary\n\
             START TIME: 2026-12-07 03:58:34 UTC\n\
             LABEL: nightly: with a colon\n\
             START TIMELINE: 1\n\
             STOP TIME: 2026-12-07 03:58:35 UTC\n\
             STOP TIMELINE: 1\n"
        )
    }

    fn name() -> WalFileName {
        "000000010000000000000002.00000028.backup".parse().unwrap()
    }

    #[test]
    fn parses_backup_history_files() {
        let text = label(
            "0/2000028",
            "000000010000000000000002",
            "0/3000100",
            "000000010000000000000003",
            "0/2000060",
        );
        let b = parse_backup_history(&name(), text.as_bytes(), SEG).unwrap();
        assert_eq!(
            (b.start, b.stop, b.checkpoint),
            (lsn("0/2000028"), lsn("0/3000100"), lsn("0/2000060"))
        );
        assert_eq!(b.start_timeline, Some(TimelineId(1)));
        assert_eq!(b.label.as_deref(), Some("nightly: with a colon"));
        // Unknown lines and a non-UTF-8 label are fine.
        let mut raw = text.into_bytes();
        raw.extend_from_slice(b"INCREMENTAL FROM LSN: 0/1000000\nLABEL2: \xff\xfe\n");
        parse_backup_history(&name(), &raw, SEG).unwrap();
    }

    #[test]
    fn refuses_hostile_backup_history_files() {
        let seg2 = "000000010000000000000002";
        let seg3 = "000000010000000000000003";
        let ok = label("0/2000028", seg2, "0/3000100", seg3, "0/2000060");
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"garbage".to_vec(), "no START WAL LOCATION"),
            (Vec::new(), "no START WAL LOCATION"),
            (
                b"START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n".to_vec(),
                "no STOP WAL LOCATION",
            ),
            (
                label("0/2000030", seg2, "0/3000100", seg3, "0/2000060").into_bytes(),
                "name says the backup started at 0/2000028",
            ),
            (
                label("0/2000028", seg3, "0/3000100", seg3, "0/2000060").into_bytes(),
                "names file 000000010000000000000003",
            ),
            (
                label("0/2000028", seg2, "0/1000100", seg2, "0/2000060").into_bytes(),
                "before START WAL LOCATION",
            ),
            (
                label("0/2000028", seg2, "0/3000100", seg2, "0/2000060").into_bytes(),
                "is in 000000010000000000000003, not in 000000010000000000000002",
            ),
            (
                label("0/2000028", seg2, "0/3000100", seg3, "0/4000000").into_bytes(),
                "CHECKPOINT LOCATION 0/4000000 is not between",
            ),
            (
                label("0/2000028", seg2, "0/3000100", seg3, "zz").into_bytes(),
                "is not an LSN",
            ),
            (
                label("0/2000028", "0000000100", "0/3000100", seg3, "0/2000060").into_bytes(),
                "is not a WAL segment name",
            ),
            (
                ok.replace("START TIMELINE: 1", "START TIMELINE: 2")
                    .into_bytes(),
                "START TIMELINE is 2",
            ),
            (
                ok.replace("STOP TIMELINE: 1", "STOP TIMELINE: 0")
                    .into_bytes(),
                "is not a timeline ID",
            ),
            (
                format!("{ok}CHECKPOINT LOCATION: 0/2000060\n").into_bytes(),
                "appears twice",
            ),
            (vec![0u8; 100], "NUL"),
            (vec![b'x'; MAX_BACKUP_HISTORY + 1], "too long"),
        ];
        for (raw, want) in cases {
            let e = parse_backup_history(&name(), &raw, SEG).unwrap_err();
            assert!(e.contains(want), "{want:?} not in {e:?}");
        }
        // Another file kind's name.
        let h: WalFileName = "00000002.history".parse().unwrap();
        assert!(parse_backup_history(&h, ok.as_bytes(), SEG).is_err());
        // An offset beyond the segment size.
        let far: WalFileName = "000000010000000000000002.01000028.backup".parse().unwrap();
        assert!(parse_backup_history(&far, ok.as_bytes(), 1 << 20)
            .unwrap_err()
            .contains("out of range"));
    }
}
