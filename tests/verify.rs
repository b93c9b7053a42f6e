//! `verify backup` and `wal-verify` against real PostgreSQL archiving into real
//! repositories: clean on an intact archive, and each kind of damage named, with its exit
//! status — a deleted segment (14), a flipped byte in a segment (8), a timeline's missing
//! history file (14), a tampered backup part (8), a deleted segment a backup needs (12),
//! a backup that does not exist (1).

use testkit as common;

use std::fs;
use std::path::PathBuf;
use std::process::Output;

use common::*;

/// wal-verify's status for gaps and missing history files (see src/commands/verify.rs).
const WAL_INCOMPLETE: i32 = 14;
/// A stored object is corrupt.
const CORRUPT: i32 = 8;
/// WAL a backup needs is missing.
const WAL_MISSING: i32 = 12;

/// The test clusters' segment size (the harness's default, 1 MiB).
const SEGSIZE: u64 = 1 << 20;

fn parse_lsn(s: &str) -> u64 {
    let (hi, lo) = s.split_once('/').unwrap();
    (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
}

/// The name of segment number `segno` on timeline `tli` (1 MiB segments: 4096 per log).
fn segment_name(tli: u32, segno: u64) -> String {
    let per_log = 0x1_0000_0000 / SEGSIZE;
    format!("{tli:08X}{:08X}{:08X}", segno / per_log, segno % per_log)
}

/// The object file of WAL segment `name` in a file repository.
fn wal_object(repo: &Repo, name: &str) -> PathBuf {
    repo.path()
        .join("wal")
        .join(&name[0..8])
        .join(&name[8..16])
        .join(name)
}

/// The archived complete segments of timeline `tli`, in order.
fn segments(repo: &Repo, tli: u64) -> Vec<String> {
    let mut out: Vec<String> = repo
        .wal_list()
        .iter()
        .filter(|e| e["kind"] == "segment" && e["timeline"] == tli)
        .map(|e| e["name"].as_str().unwrap().to_string())
        .collect();
    out.sort();
    out
}

fn flip_byte_in_the_middle(path: &PathBuf) -> Vec<u8> {
    let original = fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let mut bad = original.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x01;
    fs::write(path, &bad).unwrap();
    original
}

/// Inverts four bytes in the middle of an object's body (after its header, whatever its
/// length).
fn damage_the_body(path: &PathBuf) {
    let mut bad = fs::read(path).unwrap();
    let header_len = u32::from_le_bytes(bad[12..16].try_into().unwrap()) as usize;
    let mid = header_len + (bad.len() - header_len) / 2;
    for b in &mut bad[mid - 2..mid + 2] {
        *b ^= 0xFF;
    }
    fs::write(path, &bad).unwrap();
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e})\n--- stdout ---\n{}\n--- stderr ---\n{}",
            stdout(out),
            stderr(out)
        )
    })
}

/// `wal-verify --json`: its status and report.
fn wal_verify(repo: &Repo) -> (i32, serde_json::Value) {
    let out = repo.run(&["wal-verify", "--json"]);
    (code(&out), json(&out))
}

