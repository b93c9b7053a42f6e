//! Bursts of WAL archived by a real primary with 1 MiB segments, and what is checked after
//! them, and a fake data directory to run `wal-push` from: shared by tests/daemon.rs and
//! tests/push_ahead.rs.

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::{PgCluster, PgOptions, Repo, TestDir, WalSource};

/// Keep archived segments in pg_wal, to compare them with the repository's copies.
pub const KEEP_WAL: &str = "wal_keep_size = 1024MB\n";

/// About 60 MiB of WAL in one statement (≈ 60 segments of 1 MiB).
pub const BURST: &str = "insert into burst select g, repeat(md5(g::text), 4) \
                         from generate_series(1, 330000) g";

/// A primary archiving into `repo` with `command` as archive_command.
pub fn primary_with(repo: &Repo, command: &str) -> PgCluster {
    let pg = PgCluster::init(PgOptions {
        extra_conf: format!("archive_mode = on\narchive_command = '{command}'\n{KEEP_WAL}"),
        ..Default::default()
    });
    pg.start_with_env(&repo.env);
    pg.psql("create table burst(id bigint, payload text)");
    pg
}

/// Segment names of the uploads walarchive logged (into PostgreSQL's log, or its stderr):
/// `archived NAME (` when a wal-push stored it for PostgreSQL's own request, `pushed ahead
/// NAME (` for segments pushed ahead, the daemon's `pushed NAME (`, and `archived NAME
/// through the walarchive daemon (` when the daemon stored it for a client's request.
pub fn uploads(log: &str) -> Vec<String> {
    let mut names = Vec::new();
    for line in log.lines() {
        let Some((_, msg)) = line.split_once(" INFO ") else {
            continue;
        };
        let rest = msg
            .strip_prefix("pushed ahead ")
            .or_else(|| msg.strip_prefix("pushed "))
            .or_else(|| msg.strip_prefix("archived "));
        if let Some(rest) = rest {
            if rest.len() > 26 && (&rest[24..26] == " (" || rest[24..].starts_with(" through")) {
                names.push(rest[..24].to_string());
            }
        }
    }
    names
}

/// How many times each segment was uploaded, from the log ([`uploads`]).
pub fn upload_counts(log: &str) -> BTreeMap<String, usize> {
    let mut times: BTreeMap<String, usize> = BTreeMap::new();
    for name in uploads(log) {
        *times.entry(name).or_default() += 1;
    }
    times
}

