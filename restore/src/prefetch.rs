//! Prefetching WAL for `restore_command`: while PostgreSQL replays segment N, the next
//! segments are downloaded in parallel into `pg_wal/walarchive-prefetch/`, so that most
//! requests are answered by a local rename instead of a round trip to the object store.
//!
//! # Why it works this way
//!
//! **One process per request.** PostgreSQL runs `restore_command` once per file and waits
//! for it to exit before it replays anything, so whatever a `wal-fetch` does before exiting
//! delays the replay of the segment it was asked for. So `wal-fetch N` answers first — from
//! the prefetch directory when it can, else from the repository as without prefetching — and
//! only then, when fewer than half of the next `--prefetch` segments are already there and no
//! worker runs, starts a **detached worker**: the same binary with the same arguments and
//! [`WORKER_ENV`] set. PostgreSQL's answer is never delayed by prefetching and downloads
//! overlap with replay. The alternative, fetching ahead inside the answering process before it
//! exits (simpler: no second process), makes PostgreSQL wait for every batch; both are measured
//! in `tests/prefetch.rs` ([`INLINE_ENV`] selects it; figures in docs/benchmarks.md), and
//! only the worker pays off. The worker
//! stays in restore_command's process group: when PostgreSQL stops, it is signalled with the
//! rest, and a killed worker leaves only temporary files, which are never served and which the
//! next worker removes.
//!
//! **The worker follows recovery.** Each request writes the segment asked for to `.position`;
//! the worker keeps the `--prefetch` segments after it downloaded, `--parallel` at a time, on
//! its timeline, and moves with it — forward, to another timeline, or back when recovery
//! starts again. It exits when the archive ends (the repository lacks the next segment), when
//! nothing was asked for [`FOLLOW_IDLE`], when recovery ends, or when asked to purge. One
//! long-lived worker instead of one per batch avoids a process start and a pipeline stall
//! every few segments. The first segment it found missing is noted in `.end`, so that the
//! last requests before the end of the archive do not each start a worker for segments that
//! do not exist (yet: a standby's archive grows, so the note only counts until recovery
//! reaches it).
//!
//! **One worker at a time.** A worker holds an exclusive `flock` on `.lock` for its whole run,
//! with its process ID written in it; a second one exits at once. A request for a segment
//! that this worker is downloading right now (its `.SEGMENT.PID.tmp` exists) waits for it (at
//! most one attempt's timeout) instead of downloading it a second time; any other temporary
//! file is a leftover and is not waited for.
//!
//! **Nothing unverified is ever served.** A worker downloads an object, which the repository
//! verifies (length and digest of the content, see `walarchive::format`), writes the
//! content to a temporary name, and renames it to its final name only then: `SEGMENT.KEY`,
//! where KEY is a SHA-256 over a domain tag, the segment's name and the content's BLAKE3
//! (the object's own digest since format version 3; computed from the verified content for
//! older objects). So a file under a final name was complete when it was named, and its name binds its
//! content to the segment it is for. Before serving a file, the request hashes it again (cheap
//! next to a download: 1 to 16 MiB from the page cache) and compares with the name: a file
//! truncated, damaged or replaced after its download, or renamed to another segment or
//! timeline, is discarded and the segment is fetched from the repository. Temporary files are
//! never served, and only a file whose segment name is exactly the one asked for (`%f`) is
//! considered at all.
//!
//! **Stale files are removed.** A worker, when it starts and when recovery changes timeline,
//! removes other processes' temporary files (under its lock they can only be a killed
//! worker's), files of another timeline, of segments at or before the one asked for last or
//! beyond the window, files older than [`STALE_AFTER`], and anything else it does not
//! recognise. A request for a history file that the repository lacks — PostgreSQL's probe for
//! a free timeline at the end of recovery, and at its start — removes the directory (or, while a
//! worker runs, asks it to with a `.purge` marker), as does a worker that finds the data
//! directory no longer in recovery (neither `recovery.signal` nor `standby.signal`).
//! Prefetching only happens in a data directory in recovery, for destinations in a directory
//! named `pg_wal`; a request never creates the prefetch directory.
//!
//! **Timelines.** Only plain segments are prefetched, only on the timeline of the segment
//! asked for last; history files never are. When recovery switches to a newer timeline,
//! PostgreSQL asks for that timeline's segments, whose names differ: the old timeline's files
//! are never served for them, and the worker removes them and moves to the new timeline.
//!
//! **Bounded memory.** A worker holds at most `--parallel` downloads, each one object and its
//! decoded segment; a request holds one segment, or hashes a prefetched file in 1 MiB reads.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest as _, Sha256};
use walarchive::format::{Digest, DigestKind};
use walarchive::push;
use walarchive::wal::is_valid_segment_size;
use walarchive::{Descriptor, Repository, SegmentName, WalFileName};

