//! The prefetch worker: when to start one, and what it does (follows recovery's `.position`,
//! keeps the window after it downloaded `--parallel` at a time, sweeps what falls out of it,
//! notes the end of the archive in `.end`), as `prefetch`'s module documentation explains.
//!
//! Its own room because it is the other side of the prefetch directory: `prefetch` holds
//! the directory's layout and the request side (answering `wal-fetch` from it, serving only
//! verified files); this module only fills the directory.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::Write;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use walarchive::format::DigestKind;
use walarchive::wal::is_valid_segment_size;
use walarchive::{Repository, SegmentName, WalFileName};

use super::{
    classify, key_for, temp_name, Entry, PrefetchDir, PrefetchOptions, END_NAME, FOLLOW_IDLE,
    INLINE_ENV, LOCK_NAME, POLL, STALE_AFTER, WORKER_ENV,
};
use crate::{FetchError, FetchReport};

/// What a prefetch worker is to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerJob {
    /// The segment just restored: the window starts after it.
    pub after: SegmentName,
    /// WAL segment size (the restored segment's length).
    pub segment_size: u64,
    /// Where to put the downloads.
    pub dir: PrefetchDir,
    /// Window and concurrency.
    pub opts: PrefetchOptions,
    /// How long the worker waits for PostgreSQL to ask for another segment before exiting.
    pub idle: Duration,
}

/// The job of this process, when it was started as a prefetch worker for `wal-fetch name dest`:
/// `worker` is the value of [`WORKER_ENV`] (which the binary reads), if set.
pub fn worker_job(
    name: &str,
    dest: &Path,
    opts: &PrefetchOptions,
    worker: Option<&str>,
) -> Option<WorkerJob> {
    let value = worker?;
    let (seg, size) = value.split_once(':')?;
    if seg != name || opts.depth == 0 {
        return None;
    }
    let segment_size: u64 = size.parse().ok()?;
    Some(WorkerJob {
        after: seg.parse().ok()?,
        segment_size: is_valid_segment_size(segment_size).then_some(segment_size)?,
        dir: PrefetchDir::for_destination(dest)?,
        opts: *opts,
        idle: FOLLOW_IDLE,
    })
}

/// After restoring `report` to `dest`: starts a worker to download ahead when fewer than half
/// of the next `opts.depth` segments are prefetched and no worker runs (or, with
/// `opts.inline`, downloads them in this process). Never fails: problems are logged.
pub async fn read_ahead(
    repo: &Repository,
    report: &FetchReport,
    dest: &Path,
    opts: &PrefetchOptions,
) {
    let WalFileName::Segment(after) = report.name else {
        return;
    };
    if opts.depth == 0 || !is_valid_segment_size(report.len) {
        return;
    }
    let Some(dir) = PrefetchDir::for_destination(dest) else {
        return;
    };
    if !dir.in_recovery() {
        return;
    }
    let job = WorkerJob {
        after,
        segment_size: report.len,
        dir,
        opts: *opts,
        idle: FOLLOW_IDLE,
    };
    // The segments of the window that the repository may have (a worker found the end of the
    // archive: a standby's archive grows, so only until it is reached), and how many are
    // missing here: a worker is started once half of them are.
    let n = after.segment_number(job.segment_size);
    let wanted = match job.dir.end() {
        Some(end) if end.timeline == after.timeline && end > after => {
            (end.segment_number(job.segment_size) - n - 1).min(job.opts.depth as u64) as usize
        }
        _ => job.opts.depth,
    };
    let missing = wanted.saturating_sub(present_in_window(&job));
    if missing == 0 || missing * 2 < wanted || job.dir.worker_running() {
        return;
    }
    if opts.inline {
        // One window, without following: PostgreSQL waits for this process.
        let job = WorkerJob {
            idle: Duration::ZERO,
            ..job
        };
        run_worker(repo, &job).await;
        return;
    }
    if let Err(e) = spawn_worker(&job) {
        tracing::warn!("cannot start the prefetch worker: {e}");
    }
}

