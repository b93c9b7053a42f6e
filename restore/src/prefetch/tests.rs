use super::*;
use object_store::memory::InMemory;
use object_store::path::Path as ObjPath;
use std::fs::OpenOptions;
use std::sync::Arc;
use std::time::SystemTime;
use walarchive::storage::Backend;
use walarchive::{Compression, RetryPolicy, TimelineId};

const SIZE: u64 = 1 << 20;

async fn repo() -> Repository {
    let r = Repository::with_store(
        Arc::new(InMemory::new()),
        ObjPath::from("p"),
        Backend::Local,
        "memory://t",
        RetryPolicy::default(),
        Compression::default(),
    );
    let d = walarchive::Descriptor {
        format_version: 1,
        system_identifier: "1".into(),
        pg_version: Some(15),
        wal_page_magic: 0xD110,
        wal_segment_size: SIZE,
        created_at: 0,
        created_by: "test".into(),
    };
    r.ensure_descriptor(&d, "test").await.unwrap();
    r
}

fn seg(tli: u32, n: u64) -> SegmentName {
    SegmentName::from_segment_number(TimelineId(tli), n, SIZE)
}

/// A segment of cluster 1: a valid long page header for `s`, then a pattern.
fn content(s: SegmentName) -> Vec<u8> {
    let tag = s.to_string().into_bytes();
    let mut b: Vec<u8> = tag.iter().copied().cycle().take(SIZE as usize).collect();
    b[..40].fill(0);
    b[0..2].copy_from_slice(&0xD110u16.to_le_bytes());
    b[2..4].copy_from_slice(&0x0002u16.to_le_bytes());
    b[4..8].copy_from_slice(&s.timeline.0.to_le_bytes());
    b[8..16].copy_from_slice(&s.start_lsn(SIZE).0.to_le_bytes());
    b[24..32].copy_from_slice(&1u64.to_le_bytes());
    b[32..36].copy_from_slice(&(SIZE as u32).to_le_bytes());
    b[36..40].copy_from_slice(&8192u32.to_le_bytes());
    b
}

async fn archive(r: &Repository, s: SegmentName) {
    let key = Repository::wal_key(&WalFileName::Segment(s));
    r.put_new(&key, &content(s), Compression::Lz4)
        .await
        .unwrap();
}

/// A data directory in recovery: `<tmp>/data/pg_wal`, `recovery.signal`.
struct DataDir {
    _tmp: tempfile::TempDir,
    data: PathBuf,
}

impl DataDir {
    fn new(signal: bool) -> DataDir {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        fs::create_dir_all(data.join("pg_wal")).unwrap();
        if signal {
            fs::write(data.join("recovery.signal"), b"").unwrap();
        }
        DataDir { _tmp: tmp, data }
    }
    fn dest(&self) -> PathBuf {
        self.data.join("pg_wal/RECOVERYXLOG")
    }
    fn dir(&self) -> PrefetchDir {
        PrefetchDir::for_destination(&self.dest()).unwrap()
    }
    fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(self.dir().path())
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().into_string().unwrap())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
    fn job(&self, after: SegmentName, depth: usize) -> WorkerJob {
        WorkerJob {
            after,
            segment_size: SIZE,
            dir: self.dir(),
            opts: PrefetchOptions {
                depth,
                parallel: 2,
                inline: false,
            },
            idle: Duration::ZERO,
        }
    }
}

const ON: PrefetchOptions = PrefetchOptions {
    depth: 3,
    parallel: 2,
    inline: false,
};

#[test]
fn names() {
    let s = seg(1, 5);
    let key = key_for(s, &Digest::blake3(b"x"));
    assert_eq!(classify(&format!("{s}.{key}")), Entry::Final(s));
    assert_eq!(classify(&format!(".{s}.123.tmp")), Entry::Temp(s, 123));
    assert_eq!(classify(".position"), Entry::Position);
    assert_eq!(classify(".lock"), Entry::Lock);
    assert_eq!(classify(".purge"), Entry::Purge);
    for other in [
        s.to_string(),
        format!("{s}.{}", &key[..63]),
        format!("{s}.{}", key.to_uppercase()),
        format!("{s}.partial"),
        "00000002.history".into(),
        ".x.tmp".into(),
        format!(".{s}.tmp"),
    ] {
        assert_eq!(classify(&other), Entry::Other, "{other}");
    }
    // The key binds the name: the same content under another segment or timeline differs.
    let d = Digest::blake3(b"x");
    assert_ne!(key_for(seg(1, 5), &d), key_for(seg(2, 5), &d));
    assert_ne!(key_for(seg(1, 5), &d), key_for(seg(1, 6), &d));
    assert_eq!(
        PrefetchDir::for_destination(Path::new("pg_wal/RECOVERYXLOG")),
        Some(PrefetchDir {
            dir: PathBuf::from("pg_wal/walarchive-prefetch"),
            data_dir: PathBuf::from("."),
        })
    );
    assert_eq!(PrefetchDir::for_destination(Path::new("/tmp/x/seg")), None);
    assert_eq!(
        PrefetchDir::for_destination(Path::new("RECOVERYXLOG")),
        None
    );
}