use crate::{FetchError, FetchReport, Source};

/// Name of the prefetch directory inside `pg_wal` (PostgreSQL ignores names it does not know).
pub const DIR_NAME: &str = "walarchive-prefetch";
/// Environment variable that makes `wal-fetch` a prefetch worker: `SEGMENT:SEGMENT_SIZE`, where
/// SEGMENT must equal the command's own `%f` (so no stray setting can turn a restore into a
/// worker, which restores nothing).
pub const WORKER_ENV: &str = "WALARCHIVE_PREFETCH_WORKER";
/// Set to `1`, the answering process downloads ahead itself before exiting instead of starting a
/// worker (kept to measure the trade-off; see the module documentation).
pub const INLINE_ENV: &str = "WALARCHIVE_PREFETCH_INLINE";
/// Prefetched files older than this are removed unused (the archive is immutable, but a
/// repository can be emptied and refilled; prefetched files normally live for seconds).
pub const STALE_AFTER: Duration = Duration::from_secs(600);

const LOCK_NAME: &str = ".lock";
const PURGE_NAME: &str = ".purge";
const POSITION_NAME: &str = ".position";
const END_NAME: &str = ".end";
const TEMP_SUFFIX: &str = ".tmp";
const KEY_DOMAIN: &[u8] = b"walarchive prefetch v2 blake3\0";
const POLL: Duration = Duration::from_millis(5);
/// A worker exits when PostgreSQL has asked for nothing for this long.
pub const FOLLOW_IDLE: Duration = Duration::from_secs(3);

/// How far and how wide to prefetch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrefetchOptions {
    /// Segments to keep downloaded ahead of PostgreSQL's requests (0 disables prefetching).
    pub depth: usize,
    /// Concurrent downloads.
    pub parallel: usize,
    /// Download the window in this process instead of starting a worker (the binary sets it
    /// from [`INLINE_ENV`]).
    pub inline: bool,
}

/// The prefetch directory that belongs to a restore destination (`%p`), and the data directory
/// whose recovery it serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrefetchDir {
    dir: PathBuf,
    data_dir: PathBuf,
}

impl PrefetchDir {
    /// The prefetch directory for destination `dest`, when `dest` is in a directory named
    /// `pg_wal` (what PostgreSQL passes: `pg_wal/RECOVERYXLOG`, relative to the data
    /// directory). Paths are taken as given, not resolved, so a symlinked `pg_wal` works.
    pub fn for_destination(dest: &Path) -> Option<PrefetchDir> {
        let wal_dir = dest.parent().filter(|p| !p.as_os_str().is_empty())?;
        if wal_dir.file_name()? != "pg_wal" {
            return None;
        }
        let data_dir = match wal_dir.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        Some(PrefetchDir {
            dir: wal_dir.join(DIR_NAME),
            data_dir,
        })
    }

    /// The directory's path.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Whether the data directory is being recovered (PostgreSQL 12+ signal files).
    pub fn in_recovery(&self) -> bool {
        ["recovery.signal", "standby.signal"]
            .iter()
            .any(|f| self.data_dir.join(f).exists())
    }

    /// Whether a worker holds the lock right now.
    pub fn worker_running(&self) -> bool {
        let Ok(f) = File::open(self.dir.join(LOCK_NAME)) else {
            return false;
        };
        matches!(f.try_lock(), Err(TryLockError::WouldBlock))
    }

    /// The process ID of the worker holding the lock right now, which it writes into it.
    fn worker_pid(&self) -> Option<u32> {
        let mut f = File::open(self.dir.join(LOCK_NAME)).ok()?;
        if !matches!(f.try_lock(), Err(TryLockError::WouldBlock)) {
            return None;
        }
        let mut pid = String::new();
        f.read_to_string(&mut pid).ok()?;
        pid.trim().parse().ok()
    }

