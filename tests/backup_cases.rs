//! Base backups beyond the happy path: a backup taken from a streaming standby, tablespaces
//! restored somewhere else, a backup killed half-way, tampered backups, bad input to
//! backup-push and backup-fetch, 16 MiB WAL segments, and backup-fetch --progress-file.

use testkit as common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use common::*;

/// Asserts that `needle` occurs exactly once in `line` (a reason is not repeated).
#[track_caller]
fn assert_said_once(line: &str, needle: &str) {
    assert_eq!(
        line.matches(needle).count(),
        1,
        "{needle:?} should appear exactly once in: {line}"
    );
}

/// Restores `backup` of `repo` with `--target-action promote` (plus `extra`), starts it
/// without archiving and waits until it is a primary.
fn restore_and_promote(repo: &Repo, backup: &str, extra: &[&str]) -> PgCluster {
    let mut args = vec!["--target-action", "promote"];
    args.extend_from_slice(extra);
    let restored = repo.restore(backup, &args);
    restored.append_conf("archive_mode = off\n");
    restored.start_with_env(&repo.env);
    restored.wait_promoted();
    restored
}

/// Every file under `root` (recursively) with its size and modification time.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, (u64, SystemTime)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display())) {
            let e = e.unwrap();
            let meta = fs::symlink_metadata(e.path()).unwrap();
            if meta.is_dir() {
                stack.push(e.path());
            }
            let rel = e.path().strip_prefix(root).unwrap().to_path_buf();
            out.insert(rel, (meta.len(), meta.modified().unwrap()));
        }
    }
    out
}

