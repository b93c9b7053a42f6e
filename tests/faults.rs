//! Fault injection, driven through the real binary exactly as PostgreSQL and an operator
//! call it.
//!
//! Store level: `WALARCHIVE_FAULTS` (walarchive/src/storage/unreliable.rs) wraps the store
//! walarchive opens in a deterministic fault injector. For wal-push, wal-fetch, backup-push
//! and backup-fetch these tests prove that transient faults (5xx, timeouts, connection
//! resets before a request or in the middle of a download, answers lost after a put, slow
//! answers) are retried within the bound and end with the right content; that permanent
//! faults (401, 403, 400, 404) fail at once with one clear line and the documented status;
//! that nothing partial ever becomes visible as a valid object; and that a failed fetch
//! leaves nothing at its destination (no file, no temporary file).
//!
//! Network level: a real PostgreSQL archives a workload through a TCP proxy that drops
//! connections in the middle of transfers and stalls others (tests/common/proxy.rs), and
//! loses nothing.

use testkit as common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::*;

/// Real segments from a cluster of their own (1 MiB each).
fn source() -> &'static WalSource {
    static S: OnceLock<WalSource> = OnceLock::new();
    S.get_or_init(|| WalSource::collect(8, 2000))
}

/// The retry settings of these tests: 6 attempts (the default) of at most 2 s each. With
/// the default backoff (0.25 s doubling, ±25%) a transient fault that never passes takes
/// at least 0.19 + 0.38 + 0.75 + 1.5 + 3 s = 5.8 s of backoff alone before walarchive gives
/// up; a permanent one must fail well before that.
fn retry_env() -> Vec<(String, String)> {
    vec![
        ("WALARCHIVE_RETRIES".into(), "6".into()),
        ("WALARCHIVE_REQUEST_TIMEOUT".into(), "2".into()),
    ]
}

/// Fewer attempts, for the cases that exhaust them (0.19 + 0.38 s of backoff at least).
const THREE_ATTEMPTS: &[(&str, &str)] = &[("WALARCHIVE_RETRIES", "3")];

/// "Fast" for a permanent failure: a process start, one refused request (and the descriptor's
/// read when the answer is "not found"), without backoff (giving up on a transient fault takes 5.8 s or more; the
/// stderr checks prove that no attempt was retried at all).
const FAST: Duration = Duration::from_secs(2);

/// A repository on `store`, a work directory for WAL files and destinations.
struct Fixture {
    dir: TestDir,
    repo: Repo,
}

impl Fixture {
    fn new(store: Store) -> Fixture {
        let mut repo = store.fresh();
        repo.env.extend(retry_env());
        Fixture {
            dir: TestDir::new("walarchive-faults-"),
            repo,
        }
    }

    /// Runs walarchive on this repository with `faults` as WALARCHIVE_FAULTS.
    fn run(&self, faults: &str, args: &[&str]) -> (Output, Duration) {
        self.run_env(faults, &[], args)
    }

    /// [`Fixture::run`] with more environment variables.
    fn run_env(&self, faults: &str, extra: &[(&str, &str)], args: &[&str]) -> (Output, Duration) {
        let mut env = self.repo.env.clone();
        env.push(("WALARCHIVE_FAULTS".into(), faults.into()));
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let mut a = vec!["--repo", self.repo.url.as_str()];
        a.extend_from_slice(args);
        let t = Instant::now();
        let out = run_walarchive(&a, &env);
        (out, t.elapsed())
    }

    /// Copies segment `name` into the work directory and pushes it with `faults`.
    fn push(&self, faults: &str, name: &str) -> (Output, Duration) {
        self.push_env(faults, &[], name)
    }

    /// [`Fixture::push`] with more environment variables.
    fn push_env(&self, faults: &str, extra: &[(&str, &str)], name: &str) -> (Output, Duration) {
        let path = self.dir.join(name);
        if !path.exists() {
            fs::copy(source().path(name), &path).unwrap();
        }
        self.run_env(faults, extra, &["wal-push", path.to_str().unwrap()])
    }

