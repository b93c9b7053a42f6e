//! Restoring base backups (`backup-fetch`).
//!
//! Up to `parallel` parts are downloaded at once, each verified against its own checksum,
//! and fed in order through a bounded window to a tar extractor running on a blocking thread
//! (extraction stays sequential: a tar stream is read front to back); every file is checked
//! again against the manifest's digest (BLAKE3; SHA-256 in a version-1 manifest) and fsynced (by `parallel` threads alongside the
//! extractor), and the manifest's list must be matched exactly, so a restore either
//! reproduces the backup bit for bit or fails with the reason. Only then are
//! backup_label, tablespace_map and the recovery settings written: a destination without
//! them cannot be started by mistake as if it were a consistent cluster.

mod files;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use walarchive::backup::Progress;
use walarchive::catalog;
use walarchive::manifest::{backup_key, part_key, EntryKind, FileEntry, Manifest};
use walarchive::Repository;

use crate::destination::DataDir;
use crate::recovery::{self, Recovery, Target};
use crate::FetchError;
use files::{start_writeback, HashJob, Hasher, Syncer, WRITEBACK_AFTER};

/// How to restore.
#[derive(Clone, Debug)]
pub struct BackupFetchOptions {
    /// Destination data directory (missing or empty, unless `force` replaces a data
    /// directory).
    pub dest: PathBuf,
    /// Backup name, or `LATEST`.
    pub backup: String,
    /// Recovery settings.
    pub recovery: Recovery,
    /// Where each tablespace goes (default: where it was).
    pub tablespace_map: BTreeMap<u32, PathBuf>,
    /// Replace the destination when it is a (stopped) data directory.
    pub force: bool,
    /// The `restore_command` to write.
    pub restore_command: String,
    /// Parts downloaded and decoded at once (1: one at a time, while the previous one is
    /// extracted).
    pub parallel: usize,
    /// Where to keep a progress document (`crate::progress_file`), if anywhere.
    pub progress_file: Option<PathBuf>,
}

/// Default number of parts downloaded at once (the CLI's `--parallel` default).
pub const DEFAULT_PARALLEL: usize = 2;

/// What was restored.
#[derive(Clone, Debug)]
pub struct FetchedBackup {
    /// The backup's manifest.
    pub manifest: Manifest,
    /// Files written.
    pub files: usize,
    /// Bytes written.
    pub bytes: u64,
}

/// Restores a backup and prepares the destination for point-in-time recovery.
pub async fn fetch_backup(
    repo: &Repository,
    opts: &BackupFetchOptions,
    progress: Arc<dyn Progress>,
) -> Result<FetchedBackup, FetchError> {
    let entries = catalog::list_backups(repo, true).await?;
    if let Some(e) = entries
        .iter()
        .find(|e| e.name == opts.backup && !e.is_complete())
    {
        return Err(match &e.damaged {
            Some(why) => FetchError::BadBackup(why.clone()),
            None => FetchError::NoBackup(format!(
                "backup {} is incomplete (interrupted or still running) and cannot be restored",
                e.name
            )),
        });
    }
    let damaged: Vec<String> = entries.iter().filter_map(|e| e.damaged.clone()).collect();
    let manifests: Vec<Manifest> = entries.into_iter().filter_map(|b| b.manifest).collect();
    let manifest = match recovery::choose(&manifests, &opts.backup, &opts.recovery) {
        Ok(m) => m.clone(),
        // Say so when the backups that would have served are damaged, not merely absent.
        Err(FetchError::NoBackup(_)) if !damaged.is_empty() => {
            return Err(FetchError::BadBackup(damaged.join("; ")))
        }
        Err(e) => return Err(e),
    };
    if let Some(t) = &opts.recovery.target {
        check_archive_reaches(repo, &opts.recovery, t).await?;
    }
    check_parts_present(repo, &manifest).await?;
    tracing::info!(
        "restoring backup {} ({}..{}, timeline {}) into {}",
        manifest.name,
        manifest.start_lsn,
        manifest.stop_lsn,
        manifest.timeline,
        opts.dest.display()
    );

    // Destinations: each tablespace's directory, which must be missing or empty (it may
    // belong to a running cluster: --force never replaces one; remap it with
    // --tablespace-map), then the data directory, which --force may replace (see
    // crate::destination: nothing is deleted before the restore is complete). When the
    // restore fails, what it wrote is removed again and the data directory's previous
    // contents are put back, so a failed backup-fetch leaves everything as it found it.
    let mut roots = BTreeMap::new();
    let mut prepared: Vec<(PathBuf, bool)> = Vec::new();
    for s in &manifest.streams {
        let Some(oid) = s.tablespace_oid else {
            roots.insert(s.name.clone(), opts.dest.clone());
            continue;
        };
        let root = match opts.tablespace_map.get(&oid) {
            Some(dir) => dir.clone(),
            None => PathBuf::from(s.tablespace_location.clone().unwrap_or_default()),
        };
        let existed = root.exists();
        if let Err(e) = prepare_dir(&root) {
            clean_up(&prepared);
            return Err(e);
        }
        prepared.push((root.clone(), !existed));
        roots.insert(s.name.clone(), root);
    }
    // What this restore writes at the top of the data directory: the leftovers of an
    // interrupted restore that --force may replace are only these (crate::destination).
    let mut restored: BTreeSet<OsString> = manifest
        .files
        .iter()
        .filter(|f| roots.get(&f.stream) == Some(&opts.dest))
        .filter_map(|f| f.path.split('/').next().map(OsString::from))
        .collect();
    restored.extend(
        [
            "backup_label",
            "tablespace_map",
            "postgresql.auto.conf",
            "recovery.signal",
            "standby.signal",
        ]
        .map(OsString::from),
    );
    let data_dir = match DataDir::prepare(&opts.dest, opts.force, &restored) {
        Ok(d) => d,
        Err(e) => {
            clean_up(&prepared);
            return Err(e);
        }
    };
    let file = (opts.progress_file.as_deref())
        .map(|p| crate::progress_file::ProgressFile::new(p, &manifest.name, progress.clone()));
    let progress = file.clone().map_or(progress, |f| f as Arc<dyn Progress>);
    match restore_prepared(repo, opts, manifest, &roots, progress).await {
        Ok(fetched) => {
            data_dir.commit()?;
            file.map_or(Ok(()), |f| f.finish())?;
            Ok(fetched)
        }
        Err(e) => {
            clean_up(&prepared);
            Err(data_dir.roll_back(e))
        }
    }
}