/// Names of complete part objects (`part-NNNNNN`) under `root`.
fn part_files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(rd) = fs::read_dir(&dir) else {
            continue;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
            } else if name.len() == "part-000000".len()
                && name.starts_with("part-")
                && name[5..].bytes().all(|b| b.is_ascii_digit())
            {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

/// A fresh directory `name` inside a new postgres-owned temp dir.
fn postgres_subdir(prefix: &str, name: &str) -> (TestDir, PathBuf) {
    let parent = TestDir::new_postgres(prefix);
    let dir = parent.join(name);
    fs::create_dir(&dir).unwrap();
    chown_postgres(&dir);
    (parent, dir)
}

/// Whether `text` contains a 24-hex-digit WAL segment name.
fn names_a_segment(text: &str) -> bool {
    text.split(|c: char| !c.is_ascii_hexdigit())
        .any(|w| w.len() == 24)
}

// ---------------------------------------------------------------------------
// 1. A backup taken from a streaming standby
// ---------------------------------------------------------------------------

#[test]
fn backup_from_standby() {
    let repo = Store::File.fresh();
    let primary = repo.start_primary(PgOptions {
        extra_conf: "archive_timeout = 1\n".into(),
        ..Default::default()
    });
    primary.psql("create table t (id serial primary key, v text not null)");
    primary.psql("insert into t (v) select 'seed-' || g from generate_series(1, 1000) g");
    primary.archive_everything();

    let standby = primary.basebackup_with(&["-R"]);
    standby.append_conf(&repo.restore_conf());
    standby.start_with_env(&repo.env);

    primary.psql("insert into t (v) select 'pre-' || g from generate_series(1, 2000) g");
    let before = primary.psql("select count(*) from t");
    let lsn = primary.psql("select pg_current_wal_lsn()");
    // A checkpoint the standby can turn into a restartpoint for the backup's start.
    primary.psql("checkpoint");
    standby.wait_until("the standby to replay", Duration::from_secs(60), || {
        standby
            .try_psql(&format!("select pg_last_wal_replay_lsn() >= '{lsn}'"))
            .is_ok_and(|r| r == "t")
    });
    assert_eq!(standby.psql("select count(*) from t"), before);

    let done = AtomicBool::new(false);
    let started = Instant::now();
    let out = std::thread::scope(|s| {
        let writer = s.spawn(|| {
            let mut last_switch = Instant::now();
            let mut n = 0;
            while !done.load(Ordering::SeqCst) {
                n += 1;
                primary.psql(&format!("insert into t (v) values ('during-{n}')"));
                if last_switch.elapsed() >= Duration::from_millis(500) {
                    primary.switch_wal();
                    last_switch = Instant::now();
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let out = repo.try_backup_push(&standby, &["--wal-timeout", "90"]);
        done.store(true, Ordering::SeqCst);
        writer.join().unwrap();
        out
    });
    let summary: serde_json::Value = serde_json::from_slice(&assert_success(&out).stdout).unwrap();
    eprintln!("standby backup took {:?}", started.elapsed());
    assert_eq!(summary["complete"], true);
    assert_eq!(summary["from_standby"], true, "{summary}");

    let list = repo.backup_list(false);
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["name"], summary["name"]);
    assert_eq!(list[0]["from_standby"], true, "{list:?}");

    primary.archive_everything();
    let restored = restore_and_promote(&repo, "LATEST", &[]);
    assert_eq!(
        restored.psql("select count(*) from t where v like 'pre-%'"),
        "2000"
    );
    assert_eq!(
        restored.psql("select count(*) from t where v like 'seed-%'"),
        "1000"
    );
    let count: u64 = restored.psql("select count(*) from t").parse().unwrap();
    let before: u64 = before.parse().unwrap();
    assert!(
        count >= before,
        "restored {count} rows, fewer than {before}"
    );
    // The restored cluster is a writable primary.
    restored.psql("insert into t (v) values ('after-restore')");
}

// ---------------------------------------------------------------------------
// 2. Tablespaces, restored into another directory
// ---------------------------------------------------------------------------

#[test]
fn tablespace_backup_and_remap() {
    let repo = Store::File.fresh();
    let primary = repo.start_primary(PgOptions::default());
    let (_old_parent, ts_old) = postgres_subdir("walarchive-ts-", "ts");
    primary.psql(&format!(
        "create tablespace ts location '{}'",
        ts_old.display()
    ));
    primary.psql("create table tt (id int primary key, v text not null) tablespace ts");
    primary.psql("insert into tt select g, md5(g::text) from generate_series(1, 5000) g");
    let oid = primary.psql("select oid from pg_tablespace where spcname = 'ts'");
    primary.archive_everything();

    let summary = repo.backup_push(&primary, &[]);
    assert_eq!(summary["complete"], true);
    // Replayed from WAL into the remapped tablespace.
    primary.psql("insert into tt select g, md5(g::text) from generate_series(5001, 6000) g");
    primary.psql("update tt set v = 'changed' where id % 100 = 0");
    let digest_sql =
        "select count(*) || ':' || md5(string_agg(id || ':' || v, ',' order by id)) from tt";
    let expected = primary.psql(digest_sql);
    primary.archive_everything();
    // Nothing may touch the original tablespace from here on.
    primary.stop();
    let old_before = snapshot(&ts_old);
    assert!(!old_before.is_empty());

    let (_new_parent, ts_new) = postgres_subdir("walarchive-ts-new-", "ts");
    let map = format!("{oid}={}", ts_new.display());
    let restored = repo.restore(
        "LATEST",
        &["--target-action", "promote", "--tablespace-map", &map],
    );
    let new_files = snapshot(&ts_new);
    // PostgreSQL's per-version subdirectory: PG_<major>_<catalog version>.
    let version_dir = format!("PG_{}_", primary.major());
    assert!(
        new_files
            .keys()
            .any(|p| p.to_string_lossy().starts_with(&version_dir) && p.components().count() >= 3),
        "the new tablespace directory received no relation files: {new_files:?}"
    );
    let tsmap = fs::read_to_string(restored.data_dir().join("tablespace_map")).unwrap();
    assert!(
        tsmap.contains(&format!("{oid} {}", ts_new.display())),
        "tablespace_map: {tsmap}"
    );
    assert_eq!(
        snapshot(&ts_old),
        old_before,
        "backup-fetch touched the original tablespace"
    );

    restored.append_conf("archive_mode = off\n");
    restored.start_with_env(&repo.env);
    restored.wait_promoted();
    assert_eq!(restored.psql(digest_sql), expected);
    assert_eq!(
        restored.psql(&format!("select pg_tablespace_location({oid})")),
        ts_new.display().to_string()
    );
    assert_eq!(
        restored.psql("select spcname from pg_tablespace t join pg_class c on c.reltablespace = t.oid where c.relname = 'tt'"),
        "ts"
    );
    // Still writable in its new place.
    restored.psql("insert into tt values (7000, 'new')");
    restored.psql("checkpoint");
    assert_eq!(
        snapshot(&ts_old),
        old_before,
        "the restored cluster wrote into the original tablespace"
    );
}

// ---------------------------------------------------------------------------
// 3. A backup killed half-way
// ---------------------------------------------------------------------------

#[test]
fn interrupted_backup_is_not_listed() {
    let repo = Store::File.fresh();
    let primary = repo.start_primary(PgOptions::default());
    primary.pgbench_init(10);
    primary.archive_everything();

    let conn = format!("host=127.0.0.1 port={} user=postgres", primary.port());
    // As the postgres user, like the backup that follows (and a cron job); setuid directly
    // (not through runuser, which would stay in between and take the kill itself).
    let (uid, gid) = postgres_ids();
    let mut child = Command::new(walarchive_bin())
        .uid(uid)
        .gid(gid)
        .current_dir("/tmp")
        .args(["--repo", &repo.url, "backup-push", "--pg-conn", &conn])
        .args(["--fast", "--part-size", "1"])
        .env("WALARCHIVE_COMPRESSION", "none")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn backup-push");
    let backups = repo.path().join("basebackups");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if part_files(&backups).len() >= 3 {
            break;
        }
        if let Some(st) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            panic!(
                "backup-push ended ({st:?}) before 3 parts were written: {}",
                stderr(&out)
            );
        }
        assert!(Instant::now() < deadline, "no parts after 60 s");
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap();
    let killed = child.wait_with_output().unwrap();
    assert!(
        !killed.status.success(),
        "backup-push finished before it was killed: {}",
        stderr(&killed)
    );
    let parts = part_files(&backups).len();
    eprintln!("killed backup-push after {parts} parts");

    // The session ended with the process, and with it the backup on the server.
    primary.wait_until(
        "the killed backup's session to end",
        Duration::from_secs(30),
        || {
            primary
                .try_psql(
                    "select count(*) from pg_stat_activity \
                     where backend_type = 'client backend' and pid <> pg_backend_pid()",
                )
                .is_ok_and(|n| n == "0")
        },
    );

    assert_eq!(repo.backup_list(false), Vec::<serde_json::Value>::new());
    let detail = repo.backup_list(true);
    assert_eq!(detail.len(), 1, "{detail:?}");
    assert_eq!(detail[0]["complete"], false, "{detail:?}");
    let killed_name = detail[0]["name"].as_str().unwrap().to_string();
    assert!(
        !repo
            .path()
            .join("basebackups")
            .join(&killed_name)
            .join("manifest.json")
            .exists(),
        "the killed backup has a manifest"
    );
    let out = repo.run(&["backup-list"]);
    assert_success(&out);
    assert!(
        !stdout(&out).contains(&killed_name),
        "backup-list shows the incomplete backup: {}",
        stdout(&out)
    );

    let summary = repo.backup_push(&primary, &[]);
    assert_eq!(summary["complete"], true);
    assert_ne!(summary["name"].as_str().unwrap(), killed_name);
    let expected = primary.psql(PGBENCH_DIGEST);
    primary.archive_everything();

    let list = repo.backup_list(false);
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["name"], summary["name"]);
    assert_eq!(list[0]["complete"], true);
    let detail = repo.backup_list(true);
    assert_eq!(detail.len(), 2, "{detail:?}");

    let restored = restore_and_promote(&repo, "LATEST", &[]);
    assert_eq!(restored.psql(PGBENCH_DIGEST), expected);
}

// ---------------------------------------------------------------------------
// 4. Tampered backups
// ---------------------------------------------------------------------------

#[test]
fn tampered_backup_fails_clearly() {
    let repo = Store::File.fresh();
    let primary = repo.start_primary(PgOptions::default());
    primary.pgbench_init(2);
    primary.archive_everything();
    let summary = repo.backup_push(&primary, &[]);
    let name = summary["name"].as_str().unwrap().to_string();
    primary.archive_everything();
    let dir = repo.path().join("basebackups").join(&name);

    // One flipped byte in the middle of a part.
    let part = dir.join("data/part-000001");
    let original = fs::read(&part).unwrap_or_else(|e| panic!("read {}: {e}", part.display()));
    let mut bad = original.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x01;
    fs::write(&part, &bad).unwrap();
    let target = PgCluster::empty();
    let out = repo.try_restore_into(&target, "LATEST", &[]);
    assert_code(&out, 8);
    let part_line = error_line(&out);
    assert!(part_line.contains("corrupt"), "{part_line}");
    assert!(part_line.contains("part-000001"), "{part_line}");
    let target = PgCluster::empty();
    let out = repo.try_restore_into(&target, &name, &[]);
    assert_code(&out, 8);

    // The same with the part intact restores fine (only the flipped byte was wrong).
    fs::write(&part, &original).unwrap();
    let target = PgCluster::empty();
    assert_success(&repo.try_restore_into(&target, "LATEST", &[]));

    // A manifest from a newer walarchive (a valid object whose format_version this build
    // does not know): refused with the reason, nothing written, and intact once put back.
    let manifest = dir.join("manifest.json");
    let stored = fs::read(&manifest).unwrap();
    let (header, raw) = walarchive::format::decode(&stored).unwrap();
    let mut newer: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    newer["format_version"] = 99.into();
    let newer = serde_json::to_vec(&newer).unwrap();
    // Bound to its name and cluster, as walarchive writes it.
    let bound = header.binding.as_ref();
    assert!(bound.is_some(), "manifests are bound to their name");
    fs::write(
        &manifest,
        walarchive::format::encode(&newer, walarchive::Compression::Zstd(1), bound).bytes,
    )
    .unwrap();
    let target = PgCluster::empty();
    let out = repo.try_restore_into(&target, &name, &[]);
    assert_code(&out, 8);
    let newer_line = error_line(&out);
    assert!(
        newer_line.contains("manifest format version 99 is newer than this walarchive")
            && newer_line.contains("upgrade walarchive"),
        "{newer_line}"
    );
    assert!(!target.data_dir().join("PG_VERSION").exists());
    fs::write(&manifest, &stored).unwrap();

    // A manifest replaced by garbage.
    fs::write(
        &manifest,
        "this is not a walarchive manifest ".repeat(10).as_bytes(),
    )
    .unwrap();
    let target = PgCluster::empty();
    let out = repo.try_restore_into(&target, "LATEST", &[]);
    assert_ne!(code(&out), 0);
    assert_code(&out, 8);
    let line = error_line(&out);
    assert!(
        line.contains("manifest.json") && line.contains("corrupt"),
        "{line}"
    );
    assert!(
        !target.data_dir().join("PG_VERSION").exists(),
        "a restore from a garbage manifest wrote data"
    );

    // Each message states its reason once.
    assert_said_once(&part_line, "checksum mismatch");
    assert_said_once(&line, "bad magic");
}

// ---------------------------------------------------------------------------
// 5. backup-push refusing bad input
// ---------------------------------------------------------------------------

#[test]
fn backup_push_bad_input() {
    let repo = Store::File.fresh();
    let pg = PgCluster::init(PgOptions {
        extra_conf: "archive_mode = on\narchive_command = 'false'\n".into(),
        ..Default::default()
    });
    pg.start();
    // The repository exists (one segment pushed by hand): listing it is then meaningful
    // (on a URL with no repository, backup-list exits 6).
    let first = fs::read_dir(pg.wal_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.len() == 24)
        .min()
        .expect("a segment in pg_wal");
    assert_success(&repo.run_as_postgres(&["wal-push", &format!("pg_wal/{first}")], pg.data_dir()));
    let empty_list = |what: &str| {
        let out = repo.run(&["backup-list", "--json"]);
        assert_success(&out);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v, serde_json::json!([]), "backup-list after {what}");
    };

    // --pgdata that is not a data directory.
    let empty = TestDir::new("walarchive-empty-");
    let out = repo.try_backup_push(&pg, &["--pgdata", empty.path().to_str().unwrap()]);
    assert_code(&out, 3);
    let line = error_line(&out);
    assert!(
        line.contains(empty.path().to_str().unwrap()) && line.contains("--pgdata"),
        "{line}"
    );
    empty_list("a bad --pgdata");

    // Nothing listens on the port.
    let port = free_port();
    let conn = format!("host=127.0.0.1 port={port} user=postgres connect_timeout=5");
    let out = repo.run_as_postgres(
        &["backup-push", "--pg-conn", &conn, "--fast"],
        Path::new("/tmp"),
    );
    assert_code(&out, 11);
    let err = stderr(&out);
    assert_eq!(err.trim().lines().count(), 1, "one line expected:\n{err}");
    let line = error_line(&out);
    assert!(line.contains("connect"), "{line}");
    assert!(line.contains(&port.to_string()), "{line}");
    let connect_line = line;
    empty_list("a refused connection");

    // The WAL is never archived.
    let started = Instant::now();
    let out = repo.try_backup_push(&pg, &["--wal-timeout", "3"]);
    assert_code(&out, 12);
    let line = error_line(&out);
    assert!(names_a_segment(&line), "{line}");
    assert!(line.contains("not archived"), "{line}");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "--wal-timeout 3 took {:?}",
        started.elapsed()
    );
    empty_list("a WAL timeout");
    let detail = repo.backup_list(true);
    assert_eq!(detail.len(), 1, "{detail:?}");
    assert_eq!(detail[0]["complete"], false);

    // The failed backup ended its session: no backup is left in progress on the server.
    pg.wait_until("the backup session to end", Duration::from_secs(30), || {
        pg.try_psql(
            "select count(*) from pg_stat_activity \
             where backend_type = 'client backend' and pid <> pg_backend_pid()",
        )
        .is_ok_and(|n| n == "0")
    });

    // Why the connection failed: "refused" tells an operator that nothing listens there.
    assert!(
        connect_line.to_lowercase().contains("refused"),
        "no reason given: {connect_line}"
    );
}

