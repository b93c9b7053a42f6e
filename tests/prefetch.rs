//! Prefetch on restore: `wal-fetch N` serves N, then a worker downloads the next segments into
//! `pg_wal/walarchive-prefetch/`, from where later requests are answered once the files are
//! verified again. Real PostgreSQL point-in-time restores (following a timeline switch) on
//! a local-directory and an S3 repository; the contract in a fake data directory (damaged,
//! renamed and temporary files are never served; `--prefetch 0` changes nothing); and a
//! measurement of replay time with and without prefetching (printed, not asserted; the full
//! matrix with `WALARCHIVE_MEASURE_PREFETCH=1`, best with `--release`).

use testkit as common;

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use common::*;

const PREFETCH_DIR: &str = "walarchive-prefetch";
const SERVED: &str = "from the prefetch directory";

/// Rows of `t` and a digest of them.
const DIGEST: &str = "select count(*) || ':' || coalesce(sum(n), 0) || ':' || \
     coalesce(md5(string_agg(n::text || pad, ',' order by n)), '') from t";

/// Inserts rows `from..=to` (about 400 bytes of WAL each: 2,600 rows per 1 MiB segment).
fn insert(pg: &PgCluster, from: u64, to: u64) {
    pg.psql(&format!(
        "insert into t select g, repeat(md5(g::text), 10) from generate_series({from}, {to}) g"
    ));
}

/// Whether no prefetch worker holds the directory's lock (or there is no directory).
fn worker_idle(dir: &Path) -> bool {
    match File::open(dir.join(".lock")) {
        Err(_) => true,
        Ok(f) => f.try_lock().is_ok(),
    }
}

/// Waits until no worker has run for a moment (one may be starting right now).
fn wait_workers(dir: &Path) {
    let mut idle_since: Option<Instant> = None;
    wait_until(
        "prefetch workers to finish",
        Duration::from_secs(60),
        || {
            if worker_idle(dir) {
                let since = *idle_since.get_or_insert_with(Instant::now);
                since.elapsed() >= Duration::from_millis(500)
            } else {
                idle_since = None;
                false
            }
        },
    );
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().into_string().unwrap())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn temp_files(dir: &Path) -> Vec<String> {
    names_in(dir)
        .into_iter()
        .filter(|n| n.ends_with(".tmp"))
        .collect()
}

/// walarchive's log lines about restored segments in a server log: (from the prefetch
/// directory, from the repository).
fn restores(log: &str) -> (Vec<String>, Vec<String>) {
    let mut served = Vec::new();
    let mut direct = Vec::new();
    for line in log.lines() {
        let Some(rest) = line.split("restored ").nth(1) else {
            continue;
        };
        let name = &rest[..rest.len().min(24)];
        if name.len() != 24 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
            continue;
        }
        if line.contains(SERVED) {
            served.push(name.to_string());
        } else if line.contains(" bytes) in ") {
            direct.push(name.to_string());
        }
    }
    (served, direct)
}

/// PostgreSQL's own replay time ("redo done at ... elapsed: S s"), in seconds.
fn redo_seconds(log: &str) -> Option<f64> {
    let line = log.lines().rev().find(|l| l.contains("redo done at"))?;
    let s = line.split("elapsed: ").nth(1)?;
    s.split_whitespace().next()?.parse().ok()
}

// ---------------------------------------------------------------------------------------
// 1. A real point-in-time restore across a timeline switch
// ---------------------------------------------------------------------------------------