    /// Fetches `name` with `faults` into a new, empty directory; returns the outcome and
    /// that directory.
    fn fetch(&self, faults: &str, name: &str) -> (Output, Duration, PathBuf) {
        self.fetch_env(faults, &[], name)
    }

    /// [`Fixture::fetch`] with more environment variables.
    fn fetch_env(
        &self,
        faults: &str,
        extra: &[(&str, &str)],
        name: &str,
    ) -> (Output, Duration, PathBuf) {
        let dest_dir = self.dir.join(format!("dest-{}", unique()));
        fs::create_dir(&dest_dir).unwrap();
        let dest = dest_dir.join("RECOVERYXLOG");
        // For the data directory of the cluster that wrote the segments, as PostgreSQL runs
        // restore_command in it.
        let pgdata = source().cluster.data_dir().to_str().unwrap();
        let (out, took) = self.run_env(
            faults,
            extra,
            &[
                "wal-fetch",
                name,
                dest.to_str().unwrap(),
                "--pgdata",
                pgdata,
            ],
        );
        (out, took, dest_dir)
    }

    /// The segment names `wal-list` shows (without faults).
    fn listed(&self) -> Vec<String> {
        self.repo
            .wal_list()
            .iter()
            .map(|e| e["name"].as_str().unwrap().to_string())
            .collect()
    }

    /// Fetches `name` without faults and compares it with the source segment.
    #[track_caller]
    fn assert_intact(&self, name: &str) {
        let (out, _, dir) = self.fetch("", name);
        assert_success(&out);
        assert!(
            fs::read(dir.join("RECOVERYXLOG")).unwrap() == source().bytes(name),
            "{name}: the archived copy differs from the segment"
        );
    }
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::SeqCst)
}

/// Lines of stderr saying a fault was injected.
fn injected(out: &Output) -> usize {
    stderr(out).matches("fault injection: ").count()
}

/// Lines of stderr saying an attempt failed and is retried.
fn retried(out: &Output) -> usize {
    stderr(out).matches("retrying in").count()
}

/// The names in directory `dir`.
fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

// ---------------------------------------------------------------------------
// wal-push
// ---------------------------------------------------------------------------

/// Transient faults on the way in are retried within the bound; the segment ends up stored
/// once, intact, and the retries show in the log.
fn push_retries_transient_faults(store: Store) {
    let f = Fixture::new(store);
    let segs = &source().segments;
    // (plan, faults injected, attempts retried)
    let cases: [(&str, usize, usize); 7] = [
        ("op=put key=/wal/ fault=503 first=2", 2, 2),
        ("op=put key=/wal/ fault=429 first=1", 1, 1),
        ("op=put key=/wal/ fault=reset first=3", 3, 3),
        // The put is carried out but its answer is lost: the retry finds it (a conditional
        // put refused, or the HEAD before it) and compares checksums.
        ("op=put key=/wal/ fault=lost first=1", 1, 1),
        ("op=put key=/wal/ fault=timeout first=1", 1, 1),
        // The descriptor's read and the HEAD before the upload.
        ("op=get fault=500 first=1; op=head fault=503 first=2", 3, 3),
        ("fault=slow:300", 0, 0),
    ];
    for (i, (plan, faults, retries)) in cases.iter().enumerate() {
        let name = &segs[i];
        let (out, took) = f.push(plan, name);
        assert_success(&out);
        if *faults > 0 {
            assert_eq!(injected(&out), *faults, "{plan}\n{}", stderr(&out));
            assert_eq!(retried(&out), *retries, "{plan}\n{}", stderr(&out));
        } else {
            assert!(took >= Duration::from_millis(300), "{plan}: {took:?}");
        }
        assert!(!stderr(&out).contains("giving up"), "{}", stderr(&out));
        f.assert_intact(name);
    }
    let listed = f.listed();
    for name in &segs[..cases.len()] {
        assert_eq!(
            listed.iter().filter(|n| *n == name).count(),
            1,
            "{listed:?}"
        );
    }
}

#[test]
fn push_retries_transient_faults_file() {
    push_retries_transient_faults(Store::File);
}

