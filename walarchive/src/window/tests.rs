//! The resolution rules on synthetic windows.

use chrono::{DateTime, Utc};

use super::resolve::{
    backup_for_time, rule_latest, rule_lsn, rule_restore_point, rule_time, TimeScan,
};
use super::*;
use crate::history::HistoryEntry;

const SEG: u64 = 1 << 20;

fn t(s: &str) -> DateTime<Utc> {
    crate::manifest::parse_time(s).unwrap()
}

fn lsn(s: &str) -> Lsn {
    s.parse().unwrap()
}

fn backup(name: &str, start: &str, stop: &str, at: &str, reaches: Option<&str>) -> BackupPoint {
    BackupPoint {
        name: name.into(),
        timeline: TimelineId(1),
        start: lsn(start),
        stop: lsn(stop),
        stop_time: Some(t(at)),
        reaches: reaches.map(lsn),
    }
}

/// Two backups on timeline 1 (10:00 and 11:00), WAL to 0/9000000, last commit at 12:00.
fn window() -> Window {
    Window {
        earliest: Point {
            lsn: lsn("0/2000100"),
            timeline: TimelineId(1),
            time: Some(t("2026-12-07T10:00:00Z")),
        },
        latest: Point {
            lsn: lsn("0/8FFFF00"),
            timeline: TimelineId(1),
            time: Some(t("2026-12-07T12:00:00Z")),
        },
        end: lsn("0/9000000"),
        backups: vec![
            backup(
                "a",
                "0/2000028",
                "0/2000100",
                "2026-12-07T10:00:00Z",
                Some("0/9000000"),
            ),
            backup(
                "b",
                "0/5000028",
                "0/5000100",
                "2026-12-07T11:00:00Z",
                Some("0/9000000"),
            ),
        ],
        timelines: vec![TimelineId(1)],
        newest_timeline: TimelineId(1),
        segment_size: SEG,
        history: vec![],
    }
}

#[test]
fn latest_is_pinned_to_the_last_record() {
    let r = rule_latest(&window()).unwrap();
    assert_eq!(r.recovery, Setting::Lsn(lsn("0/8FFFF00")));
    assert_eq!(r.backup, "b");
    assert_eq!(r.timeline, None);
    assert_eq!(r.expect, window().latest);
}

#[test]
fn lsn_targets_must_lie_in_the_window() {
    let w = window();
    assert_eq!(rule_lsn(&w, lsn("0/3000000")).unwrap().backup, "a");
    assert_eq!(rule_lsn(&w, lsn("0/6000000")).unwrap().backup, "b");
    assert!(matches!(
        rule_lsn(&w, lsn("0/2000000")),
        Err(Unrestorable::BeforeEarliest { .. })
    ));
    assert!(matches!(
        rule_lsn(&w, lsn("0/8FFFF08")),
        Err(Unrestorable::PastEnd { .. })
    ));
    // Backup a's WAL stops at a hole; b is after the target.
    let mut holed = window();
    holed.backups[0].reaches = Some(lsn("0/4000000"));
    assert!(matches!(
        rule_lsn(&holed, lsn("0/4800000")),
        Err(Unrestorable::Gap { .. })
    ));
}

#[test]
fn times_stop_before_the_first_commit_after_them() {
    let w = window();
    let at = t("2026-12-07T11:30:00Z");
    let b = backup_for_time(&w, at).unwrap();
    assert_eq!(b.name, "b");
    assert_eq!(
        backup_for_time(&w, t("2026-12-07T10:30:00Z")).unwrap().name,
        "a"
    );
    assert!(matches!(
        backup_for_time(&w, t("2026-12-07T09:59:59Z")),
        Err(Unrestorable::BeforeEarliest { .. })
    ));
    let found = TimeScan {
        first_after: Some(lsn("0/7000000")),
        last_replayed: Some(lsn("0/6FFFF00")),
        last_xact: Some(t("2026-12-07T11:29:00Z")),
    };
    let r = rule_time(&w, at, b, &found, None).unwrap();
    assert_eq!(r.recovery, Setting::Time(at));
    assert_eq!(r.recovery.postgres_value(), "2026-12-07 11:30:00.000000+00");
    assert_eq!(r.expect.lsn, lsn("0/6FFFF00"));
    assert_eq!(r.expect.time, Some(t("2026-12-07T11:29:00Z")));
    // A commit after the time inside the backup: PostgreSQL would stop before consistency.
    let early = TimeScan {
        first_after: Some(lsn("0/5000050")),
        ..Default::default()
    };
    assert!(matches!(
        rule_time(&w, at, b, &early, None),
        Err(Unrestorable::BeforeEarliest { .. })
    ));
}

#[test]
fn a_time_after_the_last_commit_needs_a_complete_archive() {
    let w = window();
    let at = t("2026-12-07T12:15:00Z");
    let b = backup_for_time(&w, at).unwrap();
    let none = TimeScan::default();
    let e = rule_time(&w, at, b, &none, None).unwrap_err();
    assert!(matches!(e, Unrestorable::NotArchivedYet { .. }));
    assert_eq!(
        e.to_string(),
        "time 2026-12-07 12:15:00+00 is after the last archived transaction (2026-12-07 12:00:00+00, LSN 0/8FFFF00): later WAL is not archived yet"
    );
    // The source wrote more than was archived: still refused.
    assert!(rule_time(&w, at, b, &none, Some(lsn("0/9000010"))).is_err());
    // Everything the source wrote is archived: the latest point, pinned.
    let r = rule_time(&w, at, b, &none, Some(lsn("0/9000000"))).unwrap();
    assert_eq!(r.recovery, Setting::Lsn(lsn("0/8FFFF00")));
}

