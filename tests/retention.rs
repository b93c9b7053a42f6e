//! Retention against a real repository built by real PostgreSQL on the local S3 server:
//! what `delete` keeps and removes (object lists before and after), across a timeline
//! switch, with permanent backups; `delete garbage` after a killed backup-push; and a
//! point-in-time restore to the oldest remaining point after each deletion.

use testkit as common;

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

fn bucket_and_prefix(repo: &Repo) -> (String, String) {
    let rest = repo.url.trim_start_matches("s3://");
    let (bucket, prefix) = rest.split_once('/').unwrap();
    (bucket.to_string(), format!("{prefix}/"))
}

/// Every object key of the repository, relative to its root.
fn objects(repo: &Repo) -> BTreeSet<String> {
    let (bucket, prefix) = bucket_and_prefix(repo);
    s3().list_objects(&bucket, &prefix)
        .into_iter()
        .map(|k| k.trim_start_matches(&prefix).to_string())
        .collect()
}

fn json(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&assert_success(out).stdout).unwrap()
}

fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

/// Restores `backup` to its end (`--target-immediate`), promotes, returns the row count.
fn recover_to_end_of(repo: &Repo, backup: &str) -> String {
    let c = repo.restore(
        backup,
        &["--target-immediate", "--target-action", "promote"],
    );
    c.append_conf("archive_mode = off\n");
    c.start_with_env(&repo.env);
    c.wait_promoted();
    c.psql("select count(*) from t")
}

fn rows(pg: &PgCluster, n: u32) {
    pg.psql(&format!(
        "insert into t select g from generate_series(1, {n}) g"
    ));
    pg.archive_everything();
}

