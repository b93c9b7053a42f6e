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

mod common;

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
    assert_code(
        &push_as_archiver(&repo, &standby, "00000002.history"),
        FOREIGN_CLUSTER,
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
    for (name, content) in [
        ("00000005.history", "this is not a timeline history\n"),
        (
            "000000010000000000000003.00000028.backup",
            "START WAL LOCATION: 0/9000028 (file 000000010000000000000009)\n",
        ),
    ] {
        let p = scratch.join(name);
        fs::write(&p, content).unwrap();
        let out = repo.run(&["wal-push", "--pgdata", pgdata, p.to_str().unwrap()]);
        assert_code(&out, BAD_INPUT);
        assert!(error_line(&out).contains(name));
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
