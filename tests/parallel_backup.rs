//! backup-push and backup-fetch moving several parts at once (`--parallel N`): round trips
//! with small parts on S3 and on a local directory, parts numbered in stream order without
//! a gap whatever order their uploads finished in, and a backup with a part missing in the
//! middle, which backup-fetch must refuse without leaving a startable data directory.

use testkit as common;

use std::fs;
use std::path::Path;

use common::*;

const MIB: u64 = 1 << 20;

/// The bucket and key prefix of an `s3://BUCKET/PREFIX` repository.
fn s3_location(repo: &Repo) -> (String, String) {
    let rest = repo.url.strip_prefix("s3://").expect("an S3 repository");
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    (bucket.to_string(), prefix.trim_matches('/').to_string())
}

/// The objects of backup `name`'s data stream, as (file name, first 64 bytes: the header).
fn data_stream_objects(repo: &Repo, store: Store, name: &str) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    match store {
        Store::File => {
            let dir = repo.path().join("basebackups").join(name).join("data");
            for e in fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
                let e = e.unwrap();
                let bytes = fs::read(e.path()).unwrap();
                out.push((
                    e.file_name().to_string_lossy().into_owned(),
                    bytes[..bytes.len().min(64)].to_vec(),
                ));
            }
        }
        Store::S3 => {
            let (bucket, prefix) = s3_location(repo);
            let dir = format!("{prefix}/basebackups/{name}/data/");
            for key in s3().list_objects(&bucket, &dir) {
                let bytes = s3().get_object(&bucket, &key).expect("listed object");
                let file = key.rsplit('/').next().unwrap().to_string();
                out.push((file, bytes[..bytes.len().min(64)].to_vec()));
            }
        }
        Store::Azure | Store::Swift | Store::SwiftS3 | Store::Gcs => unreachable!("not used here"),
    }
    out.sort();
    out
}

/// Checks that the data stream's objects are exactly `part-000001` .. `part-N`, each a
/// walarchive object of `part_size` uncompressed bytes except the last (which is shorter
/// and not empty), and that together they hold a whole number of tar blocks. Returns N.
#[track_caller]
fn assert_contiguous_parts(repo: &Repo, store: Store, name: &str, part_size: u64) -> u32 {
    let objects = data_stream_objects(repo, store, name);
    let n = objects.len() as u32;
    assert!(n > 0, "no parts");
    let names: Vec<&str> = objects.iter().map(|o| o.0.as_str()).collect();
    let want: Vec<String> = (1..=n).map(|i| format!("part-{i:06}")).collect();
    assert_eq!(names, want, "parts are not numbered 1..={n} without a gap");
    let mut total = 0;
    for (i, (file, header)) in objects.iter().enumerate() {
        assert_eq!(
            &header[..8],
            b"WALARCH\0",
            "{file} is not a walarchive object"
        );
        let raw_len = u64::from_le_bytes(header[16..24].try_into().unwrap());
        if i + 1 < objects.len() {
            assert_eq!(raw_len, part_size, "{file} is not a full part");
        } else {
            assert!(
                raw_len > 0 && raw_len <= part_size,
                "{file}: {raw_len} bytes"
            );
        }
        total += raw_len;
    }
    assert_eq!(
        total % 512,
        0,
        "the stream is not whole tar blocks: {total} bytes"
    );
    n
}

