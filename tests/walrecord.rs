//! The WAL record reader (`walarchive::walrecord`) against real WAL of every supported
//! major (15, 16, 17, 18), with that major's own `pg_waldump` as the oracle: every record
//! start, and for the kinds the reader decodes (commits, aborts, prepared ones, restore
//! points, checkpoints) the kind, time and name, record for record; records spanning pages
//! and segments; and where the valid WAL ends: a recycled segment's stale tail, a flipped
//! byte (CRC), another version's magic. Per major, one cluster (1 MiB segments) archiving
//! with `cp`, shared by that major's tests; each test exists once per major (`pg15::...`,
//! `pg18::...`), so a failure names the major.

use testkit as common;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, Utc};
use common::*;
use walarchive::wal::magic_for_major;
use walarchive::walrecord::{summarize, Record, RecordKind, Stop, WalReader, WalRecordError};
use walarchive::{Lsn, SegmentName, TimelineId};

const SEG: u64 = 1 << 20;
const PAGE: u64 = 8192;

struct Fixture {
    cluster: PgCluster,
    archive: TestDir,
    /// Where the generated WAL starts (a segment's start) and ends (the next segment after
    /// the last switch).
    start: Lsn,
    end: Lsn,
    /// (checkpoint LSN, checkpoint time in seconds) from pg_control, after each checkpoint.
    checkpoints: Vec<(Lsn, i64)>,
    /// The major's WAL page magic.
    magic: u16,
}

fn lsn(s: &str) -> Lsn {
    s.trim().parse().unwrap_or_else(|e| panic!("{s:?}: {e}"))
}

fn seg_name(l: Lsn) -> String {
    SegmentName::containing(TimelineId(1), l, SEG).to_string()
}

fn control_checkpoint(c: &PgCluster) -> (Lsn, i64) {
    let out = c.psql(
        "select checkpoint_lsn || '|' || extract(epoch from checkpoint_time)::bigint from pg_control_checkpoint()",
    );
    let (l, t) = out.split_once('|').unwrap();
    (lsn(l), t.parse().unwrap())
}

fn fixture(major: u32) -> &'static Fixture {
    static F: [OnceLock<Fixture>; SUPPORTED_MAJORS.len()] =
        [const { OnceLock::new() }; SUPPORTED_MAJORS.len()];
    let i = SUPPORTED_MAJORS.iter().position(|&m| m == major).unwrap();
    F[i].get_or_init(|| {
        let archive = TestDir::new_postgres("walarchive-walrecord-");
        let cluster = PgCluster::init(PgOptions {
            major: Some(major),
            extra_conf: format!(
                "archive_mode = on\narchive_command = 'cp %p {}/%f'\nmax_prepared_transactions = 5\nwal_keep_size = 0\n",
                archive.path().display()
            ),
            ..Default::default()
        });
        cluster.start();
        let c = &cluster;
        c.psql("create table t(id int)");
        c.psql("create table big(v text)");
        c.psql("alter table big alter column v set storage external");
        c.psql("select pg_switch_wal()");
        let start = lsn(&c.psql("select pg_current_wal_insert_lsn()"));
        let start = Lsn(start.0 / SEG * SEG);
        for i in 0..3 {
            c.psql(&format!("insert into t values ({i})"));
        }
        c.psql("begin; insert into t values (100); rollback");
        c.psql("begin; insert into t values (101); prepare transaction 'p1'");
        c.psql("commit prepared 'p1'");
        c.psql("begin; insert into t values (102); prepare transaction 'p2'");
        c.psql("rollback prepared 'p2'");
        c.psql("select pg_create_restore_point('a')");
        c.psql(&format!("select pg_create_restore_point('{}')", "r".repeat(63)));
        c.psql("checkpoint");
        let mut checkpoints = vec![control_checkpoint(c)];
        // 3 MiB in one row, stored uncompressed: TOAST records crossing pages and segments.
        c.psql("insert into big select string_agg(md5(g::text), '') from generate_series(1, 98304) g");
        // 3 MiB in one record: a record spanning whole segments.
        c.psql("select pg_logical_emit_message(false, 'walrecord', repeat('x', 3145728))");
        c.psql("insert into t values (200)");
        c.restart(); // a shutdown checkpoint
        checkpoints.push(control_checkpoint(c));
        c.psql("insert into t values (201)");
        c.psql("select pg_create_restore_point('after-restart')");
        let last = c.switch_wal();
        c.wait_archived(&last, Duration::from_secs(60));
        let last: SegmentName = last.parse().unwrap();
        let end = last.next(SEG).start_lsn(SEG);
        Fixture {
            cluster,
            archive,
            start,
            end,
            checkpoints,
            magic: magic_for_major(major).unwrap(),
        }
    })
}

