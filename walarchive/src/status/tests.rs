//! Unit tests of [`super`].

use super::*;

fn t(s: &str) -> DateTime<Utc> {
    manifest::parse_time(s).unwrap()
}

fn seg(s: &str) -> SegmentName {
    s.parse().unwrap()
}

fn listed(key: &str, at: &str) -> Listed {
    Listed {
        key: key.into(),
        size: 100,
        last_modified: t(at),
    }
}

const SEG: u64 = 1 << 24;

fn server(position: &str, timeline: u32) -> ServerFigures {
    let pos: Lsn = position.parse().unwrap();
    ServerFigures {
        in_recovery: false,
        version_num: 150000,
        wal_position: Some(pos),
        timeline,
        current_segment: Some(SegmentName::containing(TimelineId(timeline), pos, SEG)),
        wal_segment_size: SEG,
        archive_mode: "on".into(),
        system_identifier: None,
        archiver: ArchiverStats {
            archived_count: 5,
            last_archived_wal: None,
            last_archived_time: Some(t("2026-01-01T00:00:00Z")),
            failed_count: 0,
            last_failed_wal: None,
            last_failed_time: None,
            stats_reset: None,
        },
        clock: t("2026-01-01T01:00:00Z"),
    }
}

fn inputs(
    newest: Option<(&str, &str)>,
    server: Result<ServerFigures, String>,
    ready: Option<Result<ReadyFiles, String>>,
) -> Inputs {
    let listing: Vec<Listed> = newest
        .map(|(n, at)| {
            let key = crate::repo::Repository::wal_key(&n.parse().unwrap());
            vec![listed(&key, at)]
        })
        .unwrap_or_default();
    Inputs {
        repository: "file:///r".into(),
        now: t("2026-01-01T01:00:00Z"),
        rpo: Duration::from_secs(600),
        descriptor: None,
        wal: summarize_wal(&listing, None),
        server,
        server_address: "postgres@h:5432".into(),
        ready,
        backups: Backups::default(),
        duration: Duration::from_millis(5),
        counters: Some(crate::metrics::Counters {
            push_total: 3,
            push_seconds_total: 0.25,
            ..Default::default()
        }),
    }
}

#[test]
fn newest_segment_is_highest_timeline_then_name_under_the_ceiling() {
    let l = vec![
        listed(
            "wal/00000001/00000000/000000010000000000000009",
            "2026-01-01T00:00:00Z",
        ),
        listed(
            "wal/00000002/00000000/000000020000000000000005",
            "2026-01-01T00:01:00Z",
        ),
        listed(
            "wal/00000002/00000000/000000020000000000000006.partial",
            "2026-01-01T00:02:00Z",
        ),
        listed(
            "wal/00000003/00000000/000000030000000000000004",
            "2026-01-01T00:03:00Z",
        ),
        listed("wal/history/00000002.history", "2026-01-01T00:00:30Z"),
        listed("wal/00000001/00000000/junk", "2026-01-01T00:00:30Z"),
    ];
    let w = summarize_wal(&l, None);
    assert_eq!(w.files, 5);
    assert_eq!(w.bytes, 500);
    assert_eq!(w.newest.unwrap().name, seg("000000030000000000000004"));
    assert_eq!(w.highest_timeline, Some(TimelineId(3)));
    let w = summarize_wal(&l, Some(TimelineId(2)));
    assert_eq!(w.newest.unwrap().name, seg("000000020000000000000005"));
    assert_eq!(w.newest.unwrap().stored_at, t("2026-01-01T00:01:00Z"));
}

#[test]
fn ready_files_are_summarized() {
    let r = summarize_ready(
        [
            ("000000010000000000000003.ready".to_string(), 5.0),
            ("000000010000000000000002.ready".to_string(), 9.0),
            ("00000002.history.ready".to_string(), 1.0),
            ("000000010000000000000001.done".to_string(), 99.0),
        ],
        "server",
    );
    assert_eq!((r.count, r.segments), (3, 2));
    assert_eq!(r.oldest.as_deref(), Some("000000010000000000000002"));
    assert_eq!(r.oldest_age_seconds, Some(9.0));
}

#[test]
fn healthy_primary_has_no_lag() {
    // Server writing segment 6; 5 is archived.
    let r = assess(inputs(
        Some(("000000010000000000000005", "2026-01-01T00:00:00Z")),
        Ok(server("0/6000060", 1)),
        Some(Ok(summarize_ready([], "server"))),
    ));
    assert_eq!(r.lag_segments, Some(0));
    assert_eq!(r.lag_seconds, Some(0.0));
    assert!(r.ok, "{:?}", r.problems);
    // At a segment boundary (just after pg_switch_wal) nothing waits either.
    let r = assess(inputs(
        Some(("000000010000000000000005", "2026-01-01T00:00:00Z")),
        Ok(server("0/6000000", 1)),
        None,
    ));
    assert_eq!((r.lag_segments, r.lag_seconds), (Some(0), Some(0.0)));
}

#[test]
fn a_segment_just_completed_after_an_idle_hour_is_no_alarm() {
    let ready = summarize_ready([("000000010000000000000006.ready".into(), 0.05)], "server");
    let r = assess(inputs(
        Some(("000000010000000000000005", "2026-01-01T00:00:00Z")),
        Ok(server("0/7000010", 1)),
        Some(Ok(ready)),
    ));
    assert_eq!(r.lag_segments, Some(1));
    assert_eq!(r.lag_seconds, Some(0.05));
    assert!(r.ok, "{:?}", r.problems);
}

