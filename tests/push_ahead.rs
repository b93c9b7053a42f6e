//! Pushing ahead (`wal-push` for segment N also uploads the `.ready` segments after it, and
//! PostgreSQL's later calls for them are answered from verified markers), end to end: a real
//! primary with 1 MiB segments archives a burst of WAL into a local directory and into S3;
//! walarchive processes are killed at random during a burst; bogus markers in a fake data
//! directory never make `wal-push` answer 0 for content it did not store. One test measures
//! archive throughput of a backlog with `--parallel` 1, 2 and 4 (printed, not asserted).

use testkit as common;

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use common::bursts::*;
use common::*;

fn archive_command(repo: &Repo, parallel: Option<u32>) -> String {
    let parallel = parallel
        .map(|p| format!(" --parallel {p}"))
        .unwrap_or_default();
    format!(
        "{} --repo {}{parallel} wal-push %p",
        walarchive_bin().display(),
        repo.url
    )
}

/// A primary archiving into `repo` (with `--parallel` when given, else the default).
fn primary(repo: &Repo, parallel: Option<u32>) -> PgCluster {
    primary_with(repo, &archive_command(repo, parallel))
}

/// How many of PostgreSQL's calls were answered from a push-ahead marker.
fn marker_answers(log: &str) -> usize {
    log.matches("was archived ahead by an earlier wal-push")
        .count()
}

/// A burst of WAL is archived exactly once per segment, with correct content, no failure,
/// and most of PostgreSQL's calls answered from markers.
fn burst(store: Store) {
    let started = Instant::now();
    let repo = store.fresh();
    let pg = primary(&repo, None);
    let first_lsn = pg.psql("select pg_current_wal_lsn()");
    let Burst {
        done,
        in_burst,
        burst_time,
        log,
        times,
    } = archive_burst(&repo, &pg, &first_lsn);

    // The uploads are what the counters say.
    let total_uploads: usize = times.values().sum();
    let m = counters(&pg);
    assert_eq!(m["push_total"], total_uploads as u64, "{m}");
    assert_eq!(m["push_errors_total"], 0, "{m}");
    // Pushing ahead happened: most calls were answered from markers.
    let answered = marker_answers(&log);
    let ahead = log.matches(" INFO pushed ahead ").count();
    eprintln!(
        "{store:?}: {} segments ({in_burst} from the burst, written in {burst_time:.1?}) archived; \
         {ahead} pushed ahead, {answered} calls answered from markers; test took {:.1?}",
        done.len(),
        started.elapsed()
    );
    assert!(
        answered * 2 >= in_burst,
        "only {answered} of {in_burst} calls were answered from push-ahead markers"
    );
    assert_eq!(m["push_already_archived_total"], answered as u64, "{m}");
    // Every marker was used (or cleaned up): none is left for an archived segment, and no
    // temporary file either.
    let left: Vec<String> = fs::read_dir(pg.wal_dir().join("walarchive-pushed"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with('.') || done.contains(n))
        .collect();
    assert!(left.is_empty(), "leftover markers: {left:?}");
}

#[test]
fn burst_file() {
    burst(Store::File);
}

#[test]
fn burst_s3() {
    burst(Store::S3);
}

/// PIDs of the `wal-push` processes `pg` runs: this test process's own copy of the binary,
/// running in `pg`'s data directory (the other tests' processes run elsewhere).
fn wal_push_pids(pg: &PgCluster) -> Vec<u32> {
    let bin = walarchive_bin().display().to_string();
    let mut pids = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        if args.first() != Some(&bin.as_bytes()) || !args.contains(&b"wal-push".as_slice()) {
            continue;
        }
        if fs::read_link(entry.path().join("cwd")).is_ok_and(|cwd| cwd == pg.data_dir()) {
            pids.push(pid);
        }
    }
    pids
}

