//! Restores that must not destroy what they were not asked to replace, and recovery through
//! a store outage, on real PostgreSQL clusters.
//!
//! - `backup-fetch --force` refuses a running cluster's data directory, a directory holding a
//!   `postmaster.pid`, and any directory that is not a data directory; it replaces a stopped
//!   data directory without following its tablespace links; a restore that fails midway
//!   leaves the old data directory exactly as it was (and it still starts).
//! - A standby (standby.signal, restore_command only) whose store goes away keeps running,
//!   logging and counting the errors, and catches up once the store is back; a point-in-time
//!   recovery (recovery.signal, a target) started while the store is away aborts instead of
//!   promoting, and completes once the store is back.

use testkit as common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use common::*;

/// What a directory holds: every entry (not followed through symlinks) with its kind, size,
/// modification time (files) and target (symlinks). Directories' times are left out: moving
/// entries aside and back changes them.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let m = fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().to_path_buf();
            let what = if m.file_type().is_symlink() {
                format!("link -> {}", fs::read_link(&p).unwrap().display())
            } else if m.is_dir() {
                stack.push(p.clone());
                format!("dir {:o}", m.permissions().mode() & 0o7777)
            } else {
                let t = m.modified().unwrap();
                format!(
                    "file {} bytes {:o} {:?}",
                    m.len(),
                    m.permissions().mode() & 0o7777,
                    t.duration_since(SystemTime::UNIX_EPOCH).unwrap()
                )
            };
            out.insert(rel, what);
        }
    }
    out
}

/// A primary archiving into a fresh file repository, with table `t` (3000 rows) in a backup
/// of many small parts and 1000 rows more archived after it.
fn primary_with_backup() -> (Repo, PgCluster, String) {
    let repo = Store::File.fresh();
    let primary = repo.start_primary(PgOptions::default());
    primary.psql("create table t as select g as id from generate_series(1, 3000) g");
    primary.archive_everything();
    let summary = repo.backup_push(&primary, &["--part-size", "1"]);
    let name = summary["name"].as_str().unwrap().to_string();
    primary.psql("insert into t select g from generate_series(3001, 4000) g");
    primary.archive_everything();
    (repo, primary, name)
}

/// A stopped data directory of another cluster (initdb'd, never started) with a file of its
/// own and a tablespace link to a directory outside it.
fn stopped_cluster_with_a_tablespace_link() -> (PgCluster, TestDir) {
    let old = PgCluster::init(PgOptions::default());
    fs::write(old.data_dir().join("old-only.txt"), "from the old cluster").unwrap();
    let outside = TestDir::new_postgres("walarchive-tsout-");
    fs::create_dir(outside.join("PG_15_202209061")).unwrap();
    fs::write(
        outside.join("PG_15_202209061/keep.txt"),
        "not the restore's",
    )
    .unwrap();
    std::os::unix::fs::symlink(outside.path(), old.data_dir().join("pg_tblspc/99999")).unwrap();
    chown_postgres(old.dir());
    chown_postgres(outside.path());
    (old, outside)
}