/// A repository holding a backup, timeline 1 (which goes on past the switch point), and
/// timeline 2 branched from it by a restored and promoted clone; returns the clone's digest.
fn two_timelines(repo: &Repo) -> String {
    let primary = repo.start_primary(PgOptions::default());
    primary.psql("create table t(n bigint, pad text)");
    primary.psql("create table marks(n int)");
    repo.backup_push(&primary, &[]);
    insert(&primary, 1, 40_000);
    let xid = primary.psql("insert into marks values (1) returning xmin");
    insert(&primary, 40_001, 60_000);
    primary.archive_everything();

    let clone = repo.restore(
        "LATEST",
        &["--target-xid", &xid, "--target-action", "promote"],
    );
    clone.start_with_env(&repo.env);
    clone.wait_promoted();
    assert_eq!(clone.psql("select count(*) from t"), "40000");
    // Replaying to a target in the middle of the archive prefetched past it: those files
    // must not be served to anything else, and must not stay.
    wait_workers(&clone.wal_dir().join(PREFETCH_DIR));
    let left = names_in(&clone.wal_dir().join(PREFETCH_DIR));
    eprintln!("clone: prefetch directory after promotion: {left:?}");
    assert!(
        left.iter().all(|n| !n.ends_with(".tmp")),
        "temporary files left: {left:?}"
    );
    insert(&clone, 100_001, 140_000);
    let last = clone.switch_wal();
    assert!(last.starts_with("00000002"), "{last}");
    clone.wait_archived(&last, Duration::from_secs(180));
    clone.psql(DIGEST)
}

fn pitr_across_timelines(store: Store) {
    let repo = store.fresh();
    let expected = two_timelines(&repo);
    let tl2 = repo
        .wal_list()
        .iter()
        .filter(|e| e["kind"] == "segment" && e["timeline"] == 2)
        .count();
    let tl1 = repo
        .wal_list()
        .iter()
        .filter(|e| e["kind"] == "segment" && e["timeline"] == 1)
        .count();
    assert!(tl1 + tl2 >= 30, "only {tl1} + {tl2} segments archived");

    let c = repo.restore(
        "LATEST",
        &["--target-timeline", "latest", "--target-action", "promote"],
    );
    c.append_conf("archive_mode = off\n");
    c.start_with_env(&repo.env);
    c.wait_promoted();
    assert_eq!(c.psql(DIGEST), expected, "restored data differs");
    assert!(expected.starts_with("80000:"), "{expected}");

    let log = c.log();
    let (served, direct) = restores(&log);
    eprintln!(
        "{store:?}: {} segments served from the prefetch directory, {} fetched directly ({direct:?})",
        served.len(),
        direct.len()
    );
    let total = served.len() + direct.len();
    assert!(total >= 20, "only {total} segments restored:\n{log}");
    assert!(
        served.len() * 2 > total,
        "only {} of {total} segments came from the prefetch directory",
        served.len()
    );
    // Both timelines were prefetched, and each file served only as itself.
    assert!(served.iter().any(|n| n.starts_with("00000001")));
    assert!(served.iter().any(|n| n.starts_with("00000002")));
    assert!(
        !log.contains("discarding prefetched"),
        "a prefetched file failed verification:\n{log}"
    );
    let dir = c.wal_dir().join(PREFETCH_DIR);
    wait_workers(&dir);
    let left = names_in(&dir);
    eprintln!("{store:?}: prefetch directory after promotion: {left:?}");
    assert!(
        temp_files(&dir).is_empty(),
        "temporary files left: {left:?}"
    );
    assert!(
        left.iter()
            .all(|n| n.starts_with('.') && !n.ends_with(".tmp")),
        "prefetched files left after the end of recovery: {left:?}"
    );
}

#[test]
fn pitr_across_a_timeline_switch_file() {
    pitr_across_timelines(Store::File);
}

#[test]
fn pitr_across_a_timeline_switch_s3() {
    pitr_across_timelines(Store::S3);
}

// ---------------------------------------------------------------------------------------
// 2, 3. The contract in a fake data directory
// ---------------------------------------------------------------------------------------

/// A data directory that is not a server: `pg_wal/` and, optionally, `recovery.signal`.
struct FakeDataDir {
    dir: TestDir,
}

