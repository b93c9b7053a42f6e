//! One tar stream of a backup, cut into parts that are compressed and uploaded in parallel.
//!
//! What goes into a backup (the walk of the data directory and tablespaces, the exclusions)
//! and the protocol around it (`pg_backup_start`, the WAL wait, the manifest) are `backup`'s;
//! this room only turns a list of entries into numbered parts in the repository, with
//! bounded memory: the tar writer on a blocking thread, the part buffers it reuses, and the
//! upload tasks.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::pages::{relation_segment, BadPage, PageChecker, PageRules};
use super::{stored, Progress, WalkEntry};
use crate::format;
use crate::manifest::{part_key, EntryKind, FileEntry};
use crate::repo::Repository;
use crate::Error;

pub(super) struct StreamResult {
    pub(super) files: Vec<FileEntry>,
    pub(super) parts: u32,
    pub(super) tar_bytes: u64,
    pub(super) stored_bytes: u64,
    /// Pages failing their checksum (see `pages`).
    pub(super) bad_pages: BadPages,
}

/// Pages failing their checksum: each file's, by path.
pub(super) type BadPages = Vec<(String, Vec<BadPage>)>;

/// Whether and how the pages of a stream's relation files are checked.
#[derive(Debug, Clone, Copy)]
pub(super) struct PageCheck {
    /// The rules; `None`: not checked (the cluster has no data checksums).
    pub(super) rules: Option<PageRules>,
    /// The stream is a tablespace's (relation files are under `PG_<version>/<db>/`).
    pub(super) tablespace: bool,
}

/// Writes `entries` as one tar stream, cut into parts that are compressed and uploaded as
/// they fill, up to `parallel` at once.
///
/// The tar writer runs on a blocking thread and hands each full part over a channel of one
/// slot; every part gets its number as it leaves the writer, so the parts are numbered in
/// stream order (`part-000001` onwards, contiguous) whatever order their uploads finish in.
/// Each part is compressed on the blocking pool and uploaded by a task of its own; its
/// buffer goes back to the writer as soon as it is compressed. In memory at any time:
/// `parallel + 1` part buffers (filled, queued or compressing; the writer waits for one to
/// come back rather than allocate more) and the compressed copies being uploaded. A
/// `parallel + 2`nd buffer (one filled while another waits in the queue) bought no speed on
/// two cores and cost a part's size of RSS.
#[allow(clippy::too_many_arguments)]
pub(super) async fn upload_stream(
    repo: &Repository,
    name: &str,
    stream: &str,
    root: &Path,
    entries: Vec<WalkEntry>,
    part_size: usize,
    parallel: usize,
    progress: Arc<dyn Progress>,
    pages: PageCheck,
) -> Result<StreamResult, Error> {
    let parallel = parallel.max(1);
    // Every part is bound to its key and the repository's cluster (see format.rs).
    let system_identifier = repo.system_identifier().await?;
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(1);
    // Part buffers come back here once compressed: at most `parallel + 1` are ever
    // allocated, so the heap stays flat instead of keeping a trail of freed parts.
    let (free_tx, free_rx) = std::sync::mpsc::channel::<Vec<u8>>();
    let root = root.to_path_buf();
    let stream_name = stream.to_string();
    let writer = tokio::task::spawn_blocking(move || {
        let sink = PartWriter::new(part_size, parallel + 1, tx, free_rx);
        write_tar(&root, &stream_name, entries, sink, progress.as_ref(), pages)
    });
    let mut uploads: JoinSet<Result<u64, Error>> = JoinSet::new();
    let mut stored_total = 0u64;
    let mut parts = 0u32;
    let mut upload_error = None;
    let mut reaped = |done: Result<Result<u64, Error>, tokio::task::JoinError>| match done
        .expect("upload tasks do not panic and are not aborted while awaited")
    {
        Ok(n) => {
            stored_total += n;
            None
        }
        Err(e) => Some(e),
    };
    loop {
        // A free upload slot first: the writer meanwhile fills the next part and the queue.
        let chunk = if uploads.len() >= parallel {
            let done = uploads.join_next().await.expect("uploads are running");
            upload_error = reaped(done);
            if upload_error.is_some() {
                break;
            }
            continue;
        } else if uploads.is_empty() {
            rx.recv().await
        } else {
            tokio::select! {
                biased;
                Some(done) = uploads.join_next() => {
                    upload_error = reaped(done);
                    if upload_error.is_some() {
                        break;
                    }
                    continue;
                }
                chunk = rx.recv() => chunk,
            }
        };
        let Some(chunk) = chunk else {
            break; // the writer is done (or failed: its result says why)
        };
        parts += 1;
        let key = part_key(name, stream, parts);
        let compression = repo.compression;
        let (repo, free_tx) = (repo.clone(), free_tx.clone());
        uploads.spawn(async move {
            let binding = format::Binding::new(system_identifier, &key);
            let encoded = tokio::task::spawn_blocking(move || {
                let kind = format::DigestKind::Sha256OfBody;
                let encoded = format::encode_as(&chunk, compression, kind, Some(&binding));
                let _ = free_tx.send(chunk); // the writer may be gone: then it is dropped
                encoded
            })
            .await
            .expect("encoding does not panic");
            repo.put_encoded(&key, encoded).await.map(stored)
        });
    }
    // The writer stops at its next hand-over once the receiver is gone.
    drop(rx);
    let written = writer.await.expect("tar writer does not panic");
    if upload_error.is_none() && written.is_ok() {
        while let Some(done) = uploads.join_next().await {
            upload_error = reaped(done);
            if upload_error.is_some() {
                break;
            }
        }
    }
    // Whatever still runs after a failure is abandoned: the backup gets no manifest.
    uploads.abort_all();
    if let Some(e) = upload_error {
        return Err(e);
    }
    let (files, tar_bytes, bad_pages) = written?;
    Ok(StreamResult {
        files,
        parts,
        tar_bytes,
        stored_bytes: stored_total,
        bad_pages,
    })
}