#[test]
fn force_replaces_only_a_stopped_data_directory() {
    let (repo, primary, name) = primary_with_backup();

    // A running cluster's data directory: refused with or without --force, untouched.
    let before = primary.psql("select count(*) from t");
    for args in [&["--force"][..], &[]] {
        let out = repo.try_restore_into(&primary, &name, args);
        assert_code(&out, 3);
        let line = error_line(&out);
        assert!(
            line.contains("running") && line.contains("PID") && line.contains("stop it"),
            "{line}"
        );
    }
    assert!(primary.is_running());
    assert_eq!(primary.psql("select count(*) from t"), before);
    assert!(!primary.data_dir().join(".walarchive-restore").exists());
    primary.psql("insert into t values (0)");

    // A directory that is not a data directory: refused, its file intact.
    let (_keep, other) = {
        let d = TestDir::new_postgres("walarchive-notpg-");
        let other = d.join("precious");
        fs::create_dir_all(other.join("important")).unwrap();
        fs::write(other.join("important/file.txt"), "precious").unwrap();
        chown_postgres(d.path());
        (d, other)
    };
    let c = PgCluster::empty();
    let out = repo.run_as_postgres(
        &["backup-fetch", other.to_str().unwrap(), &name, "--force"],
        c.dir(),
    );
    assert_code(&out, 3);
    assert!(
        error_line(&out).contains("not a PostgreSQL data directory"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        fs::read_to_string(other.join("important/file.txt")).unwrap(),
        "precious"
    );
    assert_eq!(fs::read_dir(&other).unwrap().count(), 1);

    // An empty directory: restored without --force.
    let empty = PgCluster::empty();
    fs::create_dir(empty.data_dir()).unwrap();
    chown_postgres(empty.data_dir());
    assert_success(&repo.try_restore_into(&empty, &name, &[]));
    assert!(empty.data_dir().join("backup_label").is_file());

    // A stopped data directory: refused without --force and while a postmaster.pid is there
    // (a crashed server's, PID not running), replaced with --force; the tablespace link's
    // target is never entered.
    let (old, outside) = stopped_cluster_with_a_tablespace_link();
    let before = snapshot(old.data_dir());
    let out = repo.try_restore_into(&old, &name, &[]);
    assert_code(&out, 3);
    assert!(
        error_line(&out).contains(&format!(
            "{} is not empty (use --force to replace a data directory",
            old.data_dir().display()
        )),
        "{}",
        stderr(&out)
    );
    assert_eq!(snapshot(old.data_dir()), before);
    fs::write(old.data_dir().join("postmaster.pid"), "999999999\n").unwrap();
    let before = snapshot(old.data_dir());
    let out = repo.try_restore_into(&old, &name, &["--force"]);
    assert_code(&out, 3);
    assert!(
        error_line(&out).contains("remove postmaster.pid"),
        "{}",
        stderr(&out)
    );
    assert_eq!(snapshot(old.data_dir()), before);
    fs::remove_file(old.data_dir().join("postmaster.pid")).unwrap();
    let out = repo.try_restore_into(&old, &name, &["--force", "--target-action", "promote"]);
    assert_success(&out);
    assert!(
        stderr(&out).contains("--force: replacing the data directory"),
        "{}",
        stderr(&out)
    );
    assert!(!old.data_dir().join("old-only.txt").exists());
    assert!(!old.data_dir().join("pg_tblspc/99999").exists());
    for leftover in [".walarchive-restore", ".walarchive-restore-done"] {
        assert!(!old.data_dir().join(leftover).exists(), "{leftover}");
    }
    assert_eq!(
        fs::read_to_string(outside.join("PG_15_202209061/keep.txt")).unwrap(),
        "not the restore's"
    );
    old.adopt_data_dir();
    old.append_conf("archive_mode = off\n");
    old.start_with_env(&repo.env);
    old.wait_promoted();
    assert_eq!(old.psql("select count(*) from t"), "4000");
}

#[test]
fn a_forced_restore_that_fails_midway_leaves_the_old_data_directory_as_it_was() {
    let (repo, _primary, name) = primary_with_backup();
    let (old, outside) = stopped_cluster_with_a_tablespace_link();
    fs::set_permissions(old.data_dir(), fs::Permissions::from_mode(0o750)).unwrap();
    let before = snapshot(old.data_dir());
    // The fourth part is refused (after three were extracted), then the third is cut short.
    for (plan, status) in [
        ("op=get key=/part-000004 fault=403", 7),
        ("op=get key=/part-000003 fault=truncate:300", 8),
    ] {
        let mut env = repo.env.clone();
        env.push(("WALARCHIVE_FAULTS".into(), plan.into()));
        env.push(("WALARCHIVE_RETRIES".into(), "2".into()));
        let dest = old.data_dir().to_str().unwrap().to_string();
        let out = run_walarchive_as_postgres(
            &["--repo", &repo.url, "backup-fetch", &dest, &name, "--force"],
            &env,
            old.dir(),
        );
        assert_code(&out, status);
        assert!(
            stderr(&out).contains("replacing the data directory")
                && stderr(&out).contains("is as it was"),
            "{plan}: {}",
            stderr(&out)
        );
        assert_eq!(snapshot(old.data_dir()), before, "{plan}");
        assert_eq!(
            fs::metadata(old.data_dir()).unwrap().permissions().mode() & 0o777,
            0o750
        );
    }
    assert_eq!(
        fs::read_to_string(outside.join("PG_15_202209061/keep.txt")).unwrap(),
        "not the restore's"
    );
    // It is still the old cluster, and it starts.
    fs::remove_file(old.data_dir().join("pg_tblspc/99999")).unwrap();
    old.start();
    assert_eq!(
        old.try_psql("select count(*) from pg_class where relname = 't'"),
        Ok("0".into())
    );
}

/// A fresh S3 repository reached through a proxy that can take the store away
/// ([`Proxy::set_down`]), with few and quick retries.
fn s3_through_a_proxy() -> (Repo, Proxy) {
    let proxy = Proxy::start(s3().port, Duration::ZERO);
    let mut repo = Store::S3.fresh();
    for (k, v) in repo.env.iter_mut() {
        if k == "AWS_ENDPOINT" {
            *v = proxy.url();
        }
    }
    repo.env.extend([
        ("WALARCHIVE_RETRIES".to_string(), "2".to_string()),
        ("WALARCHIVE_REQUEST_TIMEOUT".to_string(), "5".to_string()),
    ]);
    (repo, proxy)
}

fn count(pg: &PgCluster) -> String {
    pg.try_psql("select count(*) from t").unwrap_or_default()
}

#[test]
fn a_standby_rides_out_a_store_outage() {
    let (repo, proxy) = s3_through_a_proxy();
    let primary = repo.start_primary(PgOptions::default());
    primary.psql("create table t as select g as id from generate_series(1, 1000) g");
    primary.archive_everything();
    // A standby fed by the archive only (no primary_conninfo).
    let standby = primary.basebackup();
    standby.append_conf(&format!("archive_mode = off\n{}", repo.restore_conf()));
    standby.touch("standby.signal");
    standby.start_with_env(&repo.env);
    standby.wait_until("the standby to replay t", Duration::from_secs(60), || {
        count(&standby) == "1000"
    });

    // The store goes away while the standby waits for a segment not archived yet.
    proxy.set_down(true);
    primary.psql("insert into t select g from generate_series(1001, 2000) g");
    primary.switch_wal();
    let said = "this is a standby (standby.signal)";
    standby.wait_until(
        "the standby to log three storage failures",
        Duration::from_secs(120),
        || standby.log().matches(said).count() >= 3,
    );
    assert!(standby.is_running(), "{}", standby.log_tail(30));
    assert_eq!(standby.psql("select pg_is_in_recovery()"), "t");
    assert_eq!(count(&standby), "1000");
    let log = standby.log();
    assert!(log.contains("walarchive wal-fetch: error:"), "{log}");
    assert!(!log.contains("FATAL"), "{log}");

    // The store is back: the primary archives what waited, the standby catches up and is
    // still a standby.
    proxy.set_down(false);
    primary.archive_everything();
    standby.wait_until("the standby to catch up", Duration::from_secs(120), || {
        count(&standby) == "2000"
    });
    assert_eq!(standby.psql("select pg_is_in_recovery()"), "t");

    // Counted, and shown by status and its metrics.
    let data = standby.data_dir().to_str().unwrap().to_string();
    let conn = standby.connstr();
    let out = repo.run(&["status", "--pgdata", &data, "--pg-conn", &conn, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}{}", stdout(&out), stderr(&out)));
    let waits = v["counters"]["fetch_standby_waits_total"].as_u64().unwrap();
    assert!(waits >= 3, "{v}");
    assert!(
        v["counters"]["fetch_errors_total"].as_u64().unwrap() >= waits,
        "{v}"
    );
    let out = repo.run(&[
        "status",
        "--pgdata",
        &data,
        "--pg-conn",
        &conn,
        "--prometheus",
    ]);
    let line = stdout(&out)
        .lines()
        .find(|l| l.starts_with("walarchive_fetch_standby_waits_total "))
        .unwrap_or_else(|| panic!("{}", stdout(&out)))
        .to_string();
    assert_eq!(
        line,
        format!("walarchive_fetch_standby_waits_total {waits}")
    );
}

#[test]
fn a_point_in_time_recovery_aborts_during_a_store_outage_and_completes_after() {
    let (repo, proxy) = s3_through_a_proxy();
    let primary = repo.start_primary(PgOptions::default());
    primary.psql("create table t as select g as id from generate_series(1, 1000) g");
    primary.archive_everything();
    let name = repo.backup_push(&primary, &[])["name"]
        .as_str()
        .unwrap()
        .to_string();
    primary.psql("insert into t select g from generate_series(1001, 2000) g");
    let target = primary.psql("select pg_current_wal_lsn()");
    primary.psql("insert into t select g from generate_series(2001, 3000) g");
    primary.archive_everything();
    let restored = repo.restore(
        &name,
        &["--target-lsn", &target, "--target-action", "promote"],
    );
    restored.append_conf("archive_mode = off\n");

    // The store is away: recovery toward the target aborts (status above 125) rather than
    // ending early and promoting.
    proxy.set_down(true);
    let failed = restored.try_start_with_env(&repo.env);
    assert!(failed.is_err(), "started while the store was away");
    assert!(!restored.is_running());
    let log = restored.log();
    assert!(log.contains("exit code 207"), "{log}");
    assert!(restored.data_dir().join("recovery.signal").exists());
    assert!(!restored.wal_dir().join("00000002.history").exists());

    // Back: the same cluster recovers to the target and promotes.
    proxy.set_down(false);
    restored.start_with_env(&repo.env);
    restored.wait_promoted();
    assert_eq!(count(&restored), "2000");
}

/// A small tmpfs, unmounted on drop: a disk that fills up (as in tests/contract.rs).
struct SmallDisk {
    dir: TestDir,
}

impl SmallDisk {
    fn new(size: &str) -> SmallDisk {
        let dir = TestDir::new("walarchive-full-");
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0755")])
            .arg("tmpfs")
            .arg(dir.path())
            .output()
            .unwrap();
        assert_success(&out);
        chown_postgres(dir.path());
        SmallDisk { dir }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.dir.path())
            .status();
    }
}

/// Restoring onto a disk that fills up: local I/O error (9), nothing left behind in a new
/// destination, and a data directory replaced with --force is put back as it was.
#[test]
fn a_restore_onto_a_full_disk_fails_cleanly() {
    let (repo, _primary, name) = primary_with_backup();
    let disk = SmallDisk::new("6m");
    let restore_into = |dest: &Path, extra: &[&str]| {
        let mut a = vec!["backup-fetch", dest.to_str().unwrap(), name.as_str()];
        a.extend_from_slice(extra);
        repo.run_as_postgres(&a, disk.dir.path())
    };
    let new = disk.dir.join("new");
    let out = restore_into(&new, &[]);
    assert_code(&out, 9);
    assert!(
        error_line(&out).contains("No space left on device"),
        "{}",
        stderr(&out)
    );
    assert_eq!(fs::read_dir(disk.dir.path()).unwrap().count(), 0);

    // A (small, stopped) data directory on that disk.
    let old = disk.dir.join("old");
    fs::create_dir_all(old.join("global")).unwrap();
    fs::create_dir_all(old.join("base/1")).unwrap();
    fs::write(old.join("PG_VERSION"), "15\n").unwrap();
    fs::write(old.join("global/pg_control"), vec![7u8; 8192]).unwrap();
    fs::write(old.join("base/1/16384"), vec![1u8; 1 << 20]).unwrap();
    chown_postgres(&old);
    chmod(&old, 0o700);
    let before = snapshot(&old);
    let out = restore_into(&old, &["--force"]);
    assert_code(&out, 9);
    assert!(stderr(&out).contains("is as it was"), "{}", stderr(&out));
    assert_eq!(snapshot(&old), before);
    assert_eq!(
        fs::read(old.join("base/1/16384")).unwrap(),
        vec![1u8; 1 << 20]
    );
}