/// Removes what a failed restore wrote into directories that were empty before it: their
/// contents, and the directories it created.
fn clean_up(prepared: &[(PathBuf, bool)]) {
    if prepared.is_empty() {
        return;
    }
    for (dir, created) in prepared.iter().rev() {
        let emptied = std::fs::read_dir(dir).map(|rd| {
            for entry in rd.flatten() {
                let p = entry.path();
                let r = if p.is_dir() && !p.is_symlink() {
                    std::fs::remove_dir_all(&p)
                } else {
                    std::fs::remove_file(&p)
                };
                if let Err(e) = r {
                    tracing::warn!(
                        "cannot remove {} after the failed restore: {e}",
                        p.display()
                    );
                }
            }
        });
        if let Err(e) = emptied {
            tracing::warn!(
                "cannot empty {} after the failed restore: {e}",
                dir.display()
            );
        } else if *created {
            let _ = std::fs::remove_dir(dir);
        }
    }
    tracing::info!("the failed restore's files were removed from the tablespace directories");
}

/// Restores `manifest` into its prepared (empty) destinations.
async fn restore_prepared(
    repo: &Repository,
    opts: &BackupFetchOptions,
    manifest: Manifest,
    roots: &BTreeMap<String, PathBuf>,
    progress: Arc<dyn Progress>,
) -> Result<FetchedBackup, FetchError> {
    // backup_label and tablespace_map come from pg_backup_stop, never from the copy: read
    // first, so that a restore that cannot have them fails before writing gigabytes.
    let (_, label) = repo
        .get_verified(&backup_key(&manifest.name, "backup_label"))
        .await?;
    let map = if manifest.has_tablespace_map {
        let (_, map) = repo
            .get_verified(&backup_key(&manifest.name, "tablespace_map"))
            .await?;
        Some(remap_tablespaces(
            &String::from_utf8_lossy(&map),
            &opts.tablespace_map,
        ))
    } else {
        None
    };
    std::fs::set_permissions(&opts.dest, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| write_err(&opts.dest, e))?;

    progress.start(manifest.original_bytes);
    let mut files = 0;
    let mut bytes = 0;
    for s in &manifest.streams {
        let expected: HashMap<String, FileEntry> = manifest
            .files
            .iter()
            .filter(|f| f.stream == s.name)
            .map(|f| (f.path.clone(), f.clone()))
            .collect();
        let root = Some(roots[&s.name].clone());
        let (n, b) = restore_stream(
            repo,
            &manifest.name,
            &s.name,
            s.parts,
            opts.parallel,
            root,
            expected,
            progress.clone(),
        )
        .await?;
        files += n;
        bytes += b;
    }

    write_durably(&opts.dest.join("backup_label"), &label, false)?;
    if let Some(map) = map {
        write_durably(&opts.dest.join("tablespace_map"), map.as_bytes(), false)?;
    }
    let settings = recovery::settings(&manifest.name, &opts.restore_command, &opts.recovery);
    write_durably(
        &opts.dest.join("postgresql.auto.conf"),
        settings.as_bytes(),
        true,
    )?;
    let signal = if opts.recovery.standby {
        "standby.signal"
    } else {
        "recovery.signal"
    };
    write_durably(&opts.dest.join(signal), b"", false)?;
    for root in roots.values() {
        sync_tree_dirs(root)?;
    }
    Ok(FetchedBackup {
        manifest,
        files,
        bytes,
    })
}

