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

#[cfg(test)]
mod tests;
mod worker;

use std::fs::{self, File, TryLockError};
use std::io::{Read, Seek};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};
use walarchive::format::Digest;
use walarchive::push;
use walarchive::wal::is_valid_segment_size;
use walarchive::{Descriptor, Repository, SegmentName, WalFileName};

use crate::{FetchError, FetchReport, Source};
pub use worker::{read_ahead, run_worker, worker_job, WorkerJob, WorkerStats};

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