// ---------------------------------------------------------------------------
// 6. backup-fetch refusing bad input
// ---------------------------------------------------------------------------

#[test]
fn backup_fetch_bad_input() {
    let repo = Store::File.fresh();
    let primary = repo.start_primary(PgOptions::default());
    primary.psql("create table t as select g as id from generate_series(1, 3000) g");
    primary.archive_everything();
    let summary = repo.backup_push(&primary, &[]);
    let name = summary["name"].as_str().unwrap().to_string();
    primary.psql("insert into t select g from generate_series(3001, 4000) g");
    primary.archive_everything();

    // A non-empty destination.
    let c = PgCluster::empty();
    fs::create_dir(c.data_dir()).unwrap();
    fs::write(c.data_dir().join("junk"), b"precious?").unwrap();
    fs::create_dir(c.data_dir().join("junkdir")).unwrap();
    chown_postgres(c.data_dir());
    let out = repo.try_restore_into(&c, "LATEST", &[]);
    assert_code(&out, 3);
    let line = error_line(&out);
    assert!(line.contains("--force"), "{line}");
    assert!(line.contains(c.data_dir().to_str().unwrap()), "{line}");
    assert!(c.data_dir().join("junk").exists(), "refused, yet changed");
    // --force replaces a data directory only (tests/restore_safety.rs replaces one): this is
    // not one, and stays as it is.
    let out = repo.try_restore_into(&c, "LATEST", &["--force", "--target-action", "promote"]);
    assert_code(&out, 3);
    assert!(
        error_line(&out).contains("not a PostgreSQL data directory"),
        "{}",
        stderr(&out)
    );
    assert!(c.data_dir().join("junk").exists() && c.data_dir().join("junkdir").exists());
    fs::remove_file(c.data_dir().join("junk")).unwrap();
    fs::remove_dir(c.data_dir().join("junkdir")).unwrap();
    let out = repo.try_restore_into(&c, "LATEST", &["--target-action", "promote"]);
    assert_success(&out);
    assert!(c.data_dir().join("PG_VERSION").is_file());
    assert!(c.data_dir().join("backup_label").is_file());
    c.adopt_data_dir();
    c.append_conf("archive_mode = off\n");
    c.start_with_env(&repo.env);
    c.wait_promoted();
    assert_eq!(c.psql("select count(*) from t"), "4000");
    drop(c);

    // No such backup.
    let c = PgCluster::empty();
    let out = repo.try_restore_into(&c, "base_19700101T000000Z", &[]);
    assert_code(&out, 1);
    let line = error_line(&out);
    assert!(line.contains("base_19700101T000000Z"), "{line}");
    assert!(
        !c.data_dir().exists(),
        "wrote a destination for a missing backup"
    );

    // Targets no backup can serve, or that the archive does not reach.
    let cases: [(&[&str], &str); 4] = [
        (&["--target-lsn", "0/1"], "no complete backup ends before"),
        (
            &[name.as_str(), "--target-lsn", "0/1"],
            "after the recovery target",
        ),
        (
            &["--target-time", "2100-01-01 00:00:00+00"],
            "is after the last archived transaction",
        ),
        (
            &["--target-lsn", "FF/0"],
            "past the end of the archived WAL",
        ),
    ];
    for (args, wanted) in cases {
        let c = PgCluster::empty();
        let (backup, args) = if args[0].starts_with("--") {
            ("LATEST", args)
        } else {
            (args[0], &args[1..])
        };
        let out = repo.try_restore_into(&c, backup, args);
        assert_code(&out, 3);
        let line = error_line(&out);
        assert!(line.contains(wanted), "{args:?}: {line}");
        assert!(
            !c.data_dir().exists(),
            "{args:?}: refused, yet wrote the destination"
        );
    }

    // A time without a UTC offset.
    let c = PgCluster::empty();
    let out = repo.try_restore_into(&c, "LATEST", &["--target-time", "2026-01-01 00:00:00"]);
    let status = code(&out);
    assert!(
        status == 3 || status == 2,
        "status {status}: {}",
        stderr(&out)
    );
    let err = stderr(&out);
    assert!(
        err.contains("UTC offset") && err.contains("2026-01-01 00:00:00"),
        "{err}"
    );
    assert!(!c.data_dir().exists());
}

