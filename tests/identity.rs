//! Repository identity (issue 15, items 1, 2, 3 and 5), with real PostgreSQL clusters
//! archiving and restoring through the real binary:
//!
//! - every pushed file belongs to the cluster of the data directory it comes from
//!   (`global/pg_control`), history and backup history files included, and those must
//!   parse (item 2);
//! - a repository gets its descriptor from its first push, whatever the file, and is never
//!   claimed silently once its descriptor is gone (item 3);
//! - every object is bound to its name and the repository's cluster, and every read refuses
//!   an object under the wrong name or of another cluster (item 1);
//! - retention only ever deletes the repository's own objects, and repositories do not nest
//!   (item 5).

use testkit as common;

use std::fs;
use std::path::Path;
use std::time::Duration;

use common::*;

const BAD_INPUT: i32 = 3;
const FOREIGN_CLUSTER: i32 = 5;
const CONFIG: i32 = 6;
const WAL_INCOMPLETE: i32 = 14;

/// `wal-push` as PostgreSQL's archiver runs it: as postgres, in the data directory, with
/// `%p` relative to it.
fn push_as_archiver(repo: &Repo, pg: &PgCluster, wal_file: &str) -> std::process::Output {
    let p = format!("pg_wal/{wal_file}");
    repo.run_as_postgres(&["wal-push", &p], pg.data_dir())
}

/// Stores `content` at `relative` in a file repository as walarchive's object format
/// version 3 wrote it before objects were bound to their name (no codec): what an older
/// walarchive left in a repository.
fn write_unbound_object(repo: &Repo, relative: &str, content: &[u8]) {
    let mut o = Vec::new();
    o.extend_from_slice(b"WALARCH\0");
    o.extend_from_slice(&3u16.to_le_bytes());
    o.push(0); // codec: none
    o.push(0); // flags
    o.extend_from_slice(&64u32.to_le_bytes());
    o.extend_from_slice(&(content.len() as u64).to_le_bytes());
    o.extend_from_slice(&(content.len() as u64).to_le_bytes());
    o.extend_from_slice(blake3::hash(content).as_bytes());
    o.extend_from_slice(content);
    let path = repo.path().join(relative);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(&path, o).unwrap();
    chown_postgres(&repo.path());
}