/// The final files of the job's window.
fn in_window(job: &WorkerJob) -> BTreeSet<SegmentName> {
    let Ok(entries) = fs::read_dir(&job.dir.dir) else {
        return BTreeSet::new();
    };
    let window = Window::new(job.after, job.segment_size, job.opts.depth);
    entries
        .flatten()
        .filter_map(|e| match classify(e.file_name().to_str()?) {
            Entry::Final(seg) if window.contains(seg) => Some(seg),
            _ => None,
        })
        .collect()
}

fn present_in_window(job: &WorkerJob) -> usize {
    in_window(job).len()
}

/// The `depth` segments after `after`, on its timeline (for sweeping: `after` too, which a
/// request may be serving right now).
struct Window {
    timeline: walarchive::TimelineId,
    first: u64,
    last: u64,
    size: u64,
}

impl Window {
    fn new(after: SegmentName, size: u64, depth: usize) -> Window {
        let n = after.segment_number(size);
        Window {
            timeline: after.timeline,
            first: n + 1,
            last: n + depth as u64,
            size,
        }
    }

    fn contains(&self, seg: SegmentName) -> bool {
        seg.timeline == self.timeline
            && (self.first..=self.last).contains(&seg.segment_number(self.size))
    }

    /// Whether a sweep keeps `seg`: in the window, or `after` itself.
    fn keeps(&self, seg: SegmentName) -> bool {
        seg.timeline == self.timeline
            && (self.first - 1..=self.last).contains(&seg.segment_number(self.size))
    }
}

/// Starts this program again, with the same arguments, as a worker for `job`. It keeps
/// stderr (PostgreSQL's log) and this process group; it is not waited for.
fn spawn_worker(job: &WorkerJob) -> std::io::Result<()> {
    let exe = std::env::current_exe()?;
    std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env(WORKER_ENV, format!("{}:{}", job.after, job.segment_size))
        .env_remove(INLINE_ENV)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()
        .map(|_child| ())
}

/// What one worker run did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WorkerStats {
    /// Segments downloaded and placed.
    pub fetched: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Stale or foreign files removed.
    pub removed: u64,
    /// Downloads that failed (logged).
    pub errors: u64,
    /// Another worker held the lock: nothing done.
    pub busy: bool,
    /// The repository lacks a segment of the window (end of the timeline's archive).
    pub end_of_archive: bool,
}

/// Runs a prefetch worker: logs what it did; never fails.
pub async fn run_worker(repo: &Repository, job: &WorkerJob) -> WorkerStats {
    let started = Instant::now();
    match work(repo, job).await {
        Ok(s) => {
            if s.fetched > 0 {
                tracing::info!(
                    "prefetched {} segment(s) after {} ({} bytes) in {:.0?}",
                    s.fetched,
                    job.after,
                    s.bytes,
                    started.elapsed()
                );
            } else {
                tracing::debug!("prefetch after {}: {s:?}", job.after);
            }
            s
        }
        Err(e) => {
            tracing::warn!(
                "prefetching after {} in {}: {e}",
                job.after,
                job.dir.dir.display()
            );
            WorkerStats {
                errors: 1,
                ..Default::default()
            }
        }
    }
}

enum Downloaded {
    /// Its length and final path.
    Placed(u64, PathBuf),
    Missing,
}

