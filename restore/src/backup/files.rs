//! What happens to each restored file beside the tar extractor: its write-back to disk
//! started as it is written, its digest checked against the manifest on a thread of its own,
//! and its fsync on sync threads.
//!
//! Its own room because it is the restore's throughput machinery, not its logic: the
//! extractor in `backup` hands every file over and learns of a failure at its next
//! hand-over; which files, in which order, and what a mismatch means stay there.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};
use walarchive::manifest::FileEntry;

use super::{corrupt, write_err};
use crate::FetchError;

/// Bytes of a file written before their write-back to disk is started.
pub(super) const WRITEBACK_AFTER: u64 = 8 << 20;

/// Starts writing `len` bytes of `file` from `offset` back to disk, without waiting.
///
/// A restored data directory is far smaller than the dirty page cache the kernel lets pile
/// up (10% of memory before background write-back starts), so without this nothing reached
/// the disk until the files' fsyncs, and the restore then waited for the whole gigabyte to
/// be written after its CPU work was done (figures in docs/benchmarks.md). Started
/// as the data is written, the disk works while the extractor does; the fsync that makes
/// each file durable is unchanged. PostgreSQL does the same (`*_flush_after`). A failure
/// here is only a lost hint: the fsync reports real errors.
pub(super) fn start_writeback(file: &std::fs::File, offset: u64, len: u64) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // The one unsafe block of the crate: nix does not wrap sync_file_range.
        // SAFETY: a valid descriptor and plain integers; the call only schedules I/O.
        #[allow(unsafe_code)]
        unsafe {
            libc::sync_file_range(
                file.as_raw_fd(),
                offset as libc::off64_t,
                len as libc::off64_t,
                libc::SYNC_FILE_RANGE_WRITE,
            );
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, offset, len);
}

/// What the extractor sends the hashing thread: a file's start (its path and manifest
/// entry), its content in order, then its end (the bytes read).
pub(super) enum HashJob {
    Start { rel: String, want: FileEntry },
    Data(Vec<u8>),
    End { len: u64 },
}

/// A file's digest being computed: the one its manifest entry records (BLAKE3, or SHA-256
/// in a version-1 manifest).
enum FileDigest {
    Sha256(Sha256),
    Blake3(Box<blake3::Hasher>),
}

impl FileDigest {
    fn for_entry(want: &FileEntry) -> FileDigest {
        if want.blake3.is_some() {
            FileDigest::Blake3(Box::default())
        } else {
            FileDigest::Sha256(Sha256::new())
        }
    }

    fn update(&mut self, data: &[u8]) {
        match self {
            FileDigest::Sha256(h) => h.update(data),
            FileDigest::Blake3(h) => {
                h.update(data);
            }
        }
    }

    fn hex(self) -> String {
        match self {
            FileDigest::Sha256(h) => hex::encode(h.finalize()),
            FileDigest::Blake3(h) => h.finalize().to_hex().to_string(),
        }
    }
}

/// Checks restored files against the manifest's digests on a thread of its own while the
/// extractor goes on writing: on one thread, hashing took as long as reading, decoding and
/// writing together (figures in docs/benchmarks.md), and the extractor was
/// what the whole restore waited for. Content goes over in the extractor's own buffers, in
/// order, and comes back for reuse: at most [`Hasher::BUFFERS`] of [`Hasher::CHUNK`] bytes
/// are ever allocated. The first mismatch ends the thread; the extractor learns it at its
/// next hand-over, and [`Hasher::finish`] reports it otherwise.
pub(super) struct Hasher {
    tx: Option<std::sync::mpsc::SyncSender<HashJob>>,
    free: std::sync::mpsc::Receiver<Vec<u8>>,
    spare: Option<Vec<u8>>,
    allocated: usize,
    thread: Option<std::thread::JoinHandle<Result<(), FetchError>>>,
}

impl Hasher {
    const CHUNK: usize = 256 * 1024;
    const BUFFERS: usize = 16;

    pub(super) fn new(stream: &str) -> Hasher {
        let (tx, rx) = std::sync::mpsc::sync_channel::<HashJob>(Self::BUFFERS);
        let (free_tx, free) = std::sync::mpsc::channel::<Vec<u8>>();
        let stream = stream.to_string();
        let thread = std::thread::spawn(move || {
            // The file being hashed: its path, manifest entry and digest so far.
            let mut current = None;
            for job in rx {
                match job {
                    HashJob::Start { rel, want } => {
                        let digest = FileDigest::for_entry(&want);
                        current = Some((rel, want, digest));
                    }
                    HashJob::Data(buf) => {
                        let (_, _, digest) = current.as_mut().expect("a file was started");
                        digest.update(&buf);
                        let _ = free_tx.send(buf); // the extractor may be done
                    }
                    HashJob::End { len } => {
                        let (rel, want, digest) = current.take().expect("a file was started");
                        check_file(&stream, &rel, &want, &digest.hex(), len)?;
                    }
                }
            }
            Ok(())
        });
        Hasher {
            tx: Some(tx),
            free,
            spare: None,
            allocated: 0,
            thread: Some(thread),
        }
    }