/// A `Write` that cuts what it receives into parts of `part_size` bytes and hands each full
/// part to the uploader, taking its next buffer from those the uploader gave back.
pub(super) struct PartWriter {
    buf: Vec<u8>,
    part_size: usize,
    /// Part buffers allocated so far (the one being filled included), and the most there
    /// may be.
    allocated: usize,
    max_buffers: usize,
    tx: mpsc::Sender<Vec<u8>>,
    free: std::sync::mpsc::Receiver<Vec<u8>>,
    total: u64,
}

impl PartWriter {
    /// A writer of parts of `part_size` bytes, handed to `tx`, with at most `max_buffers`
    /// part buffers, which come back through `free`.
    pub(super) fn new(
        part_size: usize,
        max_buffers: usize,
        tx: mpsc::Sender<Vec<u8>>,
        free: std::sync::mpsc::Receiver<Vec<u8>>,
    ) -> PartWriter {
        PartWriter {
            buf: Vec::with_capacity(part_size),
            part_size,
            allocated: 1,
            max_buffers,
            tx,
            free,
            total: 0,
        }
    }

    fn send(&mut self) -> std::io::Result<()> {
        let full = std::mem::take(&mut self.buf);
        self.tx
            .blocking_send(full)
            .map_err(|_| std::io::Error::other("the upload failed"))?;
        // Only once the part is handed over, so that a recycled (resident) buffer is not
        // held while waiting. At most `max_buffers` are ever allocated: with all of them out
        // (one queued, the rest compressing), the next part waits for one to come back.
        let mut b = loop {
            match self.free.try_recv() {
                Ok(b) => break b,
                Err(_) if self.allocated < self.max_buffers => {
                    self.allocated += 1;
                    break Vec::with_capacity(self.part_size);
                }
                Err(_) => {}
            }
            match self
                .free
                .recv_timeout(std::time::Duration::from_millis(100))
            {
                Ok(b) => break b,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) if self.tx.is_closed() => {
                    return Err(std::io::Error::other("the upload failed"));
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                // Nobody can give one back: a fresh one rather than waiting forever.
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    self.allocated += 1;
                    break Vec::with_capacity(self.part_size);
                }
            }
        };
        b.clear();
        self.buf = b;
        Ok(())
    }

    fn finish(mut self) -> std::io::Result<u64> {
        if !self.buf.is_empty() {
            self.send()?;
        }
        Ok(self.total)
    }
}

impl Write for PartWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let n = data.len().min(self.part_size - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        self.total += n as u64;
        if self.buf.len() == self.part_size {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Reads exactly `remaining` bytes of a file that may change while it is read: a file that
/// shrank is padded with zeros (WAL replay rewrites it), one that grew is cut. Hashes what
/// it returns (BLAKE3: see [`crate::manifest::MANIFEST_VERSION`]), and checks the pages of a
/// relation file (`pages`).
struct SnapshotReader<'a> {
    file: std::fs::File,
    remaining: u64,
    hasher: blake3::Hasher,
    progress: &'a dyn Progress,
    pages: Option<PageChecker>,
}

impl Read for SnapshotReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.remaining == 0 {
            return Ok(0);
        }
        let want = buf.len().min(self.remaining as usize);
        let mut n = self.file.read(&mut buf[..want])?;
        if n == 0 {
            buf[..want].fill(0);
            n = want;
        }
        self.remaining -= n as u64;
        self.hasher.update(&buf[..n]);
        if let Some(pages) = &mut self.pages {
            pages.feed(&buf[..n], &self.file);
        }
        self.progress.advance(n as u64);
        Ok(n)
    }
}