#[tokio::test]
async fn prefetches_serves_and_never_serves_unverified_files() {
    let r = repo().await;
    for n in 1..=5 {
        archive(&r, seg(1, n)).await;
    }
    let d = DataDir::new(true);
    let stats = run_worker(&r, &d.job(seg(1, 1), 3)).await;
    assert_eq!((stats.fetched, stats.errors), (3, 0), "{stats:?}");
    assert!(!stats.end_of_archive);
    let names = d.names();
    assert_eq!(names.len(), 4, "{names:?}"); // .lock + segments 2, 3, 4
    assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");

    // Served from the prefetch directory, content exact, file moved.
    let rep = fetch(&r, &seg(1, 2).to_string(), &d.dest(), &ON)
        .await
        .unwrap();
    assert_eq!(rep.source, Source::Prefetch);
    assert_eq!(fs::read(d.dest()).unwrap(), content(seg(1, 2)));
    let finals: Vec<String> = d
        .names()
        .into_iter()
        .filter(|n| !n.starts_with('.'))
        .collect();
    assert_eq!(finals.len(), 2, "{finals:?}");

    // Truncated after its download: discarded, fetched from the repository instead.
    let three = d.dir().path().join(
        d.names()
            .into_iter()
            .find(|n| n.starts_with(&seg(1, 3).to_string()))
            .unwrap(),
    );
    let f = OpenOptions::new().write(true).open(&three).unwrap();
    f.set_len(SIZE / 2).unwrap();
    drop(f);
    let rep = fetch(&r, &seg(1, 3).to_string(), &d.dest(), &ON)
        .await
        .unwrap();
    assert_eq!(rep.source, Source::Repository);
    assert_eq!(fs::read(d.dest()).unwrap(), content(seg(1, 3)));
    assert!(!three.exists(), "the damaged file is removed");

    // Full length but one byte changed: the same.
    let four_name = d
        .names()
        .into_iter()
        .find(|n| n.starts_with(&seg(1, 4).to_string()))
        .unwrap();
    let four = d.dir().path().join(&four_name);
    let mut bytes = fs::read(&four).unwrap();
    // Renamed to timeline 2's segment of the same number: never served for it.
    let key = &four_name[25..];
    let renamed = d.dir().path().join(format!("{}.{key}", seg(2, 4)));
    fs::write(&renamed, &bytes).unwrap();
    let e = fetch(&r, &seg(2, 4).to_string(), &d.dest(), &ON)
        .await
        .unwrap_err();
    assert!(matches!(e, FetchError::NotFound(_)), "{e}");
    assert!(!renamed.exists());
    bytes[1000] ^= 1;
    fs::write(&four, &bytes).unwrap();
    let rep = fetch(&r, &seg(1, 4).to_string(), &d.dest(), &ON)
        .await
        .unwrap();
    assert_eq!(rep.source, Source::Repository);
    assert_eq!(fs::read(d.dest()).unwrap(), content(seg(1, 4)));

    // A file whose name and key match its content, but whose content is another
    // segment's (what a worker that checked nothing would leave): its page header
    // says so, and it is not served.
    let six = content(seg(1, 7));
    let digest = walarchive::format::Digest::blake3(&six);
    let planted = d
        .dir()
        .path()
        .join(format!("{}.{}", seg(1, 6), key_for(seg(1, 6), &digest)));
    fs::write(&planted, &six).unwrap();
    archive(&r, seg(1, 6)).await;
    let rep = fetch(&r, &seg(1, 6).to_string(), &d.dest(), &ON)
        .await
        .unwrap();
    assert_eq!(rep.source, Source::Repository);
    assert_eq!(fs::read(d.dest()).unwrap(), content(seg(1, 6)));
    assert!(!planted.exists());

    // Another cluster's segment 8 (its page address right, its system identifier not),
    // named and keyed for its content: not served, fetched from the repository instead.
    let mut foreign = content(seg(1, 8));
    foreign[24..32].copy_from_slice(&7u64.to_le_bytes());
    let digest = walarchive::format::Digest::blake3(&foreign);
    let planted = d
        .dir()
        .path()
        .join(format!("{}.{}", seg(1, 8), key_for(seg(1, 8), &digest)));
    fs::write(&planted, &foreign).unwrap();
    archive(&r, seg(1, 8)).await;
    let rep = fetch(&r, &seg(1, 8).to_string(), &d.dest(), &ON)
        .await
        .unwrap();
    assert_eq!(rep.source, Source::Repository);
    assert_eq!(fs::read(d.dest()).unwrap(), content(seg(1, 8)));
    assert!(!planted.exists());

    // A complete copy under a temporary name is never served.
    let five = d.dir().path().join(temp_name(seg(1, 5), 1));
    fs::write(&five, content(seg(2, 5))).unwrap();
    let rep = fetch(&r, &seg(1, 5).to_string(), &d.dest(), &ON)
        .await
        .unwrap();
    assert_eq!(rep.source, Source::Repository);
    assert_eq!(fs::read(d.dest()).unwrap(), content(seg(1, 5)));
}