// ---------------------------------------------------------------------------
// 7. 16 MiB WAL segments
// ---------------------------------------------------------------------------

#[test]
fn backup_round_trip_16mb_segments() {
    let repo = Store::File.fresh();
    let primary = repo.start_primary(PgOptions {
        wal_segsize_mb: 16,
        ..Default::default()
    });
    primary.pgbench_init(2);
    primary.archive_everything();
    let summary = std::thread::scope(|s| {
        let load = s.spawn(|| primary.pgbench(&["-c", "2", "-T", "5"]));
        let summary = repo.backup_push(&primary, &[]);
        load.join().unwrap();
        summary
    });
    assert_eq!(summary["complete"], true);
    primary.pgbench(&["-c", "2", "-t", "200"]);
    let expected = primary.psql(PGBENCH_DIGEST);
    primary.archive_everything();

    let info = repo.run(&["repo-info", "--json"]);
    let info: serde_json::Value = serde_json::from_slice(&assert_success(&info).stdout).unwrap();
    assert_eq!(info["wal_segment_size"], 16 << 20);
    let list = repo.backup_list(false);
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["name"], summary["name"]);
    let manifest = repo
        .path()
        .join("basebackups")
        .join(summary["name"].as_str().unwrap())
        .join("manifest.json");
    assert!(manifest.is_file());

    let restored = restore_and_promote(&repo, "LATEST", &[]);
    assert_eq!(
        restored.psql("select setting from pg_settings where name = 'wal_segment_size'"),
        (16 << 20).to_string()
    );
    assert_eq!(restored.psql(PGBENCH_DIGEST), expected);
}