/// walarchive's counters for `pg` (walarchive-metrics.json in pg_wal).
pub fn counters(pg: &PgCluster) -> serde_json::Value {
    let text = fs::read_to_string(pg.wal_dir().join("walarchive-metrics.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// A burst archived by [`archive_burst`].
pub struct Burst {
    /// Every segment PostgreSQL marked archived (`.done`).
    pub done: Vec<String>,
    /// How many of them came after the LSN the burst started from.
    pub in_burst: usize,
    /// How long writing the burst took.
    pub burst_time: Duration,
    /// PostgreSQL's log.
    pub log: String,
    /// Uploads per segment ([`upload_counts`] of the log).
    pub times: BTreeMap<String, usize>,
}

/// Writes a [`BURST`] on `pg` and waits until the switch after it is archived; asserts that
/// the archiver never failed, that at least 50 segments came after `first_lsn`, that every
/// archived segment is intact in `repo` and was uploaded exactly once.
pub fn archive_burst(repo: &Repo, pg: &PgCluster, first_lsn: &str) -> Burst {
    let t = Instant::now();
    pg.psql(BURST);
    let burst_time = t.elapsed();
    let last = pg.switch_wal();
    pg.wait_archived(&last, Duration::from_secs(300));
    let status = pg.archiver_status();
    assert!(
        status.ends_with("|0"),
        "pg_stat_archiver failures: {status}"
    );

    let done = pg.done_segments();
    let first = pg.psql(&format!("select pg_walfile_name('{first_lsn}')"));
    let in_burst = done.iter().filter(|n| **n >= first).count();
    assert!(
        in_burst >= 50,
        "the burst produced only {in_burst} segments"
    );
    repo.assert_archived_intact(pg, &done);

    // Each segment was uploaded exactly once.
    let log = pg.log();
    let times = upload_counts(&log);
    for name in &done {
        assert_eq!(times.get(name), Some(&1), "{name} uploads: {times:?}");
    }
    Burst {
        done,
        in_burst,
        burst_time,
        log,
        times,
    }
}

/// Writes three [`BURST`]s on `pg` in a thread; the flag turns false when they are written.
pub fn write_bursts(pg: &Arc<PgCluster>) -> (JoinHandle<()>, Arc<AtomicBool>) {
    let writing = Arc::new(AtomicBool::new(true));
    let (pg, flag) = (pg.clone(), writing.clone());
    let writer = std::thread::spawn(move || {
        for _ in 0..3 {
            pg.psql(BURST);
        }
        flag.store(false, Ordering::SeqCst);
    });
    (writer, writing)
}

/// After [`write_bursts`] and the kills: waits for the writer, then (no more kills:
/// PostgreSQL catches up on its own, a switch wakes the archiver) until the segment after
/// the bursts is archived. That segment, pg_stat_archiver's status and PostgreSQL's log.
pub fn catch_up(writer: JoinHandle<()>, pg: &PgCluster) -> (String, String, String) {
    writer.join().unwrap();
    let last = pg.switch_wal();
    pg.wait_archived(&last, Duration::from_secs(400));
    (last, pg.archiver_status(), pg.log())
}

/// A random number generator for a kill schedule (xorshift, seeded from the clock; the
/// seed is printed): `random(below)` is in `0..below`.
pub fn kill_schedule() -> impl FnMut(u64) -> u64 {
    let mut seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64
        | 1;
    eprintln!("kill schedule seed {seed}");
    move |below: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % below
    }
}

/// `kill -9 pid`; whether the signal was delivered.
pub fn kill9(pid: u32) -> bool {
    std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
}

/// Every segment from `first` to `last` (names of 1 MiB segments: 4096 of them per 4 GiB
/// "log") is archived (`.done`) and intact in `repo`, and there are at least 150.
pub fn assert_all_archived(repo: &Repo, pg: &PgCluster, first: &str, last: &str) {
    let done = pg.done_segments();
    let segno = |s: &str| {
        let part = |r: std::ops::Range<usize>| u64::from_str_radix(&s[r], 16).unwrap();
        part(8..16) * 4096 + part(16..24)
    };
    let tli = &first[..8];
    let expected: Vec<String> = (segno(first)..=segno(last))
        .map(|i| format!("{tli}{:08X}{:08X}", i / 4096, i % 4096))
        .collect();
    for name in &expected {
        assert!(done.contains(name), "{name} is not archived (.done)");
    }
    assert!(expected.len() >= 150, "only {} segments", expected.len());
    repo.assert_archived_intact(pg, &expected);
}

/// A data directory with real segments in `pg_wal/` and a fresh local-directory repository,
/// to run walarchive from as PostgreSQL does.
pub struct FakeData {
    pub dir: TestDir,
    pub url: String,
    /// The segments in pg_wal, in order.
    pub names: Vec<String>,
}

impl FakeData {
    /// The first `count` segments of `src` in pg_wal, each `.ready` when `ready` says so
    /// (else each test decides); `kind` names the directory (`walarchive-KIND-...`).
    pub fn with_segments(kind: &str, src: &WalSource, count: usize, ready: bool) -> FakeData {
        let dir = TestDir::new(&format!("walarchive-{kind}-"));
        fs::create_dir_all(dir.join("data/pg_wal/archive_status")).unwrap();
        let url = format!("file://{}", dir.join("repo").display());
        let names: Vec<String> = src.segments[..count].to_vec();
        let fake = FakeData { dir, url, names };
        for n in &fake.names {
            fs::copy(src.path(n), fake.wal(n)).unwrap();
            if ready {
                fake.ready(n);
            }
        }
        fake
    }

    pub fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn wal(&self, name: &str) -> PathBuf {
        self.data().join("pg_wal").join(name)
    }

    /// Marks segment `name` ready for archiving, as PostgreSQL does.
    pub fn ready(&self, name: &str) {
        fs::write(self.wal(&format!("archive_status/{name}.ready")), b"").unwrap();
    }
}
