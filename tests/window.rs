//! `walarchive restorable-window` and backup-fetch's refusals against a real PostgreSQL 15
//! archiving into a file:// repository: the window runs from the backup's stop to the last
//! commit as PostgreSQL reports them (`pg_xact_commit_timestamp`), every resolved target is
//! restored and started and holds exactly the rows committed up to it, and each refusal has
//! its exit status (15 outside the window, 6 no repository, 7 storage, 8 a corrupt segment);
//! across a promotion, and on S3.

use testkit as common;

use std::fs;
use std::process::Output;
use std::sync::OnceLock;

use common::*;

/// The target is outside the restorable window.
const NOT_RESTORABLE: i32 = 15;
const SEGSIZE: u64 = 1 << 20;
const ROWS: usize = 30;
/// Commit times to aim at, and no background transaction committing after the last row.
const CONF: &str = "track_commit_timestamp = on\nautovacuum = off\n";

/// `(commit, midway)` of each row of `seq` on `pg` from row `from` on, as [`Row`] has them.
fn commit_times(pg: &PgCluster, from: i32) -> Vec<Row> {
    let ts = "pg_xact_commit_timestamp(xmin)";
    let utc = |e: &str, f: &str| format!("to_char(({e}) at time zone 'UTC', '{f}')");
    let listing = pg.psql(&format!(
        "select {} || '|' || coalesce({} || '+00', '') from seq where n >= {from} order by n",
        utc(ts, r#"YYYY-MM-DD"T"HH24:MI:SS.US"Z""#),
        utc(
            &format!("{ts} + (lead({ts}) over (order by n) - {ts}) / 2"),
            "YYYY-MM-DD HH24:MI:SS.US"
        ),
    ));
    listing
        .lines()
        .map(|l| {
            let (commit, midway) = l.split_once('|').unwrap();
            Row {
                commit: commit.into(),
                midway: midway.into(),
            }
        })
        .collect()
}

struct Row {
    /// Commit time as restorable-window prints it (RFC 3339, microseconds, Z).
    commit: String,
    /// Halfway to the next row's commit, as a target time.
    midway: String,
}

struct Source {
    repo: Repo,
    _primary: PgCluster,
    backup: serde_json::Value,
    rows: Vec<Row>,
    /// `pg_current_wal_insert_lsn()` after each row's commit.
    lsn_after: Vec<String>,
    /// What `pg_switch_wal()` returned after the last row: all the server wrote.
    written_to: String,
}

/// A primary that took a backup, then committed rows 1..=30 one transaction each, with a
/// restore point `after_10`, a 3 MiB record after 12 and two restore points named `twice`
/// (after 15 and after 25).
fn source() -> &'static Source {
    static S: OnceLock<Source> = OnceLock::new();
    S.get_or_init(|| {
        let repo = Store::File.fresh();
        let primary = repo.start_primary(PgOptions {
            extra_conf: CONF.into(),
            ..Default::default()
        });
        primary.psql("create table seq(n int primary key)");
        let backup = repo.backup_push(&primary, &[]);
        let mut lsn_after = Vec::new();
        for n in 1..=ROWS {
            primary.psql(&format!("insert into seq values ({n})"));
            lsn_after.push(primary.psql("select pg_current_wal_insert_lsn()"));
            match n {
                10 => {
                    primary.psql("select pg_create_restore_point('after_10')");
                }
                // One record of 3 MiB, across four 1 MiB segments, which the scans cross.
                12 => {
                    primary.psql(
                        "select pg_logical_emit_message(false, 'window', repeat('x', 3 << 20))",
                    );
                }
                15 | 25 => {
                    primary.psql("select pg_create_restore_point('twice')");
                }
                _ => {}
            }
        }
        // Switch to a new segment and wait until it is archived (archive_everything would
        // write a record of its own after it).
        let written_to = primary.psql("select pg_switch_wal()");
        let last = primary.psql(&format!("select pg_walfile_name('{written_to}')"));
        primary.wait_archived(&last, std::time::Duration::from_secs(120));
        let rows = commit_times(&primary, 1);
        assert_eq!(rows.len(), ROWS);
        Source {
            repo,
            _primary: primary,
            backup,
            rows,
            lsn_after,
            written_to,
        }
    })
}

fn row(n: usize) -> &'static Row {
    &source().rows[n - 1]
}

