//! What differs between PostgreSQL 15, 16, 17 and 18, on real servers of each major
//! (`testkit::SUPPORTED_MAJORS`): the WAL page magic of a real segment and the repository
//! descriptor it creates; `global/pg_control` parsed and compared with that major's
//! `pg_controldata`; the restorable window resolved exactly on 18; data checksums (on by
//! default from 18's `initdb`) through a backup and a PITR; and, on 17 and 18, WAL
//! summaries (`summarize_wal`) and the server's incremental backups (`pg_basebackup
//! --incremental`, `pg_combinebackup`) while walarchive archives. The reasons, and what
//! walarchive does about each difference, are in docs/postgresql-versions.md.
//!
//! Every test is one major's (`pg17_...`, `pg18_...`, or a `per_major` module), so a failure
//! names the major, and independent tests run in parallel (1 MiB segments, small clusters).

use testkit as common;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::*;
use walarchive::control::ControlFile;
use walarchive::wal::WalPageHeader;
use walarchive::walrecord::summarize;

const SEG: u64 = 1 << 20;

/// Each major's `XLOG_PAGE_MAGIC`, as its access/xlog_internal.h defines it (16, 18) and its
/// real WAL shows it (every major: the test below reads it from a segment of each).
const PAGE_MAGIC: [(u32, u16); 4] = [(15, 0xD110), (16, 0xD113), (17, 0xD116), (18, 0xD118)];

fn page_magic(major: u32) -> u16 {
    PAGE_MAGIC.iter().find(|(m, _)| *m == major).unwrap().1
}

/// Runs a program as the postgres user (PostgreSQL's tools refuse root), in /tmp.
fn as_postgres(program: &Path, args: &[&str]) -> Output {
    Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(program)
        .args(args)
        .current_dir("/tmp")
        .env("TZ", "UTC")
        .output()
        .unwrap()
}