fn write_tar(
    root: &Path,
    stream: &str,
    entries: Vec<WalkEntry>,
    sink: PartWriter,
    progress: &dyn Progress,
    pages: PageCheck,
) -> Result<(Vec<FileEntry>, u64, BadPages), Error> {
    let io = |context: String| move |source| Error::Io { context, source };
    let mut tar = tar::Builder::new(sink);
    let mut files = Vec::with_capacity(entries.len());
    let mut bad_pages = Vec::new();
    let mut skipped = BTreeMap::new();
    for e in entries {
        let mut header = tar::Header::new_gnu();
        header.set_mode(e.mode);
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        let ctx = || format!("cannot archive {}", root.join(&e.rel).display());
        let digest = match e.kind {
            EntryKind::Dir => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_size(0);
                tar.append_data(&mut header, &e.rel, std::io::empty())
                    .map_err(io(ctx()))?;
                None
            }
            EntryKind::Symlink => {
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_size(0);
                let target = e.target.clone().unwrap_or_default();
                tar.append_link(&mut header, &e.rel, &target)
                    .map_err(io(ctx()))?;
                None
            }
            EntryKind::File => {
                let file = match std::fs::File::open(root.join(&e.rel)) {
                    Ok(f) => f,
                    // Dropped during the backup: WAL replay recreates or removes it.
                    Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                        skipped.insert(e.rel.clone(), e.size);
                        progress.advance(e.size);
                        continue;
                    }
                    Err(err) => return Err(io(ctx())(err)),
                };
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(e.size);
                let checker = pages.rules.and_then(|rules| {
                    relation_segment(&e.rel, pages.tablespace)
                        .map(|segment| PageChecker::new(rules, segment))
                });
                let mut reader = SnapshotReader {
                    file,
                    remaining: e.size,
                    hasher: blake3::Hasher::new(),
                    progress,
                    pages: checker,
                };
                tar.append_data(&mut header, &e.rel, &mut reader)
                    .map_err(io(ctx()))?;
                if let Some(checker) = reader.pages.take() {
                    if !checker.bad.is_empty() {
                        let blocks: Vec<String> = checker
                            .bad
                            .iter()
                            .take(5)
                            .map(|b| {
                                format!(
                                    "block {} (stored 0x{:04X}, computed 0x{:04X})",
                                    b.block, b.stored, b.computed
                                )
                            })
                            .collect();
                        tracing::warn!(
                            "{}: {} page(s) fail their checksum: {}{}",
                            root.join(&e.rel).display(),
                            checker.bad.len(),
                            blocks.join(", "),
                            if checker.bad.len() > 5 { ", ..." } else { "" }
                        );
                        bad_pages.push((e.rel.clone(), checker.bad));
                    }
                }
                Some(reader.hasher.finalize().to_hex().to_string())
            }
        };
        files.push(FileEntry {
            stream: stream.to_string(),
            path: e.rel,
            kind: e.kind,
            size: e.size,
            mode: e.mode,
            sha256: None,
            blake3: digest,
            target: e.target,
        });
    }
    if !skipped.is_empty() {
        tracing::debug!(
            "{} files vanished during the backup: {:?}",
            skipped.len(),
            skipped.keys().take(5)
        );
    }
    let sink = tar
        .into_inner()
        .map_err(io(format!("cannot finish the {stream} stream")))?;
    let total = sink
        .finish()
        .map_err(io(format!("cannot finish the {stream} stream")))?;
    Ok((files, total, bad_pages))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// With every part buffer out (handed over, none given back), the tar writer waits for
    /// one to come back instead of allocating another: at most `parallel + 1` ever exist.
    #[test]
    fn part_buffers_never_exceed_parallel_plus_one() {
        let (parallel, part_size) = (2, 1024);
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(1);
        let (free_tx, free_rx) = std::sync::mpsc::channel::<Vec<u8>>();
        let writer = std::thread::spawn(move || {
            let mut sink = PartWriter::new(part_size, parallel + 1, tx, free_rx);
            for i in 0..20u8 {
                sink.write_all(&[i; 1024]).unwrap();
                assert!(sink.allocated <= parallel + 1, "{} buffers", sink.allocated);
            }
            let allocated = sink.allocated;
            (sink.finish().unwrap(), allocated)
        });
        // Two parts taken (compressing) and a third queued, none given back: the writer
        // has all three buffers out and must wait.
        let held: Vec<Vec<u8>> = (0..2).map(|_| rx.blocking_recv().unwrap()).collect();
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            !writer.is_finished(),
            "the writer went on without a buffer back"
        );
        let mut pointers: std::collections::HashSet<usize> =
            held.iter().map(|b| b.as_ptr() as usize).collect();
        for b in held {
            free_tx.send(b).unwrap();
        }
        // From now on every part comes back as soon as it is taken.
        let mut parts = 2;
        while let Some(b) = rx.blocking_recv() {
            assert_eq!(b.len(), part_size);
            assert!(b.iter().all(|&x| x == parts), "parts arrive in order");
            pointers.insert(b.as_ptr() as usize);
            parts += 1;
            let _ = free_tx.send(b);
        }
        let (total, allocated) = writer.join().unwrap();
        assert_eq!((parts, total), (20, 20 * 1024));
        assert_eq!(allocated, parallel + 1);
        assert!(
            pointers.len() <= parallel + 1,
            "{} distinct buffers",
            pointers.len()
        );
    }
}
