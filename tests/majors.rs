//! Every PostgreSQL major walarchive supports (15, 16, 17, 18), end to end on real servers,
//! and one repository per major.
//!
//! The whole suite runs on one major at a time (`WALARCHIVE_TEST_PG=17 cargo test`); this
//! file runs each major in the same process, concurrently, whatever that variable says:
//! a regression on one major shows up in every run, and CI's subset of the majors it does
//! not run whole (16 and 17) is `cargo test --test majors -- pg16 pg17`. Each test is the
//! path a DBA depends on: PostgreSQL archives through `wal-push` as its archive_command,
//! `backup-push` takes a base backup, a point-in-time restore (`backup-fetch` and
//! `wal-fetch`) stops at an exact row and is promoted to timeline 2, which archives into
//! the same repository; a second restore of the same backup follows timeline 2 to its end;
//! `wal-verify` and `verify backup` find the repository clean. Most majors use a local
//! repository, 17 an S3 one.
//!
//! A repository holds one major's WAL (its descriptor records the WAL format). Another
//! major's WAL or server is refused with status 5 and a line naming both majors, and
//! nothing is stored: mixing them is what an upgraded cluster still pointed at its old
//! repository would do (tests/upgrade.rs is that path).

use testkit as common;

use std::fs;
use std::time::Duration;

use common::*;

/// Commit timestamps give the exact time of a row to aim at.
const COMMIT_TIMESTAMPS: &str = "track_commit_timestamp = on\n";

/// What the point-in-time restore aims at.
#[derive(Clone, Copy, Debug)]
enum Target {
    /// The commit time of row 20 (inclusive).
    Time,
    /// The insert LSN right after row 20's commit.
    Lsn,
}

/// Rows 1..=10 before the backup, 11..=30 after it, one transaction each; the target is
/// row 20; timeline 2 adds rows 1001..=1005.
fn end_to_end(major: u32, store: Store, target: Target) {
    let repo = store.fresh();
    let primary = repo.start_primary(PgOptions {
        major: Some(major),
        extra_conf: COMMIT_TIMESTAMPS.into(),
        ..Default::default()
    });
    let version = primary.psql("show server_version");
    eprintln!("PostgreSQL {version} ({store:?} repository, {target:?} target)");
    assert_eq!(
        primary.psql("select current_setting('server_version_num')::int / 10000"),
        major.to_string()
    );
    primary.psql("create table seq(n int primary key)");
    primary.psql("insert into seq select generate_series(1, 10)");
    let backup = repo.backup_push(&primary, &[]);
    let backup = backup["name"].as_str().unwrap().to_string();

    let mut aim = String::new();
    for n in 11..=30 {
        primary.psql(&format!("insert into seq values ({n})"));
        if n == 20 {
            aim = match target {
                Target::Lsn => primary.psql("select pg_current_wal_insert_lsn()"),
                Target::Time => primary.psql(
                    "select to_char(pg_xact_commit_timestamp(xmin) at time zone 'UTC', \
                     'YYYY-MM-DD HH24:MI:SS.US') || '+00' from seq where n = 20",
                ),
            };
        }
    }
    primary.archive_everything();
    primary.stop();

    // The repository knows its major.
    let info = repo.run(&["repo-info", "--json"]);
    let info: serde_json::Value = serde_json::from_slice(&assert_success(&info).stdout).unwrap();
    assert_eq!(info["pg_version"], major, "{info}");
    assert_eq!(
        info["wal_page_magic"],
        walarchive::wal::magic_for_major(major).unwrap(),
        "{info}"
    );

    // Point-in-time restore to row 20, promoted: timeline 2, archiving into the same
    // repository (its archive_command came with the backup).
    let flag = match target {
        Target::Lsn => "--target-lsn",
        Target::Time => "--target-time",
    };
    let pitr = repo.restore(&backup, &[flag, &aim, "--target-action", "promote"]);
    assert_eq!(
        pitr.major(),
        major,
        "the restore runs on its backup's major"
    );
    pitr.start_with_env(&repo.env);
    pitr.wait_promoted();
    assert_eq!(
        pitr.psql("select count(*) || ':' || max(n) from seq"),
        "20:20",
        "exactly the rows up to the target"
    );
    assert!(
        pitr.log().contains("selected new timeline ID: 2"),
        "{}",
        pitr.log_tail(30)
    );
    pitr.psql("insert into seq select generate_series(1001, 1005)");
    let last = pitr.switch_wal();
    assert!(last.starts_with("00000002"), "{last}");
    pitr.wait_archived(&last, Duration::from_secs(120));
    pitr.stop();
    let names = repo.wal_names();
    assert!(
        names.contains(&"00000002.history".to_string()) && names.contains(&last),
        "{names:?}"
    );

    // The same backup again, following timeline 2 to its end.
    let latest = repo.restore(
        &backup,
        &["--target-timeline", "latest", "--target-action", "promote"],
    );
    latest.append_conf("archive_mode = off\n");
    latest.start_with_env(&repo.env);
    latest.wait_promoted();
    assert_eq!(
        latest.psql("select count(*) || ':' || max(n) from seq"),
        "25:1005",
        "rows 1..=20, then timeline 2's"
    );
    assert_eq!(latest.psql("select count(*) from seq where n > 1000"), "5");
    assert!(
        latest.log().contains("selected new timeline ID: 3"),
        "{}",
        latest.log_tail(30)
    );
    latest.stop();

    for args in [&["wal-verify"][..], &["verify", "backup", &backup]] {
        let out = repo.run(args);
        assert!(
            out.status.success(),
            "{args:?} on PostgreSQL {version}: {}{}",
            stdout(&out),
            stderr(&out)
        );
    }
}

