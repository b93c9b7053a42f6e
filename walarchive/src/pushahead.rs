//! Pushing ahead: `wal-push` for segment N also uploads the segments already waiting after it.
//!
//! # Why
//!
//! PostgreSQL's archiver runs `archive_command` for one file at a time and waits for it, so
//! a single `wal-push` per segment can never use more than one upload stream, one core for
//! compression, and it pays a process start, a descriptor read and a round trip per
//! segment. When WAL is written faster than that (a bulk load, an index build, a burst
//! after an outage), `.ready` files pile up in `pg_wal/archive_status`, pg_wal grows and the
//! archive falls behind: the recovery point objective is lost exactly when the database is
//! busiest.
//!
//! So when PostgreSQL asks for segment N, and other plain segments of N's timeline after N
//! are already `.ready`, this call uploads them too, `parallel` at a time (N included), and
//! records for each one that is durably stored a *marker*. PostgreSQL's following calls for
//! those segments find their marker, check it, and answer at once without uploading.
//!
//! # What makes it safe
//!
//! * **Only durable objects get a marker, and only a checked marker answers.** A marker is
//!   written after the object's put returned (S3 and Azure acknowledge durable puts; the
//!   local-directory backend fsyncs), with a write, an fsync and a rename, so it is complete
//!   or absent. When PostgreSQL later asks for that segment, the call answers 0 only if the
//!   marker names this segment and this repository URL, the file has the marker's size, the
//!   BLAKE3 of the file's *current* content is the marker's (reading and hashing a segment
//!   costs milliseconds), and the repository still has the object (one HEAD request: a
//!   repository wiped and recreated at the same URL is caught). Anything else (no marker, an
//!   unreadable one, a mismatch, an error while checking) means the segment is pushed as
//!   usual, which stores it or finds it already stored with identical content. A marker is
//!   only ever a shortcut, never the record of truth: the repository is.
//! * **N alone decides the exit status.** Failures while pushing ahead are logged as
//!   warnings and leave no marker; PostgreSQL pushes those segments itself later. A failure
//!   of N stops the call at once (uploads still in flight are abandoned, and leave no
//!   marker), so PostgreSQL hears about it without waiting for the others.
//! * **Nothing is dropped to relieve pressure.** Push-ahead only ever adds uploads: a
//!   segment is acknowledged to PostgreSQL by the call PostgreSQL makes for it, after a
//!   successful push or a verified marker, never earlier.
//! * **Concurrent calls.** PostgreSQL runs one archiver, but a restarted archiver (or an
//!   operator) can overlap an older `wal-push`. Only the holder of an exclusive lock on
//!   `pg_wal/walarchive-pushahead.lock` pushes ahead or writes markers, so two processes never
//!   push the same segments ahead at once. A call that finds the lock held, and no marker for
//!   its own segment, waits (polling for its segment's marker) until the lock is free, then
//!   pushes normally; after `lock_wait` it pushes its segment alone. The lock is a `flock`, so
//!   a killed holder releases it. Objects are created with create-only puts and an identical
//!   existing object is success, so even an overlap that uploads one segment twice is
//!   harmless. Answering from a marker needs no lock: the marker is written atomically and
//!   removed once used.
//! * **Bounded work and memory.** Only plain segments (24 hex digits) of N's timeline that
//!   sort after N are pushed ahead, at most `lookahead` of them (4 × `parallel`, at most 64)
//!   per call; history, `.partial` and `.backup` files are pushed only when PostgreSQL asks.
//!   At most `parallel` segments are in flight, each holding its content and then its encoded
//!   object, so memory stays near `parallel` × (segment + compressed segment). Hashing and
//!   compression run on tokio's blocking pool (other cores) while other uploads are in
//!   flight.
//! * **Cleanup.** A marker is removed when it answers PostgreSQL, when it fails its check,
//!   and, by the lock holder, when its segment is no longer in pg_wal or is already `.done`
//!   (stale markers), along with temporary files left by a killed process.
//!
//! Markers live in `pg_wal/walarchive-pushed/<segment>`, beside walarchive's other files in
//! pg_wal; PostgreSQL ignores names it does not know, and base backups leave pg_wal's
//! contents out. Pushing ahead needs `%p` in a directory named `pg_wal` holding
//! `archive_status` (what PostgreSQL passes); with `parallel` 1 it is off, and markers left
//! by earlier calls are still used.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::future::LocalBoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use futures::FutureExt;
use serde::{Deserialize, Serialize};