#[tokio::test]
async fn sweeps_stale_files_and_stops_at_the_end_of_the_archive() {
    let r = repo().await;
    for n in 1..=4 {
        archive(&r, seg(1, n)).await;
        archive(&r, seg(2, n)).await;
    }
    let d = DataDir::new(true);
    run_worker(&r, &d.job(seg(1, 1), 2)).await;
    let old: Vec<String> = d.names();
    assert_eq!(old.len(), 3, "{old:?}");
    // Leftovers of a killed worker, a file too old, and something unknown.
    let dir = d.dir().path().to_path_buf();
    fs::write(dir.join(format!(".{}.999.tmp", seg(2, 3))), b"partial").unwrap();
    fs::write(dir.join("junk"), b"?").unwrap();
    let aged = dir.join(
        old.iter()
            .find(|n| n.contains(&seg(1, 3).to_string()))
            .unwrap(),
    );
    File::options()
        .write(true)
        .open(&aged)
        .unwrap()
        .set_modified(SystemTime::now() - STALE_AFTER - Duration::from_secs(1))
        .unwrap();
    // Recovery switched to timeline 2 at segment 2: timeline 1's files go.
    let stats = run_worker(&r, &d.job(seg(2, 2), 4)).await;
    assert_eq!(stats.fetched, 2, "{stats:?}"); // 3 and 4; 5 is missing
    assert!(stats.end_of_archive);
    assert_eq!(stats.removed, 2, "{stats:?}");
    let names = d.names();
    assert_eq!(names.len(), 4, "{names:?}");
    assert!(
        names[2..].iter().all(|n| n.starts_with("00000002")),
        "{names:?}"
    );
    assert_eq!(
        d.dir().end(),
        Some(seg(2, 5)),
        "the end of the archive is noted"
    );
    // Served ones leave; a later worker starts after the segment asked for last.
    fetch(&r, &seg(2, 3).to_string(), &d.dest(), &ON)
        .await
        .unwrap();
    let stats = run_worker(&r, &d.job(seg(2, 2), 4)).await;
    assert_eq!((stats.fetched, stats.removed), (0, 0), "{stats:?}");

    // The end of recovery (no newer timeline) empties the directory.
    let e = fetch(&r, "00000003.history", &d.dest(), &ON)
        .await
        .unwrap_err();
    assert!(matches!(e, FetchError::NotFound(_)), "{e}");
    assert!(!d.dir().path().exists());
}