#[test]
fn pg15_archive_backup_pitr_timeline_verify() {
    end_to_end(15, Store::File, Target::Lsn);
}

#[test]
fn pg16_archive_backup_pitr_timeline_verify() {
    end_to_end(16, Store::File, Target::Time);
}

#[test]
fn pg17_archive_backup_pitr_timeline_verify_on_s3() {
    end_to_end(17, Store::S3, Target::Lsn);
}

#[test]
fn pg18_archive_backup_pitr_timeline_verify() {
    end_to_end(18, Store::File, Target::Time);
}

/// A repository created by a `repo_major` server refuses real WAL of an `other_major`
/// server (pushed as archive_command pushes it, and a copy pushed by hand) and a base backup
/// of it, with status 5 and one line naming both majors; the repository is unchanged and
/// still serves its own.
fn another_major_is_refused(repo_major: u32, other_major: u32) {
    let repo = Store::File.fresh();
    let owner = repo.start_primary(PgOptions {
        major: Some(repo_major),
        ..Default::default()
    });
    owner.psql("create table t(n int)");
    repo.backup_push(&owner, &[]);
    owner.archive_everything();

    // The other major's server, not archiving: its segments stay in pg_wal.
    let other = PgCluster::init(PgOptions {
        major: Some(other_major),
        extra_conf: "wal_keep_size = 64MB\n".into(),
        ..Default::default()
    });
    other.start();
    other.psql("create table t(n int); insert into t values (1)");
    let segment = other.switch_wal();
    let before = file_tree(&repo.path());
    assert!(!before.is_empty());

    let said = format!(
        "is from PostgreSQL {other_major} but this repository holds PostgreSQL {repo_major}'s WAL"
    );
    // As PostgreSQL runs archive_command: as postgres, in the data directory, `pg_wal/NAME`.
    let out = repo.run_as_postgres(
        &["wal-push", &format!("pg_wal/{segment}")],
        other.data_dir(),
    );
    assert_code(&out, 5);
    let line = error_line(&out);
    assert!(
        line.contains(&format!("{segment} {said}")) && line.contains("new repository"),
        "{line}"
    );
    // A copy pushed by hand, away from any data directory: identified by its page header.
    let scratch = TestDir::new("walarchive-copy-");
    let copy = scratch.join(&segment);
    fs::copy(other.wal_dir().join(&segment), &copy).unwrap();
    let out = repo.run(&["wal-push", copy.to_str().unwrap()]);
    assert_code(&out, 5);
    assert!(error_line(&out).contains(&said));
    let out = repo.try_backup_push(&other, &[]);
    assert_code(&out, 5);
    let line = error_line(&out);
    assert!(line.contains(&format!("the backup {said}")), "{line}");
    assert!(
        file_tree(&repo.path()) == before,
        "the repository changed after the refusals"
    );

    // Still its own major's repository, archiving its own cluster.
    let info = repo.run(&["repo-info", "--json"]);
    let info: serde_json::Value = serde_json::from_slice(&assert_success(&info).stdout).unwrap();
    assert_eq!(info["pg_version"], repo_major, "{info}");
    owner.psql("insert into t values (2)");
    owner.archive_everything();
    assert_success(&repo.run(&["wal-verify"]));
}

#[test]
fn pg15_repository_refuses_pg16_wal_and_backups() {
    another_major_is_refused(15, 16);
}

#[test]
fn pg17_repository_refuses_pg18_wal_and_backups() {
    another_major_is_refused(17, 18);
}