#[test]
fn retain_keeps_permanent_and_newest_across_a_timeline_switch() {
    let repo = Store::S3.fresh();
    let primary = repo.start_primary(PgOptions::default());
    primary.psql("create table t(n int)");
    rows(&primary, 1000);
    let b1 = repo.backup_push(&primary, &["--permanent"])["name"]
        .as_str()
        .unwrap()
        .to_string();
    rows(&primary, 1000);
    let b2 = repo.backup_push(&primary, &[])["name"]
        .as_str()
        .unwrap()
        .to_string();
    rows(&primary, 1000);

    // Timeline 2: a clone of everything so far, promoted, archiving into the same repository.
    let clone = repo.restore("LATEST", &["--target-action", "promote"]);
    clone.start_with_env(&repo.env);
    clone.wait_promoted();
    primary.stop();
    rows(&clone, 1000);
    let b3 = repo.backup_push(&clone, &[])["name"]
        .as_str()
        .unwrap()
        .to_string();
    rows(&clone, 1000);
    let b4 = repo.backup_push(&clone, &[])["name"]
        .as_str()
        .unwrap()
        .to_string();
    rows(&clone, 1000);
    let list = repo.backup_list(false);
    assert_eq!(
        list.iter()
            .map(|b| b["timeline"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [1, 1, 2, 2]
    );
    let b3_start: String = list[2]["start_lsn"].as_str().unwrap().to_string();

    // A dry run plans and changes nothing.
    let before = objects(&repo);
    let plan = json(&repo.run(&["delete", "retain", "2", "--json"]));
    assert_eq!(plan["deleted"], false);
    assert_eq!(strings(&plan["delete_backups"]), [b2.as_str()]);
    assert_eq!(
        strings(&plan["keep_backups"]),
        [b1.clone(), b3.clone(), b4.clone()]
    );
    assert_eq!(objects(&repo), before, "a dry run deleted something");
    let text = repo.run(&["delete", "retain", "2"]);
    assert!(stdout(assert_success(&text)).contains("--confirm"));

    // Confirmed: exactly the planned objects go.
    let done = json(&repo.run(&["delete", "retain", "2", "--confirm", "--json"]));
    assert_eq!(done["deleted"], true);
    let planned: BTreeSet<String> = strings(&done["objects"]).into_iter().collect();
    let after = objects(&repo);
    let gone: BTreeSet<String> = before.difference(&after).cloned().collect();
    assert_eq!(gone, planned);
    assert!(after.is_subset(&before));
    assert!(gone
        .iter()
        .any(|k| k.starts_with(&format!("basebackups/{b2}/"))));
    assert!(!after
        .iter()
        .any(|k| k.starts_with(&format!("basebackups/{b2}/"))));
    for b in [&b1, &b3, &b4] {
        assert!(
            after.contains(&format!("basebackups/{b}/manifest.json")),
            "{b} lost its manifest"
        );
    }
    assert!(after.contains(&format!("basebackups/{b1}/permanent")));
    assert!(
        after.contains("wal/history/00000002.history"),
        "history files are kept"
    );
    let deleted_wal = strings(&done["delete_wal"]);
    assert!(
        !deleted_wal.is_empty(),
        "WAL between the permanent backup and {b3} should go"
    );
    // Every deleted segment ends before b3's start, and none is one b1 needs.
    let b3_start: u64 = {
        let (hi, lo) = b3_start.split_once('/').unwrap();
        (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
    };
    for name in &deleted_wal {
        let seg = u64::from_str_radix(&name[8..16], 16).unwrap() * 4096
            + u64::from_str_radix(&name[16..24], 16).unwrap();
        assert!((seg + 1) << 20 <= b3_start, "{name} was needed by {b3}");
    }
    assert_eq!(repo.backup_list(false).len(), 3);

    // The oldest remaining point (the permanent backup) and the newer ones still restore.
    assert_eq!(recover_to_end_of(&repo, &b1), "1000");
    assert_eq!(recover_to_end_of(&repo, &b3), "4000");
}

#[test]
fn garbage_removes_a_killed_backup_and_nothing_else() {
    let repo = Store::S3.fresh();
    let primary = repo.start_primary(PgOptions::default());
    primary.psql("create table t(n int)");
    rows(&primary, 1000);
    primary.pgbench_init(5);
    primary.archive_everything();
    let good = repo.backup_push(&primary, &[]);
    let good_name = good["name"].as_str().unwrap().to_string();
    let good_start = good["start_lsn"].as_str().unwrap().to_string();

    // A backup-push killed half-way leaves a started.json and some parts.
    let stderr_path = std::env::temp_dir().join(format!(
        "walarchive-retention-{}-backup-push.stderr",
        std::process::id()
    ));
    let conn = format!("host=127.0.0.1 port={} user=postgres", primary.port());
    let mut child = Command::new(walarchive_bin())
        .args([
            "--repo",
            &repo.url,
            "backup-push",
            "--pg-conn",
            &conn,
            "--fast",
            "--part-size",
            "1",
        ])
        .envs(repo.env.iter().map(|(k, v)| (k, v)))
        .env("WALARCHIVE_COMPRESSION", "none")
        // Slow part uploads, so that it is still running when it is killed (uncompressed at
        // 1 MiB parts it otherwise ends within a second or two here).
        .env("WALARCHIVE_FAULTS", "op=put key=/data/part- fault=slow:300")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap();
    let parts = |objs: &BTreeSet<String>| {
        objs.iter()
            // Not `contains(good_name)`: a second backup started in the same second is
            // named `<good_name>_1`.
            .filter(|k| {
                k.contains("/data/part-") && !k.starts_with(&format!("basebackups/{good_name}/"))
            })
            .count()
    };
    wait_until(
        "the second backup to upload parts",
        Duration::from_secs(60),
        || {
            // A backup-push that ended on its own never gets there: say why at once.
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "the second backup-push ended before it was killed ({status}): {}",
                    std::fs::read_to_string(&stderr_path).unwrap_or_default()
                );
            }
            parts(&objects(&repo)) >= 3
        },
    );
    child.kill().unwrap();
    child.wait().unwrap();
    let detail = repo.backup_list(true);
    assert_eq!(detail.len(), 2);
    let killed = detail.iter().find(|b| b["complete"] == false).unwrap()["name"]
        .as_str()
        .unwrap()
        .to_string();

    // Young incomplete backups are left alone by default (they may still be running).
    let plan = json(&repo.run(&["delete", "garbage", "--json"]));
    assert!(strings(&plan["delete_backups"]).is_empty());
    assert_eq!(plan["left_alone"].as_array().unwrap().len(), 1);

    let before = objects(&repo);
    let done = json(&repo.run(&[
        "delete",
        "garbage",
        "--older-than",
        "0s",
        "--confirm",
        "--json",
    ]));
    assert_eq!(strings(&done["delete_backups"]), [killed.as_str()]);
    let after = objects(&repo);
    let gone: BTreeSet<String> = before.difference(&after).cloned().collect();
    assert_eq!(
        gone,
        strings(&done["objects"])
            .into_iter()
            .collect::<BTreeSet<_>>()
    );
    let (hi, lo) = good_start.split_once('/').unwrap();
    let good_start =
        (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap();
    for key in &gone {
        let ok = key.starts_with(&format!("basebackups/{killed}/"))
            || key.rsplit('/').next().is_some_and(|name| {
                name.len() >= 24 && {
                    let seg = u64::from_str_radix(&name[8..16], 16).unwrap() * 4096
                        + u64::from_str_radix(&name[16..24], 16).unwrap();
                    (seg + 1) << 20 <= good_start
                }
            });
        assert!(ok, "{key} should not have been deleted");
    }
    assert!(!after
        .iter()
        .any(|k| k.starts_with(&format!("basebackups/{killed}/"))));
    assert!(before
        .iter()
        .filter(|k| k.starts_with(&format!("basebackups/{good_name}/")))
        .all(|k| after.contains(k)));
    assert_eq!(repo.backup_list(true).len(), 1);
    assert_eq!(recover_to_end_of(&repo, &good_name), "1000");
}

#[test]
fn before_everything_and_marks() {
    let repo = Store::File.fresh();
    let primary = repo.start_primary(PgOptions::default());
    primary.psql("create table t(n int)");
    rows(&primary, 10);
    let b1 = repo.backup_push(&primary, &[])["name"]
        .as_str()
        .unwrap()
        .to_string();
    rows(&primary, 10);
    let b2 = repo.backup_push(&primary, &[])["name"]
        .as_str()
        .unwrap()
        .to_string();
    rows(&primary, 10);
    let b3 = repo.backup_push(&primary, &[])["name"]
        .as_str()
        .unwrap()
        .to_string();
    rows(&primary, 10);

    assert_success(&repo.run(&["backup-mark", &b1]));
    assert_code(&repo.run(&["backup-mark", "base_20000101T000000Z"]), 1);
    let done = json(&repo.run(&["delete", "before", &b3, "--confirm", "--json"]));
    assert_eq!(
        strings(&done["delete_backups"]),
        [b2.as_str()],
        "the permanent b1 stays"
    );
    assert_eq!(repo.backup_list(false).len(), 2);
    assert_eq!(recover_to_end_of(&repo, &b1), "10");

    // everything refuses while a backup is permanent, then empties the repository.
    let out = repo.run(&["delete", "everything", "--confirm"]);
    assert_code(&out, 3);
    assert!(stderr(&out).contains("permanent"), "{}", stderr(&out));
    assert_success(&repo.run(&["backup-mark", &b1, "--unmark"]));
    assert_success(&repo.run(&["delete", "everything", "--confirm"]));
    assert!(repo.backup_list(true).is_empty());
    assert!(repo.wal_list().is_empty());
    assert_success(&repo.run(&["repo-info"]));
    // Nothing to delete is not an error.
    assert_success(&repo.run(&["delete", "retain", "1", "--confirm"]));
}