use crate::control::ClusterIdentity;
use crate::push::{self, PushReport};
use crate::repo::{Descriptor, PutOutcome, Repository};
use crate::wal::{SegmentName, WalFileName};
use crate::Error;

/// Directory of the markers, inside `pg_wal`.
pub const MARKER_DIR: &str = "walarchive-pushed";
/// The lock file that only one pushing-ahead process holds, inside `pg_wal`.
pub const LOCK_NAME: &str = "walarchive-pushahead.lock";
/// Upper bound of the look-ahead, whatever `parallel` is.
pub const MAX_LOOKAHEAD: usize = 64;
/// How long a call waits for another process's push-ahead before pushing alone.
pub const DEFAULT_LOCK_WAIT: Duration = Duration::from_secs(15);

/// How far and how wide to push ahead.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// Concurrent uploads, the requested segment included; 1 turns pushing ahead off.
    pub parallel: usize,
    /// At most this many `.ready` segments after the requested one are considered.
    pub lookahead: usize,
    /// How long to wait for another process that holds the push-ahead lock.
    pub lock_wait: Duration,
}

impl Options {
    /// `parallel` concurrent uploads and a look-ahead of 4 × `parallel` (at most
    /// [`MAX_LOOKAHEAD`]); none with `parallel` 1.
    pub fn with_parallel(parallel: usize) -> Options {
        let parallel = parallel.max(1);
        let lookahead = if parallel > 1 {
            (parallel * 4).min(MAX_LOOKAHEAD)
        } else {
            0
        };
        Options {
            parallel,
            lookahead,
            lock_wait: DEFAULT_LOCK_WAIT,
        }
    }
}

/// What a marker records: a segment this repository durably stores, and the content it
/// stores (`pg_wal/walarchive-pushed/<segment>`, JSON).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Marker {
    /// The segment's name.
    pub name: String,
    /// The repository URL it was stored into.
    pub repository: String,
    /// BLAKE3 of the content stored (hex). A marker written by an older walarchive has a
    /// `sha256` instead: unreadable here, so its segment is pushed as usual (and found
    /// already stored).
    pub blake3: String,
    /// Size of the content stored.
    pub size: u64,
    /// Modification time of the file when it was read (nanoseconds since the epoch; for
    /// diagnosis only: the content's digest is what is checked).
    pub mtime_ns: u64,
    /// Bytes stored, when this push stored the object (absent when it was already there).
    pub stored_len: Option<u64>,
    /// When the marker was written (seconds since the epoch).
    pub written_at: u64,
}

impl Marker {
    /// The marker of a segment `repo` durably stores, as `report` says.
    pub fn of(repo: &Repository, report: &PushReport, mtime_ns: u64) -> Marker {
        Marker {
            name: report.name.to_string(),
            repository: repo.url().to_string(),
            blake3: report.blake3.to_string(),
            size: report.raw_len,
            mtime_ns,
            stored_len: match report.outcome {
                PutOutcome::Stored { stored_len } => Some(stored_len),
                PutOutcome::AlreadyStored => None,
            },
            written_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        }
    }
}

/// What one `wal-push` did.
#[derive(Debug)]
pub struct Outcome {
    /// The file PostgreSQL asked for: this alone decides the exit status.
    pub requested: Result<PushReport, Error>,
    /// The requested file was answered from a verified marker, without uploading.
    pub from_marker: bool,
    /// Segments this call pushed ahead and marked (stored now, or found already stored).
    pub ahead: Vec<PushReport>,
}

impl Outcome {
    fn alone(requested: Result<PushReport, Error>) -> Outcome {
        Outcome {
            requested,
            from_marker: false,
            ahead: Vec::new(),
        }
    }

    fn from_marker(report: PushReport) -> Outcome {
        Outcome {
            requested: Ok(report),
            from_marker: true,
            ahead: Vec::new(),
        }
    }
}

/// Archives the WAL file at `path` (PostgreSQL's `%p`) of the cluster `identity` (see
/// [`push::push_file`]) and pushes ahead the ready segments after it (see the module
/// documentation), checked against the same identity.
pub async fn push(
    repo: &Repository,
    path: &Path,
    identity: Option<&ClusterIdentity>,
    opts: &Options,
) -> Outcome {
    let Some((dir, seg)) = WalDir::of(path) else {
        return Outcome::alone(push::push_file(repo, path, identity).await);
    };
    if let Some(report) = dir.answer(repo, path, seg).await {
        return Outcome::from_marker(report);
    }
    if opts.parallel <= 1 || opts.lookahead == 0 {
        return Outcome::alone(push::push_file(repo, path, identity).await);
    }
    match dir.lock(repo, path, seg, opts.lock_wait).await {
        Lock::Answered(report) => Outcome::from_marker(report),
        Lock::Unavailable => Outcome::alone(push::push_file(repo, path, identity).await),
        Lock::Held(lock) => {
            let outcome = dir.push_with_ahead(repo, path, seg, identity, opts).await;
            drop(lock);
            outcome
        }
    }
}