#[test]
fn push_retries_transient_faults_s3() {
    push_retries_transient_faults(Store::S3);
}

/// Permanent refusals fail at once (one request, no backoff) with one clear line and
/// status 7; transient faults that outlast the bound give up with status 7 after exactly
/// the configured attempts. Either way nothing becomes visible, and a later push stores
/// the segment intact.
fn push_fails_cleanly(store: Store) {
    let f = Fixture::new(store);
    let segs = &source().segments;
    assert_success(&f.push("", &segs[0]).0);
    let name = &segs[1];
    let cases = [
        ("op=put key=/wal/ fault=403", "access denied"),
        ("op=put key=/wal/ fault=401", "access denied"),
        ("op=put key=/wal/ fault=400", "400 Bad Request"),
        // A 404 on a put means the bucket is gone.
        ("op=put key=/wal/ fault=404", "does not exist"),
        ("op=head key=/wal/ fault=403", "access denied"),
    ];
    for (plan, says) in cases {
        let (out, took) = f.push(plan, name);
        assert_code(&out, 7);
        let line = error_line(&out);
        assert!(line.starts_with("walarchive wal-push: error: "), "{line}");
        assert!(line.contains(says), "{plan}: {line}");
        assert_eq!(injected(&out), 1, "{plan}: retried\n{}", stderr(&out));
        assert_eq!(retried(&out), 0, "{plan}\n{}", stderr(&out));
        assert!(took < FAST, "{plan}: took {took:?}");
        assert!(!f.listed().contains(name), "{plan}: {name} is listed");
    }
    // Transient, but it never passes: exactly 3 attempts, then status 7.
    let (out, took) = f.push_env("op=put key=/wal/ fault=503", THREE_ATTEMPTS, name);
    assert_code(&out, 7);
    let line = error_line(&out);
    assert!(line.contains("gave up after 3 attempts"), "{line}");
    assert!(line.contains("503"), "{line}");
    assert_eq!(injected(&out), 3);
    assert!(took >= Duration::from_millis(560), "{took:?}");
    let (out, _) = f.push_env("op=put key=/wal/ fault=timeout", THREE_ATTEMPTS, name);
    assert_code(&out, 7);
    assert!(error_line(&out).contains("timed out"), "{}", stderr(&out));
    assert!(!f.listed().contains(name));
    // The archive is still a valid one (no corrupt or partial object), and the segment can
    // be pushed for real.
    assert_success(&f.run("", &["wal-verify"]).0);
    assert_success(&f.push("", name).0);
    f.assert_intact(name);
    assert_success(&f.run("", &["wal-verify"]).0);
}

#[test]
fn push_fails_cleanly_file() {
    push_fails_cleanly(Store::File);
}

#[test]
fn push_fails_cleanly_s3() {
    push_fails_cleanly(Store::S3);
}

/// A re-push finds its segment with a HEAD, then the store answers GETs of it with 404 for
/// a while (Swift's S3 API under load did): the comparison waits for the object within the
/// retry bound and says "already archived". A 404 that never ends is a storage error
/// (status 7: PostgreSQL retries), never "not in the repository", and the stored segment
/// stays as it was.
fn repush_waits_for_an_object_the_store_said_exists(store: Store) {
    let f = Fixture::new(store);
    let name = &source().segments[2];
    assert_success(&f.push("", name).0);
    let (out, _) = f.push("op=get key=/wal/ fault=404 first=2", name);
    assert_success(&out);
    assert!(
        stderr(&out).contains("already archived"),
        "{}",
        stderr(&out)
    );
    assert_eq!(injected(&out), 2, "{}", stderr(&out));
    assert_eq!(retried(&out), 2, "{}", stderr(&out));

    let (out, _) = f.push_env("op=get key=/wal/ fault=404", THREE_ATTEMPTS, name);
    assert_code(&out, 7);
    let line = error_line(&out);
    assert!(line.starts_with("walarchive wal-push: error: "), "{line}");
    assert!(line.contains("does not return it"), "{line}");
    assert!(!line.contains("not in the repository"), "{line}");
    assert_eq!(injected(&out), 3, "{}", stderr(&out));
    f.assert_intact(name);
}