impl FakeDataDir {
    fn new(in_recovery: bool) -> FakeDataDir {
        let dir = TestDir::new("walarchive-fakedata-");
        fs::create_dir_all(dir.join("data/pg_wal")).unwrap();
        if in_recovery {
            fs::write(dir.join("data/recovery.signal"), b"").unwrap();
        }
        FakeDataDir { dir }
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn prefetch_dir(&self) -> PathBuf {
        self.data().join("pg_wal").join(PREFETCH_DIR)
    }

    /// `wal-fetch NAME pg_wal/RECOVERYXLOG` from the data directory, as PostgreSQL runs it.
    fn fetch(&self, repo: &Repo, name: &str, extra: &[&str]) -> Output {
        let mut args = vec!["--repo", repo.url.as_str()];
        args.extend_from_slice(extra);
        args.extend(["wal-fetch", name, "pg_wal/RECOVERYXLOG"]);
        walarchive_cmd()
            .args(&args)
            .envs(repo.env.iter().map(|(k, v)| (k, v)))
            .current_dir(self.data())
            .output()
            .expect("run walarchive")
    }

    fn restored(&self) -> Vec<u8> {
        fs::read(self.data().join("pg_wal/RECOVERYXLOG")).unwrap()
    }

    /// The final-named prefetched file of `segment`, if any.
    fn prefetched(&self, segment: &str) -> Option<PathBuf> {
        names_in(&self.prefetch_dir())
            .into_iter()
            .find(|n| n.starts_with(segment) && n.len() == 24 + 1 + 64)
            .map(|n| self.prefetch_dir().join(n))
    }
}

/// A repository with `count` archived timeline 1 segments of a real cluster (their names).
fn archived_segments(store: Store, count: usize) -> (Repo, Vec<String>) {
    let repo = store.fresh();
    let primary = repo.start_primary(PgOptions::default());
    primary.psql("create table t(n bigint, pad text)");
    for i in 0..count as u64 {
        insert(&primary, i * 1000 + 1, (i + 1) * 1000);
        primary.switch_wal();
    }
    primary.archive_everything();
    let names: Vec<String> = repo
        .wal_list()
        .iter()
        .filter(|e| e["kind"] == "segment")
        .map(|e| e["name"].as_str().unwrap().to_string())
        .collect();
    assert!(names.len() >= count, "{names:?}");
    (repo, names)
}

/// The content of `name` as the repository has it (fetched outside any pg_wal).
fn content(repo: &Repo, name: &str) -> Vec<u8> {
    let scratch = TestDir::new("walarchive-content-");
    let dest = scratch.join("seg");
    assert_success(&repo.run(&["wal-fetch", name, dest.to_str().unwrap()]));
    assert!(names_in(scratch.path()).len() == 1);
    fs::read(dest).unwrap()
}

#[test]
fn damaged_renamed_and_partial_files_are_never_served() {
    let (repo, segs) = archived_segments(Store::File, 10);
    let d = FakeDataDir::new(true);
    let pdir = d.prefetch_dir();
    // Each request, then the worker it may have started (it follows for a few seconds).
    let fetch = |n: &str| {
        let out = d.fetch(&repo, n, &["--prefetch", "4"]);
        assert_success(&out);
        assert_eq!(d.restored(), content(&repo, n), "{n} restored wrong");
        wait_workers(&pdir);
        stderr(&out)
    };
    let err = fetch(&segs[1]);
    assert!(!err.contains(SERVED), "{err}");
    for n in &segs[2..=5] {
        assert!(d.prefetched(n).is_some(), "{:?}", names_in(&pdir));
    }
    assert!(temp_files(&pdir).is_empty(), "{:?}", names_in(&pdir));
    // The window is --prefetch segments long.
    assert!(d.prefetched(&segs[6]).is_none(), "{:?}", names_in(&pdir));

    // Truncated after its download, still under its final name: not served.
    let two = d.prefetched(&segs[2]).unwrap();
    let len = fs::metadata(&two).unwrap().len();
    File::options()
        .write(true)
        .open(&two)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let err = fetch(&segs[2]);
    assert!(
        err.contains("discarding prefetched") && !err.contains(SERVED),
        "{err}"
    );
    assert!(!two.exists(), "the damaged file is removed");

    // Garbage of the right length under the final name, behind the segment's own page
    // header (garbage from the first byte is refused by its page header already): not
    // served.
    let three = d.prefetched(&segs[3]).unwrap();
    let mut garbage = vec![0x5a; len as usize];
    garbage[..64].copy_from_slice(&fs::read(&three).unwrap()[..64]);
    fs::write(&three, garbage).unwrap();
    let err = fetch(&segs[3]);
    assert!(
        err.contains("checksum mismatch") && !err.contains(SERVED),
        "{err}"
    );

    // A complete copy under a temporary name (of no running worker): not served, not waited for.
    let four = d.prefetched(&segs[4]).unwrap();
    let tmp = pdir.join(format!(".{}.4242.tmp", segs[4]));
    fs::rename(&four, &tmp).unwrap();
    let started = Instant::now();
    let err = fetch(&segs[4]);
    assert!(!err.contains(SERVED), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));

