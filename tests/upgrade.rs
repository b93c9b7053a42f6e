//! Upgrading to a new PostgreSQL major with `pg_upgrade`, as a DBA does it, with walarchive
//! archiving before and after.
//!
//! A repository holds one major's WAL. After `pg_upgrade` the cluster writes another WAL
//! format under segment names that continue the old cluster's on the same timeline, so
//! storing its WAL beside the old cluster's would make a repository whose restores replay
//! 16's WAL into 17's segments. walarchive refuses it (status 5, a line naming both
//! majors); the upgraded cluster archives into a new repository, where a fresh base backup
//! starts its restorable history. The old repository stays restorable on the old major's
//! binaries until retention removes it.
//!
//! Each test does all of it on real servers, from 16 to 17 and from 17 to 18: archive the old
//! cluster into repository A, `pg_upgrade --link` it (the new major's pg_upgrade, the old
//! one's binaries, both clusters initdb'ed with the same options: 18's default data
//! checksums are turned off for a 17 cluster without them, which `pg_upgrade --check` shows
//! it needs), start it still pointed at A (refused, nothing stored; `walarchive status`
//! names the mismatch), point it at B, take a base backup there, keep writing; then restore
//! A on the old major to a point before the upgrade and to its end, and B on the new major
//! to its latest, each with exactly its rows.

use testkit as common;

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::*;

/// `pg_upgrade` of the stopped cluster `old` into the new, never started, cluster `new`
/// with the new major's pg_upgrade and `args` (`--link`, `--check`), as the postgres user in
/// a directory it owns; its output, whatever the outcome.
fn try_pg_upgrade(old: &PgCluster, new: &PgCluster, args: &[&str]) -> Output {
    Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(new.bin("pg_upgrade"))
        .arg("--old-bindir")
        .arg(old.bin_dir())
        .arg("--new-bindir")
        .arg(new.bin_dir())
        .arg("--old-datadir")
        .arg(old.data_dir())
        .arg("--new-datadir")
        .arg(new.data_dir())
        .args(["--username", "postgres"])
        .args(["--old-port", &old.port().to_string()])
        .args(["--new-port", &new.port().to_string()])
        .arg("--socketdir")
        .arg(new.dir())
        .args(args)
        .env_remove("PGHOST")
        .env_remove("PGPORT")
        .env_remove("PGDATA")
        .current_dir(new.dir())
        .stdin(Stdio::null())
        .output()
        .expect("run pg_upgrade")
}

/// [`try_pg_upgrade`], which must succeed.
fn pg_upgrade(old: &PgCluster, new: &PgCluster, args: &[&str]) {
    let out = try_pg_upgrade(old, new, args);
    assert!(
        out.status.success(),
        "pg_upgrade {args:?} failed ({:?})\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        stdout(&out),
        stderr(&out)
    );
    eprintln!("{}", stdout(&out));
}

/// Restores `backup` of `repo` (with `args`), promotes it without archiving, returns
/// "count:max" of the rows and the major it ran on.
fn restored_rows(repo: &Repo, backup: &str, args: &[&str]) -> (String, u32) {
    let mut a = args.to_vec();
    a.extend(["--target-action", "promote"]);
    let c = repo.restore(backup, &a);
    c.append_conf("archive_mode = off\n");
    c.start_with_env(&repo.env);
    c.wait_promoted();
    let rows = c.psql("select count(*) || ':' || max(n) from seq");
    let major = c.psql("select current_setting('server_version_num')::int / 10000");
    c.stop();
    (rows, major.parse().unwrap())
}

fn verify_clean(repo: &Repo, what: &str) {
    for args in [&["wal-verify"][..], &["verify", "backup", "LATEST"]] {
        let out = repo.run(args);
        assert!(
            out.status.success(),
            "{args:?} on {what}: {}{}",
            stdout(&out),
            stderr(&out)
        );
    }
}