/// The keys under `prefix` of a file repository, sorted.
fn keys(repo: &Repo, prefix: &str) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for e in entries {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                out.push(p.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(&repo.path(), &repo.path().join(prefix), &mut out);
    out.sort();
    out
}

fn archiver_failed(pg: &PgCluster) -> String {
    pg.try_psql("select coalesce(last_failed_wal, '') from pg_stat_archiver")
        .unwrap_or_default()
}

/// Rows of `t` on `pg`.
fn rows(pg: &PgCluster) -> String {
    pg.psql("select count(*) from t")
}

/// Item 2: another cluster's history file and backup history file, pushed from that
/// cluster's data directory, are refused (5) and nothing is stored; the real cluster's later
/// backup then restores with PostgreSQL's defaults (before, the foreign `00000002.history`
/// was archived and that restore failed: "requested timeline 2 is not a child of this
/// server's history"). Garbage history and backup history files are refused (3), a history
/// file with no data directory to vouch for it too (6), and wal-verify reports a foreign
/// history file that an older walarchive let in.
#[test]
fn another_clusters_history_and_backup_files_are_refused() {
    let repo = Store::File.fresh();
    let primary = repo.start_primary(PgOptions::default());
    primary.psql("create table t(id int, v text)");
    primary.psql("insert into t select g, md5(g::text) from generate_series(1, 1000) g");
    primary.archive_everything();

    // Another cluster, archiving into the same repository by mistake: its segments are
    // refused already; a base backup of it leaves a backup history file in its pg_wal.
    let foreign = PgCluster::init(PgOptions {
        extra_conf: repo.archive_conf(),
        ..Default::default()
    });
    foreign.start_with_env(&repo.env);
    let standby = foreign.basebackup_with(&["-R"]);
    let backup_file = fs::read_dir(foreign.wal_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .find(|n| n.ends_with(".backup"))
        .expect("pg_basebackup left a backup history file");
    let out = push_as_archiver(&repo, &foreign, &backup_file);
    assert_code(&out, FOREIGN_CLUSTER);
    let line = error_line(&out);
    assert!(
        line.contains(&backup_file) && line.contains("system identifier"),
        "{line}"
    );

    // Its standby (archive_command into the repository, from the copied configuration)
    // promoted: PostgreSQL's archiver is refused its 00000002.history.
    standby.start_with_env(&repo.env);
    standby.promote();
    standby.wait_promoted();
    standby.wait_until(
        "the archiver to fail on 00000002.history",
        Duration::from_secs(60),
        || archiver_failed(&standby) == "00000002.history",
    );
    let out = push_as_archiver(&repo, &standby, "00000002.history");
    assert_code(&out, FOREIGN_CLUSTER);
    let line = error_line(&out);
    assert!(
        line.contains("00000002.history does not belong to this repository")
            && line.contains("system identifier"),
        "{line}"
    );
    standby.stop_immediate();
    foreign.stop_immediate();
    assert_eq!(keys(&repo, "wal/history"), Vec::<String>::new());
    assert!(
        !keys(&repo, "wal").iter().any(|k| k.ends_with(".backup")),
        "{:?}",
        keys(&repo, "wal")
    );

    // Garbage of either kind from the real data directory: bad input, nothing stored.
    let scratch = TestDir::new_postgres("walarchive-identity-");
    let pgdata = primary.data_dir().to_str().unwrap();
    for (name, content, says) in [
        (
            "00000005.history",
            "this is not a timeline history\n",
            "no timeline ID",
        ),
        (
            "000000010000000000000003.00000028.backup",
            "START WAL LOCATION: 0/9000028 (file 000000010000000000000009)\n",
            "not a backup history file",
        ),
    ] {
        let p = scratch.join(name);
        fs::write(&p, content).unwrap();
        let out = repo.run(&["wal-push", "--pgdata", pgdata, p.to_str().unwrap()]);
        assert_code(&out, BAD_INPUT);
        let line = error_line(&out);
        assert!(line.contains(name) && line.contains(says), "{line}");
        // And without a data directory to say whose it is: a configuration error.
        let out = repo.run(&["wal-push", p.to_str().unwrap()]);
        assert_code(&out, CONFIG);
        assert!(error_line(&out).contains("--pgdata"));
    }
    assert_eq!(keys(&repo, "wal/history"), Vec::<String>::new());

    // The real cluster goes on (further than the foreign timeline's switch point), is
    // backed up, and its backup restores with PostgreSQL's defaults.
    for i in 0..6 {
        primary.psql(&format!(
            "insert into t select g, md5(g::text) from generate_series(1, {}) g",
            1000 * (i + 1)
        ));
        primary.switch_wal();
    }
    let backup = repo.backup_push(&primary, &[]);
    primary.psql("insert into t select g, md5(g::text) from generate_series(1, 500) g");
    let expected = rows(&primary);
    primary.archive_everything();
    let restored = repo.restore("LATEST", &[]);
    restored.append_conf("archive_mode = off\n");
    restored.start_with_env(&repo.env);
    restored.wait_promoted();
    assert_eq!(rows(&restored), expected);
    restored.stop();
    assert_success(&repo.run(&["wal-verify"]));

    // A foreign history file that an older walarchive stored (no binding to check): it
    // forks off before the backup started, so a restore of that backup toward the latest
    // timeline fails. wal-verify says so, naming the file (14).
    let foreign_history = fs::read(standby.wal_dir().join("00000002.history")).unwrap();
    write_unbound_object(&repo, "wal/history/00000002.history", &foreign_history);
    let out = repo.run(&["wal-verify"]);
    assert_code(&out, WAL_INCOMPLETE);
    let line = error_line(&out);
    assert!(
        line.contains(backup["name"].as_str().unwrap())
            && line.contains("00000002.history says it forked off timeline 1"),
        "{line}"
    );
}

/// Item 3: a server restored from a backup and promoted into a new repository pushes its
/// `00000002.history` first. That push creates the repository's descriptor (from the data
/// directory's pg_control), so a file missing from the new repository answers 1, and a
/// standby restoring from it keeps waiting for WAL instead of stopping (before, every
/// missing file answered 206, "no repository", until a segment was pushed).
#[test]
fn a_repository_whose_first_file_is_a_history_file_serves_a_standby() {
    let old = Store::File.fresh();
    let primary = old.start_primary(PgOptions::default());
    primary.psql("create table t(id int, v text)");
    primary.psql("insert into t select g, md5(g::text) from generate_series(1, 1000) g");
    old.backup_push(&primary, &[]);
    primary.archive_everything();

    // The restored server archives into a new repository; segments are held back (a store
    // outage, say) so that its history file is the new repository's first object.
    let new = Store::File.fresh();
    let clone = old.restore("LATEST", &[]);
    let push = format!(
        "{} --repo {} wal-push %p",
        walarchive_bin().display(),
        new.url
    );
    clone.append_conf(&format!(
        "archive_mode = on\narchive_command = 'case %f in *.history) {push};; *) exit 1;; esac'\n"
    ));
    clone.start_with_env(&new.env);
    clone.wait_promoted();
    clone.wait_until(
        "00000002.history to be archived",
        Duration::from_secs(60),
        || keys(&new, "wal/history") == ["wal/history/00000002.history"],
    );
    assert_eq!(keys(&new, "wal"), ["wal/history/00000002.history"]);
    let info = new.run(&["repo-info", "--json"]);
    let d: serde_json::Value = serde_json::from_slice(&assert_success(&info).stdout).unwrap();
    assert_eq!(
        d["system_identifier"].as_str().unwrap(),
        primary.psql("select system_identifier from pg_control_system()")
    );
    assert_eq!(d["wal_segment_size"], 1 << 20);
    let scratch = TestDir::new("walarchive-identity-");
    for missing in ["00000003.history", "000000020000000000000009"] {
        let dest = scratch.join("x");
        let out = new.run(&["wal-fetch", missing, dest.to_str().unwrap()]);
        assert_code(&out, 1);
        assert_eq!(
            stderr(&out).trim(),
            "",
            "{missing}: not found is not an error"
        );
    }

    // A standby of the clone fed only by the new repository waits for WAL...
    let standby = clone.basebackup();
    // postgresql.auto.conf came with the copy, naming the old repository (backup-fetch
    // wrote it): the new one replaces it there.
    let auto = standby.data_dir().join("postgresql.auto.conf");
    let mut text = fs::read_to_string(&auto).unwrap();
    text.push_str(&new.restore_conf());
    fs::write(&auto, text).unwrap();
    standby.append_conf("archive_mode = off\n");
    standby.touch("standby.signal");
    standby.start_with_env(&new.env);
    clone.psql("insert into t select g, md5(g::text) from generate_series(1, 2000) g");
    std::thread::sleep(Duration::from_secs(3));
    assert!(standby.is_running(), "{}", standby.log_tail(20));
    // ...and replays it once the clone archives again.
    clone.append_conf(&new.archive_conf());
    clone.psql("select pg_reload_conf()");
    clone.archive_everything();
    let expected = rows(&clone);
    standby.wait_until("the standby to replay", Duration::from_secs(120), || {
        standby.try_psql("select count(*) from t").ok().as_ref() == Some(&expected)
    });
    assert!(!standby.log().contains("FATAL"), "{}", standby.log_tail(30));
}

/// Item 3: a repository whose descriptor was deleted is not claimed by the next cluster that
/// pushes (another one, or its own): every push is refused with 6, naming repo-repair;
/// `repo-repair` rebuilds the descriptor from the objects (a dry run first, then
/// `--confirm`), after which the cluster archives again and another cluster is foreign (5).
#[test]
fn a_repository_without_its_descriptor_is_refused_and_repaired() {
    let repo = Store::File.fresh();
    let primary = repo.start_primary(PgOptions::default());
    primary.psql("create table t(id int, v text)");
    primary.archive_everything();
    let sysid = primary.psql("select system_identifier from pg_control_system()");
    fs::remove_file(repo.path().join("walarchive.repo")).unwrap();

    // PostgreSQL's next segment is refused, and so is another cluster's.
    let seg = primary.switch_wal();
    primary.wait_until("the archiver to fail", Duration::from_secs(60), || {
        archiver_failed(&primary) == seg
    });
    let out = push_as_archiver(&repo, &primary, &seg);
    assert_code(&out, CONFIG);
    let line = error_line(&out);
    assert!(
        line.contains("no descriptor") && line.contains("repo-repair"),
        "{line}"
    );
    let other = PgCluster::init(PgOptions::default());
    other.start();
    let other_seg = other.switch_wal();
    let out = push_as_archiver(&repo, &other, &other_seg);
    assert_code(&out, CONFIG);
    let line = error_line(&out);
    assert!(
        line.contains("no descriptor") && line.contains("repo-repair"),
        "{line}"
    );
    assert!(!repo.path().join("walarchive.repo").exists());

    // A dry run says what it would write, and writes nothing.
    let out = assert_success(&repo.run(&["repo-repair"])).clone();
    let text = stdout(&out);
    assert!(
        text.contains(&format!(
            "would write the descriptor for system identifier {sysid}"
        )),
        "{text}"
    );
    assert!(text.contains("dry run"), "{text}");
    assert!(!repo.path().join("walarchive.repo").exists());
    let out = assert_success(&repo.run(&["repo-repair", "--confirm", "--json"])).clone();
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["written"], true, "{r:#}");
    assert_eq!(r["rebuilt"]["system_identifier"].as_str().unwrap(), sysid);
    chown_postgres(&repo.path());

    // The cluster archives again; the other one is foreign.
    primary.wait_archived(&seg, Duration::from_secs(120));
    let out = push_as_archiver(&repo, &other, &other_seg);
    assert_code(&out, FOREIGN_CLUSTER);
    let line = error_line(&out);
    assert!(
        line.contains(&format!("{other_seg} does not belong to this repository"))
            && line.contains(&format!("but the repository's is {sysid}")),
        "{line}"
    );
    let out = assert_success(&repo.run(&["repo-repair"])).clone();
    assert!(
        stdout(&out).contains("nothing to repair"),
        "{}",
        stdout(&out)
    );
}

const CORRUPT: i32 = 8;

/// The stored object of WAL file `name` in a file repository.
fn wal_object(repo: &Repo, name: &str) -> std::path::PathBuf {
    repo.path()
        .join(format!("wal/{}/{}/{name}", &name[..8], &name[8..16]))
}

/// Restores backup `name` of `repo` into a new cluster and starts its recovery (to the end
/// of the archive), without waiting for it.
fn start_recovery(repo: &Repo, name: &str) -> PgCluster {
    let c = repo.restore(name, &[]);
    c.append_conf("archive_mode = off\n");
    c.start_no_wait(&repo.env);
    c
}

/// Item 1: an intact object under the wrong name (segment N's replaced by N-1's) or of
/// another cluster (its own N) is never handed to PostgreSQL. wal-fetch exits 208 and writes
/// nothing; a real point-in-time recovery through restore_command stops instead of ending
/// early and promoting with data missing; the prefetch worker does not place it; a re-push
/// finds the stored object corrupt (8) rather than "different content"; wal-verify reports
/// it (8); a swapped backup part fails verify and backup-fetch (8), naming both parts. With
/// the object put back, the same recovery reaches the end.
#[test]
fn an_object_under_another_name_or_of_another_cluster_is_never_served() {
    let repo = Store::File.fresh();
    let primary = repo.start_primary(PgOptions {
        extra_conf: "wal_keep_size = 64MB\n".into(),
        ..Default::default()
    });
    primary.psql("create table t(id int, v text)");
    let backup = repo.backup_push(&primary, &["--part-size", "1"]);
    let backup = backup["name"].as_str().unwrap().to_string();
    let mut after = Vec::new();
    for i in 0..4 {
        primary.psql(&format!(
            "insert into t select g, md5(g::text) from generate_series(1, {}) g",
            2000 * (i + 1)
        ));
        after.push(primary.switch_wal());
    }
    let expected = rows(&primary);
    primary.archive_everything();
    let (prev, n) = (after[1].clone(), after[2].clone());
    let object = wal_object(&repo, &n);
    let original = fs::read(&object).unwrap();

    // Another cluster's segment N, archived into its own repository.
    let other_repo = Store::File.fresh();
    let other = other_repo.start_primary(PgOptions::default());
    while other.switch_wal() < n {}
    other.archive_everything();
    let foreign = fs::read(wal_object(&other_repo, &n)).unwrap();
    other.stop_immediate();

    let scratch = TestDir::new("walarchive-identity-");
    let dest = scratch.join("RECOVERYXLOG");
    for (what, bytes, says) in [
        (
            "N-1's object",
            fs::read(wal_object(&repo, &prev)).unwrap(),
            format!("it is the object of wal/00000001/{}/{prev}", &prev[8..16]),
        ),
        (
            "another cluster's N",
            foreign.clone(),
            "belongs to the repository of system identifier".to_string(),
        ),
    ] {
        fs::write(&object, &bytes).unwrap();
        let out = repo.run(&["wal-fetch", &n, dest.to_str().unwrap()]);
        assert_code(&out, 200 + CORRUPT);
        let line = error_line(&out);
        assert!(line.contains(&n) && line.contains(&says), "{what}: {line}");
        assert!(!dest.exists(), "{what}: something was written");
        assert_eq!(fs::read_dir(scratch.path()).unwrap().count(), 0);

        let out = repo.run(&["wal-verify", "--json"]);
        assert_code(&out, CORRUPT);
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report["problems"][0]["kind"], "corrupt", "{report:#}");
        assert_eq!(report["problems"][0]["name"], n.as_str(), "{report:#}");

        // PostgreSQL's own archiver pushing N again: the stored object is refused.
        let out = push_as_archiver(&repo, &primary, &n);
        assert_code(&out, CORRUPT);
        assert!(error_line(&out).contains(&says), "{what}");
    }

    // A recovery through restore_command (prefetching, by default) stops at N.
    let recovering = start_recovery(&repo, &backup);
    recovering.wait_until("the recovery to stop", Duration::from_secs(120), || {
        !recovering.is_running() && recovering.log().contains("exit code 208")
    });
    let log = recovering.log();
    assert!(
        !log.contains("ready to accept connections") && !log.contains("selected new timeline"),
        "recovery ended and promoted:\n{}",
        recovering.log_tail(30)
    );
    let prefetched = recovering.wal_dir().join("walarchive-prefetch");
    if let Ok(entries) = fs::read_dir(&prefetched) {
        for e in entries {
            let name = e.unwrap().file_name().into_string().unwrap();
            assert!(!name.starts_with(&n), "the prefetch worker placed {name}");
        }
    }

    // Put back, the same recovery reaches the end of the archive, all rows there.
    fs::write(&object, &original).unwrap();
    assert_success(&repo.run(&["wal-verify"]));
    let recovered = repo.restore(&backup, &[]);
    recovered.append_conf("archive_mode = off\n");
    recovered.start_with_env(&repo.env);
    recovered.wait_promoted();
    assert_eq!(rows(&recovered), expected);
    recovered.stop();

    // Two parts of the backup swapped: verify and backup-fetch refuse, naming both.
    let parts = repo.path().join(format!("basebackups/{backup}/data"));
    let (p2, p3) = (parts.join("part-000002"), parts.join("part-000003"));
    let (b2, b3) = (fs::read(&p2).unwrap(), fs::read(&p3).unwrap());
    fs::write(&p2, &b3).unwrap();
    fs::write(&p3, &b2).unwrap();
    let out = repo.run(&["verify", "backup", &backup]);
    assert_code(&out, CORRUPT);
    let line = error_line(&out);
    assert!(
        line.contains("part-000002")
            && line.contains("it is the object of")
            && line.contains("part-000003"),
        "{line}"
    );
    let target = PgCluster::empty();
    let out = repo.try_restore_into(&target, &backup, &[]);
    assert_code(&out, CORRUPT);
    let line = error_line(&out);
    assert!(
        line.contains("part-000003, stored under another name"),
        "{line}"
    );
    assert!(!target.data_dir().join("PG_VERSION").exists());
}