/// Reads every part of backup `m`, verifying each part's checksum and every file's digest
/// (BLAKE3, or SHA-256 in a version-1 manifest) and size against the manifest, without writing anything. Returns (files, bytes) checked.
/// Downloads [`DEFAULT_PARALLEL`] parts at once; see [`verify_backup_content_parallel`].
pub async fn verify_backup_content(
    repo: &Repository,
    m: &Manifest,
    progress: Arc<dyn Progress>,
) -> Result<(usize, u64), FetchError> {
    verify_backup_content_parallel(repo, m, DEFAULT_PARALLEL, progress).await
}

/// [`verify_backup_content`] downloading and decoding up to `parallel` parts at once.
pub async fn verify_backup_content_parallel(
    repo: &Repository,
    m: &Manifest,
    parallel: usize,
    progress: Arc<dyn Progress>,
) -> Result<(usize, u64), FetchError> {
    progress.start(m.original_bytes);
    let (mut files, mut bytes) = (0, 0);
    for s in &m.streams {
        let expected: HashMap<String, FileEntry> = m
            .files
            .iter()
            .filter(|f| f.stream == s.name)
            .map(|f| (f.path.clone(), f.clone()))
            .collect();
        let (n, b) = restore_stream(
            repo,
            &m.name,
            &s.name,
            s.parts,
            parallel,
            None,
            expected,
            progress.clone(),
        )
        .await?;
        files += n;
        bytes += b;
    }
    repo.get_verified(&backup_key(&m.name, "backup_label"))
        .await?;
    if m.has_tablespace_map {
        repo.get_verified(&backup_key(&m.name, "tablespace_map"))
            .await?;
    }
    Ok((files, bytes))
}

/// Every part the manifest lists must be in the repository: one listing per stream, before
/// anything is written, so that a backup with a part missing fails before it fills DEST.
async fn check_parts_present(repo: &Repository, m: &Manifest) -> Result<(), FetchError> {
    for s in &m.streams {
        let listed: HashSet<String> = repo
            .list(&backup_key(&m.name, &format!("{}/", s.name)))
            .await?
            .into_iter()
            .map(|l| l.key)
            .collect();
        if let Some(i) = (1..=s.parts).find(|&i| !listed.contains(&part_key(&m.name, &s.name, i))) {
            return Err(missing_part(
                &s.name,
                i,
                s.parts,
                repo.key(&part_key(&m.name, &s.name, i)).as_ref(),
            ));
        }
    }
    Ok(())
}

/// A part the manifest lists is not in the repository: the backup is damaged (like a
/// corrupt part), which is not the same as "no such backup".
fn missing_part(stream: &str, index: u32, parts: u32, key: &str) -> FetchError {
    corrupt(
        stream,
        format!("part-{index:06} of {parts} is missing ({key} is not in the repository)"),
    )
}