    /// Removes the directory, or asks the running worker to.
    fn purge(&self) {
        if !self.dir.exists() {
            return;
        }
        if self.worker_running() {
            let _ = File::create(self.dir.join(PURGE_NAME));
            // The worker looks for the marker after releasing its lock: if it is still
            // running now, it will see it; if not, it may have looked already.
            if self.worker_running() {
                return;
            }
        }
        self.remove();
    }

    fn remove(&self) {
        match fs::remove_dir_all(&self.dir) {
            Ok(()) => tracing::debug!("removed {}", self.dir.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!("cannot remove {}: {e}", self.dir.display()),
        }
    }

    fn purge_requested(&self) -> bool {
        self.dir.join(PURGE_NAME).exists()
    }

    /// Records the segment PostgreSQL asks for now, for the worker to follow (only when the
    /// directory exists: a request never creates it).
    fn note_position(&self, seg: SegmentName) {
        if self.dir.is_dir() {
            let _ = fs::write(self.dir.join(POSITION_NAME), seg.to_string());
        }
    }

    /// The segment PostgreSQL asked for last (a torn or missing file reads as none).
    fn position(&self) -> Option<SegmentName> {
        read_segment(&self.dir.join(POSITION_NAME))
    }

    /// The first segment a worker found missing from the repository, if any.
    fn end(&self) -> Option<SegmentName> {
        read_segment(&self.dir.join(END_NAME))
    }
}

fn read_segment(path: &Path) -> Option<SegmentName> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// What a name in the prefetch directory is.
#[derive(Debug, PartialEq, Eq)]
enum Entry {
    /// A complete, verified download: `SEGMENT.KEY`.
    Final(SegmentName),
    /// `.position` (the segment asked for last) or `.end` (the first one the repository
    /// lacked).
    /// A download in progress (or a killed worker's): `.SEGMENT.PID.tmp`.
    Temp(SegmentName, u32),
    Lock,
    Purge,
    Position,
    Other,
}

fn classify(name: &str) -> Entry {
    match name {
        LOCK_NAME => return Entry::Lock,
        PURGE_NAME => return Entry::Purge,
        POSITION_NAME | END_NAME => return Entry::Position,
        _ => {}
    }
    if let Some(rest) = name.strip_prefix('.') {
        let temp = rest
            .strip_suffix(TEMP_SUFFIX)
            .and_then(|r| r.split_once('.'))
            .and_then(|(seg, pid)| Some(Entry::Temp(seg.parse().ok()?, pid.parse().ok()?)));
        return temp.unwrap_or(Entry::Other);
    }
    match final_name_parts(name) {
        Some((seg, _)) => Entry::Final(seg),
        None => Entry::Other,
    }
}

/// `SEGMENT.KEY` → the segment and the key (64 lowercase hex digits).
fn final_name_parts(name: &str) -> Option<(SegmentName, &str)> {
    let (seg, key) = name.split_once('.')?;
    let key_ok = key.len() == 64 && key.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    key_ok.then_some(())?;
    Some((seg.parse().ok()?, key))
}

/// The key in a prefetched file's name: binds the segment's name to its content's BLAKE3.
fn key_for(seg: SegmentName, content: &Digest) -> String {
    let mut h = Sha256::new();
    h.update(KEY_DOMAIN);
    h.update(seg.to_string().as_bytes());
    h.update([0]);
    h.update(content.0);
    hex::encode(h.finalize())
}

fn temp_name(seg: SegmentName, pid: u32) -> String {
    format!(".{seg}.{pid}{TEMP_SUFFIX}")
}

/// Restores WAL file `name` to `dest` like [`crate::fetch_file`], serving a segment from the
/// prefetch directory when a verified copy is there (waiting for it when a worker is
/// downloading it right now).
pub async fn fetch(
    repo: &Repository,
    name: &str,
    dest: &Path,
    opts: &PrefetchOptions,
) -> Result<FetchReport, FetchError> {
    let parsed = name.parse::<WalFileName>().ok();
    let dir = if opts.depth > 0 {
        PrefetchDir::for_destination(dest)
    } else {
        None
    };
    if let (Some(dir), Some(WalFileName::Segment(seg))) = (&dir, parsed) {
        dir.note_position(seg);
        let limit = repo.policy.attempt_timeout;
        // A prefetched file passes the identity checks a direct fetch makes; without the
        // repository's identity (the store is down and no pg_control told it), none is served.
        let served = match repo.cached_descriptor().await {
            Ok(d) => take(dir, seg, dest, &d, limit).await,
            Err(_) => None,
        };
        if let Some(len) = served {
            return Ok(FetchReport {
                name: WalFileName::Segment(seg),
                len,
                source: Source::Prefetch,
            });
        }
    }
    let result = crate::fetch_file(repo, name, dest).await;
    if let (Some(dir), Some(WalFileName::History(_)), Err(FetchError::NotFound(_))) =
        (&dir, parsed, &result)
    {
        // PostgreSQL probes for a newer timeline at the start and at the end of recovery:
        // whatever is prefetched then is of no further use.
        dir.purge();
    }
    result
}

/// Serves `seg` from the prefetch directory if a verified copy is there, waiting (up to
/// `limit`) while a worker is downloading it.
async fn take(
    dir: &PrefetchDir,
    seg: SegmentName,
    dest: &Path,
    repository: &Descriptor,
    limit: Duration,
) -> Option<u64> {
    let started = Instant::now();
    loop {
        // The temporary file first, the final one then: a download that completes in
        // between is seen by the second look.
        let coming = dir.worker_pid().is_some_and(|pid| in_flight(dir, seg, pid));
        let (d, to, r) = (dir.clone(), dest.to_path_buf(), repository.clone());
        let served = tokio::task::spawn_blocking(move || serve(&d, seg, &to, &r))
            .await
            .unwrap_or(None);
        if served.is_some() || !coming || started.elapsed() >= limit {
            return served;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Whether worker `pid` is downloading `seg` (its temporary file exists).
fn in_flight(dir: &PrefetchDir, seg: SegmentName, pid: u32) -> bool {
    dir.dir.join(temp_name(seg, pid)).exists()
}

/// Renames a verified prefetched copy of `seg` to `dest`; returns its length. Files that fail
/// verification are removed.
fn serve(dir: &PrefetchDir, seg: SegmentName, dest: &Path, repository: &Descriptor) -> Option<u64> {
    let entries = fs::read_dir(&dir.dir).ok()?;
    let wanted = seg.to_string();
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(name) = file_name.to_str() else {
            continue;
        };
        // Only a final name whose segment is exactly the one asked for.
        let Some((found, key)) = final_name_parts(name) else {
            continue;
        };
        if found != seg {
            continue;
        }
        assert_eq!(
            &name[..24],
            wanted,
            "a prefetched file is only served as itself"
        );
        let path = entry.path();
        match verify(&path, seg, key, repository) {
            Ok(len) => match fs::rename(&path, dest) {
                Ok(()) => return Some(len),
                // Removed meanwhile (a worker's sweep): fetch from the repository.
                Err(e) => tracing::debug!("cannot move {} into place: {e}", path.display()),
            },
            Err(why) => {
                tracing::warn!(
                    "discarding prefetched {}: {why}; fetching {seg} from the repository",
                    path.display()
                );
                let _ = fs::remove_file(&path);
            }
        }
    }
    None
}

/// Checks that the file at `path` is a complete segment whose content matches `key`, and
/// whose first page header names the repository's cluster.
fn verify(
    path: &Path,
    seg: SegmentName,
    key: &str,
    repository: &Descriptor,
) -> Result<u64, String> {
    let mut f = File::open(path).map_err(|e| e.to_string())?;
    let meta = f.metadata().map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    if !is_valid_segment_size(meta.len()) {
        return Err(format!(
            "{} bytes is not a WAL segment size (truncated?)",
            meta.len()
        ));
    }
    // The first page header against the name (page address, segment size), as the
    // worker checked it against the repository before naming the file.
    let mut head = [0u8; walarchive::wal::LONG_PAGE_HEADER_SIZE];
    f.read_exact(&mut head).map_err(|e| e.to_string())?;
    let found = push::check_segment_start(&WalFileName::Segment(seg), &head, meta.len())?;
    walarchive::verify::same_wal_identity(&found, repository)?;
    f.seek(std::io::SeekFrom::Start(0))
        .map_err(|e| e.to_string())?;
    let (content, len) = push::hash_reader(&mut f).map_err(|e| e.to_string())?;
    if len != meta.len() {
        return Err("changed while being read".into());
    }
    if key_for(seg, &content) != key {
        return Err(format!(
            "its content (blake3 {content}) does not match its name (checksum mismatch)"
        ));
    }
    Ok(len)
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;
    use object_store::path::Path as ObjPath;
    use std::sync::Arc;
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
}