#[test]
fn repush_waits_for_an_object_the_store_said_exists_file() {
    repush_waits_for_an_object_the_store_said_exists(Store::File);
}

#[test]
fn repush_waits_for_an_object_the_store_said_exists_s3() {
    repush_waits_for_an_object_the_store_said_exists(Store::S3);
}

/// A malformed plan is a configuration error (status 6), before anything is stored.
#[test]
fn bad_fault_plan_is_a_configuration_error() {
    let f = Fixture::new(Store::File);
    let (out, _) = f.push("op=put fault=teapot", &source().segments[0]);
    assert_code(&out, 6);
    assert!(
        error_line(&out).contains("WALARCHIVE_FAULTS"),
        "{}",
        stderr(&out)
    );
    // Nothing stored, not even the descriptor: there is no repository there (status 6).
    assert!(!f.repo.path().exists());
    assert_code(&f.repo.run(&["wal-list"]), 6);
}

// ---------------------------------------------------------------------------
// wal-fetch
// ---------------------------------------------------------------------------

/// Transient faults on the way out, including connections reset in the middle of the
/// body, are retried and the right bytes land at the destination, alone.
fn fetch_retries_transient_faults(store: Store) {
    let f = Fixture::new(store);
    let name = &source().segments[2];
    assert_success(&f.push("", name).0);
    // (plan, faults injected, attempts retried)
    let cases: [(&str, usize, usize); 7] = [
        ("op=get key=/wal/ fault=503 first=2", 2, 2),
        ("op=get key=/wal/ fault=reset:1000 first=2", 2, 2),
        ("op=get key=/wal/ fault=reset first=3", 3, 3),
        ("op=get key=/wal/ fault=reset:0 calls=1,2", 2, 2),
        ("op=get key=/wal/ fault=timeout first=1", 1, 1),
        ("op=get fault=502 first=1", 1, 1),
        // Every GET slowed: the object's only (what it must be comes from the data
        // directory's pg_control, not from a descriptor GET), waited for, not retried.
        ("op=get fault=slow:200", 1, 0),
    ];
    for (plan, faults, retries) in cases {
        let (out, took, dir) = f.fetch(plan, name);
        assert_success(&out);
        assert_eq!(injected(&out), faults, "{plan}\n{}", stderr(&out));
        assert_eq!(retried(&out), retries, "{plan}\n{}", stderr(&out));
        if retries == 0 {
            assert!(took >= Duration::from_millis(200), "{plan}: {took:?}");
        }
        assert_eq!(entries(&dir), ["RECOVERYXLOG"], "{plan}");
        assert!(
            fs::read(dir.join("RECOVERYXLOG")).unwrap() == source().bytes(name),
            "{plan}: wrong content"
        );
    }
}

#[test]
fn fetch_retries_transient_faults_file() {
    fetch_retries_transient_faults(Store::File);
}

#[test]
fn fetch_retries_transient_faults_s3() {
    fetch_retries_transient_faults(Store::S3);
}