    // Another timeline's name on a good file: not served for that timeline either.
    let five = d.prefetched(&segs[5]).unwrap();
    let key = five.file_name().unwrap().to_str().unwrap()[25..].to_string();
    let tl2 = format!("00000002{}", &segs[5][8..]);
    fs::copy(&five, pdir.join(format!("{tl2}.{key}"))).unwrap();
    let out = d.fetch(&repo, &tl2, &["--prefetch", "4"]);
    assert_code(&out, 1);
    assert!(
        stderr(&out).contains("discarding prefetched"),
        "{}",
        stderr(&out)
    );

    // The good one is served, as itself.
    let err = fetch(&segs[5]);
    assert!(err.contains(SERVED), "{err}");
    assert!(!five.exists());

    // At the end of the archive, a worker removes what is stale (the temporary file, files
    // outside its window) and prefetches nothing.
    let last = segs.last().unwrap();
    fetch(last);
    let left = names_in(&pdir);
    assert!(
        left.iter()
            .all(|n| n.starts_with('.') && !n.ends_with(".tmp")),
        "{left:?}"
    );
    // PostgreSQL's probe for a newer timeline at the end of recovery removes the directory.
    assert_code(&d.fetch(&repo, "00000009.history", &["--prefetch", "4"]), 1);
    assert!(!pdir.exists(), "{:?}", names_in(&pdir));
    // Metrics: every restore counted once, from wherever it came.
    let metrics: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(d.data().join("pg_wal/walarchive-metrics.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(metrics["fetch_total"], 6, "{metrics}");
    assert_eq!(metrics["fetch_not_found_total"], 2, "{metrics}");
    assert_eq!(metrics["fetch_errors_total"], 0, "{metrics}");
}

#[test]
fn prefetch_off_or_outside_recovery_changes_nothing() {
    let (repo, segs) = archived_segments(Store::File, 4);
    for (in_recovery, extra) in [(true, vec!["--prefetch", "0"]), (false, vec![])] {
        let d = FakeDataDir::new(in_recovery);
        for n in &segs[1..3] {
            let out = d.fetch(&repo, n, &extra);
            assert_success(&out);
            assert!(!stderr(&out).contains(SERVED));
            assert_eq!(d.restored(), content(&repo, n));
        }
        std::thread::sleep(Duration::from_secs(1));
        assert!(
            !d.prefetch_dir().exists(),
            "prefetch directory created (in recovery: {in_recovery}, {extra:?})"
        );
    }
    // The environment variable too.
    let d = FakeDataDir::new(true);
    let mut args = vec!["--repo", repo.url.as_str(), "wal-fetch", &segs[1]];
    args.push("pg_wal/RECOVERYXLOG");
    let out = walarchive_cmd()
        .args(&args)
        .env("WALARCHIVE_PREFETCH", "0")
        .current_dir(d.data())
        .output()
        .unwrap();
    assert_success(&out);
    std::thread::sleep(Duration::from_secs(1));
    assert!(!d.prefetch_dir().exists());
}

// ---------------------------------------------------------------------------------------
// Measurement: replay of ~60 segments from S3, with and without prefetching
// ---------------------------------------------------------------------------------------

#[test]
fn measure_replay_time() {
    let repo = Store::S3.fresh();
    let primary = repo.start_primary(PgOptions::default());
    primary.psql("create table t(n bigint, pad text)");
    repo.backup_push(&primary, &[]);
    for batch in 0..6 {
        insert(&primary, batch * 25_000 + 1, (batch + 1) * 25_000);
    }
    primary.archive_everything();
    let expected = primary.psql(DIGEST);
    let segments = repo
        .wal_list()
        .iter()
        .filter(|e| e["kind"] == "segment")
        .count();
    eprintln!("measure: {segments} segments archived");
    assert!(segments >= 55, "{segments}");

    let direct_port = s3().port;
    let slow = Proxy::start(direct_port, Duration::from_millis(20));
    let slow_port = slow.port();
    // The whole matrix with WALARCHIVE_MEASURE_PREFETCH=1 (best with --release); by default
    // only the default settings against none, over the slow link.
    let full = std::env::var("WALARCHIVE_MEASURE_PREFETCH").is_ok_and(|v| v == "1");
    let links = if full {
        vec![("local", direct_port), ("+20ms", slow_port)]
    } else {
        vec![("+20ms", slow_port)]
    };
    let mut configs = vec![
        ("prefetch 0", vec![("WALARCHIVE_PREFETCH", "0")]),
        ("prefetch 8, parallel 2 (default)", vec![]),
    ];
    if full {
        configs.extend([
            ("prefetch 8, parallel 1", vec![("WALARCHIVE_PARALLEL", "1")]),
            ("prefetch 8, parallel 4", vec![("WALARCHIVE_PARALLEL", "4")]),
            (
                "prefetch 8, parallel 2, inline",
                vec![("WALARCHIVE_PREFETCH_INLINE", "1")],
            ),
        ]);
    }
    let mut results = Vec::new();
    for &(link, port) in &links {
        for (label, vars) in &configs {
            let mut env: Vec<(String, String)> = repo
                .env
                .iter()
                .filter(|(k, _)| k != "AWS_ENDPOINT")
                .cloned()
                .collect();
            env.push(("AWS_ENDPOINT".into(), format!("http://127.0.0.1:{port}")));
            env.extend(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())));
            let c = repo.restore("LATEST", &["--target-action", "promote"]);
            c.append_conf("archive_mode = off\n");
            let started = Instant::now();
            c.start_with_env(&env);
            c.wait_promoted();
            let wall = started.elapsed().as_secs_f64();
            assert_eq!(c.psql(DIGEST), expected, "{link} {label}");
            let log = c.log();
            let redo = redo_seconds(&log).unwrap_or(f64::NAN);
            let (served, direct) = restores(&log);
            let dir = c.wal_dir().join(PREFETCH_DIR);
            if *label == "prefetch 0" {
                assert!(served.is_empty());
                assert!(
                    !dir.exists(),
                    "prefetch directory created with --prefetch 0"
                );
            }
            wait_workers(&dir);
            assert!(temp_files(&dir).is_empty(), "{:?}", names_in(&dir));
            eprintln!(
                "measure [{link}] {label}: redo {redo:.2} s, start to promoted {wall:.2} s, \
                 {} served from prefetch, {} fetched directly",
                served.len(),
                direct.len()
            );
            results.push((link, label, redo, wall));
        }
    }
    for &(link, _) in &links {
        let base = results
            .iter()
            .find(|r| r.0 == link && *r.1 == "prefetch 0")
            .unwrap();
        for r in results.iter().filter(|r| r.0 == link) {
            eprintln!(
                "measure [{link}] {}: redo {:.2} s ({:.2}x faster than prefetch 0), wall {:.2} s ({:.2}x)",
                r.1,
                r.2,
                base.2 / r.2,
                r.3,
                base.3 / r.3
            );
        }
    }
}