/// A pgbench database, a backup with `--parallel 4 --part-size 1` taken during a
/// workload, more workload, then a restore with `--parallel 4`, promoted and compared.
fn parallel_round_trip(store: Store, compression: &str) {
    let repo = store.fresh();
    let primary = repo.start_primary(PgOptions::default());
    primary.pgbench_init(6);
    let push_args = [
        "--parallel",
        "4",
        "--part-size",
        "1",
        "--compression",
        compression,
    ];
    let summary = std::thread::scope(|s| {
        let load = s.spawn(|| primary.pgbench(&["-c", "2", "-T", "5"]));
        let summary = repo.backup_push(&primary, &push_args);
        load.join().unwrap();
        summary
    });
    assert_eq!(summary["complete"], true);
    let name = summary["name"].as_str().unwrap().to_string();
    primary.pgbench(&["-c", "2", "-t", "300"]);
    let expected = primary.psql(PGBENCH_DIGEST);
    primary.archive_everything();

    // One part per MiB of tar stream, numbered in stream order.
    let parts = assert_contiguous_parts(&repo, store, &name, MIB);
    let original = summary["original_bytes"].as_u64().unwrap();
    assert!(
        u64::from(parts) >= original.div_ceil(MIB) && original > 60 * MIB,
        "{parts} parts for {original} bytes"
    );
    eprintln!("{store:?}/{compression}: {parts} parts for {original} bytes");

    let out = repo.run(&["--parallel", "4", "verify", "backup", &name, "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&assert_success(&out).stdout).unwrap();
    assert_eq!(report["ok"], true, "{report}");

    let restored = repo.restore("LATEST", &["--parallel", "4", "--target-action", "promote"]);
    restored.append_conf("archive_mode = off\n");
    restored.start_with_env(&repo.env);
    restored.wait_promoted();
    assert_eq!(restored.psql(PGBENCH_DIGEST), expected);
}

#[test]
fn parallel_round_trip_s3_zstd() {
    parallel_round_trip(Store::S3, "zstd");
}

#[test]
fn parallel_round_trip_file_uncompressed() {
    parallel_round_trip(Store::File, "none");
}

/// No backup_label and no signal file: PostgreSQL would not start recovery from DEST, and
/// it cannot be mistaken for a consistent copy.
#[track_caller]
fn assert_not_startable(dest: &Path) {
    for f in [
        "backup_label",
        "recovery.signal",
        "standby.signal",
        "tablespace_map",
    ] {
        assert!(
            !dest.join(f).exists(),
            "a failed restore wrote {}",
            dest.join(f).display()
        );
    }
}

#[test]
fn a_missing_part_fails_the_restore() {
    let repo = Store::File.fresh();
    let primary = repo.start_primary(PgOptions::default());
    primary.pgbench_init(2);
    primary.archive_everything();
    // Taken one part at a time (`--parallel 1` is the sequential pipeline).
    let summary = repo.backup_push(&primary, &["--parallel", "1", "--part-size", "1"]);
    let name = summary["name"].as_str().unwrap().to_string();
    primary.archive_everything();
    let parts = assert_contiguous_parts(&repo, Store::File, &name, MIB);
    assert!(parts >= 6, "{parts} parts");

    let part = repo
        .path()
        .join("basebackups")
        .join(&name)
        .join("data/part-000003");
    let saved = fs::read(&part).unwrap();
    fs::remove_file(&part).unwrap();
    for parallel in ["1", "4"] {
        let target = PgCluster::empty();
        let out = repo.try_restore_into(&target, "LATEST", &["--parallel", parallel]);
        assert_code(&out, 8);
        let line = error_line(&out);
        eprintln!("--parallel {parallel}: {line}");
        assert!(
            line.contains("damaged")
                && line.contains(&format!("part-000003 of {parts} is missing"))
                && line.contains(&format!("basebackups/{name}/data/part-000003 is not in")),
            "--parallel {parallel}: {line}"
        );
        assert_not_startable(target.data_dir());
    }

    let out = repo.run(&["verify", "backup", &name]);
    assert_code(&out, 8);
    assert!(stderr(&out).contains("part-000003"), "{}", stderr(&out));

    // Put back, the same backup restores and recovers.
    fs::write(&part, &saved).unwrap();
    let expected = primary.psql(PGBENCH_DIGEST);
    let restored = repo.restore("LATEST", &["--parallel", "4", "--target-action", "promote"]);
    restored.append_conf("archive_mode = off\n");
    restored.start_with_env(&repo.env);
    restored.wait_promoted();
    assert_eq!(restored.psql(PGBENCH_DIGEST), expected);
}