/// Killing walarchive (`kill -9`) at random points while it archives a burst loses nothing:
/// PostgreSQL retries, and every segment ends up stored and intact.
#[test]
fn killed_at_random_points_loses_nothing() {
    let repo = Store::File.fresh();
    // A walarchive killed by a signal makes PostgreSQL's archiver exit (FATAL), and the
    // postmaster restarts it only 10 s later: so that kills can come every few tens of
    // milliseconds, the shell turns the kill into an ordinary failure (status 1), which
    // PostgreSQL retries after a second. walarchive sees the same thing either way.
    let command = format!("{} || exit 1", archive_command(&repo, Some(4)));
    let pg = Arc::new(primary_with(&repo, &command));
    let first = pg.psql("select pg_walfile_name(pg_current_wal_lsn())");
    let (writer, writing) = write_bursts(&pg);
    let mut random = kill_schedule();
    // Each wal-push seen is either spared (so that archiving moves on) or killed at a
    // random moment of its life: before, during or after its uploads and markers.
    let mut fate: BTreeMap<u32, Option<Instant>> = BTreeMap::new();
    let mut kills = 0;
    let until = Instant::now() + Duration::from_secs(12);
    while writing.load(Ordering::SeqCst) || Instant::now() < until {
        std::thread::sleep(Duration::from_millis(5));
        let pids = wal_push_pids(&pg);
        fate.retain(|pid, _| pids.contains(pid));
        for pid in pids {
            let when = *fate.entry(pid).or_insert_with(|| {
                (random(3) != 0).then(|| Instant::now() + Duration::from_millis(random(300)))
            });
            if when.is_some_and(|t| Instant::now() >= t) {
                if kill9(pid) {
                    kills += 1;
                }
                fate.insert(pid, None);
            }
        }
    }
    let (last, status, log) = catch_up(writer, &pg);
    eprintln!(
        "{kills} wal-push processes killed; {} segments pushed ahead; pg_stat_archiver: {status}",
        log.matches(" INFO pushed ahead ").count()
    );
    assert!(
        kills >= 3,
        "only {kills} wal-push killed: the test proved little"
    );

    // Every segment from the first to the last is archived and intact.
    assert_all_archived(&repo, &pg, &first, &last);
}

// ---------------------------------------------------------------------------
// Contract: a fake data directory, the binary run from it as PostgreSQL does
// ---------------------------------------------------------------------------

/// Real segments, shared by the tests of this binary.
fn real_segments() -> &'static WalSource {
    static S: OnceLock<WalSource> = OnceLock::new();
    S.get_or_init(|| WalSource::collect(8, 1000))
}

/// What these tests do with the harness's fake data directory.
trait PushAheadData {
    fn new(count: usize) -> Self;
    fn marker(&self, name: &str) -> PathBuf;
    fn command(&self, url: &str, name: &str, extra: &[&str]) -> std::process::Command;
    fn push(&self, name: &str, extra: &[&str]) -> Output;
    fn mark_done(&self, name: &str);
    fn fetch(&self, url: &str, name: &str) -> Option<Vec<u8>>;
    fn blake3(&self, name: &str) -> String;
    fn write_marker(&self, name: &str, tweak: impl FnOnce(&mut serde_json::Value));
}

impl PushAheadData for FakeData {
    /// `count` real segments in pg_wal, each `.ready`, and a fresh local-directory repository.
    fn new(count: usize) -> FakeData {
        FakeData::with_segments("padata", real_segments(), count, true)
    }

    fn marker(&self, name: &str) -> PathBuf {
        self.wal("walarchive-pushed").join(name)
    }

    fn command(&self, url: &str, name: &str, extra: &[&str]) -> std::process::Command {
        let mut c = walarchive_cmd();
        c.args(["--repo", url])
            .args(extra)
            .args(["wal-push", &format!("pg_wal/{name}")])
            .current_dir(self.data())
            .env("WALARCHIVE_RETRIES", "2");
        c
    }

    /// `wal-push pg_wal/NAME` from the data directory, as PostgreSQL runs it.
    fn push(&self, name: &str, extra: &[&str]) -> Output {
        self.command(&self.url, name, extra).output().unwrap()
    }

    /// PostgreSQL's bookkeeping after a successful archive_command.
    fn mark_done(&self, name: &str) {
        let status = self.wal("archive_status");
        fs::rename(
            status.join(format!("{name}.ready")),
            status.join(format!("{name}.done")),
        )
        .unwrap();
    }

    /// The stored object decoded with `wal-fetch` (None when absent).
    fn fetch(&self, url: &str, name: &str) -> Option<Vec<u8>> {
        let dest = self.dir.join(format!("fetched-{name}"));
        let out = run_walarchive(
            &["--repo", url, "wal-fetch", name, dest.to_str().unwrap()],
            &[],
        );
        match code(&out) {
            0 => Some(fs::read(&dest).unwrap()),
            1 => None,
            _ => panic!("wal-fetch {name}: {}", stderr(&out)),
        }
    }

    fn blake3(&self, name: &str) -> String {
        blake3::hash(&fs::read(self.wal(name)).unwrap())
            .to_hex()
            .to_string()
    }