/// Refuses a target PostgreSQL would refuse after the restore (design R5): before the
/// earliest restorable point, past the end of the archived WAL, a time after the last
/// archived transaction (never "reached"), a restore point the WAL does not hold. Judged on
/// the restorable window along the newest timeline chain (`walarchive::window`), so only when
/// recovery follows it (no `--target-timeline` other than `latest`).
async fn check_archive_reaches(
    repo: &Repository,
    recovery: &Recovery,
    target: &Target,
) -> Result<(), FetchError> {
    use walarchive::window::{self, Wanted};
    if recovery.timeline.as_deref().is_some_and(|t| t != "latest") {
        return Ok(());
    }
    let wanted = match target {
        // Exclusive, PostgreSQL stops before a commit at T itself: inclusive at T - 1 µs.
        Target::Time(_, t) if recovery.exclusive => {
            Wanted::Time(*t - chrono::Duration::microseconds(1))
        }
        Target::Time(_, t) => Wanted::Time(*t),
        Target::Lsn(l) => Wanted::Lsn(*l),
        Target::Name(n) => Wanted::RestorePoint(n.clone()),
        Target::Xid(_) | Target::Immediate => return Ok(()),
    };
    let refused = |e: window::Error| match e {
        window::Error::Core(e) => FetchError::Core(e),
        e => FetchError::BadTarget(format!(
            "the recovery target {} cannot be restored: {e}",
            recovery::describe(target)
        )),
    };
    let w = window::compute(repo).await.map_err(refused)?;
    window::resolve(repo, &w, &wanted, None)
        .await
        .map_err(refused)?;
    Ok(())
}

fn write_err(path: &Path, source: std::io::Error) -> FetchError {
    FetchError::Write {
        path: path.to_path_buf(),
        source,
    }
}

/// A tablespace's destination must be missing (it is created 0700) or empty.
fn prepare_dir(dir: &Path) -> Result<(), FetchError> {
    match std::fs::read_dir(dir) {
        Ok(mut rd) => {
            if rd.next().is_some() {
                return Err(FetchError::DestinationNotEmpty(dir.to_path_buf()));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir).map_err(|e| write_err(dir, e))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| write_err(dir, e))
        }
        Err(e) => Err(write_err(dir, e)),
    }
}

/// Writes (or appends) `content` to a 0600 file and fsyncs it.
fn write_durably(path: &Path, content: &[u8], append: bool) -> Result<(), FetchError> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .append(append)
        .truncate(!append)
        .create(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| write_err(path, e))?;
    f.write_all(content)
        .and_then(|_| f.sync_all())
        .map_err(|e| write_err(path, e))
}

/// Rewrites `tablespace_map` lines (`<oid> <path>`) for the remapped tablespaces.
pub fn remap_tablespaces(map: &str, remap: &BTreeMap<u32, PathBuf>) -> String {
    let mut out = String::new();
    for line in map.lines() {
        let new = line
            .split_once(' ')
            .and_then(|(oid, _)| Some((oid, remap.get(&oid.parse::<u32>().ok()?)?)))
            .map(|(oid, dir)| format!("{oid} {}", dir.display()));
        out.push_str(new.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

fn sync_tree_dirs(root: &Path) -> Result<(), FetchError> {
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).map_err(|e| write_err(&dir, e))? {
            let entry = entry.map_err(|e| write_err(&dir, e))?;
            if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                stack.push(entry.path());
            }
        }
        std::fs::File::open(&dir)
            .and_then(|f| f.sync_all())
            .map_err(|e| write_err(&dir, e))?;
    }
    Ok(())
}

/// A downloaded, verified part, holding one of the stream's memory permits until the
/// extractor is done with it.
struct Part {
    data: Vec<u8>,
    _permit: OwnedSemaphorePermit,
}