enum Lock {
    /// This process holds the lock (released when the file is dropped).
    Held(File),
    /// The requested segment was pushed ahead by the lock's holder meanwhile.
    Answered(PushReport),
    /// No lock (busy too long, or no lock file possible): push the segment alone.
    Unavailable,
}

/// Why a marker does not answer.
enum Refusal {
    /// It does not match: removed, and the segment is pushed.
    Mismatch(String),
    /// It could not be checked (I/O or storage error): kept, and the segment is pushed.
    Unchecked(String),
}

/// The `pg_wal` directory of a segment PostgreSQL asked for.
struct WalDir {
    pg_wal: PathBuf,
    status: PathBuf,
    markers: PathBuf,
}

impl WalDir {
    /// The pg_wal directory and segment of `path`, when it is a plain segment in a
    /// directory named `pg_wal` that has `archive_status`. The path is taken as given (a
    /// symlinked pg_wal, as `initdb --waldir` makes, works).
    fn of(path: &Path) -> Option<(WalDir, SegmentName)> {
        let seg = match path.file_name()?.to_str()?.parse::<WalFileName>().ok()? {
            WalFileName::Segment(s) => s,
            _ => return None,
        };
        let parent = path.parent()?;
        let pg_wal = if parent.as_os_str().is_empty() {
            std::env::current_dir().ok()?
        } else {
            parent.to_path_buf()
        };
        if pg_wal.file_name()? != "pg_wal" {
            return None;
        }
        let status = pg_wal.join("archive_status");
        if !status.is_dir() {
            return None;
        }
        let markers = pg_wal.join(MARKER_DIR);
        Some((
            WalDir {
                pg_wal,
                status,
                markers,
            },
            seg,
        ))
    }

    fn marker_path(&self, seg: SegmentName) -> PathBuf {
        self.markers.join(seg.to_string())
    }