async fn work(repo: &Repository, job: &WorkerJob) -> std::io::Result<WorkerStats> {
    let dir = &job.dir;
    let size = job.segment_size;
    let depth = job.opts.depth as u64;
    let mut stats = WorkerStats::default();
    if !dir.in_recovery() {
        dir.remove();
        return Ok(stats);
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir.dir)?;
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.dir.join(LOCK_NAME))?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            stats.busy = true;
            return Ok(stats);
        }
        Err(TryLockError::Error(e)) => return Err(e),
    }
    // Requests wait only for this worker's temporary files, not for leftovers.
    lock.set_len(0)?;
    (&lock).write_all(std::process::id().to_string().as_bytes())?;
    // A purge asked of an earlier worker that had already finished.
    let purge_first = dir.purge_requested();

    // Follow PostgreSQL: its latest request (the position file requests write, else the one
    // that started this worker) is `at`; the `depth` segments after it on its timeline are
    // kept downloaded, `parallel` at a time. When it moves to another timeline, or back, the
    // window moves with it. The worker exits when the requests stop moving for `job.idle`,
    // when the archive ends, when a purge is asked, or when recovery ends.
    let mut at = dir
        .position()
        .filter(|p| p.timeline == job.after.timeline && p > &job.after)
        .unwrap_or(job.after);
    let mut ours = sweep(
        dir,
        &Window::new(at, size, job.opts.depth),
        purge_first,
        &mut stats,
    )?;
    let mut scheduled = at.segment_number(size);
    let mut moved = Instant::now();
    let mut first_missing: Option<SegmentName> = None;
    let parallel = job.opts.parallel.max(1);
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        if dir.purge_requested() || !dir.in_recovery() {
            break;
        }
        if let Some(p) = dir.position().filter(|p| *p != at) {
            moved = Instant::now();
            let n = p.segment_number(size);
            if p.timeline != at.timeline || p < at {
                // A timeline switch, or recovery started again further back.
                ours = sweep(
                    dir,
                    &Window::new(p, size, job.opts.depth),
                    false,
                    &mut stats,
                )?;
                scheduled = n;
                stats.end_of_archive = false;
                first_missing = None;
            } else {
                ours.retain(|s| *s > p);
                scheduled = scheduled.max(n);
            }
            at = p;
        }
        let last = at.segment_number(size) + depth;
        while !stats.end_of_archive && tasks.len() < parallel && scheduled < last {
            scheduled += 1;
            let seg = SegmentName::from_segment_number(at.timeline, scheduled, size);
            if ours.contains(&seg) {
                continue;
            }
            let (repo, d) = (repo.clone(), dir.dir.clone());
            tasks.spawn(async move { (seg, download(&repo, &d, seg, size).await) });
        }
        if tasks.is_empty() {
            if stats.end_of_archive || moved.elapsed() >= job.idle {
                break;
            }
            tokio::time::sleep(POLL * 2).await;
        } else if let Ok(Some(r)) = tokio::time::timeout(POLL * 2, tasks.join_next()).await {
            if let Ok((seg, Ok(Downloaded::Missing))) = &r {
                // The first segment missing (concurrent downloads finish in any order).
                if first_missing.is_none_or(|m| *seg < m) {
                    first_missing = Some(*seg);
                    let _ = fs::write(dir.dir.join(END_NAME), seg.to_string());
                }
            }
            if let Some((seg, path)) = record(r, &mut stats) {
                if seg.timeline == at.timeline {
                    ours.insert(seg);
                } else {
                    // Downloaded for the timeline recovery has just left.
                    let _ = fs::remove_file(path);
                    stats.removed += 1;
                }
            }
        }
    }
    // Stopped early (purge, end of recovery): let the downloads under way finish, so that no
    // temporary file outlives this worker.
    while let Some(r) = tasks.join_next().await {
        record(r, &mut stats);
    }
    // After releasing the lock, so that a purge asked while this worker held it is not missed
    // (see `PrefetchDir::purge`).
    drop(lock);
    if dir.purge_requested() || !dir.in_recovery() {
        dir.remove();
    }
    Ok(stats)
}

type TaskResult = Result<(SegmentName, Result<Downloaded, FetchError>), tokio::task::JoinError>;

/// Counts a finished download; returns the segment and its file when it was placed.
fn record(r: TaskResult, stats: &mut WorkerStats) -> Option<(SegmentName, PathBuf)> {
    match r {
        Ok((seg, Ok(Downloaded::Placed(len, path)))) => {
            stats.fetched += 1;
            stats.bytes += len;
            return Some((seg, path));
        }
        Ok((_, Ok(Downloaded::Missing))) => stats.end_of_archive = true,
        Ok((seg, Err(e))) => {
            stats.errors += 1;
            tracing::warn!("cannot prefetch {seg}: {e}");
        }
        Err(e) => {
            stats.errors += 1;
            tracing::warn!("prefetch task failed: {e}");
        }
    }
    None
}