/// Item 5: another repository stored inside this one at `R/wal` (copied there, or created
/// by an older walarchive: its keys end like WAL file names) is never touched by `delete
/// retain`, `delete garbage` or `delete everything` on R, which report it; it stays a
/// valid repository. A repository is not created inside another one, nor around one (6).
#[test]
fn a_nested_repository_survives_retention_and_repositories_do_not_nest() {
    let repo = Store::File.fresh();
    let primary = repo.start_primary(PgOptions::default());
    primary.psql("create table t(id int, v text)");
    repo.backup_push(&primary, &[]);
    for _ in 0..4 {
        primary.psql("insert into t select g, md5(g::text) from generate_series(1, 2000) g");
        primary.switch_wal();
    }
    repo.backup_push(&primary, &[]);
    primary.archive_everything();

    // Another cluster's repository, beside R; creating one inside R, or around it, fails.
    let other_repo = Store::File.fresh();
    let other = other_repo.start_primary(PgOptions::default());
    other.psql("create table t(id int, v text)");
    other.archive_everything();
    let inside = Repo {
        url: format!("{}/wal", repo.url),
        env: repo.env.clone(),
        dir: None,
    };
    let seg = other.switch_wal();
    let out = push_as_archiver(&inside, &other, &seg);
    assert_code(&out, CONFIG);
    assert!(
        error_line(&out).contains("inside another repository"),
        "{}",
        stderr(&out)
    );
    let around = Repo {
        url: format!("file://{}", repo.path().parent().unwrap().display()),
        env: repo.env.clone(),
        dir: None,
    };
    let out = push_as_archiver(&around, &other, &seg);
    assert_code(&out, CONFIG);
    assert!(
        error_line(&out).contains("another repository is stored under it, at repo"),
        "{}",
        stderr(&out)
    );
    other.archive_everything();
    other.stop();

    // ...but one copied there is what retention must leave alone.
    let nested_dir = repo.path().join("wal");
    let st = std::process::Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", other_repo.path().display()))
        .arg(&nested_dir)
        .status()
        .unwrap();
    assert!(st.success());
    let nested = file_tree(&other_repo.path());
    let nested_in_r = || {
        let mut t: Vec<(String, Vec<u8>)> = file_tree(&nested_dir)
            .into_iter()
            .filter(|(k, _)| {
                k == "walarchive.repo" || k.starts_with("wal/") || k.starts_with("basebackups/")
            })
            .collect();
        t.sort();
        t
    };
    assert_eq!(nested_in_r(), nested);
    let own_wal_before = keys(&repo, "wal/00000001").len();

    let out = repo.run(&["delete", "retain", "1", "--confirm", "--json"]);
    let plan: serde_json::Value = serde_json::from_slice(&assert_success(&out).stdout).unwrap();
    let not_ours: Vec<&str> = plan["not_ours"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap())
        .collect();
    assert!(not_ours.contains(&"wal/walarchive.repo"), "{plan:#}");
    assert_eq!(not_ours.len(), nested.len(), "{plan:#}");
    assert!(
        plan["objects"]
            .as_array()
            .unwrap()
            .iter()
            .all(|k| !k.as_str().unwrap().starts_with("wal/wal/")),
        "{plan:#}"
    );
    assert_eq!(
        plan["delete_backups"].as_array().unwrap().len(),
        1,
        "{plan:#}"
    );
    assert!(
        keys(&repo, "wal/00000001").len() < own_wal_before,
        "R's own old WAL went"
    );
    assert_eq!(
        nested_in_r(),
        nested,
        "delete retain touched the nested repository"
    );

    let out = assert_success(&repo.run(&["delete", "garbage", "--older-than", "0s", "--confirm"]))
        .clone();
    assert!(
        stdout(&out).contains("that are not this repository's"),
        "{}",
        stdout(&out)
    );
    assert_eq!(
        nested_in_r(),
        nested,
        "delete garbage touched the nested repository"
    );

    assert_success(&repo.run(&["delete", "everything", "--force", "--confirm"]));
    assert_eq!(
        nested_in_r(),
        nested,
        "delete everything touched the nested repository"
    );
    assert_eq!(keys(&repo, "wal/00000001"), Vec::<String>::new());
    assert_eq!(keys(&repo, "basebackups"), Vec::<String>::new());
    // The nested repository is intact and valid, there too (objects are bound to their
    // names relative to the repository's root, so a copied repository stays valid).
    assert_success(&other_repo.run(&["wal-verify"]));
    let out = assert_success(&inside.run(&["wal-verify", "--json"])).clone();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        report["objects_checked"].as_u64().unwrap() >= 2,
        "{report:#}"
    );
}