/// Downloads the parts of one stream and extracts them, in order, under `root`.
///
/// Up to `parallel` parts are downloaded at once, each by a task of its own that also
/// decodes it and checks its digest on the async runtime (one thread in the CLI, which
/// decodes faster than the single extractor consumes; the parts' memory then comes from
/// one heap, which keeps RSS at the bound instead of a heap per blocking thread).
/// They are handed to the extractor strictly in order, so a part that arrives early waits
/// for the ones before it. `parallel + 1` permits bound the parts in memory: downloading,
/// waiting their turn, and the one being extracted. A failed download stops the stream at
/// that part (the parts before it are extracted, nothing after) and is the error reported;
/// the downloads still running are awaited first, so nothing outlives the call.
#[allow(clippy::too_many_arguments)]
async fn restore_stream(
    repo: &Repository,
    name: &str,
    stream: &str,
    parts: u32,
    parallel: usize,
    root: Option<PathBuf>,
    expected: HashMap<String, FileEntry>,
    progress: Arc<dyn Progress>,
) -> Result<(usize, u64), FetchError> {
    let parallel = parallel.max(1);
    let permits = Arc::new(Semaphore::new(parallel + 1));
    // Never full: every part in it holds a permit.
    let (tx, rx) = mpsc::channel::<Part>(parallel + 1);
    let stream_name = stream.to_string();
    let extractor = tokio::task::spawn_blocking(move || {
        let reader = ChunkReader {
            rx,
            current: None,
            pos: 0,
        };
        extract(
            reader,
            root.as_deref(),
            &stream_name,
            expected,
            parallel,
            progress.as_ref(),
        )
    });
    // Downloads in part order; the front is the next part the extractor needs.
    let mut window: VecDeque<(u32, JoinHandle<Result<Part, walarchive::Error>>)> = VecDeque::new();
    let mut next = 1u32;
    let mut download_error = None;
    while (next <= parts || !window.is_empty()) && !tx.is_closed() {
        let can_start = next <= parts && window.len() < parallel;
        tokio::select! {
            biased;
            done = async { (&mut window[0].1).await }, if !window.is_empty() => {
                let (index, _) = window.pop_front().expect("not empty");
                match done.expect("download tasks do not panic") {
                    Ok(part) => {
                        if tx.send(part).await.is_err() {
                            break; // the extractor stopped: its error says why
                        }
                    }
                    Err(walarchive::Error::NotFound { key }) => {
                        download_error = Some(missing_part(stream, index, parts, &key));
                        break;
                    }
                    Err(e) => {
                        download_error = Some(e.into());
                        break;
                    }
                }
            }
            permit = permits.clone().acquire_owned(), if can_start => {
                let permit = permit.expect("the semaphore is never closed");
                let key = part_key(name, stream, next);
                let task = tokio::spawn(download_part(repo.clone(), key, permit));
                window.push_back((next, task));
                next += 1;
            }
        }
    }
    drop(tx);
    // Let the downloads still running finish (their results are not used): they run on
    // blocking threads that must not outlive the runtime.
    for (_, task) in window {
        let _ = task.await;
    }
    let extracted = extractor.await.expect("extractor does not panic");
    if let Some(e) = download_error {
        return Err(e);
    }
    extracted
}

/// Downloads and verifies one part.
async fn download_part(
    repo: Repository,
    key: String,
    permit: OwnedSemaphorePermit,
) -> Result<Part, walarchive::Error> {
    let (_, data) = repo.get_verified(&key).await?;
    Ok(Part {
        data,
        _permit: permit,
    })
}

/// A `Read` over the parts the downloader sends, in order. A part (and its permit) is
/// released as soon as it has been read.
struct ChunkReader {
    rx: mpsc::Receiver<Part>,
    current: Option<Part>,
    pos: usize,
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            if let Some(part) = &self.current {
                if self.pos < part.data.len() {
                    let n = buf.len().min(part.data.len() - self.pos);
                    buf[..n].copy_from_slice(&part.data[self.pos..self.pos + n]);
                    self.pos += n;
                    return Ok(n);
                }
            }
            self.current = None;
            match self.rx.blocking_recv() {
                Some(part) => {
                    self.current = Some(part);
                    self.pos = 0;
                }
                None => return Ok(0),
            }
        }
    }
}

fn corrupt(stream: &str, reason: String) -> FetchError {
    FetchError::BadBackup(format!("{stream}: {reason}"))
}

/// A relative path with no `..`, root or prefix components.
fn safe_relative(p: &Path) -> bool {
    p.components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
}

/// Reads one file's content from the tar stream, writes it (when given a file) and hands
/// it to `hasher`, which checks it against `want` once the file is complete.
fn copy_entry(
    entry: &mut impl Read,
    stream: &str,
    rel: &str,
    want: &FileEntry,
    mut out: Option<(&mut std::fs::File, &Path)>,
    hasher: &mut Hasher,
    progress: &dyn Progress,
) -> Result<u64, FetchError> {
    let mut n_total = 0u64;
    let mut unflushed = 0u64;
    hasher.send(HashJob::Start {
        rel: rel.to_string(),
        want: want.clone(),
    })?;
    loop {
        let mut buf = hasher.buffer()?;
        let n = entry
            .read(&mut buf)
            .map_err(|e| corrupt(stream, format!("{rel}: {e}")))?;
        if n == 0 {
            hasher.spare(buf);
            break;
        }
        buf.truncate(n);
        if let Some((f, path)) = out.as_mut() {
            f.write_all(&buf).map_err(|e| write_err(path, e))?;
            unflushed += n as u64;
            if unflushed >= WRITEBACK_AFTER {
                start_writeback(f, n_total + n as u64 - unflushed, unflushed);
                unflushed = 0;
            }
        }
        n_total += n as u64;
        progress.advance(n as u64);
        hasher.send(HashJob::Data(buf))?;
    }
    hasher.send(HashJob::End { len: n_total })?;
    Ok(n_total)
}