/// A cluster of major `from` archiving into A is upgraded to `to`; see the module comment.
fn upgrade_path(from: u32, to: u32) {
    // `from` archiving into A: rows 1..=10, a base backup, rows 11..=30.
    let a = Store::File.fresh();
    let old = a.start_primary(PgOptions {
        major: Some(from),
        ..Default::default()
    });
    old.psql("create table seq(n int primary key)");
    old.psql("insert into seq select generate_series(1, 10)");
    let backup_a = a.backup_push(&old, &[])["name"]
        .as_str()
        .unwrap()
        .to_string();
    let mut lsn_20 = String::new();
    for n in 11..=30 {
        old.psql(&format!("insert into seq values ({n})"));
        if n == 20 {
            lsn_20 = old.psql("select pg_current_wal_insert_lsn()");
        }
    }
    old.archive_everything();
    let old_last = old.psql("select last_archived_wal from pg_stat_archiver");
    let old_sysid = old.psql("select system_identifier from pg_control_system()");
    old.stop();

    // pg_upgrade: a new cluster with the same initdb options (encoding, locale, segment
    // size, no data checksums), never started, then the new major's pg_upgrade with the old
    // major's binaries. 18's initdb turns checksums on unless told not to, and pg_upgrade
    // refuses that mismatch.
    let mut initdb_args = Vec::new();
    if to >= 18 {
        let checksums = PgCluster::init(PgOptions {
            major: Some(to),
            ..Default::default()
        });
        let out = try_pg_upgrade(&old, &checksums, &["--check"]);
        let said = format!("{}{}", stdout(&out), stderr(&out));
        assert!(
            !out.status.success()
                && said.contains("old cluster does not use data checksums but the new one does"),
            "{said}"
        );
        initdb_args.push("--no-data-checksums".to_string());
    }
    let new = PgCluster::init(PgOptions {
        major: Some(to),
        initdb_args,
        ..Default::default()
    });
    pg_upgrade(&old, &new, &["--link"]);
    assert_eq!(new.major(), to);

    // Started with its archive_command still pointed at A (the old postgresql.conf's
    // settings carried over): every push is refused and nothing reaches A.
    let a_before = file_tree(&a.path());
    new.append_conf(&a.archive_conf());
    new.start_with_env(&a.env);
    let new_sysid = new.psql("select system_identifier from pg_control_system()");
    eprintln!("system identifier before pg_upgrade {old_sysid}, after {new_sysid}");
    assert_ne!(old_sysid, new_sysid, "the upgraded cluster is a new one");
    assert_eq!(
        new.psql("select count(*) || ':' || max(n) from seq"),
        "30:30"
    );
    new.psql("insert into seq select generate_series(31, 35)");
    let refused = new.switch_wal();
    new.wait_until("the archiver to fail", Duration::from_secs(60), || {
        new.try_psql("select failed_count > 0 from pg_stat_archiver")
            .is_ok_and(|f| f == "t")
    });
    // Its WAL goes on under names past the old cluster's, on the same timeline.
    assert!(
        refused.starts_with("00000001") && refused > old_last,
        "{refused} after {old_last}"
    );
    let log = new.log();
    let said = format!("is from PostgreSQL {to} but this repository holds PostgreSQL {from}'s WAL");
    let line = log
        .lines()
        .find(|l| l.contains("walarchive wal-push: error:"))
        .unwrap_or_else(|| panic!("no walarchive error in the server log:\n{log}"));
    eprintln!("what the user sees: {line}");
    assert!(
        line.contains(&said) && line.contains("new repository"),
        "{line}"
    );
    assert!(
        log.contains("archive command failed with exit code 5"),
        "{log}"
    );
    assert!(new
        .wal_dir()
        .join(format!("archive_status/{refused}.ready"))
        .exists());
    // `walarchive status` against A says why the archive falls behind (status 13).
    let conn = format!("host=127.0.0.1 port={} user=postgres", new.port());
    let out = a.run(&["status", "--pg-conn", &conn]);
    assert_code(&out, 13);
    let shown = format!("{}{}", stdout(&out), stderr(&out));
    eprintln!("walarchive status:\n{shown}");
    assert!(
        shown.contains(&format!(
            "the repository holds PostgreSQL {from}'s WAL but the server is PostgreSQL {to}"
        )) && shown.contains("archive_command is failing"),
        "{shown}"
    );
    // A base backup of the upgraded server into A is refused too.
    let out = a.try_backup_push(&new, &[]);
    assert_code(&out, 5);
    let line = error_line(&out);
    assert!(line.contains(&format!("the backup {}", said)), "{line}");
    assert!(
        file_tree(&a.path()) == a_before,
        "repository A changed after the refusals"
    );

    // Switched to a new repository B: the waiting segments are archived there, a fresh
    // base backup is taken, writes continue.
    let b = Store::File.fresh();
    new.append_conf(&b.archive_conf());
    new.psql("select pg_reload_conf()");
    new.wait_archived(&refused, Duration::from_secs(120));
    b.backup_push(&new, &[]);
    new.psql("insert into seq select generate_series(36, 40)");
    new.archive_everything();
    new.stop();
    let info = b.run(&["repo-info", "--json"]);
    let info: serde_json::Value = serde_json::from_slice(&assert_success(&info).stdout).unwrap();
    assert_eq!(info["pg_version"], to, "{info}");
    assert!(file_tree(&a.path()) == a_before, "repository A changed");

    // A restores on the old major's binaries, to a point before the upgrade and to its
    // end; B on the new major's, to its latest.
    assert_eq!(
        restored_rows(&a, &backup_a, &["--target-lsn", &lsn_20]),
        ("20:20".to_string(), from)
    );
    assert_eq!(
        restored_rows(&a, &backup_a, &[]),
        ("30:30".to_string(), from)
    );
    assert_eq!(restored_rows(&b, "LATEST", &[]), ("40:40".to_string(), to));
    verify_clean(&a, &format!("A ({from})"));
    verify_clean(&b, &format!("B ({to})"));
}

#[test]
fn pg16_upgraded_to_pg17_archives_into_a_new_repository_and_both_restore() {
    upgrade_path(16, 17);
}

/// 18's initdb turns data checksums on by default: the upgraded 17 cluster has none, so its
/// 18 cluster is initdb'ed without them (pg_upgrade --check refuses the default).
#[test]
fn pg17_upgraded_to_pg18_archives_into_a_new_repository_and_both_restore() {
    upgrade_path(17, 18);
}