/// A fetch that fails leaves nothing at the destination, and answers with the status
/// PostgreSQL must see: 207 for a storage failure (abort recovery), 208 for a body that
/// does not verify, 1 only when the repository positively lacks the file, 206 when there
/// is no repository to ask.
fn fetch_fails_cleanly(store: Store) {
    let f = Fixture::new(store);
    let name = &source().segments[3];
    assert_success(&f.push("", name).0);
    // (plan, status, the error line says, fast)
    let cases = [
        (
            "op=get key=/wal/ fault=reset:1000",
            207,
            "gave up after 3 attempts",
            false,
        ),
        (
            "op=get key=/wal/ fault=503",
            207,
            "gave up after 3 attempts",
            false,
        ),
        ("op=get key=/wal/ fault=timeout", 207, "timed out", false),
        ("op=get fault=403", 207, "access denied", true),
        ("op=get key=/wal/ fault=401", 207, "access denied", true),
        ("op=get key=/wal/ fault=400", 207, "400 Bad Request", true),
        // A body that ends early without an error is caught by the object's own lengths and
        // checksum: never written, and not retried (it is what the store holds, as far as
        // walarchive can tell).
        ("op=get key=/wal/ fault=truncate:1000", 208, "corrupt", true),
        ("op=get key=/wal/ fault=truncate:64", 208, "corrupt", true),
        // The store says the segment is not there, and the descriptor is: "not found".
        // (Quietly: PostgreSQL probes for files that may not exist.)
        ("op=get key=/wal/ fault=404", 1, "", true),
        // The store says nothing is there, not even the descriptor: not "not found", which
        // would end recovery, but a configuration error; the listing shows the repository's
        // objects, so it is the descriptor that is missing (repo-repair).
        (
            "op=get fault=404",
            206,
            "but no descriptor (walarchive.repo)",
            true,
        ),
    ];
    for (plan, status, says, fast) in cases {
        let (out, took, dir) = f.fetch_env(plan, THREE_ATTEMPTS, name);
        assert_code(&out, status);
        if status == 1 {
            assert!(!stderr(&out).contains(": error:"), "{}", stderr(&out));
        } else {
            let line = error_line(&out);
            assert!(line.starts_with("walarchive wal-fetch: error: "), "{line}");
            assert!(line.contains(says), "{plan}: {line}");
        }
        assert!(
            entries(&dir).is_empty(),
            "{plan}: left {:?} at the destination",
            entries(&dir)
        );
        if fast {
            assert_eq!(retried(&out), 0, "{plan}\n{}", stderr(&out));
            assert!(took < FAST, "{plan}: took {took:?}");
        }
    }
    f.assert_intact(name);
}

#[test]
fn fetch_fails_cleanly_file() {
    fetch_fails_cleanly(Store::File);
}

#[test]
fn fetch_fails_cleanly_s3() {
    fetch_fails_cleanly(Store::S3);
}

// ---------------------------------------------------------------------------
// backup-push and backup-fetch
// ---------------------------------------------------------------------------

/// `repo` with WALARCHIVE_FAULTS set to `faults`, [`retry_env`] and `extra`.
fn with_faults(repo: &Repo, faults: &str, extra: &[(&str, &str)]) -> Repo {
    let mut env = repo.env.clone();
    env.extend(retry_env());
    env.push(("WALARCHIVE_FAULTS".into(), faults.into()));
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    Repo {
        url: repo.url.clone(),
        env,
        dir: None,
    }
}

/// What a failed backup-fetch leaves must not be startable as a cluster: no backup_label,
/// no signal file, no recovery settings.
#[track_caller]
fn assert_not_startable(dest: &Path) {
    for f in ["backup_label", "recovery.signal", "standby.signal"] {
        assert!(!dest.join(f).exists(), "{f} left in {}", dest.display());
    }
    let auto = fs::read_to_string(dest.join("postgresql.auto.conf")).unwrap_or_default();
    assert!(!auto.contains("restore_command"), "{auto}");
}

/// No client session of `pg` is left (a failed backup-push ended its backup).
fn wait_no_sessions(pg: &PgCluster) {
    pg.wait_until(
        "backup-push's session to end",
        Duration::from_secs(30),
        || {
            pg.try_psql(
                "select count(*) from pg_stat_activity \
             where backend_type = 'client backend' and pid <> pg_backend_pid()",
            )
            .is_ok_and(|n| n == "0")
        },
    );
}