#[tokio::test]
async fn only_in_recovery_and_only_when_enabled() {
    let r = repo().await;
    for n in 1..=3 {
        archive(&r, seg(1, n)).await;
    }
    let d = DataDir::new(false);
    fs::create_dir_all(d.dir().path()).unwrap();
    let stats = run_worker(&r, &d.job(seg(1, 1), 2)).await;
    assert_eq!(stats.fetched, 0);
    assert!(!d.dir().path().exists(), "removed outside recovery");

    // With prefetching off, a prefetched file is not even looked at.
    let d = DataDir::new(true);
    run_worker(&r, &d.job(seg(1, 1), 2)).await;
    let off = PrefetchOptions {
        depth: 0,
        parallel: 2,
        inline: false,
    };
    let rep = fetch(&r, &seg(1, 2).to_string(), &d.dest(), &off)
        .await
        .unwrap();
    assert_eq!(rep.source, Source::Repository);
    assert_eq!(d.names().len(), 3);
    // Without WALARCHIVE_PREFETCH_WORKER, this process is no worker; with it, a worker
    // for the segment it names only.
    let name = seg(1, 2).to_string();
    assert_eq!(worker_job(&name, &d.dest(), &ON, None), None);
    let value = format!("{name}:{}", 16 << 20);
    let job = worker_job(&name, &d.dest(), &ON, Some(&value)).unwrap();
    assert_eq!((job.after, job.segment_size), (seg(1, 2), 16 << 20));
    let other = format!("{}:{}", seg(1, 3), 16 << 20);
    assert_eq!(worker_job(&name, &d.dest(), &ON, Some(&other)), None);
}

#[tokio::test]
async fn waits_for_a_download_in_progress_only() {
    let r = repo().await;
    let d = DataDir::new(true);
    let dir = d.dir().path().to_path_buf();
    fs::create_dir_all(&dir).unwrap();
    let s = seg(1, 7); // not in the repository: only the "worker" has it
    let tmp = dir.join(temp_name(s, 12345));
    fs::write(&tmp, b"").unwrap();
    // No worker holds the lock: a leftover, not waited for.
    let started = Instant::now();
    let e = fetch(&r, &s.to_string(), &d.dest(), &ON).await.unwrap_err();
    assert!(matches!(e, FetchError::NotFound(_)), "{e}");
    assert!(started.elapsed() < Duration::from_secs(1));
    // A "worker" holds the lock and completes the download after 300 ms.
    let lock = File::create(dir.join(LOCK_NAME)).unwrap();
    lock.lock().unwrap();
    // Another process's temporary file is not this worker's download.
    fs::write(dir.join(LOCK_NAME), b"999").unwrap();
    let started = Instant::now();
    let e = fetch(&r, &s.to_string(), &d.dest(), &ON).await.unwrap_err();
    assert!(matches!(e, FetchError::NotFound(_)), "{e}");
    assert!(started.elapsed() < Duration::from_secs(1));
    fs::write(dir.join(LOCK_NAME), b"12345").unwrap();
    let worker = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        let c = content(s);
        fs::write(&tmp, &c).unwrap();
        let key = key_for(s, &Digest::blake3(&c));
        fs::rename(&tmp, tmp.with_file_name(format!("{s}.{key}"))).unwrap();
        drop(lock);
    });
    let started = Instant::now();
    let rep = fetch(&r, &s.to_string(), &d.dest(), &ON).await.unwrap();
    assert_eq!(rep.source, Source::Prefetch);
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert_eq!(fs::read(d.dest()).unwrap(), content(s));
    worker.join().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_follows_recovery_to_the_end_of_the_archive() {
    let r = repo().await;
    for n in 1..=12 {
        archive(&r, seg(1, n)).await;
    }
    let d = DataDir::new(true);
    let mut job = d.job(seg(1, 1), 3);
    job.idle = Duration::from_secs(5);
    let worker = tokio::spawn({
        let (r, job) = (r.clone(), job.clone());
        async move { run_worker(&r, &job).await }
    });
    let mut served = 0;
    for n in 2..=12 {
        let rep = fetch(&r, &seg(1, n).to_string(), &d.dest(), &ON)
            .await
            .unwrap();
        assert_eq!(fs::read(d.dest()).unwrap(), content(seg(1, n)));
        served += usize::from(rep.source == Source::Prefetch);
    }
    let stats = worker.await.unwrap();
    assert!(stats.end_of_archive, "{stats:?}");
    assert_eq!(stats.errors, 0, "{stats:?}");
    assert!(served >= 8, "only {served} of 11 served, {stats:?}");
    assert!(stats.fetched <= 11, "{stats:?}");
    assert!(d.names().iter().all(|n| !n.ends_with(".tmp")));
}