/// wal-fetch in the data directory of another cluster than the repository's: refused as
/// corrupt (208), and the message says which identifier is whose (the object's repository,
/// the data directory's pg_control), never calling the data directory's the repository's.
#[test]
fn wal_fetch_for_another_clusters_data_directory_says_which_is_which() {
    let repo = Store::File.fresh();
    let primary = repo.start_primary(PgOptions::default());
    let seg = primary.switch_wal();
    primary.archive_everything();
    let ours = primary.psql("select system_identifier from pg_control_system()");
    primary.stop_immediate();

    let other = PgCluster::init(PgOptions::default());
    let scratch = TestDir::new("walarchive-identity-");
    let dest = scratch.join("RECOVERYXLOG");
    let out = repo.run(&[
        "wal-fetch",
        &seg,
        dest.to_str().unwrap(),
        "--pgdata",
        other.data_dir().to_str().unwrap(),
    ]);
    assert_code(&out, 200 + CORRUPT);
    let line = error_line(&out);
    assert!(
        line.contains(&format!(
            "belongs to the repository of system identifier {ours}"
        )) && line.contains(&format!(
            "the data directory {} is of system identifier",
            other.data_dir().display()
        )) && !line.contains("this repository's is"),
        "{line}"
    );
    assert!(!dest.exists());

    // In the repository's own cluster's data directory, the same object is served.
    let out = repo.run(&[
        "wal-fetch",
        &seg,
        dest.to_str().unwrap(),
        "--pgdata",
        primary.data_dir().to_str().unwrap(),
    ]);
    assert_success(&out);
}