/// A standby promoted while its backup runs has changed timeline under the backup:
/// PostgreSQL's pg_backup_stop refuses, and so does walarchive (exit 11), listing nothing.
#[test]
fn standby_promoted_during_backup_fails() {
    let repo = Store::File.fresh();
    let primary = repo.start_primary(PgOptions {
        extra_conf: "archive_timeout = 1\n".into(),
        ..Default::default()
    });
    primary.pgbench_init(10);
    primary.archive_everything();
    let standby = primary.basebackup_with(&["-R"]);
    standby.start_with_env(&repo.env);
    let lsn = primary.psql("select pg_current_wal_lsn()");
    primary.psql("checkpoint");
    standby.wait_until("the standby to replay", Duration::from_secs(60), || {
        standby
            .try_psql(&format!("select pg_last_wal_replay_lsn() >= '{lsn}'"))
            .is_ok_and(|r| r == "t")
    });

    let conn = format!("host=127.0.0.1 port={} user=postgres", standby.port());
    let (uid, gid) = postgres_ids();
    let child = Command::new(walarchive_bin())
        .uid(uid)
        .gid(gid)
        .current_dir("/tmp")
        .args(["--repo", &repo.url, "backup-push", "--pg-conn", &conn])
        .args(["--fast", "--part-size", "1", "--wal-timeout", "30"])
        .env("WALARCHIVE_COMPRESSION", "none")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn backup-push");
    let backups = repo.path().join("basebackups");
    wait_until(
        "the backup to upload parts",
        Duration::from_secs(60),
        || part_files(&backups).len() >= 2,
    );
    standby.promote();
    let out = child.wait_with_output().unwrap();
    assert_code(&out, 11);
    let err = stderr(&out);
    assert!(err.contains("promoted"), "{err}");
    assert_eq!(repo.backup_list(false), Vec::<serde_json::Value>::new());
    let detail = repo.backup_list(true);
    assert_eq!(detail.len(), 1);
    assert_eq!(detail[0]["complete"], false);
}