    /// Writes a marker as walarchive does, with `tweak` applied.
    fn write_marker(&self, name: &str, tweak: impl FnOnce(&mut serde_json::Value)) {
        let mut m = serde_json::json!({
            "name": name,
            "repository": self.url,
            "blake3": self.blake3(name),
            "size": fs::metadata(self.wal(name)).unwrap().len(),
            "mtime_ns": 0,
            "stored_len": null,
            "written_at": 0,
        });
        tweak(&mut m);
        fs::create_dir_all(self.wal("walarchive-pushed")).unwrap();
        fs::write(self.marker(name), serde_json::to_vec(&m).unwrap()).unwrap();
    }
}

#[test]
fn pushes_ahead_and_answers_from_markers() {
    let f = FakeData::new(8);
    let n = &f.names;
    let out = f.push(&n[0], &["--parallel", "3"]);
    let err = stderr(assert_success(&out));
    for name in &n[1..] {
        assert!(err.contains(&format!("pushed ahead {name} (")), "{err}");
        assert!(f.marker(name).exists(), "no marker for {name}");
        assert_eq!(
            f.fetch(&f.url, name).unwrap(),
            fs::read(f.wal(name)).unwrap()
        );
    }
    assert!(!f.marker(&n[0]).exists());
    f.mark_done(&n[0]);
    for name in &n[1..] {
        let out = f.push(name, &[]);
        let err = stderr(assert_success(&out));
        assert!(
            err.contains("was archived ahead by an earlier wal-push"),
            "{err}"
        );
        assert!(!f.marker(name).exists(), "the marker of {name} stays");
        f.mark_done(name);
    }
}

/// Markers that do not match the file, the repository or the repository's content never
/// make wal-push answer 0 without storing the real content.
#[test]
fn markers_that_do_not_match_never_answer() {
    let f = FakeData::new(7);
    let n = &f.names;
    // Nothing is stored yet; every marker below is wrong in one way.
    f.write_marker(&n[0], |_| {}); // right content, but the object is not in the repository
    f.write_marker(&n[1], |m| m["blake3"] = "00".repeat(32).into());
    f.write_marker(&n[2], |m| m["repository"] = "file:///elsewhere".into());
    f.write_marker(&n[3], |m| m["name"] = n[4].clone().into());
    fs::write(f.marker(&n[4]), b"{ truncated").unwrap();
    for name in &n[..5] {
        let out = f.push(name, &["--parallel", "1"]);
        let err = stderr(assert_success(&out));
        assert!(
            !err.contains("archived ahead by an earlier"),
            "{name} answered from a bogus marker: {err}"
        );
        assert!(err.contains(&format!("archived {name} (")), "{err}");
        assert_eq!(
            f.fetch(&f.url, name).unwrap(),
            fs::read(f.wal(name)).unwrap(),
            "{name} not stored"
        );
        assert!(!f.marker(name).exists(), "the bogus marker of {name} stays");
    }

    // A marker as walarchive wrote them before WAL objects carried BLAKE3 (a "sha256" of
    // the content instead), for a segment that is stored: not trusted, the segment is
    // pushed as usual and found already stored.
    assert_success(&f.push(&n[6], &["--parallel", "1"]));
    f.write_marker(&n[6], |m| {
        let m = m.as_object_mut().unwrap();
        m.remove("blake3");
        m.insert(
            "sha256".into(),
            sha256_hex(&fs::read(f.wal(&n[6])).unwrap()).into(),
        );
    });
    let err = stderr(assert_success(&f.push(&n[6], &["--parallel", "1"])));
    assert!(!err.contains("archived ahead by an earlier"), "{err}");
    assert!(err.contains("unreadable marker"), "{err}");
    assert!(!f.marker(&n[6]).exists(), "the old marker stays");

    // A correct marker for another repository URL: that repository gets the segment.
    let other = format!("file://{}", f.dir.join("other-repo").display());
    f.write_marker(&n[5], |_| {});
    assert_success(&f.command(&other, &n[5], &[]).output().unwrap());
    assert_eq!(
        f.fetch(&other, &n[5]).unwrap(),
        fs::read(f.wal(&n[5])).unwrap()
    );

    // Pushed ahead for real, then the file changes under the same name: refused (4), and
    // the stored object is unchanged.
    let g = FakeData::new(3);
    assert_success(&g.push(&g.names[0], &[]));
    let name = &g.names[2];
    assert!(g.marker(name).exists());
    let original = fs::read(g.wal(name)).unwrap();
    let mut changed = original.clone();
    changed[700_000] ^= 0xFF;
    fs::write(g.wal(name), &changed).unwrap();
    let out = g.push(name, &[]);
    assert_code(&out, 4);
    assert!(stderr(&out).contains("ignoring the push-ahead marker"));
    assert_eq!(g.fetch(&g.url, name).unwrap(), original);

    // The repository wiped and recreated at the same URL: the marker no longer answers.
    let name = &g.names[1];
    assert!(g.marker(name).exists());
    fs::remove_dir_all(g.dir.join("repo")).unwrap();
    let out = g.push(name, &[]);
    let err = stderr(assert_success(&out));
    assert!(err.contains("the repository does not have it"), "{err}");
    assert_eq!(
        g.fetch(&g.url, name).unwrap(),
        fs::read(g.wal(name)).unwrap()
    );
}