/// Removes what must not stay (see the module documentation); returns the segments of the
/// window that are there.
fn sweep(
    dir: &PrefetchDir,
    window: &Window,
    everything: bool,
    stats: &mut WorkerStats,
) -> std::io::Result<BTreeSet<SegmentName>> {
    let now = SystemTime::now();
    let mut present = BTreeSet::new();
    for entry in fs::read_dir(&dir.dir)? {
        let entry = entry?;
        let file_name = entry.file_name();
        let kind = file_name.to_str().map_or(Entry::Other, classify);
        let meta = match entry.metadata() {
            Ok(m) => m,
            // Served meanwhile.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let keep = match kind {
            Entry::Lock | Entry::Position => true,
            Entry::Purge => !everything,
            Entry::Final(seg) => {
                let fresh = meta
                    .modified()
                    .ok()
                    .and_then(|m| now.duration_since(m).ok())
                    .is_some_and(|age| age < STALE_AFTER);
                let keep = !everything && meta.is_file() && fresh && window.keeps(seg);
                if keep {
                    present.insert(seg);
                }
                keep
            }
            // Under the lock, another process's temporary file is a killed worker's.
            Entry::Temp(_, pid) => pid == std::process::id(),
            Entry::Other => false,
        };
        if keep || meta.is_dir() {
            continue;
        }
        match fs::remove_file(entry.path()) {
            Ok(()) => {
                tracing::debug!("removed stale {}", entry.path().display());
                if matches!(kind, Entry::Final(_)) {
                    stats.removed += 1;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(present)
}

/// Downloads `seg` into the prefetch directory `dir`: a temporary file first (so requests see
/// that it is coming), renamed to its final name once the content is verified and written.
async fn download(
    repo: &Repository,
    dir: &Path,
    seg: SegmentName,
    size: u64,
) -> Result<Downloaded, FetchError> {
    let started = Instant::now();
    let tmp = dir.join(temp_name(seg, std::process::id()));
    let write_err = |path: &Path, source| FetchError::Write {
        path: path.to_path_buf(),
        source,
    };
    File::create(&tmp).map_err(|e| write_err(&tmp, e))?;
    let key = Repository::wal_key(&WalFileName::Segment(seg));
    let (header, raw) = match repo.get_verified(&key).await {
        Ok(got) => got,
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            return match e {
                walarchive::Error::NotFound { .. } => Ok(Downloaded::Missing),
                e => Err(e.into()),
            };
        }
    };
    if raw.len() as u64 != size {
        let _ = fs::remove_file(&tmp);
        return Err(FetchError::Core(walarchive::Error::BadInput {
            path: seg.to_string(),
            reason: format!(
                "the archived segment is {} bytes, not the segment size {size}",
                raw.len()
            ),
        }));
    }
    // What the request would check before handing it to PostgreSQL: its page header
    // against its name and the repository (the object's binding was checked by the read).
    let checked = match repo.cached_descriptor().await {
        Ok(d) => walarchive::verify::check_fetched(repo, &WalFileName::Segment(seg), &raw, &d),
        Err(e) => Err(e),
    };
    if let Err(e) = checked {
        let _ = fs::remove_file(&tmp);
        return Err(e.into());
    }
    let content = header.content_digest(DigestKind::Blake3, &raw);
    let final_path = dir.join(format!("{seg}.{}", key_for(seg, &content)));
    tokio::task::spawn_blocking(move || {
        let result = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(&tmp)
                .map_err(|e| write_err(&tmp, e))?;
            f.write_all(&raw).map_err(|e| write_err(&tmp, e))?;
            drop(f);
            fs::rename(&tmp, &final_path).map_err(|e| write_err(&final_path, e))
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        tracing::debug!("prefetched {seg} in {:.0?}", started.elapsed());
        result.map(|()| Downloaded::Placed(raw.len() as u64, final_path))
    })
    .await
    .expect("write task does not panic")
}