/// backup-push and backup-fetch under transient faults succeed and restore the exact
/// data; under permanent faults they fail fast with status 7 (or 8 for a body that does not
/// verify), a failed backup never becomes a listed backup, and a failed restore leaves
/// nothing PostgreSQL could start.
fn backups_under_faults(store: Store) {
    let repo = store.fresh();
    let primary = repo.start_primary(PgOptions::default());
    primary.pgbench_init(1);
    let expected = primary.psql(PGBENCH_DIGEST);
    let small_parts = ["--part-size", "1"];

    // Transient faults: every third part upload fails with 503, the manifest's upload
    // loses its answer, the started marker's and the label's once each.
    let flaky = with_faults(
        &repo,
        "op=put key=/part- fault=503 every=3; op=put key=manifest.json fault=lost first=1; \
         op=put key=started.json fault=reset first=1; op=put key=backup_label fault=timeout first=1",
        &[],
    );
    let out = flaky.try_backup_push(&primary, &small_parts);
    assert_success(&out);
    assert!(injected(&out) >= 5, "{}", stderr(&out));
    assert_eq!(retried(&out), injected(&out), "{}", stderr(&out));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["complete"], true);
    let good = summary["name"].as_str().unwrap().to_string();
    assert_success(&repo.run(&["verify", "backup", &good]));

    // Permanent: part 3's upload is refused. Fails fast, names the refusal, and the
    // backup stays incomplete: never listed, never restored.
    let refused = with_faults(&repo, "op=put key=/part-000003 fault=403", &[]);
    let t = Instant::now();
    let out = refused.try_backup_push(&primary, &small_parts);
    let took = t.elapsed();
    assert_code(&out, 7);
    let line = error_line(&out);
    assert!(line.contains("access denied"), "{line}");
    assert_eq!(injected(&out), 1, "{}", stderr(&out));
    assert_eq!(retried(&out), 0, "{}", stderr(&out));
    // A backup's fixed costs (checkpoint, reading the data directory) but no backoff.
    assert!(took < Duration::from_secs(20), "{took:?}");
    wait_no_sessions(&primary);
    // Transient faults beyond the bound: gives up, same outcome.
    let out = with_faults(&repo, "op=put key=/part-000002 fault=503", THREE_ATTEMPTS)
        .try_backup_push(&primary, &small_parts);
    assert_code(&out, 7);
    assert!(
        error_line(&out).contains("gave up after 3 attempts"),
        "{}",
        stderr(&out)
    );
    wait_no_sessions(&primary);
    let listed = repo.backup_list(false);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["name"], good.as_str());
    let detail = repo.backup_list(true);
    assert_eq!(detail.len(), 3, "{detail:?}");
    assert_eq!(
        detail.iter().filter(|b| b["complete"] == true).count(),
        1,
        "{detail:?}"
    );
    assert_success(&repo.run(&["verify", "backup", "LATEST"]));

    // backup-fetch under transient faults: part downloads reset mid-body, the listing and
    // the label answered with 503 once, slow answers.
    let flaky = with_faults(
        &repo,
        "op=get key=/part- fault=reset every=3; op=get key=/part-000001 fault=reset:100 first=1; \
         op=list fault=503 first=1; op=get key=backup_label fault=503 first=1; \
         op=get key=manifest.json fault=slow:200",
        &[],
    );
    let restored = PgCluster::empty();
    let out = flaky.try_restore_into(&restored, &good, &["--target-action", "promote"]);
    assert_success(&out);
    assert!(injected(&out) >= 4, "{}", stderr(&out));
    restored.adopt_data_dir();
    restored.append_conf("archive_mode = off\n");
    restored.start_with_env(&repo.env);
    restored.wait_promoted();
    assert_eq!(restored.psql(PGBENCH_DIGEST), expected);
    restored.stop();

    // backup-fetch failures: a refused part, a part that keeps being reset, a part whose
    // body ends early, a refused label or listing. Each fails with its status and leaves
    // nothing at all in the destination (what was extracted before the failure is removed
    // again), so the same restore without --force then succeeds.
    let cases = [
        ("op=get key=/part-000003 fault=403", 7, "access denied"),
        (
            "op=get key=/part-000002 fault=reset:500",
            7,
            "gave up after 3 attempts",
        ),
        ("op=get key=/part-000002 fault=truncate:500", 8, "corrupt"),
        ("op=get key=backup_label fault=403", 7, "access denied"),
        ("op=list fault=403", 7, "access denied"),
    ];
    for (plan, status, says) in cases {
        let target = PgCluster::empty();
        let out = with_faults(&repo, plan, THREE_ATTEMPTS).try_restore_into(&target, &good, &[]);
        assert_code(&out, status);
        let line = error_line(&out);
        assert!(line.contains(says), "{plan}: {line}");
        assert_not_startable(target.data_dir());
        let left = files_under(target.data_dir());
        assert_eq!(left, 0, "{plan}: {left} files left in the destination");
        assert_success(&repo.try_restore_into(&target, &good, &[]));
        assert!(target.data_dir().join("backup_label").exists());
    }
}