#[test]
fn a_time_whose_backup_stops_at_a_hole_is_a_gap() {
    let mut w = window();
    w.backups[0].reaches = Some(lsn("0/4000000"));
    let at = t("2026-12-07T10:30:00Z");
    let b = backup_for_time(&w, at).unwrap();
    assert_eq!(b.name, "a");
    let e = rule_time(&w, at, b, &TimeScan::default(), Some(lsn("0/1000000"))).unwrap_err();
    assert_eq!(
        e,
        Unrestorable::Gap {
            target: Wanted::Time(at),
            reaches: lsn("0/4000000")
        }
    );
}

#[test]
fn restore_points_resolve_to_the_newest_of_the_name() {
    let w = window();
    let rp = |name: &str, at: &str| RestorePointAt {
        name: name.into(),
        lsn: lsn(at),
        timeline: TimelineId(1),
        time: t("2026-12-07T10:30:00Z"),
    };
    let found = [
        rp("x", "0/3000000"),
        rp("x", "0/6000000"),
        rp("y", "0/7000000"),
    ];
    let r = rule_restore_point(&w, "x", &found).unwrap();
    assert_eq!(r.recovery, Setting::Lsn(lsn("0/6000000")));
    assert_eq!(r.backup, "b");
    assert!(matches!(
        rule_restore_point(&w, "z", &found),
        Err(Unrestorable::NoSuchRestorePoint { .. })
    ));
    let e = rule_restore_point(&w, "old", &[rp("old", "0/2000050")]).unwrap_err();
    assert!(matches!(
        e,
        Unrestorable::BeforeEarliest { found: Some(_), .. }
    ));
    assert_eq!(
        e.to_string(),
        "restore point \"old\" (2026-12-07 10:30:00+00, LSN 0/2000050) is before the earliest restorable point, 2026-12-07 10:00:00+00 (the end of the oldest restorable base backup, LSN 0/2000100)"
    );
    assert_eq!(
        rule_restore_point(&w, "z", &found).unwrap_err().to_string(),
        "no restore point named \"z\" in the restorable window (2026-12-07 10:00:00+00 to 2026-12-07 12:00:00+00)"
    );
}

/// A history with switch points going backwards (a recovery toward timeline 2 stopped on
/// timeline 1 before timeline 2 began, then promoted): the window holds it as PostgreSQL
/// resolves it, timeline 3 straight after timeline 1.
#[test]
fn a_history_going_backwards_is_read_as_postgresql_does() {
    let mut w = window();
    let h =
        crate::history::parse_history(TimelineId(3), "1\t0/6000000\ta\n2\t0/5F00000\tb\n").unwrap();
    w.history = crate::history::effective(&h);
    w.timelines = vec![TimelineId(1), TimelineId(3)];
    w.newest_timeline = TimelineId(3);
    assert_eq!(w.timeline_at(lsn("0/5EFFFFF")), TimelineId(1));
    assert_eq!(w.timeline_at(lsn("0/5F00000")), TimelineId(3));
    assert_eq!(w.timeline_at(lsn("0/6000000")), TimelineId(3));
    assert_eq!(w.segment(0x5E).timeline, TimelineId(1));
    assert_eq!(w.segment(0x5F).timeline, TimelineId(3));
    assert_eq!(w.segment(0x60).timeline, TimelineId(3));
}

#[test]
fn timelines_along_the_chain() {
    let mut w = window();
    w.history = vec![HistoryEntry {
        timeline: TimelineId(1),
        switchpoint: lsn("0/6000100"),
        reason: String::new(),
    }];
    w.timelines = vec![TimelineId(1), TimelineId(2)];
    w.newest_timeline = TimelineId(3);
    assert_eq!(w.timeline_at(lsn("0/6000000")), TimelineId(1));
    assert_eq!(w.timeline_at(lsn("0/6000100")), TimelineId(2));
    // The segment of the switch point is read from the new timeline.
    assert_eq!(w.segment(0x5F).timeline, TimelineId(1));
    assert_eq!(w.segment(0x60).timeline, TimelineId(2));
    // Off the newest timeline: the target names its timeline.
    assert_eq!(rule_latest(&w).unwrap().timeline, Some(2));
    // On the newest chain, a stop before the switch point names the ancestor (the new
    // timeline's history then branches from it), one after it names none (`latest`).
    w.newest_timeline = TimelineId(2);
    assert_eq!(rule_latest(&w).unwrap().timeline, None);
    assert_eq!(rule_lsn(&w, lsn("0/7000000")).unwrap().timeline, None);
    assert_eq!(rule_lsn(&w, lsn("0/5800000")).unwrap().timeline, Some(1));
    // In the switch point's segment, read from timeline 2: `latest`.
    assert_eq!(rule_lsn(&w, lsn("0/6000000")).unwrap().timeline, None);
    let at = t("2026-12-07T11:30:00Z");
    let b = backup_for_time(&w, at).unwrap();
    let scan = |first: &str| TimeScan {
        first_after: Some(lsn(first)),
        last_replayed: Some(lsn("0/5900000")),
        last_xact: None,
    };
    assert_eq!(
        rule_time(&w, at, b, &scan("0/5A00000"), None)
            .unwrap()
            .timeline,
        Some(1)
    );
    assert_eq!(
        rule_time(&w, at, b, &scan("0/6000200"), None)
            .unwrap()
            .timeline,
        None
    );
    let found = [RestorePointAt {
        name: "x".into(),
        lsn: lsn("0/5800000"),
        timeline: TimelineId(1),
        time: t("2026-12-07T11:20:00Z"),
    }];
    assert_eq!(
        rule_restore_point(&w, "x", &found).unwrap().timeline,
        Some(1)
    );
}