    /// Answers for `seg` from its marker when the marker checks out (and removes it).
    async fn answer(&self, repo: &Repository, path: &Path, seg: SegmentName) -> Option<PushReport> {
        let marker_path = self.marker_path(seg);
        let text = match fs::read(&marker_path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!("cannot read {} ({e}): pushing {seg}", marker_path.display());
                return None;
            }
        };
        match check_marker(repo, path, seg, &text).await {
            Ok(report) => {
                remove(&marker_path);
                Some(report)
            }
            Err(Refusal::Mismatch(why)) => {
                tracing::warn!("ignoring the push-ahead marker of {seg}: {why}; pushing it");
                remove(&marker_path);
                None
            }
            Err(Refusal::Unchecked(why)) => {
                tracing::warn!("cannot check the push-ahead marker of {seg} ({why}): pushing it");
                None
            }
        }
    }

    /// Takes the push-ahead lock, waiting (and watching for `seg`'s marker) while another
    /// process holds it.
    async fn lock(&self, repo: &Repository, path: &Path, seg: SegmentName, wait: Duration) -> Lock {
        let lock_path = self.pg_wal.join(LOCK_NAME);
        let opened = fs::create_dir_all(&self.markers).and_then(|()| {
            OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&lock_path)
        });
        let file = match opened {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(
                    "cannot push ahead: cannot create {} or {}: {e}",
                    self.markers.display(),
                    lock_path.display()
                );
                return Lock::Unavailable;
            }
        };
        let started = Instant::now();
        let mut waiting = false;
        loop {
            match file.try_lock() {
                Ok(()) => {
                    // A previous holder may have pushed `seg` ahead just before letting go.
                    if let Some(report) = self.answer(repo, path, seg).await {
                        return Lock::Answered(report);
                    }
                    return Lock::Held(file);
                }
                Err(TryLockError::WouldBlock) => {}
                Err(TryLockError::Error(e)) => {
                    tracing::warn!(
                        "cannot push ahead: cannot lock {}: {e}",
                        lock_path.display()
                    );
                    return Lock::Unavailable;
                }
            }
            if !waiting {
                tracing::info!(
                    "another wal-push is pushing ahead ({} is locked): waiting up to {wait:?} for it",
                    lock_path.display()
                );
                waiting = true;
            }
            if started.elapsed() >= wait {
                tracing::warn!(
                    "{} is still locked after {wait:?}: pushing {seg} without pushing ahead",
                    lock_path.display()
                );
                return Lock::Unavailable;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            if let Some(report) = self.answer(repo, path, seg).await {
                return Lock::Answered(report);
            }
        }
    }

    /// Under the lock: pushes `seg` (PostgreSQL's request) and the ready segments after it.
    async fn push_with_ahead(
        &self,
        repo: &Repository,
        path: &Path,
        seg: SegmentName,
        identity: Option<&ClusterIdentity>,
        opts: &Options,
    ) -> Outcome {
        // The requested segment is read and checked first: nothing is pushed ahead for a
        // file that is refused, or into a repository that refuses this cluster.
        let prepared = match push::prepare(path, repo.compression, identity).await {
            Ok(p) => p,
            Err(e) => return Outcome::alone(Err(e)),
        };
        let descriptor = match repo
            .ensure_descriptor(&prepared.found, &prepared.name.to_string())
            .await
        {
            Ok(d) => d,
            Err(e) => return Outcome::alone(Err(e)),
        };
        self.remove_stale_markers();
        let ahead = self.candidates(seg, opts.lookahead);
        if !ahead.is_empty() {
            tracing::debug!(
                "pushing {} segments ahead of {seg}, {} at a time",
                ahead.len(),
                opts.parallel
            );
        }

        enum Done {
            Requested(Result<PushReport, Error>),
            Ahead(SegmentName, Result<PushReport, Error>),
        }
        let descriptor = &descriptor;
        let mut queue = ahead.into_iter().map(|s| {
            self.push_one_ahead(repo, s, identity, descriptor)
                .map(move |r| Done::Ahead(s, r))
                .boxed_local()
        });
        let mut running: FuturesUnordered<LocalBoxFuture<'_, Done>> = FuturesUnordered::new();
        running.push(
            push::store_prepared(repo, prepared)
                .map(Done::Requested)
                .boxed_local(),
        );
        running.extend(queue.by_ref().take(opts.parallel.saturating_sub(1)));
        let mut requested = None;
        let mut pushed = Vec::new();
        while let Some(done) = running.next().await {
            match done {
                Done::Requested(Err(e)) => {
                    // Abandon the rest: PostgreSQL hears about the failure at once. (What
                    // was pushed ahead already stays stored and marked.)
                    drop(running);
                    return Outcome {
                        requested: Err(e),
                        from_marker: false,
                        ahead: pushed,
                    };
                }
                Done::Requested(Ok(r)) => requested = Some(r),
                Done::Ahead(s, Ok(r)) => {
                    match r.outcome {
                        PutOutcome::Stored { stored_len } => tracing::info!(
                            "pushed ahead {s} ({} -> {stored_len} bytes, {})",
                            r.raw_len,
                            repo.compression
                        ),
                        PutOutcome::AlreadyStored => tracing::info!(
                            "pushed ahead {s}: it was already archived with identical content"
                        ),
                    }
                    pushed.push(r);
                }
                Done::Ahead(s, Err(e)) => {
                    tracing::warn!("could not push {s} ahead (PostgreSQL will push it itself): {e}")
                }
            }
            if let Some(next) = queue.next() {
                running.push(next);
            }
        }
        Outcome {
            requested: Ok(requested.expect("the requested push completed")),
            from_marker: false,
            ahead: pushed,
        }
    }

    /// Pushes one ready segment ahead and marks it once it is durably stored.
    async fn push_one_ahead(
        &self,
        repo: &Repository,
        seg: SegmentName,
        identity: Option<&ClusterIdentity>,
        descriptor: &Descriptor,
    ) -> Result<PushReport, Error> {
        let path = self.pg_wal.join(seg.to_string());
        let mtime_ns = fs::metadata(&path)
            .ok()
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        // The checks PostgreSQL's own call would make, against the descriptor the
        // requested segment was checked with.
        let prepared = push::prepare(&path, repo.compression, identity).await?;
        same_cluster(descriptor, &prepared.found, &prepared.name)?;
        let report = push::store_prepared(repo, prepared).await?;
        let marker = Marker::of(repo, &report, mtime_ns);
        let markers = self.markers.clone();
        let written = tokio::task::spawn_blocking(move || write_marker(&markers, &marker))
            .await
            .expect("writing a marker does not panic");
        if let Err(e) = written {
            // Stored but unmarked: PostgreSQL's call will find it stored (one more check).
            tracing::warn!("{seg} is archived but its push-ahead marker cannot be written: {e}");
        }
        Ok(report)
    }

    /// The `.ready` plain segments of `seg`'s timeline after it (the first `lookahead` of
    /// them), minus those already marked.
    fn candidates(&self, seg: SegmentName, lookahead: usize) -> Vec<SegmentName> {
        let mut ready = match ready_segments(&self.status) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(
                    "cannot push ahead: cannot list {}: {e}",
                    self.status.display()
                );
                return Vec::new();
            }
        };
        ready.retain(|s| s.timeline == seg.timeline && *s > seg);
        ready.truncate(lookahead);
        ready.retain(|s| {
            !self.marker_path(*s).exists() && self.pg_wal.join(s.to_string()).is_file()
        });
        ready
    }

    /// Removes markers of segments no longer in pg_wal or already `.done`, and temporary
    /// files of killed writers (only the lock's holder writes markers, so those are
    /// leftovers).
    fn remove_stale_markers(&self) {
        let Ok(entries) = fs::read_dir(&self.markers) else {
            return;
        };
        for entry in entries.flatten() {
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            let stale = if name.starts_with('.') && name.ends_with(".tmp") {
                true
            } else if name.parse::<SegmentName>().is_ok() {
                !self.pg_wal.join(&name).exists()
                    || self.status.join(format!("{name}.done")).exists()
            } else {
                false
            };
            if stale {
                tracing::debug!("removing stale push-ahead marker {name}");
                remove(&entry.path());
            }
        }
    }
}