    /// A buffer of [`Hasher::CHUNK`] bytes: one the hashing thread gave back, a new one
    /// while fewer than [`Hasher::BUFFERS`] exist, or else the next one given back.
    pub(super) fn buffer(&mut self) -> Result<Vec<u8>, FetchError> {
        let mut buf = match self.spare.take().or_else(|| self.free.try_recv().ok()) {
            Some(b) => b,
            None if self.allocated < Self::BUFFERS => {
                self.allocated += 1;
                Vec::with_capacity(Self::CHUNK)
            }
            None => match self.free.recv() {
                Ok(b) => b,
                // The thread ended: a mismatch.
                Err(_) => return Err(self.failure()),
            },
        };
        buf.resize(Self::CHUNK, 0);
        Ok(buf)
    }

    /// Keeps `buf` for the next [`Hasher::buffer`].
    pub(super) fn spare(&mut self, buf: Vec<u8>) {
        self.spare = Some(buf);
    }

    pub(super) fn send(&mut self, job: HashJob) -> Result<(), FetchError> {
        let tx = self.tx.as_ref().expect("present until finished");
        tx.send(job).map_err(|_| self.failure())
    }

    /// The error the hashing thread ended with (it only ends early on one).
    fn failure(&mut self) -> FetchError {
        self.tx = None;
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(Err(e))) => e,
            _ => FetchError::BadBackup("the checksum thread stopped".into()),
        }
    }

    /// Waits until every file handed over is checked.
    pub(super) fn finish(mut self) -> Result<(), FetchError> {
        self.tx = None;
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(FetchError::BadBackup("the checksum thread panicked".into())),
            None => Ok(()), // its error was already returned
        }
    }
}

/// Checks a restored file's size and digest (hex, of the kind its entry records: BLAKE3,
/// or SHA-256 in a version-1 manifest) against its manifest entry.
fn check_file(
    stream: &str,
    rel: &str,
    want: &FileEntry,
    digest: &str,
    len: u64,
) -> Result<(), FetchError> {
    let (kind, expected) = match (&want.blake3, &want.sha256) {
        (Some(b), _) => ("blake3", Some(b.as_str())),
        (None, s) => ("sha256", s.as_deref()),
    };
    if len != want.size || Some(digest) != expected {
        return Err(corrupt(
            stream,
            format!(
                "{rel} does not match the manifest ({kind} {digest}, {len} bytes; expected {}, {} bytes)",
                expected.unwrap_or("?"),
                want.size
            ),
        ));
    }
    Ok(())
}

/// Fsyncs restored files on threads of its own while extraction goes on, several at once
/// (the file system commits concurrent fsyncs together: a data directory is mostly small
/// files, and one fsync after another costs a journal commit each). A file is handed over
/// complete and is closed once synced; [`Syncer::finish`] waits for every one of them.
pub(super) struct Syncer {
    tx: std::sync::mpsc::SyncSender<(std::fs::File, PathBuf)>,
    threads: Vec<std::thread::JoinHandle<()>>,
    failure: Arc<Mutex<Option<FetchError>>>,
}

impl Syncer {
    pub(super) fn new(threads: usize) -> Syncer {
        // Bounds the files open and waiting.
        let (tx, rx) = std::sync::mpsc::sync_channel::<(std::fs::File, PathBuf)>(64);
        let rx = Arc::new(Mutex::new(rx));
        let failure = Arc::new(Mutex::new(None));
        let threads = (0..threads)
            .map(|_| {
                let (rx, failure) = (rx.clone(), failure.clone());
                std::thread::spawn(move || loop {
                    let job = rx.lock().expect("not poisoned").recv();
                    let Ok((file, path)) = job else {
                        return;
                    };
                    if let Err(e) = file.sync_all() {
                        failure
                            .lock()
                            .expect("not poisoned")
                            .get_or_insert(write_err(&path, e));
                    }
                })
            })
            .collect();
        Syncer {
            tx,
            threads,
            failure,
        }
    }

    /// Queues `file` (complete) for its fsync; fails once an earlier fsync failed.
    pub(super) fn sync(&self, file: std::fs::File, path: PathBuf) -> Result<(), FetchError> {
        if let Some(e) = self.failure.lock().expect("not poisoned").take() {
            return Err(e);
        }
        self.tx
            .send((file, path))
            .expect("the sync threads run until the sender is dropped");
        Ok(())
    }

    /// Waits until every queued file is synced and closed.
    pub(super) fn finish(self) -> Result<(), FetchError> {
        drop(self.tx);
        for t in self.threads {
            t.join().expect("sync threads do not panic");
        }
        match self.failure.lock().expect("not poisoned").take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}