/// `backup-fetch --progress-file`: the document appears while the restore runs (its parts
/// are slowed down here), is always whole JSON, and ends with `done: true` and every byte of
/// the backup counted.
#[test]
fn backup_fetch_progress_file() {
    let repo = Store::File.fresh();
    let primary = repo.start_primary(PgOptions::default());
    primary.pgbench_init(1);
    let summary = repo.backup_push(&primary, &[]);
    let name = summary["name"].as_str().unwrap().to_string();
    let target = PgCluster::empty();
    let progress = target.dir().join("restore-progress.json");
    let slow = Repo {
        url: repo.url.clone(),
        env: vec![(
            "WALARCHIVE_FAULTS".into(),
            "op=get key=/part- fault=slow:1500".into(),
        )],
        dir: None,
    };
    let seen_running = std::thread::scope(|s| {
        let fetch = s.spawn(|| {
            slow.try_restore_into(
                &target,
                "LATEST",
                &["--progress-file", progress.to_str().unwrap()],
            )
        });
        let mut running = None;
        while !fetch.is_finished() {
            if let Ok(bytes) = fs::read(&progress) {
                let doc: serde_json::Value = serde_json::from_slice(&bytes)
                    .unwrap_or_else(|e| panic!("half a document ({e}): {bytes:?}"));
                if doc["done"] == false {
                    running = Some(doc);
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_success(&fetch.join().unwrap());
        running
    });
    let running = seen_running.expect("a progress document while the restore ran");
    assert_eq!(running["backup"], name.as_str(), "{running}");
    let doc: serde_json::Value = serde_json::from_slice(&fs::read(&progress).unwrap()).unwrap();
    assert_eq!(doc["done"], true, "{doc}");
    assert_eq!(doc["backup"], name.as_str(), "{doc}");
    let total = doc["bytes_total"].as_u64().unwrap();
    assert!(total > 1 << 20, "{doc}");
    assert_eq!(doc["bytes_done"].as_u64(), Some(total), "{doc}");
    assert!(running["bytes_done"].as_u64().unwrap() < total, "{running}");
}
