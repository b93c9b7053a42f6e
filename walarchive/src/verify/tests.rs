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
        vec![
            "timeline 2 has WAL but no history file (00000002.history): recovery cannot follow it"
        ]
    );
    assert_eq!(an.pitr[0].to_lsn, Some(lsn("0/7000000")));
    assert_eq!(an.pitr[0].to_timeline, Some(TimelineId(1)));
    assert!(!an.timelines[1].has_history);
}

/// A recovery toward timeline 2 that stopped on timeline 1 before timeline 2 began, then
/// promoted as timeline 3: PostgreSQL writes 00000003.history with switch points going
/// backwards. Timeline 2 covers nothing on that chain: timeline 3 branches off timeline 1.
#[test]
fn a_history_whose_switch_points_go_backwards_is_followed_as_postgresql_does() {
    let mut a = archive(&[(1, 1..=5), (2, 6..=9), (3, 5..=12)]);
    add_history(&mut a, 2, "1\t0/6000000\ta\n");
    add_history(&mut a, 3, "1\t0/6000000\ta\n2\t0/5F00000\tbefore 12:00\n");
    a.backups.push(backup("b1", 1, "0/2000028", "0/2000100"));
    let an = analyze(&a);
    assert_eq!(messages(&an), Vec::<String>::new());
    let tl3 = &an.timelines[2];
    assert_eq!(
        (tl3.timeline, tl3.parent, tl3.switchpoint),
        (TimelineId(3), Some(TimelineId(1)), Some(lsn("0/5F00000")))
    );
    assert_eq!(an.pitr[0].to_lsn, Some(lsn("0/D000000")));
    assert_eq!(an.pitr[0].to_timeline, Some(TimelineId(3)));
    // Timeline 3 is read from segment 5 on, timeline 2 never: without timeline 3's
    // segment 5, recovery stops there, and timeline 2 still leads on from timeline 1.
    a.files.remove(&WalFileName::Segment(seg(3, 5)));
    let an = analyze(&a);
    assert_eq!(an.pitr[0].to_timeline, Some(TimelineId(2)));
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