/// Extracts (or, without `root`, only verifies) one tar stream, checking every entry
/// against the manifest. With `sync_threads` > 1, files are fsynced by that many threads
/// alongside; with 1, each file is fsynced before the next is written.
fn extract(
    reader: ChunkReader,
    root: Option<&Path>,
    stream: &str,
    expected: HashMap<String, FileEntry>,
    sync_threads: usize,
    progress: &dyn Progress,
) -> Result<(usize, u64), FetchError> {
    let syncer = (root.is_some() && sync_threads > 1).then(|| Syncer::new(sync_threads));
    let mut hasher = Hasher::new(stream);
    let extracted = extract_entries(
        reader,
        root,
        stream,
        expected,
        syncer.as_ref(),
        &mut hasher,
        progress,
    );
    // Every file is checked and durable (or the failure known) before the stream counts
    // as restored.
    let hashed = hasher.finish();
    let synced = syncer.map_or(Ok(()), Syncer::finish);
    let extracted = extracted?;
    hashed?;
    synced?;
    Ok(extracted)
}

fn extract_entries(
    reader: ChunkReader,
    root: Option<&Path>,
    stream: &str,
    mut expected: HashMap<String, FileEntry>,
    syncer: Option<&Syncer>,
    hasher: &mut Hasher,
    progress: &dyn Progress,
) -> Result<(usize, u64), FetchError> {
    let mut archive = tar::Archive::new(reader);
    let mut files = 0;
    let mut bytes = 0;
    let entries = archive
        .entries()
        .map_err(|e| corrupt(stream, e.to_string()))?;
    for entry in entries {
        let mut entry =
            entry.map_err(|e| corrupt(stream, format!("unreadable tar stream: {e}")))?;
        let rel = entry
            .path()
            .map_err(|e| corrupt(stream, e.to_string()))?
            .into_owned();
        let rel_str = rel.to_string_lossy().trim_end_matches('/').to_string();
        if !safe_relative(&rel) {
            return Err(corrupt(
                stream,
                format!("unsafe path {rel_str:?} in the backup"),
            ));
        }
        let Some(want) = expected.remove(&rel_str) else {
            return Err(corrupt(stream, format!("{rel_str} is not in the manifest")));
        };
        // Without a root, only verify: read and hash, write nothing.
        let Some(root) = root else {
            if want.kind == EntryKind::File {
                let n = copy_entry(&mut entry, stream, &rel_str, &want, None, hasher, progress)?;
                files += 1;
                bytes += n;
            }
            continue;
        };
        let path = root.join(&rel);
        match want.kind {
            EntryKind::Dir => {
                // Created private (whatever the umask: 000 would make it 0777 until the
                // chmod), then given exactly the manifest's mode.
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(&path)
                    .map_err(|e| write_err(&path, e))?;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(want.mode))
                    .map_err(|e| write_err(&path, e))?;
            }
            EntryKind::Symlink => {
                // Tablespace links are recreated by PostgreSQL from tablespace_map.
                if stream == "data" && rel_str.starts_with("pg_tblspc/") {
                    continue;
                }
                let target = want.target.clone().unwrap_or_default();
                std::os::unix::fs::symlink(&target, &path).map_err(|e| write_err(&path, e))?;
            }
            EntryKind::File => {
                // Private while it is written (whatever the umask), then exactly the
                // manifest's mode.
                let mut out = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                    .map_err(|e| write_err(&path, e))?;
                let written = copy_entry(
                    &mut entry,
                    stream,
                    &rel_str,
                    &want,
                    Some((&mut out, &path)),
                    hasher,
                    progress,
                )?;
                // On the descriptor, before the fsync, which then covers the mode too.
                out.set_permissions(std::fs::Permissions::from_mode(want.mode))
                    .map_err(|e| write_err(&path, e))?;
                match syncer {
                    Some(syncer) => syncer.sync(out, path)?,
                    None => out.sync_all().map_err(|e| write_err(&path, e))?,
                }
                files += 1;
                bytes += written;
            }
        }
    }
    if let Some(missing) = expected.keys().min() {
        return Err(corrupt(
            stream,
            format!(
                "{} manifest entries are missing from the backup, e.g. {missing}",
                expected.len()
            ),
        ));
    }
    Ok((files, bytes))
}