/// `pg_controldata` of `data`, with the binaries of `c`'s major, as field → value.
fn controldata(c: &PgCluster, data: &Path) -> BTreeMap<String, String> {
    let out = as_postgres(&c.bin("pg_controldata"), &[data.to_str().unwrap()]);
    stdout(assert_success(&out))
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

fn parse_control(data: &Path) -> ControlFile {
    ControlFile::parse(&fs::read(data.join("global/pg_control")).unwrap()).unwrap()
}

/// The fields walarchive reads from pg_control, against `pg_controldata`.
#[track_caller]
fn assert_control_matches(c: &PgCluster, data: &Path) -> ControlFile {
    let ours = parse_control(data);
    let theirs = controldata(c, data);
    let field = |k: &str| -> u64 {
        theirs
            .get(k)
            .unwrap_or_else(|| panic!("pg_controldata has no {k:?}: {theirs:?}"))
            .parse()
            .unwrap()
    };
    let major = c.major();
    for (label, value) in [
        ("Database system identifier", ours.system_identifier),
        ("pg_control version number", u64::from(ours.control_version)),
        ("Catalog version number", u64::from(ours.catalog_version)),
        ("Database block size", u64::from(ours.block_size)),
        ("WAL block size", u64::from(ours.wal_block_size)),
        ("Bytes per WAL segment", u64::from(ours.wal_segment_size)),
        (
            "Data page checksum version",
            u64::from(ours.data_checksum_version),
        ),
    ] {
        assert_eq!(value, field(label), "PostgreSQL {major}: {label}");
    }
    ours
}

/// A real segment's page header names the major; the repository its WAL created records it;
/// pg_control parses as pg_controldata reads it.
fn wal_and_control_on(major: u32) {
    let repo = Store::File.fresh();
    let pg = repo.start_primary(PgOptions {
        major: Some(major),
        extra_conf: "wal_keep_size = 64MB\n".into(),
        ..Default::default()
    });
    assert_eq!(pg.major(), major);
    assert!(
        pg.psql("show server_version")
            .starts_with(&format!("{major}.")),
        "{}",
        pg.psql("show server_version")
    );
    pg.psql("create table t as select g from generate_series(1, 1000) g");
    let seg = pg.switch_wal();
    pg.wait_archived(&seg, Duration::from_secs(60));

    let bytes = fs::read(pg.wal_dir().join(&seg)).unwrap();
    let h = WalPageHeader::parse(&bytes).unwrap();
    assert_eq!(
        h.magic,
        page_magic(major),
        "PostgreSQL {major}: 0x{:04X}",
        h.magic
    );
    assert_eq!(h.pg_major_version(), Some(major));
    let control = assert_control_matches(&pg, pg.data_dir());
    assert_eq!(h.system_identifier, control.system_identifier);
    // The record reader reads it.
    let start = seg
        .parse::<walarchive::SegmentName>()
        .unwrap()
        .start_lsn(SEG);
    let s = summarize(start, SEG, &bytes).unwrap_or_else(|e| panic!("PostgreSQL {major}: {e}"));
    assert!(s.last_xact.is_some(), "{s:?}");

    let d: serde_json::Value =
        serde_json::from_slice(&assert_success(&repo.run(&["repo-info", "--json"])).stdout)
            .unwrap();
    assert_eq!(d["pg_version"], major, "{d:#}");
    assert_eq!(d["wal_page_magic"], page_magic(major), "{d:#}");
    assert_eq!(
        d["system_identifier"].as_str().unwrap(),
        control.system_identifier.to_string()
    );
    repo.assert_archived_intact(&pg, &[seg]);

    // Checksums: on by default from 18's initdb, off before (the harness passes no option).
    assert_eq!(
        control.data_checksum_version,
        u32::from(major >= 18),
        "PostgreSQL {major}"
    );
    // A stopped cluster's pg_control too (a shutdown checkpoint rewrote it).
    pg.stop();
    assert_control_matches(&pg, pg.data_dir());
}

macro_rules! per_major {
    ($($m:ident = $major:literal),*) => {$(
        mod $m {
            #[test]
            fn wal_page_magic_descriptor_and_pg_control() {
                super::wal_and_control_on($major)
            }
        }
    )*};
}

per_major!(pg15 = 15, pg16 = 16, pg17 = 17, pg18 = 18);

#[test]
fn every_supported_major_has_its_tests() {
    assert_eq!(SUPPORTED_MAJORS, [15, 16, 17, 18]);
}

/// `count(*):max(n)` of `seq`.
fn count(c: &PgCluster) -> String {
    c.psql("select count(*) || ':' || coalesce(max(n), 0) from seq")
}

/// Restores what `restorable-window` resolved (its backup and setting) and returns the
/// rows it holds once promoted.
fn restore_resolved(repo: &Repo, target: &serde_json::Value) -> String {
    let c = repo.restore_resolved(target);
    assert_eq!(c.major(), 18);
    c.start_with_env(&repo.env);
    c.wait_promoted();
    count(&c)
}

/// The restorable window and target resolution read PostgreSQL 18's WAL: a time between two
/// commits and a restore point resolve, and restore exactly.
#[test]
fn pg18_time_and_restore_point_targets_resolve_exactly() {
    let repo = Store::File.fresh();
    let pg = repo.start_primary(PgOptions {
        major: Some(18),
        extra_conf: "track_commit_timestamp = on\nautovacuum = off\n".into(),
        ..Default::default()
    });
    pg.psql("create table seq(n int primary key)");
    repo.backup_push(&pg, &[]);
    for n in 1..=10 {
        pg.psql(&format!("insert into seq values ({n})"));
        if n == 4 {
            pg.psql("select pg_create_restore_point('after_4')");
        }
    }
    // Halfway between the commits of rows 7 and 8, in UTC.
    let midway = pg.psql(
        "select to_char((a + (b - a) / 2) at time zone 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00' \
         from (select pg_xact_commit_timestamp(xmin) a from seq where n = 7) x, \
              (select pg_xact_commit_timestamp(xmin) b from seq where n = 8) y",
    );
    let commit7 = pg.psql(
        r#"select to_char(pg_xact_commit_timestamp(xmin) at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') from seq where n = 7"#,
    );
    pg.archive_everything();

    let window = |args: &[&str]| -> serde_json::Value {
        let mut a = vec!["restorable-window", "--json"];
        a.extend_from_slice(args);
        serde_json::from_slice(&assert_success(&repo.run(&a)).stdout).unwrap()
    };
    let w = window(&["--target-time", &midway]);
    assert_eq!(w["target"]["expect"]["time"], commit7.as_str(), "{w:#}");
    assert_eq!(restore_resolved(&repo, &w["target"]), "7:7");

    let w = window(&["--target-name", "after_4"]);
    assert_eq!(restore_resolved(&repo, &w["target"]), "4:4", "{w:#}");
}

/// A backup and a PITR of an 18 cluster, with data checksums (18's default) or without
/// (`--no-data-checksums`): the restored cluster keeps the setting, holds exactly the rows
/// of the target, and `pg_checksums --check` passes on it once stopped (with checksums).
fn checksums_through_pitr_on_18(initdb_args: &[&str], checksums: bool) {
    let repo = Store::File.fresh();
    let pg = repo.start_primary(PgOptions {
        major: Some(18),
        initdb_args: initdb_args.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    });
    assert_eq!(
        pg.psql("show data_checksums"),
        if checksums { "on" } else { "off" }
    );
    pg.psql("create table seq(n int primary key, pad text)");
    pg.psql("insert into seq select g, repeat('x', 200) from generate_series(1, 5000) g");
    let backup = repo.backup_push(&pg, &[]);
    pg.psql("insert into seq select g, repeat('y', 200) from generate_series(5001, 8000) g");
    let target = pg.psql("select pg_current_wal_insert_lsn()");
    pg.psql("insert into seq values (9999, 'after the target')");
    pg.archive_everything();

    let c = repo.restore(
        backup["name"].as_str().unwrap(),
        &["--target-lsn", &target, "--target-action", "promote"],
    );
    assert_eq!(
        parse_control(c.data_dir()).data_checksum_version,
        u32::from(checksums)
    );
    c.append_conf("archive_mode = off\n");
    c.start_with_env(&repo.env);
    c.wait_promoted();
    assert_eq!(count(&c), "8000:8000");
    assert_eq!(
        c.psql("show data_checksums"),
        if checksums { "on" } else { "off" }
    );
    c.psql("checkpoint");
    c.stop();
    let out = as_postgres(
        &c.bin("pg_checksums"),
        &["--check", "-D", c.data_dir().to_str().unwrap()],
    );
    if checksums {
        assert_success(&out);
        assert!(
            stdout(&out).contains("Bad checksums:  0"),
            "{}",
            stdout(&out)
        );
    } else {
        assert!(!out.status.success());
        assert!(
            stderr(&out).contains("data checksums are not enabled"),
            "{}",
            stderr(&out)
        );
    }
}

#[test]
fn pg18_data_checksums_on_by_default_survive_backup_and_pitr() {
    checksums_through_pitr_on_18(&[], true);
}

#[test]
fn pg18_without_data_checksums_backup_and_pitr() {
    checksums_through_pitr_on_18(&["--no-data-checksums"], false);
}

/// A primary of `major` archiving into `repo` and summarizing its WAL (17+), with table `seq`
/// holding 1..=100.
fn summarizing_primary(repo: &Repo, major: u32) -> PgCluster {
    let pg = repo.start_primary(PgOptions {
        major: Some(major),
        extra_conf: "summarize_wal = on\n".into(),
        ..Default::default()
    });
    pg.psql("create table seq(n int primary key)");
    pg.psql("insert into seq select generate_series(1, 100)");
    pg
}

/// Waits until `c`'s summarizer has written a WAL summary.
fn wait_for_summaries(c: &PgCluster, what: &str) {
    c.wait_until(what, Duration::from_secs(60), || {
        c.psql("select count(*) from pg_available_wal_summaries()") != "0"
    });
}

/// walarchive's own backup of a cluster summarizing its WAL restores into a data directory
/// the summarizer works in: `pg_wal/summaries` exists (empty, as pg_basebackup leaves it),
/// and after the restore the summarizer writes summaries without an error in the log.
fn summaries_survive_walarchive_backups_on(major: u32) {
    let repo = Store::File.fresh();
    let pg = summarizing_primary(&repo, major);
    pg.psql("checkpoint");
    wait_for_summaries(&pg, "WAL summaries on the source");
    let backup = repo.backup_push(&pg, &[]);
    pg.psql("insert into seq select generate_series(101, 200)");
    let target = pg.psql("select pg_current_wal_insert_lsn()");
    pg.archive_everything();

    let c = repo.restore(
        backup["name"].as_str().unwrap(),
        &["--target-lsn", &target, "--target-action", "promote"],
    );
    let summaries = c.data_dir().join("pg_wal/summaries");
    assert!(summaries.is_dir(), "no pg_wal/summaries in the restore");
    assert_eq!(fs::read_dir(&summaries).unwrap().count(), 0);
    c.append_conf("archive_mode = off\n");
    c.start_with_env(&repo.env);
    c.wait_promoted();
    assert_eq!(count(&c), "200:200");
    c.psql("insert into seq select generate_series(201, 300)");
    c.psql("checkpoint");
    wait_for_summaries(&c, "WAL summaries after the restore");
    let log = c.log();
    for bad in ["ERROR", "FATAL", "PANIC", "creating missing WAL directory"] {
        assert!(
            !log.lines()
                .any(|l| l.contains(bad) && !l.contains("walarchive")),
            "{bad} in the restored server's log:\n{log}"
        );
    }
}

#[test]
fn pg17_summaries_survive_walarchive_backups() {
    summaries_survive_walarchive_backups_on(17);
}

#[test]
fn pg18_summaries_survive_walarchive_backups() {
    summaries_survive_walarchive_backups_on(18);
}

/// A user's incremental backups taken with the server's tools while walarchive archives (and
/// takes a backup of its own between the full and the incremental one): `pg_combinebackup`'s
/// result, started with `restore_command = walarchive wal-fetch` and a named target, recovers
/// exactly to it from walarchive's archive.
fn incremental_backups_beside_walarchive_on(major: u32) {
    let repo = Store::File.fresh();
    let pg = summarizing_primary(&repo, major);
    let full = pg.basebackup();
    let full_manifest = full.data_dir().join("backup_manifest");
    assert!(full_manifest.is_file());
    pg.psql("insert into seq select generate_series(101, 200)");
    // walarchive's backup between the two: it must not break the server's chain.
    repo.backup_push(&pg, &[]);
    pg.psql("insert into seq select generate_series(201, 300)");
    let incremental = pg.basebackup_with(&[&format!("--incremental={}", full_manifest.display())]);
    assert!(
        walk_names(incremental.data_dir())
            .iter()
            .any(|n| n.starts_with("INCREMENTAL.")),
        "not an incremental backup"
    );
    pg.psql("insert into seq select generate_series(301, 400)");
    pg.psql("select pg_create_restore_point('at_400')");
    pg.psql("insert into seq select generate_series(401, 500)");
    pg.archive_everything();

    let combined = PgCluster::empty_for(major);
    let out = as_postgres(
        &pg.bin("pg_combinebackup"),
        &[
            full.data_dir().to_str().unwrap(),
            incremental.data_dir().to_str().unwrap(),
            "-o",
            combined.data_dir().to_str().unwrap(),
        ],
    );
    assert_success(&out);
    combined.adopt_data_dir();
    combined.append_conf(&format!(
        "archive_mode = off\nsummarize_wal = on\n{}recovery_target_name = 'at_400'\nrecovery_target_action = 'promote'\n",
        repo.restore_conf()
    ));
    combined.touch("recovery.signal");
    combined.start_with_env(&repo.env);
    combined.wait_promoted();
    assert_eq!(count(&combined), "400:400");
    assert!(
        combined.log().contains("restored log file"),
        "WAL came from walarchive wal-fetch:\n{}",
        combined.log_tail(40)
    );
    // The chain goes on from walarchive's archive: a new incremental of the source.
    let incremental_manifest = incremental.data_dir().join("backup_manifest");
    let again = pg.basebackup_with(&[&format!("--incremental={}", incremental_manifest.display())]);
    assert!(again.data_dir().join("backup_manifest").is_file());
}

/// Every file name under `dir`.
fn walk_names(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk_names(&p));
        } else {
            out.push(e.file_name().to_string_lossy().into_owned());
        }
    }
    out
}