/// Problems of a `--json` report, as (kind, message).
fn problems(report: &serde_json::Value) -> Vec<(String, String)> {
    report["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["kind"].as_str().unwrap().to_string(),
                p["message"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// A primary with a few MiB of WAL, a backup, and more WAL after it, all archived.
fn source(repo: &Repo) -> (PgCluster, serde_json::Value) {
    let primary = repo.start_primary(PgOptions::default());
    primary.psql(
        "create table t as select g as id, repeat('before', 30) as v from generate_series(1, 20000) g",
    );
    let backup = repo.backup_push(&primary, &[]);
    primary
        .psql("insert into t select g, repeat('after', 30) from generate_series(20001, 40000) g");
    primary.archive_everything();
    (primary, backup)
}

#[test]
fn wal_verify_finds_deleted_and_corrupt_segments() {
    let repo = Store::File.fresh();
    let (_primary, backup) = source(&repo);
    let name = backup["name"].as_str().unwrap();

    // Intact: clean, and the backup reaches the end of the archive.
    let (status, report) = wal_verify(&repo);
    assert_eq!(status, 0, "{report:#}");
    assert_eq!(report["ok"], true);
    let segs = segments(&repo, 1);
    assert!(segs.len() >= 6, "{segs:?}");
    let last = segs.last().unwrap();
    let pitr = report["pitr"].as_array().unwrap();
    assert_eq!(pitr.len(), 1, "{report:#}");
    assert_eq!(pitr[0]["backup"], name);
    assert_eq!(pitr[0]["from_lsn"], backup["stop_lsn"]);
    assert_eq!(pitr[0]["to_timeline"], 1);
    let last_segno = u64::from_str_radix(&last[16..], 16).unwrap();
    assert_eq!(
        parse_lsn(pitr[0]["to_lsn"].as_str().unwrap()),
        (last_segno + 1) * SEGSIZE,
        "{report:#}"
    );
    assert!(report["objects_checked"].as_u64().unwrap() >= segs.len() as u64);
    let text = repo.run(&["wal-verify"]);
    assert_success(&text);
    assert!(stdout(&text).contains("no problems"), "{}", stdout(&text));

    // A deleted segment after the backup: named, status 14, and recovery stops before it.
    let stop_segno = parse_lsn(backup["stop_lsn"].as_str().unwrap()) / SEGSIZE;
    let victim = segs
        .iter()
        .find(|s| u64::from_str_radix(&s[16..], 16).unwrap() > stop_segno + 1 && *s != last)
        .expect("a segment between the backup and the end")
        .clone();
    let path = wal_object(&repo, &victim);
    let saved = fs::read(&path).unwrap();
    fs::remove_file(&path).unwrap();
    let out = repo.run(&["wal-verify"]);
    assert_code(&out, WAL_INCOMPLETE);
    let line = error_line(&out);
    assert!(line.contains(&victim) && line.contains("missing"), "{line}");
    let (status, report) = wal_verify(&repo);
    assert_eq!(status, WAL_INCOMPLETE);
    assert_eq!(report["ok"], false);
    assert_eq!(
        problems(&report),
        vec![(
            "gap".to_string(),
            format!("timeline 1: WAL segment {victim} is missing")
        )]
    );
    let victim_segno = u64::from_str_radix(&victim[16..], 16).unwrap();
    assert_eq!(
        parse_lsn(report["pitr"][0]["to_lsn"].as_str().unwrap()),
        victim_segno * SEGSIZE
    );

    // Put back: clean again.
    fs::write(&path, &saved).unwrap();
    assert_eq!(wal_verify(&repo).0, 0);

    // Damaged bytes in a segment's object: corrupt, status 8, named. (WAL objects carry the
    // digest of their content: a flipped bit that leaves the decoded content as it was, an
    // unused bit of zstd's frame header say, is no damage to the WAL and is not reported.
    // A segment completed by a WAL switch compresses to a few hundred bytes, whose middle
    // byte can be such a bit: four bytes in the middle of the compressed body are damaged.)
    let victim = &segs[segs.len() / 2];
    damage_the_body(&wal_object(&repo, victim));
    let out = repo.run(&["wal-verify"]);
    assert_code(&out, CORRUPT);
    let line = error_line(&out);
    assert!(
        line.contains(victim.as_str()) && line.contains("corrupt"),
        "{line}"
    );
    let (status, report) = wal_verify(&repo);
    assert_eq!(status, CORRUPT);
    let found = problems(&report);
    assert_eq!(found[0].0, "corrupt", "{found:?}");
    assert!(
        found[0].1.starts_with(&format!("{victim} is corrupt")),
        "{found:?}"
    );
}

#[test]
fn wal_verify_follows_timelines_and_finds_a_missing_history_file() {
    let repo = Store::File.fresh();
    let (_primary, backup) = source(&repo);
    let name = backup["name"].as_str().unwrap();

    // A clone that recovers to the end of the archive, promotes to timeline 2 and keeps
    // archiving into the same repository (its configuration came with the backup).
    let clone = repo.restore("LATEST", &["--target-action", "promote"]);
    clone.start_with_env(&repo.env);
    clone.wait_promoted();
    clone.psql(
        "insert into t select g, repeat('timeline 2', 30) from generate_series(40001, 60000) g",
    );
    clone.archive_everything();
    let tl2 = segments(&repo, 2);
    assert!(!tl2.is_empty());

    let (status, report) = wal_verify(&repo);
    assert_eq!(status, 0, "{report:#}");
    let timelines = report["timelines"].as_array().unwrap();
    let t2 = timelines
        .iter()
        .find(|t| t["timeline"] == 2)
        .unwrap_or_else(|| panic!("{report:#}"));
    assert_eq!(t2["parent"], 1);
    assert_eq!(t2["has_history"], true);
    // Timeline 2 starts at its switch point.
    let switch_segno = parse_lsn(t2["switchpoint"].as_str().unwrap()) / SEGSIZE;
    assert_eq!(t2["first_segment"], segment_name(2, switch_segno));
    // Recovery from the backup can follow timeline 2 to its end.
    let pitr = &report["pitr"][0];
    assert_eq!(pitr["backup"], name);
    assert_eq!(pitr["to_timeline"], 2, "{report:#}");
    let last = tl2.last().unwrap();
    let last_segno = u64::from_str_radix(&last[16..], 16).unwrap();
    assert_eq!(
        parse_lsn(pitr["to_lsn"].as_str().unwrap()),
        (last_segno + 1) * SEGSIZE
    );

    // Without its history file, timeline 2 cannot be followed: status 14, named.
    fs::remove_file(repo.path().join("wal/history/00000002.history")).unwrap();
    let out = repo.run(&["wal-verify"]);
    assert_code(&out, WAL_INCOMPLETE);
    let line = error_line(&out);
    assert!(
        line.contains("timeline 2") && line.contains("00000002.history"),
        "{line}"
    );
    let (status, report) = wal_verify(&repo);
    assert_eq!(status, WAL_INCOMPLETE);
    assert_eq!(
        problems(&report)
            .iter()
            .map(|p| p.0.as_str())
            .collect::<Vec<_>>(),
        vec!["missing_history"]
    );
    assert_eq!(report["problems"][0]["timeline"], 2);
    assert_eq!(report["pitr"][0]["to_timeline"], 1, "{report:#}");
}

#[test]
fn verify_backup_checks_content_and_wal() {
    let repo = Store::File.fresh();
    let (_primary, backup) = source(&repo);
    let name = backup["name"].as_str().unwrap().to_string();

    // Intact, by name and as LATEST.
    let out = repo.run(&["verify", "backup", "LATEST", "--json"]);
    assert_success(&out);
    let report = json(&out);
    assert_eq!(report["backup"], name.as_str());
    assert_eq!(report["ok"], true);
    assert_eq!(report["problems"], serde_json::json!([]));
    assert!(
        report["files_checked"].as_u64().unwrap() > 100,
        "{report:#}"
    );
    assert!(
        report["bytes_checked"].as_u64().unwrap() > 1 << 20,
        "{report:#}"
    );
    let needed = report["segments_needed"].as_u64().unwrap();
    assert!(needed >= 1);
    assert_eq!(report["segments_checked"].as_u64().unwrap(), needed);
    let out = repo.run(&["verify", "backup", &name]);
    assert_success(&out);
    assert!(stdout(&out).contains("verified"), "{}", stdout(&out));

    // No such backup: status 1.
    let out = repo.run(&["verify", "backup", "base_19700101T000000Z"]);
    assert_code(&out, 1);
    assert!(error_line(&out).contains("base_19700101T000000Z"));

    // A tampered part: status 8, the part named.
    let part = repo
        .path()
        .join("basebackups")
        .join(&name)
        .join("data/part-000001");
    let original = flip_byte_in_the_middle(&part);
    let out = repo.run(&["verify", "backup", "LATEST"]);
    assert_code(&out, CORRUPT);
    let line = error_line(&out);
    assert!(
        line.contains("part-000001") && line.contains("corrupt"),
        "{line}"
    );
    let out = repo.run(&["verify", "backup", &name, "--json"]);
    assert_code(&out, CORRUPT);
    let report = json(&out);
    assert_eq!(report["ok"], false);
    assert_eq!(report["files_checked"], serde_json::Value::Null);
    assert_eq!(report["problems"][0]["kind"], "backup_content");
    fs::write(&part, &original).unwrap();
    assert_success(&repo.run(&["verify", "backup", &name]));

    // A deleted segment the backup needs: status 12, the segment named.
    let start_segno = parse_lsn(backup["start_lsn"].as_str().unwrap()) / SEGSIZE;
    let segment = segment_name(1, start_segno);
    fs::remove_file(wal_object(&repo, &segment)).unwrap();
    let out = repo.run(&["verify", "backup", &name]);
    assert_code(&out, WAL_MISSING);
    let line = error_line(&out);
    assert!(line.contains(&segment) && line.contains(&name), "{line}");
    let out = repo.run(&["verify", "backup", "LATEST", "--json"]);
    assert_code(&out, WAL_MISSING);
    let report = json(&out);
    assert_eq!(report["problems"][0]["kind"], "backup_wal");
    assert_eq!(report["problems"][0]["segment"], segment.as_str());
    assert_eq!(
        report["segments_checked"].as_u64().unwrap(),
        report["segments_needed"].as_u64().unwrap() - 1
    );
    // wal-verify says the same about the backup.
    let (status, report) = wal_verify(&repo);
    assert_eq!(status, WAL_INCOMPLETE);
    assert!(
        problems(&report)
            .iter()
            .any(|(kind, message)| kind == "backup_wal"
                && message.contains(&name)
                && message.contains(&segment)),
        "{report:#}"
    );
    assert_eq!(report["pitr"][0]["to_lsn"], serde_json::Value::Null);
}

#[test]
fn verify_on_s3() {
    let repo = Store::S3.fresh();
    let (_primary, backup) = source(&repo);
    let name = backup["name"].as_str().unwrap();
    let out = repo.run(&["verify", "backup", "LATEST", "--json"]);
    assert_success(&out);
    assert_eq!(json(&out)["backup"], name);
    let (status, report) = wal_verify(&repo);
    assert_eq!(status, 0, "{report:#}");
    assert_eq!(report["pitr"][0]["backup"], name);

    // A segment deleted from the bucket.
    let segs = segments(&repo, 1);
    let victim = &segs[segs.len() - 2];
    let bucket = repo
        .url
        .strip_prefix("s3://")
        .and_then(|r| r.split('/').next())
        .unwrap();
    s3().delete_object(
        bucket,
        &format!("db/wal/00000001/{}/{victim}", &victim[8..16]),
    );
    let out = repo.run(&["wal-verify"]);
    assert_code(&out, WAL_INCOMPLETE);
    assert!(error_line(&out).contains(victim.as_str()));
}