/// The archived segments from `start` to `end`, in order.
fn segments(f: &Fixture) -> Vec<(Lsn, Vec<u8>)> {
    let mut out = Vec::new();
    let mut at = f.start;
    while at < f.end {
        out.push((at, fs::read(f.archive.join(seg_name(at))).unwrap()));
        at = Lsn(at.0 + SEG);
    }
    out
}

fn read_all(f: &Fixture) -> Vec<Record> {
    let mut r = WalReader::new(SEG, TimelineId(1), f.start);
    let mut all = Vec::new();
    for (start, bytes) in segments(f) {
        all.extend(r.feed(start, &bytes).unwrap());
    }
    assert_eq!(
        r.stop(),
        None,
        "the WAL ends with a switch, read to its end"
    );
    all
}

struct Line {
    rmgr: String,
    lsn: Lsn,
    desc: String,
}

/// Runs pg_waldump (the fixture's major's) in UTC; returns its records and stderr.
fn waldump(f: &Fixture, dir: &Path, args: &[&str]) -> (Vec<Line>, String) {
    let out = Command::new(f.cluster.bin("pg_waldump"))
        .env("TZ", "UTC")
        .arg("--path")
        .arg(dir)
        .args(args)
        .output()
        .unwrap();
    let lines = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let rmgr = l["rmgr: ".len()..]
                .split_whitespace()
                .next()
                .unwrap()
                .to_string();
            let at = l.find("lsn: ").unwrap() + 5;
            let lsn = lsn(l[at..].split(',').next().unwrap());
            let desc = l[l.find("desc: ").unwrap() + 6..].trim_end().to_string();
            Line { rmgr, lsn, desc }
        })
        .collect();
    (lines, String::from_utf8_lossy(&out.stderr).into_owned())
}

/// `2026-12-07 10:15:00.123456 UTC` as pg_waldump prints `timestamptz_to_str` in UTC.
fn waldump_time(s: &str) -> DateTime<Utc> {
    let s = s.trim_start();
    assert_eq!(&s[26..30], " UTC", "{s}");
    NaiveDateTime::parse_from_str(&s[..26], "%Y-%m-%d %H:%M:%S%.f")
        .unwrap_or_else(|e| panic!("{s}: {e}"))
        .and_utc()
}

/// What the reader must say of a record pg_waldump describes; `None` for checkpoints (whose
/// time pg_waldump does not print).
fn expected(line: &Line) -> Option<RecordKind> {
    let (op, rest) = line.desc.split_once(' ').unwrap_or((&line.desc, ""));
    let time_after_gid = |rest: &str| waldump_time(rest.split_once(": ").unwrap().1);
    Some(match (line.rmgr.as_str(), op) {
        ("Transaction", "COMMIT") => RecordKind::Commit(waldump_time(rest)),
        ("Transaction", "ABORT") => RecordKind::Abort(waldump_time(rest)),
        ("Transaction", "COMMIT_PREPARED") => RecordKind::Commit(time_after_gid(rest)),
        ("Transaction", "ABORT_PREPARED") => RecordKind::Abort(time_after_gid(rest)),
        ("XLOG", "RESTORE_POINT") => RecordKind::RestorePoint {
            name: rest.to_string(),
            time: DateTime::UNIX_EPOCH, // not printed: compared by name
        },
        ("XLOG", "CHECKPOINT_ONLINE" | "CHECKPOINT_SHUTDOWN") => return None,
        _ => RecordKind::Other,
    })
}