/// Checks a marker against the file PostgreSQL asks for and the repository.
async fn check_marker(
    repo: &Repository,
    path: &Path,
    seg: SegmentName,
    text: &[u8],
) -> Result<PushReport, Refusal> {
    let marker: Marker = serde_json::from_slice(text)
        .map_err(|e| Refusal::Mismatch(format!("unreadable marker ({e})")))?;
    if marker.name != seg.to_string() {
        return Err(Refusal::Mismatch(format!(
            "it is for {}, not {seg}",
            marker.name
        )));
    }
    if marker.repository != repo.url() {
        return Err(Refusal::Mismatch(format!(
            "it was pushed to {}, not to {}",
            marker.repository,
            repo.url()
        )));
    }
    let meta = fs::metadata(path)
        .map_err(|e| Refusal::Unchecked(format!("cannot read {}: {e}", path.display())))?;
    if meta.len() != marker.size {
        return Err(Refusal::Mismatch(format!(
            "the file is {} bytes, the marker says {}",
            meta.len(),
            marker.size
        )));
    }
    let owned = path.to_path_buf();
    let digest = tokio::task::spawn_blocking(move || push::hash_file(&owned))
        .await
        .expect("hashing does not panic")
        .map_err(|e| Refusal::Unchecked(format!("cannot read {}: {e}", path.display())))?;
    if digest.to_string() != marker.blake3 {
        return Err(Refusal::Mismatch(format!(
            "the file's content (blake3 {digest}) is not what was pushed ahead (blake3 {})",
            marker.blake3
        )));
    }
    let name = WalFileName::Segment(seg);
    let key = repo.key(&Repository::wal_key(&name));
    match repo.exists(&key).await {
        Ok(true) => Ok(PushReport {
            name,
            raw_len: meta.len(),
            outcome: PutOutcome::AlreadyStored,
            blake3: digest,
        }),
        Ok(false) => Err(Refusal::Mismatch(
            "the repository does not have it (deleted or recreated since?)".into(),
        )),
        Err(e) => Err(Refusal::Unchecked(e.to_string())),
    }
}

/// The plain segments with a `.ready` file in `archive_status`, in order.
pub(crate) fn ready_segments(archive_status: &Path) -> std::io::Result<Vec<SegmentName>> {
    let mut ready: Vec<SegmentName> = fs::read_dir(archive_status)?
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            name.strip_suffix(".ready")?.parse::<SegmentName>().ok()
        })
        .collect();
    ready.sort();
    Ok(ready)
}

/// Refuses a segment whose cluster is not the repository's (as `ensure_descriptor` does).
pub(crate) fn same_cluster(
    repo: &Descriptor,
    found: &Descriptor,
    name: &WalFileName,
) -> Result<(), Error> {
    crate::repo::same_cluster(repo, found, &name.to_string())
}

/// Writes a marker atomically: a temporary file, fsynced, renamed into place. (The
/// directory is not fsynced: a marker lost in a crash only costs a check of the repository.)
pub(crate) fn write_marker(dir: &Path, marker: &Marker) -> std::io::Result<()> {
    fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{}.{}.tmp", marker.name, std::process::id()));
    let mut f = File::create(&tmp)?;
    f.write_all(&serde_json::to_vec(marker).expect("a marker serializes"))?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, dir.join(&marker.name))
}