/// Regular files under `dir` (recursively; 0 when it does not exist).
fn files_under(dir: &Path) -> usize {
    let Ok(rd) = fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => files_under(&e.path()),
            Ok(t) if t.is_file() => 1,
            _ => 0,
        })
        .sum()
}

/// The answer to backup-push's claim on its name (`started.json`, a create-only put) is
/// lost, so the retry finds the claim already there, with the same content.
#[test]
fn backup_push_survives_a_lost_claim_answer() {
    let repo = Store::File.fresh();
    let primary = repo.start_primary(PgOptions::default());
    let out = with_faults(&repo, "op=put key=started.json fault=lost first=1", &[])
        .try_backup_push(&primary, &[]);
    assert_success(&out);
    assert_eq!(retried(&out), 1, "{}", stderr(&out));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let name = summary["name"].as_str().unwrap();
    let detail = repo.backup_list(true);
    assert_eq!(
        detail.len(),
        1,
        "backup {name} left another, incomplete backup behind: {detail:?}"
    );
    assert!(!name.ends_with("_1"), "{name}");
}

#[test]
fn backups_under_faults_file() {
    backups_under_faults(Store::File);
}

#[test]
fn backups_under_faults_s3() {
    backups_under_faults(Store::S3);
}

// ---------------------------------------------------------------------------
// The network: a proxy that drops and stalls connections
// ---------------------------------------------------------------------------

/// The proxy's own faults, on a plain echo server: which connections are dropped or
/// stalled, after how many bytes.
#[test]
fn proxy_drops_and_stalls_on_schedule() {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    let echo = TcpListener::bind("127.0.0.1:0").unwrap();
    let target = echo.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in echo.incoming().flatten() {
            std::thread::spawn(move || {
                let mut rx = conn.try_clone().unwrap();
                let mut tx = conn;
                let _ = std::io::copy(&mut rx, &mut tx);
            });
        }
    });
    let proxy = Proxy::with_faults(
        target,
        vec![
            Fault::Drop {
                every: 2,
                after: 10,
            },
            Fault::Stall {
                every: 3,
                after: 4,
                pause: Duration::from_millis(600),
            },
        ],
    );
    // Sends 8 bytes and reads the echo: 16 bytes pass in all.
    let exchange = || {
        let mut c = TcpStream::connect(("127.0.0.1", proxy.port())).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let t = Instant::now();
        c.write_all(b"01234567").unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 16];
        while got.len() < 8 {
            match c.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        (got, t.elapsed())
    };
    // 1: untouched.
    let (got, _) = exchange();
    assert_eq!(got, b"01234567");
    // 2: dropped after 10 bytes: 8 up, 2 of the echo down.
    let (got, _) = exchange();
    assert_eq!(got, b"01");
    // 3: stalled after 4 bytes, then everything.
    let (got, took) = exchange();
    assert_eq!(got, b"01234567");
    assert!(took >= Duration::from_millis(600), "{took:?}");
    // 4: dropped again (every second one); 5: untouched.
    assert_eq!(exchange().0, b"01");
    assert_eq!(exchange().0, b"01234567");
    assert_eq!((proxy.dropped(), proxy.stalled()), (2, 1));
    assert_eq!(proxy.connections(), 5);
}