fn every_record_is_where_pg_waldump_finds_it(major: u32) {
    let f = fixture(major);
    let records = read_all(f);
    let range = [
        "--start".to_string(),
        f.start.to_string(),
        "--end".to_string(),
        f.end.to_string(),
    ];
    let range: Vec<&str> = range.iter().map(String::as_str).collect();
    let (all, stderr) = waldump(f, f.archive.path(), &range);
    assert!(all.len() > 1000, "{} records; {stderr}", all.len());
    let ours: Vec<Lsn> = records.iter().map(|r| r.start).collect();
    let theirs: Vec<Lsn> = all.iter().map(|l| l.lsn).collect();
    assert_eq!(ours.len(), theirs.len(), "{stderr}");
    assert_eq!(ours, theirs);
    for w in records.windows(2) {
        assert!(w[0].end <= w[1].start, "{:?} {:?}", w[0], w[1]);
    }

    // Records spanning pages and whole segments are among them.
    let spans = |r: &Record, unit: u64| (r.end.0 - 1) / unit - r.start.0 / unit;
    assert!(records.iter().filter(|r| spans(r, PAGE) >= 1).count() > 100);
    assert!(
        records.iter().any(|r| spans(r, SEG) >= 3),
        "the 3 MiB record"
    );
}

fn decoded_records_match_pg_waldump(major: u32) {
    let f = fixture(major);
    let records = read_all(f);
    let by_start: BTreeMap<Lsn, &Record> = records.iter().map(|r| (r.start, r)).collect();
    let args = [
        "--rmgr=Transaction".to_string(),
        "--rmgr=XLOG".to_string(),
        "--start".to_string(),
        f.start.to_string(),
        "--end".to_string(),
        f.end.to_string(),
    ];
    let (lines, stderr) = waldump(
        f,
        f.archive.path(),
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    assert!(!lines.is_empty(), "{stderr}");
    let mut seen = BTreeMap::<&str, usize>::new();
    let mut decoded = 0;
    for line in &lines {
        let ours = by_start
            .get(&line.lsn)
            .unwrap_or_else(|| panic!("no record at {} ({})", line.lsn, line.desc));
        *seen
            .entry(line.desc.split(' ').next().unwrap())
            .or_default() += 1;
        match (expected(line), &ours.kind) {
            (None, RecordKind::Checkpoint(_)) => {}
            (
                Some(RecordKind::RestorePoint { name, .. }),
                RecordKind::RestorePoint { name: n, .. },
            ) => {
                assert_eq!(&name, n, "{}", line.desc)
            }
            (Some(want), got) => assert_eq!(&want, got, "at {}: {}", line.lsn, line.desc),
            (None, got) => panic!("at {}: {} read as {got:?}", line.lsn, line.desc),
        }
        if ours.kind != RecordKind::Other {
            decoded += 1;
        }
    }
    // Nothing else is decoded: every commit, abort, restore point and checkpoint is one of
    // pg_waldump's lines.
    assert_eq!(
        decoded,
        records
            .iter()
            .filter(|r| r.kind != RecordKind::Other)
            .count()
    );
    for op in [
        "COMMIT",
        "ABORT",
        "COMMIT_PREPARED",
        "ABORT_PREPARED",
        "RESTORE_POINT",
        "CHECKPOINT_ONLINE",
        "CHECKPOINT_SHUTDOWN",
    ] {
        assert!(seen.contains_key(op), "no {op} in {seen:?}");
    }
    // From 17 an online checkpoint starts with XLOG_CHECKPOINT_REDO (no time: not a
    // checkpoint to the reader, compared above as any other record).
    assert_eq!(
        seen.contains_key("CHECKPOINT_REDO"),
        major >= 17,
        "{seen:?}"
    );
    let names: Vec<&str> = records
        .iter()
        .filter_map(|r| match &r.kind {
            RecordKind::RestorePoint { name, .. } => Some(name.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(names, ["a", &"r".repeat(63), "after-restart"]);

    // Checkpoint times as pg_control holds them.
    for (at, secs) in &f.checkpoints {
        assert_eq!(
            by_start[at].kind,
            RecordKind::Checkpoint(DateTime::from_timestamp(*secs, 0).unwrap()),
            "checkpoint at {at}"
        );
    }
    // Restore point times are the server's clock at creation: within the test's run.
    let now = Utc::now();
    for r in &records {
        if let RecordKind::RestorePoint { time, .. } = &r.kind {
            assert!(
                *time <= now && now - *time < chrono::Duration::minutes(10),
                "{time}"
            );
        }
    }
}

fn each_segment_summarized_alone_agrees_with_the_stream(major: u32) {
    let f = fixture(major);
    let records = read_all(f);
    for (start, bytes) in segments(f) {
        let seg_end = Lsn(start.0 + SEG);
        let s = summarize(start, SEG, &bytes).unwrap();
        // Records that start and end in the segment (a switch's end is the next segment).
        let inside: Vec<&Record> = records
            .iter()
            .filter(|r| r.start >= start && r.start < seg_end && (r.end <= seg_end))
            .collect();
        assert_eq!(s.first_record, inside.first().map(|r| r.start), "{start}");
        assert_eq!(s.last_record, inside.last().map(|r| r.start), "{start}");
        let last_xact = inside.iter().rev().find_map(|r| match r.kind {
            RecordKind::Commit(t) | RecordKind::Abort(t) => Some((r.start, t)),
            _ => None,
        });
        assert_eq!(s.last_xact, last_xact, "{start}");
        let rps: Vec<(Lsn, String, DateTime<Utc>)> = inside
            .iter()
            .filter_map(|r| match &r.kind {
                RecordKind::RestorePoint { name, time } => Some((r.start, name.clone(), *time)),
                _ => None,
            })
            .collect();
        assert_eq!(s.restore_points, rps, "{start}");
        if let Some(last) = inside.last() {
            assert_eq!(s.end_of_valid_wal, last.end, "{start}");
        }
        match &s.stop {
            Stop::EndOfInput => {}
            Stop::Switch => assert_eq!(inside.last().map(|r| r.end), Some(seg_end)),
            other => panic!("{start}: {other:?}"),
        }
    }
}

/// A copy of segment `name` (changed by `edit`) alone in a directory, as pg_waldump wants.
fn lone_copy(bytes: &[u8], name: &str, edit: impl FnOnce(&mut Vec<u8>)) -> (TestDir, Vec<u8>) {
    let dir = TestDir::new("walarchive-walrecord-copy-");
    let mut b = bytes.to_vec();
    edit(&mut b);
    fs::write(dir.join(name), &b).unwrap();
    (dir, b)
}

fn a_flipped_byte_is_a_crc_failure_where_pg_waldump_finds_one(major: u32) {
    let f = fixture(major);
    let records = read_all(f);
    let segs = segments(f);
    // A commit in the first segment, on one page, with records after it.
    let victim = records
        .iter()
        .find(|r| {
            matches!(r.kind, RecordKind::Commit(_)) && r.start.0 / PAGE == (r.end.0 - 1) / PAGE
        })
        .unwrap();
    let (seg_start, bytes) = segs
        .iter()
        .find(|(s, _)| victim.start.0 / SEG == s.0 / SEG)
        .unwrap();
    let at = (victim.start.0 - seg_start.0) as usize + 30; // inside the main data (xact_time)
    let name = seg_name(*seg_start);
    let (dir, bad) = lone_copy(bytes, &name, |b| b[at] ^= 0x01);

    let err = summarize(*seg_start, SEG, &bad).unwrap_err();
    assert!(
        matches!(&err, WalRecordError::BadRecord { lsn, why } if *lsn == victim.start && why.contains("CRC")),
        "{err}"
    );
    let (lines, stderr) = waldump(f, dir.path(), &[&name]);
    assert_eq!(
        lines.last().map(|l| l.lsn),
        records
            .iter()
            .rev()
            .find(|r| r.end <= victim.start)
            .map(|r| r.start)
    );
    assert!(
        stderr.contains(&format!(
            "incorrect resource manager data checksum in record at {}",
            victim.start
        )),
        "{stderr}"
    );
}

fn another_versions_wal_is_refused(major: u32) {
    let f = fixture(major);
    let (start, bytes) = &segments(f)[0];
    let mut b = bytes.clone();
    b[0..2].copy_from_slice(&0xD10Du16.to_le_bytes()); // PostgreSQL 14's magic
    assert_eq!(
        summarize(*start, SEG, &b).unwrap_err(),
        WalRecordError::UnsupportedVersion(0xD10D)
    );
    let mut r = WalReader::new(SEG, TimelineId(1), *start);
    assert_eq!(
        r.feed(*start, &b).unwrap_err(),
        WalRecordError::UnsupportedVersion(0xD10D)
    );
}

/// Whether a page after `from` holds another place's WAL: a recycled segment's stale tail.
fn stale_page_after(magic: u16, bytes: &[u8], seg_start: Lsn, from: Lsn) -> bool {
    let mut off = (from.0 - seg_start.0) / PAGE * PAGE + PAGE;
    while off < SEG {
        let o = off as usize;
        let page_magic = u16::from_le_bytes([bytes[o], bytes[o + 1]]);
        let addr = u64::from_le_bytes(bytes[o + 8..o + 16].try_into().unwrap());
        if page_magic == magic && addr != seg_start.0 + off {
            return true;
        }
        off += PAGE;
    }
    false
}

fn a_recycled_segments_stale_tail_ends_the_wal_where_pg_waldump_stops(major: u32) {
    let f = fixture(major);
    let c = &f.cluster;
    // Checkpoints recycle old segments as future ones; write until the current segment is a
    // recycled one with a stale tail.
    let mut found = None;
    for i in 0..30 {
        c.psql(&format!("insert into t values ({})", 1000 + i));
        c.psql("checkpoint");
        c.psql("select pg_switch_wal()");
        c.psql(&format!("insert into t values ({})", 2000 + i));
        let insert = lsn(&c.psql("select pg_current_wal_flush_lsn()"));
        let name = seg_name(insert);
        let bytes = fs::read(c.wal_dir().join(&name)).unwrap();
        let seg_start = Lsn(insert.0 / SEG * SEG);
        if stale_page_after(f.magic, &bytes, seg_start, insert) {
            found = Some((name, seg_start, bytes));
            break;
        }
    }
    let (name, seg_start, bytes) = found.expect("no recycled segment after 30 checkpoints");
    let (dir, _) = lone_copy(&bytes, &name, |_| {});
    let s = summarize(seg_start, SEG, &bytes).unwrap();
    let (lines, stderr) = waldump(f, dir.path(), &[&name]);
    assert_eq!(s.last_record, lines.last().map(|l| l.lsn), "{stderr}");
    let Stop::EndOfWal { lsn: end, why } = &s.stop else {
        panic!("{:?}", s.stop)
    };
    assert_eq!(*end, s.end_of_valid_wal);
    // pg_waldump: "error in WAL record at X: invalid record length at Y: wanted 24, got 0"
    // (or "unexpected pageaddr ... in log segment ..., offset N" at a page start).
    assert!(
        stderr.contains(&format!(" at {end}: "))
            || stderr.contains(&format!("offset {}", end.0 % SEG)),
        "we stop at {end} ({why}); pg_waldump: {stderr}"
    );

    // The next segment is recycled too, not yet written: stale from its first page.
    let next = Lsn(seg_start.0 + SEG);
    let next_name = seg_name(next);
    let bytes = fs::read(c.wal_dir().join(&next_name)).unwrap();
    assert!(stale_page_after(f.magic, &bytes, next, next) || bytes[8..16] != next.0.to_le_bytes());
    let s = summarize(next, SEG, &bytes).unwrap();
    assert_eq!((s.first_record, s.end_of_valid_wal), (None, next));
    assert!(
        matches!(&s.stop, Stop::EndOfWal { lsn, why } if *lsn == next && why.contains("address")),
        "{:?}",
        s.stop
    );
    let (dir, _) = lone_copy(&bytes, &next_name, |_| {});
    let (lines, stderr) = waldump(f, dir.path(), &[&next_name]);
    assert!(lines.is_empty());
    assert!(
        stderr.contains(&format!("could not find a valid record after {next}")),
        "{stderr}"
    );
}

/// Each test once per major, in a module named after it (`pg17::decoded_records_match_pg_waldump`).
macro_rules! per_major {
    ($($m:ident = $major:literal),*) => {$(
        mod $m {
            #[test]
            fn every_record_is_where_pg_waldump_finds_it() {
                super::every_record_is_where_pg_waldump_finds_it($major)
            }
            #[test]
            fn decoded_records_match_pg_waldump() {
                super::decoded_records_match_pg_waldump($major)
            }
            #[test]
            fn each_segment_summarized_alone_agrees_with_the_stream() {
                super::each_segment_summarized_alone_agrees_with_the_stream($major)
            }
            #[test]
            fn a_flipped_byte_is_a_crc_failure_where_pg_waldump_finds_one() {
                super::a_flipped_byte_is_a_crc_failure_where_pg_waldump_finds_one($major)
            }
            #[test]
            fn another_versions_wal_is_refused() {
                super::another_versions_wal_is_refused($major)
            }
            #[test]
            fn a_recycled_segments_stale_tail_ends_the_wal_where_pg_waldump_stops() {
                super::a_recycled_segments_stale_tail_ends_the_wal_where_pg_waldump_stops($major)
            }
        }
    )*};
}

per_major!(pg15 = 15, pg16 = 16, pg17 = 17, pg18 = 18);

#[test]
fn every_supported_major_is_tested() {
    assert_eq!(SUPPORTED_MAJORS, [15, 16, 17, 18]);
}