fn lsn(s: &str) -> u64 {
    let (hi, lo) = s.split_once('/').unwrap();
    (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
}

/// `restorable-window --json ARGS` on `repo`, which must succeed.
fn window(repo: &Repo, args: &[&str]) -> serde_json::Value {
    let mut a = vec!["restorable-window", "--json"];
    a.extend_from_slice(args);
    let out = repo.run(&a);
    serde_json::from_slice(&assert_success(&out).stdout).unwrap()
}

/// `restorable-window ARGS`, whatever its outcome.
fn try_window(repo: &Repo, args: &[&str]) -> Output {
    let mut a = vec!["restorable-window"];
    a.extend_from_slice(args);
    repo.run(&a)
}

/// Asserts status 15 and one line on stderr containing `words`.
#[track_caller]
fn refused(out: &Output, words: &str) {
    let err = stderr(out);
    assert_eq!(code(out), NOT_RESTORABLE, "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.starts_with("walarchive restorable-window: error: ") && err.contains(words),
        "{err}"
    );
}

/// Restores the target restorable-window resolved (its backup and setting, as written for
/// PostgreSQL), starts it to promotion and returns "count:max".
fn restore_resolved(target: &serde_json::Value) -> String {
    restore_resolved_from(&source().repo, target)
}

/// [`restore_resolved`] from `repo`.
fn restore_resolved_from(repo: &Repo, target: &serde_json::Value) -> String {
    let c = repo.restore_resolved(target);
    c.start_with_env(&repo.env);
    c.wait_promoted();
    c.psql("select count(*) || ':' || coalesce(max(n), 0) from seq")
}

#[test]
fn the_window_runs_from_the_backup_stop_to_the_last_commit() {
    let s = source();
    let w = window(&s.repo, &[]);
    assert_eq!(w["earliest"]["lsn"], s.backup["stop_lsn"], "{w:#}");
    assert_eq!(w["earliest"]["timeline"], 1);
    let stop_time = walarchive::manifest::parse_time(s.backup["stop_time"].as_str().unwrap());
    let earliest_time = walarchive::manifest::parse_time(w["earliest"]["time"].as_str().unwrap());
    assert_eq!(earliest_time, stop_time, "{w:#}");
    assert_eq!(w["latest"]["time"], row(ROWS).commit.as_str(), "{w:#}");
    // The last record (the switch) starts after the last commit, inside what was written.
    let latest = lsn(w["latest"]["lsn"].as_str().unwrap());
    assert!(latest >= lsn(&s.lsn_after[ROWS - 1]), "{w:#}");
    assert!(latest < lsn(&s.written_to), "{w:#}");
    assert_eq!(w["backups"][0]["name"], s.backup["name"]);
    assert!(w.get("target").is_none());
}

#[test]
fn a_time_between_commits_restores_exactly_those_before_it() {
    let w = window(&source().repo, &["--target-time", &row(10).midway]);
    let t = &w["target"];
    assert_eq!(
        t["recovery_target"]["setting"], "recovery_target_time",
        "{w:#}"
    );
    assert_eq!(t["expect"]["time"], row(10).commit.as_str(), "{w:#}");
    assert_eq!(restore_resolved(t), "10:10");
}

/// `backup-fetch --target-time` in RFC 3339's `T…Z` form (what the broker's users write):
/// written for PostgreSQL in the form it reads (PostgreSQL 15 refuses to start on the `T…Z`
/// form as such), and exact.
#[test]
fn an_rfc3339_target_time_restores_exactly() {
    let s = source();
    let midway = walarchive_restore::recovery::parse_target_time(&row(10).midway).unwrap();
    let rfc3339 = midway.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    assert!(rfc3339.contains('T') && rfc3339.ends_with('Z'), "{rfc3339}");
    let backup = s.backup["name"].as_str().unwrap();
    let c = s.repo.restore(
        backup,
        &["--target-time", &rfc3339, "--target-action", "promote"],
    );
    c.append_conf("archive_mode = off\n");
    c.start_with_env(&s.repo.env);
    c.wait_promoted();
    assert_eq!(
        c.psql("select count(*) || ':' || coalesce(max(n), 0) from seq"),
        "10:10"
    );
}

#[test]
fn a_time_after_the_last_commit_is_refused_unless_the_archive_is_complete() {
    let s = source();
    // Just after the last commit (before the segment holding it was even uploaded).
    let last = walarchive::manifest::parse_time(&row(ROWS).commit).unwrap();
    let after = (last + chrono::Duration::milliseconds(1))
        .format("%Y-%m-%d %H:%M:%S%.6f+00")
        .to_string();
    refused(
        &try_window(&s.repo, &["--target-time", &after]),
        "is after the last archived transaction",
    );
    // backup-fetch refuses it too (PostgreSQL would end recovery with FATAL).
    let c = PgCluster::empty();
    let out = s
        .repo
        .try_restore_into(&c, "LATEST", &["--target-time", &after]);
    assert!(!out.status.success(), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("is after the last archived transaction"),
        "{}",
        stderr(&out)
    );
    // The server wrote nothing more than the archive holds: the latest point, pinned.
    let more = format!(
        "{:X}/{:X}",
        (lsn(&s.written_to) + SEGSIZE) >> 32,
        (lsn(&s.written_to) + SEGSIZE) & 0xffff_ffff
    );
    refused(
        &try_window(&s.repo, &["--target-time", &after, "--complete-to", &more]),
        "is after the last archived transaction",
    );
    let w = window(
        &s.repo,
        &["--target-time", &after, "--complete-to", &s.written_to],
    );
    let t = &w["target"];
    assert_eq!(
        t["recovery_target"]["setting"], "recovery_target_lsn",
        "{w:#}"
    );
    assert_eq!(t["recovery_target"]["value"], w["latest"]["lsn"], "{w:#}");
    assert_eq!(restore_resolved(t), format!("{ROWS}:{ROWS}"));
}

#[test]
fn lsn_targets_inside_and_outside_the_window() {
    let s = source();
    let w = window(&s.repo, &["--target-lsn", &s.lsn_after[19]]);
    assert_eq!(
        w["target"]["recovery_target"]["value"],
        s.lsn_after[19].as_str()
    );
    assert_eq!(restore_resolved(&w["target"]), "20:20");
    refused(
        &try_window(&s.repo, &["--target-lsn", "0/10"]),
        "before the earliest restorable point",
    );
    refused(
        &try_window(&s.repo, &["--target-lsn", "FF/0"]),
        "past the end of the archived WAL",
    );
}

#[test]
fn restore_points_resolve_to_the_newest_of_their_name() {
    let s = source();
    let w = window(&s.repo, &["--target-name", "twice"]);
    let at = lsn(w["target"]["recovery_target"]["value"].as_str().unwrap());
    assert!(
        at >= lsn(&s.lsn_after[24]) && at < lsn(&s.lsn_after[25]),
        "{w:#}"
    );
    assert_eq!(restore_resolved(&w["target"]), "25:25");
    let once = window(&s.repo, &["--target-name", "after_10"]);
    assert_eq!(once["target"]["backup"], s.backup["name"], "{once:#}");
    refused(
        &try_window(&s.repo, &["--target-name", "nope"]),
        "no restore point named \"nope\"",
    );
    // backup-fetch refuses a name the WAL does not hold.
    let c = PgCluster::empty();
    let out = s
        .repo
        .try_restore_into(&c, "LATEST", &["--target-name", "nope"]);
    assert!(
        stderr(&out).contains("no restore point named"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn other_exit_statuses() {
    let s = source();
    // Not a target restorable-window resolves: a usage error.
    let out = try_window(&s.repo, &["--target-xid", "1000"]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    // No repository.
    let empty = Store::File.fresh();
    let out = try_window(&empty, &[]);
    assert_eq!(code(&out), 6, "{}", stderr(&out));
    // The store fails.
    let mut env = s.repo.env.clone();
    env.extend([
        (
            "WALARCHIVE_FAULTS".to_string(),
            "op=get fault=503".to_string(),
        ),
        ("WALARCHIVE_RETRIES".into(), "1".into()),
    ]);
    let out = run_walarchive(&["--repo", &s.repo.url, "restorable-window"], &env);
    assert_eq!(code(&out), 7, "{}", stderr(&out));
    // The last segment, which the window reads, is corrupt (in a copy of the repository).
    let copy = TestDir::new("walarchive-window-copy-");
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(s.repo.path())
        .arg(copy.join("repo"))
        .status()
        .unwrap();
    assert!(status.success());
    let damaged = Repo {
        url: format!("file://{}/repo", copy.path().display()),
        env: vec![],
        dir: None,
    };
    let w = window(&damaged, &[]);
    let end = lsn(w["end"].as_str().unwrap());
    let last = format!(
        "00000001{:08X}{:08X}",
        (end / SEGSIZE - 1) >> 12,
        (end / SEGSIZE - 1) & 0xfff
    );
    let object = copy
        .join("repo")
        .join("wal")
        .join(&last[0..8])
        .join(&last[8..16])
        .join(&last);
    let mut bad = fs::read(&object).unwrap();
    let header_len = u32::from_le_bytes(bad[12..16].try_into().unwrap()) as usize;
    let mid = header_len + (bad.len() - header_len) / 2;
    for b in &mut bad[mid - 2..mid + 2] {
        *b ^= 0xFF;
    }
    fs::write(&object, &bad).unwrap();
    let out = try_window(&damaged, &[]);
    assert_eq!(code(&out), 8, "{}", stderr(&out));
    assert!(stderr(&out).contains(&last), "{}", stderr(&out));
}

/// A restore of the source promoted after row 5 archives timeline 2 into the same repository
/// (rows 1001..=1003), while rows 6..=10 stay on the abandoned timeline 1: the window follows
/// timeline 2, and a time on either side of the switch is restored exactly.
#[test]
fn targets_across_a_promotion_follow_the_newest_timeline() {
    let repo = Store::File.fresh();
    let primary = repo.start_primary(PgOptions {
        extra_conf: CONF.into(),
        ..Default::default()
    });
    primary.psql("create table seq(n int primary key)");
    repo.backup_push(&primary, &[]);
    let mut lsn_5 = String::new();
    for n in 1..=10 {
        primary.psql(&format!("insert into seq values ({n})"));
        if n == 5 {
            lsn_5 = primary.psql("select pg_current_wal_insert_lsn()");
        }
    }
    primary.archive_everything();
    let old = commit_times(&primary, 1);

    let clone = repo.restore(
        "LATEST",
        &["--target-lsn", &lsn_5, "--target-action", "promote"],
    );
    clone.start_with_env(&repo.env);
    clone.wait_promoted();
    for n in 1001..=1003 {
        clone.psql(&format!("insert into seq values ({n})"));
    }
    let last = clone.switch_wal();
    assert!(last.starts_with("00000002"), "{last}");
    clone.wait_archived(&last, std::time::Duration::from_secs(120));
    let new = commit_times(&clone, 1001);

    let w = window(&repo, &[]);
    assert_eq!(w["timelines"], serde_json::json!([1, 2]), "{w:#}");
    assert_eq!(w["latest"]["timeline"], 2, "{w:#}");
    assert_eq!(w["latest"]["time"], new[2].commit.as_str(), "{w:#}");

    // On timeline 2: rows 1..=5 and 1001, not timeline 1's 6..=10 (committed earlier).
    let w = window(&repo, &["--target-time", &new[0].midway]);
    assert_eq!(w["target"]["expect"]["timeline"], 2, "{w:#}");
    assert_eq!(w["target"]["timeline"], serde_json::Value::Null, "{w:#}");
    assert_eq!(restore_resolved_from(&repo, &w["target"]), "6:1001");
    // Before the switch, on timeline 1.
    let w = window(&repo, &["--target-time", &old[2].midway]);
    assert_eq!(w["target"]["expect"]["timeline"], 1, "{w:#}");
    // Not named: the stop lies in the segment of the switch point, which recovery reads from
    // timeline 2 (timeline 1's copy of it is not archived whole).
    assert_eq!(w["target"]["timeline"], serde_json::Value::Null, "{w:#}");
    assert_eq!(restore_resolved_from(&repo, &w["target"]), "3:3");
    // After timeline 1's last commit (row 10): along the newest chain the first commit after
    // it is row 1001's, on timeline 2; row 10 is on the abandoned branch, not in the window.
    let w = window(&repo, &["--target-time", &old[9].commit]);
    assert_eq!(w["target"]["expect"]["timeline"], 2, "{w:#}");
}

/// The same window and a time target on S3 (s3s-fs), whose listings and reads differ from a
/// directory's.
#[test]
fn the_window_on_s3() {
    let repo = Store::S3.fresh();
    let primary = repo.start_primary(PgOptions {
        extra_conf: CONF.into(),
        ..Default::default()
    });
    primary.psql("create table seq(n int primary key)");
    let backup = repo.backup_push(&primary, &[]);
    for n in 1..=5 {
        primary.psql(&format!("insert into seq values ({n})"));
    }
    primary.archive_everything();
    let rows = commit_times(&primary, 1);
    let w = window(&repo, &["--target-time", &rows[2].midway]);
    assert_eq!(w["earliest"]["lsn"], backup["stop_lsn"], "{w:#}");
    assert_eq!(w["latest"]["time"], rows[4].commit.as_str(), "{w:#}");
    assert_eq!(restore_resolved_from(&repo, &w["target"]), "3:3");
}