/// Two wal-push processes at once (a restarted archiver overlapping an old one): each
/// segment is uploaded once, both succeed.
#[test]
fn overlapping_calls_upload_each_segment_once() {
    let f = FakeData::new(8);
    let n = &f.names;
    let spawn = || {
        f.command(&f.url, &n[0], &["--parallel", "2"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let outs = [a.wait_with_output().unwrap(), b.wait_with_output().unwrap()];
    let mut all = String::new();
    for out in &outs {
        all.push_str(&stderr(assert_success(out)));
    }
    let times = upload_counts(&all);
    for name in n {
        assert_eq!(times.get(name), Some(&1), "{name}: {all}");
        assert_eq!(
            f.fetch(&f.url, name).unwrap(),
            fs::read(f.wal(name)).unwrap()
        );
    }
    assert!(
        all.contains("already archived with identical content"),
        "{all}"
    );
}

/// Time to archive a backlog of ~60 ready segments with --parallel 1, 2 and 4, into a local
/// directory, the local S3 server, and that server behind 20 ms of latency per request.
/// Printed, not asserted (timings on shared machines vary); run it on its own, in release:
/// `cargo test --release --test push_ahead -- --ignored throughput --nocapture`.
#[test]
#[ignore = "a measurement: run it on its own"]
fn throughput_by_parallelism() {
    let far_s3 = Proxy::start(s3().port, Duration::from_millis(20));
    let fresh = |store: Store, far: bool| {
        let mut repo = store.fresh();
        for (k, v) in repo.env.iter_mut() {
            if far && k == "AWS_ENDPOINT" {
                *v = far_s3.url();
            }
        }
        repo
    };
    let stores = [
        ("local directory", Store::File, false),
        ("S3", Store::S3, false),
        ("S3 + 20 ms per request", Store::S3, true),
    ];
    for (what, store, far) in stores {
        let mut results = Vec::new();
        for parallel in [1u32, 2, 4] {
            let repo = fresh(store, far);
            let pg = PgCluster::init(PgOptions {
                // Archiving is paused (no command) while the backlog builds up.
                extra_conf: format!("archive_mode = on\narchive_command = ''\n{KEEP_WAL}"),
                ..Default::default()
            });
            pg.start_with_env(&repo.env);
            pg.psql("create table burst(id bigint, payload text)");
            pg.psql(BURST);
            let last = pg.switch_wal();
            let ready = fs::read_dir(pg.wal_dir().join("archive_status"))
                .unwrap()
                .filter(|e| {
                    let n = e.as_ref().unwrap().file_name();
                    n.to_string_lossy().ends_with(".ready")
                })
                .count();
            pg.psql(&format!(
                "alter system set archive_command = '{}'",
                archive_command(&repo, Some(parallel))
            ));
            let t0 = pg.psql("select pg_reload_conf(), clock_timestamp()");
            let t0 = t0.split('|').nth(1).unwrap().to_string();
            pg.wait_archived(&last, Duration::from_secs(600));
            let secs: f64 = pg
                .psql(&format!(
                    "select extract(epoch from last_archived_time - '{t0}'::timestamptz) \
                     from pg_stat_archiver"
                ))
                .parse()
                .unwrap();
            let status = pg.archiver_status();
            assert!(status.ends_with("|0"), "{status}");
            eprintln!(
                "{what}, --parallel {parallel}: {ready} ready segments archived in {secs:.2} s \
                 ({:.1} segments/s)",
                ready as f64 / secs
            );
            results.push((parallel, secs));
        }
        let base = results[0].1;
        let ratios: Vec<String> = results
            .iter()
            .map(|(p, s)| format!("--parallel {p}: {:.2}x", base / s))
            .collect();
        eprintln!("{what}: speed-up over --parallel 1: {}", ratios.join(", "));
    }
}