pub(crate) fn remove(path: &Path) {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!("cannot remove {}: {e}", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Compression;
    use crate::format::Digest;
    use crate::retry::RetryPolicy;
    use crate::storage::Backend;
    use object_store::memory::InMemory;
    use object_store::path::Path as StorePath;
    use std::sync::Arc;

    const SEG: usize = 1 << 20;

    fn repo_at(url: &str, store: Arc<InMemory>) -> Repository {
        Repository::with_store(
            store,
            StorePath::from("p"),
            Backend::Local,
            url,
            RetryPolicy::default(),
            Compression::Lz4,
        )
    }

    fn repo() -> Repository {
        repo_at("memory://test", Arc::new(InMemory::new()))
    }

    /// A segment with a valid long page header and some content.
    fn segment(name: &str, sysid: u64) -> Vec<u8> {
        let seg: SegmentName = name.parse().unwrap();
        let mut b = vec![0u8; SEG];
        b[0..2].copy_from_slice(&0xD110u16.to_le_bytes());
        b[2..4].copy_from_slice(&0x0002u16.to_le_bytes());
        b[4..8].copy_from_slice(&seg.timeline.0.to_le_bytes());
        b[8..16].copy_from_slice(&seg.start_lsn(SEG as u64).0.to_le_bytes());
        b[24..32].copy_from_slice(&sysid.to_le_bytes());
        b[32..36].copy_from_slice(&(SEG as u32).to_le_bytes());
        b[36..40].copy_from_slice(&8192u32.to_le_bytes());
        for (i, x) in b[64..].iter_mut().enumerate() {
            *x = (i as u32).wrapping_mul(seg.seg + 7).to_le_bytes()[1];
        }
        b
    }

    /// A data directory's pg_wal with segments (and their `.ready` files).
    struct PgWal {
        _dir: tempfile::TempDir,
        wal: PathBuf,
    }

    impl PgWal {
        fn new() -> PgWal {
            let dir = tempfile::tempdir().unwrap();
            let wal = dir.path().join("pg_wal");
            fs::create_dir_all(wal.join("archive_status")).unwrap();
            PgWal { _dir: dir, wal }
        }

        fn add(&self, name: &str, status: &str) -> PathBuf {
            let p = self.wal.join(name);
            let content = match name.parse::<SegmentName>() {
                Ok(_) => segment(name, 42),
                Err(_) => b"history or partial".to_vec(),
            };
            fs::write(&p, content).unwrap();
            fs::write(
                self.wal.join(format!("archive_status/{name}.{status}")),
                b"",
            )
            .unwrap();
            p
        }

        fn marker(&self, name: &str) -> PathBuf {
            self.wal.join(MARKER_DIR).join(name)
        }
    }

    fn n(i: u32) -> String {
        format!("0000000100000000{i:08X}")
    }

    fn opts(parallel: usize) -> Options {
        Options {
            lock_wait: Duration::from_millis(300),
            ..Options::with_parallel(parallel)
        }
    }

    async fn stored(repo: &Repository, name: &str) -> Option<Vec<u8>> {
        let key = Repository::wal_key(&name.parse().unwrap());
        repo.get_verified(&key).await.ok().map(|(_, raw)| raw)
    }

    #[test]
    fn lookahead_follows_parallel() {
        assert_eq!(Options::with_parallel(1).lookahead, 0);
        assert_eq!(Options::with_parallel(2).lookahead, 8);
        assert_eq!(Options::with_parallel(64).lookahead, MAX_LOOKAHEAD);
    }

    #[tokio::test]
    async fn pushes_ready_segments_ahead_and_answers_from_their_markers() {
        let (r, w) = (repo(), PgWal::new());
        let paths: Vec<PathBuf> = (1..=6).map(|i| w.add(&n(i), "ready")).collect();
        let out = push(&r, &paths[0], None, &opts(2)).await;
        let report = out.requested.unwrap();
        assert!(!out.from_marker);
        assert!(matches!(report.outcome, PutOutcome::Stored { .. }));
        let mut ahead: Vec<String> = out.ahead.iter().map(|r| r.name.to_string()).collect();
        ahead.sort();
        assert_eq!(ahead, (2..=6).map(n).collect::<Vec<_>>());
        for i in 2..=6 {
            assert_eq!(stored(&r, &n(i)).await.unwrap(), segment(&n(i), 42));
            let m: Marker = serde_json::from_slice(&fs::read(w.marker(&n(i))).unwrap()).unwrap();
            assert_eq!((m.name.as_str(), m.size), (n(i).as_str(), SEG as u64));
            assert_eq!(m.repository, "memory://test");
            assert_eq!(m.blake3, Digest::blake3(&segment(&n(i), 42)).to_string());
        }
        assert!(
            !w.marker(&n(1)).exists(),
            "the requested segment needs no marker"
        );
        // PostgreSQL's next call is answered from the marker, which goes.
        fs::rename(
            w.wal.join(format!("archive_status/{}.ready", n(1))),
            w.wal.join(format!("archive_status/{}.done", n(1))),
        )
        .unwrap();
        let out = push(&r, &paths[1], None, &opts(2)).await;
        assert!(out.from_marker);
        assert_eq!(out.requested.unwrap().outcome, PutOutcome::AlreadyStored);
        assert!(out.ahead.is_empty());
        assert!(!w.marker(&n(2)).exists());
        // A marker answers with parallel 1 too.
        let out = push(&r, &paths[2], None, &opts(1)).await;
        assert!(out.from_marker && out.requested.is_ok());
    }

    #[tokio::test]
    async fn only_plain_segments_of_the_timeline_after_the_requested_one() {
        let (r, w) = (repo(), PgWal::new());
        w.add(&n(1), "ready");
        let asked = w.add(&n(2), "ready");
        w.add(&n(3), "ready");
        w.add(&n(4), "done");
        w.add(&format!("{}.partial", n(5)), "ready");
        w.add("00000002.history", "ready");
        w.add("000000020000000000000006", "ready");
        w.add(&format!("{}.00000028.backup", n(3)), "ready");
        // Ready but missing from pg_wal: nothing to push.
        fs::write(w.wal.join(format!("archive_status/{}.ready", n(7))), b"").unwrap();
        // Beyond the look-ahead (2 × 4 = 8 ready segments after the requested one).
        for i in 8..=20 {
            w.add(&n(i), "ready");
        }
        let out = push(&r, &asked, None, &opts(2)).await;
        out.requested.unwrap();
        let mut ahead: Vec<String> = out.ahead.iter().map(|r| r.name.to_string()).collect();
        ahead.sort();
        // n(3), then n(7) (no file) takes a place in the window, then n(8)..n(13).
        let mut want = vec![n(3)];
        want.extend((8..=13).map(n));
        assert_eq!(ahead, want);
        assert!(stored(&r, &n(1)).await.is_none());
    }

    #[tokio::test]
    async fn markers_that_do_not_match_never_answer() {
        let store = Arc::new(InMemory::new());
        let (r, w) = (repo_at("memory://test", store.clone()), PgWal::new());
        let paths: Vec<PathBuf> = (1..=4).map(|i| w.add(&n(i), "ready")).collect();
        push(&r, &paths[0], None, &opts(2)).await.requested.unwrap();
        for i in 2..=4 {
            assert!(w.marker(&n(i)).exists());
        }

        // Another content under the same name: refused, never answered 0.
        let mut changed = segment(&n(2), 42);
        changed[SEG / 2] ^= 0xFF;
        fs::write(&paths[1], &changed).unwrap();
        let out = push(&r, &paths[1], None, &opts(2)).await;
        assert!(!out.from_marker);
        assert!(
            matches!(out.requested, Err(Error::Conflict { .. })),
            "{:?}",
            out.requested
        );
        assert!(!w.marker(&n(2)).exists(), "a mismatching marker is removed");

        // Another repository at another URL: pushed there.
        let other = repo_at("memory://other", Arc::new(InMemory::new()));
        let out = push(&other, &paths[2], None, &opts(1)).await;
        assert!(!out.from_marker);
        assert!(matches!(
            out.requested.unwrap().outcome,
            PutOutcome::Stored { .. }
        ));
        assert_eq!(stored(&other, &n(3)).await.unwrap(), segment(&n(3), 42));

        // Same URL, but the object is gone (repository wiped): pushed again.
        let key = Repository::wal_key(&n(4).parse().unwrap());
        r.delete(&key).await.unwrap();
        let out = push(&r, &paths[3], None, &opts(1)).await;
        assert!(!out.from_marker);
        assert!(matches!(
            out.requested.unwrap().outcome,
            PutOutcome::Stored { .. }
        ));
        assert_eq!(stored(&r, &n(4)).await.unwrap(), segment(&n(4), 42));

        // Bogus markers: garbage, another name, a wrong digest.
        let bogus = |name: &str, m: &dyn Fn(&mut Marker)| {
            let mut marker = Marker {
                name: name.into(),
                repository: "memory://test".into(),
                blake3: Digest::blake3(&segment(name, 42)).to_string(),
                size: SEG as u64,
                mtime_ns: 0,
                stored_len: None,
                written_at: 0,
            };
            m(&mut marker);
            fs::create_dir_all(w.marker("x").parent().unwrap()).unwrap();
            fs::write(w.marker(name), serde_json::to_vec(&marker).unwrap()).unwrap();
        };
        for (i, tweak) in [
            (
                5,
                &(|m: &mut Marker| m.blake3 = "00".repeat(32)) as &dyn Fn(&mut Marker),
            ),
            (6, &|m: &mut Marker| m.name = n(7)),
            (7, &|m: &mut Marker| m.size = 8192),
            (8, &|_: &mut Marker| {}),
        ] {
            let p = w.add(&n(i), "ready");
            bogus(&n(i), tweak);
            // Not in the repository, whatever the marker says.
            let out = push(&r, &p, None, &opts(1)).await;
            assert!(!out.from_marker, "{i}");
            assert!(matches!(
                out.requested.unwrap().outcome,
                PutOutcome::Stored { .. }
            ));
            assert_eq!(stored(&r, &n(i)).await.unwrap(), segment(&n(i), 42));
            assert!(!w.marker(&n(i)).exists());
        }
        let p = w.add(&n(9), "ready");
        fs::write(w.marker(&n(9)), b"{not json").unwrap();
        let out = push(&r, &p, None, &opts(1)).await;
        assert!(!out.from_marker && out.requested.is_ok());
    }

    #[tokio::test]
    async fn another_holder_of_the_lock_means_pushing_alone() {
        let (r, w) = (repo(), PgWal::new());
        let paths: Vec<PathBuf> = (1..=3).map(|i| w.add(&n(i), "ready")).collect();
        fs::create_dir_all(w.wal.join(MARKER_DIR)).unwrap();
        let held = File::create(w.wal.join(LOCK_NAME)).unwrap();
        held.lock().unwrap();
        let started = Instant::now();
        let out = push(&r, &paths[0], None, &opts(2)).await;
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert!(matches!(
            out.requested.unwrap().outcome,
            PutOutcome::Stored { .. }
        ));
        assert!(out.ahead.is_empty());
        assert!(stored(&r, &n(2)).await.is_none());
        held.unlock().unwrap();
        let out = push(&r, &paths[1], None, &opts(2)).await;
        assert_eq!(out.ahead.len(), 1);
    }

    #[tokio::test]
    async fn stale_markers_and_leftovers_are_removed() {
        let (r, w) = (repo(), PgWal::new());
        let asked = w.add(&n(5), "ready");
        w.add(&n(3), "done");
        let dir = w.wal.join(MARKER_DIR);
        fs::create_dir_all(&dir).unwrap();
        for f in [n(2), n(3), format!(".{}.123.tmp", n(6)), "README".into()] {
            fs::write(dir.join(f), b"{}").unwrap();
        }
        w.add(&n(6), "ready");
        push(&r, &asked, None, &opts(2)).await.requested.unwrap();
        let mut left: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, vec![n(6), "README".to_string()]);
    }

    #[tokio::test]
    async fn nothing_is_pushed_ahead_when_the_requested_segment_fails() {
        let (r, w) = (repo(), PgWal::new());
        let asked = w.add(&n(1), "ready");
        w.add(&n(2), "ready");
        fs::write(&asked, &segment(&n(1), 42)[..SEG / 2]).unwrap();
        let out = push(&r, &asked, None, &opts(2)).await;
        assert!(matches!(out.requested, Err(Error::BadInput { .. })));
        assert!(out.ahead.is_empty());
        assert!(stored(&r, &n(2)).await.is_none());
        // Another cluster's segment ahead is refused, and only it.
        let w2 = PgWal::new();
        let asked = w2.add(&n(1), "ready");
        w2.add(&n(2), "ready");
        fs::write(w2.wal.join(n(2)), segment(&n(2), 7)).unwrap();
        w2.add(&n(3), "ready");
        let out = push(&r, &asked, None, &opts(2)).await;
        out.requested.unwrap();
        let names: Vec<String> = out.ahead.iter().map(|r| r.name.to_string()).collect();
        assert_eq!(names, vec![n(3)]);
        assert!(!w2.marker(&n(2)).exists());
    }
}