/// A real PostgreSQL (1 MiB segments) archives a burst of inserts into S3 through a link
/// that drops every 3rd connection in the middle of a transfer and stalls every 7th for
/// longer than walarchive's request timeout. Every segment must end up archived, intact,
/// and PostgreSQL must hardly ever see a failure: the faults are absorbed by walarchive's
/// own retries inside one archive_command call.
#[test]
fn postgres_archives_through_a_faulty_link() {
    let direct = Store::S3.fresh();
    let proxy = Proxy::with_faults(
        s3().port,
        vec![
            // Mid-upload: a compressed 1 MiB segment of these rows is far larger than this,
            // and the small requests (HEAD, the descriptor's GET) far smaller.
            Fault::Drop {
                every: 3,
                after: 8 << 10,
            },
            // Right after the request line and headers started: the client's 1 s request
            // timeout fires during the 3 s stall.
            Fault::Stall {
                every: 7,
                after: 600,
                pause: Duration::from_secs(3),
            },
        ],
    );
    let mut env: Vec<(String, String)> = direct
        .env
        .iter()
        .filter(|(k, _)| k != "AWS_ENDPOINT")
        .cloned()
        .collect();
    env.push(("AWS_ENDPOINT".into(), proxy.url()));
    env.push(("WALARCHIVE_REQUEST_TIMEOUT".into(), "1".into()));
    env.push(("WALARCHIVE_RETRIES".into(), "6".into()));
    let far = Repo {
        url: direct.url.clone(),
        env,
        dir: None,
    };
    let primary = far.start_primary(PgOptions {
        extra_conf: "wal_keep_size = 512MB\n".into(),
        ..Default::default()
    });
    primary.psql("create table items(id bigint primary key, payload text)");
    // Six batches at least; more (up to 20) until the link has both dropped and stalled a
    // connection: which connections carry uploads depends on timing (calls answered from
    // push-ahead markers only send a HEAD), so a fixed amount of WAL could miss them all.
    for batch in 0..20 {
        primary.psql(&format!(
            "insert into items select g, repeat(md5(g::text), 4) from generate_series({}, {}) g",
            batch * 25_000 + 1,
            (batch + 1) * 25_000
        ));
        if batch >= 5 && proxy.dropped() >= 1 && proxy.stalled() >= 1 {
            break;
        }
    }
    let last = primary.switch_wal();
    primary.wait_archived(&last, Duration::from_secs(300));

    let done = primary.done_segments();
    assert!(done.len() >= 24, "only {} segments archived", done.len());
    // Checked through the direct endpoint: in the repository, and byte for byte pg_wal's.
    direct.assert_archived_intact(&primary, &done);
    // The link did misbehave, and walarchive retried.
    eprintln!(
        "proxy: {} connections, {} dropped, {} stalled",
        proxy.connections(),
        proxy.dropped(),
        proxy.stalled()
    );
    assert!(proxy.dropped() >= 1, "no connection was dropped");
    assert!(proxy.stalled() >= 1, "no connection was stalled");
    let log = primary.log();
    assert!(log.contains("retrying in"), "no retry in the server log");
    eprintln!(
        "{} failed attempts retried by walarchive",
        log.matches("retrying in").count()
    );
    // pg_stat_archiver: `last_archived|archived_count|last_failed|failed_count`. Drops and
    // stalls never hit more than two connections in a row (every 3rd and every 7th), and
    // each archive_command call has 6 attempts, so walarchive absorbs them all and
    // PostgreSQL should see no failure. Concurrent uploads (pushing ahead) could line up
    // a few unlucky attempts, so a couple of failed calls are tolerated, provided that
    // PostgreSQL retried them: the segment that failed last is archived, intact (checked
    // above, since it is among the .done segments), and no archive_command exited with a
    // status other than 7 (storage) (a 4 would mean a partial object was stored).
    let status = primary.archiver_status();
    eprintln!("pg_stat_archiver: {status}");
    let fields: Vec<&str> = status.split('|').collect();
    let failed: u64 = fields[3].parse().unwrap();
    assert!(failed <= 2, "PostgreSQL saw {failed} failures: {status}");
    if failed > 0 {
        let last_failed = fields[2];
        assert!(
            done.iter().any(|d| d == last_failed),
            "{last_failed} failed and was never archived: {status}"
        );
        for line in log.lines().filter(|l| l.contains("archive command failed")) {
            assert!(line.contains("exit code 7"), "{line}");
        }
    }
}