#[test]
fn pg17_incremental_backups_beside_walarchive() {
    incremental_backups_beside_walarchive_on(17);
}

#[test]
fn pg18_incremental_backups_beside_walarchive() {
    incremental_backups_beside_walarchive_on(18);
}

/// backup-push checks the page checksums of the relation files it copies, as pg_basebackup
/// does, on a cluster with checksums: 18's default, or 15's `initdb --data-checksums`. A
/// clean cluster's backup reports nothing (thousands of pages verified: the algorithm is
/// PostgreSQL's); a page damaged on disk is reported by file and block, as `pg_checksums`
/// reports it, and the backup completes with the damage copied as it is.
fn damaged_pages_are_reported_on(major: u32, initdb_args: &[&str]) {
    let repo = Store::File.fresh();
    let pg = repo.start_primary(PgOptions {
        major: Some(major),
        initdb_args: initdb_args.iter().map(|s| s.to_string()).collect(),
        extra_conf: "autovacuum = off\n".into(),
        ..Default::default()
    });
    assert_eq!(pg.psql("show data_checksums"), "on");
    pg.psql("create table t as select g, repeat('x', 100) as pad from generate_series(1, 20000) g");
    pg.psql("create index on t(g)");
    pg.psql("checkpoint");
    let clean = repo.try_backup_push(&pg, &[]);
    assert_success(&clean);
    assert!(
        !stderr(&clean).contains("checksum"),
        "PostgreSQL {major}: {}",
        stderr(&clean)
    );

    let rel = pg.psql("select pg_relation_filepath('t')");
    let file = pg.data_dir().join(&rel);
    pg.stop();
    let mut bytes = fs::read(&file).unwrap();
    assert!(bytes.len() > 3 * 8192);
    bytes[2 * 8192 + 4000] ^= 0x01; // block 2, in the tuples
    fs::write(&file, &bytes).unwrap();
    let check = as_postgres(
        &pg.bin("pg_checksums"),
        &["--check", "-D", pg.data_dir().to_str().unwrap()],
    );
    assert!(!check.status.success());
    let check = stderr(&check);
    assert!(check.contains(&format!("{rel}\", block 2:")), "{check}");
    // "calculated checksum 6AB3 but block contains 1A23": what walarchive must compute.
    let hex_after = |word: &str| {
        let at = check.find(word).unwrap() + word.len();
        u16::from_str_radix(check[at..].split_whitespace().next().unwrap(), 16).unwrap()
    };
    let (computed, stored) = (
        hex_after("calculated checksum "),
        hex_after("block contains "),
    );
    pg.start_with_env(&repo.env);

    let damaged = repo.try_backup_push(&pg, &[]);
    assert_success(&damaged);
    let err = stderr(&damaged);
    assert!(
        err.contains(&format!(
            "{rel}: 1 page(s) fail their checksum: block 2 (stored 0x{stored:04X}, computed 0x{computed:04X})"
        )),
        "PostgreSQL {major}: {err}"
    );
    assert!(
        err.contains("1 page(s) of the source fail their checksum"),
        "{err}"
    );
    assert_eq!(err.matches("fail their checksum").count(), 2, "{err}");

    // The damage stays with the backup: backup-list says which backup holds failing pages,
    // the other does not.
    let failing: Vec<u64> = repo
        .backup_list(false)
        .iter()
        .map(|b| b["source_pages_failing_checksum"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(failing, [0, 1], "PostgreSQL {major}: backup-list --json");
    let listing = stdout(&repo.run(&["backup-list"]));
    assert_eq!(
        listing
            .matches("page(s) that failed their checksum")
            .count(),
        1,
        "{listing}"
    );
}

#[test]
fn pg15_damaged_pages_are_reported_with_data_checksums() {
    damaged_pages_are_reported_on(15, &["--data-checksums"]);
}

#[test]
fn pg18_damaged_pages_are_reported_by_default() {
    damaged_pages_are_reported_on(18, &[]);
}