#[test]
fn segments_missing_beyond_the_ready_files_use_the_newest_segments_age() {
    // Three segments missing, one .ready: two went elsewhere (or were lost).
    let ready = summarize_ready([("000000010000000000000008.ready".into(), 3.0)], "server");
    let r = assess(inputs(
        Some(("000000010000000000000005", "2026-01-01T00:00:00Z")),
        Ok(server("0/9000010", 1)),
        Some(Ok(ready)),
    ));
    assert_eq!(r.lag_segments, Some(3));
    assert_eq!(r.lag_seconds, Some(3600.0));
    assert!(!r.ok);
    assert!(
        r.problems[0].contains("exceeds the RPO"),
        "{:?}",
        r.problems
    );
    // Without .ready information the approximation is all there is.
    let r = assess(inputs(
        Some(("000000010000000000000005", "2026-01-01T00:59:00Z")),
        Ok(server("0/7000010", 1)),
        None,
    ));
    assert_eq!((r.lag_segments, r.lag_seconds), (Some(1), Some(60.0)));
    assert!(r.ok);
}

#[test]
fn ready_files_alone_measure_the_lag() {
    let ready = summarize_ready([("000000010000000000000008.ready".into(), 700.0)], "d");
    let r = assess(inputs(
        Some(("000000010000000000000005", "2026-01-01T00:00:00Z")),
        Err("unreachable".into()),
        Some(Ok(ready)),
    ));
    assert!(!r.server.reachable);
    assert_eq!((r.lag_segments, r.lag_seconds), (Some(1), Some(700.0)));
    assert!(!r.ok);
    let r = assess(inputs(
        Some(("000000010000000000000005", "2026-01-01T00:00:00Z")),
        Err("unreachable".into()),
        Some(Ok(summarize_ready([], "d"))),
    ));
    assert!(r.ok, "{:?}", r.problems);
}

#[test]
fn unknown_lag_failing_archiver_and_empty_archive_are_problems() {
    let r = assess(inputs(
        Some(("000000010000000000000005", "2026-01-01T00:00:00Z")),
        Err("unreachable".into()),
        None,
    ));
    assert_eq!(r.lag_seconds, None);
    assert!(r.problems[0].contains("cannot measure"), "{:?}", r.problems);

    let mut s = server("0/6000060", 1);
    s.archiver.last_failed_time = Some(t("2026-01-01T00:30:00Z"));
    s.archiver.last_failed_wal = Some("000000010000000000000006".into());
    s.archiver.failed_count = 3;
    assert!(s.archiver.failing());
    let r = assess(inputs(
        Some(("000000010000000000000005", "2026-01-01T00:00:00Z")),
        Ok(s.clone()),
        None,
    ));
    assert!(!r.ok);
    assert!(r.problems[0].contains("failing"), "{:?}", r.problems);
    s.archiver.last_archived_time = Some(t("2026-01-01T00:31:00Z"));
    assert!(!s.archiver.failing());

    let r = assess(inputs(None, Ok(server("0/6000060", 1)), None));
    assert!(!r.ok);
    assert!(
        r.problems[0].contains("no archived WAL"),
        "{:?}",
        r.problems
    );
}

/// A server of another major than the repository's (an upgraded cluster still pointed at
/// its old repository) is named as such, not as another cluster.
#[test]
fn a_server_of_another_major_than_the_repository_is_a_problem() {
    let mut s = server("0/6000060", 1);
    s.system_identifier = Some("2".into());
    let mut i = inputs(
        Some(("000000010000000000000005", "2026-01-01T00:00:00Z")),
        Ok(s.clone()),
        None,
    );
    i.descriptor = Some(Descriptor::for_tests("1"));
    let r = assess(i);
    assert!(
        r.problems.iter().any(|p| p.contains("another cluster")),
        "{:?}",
        r.problems
    );
    s.version_num = 170004;
    let mut i = inputs(
        Some(("000000010000000000000005", "2026-01-01T00:00:00Z")),
        Ok(s),
        None,
    );
    i.descriptor = Some(Descriptor::for_tests("1"));
    let r = assess(i);
    assert!(!r.ok);
    assert!(
        r.problems.iter().any(|p| p.starts_with(
            "the repository holds PostgreSQL 15's WAL but the server is PostgreSQL 17"
        )) && !r.problems.iter().any(|p| p.contains("another cluster")),
        "{:?}",
        r.problems
    );
}

#[test]
fn prometheus_lines_are_valid() {
    let mut i = inputs(
        Some(("000000010000000000000005", "2026-01-01T00:00:00Z")),
        Ok(server("0/6000060", 1)),
        Some(Ok(summarize_ready([], "server"))),
    );
    i.repository = "s3://b/p\"x\\y".into();
    let text = render::prometheus(&assess(i));
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let (name, v) = line.rsplit_once(' ').unwrap();
        let name = name.split('{').next().unwrap();
        assert!(
            name.bytes()
                .enumerate()
                .all(|(i, b)| b.is_ascii_alphabetic()
                    || b == b'_'
                    || b == b':'
                    || (i > 0 && b.is_ascii_digit())),
            "{line}"
        );
        assert!(v == "NaN" || v.parse::<f64>().is_ok(), "{line}");
    }
    assert!(text.contains("walarchive_archive_lag_seconds 0\n"));
    assert!(text.contains("# TYPE walarchive_push_total counter\nwalarchive_push_total 3\n"));
    assert!(text.contains(r#"repository="s3://b/p\"x\\y""#));
    assert_eq!(render::value(f64::INFINITY), "+Inf");
}
